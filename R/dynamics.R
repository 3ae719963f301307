# scVelo's dynamical model (tl.recover_dynamics) natively; the per-gene EM runs in
# src/dynamics.c, dynamics_assign.c and dynamics_f32.c (OpenMP over genes); spec: scVelo dynamics.

dynamics_par_names <- c("alpha", "beta", "gamma", "t_", "scaling", "std_u", "std_s",
                        "likelihood", "u0", "s0", "pval_steady", "steady_u", "steady_s",
                        "variance")

#' Recover the splicing kinetics of each gene (scVelo's dynamical model)
#'
#' Fits, gene by gene, transcription (`alpha`), splicing (`beta`), degradation (`gamma`)
#' rates, the switching time `t_` and every cell's latent time by the EM of
#' `scvelo.tl.recover_dynamics` (scVelo 0.3.4): the same initialisation, time assignment,
#' Nelder-Mead steps and acceptance rule, with the genes fitted in parallel.
#'
#' @section Precision (`dtype`): scVelo stores `Ms`/`Mu` as float32 (`scv.pp.moments`, every
#'   `.h5ad`), and with numpy 1.x (1.26, what scVelo's own installs and our peers run) a float32
#'   array combined with a float64 scalar stays float32, so part of upstream's EM runs in single
#'   precision: the weights' statistics, `u / scaling`, the inverse time assignment (with numpy's
#'   own float32 `exp`/`log`), the state distances and their smoothing, the increment
#'   constraint and the regulariser, while parameters, the loss sums and Nelder-Mead are
#'   float64. `dtype = "float32"` (the default) reproduces that flow on `Ms`/`Mu` rounded to
#'   float32, which is what upstream computes for the layers users have. `dtype = "float64"`
#'   reproduces upstream given float64 layers (everything in double). The float32 flow mirrors
#'   numpy 1.x's value-based casting; numpy 2 (NEP 50) keeps more scalars in float32 and is not
#'   mirrored (use `dtype = "float64"` layers with numpy 2 for an exact comparison). On x86-64
#'   with AVX2/FMA numpy's float32 `exp`/`log` are its own SIMD routines, which scnative
#'   reproduces bit for bit; float64 `exp`/`log` come from the C library (numpy on AVX-512
#'   machines uses Intel's SVML for float64, which differs in the last bit for some arguments,
#'   so a few genes in a hundred can take another EM path there).
#'
#' @param x The moments of spliced counts `Ms` (default method), or an object holding them
#'   (methods for other classes). It may also be given by name as `Ms =`.
#' @param Mu Numeric genes x cells matrices (dense or `dgCMatrix`) of first-order moments
#'   of unspliced (`Mu`) counts, like `x` (`Ms`): same dimensions and dimnames, finite,
#'   non-negative.
#' @param var_names Genes to fit: `"velocity_genes"` (the `velocity_genes` column of `var`,
#'   or the steady-state selection of scVelo when that column is absent, which also writes
#'   `fit_r2`), `"all"`, the name of a logical column of `var`, or a character vector of gene
#'   names.
#' @param n_top_genes `NULL` or a positive whole number: keep only this many selected genes,
#'   those with the largest sum of `Ms`.
#' @param max_iter Whole number >= 0 (default 10): the Nelder-Mead iteration cap of every
#'   stage is `floor(max_iter / 5)`; 0 fits nothing beyond the initialisation.
#' @param assignment_mode One of `"projection"`, `"inverse"`, `"partial_projection"`,
#'   `"full_projection"`: how cell times are assigned after pre-training.
#' @param t_max `NULL` (align total time to 20), a positive number, or `FALSE` (no
#'   alignment).
#' @param fit_time `TRUE` (re-assign cell times at every evaluation) or `FALSE` (keep the
#'   loaded times; needs `load_pars`).
#' @param fit_scaling `TRUE`, `FALSE` or a positive number (initial scaling, then fitted).
#' @param fit_steady_states Logical: include the two steady states in the state choice.
#' @param fit_connected_states `NULL` (`TRUE` unless `use_raw`) or logical: smooth state
#'   distances and `fit_t` over `connectivities`.
#' @param fit_basal_transcription `NULL` or logical: subtract per-gene minima first.
#' @param use_raw Logical; recorded in `uns` (pass raw spliced/unspliced as `Ms`/`Mu` to fit
#'   them). With `TRUE`, `"velocity_genes"` without a column means all genes.
#' @param load_pars `NULL` or a previous `scnative_dynamics` fit: start from its parameters
#'   and `fit_t` instead of initialising.
#' @param steady_state_prior `NULL` or a logical vector, one per cell, OR-ed into the cells
#'   of the initial gamma regression.
#' @param add_key Single string; kept for upstream compatibility (columns are always `fit_*`).
#' @param connectivities `NULL` or the cells x cells neighbour graph (as scanpy's
#'   `obsp["connectivities"]`); it is binarised, given self loops and row-normalised.
#' @param var `NULL` or a data.frame with one row per gene (row names = gene names) of
#'   annotations: `velocity_genes`, `highly_variable`, previous `fit_*` columns.
#' @param perc Percentile (0-100) used to trim the weighted cells (default 99).
#' @param dtype `"float32"` (default) or `"float64"`: the precision of upstream's `Ms`/`Mu`
#'   layers whose arithmetic is reproduced (see the Precision section).
#' @param threads `NULL` (package default) or a positive whole number of threads. With
#'   `parallel = "future"`: the threads of each worker (`NULL`: 1).
#' @param progress Logical: show a progress bar. With `parallel = "future"` progress is
#'   signalled through \pkg{progressr} (when installed) unless `progress = FALSE` is given;
#'   enable it with `progressr::handlers(global = TRUE)` or `progressr::with_progress()`.
#' @param parallel `"local"` (default: OpenMP threads in this R session) or `"future"`: the
#'   genes go in chunks to the workers of the current [future::plan()] (see the section
#'   Running on a cluster).
#' @param chunk_size With `parallel = "future"`: `NULL` or a positive whole number, the genes
#'   per chunk (one future each). `NULL`: about four chunks per worker, at most about 64 MB of
#'   `Ms`/`Mu` per chunk.
#' @param resume `NULL` or the `partial` element of the error of a failed
#'   `parallel = "future"` run: the genes it fitted are taken as they are, only the others are
#'   fitted (see the section Running on a cluster).
#' @param ... Passed to methods.
#' @section Running on a cluster: Genes are fitted independently: no quantity is shared between
#'   genes and no random numbers are drawn, so the genes can be split among any number of
#'   processes without changing any result. With `parallel = "future"` they go in chunks of
#'   `chunk_size` genes, one \pkg{future} per chunk, to whatever [future::plan()] is set:
#'   `multisession` (background R sessions on this machine), `cluster` (R sessions on other
#'   machines), `future.batchtools::batchtools_slurm` (one Slurm job per chunk; give a
#'   `chunk_size` large enough to outweigh the job's start). Every worker loads the installed
#'   scnative and runs the same C fit on its chunk's rows of `Ms`/`Mu` with `threads` threads;
#'   the chunks are merged in order, and the result is identical to `parallel = "local"` with
#'   the same `threads` (`identical()`), provided the machines have the same CPU features (the
#'   fit mirrors numpy's sort, whose ties differ on CPUs with AVX-512).
#'
#'   When chunks fail (a worker dies, a job is killed, an error), the others still run, and
#'   the error, of class `scnative_chunk_error`, names every failed chunk (its genes and the
#'   worker's message) and carries in `partial` every gene already fitted. Rerun the same call
#'   with `resume = partial` to fit only the missing genes:
#'   ```
#'   fit <- tryCatch(recover_dynamics(Ms, Mu, parallel = "future"),
#'                   scnative_chunk_error = function(e) e)
#'   if (inherits(fit, "scnative_chunk_error"))
#'     fit <- recover_dynamics(Ms, Mu, parallel = "future", resume = fit$partial)
#'   ```
#'   `resume` checks that genes, cells, settings and the fitted genes' data are those of the
#'   failed run. It also works with `parallel = "local"`. [velocity()] (gene chunks) and
#'   [velocity_graph()] (ranges of cells) take the same `parallel`, `chunk_size` and `resume`
#'   arguments. `vignette("cluster")` shows a Slurm setup.
#' @return An object of class `scnative_dynamics`: a list with `var` (data.frame, one row
#'   per input gene: `fit_alpha`, `fit_beta`, `fit_gamma`, `fit_t_`, `fit_scaling`,
#'   `fit_std_u`, `fit_std_s`, `fit_likelihood`, `fit_u0`, `fit_s0`, `fit_pval_steady`,
#'   `fit_steady_u`, `fit_steady_s`, `fit_variance`, `fit_alignment_scaling`, and `fit_r2`
#'   when computed; `NA` for genes not fitted, `fit_likelihood` also `NA` for a gene whose
#'   moments are constant: no variance, upstream's `NaN`), `layers` (`fit_t`, `fit_tau`, `fit_tau_`,
#'   genes x cells), `uns` (`recover_dynamics` settings), `loss` (genes x steps accepted
#'   losses), `connectivities` (the normalised graph used, or `NULL`) and `settings`.
#' @examples
#' set.seed(1)
#' n <- 120
#' t <- sort(runif(n, 0, 10))
#' Mu <- rbind(g1 = 2 * (1 - exp(-0.5 * t)) + abs(rnorm(n, 0, 0.05)),
#'             g2 = 1 - exp(-0.3 * t) + abs(rnorm(n, 0, 0.05)))
#' Ms <- rbind(g1 = 4 * (1 - exp(-0.25 * t)) + abs(rnorm(n, 0, 0.05)),
#'             g2 = 2 * (1 - exp(-0.2 * t)) + abs(rnorm(n, 0, 0.05)))
#' colnames(Ms) <- colnames(Mu) <- paste0("c", seq_len(n))
#' fit <- recover_dynamics(Ms, Mu, var_names = "all", threads = 1)
#' fit
#' @export
recover_dynamics <- function(x, ...) {
  if (missing(x)) {
    dots <- list(...)
    if (is.null(dots$Ms)) stopf("'Ms' (the first argument) is missing")
    x <- dots$Ms
    dots$Ms <- NULL
    return(do.call(recover_dynamics, c(list(x), dots)))
  }
  UseMethod("recover_dynamics")
}

