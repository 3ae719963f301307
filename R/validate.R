# Checks of the fits of cell2location() (class "scnative_c2l") and reference_signatures()
# ("scnative_reference") before their fields are used. A fit is a plain list that users save,
# reload, edit and mix between versions, and the C core trusts the sizes, codes and counts it is
# handed; so every field is checked here (presence, type, length or dims against the settings,
# ranges, codes of the kept data) and an error names the first bad field, e.g.
# 'fit$params$w_sf$rho'. Nothing is modified.

# The layout version written into new fits as `fit$format`. Fits without it (made before the
# field was added) have the same layout; a fit from a newer layout is refused.
fit_format <- 1L

# Checks a fit of either class; `arg` names it in errors. `data = FALSE` skips the kept counts
# (`fit$data`) for the uses that do not read them (posterior, printing, plots, `init =`).
validate_fit <- function(fit, arg = "fit", data = TRUE) {
  if (inherits(fit, "scnative_c2l")) return(validate_c2l_fit(fit, arg, data))
  if (inherits(fit, "scnative_reference")) return(validate_ref_fit(fit, arg, data))
  stopf("'%s' must be a scnative_c2l or scnative_reference fit, not %s", arg, class(fit)[1L])
}

# For print methods: TRUE after printing a one-line note when `x` is not a valid fit, so that a
# damaged object can still be printed (and then inspected with str()).
print_malformed <- function(x, cls) {
  msg <- tryCatch({
    validate_fit(x, "x", data = FALSE)
    NULL
  }, error = conditionMessage)
  if (is.null(msg)) return(FALSE)
  cat(sprintf("<%s> malformed fit: %s\n", cls, msg))
  TRUE
}

# ---- small checkers (each names `path`, e.g. "fit$settings$genes") ---------------------------

vf_path <- function(path, name) sprintf("%s$%s", path, name)

# x[[name]] (exact name); an error if absent unless `optional`.
vf_get <- function(x, name, path, optional = FALSE) {
  if (!name %in% names(x)) {
    if (optional) return(NULL)
    stopf("'%s' is missing", vf_path(path, name))
  }
  x[[name]]
}

vf_list <- function(x, path) {
  if (!is.list(x) || is.data.frame(x)) stopf("'%s' must be a list, not %s", path, class(x)[1L])
  invisible(x)
}

vf_flag <- function(x, path) {
  if (!is.logical(x) || length(x) != 1L || is.na(x)) stopf("'%s' must be TRUE or FALSE", path)
  invisible(x)
}

vf_whole <- function(x, path, min = 0, max = .Machine$integer.max) {
  if (!is.numeric(x) || length(x) != 1L || !is.finite(x) || x != round(x) || x < min ||
      x > max) {
    stopf("'%s' must be a whole number >= %s%s", path, format(min),
          if (is.finite(max) && max < .Machine$integer.max) sprintf(" and <= %s", format(max)) else "")
  }
  invisible(x)
}

# Finite numbers (`n` of them), all > 0 with `positive`.
vf_numbers <- function(x, path, n = 1L, positive = FALSE, max = Inf) {
  if (!is.numeric(x) || length(x) != n || !all(is.finite(x)) || (positive && any(x <= 0))) {
    stopf("'%s' must be %s %sfinite number%s", path, if (n == 1L) "a" else as.character(n),
          if (positive) "positive " else "", if (n == 1L) "" else "s")
  }
  if (any(x > max)) stopf("'%s' must be at most %s", path, format(max))
  invisible(x)
}

# Names (genes, cell types, levels): a character vector of length n without NA.
vf_names <- function(x, path, n = NULL, unique = TRUE, min = 0L) {
  if (!is.character(x) || anyNA(x) || !is.null(dim(x))) {
    stopf("'%s' must be a character vector without NA", path)
  }
  if (!is.null(n) && length(x) != n) {
    stopf("'%s' must have length %d matching the fit's settings (has %d)", path, n, length(x))
  }
  if (length(x) < min) stopf("'%s' must have at least %d element(s)", path, min)
  if (unique && anyDuplicated(x)) stopf("'%s' has duplicated values", path)
  invisible(x)
}

