# Seurat (v4 and v5) and SingleCellExperiment methods of the velocity workflow: they read the
# assays, graphs and reductions the previous step stored, call the matrix API, and store the
# results where those users look (assays, Graphs()/colPairs, reductions/reducedDims, cell and
# feature metadata, Misc()/metadata()). Accessors are in R/objects.R.

# ------------------------------------------------------------------ moments, fit, velocity

#' @rdname moments
#' @param spliced Object methods: the name of the spliced assay.
#' @param graph `NULL` (compute the neighbour graph as upstream) or the name of a cells x
#'   cells graph of the object (Seurat `Graphs()`, e.g. `"RNA_nn"` from `FindNeighbors()`;
#'   SCE `colPairs`) to average over.
#' @param graph_name Name under which the graph used is stored in the object.
#' @details For objects, `Ms` and `Mu` are stored as assays (Seurat: new assays `"Ms"`, `"Mu"`
#'   whose data layer holds them; SCE: `assay(object, "Ms")`), the graph under `graph_name`
#'   (Seurat `Graphs`, SCE `colPairs`) and, when the kNN was computed here, the kNN distances
#'   under `"scnative_distances"` (for [velocity_graph()]); nothing else is changed.
#' @export
moments.Seurat <- function(x, spliced = "spliced", unspliced = "unspliced", graph = NULL,
                           graph_name = "scnative_connectivities", ...) {
  moments_object(x, spliced, unspliced, graph, graph_name, ...)
}

#' @rdname moments
#' @export
moments.SingleCellExperiment <- function(x, spliced = "spliced", unspliced = "unspliced",
                                         graph = NULL, graph_name = "scnative_connectivities",
                                         ...) {
  moments_object(x, spliced, unspliced, graph, graph_name, ...)
}

moments_object <- function(object, s_name, u_name, graph, graph_name, ...) {
  obj_check(object)
  check_string(u_name, "unspliced")
  check_string(graph_name, "graph_name")
  S <- obj_matrix(object, s_name, arg = "spliced")
  U <- obj_matrix(object, u_name, arg = "unspliced")
  conn <- if (is.null(graph)) NULL else obj_graph(object, graph)
  m <- moments.default(S, U, connectivities = conn, ...)
  object <- obj_set_matrix(object, "Ms", m$Ms)
  object <- obj_set_matrix(object, "Mu", m$Mu)
  g <- m$connectivities
  # SCE colPairs take an unnamed matrix (named ones fail validity); Seurat graphs need names
  dn <- if (is_seurat(object)) list(colnames(m$Ms), colnames(m$Ms)) else list(NULL, NULL)
  dimnames(g) <- dn
  object <- obj_set_graph(object, graph_name, g)
  if (!is.null(m$distances)) {
    # the kNN distances, for velocity_graph() (scanpy's obsp["distances"])
    d <- m$distances
    dimnames(d) <- dn
    object <- obj_set_graph(object, "scnative_distances", d)
  }
  object
}

obj_check_names <- function(object, ...) {
  nm <- list(...)
  for (a in names(nm)) check_string(nm[[a]], a)
}

# Ms/Mu from an object, computing moments() first when they are absent but spliced and
# unspliced exist.
object_moments <- function(object, Ms, Mu, spliced, unspliced, graph_name) {
  if (!(obj_has_matrix(object, Ms) && obj_has_matrix(object, Mu))) {
    if (obj_has_matrix(object, spliced) && obj_has_matrix(object, unspliced)) {
      object <- moments_object(object, spliced, unspliced, NULL, graph_name)
    } else {
      obj_matrix(object, Ms, arg = "Ms")
      obj_matrix(object, Mu, arg = "Mu")
    }
  }
  list(object = object, Ms = obj_matrix(object, Ms, arg = "Ms"),
       Mu = obj_matrix(object, Mu, arg = "Mu"))
}

object_graph_or_null <- function(object, name) {
  if (is.null(name)) return(NULL)
  # absent: fit without one; present but broken: the error of obj_graph()
  have <- if (is_seurat(object)) {
    SeuratObject::Graphs(object)
  } else if (methods::is(object, "SingleCellExperiment")) {
    SingleCellExperiment::colPairNames(object)
  } else {
    character()
  }
  if (!name %in% have) return(NULL)
  obj_graph(object, name)
}

