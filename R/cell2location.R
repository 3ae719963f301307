# cell2location's spatial mapping model (spec/cell2location.md): fit, posterior, plots.

# ---- sites ------------------------------------------------------------------------------

# The 17 latent sites in upstream's order with their shapes (rows, cols) as functions of the
# data sizes, and whether rows are spots ("local").
c2l_site_table <- function(S, G, F, R, E) {
  data.frame(
    name = c("m_g_mean", "m_g_alpha_e_inv", "m_g", "n_s_cells_per_location",
             "b_s_groups_per_location", "z_sr_groups_factors", "k_r_factors_per_groups",
             "x_fr_group2fact", "w_sf", "detection_mean_y_e", "detection_y_s",
             "s_g_gene_add_alpha_hyp", "s_g_gene_add_mean", "s_g_gene_add_alpha_e_inv",
             "s_g_gene_add", "alpha_g_phi_hyp", "alpha_g_inverse"),
    nrow = c(1, 1, 1, S, S, S, R, R, S, E, S, 1, E, E, E, 1, E),
    ncol = c(1, 1, G, 1, 1, R, 1, F, F, 1, 1, 1, 1, 1, G, 1, G),
    rows = c("", "", "", "spot", "spot", "spot", "group", "group", "spot", "batch", "spot", "",
             "batch", "batch", "batch", "", "batch"),
    cols = c("", "", "gene", "", "", "group", "", "type", "type", "", "", "", "", "", "gene", "",
             "gene"),
    stringsAsFactors = FALSE
  )
}

c2l_sites_of <- function(st) {
  c2l_site_table(st$n_spots, st$n_genes, st$n_types, st$n_groups, st$n_batches)
}

# TRUE when the user's spots are already in batch order (one batch, or sorted): C order is then
# the user's order, and no reordered copies are made.
c2l_spots_sorted <- function(st) identical(st$spot_order, seq_len(st$n_spots))

# Flat vector (C order: spots sorted by batch) <-> list of matrices (user's spot order).
c2l_unflatten <- function(v, st) {
  tab <- c2l_sites_of(st)
  ord <- st$spot_order
  sorted <- c2l_spots_sorted(st)
  out <- vector("list", nrow(tab))
  names(out) <- tab$name
  pos <- 0
  dn <- c2l_site_dimnames(st)
  for (j in seq_len(nrow(tab))) {
    n <- tab$nrow[j] * tab$ncol[j]
    m <- matrix(v[pos + seq_len(n)], tab$nrow[j], tab$ncol[j])
    pos <- pos + n
    if (tab$rows[j] == "spot" && !sorted) {
      m2 <- m
      m2[ord, ] <- m
      m <- m2
    }
    dimnames(m) <- list(if (nzchar(tab$rows[j])) dn[[tab$rows[j]]],
                        if (nzchar(tab$cols[j])) dn[[tab$cols[j]]])
    out[[j]] <- m
  }
  out
}

c2l_flatten <- function(mats, st) {
  tab <- c2l_sites_of(st)
  ord <- st$spot_order
  sorted <- c2l_spots_sorted(st)
  unlist(lapply(seq_len(nrow(tab)), function(j) {
    m <- mats[[tab$name[j]]]
    if (tab$rows[j] == "spot" && !sorted) m <- m[ord, , drop = FALSE]
    as.double(m)
  }), use.names = FALSE)
}

# Initial guide locations: logs of the hierarchical prior means (spec 3.3); rho = softplus^-1(0.1).
c2l_init_params <- function(st) {
  h <- st$hyper
  S <- st$n_spots; G <- st$n_genes; F <- st$n_types; R <- st$n_groups; E <- st$n_batches
  d_e <- st$detection_mean_e
  val <- list(
    m_g_mean = h$m_g_mu, m_g_alpha_e_inv = 1 / h$m_g_alpha_mean,
    m_g = rep(h$m_g_mu, G), n_s_cells_per_location = rep(h$N, S),
    b_s_groups_per_location = rep(h$B, S), z_sr_groups_factors = rep(h$N / R, S * R),
    k_r_factors_per_groups = rep(h$kappa, R), x_fr_group2fact = rep(1 / F, R * F),
    w_sf = rep(h$N / F, S * F), detection_mean_y_e = d_e,
    detection_y_s = d_e[st$batch_codes],
    s_g_gene_add_alpha_hyp = h$gene_add_alpha_alpha / h$gene_add_alpha_beta,
    s_g_gene_add_mean = rep(h$gene_add_mean_alpha / h$gene_add_mean_beta, E),
    s_g_gene_add_alpha_e_inv = rep(h$gene_add_alpha_beta / h$gene_add_alpha_alpha, E),
    s_g_gene_add = rep(h$gene_add_mean_alpha / h$gene_add_mean_beta, E * G),
    alpha_g_phi_hyp = h$phi_alpha / h$phi_beta,
    alpha_g_inverse = rep(h$phi_beta / h$phi_alpha, E * G)
  )
  tab <- c2l_sites_of(st)
  rho0 <- log(expm1(0.1))
  dn <- c2l_site_dimnames(st)
  params <- lapply(seq_len(nrow(tab)), function(j) {
    d <- list(if (nzchar(tab$rows[j])) dn[[tab$rows[j]]],
              if (nzchar(tab$cols[j])) dn[[tab$cols[j]]])
    list(loc = matrix(log(val[[tab$name[j]]]), tab$nrow[j], tab$ncol[j], dimnames = d),
         rho = matrix(rho0, tab$nrow[j], tab$ncol[j], dimnames = d))
  })
  stats::setNames(params, tab$name)
}

# The dimnames of the sites' rows and columns by kind (c2l_sites_of()'s rows and cols; "" none).
c2l_site_dimnames <- function(st) {
  list(spot = st$spots, gene = st$genes, type = st$cell_types, batch = st$batch_levels,
       group = paste0("group", seq_len(st$n_groups)))
}

# ---- input preparation --------------------------------------------------------------------

# The largest hyperparameter the models take: above it the prior log densities overflow.
prior_max <- 1e100

c2l_check_prior <- function(x, arg, fields) {
  if (!is.list(x) || is.null(names(x)) || !all(fields %in% names(x))) {
    stopf("'%s' must be a list with elements %s", arg, paste(sprintf("'%s'", fields), collapse = ", "))
  }
  for (f in fields) {
    check_number(x[[f]], sprintf("%s$%s", arg, f), min = 0, min_open = TRUE, max = prior_max)
  }
  x
}