# Integer codes: `n` whole numbers in [lo, hi].
vf_codes <- function(x, path, n, lo, hi) {
  if (!is.numeric(x) || length(x) != n) {
    stopf("'%s' must be %d whole numbers matching the fit's settings", path, n)
  }
  if (anyNA(x) || any(x != round(x)) || any(x < lo) || any(x > hi)) {
    stopf("'%s' must hold whole numbers in %d..%d", path, lo, hi)
  }
  invisible(x)
}

# What x is, for the errors: "3 x 3", "3 x 3 character", "a double vector of length 5", ...
vf_shape <- function(x) {
  if (is.matrix(x)) {
    return(paste0(paste(dim(x), collapse = " x "), if (is.numeric(x)) "" else paste0(" ", typeof(x))))
  }
  if (is.atomic(x) && is.null(dim(x))) return(sprintf("a %s vector of length %d", typeof(x), length(x)))
  sprintf("a %s", class(x)[1L])
}

# A numeric nr x nc matrix of finite values (non-negative with `nonneg`).
vf_matrix <- function(x, path, nr, nc, nonneg = FALSE) {
  if (!is.numeric(x) || !is.matrix(x) || nrow(x) != nr || ncol(x) != nc) {
    stopf("'%s' must be a %d x %d numeric matrix matching the fit's settings (is %s)", path, nr,
          nc, vf_shape(x))
  }
  if (!all(is.finite(x))) stopf("'%s' contains NA, NaN or infinite values", path)
  if (nonneg && any(x < 0)) stopf("'%s' contains negative values", path)
  invisible(x)
}

# A factor of length n with exactly the given levels.
vf_factor <- function(x, path, n, levels) {
  if (!is.factor(x) || length(x) != n || anyNA(x)) {
    stopf("'%s' must be a factor of length %d without NA matching the fit's settings", path, n)
  }
  if (!identical(levels(x), levels)) stopf("'%s' must have the fit's levels (%s)", path,
                                           paste(levels, collapse = ", "))
  invisible(x)
}

# Kept counts: a valid nr x nc dgCMatrix of finite non-negative whole numbers.
vf_counts <- function(x, path, nr, nc, what) {
  if (!methods::is(x, "dgCMatrix")) stopf("'%s' must be a dgCMatrix, not %s", path, class(x)[1L])
  check_valid_matrix(x, path)
  if (nrow(x) != nr || ncol(x) != nc) {
    stopf("'%s' must be a %d x %d sparse matrix (%s) matching the fit's settings (is %d x %d)",
          path, nr, nc, what, nrow(x), ncol(x))
  }
  flags <- .Call(C_scnative_value_flags, x@x)
  if (any(flags[1:4] != 0)) stopf("'%s' must hold finite non-negative whole numbers", path)
  invisible(x)
}

# The guide's parameters: exactly the sites of `tab` (name, nrow, ncol) in order, each
# list(loc, rho) of finite matrices of the site's shape.
vf_params <- function(params, tab, path) {
  vf_list(params, path)
  if (!identical(names(params), tab$name)) {
    miss <- setdiff(tab$name, names(params))
    if (length(miss)) stopf("'%s' is missing site(s) %s", path, paste(sprintf("'%s'", miss),
                                                                     collapse = ", "))
    extra <- setdiff(names(params), tab$name)
    if (length(extra)) stopf("'%s' has unknown site(s) %s", path, paste(sprintf("'%s'", extra),
                                                                       collapse = ", "))
    stopf("'%s' must hold the sites %s in this order", path, paste(tab$name, collapse = ", "))
  }
  for (j in seq_len(nrow(tab))) {
    sp <- vf_path(path, tab$name[j])
    s <- params[[j]]
    vf_list(s, sp)
    for (f in c("loc", "rho")) vf_matrix(vf_get(s, f, sp), vf_path(sp, f), tab$nrow[j], tab$ncol[j])
  }
  invisible(params)
}

vf_history <- function(h, path) {
  if (!is.data.frame(h) || !all(c("epoch", "elbo_train") %in% names(h))) {
    stopf("'%s' must be a data.frame with columns epoch and elbo_train", path)
  }
  e <- h$epoch
  if (!is.numeric(e) || !all(is.finite(e)) || any(e != round(e)) || any(e < 0)) {
    stopf("'%s' must hold whole numbers >= 0", vf_path(path, "epoch"))
  }
  if (!is.numeric(h$elbo_train) || !all(is.finite(h$elbo_train))) {
    stopf("'%s' must hold finite numbers", vf_path(path, "elbo_train"))
  }
  invisible(h)
}

