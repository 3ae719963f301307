# cell2location's minibatch regime (spec: cell2location, Minibatch regime): the plate-scaled log
# joint and its gradient, agreement with live upstream minibatch training, determinism, input
# checks, and the Python patch running minibatch calls natively.

mb_ns <- function() asNamespace("scnative")

# A small random problem: genes x spots counts with zeros, small and large counts, 2 batches.
mb_toy <- function(S = 9, G = 12, F = 3, seed = 3) {
  set.seed(seed)
  sig <- matrix(stats::rgamma(G * F, 1, 1), G, F,
                dimnames = list(paste0("g", seq_len(G)), paste0("ct", seq_len(F))))
  x <- matrix(sample(c(0, 0, 0, 1, 2, 3, 7, 40, 150), G * S, replace = TRUE), G, S,
              dimnames = list(rownames(sig), paste0("s", seq_len(S))))
  batch <- factor(rep(c("b1", "b2"), length.out = S), levels = c("b1", "b2"))
  batch[1:2] <- c("b2", "b1") # spots not sorted by batch
  list(x = x, sig = sig, batch = batch)
}

mb_prep <- function(d, N = 30, R = 4) {
  mb_ns()$c2l_prepare(d$x, d$sig, d$batch, N, TRUE, 20, 7, 7, R, FALSE, 1,
                      list(mean = 1, mean_var_ratio = 1, alpha_mean = 3), 1,
                      list(alpha = 9, beta = 3), list(alpha = 9, beta = 3),
                      list(alpha = 1, beta = 100), list(mean_alpha = 10), 5, quiet = TRUE,
                      min_genes = 1)
}

# The flat vector of the minibatch `spots` (0-based, C order) cut from a full flat vector:
# local sites keep those rows (written here from the site table, independently of the C side).
mb_cut <- function(v, st, spots) {
  tab <- mb_ns()$c2l_sites_of(st)
  pos <- 0
  out <- list()
  for (j in seq_len(nrow(tab))) {
    n <- tab$nrow[j] * tab$ncol[j]
    m <- matrix(v[pos + seq_len(n)], tab$nrow[j], tab$ncol[j])
    pos <- pos + n
    if (tab$rows[j] == "spot") m <- m[spots + 1L, , drop = FALSE]
    out[[j]] <- list(v = as.vector(m), local = tab$rows[j] == "spot", name = tab$name[j],
                     n = length(m))
  }
  out
}

test_that("the plate-scaled minibatch log joint splits into global and scaled local parts and its gradient matches finite differences", {
  ns <- mb_ns()
  d <- mb_toy()
  prep <- mb_prep(d)
  st <- prep$settings
  tab <- ns$c2l_sites_of(st)
  S <- st$n_spots
  set.seed(11)
  P <- sum(tab$nrow * tab$ncol)
  u <- ns$c2l_flatten(lapply(ns$c2l_init_params(st), `[[`, "loc"), st) + stats::runif(P, -0.5, 0.5)
  A <- c(0L, 2L, 3L, 6L, 8L) # both batches (C order: spots sorted by batch)
  B <- setdiff(seq_len(S) - 1L, A)
  flat <- function(parts) unlist(lapply(parts, `[[`, "v"))
  uA <- flat(mb_cut(u, st, A)); uB <- flat(mb_cut(u, st, B))
  full <- ns$c2l_logjoint(prep, u)
  a1 <- ns$c2l_logjoint_mb(prep, uA, A, length(A)) # scale 1
  b1 <- ns$c2l_logjoint_mb(prep, uB, B, length(B))
  sc <- S / length(A)
  aS <- ns$c2l_logjoint_mb(prep, uA, A, S)         # upstream's scale: plate size / batch
  # Local terms are sums over spots and global priors appear once per evaluation, so the
  # global prior part is lp(A) + lp(B) - lp(all); the scaled joint is global + sc * the rest.
  glob <- a1$logp + b1$logp - full$logp
  expect_equal(aS$logp, glob + sc * (a1$logp - glob), tolerance = 1e-10)
  # gradients: local rows are sc times the unscaled ones; a global site's gradient is its prior
  # part (A's + B's - the full one) plus sc times the rest of A's
  pA <- mb_cut(seq_along(u), st, A)
  gparts <- function(g, parts) {
    pos <- 0
    lapply(parts, function(p) { r <- g[pos + seq_len(p$n)]; pos <<- pos + p$n; r })
  }
  pa <- mb_cut(u, st, A)
  ga1 <- gparts(a1$grad, pa); gaS <- gparts(aS$grad, pa)
  gb1 <- gparts(b1$grad, mb_cut(u, st, B))
  gfull <- gparts(full$grad, lapply(tab$name, function(n) list(n = sum(tab$nrow[tab$name == n] * tab$ncol[tab$name == n]))))
  for (j in seq_along(pa)) {
    if (pa[[j]]$local) {
      expect_equal(gaS[[j]], sc * ga1[[j]], tolerance = 1e-10, info = pa[[j]]$name)
    } else {
      gg <- ga1[[j]] + gb1[[j]] - gfull[[j]]
      expect_equal(gaS[[j]], gg + sc * (ga1[[j]] - gg), tolerance = 1e-8, info = pa[[j]]$name)
    }
  }
  # central finite differences of the scaled joint, every element of every site
  expect_fd_by_site(function(v) ns$c2l_logjoint_mb(prep, v, A, S)$logp, uA, aS$grad,
                    rep(vapply(pa, `[[`, "", "name"), vapply(pa, `[[`, 0, "n")), tab$name)
  # the float32 pass agrees on the minibatch too
  a32 <- ns$c2l_logjoint_mb(prep, uA, A, S, precision = "single")
  expect_lt(abs(a32$logp / aS$logp - 1), 1e-6)
})

