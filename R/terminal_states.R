# Terminal states (scv.tl.terminal_states) and velocity pseudotime (scv.tl.velocity_pseudotime)
# on a velocity graph; the sparse eigen solver and the connected components are in
# src/terminal_states.c. Spec (scVelo downstream) sections 0.4, 2.2, 4 and 9.3.

# ------------------------------------------------------------------ helpers

# numpy's np.random.seed(seed); np.random.rand(n) (legacy MT19937, spec 0.4).
np_legacy_rand <- function(n, seed = 0) {
  .Call(C_scnative_velocity_mt, as.double(seed), as.double(n), 2L)
}

# Unit-norm vectors, the entry of largest modulus real positive; real parts kept (as upstream).
fix_phase <- function(V) {
  if (!ncol(V)) return(matrix(0, nrow(V), 0))
  out <- matrix(0, nrow(V), ncol(V))
  for (j in seq_len(ncol(V))) {
    v <- V[, j]
    v <- v / sqrt(sum(Mod(v)^2))
    b <- which.max(Mod(v))
    v <- v * Conj(v[b]) / Mod(v[b])
    out[, j] <- Re(v)
  }
  out
}

# The k eigenpairs of t(M) with the largest real part ("LR") or modulus ("LM"), ordered by
# that criterion (ties: larger imaginary part first), then for "LM" as scipy's eigsh returns
# them reversed (descending values). Krylov-Schur in C (ncv Krylov vectors, as ARPACK's default
# max(2k + 1, 20)) started from numpy's MT19937 seed 0 rand(n); tiny problems use LAPACK
# densely. Returns list(values (complex or real), vectors (real parts), nconv, iterations).
# grain: stored entries per thread below which the product runs serially. A product over
# 1e6 entries takes ~2 ms, and on a busy machine an OpenMP region per product was measured
# 8x slower than serial (3,000 cells, 3.3e5 entries: 1.9 s vs 0.24 s), so typical graphs
# (pancreas: ~1e6 entries) stay serial.
sparse_eigs <- function(M, k, which = c("LR", "LM"), symmetric = FALSE, v0 = NULL, tol = 1e-10,
                        maxit = NULL, threads = NULL, grain = 2e6) {
  which <- match.arg(which)
  n <- nrow(M)
  nth <- resolve_threads(threads)
  ncv <- min(max(2L * k + 1L, 20L), n - 1L)
  if (is.null(v0)) v0 <- np_legacy_rand(n, 0)
  if (is.null(maxit)) maxit <- max(300L, 10L * n)
  if (n < 3L || k > ncv - 2L || n <= 50L) {
    # dense: the whole spectrum of t(M)
    e <- eigen(t(as.matrix(M)), symmetric = symmetric)
    val <- e$values
    crit <- if (which == "LR") Re(val) else Mod(val)
    o <- order(-crit, -Im(val))[seq_len(min(k, n))]
    vals <- val[o]
    vecs <- fix_phase(as.matrix(e$vectors[, o, drop = FALSE]))
    res <- list(values = vals, vectors = vecs, nconv = length(o), iterations = 0L)
  } else {
    out <- .Call(C_scnative_eigs, M@p, M@i, as.double(M@x), as.double(v0), as.integer(k),
                 as.integer(ncv), if (which == "LR") 0L else 1L, symmetric, as.double(tol),
                 as.integer(maxit), nth, as.double(grain))
    vals <- if (symmetric) out$values_re else complex(real = out$values_re,
                                                       imaginary = out$values_im)
    res <- list(values = vals, vectors = out$vectors, nconv = out$nconv,
                iterations = out$iterations)
  }
  if (symmetric) res$values <- Re(res$values)
  res
}

