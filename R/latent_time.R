# scVelo's tl.latent_time, tl.velocity_confidence and tl.velocity_confidence_transition
# (scVelo 0.3.4) natively, in R (the work is a few sorts and sparse products per call);
# spec: scVelo downstream, sections "tl.latent_time", "velocity_confidence" and the shared
# helpers (get_indices, get_connectivities, scale, numpy rounding).

# ------------------------------------------------------------------ numpy-order helpers

# numpy's pairwise summation of a double vector (the order of np.sum on a contiguous array):
# eight sequential accumulators per block of at most 128 values, blocks split in halves.
np_pairwise_sum <- function(a) {
  n <- length(a)
  if (n < 8L) {
    res <- 0
    for (v in a) res <- res + v
    return(res)
  }
  if (n <= 128L) {
    m <- n - n %% 8L
    blk <- matrix(a[seq_len(m)], nrow = 8L)
    r <- blk[, 1L]
    for (j in seq_len(ncol(blk))[-1L]) r <- r + blk[, j]
    res <- ((r[1L] + r[2L]) + (r[3L] + r[4L])) + ((r[5L] + r[6L]) + (r[7L] + r[8L]))
    for (v in a[seq_len(n - m) + m]) res <- res + v
    return(res)
  }
  n2 <- n %/% 2L
  n2 <- n2 - n2 %% 8L
  np_pairwise_sum(a[seq_len(n2)]) + np_pairwise_sum(a[(n2 + 1L):n])
}

# numpy's round(x, 2): rint(x * 100) / 100 in double; R's round(y) (no digits) rounds half to
# even like rint, while R's round(x, 2) picks another candidate at some x.xx5 boundaries.
np_round2 <- function(x) round(x * 100) / 100

# scVelo's scale(): over finite entries, subtract the minimum, then divide by the new maximum
# unless it is 0 (spec: shared helpers, scale). NaN stays NaN.
sv_scale <- function(x) {
  fin <- is.finite(x)
  if (!any(fin)) return(x)
  x <- x - min(x[fin]) + 0
  xmax <- max(x[fin])
  if (xmax != 0) x / xmax * 1 else x * 1
}

# y = C v for a cells x cells dgCMatrix C (rows = "from" cell) and a double vector v, summed in
# each row's column order from 0 like scipy's csr_matvec on a sorted csr (rowsum() adds in
# double, in input order). `drop`: logical per column; those columns' entries are left out
# (their weight is 0, which leaves every partial sum unchanged).
csr_dot <- function(C, v, drop = NULL) {
  tC <- Matrix::t(C)
  w <- tC@x
  if (!is.null(drop)) w[drop[tC@i + 1L]] <- 0
  n <- ncol(tC)
  grp <- rep.int(seq_len(n), diff(tC@p))
  out <- numeric(n)
  s <- rowsum(w * v[tC@i + 1L], grp, reorder = TRUE)
  out[as.integer(rownames(s))] <- s[, 1L]
  out
}

# ------------------------------------------------------------------ shared time

# Re-roots every gene's times at cell r (spec: latent_time, Shared time, root_time): times
# at or after the root's become t - t_r; earlier ones are moved behind the latest cell.
# t is genes x cells.
lt_root_time <- function(t, r) {
  tr <- t[, r]
  o <- t >= tr
  after <- (t - tr) * o
  origin <- apply(after, 1L, max)
  before <- (t + origin) * (1 - o)
  after + before
}