#' @rdname recover_dynamics
#' @export
recover_dynamics.default <- function(x, Mu, var_names = "velocity_genes", n_top_genes = NULL,
                                     max_iter = 10, assignment_mode = "projection",
                                     t_max = NULL, fit_time = TRUE, fit_scaling = TRUE,
                                     fit_steady_states = TRUE, fit_connected_states = NULL,
                                     fit_basal_transcription = NULL, use_raw = FALSE,
                                     load_pars = NULL, steady_state_prior = NULL,
                                     add_key = "fit", connectivities = NULL, var = NULL,
                                     perc = 99, dtype = c("float32", "float64"), threads = NULL,
                                     progress = interactive(), parallel = c("local", "future"),
                                     chunk_size = NULL, resume = NULL, ...) {
  # 'x' is Ms (may be given as Ms =)
  if (missing(Mu)) stop_missing_companion("Mu", x)
  Ms <- as_checked_matrix(x, "x", nonneg = TRUE, max_abs = dyn_max_abs, why = dyn_max_why)
  Mu <- as_checked_matrix(Mu, "Mu", nonneg = TRUE, max_abs = dyn_max_abs, why = dyn_max_why)
  if (!identical(dim(Ms), dim(Mu))) {
    stopf("'x' (Ms) and 'Mu' must have the same dimensions (Ms is %d x %d, Mu is %d x %d)",
          nrow(Ms), ncol(Ms), nrow(Mu), ncol(Mu))
  }
  if (!identical(dimnames(Ms), dimnames(Mu))) {
    stopf("'x' (Ms) and 'Mu' must have the same dimnames (genes in rows, cells in columns)")
  }
  n_genes <- nrow(Ms)
  n_cells <- ncol(Ms)
  if (n_genes < 1L || n_cells < 3L) stopf("'Ms' must have at least 1 gene and 3 cells")
  genes <- rownames(Ms) %||% as.character(seq_len(n_genes))
  if (anyDuplicated(genes)) genes <- make.unique(genes)
  cells <- colnames(Ms) %||% as.character(seq_len(n_cells))

  check_number(max_iter, "max_iter", min = 0, whole = TRUE)
  modes <- c("projection", "inverse", "partial_projection", "full_projection")
  check_string(assignment_mode, "assignment_mode")
  if (!assignment_mode %in% modes) {
    stopf("'assignment_mode' must be one of %s, not '%s'",
          paste0("'", modes, "'", collapse = ", "), assignment_mode)
  }
  if (!is.null(t_max) && !isFALSE(t_max)) check_number(t_max, "t_max", min = 0, min_open = TRUE)
  check_flag(fit_time, "fit_time")
  if (is.logical(fit_scaling)) {
    check_flag(fit_scaling, "fit_scaling")
  } else {
    check_number(fit_scaling, "fit_scaling", min = 0, min_open = TRUE)
  }
  check_flag(fit_steady_states, "fit_steady_states")
  check_flag(use_raw, "use_raw")
  if (!is.null(fit_connected_states)) check_flag(fit_connected_states, "fit_connected_states")
  if (!is.null(fit_basal_transcription)) {
    check_flag(fit_basal_transcription, "fit_basal_transcription")
  }
  check_string(add_key, "add_key")
  check_number(perc, "perc", min = 0, max = 100)
  dtype <- check_choice(dtype, c("float32", "float64"), "dtype")
  check_flag(progress, "progress")
  parallel <- check_parallel(parallel)
  n_threads <- future_threads(parallel, threads)
  worker_threads <- n_threads
  if (!is.null(chunk_size)) check_number(chunk_size, "chunk_size", min = 1, whole = TRUE)
  if (!is.null(resume) && !inherits(resume, "scnative_dynamics_partial")) {
    stopf("'resume' must be NULL or the 'partial' element of the error of a failed recover_dynamics(parallel = \"future\") run")
  }
  if (!is.null(n_top_genes)) check_number(n_top_genes, "n_top_genes", min = 1, whole = TRUE)
  if (!is.null(steady_state_prior)) {
    if (!is.logical(steady_state_prior) || length(steady_state_prior) != n_cells ||
        anyNA(steady_state_prior)) {
      stopf("'steady_state_prior' must be a logical vector without NA, one value per cell (%d)",
            n_cells)
    }
  }
  if (!is.null(var)) {
    if (!is.data.frame(var) || nrow(var) != n_genes) {
      stopf("'var' must be a data.frame with one row per gene (%d)", n_genes)
    }
    if (!is.null(rownames(var)) && !identical(rownames(var), as.character(seq_len(n_genes))) &&
        !identical(rownames(var), genes)) {
      stopf("rownames of 'var' must be the gene names (rownames of 'Ms')")
    }
  }
  if (!is.null(load_pars) && !isFALSE(load_pars)) {
    if (!inherits(load_pars, "scnative_dynamics")) {
      stopf("'load_pars' must be NULL or a previous recover_dynamics() result")
    }
    if (!identical(rownames(load_pars$var), genes) ||
        ncol(load_pars$layers$fit_t) != n_cells) {
      stopf("'load_pars' must be a fit of the same genes and cells")
    }
  } else {
    load_pars <- NULL
  }
  if (!fit_time && is.null(load_pars)) {
    stopf("'fit_time = FALSE' keeps given cell times, so it needs 'load_pars'")
  }
  if (is.null(fit_connected_states)) fit_connected_states <- !use_raw

  # connectivities: binarise, self loops, row-normalise, float32 weights (spec 8.3)
  conn <- NULL
  conn_list <- NULL
  if (fit_connected_states && !is.null(connectivities)) {
    conn <- normalise_connectivities(connectivities, n_cells, colnames(Ms))
    tc <- Matrix::t(conn) # CSC of t(C) = CSR of C (row-sorted column indices)
    conn_list <- list(tc@p, tc@i, tc@x)
  }

  # gene selection (spec 1.3)
  r2 <- NULL
  if (!is.character(var_names) || anyNA(var_names) || !length(var_names)) {
    stopf("'var_names' must be a character vector without NA: gene names, a logical column of 'var', \"velocity_genes\" or \"all\"")
  }
  if (length(var_names) == 1L && !var_names %in% genes) {
    if (!is.null(var) && var_names %in% names(var)) {
      col <- var[[var_names]]
      if (!is.logical(col)) stopf("column '%s' of 'var' must be logical", var_names)
      sel <- genes[!is.na(col) & col]
    } else if (use_raw || var_names == "all") {
      sel <- genes
    } else if (grepl("_genes", var_names, fixed = TRUE)) {
      vg <- steady_state_genes(Ms, Mu, hv = if (!is.null(var)) var[["highly_variable"]])
      sel <- genes[vg$velocity_genes]
      r2 <- vg$r2
    } else {
      stopf("'var_names' = '%s' is neither a gene, a column of 'var', nor \"all\"", var_names)
    }
  } else {
    if (!is.character(var_names)) stopf("'var_names' must be a character vector")
    sel <- var_names
  }
  sel <- unique(sel)
  sel <- sel[sel %in% genes]
  if (length(sel) == 0L) stopf("'var_names': none of the requested genes is in 'Ms'")
  if (!is.null(n_top_genes) && length(sel) > n_top_genes) {
    cs <- rowSums(Ms[match(sel, genes), , drop = FALSE])
    ord <- rev(order(cs, method = "radix"))
    sel <- sel[ord[seq_len(n_top_genes)]]
  }
  idx <- match(sel, genes)

  # outputs, starting from previous values (upstream keeps earlier fits of other genes)
  pars <- matrix(NA_real_, n_genes, length(dynamics_par_names),
                 dimnames = list(genes, paste0("fit_", dynamics_par_names)))
  prev_var <- if (!is.null(load_pars)) load_pars$var else var
  if (!is.null(prev_var)) {
    for (nm in colnames(pars)) if (nm %in% names(prev_var)) pars[, nm] <- prev_var[[nm]]
  }
  # the layers; the C core writes the rows of fitted genes into them in place (they are
  # created here, so nothing else sees them)
  T_ <- matrix(NA_real_, n_genes, n_cells, dimnames = list(genes, cells))
  Tau <- matrix(NA_real_, n_genes, n_cells, dimnames = list(genes, cells))
  Tau_ <- matrix(NA_real_, n_genes, n_cells, dimnames = list(genes, cells))
  if (!is.null(load_pars)) {
    T_[] <- load_pars$layers$fit_t
    Tau[] <- load_pars$layers$fit_tau
    Tau_[] <- load_pars$layers$fit_tau_
  }
  mz_prev <- if (!is.null(prev_var) && "fit_alignment_scaling" %in% names(prev_var)) {
    prev_var$fit_alignment_scaling
  } else {
    NULL
  }

  amode <- switch(assignment_mode, projection = 1L, inverse = 0L, partial_projection = 2L,
                  full_projection = 3L)
  scaling_mode <- if (is.logical(fit_scaling)) as.integer(fit_scaling) else 2L
  iopts <- c(as.integer(max_iter), amode, scaling_mode, as.integer(fit_time),
             as.integer(fit_steady_states), as.integer(isTRUE(fit_basal_transcription)),
             as.integer(!is.null(load_pars)),
             # internal switch for tests: FALSE takes the scalar/SSE2 paths of the C core
             as.integer(!isFALSE(getOption("scnative.simd"))),
             as.integer(dtype == "float32"))
  dopts <- c(if (is.logical(fit_scaling)) 0 else as.double(fit_scaling), as.double(perc))

  key <- list(genes = genes, cells = cells, sel = sel, iopts = iopts, dopts = dopts,
              align = align_target(t_max), prior = steady_state_prior,
              conn = if (is.null(conn)) NULL else c(length(conn@x), sum(conn@x)),
              load = !is.null(load_pars))
  acc <- list(pars = pars, fitted = logical(n_genes), done = logical(n_genes),
              m_align = rep(1, n_genes), loss_rows = vector("list", n_genes))
  layers <- list(T_, Tau, Tau_)
  if (!is.null(resume)) { # genes a failed run already fitted (see the Cluster section)
    resume <- check_dynamics_resume(resume, key, Ms, Mu)
    d <- resume$done
    acc$done[d] <- TRUE
    acc$fitted[d] <- resume$fitted
    acc$pars[d, ] <- resume$pars
    acc$m_align[d] <- resume$m_align
    acc$loss_rows[d] <- resume$loss_rows
    T_[d, ] <- resume$layers[[1]]
    Tau[d, ] <- resume$layers[[2]]
    Tau_[d, ] <- resume$layers[[3]]
    layers <- list(T_, Tau, Tau_)
    resume <- NULL
  }
  todo <- idx[!acc$done[idx]]
  align <- key$align
  load_t <- NULL
  if (!is.null(load_pars)) {
    load_t <- load_pars$layers$fit_t
    if (!is.double(load_t)) storage.mode(load_t) <- "double"
  }
  prior <- if (is.null(steady_state_prior)) NULL else as.logical(steady_state_prior)

  if (parallel == "local") {
    chunk <- max(256L, 128L * n_threads) # genes per .Call: fewer barriers, progress every ~2 s
    starts <- if (length(todo)) seq(1L, length(todo), by = chunk) else integer(0)
    pb <- NULL
    if (progress && length(todo)) {
      pb <- utils::txtProgressBar(min = 0, max = length(todo), style = 3)
      on.exit(close(pb), add = TRUE)
    }
    for (st in starts) {
      ii <- todo[st:min(st + chunk - 1L, length(todo))]
      load <- if (is.null(load_pars)) NULL else list(dyn_load_pars(load_pars$var, ii), load_t)
      # one .Call fits the chunk's genes (reading their rows of Ms/Mu) and writes their rows
      # of the layers, times multiplied by each gene's alignment factor (spec 6.3)
      res <- .Call(C_scnative_dynamics_fit, Ms, Mu, as.integer(ii - 1L), conn_list, iopts, dopts,
                   prior, load, layers, align, n_threads)
      acc <- dyn_merge(acc, ii, res)
      if (!is.null(pb)) utils::setTxtProgressBar(pb, min(st + chunk - 1L, length(todo)))
      if (.Call(C_scnative_interrupt_pending)) stopf("recover_dynamics: interrupted by the user")
    }
  } else if (length(todo)) {
    layers <- NULL # T_, Tau, Tau_ take the workers' rows below
    # every chunk is fitted by the same .Call on a worker, on its own rows of Ms/Mu: a gene's
    # fit reads nothing of other genes and draws no random numbers, so the chunking does not
    # change any result (spec: scVelo dynamics, every stage is per gene)
    size <- future_chunk_size(chunk_size, length(todo), n_cells * 8 * (if (is.null(load_pars)) 2 else 5))
    chunks <- split_chunks(length(todo), size)
    tasks <- lapply(chunks, function(ch) {
      ii <- todo[ch]
      list(Ms = Ms[ii, , drop = FALSE], Mu = Mu[ii, , drop = FALSE],
           load = if (!is.null(load_pars)) dyn_load_pars(load_pars$var, ii),
           layers = if (!is.null(load_pars)) list(T_[ii, , drop = FALSE], Tau[ii, , drop = FALSE],
                                                  Tau_[ii, , drop = FALSE]))
    })
    fail <- getOption("scnative.future_fail_chunks") # for tests: chunks that fail on purpose
    for (k in intersect(fail, seq_along(tasks))) tasks[[k]]$fail <- TRUE
    shared <- list(conn = conn_list, iopts = iopts, dopts = dopts, prior = prior, align = align)
    p <- future_progressor(length(todo), !(!missing(progress) && isFALSE(progress)))
    run <- future_run_chunks(tasks, dynamics_chunk_worker, shared, worker_threads, p,
                             sprintf("recover_dynamics chunk %d", seq_along(tasks)))
    rm(tasks)
    for (k in seq_along(chunks)) {
      v <- run$values[[k]]
      if (is.null(v)) next
      ii <- todo[chunks[[k]]]
      acc <- dyn_merge(acc, ii, v$res)
      T_[ii, ] <- v$layers[[1]]
      Tau[ii, ] <- v$layers[[2]]
      Tau_[ii, ] <- v$layers[[3]]
      run$values[k] <- list(NULL)
    }
    failed <- !vapply(run$errors, is.null, TRUE)
    if (any(failed)) {
      d <- which(acc$done)
      partial <- structure(list(
        key = key, done = d, fitted = acc$fitted[d], pars = acc$pars[d, , drop = FALSE],
        m_align = acc$m_align[d], loss_rows = acc$loss_rows[d],
        layers = list(T_[d, , drop = FALSE], Tau[d, , drop = FALSE], Tau_[d, , drop = FALSE]),
        check = dyn_resume_check(Ms, Mu, d)), class = "scnative_dynamics_partial")
      stop_chunk_error("recover_dynamics", "genes", run, chunks, genes[todo],
                       sum(acc$done[idx]), length(idx), partial)
    }
  }
  pars <- acc$pars
  fitted <- acc$fitted
  m_align <- acc$m_align
  loss_rows <- acc$loss_rows
  unrec <- genes[idx[acc$done[idx] & !fitted[idx]]]
  rm(acc)
  if (length(unrec)) {
    warnf("%d gene(s) not recoverable due to insufficient samples (<= 2 cells with Mu > 0 and Ms > 0): %s",
          length(unrec), paste(utils::head(unrec, 10), collapse = ", "))
  }
  fidx <- which(fitted)
  if (length(fidx) == 0L) {
    stopf("recover_dynamics: no gene could be fitted from 'x' (Ms) and 'Mu' (too few cells with non-zero moments?)")
  }

  # fit_t comes back from C already smoothed over the graph (spec 6.2)
  # loss matrix (varm["loss"])
  prev_loss <- if (!is.null(load_pars)) load_pars$loss else NULL
  cur_len <- if (!is.null(prev_loss)) ncol(prev_loss) else 2L
  max_len <- max(vapply(loss_rows[fidx], length, 1L), cur_len)
  loss <- matrix(NA_real_, n_genes, max_len, dimnames = list(genes, NULL))
  if (!is.null(prev_loss)) loss[, seq_len(cur_len)] <- prev_loss
  for (g in fidx) {
    loss[g, ] <- NA_real_
    loss[g, seq_along(loss_rows[[g]])] <- loss_rows[[g]]
  }

  # alignment (spec 6.3)
  mz <- if (is.null(mz_prev)) rep(1, n_genes) else mz_prev
  if (!isFALSE(t_max)) { # the layers were scaled chunk by chunk
    mz[fidx] <- 1
    mz <- mz * m_align
    mf <- m_align[fidx]
    pars[fidx, "fit_alpha"] <- pars[fidx, "fit_alpha"] / mf
    pars[fidx, "fit_beta"] <- pars[fidx, "fit_beta"] / mf
    pars[fidx, "fit_gamma"] <- pars[fidx, "fit_gamma"] / mf
    pars[fidx, "fit_t_"] <- pars[fidx, "fit_t_"] * mf
    mz[!is.na(mz) & mz == 1] <- NA_real_
  }
  # a gene without variance (constant moments: the residual variance is 0 or a rounding
  # error below it) has no likelihood; upstream's 0/0 leaves NaN
  pars[is.nan(pars[, "fit_likelihood"]), "fit_likelihood"] <- NA_real_
  out_var <- as.data.frame(pars)
  out_var$fit_alignment_scaling <- if (isFALSE(t_max) && is.null(mz_prev)) NA_real_ else mz
  if (isFALSE(t_max) && !is.null(mz_prev)) out_var$fit_alignment_scaling <- mz_prev
  if (!is.null(r2)) out_var$fit_r2 <- r2
  rownames(out_var) <- genes

  structure(list(
    var = out_var,
    layers = list(fit_t = T_, fit_tau = Tau, fit_tau_ = Tau_),
    uns = list(recover_dynamics = list(fit_connected_states = fit_connected_states,
                                       fit_basal_transcription = fit_basal_transcription,
                                       use_raw = use_raw)),
    loss = loss,
    connectivities = conn,
    settings = list(var_names = sel, n_top_genes = n_top_genes, max_iter = max_iter,
                    assignment_mode = assignment_mode, t_max = t_max, fit_time = fit_time,
                    fit_scaling = fit_scaling, fit_steady_states = fit_steady_states,
                    fit_connected_states = fit_connected_states,
                    fit_basal_transcription = fit_basal_transcription, use_raw = use_raw,
                    load_pars = !is.null(load_pars), steady_state_prior = steady_state_prior,
                    add_key = add_key, perc = perc, dtype = dtype, threads = n_threads)
  ), class = "scnative_dynamics")
}