vf_optimizer <- function(o, path) {
  vf_list(o, path)
  name <- vf_get(o, "name", path)
  if (!is.character(name) || length(name) != 1L || !name %in% c("adam", "clipped_adam")) {
    stopf("'%s' must be \"adam\" or \"clipped_adam\"", vf_path(path, "name"))
  }
  for (f in c("lr", "clip_norm", "lrd")) {
    vf_numbers(vf_get(o, f, path), vf_path(path, f), positive = TRUE)
  }
  invisible(o)
}

# The fit-level fields both classes share: format (first: a newer layout is not checked
# further), interrupted, seed, optimizer, history, early_stop.
vf_common <- function(fit, arg) {
  if (!is.list(fit)) stopf("'%s' must be a list (a fit object), not %s", arg, typeof(fit))
  fmt <- vf_get(fit, "format", arg, optional = TRUE)
  if (!is.null(fmt)) {
    vf_whole(fmt, vf_path(arg, "format"), min = 1)
    if (fmt > fit_format) {
      stopf("'%s' was made by a newer scnative (format %d); this version reads fits up to format %d, please update scnative",
            arg, as.integer(fmt), fit_format)
    }
  }
  intr <- vf_get(fit, "interrupted", arg, optional = TRUE)
  if (!is.null(intr)) vf_flag(intr, vf_path(arg, "interrupted"))
  seed <- vf_get(fit, "seed", arg)
  if (!is.numeric(seed) || length(seed) != 1L || !is.finite(seed) || seed != round(seed) ||
      seed < 0 || seed >= 2^53) {
    stopf("'%s' must be a whole number in [0, 2^53)", vf_path(arg, "seed"))
  }
  vf_optimizer(vf_get(fit, "optimizer", arg), vf_path(arg, "optimizer"))
  h <- vf_get(fit, "history", arg)
  vf_history(h, vf_path(arg, "history"))
  es <- vf_get(fit, "early_stop", arg, optional = TRUE)
  if (!is.null(es)) vf_early_stop(es, vf_path(arg, "early_stop"), nrow(h))
  invisible(fit)
}

# The record of an early-stopping run (svi_es_record): its settings, reason and epochs (at most
# the history's `n_history`).
vf_early_stop <- function(es, path, n_history) {
  vf_list(es, path)
  for (f in c("patience", "window")) vf_whole(vf_get(es, f, path), vf_path(path, f), min = 1)
  md <- vf_get(es, "min_delta", path)
  vf_numbers(md, vf_path(path, "min_delta"))
  if (md < 0 || md > 1) stopf("'%s' must be in [0, 1]", vf_path(path, "min_delta"))
  vf_flag(vf_get(es, "stopped", path), vf_path(path, "stopped"))
  reason <- vf_get(es, "reason", path)
  if (!is.character(reason) || length(reason) != 1L ||
      !reason %in% c("converged", "max_epochs", "interrupted")) {
    stopf("'%s' must be \"converged\", \"max_epochs\" or \"interrupted\"", vf_path(path, "reason"))
  }
  if (identical(reason, "converged") != es$stopped) {
    stopf("'%s' must be TRUE exactly when the reason is \"converged\"", vf_path(path, "stopped"))
  }
  mx <- vf_get(es, "max_epochs", path)
  vf_whole(mx, vf_path(path, "max_epochs"), min = 1)
  vf_whole(vf_get(es, "epochs", path), vf_path(path, "epochs"), max = min(mx, n_history))
  be <- vf_get(es, "best_epoch", path)
  if (!(length(be) == 1L && is.na(be) && is.numeric(be))) {
    vf_whole(be, vf_path(path, "best_epoch"), min = 1, max = es$epochs)
  }
  bl <- vf_get(es, "best_elbo", path)
  if (!is.numeric(bl) || length(bl) != 1L) {
    stopf("'%s' must be a single number (or NA)", vf_path(path, "best_elbo"))
  }
  invisible(es)
}

# The checks both classes share (vf_common), then `fit$settings` as a list, with its path in
# `.path` for the error messages.
vf_settings <- function(fit, arg) {
  vf_common(fit, arg)
  sp <- vf_path(arg, "settings")
  st <- vf_get(fit, "settings", arg)
  vf_list(st, sp)
  st$.path <- sp
  st
}