test_that("a minibatch as large as the data reproduces full-batch training", {
  d <- mb_toy(S = 40, G = 30, F = 4, seed = 5)
  fit <- function(...) {
    suppressMessages(cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 8,
                                   max_epochs = 30, lr = 0.01, seed = 4, threads = 1,
                                   progress = FALSE, precision = "double", ...))
  }
  f0 <- fit()
  f1 <- fit(batch_size = 1000) # >= spots: one minibatch of all spots, plate scale 1
  expect_null(f0$minibatch)
  expect_identical(f1$minibatch$batch_size, 40L)
  expect_equal(f1$history$elbo_train, f0$history$elbo_train, tolerance = 1e-12)
  for (s in names(f0$params)) {
    expect_equal(f1$params[[s]], f0$params[[s]], tolerance = 1e-12, info = s)
  }
})

test_that("minibatch fits are reproducible for a seed at any thread count; train_size and train_more", {
  d <- mb_toy(S = 60, G = 30, F = 4, seed = 6)
  fit <- function(seed, threads, ...) {
    suppressMessages(cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 8,
                                   max_epochs = 12, lr = 0.01, seed = seed, threads = threads,
                                   progress = FALSE, batch_size = 25, ...))
  }
  a <- fit(1, 1)
  expect_identical(a$minibatch$batch_size, 25L)
  expect_identical(nrow(a$history), 12L)
  expect_true(all(is.finite(a$history$elbo_train)))
  expect_identical(fit(1, 1)[c("params", "history")], a[c("params", "history")])
  expect_identical(fit(1, 2)[c("params", "history")], a[c("params", "history")])
  expect_false(identical(fit(2, 1)$params, a$params))
  # train_size < 1: ceiling(0.5 * 60) = 30 training spots; the others never get a gradient,
  # and with a zero gradient from the first step on, Adam leaves them where they started
  h <- fit(1, 1, train_size = 0.5)
  expect_length(h$minibatch$train, 30L)
  init <- mb_ns()$c2l_init_params(h$settings)
  val <- setdiff(seq_len(60), h$minibatch$train)
  expect_equal(h$params$w_sf$loc[val, ], init$w_sf$loc[val, ])
  expect_false(isTRUE(all.equal(h$params$w_sf$loc[h$minibatch$train, ],
                                init$w_sf$loc[h$minibatch$train, ])))
  # train_more continues with the fit's minibatches
  long <- suppressMessages(cell2location(d$x, d$sig, batch = d$batch, N_cells_per_location = 8,
                                         max_epochs = 6, lr = 0.01, seed = 1, threads = 1,
                                         progress = FALSE, batch_size = 25))
  more <- train_more(long, 6, threads = 1, progress = FALSE)
  expect_identical(more$minibatch, long$minibatch)
  expect_identical(nrow(more$history), 12L)
  expect_output(print(more), "minibatches of 25 spots \\(60 training spots\\)")
})