# Binarised graph with self loops, rows divided by their counts, weights rounded to float32.
normalise_connectivities <- function(connectivities, n_cells, cells = NULL) {
  C <- connectivities
  if (!(is.matrix(C) || inherits(C, "Matrix")) || nrow(C) != n_cells || ncol(C) != n_cells) {
    stopf("'connectivities' must be a %d x %d matrix (cells x cells)", n_cells, n_cells)
  }
  check_valid_matrix(C, "connectivities")
  check_graph_cells(C, cells, "connectivities")
  C <- methods::as(methods::as(C, "CsparseMatrix"), "generalMatrix")
  C <- methods::as(C, "dMatrix")
  if (anyNA(C@x) || any(is.infinite(C@x))) stopf("'connectivities' contains NA or infinite values")
  C@x <- as.double(C@x > 0)
  C <- Matrix::drop0(C)
  diag(C) <- 1
  C <- Matrix::drop0(C)
  cnt <- Matrix::rowSums(C)
  C <- Matrix::Diagonal(x = 1 / cnt) %*% C
  C <- methods::as(C, "CsparseMatrix")
  C@x <- .Call(C_scnative_dynamics_f32, C@x)
  C
}

# The alignment target handed to the C core: NA (no alignment), 20 or t_max (spec 6.3).
align_target <- function(t_max) {
  if (isFALSE(t_max)) NA_real_ else if (is.null(t_max)) 20 else as.double(t_max)
}

