# velocity_graph(), transition_matrix(), velocity_embedding(), velocity_grid(): parity with
# live scVelo (peers venv, same run) given the same Ms / velocity / kNN / embedding, an
# independent check of the cosines, thread invariance, bad input.

cap_test_threads(teardown_env())

vg_py_code <- "
import numpy as _np, anndata as _ad, scipy.sparse as _sp, scvelo as _scv, warnings as _w
_w.filterwarnings('ignore')
_scv.settings.verbosity = 0

def _vg_trip(m):
    m = _sp.coo_matrix(m)
    return {'i': m.row + 1, 'j': m.col + 1, 'x': m.data.astype(float), 'n': m.shape[0]}

def _vg_sp(t):
    return _sp.csr_matrix((_np.asarray(t['x'], dtype=float), (_np.asarray(t['i'], dtype=int) - 1,
                          _np.asarray(t['j'], dtype=int) - 1)), shape=(int(t['n']), int(t['n'])))

def vg_read(path):
    a = _ad.read_h5ad(path)
    return {'Ms': _np.asarray(a.layers['Ms'], dtype=float).T,
            'V': _np.asarray(a.layers['velocity'], dtype=float).T,
            'vgenes': [bool(x) for x in a.var['velocity_genes']],
            'dist': _vg_trip(a.obsp['distances']),
            'umap': _np.asarray(a.obsm['X_umap'], dtype=float),
            'stored': _vg_trip(a.obsp['velocity_graph'] + a.obsp['velocity_graph_neg'])}

def _vg_graph_adata(Ms, V, vgenes, dist):
    # an AnnData with our Ms / velocity / kNN (genes x cells from R) and upstream's graph on it
    Ms = _np.asarray(Ms, dtype=_np.float32).T.copy()
    a = _ad.AnnData(X=Ms.copy())
    a.layers['Ms'] = Ms
    a.layers['velocity'] = _np.asarray(V, dtype=float).T.copy()
    a.var['velocity_genes'] = _np.asarray(vgenes, dtype=bool)
    D = _vg_sp(dist)
    a.obsp['distances'] = D
    a.obsp['connectivities'] = D.copy()
    a.uns['neighbors'] = {'params': {'n_neighbors': 30, 'method': 'umap'},
                          'connectivities_key': 'connectivities', 'distances_key': 'distances'}
    a.uns['velocity_params'] = {'mode': 'dynamical'}
    _scv.tl.velocity_graph(a)
    return a

def vg_upstream(Ms, V, vgenes, dist, umap):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from scvelo.plotting.velocity_embedding_grid import compute_velocity_on_grid
    plt.rcdefaults()
    a = _vg_graph_adata(Ms, V, vgenes, dist)
    out = {'graph': _vg_trip(a.uns['velocity_graph']), 'neg': _vg_trip(a.uns['velocity_graph_neg']),
           'self': _np.asarray(a.obs['velocity_self_transition'], dtype=float)}
    out['T'] = _vg_trip(_scv.tl.transition_matrix(a))
    out['Tb'] = _vg_trip(_scv.tl.transition_matrix(a, backward=True, self_transitions=False))
    out['Tn'] = _vg_trip(_scv.tl.transition_matrix(a, use_negative_cosines=True))
    out['Tp'] = _vg_trip(_scv.tl.transition_matrix(a, perc=50))
    out['Tw'] = _vg_trip(_scv.tl.transition_matrix(a, weight_indirect_neighbors=0.3, n_neighbors=10))
    a.obsm['X_emb'] = _np.asarray(umap, dtype=_np.float32)
    out['Td'] = _vg_trip(_scv.tl.transition_matrix(a, basis='emb', weight_diffusion=0.4,
                                                   scale_diffusion=2))
    E = _np.asarray(umap, dtype=_np.float32)
    a.obsm['X_umap'] = E
    _scv.tl.velocity_embedding(a, basis='umap')
    vu = _np.asarray(a.obsm['velocity_umap'], dtype=float)
    out['vumap'] = vu
    X, Vg = compute_velocity_on_grid(E, vu, autoscale=True)
    out['grid_x'] = _np.asarray(X, dtype=float)
    out['grid_v'] = _np.asarray(Vg, dtype=float)
    X, Vg = compute_velocity_on_grid(E, vu, density=1, autoscale=False, adjust_for_stream=True)
    out['st_x'] = _np.asarray(X[0], dtype=float)
    out['st_y'] = _np.asarray(X[1], dtype=float)
    out['st_u'] = _np.asarray(Vg[0], dtype=float)
    out['st_v'] = _np.asarray(Vg[1], dtype=float)
    return out

