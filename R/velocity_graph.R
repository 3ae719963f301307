# The velocity graph and what is built on it: scVelo's tl.velocity_graph (cosines of velocity
# with neighbour displacements, src/velocity_graph.c), tl.transition_matrix and
# tl.velocity_embedding (projection onto an embedding, with matplotlib's quiver autoscale).
# Spec (scVelo downstream): "tl.velocity_graph", "tl.transition_matrix and
# tl.velocity_embedding", "Shared helpers".

# ------------------------------------------------------------------ shared checks

# A cells x cells graph as a general dgCMatrix, validated (slots, size, finiteness).
# `cells`: the names its dimnames (where present) must have.
as_cell_graph <- function(g, n_cells, arg, nonneg = FALSE, cells = NULL) {
  if (!(is.matrix(g) || methods::is(g, "Matrix"))) {
    stopf("'%s' must be a cells x cells matrix or sparse Matrix, not %s", arg, class(g)[1L])
  }
  check_valid_matrix(g, arg)
  if (nrow(g) != n_cells || ncol(g) != n_cells) {
    stopf("'%s' must be %d x %d (cells x cells), not %d x %d", arg, n_cells, n_cells,
          nrow(g), ncol(g))
  }
  check_graph_cells(g, cells, arg)
  g <- methods::as(methods::as(methods::as(g, "CsparseMatrix"), "generalMatrix"), "dMatrix")
  if (anyNA(g@x) || any(is.infinite(g@x))) stopf("'%s' contains NA or infinite values", arg)
  if (nonneg && any(g@x < 0)) stopf("'%s' contains negative values", arg)
  g
}

# The kNN distances of a moments() result, or `distances` itself.
moments_distances <- function(distances, arg = "distances") {
  if (!inherits(distances, "scnative_moments")) return(distances)
  if (is.null(distances$distances)) {
    stopf("'%s': these moments were computed on a given graph and hold no kNN distances", arg)
  }
  distances$distances
}

# Neighbour index of each cell from a kNN distances graph (spec: Shared helpers, get_indices):
# every stored entry counts (also explicit zeros); k = the smallest count of a row; rows with
# more keep their k smallest distances. Returns a k x n integer matrix of 1-based indices.
# `distances` may also be a scnative_moments object. need_positive: velocity_graph's check
# that every cell has a neighbour at a distance > 0.
knn_indices <- function(distances, n_cells, arg = "distances", need_positive = TRUE,
                        cells = NULL) {
  distances <- moments_distances(distances, arg)
  D <- as_cell_graph(distances, n_cells, arg, nonneg = TRUE, cells = cells)
  if (any(diff(Matrix::t(D)@p) == 0)) {
    stopf("'%s': every cell needs at least one neighbour; cell %d has none", arg,
          which(diff(Matrix::t(D)@p) == 0)[1L])
  }
  pos <- if (need_positive) Matrix::rowSums(D > 0) else 1
  if (any(pos == 0)) {
    stopf("'%s': every cell needs a neighbour at a distance > 0; cell %d has none", arg,
          which(pos == 0)[1L])
  }
  Dt <- Matrix::t(D) # column i = row i of D, explicit zeros kept
  cnt <- diff(Dt@p)
  k <- min(cnt)
  col <- rep.int(seq_len(n_cells), cnt)
  o <- order(col, Dt@x, method = "radix")
  keep <- o[sequence(cnt) <= k]
  matrix(Dt@i[keep] + 1L, nrow = k)
}

# Row-wise triplets (i, j, x) of a dgCMatrix, 1-based.
sparse_triplets <- function(m) {
  list(i = m@i + 1L, j = rep.int(seq_len(ncol(m)), diff(m@p)), x = m@x)
}

# Column sums of the rows of x (a vector or matrix) per group g in 1..n: an n-row matrix,
# zero rows for absent groups.
group_sums <- function(x, g, n) {
  x <- as.matrix(x)
  out <- matrix(0, n, ncol(x))
  if (length(g)) {
    agg <- rowsum(x, g, reorder = TRUE)
    out[as.integer(rownames(agg)), ] <- agg
  }
  out
}

# ------------------------------------------------------------------ velocity_graph

