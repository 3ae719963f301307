# Locating the real data sets in ../shared/data (absent in an installed-package check) and the
# Python peers used for parity tests.

shared_data_dir <- function() {
  env <- Sys.getenv("SCNATIVE_SHARED_DATA")
  cands <- c(env, file.path(c(".", "..", "../..", "../../..", "../../../..", "../../../../.."),
                            "shared", "data"),
             file.path(c("..", "../..", "../../..", "../../../..", "../../../../.."),
                       "..", "shared", "data"))
  for (d in cands[nzchar(cands)]) {
    if (dir.exists(file.path(d, "velocity"))) return(normalizePath(d))
  }
  ""
}

shared_file <- function(...) {
  d <- shared_data_dir()
  if (!nzchar(d)) skip("shared data folder (../shared/data) not found; set SCNATIVE_SHARED_DATA")
  f <- file.path(d, ...)
  if (!file.exists(f)) skip(paste("shared data file not found:", f))
  f
}

# The peers venv's python (bench/setup-peers.sh makes it). CI always has it, so a missing venv
# fails when SCNATIVE_REQUIRE_PEERS=true (set by `make check`) instead of skipping.
peers_python <- function() {
  py <- Sys.getenv("SCNATIVE_PEERS_PYTHON")
  if (!nzchar(py)) py <- file.path(Sys.getenv("HOME"), ".cache", "scnative", "peers", "bin", "python")
  # not normalizePath(): a venv's python is a symlink to the base interpreter, and resolving it
  # would bind reticulate to the base Python without the venv's packages
  if (file.exists(py)) return(py)
  ""
}

skip_if_no_peers <- function() {
  py <- peers_python()
  if (!nzchar(py)) {
    if (identical(tolower(Sys.getenv("SCNATIVE_REQUIRE_PEERS")), "true")) {
      stop("the Python peers venv is required (SCNATIVE_REQUIRE_PEERS=true) but was not found")
    }
    skip("Python peers venv not found (run bench/setup-peers.sh)")
  }
  invisible(py)
}

# Binds reticulate to the peers venv (once per R session; every parity test shares it) and
# returns the python path. Skips (or fails under SCNATIVE_REQUIRE_PEERS=true) without it.
use_peers <- function() {
  py <- skip_if_no_peers()
  skip_if_not_installed("reticulate")
  venv <- dirname(dirname(py))
  if (!reticulate::py_available(initialize = FALSE)) {
    Sys.setenv(RETICULATE_PYTHON = py)
    reticulate::use_virtualenv(venv, required = TRUE)
  }
  prefix <- reticulate::py_eval("__import__('sys').prefix")
  if (!identical(normalizePath(prefix), normalizePath(venv))) {
    stop("reticulate is bound to the Python at ", prefix, ", not the peers venv ", venv)
  }
  invisible(py)
}

# The Python code of a test file, run once per R session in the peers venv: `marker` is a name
# the code defines (its presence means the code already ran). Returns reticulate's main module.
peers_module <- function(code, marker) {
  use_peers()
  if (!reticulate::py_has_attr(reticulate::py, marker)) reticulate::py_run_string(code, local = FALSE)
  reticulate::py
}

# Tests use at most 2 threads (calls without `threads =` use the package default); restored
# when the test file ends.
cap_test_threads <- function(env = parent.frame()) {
  old <- set_scnative_threads(min(2L, scnative_threads()))
  withr::defer(set_scnative_threads(old), envir = env)
}
