# moments(), velocity(), simulate_velocity(), the plots and the object methods: parity with
# live upstream scVelo (peers venv, same test run), bad input, thread invariance.

cap_test_threads(teardown_env())

velo_py_code <- "
import numpy as _np, anndata as _ad, scipy.sparse as _sp, scvelo as _scv, warnings as _w
_w.filterwarnings('ignore')
_scv.settings.verbosity = 0

def velo_sim(**kw):
    a = _scv.datasets.simulation(**kw)
    return {'S': _np.asarray(a.layers['spliced'], dtype=float).T,
            'U': _np.asarray(a.layers['unspliced'], dtype=float).T,
            'true_t': _np.asarray(a.obs['true_t'], dtype=float),
            'var': {k: _np.asarray(a.var[k], dtype=float) for k in a.var.columns}}

def velo_raw(path):
    a = _ad.read_h5ad(path)
    return {'S': _np.asarray(a.layers['spliced'].toarray(), dtype=float).T,
            'U': _np.asarray(a.layers['unspliced'].toarray(), dtype=float).T,
            'genes': list(a.var_names), 'cells': list(a.obs_names)}

def velo_moments(S, U):
    S = _np.asarray(S, dtype=_np.float32).T.copy(); U = _np.asarray(U, dtype=_np.float32).T.copy()
    a = _ad.AnnData(X=S.copy(), layers={'spliced': S.copy(), 'unspliced': U.copy()})
    _scv.pp.moments(a)
    return {'Ms': _np.asarray(a.layers['Ms'], dtype=float).T,
            'Mu': _np.asarray(a.layers['Mu'], dtype=float).T,
            'conn': _np.asarray(a.obsp['connectivities'].toarray(), dtype=float)}

def velo_read(path):
    a = _ad.read_h5ad(path)
    return {'Ms': _np.asarray(a.layers['Ms'], dtype=float).T, 'Mu': _np.asarray(a.layers['Mu'], dtype=float).T,
            'conn': _np.asarray(a.obsp['connectivities'].toarray(), dtype=float),
            'genes': list(a.var_names), 'cells': list(a.obs_names)}

def _velo_adata(Ms, Mu, conn, genes, cells):
    a = _ad.AnnData(X=_np.asarray(Ms, dtype=_np.float32).T.copy())
    a.var_names = list(genes); a.obs_names = list(cells)
    a.layers['Ms'] = _np.asarray(Ms, dtype=_np.float32).T.copy()
    a.layers['Mu'] = _np.asarray(Mu, dtype=_np.float32).T.copy()
    a.layers['spliced'] = a.layers['Ms'].copy()
    a.layers['unspliced'] = a.layers['Mu'].copy()
    a.obsp['connectivities'] = _sp.csr_matrix(_np.asarray(conn))
    a.obsp['distances'] = _sp.csr_matrix(_np.asarray(conn))
    a.uns['neighbors'] = {'params': {'n_neighbors': 30, 'method': 'umap'},
                          'connectivities_key': 'connectivities', 'distances_key': 'distances'}
    return a

def _velo_out(a):
    return {'velocity': _np.asarray(a.layers['velocity'], dtype=float).T,
            'velocity_u': _np.asarray(a.layers['velocity_u'], dtype=float).T,
            'velocity_genes': [bool(x) for x in a.var['velocity_genes'].values]}

def velo_fit_upstream(Ms, Mu, conn, genes, cells, **kw):
    a = _velo_adata(Ms, Mu, conn, genes, cells)
    _scv.tl.recover_dynamics(a, var_names='all', show_progress_bar=False, **kw)
    _scv.tl.velocity(a, mode='dynamical')
    out = _velo_out(a)
    out['var'] = {k: _np.asarray(a.var[k].values, dtype=float) for k in a.var.columns
                  if k.startswith('fit_')}
    out['layers'] = {k: _np.asarray(a.layers[k], dtype=float).T for k in ['fit_t', 'fit_tau', 'fit_tau_']}
    out['uns'] = {k: (bool(v) if v is not None else None) for k, v in a.uns['recover_dynamics'].items()}
    return out

