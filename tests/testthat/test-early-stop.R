# Early stopping and the progress display of the SVI training (svi_train_blocks in svi.R) for
# cell2location() and reference_signatures(): argument checks, an independent re-computation
# of the criterion, determinism (seed, threads, block sizes), equality with a fixed-length run,
# train_more() after a stop, the fit's record and its validation, and accuracy against a
# full-length run on simulated data.

# The criterion written out plainly over a whole loss vector: the first epoch at which the
# `window`-epoch moving average has not fallen by more than min_delta (relative) below its best
# value for `patience` epochs; NA if it never fires.
es_oracle <- function(loss, patience, min_delta, window) {
  n <- length(loss)
  if (n < window) return(list(stop = NA_integer_, best = NA_real_, best_epoch = NA_integer_))
  sm <- vapply(window:n, function(i) mean(loss[(i - window + 1):i]), 0)
  best <- sm[1]
  best_i <- window
  for (i in seq.int(window + 1, length.out = n - window)) {
    s <- sm[i - window + 1]
    if (s < best - min_delta * abs(best)) {
      best <- s
      best_i <- i
    } else if (i - best_i >= patience) {
      return(list(stop = i, best = best, best_epoch = best_i))
    }
  }
  list(stop = NA_integer_, best = best, best_epoch = best_i)
}

es_data <- function() {
  sim <- simulate_spatial(n_spots = 100, n_genes = 50, n_cell_types = 4, seed = 2)
  list(x = sim$counts, sig = sim$signatures)
}

es_fit <- function(d, ...) {
  suppressMessages(cell2location(d$x, d$sig, lr = 0.01, progress = FALSE, ...))
}

es_small <- list(patience = 100, min_delta = 1e-4, window = 20)

test_that("early_stop is validated with errors naming it", {
  d <- es_data()
  f <- function(es) es_fit(d, max_epochs = 5, seed = 1, threads = 1, early_stop = es)
  expect_error(f("yes"), "'early_stop' must be TRUE, FALSE or a list")
  expect_error(f(NA), "'early_stop' must be TRUE, FALSE or a list")
  expect_error(f(c(TRUE, FALSE)), "'early_stop' must be TRUE, FALSE or a list")
  expect_error(f(list(10)), "'early_stop' must be a list with named elements")
  expect_error(f(list(patience = 10, patience = 5)), "named elements")
  expect_error(f(list(pat = 10)), "'early_stop' has unknown element\\(s\\) 'pat'")
  expect_error(f(list(patience = 0)), "'early_stop\\$patience' must be at least 1")
  expect_error(f(list(patience = 2.5)), "'early_stop\\$patience' must be a whole number")
  expect_error(f(list(min_delta = -1e-3)), "'early_stop\\$min_delta' must be at least 0")
  expect_error(f(list(min_delta = 2)), "'early_stop\\$min_delta' must be at most 1")
  expect_error(f(list(window = NA)), "'early_stop\\$window' must be a single finite number")
  expect_error(f(list(window = "a")), "'early_stop\\$window' must be a single finite number")
  fit <- f(FALSE)
  expect_null(fit$early_stop)
  expect_false("early_stop" %in% names(fit))
  # fewer epochs than the window: no averaged loss yet, a valid record
  short <- f(TRUE)
  expect_identical(short$early_stop$reason, "max_epochs")
  expect_identical(short$early_stop$best_epoch, NA_integer_)
  expect_silent(scnative:::validate_fit(short))
  expect_output(print(short), "early stopping: did not stop: ran all 5 epochs")
  expect_error(train_more(fit, 5, early_stop = 1), "'early_stop' must be TRUE, FALSE or a list")
  hip <- example_hippocampus()
  expect_error(reference_signatures(hip$reference$counts, hip$reference$cell_types,
                                    max_epochs = 2, early_stop = list(window = 0),
                                    progress = FALSE),
               "'early_stop\\$window' must be at least 1")
  # defaults: TRUE gives the documented settings; a partial list fills in the rest
  expect_identical(scnative:::svi_check_early_stop(TRUE),
                   list(patience = 1000L, min_delta = 5e-4, window = 200L))
  expect_identical(scnative:::svi_check_early_stop(list(patience = 7)),
                   list(patience = 7L, min_delta = 5e-4, window = 200L))
})