# compute_shared_time (spec: latent_time, Shared time). Returns the shared time and t shifted
# by its minimum, as upstream shifts the caller's array in place.
lt_shared_time <- function(t) {
  t <- t - min(t)
  G <- nrow(t)
  n <- ncol(t)
  q <- c(15, 20, 25, 30, 35) / 100
  # numpy's linear percentile: virtual index (G - 1) q, lerp from the nearer end
  vi <- (G - 1) * q
  lo <- floor(vi)
  g <- vi - lo
  above <- vi >= G - 1
  ia <- ifelse(above, G, lo + 1)
  ib <- ifelse(above, G, lo + 2)
  pos <- unique(c(ia, ib))
  srt <- apply(t, 2L, function(x) sort.int(x, partial = pos)[pos])
  if (!is.matrix(srt)) srt <- matrix(srt, nrow = length(pos))
  Q <- matrix(0, 5L, n)
  for (k in 1:5) {
    a <- srt[match(ia[k], pos), ]
    b <- srt[match(ib[k], pos), ]
    d <- b - a
    Q[k, ] <- if (g[k] >= 0.5) b - d * (1 - g[k]) else a + d * g[k]
  }
  qmax <- apply(Q, 1L, max)
  qmax <- qmax + (qmax == 0)
  Q <- Q / qmax
  # numpy linspace(0, 1, n): i * (1 / (n - 1)), the last point exactly 1
  linx <- (seq_len(n) - 1) * (1 / (n - 1))
  linx[n] <- 1
  mse <- vapply(1:5, function(k) np_pairwise_sum((sort.int(Q[k, ]) - linx)^2), numeric(1))
  best <- order(mse)[1:2] # numpy sorts 5 values by insertion: ties keep the lower index
  shared <- Q[best[1L], ] + Q[best[2L], ]
  list(shared = shared / max(shared), t = t)
}

# ------------------------------------------------------------------ argument helpers

stop_dots <- function(...) {
  if (...length()) {
    unsup <- intersect(names(list(...)), c("weight_diffusion", "min_corr_diffusion"))
    if (length(unsup)) {
      stopf("'%s' is not supported by latent_time() yet (it mixes in velocity_pseudotime())",
            unsup[1L])
    }
    nm <- names(list(...))
    nm <- if (is.null(nm)) rep("", ...length()) else nm
    nm[!nzchar(nm)] <- "<unnamed>"
    stopf("unused argument%s: %s", if (length(nm) > 1L) "s" else "", paste(nm, collapse = ", "))
  }
}

# One cell given by name or by 1-based index; returns its index.
lt_one_cell <- function(x, cells, n, arg) {
  if (is.character(x)) {
    if (is.na(x)) stopf("'%s' must not be NA", arg)
    if (is.null(cells)) stopf("'%s' is a cell name but the cells have no names", arg)
    i <- match(x, cells)
    if (is.na(i)) stopf("'%s': no cell is named '%s'", arg, x)
    return(i)
  }
  if (!is.numeric(x) || is.na(x) || x != round(x) || x < 1 || x > n) {
    stopf("'%s' must be a cell name, a cell index in 1..%d, or %d per-cell scores", arg, n, n)
  }
  as.integer(x)
}

# Per-cell scores (as scVelo's obs["root_cells"] / obs["end_points"]) or one cell. Returns
# list(scores = numeric or NULL, cell = index or NULL).
lt_cells_arg <- function(x, cells, n, arg) {
  if (is.factor(x)) stopf("'%s' must be numeric scores or one cell, not a factor", arg)
  if (length(x) == 1L && n > 1L) return(list(scores = NULL, cell = lt_one_cell(x, cells, n, arg)))
  if (!(is.numeric(x) || is.logical(x)) || length(x) != n) {
    stopf("'%s' must be %d per-cell scores (numeric, one per cell), a cell name or a cell index",
          arg, n)
  }
  if (!is.null(names(x)) && !is.null(cells) && !identical(names(x), cells)) {
    if (!setequal(names(x), cells) || anyDuplicated(names(x))) {
      stopf("the names of '%s' must be the cell names", arg)
    }
    x <- x[cells]
  }
  x <- as.double(x)
  if (any(is.infinite(x))) stopf("'%s' has infinite scores", arg)
  x[is.na(x)] <- 0 # upstream: null scores count as 0
  list(scores = unname(x), cell = NULL)
}