def vg_embed_options(Ms, V, vgenes, dist, E, loadings):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    plt.rcdefaults()
    a = _vg_graph_adata(Ms, V, vgenes, dist)
    a.obsm['X_umap'] = _np.asarray(E, dtype=_np.float32)
    _scv.tl.velocity_embedding(a, basis='umap', retain_scale=True)
    out = {'retain': _np.asarray(a.obsm['velocity_umap'], dtype=float)}
    a.obsm['X_pca'] = _np.asarray(E, dtype=_np.float32)
    a.varm['PCs'] = _np.asarray(loadings, dtype=float)
    _scv.tl.velocity_embedding(a, basis='pca', direct_pca_projection=True)
    out['direct'] = _np.asarray(a.obsm['velocity_pca'], dtype=float)
    return out
"

vg_py <- function() peers_module(vg_py_code, "vg_upstream")

trip_matrix <- function(t) {
  Matrix::sparseMatrix(i = as.integer(t$i), j = as.integer(t$j), x = as.vector(t$x),
                       dims = c(as.integer(t$n), as.integer(t$n)))
}
as_trip <- function(M) {
  s <- Matrix::summary(methods::as(M, "CsparseMatrix"))
  list(i = s$i, j = s$j, x = s$x, n = nrow(M))
}

as_f32_ref <- function(x) {
  # float32 rounding through R's own single-precision conversion of writeBin
  d <- dim(x)
  out <- readBin(writeBin(as.vector(x), raw(), size = 4), "double", n = length(x), size = 4)
  dim(out) <- d
  out
}

# The bundled pancreas cells through our moments/recover_dynamics/velocity, a float32
# embedding without duplicated points (kNN ties at the grid would be resolved differently).
vg_fixture <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      x <- readRDS(system.file("extdata", "pancreas_velocity.rds", package = "scnative"))
      m <- moments(x$spliced, x$unspliced)
      fit <- recover_dynamics(m$Ms, m$Mu, connectivities = m$connectivities, progress = FALSE)
      v <- velocity(fit, m$Ms, m$Mu)
      E <- prcomp(t(log1p(m$Ms)))$x[, 1:2]
      E <- scnative:::as_f32(E + 1e-3 * sin(outer(seq_len(nrow(E)), c(1.3, 2.1))))
      cache <<- list(m = m, v = v, E = E, clusters = x$clusters)
    }
    cache
  }
})

