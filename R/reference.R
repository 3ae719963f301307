# Reference signatures: cell2location's RegressionModel (spec/cell2location.md section 7) on the
# SVI machinery shared with the spatial model (svi.R, svi.c); the C side is reference.c.

# ---- sites --------------------------------------------------------------------------------

# The latent sites in upstream's order with their shapes and dimnames.
ref_site_table <- function(st) {
  F <- length(st$cell_types); G <- length(st$genes); E <- length(st$batch_levels)
  K <- length(st$tech_levels)
  tab <- data.frame(
    name = c("per_cluster_mu_fg", "detection_tech_gene_tg", "detection_mean_y_e",
             "s_g_gene_add_alpha_hyp", "s_g_gene_add_mean", "s_g_gene_add_alpha_e_inv",
             "s_g_gene_add", "alpha_g_phi_hyp", "alpha_g_inverse"),
    nrow = c(F, K, E, 1, E, E, E, 1, 1),
    ncol = c(G, G, 1, 1, 1, 1, G, 1, G),
    rows = c("type", "tech", "batch", "", "batch", "batch", "batch", "", ""),
    cols = c("gene", "gene", "", "", "", "", "gene", "", "gene"),
    stringsAsFactors = FALSE
  )
  if (K == 0L) tab <- tab[tab$name != "detection_tech_gene_tg", , drop = FALSE]
  tab
}

ref_unflatten <- function(v, st) {
  tab <- ref_site_table(st)
  dn <- list(type = st$cell_types, gene = st$genes, batch = st$batch_levels,
             tech = st$tech_levels)
  out <- vector("list", nrow(tab))
  names(out) <- tab$name
  pos <- 0
  for (j in seq_len(nrow(tab))) {
    n <- tab$nrow[j] * tab$ncol[j]
    m <- matrix(v[pos + seq_len(n)], tab$nrow[j], tab$ncol[j])
    pos <- pos + n
    dimnames(m) <- list(if (nzchar(tab$rows[j])) dn[[tab$rows[j]]],
                        if (nzchar(tab$cols[j])) dn[[tab$cols[j]]])
    out[[j]] <- m
  }
  out
}

ref_flatten <- function(params, st, what) {
  tab <- ref_site_table(st)
  unlist(lapply(tab$name, function(n) as.double(params[[n]][[what]])), use.names = FALSE)
}

# Initial guide: logs of the prior means given the parents' initial values (init_to_mean), the
# per-type averages (+ 1e-4) for per_cluster_mu_fg (use_average_as_initial); rho = softplus^-1(0.1).
ref_init_params <- function(st, averages) {
  h <- st$hyper
  F <- length(st$cell_types); G <- length(st$genes); E <- length(st$batch_levels)
  K <- length(st$tech_levels)
  hyp_h <- h$gene_add_alpha_alpha / h$gene_add_alpha_beta
  smean <- h$gene_add_mean_alpha / h$gene_add_mean_beta
  phi <- h$phi_alpha / h$phi_beta
  mu0 <- if (is.null(averages)) rep(1, F * G) else as.vector(t(averages)) + 1e-4
  val <- list(
    per_cluster_mu_fg = mu0, detection_tech_gene_tg = rep(h$tech_mean, K * G),
    detection_mean_y_e = rep(h$detection_mean_alpha / h$detection_mean_beta, E),
    s_g_gene_add_alpha_hyp = hyp_h, s_g_gene_add_mean = rep(smean, E),
    s_g_gene_add_alpha_e_inv = rep(1 / hyp_h, E), s_g_gene_add = rep(smean, E * G),
    alpha_g_phi_hyp = phi, alpha_g_inverse = rep(1 / phi, G)
  )
  tab <- ref_site_table(st)
  loc <- unlist(lapply(tab$name, function(n) log(val[[n]])), use.names = FALSE)
  svi_params_from_flat(loc, rep(log(expm1(0.1)), length(loc)), function(v) ref_unflatten(v, st))
}

# ---- input preparation --------------------------------------------------------------------

# A per-cell annotation: a vector of length n, or (for objects) the name of a metadata column.
ref_cell_vector <- function(v, arg, n, meta) {
  if (is.character(v) && length(v) == 1L && n != 1L && !is.null(meta)) {
    if (!v %in% names(meta)) {
      stopf("'%s' = \"%s\" is not a cell metadata column (have: %s)", arg, v,
            paste(names(meta), collapse = ", "))
    }
    v <- meta[[v]]
  }
  if (!(is.atomic(v) || is.factor(v)) || is.null(v) || !is.null(dim(v))) {
    stopf("'%s' must be a vector with one value per cell", arg)
  }
  check_factor(v, arg)
  if (length(v) != n) stopf("'%s' must have one value per cell (%d), not %d", arg, n, length(v))
  if (anyNA(v)) stopf("'%s' contains NA values (%d cells)", arg, sum(is.na(v)))
  f <- if (is.factor(v)) droplevels(v) else factor(v, levels = sort(unique(as.character(v)), method = "radix"))
  f
}

