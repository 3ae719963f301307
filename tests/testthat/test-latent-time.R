# latent_time(), velocity_confidence(), velocity_confidence_transition(): parity with live
# upstream scVelo (peers venv, same test run) fed upstream's own inputs (fit_t, likelihoods,
# root/end scores, neighbour graphs, velocities, transition matrix), the stored CellRank
# golden values, a larger real data set, and bad input.

cap_test_threads(teardown_env())

lt_py_code <- "
import numpy as _np, anndata as _ad, scipy.sparse as _sp, scvelo as _scv, warnings as _w
_w.filterwarnings('ignore')
_scv.settings.verbosity = 0

def _lt_csr(m):
    m = _sp.csr_matrix(m)
    return {'p': _np.asarray(m.indptr, dtype=_np.int32), 'j': _np.asarray(m.indices, dtype=_np.int32),
            'x': _np.asarray(m.data, dtype=float), 'n': int(m.shape[0])}

def _lt_golden(path):
    a = _ad.read_h5ad(path)
    for k in ['velocity_graph', 'velocity_graph_neg']:
        a.uns[k] = a.obsp[k]
    return a

def lt_read(path):
    a = _ad.read_h5ad(path)
    return {'fit_t': _np.asarray(a.layers['fit_t'], dtype=float).T.copy(),
            'lik': _np.asarray(a.var['fit_likelihood'].values, dtype=float),
            'conn': _lt_csr(a.obsp['connectivities']), 'dist': _lt_csr(a.obsp['distances']),
            'root_cells': _np.asarray(a.obs['root_cells'].values, dtype=float),
            'end_points': _np.asarray(a.obs['end_points'].values, dtype=float),
            'latent_time': _np.asarray(a.obs['latent_time'].values, dtype=float),
            'V': _np.asarray(a.layers['velocity'], dtype=float).T.copy(),
            'Ms': _np.asarray(a.layers['Ms'], dtype=float).T.copy(),
            'vg': [bool(x) for x in a.var['velocity_genes'].values],
            'genes': list(a.var_names), 'cells': list(a.obs_names)}

# scv.tl.latent_time on the golden AnnData: its own root_cells/end_points (or given scores in
# obs columns, or a 0-based root index in uns), so terminal_states is not re-run
def lt_upstream(path, root=None, end=None, iroot=None, use_end=False, **kw):
    a = _lt_golden(path)
    a.obs = a.obs.drop(columns=['latent_time'])
    root_key = None
    end_key = 'end_points' if use_end else None
    if root is not None:
        a.obs['my_root'] = _np.asarray(root, dtype=float); root_key = 'my_root'
    if end is not None:
        a.obs['my_end'] = _np.asarray(end, dtype=float); end_key = 'my_end'
    if iroot is not None:
        a.uns['my_iroot'] = int(iroot); root_key = 'my_iroot'
    _scv.tl.latent_time(a, root_key=root_key, end_key=end_key, **kw)
    return _np.asarray(a.obs['latent_time'].values, dtype=float)

def _lt_confidence(a, spearmans):
    if spearmans is not None:
        a.var['spearmans_score'] = _np.asarray(spearmans, dtype=float)
    _scv.tl.velocity_confidence(a)
    out = {'length': _np.asarray(a.obs['velocity_length'].values, dtype=float),
           'conf': _np.asarray(a.obs['velocity_confidence'].values, dtype=float),
           'trans32': _np.asarray(a.obs['velocity_confidence_transition'].values, dtype=float),
           'T': _lt_csr(_scv.tl.transition_matrix(a, scale=10))}
    # the same with a float64 Ms layer: scipy then forms T Ms in double
    a.layers['Ms'] = _np.asarray(a.layers['Ms'], dtype=float)
    _scv.tl.velocity_confidence_transition(a)
    out['trans64'] = _np.asarray(a.obs['velocity_confidence_transition'].values, dtype=float)
    return out

def vc_upstream(path, spearmans=None):
    return _lt_confidence(_lt_golden(path), spearmans)

def lt_indices(p, j, x, n):
    from scvelo.tools.utils import get_indices
    D = _sp.csr_matrix((_np.asarray(x, dtype=float), _np.asarray(j, dtype=_np.int32),
                        _np.asarray(p, dtype=_np.int32)), shape=(int(n), int(n)))
    return _np.sort(get_indices(D)[0], axis=1).astype(float)

