# The fuzzer (helper-fuzz.R) on a fixed seed: a few hundred calls of every exported function
# with one argument mutated, each in a forked child with a time limit (issue 17). `make fuzz`
# runs the long campaign. The run happens in a fresh R process: this one may have used OpenMP
# threads, which a forked child cannot use.

test_that("fixed-seed fuzz subset: no crash, no hang, no mutated input", {
  skip_on_os("windows") # fork
  skip_if_not_installed("hdf5r")
  skip_if_not_installed("ggplot2")
  n <- as.integer(Sys.getenv("SCNATIVE_FUZZ_N", "300"))
  # a memory cap makes huge sizes fail fast; ASan (make sanitize) reserves terabytes of
  # address space and cannot run under one
  san <- identical(Sys.getenv("SCNATIVE_SANITIZE"), "true")
  out <- fuzz_run_fresh(n, seed = 2, timeout = if (san) 120 else 30, mem_kb = if (san) Inf else 8e6)
  res <- out$res
  rep <- Sys.getenv("SCNATIVE_FUZZ_REPORT")
  if (nzchar(rep)) writeLines(out$report, rep)
  expect_equal(out$setup$base_failures, character())
  expect_equal(nrow(res), n)
  show <- function(o) {
    b <- res[res$outcome %in% o, , drop = FALSE]
    paste(sprintf("call %d %s %s(%s: %s): %s", b$i, b$outcome, b$case, b$arg, b$label,
                  substr(b$message, 1, 120)), collapse = "\n")
  }
  expect(!any(res$outcome == "engine_error"), show("engine_error"))
  expect(!any(res$outcome == "crash"), show("crash"))
  expect(!any(res$outcome == "hang"), show("hang"))
  expect(!any(res$outcome == "mutated"), show("mutated"))
  # invalid inputs give errors that name the argument (for a corrupt file: the element of
  # the file). What remains on this seed (issue 17): one NaN result (cell2location
  # warm-started with a signature of 1e308)
  expect(!any(res$outcome == "silent_accepted"), show("silent_accepted"))
  expect(sum(res$outcome == "silent_nan") <= 1L, show("silent_nan"))
  expect(!any(res$outcome == "vague"), show("vague"))
  # every mutation class and most functions were drawn
  expect_true(all(c("type", "shape", "names", "value", "sparse", "field", "factor", "file") %in%
                    res$class))
  expect_gt(length(unique(res$fun)), 25)
})
