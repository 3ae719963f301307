# Dynamical velocities (scv.tl.velocity(mode = "dynamical")) from a fit of recover_dynamics()
# and the moments, locally or in gene chunks through future; the Seurat / SingleCellExperiment
# methods are in R/velocity_objects.R. Spec (scVelo dynamics) section 7.

# ------------------------------------------------------------------ velocity

# The largest moment the dynamical model takes: it sums squares over the cells in float32, as
# scVelo does (FLT_MAX 3.4e38 / 1e30 per square leaves room for 3e8 cells).
dyn_max_abs <- 1e15
dyn_max_why <- "the moments are float32 and the dynamical model sums their squares, as scVelo"

# Ms and Mu checked against a fit (the genes of x$var in order, the cells of its layers);
# returned as dense double matrices.
dyn_check_moments <- function(x, Ms, Mu) {
  if (missing(Ms) || missing(Mu)) stopf("'Ms' and 'Mu' (the moments the fit was made on) are required")
  Ms <- as_checked_matrix(Ms, "Ms", nonneg = TRUE, max_abs = dyn_max_abs, why = dyn_max_why)
  Mu <- as_checked_matrix(Mu, "Mu", nonneg = TRUE, max_abs = dyn_max_abs, why = dyn_max_why)
  var <- x$var
  if (!identical(dim(Ms), dim(Mu))) stopf("'Ms' and 'Mu' must have the same dimensions")
  if (!identical(dimnames(Ms), dimnames(Mu))) {
    stopf("'Ms' and 'Mu' must have the same dimnames (genes in rows, cells in columns)")
  }
  if (nrow(Ms) != nrow(var)) {
    stopf("'Ms' has %d genes but the fit has %d", nrow(Ms), nrow(var))
  }
  if (!is.null(rownames(Ms)) && !identical(rownames(Ms), rownames(var))) {
    stopf("the genes (rows) of 'Ms' are not the fit's genes in order")
  }
  if (!identical(ncol(x$layers$fit_tau), ncol(Ms))) {
    stopf("'Ms' has %d cells but the fit has %d", ncol(Ms), ncol(x$layers$fit_tau))
  }
  list(Ms = Ms, Mu = Mu)
}

# The fitted model against the data for the fitted genes g (row indices) of a fit: scVelo's
# compute_divergence without the time-increment constraint (spec (dynamics) 7 steps 1-4).
# Parameters as stored (beta times scaling, sigma_u over scaling), u = Mu / scaling kept in
# float32 as upstream divides the float32 layer in place (basal transcription subtracted when
# fitted); model values at the stored tau (induction) and tau_ (repression); the standardised
# residuals of both branches; the four state distances res = (repression, induction,
# zero steady state, upper steady state), each smoothed by the row-normalised graph C unless
# C is NULL; varx, the "chi" variance of the unsmoothed nearer branch. Shared by velocity()
# and rank_dynamical_genes(). Matrices are length(g) x cells.
dyn_state_distances <- function(var, layers, Ms, Mu, g, basal, C) {
  alpha <- var$fit_alpha[g]
  scaling <- var$fit_scaling[g]
  beta <- var$fit_beta[g] * scaling
  gamma <- var$fit_gamma[g]
  t_ <- var$fit_t_[g]
  std_u <- var$fit_std_u[g] / scaling
  std_s <- var$fit_std_s[g]
  # upstream divides the float32 Mu layer in place, so u stays float32
  u <- as_f32(Mu[g, , drop = FALSE] / scaling)
  s <- Ms[g, , drop = FALSE]
  if (basal) {
    u <- u - var$fit_u0[g] / scaling
    s <- s - var$fit_s0[g]
  }
  tau <- unname(as.matrix(layers$fit_tau[g, , drop = FALSE]))
  tau_ <- unname(as.matrix(layers$fit_tau_[g, , drop = FALSE]))
  u0_ <- ode_u(t_, 0, alpha, beta)
  s0_ <- ode_s(t_, 0, 0, alpha, beta, gamma)
  ut <- ode_u(tau, 0, alpha, beta)
  st <- ode_s(tau, 0, 0, alpha, beta, gamma)
  ut_ <- ode_u(tau_, u0_, 0, beta)
  st_ <- ode_s(tau_, s0_, u0_, 0, beta, gamma)
  distu <- (u - ut) / std_u
  distu_ <- (u - ut_) / std_u
  dists <- (s - st) / std_s
  dists_ <- (s - st_) / std_s
  distx <- distu^2 + dists^2
  distx_ <- distu_^2 + dists_^2
  d_st <- ((u - alpha / beta) / std_u)^2 + ((s - alpha / gamma) / std_s)^2
  d_st_ <- (u / std_u)^2 + (s / std_s)^2
  o <- distx < distx_
  dist <- ifelse(o, distx, distx_)
  sgn <- sign(ifelse(o, dists, dists_))
  varx <- rowMeans(dist) - rowMeans(sgn * sqrt(dist))^2
  smooth <- function(m) if (is.null(C)) m else as.matrix(m %*% Matrix::t(C))
  res <- lapply(list(distx_, distx, d_st_, d_st), smooth)
  list(alpha = alpha, beta = beta, gamma = gamma, t_ = t_, scaling = scaling, u = u, s = s,
       tau = tau, tau_ = tau_, u0_ = u0_, s0_ = s0_, ut = ut, st = st, ut_ = ut_, st_ = st_,
       distu = distu, distu_ = distu_, dists = dists, dists_ = dists_, res = res, varx = varx)
}

