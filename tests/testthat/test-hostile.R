# Regression tests for the classes of hostile input the fuzzer (helper-fuzz.R, issue 17) found:
# each gave a vague error, an R-internal message or a silent wrong answer before.

hostile_velocity <- function() {
  set_scnative_threads(1)
  on.exit(set_scnative_threads(NULL))
  sim <- simulate_velocity(n_obs = 60, n_vars = 6)
  m <- suppressWarnings(moments(sim$spliced, sim$unspliced, n_neighbors = 10, threads = 1))
  fit <- suppressWarnings(recover_dynamics(m$Ms, m$Mu, var_names = "all", max_iter = 3,
                                           threads = 1, progress = FALSE))
  v <- velocity(fit, m$Ms, m$Mu, min_r2 = NULL)
  vg <- velocity_graph(v, m$Ms, m$distances, threads = 1, progress = FALSE)
  list(sim = sim, m = m, fit = fit, v = v, vg = vg)
}

test_that("malformed factors are named, not 'malformed factor' from R", {
  x <- matrix(rpois(60, 3), 6, 10, dimnames = list(paste0("g", 1:6), paste0("c", 1:10)))
  lab <- factor(rep(c("A", "B"), 5))
  bad <- lab
  codes <- unclass(bad); codes[1] <- 7L; attributes(codes) <- attributes(bad)
  expect_error(cluster_averages(x, codes), "'labels' is a malformed factor")
  expect_error(reference_signatures(x, codes, max_epochs = 2, progress = FALSE),
               "'labels' is a malformed factor")
  dup <- lab; attr(dup, "levels") <- c("A", "A")
  expect_error(cluster_averages(x, dup), "'labels' is a malformed factor")
  expect_equal(dim(cluster_averages(x, lab)), c(6L, 2L))
})

test_that("whole numbers beyond the C int range are refused by name", {
  expect_error(check_number(2^31, "n", whole = TRUE), "'n' must be at most")
  expect_error(simulate_spatial(n_spots = 10, n_genes = 2^31, n_cell_types = 3, seed = 1),
               "'n_genes'")
  expect_silent(check_number(2^40, "seed", whole = TRUE, max = 2^53 - 1))
  # checked in every mode of simulate_spatial, not ignored
  x <- matrix(rpois(200, 3), 10, 20, dimnames = list(paste0("g", 1:10), paste0("c", 1:20)))
  expect_error(simulate_spatial(x, rep(c("A", "B"), 10), n_spots = 10, n_genes = c(5, 5),
                                seed = 1), "'n_genes'")
})

test_that("a damaged recover_dynamics() fit is named field by field", {
  d <- hostile_velocity()
  f <- d$fit
  f$var <- "oops"
  expect_error(velocity(f, d$m$Ms, d$m$Mu), "'x\\$var' must be a data.frame")
  f <- d$fit
  f$layers$fit_t <- f$layers$fit_t[-1, ]
  expect_error(latent_time(f, root_cells = 1, connectivities = d$m$connectivities),
               "'x\\$layers\\$fit_t'")
  f <- d$fit
  f$var$fit_beta[1] <- Inf
  expect_error(plot_dynamics_params(f), "'fit\\$var\\$fit_beta'")
  expect_error(velocity(unclass(d$fit), d$m$Ms, d$m$Mu), "'x' must be a scnative_dynamics fit")
})

test_that("graphs of the same size but other (or reordered) cells are refused", {
  d <- hostile_velocity()
  T <- transition_matrix(d$vg)
  Tb <- T
  dimnames(Tb) <- lapply(dimnames(T), rev)
  expect_error(velocity_confidence_transition(d$v, d$m$Ms, Tb), "of 'T' are not the cells")
  C <- d$m$connectivities
  dimnames(C) <- lapply(dimnames(C), rev)
  expect_error(velocity_pseudotime(d$vg, C, distances = d$m$distances, threads = 1),
               "of 'connectivities' are not the cells")
  Ms <- d$m$Ms
  Mu <- d$m$Mu
  colnames(Mu) <- rev(colnames(Mu))
  expect_error(velocity(d$fit, Ms, Mu), "'Mu'")
})

test_that("posteriors are checked before a summary is read", {
  sig <- matrix(rgamma(30 * 3, 1), 30, 3, dimnames = list(paste0("g", 1:30), c("A", "B", "C")))
  set.seed(1)
  x <- matrix(rpois(30 * 12, 2), 30, 12, dimnames = list(rownames(sig), paste0("s", 1:12)))
  fit <- suppressMessages(cell2location(x, sig, max_epochs = 3, seed = 1, progress = FALSE,
                                        threads = 1))
  post <- export_posterior(fit, num_samples = 10, seed = 1, threads = 1)
  p2 <- post; p2$spots <- "oops"
  expect_error(cell_abundance(p2), "'x\\$means\\$w_sf' must be a 1 x 3")
  p2 <- post; p2$means$w_sf[1, 1] <- NaN
  expect_error(cell_abundance(p2), "'x\\$means\\$w_sf' contains NA")
  expect_error(export_posterior(fit, num_samples = 2^31), "'num_samples' must be at most")
  ab <- cell_abundance(post)
  ab[2, 2] <- Inf
  skip_if_not_installed("ggplot2")
  coords <- data.frame(x = 1:12, y = 1:12, row.names = colnames(x))
  expect_error(plot_spatial_abundance(ab, coords), "'x' contains infinite values")
})

test_that("gene times near the double range give an error, not Inf/NaN", {
  d <- hostile_velocity()
  ft <- d$fit$layers$fit_t
  ft[1, 5] <- 1e308
  expect_error(latent_time(ft, root_cells = 1, connectivities = d$m$connectivities,
                           fit_likelihood = d$fit$var$fit_likelihood), "'x' \\(fit_t\\)")
})
