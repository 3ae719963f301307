# Corrupt .h5ad generator for test-h5ad-hostile.R (issue 17, "Hostile input"): a valid small file
# written by write_h5ad(), then variants changed with hdf5r (datasets replaced or deleted,
# attributes rewritten, links added) or at the byte level (truncation, byte flips).

h5c_base <- function(path) {
  counts <- matrix(c(0, 2, 1, 0, 3, 0, 1, 4, 0, 2, 0, 0, 5, 1, 0, 2, 0, 3, 1, 0, 0, 1, 2, 0,
                     0, 3, 0, 1, 0, 2), nrow = 6,
                   dimnames = list(paste0("gene", 1:6), paste0("cell", 1:5)))
  obs <- data.frame(type = factor(c("a", NA, "b", "a", "c")), label = c("x", "y", "z", "w", "v"),
                    size = c(1.5, 2.25, NA, 4, 5), n = c(3L, NA, 4L, 1L, 5L),
                    ok = c(TRUE, FALSE, TRUE, TRUE, FALSE), maybe = c(TRUE, NA, FALSE, TRUE, NA),
                    row.names = colnames(counts), stringsAsFactors = FALSE)
  var <- data.frame(symbol = toupper(rownames(counts)), row.names = rownames(counts))
  write_h5ad(path, X = Matrix::Matrix(counts, sparse = TRUE), layers = list(Ms = counts / 3),
             obs = obs, var = var, obsm = list(X_pca = matrix(1:10 / 2, 5, 2)),
             obsp = list(conn = Matrix::sparseMatrix(i = c(1, 2), j = c(2, 1), x = c(0.5, 0.5),
                                                     dims = c(5, 5))),
             uns = list(mode = "dyn", params = list(k = 2L, nested = list(on = FALSE)),
                        v = c(1, 2)),
             overwrite = TRUE)
  path
}

# String attributes of an object, to carry over to its replacement.
h5c_str_attrs <- function(obj) {
  out <- list()
  for (a in hdf5r::h5attr_names(obj)) {
    v <- tryCatch(hdf5r::h5attr(obj, a), error = function(e) NULL)
    if (is.character(v)) out[[a]] <- v
  }
  out
}

h5c_attr <- function(h, path, name, value, dtype = NULL, scalar = length(value) == 1L) {
  obj <- if (path == "/") h else h[[path]]
  if (obj$attr_exists(name)) obj$attr_delete(name)
  if (is.null(dtype)) {
    dtype <- if (is.character(value)) hdf5r::H5T_STRING$new(size = Inf)
             else if (is.double(value)) hdf5r::h5types$H5T_IEEE_F64LE
             else hdf5r::h5types$H5T_STD_I64LE
  }
  space <- if (scalar) hdf5r::H5S$new("scalar")
           else hdf5r::H5S$new("simple", dims = length(value), maxdims = length(value))
  obj$create_attr(name, robj = value, dtype = dtype, space = space)
  invisible(NULL)
}

h5c_del_attr <- function(h, path, name) {
  obj <- if (path == "/") h else h[[path]]
  obj$attr_delete(name)
  invisible(NULL)
}

h5c_del <- function(h, path) {
  h$link_delete(path)
  invisible(NULL)
}

# Replaces (or creates) the dataset at `path` with `value` (R orientation, as hdf5r writes),
# keeping the old object's string attributes unless `keep_attrs = FALSE`.
h5c_put <- function(h, path, value, dtype = NULL, space = NULL, keep_attrs = TRUE) {
  force(value)
  attrs <- list()
  if (h$exists(path)) {
    if (keep_attrs) attrs <- h5c_str_attrs(h[[path]])
    h$link_delete(path)
  }
  if (is.null(space) && !is.null(value)) {
    dims <- dim(value) %||% length(value)
    space <- hdf5r::H5S$new("simple", dims = dims, maxdims = dims)
  }
  if (is.null(dtype) && is.character(value)) dtype <- hdf5r::H5T_STRING$new(size = Inf)
  h$create_dataset(path, robj = value, dtype = dtype, space = space, chunk_dims = NULL)
  for (a in names(attrs)) h5c_attr(h, path, a, attrs[[a]])
  invisible(NULL)
}

