# velocity_graph_edges() / plot_velocity_graph(): the edge set against the graph live
# scv.pl.velocity_graph hands to its edge drawer (peers venv, same run; networkx.Graph of the
# transition matrix) and that matrix, on simulated data and on the CellRank golden graph;
# properties of the selection; bad input; the plot.

vgp_py_code <- "
import sys as _sys, numpy as _np, anndata as _ad, scipy.sparse as _sp, scvelo as _scv
import warnings as _w, matplotlib as _mpl
_mpl.use('Agg')
_w.filterwarnings('ignore')
_scv.settings.verbosity = 0

def _vgp_sp(t, dtype):
    return _sp.csr_matrix((_np.asarray(t['x'], dtype=dtype), (_np.asarray(t['i'], dtype=int) - 1,
                           _np.asarray(t['j'], dtype=int) - 1)), shape=(int(t['n']), int(t['n'])))

def _vgp_trip(m):
    m = _sp.coo_matrix(m)
    return {'i': m.row + 1, 'j': m.col + 1, 'x': m.data.astype(float), 'n': int(m.shape[0])}

def vgp_golden(path):
    a = _ad.read_h5ad(path)
    return {'graph': _vgp_trip(a.obsp['velocity_graph']), 'neg': _vgp_trip(a.obsp['velocity_graph_neg']),
            'dist': _vgp_trip(a.obsp['distances']), 'umap': _np.asarray(a.obsm['X_umap'], dtype=float),
            'k': int(a.uns['neighbors']['params']['n_neighbors'])}

# scv.pl.velocity_graph on an AnnData holding the graph (float32, as tl.velocity_graph stores
# it) and the kNN; the networkx graph given to its edge drawer is captured
def vgp_upstream(g, gneg, dist, E, n_neighbors, threshold, k):
    import matplotlib.pyplot as plt
    n = int(g['n'])
    a = _ad.AnnData(X=_np.zeros((n, 2), dtype=_np.float32))
    a.uns['velocity_graph'] = _vgp_sp(g, _np.float32)
    a.uns['velocity_graph_neg'] = _vgp_sp(gneg, _np.float32)
    a.obsp['distances'] = _vgp_sp(dist, _np.float64)
    a.obsp['connectivities'] = (a.obsp['distances'] > 0).astype(_np.float64)
    a.uns['neighbors'] = {'params': {'n_neighbors': int(k), 'method': 'umap'},
                          'connectivities_key': 'connectivities', 'distances_key': 'distances'}
    a.obsm['X_umap'] = _np.asarray(E, dtype=float)
    mod = _sys.modules['scvelo.plotting.velocity_graph']
    cap = {}
    class _Edges:
        def set_zorder(self, z): pass
        def set_rasterized(self, r): pass
    def _capture(G, pos, **kw):
        cap['edges'] = _np.array([[u, v] for u, v in G.edges()], dtype=float).reshape(-1, 2) + 1
        return _Edges()
    orig = mod._draw_networkx_edges
    mod._draw_networkx_edges = _capture
    kw = {} if threshold is None else {'threshold': float(threshold)}
    try:
        _scv.pl.velocity_graph(a, basis='umap', n_neighbors=int(n_neighbors), show=False, **kw)
    finally:
        mod._draw_networkx_edges = orig
        plt.close('all')
    # the matrix it draws: transition_matrix with pl.velocity_graph's arguments
    T = _scv.tl.transition_matrix(a, weight_indirect_neighbors=0, n_neighbors=int(n_neighbors),
                                  threshold=0.05 if threshold is None else float(threshold))
    return {'edges': cap['edges'], 'T': _vgp_trip(T)}
"

vgp_py <- function() peers_module(vgp_py_code, "vgp_upstream")

