# Issue 6: end-to-end Python-side timing of the unchanged calls scv.tl.recover_dynamics and
# Cell2location.train: upstream, upstream + autozyme, upstream + scvelo-rs (scVelo only), and
# patched by scnative from R (bench/patch_scnative.R), same data and threads.
# Usage: Rscript bench/patch.R [threads = 1] [reps = 1] [n_genes = 100] [datadir = /tmp/scnative-bench]
source("bench/harness.R")
a <- commandArgs(TRUE)
th <- if (length(a) >= 1) as.integer(a[1]) else 1L
reps <- if (length(a) >= 2) as.integer(a[2]) else 1L
ng <- if (length(a) >= 3) as.integer(a[3]) else 100L
dir <- if (length(a) >= 4) a[4] else "/tmp/scnative-bench"
dir.create(dir, showWarnings = FALSE, recursive = TRUE)
py <- bench_peers_python()
env <- bench_thread_env(th)
vv <- file.path(dir, "veloviz739.h5ad")
if (!file.exists(vv)) {
  rda <- file.path("..", "shared", "data", "velocity", "veloviz_pancreas739.rda")
  stopifnot(system2("Rscript", c("bench/dynamics_data_veloviz.R", rda, vv)) == 0)
}
side_py <- function(v) list(cmd = py, args = c("bench/dynamics_upstream.py", vv, v, th, ng, ng), env = env)
bench_compare(list(upstream = side_py("upstream"), upstream_autozyme = side_py("autozyme"),
                   upstream_scvelo_rs = side_py("scvelo_rs"),
                   scnative_patch = list(cmd = "Rscript", args = c("bench/patch_scnative.R", "scvelo", vv, th, ng), env = env)),
              reps = reps, title = sprintf("scv.tl.recover_dynamics from Python, veloviz739, first %d genes, %d thread(s)", ng, th),
              csv = sprintf("bench/results/patch_scvelo_t%d.csv", th))
# cell2location: the small bench size of bench/cell2location.R (1000 spots x 4000 genes x 20 types)
S <- 1000L; G <- 4000L; F <- 20L; epochs <- 30L
source("bench/cell2location_data.R")
stem <- c2l_bench_data(S, G, F, dir = dir)
side_c2l <- function(extra = NULL) list(cmd = py, args = c("bench/cell2location_upstream.py", stem, S, G, F, th, epochs, extra), env = env)
bench_compare(list(upstream = side_c2l(), upstream_autozyme = side_c2l("autozyme"),
                   scnative_patch = list(cmd = "Rscript", args = c("bench/patch_scnative.R", "c2l", stem, S, G, F, th, epochs), env = env)),
              reps = reps, title = sprintf("Cell2location.train from Python, %d x %d x %d, seconds per epoch, %d thread(s)", S, G, F, th),
              csv = sprintf("bench/results/patch_c2l_t%d.csv", th))
