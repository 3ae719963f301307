# Streamlines of a 2-D vector field as matplotlib's Axes.streamplot draws them (scVelo's
# pl.velocity_embedding_stream calls it), and ggplot2 layers that draw them. The integrator is
# in src/streamplot.c. Spec (scVelo downstream) sections "Stream variant" and "matplotlib
# streamplot, as needed for a native integrator".

# numpy's allclose(a, b): |a - b| <= atol + rtol |b|, rtol = 1e-5, atol = 1e-8.
np_allclose <- function(a, b) all(abs(a - b) <= 1e-8 + 1e-5 * abs(b))

# A grid vector as matplotlib's Grid accepts it: finite, strictly increasing, evenly spaced
# (np.allclose of the steps and the mean step), at least 2 values.
check_stream_axis <- function(x, arg) {
  if (!is.numeric(x) || !is.null(dim(x)) && length(dim(x)) > 1L) {
    stopf("'%s' must be a numeric vector", arg)
  }
  x <- as.double(x)
  if (length(x) < 2L) stopf("'%s' must have at least 2 values, not %d", arg, length(x))
  if (anyNA(x) || any(!is.finite(x))) stopf("'%s' must be finite (no NA/NaN/Inf)", arg)
  if (!all(diff(x) > 0)) stopf("'%s' must be strictly increasing", arg)
  n <- length(x)
  if (!np_allclose(diff(x), (x[n] - x[1L]) / (n - 1L))) {
    stopf("'%s' values must be equally spaced", arg)
  }
  if (!is.finite(x[2L] - x[1L]) || !is.finite(x[n] - x[1L])) {
    stopf("'%s' spans a range too wide to represent", arg)
  }
  x
}

# A field component or a line-width matrix: numeric, length(y) rows and length(x) columns.
check_stream_field <- function(m, arg, nx, ny) {
  if (!is.matrix(m) || !(is.numeric(m) || is.logical(m) && all(is.na(m)))) {
    stopf("'%s' must be a numeric matrix with length(y) rows and length(x) columns", arg)
  }
  if (nrow(m) != ny || ncol(m) != nx) {
    stopf("'%s' must have length(y) = %d rows and length(x) = %d columns, not %d x %d",
          arg, ny, nx, nrow(m), ncol(m))
  }
  storage.mode(m) <- "double"
  m
}

#' Streamlines of a vector field on a grid, as matplotlib's streamplot computes them
#'
#' Seeds and integrates streamlines exactly as `matplotlib.pyplot.streamplot()` (3.x) does:
#' mask cells (30 x 30 per unit of `density`) seeded in a spiral from the lower-left corner,
#' Heun (RK12) steps with error control at unit speed in axes units, an Euler step onto the
#' boundary, lines stopped on entering a cell another line has taken, lines shorter than
#' `minlength` dropped. `NA`/`NaN`/`Inf` in `u` or `v` mask a grid point: a line stops where the
#' bilinear interpolation would use it.
#'
#' @param x,y numeric vectors, the grid (nx and ny values, finite, strictly increasing, evenly
#'   spaced as numpy's `allclose` accepts), at least 2 each.
#' @param u,v numeric matrices with `length(y)` rows and `length(x)` columns: `u[iy, ix]` is the
#'   x component at `(x[ix], y[iy])` (matplotlib's and scVelo's `[row = y, column = x]`
#'   layout; note that this is the transpose of [graphics::image()]'s `z`). Non-finite values
#'   mask the grid point.
#' @param density positive number or two (x, y); the mask has `floor(30 * density)` cells per
#'   axis, at least 2.
#' @param linewidth `NULL` (matplotlib's default, 1.5), a single non-negative number, or a
#'   matrix like `u` (values in points, `NaN` allowed) interpolated bilinearly at each segment's
#'   start.
#' @param maxlength,minlength lengths of a whole streamline in axes units (the plot box is
#'   1 x 1): lines longer than `maxlength` (> 0) are cut, lines not longer than `minlength`
#'   (>= 0) are dropped.
#' @param integration_direction `"both"`, `"forward"` or `"backward"`.
#' @param broken_streamlines `TRUE` to stop a line that comes too close to another.
#' @return `list(segments, arrows)`. `segments`: a data frame with one row per line segment in
#'   matplotlib's order (lines in order of creation, points from upstream to downstream):
#'   `line` (integer id), `x`, `y`, `xend`, `yend` (data coordinates) and `width` (points).
#'   `arrows`: one row per line with at least 2 points: `line`, `x`, `y` (the tail, a point of
#'   the line at half its arc length), `xend`, `yend` (the head, the middle of the next
#'   segment, so the arrow points along the flow) and `width` (the line width there).
#' @keywords internal
#' @noRd
stream_lines <- function(x, y, u, v, density = 1, linewidth = NULL, maxlength = 4,
                         minlength = 0.1, integration_direction = "both",
                         broken_streamlines = TRUE) {
  x <- check_stream_axis(x, "x")
  y <- check_stream_axis(y, "y")
  nx <- length(x)
  ny <- length(y)
  u <- check_stream_field(u, "u", nx, ny)
  v <- check_stream_field(v, "v", nx, ny)
  if (!is.numeric(density) || !length(density) %in% 1:2 || anyNA(density) ||
      any(!is.finite(density))) {
    stopf("'density' must be one or two finite numbers")
  }
  if (any(density <= 0)) stopf("'density' must be positive")
  density <- rep_len(as.double(density), 2L)
  cells <- floor(30 * density)
  if (any(cells < 2)) stopf("'density' must be at least 1/15 (a mask of at least 2 x 2 cells)")
  if (prod(cells) > .Machine$integer.max) stopf("'density' is too large")
  lw_matrix <- NULL
  if (is.null(linewidth)) {
    linewidth <- 1.5
  } else if (is.matrix(linewidth)) {
    lw_matrix <- check_stream_field(linewidth, "linewidth", nx, ny)
    if (any(lw_matrix < 0, na.rm = TRUE)) stopf("'linewidth' must not be negative")
  } else {
    check_number(linewidth, "linewidth", min = 0)
  }
  check_number(maxlength, "maxlength", min = 0, min_open = TRUE)
  check_number(minlength, "minlength", min = 0)
  integration_direction <- check_choice(integration_direction, c("both", "forward", "backward"),
                                        "integration_direction")
  check_flag(broken_streamlines, "broken_streamlines")
  dir <- match(integration_direction, c("both", "forward", "backward")) - 1L

  r <- .Call(C_scnative_streamlines, x, y, u, v, lw_matrix, density, as.double(maxlength),
             as.double(minlength), dir, broken_streamlines)

  n <- r$n
  nl <- length(n)
  line <- rep.int(seq_len(nl), n)
  last <- cumsum(n)
  start <- last - n + 1L
  keep <- rep.int(TRUE, length(line))
  keep[last] <- FALSE
  i <- which(keep)
  width <- if (is.null(lw_matrix)) rep.int(as.double(linewidth), length(i)) else r$width[i]
  segments <- data.frame(line = line[i], x = r$x[i], y = r$y[i], xend = r$x[i + 1L],
                         yend = r$y[i + 1L], width = width)
  has <- which(!is.na(r$arrow))
  tail <- start[has] + r$arrow[has] - 1L
  aw <- if (is.null(lw_matrix)) rep.int(as.double(linewidth), length(has)) else r$width[tail]
  arrows <- data.frame(line = has, x = r$x[tail], y = r$y[tail],
                       xend = r$arrow_head[has, 1L], yend = r$arrow_head[has, 2L], width = aw)
  list(segments = segments, arrows = arrows)
}

