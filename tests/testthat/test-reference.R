# Reference signatures (cell2location's RegressionModel): gradient, log joint vs live Pyro,
# bad input, agreement with live upstream, objects, posterior naming, gene filter.

ns <- asNamespace("scnative")

ref_default_priors <- function() {
  ns$ref_priors(list(alpha = 9, beta = 3), list(alpha = 9, beta = 3), list(alpha = 1, beta = 100),
                list(mean_alpha = 1, mean_beta = 1), list(mean = 1, alpha = 200))
}

small_reference <- function(seed = 3, G = 12, n = 40) {
  set.seed(seed)
  x <- matrix(rpois(G * n, 3), G, n, dimnames = list(paste0("g", 1:G), paste0("c", 1:n)))
  x[sample(length(x), 150)] <- 0
  x[1, 1] <- 40 # a large count (digamma path)
  list(x = x, labels = factor(sample(c("A", "B", "C"), n, TRUE)),
       batch = factor(sample(c("b1", "b2"), n, TRUE)),
       covs = list(m = factor(sample(c("m1", "m2"), n, TRUE)),
                   d = factor(sample(c("d1", "d2", "d3"), n, TRUE))))
}

test_that("the gradient of log p matches finite differences (covariates, batches, minibatch)", {
  d <- small_reference()
  for (covs in list(NULL, d$covs)) {
    prep <- ns$ref_prepare(d$x, d$labels, d$batch, covs, NULL, ref_default_priors())
    P <- length(ns$ref_flatten(ns$ref_init_params(prep$settings, NULL), prep$settings, "loc"))
    set.seed(1)
    u <- rnorm(P, -0.5, 0.5)
    for (cells in list(NULL, c(3, 5, 9, 20, 33))) {
      r <- ns$ref_logjoint(prep, u, cells)
      h <- 1e-6
      num <- vapply(seq_len(P), function(i) {
        up <- u
        up[i] <- up[i] + h
        dn <- u
        dn[i] <- dn[i] - h
        (ns$ref_logjoint(prep, up, cells)$logp - ns$ref_logjoint(prep, dn, cells)$logp) / (2 * h)
      }, 0)
      expect_lt(max(abs(num - r$grad) / pmax(1, abs(num))), 1e-5)
    }
  }
})

test_that("the minibatch log joint is the prior plus the scaled likelihood of its cells", {
  d <- small_reference()
  prep <- ns$ref_prepare(d$x, d$labels, d$batch, d$covs, NULL, ref_default_priors())
  P <- length(ns$ref_flatten(ns$ref_init_params(prep$settings, NULL), prep$settings, "loc"))
  set.seed(2)
  u <- rnorm(P, -0.5, 0.5)
  # log p(all) = prior + sum over cells; log p(cells c) = prior + (n / |c|) sum over c
  single <- vapply(1:40, function(c) ns$ref_logjoint(prep, u, c)$logp, 0)
  full <- ns$ref_logjoint(prep, u)$logp
  # single_c = prior + 40 * l_c, so mean(single) = prior + sum(l) = full
  expect_equal(mean(single), full, tolerance = 1e-10)
  half <- ns$ref_logjoint(prep, u, 1:20)$logp
  expect_equal(half, mean(single[1:20]), tolerance = 1e-10)
})