#' @rdname recover_dynamics_objects
#' @title recover_dynamics() and velocity() on Seurat and SingleCellExperiment objects
#' @description Fits the dynamical model ([recover_dynamics()]) or computes velocities
#'   ([velocity()]) on the `Ms`/`Mu` assays of an object. When `Ms`/`Mu` are absent but the
#'   `spliced`/`unspliced` assays exist, [moments()] is computed first (and stored).
#' @param x A Seurat or SingleCellExperiment object.
#' @param Ms,Mu Names of the assays holding the moments.
#' @param spliced,unspliced Names of the assays with spliced / unspliced counts (used when
#'   `Ms`/`Mu` are absent).
#' @param graph Name of the neighbour graph in the object (default: the one [moments()]
#'   stored); `NULL` fits without one.
#' @param ... Passed to [recover_dynamics()] / [velocity()].
#' @return The object with the results added. `recover_dynamics`: per-gene `fit_*` columns
#'   (SCE `rowData`; Seurat: feature metadata of the `Ms` assay), the layers `fit_t`,
#'   `fit_tau`, `fit_tau_` as assays, and upstream's `uns` entry in `metadata()` / `Misc()`
#'   under `"recover_dynamics"`. `velocity`: assays `velocity`, `velocity_u` and the
#'   `velocity_genes` (and `fit_r2`) feature columns.
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sim <- simulate_velocity(n_obs = 150, n_vars = 3)
#'   sce <- SingleCellExperiment::SingleCellExperiment(
#'     assays = list(spliced = sim$spliced, unspliced = sim$unspliced))
#'   sce <- recover_dynamics(sce, var_names = "all", threads = 1, progress = FALSE)
#'   sce <- velocity(sce)
#'   SummarizedExperiment::assayNames(sce)
#' }
#' @export
recover_dynamics.Seurat <- function(x, Ms = "Ms", Mu = "Mu", spliced = "spliced",
                                    unspliced = "unspliced",
                                    graph = "scnative_connectivities", ...) {
  recover_dynamics_object(x, Ms, Mu, spliced, unspliced, graph, ...)
}

#' @rdname recover_dynamics_objects
#' @export
recover_dynamics.SingleCellExperiment <- function(x, Ms = "Ms", Mu = "Mu", spliced = "spliced",
                                                  unspliced = "unspliced",
                                                  graph = "scnative_connectivities", ...) {
  recover_dynamics_object(x, Ms, Mu, spliced, unspliced, graph, ...)
}

recover_dynamics_object <- function(object, Ms, Mu, spliced, unspliced, graph, ...) {
  obj_check(object)
  obj_check_names(object, Ms = Ms, Mu = Mu, spliced = spliced, unspliced = unspliced)
  mm <- object_moments(object, Ms, Mu, spliced, unspliced, graph %||% "scnative_connectivities")
  object <- mm$object
  conn <- object_graph_or_null(object, graph)
  fit <- recover_dynamics.default(mm$Ms, mm$Mu, connectivities = conn, ...)
  ms_assay <- if (is_seurat(object) && Ms %in% SeuratObject::Assays(object)) Ms else NULL
  object <- obj_add_feature_meta(object, fit$var, assay = ms_assay)
  for (nm in names(fit$layers)) object <- obj_set_matrix(object, nm, fit$layers[[nm]])
  obj_set_misc(object, "recover_dynamics", fit$uns$recover_dynamics)
}

# Rebuilds a scnative_dynamics fit from what recover_dynamics() stored in an object.
fit_from_object <- function(object, Ms, genes) {
  ms_assay <- if (is_seurat(object) && Ms %in% SeuratObject::Assays(object)) Ms else NULL
  fm <- obj_feature_meta(object, assay = ms_assay)
  if (!"fit_alpha" %in% names(fm)) {
    stopf(paste0("the object has no feature column 'fit_alpha' (nor the other fit_* columns); ",
                 "run recover_dynamics() on it first"))
  }
  fm <- fm[match(genes, rownames(fm)), grepl("^fit_", names(fm)), drop = FALSE]
  for (k in names(fm)) {
    if (!(is.numeric(fm[[k]]) || is.logical(fm[[k]]))) {
      stopf("feature column '%s' of the object must hold numbers, not %s", k, class(fm[[k]])[1L])
    }
  }
  rownames(fm) <- genes
  lay <- lapply(c(fit_t = "fit_t", fit_tau = "fit_tau", fit_tau_ = "fit_tau_"), function(nm) {
    m <- as.matrix(obj_matrix(object, nm, arg = "layer"))
    m[match(genes, rownames(m)), , drop = FALSE]
  })
  uns <- obj_misc(object, "recover_dynamics") %||% list(use_raw = FALSE)
  structure(list(var = fm, layers = lay, uns = list(recover_dynamics = uns),
                 connectivities = NULL), class = "scnative_dynamics")
}

