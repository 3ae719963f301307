# stream_lines() and stream_layers(): streamlines as matplotlib's Axes.streamplot computes them
# (live matplotlib in the peers venv, same test run), an independent check on a uniform flow,
# bad input, and the ggplot2 layers.
#
# Agreement. Our arithmetic follows matplotlib's operation by operation; the one difference is
# the square in the axes-unit speed: numpy's np.power (np.ma.power) is, on AVX-512 CPUs, a
# vector pow accurate to 1 ulp, where we square exactly. Where the squares are exact (the
# power-of-two test below) the streamlines are bit-identical; on generic fields the measured
# difference is at most ~3e-15 in coordinates of size ~1 (a few ulps carried along the lines).
# We assert 1e-10: room for other CPUs and numpy builds, while a real difference in the
# algorithm (a step, a seed, a mask cell) moves points by 1e-3 or more or changes the counts.

stream_py_code <- "
import numpy as _np, matplotlib as _mpl
_mpl.use('Agg')
import matplotlib.pyplot as _plt

def stream_mpl(x, y, u, v, linewidth=None, **kw):
    fig, ax = _plt.subplots()
    x = _np.asarray(x, dtype=float); y = _np.asarray(y, dtype=float)
    u = _np.asarray(u, dtype=float); v = _np.asarray(v, dtype=float)
    lw = linewidth
    if lw is not None and not _np.isscalar(lw):
        lw = _np.asarray(lw, dtype=float)
    if 'density' in kw and not _np.isscalar(kw['density']):
        kw['density'] = tuple(kw['density'])
    res = ax.streamplot(x, y, u, v, linewidth=lw, color='k', **kw)
    segs = res.lines.get_segments()
    out = {'lens': [int(len(s)) for s in segs],
           'xy': _np.concatenate(segs) if segs else _np.zeros((0, 2)),
           'lw': _np.asarray(res.lines.get_linewidths(), dtype=float),
           'arrows': _np.array([[p._posA_posB[0][0], p._posA_posB[0][1],
                                 p._posA_posB[1][0], p._posA_posB[1][1]]
                                for p in ax.patches], dtype=float).reshape(-1, 4),
           'arrow_lw': _np.array([p.get_linewidth() for p in ax.patches], dtype=float)}
    _plt.close(fig)
    return out
"

stream_py <- function() peers_module(stream_py_code, "stream_mpl")

# A spiral sink with some curvature: u[iy, ix], v[iy, ix] at (x[ix], y[iy]).
stream_field <- function(nx = 50, ny = 50, xr = c(-2, 2), yr = c(-2, 2)) {
  x <- seq(xr[1], xr[2], length.out = nx)
  y <- seq(yr[1], yr[2], length.out = ny)
  X <- matrix(x, ny, nx, byrow = TRUE)
  Y <- matrix(y, ny, nx)
  list(x = x, y = y, u = -Y - 0.3 * X + 0.2 * sin(2 * Y), v = X - 0.3 * Y + 0.1 * cos(3 * X))
}

# Our segments as matplotlib's polylines (one per line): lengths and stacked points.
as_polylines <- function(seg) {
  parts <- split(seg, seg$line)
  list(lens = vapply(parts, nrow, 1L) + 1L,
       xy = do.call(rbind, lapply(parts, function(s) {
         rbind(cbind(s$x, s$y), c(s$xend[nrow(s)], s$yend[nrow(s)]))
       })))
}

arrow_matrix <- function(st) unname(as.matrix(st$arrows[, c("x", "y", "xend", "yend")]))

# One run each side with a scalar (or default) line width; compares lines and arrows.
expect_stream_parity <- function(f, tol = 1e-10, ...) {
  py <- stream_py()
  st <- stream_lines(f$x, f$y, f$u, f$v, ...)
  up <- py$stream_mpl(f$x, f$y, f$u, f$v, ...)
  ours <- as_polylines(st$segments)
  expect_gt(length(up$lens), 10L)
  expect_identical(unname(ours$lens), as.integer(unlist(up$lens)))
  expect_equal(unname(ours$xy), up$xy, tolerance = tol)
  expect_identical(nrow(st$arrows), nrow(up$arrows))
  expect_equal(arrow_matrix(st), up$arrows, tolerance = tol)
  expect_identical(st$arrows$line, seq_along(up$lens))
  invisible(list(st = st, up = up, ours = ours))
}

test_that("stream_lines() matches matplotlib on a spiral sink (50 x 50, density 2)", {
  f <- stream_field()
  r <- expect_stream_parity(f, density = 2, maxlength = 4)
  expect_true(all(r$st$segments$width == 1.5)) # matplotlib's default lines.linewidth
  expect_equal(max(abs(unname(r$ours$xy) - r$up$xy)), 0, tolerance = 1e-10)
  # default density 1 and a scalar width
  r1 <- expect_stream_parity(f, linewidth = 0.7)
  expect_true(all(r1$st$segments$width == 0.7) && all(r1$st$arrows$width == 0.7))
  expect_lt(length(r1$up$lens), length(r$up$lens))
})