vgp_trip <- function(M) {
  s <- Matrix::summary(methods::as(M, "CsparseMatrix"))
  list(i = s$i, j = s$j, x = s$x, n = nrow(M))
}
vgp_matrix <- function(t) {
  Matrix::sparseMatrix(i = as.integer(t$i), j = as.integer(t$j), x = as.vector(t$x),
                       dims = c(as.integer(t$n), as.integer(t$n)))
}

# The brief's fixture: 200 simulated cells, 8 genes, 10-NN moments.
vgp_fixture <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      sim <- simulate_velocity(n_obs = 200, n_vars = 8)
      m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
      fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", progress = FALSE)
      v <- velocity(fit, m$Ms, m$Mu)
      vg <- velocity_graph(v, m$Ms, m$distances, velocity_genes = rep(TRUE, 8))
      E <- prcomp(t(log1p(m$Ms)))$x[, 1:2]
      cache <<- list(sim = sim, m = m, vg = vg, E = E)
    }
    cache
  }
})

# Our edges and transitions against upstream's for one setting; returns the edges.
vgp_compare <- function(vg, dist, E, n_neighbors, threshold, k) {
  up <- vgp_py()$vgp_upstream(vgp_trip(vg$graph), vgp_trip(vg$graph_neg), vgp_trip(dist), E,
                              n_neighbors, threshold, k)
  ed <- velocity_graph_edges(vg, dist, n_neighbors = n_neighbors, threshold = threshold)
  lab <- sprintf("n_neighbors = %d, threshold = %s", n_neighbors, deparse(threshold))
  ue <- up$edges
  ue <- ue[ue[, 1L] != ue[, 2L], , drop = FALSE] # self-loops: nothing is drawn
  ue <- cbind(pmin(ue[, 1L], ue[, 2L]), pmax(ue[, 1L], ue[, 2L]))
  ue <- ue[order(ue[, 1L], ue[, 2L]), , drop = FALSE]
  expect_identical(unname(as.matrix(ed[, c("from", "to")])),
                   matrix(as.integer(ue), ncol = 2L), label = lab)
  T <- attr(ed, "transitions")
  Tu <- vgp_matrix(up$T)
  expect_identical(Matrix::which(T != 0), Matrix::which(Tu != 0), label = lab)
  expect_lt(max(abs(T - Tu)) / max(Tu), 1e-5, label = lab)
  ed
}

test_that("the edges are those scv.pl.velocity_graph draws (simulated, 200 cells)", {
  f <- vgp_fixture()
  # scanpy's n_neighbors = stored neighbours + 1
  k <- max(diff(Matrix::t(f$m$distances)@p)) + 1L
  e10 <- vgp_compare(f$vg, f$m$distances, f$E, 10L, NULL, k)
  expect_gt(nrow(e10), 2 * 200)
  e5 <- vgp_compare(f$vg, f$m$distances, f$E, 5L, NULL, k)
  eh <- vgp_compare(f$vg, f$m$distances, f$E, 10L, 0.2, k)
  vgp_compare(f$vg, f$m$distances, f$E, 3L, 0.01, k)
  # a higher threshold keeps a subset
  key <- function(e) paste(e$from, e$to)
  expect_true(all(key(eh) %in% key(e10)))
  expect_lt(nrow(eh), nrow(e10))
  # every kept transition goes to a direct neighbour (or stays), rows sum to 1
  T <- attr(e10, "transitions")
  s <- Matrix::summary(T)
  D <- f$m$distances
  expect_true(all(s$i == s$j | D[cbind(s$i, s$j)] > 0))
  expect_equal(unname(Matrix::rowSums(T)[unique(s$i)]), rep(1, length(unique(s$i))),
               tolerance = 1e-12)
  expect_true(all(e10$weight > 0 & e10$weight <= 1))
  # a scnative_moments object gives the same
  expect_identical(velocity_graph_edges(f$vg, f$m), e10)
})

