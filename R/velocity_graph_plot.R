# scVelo's pl.velocity_graph (scVelo 0.3.4) in ggplot2: the cells on an embedding and, under
# them, the edges of the velocity graph's strongest transitions. The edge selection (a
# transition matrix restricted to the kNN and cut at a threshold) is in velocity_graph_edges();
# the drawing in plot_velocity_graph().
# Spec (scVelo downstream): "tl.transition_matrix" (steps 1-8) and "Shared helpers"
# (get_connectivities); the selection itself follows pl.velocity_graph's default branch.
# The importFrom(Matrix, ...) below loads Matrix with the package: without it, a velocity graph
# read back with readRDS() in a fresh session has no dim() (Matrix's S4 methods not loaded).

# ------------------------------------------------------------------ helpers

# scVelo's select_distances: every row keeps its min(n_neighbors, smallest row count) nearest
# neighbours (stable order among equal distances; numpy's argsort leaves them unspecified).
# D: dgCMatrix with positive entries only.
select_nearest <- function(D, n_neighbors) {
  tD <- Matrix::t(D) # column i = row i of D
  cnt <- diff(tD@p)
  k <- min(min(cnt), n_neighbors)
  if (all(cnt <= k)) return(D)
  col <- rep.int(seq_along(cnt), cnt)
  o <- order(col, tD@x, method = "radix")
  keep <- sort(o[sequence(cnt) <= k])
  Matrix::sparseMatrix(i = col[keep], j = tD@i[keep] + 1L, x = tD@x[keep], dims = dim(D))
}

# Values M[i, j] of a sparse matrix at the pairs (i, j) (0 where nothing is stored).
sparse_at <- function(M, i, j) {
  tr <- sparse_triplets(methods::as(M, "CsparseMatrix"))
  n <- nrow(M)
  pos <- match((i - 1) * n + j, (tr$i - 1) * n + tr$j)
  out <- tr$x[pos]
  out[is.na(pos)] <- 0
  out
}

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
  if (is.null(threshold)) threshold <- 0.05
  n <- g$n
  if (inherits(distances, "scnative_moments")) {
    if (is.null(distances$distances)) {
      stopf("'distances': these moments were computed on a given graph and hold no kNN distances")
    }
    distances <- distances$distances
  }
  D <- Matrix::drop0(as_cell_graph(distances, n, "distances", nonneg = TRUE))
  cnt <- Matrix::rowSums(D > 0)
  if (any(cnt == 0)) {
    stopf("'distances': every cell needs a neighbour at a distance > 0; cell %d has none",
          which(cnt == 0)[1L])
  }

  # spec: transition_matrix Steps 1-3 (use_negative_cosines = FALSE), in float32: exp(10 c)
  # as expm1(10 c) + 1 on every stored pair; self-transitions s_i > 0 on the diagonal
  pos <- sparse_triplets(g$graph)
  neg <- sparse_triplets(g$graph_neg)
  s <- self_transitions_of(g$graph)
  d <- which(s > 0)
  i <- c(pos$i, neg$i, d)
  j <- c(pos$j, neg$j, d)
  cc <- as_f32(c(pos$x, neg$x, s[d]))
  k <- as_f32(as_f32(expm1(as_f32(10 * cc))) + 1)

  # Step 4 (weight_indirect_neighbors = 0): only direct neighbours and the diagonal
  direct <- i == j | sparse_at(D, i, j) > 0
  i <- i[direct]
  j <- j[direct]
  k <- k[direct]

  # Step 5: times get_connectivities(mode = "distances", n_neighbors, recurse_neighbors)
  Dn <- if (n_neighbors <= max(cnt)) select_nearest(D, n_neighbors) else D
  C <- methods::as(Dn > 0, "dMatrix")
  Matrix::diag(C) <- 1
  Rc <- methods::as(C + C %*% (0.5 * C), "CsparseMatrix")
  Rc@x <- pmin(pmax(Rc@x, 0), 1)
  W <- as_f32(sparse_at(Rc, i, j) * (1 / Matrix::rowSums(Rc))[i]) # scipy: x * (1 / sum)
  k <- as_f32(k * W)

  # Step 6: the cut, in float32 as numpy compares a float32 array with a Python float
  keep <- k > 0 & k >= as_f32(threshold)
  i <- i[keep]
  j <- j[keep]
  k <- k[keep]

  # Step 8: rows divided by their sums
  rs <- group_sums(k, i, n)[, 1L]
  T <- Matrix::sparseMatrix(i = i, j = j, x = k / rs[i], dims = c(n, n))
  if (!is.null(g$cells)) dimnames(T) <- list(g$cells, g$cells)

  # networkx.Graph(T): one undirected edge per pair of distinct cells
  off <- i != j
  a <- pmin(i[off], j[off])
  b <- pmax(i[off], j[off])
  p <- (k / rs[i])[off]
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
