# Writing AnnData .h5ad files with hdf5r (issue 2), in the encoding anndata 0.12 writes; the
# orientation notes and the reader are in h5ad.R.

# hdf5r builds an R6 object per datatype, which dominates the time of writing many small
# elements; write_h5ad() fills this cache once per call.
h5ad_type_cache <- new.env(parent = emptyenv())

h5ad_str_type <- function() {
  if (!is.null(h5ad_type_cache$str)) return(h5ad_type_cache$str)
  t <- hdf5r::H5T_STRING$new(type = "c", size = Inf)
  t$set_cset("UTF-8")
  t
}

h5ad_bool_type <- function() {
  h5ad_type_cache$bool %||% hdf5r::H5T_LOGICAL$new(include_NA = FALSE)
}

h5_set_attr <- function(obj, name, value, type = c("str", "int64", "bool", "float64"),
                        scalar = length(value) == 1L) {
  type <- match.arg(type)
  dt <- switch(type,
               str = h5ad_str_type(),
               int64 = hdf5r::h5types$H5T_STD_I64LE,
               bool = h5ad_bool_type(),
               float64 = hdf5r::h5types$H5T_IEEE_F64LE)
  space <- if (scalar) hdf5r::H5S$new("scalar") else hdf5r::H5S$new("simple", dims = length(value), maxdims = length(value))
  if (type == "bool") value <- as.logical(value)
  if (type == "int64") value <- as.integer(value)
  a <- obj$create_attr(name, robj = value, dtype = dt, space = space)
  a$close()
  invisible(NULL)
}

h5_set_encoding <- function(obj, type, version) {
  h5_set_attr(obj, "encoding-type", type)
  h5_set_attr(obj, "encoding-version", version)
}

h5_new_group <- function(parent, name, enc = "dict", version = "0.1.0") {
  g <- h5_track(parent$create_group(name))
  if (!is.null(enc)) h5_set_encoding(g, enc, version)
  g
}

# A dataset from an R vector or an R matrix already in hdf5r orientation (HDF5 dims reversed).
h5_write_array <- function(parent, name, value, kind = NULL, scalar = FALSE) {
  kind <- kind %||% if (is.character(value)) "str" else if (is.logical(value)) "bool"
          else if (is.integer(value)) "int" else "double"
  dt <- switch(kind,
               str = h5ad_str_type(),
               bool = h5ad_bool_type(),
               int = hdf5r::h5types$H5T_STD_I32LE,
               int8 = hdf5r::h5types$H5T_STD_I8LE,
               int16 = hdf5r::h5types$H5T_STD_I16LE,
               int64 = hdf5r::h5types$H5T_STD_I64LE,
               double = hdf5r::h5types$H5T_IEEE_F64LE)
  if (kind == "str") value <- enc2utf8(as.character(value))
  if (scalar) {
    d <- h5_track(parent$create_dataset(name, robj = value, dtype = dt,
                                        space = hdf5r::H5S$new("scalar"), chunk_dims = NULL))
  } else {
    dims <- dim(value) %||% length(value)
    d <- h5_track(parent$create_dataset(name, robj = value, dtype = dt,
                                        space = hdf5r::H5S$new("simple", dims = dims, maxdims = dims),
                                        chunk_dims = NULL))
  }
  d
}

