# Per-epoch CPU seconds and peak memory of cell2location's minibatch regime (batch_size spots
# per step, spec: cell2location, Minibatch regime): upstream's Cell2location.train(batch_size =)
# on the CPU against scnative's cell2location(batch_size =), side by side at the same thread
# count, on simulated data from the model's generative process (bench/cell2location_data.R).
# Usage: Rscript bench/cell2location_minibatch.R [threads=1] [S=20000] [G=2000] [F=20]
#                                                [batch_size=2500] [reps=1] [upstream_epochs=2]
#                                                [scnative_epochs=3] [data=dense]
#                                                [upstream_steps=0]
# data = "sparse": Visium HD-like sparse counts (c2l_bench_data_sparse(): 1.5% non-zero, no
# S x G dense matrix anywhere on our side); upstream_steps = N > 0: upstream times N steps and
# reports N steps' time scaled to a whole epoch (for sizes where its epoch takes many minutes).
# Measured 2026-12-02 (Intel Xeon, 2 cores, nothing else running), 1 thread, CPU s per epoch:
#   Rscript bench/cell2location_minibatch.R 1 200000 10000 30 2500 1 1 1 sparse 10
#   200,000 spots x 10,000 genes x 30 types, 31.5M non-zeros, batch_size 2,500 (80 steps):
#   upstream 314.6 s (10 steps scaled), peak RSS 3675 MB; scnative 28.1 s (one whole epoch),
#   peak RSS 3526 MB (this process: loading included): 11.2x. Before the lean minibatch state
#   the same run peaked at 4381 MB.
# Each side is its own process (bench/harness.R): data load, a one-epoch warm-up, then the
# timed epochs; BENCH_SECONDS = CPU seconds per epoch (SCNATIVE_BENCH_CPU=1 unless set to 0:
# the bench machine is shared), so the ratio is a per-epoch CPU-time ratio.
source("bench/harness.R")
source("bench/cell2location_data.R")
dir.create("bench/results", showWarnings = FALSE)
a <- commandArgs(TRUE)
arg <- function(i, def) if (length(a) >= i) a[i] else def
th <- as.integer(arg(1, "1"))
dims <- c(arg(2, "20000"), arg(3, "2000"), arg(4, "20"))
bs <- arg(5, "2500")
reps <- as.integer(arg(6, "1"))
up_ep <- arg(7, "2")
sc_ep <- arg(8, "3")
if (!nzchar(Sys.getenv("SCNATIVE_BENCH_CPU"))) Sys.setenv(SCNATIVE_BENCH_CPU = "1")
data <- arg(9, "dense")
up_steps <- as.integer(arg(10, "0"))
stem <- if (data == "sparse") {
  c2l_bench_data_sparse(as.integer(dims[1]), as.integer(dims[2]), as.integer(dims[3]))
} else {
  c2l_bench_data(as.integer(dims[1]), as.integer(dims[2]), as.integer(dims[3]))
}
py <- bench_peers_python()
env <- c(bench_thread_env(th), SCNATIVE_BENCH_CPU = Sys.getenv("SCNATIVE_BENCH_CPU"))
sides <- list(
  upstream = list(cmd = py, args = c("bench/cell2location_upstream.py", stem, dims, th, up_ep,
                                     paste0("batch_size=", bs),
                                     if (up_steps > 0) paste0("steps=", up_steps)), env = env),
  scnative = list(cmd = "Rscript", args = c("bench/cell2location_scnative.R", stem, dims, th,
                                            sc_ep, bs), env = env))
cpu <- Sys.getenv("SCNATIVE_BENCH_CPU") == "1"
bench_compare(sides, reps = reps,
              title = sprintf("cell2location minibatch (batch_size %s) per-epoch %s, %s spots x %s genes x %s cell types (%s counts%s), %d thread(s)",
                              bs, if (cpu) "CPU time" else "time", dims[1], dims[2], dims[3],
                              data, if (up_steps > 0) sprintf("; upstream: %d steps scaled to an epoch", up_steps) else "", th),
              csv = sprintf("bench/results/cell2location_minibatch_%s_%s_%s_b%s_t%d%s.csv",
                            dims[1], dims[2], dims[3], bs, th,
                            if (data == "sparse") "_sparse" else ""))
