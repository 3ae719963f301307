# rank_velocity_genes() and rank_dynamical_genes(): parity with live upstream scVelo (peers
# venv, same test run) on the CellRank golden files (upstream's own layers and fit) and on the
# bundled pancreas cells through our moments/recover_dynamics/velocity (the same layers fed
# to upstream), an independent check of the t-test, and bad input.

cap_test_threads(teardown_env())

rk_py_code <- "
import sys as _sys, numpy as _np, pandas as _pd, anndata as _ad, scipy.sparse as _sp
import scvelo as _scv, warnings as _w
import scvelo.tools.rank_velocity_genes, scvelo.tools._em_model_core
# the modules (scvelo.tools' attributes of these names are the functions)
_rk_rvg = _sys.modules['scvelo.tools.rank_velocity_genes']
_rk_emc = _sys.modules['scvelo.tools._em_model_core']
_w.filterwarnings('ignore')
_scv.settings.verbosity = 0

# numpy as seen by one upstream module, recording what nan_to_num returns when called from
# the function `fname` itself: the unrounded scores (rank_velocity_genes, one call per group)
# and the full likelihood matrix (rank_dynamical_genes)
class _RkSpy:
    def __init__(self, fname):
        self.fname = fname; self.calls = []
    def __getattr__(self, k):
        return getattr(_np, k)
    def nan_to_num(self, x, *a, **k):
        r = _np.nan_to_num(x, *a, **k)
        if _sys._getframe(1).f_code.co_name == self.fname:
            self.calls.append(_np.array(r, dtype=float))
        return r

def _rk_spied(mod, fname, fun, *a, **k):
    spy = _RkSpy(fname)
    old = mod.np
    mod.np = spy
    try:
        fun(*a, **k)
    finally:
        mod.np = old
    return spy.calls

def _rk_rec(rec):
    return {n: [str(v) if rec.dtype[n].kind == 'U' else float(v) for v in rec[n]]
            for n in rec.dtype.names}

# labels outside the levels (R's NA arrives as 'NA') become NaN: cells in no group
def _rk_groups(a, groups, levels):
    a.obs['grp'] = _pd.Categorical([str(g) for g in groups], categories=list(levels))

def rk_run(a, groups, levels, n_genes=100, dyn=True, **kw):
    _rk_groups(a, groups, levels)
    raw = _rk_spied(_rk_rvg, 'rank_velocity_genes', _scv.tl.rank_velocity_genes, a,
                    groupby='grp', n_genes=n_genes, **kw)
    r = a.uns['rank_velocity_genes']
    out = {'names': _rk_rec(r['names']), 'scores': _rk_rec(r['scores']),
           'raw': _np.array(raw).T.copy(),
           'velocity_score': _np.asarray(a.var['velocity_score'].values, dtype=float),
           'spearmans_score': _np.asarray(a.var['spearmans_score'].values, dtype=float)}
    if dyn:
        ll = _rk_spied(_rk_emc, 'rank_dynamical_genes', _scv.tl.rank_dynamical_genes, a,
                       groupby='grp', n_genes=n_genes)
        r = a.uns['rank_dynamical_genes']
        out['dyn_names'] = _rk_rec(r['names'])
        out['dyn_scores'] = _rk_rec(r['scores'])
        out['ll'] = ll[0].T.copy()
    return out

def _rk_f(m):
    return _np.asarray(m.toarray() if _sp.issparse(m) else m, dtype=float).T.copy()

def rk_golden(path, basal=False):
    a = _ad.read_h5ad(path)
    if basal:
        a.uns['recover_dynamics']['fit_basal_transcription'] = True
        ok = ~_np.isnan(a.var['fit_alpha'].values)
        a.var.loc[ok, 'fit_u0'] = 0.02 * _np.asarray(a.var['fit_scaling'].values[ok])
        a.var.loc[ok, 'fit_s0'] = 0.01
    return a

def rk_golden_inputs(path, basal=False):
    a = rk_golden(path, basal)
    fit = [k for k in a.var.columns if k.startswith('fit_')]
    return {'V': _rk_f(a.layers['velocity']), 'Ms': _rk_f(a.layers['Ms']), 'Mu': _rk_f(a.layers['Mu']),
            'U': _rk_f(a.layers['unspliced']), 'vg': [bool(x) for x in a.var['velocity_genes']],
            'var': {k: _np.asarray(a.var[k].values, dtype=float) for k in fit},
            'layers': {k: _rk_f(a.layers[k]) for k in ['fit_t', 'fit_tau', 'fit_tau_']},
            'conn': _rk_f(a.obsp['connectivities']), 'clusters': list(a.obs['clusters'].astype(str)),
            'levels': list(a.obs['clusters'].cat.categories),
            'genes': list(a.var_names), 'cells': list(a.obs_names)}

