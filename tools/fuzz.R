# `make fuzz N=10000 SEED=1`: the long fuzz campaign of the exported API (issue 17). The engine
# is tests/testthat/helper-fuzz.R (test-fuzz.R runs a fixed-seed subset of it in `make check`).
# Writes build/fuzz-report.md (the outcome table, per function and mutation class, examples)
# and build/fuzz-results.rds (one row per call). Crashes are replayed one by one in a fresh
# Rscript to learn the signal (SIGSEGV, abort, SIGFPE).
#   Rscript tools/fuzz.R N=3000 SEED=1 TIMEOUT=20 OUT=build/fuzz-report.md
#   Rscript tools/fuzz.R SEED=1 REPLAY=123      # reruns call 123 in this process
#   Rscript tools/fuzz.R N=500 CASES='SCE|SEURAT'  # only the object methods (OBJECTS=0: none)
kv <- commandArgs(TRUE)
opt <- list(N = "1000", SEED = "1", TIMEOUT = "20", OUT = file.path("build", "fuzz-report.md"),
            REPLAY = "", FROM = "1", MAX_REPLAYS = "60", OBJECTS = "1",
            CASES = "")
for (a in kv) {
  k <- sub("=.*", "", a)
  if (!k %in% names(opt)) stop("unknown option ", a, " (known: ", paste(names(opt), collapse = ", "), ")")
  opt[[k]] <- sub("^[^=]*=", "", a)
}
here <- if (file.exists("tests/testthat/helper-fuzz.R")) "." else stop("run from the package root")
source(file.path(here, "tests", "testthat", "helper-fuzz.R"))
seed <- as.integer(opt$SEED)

# OBJECTS=0 leaves out the Seurat / SingleCellExperiment cases (slow to load); CASES=regex
# keeps only the cases whose name matches (e.g. CASES='SCE|SEURAT': the object methods)
setup <- fuzz_setup(objects = opt$OBJECTS != "0")
if (nzchar(opt$CASES)) {
  setup$cases <- setup$cases[grepl(opt$CASES, vapply(setup$cases, `[[`, "", "name"))]
  if (!length(setup$cases)) stop("no case matches CASES=", opt$CASES)
}
if (nzchar(opt$REPLAY)) {
  setup <- fuzz_check_base(setup)
  res <- fuzz_replay(setup, seed, as.integer(opt$REPLAY))
  if (inherits(res, "error")) cat("error:", conditionMessage(res), "\n") else str(res, max.level = 1)
  quit(status = 0)
}
setup <- fuzz_check_base(setup)
if (length(setup$base_failures)) {
  stop("base calls fail (fix the fuzzer's base calls first):\n",
       paste(setup$base_failures, collapse = "\n"))
}
if (length(setup$skipped)) {
  message("exported functions without a base call (not fuzzed): ",
          paste(setup$skipped, collapse = ", "))
}
n <- as.integer(opt$N)
t0 <- proc.time()[["elapsed"]]
res <- fuzz_run(setup, n, seed = seed, from = as.integer(opt$FROM),
                timeout = as.numeric(opt$TIMEOUT), verbose = TRUE)
secs <- proc.time()[["elapsed"]] - t0

# the signal of each crash, from a replay in a fresh process (the shell reports 128 + signal)
signals <- character()
crash_i <- utils::head(res$i[res$outcome == "crash"], as.integer(opt$MAX_REPLAYS))
sig_names <- c(`4` = "SIGILL", `6` = "abort", `7` = "SIGBUS", `8` = "SIGFPE", `9` = "SIGKILL",
               `11` = "SIGSEGV")
for (i in crash_i) {
  st <- suppressWarnings(system2(file.path(R.home("bin"), "Rscript"),
                                 c("tools/fuzz.R", sprintf("SEED=%d", seed), sprintf("REPLAY=%d", i)),
                                 stdout = FALSE, stderr = FALSE))
  sg <- if (st > 128) sig_names[as.character(st - 128)] else NA
  lab <- if (!is.na(sg)) sg else if (st == 0) "not reproduced" else sprintf("exit %d", st)
  signals <- c(signals, lab)
  res$message[res$i == i] <- paste0("[", lab, "] ", res$message[res$i == i])
}
dir.create(dirname(opt$OUT), showWarnings = FALSE, recursive = TRUE)
writeLines(fuzz_report(res, setup, seed, signals, secs), opt$OUT)
saveRDS(res, sub("\\.md$", ".rds", sub("report", "results", opt$OUT)))
cn <- fuzz_counts(res)
cat(sprintf("%d calls in %.0f s: %d crash, %d hang, %d silent (%d accepted, %d NaN/Inf), %d vague, %d mutated; report: %s\n",
            n, secs, cn[["crash"]], cn[["hang"]], cn[["silent_accepted"]] + cn[["silent_nan"]],
            cn[["silent_accepted"]], cn[["silent_nan"]], cn[["vague"]], cn[["mutated"]], opt$OUT))