# Checks and arranges everything for a fit: counts (genes x cells dgCMatrix), groups of cells
# with equal (label, batch, covariate levels), hyper-parameters. A DelayedArray stays on disk
# (`stream` TRUE); its values are checked by the block-wise pass of ref_stream_pass().
ref_prepare <- function(x, labels, batch, covariates, meta, priors) {
  stream <- is_delayed(x)
  x <- if (stream) delayed_check(x, "x") else check_expression(x, "x", integer_valued = TRUE)
  n <- ncol(x)
  if (n < 2L) stopf("'x' must have at least 2 cells (columns)")
  if (is.null(rownames(x))) rownames(x) <- sprintf("gene_%d", seq_len(nrow(x)))
  if (anyDuplicated(rownames(x))) stopf("'x' has duplicated gene names")
  cells <- colnames(x) %||% as.character(seq_len(n))
  lab <- ref_cell_vector(labels, "labels", n, meta)
  nper <- tabulate(lab, nlevels(lab))
  if (any(nper < 2L)) {
    stopf("'labels': each cell type needs at least 2 cells; %s", paste(sprintf("'%s' has %d",
          levels(lab)[nper < 2L], nper[nper < 2L]), collapse = ", "))
  }
  bat <- if (is.null(batch)) factor(rep("all", n)) else ref_cell_vector(batch, "batch", n, meta)
  covs <- list()
  if (!is.null(covariates)) {
    if (is.character(covariates) && !is.null(meta) && all(covariates %in% names(meta)) &&
        length(covariates) != n) {
      covariates <- meta[covariates]
    }
    if (is.atomic(covariates) || is.factor(covariates)) covariates <- list(covariate = covariates)
    if (!is.list(covariates) || length(covariates) < 1L) {
      stopf("'covariates' must be NULL, a data.frame or list of per-cell vectors, or metadata column names")
    }
    nm <- names(covariates)
    if (is.null(nm) || any(!nzchar(nm))) nm <- sprintf("covariate%d", seq_along(covariates))
    for (k in seq_along(covariates)) {
      covs[[nm[k]]] <- ref_cell_vector(covariates[[k]], sprintf("covariates$%s", nm[k]), n, NULL)
    }
  }
  if (!stream) x <- as_dgc(x)
  # groups: cells with the same label, batch and covariate levels share mu_cg
  codes <- cbind(as.integer(lab), as.integer(bat))
  tech_levels <- character(0)
  off <- 0L
  for (k in seq_along(covs)) {
    codes <- cbind(codes, off + as.integer(covs[[k]]))
    tech_levels <- c(tech_levels, paste0(names(covs)[k], "_", levels(covs[[k]])))
    off <- off + nlevels(covs[[k]])
  }
  key <- do.call(paste, c(lapply(seq_len(ncol(codes)), function(j) codes[, j]), sep = "\r"))
  ukey <- unique(key)
  grp <- match(key, ukey)
  first <- match(seq_along(ukey), grp)
  gdef <- t(codes[first, , drop = FALSE]) - 1L
  storage.mode(gdef) <- "integer"
  h <- priors
  st <- list(
    genes = rownames(x), cells = cells, cell_types = levels(lab), batch_levels = levels(bat),
    covariates = lapply(covs, levels), tech_levels = tech_levels,
    n_cells = n, n_genes = nrow(x), n_groups = length(ukey), hyper = h
  )
  list(settings = st, x = x, labels = lab, batch = bat, covariates = covs,
       cell_group = as.integer(grp - 1L), gdef = gdef, stream = stream)
}

ref_priors <- function(alpha_g_phi_hyp_prior, gene_add_alpha_hyp_prior, gene_add_mean_hyp_prior,
                       detection_hyp_prior, gene_tech_prior) {
  c2l_check_prior(alpha_g_phi_hyp_prior, "alpha_g_phi_hyp_prior", c("alpha", "beta"))
  c2l_check_prior(gene_add_alpha_hyp_prior, "gene_add_alpha_hyp_prior", c("alpha", "beta"))
  c2l_check_prior(gene_add_mean_hyp_prior, "gene_add_mean_hyp_prior", c("alpha", "beta"))
  c2l_check_prior(detection_hyp_prior, "detection_hyp_prior", c("mean_alpha", "mean_beta"))
  c2l_check_prior(gene_tech_prior, "gene_tech_prior", c("mean", "alpha"))
  list(
    detection_mean_alpha = detection_hyp_prior$mean_alpha,
    detection_mean_beta = detection_hyp_prior$mean_beta,
    gene_add_alpha_alpha = gene_add_alpha_hyp_prior$alpha,
    gene_add_alpha_beta = gene_add_alpha_hyp_prior$beta,
    gene_add_mean_alpha = gene_add_mean_hyp_prior$alpha,
    gene_add_mean_beta = gene_add_mean_hyp_prior$beta,
    phi_alpha = alpha_g_phi_hyp_prior$alpha, phi_beta = alpha_g_phi_hyp_prior$beta,
    tech_alpha = gene_tech_prior$alpha, tech_mean = gene_tech_prior$mean
  )
}