#' @rdname recover_dynamics_objects
#' @export
velocity.Seurat <- function(x, Ms = "Ms", Mu = "Mu", graph = "scnative_connectivities", ...) {
  velocity_object(x, Ms, Mu, graph, ...)
}

#' @rdname recover_dynamics_objects
#' @export
velocity.SingleCellExperiment <- function(x, Ms = "Ms", Mu = "Mu",
                                          graph = "scnative_connectivities", ...) {
  velocity_object(x, Ms, Mu, graph, ...)
}

velocity_object <- function(object, Ms, Mu, graph, ...) {
  obj_check(object)
  obj_check_names(object, Ms = Ms, Mu = Mu)
  S <- as.matrix(obj_matrix(object, Ms, arg = "Ms"))
  U <- as.matrix(obj_matrix(object, Mu, arg = "Mu"))
  fit <- fit_from_object(object, Ms, rownames(S))
  conn <- object_graph_or_null(object, graph)
  v <- velocity.scnative_dynamics(fit, S, U, connectivities = conn, ...)
  object <- obj_set_matrix(object, "velocity", v$velocity)
  object <- obj_set_matrix(object, "velocity_u", v$velocity_u)
  ms_assay <- if (is_seurat(object) && Ms %in% SeuratObject::Assays(object)) Ms else NULL
  object <- obj_add_feature_meta(object, v$var, assay = ms_assay)
  obj_set_misc(object, "velocity_params", v$params)
}

# ------------------------------------------------------------------ velocity graph, embedding, plots

#' @rdname velocity_graph
#' @param velocity Object methods: name of the velocity assay ([velocity()] stores
#'   `"velocity"`).
#' @param graph_name Object methods: name under which the graph is stored (positive
#'   cosines; the negative ones under `"<graph_name>_neg"`).
#' @details Object methods read the velocity assay, `Ms`, the `velocity_genes` feature
#'   column and the kNN graph `distances` (default `"scnative_distances"`, stored by
#'   [moments()]; a Seurat `FindNeighbors()` graph such as `"RNA_nn"` also works) and store
#'   the graph in `Graphs()` (Seurat) / `colPairs` (SCE), the self-transitions in the cell
#'   metadata (`velocity_self_transition`) and the genes and settings in `Misc()` /
#'   `metadata()` under `graph_name`.
#' @export
velocity_graph.Seurat <- function(x, Ms = "Ms", distances = "scnative_distances",
                                  velocity = "velocity", graph_name = "velocity_graph", ...) {
  velocity_graph_object(x, Ms, distances, velocity, graph_name, ...)
}

#' @rdname velocity_graph
#' @export
velocity_graph.SingleCellExperiment <- function(x, Ms = "Ms", distances = "scnative_distances",
                                                velocity = "velocity",
                                                graph_name = "velocity_graph", ...) {
  velocity_graph_object(x, Ms, distances, velocity, graph_name, ...)
}

velocity_graph_object <- function(object, Ms, distances, velocity, graph_name, ...) {
  obj_check(object)
  obj_check_names(object, Ms = Ms, distances = distances, velocity = velocity,
                  graph_name = graph_name)
  V <- as.matrix(obj_matrix(object, velocity, arg = "velocity"))
  S <- as.matrix(obj_matrix(object, Ms, arg = "Ms"))
  ms_assay <- if (is_seurat(object) && Ms %in% SeuratObject::Assays(object)) Ms else NULL
  fm <- obj_feature_meta(object, assay = ms_assay)
  dots <- list(...)
  if (is.null(dots$velocity_genes)) {
    if (!"velocity_genes" %in% names(fm)) {
      stopf("the object has no 'velocity_genes' feature column; run velocity() on it first")
    }
    dots$velocity_genes <- obj_flag_column(fm, "velocity_genes", rownames(V))
  }
  D <- obj_graph(object, distances)
  g <- do.call(velocity_graph.default, c(list(V, S, D), dots))
  cells <- colnames(object)
  dn <- if (is_seurat(object)) list(cells, cells) else list(NULL, NULL)
  gp <- g$graph
  gn <- g$graph_neg
  dimnames(gp) <- dimnames(gn) <- dn
  object <- obj_set_graph(object, graph_name, gp)
  object <- obj_set_graph(object, paste0(graph_name, "_neg"), gn)
  object <- obj_add_cell_meta(object, data.frame(velocity_self_transition = unname(g$self_transition)))
  obj_set_misc(object, graph_name, list(genes = g$genes, params = g$params))
}

