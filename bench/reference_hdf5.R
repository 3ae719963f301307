# reference_signatures() streaming a reference from an HDF5 file (HDF5Array) against the same
# counts in memory: time of the block-wise first pass, seconds per epoch, peak resident memory
# (VmHWM of each side's own R process).
# Usage: Rscript bench/reference_hdf5.R [cells=100000] [genes=5000] [epochs=3] [threads=1]
#                                       [format=tenx] [batch_size=2500]
# format: "tenx" (sparse HDF5, HDF5Array::TENxMatrix, column-compressed) or "dense" (a dense
# HDF5 dataset chunked by cell). The file is simulated block by block (never whole in memory):
# 10 cell types, per-type gene means from a Gamma(0.3, 0.3) x lognormal base, Poisson counts
# (the non-zero share is printed). Each side runs in a fresh R process so that its peak memory is its own.
# Measured (2 shared cores, threads 1, batch_size 2500, TENx, 17.3% non-zero):
#   20,000 x 5,000: stream 7.5 s first pass, 9.8 s/epoch, 693 MB peak; memory 0.10 s/epoch, 1493 MB
#   50,000 x 5,000: stream 18.8 s first pass, 28.8 s/epoch, 769 MB peak; memory 1.2-1.6 s/epoch
#                   (after 48 s to load), 3222 MB peak; same per_cluster_mu_fg bit for bit.
# The streaming epoch is dominated by HDF5Array's reads of each minibatch's random columns.
a <- commandArgs(TRUE)
if (length(a) >= 1 && a[1] == "--side") {
  # ---- one side: Rscript bench/reference_hdf5.R --side hdf5|memory file format epochs threads bs
  suppressMessages({library(scnative); library(HDF5Array)})
  side <- a[2]; file <- a[3]; format <- a[4]; epochs <- as.integer(a[5])
  threads <- as.integer(a[6]); bs <- as.integer(a[7])
  h <- if (format == "tenx") TENxMatrix(file, "counts") else HDF5Array(file, "counts")
  labels <- factor(readRDS(paste0(file, ".labels.rds")))
  rownames(h) <- sprintf("gene_%d", seq_len(nrow(h)))
  t0 <- proc.time()[["elapsed"]]
  x <- if (side == "memory") scnative:::delayed_as_dgc(h, "x", integer_valued = TRUE) else h
  t_load <- proc.time()[["elapsed"]] - t0
  t0 <- proc.time()[["elapsed"]]
  if (side == "hdf5") invisible(scnative:::ref_stream_pass(h, labels, TRUE))
  t_pass <- proc.time()[["elapsed"]] - t0
  fit1 <- function(e) {
    t0 <- proc.time()[["elapsed"]]
    f <- reference_signatures(x, labels, max_epochs = e, batch_size = bs, seed = 1,
                              threads = threads, progress = FALSE, keep_data = FALSE)
    list(fit = f, secs = proc.time()[["elapsed"]] - t0)
  }
  r1 <- fit1(1L)
  r2 <- fit1(1L + epochs)
  per_epoch <- (r2$secs - r1$secs) / epochs
  hwm <- grep("^VmHWM", readLines("/proc/self/status"), value = TRUE)
  hwm_mb <- as.numeric(gsub("[^0-9]", "", hwm)) / 1024
  saveRDS(r2$fit$params$per_cluster_mu_fg$loc, paste0(file, ".", side, ".rds"))
  cat(sprintf("RESULT side=%s load_s=%.2f first_pass_s=%.2f fit_1_epoch_s=%.2f per_epoch_s=%.3f peak_rss_mb=%.0f\n",
              side, t_load, t_pass, r1$secs, per_epoch, hwm_mb))
  quit(save = "no")
}

arg <- function(i, def) if (length(a) >= i) a[i] else def
N <- as.integer(arg(1, "100000")); G <- as.integer(arg(2, "5000"))
epochs <- arg(3, "3"); threads <- arg(4, "1"); format <- arg(5, "tenx"); bs <- arg(6, "2500")
suppressMessages({library(HDF5Array); library(Matrix)})
file <- tempfile(fileext = ".h5")
set.seed(1)
F <- 10L
base <- rlnorm(G, -1.5, 1)
mu <- base * matrix(rgamma(G * F, 0.3, 0.3), G, F)
labels <- sample(sprintf("type_%d", seq_len(F)), N, TRUE)
saveRDS(labels, paste0(file, ".labels.rds"))
t0 <- proc.time()[["elapsed"]]
bw <- min(N, max(1L, as.integer(2e7 %/% G))) # cells per simulated block (~20M values)
sink <- if (format == "tenx") {
  TENxRealizationSink(c(G, N), type = "integer", filepath = file, group = "counts")
} else {
  HDF5RealizationSink(c(G, N), type = "integer", filepath = file, name = "counts",
                      chunkdim = c(G, 1L))
}
grid <- DelayedArray::RegularArrayGrid(c(G, N), c(G, bw))
nnz <- 0
for (b in seq_along(grid)) {
  vp <- grid[[b]]
  cols <- IRanges::start(vp@ranges[2]):IRanges::end(vp@ranges[2])
  m <- mu[, match(labels[cols], sprintf("type_%d", seq_len(F)))]
  blk <- matrix(rpois(length(m), m), G, length(cols))
  nnz <- nnz + sum(blk > 0)
  sink <- DelayedArray::write_block(sink, vp, blk)
}
DelayedArray::close(sink)
cat(sprintf("wrote %s: %d cells x %d genes (genes x cells on disk, %s), %.1f%% non-zero, %.0f MB, %.1f s\n",
            file, N, G, format, 100 * nnz / (as.double(N) * G), file.size(file) / 2^20,
            proc.time()[["elapsed"]] - t0))
for (side in c("hdf5", "memory")) {
  out <- system2("Rscript", c("bench/reference_hdf5.R", "--side", side, file, format, epochs,
                              threads, bs), stdout = TRUE, stderr = TRUE)
  cat(grep("RESULT|Error|error", out, value = TRUE), sep = "\n")
}
same <- identical(readRDS(paste0(file, ".hdf5.rds")), readRDS(paste0(file, ".memory.rds")))
cat(sprintf("same per_cluster_mu_fg from both sides: %s\n", same))
unlink(paste0(file, c("", ".labels.rds", ".hdf5.rds", ".memory.rds")))