ref_make_state <- function(prep) {
  st <- prep$settings
  h <- st$hyper
  x <- prep$x
  dims <- c(st$n_cells, st$n_genes, length(st$cell_types), length(st$batch_levels),
            length(st$tech_levels), length(prep$covariates), st$n_groups)
  hyp <- c(h$detection_mean_alpha, h$detection_mean_beta, h$gene_add_alpha_alpha,
           h$gene_add_alpha_beta, h$gene_add_mean_alpha, h$gene_add_mean_beta, h$phi_alpha,
           h$phi_beta, h$tech_alpha, h$tech_alpha / h$tech_mean)
  if (isTRUE(prep$stream)) {
    return(.Call(C_scnative_reg_setup, NULL, NULL, NULL, as.integer(dims), prep$cell_group,
                 prep$gdef, as.double(hyp), prep$stats))
  }
  .Call(C_scnative_reg_setup, x@p, x@i, x@x, as.integer(dims), prep$cell_group, prep$gdef,
        as.double(hyp), NULL)
}

# upstream's default number of epochs (scvi's get_max_epochs_heuristic with epochs_cap = 1000)
ref_default_epochs <- function(n_cells) {
  max(min(round(20000 / n_cells * 1000), 1000), 1)
}

# ---- fitting ------------------------------------------------------------------------------

