#' Run a Python scVelo / cell2location session on scnative's core
#'
#' R users who drive scVelo or cell2location through reticulate can keep their Python calls
#' unchanged and get scnative's native fits: `patch_scvelo()` replaces
#' `scvelo.tl.recover_dynamics` (and every alias scVelo exposes, such as
#' `scvelo.tools.recover_dynamics`) in the session's Python with a function of the same
#' signature that hands the AnnData's arrays to [recover_dynamics()] and writes back exactly what
#' upstream writes (`var` columns `fit_*`, layers `fit_t`, `fit_tau`, `fit_tau_`,
#' `varm['loss']`, `uns['recover_dynamics']`), so that `scv.tl.velocity(adata,
#' mode = 'dynamical')`, `scv.tl.latent_time()` and the plots run unchanged on the result.
#' The layers' dtype decides the arithmetic, as it does upstream: float32 `Ms`/`Mu` (what scVelo
#' stores) are fitted with `dtype = "float32"`, float64 or integer ones with `"float64"` (see
#' [recover_dynamics()]); float16 layers, or two layers of different dtypes, go to upstream.
#'
#' Calls outside the supported scope (for example `return_model = True`, `plot_results = True`,
#' or fewer than 5 genes, where upstream returns its model object) go to the original upstream
#' function with a one-line message saying why. The original stays reachable as
#' `scvelo.tl.recover_dynamics_original`. Patching twice is harmless; `unpatch()` restores the
#' original objects.
#'
#' @param quiet `TRUE` to print nothing.
#' @param which which patches to remove.
#' @return `patch_scvelo()`: the patched Python function, invisibly. `unpatch()`: a named logical
#'   vector saying which patches were removed, invisibly. `patched()`: a named character vector
#'   of installed patches with the upstream versions they patch.
#' @examples
#' \dontrun{
#' Sys.setenv(RETICULATE_PYTHON = "~/.cache/scnative/peers/bin/python")
#' patch_scvelo()
#' scv <- reticulate::import("scvelo")
#' # scv$tl$recover_dynamics(adata) now runs natively
#' patched()
#' unpatch()
#' }
#' @export
patch_scvelo <- function(quiet = FALSE) {
  check_flag(quiet, "quiet")
  mod <- scnative_python()
  fn <- mod$install_scvelo(reticulate::py_func(scvelo_callback))
  sv <- reticulate::import("scvelo", convert = FALSE)
  reticulate::py_set_attr(sv$tl, "recover_dynamics_original", mod$original("scvelo"))
  if (!quiet) message("scnative: scvelo.tl.recover_dynamics now runs on scnative's core")
  invisible(fn)
}

#' @rdname patch_scvelo
#' @export
unpatch <- function(which = c("scvelo", "cell2location")) {
  which <- match.arg(which, several.ok = TRUE)
  mod <- scnative_python()
  out <- vapply(which, function(w) isTRUE(reticulate::py_to_r(mod$unpatch(w))), logical(1))
  invisible(out)
}

#' @rdname patch_scvelo
#' @export
patched <- function() {
  mod <- scnative_python()
  p <- reticulate::py_to_r(mod$patched())
  if (!length(p)) return(stats::setNames(character(0), character(0)))
  unlist(p)
}

# Arguments of an R callback arrive from Python partly unconverted (scipy sparse matrices,
# pandas data frames): convert what is still a Python object.
# Sparse matrices come as CSC parts (p, i, x, dim) and become a dgCMatrix.
py_value <- function(x) {
  if (inherits(x, "python.builtin.object")) x <- reticulate::py_to_r(x)
  if (is.list(x) && !is.data.frame(x)) {
    x[] <- lapply(x, py_value)
    if (setequal(names(x), c("p", "i", "x", "dim"))) {
      d <- as.integer(unlist(x$dim))
      return(methods::new("dgCMatrix", p = as.integer(x$p), i = as.integer(x$i),
                          x = as.double(x$x), Dim = d))
    }
  }
  x
}

