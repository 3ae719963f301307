# The velocity graph and what the stream plot needs, side by side: upstream scVelo
# (tl.velocity_graph + tl.velocity_embedding + compute_velocity_on_grid) and scnative
# (velocity_graph + velocity_embedding + velocity_grid), at 1 and 2 threads, on scVelo's
# simulation at pancreas size (3,696 cells x 2,000 genes; bench/velocity_graph_data.py).
# Usage: Rscript bench/velocity_graph.R [reps = 2] [datadir = /tmp/scnative-bench] [threads = 1,2]
source("bench/harness.R")
a <- commandArgs(TRUE)
reps <- if (length(a) >= 1) as.integer(a[1]) else 2L
dir <- if (length(a) >= 2) a[2] else "/tmp/scnative-bench"
thread_counts <- if (length(a) >= 3) as.integer(strsplit(a[3], ",")[[1]]) else c(1L, 2L)
dir.create(dir, showWarnings = FALSE, recursive = TRUE)
py <- bench_peers_python()
f <- file.path(dir, "vgraph_sim_3696x2000.h5ad")
if (!file.exists(f)) stopifnot(system2(py, c("bench/velocity_graph_data.py", f)) == 0)
for (th in thread_counts) {
  env <- bench_thread_env(th)
  sides <- list(
    upstream = list(cmd = py, args = c("bench/velocity_graph_upstream.py", f, th), env = env),
    scnative = list(cmd = "Rscript", args = c("bench/velocity_graph_scnative.R", f, th), env = env))
  bench_compare(sides, reps = reps,
                title = sprintf("velocity graph + embedding + stream grid, simulated 3696 x 2000, %d thread(s)", th),
                csv = file.path("bench", "results", sprintf("velocity_graph_%dt.csv", th)))
}
