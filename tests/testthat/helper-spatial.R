# Live upstream cell2location through reticulate (peers venv), for the accuracy/agreement tests
# of test-spatial.R. bench/upstream_c2l.py does the same from files for the benchmarks.

# The Python modules of the live cell2location runs (peers venv), quiet loggers, torch threads.
c2l_py_modules <- function(threads) {
  use_peers()
  imp <- function(m) reticulate::import(m, convert = FALSE)
  logging <- reticulate::import("logging")
  logging$getLogger("lightning.pytorch")$setLevel(logging$ERROR)
  logging$getLogger("scvi")$setLevel(logging$ERROR)
  torch <- imp("torch")
  torch$set_num_threads(as.integer(threads))
  list(np = imp("numpy"), pd = imp("pandas"), sp = imp("scipy.sparse"), ad = imp("anndata"),
       scvi = imp("scvi"), c2l = imp("cell2location"), torch = torch)
}

# Fits upstream Cell2location on `counts` (genes x spots, matrix or dgCMatrix) with
# `signatures` (genes x cell types; genes are intersected as the tutorial does) and returns
# list(means, q05 = spots x cell types posterior summaries of w_sf with the cell type names,
# history, seconds = train time). Skips when the peers venv is absent.
run_upstream_c2l <- function(counts, signatures, N_cells_per_location = 8, detection_alpha = 20,
                             max_epochs = 1000, lr = 0.002, seed = 0, num_samples = 100,
                             threads = 2, batch = NULL, batch_size = NULL) {
  m <- c2l_py_modules(threads)
  np <- m$np; pd <- m$pd; sp <- m$sp; ad <- m$ad; scvi <- m$scvi; c2l <- m$c2l

  genes <- intersect(rownames(counts), rownames(signatures))
  x <- as.matrix(counts[genes, , drop = FALSE])
  sig <- as.matrix(signatures[genes, , drop = FALSE])
  spots <- colnames(x)
  types <- colnames(sig)

  X <- sp$csr_matrix(np$asarray(t(x), dtype = "float32"))
  obs <- pd$DataFrame(index = pd$Index(spots))
  if (!is.null(batch)) obs["batch"] <- pd$Categorical(as.character(batch))
  var <- pd$DataFrame(index = pd$Index(genes))
  adata <- ad$AnnData(X = X, obs = obs, var = var)
  sig_df <- pd$DataFrame(np$asarray(sig, dtype = "float64"), index = pd$Index(genes),
                         columns = pd$Index(types))
  scvi$settings$seed <- as.integer(seed)
  c2l$models$Cell2location$setup_anndata(adata = adata,
                                         batch_key = if (is.null(batch)) NULL else "batch")
  mod <- c2l$models$Cell2location(adata, cell_state_df = sig_df,
                                  N_cells_per_location = as.numeric(N_cells_per_location),
                                  detection_alpha = as.numeric(detection_alpha))
  t0 <- proc.time()[["elapsed"]]
  mod$train(max_epochs = as.integer(max_epochs),
            batch_size = if (is.null(batch_size)) NULL else as.integer(batch_size), train_size = 1L,
            lr = as.numeric(lr), enable_progress_bar = FALSE)
  secs <- proc.time()[["elapsed"]] - t0
  adata <- mod$export_posterior(adata, sample_kwargs = reticulate::dict(
    num_samples = as.integer(num_samples), batch_size = as.integer(length(spots))))
  get <- function(k) {
    m <- reticulate::py_to_r(adata$obsm[[paste0(k, "_cell_abundance_w_sf")]]$to_numpy())
    dimnames(m) <- list(spots, types)
    m
  }
  hist <- reticulate::py_to_r(mod$history_[["elbo_train"]][["elbo_train"]]$to_numpy())
  list(means = get("means"), q05 = get("q05"), history = as.numeric(hist), seconds = secs)
}

# The scnative side of the same comparison: posterior means and q05 of w_sf, train seconds.
run_scnative_c2l <- function(counts, signatures, N_cells_per_location = 8, detection_alpha = 20,
                             max_epochs = 1000, lr = 0.002, seed = 1, num_samples = 100,
                             threads = 2, batch_size = NULL) {
  t0 <- proc.time()[["elapsed"]]
  fit <- suppressMessages(cell2location(counts, signatures,
                                        N_cells_per_location = N_cells_per_location,
                                        detection_alpha = detection_alpha,
                                        max_epochs = max_epochs, lr = lr, seed = seed,
                                        threads = threads, progress = FALSE,
                                        batch_size = batch_size))
  secs <- proc.time()[["elapsed"]] - t0
  post <- export_posterior(fit, num_samples = num_samples, seed = seed)
  list(means = cell_abundance(post, "means"), q05 = cell_abundance(post, "q05"),
       history = fit$history$elbo_train, seconds = secs, posterior = post)
}

# Central finite differences of f at u against the analytic gradient `grad`: the worst relative
# error of each site (`site`: the site name of every element) must be below tol, and every site
# in `sites` must be covered.
expect_fd_by_site <- function(f, u, grad, site, sites, tol = 1e-6, h = 1e-5) {
  fd <- vapply(seq_along(u), function(i) {
    up <- u
    um <- u
    up[i] <- up[i] + h
    um[i] <- um[i] - h
    (f(up) - f(um)) / (2 * h)
  }, 0)
  rel <- abs(fd - grad) / pmax(1, abs(fd))
  worst <- tapply(rel, site, max)
  expect_setequal(names(worst), sites)
  expect_true(all(worst < tol), info = paste(names(worst), signif(worst, 3), collapse = "; "))
}
