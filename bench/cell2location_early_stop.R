# Early stopping of cell2location() against a full-length run on simulated data with a known
# truth (simulate_spatial(), the design of the ground-truth tests in test-spatial.R): the same
# data, seed and learning rate (upstream's 0.002), once with `early_stop = TRUE` (the
# defaults) and once for all `max_epochs`. Reports the epochs saved, the Pearson correlation of
# the two fits' abundances (posterior means of w_sf), and the accuracy of each against the
# truth with the metrics of the ground-truth tests (Pearson over all spots x types, AUPRC of
# presence).
#   Rscript bench/cell2location_early_stop.R [S=1500] [G=400] [F=12] [max_epochs=30000]
#     [threads=1] [seed=1]
# Measured (Rscript bench/cell2location_early_stop.R 1500 400 12 30000 1 1, on a loaded
# 2-core machine, so the seconds are not a speed measure):
#   early stop: converged at epoch 13015 of 30000 (56.6% of the epochs saved), 553.6 s vs 795.0 s
#   -ELBO (mean of 200 epochs) at the stop vs at the end of the full run: 0.00171 relative
#   abundance Pearson r(early stop, full run) = 0.9960
#   truth: Pearson r 0.9827 (early stop) vs 0.9865 (full), difference -0.0038
#   truth: AUPRC 0.9974 (early stop) vs 0.9989 (full), difference -0.0015
# At a Visium section's size (Rscript bench/cell2location_early_stop.R 4000 10000 34 30000 2 1,
# 2026-12-02, AMD EPYC, 2 threads, sharing the machine with a CI run, so the seconds are not a
# speed measure):
#   early stop: converged at epoch 8773 of 30000 (70.8% of the epochs saved), 600.0 s vs 2810.4 s
#   -ELBO (mean of 200 epochs) at the stop vs at the end of the full run: 0.00237 relative
#   abundance Pearson r(early stop, full run) = 0.9847
#   truth: Pearson r 0.9686 (early stop) vs 0.9741 (full), difference -0.0055
#   truth: AUPRC 0.9752 (early stop) vs 0.9854 (full), difference -0.0102
# Again after the float32 pass's AVX-512 rewrite (same command, 2026-12-02, AMD EPYC Zen 4,
# 2 threads, sharing the machine with test runs, seconds not a speed measure):
#   early stop: converged at epoch 9281 of 30000 (69.1% of the epochs saved), 1351.3 s vs 2207.8 s
#   -ELBO (mean of 200 epochs) at the stop vs at the end of the full run: 0.00181 relative
#   abundance Pearson r(early stop, full run) = 0.9779
#   truth: Pearson r 0.9725 (early stop) vs 0.9729 (full), difference -0.0005
#   truth: AUPRC 0.9753 (early stop) vs 0.9831 (full), difference -0.0078
# Checkpoints of the first (1500-spot) trajectory (truth r / r with the 20000-epoch fit): epoch 3000 0.956 /
# 0.977, 7000 0.967 / 0.987, 11000 0.978 / 0.995, 13000 0.983 / 0.998, 20000 0.987.
suppressPackageStartupMessages(library(scnative))
a <- commandArgs(TRUE)
arg <- function(i, def) if (length(a) >= i) as.numeric(a[i]) else def
S <- arg(1, 1500); G <- arg(2, 400); F <- arg(3, 12); max_epochs <- arg(4, 30000)
threads <- arg(5, 1); seed <- arg(6, 1)

sim <- simulate_spatial(n_spots = S, n_genes = G, n_cell_types = F, seed = seed)
fit_one <- function(early_stop) {
  t0 <- proc.time()[["elapsed"]]
  fit <- suppressMessages(cell2location(sim$counts, sim$signatures, N_cells_per_location = 8,
                                        max_epochs = max_epochs, seed = seed, threads = threads,
                                        progress = FALSE, early_stop = early_stop))
  secs <- proc.time()[["elapsed"]] - t0
  post <- export_posterior(fit, num_samples = 200, seed = seed)
  list(fit = fit, means = cell_abundance(post, "means"), seconds = secs)
}
es <- fit_one(TRUE)
full <- fit_one(FALSE)
k <- es$fit$early_stop$epochs
truth <- sim$abundance
acc <- function(m) c(r = scnative:::pearson_all(truth, m), auprc = scnative:::auprc(truth > 0, m))
a_es <- acc(es$means)
a_full <- acc(full$means)
h <- full$fit$history$elbo_train
rel_gap <- (mean(h[k - 199:0]) - mean(h[length(h) - 199:0])) / abs(mean(h[length(h) - 199:0]))
cat(sprintf("data: %d spots x %d genes x %d cell types, lr 0.002, seed %d, threads %d\n", S, G, F,
            seed, threads))
cat(sprintf("early stop: %s at epoch %d of %d (%.1f%% of the epochs saved), %.1f s vs %.1f s\n",
            es$fit$early_stop$reason, k, max_epochs, 100 * (1 - k / max_epochs), es$seconds,
            full$seconds))
cat(sprintf("-ELBO (mean of 200 epochs) at the stop vs at the end of the full run: %.3g relative\n",
            rel_gap))
cat(sprintf("abundance Pearson r(early stop, full run) = %.4f\n",
            scnative:::pearson_all(es$means, full$means)))
cat(sprintf("truth: Pearson r %.4f (early stop) vs %.4f (full), difference %+.4f\n", a_es[["r"]],
            a_full[["r"]], a_es[["r"]] - a_full[["r"]]))
cat(sprintf("truth: AUPRC %.4f (early stop) vs %.4f (full), difference %+.4f\n", a_es[["auprc"]],
            a_full[["auprc"]], a_es[["auprc"]] - a_full[["auprc"]]))
