# Valid but degenerate inputs (issue 17): all-zero genes/cells, one cell type, one spot,
# constant genes, zero velocities. Each works with a documented meaning (finite results, NA
# where the help page says so) or gives a clear error naming the argument.

quiet <- function(expr) suppressMessages(suppressWarnings(expr))
all_finite <- function(x) {
  v <- unlist(lapply(x, function(z) {
    if (methods::is(z, "sparseMatrix")) z@x else if (is.list(z)) unlist(lapply(z, unlist)) else z
  }))
  v <- v[vapply(v, is.numeric, TRUE)]
  all(is.finite(unlist(v)))
}

test_that("cell2location(): one cell type, one spot, all-zero spots and genes give finite fits; all-zero counts a clear error", {
  cap_test_threads(teardown_env())
  sp <- simulate_spatial(n_spots = 30, n_genes = 40, n_cell_types = 4, seed = 1)
  x <- sp$counts
  sig <- sp$signatures
  fit <- function(x, sig) quiet(cell2location(x, sig, max_epochs = 10, seed = 1, progress = FALSE))
  one_type <- fit(x, sig[, 1, drop = FALSE])
  expect_true(all_finite(one_type$params))
  expect_equal(dim(cell_abundance(quiet(export_posterior(one_type, num_samples = 5, seed = 1)))),
               c(30L, 1L))
  one_spot <- fit(x[, 1, drop = FALSE], sig)
  expect_true(all_finite(one_spot$params))
  x0 <- x
  x0[, 3] <- 0
  x0[5, ] <- 0
  zero <- fit(x0, sig)
  expect_true(all_finite(zero$params))
  expect_true(all(is.finite(zero$history$elbo_train)))
  expect_error(fit(x * 0, sig), "'x' has no counts")
  expect_error(fit(x, sig * 0), "'signatures' column")
})

test_that("reference_signatures(): one cell type, all-zero cells and genes, all-zero counts give finite fits; one cell a clear error", {
  cap_test_threads(teardown_env())
  set.seed(1)
  rx <- matrix(stats::rpois(40 * 30, 3), 40, 30,
               dimnames = list(paste0("g", 1:40), paste0("c", 1:30)))
  lab <- factor(rep(c("A", "B", "C"), each = 10))
  fit <- function(x, l) quiet(reference_signatures(x, l, max_epochs = 5, seed = 1, progress = FALSE))
  expect_true(all_finite(fit(rx, factor(rep("A", 30)))$params))
  r0 <- rx
  r0[, 4] <- 0
  r0[4, ] <- 0
  expect_true(all_finite(fit(r0, lab)$params))
  z <- fit(rx * 0, lab)
  expect_true(all_finite(z$params))
  expect_true(all(is.finite(quiet(signatures(z, num_samples = 5, seed = 1)))))
  expect_error(fit(rx[, 1, drop = FALSE], lab[1]), "'x' must have at least 2 cells")
})

test_that("moments(), recover_dynamics(), velocity(): zero cells/genes and constant genes are finite or documented NA", {
  cap_test_threads(teardown_env())
  sim <- simulate_velocity(n_obs = 80, n_vars = 6, random_seed = 1)
  s <- sim$spliced
  u <- sim$unspliced
  s[, 2] <- 0
  u[, 2] <- 0
  s[2, ] <- 0
  u[2, ] <- 0
  m <- moments(s, u, n_neighbors = 10)
  expect_true(all(is.finite(m$Ms)) && all(is.finite(m$Mu)))
  expect_true(all(is.finite(moments(s * 0, u * 0, n_neighbors = 10)$Ms)))
  expect_error(moments(s[, 1, drop = FALSE], u[, 1, drop = FALSE]), "'x' must have at least 3 cells")

  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10)
  Ms <- m$Ms
  Mu <- m$Mu
  Ms[2, ] <- 0 # not recoverable: NA with a warning
  Mu[2, ] <- 0
  Ms[3, ] <- 1 # constant: fitted, but no variance, so no likelihood (NA)
  Mu[3, ] <- 1
  expect_warning(fit <- recover_dynamics(Ms, Mu, var_names = "all", max_iter = 3, progress = FALSE),
                 "not recoverable")
  expect_true(all(is.na(fit$var[2, ])))
  expect_true(is.na(fit$var$fit_likelihood[3]) && !is.nan(fit$var$fit_likelihood[3]))
  expect_false(any(is.nan(unlist(fit$var))))
  expect_false(any(is.nan(unlist(fit$layers))))
  expect_no_warning(v <- velocity(fit, Ms, Mu, min_r2 = NULL))
  expect_false(any(is.nan(v$velocity)))
  expect_error(quiet(recover_dynamics(m$Ms * 0, m$Mu * 0, var_names = "all", max_iter = 3,
                                      progress = FALSE)), "no gene could be fitted from 'x'")
  expect_error(recover_dynamics(m$Ms * 1e300, m$Mu, var_names = "all", progress = FALSE),
               "'x' has values up to .*rescale")
})

test_that("velocity graph chain: zero velocities give a finite graph; velocity_confidence() NA (not NaN) for them", {
  cap_test_threads(teardown_env())
  sim <- simulate_velocity(n_obs = 80, n_vars = 6, random_seed = 1)
  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10)
  fit <- quiet(recover_dynamics(m$Ms, m$Mu, var_names = "all", max_iter = 3, progress = FALSE))
  v <- velocity(fit, m$Ms, m$Mu, min_r2 = NULL)
  vz <- v
  vz$velocity[] <- 0
  g <- velocity_graph(vz, m$Ms, m$distances, progress = FALSE)
  expect_true(all(is.finite(g$graph@x)) && all(is.finite(g$graph_neg@x)))
  expect_true(all(is.finite(transition_matrix(g)@x)))
  vz$var$velocity_genes[] <- TRUE
  vc <- velocity_confidence(vz, m)
  expect_true(all(is.na(vc$velocity_confidence)))
  expect_false(any(is.nan(vc$velocity_confidence)))
  H <- latent_time_heatmap_data(NULL, m$Ms * 0, seq_len(80) / 80, genes = rownames(m$Ms),
                                n_convolve = 5)
  expect_true(all(H == 0)) # constant genes scale to 0
})
