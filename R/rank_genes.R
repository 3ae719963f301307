# Gene rankings per group of cells: scVelo's tl.rank_velocity_genes (a t-test on velocities,
# each group against the rest) and tl.rank_dynamical_genes (cluster-wise likelihoods of the
# dynamical model), scVelo 0.3.4, natively in R (a few passes over the genes x cells
# matrices; nothing hot enough for C). Spec: scVelo downstream, "Gene rankings" and the shared
# helpers (vcorrcoef, numpy rounding); the model's distances come from dyn_state_distances()
# (velocity.R), as in spec (dynamics) "velocity(mode = dynamical)".

# ------------------------------------------------------------------ helpers

# The groups of cells: a factor (its levels, unused ones dropped, in level order) or a
# character / numeric / logical vector (its sorted distinct values, as pandas' categories:
# strings in code-point order, numbers numerically). NA cells belong to no group. Returns
# the group labels and each cell's group index (NA for NA cells).
rank_groups <- function(groupby, n_cells) {
  if (is.null(groupby)) {
    stopf("'groupby' is required: one group label per cell (a factor or character vector). Upstream's default, louvain 'velocity_clusters' on the velocities, is not implemented")
  }
  if (!is.atomic(groupby) || is.matrix(groupby) ||
      !(is.factor(groupby) || is.character(groupby) || is.numeric(groupby) ||
        is.logical(groupby))) {
    stopf("'groupby' must be a factor, character, numeric or logical vector with one value per cell")
  }
  if (length(groupby) != n_cells) {
    stopf("'groupby' must have one value per cell (%d), not %d", n_cells, length(groupby))
  }
  if (is.numeric(groupby) && any(is.infinite(groupby))) {
    stopf("'groupby' must not contain infinite values")
  }
  if (is.factor(groupby)) {
    f <- droplevels(groupby)
    labels <- levels(f)
    index <- as.integer(f)
  } else {
    u <- sort(unique(groupby[!is.na(groupby)]), method = "radix")
    labels <- as.character(u)
    index <- match(groupby, u)
  }
  if (length(labels) < 2L) {
    stopf("'groupby' must have at least 2 groups (each is compared with the rest), not %d",
          length(labels))
  }
  if (anyDuplicated(labels)) stopf("'groupby' has duplicated group labels")
  list(labels = labels, index = index)
}

# Per-row sums of X over the columns `cols`, added one column at a time in column order: the
# order in which numpy sums axis 0 of a C-ordered cells x genes array (R's rowSums
# accumulates in extended precision instead).
seq_row_sums <- function(X, cols) {
  acc <- numeric(nrow(X))
  for (j in cols) acc <- acc + X[, j]
  acc
}

# numpy's nan_to_num: NaN -> 0, +-Inf -> +-the largest double.
np_nan_to_num <- function(x) {
  x[is.na(x)] <- 0
  big <- .Machine$double.xmax
  x[x == Inf] <- big
  x[x == -Inf] <- -big
  x
}

# The n largest of each column of S (genes x groups, named rows), largest first; equal
# scores keep the gene order (upstream's order among ties depends on numpy's sort kernels).
# Returns the names and the scores as numpy-rounded float32 (upstream's record arrays), plus
# the unrounded ranked scores (ranks x groups).
rank_top <- function(S, n, labels) {
  genes <- rownames(S)
  n <- min(n, nrow(S))
  ord <- lapply(seq_len(ncol(S)), function(k) {
    order(S[, k], decreasing = TRUE, method = "radix")[seq_len(n)]
  })
  nm <- vapply(seq_len(ncol(S)), function(k) genes[ord[[k]]], character(n))
  sc <- vapply(seq_len(ncol(S)), function(k) S[ord[[k]], k], numeric(n))
  dim(nm) <- dim(sc) <- c(n, ncol(S))
  df <- function(m) {
    out <- as.data.frame(m, stringsAsFactors = FALSE)
    names(out) <- labels
    out
  }
  list(names = df(nm), scores = df(as_f32(np_round2(sc))), raw = sc, raw_names = nm)
}

# One optional per-gene vector (numeric or logical) of length G.
gene_vector <- function(v, G, arg, logical = FALSE) {
  if (is.null(v)) return(NULL)
  ok <- if (logical) is.logical(v) else (is.numeric(v) || is.logical(v))
  if (!ok || !is.null(dim(v)) || length(v) != G) {
    stopf("'%s' must be a %s vector with one value per gene (%d)", arg,
          if (logical) "logical" else "numeric", G)
  }
  if (logical) v else as.double(v)
}

