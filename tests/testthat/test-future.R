# recover_dynamics() and velocity_graph() with parallel = "future": gene / cell chunks on
# future workers give the local result bit for bit; failed chunks are named and resumed;
# argument checks.

skip_if_not_installed("future")
skip_if_not_installed("withr")

fut_data <- function(n_obs = 150, n_vars = 24) {
  sim <- simulate_velocity(n_obs = n_obs, n_vars = n_vars, random_seed = 3)
  Ms <- sim$spliced
  Mu <- sim$unspliced
  rownames(Ms) <- rownames(Mu) <- paste0("g", seq_len(nrow(Ms)))
  colnames(Ms) <- colnames(Mu) <- paste0("c", seq_len(ncol(Ms)))
  set.seed(7) # a symmetric neighbour graph, to run the connected-states smoothing too
  C <- Matrix::rsparsematrix(n_obs, n_obs, density = 0.04, rand.x = function(n) stats::runif(n))
  C <- abs(C) + Matrix::t(abs(C))
  dimnames(C) <- list(colnames(Ms), colnames(Ms))
  list(Ms = Ms, Mu = Mu, conn = C)
}

fut_fit <- function(d, ..., max_iter = 5, progress = FALSE) {
  recover_dynamics(d$Ms, d$Mu, var_names = "all", connectivities = d$conn, threads = 1,
                   max_iter = max_iter, progress = progress, ...)
}

test_that("multisession workers give the local result exactly; failed chunks resume", {
  d <- fut_data()
  local <- fut_fit(d)
  expect_gt(sum(!is.na(local$var$fit_alpha)), 20)
  old <- future::plan(future::multisession, workers = 2)
  withr::defer(future::plan(old))
  expect_identical(fut_fit(d, parallel = "future"), local)
  expect_identical(fut_fit(d, parallel = "future", chunk_size = 5), local) # 5 chunks

  # load_pars (a second EM from a fit) through the workers
  local2 <- fut_fit(d, load_pars = local)
  expect_identical(fut_fit(d, load_pars = local, parallel = "future", chunk_size = 9), local2)

  # progress through progressr: every gene counted once
  if (requireNamespace("progressr", quietly = TRUE)) {
    withr::local_options(progressr.enable = TRUE) # progressr's default: interactive()
    steps <- 0
    withCallingHandlers(
      fut_fit(d, parallel = "future", chunk_size = 10, progress = TRUE),
      progression = function(cond) if (identical(cond$type, "update")) steps <<- steps + cond$amount)
    expect_equal(steps, nrow(d$Ms))
  }

  # chunks 2 and 4 fail on the worker: the error names them; the others are kept
  withr::local_options(scnative.future_fail_chunks = c(2L, 4L))
  e <- tryCatch(fut_fit(d, parallel = "future", chunk_size = 5), error = function(e) e)
  expect_s3_class(e, "scnative_chunk_error")
  expect_match(conditionMessage(e), "2 of 5 gene chunks failed", fixed = TRUE)
  expect_match(conditionMessage(e), "chunk 2 of 5 (5 genes: g6, g7, g8, ..., g10): failing on purpose",
               fixed = TRUE)
  expect_match(conditionMessage(e), "chunk 4 of 5 (5 genes: g16", fixed = TRUE)
  expect_match(conditionMessage(e), "(14 of 24 genes are done", fixed = TRUE)
  expect_identical(e$failed, list(paste0("g", 6:10), paste0("g", 16:20)))
  expect_s3_class(e$partial, "scnative_dynamics_partial")
  expect_identical(e$partial$done, c(1:5, 11:15, 21:24))
  withr::local_options(scnative.future_fail_chunks = NULL)
  # resuming fits only the failed genes (a marker in a kept gene survives), locally or on workers
  expect_identical(fut_fit(d, parallel = "future", resume = e$partial), local)
  expect_identical(fut_fit(d, resume = e$partial), local)
  marked <- e$partial
  marked$pars[1, "fit_alpha"] <- 12345
  r <- fut_fit(d, parallel = "future", resume = marked)
  expect_identical(r$var["g1", "fit_alpha"], 12345 / marked$m_align[1])
  expect_identical(r$var[-1, ], local$var[-1, ])
  # a partial result of another run is refused
  expect_error(fut_fit(d, resume = e$partial, max_iter = 10), "other settings \\(the fit options")
  expect_error(fut_fit(d, resume = e$partial, t_max = 10), "other settings \\(t_max")
  d2 <- d
  d2$Ms[1, 1] <- d2$Ms[1, 1] + 1
  expect_error(fut_fit(d2, resume = e$partial), "other values of 'x' \\(Ms\\) or 'Mu'")
  expect_error(recover_dynamics(d$Ms[-1, ], d$Mu[-1, ], var_names = "all", resume = e$partial,
                                progress = FALSE), "other genes or cells")
})

