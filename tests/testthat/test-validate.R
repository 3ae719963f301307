# Fits are plain lists that users save, reload and edit: damaged fields give errors naming the
# field (R/validate.R) instead of reaching the C core; damaged sparse inputs are refused.

validate_data <- function() {
  set.seed(1)
  sig <- matrix(rgamma(40 * 3, 1), 40, 3, dimnames = list(paste0("g", 1:40), c("A", "B", "C")))
  x <- matrix(rpois(40 * 20, 2), 40, 20, dimnames = list(rownames(sig), paste0("s", 1:20)))
  list(sig = sig, x = x, labels = rep(c("A", "B"), 10),
       batch = rep(c("b1", "b2"), each = 10), cov = rep(c("m1", "m2", "m3", "m4"), 5))
}

vd <- validate_data()
c2l_fit <- suppressMessages(cell2location(vd$x, vd$sig, max_epochs = 3, seed = 1,
                                          progress = FALSE))
ref_fit <- reference_signatures(vd$x, vd$labels, vd$batch, covariates = list(m = vd$cov),
                                max_epochs = 3, batch_size = 8, seed = 1, progress = FALSE)

# a copy of the dgCMatrix with its last column pointer past the end of the i slot
corrupt_dgc <- function(m) {
  x <- methods::as(methods::as(Matrix::Matrix(m, sparse = TRUE), "generalMatrix"), "dMatrix")
  x@p[length(x@p)] <- x@p[length(x@p)] + 5L
  x
}

test_that("new fits carry the format and pass the validator", {
  expect_identical(c2l_fit$format, 1L)
  expect_identical(ref_fit$format, 1L)
  expect_silent(scnative:::validate_fit(c2l_fit))
  expect_silent(scnative:::validate_fit(ref_fit))
  old <- ref_fit
  old$format <- NULL # fits made before the field existed
  expect_silent(scnative:::validate_fit(old))
  expect_identical(c2l_fit$precision, "single")
  old <- c2l_fit
  old$precision <- NULL # fits made before the field existed: trained in double, train on so
  expect_silent(scnative:::validate_fit(old))
  expect_identical(train_more(old, 1, progress = FALSE)$precision, "double")
})

test_that("the reported crashes are clear errors naming the field", {
  ref <- ref_fit
  ref$settings$batch_size <- 0L
  expect_error(train_more(ref, 2, progress = FALSE),
               "'fit\\$settings\\$batch_size' must be NULL or a whole number >= 1")
  fit <- c2l_fit
  fit$params$w_sf$rho <- fit$params$w_sf$rho[-1, ]
  expect_error(export_posterior(fit, num_samples = 10),
               "'fit\\$params\\$w_sf\\$rho' must be a 20 x 3 numeric matrix matching the fit's settings \\(is 19 x 3\\)")
  expect_error(cell_abundance(fit, num_samples = 10), "'x\\$params\\$w_sf\\$rho'")
  expect_error(train_more(fit, 2, progress = FALSE), "'fit\\$params\\$w_sf\\$rho'")
})

