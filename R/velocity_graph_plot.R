# scVelo's pl.velocity_graph (scVelo 0.3.4) in ggplot2: the cells on an embedding and, under
# them, the edges of the velocity graph's strongest transitions. The edge selection (the
# transition matrix restricted to the kNN and cut at a threshold, transition_matrix()) is in
# velocity_graph_edges(); the drawing in plot_velocity_graph().
# Spec (scVelo downstream): "tl.transition_matrix" (steps 1-8) and "Shared helpers"
# (get_connectivities); the selection itself follows pl.velocity_graph's default branch.

# ------------------------------------------------------------------ the selection

#' Edges of the velocity graph plot (what scVelo's `pl.velocity_graph` draws)
#'
#' Selects the transitions `scv.pl.velocity_graph(adata)` draws (scVelo 0.3.4, default
#' `which_graph`): the transition matrix `tl.transition_matrix(adata,
#' weight_indirect_neighbors = 0, n_neighbors = n_neighbors, threshold = threshold)`. Each
#' stored cosine `c` of cell `i` towards cell `j` gives the kernel `exp(10 c)` (with the
#' cell's self-transition on the diagonal); it is kept only for the direct kNN neighbours `j`
#' of `i` (the stored entries of `distances`) and weighted by the row-normalised two-step
#' connectivity of the `n_neighbors` nearest neighbours (1 for a neighbour, 1/2 per shared
#' neighbour, at most 1, divided by the row's sum); entries below `threshold` (default 0.05)
#' are dropped and each row is divided by its sum. The threshold thus acts on
#' `exp(10 c)` divided by the size of the cell's two-step neighbourhood: transitions with a
#' clearly positive cosine survive. Upstream computes in float32; the kernel and weights are
#' rounded to float32 here too, so the same entries are cut.
#'
#' Upstream draws the nonzero entries as an undirected graph (`networkx.Graph`): each pair
#' of cells once, whichever direction(s) were kept; self-transitions are drawn as points
#' (nothing). `n_neighbors` trims each cell's neighbours only when it is at most the largest
#' neighbour count in `distances` (upstream compares it with the `n_neighbors` of
#' `sc.pp.neighbors`, which is one more than the stored neighbours per cell).
#'
#' @param x A `scnative_velocity_graph` ([velocity_graph()]).
#' @param distances The cells x cells kNN distance graph the velocity graph was built on
#'   (e.g. `moments()$distances`, or a `scnative_moments` object); its stored positive
#'   entries are each cell's neighbours.
#' @param n_neighbors Whole number >= 1 (default 10): the nearest neighbours whose two-step
#'   neighbourhood weights the transitions.
#' @param threshold `NULL` (0.05, upstream's default) or a number >= 0: the cut on the
#'   weighted kernel.
#' @return A data frame of undirected edges, one row per pair of distinct cells: `from` <
#'   `to` (1-based cell indices), `weight` (the larger of the two transition probabilities),
#'   `both` (`TRUE` when both directions were kept). Attribute `"transitions"`: the selected,
#'   row-normalised cells x cells transition matrix (`dgCMatrix`, row = from cell, diagonal
#'   included).
#' @seealso [plot_velocity_graph()], [transition_matrix()]
#' @examples
#' sim <- simulate_velocity(n_obs = 150, n_vars = 6)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", threads = 1, progress = FALSE)
#' v <- velocity(fit, m$Ms, m$Mu)
#' vg <- velocity_graph(v, m$Ms, m$distances, velocity_genes = rep(TRUE, 6), threads = 1)
#' e <- velocity_graph_edges(vg, m$distances)
#' head(e)
#' nrow(e) / 150 # edges per cell
#' @export
velocity_graph_edges <- function(x, distances, n_neighbors = 10, threshold = NULL) {
  g <- validate_velocity_graph(x)
  if (missing(distances)) stopf("'distances' is missing (the kNN graph, e.g. moments()$distances)")
  check_number(n_neighbors, "n_neighbors", min = 1, whole = TRUE)
  check_number(threshold, "threshold", min = 0, allow_null = TRUE)
  T <- transition_matrix(x, self_transitions = TRUE, weight_indirect_neighbors = 0,
                         n_neighbors = n_neighbors, distances = distances,
                         threshold = threshold %||% 0.05)
  n <- g$n
  tr <- sparse_triplets(Matrix::t(T)) # row-wise: i = from, j = to
  i <- tr$j
  j <- tr$i
  # networkx.Graph(T): one undirected edge per pair of distinct cells
  off <- i != j
  a <- pmin(i[off], j[off])
  b <- pmax(i[off], j[off])
  p <- tr$x[off]
  key <- (a - 1) * n + b
  ord <- order(key, method = "radix")
  key <- key[ord]
  first <- !duplicated(key)
  grp <- cumsum(first)
  w <- as.vector(tapply(p[ord], grp, max))
  both <- as.vector(tabulate(grp)) > 1L
  edges <- data.frame(from = as.integer(a[ord][first]), to = as.integer(b[ord][first]),
                      weight = w, both = both)
  attr(edges, "transitions") <- T
  edges
}

