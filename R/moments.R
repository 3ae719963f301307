# First-order moments (scv.pp.moments): per-cell normalisation, PCA (dense, or sparse by
# Lanczos / randomised SVD), the kNN graph and its UMAP connectivities, smoothing of the layers;
# and helpers shared by the velocity half (float32 rounding, count checks). kNN search is in
# src/velocity.c. Spec (scVelo dynamics) sections 5.1 and 10.

# ------------------------------------------------------------------ helpers

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
