# RNA velocity around the dynamical model: first-order moments (scv.pp.moments), dynamical
# velocities (scv.tl.velocity(mode = "dynamical")), the simulator (scv.datasets.simulation),
# plots (the Seurat / SingleCellExperiment methods are in R/velocity_objects.R). kNN search
# and the Mersenne Twister streams are in src/velocity.c. Spec (scVelo dynamics) sections 5.1, 7,
# 8 and 10.

# ------------------------------------------------------------------ helpers

# ggplot2's .data pronoun in aes() (plots below)
utils::globalVariables(".data")

# Values rounded to float32 (as numpy's astype(np.float32)), kept as doubles.
as_f32 <- function(x) {
  if (!length(x)) return(x)
  d <- dim(x)
  dn <- dimnames(x)
  out <- .Call(C_scnative_dynamics_f32, as.double(x))
  dim(out) <- d
  dimnames(out) <- dn
  out
}

# scVelo's test for raw counts: the first 5 cells (columns here) hold whole numbers only.
looks_like_counts <- function(x) {
  m <- x[, seq_len(min(5L, ncol(x))), drop = FALSE]
  v <- if (inherits(m, "sparseMatrix")) methods::as(m, "CsparseMatrix")@x else as.vector(m)
  all(abs(v %% 1) <= 1e-3)
}

# scVelo's normalize_per_cell: each cell divided by (its total / median total).
normalise_cells <- function(x) {
  counts <- Matrix::colSums(x)
  after <- stats::median(counts)
  after <- after + (after == 0)
  counts <- counts / after
  counts <- counts + (counts == 0)
  if (inherits(x, "sparseMatrix")) {
    x %*% Matrix::Diagonal(x = 1 / counts)
  } else {
    x / rep(counts, each = nrow(x))
  }
}

# Top principal component scores (cells x n_comps) of the cells of a genes x cells matrix,
# centred per gene (scanpy's pp.pca, zero_center = TRUE; signs are arbitrary). A sparse matrix
# is never made dense (pca_scores_sparse).
pca_scores <- function(x, n_comps, threads = 1L) {
  if (inherits(x, "sparseMatrix")) return(pca_scores_sparse(x, n_comps, threads = threads))
  x <- as.matrix(x)
  storage.mode(x) <- "double"
  xc <- t(x - rowMeans(x))  # cells x genes, centred
  n <- nrow(xc)
  p <- ncol(xc)
  if (p <= n) {
    e <- eigen(crossprod(xc), symmetric = TRUE)
    v <- e$vectors[, seq_len(n_comps), drop = FALSE]
    return(xc %*% v)
  }
  if (n <= 4000L) {
    s <- La.svd(xc, nu = n_comps, nv = 0L)
    return(sweep(s$u, 2L, s$d[seq_len(n_comps)], "*"))
  }
  e <- eigen(tcrossprod(xc), symmetric = TRUE)
  sweep(e$vectors[, seq_len(n_comps), drop = FALSE], 2L,
        sqrt(pmax(e$values[seq_len(n_comps)], 0)), "*")
}

# PCA of a sparse genes x cells matrix with the centring kept implicit (x - mu 1'): no
# cells x genes dense matrix. Exact (as the dense path, up to sign and rounding) when the
# smaller side is at most `max_exact`: the genes x genes covariance (genes <= cells) or the
# cells x cells Gram matrix (cells < genes), from sparse products (the covariance by a C
# kernel over the genes, thread-count independent), then an eigen
# decomposition. Otherwise iterative, to a relative accuracy of about `tol`: irlba's
# restarted Lanczos bidiagonalisation (Baglama & Reichel 2005) when the package is
# installed, with its centring argument; else a randomised subspace iteration (Halko,
# Martinsson & Tropp 2011) with a block of max(2 n_comps, n_comps + 20) vectors, iterated
# until the scores change by less than `tol` (relative to the first singular value). The
# start vectors are a fixed numpy-seeded Gaussian stream: deterministic, R's RNG untouched.
pca_scores_sparse <- function(x, n_comps, solver = c("auto", "exact", "lanczos", "randomized"),
                              max_exact = 3000L, tol = 1e-10, max_iter = 300L, threads = 1L) {
  solver <- match.arg(solver)
  x <- methods::as(methods::as(methods::as(x, "CsparseMatrix"), "generalMatrix"), "dMatrix")
  p <- nrow(x)
  n <- ncol(x)
  mu <- Matrix::rowMeans(x)
  if (solver == "auto") {
    solver <- if (min(p, n) <= max_exact) {
      "exact"
    } else if (requireNamespace("irlba", quietly = TRUE)) {
      "lanczos"
    } else {
      "randomized"
    }
  }
  if (solver == "lanczos") {
    v0 <- .Call(C_scnative_velocity_mt, 0, as.double(p), 1L)
    work <- min(n_comps + 40L, p, n)
    s <- irlba::irlba(Matrix::t(x), nv = n_comps, nu = n_comps, center = mu, tol = tol * 10,
                      work = work, v = v0, maxit = max_iter)
    return(sweep(s$u, 2L, s$d, "*"))
  }
  if (solver == "exact") {
    if (p <= n) {
      tx <- Matrix::t(x)  # the cells of each gene
      cov <- .Call(C_scnative_velocity_gram, x@p, x@i, x@x, tx@p, tx@i, tx@x, threads)
      rm(tx)
      cov <- cov - n * tcrossprod(mu)
      e <- eigen(cov, symmetric = TRUE)
      v <- e$vectors[, seq_len(n_comps), drop = FALSE]
      sc <- as.matrix(Matrix::crossprod(x, v))
      return(sc - rep(drop(crossprod(mu, v)), each = n))
    }
    a <- as.vector(Matrix::crossprod(x, mu))
    gram <- as.matrix(Matrix::crossprod(x))
    gram <- gram - outer(a, rep(1, n)) - outer(rep(1, n), a) + sum(mu * mu)
    e <- eigen(gram, symmetric = TRUE)
    return(sweep(e$vectors[, seq_len(n_comps), drop = FALSE], 2L,
                 sqrt(pmax(e$values[seq_len(n_comps)], 0)), "*"))
  }
  # A = (x - mu 1')' (cells x genes); A v and A' u without forming A
  a_mul <- function(v) {
    out <- as.matrix(Matrix::crossprod(x, v))
    out - rep(drop(crossprod(mu, v)), each = n)
  }
  at_mul <- function(u) as.matrix(x %*% u) - outer(mu, colSums(u))
  l <- min(max(2L * n_comps, n_comps + 20L), p, n)
  omega <- matrix(.Call(C_scnative_velocity_mt, 0, as.double(p) * l, 1L), p, l)
  y <- a_mul(omega)
  prev <- NULL
  for (it in seq_len(max_iter)) {
    q <- qr.Q(qr(y))
    s <- svd(at_mul(q), nv = 0L)  # left vectors: approximate principal axes, ordered
    y <- a_mul(s$u)
    sc <- y[, seq_len(n_comps), drop = FALSE]
    if (!is.null(prev)) {
      sg <- sign(colSums(sc * prev))
      sg[sg == 0] <- 1
      change <- max(abs(sc - rep(sg, each = n) * prev)) / max(s$d[1L], .Machine$double.xmin)
      if (change < tol) return(sc)
    }
    prev <- sc
  }
  warning(sprintf("the randomised PCA did not converge in %d iterations (score change %.2g)",
                  max_iter, change), call. = FALSE)
  sc
}