def velo_velocity_upstream(Ms, Mu, conn, genes, cells, var, layers, uns):
    a = _velo_adata(Ms, Mu, conn, genes, cells)
    for k, v in var.items():
        a.var[k] = _np.asarray(v, dtype=float)
    for k, v in layers.items():
        a.layers[k] = _np.asarray(v, dtype=float).T
    a.uns['recover_dynamics'] = dict(uns)
    _scv.tl.velocity(a, mode='dynamical')
    return _velo_out(a)
"

velo_py <- function() peers_module(velo_py_code, "velo_fit_upstream")

named <- function(m, genes, cells) {
  dimnames(m) <- list(unlist(genes), unlist(cells))
  m
}

gene_cor <- function(A, B) {
  vapply(seq_len(nrow(A)), function(i) {
    if (stats::sd(A[i, ]) == 0 && stats::sd(B[i, ]) == 0) return(1)
    stats::cor(A[i, ], B[i, ])
  }, numeric(1))
}

# ------------------------------------------------------------------ simulate_velocity

test_that("simulate_velocity() reproduces scvelo.datasets.simulation", {
  py <- velo_py()
  cfgs <- list(list(n_obs = 300L, random_seed = 0L),
               list(n_obs = 51L, n_vars = 7L, random_seed = 3L),
               list(n_obs = 120L, n_vars = 5L, random_seed = 42L, t_max = 15,
                    noise_level = 0.5, switches = c(0.3, 0.9)),
               list(n_obs = 60L, n_vars = 3L, random_seed = 5L, noise_model = "gillespie"))
  for (cfg in cfgs) {
    up <- do.call(py$velo_sim, cfg)
    ours <- do.call(simulate_velocity, cfg)
    expect_equal(unname(ours$spliced), up$S, tolerance = 1e-12)
    expect_equal(unname(ours$unspliced), up$U, tolerance = 1e-12)
    expect_equal(ours$obs$true_t, as.numeric(up$true_t), tolerance = 1e-12)
    expect_equal(ours$var$true_t_, as.numeric(up$var$true_t_), tolerance = 1e-12)
    expect_equal(ours$var$true_gamma, as.numeric(up$var$true_gamma))
    expect_equal(dim(ours$spliced), dim(up$S))
  }
})

test_that("simulate_velocity() checks its arguments", {
  expect_error(simulate_velocity(n_obs = 1), "'n_obs'")
  expect_error(simulate_velocity(random_seed = -1), "'random_seed'")
  expect_error(simulate_velocity(noise_model = "poisson"), "'noise_model'")
  expect_error(simulate_velocity(alpha = NA), "'alpha'")
  expect_error(simulate_velocity(switches = 1.5), "'switches'")
  s1 <- simulate_velocity(n_obs = 40, n_vars = 2, random_seed = 7)
  s2 <- simulate_velocity(n_obs = 40, n_vars = 2, random_seed = 7)
  expect_identical(s1, s2)
  expect_false(identical(s1$spliced, simulate_velocity(n_obs = 40, n_vars = 2,
                                                       random_seed = 8)$spliced))
})

# ------------------------------------------------------------------ moments

moments_parity <- function(S, U) {
  py <- velo_py()
  up <- py$velo_moments(as.matrix(S), as.matrix(U))
  ours <- moments(S, U, threads = 2)
  # the same kNN graph (support) as scanpy's
  B0 <- up$conn > 0
  B1 <- as.matrix(ours$connectivities > 0)
  expect_identical(unname(B1), B0)
  # Ms/Mu to float32 precision
  scale <- max(abs(up$Ms))
  expect_lt(max(abs(unname(ours$Ms) - up$Ms)) / scale, 1e-6)
  expect_lt(max(abs(unname(ours$Mu) - up$Mu)) / max(abs(up$Mu)), 1e-6)
  # umap weights agree (float32 distances of slightly different PCA scores)
  expect_lt(max(abs(unname(as.matrix(ours$connectivities)) - up$conn)), 1e-3)
  # given upstream's own graph, Ms/Mu are upstream's
  given <- moments(S, U, connectivities = up$conn)
  expect_lt(max(abs(unname(given$Ms) - up$Ms) / pmax(abs(up$Ms), 1e-3)), 1e-6)
  expect_lt(max(abs(unname(given$Mu) - up$Mu) / pmax(abs(up$Mu), 1e-3)), 1e-6)
  invisible(ours)
}