# everything upstream on given layers and graphs (a larger data set): terminal_states for the
# root/end scores, velocity_graph, latent_time with and without end points, confidences
def lt_pipeline(fit_t, lik, V, vg, Ms, conn, dist):
    n = conn.shape[0]
    a = _ad.AnnData(X=_np.asarray(Ms, dtype=_np.float32).T.copy())
    a.layers['Ms'] = _np.asarray(Ms, dtype=_np.float32).T.copy()
    a.layers['velocity'] = _np.asarray(V, dtype=float).T.copy()
    a.layers['fit_t'] = _np.asarray(fit_t, dtype=float).T.copy()
    a.var['fit_likelihood'] = _np.asarray(lik, dtype=float)
    a.var['velocity_genes'] = _np.asarray(vg, dtype=bool)
    a.obsp['connectivities'] = _sp.csr_matrix(conn)
    a.obsp['distances'] = _sp.csr_matrix(dist)
    a.uns['neighbors'] = {'params': {'n_neighbors': 30, 'method': 'umap'},
                          'connectivities_key': 'connectivities', 'distances_key': 'distances'}
    _scv.tl.velocity_graph(a)
    _scv.tl.terminal_states(a)
    out = {'root_cells': _np.asarray(a.obs['root_cells'].values, dtype=float),
           'end_points': _np.asarray(a.obs['end_points'].values, dtype=float)}
    _scv.tl.latent_time(a)
    out['lt'] = _np.asarray(a.obs['latent_time'].values, dtype=float)
    _scv.tl.latent_time(a, end_key='end_points', t_max=20)
    out['lt_end'] = _np.asarray(a.obs['latent_time'].values, dtype=float)
    out.update(_lt_confidence(a, None))
    return out
"

lt_py <- function() peers_module(lt_py_code, "lt_pipeline")

lt_csr <- function(p) {
  m <- Matrix::sparseMatrix(j = as.vector(p$j) + 1L, p = as.vector(p$p), x = as.vector(p$x),
                            dims = c(p$n, p$n), index1 = TRUE)
  methods::as(m, "generalMatrix")
}

lt_golden_cache <- new.env()

# A CellRank golden file as read by anndata (genes x cells matrices, graphs as dgCMatrix).
lt_golden <- function(n) {
  key <- as.character(n)
  if (!is.null(lt_golden_cache[[key]])) return(lt_golden_cache[[key]])
  py <- lt_py()
  path <- shared_file("velocity", sprintf("cellrank_golden_adata_%d.h5ad", n))
  d <- py$lt_read(path)
  genes <- unlist(d$genes)
  cells <- unlist(d$cells)
  g <- list(path = path, genes = genes, cells = cells,
            fit_t = structure(d$fit_t, dimnames = list(genes, cells)),
            lik = as.vector(d$lik), conn = lt_csr(d$conn), dist = lt_csr(d$dist),
            root_cells = as.vector(d$root_cells), end_points = as.vector(d$end_points),
            latent_time = as.vector(d$latent_time),
            V = structure(d$V, dimnames = list(genes, cells)),
            Ms = structure(d$Ms, dimnames = list(genes, cells)), vg = unlist(d$vg))
  assign(key, g, envir = lt_golden_cache)
  g
}

lt_ours <- function(g, root = g$root_cells, ...) {
  latent_time(g$fit_t, root, connectivities = g$conn, fit_likelihood = g$lik, ...)
}

# ------------------------------------------------------------------ latent_time

test_that("latent_time() reproduces scv.tl.latent_time and the golden values (root scores, end points)", {
  py <- lt_py()
  for (n in c(50, 100)) {
    g <- lt_golden(n)
    ours <- lt_ours(g)
    up <- as.vector(py$lt_upstream(g$path))
    expect_lt(max(abs(ours - up)), 1e-10)
    expect_lt(max(abs(ours - g$latent_time)), 1e-10) # the stored result of scVelo ~0.2.4
    expect_identical(names(ours), g$cells)
    expect_equal(range(ours), c(0, 1))
    # end points
    ours_e <- lt_ours(g, end_points = g$end_points)
    up_e <- as.vector(py$lt_upstream(g$path, use_end = TRUE))
    expect_lt(max(abs(ours_e - up_e)), 1e-10)
    expect_gt(max(abs(ours_e - ours)), 1e-3) # the end points do change the result
  }
})

