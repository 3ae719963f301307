# The gene-expression heatmap along latent time of scVelo's dynamical-model tutorial
# (`scv.pl.heatmap(adata, var_names = top_genes, sortby = "latent_time", col_color = "clusters",
# n_convolve = 100)`, scVelo 0.3.4): cells sorted by latent time, each gene's Ms smoothed by a
# moving average, scaled to [0, 1] and genes ordered by where they peak. The numbers are in
# latent_time_heatmap_data(), the ggplot2 drawing in plot_latent_time_heatmap().

# ------------------------------------------------------------------ helpers

# numpy's np.convolve(a, ones(M) / M, mode = "same") for every column of X (cells in rows):
# output k (0-based) averages a[k - M %/% 2 + 0:(M - 1)] with the values outside the column
# taken as 0 (so the ends are pulled towards 0, and the divisor stays M). stats::filter sums
# the products w * a in order in C; zero padding on both sides gives numpy's window.
np_convolve_same <- function(X, M) {
  n <- nrow(X)
  if (M == 1L) return(X * 1) # numpy multiplies by the weight 1.0 (no-op)
  w <- 1 / M
  pad <- matrix(0, M, ncol(X))
  Xp <- rbind(pad, X, pad)
  # sides = 1: y[t] = sum_{j = 0}^{M - 1} w * Xp[t - j]; numpy's window for output k ends at
  # original row k - M %/% 2 + M - 1, i.e. padded row k + 2 M - M %/% 2 (1-based, k 0-based)
  Y <- stats::filter(Xp, rep(w, M), method = "convolution", sides = 1L)
  Y <- unclass(Y)[seq.int(0L, n - 1L) + 2L * M - M %/% 2L, , drop = FALSE]
  dim(Y) <- dim(X)
  Y
}

# Likelihoods per row of Ms from a fit, a numeric vector or NULL.
heatmap_likelihoods <- function(x, n_genes_ms, genes_ms) {
  if (is.null(x)) return(NULL)
  if (inherits(x, "scnative_dynamics")) {
    validate_dynamics(x, "x", var_cols = "fit_likelihood", layers = character())
    lik <- as.numeric(x$var$fit_likelihood)
    nm <- rownames(x$var)
  } else if (is.numeric(x) && length(dim(x)) <= 1L) {
    lik <- as.numeric(x)
    nm <- names(x)
  } else {
    stopf("'x' must be a scnative_dynamics fit (recover_dynamics()), a numeric vector of per-gene likelihoods or NULL, not %s",
          class(x)[1L])
  }
  if (!is.null(nm) && !is.null(genes_ms)) {
    pos <- match(genes_ms, nm)
    if (all(is.na(pos))) stopf("'x': none of its genes are genes (row names) of 'Ms'")
    out <- lik[pos] # genes of Ms the fit does not know: NA (never selected)
  } else {
    if (length(lik) != n_genes_ms) {
      stopf("'x' has %d gene(s) but 'Ms' has %d rows; give both gene names", length(lik),
            n_genes_ms)
    }
    out <- lik
  }
  out[is.infinite(out)] <- NA_real_
  out
}

# Ms as the heatmap takes it: a genes x cells matrix, data.frame or (valid) Matrix.
heatmap_check_ms <- function(Ms) {
  if (!(is.matrix(Ms) || methods::is(Ms, "Matrix") || is.data.frame(Ms))) {
    stopf("'Ms' must be a numeric genes x cells matrix, not %s", class(Ms)[1L])
  }
  check_valid_matrix(Ms, "Ms")
}

# Row indices of Ms for `genes` (names or 1-based indices), in the given order.
heatmap_gene_rows <- function(genes, n_genes_ms, genes_ms) {
  if (is.character(genes)) {
    if (anyNA(genes)) stopf("'genes' must not contain NA")
    if (is.null(genes_ms)) stopf("'genes' gives gene names but 'Ms' has no row names")
    bad <- setdiff(genes, genes_ms)
    if (length(bad)) {
      stopf("'genes': unknown gene(s) %s", paste(utils::head(bad, 5L), collapse = ", "))
    }
    rows <- match(genes, genes_ms)
  } else if (is.numeric(genes)) {
    if (anyNA(genes) || any(genes != round(genes)) || any(genes < 1) || any(genes > n_genes_ms)) {
      stopf("'genes' given as row numbers must be whole numbers in [1, %d]", n_genes_ms)
    }
    rows <- as.integer(genes)
  } else {
    stopf("'genes' must be NULL, gene names or row numbers of 'Ms', not %s", class(genes)[1L])
  }
  if (!length(rows)) stopf("'genes' must name at least one gene")
  if (anyDuplicated(rows)) stopf("'genes' must not repeat a gene")
  rows
}

