# One side of bench/dynamics.R: scnative::recover_dynamics on an h5ad's Ms/Mu/connectivities.
# Args: file.h5ad threads [n_genes (0 = all)] [dtype = float32|float64]
# With SCNATIVE_LIBM_COUNT = the path of bench/libm_count.c built as a shared library (and the
# same path in LD_PRELOAD), the measured call's exp()/log() calls are counted and printed as
# LIBM_COUNTS=<exp calls>,<distinct exp args>,<log calls>,<distinct log args>,<all kept>.
a <- commandArgs(TRUE)
file <- a[1]
threads <- as.integer(a[2])
n_genes <- if (length(a) >= 3) as.integer(a[3]) else 0L
dtype <- if (length(a) >= 4) a[4] else "float32"
suppressMessages({
  library(scnative)
  library(Matrix)
})
h <- hdf5r::H5File$new(file, mode = "r")
Ms <- h[["layers/Ms"]]$read() # cells x genes in the file = genes x cells here
Mu <- h[["layers/Mu"]]$read()
storage.mode(Ms) <- "double"
storage.mode(Mu) <- "double"
cg <- h[["obsp/connectivities"]]
x <- cg[["data"]]$read()
j <- cg[["indices"]]$read()
p <- cg[["indptr"]]$read()
n <- ncol(Ms)
# CSR of C read as CSC of t(C)
conn <- Matrix::t(new("dgCMatrix", i = as.integer(j), p = as.integer(p), x = as.double(x),
                      Dim = c(n, n)))
genes <- h[["var/_index"]]$read()
cells <- h[["obs/_index"]]$read()
h$close_all()
dimnames(Ms) <- dimnames(Mu) <- list(genes, cells)
if (n_genes > 0) {
  Ms <- Ms[seq_len(n_genes), ]
  Mu <- Mu[seq_len(n_genes), ]
}
run <- function() {
  recover_dynamics(Ms, Mu, var_names = "all", connectivities = conn, threads = threads,
                   dtype = dtype, progress = FALSE)
}
invisible(recover_dynamics(Ms[1:4, ], Mu[1:4, ], var_names = "all", connectivities = conn,
                           threads = threads, progress = FALSE)) # warm-up
counter <- Sys.getenv("SCNATIVE_LIBM_COUNT")
if (nzchar(counter)) {
  dyn.load(counter)
  if (!.C("scn_libm_start", 2^28, ok = 0L)$ok) stop("libm counter could not start")
}
t0 <- proc.time()[["elapsed"]]
fit <- run()
el <- proc.time()[["elapsed"]] - t0
if (nzchar(counter)) {
  cat(sprintf("LIBM_COUNTS=%s\n", paste(.C("scn_libm_stop", out = double(5))$out, collapse = ",")))
}
cat(sprintf("fitted %d genes x %d cells\n", sum(!is.na(fit$var$fit_alpha)), n))
cat(sprintf("BENCH_SECONDS=%.6f\n", el))