# scVelo's spearmans_score: per gene, Spearman's correlation (average ranks of ties) of Ms
# and Mu across cells, clipped at 0; NaN for a gene constant in either (spec: shared helpers,
# vcorrcoef). Ranks are half-integers, so every sum is exact and the order of summation is
# irrelevant.
spearmans_score <- function(Ms, Mu) {
  rk <- function(M) apply(M, 1L, rank, ties.method = "average") # cells x genes
  X <- rk(Ms)
  Y <- rk(Mu)
  n <- nrow(X)
  X <- sweep(X, 2L, colSums(X) / n)
  Y <- sweep(Y, 2L, colSums(Y) / n)
  corr <- colSums(X * Y) / sqrt(colSums(X * X) * colSums(Y * Y))
  corr[!is.na(corr) & corr < 0] <- 0
  names(corr) <- rownames(Ms)
  corr
}

# ------------------------------------------------------------------ rank_velocity_genes

#' Genes whose velocities characterise groups of cells (scVelo's `tl.rank_velocity_genes`)
#'
#' Ranks, for every group of cells, the genes by a t-test of their velocities in the group
#' against all other cells, as `scvelo.tl.rank_velocity_genes(adata, groupby = ...)` does
#' (scVelo 0.3.4): Welch's statistic with an overestimated variance (the variance of the rest
#' is also divided by the size of the group), `(mean_group - mean_rest) /
#' sqrt(var_group / n_group + var_rest / n_group)`, `NaN` taken as 0.
#'
#' Genes are used when their velocity has no `NA`, they are `velocity_genes`, their
#' `spearmans_score` (Spearman's correlation of `Ms` and `Mu` across cells, clipped at 0)
#' exceeds `min_corr` (default 0.1; scVelo's tutorials use 0.3), and, for each of the optional
#' per-gene inputs given, upstream's filter on the `adata.var` column of that name:
#' `unspliced` counts in more than `min_counts` cells (default: `min(50, median)` over
#' genes), `r2` (scVelo's `velocity_r2` of the steady-state modes) above `min_r2` (default
#' 0.1), `dispersions_norm` above `min_dispersion` (default 0), `fit_likelihood` above
#' `min_likelihood` (default 0.1). After [recover_dynamics()], upstream's `adata.var` holds
#' `fit_likelihood`, so pass `fit_likelihood = fit` to rank the same genes.
#'
#' @param x An `scnative_velocity` object of [velocity()] (its `velocity` matrix and
#'   `var$velocity_genes`), or (default method) a numeric genes x cells velocity matrix
#'   (`NA` rows for genes without velocity).
#' @param groupby One group label per cell: a factor (groups in level order; unused levels
#'   dropped) or a character, numeric or logical vector (groups sorted as pandas sorts
#'   categories). Cells with `NA` belong to no group but to every "rest". Required: upstream's
#'   default (louvain clusters of the velocities) is not implemented.
#' @param Ms,Mu Genes x cells spliced and unspliced moments (as [moments()] returns, float32
#'   values), for `spearmans_score`; not needed when `spearmans_score` is given.
#' @param n_genes Whole number >= 1 (default 100): genes listed per group (at most the number
#'   of genes used).
#' @param min_counts,min_r2,min_corr,min_dispersion,min_likelihood `NULL` (upstream's default)
#'   or a number: the thresholds described above. `min_counts`, `min_r2`, `min_dispersion`
#'   and `min_likelihood` need their per-gene input (`unspliced`, `r2`, `dispersions_norm`,
#'   `fit_likelihood`).
#' @param spearmans_score `NULL` (computed from `Ms` and `Mu`) or a numeric vector, one per
#'   gene (upstream uses `var["spearmans_score"]` as is when present).
#' @param unspliced `NULL` or the genes x cells unspliced counts (matrix or `dgCMatrix`),
#'   for the `min_counts` filter (upstream's `layers["unspliced"]`).
#' @param fit_likelihood `NULL`, a numeric vector with one likelihood per gene, or the
#'   `scnative_dynamics` fit (its `var$fit_likelihood`).
#' @param r2,dispersions_norm `NULL` or numeric vectors, one per gene: upstream's
#'   `var["velocity_r2"]` and `var["dispersions_norm"]`.
#' @param velocity_genes Default method: `NULL` (all genes) or a logical vector, one per gene.
#' @param ... Passed to methods; methods accept no further arguments.
#' @return A list (plain R objects, easy to store):
#'   \item{names}{data.frame, one character column per group (named by the group), `n_genes`
#'     rows: the top genes, best first (upstream's `uns["rank_velocity_genes"]["names"]`).}
#'   \item{scores}{data.frame of the same shape: their scores rounded to 2 decimals as numpy
#'     rounds, then to float32 (upstream's `scores` record array).}
#'   \item{velocity_score}{named numeric vector, one per gene of `x`: the score, truncated
#'     toward 0, at the gene's first appearance scanning rank 1 of every group, then rank 2,
#'     ...; 0 for genes never listed (upstream's `var["velocity_score"]`, an int64 there).}
#'   \item{spearmans_score}{named numeric vector, one per gene (upstream's
#'     `var["spearmans_score"]`).}
#'   \item{t_scores}{numeric matrix, genes used x groups: every unrounded score.}
#'   \item{params}{list: `reference = "rest"`, `method = "t-test_overestim_var"`, the
#'     thresholds used.}
#' @details Genes with equal scores are listed in gene order; upstream's order among ties
#'   comes from numpy's sort and varies across platforms. Upstream stores the names as
#'   50-character strings (longer names are cut); here they are kept whole.
#' @seealso [rank_dynamical_genes()], [velocity()].
#' @examples
#' sim <- simulate_velocity(n_obs = 200, n_vars = 8, random_seed = 1)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 15, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", connectivities = m$connectivities,
#'                         threads = 1, progress = FALSE)
#' v <- velocity(fit, m$Ms, m$Mu)
#' stage <- cut(sim$obs$true_t, 3, labels = c("early", "mid", "late"))
#' r <- rank_velocity_genes(v, stage, Ms = m$Ms, Mu = m$Mu, n_genes = 3)
#' r$names
#' r$scores
#' @export
rank_velocity_genes <- function(x, ...) UseMethod("rank_velocity_genes")

