# read_h5ad() on hostile files (issue 17, "Hostile input"). A valid small file is written with
# write_h5ad() and corrupted in many ways (helper-h5ad-corrupt.R): every variant must give an
# error naming the element (or read correctly where it is still valid), never crash R and never
# hang. The variants are read twice: without isolation in a separate R process (so a crash
# there cannot take the test run with it, and the checks alone must prevent every crash), and
# with the default isolation in this process.

skip_if_not_installed("hdf5r")

hostile <- local({
  dir <- tempfile("h5ad-hostile-")
  dir.create(dir)
  withr::defer(unlink(dir, recursive = TRUE), teardown_env())
  base <- h5c_base(file.path(dir, "base.h5ad"))
  variants <- h5c_variants()
  paths <- h5c_make_all(base, variants, dir)
  list(dir = dir, base = base, variants = variants, paths = paths,
       expect = vapply(variants, function(v) as.character(v$expect), ""))
})

# An error of read_h5ad() names what is wrong: an element path ("X/indptr: ..."), the file
# ("the file: ...") or the 'path' argument; it never passes on a raw HDF5 error stack.
expect_clear_error <- function(msg, info) {
  expect_match(msg, "^(the file|'path'|[^ :][^:]*): ", info = info)
  expect_false(grepl("HDF5-API Errors|error #0", msg), info = info)
}

test_that("without isolation, the checks alone stop every corrupt variant with a clear error (child R process: no crash, no hang)", {
  out <- file.path(hostile$dir, "results.tsv")
  manifest <- file.path(hostile$dir, "manifest.rds")
  saveRDS(list(name = names(hostile$paths), path = unname(hostile$paths),
               parts = lapply(names(hostile$paths), h5c_parts)), manifest)
  script <- file.path(hostile$dir, "read-all.R")
  writeLines(c(
    "args <- commandArgs(TRUE)",
    "man <- readRDS(args[1])",
    "suppressMessages(library(scnative))",
    "for (i in seq_along(man$name)) {",
    "  cat('START\\t', man$name[i], '\\n', sep = '', file = args[2], append = TRUE)",
    "  t0 <- proc.time()[['elapsed']]",
    "  how <- c(list(man$path[i], isolate = FALSE), man$parts[[i]])",
    "  r <- tryCatch({ suppressWarnings(do.call(read_h5ad, how)); c('ok', '') },",
    "                error = function(e) c('error', conditionMessage(e)))",
    "  cat('DONE\\t', man$name[i], '\\t', r[1], '\\t', gsub('[\\t\\n]', ' ', r[2]), '\\t',",
    "      proc.time()[['elapsed']] - t0, '\\n', sep = '', file = args[2], append = TRUE)",
    "}"), script)
  rscript <- file.path(R.home("bin"), "Rscript")
  status <- suppressWarnings(system2(
    rscript, c("--no-save", "--no-restore", shQuote(script), shQuote(manifest), shQuote(out)),
    stdout = FALSE, stderr = FALSE, timeout = 120,
    env = paste0("R_LIBS=", shQuote(paste(.libPaths(), collapse = .Platform$path.sep)))))
  lines <- if (file.exists(out)) readLines(out, warn = FALSE) else character(0)
  started <- sub("^START\t", "", grep("^START\t", lines, value = TRUE))
  expect_equal(status, 0, info = sprintf("the child R process ended with status %s while reading '%s'",
                                         status, utils::tail(started, 1L)))
  done <- strsplit(grep("^DONE\t", lines, value = TRUE), "\t", fixed = TRUE)
  res <- data.frame(name = vapply(done, `[`, "", 2L), status = vapply(done, `[`, "", 3L),
                    message = vapply(done, function(x) if (length(x) >= 4L) x[4L] else "", ""),
                    seconds = as.numeric(vapply(done, function(x) x[length(x)], "")))
  expect_setequal(res$name, names(hostile$paths))
  for (i in seq_len(nrow(res))) {
    nm <- res$name[i]
    want <- hostile$expect[[nm]]
    if (is.na(want)) {
      expect_identical(res$status[i], "ok", info = paste(nm, res$message[i]))
    } else {
      expect_identical(res$status[i], "error", info = nm)
      if (nzchar(want)) expect_match(res$message[i], want, info = nm)
      expect_clear_error(res$message[i], nm)
    }
    expect_lt(res$seconds[i], 10)
  }
})