test_that("the stopping decision does not depend on block sizes and never overruns", {
  # a loss that falls and then flattens with deterministic noise; the fake trainer sleeps a
  # little at random so that the block sizes (chosen from timing) differ between runs
  n <- 3000
  set.seed(5)
  curve <- 1e4 * (1 + 5 * exp(-(1:n) / 150)) + stats::rnorm(n, sd = 2)
  es <- scnative:::svi_check_early_stop(list(patience = 80, min_delta = 1e-4, window = 15))
  want <- es_oracle(curve, 80, 1e-4, 15)
  expect_false(is.na(want$stop))
  runs <- lapply(1:3, function(r) {
    calls <- integer(0)
    res <- scnative:::svi_train_blocks(function(k, done) {
      calls <<- c(calls, k)
      if (r > 1) Sys.sleep(stats::runif(1, 0, 0.002))
      curve[done + seq_len(k)]
    }, n, FALSE, "test", es)
    list(res = res, calls = calls)
  })
  for (r in runs) {
    expect_equal(sum(r$calls), want$stop) # not one epoch more was run
    expect_identical(r$res$loss, curve[seq_len(want$stop)])
    expect_true(r$res$early_stop$stopped)
    expect_identical(r$res$early_stop$epochs, want$stop)
    expect_identical(r$res$early_stop$best_epoch, as.integer(want$best_epoch))
    expect_equal(r$res$early_stop$best_elbo, want$best, tolerance = 1e-12)
  }
  # the criterion never fires: all epochs, reason max_epochs
  res <- scnative:::svi_train_blocks(function(k, done) -(done + seq_len(k)), 500, FALSE, "test",
                                     es)
  expect_length(res$loss, 500)
  expect_identical(res$early_stop$reason, "max_epochs")
  expect_false(res$early_stop$stopped)
  # non-finite losses are never an improvement
  res <- scnative:::svi_train_blocks(function(k, done) rep(NaN, k), 500, FALSE, "test", es)
  expect_identical(res$early_stop$epochs, 15L + 80L)
})

# The fits shared by the next tests (threads = 1: two OpenMP threads on tiny data only spin
# on a loaded machine; one short run checks threads = 2).
es_cache <- new.env()
es_cached <- function(name, expr) {
  if (is.null(es_cache[[name]])) es_cache[[name]] <- expr
  es_cache[[name]]
}
es_stopped <- function() {
  es_cached("a", es_fit(es_data(), max_epochs = 3000, seed = 1, threads = 1,
                        early_stop = es_small))
}
es_fixed <- function() {
  es_cached("fixed", es_fit(es_data(), max_epochs = es_stopped()$early_stop$epochs, seed = 1,
                            threads = 1))
}

test_that("cell2location's early stop is deterministic and equals a fixed run of that length", {
  d <- es_data()
  a <- es_stopped()
  k <- a$early_stop$epochs
  expect_true(a$early_stop$stopped)
  expect_identical(a$early_stop$reason, "converged")
  expect_lt(k, 3000L)
  b <- es_fit(d, max_epochs = 3000, seed = 1, threads = 1, early_stop = es_small)
  expect_identical(b$early_stop, a$early_stop)
  expect_identical(b$params, a$params)
  fixed <- es_fixed()
  expect_identical(fixed$params, a$params)
  expect_identical(fixed$history, a$history)
  # threads do not change the decision (a short run)
  quick <- list(patience = 20, window = 5, min_delta = 1e-3)
  t1 <- es_fit(d, max_epochs = 3000, seed = 4, threads = 1, early_stop = quick)
  t2 <- es_fit(d, max_epochs = 3000, seed = 4, threads = 2, early_stop = quick)
  expect_true(t1$early_stop$stopped)
  expect_identical(t2$early_stop, t1$early_stop)
  expect_identical(t2$params, t1$params)
  # the history holds exactly the epochs run; the record follows from it
  expect_identical(nrow(a$history), k)
  expect_equal(a$history$epoch, seq_len(k) - 1)
  o <- es_oracle(a$history$elbo_train, 100, 1e-4, 20)
  expect_identical(o$stop, k)
  expect_identical(a$early_stop$best_epoch, as.integer(o$best_epoch))
  expect_identical(a$early_stop[c("patience", "min_delta", "window", "max_epochs")],
                   list(patience = 100L, min_delta = 1e-4, window = 20L, max_epochs = 3000L))
  out <- capture.output(print(a))
  expect_true(any(grepl(sprintf("early stopping: stopped after %d of 3000 epochs", k), out)))
  # another seed stops elsewhere (the decision follows the losses)
  c2 <- es_fit(d, max_epochs = 3000, seed = 2, threads = 1, early_stop = es_small)
  expect_false(identical(c2$history, a$history))
  expect_identical(c2$early_stop$epochs, es_oracle(c2$history$elbo_train, 100, 1e-4, 20)$stop)
})

