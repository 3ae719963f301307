# Reading AnnData .h5ad files with hdf5r (issue 2, "Reading real data without
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
# Writing (in the encoding anndata 0.12 writes) is in h5ad_write.R.

h5ad_require <- function() {
  if (!requireNamespace("hdf5r", quietly = TRUE)) {
    stopf("package 'hdf5r' is required to read and write .h5ad files; install it (Debian: apt-get install r-cran-hdf5r)")
  }
}

# ---------------------------------------------------------------------------------------------
# Reading an untrusted file (issue 17, "Hostile input")
#
# A file is never trusted. Before anything is read, the element's link, datatype, dataspace and
# storage are checked; after it is read, its values (lengths, ranges, order) are checked against
# the other elements. Anything malformed stops with an error that names the element by its path
# in the file ("layers/Ms: indptr has 10 entries, expected n_obs + 1 = 51"); nothing half-read
# is returned. In particular:
# - links: external links (and soft links that pass through one) are refused, so no other file
#   is ever opened; dangling soft links are errors; uns nesting is bounded in depth and every
#   group is visited once, so hard- or soft-link cycles are errors, not infinite loops;
# - sizes: a dataset may not declare more bytes than its storage could hold after the strongest
#   compression (deflate, at most ~1032:1), nor claim more storage than the file has; datasets
#   with storage in other files (external raw files, virtual datasets) are refused; so every
#   allocation and every loop is bounded by the size of the file;
# - datatypes: only integers, floats, booleans (h5py's enum), strings and, where AnnData uses
#   them, compounds of those are read. Other types are errors, except in uns, where an element
#   that is well formed but not representable is skipped with a warning.
# The HDF5 library itself (1.10) crashes on some corrupt files (e.g. a variable-length string
# whose global-heap reference is damaged), which no check from R can foresee; read_h5ad()
# therefore reads in a forked child process by default (see h5ad_read_isolated()).

h5ad_limits <- list(
  depth = 50L,         # deepest nesting of uns groups
  ratio = 1100,        # declared bytes per stored byte (deflate's maximum is ~1032)
  slack = 2^20,        # declared bytes always allowed (fill values of small datasets)
  attr_len = 1e5,      # elements of an attribute
  step_s = 60,         # watchdog: seconds allowed per read step ...
  step_rate = 1e7      # ... plus one second per this many declared bytes
)

# Errors about the file's content: class scnative_h5ad_error, message "<element>: <problem>".
h5ad_fail <- function(what, fmt, ...) {
  msg <- h5ad_clean(sprintf(paste0("%s: ", fmt), h5ad_short(what), ...))
  stop(structure(class = c("scnative_h5ad_error", "error", "condition"),
                 list(message = msg, call = NULL)))
}

# Well-formed content that read_h5ad() cannot represent (skipped with a warning inside uns).
h5ad_unsupported <- function(what, fmt, ...) {
  msg <- h5ad_clean(sprintf(paste0("%s: ", fmt), h5ad_short(what), ...))
  stop(structure(class = c("scnative_h5ad_unsupported", "scnative_h5ad_error", "error", "condition"),
                 list(message = msg, call = NULL)))
}

# Messages quote names and strings from the file: invalid UTF-8 becomes <xx>, control
# characters become '?'.
h5ad_clean <- function(msg) {
  msg <- iconv(msg, "UTF-8", "UTF-8", sub = "byte")
  if (is.na(msg)) msg <- "(unprintable message)"
  gsub("[[:cntrl:]]", "?", msg)
}

# Errors about the file as a whole (no element to name).
h5ad_stopf <- function(fmt, ...) {
  stop(structure(class = c("scnative_h5ad_error", "error", "condition"),
                 list(message = h5ad_clean(sprintf(fmt, ...)), call = NULL)))
}

h5ad_short <- function(what) {
  what <- h5ad_clean(what)
  if (nchar(what) <= 160L) return(what)
  paste0(substr(what, 1L, 70L), "...", substr(what, nchar(what) - 69L, nchar(what)))
}

# The gist of an hdf5r error: HDF5's first and last error descriptions, not the whole stack.
h5ad_hdf5_msg <- function(e) {
  msg <- conditionMessage(e)
  lines <- regmatches(msg, gregexpr("line [0-9]+: [^\n]*", msg))[[1L]]
  lines <- unique(sub("^line [0-9]+: ", "", lines))
  if (length(lines)) {
    return(if (length(lines) == 1L) lines else paste(lines[1L], "/", lines[length(lines)]))
  }
  strsplit(msg, "\n", fixed = TRUE)[[1L]][1L]
}

# Evaluates expr; an error that is not already one of ours becomes "<what>: could not be read".
h5ad_guard <- function(what, expr) {
  # One handler: with two, an error re-raised by the first would be caught by the second.
  tryCatch(expr, error = function(e) {
    if (inherits(e, "scnative_h5ad_error")) stop(e)
    h5ad_fail(what, "could not be read (%s); the file is corrupt", h5ad_hdf5_msg(e))
  })
}

# Progress for the watchdog of the isolated reader: the element being read and its size, as
# one fixed-width record rewritten in place (an open connection: reopening the file for every
# element cost milliseconds each).
h5ad_note <- function(what, bytes = 0) {
  h5ad_state$step <- what
  con <- h5ad_state$progress
  if (!is.null(con)) {
    rec <- charToRaw(enc2utf8(sprintf("%.0f\t%s", bytes, h5ad_short(what))))
    rec <- c(rec[seq_len(min(length(rec), 500L))], rep(charToRaw(" "), 511L - min(length(rec), 500L)),
             charToRaw("\n"))
    seek(con, 0, rw = "write")
    writeBin(rec, con)
    flush(con)
  }
  invisible(NULL)
}

h5ad_bytes <- function(x) format(structure(x, class = "object_size"), units = "auto", standard = "SI")

is_h5_group <- function(obj) inherits(obj, "H5Group") || inherits(obj, "H5File")

# Every HDF5 object opened or created is tracked and closed explicitly at the end, so that the
# file can be closed without H5File$close_all(), whose gc() call took most of the run time.
h5ad_state <- new.env(parent = emptyenv())
h5ad_state$objs <- list()

h5_track <- function(o) {
  h5ad_state$objs[[length(h5ad_state$objs) + 1L]] <- o
  o
}

h5_close_file <- function(h5) {
  objs <- h5ad_state$objs
  h5ad_state$objs <- list()
  for (o in rev(objs)) try(o$close(), silent = TRUE)
  n_open <- tryCatch(h5$get_obj_count(), error = function(e) NA)
  if (getOption("scnative.h5ad_debug", FALSE)) message("h5ad: open objects at close: ", n_open)
  if (isTRUE(n_open <= 1)) {
    try(h5$close(), silent = TRUE)
  } else {
    try(h5$close_all(), silent = TRUE)
  }
}

h5ad_path <- function(parent_what, name) {
  if (nzchar(parent_what)) paste0(parent_what, "/", name) else name
}

h5ad_link_type <- function(g, name, what) {
  li <- h5ad_guard(what, g$link_info(name))
  as.character(li$type)[1L]
}

