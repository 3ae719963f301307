# Simulated cell2location bench data from the model's own generative process (Gamma
# signatures, sparse cell abundances, gene detection, NB counts), cached as raw binary files so
# that the R and Python sides read the very same numbers.
#   Rscript bench/cell2location_data.R S G F   -> prints the file stem
c2l_bench_data <- function(S, G, F, dir = file.path(tempdir(), "..", "scnative-bench"), seed = 1) {
  dir.create(dir, showWarnings = FALSE, recursive = TRUE)
  stem <- file.path(normalizePath(dir), sprintf("c2l_%d_%d_%d", S, G, F))
  if (!file.exists(paste0(stem, ".x.bin"))) {
    set.seed(seed)
    sig <- matrix(stats::rgamma(G * F, 0.5, 0.5), G, F)
    w <- matrix(stats::rgamma(S * F, 0.5, 0.5 / (8 / F * 2)), S, F) *
      (matrix(stats::runif(S * F), S, F) < 0.5)
    m_g <- stats::rgamma(G, 2, 2)
    y_s <- stats::rgamma(S, 20, 20 / 0.05)
    mu <- (sig * m_g) %*% t(w) + 0.01 # G x S
    mu <- mu * rep(y_s, each = G)
    x <- matrix(stats::rnbinom(G * S, mu = mu, size = 5), G, S)
    storage.mode(x) <- "integer"
    writeBin(as.vector(x), paste0(stem, ".x.bin"), size = 4)
    writeBin(as.vector(sig), paste0(stem, ".sig.bin"))
  }
  stem
}

c2l_bench_read <- function(stem, S, G, F) {
  x <- matrix(readBin(paste0(stem, ".x.bin"), "integer", G * S, size = 4), G, S,
              dimnames = list(paste0("g", seq_len(G)), paste0("s", seq_len(S))))
  sig <- matrix(readBin(paste0(stem, ".sig.bin"), "double", G * F), G, F,
                dimnames = list(paste0("g", seq_len(G)), paste0("ct", seq_len(F))))
  list(x = x, sig = sig)
}

# the counts as a sparse genes x spots dgCMatrix and the signatures, ready for cell2location()
c2l_bench_load <- function(S, G, F) {
  d <- c2l_bench_read(c2l_bench_data(S, G, F), S, G, F)
  x <- Matrix::Matrix(d$x, sparse = TRUE)
  sig <- d$sig
  rm(d)
  invisible(gc())
  list(x = x, sig = sig)
}

if (sys.nframe() == 0L) {
  a <- as.integer(commandArgs(TRUE))
  cat(c2l_bench_data(a[1], a[2], a[3]), "\n")
}
