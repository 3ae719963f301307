# The fuzzer of the exported API (issue 17, "Hostile input"). Property-based: from a seed it
# draws calls of every exported function with one argument mutated (type, shape, names, special
# values, sparse slots edited without validObject(), fields of fit objects, factor codes, corrupt
# .h5ad files) and runs each in a forked child (parallel::mcparallel) with a time limit. Each
# call is classified:
#   crash    the child died (segfault, abort, floating point exception, out of memory kill)
#   hang     the child did not answer within the time limit
#   mutated  an argument was changed in place by the call
#   silent   no error for an input marked invalid ("silent_accepted"), or a result holding
#            NaN/Inf where the valid call has none ("silent_nan")
#   vague    an error whose message does not name the mutated argument ('arg', `arg`, "arg",
#            'arg$field' ...)
#   good     an error naming the argument; ok: a valid-looking input accepted
# Each mutation says whether the input is certainly invalid (`invalid = TRUE`: it must give an
# error) or may be valid (a call that succeeds is then only checked for NaN/Inf).
#
# Used by test-fuzz.R (a fixed-seed subset in a fresh R process) and tools/fuzz.R (`make fuzz`,
# the long campaign and its report). Only function definitions here: nothing runs when
# testthat sources this helper.
#
# The parent process must never run an OpenMP region with more than one thread (libgomp's pool
# does not survive fork(): a child would hang), so fuzz_setup() sets the package's thread count
# to 1 and the engine must run in a fresh R process (fuzz_run_fresh()).

# ---- tiny valid inputs and the base calls ---------------------------------------------------

# Every exported function the fuzzer does not call (the Python patches need reticulate, the
# example data set has no argument).
fuzz_not_fuzzed <- c("patch_scvelo", "patch_cell2location", "patched", "unpatch",
                     "example_hippocampus")

# Builds the tiny inputs (deterministic) and returns list(cases, skipped, data). Each case:
# name, fun (exported name), args (a valid call), and per-argument properties:
#   conform  arguments whose shape/names must match another argument (shape edits must error)
#   named    arguments matched by their dimnames/names (NA/duplicated names must error)
#   nonneg   arguments that must be >= 0 (negative entries must error)
#   counts   arguments that must hold whole counts (fractions must error)
#   iters    iteration counts (no huge values: a huge count is a long run, not a hang)
#   na_ok    arguments where NA entries are valid
#   free     arguments where an arbitrary string / list may be valid
#   nullable arguments where NULL is valid (besides those with a NULL default)
#   empty_ok matrix arguments where 0 rows are valid
#   strict   list arguments (validated fit objects) whose field edits must error
#   post     applied to the result in the child (plots: ggplot_build)
# `objects = FALSE` leaves out the calls on SingleCellExperiment objects (slow to load).
fuzz_setup <- function(h5_dir = tempfile("fuzz-h5"), objects = TRUE) {
  suppressPackageStartupMessages(library(scnative))
  ns <- asNamespace("scnative")
  set_scnative_threads(1)
  set.seed(17)
  q <- function(expr) suppressWarnings(suppressMessages(expr))
  sim <- simulate_velocity(n_obs = 60, n_vars = 6)
  m <- q(moments(sim$spliced, sim$unspliced, n_neighbors = 10, threads = 1))
  fit <- q(recover_dynamics(m$Ms, m$Mu, var_names = "all", max_iter = 3, threads = 1,
                            progress = FALSE))
  fitc <- q(recover_dynamics(m$Ms, m$Mu, var_names = "all", max_iter = 3, threads = 1,
                             progress = FALSE, connectivities = m$connectivities))
  v <- q(velocity(fit, m$Ms, m$Mu, min_r2 = NULL))
  vg <- q(velocity_graph(v, m$Ms, m$distances, threads = 1, progress = FALSE))
  T <- transition_matrix(vg)
  emb <- stats::prcomp(t(log1p(m$Ms)))$x[, 1:2]
  ve <- velocity_embedding(vg, emb)
  ts <- q(terminal_states(vg, m$distances, threads = 1))

  sp <- simulate_spatial(n_spots = 20, n_genes = 30, n_cell_types = 3, seed = 1)
  lab <- factor(rep(c("A", "B", "C"), each = 10))
  rx <- matrix(stats::rpois(900, sp$signatures[, as.integer(lab)] / 20), 30, 30,
               dimnames = list(rownames(sp$signatures), paste0("c", 1:30)))
  rx <- Matrix::Matrix(rx, sparse = TRUE)
  rf <- q(reference_signatures(rx, lab, max_epochs = 3, seed = 1, progress = FALSE,
                               threads = 1))
  rp <- q(export_posterior(rf, num_samples = 10, seed = 1, threads = 1))
  sig <- q(signatures(rf, num_samples = 10, seed = 1))
  c2 <- q(cell2location(sp$counts, sig, max_epochs = 3, seed = 1, progress = FALSE,
                        threads = 1))
  cp <- q(export_posterior(c2, num_samples = 10, seed = 1, threads = 1))
  ab <- cell_abundance(cp)

  have_h5 <- requireNamespace("hdf5r", quietly = TRUE)
  h5 <- NULL
  if (have_h5) {
    dir.create(h5_dir, showWarnings = FALSE, recursive = TRUE)
    h5 <- file.path(h5_dir, "base.h5ad")
    obs <- data.frame(lab = lab, n = seq_len(30), row.names = colnames(rx))
    q(write_h5ad(h5, X = rx, layers = list(dense = as.matrix(rx)), obs = obs,
                 obsm = list(X_pca = matrix(seq_len(60) / 7, 30, 2)),
                 obsp = list(connectivities = Matrix::Diagonal(30) * 1),
                 uns = list(note = "fuzz", k = 3L), overwrite = TRUE))
  }
  have_gg <- requireNamespace("ggplot2", quietly = TRUE)
  build <- if (have_gg) function(p) ggplot2::ggplot_build(p) else NULL
  # SingleCellExperiment takes seconds to load: only in the long campaign
  have_sce <- objects && requireNamespace("SingleCellExperiment", quietly = TRUE)

  cs <- list()
  add <- function(name, fun, args, ...) {
    cs[[length(cs) + 1L]] <<- c(list(name = name, fun = fun, args = args), list(...))
  }
  gx <- c("x", "Mu", "Ms", "unspliced", "distances", "connectivities")
  add("simulate_velocity", "simulate_velocity", list(n_obs = 60, n_vars = 6),
      iters = c("n_obs", "n_vars"))
  add("moments", "moments", list(x = sim$spliced, unspliced = sim$unspliced, n_neighbors = 10,
                                 threads = 1),
      conform = c("x", "unspliced"), nonneg = c("x", "unspliced"))
  add("recover_dynamics", "recover_dynamics",
      list(x = m$Ms, Mu = m$Mu, var_names = "all", max_iter = 3, threads = 1, progress = FALSE),
      conform = c("x", "Mu"), nonneg = c("x", "Mu"), iters = "max_iter")
  add("recover_dynamics (graph)", "recover_dynamics",
      list(x = m$Ms, Mu = m$Mu, var_names = "all", max_iter = 2, threads = 1, progress = FALSE,
           connectivities = m$connectivities, fit_connected_states = TRUE),
      conform = c("x", "Mu", "connectivities"), nonneg = c("x", "Mu"), iters = "max_iter")
  add("velocity", "velocity", list(x = fit, Ms = m$Ms, Mu = m$Mu, min_r2 = NULL),
      conform = c("Ms", "Mu"), na_ok = "x")
  add("velocity_graph", "velocity_graph",
      list(x = v, Ms = m$Ms, distances = m$distances, threads = 1, progress = FALSE),
      conform = c("Ms", "distances"))
  add("velocity_graph (matrix)", "velocity_graph",
      list(x = v$velocity, Ms = m$Ms, distances = m$distances, velocity_genes = rep(TRUE, 6),
           threads = 1, progress = FALSE),
      conform = c("x", "Ms", "distances", "velocity_genes"))
  add("transition_matrix", "transition_matrix", list(x = vg), na_ok = character())
  # an embedding's column names (PC1, ...) are labels: only its rows must match the cells
  add("velocity_embedding", "velocity_embedding", list(x = vg, embedding = emb),
      conform = "embedding:rows")
  add("velocity_embedding (T)", "velocity_embedding", list(x = vg, embedding = emb, T = T),
      conform = c("embedding:rows", "T"))
  # non-finite cells are left out of the grid (as upstream): NA is valid there
  add("velocity_grid", "velocity_grid", list(embedding = emb, V = ve, threads = 1),
      conform = c("embedding:rows", "V:rows"), na_ok = c("embedding", "V"))
  add("terminal_states", "terminal_states",
      list(x = vg, distances = m$distances, threads = 1), conform = "distances")
  add("terminal_states (Ms)", "terminal_states",
      list(x = vg, distances = m$distances, Ms = m$Ms, gene_count_corr = seq(-0.5, 0.5, 0.2),
           threads = 1), conform = c("distances", "Ms", "gene_count_corr"),
      na_ok = "gene_count_corr")
  add("velocity_pseudotime", "velocity_pseudotime",
      list(x = vg, connectivities = m$connectivities, distances = m$distances, threads = 1),
      conform = c("connectivities", "distances"))
  add("velocity_pseudotime (root)", "velocity_pseudotime",
      list(x = vg, connectivities = m$connectivities, root = 1, end = 60, threads = 1),
      conform = "connectivities")
  add("latent_time", "latent_time",
      list(x = fit, root_cells = 1, connectivities = m$connectivities),
      conform = "connectivities", na_ok = "x")
  add("latent_time (terminal states)", "latent_time",
      list(x = fitc, root_cells = ts, end_points = ts$end_points),
      na_ok = c("x", "end_points"), conform = "end_points") # an NA score counts as 0
  add("latent_time (matrix)", "latent_time",
      list(x = fit$layers$fit_t, root_cells = 1, connectivities = m$connectivities,
           fit_likelihood = fit$var$fit_likelihood),
      conform = c("x", "connectivities", "fit_likelihood"), na_ok = c("x", "fit_likelihood"))
  add("velocity_confidence", "velocity_confidence", list(x = v, distances = m$distances),
      conform = "distances")
  add("velocity_confidence (matrix)", "velocity_confidence",
      list(x = v$velocity, distances = m$distances, velocity_genes = rep(TRUE, 6)),
      conform = c("x:cols", "distances", "velocity_genes"), na_ok = "x")
  add("velocity_confidence_transition", "velocity_confidence_transition",
      list(x = v, Ms = m$Ms, T = T), conform = c("Ms", "T"))
  grp <- rep(c("a", "b", "c"), 20)
  add("rank_velocity_genes", "rank_velocity_genes",
      list(x = v, groupby = grp, Ms = m$Ms, Mu = m$Mu, n_genes = 3),
      conform = c("groupby", "Ms", "Mu"), na_ok = c("x", "groupby")) # NA: in no group
  add("rank_dynamical_genes", "rank_dynamical_genes",
      list(x = fit, Ms = m$Ms, Mu = m$Mu, groupby = grp, n_genes = 3),
      conform = c("Ms", "Mu", "groupby"), na_ok = c("x", "groupby"))
  add("velocity_graph_edges", "velocity_graph_edges", list(x = vg, distances = m$distances),
      conform = "distances")
  lt <- q(latent_time(fitc, ts))
  add("latent_time_heatmap_data", "latent_time_heatmap_data",
      list(x = fit, Ms = m$Ms, latent_time = lt, n_convolve = 5),
      conform = c("Ms:cols", "latent_time"), na_ok = c("x", "latent_time"), # NA: cells dropped
      nullable = "n_convolve") # genes matched by name; NULL: no smoothing
  add("simulate_spatial", "simulate_spatial",
      list(n_spots = 20, n_genes = 30, n_cell_types = 3, seed = 1),
      iters = c("n_spots", "n_genes", "n_cell_types"))
  add("simulate_spatial (reference)", "simulate_spatial",
      list(x = rx, labels = lab, n_spots = 10, n_genes = 20, seed = 1),
      conform = c("x:cols", "labels"), counts = "x", nonneg = "x", iters = c("n_spots", "n_genes"))
  add("reference_signatures", "reference_signatures",
      list(x = rx, labels = lab, max_epochs = 3, seed = 1, progress = FALSE, threads = 1),
      conform = c("x:cols", "labels"), counts = "x", nonneg = "x", iters = "max_epochs")
  add("reference_signatures (batch)", "reference_signatures",
      list(x = rx, labels = lab, batch = factor(rep(c("s1", "s2"), 15)), batch_size = 10,
           max_epochs = 2, seed = 1, progress = FALSE, threads = 1),
      conform = c("x:cols", "labels", "batch"), counts = "x", nonneg = "x", iters = "max_epochs",
      nullable = "batch_size") # NULL: full batch
  add("reference_signatures (init)", "reference_signatures",
      list(x = rx, labels = lab, init = rf, max_epochs = 2, seed = 1, progress = FALSE,
           threads = 1),
      conform = c("x", "labels", "init"), counts = "x", nonneg = "x", iters = "max_epochs",
      strict = "init")
  add("train_more (reference)", "train_more", list(fit = rf, epochs = 2, progress = FALSE,
                                                   threads = 1),
      strict = "fit", iters = "epochs")
  add("export_posterior (reference)", "export_posterior",
      list(fit = rf, num_samples = 10, seed = 1, threads = 1), strict = "fit")
  add("signatures", "signatures", list(x = rf, num_samples = 10, seed = 1), strict = "x",
      nullable = "seed")
  add("signatures (posterior)", "signatures", list(x = rp))
  add("cell2location", "cell2location",
      list(x = sp$counts, signatures = sig, max_epochs = 3, seed = 1, progress = FALSE,
           threads = 1),
      named = c("x", "signatures"), counts = "x", nonneg = c("x", "signatures"),
      iters = "max_epochs")
  add("cell2location (batch)", "cell2location",
      list(x = sp$counts, signatures = sig, batch = factor(rep(c("a", "b"), 10)),
           max_epochs = 2, seed = 1, progress = FALSE, threads = 1),
      named = c("x", "signatures"), conform = "batch", counts = "x",
      nonneg = c("x", "signatures"), iters = "max_epochs")
  add("cell2location (init)", "cell2location",
      list(x = sp$counts, signatures = sig, init = c2, max_epochs = 2, seed = 1,
           progress = FALSE, threads = 1),
      named = c("x", "signatures"), conform = "init", counts = "x",
      nonneg = c("x", "signatures"), iters = "max_epochs", strict = "init")
  add("train_more (cell2location)", "train_more",
      list(fit = c2, epochs = 2, progress = FALSE, threads = 1), strict = "fit",
      iters = "epochs")
  add("export_posterior (cell2location)", "export_posterior",
      list(fit = c2, num_samples = 10, seed = 1, threads = 1), strict = "fit")
  add("cell_abundance", "cell_abundance", list(x = cp))
  add("cell_abundance (fit)", "cell_abundance", list(x = c2, num_samples = 10, seed = 1),
      strict = "x", nullable = "seed")
  add("filter_genes", "filter_genes",
      list(x = rx, cell_count_cutoff = 2, cell_percentage_cutoff2 = 0.05, nonz_mean_cutoff = 1,
           plot = FALSE), nonneg = "x")
  add("cluster_averages", "cluster_averages", list(x = rx, labels = lab),
      conform = c("x:cols", "labels"))
  add("scnative_threads", "scnative_threads", list(verbose = TRUE))
  add("set_scnative_threads", "set_scnative_threads", list(threads = 1))
  if (have_sce) {
    sce <- SingleCellExperiment::SingleCellExperiment(list(counts = sp$counts))
    add("add_cell_abundance", "add_cell_abundance", list(object = sce, fit_or_posterior = cp),
        free = "name")
  }
  if (have_h5) {
    add("read_h5ad", "read_h5ad", list(path = h5), h5 = TRUE)
    add("read_h5ad (subset)", "read_h5ad",
        list(path = h5, layers = "dense", obsm = FALSE, uns = FALSE), h5 = TRUE,
        free = "layers")
    add("write_h5ad", "write_h5ad",
        list(path = file.path(h5_dir, "fuzz-out.h5ad"), X = rx,
             obs = data.frame(lab = lab, row.names = colnames(rx)),
             obsm = list(X_pca = matrix(seq_len(60) / 7, 30, 2)),
             uns = list(note = "fuzz"), overwrite = TRUE),
        conform = c("X:cols", "obs", "obsm:rows"), free = c("uns", "path"),
        na_ok = "X", empty_ok = "X") # NaN/Inf and 0 genes are valid in .h5ad
  }
  if (have_gg) {
    add("plot_history", "plot_history", list(x = c2), post = build, strict = "x")
    add("plot_dynamics_params", "plot_dynamics_params", list(fit = fit), post = build,
        na_ok = "fit")
    add("plot_phase_portrait", "plot_phase_portrait",
        list(fit = fit, gene = rownames(m$Ms)[3], Ms = m$Ms, Mu = m$Mu), post = build,
        conform = c("Ms", "Mu"), na_ok = "fit")
    add("plot_spatial_abundance", "plot_spatial_abundance", list(x = ab, coords = sp$coords),
        post = build, conform = "coords") # matched by spot names: rows of 'x' may differ
    add("plot_velocity_embedding", "plot_velocity_embedding", list(x = emb, V = ve),
        post = build, conform = c("x:rows", "V:rows"), na_ok = c("x", "V"))
    add("plot_latent_time_heatmap", "plot_latent_time_heatmap",
        list(x = fit, Ms = m$Ms, latent_time = lt, n_convolve = 5, color = grp), post = build,
        conform = c("Ms:cols", "latent_time", "color"), free = "color", nullable = "n_convolve",
        na_ok = c("x", "latent_time", "color"))
    add("plot_velocity_graph", "plot_velocity_graph",
        list(x = vg, embedding = emb, distances = m$distances), post = build,
        conform = c("embedding:rows", "distances"), na_ok = "embedding")
    add("plot_velocity_embedding (arrows)", "plot_velocity_embedding",
        list(x = emb, V = ve, type = "arrows", color = sim$obs[[1]]), post = build,
        conform = c("x:rows", "V:rows", "color"), free = "color", na_ok = c("x", "V", "color"))
  }
  if (objects) cs <- c(cs, fz_object_cases(sim, sp, rx, lab, sig, cp, build)) # ---- object cases
  exports <- sort(getNamespaceExports("scnative"))
  fuzzed <- unique(vapply(cs, `[[`, "", "fun"))
  skipped <- setdiff(exports, c(fuzzed, fuzz_not_fuzzed))
  for (k in seq_along(cs)) cs[[k]]$nullable <- fuzz_nullable(cs[[k]], ns)
  list(cases = cs, skipped = skipped, not_fuzzed = intersect(exports, fuzz_not_fuzzed),
       h5_dir = if (have_h5) h5_dir else NULL)
}