#' Velocity graph (scVelo's `tl.velocity_graph`)
#'
#' For every cell `i` and every cell `j` within two steps of its nearest neighbours (the kNN
#' index of `distances`, `n_recurse_neighbors = 2`), the cosine correlation of the
#' displacement `Ms_j - Ms_i` with the velocity of cell `i`, both centred across genes (a
#' Pearson correlation), over the velocity genes, as `scvelo.tl.velocity_graph(adata)` does
#' (scVelo 0.3.4, `mode_neighbors = "distances"`). Velocities and `Ms` are rounded to
#' float32 as upstream reads them; cosines are computed in double precision and rounded to
#' float32, so values agree with upstream's to about 1e-7.
#'
#' Positive cosines form `graph`, negative ones `graph_neg` (upstream's
#' `uns["velocity_graph"]`, `uns["velocity_graph_neg"]`); the diagonal, exact zeros and
#' undefined cosines (identical cells) are absent from both. `self_transition` is upstream's
#' `obs["velocity_self_transition"]`.
#'
#' @param x A genes x cells velocity matrix (rows of unfitted genes may be `NA`), or a
#'   `scnative_velocity` object ([velocity()]), or a Seurat / SingleCellExperiment object
#'   after [velocity()].
#' @param Ms Genes x cells first-order spliced moments (same genes and cells as `x`). Object
#'   methods: the assay / assay name.
#' @param distances Cells x cells kNN distance graph, self excluded (as scanpy's
#'   `obsp["distances"]` or `moments()$distances`); its stored entries are the neighbours.
#' @param velocity_genes `NULL` (for a `scnative_velocity` object its `velocity_genes`, else
#'   all genes), or a logical vector (one per gene) or a character vector of gene names
#'   (upstream's `gene_subset`). Genes with any `NA` velocity are dropped as upstream does.
#' @param n_recurse_neighbors Whole number >= 1 (default 2): neighbour steps.
#' @param sqrt_transform Logical (default `FALSE`, upstream's choice for the dynamical
#'   model): signed square root of velocities and displacements (stochastic mode).
#' @param threads `NULL` (package default) or a whole number of threads. Results do not
#'   depend on it. With `parallel = "future"`: the threads of each worker (`NULL`: 1).
#' @param progress `TRUE` to show a progress bar. With `parallel = "future"` progress is
#'   signalled through \pkg{progressr} (when installed) unless `progress = FALSE` is given.
#' @param parallel `"local"` (default) or `"future"`: ranges of cells go to the workers of the
#'   current [future::plan()], each with the columns of the data its cells reach; the result
#'   is identical to the local one (on workers of the same CPU kind). See
#'   [recover_dynamics()], section Running on a cluster, and `vignette("cluster")`.
#' @param chunk_size With `parallel = "future"`: `NULL` (about two chunks per worker) or the
#'   cells per chunk. A chunk carries the data of the cells its cells reach: with cells in an
#'   order that keeps neighbours close (clusters, samples), smaller chunks carry less. (future
#'   refuses a future whose data exceed `getOption("future.globals.maxSize")`, 500 MiB by
#'   default: raise it, or give smaller chunks.)
#' @param resume `NULL` or the `partial` element of the error (class `scnative_chunk_error`)
#'   of a failed `parallel = "future"` run: only the cells of the failed chunks are computed.
#' @param ... Passed to methods.
#' @return An object of class `scnative_velocity_graph`: a list with `graph` and
#'   `graph_neg` (cells x cells `dgCMatrix`, row = from cell), `self_transition` (named
#'   numeric), `genes` (the genes used) and `params`.
#' @examples
#' sim <- simulate_velocity(n_obs = 150, n_vars = 6)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", threads = 1, progress = FALSE)
#' v <- velocity(fit, m$Ms, m$Mu)
#' vg <- velocity_graph(v, m$Ms, m$distances, velocity_genes = rep(TRUE, 6), threads = 1)
#' vg
#' @export
velocity_graph <- function(x, ...) UseMethod("velocity_graph")

#' @rdname velocity_graph
#' @export
velocity_graph.scnative_velocity <- function(x, Ms, distances, velocity_genes = NULL, ...) {
  validate_velocity_object(x, "x")
  if (is.null(velocity_genes)) velocity_genes <- x$var$velocity_genes
  velocity_graph.default(x$velocity, Ms, distances, velocity_genes = velocity_genes, ...)
}