test_that("damaged cell2location fits give errors naming the field", {
  bad <- function(edit, pattern, call = function(f) train_more(f, 2, progress = FALSE)) {
    f <- c2l_fit
    f <- edit(f)
    expect_error(call(f), pattern)
  }
  bad(function(f) { f$params$w_sf <- NULL; f }, "'fit\\$params' is missing site\\(s\\) 'w_sf'")
  bad(function(f) { f$params$m_g$rho <- "a"; f }, "'fit\\$params\\$m_g\\$rho' must be a 1 x 40 numeric matrix")
  bad(function(f) { f$params$m_g$loc[1, 3] <- NA; f }, "'fit\\$params\\$m_g\\$loc' contains NA")
  bad(function(f) { f$history <- as.list(f$history); f }, "'fit\\$history' must be a data.frame")
  bad(function(f) { f$optimizer$lr <- -1; f }, "'fit\\$optimizer\\$lr' must be a positive finite number")
  bad(function(f) { f$settings$genes <- f$settings$genes[-1]; f }, "'fit\\$settings\\$genes' must have length 40")
  bad(function(f) { f$settings$n_batches <- 2L; f }, "'fit\\$settings\\$batch_levels' must have length 2")
  bad(function(f) { f$settings$batch_codes[3] <- 7L; f }, "'fit\\$settings\\$batch_codes' must hold whole numbers in 1..1")
  bad(function(f) { f$signatures <- f$signatures[, 1:2]; f }, "'fit\\$signatures' must be a 40 x 3")
  bad(function(f) { f$data$xt <- f$data$xt[, 1:39]; f }, "'fit\\$data\\$xt' must be a 20 x 40 sparse matrix")
  bad(function(f) { f$data$xt <- corrupt_dgc(f$data$xt); f }, "'fit\\$data\\$xt' is not a valid sparse matrix")
  bad(function(f) { f$seed <- -1; f }, "'fit\\$seed' must be a whole number")
  bad(function(f) { f$format <- 99L; f }, "'fit' was made by a newer scnative \\(format 99\\)")
  bad(function(f) { f$settings <- NULL; f }, "'fit\\$settings' is missing")
  bad(function(f) { f$precision <- "half"; f }, "'fit\\$precision' must be \"single\" or \"double\"")
  bad(function(f) { f$precision <- c("single", "double"); f }, "'fit\\$precision' must be")
  # the posterior, init and summary check too
  bad(function(f) { f$settings$hyper$N <- 0; f }, "'init\\$settings\\$hyper\\$N' must be a positive",
      function(f) suppressMessages(cell2location(vd$x, vd$sig, max_epochs = 2, init = f,
                                                 progress = FALSE)))
  bad(function(f) { f$params$w_sf$loc[2, 2] <- Inf; f }, "'object\\$params\\$w_sf\\$loc' contains",
      summary)
  bad(function(f) { f$history$epoch <- NULL; f }, "'x\\$history' must be a data.frame", plot_history)
})

test_that("damaged reference fits give errors naming the field", {
  bad <- function(edit, pattern, call = function(f) train_more(f, 2, progress = FALSE)) {
    f <- ref_fit
    f <- edit(f)
    expect_error(call(f), pattern)
  }
  bad(function(f) { f$params$s_g_gene_add <- NULL; f }, "'fit\\$params' is missing site\\(s\\) 's_g_gene_add'")
  bad(function(f) { f$params$per_cluster_mu_fg$rho <- as.data.frame(f$params$per_cluster_mu_fg$rho); f },
      "'fit\\$params\\$per_cluster_mu_fg\\$rho' must be a 2 x 40 numeric matrix")
  bad(function(f) { f$params$alpha_g_inverse$loc[1, 1] <- NaN; f }, "'fit\\$params\\$alpha_g_inverse\\$loc' contains NA")
  bad(function(f) { f$history <- "none"; f }, "'fit\\$history' must be a data.frame")
  bad(function(f) { f$optimizer$lr <- -0.1; f }, "'fit\\$optimizer\\$lr' must be a positive finite number")
  bad(function(f) { f$settings$genes <- c(f$settings$genes, "extra"); f }, "'fit\\$settings\\$genes' must have length 40")
  bad(function(f) { f$data$x <- f$data$x[, -1]; f }, "'fit\\$data\\$x' must be a 40 x 20 sparse matrix \\(genes x cells\\) matching the fit's settings \\(is 40 x 19\\)")
  bad(function(f) { f$data$cell_group[1] <- 99L; f }, "'fit\\$data\\$cell_group' must hold whole numbers in 0")
  bad(function(f) { f$data$gdef[2, 1] <- 5L; f }, "'fit\\$data\\$gdef' must hold whole numbers in 0..1")
  bad(function(f) { f$data$labels <- rev(f$data$labels); f }, "do not match the cells' labels")
  bad(function(f) { f$data$covariates <- list(); f }, "'fit\\$data\\$covariates' must hold the fit's covariates")
  bad(function(f) { f$settings$tech_levels <- "m_m1"; f }, "'fit\\$settings\\$tech_levels'")
  bad(function(f) { f$settings$n_groups <- 0L; f }, "'fit\\$settings\\$n_groups' must be a whole number >= 1")
  bad(function(f) { f$steps <- NA; f }, "'fit\\$steps' must be a whole number >= 0")
  bad(function(f) { f$format <- 99L; f }, "'fit' was made by a newer scnative \\(format 99\\)")
  bad(function(f) { f$params$per_cluster_mu_fg$loc <- f$params$per_cluster_mu_fg$loc[, -1]; f },
      "'x\\$params\\$per_cluster_mu_fg\\$loc' must be a 2 x 40", function(f) signatures(f, num_samples = 10))
  bad(function(f) { f$settings$batch_size <- 2.5; f }, "'init\\$settings\\$batch_size' must be NULL",
      function(f) reference_signatures(vd$x, vd$labels, vd$batch, covariates = list(m = vd$cov),
                                       max_epochs = 2, init = f, progress = FALSE))
})

