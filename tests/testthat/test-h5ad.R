# read_h5ad() / write_h5ad() (issue 2, "Reading real data without Python"). Expected values come
# from independent hdf5r reads of the raw datasets and from anndata itself (peers venv).

skip_if_not_installed("hdf5r")

sort_lists <- function(x) {
  if (is.list(x) && !is.data.frame(x)) {
    x <- x[order(names(x))]
    x[] <- lapply(x, sort_lists)
  }
  x
}

velocity_files <- function() {
  d <- shared_data_dir()
  if (!nzchar(d)) skip("shared data folder (../shared/data) not found; set SCNATIVE_SHARED_DATA")
  f <- sort(Sys.glob(file.path(d, "velocity", "*.h5ad")))
  if (!length(f)) skip("no .h5ad files in the shared velocity folder")
  f
}

# Independent raw reads: a sparse group as a cells x genes dgCMatrix assembled from (row, col,
# value) triplets, or a dense dataset (hdf5r gives it with HDF5 dims reversed) transposed back.
raw_cells_by_genes <- function(obj) {
  if (inherits(obj, "H5Group")) {
    shape <- as.numeric(hdf5r::h5attr(obj, "shape"))
    enc <- hdf5r::h5attr(obj, "encoding-type")
    indptr <- as.numeric(obj[["indptr"]]$read())
    idx <- as.numeric(obj[["indices"]]$read()) + 1
    x <- as.numeric(obj[["data"]]$read())
    major <- rep(seq_len(length(indptr) - 1), diff(indptr))
    if (enc == "csr_matrix") {
      Matrix::sparseMatrix(i = major, j = idx, x = x, dims = shape)
    } else {
      Matrix::sparseMatrix(i = idx, j = major, x = x, dims = shape)
    }
  } else {
    t(obj$read())
  }
}

# Compares a genes x cells result with the raw cells x genes read.
expect_same_matrix <- function(ours, raw_cg, info) {
  raw <- Matrix::t(raw_cg)
  if (methods::is(raw, "sparseMatrix")) {
    expect_s4_class(ours, "dgCMatrix")
    expect_identical(dim(ours), dim(raw), info = info)
    expect_equal(Matrix::summary(ours), Matrix::summary(raw), info = info, ignore_attr = TRUE)
  } else {
    expect_true(is.matrix(ours), info = info)
    expect_equal(unname(ours), raw, info = info)
  }
}

raw_column <- function(grp, name) {
  el <- grp[[name]]
  if (inherits(el, "H5Group")) {
    codes <- el[["codes"]]$read()
    cats <- el[["categories"]]$read()
    return(ifelse(codes < 0, NA, as.character(cats[codes + 1])))
  }
  v <- el$read()
  if (el$attr_exists("categories")) {
    cats <- grp[["__categories"]][[name]]$read()
    return(ifelse(v < 0, NA, as.character(cats[v + 1])))
  }
  v
}