#' @rdname velocity_graph
#' @export
velocity_graph.default <- function(x, Ms, distances, velocity_genes = NULL,
                                   n_recurse_neighbors = 2, sqrt_transform = FALSE,
                                   threads = NULL, progress = interactive(),
                                   parallel = c("local", "future"), chunk_size = NULL,
                                   resume = NULL, ...) {
  if (missing(Ms)) stop_missing_companion("Ms", x)
  if (missing(distances)) stopf("'distances' is missing (the kNN graph, e.g. moments()$distances)")
  if (!(is.matrix(x) || methods::is(x, "Matrix")) || !is.numeric(x[0, 0, drop = TRUE])) {
    stopf("'x' must be a genes x cells velocity matrix or a scnative_velocity object, not %s",
          class(x)[1L])
  }
  check_valid_matrix(x, "x")
  V <- as.matrix(x)
  if (!is.double(V)) storage.mode(V) <- "double"
  if (any(is.infinite(V))) stopf("'x' (velocity) contains infinite values")
  Ms <- as_checked_matrix(Ms, "Ms")
  if (!identical(dim(Ms), dim(V))) {
    stopf("'Ms' must have the dimensions of the velocity (%d x %d), not %d x %d", nrow(V),
          ncol(V), nrow(Ms), ncol(Ms))
  }
  if (!is.null(rownames(V)) && !is.null(rownames(Ms)) && !identical(rownames(V), rownames(Ms))) {
    stopf("the genes (rows) of 'Ms' are not those of the velocity, in order")
  }
  if (!is.null(colnames(V)) && !is.null(colnames(Ms)) && !identical(colnames(V), colnames(Ms))) {
    stopf("the cells (columns) of 'Ms' are not those of the velocity, in order")
  }
  check_number(n_recurse_neighbors, "n_recurse_neighbors", min = 1, max = 8, whole = TRUE)
  check_flag(sqrt_transform, "sqrt_transform")
  check_flag(progress, "progress")
  parallel <- check_parallel(parallel)
  nth <- future_threads(parallel, threads)
  if (!is.null(chunk_size)) check_number(chunk_size, "chunk_size", min = 1, whole = TRUE)
  if (!is.null(resume) && !inherits(resume, "scnative_velocity_graph_partial")) {
    stopf("'resume' must be NULL or the 'partial' element of the error of a failed velocity_graph(parallel = \"future\") run")
  }
  n_genes <- nrow(V)
  n <- ncol(V)
  if (n < 2L) stopf("'x' must have at least 2 cells (columns)")
  genes <- rownames(V) %||% rownames(Ms)
  cells <- colnames(V) %||% colnames(Ms)
  keep <- select_genes(velocity_genes, n_genes, genes, "velocity_genes")
  keep <- keep & !is.na(rowSums(V))
  if (sum(keep) < 2L) {
    stopf("too few velocity genes: %d gene(s) selected with a velocity in every cell (need >= 2)",
          sum(keep))
  }
  nb <- knn_indices(distances, n, cells = cells) - 1L

  # spec: Data, Velocity transform: float32 velocities, signed sqrt, row centring in float32
  prep <- .Call(C_scnative_velocity_graph_prep, Ms, V, which(keep) - 1L, sqrt_transform)

  key <- list(cells = cells, n = n, genes = which(keep), nrec = as.integer(n_recurse_neighbors),
              sqrt = sqrt_transform, nb = nb, check = list(prep[[3L]], prep[[4L]]))
  parts <- list() # list(from, to, .Call result) per range of cells [from, to), 0-based
  if (!is.null(resume)) parts <- check_graph_resume(resume, key)$parts
  todo <- graph_missing_ranges(parts, n) # [from, to) ranges not computed yet
  if (parallel == "local") {
    chunk <- max(256L, as.integer(ceiling(n / 50)))
    ranges <- split_ranges(todo, chunk)
    pb <- if (progress && length(ranges) > 1L) utils::txtProgressBar(0, n, style = 3) else NULL
    done_cells <- n - sum(todo[, 2L] - todo[, 1L])
    for (r in ranges) {
      res <- .Call(C_scnative_velocity_graph, prep[[1L]], prep[[2L]], prep[[3L]], prep[[4L]],
                   sum(keep), nb, key$nrec, sqrt_transform, r[1L], r[2L], nth)
      parts[[length(parts) + 1L]] <- list(from = r[1L], to = r[2L], res = res)
      done_cells <- done_cells + r[2L] - r[1L]
      if (!is.null(pb)) utils::setTxtProgressBar(pb, done_cells)
    }
    if (!is.null(pb)) close(pb)
  } else if (nrow(todo)) {
    # each range of cells goes to a worker with the columns of the prepared data its cells
    # reach (n_recurse_neighbors steps); per-cell cosines read nothing else, so the chunking
    # does not change any value (spec: velocity_graph, Per-cell cosines)
    w <- suppressWarnings(as.numeric(future::nbrOfWorkers()))
    if (length(w) != 1L || is.na(w) || !is.finite(w) || w < 1) w <- 32
    size <- if (is.null(chunk_size)) max(1L, as.integer(ceiling(sum(todo[, 2L] - todo[, 1L]) / (2 * w))))
            else as.integer(chunk_size)
    ranges <- split_ranges(todo, size)
    tasks <- lapply(ranges, function(r) graph_chunk_task(prep, nb, key$nrec, r[1L], r[2L]))
    fail <- getOption("scnative.future_fail_chunks") # for tests: chunks that fail on purpose
    for (k in intersect(fail, seq_along(tasks))) tasks[[k]]$fail <- TRUE
    shared <- list(g = sum(keep), nrec = key$nrec, sqrt = sqrt_transform)
    p <- future_progressor(sum(todo[, 2L] - todo[, 1L]), !(!missing(progress) && isFALSE(progress)))
    run <- future_run_chunks(tasks, graph_chunk_worker, shared, nth, p,
                             sprintf("velocity_graph chunk %d", seq_along(tasks)))
    rm(tasks)
    for (k in seq_along(ranges)) {
      if (!is.null(run$values[[k]])) {
        parts[[length(parts) + 1L]] <- list(from = ranges[[k]][1L], to = ranges[[k]][2L],
                                            res = run$values[[k]])
      }
    }
    failed <- !vapply(run$errors, is.null, TRUE)
    if (any(failed)) {
      partial <- structure(list(key = key, parts = parts), class = "scnative_velocity_graph_partial")
      done_n <- sum(vapply(parts, function(q) q$to - q$from, 1))
      stop_chunk_error("velocity_graph", "cells", run,
                       lapply(ranges, function(r) (r[1L] + 1L):r[2L]),
                       cells %||% as.character(seq_len(n)), done_n, n, partial)
    }
  }
  parts <- lapply(parts[order(vapply(parts, function(q) q$from, 1))], `[[`, "res")
  cnt <- unlist(lapply(parts, function(p) diff(p[[1L]])), use.names = FALSE)
  jj <- unlist(lapply(parts, `[[`, 2L), use.names = FALSE)
  cc <- unlist(lapply(parts, `[[`, 3L), use.names = FALSE)
  col <- rep.int(seq_len(n), cnt) # from-cell of each pair
  dn <- list(cells, cells)
  # each from-cell's pairs are sorted by j, so these are valid CSC slots of t(graph)
  half <- function(sel) {
    p <- c(0L, cumsum(tabulate(col[sel], n)))
    tg <- methods::new("dgCMatrix", i = jj[sel], p = as.integer(p), x = cc[sel], Dim = c(n, n))
    g <- Matrix::t(tg)
    if (!is.null(cells)) dimnames(g) <- dn
    g
  }
  graph <- half(cc > 0)
  graph_neg <- half(cc < 0)
  s <- self_transitions_of(graph)
  if (!is.null(cells)) names(s) <- cells
  structure(list(graph = graph, graph_neg = graph_neg, self_transition = s,
                 genes = if (is.null(genes)) which(keep) else genes[keep],
                 params = list(n_recurse_neighbors = as.integer(n_recurse_neighbors),
                               sqrt_transform = sqrt_transform, mode_neighbors = "distances",
                               n_neighbors = nrow(nb))),
            class = "scnative_velocity_graph")
}

# The [from, to) ranges (0-based, a 2-column matrix) of cells 0..n-1 not covered by 'parts'.
graph_missing_ranges <- function(parts, n) {
  covered <- logical(n)
  for (q in parts) covered[(q$from + 1L):q$to] <- TRUE
  r <- rle(covered)
  ends <- cumsum(r$lengths)
  starts <- ends - r$lengths
  cbind(from = as.integer(starts[!r$values]), to = as.integer(ends[!r$values]))
}

