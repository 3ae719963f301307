# One side of bench/velocity_chain.R: scnative's velocity chain on an h5ad of counts:
# moments() -> recover_dynamics(var_names = "all") -> velocity() -> velocity_graph().
# Args: file.h5ad threads. Prints the seconds of each step and BENCH_SECONDS (the whole chain,
# reading the file excluded).
a <- commandArgs(TRUE)
threads <- as.integer(a[2])
suppressMessages({
  library(scnative)
  library(Matrix)
})
d <- read_h5ad(a[1], layers = c("spliced", "unspliced"), X = FALSE, obsm = FALSE, obsp = FALSE,
               uns = FALSE)
S <- d$layers$spliced
U <- d$layers$unspliced
rm(d)
invisible(gc())
step <- function(name, expr) {
  t0 <- proc.time()[["elapsed"]]
  v <- expr
  cat(sprintf("STEP %s %.3f\n", name, proc.time()[["elapsed"]] - t0))
  v
}
t0 <- proc.time()[["elapsed"]]
m <- step("moments", moments(S, U, threads = threads))
fit <- step("recover_dynamics", recover_dynamics(m$Ms, m$Mu, var_names = "all",
                                                 connectivities = m$connectivities,
                                                 threads = threads, progress = FALSE))
v <- step("velocity", velocity(fit, m$Ms, m$Mu, progress = FALSE))
g <- step("velocity_graph", velocity_graph(v, m$Ms, m$distances, threads = threads,
                                           progress = FALSE))
cat(sprintf("BENCH_SECONDS=%.6f\n", proc.time()[["elapsed"]] - t0))
cat(sprintf("fitted genes %d, velocity genes %d, graph pairs %d\n",
            sum(!is.na(fit$var$fit_alpha)), sum(v$var$velocity_genes),
            length(g$graph@x) + length(g$graph_neg@x)))