# spec: terminal_states, eigs. Left eigenvectors of the transition matrix T with eigenvalue
# >= 1 - eps, absolute values, each column zeroed below its 2nd percentile, clipped at its
# 98th and divided by its max. Returns list(values, vectors).
terminal_eigs <- function(T, eps, k = 10L, threads = NULL) {
  e <- sparse_eigs(T, k = min(k, nrow(T)), which = "LR", threads = threads)
  if (e$nconv < length(e$values)) {
    warnf("the eigen solver converged for %d of %d eigenvalues", e$nconv, length(e$values))
  }
  re <- Re(e$values)
  keep <- re >= 1 - eps
  E <- abs(e$vectors[, keep, drop = FALSE])
  for (j in seq_len(ncol(E))) {
    v <- E[, j]
    lb <- np_percentile(v, 2)
    ub <- np_percentile(v, 98)
    v[v < lb] <- 0
    v <- pmin(v, ub)
    E[, j] <- v / max(v)
  }
  list(values = re[keep], all_values = e$values, vectors = E)
}

# spec: terminal_states step 1/2: C_dist smoothing summed over the kept columns, clip at the
# 98th percentile, scale.
terminal_score <- function(C, E) {
  r <- if (ncol(E)) Matrix::rowSums(C %*% E) else numeric(nrow(C))
  r <- as.numeric(r)
  r <- pmin(pmax(r, 0), np_percentile(r, 98))
  sv_scale(r)
}

# spec: verify_roots and the plasticity score. Ms genes x cells; gcc per gene.
verify_roots <- function(roots, Ms, gcc) {
  # upstream: argsort reversed, so NaN first and, among ties (values are rounded to 4
  # decimals), the later gene first as a reversed stable sort gives (numpy's own tie order
  # depends on its sort kernel)
  top <- order(gcc, seq_along(gcc), decreasing = TRUE, na.last = FALSE)
  top <- top[seq_len(min(200L, length(gcc)))]
  M <- Ms[top, , drop = FALSE]
  p <- sv_scale(colMeans(M / apply(M, 1L, max)))
  p_ub <- !is.na(p) & p > 0.5
  root_ub <- !is.na(roots) & roots > 0.9
  right <- sum(root_ub & p_ub) / sum(p_ub)
  wrong <- sum(root_ub & !p_ub) / sum(!p_ub)
  rand <- mean(root_ub)
  if (isTRUE(right > 3 * rand)) {
    roots <- roots * p_ub
  } else if (isTRUE(wrong > rand) || isTRUE(right < rand)) {
    warnf("uncertain or fuzzy root cell identification; please verify")
  }
  roots
}

# The core of terminal_states() on given transition matrices (spec 4.1): T_backward and
# T_forward row-normalised (cells x cells, rows = from), C the row-normalised kNN average.
terminal_scores <- function(T_backward, T_forward, C, eps = 1e-3, Ms = NULL, gcc = NULL,
                            threads = NULL) {
  er <- terminal_eigs(T_backward, eps, threads = threads)
  roots <- terminal_score(C, er$vectors)
  if (!is.null(Ms) && !is.null(gcc)) roots <- verify_roots(roots, Ms, gcc)
  ee <- terminal_eigs(T_forward, eps, threads = threads)
  ends <- terminal_score(C, ee$vectors)
  list(root_cells = roots, end_points = ends, root_eigenvalues = er$values,
       end_eigenvalues = ee$values)
}

# ------------------------------------------------------------------ velocity pseudotime

# spec: velocity_pseudotime steps 2-4: S = |G+| + |G-| symmetrised, density normalised, then
# symmetric normalisation by the square roots of the column sums (scVelo's own
# compute_transitions). Entries are divided by products of per-cell factors, so the result
# is exactly symmetric.
vpt_operator <- function(A) {
  S <- A + Matrix::t(A)
  S <- methods::as(methods::as(S, "CsparseMatrix"), "generalMatrix")
  q <- Matrix::colSums(S)
  q[q == 0] <- 1
  i <- S@i + 1L
  j <- rep.int(seq_len(ncol(S)), diff(S@p))
  K <- S
  K@x <- S@x / (q[i] * q[j])
  z <- sqrt(Matrix::colSums(K))
  K@x <- K@x / (z[i] * z[j])
  K
}