test_that("latent_time() with one root cell reproduces upstream's uns root key", {
  py <- lt_py()
  g <- lt_golden(100)
  for (r in c(1L, 7L, 100L)) {
    ours <- lt_ours(g, root = r)
    up <- as.vector(py$lt_upstream(g$path, iroot = r - 1L)) # upstream's index is 0-based
    expect_lt(max(abs(ours - up)), 1e-10)
  }
  expect_identical(lt_ours(g, root = g$cells[7]), lt_ours(g, root = 7L))
  # a single end cell is the end-point list of that one cell
  e <- numeric(100)
  e[42] <- 1
  expect_identical(lt_ours(g, end_points = 42L), lt_ours(g, end_points = e))
  up <- as.vector(py$lt_upstream(g$path, iroot = 6L, end = e))
  expect_lt(max(abs(lt_ours(g, root = 7L, end_points = 42L) - up)), 1e-10)
})

test_that("latent_time(): more than 4 roots, none flagged, NA scores and the options match upstream", {
  py <- lt_py()
  g <- lt_golden(50)
  n <- 50L
  # 7 flagged roots (only the 4 with the smallest summed gene time count), NA as 0,
  # scores just below the threshold are not roots
  r <- numeric(n)
  r[c(3, 9, 14, 20, 27, 33, 41)] <- 1
  r[c(5, 6)] <- NA
  r[8] <- 1 - 2e-3
  up <- as.vector(py$lt_upstream(g$path, root = r))
  expect_lt(max(abs(lt_ours(g, root = r) - up)), 1e-10)
  # options: end points, t_max, min_likelihood, min_confidence
  up <- as.vector(py$lt_upstream(g$path, use_end = TRUE, t_max = 20, min_likelihood = 0.3,
                                 min_confidence = 0.9))
  ours <- lt_ours(g, end_points = g$end_points, t_max = 20, min_likelihood = 0.3,
                  min_confidence = 0.9)
  expect_lt(max(abs(ours - up)), 1e-9)
  expect_equal(max(ours), 20)
  # no likelihood filter: upstream's min_likelihood=None
  up <- as.vector(py$lt_upstream(g$path, min_likelihood = NULL))
  expect_lt(max(abs(lt_ours(g, min_likelihood = NULL) - up)), 1e-10)
  # no root or end cell flagged: a warning, then the cells with the smallest (largest)
  # summed gene time, as upstream
  z <- numeric(n)
  up <- as.vector(py$lt_upstream(g$path, root = z, end = z))
  expect_warning(expect_warning(ours <- lt_ours(g, root = z, end_points = z), "no root cells"),
                 "no end points")
  expect_lt(max(abs(ours - up)), 1e-10)
  # logical and named scores
  rl <- g$root_cells > 1 - 1e-3
  expect_identical(lt_ours(g, root = rl), lt_ours(g))
  rn <- stats::setNames(g$root_cells, g$cells)[rev(g$cells)]
  expect_identical(lt_ours(g, root = rn), lt_ours(g))
})

test_that("latent_time() helpers follow numpy (percentiles, pairwise sums, rounding, scale)", {
  set.seed(3)
  t <- matrix(stats::rexp(7 * 40), 7, 40)
  st <- scnative:::lt_shared_time(t)
  # the percentile step agrees with R's type-7 quantiles up to rounding
  Q <- apply(t - min(t), 2, stats::quantile, probs = c(15, 20, 25, 30, 35) / 100,
             type = 7, names = FALSE)
  Q <- Q / apply(Q, 1, max)
  mse <- apply(Q, 1, function(q) sum((sort(q) - seq(0, 1, length.out = 40))^2))
  b <- order(mse)[1:2]
  expect_equal(st$shared, (Q[b[1], ] + Q[b[2], ]) / max(Q[b[1], ] + Q[b[2], ]),
               tolerance = 1e-12)
  # re-rooting: the root's times become 0, nothing is negative, order after the root is kept
  rt <- scnative:::lt_root_time(t, 5)
  expect_true(all(rt[, 5] == 0) && all(rt >= 0))
  after <- t[1, ] >= t[1, 5]
  expect_equal(rt[1, after], t[1, after] - t[1, 5])
  for (n in c(1, 7, 8, 9, 100, 128, 129, 1000, 3697)) {
    x <- stats::runif(n)
    expect_equal(scnative:::np_pairwise_sum(x), sum(x), tolerance = 1e-13)
  }
  # numpy: round(2.675, 2) = 2.68, round(0.125, 2) = 0.12 (half to even)
  expect_identical(scnative:::np_round2(c(2.675, 0.125, 0.135, -1.005, 1)),
                   c(2.68, 0.12, 0.14, -1, 1))
  expect_identical(scnative:::sv_scale(c(2, NaN, 4, 3)), c(0, NaN, 1, 0.5))
  expect_identical(scnative:::sv_scale(c(2, 2)), c(0, 0))
})