#' @rdname rank_velocity_genes
#' @export
rank_velocity_genes.scnative_velocity <- function(x, groupby, Ms = NULL, Mu = NULL,
                                                  n_genes = 100, min_counts = NULL,
                                                  min_r2 = NULL, min_corr = NULL,
                                                  min_dispersion = NULL, min_likelihood = NULL,
                                                  spearmans_score = NULL, unspliced = NULL,
                                                  fit_likelihood = NULL, r2 = NULL,
                                                  dispersions_norm = NULL, ...) {
  stop_dots(...)
  validate_velocity_object(x, "x")
  if (missing(groupby)) groupby <- NULL
  rank_velocity_genes.default(x$velocity, groupby, Ms = Ms, Mu = Mu, n_genes = n_genes,
                              min_counts = min_counts, min_r2 = min_r2, min_corr = min_corr,
                              min_dispersion = min_dispersion, min_likelihood = min_likelihood,
                              spearmans_score = spearmans_score, unspliced = unspliced,
                              fit_likelihood = fit_likelihood, r2 = r2,
                              dispersions_norm = dispersions_norm,
                              velocity_genes = x$var$velocity_genes)
}

#' @rdname rank_velocity_genes
#' @export
rank_velocity_genes.default <- function(x, groupby, Ms = NULL, Mu = NULL, n_genes = 100,
                                        min_counts = NULL, min_r2 = NULL, min_corr = NULL,
                                        min_dispersion = NULL, min_likelihood = NULL,
                                        spearmans_score = NULL, unspliced = NULL,
                                        fit_likelihood = NULL, r2 = NULL,
                                        dispersions_norm = NULL, velocity_genes = NULL, ...) {
  stop_dots(...)
  V <- vc_velocity(x)
  G <- nrow(V)
  n <- ncol(V)
  genes <- rownames(V) %||% as.character(seq_len(G))
  if (anyDuplicated(genes)) stopf("the gene names (rows of 'x') must be unique")
  grp <- rank_groups(if (missing(groupby)) NULL else groupby, n)
  check_number(n_genes, "n_genes", min = 1, whole = TRUE)
  for (a in c("min_counts", "min_r2", "min_corr", "min_dispersion", "min_likelihood")) {
    check_number(get(a), a, allow_null = TRUE)
  }
  if (inherits(fit_likelihood, "scnative_dynamics")) {
    fl <- fit_likelihood$var$fit_likelihood
    if (is.null(fl) || length(fl) != G) {
      stopf("'fit_likelihood' is a fit of %d genes with no fit_likelihood for the %d genes of 'x'",
            nrow(fit_likelihood$var), G)
    }
    if (!is.null(rownames(V)) && !identical(rownames(fit_likelihood$var), rownames(V))) {
      stopf("the genes of the fit 'fit_likelihood' are not the genes (rows) of 'x' in order")
    }
    fit_likelihood <- fl
  }
  velocity_genes <- gene_vector(velocity_genes, G, "velocity_genes", logical = TRUE)
  spearmans_score <- gene_vector(spearmans_score, G, "spearmans_score")
  fit_likelihood <- gene_vector(fit_likelihood, G, "fit_likelihood")
  r2 <- gene_vector(r2, G, "r2")
  dispersions_norm <- gene_vector(dispersions_norm, G, "dispersions_norm")
  need <- c(min_counts = "unspliced", min_r2 = "r2", min_dispersion = "dispersions_norm",
            min_likelihood = "fit_likelihood")
  for (a in names(need)) {
    if (!is.null(get(a)) && is.null(get(need[[a]]))) {
      stopf("'%s' filters on '%s', which was not given", a, need[[a]])
    }
  }

  # spearmans_score (spec: rank_velocity_genes; vcorrcoef)
  if (is.null(spearmans_score)) {
    if (is.null(Ms) || is.null(Mu)) {
      stopf("'Ms' and 'Mu' are needed for the spearmans_score (or give 'spearmans_score')")
    }
    Ms <- as_checked_matrix(Ms, "Ms")
    Mu <- as_checked_matrix(Mu, "Mu")
    for (a in c("Ms", "Mu")) {
      m <- get(a)
      if (!identical(dim(m), dim(V))) {
        stopf("'%s' must have the dimensions of the velocity (%d x %d), not %d x %d", a, G, n,
              nrow(m), ncol(m))
      }
      if (!is.null(rownames(m)) && !is.null(rownames(V)) && !identical(rownames(m), genes)) {
        stopf("the genes (rows) of '%s' are not those of the velocity in order", a)
      }
      if (!is.null(colnames(m)) && !is.null(colnames(V)) && !identical(colnames(m), colnames(V))) {
        stopf("the cells (columns) of '%s' are not those of the velocity in order", a)
      }
    }
    spearmans_score <- spearmans_score(Ms, Mu)
  }
  names(spearmans_score) <- genes

  # gene filter, in upstream's order (spec: rank_velocity_genes, gene filter)
  keep <- !is.na(rowSums(V))
  if (!is.null(velocity_genes)) keep <- keep & !is.na(velocity_genes) & velocity_genes
  pass <- function(v, thr) !is.na(v) & v > thr
  if (!is.null(unspliced)) {
    U <- as_checked_matrix(unspliced, "unspliced", dense = FALSE)
    if (!identical(dim(U), dim(V))) {
      stopf("'unspliced' must have the dimensions of the velocity (%d x %d), not %d x %d", G, n,
            nrow(U), ncol(U))
    }
    n_counts <- if (inherits(U, "Matrix")) Matrix::rowSums(U > 0) else rowSums(U > 0)
    min_counts <- min_counts %||% min(50, np_percentile(n_counts, 50))
    keep <- keep & n_counts > min_counts
  }
  if (!is.null(r2)) {
    min_r2 <- min_r2 %||% 0.1
    keep <- keep & pass(r2, min_r2)
  }
  min_corr <- min_corr %||% 0.1
  keep <- keep & pass(spearmans_score, min_corr)
  if (!is.null(dispersions_norm)) {
    min_dispersion <- min_dispersion %||% 0
    keep <- keep & pass(dispersions_norm, min_dispersion)
  }
  if (!is.null(fit_likelihood)) {
    min_likelihood <- min_likelihood %||% 0.1
    keep <- keep & pass(fit_likelihood, min_likelihood)
  }
  if (!any(keep)) {
    stopf("no gene of 'x' passes the filters (a velocity without NA, 'velocity_genes', the spearmans_score of 'Ms' and 'Mu' above 'min_corr', the other thresholds)")
  }
  X <- V[keep, , drop = FALSE]
  rownames(X) <- genes[keep]
  if (any(is.infinite(X))) stopf("'x' has infinite velocities in the genes used")

  # per group: mean and variance of the group and of the rest (spec: get_mean_var)
  X2 <- X * X
  mean_var <- function(cols) {
    m <- length(cols)
    mean <- seq_row_sums(X, cols) / m
    mean_sq <- seq_row_sums(X2, cols) / m
    mc <- max(m, 2)
    var <- (mean_sq - mean^2) * (mc / (mc - 1))
    list(mean = np_nan_to_num(mean), var = np_nan_to_num(var))
  }
  labels <- grp$labels
  S <- matrix(0, nrow(X), length(labels), dimnames = list(rownames(X), labels))
  for (k in seq_along(labels)) {
    inside <- which(!is.na(grp$index) & grp$index == k)
    rest <- setdiff(seq_len(n), inside)
    a <- mean_var(inside)
    b <- mean_var(rest)
    size <- length(inside)
    S[, k] <- np_nan_to_num((a$mean - b$mean) / sqrt(a$var / size + b$var / size))
  }

  top <- rank_top(S, n_genes, labels)
  # velocity_score: first appearance scanning ranks, then groups (spec: outputs)
  first <- match(genes, as.vector(t(top$raw_names)))
  vscore <- trunc(as.vector(t(top$raw))[first])
  vscore[is.na(first)] <- 0
  names(vscore) <- genes
  list(names = top$names, scores = top$scores, velocity_score = vscore,
       spearmans_score = spearmans_score, t_scores = S,
       params = list(reference = "rest", method = "t-test_overestim_var",
                     min_counts = min_counts, min_r2 = min_r2, min_corr = min_corr,
                     min_dispersion = min_dispersion, min_likelihood = min_likelihood))
}