# Upstream on one input set, every output compared by the caller.
vg_compare <- function(Ms, V, vgenes, dist, E) {
  py <- vg_py()
  up <- py$vg_upstream(Ms, V, vgenes, as_trip(dist), E)
  vg <- velocity_graph(V, Ms, dist, velocity_genes = vgenes)
  mine <- vg$graph + vg$graph_neg
  theirs <- trip_matrix(up$graph) + trip_matrix(up$neg)
  # same sparsity pattern, values within 1e-6 (float32 upstream)
  expect_identical(length(vg$graph@x), length(up$graph$x))
  expect_identical(length(vg$graph_neg@x), length(up$neg$x))
  expect_identical(Matrix::which(mine != 0), Matrix::which(theirs != 0))
  expect_lt(max(abs(mine - theirs)), 1e-6)
  expect_lt(max(abs(vg$self_transition - as.vector(up$self))), 1e-6)
  rel <- function(a, b) max(abs(a - b)) / max(abs(b))
  tm <- list(T = transition_matrix(vg),
             Tb = transition_matrix(vg, backward = TRUE, self_transitions = FALSE),
             Tn = transition_matrix(vg, use_negative_cosines = TRUE),
             Tp = transition_matrix(vg, perc = 50),
             Tw = transition_matrix(vg, weight_indirect_neighbors = 0.3, n_neighbors = 10,
                                    distances = dist),
             Td = transition_matrix(vg, embedding = E, weight_diffusion = 0.4,
                                    scale_diffusion = 2))
  for (nm in names(tm)) {
    ref <- trip_matrix(up[[nm]])
    expect_identical(length(tm[[nm]]@x), length(ref@x), label = nm)
    expect_lt(rel(tm[[nm]], ref), 1e-5, label = nm)
  }
  ve <- velocity_embedding(vg, E)
  expect_lt(rel(ve, up$vumap), 1e-5)
  expect_gt(min(diag(stats::cor(ve, up$vumap))), 0.999)
  g <- velocity_grid(E, up$vumap)
  expect_identical(dim(g$x), dim(up$grid_x))
  expect_lt(max(abs(g$x - up$grid_x)), 1e-6 * max(abs(E)))
  expect_lt(rel(g$v, up$grid_v), 1e-5)
  expect_gt(min(diag(stats::cor(g$v, up$grid_v))), 0.999)
  s <- velocity_grid(E, up$vumap, adjust_for_stream = TRUE)
  expect_lt(max(abs(s$x - up$st_x)), 1e-6 * max(abs(E)))
  expect_lt(max(abs(s$y - up$st_y)), 1e-6 * max(abs(E)))
  # the cut-off mask may flip at borderline points only
  expect_lte(sum(is.na(s$u) != is.nan(up$st_u)), 2)
  both <- !is.na(s$u) & !is.nan(up$st_u)
  expect_lt(max(abs(s$u[both] - up$st_u[both])) / max(abs(up$st_u[both])), 1e-5)
  expect_lt(rel(s$v, up$st_v), 1e-5)
  invisible(vg)
}

test_that("velocity graph, transition matrices, embedding and grids match scVelo (pancreas, 739 cells)", {
  f <- vg_fixture()
  vg_compare(f$m$Ms, f$v$velocity, f$v$var$velocity_genes, f$m$distances, f$E)
})

test_that("velocity_embedding(retain_scale, direct_pca_projection) match scVelo", {
  f <- vg_fixture()
  py <- vg_py()
  pc <- prcomp(t(log1p(f$m$Ms)))
  L <- pc$rotation[, 1:2]
  up <- py$vg_embed_options(f$m$Ms, f$v$velocity, f$v$var$velocity_genes, as_trip(f$m$distances),
                            f$E, L)
  vg <- velocity_graph(f$v, f$m$Ms, f$m$distances)
  rel <- function(a, b) max(abs(a - b), na.rm = TRUE) / max(abs(b), na.rm = TRUE)
  vr <- velocity_embedding(vg, f$E, retain_scale = TRUE, velocity = f$v, Ms = f$m$Ms)
  expect_lt(rel(vr, up$retain), 1e-5)
  vd <- velocity_embedding(vg, f$E, direct_pca_projection = TRUE, velocity = f$v, loadings = L)
  expect_lt(rel(vd, up$direct), 1e-5)
  expect_error(velocity_embedding(vg, f$E, retain_scale = TRUE), "'velocity'")
  expect_error(velocity_embedding(vg, f$E, direct_pca_projection = TRUE, velocity = f$v),
               "'loadings'")
})

