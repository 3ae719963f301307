# cell2location model core: log joint and gradients (vs finite differences, the spec's pure-Python
# reference and live Pyro), optimiser (vs torch), API, input checks, determinism.

c2l_ns <- function() asNamespace("scnative")

# A small random problem: genes x spots counts with zeros, small and large counts, 2 batches.
c2l_toy <- function(S = 7, G = 12, F = 3, seed = 3) {
  set.seed(seed)
  sig <- matrix(stats::rgamma(G * F, 1, 1), G, F,
                dimnames = list(paste0("g", seq_len(G)), paste0("ct", seq_len(F))))
  x <- matrix(sample(c(0, 0, 0, 1, 2, 3, 7, 40, 150), G * S, replace = TRUE), G, S,
              dimnames = list(rownames(sig), paste0("s", seq_len(S))))
  batch <- factor(sample(c("b1", "b2"), S, replace = TRUE), levels = c("b1", "b2"))
  batch[1:2] <- c("b2", "b1") # both present, spots not sorted by batch
  list(x = x, sig = sig, batch = batch)
}

c2l_prep <- function(d, N = 30, R = 4, min_genes = 1) {
  c2l_ns()$c2l_prepare(d$x, d$sig, d$batch, N, TRUE, 20, 7, 7, R, FALSE, 1,
                       list(mean = 1, mean_var_ratio = 1, alpha_mean = 3), 1,
                       list(alpha = 9, beta = 3), list(alpha = 9, beta = 3),
                       list(alpha = 1, beta = 100), list(mean_alpha = 10), 5, quiet = TRUE,
                       min_genes = min_genes)
}

test_that("the gradient of log p(x, z) matches central finite differences for every site", {
  ns <- c2l_ns()
  d <- c2l_toy()
  prep <- c2l_prep(d)
  st <- prep$settings
  tab <- ns$c2l_sites_of(st)
  set.seed(11)
  P <- sum(tab$nrow * tab$ncol)
  u <- ns$c2l_flatten(lapply(ns$c2l_init_params(st), `[[`, "loc"), st) + stats::runif(P, -0.5, 0.5)
  r <- ns$c2l_logjoint(prep, u)
  expect_true(is.finite(r$logp))
  expect_fd_by_site(function(v) ns$c2l_logjoint(prep, v)$logp, u, r$grad,
                    rep(tab$name, tab$nrow * tab$ncol), tab$name)
})

test_that("log p(x, z) and its gradient equal the spec's pure-Python reference", {
  use_peers()
  ns <- c2l_ns()
  spec <- shared_file("..", "spec", "cell2location_gradcheck.py")
  py <- reticulate::py_run_file(spec, convert = TRUE)
  S <- 3; G <- 4; F <- 2; R <- 2
  gfg <- matrix(unlist(py$gfg), F, G, byrow = TRUE)
  X <- matrix(unlist(py$X), S, G, byrow = TRUE)
  u <- unlist(py$u)
  d <- list(x = t(X), sig = t(gfg), batch = factor(c("a", "b", "b")))
  dimnames(d$x) <- list(paste0("g", 1:G), paste0("s", 1:S))
  dimnames(d$sig) <- list(paste0("g", 1:G), paste0("t", 1:F))
  prep <- c2l_prep(d, N = 30, R = R)
  prep$settings$detection_mean_e <- c(0.3, 0.3) # the reference's fixed detection mean
  tab <- ns$c2l_sites_of(prep$settings)
  # the reference stores each site row-major
  perm <- unlist(lapply(seq_len(nrow(tab)), function(j) {
    n <- tab$nrow[j] * tab$ncol[j]
    as.vector(matrix(seq_len(n), tab$nrow[j], tab$ncol[j], byrow = TRUE)) +
      sum((tab$nrow * tab$ncol)[seq_len(j - 1)])
  }))
  r <- ns$c2l_logjoint(prep, u[perm])
  expect_equal(r$logp, py$logjoint(u), tolerance = 1e-12)
  expect_equal(r$grad, unlist(py$analytic(u))[perm], tolerance = 1e-10)
})