# ------------------------------------------------------------------ rank_dynamical_genes

#' Genes ranked by their cluster-wise likelihood under the dynamical model (scVelo's `tl.rank_dynamical_genes`)
#'
#' For every group of cells, ranks the fitted genes of a [recover_dynamics()] fit by how well
#' the group's cells follow the gene's fitted trajectory, as
#' `scvelo.tl.rank_dynamical_genes(adata, groupby = ...)` does (scVelo 0.3.4; its
#' `get_divergence(mode = "gene_likelihood")`): each cell is put in the nearest of
#' repression, induction and the two steady states (distances to the model at the stored
#' times `fit_tau`, `fit_tau_`, smoothed over the neighbour graph); its standardised
#' residuals on that branch count only when both `u > max(u) / 5` and `s > max(s) / 5`; per
#' group, the likelihood is `exp(-sum / (2 n varx) - log(2 pi varx) / 2)` with the sum of
#' squared residuals over the group's cells, `n` their number less 1\% of the group size
#' (at least 2; groups with fewer than a fifth of the largest such `n` get the largest sum)
#' and `varx` the gene's residual variance over all cells; `NaN` when the sum is 0.
#'
#' @param x An `scnative_dynamics` fit of [recover_dynamics()] (uses `var` `fit_alpha`,
#'   `fit_beta`, `fit_gamma`, `fit_t_`, `fit_scaling`, `fit_std_u`, `fit_std_s` (and
#'   `fit_u0`, `fit_s0` with basal transcription), the layers `fit_tau`, `fit_tau_`).
#' @param Ms,Mu Genes x cells moments the fit was made on.
#' @param groupby One group label per cell, as in [rank_velocity_genes()] (required).
#' @param n_genes Whole number >= 1 (default 100): genes listed per group (at most the
#'   number of fitted genes).
#' @param connectivities The cells x cells neighbour graph (binarised, self loops added,
#'   row-normalised as scVelo's `get_connectivities`); default: the fit's. `NULL` turns
#'   smoothing off (upstream smooths whenever `adata` has a neighbour graph).
#' @param ... Passed to methods; methods accept no further arguments.
#' @return A list:
#'   \item{names}{data.frame, one character column per group, `n_genes` rows: the fitted
#'     genes by decreasing likelihood (upstream's `uns["rank_dynamical_genes"]["names"]`).}
#'   \item{scores}{data.frame of the same shape: the likelihoods (`NA` as 0) rounded to 2
#'     decimals as numpy rounds, then to float32 (upstream's `scores`).}
#'   \item{likelihood}{numeric matrix, fitted genes x groups: every unrounded likelihood
#'     (`NA` where a group has no counts or no variance: upstream's `NaN`).}
#' @details Genes with equal likelihoods (notably the `NA`s, ranked as 0) are listed in gene
#'   order; upstream's order among ties comes from numpy's sort.
#' @seealso [rank_velocity_genes()], [recover_dynamics()].
#' @examples
#' sim <- simulate_velocity(n_obs = 200, n_vars = 6, random_seed = 1)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 15, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", connectivities = m$connectivities,
#'                         threads = 1, progress = FALSE)
#' stage <- cut(sim$obs$true_t, 3, labels = c("early", "mid", "late"))
#' r <- rank_dynamical_genes(fit, m$Ms, m$Mu, stage, n_genes = 3)
#' r$names
#' r$scores
#' @export
rank_dynamical_genes <- function(x, ...) UseMethod("rank_dynamical_genes")