test_that("cluster (PSOCK) workers load the installed package and give the local result", {
  skip_if_not_installed("parallelly")
  d <- fut_data(n_obs = 100, n_vars = 8)
  local <- fut_fit(d)
  old <- future::plan(future::cluster, workers = 2)
  withr::defer(future::plan(old))
  # the workers find scnative where this session does (e.g. a private library in R_LIBS)
  expect_identical(future::value(future::future(find.package("scnative"))),
                   find.package("scnative"))
  expect_identical(fut_fit(d, parallel = "future", chunk_size = 3), local)
})

test_that("velocity and velocity_graph on multisession workers give the local results; resume", {
  sim <- simulate_velocity(n_obs = 300, n_vars = 10, random_seed = 5)
  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 10, normalize = FALSE)
  f <- recover_dynamics(m$Ms, m$Mu, var_names = "all", threads = 1, max_iter = 5,
                        connectivities = m$connectivities, progress = FALSE)
  v <- velocity(f, m$Ms, m$Mu)
  expect_false(anyNA(v$velocity))
  vg <- function(...) velocity_graph(v, m$Ms, m$distances, velocity_genes = rep(TRUE, 10),
                                     threads = 1, progress = FALSE, ...)
  local <- vg()
  expect_gt(Matrix::nnzero(local$graph), 1000)
  # a chunk's task holds the cells its cells reach, the index renumbered among them
  nb <- scnative:::knn_indices(m$distances, 300) - 1L
  prep <- list(as.raw(1:40), as.raw(1:40), as.double(1:10), as.double(1:10))
  nb10 <- nb[, 1:10] # 10 cells whose neighbours are cells 1..10 too: a closed set
  nb10[nb10 >= 10L] <- -1L
  t1 <- scnative:::graph_chunk_task(prep, nb10, 2L, 2L, 4L)
  reach <- sort(unique(c(3:4, nb10[, 3:4][nb10[, 3:4] >= 0] + 1L,
                         {n1 <- nb10[, 3:4][nb10[, 3:4] >= 0] + 1L; nb10[, n1][nb10[, n1] >= 0] + 1L})))
  expect_identical(t1$cells, reach)
  expect_identical(t1$vnorm, as.double(reach))
  expect_identical(t1$from, match(3L, reach) - 1L)
  old <- future::plan(future::multisession, workers = 2)
  withr::defer(future::plan(old))
  expect_identical(velocity(f, m$Ms, m$Mu, parallel = "future", chunk_size = 3), v)
  expect_identical(velocity(f, m$Ms, m$Mu, connectivities = NULL, parallel = "future"),
                   velocity(f, m$Ms, m$Mu, connectivities = NULL))
  expect_identical(vg(parallel = "future"), local)
  withr::local_options(scnative.future_fail_chunks = 2L)
  ev <- tryCatch(velocity(f, m$Ms, m$Mu, parallel = "future", chunk_size = 4), error = function(e) e)
  expect_s3_class(ev, "scnative_chunk_error")
  expect_match(conditionMessage(ev), "chunk 2 of 3 (4 genes: 4, 5, 6, 7)", fixed = TRUE)
  expect_identical(ev$partial$done, c(1:4, 9:10))
  expect_identical(velocity(f, m$Ms, m$Mu, resume = ev$partial), v)
  expect_error(velocity(f, m$Ms, m$Mu, connectivities = NULL, resume = ev$partial), "connectivities")
  e <- tryCatch(vg(parallel = "future", chunk_size = 100), error = function(e) e)
  expect_s3_class(e, "scnative_chunk_error")
  expect_match(conditionMessage(e),
               "1 of 3 cell chunks failed on the future workers (200 of 300 cells are done", fixed = TRUE)
  expect_match(conditionMessage(e), "chunk 2 of 3 (100 cells: 100, 101, 102, ..., 199)", fixed = TRUE)
  withr::local_options(scnative.future_fail_chunks = NULL)
  expect_identical(vg(parallel = "future", chunk_size = 40, resume = e$partial), local)
  expect_identical(vg(resume = e$partial), local)
  expect_error(vg(resume = e$partial, n_recurse_neighbors = 1), "other data or settings \\(n_recurse")
  expect_error(velocity_graph(v, m$Ms, m$distances, velocity_genes = rep(TRUE, 10), threads = 1,
                              progress = FALSE, sqrt_transform = TRUE, resume = e$partial),
               "sqrt_transform")
})