scnative_python <- function() {
  need_pkg("reticulate", "to patch a Python session")
  path <- system.file("python", package = "scnative")
  if (!nzchar(path)) stopf("scnative's Python module is missing from the installation")
  reticulate::import_from_path("scnative_patch", path = path, convert = FALSE)
}

# Called from Python with genes x cells arrays and upstream's arguments; returns what the Python
# side writes into the AnnData. R errors reach Python as exceptions carrying the R message.
scvelo_callback <- function(Ms, Mu, conn, var, genes, cells, args) {
  Ms <- py_value(Ms)
  Mu <- py_value(Mu)
  conn <- py_value(conn)
  var <- py_value(var)
  args <- py_value(args)
  dimnames(Ms) <- dimnames(Mu) <- list(unlist(genes), unlist(cells))
  if (!is.null(conn)) dimnames(conn) <- list(unlist(cells), unlist(cells))
  if (is.data.frame(var)) rownames(var) <- unlist(genes)
  a <- args
  vn <- a$var_names
  if (is.list(vn)) vn <- unlist(vn)
  ssp <- a$steady_state_prior
  if (!is.null(ssp)) ssp <- as.logical(unlist(ssp))
  fit <- recover_dynamics(Ms, Mu, var_names = vn, n_top_genes = a$n_top_genes,
                          max_iter = a$max_iter, assignment_mode = a$assignment_mode,
                          t_max = a$t_max, fit_time = a$fit_time, fit_scaling = a$fit_scaling,
                          fit_steady_states = a$fit_steady_states,
                          fit_connected_states = a$fit_connected_states,
                          fit_basal_transcription = a$fit_basal_transcription,
                          use_raw = a$use_raw, load_pars = a$load_pars,
                          steady_state_prior = ssp, connectivities = conn, var = var,
                          perc = a$perc %||% 99, dtype = a$dtype %||% "float64",
                          threads = if (is.null(a$n_jobs) || a$n_jobs < 1) NULL else as.integer(a$n_jobs),
                          progress = FALSE)
  list(var = fit$var, fit_t = fit$layers$fit_t, fit_tau = fit$layers$fit_tau,
       fit_tau_ = fit$layers$fit_tau_, loss = fit$loss)
}

#' @rdname patch_scvelo
#' @details `patch_cell2location()` replaces `cell2location.models.Cell2location.train`.
#'   Supported calls (the default model class, the AutoNormal guide, `num_particles = 1`,
#'   `scale_elbo = 1`, no other trainer arguments; full-batch training with
#'   `batch_size = None` or minibatches of `batch_size` spots, any `train_size` in (0, 1], as
#'   [cell2location()]'s `batch_size` and `train_size`) run [cell2location()]'s core with the hyper-parameters read from the
#'   model's buffers (so upstream's detection-mean rule is inherited), starting from the guide's
#'   current parameters if the model was trained before (with a fresh Adam state, as upstream).
#'   The fitted locations and scales are written into the guide's parameters in place (the same
#'   tensors as Pyro's param store), the loss is appended to `history_['elbo_train']`, and the
#'   model is marked trained, so `export_posterior()`, `plot_history()`, `plot_QC()`,
#'   `save()`/`load()` and a second `train()` work as upstream. The original stays reachable as
#'   `Cell2location.train_original`.
#' @export
patch_cell2location <- function(quiet = FALSE) {
  check_flag(quiet, "quiet")
  mod <- scnative_python()
  fn <- mod$install_cell2location(reticulate::py_func(c2l_patch_callback))
  c2l <- reticulate::import("cell2location.models", convert = FALSE)
  reticulate::py_set_attr(c2l$Cell2location, "train_original", mod$original("cell2location"))
  if (!quiet) message("scnative: Cell2location.train now runs on scnative's core")
  invisible(fn)
}

