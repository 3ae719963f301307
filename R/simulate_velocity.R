# scv.datasets.simulation: counts simulated from the dynamical model with the Mersenne
# Twister streams of numpy (src/velocity.c). Spec (scVelo dynamics) section 8.

# ------------------------------------------------------------------ simulation

# numpy's percentile (linear method) of a vector.
np_percentile <- function(x, q) {
  x <- sort(x)
  n <- length(x)
  v <- (n - 1) * (q / 100)
  lo <- floor(v)
  t <- v - lo
  a <- x[lo + 1]
  b <- x[min(lo + 2, n)]
  d <- b - a
  if (t >= 0.5) b - d * (1 - t) else a + d * t
}

#' Simulated spliced and unspliced counts (scVelo's `datasets.simulation`)
#'
#' Reproduces `scvelo.datasets.simulation()` (scVelo 0.3.4) number for number: cell times
#' from Python's `random` module (exponential increments), switching times at fractions of
#' the total time, the closed-form splicing kinetics, and Gaussian noise from numpy's legacy
#' `RandomState` (both Mersenne Twister streams and their seedings are re-implemented in C).
#'
#' @param n_obs Whole number >= 2: cells.
#' @param n_vars `NULL` (one gene per switch) or a whole number >= 1: genes.
#' @param alpha,beta,gamma Positive numbers (or vectors, one per gene) of transcription,
#'   splicing and degradation rates.
#' @param alpha_ Non-negative number: transcription in the repression phase.
#' @param t_max `NULL` or a positive number: total time.
#' @param noise_model `"normal"` (Gaussian noise, sd 1/10 of the 99th percentile) or
#'   `"gillespie"`.
#' @param noise_level Non-negative number or vector, one per gene.
#' @param switches `NULL` (fractions 0.4, 0.7, 1, 0.1, cycled) or a numeric vector of
#'   switching fractions of `t_max` in (0, 1].
#' @param random_seed Whole number in `[0, 2^32)`.
#' @return A list with `spliced` and `unspliced` (genes x cells matrices, genes "0", "1",
#'   ...), `obs` (data.frame with `true_t`, rounded to 2 decimals as upstream) and `var`
#'   (data.frame with `true_t_`, `true_alpha`, `true_beta`, `true_gamma`, `true_scaling`),
#'   and `t` (the unrounded cell times).
#' @examples
#' sim <- simulate_velocity(n_obs = 50, n_vars = 3, random_seed = 1)
#' sim$var
#' @export
simulate_velocity <- function(n_obs = 300, n_vars = NULL, alpha = 5, beta = 0.5, gamma = 0.3,
                              alpha_ = 0, t_max = NULL, noise_model = "normal",
                              noise_level = 1, switches = NULL, random_seed = 0) {
  check_number(n_obs, "n_obs", min = 2, whole = TRUE)
  check_number(n_vars, "n_vars", min = 1, whole = TRUE, allow_null = TRUE)
  for (a in c("alpha", "beta", "gamma", "noise_level")) {
    v <- get(a)
    if (!is.numeric(v) || !length(v) || anyNA(v) || any(!is.finite(v)) || any(v < 0)) {
      stopf("'%s' must be non-negative finite numbers", a)
    }
  }
  check_number(alpha_, "alpha_", min = 0)
  check_number(t_max, "t_max", min = 0, min_open = TRUE, allow_null = TRUE)
  check_string(noise_model, "noise_model")
  if (!noise_model %in% c("normal", "gillespie")) {
    stopf("'noise_model' must be \"normal\" or \"gillespie\", not '%s'", noise_model)
  }
  check_number(random_seed, "random_seed", min = 0, max = 2^32 - 1, whole = TRUE)
  if (!is.null(switches) && (!is.numeric(switches) || !length(switches) || anyNA(switches) ||
                               any(switches <= 0) || any(switches > 1))) {
    stopf("'switches' must be numbers in (0, 1]")
  }
  n_obs <- as.integer(n_obs)
  U0 <- .Call(C_scnative_velocity_mt, as.double(random_seed), as.double(n_obs - 1L), 0L)
  t <- c(0, cumsum(-0.1 * log(U0)))
  if (!is.null(t_max)) t <- t * (t_max / max(t))
  t_max <- max(t)
  cyc <- function(x, n) if (is.null(n)) x else rep(x, ceiling(n / length(x)))
  sw <- cyc(if (is.null(switches)) c(0.4, 0.7, 1, 0.1) else switches, n_vars)
  t_sw <- vapply(sw, function(f) max(t[t < f * t_max]), numeric(1))
  nl <- if (length(noise_level) > 1L) cyc(noise_level, n_vars %||% length(sw)) else
    rep(noise_level, n_vars %||% length(sw))
  nv <- if (is.null(n_vars)) min(length(sw), length(nl)) else as.integer(n_vars)
  per_gene <- function(x, i) if (length(x) > 1L && length(x) != n_obs) x[i] else x
  U <- S <- matrix(0, n_obs, nv)
  if (noise_model == "normal") {
    z <- .Call(C_scnative_velocity_mt, as.double(random_seed), as.double(2 * n_obs * nv), 1L)
  } else {
    z <- .Call(C_scnative_velocity_mt, as.double(random_seed), as.double(n_obs * nv), 2L)
  }
  zpos <- 0
  for (i in seq_len(nv)) {
    ai <- per_gene(alpha, i)
    bi <- per_gene(beta, i)
    gi <- per_gene(gamma, i)
    ts <- t_sw[i]
    o <- as.integer(t < ts)
    tau <- t * o + (t - ts) * (1 - o)
    u0s <- ode_u(ts, 0, ai, bi)
    s0s <- ode_s(ts, 0, 0, ai, bi, gi)
    u0v <- 0 * o + u0s * (1 - o)
    s0v <- 0 * o + s0s * (1 - o)
    av <- ai * o + alpha_ * (1 - o)
    if (noise_model == "gillespie") {
      uu <- numeric(n_obs)
      ss <- numeric(n_obs)
      b1 <- beta[1L]
      g1 <- gamma[1L]
      for (c in seq_len(n_obs)) {
        up <- if (c > 1L) uu[c - 1L] else 0
        sp <- if (c > 1L) ss[c - 1L] else 0
        du <- 0
        ds <- 0
        if (!(av[c] == 0 && up == 0 && sp == 0)) {
          props <- c(av[c], b1 * up, g1 * sp)
          tot <- sum(props)
          if (tot > 0) props <- props / tot
          cs <- cumsum(props)
          zpos <- zpos + 1
          p <- z[zpos]
          j <- 1L
          while (j <= 3L && p > cs[j]) j <- j + 1L
          du <- c(1, -1, 0, 0)[j]
          ds <- c(0, 1, -1, 0)[j]
        }
        uu[c] <- up + du
        ss[c] <- sp + ds
      }
      U[, i] <- pmax(uu, 0)
      S[, i] <- pmax(ss, 0)
    } else {
      ut <- ode_u(tau, u0v, av, bi)
      st <- ode_s(tau, s0v, u0v, av, bi, gi)
      sdu <- nl[i] * np_percentile(ut, 99) / 10
      ut <- ut + sdu * z[zpos + seq_len(n_obs)]
      zpos <- zpos + n_obs
      sds <- nl[i] * np_percentile(st, 99) / 10
      st <- st + sds * z[zpos + seq_len(n_obs)]
      zpos <- zpos + n_obs
      U[, i] <- pmax(ut, 0)
      S[, i] <- pmax(st, 0)
    }
  }
  genes <- as.character(seq_len(nv) - 1L)
  cells <- as.character(seq_len(n_obs) - 1L)
  scal <- function(x) if (length(x) > 1L && length(x) == n_obs) NA_real_ else x
  rate <- function(x) {
    x <- scal(x)
    if (length(x) > 1L) x[seq_len(nv)] else rep(x, nv)
  }
  var <- data.frame(true_t_ = t_sw[seq_len(nv)], true_alpha = rate(alpha),
                    true_beta = rate(beta), true_gamma = rate(gamma),
                    true_scaling = rep(1, nv), row.names = genes)
  obs <- data.frame(true_t = round(t, 2), row.names = cells)
  list(spliced = matrix(t(S), nv, n_obs, dimnames = list(genes, cells)),
       unspliced = matrix(t(U), nv, n_obs, dimnames = list(genes, cells)),
       obs = obs, var = var, t = t)
}