test_that("log p(x, z) equals Pyro's log joint from the live cell2location model", {
  use_peers()
  ns <- c2l_ns()
  d <- c2l_toy(S = 9, G = 15, F = 3, seed = 5)
  prep <- c2l_prep(d, N = 30, R = 5)
  st <- prep$settings
  set.seed(2)
  P <- sum(ns$c2l_sites_of(st)$nrow * ns$c2l_sites_of(st)$ncol)
  u <- ns$c2l_flatten(lapply(ns$c2l_init_params(st), `[[`, "loc"), st) + stats::runif(P, -0.4, 0.4)
  ours <- ns$c2l_logjoint(prep, u)$logp
  z <- lapply(ns$c2l_unflatten(exp(u), st), function(m) unname(m))
  reticulate::py_run_string("
import numpy as np, pandas as pd, anndata, torch, pyro, logging
logging.getLogger('scvi').setLevel(logging.ERROR)
from cell2location.models import Cell2location
from scvi.dataloaders import AnnDataLoader
def c2l_pyro_logjoint(x, sig, batch, z, N, R):
    S, G = x.shape
    ad = anndata.AnnData(X=np.asarray(x, dtype=np.float32),
                         obs=pd.DataFrame({'batch': pd.Categorical(list(batch))},
                                          index=[f's{i}' for i in range(S)]),
                         var=pd.DataFrame(index=[f'g{i}' for i in range(G)]))
    sig_df = pd.DataFrame(np.asarray(sig), index=ad.var_names,
                          columns=[f'ct{i}' for i in range(sig.shape[1])])
    Cell2location.setup_anndata(ad, batch_key='batch')
    mod = Cell2location(ad, cell_state_df=sig_df, N_cells_per_location=N, detection_alpha=20,
                        n_groups=int(R))
    dl = AnnDataLoader(mod.adata_manager, batch_size=S, shuffle=False)
    tensors = next(iter(dl))
    args, kwargs = mod.module._get_fn_args_from_batch(tensors)
    cond = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in z.items()}
    tr = pyro.poutine.trace(pyro.poutine.condition(mod.module.model, data=cond)).get_trace(*args, **kwargs)
    tr.compute_log_prob()
    tot = 0.0
    for name, site in tr.nodes.items():
        if site['type'] == 'sample':
            tot += float(site['log_prob_sum'].double())
    mm = mod.module.model
    det = (mm.detection_mean_hyp_prior_alpha / mm.detection_mean_hyp_prior_beta).detach().numpy().ravel()
    return tot, det
")
  ord <- st$spot_order
  res <- reticulate::py$c2l_pyro_logjoint(t(d$x), d$sig, as.character(d$batch), z, 30, 5L)
  expect_equal(as.numeric(res[[2]]), st$detection_mean[1], tolerance = 1e-6)
  expect_equal(ours, res[[1]], tolerance = 1e-5)
  # precision = "single" (the S x G pass in float32, as torch) against the same Pyro value, and
  # on a larger problem (200 spots x 300 genes x 8 types, counts up to 150) against Pyro's
  ours32 <- ns$c2l_logjoint(prep, u, precision = "single")$logp
  expect_equal(ours32, res[[1]], tolerance = 1e-5)
  d2 <- c2l_toy(S = 200, G = 300, F = 8, seed = 6)
  prep2 <- c2l_prep(d2, N = 30, R = 5)
  st2 <- prep2$settings
  set.seed(3)
  P2 <- sum(ns$c2l_sites_of(st2)$nrow * ns$c2l_sites_of(st2)$ncol)
  u2 <- ns$c2l_flatten(lapply(ns$c2l_init_params(st2), `[[`, "loc"), st2) +
    stats::runif(P2, -0.4, 0.4)
  z2 <- lapply(ns$c2l_unflatten(exp(u2), st2), function(m) unname(m))
  res2 <- reticulate::py$c2l_pyro_logjoint(t(d2$x), d2$sig, as.character(d2$batch), z2, 30, 5L)
  l64 <- ns$c2l_logjoint(prep2, u2)$logp
  l32 <- ns$c2l_logjoint(prep2, u2, precision = "single")$logp
  # observed: rel 2.1e-7 (double) and 2.2e-7 (single) vs Pyro (small problem: 3.1e-7 and
  # 3.3e-7): the difference is Pyro's own float32 rounding
  expect_lt(abs(l64 / res2[[1]] - 1), 1e-5)
  expect_lt(abs(l32 / res2[[1]] - 1), 1e-5)
})

