# latent_time_heatmap_data() / plot_latent_time_heatmap(): the matrix against what live
# scv.pl.heatmap hands to seaborn (peers venv, same run: the ClusterGrid's data before and
# after standard_scale, its gene order and column colours) on the CellRank golden data and on a
# tutorial-sized synthetic set; numpy's convolution against a loop; bad input; the plot.

hm_py_code <- "
import sys as _sys, types as _types, numpy as _np, pandas as _pd, anndata as _ad
import scvelo as _scv, warnings as _w, matplotlib as _mpl
_mpl.use('Agg')
_w.filterwarnings('ignore')
_scv.settings.verbosity = 0

def hm_golden(path):
    a = _ad.read_h5ad(path)
    return {'Ms': _np.asarray(a.layers['Ms'], dtype=float).T.copy(), 'genes': list(a.var_names),
            'lt': _np.asarray(a.obs['latent_time'].values, dtype=float),
            'lik': _np.asarray(a.var['fit_likelihood'].values, dtype=float),
            'clusters': list(a.obs['clusters'].astype(str)),
            'levels': list(a.obs['clusters'].cat.categories),
            'colors': list(a.uns['clusters_colors'])}

def hm_top(lik, genes, n):
    # the tutorial's idiom: adata.var['fit_likelihood'].sort_values(ascending=False).index[:n]
    s = _pd.Series(_np.asarray(lik, dtype=float), index=list(genes))
    return list(s.sort_values(ascending=False).index[:int(n)])

# scv.pl.heatmap on an AnnData of float64 Ms (genes x cells from R); stable=True gives the
# module a numpy whose argsort is stable (upstream's code path with ties kept in order)
def hm_upstream(Ms, genes, lt, var_names, n_convolve, stable=False, clusters=None,
                levels=None, colors=None):
    import matplotlib.pyplot as plt
    a = _ad.AnnData(X=_np.asarray(Ms, dtype=float).T.copy())
    a.var_names = list(genes)
    a.layers['Ms'] = a.X.copy()
    a.obs['latent_time'] = _np.asarray(lt, dtype=float)
    col = None
    if clusters is not None:
        a.obs['clusters'] = _pd.Categorical(list(clusters), categories=list(levels))
        a.uns['clusters_colors'] = _np.asarray(list(colors))
        col = 'clusters'
    mod = _sys.modules['scvelo.plotting.heatmap']
    if stable:
        shim = _types.SimpleNamespace(**{k: getattr(_np, k) for k in dir(_np) if not k.startswith('__')})
        shim.argsort = lambda x, **kw: _np.argsort(x, kind='stable', **kw)
        mod.np = shim
    try:
        cm = _scv.pl.heatmap(a, var_names=list(var_names), sortby='latent_time', col_color=col,
                             n_convolve=None if n_convolve is None else int(n_convolve), show=False)
    finally:
        mod.np = _np
        plt.close('all')
    out = {'m': _np.asarray(cm.data2d.values, dtype=float), 'genes': list(cm.data2d.index),
           'peak': _np.argmax(cm.data.values, axis=1) + 1}
    if col is not None:
        out['cols'] = _np.asarray(cm.col_colors[0], dtype=float)
    return out
"

hm_py <- function() peers_module(hm_py_code, "hm_upstream")

hm_golden <- local({
  cache <- NULL
  function() {
    if (is.null(cache)) {
      d <- hm_py()$hm_golden(shared_file("velocity", "cellrank_golden_adata_100.h5ad"))
      genes <- unlist(d$genes)
      Ms <- d$Ms
      dimnames(Ms) <- list(genes, NULL)
      cache <<- list(Ms = Ms, genes = genes, lt = as.vector(d$lt),
                     lik = stats::setNames(as.vector(d$lik), genes),
                     clusters = unlist(d$clusters), levels = unlist(d$levels),
                     colors = unlist(d$colors))
    }
    cache
  }
})

# Same matrix as upstream's, gene by gene, within tol; the order compared by the caller.
expect_same_rows <- function(H, up, tol = 1e-10) {
  um <- up$m
  rownames(um) <- unlist(up$genes)
  expect_setequal(rownames(H), rownames(um))
  expect_identical(dim(unclass(H)), dim(um))
  expect_lt(max(abs(unclass(H) - um[rownames(H), , drop = FALSE])), tol)
}