test_that("train_more continues after an early stop, with or without early stopping", {
  a <- es_stopped()
  k <- a$early_stop$epochs
  m1 <- suppressMessages(train_more(a, 50, progress = FALSE, threads = 1))
  m0 <- suppressMessages(train_more(es_fixed(), 50, progress = FALSE, threads = 1))
  expect_identical(m1$params, m0$params)
  expect_identical(nrow(m1$history), k + 50L)
  expect_equal(m1$history$epoch, seq_len(k + 50) - 1)
  expect_null(m1$early_stop) # the record describes the last training call
  m2 <- suppressMessages(train_more(a, 3000, early_stop = list(patience = 30, window = 10),
                                    progress = FALSE, threads = 1))
  k2 <- m2$early_stop$epochs
  expect_true(m2$early_stop$stopped)
  expect_identical(m2$early_stop$max_epochs, 3000L)
  expect_identical(nrow(m2$history), k + k2)
  new <- m2$history$elbo_train[k + seq_len(k2)]
  expect_identical(es_oracle(new, 30, 5e-4, 10)$stop, k2) # default min_delta
  expect_identical(m2$history$elbo_train[seq_len(k)], a$history$elbo_train)
  expect_silent(scnative:::validate_fit(m2))
})

test_that("the early-stop record is validated and damaged records are named", {
  d <- es_data()
  a <- es_fit(d, max_epochs = 300, seed = 1, threads = 1,
              early_stop = list(patience = 50, window = 5, min_delta = 1))
  expect_identical(a$early_stop$epochs, 55L)
  expect_silent(scnative:::validate_fit(a))
  bad <- function(field, value) {
    x <- a
    x$early_stop[field] <- list(value)
    x
  }
  expect_error(scnative:::validate_fit(bad("patience", 0)), "'fit\\$early_stop\\$patience'")
  expect_error(scnative:::validate_fit(bad("min_delta", -1)), "'fit\\$early_stop\\$min_delta'")
  expect_error(scnative:::validate_fit(bad("reason", "bored")), "'fit\\$early_stop\\$reason'")
  expect_error(scnative:::validate_fit(bad("stopped", FALSE)), "'fit\\$early_stop\\$stopped'")
  expect_error(scnative:::validate_fit(bad("epochs", 56)), "'fit\\$early_stop\\$epochs'")
  expect_error(scnative:::validate_fit(bad("best_epoch", 99)), "'fit\\$early_stop\\$best_epoch'")
  x <- a
  x$early_stop$window <- NULL
  expect_error(scnative:::validate_fit(x), "'fit\\$early_stop\\$window' is missing")
  x$early_stop <- "x"
  expect_error(scnative:::validate_fit(x), "'fit\\$early_stop' must be a list")
  expect_error(export_posterior(x, num_samples = 10), "'fit\\$early_stop' must be a list")
  expect_output(print(x), "malformed fit")
})

test_that("reference_signatures stops early the same way", {
  hip <- example_hippocampus()
  ref <- hip$reference
  es <- list(patience = 40, window = 10, min_delta = 1e-3)
  f <- function(...) reference_signatures(ref$counts, ref$cell_types, max_epochs = 2000,
                                          batch_size = 200, seed = 3, progress = FALSE, ...)
  a <- f(threads = 1, early_stop = es)
  k <- a$early_stop$epochs
  expect_true(a$early_stop$stopped)
  expect_lt(k, 2000L)
  expect_identical(es_oracle(a$history$elbo_train, 40, 1e-3, 10)$stop, k)
  b <- reference_signatures(ref$counts, ref$cell_types, max_epochs = k, batch_size = 200,
                            seed = 3, progress = FALSE, threads = 1)
  expect_identical(b$params, a$params)
  expect_identical(b$steps, a$steps)
  expect_output(print(a), "early stopping: stopped after")
  m <- train_more(a, 5, progress = FALSE, threads = 1)
  expect_identical(nrow(m$history), k + 5L)
})