# The loaded parameters of genes 'ii' as the C core reads them (one row per gene).
dyn_load_pars <- function(lv, ii) {
  lv <- lv[ii, , drop = FALSE]
  get <- function(nm) if (nm %in% names(lv)) as.double(lv[[nm]]) else rep(NA_real_, length(ii))
  cbind(get("fit_alpha"), get("fit_beta"), get("fit_gamma"), get("fit_t_"), get("fit_scaling"),
        get("fit_steady_u"), get("fit_steady_s"), get("fit_pval_steady"))
}

# Takes one .Call result for genes 'ii' into the per-gene accumulators.
dyn_merge <- function(acc, ii, res) {
  if (any(res[[3]] == 2L)) stopf("internal error: loss history overflow; please report it")
  ok <- res[[3]] == 1L
  g <- ii[ok]
  acc$done[ii] <- TRUE
  acc$fitted[g] <- TRUE
  acc$pars[g, ] <- res[[1]][ok, , drop = FALSE]
  acc$m_align[g] <- res[[4]][ok]
  for (k in which(ok)) {
    l <- res[[2]][k, ]
    acc$loss_rows[[ii[k]]] <- l[!is.na(l)]
  }
  acc
}

# Row sums of the done genes' Ms and Mu: a resumed run must see the same data.
dyn_resume_check <- function(Ms, Mu, d) {
  list(Ms = rowSums(Ms[d, , drop = FALSE]), Mu = rowSums(Mu[d, , drop = FALSE]))
}

