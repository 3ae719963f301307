# The velocity chain side by side (issue 14, atlas scale): upstream scVelo (pp.moments ->
# tl.recover_dynamics -> tl.velocity -> tl.velocity_graph) and scnative (moments() ->
# recover_dynamics() -> velocity() -> velocity_graph()) on the same simulated counts
# (bench/velocity_chain_data.R), at the same thread count, each side its own process under
# /usr/bin/time (its own peak RSS). Prints each step's seconds, the ratios and the machine.
# Upstream's recover_dynamics is timed on the first SUB genes and extrapolated per gene (see
# bench/velocity_chain_upstream.py); SUB = 0 runs scnative alone (e.g. at 500,000 cells, where
# upstream's layers alone outgrow the machine).
#   Rscript bench/velocity_chain.R [cells = 50000] [genes = 2000] [threads = 1] [sub = 40]
#                                  [datadir = /tmp/scnative-bench]
#
# Measured 2026-12-02 (AMD EPYC Zen 4, 2 cores, 1 thread each side, elapsed seconds, with an
# R CMD check running beside it: load ~2.3):
#   20,000 cells x 1,000 genes (66% non-zero): moments 37.2 vs 19.2 s, recover_dynamics 968 vs
#   319 s (upstream extrapolated from 10 genes), velocity 29.4 vs 14.5 s, velocity_graph 43.7
#   vs 10.5 s; chain 1,079 vs 363 s (3.0x); peak RSS 7,294 vs 2,563 MB.
#   50,000 cells x 2,000 genes, 2 threads: upstream's process was killed (signal 9) at 24.2 GB
#   peak RSS, some time after its pp.moments started (which step is not known; pp.moments alone
#   completed in another run); scnative alone at 1 thread (load ~3): moments 153 s,
#   recover_dynamics 1,762 s, velocity 130 s, velocity_graph 62 s; chain 2,109 s, peak RSS 11.4 GB.
source("bench/harness.R")
a <- commandArgs(TRUE)
arg <- function(i, def) if (length(a) >= i) as.integer(a[i]) else as.integer(def)
n <- arg(1, 50000)
g <- arg(2, 2000)
th <- arg(3, 1)
sub <- arg(4, 40)
dir <- if (length(a) >= 5) a[5] else "/tmp/scnative-bench"
dir.create(dir, showWarnings = FALSE, recursive = TRUE)
f <- file.path(dir, sprintf("vchain_%dx%d.h5ad", n, g))
if (!file.exists(f)) stopifnot(system2("Rscript", c("bench/velocity_chain_data.R", f, n, g)) == 0)
env <- bench_thread_env(th)
sides <- list(scnative = list(cmd = "Rscript", args = c("bench/velocity_chain_scnative.R", f, th)))
if (sub > 0) {
  sides <- c(list(upstream = list(cmd = bench_peers_python(),
                                  args = c("bench/velocity_chain_upstream.py", f, th, sub))),
             sides)
}
run_side <- function(s) {
  t0 <- proc.time()[["elapsed"]]
  out <- suppressWarnings(system2("/usr/bin/time", c("-f", "SCN_MAXRSS_KB=%M", s$cmd, s$args),
                                  stdout = TRUE, stderr = TRUE, env = paste0(names(env), "=", env)))
  if (!is.null(attr(out, "status")) && attr(out, "status") != 0L) {
    log <- tempfile("velocity_chain_", fileext = ".log")
    writeLines(out, log)
    cat(utils::tail(grep("^\\s*\\^+\\s*$", out, invert = TRUE, value = TRUE), 15), sep = "\n")
    stop("side failed: ", s$cmd, " ", paste(s$args, collapse = " "), " (whole output: ", log, ")")
  }
  st <- grep("^STEP ", out, value = TRUE)
  steps <- stats::setNames(as.numeric(sub("^STEP \\S+ ", "", st)), sub("^STEP (\\S+) .*", "\\1", st))
  rss <- as.numeric(sub("^SCN_MAXRSS_KB=", "", grep("^SCN_MAXRSS_KB=", out, value = TRUE)))
  info <- grep("genes", out, value = TRUE)
  list(steps = steps, total = sum(steps), rss_mb = rss / 1024, info = info,
       wall = proc.time()[["elapsed"]] - t0)
}
res <- lapply(sides, run_side)
m <- bench_machine()
cat(sprintf("\n### velocity chain, simulated %d cells x %d genes, %d thread(s)\n\n", n, g, th))
nm <- names(res[[length(res)]]$steps)
hdr <- paste(c("step", paste(names(res), "s")), collapse = " | ")
cat("| ", hdr, if (length(res) > 1) " | ratio" else "", " |\n", sep = "")
cat("|---", strrep("|---:", length(res) + (length(res) > 1)), "|\n", sep = "")
for (k in c(nm, "total")) {
  v <- vapply(res, function(r) if (k == "total") r$total else r$steps[[k]], numeric(1))
  cat(sprintf("| %s | %s%s |\n", k, paste(sprintf("%.1f", v), collapse = " | "),
              if (length(v) > 1) sprintf(" | %.1fx", v[1] / v[2]) else ""))
}
cat(sprintf("| peak RSS MB | %s%s |\n",
            paste(sprintf("%.0f", vapply(res, `[[`, 0, "rss_mb")), collapse = " | "),
            if (length(res) > 1) sprintf(" | %.2f", res[[2]]$rss_mb / res[[1]]$rss_mb) else ""))
if (sub > 0) {
  cat(sprintf("\nupstream's recover_dynamics: timed on %d genes, extrapolated per gene to %d;",
              sub, g), "its peak RSS is that of the run (all layers of all genes held).\n")
}
for (s in names(res)) cat(s, ":", res[[s]]$info, "\n")
cat(sprintf("\nMachine: %s, %s cores, %s; load %s; %s; BLAS %s; %s; scnative %s (%s)\n",
            m$cpu, m$cores, m$memory, m$load, m$R, m$BLAS, m$python, m$scnative, m$date))
