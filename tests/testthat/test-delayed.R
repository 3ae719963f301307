# DelayedArray / HDF5Array input: reference_signatures() streams the counts from disk and must
# give the in-memory fit exactly; filter_genes() and cell2location() read them block-wise.

ns <- asNamespace("scnative")

# A simulated reference, genes x cells integer counts: per-type means, some zeros, one large
# count (the digamma path), batches and a covariate.
delayed_reference <- function(seed = 11, G = 30, n = 90) {
  set.seed(seed)
  lab <- factor(sample(c("A", "B", "C"), n, TRUE))
  mu <- matrix(rgamma(G * 3, 1, 0.4), G, 3)
  x <- matrix(rpois(G * n, mu[, as.integer(lab)]), G, n,
              dimnames = list(paste0("g", seq_len(G)), paste0("c", seq_len(n))))
  x[2, 7] <- 60L
  list(x = x, labels = lab, batch = factor(sample(c("b1", "b2"), n, TRUE)),
       covs = list(m = factor(sample(c("m1", "m2"), n, TRUE))))
}

write_h5 <- function(x) {
  HDF5Array::writeHDF5Array(x, tempfile(fileext = ".h5"), "counts", with.dimnames = TRUE)
}

# A DelayedArray block size of `cols` columns of doubles, so that the block-wise passes and the
# minibatch reads cross block boundaries even on small data; restored after the test.
local_block_cols <- function(x, cols, env = parent.frame()) {
  old <- DelayedArray::getAutoBlockSize()
  suppressMessages(DelayedArray::setAutoBlockSize(8 * nrow(x) * cols))
  withr::defer(suppressMessages(DelayedArray::setAutoBlockSize(old)), envir = env)
}

test_that("reference_signatures() on an HDF5Array equals the in-memory fit exactly", {
  skip_if_not_installed("HDF5Array")
  d <- delayed_reference()
  h <- write_h5(d$x)
  expect_s4_class(h, "DelayedArray")
  local_block_cols(d$x, 7)
  a <- reference_signatures(d$x, d$labels, d$batch, d$covs, max_epochs = 6, batch_size = 25,
                            seed = 3, threads = 1, progress = FALSE)
  b <- reference_signatures(h, d$labels, d$batch, d$covs, max_epochs = 6, batch_size = 25,
                            seed = 3, threads = 2, progress = FALSE)
  expect_identical(b$params, a$params)
  expect_identical(b$history, a$history)
  expect_identical(b$steps, a$steps)
  expect_identical(b$settings, a$settings)
  expect_identical(signatures(b, num_samples = 20, seed = 1),
                   signatures(a, num_samples = 20, seed = 1))
  expect_null(b$data) # nothing kept: the counts stay on disk
  expect_error(train_more(b, 2, progress = FALSE), "keeps no counts")
  # continuing with init = fit streams again and equals the in-memory continuation
  a2 <- reference_signatures(d$x, d$labels, d$batch, d$covs, max_epochs = 2, batch_size = 25,
                             seed = 3, init = a, progress = FALSE)
  b2 <- reference_signatures(h, d$labels, d$batch, d$covs, max_epochs = 2, batch_size = 25,
                             seed = 3, init = b, progress = FALSE)
  expect_identical(b2$params, a2$params)
  expect_identical(b2$history, a2$history)
  # full batch, no average initialisation, a different seed: still identical
  a3 <- reference_signatures(d$x, d$labels, max_epochs = 3, batch_size = NULL,
                             use_average_as_initial = FALSE, seed = 8, progress = FALSE)
  b3 <- reference_signatures(h, d$labels, max_epochs = 3, batch_size = NULL,
                             use_average_as_initial = FALSE, seed = 8, progress = FALSE)
  expect_identical(b3$params, a3$params)
  expect_false(identical(b3$params, b$params))
})

test_that("the block-wise pass gives cluster_averages() and the model's constants", {
  skip_if_not_installed("HDF5Array")
  d <- delayed_reference(seed = 2)
  h <- write_h5(d$x)
  local_block_cols(d$x, 4)
  pass <- ns$ref_stream_pass(h, d$labels, TRUE)
  expect_identical(pass$averages, cluster_averages(d$x, d$labels))
  # independent calculation of the constants: per cell sum lgamma(x + 1), per gene the largest
  # count capped at 33
  expect_equal(pass$stats$lgx, unname(colSums(lgamma(d$x + 1))), tolerance = 1e-12)
  expect_identical(pass$stats$vmax, as.integer(pmin(apply(d$x, 1, max), 33)))
})

