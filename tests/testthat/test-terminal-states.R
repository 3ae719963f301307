# terminal_states(), velocity_pseudotime() and their eigen solver: parity with live upstream
# scVelo (peers venv, same test run) on the CellRank golden files and on a synthetic 400-cell
# graph (upstream run in float32 as it is and in float64), the solver against LAPACK, thread
# invariance, bad input.

cap_test_threads(teardown_env())

ts_py_code <- "
import sys as _sys, numpy as _np, anndata as _ad, scipy.sparse as _sp, scvelo as _scv, warnings as _w
import scvelo.tools
_ts_mod = _sys.modules['scvelo.tools.terminal_states']
_w.filterwarnings('ignore')
_scv.settings.verbosity = 0

def _ts_trip(m):
    m = _sp.coo_matrix(m)
    return {'i': (m.row + 1).astype(float), 'j': (m.col + 1).astype(float),
            'x': m.data.astype(float), 'n': float(m.shape[0])}

def _ts_csr(t, dtype):
    n = int(t['n'])
    ij = (_np.asarray(t['i'], dtype=int) - 1, _np.asarray(t['j'], dtype=int) - 1)
    return _sp.csr_matrix((_np.asarray(t['x'], dtype=float), ij), shape=(n, n)).astype(dtype)

def _ts_run(a, float64=False):
    # terminal_states (+ the number of kept eigenvalues) and velocity_pseudotime as upstream
    # runs them; float64=True makes transition_matrix float64, so ARPACK runs in double
    tm = _ts_mod.transition_matrix
    if float64:
        _ts_mod.transition_matrix = lambda *ar, **kw: tm(*ar, **kw).astype(_np.float64)
    try:
        kept = []
        for bw in (True, False):
            T = _ts_mod.transition_matrix(a, backward=bw, self_transitions=False)
            kept.append(float(len(_ts_mod.eigs(T, eps=1e-3, perc=[2, 98], random_state=0)[0])))
        _scv.tl.terminal_states(a)
    finally:
        _ts_mod.transition_matrix = tm
    out = {'root': _np.asarray(a.obs['root_cells'], dtype=float),
           'end': _np.asarray(a.obs['end_points'], dtype=float), 'kept': kept}
    _scv.tl.velocity_pseudotime(a)
    out['vpt'] = _np.asarray(a.obs['velocity_pseudotime'], dtype=float)
    return out

def _ts_golden(path):
    a = _ad.read_h5ad(path)
    for k in ['root_cells', 'end_points', 'velocity_pseudotime']:
        del a.obs[k]
    # velocity_pseudotime reads uns (the golden files keep the graph in obsp)
    a.uns['velocity_graph'] = a.obsp['velocity_graph']
    a.uns['velocity_graph_neg'] = a.obsp['velocity_graph_neg']
    return a

def ts_golden(path):
    a0 = _ad.read_h5ad(path)
    a = _ts_golden(path)
    out = _ts_run(a)
    out['stored'] = {k: _np.asarray(a0.obs[k], dtype=float) for k in ['root_cells', 'end_points']}
    out['cells'] = list(a.obs_names)
    for k in ['velocity_graph', 'velocity_graph_neg', 'distances', 'connectivities']:
        out[k] = _ts_trip(a.obsp[k])
    return out

def ts_verify(path, gcc, Ms):
    # var['gene_count_corr'] present: terminal_states runs verify_roots on the given Ms
    a = _ts_golden(path)
    Ms = _np.asarray(Ms, dtype=float).T.copy()
    b = _ad.AnnData(X=Ms.copy(), obs=a.obs, obsp=dict(a.obsp), uns=dict(a.uns), layers={'Ms': Ms})
    b.var['gene_count_corr'] = _np.asarray(gcc, dtype=float)
    _scv.tl.terminal_states(b)
    return _np.asarray(b.obs['root_cells'], dtype=float)

def ts_graph(G, Gn, D, C, cells, float64=False):
    n = int(G['n'])
    a = _ad.AnnData(X=_np.zeros((n, 1), dtype=_np.float32))
    a.obs_names = list(cells)
    a.uns['velocity_graph'] = _ts_csr(G, _np.float32)
    a.uns['velocity_graph_neg'] = _ts_csr(Gn, _np.float32)
    a.obsp['distances'] = _ts_csr(D, _np.float64)
    a.obsp['connectivities'] = _ts_csr(C, _np.float32)
    a.uns['neighbors'] = {'params': {'n_neighbors': 15, 'method': 'umap'},
                          'connectivities_key': 'connectivities', 'distances_key': 'distances'}
    return _ts_run(a, float64)
