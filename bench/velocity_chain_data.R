# Simulated counts for bench/velocity_chain.R: CELLS cells x GENES genes of spliced and
# unspliced counts drawn from the dynamical model (induction then repression, each gene with its
# own rates and switching time, cells at random times along it), Poisson noise, written as an
# h5ad with sparse layers (built in blocks of cells: no cells x genes dense matrix of all cells
# is held).   Rscript bench/velocity_chain_data.R OUT.h5ad CELLS GENES
source("bench/harness.R")
suppressMessages({
  library(scnative)
  library(Matrix)
})
a <- commandArgs(TRUE)
out <- a[1]
n <- as.integer(a[2])
g <- as.integer(a[3])
ns <- asNamespace("scnative")
set.seed(1)
alpha <- exp(stats::rnorm(g, log(2), 0.5))
beta <- exp(stats::rnorm(g, log(1), 0.3))
gamma <- exp(stats::rnorm(g, log(0.3), 0.4))
t_sw <- stats::runif(g, 3, 8)
scale <- exp(stats::rnorm(g, log(0.5), 0.8))   # expression level: sparse counts
u_sw <- ns$ode_u(t_sw, 0, alpha, beta)
s_sw <- ns$ode_s(t_sw, 0, 0, alpha, beta, gamma)
block <- function(m) {
  t <- stats::runif(m, 0, 12)
  tt <- outer(rep(1, g), t)                       # genes x cells
  on <- tt < t_sw
  tau_on <- pmin(tt, t_sw)
  tau_off <- pmax(tt - t_sw, 0)
  u <- ifelse(on, ns$ode_u(tau_on, 0, alpha, beta), ns$ode_u(tau_off, u_sw, 0, beta))
  s <- ifelse(on, ns$ode_s(tau_on, 0, 0, alpha, beta, gamma),
              ns$ode_s(tau_off, s_sw, u_sw, 0, beta, gamma))
  # plus a small basal level (5% of the steady state), so no cell is all zeros (scVelo's kNN
  # refuses a graph with cells at distance 0 from all their neighbours)
  list(S = methods::as(matrix(stats::rpois(g * m, scale * (s + 0.05 * alpha / gamma)), g, m),
                       "CsparseMatrix"),
       U = methods::as(matrix(stats::rpois(g * m, scale * (u + 0.05 * alpha / beta)), g, m),
                       "CsparseMatrix"))
}
b <- bench_blocks(n, block)
S <- b$S
U <- b$U
rm(b)
dimnames(S) <- dimnames(U) <- list(paste0("g", seq_len(g)), paste0("c", seq_len(n)))
write_h5ad(out, X = S, layers = list(spliced = S, unspliced = U), overwrite = TRUE)
cat(sprintf("wrote %s: %d cells x %d genes, spliced non-zeros %.1f%%, unspliced %.1f%%\n", out, n,
            g, 100 * length(S@x) / (as.double(n) * g), 100 * length(U@x) / (as.double(n) * g)))