# Matches genes, checks everything, and returns the data and settings of a fit.
c2l_prepare <- function(x, signatures, batch, N_cells_per_location, N_given, detection_alpha,
                        A_factors_per_location, B_groups_per_location, n_groups,
                        detection_mean_per_sample, detection_mean_correction,
                        m_g_gene_level_prior, N_cells_mean_var_ratio, alpha_g_phi_hyp_prior,
                        gene_add_alpha_hyp_prior, gene_add_mean_hyp_prior, detection_hyp_prior,
                        w_sf_mean_var_ratio, quiet = FALSE, min_genes = 10L) {
  given <- list(N_cells_per_location = N_cells_per_location,
               A_factors_per_location = A_factors_per_location,
               B_groups_per_location = B_groups_per_location,
               detection_mean_correction = detection_mean_correction,
               N_cells_mean_var_ratio = N_cells_mean_var_ratio,
               w_sf_mean_var_ratio = w_sf_mean_var_ratio)
  for (a in names(given)) check_number(given[[a]], a, min = 0, min_open = TRUE, max = prior_max)
  check_number(n_groups, "n_groups", min = 1, whole = TRUE)
  check_flag(detection_mean_per_sample, "detection_mean_per_sample")
  c2l_check_prior(m_g_gene_level_prior, "m_g_gene_level_prior", c("mean", "mean_var_ratio", "alpha_mean"))
  c2l_check_prior(alpha_g_phi_hyp_prior, "alpha_g_phi_hyp_prior", c("alpha", "beta"))
  c2l_check_prior(gene_add_alpha_hyp_prior, "gene_add_alpha_hyp_prior", c("alpha", "beta"))
  c2l_check_prior(gene_add_mean_hyp_prior, "gene_add_mean_hyp_prior", c("alpha", "beta"))
  c2l_check_prior(detection_hyp_prior, "detection_hyp_prior", "mean_alpha")

  # counts: genes x spots (a DelayedArray is realised block by block as a sparse dgCMatrix)
  if (is_delayed(x)) x <- delayed_as_dgc(x, "x", integer_valued = TRUE)
  if (is.data.frame(x)) x <- as.matrix(x)
  if (!(is.matrix(x) || inherits(x, "Matrix"))) {
    stopf("'x' must be a genes x spots count matrix (matrix or dgCMatrix), not %s", class(x)[1L])
  }
  check_valid_matrix(x, "x") # before the gene subset below touches its slots
  if (is.null(rownames(x))) stopf("'x' must have gene names as row names")
  if (ncol(x) < 1L) stopf("'x' has no spots (columns)")
  if (inherits(signatures, "scnative_reference")) signatures <- signatures(signatures)
  if (is.data.frame(signatures)) signatures <- as.matrix(signatures)
  if (!is.matrix(signatures) || !is.numeric(signatures)) {
    stopf("'signatures' must be a numeric genes x cell types matrix or data.frame")
  }
  if (is.null(rownames(signatures))) stopf("'signatures' must have gene names as row names")
  if (is.null(colnames(signatures))) stopf("'signatures' must have cell type names as column names")
  if (anyDuplicated(rownames(x))) stopf("'x' has duplicated gene names")
  if (anyDuplicated(rownames(signatures))) stopf("'signatures' has duplicated gene names")
  if (anyDuplicated(colnames(signatures)) || anyNA(colnames(signatures))) {
    stopf("'signatures' has NA or duplicated cell type names")
  }
  genes <- intersect(rownames(x), rownames(signatures))
  if (length(genes) == 0L) stopf("'x' and 'signatures' share no gene names")
  if (length(genes) < min_genes) {
    stopf("'x' and 'signatures' share only %d gene names; at least %d are needed", length(genes),
          min_genes)
  }
  if (!quiet) {
    message(sprintf("cell2location: using %d genes shared by 'x' (%d) and 'signatures' (%d)",
                    length(genes), nrow(x), nrow(signatures)))
  }
  sig <- signatures[genes, , drop = FALSE]
  storage.mode(sig) <- "double"
  if (anyNA(sig) || any(!is.finite(sig))) stopf("'signatures' contains NA or infinite values")
  if (any(sig < 0)) stopf("'signatures' contains negative values")
  if (any(sig > prior_max)) {
    stopf("'signatures' has values up to %.3g; at most %.3g are supported (the model's means overflow above): rescale it",
          max(sig), prior_max)
  }
  zero <- colSums(sig) <= 0
  if (any(zero)) {
    stopf("'signatures' column(s) %s are all zero on the shared genes",
          paste(sprintf("'%s'", colnames(sig)[zero]), collapse = ", "))
  }
  xs <- if (identical(rownames(x), genes)) x else x[genes, , drop = FALSE]
  xs <- as_checked_matrix(xs, "x", nonneg = TRUE, integer_valued = TRUE, dense = FALSE)
  xt <- methods::as(methods::as(Matrix::t(xs), "CsparseMatrix"), "generalMatrix")
  if (!methods::is(xt, "dgCMatrix")) xt <- methods::as(xt, "dMatrix")
  S <- nrow(xt)
  spots <- rownames(xt) %||% as.character(seq_len(S))
  rownames(xt) <- spots

  # batch
  if (is.null(batch)) {
    batch <- factor(rep("all", S))
  } else {
    if (!(is.atomic(batch) || is.factor(batch)) || !is.null(dim(batch))) {
      stopf("'batch' must be NULL or a vector with one value per spot (%d)", S)
    }
    check_factor(batch, "batch")
    if (length(batch) != S) {
      stopf("'batch' must have one value per spot (%d), not %d", S, length(batch))
    }
    if (anyNA(batch)) stopf("'batch' contains NA values")
    batch <- droplevels(as.factor(batch))
  }
  levs <- levels(batch)
  E <- length(levs)
  codes <- as.integer(batch)

  # detection_alpha: scalar or one value per batch level (named)
  if (!is.numeric(detection_alpha) || anyNA(detection_alpha) || any(detection_alpha <= 0) ||
      any(!is.finite(detection_alpha))) {
    stopf("'detection_alpha' must be positive finite number(s)")
  }
  if (length(detection_alpha) == 1L) {
    alpha_e <- rep(as.double(detection_alpha), E)
  } else {
    if (is.null(names(detection_alpha)) || !all(levs %in% names(detection_alpha))) {
      stopf("'detection_alpha' must be one number or a vector named by the batch levels (%s)",
            paste(levs, collapse = ", "))
    }
    alpha_e <- as.double(detection_alpha[levs])
  }

  # detection mean (spec 1.2; N = 1 unless N_cells_per_location was passed)
  N_det <- if (N_given) N_cells_per_location else 1
  sc_total <- mean(colSums(sig))
  tot <- Matrix::rowSums(xt)
  if (any(tot <= 0) && !quiet) {
    message(sprintf("cell2location: %d spot(s) have no counts on the shared genes", sum(tot <= 0)))
  }
  if (detection_mean_per_sample) {
    sp_total <- as.vector(tapply(tot, batch, mean))
  } else {
    sp_total <- rep(mean(tot), E)
  }
  d_e <- sp_total / N_det / sc_total * detection_mean_correction
  if (any(!is.finite(d_e)) || any(d_e <= 0)) {
    stopf("'x' has no counts on the shared genes (the detection mean would be %s)", format(d_e[1]))
  }
  hyper <- list(
    N = N_cells_per_location, N_cells_mean_var_ratio = N_cells_mean_var_ratio,
    B = B_groups_per_location, A = A_factors_per_location,
    kappa = A_factors_per_location / B_groups_per_location,
    m_g_mu = m_g_gene_level_prior$mean, m_g_mean_var_ratio = m_g_gene_level_prior$mean_var_ratio,
    m_g_alpha_mean = m_g_gene_level_prior$alpha_mean, w_sf_mean_var_ratio = w_sf_mean_var_ratio,
    detection_mean_alpha = detection_hyp_prior$mean_alpha,
    gene_add_alpha_alpha = gene_add_alpha_hyp_prior$alpha,
    gene_add_alpha_beta = gene_add_alpha_hyp_prior$beta,
    gene_add_mean_alpha = gene_add_mean_hyp_prior$alpha,
    gene_add_mean_beta = gene_add_mean_hyp_prior$beta,
    phi_alpha = alpha_g_phi_hyp_prior$alpha, phi_beta = alpha_g_phi_hyp_prior$beta
  )
  st <- list(
    n_spots = S, n_genes = length(genes), n_types = ncol(sig), n_groups = as.integer(n_groups),
    n_batches = E, genes = genes, spots = spots, cell_types = colnames(sig),
    batch_levels = levs, batch_codes = codes, spot_order = order(codes),
    detection_mean = d_e, detection_mean_e = d_e, detection_alpha = alpha_e,
    detection_mean_per_sample = detection_mean_per_sample,
    detection_mean_correction = detection_mean_correction,
    N_cells_per_location_given = N_given, hyper = hyper
  )
  list(settings = st, xt = xt, signatures = sig, batch = batch)
}

