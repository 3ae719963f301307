# Live upstream cell2location RegressionModel through reticulate (peers venv), for the
# agreement tests of test-reference.R. bench/upstream_reference.py does the same from files.

# Fits upstream RegressionModel on `counts` (genes x cells) with `labels` (and optional batch)
# and returns list(means = genes x cell types posterior means of per_cluster_mu_fg with the
# cell type names, history, seconds = train time). Skips when the peers venv is absent.
run_upstream_reference <- function(counts, labels, batch = NULL, max_epochs = NULL,
                                   batch_size = 2500L, lr = 0.002, seed = 0, num_samples = 200,
                                   threads = 2) {
  m <- c2l_py_modules(threads)
  np <- m$np; pd <- m$pd; sp <- m$sp; ad <- m$ad; scvi <- m$scvi; c2l <- m$c2l
  x <- methods::as(counts, "CsparseMatrix")
  cells <- colnames(x) %||% as.character(seq_len(ncol(x)))
  X <- sp$csr_matrix(sp$csc_matrix(reticulate::tuple(np$asarray(x@x, dtype = "float32"),
                                                     np$asarray(x@i), np$asarray(x@p)),
                                   shape = reticulate::tuple(nrow(x), ncol(x)))$T)
  obs <- pd$DataFrame(index = pd$Index(cells))
  reticulate::py_set_item(obs, "lab", pd$Categorical(as.character(labels)))
  if (!is.null(batch)) reticulate::py_set_item(obs, "bat", pd$Categorical(as.character(batch)))
  var <- pd$DataFrame(index = pd$Index(rownames(x)))
  adata <- ad$AnnData(X = X, obs = obs, var = var)
  scvi$settings$seed <- as.integer(seed)
  c2l$models$RegressionModel$setup_anndata(adata = adata, labels_key = "lab",
                                           batch_key = if (is.null(batch)) NULL else "bat")
  mod <- c2l$models$RegressionModel(adata)
  t0 <- proc.time()[["elapsed"]]
  mod$train(max_epochs = if (is.null(max_epochs)) NULL else as.integer(max_epochs),
            batch_size = if (is.null(batch_size)) NULL else as.integer(batch_size),
            train_size = 1L, lr = as.numeric(lr), enable_progress_bar = FALSE)
  secs <- proc.time()[["elapsed"]] - t0
  adata <- mod$export_posterior(adata, sample_kwargs = reticulate::dict(
    num_samples = as.integer(num_samples), batch_size = as.integer(min(2500L, length(cells)))))
  types <- reticulate::py_to_r(mod$factor_names_$tolist())
  m <- reticulate::py_to_r(adata$varm[["means_per_cluster_mu_fg"]]$to_numpy())
  cols <- reticulate::py_to_r(adata$varm[["means_per_cluster_mu_fg"]]$columns$tolist())
  dimnames(m) <- list(rownames(x), sub("^means_per_cluster_mu_fg_", "", unlist(cols)))
  hist <- reticulate::py_to_r(mod$history_[["elbo_train"]][["elbo_train"]]$to_numpy())
  list(means = m, history = as.numeric(hist), seconds = secs, cell_types = unlist(types))
}

# A small reference with two batches and a technical covariate, from the hippocampus data.
reference_test_data <- function() {
  hip <- example_hippocampus()
  ref <- hip$reference
  set.seed(7)
  n <- ncol(ref$counts)
  list(counts = ref$counts, labels = ref$cell_types,
       batch = factor(sample(c("s1", "s2"), n, TRUE)),
       method = factor(sample(c("v2", "v3"), n, TRUE)))
}