# umap's smooth_knn_dist (local_connectivity = 1, bandwidth = 1) on float32 distances
# (n x k, self first): returns sigma and rho per cell.
smooth_knn <- function(d, k) {
  n <- nrow(d)
  target <- log2(k)
  fmax <- 3.4028234663852886e38
  nz <- d > 0
  rho <- numeric(n)
  has <- rowSums(nz) > 0
  if (any(has)) {
    first <- max.col(nz[has, , drop = FALSE], ties.method = "first")
    rho[has] <- d[has, , drop = FALSE][cbind(seq_len(sum(has)), first)]
  }
  lo <- numeric(n)
  hi <- rep(fmax, n)
  mid <- rep(1, n)
  active <- rep(TRUE, n)
  dd <- d[, -1L, drop = FALSE] - rho
  for (it in seq_len(64L)) {
    ia <- which(active)
    if (!length(ia)) break
    dsub <- dd[ia, , drop = FALSE]
    term <- exp(-(dsub / mid[ia]))
    term[dsub <= 0] <- 1
    psum <- rowSums(term)
    done <- abs(psum - target) < 1e-5
    up <- !done & psum > target
    down <- !done & !up
    i_up <- ia[up]
    hi[i_up] <- mid[i_up]
    mid[i_up] <- (lo[i_up] + hi[i_up]) / 2
    i_dn <- ia[down]
    lo[i_dn] <- mid[i_dn]
    dbl <- hi[i_dn] >= fmax
    mid[i_dn[dbl]] <- mid[i_dn[dbl]] * 2
    mid[i_dn[!dbl]] <- (lo[i_dn[!dbl]] + hi[i_dn[!dbl]]) / 2
    active[ia[done]] <- FALSE
  }
  sigma <- as_f32(mid)
  mean_all <- mean(d)
  mean_row <- rowMeans(d)
  floor_ <- ifelse(rho > 0, 1e-3 * mean_row, 1e-3 * mean_all)
  sigma <- ifelse(sigma < floor_, as_f32(floor_), sigma)
  list(sigma = sigma, rho = rho)
}

# scanpy's umap connectivities (fuzzy union of the kNN memberships) from kNN indices and
# distances (n x k, self first, 1-based).
umap_connectivities <- function(idx, dst, k) {
  n <- nrow(idx)
  d <- as_f32(dst)
  sr <- smooth_knn(d, k)
  rho <- sr$rho
  sigma <- sr$sigma
  val <- exp(-((d - rho) / sigma))
  val[(d - rho) <= 0 | sigma == 0] <- 1
  val[idx == seq_len(n)] <- 0
  val <- as_f32(val)
  ok <- idx > 0 & val > 0
  P <- Matrix::sparseMatrix(i = row(idx)[ok], j = idx[ok], x = val[ok], dims = c(n, n))
  Pt <- Matrix::t(P)
  G <- P + Pt - P * Pt
  G <- Matrix::drop0(methods::as(G, "CsparseMatrix"))
  G@x <- as_f32(G@x)
  G
}