# The C state for a prepared problem.
# precision: "double" or "single" (the S x G pass in float32); gemm (single only): 0 ours,
# 1 the BLAS's sgemm where it exports one (internal, for benchmarks); lean: a state that only
# trains in minibatches (no full-size pass buffers; C_scnative_c2l_train refuses it); kernel
# (single only, internal, for tests): 0 the CPU's best float kernels, 1 AVX-512, 2 AVX2, 3 the
# portable copy (one the CPU lacks gives its best; attr(state, "kernel") names the one used).
c2l_make_state <- function(prep, tiles = c(0L, 0L), precision = "double", gemm = 0L,
                           lean = FALSE, kernel = 0L) {
  st <- prep$settings
  h <- st$hyper
  ord <- st$spot_order
  xt <- if (c2l_spots_sorted(st)) prep$xt else prep$xt[ord, , drop = FALSE]
  bstart <- c(0L, cumsum(tabulate(st$batch_codes, st$n_batches)))
  hyp <- c(h$m_g_mean_var_ratio * h$m_g_mu, h$m_g_mean_var_ratio, h$m_g_alpha_mean, h$N,
           h$N_cells_mean_var_ratio, h$B, h$kappa, h$w_sf_mean_var_ratio, h$detection_mean_alpha,
           h$gene_add_alpha_alpha, h$gene_add_alpha_beta, h$gene_add_mean_alpha,
           h$gene_add_mean_beta, h$phi_alpha, h$phi_beta)
  dims <- c(st$n_spots, st$n_genes, st$n_types, st$n_groups, st$n_batches)
  if (prod(as.double(dims[1:2])) > 2^31 - 1 && length(xt@x) > 2^31 - 1) {
    stopf("'x' has too many non-zero counts for this version")
  }
  .Call(C_scnative_c2l_setup, as.integer(xt@p), as.integer(xt@i), as.double(xt@x),
        as.integer(dims), as.integer(bstart), t(prep$signatures) + 0, as.double(hyp),
        as.double(st$detection_mean_e), as.double(st$detection_alpha),
        as.integer(c(tiles, precision == "single", gemm, lean, kernel)))
}

# ---- training -----------------------------------------------------------------------------

# Runs `epochs` epochs in blocks of .Call's; returns list(loss, params, interrupted).
# `minibatch`: NULL (full batch) or c2l_minibatch()'s settings (spec: cell2location, Minibatch
# regime): each epoch shuffles the training spots into minibatches of batch_size.
c2l_train_blocks <- function(state, prep, params, epochs, epoch0, opt, seed, threads, progress,
                             early_stop = NULL, minibatch = NULL) {
  st <- prep$settings
  .Call(C_scnative_c2l_set_params, state, c2l_flatten(lapply(params, `[[`, "loc"), st),
        c2l_flatten(lapply(params, `[[`, "rho"), st))
  clipped <- if (opt$name == "clipped_adam") 1L else 0L
  run <- if (is.null(minibatch)) {
    function(k, done) {
      .Call(C_scnative_c2l_train, state, as.integer(k), as.double(epoch0 + done), opt$lr,
            clipped, opt$clip_norm, opt$lrd, seed, threads)
    }
  } else {
    train <- c2l_train_spots_c(minibatch$train, st)
    optv <- c(opt$lr, opt$clip_norm, opt$lrd, clipped)
    function(k, done) {
      .Call(C_scnative_c2l_train_mb, state, as.integer(k), as.double(epoch0 + done), optv,
            train, as.integer(minibatch$batch_size), seed, threads)
    }
  }
  res <- svi_train_blocks(run, epochs, progress, "cell2location", early_stop)
  pr <- .Call(C_scnative_c2l_get_params, state)
  res$params <- svi_params_from_flat(pr$loc, pr$rho, function(v) c2l_unflatten(v, st))
  res
}