def rk_golden_upstream(path, groups, levels, basal=False, **kw):
    return rk_run(rk_golden(path, basal), groups, levels, **kw)

# our layers and fit in an AnnData, as recover_dynamics()/velocity() would have left it
def rk_adata(Ms, Mu, U, V, vg, var, layers, conn, genes, cells, uns):
    a = _ad.AnnData(X=_np.asarray(Ms, dtype=_np.float32).T.copy())
    a.var_names = list(genes); a.obs_names = list(cells)
    a.layers['Ms'] = _np.asarray(Ms, dtype=_np.float32).T.copy()
    a.layers['Mu'] = _np.asarray(Mu, dtype=_np.float32).T.copy()
    a.layers['unspliced'] = _sp.csr_matrix(_np.asarray(U, dtype=_np.float32).T)
    a.layers['velocity'] = _np.asarray(V, dtype=float).T.copy()
    for k, v in layers.items():
        a.layers[k] = _np.asarray(v, dtype=float).T.copy()
    for k, v in var.items():
        a.var[k] = _np.asarray(v, dtype=float)
    a.var['velocity_genes'] = _np.asarray(vg, dtype=bool)
    a.obsp['connectivities'] = _sp.csr_matrix(_np.asarray(conn))
    a.obsp['distances'] = _sp.csr_matrix(_np.asarray(conn))
    a.uns['neighbors'] = {'params': {'n_neighbors': 30, 'method': 'umap'},
                          'connectivities_key': 'connectivities', 'distances_key': 'distances'}
    a.uns['recover_dynamics'] = dict(uns)
    return a

def rk_upstream(Ms, Mu, U, V, vg, var, layers, conn, genes, cells, uns, groups, levels, **kw):
    return rk_run(rk_adata(Ms, Mu, U, V, vg, var, layers, conn, genes, cells, uns),
                  groups, levels, **kw)
"

rk_py <- function() peers_module(rk_py_code, "rk_upstream")

rk_df <- function(d) {
  out <- as.data.frame(lapply(d, unlist), stringsAsFactors = FALSE, optional = TRUE)
  names(out) <- names(d)
  out
}

rk_golden_cache <- new.env()

rk_golden <- function(n) {
  key <- as.character(n)
  if (!is.null(rk_golden_cache[[key]])) return(rk_golden_cache[[key]])
  py <- rk_py()
  path <- shared_file("velocity", sprintf("cellrank_golden_adata_%d.h5ad", n))
  d <- py$rk_golden_inputs(path)
  genes <- unlist(d$genes)
  cells <- unlist(d$cells)
  dn <- list(genes, cells)
  lay <- lapply(d$layers, function(m) structure(m, dimnames = dn))
  var <- as.data.frame(lapply(d$var, as.vector), row.names = genes)
  fit <- structure(list(var = var, layers = lay,
                        uns = list(recover_dynamics = list(fit_connected_states = TRUE,
                                                           use_raw = FALSE)),
                        connectivities = Matrix::Matrix(d$conn, sparse = TRUE)),
                   class = "scnative_dynamics")
  g <- list(path = path, genes = genes, cells = cells, fit = fit,
            V = structure(d$V, dimnames = dn), Ms = structure(d$Ms, dimnames = dn),
            Mu = structure(d$Mu, dimnames = dn), U = structure(d$U, dimnames = dn),
            vg = unlist(d$vg), clusters = unlist(d$clusters), levels = unlist(d$levels))
  assign(key, g, envir = rk_golden_cache)
  g
}

# Our lists against upstream's: the unrounded scores within tol (relative to max(1, |x|)),
# the rounded float32 ones equal, the same names wherever the score is not tied (and where
# it is, upstream's gene has the same score as ours).
rk_expect_ranking <- function(names, scores, all, up_names, up_scores, up_all, tol = 1e-12) {
  expect_identical(dim(all), dim(up_all))
  all0 <- scnative:::np_nan_to_num(all)
  err <- max(abs(all0 - up_all) / pmax(1, abs(up_all)))
  expect_lt(err, tol)
  up_names <- rk_df(up_names)
  up_scores <- rk_df(up_scores)
  expect_identical(names(names), names(up_names))
  expect_identical(dim(names), dim(up_names))
  expect_identical(scores, up_scores)
  n_tied <- 0L
  for (k in seq_along(names)) {
    s <- unname(all0[match(names[[k]], rownames(all)), k])
    tied <- vapply(s, function(v) sum(all0[, k] == v) > 1L, logical(1))
    n_tied <- n_tied + sum(tied)
    expect_identical(names[[k]][!tied], up_names[[k]][!tied])
    expect_identical(unname(all0[match(up_names[[k]], rownames(all)), k]), s)
  }
  if (nzchar(Sys.getenv("SCNATIVE_RANK_REPORT"))) message(sprintf("max rel err %.3g, tied %d", err, n_tied))
  invisible(list(err = err, n_tied = n_tied))
}

