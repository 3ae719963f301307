# What 50x at 1 thread would leave for recover_dynamics, against the libm calls scnative makes.
# On the first `n` genes of one benchmark dataset, at 1 thread: upstream scVelo and scnative side
# by side on the same genes (no extrapolation), then scnative once more with its exp()/log()
# calls counted (bench/libm_count.c, interposed with LD_PRELOAD), and libm's time per call.
# Prints the 50x budget (upstream's median / 50) beside the time those calls take at libm's
# loop speed, for all calls and for distinct arguments only. scnative matches upstream's fits
# bit for bit by computing the same exponentials and logarithms with the same libm, so the
# distinct-argument time is what any implementation on that route spends at the least, even
# with perfect reuse of repeated arguments.
#   Rscript bench/dynamics_floor.R [dataset = sim|veloviz] [n = 20 (sim) / 50 (veloviz)]
#                                  [reps = 3] [datadir = /tmp/scnative-bench]
source("bench/harness.R")
a <- commandArgs(TRUE)
ds <- if (length(a) >= 1) a[1] else "sim"
n <- if (length(a) >= 2) as.integer(a[2]) else if (ds == "sim") 20L else 50L
reps <- if (length(a) >= 3) as.integer(a[3]) else 3L
dir <- if (length(a) >= 4) a[4] else "/tmp/scnative-bench"
file <- file.path(dir, c(sim = "sim_3696x2000.h5ad", veloviz = "veloviz739.h5ad")[[ds]])
if (!file.exists(file)) stop("run bench/dynamics.R ", ds, " first (it makes ", file, ")")
py <- bench_peers_python()
env <- bench_thread_env(1)

# the counter, built here
build <- tempfile("libm_count")
dir.create(build)
file.copy("bench/libm_count.c", build)
so <- file.path(build, "libm_count.so")
owd <- setwd(build)
st <- system2(file.path(R.home("bin"), "R"), c("CMD", "SHLIB", "-o", so, "libm_count.c"),
              env = "PKG_LIBS=-ldl", stdout = TRUE, stderr = TRUE)
setwd(owd)
if (!file.exists(so)) stop("could not build bench/libm_count.c:\n", paste(st, collapse = "\n"))

sides <- list(
  upstream = list(cmd = py, args = c("bench/dynamics_upstream.py", file, "upstream", 1, n, n),
                  env = env),
  scnative = list(cmd = "Rscript", args = c("bench/dynamics_scnative.R", file, 1, n), env = env))
res <- bench_compare(sides, reps = reps,
                     title = sprintf("recover_dynamics, first %d genes of %s, 1 thread", n,
                                     basename(file)),
                     csv = sprintf("bench/results/dynamics_floor_%s.csv", ds))
up <- res$table$median_s[1]
scn <- res$table$median_s[2]

out <- system2("Rscript", c("bench/dynamics_scnative.R", file, 1, n), stdout = TRUE,
               stderr = TRUE, env = c(paste0(names(env), "=", env),
                                      paste0("LD_PRELOAD=", so),
                                      paste0("SCNATIVE_LIBM_COUNT=", so)))
cnt <- grep("^LIBM_COUNTS=", out, value = TRUE)
if (length(cnt) != 1) stop("counting run failed:\n", paste(utils::tail(out, 15), collapse = "\n"))
cnt <- as.numeric(strsplit(sub("^LIBM_COUNTS=", "", cnt), ",")[[1]])
dyn.load(so)
ns <- .C("scn_libm_speed", ns = double(2))$ns

budget <- up / 50
t_all <- (cnt[1] * ns[1] + cnt[3] * ns[2]) * 1e-9
t_dist <- (cnt[2] * ns[1] + cnt[4] * ns[2]) * 1e-9
cat(sprintf("\n### libm floor against the 50x budget (first %d genes, 1 thread)\n\n", n))
cat("| quantity | value |\n|---|---:|\n")
row <- function(k, v) cat(sprintf("| %s | %s |\n", k, v))
row("upstream, median s", sprintf("%.3f", up))
row("scnative, median s", sprintf("%.3f", scn))
row("ratio upstream / scnative", sprintf("%.1fx", up / scn))
row("50x budget (upstream / 50), s", sprintf("%.3f", budget))
row("exp() calls (distinct arguments)", sprintf("%.4g (%.4g)", cnt[1], cnt[2]))
row("log() calls (distinct arguments)", sprintf("%.4g (%.4g)", cnt[3], cnt[4]))
row("libm ns per exp() / log() call", sprintf("%.2f / %.2f", ns[1], ns[2]))
row("libm time of all calls, s (share of budget)", sprintf("%.3f (%.0f%%)", t_all, 100 * t_all / budget))
row("libm time at distinct arguments, s (share of budget)",
    sprintf("%.3f (%.0f%%)", t_dist, 100 * t_dist / budget))
row("scnative time / budget", sprintf("%.2f", scn / budget))
if (!cnt[5]) cat("\n(distinct counts cover the first 2^28 arguments of each function only)\n")