"

ts_py <- function() peers_module(ts_py_code, "ts_graph")

ts_trip <- function(m) {
  m <- methods::as(methods::as(m, "generalMatrix"), "TsparseMatrix")
  list(i = m@i + 1, j = m@j + 1, x = m@x, n = nrow(m))
}
ts_sparse <- function(t, cells) {
  Matrix::sparseMatrix(i = as.vector(t$i), j = as.vector(t$j), x = as.vector(t$x),
                       dims = c(t$n, t$n), dimnames = list(cells, cells))
}
ts_graph_object <- function(G, Gn) {
  structure(list(graph = G, graph_neg = Gn, self_transition = numeric(nrow(G))),
            class = "scnative_velocity_graph")
}

# A Y-shaped trajectory in 2-D (stem, two branches) with noisy velocities; cosines between
# each cell's velocity and the displacements to its 2-hop kNN neighbours, as velocity_graph
# computes them; a kNN distance graph and a symmetric binary connectivity graph.
ts_synthetic <- function(n = 400, k = 15, drift = 0.3, seed = 1) {
  withr::with_seed(seed, {
    t <- sort(stats::runif(n))
    br <- ifelse(t > 0.5, sample(c(-1, 1), n, TRUE), 0)
    x <- cbind(t * 4, ifelse(t > 0.5, br * (t - 0.5) * 3, 0)) +
      matrix(stats::rnorm(2 * n, sd = 0.15), n)
    dx <- cbind(rep(4, n), ifelse(t > 0.5, br * 3, 0))
    v <- drift * dx / sqrt(rowSums(dx^2)) + matrix(stats::rnorm(2 * n, sd = 1 - drift), n)
  })
  D <- as.matrix(stats::dist(x))
  nn <- t(apply(D, 1, function(d) order(d)[2:k]))
  ii <- rep(seq_len(n), each = k - 1)
  jj <- as.vector(t(nn))
  dist_g <- Matrix::sparseMatrix(ii, jj, x = D[cbind(ii, jj)], dims = c(n, n))
  A <- Matrix::sparseMatrix(ii, jj, x = 1, dims = c(n, n))
  A <- methods::as((A + Matrix::t(A)) > 0, "dMatrix")
  A2 <- methods::as((A %*% A + A) > 0, "dMatrix")
  diag(A2) <- 0
  A2 <- methods::as(Matrix::drop0(A2), "generalMatrix")
  s <- Matrix::summary(A2)
  d <- x[s$j, ] - x[s$i, ]
  vi <- v[s$i, ]
  cs <- round(rowSums(d * vi) / sqrt(rowSums(d^2)) / sqrt(rowSums(vi^2)), 6)
  G <- Matrix::drop0(Matrix::sparseMatrix(s$i, s$j, x = pmax(cs, 0), dims = c(n, n)))
  Gn <- Matrix::drop0(Matrix::sparseMatrix(s$i, s$j, x = pmin(cs, 0), dims = c(n, n)))
  cells <- sprintf("c%03d", seq_len(n))
  dimnames(G) <- dimnames(Gn) <- dimnames(dist_g) <- dimnames(A) <- list(cells, cells)
  list(G = G, Gn = Gn, D = dist_g, conn = A)
}

max_abs <- function(a, b) max(abs(a - b))

