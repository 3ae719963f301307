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

# Sparse bench data at Visium HD scale (spec: cell2location, Minibatch regime; issue: atlas
# scale): the same generative process as c2l_bench_data(), but with a detection efficiency
# y_s of mean `y_mean` (0.002: about 160 counts per bin over 10,000 genes, 1.5% non-zero, the
# depth of an 8 um Visium HD bin) and written as CSC arrays of the genes x spots matrix
# (STEM.p.bin int32 column pointers, STEM.i.bin int32 0-based gene indices, STEM.v.bin int32
# counts), generated `chunk` spots at a time so that nothing S x G dense ever exists.
c2l_bench_data_sparse <- function(S, G, F, y_mean = 0.002, dir = file.path(tempdir(), "..",
                                  "scnative-bench"), seed = 1, chunk = 2000L) {
  dir.create(dir, showWarnings = FALSE, recursive = TRUE)
  stem <- file.path(normalizePath(dir), sprintf("c2lsp_%d_%d_%d_%g", S, G, F, y_mean))
  if (!file.exists(paste0(stem, ".p.bin"))) {
    set.seed(seed)
    sig <- matrix(stats::rgamma(G * F, 0.5, 0.5), G, F)
    m_g <- stats::rgamma(G, 2, 2)
    sm <- sig * m_g
    fi <- file(paste0(stem, ".i.bin.tmp"), "wb")
    fv <- file(paste0(stem, ".v.bin.tmp"), "wb")
    p <- numeric(S + 1)
    nnz <- 0
    for (s0 in seq(1L, S, by = chunk)) {
      n <- min(chunk, S - s0 + 1L)
      w <- matrix(stats::rgamma(n * F, 0.5, 0.5 / (8 / F * 2)), n, F) *
        (matrix(stats::runif(n * F), n, F) < 0.5)
      y_s <- stats::rgamma(n, 20, 20 / y_mean)
      mu <- (sm %*% t(w) + 0.01) * rep(y_s, each = G)
      x <- matrix(stats::rnbinom(G * n, mu = mu, size = 5), G, n)
      nz <- which(x != 0)
      writeBin(as.integer((nz - 1) %% G), fi, size = 4)
      writeBin(as.integer(x[nz]), fv, size = 4)
      p[s0 + seq_len(n)] <- nnz + cumsum(colSums(x != 0))
      nnz <- nnz + length(nz)
    }
    close(fi)
    close(fv)
    writeBin(as.vector(sig), paste0(stem, ".sig.bin"))
    file.rename(paste0(stem, ".i.bin.tmp"), paste0(stem, ".i.bin"))
    file.rename(paste0(stem, ".v.bin.tmp"), paste0(stem, ".v.bin"))
    writeBin(as.integer(p), paste0(stem, ".p.bin"), size = 4) # last: marks the set complete
  }
  stem
}

# c2l_bench_data_sparse()'s counts as a genes x spots dgCMatrix and the signatures
c2l_bench_read_sparse <- function(stem, S, G, F) {
  p <- readBin(paste0(stem, ".p.bin"), "integer", S + 1, size = 4)
  nnz <- p[S + 1]
  x <- methods::new("dgCMatrix", p = p, Dim = c(as.integer(G), as.integer(S)),
                    i = readBin(paste0(stem, ".i.bin"), "integer", nnz, size = 4),
                    x = as.double(readBin(paste0(stem, ".v.bin"), "integer", nnz, size = 4)),
                    Dimnames = list(paste0("g", seq_len(G)), paste0("s", seq_len(S))))
  sig <- matrix(readBin(paste0(stem, ".sig.bin"), "double", G * F), G, F,
                dimnames = list(paste0("g", seq_len(G)), paste0("ct", seq_len(F))))
  list(x = x, sig = sig)
}

if (sys.nframe() == 0L) {
  a <- as.integer(commandArgs(TRUE))
  cat(c2l_bench_data(a[1], a[2], a[3]), "\n")
}