# spec: velocity_pseudotime step 6: DPT distance from cell iroot, normalised by its finite
# max; other components (labels comp) are +Inf -> NaN.
dpt_from <- function(iroot, lambda, phi, comp) {
  n <- nrow(phi)
  if (is.null(iroot)) return(rep(NaN, n))
  d2 <- numeric(n)
  for (m in seq_along(lambda)) {
    if (lambda[m] < 0.9994) d2 <- d2 + (lambda[m] / (1 - lambda[m]) * (phi[iroot, m] - phi[, m]))^2
  }
  for (m in seq_along(lambda)) {
    if (lambda[m] >= 0.9994) d2 <- d2 + (phi[iroot, m] - phi[, m])^2
  }
  d <- sqrt(d2)
  d[comp != comp[iroot]] <- Inf
  pt <- d / max(d[is.finite(d)])
  pt[!is.finite(pt)] <- NaN
  pt
}

# set_iroot (spec 4.5 step 5): a score vector -> argmax of the connectivity-averaged scores
# (NULL if the scores' max is 0); an index or cell name as is.
resolve_root <- function(root, arg, C_conn, cells) {
  n <- nrow(C_conn)
  if (is.null(root)) return(NULL)
  if (is.character(root)) {
    if (length(root) != 1L || is.na(root)) stopf("'%s' must be a single cell name", arg)
    if (is.null(cells)) stopf("'%s' is a cell name but the graph has no cell names", arg)
    i <- match(root, cells)
    if (is.na(i)) stopf("'%s' (\"%s\") is not a cell of the graph", arg, root)
    return(i)
  }
  if (!is.numeric(root) && !is.logical(root)) {
    stopf("'%s' must be a numeric score per cell, a cell index or a cell name", arg)
  }
  if (length(root) == 1L && n != 1L) {
    check_number(root, arg, min = 1, max = n, whole = TRUE)
    return(as.integer(root))
  }
  if (length(root) != n) {
    stopf("'%s' must have one score per cell (%d), not %d values", arg, n, length(root))
  }
  if (!is.null(names(root)) && !is.null(cells) && !identical(names(root), cells)) {
    if (!setequal(names(root), cells)) stopf("the names of '%s' are not the graph's cells", arg)
    root <- root[cells]
  }
  root <- as.double(root)
  if (all(is.na(root))) return(NULL)
  if (isTRUE(max(root, na.rm = TRUE) == 0)) return(NULL)
  s <- sv_scale(as.numeric(C_conn %*% root))
  if (all(is.na(s))) return(NULL)
  which.max(s)
}

# ------------------------------------------------------------------ public API

