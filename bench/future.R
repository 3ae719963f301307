# recover_dynamics() locally (OpenMP threads) against parallel = "future" under
# plan(multisession): elapsed seconds and identical() results, on the bundled pancreas data
# (150 genes x 739 cells, moments over 30 neighbours). identical() ignores settings$threads.
# Usage: Rscript bench/future.R [workers=2] [reps=3]
library(scnative)
a <- commandArgs(TRUE)
workers <- as.integer(if (length(a) >= 1) a[1] else "2")
reps <- as.integer(if (length(a) >= 2) a[2] else "3")
pan <- readRDS(system.file("extdata", "pancreas_velocity.rds", package = "scnative"))
m <- moments(pan$spliced, pan$unspliced)
fit <- function(...) recover_dynamics(m$Ms, m$Mu, var_names = "all", connectivities = m$connectivities,
                                      progress = FALSE, ...)
best <- function(f) { r <- NULL; t <- Inf
  for (i in seq_len(reps)) { t <- min(t, system.time(r <- f())[["elapsed"]]) }
  list(t = t, r = r) }
l1 <- best(function() fit(threads = 1))
lw <- best(function() fit(threads = workers))
future::plan(future::multisession, workers = workers)
invisible(future::value(future::future(library(scnative)))) # workers started and loaded
fw <- best(function() fit(threads = 1, parallel = "future"))
future::plan(future::sequential)
same <- function(a, b) { a$settings$threads <- b$settings$threads <- NULL; identical(a, b) }
cat(sprintf("genes %d cells %d\n", nrow(m$Ms), ncol(m$Ms)))
cat(sprintf("local 1 thread      %.2f s\n", l1$t))
cat(sprintf("local %d threads     %.2f s  identical to 1 thread: %s\n", workers, lw$t, same(lw$r, l1$r)))
cat(sprintf("future multisession %d workers x 1 thread %.2f s  identical to local: %s\n",
            workers, fw$t, same(fw$r, l1$r)))
