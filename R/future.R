# Running the embarrassingly parallel steps (genes of recover_dynamics) as futures: each chunk
# goes to whatever future::plan() the user set (multisession, cluster, future.batchtools).
# future, progressr: Suggests only.

# 'parallel' validated; "future" also checks that the future package is there.
check_parallel <- function(parallel) {
  parallel <- check_choice(parallel, c("local", "future"), "parallel")
  if (parallel == "future" && !requireNamespace("future", quietly = TRUE)) {
    stopf("'parallel = \"future\"' needs the 'future' package (install.packages(\"future\")), then choose workers with future::plan()")
  }
  parallel
}

# Threads per .Call: with "future", each worker's (1 unless given); else the local default.
future_threads <- function(parallel, threads) {
  if (parallel != "future") return(resolve_threads(threads))
  if (is.null(threads)) return(1L)
  check_number(threads, "threads", min = 1, whole = TRUE)
  as.integer(threads)
}

# Items per chunk: given, or about 4 chunks per worker, and at most about 'max_bytes' of data
# per chunk (what each future carries to its worker).
future_chunk_size <- function(chunk_size, n_items, bytes_per_item, max_bytes = 64 * 2^20) {
  if (!is.null(chunk_size)) {
    check_number(chunk_size, "chunk_size", min = 1, whole = TRUE)
    return(as.integer(chunk_size))
  }
  w <- suppressWarnings(as.numeric(future::nbrOfWorkers()))
  if (length(w) != 1L || is.na(w) || !is.finite(w) || w < 1) w <- 32 # batch schedulers: Inf
  by_workers <- ceiling(n_items / (4 * w))
  by_bytes <- max(1, floor(max_bytes / max(bytes_per_item, 1)))
  as.integer(max(1, min(by_workers, by_bytes)))
}

# The chunks of 'n' items (positions 1..n) of at most 'size' items each.
split_chunks <- function(n, size) {
  if (n == 0L) return(list())
  starts <- seq(1L, n, by = size)
  lapply(starts, function(st) st:min(st + size - 1L, n))
}

# A progressr progressor of 'steps' steps, or NULL (no progressr, or progress turned off).
future_progressor <- function(steps, enabled, envir = parent.frame()) {
  if (!enabled || steps < 1 || !requireNamespace("progressr", quietly = TRUE)) return(NULL)
  progressr::progressor(steps = steps, envir = envir)
}

# Runs worker(task, shared, threads, p) as one future per task, under the current plan.
# Every future is created first (creation waits for a free worker), then every value is
# collected; a failing chunk does not stop the others. Returns list(values, errors): one entry
# per task, NULL where it failed / succeeded.
future_run_chunks <- function(tasks, worker, shared, threads, p, labels) {
  n <- length(tasks)
  fs <- vector("list", n)
  expr <- quote(worker(task, shared, threads, p)) # evaluated on the worker with `globals`
  for (k in seq_len(n)) {
    fs[[k]] <- tryCatch(
      future::future(expr, substitute = FALSE,
                     globals = list(worker = worker, task = tasks[[k]], shared = shared,
                                    threads = threads, p = p),
                     packages = "scnative", seed = FALSE, label = labels[k]),
      error = function(e) e)
    tasks[k] <- list(NULL) # the future holds its own copy
  }
  values <- vector("list", n)
  errors <- vector("list", n)
  for (k in seq_len(n)) {
    v <- if (inherits(fs[[k]], "error")) fs[[k]] else tryCatch(future::value(fs[[k]]), error = function(e) e)
    fs[k] <- list(NULL)
    if (inherits(v, "error")) errors[[k]] <- v else values[[k]] <- v
  }
  list(values = values, errors = errors)
}

# One line per failed chunk: which chunk, which items, the worker's message.
describe_failed_chunks <- function(errors, chunks, names, what = "genes") {
  bad <- which(!vapply(errors, is.null, TRUE))
  vapply(bad, function(k) {
    ch <- chunks[[k]]
    nm <- names[ch]
    shown <- if (length(nm) > 4) paste(c(utils::head(nm, 3), "...", utils::tail(nm, 1)), collapse = ", ")
             else paste(nm, collapse = ", ")
    sprintf("chunk %d of %d (%d %s: %s): %s", k, length(chunks), length(ch), what, shown,
            trimws(conditionMessage(errors[[k]])))
  }, "")
}

# A hint added to the error when a worker died or could not be reached (future's FutureError):
# its plan must be set again to start fresh workers before resuming.
future_error_hint <- function(errors) {
  if (!any(vapply(errors, inherits, TRUE, "FutureError"))) return("")
  paste0("\nA worker died or could not be reached (later chunks sent to it fail too): set the ",
         "plan again (e.g. future::plan(future::multisession)) to start fresh workers first.")
}

# Stops with the condition of a run whose chunks failed on the workers (class
# scnative_chunk_error): `partial` (what resume = takes), `failed` (the names of each failed
# chunk's items) and the workers' `errors`. `fun`: the function; `unit`: "genes" or "cells";
# `items`: the names of the chunks' items (chunks index them); `n_done` of `n_total` kept.
stop_chunk_error <- function(fun, unit, run, chunks, items, n_done, n_total, partial) {
  failed <- !vapply(run$errors, is.null, TRUE)
  lines <- describe_failed_chunks(run$errors, chunks, items, what = unit)
  msg <- sprintf(paste0("%s: %d of %d %s chunks failed on the future workers ",
                        "(%d of %d %s are done and kept):\n%s\n",
                        "Rerun the same call with 'resume = e$partial' (e: this error, e.g. from ",
                        "tryCatch()) to compute only the %s of the failed chunks.%s"),
                 fun, sum(failed), length(chunks), sub("s$", "", unit), n_done, n_total, unit,
                 paste0("  ", lines, collapse = "\n"), unit, future_error_hint(run$errors))
  stop(structure(class = c("scnative_chunk_error", "error", "condition"),
                 list(message = msg, call = NULL, partial = partial,
                      failed = lapply(chunks[failed], function(ch) items[ch]),
                      errors = run$errors[failed])))
}