# ------------------------------------------------------------------ the numbers

#' The matrix behind the latent-time heatmap (scVelo's `pl.heatmap`)
#'
#' Computes what `scv.pl.heatmap(adata, var_names = genes, sortby = "latent_time",
#' n_convolve = n_convolve)` draws (scVelo 0.3.4, defaults `standard_scale = 0`,
#' `sort = TRUE`): the cells with a finite latent time sorted by it; each gene's `Ms` along
#' that order smoothed by numpy's `np.convolve(values, rep(1 / n_convolve, n_convolve),
#' mode = "same")` (a centred moving average whose window runs past the ends, which count as
#' zeros, so the first and last `n_convolve / 2` cells fade towards 0); the genes ordered by
#' the cell at which their smoothed profile peaks (first maximum); and each gene scaled to
#' \[0, 1\] by its minimum and maximum (seaborn's `standard_scale = 0`).
#'
#' Without `genes`, the `n_genes` genes with the highest `fit_likelihood` are used (the
#' tutorial's `adata.var["fit_likelihood"].sort_values(ascending=False).index[:300]`),
#' taking only genes with a finite likelihood (the tutorial's pandas idiom would pad the list
#' with unfitted genes when fewer than `n_genes` were fitted).
#'
#' Ties are broken by position: cells with equal latent time keep their input order and
#' genes that peak at the same cell keep their input order (by decreasing likelihood when
#' chosen from `x`). numpy's default sort is not stable and orders such ties by its SIMD
#' kernels, so upstream's order of tied genes is arbitrary and may differ between machines.
#' Upstream drops cells with a non-finite sort key from the times but not from the data
#' (misaligning them); here those cells are left out. When `n_convolve` exceeds the number of
#' cells upstream's assignment fails and it leaves every gene unsmoothed; this does the same,
#' with a warning.
#'
#' @param x The fit of [recover_dynamics()] (an `scnative_dynamics` object; its
#'   `var$fit_likelihood` ranks the genes), or a numeric vector of per-gene likelihoods (one
#'   per row of `Ms`, or named by gene), or `NULL` when `genes` is given.
#' @param Ms Numeric genes x cells matrix (dense or sparse) of spliced moments, e.g.
#'   `moments()$Ms`; its row names are the gene names.
#' @param latent_time Numeric vector, one value per cell (column of `Ms`), e.g. from
#'   [latent_time()]; cells with `NA` or infinite values are left out.
#' @param genes `NULL` (the top `n_genes` by likelihood), or gene names (row names of `Ms`)
#'   or row numbers: the genes to show.
#' @param n_genes Whole number >= 1 (default 300): how many top genes to take when `genes`
#'   is `NULL`.
#' @param n_convolve `NULL` (no smoothing) or a whole number >= 1 (default 100): the width of
#'   the moving average, in cells.
#' @param sort_genes Logical (default `TRUE`): order the genes by the position of their peak
#'   (upstream's `sort`); `FALSE` keeps the order of `genes`.
#' @param scale Logical (default `TRUE`): scale each gene to \[0, 1\] (a constant gene to 0,
#'   where upstream's 0/0 leaves `NaN`, drawn blank); `FALSE` returns the smoothed `Ms`.
#' @return A numeric genes x cells matrix: genes in drawing order (first row on top), cells by
#'   increasing latent time; row names the genes (or row numbers), column names the cells (if
#'   `Ms` has them). Attributes: `cells` (the column's index among the input cells),
#'   `latent_time` (the sorted times) and `peak` (the column of each gene's maximum).
#'   A gene constant along the cells gives `NaN` when scaled (0 / 0, as seaborn).
#' @seealso [plot_latent_time_heatmap()]
#' @examples
#' sim <- simulate_velocity(n_obs = 150, n_vars = 6)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", threads = 1, progress = FALSE)
#' H <- latent_time_heatmap_data(fit, m$Ms, sim$t, n_convolve = 20)
#' round(H[, 1:5], 3)
#' attr(H, "peak")
#' @export
latent_time_heatmap_data <- function(x, Ms, latent_time, genes = NULL, n_genes = 300,
                                     n_convolve = 100, sort_genes = TRUE, scale = TRUE) {
  if (missing(x)) stopf("'x' is missing (a recover_dynamics() fit, likelihoods, or NULL with 'genes')")
  if (missing(Ms) || is.null(Ms)) stopf("'Ms' (the genes x cells spliced moments) is missing")
  if (missing(latent_time)) stopf("'latent_time' is missing")
  heatmap_check_ms(Ms)
  n_cells <- ncol(Ms)
  genes_ms <- rownames(Ms)
  if (!is.numeric(latent_time) || sum(dim(latent_time) > 1L) > 1L) {
    stopf("'latent_time' must be a numeric vector, one value per cell")
  }
  if (!is.null(names(latent_time)) && !is.null(colnames(Ms)) &&
      !identical(unname(names(latent_time)), colnames(Ms))) {
    stopf("the names of 'latent_time' are not the cells (columns) of 'Ms', in order")
  }
  latent_time <- as.numeric(latent_time)
  if (length(latent_time) != n_cells) {
    stopf("'latent_time' must have one value per cell (column of 'Ms': %d), not %d", n_cells,
          length(latent_time))
  }
  check_number(n_genes, "n_genes", min = 1, whole = TRUE)
  check_number(n_convolve, "n_convolve", min = 1, whole = TRUE, allow_null = TRUE)
  check_flag(sort_genes, "sort_genes")
  check_flag(scale, "scale")

  # the genes: given, or the top n_genes by likelihood (stable: ties keep the row order)
  if (is.null(genes)) {
    if (is.null(x)) stopf("'genes' is NULL, so 'x' must give the likelihoods (a recover_dynamics() fit)")
    lik <- heatmap_likelihoods(x, nrow(Ms), genes_ms)
    fitted <- which(!is.na(lik))
    if (!length(fitted)) stopf("'x' has no gene with a finite fit_likelihood")
    rows <- fitted[order(-lik[fitted], method = "radix")]
    rows <- rows[seq_len(min(length(rows), n_genes))]
  } else {
    if (!is.null(x)) heatmap_likelihoods(x, nrow(Ms), genes_ms) # validated, not used
    rows <- heatmap_gene_rows(genes, nrow(Ms), genes_ms)
  }

  # spec (plots): cells with a finite time, sorted by it (stable)
  fin <- which(is.finite(latent_time))
  if (!length(fin)) stopf("'latent_time' has no finite value")
  cells <- fin[order(latent_time[fin], method = "radix")]
  S <- as_checked_matrix(Ms[rows, cells, drop = FALSE], "Ms") # genes x cells, finite
  S <- t(S) # cells x genes (numpy's DataFrame)
  n <- nrow(S)

  if (!is.null(n_convolve)) {
    M <- as.integer(n_convolve)
    if (M > n) {
      warnf("'n_convolve' (%d) exceeds the number of cells (%d): the genes are not smoothed (as scVelo, which skips them)",
            M, n)
    } else {
      S <- np_convolve_same(S, M)
    }
  }
  peak <- apply(S, 2L, which.max) # np.argmax: the first maximum
  ord <- if (sort_genes) order(peak, method = "radix") else seq_along(rows)
  S <- S[, ord, drop = FALSE]
  peak <- peak[ord]
  if (scale) {
    lo <- apply(S, 2L, min)
    hi <- apply(S, 2L, max)
    S <- sweep(S, 2L, lo, "-")
    rng <- hi - lo
    rng[rng == 0] <- Inf # a constant gene scales to 0 (upstream's 0/0 leaves it NaN, blank)
    S <- sweep(S, 2L, rng, "/")
  }
  out <- t(S)
  rn <- if (is.null(genes_ms)) as.character(rows[ord]) else genes_ms[rows[ord]]
  dimnames(out) <- list(rn, colnames(Ms)[cells])
  names(peak) <- rn
  attr(out, "cells") <- cells
  attr(out, "latent_time") <- latent_time[cells]
  attr(out, "peak") <- peak
  out
}