# The minibatch settings of a fit (spec: cell2location, Minibatch regime), or NULL for full
# batch (batch_size NULL and train_size 1). As upstream's data splitter: ceiling(train_size * S)
# training spots, the others (validation, never trained on) first in a seeded permutation of
# the spots; the plate size is the number of training spots. `train`: the training spots
# (indices in the user's order, increasing).
c2l_minibatch <- function(batch_size, train_size, n_spots, seed) {
  check_number(batch_size, "batch_size", min = 1, whole = TRUE, allow_null = TRUE)
  check_number(train_size, "train_size", min = 0, min_open = TRUE, max = 1)
  if (is.null(batch_size) && train_size == 1) return(NULL)
  n_train <- ceiling(train_size * n_spots)
  if (train_size < 1) {
    perm <- order(rng_uniform(n_spots, seed, stream = 1002))
    train <- sort(perm[seq.int(n_spots - n_train + 1L, length.out = n_train)])
  } else {
    train <- seq_len(n_spots)
  }
  bs <- if (is.null(batch_size)) n_train else min(as.integer(batch_size), n_train)
  list(batch_size = as.integer(bs), train_size = as.double(train_size),
       train = as.integer(train))
}

# The training spots as 0-based positions in the C state's spot order (sorted by batch).
c2l_train_spots_c <- function(train, st) {
  pos <- integer(st$n_spots)
  pos[st$spot_order] <- seq_len(st$n_spots) - 1L
  sort(pos[train])
}

# A fit's minibatch settings (NULL: full batch; validate_fit() has checked them).
c2l_fit_minibatch <- function(fit) fit$minibatch