test_that("stream_lines() is bit-identical to matplotlib where the speeds square exactly", {
  # dx = 1/16, dy = 1/16 and nx - 1, ny - 1 powers of two: the axes-unit components are the
  # inputs times powers of two, with at most 19 significant bits, so every square is exact.
  f <- stream_field(65, 33, c(-2, 2), c(-1, 1))
  f$u <- round(f$u * 2^16) / 2^16
  f$v <- round(f$v * 2^16) / 2^16
  r <- expect_stream_parity(f, density = 2)
  expect_identical(unname(r$ours$xy), r$up$xy)
  expect_identical(arrow_matrix(r$st), r$up$arrows)
})

test_that("stream_lines() matches matplotlib with masked cells and a width matrix (scVelo)", {
  py <- stream_py()
  f <- stream_field()
  # scVelo's cutoff: NaN in the x component only; here the rim and a scattered set inside
  cut <- f$u^2 + f$v^2 > 3.5
  set.seed(11)
  cut[sample(length(cut), 60)] <- TRUE
  f$u[cut] <- NaN
  r <- expect_stream_parity(f, density = 2, maxlength = 4)
  # no segment enters a cell with a masked corner
  ix <- findInterval(r$st$segments$x, f$x, rightmost.closed = TRUE)
  iy <- findInterval(r$st$segments$y, f$y, rightmost.closed = TRUE)
  expect_false(any(cut[cbind(iy, ix)] & cut[cbind(iy, pmin(ix + 1L, 50L))] &
                     cut[cbind(pmin(iy + 1L, 50L), ix)] & cut[cbind(pmin(iy + 1L, 50L), pmin(ix + 1L, 50L))]))
  # scVelo's widths: 2 * speed / max(speed), NaN where cut
  speed <- sqrt(f$u^2 + f$v^2)
  lw <- 2 * speed / max(speed, na.rm = TRUE)
  st <- stream_lines(f$x, f$y, f$u, f$v, density = 2, linewidth = lw, maxlength = 4)
  up <- py$stream_mpl(f$x, f$y, f$u, f$v, linewidth = lw, density = 2, maxlength = 4)
  seg <- unname(as.matrix(st$segments[, c("x", "y", "xend", "yend")]))
  odd <- seq(1L, nrow(up$xy), by = 2L)
  expect_identical(nrow(seg), length(odd))
  expect_equal(seg, cbind(up$xy[odd, ], up$xy[odd + 1L, ]), tolerance = 1e-10)
  expect_equal(st$segments$width, as.numeric(up$lw), tolerance = 1e-10)
  expect_gt(stats::sd(st$segments$width, na.rm = TRUE), 0.1)
  expect_true(anyNA(st$segments$width)) # a line's first point can touch a cut cell
  expect_equal(arrow_matrix(st), up$arrows, tolerance = 1e-10)
  expect_equal(st$arrows$width, as.numeric(up$arrow_lw), tolerance = 1e-10)
  # the same lines as with a scalar width
  expect_equal(st$segments[, 1:5], r$st$segments[, 1:5])
})

test_that("stream_lines() matches matplotlib on a non-square domain and other settings", {
  f <- stream_field(60, 40, c(0, 3), c(-1, 0.5))
  expect_stream_parity(f, density = 2, maxlength = 4)
  expect_stream_parity(f, density = c(1, 2.5), integration_direction = "forward")
  expect_stream_parity(f, density = 1.3, integration_direction = "backward",
                       broken_streamlines = FALSE, minlength = 0.02)
  r <- expect_stream_parity(f, density = 1, maxlength = 0.5, minlength = 0.2)
  expect_true(all(r$up$lens < 60))
})

test_that("stream_lines() on a uniform flow gives one straight line per mask row", {
  # independent of matplotlib: a rightward flow seeds one line on each of the floor(30 * dy)
  # mask rows; each runs across the whole domain at its row's height
  x <- seq(-1, 2, length.out = 31)
  y <- seq(0, 1, length.out = 21)
  u <- matrix(0.5, 21, 31)
  v <- matrix(0, 21, 31)
  st <- stream_lines(x, y, u, v, density = c(1, 1.5))
  seg <- st$segments
  expect_identical(length(unique(seg$line)), 45L)
  expect_true(all(seg$y == seg$yend))
  rows <- tapply(seg$y, seg$line, unique)
  expect_equal(sort(as.numeric(rows)), seq(0, 1, length.out = 45), tolerance = 1e-12)
  expect_equal(as.numeric(tapply(seg$x, seg$line, min)), rep(-1, 45))
  expect_equal(as.numeric(tapply(seg$xend, seg$line, max)), rep(2, 45), tolerance = 1e-12)
  expect_true(all(st$arrows$xend > st$arrows$x) && all(st$arrows$yend == st$arrows$y))
  expect_true(all(abs(st$arrows$x - 0.5) < 0.06))
  # the reversed flow points the arrows the other way
  st2 <- stream_lines(x, y, -u, v, density = c(1, 1.5))
  expect_true(all(st2$arrows$xend < st2$arrows$x))
  # an all-masked field has no lines
  none <- stream_lines(x, y, u * NaN, v)
  expect_identical(nrow(none$segments), 0L)
  expect_identical(nrow(none$arrows), 0L)
  expect_named(none$segments, c("line", "x", "y", "xend", "yend", "width"))
  expect_named(none$arrows, c("line", "x", "y", "xend", "yend", "width"))
})