vf_hyper <- function(h, path, fields) {
  vf_list(h, path)
  for (f in fields) {
    vf_numbers(vf_get(h, f, path), vf_path(path, f), positive = TRUE, max = prior_max)
  }
  invisible(h)
}

# ---- cell2location fits ---------------------------------------------------------------------

validate_c2l_fit <- function(fit, arg = "fit", data = TRUE) {
  st <- vf_settings(fit, arg)
  g <- function(name) vf_get(st, name, st$.path)
  p <- function(name) vf_path(st$.path, name)
  for (f in c("n_spots", "n_genes", "n_types", "n_groups", "n_batches")) vf_whole(g(f), p(f), min = 1)
  S <- st$n_spots; G <- st$n_genes; F <- st$n_types; R <- st$n_groups; E <- st$n_batches
  vf_names(g("genes"), p("genes"), G)
  vf_names(g("spots"), p("spots"), S, unique = FALSE)
  vf_names(g("cell_types"), p("cell_types"), F)
  vf_names(g("batch_levels"), p("batch_levels"), E)
  vf_codes(g("batch_codes"), p("batch_codes"), S, 1, E)
  ord <- g("spot_order")
  vf_codes(ord, p("spot_order"), S, 1, S)
  if (anyDuplicated(ord) || is.unsorted(st$batch_codes[ord])) {
    stopf("'%s' must order the spots by batch (order of batch_codes)", p("spot_order"))
  }
  for (f in c("detection_mean", "detection_mean_e", "detection_alpha")) {
    vf_numbers(g(f), p(f), E, positive = TRUE)
  }
  vf_flag(g("detection_mean_per_sample"), p("detection_mean_per_sample"))
  vf_numbers(g("detection_mean_correction"), p("detection_mean_correction"), positive = TRUE)
  vf_flag(g("N_cells_per_location_given"), p("N_cells_per_location_given"))
  vf_hyper(g("hyper"), p("hyper"),
           c("N", "N_cells_mean_var_ratio", "B", "A", "kappa", "m_g_mu", "m_g_mean_var_ratio",
             "m_g_alpha_mean", "w_sf_mean_var_ratio", "detection_mean_alpha",
             "gene_add_alpha_alpha", "gene_add_alpha_beta", "gene_add_mean_alpha",
             "gene_add_mean_beta", "phi_alpha", "phi_beta"))
  vf_params(vf_get(fit, "params", arg), c2l_site_table(S, G, F, R, E), vf_path(arg, "params"))
  pr <- vf_get(fit, "precision", arg, optional = TRUE) # absent in fits made before it existed
  if (!is.null(pr) && (!is.character(pr) || length(pr) != 1L || is.na(pr) ||
                       !pr %in% c("single", "double"))) {
    stopf("'%s' must be \"single\" or \"double\"", vf_path(arg, "precision"))
  }
  sg <- vf_get(fit, "signatures", arg)
  vf_matrix(sg, vf_path(arg, "signatures"), G, F, nonneg = TRUE)
  if ((!is.null(rownames(sg)) && !identical(rownames(sg), st$genes)) ||
      (!is.null(colnames(sg)) && !identical(colnames(sg), st$cell_types))) {
    stopf("'%s' must have the fit's genes and cell types as dimnames", vf_path(arg, "signatures"))
  }
  b <- vf_get(fit, "batch", arg)
  vf_factor(b, vf_path(arg, "batch"), S, st$batch_levels)
  if (!all(as.integer(b) == st$batch_codes)) {
    stopf("'%s' does not match '%s'", vf_path(arg, "batch"), p("batch_codes"))
  }
  d <- vf_get(fit, "data", arg, optional = TRUE)
  if (data && !is.null(d)) {
    dp <- vf_path(arg, "data")
    vf_list(d, dp)
    vf_counts(vf_get(d, "xt", dp), vf_path(dp, "xt"), S, G, "spots x genes")
  }
  mb <- vf_get(fit, "minibatch", arg, optional = TRUE) # absent in full-batch fits
  if (!is.null(mb)) {
    mp <- vf_path(arg, "minibatch")
    vf_list(mb, mp)
    vf_whole(vf_get(mb, "batch_size", mp), vf_path(mp, "batch_size"), min = 1)
    tr <- vf_get(mb, "train", mp)
    if (!is.numeric(tr) || length(tr) < 1L || anyNA(tr) || any(tr != round(tr)) ||
        any(tr < 1 | tr > S) || anyDuplicated(tr)) {
      stopf("'%s' must hold distinct spot indices between 1 and %d", vf_path(mp, "train"), S)
    }
  }
  invisible(fit)
}