check_pair <- function(spliced, unspliced, a = "spliced", b = "unspliced") {
  s <- as_checked_matrix(spliced, a, nonneg = TRUE, dense = FALSE, max_abs = dyn_max_abs,
                         why = dyn_max_why)
  u <- as_checked_matrix(unspliced, b, nonneg = TRUE, dense = FALSE, max_abs = dyn_max_abs,
                         why = dyn_max_why)
  if (!identical(dim(s), dim(u))) {
    stopf("'%s' and '%s' must have the same dimensions (%s is %d x %d, %s is %d x %d)", a, b,
          a, nrow(s), ncol(s), b, nrow(u), ncol(u))
  }
  if (!identical(dimnames(s), dimnames(u))) {
    stopf("'%s' and '%s' must have the same dimnames (genes in rows, cells in columns)", a, b)
  }
  if (ncol(s) < 3L) stopf("'%s' must have at least 3 cells (columns)", a)
  to <- function(m) {
    if (inherits(m, "Matrix")) {
      m <- methods::as(methods::as(methods::as(m, "CsparseMatrix"), "generalMatrix"), "dMatrix")
    } else {
      m <- as.matrix(m)
      storage.mode(m) <- "double"
    }
    m
  }
  list(s = to(s), u = to(u))
}

# ------------------------------------------------------------------ moments

#' First-order moments of spliced and unspliced counts (scVelo's `pp.moments`)
#'
#' Averages each cell's spliced and unspliced abundances over its nearest neighbours, as
#' `scvelo.pp.moments(adata, n_neighbors = 30)` does (scVelo 0.3.4) when given raw counts
#' and no neighbour graph: layers that look like raw counts (whole numbers in the first five
#' cells) are divided per cell by total / median total (`normalize_per_cell`, each layer by
#' its own totals); the principal components of the normalised `X` (by default the spliced
#' counts, as in scVelo's data sets; no log transform) are computed (centred, `min(30,
#' genes - 1, cells - 1)` components; fewer than 50 genes: `X` itself); each cell's
#' `n_neighbors` nearest cells (itself included) are found by Euclidean distance (exactly
#' below 8,192 cells, see `method`); the
#' UMAP fuzzy-union connectivities are formed (scanpy's `method = "umap"`); finally the graph
#' is binarised, given self loops and row-normalised (`get_connectivities`), and
#' `Ms = C spliced`, `Mu = C unspliced`.
#'
#' With `connectivities` (a cells x cells graph: scanpy's `obsp["connectivities"]`, a Seurat
#' `FindNeighbors()` graph, ...), no PCA/kNN is run and every edge of the graph is used.
#'
#' @param x The spliced counts (default method; may also be given by name as `spliced =`),
#'   or a Seurat / SingleCellExperiment object.
#' @param unspliced Default method: genes x cells numeric matrix (dense or `dgCMatrix`) of
#'   unspliced counts, with the same dimensions and dimnames as the spliced counts `x`;
#'   finite, non-negative. Object methods: the name of the unspliced assay.
#' @param n_neighbors Whole number >= 2 (default 30): neighbours per cell, self included.
#' @param n_pcs `NULL` (upstream's default: 30 components) or a whole number >= 1 of
#'   principal components.
#' @param connectivities `NULL` or a cells x cells neighbour graph (matrix or `Matrix`);
#'   entries > 0 are edges.
#' @param normalize Logical: normalise layers that look like raw counts (upstream always
#'   does).
#' @param X `NULL` (the spliced counts) or a genes x cells matrix on which PCA is run.
#' @param threads `NULL` (package default) or a whole number of threads for the kNN search,
#'   the sparse covariance and the averaging (results do not depend on it).
#' @param method Neighbour search: `"auto"` (default: `"exact"` below 8,192 cells, where
#'   scanpy uses its brute-force search for the Euclidean metric, `"approx"` from 8,192 on,
#'   where scanpy uses pynndescent), `"exact"` (brute force, `O(cells^2)` time) or
#'   `"approx"` (NN-descent, about `O(cells)` time).
#' @param seed Whole number >= 0 (default 0): the seed of the approximate search's random
#'   start graph. The result depends only on the seed and the data, not on `threads`.
#' @param ... Passed to methods.
#' @return An object of class `scnative_moments`: a list with `Ms`, `Mu` (dense genes x
#'   cells), `connectivities` (the cells x cells graph: UMAP weights, or the given one),
#'   `distances` (kNN distances, self excluded; `NULL` when a graph was given),
#'   `normalized_connectivities` (the row-normalised matrix applied) and `normalized`
#'   (whether the counts were normalised).
#' @details Memory stays `O(nonzeros + cells x (k + n_pcs))` besides the dense `Ms`/`Mu`
#'   (and a `min(genes, cells)^2` matrix for an exact PCA): a sparse (`dgCMatrix`) input is
#'   never made dense. Its PCA keeps the centring implicit:
#'   exact, from the genes x genes covariance (or the cells x cells Gram matrix when there are
#'   fewer cells than genes) formed from the sparse matrix, when the smaller of the two sides is
#'   at most 3,000 (it then equals the dense input's PCA up to rounding and signs); otherwise
#'   the top components by a restarted Lanczos bidiagonalisation (the 'irlba' package, if
#'   installed) or a randomised subspace iteration, to about 1e-10 relative accuracy.
#'
#'   The exact kNN search is brute force (`O(cells^2)` time, `O(cells x k)` memory, OpenMP
#'   over cells), as scanpy's below 8,192 cells. The approximate search (`method = "approx"`,
#'   the default from 8,192 cells as scanpy's pynndescent) is NN-descent (Dong, Moses & Li
#'   2011) from a start graph of cells near in the order of the first principal component
#'   and random cells: each round every cell compares the neighbourhoods (forward and reverse
#'   neighbours, a random sample of at most `1.5 (k - 1)`) of the cells of its own, until
#'   fewer than 0.1% of the list entries change (at most `max(10, log2(cells))` rounds). Every neighbour found has its exact distance; on
#'   30-dimensional simulated scores about 99% or more of the exact neighbours are found, so
#'   the graph may differ from scanpy's (itself approximate) in a few neighbours.
#' @examples
#' sim <- simulate_velocity(n_obs = 100, n_vars = 8)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
#' dim(m$Ms)
#' @export
moments <- function(x, ...) {
  if (missing(x)) {
    dots <- list(...)
    if (is.null(dots$spliced)) stopf("'spliced' (the first argument) is missing")
    x <- dots$spliced
    dots$spliced <- NULL
    return(do.call(moments, c(list(x), dots)))
  }
  UseMethod("moments")
}

