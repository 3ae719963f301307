# Argument checks shared by every model. Each names the argument and says what is wrong.

stopf <- function(fmt, ..., call. = FALSE) {
  stop(sprintf(fmt, ...), call. = call.)
}

warnf <- function(fmt, ..., call. = FALSE) {
  warning(sprintf(fmt, ...), call. = call.)
}

check_flag <- function(x, arg) {
  if (!is.logical(x) || length(x) != 1L || is.na(x)) {
    stopf("'%s' must be TRUE or FALSE", arg)
  }
  invisible(x)
}

# A single finite number in [min, max] (or (min, max] with min_open = TRUE). Whole numbers are
# at most .Machine$integer.max unless `max` says otherwise: they become C ints, and a larger
# one would turn into NA (or wrap) on the way.
check_number <- function(x, arg, min = -Inf, max = if (whole) .Machine$integer.max else Inf,
                         whole = FALSE, min_open = FALSE, allow_null = FALSE) {
  if (is.null(x) && allow_null) return(invisible(x))
  if (!is.numeric(x) || is.object(x) || length(x) != 1L || is.na(x) || !is.finite(x)) {
    stopf("'%s' must be a single finite number", arg)
  }
  if (whole && x != round(x)) stopf("'%s' must be a whole number, not %s", arg, format(x))
  if (min_open && x <= min) stopf("'%s' must be greater than %s, not %s", arg, format(min), format(x))
  if (!min_open && x < min) stopf("'%s' must be at least %s, not %s", arg, format(min), format(x))
  if (x > max) stopf("'%s' must be at most %s, not %s", arg, format(max), format(x))
  invisible(x)
}

check_string <- function(x, arg, allow_null = FALSE) {
  if (is.null(x) && allow_null) return(invisible(x))
  if (!is.character(x) || length(x) != 1L || is.na(x)) stopf("'%s' must be a single string", arg)
  invisible(x)
}

# One of `choices` (a vector default means its first element), with a clear error otherwise.
check_choice <- function(x, choices, arg) {
  if (identical(x, choices)) return(choices[1L])
  if (!is.character(x) || length(x) != 1L || is.na(x) || !x %in% choices) {
    stopf("'%s' must be one of %s", arg, paste0("'", choices, "'", collapse = ", "))
  }
  x
}

# A cells x cells graph `g` whose row or column names, where it has them, must be `cells` in
# order (a graph of the same size but of other cells, or reordered, would be used silently).
check_graph_cells <- function(g, cells, arg) {
  if (is.null(cells)) return(invisible(g))
  dn <- dimnames(g)
  for (k in 1:2) {
    if (!is.null(dn[[k]]) && !identical(as.character(dn[[k]]), as.character(cells))) {
      stopf("the %s of '%s' are not the cells (%s, ...), in order", c("rows", "columns")[k],
            arg, paste(utils::head(cells, 3L), collapse = ", "))
    }
  }
  invisible(g)
}

# A factor whose codes and levels agree. A factor edited through unclass() or attr() can hold
# codes outside 1..nlevels or duplicated levels, which R's own factor code reports as
# "malformed factor" (or silently miscounts); other vectors pass.
check_factor <- function(x, arg) {
  if (!is.factor(x)) return(invisible(x))
  lev <- attr(x, "levels")
  codes <- unclass(x)
  if (!is.integer(codes) || !is.character(lev) || anyNA(lev) || anyDuplicated(lev)) {
    stopf("'%s' is a malformed factor: its levels must be distinct strings", arg)
  }
  if (any(codes < 1L | codes > length(lev), na.rm = TRUE)) {
    stopf("'%s' is a malformed factor: codes must lie in 1..%d (its number of levels)", arg,
          length(lev))
  }
  invisible(x)
}

# A Matrix (e.g. a dgCMatrix) whose slots were edited without validObject() can hold column
# pointers or row indices past the end of its arrays, and Matrix's C code (coercions, subsetting)
# and ours trust them; so a Matrix input is validated before any other use. Other inputs pass.
check_valid_matrix <- function(x, arg) {
  if (!methods::is(x, "Matrix")) return(invisible(x))
  msg <- tryCatch({
    methods::validObject(x)
    NULL
  }, error = function(e) sub("^invalid class .* object: ", "", conditionMessage(e)))
  if (!is.null(msg)) stopf("'%s' is not a valid sparse matrix: %s", arg, msg)
  invisible(x)
}

# A numeric matrix (dense or a Matrix) with no NA/NaN/Inf; optionally non-negative or
# integer-valued; optionally no |value| above `max_abs` (with the reason `why`). Returns a dense
# double matrix with the dimnames kept.
as_checked_matrix <- function(x, arg, nonneg = FALSE, integer_valued = FALSE, dense = TRUE,
                              max_abs = NULL, why = NULL) {
  if (is.data.frame(x)) x <- as.matrix(x)
  if (inherits(x, "Matrix")) {
    check_valid_matrix(x, arg)
    vals <- methods::as(x, "generalMatrix")
    v <- if (methods::is(vals, "sparseMatrix")) methods::as(vals, "CsparseMatrix")@x else as.vector(vals)
  } else if (is.matrix(x) && (is.numeric(x) || is.logical(x))) {
    v <- x
  } else {
    stopf("'%s' must be a numeric matrix or a Matrix (dgCMatrix), not %s", arg, class(x)[1L])
  }
  flags <- .Call(C_scnative_value_flags, v) # NA, Inf, negative, non-integer; no temporaries
  if (flags[1L]) stopf("'%s' contains NA/NaN values", arg)
  if (flags[2L]) stopf("'%s' contains infinite values", arg)
  if (nonneg && flags[3L]) stopf("'%s' contains negative values", arg)
  if (integer_valued && flags[4L]) stopf("'%s' must hold integer counts; it has non-integer values", arg)
  if (!is.null(max_abs) && flags[5L] > max_abs) {
    stopf("'%s' has values up to %.3g; at most %.3g are supported (%s): rescale it", arg,
          flags[5L], max_abs, why)
  }
  if (!dense) return(x)
  out <- as.matrix(x)
  if (!is.double(out)) storage.mode(out) <- "double" # (a no-op assignment would still copy)
  out
}

# The seed handed to the C core: a whole number in [0, 2^53). NULL draws one from R's RNG,
# so set.seed() makes runs reproducible.
resolve_seed <- function(seed) {
  if (is.null(seed)) return(floor(stats::runif(1) * 2^31))
  check_number(seed, "seed", min = 0, max = 2^53 - 1, whole = TRUE)
  as.double(seed)
}

# Counter-based random numbers from the C core (used by tests and simulations).
rng_normal <- function(n, seed, stream = 0, offset = 0, threads = NULL) {
  .Call(C_scnative_rng, resolve_seed(seed), as.double(stream), as.double(offset), as.double(n),
        TRUE, resolve_threads(threads))
}

rng_uniform <- function(n, seed, stream = 0, offset = 0, threads = NULL) {
  .Call(C_scnative_rng, resolve_seed(seed), as.double(stream), as.double(offset), as.double(n),
        FALSE, resolve_threads(threads))
}

# op(A) %*% op(B) through the package's BLAS wrapper. `out`: an existing double matrix of the
# result's shape to overwrite in place (benchmarks only).
gemm <- function(A, B, transA = FALSE, transB = FALSE, out = NULL) {
  storage.mode(A) <- "double"
  storage.mode(B) <- "double"
  .Call(C_scnative_dgemm, A, B, transA, transB, out)
}

`%||%` <- function(a, b) if (is.null(a)) b else a