# A partial result handed to 'resume' must come from the same call (data, genes, settings).
check_dynamics_resume <- function(resume, key, Ms, Mu) {
  same <- function(a, b) isTRUE(all.equal(a, b, check.attributes = FALSE, tolerance = 0))
  if (!identical(resume$key$genes, key$genes) || !identical(resume$key$cells, key$cells)) {
    stopf("'resume' comes from a run on other genes or cells")
  }
  for (nm in c("sel", "iopts", "dopts", "align", "prior", "conn", "load")) {
    if (!same(resume$key[[nm]], key[[nm]])) {
      stopf("'resume' comes from a run with other settings (%s differs): rerun with the same arguments",
            switch(nm, sel = "the genes to fit", iopts = , dopts = "the fit options",
                   align = "t_max", prior = "steady_state_prior", conn = "connectivities",
                   load = "load_pars"))
    }
  }
  d <- resume$done
  if (!is.integer(d) || anyNA(d) || any(d < 1L | d > length(key$genes)) || anyDuplicated(d) ||
      length(resume$fitted) != length(d) || !identical(dim(resume$pars), c(length(d), length(dynamics_par_names))) ||
      length(resume$layers) != 3L ||
      !all(vapply(resume$layers, function(m) identical(dim(m), c(length(d), length(key$cells))), TRUE))) {
    stopf("'resume' is damaged (its parts do not fit together)")
  }
  if (!identical(dyn_resume_check(Ms, Mu, d), resume$check)) {
    stopf("'resume' comes from a run on other values of 'x' (Ms) or 'Mu'")
  }
  resume
}