test_that("isolated reads (the default) give the same errors and read the valid variants correctly", {
  withr::local_options(scnative.h5ad_step_timeout = 10)
  base <- read_h5ad(hostile$base, isolate = FALSE)
  read <- function(nm) do.call(read_h5ad, c(list(hostile$paths[[nm]]), h5c_parts(nm)))
  some_errors <- c("X indptr short", "X indices bomb", "X external raw storage", "Ms opaque",
                   "obs codes out of range", "obsp not square", "uns deep nesting",
                   "uns hard link cycle", "uns external link", "truncated to half")
  for (nm in some_errors) {
    t0 <- proc.time()[["elapsed"]]
    msg <- tryCatch({
      read(nm)
      "no error"
    }, error = conditionMessage)
    expect_match(msg, hostile$expect[[nm]], info = nm)
    expect_clear_error(msg, nm)
    expect_lt(proc.time()[["elapsed"]] - t0, 10)
  }
  # nothing malformed is skipped silently: the first malformed element ends the read
  expect_error(read_h5ad(hostile$paths[["obs column short"]]), "obs/size: has 3 entries")
  # the still-valid variants read correctly
  expect_identical(read("X indptr int64 (valid)")$X, base$X)
  expect_identical(read("X shape floats (valid)")$X, base$X)
  expect_identical(unname(read("Ms integer (valid)")$layers$Ms), matrix(as.double(1:30), 6, 5))
  expect_true(all(read("Ms boolean (valid)")$layers$Ms == 1))
  expect_identical(rownames(read("obs index numeric (valid)")$obs), as.character(11:15))
  expect_identical(levels(read("obs categories numeric (valid)")$obs$type), c("10", "20", "30"))
  expect_warning(dup <- read("var index duplicated (valid, warns)"), "var has duplicated names")
  expect_identical(rownames(dup$var), make.unique(rep("g", 6)))
  one <- read("obsm 1-d (valid)")$obsm$X_pca
  expect_identical(dim(one), c(5L, 1L))
  expect_identical(unname(one[, 1]), c(1, 2, 3, 4, 5))
  soft <- read("uns soft link to a sibling (valid)")$uns
  expect_identical(soft$alias, soft$params)
  hard <- read("uns hard link to a sibling (valid)")$uns
  expect_identical(hard$twin, hard$params)
  expect_warning(dt <- read("uns named datatype (skipped)"), "uns/dt: is a named datatype.*; skipped")
  expect_null(dt$uns$dt)
  expect_identical(dt$uns$params, base$uns$params)
  expect_warning(op <- read("uns opaque (skipped)"), "uns/o: has an unsupported opaque datatype.*; skipped")
  expect_false("o" %in% names(op$uns))
  expect_identical(read("uns compound (valid)")$uns$rec,
                   data.frame(a = c(1, 2), b = c("x", "y"), stringsAsFactors = FALSE))
  # isolated and in-process reads of a valid file agree
  expect_identical(read_h5ad(hostile$base), base)
})

test_that("the isolated reader turns a crash, a runaway loop and exhausted memory into errors naming the element", {
  skip_on_os("windows")
  keep <- file.path(tempdir(), "still-here")
  file.create(keep)
  withr::defer(unlink(keep))
  # A crash of the child (as the HDF5 library crashes on some corrupt files) ends only the
  # child, quietly: the session's temporary directory, which it shares, is left alone.
  expect_error(h5ad_read_isolated(hostile$base, function() {
    h5ad_note("obs/_index", 40)
    tools::pskill(Sys.getpid(), 11L)  # SIGSEGV
    Sys.sleep(10)
  }), "^obs/_index: the HDF5 library crashed \\(or ran out of memory\\) reading it; the file is corrupt")
  expect_true(file.exists(keep))
  # a step that takes far longer than its size allows is stopped
  withr::local_options(scnative.h5ad_step_timeout = 1)
  t0 <- proc.time()[["elapsed"]]
  expect_error(h5ad_read_isolated(hostile$base, function() {
    h5ad_note("uns/slow", 100)
    Sys.sleep(30)
  }), "^uns/slow: reading it did not finish within 1 s, so it was stopped")
  expect_lt(proc.time()[["elapsed"]] - t0, 10)
  # errors and warnings of the child come back unchanged
  expect_warning(expect_error(h5ad_read_isolated(hostile$base, function() {
    warning("careful")
    h5ad_fail("var/x", "went wrong")
  }), "^var/x: went wrong$"), "careful")
  skip_if_not(Sys.info()[["sysname"]] == "Linux", "address-space limits are only enforced on Linux")
  withr::local_options(scnative.h5ad_memory_limit = 256 * 2^20)
  expect_error(h5ad_read_isolated(hostile$base, function() {
    h5ad_note("X/data", 8e9)
    numeric(1e9)
  }), "^X/data: could not be read \\(cannot allocate")
})

test_that("truncated files and random byte flips never crash or hang and always give a clear error", {
  withr::local_options(scnative.h5ad_step_timeout = 10)
  size <- file.size(hostile$base)
  bytes <- readBin(hostile$base, "raw", size)
  cases <- list()
  for (at in round(size * c(0.1, 0.5, 0.95))) {
    p <- file.path(hostile$dir, sprintf("cut-%d.h5ad", at))
    writeBin(bytes[seq_len(at)], p)
    cases[[basename(p)]] <- p
  }
  for (seed in 1:20) cases[[sprintf("flip seed %d", seed)]] <- h5c_flip(hostile$base, seed, 8L, hostile$dir)
  outcome <- character(0)
  for (nm in names(cases)) {
    t0 <- proc.time()[["elapsed"]]
    r <- tryCatch(suppressWarnings(read_h5ad(cases[[nm]])), error = function(e) e)
    if (inherits(r, "error")) {
      expect_clear_error(conditionMessage(r), nm)
      outcome[nm] <- "error"
    } else {
      expect_s3_class(r, "scnative_h5ad")
      outcome[nm] <- "read"
    }
    expect_lt(proc.time()[["elapsed"]] - t0, 15)
  }
  expect_true(all(outcome[startsWith(names(outcome), "cut-")] == "error"))
  expect_gt(sum(outcome == "error"), 10)  # most flips land in metadata and are detected
})