test_that("the log joint equals Pyro's from the live RegressionModel", {
  use_peers()
  reticulate::py_run_string("
import numpy as np, pandas as pd, anndata, torch, pyro, logging, scipy.sparse as sp
logging.getLogger('lightning.pytorch').setLevel(logging.ERROR)
logging.getLogger('scvi').setLevel(logging.ERROR)
from cell2location.models import RegressionModel

def reg_pyro_logjoint(x, labels, batch, covs, z):
    obs = pd.DataFrame({'lab': pd.Categorical(labels), 'bat': pd.Categorical(batch)},
                       index=[f'c{i}' for i in range(len(labels))])
    keys = None
    if covs:
        keys = list(covs.keys())
        for k in keys:
            obs[k] = pd.Categorical(covs[k])
    ad = anndata.AnnData(X=sp.csr_matrix(np.asarray(x, dtype=np.float32)), obs=obs)
    RegressionModel.setup_anndata(ad, batch_key='bat', labels_key='lab',
                                  categorical_covariate_keys=keys)
    mod = RegressionModel(ad)
    dl = mod._make_data_loader(adata=ad, batch_size=ad.n_obs, shuffle=False)
    args, kwargs = mod.module._get_fn_args_from_batch(next(iter(dl)))
    cond = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in z.items()}
    tr = pyro.poutine.trace(pyro.poutine.condition(mod.module.model, data=cond)).get_trace(
        *args, **kwargs)
    sites = [n for n, s in tr.nodes.items()
             if s['type'] == 'sample' and n not in ('obs_plate', 'data_target')]
    return float(tr.log_prob_sum()), sites
")
  d <- small_reference()
  for (covs in list(NULL, d$covs)) {
    prep <- ns$ref_prepare(d$x, d$labels, d$batch, covs, NULL, ref_default_priors())
    st <- prep$settings
    P <- length(ns$ref_flatten(ns$ref_init_params(st, NULL), st, "loc"))
    set.seed(5)
    u <- rnorm(P, -0.5, 0.5)
    z <- lapply(ns$ref_unflatten(exp(u), st), function(m) matrix(unname(m), nrow(m), ncol(m)))
    r <- ns$ref_logjoint(prep, u)
    p <- reticulate::py$reg_pyro_logjoint(t(d$x), as.character(d$labels), as.character(d$batch),
                                          if (is.null(covs)) NULL else lapply(covs, as.character), z)
    expect_equal(unlist(p[[2]]), names(z)) # same sites, same order
    expect_lt(abs(r$logp - p[[1]]) / abs(p[[1]]), 2e-6) # Pyro runs in float32
  }
})

test_that("bad input gives clear errors and nothing is fitted", {
  d <- small_reference()
  x <- d$x
  expect_error(reference_signatures(x, d$labels[-1]), "'labels' must have one value per cell \\(40\\), not 39")
  lab <- d$labels
  lab[3] <- NA
  expect_error(reference_signatures(x, lab), "'labels' contains NA")
  lab1 <- factor(c("lonely", rep(c("A", "B"), length.out = 39)))
  expect_error(reference_signatures(x, lab1), "'lonely' has 1")
  xf <- x
  xf[2, 2] <- 1.5
  expect_error(reference_signatures(xf, d$labels), "'x' must hold integer counts")
  xn <- x
  xn[2, 2] <- -1
  expect_error(reference_signatures(xn, d$labels), "'x' contains negative values")
  expect_error(reference_signatures(x, d$labels, batch = d$batch[1:5]), "'batch' must have one value per cell")
  expect_error(reference_signatures(x, d$labels, covariates = list(m = d$covs$m[-1])),
               "'covariates\\$m' must have one value per cell")
  expect_error(reference_signatures(x, d$labels, max_epochs = 0), "'max_epochs' must be at least 1")
  expect_error(reference_signatures(x, d$labels, batch_size = 2.5), "'batch_size' must be a whole number")
  expect_error(reference_signatures(x, d$labels, lr = -1), "'lr' must be greater than 0")
  expect_error(reference_signatures(x, d$labels, gene_tech_prior = list(mean = 1)),
               "'gene_tech_prior' must be a list with elements 'mean', 'alpha'")
  expect_error(reference_signatures(x, d$labels, init = list()), "'init' must be NULL or a scnative_reference fit")
  expect_error(reference_signatures(x, d$labels, bogus = 1), "unknown argument\\(s\\): bogus")
  expect_error(signatures(list()), "'x' must be a scnative_reference fit")
  expect_error(train_more(list(), 5), "'fit' must be a scnative_c2l or scnative_reference fit")
  expect_error(filter_genes(x, cell_count_cutoff = -1, plot = FALSE), "'cell_count_cutoff' must be greater than 0")
  # a covariate with a single level is accepted, as upstream
  one <- list(m = factor(rep("only", ncol(x))))
  fit <- reference_signatures(x, d$labels, covariates = one, max_epochs = 3, seed = 1,
                              progress = FALSE)
  expect_equal(fit$settings$tech_levels, "m_only")
  expect_equal(dim(fit$params$detection_tech_gene_tg$loc), c(1L, nrow(x)))
})

