# One side of bench/velocity_graph.R: scnative's velocity_graph(), velocity_embedding() and the
# stream grid (velocity_grid(adjust_for_stream = TRUE)) on an h5ad from
# bench/velocity_graph_data.py.
# Args: file.h5ad threads
a <- commandArgs(TRUE)
threads <- as.integer(a[2])
suppressMessages({
  library(scnative)
  library(Matrix)
})
d <- read_h5ad(a[1])
Ms <- d$layers$Ms
V <- d$layers$velocity
vgenes <- as.logical(d$var$velocity_genes)
D <- d$obsp$distances
E <- d$obsm$X_pc2
run <- function(cells) {
  g <- velocity_graph(V[, cells], Ms[, cells], D[cells, cells], velocity_genes = vgenes,
                      threads = threads, progress = FALSE)
  ve <- velocity_embedding(g, E[cells, ])
  velocity_grid(E[cells, ], ve, adjust_for_stream = TRUE, threads = threads)
  g
}
invisible(run(1:200)) # warm-up
n <- ncol(Ms)
t0 <- proc.time()[["elapsed"]]
g <- run(seq_len(n))
cat(sprintf("BENCH_SECONDS=%.6f\n", proc.time()[["elapsed"]] - t0))
cat("pairs", length(g$graph@x) + length(g$graph_neg@x), "\n")