# Gene order equal up to the order inside groups of genes peaking at the same cell.
expect_same_order_up_to_ties <- function(H, up) {
  ug <- unlist(up$genes)
  pk <- attr(H, "peak")
  expect_identical(unname(pk), as.integer(up$peak))
  expect_identical(lapply(split(rownames(H), pk), sort),
                   lapply(split(ug, as.integer(up$peak)), sort))
}

test_that("numpy's convolve(mode = 'same') moving average, against a loop", {
  np_conv_loop <- function(a, width) {
    n <- length(a)
    vapply(seq_len(n) - 1L, function(k) {
      idx <- k - width %/% 2L + seq_len(width) - 1L
      sum(a[idx[idx >= 0 & idx < n] + 1L]) / width
    }, 0)
  }
  set.seed(1)
  X <- matrix(stats::rexp(57 * 3), 57, 3)
  for (M in c(1L, 2L, 3L, 4L, 10L, 56L, 57L)) {
    Y <- scnative:::np_convolve_same(X, M)
    ref <- apply(X, 2L, np_conv_loop, width = M)
    expect_equal(Y, ref, tolerance = 1e-14, label = paste("M =", M))
  }
  # numpy's output for 1..10 and a window of 4 (np.convolve(np.arange(1, 11), np.ones(4)))
  expect_equal(as.vector(scnative:::np_convolve_same(matrix(1:10 + 0), 4L)) * 4,
               c(3, 6, 10, 14, 18, 22, 26, 30, 34, 27))
})

test_that("matches scv.pl.heatmap on the CellRank golden data (values, gene order, colours)", {
  d <- hm_golden()
  py <- hm_py()
  # the tutorial's top genes by fit_likelihood (fewer fitted genes than asked: only those)
  H0 <- latent_time_heatmap_data(d$lik, d$Ms, d$lt, n_genes = 100, n_convolve = 30)
  expect_setequal(rownames(H0), unlist(py$hm_top(d$lik, d$genes, 100)))
  top <- unlist(py$hm_top(d$lik, d$genes, 300))
  Hall <- latent_time_heatmap_data(d$lik, d$Ms, d$lt, n_convolve = 30)
  expect_setequal(rownames(Hall), top[!is.na(d$lik[top])])
  genes <- top[!is.na(d$lik[top])]
  expect_identical(length(genes), 122L)

  for (M in list(30L, 7L, 4L, NULL, 101L)) {
    lab <- paste("n_convolve =", deparse(M))
    if (identical(M, 101L)) {
      expect_warning(H <- latent_time_heatmap_data(NULL, d$Ms, d$lt, genes = genes,
                                                   n_convolve = M),
                     "exceeds the number of cells")
    } else {
      H <- latent_time_heatmap_data(NULL, d$Ms, d$lt, genes = genes, n_convolve = M)
    }
    expect_identical(attr(H, "cells"), order(d$lt))
    up_st <- py$hm_upstream(d$Ms, d$genes, d$lt, genes, M, stable = TRUE)
    expect_same_rows(H, up_st)
    expect_identical(rownames(H), unlist(up_st$genes), label = lab)
    up <- py$hm_upstream(d$Ms, d$genes, d$lt, genes, M)
    expect_same_rows(H, up)
    expect_same_order_up_to_ties(H, up)
  }

  # the tutorial's window (100 = all the cells here): gene 'Impact' has two cells whose window
  # sums are equal in exact arithmetic (a zero at the window's edge), and numpy's BLAS sum
  # rounds them apart; every peak agrees up to such a rounding tie
  H <- latent_time_heatmap_data(NULL, d$Ms, d$lt, genes = genes, n_convolve = 100)
  up_st <- py$hm_upstream(d$Ms, d$genes, d$lt, genes, 100L, stable = TRUE)
  expect_same_rows(H, up_st)
  S <- latent_time_heatmap_data(NULL, d$Ms, d$lt, genes = genes, n_convolve = 100,
                                sort_genes = FALSE, scale = FALSE)
  up_peak <- stats::setNames(as.integer(up_st$peak), unlist(up_st$genes))[rownames(S)]
  at_up <- S[cbind(seq_len(nrow(S)), up_peak)]
  expect_lt(max(abs(at_up - apply(S, 1L, max)) / apply(S, 1L, max)), 1e-14)
  expect_lte(sum(up_peak != attr(S, "peak")), 2)

  # the colour bar: the clusters' colours along latent time, as upstream's col_colors
  pal <- stats::setNames(d$colors, d$levels)
  up <- py$hm_upstream(d$Ms, d$genes, d$lt, genes, 30L, clusters = d$clusters,
                       levels = d$levels, colors = d$colors)
  p <- plot_latent_time_heatmap(NULL, d$Ms, d$lt, genes = genes, n_convolve = 30,
                                color = d$clusters, palette = pal)
  lay <- Filter(function(l) inherits(l$geom, "GeomRect"), p$layers)[[1L]]
  bar <- rep(lay$aes_params$fill, lay$data$xmax - lay$data$xmin)
  expect_identical(length(bar), ncol(d$Ms))
  expect_lt(max(abs(t(grDevices::col2rgb(bar)) / 255 - up$cols)), 1e-12)
})

