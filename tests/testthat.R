# Tests never use more than 2 threads (set before the package loads; the init code reads it).
if (!nzchar(Sys.getenv("OMP_THREAD_LIMIT"))) Sys.setenv(OMP_THREAD_LIMIT = "2")
library(testthat)
library(scnative)

res <- test_check("scnative", stop_on_failure = FALSE, reporter = "summary")
df <- as.data.frame(res)
failed <- sum(df$failed > 0 | df$error)
skipped <- sum(df$skipped & !(df$failed > 0 | df$error))
passed <- nrow(df) - failed - skipped
line <- sprintf("%d passed, %d failed, %d skipped", passed, failed, skipped)
cat(line, "\n", sep = "")
out <- Sys.getenv("SCNATIVE_TEST_SUMMARY")
if (nzchar(out)) writeLines(line, out)
if (failed > 0) stop(line, call. = FALSE)