#' @rdname velocity_embedding
#' @param reduction Object methods: the reduction / reducedDim to project onto (default
#'   `"umap"`).
#' @param graph Object methods: the name [velocity_graph()] stored the graph under.
#' @param name Object methods: where to store the result (default
#'   `"velocity_<reduction>"`, a Seurat reduction / SCE reducedDim).
#' @export
velocity_embedding.Seurat <- function(x, reduction = "umap", graph = "velocity_graph",
                                      name = NULL, ...) {
  velocity_embedding_object(x, reduction, graph, name, ...)
}

#' @rdname velocity_embedding
#' @export
velocity_embedding.SingleCellExperiment <- function(x, reduction = "umap",
                                                    graph = "velocity_graph", name = NULL,
                                                    ...) {
  velocity_embedding_object(x, reduction, graph, name, ...)
}

velocity_embedding_object <- function(object, reduction, graph, name, ...) {
  obj_check(object)
  E <- obj_reduction(object, reduction, finite = TRUE)
  name <- name %||% paste0("velocity_", reduction)
  check_string(name, "name")
  V <- velocity_embedding.default(graph_from_object(object, graph), E, ...)
  obj_set_reduction(object, name, unclass_scale(V))
}

unclass_scale <- function(V) {
  attr(V, "scale") <- NULL
  V
}

#' @rdname plot_velocity_embedding
#' @param reduction Object methods: the reduction / reducedDim with the cell coordinates
#'   (default `"umap"`).
#' @export
plot_velocity_embedding.Seurat <- function(x, reduction = "umap", V = NULL, color = NULL, ...) {
  plot_velocity_embedding_object(x, reduction, V, color, ...)
}

#' @rdname plot_velocity_embedding
#' @export
plot_velocity_embedding.SingleCellExperiment <- function(x, reduction = "umap", V = NULL,
                                                         color = NULL, ...) {
  plot_velocity_embedding_object(x, reduction, V, color, ...)
}

plot_velocity_embedding_object <- function(object, reduction, V, color, ...) {
  obj_check(object)
  E <- obj_reduction(object, reduction)
  V <- V %||% paste0("velocity_", reduction)
  Vm <- if (is.character(V)) obj_reduction(object, V, arg = "V") else V
  col <- object_color(object, color)
  p <- plot_velocity_embedding.default(E, Vm, color = col, ...)
  if (is.character(color) && length(color) == 1L) p <- p + ggplot2::labs(colour = color)
  p
}

# `color` for object plots: NULL, one value per cell, or the name of a cell metadata column
# or of a gene (its values in the default assay's data).
object_color <- function(object, color) {
  if (is.null(color) || length(color) != 1L || !is.character(color)) return(color)
  meta <- obj_cell_meta(object)
  if (color %in% names(meta)) return(meta[[color]])
  genes <- rownames(object)
  if (color %in% genes) {
    m <- if (is_seurat(object)) {
      seurat_get_layer(object[[SeuratObject::DefaultAssay(object)]], "data")
    } else {
      an <- SummarizedExperiment::assayNames(object)
      SummarizedExperiment::assay(object, if ("logcounts" %in% an) "logcounts" else an[1L])
    }
    return(as.numeric(m[color, ]))
  }
  stopf("'color' = \"%s\" is neither a cell metadata column nor a gene of the object", color)
}

# ------------------------------------------------------------------ terminal states, pseudotime,
# latent time, confidence