test_that("moments() matches scv.pp.moments on raw dentate gyrus and pancreas counts", {
  py <- velo_py()
  for (f in c("scvelo_dentategyrus_100obs.h5ad", "scvelo_pancreas_50obs.h5ad")) {
    d <- py$velo_raw(shared_file("velocity", f))
    S <- named(d$S, d$genes, d$cells)
    U <- named(d$U, d$genes, d$cells)
    S <- Matrix::Matrix(S, sparse = TRUE)
    U <- Matrix::Matrix(U, sparse = TRUE)
    ours <- moments_parity(S, U)
    expect_identical(dimnames(ours$Ms), dimnames(S))
    expect_true(ours$normalized)
  }
})

test_that("moments() matches scv.pp.moments on veloviz_pancreas739 (739 cells)", {
  f <- shared_file("velocity", "veloviz_pancreas739.rda")
  e <- new.env()
  load(f, envir = e)
  d <- get(ls(e)[1L], e)
  keep <- order(-rowSums(d$spliced))[1:1500]
  moments_parity(d$spliced[keep, ], d$unspliced[keep, ])
})

test_that("moments(): independent check of the averaging, threads, graph input", {
  sim <- simulate_velocity(n_obs = 80, n_vars = 60, random_seed = 2)
  m1 <- moments(sim$spliced, sim$unspliced, n_neighbors = 12, threads = 1)
  m2 <- moments(sim$spliced, sim$unspliced, n_neighbors = 12, threads = 2)
  expect_identical(m1, m2)
  # non-integer simulated values are not normalised; Ms is the row-normalised graph average
  expect_false(m1$normalized)
  B <- as.matrix(m1$connectivities > 0)
  diag(B) <- TRUE
  W <- B / rowSums(B)
  expect_equal(unname(m1$Ms), unname(sim$spliced %*% t(W)), tolerance = 1e-6)
  # each cell has its 11 nearest other cells (Euclidean on the PCs) as neighbours at least
  expect_true(all(Matrix::rowSums(m1$distances > 0) == 11))
  expect_true(isSymmetric(unname(as.matrix(m1$connectivities))))
  # a user graph: only its support matters
  G <- m1$connectivities
  G@x <- G@x * 3
  m3 <- moments(sim$spliced, sim$unspliced, connectivities = G)
  expect_equal(m3$Ms, m1$Ms)
  expect_null(m3$distances)
  # spliced given by name, sparse input
  m4 <- moments(spliced = Matrix::Matrix(sim$spliced, sparse = TRUE), unspliced = sim$unspliced,
                n_neighbors = 12, threads = 1)
  expect_equal(m4$Ms, m1$Ms)
})

test_that("moments() rejects bad input with clear errors", {
  sim <- simulate_velocity(n_obs = 30, n_vars = 4)
  S <- sim$spliced
  U <- sim$unspliced
  expect_error(moments(S, U[, -1]), "same dimensions")
  U2 <- U
  colnames(U2)[1] <- "x"
  expect_error(moments(S, U2), "same dimnames")
  S2 <- S
  S2[1, 1] <- -1
  expect_error(moments(S2, U), "negative")
  S2[1, 1] <- NA
  expect_error(moments(S2, U), "NA")
  expect_error(moments(S, U, n_neighbors = 1), "'n_neighbors'")
  expect_error(moments(S, U, connectivities = diag(3)), "'connectivities'")
  expect_error(moments(S), "'unspliced'")
})

# ------------------------------------------------------------------ velocity

velo_data <- function(n_genes = 30L) {
  py <- velo_py()
  d <- py$velo_read(shared_file("velocity", "scvelo_dentategyrus_100obs_preprocessed.h5ad"))
  g <- seq_len(n_genes)
  list(Ms = named(d$Ms, d$genes, d$cells)[g, ], Mu = named(d$Mu, d$genes, d$cells)[g, ],
       conn = d$conn)
}