# Cells flagged by scores > 1 - 1e-3 in the given order; all of `ord` if none is flagged.
lt_flagged <- function(sc, ord, what) {
  sel <- ord[sc[ord] > 1 - 1e-3]
  if (length(sel)) return(sel)
  warnf("no %s detected (no score above 0.999): using the cells with the %s summed gene times",
        what, if (what == "root cells") "smallest" else "largest")
  ord
}

# ------------------------------------------------------------------ latent_time

#' Gene-shared latent time (scVelo's `tl.latent_time`)
#'
#' Couples the gene-specific cell times of the dynamical model (`fit_t` of
#' [recover_dynamics()]) into one latent time per cell, as `scvelo.tl.latent_time` (scVelo
#' 0.3.4) does given its root (and end) cells: genes with a complete `fit_t` and
#' `fit_likelihood >= min_likelihood` are kept; every gene's times are re-rooted at a root
#' cell (cells earlier than the root are moved behind the latest one); per cell, the
#' 15th-35th percentiles of the gene times are formed, and the two percentile curves closest
#' to a uniform spread are summed into a shared time; with several roots (at most 4, the
#' flagged cells with the smallest summed gene time first) the re-rooting is applied
#' sequentially, each to the times re-rooted at the previous root, and the shared times are
#' averaged and scaled to \[0, 1\]. End points (the 4 flagged cells with the largest summed
#' gene time) add 0.2 of the scaled reversed shared time. Finally, cells whose latent time
#' disagrees with its neighbourhood average (coherence below `min_confidence`) are dropped
#' as neighbours, every cell takes the (unrenormalised) average over its remaining
#' neighbours, and the result is scaled to \[0, 1\] (times `t_max`).
#'
#' Given the same `fit_t`, `fit_likelihood`, root scores and neighbour graph the result is
#' upstream's to rounding (the same order of operations and numpy's percentile rule).
#'
#' @section Not supported: upstream's `weight_diffusion` and `min_corr_diffusion` mix in
#'   the velocity pseudotime (`tl.velocity_pseudotime`), which scnative does not compute
#'   (yet); without them (upstream's default) the pseudotime upstream computes as a side
#'   effect does not enter the latent time. Root cells are not inferred here: give
#'   [terminal_states()]'s result (upstream's default, `root_key = "root_cells"` from
#'   `tl.terminal_states`) or your own.
#'
#' @param x An `scnative_dynamics` fit of [recover_dynamics()] (uses `x$layers$fit_t`,
#'   `x$var$fit_likelihood` and, by default, `x$connectivities`), or (default method) the
#'   genes x cells matrix of gene times `fit_t` (`NA` rows for unfitted genes).
#' @param root_cells The result of [terminal_states()] (its `root_cells` are used), or
#'   numeric (or logical) per-cell root scores, one per cell (as
#'   scVelo's `obs["root_cells"]` from `tl.terminal_states`, in \[0, 1\]; named vectors are
#'   matched to the cell names; `NA` counts as 0): the cells scoring above `1 - 1e-3` are the
#'   roots (if none, a warning and the 4 cells with the smallest summed gene time); or a
#'   single root cell, by name or by 1-based index (upstream's `root_key` naming an `uns`
#'   entry, there a 0-based index).
#' @param end_points `NULL` (default), per-cell end-point scores like `root_cells` (scVelo's
#'   `end_key = "end_points"`; if none scores above `1 - 1e-3`, a warning and the 4 cells with
#'   the largest summed gene time), or a single end cell by name or 1-based index.
#' @param connectivities `NULL` (default: the fit's `x$connectivities`, the graph given to
#'   [recover_dynamics()]) or a cells x cells neighbour graph (matrix or `Matrix`, like
#'   scanpy's `obsp["connectivities"]`): binarised, given self loops and row-normalised
#'   (float32 weights), as upstream's `get_connectivities`. Required by the default method.
#' @param fit_likelihood Default method: numeric vector of per-gene likelihoods (one per row
#'   of `x`), or `NULL` (only with `min_likelihood = NULL`).
#' @param min_likelihood `NULL` (no likelihood filter) or a number: genes with
#'   `fit_likelihood >= min_likelihood` (default 0.1) are used.
#' @param min_confidence Number (default 0.75): cells whose local coherence is below it are
#'   left out as neighbours in the final smoothing.
#' @param t_max `NULL` (latent time in \[0, 1\]) or a positive number to multiply it by.
#' @param ... Passed to methods; methods accept no further arguments.
#' @return A named numeric vector (cell names as names, when known) of latent times, one
#'   per cell, in \[0, 1\] (times `t_max`); the value scVelo writes to `obs["latent_time"]`.
#' @seealso [recover_dynamics()], [velocity_confidence()].
#' @examples
#' sim <- simulate_velocity(n_obs = 150, n_vars = 6, random_seed = 1)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 15, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", connectivities = m$connectivities,
#'                         threads = 1, progress = FALSE)
#' # root scores: 1 for the earliest simulated cells (as terminal_states() would flag them)
#' roots <- as.numeric(sim$obs$true_t <= sort(sim$obs$true_t)[3])
#' lt <- latent_time(fit, roots)
#' cor(lt, sim$obs$true_t, method = "spearman")
#' # one root cell, by index (or name), and a time scale
#' lt1 <- latent_time(fit, which.min(sim$obs$true_t), t_max = 20)
#' summary(lt1)
#' @export
latent_time <- function(x, ...) UseMethod("latent_time")