# Runs on a future worker: the local fit of one chunk of genes (rows of task$Ms/Mu).
dynamics_chunk_worker <- function(task, shared, threads, p) {
  if (isTRUE(task$fail)) stop("failing on purpose (option scnative.future_fail_chunks)")
  G <- nrow(task$Ms)
  n <- ncol(task$Ms)
  layers <- lapply(1:3, function(k) { # fresh matrices: the C core writes into them
    m <- matrix(NA_real_, G, n)
    if (!is.null(task$layers)) m[] <- task$layers[[k]]
    m
  })
  load <- if (!is.null(task$load)) list(task$load, task$layers[[1]]) # read only
  res <- .Call(C_scnative_dynamics_fit, task$Ms, task$Mu, seq_len(G) - 1L, shared$conn,
               shared$iopts, shared$dopts, shared$prior, load, layers, shared$align,
               resolve_threads(threads))
  if (!is.null(p)) p(amount = G)
  list(res = res, layers = layers)
}

# Steady-state velocity genes and R^2 (spec 8.1, 5.5).
steady_state_genes <- function(Ms, Mu, hv = NULL) {
  n_genes <- nrow(Ms)
  r2 <- numeric(n_genes)
  gq <- numeric(n_genes)
  pct <- function(x, q) stats::quantile(x, q, type = 7, names = FALSE)
  for (g in seq_len(n_genes)) {
    s <- Ms[g, ]
    u <- Mu[g, ]
    xs <- s / max(max(s), 1e-3) + u / max(max(u), 1e-3)
    keep <- xs >= pct(xs, 0.95)
    gam <- sum(s[keep] * u[keep]) / sum(s[keep]^2)
    if (is.nan(gam)) gam <- 0
    gq[g] <- gam
    gf <- sum(s * u) / sum(s^2)
    if (is.nan(gf)) gf <- 0
    res <- u - gf * s
    tot <- u - mean(u)
    r <- 1 - sum(res^2) / sum(tot^2)
    r2[g] <- if (is.nan(r)) 0 else r
  }
  vg <- r2 > 0.01 & gq > 0.01 & apply(Ms > 0, 1, any) & apply(Mu > 0, 1, any)
  if (!is.null(hv)) vg <- vg & as.logical(hv)
  if (sum(vg) < 2) {
    warnf("very low signal in splicing dynamics: the R^2 threshold was lowered")
    vg <- r2 > pct(r2, 0.8)
  }
  list(velocity_genes = vg, r2 = r2)
}