#' Terminal states, velocity pseudotime, latent time and velocity confidence on objects
#'
#' Seurat and SingleCellExperiment methods of [terminal_states()], [velocity_pseudotime()],
#' [latent_time()] and [velocity_confidence()], run after [velocity_graph()] on the object.
#' They read what the previous steps stored (the velocity graph, the kNN `distances` and
#' neighbour `graph` of [moments()], the fit of [recover_dynamics()], the `velocity` assay)
#' and add per-cell columns to the cell metadata (Seurat `meta.data`, SCE `colData`), named
#' as scVelo names its `obs` columns: `root_cells`, `end_points`, `velocity_pseudotime`,
#' `latent_time`, `velocity_length`, `velocity_confidence`.
#'
#' `latent_time()` on an object uses the `root_cells` column when present and otherwise runs
#' [terminal_states()] first (storing `root_cells` and `end_points`), as upstream does.
#'
#' @param x A Seurat or SingleCellExperiment object.
#' @param graph Name of the velocity graph stored by [velocity_graph()].
#' @param distances Name of the kNN distance graph (default: the one [moments()] stored).
#' @param connectivities Name of the neighbour graph (default: the one [moments()] stored).
#' @param root,end Names of cell metadata columns with root / end-point scores (default
#'   `"root_cells"` / `"end_points"`, as [terminal_states()] stores them; computed when
#'   absent), or anything [velocity_pseudotime()] accepts.
#' @param root_cells,end_points `latent_time`: names of cell metadata columns (see above),
#'   or anything [latent_time()] accepts.
#' @param Ms Name of the `Ms` assay (the fit's feature columns live there for Seurat).
#' @param velocity Name of the velocity assay.
#' @param ... Passed to the matrix methods.
#' @return The object with the new cell metadata columns.
#' @name velocity_downstream_objects
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sim <- simulate_velocity(n_obs = 200, n_vars = 6, random_seed = 2)
#'   sce <- SingleCellExperiment::SingleCellExperiment(
#'     assays = list(spliced = sim$spliced, unspliced = sim$unspliced))
#'   sce <- moments(sce, n_neighbors = 15)
#'   sce <- velocity(recover_dynamics(sce, var_names = "all", threads = 1, progress = FALSE))
#'   sce <- velocity_graph(sce, velocity_genes = rep(TRUE, 6))
#'   sce <- latent_time(sce)
#'   sce <- velocity_pseudotime(sce)
#'   sce <- velocity_confidence(sce)
#'   head(as.data.frame(SummarizedExperiment::colData(sce)))
#' }
NULL

#' @rdname velocity_downstream_objects
#' @export
terminal_states.Seurat <- function(x, graph = "velocity_graph", distances = "scnative_distances",
                                   ...) {
  terminal_states_object(x, graph, distances, ...)
}

#' @rdname velocity_downstream_objects
#' @export
terminal_states.SingleCellExperiment <- function(x, graph = "velocity_graph",
                                                 distances = "scnative_distances", ...) {
  terminal_states_object(x, graph, distances, ...)
}

terminal_states_object <- function(object, graph, distances, ...) {
  obj_check(object)
  obj_check_names(object, graph = graph, distances = distances)
  ts <- terminal_states.default(graph_from_object(object, graph), obj_graph(object, distances), ...)
  obj_add_cell_meta(object, data.frame(root_cells = unname(ts$root_cells),
                                       end_points = unname(ts$end_points)))
}

#' @rdname velocity_downstream_objects
#' @export
velocity_pseudotime.Seurat <- function(x, graph = "velocity_graph",
                                       connectivities = "scnative_connectivities",
                                       distances = "scnative_distances", root = "root_cells",
                                       end = "end_points", ...) {
  velocity_pseudotime_object(x, graph, connectivities, distances, root, end, ...)
}

#' @rdname velocity_downstream_objects
#' @export
velocity_pseudotime.SingleCellExperiment <- function(x, graph = "velocity_graph",
                                                     connectivities = "scnative_connectivities",
                                                     distances = "scnative_distances",
                                                     root = "root_cells", end = "end_points",
                                                     ...) {
  velocity_pseudotime_object(x, graph, connectivities, distances, root, end, ...)
}

# A cell metadata column named by a string, else the value itself; NULL when a default column
# name is absent (so the caller computes it).
meta_or_value <- function(object, value) {
  if (is.character(value) && length(value) == 1L && !value %in% colnames(object)) {
    meta <- obj_cell_meta(object)
    return(if (value %in% names(meta)) meta[[value]] else NULL)
  }
  value
}

