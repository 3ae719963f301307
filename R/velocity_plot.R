# Velocity on an embedding as people look at it: the grid velocities behind scVelo's
# pl.velocity_embedding_grid / pl.velocity_embedding_stream (compute_velocity_on_grid), and
# the ggplot2 plots (arrows per cell, a quiver grid, stream lines integrated natively by
# stream_lines() in R/streamplot.R). Spec (scVelo downstream): "What the embedding plots
# compute".

#' Velocities on a regular grid over an embedding (scVelo's `compute_velocity_on_grid`)
#'
#' Averages the embedded velocities of the nearest cells of every point of a regular grid
#' with Gaussian weights, as scVelo does before drawing a quiver grid
#' (`pl.velocity_embedding_grid`) or stream lines (`pl.velocity_embedding_stream`): a grid
#' of `50 * density` points per axis spanning the cells plus 1% margins, the
#' `n_neighbors` (default: cells / 50) nearest cells of each point, weights
#' `dnorm(distance, sd = smooth * grid step)`, and velocity = weighted sum / max(1, total
#' weight).
#'
#' For the quiver grid (`adjust_for_stream = FALSE`) points whose total weight is below
#' `min_mass` percent of its 99th percentile are dropped and, with `autoscale`, the vectors
#' are scaled as matplotlib's quiver would. For stream lines (`adjust_for_stream = TRUE`)
#' the full grid is returned with the x component set to `NA` where the local speed is
#' below `10^(min_mass - 6)` or the neighbours' mean absolute velocity is below its
#' `cutoff_perc` percentile, and the line widths scVelo draws (`2 * speed / max speed`).
#'
#' @param embedding Cells x dimensions coordinates (the first two columns are used).
#' @param V Cells x dimensions embedded velocities ([velocity_embedding()]); row names, when
#'   both have them, must be those of `embedding`. Cells whose coordinates or velocity hold
#'   `NA`/`NaN`/`Inf` are left out of the grid, as upstream does.
#' @param density Positive number (default 1): grid points per axis / 50.
#' @param smooth Positive number (default 0.5): kernel width in grid steps.
#' @param n_neighbors `NULL` (cells / 50) or a whole number of neighbours per grid point.
#' @param min_mass `NULL` (1) or a number: the mass cut-off described above.
#' @param autoscale Logical: scale the grid vectors as a matplotlib quiver (grid only).
#' @param adjust_for_stream Logical: the stream variant.
#' @param cutoff_perc `NULL` (5) or a percentile: the stream variant's speed cut.
#' @param aspect As in [velocity_embedding()].
#' @param threads `NULL` or a whole number of threads for the neighbour search.
#' @return Grid variant: a list with `x` (points x 2 coordinates) and `v` (points x 2
#'   velocities) of the kept points and `mass`. Stream variant: a list with `x`, `y` (the
#'   grid vectors), `u`, `v` (`length(y)` x `length(x)` matrices, row = y), `mass`,
#'   `cutoff` and `linewidth` (same layout).
#' @examples
#' set.seed(1)
#' E <- matrix(rnorm(400), 200, 2)
#' V <- cbind(-E[, 2], E[, 1]) / 10
#' str(velocity_grid(E, V, density = 0.4))
#' @export
velocity_grid <- function(embedding, V, density = 1, smooth = 0.5, n_neighbors = NULL,
                          min_mass = NULL, autoscale = TRUE, adjust_for_stream = FALSE,
                          cutoff_perc = NULL, aspect = 0.7451612903, threads = NULL) {
  E <- embedding_2d(embedding, "embedding")
  V <- velocity_2d(V, E, "V", "embedding")
  check_number(density, "density", min = 0, min_open = TRUE)
  check_number(smooth, "smooth", min = 0, min_open = TRUE)
  check_number(n_neighbors, "n_neighbors", min = 1, whole = TRUE, allow_null = TRUE)
  check_number(min_mass, "min_mass", allow_null = TRUE)
  check_flag(autoscale, "autoscale")
  check_flag(adjust_for_stream, "adjust_for_stream")
  check_number(cutoff_perc, "cutoff_perc", min = 0, max = 100, allow_null = TRUE)
  check_number(aspect, "aspect", min = 0, min_open = TRUE)
  nth <- resolve_threads(threads)
  ok <- is.finite(rowSums(E)) & is.finite(rowSums(V))
  if (sum(ok) < 2L) {
    stopf("'embedding' and 'V' have %d cell(s) with finite coordinates and velocity; at least 2 are needed",
          sum(ok))
  }
  E <- E[ok, , drop = FALSE]
  V <- V[ok, , drop = FALSE]
  n <- nrow(E)
  ng <- as.integer(50 * density)
  if (ng < 2L) stopf("'density' gives a grid of %d point(s) per axis; it needs >= 2", ng)
  k <- if (is.null(n_neighbors)) as.integer(n / 50) else as.integer(n_neighbors)
  if (k < 1L || k > n) {
    stopf("%d neighbour(s) per grid point for %d cells with finite coordinates and velocity; give 'n_neighbors' in [1, %d]",
          k, n, n)
  }
  # spec: compute_velocity_on_grid step 2 (the upper margin uses the lowered minimum)
  grs <- lapply(1:2, function(d) {
    m <- min(E[, d])
    M <- max(E[, d])
    m <- m - 0.01 * abs(M - m)
    M <- M + 0.01 * abs(M - m)
    seq(m, M, length.out = ng)
  })
  G <- cbind(rep(grs[[1L]], times = ng), rep(grs[[2L]], each = ng)) # point = iy * n_x + ix
  nn <- .Call(C_scnative_velocity_knn_query, E, G, k, nth)
  idx <- nn[[1L]]
  sigma <- mean(c(grs[[1L]][2L] - grs[[1L]][1L], grs[[2L]][2L] - grs[[2L]][1L])) * smooth
  w <- stats::dnorm(nn[[2L]], sd = sigma)
  mass <- rowSums(w)
  Vg <- cbind(rowSums(w * matrix(V[idx, 1L], nrow(idx))), rowSums(w * matrix(V[idx, 2L], nrow(idx))))
  Vg <- Vg / pmax(1, mass)
  min_mass <- min_mass %||% 1
  if (!adjust_for_stream) {
    keep <- mass > min_mass * np_percentile(mass, 99) / 100
    Xk <- G[keep, , drop = FALSE]
    Vk <- Vg[keep, , drop = FALSE]
    if (autoscale && nrow(Vk)) Vk <- Vk / (3 * quiver_scale(Xk, Vk, aspect))
    return(list(x = Xk, v = Vk, mass = mass[keep]))
  }
  # spec: Stream variant
  U <- matrix(Vg[, 1L], ng, ng, byrow = TRUE)
  W <- matrix(Vg[, 2L], ng, ng, byrow = TRUE)
  speed <- sqrt(U^2 + W^2)
  mm <- min(10^(min_mass - 6), 0.9 * max(speed))
  cutoff <- speed < mm
  len <- rowMeans(matrix(abs(V[idx, 1L]), nrow(idx))) + rowMeans(matrix(abs(V[idx, 2L]), nrow(idx)))
  len <- matrix(len, ng, ng, byrow = TRUE)
  cutoff <- cutoff | len < np_percentile(as.vector(len), cutoff_perc %||% 5)
  U[cutoff] <- NA_real_
  lw <- sqrt(U^2 + W^2)
  lw <- 2 * lw / max(lw, na.rm = TRUE)
  list(x = grs[[1L]], y = grs[[2L]], u = U, v = W, mass = speed, cutoff = cutoff, linewidth = lw)
}