h5ad_write_vector <- function(parent, name, v) {
  if (is.factor(v)) {
    g <- h5_new_group(parent, name, "categorical", "0.2.0")
    h5_set_attr(g, "ordered", is.ordered(v), "bool")
    lev <- levels(v)
    codes <- as.integer(v) - 1L
    codes[is.na(codes)] <- -1L
    kind <- if (length(lev) < 128L) "int8" else if (length(lev) < 32768L) "int16" else "int"
    d <- h5_write_array(g, "categories", lev, "str")
    h5_set_encoding(d, "string-array", "0.2.0")
    d <- h5_write_array(g, "codes", codes, kind)
    h5_set_encoding(d, "array", "0.2.0")
    return(invisible(NULL))
  }
  if ((is.logical(v) || is.integer(v)) && anyNA(v)) {
    g <- h5_new_group(parent, name, if (is.logical(v)) "nullable-boolean" else "nullable-integer",
                      "0.1.0")
    mask <- is.na(v)
    vals <- v
    vals[mask] <- if (is.logical(v)) FALSE else 0L
    d <- h5_write_array(g, "values", vals)
    h5_set_encoding(d, "array", "0.2.0")
    d <- h5_write_array(g, "mask", mask, "bool")
    h5_set_encoding(d, "array", "0.2.0")
    return(invisible(NULL))
  }
  if (is.character(v)) {
    # Variable-length HDF5 strings cannot hold NA: such columns go as categoricals.
    if (anyNA(v)) return(h5ad_write_vector(parent, name, factor(v)))
    d <- h5_write_array(parent, name, v, "str")
    h5_set_encoding(d, "string-array", "0.2.0")
    return(invisible(NULL))
  }
  d <- h5_write_array(parent, name, if (is.integer(v) || is.logical(v)) v else as.double(v))
  h5_set_encoding(d, "array", "0.2.0")
  invisible(NULL)
}

h5ad_write_df <- function(parent, name, df, index) {
  g <- h5_new_group(parent, name, "dataframe", "0.2.0")
  h5_set_attr(g, "_index", "_index")
  cols <- names(df)
  if (length(cols)) {
    h5_set_attr(g, "column-order", cols, scalar = FALSE)
  } else {
    # anndata writes an empty float64 array here.
    a <- g$create_attr("column-order", robj = NULL, dtype = hdf5r::h5types$H5T_IEEE_F64LE,
                       space = hdf5r::H5S$new("simple", dims = 0L, maxdims = 0L))
    a$close()
  }
  d <- h5_write_array(g, "_index", index, "str")
  h5_set_encoding(d, "string-array", "0.2.0")
  for (nm in cols) h5ad_write_vector(g, nm, df[[nm]])
  invisible(g)
}

# A matrix in numpy orientation A (rows = first HDF5 axis). Sparse -> CSR of A.
h5ad_write_matrix <- function(parent, name, A) {
  if (methods::is(A, "sparseMatrix")) {
    B <- h5ad_as_dgc(Matrix::t(A))  # CSC of t(A) == CSR of A
    h5ad_write_csr_from_csc_t(parent, name, B, dim(A))
  } else {
    A <- as.matrix(A)
    d <- h5_write_array(parent, name, t(A))
    h5_set_encoding(d, "array", "0.2.0")
  }
  invisible(NULL)
}

h5ad_as_dgc <- function(x) {
  if (inherits(x, "dgCMatrix")) return(x)
  x <- methods::as(x, "CsparseMatrix")
  x <- methods::as(x, "generalMatrix")
  methods::as(x, "dMatrix")
}

# B is the dgCMatrix of t(A); its CSC arrays are A's CSR arrays.
h5ad_write_csr_from_csc_t <- function(parent, name, B, shape) {
  g <- h5_new_group(parent, name, "csr_matrix", "0.1.0")
  h5_set_attr(g, "shape", shape, "int64", scalar = FALSE)
  h5_write_array(g, "data", as.double(B@x))
  h5_write_array(g, "indices", as.integer(B@i))
  h5_write_array(g, "indptr", as.integer(B@p))
  invisible(g)
}

h5ad_write_uns <- function(parent, name, v, what) {
  if (is.data.frame(v)) {
    return(h5ad_write_df(parent, name, v, rownames(v) %||% as.character(seq_len(nrow(v)) - 1L)))
  }
  if (is.list(v)) {
    g <- h5_new_group(parent, name)
    for (nm in names(v)) h5ad_write_uns(g, nm, v[[nm]], paste0(what, "$", nm))
    return(invisible(NULL))
  }
  if (is.matrix(v) || methods::is(v, "Matrix")) return(h5ad_write_matrix(parent, name, v))
  if (is.factor(v)) return(h5ad_write_vector(parent, name, v))
  if (length(v) == 1L && !anyNA(v)) {
    d <- h5_write_array(parent, name, v, scalar = TRUE)
    h5_set_encoding(d, if (is.character(v)) "string" else "numeric-scalar", "0.2.0")
    return(invisible(NULL))
  }
  h5ad_write_vector(parent, name, v)
}