test_that("the float32 pass agrees with the double one for any tiling and thread count", {
  ns <- c2l_ns()
  d <- c2l_toy(S = 150, G = 40, F = 5, seed = 9)
  prep <- c2l_prep(d, N = 30, R = 4)
  st <- prep$settings
  tab <- ns$c2l_sites_of(st)
  set.seed(4)
  P <- sum(tab$nrow * tab$ncol)
  u <- ns$c2l_flatten(lapply(ns$c2l_init_params(st), `[[`, "loc"), st) + stats::runif(P, -0.5, 0.5)
  ref <- ns$c2l_logjoint(prep, u)
  site <- rep(tab$name, tab$nrow * tab$ncol)
  lj <- function(tiles, threads, gemm = 0L) {
    state <- ns$c2l_make_state(prep, tiles = tiles, precision = "single", gemm = gemm)
    .Call(ns$C_scnative_c2l_logjoint, state, u, as.integer(threads))
  }
  # tiles of 20 spots (rows padded to 32) x 7 genes (a 6 + 1 column split), 5 types; 8 chunks
  a1 <- lj(c(20L, 7L), 1L)
  a2 <- lj(c(20L, 7L), 2L)
  expect_identical(a1, a2)
  for (r in list(a1, lj(c(0L, 0L), 1L), lj(c(20L, 7L), 1L, gemm = 1L))) {
    expect_lt(abs(r$logp / ref$logp - 1), 1e-6)
    # gradients: relative to each site's scale (observed: logp within 2.5e-8, worst site 3e-7)
    worst <- tapply(abs(r$grad - ref$grad), site, max) /
      pmax(1, tapply(abs(ref$grad), site, max))
    expect_true(all(worst < 1e-5), info = paste(names(worst), signif(worst, 3), collapse = "; "))
  }
  # genes with few non-zeros per tile (the gather/scatter path) next to dense ones (the dense
  # path, more than 1 / 12 of a tile's spots non-zero): both agree with the double pass
  d3 <- d
  set.seed(5)
  sparse_genes <- seq(1, nrow(d3$x), by = 2)
  d3$x[sparse_genes, ] <- d3$x[sparse_genes, ] * (matrix(stats::runif(length(sparse_genes) *
    ncol(d3$x)), length(sparse_genes)) < 0.02)
  d3$x[sparse_genes, 1] <- 1L # no all-zero gene
  prep3 <- c2l_prep(d3, N = 30, R = 4)
  ref3 <- ns$c2l_logjoint(prep3, u)
  # every copy of the float kernels this CPU runs (AVX-512, AVX2, portable), not only the one
  # it would pick
  kernels <- character()
  for (tiles in list(c(20L, 7L), c(0L, 0L))) for (kernel in 0:3) {
    state <- ns$c2l_make_state(prep3, tiles = tiles, precision = "single", kernel = kernel)
    kernels <- c(kernels, attr(state, "kernel"))
    r <- .Call(ns$C_scnative_c2l_logjoint, state, u, 1L)
    expect_lt(abs(r$logp / ref3$logp - 1), 1e-6)
    worst <- tapply(abs(r$grad - ref3$grad), site, max) /
      pmax(1, tapply(abs(ref3$grad), site, max))
    expect_true(all(worst < 1e-5), info = paste(names(worst), signif(worst, 3), collapse = "; "))
  }
  expect_true("base" %in% kernels) # the portable copy runs everywhere
  # explicitly stored zeros in the dgCMatrix (a spot-mask bit with a zero count on AVX-512's
  # dense path; more entries on the gather path): the same log joint as with them dropped
  x0 <- Matrix::Matrix(d$x, sparse = TRUE)
  x0@x[seq(1, length(x0@x), by = 3)] <- 0
  prep0 <- c2l_prep(list(x = x0, sig = d$sig, batch = d$batch), N = 30, R = 4)
  prepd <- c2l_prep(list(x = Matrix::drop0(x0), sig = d$sig, batch = d$batch), N = 30, R = 4)
  for (tiles in list(c(20L, 7L), c(0L, 0L))) {
    r0 <- .Call(ns$C_scnative_c2l_logjoint,
                ns$c2l_make_state(prep0, tiles = tiles, precision = "single"), u, 1L)
    rd <- .Call(ns$C_scnative_c2l_logjoint,
                ns$c2l_make_state(prepd, tiles = tiles, precision = "single"), u, 1L)
    expect_lt(abs(r0$logp / rd$logp - 1), 1e-6)
    worst <- tapply(abs(r0$grad - rd$grad), site, max) / pmax(1, tapply(abs(rd$grad), site, max))
    expect_true(all(worst < 1e-5), info = paste(names(worst), signif(worst, 3), collapse = "; "))
  }
  # training on the small tiles: the same losses and parameters at 1 and 2 threads
  train <- function(threads) {
    state <- ns$c2l_make_state(prep, tiles = c(20L, 7L), precision = "single")
    pr <- ns$c2l_init_params(st)
    .Call(ns$C_scnative_c2l_set_params, state, ns$c2l_flatten(lapply(pr, `[[`, "loc"), st),
          ns$c2l_flatten(lapply(pr, `[[`, "rho"), st))
    loss <- .Call(ns$C_scnative_c2l_train, state, 20L, 0, 0.01, 0L, 10, 1, 3, as.integer(threads))
    list(loss = loss, params = .Call(ns$C_scnative_c2l_get_params, state))
  }
  expect_identical(train(1L), train(2L))
})

