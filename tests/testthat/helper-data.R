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
  if (file.exists(py)) return(normalizePath(py))
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