test_that("numpy's legacy rand() start vector and the solver against LAPACK", {
  # np.random.seed(0); np.random.rand(5)
  expect_equal(scnative:::np_legacy_rand(5, 0),
               c(0.5488135039273248, 0.7151893663724195, 0.6027633760716439,
                 0.5448831829968969, 0.4236547993389047), tolerance = 1e-15)
  n <- 300
  M <- withr::with_seed(3, Matrix::rsparsematrix(n, n, density = 0.05,
                                                 rand.x = function(k) stats::runif(k)))
  M <- methods::as(methods::as(M, "generalMatrix"), "CsparseMatrix")
  dense <- eigen(t(as.matrix(M)))
  o <- order(-Re(dense$values), -Im(dense$values))[1:10]
  e <- scnative:::sparse_eigs(M, 10, "LR")
  expect_equal(e$nconv, 10L)
  expect_equal(e$values, dense$values[o], tolerance = 1e-9)
  # eigenvectors of t(M): residual of each real eigenpair
  for (j in which(abs(Im(e$values)) == 0)) {
    r <- as.numeric(Matrix::crossprod(M, e$vectors[, j])) - Re(e$values[j]) * e$vectors[, j]
    expect_lt(sqrt(sum(r^2)), 1e-8)
  }
  S <- M + Matrix::t(M)
  S <- methods::as(methods::as(S, "generalMatrix"), "CsparseMatrix")
  ds <- eigen(as.matrix(S), symmetric = TRUE)
  os <- order(-abs(ds$values))[1:10]
  es <- scnative:::sparse_eigs(S, 10, "LM", symmetric = TRUE)
  expect_equal(sort(es$values), sort(ds$values[os]), tolerance = 1e-9)
  for (j in 1:10) {
    r <- as.numeric(S %*% es$vectors[, j]) - es$values[j] * es$vectors[, j]
    expect_lt(sqrt(sum(r^2)), 1e-8)
  }
  expect_equal(crossprod(es$vectors), diag(10), tolerance = 1e-10)
  # same vectors with 1 and 2 threads (the product is parallel over columns)
  e1 <- scnative:::sparse_eigs(M, 10, "LR", threads = 1, grain = 1)
  e2 <- scnative:::sparse_eigs(M, 10, "LR", threads = 2, grain = 1)
  expect_identical(e1$vectors, e2$vectors)
  expect_identical(e1$values, e2$values)
})

test_that("terminal_states() and velocity_pseudotime() match live scVelo on the golden files", {
  py <- ts_py()
  for (f in c(50, 100)) { # 50: dense LAPACK path, 100: Krylov-Schur
    path <- shared_file("velocity", sprintf("cellrank_golden_adata_%d.h5ad", f))
    u <- py$ts_golden(path)
    cells <- unlist(u$cells)
    vg <- ts_graph_object(ts_sparse(u$velocity_graph, cells),
                          ts_sparse(u$velocity_graph_neg, cells))
    D <- ts_sparse(u$distances, cells)
    C <- ts_sparse(u$connectivities, cells)
    ts <- terminal_states(vg, D)
    expect_s3_class(ts, "scnative_terminal_states")
    expect_identical(names(ts$root_cells), cells)
    # the same number of kept eigenvalues (one each here), then the scores (spec 9.3)
    expect_identical(c(length(ts$root_eigenvalues), length(ts$end_eigenvalues)),
                     as.integer(unlist(u$kept)))
    expect_equal(as.integer(unlist(u$kept)), c(1L, 1L))
    expect_gt(cor(ts$root_cells, u$root), 0.999)
    expect_lt(max_abs(ts$root_cells, u$root), 1e-5) # measured 1.0e-7
    expect_lt(max_abs(ts$end_points, u$end), 1e-5) # measured 4.2e-7
    expect_lt(max_abs(ts$root_cells, u$stored$root_cells), 1e-5) # file: scVelo ~0.2.4
    expect_lt(max_abs(ts$end_points, u$stored$end_points), 1e-5)
    expect_equal(range(ts$root_cells), c(0, 1))
    # velocity_pseudotime from the same roots and ends as upstream (its defaults)
    pt <- velocity_pseudotime(vg, C, root = u$root, end = u$end)
    expect_identical(names(pt), cells)
    expect_gt(cor(pt, u$vpt), 0.9999)
    expect_lt(max_abs(pt, u$vpt), 1e-4) # measured 6e-7
    expect_length(attr(pt, "eigenvalues"), 10L)
    # root = NULL runs terminal_states() itself, as upstream without obs columns
    expect_identical(velocity_pseudotime(vg, C, distances = D), pt)
    df <- as.data.frame(ts)
    expect_identical(rownames(df), cells)
    expect_identical(df$end_points, unname(ts$end_points))
  }
})

test_that("verify_roots: the plasticity check matches upstream when gene_count_corr is given", {
  py <- ts_py()
  path <- shared_file("velocity", "cellrank_golden_adata_100.h5ad")
  u <- py$ts_golden(path)
  cells <- unlist(u$cells)
  vg <- ts_graph_object(ts_sparse(u$velocity_graph, cells),
                        ts_sparse(u$velocity_graph_neg, cells))
  D <- ts_sparse(u$distances, cells)
  ts <- terminal_states(vg, D)
  # 250 genes: 200 top-correlated ones high in the root cells, so roots are enriched in
  # plastic cells and roots elsewhere are set to 0
  n <- length(cells)
  withr::with_seed(1, {
    w <- stats::runif(250)
    noise <- matrix(stats::runif(250 * n, 0, 0.05), 250, n)
  })
  prof <- sqrt(ts$root_cells)
  Ms <- outer(w, prof) + noise
  Ms[201:250, ] <- outer(w[201:250], 1 - prof) + noise[201:250, ]
  gcc <- c(round(seq(0.9, 0.5, length.out = 200), 4), rep(0.1, 50))
  up <- py$ts_verify(path, gcc, Ms)
  ts2 <- terminal_states(vg, D, Ms = Ms, gene_count_corr = gcc)
  expect_gt(sum(ts2$root_cells != ts$root_cells), 20) # the branch that zeroes roots ran
  expect_lt(max_abs(ts2$root_cells, up), 1e-5)
  expect_identical(ts2$end_points, ts$end_points)
})