h5ad_check_uns <- function(v, what) {
  if (is.data.frame(v)) return(invisible())
  if (is.list(v)) {
    nms <- names(v)
    if (length(v) && (is.null(nms) || any(!nzchar(nms)) || anyNA(nms) || anyDuplicated(nms))) {
      stopf("'%s' must be a list with unique non-empty names (unnamed lists cannot be stored in .h5ad)", what)
    }
    for (nm in nms) h5ad_check_uns(v[[nm]], paste0(what, "$", nm))
    return(invisible())
  }
  ok <- is.null(v) || is.atomic(v) && (is.numeric(v) || is.character(v) || is.logical(v) ||
                                          is.factor(v)) || methods::is(v, "Matrix")
  if (!ok || is.null(v)) {
    stopf("'%s' must be a numeric, character, logical or factor vector, a matrix, a data frame or a named list, not %s",
          what, class(v)[1L])
  }
  if (is.complex(v)) stopf("'%s' must not be complex", what)
  invisible()
}

h5ad_check_df <- function(df, arg, n) {
  if (!is.data.frame(df)) stopf("'%s' must be a data frame or NULL", arg)
  for (nm in names(df)) {
    v <- df[[nm]]
    if (!(is.factor(v) || is.character(v) || is.numeric(v) || is.logical(v)) || !is.null(dim(v))) {
      stopf("column '%s' of '%s' must be a factor, character, numeric or logical vector, not %s",
            nm, arg, class(v)[1L])
    }
    if (is.complex(v)) stopf("column '%s' of '%s' must not be complex", nm, arg)
  }
  if (!is.null(n) && nrow(df) != n) stopf("'%s' has %d rows but the matrices have %d", arg, nrow(df), n)
  if (anyNA(names(df)) || any(!nzchar(names(df))) || anyDuplicated(names(df))) {
    stopf("'%s' must have unique non-empty column names", arg)
  }
  if (any(names(df) %in% "_index")) stopf("'%s' must not have a column named '_index'", arg)
  invisible(df)
}

h5ad_check_matrix <- function(m, what) {
  ok <- (is.matrix(m) && (is.numeric(m) || is.logical(m))) || methods::is(m, "Matrix")
  if (!ok) stopf("'%s' must be a numeric matrix or a Matrix (e.g. dgCMatrix), not %s", what, class(m)[1L])
  check_valid_matrix(m, what)
  if (is.matrix(m) && is.complex(m)) stopf("'%s' must not be complex", what)
}