# The ranges split into pieces of at most 'size' cells: a list of c(from, to).
split_ranges <- function(ranges, size) {
  out <- list()
  for (a in seq_len(nrow(ranges))) {
    st <- seq.int(ranges[a, 1L], ranges[a, 2L] - 1L, by = size)
    out <- c(out, lapply(st, function(f) c(f, min(f + size, ranges[a, 2L]))))
  }
  lapply(out, as.integer)
}

# What a worker needs for cells [from, to): the cells they reach in 'nrec' steps of the kNN
# index (ascending, so the order of each cell's neighbours is kept), their columns of the
# prepared data, and the index renumbered within them. Neighbours outside the reached cells
# (of cells 'nrec' steps away, never followed) become -1.
graph_chunk_task <- function(prep, nb, nrec, from, to) {
  n <- ncol(nb)
  reach <- logical(n)
  front <- (from + 1L):to
  reach[front] <- TRUE
  for (r in seq_len(nrec)) {
    nxt <- nb[, front, drop = FALSE]
    nxt <- unique(nxt[nxt >= 0L]) + 1L
    front <- nxt[!reach[nxt]]
    reach[front] <- TRUE
    if (!length(front)) break
  }
  sub <- which(reach)
  pos <- integer(n) - 1L
  pos[sub] <- seq_along(sub) - 1L
  nbs <- nb[, sub, drop = FALSE]
  at <- nbs + 1L
  at[at < 1L] <- NA_integer_
  nbs[] <- pos[at]
  nbs[is.na(nbs)] <- -1L
  cols <- function(raw) {
    m <- raw
    dim(m) <- c(length(raw) / n, n)
    m <- m[, sub, drop = FALSE]
    dim(m) <- NULL
    m
  }
  list(x = cols(prep[[1L]]), v = cols(prep[[2L]]), vnorm = prep[[3L]][sub],
       xsum = prep[[4L]][sub], nb = nbs, from = pos[from + 1L], to = pos[from + 1L] + (to - from),
       cells = sub)
}

# Runs on a future worker: the cosines of one range of cells, neighbours numbered back.
graph_chunk_worker <- function(task, shared, threads, p) {
  if (isTRUE(task$fail)) stop("failing on purpose (option scnative.future_fail_chunks)")
  res <- .Call(C_scnative_velocity_graph, task$x, task$v, task$vnorm, task$xsum, shared$g,
               task$nb, shared$nrec, shared$sqrt, task$from, task$to, resolve_threads(threads))
  res[[2L]] <- task$cells[res[[2L]] + 1L] - 1L
  if (!is.null(p)) p(amount = task$to - task$from)
  res
}

# A partial result handed to 'resume' must come from the same call.
check_graph_resume <- function(resume, key) {
  for (nm in c("cells", "n", "genes", "nrec", "sqrt", "nb", "check")) {
    if (!identical(resume$key[[nm]], key[[nm]])) {
      stopf("'resume' comes from a run on other data or settings (%s differs): rerun with the same arguments",
            switch(nm, cells = , n = "the cells", genes = "the velocity genes",
                   nrec = "n_recurse_neighbors", sqrt = "sqrt_transform", nb = "distances",
                   check = "the velocities or Ms"))
    }
  }
  ok <- is.list(resume$parts) && all(vapply(resume$parts, function(q) {
    is.list(q) && is.integer(q$from) && is.integer(q$to) && length(q$from) == 1L &&
      length(q$to) == 1L && q$from >= 0L && q$to <= key$n && q$from < q$to && is.list(q$res) &&
      length(q$res[[1L]]) == q$to - q$from + 1L
  }, TRUE))
  if (ok && length(resume$parts)) {
    f <- vapply(resume$parts, function(q) q$from, 1L)
    t <- vapply(resume$parts, function(q) q$to, 1L)
    o <- order(f)
    ok <- all(utils::tail(f[o], -1L) >= utils::head(t[o], -1L)) # no overlaps
  }
  if (!ok) stopf("'resume' is damaged (its parts do not fit together)")
  resume
}

# The velocity graph of an object as a scnative_velocity_graph.
graph_from_object <- function(object, graph_name) {
  check_string(graph_name, "graph")
  gp <- obj_graph(object, graph_name)
  gn <- obj_graph(object, paste0(graph_name, "_neg"))
  cells <- colnames(object)
  dimnames(gp) <- dimnames(gn) <- list(cells, cells)
  info <- obj_misc(object, graph_name) %||% list()
  structure(list(graph = gp, graph_neg = gn, self_transition = NULL, genes = info$genes,
                 params = info$params), class = "scnative_velocity_graph")
}

# A velocity graph from a scnative_velocity_graph or an object holding one.
as_velocity_graph <- function(x, graph = "velocity_graph") {
  if (is_seurat(x) || is_sce(x)) return(graph_from_object(x, graph))
  x
}

# Logical gene mask from NULL (all), a logical vector or gene names.
select_genes <- function(sel, n_genes, genes, arg) {
  if (is.null(sel)) return(rep(TRUE, n_genes))
  if (is.logical(sel)) {
    if (length(sel) != n_genes || anyNA(sel)) {
      stopf("'%s' must be a logical vector with one non-NA value per gene (%d)", arg, n_genes)
    }
    return(sel)
  }
  if (is.character(sel)) {
    if (is.null(genes)) stopf("'%s' gives gene names but the matrices have no row names", arg)
    bad <- setdiff(sel, genes)
    if (length(bad)) stopf("'%s': unknown gene(s) %s", arg, paste(utils::head(bad, 5), collapse = ", "))
    return(genes %in% sel)
  }
  stopf("'%s' must be NULL, a logical vector or gene names, not %s", arg, class(sel)[1L])
}