test_that("matches scv.pl.heatmap at the tutorial's size (300 genes, n_convolve = 100)", {
  py <- hm_py()
  set.seed(42)
  n <- 700
  G <- 320
  lt <- stats::runif(n)
  peak <- stats::runif(G, -0.2, 1.2)
  width <- stats::runif(G, 0.05, 0.4)
  Ms <- exp(-0.5 * outer(peak, lt, "-")^2 / width^2) * stats::rgamma(G, 2, 1) +
    matrix(stats::rexp(G * n, 20), G, n)
  rownames(Ms) <- sprintf("g%03d", seq_len(G))
  lik <- stats::setNames(stats::runif(G), rownames(Ms))
  lik[c(5, 9)] <- NA
  H <- latent_time_heatmap_data(lik, Ms, lt, n_genes = 300, n_convolve = 100)
  expect_identical(dim(unclass(H)), c(300L, as.integer(n)))
  top <- unlist(py$hm_top(lik, rownames(Ms), 300))
  expect_setequal(rownames(H), top[!is.na(lik[top])][1:300])
  genes <- names(sort(lik, decreasing = TRUE))[1:300]
  up_st <- py$hm_upstream(Ms, rownames(Ms), lt, genes, 100L, stable = TRUE)
  expect_same_rows(H, up_st)
  expect_identical(rownames(H), unlist(up_st$genes))
  up <- py$hm_upstream(Ms, rownames(Ms), lt, genes, 100L)
  expect_same_rows(H, up)
  expect_same_order_up_to_ties(H, up)
  expect_true(all(abs(apply(H, 1L, range) - c(0, 1)) < 1e-15))
  expect_true(all(diff(attr(H, "peak")) >= 0))
})

test_that("cells without a finite latent time are left out; a fit object ranks the genes", {
  sim <- simulate_velocity(n_obs = 120, n_vars = 6, random_seed = 2)
  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
  fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", progress = FALSE)
  lt <- sim$t
  lt[c(3, 50)] <- c(NA, Inf)
  H <- latent_time_heatmap_data(fit, m$Ms, lt, n_genes = 4, n_convolve = 9)
  expect_identical(attr(H, "cells"), setdiff(order(lt), c(3L, 50L)))
  expect_identical(colnames(H), colnames(m$Ms)[attr(H, "cells")])
  lik <- fit$var$fit_likelihood
  expect_setequal(rownames(H), rownames(m$Ms)[order(-lik)][1:4])
  H2 <- latent_time_heatmap_data(NULL, m$Ms[, -c(3, 50)], lt[-c(3, 50)],
                                 genes = rownames(H), n_convolve = 9)
  expect_identical(unclass(H)[, ], unclass(H2)[, ])
  # unnamed likelihoods line up by row; row numbers work as genes
  H3 <- latent_time_heatmap_data(unname(lik), unname(m$Ms), lt, n_genes = 4, n_convolve = 9)
  expect_equal(unname(unclass(H3)[, ]), unname(unclass(H)[, ]))
  H4 <- latent_time_heatmap_data(NULL, m$Ms, lt, genes = match(rownames(H), rownames(m$Ms)),
                                 n_convolve = 9)
  expect_identical(unclass(H4)[, ], unclass(H)[, ])
  # sparse Ms
  H5 <- latent_time_heatmap_data(fit, methods::as(m$Ms, "CsparseMatrix"), lt, n_genes = 4,
                                 n_convolve = 9)
  expect_identical(unclass(H5)[, ], unclass(H)[, ])
})