#' ggplot2 layers drawing streamlines
#'
#' @param st the result of `stream_lines()`.
#' @param colour one colour for lines and arrow heads.
#' @param arrow_size positive number, scales the arrow heads (matplotlib's `arrowsize`).
#' @param alpha opacity in `[0, 1]`.
#' @return A list of ggplot2 components to add to a plot (`p + stream_layers(st)`): a segment
#'   layer with per-segment widths, a layer of closed arrow heads, and
#'   `scale_linewidth_identity()` (widths are mapped as given, so the plot should not carry
#'   another linewidth scale). Widths are converted from matplotlib's points to ggplot2's
#'   linewidth units so lines are as thick as matplotlib's at the same figure size; the arrow
#'   head is matplotlib's `"-|>"` at `mutation_scale = 10 * arrow_size` (4 x 2 points).
#'   Segments with a non-finite width (`NaN` in a width matrix) are not drawn.
#' @keywords internal
#' @noRd
stream_layers <- function(st, colour = "black", arrow_size = 1, alpha = 1) {
  need_pkg("ggplot2", "for stream plots")
  if (!is.list(st) || !is.data.frame(st$segments) || !is.data.frame(st$arrows) ||
      !all(c("x", "y", "xend", "yend", "width") %in% names(st$segments)) ||
      !all(c("x", "y", "xend", "yend", "width") %in% names(st$arrows))) {
    stopf("'st' must be the result of stream_lines()")
  }
  if (length(colour) != 1L || is.na(colour)) stopf("'colour' must be a single colour")
  check_number(arrow_size, "arrow_size", min = 0, min_open = TRUE)
  check_number(alpha, "alpha", min = 0, max = 1)
  # matplotlib's point (1/72 inch) -> R's lwd (1/96 inch) -> ggplot2's linewidth (lwd / .pt)
  to_gg <- 96 / 72 / ggplot2::.pt
  seg <- st$segments[is.finite(st$segments$width), , drop = FALSE]
  seg$lw <- seg$width * to_gg
  arr <- st$arrows[is.finite(st$arrows$width), , drop = FALSE]
  arr$lw <- arr$width * to_gg
  # matplotlib's "-|>": head length 0.4, half width 0.2 (times the mutation scale, in points);
  # grid's arrow takes the edge length and the half angle.
  head <- grid::arrow(angle = atan2(0.2, 0.4) * 180 / pi,
                      length = grid::unit(sqrt(0.4^2 + 0.2^2) * 10 * arrow_size, "bigpts"),
                      type = "closed")
  .data <- ggplot2::.data
  xy <- ggplot2::aes(x = .data$x, y = .data$y, xend = .data$xend, yend = .data$yend,
                     linewidth = .data$lw)
  list(
    ggplot2::geom_segment(data = seg, mapping = xy, colour = colour, alpha = alpha,
                          lineend = "round", inherit.aes = FALSE),
    ggplot2::geom_segment(data = arr, mapping = xy, colour = colour, alpha = alpha,
                          arrow = head, arrow.fill = colour, linejoin = "mitre",
                          inherit.aes = FALSE),
    ggplot2::scale_linewidth_identity()
  )
}