#' Map cell types onto spatial spots with cell2location's model
#'
#' Fits the cell2location spatial mapping model (`Cell2location.train` of the Python package
#' `cell2location` 0.1.5) natively: the same hierarchical negative-binomial model (17 latent
#' sites, per-batch detection and background), the same mean-field `AutoNormal` guide, the same
#' initialisation and the same optimiser (torch Adam, learning rate 0.002, one full-data step per
#' epoch). Random numbers differ from Python's, so fits agree statistically, not bitwise.
#'
#' **Detection mean.** As upstream, the prior mean of the detection efficiency is computed from
#' the data: the mean total count per spot divided by N and by the mean total of the signature
#' columns (times `detection_mean_correction`). Upstream uses **N = 1** there when
#' `N_cells_per_location` is not passed (although the model itself uses 8); this function does
#' the same (`missing(N_cells_per_location)`), so pass `N_cells_per_location` explicitly (e.g. 30
#' as in the tutorial) for the intended prior.
#'
#' **Genes** are matched by name: only genes in both `x` and `signatures` are used (a message
#' says how many). Batches: spots are sorted by batch internally; results are returned in the
#' input order. **Threads**: results for a given `seed` do not depend on `threads`.
#' **Interrupting** (Ctrl-C) stops between blocks of epochs and returns the fit so far with a
#' warning.
#'
#' @section Early stopping:
#' With `early_stop`, training stops before `max_epochs` once the training loss (-ELBO, the
#' `elbo_train` of the history) has levelled off: from epoch `window` on, the loss averaged
#' over the last `window` epochs is compared with its best value so far; it improves when it
#' falls below `best - min_delta * |best|` (`min_delta` is **relative** to the loss). Training
#' stops at the first epoch that is `patience` epochs after the last improvement. The decision
#' is taken epoch by epoch on the losses alone, so for a given `seed` the stopping epoch does
#' not depend on timing or `threads`, and the fit equals a run with `max_epochs` set to that
#' epoch. The fit records the settings, the reason (`"converged"`, `"max_epochs"` or
#' `"interrupted"`), the epochs run and the best averaged loss in `fit$early_stop`;
#' [train_more()] continues from a stopped fit (with a fresh criterion when given
#' `early_stop`). Upstream, by default, trains for all `max_epochs`.
#'
#' **How the result differs from a full run.** An early-stopped fit is the full run's fit at an
#' earlier epoch, so it is somewhat less converged. On simulated data with a known truth
#' ([simulate_spatial()], 1500 spots x 400 genes x 12 cell types, upstream's `lr = 0.002`,
#' `bench/cell2location_early_stop.R`) the defaults stopped at epoch 13015 of upstream's
#' 30000 (57% of the epochs saved), with the averaged -ELBO 0.17% above the full run's final
#' value; the cell abundances (posterior means of `w_sf`) correlated at r = 0.996 with the
#' full run's, and the accuracy against the truth was Pearson r 0.983 vs 0.987 and AUPRC of
#' presence 0.997 vs 0.999 (early stop vs full run). The accuracy still rose slowly long after
#' the loss had nearly levelled off (r 0.956 at epoch 3000, 0.967 at 7000, 0.978 at 11000,
#' 0.987 at 20000), so a larger `min_delta` or a smaller `patience` saves more epochs at some
#' cost in accuracy. At the size of a Visium section (4000 spots x 10000 genes x 34 types,
#' the same script, 2 threads) the defaults stopped at epoch 8773 of 30000 (71% of the epochs
#' saved; 10 minutes instead of 47 on a shared 2-core machine), the averaged -ELBO 0.24% above
#' the full run's; abundances r = 0.985 with the full run's, truth Pearson r 0.969 vs 0.974 and
#' AUPRC 0.975 vs 0.985. On a smaller simulation (200 spots x 100 genes x 6 types,
#' `lr = 0.01`, 8000 epochs) the defaults stopped at epoch 6821: r = 0.996 between the two
#' fits, truth r 0.876 vs 0.877, AUPRC 1 vs 1.
#'
#' @section Minibatches:
#' With `batch_size` (or `train_size < 1`) training follows upstream's minibatch regime
#' (`Cell2location.train(batch_size =, train_size =)`): `ceiling(train_size * spots)` spots are
#' drawn (with `seed`) for training, the others are never trained on (upstream's validation
#' spots); every epoch shuffles the training spots and cuts them into minibatches of
#' `batch_size` (the last one smaller), one gradient step each. In each step the log densities
#' of the per-spot sites and the likelihood are scaled by (training spots) / (minibatch size)
#' in the model and in the guide, as Pyro's subsampled plate does; the global sites are not
#' scaled. Adam steps every parameter each step, so the parameters of spots outside the
#' minibatch still move with their momentum, as in torch. The loss of an epoch (`elbo_train`)
#' is the mean of its steps' losses, as upstream logs it. The counts stay sparse: a step
#' gathers its spots' non-zero counts (one pass over the non-zeros) and runs the spots x genes
#' pass on its minibatch only; memory grows with spots x cell types, genes x cell types and
#' the non-zeros, never with spots x genes. [train_more()]
#' continues with the fit's minibatch settings. Upstream's maintainers recommend full-batch
#' training for this model; minibatches trade accuracy per epoch for memory and speed per
#' step.
#'
#' @param x spots' counts: a genes x spots matrix, `dgCMatrix` or `DelayedArray` (e.g.
#'   `HDF5Array`; training is full batch, so it is read block by block into a sparse
#'   `dgCMatrix`, never densified) of non-negative integers with gene names as row names; or a
#'   Seurat object or a SingleCellExperiment (see `assay`, `layer`, `assay.type`).
#' @param signatures reference signatures: a genes x cell types numeric matrix or data.frame of
#'   non-negative expected counts per cell (e.g. the posterior means of cell2location's
#'   regression model), gene names as row names, cell type names as column names; or a
#'   [reference_signatures()] fit (its [signatures()] posterior means are used).
#' @param batch `NULL` (one batch) or a vector/factor with one value per spot (experiments).
#' @param N_cells_per_location expected number of cells per spot (positive number, default 8);
#'   see Details for how it enters the detection mean.
#' @param detection_alpha shape of the per-spot detection prior: one positive number, or a
#'   numeric vector named by the batch levels.
#' @param A_factors_per_location,B_groups_per_location expected cell types and groups per spot
#'   (positive numbers).
#' @param n_groups number of latent groups (positive whole number).
#' @param detection_mean_per_sample `TRUE` to compute the detection mean per batch.
#' @param detection_mean_correction positive factor on the detection mean.
#' @param m_g_gene_level_prior list with positive `mean`, `mean_var_ratio`, `alpha_mean`.
#' @param N_cells_mean_var_ratio positive number.
#' @param alpha_g_phi_hyp_prior,gene_add_alpha_hyp_prior,gene_add_mean_hyp_prior lists with
#'   positive `alpha` and `beta`.
#' @param detection_hyp_prior list with positive `mean_alpha`.
#' @param w_sf_mean_var_ratio positive number.
#' @param max_epochs number of epochs, a whole number >= 1: full-data gradient steps, or with
#'   `batch_size` passes over the training spots (one step per minibatch).
#' @param lr learning rate (positive).
#' @param optimizer `"adam"` (torch Adam, upstream's default) or `"clipped_adam"` (pyro's
#'   ClippedAdam with `clip_norm = 10`, `lrd = 1`; change them with `clip_norm =` and `lrd =`
#'   in `...`).
#' @param init `NULL`, or a previous `scnative_c2l` fit on the same data: training continues from
#'   its parameters with a fresh optimiser state (as upstream's repeated `train()`), and the
#'   loss history is appended.
#' @param seed `NULL` or a whole number for the random streams.
#' @param threads `NULL` (the package default, see [scnative_threads()]) or a number of threads.
#' @param progress `TRUE` to show the progress: epochs done, epochs per second, the -ELBO
#'   averaged over the last epochs and the time left (an upper bound with `early_stop`), on one
#'   line updated in place in an interactive session, otherwise one line per tenth of the
#'   epochs; then a summary line. (Messages: [suppressMessages()] silences them.)
#' @param keep_data `TRUE` (default) to keep the (sparse) counts in the fit so that
#'   [train_more()] needs no data.
#' @param precision `"single"` (the default) or `"double"`: the arithmetic of each epoch's
#'   spots x genes pass (the two matrix products through the cell-type signatures and the
#'   negative-binomial terms of every count) and of the guide (the random normals, the sample
#'   and the optimiser step of every parameter). `"single"` runs both in float32, the precision
#'   in which upstream (torch) trains, two to four times faster (4,000 spots x 10,000 genes x
#'   34 types, one thread; the gain depends on the BLAS that the double path uses); the
#'   parameters and the optimiser state are stored in double, and the loss and all prior terms
#'   are computed in double. Its log joint agrees with Pyro's to about 2e-7 (relative); on the
#'   bundled data, 300 epochs, its abundances agree with a double fit's to 1e-3 (relative;
#'   correlation 1 - 3e-11) and its losses to 2e-6. `"double"` runs everything in double. In
#'   both, results for a `seed` do not depend on `threads`.
#' @param early_stop `FALSE` (default, upstream's behaviour: all `max_epochs` epochs), `TRUE`
#'   to stop when the loss has converged (see "Early stopping"), or a list with some of
#'   `patience` (whole number, default 1000), `min_delta` (relative, in \[0, 1\], default
#'   5e-4) and `window` (whole number, default 200); `max_epochs` is then the largest number of
#'   epochs.
#' @param batch_size `NULL` (default, upstream's: full-batch training, one step per epoch on all
#'   spots) or a whole number >= 1: minibatch training (see "Minibatches").
#' @param train_size the fraction of spots to train on, in (0, 1] (default 1, all spots); see
#'   "Minibatches".
#' @param ... method arguments (`assay`, `layer` for Seurat; `assay.type` for
#'   SingleCellExperiment); `clip_norm`, `lrd` for ClippedAdam.
#' @return A `scnative_c2l` object: a list with `params` (per site, `loc` and `rho` matrices of
#'   the AutoNormal guide, upstream site names, spots in the input order), `history`
#'   (data.frame `epoch`, `elbo_train`), `settings` (hyper-parameters and data facts: genes,
#'   spots, cell types, batch levels, detection mean, ...), `signatures` (the matrix used),
#'   `batch`, `optimizer`, `seed`, `precision`, `format` (the object's layout version), with
#'   `keep_data`, `data`, after training with `early_stop`, `early_stop` (see "Early
#'   stopping"), and with minibatches `minibatch` (`batch_size`, `train_size`, `train`: the
#'   training spots). The fields are checked whenever the fit is used again (an edited or
#'   damaged field gives an error naming it).
#' @seealso [export_posterior()], [cell_abundance()], [train_more()], [plot_history()].
#' @examples
#' set.seed(1)
#' sig <- matrix(rgamma(40 * 3, 1), 40, 3,
#'               dimnames = list(paste0("g", 1:40), c("A", "B", "C")))
#' w <- matrix(rgamma(30 * 3, 1, 0.3), 30, 3)
#' x <- matrix(rpois(40 * 30, sig %*% t(w) * 0.05), 40, 30,
#'             dimnames = list(rownames(sig), paste0("s", 1:30)))
#' fit <- cell2location(x, sig, N_cells_per_location = 8, max_epochs = 50,
#'                      seed = 1, progress = FALSE)
#' fit
#' head(cell_abundance(export_posterior(fit, num_samples = 50)))
#' @export
cell2location <- function(x, signatures, ...) {
  UseMethod("cell2location")
}