# Opens member `name` of group `parent` (named `pwhat`), refusing links out of the file.
h5ad_child <- function(parent, name, pwhat) {
  what <- h5ad_path(pwhat, name)
  there <- tryCatch(parent$exists(name), error = function(e) FALSE)
  if (!isTRUE(there)) h5ad_fail(if (nzchar(pwhat)) pwhat else "the file", "'%s' is missing", name)
  type <- h5ad_link_type(parent, name, what)
  if (identical(type, "H5L_TYPE_EXTERNAL")) {
    target <- tryCatch(parent$link_value(name), error = function(e) list(file_name = "?"))
    h5ad_fail(what, "is an external link (to '%s'); links to other files are refused",
              as.character(target$file_name)[1L])
  }
  if (identical(type, "H5L_TYPE_SOFT")) {
    target <- h5ad_guard(what, as.character(parent$link_value(name))[1L])
    h5ad_check_soft(parent, target, what)
  } else if (!identical(type, "H5L_TYPE_HARD")) {
    h5ad_fail(what, "is a user-defined link (%s); only hard and soft links are followed", type)
  }
  h5ad_note(what)
  obj <- h5ad_guard(what, h5_track(parent$open(name)))
  if (!inherits(obj, "H5D") && !is_h5_group(obj)) {
    h5ad_unsupported(what, "is a named datatype, expected a dataset or a group")
  }
  obj
}

# A soft link is followed only when every step of its target is a hard link in this file.
h5ad_check_soft <- function(parent, target, what) {
  if (!nzchar(target)) h5ad_fail(what, "is a soft link with an empty target")
  root <- h5ad_state$file
  base <- if (startsWith(target, "/")) "" else h5ad_guard(what, parent$get_obj_name())
  parts <- strsplit(paste0(base, "/", target), "/", fixed = TRUE)[[1L]]
  parts <- parts[nzchar(parts) & parts != "."]
  prefix <- ""
  for (p in parts) {
    prefix <- paste0(prefix, "/", p)
    ok <- tryCatch(root$exists(prefix), error = function(e) FALSE)
    if (!isTRUE(ok)) h5ad_fail(what, "is a soft link to '%s', which does not exist", target)
    type <- h5ad_link_type(root, prefix, what)
    if (!identical(type, "H5L_TYPE_HARD")) {
      h5ad_fail(what, "is a soft link to '%s', which passes through another link (%s); not followed",
                target, prefix)
    }
  }
  invisible(NULL)
}

h5ad_kids <- function(g, what) {
  h5ad_note(what)
  as.character(h5ad_guard(what, names(g)))
}

h5ad_is_bool_enum <- function(t) {
  lab <- tryCatch(t$get_labels(), error = function(e) NULL)
  val <- tryCatch(t$get_values(), error = function(e) NULL)
  # h5py's bool, and hdf5r's logical (with an NA member when written with include_NA).
  lab <- toupper(lab)
  length(lab) %in% 2:3 && length(val) == length(lab) && all(c("FALSE", "TRUE") %in% lab) &&
    all(lab %in% c("FALSE", "TRUE", "NA")) && all(val[match(c("FALSE", "TRUE"), lab)] == c(0, 1))
}

# What an HDF5 datatype is for read_h5ad(): kind, bytes per element in the file, a description.
h5ad_type <- function(t) {
  cls <- as.character(t$get_class())
  size <- suppressWarnings(as.numeric(t$get_size()))
  kind <- switch(cls,
                 H5T_INTEGER = if (size %in% c(1, 2, 4, 8)) "int" else "unknown",
                 H5T_FLOAT = if (size %in% c(4, 8)) "float" else "unknown",
                 H5T_STRING = "string",
                 H5T_ENUM = if (h5ad_is_bool_enum(t)) "bool" else "enum",
                 H5T_COMPOUND = "compound",
                 H5T_OPAQUE = "opaque",
                 H5T_VLEN = "vlen",
                 H5T_ARRAY = "array",
                 H5T_REFERENCE = "reference",
                 H5T_BITFIELD = "bitfield",
                 H5T_TIME = "time",
                 "unknown")
  if (kind == "compound") {
    mt <- tryCatch(t$get_cpd_types(), error = function(e) NULL)
    if (inherits(mt, "H5T")) mt <- list(mt)  # one field: hdf5r returns it bare
    if (is.null(mt) || !length(mt)) {
      kind <- "unknown"
    } else {
      mk <- vapply(mt, function(m) h5ad_type(m)$kind, "")
      if (!all(mk %in% c("int", "float", "bool", "string"))) kind <- "nested compound"
    }
  }
  desc <- switch(kind, int = "integer", float = "floating-point", bool = "boolean",
                 string = "string", compound = "compound", opaque = "opaque",
                 vlen = "variable-length (vlen)", array = "array", reference = "reference",
                 enum = "enum (not boolean)", bitfield = "bitfield", time = "time",
                 `nested compound` = "compound with non-scalar fields",
                 sprintf("%s of %s bytes", sub("^H5T_", "", cls), format(size)))
  elsize <- if (kind == "string" && !is.finite(size)) 16 else size
  if (!is.finite(elsize) || elsize <= 0) elsize <- 1
  list(kind = kind, elsize = elsize, desc = desc)
}

h5ad_a <- function(word) if (grepl("^[aeiou]", word)) "an" else "a"

h5ad_kinds_text <- function(kinds) {
  num <- c("int", "float", "bool")
  if (all(num %in% kinds) && "string" %in% kinds) return("numbers or strings")
  if (all(num %in% kinds)) return("numbers")
  if (identical(kinds, "int")) return("integers")
  if (identical(kinds, "string")) return("strings")
  if (all(kinds %in% c("bool", "int"))) return("booleans")
  if (all(kinds %in% c("int", "float"))) return("numbers")
  paste(kinds, collapse = " or ")
}

h5ad_check_type <- function(t, what, kinds) {
  if (t$kind %in% kinds) return(invisible(t))
  exotic <- c("opaque", "vlen", "array", "reference", "enum", "bitfield", "time", "unknown",
              "nested compound")
  if (t$kind %in% exotic) {
    h5ad_unsupported(what, "has an unsupported %s datatype; expected %s", t$desc,
                     h5ad_kinds_text(kinds))
  }
  h5ad_fail(what, "has %s %s datatype; expected %s", h5ad_a(t$desc), t$desc, h5ad_kinds_text(kinds))
}

# Dataspace as list(class = "simple" | "scalar" | "null", dims) with dims in numpy (HDF5) order.
h5ad_space <- function(sp, what) {
  cls <- as.character(h5ad_guard(what, sp$get_simple_extent_type()))
  if (identical(cls, "H5S_NULL")) return(list(class = "null", dims = 0))
  if (identical(cls, "H5S_SCALAR")) return(list(class = "scalar", dims = numeric(0)))
  if (!identical(cls, "H5S_SIMPLE")) h5ad_fail(what, "has an unknown dataspace (%s)", cls)
  dims <- suppressWarnings(as.numeric(h5ad_guard(what, sp$dims)))
  if (anyNA(dims) || any(dims < 0)) h5ad_fail(what, "has invalid dimensions")
  list(class = "simple", dims = rev(dims))
}