# Closed-form solution (spec 5.1), element-wise with recycling, upstream's evaluation order.
ode_u <- function(tau, u0, a, b) {
  eu <- exp(-b * tau)
  u0 * eu + (a / b) * (1 - eu)
}
ode_s <- function(tau, s0, u0, a, b, g) {
  eu <- exp(-b * tau)
  es <- exp(-g * tau)
  gb <- g - b
  inv <- (1 / gb) * (gb != 0)
  cc <- (a - u0 * b) * inv
  ((s0 * es) + (a / g) * (1 - es)) + cc * (es - eu)
}

#' RNA velocity of the dynamical model (scVelo's `tl.velocity(mode = "dynamical")`)
#'
#' Computes, for every fitted gene and cell, the spliced velocity `beta U - gamma S` and the
#' unspliced velocity `(alpha on - beta U) z` of a [recover_dynamics()] fit exactly as
#' `scvelo.tl.velocity(adata, mode = "dynamical")` (scVelo 0.3.4): each cell is put in the
#' most likely of induction, repression and the two steady states (distances smoothed over
#' the neighbour graph and scaled by a per-gene variance), its time is smoothed over the
#' graph, the model is re-evaluated at that time, and velocities are clipped at `-Ms` and
#' `-Mu`. Genes are flagged as `velocity_genes` by likelihood, R^2 and scaling.
#'
#' @param x A `scnative_dynamics` fit (default method) or a Seurat / SingleCellExperiment
#'   object (methods).
#' @param Ms,Mu Genes x cells moments, the matrices the fit was made on (same genes in the
#'   same order as `x$var`).
#' @param mode Only `"dynamical"` is supported.
#' @param connectivities Cells x cells neighbour graph (binarised, self loops added,
#'   row-normalised as scVelo's `get_connectivities`); default: the one the fit used. `NULL`
#'   turns smoothing off (upstream requires a graph unless `use_raw`).
#' @param min_likelihood,min_r2 Thresholds for `velocity_genes` (defaults 1e-3 and 1e-2).
#' @param parallel `"local"` (default) or `"future"`: chunks of genes go to the workers of the
#'   current [future::plan()]; the result is identical to the local one. See
#'   [recover_dynamics()], section Running on a cluster, and `vignette("cluster")`.
#' @param chunk_size With `parallel = "future"`: `NULL` (about four chunks per worker, at most
#'   about 64 MB of data each) or the genes per chunk.
#' @param resume `NULL` or the `partial` element of the error (class `scnative_chunk_error`)
#'   of a failed `parallel = "future"` run: only the genes of the failed chunks are computed.
#' @param progress With `parallel = "future"`: progress is signalled through \pkg{progressr}
#'   (when installed) unless `progress = FALSE` is given. (No progress bar otherwise.)
#' @param threads `NULL` (package default, [scnative_threads()]) or a positive whole number of
#'   threads for the local run (genes in parallel; the result does not depend on it). With
#'   `parallel = "future"` each worker uses 1.
#' @param ... Passed to methods.
#' @return An object of class `scnative_velocity`: a list with `velocity` and `velocity_u`
#'   (genes x cells, `NA` for unfitted genes), `var` (data.frame: `velocity_genes`,
#'   `fit_r2`) and `params` (upstream's `velocity_params`).
#' @examples
#' sim <- simulate_velocity(n_obs = 200, n_vars = 4)
#' fit <- recover_dynamics(sim$spliced, sim$unspliced, var_names = "all", threads = 1,
#'                         progress = FALSE)
#' v <- velocity(fit, sim$spliced, sim$unspliced)
#' dim(v$velocity)
#' @export
velocity <- function(x, ...) UseMethod("velocity")

#' @rdname velocity
#' @export
velocity.default <- function(x, ...) {
  stopf("'x' must be a scnative_dynamics fit (from recover_dynamics()) or a Seurat / SingleCellExperiment object, not %s",
        class(x)[1L])
}