#' @rdname cell2location
#' @export
cell2location.default <- function(x, signatures, batch = NULL, N_cells_per_location = 8,
                                  detection_alpha = 20, A_factors_per_location = 7,
                                  B_groups_per_location = 7, n_groups = 50,
                                  detection_mean_per_sample = FALSE,
                                  detection_mean_correction = 1,
                                  m_g_gene_level_prior = list(mean = 1, mean_var_ratio = 1,
                                                              alpha_mean = 3),
                                  N_cells_mean_var_ratio = 1,
                                  alpha_g_phi_hyp_prior = list(alpha = 9, beta = 3),
                                  gene_add_alpha_hyp_prior = list(alpha = 9, beta = 3),
                                  gene_add_mean_hyp_prior = list(alpha = 1, beta = 100),
                                  detection_hyp_prior = list(mean_alpha = 10),
                                  w_sf_mean_var_ratio = 5, max_epochs = 30000, lr = 0.002,
                                  optimizer = c("adam", "clipped_adam"), init = NULL,
                                  seed = NULL, threads = NULL, progress = interactive(),
                                  keep_data = TRUE, precision = c("single", "double"),
                                  early_stop = FALSE, batch_size = NULL, train_size = 1, ...) {
  N_given <- !missing(N_cells_per_location)
  optimizer <- match.arg(optimizer)
  precision <- check_choice(precision, c("single", "double"), "precision")
  check_number(max_epochs, "max_epochs", min = 1, whole = TRUE)
  check_flag(progress, "progress")
  early_stop <- svi_check_early_stop(early_stop)
  check_flag(keep_data, "keep_data")
  opt <- svi_optimizer(optimizer, lr, list(...))
  threads <- resolve_threads(threads)
  seed <- resolve_seed(seed)
  check_number(batch_size, "batch_size", min = 1, whole = TRUE, allow_null = TRUE)
  check_number(train_size, "train_size", min = 0, min_open = TRUE, max = 1)
  if (!is.null(init) && !inherits(init, "scnative_c2l")) {
    stopf("'init' must be NULL or a scnative_c2l fit, not %s", class(init)[1L])
  }
  if (!is.null(init)) validate_fit(init, "init")
  prep <- c2l_prepare(x, signatures, batch, N_cells_per_location, N_given, detection_alpha,
                      A_factors_per_location, B_groups_per_location, n_groups,
                      detection_mean_per_sample, detection_mean_correction,
                      m_g_gene_level_prior, N_cells_mean_var_ratio, alpha_g_phi_hyp_prior,
                      gene_add_alpha_hyp_prior, gene_add_mean_hyp_prior, detection_hyp_prior,
                      w_sf_mean_var_ratio)
  st <- prep$settings
  history <- svi_empty_history()
  if (is.null(init)) {
    params <- c2l_init_params(st)
  } else {
    is <- init$settings
    if (!identical(is$genes, st$genes) || !identical(is$spots, st$spots) ||
        !identical(is$cell_types, st$cell_types) || is$n_groups != st$n_groups ||
        !identical(is$batch_levels, st$batch_levels)) {
      stopf("'init' was fitted on different genes, spots, cell types, groups or batches than 'x', 'signatures', 'batch' and 'n_groups' give")
    }
    params <- init$params
    history <- init$history
  }
  minibatch <- c2l_minibatch(batch_size, train_size, st$n_spots, seed)
  c2l_fit_run(prep, params, history, max_epochs, opt, seed, threads, progress, keep_data,
              precision, early_stop, minibatch)
}

c2l_fit_run <- function(prep, params, history, epochs, opt, seed, threads, progress, keep_data,
                        precision, early_stop = NULL, minibatch = NULL) {
  state <- c2l_make_state(prep, precision = precision, lean = !is.null(minibatch))
  res <- c2l_train_blocks(state, prep, params, epochs, nrow(history), opt, seed, threads, progress,
                          early_stop, minibatch)
  fit <- list(
    params = res$params, history = svi_history_append(history, res$loss),
    settings = prep$settings, signatures = prep$signatures, batch = prep$batch,
    optimizer = opt, seed = seed, data = if (keep_data) list(xt = prep$xt) else NULL,
    interrupted = res$interrupted, format = fit_format, precision = precision
  )
  fit$early_stop <- res$early_stop # absent without early stopping
  fit$minibatch <- minibatch # absent in full batch
  class(fit) <- "scnative_c2l"
  fit
}

#' @rdname cell2location
#' @param assay,layer Seurat assay (default: the default assay) and layer/slot (`"counts"`).
#' @export
cell2location.Seurat <- function(x, signatures, ..., assay = NULL, layer = "counts") {
  obj_check(x)
  check_string(layer, "layer")
  check_string(assay, "assay", allow_null = TRUE)
  counts <- obj_matrix(x, layer, assay = assay, arg = "layer", delayed = TRUE)
  cell2location.default(counts, signatures, ...)
}

#' @rdname cell2location
#' @param assay.type SingleCellExperiment assay name (`"counts"`).
#' @export
cell2location.SingleCellExperiment <- function(x, signatures, ..., assay.type = "counts") {
  obj_check(x)
  counts <- obj_matrix(x, assay.type, arg = "assay.type", delayed = TRUE)
  if (is.null(colnames(counts))) colnames(counts) <- as.character(seq_len(ncol(counts)))
  cell2location.default(counts, signatures, ...)
}