#' @rdname moments
#' @export
moments.default <- function(x, unspliced, n_neighbors = 30, n_pcs = NULL,
                            connectivities = NULL, normalize = TRUE, X = NULL, threads = NULL,
                            method = c("auto", "exact", "approx"), seed = 0, ...) {
  if (missing(unspliced)) stop_missing_companion("unspliced", x)
  pr <- check_pair(x, unspliced, a = "x")
  s <- pr$s
  u <- pr$u
  check_number(n_neighbors, "n_neighbors", min = 2, whole = TRUE)
  check_number(n_pcs, "n_pcs", min = 1, whole = TRUE, allow_null = TRUE)
  check_flag(normalize, "normalize")
  method <- check_choice(method, c("auto", "exact", "approx"), "method")
  check_number(seed, "seed", min = 0, max = 2^53 - 1, whole = TRUE)
  nth <- resolve_threads(threads)
  n_cells <- ncol(s)
  cells <- colnames(s)
  if (!is.null(X)) {
    X <- as_checked_matrix(X, "X", dense = FALSE)
    if (ncol(X) != n_cells) stopf("'X' must have %d columns (cells), not %d", n_cells, ncol(X))
  }
  was_norm <- FALSE
  if (normalize && (looks_like_counts(s) || looks_like_counts(u))) {
    if (looks_like_counts(s)) s <- normalise_cells(s)
    if (looks_like_counts(u)) u <- normalise_cells(u)
    was_norm <- TRUE
  }
  dist <- NULL
  if (is.null(connectivities)) {
    if (is.null(X)) {
      X <- pr$s
    }
    # upstream normalises X along with the layers (only when the layers triggered it)
    if (was_norm && looks_like_counts(X)) X <- normalise_cells(X)
    n_genes <- nrow(X)
    k <- n_neighbors
    if (k > n_cells) k <- 1L + as.integer(0.5 * n_cells)
    if (n_genes < 50L) {
      rep_ <- t(as.matrix(X))
      if (!is.null(n_pcs)) rep_ <- rep_[, seq_len(min(n_pcs, ncol(rep_))), drop = FALSE]
    } else {
      n_comps <- min(n_pcs %||% 30, n_genes - 1L, n_cells - 1L)
      rep_ <- pca_scores(X, n_comps, nth)
    }
    storage.mode(rep_) <- "double"
    rep_ <- as_f32(rep_)
    nn <- knn_graph(rep_, k, method, seed, nth)
    idx <- nn[[1L]]
    dst <- nn[[2L]]
    connectivities <- umap_connectivities(idx, dst, k)
    keep <- col(idx) > 1L & idx > 0L
    dist <- Matrix::sparseMatrix(i = row(idx)[keep], j = idx[keep], x = dst[keep],
                                 dims = c(n_cells, n_cells), dimnames = list(cells, cells))
    dimnames(connectivities) <- list(cells, cells)
  } else {
    check_valid_matrix(connectivities, "connectivities")
    connectivities <- methods::as(methods::as(connectivities, "CsparseMatrix"), "generalMatrix")
    if (nrow(connectivities) != n_cells || ncol(connectivities) != n_cells) {
      stopf("'connectivities' must be a %d x %d matrix (cells x cells), not %d x %d", n_cells,
            n_cells, nrow(connectivities), ncol(connectivities))
    }
  }
  C <- normalise_connectivities(connectivities, n_cells, cells)
  # C is cells x cells (rows sum to 1); genes x cells moments are x C'.
  Ct <- Matrix::t(C)
  Ms <- smooth_layer(s, Ct, nth)
  Mu <- smooth_layer(u, Ct, nth)
  dimnames(Ms) <- dimnames(Mu) <- dimnames(pr$s)
  structure(list(Ms = Ms, Mu = Mu, connectivities = connectivities, distances = dist,
                 normalized_connectivities = C, normalized = was_norm),
            class = "scnative_moments")
}

# Cells below which method = "auto" searches neighbours exactly: scanpy's brute-force
# shortcut for the Euclidean metric (n_obs < 8192); above, it uses pynndescent.
knn_exact_below <- 8192L

