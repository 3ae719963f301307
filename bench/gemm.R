# Proves the harness on one real kernel: the two GEMMs of a cell2location epoch
# (S x F times F x G, and S x G times G x F) through scnative's BLAS wrapper vs numpy and torch.
# Usage: Rscript bench/gemm.R [threads=1] [S=4000] [G=10000] [F=34]
source("bench/harness.R")
a <- commandArgs(TRUE)
th <- if (length(a) >= 1) as.integer(a[1]) else 1L
dims <- if (length(a) >= 4) a[2:4] else c("4000", "10000", "34")
reps <- "5"
py <- bench_peers_python()
env <- bench_thread_env(th)
sides <- list(
  scnative = list(cmd = "Rscript", args = c("bench/gemm_scnative.R", dims, reps), env = env),
  numpy_f64 = list(cmd = py, args = c("bench/gemm_torch.py", dims, reps, "numpy"), env = env),
  torch_f32 = list(cmd = py, args = c("bench/gemm_torch.py", dims, reps, "torch"), env = env))
bench_compare(sides, reps = 3, title = sprintf("GEMM pair %s x %s x %s, %d thread(s)",
                                                dims[1], dims[2], dims[3], th),
              csv = sprintf("bench/results/gemm_t%d.csv", th))