#' Write an AnnData `.h5ad` file
#'
#' Writes matrices, cell and gene annotations in the encoding that anndata 0.12 writes
#' (`encoding-type` / `encoding-version` attributes), so that `anndata.read_h5ad()` in Python
#' reads the file. Matrices follow scnative's genes x cells convention and are stored
#' transposed as AnnData's cells x genes: dense matrices as dense arrays, sparse `Matrix`
#' objects as CSR (a genes x cells `dgCMatrix` is written without a transpose).
#'
#' Factors become categoricals (`NA` as code -1, ordered factors as ordered categoricals),
#' character columns string arrays (a character column with `NA` is written as a categorical,
#' since HDF5 strings cannot hold a missing value), logical and integer columns with `NA` use
#' AnnData's nullable encodings, and numeric `NA` is stored as `NaN`. The file is written to a
#' temporary file next to `path` and renamed, so a failed write leaves nothing behind.
#'
#' @param path Character of length 1: the file to write.
#' @param X `NULL`, a genes x cells numeric matrix or `Matrix`, or a `scnative_h5ad` object (as
#'   returned by [read_h5ad()]) whose parts are used for every argument left at its default.
#' @param layers Named list of genes x cells matrices.
#' @param obs,var `NULL` or data frames with one row per cell / gene; the rownames are the
#'   cell / gene names (defaulting to the matrices' dimnames, else `"0"`, `"1"`, ...). Columns
#'   may be factor, character, numeric or logical.
#' @param obsm Named list of matrices with one row per cell (e.g. PCA coordinates).
#' @param obsp Named list of cells x cells matrices (dense or sparse).
#' @param uns Named list (nested lists allowed) of scalars, vectors, matrices, factors and
#'   data frames.
#' @param overwrite Logical of length 1: replace an existing file.
#' @return `path`, invisibly.
#' @seealso [read_h5ad()]
#' @examples
#' if (requireNamespace("hdf5r", quietly = TRUE)) {
#'   f <- tempfile(fileext = ".h5ad")
#'   m <- matrix(c(0, 1, 2, 0, 3, 0), nrow = 2,
#'               dimnames = list(c("g1", "g2"), c("c1", "c2", "c3")))
#'   write_h5ad(f, X = m,
#'              obs = data.frame(group = factor(c("x", "y", NA)), row.names = colnames(m)),
#'              uns = list(note = "written by scnative", params = list(k = 3L)))
#'   str(read_h5ad(f)$obs)
#'   unlink(f)
#' }
#' @export
write_h5ad <- function(path, X = NULL, layers = list(), obs = NULL, var = NULL, obsm = list(),
                       obsp = list(), uns = list(), overwrite = FALSE) {
  h5ad_require()
  if (inherits(X, "scnative_h5ad")) {
    src <- X
    X <- src$X
    if (missing(layers)) layers <- src$layers
    if (missing(obs)) obs <- src$obs
    if (missing(var)) var <- src$var
    if (missing(obsm)) obsm <- src$obsm
    if (missing(obsp)) obsp <- src$obsp
    if (missing(uns)) uns <- src$uns
  }
  check_string(path, "path")
  path <- path.expand(path)
  check_flag(overwrite, "overwrite")
  if (file.exists(path) && !overwrite) {
    stopf("'path' already exists: %s (use overwrite = TRUE to replace it)", path)
  }
  if (dir.exists(path)) stopf("'path' is a directory: %s", path)
  if (!dir.exists(dirname(path))) stopf("the directory of 'path' does not exist: %s", dirname(path))
  check_named_list <- function(x, arg) {
    if (!is.list(x) || is.data.frame(x)) stopf("'%s' must be a named list", arg)
    if (length(x) && (is.null(names(x)) || anyNA(names(x)) || any(!nzchar(names(x))) ||
                      anyDuplicated(names(x)))) {
      stopf("'%s' must be a list with unique non-empty names", arg)
    }
  }
  check_named_list(layers, "layers")
  check_named_list(obsm, "obsm")
  check_named_list(obsp, "obsp")
  check_named_list(uns, "uns")
  if (!is.null(X)) h5ad_check_matrix(X, "X")
  for (nm in names(layers)) h5ad_check_matrix(layers[[nm]], sprintf("layers$%s", nm))

  # Dimensions from the first matrix, else from obs / var.
  mats <- c(if (!is.null(X)) list(X = X),
            if (length(layers)) stats::setNames(layers, paste0("layers$", names(layers))))
  n_var <- if (length(mats)) nrow(mats[[1L]]) else if (!is.null(var)) nrow(var) else 0L
  n_obs <- if (length(mats)) ncol(mats[[1L]]) else if (!is.null(obs)) nrow(obs) else 0L
  for (nm in names(mats)) {
    d <- dim(mats[[nm]])
    if (d[1L] != n_var || d[2L] != n_obs) {
      stopf("'%s' is %d x %d but the data are %d genes x %d cells (matrices are genes x cells)",
            nm, d[1L], d[2L], n_var, n_obs)
    }
  }
  if (!is.null(obs)) h5ad_check_df(obs, "obs", n_obs)
  if (!is.null(var)) h5ad_check_df(var, "var", n_var)
  first_dn <- function(k) {
    for (m in mats) if (!is.null(dimnames(m)[[k]])) return(dimnames(m)[[k]])
    NULL
  }
  default_names <- function(n) as.character(seq_len(n) - 1L)
  has_rn <- function(df) !is.null(df) && !is.integer(attr(df, "row.names", exact = TRUE))
  cells <- if (has_rn(obs)) rownames(obs) else first_dn(2L) %||% default_names(n_obs)
  genes <- if (has_rn(var)) rownames(var) else first_dn(1L) %||% default_names(n_var)
  if (is.null(obs)) obs <- data.frame(row.names = seq_len(n_obs))[, 0, drop = FALSE]
  if (is.null(var)) var <- data.frame(row.names = seq_len(n_var))[, 0, drop = FALSE]
  for (nm in names(obsm)) {
    m <- obsm[[nm]]
    if (is.data.frame(m)) {
      h5ad_check_df(m, sprintf("obsm$%s", nm), n_obs)
    } else {
      if (is.null(dim(m)) && is.numeric(m)) obsm[[nm]] <- m <- matrix(m, ncol = 1L)
      h5ad_check_matrix(m, sprintf("obsm$%s", nm))
      if (nrow(m) != n_obs) {
        stopf("'obsm$%s' has %d rows but there are %d cells (obsm matrices are cells x k)",
              nm, nrow(m), n_obs)
      }
    }
  }
  for (nm in names(obsp)) {
    m <- obsp[[nm]]
    h5ad_check_matrix(m, sprintf("obsp$%s", nm))
    if (nrow(m) != n_obs || ncol(m) != n_obs) {
      stopf("'obsp$%s' is %d x %d but must be cells x cells (%d x %d)", nm, nrow(m), ncol(m),
            n_obs, n_obs)
    }
  }
  h5ad_check_uns(uns, "uns")

  h5ad_type_cache$str <- h5ad_str_type()
  h5ad_type_cache$bool <- h5ad_bool_type()
  on.exit(rm(list = ls(h5ad_type_cache), envir = h5ad_type_cache), add = TRUE)
  tmp <- tempfile(pattern = ".scnative-", tmpdir = dirname(path), fileext = ".h5ad")
  on.exit(unlink(tmp), add = TRUE)
  h5 <- hdf5r::H5File$new(tmp, mode = "w")
  h5ad_state$objs <- list()
  ok <- FALSE
  tryCatch({
    h5_set_encoding(h5, "anndata", "0.1.0")
    write_gc <- function(parent, name, m) {
      if (methods::is(m, "sparseMatrix")) {
        # genes x cells CSC == cells x genes CSR: no transpose.
        h5ad_write_csr_from_csc_t(parent, name, h5ad_as_dgc(m), c(n_obs, n_var))
      } else {
        m <- as.matrix(m)
        dimnames(m) <- NULL
        if (!is.logical(m) && !is.integer(m)) storage.mode(m) <- "double"
        d <- h5_write_array(parent, name, m)  # hdf5r reverses dims: genes x cells -> obs x var
        h5_set_encoding(d, "array", "0.2.0")
      }
    }
    if (!is.null(X)) write_gc(h5, "X", X)
    g <- h5_new_group(h5, "layers")
    for (nm in names(layers)) write_gc(g, nm, layers[[nm]])
    h5ad_write_df(h5, "obs", obs, cells)
    h5ad_write_df(h5, "var", var, genes)
    g <- h5_new_group(h5, "obsm")
    for (nm in names(obsm)) {
      m <- obsm[[nm]]
      if (is.data.frame(m)) h5ad_write_df(g, nm, m, cells) else h5ad_write_matrix(g, nm, m)
    }
    g <- h5_new_group(h5, "obsp")
    for (nm in names(obsp)) h5ad_write_matrix(g, nm, obsp[[nm]])
    h5_new_group(h5, "varm")
    h5_new_group(h5, "varp")
    g <- h5_new_group(h5, "uns")
    for (nm in names(uns)) h5ad_write_uns(g, nm, uns[[nm]], paste0("uns$", nm))
    ok <- TRUE
  }, finally = h5_close_file(h5))
  if (ok) {
    if (file.exists(path)) unlink(path)
    if (!file.rename(tmp, path)) {
      if (!file.copy(tmp, path, overwrite = TRUE)) stopf("could not write 'path': %s", path)
    }
  }
  invisible(path)
}
