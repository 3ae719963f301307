# Reading and writing AnnData .h5ad files with hdf5r (issue 2, "Reading real data without
# Python"). Pure R; hdf5r is in Suggests.
#
# Orientation: AnnData stores obs (cells) x var (genes). hdf5r reverses HDF5 dimensions, so a
# dense obs x var dataset reads as a genes x cells R matrix, and a CSR matrix of cells x genes
# is exactly the CSC (dgCMatrix) of genes x cells. Both need no transpose. Internally every
# matrix reader returns t(A) where A is the array in numpy orientation.
#
# Encodings handled when reading:
# - current (anndata >= 0.8): `encoding-type` / `encoding-version` attributes on every element
#   (dataframe, categorical, string-array, array, csr_matrix, csc_matrix, dict, string,
#   numeric-scalar, nullable-integer, nullable-boolean, nullable-string-array);
# - anndata 0.7: dataframe groups whose categorical columns are integer codes carrying a
#   `categories` object reference into `__categories/<column>`, no encoding on plain datasets;
# - anndata < 0.7: obs/var stored as one compound dataset, categories in `uns/<col>_categories`.
# Writing uses the encoding anndata 0.12 writes.

h5ad_require <- function() {
  if (!requireNamespace("hdf5r", quietly = TRUE)) {
    stopf("package 'hdf5r' is required to read and write .h5ad files; install it (Debian: apt-get install r-cran-hdf5r)")
  }
}

# ---------------------------------------------------------------------------------------------
# Reading helpers

h5_attr_names <- function(obj) hdf5r::h5attr_names(obj)

# One attribute, or NULL when absent. Empty arrays (anndata writes an empty float64 array as
# `column-order` of a data frame without columns) read as a zero-length vector; hdf5r cannot
# read those itself.
h5_attr <- function(obj, name) {
  if (!obj$attr_exists(name)) return(NULL)
  a <- obj$attr_open(name)
  on.exit(a$close())
  sp <- a$get_space()
  if (sp$get_simple_extent_type() == "H5S_SIMPLE" && prod(sp$dims) == 0) return(character(0))
  v <- a$read()
  if (inherits(v, "integer64")) v <- as.double(v)
  v
}

h5_encoding <- function(obj) {
  e <- h5_attr(obj, "encoding-type")
  if (is.null(e) || !length(e)) "" else as.character(e)[1L]
}

is_h5_group <- function(obj) inherits(obj, "H5Group") || inherits(obj, "H5File")

h5_has <- function(parent, name) {
  isTRUE(tryCatch(parent$exists(name), error = function(e) FALSE))
}

# Every HDF5 object opened or created is tracked and closed explicitly at the end, so that the
# file can be closed without H5File$close_all(), whose gc() call took most of the run time.
h5ad_state <- new.env(parent = emptyenv())
h5ad_state$objs <- list()

h5_track <- function(o) {
  h5ad_state$objs[[length(h5ad_state$objs) + 1L]] <- o
  o
}

h5_sub <- function(parent, name) h5_track(parent[[name]])

h5_close_file <- function(h5) {
  objs <- h5ad_state$objs
  h5ad_state$objs <- list()
  for (o in rev(objs)) try(o$close(), silent = TRUE)
  n_open <- tryCatch(h5$get_obj_count(), error = function(e) NA)
  if (getOption("scnative.h5ad_debug", FALSE)) message("h5ad: open objects at close: ", n_open)
  if (isTRUE(n_open <= 1)) {
    h5$close()
  } else {
    h5$close_all()
  }
}

# Reads a dataset's values with integer64 turned into double. hdf5r fails on empty
# variable-length string datasets, so empty datasets are built here.
h5_read_dataset <- function(d) {
  dims <- d$dims
  if (length(dims) && prod(dims) == 0) {
    cls <- d$get_type()$get_class()
    v <- if (identical(as.character(cls), "H5T_STRING")) character(0)
         else if (identical(as.character(cls), "H5T_INTEGER")) integer(0)
         else if (identical(as.character(cls), "H5T_ENUM")) logical(0) else numeric(0)
    if (length(dims) > 1L) dim(v) <- dims  # hdf5r reports dims in R order
    return(v)
  }
  v <- d$read()
  if (inherits(v, "integer64")) v <- as.double(v)
  v
}