velocity_pseudotime_object <- function(object, graph, connectivities, distances, root, end, ...) {
  obj_check(object)
  obj_check_names(object, graph = graph, connectivities = connectivities)
  if (is.null(meta_or_value(object, root))) {
    object <- terminal_states_object(object, graph, distances)
  }
  r <- meta_or_value(object, root)
  e <- meta_or_value(object, end)
  pt <- velocity_pseudotime.default(graph_from_object(object, graph),
                                    obj_graph(object, connectivities), root = r, end = e, ...)
  obj_add_cell_meta(object, data.frame(velocity_pseudotime = unname(as.vector(pt))))
}

#' @rdname velocity_downstream_objects
#' @export
latent_time.Seurat <- function(x, root_cells = "root_cells", end_points = NULL, Ms = "Ms",
                               connectivities = "scnative_connectivities",
                               graph = "velocity_graph", distances = "scnative_distances", ...) {
  latent_time_object(x, root_cells, end_points, Ms, connectivities, graph, distances, ...)
}

#' @rdname velocity_downstream_objects
#' @export
latent_time.SingleCellExperiment <- function(x, root_cells = "root_cells", end_points = NULL,
                                             Ms = "Ms", connectivities = "scnative_connectivities",
                                             graph = "velocity_graph",
                                             distances = "scnative_distances", ...) {
  latent_time_object(x, root_cells, end_points, Ms, connectivities, graph, distances, ...)
}

latent_time_object <- function(object, root_cells, end_points, Ms, connectivities, graph,
                               distances, ...) {
  obj_check(object)
  obj_check_names(object, Ms = Ms, connectivities = connectivities)
  if (is.null(meta_or_value(object, root_cells))) {
    object <- terminal_states_object(object, graph, distances)
  }
  r <- meta_or_value(object, root_cells)
  e <- if (is.null(end_points)) NULL else meta_or_value(object, end_points)
  genes <- rownames(obj_matrix(object, Ms, arg = "Ms"))
  fit <- fit_from_object(object, Ms, genes)
  lt <- latent_time.default(fit$layers$fit_t, r, end_points = e,
                            connectivities = obj_graph(object, connectivities),
                            fit_likelihood = fit$var$fit_likelihood, ...)
  obj_add_cell_meta(object, data.frame(latent_time = unname(as.vector(lt))))
}

#' @rdname velocity_downstream_objects
#' @export
velocity_confidence.Seurat <- function(x, velocity = "velocity", Ms = "Ms",
                                       distances = "scnative_distances", ...) {
  velocity_confidence_object(x, velocity, Ms, distances, ...)
}

#' @rdname velocity_downstream_objects
#' @export
velocity_confidence.SingleCellExperiment <- function(x, velocity = "velocity", Ms = "Ms",
                                                     distances = "scnative_distances", ...) {
  velocity_confidence_object(x, velocity, Ms, distances, ...)
}

velocity_confidence_object <- function(object, velocity, Ms, distances, ...) {
  obj_check(object)
  obj_check_names(object, velocity = velocity, Ms = Ms, distances = distances)
  V <- as.matrix(obj_matrix(object, velocity, arg = "velocity"))
  ms_assay <- if (is_seurat(object) && Ms %in% SeuratObject::Assays(object)) Ms else NULL
  fm <- obj_feature_meta(object, assay = ms_assay)
  vg <- obj_flag_column(fm, "velocity_genes", rownames(V))
  res <- velocity_confidence.default(V, obj_graph(object, distances), velocity_genes = vg, ...)
  obj_add_cell_meta(object, data.frame(velocity_length = res$velocity_length,
                                       velocity_confidence = res$velocity_confidence))
}

# ------------------------------------------------------------------ gene rankings

