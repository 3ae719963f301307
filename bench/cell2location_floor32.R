# Floor of one cell2location epoch in float32 and in double, and scnative's epoch against it.
#   Rscript bench/cell2location_floor32.R S G F EPOCHS [ROUNDS]
# Run it at 1 thread (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1; the floor's kernels run on the
# calling thread). The floor is the two GEMMs of the S x G pass (A = W sig^T: S x F times F x G;
# dW = A sig: S x G times G x F) plus one vectorised elementwise pass (log(1 + x)) over S x G:
#   double: R's BLAS dgemm (full size, and over the pass's nb x gb tiles) + a double pass;
#   single: our register-blocked sgemm over the tiles (and, where the BLAS exports sgemm_, the
#           BLAS's at full size) + a float pass.
# The elementwise pass is timed from memory (one S x G array) and over one cache-resident tile
# (the pass's own pattern); the floor uses the faster. scnative's epoch is timed on the training
# loop alone (state built once, not timed), for precision = "double" and "single".
# OpenBLAS on the dev VM detects the CPU as "Prescott" (SSE3 kernels): OPENBLAS_CORETYPE=SkylakeX
# on the command line shows what a correctly detected OpenBLAS does (the package sets nothing). All times
# are CPU seconds (of the one thread), so that a shared machine's load does not count. On a
# shared VM the same kernel's time still moves by 10-25% from minute to minute, so the floor and
# both epochs are measured ROUNDS times (default 3), interleaved (floor, double epochs, single
# epochs, floor, ...), and each takes its fastest round.
a <- as.integer(commandArgs(TRUE))
S <- a[1]; G <- a[2]; F <- a[3]; epochs <- a[4]
rounds <- if (length(a) > 4) a[5] else 3L
suppressMessages(library(scnative))
ns <- asNamespace("scnative")
src <- dirname(sub("--file=", "", grep("--file=", commandArgs(FALSE), value = TRUE)))
source(file.path(src, "cell2location_data.R"))
nb <- 128L
gb <- max(16L, min(G, as.integer(262144 / (nb * F)))) # the pass's tiles (cell2location.c)
floor_kernels <- function() {
  fl <- .Call(ns$C_scnative_c2l_floor, as.integer(c(S, G, F, 1L, nb, gb)))
  names(fl) <- c("dgemm_full", "sgemm_blas_full", "sgemm_ours_tiles", "dgemm_tiles",
                 "pass_f64_mem", "pass_f32_mem", "pass_f64_tile", "pass_f32_tile")
  fl
}

d <- c2l_bench_load(S, G, F)
x <- d$x
sig <- d$sig
rm(d)
prep <- ns$c2l_prepare(x, sig, NULL, 8, TRUE, 20, 7, 7, 50L, FALSE, 1,
                       list(mean = 1, mean_var_ratio = 1, alpha_mean = 3), 1,
                       list(alpha = 9, beta = 3), list(alpha = 9, beta = 3),
                       list(alpha = 1, beta = 100), list(mean_alpha = 10), 5, quiet = TRUE)
rm(x)
invisible(gc())
st <- prep$settings
params <- ns$c2l_init_params(st)
loc <- ns$c2l_flatten(lapply(params, `[[`, "loc"), st)
rho <- ns$c2l_flatten(lapply(params, `[[`, "rho"), st)
make_state <- function(precision) {
  state <- ns$c2l_make_state(prep, precision = precision)
  .Call(ns$C_scnative_c2l_set_params, state, loc, rho)
  .Call(ns$C_scnative_c2l_train, state, 1L, 0, 0.002, 0L, 10, 1, 1, 1L) # warm-up
  state
}
per_epoch <- function(state) {
  t0 <- proc.time()
  loss <- .Call(ns$C_scnative_c2l_train, state, as.integer(epochs), 1, 0.002, 0L, 10, 1, 1, 1L)
  d <- proc.time() - t0
  list(sec = (d[["user.self"]] + d[["sys.self"]]) / epochs, loss = loss)
}
sd <- make_state("double")
ss <- make_state("single")
fls <- list(); eds <- list(); ess <- list()
for (r in seq_len(rounds)) {
  fls[[r]] <- floor_kernels()
  eds[[r]] <- per_epoch(sd)
  ess[[r]] <- per_epoch(ss)
}
fl <- do.call(pmin, fls)
floor_d <- min(fl[c("dgemm_full", "dgemm_tiles")]) + min(fl[c("pass_f64_mem", "pass_f64_tile")])
floor_s <- min(fl[c("sgemm_blas_full", "sgemm_ours_tiles")], na.rm = TRUE) +
  min(fl[c("pass_f32_mem", "pass_f32_tile")])
cat(sprintf("shape S %d x G %d x F %d, tiles %d x %d; fastest of %d rounds\n", S, G, F, nb, gb,
            rounds))
cat(sprintf("  %-17s %8.1f ms\n", names(fl), 1000 * fl), sep = "")
cat(sprintf("floor: double %.1f ms, single %.1f ms\n", 1000 * floor_d, 1000 * floor_s))
cat(sprintf("rounds (ms/epoch): double %s; single %s\n",
            paste(sprintf("%.1f", 1000 * sapply(eds, `[[`, "sec")), collapse = " "),
            paste(sprintf("%.1f", 1000 * sapply(ess, `[[`, "sec")), collapse = " ")))
ed <- eds[[which.min(sapply(eds, `[[`, "sec"))]]
es <- ess[[which.min(sapply(ess, `[[`, "sec"))]]
ed$loss <- eds[[rounds]]$loss
es$loss <- ess[[rounds]]$loss
cat(sprintf("scnative epoch (1 thread, %d epochs): double %.1f ms = %.2f x its floor; single %.1f ms = %.2f x its floor; double / single %.2f\n",
            epochs, 1000 * ed$sec, ed$sec / floor_d, 1000 * es$sec, es$sec / floor_s,
            ed$sec / es$sec))
cat(sprintf("loss of the last epoch: double %.8g single %.8g (relative %.2g)\n",
            ed$loss[epochs], es$loss[epochs], es$loss[epochs] / ed$loss[epochs] - 1))