test_that("stream_lines() checks its arguments", {
  x <- seq(0, 1, length.out = 5)
  y <- seq(0, 2, length.out = 4)
  u <- matrix(1, 4, 5)
  v <- matrix(0, 4, 5)
  expect_error(stream_lines(rev(x), y, u, v), "'x' must be strictly increasing")
  expect_error(stream_lines(x, c(0, 1, 1, 2), u, v), "'y' must be strictly increasing")
  expect_error(stream_lines(c(0, 0.1, 0.5, 0.7, 1), y, u, v), "'x' values must be equally spaced")
  expect_error(stream_lines(c(x[-5], NA), y, u, v), "'x' must be finite")
  expect_error(stream_lines(x, c(0, 1, 2, Inf), u, v), "'y' must be finite")
  expect_error(stream_lines(1, y, u[, 1, drop = FALSE], v[, 1, drop = FALSE]),
               "'x' must have at least 2 values")
  expect_error(stream_lines(as.character(x), y, u, v), "'x' must be a numeric vector")
  expect_error(stream_lines(x, y, t(u), v), "'u' must have length\\(y\\) = 4 rows")
  expect_error(stream_lines(x, y, u, as.vector(v)), "'v' must be a numeric matrix")
  expect_error(stream_lines(x, y, u, v, density = 0), "'density' must be positive")
  expect_error(stream_lines(x, y, u, v, density = c(1, 1, 1)), "'density' must be one or two")
  expect_error(stream_lines(x, y, u, v, density = NA), "'density' must be one or two")
  expect_error(stream_lines(x, y, u, v, density = 0.05), "'density' must be at least 1/15")
  expect_error(stream_lines(x, y, u, v, density = 1e6), "'density' is too large")
  expect_error(stream_lines(x, y, u, v, linewidth = u[, -1]), "'linewidth' must have")
  expect_error(stream_lines(x, y, u, v, linewidth = -u), "'linewidth' must not be negative")
  expect_error(stream_lines(x, y, u, v, linewidth = -1), "'linewidth'")
  expect_error(stream_lines(x, y, u, v, linewidth = "thick"), "'linewidth'")
  expect_error(stream_lines(x, y, u, v, maxlength = 0), "'maxlength'")
  expect_error(stream_lines(x, y, u, v, maxlength = Inf), "'maxlength'")
  expect_error(stream_lines(x, y, u, v, minlength = -1), "'minlength'")
  expect_error(stream_lines(x, y, u, v, integration_direction = "up"), "'integration_direction'")
  expect_error(stream_lines(x, y, u, v, broken_streamlines = NA), "'broken_streamlines'")
  # matplotlib's np.allclose tolerance on the spacing; integer input is fine
  ok <- stream_lines(x + c(0, 1e-9, 0, 0, 0), y, u, v)
  expect_gt(nrow(ok$segments), 0L)
  expect_identical(stream_lines(0:4, y, u, v), stream_lines(as.double(0:4), y, u, v))
})

test_that("stream_layers() draws the segments and arrows with ggplot2", {
  skip_if_not_installed("ggplot2")
  f <- stream_field(30, 30)
  lw <- sqrt(f$u^2 + f$v^2)
  lw[1:3, ] <- NaN
  st <- stream_lines(f$x, f$y, f$u, f$v, linewidth = 2 * lw / max(lw, na.rm = TRUE))
  p <- ggplot2::ggplot() + stream_layers(st, colour = "grey20", arrow_size = 1.5, alpha = 0.8)
  b <- ggplot2::ggplot_build(p)
  fin <- is.finite(st$segments$width)
  expect_false(all(fin))
  expect_identical(nrow(b$data[[1]]), sum(fin))
  expect_equal(b$data[[1]]$linewidth, st$segments$width[fin] * 96 / 72 / ggplot2::.pt)
  expect_identical(nrow(b$data[[2]]), sum(is.finite(st$arrows$width)))
  expect_true(all(b$data[[1]]$colour == "grey20") && all(b$data[[1]]$alpha == 0.8))
  expect_s3_class(p$layers[[2]]$geom_params$arrow, "arrow")
  empty <- stream_lines(f$x, f$y, f$u * NaN, f$v)
  expect_silent(ggplot2::ggplot_build(ggplot2::ggplot() + stream_layers(empty)))
  expect_error(stream_layers(list()), "'st' must be the result of stream_lines")
  expect_error(stream_layers(st, arrow_size = 0), "'arrow_size'")
  expect_error(stream_layers(st, alpha = 2), "'alpha'")
})