# kNN (self first, 1-based; n x k indices and distances) of the rows of `rep_`: exact brute
# force, or NN-descent (src/velocity.c) for method = "approx", or "auto" with >= 8192 cells.
knn_graph <- function(rep_, k, method, seed, nth) {
  n <- nrow(rep_)
  if (method == "exact" || (method == "auto" && n < knn_exact_below)) {
    return(.Call(C_scnative_velocity_knn, rep_, as.integer(k), nth))
  }
  # rounds as pynndescent in scanpy (max(5, round(log2 n))) but at least 10; the search
  # stops earlier once fewer than 0.1% of the list entries change in a round. Each cell
  # joins at most 1.5 (k - 1) (at most 60) of its forward and reverse neighbours per round.
  iters <- max(10L, as.integer(round(log2(n))))
  cand <- as.integer(min(60, max(k - 1, round(1.5 * (k - 1)))))
  nn <- .Call(C_scnative_velocity_nndescent, rep_, as.integer(k), as.double(seed), iters,
              0.001, cand, nth)
  nn[1:2]
}

# x C' as a dense genes x cells matrix rounded to float32 (x dense or a dgCMatrix; Ct = t(C)
# column-compressed), with no other genes x cells temporary.
smooth_layer <- function(x, Ct, nth) {
  Ct <- methods::as(methods::as(Ct, "CsparseMatrix"), "dMatrix")
  if (inherits(x, "sparseMatrix")) {
    x <- methods::as(methods::as(methods::as(x, "CsparseMatrix"), "generalMatrix"), "dMatrix")
    out <- .Call(C_scnative_velocity_smooth, NULL, x@p, x@i, x@x, nrow(x), Ct@p, Ct@i, Ct@x,
                 nth)
  } else {
    x <- as.matrix(x)
    storage.mode(x) <- "double"
    out <- .Call(C_scnative_velocity_smooth, x, NULL, NULL, NULL, nrow(x), Ct@p, Ct@i, Ct@x,
                 nth)
  }
  out
}