# ------------------------------------------------------------------ the plot

#' Velocity graph on an embedding (scVelo's `pl.velocity_graph`)
#'
#' The ggplot2 version of `scv.pl.velocity_graph(adata, basis = ...)`: the cells as points
#' on a two-dimensional embedding (coloured by `color`) over thin lines joining the cells
#' between which the velocity graph has a strong transition, as selected by
#' [velocity_graph_edges()]. With `arrows = TRUE` each kept direction is drawn as an arrow
#' from the cell towards its successor (upstream's `arrows = True`, best on a few cells).
#'
#' @inheritParams velocity_graph_edges
#' @param embedding A numeric cells x dimensions matrix (e.g. UMAP), one row per cell of
#'   the graph; the first two columns are drawn.
#' @param color `NULL` (grey points), or one value per cell: a factor / character vector
#'   (groups, coloured by `palette`) or a numeric vector (viridis).
#' @param arrows Logical (default `FALSE`): draw directed arrows instead of lines.
#' @param palette `NULL` (scanpy's default colours) or colours for the groups of `color`,
#'   named by group or in the order of its levels.
#' @param point_size `NULL` (from the number of cells) or a number >= 0: point size.
#' @param edge_width Number >= 0 (default 0.12): line width of the edges (ggplot2 units).
#' @param edge_color Colour of the edges (default `"grey25"`, drawn half transparent).
#' @param ... Passed to methods; the default method accepts no further arguments.
#' @return A `ggplot` object; the edges are the data of its segment layer.
#' @seealso [velocity_graph_edges()], [velocity_graph()]
#' @examples
#' if (requireNamespace("ggplot2", quietly = TRUE)) {
#'   sim <- simulate_velocity(n_obs = 150, n_vars = 6)
#'   m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
#'   fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", threads = 1, progress = FALSE)
#'   v <- velocity(fit, m$Ms, m$Mu)
#'   vg <- velocity_graph(v, m$Ms, m$distances, velocity_genes = rep(TRUE, 6), threads = 1)
#'   emb <- prcomp(t(log1p(m$Ms)))$x[, 1:2]
#'   plot_velocity_graph(vg, emb, m$distances, color = sim$t)
#' }
#' @export
plot_velocity_graph <- function(x, ...) UseMethod("plot_velocity_graph")

