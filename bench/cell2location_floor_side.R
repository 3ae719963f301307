# The "floor" side of bench/cell2location.R: the float32 floor of one cell2location epoch at
# this shape (spec: the S x G pass), from the same kernels bench/cell2location_floor32.R
# reports in detail: the two GEMMs of the pass (A = W sig^T: S x F x G; dW = A sig: S x G x F)
# in float, the faster of our register-blocked sgemm over the pass's nb x gb tiles and the
# BLAS's sgemm_ at full size, plus one vectorised float log(1 + x) pass over S x G (the faster
# of from memory and over a cache-resident tile).
#   Rscript bench/cell2location_floor_side.R S G F THREADS [REPS=3]
# The kernels run on one thread (CPU seconds); at THREADS > 1 the floor is that divided by the
# thread count (perfect scaling: a lower bound no real run reaches).
a <- as.integer(commandArgs(TRUE))
S <- a[1]; G <- a[2]; F <- a[3]; threads <- a[4]
reps <- if (length(a) >= 5) a[5] else 3L
suppressMessages(library(scnative))
ns <- asNamespace("scnative")
nb <- 128L
gb <- max(16L, min(G, as.integer(262144 / (nb * F)))) # the pass's tiles (cell2location.c)
fl <- .Call(ns$C_scnative_c2l_floor, as.integer(c(S, G, F, reps, nb, gb)))
names(fl) <- c("dgemm_full", "sgemm_blas_full", "sgemm_ours_tiles", "dgemm_tiles",
               "pass_f64_mem", "pass_f32_mem", "pass_f64_tile", "pass_f32_tile")
gemm <- min(fl[c("sgemm_blas_full", "sgemm_ours_tiles")], na.rm = TRUE)
pass <- min(fl[c("pass_f32_mem", "pass_f32_tile")])
cat(sprintf("float32 floor, 1 thread: GEMMs %.1f ms + pass %.1f ms = %.1f ms; at %d thread(s) %.1f ms\n",
            1000 * gemm, 1000 * pass, 1000 * (gemm + pass), threads,
            1000 * (gemm + pass) / threads))
cat(sprintf("BENCH_SECONDS=%.6f\n", (gemm + pass) / threads))