test_that("... and on the CellRank golden files (upstream's own velocity and kNN)", {
  py <- vg_py()
  for (n in c(50, 100)) {
    d <- py$vg_read(shared_file("velocity", sprintf("cellrank_golden_adata_%d.h5ad", n)))
    dist <- trip_matrix(d$dist)
    vg <- vg_compare(d$Ms, d$V, unlist(d$vgenes), dist, d$umap)
    # the stored cosines (scVelo ~0.2.4, another neighbour graph: values only, spec 1.10)
    st <- trip_matrix(d$stored)
    mine <- vg$graph + vg$graph_neg
    common <- Matrix::which(st != 0 & mine != 0)
    expect_gt(length(common), 0.5 * sum(st != 0))
    expect_lt(max(abs(mine[common] - st[common])), 1e-6)
  }
})

test_that("velocity_graph(): independent cosines, thread invariance, options", {
  sim <- simulate_velocity(n_obs = 120, n_vars = 8, random_seed = 3)
  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 8, normalize = FALSE)
  fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", progress = FALSE)
  v <- velocity(fit, m$Ms, m$Mu)
  keep <- rep(TRUE, 8)
  vg1 <- velocity_graph(v, m$Ms, m$distances, velocity_genes = keep, threads = 1)
  vg2 <- velocity_graph(v, m$Ms, m$distances, velocity_genes = keep, threads = 2)
  expect_identical(vg1, vg2)
  # the spec's formula by hand: 2-hop neighbourhoods of the 7-NN, Pearson of displacement
  # and velocity over the fitted genes
  ok <- !apply(is.na(v$velocity), 1, any)
  X <- as_f32_ref(m$Ms[ok, ])
  V <- as_f32_ref(v$velocity[ok, ])
  V <- sweep(V, 2, colMeans(V))
  D <- as.matrix(m$distances) > 0
  G <- vg1$graph + vg1$graph_neg
  for (i in c(1, 17, 60, 120)) {
    n1 <- which(D[i, ])
    S <- sort(unique(c(i, n1, unlist(lapply(n1, function(j) which(D[j, ]))))))
    S <- setdiff(S, i)
    ref <- vapply(S, function(j) stats::cor(X[, j] - X[, i], V[, i]), 0)
    expect_equal(as.vector(G[i, S]), ref, tolerance = 1e-6)
    expect_true(all(G[i, -S] == 0))
  }
  # one recursion: only the direct neighbours
  vr <- velocity_graph(v, m$Ms, m$distances, velocity_genes = keep, n_recurse_neighbors = 1)
  expect_true(all(as.matrix((vr$graph + vr$graph_neg) != 0) <= D))
  expect_lt(length(vr$graph@x), length(vg1$graph@x))
  # rows of the transition matrix sum to one; backward = transposed kernel
  T <- transition_matrix(vg1)
  expect_equal(unname(Matrix::rowSums(T)), rep(1, 120), tolerance = 1e-12)
  Tb <- transition_matrix(vg1, backward = TRUE, self_transitions = FALSE)
  C <- as.matrix(vg1$graph + vg1$graph_neg)
  K <- t(exp(10 * C) * (C != 0))
  rs <- rowSums(K)
  expect_true(any(rs == 0)) # cells nobody reaches: empty rows stay empty
  rs[rs == 0] <- 1
  # (the kernel is rounded to float32 as upstream's)
  expect_equal(unname(as.matrix(Tb)), unname(K / rs), tolerance = 1e-6)
  # embedding without autoscale: the projection by hand for one cell
  E <- prcomp(t(m$Ms))$x[, 1:2]
  ve <- velocity_embedding(vg1, E, autoscale = FALSE)
  Tn <- transition_matrix(vg1, use_negative_cosines = TRUE)
  i <- 5
  js <- setdiff(which(Tn[i, ] != 0), i)
  d <- sweep(E[js, , drop = FALSE], 2, E[i, ])
  d <- d / sqrt(rowSums(d^2))
  p <- Tn[i, js]
  expect_equal(unname(ve[i, ]), unname(colSums(p * d) - mean(p) * colSums(d)), tolerance = 1e-10)
  expect_identical(attr(ve, "scale"), 1)
  expect_output(print(vg1), "scnative_velocity_graph")
})