#' @rdname rank_dynamical_genes
#' @export
rank_dynamical_genes.default <- function(x, ...) {
  stopf("'x' must be a scnative_dynamics fit (from recover_dynamics()) or a Seurat / SingleCellExperiment object, not %s",
        class(x)[1L])
}

#' @rdname rank_dynamical_genes
#' @export
rank_dynamical_genes.scnative_dynamics <- function(x, Ms, Mu, groupby, n_genes = 100,
                                                   connectivities = x$connectivities, ...) {
  stop_dots(...)
  validate_dynamics(x, "x")
  mm <- dyn_check_moments(x, Ms, Mu)
  var <- x$var
  n <- ncol(mm$Ms)
  grp <- rank_groups(if (missing(groupby)) NULL else groupby, n)
  check_number(n_genes, "n_genes", min = 1, whole = TRUE)
  need <- c("fit_alpha", "fit_beta", "fit_gamma", "fit_t_", "fit_scaling", "fit_std_u",
            "fit_std_s")
  miss <- setdiff(need, names(var))
  if (length(miss)) stopf("'x$var' lacks %s: run recover_dynamics() first", miss[1L])
  if (is.null(x$layers$fit_tau) || is.null(x$layers$fit_tau_)) {
    stopf("'x' has no fit_tau / fit_tau_ layers: run recover_dynamics() first")
  }
  g <- which(!is.na(var$fit_alpha))
  if (!length(g)) stopf("the fit has no fitted genes")
  basal <- isTRUE(x$uns$recover_dynamics$fit_basal_transcription)
  C <- if (is.null(connectivities)) NULL else normalise_connectivities(connectivities, n)
  d <- dyn_state_distances(var, x$layers, mm$Ms, mm$Mu, g, basal, C)

  # nearest state: argmin of the smoothed distances over varx, numpy's argmin (the first NaN,
  # else the first minimum); steady states folded to 1 (zero) and 0 (upper)
  best <- d$res[[1L]] / d$varx
  k <- matrix(0L, nrow(best), ncol(best))
  for (j in 2:4) {
    r <- d$res[[j]] / d$varx
    take <- !is.na(best) & (is.na(r) | r < best)
    best[take] <- r[take]
    k[take] <- j - 1L
  }
  on <- k == 1L | k == 2L
  off <- k == 0L | k == 3L
  distu <- d$distu * on + d$distu_ * off
  dists <- d$dists * on + d$dists_ * off
  # only cells above a fifth of the gene's maximum u and s count (float32 thresholds when u
  # and s are the float32 layers)
  thr <- function(m) {
    t <- apply(m, 1L, max) / 5
    if (basal) t else as_f32(t)
  }
  w <- ifelse(d$u > thr(d$u) & d$s > thr(d$s), 1, NaN)
  distu <- distu * w
  dists <- dists * w
  distx <- distu^2 + dists^2
  nanmean <- function(M) {
    ok <- !is.na(M)
    M[!ok] <- 0
    seq_row_sums(M, seq_len(ncol(M))) / rowSums(ok)
  }
  varx <- nanmean(distx) - nanmean(sign(dists) * sqrt(distx))^2
  distx0 <- distx
  distx0[is.na(distx0)] <- 0
  counted <- !is.na(distx)
  labels <- grp$labels
  genes <- rownames(var)[g]
  L <- matrix(NA_real_, length(g), length(labels), dimnames = list(genes, labels))
  for (kk in seq_along(labels)) {
    cells <- which(!is.na(grp$index) & grp$index == kk)
    total <- seq_row_sums(distx0, cells)
    cnt <- rowSums(counted[, cells, drop = FALSE]) - length(cells) * 0.01
    cnt <- pmax(cnt, 2)
    total[cnt < max(cnt) / 5] <- max(total)
    # (a negative varx gives NaN, as upstream)
    ll <- -1 / 2 / cnt * total / varx - 1 / 2 * suppressWarnings(log(2 * pi * varx))
    ll[total == 0] <- NaN
    L[, kk] <- exp(ll)
  }
  top <- rank_top(np_nan_to_num(L), n_genes, labels)
  L[is.nan(L)] <- NA_real_ # no likelihood (no counts or no variance in the group)
  list(names = top$names, scores = top$scores, likelihood = L)
}