# spec: Assembly (self-transition): conf_i = max_j graph_ij; s_i = clip(P98(conf) - conf_i, 0, 1)
# in float32.
self_transitions_of <- function(graph) {
  tg <- Matrix::t(graph)
  cnt <- diff(tg@p)
  conf <- numeric(ncol(tg))
  if (length(tg@x)) {
    mx <- vapply(split(tg@x, rep.int(seq_along(cnt), cnt)), max, 0)
    conf[cnt > 0] <- mx
  }
  conf <- as_f32(conf)
  as_f32(pmin(pmax(as_f32(np_percentile(conf, 98)) - conf, 0), 1))
}

validate_velocity_graph <- function(x, arg = "x") {
  if (!inherits(x, "scnative_velocity_graph")) {
    stopf("'%s' must be a scnative_velocity_graph (from velocity_graph()), not %s", arg,
          class(x)[1L])
  }
  if (!is.list(x) || is.null(x$graph) || is.null(x$graph_neg)) {
    stopf("'%s' is a malformed velocity graph: 'graph' and 'graph_neg' are required", arg)
  }
  n <- nrow(x$graph)
  g <- as_cell_graph(x$graph, n, paste0(arg, "$graph"), nonneg = TRUE)
  gn <- as_cell_graph(x$graph_neg, n, paste0(arg, "$graph_neg"))
  if (any(gn@x > 0)) stopf("'%s$graph_neg' must hold values <= 0", arg)
  if (any(g@x > 1) || any(gn@x < -1)) stopf("'%s': cosines must lie in [-1, 1]", arg)
  p <- x$params
  if (!is.null(p) && !is.list(p)) stopf("'%s$params' must be a list", arg)
  if (!is.null(p$sqrt_transform)) check_flag(p$sqrt_transform, paste0(arg, "$params$sqrt_transform"))
  list(graph = g, graph_neg = gn, n = n, cells = rownames(x$graph) %||% colnames(x$graph))
}

#' @exportS3Method print scnative_velocity_graph
print.scnative_velocity_graph <- function(x, ...) {
  ok <- is.list(x) && methods::is(x$graph, "Matrix") && methods::is(x$graph_neg, "Matrix")
  if (!ok) {
    cat("<scnative_velocity_graph> (malformed)\n")
    return(invisible(x))
  }
  n <- nrow(x$graph)
  cat(sprintf("<scnative_velocity_graph> %d cells, %d genes; %d positive and %d negative cosines (%.1f per cell)\n",
              n, length(x$genes), length(x$graph@x), length(x$graph_neg@x),
              (length(x$graph@x) + length(x$graph_neg@x)) / max(n, 1)))
  invisible(x)
}

# ------------------------------------------------------------------ transition_matrix