test_that("print stays lenient on a damaged fit", {
  f <- c2l_fit
  f$history <- NULL
  expect_output(print(f), "malformed fit: 'x\\$history' is missing")
  r <- ref_fit
  r$settings <- list()
  expect_output(print(r), "malformed fit")
  expect_output(print(ref_fit), "regression fit")
})

test_that("valid fits still train and export, and a failed call leaves the object alone", {
  f2 <- train_more(c2l_fit, 2, progress = FALSE)
  expect_equal(nrow(f2$history), 5L)
  expect_identical(f2$format, 1L)
  post <- export_posterior(f2, num_samples = 10, seed = 1)
  expect_equal(dim(post$means$w_sf), c(20L, 3L))
  r2 <- train_more(ref_fit, 2, progress = FALSE)
  expect_equal(nrow(r2$history), 5L)
  expect_equal(dim(signatures(r2, num_samples = 10, seed = 1)), c(40L, 2L))
  r3 <- reference_signatures(vd$x, vd$labels, vd$batch, covariates = list(m = vd$cov),
                             max_epochs = 2, batch_size = 8, init = ref_fit, seed = 1,
                             progress = FALSE)
  expect_equal(nrow(r3$history), 5L)
  # a batch size given as a double still works
  r4 <- ref_fit
  r4$settings$batch_size <- 8
  expect_equal(nrow(train_more(r4, 1, progress = FALSE)$history), 4L)
  ref <- ref_fit
  ref$settings$batch_size <- 0L
  before <- ref
  expect_error(train_more(ref, 2, progress = FALSE))
  expect_identical(ref, before)
})

test_that("a sparse input with edited slots is refused before any use", {
  xs <- corrupt_dgc(vd$x)
  expect_error(suppressMessages(cell2location(xs, vd$sig, max_epochs = 2, progress = FALSE)),
               "'x' is not a valid sparse matrix")
  expect_error(reference_signatures(xs, vd$labels, max_epochs = 2, progress = FALSE),
               "'x' is not a valid sparse matrix")
  sim <- simulate_velocity(n_obs = 30, n_vars = 5, random_seed = 1)
  u <- corrupt_dgc(sim$unspliced)
  expect_error(moments(sim$spliced, u, n_neighbors = 5, normalize = FALSE),
               "'unspliced' is not a valid sparse matrix")
  g <- methods::as(Matrix::sparseMatrix(i = 1:30, j = c(2:30, 1), x = 1), "dgCMatrix")
  g@i[1] <- 99L
  expect_error(moments(sim$spliced, sim$unspliced, connectivities = g, normalize = FALSE),
               "'connectivities' is not a valid sparse matrix")
})

test_that("the C core refuses bad sizes and codes that get past R", {
  ns <- asNamespace("scnative")
  st <- ref_fit$settings
  prep <- c(list(settings = st), ref_fit$data)
  prep$settings$batch_size <- 0L
  expect_error(ns$ref_fit_run(prep, ref_fit$params, ref_fit$history, 0, 1, ref_fit$optimizer, 1,
                              1L, FALSE, FALSE), "minibatch size must be at least 1")
  prep <- c(list(settings = st), ref_fit$data)
  prep$cell_group[1] <- 99L
  expect_error(ns$ref_make_state(prep), "group is out of range")
  s <- c2l_fit$params$w_sf
  s$rho <- s$rho[-1, ]
  expect_error(ns$svi_site_summary(1, s, 10L, 1, 0.5, 1L), "same length")
  xt <- c2l_fit$data$xt
  expect_error(.Call(ns$C_scnative_c2l_setup, xt@p, rev(xt@i), xt@x, c(20L, 40L, 3L, 50L, 1L),
                     c(0L, 20L), t(c2l_fit$signatures) + 0, rep(1, 15), 1, 1, c(0L, 0L)),
               "not increasing")
})