test_that("a worker that dies: its chunk and the later ones on it fail, the others are kept", {
  old <- future::plan(future::multisession, workers = 2)
  withr::defer(future::plan(old))
  w <- function(task, shared, threads, p) {
    if (task == 2) tools::pskill(Sys.getpid(), tools::SIGKILL)
    task * 10
  }
  r <- scnative:::future_run_chunks(as.list(1:4), w, NULL, 1L, NULL, paste("chunk", 1:4))
  expect_identical(r$values[[1]], 10)
  expect_s3_class(r$errors[[2]], "FutureError")
  ok <- !vapply(r$errors, is.null, TRUE)
  expect_identical(unlist(r$values[!ok]), 10 * which(!ok))
  lines <- scnative:::describe_failed_chunks(r$errors, as.list(1:4), paste0("g", 1:4))
  expect_match(lines[1], "^chunk 2 of 4 \\(1 genes: g2\\): ")
  expect_match(scnative:::future_error_hint(r$errors), "set the plan again")
  expect_identical(scnative:::future_error_hint(list(NULL, simpleError("x"))), "")
})

test_that("argument checks", {
  d <- fut_data(n_obs = 30, n_vars = 2)
  expect_error(fut_fit(d, parallel = "cluster"), "'parallel' must be one of")
  expect_error(fut_fit(d, parallel = "future", chunk_size = 0), "'chunk_size'")
  expect_error(fut_fit(d, parallel = "future", chunk_size = 2.5), "'chunk_size'")
  expect_error(fut_fit(d, parallel = "future", resume = list()), "'resume' must be NULL")
  expect_error(recover_dynamics(d$Ms, d$Mu, var_names = "all", parallel = "future",
                                threads = 0, progress = FALSE), "'threads'")
  sim <- simulate_velocity(n_obs = 40, n_vars = 3)
  m <- moments(sim$spliced, sim$unspliced, n_neighbors = 5, normalize = FALSE)
  v <- sim$spliced * 0 + 1
  v[] <- stats::rnorm(length(v))
  expect_error(velocity_graph(v, m$Ms, m$distances, parallel = NA), "'parallel' must be one of")
  expect_error(velocity_graph(v, m$Ms, m$distances, parallel = "future", chunk_size = -1),
               "'chunk_size'")
  expect_error(velocity_graph(v, m$Ms, m$distances, resume = d), "'resume' must be NULL")
})
