# Spatial helpers around cell2location (issue 4): a ground-truth simulator of spatial
# transcriptomics spots, per-cell-type reference signatures, a spatial abundance plot, the
# bundled hippocampus data and the accuracy metrics the tests use.
#
# The simulator follows the design of the cell2location paper's synthetic benchmark
# (spec/cell2location.md section 8): tissue zones drawn as smooth random fields on a grid of
# spots, cell types assigned to zones, cell counts per spot, spot expression summed from
# single-cell profiles, gene-level detection noise and Poisson counts. Everything is plain R
# (GEMMs and vectorised draws); no C is needed even at Visium size.

# ---- small internal helpers ----------------------------------------------------------------

# Runs `expr` with R's RNG seeded by `seed` (when not NULL) and restores the caller's RNG state
# afterwards, so `seed =` gives reproducible draws without touching the user's stream.
with_local_seed <- function(seed, expr) {
  if (is.null(seed)) return(expr)
  genv <- globalenv()
  had <- exists(".Random.seed", envir = genv, inherits = FALSE)
  old <- if (had) get(".Random.seed", envir = genv, inherits = FALSE) else NULL
  on.exit({
    if (had) {
      assign(".Random.seed", old, envir = genv)
    } else if (exists(".Random.seed", envir = genv, inherits = FALSE)) {
      rm(".Random.seed", envir = genv)
    }
  }, add = TRUE)
  set.seed(seed)
  expr
}

# A square root L of a symmetric positive semi-definite matrix (L %*% t(L) == K). The
# squared-exponential kernel is numerically rank-deficient for wide bandwidths, so an
# eigen-decomposition with clamped eigenvalues is used instead of a Cholesky factor.
psd_sqrt <- function(K) {
  e <- eigen(K, symmetric = TRUE)
  sweep(e$vectors, 2L, sqrt(pmax(e$values, 0)), `*`)
}

# One smooth random field on an nx x ny grid whose axes run over [0, 100] (as in the paper's
# simulator): covariance 2 * k_x (x) k_y with k(d) = eta^2 exp(-d^2 / (2 l^2)) per axis. The
# 2-D kernel is separable on a grid, so a draw is Lx Z Ly^T with Z standard normal: exact and
# O(nx ny (nx + ny)) instead of a Cholesky of the full (nx ny) x (nx ny) covariance.
grid_field <- function(nx, ny, bandwidth, eta) {
  axis_sqrt <- function(n) {
    p <- if (n > 1L) seq(0, 100, length.out = n) else 0
    K <- eta^2 * exp(-0.5 * outer(p, p, "-")^2 / bandwidth^2)
    psd_sqrt(K)
  }
  Lx <- axis_sqrt(nx)
  Ly <- axis_sqrt(ny)
  Z <- matrix(stats::rnorm(nx * ny), nx, ny)
  sqrt(2) * (Lx %*% Z %*% t(Ly))
}

# Zone abundances (spots x zones) for one group of zones: a field per zone, softmax across the
# group's zones at every spot, each zone divided by its maximum, values below 0.1 set to 0.
zone_group <- function(nx, ny, n_spots, bandwidths, eta) {
  nz <- length(bandwidths)
  if (nz == 0L) return(matrix(0, n_spots, 0L))
  f <- vapply(seq_len(nz), function(z) {
    as.vector(grid_field(nx, ny, bandwidths[z], eta))[seq_len(n_spots)]
  }, numeric(n_spots))
  f <- matrix(f, n_spots, nz)
  f <- exp(f - apply(f, 1L, max))
  p <- f / rowSums(f)
  p <- sweep(p, 2L, apply(p, 2L, max), `/`)
  p[p < 0.1] <- 0
  p
}

# Any matrix or Matrix as a general double CSC matrix (dgCMatrix).
as_dgc <- function(m) {
  if (!methods::is(m, "Matrix")) m <- Matrix::Matrix(m, sparse = TRUE)
  m <- methods::as(methods::as(m, "generalMatrix"), "CsparseMatrix")
  if (!methods::is(m, "dMatrix")) m <- methods::as(m, "dMatrix")
  m
}

# Checks a genes x something numeric input and returns it unchanged (sparse kept sparse).
check_expression <- function(x, arg, integer_valued = FALSE) {
  as_checked_matrix(x, arg, nonneg = TRUE, integer_valued = integer_valued, dense = FALSE)
  if (is.data.frame(x)) x <- as.matrix(x)
  if (nrow(x) < 1L || ncol(x) < 1L) stopf("'%s' must have at least one row and one column", arg)
  x
}

