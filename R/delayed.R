# DelayedArray inputs (HDF5Array and other on-disk or delayed matrices, Bioconductor): the
# counts are read by blocks of columns into small dgCMatrix blocks, never as a whole. The
# Bioconductor packages are suggested only; they are loaded at run time.

# Whether `x` is a DelayedArray (a DelayedMatrix, HDF5Matrix, ...). An object of that class
# exists only when DelayedArray is loaded, so no package is needed to answer FALSE.
is_delayed <- function(x) isS4(x) && methods::is(x, "DelayedArray")

# `what`: the input as named in errors ("'x'", "assay 'counts'").
need_delayed <- function(what) {
  if (!requireNamespace("DelayedArray", quietly = TRUE)) {
    stopf("%s is a DelayedArray: the Bioconductor package 'DelayedArray' is needed to read it (install DelayedArray, and HDF5Array for HDF5 files)",
          what)
  }
}

# Checks what can be checked without reading a DelayedArray: a matrix of numbers with at least
# one row and column. The values are checked block by block as they are read.
delayed_check <- function(x, arg) {
  need_delayed(sprintf("'%s'", arg))
  if (length(dim(x)) != 2L) {
    stopf("'%s' must be a 2-dimensional DelayedArray (a DelayedMatrix), not %d-dimensional",
          arg, length(dim(x)))
  }
  type <- DelayedArray::type(x)
  if (!type %in% c("double", "integer", "logical")) {
    stopf("'%s' must hold numbers, not %s values", arg, type)
  }
  if (nrow(x) < 1L || ncol(x) < 1L) stopf("'%s' must have at least one row and one column", arg)
  invisible(x)
}

# Columns per block: DelayedArray's block size (getAutoBlockSize(), 100 MB by default) of doubles.
delayed_block_cols <- function(x) {
  as.integer(max(1, min(ncol(x), floor(DelayedArray::getAutoBlockSize() / (8 * nrow(x))))))
}

# Columns `cols` (increasing) of `x` as a dgCMatrix, read in pieces of at most one block; the
# values are checked as for in-memory input (errors name `arg`). Dense seeds are read dense and
# checked before they are made sparse, sparse ones as their stored values: DelayedArray's
# coercion to a sparse matrix drops NA values, so checking its result would miss them.
delayed_read_cols <- function(x, cols, arg, integer_valued = FALSE) {
  w <- delayed_block_cols(x)
  sparse <- DelayedArray::is_sparse(x)
  pieces <- lapply(split(cols, (seq_along(cols) - 1L) %/% w), function(cc) {
    m <- if (sparse) delayed_sparse_cols(x, cc) else as.matrix(x[, cc, drop = FALSE])
    what <- if (length(cc) == 1L) {
      sprintf("'%s' (column %d)", arg, cc)
    } else {
      sprintf("'%s' (columns %d to %d)", arg, cc[1L], cc[length(cc)])
    }
    delayed_check_values(m, arg, what, integer_valued)
    if (!is.matrix(m)) {
      m <- as_dgc(m)
      m@Dimnames <- list(NULL, NULL)
      return(m)
    }
    # a base matrix straight to CSC in one pass (Matrix's coercions are several times slower)
    s <- .Call(C_scnative_dense_csc, m)
    methods::new("dgCMatrix", p = s$p, i = s$i, x = s$x, Dim = dim(m))
  })
  if (length(pieces) == 1L) pieces[[1L]] else do.call(cbind, pieces)
}

# Columns `cc` of a sparse DelayedArray as a dgCMatrix from its stored (non-zero) values.
delayed_sparse_cols <- function(x, cc) {
  s <- DelayedArray::extract_sparse_array(x, list(NULL, cc))
  if (!methods::is(s, "SparseArraySeed")) return(methods::as(s, "CsparseMatrix"))
  ij <- DelayedArray::nzindex(s)
  Matrix::sparseMatrix(i = ij[, 1L], j = ij[, 2L], x = as.double(DelayedArray::nzdata(s)),
                       dims = dim(s))
}

# The value checks of as_checked_matrix() with the place in the file in the message.
delayed_check_values <- function(m, arg, what, integer_valued) {
  tryCatch(as_checked_matrix(m, arg, nonneg = TRUE, integer_valued = integer_valued,
                             dense = FALSE),
           error = function(e) {
             stopf("%s", sub(sprintf("'%s'", arg), what, conditionMessage(e), fixed = TRUE))
           })
}

