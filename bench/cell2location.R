# Per-epoch time and peak memory of cell2location's spatial model: upstream (CPU), upstream
# with autozyme's cell2location patch, scnative, and the float32 floor (the two GEMMs of the
# S x G pass in float plus one vectorised float pass over S x G, bench/cell2location_floor_side.R;
# at THREADS > 1 its one-thread time divided by THREADS), on simulated data from the model's
# own generative process (bench/cell2location_data.R). Ends with scnative's epoch as a multiple
# of the floor.
# Usage: Rscript bench/cell2location.R [threads=1] [S=4000] [G=10000] [F=34] [reps=3]
#                                      [upstream_epochs=5] [scnative_epochs=30]
# Every side prints BENCH_SECONDS = seconds per epoch of its timed call (after a warm-up), so
# the ratios are per-epoch ratios. Environment: SCNATIVE_BENCH_CPU=1 times CPU seconds instead
# of elapsed ones (meaningful at 1 thread; for a machine loaded by other work);
# SCNATIVE_BENCH_BEFORE_LIB=<R library> adds a side "scnative_before" running the scnative
# installed there (a before/after comparison under the same conditions).
# Measured 2026-12-02 (Intel Xeon, 2 cores, nothing else running; 1 thread CPU s, 2 threads
# elapsed; per-epoch medians of 2 reps; RSS peak MB):
#   4,000 x 10,000 x 34, 1 thread: upstream 7.23 s (3633 MB), + autozyme 2.77, scnative 0.166
#     (927 MB before / 827 MB after the no-reorder change): 43.5x; training loop alone 133 ms =
#     2.25 x the float32 floor of 59 ms (bench/cell2location_floor32.R)
#   4,000 x 10,000 x 34, 2 threads: upstream 3.41 s (3621), + autozyme 1.43, scnative 0.101 (811):
#     33.8x; floor/2 31.6 ms (3.2x)
#   10,000 x 10,000 x 50, 1 thread: upstream 18.7 s (8144), + autozyme 7.29, scnative 0.457
#     (1791): 40.9x; 2 threads: upstream 12.1 s (8132), + autozyme 4.42, scnative 0.290 (1792):
#     41.7x, 3.0 x floor/2
# Measured 2026-12-02 (AMD EPYC Zen 5, 2 cores, quiet; 1 thread CPU s, 2 reps, after the fused
# guide sites, the float32 guide and the AVX-512 Philox):
#   4,000 x 10,000 x 34, 1 thread: upstream 5.44 s (3618 MB), + autozyme 2.34, scnative 0.0919
#     (782 MB): 59.2x; training loop alone 88.9 ms = 2.01 x the float32 floor of 44.3 ms
# Small panels (issue 18): bench/cell2location_small_panels.md.
source("bench/harness.R")
source("bench/cell2location_data.R")
dir.create("bench/results", showWarnings = FALSE)
a <- commandArgs(TRUE)
arg <- function(i, def) if (length(a) >= i) a[i] else def
th <- as.integer(arg(1, "1"))
dims <- c(arg(2, "4000"), arg(3, "10000"), arg(4, "34"))
reps <- as.integer(arg(5, "3"))
up_ep <- arg(6, "5")
sc_ep <- arg(7, "30")
stem <- c2l_bench_data(as.integer(dims[1]), as.integer(dims[2]), as.integer(dims[3]))
py <- bench_peers_python()
env <- bench_thread_env(th)
sides <- list(
  upstream = list(cmd = py, args = c("bench/cell2location_upstream.py", stem, dims, th, up_ep),
                  env = env),
  upstream_autozyme = list(cmd = py, args = c("bench/cell2location_upstream.py", stem, dims, th,
                                              up_ep, "autozyme"), env = env),
  scnative = list(cmd = "Rscript", args = c("bench/cell2location_scnative.R", stem, dims, th,
                                            sc_ep), env = env),
  floor = list(cmd = "Rscript", args = c("bench/cell2location_floor_side.R", dims, th), env = env))
before <- Sys.getenv("SCNATIVE_BENCH_BEFORE_LIB")
if (nzchar(before)) {
  sides$scnative_before <- sides$scnative
  sides$scnative_before$env <- c(env, R_LIBS = before)
}
cpu <- Sys.getenv("SCNATIVE_BENCH_CPU") == "1"
res <- bench_compare(sides, reps = reps,
              title = sprintf("cell2location per-epoch %s, %s spots x %s genes x %s cell types, %d thread(s)",
                              if (cpu) "CPU time" else "time", dims[1], dims[2], dims[3], th),
              csv = sprintf("bench/results/cell2location_%s_%s_%s_t%d.csv", dims[1], dims[2],
                            dims[3], th))
tab <- res$table
cat(sprintf("\nscnative per epoch = %.2f x the float32 floor\n",
            tab$median_s[tab$side == "scnative"] / tab$median_s[tab$side == "floor"]))