velocity_vs_upstream_fit <- function(n_genes, ...) {
  py <- velo_py()
  ds <- velo_data(n_genes)
  genes <- rownames(ds$Ms)
  cells <- colnames(ds$Ms)
  up <- py$velo_fit_upstream(ds$Ms, ds$Mu, ds$conn, genes, cells, ...)
  var <- as.data.frame(up$var)
  rownames(var) <- genes
  lay <- lapply(up$layers, named, genes, cells)
  fit <- structure(list(var = var, layers = lay, uns = list(recover_dynamics = up$uns),
                        connectivities = ds$conn), class = "scnative_dynamics")
  v <- velocity(fit, ds$Ms, ds$Mu)
  expect_s3_class(v, "scnative_velocity")
  expect_identical(unname(is.na(v$velocity)), is.na(up$velocity))
  ok <- !is.na(up$velocity)
  expect_gt(sum(ok), 0)
  expect_equal(unname(v$velocity)[ok], up$velocity[ok], tolerance = 1e-10)
  expect_equal(unname(v$velocity_u)[ok], up$velocity_u[ok], tolerance = 1e-10)
  fitted <- rowSums(ok) > 0
  expect_true(all(gene_cor(unname(v$velocity)[fitted, ], up$velocity[fitted, ]) >= 0.999))
  expect_identical(v$var$velocity_genes, unlist(up$velocity_genes))
  # genes run in parallel blocks: the thread count changes nothing
  expect_identical(velocity(fit, ds$Ms, ds$Mu, threads = 2), velocity(fit, ds$Ms, ds$Mu, threads = 1))
  invisible(list(v = v, ds = ds, ok = ok))
}

test_that("velocity() matches tl.velocity(mode = 'dynamical') on upstream's own fit", {
  r <- velocity_vs_upstream_fit(30L)
  # velocities are clipped at -Ms and -Mu
  expect_true(all(r$v$velocity[r$ok] >= -r$ds$Ms[r$ok] - 1e-12))
  # (at -u z with u = Mu / z held in float32 as upstream, so within float32 of -Mu)
  expect_true(all(r$v$velocity_u[r$ok] >= -r$ds$Mu[r$ok] * (1 + 1e-6) - 1e-12))
})

test_that("velocity() matches upstream with use_raw (no smoothing over the graph)", {
  r <- velocity_vs_upstream_fit(12L, use_raw = TRUE)
  expect_true(any(r$ok))
})

test_that("velocity() matches upstream with fit_basal_transcription", {
  r <- velocity_vs_upstream_fit(12L, fit_basal_transcription = TRUE)
  expect_true(any(r$ok))
})

test_that("velocity() on our recover_dynamics fit matches upstream's velocity on that fit", {
  py <- velo_py()
  ds <- velo_data(20L)
  genes <- rownames(ds$Ms)
  cells <- colnames(ds$Ms)
  fit <- recover_dynamics(ds$Ms, ds$Mu, var_names = "all", connectivities = ds$conn,
                          threads = 2, progress = FALSE)
  v <- velocity(fit, ds$Ms, ds$Mu)
  up <- py$velo_velocity_upstream(ds$Ms, ds$Mu, ds$conn, genes, cells, as.list(fit$var),
                                  fit$layers, fit$uns$recover_dynamics)
  ok <- !is.na(up$velocity)
  expect_identical(unname(is.na(v$velocity)), !ok)
  expect_equal(unname(v$velocity)[ok], up$velocity[ok], tolerance = 1e-10)
  expect_equal(unname(v$velocity_u)[ok], up$velocity_u[ok], tolerance = 1e-10)
  expect_identical(v$var$velocity_genes, unlist(up$velocity_genes))
})

test_that("velocity() checks its input", {
  sim <- simulate_velocity(n_obs = 120, n_vars = 3)
  fit <- recover_dynamics(sim$spliced, sim$unspliced, var_names = "all", threads = 1,
                          progress = FALSE)
  expect_error(velocity(fit, sim$spliced, sim$unspliced, mode = "stochastic"), "'mode'")
  expect_error(velocity(fit, sim$spliced, sim$unspliced, threads = 0), "'threads'")
  expect_error(velocity(fit, sim$spliced, sim$unspliced, threads = "2"), "'threads'")
  expect_error(velocity(fit, sim$spliced[-1, ], sim$unspliced[-1, ]), "genes")
  expect_error(velocity(fit, sim$spliced[, -1], sim$unspliced[, -1]), "cells")
  S2 <- sim$spliced
  rownames(S2) <- rev(rownames(S2))
  expect_error(velocity(fit, S2, sim$unspliced), "genes")
  v <- suppressWarnings(velocity(fit, sim$spliced, sim$unspliced, connectivities = NULL))
  expect_equal(dim(v$velocity), dim(sim$spliced))
  expect_true(all(is.finite(v$velocity[!is.na(fit$var$fit_alpha), ])))
})

