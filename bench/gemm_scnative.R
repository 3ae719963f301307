# One side of bench/gemm.R: the two GEMM shapes of a cell2location epoch through scnative's
# BLAS wrapper (R's BLAS). Args: S G F reps.
a <- as.numeric(commandArgs(TRUE)); S <- a[1]; G <- a[2]; F <- a[3]; reps <- a[4]
suppressMessages(library(scnative))
set.seed(1)
W <- matrix(runif(S * F), S, F); Gs <- matrix(runif(F * G), F, G); Rm <- matrix(runif(S * G), S, G)
gemm <- scnative:::gemm
# results go into buffers allocated once, as the model kernels do
A <- gemm(W, Gs); D <- gemm(Rm, Gs, transB = TRUE)  # warm-up
t0 <- proc.time()[["elapsed"]]
for (i in seq_len(reps)) { gemm(W, Gs, out = A); gemm(Rm, Gs, transB = TRUE, out = D) }
cat(sprintf("BENCH_SECONDS=%.6f\n", (proc.time()[["elapsed"]] - t0) / reps))