# Matrix element (dense dataset or sparse group) as t(A), A in numpy orientation.
h5ad_read_matrix_t <- function(obj, what) {
  if (!is_h5_group(obj)) {
    v <- h5_read_dataset(obj)
    if (length(dim(v)) != 2L) stopf("%s is not a 2-d array", what)
    if (is.logical(v) || is.integer(v)) storage.mode(v) <- "double"
    return(v)
  }
  enc <- h5_encoding(obj)
  if (!nzchar(enc)) enc <- as.character(h5_attr(obj, "h5sparse_format") %||% "")
  if (!enc %in% c("csr_matrix", "csc_matrix", "csr", "csc")) {
    stopf("%s has unsupported encoding '%s' (expected a dense array, csr_matrix or csc_matrix)", what, enc)
  }
  shape <- as.integer(h5_attr(obj, "shape") %||% h5_attr(obj, "h5sparse_shape"))
  data <- as.double(h5_read_dataset(h5_sub(obj, "data")))
  indices <- as.integer(h5_read_dataset(h5_sub(obj, "indices")))
  indptr <- as.integer(h5_read_dataset(h5_sub(obj, "indptr")))
  if (startsWith(enc, "csr")) {
    # CSR of A (n x m) is CSC of t(A) (m x n). sparseMatrix sorts indices and sums duplicates,
    # which scipy allows in CSR.
    Matrix::sparseMatrix(i = indices + 1L, p = indptr, x = data, dims = rev(shape), repr = "C")
  } else {
    Matrix::t(Matrix::sparseMatrix(i = indices + 1L, p = indptr, x = data, dims = shape, repr = "C"))
  }
}

h5ad_factor <- function(codes, cats, ordered) {
  codes <- as.integer(codes)
  if (inherits(cats, "integer64")) cats <- as.double(cats)
  lev <- as.character(cats)
  idx <- codes + 1L
  idx[codes < 0L] <- NA_integer_
  structure(idx, levels = lev, class = c(if (isTRUE(as.logical(ordered))) "ordered", "factor"))
}

# Old (anndata 0.7) categorical column: integer codes with a `categories` object reference.
h5ad_old_categories <- function(df_group, d, name) {
  cats_obj <- NULL
  ref <- tryCatch(h5_attr(d, "categories"), error = function(e) NULL)
  if (!is.null(ref) && inherits(ref, "H5R_OBJECT")) {
    cats_obj <- tryCatch(h5_track(ref$dereference(obj = d)[[1L]]), error = function(e) NULL)
  }
  if (is.null(cats_obj) && h5_has(df_group, "__categories") &&
      h5_has(h5_sub(df_group, "__categories"), name)) {
    cats_obj <- h5_sub(h5_sub(df_group, "__categories"), name)
  }
  if (is.null(cats_obj)) return(NULL)
  list(cats = h5_read_dataset(cats_obj), ordered = h5_attr(cats_obj, "ordered") %||% FALSE)
}

# A 1-d element (data frame column or uns vector) in its R form.
h5ad_read_vector <- function(obj, what, df_group = NULL, name = NULL) {
  if (is_h5_group(obj)) {
    enc <- h5_encoding(obj)
    if (enc == "categorical") {
      return(h5ad_factor(h5_read_dataset(h5_sub(obj, "codes")),
                         h5_read_dataset(h5_sub(obj, "categories")), h5_attr(obj, "ordered")))
    }
    if (enc %in% c("nullable-integer", "nullable-boolean", "nullable-string-array")) {
      v <- h5_read_dataset(h5_sub(obj, "values"))
      if (h5_has(obj, "mask")) v[as.logical(h5_read_dataset(h5_sub(obj, "mask")))] <- NA
      return(v)
    }
    stopf("%s has unsupported encoding '%s'", what, enc)
  }
  v <- h5_read_dataset(obj)
  if (!is.null(df_group) && obj$attr_exists("categories")) {
    oc <- h5ad_old_categories(df_group, obj, name)
    if (!is.null(oc)) return(h5ad_factor(v, oc$cats, oc$ordered))
  }
  if (!is.null(dim(v)) && length(dim(v)) == 1L) v <- as.vector(v)
  v
}

h5ad_unique_names <- function(x, what) {
  x <- as.character(x)
  if (anyDuplicated(x)) {
    warnf("%s has duplicated names; made unique with make.unique()", what)
    x <- make.unique(x)
  }
  x
}