#' Gene rankings on objects
#'
#' Seurat and SingleCellExperiment methods of [rank_velocity_genes()] and
#' [rank_dynamical_genes()]: `groupby` names a cell metadata column (default `"clusters"`);
#' the velocity, `Ms`/`Mu`, the fit and the `velocity_genes` / `fit_likelihood` feature
#' columns are read from the object. The ranking (names, scores, parameters) is stored in
#' `Misc()` (Seurat) / `metadata()` (SCE) under `"rank_velocity_genes"` /
#' `"rank_dynamical_genes"`, as scVelo stores it in `uns`; `rank_velocity_genes()` also adds
#' the `velocity_score` and `spearmans_score` feature columns.
#'
#' @param x A Seurat or SingleCellExperiment object.
#' @param groupby Name of a cell metadata column, or one group per cell.
#' @param velocity,Ms,Mu Names of the assays.
#' @param unspliced Name of the unspliced counts assay (for upstream's `min_counts`
#'   filter), or `NULL`.
#' @param graph Name of the neighbour graph ([moments()] stores `"scnative_connectivities"`);
#'   `NULL` for none.
#' @param ... Passed to the matrix methods.
#' @return The object with the ranking stored.
#' @name rank_genes_objects
#' @examples
#' if (requireNamespace("SingleCellExperiment", quietly = TRUE)) {
#'   sim <- simulate_velocity(n_obs = 200, n_vars = 6, random_seed = 2)
#'   sce <- SingleCellExperiment::SingleCellExperiment(
#'     assays = list(spliced = sim$spliced, unspliced = sim$unspliced))
#'   sce$clusters <- cut(sim$obs$true_t, 3, labels = c("early", "mid", "late"))
#'   sce <- velocity(recover_dynamics(moments(sce, n_neighbors = 15), var_names = "all",
#'                                    threads = 1, progress = FALSE))
#'   sce <- rank_dynamical_genes(sce)
#'   S4Vectors::metadata(sce)$rank_dynamical_genes$names
#' }
NULL

#' @rdname rank_genes_objects
#' @export
rank_velocity_genes.Seurat <- function(x, groupby = "clusters", velocity = "velocity",
                                       Ms = "Ms", Mu = "Mu", unspliced = "unspliced", ...) {
  rank_velocity_genes_object(x, groupby, velocity, Ms, Mu, unspliced, ...)
}

#' @rdname rank_genes_objects
#' @export
rank_velocity_genes.SingleCellExperiment <- function(x, groupby = "clusters",
                                                     velocity = "velocity", Ms = "Ms",
                                                     Mu = "Mu", unspliced = "unspliced", ...) {
  rank_velocity_genes_object(x, groupby, velocity, Ms, Mu, unspliced, ...)
}

# The object's per-cell groups: a metadata column named by a string, else the value.
object_groups <- function(object, groupby) {
  if (is.character(groupby) && length(groupby) == 1L) {
    meta <- obj_cell_meta(object)
    if (!groupby %in% names(meta)) {
      stopf("'groupby' = \"%s\" is not a cell metadata column of the object", groupby)
    }
    return(meta[[groupby]])
  }
  groupby
}

rank_velocity_genes_object <- function(object, groupby, velocity, Ms, Mu, unspliced, ...) {
  obj_check(object)
  obj_check_names(object, velocity = velocity, Ms = Ms, Mu = Mu)
  grp <- object_groups(object, groupby)
  V <- as.matrix(obj_matrix(object, velocity, arg = "velocity"))
  S <- as.matrix(obj_matrix(object, Ms, arg = "Ms"))
  U <- as.matrix(obj_matrix(object, Mu, arg = "Mu"))
  ms_assay <- if (is_seurat(object) && Ms %in% SeuratObject::Assays(object)) Ms else NULL
  fm <- obj_feature_meta(object, assay = ms_assay)
  col <- function(nm) if (nm %in% names(fm)) fm[[nm]][match(rownames(V), rownames(fm))] else NULL
  vg <- obj_flag_column(fm, "velocity_genes", rownames(V))
  un <- if (!is.null(unspliced) && obj_has_matrix(object, unspliced)) {
    obj_matrix(object, unspliced, arg = "unspliced")[rownames(V), , drop = FALSE]
  } else {
    NULL
  }
  rk <- rank_velocity_genes.default(V, grp, Ms = S, Mu = U, velocity_genes = vg,
                                    unspliced = un, fit_likelihood = col("fit_likelihood"), ...)
  object <- obj_add_feature_meta(object, data.frame(velocity_score = rk$velocity_score,
                                                    spearmans_score = rk$spearmans_score,
                                                    row.names = rownames(V)),
                                 assay = ms_assay)
  obj_set_misc(object, "rank_velocity_genes", rk[c("names", "scores", "params")])
}

#' @rdname rank_genes_objects
#' @export
rank_dynamical_genes.Seurat <- function(x, groupby = "clusters", Ms = "Ms", Mu = "Mu",
                                        graph = "scnative_connectivities", ...) {
  rank_dynamical_genes_object(x, groupby, Ms, Mu, graph, ...)
}

#' @rdname rank_genes_objects
#' @export
rank_dynamical_genes.SingleCellExperiment <- function(x, groupby = "clusters", Ms = "Ms",
                                                      Mu = "Mu", graph = "scnative_connectivities",
                                                      ...) {
  rank_dynamical_genes_object(x, groupby, Ms, Mu, graph, ...)
}