#' @rdname train_more
#' @param x `NULL` to use the kept counts, or the same counts as for the fit.
#' @param lr learning rate; default: the fit's.
#' @param seed `NULL` (the fit's seed) or a whole number.
#' @param threads,progress,early_stop as in [cell2location()] (`epochs` is then the largest
#'   number of epochs to run).
#' @param precision `NULL` (the fit's) or `"single"` / `"double"`, as in [cell2location()].
#' @export
train_more.scnative_c2l <- function(fit, epochs, x = NULL, lr = NULL, seed = NULL, threads = NULL,
                                    progress = interactive(), precision = NULL,
                                    early_stop = FALSE, ...) {
  validate_fit(fit)
  precision <- if (is.null(precision)) fit$precision %||% "double" else
    check_choice(precision, c("single", "double"), "precision")
  check_number(epochs, "epochs", min = 1, whole = TRUE)
  check_flag(progress, "progress")
  early_stop <- svi_check_early_stop(early_stop)
  opt <- fit$optimizer
  opt$lr <- lr %||% opt$lr
  check_number(opt$lr, "lr", min = 0, min_open = TRUE)
  seed <- if (is.null(seed)) fit$seed else resolve_seed(seed)
  threads <- resolve_threads(threads)
  st <- fit$settings
  if (is.null(x)) {
    if (is.null(fit$data)) stopf("'fit' was made with keep_data = FALSE; pass the counts as 'x'")
    prep <- list(settings = st, xt = fit$data$xt, signatures = fit$signatures, batch = fit$batch)
  } else {
    h <- st$hyper
    prep <- c2l_prepare(x, fit$signatures, fit$batch, h$N, st$N_cells_per_location_given,
                        stats::setNames(st$detection_alpha, st$batch_levels), h$A, h$B,
                        st$n_groups, st$detection_mean_per_sample, st$detection_mean_correction,
                        list(mean = h$m_g_mu, mean_var_ratio = h$m_g_mean_var_ratio,
                             alpha_mean = h$m_g_alpha_mean), h$N_cells_mean_var_ratio,
                        list(alpha = h$phi_alpha, beta = h$phi_beta),
                        list(alpha = h$gene_add_alpha_alpha, beta = h$gene_add_alpha_beta),
                        list(alpha = h$gene_add_mean_alpha, beta = h$gene_add_mean_beta),
                        list(mean_alpha = h$detection_mean_alpha), h$w_sf_mean_var_ratio,
                        quiet = TRUE)
    if (!identical(prep$settings$genes, st$genes) || !identical(prep$settings$spots, st$spots)) {
      stopf("'x' does not have the genes and spots of the fit")
    }
    prep$settings <- st
  }
  c2l_fit_run(prep, fit$params, fit$history, epochs, opt, seed, threads, progress,
              !is.null(fit$data), precision, early_stop, c2l_fit_minibatch(fit))
}

# ---- methods -------------------------------------------------------------------------------

#' @method print scnative_c2l
#' @export
print.scnative_c2l <- function(x, ...) {
  if (print_malformed(x, "scnative_c2l")) return(invisible(x))
  st <- x$settings
  h <- x$history
  cat(sprintf("<scnative_c2l> cell2location fit: %d spots x %d genes, %d cell types, %d groups, %d batch(es)\n",
              st$n_spots, st$n_genes, st$n_types, st$n_groups, st$n_batches))
  cat(sprintf("  epochs: %d (%s, lr %g)%s\n", nrow(h), x$optimizer$name, x$optimizer$lr,
              if (isTRUE(x$interrupted)) ", interrupted" else ""))
  if (!is.null(x$early_stop)) cat(svi_es_format(x$early_stop))
  mb <- x$minibatch
  if (is.list(mb) && length(mb$batch_size) == 1L) {
    cat(sprintf("  minibatches of %d spots (%d training spots)\n", as.integer(mb$batch_size),
                length(mb$train)))
  }
  if (nrow(h) > 0) {
    cat(sprintf("  last -ELBO: %.6g\n", h$elbo_train[nrow(h)]))
  }
  cat(sprintf("  N_cells_per_location %g, detection_alpha %s, detection mean %s\n", st$hyper$N,
              paste(format(st$detection_alpha), collapse = "/"),
              paste(format(signif(st$detection_mean, 4)), collapse = "/")))
  invisible(x)
}

#' @method summary scnative_c2l
#' @export
summary.scnative_c2l <- function(object, ...) {
  validate_fit(object, "object")
  st <- object$settings
  h <- object$history
  w <- exp(object$params$w_sf$loc)
  out <- list(
    n_spots = st$n_spots, n_genes = st$n_genes, n_types = st$n_types, n_groups = st$n_groups,
    batches = st$batch_levels, epochs = nrow(h),
    final_elbo = if (nrow(h)) h$elbo_train[nrow(h)] else NA_real_,
    detection_mean = st$detection_mean,
    median_abundance = sort(apply(w, 2, stats::median), decreasing = TRUE),
    median_cells_per_spot = stats::median(rowSums(w))
  )
  class(out) <- "summary.scnative_c2l"
  out
}

#' @method print summary.scnative_c2l
#' @export
print.summary.scnative_c2l <- function(x, ...) {
  cat(sprintf("cell2location fit: %d spots, %d genes, %d cell types, %d groups, batches: %s\n",
              x$n_spots, x$n_genes, x$n_types, x$n_groups, paste(x$batches, collapse = ", ")))
  cat(sprintf("epochs: %d, final -ELBO: %.6g\n", x$epochs, x$final_elbo))
  cat(sprintf("median cells per spot (guide median of w_sf): %.3g\n", x$median_cells_per_spot))
  cat("median abundance per cell type (top 10):\n")
  print(utils::head(signif(x$median_abundance, 3), 10))
  invisible(x)
}

#' @rdname plot_history
#' @param y unused.
#' @export
plot.scnative_c2l <- function(x, y, ...) {
  p <- plot_history(x, ...)
  if (!is.null(p)) print(p)
  invisible(p)
}

# ---- posterior -----------------------------------------------------------------------------

#' @rdname export_posterior
#' @export
export_posterior.scnative_c2l <- function(fit, num_samples = 1000, quantiles = c(0.05, 0.95),
                                          use_quantiles = FALSE, seed = NULL, threads = NULL,
                                          ...) {
  validate_fit(fit)
  p <- fit$params
  ex <- svi_export(p, num_samples, quantiles, use_quantiles, seed, threads)
  if (use_quantiles) {
    out <- ex$out
  } else {
    num <- as.integer(num_samples)
    res <- ex$res
    # deterministic sites
    jm <- match("m_g", names(p))
    jw <- match("w_sf", names(p))
    mdraws <- svi_site_draws(jm, p$m_g, num, ex$seed)
    cmult <- mdraws %*% fit$signatures # num x F
    S <- nrow(p$w_sf$loc)
    res$u_sf_mRNA_factors <- svi_site_summary(jw, p$w_sf, num, ex$seed, quantiles, ex$threads,
                                              cmult, rep(seq_len(ncol(cmult)) - 1L, each = S))
    E <- length(fit$settings$batch_levels)
    ad <- matrix(fit$settings$detection_alpha, E, 1,
                 dimnames = list(fit$settings$batch_levels, NULL))
    res$detection_hyp_prior_alpha <- list(mean = ad, sd = ad * 0,
                                          q = rep(list(ad), length(quantiles)))
    out <- svi_posterior_lists(res, quantiles)
  }
  out$cell_types <- fit$settings$cell_types
  out$spots <- fit$settings$spots
  out$num_samples <- if (use_quantiles) NA_integer_ else as.integer(num_samples)
  class(out) <- "scnative_c2l_posterior"
  out
}