h5ad_dims_text <- function(sp) {
  if (sp$class == "scalar") return("a scalar")
  if (sp$class == "null") return("empty (an HDF5 null dataspace)")
  sprintf("%d-d (%s)", length(sp$dims), paste(format(sp$dims, scientific = FALSE, trim = TRUE),
                                              collapse = " x "))
}

# The bytes a dataset declares must be backed by storage in this file. A contiguous dataset
# whose data lie in the file has an offset (cheap to ask); any other layout is looked up in its
# creation properties, where external raw files and virtual datasets (data in other files) are
# refused.
h5ad_check_storage <- function(d, what, bytes) {
  fsize <- h5ad_state$file_size
  storage <- as.numeric(h5ad_guard(what, d$get_storage_size()))
  if (!is.finite(storage) || storage > fsize) {
    h5ad_fail(what, "claims %s of storage in a file of %s; the file is truncated or corrupt",
              h5ad_bytes(storage), h5ad_bytes(fsize))
  }
  offset <- suppressWarnings(as.numeric(tryCatch(d$get_offset(), error = function(e) NA)))
  if (length(offset) == 1L && !is.na(offset)) {
    if (offset < 0 || offset + storage > fsize) {
      h5ad_fail(what, "stores its data beyond the end of the file; the file is truncated or corrupt")
    }
  } else {
    pl <- h5ad_guard(what, d$get_create_plist())
    on.exit(try(pl$close(), silent = TRUE))
    layout <- as.character(h5ad_guard(what, pl$get_layout()))
    if (identical(layout, "H5D_VIRTUAL")) {
      h5ad_fail(what, "is a virtual dataset (its data live in other files); refused")
    }
    if (isTRUE(h5ad_guard(what, pl$get_external_count()) > 0)) {
      h5ad_fail(what, "keeps its data in an external raw file; refused")
    }
    if (identical(layout, "H5D_CHUNKED") && !isTRUE(h5ad_guard(what, pl$all_filters_avail()))) {
      h5ad_fail(what, "is compressed with a filter that this HDF5 library does not have")
    }
  }
  if (bytes > h5ad_limits$slack && bytes > h5ad_limits$ratio * storage) {
    h5ad_fail(what, "declares %s of data but stores only %s; refused as corrupt (or an allocation bomb)",
              h5ad_bytes(bytes), h5ad_bytes(storage))
  }
  invisible(NULL)
}

# fun(obj, ...), then obj$close().
h5ad_with <- function(obj, fun, ...) {
  on.exit(try(obj$close(), silent = TRUE))
  fun(obj, ...)
}

# Reads a dataset after checking its datatype (`kinds`), its number of dimensions (`ndim`; 0 =
# scalar) and, through `check(dims)` (numpy order), its shape. Values come back as hdf5r gives
# them (R order), integer64 as double.
h5ad_data <- function(d, what, kinds, ndim = NULL, check = NULL, unsupported_space = FALSE) {
  if (is_h5_group(d)) h5ad_fail(what, "is a group, expected a dataset")
  t <- h5ad_with(h5ad_guard(what, d$get_type()), h5ad_type)
  h5ad_check_type(t, what, kinds)
  sp <- h5ad_with(h5ad_guard(what, d$get_space()), h5ad_space, what)
  if (sp$class == "null") {
    if (unsupported_space) h5ad_unsupported(what, "is empty (an HDF5 null dataspace)")
    h5ad_fail(what, "is empty (an HDF5 null dataspace), expected an array")
  }
  if (!is.null(ndim) && !length(sp$dims) %in% ndim) {
    want <- paste(ifelse(ndim == 0L, "a scalar", paste0("a ", ndim, "-d array")), collapse = " or ")
    h5ad_fail(what, "is %s, expected %s", h5ad_dims_text(sp), want)
  }
  if (!is.null(check)) check(sp$dims)
  bytes <- prod(sp$dims) * t$elsize
  h5ad_check_storage(d, what, bytes)
  h5ad_note(what, bytes)
  v <- h5ad_guard(what, h5ad_read_raw(d, sp$dims, t$kind))
  if (inherits(v, "integer64")) v <- as.double(v)
  if (is.data.frame(v)) {
    for (nm in names(v)) if (inherits(v[[nm]], "integer64")) v[[nm]] <- as.double(v[[nm]])
  }
  v
}

# hdf5r cannot read empty datasets of some types (variable-length strings): those are built here.
h5ad_read_raw <- function(d, dims, kind) {
  if (length(dims) && prod(dims) == 0) {
    v <- switch(kind, string = character(0), int = integer(0), bool = logical(0), numeric(0))
    if (length(dims) > 1L) dim(v) <- rev(dims)
    return(v)
  }
  d$read()
}

# One attribute, or NULL when absent. Its declared size is checked against the file before it
# is read, its datatype (`kinds`) and length (`max_len`) after (hdf5r reads every datatype
# safely; asking for the type first would double the cost of the many small attributes). Empty arrays (anndata writes an empty float64
# array as `column-order` of a data frame without columns) read as character(0); hdf5r cannot
# read those itself.
h5ad_attr <- function(obj, name, what, kinds = "string", max_len = h5ad_limits$attr_len) {
  there <- h5ad_guard(what, obj$attr_exists(name))
  if (!isTRUE(there)) return(NULL)
  awhat <- sprintf("%s (attribute '%s')", what, name)
  a <- h5ad_guard(awhat, obj$attr_open(name))
  on.exit(try(a$close(), silent = TRUE))
  bytes <- as.numeric(h5ad_guard(awhat, a$get_info()$data_size))
  if (!is.finite(bytes) || bytes > h5ad_state$file_size) {
    h5ad_fail(what, "attribute '%s' declares %s of data in a file of %s; the file is corrupt", name,
              h5ad_bytes(bytes), h5ad_bytes(h5ad_state$file_size))
  }
  if (bytes == 0) return(character(0))
  h5ad_note(awhat, bytes)
  v <- h5ad_guard(awhat, a$read())
  if (inherits(v, "integer64")) v <- as.double(v)
  kind <- if (inherits(v, "H5R")) "reference" else if (is.character(v)) "string"
          else if (is.logical(v)) "bool" else if (inherits(v, "factor_ext")) "enum"
          else if (is.integer(v)) "int" else if (is.double(v)) "float"
          else if (is.data.frame(v)) "compound" else if (is.raw(v)) "opaque"
          else if (is.list(v)) "vlen" else "unknown"
  if (kind == "float" && "int" %in% kinds && h5ad_whole(v)) kind <- "int"
  if (!kind %in% kinds) {
    desc <- switch(kind, string = "string", bool = "boolean", int = "integer",
                   float = "floating-point", enum = "enum (not boolean)", kind)
    h5ad_fail(what, "attribute '%s' has %s %s datatype; expected %s", name, h5ad_a(desc), desc,
              h5ad_kinds_text(kinds))
  }
  if (kind != "reference" && length(v) > max_len) {
    h5ad_fail(what, "attribute '%s' has %s elements, expected at most %s", name,
              format(length(v), scientific = FALSE), format(max_len, scientific = FALSE))
  }
  if (kind == "reference") v else as.vector(v)
}

