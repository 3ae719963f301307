#' scnative: native fits of scVelo's dynamical model and cell2location
#'
#' scnative runs `scvelo.tl.recover_dynamics` and `cell2location`'s spatial mapping model
#' natively in R, on a plain C core with OpenMP and R's BLAS. See [scnative_threads()] for
#' thread control.
#'
#' Matrix is imported (not only called with `::`) so that its S4 methods (`nrow()`, `dim()`
#' of a `dgCMatrix`) work on objects read back with `readRDS()` in a fresh session.
#'
#' @keywords internal
#' @useDynLib scnative, .registration = TRUE, .fixes = "C_"
#' @importFrom stats setNames
#' @importFrom Matrix sparseMatrix
"_PACKAGE"