# Arguments whose formal default (in the function or the method the call dispatches to) is
# NULL or an expression: NULL may be valid there.
fuzz_nullable <- function(case, ns) {
  f <- get(case$fun, ns)
  fmls <- list(formals(f))
  x1 <- case$args[[1L]]
  for (cl in c(class(x1), "default")) {
    meth <- utils::getS3method(case$fun, cl, optional = TRUE)
    if (!is.null(meth)) {
      fmls <- c(fmls, list(formals(meth)))
      if (cl != "default") {
        d <- utils::getS3method(case$fun, "default", optional = TRUE)
        if (!is.null(d)) fmls <- c(fmls, list(formals(d)))
      }
      break
    }
  }
  out <- character()
  for (fm in fmls) {
    for (a in names(fm)) {
      if (identical(fm[[a]], quote(expr = ))) next # no default
      if (is.null(fm[[a]]) || is.language(fm[[a]])) out <- c(out, a)
    }
  }
  unique(c(out, case$nullable))
}

# ---- mutations ------------------------------------------------------------------------------

# A mutation: list(value, class, label, invalid). `ctx`: list(arg, case, strict) where strict
# says whether the value sits inside a validated fit object.
fz_mut <- function(value, class, label, invalid) {
  list(value = value, class = class, label = label, invalid = isTRUE(invalid))
}

fz_pick <- function(x) x[[sample.int(length(x), 1L)]]

fz_in <- function(ctx, what) {
  if (what == "conform") return(fz_conform(ctx, "rows") || fz_conform(ctx, "cols"))
  ctx$arg %in% ctx$case[[what]]
}

# `conform` entries are "arg" (both axes) or "arg:rows" / "arg:cols" (one axis must match).
fz_conform <- function(ctx, axis) {
  any(c(ctx$arg, paste0(ctx$arg, ":", axis)) %in% ctx$case$conform)
}

# Junk of another type, and NULL.
fz_type_muts <- function(value, ctx) {
  free <- fz_in(ctx, "free")
  inv <- !free || ctx$strict
  if (ctx$in_field && !ctx$strict) inv <- FALSE # a field of a result object may be unused
  f <- function(...) NULL
  environment(f) <- baseenv()
  out <- list(
    function() fz_mut("fuzz", "type", "a string", inv && !is.character(value)),
    function() fz_mut(list(fuzz = 1), "type", "a list", inv),
    function() fz_mut(f, "type", "a function", inv || !ctx$in_field),
    function() fz_mut(data.frame(fuzz = 1:2), "type", "a data.frame",
                      inv && !(is.matrix(value) || methods::is(value, "Matrix"))),
    function() fz_mut(factor(c("u", "v")), "type", "a factor", inv),
    function() fz_mut(1i, "type", "a complex number", inv || !ctx$in_field),
    function() fz_mut(NULL, "type", "NULL",
                      ctx$strict || !(ctx$arg %in% ctx$case$nullable) || ctx$in_field)
  )
  if (ctx$in_field) out[[7L]] <- function() fz_mut(NULL, "type", "NULL", ctx$strict)
  out
}