rk_expect_velocity <- function(r, up, tol = 1e-12) {
  a <- rk_expect_ranking(r$names, r$scores, r$t_scores, up$names, up$scores, up$raw, tol)
  expect_identical(unname(r$velocity_score), as.vector(up$velocity_score))
  expect_identical(unname(r$spearmans_score), as.vector(up$spearmans_score))
  a
}

rk_expect_dynamical <- function(d, up, tol = 1e-12) {
  rk_expect_ranking(d$names, d$scores, d$likelihood, up$dyn_names, up$dyn_scores, up$ll, tol)
}

# ------------------------------------------------------------------ golden files

test_that("rank_velocity_genes() and rank_dynamical_genes() reproduce upstream on the CellRank golden files", {
  py <- rk_py()
  for (n in c(50, 100)) {
    g <- rk_golden(n)
    grp <- factor(g$clusters, levels = g$levels)
    up <- py$rk_golden_upstream(g$path, g$clusters, g$levels)
    r <- rank_velocity_genes(g$V, grp, Ms = g$Ms, Mu = g$Mu, unspliced = g$U,
                             fit_likelihood = g$fit, velocity_genes = g$vg)
    a <- rk_expect_velocity(r, up)
    expect_identical(r$names, rk_df(up$names))
    d <- rank_dynamical_genes(g$fit, g$Ms, g$Mu, grp)
    b <- rk_expect_dynamical(d, up)
    expect_true(any(d$likelihood > 0.1, na.rm = TRUE))
    # the character labels give the same groups (sorted in code-point order, as pandas)
    expect_identical(rank_velocity_genes(g$V, g$clusters, Ms = g$Ms, Mu = g$Mu, unspliced = g$U,
                                         fit_likelihood = g$fit, velocity_genes = g$vg), r)
    expect_identical(rank_dynamical_genes(g$fit, g$Ms, g$Mu, g$clusters), d)
  }
})

test_that("rank_*_genes(): thresholds, n_genes, NA groups and basal transcription match upstream", {
  py <- rk_py()
  g <- rk_golden(100)
  grp <- g$clusters
  grp[c(3, 40, 77)] <- NA # in no group, but in every rest
  up <- py$rk_golden_upstream(g$path, as.list(grp), g$levels, n_genes = 7L, min_corr = 0.3,
                              min_counts = 3, min_likelihood = 0.05)
  r <- rank_velocity_genes(g$V, grp, Ms = g$Ms, Mu = g$Mu, n_genes = 7, min_corr = 0.3,
                           min_counts = 3, min_likelihood = 0.05, unspliced = g$U,
                           fit_likelihood = g$fit$var$fit_likelihood, velocity_genes = g$vg)
  rk_expect_velocity(r, up)
  expect_identical(dim(r$names), c(7L, 12L))
  d <- rank_dynamical_genes(g$fit, g$Ms, g$Mu, factor(grp, levels = g$levels), n_genes = 7)
  rk_expect_dynamical(d, up)
  # more genes than pass: every gene used is listed
  g50 <- rk_golden(50)
  up <- py$rk_golden_upstream(g50$path, g50$clusters, g50$levels, n_genes = 500L, dyn = FALSE)
  r <- rank_velocity_genes(g50$V, g50$clusters, Ms = g50$Ms, Mu = g50$Mu, n_genes = 500,
                           unspliced = g50$U, fit_likelihood = g50$fit, velocity_genes = g50$vg)
  rk_expect_velocity(r, up)
  expect_identical(nrow(r$names), nrow(r$t_scores))
  # basal transcription: u0, s0 subtracted; u in float64
  up <- py$rk_golden_upstream(g50$path, g50$clusters, g50$levels, basal = TRUE)
  fit <- g50$fit
  ok <- !is.na(fit$var$fit_alpha)
  fit$var$fit_u0[ok] <- 0.02 * fit$var$fit_scaling[ok]
  fit$var$fit_s0[ok] <- 0.01
  fit$uns$recover_dynamics$fit_basal_transcription <- TRUE
  d <- rank_dynamical_genes(fit, g50$Ms, g50$Mu, g50$clusters)
  rk_expect_dynamical(d, up)
  expect_false(identical(d$likelihood, rank_dynamical_genes(g50$fit, g50$Ms, g50$Mu,
                                                            g50$clusters)$likelihood))
})