embedding_2d <- function(embedding, arg) {
  if (is.data.frame(embedding)) embedding <- as.matrix(embedding)
  if (!is.matrix(embedding) || !is.numeric(embedding) || ncol(embedding) < 2L) {
    stopf("'%s' must be a numeric cells x dimensions matrix with at least 2 columns", arg)
  }
  if (nrow(embedding) < 2L) stopf("'%s' must have at least 2 rows (cells)", arg)
  E <- embedding[, 1:2, drop = FALSE]
  storage.mode(E) <- "double"
  E
}

# The embedded velocities `V` of the cells of `E` (embedding_2d()): a numeric matrix with a
# row per cell (row names, when both have them, those of `E` in order) and at least 2 columns;
# returns its first two columns as doubles. Non-finite rows are allowed: velocity_grid() leaves
# those cells out, as upstream does.
velocity_2d <- function(V, E, arg = "V", arg_e = "x") {
  if (is.data.frame(V)) V <- as.matrix(V)
  if (!is.matrix(V) || !(is.numeric(V) || is.logical(V)) || nrow(V) != nrow(E) || ncol(V) < 2L) {
    stopf("'%s' must be a numeric matrix with %d rows (cells) and at least 2 columns", arg,
          nrow(E))
  }
  if (!is.null(rownames(V)) && !is.null(rownames(E)) && !identical(rownames(V), rownames(E))) {
    stopf("the rows of '%s' are not the cells of '%s', in order", arg, arg_e)
  }
  V <- V[, 1:2, drop = FALSE]
  storage.mode(V) <- "double"
  V
}