test_that("single and double fits agree on the bundled hippocampus data", {
  hip <- example_hippocampus()
  genes <- intersect(rownames(hip$visium$counts), rownames(hip$reference$counts))
  sig <- cluster_averages(hip$reference$counts[genes, ], hip$reference$cell_types)
  counts <- hip$visium$counts[genes, ]
  fit <- function(precision) {
    suppressMessages(cell2location(counts, sig, N_cells_per_location = 8, max_epochs = 300,
                                   lr = 0.01, seed = 1, threads = 1, progress = FALSE,
                                   precision = precision))
  }
  fs <- fit("single")
  fd <- fit("double")
  expect_identical(fs$precision, "single")
  expect_identical(fd$precision, "double")
  # posterior mean abundance of the AutoNormal guide: exp(loc + softplus(rho)^2 / 2)
  ab <- function(f) with(f$params$w_sf, exp(loc + log1p(exp(rho))^2 / 2))
  # observed (the float32 fit samples and steps its guide in float): 1 - r about 3e-11,
  # abundances within 1e-3 relative, losses within 2.1e-6
  expect_gte(stats::cor(as.vector(ab(fs)), as.vector(ab(fd))), 0.999)
  expect_lt(max(abs(fs$history$elbo_train / fd$history$elbo_train - 1)), 1e-5)
  # train_more keeps the fit's precision unless told
  expect_identical(train_more(fs, 2, threads = 1, progress = FALSE)$precision, "single")
  fm <- train_more(fs, 2, threads = 1, progress = FALSE, precision = "double")
  expect_identical(fm$precision, "double")
  expect_error(train_more(fs, 2, progress = FALSE, precision = "half"),
               "'precision' must be one of 'single', 'double'")
  expect_error(suppressMessages(cell2location(counts, sig, max_epochs = 1, precision = NA)),
               "'precision' must be")
})

