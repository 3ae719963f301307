# recover_dynamics side by side: upstream scVelo, upstream + autozyme's patch, upstream +
# scvelo-rs's patch, scnative; at 1 and 2 threads; on a simulated pancreas-size dataset
# (3,696 cells x 2,000 genes, bench/dynamics_data.py) and on veloviz_pancreas739 (moments by
# upstream, bench/dynamics_data_veloviz.R).
# The Python sides are timed on the first `sub` genes and their seconds are extrapolated per
# gene to the full gene count (their peak RSS is that of the subset run); scnative fits all
# genes. Every side reads the layers as stored (float32, as scVelo writes them; scnative with
# dtype = "float32"); SCNATIVE_BENCH_DTYPE=float64 casts them to float64 for every side
# (scnative with dtype = "float64") instead.
# Usage: Rscript bench/dynamics.R [dataset = sim|veloviz|all] [reps = 2] [datadir = /tmp/scnative-bench]
#                                 [threads = 1,2] [full]
# With "full" the Python sides fit all genes too (no extrapolation; their peak RSS then includes
# the full-size result layers, as scnative's does; upstream takes 10-25 min per run).
source("bench/harness.R")
a <- commandArgs(TRUE)
which_ds <- if (length(a) >= 1) a[1] else "all"
reps <- if (length(a) >= 2) as.integer(a[2]) else 2L
dir <- if (length(a) >= 3) a[3] else "/tmp/scnative-bench"
thread_counts <- if (length(a) >= 4) as.integer(strsplit(a[4], ",")[[1]]) else c(1L, 2L)
full <- length(a) >= 5 && identical(a[5], "full")
dtype <- Sys.getenv("SCNATIVE_BENCH_DTYPE", "float32")
stopifnot(dtype %in% c("float32", "float64"))
dir.create(dir, showWarnings = FALSE, recursive = TRUE)
py <- bench_peers_python()
sim <- file.path(dir, "sim_3696x2000.h5ad")
vv <- file.path(dir, "veloviz739.h5ad")
if (which_ds %in% c("sim", "all") && !file.exists(sim)) {
  stopifnot(system2(py, c("bench/dynamics_data.py", sim)) == 0)
}
if (which_ds %in% c("veloviz", "all") && !file.exists(vv)) {
  rda <- file.path("..", "shared", "data", "velocity", "veloviz_pancreas739.rda")
  if (!file.exists(rda)) rda <- "/work/shared/data/velocity/veloviz_pancreas739.rda"
  stopifnot(system2("Rscript", c("bench/dynamics_data_veloviz.R", rda, vv)) == 0)
}
n_genes <- function(f) {
  h <- hdf5r::H5File$new(f, mode = "r")
  on.exit(h$close_all())
  length(h[["var/_index"]]$read())
}
sets <- list(
  sim = list(file = sim, label = "simulated pancreas size", sub = c(upstream = 20, autozyme = 20, scvelo_rs = 40)),
  veloviz = list(file = vv, label = "veloviz_pancreas739 moments", sub = c(upstream = 50, autozyme = 50, scvelo_rs = 100)))
if (which_ds != "all") sets <- sets[which_ds]
for (nm in names(sets)) {
  ds <- sets[[nm]]
  G <- n_genes(ds$file)
  if (full) ds$sub[] <- G
  for (th in thread_counts) {
    env <- bench_thread_env(th)
    side_py <- function(v) {
      list(cmd = py, args = c("bench/dynamics_upstream.py", ds$file, v, th, ds$sub[[v]], G, dtype),
           env = env)
    }
    sides <- list(
      upstream = side_py("upstream"),
      upstream_autozyme = side_py("autozyme"),
      upstream_scvelo_rs = side_py("scvelo_rs"),
      scnative = list(cmd = "Rscript", args = c("bench/dynamics_scnative.R", ds$file, th, 0, dtype),
                      env = env))
    notes <- sprintf(paste0("Python sides timed on the first %d/%d/%d genes (upstream/autozyme/",
                            "scvelo-rs) and extrapolated per gene to all %d genes; their peak RSS ",
                            "is that of the subset run. scnative fits all %d genes."),
                     ds$sub[["upstream"]], ds$sub[["autozyme"]], ds$sub[["scvelo_rs"]], G, G)
    bench_compare(sides, reps = reps,
                  title = sprintf("recover_dynamics, %s (%s genes), %s layers, %d thread(s)",
                                  ds$label, G, dtype, th),
                  csv = sprintf("bench/results/dynamics_%s_%s_t%d.csv", nm, dtype, th), notes = notes)
  }
}