test_that("velocity_graph() and friends reject bad input with clear errors", {
  sim <- simulate_velocity(n_obs = 60, n_vars = 4, random_seed = 2)
  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 6, normalize = FALSE)
  fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", progress = FALSE)
  v <- velocity(fit, m$Ms, m$Mu)
  Ms0 <- m$Ms
  expect_error(velocity_graph(v, m$Ms), "'distances' is missing")
  expect_error(velocity_graph(v, m$Ms[, -1], m$distances, velocity_genes = rep(TRUE, 4)), "'Ms'")
  expect_error(velocity_graph(v, m$Ms, m$distances[-1, ], velocity_genes = rep(TRUE, 4)),
               "'distances' must be 60 x 60")
  expect_error(velocity_graph(v, m$Ms, m$distances, velocity_genes = c(TRUE, FALSE)),
               "'velocity_genes'")
  expect_error(velocity_graph(v, m$Ms, m$distances, velocity_genes = c(TRUE, rep(FALSE, 3))),
               "too few velocity genes")
  expect_error(velocity_graph(v, m$Ms, m$distances, velocity_genes = "nope"), "unknown gene")
  expect_error(velocity_graph(v, m$Ms, m$distances, n_recurse_neighbors = 0), "n_recurse_neighbors")
  bad <- m$distances
  bad[3, ] <- 0
  expect_error(velocity_graph(v, m$Ms, Matrix::drop0(bad), velocity_genes = rep(TRUE, 4)),
               "cell 3 has none")
  broken <- m$distances
  broken@p[length(broken@p)] <- broken@p[length(broken@p)] + 5L
  expect_error(velocity_graph(v, m$Ms, broken, velocity_genes = rep(TRUE, 4)),
               "'distances' is not a valid sparse matrix")
  expect_error(velocity_graph("a", m$Ms, m$distances), "'x' must be")
  expect_identical(m$Ms, Ms0)
  vg <- velocity_graph(v, m$Ms, m$distances, velocity_genes = rep(TRUE, 4))
  expect_error(transition_matrix(list()), "scnative_velocity_graph")
  expect_error(transition_matrix(vg, scale = -1), "'scale'")
  mal <- vg
  mal$graph_neg <- mal$graph_neg[-1, ]
  expect_error(transition_matrix(mal), "graph_neg")
  expect_error(velocity_embedding(vg, matrix(0, 10, 2)), "'embedding' must have 60 rows")
  E <- matrix(stats::rnorm(120), 60, 2)
  E[4, 1] <- NA
  expect_error(velocity_embedding(vg, E), "NA")
  expect_error(velocity_grid(matrix(stats::rnorm(120), 60, 2), matrix(0, 5, 2)), "'V'")
  expect_error(velocity_grid(matrix(stats::rnorm(120), 60, 2), matrix(0, 60, 2), density = 0),
               "'density'")
})

unclass_ve <- function(V) {
  attr(V, "scale") <- NULL
  V
}