test_that("the Adam and ClippedAdam updates match torch / pyro", {
  use_peers()
  ns <- c2l_ns()
  set.seed(4)
  n <- 5; T <- 30
  theta0 <- stats::rnorm(n)
  grads <- matrix(stats::rnorm(n * T, sd = 5), n, T)
  grads[1, ] <- grads[1, ] * 10 # values above the clipping bound
  reticulate::py_run_string("
import torch, numpy as np
from pyro.optim.clipped_adam import ClippedAdam
def c2l_torch_adam(theta0, grads, lr, clipped):
    p = torch.tensor(np.asarray(theta0), dtype=torch.float64, requires_grad=True)
    opt = ClippedAdam([p], lr=lr, clip_norm=10.0, lrd=0.999) if clipped else torch.optim.Adam([p], lr=lr)
    g = np.asarray(grads)
    out = np.zeros(g.shape)
    for t in range(g.shape[1]):
        opt.zero_grad()
        p.grad = torch.tensor(g[:, t].copy(), dtype=torch.float64)
        opt.step()
        out[:, t] = p.detach().numpy()
    return out
")
  ref <- reticulate::py$c2l_torch_adam(theta0, grads, 0.01, FALSE)
  expect_equal(ns$svi_adam_steps(theta0, grads, 0.01), ref, tolerance = 1e-12)
  refc <- reticulate::py$c2l_torch_adam(theta0, grads, 0.01, TRUE)
  expect_equal(ns$svi_adam_steps(theta0, grads, 0.01, clipped = TRUE, clip = 10, lrd = 0.999),
               refc, tolerance = 1e-12)
})

test_that("training over several spot blocks does not depend on the thread count", {
  # n_s, b_s and z_sr are sampled and updated per block of 256 spots inside the model's pass
  # (the fused guide sites), so thread independence needs more than one block: 700 spots
  d <- c2l_toy(S = 700, G = 25, F = 4, seed = 11)
  fit <- function(threads, precision) {
    suppressMessages(cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 5,
                                   n_groups = 6, max_epochs = 15, seed = 3, threads = threads,
                                   progress = FALSE, precision = precision))
  }
  for (precision in c("single", "double")) {
    f1 <- fit(1, precision)
    f2 <- fit(2, precision)
    expect_identical(f1$history, f2$history, info = precision)
    expect_identical(f1$params, f2$params, info = precision)
    expect_true(all(is.finite(f1$history$elbo_train)), info = precision)
  }
})

test_that("training: loss decreases, threads do not change results, init continues", {
  d <- c2l_toy(S = 40, G = 30, F = 3, seed = 8)
  expect_message(
    fit1 <- cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 5, n_groups = 4,
                          max_epochs = 300, seed = 7, threads = 1, progress = FALSE),
    "using 30 genes")
  fit2 <- suppressMessages(cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 5,
                                         n_groups = 4, max_epochs = 300, seed = 7, threads = 2,
                                         progress = FALSE))
  expect_s3_class(fit1, "scnative_c2l")
  expect_identical(fit1$precision, "single") # the default
  expect_identical(fit1$history, fit2$history)
  expect_identical(fit1$params, fit2$params)
  fd1 <- suppressMessages(cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 5,
                                        n_groups = 4, max_epochs = 50, seed = 7, threads = 1,
                                        progress = FALSE, precision = "double"))
  fd2 <- suppressMessages(cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 5,
                                        n_groups = 4, max_epochs = 50, seed = 7, threads = 2,
                                        progress = FALSE, precision = "double"))
  expect_identical(fd1$history, fd2$history)
  expect_identical(fd1$params, fd2$params)
  h <- fit1$history
  expect_equal(h$epoch, 0:299)
  expect_lt(mean(h$elbo_train[281:300]), mean(h$elbo_train[1:20]))
  expect_named(fit1$params, c("m_g_mean", "m_g_alpha_e_inv", "m_g", "n_s_cells_per_location",
                              "b_s_groups_per_location", "z_sr_groups_factors",
                              "k_r_factors_per_groups", "x_fr_group2fact", "w_sf",
                              "detection_mean_y_e", "detection_y_s", "s_g_gene_add_alpha_hyp",
                              "s_g_gene_add_mean", "s_g_gene_add_alpha_e_inv", "s_g_gene_add",
                              "alpha_g_phi_hyp", "alpha_g_inverse"))
  expect_equal(dim(fit1$params$w_sf$loc), c(40, 3))
  expect_equal(rownames(fit1$params$w_sf$loc), colnames(d$x))
  expect_equal(dim(fit1$params$alpha_g_inverse$rho), c(2, 30))
  # same seed, different spot order -> spot rows follow the spots
  # init = fit: history appended, continues from the parameters
  fit3 <- suppressMessages(cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 5,
                                         n_groups = 4, max_epochs = 50, seed = 7, threads = 1,
                                         progress = FALSE, init = fit1))
  expect_equal(nrow(fit3$history), 350)
  expect_equal(fit3$history$epoch, 0:349)
  expect_equal(fit3$history[1:300, ], fit1$history)
  expect_lt(abs(fit3$history$elbo_train[301] - mean(h$elbo_train[281:300])),
            abs(h$elbo_train[1] - mean(h$elbo_train[281:300])))
  fit4 <- train_more(fit1, 50, threads = 1, progress = FALSE)
  expect_identical(fit4$history, fit3$history)
  expect_identical(fit4$params, fit3$params)
  expect_output(print(fit1), "40 spots x 30 genes, 3 cell types")
  expect_output(print(summary(fit1)), "median abundance")
  p <- plot_history(fit1, iter_start = 10)
  expect_s3_class(p, "ggplot")
  expect_equal(nrow(p$data), 290)
})

