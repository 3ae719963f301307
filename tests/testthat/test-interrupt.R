# Ctrl-C (SIGINT) during the long fits (issue 17): each call returns to its caller with a
# condition (cell2location()/reference_signatures(): the fit so far, flagged `interrupted`, with
# a warning; recover_dynamics(): an error or the interrupt condition), native memory is freed
# (resident memory back within 5% after 50 interrupted fits) and the next call works. The fits
# run in a fresh Rscript (interrupt_child.R) that a background shell sends SIGINT.

test_that("SIGINT during cell2location(), reference_signatures() and recover_dynamics(): a condition, no leak, the next call works", {
  skip_on_os("windows")
  skip_if_not(file.exists("/proc/self/status"))
  # ASan's allocator holds freed memory in quarantine (resident memory grows by design)
  skip_if(identical(Sys.getenv("SCNATIVE_SANITIZE"), "true"), "resident memory under ASan")
  n <- as.integer(Sys.getenv("SCNATIVE_INTERRUPT_N", "50"))
  out <- tempfile(fileext = ".rds")
  rscript <- file.path(R.home("bin"), "Rscript")
  log <- suppressWarnings(system2(rscript, c("--vanilla", test_path("interrupt_child.R"), n, out),
                                  stdout = TRUE, stderr = TRUE,
                                  env = c(sprintf("R_LIBS=%s", paste(.libPaths(), collapse = ":")),
                                          # glibc returns every block >= 64 KiB to the system
                                          # when freed (no dynamic threshold): resident memory
                                          # then shows what is freed, not what malloc caches
                                          "MALLOC_MMAP_THRESHOLD_=65536")))
  if (!file.exists(out)) fail(paste(c("the child process failed:", utils::tail(log, 20)), collapse = "\n"))
  res <- readRDS(out)
  expect_setequal(names(res), c("cell2location", "reference_signatures", "recover_dynamics"))
  for (nm in names(res)) {
    r <- res[[nm]]
    expect_length(r$got, n)
    ok <- if (nm == "recover_dynamics") {
      r$got == "interrupt" | grepl("^error: .*interrupted by the user", r$got)
    } else {
      r$got %in% c("fit", "interrupt")
    }
    expect(all(ok), sprintf("%s: %s", nm, paste(unique(r$got[!ok]), collapse = "; ")))
    # each interrupted call returned within seconds of the signal (the fits would run for hours)
    expect_lt(r$seconds / n, 10)
    # no native model state outlives its fit, and resident memory does not grow
    expect_identical(r$live0, 0L, info = nm)
    expect_identical(r$live1, 0L, info = nm)
    expect(r$rss1 <= 1.05 * r$rss0, sprintf("%s: resident memory %.0f kB before, %.0f kB after %d interrupted fits",
                                            nm, r$rss0, r$rss1, n))
    expect_identical(r$next_call, "ok", info = nm)
  }
})