test_that("Seurat and SingleCellExperiment: velocity_graph, velocity_embedding store results", {
  skip_if_not_installed("SingleCellExperiment")
  skip_if_not_installed("SeuratObject")
  sim <- simulate_velocity(n_obs = 120, n_vars = 6, random_seed = 5)
  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10)
  fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", connectivities = m$connectivities,
                          progress = FALSE)
  v <- velocity(fit, m$Ms, m$Mu, connectivities = m$connectivities)
  ref <- velocity_graph(v, m$Ms, m$distances)
  E <- prcomp(t(m$Ms))$x[, 1:2]
  colnames(E) <- c("UMAP_1", "UMAP_2")
  ve <- velocity_embedding(ref, E)

  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(spliced = sim$spliced, unspliced = sim$unspliced))
  sce <- moments(sce, n_neighbors = 10)
  expect_true("scnative_distances" %in% SingleCellExperiment::colPairNames(sce))
  sce <- velocity(recover_dynamics(sce, var_names = "all", progress = FALSE))
  SingleCellExperiment::reducedDim(sce, "umap") <- unname(E)
  before <- sce
  expect_error(velocity_graph(sce, distances = "nope"), "nope")
  expect_error(velocity_embedding(sce), "velocity_graph")
  expect_identical(sce, before)
  sce <- velocity_graph(sce)
  G <- SingleCellExperiment::colPair(sce, "velocity_graph", asSparse = TRUE)
  expect_equal(unname(as.matrix(G)), unname(as.matrix(ref$graph)))
  expect_equal(sce$velocity_self_transition, unname(ref$self_transition))
  expect_equal(unname(as.matrix(transition_matrix(sce))), unname(as.matrix(transition_matrix(ref))))
  sce <- velocity_embedding(sce)
  expect_equal(unname(SingleCellExperiment::reducedDim(sce, "velocity_umap")), unname(unclass_ve(ve)))
  expect_error(velocity_embedding(sce, reduction = "tsne"), "no reducedDim 'tsne'")
  # terminal states, latent time, pseudotime, confidence land in colData
  ts <- terminal_states(ref, m$distances)
  lt <- latent_time(fit, ts)
  sce2 <- latent_time(sce)
  expect_equal(sce2$root_cells, unname(ts$root_cells))
  expect_equal(sce2$end_points, unname(ts$end_points))
  expect_equal(sce2$latent_time, unname(lt))
  sce2 <- velocity_pseudotime(sce2)
  pt <- velocity_pseudotime(ref, m$connectivities, root = ts$root_cells, end = ts$end_points)
  expect_equal(sce2$velocity_pseudotime, unname(as.vector(pt)))
  sce2 <- velocity_confidence(sce2)
  vc <- velocity_confidence(v, m$distances)
  expect_equal(sce2$velocity_confidence, vc$velocity_confidence)
  expect_equal(sce2$velocity_length, vc$velocity_length)
  expect_error(latent_time(sce, root_cells = "nope"), "root")
  # gene rankings land in metadata() and rowData
  grp <- rep(c("a", "b", "c"), 40)
  sce2$clusters <- grp
  sce2 <- rank_dynamical_genes(rank_velocity_genes(sce2, n_genes = 3), n_genes = 3)
  rv <- rank_velocity_genes(v, grp, Ms = m$Ms, Mu = m$Mu, n_genes = 3,
                            unspliced = sim$unspliced, fit_likelihood = fit)
  rd <- rank_dynamical_genes(fit, m$Ms, m$Mu, grp, n_genes = 3)
  md <- S4Vectors::metadata(sce2)
  expect_identical(md$rank_velocity_genes$names, rv$names)
  expect_identical(md$rank_dynamical_genes$names, rd$names)
  expect_equal(SummarizedExperiment::rowData(sce2)$velocity_score, unname(rv$velocity_score))
  expect_error(rank_velocity_genes(sce2, groupby = "nope"), "'groupby'")
  skip_if_not_installed("ggplot2")
  hm <- plot_latent_time_heatmap(sce2, color = "clusters", n_convolve = 10)
  expect_s3_class(hm, "ggplot")
  expect_equal(latent_time_heatmap_data(fit, m$Ms, lt, n_convolve = 10),
               latent_time_heatmap_data(fit, m$Ms, sce2$latent_time, n_convolve = 10))
  pg <- plot_velocity_graph(sce2, color = "clusters")
  expect_s3_class(pg, "ggplot")
  expect_error(plot_latent_time_heatmap(sce, color = "clusters"), "'latent_time'")

  so <- SeuratObject::CreateSeuratObject(counts = Matrix::Matrix(sim$spliced, sparse = TRUE),
                                         assay = "spliced")
  so[["unspliced"]] <- SeuratObject::CreateAssayObject(
    counts = Matrix::Matrix(sim$unspliced, sparse = TRUE))
  so <- velocity(recover_dynamics(moments(so, n_neighbors = 10), var_names = "all",
                                  progress = FALSE))
  so[["umap"]] <- SeuratObject::CreateDimReducObject(
    embeddings = `rownames<-`(E, colnames(so)), key = "UMAP_", assay = "spliced")
  so <- velocity_embedding(velocity_graph(so))
  expect_true(all(c("velocity_graph", "velocity_graph_neg") %in% SeuratObject::Graphs(so)))
  expect_equal(unname(as.matrix(methods::as(so[["velocity_graph"]], "dgCMatrix"))),
               unname(as.matrix(ref$graph)))
  expect_equal(so$velocity_self_transition, ref$self_transition, ignore_attr = TRUE)
  expect_equal(unname(SeuratObject::Embeddings(so[["velocity_umap"]])), unname(unclass_ve(ve)))
  so2 <- velocity_confidence(velocity_pseudotime(latent_time(so)))
  expect_equal(unname(so2$latent_time), unname(lt))
  expect_equal(unname(so2$velocity_pseudotime), unname(as.vector(pt)))
  expect_equal(unname(so2$velocity_confidence), vc$velocity_confidence)
  skip_if_not_installed("ggplot2")
  so$group <- rep(c("a", "b", "c"), 40)
  for (type in c("grid", "arrows")) {
    p <- plot_velocity_embedding(so, type = type, color = "group")
    expect_s3_class(p, "ggplot")
    expect_true(is.factor(p$data$color))
    expect_true(any(vapply(p$layers, function(l) inherits(l$geom, "GeomSegment"), TRUE)))
  }
  p <- plot_velocity_embedding(sce, type = "grid", color = "0")
  expect_true(is.numeric(p$data$color))
  expect_error(plot_velocity_embedding(so, color = "nope"), "'color'")
})