# Calls f(block, cols) for consecutive column blocks of x (in column order).
delayed_col_blocks <- function(x, f, arg, integer_valued = FALSE) {
  n <- ncol(x)
  w <- delayed_block_cols(x)
  for (s in seq(1L, n, by = w)) {
    cols <- s:min(n, s + w - 1L)
    f(delayed_read_cols(x, cols, arg, integer_valued), cols)
  }
  invisible(NULL)
}

# The whole DelayedArray as a dgCMatrix (sparse), read and checked block by block; dimnames kept.
delayed_as_dgc <- function(x, arg, integer_valued = FALSE) {
  delayed_check(x, arg)
  blocks <- list()
  delayed_col_blocks(x, function(b, cols) blocks[[length(blocks) + 1L]] <<- b, arg,
                     integer_valued)
  m <- if (length(blocks) == 1L) blocks[[1L]] else do.call(cbind, blocks)
  dimnames(m) <- dimnames(x)
  m
}

# Per-row number of non-zero values and sum of a DelayedArray (filter_genes()), block-wise.
delayed_row_stats <- function(x, arg) {
  delayed_check(x, arg)
  nz <- numeric(nrow(x))
  tot <- numeric(nrow(x))
  delayed_col_blocks(x, function(b, cols) {
    nz <<- nz + Matrix::rowSums(b > 0)
    tot <<- tot + Matrix::rowSums(b)
  }, arg)
  names(nz) <- names(tot) <- rownames(x)
  list(n_cells = nz, total = tot)
}

# ---- reference_signatures() --------------------------------------------------------------------

# One pass over the counts (genes x cells DelayedArray): checks every value, and computes the
# constants the regression model's C state needs (per cell sum lgamma(x + 1), per gene the
# largest count) and, when `averages`, the per-type average counts exactly as cluster_averages()
# does on the in-memory matrix (same products, added in the same order).
ref_stream_pass <- function(x, labels, averages) {
  G <- nrow(x)
  lgx <- numeric(ncol(x))
  vmax <- integer(G)
  lab <- as.integer(labels) - 1L
  n <- tabulate(labels, nlevels(labels))
  w <- 1 / n
  acc <- if (averages) matrix(0, G, nlevels(labels)) else NULL
  delayed_col_blocks(x, function(b, cols) {
    r <- .Call(C_scnative_reg_block_stats, b@p, b@i, b@x, G,
               if (averages) lab[cols] else NULL, w, acc)
    lgx[cols] <<- r$lgx
    vmax <<- pmax(vmax, r$vmax)
    if (averages) acc <<- r$acc
  }, "x", integer_valued = TRUE)
  if (averages) dimnames(acc) <- list(rownames(x), levels(labels))
  list(stats = list(lgx = lgx, vmax = as.integer(vmax)), averages = acc)
}

# Epochs of a streaming fit: the in-memory path's minibatches (the same shuffles), each read
# from disk and handed to the C step in the minibatch's order. Returns list(loss, steps).
ref_stream_epochs <- function(state, x, n_epochs, epoch0, steps, optv, bs, seed, threads,
                              on_step = NULL) {
  N <- ncol(x)
  nsteps <- N %/% bs + (N %% bs > 0L)
  loss <- numeric(n_epochs)
  for (it in seq_len(n_epochs)) {
    perm <- if (bs < N) {
      .Call(C_scnative_reg_perm, state, seed, epoch0 + it - 1)
    } else {
      seq_len(N) - 1L
    }
    tot <- 0
    for (k in seq_len(nsteps)) {
      cells <- perm[(k - 1L) * bs + seq_len(min(bs, N - (k - 1L) * bs))]
      sc <- sort(cells)
      blk <- delayed_read_cols(x, sc + 1L, "x", integer_valued = TRUE)
      tot <- tot + .Call(C_scnative_reg_step, state, cells, match(cells, sc) - 1L, blk@p, blk@i,
                         blk@x, as.double(steps), optv, seed, threads)
      steps <- steps + 1
      if (!is.null(on_step)) on_step(steps)
    }
    loss[it] <- tot / nsteps
  }
  list(loss = loss, steps = steps)
}