test_that("latent_time() on an scnative_dynamics fit, velocity_confidence() on a larger data set (739 cells) match upstream", {
  py <- lt_py()
  e <- new.env()
  load(shared_file("velocity", "veloviz_pancreas739.rda"), envir = e)
  pan <- get(ls(e)[1L], e)
  top <- order(-rowSums(pan$spliced))[1:300]
  m <- moments(pan$spliced[top, ], pan$unspliced[top, ], threads = 2)
  genes <- rownames(m$Ms)[seq(1, 300, by = 4)]
  fit <- recover_dynamics(m$Ms[genes, ], m$Mu[genes, ], var_names = "all",
                          connectivities = m$connectivities, threads = 2, progress = FALSE)
  v <- velocity(fit, m$Ms[genes, ], m$Mu[genes, ])
  up <- py$lt_pipeline(fit$layers$fit_t, fit$var$fit_likelihood, v$velocity,
                       v$var$velocity_genes, m$Ms[genes, ], m$connectivities, m$distances)
  rc <- as.vector(up$root_cells)
  ep <- as.vector(up$end_points)
  lt <- latent_time(fit, rc)
  expect_lt(max(abs(lt - as.vector(up$lt))), 1e-10)
  expect_identical(names(lt), colnames(m$Ms))
  lt_e <- latent_time(fit, rc, end_points = ep, t_max = 20)
  expect_lt(max(abs(lt_e - as.vector(up$lt_end))), 1e-9)
  # the graph given explicitly is the one the fit holds
  expect_identical(latent_time(fit, rc, connectivities = m$connectivities), lt)
  # confidence and length
  vc <- velocity_confidence(v, m)
  expect_identical(vc$velocity_length, as.vector(up$length))
  expect_lt(max(abs(vc$velocity_confidence - as.vector(up$conf)), na.rm = TRUE), 1e-6)
  expect_identical(is.na(vc$velocity_confidence), is.na(as.vector(up$conf)))
  expect_identical(velocity_confidence(v, m$distances), vc)
  T <- lt_csr(up$T)
  tr <- velocity_confidence_transition(v, m$Ms[genes, ], T)
  expect_lt(max(abs(tr - as.vector(up$trans64))), 1e-9)
  d32 <- abs(tr - as.vector(up$trans32))
  expect_lt(stats::quantile(d32, 0.9, names = FALSE), 1e-4)
  expect_gt(stats::cor(tr, as.vector(up$trans32)), 0.9999)
})

# ------------------------------------------------------------------ velocity_confidence

test_that("velocity_confidence() and _transition() reproduce scv.tl.velocity_confidence on the golden data", {
  py <- lt_py()
  for (n in c(50, 100)) {
    g <- lt_golden(n)
    for (sp in list(NULL, "random")) {
      ss <- NULL
      if (!is.null(sp)) {
        set.seed(n)
        ss <- stats::runif(length(g$genes), -0.2, 1)
      }
      up <- py$vc_upstream(g$path, ss)
      vc <- velocity_confidence(g$V, g$dist, velocity_genes = g$vg, spearmans_score = ss)
      expect_identical(vc$velocity_length, as.vector(up$length))
      expect_lt(max(abs(vc$velocity_confidence - as.vector(up$conf))), 1e-6)
      expect_identical(rownames(vc), g$cells)
      tr <- velocity_confidence_transition(g$V, g$Ms, lt_csr(up$T), velocity_genes = g$vg,
                                           spearmans_score = ss)
      # exact flow: upstream given a float64 Ms layer; its float32 default carries noise
      expect_lt(max(abs(tr - as.vector(up$trans64))), 1e-9)
      expect_lt(max(abs(tr - as.vector(up$trans32))), 5e-3)
      expect_lt(stats::median(abs(tr - as.vector(up$trans32))), 1e-6)
    }
  }
})