# A single-string attribute (encoding-type, _index, ...), "" when absent or empty.
h5ad_attr_string <- function(obj, name, what) {
  v <- h5ad_attr(obj, name, what, "string", max_len = 1L)
  if (is.null(v) || !length(v)) return("")
  if (length(v) != 1L || is.na(v)) h5ad_fail(what, "attribute '%s' must be a single string", name)
  v
}

# (encoding-version is not read: nothing depends on it.)
h5ad_encoding <- function(obj, what) h5ad_attr_string(obj, "encoding-type", what)

h5ad_whole <- function(x) is.numeric(x) && !anyNA(x) && all(is.finite(x)) && all(x == round(x))

# ---------------------------------------------------------------------------------------------
# Matrices

# Shape checks, called with the numpy shape of a matrix element before its arrays are read.
h5ad_check_gc <- function(what, n_obs, n_var) {
  function(shape) {
    if (shape[1L] != n_obs || shape[2L] != n_var) {
      h5ad_fail(what, "is %s x %s (genes x cells) but var has %d genes and obs %d cells",
                format(shape[2L], scientific = FALSE), format(shape[1L], scientific = FALSE),
                n_var, n_obs)
    }
  }
}

h5ad_check_rows <- function(what, n, side) {
  function(shape) {
    if (shape[1L] != n) {
      h5ad_fail(what, "has %s rows but %s", format(shape[1L], scientific = FALSE), side)
    }
  }
}

h5ad_check_square <- function(what, n, axis) {
  function(shape) {
    if (shape[1L] != n || shape[2L] != n) {
      h5ad_fail(what, "is %s x %s, expected %s x %s = %d x %d",
                format(shape[1L], scientific = FALSE), format(shape[2L], scientific = FALSE),
                axis, axis, n, n)
    }
  }
}

h5ad_read_sparse_t <- function(obj, what, enc, check, axes) {
  shape <- h5ad_attr(obj, "shape", what, c("int", "float"), max_len = 16L)
  if (is.null(shape)) shape <- h5ad_attr(obj, "h5sparse_shape", what, c("int", "float"), max_len = 16L)
  if (is.null(shape)) h5ad_fail(what, "attribute 'shape' is missing")
  if (length(shape) != 2L || !h5ad_whole(shape) || any(shape < 0) ||
      any(shape > .Machine$integer.max)) {
    h5ad_fail(what, "attribute 'shape' must hold 2 whole numbers in [0, 2^31), not (%s)",
              paste(format(shape, scientific = FALSE, trim = TRUE), collapse = ", "))
  }
  if (!is.null(check)) check(shape)
  shape <- as.integer(shape)
  csr <- startsWith(enc, "csr")
  major <- if (csr) 1L else 2L
  minor <- 3L - major
  # The transposed result is a dgCMatrix with p of length shape[minor] + 1.
  if (4 * (shape[minor] + 1) > h5ad_limits$ratio * h5ad_state$file_size + h5ad_limits$slack) {
    h5ad_fail(what, "shape (%d, %d) is out of all proportion to the file; refused", shape[1L],
              shape[2L])
  }
  indptr <- h5ad_data(h5ad_child(obj, "indptr", what), paste0(what, "/indptr"), "int", ndim = 1L,
                      check = function(dims) {
                        if (dims != shape[major] + 1) {
                          h5ad_fail(what, "indptr has %s entries, expected %s + 1 = %d",
                                    format(dims, scientific = FALSE), axes[major], shape[major] + 1L)
                        }
                      })
  indptr <- as.vector(indptr)
  if (indptr[1L] != 0) {
    h5ad_fail(what, "indptr[0] is %s, expected 0", format(indptr[1L], scientific = FALSE))
  }
  steps <- diff(indptr)
  if (any(steps < 0)) {
    h5ad_fail(what, "indptr is not non-decreasing (it falls at position %d)", which(steps < 0)[1L])
  }
  nnz <- indptr[length(indptr)]
  if (nnz > .Machine$integer.max) {
    h5ad_fail(what, "indptr ends at %s, more stored values than a dgCMatrix can hold",
              format(nnz, scientific = FALSE))
  }
  n_idx <- NA_real_
  indices <- h5ad_data(h5ad_child(obj, "indices", what), paste0(what, "/indices"), "int", ndim = 1L,
                       check = function(dims) n_idx <<- dims)
  data <- h5ad_data(h5ad_child(obj, "data", what), paste0(what, "/data"), c("int", "float", "bool"),
                    ndim = 1L, check = function(dims) {
                      if (dims != n_idx) {
                        h5ad_fail(what, "data has %s entries but indices %s",
                                  format(dims, scientific = FALSE), format(n_idx, scientific = FALSE))
                      }
                      if (dims != nnz) {
                        h5ad_fail(what, "indptr ends at %s but data and indices have %s entries",
                                  format(nnz, scientific = FALSE), format(dims, scientific = FALSE))
                      }
                    })
  indices <- as.vector(indices)
  if (length(indices) && (min(indices) < 0 || max(indices) >= shape[minor])) {
    bad <- indices[indices < 0 | indices >= shape[minor]][1L]
    h5ad_fail(what, "indices must lie in [0, %d) (%s), found %s", shape[minor], axes[minor],
              format(bad, scientific = FALSE))
  }
  indices <- as.integer(indices)
  indptr <- as.integer(indptr)
  data <- as.double(data)
  # CSR of A (n x m) is CSC of t(A) (m x n). Canonical arrays (indices increasing within each
  # row) are used as they are; otherwise sparseMatrix() sorts them and sums duplicates, which
  # scipy allows.
  dims_t <- if (csr) rev(shape) else shape
  canonical <- TRUE
  if (length(indices) > 1L) {
    up <- diff(indices) > 0L
    starts <- indptr[-c(1L, length(indptr))]
    starts <- starts[starts > 0L & starts < length(indices)]
    up[starts] <- TRUE
    canonical <- all(up)
  }
  m <- if (canonical) {
    methods::new(methods::getClass("dgCMatrix", where = asNamespace("Matrix")), i = indices,
                 p = indptr, x = data, Dim = dims_t)
  } else {
    Matrix::sparseMatrix(i = indices + 1L, p = indptr, x = data, dims = dims_t, repr = "C")
  }
  if (csr) m else Matrix::t(m)
}

# Matrix element (dense dataset or sparse group) as t(A), A in numpy orientation; `check` is
# called with A's shape before the arrays are read, `axes` names A's axes in messages. With
# `one_d`, a 1-d dataset of length n is read as an n x 1 matrix (obsm, varm).
h5ad_read_matrix_t <- function(obj, what, check = NULL, axes = c("shape[0]", "shape[1]"),
                               one_d = FALSE) {
  if (!is_h5_group(obj)) {
    v <- h5ad_data(obj, what, c("int", "float", "bool"), ndim = if (one_d) 1:2 else 2L,
                   check = function(dims) if (!is.null(check)) check(c(dims, 1)[1:2]))
    if (is.null(dim(v))) v <- matrix(v, nrow = 1L)
    if (is.logical(v) || is.integer(v)) storage.mode(v) <- "double"
    return(v)
  }
  enc <- h5ad_encoding(obj, what)
  if (!nzchar(enc)) enc <- h5ad_attr_string(obj, "h5sparse_format", what)
  if (!nzchar(enc)) {
    h5ad_unsupported(what, paste("is a group without an 'encoding-type' attribute; expected a",
                                 "dense array, csr_matrix or csc_matrix"))
  }
  if (!enc %in% c("csr_matrix", "csc_matrix", "csr", "csc")) {
    h5ad_unsupported(what, "has unsupported encoding '%s' (expected a dense array, csr_matrix or csc_matrix)",
                     enc)
  }
  h5ad_read_sparse_t(obj, what, enc, check, axes)
}