#' @exportS3Method print scnative_moments
print.scnative_moments <- function(x, ...) {
  cat(sprintf("<scnative_moments> %d genes x %d cells; graph with %d edges%s\n", nrow(x$Ms),
              ncol(x$Ms), length(x$connectivities@x),
              if (isTRUE(x$normalized)) "; counts normalised per cell" else ""))
  invisible(x)
}

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
                                       resume = NULL, progress = interactive(), ...) {
  validate_dynamics(x, "x")
  parallel <- check_parallel(parallel)
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
    r <- velocity_rows(var, x$layers, Ms, Mu, todo, basal, if (connect) C)
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

# Velocities of the fitted genes 'g' (rows of Ms, Mu, var, layers): every step is row-wise
# (spec: tl.velocity, dynamical mode). C: the normalised graph, or NULL (no smoothing).
velocity_rows <- function(var, layers, Ms, Mu, g, basal, C) {
  connect <- !is.null(C)
  n_cells <- ncol(Ms)
  d <- dyn_state_distances(var, layers, Ms, Mu, g, basal, C)
  alpha <- d$alpha
  beta <- d$beta
  gamma <- d$gamma
  t_ <- d$t_
  scaling <- d$scaling
  u <- d$u
  s <- d$s
  tau <- d$tau
  tau_ <- d$tau_
  u0_ <- d$u0_
  s0_ <- d$s0_
  ut <- d$ut
  st <- d$st
  ut_ <- d$ut_
  st_ <- d$st_
  varx <- d$varx
  smooth <- function(m) if (connect) as.matrix(m %*% Matrix::t(C)) else m
  sdx <- sqrt(pmax(varx, 0))
  sdx[!(varx > 0)] <- NA_real_ # no variance (a constant gene): no likelihood (upstream: NaN)
  lik <- lapply(d$res, function(r) {
    1 / (2 * pi * sdx) * exp(-0.5 * (r / varx))
  })
  k <- matrix(4L, nrow(s), n_cells)
  best <- matrix(1e-6, nrow(s), n_cells)
  for (j in 4:1) {
    take <- !is.na(lik[[j]]) & lik[[j]] >= best
    best[take] <- lik[[j]][take]
    k[take] <- j - 1L
  }
  t <- tau * (k == 1L) + (tau_ + t_) * (k == 0L)
  if (connect) {
    t <- smooth(t)
    on <- (k < 2L) & (t < t_)
    off <- (k < 2L) & (t >= t_)
    o2 <- t < t_
    tau2 <- t * o2 + (t - t_) * (1 - o2)
    u0v <- 0 * o2 + u0_ * (1 - o2)
    s0v <- 0 * o2 + s0_ * (1 - o2)
    av <- alpha * o2 + 0 * (1 - o2)
    ut <- ode_u(tau2, u0v, av, beta)
    st <- ode_s(tau2, s0v, u0v, av, beta, gamma)
    ut <- ut * on + ut * off
    st <- st * on + st * off
    av <- av * on
  } else {
    on <- k == 1L
    off <- k == 0L
    ut <- ut * on + ut_ * off
    st <- st * on + st_ * off
    av <- alpha * on
  }
  vt <- ut * beta - st * gamma
  wt <- (av - beta * ut) * scaling
  vt <- pmax(vt, -s)
  wt <- pmax(wt, -u * scaling)
  list(vt = vt, wt = wt)
}

# Runs on a future worker: velocity_rows() of one chunk of genes.
velocity_chunk_worker <- function(task, shared, threads, p) {
  if (isTRUE(task$fail)) stop("failing on purpose (option scnative.future_fail_chunks)")
  r <- velocity_rows(task$var, task$layers, task$Ms, task$Mu, seq_len(nrow(task$Ms)),
                     shared$basal, shared$C)
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

# ------------------------------------------------------------------ simulation

# numpy's percentile (linear method) of a vector.
np_percentile <- function(x, q) {
  x <- sort(x)
  n <- length(x)
  v <- (n - 1) * (q / 100)
  lo <- floor(v)
  t <- v - lo
  a <- x[lo + 1]
  b <- x[min(lo + 2, n)]
  d <- b - a
  if (t >= 0.5) b - d * (1 - t) else a + d * t
}

#' Simulated spliced and unspliced counts (scVelo's `datasets.simulation`)
#'
#' Reproduces `scvelo.datasets.simulation()` (scVelo 0.3.4) number for number: cell times
#' from Python's `random` module (exponential increments), switching times at fractions of
#' the total time, the closed-form splicing kinetics, and Gaussian noise from numpy's legacy
#' `RandomState` (both Mersenne Twister streams and their seedings are re-implemented in C).
#'
#' @param n_obs Whole number >= 2: cells.
#' @param n_vars `NULL` (one gene per switch) or a whole number >= 1: genes.
#' @param alpha,beta,gamma Positive numbers (or vectors, one per gene) of transcription,
#'   splicing and degradation rates.
#' @param alpha_ Non-negative number: transcription in the repression phase.
#' @param t_max `NULL` or a positive number: total time.
#' @param noise_model `"normal"` (Gaussian noise, sd 1/10 of the 99th percentile) or
#'   `"gillespie"`.
#' @param noise_level Non-negative number or vector, one per gene.
#' @param switches `NULL` (fractions 0.4, 0.7, 1, 0.1, cycled) or a numeric vector of
#'   switching fractions of `t_max` in (0, 1].
#' @param random_seed Whole number in `[0, 2^32)`.
#' @return A list with `spliced` and `unspliced` (genes x cells matrices, genes "0", "1",
#'   ...), `obs` (data.frame with `true_t`, rounded to 2 decimals as upstream) and `var`
#'   (data.frame with `true_t_`, `true_alpha`, `true_beta`, `true_gamma`, `true_scaling`),
#'   and `t` (the unrounded cell times).
#' @examples
#' sim <- simulate_velocity(n_obs = 50, n_vars = 3, random_seed = 1)
#' sim$var
#' @export
simulate_velocity <- function(n_obs = 300, n_vars = NULL, alpha = 5, beta = 0.5, gamma = 0.3,
                              alpha_ = 0, t_max = NULL, noise_model = "normal",
                              noise_level = 1, switches = NULL, random_seed = 0) {
  check_number(n_obs, "n_obs", min = 2, whole = TRUE)
  check_number(n_vars, "n_vars", min = 1, whole = TRUE, allow_null = TRUE)
  for (a in c("alpha", "beta", "gamma", "noise_level")) {
    v <- get(a)
    if (!is.numeric(v) || !length(v) || anyNA(v) || any(!is.finite(v)) || any(v < 0)) {
      stopf("'%s' must be non-negative finite numbers", a)
    }
  }
  check_number(alpha_, "alpha_", min = 0)
  check_number(t_max, "t_max", min = 0, min_open = TRUE, allow_null = TRUE)
  check_string(noise_model, "noise_model")
  if (!noise_model %in% c("normal", "gillespie")) {
    stopf("'noise_model' must be \"normal\" or \"gillespie\", not '%s'", noise_model)
  }
  check_number(random_seed, "random_seed", min = 0, max = 2^32 - 1, whole = TRUE)
  if (!is.null(switches) && (!is.numeric(switches) || !length(switches) || anyNA(switches) ||
                               any(switches <= 0) || any(switches > 1))) {
    stopf("'switches' must be numbers in (0, 1]")
  }
  n_obs <- as.integer(n_obs)
  U0 <- .Call(C_scnative_velocity_mt, as.double(random_seed), as.double(n_obs - 1L), 0L)
  t <- c(0, cumsum(-0.1 * log(U0)))
  if (!is.null(t_max)) t <- t * (t_max / max(t))
  t_max <- max(t)
  cyc <- function(x, n) if (is.null(n)) x else rep(x, ceiling(n / length(x)))
  sw <- cyc(if (is.null(switches)) c(0.4, 0.7, 1, 0.1) else switches, n_vars)
  t_sw <- vapply(sw, function(f) max(t[t < f * t_max]), numeric(1))
  nl <- if (length(noise_level) > 1L) cyc(noise_level, n_vars %||% length(sw)) else
    rep(noise_level, n_vars %||% length(sw))
  nv <- if (is.null(n_vars)) min(length(sw), length(nl)) else as.integer(n_vars)
  per_gene <- function(x, i) if (length(x) > 1L && length(x) != n_obs) x[i] else x
  U <- S <- matrix(0, n_obs, nv)
  if (noise_model == "normal") {
    z <- .Call(C_scnative_velocity_mt, as.double(random_seed), as.double(2 * n_obs * nv), 1L)
  } else {
    z <- .Call(C_scnative_velocity_mt, as.double(random_seed), as.double(n_obs * nv), 2L)
  }
  zpos <- 0
  for (i in seq_len(nv)) {
    ai <- per_gene(alpha, i)
    bi <- per_gene(beta, i)
    gi <- per_gene(gamma, i)
    ts <- t_sw[i]
    o <- as.integer(t < ts)
    tau <- t * o + (t - ts) * (1 - o)
    u0s <- ode_u(ts, 0, ai, bi)
    s0s <- ode_s(ts, 0, 0, ai, bi, gi)
    u0v <- 0 * o + u0s * (1 - o)
    s0v <- 0 * o + s0s * (1 - o)
    av <- ai * o + alpha_ * (1 - o)
    if (noise_model == "gillespie") {
      uu <- numeric(n_obs)
      ss <- numeric(n_obs)
      b1 <- beta[1L]
      g1 <- gamma[1L]
      for (c in seq_len(n_obs)) {
        up <- if (c > 1L) uu[c - 1L] else 0
        sp <- if (c > 1L) ss[c - 1L] else 0
        du <- 0
        ds <- 0
        if (!(av[c] == 0 && up == 0 && sp == 0)) {
          props <- c(av[c], b1 * up, g1 * sp)
          tot <- sum(props)
          if (tot > 0) props <- props / tot
          cs <- cumsum(props)
          zpos <- zpos + 1
          p <- z[zpos]
          j <- 1L
          while (j <= 3L && p > cs[j]) j <- j + 1L
          du <- c(1, -1, 0, 0)[j]
          ds <- c(0, 1, -1, 0)[j]
        }
        uu[c] <- up + du
        ss[c] <- sp + ds
      }
      U[, i] <- pmax(uu, 0)
      S[, i] <- pmax(ss, 0)
    } else {
      ut <- ode_u(tau, u0v, av, bi)
      st <- ode_s(tau, s0v, u0v, av, bi, gi)
      sdu <- nl[i] * np_percentile(ut, 99) / 10
      ut <- ut + sdu * z[zpos + seq_len(n_obs)]
      zpos <- zpos + n_obs
      sds <- nl[i] * np_percentile(st, 99) / 10
      st <- st + sds * z[zpos + seq_len(n_obs)]
      zpos <- zpos + n_obs
      U[, i] <- pmax(ut, 0)
      S[, i] <- pmax(st, 0)
    }
  }
  genes <- as.character(seq_len(nv) - 1L)
  cells <- as.character(seq_len(n_obs) - 1L)
  scal <- function(x) if (length(x) > 1L && length(x) == n_obs) NA_real_ else x
  rate <- function(x) {
    x <- scal(x)
    if (length(x) > 1L) x[seq_len(nv)] else rep(x, nv)
  }
  var <- data.frame(true_t_ = t_sw[seq_len(nv)], true_alpha = rate(alpha),
                    true_beta = rate(beta), true_gamma = rate(gamma),
                    true_scaling = rep(1, nv), row.names = genes)
  obs <- data.frame(true_t = round(t, 2), row.names = cells)
  list(spliced = matrix(t(S), nv, n_obs, dimnames = list(genes, cells)),
       unspliced = matrix(t(U), nv, n_obs, dimnames = list(genes, cells)),
       obs = obs, var = var, t = t)
}

# ------------------------------------------------------------------ plots

need_ggplot <- function() need_pkg("ggplot2", "for the plots")

#' Phase portrait of one gene with its fitted dynamics
#'
#' Plots unspliced (`Mu`) against spliced (`Ms`) moments of every cell for one gene, the
#' trajectory of the fitted model in the same (raw) units (induction from 0 to the switching
#' time `t_`, then repression; `u = scaling * U(t)`), and the steady-state line
#' `Mu = (gamma / beta) Ms`.
#'
#' @param fit A `scnative_dynamics` fit ([recover_dynamics()]).
#' @param gene A single gene name (or row number) of the fit.
#' @param Ms,Mu Genes x cells moments the fit was made on.
#' @param color `NULL` (colour cells by the gene's fitted time `fit_t`), or a vector with
#'   one value per cell (a factor or character for groups, numeric for a continuous
#'   variable such as latent time).
#' @param n_points Whole number: points along each branch of the trajectory.
#' @return A `ggplot` object (layers: cells, trajectory, steady-state line).
#' @examples
#' if (requireNamespace("ggplot2", quietly = TRUE)) {
#'   sim <- simulate_velocity(n_obs = 200, n_vars = 2)
#'   fit <- recover_dynamics(sim$spliced, sim$unspliced, var_names = "all", threads = 1,
#'                           progress = FALSE)
#'   plot_phase_portrait(fit, "0", sim$spliced, sim$unspliced)
#' }
#' @export
plot_phase_portrait <- function(fit, gene, Ms, Mu, color = NULL, n_points = 200) {
  need_ggplot()
  validate_dynamics(fit, "fit", layers = c("fit_t", "fit_tau_"))
  check_number(n_points, "n_points", min = 2, whole = TRUE)
  genes <- rownames(fit$var)
  if (is.numeric(gene) && length(gene) == 1L && gene >= 1 && gene <= length(genes)) {
    gene <- genes[gene]
  }
  check_string(gene, "gene")
  if (!gene %in% genes) stopf("'gene' = \"%s\" is not a gene of the fit", gene)
  gi <- match(gene, genes)
  Ms <- as_checked_matrix(Ms, "Ms", nonneg = TRUE)
  Mu <- as_checked_matrix(Mu, "Mu", nonneg = TRUE)
  if (!identical(dim(Ms), dim(Mu)) || !identical(dimnames(Ms), dimnames(Mu))) {
    stopf("'Ms' and 'Mu' must have the same dimensions and dimnames (genes x cells)")
  }
  if (ncol(Ms) != ncol(fit$layers$fit_t)) {
    stopf("'Ms' has %d cells but the fit has %d", ncol(Ms), ncol(fit$layers$fit_t))
  }
  rn <- rownames(Ms) %||% genes
  if (!gene %in% rn) stopf("'gene' = \"%s\" is not a row of 'Ms' and 'Mu'", gene)
  s <- as.numeric(Ms[match(gene, rn), ])
  u <- as.numeric(Mu[match(gene, rn), ])
  n_cells <- length(s)
  v <- fit$var[gi, ]
  df <- data.frame(Ms = s, Mu = u)
  if (is.null(color)) {
    df$color <- as.numeric(fit$layers$fit_t[gi, ])
    clab <- "fit_t"
  } else {
    check_color(color, n_cells)
    df$color <- if (is.character(color)) factor(color) else color
    clab <- "color"
  }
  p <- ggplot2::ggplot(df, ggplot2::aes(x = .data$Ms, y = .data$Mu)) +
    ggplot2::geom_point(ggplot2::aes(colour = .data$color), size = 1, alpha = 0.8) +
    ggplot2::labs(title = gene, x = "spliced (Ms)", y = "unspliced (Mu)", colour = clab) +
    ggplot2::theme_minimal()
  if (!is.na(v$fit_alpha)) {
    a <- v$fit_alpha
    z <- v$fit_scaling
    b <- v$fit_beta * z
    g <- v$fit_gamma
    t_ <- v$fit_t_
    u0b <- if (isTRUE(fit$uns$recover_dynamics$fit_basal_transcription)) v$fit_u0 %||% 0 else 0
    s0b <- if (isTRUE(fit$uns$recover_dynamics$fit_basal_transcription)) v$fit_s0 %||% 0 else 0
    if (is.na(u0b)) u0b <- 0
    if (is.na(s0b)) s0b <- 0
    t_on <- seq(0, t_, length.out = n_points)
    u_sw <- ode_u(t_, 0, a, b)
    s_sw <- ode_s(t_, 0, 0, a, b, g)
    tau_max <- max(c(as.numeric(fit$layers$fit_tau_[gi, ]), t_), na.rm = TRUE)
    t_off <- seq(0, tau_max, length.out = n_points)
    traj <- rbind(
      data.frame(Ms = ode_s(t_on, 0, 0, a, b, g) + s0b, Mu = z * ode_u(t_on, 0, a, b) + u0b,
                 branch = "induction"),
      data.frame(Ms = ode_s(t_off, s_sw, u_sw, 0, b, g) + s0b,
                 Mu = z * ode_u(t_off, u_sw, 0, b) + u0b, branch = "repression"))
    slope <- g / v$fit_beta
    p <- p +
      ggplot2::geom_abline(slope = slope, intercept = u0b - slope * s0b, linetype = "dashed",
                           colour = "grey40") +
      ggplot2::geom_path(data = traj, ggplot2::aes(x = .data$Ms, y = .data$Mu,
                                                   linetype = .data$branch),
                         colour = "purple", linewidth = 0.9, inherit.aes = FALSE) +
      ggplot2::labs(linetype = "fitted")
  }
  p
}

#' Fitted kinetic parameters across genes
#'
#' Histograms of the fitted rates (log10 `alpha`, `beta`, `gamma`), switching time `t_`,
#' `scaling` and `likelihood` of every fitted gene.
#'
#' @param fit A `scnative_dynamics` fit ([recover_dynamics()]).
#' @param bins Whole number of histogram bins.
#' @return A `ggplot` object (one facet per parameter).
#' @examples
#' if (requireNamespace("ggplot2", quietly = TRUE)) {
#'   sim <- simulate_velocity(n_obs = 150, n_vars = 4)
#'   fit <- recover_dynamics(sim$spliced, sim$unspliced, var_names = "all", threads = 1,
#'                           progress = FALSE)
#'   plot_dynamics_params(fit)
#' }
#' @export
plot_dynamics_params <- function(fit, bins = 30) {
  need_ggplot()
  validate_dynamics(fit, "fit", layers = character())
  check_number(bins, "bins", min = 1, whole = TRUE)
  v <- fit$var[!is.na(fit$var$fit_alpha), , drop = FALSE]
  if (!nrow(v)) stopf("'fit' has no fitted genes")
  pars <- list(`log10 alpha` = log10(v$fit_alpha), `log10 beta` = log10(v$fit_beta),
               `log10 gamma` = log10(v$fit_gamma), `t_` = v$fit_t_,
               scaling = v$fit_scaling, likelihood = v$fit_likelihood)
  df <- data.frame(parameter = factor(rep(names(pars), each = nrow(v)), levels = names(pars)),
                   value = unlist(pars, use.names = FALSE),
                   gene = rep(rownames(v), length(pars)))
  df <- df[is.finite(df$value), , drop = FALSE]
  ggplot2::ggplot(df, ggplot2::aes(x = .data$value)) +
    ggplot2::geom_histogram(bins = bins, fill = "steelblue", colour = "white") +
    ggplot2::facet_wrap(~parameter, scales = "free") +
    ggplot2::labs(x = NULL, y = "genes",
                  title = sprintf("Fitted dynamics of %d genes", nrow(v))) +
    ggplot2::theme_minimal()
}