test_that("progress shows rate, smoothed -ELBO and time left without spamming", {
  loss <- 1000 - (1:400) / 10
  grab <- function(expr) {
    out <- character(0)
    withCallingHandlers(expr, message = function(m) {
      out <<- c(out, conditionMessage(m))
      invokeRestart("muffleMessage")
    })
    out
  }
  # not interactive (as under testthat): one line per tenth, even when updated every epoch
  pb <- scnative:::svi_progress_start(400, "demo", 20L)
  expect_false(pb$live)
  msgs <- grab(for (d in 1:400) pb <- scnative:::svi_progress_update(pb, loss, d))
  expect_length(msgs, 9L)
  expect_match(msgs, "^demo: epoch [0-9]+/400 \\([1-9]0%\\), .* epochs/s, mean -ELBO \\(last 20\\) [0-9.]+, .*s left\n$")
  expect_match(msgs[3], "epoch 120/400 \\(30%\\).*mean -ELBO \\(last 20\\) 988.95,")
  # interactive: one line rewritten in place with \r
  pb <- scnative:::svi_progress_start(400, "demo", 20L)
  pb$live <- TRUE
  out <- grab(for (d in c(100L, 200L, 300L)) pb <- scnative:::svi_progress_update(pb, loss, d))
  expect_length(out, 3L)
  expect_true(all(startsWith(out, "\r")))
  expect_false(any(grepl("\n", out)))
  expect_match(out[3], "epoch 300/400 \\(75%\\).*mean -ELBO \\(last 20\\) 970.95, .*s left *$")
  # through the trainer: a summary line at the end, with the early stop
  msgs <- grab(scnative:::svi_train_blocks(function(k, done) loss[done + seq_len(k)], 400, TRUE,
                                           "demo"))
  expect_lte(length(msgs), 10L)
  expect_match(msgs[length(msgs)], "^demo: 400 epochs in .*epochs/s.*mean -ELBO \\(last 100\\) 964.95\n$")
  es <- scnative:::svi_check_early_stop(list(patience = 10, window = 5))
  msgs <- grab(scnative:::svi_train_blocks(function(k, done) rep(1, k), 400, TRUE, "demo", es))
  expect_match(msgs[length(msgs)], "stopped early \\(15 of 400 epochs\\)")
})

test_that("the default early stop gives the full run's abundances and accuracy (simulated)", {
  # an accuracy measurement (16,000 epochs): the code paths run under ASan in the tests above
  skip_if(identical(Sys.getenv("SCNATIVE_SANITIZE"), "true"), "accuracy run, not under ASan")
  # bench/cell2location_early_stop.R measures the same at a realistic size with upstream's lr
  sim <- simulate_spatial(n_spots = 200, n_genes = 100, n_cell_types = 6, seed = 1)
  run <- function(early_stop) {
    fit <- suppressMessages(cell2location(sim$counts, sim$signatures, N_cells_per_location = 8,
                                          max_epochs = 8000, lr = 0.01, seed = 1, threads = 1,
                                          progress = FALSE, early_stop = early_stop))
    list(fit = fit,
         means = cell_abundance(export_posterior(fit, num_samples = 100, seed = 1), "means"))
  }
  es <- run(TRUE)
  full <- run(FALSE)
  k <- es$fit$early_stop$epochs
  truth <- sim$abundance
  r_es <- pearson_all(truth, es$means)
  r_full <- pearson_all(truth, full$means)
  ap_es <- auprc(truth > 0, es$means)
  ap_full <- auprc(truth > 0, full$means)
  agree <- pearson_all(es$means, full$means)
  message(sprintf("early stop at %d of 8000 epochs; r(early, full) %.4f; truth r %.4f vs %.4f, AUPRC %.4f vs %.4f",
                  k, agree, r_es, r_full, ap_es, ap_full))
  # observed: stop at 6821, r(early, full) 0.996, truth r 0.876 vs 0.877, AUPRC 1 vs 1
  expect_true(es$fit$early_stop$stopped)
  expect_lt(k, 8000L)
  expect_identical(full$fit$history$elbo_train[seq_len(k)], es$fit$history$elbo_train)
  expect_gte(agree, 0.98)
  expect_lte(abs(r_es - r_full), 0.01)
  expect_lte(abs(ap_es - ap_full), 0.01)
})