# ---- reference fits -------------------------------------------------------------------------

validate_ref_fit <- function(fit, arg = "fit", data = TRUE) {
  st <- vf_settings(fit, arg)
  g <- function(name) vf_get(st, name, st$.path)
  p <- function(name) vf_path(st$.path, name)
  vf_whole(g("n_cells"), p("n_cells"), min = 2)
  vf_whole(g("n_genes"), p("n_genes"), min = 1)
  vf_whole(g("n_groups"), p("n_groups"), min = 1)
  N <- st$n_cells; G <- st$n_genes; NG <- st$n_groups
  vf_names(g("genes"), p("genes"), G)
  vf_names(g("cells"), p("cells"), N, unique = FALSE)
  vf_names(g("cell_types"), p("cell_types"), min = 1L)
  vf_names(g("batch_levels"), p("batch_levels"), min = 1L)
  covs <- g("covariates")
  vf_list(covs, p("covariates"))
  if (length(covs) && (is.null(names(covs)) || anyNA(names(covs)) || !all(nzchar(names(covs))))) {
    stopf("'%s' must be a named list", p("covariates"))
  }
  for (k in seq_along(covs)) vf_names(covs[[k]], vf_path(p("covariates"), names(covs)[k]), min = 1L)
  tech <- as.character(unlist(Map(function(n, l) paste0(n, "_", l), names(covs), covs),
                              use.names = FALSE))
  if (!identical(g("tech_levels"), tech)) {
    stopf("'%s' must be the covariate levels of '%s' (%s)", p("tech_levels"), p("covariates"),
          if (length(tech)) paste(tech, collapse = ", ") else "none")
  }
  bs <- vf_get(st, "batch_size", st$.path, optional = TRUE)
  if (!is.null(bs) && (!is.numeric(bs) || length(bs) != 1L || !is.finite(bs) ||
                       bs != round(bs) || bs < 1)) {
    stopf("'%s' must be NULL or a whole number >= 1", p("batch_size"))
  }
  vf_hyper(g("hyper"), p("hyper"),
           c("detection_mean_alpha", "detection_mean_beta", "gene_add_alpha_alpha",
             "gene_add_alpha_beta", "gene_add_mean_alpha", "gene_add_mean_beta", "phi_alpha",
             "phi_beta", "tech_alpha", "tech_mean"))
  steps <- vf_get(fit, "steps", arg)
  if (!is.numeric(steps) || length(steps) != 1L || !is.finite(steps) || steps != round(steps) ||
      steps < 0) {
    stopf("'%s' must be a whole number >= 0", vf_path(arg, "steps"))
  }
  vf_params(vf_get(fit, "params", arg), ref_site_table(st), vf_path(arg, "params"))
  d <- vf_get(fit, "data", arg, optional = TRUE)
  if (data && !is.null(d)) vf_ref_data(d, st, vf_path(arg, "data"))
  invisible(fit)
}