# Called from Python with genes x spots counts, 0-based batch codes, the G x F signatures, the
# model's hyper-parameter buffers and the guide's current parameters (or None).
c2l_patch_callback <- function(X, batch, sig, hyper, init, max_epochs, lr, batch_size = NULL,
                               train_size = 1) {
  batch_size <- py_value(batch_size)
  train_size <- py_value(train_size)
  X <- py_value(X)
  batch <- py_value(batch)
  sig <- py_value(sig)
  hyper <- py_value(hyper)
  init <- py_value(init)
  h <- lapply(hyper, function(v) as.vector(v))
  E <- as.integer(h$n_batch)
  G <- nrow(X)
  S <- ncol(X)
  dimnames(X) <- list(paste0("g", seq_len(G)), paste0("s", seq_len(S)))
  sig <- as.matrix(sig)
  dimnames(sig) <- list(rownames(X), paste0("t", seq_len(ncol(sig))))
  levs <- as.character(seq_len(E) - 1L)
  b <- factor(as.character(as.vector(batch)), levels = levs)
  if (anyNA(b) || any(tabulate(as.integer(b), E) == 0L)) {
    stopf("every batch category must have spots (batch codes %s)", paste(levs, collapse = ", "))
  }
  alpha <- h$detection_hyp_prior_alpha
  if (length(alpha) > 1L) alpha <- stats::setNames(rep_len(alpha, E), levs)
  prep <- c2l_prepare(
    X, sig, b, N_cells_per_location = h$N_cells_per_location, N_given = TRUE,
    detection_alpha = alpha,
    A_factors_per_location = h$factors_per_groups * h$B_groups_per_location,
    B_groups_per_location = h$B_groups_per_location, n_groups = h$n_groups,
    detection_mean_per_sample = FALSE, detection_mean_correction = 1,
    m_g_gene_level_prior = list(mean = h$m_g_mu_hyp, mean_var_ratio = h$m_g_mu_mean_var_ratio_hyp,
                                alpha_mean = h$m_g_alpha_hyp_mean),
    N_cells_mean_var_ratio = h$N_cells_mean_var_ratio,
    alpha_g_phi_hyp_prior = list(alpha = h$alpha_g_phi_hyp_prior_alpha,
                                 beta = h$alpha_g_phi_hyp_prior_beta),
    gene_add_alpha_hyp_prior = list(alpha = h$gene_add_alpha_hyp_prior_alpha,
                                    beta = h$gene_add_alpha_hyp_prior_beta),
    gene_add_mean_hyp_prior = list(alpha = h$gene_add_mean_hyp_prior_alpha,
                                   beta = h$gene_add_mean_hyp_prior_beta),
    detection_hyp_prior = list(mean_alpha = h$detection_mean_hyp_prior_alpha),
    w_sf_mean_var_ratio = h$w_sf_mean_var_ratio_tensor, quiet = TRUE, min_genes = 1L)
  # the detection mean as the model holds it (mean_alpha / beta), not recomputed
  d_e <- rep_len(h$detection_mean_hyp_prior_alpha / h$detection_mean_hyp_prior_beta, E)
  prep$settings$detection_mean <- prep$settings$detection_mean_e <- d_e
  st <- prep$settings
  params <- c2l_init_params(st)
  if (!is.null(init)) {
    tab <- c2l_sites_of(st)
    for (j in seq_len(nrow(tab))) {
      s <- tab$name[j]
      pr <- init[[s]]
      dn <- dimnames(params[[s]]$loc)
      params[[s]] <- list(loc = matrix(as.vector(pr[[1]]), tab$nrow[j], tab$ncol[j], dimnames = dn),
                          rho = matrix(as.vector(pr[[2]]), tab$nrow[j], tab$ncol[j], dimnames = dn))
    }
  }
  seed <- resolve_seed(NULL)
  minibatch <- c2l_minibatch(batch_size, train_size, st$n_spots, seed)
  fit <- c2l_fit_run(prep, params, svi_empty_history(), as.integer(max_epochs),
                     svi_optimizer("adam", as.double(lr), list()), seed,
                     resolve_threads(NULL), FALSE, FALSE, "single", # upstream's float32
                     minibatch = minibatch)
  list(loc = lapply(fit$params, function(p) unname(p$loc)),
       rho = lapply(fit$params, function(p) unname(p$rho)),
       loss = fit$history$elbo_train,
       train = (minibatch$train %||% seq_len(st$n_spots)) - 1L)
}