fz_special <- function(ctx) {
  # NA in a field of a result object (not a validated fit) may be documented (unfitted genes)
  na <- (fz_in(ctx, "na_ok") || ctx$in_field) && !ctx$strict
  iters <- fz_in(ctx, "iters")
  out <- list(
    function() list(v = NA_real_, l = "NA", inv = !na),
    function() list(v = NaN, l = "NaN", inv = !na),
    function() list(v = Inf, l = "Inf", inv = !na),
    function() list(v = -Inf, l = "-Inf", inv = !na),
    function() list(v = -1, l = "-1", inv = FALSE),
    function() list(v = 0, l = "0", inv = FALSE),
    function() list(v = 0.5, l = "0.5", inv = FALSE),
    function() list(v = -1e308, l = "-1e308", inv = FALSE),
    function() list(v = NA_integer_, l = "NA_integer_", inv = !na)
  )
  if (!iters) {
    out <- c(out, list(function() list(v = 1e308, l = "1e308", inv = FALSE),
                       function() list(v = 2^31, l = "2^31", inv = FALSE)))
  }
  out
}

# Length-1 and short atomic values: special numbers, wrong lengths, wrong types.
fz_atomic_muts <- function(value, ctx) {
  n <- length(value)
  out <- list()
  if (is.numeric(value) || is.logical(value)) {
    for (s in fz_special(ctx)) {
      out <- c(out, list(local({
        s <- s
        function() {
          sv <- s()
          if (n <= 1L) return(fz_mut(sv$v, "value", sv$l, sv$inv))
          k <- sample.int(n, 1L)
          v <- value
          if (is.logical(v)) storage.mode(v) <- "double"
          v[k] <- sv$v
          fz_mut(v, "value", sprintf("element %d set to %s", k, sv$l),
                 sv$inv || (is.logical(value) && !is.na(sv$v) && !sv$v %in% c(0, 1)))
        }
      })))
    }
    if (is.logical(value) && n == 1L) {
      out <- c(out, list(function() fz_mut("TRUE", "type", "\"TRUE\" (a string)", FALSE),
                         function() fz_mut(c(TRUE, FALSE), "shape", "two flags", TRUE)))
    }
    if (n > 1L && fz_in(ctx, "nonneg")) {
      out <- c(out, list(function() {
        v <- value; k <- sample.int(n, 1L); v[k] <- -abs(v[k]) - 1
        fz_mut(v, "value", sprintf("element %d negative", k), TRUE)
      }))
    }
  }
  if (is.character(value)) {
    out <- c(out, list(
      function() fz_mut(NA_character_, "value", "NA string",
                        !fz_in(ctx, "na_ok") && (!fz_in(ctx, "free") || ctx$strict) &&
                          (!ctx$in_field || ctx$strict)),
      function() fz_mut("", "value", "empty string", FALSE),
      function() fz_mut(paste0(value[1L], intToUtf8(c(233, 1))), "value", "odd characters", FALSE)))
    if (n > 1L) {
      out <- c(out, list(function() {
        v <- value; k <- sample.int(n, 1L); v[k] <- NA
        fz_mut(v, "value", sprintf("element %d NA", k),
               !fz_in(ctx, "na_ok") && (!ctx$in_field || ctx$strict))
      }, function() {
        v <- value; v[2L] <- v[1L]
        fz_mut(v, "names", "duplicated value", FALSE)
      }))
    }
  }
  conform <- fz_in(ctx, "conform")
  out <- c(out, list(
    function() fz_mut(value[0L], "shape", "length 0",
                      conform || (n == 1L && !ctx$in_field && !fz_in(ctx, "free"))),
    function() fz_mut(rep(value, length.out = n + 1L), "shape", "one element more",
                      conform || (n == 1L && (ctx$strict || !(ctx$in_field || fz_in(ctx, "free"))))),
    function() fz_mut(rep(value, length.out = n + 2L), "shape", "two elements more",
                      conform || (n == 1L && (ctx$strict || !(ctx$in_field || fz_in(ctx, "free")))))
  ))
  if (n > 1L) {
    out <- c(out, list(
      function() { k <- sample.int(n, 1L); fz_mut(value[-k], "shape",
                                                   sprintf("element %d dropped", k), conform) },
      function() fz_mut(rev(value), "shape", "reversed", FALSE)
    ))
    if (!is.null(names(value))) {
      out <- c(out, list(function() {
        v <- value; names(v) <- sample(names(v))
        fz_mut(v, "names", "names shuffled", FALSE)
      }))
    }
  }
  c(out, fz_type_muts(value, ctx))
}

fz_factor_muts <- function(value, ctx) {
  n <- length(value)
  conform <- fz_in(ctx, "conform")
  list(
    function() {
      v <- value; k <- sample.int(n, 1L); codes <- unclass(v); codes[k] <- nlevels(v) + 5L
      attributes(codes) <- attributes(v); fz_mut(codes, "factor", "code past the levels", TRUE)
    },
    function() {
      v <- value; k <- sample.int(n, 1L); codes <- unclass(v); codes[k] <- 0L
      attributes(codes) <- attributes(v); fz_mut(codes, "factor", "code 0", TRUE)
    },
    function() {
      v <- value; k <- sample.int(n, 1L); codes <- unclass(v); codes[k] <- -3L
      attributes(codes) <- attributes(v); fz_mut(codes, "factor", "negative code", TRUE)
    },
    function() {
      v <- value; attr(v, "levels") <- rep(levels(v)[1L], nlevels(v))
      fz_mut(v, "factor", "duplicated levels", nlevels(value) > 1L) # 1 level: unchanged
    },
    function() {
      v <- value; k <- sample.int(n, 1L); v[k] <- NA
      fz_mut(v, "value", sprintf("element %d NA", k), !fz_in(ctx, "na_ok"))
    },
    function() fz_mut(factor(value, levels = c(levels(value), "unused")), "factor",
                      "an unused level", FALSE),
    function() fz_mut(as.character(value), "type", "as character", FALSE),
    function() fz_mut(as.integer(value), "type", "as integer codes", FALSE),
    function() fz_mut(factor(rep(levels(value)[1L], n), levels = levels(value)[1L]), "factor",
                      "a single level", FALSE),
    function() fz_mut(value[-1L], "shape", "first element dropped", conform || ctx$strict),
    function() fz_mut(value[0L], "shape", "length 0", TRUE)
  )
}

# Dense matrices (and, through as.matrix, the data of sparse ones).
fz_matrix_muts <- function(value, ctx) {
  conform <- fz_in(ctx, "conform") || ctx$strict
  crow <- fz_conform(ctx, "rows") || ctx$strict
  ccol <- fz_conform(ctx, "cols") || ctx$strict
  named <- fz_in(ctx, "named")
  nonneg <- fz_in(ctx, "nonneg")
  nr <- nrow(value); nc <- ncol(value)
  put <- function(v, what, lab, inv, class = "value") {
    force(v)
    function() {
      x <- value
      k <- sample.int(length(x), 1L)
      x[k] <- v
      fz_mut(x, class, sprintf("entry %d set to %s", k, lab), inv)
    }
  }
  na <- (fz_in(ctx, "na_ok") || ctx$in_field) && !ctx$strict
  out <- list(
    put(NA, "NA", "NA", !na), put(NaN, "NaN", "NaN", !na), put(Inf, "Inf", "Inf", !na),
    put(-Inf, "-Inf", "-Inf", !na), put(-1, "-1", "-1", nonneg), put(1e308, "1e308", "1e308",
                                                                     FALSE),
    put(0.5, "0.5", "0.5", fz_in(ctx, "counts")),
    function() fz_mut(value * NA_real_, "value", "all NA", !na),
    function() fz_mut(value * 0, "value", "all zero", FALSE),
    function() { x <- value; storage.mode(x) <- "character"
      fz_mut(x, "type", "a character matrix", !ctx$in_field || ctx$strict) },
    function() { x <- value; storage.mode(x) <- "logical"
      fz_mut(x, "type", "a logical matrix", FALSE) },
    function() fz_mut(as.vector(value), "shape", "dims dropped (a vector)", conform),
    function() fz_mut(value[-sample.int(nr, 1L), , drop = FALSE], "shape", "a row dropped",
                      crow),
    function() fz_mut(value[, -sample.int(nc, 1L), drop = FALSE], "shape", "a column dropped",
                      ccol),
    function() fz_mut(t(value), "shape", "transposed", conform && nr != nc),
    function() fz_mut(value[0L, , drop = FALSE], "shape", "0 rows",
                      (!ctx$in_field || ctx$strict) && !fz_in(ctx, "empty_ok")),
    function() fz_mut(value[, 0L, drop = FALSE], "shape", "0 columns",
                      !ctx$in_field || ctx$strict),
    function() fz_mut(value[1L, , drop = FALSE], "shape", "1 row", crow && nr > 1L),
    function() fz_mut(value[, 1L, drop = FALSE], "shape", "1 column", ccol && nc > 1L),
    function() fz_mut(array(value, c(dim(value), 1L)), "shape", "a 3-d array",
                      !ctx$in_field || ctx$strict)
  )
  dn <- dimnames(value)
  for (ax in 1:2) {
    if (!is.null(dn[[ax]])) {
      out <- c(out, local({
        ax <- ax
        list(function() {
          x <- value; d <- dimnames(x); d[[ax]] <- sample(d[[ax]]); dimnames(x) <- d
          fz_mut(x, "names", sprintf("%s names shuffled", c("row", "column")[ax]),
                 (c(crow, ccol)[ax] && length(d[[ax]]) > 1L) && !named)
        }, function() {
          x <- value; d <- dimnames(x); d[[ax]][sample.int(length(d[[ax]]), 1L)] <- NA
          dimnames(x) <- d
          fz_mut(x, "names", sprintf("an NA %s name", c("row", "column")[ax]), named)
        }, function() {
          x <- value; d <- dimnames(x)
          if (length(d[[ax]]) > 1L) d[[ax]][2L] <- d[[ax]][1L]
          dimnames(x) <- d
          fz_mut(x, "names", sprintf("duplicated %s names", c("row", "column")[ax]), named)
        }, function() {
          x <- value; d <- dimnames(x); d[ax] <- list(NULL); dimnames(x) <- d
          fz_mut(x, "names", sprintf("%s names dropped", c("row", "column")[ax]), named)
        })
      }))
    }
  }
  out
}

