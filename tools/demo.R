# scnative demo (`make demo`): both models on bundled real data. Prints a short summary and
# writes plots to the folder given as the first argument (default build/demo).
args <- commandArgs(TRUE)
out <- if (length(args)) args[1] else file.path("build", "demo")
dir.create(out, recursive = TRUE, showWarnings = FALSE)
suppressPackageStartupMessages(library(scnative))
has_gg <- requireNamespace("ggplot2", quietly = TRUE)
save_plot <- function(p, file, width = 7, height = 5) {
  f <- file.path(out, file)
  if (inherits(p, "ggplot")) {
    ggplot2::ggsave(f, p, width = width, height = height, dpi = 100)
  }
  cat("  plot:", f, "\n")
}
cat(sprintf("scnative %s, %d thread(s)\n\n", utils::packageVersion("scnative"), scnative_threads()))

# 1. RNA velocity: pancreas endocrinogenesis, 150 genes x 739 cells (VeloViz data, GPL-3)
cat("== RNA velocity (scVelo's dynamical model) ==\n")
d <- readRDS(system.file("extdata", "pancreas_velocity.rds", package = "scnative"))
m <- moments(d$spliced, d$unspliced)
t0 <- proc.time()[["elapsed"]]
fit <- recover_dynamics(m$Ms, m$Mu, connectivities = m$connectivities, progress = FALSE)
el <- proc.time()[["elapsed"]] - t0
ok <- !is.na(fit$var$fit_alpha)
cat(sprintf("recover_dynamics: %d of %d genes fitted in %.2f s\n", sum(ok), nrow(fit$var), el))
top <- rownames(fit$var)[ok][order(-fit$var$fit_likelihood[ok])][1:5]
print(round(fit$var[top, c("fit_alpha", "fit_beta", "fit_gamma", "fit_t_", "fit_likelihood")], 3))
v <- velocity(fit, m$Ms, m$Mu)
cat(sprintf("velocity: %d velocity genes\n", sum(v$var$velocity_genes, na.rm = TRUE)))
if (has_gg) {
  save_plot(plot_phase_portrait(fit, top[1], m$Ms, m$Mu, color = d$clusters), "phase_portrait.png")
  save_plot(plot_dynamics_params(fit), "dynamics_params.png")
}
# downstream of velocity: the velocity graph, its projection on an embedding (here the first
# two PCs of the log moments), the stream plot, latent time rooted at the ductal progenitors
t0 <- proc.time()[["elapsed"]]
vg <- velocity_graph(v, m$Ms, m$distances, progress = FALSE)
emb <- prcomp(t(log1p(m$Ms)))$x[, 1:2]
ve <- velocity_embedding(vg, emb)
lt <- latent_time(fit, as.numeric(d$clusters == "Ductal"))
cat(sprintf("velocity graph, embedding, latent time: %.2f s\n", proc.time()[["elapsed"]] - t0))
print(vg)
cat("median latent time per cluster:\n")
print(round(tapply(lt, d$clusters, stats::median), 2))
if (has_gg) {
  save_plot(plot_velocity_embedding(emb, ve, color = d$clusters), "velocity_stream.png")
  save_plot(plot_velocity_embedding(emb, ve, color = lt), "latent_time.png")
}

# 2. cell2location: mouse hippocampus, Visium (313 spots) and a reference of 17 types (GPL-3)
cat("\n== cell2location spatial mapping ==\n")
h <- example_hippocampus()
t0 <- proc.time()[["elapsed"]]
ref_fit <- reference_signatures(h$reference$counts, h$reference$cell_types, seed = 1,
                                progress = FALSE)
el <- proc.time()[["elapsed"]] - t0
cat(sprintf("reference_signatures: %d cells x %d genes x %d types, %d epochs in %.1f s\n",
            ref_fit$settings$n_cells, ref_fit$settings$n_genes,
            length(ref_fit$settings$cell_types), nrow(ref_fit$history), el))
sig <- signatures(ref_fit, num_samples = 200, seed = 1)
t0 <- proc.time()[["elapsed"]]
fit2 <- cell2location(h$visium$counts, sig, N_cells_per_location = 8, detection_alpha = 20,
                      max_epochs = 3000, seed = 1, progress = FALSE)
el <- proc.time()[["elapsed"]] - t0
cat(sprintf("cell2location: %d spots x %d genes x %d cell types, 3000 epochs in %.1f s (%.2f ms/epoch)\n",
            fit2$settings$n_spots, fit2$settings$n_genes, fit2$settings$n_types, el, 1000 * el / 3000))
post <- export_posterior(fit2, num_samples = 200, seed = 1)
ab <- cell_abundance(post, "means")
tot <- sort(colSums(ab), decreasing = TRUE)
cat("estimated cells per type, summed over spots (top 6):\n")
print(round(tot[1:6], 1))
if (has_gg) {
  save_plot(plot_spatial_abundance(ab, h$visium$coords, cell_types = names(tot)[1:6]),
            "spatial_abundance.png", width = 9, height = 6)
}
grDevices::png(file.path(out, "elbo_history.png"), width = 700, height = 450)
print(plot_history(fit2, iter_start = 100))
invisible(grDevices::dev.off())
cat("  plot:", file.path(out, "elbo_history.png"), "\n")
cat("\ndemo done\n")