#' @rdname plot_velocity_graph
#' @export
plot_velocity_graph.default <- function(x, embedding, distances, color = NULL, n_neighbors = 10,
                                        threshold = NULL, arrows = FALSE, palette = NULL,
                                        point_size = NULL, edge_width = 0.12,
                                        edge_color = "grey25", ...) {
  need_ggplot()
  stop_dots(...)
  g <- validate_velocity_graph(x)
  n <- g$n
  if (missing(embedding)) stopf("'embedding' is missing (cells x 2 coordinates, e.g. UMAP)")
  E <- check_embedding(embedding, n, g$cells)
  check_flag(arrows, "arrows")
  check_number(point_size, "point_size", min = 0, allow_null = TRUE)
  check_number(edge_width, "edge_width", min = 0)
  if (!is.character(edge_color) || length(edge_color) != 1L || is.na(edge_color) ||
      inherits(tryCatch(grDevices::col2rgb(edge_color), error = identity), "error")) {
    stopf("'edge_color' must be a single colour")
  }
  if (!is.null(color)) {
    if (!is.null(dim(color)) || !(is.factor(color) || is.character(color) ||
                                  is.logical(color) || is.numeric(color))) {
      stopf("'color' must be NULL or a vector with one value per cell")
    }
    if (length(color) != n) {
      stopf("'color' must have one value per cell (%d), not %d", n, length(color))
    }
  }
  edges <- velocity_graph_edges(x, distances, n_neighbors = n_neighbors, threshold = threshold)

  cells <- data.frame(x = E[, 1L], y = E[, 2L])
  if (arrows) {
    tr <- sparse_triplets(attr(edges, "transitions"))
    off <- tr$i != tr$j
    seg <- data.frame(from = tr$i[off], to = tr$j[off])
  } else {
    seg <- edges[, c("from", "to")]
  }
  seg$x <- E[seg$from, 1L]
  seg$y <- E[seg$from, 2L]
  seg$xend <- E[seg$to, 1L]
  seg$yend <- E[seg$to, 2L]
  aes_seg <- ggplot2::aes(.data$x, .data$y, xend = .data$xend, yend = .data$yend)
  edge_layer <- if (arrows) {
    # arrows end short of the target point (upstream shrinks them by the marker's radius)
    len <- sqrt((seg$xend - seg$x)^2 + (seg$yend - seg$y)^2)
    f <- pmax(0, 1 - 0.12 * stats::median(len) / pmax(len, .Machine$double.eps))
    seg$xend <- seg$x + f * (seg$xend - seg$x)
    seg$yend <- seg$y + f * (seg$yend - seg$y)
    ggplot2::geom_segment(aes_seg, data = seg, linewidth = edge_width, colour = edge_color,
                          arrow = grid::arrow(length = grid::unit(1.2, "mm"), type = "closed",
                                              angle = 25))
  } else {
    ggplot2::geom_segment(aes_seg, data = seg, linewidth = edge_width, colour = edge_color,
                          alpha = 0.4, lineend = "round")
  }
  ps <- point_size %||% max(0.5, min(3.5, 55 / sqrt(n)))
  # lines under the points; arrows over them (as upstream's z-order)
  p <- ggplot2::ggplot(cells, ggplot2::aes(.data$x, .data$y))
  if (!arrows) p <- p + edge_layer
  if (is.null(color)) {
    p <- p + ggplot2::geom_point(size = ps, colour = "grey60", alpha = 0.8, stroke = 0)
  } else if (is.numeric(color)) {
    cells$color <- as.numeric(color)
    p <- p + ggplot2::geom_point(ggplot2::aes(colour = .data$color), data = cells, size = ps,
                                 alpha = 0.8, stroke = 0) +
      ggplot2::scale_colour_viridis_c(name = NULL)
  } else {
    grp <- factor(color)
    cells$color <- grp
    cols <- category_colors(levels(grp), palette)
    p <- p + ggplot2::geom_point(ggplot2::aes(colour = .data$color), data = cells, size = ps,
                                 alpha = 0.8, stroke = 0) +
      ggplot2::scale_colour_manual(values = cols, name = NULL, na.value = "grey80") +
      ggplot2::guides(colour = ggplot2::guide_legend(override.aes = list(size = 3, alpha = 1)))
  }
  if (arrows) p <- p + edge_layer
  p + ggplot2::labs(x = colnames(embedding)[1L] %||% "dim 1",
                    y = colnames(embedding)[2L] %||% "dim 2") +
    ggplot2::theme_minimal(base_size = 11) +
    ggplot2::theme(panel.grid = ggplot2::element_blank(),
                   axis.text = ggplot2::element_blank(),
                   panel.border = ggplot2::element_rect(colour = "grey70", fill = NA,
                                                        linewidth = 0.3))
}