#' Reference cell type signatures with cell2location's regression model
#'
#' Estimates per-cell-type expected expression ("reference signatures") from single-cell
#' counts with cell2location's negative-binomial regression model (`RegressionModel` of the
#' Python package `cell2location` 0.1.5), natively: the same model (per-type means
#' `per_cluster_mu_fg`, per-batch detection `detection_mean_y_e` and additive background
#' `s_g_gene_add`, multiplicative per-gene effects of categorical technical covariates
#' `detection_tech_gene_tg`, gene-wise over-dispersion), the same mean-field `AutoNormal`
#' guide initialised at the per-type averages, the same optimiser (torch Adam, learning rate
#' 0.002) and the same minibatches (shuffled every epoch, `batch_size = 2500`, the likelihood
#' scaled by cells / minibatch size). Random numbers differ from Python's, so fits agree
#' statistically, not bitwise.
#'
#' The counts stay sparse: each step visits only the non-zero counts of its minibatch, plus one
#' pass per gene and group of cells that share a cell type, batch and covariate levels.
#' Results for a given `seed` do not depend on `threads`. Interrupting (Ctrl-C) returns the fit
#' so far with a warning.
#'
#' A reference larger than memory can be given as a `DelayedArray` (e.g. an `HDF5Array` from
#' the Bioconductor package HDF5Array, or a SingleCellExperiment whose assay is one): the counts
#' are then streamed from disk. One block-wise pass checks the values and computes the per-type
#' averages and the model's per-cell and per-gene constants; each training step reads only its
#' minibatch's cells (as a small sparse block). The fit is the same, bit for bit, as with the
#' counts in memory for the same `seed`. Such a fit keeps no counts (`keep_data` is ignored):
#' continue it with `reference_signatures(x, ..., init = fit)`. The packages DelayedArray (and
#' HDF5Array for HDF5 files) are needed only for such input.
#'
#' Pass the result to [cell2location()] as its `signatures` (it takes [signatures()] of the
#' fit), or take the matrix with [signatures()].
#'
#' @param x single-cell raw counts: a genes x cells matrix, `dgCMatrix` or `DelayedArray`
#'   (e.g. `HDF5Array`, streamed from disk) of non-negative integers (gene names as row names),
#'   or a Seurat object / SingleCellExperiment (see `assay`, `layer`, `assay.type`).
#' @param labels the cell type of each cell: a vector or factor (factor levels give the order of
#'   the cell types; otherwise they are sorted), or for an object the name of a cell metadata
#'   column. Each cell type needs at least 2 cells. (Upstream's `labels_key`.)
#' @param batch `NULL` (one batch) or the batch (e.g. 10x sample) of each cell, a vector or a
#'   metadata column name. (Upstream's `batch_key`.)
#' @param covariates `NULL`, or categorical technical covariates (e.g. method, donor): a
#'   data.frame or named list of per-cell vectors, or metadata column names. A covariate with a
#'   single level is accepted, as upstream. (Upstream's `categorical_covariate_keys`.)
#' @param max_epochs number of epochs; `NULL` uses upstream's heuristic
#'   `min(round(20000 / cells * 1000), 1000)`.
#' @param batch_size cells per minibatch (upstream's 2500); `NULL` for full-batch training.
#' @param lr learning rate.
#' @param use_average_as_initial `TRUE` (upstream's default) to initialise the per-type means at
#'   the per-type average counts.
#' @param alpha_g_phi_hyp_prior,gene_add_alpha_hyp_prior,gene_add_mean_hyp_prior lists with
#'   positive `alpha` and `beta` (upstream's defaults).
#' @param detection_hyp_prior list with positive `mean_alpha` and `mean_beta`.
#' @param gene_tech_prior list with positive `mean` and `alpha`.
#' @param optimizer `"adam"` (torch Adam, upstream's default) or `"clipped_adam"` (pyro's
#'   ClippedAdam; `clip_norm =`, `lrd =` in `...`).
#' @param init `NULL`, or a previous `scnative_reference` fit on the same data: training
#'   continues from its parameters with a fresh optimiser state (as upstream's repeated
#'   `train()`), and the history is appended.
#' @param seed `NULL` or a whole number for the random streams.
#' @param threads `NULL` (the package default, see [scnative_threads()]) or a number of threads.
#' @param progress `TRUE` to show the progress (epochs per second, averaged -ELBO, time left),
#'   as in [cell2location()].
#' @param keep_data `TRUE` (default) to keep the sparse counts in the fit so that
#'   [train_more()] needs no data (ignored for a `DelayedArray` `x`: nothing is kept).
#' @param early_stop `FALSE` (default: all `max_epochs` epochs), `TRUE` or a list of
#'   `patience`, `min_delta`, `window`: stop once the -ELBO averaged over `window` epochs has
#'   not improved by more than `min_delta` (relative) for `patience` epochs, exactly as in
#'   [cell2location()] (section "Early stopping"). With minibatches the per-epoch loss is
#'   noisier, so a longer `window` may be needed.
#' @param ... method arguments (`assay`, `layer` for Seurat; `assay.type` for
#'   SingleCellExperiment); `clip_norm`, `lrd` for ClippedAdam.
#' @return A `scnative_reference` object: a list with `params` (per site, `loc` and `rho`
#'   matrices of the AutoNormal guide, upstream's site names), `history` (data.frame `epoch`,
#'   `elbo_train`), `settings` (genes, cells, cell types, batch and covariate levels, priors,
#'   minibatch size), `optimizer`, `seed`, `steps`, `format` (the object's layout version),
#'   with `keep_data`, `data`, and after training with `early_stop`, `early_stop` (as in
#'   [cell2location()]). The fields are checked whenever the fit is used again (an
#'   edited or damaged field gives an error naming it).
#' @seealso [signatures()], [export_posterior()], [filter_genes()], [cell2location()],
#'   [plot_history()], [train_more()].
#' @examples
#' hip <- example_hippocampus()
#' ref <- hip$reference
#' genes <- filter_genes(ref$counts, cell_count_cutoff = 5, cell_percentage_cutoff2 = 0.03,
#'                       plot = FALSE)
#' fit <- reference_signatures(ref$counts[genes, ], ref$cell_types, max_epochs = 100,
#'                             seed = 1, progress = FALSE)
#' fit
#' sig <- signatures(fit, num_samples = 100)
#' sig[1:3, 1:4]
#' @export
reference_signatures <- function(x, labels, batch = NULL, covariates = NULL, ...) {
  UseMethod("reference_signatures")
}

#' @rdname reference_signatures
#' @export
reference_signatures.default <- function(x, labels, batch = NULL, covariates = NULL,
                                         max_epochs = NULL, batch_size = 2500, lr = 0.002,
                                         use_average_as_initial = TRUE,
                                         alpha_g_phi_hyp_prior = list(alpha = 9, beta = 3),
                                         gene_add_alpha_hyp_prior = list(alpha = 9, beta = 3),
                                         gene_add_mean_hyp_prior = list(alpha = 1, beta = 100),
                                         detection_hyp_prior = list(mean_alpha = 1,
                                                                    mean_beta = 1),
                                         gene_tech_prior = list(mean = 1, alpha = 200),
                                         optimizer = c("adam", "clipped_adam"), init = NULL,
                                         seed = NULL, threads = NULL,
                                         progress = interactive(), keep_data = TRUE,
                                         early_stop = FALSE, ...) {
  ref_fit(x, labels, batch, covariates, NULL, max_epochs, batch_size, lr, use_average_as_initial,
          ref_priors(alpha_g_phi_hyp_prior, gene_add_alpha_hyp_prior, gene_add_mean_hyp_prior,
                     detection_hyp_prior, gene_tech_prior),
          match.arg(optimizer), init, seed, threads, progress, keep_data, list(...), early_stop)
}