test_that("detection mean follows upstream's N = 1 quirk when N_cells_per_location is not passed", {
  d <- c2l_toy(S = 20, G = 15, F = 3)
  ns <- c2l_ns()
  f_def <- suppressMessages(cell2location(d$x, d$sig, max_epochs = 1, seed = 1,
                                          progress = FALSE))
  f_8 <- suppressMessages(cell2location(d$x, d$sig, N_cells_per_location = 8, max_epochs = 1,
                                        seed = 1, progress = FALSE))
  expected <- mean(colSums(d$x)) / mean(colSums(d$sig))
  expect_equal(f_def$settings$detection_mean, expected)
  expect_equal(f_8$settings$detection_mean, expected / 8)
  expect_equal(f_def$settings$hyper$N, 8)
})

test_that("export_posterior and cell_abundance follow upstream's summaries and names", {
  d <- c2l_toy(S = 25, G = 20, F = 3, seed = 9)
  fit <- suppressMessages(cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 5,
                                        n_groups = 4, max_epochs = 100, seed = 2,
                                        progress = FALSE))
  post <- export_posterior(fit, num_samples = 2000, seed = 3, threads = 1)
  expect_s3_class(post, "scnative_c2l_posterior")
  expect_true(all(c("means", "stds", "q05", "q95") %in% names(post)))
  expect_setequal(names(post$means), c(names(fit$params), "u_sf_mRNA_factors",
                                       "detection_hyp_prior_alpha"))
  # log-normal guide: mean exp(loc + sigma^2 / 2), quantiles exp(loc + sigma * qnorm(q))
  w <- fit$params$w_sf
  sg <- log1p(exp(w$rho))
  expect_equal(post$means$w_sf, exp(w$loc + sg^2 / 2), tolerance = 0.02)
  expect_equal(post$q05$w_sf, exp(w$loc + sg * stats::qnorm(0.05)), tolerance = 0.03)
  aq <- export_posterior(fit, use_quantiles = TRUE, quantiles = c(0.05, 0.5))
  expect_null(aq$means)
  expect_equal(aq$q50$w_sf, exp(w$loc))
  expect_equal(aq$q05$w_sf, exp(w$loc + sg * stats::qnorm(0.05)))
  # u_sf = w_sf * sum_g sig_gf m_g, from joint draws
  m <- fit$params$m_g
  cm <- exp(m$loc + log1p(exp(m$rho))^2 / 2) %*% fit$signatures
  expect_equal(post$means$u_sf_mRNA_factors, sweep(post$means$w_sf, 2, cm, `*`), tolerance = 0.03)
  expect_equal(as.vector(post$means$detection_hyp_prior_alpha), c(20, 20))
  ab <- cell_abundance(post)
  expect_equal(dim(ab), c(25, 3))
  expect_equal(colnames(ab), colnames(d$sig))
  expect_equal(rownames(ab), colnames(d$x))
  expect_equal(colnames(cell_abundance(post, "q05", upstream_names = TRUE)),
               paste0("q05cell_abundance_w_sf_", colnames(d$sig)))
  expect_error(cell_abundance(aq, "means"), "'which' must be one of the summaries")
  # same seed, same draws
  expect_identical(export_posterior(fit, num_samples = 50, seed = 1, threads = 1)$q95,
                   export_posterior(fit, num_samples = 50, seed = 1, threads = 2)$q95)
})

