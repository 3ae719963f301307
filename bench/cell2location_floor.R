# Floor for one cell2location epoch: the two GEMMs of the S x G pass through R's BLAS
# (A = W %*% t(sig): S x F times F x G, and dW = B %*% sig: S x G times G x F) plus one
# vectorised elementwise pass over S x G in R (log(A + 1)).
#   Rscript bench/cell2location_floor.R S G F REPS
n <- as.integer(commandArgs(TRUE))
S <- n[1]; G <- n[2]; F <- n[3]; reps <- n[4]
set.seed(1)
W <- matrix(runif(S * F), S, F)
sig <- matrix(runif(G * F), G, F)
one <- function() {
  A <- W %*% t(sig)
  B <- log(A + 1)
  dW <- B %*% sig
  invisible(dW)
}
one()
t0 <- proc.time()
for (i in seq_len(reps)) one()
d <- proc.time() - t0
el <- d[["elapsed"]]
cpu <- d[["user.self"]] + d[["sys.self"]]
cat(sprintf("floor: %d reps in %.3f s elapsed, %.3f s CPU\n", reps, el, cpu))
# SCNATIVE_BENCH_CPU=1: CPU seconds (for 1 thread on a loaded machine), else elapsed
cat(sprintf("BENCH_SECONDS=%.6f\n", (if (Sys.getenv("SCNATIVE_BENCH_CPU") == "1") cpu else el) / reps))