#' Transition matrix of the velocity graph (scVelo's `tl.transition_matrix`)
#'
#' Turns the cosines into transition probabilities as `scvelo.tl.transition_matrix` does
#' (kernel values rounded to float32 as upstream's, the rest in double):
#' an exponential kernel `exp(scale * c_ij)` on the stored pairs of the graph (with
#' `use_negative_cosines = TRUE`: `exp(scale * c) - 1` for positive and
#' `-(exp(scale * |c|) - 1)` for negative cosines), the cell's own self-transition on the
#' diagonal (when `self_transitions` and it is positive), transposed for `backward`, and each
#' row divided by the sum of its absolute values. Entries agree with upstream's (float32
#' throughout) to about 1e-6 relative.
#'
#' @param x A `scnative_velocity_graph` ([velocity_graph()]), or a Seurat /
#'   SingleCellExperiment object holding one (see `graph`).
#' @param scale Positive number (default 10): the kernel's width.
#' @param self_transitions Logical (default `TRUE`): put the self-transition on the diagonal.
#' @param use_negative_cosines Logical (default `FALSE`): signed kernel (as
#'   [velocity_embedding()] uses).
#' @param backward Logical (default `FALSE`): transpose (transitions into each cell).
#' @param perc,threshold `NULL` or a number: drop entries below the `perc` percentile of
#'   the entries (numpy's linear percentile), or below `threshold`.
#' @param weight_indirect_neighbors `NULL` or a number in \[0, 1\]: weight of the transitions
#'   to cells that are not direct kNN neighbours (0 keeps only the direct ones).
#' @param n_neighbors `NULL` or a whole number: weight the transitions by the row-normalised
#'   two-step connectivity of each cell's `n_neighbors` nearest neighbours (upstream's
#'   `n_neighbors`, as `pl.velocity_graph` uses it).
#' @param distances The kNN distance graph (cells x cells, or a [moments()] result), needed
#'   by the two options above.
#' @param embedding `NULL` or a cells x dimensions embedding (upstream's `basis`): the
#'   positive transitions are multiplied by a Gaussian kernel of the embedding distances
#'   (width `scale_diffusion` times their mean) and, with `0 < weight_diffusion < 1`, mixed
#'   with a narrower one (Brownian motion), then renormalised.
#' @param weight_diffusion,scale_diffusion Numbers (defaults 0 and 1), see `embedding`.
#' @param graph For objects: the name the graph was stored under by [velocity_graph()].
#' @return A cells x cells `dgCMatrix`, rows summing to 1 in absolute value (rows without
#'   entries stay empty).
#' @examples
#' sim <- simulate_velocity(n_obs = 150, n_vars = 6)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", threads = 1, progress = FALSE)
#' v <- velocity(fit, m$Ms, m$Mu)
#' vg <- velocity_graph(v, m$Ms, m$distances, velocity_genes = rep(TRUE, 6), threads = 1)
#' T <- transition_matrix(vg)
#' summary(Matrix::rowSums(T))
#' @export
transition_matrix <- function(x, scale = 10, self_transitions = TRUE,
                              use_negative_cosines = FALSE, backward = FALSE, perc = NULL,
                              threshold = NULL, weight_indirect_neighbors = NULL,
                              n_neighbors = NULL, distances = NULL, embedding = NULL,
                              weight_diffusion = 0, scale_diffusion = 1,
                              graph = "velocity_graph") {
  g <- validate_velocity_graph(as_velocity_graph(x, graph))
  check_number(scale, "scale", min = 0, min_open = TRUE)
  check_flag(self_transitions, "self_transitions")
  check_flag(use_negative_cosines, "use_negative_cosines")
  check_flag(backward, "backward")
  check_number(perc, "perc", min = 0, max = 100, allow_null = TRUE)
  check_number(threshold, "threshold", allow_null = TRUE)
  check_number(weight_indirect_neighbors, "weight_indirect_neighbors", min = 0, max = 1,
               allow_null = TRUE)
  check_number(n_neighbors, "n_neighbors", min = 1, whole = TRUE, allow_null = TRUE)
  check_number(weight_diffusion, "weight_diffusion", min = 0, max = 1)
  check_number(scale_diffusion, "scale_diffusion", min = 0, min_open = TRUE)
  n <- g$n
  if (!is.null(embedding)) E <- check_embedding(embedding, n, g$cells)
  knn <- !is.null(n_neighbors) || (!is.null(weight_indirect_neighbors) &&
                                     weight_indirect_neighbors < 1)
  if (knn) {
    if (is.null(distances)) {
      stopf("'distances' (the kNN graph) is needed with 'weight_indirect_neighbors' or 'n_neighbors'")
    }
    D <- knn_distances(distances, n)
  }
  pos <- sparse_triplets(g$graph)
  neg <- sparse_triplets(g$graph_neg)
  # spec: transition_matrix Steps 1-3, with upstream's float32 kernel values
  f32exp <- function(c) as_f32(expm1(as_f32(scale * c)))
  i <- c(pos$i, neg$i)
  j <- c(pos$j, neg$j)
  k <- if (use_negative_cosines) c(f32exp(pos$x), -f32exp(-neg$x)) else
    as_f32(f32exp(c(pos$x, neg$x)) + 1)
  if (self_transitions) {
    s <- self_transitions_of(g$graph)
    d <- which(s > 0)
    i <- c(i, d)
    j <- c(j, d)
    k <- c(k, if (use_negative_cosines) f32exp(s[d]) else as_f32(f32exp(s[d]) + 1))
  }
  # Step 4: indirect neighbours (not direct kNN neighbours, not the cell) weighted by w
  if (!is.null(weight_indirect_neighbors) && weight_indirect_neighbors < 1) {
    direct <- i == j | sparse_at(D, i, j) > 0
    k <- as_f32(ifelse(direct, k, weight_indirect_neighbors * k))
  }
  # Step 5: times get_connectivities(mode = "distances", n_neighbors, recurse_neighbors)
  if (!is.null(n_neighbors)) {
    cnt <- diff(Matrix::t(D)@p)
    Dn <- if (n_neighbors <= max(cnt)) select_nearest(D, n_neighbors) else D
    C <- methods::as(Dn > 0, "dMatrix")
    Matrix::diag(C) <- 1
    Rc <- methods::as(C + C %*% (0.5 * C), "CsparseMatrix")
    Rc@x <- pmin(pmax(Rc@x, 0), 1)
    W <- as_f32(sparse_at(Rc, i, j) * (1 / Matrix::rowSums(Rc))[i]) # scipy: x * (1 / sum)
    k <- as_f32(k * W)
  }
  # Step 6: percentile / threshold cut (float32 comparison, zeros dropped)
  if (!is.null(perc) || !is.null(threshold)) {
    thr <- if (!is.null(threshold)) threshold else np_percentile(k, perc)
    ok <- k != 0 & k >= as_f32(thr)
  } else {
    ok <- k != 0
  }
  i <- i[ok]
  j <- j[ok]
  k <- k[ok]
  if (backward) {
    tmp <- i
    i <- j
    j <- tmp
  }
  # spec: Step 8 (normalize: rows by the sum of absolute values)
  rs <- group_sums(abs(k), i, n)[, 1L]
  k <- k / rs[i]
  # Step 9: a Gaussian diffusion kernel of the embedding distances on the positive entries
  if (!is.null(embedding)) {
    pp <- k > 0
    i <- i[pp]
    j <- j[pp]
    de <- sqrt(rowSums((E[i, , drop = FALSE] - E[j, , drop = FALSE])^2))
    sd <- scale_diffusion * mean(de)
    k <- k[pp] * exp(-0.5 * de^2 / sd^2)
    if (weight_diffusion > 0 && weight_diffusion < 1) {
      k <- (1 - weight_diffusion) * k + weight_diffusion * exp(-0.5 * de^2 / (sd / 2)^2)
    }
    rs <- group_sums(k, i, n)[, 1L]
    k <- k / rs[i]
  }
  T <- Matrix::sparseMatrix(i = i, j = j, x = k, dims = c(n, n))
  if (!is.null(g$cells)) dimnames(T) <- list(g$cells, g$cells)
  T
}