#' Terminal states: root cells and end points of the velocity-inferred Markov chain
#'
#' Native `scvelo.tl.terminal_states()` (scVelo 0.3.4). Root cells are stationary states of
#' the backward transition matrix and end points of the forward one: the left eigenvectors of
#' [transition_matrix()] (no self transitions by default) whose eigenvalue is at least
#' `1 - eps` are taken in absolute value, zeroed below their 2nd and clipped at their 98th
#' percentile and scaled to a maximum of 1, averaged over each cell's kNN neighbourhood
#' (`distances`), summed, clipped at the 98th percentile and scaled to `[0, 1]`. With `Ms` and
#' `gene_count_corr` the roots are checked against a plasticity score as upstream does when
#' `var["gene_count_corr"]` exists (roots outside cells with a high score are set to 0 when
#' the roots are enriched three-fold in those cells).
#'
#' @section Eigen solver: upstream calls ARPACK (`scipy.sparse.linalg.eigs`, 10 eigenvalues
#'   of largest real part, 21 Krylov vectors) in single precision with the start vector
#'   `np.random.seed(0); np.random.rand(n)`. scnative runs a Krylov-Schur solver in double
#'   precision (C, LAPACK for the small projected problem) from the same start vector, so
#'   results are deterministic and independent of the thread count. When exactly one
#'   eigenvalue is kept its eigenvector is unique and the scores agree with upstream to about
#'   `1e-6`; when several eigenvalues are close to 1 (several absorbing regions) the basis of
#'   that eigenspace is arbitrary and upstream itself changes with the precision, the start
#'   vector or the BLAS, so only the number of kept eigenvalues is comparable. Graphs of up to
#'   50 cells are solved densely (LAPACK); upstream fails for 11 or fewer cells.
#'
#' @param x A velocity graph, the result of [velocity_graph()] (class
#'   `scnative_velocity_graph`).
#' @param distances Cells x cells kNN distance graph (a `dgCMatrix` or matrix, rows = cells;
#'   `moments()$distances` or scanpy's `obsp["distances"]`): its stored positive entries plus
#'   each cell itself form the neighbourhoods that smooth the scores.
#' @param eps Number in `[0, 1)`: eigenvalues of at least `1 - eps` are kept.
#' @param self_transitions `TRUE` or `FALSE`: passed to [transition_matrix()].
#' @param Ms `NULL` or a genes x cells matrix of smoothed spliced counts (for the plasticity
#'   check; cells in the graph's order).
#' @param gene_count_corr `NULL` or a numeric vector, one value per row of `Ms`: each gene's
#'   correlation with the number of detected genes (scVelo's `var["gene_count_corr"]`).
#' @param threads `NULL` (the package default, see [scnative_threads()]) or a whole number.
#' @param ... Further arguments to [transition_matrix()] (e.g. `scale`).
#' @return A list of class `scnative_terminal_states`: `root_cells` and `end_points` (numeric
#'   in `[0, 1]`, one per cell, named by the cells), `root_eigenvalues` and `end_eigenvalues`
#'   (the kept eigenvalues, descending; their lengths are the numbers of regions found).
#'   `as.data.frame()` gives the two scores as columns.
#' @seealso [velocity_pseudotime()]
#' @examples
#' # a chain of 60 cells whose velocities point forward
#' n <- 60
#' i <- c(1:(n - 1), 1:(n - 2)); j <- c(2:n, 3:n)
#' g <- Matrix::sparseMatrix(i, j, x = 0.9, dims = c(n, n))
#' gn <- Matrix::sparseMatrix(j, i, x = -0.5, dims = c(n, n))
#' vg <- structure(list(graph = g, graph_neg = gn, self_transition = numeric(n)),
#'                 class = "scnative_velocity_graph")
#' d <- abs(outer(1:n, 1:n, "-")); d[d > 3 | d == 0] <- 0
#' ts <- terminal_states(vg, Matrix::Matrix(d, sparse = TRUE))
#' which.max(ts$root_cells); which.max(ts$end_points)
#' @export
terminal_states <- function(x, ...) UseMethod("terminal_states")

#' @rdname terminal_states
#' @export
terminal_states.default <- function(x, distances, eps = 1e-3, self_transitions = FALSE, Ms = NULL,
                            gene_count_corr = NULL, threads = NULL, ...) {
  g <- validate_velocity_graph(x)
  if (missing(distances)) stopf("'distances' is missing")
  D <- as_cell_graph(distances, g$n, "distances", cells = g$cells)
  check_number(eps, "eps", min = 0, max = 1)
  if (eps >= 1) stopf("'eps' must be less than 1")
  check_flag(self_transitions, "self_transitions")
  nth <- resolve_threads(threads)
  vr <- check_verify_inputs(Ms, gene_count_corr, g$n, g$cells)
  Tb <- transition_matrix(x, backward = TRUE, self_transitions = self_transitions, ...)
  Tf <- transition_matrix(x, backward = FALSE, self_transitions = self_transitions, ...)
  res <- terminal_scores(as_cell_graph(Tb, g$n, "transition_matrix(x)"),
                         as_cell_graph(Tf, g$n, "transition_matrix(x)"), normalise_connectivities(D, g$n),
                         eps = eps, Ms = vr$Ms, gcc = vr$gcc, threads = nth)
  names(res$root_cells) <- names(res$end_points) <- g$cells
  structure(res, class = "scnative_terminal_states")
}