# Synthetic signatures (genes x types, expected counts per cell): a gene-level base expression
# (log-normal) times a cell-type factor Gamma(0.5, 0.5) (mean 1, CV^2 2), so that each type has
# its own markers; columns scaled so that the mean total per cell is `umi_per_cell`.
synthetic_signatures <- function(n_genes, n_types, umi_per_cell) {
  base <- stats::rlnorm(n_genes, 0, 1)
  fac <- matrix(stats::rgamma(n_genes * n_types, shape = 0.5, rate = 0.5), n_genes, n_types)
  sig <- base * fac
  sig <- sig * (umi_per_cell / mean(colSums(sig)))
  dimnames(sig) <- list(sprintf("gene_%d", seq_len(n_genes)), sprintf("type_%d", seq_len(n_types)))
  sig
}

# ---- simulator -------------------------------------------------------------------------------

#' Simulate spatial transcriptomics spots with known cell abundances
#'
#' Generates a ground-truth data set for spatial mapping (cell2location, [cell2location()]) the
#' way the cell2location paper built its synthetic benchmark (spec section 8):
#'
#' 1. **Zones.** `n_regional_zones` regional and `n_uniform_zones` uniform tissue zones. The
#'    spots lie on a 2-D grid (about `sqrt(n_spots)` per side, both axes spanning 0 to 100).
#'    Each zone gets a smooth Gaussian-process field with a squared-exponential kernel
#'    (bandwidth ~ Gamma(shape = 5 `bandwidth`, rate 5), amplitude `eta`, covariance
#'    `2 k_x k_y` as in the paper's code); within the regional and within the uniform group a
#'    softmax across zones gives each spot's share, each zone is divided by its maximum and
#'    values below 0.1 are set to 0.
#' 2. **Cell types per zone.** `n_uniform_zones` cell types are uniform (one per uniform zone);
#'    every other ("sparse") type lives in 1 + Binomial(`n_regional_zones` - 1, 0.02) regional
#'    zones (its first zone is dealt round-robin over a random order of the types so that every
#'    regional zone has a type when there are enough types). In every zone about
#'    `p_high_density` of its types are high density. Each type's mean abundance is drawn as
#'    Gamma(shape = 5 mu, rate 5) with mu = `mu_high` or `mu_low` cells per spot.
#' 3. **Abundance.** cell abundance (spots x types) = zone abundance x `cell_types2zones`^T,
#'    times LogNormal(0, `abundance_sd`) noise; the number of cells is its ceiling and each cell
#'    contributes with capture efficiency abundance / count.
#' 4. **Expression.** With a reference (`x` = genes x cells counts, `labels` given), the cells
#'    of each type are split (stratified, fraction `split` kept for mapping) into a generation
#'    half and a mapping half; each spot sums `count` randomly drawn generation cells of each
#'    type, weighted by the capture efficiency; the returned `signatures` are the per-type
#'    means ([cluster_averages()]) of the mapping half, so the model never sees the cells that
#'    made the spots. With a signature matrix (`x` = genes x types, `labels = NULL`, or `x =
#'    NULL` for synthetic Gamma-distributed signatures of `n_genes` x `n_cell_types`) each cell
#'    of type f expresses gene g at rate `x[g, f]` x Gamma(1/`cell_cv2`, 1/`cell_cv2`); the sum
#'    over a spot's cells is drawn from the moment-matched Gamma distribution (exact mean and
#'    variance), and the returned `signatures` are the generating ones.
#' 5. **Detection and counts.** A gene-level detection rate m_g ~ Gamma(shape 0.4586,
#'    scale 1/0.6992) / 2 multiplies the spot expression (when `gene_detection = TRUE`), then
#'    counts ~ Poisson.
#'
#' Draws use R's RNG, so `set.seed()` (or `seed =`, which leaves the caller's RNG state
#' untouched) makes a simulation reproducible. Visium-sized data (4,000 spots x 10,000 genes x
#' 34 types) take a few seconds; the spot-by-gene work is done in blocks of spots.
#'
#' @param x `NULL` (synthetic signatures), a genes x cell types signature matrix (numeric
#'   matrix, data.frame or dgCMatrix, non-negative, expected counts per cell), or with `labels`
#'   a genes x cells reference count matrix (integer-valued, non-negative). Row names (genes)
#'   and, for signatures, column names (types) are kept when present.
#' @param labels `NULL`, or the cell types of the reference cells: a character vector or factor
#'   of length `ncol(x)` without `NA`; every type needs at least 2 cells.
#' @param n_spots number of spots, a whole number >= 4.
#' @param n_genes,n_cell_types size of the synthetic signature matrix when `x = NULL`
#'   (whole numbers, `n_genes` >= 2, `n_cell_types` >= 2).
#' @param n_regional_zones,n_uniform_zones numbers of zones (whole numbers >= 1 and >= 0).
#'   `NULL` scales the paper's design (12 regional + 8 uniform zones for 49 types): uniform =
#'   round(8/49 of the types), at least 1 and fewer than the types; regional = one per ~3.4
#'   sparse types, at least 1.
#' @param p_high_density fraction of high-density types per zone, in \[0, 1\].
#' @param mu_low,mu_high mean cells per spot of low- and high-density types (> 0).
#' @param abundance_sd standard deviation of the log-normal abundance noise (>= 0).
#' @param bandwidth mean GP bandwidth, in units of the 0-100 grid (> 0; paper: 10).
#' @param eta GP amplitudes of regional and uniform zones, a length-2 positive numeric
#'   (paper: 1.5 and 0.3).
#' @param gene_detection `TRUE` to multiply by the gene-level detection rate m_g.
#' @param cell_cv2 squared coefficient of variation of one cell's expression around its type's
#'   signature (signature mode only; >= 0, 0 = no cell-to-cell variation).
#' @param umi_per_cell mean total expected counts per cell of synthetic signatures (> 0).
#' @param split fraction of each type's reference cells kept for the mapping signatures
#'   (reference mode; in (0, 1)).
#' @param sparse `TRUE` to return `counts` as a dgCMatrix, `FALSE` for a dense integer matrix.
#' @param seed `NULL` (use the current RNG state) or a whole number for [set.seed()].
#' @return A list:
#'   * `counts`: genes x spots counts (dgCMatrix of whole numbers, or an integer matrix);
#'   * `abundance`: spots x cell types true cell abundance (non-negative, continuous);
#'   * `cell_count`: spots x cell types integer number of cells (`ceiling(abundance)`);
#'   * `coords`: data.frame with columns `x`, `y` (grid positions), row names = spots;
#'   * `signatures`: genes x cell types signatures for mapping (see above);
#'   * `zones`: list with `abundance` (spots x zones), `cell_types2zones` (types x zones, the
#'     mean abundance of each type in each zone), `kind` ("regional"/"uniform" per zone),
#'     `uniform_types`, `high_density_types`, `bandwidth` (per zone);
#'   * `gene_level`: the detection rate per gene (1 when `gene_detection = FALSE`);
#'   * `settings`: the arguments used.
#' @seealso [cluster_averages()], [plot_spatial_abundance()], [cell2location()].
#' @examples
#' sim <- simulate_spatial(n_spots = 100, n_genes = 50, n_cell_types = 6, seed = 1)
#' dim(sim$counts)
#' head(sim$abundance)
#' # from a labelled reference
#' hip <- example_hippocampus()
#' sim2 <- simulate_spatial(hip$reference$counts, hip$reference$cell_types, n_spots = 64,
#'                          seed = 2)
#' dim(sim2$signatures)
#' @export
simulate_spatial <- function(x = NULL, labels = NULL, n_spots = 2500, n_genes = 2000,
                             n_cell_types = 20, n_regional_zones = NULL, n_uniform_zones = NULL,
                             p_high_density = 0.2, mu_low = 1.5, mu_high = 3.2,
                             abundance_sd = 0.35, bandwidth = 10, eta = c(1.5, 0.3),
                             gene_detection = TRUE, cell_cv2 = 0.5, umi_per_cell = 3000,
                             split = 0.5, sparse = TRUE, seed = NULL) {
  check_number(n_spots, "n_spots", min = 4, whole = TRUE)
  check_number(p_high_density, "p_high_density", min = 0, max = 1)
  check_number(mu_low, "mu_low", min = 0, min_open = TRUE)
  check_number(mu_high, "mu_high", min = 0, min_open = TRUE)
  check_number(abundance_sd, "abundance_sd", min = 0)
  check_number(bandwidth, "bandwidth", min = 0, min_open = TRUE)
  if (!is.numeric(eta) || length(eta) != 2L || anyNA(eta) || any(!is.finite(eta)) ||
      any(eta <= 0)) {
    stopf("'eta' must be two positive numbers (regional, uniform)")
  }
  check_flag(gene_detection, "gene_detection")
  check_number(cell_cv2, "cell_cv2", min = 0)
  check_number(umi_per_cell, "umi_per_cell", min = 0, min_open = TRUE)
  check_number(split, "split", min = 0, max = 1, min_open = TRUE)
  if (split >= 1) stopf("'split' must be less than 1, not %s", format(split))
  check_flag(sparse, "sparse")
  if (!is.null(seed)) check_number(seed, "seed", min = 0, max = .Machine$integer.max, whole = TRUE)

  mode <- if (is.null(x)) "synthetic" else if (is.null(labels)) "signatures" else "reference"
  # checked in every mode (only the synthetic mode uses them), so that a bad value is never
  # silently ignored
  check_number(n_genes, "n_genes", min = 2, whole = TRUE)
  check_number(n_cell_types, "n_cell_types", min = 2, whole = TRUE)
  if (mode == "signatures") {
    x <- check_expression(x, "x")
    if (ncol(x) < 2L) stopf("'x' (signatures) must have at least 2 cell types (columns)")
    x <- as.matrix(x)
    storage.mode(x) <- "double"
    if (any(colSums(x) <= 0)) stopf("'x' (signatures) has a cell type (column) of zeros")
    if (is.null(rownames(x))) rownames(x) <- sprintf("gene_%d", seq_len(nrow(x)))
    if (is.null(colnames(x))) colnames(x) <- sprintf("type_%d", seq_len(ncol(x)))
    if (anyDuplicated(colnames(x))) stopf("'x' (signatures) has duplicated cell type names")
  } else if (mode == "reference") {
    x <- check_expression(x, "x", integer_valued = TRUE)
    check_factor(labels, "labels")
    if (!is.atomic(labels) || !is.null(dim(labels)) || length(labels) != ncol(x) ||
        anyNA(labels)) {
      stopf("'labels' must be a vector of %d cell types (one per column of 'x') without NA",
            ncol(x))
    }
    labels <- as.character(labels)
    tab <- table(labels)
    if (length(tab) < 2L) stopf("'labels' must name at least 2 cell types")
    if (any(tab < 2L)) {
      stopf("every cell type needs at least 2 reference cells to split; too few: %s",
            paste(names(tab)[tab < 2L], collapse = ", "))
    }
    x <- as_dgc(x)
    if (is.null(rownames(x))) rownames(x) <- sprintf("gene_%d", seq_len(nrow(x)))
  }
  settings <- list(mode = mode, n_spots = n_spots, p_high_density = p_high_density,
                   mu_low = mu_low, mu_high = mu_high, abundance_sd = abundance_sd,
                   bandwidth = bandwidth, eta = eta, gene_detection = gene_detection,
                   cell_cv2 = cell_cv2, split = split, seed = seed)
  with_local_seed(seed, sim_spatial_run(x, labels, mode, n_spots, n_genes, n_cell_types,
                                        n_regional_zones, n_uniform_zones, umi_per_cell,
                                        sparse, settings))
}

