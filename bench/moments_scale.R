# bench/moments_scale.R: moments() on a large simulated sparse data set (issue 14, atlas
# scale): wall time of each step, the peak resident memory (VmHWM of /proc/self/status) before
# and after, and the recall of the approximate neighbour search against the exact neighbours
# of a random sample of cells.
#
#   Rscript bench/moments_scale.R [cells = 50000] [genes = 1000] [threads = 2] [sample = 2000]
#
# The counts are Poisson along three branches of a trajectory, made sparse in blocks of cells
# (no cells x genes dense matrix is ever held). moments() runs with its defaults (30
# neighbours, 30 PCs, method = "auto": NN-descent from 8,192 cells on). The recall is measured
# on the PCA scores moments() uses (recomputed here with the same internal steps: per-cell
# normalisation, the sparse PCA, float32 rounding); the exact neighbours of `sample` cells are
# found by brute force against all cells.
#
# Measured 2026-12-01 (2 cores shared with other jobs, load ~5; 2 threads; 50,000 cells x
# 1,000 genes, 17.5% non-zero):
#   this branch : moments() 27.1 s (CPU 19.4 s), peak RSS 1,704 MiB (844 before the call;
#                 Ms + Mu are 763 MiB); sparse PCA CPU 4.7 s, NN-descent CPU 7.6 s, recall
#                 0.995 on 2,000 cells; the exact search would take ~56 s CPU (extrapolated).
#   before      : (commit 1039df2: dense PCA, exact kNN, sparse products) 150.6 s (CPU
#                 71.8 s), peak RSS 3,732 MiB.
source("bench/harness.R")
suppressMessages({
  library(scnative)
  library(Matrix)
})
a <- commandArgs(TRUE)
arg <- function(i, default) if (length(a) >= i) as.integer(a[i]) else as.integer(default)
n <- arg(1, 50000)
g <- arg(2, 1000)
threads <- arg(3, 2)
n_sample <- min(arg(4, 2000), n)

vm_hwm <- function() {
  l <- grep("^VmHWM", readLines("/proc/self/status"), value = TRUE)
  as.numeric(gsub("[^0-9]", "", l)) / 1024  # MiB
}
# elapsed seconds, and CPU seconds (user + system, all threads; the machine is shared, so
# the elapsed time depends on the load)
timed <- function(expr) {
  t0 <- proc.time()
  v <- expr
  d <- proc.time() - t0
  list(value = v, seconds = d[["elapsed"]], cpu = d[["user.self"]] + d[["sys.self"]])
}

set.seed(1)
base <- 0.3 * stats::runif(g, 0.05, 1)
slope <- stats::rnorm(g)
brw <- stats::rnorm(g, sd = 0.7)
block <- function(m) {
  t <- stats::runif(m)
  br <- sample(3L, m, TRUE)
  rate <- base * exp(outer(slope, t) + outer(brw, br - 2))
  list(S = methods::as(matrix(stats::rpois(g * m, rate), g, m), "CsparseMatrix"),
       U = methods::as(matrix(stats::rpois(g * m, 0.5 * rate), g, m), "CsparseMatrix"))
}
b <- bench_blocks(n, block)
S <- b$S
U <- b$U
rm(b)
dimnames(S) <- dimnames(U) <- list(paste0("g", seq_len(g)), paste0("c", seq_len(n)))
invisible(gc())
cat(sprintf("cells %d, genes %d, threads %d; spliced non-zeros %.1f%% (%.0f MiB as dgCMatrix)\n",
            n, g, threads, 100 * length(S@x) / (as.double(n) * g),
            as.numeric(utils::object.size(S)) / 2^20))
hwm0 <- vm_hwm()

m <- timed(moments(S, U, threads = threads))
hwm1 <- vm_hwm()
cat(sprintf("moments(): %.1f s (CPU %.1f s); peak RSS %.0f MiB (%.0f MiB before the call); Ms + Mu %.0f MiB\n",
            m$seconds, m$cpu, hwm1, hwm0, 2 * 8 * as.double(n) * g / 2^20))
m <- m$value

# the scores moments() searched (same steps as moments.default)
ns <- asNamespace("scnative")
X <- ns$normalise_cells(S)
pc <- timed(ns$as_f32(ns$pca_scores(X, 30L)))
cat(sprintf("sparse PCA alone: %.1f s (CPU %.1f s)\n", pc$seconds, pc$cpu))
rep_ <- pc$value
ap <- timed(ns$knn_graph(rep_, 30L, "approx", 0, threads))
cat(sprintf("NN-descent alone: %.1f s (CPU %.1f s)\n", ap$seconds, ap$cpu))
nb <- ap$value[[1L]]
# moments() used the same neighbours
dm <- m$distances
same <- all(vapply(c(1L, n %/% 2L, n), function(i) {
  setequal(which(dm[i, ] > 0), nb[i, -1L])
}, logical(1)))
cat("moments() graph = NN-descent neighbours:", same, "\n")

set.seed(2)
cells <- sort(sample(n, n_sample))
ex <- timed(.Call(ns$C_scnative_velocity_knn_query, rep_, rep_[cells, , drop = FALSE], 30L,
                  as.integer(threads)))
hits <- vapply(seq_along(cells), function(r) {
  sum(nb[cells[r], -1L] %in% setdiff(ex$value[[1L]][r, ], cells[r]))
}, numeric(1))
cat(sprintf("recall vs exact on %d cells: %.4f (exact search of the sample: CPU %.1f s; %.0f s CPU for all cells, extrapolated)\n",
            n_sample, sum(hits) / (29 * n_sample), ex$cpu, ex$cpu * n / n_sample))
cat(sprintf("peak RSS at the end %.0f MiB\n", vm_hwm()))
