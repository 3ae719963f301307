# moments() at scale: the approximate kNN (NN-descent) against the exact search, the sparse
# PCA against the dense one, a sparse 20,000-cell input against the dense path, argument
# checks. Independent of upstream (the exact search and the dense PCA are checked against
# scv.pp.moments in test-velocity.R).

# Cells on three noisy branches of a trajectory: `p`-dimensional scores with decaying spread.
sim_scores <- function(n, p, seed) {
  set.seed(seed)
  t <- stats::runif(n)
  br <- sample(3L, n, TRUE)
  x <- matrix(stats::rnorm(n * p), n, p) %*% diag(seq(1, 0.1, length.out = p))
  x[, 1] <- x[, 1] + 10 * t
  x[, 2] <- x[, 2] + 5 * sin(3 * t) * br
  x[, 3] <- x[, 3] + 4 * br
  as_f32 <- utils::getFromNamespace("as_f32", "scnative")
  as_f32(x)
}

# Poisson counts (genes x cells) along the same kind of trajectory.
sim_counts <- function(n, g, seed) {
  set.seed(seed)
  t <- stats::runif(n)
  br <- sample(3L, n, TRUE)
  rate <- 0.3 * outer(stats::runif(g, 0.05, 1), rep(1, n)) *
    exp(outer(stats::rnorm(g), t) + outer(stats::rnorm(g, sd = 0.7), br - 2))
  dn <- list(paste0("g", seq_len(g)), paste0("c", seq_len(n)))
  S <- matrix(stats::rpois(n * g, rate), g, n, dimnames = dn)
  U <- matrix(stats::rpois(n * g, 0.5 * rate), g, n, dimnames = dn)
  list(S = S, U = U)
}

# Fraction of the exact neighbours (self excluded) that a search found.
knn_recall <- function(approx, exact) {
  k <- ncol(exact) - 1L
  hits <- vapply(seq_len(nrow(exact)), function(i) {
    sum(approx[i, -1L] %in% exact[i, -1L])
  }, numeric(1))
  sum(hits) / (k * nrow(exact))
}

test_that("NN-descent finds >= 95% of the exact neighbours above the exact-search threshold", {
  knn_graph <- utils::getFromNamespace("knn_graph", "scnative")
  n <- utils::getFromNamespace("knn_exact_below", "scnative") + 500L
  x <- sim_scores(n, 30L, 1L)
  ex <- knn_graph(x, 30L, "exact", 0, 2L)
  ap <- knn_graph(x, 30L, "auto", 0, 2L)  # auto is approximate from 8192 cells on
  rec <- knn_recall(ap[[1L]], ex[[1L]])
  expect_gte(rec, 0.95)
  # self first, distinct neighbours, sorted distances; each found neighbour has its exact
  # distance (the same sums as the exact search)
  expect_identical(ap[[1L]][, 1L], seq_len(n))
  expect_true(all(ap[[2L]][, 1L] == 0))
  expect_false(any(apply(ap[[1L]], 1L, anyDuplicated) > 0))
  expect_true(all(apply(ap[[2L]], 1L, function(d) !is.unsorted(d))))
  i <- 17L
  j <- ap[[1L]][i, -1L]
  expect_equal(ap[[2L]][i, -1L], sqrt(colSums((t(x[j, ]) - x[i, ])^2)), tolerance = 1e-14)
  same <- ap[[1L]] == ex[[1L]]
  expect_identical(ap[[2L]][same], ex[[2L]][same])
  # the result depends on the seed, not on the number of threads
  expect_identical(knn_graph(x, 30L, "approx", 0, 1L), ap)
  other <- knn_graph(x, 30L, "approx", 7, 2L)
  expect_false(identical(other[[1L]], ap[[1L]]))
  expect_gte(knn_recall(other[[1L]], ex[[1L]]), 0.95)
  # a harder, isotropic 10-dimensional cloud, forced approximate below the threshold
  set.seed(2)
  y <- matrix(stats::rnorm(3000 * 10), 3000, 10)
  expect_gte(knn_recall(knn_graph(y, 15L, "approx", 0, 2L)[[1L]],
                        knn_graph(y, 15L, "exact", 0, 2L)[[1L]]), 0.95)
})