# ---------------------------------------------------------------------------------------------
# Vectors and data frames

h5ad_vector_check <- function(what, n, n_what) {
  if (is.null(n)) return(NULL)
  function(dims) {
    len <- if (length(dims)) dims[1L] else 1
    if (len != n) {
      h5ad_fail(what, "has %s entries, expected %d (%s)", format(len, scientific = FALSE), n, n_what)
    }
  }
}

h5ad_factor <- function(codes, cats, ordered, what) {
  cats <- as.vector(cats)
  if (anyNA(cats)) h5ad_fail(what, "categories contain missing values")
  lev <- as.character(cats)
  if (anyDuplicated(lev)) {
    h5ad_fail(what, "categories are not unique ('%s' repeats)", lev[anyDuplicated(lev)])
  }
  codes <- as.vector(codes)
  if (length(codes) && (anyNA(codes) || min(codes) < -1 || max(codes) >= length(lev))) {
    bad <- codes[is.na(codes) | codes < -1 | codes >= length(lev)][1L]
    h5ad_fail(what, "codes must lie in [-1, %d) (there are %d categories), found %s", length(lev),
              length(lev), format(bad, scientific = FALSE))
  }
  idx <- as.integer(codes) + 1L
  idx[idx == 0L] <- NA_integer_
  structure(idx, levels = lev, class = c(if (isTRUE(ordered)) "ordered", "factor"))
}

h5ad_ordered <- function(obj, what) {
  o <- h5ad_attr(obj, "ordered", what, c("bool", "int"), max_len = 1L)
  if (is.null(o) || !length(o)) return(FALSE)
  if (length(o) != 1L || is.na(o) || !o %in% c(0, 1)) {
    h5ad_fail(what, "attribute 'ordered' must be a single boolean")
  }
  as.logical(o)
}

# Old (anndata 0.7) categorical column: integer codes with a `categories` object reference, or
# the same name in `__categories`.
h5ad_old_categories <- function(df_group, d, name, what) {
  cats_obj <- NULL
  ref <- tryCatch(h5ad_attr(d, "categories", what, "reference", max_len = 1L),
                  scnative_h5ad_error = function(e) NULL)
  if (!is.null(ref) && inherits(ref, "H5R_OBJECT")) {
    cats_obj <- tryCatch(h5_track(ref$dereference(obj = d)[[1L]]), error = function(e) NULL)
    if (!is.null(cats_obj) && !inherits(cats_obj, "H5D")) cats_obj <- NULL
  }
  df_what <- substr(what, 1L, nchar(what) - nchar(name) - 1L)
  cwhat <- paste0(df_what, "/__categories/", name)
  if (is.null(cats_obj) && "__categories" %in% h5ad_kids(df_group, df_what)) {
    cg <- h5ad_child(df_group, "__categories", df_what)
    if (is_h5_group(cg) && name %in% h5ad_kids(cg, paste0(df_what, "/__categories"))) {
      cats_obj <- h5ad_child(cg, name, paste0(df_what, "/__categories"))
    }
  }
  if (is.null(cats_obj)) return(NULL)
  list(cats = h5ad_data(cats_obj, cwhat, c("string", "int", "float", "bool"), ndim = 1L),
       ordered = h5ad_ordered(cats_obj, cwhat))
}

# A 1-d element (data frame column or uns vector) in its R form; `n` is its required length.
h5ad_read_vector <- function(obj, what, n = NULL, n_what = "", df_group = NULL, name = NULL) {
  len_check <- h5ad_vector_check(what, n, n_what)
  if (is_h5_group(obj)) {
    enc <- h5ad_encoding(obj, what)
    if (enc == "categorical") {
      codes <- h5ad_data(h5ad_child(obj, "codes", what), paste0(what, "/codes"), "int", ndim = 1L,
                         check = len_check)
      cats <- h5ad_data(h5ad_child(obj, "categories", what), paste0(what, "/categories"),
                        c("string", "int", "float", "bool"), ndim = 1L)
      return(h5ad_factor(codes, cats, h5ad_ordered(obj, what), what))
    }
    if (enc %in% c("nullable-integer", "nullable-boolean", "nullable-string-array")) {
      kinds <- switch(enc, `nullable-integer` = "int", `nullable-boolean` = c("bool", "int"),
                      "string")
      v <- as.vector(h5ad_data(h5ad_child(obj, "values", what), paste0(what, "/values"), kinds,
                               ndim = 1L, check = len_check))
      if (enc == "nullable-boolean") {
        if (anyNA(v) || any(!v %in% c(0, 1))) h5ad_fail(what, "values must be booleans")
        v <- as.logical(v)
      }
      if (!"mask" %in% h5ad_kids(obj, what)) h5ad_fail(what, "'mask' is missing")
      mask <- as.vector(h5ad_data(h5ad_child(obj, "mask", what), paste0(what, "/mask"),
                                  c("bool", "int"), ndim = 1L, check = function(dims) {
                                    if (dims != length(v)) {
                                      h5ad_fail(what, "mask has %s entries, expected %d",
                                                format(dims, scientific = FALSE), length(v))
                                    }
                                  }))
      if (anyNA(mask) || any(!mask %in% c(0, 1))) h5ad_fail(what, "mask must hold booleans")
      v[as.logical(mask)] <- NA
      return(v)
    }
    if (!nzchar(enc)) {
      h5ad_fail(what, "is a group without an 'encoding-type' attribute; expected a 1-d array")
    }
    h5ad_fail(what, "has unsupported encoding '%s' (expected categorical, a nullable array or a dataset)",
              enc)
  }
  v <- h5ad_data(obj, what, c("int", "float", "bool", "string"), ndim = 1L, check = len_check)
  v <- as.vector(v)
  if (!is.null(df_group) && is.numeric(v) && h5ad_guard(what, obj$attr_exists("categories"))) {
    oc <- h5ad_old_categories(df_group, obj, name, what)
    if (!is.null(oc)) {
      if (!h5ad_whole(v)) h5ad_fail(what, "categorical codes must be whole numbers")
      return(h5ad_factor(v, oc$cats, oc$ordered, what))
    }
  }
  v
}

h5ad_unique_names <- function(x, what) {
  x <- as.character(x)
  if (anyDuplicated(x)) {
    warnf("%s", h5ad_clean(sprintf("%s has duplicated names; made unique with make.unique()", what)))
    x <- make.unique(x)
  }
  x
}