# Sparse matrices: the same edits through Matrix (valid objects), and slots edited without
# validObject() (invalid objects: every one must give an error).
fz_sparse_muts <- function(value, ctx) {
  slot_edit <- function(label, f) {
    function() {
      x <- value
      x <- f(x)
      fz_mut(x, "sparse", label, TRUE)
    }
  }
  nnz <- length(value@x)
  out <- list(
    slot_edit("last column pointer past the end", function(x) {
      x@p[length(x@p)] <- x@p[length(x@p)] + 5L; x }),
    slot_edit("column pointers not monotone", function(x) {
      if (length(x@p) > 2L) x@p[2L] <- x@p[length(x@p)] + 1L else x@p[1L] <- 3L; x }),
    slot_edit("first column pointer not 0", function(x) { x@p[1L] <- 1L; x }),
    slot_edit("row index past nrow", function(x) {
      if (nnz) x@i[sample.int(nnz, 1L)] <- x@Dim[1L] + 3L; x }),
    slot_edit("negative row index", function(x) {
      if (nnz) x@i[sample.int(nnz, 1L)] <- -2L; x }),
    slot_edit("row indices unsorted", function(x) {
      if (nnz) { j <- which(diff(x@p) >= 2L)[1L]
        if (!is.na(j)) { s <- x@p[j] + 1L; x@i[c(s, s + 1L)] <- x@i[c(s + 1L, s)] }
        else x@i[1L] <- x@Dim[1L] + 1L }
      x }),
    slot_edit("x shorter than i", function(x) { x@x <- x@x[-1L]; x }),
    slot_edit("Dim larger than the slots", function(x) { x@Dim <- x@Dim + 2L; x }),
    slot_edit("Dim smaller than the slots", function(x) { x@Dim[1L] <- 1L; x }),
    slot_edit("p too short", function(x) { x@p <- x@p[-length(x@p)]; x })
  )
  if (nnz) {
    na <- (fz_in(ctx, "na_ok") || ctx$in_field) && !ctx$strict
    xs <- function(v, lab, inv) function() {
      x <- value; x@x[sample.int(nnz, 1L)] <- v; fz_mut(x, "value", lab, inv) }
    out <- c(out, list(
      xs(NA, "a stored NA", !na), xs(NaN, "a stored NaN", !na), xs(Inf, "a stored Inf", !na),
      xs(-1, "a stored -1", fz_in(ctx, "nonneg")), xs(0.5, "a stored 0.5", fz_in(ctx, "counts"))
    ))
  }
  # structural edits through valid Matrix operations
  conform <- fz_in(ctx, "conform") || ctx$strict
  crow <- fz_conform(ctx, "rows") || ctx$strict
  ccol <- fz_conform(ctx, "cols") || ctx$strict
  nr <- nrow(value); nc <- ncol(value)
  out <- c(out, list(
    function() fz_mut(value[-sample.int(nr, 1L), , drop = FALSE], "shape", "a row dropped",
                      crow),
    function() fz_mut(value[, -sample.int(nc, 1L), drop = FALSE], "shape", "a column dropped",
                      ccol),
    function() fz_mut(Matrix::t(value), "shape", "transposed", conform && nr != nc),
    function() fz_mut(value[0L, , drop = FALSE], "shape", "0 rows",
                      (!ctx$in_field || ctx$strict) && !fz_in(ctx, "empty_ok")),
    function() fz_mut(as.matrix(value), "type", "as a dense matrix", FALSE),
    function() fz_mut(methods::as(value, "TsparseMatrix"), "type", "as a TsparseMatrix", FALSE),
    function() fz_mut(methods::as(value, "RsparseMatrix"), "type", "as a RsparseMatrix", FALSE)
  ))
  dn <- dimnames(value)
  if (!is.null(dn[[1L]])) {
    out <- c(out, list(function() {
      x <- value; x@Dimnames[[1L]] <- sample(dn[[1L]])
      fz_mut(x, "names", "row names shuffled", crow && !fz_in(ctx, "named")) },
      function() {
        x <- value; x@Dimnames[[1L]][2L] <- x@Dimnames[[1L]][1L]
        fz_mut(x, "names", "duplicated row names", fz_in(ctx, "named")) }))
  }
  out
}

fz_df_muts <- function(value, ctx) {
  conform <- fz_in(ctx, "conform")
  out <- list(
    function() fz_mut(value[-1L, , drop = FALSE], "shape", "first row dropped", conform),
    function() fz_mut(value[0L, , drop = FALSE], "shape", "0 rows", conform),
    function() fz_mut(value[, 0L, drop = FALSE], "shape", "0 columns", FALSE),
    function() { x <- value; rownames(x) <- sample(rownames(x))
      fz_mut(x, "names", "row names shuffled", FALSE) },
    function() fz_mut(as.matrix(value), "type", "as a matrix", FALSE),
    function() fz_mut(as.list(value), "type", "as a list", FALSE)
  )
  num <- which(vapply(value, is.numeric, TRUE))
  if (length(num)) {
    out <- c(out, list(function() {
      x <- value; j <- num[1L]; x[[j]][sample.int(nrow(x), 1L)] <- NA
      fz_mut(x, "value", "NA in a numeric column", FALSE)
    }, function() {
      x <- value; j <- num[1L]; x[[j]][sample.int(nrow(x), 1L)] <- Inf
      fz_mut(x, "value", "Inf in a numeric column", FALSE)
    }, function() {
      x <- value; x[[num[1L]]] <- as.character(x[[num[1L]]])
      fz_mut(x, "type", "a numeric column as strings", FALSE)
    }))
  }
  c(out, fz_type_muts(value, ctx)[c(1L, 3L, 6L)])
}

# Lists (fit and result objects): drop a field, junk in a field, swap two fields, or a
# mutation of one field's value (recursively).
fz_list_muts <- function(value, ctx, depth = 0L) {
  nm <- names(value)
  if (!length(value) || is.null(nm)) return(fz_type_muts(value, ctx))
  # the kept data of a fit (`fit$data`) is validated with the fit
  strict_k <- function(k) ctx$strict
  optional <- if (depth == 0L) c("data", "interrupted", "format", "early_stop", "precision", "minibatch") else character()
  same <- function(a, b) {
    (identical(class(a), class(b)) || (is.numeric(a) && is.numeric(b))) &&
      identical(dim(a), dim(b)) && identical(length(a), length(b))
  }
  out <- list(
    function() { k <- sample.int(length(value), 1L); x <- value; x[[k]] <- NULL
      fz_mut(x, "field", sprintf("field '%s' dropped", nm[k]),
             strict_k(k) && !nm[k] %in% optional) },
    function() { k <- sample.int(length(value), 1L); x <- value; x[[k]] <- "fuzz"
      fz_mut(x, "field", sprintf("field '%s' set to a string", nm[k]), strict_k(k)) },
    function() {
      if (length(value) < 2L) return(fz_mut(value[0L], "field", "all fields dropped", strict_k(1L)))
      k <- sample.int(length(value), 2L); x <- value; x[k] <- value[rev(k)]
      fz_mut(x, "field", sprintf("fields '%s' and '%s' swapped", nm[k[1]], nm[k[2]]),
             strict_k(k[1]) && strict_k(k[2]) && !same(value[[k[1]]], value[[k[2]]]))
    },
    function() { x <- value; class(x) <- NULL
      fz_mut(x, "field", "class removed", FALSE) }
  )
  deeper <- function() {
    k <- sample.int(length(value), 1L)
    sub <- value[[k]]
    subctx <- ctx
    subctx$in_field <- TRUE
    subctx$strict <- strict_k(k)
    cand <- fz_candidates(sub, subctx, depth + 1L)
    if (!length(cand)) return(NULL)
    r <- fz_pick(cand)()
    if (is.null(r$value) && nm[k] %in% optional) r$invalid <- FALSE # same as dropping it
    x <- value
    if (is.null(r$value)) x[k] <- list(NULL) else x[[k]] <- r$value
    fz_mut(x, if (r$class == "field") "field" else r$class,
           sprintf("$%s: %s", nm[k], r$label), r$invalid)
  }
  # recursing is the common case: most of a fit's bulk is nested
  c(out, rep(list(deeper), 6L))
}

# The candidate mutations for a value.
fz_candidates <- function(value, ctx, depth = 0L) {
  if (is.null(ctx$in_field)) ctx$in_field <- FALSE
  if (depth > 4L) return(fz_type_muts(value, ctx))
  if (fz_is_object(value)) return(fz_object_all_muts(value, ctx)) # ---- object cases
  if (is.null(value)) return(fz_type_muts(value, ctx)[-7L])
  if (methods::is(value, "CsparseMatrix") && methods::is(value, "dMatrix")) {
    return(c(fz_sparse_muts(value, ctx), fz_type_muts(value, ctx)))
  }
  if (methods::is(value, "Matrix")) return(fz_type_muts(value, ctx))
  if (is.factor(value)) return(c(fz_factor_muts(value, ctx), fz_type_muts(value, ctx)[c(1L, 3L, 7L)]))
  if (is.data.frame(value)) return(fz_df_muts(value, ctx))
  if (is.matrix(value) && (is.numeric(value) || is.logical(value))) {
    return(c(fz_matrix_muts(value, ctx), fz_type_muts(value, ctx)))
  }
  if (is.list(value)) return(fz_list_muts(value, ctx, depth))
  if (is.atomic(value)) return(fz_atomic_muts(value, ctx))
  fz_type_muts(value, ctx)
}

# Corrupt copies of a valid .h5ad file (read_h5ad's `path`): the edits are made in the child,
# on a copy. Each returns the path of the corrupt file.
fz_h5_muts <- function(path) {
  edit <- function(label, f, inv = TRUE) {
    function() {
      out <- tempfile(fileext = ".h5ad")
      file.copy(path, out)
      h <- hdf5r::H5File$new(out, mode = "r+")
      ok <- tryCatch({ f(h); TRUE }, error = function(e) FALSE)
      h$close_all()
      fz_mut(out, "file", label, inv && ok)
    }
  }
  ds <- function(h, name, value, dtype = NULL) {
    if (h$exists(name)) h$link_delete(name)
    if (is.null(dtype)) h[[name]] <- value else h$create_dataset(name, value, dtype = dtype)
  }
  bytes <- function(label, f, inv = TRUE) {
    function() {
      out <- tempfile(fileext = ".h5ad")
      b <- readBin(path, "raw", file.size(path))
      writeBin(f(b), out)
      fz_mut(out, "file", label, inv)
    }
  }
  rd <- function(h, name) h[[name]][]
  list(
    bytes("truncated to half", function(b) b[seq_len(length(b) %/% 2L)]),
    bytes("truncated to 1 KiB", function(b) b[seq_len(min(1024L, length(b)))]),
    bytes("empty file", function(b) raw(0)),
    bytes("32 random bytes overwritten", function(b) {
      k <- sample.int(max(1L, length(b) - 32L), 1L); b[k + 0:31] <- as.raw(sample(0:255, 32, TRUE)); b
    }, inv = FALSE),
    bytes("superblock damaged", function(b) { b[9:40] <- as.raw(255L); b }),
    edit("X/indptr past the end of X/indices", function(h) {
      p <- rd(h, "X/indptr"); p[length(p)] <- p[length(p)] + 100; ds(h, "X/indptr", p) }),
    edit("X/indptr decreasing", function(h) {
      p <- rd(h, "X/indptr"); p[2L] <- p[length(p)] + 1; ds(h, "X/indptr", p) }),
    edit("X/indices out of range", function(h) {
      i <- rd(h, "X/indices"); i[sample.int(length(i), 1L)] <- 10^6; ds(h, "X/indices", i) }),
    edit("X/indices negative", function(h) {
      i <- rd(h, "X/indices"); i[sample.int(length(i), 1L)] <- -5; ds(h, "X/indices", i) }),
    edit("X/data shorter than X/indices", function(h) {
      d <- rd(h, "X/data"); ds(h, "X/data", d[-1L]) }),
    edit("X/data as strings", function(h) {
      d <- rd(h, "X/data"); ds(h, "X/data", as.character(d)) }),
    edit("X/indptr missing", function(h) h$link_delete("X/indptr")),
    edit("X shape attribute too large", function(h) {
      x <- h[["X"]]; sh <- hdf5r::h5attr(x, "shape"); x$attr_delete("shape")
      x$create_attr("shape", sh + 5) }),
    edit("X shape attribute negative", function(h) {
      x <- h[["X"]]; x$attr_delete("shape"); x$create_attr("shape", c(-1, 30)) }),
    edit("X shape attribute huge", function(h) {
      x <- h[["X"]]; x$attr_delete("shape"); x$create_attr("shape", c(2^40, 2^40)) }),
    edit("X encoding-type unknown", function(h) {
      x <- h[["X"]]; x$attr_delete("encoding-type"); x$create_attr("encoding-type", "fuzz") }),
    edit("obs categorical codes past the categories", function(h) {
      nm <- if (h$exists("obs/lab/codes")) "obs/lab/codes" else "obs/lab"
      c0 <- rd(h, nm); c0[1L] <- 99L; ds(h, nm, c0) }),
    edit("obs categorical codes negative below -1", function(h) {
      nm <- if (h$exists("obs/lab/codes")) "obs/lab/codes" else "obs/lab"
      c0 <- rd(h, nm); c0[1L] <- -7L; ds(h, nm, c0) }),
    edit("obs column shorter than obs", function(h) {
      n <- rd(h, "obs/n"); ds(h, "obs/n", n[-1L]) }),
    edit("obs index shorter than X", function(h) {
      ix <- hdf5r::h5attr(h[["obs"]], "_index")
      n <- rd(h, paste0("obs/", ix)); ds(h, paste0("obs/", ix), n[-1L]) }),
    edit("var index duplicated", function(h) {
      ix <- hdf5r::h5attr(h[["var"]], "_index")
      n <- rd(h, paste0("var/", ix)); n[2L] <- n[1L]; ds(h, paste0("var/", ix), n) },
      inv = FALSE),
    edit("layer dense with the wrong shape", function(h) {
      d <- rd(h, "layers/dense"); ds(h, "layers/dense", d[-1L, , drop = FALSE]) }),
    edit("obsm matrix with the wrong number of rows", function(h) {
      d <- rd(h, "obsm/X_pca"); ds(h, "obsm/X_pca", d[, -1L, drop = FALSE]) }),
    edit("obsp graph with the wrong shape", function(h) {
      g <- h[["obsp/connectivities"]]; sh <- hdf5r::h5attr(g, "shape")
      g$attr_delete("shape"); g$create_attr("shape", sh - 1) }),
    edit("uns holds a link to itself", function(h) {
      h[["uns"]]$link_delete("note"); h[["uns"]]$create_group("loop")
      h$link(h[["uns"]], "uns/loop/back") }, inv = FALSE),
    edit("X is a 3-d dataset", function(h) {
      h$link_delete("X"); h[["X"]] <- array(1, c(2, 2, 2)) })
  )
}