rank_dynamical_genes_object <- function(object, groupby, Ms, Mu, graph, ...) {
  obj_check(object)
  obj_check_names(object, Ms = Ms, Mu = Mu)
  grp <- object_groups(object, groupby)
  S <- as.matrix(obj_matrix(object, Ms, arg = "Ms"))
  U <- as.matrix(obj_matrix(object, Mu, arg = "Mu"))
  fit <- fit_from_object(object, Ms, rownames(S))
  conn <- object_graph_or_null(object, graph)
  rk <- rank_dynamical_genes.scnative_dynamics(fit, S, U, grp, connectivities = conn, ...)
  obj_set_misc(object, "rank_dynamical_genes", rk[c("names", "scores")])
}

# ------------------------------------------------------------------ heatmap, graph plot

#' Latent-time heatmap and velocity-graph plot of an object
#'
#' Seurat and SingleCellExperiment methods of [plot_latent_time_heatmap()] and
#' [plot_velocity_graph()]: the fit, `Ms`, the `latent_time` column, the velocity graph, the
#' kNN distances and the embedding are read from the object; `color` may name a cell
#' metadata column.
#'
#' @param x A Seurat or SingleCellExperiment object.
#' @param latent_time Name of the cell metadata column with the latent time ([latent_time()]
#'   stores `"latent_time"`).
#' @param Ms Name of the `Ms` assay.
#' @param color `NULL`, a cell metadata column name, or one value per cell.
#' @param reduction Name of the reduction / reducedDim to draw on (default `"umap"`).
#' @param graph Name of the velocity graph ([velocity_graph()] stores `"velocity_graph"`).
#' @param distances Name of the kNN distance graph ([moments()] stores
#'   `"scnative_distances"`).
#' @param ... Passed to the matrix methods.
#' @return A `ggplot` object.
#' @name velocity_plots_objects
NULL

#' @rdname velocity_plots_objects
#' @export
plot_latent_time_heatmap.Seurat <- function(x, latent_time = "latent_time", Ms = "Ms",
                                            color = NULL, ...) {
  plot_latent_time_heatmap_object(x, latent_time, Ms, color, ...)
}

#' @rdname velocity_plots_objects
#' @export
plot_latent_time_heatmap.SingleCellExperiment <- function(x, latent_time = "latent_time",
                                                          Ms = "Ms", color = NULL, ...) {
  plot_latent_time_heatmap_object(x, latent_time, Ms, color, ...)
}

plot_latent_time_heatmap_object <- function(object, latent_time, Ms, color, ...) {
  obj_check(object)
  obj_check_names(object, latent_time = latent_time, Ms = Ms)
  meta <- obj_cell_meta(object)
  if (!latent_time %in% names(meta)) {
    stopf("'latent_time' = \"%s\" is not a cell metadata column; run latent_time() first",
          latent_time)
  }
  S <- as.matrix(obj_matrix(object, Ms, arg = "Ms"))
  fit <- fit_from_object(object, Ms, rownames(S))
  col <- if (is.character(color) && length(color) == 1L) object_groups(object, color) else color
  plot_latent_time_heatmap.default(fit, S, meta[[latent_time]], color = col, ...)
}

#' @rdname velocity_plots_objects
#' @export
plot_velocity_graph.Seurat <- function(x, reduction = "umap", graph = "velocity_graph",
                                       distances = "scnative_distances", color = NULL, ...) {
  plot_velocity_graph_object(x, reduction, graph, distances, color, ...)
}

#' @rdname velocity_plots_objects
#' @export
plot_velocity_graph.SingleCellExperiment <- function(x, reduction = "umap",
                                                     graph = "velocity_graph",
                                                     distances = "scnative_distances",
                                                     color = NULL, ...) {
  plot_velocity_graph_object(x, reduction, graph, distances, color, ...)
}

plot_velocity_graph_object <- function(object, reduction, graph, distances, color, ...) {
  obj_check(object)
  obj_check_names(object, graph = graph, distances = distances)
  E <- obj_reduction(object, reduction, finite = TRUE)
  col <- if (is.character(color) && length(color) == 1L) object_groups(object, color) else color
  plot_velocity_graph.default(graph_from_object(object, graph), E, obj_graph(object, distances),
                              color = col, ...)
}