#' @rdname latent_time
#' @export
latent_time.scnative_dynamics <- function(x, root_cells, end_points = NULL,
                                          connectivities = NULL, min_likelihood = 0.1,
                                          min_confidence = 0.75, t_max = NULL, ...) {
  stop_dots(...)
  validate_dynamics(x, "x", var_cols = if (is.null(min_likelihood)) character() else "fit_likelihood",
                    layers = "fit_t")
  fit_t <- x$layers$fit_t
  lik <- x$var$fit_likelihood
  if (is.null(lik) && !is.null(min_likelihood)) {
    stopf("'x' has no fit_likelihood column: run recover_dynamics() first")
  }
  if (is.null(connectivities)) {
    C <- x$connectivities
    if (is.null(C)) {
      stopf("'connectivities' is needed: the fit 'x' holds no neighbour graph (give recover_dynamics() 'connectivities', or pass the graph here)")
    }
    n <- ncol(fit_t)
    if (!methods::is(C, "dgCMatrix") || nrow(C) != n || ncol(C) != n) {
      stopf("'x$connectivities' must be the %d x %d normalised graph of recover_dynamics()", n, n)
    }
    conn <- C
  } else {
    conn <- NULL
  }
  lt_run(fit_t, lik, conn, connectivities, root_cells, end_points, min_likelihood,
         min_confidence, t_max)
}

#' @rdname latent_time
#' @export
latent_time.default <- function(x, root_cells, end_points = NULL, connectivities,
                                fit_likelihood = NULL, min_likelihood = 0.1,
                                min_confidence = 0.75, t_max = NULL, ...) {
  stop_dots(...)
  if (!(is.matrix(x) || is.data.frame(x) || inherits(x, "Matrix"))) {
    stopf("'x' must be a numeric genes x cells matrix of gene times (or a scnative_dynamics fit), not %s",
          class(x)[1L])
  }
  if (missing(connectivities) || is.null(connectivities)) {
    if (is.data.frame(x)) stop_missing_companion("connectivities", x)
    stopf("'connectivities' (the cells x cells neighbour graph) is missing")
  }
  if (is.null(fit_likelihood) && !is.null(min_likelihood)) {
    stopf("'fit_likelihood' is needed unless 'min_likelihood' is NULL")
  }
  lt_run(x, fit_likelihood, NULL, connectivities, root_cells, end_points, min_likelihood,
         min_confidence, t_max)
}

