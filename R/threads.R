#' Threads used by scnative
#'
#' scnative's C core runs its heavy loops with OpenMP. One package-wide thread count applies to
#' every model; each heavy function also takes `threads =`, which defaults to it.
#'
#' The count starts from the environment variable `R_SCNATIVE_NUM_THREADS` (default: all cores)
#' and is capped by the number of cores, `OMP_THREAD_LIMIT` and `OMP_NUM_THREADS`. scnative
#' never calls `omp_set_num_threads()`, so it does not change R's or any other package's
#' setting: each parallel region names its own thread count.
#'
#' Results do not depend on the thread count: work is split into independent items (genes,
#' spot blocks) that are combined in a fixed order, and random numbers come from a
#' counter-based generator whose value for a given seed and index does not depend on which
#' thread draws it.
#'
#' **BLAS threads.** Matrix products go through R's BLAS. A threaded BLAS (OpenBLAS, MKL) has its
#' own thread pool and settings (`OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`); scnative calls BLAS
#' on whole matrices outside its own parallel regions, so the two pools do not run at the same
#' time. With the reference BLAS the products are single-threaded.
#'
#' @param verbose `TRUE` to return all the limits as a named integer vector.
#' @return `scnative_threads()`: the number of threads (or, with `verbose = TRUE`, a named
#'   integer vector: `threads`, `cap`, `num_procs`, `thread_limit`, `omp_max_threads`,
#'   `openmp`). `set_scnative_threads()`: the previous count, invisibly.
#' @examples
#' scnative_threads()
#' old <- set_scnative_threads(1)
#' scnative_threads()
#' set_scnative_threads(old)
#' @export
scnative_threads <- function(verbose = FALSE) {
  check_flag(verbose, "verbose")
  info <- .Call(C_scnative_threads_info)
  if (verbose) info else unname(info[["threads"]])
}

#' @rdname scnative_threads
#' @param threads a positive whole number, or `NULL` to re-read the environment.
#' @export
set_scnative_threads <- function(threads = NULL) {
  if (!is.null(threads)) check_number(threads, "threads", min = 1, whole = TRUE)
  invisible(.Call(C_scnative_threads_set, threads))
}

# The thread count a heavy function uses: `threads` validated, or the package-wide count.
resolve_threads <- function(threads) {
  if (is.null(threads)) return(scnative_threads())
  check_number(threads, "threads", min = 1, whole = TRUE)
  as.integer(min(threads, scnative_threads(verbose = TRUE)[["cap"]]))
}
