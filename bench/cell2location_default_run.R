# Wall time of a default-settings cell2location() run (30,000 epochs, precision "single"),
# extrapolated from a run of EPOCHS epochs at THREADS threads on the simulated bench data
# (bench/cell2location_data.R), with and without early stopping.
#   Rscript bench/cell2location_default_run.R [S=4000] [G=10000] [F=34] [threads=2] [epochs=1000]
#                                             [early=0]
# early = 1: a whole default run with early_stop = TRUE (up to 30,000 epochs), timed to the end.
# Prints the measured seconds per epoch (setup included in the total, reported apart), the
# extrapolation to 30,000 epochs, the machine's load, and peak RSS of this process.
# Measured 2026-12-02 (Intel Xeon, 2 cores, nothing else running), 4,000 x 10,000 x 34,
# 2 threads: early = 1 stopped after 5,055 of 30,000 epochs (83.2% saved), wall 5.3 min (CPU
# 10.5 min); without early stopping 30,000 x 0.101 s/epoch (bench/cell2location.R, 30-epoch
# calls) = 50.5 min, extrapolated.
source("bench/cell2location_data.R")
a <- as.integer(commandArgs(TRUE))
arg <- function(i, def) if (length(a) >= i && !is.na(a[i])) a[i] else def
S <- arg(1, 4000L); G <- arg(2, 10000L); F <- arg(3, 34L); th <- arg(4, 2L); ep <- arg(5, 1000L)
early <- arg(6, 0L) == 1L
suppressMessages(library(scnative))
d <- c2l_bench_load(S, G, F)
x <- d$x
sig <- d$sig
rm(d)
load0 <- readLines("/proc/loadavg")
if (early) {
  t <- system.time(fit <- suppressMessages(
    cell2location(x, sig, N_cells_per_location = 8, detection_alpha = 20, max_epochs = 30000,
                  seed = 1, threads = th, progress = FALSE, early_stop = TRUE)))
  n <- length(fit$history$elbo_train)
  cat(sprintf("cell2location default run with early_stop = TRUE, %d x %d x %d, %d threads\n", S, G,
              F, th))
  cat(sprintf("  stopped after %d of 30,000 epochs (%.1f%% saved); wall %.1f min, CPU %.1f min\n",
              n, 100 * (1 - n / 30000), t[["elapsed"]] / 60,
              (t[["user.self"]] + t[["sys.self"]]) / 60))
  cat(sprintf("  load before: %s; after: %s\n", load0, readLines("/proc/loadavg")))
  quit(save = "no")
}
one_epoch <- function() suppressMessages(
  cell2location(x, sig, N_cells_per_location = 8, detection_alpha = 20, max_epochs = 1, seed = 1,
                threads = th, progress = FALSE))
invisible(one_epoch()) # warm-up (lazy loading, first allocations): not part of the setup time
t_setup <- system.time(fit0 <- suppressMessages(
  cell2location(x, sig, N_cells_per_location = 8, detection_alpha = 20, max_epochs = 1, seed = 1,
                threads = th, progress = FALSE)))[["elapsed"]]
t <- system.time(fit <- suppressMessages(
  cell2location(x, sig, N_cells_per_location = 8, detection_alpha = 20, max_epochs = ep, seed = 1,
                threads = th, progress = FALSE)))
per <- (t[["elapsed"]] - t_setup) / (ep - 1)
cat(sprintf("cell2location default run, %d x %d x %d, %d threads, %d epochs measured\n", S, G, F,
            th, ep))
cat(sprintf("  wall %.1f s (setup + first epoch %.2f s), %.4f s/epoch, CPU %.1f s\n",
            t[["elapsed"]], t_setup, per, t[["user.self"]] + t[["sys.self"]]))
cat(sprintf("  30,000 epochs (upstream's default), extrapolated: %.1f min\n",
            (t_setup + 29999 * per) / 60))
cat(sprintf("  load before: %s; after: %s\n", load0, readLines("/proc/loadavg")))
st <- readLines("/proc/self/status")
cat(sprintf("  peak RSS of this R process: %s\n", sub("^VmHWM:\\s*", "", grep("^VmHWM", st, value = TRUE))))