#' @rdname reference_signatures
#' @param assay,layer Seurat assay (default: the default assay) and layer/slot (`"counts"`).
#' @export
reference_signatures.Seurat <- function(x, labels, batch = NULL, covariates = NULL, ...,
                                        assay = NULL, layer = "counts") {
  obj_check(x)
  check_string(layer, "layer")
  check_string(assay, "assay", allow_null = TRUE)
  ref_object_fit(x, obj_matrix(x, layer, assay = assay, arg = "layer", delayed = TRUE), labels,
                 batch, covariates, ...)
}

#' @rdname reference_signatures
#' @param assay.type SingleCellExperiment assay name (`"counts"`).
#' @export
reference_signatures.SingleCellExperiment <- function(x, labels, batch = NULL, covariates = NULL,
                                                      ..., assay.type = "counts") {
  obj_check(x)
  ref_object_fit(x, obj_matrix(x, assay.type, arg = "assay.type", delayed = TRUE), labels,
                 batch, covariates, ...)
}

ref_object_fit <- function(object, counts, labels, batch, covariates, ...) {
  if (is.null(colnames(counts))) colnames(counts) <- as.character(seq_len(ncol(counts)))
  meta <- obj_cell_meta(object)
  do.call(reference_signatures.default, c(list(counts, labels, batch, covariates), list(...),
                                         list(.meta = meta)))
}

ref_fit <- function(x, labels, batch, covariates, meta, max_epochs, batch_size, lr,
                    use_average_as_initial, priors, optimizer, init, seed, threads, progress,
                    keep_data, dots, early_stop = FALSE) {
  if (!is.null(dots$.meta)) meta <- dots$.meta
  dots$.meta <- NULL
  check_number(max_epochs, "max_epochs", min = 1, whole = TRUE, allow_null = TRUE)
  check_number(batch_size, "batch_size", min = 1, whole = TRUE, allow_null = TRUE)
  check_flag(use_average_as_initial, "use_average_as_initial")
  check_flag(progress, "progress")
  check_flag(keep_data, "keep_data")
  early_stop <- svi_check_early_stop(early_stop)
  opt <- svi_optimizer(optimizer, lr, dots)
  unknown <- setdiff(names(dots), c("clip_norm", "lrd"))
  if (length(unknown)) stopf("unknown argument(s): %s", paste(unknown, collapse = ", "))
  threads <- resolve_threads(threads)
  seed <- resolve_seed(seed)
  if (!is.null(init) && !inherits(init, "scnative_reference")) {
    stopf("'init' must be NULL or a scnative_reference fit, not %s", class(init)[1L])
  }
  if (!is.null(init)) validate_fit(init, "init")
  prep <- ref_prepare(x, labels, batch, covariates, meta, priors)
  st <- prep$settings
  st$batch_size <- if (is.null(batch_size)) NULL else as.integer(batch_size)
  prep$settings <- st
  epochs <- max_epochs %||% ref_default_epochs(st$n_cells)
  if (prep$stream) {
    # one block-wise pass: checks the values, the model's constants, the per-type averages
    pass <- ref_stream_pass(prep$x, prep$labels, is.null(init) && use_average_as_initial)
    prep$stats <- pass$stats
  }
  if (is.null(init)) {
    avg <- if (!use_average_as_initial) {
      NULL
    } else if (prep$stream) {
      pass$averages
    } else {
      cluster_averages(prep$x, prep$labels)
    }
    params <- ref_init_params(st, avg)
    history <- svi_empty_history()
    steps <- 0
  } else {
    is <- init$settings
    if (!identical(is$genes, st$genes) || !identical(is$cell_types, st$cell_types) ||
        !identical(is$batch_levels, st$batch_levels) ||
        !identical(is$tech_levels, st$tech_levels) || is$n_cells != st$n_cells) {
      stopf("'init' was fitted on different genes, cells, cell types, batches or covariates than 'x', 'labels', 'batch' and 'covariates' give")
    }
    params <- init$params
    history <- init$history
    steps <- init$steps
  }
  ref_fit_run(prep, params, history, steps, epochs, opt, seed, threads, progress, keep_data,
              early_stop)
}

ref_fit_run <- function(prep, params, history, steps, epochs, opt, seed, threads, progress,
                        keep_data, early_stop = NULL) {
  st <- prep$settings
  state <- ref_make_state(prep)
  .Call(C_scnative_reg_set_params, state, ref_flatten(params, st, "loc"),
        ref_flatten(params, st, "rho"))
  bs <- st$batch_size %||% st$n_cells
  mb <- as.integer(c(min(bs, st$n_cells), 0L, 1L))
  optv <- c(opt$lr, opt$clip_norm, opt$lrd, if (opt$name == "clipped_adam") 1 else 0)
  epoch0 <- nrow(history)
  stream <- isTRUE(prep$stream)
  res <- svi_train_blocks(function(k, done) {
    if (stream) {
      r <- ref_stream_epochs(state, prep$x, k, epoch0 + done, steps, optv, mb[1L], seed,
                             threads, function(s) steps <<- s)
    } else {
      r <- .Call(C_scnative_reg_train, state, as.integer(k), as.double(epoch0 + done),
                 as.double(steps), optv, mb, seed, threads)
    }
    steps <<- r$steps
    r$loss
  }, epochs, progress, "reference_signatures", early_stop)
  pr <- .Call(C_scnative_reg_get_params, state)
  fit <- list(
    params = svi_params_from_flat(pr$loc, pr$rho, function(v) ref_unflatten(v, st)),
    history = svi_history_append(history, res$loss), settings = st, optimizer = opt,
    seed = seed, steps = steps,
    data = if (keep_data && !stream) {
      prep[c("x", "labels", "batch", "covariates", "cell_group", "gdef")]
    },
    interrupted = res$interrupted, format = fit_format
  )
  fit$early_stop <- res$early_stop # absent without early stopping
  class(fit) <- "scnative_reference"
  fit
}

