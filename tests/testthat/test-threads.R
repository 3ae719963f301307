test_that("scnative_threads reports and set_scnative_threads sets, returning the old value", {
  n <- scnative_threads()
  expect_true(is.numeric(n) && n >= 1)
  info <- scnative_threads(verbose = TRUE)
  expect_named(info, c("threads", "cap", "num_procs", "thread_limit", "omp_max_threads", "openmp"))
  expect_lte(info[["threads"]], info[["cap"]])
  old <- set_scnative_threads(1)
  expect_identical(old, as.integer(n))
  expect_identical(scnative_threads(), 1L)
  expect_identical(set_scnative_threads(old), 1L)
  expect_identical(scnative_threads(), as.integer(n))
})

test_that("the thread count is capped by OMP_THREAD_LIMIT and read from R_SCNATIVE_NUM_THREADS", {
  old <- scnative_threads()
  on.exit(set_scnative_threads(old))
  withr::with_envvar(c(OMP_THREAD_LIMIT = "1"), {
    set_scnative_threads(NULL)
    expect_identical(scnative_threads(), 1L)
    set_scnative_threads(2)
    expect_identical(scnative_threads(), 1L)
  })
  withr::with_envvar(c(R_SCNATIVE_NUM_THREADS = "1", OMP_THREAD_LIMIT = "2"), {
    set_scnative_threads(NULL)
    expect_identical(scnative_threads(), 1L)
  })
  withr::with_envvar(c(R_SCNATIVE_NUM_THREADS = "zero"), {
    expect_warning(set_scnative_threads(NULL), "R_SCNATIVE_NUM_THREADS")
  })
})

test_that("bad thread counts give clear errors", {
  expect_error(set_scnative_threads(0), "'threads' must be at least 1")
  expect_error(set_scnative_threads(1.5), "'threads' must be a whole number")
  expect_error(set_scnative_threads("a"), "'threads' must be a single finite number")
  expect_error(scnative_threads(verbose = NA), "'verbose' must be TRUE or FALSE")
})

test_that("a threaded kernel gives identical results with 1 and 2 threads", {
  set.seed(1)
  x <- matrix(rnorm(200 * 300), 200)
  one <- .Call(scnative:::C_scnative_threads_colsums, x, 1L)
  two <- .Call(scnative:::C_scnative_threads_colsums, x, 2L)
  expect_identical(one, two)
  expect_equal(one, colSums(x))
})