# The kept data of a reference fit: counts, per-cell factors, and the cell groups with their
# (label, batch, covariate level) codes, consistent with each other.
vf_ref_data <- function(d, st, dp) {
  vf_list(d, dp)
  N <- st$n_cells; NG <- st$n_groups
  F <- length(st$cell_types); E <- length(st$batch_levels); K <- length(st$tech_levels)
  vf_counts(vf_get(d, "x", dp), vf_path(dp, "x"), st$n_genes, N, "genes x cells")
  lab <- vf_get(d, "labels", dp)
  vf_factor(lab, vf_path(dp, "labels"), N, st$cell_types)
  bat <- vf_get(d, "batch", dp)
  vf_factor(bat, vf_path(dp, "batch"), N, st$batch_levels)
  covs <- vf_get(d, "covariates", dp)
  cp <- vf_path(dp, "covariates")
  vf_list(covs, cp)
  if (!identical(names(covs), names(st$covariates)) || length(covs) != length(st$covariates)) {
    stopf("'%s' must hold the fit's covariates (%s)", cp,
          if (length(st$covariates)) paste(names(st$covariates), collapse = ", ") else "none")
  }
  for (k in seq_along(covs)) {
    vf_factor(covs[[k]], vf_path(cp, names(covs)[k]), N, st$covariates[[k]])
  }
  grp <- vf_get(d, "cell_group", dp)
  vf_codes(grp, vf_path(dp, "cell_group"), N, 0, NG - 1)
  gp <- vf_path(dp, "gdef")
  gdef <- vf_get(d, "gdef", dp)
  NC <- length(covs)
  if (!is.numeric(gdef) || !is.matrix(gdef) || nrow(gdef) != 2L + NC || ncol(gdef) != NG) {
    stopf("'%s' must be a %d x %d matrix matching the fit's settings (is %s)", gp, 2L + NC, NG,
          vf_shape(gdef))
  }
  vf_codes(gdef[1L, ], gp, NG, 0, F - 1)
  vf_codes(gdef[2L, ], gp, NG, 0, E - 1)
  off <- 0L
  for (k in seq_len(NC)) {
    nl <- length(st$covariates[[k]])
    vf_codes(gdef[2L + k, ], gp, NG, off, off + nl - 1)
    off <- off + nl
  }
  # each cell's group must have the cell's codes
  codes <- cbind(as.integer(lab), as.integer(bat)) - 1L
  off <- 0L
  for (k in seq_len(NC)) {
    codes <- cbind(codes, off + as.integer(covs[[k]]) - 1L)
    off <- off + length(st$covariates[[k]])
  }
  if (!all(t(gdef)[grp + 1L, , drop = FALSE] == codes)) {
    stopf("'%s' and '%s' do not match the cells' labels, batches and covariates",
          vf_path(dp, "cell_group"), gp)
  }
  invisible(d)
}

# ---- recover_dynamics() fits ----------------------------------------------------------------

# The fields of a scnative_dynamics fit that its users read: `var` (a data.frame, one row per
# gene, numeric fit_* columns `var_cols`: NA for unfitted genes, never infinite), `layers`
# (genes x cells numeric matrices `layers`, with the genes of `var`), `connectivities` (NULL or
# a valid cells x cells matrix), `uns` (a list). Returns the numbers of genes and cells.
dyn_var_cols <- c("fit_alpha", "fit_beta", "fit_gamma", "fit_t_", "fit_scaling", "fit_likelihood")
validate_dynamics <- function(x, arg = "x", var_cols = dyn_var_cols,
                              layers = c("fit_t", "fit_tau", "fit_tau_")) {
  if (!inherits(x, "scnative_dynamics") || !is.list(x)) {
    stopf("'%s' must be a scnative_dynamics fit (from recover_dynamics()), not %s", arg,
          class(x)[1L])
  }
  var <- vf_get(x, "var", arg)
  vp <- vf_path(arg, "var")
  if (!is.data.frame(var)) stopf("'%s' must be a data.frame, not %s", vp, class(var)[1L])
  G <- nrow(var)
  if (G < 1L) stopf("'%s' has no genes", vp)
  if (is.null(rownames(var)) || anyNA(rownames(var))) stopf("'%s' must have gene row names", vp)
  for (f in var_cols) {
    v <- vf_get(var, f, vp)
    if (!is.numeric(v) || is.object(v) || length(v) != G || any(is.infinite(v))) {
      stopf("'%s' must be a numeric column without infinite values", vf_path(vp, f))
    }
  }
  fitted <- if ("fit_alpha" %in% var_cols) !is.na(var$fit_alpha) else logical(G)
  for (f in intersect(c("fit_beta", "fit_gamma", "fit_t_", "fit_scaling"), var_cols)) {
    if (any(is.na(var[[f]][fitted]))) {
      stopf("'%s' is NA for a gene whose fit_alpha is not (a fitted gene)", vf_path(vp, f))
    }
  }
  lp <- vf_path(arg, "layers")
  lay <- vf_get(x, "layers", arg)
  vf_list(lay, lp)
  N <- NULL
  for (f in layers) {
    m <- vf_get(lay, f, lp)
    if (!is.numeric(m) || !is.matrix(m) || nrow(m) != G || (!is.null(N) && ncol(m) != N)) {
      stopf("'%s' must be a numeric matrix, genes x cells, with the %d genes of '%s' (is %s)",
            vf_path(lp, f), G, vp, vf_shape(m))
    }
    if (any(is.infinite(m))) stopf("'%s' contains infinite values", vf_path(lp, f))
    N <- ncol(m)
  }
  if (!is.null(N) && N < 1L) stopf("'%s' has no cells", vf_path(lp, layers[1L]))
  C <- vf_get(x, "connectivities", arg, optional = TRUE)
  if (!is.null(C)) {
    cp <- vf_path(arg, "connectivities")
    if (!(is.matrix(C) || methods::is(C, "Matrix"))) {
      stopf("'%s' must be NULL or a cells x cells matrix, not %s", cp, class(C)[1L])
    }
    check_valid_matrix(C, cp)
    if (!is.null(N) && (nrow(C) != N || ncol(C) != N)) {
      stopf("'%s' must be %d x %d (cells x cells)", cp, N, N)
    }
  }
  uns <- vf_get(x, "uns", arg, optional = TRUE)
  if (!is.null(uns)) {
    vf_list(uns, vf_path(arg, "uns"))
    rd <- uns$recover_dynamics
    if (!is.null(rd)) vf_list(rd, vf_path(vf_path(arg, "uns"), "recover_dynamics"))
  }
  invisible(list(n_genes = G, n_cells = N))
}