# ------------------------------------------------------------------ plots

test_that("plots build with the expected layers and data", {
  skip_if_not_installed("ggplot2")
  sim <- simulate_velocity(n_obs = 150, n_vars = 3)
  fit <- recover_dynamics(sim$spliced, sim$unspliced, var_names = "all", threads = 1,
                          progress = FALSE)
  p <- plot_phase_portrait(fit, "1", sim$spliced, sim$unspliced)
  expect_s3_class(p, "ggplot")
  geoms <- vapply(p$layers, function(l) class(l$geom)[1L], character(1))
  expect_true(all(c("GeomPoint", "GeomPath", "GeomAbline") %in% geoms))
  expect_equal(p$data$Ms, unname(sim$spliced["1", ]))
  expect_equal(p$data$color, unname(fit$layers$fit_t["1", ]))
  b <- ggplot2::ggplot_build(p)
  expect_equal(b$data[[which(geoms == "GeomAbline")]]$slope[1],
               fit$var["1", "fit_gamma"] / fit$var["1", "fit_beta"])
  # the trajectory starts at the origin and its induction branch ends at the switch
  traj <- p$layers[[which(geoms == "GeomPath")]]$data
  expect_equal(unlist(traj[1, c("Ms", "Mu")], use.names = FALSE), c(0, 0))
  groups <- rep(c("a", "b", "c"), 50)
  p2 <- plot_phase_portrait(fit, 2, sim$spliced, sim$unspliced, color = groups)
  expect_true(is.factor(p2$data$color))
  expect_error(plot_phase_portrait(fit, "nope", sim$spliced, sim$unspliced), "'gene'")
  expect_error(plot_phase_portrait(fit, "1", sim$spliced, sim$unspliced, color = 1:3), "'color'")
  q <- plot_dynamics_params(fit)
  expect_s3_class(q, "ggplot")
  expect_setequal(levels(q$data$parameter),
                  c("log10 alpha", "log10 beta", "log10 gamma", "t_", "scaling", "likelihood"))
  expect_equal(sum(q$data$parameter == "log10 alpha"), sum(!is.na(fit$var$fit_alpha)))
})

# ------------------------------------------------------------------ objects

test_that("SingleCellExperiment: moments, recover_dynamics, velocity store results", {
  skip_if_not_installed("SingleCellExperiment")
  sim <- simulate_velocity(n_obs = 120, n_vars = 4, random_seed = 1)
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(spliced = sim$spliced, unspliced = sim$unspliced))
  SummarizedExperiment::colData(sce)$group <- rep(c("a", "b"), 60)
  out <- recover_dynamics(sce, var_names = "all", threads = 1, progress = FALSE)
  an <- SummarizedExperiment::assayNames(out)
  expect_true(all(c("spliced", "unspliced", "Ms", "Mu", "fit_t", "fit_tau", "fit_tau_") %in% an))
  m <- moments(sim$spliced, sim$unspliced)
  expect_equal(unname(SummarizedExperiment::assay(out, "Ms")), unname(m$Ms))
  fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", connectivities = m$connectivities,
                          threads = 1, progress = FALSE)
  rd <- SummarizedExperiment::rowData(out)
  expect_equal(rd$fit_alpha, fit$var$fit_alpha)
  expect_equal(unname(SummarizedExperiment::assay(out, "fit_t")), unname(fit$layers$fit_t))
  expect_identical(S4Vectors::metadata(out)$recover_dynamics, fit$uns$recover_dynamics)
  expect_identical(SummarizedExperiment::colData(out)$group, rep(c("a", "b"), 60))
  expect_identical(SummarizedExperiment::assay(out, "spliced"), sim$spliced)
  out <- velocity(out)
  v <- velocity(fit, m$Ms, m$Mu, connectivities = m$connectivities)
  expect_equal(unname(SummarizedExperiment::assay(out, "velocity")), unname(v$velocity))
  expect_equal(SummarizedExperiment::rowData(out)$velocity_genes, v$var$velocity_genes)
  # errors name the missing assay
  bad <- SingleCellExperiment::SingleCellExperiment(assays = list(spliced = sim$spliced))
  expect_error(recover_dynamics(bad, progress = FALSE), "Ms")
  expect_error(moments(bad), "unspliced")
  expect_error(velocity(sce), "Ms")
})