#' @rdname velocity
#' @export
velocity.scnative_dynamics <- function(x, Ms, Mu, mode = "dynamical",
                                       connectivities = x$connectivities,
                                       min_likelihood = 1e-3, min_r2 = 1e-2,
                                       parallel = c("local", "future"), chunk_size = NULL,
                                       resume = NULL, progress = interactive(),
                                       threads = NULL, ...) {
  validate_dynamics(x, "x")
  parallel <- check_parallel(parallel)
  check_number(threads, "threads", min = 1, whole = TRUE, allow_null = TRUE)
  check_flag(progress, "progress")
  if (!is.null(chunk_size)) check_number(chunk_size, "chunk_size", min = 1, whole = TRUE)
  if (!is.null(resume) && !inherits(resume, "scnative_velocity_partial")) {
    stopf("'resume' must be NULL or the 'partial' element of the error of a failed velocity(parallel = \"future\") run")
  }
  check_string(mode, "mode")
  if (!identical(mode, "dynamical")) stopf("'mode' must be \"dynamical\", not '%s'", mode)
  check_number(min_likelihood, "min_likelihood")
  check_number(min_r2, "min_r2", allow_null = TRUE)
  mm <- dyn_check_moments(x, Ms, Mu)
  Ms <- mm$Ms
  Mu <- mm$Mu
  var <- x$var
  n_cells <- ncol(Ms)
  C <- if (is.null(connectivities)) NULL else normalise_connectivities(connectivities, n_cells,
                                                                        colnames(Ms))
  uns <- x$uns$recover_dynamics %||% list()
  use_raw <- isTRUE(uns$use_raw)
  basal <- isTRUE(uns$fit_basal_transcription)
  connect <- !use_raw && !is.null(C)

  g <- which(!is.na(var$fit_alpha))
  vel <- matrix(NA_real_, nrow(Ms), n_cells, dimnames = dimnames(Ms))
  vel_u <- vel
  key <- list(genes = rownames(Ms), cells = colnames(Ms), g = g, basal = basal, connect = connect,
              C = if (connect) c(length(C@x), sum(C@x)))
  done <- logical(nrow(Ms))
  if (!is.null(resume)) {
    resume <- check_velocity_resume(resume, key, var, Ms, Mu)
    done[resume$done] <- TRUE
    vel[resume$done, ] <- resume$velocity
    vel_u[resume$done, ] <- resume$velocity_u
  }
  todo <- g[!done[g]]
  if (parallel == "local" && length(todo)) {
    r <- velocity_rows(var, x$layers, Ms, Mu, todo, basal, if (connect) C, threads)
    vel[todo, ] <- r$vt
    vel_u[todo, ] <- r$wt
  } else if (length(todo)) {
    # gene chunks on the workers: every step is row-wise (one gene per row), so the chunking
    # does not change any value
    size <- future_chunk_size(chunk_size, length(todo), n_cells * 8 * 4)
    chunks <- split_chunks(length(todo), size)
    cols <- intersect(c("fit_alpha", "fit_beta", "fit_gamma", "fit_t_", "fit_scaling",
                        "fit_std_u", "fit_std_s", "fit_u0", "fit_s0"), names(var))
    tasks <- lapply(chunks, function(ch) {
      ii <- todo[ch]
      list(var = var[ii, cols, drop = FALSE], Ms = Ms[ii, , drop = FALSE],
           Mu = Mu[ii, , drop = FALSE],
           layers = list(fit_tau = x$layers$fit_tau[ii, , drop = FALSE],
                         fit_tau_ = x$layers$fit_tau_[ii, , drop = FALSE]))
    })
    fail <- getOption("scnative.future_fail_chunks") # for tests: chunks that fail on purpose
    for (k in intersect(fail, seq_along(tasks))) tasks[[k]]$fail <- TRUE
    shared <- list(basal = basal, C = if (connect) C)
    p <- future_progressor(length(todo), !(!missing(progress) && isFALSE(progress)))
    run <- future_run_chunks(tasks, velocity_chunk_worker, shared, 1L, p,
                             sprintf("velocity chunk %d", seq_along(tasks)))
    rm(tasks)
    for (k in seq_along(chunks)) {
      v <- run$values[[k]]
      if (is.null(v)) next
      ii <- todo[chunks[[k]]]
      vel[ii, ] <- v$vt
      vel_u[ii, ] <- v$wt
      done[ii] <- TRUE
      run$values[k] <- list(NULL)
    }
    failed <- !vapply(run$errors, is.null, TRUE)
    if (any(failed)) {
      d <- which(done)
      partial <- structure(list(key = key, done = d, velocity = vel[d, , drop = FALSE],
                                velocity_u = vel_u[d, , drop = FALSE],
                                check = dyn_resume_check(Ms, Mu, d)),
                           class = "scnative_velocity_partial")
      gn <- rownames(Ms) %||% as.character(seq_len(nrow(Ms)))
      stop_chunk_error("velocity", "genes", run, chunks, gn[todo], sum(done[g]), length(g),
                       partial)
    }
  }
  r2 <- var$fit_r2
  if (is.null(r2) && !is.null(min_r2)) r2 <- suppressWarnings(steady_state_genes(Ms, Mu))$r2
  vg <- !is.na(var$fit_likelihood) & var$fit_likelihood > min_likelihood
  if (!is.null(min_r2)) vg <- vg & !is.na(r2) & r2 > min_r2
  q <- stats::quantile(var$fit_scaling, c(0.1, 0.9), na.rm = TRUE, names = FALSE, type = 7)
  sc <- var$fit_scaling
  vg <- vg & !is.na(sc) & sc > min(q[1L], 0.03) & sc < max(q[2L], 3)
  out_var <- data.frame(velocity_genes = vg, row.names = rownames(var))
  if (!is.null(r2)) out_var$fit_r2 <- r2
  structure(list(velocity = vel, velocity_u = vel_u, var = out_var,
                 params = list(mode = "dynamical", fit_offset = FALSE, perc = c(5, 95))),
            class = "scnative_velocity")
}