sim_spatial_run <- function(x, labels, mode, n_spots, n_genes, n_cell_types, n_regional_zones,
                            n_uniform_zones, umi_per_cell, sparse, settings) {
  st <- settings
  # -- cell types and the data that will produce expression
  if (mode == "synthetic") {
    x <- synthetic_signatures(n_genes, n_cell_types, umi_per_cell)
    settings$umi_per_cell <- umi_per_cell
  }
  if (mode == "reference") {
    types <- sort(unique(labels), method = "radix")
    gen <- logical(length(labels))
    for (ty in types) {
      idx <- which(labels == ty)
      n_map <- min(length(idx) - 1L, max(1L, floor(length(idx) * st$split)))
      pick <- idx[sample.int(length(idx))]
      gen[pick[-seq_len(n_map)]] <- TRUE
    }
    signatures <- cluster_averages(x[, !gen, drop = FALSE], labels[!gen])
    gen_x <- x[, gen, drop = FALSE]
    gen_labels <- labels[gen]
  } else {
    types <- colnames(x)
    signatures <- x
  }
  n_types <- length(types)
  genes <- rownames(x)

  # -- zones
  n_uniform <- n_uniform_zones %||% min(n_types - 1L, max(1L, round(n_types * 8 / 49)))
  check_number(n_uniform, "n_uniform_zones", min = 0, max = n_types - 1, whole = TRUE)
  n_sparse <- n_types - n_uniform
  n_regional <- n_regional_zones %||% max(1L, round(n_sparse / 3.4))
  check_number(n_regional, "n_regional_zones", min = 1, whole = TRUE)
  n_zones <- n_regional + n_uniform
  zone_names <- c(sprintf("regional_%d", seq_len(n_regional)),
                  if (n_uniform) sprintf("uniform_%d", seq_len(n_uniform)))

  uniform_types <- if (n_uniform) types[sort(sample.int(n_types, n_uniform))] else character(0)
  sparse_types <- setdiff(types, uniform_types)
  member <- matrix(0, n_types, n_zones, dimnames = list(types, zone_names))
  order_sparse <- sparse_types[sample.int(length(sparse_types))]
  for (i in seq_along(order_sparse)) {
    first <- ((i - 1L) %% n_regional) + 1L
    n_extra <- min(stats::rbinom(1L, n_regional - 1L, 0.02), n_regional - 1L)
    others <- setdiff(seq_len(n_regional), first)
    extra <- if (n_extra > 0L) others[sample.int(length(others), n_extra)] else integer(0)
    member[order_sparse[i], c(first, extra)] <- 1
  }
  for (i in seq_len(n_uniform)) member[uniform_types[i], n_regional + i] <- 1

  high <- character(0)
  if (n_uniform) {
    k <- round(n_uniform * st$p_high_density)
    if (k > 0) high <- uniform_types[sample.int(n_uniform, k)]
  }
  for (z in seq_len(n_regional)) {
    in_zone <- types[member[, z] > 0]
    k <- round(length(in_zone) * st$p_high_density)
    if (k > 0) high <- c(high, in_zone[sample.int(length(in_zone), k)])
  }
  high <- unique(high)
  is_high <- types %in% high
  mu <- ifelse(is_high, st$mu_high, st$mu_low)
  type_mean <- stats::rgamma(n_types, shape = mu * 5, rate = 5)
  ct2z <- member * type_mean

  # -- zone abundance over a grid of spots
  nx <- ceiling(sqrt(n_spots))
  ny <- ceiling(n_spots / nx)
  bw <- stats::rgamma(n_zones, shape = st$bandwidth * 5, rate = 5)
  zab <- cbind(zone_group(nx, ny, n_spots, bw[seq_len(n_regional)], st$eta[1L]),
               zone_group(nx, ny, n_spots, bw[n_regional + seq_len(n_uniform)], st$eta[2L]))
  spots <- sprintf("spot_%d", seq_len(n_spots))
  dimnames(zab) <- list(spots, zone_names)
  coords <- data.frame(x = (seq_len(n_spots) - 1L) %% nx, y = (seq_len(n_spots) - 1L) %/% nx,
                       row.names = spots)

  # -- cell abundance, cell counts, capture efficiency
  ab <- zab %*% t(ct2z)
  ab <- ab * matrix(stats::rlnorm(length(ab), 0, st$abundance_sd), nrow(ab), ncol(ab))
  dimnames(ab) <- list(spots, types)
  count <- ceiling(ab)
  storage.mode(count) <- "integer"
  eff <- ifelse(count > 0L, ab / pmax(count, 1L), 0)

  # -- expression (genes x spots) before detection
  if (mode == "reference") {
    expr <- sim_from_reference(gen_x, gen_labels, types, count, eff)
  } else {
    expr <- NULL # drawn blockwise below
  }

  # -- detection and counts, in blocks of spots to bound memory
  G <- length(genes)
  m_g <- if (st$gene_detection) stats::rgamma(G, shape = 0.4586, scale = 1 / 0.6992) / 2 else rep(1, G)
  block <- max(1L, floor(4e6 / G))
  starts <- seq(1L, n_spots, by = block)
  pieces <- vector("list", length(starts))
  if (mode != "reference") {
    k_cell <- if (st$cell_cv2 > 0) 1 / st$cell_cv2 else Inf
    sig2 <- x^2
  }
  for (b in seq_along(starts)) {
    cols <- starts[b]:min(n_spots, starts[b] + block - 1L)
    if (mode == "reference") {
      lam <- as.matrix(expr[, cols, drop = FALSE])
    } else {
      abb <- ab[cols, , drop = FALSE]
      lam <- x %*% t(abb)
      if (is.finite(k_cell)) {
        # sum over cells of sig * Gamma(k, k): mean sig * ab, variance sig^2 ab^2 / (k count)
        v <- sig2 %*% t(abb^2 / (k_cell * pmax(count[cols, , drop = FALSE], 1L)))
        pos <- v > 0 & lam > 0
        lam[pos] <- stats::rgamma(sum(pos), shape = lam[pos]^2 / v[pos], rate = lam[pos] / v[pos])
      }
    }
    lam <- lam * m_g
    cnt <- matrix(stats::rpois(length(lam), lam), nrow(lam), ncol(lam))
    pieces[[b]] <- if (sparse) as_dgc(cnt) else cnt
  }
  counts <- do.call(cbind, pieces)
  if (sparse) counts <- as_dgc(counts)
  dimnames(counts) <- list(genes, spots)

  list(
    counts = counts, abundance = ab, cell_count = count, coords = coords,
    signatures = signatures,
    zones = list(abundance = zab, cell_types2zones = ct2z,
                 kind = c(rep("regional", n_regional), rep("uniform", n_uniform)),
                 uniform_types = uniform_types, high_density_types = types[is_high],
                 bandwidth = stats::setNames(bw, zone_names)),
    gene_level = stats::setNames(m_g, genes),
    settings = c(settings, list(n_regional_zones = n_regional, n_uniform_zones = n_uniform))
  )
}