# ------------------------------------------------------------------ bundled pancreas

test_that("rank_*_genes() on our pancreas pipeline (739 cells) match upstream fed the same layers", {
  py <- rk_py()
  x <- readRDS(system.file("extdata", "pancreas_velocity.rds", package = "scnative"))
  m <- moments(x$spliced, x$unspliced)
  fit <- recover_dynamics(m$Ms, m$Mu, connectivities = m$connectivities, progress = FALSE)
  v <- velocity(fit, m$Ms, m$Mu)
  U <- as.matrix(x$unspliced)
  up <- py$rk_upstream(m$Ms, m$Mu, U, v$velocity, v$var$velocity_genes, as.list(fit$var),
                       fit$layers, as.matrix(m$connectivities), rownames(m$Ms), colnames(m$Ms),
                       fit$uns$recover_dynamics, as.character(x$clusters), levels(x$clusters),
                       n_genes = 20L)
  r <- rank_velocity_genes(v, x$clusters, Ms = m$Ms, Mu = m$Mu, n_genes = 20,
                           unspliced = x$unspliced, fit_likelihood = fit)
  rk_expect_velocity(r, up)
  expect_identical(names(r$names), levels(x$clusters))
  d <- rank_dynamical_genes(fit, m$Ms, m$Mu, x$clusters, n_genes = 20)
  rk_expect_dynamical(d, up)
  # a given spearmans_score is used as is
  r2 <- rank_velocity_genes(v, x$clusters, n_genes = 20, unspliced = x$unspliced,
                            fit_likelihood = fit, spearmans_score = r$spearmans_score)
  expect_identical(r2, r)
})

# ------------------------------------------------------------------ independent check

test_that("rank_velocity_genes(): the t-test, the filters and velocity_score by hand", {
  set.seed(11)
  G <- 30L
  n <- 60L
  V <- matrix(stats::rnorm(G * n), G, n, dimnames = list(paste0("g", seq_len(G)), NULL))
  grp <- rep(c("b", "a", "c"), c(15, 25, 20))
  V[1:5, grp == "a"] <- V[1:5, grp == "a"] + 2
  V[6, ] <- NA
  V[7, 1] <- NaN
  ss <- stats::runif(G, 0.2, 1)
  ss[8] <- 0.05
  ss[9] <- NaN
  vg <- rep(TRUE, G)
  vg[10] <- FALSE
  r <- rank_velocity_genes(V, grp, spearmans_score = ss, velocity_genes = vg, n_genes = 4)
  used <- setdiff(seq_len(G), 6:10)
  expect_identical(rownames(r$t_scores), rownames(V)[used])
  expect_identical(names(r$names), c("a", "b", "c"))
  tt <- function(k) {
    x <- V[used, grp == k, drop = FALSE]
    y <- V[used, grp != k, drop = FALSE]
    (rowMeans(x) - rowMeans(y)) / sqrt((apply(x, 1, var) + apply(y, 1, var)) / ncol(x))
  }
  ref <- sapply(c("a", "b", "c"), tt)
  expect_equal(unname(r$t_scores), unname(ref), tolerance = 1e-12)
  for (k in c("a", "b", "c")) {
    o <- order(-ref[, k])[1:4]
    expect_identical(r$names[[k]], rownames(V)[used][o])
    expect_identical(r$scores[[k]], scnative:::as_f32(round(ref[o, k] * 100) / 100))
  }
  expect_true(all(r$names$a %in% rownames(V)[1:5]))
  # velocity_score: first appearance by rank, then group; truncated toward 0
  flat <- as.vector(t(as.matrix(r$names)))
  sc <- as.vector(t(sapply(c("a", "b", "c"), function(k) ref[match(r$names[[k]], rownames(ref)), k])))
  vs <- setNames(numeric(G), rownames(V))
  for (i in rev(seq_along(flat))) vs[flat[i]] <- trunc(sc[i])
  expect_identical(r$velocity_score, vs)
  expect_true(any(vs < 0) || any(vs > 0))
  expect_identical(r$spearmans_score, setNames(ss, rownames(V)))
  # Spearman of Ms and Mu per gene, clipped at 0; constant genes NaN
  Ms <- matrix(stats::rpois(G * n, 3), G, n)
  Mu <- matrix(stats::rpois(G * n, 2), G, n)
  Mu[2, ] <- Ms[2, ] * 2 + 1
  Mu[3, ] <- -Ms[3, ] + 20
  Ms[4, ] <- 1
  s <- rank_velocity_genes(V, grp, Ms = Ms, Mu = Mu)$spearmans_score
  ref <- pmax(sapply(seq_len(G), function(i) suppressWarnings(
    stats::cor(Ms[i, ], Mu[i, ], method = "spearman"))), 0)
  expect_equal(unname(s[-4]), ref[-4], tolerance = 1e-14)
  expect_identical(unname(s[2:4]), c(1, 0, NaN))
})