# ------------------------------------------------------------------ the plot

# Colours for a factor: a palette given by the user (named by level, or in level order), or
# scanpy's default categorical palette (what scVelo uses without uns["<key>_colors"]).
category_colors <- function(levels, palette, arg = "palette") {
  if (is.null(palette)) {
    pal <- if (length(levels) <= 20L) scanpy_default_20 else grDevices::hcl.colors(length(levels), "Dynamic")
    return(stats::setNames(pal[seq_along(levels)], levels))
  }
  if (!is.character(palette) || anyNA(palette)) stopf("'%s' must be a character vector of colours", arg)
  ok <- tryCatch({
    grDevices::col2rgb(palette)
    TRUE
  }, error = function(e) FALSE)
  if (!ok) stopf("'%s' contains invalid colours", arg)
  if (!is.null(names(palette))) {
    miss <- setdiff(levels, names(palette))
    if (length(miss)) {
      stopf("'%s' has no colour for %s", arg, paste(utils::head(miss, 5L), collapse = ", "))
    }
    return(palette[levels])
  }
  if (length(palette) < length(levels)) {
    stopf("'%s' has %d colours for %d groups", arg, length(palette), length(levels))
  }
  stats::setNames(palette[seq_along(levels)], levels)
}

# scanpy's `default_20` palette (matplotlib's tab20 reordered), scVelo's colours for groups.
scanpy_default_20 <- c("#1f77b4", "#ff7f0e", "#279e68", "#d62728", "#aa40fc", "#8c564b",
                       "#e377c2", "#b5bd61", "#17becf", "#aec7e8", "#ffbb78", "#98df8a",
                       "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
                       "#ad494a", "#8c6d31")