lt_run <- function(fit_t, lik, conn, connectivities, root_cells, end_points, min_likelihood,
                   min_confidence, t_max) {
  if (missing(root_cells)) {
    stopf("'root_cells' is missing: give terminal_states()'s result, per-cell root scores or one root cell")
  }
  if (inherits(root_cells, "scnative_terminal_states")) root_cells <- root_cells$root_cells
  if (inherits(end_points, "scnative_terminal_states")) end_points <- end_points$end_points
  if (is.data.frame(fit_t)) fit_t <- as.matrix(fit_t)
  if (inherits(fit_t, "Matrix")) {
    check_valid_matrix(fit_t, "x")
    fit_t <- as.matrix(fit_t)
  }
  if (!is.matrix(fit_t) || !is.numeric(fit_t)) {
    stopf("'x' must be a numeric genes x cells matrix of gene times (fit_t)")
  }
  n <- ncol(fit_t)
  if (n < 2L) stopf("'x' (fit_t) must have at least 2 cells (columns), not %d", n)
  check_number(min_likelihood, "min_likelihood", allow_null = TRUE)
  check_number(min_confidence, "min_confidence")
  check_number(t_max, "t_max", min = 0, min_open = TRUE, allow_null = TRUE)
  cells <- colnames(fit_t)
  roots <- lt_cells_arg(root_cells, cells, n, "root_cells")
  ends <- if (is.null(end_points)) NULL else lt_cells_arg(end_points, cells, n, "end_points")
  if (is.null(conn)) {
    check_valid_matrix(connectivities, "connectivities")
    conn <- normalise_connectivities(connectivities, n, cells)
  }

  # genes (spec: latent_time, Gene times): complete rows with likelihood >= min_likelihood
  keep <- !is.na(rowSums(fit_t))
  if (!is.null(min_likelihood)) {
    if (!is.numeric(lik) || length(lik) != nrow(fit_t)) {
      stopf("'fit_likelihood' must be numeric with one value per gene (%d), not %d values",
            nrow(fit_t), length(lik))
    }
    keep <- keep & !is.na(lik) & lik >= min_likelihood
  }
  if (!any(keep)) {
    stopf("no gene has a complete fit_t row%s: nothing to build a latent time from",
          if (is.null(min_likelihood)) "" else
            sprintf(" and fit_likelihood >= %g (lower 'min_likelihood')", min_likelihood))
  }
  t <- unname(fit_t[keep, , drop = FALSE])
  storage.mode(t) <- "double"
  if (any(is.infinite(t))) stopf("'x' (fit_t) has infinite values in the genes used")
  # re-rooting adds times: values near the double range would overflow into Inf/NaN
  if (any(abs(t) > 1e150)) stopf("'x' (fit_t) holds values too large to be gene times (> 1e150)")
  t_sum <- colSums(t)

  # root and end cells (spec: latent_time, Root cells / Fates)
  if (is.null(roots$cell)) {
    root_list <- lt_flagged(roots$scores, order(t_sum), "root cells")
  } else {
    root_list <- roots$cell
  }
  end_list <- NULL
  if (!is.null(ends)) {
    end_list <- if (is.null(ends$cell)) lt_flagged(ends$scores, rev(order(t_sum)), "end points")
                else ends$cell
  }

  # shared time, re-rooting sequentially (spec: latent_time, Shared time). A single root
  # cell goes through the same average-and-scale as a list of roots: upstream renames the
  # uns root key before testing it, so its "one root" branch is never taken.
  root_list <- utils::head(root_list, 4L)
  lts <- vector("list", length(root_list))
  for (k in seq_along(root_list)) {
    st <- lt_shared_time(lt_root_time(t, root_list[k]))
    t <- st$t
    lts[[k]] <- st$shared
  }
  latent <- sv_scale(Reduce(`+`, lts) / length(lts))
  if (!is.null(end_list)) {
    end_list <- utils::head(end_list, 4L)
    lte <- vector("list", length(end_list))
    for (k in seq_along(end_list)) {
      st <- lt_shared_time(lt_root_time(t, end_list[k]))
      t <- st$t
      lte[[k]] <- 1 - st$shared
    }
    latent <- sv_scale(latent + 0.2 * sv_scale(Reduce(`+`, lte) / length(lte)))
  }

  # coherence smoothing (spec: latent_time, Coherence smoothing)
  tl <- latent
  tc <- csr_dot(conn, tl)
  z <- sum(tl * tc) / sum(tc * tc)
  mx <- max(tl)
  conf <- (1 - abs(tl / mx - tc * z / mx))^2
  low <- !is.na(conf) & conf < min_confidence
  latent <- sv_scale(csr_dot(conn, latent, drop = low))
  if (!is.null(t_max)) latent <- latent * t_max
  names(latent) <- cells
  latent
}