# Draws call `i` of the campaign with seed `seed`: list(case index, arg, mutation). The same
# (seed, i) always gives the same call (replay).
fuzz_draw <- function(setup, seed, i) {
  set.seed((seed * 1000003 + i) %% 2147483647)
  cs <- setup$cases
  k <- sample.int(length(cs), 1L)
  case <- cs[[k]]
  arg <- fz_pick(as.list(names(case$args)))
  if (!is.null(case$focus) && stats::runif(1) < 0.7) arg <- case$focus # ---- object cases
  ctx <- list(arg = arg, case = case, strict = arg %in% case$strict, in_field = FALSE)
  value <- case$args[[arg]]
  cand <- if (isTRUE(case$h5) && arg == "path") {
    c(fz_h5_muts(value), fz_atomic_muts(value, ctx))
  } else {
    fz_candidates(value, ctx)
  }
  if (is.list(value) && !is.data.frame(value) && arg %in% case$strict) {
    # the fits: mostly their fields
    cand <- c(cand, rep(list(function() fz_pick(fz_list_muts(value, ctx))()), 8L))
  }
  list(k = k, arg = arg, mut = fz_pick(cand), seed = seed, i = i)
}

# ---- running one call -----------------------------------------------------------------------

fz_has_nonfinite <- function(x, depth = 0L) {
  if (depth > 6L) return(FALSE)
  if (is.double(x) || is.complex(x)) return(any(is.nan(x) | is.infinite(x)))
  if (isS4(x)) {
    if (methods::is(x, "dsparseMatrix") || methods::is(x, "ddenseMatrix")) {
      return(fz_has_nonfinite(x@x, depth + 1L))
    }
    return(FALSE)
  }
  if (is.list(x) && !inherits(x, "ggplot_built")) {
    for (el in x) if (fz_has_nonfinite(el, depth + 1L)) return(TRUE)
  }
  FALSE
}

# Does the message name the argument? 'arg', `arg`, "arg" or the same with $field / [..] / @.
fz_names_arg <- function(msg, arg) {
  a <- gsub(".", "\\.", arg, fixed = TRUE) # argument names: letters, digits, '.', '_' 
  grepl(sprintf("(['\"`\u2018])%s(\\1|\u2019|[$@\\[])", a), msg, perl = TRUE)
}

# Runs in the child: mutates (some mutations, e.g. corrupt files, are built here), calls,
# returns a small summary.
fz_child <- function(setup, draw, msgfile) {
  con <- file(msgfile, open = "w")
  sink(con, type = "message")
  wd <- tempfile("fuzz-wd")
  dir.create(wd)
  setwd(wd)
  case <- setup$cases[[draw$k]]
  mut <- draw$mut()
  args <- case$args
  if (is.null(mut$value)) args[draw$arg] <- list(NULL) else args[[draw$arg]] <- mut$value
  copy <- unserialize(serialize(args, NULL))
  r <- fz_call(case, args)
  r$mutated <- !identical(copy, args, ignore.environment = TRUE, ignore.bytecode = TRUE,
                          ignore.srcref = TRUE)
  c(list(class = mut$class, label = mut$label, invalid = mut$invalid), r)
}

# Calls case$fun with `args` (warnings muffled, messages to the sink), then case$post.
fz_call <- function(case, args) {
  fun <- get(case$fun, asNamespace("scnative"))
  t0 <- proc.time()[["elapsed"]]
  res <- tryCatch(withCallingHandlers(do.call(fun, args),
                                      warning = function(w) invokeRestart("muffleWarning"),
                                      message = function(m) invokeRestart("muffleMessage")),
                  error = function(e) e)
  if (!inherits(res, "error") && !is.null(case$post)) {
    res <- tryCatch(suppressWarnings(case$post(res)), error = function(e) e)
  }
  err <- inherits(res, "error")
  list(error = err, message = if (err) conditionMessage(res) else "",
       nonfinite = !err && fz_has_nonfinite(res), seconds = proc.time()[["elapsed"]] - t0)
}

# The outcome of one call from the child's summary (NULL: died; NA: timed out).
fz_outcome <- function(r, draw, setup) {
  case <- setup$cases[[draw$k]]
  if (isTRUE(r$mutated)) return("mutated")
  if (r$error) {
    if (fz_names_arg(r$message, draw$arg)) return("good")
    # a corrupt file: the error names the element of the file ("X/indices: ...")
    if (identical(r$class, "file") && grepl("^[A-Za-z_][^ :]*: ", r$message)) return("good")
    # ---- object cases: an edited object; the error names the assay / graph / column / slot
    if (identical(r$class, "object") && fz_names_part(r$message, r$label)) return("good")
    # a shape or names that no longer match another argument: naming that one is clear too
    if (r$class %in% c("shape", "names", "field") &&
        any(vapply(names(case$args), fz_names_arg, TRUE, msg = r$message))) {
      return("good")
    }
    return("vague")
  }
  if (r$invalid) return("silent_accepted")
  if (r$nonfinite && !isTRUE(case$base_nonfinite)) return("silent_nan")
  "ok"
}

# Runs the base calls once (in this process; they use one thread) to learn which return NaN/Inf anyway, and checks
# they all work (a base call that fails is a bug of the fuzzer or of the package).
fuzz_check_base <- function(setup) {
  wd <- tempfile("fuzz-base")
  dir.create(wd)
  old <- setwd(wd) # write_h5ad's relative path, ggplot's Rplots.pdf
  on.exit({ setwd(old); unlink(wd, recursive = TRUE) }, add = TRUE)
  bad <- character()
  for (k in seq_along(setup$cases)) {
    draw <- list(k = k, arg = names(setup$cases[[k]]$args)[1L],
                 mut = function() fz_mut(setup$cases[[k]]$args[[1L]], "none", "none", FALSE))
    r <- fz_call(setup$cases[[k]], setup$cases[[k]]$args)
    if (r$error) {
      bad <- c(bad, sprintf("%s: %s", setup$cases[[k]]$name, r$message))
    } else {
      setup$cases[[k]]$base_nonfinite <- r$nonfinite
    }
  }
  setup$base_failures <- bad
  setup
}

fz_run_one <- function(setup, draw, timeout) {
  msgfile <- tempfile("fuzz-msg")
  job <- parallel::mcparallel(fz_child(setup, draw, msgfile), silent = TRUE,
                              mc.set.seed = FALSE)
  got <- parallel::mccollect(job, wait = FALSE, timeout = timeout)
  if (is.null(got)) {
    tools::pskill(job$pid, tools::SIGKILL)
    suppressWarnings(parallel::mccollect(job, wait = TRUE))
    unlink(msgfile)
    return(list(outcome = "hang", res = NULL, detail = ""))
  }
  r <- got[[1L]]
  if (inherits(r, "try-error")) { # a bug of the fuzzer itself
    unlink(msgfile)
    return(list(outcome = "engine_error", res = NULL, detail = as.character(r)))
  }
  if (is.null(r)) {
    txt <- if (file.exists(msgfile)) readLines(msgfile, warn = FALSE) else character()
    unlink(msgfile)
    cause <- grep("caught segfault|cause|caught bus|illegal|abort|floating", txt,
                  value = TRUE, ignore.case = TRUE)
    detail <- paste(utils::head(cause, 3L), collapse = " | ")
    return(list(outcome = "crash", res = NULL, detail = detail))
  }
  unlink(msgfile)
  list(outcome = NA_character_, res = r, detail = "")
}

# Runs calls `from`..`to` of the campaign `seed`; returns a data.frame, one row per call.
fuzz_run <- function(setup, n, seed = 1, from = 1L, timeout = 20, verbose = FALSE) {
  rows <- vector("list", n)
  for (j in seq_len(n)) {
    i <- from + j - 1L
    draw <- fuzz_draw(setup, seed, i)
    case <- setup$cases[[draw$k]]
    r <- fz_run_one(setup, draw, timeout)
    if (is.na(r$outcome)) {
      out <- fz_outcome(r$res, draw, setup)
      rows[[j]] <- data.frame(i = i, case = case$name, fun = case$fun, arg = draw$arg,
                              class = r$res$class, label = r$res$label,
                              invalid = r$res$invalid, outcome = out,
                              message = substr(r$res$message, 1L, 300L),
                              seconds = r$res$seconds, stringsAsFactors = FALSE)
    } else {
      # the mutation's description, redrawn here (same seed) for the report
      set.seed((seed * 1000003 + i) %% 2147483647)
      d2 <- fuzz_draw(setup, seed, i)
      m <- tryCatch(d2$mut(), error = function(e) list(class = "?", label = "?", invalid = NA))
      rows[[j]] <- data.frame(i = i, case = case$name, fun = case$fun, arg = draw$arg,
                              class = m$class, label = m$label, invalid = m$invalid,
                              outcome = r$outcome, message = substr(r$detail, 1L, 300L),
                              seconds = NA_real_, stringsAsFactors = FALSE)
    }
    if (verbose && (j %% 100L == 0L || !rows[[j]]$outcome %in% c("ok", "good"))) {
      x <- rows[[j]]
      if (!x$outcome %in% c("ok", "good")) {
        message(sprintf("[%d] %s %s(%s: %s): %s", i, x$outcome, x$case, x$arg, x$label,
                        substr(x$message, 1, 150)))
      } else message(sprintf("[%d] ...", i))
    }
  }
  do.call(rbind, rows)
}

