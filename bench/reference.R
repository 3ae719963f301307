# Per-epoch time and peak memory of reference signatures (cell2location's RegressionModel):
# upstream (CPU), upstream with autozyme's cell2location patch, scnative, on a simulated
# reference (bench/reference_data.R), minibatches of 2500 cells as upstream's default.
# Usage: Rscript bench/reference.R [threads=1] [N=20000] [G=10000] [F=30] [reps=3]
#                                  [upstream_epochs=2] [scnative_epochs=20]
# Every side prints BENCH_SECONDS = seconds per epoch of its timed call (after a warm-up), so
# the ratios are per-epoch ratios.
source("bench/harness.R")
source("bench/reference_data.R")
dir.create("bench/results", showWarnings = FALSE)
a <- commandArgs(TRUE)
arg <- function(i, def) if (length(a) >= i) a[i] else def
th <- as.integer(arg(1, "1"))
N <- arg(2, "20000"); G <- arg(3, "10000"); F <- arg(4, "30")
reps <- as.integer(arg(5, "3"))
up_ep <- arg(6, "2")
sc_ep <- arg(7, "20")
stem <- ref_bench_data(as.integer(N), as.integer(G), as.integer(F))
py <- bench_peers_python()
env <- bench_thread_env(th)
sides <- list(
  upstream = list(cmd = py, args = c("bench/reference_upstream.py", stem, N, G, th, up_ep),
                  env = env),
  upstream_autozyme = list(cmd = py, args = c("bench/reference_upstream.py", stem, N, G, th,
                                              up_ep, "autozyme"), env = env),
  scnative = list(cmd = "Rscript", args = c("bench/reference_scnative.R", stem, N, G, th, sc_ep),
                  env = env))
bench_compare(sides, reps = reps,
              title = sprintf("reference signatures per-epoch time, %s cells x %s genes x %s cell types, batch_size 2500, %d thread(s)",
                              N, G, F, th),
              csv = sprintf("bench/results/reference_%s_%s_%s_t%d.csv", N, G, F, th))