#' Continue training a fit
#'
#' Runs `epochs` more epochs of a [cell2location()] or [reference_signatures()] fit from its
#' fitted parameters with a fresh Adam state (as upstream's repeated `train()`); the loss
#' history is appended and the random streams continue after the fit's epochs. The fit's fields
#' (settings, parameters, kept counts) are checked first; an edited or damaged field gives an
#' error naming it.
#'
#' @param fit a `scnative_c2l` or `scnative_reference` fit.
#' @param epochs number of epochs (whole number >= 1).
#' @param ... method arguments: `x` (`NULL` to use the counts kept in the fit, the default
#'   `keep_data = TRUE`; for a `scnative_c2l` fit the same counts may be passed again), `lr`,
#'   `seed`, `threads`, `progress`, `early_stop` (as in [cell2location()]; `epochs` is then the
#'   most to run, and the criterion looks only at this call's epochs). A fit that stopped early
#'   continues where it stopped; the new fit's `early_stop` describes this call (absent without
#'   `early_stop`).
#' @return The updated fit.
#' @examples
#' set.seed(1)
#' sig <- matrix(rgamma(40 * 3, 1), 40, 3,
#'               dimnames = list(paste0("g", 1:40), c("A", "B", "C")))
#' x <- matrix(rpois(40 * 20, 2), 40, 20, dimnames = list(rownames(sig), paste0("s", 1:20)))
#' fit <- cell2location(x, sig, max_epochs = 20, seed = 1, progress = FALSE)
#' fit <- train_more(fit, 20)
#' nrow(fit$history)
#' @export
train_more <- function(fit, epochs, ...) {
  UseMethod("train_more")
}

#' @export
train_more.default <- function(fit, epochs, ...) {
  stopf("'fit' must be a scnative_c2l or scnative_reference fit, not %s", class(fit)[1L])
}

#' @rdname train_more
#' @export
train_more.scnative_reference <- function(fit, epochs, x = NULL, lr = NULL, seed = NULL,
                                          threads = NULL, progress = interactive(),
                                          early_stop = FALSE, ...) {
  validate_fit(fit)
  check_number(epochs, "epochs", min = 1, whole = TRUE)
  check_flag(progress, "progress")
  early_stop <- svi_check_early_stop(early_stop)
  if (!is.null(x)) {
    stopf("for a reference fit, pass the data again with reference_signatures(..., init = fit)")
  }
  if (is.null(fit$data)) {
    stopf("'fit' keeps no counts (made with keep_data = FALSE or from a DelayedArray); use reference_signatures(..., init = fit)")
  }
  opt <- fit$optimizer
  opt$lr <- lr %||% opt$lr
  check_number(opt$lr, "lr", min = 0, min_open = TRUE)
  seed <- if (is.null(seed)) fit$seed else resolve_seed(seed)
  prep <- c(list(settings = fit$settings), fit$data)
  ref_fit_run(prep, fit$params, fit$history, fit$steps, epochs, opt, seed,
              resolve_threads(threads), progress, TRUE, early_stop)
}

# ---- methods ------------------------------------------------------------------------------

#' @method print scnative_reference
#' @export
print.scnative_reference <- function(x, ...) {
  if (print_malformed(x, "scnative_reference")) return(invisible(x))
  st <- x$settings
  h <- x$history
  cat(sprintf("<scnative_reference> regression fit: %d cells x %d genes, %d cell types, %d batch(es)%s\n",
              st$n_cells, st$n_genes, length(st$cell_types), length(st$batch_levels),
              if (length(st$tech_levels)) sprintf(", covariates %s",
                                                   paste(names(st$covariates), collapse = ", ")) else ""))
  cat(sprintf("  epochs: %d (%s, lr %g, %s)%s\n", nrow(h), x$optimizer$name, x$optimizer$lr,
              if (is.null(st$batch_size)) "full batch" else sprintf("minibatches of %d", st$batch_size),
              if (isTRUE(x$interrupted)) ", interrupted" else ""))
  if (!is.null(x$early_stop)) cat(svi_es_format(x$early_stop))
  if (nrow(h) > 0) cat(sprintf("  last -ELBO: %.6g\n", h$elbo_train[nrow(h)]))
  invisible(x)
}