# A kNN distance graph (or moments() result) as a dgCMatrix with positive entries, every cell
# with a neighbour.
knn_distances <- function(distances, n, arg = "distances") {
  distances <- moments_distances(distances, arg)
  D <- Matrix::drop0(as_cell_graph(distances, n, arg, nonneg = TRUE))
  cnt <- diff(Matrix::t(D)@p)
  if (any(cnt == 0)) {
    stopf("'%s': every cell needs a neighbour at a distance > 0; cell %d has none", arg,
          which(cnt == 0)[1L])
  }
  D
}

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

# ------------------------------------------------------------------ velocity_embedding

#' Velocities projected onto an embedding (scVelo's `tl.velocity_embedding`)
#'
#' For each cell, the expected displacement in the embedding under the transition matrix
#' minus its mean over the neighbours, as `scvelo.tl.velocity_embedding` does: with
#' `p_ij` the signed transition probabilities (diagonal removed) and `d_ij` the unit vector
#' from cell `i` to `j`, `v_i = sum_j p_ij d_ij - mean_j(p_ij) sum_j d_ij`. With `autoscale`
#' the vectors are divided by `3 A`, the arrow scale matplotlib's quiver would choose for
#' them in a default figure (so they match upstream's `obsm["velocity_umap"]`; the factor
#' depends on the figure's aspect ratio, `aspect`).
#'
#' @param x A `scnative_velocity_graph` ([velocity_graph()]), or a Seurat /
#'   SingleCellExperiment object after [velocity_graph()].
#' @param embedding A cells x dimensions numeric matrix (e.g. UMAP coordinates), one row
#'   per cell of the graph (same order; row names, when both have them, must match).
#' @param T `NULL` (the default: [transition_matrix()] with `scale`, `self_transitions` and
#'   `use_negative_cosines = TRUE`) or a cells x cells transition matrix.
#' @param scale,self_transitions,use_negative_cosines Passed to [transition_matrix()].
#' @param autoscale Logical (default `TRUE`): scale as upstream.
#' @param aspect Positive number: height / width of the axes of the default matplotlib
#'   figure upstream measures; 0.7451612903 (matplotlib's defaults) or 0.6495726496 (after
#'   `scv.set_figure_params()`, as in the scVelo tutorials).
#' @param all_comps Logical (default `TRUE`): all columns of `embedding`; `FALSE` the first
#'   two.
#' @param retain_scale Logical: keep the displacements' lengths (not unit vectors) and scale
#'   each cell's vector by `clip(10 p, 0, 1)`, `p` the projection of its velocity on the
#'   direction of its expected displacement `T Ms - Ms` (upstream's `retain_scale`; needs
#'   `velocity`, `Ms`).
#' @param direct_pca_projection Logical: project the centred velocities on the PCA
#'   `loadings` instead (exploratory; no transition matrix; `embedding` should be the PCA
#'   scores).
#' @param velocity,Ms,loadings For those two options: the velocities ([velocity()] or a genes
#'   x cells matrix), the genes x cells `Ms`, the genes x components PCA loadings (scanpy's
#'   `varm["PCs"]`). The velocity genes are the graph's.
#' @param ... Passed to the default method.
#' @return A cells x dimensions matrix of embedded velocities (`NA` rows for cells without
#'   transitions), with attribute `"scale"` (the divisor `3 A`, 1 without autoscale).
#'   Object methods: the object with the matrix stored as reduction / reducedDim `name`.
#' @examples
#' sim <- simulate_velocity(n_obs = 150, n_vars = 6)
#' m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
#' fit <- recover_dynamics(m$Ms, m$Mu, var_names = "all", threads = 1, progress = FALSE)
#' v <- velocity(fit, m$Ms, m$Mu)
#' vg <- velocity_graph(v, m$Ms, m$distances, velocity_genes = rep(TRUE, 6), threads = 1)
#' emb <- prcomp(t(m$Ms))$x[, 1:2]
#' head(velocity_embedding(vg, emb))
#' @export
velocity_embedding <- function(x, ...) UseMethod("velocity_embedding")

#' @rdname velocity_embedding
#' @export
velocity_embedding.default <- function(x, embedding, T = NULL, scale = 10,
                                       self_transitions = TRUE, use_negative_cosines = TRUE,
                                       autoscale = TRUE, aspect = 0.7451612903,
                                       all_comps = TRUE, retain_scale = FALSE,
                                       direct_pca_projection = FALSE, velocity = NULL,
                                       Ms = NULL, loadings = NULL, ...) {
  g <- validate_velocity_graph(x)
  g$genes <- x$genes
  n <- g$n
  E <- check_embedding(embedding, n, g$cells)
  check_flag(autoscale, "autoscale")
  check_flag(all_comps, "all_comps")
  check_flag(retain_scale, "retain_scale")
  check_flag(direct_pca_projection, "direct_pca_projection")
  check_number(aspect, "aspect", min = 0, min_open = TRUE)
  if (!all_comps) E <- E[, 1:2, drop = FALSE]
  if (direct_pca_projection) {
    V <- pca_projection(velocity, loadings, g, ncol(E))
  } else {
    if (is.null(T)) {
      T <- transition_matrix(x, scale = scale, self_transitions = self_transitions,
                             use_negative_cosines = use_negative_cosines)
    } else {
      T <- as_cell_graph(T, n, "T", cells = g$cells)
    }
    V <- embed_velocities(T, E, normalise = !retain_scale)
    if (retain_scale) V <- V * retained_scale(T, velocity, Ms, g)
  }
  dimnames(V) <- list(rownames(embedding) %||% g$cells, colnames(E))
  a <- 1
  if (autoscale) {
    a <- 3 * quiver_scale(E, V, aspect)
    if (is.finite(a) && a > 0) V <- V / a
  }
  attr(V, "scale") <- a
  V
}