# Replays call `i` of campaign `seed` in this process (no child): for a crash, the process
# dies with the signal (tools/fuzz.R runs this in a fresh Rscript to learn the signal).
fuzz_replay <- function(setup, seed, i) {
  draw <- fuzz_draw(setup, seed, i)
  case <- setup$cases[[draw$k]]
  mut <- draw$mut()
  cat(sprintf("call %d: %s, argument '%s': %s (%s)\n", i, case$name, draw$arg, mut$label,
              mut$class))
  args <- case$args
  if (is.null(mut$value)) args[draw$arg] <- list(NULL) else args[[draw$arg]] <- mut$value
  fun <- get(case$fun, asNamespace("scnative"))
  res <- tryCatch(do.call(fun, args), error = function(e) e)
  if (!inherits(res, "error") && !is.null(case$post)) res <- case$post(res)
  res
}

# ---- the report -----------------------------------------------------------------------------

fuzz_counts <- function(res) {
  o <- res$outcome
  c(calls = nrow(res), crash = sum(o == "crash"), hang = sum(o == "hang"),
    silent_accepted = sum(o == "silent_accepted"), silent_nan = sum(o == "silent_nan"),
    vague = sum(o == "vague"), mutated = sum(o == "mutated"), good = sum(o == "good"),
    ok = sum(o == "ok"), invalid = sum(res$invalid %in% TRUE))
}

# Markdown: the outcome table, per function, per mutation class, then examples.
fuzz_report <- function(res, setup, seed, signals = NULL, seconds = NA) {
  cn <- fuzz_counts(res)
  crash_detail <- ""
  if (!is.null(signals) && length(signals)) {
    tab <- table(signals)
    crash_detail <- paste0(" (", paste(sprintf("%s %d", names(tab), as.integer(tab)),
                                       collapse = ", "), ")")
  }
  L <- c(sprintf("# Fuzz campaign: %d calls, seed %d%s", nrow(res), seed,
                 if (is.finite(seconds)) sprintf(", %.0f s", seconds) else ""), "",
         "| outcome | calls | what it means |", "|---|---:|---|",
         sprintf("| crash | %d%s | the R session dies |", cn[["crash"]], crash_detail),
         sprintf("| hang | %d | no answer within the time limit |", cn[["hang"]]),
         sprintf("| silent | %d (%d invalid input accepted, %d results holding NaN/Inf) | a wrong answer with no error |",
                 cn[["silent_accepted"]] + cn[["silent_nan"]], cn[["silent_accepted"]],
                 cn[["silent_nan"]]),
         sprintf("| vague error | %d | the message does not name the argument |", cn[["vague"]]),
         sprintf("| mutated input | %d | an argument changed in place |", cn[["mutated"]]),
         sprintf("| good error | %d | names the argument |", cn[["good"]]),
         sprintf("| accepted | %d | a possibly valid input, result without NaN/Inf |", cn[["ok"]]),
         "", sprintf("Inputs marked invalid: %d of %d calls (silent %.1f%%, vague %.1f%% of them).",
                     cn[["invalid"]], cn[["calls"]],
                     100 * sum(res$outcome == "silent_accepted") / max(1, cn[["invalid"]]),
                     100 * sum(res$outcome == "vague" & res$invalid %in% TRUE) /
                       max(1, cn[["invalid"]])), "")
  by <- function(col) {
    keys <- sort(unique(res[[col]]))
    out <- c(sprintf("| %s | calls | crash | hang | silent | vague | mutated |", col),
             "|---|---:|---:|---:|---:|---:|---:|")
    for (k in keys) {
      o <- res$outcome[res[[col]] == k]
      out <- c(out, sprintf("| %s | %d | %d | %d | %d | %d | %d |", k, length(o),
                            sum(o == "crash"), sum(o == "hang"),
                            sum(o %in% c("silent_accepted", "silent_nan")), sum(o == "vague"),
                            sum(o == "mutated")))
    }
    c(out, "")
  }
  L <- c(L, "## By function", "", by("fun"), "## By mutation class", "", by("class"))
  if (length(setup$skipped)) {
    L <- c(L, sprintf("Exported but without a base call (not fuzzed; add them to fuzz_setup()): %s",
                      paste(setup$skipped, collapse = ", ")), "")
  }
  if (length(setup$not_fuzzed)) {
    L <- c(L, sprintf("Not fuzzed by design: %s", paste(setup$not_fuzzed, collapse = ", ")), "")
  }
  bad <- res[!res$outcome %in% c("ok", "good"), , drop = FALSE]
  if (nrow(bad)) {
    L <- c(L, "## Findings (up to 8 per outcome and function)", "",
           sprintf("Replay one: `Rscript tools/fuzz.R SEED=%d REPLAY=<call>`", seed), "",
           "| call | outcome | case | argument | mutation | message |",
           "|---:|---|---|---|---|---|")
    for (o in c("crash", "hang", "mutated", "silent_accepted", "silent_nan", "vague")) {
      b <- bad[bad$outcome == o, , drop = FALSE]
      for (f in unique(b$fun)) {
        bf <- utils::head(b[b$fun == f, , drop = FALSE], 8L)
        L <- c(L, sprintf("| %d | %s | %s | %s | %s | %s |", bf$i, o, bf$case, bf$arg,
                          gsub("|", "\\|", bf$label, fixed = TRUE),
                          gsub("\n", " ", gsub("|", "\\|", substr(bf$message, 1, 160),
                                               fixed = TRUE))))
      }
    }
  }
  L
}

# Runs the campaign in a fresh R process (the caller may have used OpenMP threads, which a
# forked child cannot use): returns the data.frame of fuzz_run() and the setup's notes.
fuzz_run_fresh <- function(n, seed = 1, timeout = 20, lib = .libPaths(), mem_kb = 8e6) {
  helper <- normalizePath(sys_helper_path())
  out <- tempfile(fileext = ".rds")
  code <- sprintf(paste0("source('%s'); s <- fuzz_setup(objects = FALSE); s <- fuzz_check_base(s); ",
                         "r <- fuzz_run(s, %d, seed = %d, timeout = %g); ",
                         "saveRDS(list(res = r, setup = s[c('skipped', 'not_fuzzed', 'base_failures')], ",
                         "report = fuzz_report(r, s, %d)), '%s')"),
                  helper, as.integer(n), as.integer(seed), timeout, as.integer(seed), out)
  script <- tempfile(fileext = ".R")
  writeLines(code, script)
  rscript <- file.path(R.home("bin"), "Rscript")
  cmd <- sprintf("%sR_LIBS=%s OMP_THREAD_LIMIT=2 '%s' --vanilla '%s'",
                 if (is.finite(mem_kb)) sprintf("ulimit -v %d; ", as.integer(mem_kb)) else "",
                 shQuote(paste(lib, collapse = ":")), rscript, script)
  log <- suppressWarnings(system2("sh", c("-c", shQuote(cmd)), stdout = TRUE, stderr = TRUE))
  if (!file.exists(out)) stop("the fuzz process failed:\n", paste(utils::tail(log, 30), collapse = "\n"))
  readRDS(out)
}

sys_helper_path <- function() {
  cands <- c(Sys.getenv("SCNATIVE_FUZZ_HELPER"), file.path(getwd(), "helper-fuzz.R"),
             "tests/testthat/helper-fuzz.R")
  cands <- cands[nzchar(cands) & file.exists(cands)]
  if (!length(cands)) stop("helper-fuzz.R not found")
  cands[1L]
}

# ---- object cases ---------------------------------------------------------------------------
# The Seurat (v4 Assay slots; v5 Assay5 objects are not mutated) and SingleCellExperiment
# methods of the workflow (issue 17). fz_object_cases() builds tiny processed objects and one
# case per method and class; each case says which parts of the object the call needs
# (`needs`: removing one must error) and reads (`reads`: corrupting one must error).
# fz_object_muts() makes the hostile / careless edits: an assay or layer missing, wrong dims or
# dimnames, NA / Inf / negative values, cells reordered in one assay, a graph or reduction of
# the wrong size or with other cells, metadata columns of the wrong type or length, slots
# edited without validObject() (`@<-`, attr()), an object of another class. A mutation's label
# quotes the part it edits: an error naming that part (or the argument) is a good error.

fz_is_object <- function(x) inherits(x, c("Seurat", "SummarizedExperiment"))

# parts: list(assays, graphs, reductions, cols, fcols) of names.
fz_obj_parts <- function(x) {
  if (inherits(x, "Seurat")) {
    a <- SeuratObject::DefaultAssay(x)
    fc <- unique(unlist(lapply(names(x@assays), function(k) names(x@assays[[k]]@meta.features))))
    return(list(assays = names(x@assays), graphs = names(x@graphs),
                reductions = names(x@reductions), cols = names(x@meta.data), fcols = fc))
  }
  list(assays = SummarizedExperiment::assayNames(x),
       graphs = if (methods::is(x, "SingleCellExperiment")) SingleCellExperiment::colPairNames(x),
       reductions = if (methods::is(x, "SingleCellExperiment")) {
         SingleCellExperiment::reducedDimNames(x)
       },
       cols = names(SummarizedExperiment::colData(x)),
       fcols = names(SummarizedExperiment::rowData(x)))
}

# The matrix of an assay (Seurat: its counts slot when filled, else data) and its raw
# replacement (no validity check: the object may become inconsistent).
fz_obj_assay <- function(x, a) {
  if (inherits(x, "Seurat")) {
    s <- x@assays[[a]]
    return(if (length(s@counts) && prod(dim(s@counts)) > 0) s@counts else s@data)
  }
  x@assays@data@listData[[a]]
}
fz_obj_set_assay <- function(x, a, m, both = FALSE) {
  if (inherits(x, "Seurat")) {
    s <- x@assays[[a]]
    filled <- length(s@counts) && prod(dim(s@counts)) > 0
    if (filled) methods::slot(s, "counts", check = FALSE) <- m
    if (!filled || both) methods::slot(s, "data", check = FALSE) <- m
    x@assays[[a]] <- s
    return(x)
  }
  d <- x@assays
  d@data@listData[[a]] <- m
  methods::slot(x, "assays", check = FALSE) <- d
  x
}

fz_obj_graph_edit <- function(x, g, f_seurat, f_hits) {
  if (inherits(x, "Seurat")) {
    gr <- x@graphs[[g]]
    x@graphs[[g]] <- f_seurat(gr)
    return(x)
  }
  ic <- x@int_colData
  cp <- ic@listData$colPairs
  ds <- cp@listData[[g]]
  methods::slot(ds, "hits", check = FALSE) <- f_hits(ds@hits)
  cp@listData[[g]] <- ds
  ic@listData$colPairs <- cp
  methods::slot(x, "int_colData", check = FALSE) <- ic
  x
}

