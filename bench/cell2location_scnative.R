# scnative side of bench/cell2location.R: per-epoch time of cell2location() on the bench data.
#   Rscript bench/cell2location_scnative.R STEM S G F THREADS EPOCHS [BATCH_SIZE]
# Prints BENCH_SECONDS=<seconds per epoch> of the timed fit (after a warm-up fit), with the
# same settings as the upstream side (N_cells_per_location = 8, detection_alpha = 20);
# BATCH_SIZE: minibatch training (bench/cell2location_minibatch.R), a one-epoch warm-up.
a <- commandArgs(TRUE)
stem <- a[1]
n <- as.integer(a[-1])
S <- n[1]; G <- n[2]; F <- n[3]; threads <- n[4]; epochs <- n[5]
bs <- if (length(n) >= 6) n[6] else NULL
suppressMessages(library(scnative))
source(file.path(dirname(sub("--file=", "", grep("--file=", commandArgs(FALSE), value = TRUE))),
                 "cell2location_data.R"))
sparse <- startsWith(basename(stem), "c2lsp_") # c2l_bench_data_sparse()'s CSC files
d <- if (sparse) c2l_bench_read_sparse(stem, S, G, F) else c2l_bench_read(stem, S, G, F)
x <- if (sparse) d$x else Matrix::Matrix(d$x, sparse = TRUE)
sig <- d$sig
rm(d)
invisible(gc())
fit <- suppressMessages(cell2location(x, sig, N_cells_per_location = 8, detection_alpha = 20,
                                      max_epochs = if (is.null(bs)) 3 else 1, seed = 1,
                                      threads = threads, progress = FALSE, batch_size = bs))
rm(fit)
invisible(gc())
t0 <- proc.time()
fit <- suppressMessages(cell2location(x, sig, N_cells_per_location = 8, detection_alpha = 20,
                                      max_epochs = epochs, seed = 1, threads = threads,
                                      progress = FALSE, batch_size = bs))
d <- proc.time() - t0
el <- d[["elapsed"]]
cpu <- d[["user.self"]] + d[["sys.self"]]
cat(sprintf("scnative: %d epochs in %.3f s elapsed, %.3f s CPU (last -ELBO %.6g)\n", epochs, el,
            cpu, fit$history$elbo_train[epochs]))
# SCNATIVE_BENCH_CPU=1: CPU seconds (for 1 thread on a loaded machine), else elapsed
cat(sprintf("BENCH_SECONDS=%.6f\n", (if (Sys.getenv("SCNATIVE_BENCH_CPU") == "1") cpu else el) / epochs))