test_that("read_h5ad reads every shared velocity file and matches raw hdf5r reads", {
  for (f in velocity_files()) {
    ad <- read_h5ad(f)
    expect_s3_class(ad, "scnative_h5ad")
    h5 <- hdf5r::H5File$new(f, "r")
    obs_idx <- hdf5r::h5attr(h5[["obs"]], "_index")
    var_idx <- hdf5r::h5attr(h5[["var"]], "_index")
    cells <- h5[["obs"]][[obs_idx]]$read()
    genes <- h5[["var"]][[var_idx]]$read()
    expect_identical(rownames(ad$obs), cells)
    expect_identical(rownames(ad$var), genes)
    raw_x <- raw_cells_by_genes(h5[["X"]])
    expect_identical(dimnames(ad$X), list(genes, cells))
    expect_same_matrix(ad$X, raw_x, basename(f))
    lay <- names(h5[["layers"]])
    expect_setequal(names(ad$layers), lay)
    for (nm in lay) {
      expect_identical(dimnames(ad$layers[[nm]]), list(genes, cells))
      expect_same_matrix(ad$layers[[nm]], raw_cells_by_genes(h5[["layers"]][[nm]]),
                         paste(basename(f), nm))
    }
    for (side in c("obs", "var")) {
      grp <- h5[[side]]
      df <- ad[[side]]
      cols <- setdiff(names(grp), c(hdf5r::h5attr(grp, "_index"), "__categories"))
      expect_setequal(as.character(names(df)), cols)
      for (nm in cols) {
        v <- df[[nm]]
        r <- raw_column(grp, nm)
        if (is.factor(v)) v <- as.character(v)
        expect_equal(v, as.vector(r), info = paste(basename(f), side, nm))
      }
    }
    if ("obsp" %in% names(h5)) {
      for (nm in names(h5[["obsp"]])) {
        # obsp is cells x cells in AnnData's orientation: compare with t() of the helper's t().
        expect_same_matrix(Matrix::t(ad$obsp[[nm]]), raw_cells_by_genes(h5[["obsp"]][[nm]]),
                           paste(basename(f), nm))
      }
    }
    if ("obsm" %in% names(h5)) {
      for (nm in names(h5[["obsm"]])) {
        expect_equal(unname(ad$obsm[[nm]]), t(h5[["obsm"]][[nm]]$read()))
        expect_identical(rownames(ad$obsm[[nm]]), cells)
      }
    }
    h5$close_all()
    # and it round-trips through write_h5ad (written in the current encoding)
    out <- withr::local_tempfile(fileext = ".h5ad")
    write_h5ad(out, ad)
    back <- read_h5ad(out)
    for (part in c("X", "layers", "obs", "var", "obsm", "obsp", "uns")) {
      expect_identical(back[[part]], ad[[part]], info = paste(basename(f), part))
    }
  }
})

test_that("old (anndata 0.7) categoricals become factors with the right levels", {
  f <- shared_file("velocity", "cellrank_golden_adata_100.h5ad")
  ad <- read_h5ad(f, layers = character(0), X = FALSE)
  h5 <- hdf5r::H5File$new(f, "r")
  on.exit(h5$close_all())
  expect_null(ad$X)
  expect_length(ad$layers, 0)
  cats <- h5[["obs/__categories/clusters"]]$read()
  expect_s3_class(ad$obs$clusters, "factor")
  expect_identical(levels(ad$obs$clusters), cats)
  expect_identical(names(ad$obs)[1:4], trimws(hdf5r::h5attr(h5[["obs"]], "column-order"))[1:4])
  expect_type(ad$var$velocity_genes, "logical")
  expect_identical(ad$uns$velocity_params$mode, h5[["uns/velocity_params/mode"]]$read())
  expect_equal(ad$uns$neighbors$indices, t(h5[["uns/neighbors/indices"]]$read()))
})