fz_obj_reduction_edit <- function(x, r, f) {
  if (inherits(x, "Seurat")) {
    d <- x@reductions[[r]]
    methods::slot(d, "cell.embeddings", check = FALSE) <- f(d@cell.embeddings)
    x@reductions[[r]] <- d
    return(x)
  }
  ic <- x@int_colData
  rd <- ic@listData$reducedDims
  rd@listData[[r]] <- f(rd@listData[[r]])
  ic@listData$reducedDims <- rd
  methods::slot(x, "int_colData", check = FALSE) <- ic
  x
}

fz_obj_col_edit <- function(x, col, f) {
  if (inherits(x, "Seurat")) {
    md <- x@meta.data
    v <- f(md[[col]])
    if (is.null(v) || length(v) == nrow(md)) {
      md[[col]] <- v
    } else {
      attr(md, "row.names") <- NULL
      md <- as.list(md)
      md[[col]] <- v
      attr(md, "row.names") <- colnames(x)
      class(md) <- "data.frame" # a data.frame whose columns differ in length
    }
    methods::slot(x, "meta.data", check = FALSE) <- md
    return(x)
  }
  cd <- x@colData
  cd@listData[[col]] <- f(cd@listData[[col]])
  if (is.null(cd@listData[[col]])) cd@listData[[col]] <- NULL
  methods::slot(x, "colData", check = FALSE) <- cd
  x
}

fz_obj_fcol_edit <- function(x, col, f) {
  if (inherits(x, "Seurat")) {
    for (a in names(x@assays)) {
      s <- x@assays[[a]]
      if (col %in% names(s@meta.features)) {
        mf <- s@meta.features
        v <- f(mf[[col]])
        if (is.null(v) || length(v) == nrow(mf)) mf[[col]] <- v else {
          rn <- rownames(mf); mf <- as.list(mf); mf[[col]] <- v
          attr(mf, "row.names") <- rn; class(mf) <- "data.frame" # columns differ in length
        }
        methods::slot(s, "meta.features", check = FALSE) <- mf
        x@assays[[a]] <- s
      }
    }
    return(x)
  }
  rr <- x@rowRanges # rowData lives in the mcols of rowRanges
  rd <- rr@elementMetadata
  rd@listData[[col]] <- f(rd@listData[[col]])
  methods::slot(rr, "elementMetadata", check = FALSE) <- rd
  methods::slot(x, "rowRanges", check = FALSE) <- rr
  x
}

fz_object_muts <- function(value, ctx) {
  case <- ctx$case
  needs <- if (is.null(case$needs)) list() else case$needs
  reads <- if (is.null(case$reads)) list() else case$reads
  inn <- function(kind, nm, what = reads) nm %in% c(what[[kind]], needs[[kind]])
  p <- fz_obj_parts(value)
  seurat <- inherits(value, "Seurat")
  if (seurat && !methods::is(value@assays[[1L]], "Assay")) return(fz_type_muts(value, ctx))
  cells <- colnames(value)
  n <- length(cells)
  out <- list()
  m <- function(f) out[[length(out) + 1L]] <<- f
  # assays / layers
  for (a in p$assays) local({
    a <- a
    cnt <- a %in% c("spliced", "unspliced", "counts", case$counts_assays) && !isTRUE(case$signed_ok)
    m(function() {
      x <- value
      if (seurat) {
        if (identical(a, SeuratObject::DefaultAssay(value))) {
          x@assays[[a]] <- NULL
          return(fz_mut(x, "object", sprintf("default assay '%s' removed by a slot edit", a), TRUE))
        }
        x@assays[[a]] <- NULL
      } else {
        x <- fz_obj_set_assay(x, a, NULL)
        x@assays@data@listData[[a]] <- NULL
      }
      fz_mut(x, "object", sprintf("assay '%s' removed", a), inn("assays", a, needs))
    })
    if (seurat) m(function() {
      x <- value; s <- x@assays[[a]]
      methods::slot(s, "data", check = FALSE) <- methods::new("dgCMatrix")
      methods::slot(s, "counts", check = FALSE) <- methods::new("dgCMatrix")
      x@assays[[a]] <- s
      fz_mut(x, "object", sprintf("layers of assay '%s' emptied", a), inn("assays", a, needs))
    })
    m(function() {
      x <- fz_obj_set_assay(value, a, fz_obj_assay(value, a)[, -1L, drop = FALSE], both = TRUE)
      fz_mut(x, "object", sprintf("assay '%s' has a cell less (slot edit)", a), inn("assays", a))
    })
    m(function() {
      x <- fz_obj_set_assay(value, a, fz_obj_assay(value, a)[-1L, , drop = FALSE], both = TRUE)
      fz_mut(x, "object", sprintf("assay '%s' has a gene less (slot edit)", a), inn("assays", a))
    })
    m(function() {
      mm <- fz_obj_assay(value, a); k <- sample.int(n, 1L); j <- sample.int(nrow(mm), 1L)
      mm[j, k] <- NA
      fz_mut(fz_obj_set_assay(value, a, mm, both = TRUE), "object",
             sprintf("assay '%s': an NA entry", a), inn("assays", a) && !a %in% case$na_assays)
    })
    m(function() {
      mm <- fz_obj_assay(value, a); k <- sample.int(n, 1L); j <- sample.int(nrow(mm), 1L)
      mm[j, k] <- Inf
      fz_mut(fz_obj_set_assay(value, a, mm, both = TRUE), "object",
             sprintf("assay '%s': an Inf entry", a), inn("assays", a) && !a %in% case$na_assays)
    })
    m(function() {
      mm <- fz_obj_assay(value, a); k <- sample.int(n, 1L); j <- sample.int(nrow(mm), 1L)
      mm[j, k] <- -3
      fz_mut(fz_obj_set_assay(value, a, mm, both = TRUE), "object",
             sprintf("assay '%s': a negative entry", a), cnt && inn("assays", a))
    })
    m(function() {
      mm <- fz_obj_assay(value, a); o <- c(2L, 1L, seq_len(n)[-(1:2)])
      mm <- mm[, o, drop = FALSE]
      # Seurat keeps the cell names of each assay: reordered cells are detectable there
      fz_mut(fz_obj_set_assay(value, a, mm, both = TRUE), "object",
             sprintf("assay '%s': cells 1 and 2 swapped", a), seurat && inn("assays", a))
    })
    m(function() {
      mm <- fz_obj_assay(value, a); colnames(mm) <- paste0("other", seq_len(ncol(mm)))
      fz_mut(fz_obj_set_assay(value, a, mm, both = TRUE), "object",
             sprintf("assay '%s': other cell names", a), seurat && inn("assays", a))
    })
    m(function() {
      mm <- as.matrix(fz_obj_assay(value, a)); storage.mode(mm) <- "character"
      fz_mut(fz_obj_set_assay(value, a, mm, both = TRUE), "object",
             sprintf("assay '%s' holds strings", a), inn("assays", a))
    })
  })
  for (g in p$graphs) local({
    g <- g
    inv <- inn("graphs", g) || inn("graphs", sub("_neg$", "", g))
    m(function() {
      x <- value
      if (seurat) x@graphs[[g]] <- NULL else {
        ic <- x@int_colData; ic@listData$colPairs@listData[[g]] <- NULL
        methods::slot(x, "int_colData", check = FALSE) <- ic
      }
      fz_mut(x, "object", sprintf("graph '%s' removed", g),
             inn("graphs", g, needs) || inn("graphs", sub("_neg$", "", g), needs))
    })
    m(function() fz_mut(fz_obj_graph_edit(value, g, function(G) {
      G2 <- G[-1L, -1L]; methods::as(G2, "Graph") },
      function(h) { keep <- h@from < n & h@to < n
        h@from <- h@from[keep]; h@to <- h@to[keep]; h@nLnode <- h@nRnode <- n - 1L
        h@elementMetadata <- h@elementMetadata[keep, , drop = FALSE]; h }),
      "object", sprintf("graph '%s' has a cell less", g), inv))
    m(function() fz_mut(fz_obj_graph_edit(value, g, function(G) {
      G@x[1L] <- NA; G },
      function(h) { h@elementMetadata@listData[[1L]][1L] <- NA; h }),
      "object", sprintf("graph '%s': an NA weight", g), inv))
    m(function() fz_mut(fz_obj_graph_edit(value, g, function(G) {
      G@x[1L] <- -Inf; G },
      function(h) { h@elementMetadata@listData[[1L]][1L] <- -Inf; h }),
      "object", sprintf("graph '%s': a -Inf weight", g), inv))
    m(function() fz_mut(fz_obj_graph_edit(value, g, function(G) {
      G@i[1L] <- nrow(G) + 4L; G },
      function(h) { h@to[1L] <- n + 4L; h }),
      "object", sprintf("graph '%s': an index past the cells (slot edit)", g), inv))
    if (seurat) m(function() fz_mut(fz_obj_graph_edit(value, g, function(G) {
      dimnames(G) <- list(paste0("o", seq_len(n)), paste0("o", seq_len(n))); G }, NULL),
      "object", sprintf("graph '%s': other cell names", g), inv))
  })
  for (r in p$reductions) local({
    r <- r
    inv <- inn("reductions", r)
    m(function() fz_mut(fz_obj_reduction_edit(value, r, function(E) E[-1L, , drop = FALSE]),
                        "object", sprintf("reduction '%s' has a cell less (slot edit)", r), inv))
    m(function() fz_mut(fz_obj_reduction_edit(value, r, function(E) {
      E[sample.int(length(E), 1L)] <- NaN; E }), "object",
      sprintf("reduction '%s': a NaN coordinate", r), inv))
    m(function() fz_mut(fz_obj_reduction_edit(value, r, function(E) E[, 0L, drop = FALSE]),
                        "object", sprintf("reduction '%s' has 0 columns", r), inv))
    if (seurat) m(function() fz_mut(fz_obj_reduction_edit(value, r, function(E) {
      rownames(E) <- rev(rownames(E)); E }), "object",
      sprintf("reduction '%s': cell names reversed", r), inv))
  })
  for (cl in p$cols) local({
    cl <- cl
    inv <- inn("cols", cl)
    m(function() fz_mut(fz_obj_col_edit(value, cl, function(v) v[-1L]), "object",
                        sprintf("cell metadata column '%s' one value short (slot edit)", cl), inv))
    m(function() fz_mut(fz_obj_col_edit(value, cl, function(v) as.list(v)), "object",
                        sprintf("cell metadata column '%s' is a list", cl), FALSE))
    m(function() fz_mut(fz_obj_col_edit(value, cl, function(v) { v[1L] <- NA; v }), "object",
                        sprintf("cell metadata column '%s': an NA", cl),
                        inv && !cl %in% case$na_cols))
    m(function() fz_mut(fz_obj_col_edit(value, cl, function(v) rep("fuzz", length(v))), "object",
                        sprintf("cell metadata column '%s' is all \"fuzz\"", cl),
                        inv && !cl %in% case$free_cols))
  })
  for (fc in p$fcols) local({
    fc <- fc
    inv <- inn("fcols", fc)
    m(function() fz_mut(fz_obj_fcol_edit(value, fc, function(v) NULL), "object",
                        sprintf("feature column '%s' removed", fc), inn("fcols", fc, needs)))
    m(function() fz_mut(fz_obj_fcol_edit(value, fc, function(v) v[-1L]), "object",
                        sprintf("feature column '%s' one value short (slot edit)", fc), inv))
    m(function() fz_mut(fz_obj_fcol_edit(value, fc, function(v) rep("fuzz", length(v))),
                        "object", sprintf("feature column '%s' is all \"fuzz\"", fc), inv))
  })
  # the object as a whole
  m(function() { x <- value; attr(x, "class") <- "fuzz_object"
    fz_mut(x, "object", "class attribute replaced by attr()", TRUE) })
  m(function() fz_mut(unclass(value), "object", "unclassed (an S4SXP without class)", TRUE))
  if (seurat) {
    m(function() { x <- value
      methods::slot(x, "meta.data", check = FALSE) <- x@meta.data[-1L, , drop = FALSE]
      fz_mut(x, "object", "'meta.data' slot a row short (slot edit)", length(needs$cols) > 0) })
    m(function() { x <- value; methods::slot(x, "active.assay", check = FALSE) <- "fuzz"
      fz_mut(x, "object", "'active.assay' names no assay (slot edit)", FALSE) })
    m(function() { x <- value; methods::slot(x, "assays", check = FALSE) <- list()
      fz_mut(x, "object", "'assays' slot emptied (slot edit)", TRUE) })
  } else {
    m(function() { x <- value
      methods::slot(x, "colData", check = FALSE) <- x@colData[-1L, , drop = FALSE]
      fz_mut(x, "object", "'colData' slot a row short (slot edit)", TRUE) })
    m(function() fz_mut(methods::as(value, "SummarizedExperiment"), "object",
                        "a SummarizedExperiment", FALSE))
    m(function() { x <- value; attr(x, "int_colData") <- NULL
      fz_mut(x, "object", "'int_colData' slot removed by attr()", TRUE) })
  }
  m(function() fz_mut(as.list(SummarizedExperiment::assays(
    if (seurat) SingleCellExperiment::SingleCellExperiment(list(m = matrix(1, 2, 2))) else value)),
    "object", "a list of assays", TRUE))
  out
}