# ------------------------------------------------------------------ bad input

test_that("rank_velocity_genes() and rank_dynamical_genes() reject bad input clearly", {
  set.seed(2)
  V <- matrix(stats::rnorm(40), 4, 10, dimnames = list(letters[1:4], NULL))
  grp <- rep(c("x", "y"), 5)
  ss <- rep(0.5, 4)
  expect_error(rank_velocity_genes(V, spearmans_score = ss), "'groupby' is required")
  expect_error(rank_velocity_genes(V, NULL, spearmans_score = ss), "louvain")
  expect_error(rank_velocity_genes(V, grp[-1], spearmans_score = ss), "one value per cell \\(10\\)")
  expect_error(rank_velocity_genes(V, rep("x", 10), spearmans_score = ss), "at least 2 groups")
  expect_error(rank_velocity_genes(V, as.list(grp), spearmans_score = ss), "'groupby' must be")
  expect_error(rank_velocity_genes(V, grp), "'Ms' and 'Mu' are needed")
  expect_error(rank_velocity_genes(V, grp, Ms = V[1:3, ], Mu = V), "'Ms' must have the dimensions")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = 1:3), "'spearmans_score' must be")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = ss, n_genes = 0), "'n_genes'")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = ss, n_genes = 2.5), "'n_genes'")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = ss, min_counts = 3),
               "'min_counts' filters on 'unspliced'")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = ss, min_likelihood = 0.1),
               "'min_likelihood' filters on 'fit_likelihood'")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = ss, min_corr = "a"), "'min_corr'")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = ss, velocity_genes = c(1, 0, 1, 1)),
               "'velocity_genes' must be a logical")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = ss, unspliced = V[, 1:5]),
               "'unspliced' must have the dimensions")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = rep(0, 4)), "no gene of 'x' passes")
  expect_error(rank_velocity_genes("a", grp), "'x' must be a numeric")
  expect_error(rank_velocity_genes(V, grp, spearmans_score = ss, foo = 1), "unused argument")
  V2 <- V
  V2[1, 1] <- Inf
  expect_error(rank_velocity_genes(V2, grp, spearmans_score = ss), "infinite velocities")

  sim <- simulate_velocity(n_obs = 60, n_vars = 3, random_seed = 1)
  fit <- recover_dynamics(sim$spliced, sim$unspliced, var_names = "all", threads = 1,
                          progress = FALSE)
  grp <- rep(c("x", "y", "z"), 20)
  expect_error(rank_dynamical_genes(fit, sim$spliced, sim$unspliced), "'groupby' is required")
  expect_error(rank_dynamical_genes(fit, groupby = grp), "'Ms' and 'Mu'")
  expect_error(rank_dynamical_genes(fit, sim$spliced[1:2, ], sim$unspliced[1:2, ], grp),
               "the same dimensions|genes but the fit")
  expect_error(rank_dynamical_genes(fit, sim$spliced, sim$unspliced, grp[1:10]),
               "one value per cell")
  expect_error(rank_dynamical_genes(fit, sim$spliced, sim$unspliced, grp, n_genes = -1),
               "'n_genes'")
  expect_error(rank_dynamical_genes(fit, sim$spliced, sim$unspliced, grp, bar = 2),
               "unused argument")
  bad <- fit
  bad$var$fit_alpha[] <- NA
  expect_error(rank_dynamical_genes(bad, sim$spliced, sim$unspliced, grp), "no fitted genes")
  d <- rank_dynamical_genes(fit, sim$spliced, sim$unspliced, grp, n_genes = 10)
  expect_identical(dim(d$names), c(3L, 3L))
  expect_identical(dim(d$likelihood), c(3L, 3L))
  expect_true(all(d$scores >= 0))
  expect_error(rank_velocity_genes(velocity(fit, sim$spliced, sim$unspliced), grp,
                                   spearmans_score = rep(0.5, 3), fit_likelihood = 1:2),
               "'fit_likelihood' must be")
})