# The velocity genes' velocities (cells in columns) for the options that use them: the genes
# of the graph when it names them, else the complete rows.
embedding_velocity <- function(velocity, g, arg = "velocity") {
  if (is.null(velocity)) stopf("'%s' (the velocities: velocity() or a genes x cells matrix) is needed", arg)
  if (inherits(velocity, "scnative_velocity")) velocity <- velocity$velocity
  if (!is.matrix(velocity) || !is.numeric(velocity) || ncol(velocity) != g$n) {
    stopf("'%s' must be a genes x cells numeric matrix with %d columns", arg, g$n)
  }
  keep <- !is.na(rowSums(velocity))
  if (is.character(g$genes) && !is.null(rownames(velocity))) {
    keep <- keep & rownames(velocity) %in% g$genes
  }
  if (!any(keep)) stopf("'%s' has no gene with a velocity in every cell", arg)
  keep
}

# spec: Non-default branches, direct_pca_projection: (V - gene means over cells) %*% loadings.
pca_projection <- function(velocity, loadings, g, n_comps) {
  keep <- embedding_velocity(velocity, g)
  if (inherits(velocity, "scnative_velocity")) velocity <- velocity$velocity
  if (!is.matrix(loadings) || !is.numeric(loadings) || nrow(loadings) != nrow(velocity) ||
      ncol(loadings) < n_comps || anyNA(loadings)) {
    stopf("'loadings' must be a genes x components matrix (the PCA loadings, one row per gene of 'velocity', at least %d columns, no NA)",
          n_comps)
  }
  V <- t(velocity[keep, , drop = FALSE])
  V <- sweep(V, 2L, colMeans(V))
  V %*% loadings[keep, seq_len(n_comps), drop = FALSE]
}

# spec: Non-default branches, retain_scale: clip(10 (V_i . D_i) / |D_i|, 0, 1) with
# D = T Ms - Ms over the velocity genes.
retained_scale <- function(T, velocity, Ms, g) {
  keep <- embedding_velocity(velocity, g)
  if (inherits(velocity, "scnative_velocity")) velocity <- velocity$velocity
  Ms <- as_checked_matrix(Ms, "Ms")
  if (!identical(dim(Ms), dim(velocity))) stopf("'Ms' must have the dimensions of 'velocity'")
  X <- Ms[keep, , drop = FALSE]
  Matrix::diag(T) <- 0 # the projection's T: no self-transitions
  D <- as.matrix(X %*% Matrix::t(Matrix::drop0(T))) - X
  V <- velocity[keep, , drop = FALSE]
  pmin(pmax(10 * colSums(V * D) / sqrt(colSums(D^2)), 0), 1)
}

check_embedding <- function(embedding, n, cells, arg = "embedding") {
  if (is.data.frame(embedding)) embedding <- as.matrix(embedding)
  if (!is.matrix(embedding) || !is.numeric(embedding)) {
    stopf("'%s' must be a numeric cells x dimensions matrix, not %s", arg, class(embedding)[1L])
  }
  if (nrow(embedding) != n) stopf("'%s' must have %d rows (cells), not %d", arg, n, nrow(embedding))
  if (ncol(embedding) < 2L) stopf("'%s' must have at least 2 columns", arg)
  if (!is.null(cells) && !is.null(rownames(embedding)) && !identical(rownames(embedding), cells)) {
    stopf("the rows of '%s' are not the graph's cells, in order", arg)
  }
  if (anyNA(embedding) || any(is.infinite(embedding))) {
    stopf("'%s' contains NA or infinite values", arg)
  }
  storage.mode(embedding) <- "double"
  embedding
}

# spec: Projection. T's diagonal removed; per row: sum p d - mean(p) sum d over stored entries
# (d the unit displacement, or the raw one without `normalise`).
embed_velocities <- function(T, E, normalise = TRUE) {
  tr <- sparse_triplets(Matrix::t(T)) # i = to-cell, j = from-cell
  from <- tr$j
  to <- tr$i
  p <- tr$x
  off <- from != to
  from <- from[off]
  to <- to[off]
  p <- p[off]
  n <- nrow(E)
  D <- E[to, , drop = FALSE] - E[from, , drop = FALSE]
  if (normalise) {
    nr <- sqrt(rowSums(D^2))
    D <- D / nr
    D[nr == 0, ] <- 0
  }
  kk <- tabulate(from, n)
  sp <- group_sums(p, from, n)[, 1L]
  spd <- group_sums(p * D, from, n)
  sd <- group_sums(D, from, n)
  V <- matrix(NA_real_, n, ncol(E))
  has <- kk > 0
  V[has, ] <- spd[has, , drop = FALSE] - (sp[has] / kk[has]) * sd[has, , drop = FALSE]
  V
}

# matplotlib's quiver autoscale in a default figure (spec: Autoscale, exact): returns A.
quiver_scale <- function(E, V, aspect) {
  sf <- max(abs(E))
  if (!is.finite(sf) || sf == 0) return(1)
  p <- E[, 1:2, drop = FALSE] / sf
  rng <- function(z) {
    lo <- min(z)
    hi <- max(z)
    d <- hi - lo
    (hi + 0.05 * d) - (lo - 0.05 * d)
  }
  rx <- rng(p[, 1L])
  ry <- rng(p[, 2L])
  if (rx == 0 || ry == 0) return(1)
  ok <- is.finite(V[, 1L]) & is.finite(V[, 2L])
  if (!any(ok)) return(1)
  len <- sqrt((V[ok, 1L] / rx)^2 + (aspect * V[ok, 2L] / ry)^2)
  s <- 1.8 * max(10, sqrt(nrow(V))) * mean(len) / sf
  if (!is.finite(s) || s <= 0) 1 else s # zero vectors: nothing to scale (not 0/0)
}