test_that("bad batch_size and train_size give clear errors", {
  d <- mb_toy(S = 10, G = 12, F = 3)
  run <- function(...) {
    suppressMessages(cell2location(d$x, d$sig, max_epochs = 2, progress = FALSE, ...))
  }
  expect_error(run(batch_size = 0), "'batch_size' must be at least 1")
  expect_error(run(batch_size = 2.5), "'batch_size' must be a whole number")
  expect_error(run(batch_size = "10"), "'batch_size'")
  expect_error(run(batch_size = c(2, 3)), "'batch_size'")
  expect_error(run(batch_size = NA), "'batch_size'")
  expect_error(run(train_size = 0), "'train_size'")
  expect_error(run(train_size = 1.5), "'train_size'")
  expect_error(run(train_size = NA_real_), "'train_size'")
  expect_error(run(train_size = "1"), "'train_size'")
  # a fit's damaged minibatch settings are named when the fit is used again
  f <- run(batch_size = 4, seed = 1, threads = 1)
  bad <- f
  bad$minibatch$train <- c(1, 1)
  expect_error(train_more(bad, 1, progress = FALSE), "minibatch\\$train")
  bad <- f
  bad$minibatch$batch_size <- 0
  expect_error(train_more(bad, 1, progress = FALSE), "minibatch\\$batch_size")
})

test_that("a minibatch-only (lean) state refuses the full-batch entry points", {
  ns <- mb_ns()
  prep <- mb_prep(mb_toy())
  state <- ns$c2l_make_state(prep, lean = TRUE)
  u <- rep(0, length(ns$c2l_flatten(lapply(ns$c2l_init_params(prep$settings), `[[`, "loc"),
                                    prep$settings)))
  expect_error(.Call(ns$C_scnative_c2l_train, state, 1L, 0, 0.002, 0L, 10, 1, 1, 1L),
               "minibatch-only")
  expect_error(.Call(ns$C_scnative_c2l_logjoint, state, u, 1L), "minibatch-only")
  # the same state trains in minibatches
  .Call(ns$C_scnative_c2l_set_params, state, u, u - 2)
  loss <- .Call(ns$C_scnative_c2l_train_mb, state, 2L, 0, c(0.002, 10, 1, 0), 0:8, 4L, 1, 1L)
  expect_length(loss, 2)
  expect_true(all(is.finite(loss)))
})

test_that("minibatch fits agree with live upstream minibatch training", {
  use_peers()
  sim <- simulate_spatial(n_spots = 300, n_genes = 120, n_cell_types = 6, seed = 2)
  # 300 spots in minibatches of 100 (3 steps per epoch) for 300 epochs at lr 0.01 on both sides
  epochs <- 300
  ours <- run_scnative_c2l(sim$counts, sim$signatures, N_cells_per_location = 8,
                           detection_alpha = 20, max_epochs = epochs, lr = 0.01, seed = 1,
                           threads = 1, batch_size = 100)
  up <- run_upstream_c2l(sim$counts, sim$signatures, N_cells_per_location = 8,
                         detection_alpha = 20, max_epochs = epochs, lr = 0.01, seed = 0,
                         threads = 1, batch_size = 100)
  agree <- pearson_all(ours$means, up$means)
  truth_ours <- pearson_all(sim$abundance, ours$means)
  truth_up <- pearson_all(sim$abundance, up$means)
  # the per-epoch loss is upstream's: the mean of the epoch's minibatch losses
  tail_ratio <- mean(utils::tail(ours$history, 50)) / mean(utils::tail(up$history, 50))
  message(sprintf("minibatch: r(scnative, upstream) %.4f; r to truth %.4f vs %.4f; last-50 loss ratio %.4f; seconds %.1f vs %.1f",
                  agree, truth_ours, truth_up, tail_ratio, ours$seconds, up$seconds))
  expect_length(up$history, epochs)
  expect_length(ours$history, epochs)
  expect_gte(agree, 0.95)
  expect_gte(truth_ours, truth_up - 0.03)
  expect_lt(abs(tail_ratio - 1), 0.02)
})