test_that("fits are reproducible, independent of threads, and sparse equals dense input", {
  d <- small_reference()
  xs <- methods::as(d$x, "CsparseMatrix")
  a <- reference_signatures(d$x, d$labels, d$batch, d$covs, max_epochs = 20, batch_size = 16,
                            seed = 4, threads = 1, progress = FALSE)
  b <- reference_signatures(xs, d$labels, d$batch, d$covs, max_epochs = 20, batch_size = 16,
                            seed = 4, threads = 2, progress = FALSE)
  expect_identical(a$params, b$params)
  expect_identical(a$history, b$history)
  expect_equal(nrow(a$history), 20)
  expect_equal(a$steps, 20 * 3) # ceiling(40 / 16) minibatches per epoch
  c <- reference_signatures(xs, d$labels, d$batch, d$covs, max_epochs = 20, batch_size = 16,
                            seed = 5, threads = 1, progress = FALSE)
  expect_false(identical(a$params, c$params))
  # continuing: 10 + 10 epochs with train_more equals init = fit
  f1 <- reference_signatures(xs, d$labels, max_epochs = 10, seed = 9, progress = FALSE)
  f2 <- train_more(f1, 10, progress = FALSE)
  f3 <- reference_signatures(xs, d$labels, max_epochs = 10, seed = 9, init = f1, progress = FALSE)
  expect_equal(f2$history$epoch, 0:19)
  expect_identical(f2$params, f3$params)
  expect_equal(f2$steps, 20)
})

test_that("the default epochs follow upstream's heuristic", {
  expect_equal(ns$ref_default_epochs(510), 1000)
  expect_equal(ns$ref_default_epochs(20000), 1000)
  expect_equal(ns$ref_default_epochs(50000), 400)
  expect_equal(ns$ref_default_epochs(1e8), 1)
})

test_that("signatures agree with upstream's live RegressionModel on the hippocampus reference", {
  hip <- example_hippocampus()
  ref <- hip$reference
  up <- run_upstream_reference(ref$counts, ref$cell_types, max_epochs = 300, threads = 2)
  fit <- reference_signatures(ref$counts, ref$cell_types, max_epochs = 300, seed = 1,
                              progress = FALSE)
  sig <- signatures(fit, num_samples = 200, seed = 1)
  expect_equal(colnames(sig), colnames(up$means))
  expect_equal(rownames(sig), rownames(up$means))
  r <- vapply(colnames(sig), function(ct) stats::cor(sig[, ct], up$means[, ct]), 0)
  expect_gt(min(r), 0.99)
  # the loss is the same quantity (same scale) at the end of training
  expect_lt(abs(mean(utils::tail(fit$history$elbo_train, 20)) - mean(utils::tail(up$history, 20))) /
              abs(mean(utils::tail(up$history, 20))), 0.01)
})

test_that("posterior summaries carry upstream's names and feed cell2location()", {
  hip <- example_hippocampus()
  ref <- hip$reference
  fit <- reference_signatures(ref$counts, ref$cell_types, max_epochs = 30, seed = 1,
                              progress = FALSE)
  post <- export_posterior(fit, num_samples = 50, seed = 2)
  expect_s3_class(post, "scnative_reference_posterior")
  expect_setequal(setdiff(names(post), c("cell_types", "genes", "num_samples")),
                  c("means", "stds", "q05", "q95"))
  sig <- signatures(post, upstream_names = TRUE)
  expect_equal(colnames(sig), paste0("means_per_cluster_mu_fg_", levels(ref$cell_types)))
  expect_true(all(post$q05$per_cluster_mu_fg <= post$q95$per_cluster_mu_fg))
  q <- export_posterior(fit, use_quantiles = TRUE, quantiles = c(0.05, 0.5))
  expect_null(q$means)
  expect_equal(signatures(q, "q50"), t(exp(fit$params$per_cluster_mu_fg$loc)))
  expect_error(signatures(q, "means"), "'which' must be one of")
  # cell2location() takes the fit as signatures (its posterior means)
  vis <- hip$visium
  c1 <- suppressMessages(cell2location(vis$counts, fit, max_epochs = 5, seed = 3,
                                       progress = FALSE))
  expect_equal(c1$settings$cell_types, levels(ref$cell_types))
  expect_equal(length(c1$settings$genes),
               length(intersect(rownames(vis$counts), rownames(ref$counts))))
  p <- plot_history(fit)
  expect_s3_class(p, "ggplot")
})