# ---- posteriors of export_posterior() ---------------------------------------------------------

# A posterior list (class scnative_c2l_posterior or scnative_reference_posterior) before one of
# its summaries is read: the names (`rows`, e.g. "spots", and "cell_types") are character
# vectors without NA, and the summary `which` of `site` is a finite numeric matrix of the
# shape they give (`site_rows_first`: rows x cell types; else cell types x rows). Returns the
# matrix.
validate_posterior_summary <- function(x, arg, which, site, rows, meta, site_rows_first = TRUE) {
  if (!is.list(x)) stopf("'%s' must be a posterior list, not %s", arg, typeof(x))
  rn <- vf_get(x, rows, arg)
  vf_names(rn, vf_path(arg, rows), unique = FALSE, min = 1L)
  ct <- vf_get(x, "cell_types", arg)
  vf_names(ct, vf_path(arg, "cell_types"), min = 1L)
  check_string(which, "which")
  avail <- setdiff(names(x), meta)
  if (!which %in% avail || is.null(x[[which]])) {
    stopf("'which' must be one of the summaries %s of '%s', not '%s'",
          paste(sprintf("'%s'", avail), collapse = ", "), arg, which)
  }
  sp <- vf_path(arg, which)
  vf_list(x[[which]], sp)
  m <- vf_get(x[[which]], site, sp)
  dims <- if (site_rows_first) c(length(rn), length(ct)) else c(length(ct), length(rn))
  vf_matrix(m, vf_path(sp, site), dims[1L], dims[2L])
  m
}

# ---- velocity() results -------------------------------------------------------------------------

# A scnative_velocity object before its velocities are read: `velocity` a numeric genes x cells
# matrix (NA rows for genes without velocity), `var$velocity_genes` one logical per gene.
validate_velocity_object <- function(x, arg = "x") {
  if (!inherits(x, "scnative_velocity") || !is.list(x)) {
    stopf("'%s' must be a scnative_velocity object (from velocity()), not %s", arg, class(x)[1L])
  }
  V <- vf_get(x, "velocity", arg)
  if (!is.numeric(V) || !is.matrix(V)) {
    stopf("'%s' must be a numeric genes x cells matrix (is %s)", vf_path(arg, "velocity"),
          vf_shape(V))
  }
  var <- vf_get(x, "var", arg)
  vp <- vf_path(arg, "var")
  if (!is.data.frame(var)) stopf("'%s' must be a data.frame, not %s", vp, class(var)[1L])
  vg <- vf_get(var, "velocity_genes", vp)
  if (!is.logical(vg) || length(vg) != nrow(V)) {
    stopf("'%s' must be one logical per gene of '%s' (%d)", vf_path(vp, "velocity_genes"),
          vf_path(arg, "velocity"), nrow(V))
  }
  invisible(x)
}
