# Run by test-interrupt.R in a fresh Rscript: `n` times per fit, a background shell sends this
# process SIGINT (what Ctrl-C sends) while the fit runs; records what the call returned, the
# native model states alive and the resident memory before and after, and whether the next
# (uninterrupted) call works.
# Arguments: n, the output .rds path.
args <- commandArgs(trailingOnly = TRUE)
n <- as.integer(args[[1]])
out <- args[[2]]
suppressPackageStartupMessages(library(scnative))
set_scnative_threads(2)

rss_kb <- function() {
  invisible(gc(full = TRUE))
  s <- readLines("/proc/self/status")
  as.numeric(gsub("\\D", "", grep("^VmRSS", s, value = TRUE)))
}
live_states <- function() {
  invisible(gc(full = TRUE)) # collected fits free their states (finalizers)
  .Call(scnative:::C_scnative_svi_live_states)
}
pid <- Sys.getpid()

# One interrupted call: the signal comes `delay` seconds after the call starts; the fits run
# far longer than that, so the signal always lands inside the call. Returns what came back:
# "fit" (a fit flagged interrupted, with a warning), "error: <message>" or "interrupt" (the
# condition itself).
interrupted_call <- function(f, delay) {
  system(sprintf("(sleep %.2f; kill -INT %d) >/dev/null 2>&1 &", delay, pid))
  warned <- FALSE
  r <- tryCatch(withCallingHandlers(f(), warning = function(w) {
    if (grepl("interrupted", conditionMessage(w))) warned <<- TRUE
    invokeRestart("muffleWarning")
  }), interrupt = function(e) "interrupt", error = function(e) paste("error:", conditionMessage(e)))
  if (is.character(r)) return(r)
  if (isTRUE(r$interrupted) && warned) "fit" else "finished"
}

set.seed(3)
sp <- simulate_spatial(n_spots = 300, n_genes = 400, n_cell_types = 8, seed = 3)
lab <- factor(rep(LETTERS[1:8], each = 40))
rx <- matrix(stats::rpois(400 * 320, sp$signatures[, as.integer(lab)] / 20), 400, 320,
             dimnames = list(rownames(sp$signatures), paste0("c", 1:320)))
sim <- simulate_velocity(n_obs = 300, n_vars = 3000, random_seed = 3)
m <- moments(sim$spliced, sim$unspliced, n_neighbors = 15, threads = 2)

fits <- list(
  cell2location = function(epochs) cell2location(sp$counts, sp$signatures, max_epochs = epochs,
                                                 seed = 1, progress = FALSE),
  reference_signatures = function(epochs) reference_signatures(rx, lab, max_epochs = epochs,
                                                               batch_size = NULL, seed = 1,
                                                               progress = FALSE),
  recover_dynamics = function(epochs) recover_dynamics(m$Ms, m$Mu, var_names = "all",
                                                       max_iter = if (epochs > 10) 10 else 1,
                                                       progress = FALSE)
)
res <- list()
for (nm in names(fits)) {
  f <- fits[[nm]]
  call_n <- function(k) vapply(seq_len(k), function(i) {
    suppressMessages(interrupted_call(function() f(1e6), 0.25 + 0.01 * (i %% 5)))
  }, "")
  # warm up (code and data loaded; the allocator's arenas reach their working size), then
  # measure
  invisible(suppressMessages(suppressWarnings(f(5))))
  invisible(call_n(5))
  rss0 <- rss_kb()
  live0 <- live_states()
  t0 <- proc.time()[["elapsed"]]
  got <- call_n(n)
  secs <- proc.time()[["elapsed"]] - t0
  rss1 <- rss_kb()
  live1 <- live_states()
  nxt <- tryCatch({
    r <- suppressMessages(suppressWarnings(f(5)))
    if (is.null(r$interrupted) || !isTRUE(r$interrupted)) "ok" else "interrupted"
  }, error = function(e) conditionMessage(e))
  res[[nm]] <- list(got = got, rss0 = rss0, rss1 = rss1, live0 = live0, live1 = live1,
                    seconds = secs, next_call = nxt)
}
saveRDS(res, out)