# `color` of the plots: NULL or one value per cell (numbers, strings, a factor).
check_color <- function(color, n) {
  if (is.null(color)) return(invisible(color))
  if (!(is.atomic(color) || is.factor(color)) || !is.null(dim(color)) || length(color) != n) {
    stopf("'color' must be NULL or a vector with one value per cell (%d)", n)
  }
  check_factor(color, "color")
  if (is.numeric(color) && any(is.infinite(color))) stopf("'color' contains infinite values")
  invisible(color)
}

# ------------------------------------------------------------------ plots

#' Velocity on an embedding: stream lines, a quiver grid or arrows per cell
#'
#' The ggplot2 versions of scVelo's `pl.velocity_embedding_stream`,
#' `pl.velocity_embedding_grid` and `pl.velocity_embedding`: the cells as points (coloured
#' by `color`) and, over them, stream lines integrated through the grid velocities
#' ([velocity_grid()], stream variant; lines as matplotlib's `streamplot` draws them, with
#' arrow heads half way and widths following the local speed), arrows on the kept grid
#' points, or one arrow per cell.
#'
#' @param x A cells x dimensions embedding (e.g. UMAP coordinates), or a Seurat /
#'   SingleCellExperiment object (see [velocity_graph()] for where the results live).
#' @param V Cells x dimensions embedded velocities ([velocity_embedding()]); object
#'   methods: the name of the velocity reduction / reducedDim (default
#'   `"velocity_<reduction>"`).
#' @param type `"stream"` (default), `"grid"` or `"arrows"`.
#' @param color `NULL`, or one value per cell: a factor/character (groups) or numeric
#'   (continuous, e.g. latent time). Object methods: also a metadata column or gene name.
#' @param density Stream: line density (default 1, as upstream; 2 = twice as many); grid:
#'   grid points per axis / 50 (default 1).
#' @param smooth,n_neighbors,min_mass,cutoff_perc Passed to [velocity_grid()].
#' @param arrow_length Multiplier of the arrow lengths (grid, arrows).
#' @param arrow_size Size of the arrow heads.
#' @param linewidth Multiplier of the stream line widths.
#' @param point_size,point_alpha Cell point size and opacity (`NULL` chooses by type and
#'   number of cells).
#' @param ... Passed to methods.
#' @return A `ggplot` object.
#' @examples
#' if (requireNamespace("ggplot2", quietly = TRUE)) {
#'   set.seed(1)
#'   E <- matrix(rnorm(600), 300, 2)
#'   V <- cbind(-E[, 2], E[, 1]) / 10
#'   plot_velocity_embedding(E, V, type = "grid")
#' }
#' @export
plot_velocity_embedding <- function(x, ...) UseMethod("plot_velocity_embedding")