# A chunked dataset declaring `dims` elements with nothing stored (an allocation bomb).
h5c_bomb <- function(h, path, dims, dtype = hdf5r::h5types$H5T_IEEE_F64LE) {
  attrs <- if (h$exists(path)) h5c_str_attrs(h[[path]]) else list()
  if (h$exists(path)) h$link_delete(path)
  h$create_dataset(path, dtype = dtype, space = hdf5r::H5S$new("simple", dims = dims, maxdims = dims),
                   chunk_dims = pmin(64, dims))
  for (a in names(attrs)) h5c_attr(h, path, a, attrs[[a]])
  invisible(NULL)
}

# A compound datatype of one double and one object reference.
h5c_compound_type <- function() {
  hdf5r::H5T_COMPOUND$new(c("a", "b"), dtypes = list(hdf5r::h5types$H5T_NATIVE_DOUBLE,
                                                    hdf5r::h5types$H5T_NATIVE_INT))
}

# The variants: name -> list(mutate = function(h) on the file opened "r+" (or file = function(path)
# on the bytes), expect = a regular expression the error must match, or NA when the variant is
# valid and must read).
h5c_variants <- function() {
  I64 <- hdf5r::h5types$H5T_STD_I64LE
  v <- list()
  add <- function(name, expect, mutate = NULL, file = NULL) {
    v[[name]] <<- list(mutate = mutate, file = file, expect = expect)
  }
  # --- sparse X (CSR of 5 cells x 6 genes, 16 stored values)
  add("X indptr short", "X: indptr has 5 entries, expected n_obs \\+ 1 = 6",
      function(h) h5c_put(h, "X/indptr", c(0L, 3L, 6L, 9L, 12L)))
  add("X indptr long", "X: indptr has 7 entries, expected n_obs \\+ 1 = 6",
      function(h) h5c_put(h, "X/indptr", c(0L, 3L, 6L, 9L, 12L, 16L, 16L)))
  add("X indptr decreasing", "X: indptr is not non-decreasing",
      function(h) h5c_put(h, "X/indptr", c(0L, 9L, 6L, 9L, 12L, 16L)))
  add("X indptr first not 0", "X: indptr\\[0\\] is 2, expected 0",
      function(h) h5c_put(h, "X/indptr", c(2L, 3L, 6L, 9L, 12L, 16L)))
  add("X indptr last beyond nnz", "X: indptr ends at 40 but data and indices have 16 entries",
      function(h) h5c_put(h, "X/indptr", c(0L, 3L, 6L, 9L, 12L, 40L)))
  add("X indptr last below nnz", "X: indptr ends at 12 but data and indices have 16 entries",
      function(h) h5c_put(h, "X/indptr", c(0L, 3L, 6L, 9L, 12L, 12L)))
  add("X indptr huge values", "X: indptr",
      function(h) h5c_put(h, "X/indptr", c(0, 3, 6, 9, 12, 2^40), dtype = I64))
  add("X indptr negative", "X: indptr",
      function(h) h5c_put(h, "X/indptr", c(0L, -3L, 6L, 9L, 12L, 16L)))
  add("X indices out of range", "X: indices must lie in \\[0, 6\\)",
      function(h) h5c_put(h, "X/indices", c(6L, rep(0L, 15))))
  add("X indices negative", "X: indices must lie in \\[0, 6\\)",
      function(h) h5c_put(h, "X/indices", c(-1L, rep(0L, 15))))
  add("X indices huge", "X: indices must lie in \\[0, 6\\)",
      function(h) h5c_put(h, "X/indices", c(2^40, rep(0, 15)), dtype = I64))
  add("X indices fractional", "X/indices: .*integer",
      function(h) h5c_put(h, "X/indices", c(0.5, rep(0, 15))))
  add("X indices shorter than data", "X: data has 16 entries but indices 15",
      function(h) h5c_put(h, "X/indices", rep(0L, 15)))
  add("X data missing", "X: 'data' is missing",
      function(h) h5c_del(h, "X/data"))
  add("X indptr missing", "X: 'indptr' is missing",
      function(h) h5c_del(h, "X/indptr"))
  add("X data is a group", "X/data: .*group",
      function(h) {
        h5c_del(h, "X/data")
        h$create_group("X/data")
      })
  add("X data strings", "X/data: .*string",
      function(h) h5c_put(h, "X/data", rep("a", 16)))
  add("X indptr strings", "X/indptr: .*string",
      function(h) h5c_put(h, "X/indptr", as.character(c(0, 3, 6, 9, 12, 16))))
  add("X data 2-d", "X/data: .*1-d",
      function(h) h5c_put(h, "X/data", matrix(1, 16, 2)))
  add("X data compound", "X/data: .*compound",
      function(h) h5c_put(h, "X/data", NULL, dtype = h5c_compound_type(),
                          space = hdf5r::H5S$new("simple", dims = 16, maxdims = 16)))
  add("X data bomb", "X: data has 1099511627776 entries but indices 16",
      function(h) h5c_bomb(h, "X/data", 2^40))
  add("X indices bomb", "X/indices: declares",
      function(h) h5c_bomb(h, "X/indices", 2^34, hdf5r::h5types$H5T_STD_I32LE))
  add("X shape missing", "X: .*'shape'",
      function(h) h5c_del_attr(h, "X", "shape"))
  add("X shape length 3", "X: .*'shape'.*2",
      function(h) h5c_attr(h, "X", "shape", c(5, 6, 1), dtype = I64, scalar = FALSE))
  add("X shape negative", "X: .*'shape'",
      function(h) h5c_attr(h, "X", "shape", c(-5, 6), dtype = I64, scalar = FALSE))
  add("X shape huge", "X: .*'shape'",
      function(h) h5c_attr(h, "X", "shape", c(2^40, 6), dtype = I64, scalar = FALSE))
  add("X shape strings", "X: .*'shape'",
      function(h) h5c_attr(h, "X", "shape", c("5", "6"), scalar = FALSE))
  add("X shape mismatch", "X: is 7 x 5 \\(genes x cells\\) but var has 6 genes",
      function(h) {
        h5c_attr(h, "X", "shape", c(5, 7), dtype = I64, scalar = FALSE)
      })
  add("X encoding unknown", "X: has unsupported encoding 'foo_matrix'",
      function(h) h5c_attr(h, "X", "encoding-type", "foo_matrix"))
  add("X encoding numeric", "X: attribute 'encoding-type'",
      function(h) h5c_attr(h, "X", "encoding-type", 5L))
  add("X encoding two strings", "X: attribute 'encoding-type'",
      function(h) h5c_attr(h, "X", "encoding-type", c("csr_matrix", "csc_matrix"), scalar = FALSE))
  add("X as csc with csr arrays", "X: indptr has 6 entries, expected n_var \\+ 1 = 7",
      function(h) h5c_attr(h, "X", "encoding-type", "csc_matrix"))
  add("X external link", "X: .*external link",
      function(h) {
        other <- tempfile(fileext = ".h5")
        o <- hdf5r::H5File$new(other, "w")
        o[["m"]] <- matrix(1, 6, 5)
        o$close_all()
        h5c_del(h, "X")
        h$link_create_external(other, "m", "X")
      })
  add("X indptr int64 (valid)", NA,
      function(h) h5c_put(h, "X/indptr", as.double(h[["X/indptr"]]$read()), dtype = I64))
  add("X shape floats (valid)", NA,
      function(h) h5c_attr(h, "X", "shape", c(5, 6), scalar = FALSE))
  add("X external raw storage", "X/data: keeps its data in an external raw file",
      function(h) {
        raw <- tempfile(fileext = ".bin")
        writeBin(as.raw(seq_len(128) - 1L), raw)
        attrs <- h5c_str_attrs(h[["X/data"]])
        h5c_del(h, "X/data")
        pl <- hdf5r::H5P_DATASET_CREATE$new()
        pl$set_external(raw, 0, 128)
        h$create_dataset("X/data", dtype = hdf5r::h5types$H5T_IEEE_F64LE,
                         space = hdf5r::H5S$new("simple", dims = 16, maxdims = 16),
                         dataset_create_pl = pl, chunk_dims = NULL)
      })
  add("layers is a dataset", "layers: is a dataset, expected a group",
      function(h) {
        h5c_del(h, "layers")
        h[["layers"]] <- 1:3
      })
  # --- dense layer
  add("Ms wrong dims", "layers/Ms: is 5 x 5 \\(genes x cells\\) but var has 6 genes",
      function(h) h5c_put(h, "layers/Ms", matrix(1, 5, 5)))
  add("Ms 3-d", "layers/Ms: .*2-d",
      function(h) h5c_put(h, "layers/Ms", array(1, c(6, 5, 2))))
  add("Ms 1-d", "layers/Ms: .*2-d",
      function(h) h5c_put(h, "layers/Ms", rep(1, 30)))
  add("Ms scalar", "layers/Ms: .*2-d",
      function(h) h5c_put(h, "layers/Ms", 1, space = hdf5r::H5S$new("scalar")))
  add("Ms strings", "layers/Ms: .*string",
      function(h) h5c_put(h, "layers/Ms", matrix("a", 6, 5)))
  add("Ms compound", "layers/Ms: .*compound",
      function(h) h5c_put(h, "layers/Ms", NULL, dtype = h5c_compound_type(),
                          space = hdf5r::H5S$new("simple", dims = c(6, 5), maxdims = c(6, 5))))
  add("Ms opaque", "layers/Ms: .*opaque",
      function(h) h5c_put(h, "layers/Ms", NULL, dtype = hdf5r::h5types$H5T_NATIVE_OPAQUE,
                          space = hdf5r::H5S$new("simple", dims = c(6, 5), maxdims = c(6, 5))))
  add("Ms vlen", "layers/Ms: .*vlen",
      function(h) h5c_put(h, "layers/Ms", NULL,
                          dtype = hdf5r::H5T_VLEN$new(hdf5r::h5types$H5T_NATIVE_DOUBLE),
                          space = hdf5r::H5S$new("simple", dims = c(6, 5), maxdims = c(6, 5))))
  add("Ms array type", "layers/Ms: .*array",
      function(h) h5c_put(h, "layers/Ms", NULL,
                          dtype = hdf5r::H5T_ARRAY$new(2L, hdf5r::h5types$H5T_NATIVE_DOUBLE),
                          space = hdf5r::H5S$new("simple", dims = c(6, 5), maxdims = c(6, 5))))
  add("Ms references", "layers/Ms: .*reference",
      function(h) h5c_put(h, "layers/Ms", NULL, dtype = hdf5r::h5types$H5T_STD_REF_OBJ,
                          space = hdf5r::H5S$new("simple", dims = c(6, 5), maxdims = c(6, 5))))
  add("Ms enum", "layers/Ms: .*enum",
      function(h) h5c_put(h, "layers/Ms", NULL,
                          dtype = hdf5r::H5T_ENUM$new(c("a", "b", "c"), 0:2),
                          space = hdf5r::H5S$new("simple", dims = c(6, 5), maxdims = c(6, 5))))
  add("Ms bomb", "layers/Ms: is 1048576 x 1048576 \\(genes x cells\\) but var has 6 genes",
      function(h) h5c_bomb(h, "layers/Ms", c(2^20, 2^20)))
  add("Ms null space", "layers/Ms: is empty",
      function(h) h5c_put(h, "layers/Ms", NULL, dtype = hdf5r::h5types$H5T_IEEE_F64LE,
                          space = hdf5r::H5S$new("null")))
  add("Ms integer (valid)", NA,
      function(h) h5c_put(h, "layers/Ms", matrix(1:30, 6, 5)))
  add("Ms boolean (valid)", NA,
      function(h) h5c_put(h, "layers/Ms", matrix(TRUE, 6, 5),
                          dtype = hdf5r::H5T_LOGICAL$new(include_NA = FALSE)))
  add("Ms soft link to X/data", "layers/Ms",
      function(h) {
        h5c_del(h, "layers/Ms")
        h$link_create_soft("/X/data", "layers/Ms")
      })
  add("Ms soft link chain", "layers/Ms: is a soft link to '/layers/alias', which passes through another link",
      function(h) {
        h$link_create_soft("/X", "layers/alias")
        h5c_del(h, "layers/Ms")
        h$link_create_soft("/layers/alias", "layers/Ms")
      })
  add("Ms dangling soft link", "layers/Ms: .*link",
      function(h) {
        h5c_del(h, "layers/Ms")
        h$link_create_soft("/nowhere", "layers/Ms")
      })
  # --- obs / var data frames
  add("obs index short", "obs/type: has 5 entries, expected 4 \\(the length of the index obs/_index\\)",
      function(h) h5c_put(h, "obs/_index", paste0("c", 1:4)))
  add("obs index missing", "obs: index '_index' is missing",
      function(h) h5c_del(h, "obs/_index"))
  add("obs index attr names nothing", "obs: index 'nope' is missing",
      function(h) h5c_attr(h, "obs", "_index", "nope"))
  add("obs index compound", "obs/_index: .*compound",
      function(h) h5c_put(h, "obs/_index", NULL, dtype = h5c_compound_type(),
                          space = hdf5r::H5S$new("simple", dims = 5, maxdims = 5)))
  add("obs index numeric (valid)", NA,
      function(h) h5c_put(h, "obs/_index", 11:15))
  add("obs index 2-d", "obs/_index: .*1-d",
      function(h) h5c_put(h, "obs/_index", matrix("a", 5, 2)))
  add("obs index bomb", "obs/_index: declares",
      function(h) h5c_bomb(h, "obs/_index", 2^40))
  add("obs column-order missing column", "obs: lists column\\(s\\) 'ghost' in 'column-order'",
      function(h) h5c_attr(h, "obs", "column-order", c("type", "ghost"), scalar = FALSE))
  add("obs column-order duplicated", "obs: attribute 'column-order' .*duplicate",
      function(h) h5c_attr(h, "obs", "column-order", c("type", "type"), scalar = FALSE))
  add("obs column-order numeric", "obs: attribute 'column-order'",
      function(h) h5c_attr(h, "obs", "column-order", c(1, 2), scalar = FALSE))
  add("obs column short", "obs/size: has 3 entries, expected 5 \\(the length of the index obs/_index\\)",
      function(h) h5c_put(h, "obs/size", c(1, 2, 3)))
  add("obs column 2-d", "obs/size: .*1-d",
      function(h) h5c_put(h, "obs/size", matrix(1, 5, 2)))
  add("obs column opaque", "obs/size: .*opaque",
      function(h) h5c_put(h, "obs/size", NULL, dtype = hdf5r::h5types$H5T_NATIVE_OPAQUE,
                          space = hdf5r::H5S$new("simple", dims = 5, maxdims = 5)))
  add("obs column scalar", "obs/size: is a scalar, expected a 1-d array",
      function(h) h5c_put(h, "obs/size", 1, space = hdf5r::H5S$new("scalar")))
  add("obs column unknown encoding", "obs/type: has unsupported encoding 'mystery'",
      function(h) h5c_attr(h, "obs/type", "encoding-type", "mystery"))
  add("obs codes out of range", "obs/type: codes must lie in \\[-1, 3\\)",
      function(h) h5c_put(h, "obs/type/codes", c(0L, -1L, 1L, 3L, 2L)))
  add("obs codes below -1", "obs/type: codes must lie in \\[-1, 3\\)",
      function(h) h5c_put(h, "obs/type/codes", c(0L, -2L, 1L, 0L, 2L)))
  add("obs codes fractional", "obs/type/codes: .*integer",
      function(h) h5c_put(h, "obs/type/codes", c(0, 0.5, 1, 0, 2)))
  add("obs codes strings", "obs/type/codes: .*string",
      function(h) h5c_put(h, "obs/type/codes", c("0", "1", "1", "0", "2")))
  add("obs codes short", "obs/type: has 4 entries, expected 5",
      function(h) h5c_put(h, "obs/type/codes", c(0L, 1L, 1L, 0L)))
  add("obs codes missing", "obs/type: 'codes' is missing",
      function(h) h5c_del(h, "obs/type/codes"))
  add("obs categories missing", "obs/type: 'categories' is missing",
      function(h) h5c_del(h, "obs/type/categories"))
  add("obs categories duplicated", "obs/type: categories are not unique",
      function(h) h5c_put(h, "obs/type/categories", c("a", "b", "a")))
  add("obs categories 2-d", "obs/type/categories: .*1-d",
      function(h) h5c_put(h, "obs/type/categories", matrix("a", 3, 2)))
  add("obs categories numeric (valid)", NA,
      function(h) h5c_put(h, "obs/type/categories", c(10, 20, 30)))
  add("obs ordered attr strange", "obs/type: attribute 'ordered'",
      function(h) h5c_attr(h, "obs/type", "ordered", c("yes", "no"), scalar = FALSE))
  add("obs nullable boolean values out of range", "obs/maybe: values must be booleans",
      function(h) h5c_put(h, "obs/maybe/values", c(1L, 2L, 0L, 1L, 0L)))
  add("obs _index attribute numeric", "obs: attribute '_index' has an integer datatype; expected strings",
      function(h) h5c_attr(h, "obs", "_index", 5L))
  add("obs nullable mask short", "obs/n: mask has 3 entries, expected 5",
      function(h) h5c_put(h, "obs/n/mask", c(TRUE, FALSE, TRUE),
                          dtype = hdf5r::H5T_LOGICAL$new(include_NA = FALSE)))
  add("obs nullable mask missing", "obs/n: 'mask' is missing",
      function(h) h5c_del(h, "obs/n/mask"))
  add("obs nullable values strings", "obs/n/values: .*string",
      function(h) h5c_put(h, "obs/n/values", as.character(1:5)))
  add("obs nullable mask floats", "obs/n/mask: .*boolean",
      function(h) h5c_put(h, "obs/n/mask", c(0.5, 0, 0, 0, 0)))
  add("obs bool enum strange", "obs/ok: .*enum",
      function(h) h5c_put(h, "obs/ok", NULL, dtype = hdf5r::H5T_ENUM$new(c("a", "b", "c"), 0:2),
                          space = hdf5r::H5S$new("simple", dims = 5, maxdims = 5)))
  add("obs is a plain dataset", "obs: .*compound",
      function(h) {
        h5c_del(h, "obs")
        h[["obs"]] <- 1:5
      })
  add("obs group under column", "obs/label: is a group without an .encoding-type. attribute",
      function(h) {
        h5c_del(h, "obs/label")
        h$create_group("obs/label")
      })
  add("var index duplicated (valid, warns)", NA,
      function(h) h5c_put(h, "var/_index", rep("g", 6)))
  add("var column external link", "var/symbol: .*external link",
      function(h) {
        h5c_del(h, "var/symbol")
        h$link_create_external("/no/such/file.h5", "x", "var/symbol")
      })
  # --- obsm / obsp
  add("obsm rows wrong", "obsm/X_pca: has 4 rows but obs has 5 cells",
      function(h) h5c_put(h, "obsm/X_pca", matrix(1, 2, 4)))
  add("obsm 3-d", "obsm/X_pca: .*2-d",
      function(h) h5c_put(h, "obsm/X_pca", array(1, c(2, 5, 2))))
  add("obsm strings", "obsm/X_pca: .*string",
      function(h) h5c_put(h, "obsm/X_pca", matrix("a", 2, 5)))
  add("obsm bomb", "obsm/X_pca: declares 11 TB of data but stores only 0 B",
      function(h) h5c_bomb(h, "obsm/X_pca", c(2^38, 5)))
  add("obsm 1-d (valid)", NA,
      function(h) h5c_put(h, "obsm/X_pca", c(1, 2, 3, 4, 5)))
  add("obsp not square", "obsp/conn: is 5 x 4, expected n_obs x n_obs = 5 x 5",
      function(h) {
        h5c_attr(h, "obsp/conn", "shape", c(5, 4), dtype = I64, scalar = FALSE)
        h5c_put(h, "obsp/conn/indices", c(1L, 0L))
      })
  add("obsp indices out of range", "obsp/conn: indices must lie in \\[0, 5\\)",
      function(h) h5c_put(h, "obsp/conn/indices", c(1L, 9L)))
  add("varm wrong rows", "varm/bad: has 2 rows but var has 6 genes",
      function(h) h$create_dataset("varm/bad", robj = matrix(1, 3, 2)))
  # --- uns
  add("uns deep nesting", "uns.*nested more than 50 levels",
      function(h) {
        g <- h[["uns"]]
        for (i in 1:60) g <- g$create_group("d")
      })
  add("uns soft link cycle", "uns/params/loop.*(cycle|link)",
      function(h) h$link_create_soft("/uns", "uns/params/loop"))
  add("uns hard link cycle", "uns/params/loop.*cycle",
      function(h) h[["uns/params"]]$link_create_hard(h[["uns"]], ".", "loop"))
  add("uns external link", "uns/ext.*external link",
      function(h) h$link_create_external("/etc/passwd", "x", "uns/ext"))
  add("uns bomb", "uns/v: declares",
      function(h) h5c_bomb(h, "uns/v", 2^40))
  add("uns csr broken", "uns/m: indptr",
      function(h) {
        g <- h$create_group("uns/m")
        h5c_attr(h, "uns/m", "encoding-type", "csr_matrix")
        h5c_attr(h, "uns/m", "shape", c(2, 2), dtype = I64, scalar = FALSE)
        g[["data"]] <- c(1, 2)
        g[["indices"]] <- c(0L, 1L)
        g[["indptr"]] <- c(0L, 5L, 2L)
      })
  add("uns soft link to a sibling (valid)", NA,
      function(h) h$link_create_soft("/uns/params", "uns/alias"))
  add("uns hard link to a sibling (valid)", NA,
      function(h) h[["uns"]]$link_create_hard(h[["uns/params"]], ".", "twin"))
  add("uns named datatype (skipped)", NA,
      function(h) h$commit("uns/dt", hdf5r::h5types$H5T_NATIVE_INT))
  add("uns opaque (skipped)", NA,
      function(h) h5c_put(h, "uns/o", NULL, dtype = hdf5r::h5types$H5T_NATIVE_OPAQUE,
                          space = hdf5r::H5S$new("simple", dims = 3, maxdims = 3)))
  add("uns compound (valid)", NA,
      function(h) {
        h[["uns/rec"]] <- data.frame(a = c(1, 2), b = c("x", "y"), stringsAsFactors = FALSE)
      })
  # --- anndata 0.7 categorical reference and pre-0.7 compound obs
  add("old categorical codes out of range", "obs/cl: codes must lie in \\[-1, 2\\)",
      function(h) {
        h$create_group("obs/__categories")
        h[["obs/__categories/cl"]] <- c("p", "q")
        h[["obs/cl"]] <- c(0L, 1L, 5L, 0L, 1L)
        ref <- h$create_reference("obs/__categories/cl")
        h[["obs/cl"]]$create_attr("categories", robj = ref)
        h5c_attr(h, "obs", "column-order", c("type", "cl"), scalar = FALSE)
      })
  # --- bytes
  add("truncated to half", "",
      file = function(path) {
        b <- readBin(path, "raw", file.size(path))
        writeBin(b[seq_len(length(b) %/% 2)], path)
      })
  add("truncated by 100 bytes", "",
      file = function(path) {
        b <- readBin(path, "raw", file.size(path))
        writeBin(b[seq_len(length(b) - 100L)], path)
      })
  add("superblock only", "",
      file = function(path) {
        b <- readBin(path, "raw", file.size(path))
        writeBin(b[1:96], path)
      })
  v
}