# ------------------------------------------------------------------ velocity_confidence

# The velocity genes used by velocity_confidence(_transition) (spec: velocity_confidence,
# step 1): no NA/NaN over the cells, velocity_genes if given, spearmans_score > 0.1 if given.
vc_genes <- function(V, velocity_genes, spearmans_score) {
  G <- nrow(V)
  keep <- !is.na(rowSums(V))
  if (!is.null(velocity_genes)) {
    if (!is.logical(velocity_genes) || length(velocity_genes) != G) {
      stopf("'velocity_genes' must be a logical vector with one value per gene (%d)", G)
    }
    keep <- keep & !is.na(velocity_genes) & velocity_genes
  }
  if (!is.null(spearmans_score)) {
    if (!is.numeric(spearmans_score) || length(spearmans_score) != G) {
      stopf("'spearmans_score' must be a numeric vector with one value per gene (%d)", G)
    }
    keep <- keep & !is.na(spearmans_score) & spearmans_score > 0.1
  }
  if (!any(keep)) stopf("no gene is left: every velocity row has NA values or is filtered out")
  keep
}

vc_velocity <- function(x) {
  if (is.data.frame(x)) x <- as.matrix(x)
  if (inherits(x, "Matrix")) {
    check_valid_matrix(x, "x")
    x <- as.matrix(x)
  }
  if (!is.matrix(x) || !is.numeric(x)) stopf("'x' must be a numeric genes x cells velocity matrix")
  if (ncol(x) < 2L) stopf("'x' must have at least 2 cells (columns)")
  storage.mode(x) <- "double"
  x
}

#' Velocity length and confidence (scVelo's `tl.velocity_confidence`)
#'
#' Per cell, as `scvelo.tl.velocity_confidence` (scVelo 0.3.4): the genes used are those
#' with a velocity in every cell, flagged in `velocity_genes` and, if `spearmans_score` is
#' given (scVelo's `var["spearmans_score"]` of `rank_velocity_genes`), scoring above 0.1;
#' each cell's velocity is centred over these genes; its length is the Euclidean norm
#' (rounded to 2 decimals as numpy rounds: half to even on `x * 100`), and its confidence is
#' the mean cosine similarity with the centred velocities of its k nearest neighbours in the
#' kNN graph `distances` (k = the smallest number of neighbours any cell has; cells with
#' more keep their k nearest), clipped at 0. A cell whose centred velocity or one of whose
#' neighbours' is zero has no confidence: `NA` (upstream: `NaN`).
#'
#' Unlike upstream, [velocity_confidence()] does not also compute the transition confidence:
#' call [velocity_confidence_transition()] for that.
#'
#' @param x An `scnative_velocity` object of [velocity()] (its `velocity` matrix and
#'   `var$velocity_genes`), or (default method) a numeric genes x cells velocity matrix (`NA`
#'   rows for genes without velocity).
#' @param distances The cells x cells kNN distance graph (dgCMatrix; rows = cells, stored
#'   entries = neighbours, self excluded; explicit zeros count as neighbours), as scanpy's
#'   `obsp["distances"]` or `moments()$distances`; or the `scnative_moments` object itself.
#' @param velocity_genes Default method: `NULL` (all genes) or a logical vector, one per gene.
#' @param spearmans_score `NULL` or a numeric vector, one per gene: only genes scoring above
#'   0.1 are used.
#' @param ... Passed to methods; methods accept no further arguments.
#' @return A data.frame with one row per cell (cell names as row names) and columns
#'   `velocity_length` and `velocity_confidence` (scVelo's `obs` columns of those names).
#' @seealso [velocity_confidence_transition()], [latent_time()].
#' @examples
#' sim <- simulate_velocity(n_obs = 150, n_vars = 6, random_seed = 1)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 15, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", connectivities = m$connectivities,
#'                         threads = 1, progress = FALSE)
#' v <- velocity(fit, m$Ms, m$Mu)
#' v$var$velocity_genes[] <- TRUE # few genes here: use them all
#' head(velocity_confidence(v, m))
#' @export
velocity_confidence <- function(x, ...) UseMethod("velocity_confidence")