test_that("bad input gives clear errors naming the argument", {
  sim <- simulate_velocity(n_obs = 60, n_vars = 4, random_seed = 1)
  Ms <- sim$spliced
  lt <- sim$t
  lik <- stats::setNames(c(0.3, 0.2, NA, 0.5), rownames(Ms))
  f <- latent_time_heatmap_data
  expect_error(f(), "'x' is missing")
  expect_error(f(lik), "'Ms' .*is missing")
  expect_error(f(lik, Ms), "'latent_time' is missing")
  expect_error(f("a", Ms, lt), "'x' must be a scnative_dynamics fit")
  expect_error(f(lik[1:3], unname(Ms), lt), "'x' has 3 gene")
  expect_error(f(stats::setNames(lik, letters[1:4]), Ms, lt), "'x': none of its genes")
  expect_error(f(NULL, Ms, lt), "'genes' is NULL, so 'x'")
  expect_error(f(lik * NA, Ms, lt), "no gene with a finite")
  expect_error(f(lik, list(1), lt), "'Ms' must be a numeric")
  expect_error(f(lik, Ms, lt[-1]), "'latent_time' must have one value per cell")
  expect_error(f(lik, Ms, as.character(lt)), "'latent_time' must be a numeric")
  expect_error(f(lik, Ms, rep(NA_real_, 60)), "'latent_time' has no finite")
  expect_error(f(NULL, Ms, lt, genes = "nope"), "'genes': unknown gene")
  expect_error(f(NULL, Ms, lt, genes = c(1, 1)), "'genes' must not repeat")
  expect_error(f(NULL, Ms, lt, genes = 0), "'genes' given as row numbers")
  expect_error(f(NULL, unname(Ms), lt, genes = "0"), "'Ms' has no row names")
  expect_error(f(NULL, Ms, lt, genes = TRUE), "'genes' must be NULL")
  expect_error(f(lik, Ms, lt, n_genes = 0), "'n_genes' must be at least 1")
  expect_error(f(lik, Ms, lt, n_convolve = 2.5), "'n_convolve' must be a whole number")
  expect_error(f(lik, Ms, lt, n_convolve = 0), "'n_convolve' must be at least 1")
  expect_error(f(lik, Ms, lt, sort_genes = NA), "'sort_genes' must be TRUE or FALSE")
  bad <- Ms
  bad[2, 5] <- NA
  expect_error(f(lik, bad, lt, n_convolve = 5), "'Ms' contains NA")
  skip_if_not_installed("ggplot2")
  p <- plot_latent_time_heatmap
  expect_error(p(lik, Ms, lt, color = 1:3), "'color' must have one value per cell")
  expect_error(p(lik, Ms, lt, n_convolve = 5, color = factor(rep(c("a", "b"), 30)),
                 palette = c(a = "red")), "'palette' has no colour for b")
  expect_error(p(lik, Ms, lt, n_convolve = 5, color = rep("a", 60), palette = "notacolour"),
               "'palette' contains invalid colours")
  expect_error(p(lik, Ms, lt, color_map = "rainbow"), "'color_map' must be one of")
  expect_error(p(lik, Ms, lt, show_genes = "yes"), "'show_genes' must be TRUE or FALSE")
  expect_error(p(lik, Ms, lt, colour = 1), "unused argument: colour")
})

test_that("the plot holds the matrix and draws", {
  skip_if_not_installed("ggplot2")
  sim <- simulate_velocity(n_obs = 150, n_vars = 6, random_seed = 4)
  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
  fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", progress = FALSE)
  grp <- cut(sim$t, 3, labels = c("early", "mid", "late"))
  p <- plot_latent_time_heatmap(fit, m$Ms, sim$t, n_convolve = 20, color = grp)
  expect_s3_class(p, "ggplot")
  H <- latent_time_heatmap_data(fit, m$Ms, sim$t, n_convolve = 20)
  # gene rows counted from the bottom: the first gene of H is the top row
  expect_equal(p$data$value, as.vector(unclass(H)))
  expect_identical(p$data$gene[1:nrow(H)], nrow(H):1)
  b <- ggplot2::ggplot_build(p)
  expect_identical(b$plot$scales$get_scales("y")$get_labels(), rownames(H))
  f <- tempfile(fileext = ".png")
  on.exit(unlink(f))
  ggplot2::ggsave(f, p, width = 6, height = 3, dpi = 50)
  expect_gt(file.size(f), 1000)
  p2 <- plot_latent_time_heatmap(fit, m$Ms, sim$t, n_convolve = NULL, show_genes = FALSE)
  expect_length(ggplot2::ggplot_build(p2)$plot$scales$get_scales("y")$get_labels(), 0L)
})