test_that("velocity_confidence(): get_indices trimming (vs upstream) and an independent check", {
  # rows with 3 to 6 neighbours (one explicit zero distance): every row keeps its 3 nearest
  set.seed(5)
  n <- 12L
  rows <- lapply(seq_len(n), function(i) sort(sample(setdiff(seq_len(n), i), 3 + (i %% 4))))
  x <- lapply(rows, function(r) round(stats::runif(length(r), 0.5, 3), 3))
  x[[4]][2] <- 0
  D <- Matrix::sparseMatrix(i = rep(seq_len(n), lengths(rows)), j = unlist(rows),
                            x = unlist(x), dims = c(n, n))
  expect_identical(sum(D@x == 0), 1L) # the explicit zero is stored
  ours <- t(scnative:::knn_indices(D, n, need_positive = FALSE))
  expect_identical(dim(ours), c(n, 3L))
  expect_true(rows[[4]][2] %in% ours[4, ])
  for (i in seq_len(n)) {
    d <- D[i, rows[[i]]]
    expect_setequal(ours[i, ], rows[[i]][order(d)[1:3]])
  }
  # velocity_confidence by hand: mean cosine of centred velocities over those neighbours
  V <- matrix(stats::rnorm(5 * n), 5, n)
  V[, 3] <- 0 # no velocity: NaN confidence, length 0
  vc <- velocity_confidence(V, D)
  Vc <- sweep(V, 2, colMeans(V))
  cosv <- function(a, b) sum(a * b) / sqrt(sum(a^2) * sum(b^2))
  ref <- vapply(seq_len(n), function(i) mean(vapply(ours[i, ], function(j) cosv(Vc[, j], Vc[, i]),
                                                    0)), 0)
  expect_equal(vc$velocity_confidence, pmax(ref, 0), tolerance = 1e-12)
  expect_true(is.na(vc$velocity_confidence[3]) && !is.nan(vc$velocity_confidence[3])) # zero velocity: NA
  expect_identical(vc$velocity_length, round(sqrt(colSums(Vc^2)) * 100) / 100)
  # upstream's get_indices keeps the same neighbours
  py <- lt_py()
  tD <- Matrix::t(D)
  up <- py$lt_indices(tD@p, tD@i, tD@x, n)
  expect_identical(t(apply(ours, 1, sort)) - 1, unname(up))
})

test_that("latent_time() end to end on simulated data recovers the time order", {
  sim <- simulate_velocity(n_obs = 150, n_vars = 6, random_seed = 1)
  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 15, normalize = FALSE, threads = 1)
  fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", connectivities = m$connectivities,
                          threads = 1, progress = FALSE)
  roots <- as.numeric(sim$obs$true_t <= sort(sim$obs$true_t)[3])
  lt <- latent_time(fit, roots)
  expect_gt(stats::cor(lt, sim$obs$true_t, method = "spearman"), 0.9)
  expect_equal(range(lt), c(0, 1))
  v <- velocity(fit, m$Ms, m$Mu)
  v$var$velocity_genes[] <- TRUE
  vc <- velocity_confidence(v, m)
  expect_identical(dim(vc), c(150L, 2L))
  expect_true(mean(vc$velocity_confidence, na.rm = TRUE) > 0.5)
})

# ------------------------------------------------------------------ bad input

# small random inputs of the golden files' shapes (no Python needed)
lt_fake <- function(n = 50L, G = 20L) {
  set.seed(9)
  cells <- paste0("c", seq_len(n))
  genes <- paste0("g", seq_len(G))
  ft <- matrix(stats::rexp(G * n), G, n, dimnames = list(genes, cells))
  ft[3, ] <- NA
  nb <- cbind(rep(seq_len(n), each = 5), sample.int(n, 5 * n, TRUE))
  graph <- function(x) Matrix::sparseMatrix(i = nb[, 1], j = nb[, 2], x = x, dims = c(n, n))
  V <- matrix(stats::rnorm(G * n), G, n, dimnames = list(genes, cells))
  V[3, ] <- NA
  list(fit_t = ft, lik = stats::runif(G, 0.15, 0.9), conn = graph(1),
       dist = graph(stats::runif(5 * n, 1, 2)), root_cells = as.numeric(seq_len(n) <= 2),
       V = V, Ms = ifelse(is.na(V), 1, abs(V)), vg = rep(TRUE, G), cells = cells)
}