#' @rdname velocity_confidence
#' @export
velocity_confidence.scnative_velocity <- function(x, distances, spearmans_score = NULL, ...) {
  stop_dots(...)
  validate_velocity_object(x, "x")
  velocity_confidence.default(x$velocity, distances, velocity_genes = x$var$velocity_genes,
                              spearmans_score = spearmans_score)
}

#' @rdname velocity_confidence
#' @export
velocity_confidence.default <- function(x, distances, velocity_genes = NULL,
                                        spearmans_score = NULL, ...) {
  stop_dots(...)
  V <- vc_velocity(x)
  n <- ncol(V)
  cells <- colnames(V)
  if (missing(distances)) stopf("'distances' (the cells x cells kNN distance graph) is missing")
  idx <- t(knn_indices(distances, n, need_positive = FALSE, cells = cells))
  keep <- vc_genes(V, velocity_genes, spearmans_score)
  V <- unname(V[keep, , drop = FALSE])
  if (any(is.infinite(V))) stopf("'x' has infinite velocities in the genes used")
  V <- sweep(V, 2L, colMeans(V))
  nrm <- sqrt(colSums(V * V))
  # mean over the k neighbours of the cosine of the centred velocities
  R <- numeric(n)
  for (j in seq_len(ncol(idx))) {
    nb <- idx[, j]
    R <- R + colSums(V[, nb, drop = FALSE] * V) / (nrm[nb] * nrm)
  }
  R <- pmax(R / ncol(idx), 0)
  R[is.nan(R)] <- NA_real_ # 0/0: a zero velocity has no direction
  data.frame(velocity_length = np_round2(nrm), velocity_confidence = R,
             row.names = cells)
}