test_that("read_h5ad agrees with anndata on real files", {
  use_peers()
  anndata <- reticulate::import("anndata")
  np <- reticulate::import("numpy", convert = FALSE)
  dense <- function(m) {
    if (reticulate::py_has_attr(m, "toarray")) m <- m$toarray()
    reticulate::py_to_r(np$asarray(m, dtype = "float64"))
  }
  for (nm in c("cellrank_golden_adata_50.h5ad", "scvelo_dentategyrus_50obs_preprocessed.h5ad",
               "cellrank_golden_adata_100.h5ad")) {
    f <- shared_file("velocity", nm)
    ad <- read_h5ad(f)
    py <- reticulate::import("anndata", convert = FALSE)$read_h5ad(f)
    expect_equal(unname(as.matrix(ad$X)), t(dense(py$X)), info = nm)
    for (ly in names(ad$layers)) {
      expect_equal(unname(as.matrix(ad$layers[[ly]])), t(dense(py$layers$`__getitem__`(ly))),
                   info = paste(nm, ly))
    }
    expect_identical(rownames(ad$obs), reticulate::py_to_r(py$obs_names$tolist()))
    expect_identical(rownames(ad$var), reticulate::py_to_r(py$var_names$tolist()))
    pcols <- reticulate::py_to_r(py$obs$columns$tolist())
    expect_identical(names(ad$obs), unlist(pcols))
    for (cl in pcols) {
      a <- ad$obs[[cl]]
      col <- py$obs$`__getitem__`(cl)
      if (identical(reticulate::py_to_r(col$dtype$name), "category")) {
        expect_identical(levels(a), unlist(reticulate::py_to_r(col$cat$categories$tolist())),
                         info = paste(nm, cl))
        expect_identical(as.integer(a) - 1L, unlist(reticulate::py_to_r(col$cat$codes$tolist())),
                         info = paste(nm, cl))
      } else {
        expect_equal(a, unlist(reticulate::py_to_r(col$tolist())), info = paste(nm, cl))
      }
    }
    expect_equal(unname(ad$obsm$X_pca), dense(py$obsm$`__getitem__`("X_pca")))
    expect_equal(unname(as.matrix(ad$obsp$connectivities)),
                 dense(py$obsp$`__getitem__`("connectivities")))
  }
  # a real (anndata 0.7-encoded) file re-written by write_h5ad reads the same in anndata
  f <- shared_file("velocity", "cellrank_golden_adata_100.h5ad")
  out <- withr::local_tempfile(fileext = ".h5ad")
  write_h5ad(out, read_h5ad(f))
  a <- reticulate::import("anndata", convert = FALSE)$read_h5ad(f)
  b <- reticulate::import("anndata", convert = FALSE)$read_h5ad(out)
  expect_equal(dense(b$X), dense(a$X))
  for (ly in c("Ms", "velocity", "spliced")) {
    expect_equal(dense(b$layers$`__getitem__`(ly)), dense(a$layers$`__getitem__`(ly)))
  }
  # float32 columns come back as float64 (R has no float32): compare values in float64
  same <- reticulate::py_run_string("
import numpy as np
def _same_df(x, y):
    if list(x.columns) != list(y.columns) or list(x.index) != list(y.index):
        return {'columns/index': False}
    out = {}
    for c in x.columns:
        if str(x[c].dtype) == 'category':
            out[c] = bool(x[c].equals(y[c]) and x[c].cat.ordered == y[c].cat.ordered)
        elif x[c].dtype.kind in 'OSUb':
            out[c] = bool(x[c].equals(y[c]))
        else:
            out[c] = bool(np.array_equal(np.asarray(x[c], dtype='float64'),
                                         np.asarray(y[c], dtype='float64'), equal_nan=True))
    return out
", convert = FALSE)$`_same_df`
  expect_true(all(unlist(reticulate::py_to_r(same(a$obs, b$obs)))))
  expect_true(all(unlist(reticulate::py_to_r(same(a$var, b$var)))))
  expect_equal(dense(b$obsp$`__getitem__`("distances")), dense(a$obsp$`__getitem__`("distances")))
  expect_identical(reticulate::py_to_r(b$uns$`__getitem__`("velocity_params")$`__getitem__`("mode")),
                   reticulate::py_to_r(a$uns$`__getitem__`("velocity_params")$`__getitem__`("mode")))
})

test_that("read_h5ad reads what anndata 0.12 writes: csc, nullable columns, obsm data frames", {
  use_peers()
  f <- withr::local_tempfile(fileext = ".h5ad")
  reticulate::py_run_string(sprintf("
import anndata as ad, numpy as np, pandas as pd, scipy.sparse as sp
rng = np.random.default_rng(0)
X = sp.random(4, 6, density=0.5, format='csc', random_state=1)
obs = pd.DataFrame({
  'ct': pd.Categorical(['a', None, 'b', 'a'], categories=['b', 'a']),
  'ord': pd.Categorical(['lo', 'hi', 'lo', 'hi'], categories=['lo', 'hi'], ordered=True),
  'bn': pd.array([True, None, False, True], dtype='boolean'),
  'iv': pd.array([1, None, 3, 4], dtype='Int64'),
  'f': [0.5, np.nan, 2.0, 3.0], 'b': [True, False, True, False], 's': ['w', 'x', 'y', 'z']},
  index=['c%%d' %% i for i in range(4)])
a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=['g%%d' %% i for i in range(6)]),
  layers={'dense': rng.normal(size=(4, 6)), 'csr': sp.csr_matrix(X)},
  obsm={'df': pd.DataFrame({'u': [1.0, 2, 3, 4]}, index=obs.index), 'emb': rng.normal(size=(4, 3))},
  obsp={'dist': rng.normal(size=(4, 4))})
a.write_h5ad(r'%s')
", f))
  py <- reticulate::import_main(convert = FALSE)
  r <- reticulate::py_to_r
  ours <- read_h5ad(f)
  X <- r(py$X$toarray())
  expect_s4_class(ours$X, "dgCMatrix")
  expect_equal(unname(as.matrix(ours$X)), t(X))
  expect_equal(unname(as.matrix(ours$layers$csr)), t(X))
  expect_equal(unname(ours$layers$dense), t(r(py$a$layers$`__getitem__`("dense"))))
  expect_identical(levels(ours$obs$ct), c("b", "a"))
  expect_identical(as.character(ours$obs$ct), c("a", NA, "b", "a"))
  expect_true(is.ordered(ours$obs$ord))
  expect_identical(ours$obs$bn, c(TRUE, NA, FALSE, TRUE))
  expect_equal(ours$obs$iv, c(1, NA, 3, 4))
  expect_identical(ours$obs$f, c(0.5, NA, 2, 3))
  expect_identical(ours$obs$b, c(TRUE, FALSE, TRUE, FALSE))
  expect_identical(ours$obs$s, c("w", "x", "y", "z"))
  expect_s3_class(ours$obsm$df, "data.frame")
  expect_identical(ours$obsm$df$u, c(1, 2, 3, 4))
  expect_identical(rownames(ours$obsm$df), paste0("c", 0:3))
  expect_equal(unname(ours$obsm$emb), r(py$a$obsm$`__getitem__`("emb")))
  expect_equal(unname(ours$obsp$dist), r(py$a$obsp$`__getitem__`("dist")))
})

test_that("read_h5ad reads the pre-0.7 layout: obs/var as compound datasets", {
  f <- withr::local_tempfile(fileext = ".h5ad")
  h <- hdf5r::H5File$new(f, "w")
  h[["obs"]] <- data.frame(index = c("c1", "c2", "c3"), cluster = c(1L, 0L, 1L), size = c(1.5, 2, 3),
                           stringsAsFactors = FALSE)
  h[["var"]] <- data.frame(index = c("g1", "g2"), stringsAsFactors = FALSE)
  h[["X"]] <- matrix(c(1, 2, 3, 4, 5, 6), 2, 3)  # hdf5r reverses: HDF5 (3 cells, 2 genes)
  u <- h$create_group("uns")
  u[["cluster_categories"]] <- c("alpha", "beta")
  h$close_all()
  ad <- read_h5ad(f)
  expect_identical(rownames(ad$obs), c("c1", "c2", "c3"))
  expect_identical(ad$obs$cluster, factor(c("beta", "alpha", "beta")))
  expect_identical(ad$obs$size, c(1.5, 2, 3))
  expect_identical(ad$X, matrix(c(1, 2, 3, 4, 5, 6), 2, 3, dimnames = list(c("g1", "g2"), c("c1", "c2", "c3"))))
})

small_object <- function() {
  set.seed(42)
  counts <- matrix(rpois(30, 2), nrow = 6,
                   dimnames = list(paste0("gene", 1:6), paste0("cell", 1:5)))
  storage.mode(counts) <- "double"
  obs <- data.frame(
    type = factor(c("a", NA, "b", "a", "c"), levels = c("a", "b", "c")),
    stage = factor(c("early", "late", "early", "mid", "late"), levels = c("early", "mid", "late"),
                   ordered = TRUE),
    label = c("x", "y", "z", "w", "v"),
    size = c(1.5, 2.25, NA, 4, 5),
    n = c(3L, 1L, 4L, 1L, 5L),
    ok = c(TRUE, FALSE, TRUE, TRUE, FALSE),
    maybe = c(TRUE, NA, FALSE, TRUE, NA),
    row.names = colnames(counts), stringsAsFactors = FALSE
  )
  var <- data.frame(symbol = toupper(rownames(counts)), hv = c(TRUE, TRUE, FALSE, TRUE, FALSE, FALSE),
                    row.names = rownames(counts), stringsAsFactors = FALSE)
  list(
    X = counts,
    layers = list(spliced = Matrix::Matrix(counts, sparse = TRUE),
                  Ms = counts / 3),
    obs = obs, var = var,
    obsm = list(X_pca = matrix(seq(0.5, 10, by = 0.5), 5, 4, dimnames = list(colnames(counts), NULL))),
    obsp = list(connectivities = Matrix::sparseMatrix(i = c(1, 2, 3, 5), j = c(2, 1, 4, 4),
                                                      x = c(0.5, 0.5, 1, 0.25), dims = c(5, 5),
                                                      dimnames = list(colnames(counts), colnames(counts)))),
    uns = list(mode = "dynamical", n_top = 30L, perc = c(5, 95), flag = TRUE,
               params = list(metric = "euclidean", k = 2.5, nested = list(on = FALSE)),
               colors = c("#000000", "#ffffff"))
  )
}

test_that("write_h5ad then read_h5ad returns the original object", {
  obj <- small_object()
  f <- withr::local_tempfile(fileext = ".h5ad")
  expect_identical(do.call(write_h5ad, c(list(path = f), obj)), f)
  ad <- read_h5ad(f)
  expect_identical(ad$X, obj$X)
  expect_s4_class(ad$layers$spliced, "dgCMatrix")
  expect_identical(ad$layers$spliced, obj$layers$spliced)
  expect_identical(ad$layers$Ms, obj$layers$Ms)
  expect_identical(ad$obs, obj$obs)
  expect_identical(ad$var, obj$var)
  expect_identical(ad$obsm$X_pca, obj$obsm$X_pca)
  expect_equal(ad$obsp$connectivities, obj$obsp$connectivities)
  expect_identical(ad$uns, sort_lists(obj$uns))
  # writing what we read reproduces it
  f2 <- withr::local_tempfile(fileext = ".h5ad")
  write_h5ad(f2, ad)
  ad2 <- read_h5ad(f2)
  expect_identical(ad2$obs, ad$obs)
  expect_identical(ad2$layers, ad$layers)
  expect_identical(ad2$uns, ad$uns)
  expect_output(print(ad), "6 genes x 5 cells")
  # empty vectors and zero cells
  f3 <- withr::local_tempfile(fileext = ".h5ad")
  write_h5ad(f3, X = matrix(numeric(0), 2, 0), var = data.frame(s = c("a", "b")),
             uns = list(e = numeric(0), ec = character(0), el = logical(0)))
  ad3 <- read_h5ad(f3)
  expect_identical(dim(ad3$X), c(2L, 0L))
  expect_identical(ad3$var$s, c("a", "b"))
  expect_identical(ad3$uns, list(e = numeric(0), ec = character(0), el = logical(0)))
})

test_that("anndata reads files written by write_h5ad with the right shapes, values and dtypes", {
  use_peers()
  obj <- small_object()
  f <- withr::local_tempfile(fileext = ".h5ad")
  do.call(write_h5ad, c(list(path = f), obj))
  py <- reticulate::import("anndata", convert = FALSE)$read_h5ad(f)
  np <- reticulate::import("numpy", convert = FALSE)
  r <- function(x) reticulate::py_to_r(x)
  expect_identical(unlist(r(py$shape)), c(5L, 6L))
  expect_identical(r(py$obs_names$tolist()), colnames(obj$X))
  expect_identical(r(py$var_names$tolist()), rownames(obj$X))
  expect_equal(r(np$asarray(py$X)), unname(t(obj$X)))
  sp <- py$layers$`__getitem__`("spliced")
  expect_identical(r(sp$format), "csr")
  expect_equal(r(sp$toarray()), unname(t(as.matrix(obj$layers$spliced))))
  expect_equal(r(np$asarray(py$layers$`__getitem__`("Ms"))), unname(t(obj$layers$Ms)))
  dtypes <- r(py$obs$dtypes$astype("str")$to_dict())
  expect_identical(dtypes$type, "category")
  expect_identical(dtypes$stage, "category")
  expect_identical(dtypes$size, "float64")
  expect_identical(dtypes$ok, "bool")
  expect_identical(dtypes$maybe, "boolean")
  expect_true(r(py$obs$`__getitem__`("stage")$cat$ordered))
  expect_identical(r(py$obs$`__getitem__`("type")$cat$categories$tolist()), c("a", "b", "c"))
  expect_identical(r(py$obs$`__getitem__`("type")$cat$codes$tolist()), c(0L, -1L, 1L, 0L, 2L))
  expect_identical(r(py$obs$`__getitem__`("label")$tolist()), obj$obs$label)
  expect_identical(r(py$obs$`__getitem__`("n")$tolist()), obj$obs$n)
  expect_identical(r(py$obs$`__getitem__`("maybe")$isna()$tolist()), is.na(obj$obs$maybe))
  expect_identical(r(py$var$`__getitem__`("symbol")$tolist()), obj$var$symbol)
  expect_equal(r(np$asarray(py$obsm$`__getitem__`("X_pca"))), unname(obj$obsm$X_pca))
  expect_equal(r(py$obsp$`__getitem__`("connectivities")$toarray()),
               unname(as.matrix(obj$obsp$connectivities)))
  uns <- r(py$uns)
  expect_identical(uns$mode, "dynamical")
  expect_equal(uns$n_top, 30)
  expect_identical(uns$flag, TRUE)
  expect_equal(as.vector(uns$perc), c(5, 95))
  expect_identical(uns$params$nested$on, FALSE)
  expect_equal(uns$params$k, 2.5)
})

test_that("read_h5ad and write_h5ad give clear errors", {
  missing <- file.path(tempdir(), "no-such-file.h5ad")
  expect_error(read_h5ad(missing), "'path' does not exist: .*no-such-file.h5ad")
  txt <- withr::local_tempfile(fileext = ".h5ad")
  writeLines("not hdf5", txt)
  expect_error(read_h5ad(txt), "not an HDF5 file")
  plain <- withr::local_tempfile(fileext = ".h5")
  h <- hdf5r::H5File$new(plain, "w")
  h[["data"]] <- 1:3
  h$close_all()
  expect_error(read_h5ad(plain), "not an AnnData .h5ad file")
  obj <- small_object()
  f <- withr::local_tempfile(fileext = ".h5ad")
  do.call(write_h5ad, c(list(path = f), obj))
  expect_error(read_h5ad(f, layers = c("spliced", "unspliced")),
               "layer\\(s\\) 'unspliced' not found.*available layers: 'Ms', 'spliced'")
  expect_error(read_h5ad(f, X = NA), "'X' must be TRUE or FALSE")
  expect_error(write_h5ad(f, X = obj$X), "already exists.*overwrite = TRUE")
  before <- read_h5ad(f)
  expect_error(write_h5ad(f, X = obj$X, layers = list(bad = obj$X[1:3, ]), overwrite = TRUE),
               "'layers\\$bad' is 3 x 5 but the data are 6 genes x 5 cells")
  expect_error(write_h5ad(f, X = obj$X, obs = obj$obs[1:3, ], overwrite = TRUE),
               "'obs' has 3 rows but the matrices have 5")
  expect_error(write_h5ad(f, X = obj$X, obsm = list(pc = matrix(0, 4, 2)), overwrite = TRUE),
               "'obsm\\$pc' has 4 rows but there are 5 cells")
  expect_error(write_h5ad(f, X = obj$X, uns = list(1, 2), overwrite = TRUE), "unique non-empty names")
  expect_identical(read_h5ad(f), before)  # failed writes left the file alone
  ok <- withr::local_tempfile(fileext = ".h5ad")
  expect_silent(write_h5ad(ok, X = obj$X))
  expect_identical(dimnames(read_h5ad(ok)$X), dimnames(obj$X))
})