test_that("a synthetic 400-cell graph: parity with upstream in float32 and float64", {
  py <- ts_py()
  # drift 0.3: one root and one end region; drift 0.5, seed 2: two end branches
  for (cfg in list(c(0.3, 1), c(0.5, 2))) {
    s <- ts_synthetic(drift = cfg[1], seed = cfg[2])
    cells <- rownames(s$G)
    args <- list(ts_trip(s$G), ts_trip(s$Gn), ts_trip(s$D), ts_trip(s$conn), cells)
    u32 <- do.call(py$ts_graph, args)
    u64 <- do.call(py$ts_graph, c(args, list(TRUE)))
    vg <- ts_graph_object(s$G, s$Gn)
    ts <- terminal_states(vg, s$D)
    kept <- c(length(ts$root_eigenvalues), length(ts$end_eigenvalues))
    expect_identical(kept, as.integer(unlist(u32$kept)))
    expect_identical(kept, as.integer(unlist(u64$kept)))
    for (what in c("root", "end")) {
      ours <- if (what == "root") ts$root_cells else ts$end_points
      k <- kept[if (what == "root") 1L else 2L]
      if (k == 1L) {
        # unique eigenvector: equal to upstream's own pipeline in double precision, and to
        # the float32 one within upstream's float32-vs-float64 spread (measured: ends 6.9e-4)
        spread <- max_abs(u32[[what]], u64[[what]])
        expect_lt(max_abs(ours, u64[[what]]), 1e-5) # measured <= 3.1e-6
        expect_lt(max_abs(ours, u32[[what]]), max(1e-4, 1.5 * spread))
        expect_gt(cor(ours, u32[[what]]), 0.999)
      } else {
        # several eigenvalues near 1: the eigenspace basis is arbitrary (spec 4.4), and
        # upstream's float32 and float64 runs can pick different bases (seen on an AMD Zen 4
        # OpenBLAS): ours must match upstream's float64 pipeline, and be as close to its
        # float32 one as upstream's own float64 result is
        expect_gt(cor(ours, u64[[what]]), 0.9)
        expect_gte(cor(ours, u32[[what]]), cor(u64[[what]], u32[[what]]) - 0.05)
      }
    }
    pt <- velocity_pseudotime(vg, s$conn, root = u32$root, end = u32$end)
    expect_gt(cor(pt, u32$vpt), 0.9999)
    expect_lt(max_abs(pt, u32$vpt), 1e-3) # measured <= 6e-6
  }
  # thread invariance
  s <- ts_synthetic(drift = 0.3, seed = 1)
  vg <- ts_graph_object(s$G, s$Gn)
  expect_identical(terminal_states(vg, s$D, threads = 1), terminal_states(vg, s$D, threads = 2))
  expect_identical(velocity_pseudotime(vg, s$conn, root = 1, threads = 1),
                   velocity_pseudotime(vg, s$conn, root = 1, threads = 2))
})