# obs / var data frame in either the group encoding or the old compound-dataset one.
h5ad_read_df <- function(obj, what, uns_group = NULL) {
  if (!is_h5_group(obj)) {
    # anndata < 0.7: a compound dataset, one field per column, categories in uns.
    raw <- obj$read()
    raw <- as.data.frame(raw, stringsAsFactors = FALSE)
    idx_col <- if ("index" %in% names(raw)) "index" else names(raw)[1L]
    rn <- h5ad_unique_names(raw[[idx_col]], what)
    raw[[idx_col]] <- NULL
    for (nm in names(raw)) {
      key <- paste0(nm, "_categories")
      if (!is.null(uns_group) && h5_has(uns_group, key)) {
        raw[[nm]] <- h5ad_factor(raw[[nm]], h5_read_dataset(h5_sub(uns_group, key)), FALSE)
      }
    }
    rownames(raw) <- rn
    return(raw)
  }
  members <- names(obj)
  index_name <- h5_attr(obj, "_index")
  index_name <- if (is.null(index_name) || !length(index_name)) {
    if ("_index" %in% members) "_index" else if ("index" %in% members) "index" else NULL
  } else as.character(index_name)[1L]
  order <- as.character(h5_attr(obj, "column-order") %||% character(0))
  if (!length(order)) {
    order <- setdiff(members, c(index_name, "__categories"))
  }
  missing <- setdiff(order, members)
  if (length(missing)) {
    stopf("%s lists column(s) %s in 'column-order' that are not stored", what,
          paste0("'", missing, "'", collapse = ", "))
  }
  n <- NULL
  rn <- NULL
  if (!is.null(index_name)) {
    rn <- as.character(h5ad_read_vector(h5_sub(obj, index_name), paste0(what, " index")))
    n <- length(rn)
  }
  cols <- list()
  for (nm in order) {
    v <- tryCatch(h5ad_read_vector(h5_sub(obj, nm), sprintf("%s column '%s'", what, nm), obj, nm),
                  error = function(e) {
                    warnf("%s; column skipped", conditionMessage(e))
                    NULL
                  })
    if (is.null(v)) next
    if (!is.null(dim(v))) {
      warnf("%s column '%s' is not 1-d; skipped", what, nm)
      next
    }
    cols[[nm]] <- v
  }
  if (is.null(n)) n <- if (length(cols)) length(cols[[1L]]) else 0L
  df <- if (length(cols)) {
    as.data.frame(cols, stringsAsFactors = FALSE, optional = TRUE, check.names = FALSE)
  } else {
    as.data.frame(matrix(nrow = n, ncol = 0))
  }
  if (!is.null(rn)) rownames(df) <- h5ad_unique_names(rn, what)
  df
}

# uns (and nested dicts): groups -> named lists, scalars, vectors, matrices in numpy orientation.
h5ad_read_uns <- function(obj, what) {
  if (is_h5_group(obj)) {
    enc <- h5_encoding(obj)
    if (enc %in% c("", "dict")) {
      out <- list()
      for (nm in names(obj)) {
        v <- h5ad_read_uns(h5_sub(obj, nm), paste0(what, "/", nm))
        if (!is.null(v)) out[nm] <- list(v)
      }
      return(out)
    }
    if (enc == "dataframe") return(h5ad_read_df(obj, what))
    if (enc %in% c("csr_matrix", "csc_matrix")) return(Matrix::t(h5ad_read_matrix_t(obj, what)))
    if (enc %in% c("categorical", "nullable-integer", "nullable-boolean", "nullable-string-array")) {
      return(h5ad_read_vector(obj, what))
    }
    warnf("%s has unsupported encoding '%s'; skipped", what, enc)
    return(NULL)
  }
  v <- tryCatch(h5_read_dataset(obj), error = function(e) {
    warnf("%s could not be read (%s); skipped", what, conditionMessage(e))
    NULL
  })
  if (is.null(v)) return(NULL)
  d <- dim(v)
  if (!is.null(d) && length(d) == 1L) v <- as.vector(v)
  if (!is.null(d) && length(d) == 2L) v <- t(v)
  if (!is.null(d) && length(d) > 2L) v <- aperm(v)
  v
}

h5ad_check_path <- function(path) {
  check_string(path, "path")
  if (!file.exists(path)) stopf("'path' does not exist: %s", path)
  if (dir.exists(path)) stopf("'path' is a directory, not an .h5ad file: %s", path)
  if (!isTRUE(tryCatch(hdf5r::is.h5file(path), error = function(e) FALSE))) {
    stopf("'path' is not an HDF5 file (so not an AnnData .h5ad file): %s", path)
  }
  normalizePath(path)
}