#' Confidence of the transitions (scVelo's `tl.velocity_confidence_transition`)
#'
#' Per cell, as `scvelo.tl.velocity_confidence_transition` (scVelo 0.3.4): the cosine
#' between the expected displacement under the transition matrix, `T Ms - Ms` (centred over
#' the genes), and the cell's centred velocity, over the genes used by
#' [velocity_confidence()]. The computation is in double precision.
#'
#' @section Precision: Upstream stores `Ms` and `T` as float32 and so forms the displacement
#'   `T Ms - Ms` in float32. The displacement is a small difference of large numbers, so
#'   float32 leaves noise in upstream's result: on the CellRank test data (50 cells) most cells
#'   agree with the double-precision value to 1e-5, but one cell is off by 1.3e-3, and
#'   upstream's own float32 value changes by as much (4e-3) if the same `T` is stored with its
#'   columns sorted. scnative therefore computes in double. It agrees with upstream given a
#'   float64 `Ms` layer (where scipy forms `T Ms` in double) to rounding.
#'
#' @inheritParams velocity_confidence
#' @param Ms Numeric genes x cells matrix of spliced moments (same genes and cells as the
#'   velocity), as [moments()] returns.
#' @param T The cells x cells transition matrix (rows = "from" cell, summing to 1), as
#'   `scvelo.tl.transition_matrix(adata, scale = 10)` returns (dgCMatrix or matrix; used as
#'   given).
#' @return A named numeric vector (cell names as names), one value per cell in \[-1, 1\]:
#'   scVelo's `obs["velocity_confidence_transition"]`.
#' @examples
#' sim <- simulate_velocity(n_obs = 150, n_vars = 6, random_seed = 1)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 15, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", threads = 1, progress = FALSE)
#' v <- velocity(fit, m$Ms, m$Mu)
#' v$var$velocity_genes[] <- TRUE
#' # a stand-in transition matrix: the row-normalised neighbour graph (scVelo's
#' # transition_matrix() weighs neighbours by their velocity cosines instead)
#' T <- m$connectivities / Matrix::rowSums(m$connectivities)
#' summary(velocity_confidence_transition(v, m$Ms, T))
#' @export
velocity_confidence_transition <- function(x, ...) UseMethod("velocity_confidence_transition")

#' @rdname velocity_confidence_transition
#' @export
velocity_confidence_transition.scnative_velocity <- function(x, Ms, T, spearmans_score = NULL,
                                                             ...) {
  stop_dots(...)
  validate_velocity_object(x, "x")
  velocity_confidence_transition.default(x$velocity, Ms, T,
                                         velocity_genes = x$var$velocity_genes,
                                         spearmans_score = spearmans_score)
}

#' @rdname velocity_confidence_transition
#' @export
velocity_confidence_transition.default <- function(x, Ms, T, velocity_genes = NULL,
                                                   spearmans_score = NULL, ...) {
  stop_dots(...)
  V <- vc_velocity(x)
  n <- ncol(V)
  cells <- colnames(V)
  X <- as_checked_matrix(Ms, "Ms")
  if (!identical(dim(X), dim(V))) {
    stopf("'Ms' must have the dimensions of the velocity (%d x %d), not %d x %d", nrow(V), n,
          nrow(X), ncol(X))
  }
  for (ax in 1:2) {
    a <- dimnames(X)[[ax]]
    b <- dimnames(V)[[ax]]
    if (!is.null(a) && !is.null(b) && !identical(a, b)) {
      stopf("the %s of 'Ms' are not those of the velocity 'x', in order",
            c("genes (rows)", "cells (columns)")[ax])
    }
  }
  if (!(is.matrix(T) || inherits(T, "Matrix"))) {
    stopf("'T' must be a cells x cells transition matrix (matrix or dgCMatrix)")
  }
  check_valid_matrix(T, "T")
  if (nrow(T) != n || ncol(T) != n) {
    stopf("'T' must be %d x %d (cells x cells), not %d x %d", n, n, nrow(T), ncol(T))
  }
  check_graph_cells(T, cells, "T")
  T <- methods::as(methods::as(methods::as(T, "CsparseMatrix"), "generalMatrix"), "dMatrix")
  if (anyNA(T@x) || any(is.infinite(T@x))) stopf("'T' contains NA or infinite values")
  keep <- vc_genes(V, velocity_genes, spearmans_score)
  V <- unname(V[keep, , drop = FALSE])
  if (any(is.infinite(V))) stopf("'x' has infinite velocities in the genes used")
  X <- unname(X[keep, , drop = FALSE])
  dX <- as.matrix(X %*% Matrix::t(T)) - X # T X - X with cells in columns
  dX <- sweep(dX, 2L, colMeans(dX))
  V <- sweep(V, 2L, colMeans(V))
  nrm <- sqrt(colSums(dX * dX)) * sqrt(colSums(V * V))
  nrm <- nrm + (nrm == 0)
  out <- colSums(dX * V) / nrm
  names(out) <- cells
  out
}