# Data frame in the group encoding or the old compound-dataset one; `n` is its required number
# of rows (obsm data frames).
h5ad_read_df <- function(obj, what, uns_group = NULL, n = NULL, n_what = "") {
  if (!is_h5_group(obj)) return(h5ad_read_compound_df(obj, what, uns_group, n, n_what))
  members <- h5ad_kids(obj, what)
  index_name <- h5ad_attr_string(obj, "_index", what)
  if (!nzchar(index_name)) {
    index_name <- if ("_index" %in% members) "_index" else if ("index" %in% members) "index" else ""
  } else if (!index_name %in% members) {
    h5ad_fail(what, "index '%s' is missing", index_name)
  }
  order <- h5ad_attr(obj, "column-order", what, c("string", "float", "int"))
  if (is.null(order)) {
    order <- setdiff(members, c(index_name, "__categories"))
  } else if (!is.character(order)) {
    if (length(order)) h5ad_fail(what, "attribute 'column-order' must hold strings")
    order <- character(0)
  }
  if (anyNA(order)) h5ad_fail(what, "attribute 'column-order' contains missing values")
  if (anyDuplicated(order)) {
    h5ad_fail(what, "attribute 'column-order' has a duplicate column name ('%s')",
              order[anyDuplicated(order)])
  }
  missing <- setdiff(order, members)
  if (length(missing)) {
    h5ad_fail(what, "lists column(s) %s in 'column-order' that are not stored",
              paste0("'", missing, "'", collapse = ", "))
  }
  rn <- NULL
  if (nzchar(index_name)) {
    iwhat <- paste0(what, "/", index_name)
    rn <- h5ad_read_vector(h5ad_child(obj, index_name, what), iwhat, n, n_what)
    if (is.factor(rn)) rn <- as.character(rn)
    if (anyNA(rn)) h5ad_fail(iwhat, "the index contains missing values")
    rn <- as.character(rn)
    if (is.null(n)) {
      n <- length(rn)
      n_what <- sprintf("the length of the index %s", iwhat)
    }
  }
  cols <- list()
  for (nm in order) {
    cwhat <- paste0(what, "/", nm)
    v <- h5ad_read_vector(h5ad_child(obj, nm, what), cwhat, n, n_what, obj, nm)
    if (is.null(n)) {
      n <- length(v)
      n_what <- sprintf("the length of %s", cwhat)
    }
    cols[[nm]] <- v
  }
  if (is.null(n)) n <- 0L
  df <- if (length(cols)) {
    as.data.frame(cols, stringsAsFactors = FALSE, optional = TRUE, check.names = FALSE)
  } else {
    as.data.frame(matrix(nrow = n, ncol = 0))
  }
  if (!is.null(rn)) rownames(df) <- h5ad_unique_names(rn, what)
  df
}

# anndata < 0.7: a compound dataset, one field per column, categories in uns/<column>_categories.
h5ad_read_compound_df <- function(obj, what, uns_group, n, n_what) {
  raw <- h5ad_data(obj, what, "compound", ndim = 1L, check = h5ad_vector_check(what, n, n_what))
  raw <- as.data.frame(raw, stringsAsFactors = FALSE)
  if (!ncol(raw)) h5ad_fail(what, "the compound dataset has no fields")
  idx_col <- if ("index" %in% names(raw)) "index" else names(raw)[1L]
  if (anyNA(raw[[idx_col]])) h5ad_fail(what, "the index field '%s' contains missing values", idx_col)
  rn <- h5ad_unique_names(raw[[idx_col]], what)
  raw[[idx_col]] <- NULL
  uns_names <- if (!is.null(uns_group)) h5ad_kids(uns_group, "uns") else character(0)
  for (nm in names(raw)) {
    key <- paste0(nm, "_categories")
    if (key %in% uns_names) {
      cwhat <- paste0("uns/", key)
      cats <- h5ad_data(h5ad_child(uns_group, key, "uns"), cwhat, c("string", "int", "float", "bool"),
                        ndim = 1L)
      if (!h5ad_whole(raw[[nm]])) {
        h5ad_fail(what, "field '%s' has categories in %s but its codes are not whole numbers", nm,
                  cwhat)
      }
      raw[[nm]] <- h5ad_factor(raw[[nm]], cats, FALSE, sprintf("%s field '%s'", what, nm))
    }
  }
  rownames(raw) <- rn
  raw
}

# ---------------------------------------------------------------------------------------------
# uns: groups -> named lists, scalars, vectors, matrices in numpy orientation. The walk over
# nested groups is iterative (an explicit stack, not recursion, so its depth costs no C stack)
# and bounded: groups nested deeper than h5ad_limits$depth are an error, and each group is read
# once: `seen` maps an object address to its value, or marks it open while its members are
# read, so a link back to an enclosing group (a cycle) is an error and a group linked twice is
# read once.
h5ad_obj_key <- function(obj, what) {
  info <- h5ad_guard(what, obj$obj_info())
  paste(format(info$fileno, scientific = FALSE), format(info$addr, scientific = FALSE))
}

h5ad_is_dict <- function(obj, what) is_h5_group(obj) && h5ad_encoding(obj, what) %in% c("", "dict")

h5ad_read_uns <- function(obj, what) {
  if (!h5ad_is_dict(obj, what)) return(h5ad_read_uns_leaf(obj, what))
  seen <- new.env(parent = emptyenv())
  open_frame <- function(g, gwhat, depth) {
    if (depth > h5ad_limits$depth) {
      h5ad_fail(gwhat, "groups are nested more than %d levels deep; refused", h5ad_limits$depth)
    }
    key <- h5ad_obj_key(g, gwhat)
    seen[[key]] <- list(state = "open", what = gwhat)
    list(g = g, what = gwhat, depth = depth, key = key, names = h5ad_kids(g, gwhat), i = 0L,
         out = list())
  }
  stack <- list(open_frame(obj, what, 0L))
  repeat {
    k <- length(stack)
    fr <- stack[[k]]
    if (fr$i >= length(fr$names)) {
      # group complete: hand its list to the enclosing group (or return it)
      seen[[fr$key]] <- list(state = "done", value = fr$out)
      if (k == 1L) return(fr$out)
      stack[[k]] <- NULL
      stack[[k - 1L]]$out[fr$name] <- list(fr$out)
      next
    }
    fr$i <- fr$i + 1L
    stack[[k]]$i <- fr$i
    nm <- fr$names[fr$i]
    cwhat <- paste0(fr$what, "/", nm)
    pushed <- FALSE
    v <- h5ad_uns_skip(cwhat, {
      child <- h5ad_child(fr$g, nm, fr$what)
      if (h5ad_is_dict(child, cwhat)) {
        key <- h5ad_obj_key(child, cwhat)
        s <- seen[[key]]
        if (is.null(s)) {
          nf <- open_frame(child, cwhat, fr$depth + 1L)
          nf$name <- nm
          stack[[k + 1L]] <- nf
          pushed <- TRUE
          NULL
        } else if (identical(s$state, "open")) {
          h5ad_fail(cwhat, "links back to the enclosing group %s (a cycle); refused", s$what)
        } else {
          s$value
        }
      } else {
        h5ad_read_uns_leaf(child, cwhat)
      }
    })
    if (!pushed && !is.null(v)) stack[[k]]$out[nm] <- list(v)
  }
}