# The object edits and junk of another type; a data.frame may be a valid matrix call
# (`df_ok`: the generic's default method takes one alone).
fz_object_all_muts <- function(value, ctx) {
  ty <- fz_type_muts(value, ctx)
  if (isTRUE(ctx$case$df_ok)) {
    ty[[4L]] <- function() fz_mut(data.frame(fuzz = 1:2), "type", "a data.frame", FALSE)
  }
  c(fz_object_muts(value, ctx), ty)
}

# Tiny processed objects and one case per object method (SCE and, when SeuratObject is
# installed, Seurat v4).
fz_object_cases <- function(sim, sp, rx, lab, sig, cp, build) {
  have_sce <- requireNamespace("SingleCellExperiment", quietly = TRUE)
  have_so <- requireNamespace("SeuratObject", quietly = TRUE)
  q <- function(expr) suppressWarnings(suppressMessages(expr))
  out <- list()
  add <- function(name, fun, args, ...) {
    out[[length(out) + 1L]] <<- c(list(name = name, fun = fun, args = args,
                                       focus = names(args)[1L]),
                                  list(...))
  }
  grp <- rep(c("a", "b", "c"), 20)
  emb <- NULL
  kinds <- c(if (have_sce) "sce", if (have_so) "seurat")
  for (kind in kinds) {
    raw <- if (kind == "sce") {
      SingleCellExperiment::SingleCellExperiment(list(spliced = sim$spliced,
                                                      unspliced = sim$unspliced))
    } else {
      so <- SeuratObject::CreateSeuratObject(counts = sim$spliced, assay = "spliced")
      so[["unspliced"]] <- SeuratObject::CreateAssayObject(counts = sim$unspliced)
      so
    }
    mom <- q(moments(raw, n_neighbors = 10, threads = 1))
    fitted <- q(recover_dynamics(mom, var_names = "all", max_iter = 2, threads = 1,
                                 progress = FALSE))
    vel <- q(velocity(fitted, min_r2 = NULL))
    vg <- q(velocity_graph(vel, threads = 1, progress = FALSE, velocity_genes = rep(TRUE, 6)))
    if (is.null(emb)) {
      emb <- stats::prcomp(t(log1p(as.matrix(obj_matrix_fz(vg, "Ms")))))$x[, 1:2]
    }
    full <- if (kind == "sce") {
      SingleCellExperiment::reducedDim(vg, "umap") <- emb
      vg
    } else {
      e <- emb; colnames(e) <- c("UMAP_1", "UMAP_2"); rownames(e) <- colnames(vg)
      vg[["umap"]] <- SeuratObject::CreateDimReducObject(embeddings = e, key = "UMAP_",
                                                         assay = "spliced")
      vg
    }
    full <- q(velocity_embedding(full))
    full <- q(terminal_states(full, threads = 1))
    full <- q(latent_time(full))
    full <- obj_add_col_fz(full, "clusters", grp)
    K <- toupper(kind)
    fitL <- c("fit_t", "fit_tau", "fit_tau_")
    # NA / Inf in the fit's layers may be valid (unfitted genes), as in the matrix API
    add(sprintf("moments (%s)", K), "moments", list(x = raw, n_neighbors = 10, threads = 1),
        needs = list(assays = c("spliced", "unspliced")))
    add(sprintf("recover_dynamics (%s)", K), "recover_dynamics",
        list(x = mom, var_names = "all", max_iter = 2, threads = 1, progress = FALSE),
        reads = list(assays = c("Ms", "Mu"), graphs = "scnative_connectivities"),
        iters = "max_iter")
    add(sprintf("velocity (%s)", K), "velocity", list(x = fitted, min_r2 = NULL),
        needs = list(assays = c("Ms", "Mu", fitL), fcols = "fit_alpha"), na_assays = fitL,
        reads = list(graphs = "scnative_connectivities",
                     fcols = c("fit_beta", "fit_gamma", "fit_scaling", "fit_t_", "fit_u0",
                               "fit_s0")))
    add(sprintf("velocity_graph (%s)", K), "velocity_graph",
        list(x = vel, threads = 1, progress = FALSE),
        needs = list(assays = c("velocity", "Ms"), graphs = "scnative_distances",
                     fcols = "velocity_genes"))
    add(sprintf("velocity_embedding (%s)", K), "velocity_embedding", list(x = full),
        needs = list(reductions = "umap", graphs = "velocity_graph"))
    add(sprintf("terminal_states (%s)", K), "terminal_states", list(x = full, threads = 1),
        needs = list(graphs = c("velocity_graph", "scnative_distances")))
    add(sprintf("velocity_pseudotime (%s)", K), "velocity_pseudotime", list(x = full, threads = 1),
        needs = list(graphs = c("velocity_graph", "scnative_connectivities")),
        reads = list(cols = c("root_cells", "end_points")),
        na_cols = c("root_cells", "end_points")) # NA scores: documented as no score
    add(sprintf("latent_time (%s)", K), "latent_time", list(x = full),
        needs = list(assays = c("Ms", fitL), graphs = "scnative_connectivities",
                     fcols = "fit_alpha"),
        reads = list(cols = "root_cells", fcols = "fit_likelihood"), na_assays = fitL,
        na_cols = "root_cells")
    add(sprintf("velocity_confidence (%s)", K), "velocity_confidence", list(x = full),
        needs = list(assays = "velocity", graphs = "scnative_distances"),
        na_assays = "velocity") # NA velocities (unfitted genes) are valid, as in the matrix API
    add(sprintf("rank_velocity_genes (%s)", K), "rank_velocity_genes",
        list(x = full, groupby = "clusters", n_genes = 3),
        needs = list(assays = c("velocity", "Ms", "Mu"), cols = "clusters"),
        reads = list(fcols = c("velocity_genes", "fit_likelihood")), free_cols = "clusters",
        na_cols = "clusters", na_assays = "velocity") # NA velocities: as in the matrix API
    add(sprintf("rank_dynamical_genes (%s)", K), "rank_dynamical_genes",
        list(x = full, groupby = "clusters", n_genes = 3),
        needs = list(assays = c("Ms", "Mu", fitL), cols = "clusters", fcols = "fit_alpha"),
        reads = list(graphs = "scnative_connectivities"), free_cols = "clusters",
        na_cols = "clusters", na_assays = fitL)
    if (!is.null(build)) {
      add(sprintf("plot_velocity_embedding (%s)", K), "plot_velocity_embedding", list(x = full),
          needs = list(reductions = c("umap", "velocity_umap")), post = build)
      add(sprintf("plot_velocity_graph (%s)", K), "plot_velocity_graph", list(x = full),
          needs = list(reductions = "umap", graphs = c("velocity_graph", "scnative_distances")),
          post = build)
    }
    # spatial: spots and a reference
    spo <- if (kind == "sce") {
      SingleCellExperiment::SingleCellExperiment(list(counts = sp$counts))
    } else {
      spc <- sp$counts
      rownames(spc) <- gsub("_", "-", rownames(spc)) # Seurat feature names cannot hold '_'
      SeuratObject::CreateSeuratObject(counts = spc, assay = "Spatial")
    }
    sigk <- sig
    if (kind == "seurat") rownames(sigk) <- gsub("_", "-", rownames(sigk))
    ref <- if (kind == "sce") {
      SingleCellExperiment::SingleCellExperiment(list(counts = rx))
    } else {
      rxk <- rx
      rownames(rxk) <- gsub("_", "-", rownames(rxk))
      SeuratObject::CreateSeuratObject(counts = rxk, assay = "RNA")
    }
    ref <- obj_add_col_fz(ref, "lab", lab)
    ca <- if (kind == "sce") "counts" else c("Spatial", "RNA")
    add(sprintf("cell2location (%s)", K), "cell2location",
        list(x = spo, signatures = sigk, max_epochs = 2, seed = 1, progress = FALSE, threads = 1),
        needs = list(assays = ca), counts_assays = ca, iters = "max_epochs")
    add(sprintf("reference_signatures (%s)", K), "reference_signatures",
        list(x = ref, labels = "lab", max_epochs = 2, seed = 1, progress = FALSE, threads = 1),
        needs = list(assays = ca, cols = "lab"), iters = "max_epochs",
        free_cols = "lab") # one cell type is valid
    add(sprintf("cluster_averages (%s)", K), "cluster_averages", list(x = ref, labels = "lab"),
        needs = list(assays = ca, cols = "lab"), free_cols = "lab", signed_ok = TRUE,
        df_ok = TRUE) # a data.frame with one label per column is a valid matrix call
    if (kind == "seurat") {
      add("add_cell_abundance (SEURAT)", "add_cell_abundance",
          list(object = spo, fit_or_posterior = cp), free = "name")
    }
  }
  out
}

obj_matrix_fz <- function(x, a) {
  if (inherits(x, "Seurat")) return(fz_obj_assay(x, a))
  SummarizedExperiment::assay(x, a)
}

obj_add_col_fz <- function(x, col, v) {
  if (inherits(x, "Seurat")) {
    x@meta.data[[col]] <- v
    return(x)
  }
  x[[col]] <- v
  x
}

# Does the error name the part of the object a mutation edited (quoted in its label)?
fz_names_part <- function(msg, label) {
  parts <- regmatches(label, gregexpr("'[^']+'", label))[[1L]]
  parts <- gsub("'", "", parts)
  length(parts) > 0L && any(vapply(parts, function(p) grepl(p, msg, fixed = TRUE), TRUE))
}