check_verify_inputs <- function(Ms, gcc, n, cells = NULL) {
  if (is.null(Ms) != is.null(gcc)) {
    stopf("'Ms' and 'gene_count_corr' must be given together (or both NULL)")
  }
  if (is.null(Ms)) return(list(Ms = NULL, gcc = NULL))
  Ms <- as_checked_matrix(Ms, "Ms")
  if (ncol(Ms) != n) stopf("'Ms' must have %d columns (cells), not %d", n, ncol(Ms))
  if (!is.null(cells) && !is.null(colnames(Ms)) && !identical(colnames(Ms), cells)) {
    stopf("the cells (columns) of 'Ms' are not those of the velocity graph 'x', in order")
  }
  if (!is.null(names(gcc)) && !is.null(rownames(Ms)) && !identical(names(gcc), rownames(Ms))) {
    stopf("the names of 'gene_count_corr' are not the genes (rows) of 'Ms', in order")
  }
  if (!is.numeric(gcc) || length(gcc) != nrow(Ms)) {
    stopf("'gene_count_corr' must be a numeric vector with one value per gene of 'Ms' (%d)",
          nrow(Ms))
  }
  list(Ms = Ms, gcc = as.double(gcc))
}

#' @exportS3Method print scnative_terminal_states
print.scnative_terminal_states <- function(x, ...) {
  cat(sprintf("<scnative_terminal_states> %d cells; %d root region(s), %d end region(s)\n",
              length(x$root_cells), length(x$root_eigenvalues), length(x$end_eigenvalues)))
  invisible(x)
}

#' @exportS3Method as.data.frame scnative_terminal_states
as.data.frame.scnative_terminal_states <- function(x, ...) {
  data.frame(root_cells = x$root_cells, end_points = x$end_points,
             row.names = names(x$root_cells) %||% seq_along(x$root_cells))
}

#' Velocity pseudotime: diffusion pseudotime on the velocity graph
#'
#' Native `scvelo.tl.velocity_pseudotime()` (scVelo 0.3.4). The absolute cosines of the
#' velocity graph, symmetrised, are density-normalised and symmetrically normalised
#' (scVelo's own `compute_transitions`); the `n_dcs` eigenpairs of largest magnitude of that
#' operator define the diffusion pseudotime distance (Haghverdi et al. 2016) from a root cell,
#' infinite between connected components of the kNN graph `connectivities`. With end points
#' the distance to the end cell, reversed, is averaged in. The result is scaled to `[0, 1]`.
#'
#' The root (and end) cell is chosen as upstream's `set_iroot`: for a score per cell (such as
#' `terminal_states()$root_cells`), the cell maximising the scores averaged over each cell's
#' neighbourhood in `connectivities` (no root, hence `NaN`, if the scores' maximum is 0); a
#' single whole number is a cell index (1-based) and a string a cell name. With `root =
#' NULL`, [terminal_states()] is run on `x` and `distances`, and its `root_cells` and
#' `end_points` are used (upstream's behaviour when the obs columns are missing).
#'
#' @section Eigen solver: upstream calls `scipy.sparse.linalg.eigsh` in single precision with a
#'   random start vector (scipy >= 1.17 draws a new one each call, so upstream itself varies by
#'   about `2e-4`). scnative runs a symmetric Krylov-Schur solver in double precision from
#'   numpy's MT19937 seed 0 `rand(n)`: deterministic, equal to upstream within that noise
#'   unless an eigenvalue sits at the 0.9994 weighting threshold or at the `n_dcs`-th place.
#'
#' @inheritParams terminal_states
#' @param connectivities Cells x cells kNN connectivity graph (scanpy's
#'   `obsp["connectivities"]`, `moments()$connectivities`): root smoothing and connected
#'   components.
#' @param root `NULL`, a numeric score per cell, a cell index or a cell name (see Details).
#' @param end `NULL` (no end points, unless `root` is `NULL`) or as `root`.
#' @param distances Only used when `root` is `NULL`: passed to [terminal_states()].
#' @param n_dcs Whole number >= 1: diffusion components (at most cells - 1 are used).
#' @return A numeric vector (one per cell, named by the cells) in `[0, 1]`, `NaN` for cells
#'   not connected to the root (or all `NaN` without a root). Attribute `eigenvalues`: the
#'   diffusion eigenvalues, descending.
#' @examples
#' n <- 60
#' i <- c(1:(n - 1), 1:(n - 2)); j <- c(2:n, 3:n)
#' g <- Matrix::sparseMatrix(i, j, x = 0.9, dims = c(n, n))
#' gn <- Matrix::sparseMatrix(j, i, x = -0.5, dims = c(n, n))
#' vg <- structure(list(graph = g, graph_neg = gn, self_transition = numeric(n)),
#'                 class = "scnative_velocity_graph")
#' conn <- Matrix::Matrix((abs(outer(1:n, 1:n, "-")) <= 3) * 1, sparse = TRUE)
#' pt <- velocity_pseudotime(vg, conn, root = 1)
#' round(head(pt), 3)
#' @export
velocity_pseudotime <- function(x, ...) UseMethod("velocity_pseudotime")