# An uns element that is not a plain group: a data frame, a sparse matrix, an encoded vector
# or a dataset.
h5ad_read_uns_leaf <- function(obj, what) {
  if (is_h5_group(obj)) {
    enc <- h5ad_encoding(obj, what)
    if (enc == "dataframe") return(h5ad_read_df(obj, what))
    if (enc %in% c("csr_matrix", "csc_matrix")) {
      m <- h5ad_read_matrix_t(obj, what)
      return(Matrix::t(m))
    }
    if (enc %in% c("categorical", "nullable-integer", "nullable-boolean", "nullable-string-array")) {
      return(h5ad_read_vector(obj, what))
    }
    h5ad_unsupported(what, "has unsupported encoding '%s'", enc)
  }
  v <- h5ad_data(obj, what, c("int", "float", "bool", "string", "compound"), unsupported_space = TRUE)
  if (is.data.frame(v)) return(v)
  d <- dim(v)
  if (!is.null(d) && length(d) == 1L) v <- as.vector(v)
  if (!is.null(d) && length(d) == 2L) v <- t(v)
  if (!is.null(d) && length(d) > 2L) v <- aperm(v)
  v
}

# Unsupported (well-formed but not representable) uns elements are skipped with a warning.
h5ad_uns_skip <- function(what, expr) {
  tryCatch(expr, scnative_h5ad_unsupported = function(e) {
    warnf("%s; skipped", conditionMessage(e))
    NULL
  })
}

# ---------------------------------------------------------------------------------------------
# The whole read, in this process

h5ad_check_path <- function(path) {
  check_string(path, "path")
  if (!file.exists(path)) stopf("'path' does not exist: %s", path)
  if (dir.exists(path)) stopf("'path' is a directory, not an .h5ad file: %s", path)
  if (!isTRUE(tryCatch(hdf5r::is.h5file(path), error = function(e) FALSE))) {
    stopf("'path' is not an HDF5 file (so not an AnnData .h5ad file): %s", path)
  }
  normalizePath(path)
}

# Any error that is not one of ours (e.g. memory exhausted) is reported with the element that
# was being read.
h5ad_read_file <- function(path, layers, X, obsm, obsp, uns) {
  h5ad_state$step <- "the file"
  tryCatch(h5ad_read_file_(path, layers, X, obsm, obsp, uns), error = function(e) {
    if (inherits(e, "scnative_h5ad_error")) stop(e)
    h5ad_fail(h5ad_state$step %||% "the file", "could not be read (%s)", conditionMessage(e))
  })
}