# Spot expression from sampled generation cells: for spot s and type f, `count[s, f]` cells of
# type f drawn without replacement (with replacement when the type has fewer cells), each
# weighted by the capture efficiency; summed as one sparse product reference x design.
sim_from_reference <- function(gen_x, gen_labels, types, count, eff) {
  ii <- list()
  jj <- list()
  ww <- list()
  for (f in seq_along(types)) {
    pool <- which(gen_labels == types[f])
    sp <- which(count[, f] > 0L)
    if (!length(sp)) next
    n <- count[sp, f]
    cells <- unlist(lapply(n, function(k) {
      if (length(pool) == 1L) return(rep(pool, k))
      pool[sample.int(length(pool), k, replace = k > length(pool))]
    }), use.names = FALSE)
    ii[[f]] <- cells
    jj[[f]] <- rep(sp, n)
    ww[[f]] <- rep(eff[sp, f], n)
  }
  D <- Matrix::sparseMatrix(i = unlist(ii), j = unlist(jj), x = unlist(ww),
                            dims = c(ncol(gen_x), nrow(count)))
  gen_x %*% D
}

# ---- reference signatures --------------------------------------------------------------------

#' Average expression of each gene in each cell type
#'
#' Per-cell-type mean expression of a reference, genes x cell types: the same quantity as
#' cell2location's `compute_cluster_averages()` (mean of the counts over the cells of each
#' label), which can serve as the `signatures` of [cell2location()] (the quick alternative to
#' upstream's regression model) and as the generating signatures of [simulate_spatial()].
#'
#' @param x a genes x cells matrix (numeric matrix, data.frame or dgCMatrix, finite), or a
#'   Seurat object / SingleCellExperiment.
#' @param labels the cell type of every cell: a vector or factor of length `ncol(x)` without
#'   `NA`, or, for an object, the name of a cell metadata column (Seurat `meta.data`, SCE
#'   `colData`).
#' @param assay,layer for a Seurat object: the assay (default: the default assay) and the
#'   layer / slot (default `"counts"`). For a SingleCellExperiment, `layer` names the assay
#'   (default `"counts"`).
#' @return A numeric matrix, genes x cell types. Columns are ordered as upstream orders them
#'   (sorted label values, C locale) for character labels and as the levels (those present) for
#'   a factor.
#' @examples
#' x <- matrix(rpois(5 * 6, 3), 5, 6, dimnames = list(paste0("g", 1:5), NULL))
#' cluster_averages(x, c("a", "a", "b", "b", "b", "c"))
#' hip <- example_hippocampus()
#' sig <- cluster_averages(hip$reference$counts, hip$reference$cell_types)
#' dim(sig)
#' @export
cluster_averages <- function(x, labels, assay = NULL, layer = "counts") {
  if (is_seurat(x) || is_sce(x)) {
    obj_check(x)
    check_string(layer, "layer")
    if (is.character(labels) && length(labels) == 1L && ncol(x) != 1L) {
      meta <- obj_cell_meta(x)
      if (!labels %in% names(meta)) {
        stopf("'labels' = \"%s\" is not a cell metadata column (have: %s)", labels,
              paste(names(meta), collapse = ", "))
      }
      labels <- meta[[labels]]
    }
    x <- obj_matrix(x, layer, assay = assay, arg = "layer")
  }
  x <- check_expression_any(x, "x")
  check_factor(labels, "labels")
  if (!(is.atomic(labels) || is.factor(labels)) || is.null(labels) || !is.null(dim(labels)) ||
      length(labels) != ncol(x) || anyNA(labels)) {
    stopf("'labels' must be a vector of %d labels (one per column of 'x') without NA", ncol(x))
  }
  lev <- if (is.factor(labels)) {
    levels(droplevels(labels))
  } else {
    sort(unique(as.character(labels)), method = "radix")
  }
  f <- factor(as.character(labels), levels = lev)
  n <- tabulate(f, nbins = length(lev))
  ind <- Matrix::sparseMatrix(i = seq_along(f), j = as.integer(f), x = 1 / n[as.integer(f)],
                              dims = c(length(f), length(lev)))
  out <- as.matrix(x %*% ind)
  dimnames(out) <- list(rownames(x), lev)
  out
}