#' Heatmap of gene expression along latent time (scVelo's `pl.heatmap`)
#'
#' The ggplot2 version of the heatmap in scVelo's dynamical-model tutorial,
#' `scv.pl.heatmap(adata, var_names = top_genes, sortby = "latent_time",
#' col_color = "clusters", n_convolve = 100)`: one row per gene, one column per cell ordered by
#' latent time, each gene's smoothed and \[0, 1\]-scaled `Ms` coloured with viridis, the genes
#' ordered by where they peak so that the cascade of expression along the trajectory shows
#' as a diagonal. With `color`, a bar above the heatmap shows each cell's group. The matrix
#' is [latent_time_heatmap_data()] (see there for the exact computation).
#'
#' @inheritParams latent_time_heatmap_data
#' @param color `NULL` or one value per cell (a factor or character vector, e.g. clusters):
#'   drawn as a colour bar above the heatmap (upstream's `col_color`).
#' @param palette `NULL` (scanpy's default colours) or colours for the groups of `color`,
#'   named by group or in the order of its levels (e.g. the dataset's `clusters_colors`).
#' @param color_map Name of a viridisLite palette (default `"viridis"`; also `"magma"`,
#'   `"inferno"`, `"plasma"`, `"cividis"`, ...).
#' @param show_genes `NULL` (gene names when they fit: all of up to 60 genes, else every
#'   k-th name), `TRUE` (every name) or `FALSE` (none).
#' @param ... Passed to methods; the default method accepts no further arguments.
#' @return A `ggplot` object; its `data` holds the matrix in long format (`cell`: column,
#'   `gene`: row counted from the bottom, `value`).
#' @seealso [latent_time_heatmap_data()], [latent_time()]
#' @examples
#' if (requireNamespace("ggplot2", quietly = TRUE)) {
#'   sim <- simulate_velocity(n_obs = 150, n_vars = 6)
#'   m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
#'   fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", threads = 1, progress = FALSE)
#'   grp <- cut(sim$t, 3, labels = c("early", "mid", "late"))
#'   plot_latent_time_heatmap(fit, m$Ms, sim$t, n_convolve = 20, color = grp)
#' }
#' @export
plot_latent_time_heatmap <- function(x, ...) UseMethod("plot_latent_time_heatmap")