test_that("the sparse PCA equals the dense one (exact, Lanczos, randomised)", {
  pca_scores <- utils::getFromNamespace("pca_scores", "scnative")
  pca_sparse <- utils::getFromNamespace("pca_scores_sparse", "scnative")
  same_up_to_sign <- function(a, b) {
    sg <- sign(colSums(a * b))
    max(abs(a - rep(sg, each = nrow(a)) * b)) / max(abs(b))
  }
  d <- sim_counts(700L, 300L, 4L)
  # genes <= cells: covariance route; cells < genes: Gram route
  for (X in list(d$S, d$S[, 1:200])) {
    Xs <- methods::as(X, "CsparseMatrix")
    ref <- pca_scores(X, 20L)
    ex1 <- pca_sparse(Xs, 20L, threads = 1L)
    expect_lt(same_up_to_sign(ex1, ref), 1e-10)
    expect_identical(pca_sparse(Xs, 20L, threads = 2L), ex1)
    expect_lt(same_up_to_sign(pca_sparse(Xs, 20L, "randomized"), ref), 1e-6)
    if (requireNamespace("irlba", quietly = TRUE)) {
      expect_lt(same_up_to_sign(pca_sparse(Xs, 20L, "lanczos"), ref), 1e-6)
    }
  }
  # no dense copy: 200,000 genes x 3,500 cells (5.6 GB dense) with 60,000 non-zeros
  skip_if_not_installed("irlba")
  set.seed(5)
  big <- Matrix::sparseMatrix(i = sample(2e5, 6e4, TRUE), j = sample(3500, 6e4, TRUE),
                              x = stats::rpois(6e4, 3) + 1, dims = c(2e5, 3500))
  sc <- pca_sparse(big, 5L)
  expect_identical(dim(sc), c(3500L, 5L))
  expect_true(all(is.finite(sc)))
  # the scores are the centred data projected on orthonormal axes: the variance they carry
  # is at most the total variance
  expect_lte(sum(sc^2), sum(big@x^2) - ncol(big) * sum(Matrix::rowMeans(big)^2) + 1e-6)
})

test_that("moments() on a sparse 20,000-cell input equals the dense path", {
  d <- sim_counts(20000L, 500L, 3L)
  Ss <- methods::as(d$S, "CsparseMatrix")
  Us <- methods::as(d$U, "CsparseMatrix")
  args <- list(n_neighbors = 15L, n_pcs = 10L, method = "exact", threads = 2L)
  # without normalisation the inputs are the same numbers: the same graph, the same moments
  md <- do.call(moments, c(list(d$S, d$U, normalize = FALSE), args))
  ms <- do.call(moments, c(list(Ss, Us, normalize = FALSE), args))
  expect_true(is.matrix(ms$Ms) && is.matrix(ms$Mu))
  expect_identical(ms$distances > 0, md$distances > 0)
  expect_lt(max(abs(ms$Ms - md$Ms)), 1e-12)
  expect_lt(max(abs(ms$Mu - md$Mu)), 1e-12)
  expect_identical(dimnames(ms$Ms), dimnames(d$S))
  # float32 distances (umap weights) of PCA scores that differ by rounding only
  expect_lt(max(abs(ms$connectivities - md$connectivities)), 1e-5)
  # Ms is the row-normalised graph average of the spliced counts (independent product)
  C <- ms$normalized_connectivities
  expect_lt(max(abs(ms$Ms[, 1:50] - as.matrix(Ss %*% Matrix::t(C[1:50, ])))), 1e-5)
  # normalised counts (the first 4,000 cells): sparse inputs are scaled by reciprocals as
  # upstream's sparse path, dense ones divided, so the moments agree to float32 precision
  keep <- seq_len(4000L)
  ms2 <- do.call(moments, c(list(Ss[, keep], Us[, keep]), args))
  expect_true(ms2$normalized)
  md2 <- do.call(moments, c(list(d$S[, keep], d$U[, keep]), args))
  expect_identical(ms2$normalized_connectivities > 0, md2$normalized_connectivities > 0)
  expect_lt(max(abs(ms2$Ms - md2$Ms)) / max(md2$Ms), 1e-6)
  expect_lt(max(abs(ms2$Mu - md2$Mu)) / max(md2$Mu), 1e-6)
})

test_that("moments() checks method and seed", {
  sim <- simulate_velocity(n_obs = 40, n_vars = 6, random_seed = 1)
  expect_error(moments(sim$spliced, sim$unspliced, method = "annoy"), "'method'")
  expect_error(moments(sim$spliced, sim$unspliced, method = NA), "'method'")
  expect_error(moments(sim$spliced, sim$unspliced, method = c("exact", "approx")), "'method'")
  expect_error(moments(sim$spliced, sim$unspliced, seed = -1), "'seed'")
  expect_error(moments(sim$spliced, sim$unspliced, seed = 1.5), "'seed'")
  expect_error(moments(sim$spliced, sim$unspliced, seed = "a"), "'seed'")
  # below the threshold "auto" is the exact search; "approx" works on few cells too
  m0 <- moments(sim$spliced, sim$unspliced, n_neighbors = 8, threads = 1)
  me <- moments(sim$spliced, sim$unspliced, n_neighbors = 8, method = "exact", threads = 1)
  expect_identical(m0, me)
  ma <- moments(sim$spliced, sim$unspliced, n_neighbors = 8, method = "approx", threads = 1)
  expect_gte(sum((ma$distances > 0) & (me$distances > 0)) / sum(me$distances > 0), 0.95)
})