test_that("bad input gives clear errors", {
  d <- c2l_toy(S = 10, G = 15, F = 3)
  run <- function(...) suppressMessages(cell2location(max_epochs = 1, progress = FALSE, ...))
  x <- d$x
  x[1, 1] <- 1.5
  expect_error(run(x, d$sig), "integer counts")
  x[1, 1] <- -1
  expect_error(run(x, d$sig), "negative")
  x[1, 1] <- NA
  expect_error(run(x, d$sig), "NA")
  sig2 <- d$sig
  rownames(sig2) <- paste0("other", seq_len(nrow(sig2)))
  expect_error(run(d$x, sig2), "share no gene names")
  expect_error(run(d$x, d$sig[1:5, ]), "share only 5 gene names")
  sig3 <- d$sig
  sig3[, 2] <- 0
  expect_error(run(d$x, sig3), "'ct2' are all zero")
  expect_error(run(d$x, unname(d$sig)), "gene names as row names")
  x4 <- d$x
  rownames(x4) <- NULL
  expect_error(run(x4, d$sig), "gene names as row names")
  expect_error(run(d$x, d$sig, batch = d$batch[-1]), "'batch' must have one value per spot")
  expect_error(run(d$x, d$sig, detection_alpha = 0), "detection_alpha")
  expect_error(run(d$x, d$sig, N_cells_per_location = -1), "N_cells_per_location")
  expect_error(run(d$x, d$sig, gene_add_mean_hyp_prior = list(alpha = 1, beta = 0)),
               "gene_add_mean_hyp_prior\\$beta")
  expect_error(run(d$x, d$sig, n_groups = 0), "n_groups")
  expect_error(suppressMessages(cell2location(d$x, d$sig, max_epochs = 0)), "max_epochs")
  expect_error(run(d$x, d$sig, lr = -1), "lr")
  expect_error(run("a", d$sig), "'x' must be")
  expect_error(run(d$x, d$sig, init = list()), "'init' must be")
})

test_that("Seurat and SingleCellExperiment inputs and write-back", {
  skip_if_not_installed("SeuratObject")
  skip_if_not_installed("SingleCellExperiment")
  d <- c2l_toy(S = 20, G = 15, F = 3, seed = 12)
  x <- Matrix::Matrix(d$x, sparse = TRUE)
  fit <- suppressMessages(cell2location(x, d$sig, max_epochs = 20, seed = 1, progress = FALSE))
  so <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = x))
  fs <- suppressMessages(cell2location(so, d$sig, max_epochs = 20, seed = 1, progress = FALSE))
  expect_equal(fs$params, fit$params)
  post <- export_posterior(fit, num_samples = 20, seed = 1)
  so2 <- add_cell_abundance(so, post)
  expect_true("cell2location" %in% SeuratObject::Assays(so2))
  expect_equal(unname(as.matrix(SeuratObject::GetAssayData(so2, assay = "cell2location",
                                                           slot = "data"))),
               unname(t(cell_abundance(post))))
  expect_equal(SeuratObject::GetAssayData(so2, assay = "RNA", slot = "counts"),
               SeuratObject::GetAssayData(so, assay = "RNA", slot = "counts"))
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = d$x))
  fe <- suppressMessages(cell2location(sce, d$sig, max_epochs = 20, seed = 1, progress = FALSE))
  expect_equal(fe$params, fit$params)
  sce2 <- add_cell_abundance(sce, post, coldata = TRUE)
  expect_equal(SingleCellExperiment::reducedDim(sce2, "cell2location"), cell_abundance(post))
  expect_true("meanscell_abundance_w_sf_ct1" %in% names(SummarizedExperiment::colData(sce2)))
  expect_error(cell2location(sce, d$sig, assay.type = "logcounts"), "not an assay")
})
