# Agreement of reference signatures with upstream's RegressionModel run on the same simulated
# reference with the same epochs (different random streams): per cell type Pearson correlation
# of the posterior means of per_cluster_mu_fg, and the final losses.
# Usage: Rscript bench/reference_agreement.R [N=20000] [G=10000] [F=30] [epochs=100] [threads=2]
source("bench/reference_data.R")
a <- commandArgs(TRUE)
arg <- function(i, def) if (length(a) >= i) a[i] else def
N <- arg(1, "20000"); G <- arg(2, "10000"); F <- arg(3, "30"); ep <- arg(4, "100")
th <- arg(5, "2")
stem <- ref_bench_data(as.integer(N), as.integer(G), as.integer(F))
out <- file.path(dirname(stem), sprintf("agree_%s_%s_%s_%s", N, G, F, ep))
py <- Sys.getenv("SCNATIVE_PEERS_PYTHON", "/root/.cache/scnative/peers/bin/python")
env <- c(sprintf("OMP_NUM_THREADS=%s", th), sprintf("R_SCNATIVE_NUM_THREADS=%s", th))
run <- function(cmd, args) {
  o <- system2(cmd, args, stdout = TRUE, stderr = FALSE, env = env)
  as.numeric(sub("TRAIN_SECONDS=", "", grep("^TRAIN_SECONDS=", o, value = TRUE)))
}
s_up <- run(py, c("bench/reference_upstream.py", stem, N, G, th, ep, "export", file.path(out, "upstream")))
s_sc <- run("Rscript", c("bench/reference_scnative.R", stem, N, G, th, ep, "export", file.path(out, "scnative")))
up <- as.matrix(utils::read.csv(file.path(out, "upstream", "means.csv"), row.names = 1, check.names = FALSE))
sc <- as.matrix(utils::read.csv(file.path(out, "scnative", "means.csv"), row.names = 1, check.names = FALSE))
sc <- sc[rownames(up), colnames(up)]
r <- vapply(colnames(up), function(ct) stats::cor(sc[, ct], up[, ct]), 0)
hu <- utils::read.csv(file.path(out, "upstream", "history.csv"))
hs <- utils::read.csv(file.path(out, "scnative", "history.csv"))
cat(sprintf("reference agreement, %s cells x %s genes x %s types, %s epochs, %s threads\n", N, G, F, ep, th))
cat(sprintf("per-type Pearson r of signature means: min %.5f, median %.5f (%d types >= 0.99 of %d)\n",
            min(r), stats::median(r), sum(r >= 0.99), length(r)))
cat(sprintf("final -ELBO (mean of last 5 epochs): upstream %.6g, scnative %.6g\n",
            mean(utils::tail(hu$elbo_train, 5)), mean(utils::tail(hs$elbo_train, 5))))
cat(sprintf("train seconds: upstream %.1f, scnative %.1f (ratio %.1fx)\n", s_up, s_sc, s_up / s_sc))