# A finite numeric matrix (dense or Matrix); negative values allowed (normalised data).
check_expression_any <- function(x, arg) {
  as_checked_matrix(x, arg, dense = FALSE)
  if (is.data.frame(x)) x <- as.matrix(x)
  if (ncol(x) < 1L || nrow(x) < 1L) stopf("'%s' must have at least one row and one column", arg)
  if (is.matrix(x)) storage.mode(x) <- "double"
  x
}

# ---- spatial plot ------------------------------------------------------------------------------

# `.data` is ggplot2's (rlang's) data-mask pronoun inside aes().
utils::globalVariables(".data")

#' Plot cell abundances in space
#'
#' One panel per cell type: spots at their coordinates coloured by the estimated (or true)
#' abundance, like cell2location's spatial plots.
#'
#' @param x abundances, spots x cell types: a numeric matrix or data.frame (row names = spots),
#'   a `scnative_c2l` fit or a posterior from [export_posterior()] (the summary `which` is
#'   taken with [cell_abundance()]).
#' @param coords spot coordinates: a data.frame (or matrix) with columns `x` and `y` (row names
#'   matching the spots, or one row per spot in order), or a Seurat object with an image
#'   (coordinates from `GetTissueCoordinates()`) or a SingleCellExperiment with colData `x`/`y`.
#' @param cell_types `NULL` (all) or a character vector of cell types (columns) to show.
#' @param ncol number of panel columns (`NULL` lets ggplot2 choose).
#' @param point_size point size (> 0).
#' @param which summary taken from a fit or posterior (`"means"`, `"q05"`, ...).
#' @param scale `"shared"` for one colour scale over all panels, `"per_type"` to divide each
#'   cell type by its maximum (relative abundance per panel).
#' @param ... passed to [cell_abundance()] (e.g. `num_samples`) when `x` is a fit.
#' @return A ggplot object.
#' @examples
#' sim <- simulate_spatial(n_spots = 100, n_genes = 30, n_cell_types = 4, seed = 1)
#' if (requireNamespace("ggplot2", quietly = TRUE)) {
#'   p <- plot_spatial_abundance(sim$abundance, sim$coords, ncol = 2)
#' }
#' @export
plot_spatial_abundance <- function(x, coords, cell_types = NULL, ncol = NULL, point_size = 1,
                                   which = "means", scale = c("shared", "per_type"), ...) {
  need_pkg("ggplot2", "for plots")
  scale <- match.arg(scale)
  check_number(point_size, "point_size", min = 0, min_open = TRUE)
  if (!is.null(ncol)) check_number(ncol, "ncol", min = 1, whole = TRUE)
  if (inherits(x, c("scnative_c2l", "scnative_c2l_posterior"))) {
    x <- cell_abundance(x, which = which, ...)
  }
  if (is.data.frame(x)) x <- as.matrix(x)
  if (!is.matrix(x) || !is.numeric(x)) {
    stopf("'x' must be a numeric matrix of abundances (spots x cell types), a scnative_c2l fit or a posterior, not %s",
          class(x)[1L])
  }
  if (anyNA(x)) stopf("'x' contains NA values")
  if (any(is.infinite(x))) stopf("'x' contains infinite values")
  if (!nrow(x) || !ncol(x)) stopf("'x' must have at least one spot and one cell type")
  if (!is.null(colnames(x)) && (anyNA(colnames(x)) || anyDuplicated(colnames(x)))) {
    stopf("'x' has NA or duplicated cell type (column) names")
  }
  if (is.null(colnames(x))) colnames(x) <- sprintf("type_%d", seq_len(ncol(x)))
  if (!is.null(cell_types)) {
    if (!is.character(cell_types) || !length(cell_types) || anyNA(cell_types)) {
      stopf("'cell_types' must be a character vector of cell types")
    }
    miss <- setdiff(cell_types, colnames(x))
    if (length(miss)) stopf("'cell_types' not found in the abundances: %s", paste(miss, collapse = ", "))
    x <- x[, cell_types, drop = FALSE]
  }
  xy <- spatial_coords(coords, x)
  if (scale == "per_type") {
    mx <- apply(x, 2L, max)
    x <- sweep(x, 2L, ifelse(mx > 0, mx, 1), `/`)
  }
  df <- data.frame(x = rep(xy$x, ncol(x)), y = rep(xy$y, ncol(x)),
                   cell_type = factor(rep(colnames(x), each = nrow(x)), levels = colnames(x)),
                   abundance = as.vector(x))
  ggplot2::ggplot(df, ggplot2::aes(x = .data$x, y = .data$y, colour = .data$abundance)) +
    ggplot2::geom_point(size = point_size) +
    ggplot2::facet_wrap(~cell_type, ncol = ncol) +
    ggplot2::coord_fixed() +
    ggplot2::scale_colour_viridis_c(name = if (scale == "per_type") "relative\nabundance" else "abundance") +
    ggplot2::theme_minimal() +
    ggplot2::theme(axis.title = ggplot2::element_blank(), axis.text = ggplot2::element_blank(),
                   panel.grid = ggplot2::element_blank())
}

