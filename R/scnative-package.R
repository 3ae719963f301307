#' scnative: native fits of scVelo's dynamical model and cell2location
#'
#' scnative runs `scvelo.tl.recover_dynamics` and `cell2location`'s spatial mapping model
#' natively in R, on a plain C core with OpenMP and R's BLAS. See [scnative_threads()] for
#' thread control.
#'
#' @keywords internal
#' @useDynLib scnative, .registration = TRUE, .fixes = "C_"
#' @importFrom stats setNames
"_PACKAGE"