test_that("small chains: roots at the start, ends at the end, pseudotime increasing", {
  for (n in c(8, 60, 120)) { # dense LAPACK (n <= 50) and Krylov-Schur
    i <- c(1:(n - 1), 1:(n - 2))
    j <- c(2:n, 3:n)
    g <- Matrix::sparseMatrix(i, j, x = 0.9, dims = c(n, n))
    gn <- Matrix::sparseMatrix(j, i, x = -0.5, dims = c(n, n))
    vg <- ts_graph_object(g, gn)
    d <- abs(outer(1:n, 1:n, "-"))
    conn <- Matrix::Matrix((d <= 3 & d > 0) * 1, sparse = TRUE)
    dist <- Matrix::Matrix(d * (d <= 3), sparse = TRUE)
    ts <- terminal_states(vg, dist)
    expect_identical(c(length(ts$root_eigenvalues), length(ts$end_eigenvalues)), c(1L, 1L))
    expect_equal(ts$root_cells[1], 1)
    expect_equal(ts$end_points[n], 1)
    expect_equal(ts$root_cells[n], 0)
    pt <- velocity_pseudotime(vg, conn, root = ts$root_cells, end = ts$end_points)
    expect_equal(unname(pt[c(1, n)]), c(0, 1))
    expect_gt(stats::cor(pt, seq_len(n), method = "spearman"), 0.99)
    # a root index and a name give the same as the scores that point at that cell
    pt1 <- velocity_pseudotime(vg, conn, root = 1L)
    expect_equal(unname(pt1[1]), 0)
    expect_gt(stats::cor(pt1, seq_len(n), method = "spearman"), 0.95)
    # no root (all-zero scores): NaN, as upstream's set_iroot(None)
    expect_true(all(is.nan(velocity_pseudotime(vg, conn, root = numeric(n)))))
  }
  # two disconnected chains: NaN in the component without the root
  n <- 40
  i <- setdiff(1:(n - 1), n / 2)
  g <- Matrix::sparseMatrix(i, i + 1, x = 0.8, dims = c(n, n))
  gn <- Matrix::sparseMatrix(i + 1, i, x = -0.8, dims = c(n, n))
  conn <- Matrix::sparseMatrix(c(i, i + 1), c(i + 1, i), x = 1, dims = c(n, n))
  pt <- velocity_pseudotime(ts_graph_object(g, gn), conn, root = 1L, n_dcs = 5)
  expect_true(all(is.finite(pt[1:(n / 2)])))
  expect_true(all(is.nan(pt[(n / 2 + 1):n])))
})

test_that("bad input gives clear errors", {
  n <- 30
  i <- 1:(n - 1)
  g <- Matrix::sparseMatrix(i, i + 1, x = 0.9, dims = c(n, n),
                            dimnames = list(paste0("c", 1:n), paste0("c", 1:n)))
  gn <- Matrix::sparseMatrix(i + 1, i, x = -0.5, dims = c(n, n))
  vg <- ts_graph_object(g, gn)
  d <- Matrix::sparseMatrix(c(i, i + 1), c(i + 1, i), x = 1, dims = c(n, n))
  expect_error(terminal_states(list(), d), "'x' must be a scnative_velocity_graph")
  expect_error(terminal_states(vg), "'distances' is missing")
  expect_error(terminal_states(vg, d[1:5, 1:5]), "'distances' must be 30 x 30")
  expect_error(terminal_states(vg, d, eps = 1), "'eps' must be less than 1")
  expect_error(terminal_states(vg, d, eps = -1), "'eps' must be at least 0")
  expect_error(terminal_states(vg, d, self_transitions = NA), "'self_transitions' must be TRUE")
  expect_error(terminal_states(vg, d, Ms = matrix(1, 3, n)), "must be given together")
  expect_error(terminal_states(vg, d, Ms = matrix(1, 3, 5), gene_count_corr = 1:3),
               "'Ms' must have 30 columns")
  expect_error(terminal_states(vg, d, Ms = matrix(1, 3, n), gene_count_corr = 1:2),
               "'gene_count_corr' must be a numeric vector with one value per gene")
  expect_error(terminal_states(vg, d, threads = 0), "'threads' must be at least 1")
  expect_error(velocity_pseudotime(vg), "'connectivities' is missing")
  expect_error(velocity_pseudotime(vg, d), "'distances' is needed")
  expect_error(velocity_pseudotime(vg, d, root = "nope"), "is not a cell of the graph")
  expect_error(velocity_pseudotime(vg, d, root = 31), "'root' must be at most 30")
  expect_error(velocity_pseudotime(vg, d, root = 1.5), "'root' must be a whole number")
  expect_error(velocity_pseudotime(vg, d, root = runif(5)), "'root' must have one score per cell")
  expect_error(velocity_pseudotime(vg, d, root = list(1)), "'root' must be a numeric score")
  expect_error(velocity_pseudotime(vg, d, root = 1, end = c("a", "b")),
               "'end' must be a single cell name")
  expect_error(velocity_pseudotime(vg, d, root = 1, n_dcs = 0), "'n_dcs' must be at least 1")
  expect_identical(velocity_pseudotime(vg, d, root = "c1"), velocity_pseudotime(vg, d, root = 1))
  expect_output(print(terminal_states(vg, d)), "scnative_terminal_states")
})