#' @rdname velocity_pseudotime
#' @param ... Passed to methods.
#' @export
velocity_pseudotime.default <- function(x, connectivities, root = NULL, end = NULL,
                                        distances = NULL, n_dcs = 10, threads = NULL, ...) {
  g <- validate_velocity_graph(x)
  if (missing(connectivities)) stopf("'connectivities' is missing")
  Cg <- as_cell_graph(connectivities, g$n, "connectivities", cells = g$cells)
  check_number(n_dcs, "n_dcs", min = 1, whole = TRUE)
  nth <- resolve_threads(threads)
  if (is.null(root)) {
    if (is.null(distances)) {
      stopf("'distances' is needed to find the root cells when 'root' is NULL")
    }
    ts <- terminal_states.default(x, distances, threads = nth)
    root <- ts$root_cells
    if (is.null(end)) end <- ts$end_points
  }
  C_conn <- normalise_connectivities(Cg, g$n)
  iroot <- resolve_root(root, "root", C_conn, g$cells)
  iend <- resolve_root(end, "end", C_conn, g$cells)
  A <- abs(g$graph) + abs(g$graph_neg)
  K <- vpt_operator(A)
  k <- as.integer(min(g$n - 1L, n_dcs))
  if (k < 1L) stopf("velocity_pseudotime() needs at least 2 cells")
  e <- sparse_eigs(K, k = k, which = "LM", symmetric = TRUE, threads = nth)
  if (e$nconv < k) warnf("the eigen solver converged for %d of %d eigenvalues", e$nconv, k)
  o <- order(e$values, decreasing = TRUE)
  lambda <- e$values[o]
  phi <- e$vectors[, o, drop = FALSE]
  comp <- .Call(C_scnative_components, Cg@p, Cg@i, g$n)
  pt <- dpt_from(iroot, lambda, phi, comp)
  if (!is.null(end)) {
    pe <- 1 - dpt_from(iend, lambda, phi, comp)
    both <- is.finite(pt) & is.finite(pe)
    none <- is.nan(pt) & is.nan(pe)
    m <- ifelse(is.na(pt), 0, pt) + ifelse(is.na(pe), 0, pe)
    m[both] <- m[both] / 2
    m <- sv_scale(m)
    m[none] <- NaN
    pt <- m
  }
  names(pt) <- g$cells
  attr(pt, "eigenvalues") <- lambda
  pt
}