#' @rdname plot_velocity_embedding
#' @export
plot_velocity_embedding.default <- function(x, V, type = c("stream", "grid", "arrows"),
                                            color = NULL, density = 1, smooth = 0.5,
                                            n_neighbors = NULL, min_mass = NULL,
                                            cutoff_perc = NULL, arrow_length = 1,
                                            arrow_size = 1, linewidth = 1, point_size = NULL,
                                            point_alpha = NULL, ...) {
  need_ggplot()
  type <- check_choice(type, c("stream", "grid", "arrows"), "type")
  E <- embedding_2d(x, "x")
  if (missing(V)) stopf("'V' (the embedded velocities, velocity_embedding()) is missing")
  V <- velocity_2d(V, E, "V", "x")
  n_ok <- sum(is.finite(rowSums(E)) & is.finite(rowSums(V)))
  if (n_ok < 2L) {
    stopf("'x' and 'V' have %d cell(s) with finite coordinates and velocity; at least 2 are needed",
          n_ok)
  }
  check_number(arrow_length, "arrow_length", min = 0, min_open = TRUE)
  check_number(arrow_size, "arrow_size", min = 0)
  check_number(linewidth, "linewidth", min = 0)
  check_number(point_size, "point_size", min = 0, allow_null = TRUE)
  check_number(point_alpha, "point_alpha", min = 0, max = 1, allow_null = TRUE)
  cells <- data.frame(x = E[, 1L], y = E[, 2L])
  check_color(color, nrow(E))
  if (!is.null(color)) {
    cells$color <- if (is.numeric(color)) as.numeric(color) else factor(color)
  }
  n <- nrow(E)
  ps <- point_size %||% max(0.3, min(3, 60 / sqrt(n)))
  pa <- point_alpha %||% (if (type == "stream") 0.4 else 0.7)
  aes_pt <- if (is.null(color)) ggplot2::aes(.data$x, .data$y) else
    ggplot2::aes(.data$x, .data$y, colour = .data$color)
  pts <- if (is.null(color)) {
    ggplot2::geom_point(aes_pt, size = ps, alpha = pa, stroke = 0, colour = "grey70")
  } else {
    ggplot2::geom_point(aes_pt, size = ps, alpha = pa, stroke = 0)
  }
  p <- ggplot2::ggplot(cells) + pts +
    (if (is.numeric(cells$color)) ggplot2::scale_colour_viridis_c(option = "plasma") else NULL) +
    ggplot2::coord_cartesian(expand = TRUE) +
    ggplot2::labs(x = colnames(x)[1L] %||% "dim 1", y = colnames(x)[2L] %||% "dim 2",
                  colour = NULL) +
    ggplot2::theme_minimal() +
    ggplot2::theme(panel.grid = ggplot2::element_blank())
  # arrow heads about a third of the typical arrow (in mm of a ~12 cm wide panel)
  head_for <- function(dx, dy) {
    len <- stats::median(sqrt(dx^2 + dy^2)) / diff(range(E[, 1L]))
    mm <- min(2, max(0.3, 0.35 * 120 * len)) * arrow_size
    grid::arrow(length = grid::unit(mm, "mm"), type = "closed", angle = 25)
  }
  if (type == "arrows") {
    ok <- is.finite(V[, 1L]) & is.finite(V[, 2L])
    d <- data.frame(x = E[ok, 1L], y = E[ok, 2L], xend = E[ok, 1L] + arrow_length * V[ok, 1L],
                    yend = E[ok, 2L] + arrow_length * V[ok, 2L])
    p <- p + ggplot2::geom_segment(ggplot2::aes(.data$x, .data$y, xend = .data$xend,
                                                yend = .data$yend), data = d,
                                   linewidth = 0.25, colour = "grey15",
                                   arrow = head_for(d$xend - d$x, d$yend - d$y))
  } else if (type == "grid") {
    g <- velocity_grid(E, V, density = density, smooth = smooth, n_neighbors = n_neighbors,
                       min_mass = min_mass)
    d <- data.frame(x = g$x[, 1L], y = g$x[, 2L], xend = g$x[, 1L] + arrow_length * g$v[, 1L],
                    yend = g$x[, 2L] + arrow_length * g$v[, 2L])
    p <- p + ggplot2::geom_segment(ggplot2::aes(.data$x, .data$y, xend = .data$xend,
                                                yend = .data$yend), data = d,
                                   linewidth = 0.35, colour = "grey15",
                                   arrow = head_for(d$xend - d$x, d$yend - d$y))
  } else {
    g <- velocity_grid(E, V, smooth = smooth, n_neighbors = n_neighbors, min_mass = min_mass,
                       adjust_for_stream = TRUE, cutoff_perc = cutoff_perc)
    st <- stream_lines(g$x, g$y, g$u, g$v, density = 2 * density,
                       linewidth = linewidth * g$linewidth, maxlength = 4)
    p <- Reduce(`+`, stream_layers(st, arrow_size = arrow_size), p)
  }
  p
}
