# bench/harness.R: side-by-side timing of upstream and scnative (sourced by bench/*.R).
#
# Protocol. Each side is one command (an Rscript or a python script) run as its own process
# under /usr/bin/time, so every side's peak RSS is its own. The process loads its libraries and
# data, makes a warm-up call, then times the measured call and prints exactly one line
# `BENCH_SECONDS=<seconds>`. bench_compare() runs all sides interleaved (A B C, A B C, ...)
# `reps` times and reports the median of the measured seconds, the peak RSS, and the ratio
# (reference median / side median, so > 1 means faster than the reference = the first side).
# Threads: bench_thread_env(n) sets every pool (OpenMP, OpenBLAS, MKL, numba, torch via OMP,
# scnative) to the same n for every side.

bench_thread_env <- function(n) {
  n <- as.character(n)
  c(OMP_NUM_THREADS = n, OPENBLAS_NUM_THREADS = n, MKL_NUM_THREADS = n, NUMBA_NUM_THREADS = n,
    VECLIB_MAXIMUM_THREADS = n, R_SCNATIVE_NUM_THREADS = n, OMP_THREAD_LIMIT = n)
}

bench_peers_python <- function() {
  py <- Sys.getenv("SCNATIVE_PEERS_PYTHON")
  if (!nzchar(py)) py <- file.path(Sys.getenv("HOME"), ".cache", "scnative", "peers", "bin", "python")
  if (!file.exists(py)) stop("peers venv not found: run bench/setup-peers.sh")
  py
}

bench_machine <- function() {
  cpu <- tryCatch({
    l <- grep("^model name", readLines("/proc/cpuinfo"), value = TRUE)
    sub(".*:\\s*", "", l[1])
  }, error = function(e) NA_character_)
  mem <- tryCatch({
    l <- grep("^MemTotal", readLines("/proc/meminfo"), value = TRUE)
    sprintf("%.1f GiB", as.numeric(gsub("[^0-9]", "", l)) / 2^20)
  }, error = function(e) NA_character_)
  si <- utils::sessionInfo()
  py <- tryCatch(bench_peers_python(), error = function(e) "")
  pyv <- if (nzchar(py)) {
    tryCatch(paste(system2(py, c("-c", shQuote(paste(
      "import sys, numpy, importlib.metadata as m;",
      "print('Python', sys.version.split()[0], '| numpy', numpy.__version__, '| torch',",
      "m.version('torch'), '| scvelo', m.version('scvelo'), '| cell2location', m.version('cell2location'))"))),
      stdout = TRUE, stderr = FALSE), collapse = " "), error = function(e) NA_character_)
  } else NA_character_
  list(date = format(Sys.time(), "%Y-%m-%d %H:%M:%S %Z"), cpu = cpu,
       cores = parallel::detectCores(), memory = mem,
       load = tryCatch(readLines("/proc/loadavg"), error = function(e) NA_character_),
       R = R.version.string, BLAS = si$BLAS %||% NA_character_, python = pyv,
       scnative = as.character(tryCatch(utils::packageVersion("scnative"), error = function(e) NA)))
}

`%||%` <- function(a, b) if (is.null(a)) b else a

bench_run_one <- function(side, timeout) {
  out <- suppressWarnings(system2("/usr/bin/time", c("-f", "SCN_MAXRSS_KB=%M", side$cmd, side$args),
    stdout = TRUE, stderr = TRUE, env = paste0(names(side$env), "=", side$env), timeout = timeout))
  secs <- as.numeric(sub("^BENCH_SECONDS=", "", grep("^BENCH_SECONDS=", out, value = TRUE)))
  rss <- as.numeric(sub("^SCN_MAXRSS_KB=", "", grep("^SCN_MAXRSS_KB=", out, value = TRUE)))
  status <- attr(out, "status") %||% 0L
  if (length(secs) != 1L || status != 0L) {
    message("side failed (status ", status, "): ", side$cmd, " ", paste(side$args, collapse = " "),
            "\n", paste(utils::tail(out, 15), collapse = "\n"))
    return(c(seconds = NA_real_, rss_mb = NA_real_))
  }
  c(seconds = secs, rss_mb = if (length(rss)) rss[length(rss)] / 1024 else NA_real_)
}

# sides: named list of list(cmd =, args =, env = named character).
bench_compare <- function(sides, reps = 3, title = "benchmark", csv = NULL, timeout = 3600,
                          notes = NULL) {
  stopifnot(length(sides) >= 1, !is.null(names(sides)))
  raw <- list()
  for (r in seq_len(reps)) {
    for (nm in names(sides)) {
      res <- bench_run_one(sides[[nm]], timeout)
      raw[[length(raw) + 1L]] <- data.frame(side = nm, rep = r, seconds = res[["seconds"]],
                                            rss_mb = res[["rss_mb"]])
      message(sprintf("  %s rep %d: %.4g s, %.0f MB", nm, r, res[["seconds"]], res[["rss_mb"]]))
    }
  }
  raw <- do.call(rbind, raw)
  tab <- do.call(rbind, lapply(names(sides), function(nm) {
    d <- raw[raw$side == nm, ]
    data.frame(side = nm, median_s = stats::median(d$seconds), min_s = min(d$seconds),
               max_s = max(d$seconds), peak_rss_mb = max(d$rss_mb), reps = nrow(d))
  }))
  tab$ratio_vs_first <- tab$median_s[1] / tab$median_s
  m <- bench_machine()
  cat("\n### ", title, "\n\n", sep = "")
  cat("| side | median s | min s | max s | peak RSS MB | ratio (", tab$side[1], " / side) |\n",
      "|---|---:|---:|---:|---:|---:|\n", sep = "")
  for (i in seq_len(nrow(tab))) {
    cat(sprintf("| %s | %.4g | %.4g | %.4g | %.0f | %.2f |\n", tab$side[i], tab$median_s[i],
                tab$min_s[i], tab$max_s[i], tab$peak_rss_mb[i], tab$ratio_vs_first[i]))
  }
  if (!is.null(notes)) cat("\n", notes, "\n", sep = "")
  cat(sprintf("\nMachine: %s, %s cores, %s; load %s; %s; BLAS %s; %s; scnative %s (%s)\n",
              m$cpu, m$cores, m$memory, m$load, m$R, m$BLAS, m$python, m$scnative, m$date))
  if (!is.null(csv)) {
    dir.create(dirname(csv), showWarnings = FALSE, recursive = TRUE)
    out <- cbind(title = title, tab, as.data.frame(m[c("date", "cpu", "cores", "memory", "R",
                                                       "BLAS", "python", "scnative")]))
    utils::write.csv(out, csv, row.names = FALSE)
    cat("CSV: ", csv, "\n", sep = "")
  }
  invisible(list(table = tab, raw = raw, machine = m))
}

# Simulated data of n cells made in blocks of `size` cells (no dense matrix of all cells held):
# block(m) returns a named list of genes x m (sparse) matrices; returns the same list with
# each piece bound over all blocks.
bench_blocks <- function(n, block, size = 5000L) {
  sizes <- diff(unique(c(seq(0L, n, by = size), n)))
  blocks <- lapply(sizes, block)
  parts <- names(blocks[[1L]])
  stats::setNames(lapply(parts, function(k) do.call(cbind, lapply(blocks, `[[`, k))), parts)
}