h5ad_read_file_ <- function(path, layers, X, obsm, obsp, uns) {
  h5ad_note("the file")
  h5 <- tryCatch(hdf5r::H5File$new(path, mode = "r"),
                 error = function(e) h5ad_stopf("'path' could not be opened as HDF5: %s (%s)", path,
                                                h5ad_hdf5_msg(e)))
  h5ad_state$objs <- list()
  h5ad_state$file <- h5
  h5ad_state$file_size <- file.size(path)
  on.exit({
    h5_close_file(h5)
    h5ad_state$file <- NULL
  }, add = TRUE)
  top <- h5ad_kids(h5, "the file")
  if (!all(c("obs", "var") %in% top)) {
    h5ad_stopf("'path' is not an AnnData .h5ad file (no 'obs' and 'var' at the top level; found %s): %s",
          if (length(top)) h5ad_clean(paste0("'", top, "'", collapse = ", ")) else "nothing", path)
  }
  group <- function(name) {
    g <- h5ad_child(h5, name, "")
    if (!is_h5_group(g)) h5ad_fail(name, "is a dataset, expected a group")
    g
  }
  uns_group <- if ("uns" %in% top) group("uns") else NULL
  obs_df <- h5ad_read_df(h5ad_child(h5, "obs", ""), "obs", uns_group)
  var_df <- h5ad_read_df(h5ad_child(h5, "var", ""), "var", uns_group)
  cells <- rownames(obs_df)
  genes <- rownames(var_df)
  n_obs <- nrow(obs_df)
  n_var <- nrow(var_df)

  # X and layers: numpy shape n_obs x n_var, checked before their arrays are read.
  read_gc <- function(obj, what) {
    m <- h5ad_read_matrix_t(obj, what, h5ad_check_gc(what, n_obs, n_var), c("n_obs", "n_var"))
    dimnames(m) <- list(genes, cells)
    m
  }
  Xm <- NULL
  if (X && "X" %in% top) Xm <- read_gc(h5ad_child(h5, "X", ""), "X")

  layers_group <- if ("layers" %in% top) group("layers") else NULL
  avail <- if (!is.null(layers_group)) h5ad_kids(layers_group, "layers") else character(0)
  want <- layers %||% avail
  bad <- setdiff(want, avail)
  if (length(bad)) {
    h5ad_stopf("'layers': layer(s) %s not found in %s; available layers: %s",
          paste0("'", bad, "'", collapse = ", "), path,
          if (length(avail)) h5ad_clean(paste0("'", avail, "'", collapse = ", ")) else "none")
  }
  lay <- list()
  for (nm in want) lay[[nm]] <- read_gc(h5ad_child(layers_group, nm, "layers"), paste0("layers/", nm))

  read_axis_m <- function(gname, n, names_, axis, side) {
    out <- list()
    if (!gname %in% top) return(out)
    g <- group(gname)
    for (nm in h5ad_kids(g, gname)) {
      what <- paste0(gname, "/", nm)
      v <- h5ad_uns_skip(what, {
        el <- h5ad_child(g, nm, gname)
        if (is_h5_group(el) && h5ad_encoding(el, what) == "dataframe") {
          df <- h5ad_read_df(el, what, n = n, n_what = sprintf("%s = %d", axis, n))
          rownames(df) <- names_
          df
        } else {
          # (read first: an error inside Matrix::t()'s argument would get an S4 prefix)
          m <- h5ad_read_matrix_t(el, what, h5ad_check_rows(what, n, side), c(axis, "shape[1]"),
                                  one_d = TRUE)
          m <- Matrix::t(m)
          rownames(m) <- names_
          m
        }
      })
      if (!is.null(v)) out[[nm]] <- v
    }
    out
  }
  read_axis_p <- function(gname, n, names_, axis) {
    out <- list()
    if (!gname %in% top) return(out)
    g <- group(gname)
    for (nm in h5ad_kids(g, gname)) {
      what <- paste0(gname, "/", nm)
      v <- h5ad_read_matrix_t(h5ad_child(g, nm, gname), what, h5ad_check_square(what, n, axis),
                              c(axis, axis))
      v <- Matrix::t(v)
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
    obsm = if (obsm) read_axis_m("obsm", n_obs, cells, "n_obs", sprintf("obs has %d cells", n_obs))
           else list(),
    varm = if (obsm) read_axis_m("varm", n_var, genes, "n_var", sprintf("var has %d genes", n_var))
           else list(),
    obsp = if (obsp) read_axis_p("obsp", n_obs, cells, "n_obs") else list(),
    varp = if (obsp) read_axis_p("varp", n_var, genes, "n_var") else list(),
    uns = if (uns && !is.null(uns_group)) h5ad_read_uns(uns_group, "uns") else list(),
    path = path
  )
  class(res) <- "scnative_h5ad"
  res
}

# ---------------------------------------------------------------------------------------------
# The whole read, in a forked child process
#
# The child reads the file and sends the result back (serialised); its warnings are replayed
# here and its errors raised here with the same message. If the HDF5 library crashes on a
# corrupt file, only the child ends (its crash handlers are reset to the defaults by
# scnative_h5ad_child_init(), so R's handler does not run and remove the session's temporary
# directory, which parent and child share), and the error names the element it was reading. A
# watchdog ends the child when one step (one element, see h5ad_note()) takes longer than
# h5ad_limits$step_s seconds plus a second per h5ad_limits$step_rate declared bytes, which only
# a loop inside the HDF5 library on a corrupt file can cause.
h5ad_can_isolate <- function() {
  .Platform$OS.type == "unix" && requireNamespace("parallel", quietly = TRUE) &&
    requireNamespace("tools", quietly = TRUE)
}

h5ad_read_isolated <- function(path, reader) {
  # Namespaces the child needs are loaded here, once, not in every child.
  loadNamespace("Matrix")
  progress <- tempfile("scnative-h5ad-")
  file.create(progress)
  on.exit(unlink(progress), add = TRUE)
  job <- parallel::mcparallel({
    .Call(C_scnative_h5ad_child_init, h5ad_memory_budget(path))
    h5ad_state$progress <- file(progress, "r+b")
    warns <- character(0)
    value <- tryCatch(
      withCallingHandlers(reader(),
                          warning = function(w) {
                            warns <<- c(warns, conditionMessage(w))
                            invokeRestart("muffleWarning")
                          }),
      error = function(e) {
        msg <- conditionMessage(e)
        if (!inherits(e, "scnative_h5ad_error") && !is.null(h5ad_state$step)) {
          msg <- h5ad_clean(sprintf("%s: could not be read (%s)", h5ad_state$step, msg))
        }
        structure(list(message = msg), class = "h5ad_child_error")
      })
    list(value = value, warnings = warns)
  }, silent = TRUE)
  finished <- FALSE
  on.exit(if (!finished) {
    tools::pskill(job$pid, tools::SIGKILL)
    suppressWarnings(parallel::mccollect(job, wait = TRUE))
  }, add = TRUE, after = FALSE)
  step <- ""
  since <- Sys.time()
  limit <- getOption("scnative.h5ad_step_timeout", h5ad_limits$step_s)
  repeat {
    res <- suppressWarnings(parallel::mccollect(job, wait = FALSE, timeout = 0.05))
    if (!is.null(res)) break
    now <- tryCatch(sub(" +$", "", readLines(progress, n = 1L, warn = FALSE)),
                    error = function(e) character(0))
    if (length(now) && nzchar(now) && !identical(now, step)) {
      step <- now
      since <- Sys.time()
    } else {
      bytes <- suppressWarnings(as.numeric(sub("\t.*", "", step)))
      allowed <- limit + (if (is.na(bytes)) 0 else bytes / h5ad_limits$step_rate)
      if (as.numeric(difftime(Sys.time(), since, units = "secs")) > allowed) {
        stopf("%s: reading it did not finish within %.0f s, so it was stopped; the file is probably corrupt: %s",
              h5ad_step_what(step), allowed, path)
      }
    }
  }
  finished <- TRUE
  r <- res[[1L]]
  if (!is.list(r) || !all(c("value", "warnings") %in% names(r))) {
    step <- tryCatch(sub(" +$", "", readLines(progress, n = 1L, warn = FALSE)),
                     error = function(e) step)
    stopf("%s: the HDF5 library crashed (or ran out of memory) reading it; the file is corrupt: %s",
          h5ad_step_what(if (length(step)) step else ""), path)
  }
  for (w in r$warnings) warning(w, call. = FALSE)
  if (inherits(r$value, "h5ad_child_error")) stop(r$value$message, call. = FALSE)
  r$value
}

# Memory the child may allocate beyond what it inherits: a corrupt length inside the HDF5
# library (a variable-length string "of 4 GB") then fails to allocate instead of filling the
# machine's memory. Generous for intact files (the result, its copies and its serialised form);
# option scnative.h5ad_memory_limit (bytes, 0 = none) overrides it.
h5ad_memory_budget <- function(path) {
  opt <- getOption("scnative.h5ad_memory_limit")
  if (!is.null(opt)) return(as.numeric(opt))
  4 * 2^30 + 64 * file.size(path)
}

h5ad_step_what <- function(step) {
  what <- sub("^[^\t]*\t", "", step)
  if (nzchar(what)) h5ad_clean(what) else "the file"
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
#' The file is not trusted: the datatype, dimensions and storage of every element are checked
#' before it is read and its values (sparse index arrays, categorical codes, lengths against
#' `obs` and `var`) after, and anything malformed is an error naming the element, e.g.
#' `"layers/Ms: indptr has 10 entries, expected n_obs + 1 = 51"`. Links to other files are
#' refused, cycles and nesting deeper than 50 levels in `uns` are errors, and no element may
#' declare more data than its storage in the file can hold. Elements of `uns` that are well
#' formed but have no R form (e.g. opaque datatypes, unknown encodings) are skipped with a
#' warning.
#'
#' @param path Character of length 1: the `.h5ad` file.
#' @param layers `NULL` (default: every layer) or a character vector of layer names to read;
#'   `character(0)` reads none. A name that is not in the file is an error.
#' @param X Logical of length 1: read `X`.
#' @param obsm Logical of length 1: read `obsm` (cells x k matrices or data frames) and `varm`
#'   (genes x k).
#' @param obsp Logical of length 1: read `obsp` (cells x cells) and `varp` (genes x genes).
#' @param uns Logical of length 1: read `uns` as a nested list.
#' @param isolate Logical of length 1: read in a forked child process (on Unix; ignored on
#'   Windows) and copy the result back. The HDF5 library can crash on some corrupt files, which
#'   no check can foresee; isolated, such a crash (or a runaway loop, stopped by a watchdog) is
#'   an R error naming the element being read, and the R session goes on. `FALSE` reads in this
#'   process, which saves the copy (memory and time) for large files that are known to be
#'   intact. The watchdog allows each element 60 seconds plus one second per 10 MB it declares
#'   (option `scnative.h5ad_step_timeout` sets the 60), and the child may allocate at most 4 GiB
#'   plus 64 times the file's size (option `scnative.h5ad_memory_limit`, in bytes; 0 lifts the
#'   limit; Linux only).
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
read_h5ad <- function(path, layers = NULL, X = TRUE, obsm = TRUE, obsp = TRUE, uns = TRUE,
                      isolate = TRUE, ...) {
  if (...length()) {
    stopf("unknown argument(s) to read_h5ad(): %s",
          paste(names(list(...)) %||% "<unnamed>", collapse = ", "))
  }
  h5ad_require()
  check_flag(X, "X")
  check_flag(obsm, "obsm")
  check_flag(obsp, "obsp")
  check_flag(uns, "uns")
  check_flag(isolate, "isolate")
  if (!is.null(layers) && (!is.character(layers) || anyNA(layers))) {
    stopf("'layers' must be NULL or a character vector of layer names")
  }
  path <- h5ad_check_path(path)
  if (isolate && h5ad_can_isolate()) {
    return(h5ad_read_isolated(path, function() h5ad_read_file(path, layers, X, obsm, obsp, uns)))
  }
  h5ad_read_file(path, layers, X, obsm, obsp, uns)
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