# The parts of the file read_h5ad() must read to meet a variant (obs and var are always read):
# the variant's name starts with the element it corrupts.
h5c_parts <- function(name) {
  first <- sub(" .*", "", name)
  none <- list(X = FALSE, layers = character(0), obsm = FALSE, obsp = FALSE, uns = FALSE)
  switch(first,
         X = utils::modifyList(none, list(X = TRUE)),
         Ms = utils::modifyList(none, list(layers = "Ms")),
         obs = , var = , old = none,
         obsm = , varm = utils::modifyList(none, list(obsm = TRUE)),
         obsp = utils::modifyList(none, list(obsp = TRUE)),
         uns = utils::modifyList(none, list(uns = TRUE)),
         list())
}

# Applies every variant to a fresh copy of `base`; returns the new files' paths. The files stay
# open until one gc() has closed the objects the variants opened (H5File$close_all() would run
# gc() once per file, which dominated the time).
h5c_make_all <- function(base, variants, dir = tempdir()) {
  paths <- vapply(names(variants), function(nm) {
    tempfile("corrupt-", tmpdir = dir, fileext = ".h5ad")
  }, "")
  handles <- list()
  on.exit({
    gc()
    for (h in handles) try(h$close(), silent = TRUE)
  })
  for (nm in names(variants)) {
    file.copy(base, paths[[nm]])
    if (!is.null(variants[[nm]]$mutate)) {
      h <- hdf5r::H5File$new(paths[[nm]], "r+")
      handles[[nm]] <- h
      variants[[nm]]$mutate(h)
      h$flush()
    }
  }
  gc()
  for (h in handles) h$close()
  handles <- list()
  for (nm in names(variants)) if (!is.null(variants[[nm]]$file)) variants[[nm]]$file(paths[[nm]])
  paths
}

# Byte flips: `n` random bytes of a copy of `base` set to random values.
h5c_flip <- function(base, seed, n = 8L, dir = tempdir()) {
  path <- tempfile(sprintf("flip%d-", seed), tmpdir = dir, fileext = ".h5ad")
  b <- readBin(base, "raw", file.size(base))
  set.seed(seed)
  at <- sample.int(length(b), n)
  b[at] <- as.raw(sample.int(256L, n, replace = TRUE) - 1L)
  writeBin(b, path)
  path
}
