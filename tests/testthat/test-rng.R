test_that("the RNG stream does not depend on the thread count or on how it is split", {
  a <- scnative:::rng_normal(10001, seed = 42, threads = 1)
  b <- scnative:::rng_normal(10001, seed = 42, threads = 2)
  expect_identical(a, b)
  # value i is a function of (seed, stream, i): a fill starting at an offset matches
  c <- scnative:::rng_normal(5000, seed = 42, offset = 5001)
  expect_identical(c, a[5002:10001])
  u1 <- scnative:::rng_uniform(777, seed = 7, stream = 3, threads = 1)
  u2 <- scnative:::rng_uniform(777, seed = 7, stream = 3, threads = 2)
  expect_identical(u1, u2)
})

test_that("different seeds and streams give different numbers", {
  expect_false(identical(scnative:::rng_normal(10, 1), scnative:::rng_normal(10, 2)))
  expect_false(identical(scnative:::rng_normal(10, 1, stream = 0), scnative:::rng_normal(10, 1, stream = 1)))
})

test_that("normals and uniforms have the right distribution", {
  z <- scnative:::rng_normal(2e5, seed = 3)
  expect_lt(abs(mean(z)), 0.01)
  expect_lt(abs(sd(z) - 1), 0.01)
  expect_gt(suppressWarnings(ks.test(z[1:5000], "pnorm")$p.value), 1e-4)
  u <- scnative:::rng_uniform(2e5, seed = 3)
  expect_true(all(u > 0 & u < 1))
  expect_lt(abs(mean(u) - 0.5), 0.005)
  expect_gt(suppressWarnings(ks.test(u[1:5000], "punif")$p.value), 1e-4)
})

test_that("seed NULL follows set.seed, bad seeds are rejected", {
  set.seed(10); a <- scnative:::rng_normal(5, NULL)
  set.seed(10); b <- scnative:::rng_normal(5, NULL)
  expect_identical(a, b)
  expect_error(scnative:::rng_normal(5, -1), "'seed' must be at least 0")
  expect_error(scnative:::rng_normal(5, 1.5), "'seed' must be a whole number")
})