test_that("Seurat and SingleCellExperiment methods equal the matrix fit", {
  skip_if_not_installed("SeuratObject")
  d <- reference_test_data()
  counts <- d$counts[1:60, ]
  meta <- data.frame(ct = d$labels, smp = d$batch, method = d$method, row.names = colnames(counts))
  so <- SeuratObject::CreateSeuratObject(counts, meta.data = meta)
  before <- so
  a <- reference_signatures(counts, d$labels, d$batch, list(method = d$method), max_epochs = 5,
                            seed = 1, progress = FALSE)
  b <- reference_signatures(so, "ct", batch = "smp", covariates = "method", max_epochs = 5,
                            seed = 1, progress = FALSE)
  expect_identical(a$params, b$params)
  expect_identical(so, before)
  expect_error(reference_signatures(so, "nope"), "'labels' = \"nope\" is not a cell metadata column")
  skip_if_not_installed("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = counts),
                                                    colData = S4Vectors::DataFrame(meta))
  c <- reference_signatures(sce, "ct", batch = "smp", covariates = "method", max_epochs = 5,
                            seed = 1, progress = FALSE)
  expect_identical(a$params, c$params)
  expect_equal(filter_genes(sce, plot = FALSE), filter_genes(counts, plot = FALSE))
})

test_that("filter_genes selects the genes upstream's filter_genes selects", {
  hip <- example_hippocampus()
  x <- hip$reference$counts
  sel <- filter_genes(x, cell_count_cutoff = 5, cell_percentage_cutoff2 = 0.03,
                      nonz_mean_cutoff = 1.12, plot = FALSE)
  st <- attr(sel, "stats")
  expect_equal(st$n_cells, as.vector(Matrix::rowSums(x > 0)))
  # independent calculation of the rule
  n <- Matrix::rowSums(x > 0)
  m <- Matrix::rowSums(x) / n
  expect_equal(as.vector(sel), rownames(x)[n > ncol(x) * 0.03 | (n > 5 & m > 1.12)])
  grDevices::pdf(NULL)
  sel2 <- filter_genes(x, plot = TRUE)
  grDevices::dev.off()
  expect_s3_class(attr(sel2, "plot"), "ggplot")
  use_peers()
  c2lf <- reticulate::import("cell2location.utils.filtering", convert = FALSE)
  plt <- reticulate::import("matplotlib.pyplot")
  ad <- reticulate::import("anndata", convert = FALSE)
  np <- reticulate::import("numpy", convert = FALSE)
  pd <- reticulate::import("pandas", convert = FALSE)
  adata <- ad$AnnData(X = np$asarray(t(as.matrix(x)), dtype = "float32"),
                      var = pd$DataFrame(index = pd$Index(rownames(x))))
  plt$switch_backend("Agg")
  for (args in list(list(5, 0.03, 1.12), list(15, 0.05, 1.12), list(2, 0.2, 3))) {
    up <- reticulate::py_to_r(c2lf$filter_genes(adata, cell_count_cutoff = args[[1]],
                                                cell_percentage_cutoff2 = args[[2]],
                                                nonz_mean_cutoff = args[[3]])$tolist())
    plt$close("all")
    ours <- filter_genes(x, args[[1]], args[[2]], args[[3]], plot = FALSE)
    expect_equal(as.vector(ours), unlist(up))
  }
})