test_that("grid and arrow plots draw the grid velocities", {
  skip_if_not_installed("ggplot2")
  f <- vg_fixture()
  vg <- velocity_graph(f$v, f$m$Ms, f$m$distances)
  V <- velocity_embedding(vg, f$E)
  p <- plot_velocity_embedding(f$E, V, type = "grid", color = f$clusters)
  seg <- p$layers[[2]]$data
  g <- velocity_grid(f$E, V)
  expect_equal(seg$x, g$x[, 1])
  expect_equal(seg$xend - seg$x, g$v[, 1])
  p2 <- plot_velocity_embedding(f$E, V, type = "arrows", arrow_length = 2)
  seg2 <- p2$layers[[2]]$data
  expect_equal(seg2$yend - seg2$y, 2 * V[is.finite(V[, 1]), 2], ignore_attr = TRUE)
  # stream: the lines integrated through the stream grid, widths from its line widths
  p3 <- plot_velocity_embedding(f$E, V, color = f$clusters)
  g <- velocity_grid(f$E, V, adjust_for_stream = TRUE)
  st <- stream_lines(g$x, g$y, g$u, g$v, density = 2, linewidth = g$linewidth, maxlength = 4)
  segs <- Filter(function(l) inherits(l$geom, "GeomSegment"), p3$layers)
  expect_length(segs, 2)
  expect_gt(nrow(st$segments), 1000)
  expect_equal(nrow(segs[[1]]$data), sum(is.finite(st$segments$width)))
  expect_equal(nrow(segs[[2]]$data), nrow(st$arrows))
  expect_error(plot_velocity_embedding(f$E, V, type = "nope"), "'type'")
  expect_error(plot_velocity_embedding(f$E, V[-1, ]), "'V'")
  if (nzchar(Sys.getenv("SCNATIVE_PLOT_DIR"))) {
    ggplot2::ggsave(file.path(Sys.getenv("SCNATIVE_PLOT_DIR"), "grid.png"), p, width = 6, height = 5)
    ggplot2::ggsave(file.path(Sys.getenv("SCNATIVE_PLOT_DIR"), "arrows.png"), p2, width = 6, height = 5)
    ggplot2::ggsave(file.path(Sys.getenv("SCNATIVE_PLOT_DIR"), "stream.png"), p3, width = 6, height = 5)
  }
})