#' @export
print.scnative_dynamics <- function(x, ...) {
  v <- x$var
  nf <- sum(!is.na(v$fit_alpha))
  cat(sprintf("<scnative_dynamics> %d genes x %d cells; %d genes fitted (%s assignment, max_iter %d)\n",
              nrow(v), ncol(x$layers$fit_t), nf, x$settings$assignment_mode,
              as.integer(x$settings$max_iter)))
  if (nf > 0) {
    q <- function(col) {
      z <- stats::quantile(v[[col]], c(0, 0.5, 1), na.rm = TRUE, names = FALSE)
      sprintf("%-15s min %.4g  median %.4g  max %.4g", col, z[1], z[2], z[3])
    }
    cat(paste0("  ", vapply(c("fit_alpha", "fit_beta", "fit_gamma", "fit_t_",
                               "fit_likelihood"), q, ""), collapse = "\n"), "\n", sep = "")
  }
  invisible(x)
}

#' @export
summary.scnative_dynamics <- function(object, ...) {
  v <- object$var
  cols <- intersect(c("fit_alpha", "fit_beta", "fit_gamma", "fit_t_", "fit_scaling",
                      "fit_likelihood", "fit_variance", "fit_alignment_scaling"), names(v))
  tab <- t(vapply(cols, function(cl) {
    stats::quantile(v[[cl]], c(0, 0.25, 0.5, 0.75, 1), na.rm = TRUE, names = FALSE)
  }, numeric(5)))
  colnames(tab) <- c("min", "q25", "median", "q75", "max")
  structure(list(n_genes = nrow(v), n_cells = ncol(object$layers$fit_t),
                 n_fitted = sum(!is.na(v$fit_alpha)), table = tab,
                 settings = object$settings),
            class = "summary.scnative_dynamics")
}

#' @export
print.summary.scnative_dynamics <- function(x, ...) {
  cat(sprintf("scVelo dynamical model: %d of %d genes fitted over %d cells\n", x$n_fitted,
              x$n_genes, x$n_cells))
  print(signif(x$table, 4))
  invisible(x)
}
