# scnative side of bench/reference.R and bench/reference_agreement.R: reference_signatures()
# on the bench reference (minibatches of 2500, as upstream).
#   Rscript bench/reference_scnative.R STEM N G THREADS EPOCHS [export OUTDIR]
# Timing mode prints BENCH_SECONDS=<seconds per epoch> of the timed fit (after a 1-epoch
# warm-up fit). Export mode writes OUTDIR/means.csv and OUTDIR/history.csv.
a <- commandArgs(TRUE)
stem <- a[1]
n <- as.integer(a[2:5])
N <- n[1]; G <- n[2]; threads <- n[3]; epochs <- n[4]
suppressMessages(library(scnative))
source(file.path(dirname(sub("--file=", "", grep("--file=", commandArgs(FALSE), value = TRUE))),
                 "reference_data.R"))
d <- ref_bench_read(stem, N, G)
fit1 <- function(ep) {
  reference_signatures(d$x, d$labels, batch = d$batch, max_epochs = ep, seed = 1,
                       threads = threads, progress = FALSE)
}
if (length(a) > 5 && a[6] == "export") {
  out <- a[7]
  dir.create(out, showWarnings = FALSE, recursive = TRUE)
  t0 <- proc.time()[["elapsed"]]
  fit <- fit1(epochs)
  el <- proc.time()[["elapsed"]] - t0
  utils::write.csv(signatures(fit, num_samples = 1000, seed = 1), file.path(out, "means.csv"))
  utils::write.csv(fit$history, file.path(out, "history.csv"), row.names = FALSE)
  cat(sprintf("TRAIN_SECONDS=%.3f\n", el))
} else {
  invisible(fit1(1))
  invisible(gc())
  t0 <- proc.time()[["elapsed"]]
  fit <- fit1(epochs)
  el <- proc.time()[["elapsed"]] - t0
  cat(sprintf("scnative: %d epochs in %.3f s (last -ELBO %.6g)\n", epochs, el,
              fit$history$elbo_train[epochs]))
  cat(sprintf("BENCH_SECONDS=%.6f\n", el / epochs))
}