test_that("Seurat: moments, recover_dynamics, velocity store results", {
  skip_if_not_installed("SeuratObject")
  sim <- simulate_velocity(n_obs = 120, n_vars = 4, random_seed = 1)
  so <- SeuratObject::CreateSeuratObject(counts = Matrix::Matrix(sim$spliced, sparse = TRUE),
                                         assay = "spliced")
  so[["unspliced"]] <- SeuratObject::CreateAssayObject(
    counts = Matrix::Matrix(sim$unspliced, sparse = TRUE))
  so2 <- moments(so)
  expect_true(all(c("Ms", "Mu") %in% SeuratObject::Assays(so2)))
  expect_true("scnative_connectivities" %in% SeuratObject::Graphs(so2))
  m <- moments(sim$spliced, sim$unspliced)
  expect_equal(unname(as.matrix(SeuratObject::GetAssayData(so2[["Ms"]], slot = "data"))),
               unname(m$Ms))
  out <- recover_dynamics(so2, var_names = "all", threads = 1, progress = FALSE)
  fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", connectivities = m$connectivities,
                          threads = 1, progress = FALSE)
  expect_equal(out[["Ms"]][[]]$fit_alpha, fit$var$fit_alpha)
  expect_true(all(c("fit_t", "fit_tau", "fit_tau_") %in% SeuratObject::Assays(out)))
  expect_identical(SeuratObject::Misc(out, "recover_dynamics"), fit$uns$recover_dynamics)
  expect_identical(out[[]], so[[]][, names(so[[]]), drop = FALSE][, names(out[[]]), drop = FALSE])
  out <- velocity(out)
  v <- velocity(fit, m$Ms, m$Mu, connectivities = m$connectivities)
  expect_equal(unname(as.matrix(SeuratObject::GetAssayData(out[["velocity"]], slot = "data"))),
               unname(v$velocity))
  # spliced/unspliced only: moments are computed first
  out2 <- recover_dynamics(so, var_names = "all", threads = 1, progress = FALSE)
  expect_equal(out2[["Ms"]][[]]$fit_alpha, fit$var$fit_alpha)
  expect_error(recover_dynamics(so, Ms = "Ms", unspliced = "nope", progress = FALSE), "Ms")
  expect_error(moments(so, unspliced = "nope"), "nope")
})

test_that("moments() on a Seurat object can use a FindNeighbors() graph", {
  skip_if_not_installed("Seurat")
  sim <- simulate_velocity(n_obs = 100, n_vars = 60, random_seed = 4)
  counts <- Matrix::Matrix(round(sim$spliced * 10), sparse = TRUE)
  so <- SeuratObject::CreateSeuratObject(counts = counts, assay = "spliced")
  so[["unspliced"]] <- SeuratObject::CreateAssayObject(
    counts = Matrix::Matrix(round(sim$unspliced * 10), sparse = TRUE))
  so <- suppressWarnings(suppressMessages({
    so <- Seurat::NormalizeData(so, verbose = FALSE)
    so <- Seurat::ScaleData(so, features = rownames(so), verbose = FALSE)
    so <- Seurat::RunPCA(so, features = rownames(so), npcs = 10, verbose = FALSE)
    Seurat::FindNeighbors(so, dims = 1:10, k.param = 15, verbose = FALSE)
  }))
  expect_true("spliced_nn" %in% SeuratObject::Graphs(so))
  out <- moments(so, graph = "spliced_nn")
  G <- methods::as(so[["spliced_nn"]], "dgCMatrix")
  ref <- moments(so[["spliced"]]@counts, so[["unspliced"]]@counts, connectivities = G)
  expect_equal(unname(as.matrix(SeuratObject::GetAssayData(out[["Ms"]], slot = "data"))),
               unname(ref$Ms))
  # rows average over the graph's neighbours plus the cell itself
  B <- as.matrix(G > 0)
  diag(B) <- TRUE
  S <- as.matrix(so[["spliced"]]@counts)
  Sn <- sweep(S, 2, colSums(S) / stats::median(colSums(S)), "/")
  expect_equal(unname(ref$Ms), unname(Sn %*% t(B / rowSums(B))), tolerance = 1e-6)
  expect_error(moments(so, graph = "nope"), "nope")
})