test_that("... and on the CellRank golden graph (upstream's own cosines and 29-NN)", {
  py <- vgp_py()
  d <- py$vgp_golden(shared_file("velocity", "cellrank_golden_adata_100.h5ad"))
  vg <- structure(list(graph = vgp_matrix(d$graph), graph_neg = vgp_matrix(d$neg)),
                  class = "scnative_velocity_graph")
  dist <- vgp_matrix(d$dist)
  e <- vgp_compare(vg, dist, d$umap, 10L, NULL, d$k)
  expect_gt(nrow(e), 100)
  vgp_compare(vg, dist, d$umap, 30L, NULL, d$k)
  vgp_compare(vg, dist, d$umap, 5L, 0.1, d$k)
})

test_that("bad input gives clear errors naming the argument", {
  f <- vgp_fixture()
  vg <- f$vg
  D <- f$m$distances
  expect_error(velocity_graph_edges(list(), D), "'x' must be a scnative_velocity_graph")
  expect_error(velocity_graph_edges(vg), "'distances' is missing")
  expect_error(velocity_graph_edges(vg, D[1:10, 1:10]), "'distances' must be 200 x 200")
  expect_error(velocity_graph_edges(vg, D, n_neighbors = 0), "'n_neighbors' must be at least 1")
  expect_error(velocity_graph_edges(vg, D, n_neighbors = 2.5), "'n_neighbors' must be a whole")
  expect_error(velocity_graph_edges(vg, D, threshold = -1), "'threshold' must be at least 0")
  expect_error(velocity_graph_edges(vg, -D), "'distances' contains negative values")
  empty <- D
  empty[3, ] <- 0
  expect_error(velocity_graph_edges(vg, Matrix::drop0(empty)), "cell 3 has none")
  skip_if_not_installed("ggplot2")
  p <- plot_velocity_graph
  expect_error(p(vg, distances = D), "'embedding' is missing")
  expect_error(p(vg, D, D), "'embedding' must be a numeric cells x dimensions matrix")
  expect_error(p(vg, f$E[-1, ], D), "'embedding' must have 200 rows")
  expect_error(p(vg, f$E, D, color = 1:3), "'color' must have one value per cell")
  expect_error(p(vg, f$E, D, arrows = "yes"), "'arrows' must be TRUE or FALSE")
  expect_error(p(vg, f$E, D, edge_color = "nocolour"), "'edge_color' must be a single colour")
  expect_error(p(vg, f$E, D, point_size = -1), "'point_size' must be at least 0")
  expect_error(p(vg, f$E, D, color = rep(c("a", "b"), 100), palette = c(a = "red")),
               "'palette' has no colour for b")
  expect_error(p(vg, f$E, D, basis = "umap"), "unused argument: basis")
})

test_that("the plot draws the selected edges under the cells", {
  skip_if_not_installed("ggplot2")
  f <- vgp_fixture()
  e <- velocity_graph_edges(f$vg, f$m$distances)
  p <- plot_velocity_graph(f$vg, f$E, f$m$distances, color = f$sim$t)
  expect_s3_class(p, "ggplot")
  geoms <- vapply(p$layers, function(l) class(l$geom)[1L], "")
  expect_identical(geoms, c("GeomSegment", "GeomPoint")) # edges first: under the points
  seg <- p$layers[[1L]]$data
  expect_identical(nrow(seg), nrow(e))
  expect_equal(seg$x, unname(f$E[e$from, 1L]))
  expect_equal(seg$yend, unname(f$E[e$to, 2L]))
  pa <- plot_velocity_graph(f$vg, f$E, f$m$distances, arrows = TRUE,
                            color = cut(f$sim$t, 3))
  T <- attr(e, "transitions")
  expect_identical(nrow(pa$layers[[2L]]$data), sum(Matrix::summary(T)$i != Matrix::summary(T)$j))
  f1 <- tempfile(fileext = ".png")
  on.exit(unlink(f1))
  ggplot2::ggsave(f1, pa, width = 4, height = 3, dpi = 50)
  expect_gt(file.size(f1), 1000)
})