#' Read an AnnData `.h5ad` file
#'
#' Reads the matrices, cell and gene annotations of an AnnData `.h5ad` file with \pkg{hdf5r},
#' without Python. Matrices come back genes x cells (the transpose of AnnData's cells x genes):
#' dense arrays as base matrices, sparse ones as `dgCMatrix` (AnnData's CSR of cells x genes is
#' the CSC of genes x cells, so no copy or transpose is needed).
#'
#' Both the current AnnData encoding (`encoding-type` attributes, anndata >= 0.8) and the older
#' ones are read: anndata 0.7 categoricals (integer codes with a `categories` reference into
#' `__categories`) and anndata < 0.7 data frames stored as compound datasets.
#'
#' @param path Character of length 1: the `.h5ad` file.
#' @param layers `NULL` (default: every layer) or a character vector of layer names to read;
#'   `character(0)` reads none. A name that is not in the file is an error.
#' @param X Logical of length 1: read `X`.
#' @param obsm Logical of length 1: read `obsm` (cells x k matrices or data frames) and `varm`
#'   (genes x k).
#' @param obsp Logical of length 1: read `obsp` (cells x cells) and `varp` (genes x genes).
#' @param uns Logical of length 1: read `uns` as a nested list.
#' @param ... For `read_h5ad()`, must be empty (reserved); ignored by `print()`.
#' @return A list of class `scnative_h5ad` with `X` (genes x cells matrix or `dgCMatrix`, or
#'   `NULL`), `layers` (named list of genes x cells matrices), `obs` (data frame, one row per
#'   cell, rownames the cell names), `var` (data frame, one row per gene), `obsm`, `varm`,
#'   `obsp`, `varp` (named lists) and `uns` (named list), and `path`. Categorical columns
#'   are factors (ordered when AnnData marks them ordered; code -1 is `NA`). Matrices carry the
#'   gene and cell names as dimnames.
#' @seealso [write_h5ad()]
#' @examples
#' if (requireNamespace("hdf5r", quietly = TRUE)) {
#'   f <- tempfile(fileext = ".h5ad")
#'   counts <- matrix(rpois(12, 3), nrow = 4,
#'                    dimnames = list(paste0("gene", 1:4), paste0("cell", 1:3)))
#'   obs <- data.frame(type = factor(c("a", "b", "a")), row.names = colnames(counts))
#'   write_h5ad(f, X = counts, layers = list(spliced = Matrix::Matrix(counts, sparse = TRUE)),
#'              obs = obs)
#'   ad <- read_h5ad(f)
#'   print(ad)
#'   print(ad$layers$spliced)
#'   unlink(f)
#' }
#' @export
read_h5ad <- function(path, layers = NULL, X = TRUE, obsm = TRUE, obsp = TRUE, uns = TRUE, ...) {
  if (...length()) {
    stopf("unknown argument(s) to read_h5ad(): %s",
          paste(names(list(...)) %||% "<unnamed>", collapse = ", "))
  }
  h5ad_require()
  check_flag(X, "X")
  check_flag(obsm, "obsm")
  check_flag(obsp, "obsp")
  check_flag(uns, "uns")
  if (!is.null(layers) && (!is.character(layers) || anyNA(layers))) {
    stopf("'layers' must be NULL or a character vector of layer names")
  }
  path <- h5ad_check_path(path)
  h5 <- tryCatch(hdf5r::H5File$new(path, mode = "r"),
                 error = function(e) stopf("'path' could not be opened as HDF5: %s (%s)", path,
                                           conditionMessage(e)))
  h5ad_state$objs <- list()
  on.exit(h5_close_file(h5), add = TRUE)
  top <- names(h5)
  if (!all(c("obs", "var") %in% top)) {
    stopf("'path' is not an AnnData .h5ad file (no 'obs' and 'var' at the top level; found %s): %s",
          if (length(top)) paste0("'", top, "'", collapse = ", ") else "nothing", path)
  }
  uns_group <- if ("uns" %in% top) h5_sub(h5, "uns") else NULL
  obs_df <- h5ad_read_df(h5_sub(h5, "obs"), "obs", uns_group)
  var_df <- h5ad_read_df(h5_sub(h5, "var"), "var", uns_group)
  cells <- rownames(obs_df)
  genes <- rownames(var_df)
  n_obs <- nrow(obs_df)
  n_var <- nrow(var_df)

  fix_gc <- function(m, what) {
    if (!identical(dim(m), c(n_var, n_obs))) {
      stopf("%s is %d x %d (genes x cells) but var has %d genes and obs %d cells", what,
            nrow(m), ncol(m), n_var, n_obs)
    }
    dimnames(m) <- list(genes, cells)
    m
  }

  Xm <- NULL
  if (X && "X" %in% top) Xm <- fix_gc(h5ad_read_matrix_t(h5_sub(h5, "X"), "X"), "X")

  avail <- if ("layers" %in% top) names(h5_sub(h5, "layers")) else character(0)
  want <- layers %||% avail
  bad <- setdiff(want, avail)
  if (length(bad)) {
    stopf("layer(s) %s not found in %s; available layers: %s",
          paste0("'", bad, "'", collapse = ", "), path,
          if (length(avail)) paste0("'", avail, "'", collapse = ", ") else "none")
  }
  lay <- list()
  for (nm in want) {
    what <- sprintf("layer '%s'", nm)
    lay[[nm]] <- fix_gc(h5ad_read_matrix_t(h5_sub(h5_sub(h5, "layers"), nm), what), what)
  }

  read_axis_m <- function(group, n, names_, what) {
    out <- list()
    if (!group %in% top) return(out)
    g <- h5_sub(h5, group)
    for (nm in names(g)) {
      el <- h5_sub(g, nm)
      w <- sprintf("%s '%s'", what, nm)
      if (is_h5_group(el) && h5_encoding(el) == "dataframe") {
        v <- h5ad_read_df(el, w)
        if (nrow(v) == n) rownames(v) <- names_
      } else {
        v <- tryCatch(Matrix::t(h5ad_read_matrix_t(el, w)), error = function(e) {
          warnf("%s; skipped", conditionMessage(e))
          NULL
        })
        if (is.null(v)) next
        if (nrow(v) != n) stopf("%s has %d rows but there are %d", w, nrow(v), n)
        rownames(v) <- names_
      }
      out[[nm]] <- v
    }
    out
  }
  read_axis_p <- function(group, n, names_, what) {
    out <- list()
    if (!group %in% top) return(out)
    g <- h5_sub(h5, group)
    for (nm in names(g)) {
      w <- sprintf("%s '%s'", what, nm)
      v <- Matrix::t(h5ad_read_matrix_t(h5_sub(g, nm), w))
      if (!identical(dim(v), c(n, n))) stopf("%s is not %d x %d", w, n, n)
      dimnames(v) <- list(names_, names_)
      out[[nm]] <- v
    }
    out
  }

  res <- list(
    X = Xm,
    layers = lay,
    obs = obs_df,
    var = var_df,
    obsm = if (obsm) read_axis_m("obsm", n_obs, cells, "obsm") else list(),
    varm = if (obsm) read_axis_m("varm", n_var, genes, "varm") else list(),
    obsp = if (obsp) read_axis_p("obsp", n_obs, cells, "obsp") else list(),
    varp = if (obsp) read_axis_p("varp", n_var, genes, "varp") else list(),
    uns = if (uns && !is.null(uns_group)) h5ad_read_uns(uns_group, "uns") else list(),
    path = path
  )
  class(res) <- "scnative_h5ad"
  res
}