#' @method print scnative_c2l_posterior
#' @export
print.scnative_c2l_posterior <- function(x, ...) {
  summ <- setdiff(names(x), c("cell_types", "spots", "num_samples"))
  cat(sprintf("<scnative_c2l_posterior> %d spots x %d cell types; summaries: %s\n",
              length(x$spots), length(x$cell_types), paste(summ, collapse = ", ")))
  invisible(x)
}

#' Cell abundances per spot
#'
#' The posterior summary of `w_sf` (cells of each type per spot) as a spots x cell types matrix.
#'
#' @param x a `scnative_c2l_posterior` from [export_posterior()], or a `scnative_c2l` fit (then
#'   [export_posterior()] runs with `...`).
#' @param which summary: `"means"`, `"stds"`, `"q05"`, `"q95"` or another exported quantile.
#' @param upstream_names `TRUE` for upstream's column names
#'   (`meanscell_abundance_w_sf_<type>`), `FALSE` for the cell type names.
#' @param ... passed to [export_posterior()] when `x` is a fit.
#' @return A numeric matrix, spots x cell types.
#' @examples
#' set.seed(1)
#' sig <- matrix(rgamma(40 * 3, 1), 40, 3,
#'               dimnames = list(paste0("g", 1:40), c("A", "B", "C")))
#' x <- matrix(rpois(40 * 20, 2), 40, 20, dimnames = list(rownames(sig), paste0("s", 1:20)))
#' fit <- cell2location(x, sig, max_epochs = 30, seed = 1, progress = FALSE)
#' head(cell_abundance(fit, "q05", upstream_names = TRUE, num_samples = 50))
#' @export
cell_abundance <- function(x, which = "means", upstream_names = FALSE, ...) {
  c2l_abundance(x, which, upstream_names, "x", ...)
}

# cell_abundance() with the argument's name for the errors (add_cell_abundance's differs).
c2l_abundance <- function(x, which, upstream_names, arg, ...) {
  if (inherits(x, "scnative_c2l")) {
    validate_fit(x, arg)
    x <- export_posterior(x, ...)
  }
  if (!inherits(x, "scnative_c2l_posterior")) {
    stopf("'%s' must be a scnative_c2l fit or a posterior from export_posterior()", arg)
  }
  check_flag(upstream_names, "upstream_names")
  m <- validate_posterior_summary(x, arg, which, "w_sf", "spots",
                                  c("cell_types", "spots", "num_samples"))
  colnames(m) <- if (upstream_names) paste0(which, "cell_abundance_w_sf_", x$cell_types) else x$cell_types
  rownames(m) <- x$spots
  m
}

#' Add cell abundances to a Seurat object or SingleCellExperiment
#'
#' Adds the posterior cell abundances (spots x cell types) to the object and leaves everything
#' else untouched. Seurat: a new assay (default `"cell2location"`) with the cell types as
#' features, like Seurat's own prediction assays. SingleCellExperiment: a reducedDim
#' `"cell2location"` and, with `coldata = TRUE`, colData columns with upstream's names.
#'
#' @param object a Seurat object or SingleCellExperiment whose columns include the fit's spots.
#' @param fit_or_posterior a `scnative_c2l` fit or a posterior from [export_posterior()].
#' @param which the summary to add (`"means"`, `"q05"`, ...).
#' @param name assay / reducedDim name.
#' @param coldata (SingleCellExperiment) also add colData columns.
#' @param ... passed to [export_posterior()] when given a fit.
#' @return The object with the abundances added.
#' @export
add_cell_abundance <- function(object, fit_or_posterior, which = "means",
                               name = "cell2location", coldata = FALSE, ...) {
  obj_check(object, "object")
  check_string(name, "name")
  check_flag(coldata, "coldata")
  if (inherits(fit_or_posterior, "scnative_c2l")) {
    validate_fit(fit_or_posterior, "fit_or_posterior")
  }
  ab <- c2l_abundance(fit_or_posterior, which, FALSE, "fit_or_posterior", ...)
  spots <- colnames(object)
  if (is.null(spots) || !all(rownames(ab) %in% spots)) {
    stopf("the spots of the fit are not all columns of 'object'")
  }
  full <- matrix(NA_real_, length(spots), ncol(ab), dimnames = list(spots, colnames(ab)))
  full[rownames(ab), ] <- ab
  if (is_seurat(object)) {
    mat <- t(full)
    rownames(mat) <- gsub("_", "-", rownames(mat)) # Seurat feature names cannot hold '_'
    return(obj_set_matrix(object, name, mat))
  }
  if (inherits(object, "SingleCellExperiment")) {
    SingleCellExperiment::reducedDim(object, name) <- full
    if (coldata) {
      df <- as.data.frame(full, optional = TRUE)
      names(df) <- paste0(which, "cell_abundance_w_sf_", colnames(full))
      object <- obj_add_cell_meta(object, df)
    }
    return(object)
  }
  stopf("'object' must be a Seurat object or a SingleCellExperiment, not %s", class(object)[1L])
}

# ---- test helpers (internal) ----------------------------------------------------------------

# log p(x, z) and its gradient w.r.t. u = log z for a prepared problem (flat u in C order).
c2l_logjoint <- function(prep, u, threads = 1L, precision = "double", gemm = 0L) {
  state <- c2l_make_state(prep, precision = precision, gemm = gemm)
  .Call(C_scnative_c2l_logjoint, state, as.double(u), as.integer(threads))
}

# The same on the minibatch of `spots` (0-based positions in C order, increasing) with plate
# scale n / length(spots); u is the minibatch guide's flat vector (local rows in spot order).
c2l_logjoint_mb <- function(prep, u, spots, n, threads = 1L, precision = "double") {
  state <- c2l_make_state(prep, precision = precision, lean = TRUE)
  .Call(C_scnative_c2l_logjoint_mb, state, as.double(u), as.integer(threads),
        as.integer(spots), as.double(n))
}