# Velocities of the fitted genes 'g' (rows of Ms, Mu, var, layers), all genes in one call to
# the C core, genes in parallel (spec: tl.velocity, dynamical mode; every step is row-wise, the
# same expressions as dyn_state_distances() above, which rank_dynamical_genes() uses). C: the
# normalised graph, or NULL (no smoothing). Returns list(vt, wt), length(g) x cells.
velocity_rows <- function(var, layers, Ms, Mu, g, basal, C, threads = NULL) {
  scaling <- as.double(var$fit_scaling[g])
  col0 <- function(nm) if (is.null(var[[nm]])) rep(0, length(g)) else as.double(var[[nm]][g])
  par <- list(alpha = as.double(var$fit_alpha[g]), beta = as.double(var$fit_beta[g]) * scaling,
              gamma = as.double(var$fit_gamma[g]), t_ = as.double(var$fit_t_[g]),
              scaling = scaling, std_u = as.double(var$fit_std_u[g]) / scaling,
              std_s = as.double(var$fit_std_s[g]), u0 = col0("fit_u0") / scaling,
              s0 = col0("fit_s0"))
  dense <- function(m) {
    m <- unname(as.matrix(m))
    storage.mode(m) <- "double"
    m
  }
  Ct <- if (is.null(C)) NULL else methods::as(Matrix::t(C), "CsparseMatrix")
  .Call(C_scnative_velocity_dynamical, dense(Ms), dense(Mu), dense(layers$fit_tau),
        dense(layers$fit_tau_), as.integer(g), par, isTRUE(basal), if (!is.null(Ct)) Ct@p,
        if (!is.null(Ct)) Ct@i, if (!is.null(Ct)) as.double(Ct@x),
        if (is.null(threads)) 0L else as.integer(threads))
}

# Runs on a future worker: velocity_rows() of one chunk of genes.
velocity_chunk_worker <- function(task, shared, threads, p) {
  if (isTRUE(task$fail)) stop("failing on purpose (option scnative.future_fail_chunks)")
  r <- velocity_rows(task$var, task$layers, task$Ms, task$Mu, seq_len(nrow(task$Ms)),
                     shared$basal, shared$C, threads)
  if (!is.null(p)) p(amount = nrow(task$Ms))
  r
}

# A partial result handed to 'resume' must come from the same call.
check_velocity_resume <- function(resume, key, var, Ms, Mu) {
  for (nm in names(key)) {
    if (!identical(resume$key[[nm]], key[[nm]])) {
      stopf("'resume' comes from a run on other data or settings (%s differs): rerun with the same arguments",
            switch(nm, genes = , cells = "the genes or cells", g = "the fitted genes",
                   basal = "fit_basal_transcription", connect = , C = "connectivities"))
    }
  }
  d <- resume$done
  if (!is.integer(d) || anyNA(d) || any(!d %in% key$g) || anyDuplicated(d) ||
      !identical(dim(resume$velocity), c(length(d), ncol(Ms))) ||
      !identical(dim(resume$velocity_u), c(length(d), ncol(Ms)))) {
    stopf("'resume' is damaged (its parts do not fit together)")
  }
  if (!identical(dyn_resume_check(Ms, Mu, d), resume$check)) {
    stopf("'resume' comes from a run on other values of 'Ms' or 'Mu'")
  }
  resume
}

#' @exportS3Method print scnative_velocity
print.scnative_velocity <- function(x, ...) {
  cat(sprintf("<scnative_velocity> %d genes x %d cells; %d velocity genes\n", nrow(x$velocity),
              ncol(x$velocity), sum(x$var$velocity_genes)))
  invisible(x)
}