test_that("latent_time() and the confidences reject bad input with clear errors", {
  g <- lt_fake()
  ft <- g$fit_t
  n <- ncol(ft)
  expect_error(latent_time(ft, connectivities = g$conn, fit_likelihood = g$lik), "'root_cells' is missing")
  expect_error(lt_ours(g, root = 0L), "'root_cells'")
  expect_error(lt_ours(g, root = n + 1L), "'root_cells'")
  expect_error(lt_ours(g, root = 2.5), "'root_cells'")
  expect_error(lt_ours(g, root = "nope"), "no cell is named 'nope'")
  expect_error(lt_ours(g, root = g$root_cells[-1]), "'root_cells' must be 50 per-cell scores")
  expect_error(lt_ours(g, root = factor(g$root_cells)), "'root_cells'")
  expect_error(lt_ours(g, end_points = c(1, 2)), "'end_points'")
  expect_error(lt_ours(g, min_likelihood = 2), "fit_likelihood >= 2")
  expect_error(lt_ours(g, t_max = -1), "'t_max'")
  expect_error(lt_ours(g, min_confidence = NA), "'min_confidence'")
  expect_error(lt_ours(g, weight_diffusion = 0.2), "'weight_diffusion' is not supported")
  expect_error(lt_ours(g, min_corr = 0.2, foo = 1), "unused arguments: min_corr, foo")
  expect_error(latent_time(ft, 1L, connectivities = g$conn), "'fit_likelihood' is needed")
  expect_error(latent_time(ft, 1L, fit_likelihood = g$lik), "'connectivities'")
  expect_error(latent_time(ft, 1L, connectivities = g$conn[-1, ], fit_likelihood = g$lik),
               "'connectivities' must be a 50 x 50")
  expect_error(latent_time(ft, 1L, connectivities = g$conn, fit_likelihood = g$lik[-1]),
               "'fit_likelihood' must be numeric with one value per gene")
  expect_error(latent_time(ft[, 1, drop = FALSE], 1L, connectivities = g$conn[1, 1, drop = FALSE],
                           fit_likelihood = g$lik), "at least 2 cells")
  expect_error(latent_time("a", 1L, connectivities = g$conn, min_likelihood = NULL), "'x' must be a numeric")
  ft2 <- ft
  ft2[!is.na(rowSums(ft2)) & g$lik >= 0.1, ][1, 1] <- Inf
  expect_error(latent_time(ft2, 1L, connectivities = g$conn, fit_likelihood = g$lik), "infinite")
  # the fit method: no fit_t, no graph
  fit <- structure(list(var = data.frame(fit_likelihood = g$lik), layers = list(fit_t = ft),
                        connectivities = NULL), class = "scnative_dynamics")
  expect_error(latent_time(fit, 1L), "'connectivities' is needed")
  expect_equal(latent_time(fit, 1L, connectivities = g$conn), lt_ours(g, root = 1L))
  fit$layers$fit_t <- NULL
  expect_error(latent_time(fit, 1L, connectivities = g$conn), "'x\\$layers\\$fit_t' is missing")
  # confidences
  expect_error(velocity_confidence(g$V), "'distances'")
  expect_error(velocity_confidence(g$V, g$dist[-1, ]), "'distances' must be 50 x 50")
  expect_error(velocity_confidence(g$V, "x"), "'distances'")
  expect_error(velocity_confidence(g$V, structure(list(distances = NULL), class = "scnative_moments")),
               "hold no kNN distances")
  D <- g$dist
  D@x[1] <- -1
  expect_error(velocity_confidence(g$V, D), "negative values")
  D <- g$dist
  D[5, ] <- 0
  expect_error(velocity_confidence(g$V, Matrix::drop0(D)), "at least one neighbour")
  expect_error(velocity_confidence(g$V, g$dist, velocity_genes = g$vg[-1]), "'velocity_genes'")
  expect_error(velocity_confidence(g$V, g$dist, spearmans_score = "a"), "'spearmans_score'")
  expect_error(velocity_confidence(g$V, g$dist, velocity_genes = rep(FALSE, nrow(g$V))),
               "no gene is left")
  expect_error(velocity_confidence(list(), g$dist), "'x' must be a numeric")
  expect_error(velocity_confidence_transition(g$V, g$Ms[, -1], g$conn), "'Ms' must have")
  expect_error(velocity_confidence_transition(g$V, g$Ms, g$conn[, -1]), "'T' must be 50 x 50")
  expect_error(velocity_confidence_transition(g$V, g$Ms, "T"), "'T' must be")
  expect_error(velocity_confidence_transition(g$V, g$Ms, g$conn, foo = 1), "unused argument: foo")
})
