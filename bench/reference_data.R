# Simulated single-cell reference for the reference-signature benchmarks: F cell types with
# Gamma signatures (markers per type), E batches with their own detection, per-cell library
# sizes, negative-binomial counts; stored once as raw binary CSC (genes x cells) so that the R
# and Python sides read the very same numbers.
#   Rscript bench/reference_data.R N G F [E=2]   -> prints the file stem
ref_bench_data <- function(N, G, F, E = 2L, dir = file.path(tempdir(), "..", "scnative-bench"),
                           seed = 1) {
  dir.create(dir, showWarnings = FALSE, recursive = TRUE)
  stem <- file.path(normalizePath(dir), sprintf("ref_%d_%d_%d_%d", N, G, F, E))
  if (!file.exists(paste0(stem, ".x.bin"))) {
    set.seed(seed)
    base <- stats::rlnorm(G, -1.2, 1.2)                        # gene-level expression
    sig <- base * matrix(stats::rgamma(G * F, 0.5, 0.5), G, F)  # per-type factors, mean 1
    sig <- sweep(sig, 2, colSums(sig), "/") * 2500               # ~2500 UMI per cell
    labels <- sample.int(F, N, replace = TRUE, prob = stats::rgamma(F, 2, 1))
    batch <- sample.int(E, N, replace = TRUE)
    y_e <- stats::rgamma(E, 20, 20)
    lib <- stats::rgamma(N, 4, 4) * y_e[batch]
    p <- integer(N + 1L)
    ii <- vector("list", N)
    xx <- vector("list", N)
    for (c in seq_len(N)) {
      v <- stats::rnbinom(G, mu = sig[, labels[c]] * lib[c] + 0.005, size = 4)
      nz <- which(v > 0)
      ii[[c]] <- nz - 1L
      xx[[c]] <- v[nz]
      p[c + 1L] <- p[c] + length(nz)
    }
    writeBin(as.integer(p), paste0(stem, ".p.bin"), size = 4)
    writeBin(as.integer(unlist(ii)), paste0(stem, ".i.bin"), size = 4)
    writeBin(as.integer(unlist(xx)), paste0(stem, ".x.bin"), size = 4)
    writeLines(sprintf("ct%02d", labels), paste0(stem, ".labels.txt"))
    writeLines(sprintf("b%d", batch), paste0(stem, ".batch.txt"))
  }
  stem
}

ref_bench_read <- function(stem, N, G) {
  p <- readBin(paste0(stem, ".p.bin"), "integer", N + 1L, size = 4)
  nnz <- p[N + 1L]
  x <- Matrix::sparseMatrix(i = readBin(paste0(stem, ".i.bin"), "integer", nnz, size = 4), p = p,
                            x = as.double(readBin(paste0(stem, ".x.bin"), "integer", nnz, size = 4)),
                            dims = c(G, N), index1 = FALSE,
                            dimnames = list(paste0("g", seq_len(G)), paste0("c", seq_len(N))))
  list(x = x, labels = readLines(paste0(stem, ".labels.txt")),
       batch = readLines(paste0(stem, ".batch.txt")))
}

if (sys.nframe() == 0L) {
  a <- as.integer(commandArgs(TRUE))
  cat(ref_bench_data(a[1], a[2], a[3], if (length(a) > 3) a[4] else 2L), "\n")
}