#' @rdname plot_history
#' @export
plot.scnative_reference <- function(x, y, ...) {
  p <- plot_history(x, ...)
  if (!is.null(p)) print(p)
  invisible(p)
}

#' @rdname export_posterior
#' @export
export_posterior.scnative_reference <- function(fit, num_samples = 1000,
                                                quantiles = c(0.05, 0.95),
                                                use_quantiles = FALSE, seed = NULL,
                                                threads = NULL, ...) {
  validate_fit(fit)
  ex <- svi_export(fit$params, num_samples, quantiles, use_quantiles, seed, threads)
  out <- if (use_quantiles) ex$out else svi_posterior_lists(ex$res, quantiles)
  out$cell_types <- fit$settings$cell_types
  out$genes <- fit$settings$genes
  out$num_samples <- if (use_quantiles) NA_integer_ else as.integer(num_samples)
  class(out) <- "scnative_reference_posterior"
  out
}

#' @method print scnative_reference_posterior
#' @export
print.scnative_reference_posterior <- function(x, ...) {
  summ <- setdiff(names(x), c("cell_types", "genes", "num_samples"))
  cat(sprintf("<scnative_reference_posterior> %d genes x %d cell types; summaries: %s\n",
              length(x$genes), length(x$cell_types), paste(summ, collapse = ", ")))
  invisible(x)
}

#' Reference signatures of a regression fit
#'
#' The posterior summary of `per_cluster_mu_fg` (expected counts of each gene in each cell
#' type) as a genes x cell types matrix, as upstream's
#' `adata.varm["means_per_cluster_mu_fg"]`: ready to pass to [cell2location()].
#'
#' @param x a `scnative_reference` fit (then [export_posterior()] runs with `...`) or a
#'   posterior from [export_posterior()].
#' @param which summary: `"means"` (default), `"stds"`, `"q05"`, `"q95"` or another exported
#'   quantile.
#' @param upstream_names `TRUE` for upstream's column names (`means_per_cluster_mu_fg_<type>`),
#'   `FALSE` for the cell type names.
#' @param ... passed to [export_posterior()] when `x` is a fit.
#' @return A numeric matrix, genes x cell types.
#' @examples
#' hip <- example_hippocampus()
#' fit <- reference_signatures(hip$reference$counts, hip$reference$cell_types,
#'                             max_epochs = 50, seed = 1, progress = FALSE)
#' head(signatures(fit, "q05", upstream_names = TRUE, num_samples = 50)[, 1:3])
#' @export
signatures <- function(x, which = "means", upstream_names = FALSE, ...) {
  if (inherits(x, "scnative_reference")) {
    validate_fit(x, "x")
    x <- export_posterior(x, ...)
  }
  if (!inherits(x, "scnative_reference_posterior")) {
    stopf("'x' must be a scnative_reference fit or a posterior from export_posterior()")
  }
  check_flag(upstream_names, "upstream_names")
  m <- t(validate_posterior_summary(x, "x", which, "per_cluster_mu_fg", "genes",
                                    c("cell_types", "genes", "num_samples"),
                                    site_rows_first = FALSE))
  dimnames(m) <- list(x$genes, if (upstream_names) {
    paste0(which, "_per_cluster_mu_fg_", x$cell_types)
  } else {
    x$cell_types
  })
  m
}

# ---- gene filter ----------------------------------------------------------------------------