#' @rdname plot_latent_time_heatmap
#' @export
plot_latent_time_heatmap.default <- function(x, Ms, latent_time, genes = NULL, n_genes = 300,
                                             n_convolve = 100, color = NULL, palette = NULL,
                                             color_map = "viridis", show_genes = NULL, ...) {
  need_ggplot()
  stop_dots(...)
  if (missing(Ms) || is.null(Ms)) stopf("'Ms' (the genes x cells spliced moments) is missing")
  if (missing(latent_time)) stopf("'latent_time' is missing")
  heatmap_check_ms(Ms)
  check_string(color_map, "color_map")
  cmaps <- c("viridis", "magma", "inferno", "plasma", "cividis", "rocket", "mako", "turbo")
  color_map <- check_choice(color_map, cmaps, "color_map")
  if (!is.null(show_genes)) check_flag(show_genes, "show_genes")
  if (!is.null(color)) {
    if (!is.null(dim(color)) || !(is.factor(color) || is.character(color) || is.logical(color) ||
                                  is.numeric(color))) {
      stopf("'color' must be NULL or a vector with one value per cell")
    }
    if (length(color) != ncol(Ms)) {
      stopf("'color' must have one value per cell (column of 'Ms': %d), not %d", ncol(Ms),
            length(color))
    }
  }
  H <- latent_time_heatmap_data(x, Ms, latent_time, genes = genes, n_genes = n_genes,
                                n_convolve = n_convolve)
  ng <- nrow(H)
  nc <- ncol(H)
  long <- data.frame(cell = rep(seq_len(nc), each = ng), gene = rep(seq.int(ng, 1L), nc),
                     value = as.vector(H))

  p <- ggplot2::ggplot(long, ggplot2::aes(.data$cell, .data$gene, fill = .data$value)) +
    ggplot2::geom_raster() +
    ggplot2::scale_fill_viridis_c(option = color_map, limits = c(0, 1), breaks = c(0, 0.5, 1),
                                  na.value = "grey80", name = "scaled\nMs")

  # gene names (on the right, as seaborn's clustermap): all when few, else every k-th
  show <- show_genes %||% TRUE
  step <- if (isTRUE(show_genes) || ng <= 60L) 1L else ceiling(ng / 50)
  gb <- if (show) seq.int(1L, ng, by = step) else integer()
  ybreaks <- ng + 1L - gb
  ylabels <- rownames(H)[gb]
  top <- ng + 0.5
  ylim_hi <- top
  if (!is.null(color)) {
    # the group bar: one rectangle per run of equal groups along the cell order
    grp <- factor(color)
    cols <- category_colors(levels(grp), palette)
    g <- grp[attr(H, "cells")]
    r <- rle(as.integer(g))
    ends <- cumsum(r$lengths)
    starts <- ends - r$lengths + 1L
    gap <- max(0.6, 0.01 * ng)
    h <- max(1.5, 0.05 * ng)
    ok <- !is.na(r$values)
    p <- p + ggplot2::annotate("rect", xmin = starts[ok] - 0.5, xmax = ends[ok] + 0.5,
                               ymin = top + gap, ymax = top + gap + h,
                               fill = unname(cols[r$values[ok]]), colour = NA)
    # legend for the groups: invisible points carrying the colour scale
    key <- data.frame(cell = 1, gene = 1, group = factor(levels(grp), levels(grp)))
    p <- p + ggplot2::geom_point(ggplot2::aes(.data$cell, .data$gene, colour = .data$group),
                                 data = key, inherit.aes = FALSE, alpha = 0) +
      ggplot2::scale_colour_manual(values = cols, name = NULL, drop = FALSE) +
      ggplot2::guides(colour = ggplot2::guide_legend(
        override.aes = list(alpha = 1, shape = 15, size = 4), order = 1))
    ylim_hi <- top + gap + h
  }
  # x axis: a few latent times at the cells where they are first reached
  lt <- attr(H, "latent_time")
  tb <- pretty(range(lt), n = 4)
  tb <- tb[tb >= min(lt) & tb <= max(lt)]
  xb <- vapply(tb, function(v) which(lt >= v - 1e-12 * max(1, abs(v)))[1L], 1L)
  keep <- logical(length(xb)) # labels at least 8% of the width apart
  last <- -Inf
  for (b in seq_along(xb)) {
    if (xb[b] - last >= 0.08 * nc) {
      keep[b] <- TRUE
      last <- xb[b]
    }
  }
  p + ggplot2::scale_x_continuous(breaks = xb[keep], labels = format(tb[keep]),
                                  expand = c(0, 0)) +
    ggplot2::scale_y_continuous(breaks = ybreaks, labels = ylabels, position = "right",
                                expand = c(0, 0), limits = c(0.5, ylim_hi)) +
    ggplot2::labs(x = "latent time", y = NULL) +
    ggplot2::theme_minimal(base_size = 11) +
    ggplot2::theme(panel.grid = ggplot2::element_blank(),
                   axis.text.y.right = ggplot2::element_text(size = if (step == 1L && ng > 30L) 5 else 7),
                   axis.ticks.x = ggplot2::element_line(colour = "grey40"),
                   axis.ticks.length.x = grid::unit(2, "pt"),
                   legend.position = "left",
                   legend.key.height = grid::unit(if (is.null(color)) 14 else 10, "pt"))
}