# Coordinates (data.frame x, y) aligned with the rows of the abundance matrix `ab`.
spatial_coords <- function(coords, ab) {
  if (is_seurat(coords) || is_sce(coords)) coords <- obj_coords(coords)
  if (is.matrix(coords) && is.numeric(coords)) coords <- as.data.frame(coords)
  if (!is.data.frame(coords) || !all(c("x", "y") %in% names(coords))) {
    stopf("'coords' must be a data.frame with columns 'x' and 'y', or a Seurat / SingleCellExperiment object with spot coordinates")
  }
  if (!is.numeric(coords$x) || !is.numeric(coords$y) || anyNA(coords$x) || anyNA(coords$y)) {
    stopf("'coords' columns 'x' and 'y' must be numeric without NA")
  }
  spots <- rownames(ab)
  rn <- rownames(coords)
  has_names <- !is.null(spots) && !is.null(rn) && !identical(rn, as.character(seq_len(nrow(coords))))
  if (has_names) {
    miss <- setdiff(spots, rn)
    if (length(miss)) {
      stopf("%d spots of the abundances have no coordinates in 'coords' (e.g. %s)", length(miss),
            miss[1L])
    }
    return(coords[spots, c("x", "y")])
  }
  if (nrow(coords) != nrow(ab)) {
    stopf("'coords' has %d rows but 'x' has %d spots (and no matching row names)", nrow(coords),
          nrow(ab))
  }
  coords[, c("x", "y")]
}