#' Select genes for reference signatures (cell2location's gene filter)
#'
#' Upstream's recommended filter (`cell2location.utils.filtering.filter_genes`): a gene is kept
#' if it is detected (count > 0) in more than `cell_percentage_cutoff2` of all cells, or in more
#' than `cell_count_cutoff` cells with a mean count over the cells that detect it above
#' `nonz_mean_cutoff`. The comparisons are made on log10 scale as upstream. With `plot = TRUE`
#' the diagnostic plot is drawn: a 2-D histogram of log10 mean non-zero expression against
#' log10 cells detecting the gene, with the excluded region shaded.
#'
#' @param x single-cell raw counts, genes x cells (matrix, `dgCMatrix` or `DelayedArray` such as
#'   an `HDF5Array`, read block by block), or a Seurat object / SingleCellExperiment (see
#'   `assay`, `layer`, `assay.type`).
#' @param cell_count_cutoff genes detected in fewer cells than this are excluded.
#' @param cell_percentage_cutoff2 genes detected in at least this fraction of cells are kept.
#' @param nonz_mean_cutoff genes between the two cut-offs are kept when their mean non-zero
#'   expression is above this.
#' @param plot `TRUE` to draw the diagnostic plot (needs ggplot2).
#' @param ... `assay`, `layer` (Seurat) or `assay.type` (SingleCellExperiment).
#' @return The selected gene names (character, in the order of `x`), with attribute `stats`: a
#'   data.frame with `n_cells`, `nonz_mean` and `selected` per gene; with `plot = TRUE` the
#'   ggplot is attribute `plot`.
#' @examples
#' hip <- example_hippocampus()
#' genes <- filter_genes(hip$reference$counts, cell_count_cutoff = 5,
#'                       cell_percentage_cutoff2 = 0.03, nonz_mean_cutoff = 1.12)
#' length(genes)
#' @export
filter_genes <- function(x, cell_count_cutoff = 15, cell_percentage_cutoff2 = 0.05,
                         nonz_mean_cutoff = 1.12, plot = TRUE, ...) {
  check_number(cell_count_cutoff, "cell_count_cutoff", min = 0, min_open = TRUE)
  check_number(cell_percentage_cutoff2, "cell_percentage_cutoff2", min = 0, max = 1,
               min_open = TRUE)
  check_number(nonz_mean_cutoff, "nonz_mean_cutoff", min = 0, min_open = TRUE)
  check_flag(plot, "plot")
  if (is_seurat(x) || is_sce(x)) {
    dots <- list(...)
    x <- if (is_seurat(x)) {
      obj_matrix(x, dots$layer %||% "counts", assay = dots$assay, arg = "layer", delayed = TRUE)
    } else {
      obj_matrix(x, dots$assay.type %||% "counts", arg = "assay.type", delayed = TRUE)
    }
  }
  stream <- is_delayed(x)
  x <- if (stream) delayed_check(x, "x") else check_expression(x, "x")
  if (is.null(rownames(x))) rownames(x) <- sprintf("gene_%d", seq_len(nrow(x)))
  if (anyNA(rownames(x)) || anyDuplicated(rownames(x))) {
    stopf("'x' has NA or duplicated gene (row) names")
  }
  if (stream) {
    rs <- delayed_row_stats(x, "x")
    n_cells <- rs$n_cells
    tot <- rs$total
  } else {
    n_cells <- if (inherits(x, "Matrix")) Matrix::rowSums(x > 0) else rowSums(x > 0)
    tot <- if (inherits(x, "Matrix")) Matrix::rowSums(x) else rowSums(x)
  }
  nonz_mean <- tot / n_cells
  cc1 <- log10(cell_count_cutoff)
  cc2 <- log10(ncol(x) * cell_percentage_cutoff2)
  nzc <- log10(nonz_mean_cutoff)
  ln <- log10(n_cells)
  lm <- log10(nonz_mean)
  sel <- (ln > cc2) | (ln > cc1 & lm > nzc)
  sel[is.na(sel)] <- FALSE
  genes <- rownames(x)[sel]
  stats <- data.frame(n_cells = as.vector(n_cells), nonz_mean = as.vector(nonz_mean),
                      selected = as.vector(sel), row.names = rownames(x))
  out <- genes
  attr(out, "stats") <- stats
  if (plot) {
    need_pkg("ggplot2", "for the gene filter plot")
    .data <- ggplot2::.data
    keep <- n_cells > 0
    df <- data.frame(lm = lm[keep], ln = ln[keep])
    shade <- data.frame(xmin = c(-Inf, nzc), xmax = c(nzc, Inf), ymin = c(-Inf, -Inf),
                        ymax = c(cc2, cc1))
    p <- ggplot2::ggplot(df, ggplot2::aes(x = .data$lm, y = .data$ln)) +
      ggplot2::geom_rect(data = shade, inherit.aes = FALSE, fill = "darkorange", alpha = 0.3,
                         ggplot2::aes(xmin = .data$xmin, xmax = .data$xmax, ymin = .data$ymin,
                                      ymax = .data$ymax)) +
      ggplot2::geom_bin2d(bins = 100) +
      ggplot2::scale_fill_viridis_c(trans = "log10", name = "genes") +
      ggplot2::geom_vline(xintercept = nzc, colour = "darkorange") +
      ggplot2::geom_hline(yintercept = c(cc1, cc2), colour = "darkorange", linetype = c(1, 2)) +
      ggplot2::labs(x = "Mean non-zero expression level of gene (log10)",
                    y = "Number of cells expressing gene (log10)",
                    title = sprintf("Gene filter: %d cells x %d genes", ncol(x), length(genes))) +
      ggplot2::theme_bw()
    print(p)
    attr(out, "plot") <- p
  }
  out
}

# ---- test helpers (internal) ----------------------------------------------------------------

# log p(x, z) and its gradient w.r.t. u = log z (flat, site order) for a prepared problem;
# `cells` (1-based) a minibatch: the likelihood is scaled by cells / length(cells).
ref_logjoint <- function(prep, u, cells = NULL, threads = 1L) {
  state <- ref_make_state(prep)
  .Call(C_scnative_reg_logjoint, state, as.double(u),
        if (is.null(cells)) NULL else as.integer(cells - 1L), as.integer(threads))
}