#' @rdname read_h5ad
#' @param x A `scnative_h5ad` object.
#' @method print scnative_h5ad
#' @export
print.scnative_h5ad <- function(x, ...) {
  keys <- function(v) if (length(v)) paste(names(v), collapse = ", ") else "(none)"
  cat(sprintf("<scnative_h5ad> %d genes x %d cells", nrow(x$var), nrow(x$obs)), "\n")
  if (!is.null(x$X)) {
    cat(sprintf("  X:      %s %d x %d (genes x cells)\n", class(x$X)[1L], nrow(x$X), ncol(x$X)))
  } else {
    cat("  X:      (not read)\n")
  }
  cat("  layers:", keys(x$layers), "\n")
  cat("  obs:   ", if (ncol(x$obs)) paste(names(x$obs), collapse = ", ") else "(no columns)", "\n")
  cat("  var:   ", if (ncol(x$var)) paste(names(x$var), collapse = ", ") else "(no columns)", "\n")
  cat("  obsm:  ", keys(x$obsm), "\n")
  if (length(x$varm)) cat("  varm:  ", keys(x$varm), "\n")
  cat("  obsp:  ", keys(x$obsp), "\n")
  if (length(x$varp)) cat("  varp:  ", keys(x$varp), "\n")
  cat("  uns:   ", keys(x$uns), "\n")
  invisible(x)
}

# ---------------------------------------------------------------------------------------------
# Writing helpers (anndata 0.12 encoding)

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