# ---- bundled data ------------------------------------------------------------------------------

#' Mouse hippocampus: a single-cell reference and a Visium section
#'
#' Small real data bundled for examples, tests and the vignette (from the spacexr package,
#' GPL-3; see `system.file("extdata", "README.md", package = "scnative")`): a mouse hippocampus
#' single-cell reference of 510 cells (17 cell types x 30 cells, 307 genes) and a 10x Visium
#' section of 313 spots (276 genes) with spot coordinates; 124 genes are shared.
#'
#' @return A list with
#'   * `reference`: list of `counts` (dgCMatrix, genes x cells, integer counts), `cell_types`
#'     (factor, one per cell) and `nUMI` (total UMIs per cell over all genes of the original
#'     data);
#'   * `visium`: list of `counts` (dgCMatrix, genes x spots), `coords` (data.frame `x`, `y`,
#'     row names = spots) and `nUMI` (total UMIs per spot).
#' @examples
#' hip <- example_hippocampus()
#' dim(hip$reference$counts)
#' table(hip$reference$cell_types)[1:3]
#' length(intersect(rownames(hip$reference$counts), rownames(hip$visium$counts)))
#' @export
example_hippocampus <- function() {
  f <- system.file("extdata", "hippocampus.rds", package = "scnative")
  if (!nzchar(f)) stopf("the bundled file extdata/hippocampus.rds is missing; reinstall scnative")
  readRDS(f)
}

# ---- accuracy metrics (used by the tests; internal) ----------------------------------------

# Area under the precision-recall curve as average precision: the sum over distinct score
# thresholds (descending) of precision x the recall gained at that threshold. Tied scores form
# one threshold (the same convention as scikit-learn's average_precision_score).
auprc <- function(truth, score) {
  truth <- as.logical(as.vector(truth))
  score <- as.vector(score)
  if (length(truth) != length(score)) stopf("'truth' and 'score' must have the same length")
  if (anyNA(truth) || anyNA(score)) stopf("'truth' and 'score' must not contain NA")
  n_pos <- sum(truth)
  if (n_pos == 0L) stopf("'truth' has no positives; AUPRC is undefined")
  o <- order(score, decreasing = TRUE)
  s <- score[o]
  t <- truth[o]
  last <- c(s[-1L] != s[-length(s)], TRUE) # last index of each block of tied scores
  tp <- cumsum(t)[last]
  k <- which(last)
  precision <- tp / k
  recall <- tp / n_pos
  sum(diff(c(0, recall)) * precision)
}

# Pearson correlation over all entries of two equally shaped matrices.
pearson_all <- function(a, b) {
  stats::cor(as.vector(as.matrix(a)), as.vector(as.matrix(b)))
}