test_that("a DelayedArray with a bad value gives an error naming 'x' and no fit", {
  skip_if_not_installed("HDF5Array")
  d <- delayed_reference(seed = 5, G = 10, n = 30)
  local_block_cols(d$x, 8)
  bad <- function(i, j, v) {
    x <- d$x
    storage.mode(x) <- "double"
    x[i, j] <- v
    write_h5(x)
  }
  expect_error(reference_signatures(bad(3, 20, NA), d$labels, progress = FALSE),
               "'x' \\(columns 17 to 24\\) contains NA/NaN values")
  expect_error(reference_signatures(bad(1, 2, -1), d$labels, progress = FALSE),
               "'x' \\(columns 1 to 8\\) contains negative values")
  expect_error(reference_signatures(bad(4, 30, 2.5), d$labels, progress = FALSE),
               "'x' \\(columns 25 to 30\\) must hold integer counts")
  expect_error(reference_signatures(bad(4, 30, Inf), d$labels, progress = FALSE),
               "contains infinite values")
  expect_error(cell2location(bad(3, 20, NA), d$x[, 1:3], max_epochs = 2, progress = FALSE),
               "'x' \\(columns 17 to 24\\) contains NA/NaN values")
  expect_error(filter_genes(bad(1, 2, -1), plot = FALSE), "'x' \\(columns 1 to 8\\) contains negative")
  ch <- DelayedArray::DelayedArray(matrix("a", 3, 4))
  expect_error(reference_signatures(ch, c("a", "a", "b", "b")), "'x' must hold numbers, not character values")
  # a sparse DelayedArray keeps its NA values (checked on the stored values)
  xs <- methods::as(d$x * 1, "CsparseMatrix")
  xs[5, 5] <- NA
  ds <- DelayedArray::DelayedArray(xs)
  expect_true(DelayedArray::is_sparse(ds))
  expect_error(reference_signatures(ds, d$labels, progress = FALSE),
               "'x' \\(columns 1 to 8\\) contains NA/NaN values")
  # and streams the same fit as the in-memory matrix
  ok <- DelayedArray::DelayedArray(methods::as(d$x * 1, "CsparseMatrix"))
  expect_identical(reference_signatures(ok, d$labels, max_epochs = 2, batch_size = 7, seed = 1,
                                        progress = FALSE)$params,
                   reference_signatures(d$x, d$labels, max_epochs = 2, batch_size = 7, seed = 1,
                                        progress = FALSE)$params)
})

test_that("cell2location() and filter_genes() on an HDF5Array equal the in-memory results", {
  skip_if_not_installed("HDF5Array")
  d <- delayed_reference(seed = 7, G = 40, n = 60)
  set.seed(1)
  sig <- matrix(rgamma(40 * 3, 1, 0.5), 40, 3,
                dimnames = list(rownames(d$x), c("A", "B", "C")))
  h <- write_h5(d$x)
  local_block_cols(d$x, 9)
  a <- suppressMessages(cell2location(d$x, sig, max_epochs = 5, seed = 2, progress = FALSE))
  b <- suppressMessages(cell2location(h, sig, max_epochs = 5, seed = 2, progress = FALSE))
  expect_identical(b$params, a$params)
  expect_identical(b$history, a$history)
  expect_identical(b$data, a$data)
  expect_s4_class(b$data$xt, "dgCMatrix") # realised sparse, not dense
  fa <- filter_genes(d$x, cell_count_cutoff = 5, cell_percentage_cutoff2 = 0.5, plot = FALSE)
  fb <- filter_genes(h, cell_count_cutoff = 5, cell_percentage_cutoff2 = 0.5, plot = FALSE)
  expect_identical(fb, fa)
  # independent: cells detecting each gene
  expect_equal(attr(fb, "stats")$n_cells, unname(rowSums(d$x > 0)))
})

test_that("a SingleCellExperiment with a DelayedMatrix assay streams and equals the matrix fit", {
  skip_if_not_installed("HDF5Array")
  skip_if_not_installed("SingleCellExperiment")
  d <- delayed_reference(seed = 9, G = 20, n = 50)
  h <- write_h5(d$x)
  meta <- S4Vectors::DataFrame(ct = d$labels, smp = d$batch, row.names = colnames(d$x))
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = h), colData = meta)
  expect_s4_class(SummarizedExperiment::assay(sce, "counts"), "DelayedMatrix")
  a <- reference_signatures(d$x, d$labels, d$batch, max_epochs = 4, batch_size = 20, seed = 6,
                            progress = FALSE)
  b <- reference_signatures(sce, "ct", batch = "smp", max_epochs = 4, batch_size = 20, seed = 6,
                            progress = FALSE)
  expect_identical(b$params, a$params)
  expect_null(b$data)
  expect_identical(filter_genes(sce, plot = FALSE), filter_genes(d$x, plot = FALSE))
  sig <- cluster_averages(d$x, d$labels)
  ca <- suppressMessages(cell2location(d$x, sig, max_epochs = 3, seed = 2, progress = FALSE))
  cb <- suppressMessages(cell2location(sce, sig, max_epochs = 3, seed = 2, progress = FALSE))
  expect_identical(cb$params, ca$params)
})

test_that("dense blocks become the same CSC as Matrix's coercion, NA kept", {
  set.seed(4)
  for (m in list(matrix(rpois(60, 0.7), 6, 10), matrix(rpois(60, 0.7) * 1.5, 10, 6),
                 matrix(runif(12) > 0.5, 3, 4), matrix(0L, 2, 3))) {
    s <- .Call(ns$C_scnative_dense_csc, m)
    ref <- methods::as(methods::as(methods::as(m * 1, "CsparseMatrix"), "generalMatrix"),
                       "dMatrix")
    expect_identical(s$p, ref@p)
    expect_identical(s$i, ref@i)
    expect_identical(s$x, ref@x)
  }
  m <- matrix(c(0L, 2L, NA, 0L), 2, 2)
  expect_identical(.Call(ns$C_scnative_dense_csc, m)$x, c(2, NA))
})
