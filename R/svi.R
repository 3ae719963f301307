# The SVI pieces shared by cell2location's two models (the spatial mapping model in
# cell2location.R and the reference regression model in reference.R); the C side is svi.c.

# Runs `epochs` epochs by calling run(k, done) -> the k epochs' losses, in blocks of about half a
# second each so that Ctrl-C and the progress bar respond. Returns list(loss, interrupted); on
# an interrupt the losses of the finished blocks are kept.
svi_train_blocks <- function(run, epochs, progress, label) {
  loss <- rep(NA_real_, epochs)
  done <- 0L
  block <- 1L
  pb <- NULL
  if (progress) {
    pb <- utils::txtProgressBar(min = 0, max = epochs, style = 3)
    on.exit(close(pb), add = TRUE)
  }
  interrupted <- FALSE
  tryCatch({
    while (done < epochs) {
      k <- min(block, epochs - done)
      t0 <- proc.time()[["elapsed"]]
      loss[done + seq_len(k)] <- run(k, done)
      done <- done + k
      el <- proc.time()[["elapsed"]] - t0
      block <- max(1L, min(1000L, as.integer(k * 0.5 / max(el, 1e-3))))
      if (!is.null(pb)) utils::setTxtProgressBar(pb, done)
      if (.Call(C_scnative_interrupt_pending)) { # Ctrl-C during the block
        interrupted <- TRUE
        break
      }
    }
  }, interrupt = function(cond) {
    interrupted <<- TRUE
  })
  if (interrupted) {
    loss <- loss[seq_len(done)]
    warnf("%s: training interrupted after %d of %d epochs; returning the fit so far", label,
          done, epochs)
  }
  list(loss = loss, interrupted = interrupted)
}

# Appends the epochs' losses to a history data.frame (epoch, elbo_train) as upstream's logger.
svi_history_append <- function(history, loss) {
  epoch0 <- nrow(history)
  rbind(history, data.frame(epoch = epoch0 + seq_along(loss) - 1L, elbo_train = loss))
}

svi_empty_history <- function() data.frame(epoch = integer(0), elbo_train = numeric(0))

# Flat guide vectors <-> a named list of list(loc, rho) matrices (one per site).
svi_params_from_flat <- function(loc, rho, unflatten) {
  locs <- unflatten(loc)
  rhos <- unflatten(rho)
  stats::setNames(lapply(names(locs), function(n) list(loc = locs[[n]], rho = rhos[[n]])),
                  names(locs))
}

# Upstream's name of a quantile summary: 0.05 -> "q05", 0.5 -> "q50", 0.975 -> "q975".
svi_qname <- function(q) {
  s <- sub("^0\\.", "", format(q, scientific = FALSE, drop0trailing = TRUE))
  if (nchar(s) == 1L) s <- paste0(s, "0")
  paste0("q", s)
}

svi_check_quantiles <- function(quantiles) {
  if (!is.numeric(quantiles) || length(quantiles) < 1L || anyNA(quantiles) ||
      any(quantiles <= 0 | quantiles >= 1)) {
    stopf("'quantiles' must be probabilities strictly between 0 and 1")
  }
  invisible(quantiles)
}

# Analytic quantiles of every site of the AutoNormal guide: exp(loc + sigma * qnorm(q)).
svi_guide_quantiles <- function(params, q) {
  lapply(params, function(s) {
    sg <- ifelse(s$rho > 20, s$rho, log1p(exp(s$rho)))
    m <- exp(s$loc + sg * stats::qnorm(q))
    dimnames(m) <- dimnames(s$loc)
    m
  })
}

# Monte-Carlo summaries of one site (stream = 100 + its index): mean, sd (ddof 0), quantiles;
# `mult`/`mcol`: each draw multiplied by mult[draw, mcol[element]] (deterministic sites).
svi_site_summary <- function(j, s, num, seed, quantiles, threads, mult = NULL, mcol = NULL) {
  r <- .Call(C_scnative_svi_summary, as.double(s$loc), as.double(s$rho), as.integer(num), seed,
             as.double(100 + j), as.double(quantiles), mult,
             if (is.null(mcol)) NULL else as.integer(mcol), threads)
  shape <- function(v) {
    m <- matrix(v, nrow(s$loc), ncol(s$loc))
    dimnames(m) <- dimnames(s$loc)
    m
  }
  list(mean = shape(r[[1]]), sd = shape(r[[2]]),
       q = lapply(seq_along(quantiles), function(k) shape(r[[3]][, k])))
}

# The draws of site j (the same numbers as svi_site_summary's): num x elements.
svi_site_draws <- function(j, s, num, seed) {
  .Call(C_scnative_svi_draws, as.double(s$loc), as.double(s$rho), as.integer(num), seed,
        as.double(100 + j))
}

# Summaries -> the posterior list layout shared by both models: means, stds, q05, ...
svi_posterior_lists <- function(res, quantiles) {
  out <- list(means = lapply(res, `[[`, "mean"), stds = lapply(res, `[[`, "sd"))
  qn <- vapply(quantiles, svi_qname, "")
  for (k in seq_along(quantiles)) out[[qn[k]]] <- lapply(res, function(r) r$q[[k]])
  out
}

# The optimiser settings of a fit from the user's arguments.
svi_optimizer <- function(optimizer, lr, dots) {
  clip <- dots$clip_norm %||% 10
  lrd <- dots$lrd %||% 1
  check_number(lr, "lr", min = 0, min_open = TRUE)
  check_number(clip, "clip_norm", min = 0, min_open = TRUE)
  check_number(lrd, "lrd", min = 0, min_open = TRUE)
  list(name = optimizer, lr = lr, clip_norm = clip, lrd = lrd)
}

# Test helper: n x T parameters after T optimiser steps with the given gradients.
svi_adam_steps <- function(theta0, grads, lr, clipped = FALSE, clip = 10, lrd = 1) {
  .Call(C_scnative_svi_adam, as.double(theta0), grads + 0, as.double(lr), as.integer(clipped),
        as.double(clip), as.double(lrd))
}

#' Plot the training loss of a cell2location fit
#'
#' The -ELBO loss against the epoch, as upstream's `plot_history()`, for a spatial mapping fit
#' ([cell2location()]) or a reference signature fit ([reference_signatures()]).
#'
#' @param x a `scnative_c2l` or `scnative_reference` fit.
#' @param iter_start first epoch to show (0-based, as upstream).
#' @param iter_end last epoch to show (`-1`: the end).
#' @param ... unused.
#' @return A ggplot object (if ggplot2 is installed), otherwise `NULL` invisibly after drawing
#'   with base graphics.
#' @examples
#' set.seed(1)
#' sig <- matrix(rgamma(40 * 3, 1), 40, 3,
#'               dimnames = list(paste0("g", 1:40), c("A", "B", "C")))
#' x <- matrix(rpois(40 * 20, 2), 40, 20, dimnames = list(rownames(sig), paste0("s", 1:20)))
#' fit <- cell2location(x, sig, max_epochs = 30, seed = 1, progress = FALSE)
#' plot_history(fit, iter_start = 5)
#' @export
plot_history <- function(x, iter_start = 0, iter_end = -1, ...) {
  validate_fit(x, "x")
  check_number(iter_start, "iter_start", min = 0, whole = TRUE)
  check_number(iter_end, "iter_end", min = -1, whole = TRUE)
  h <- x$history
  end <- if (iter_end == -1) nrow(h) else min(iter_end, nrow(h))
  h <- h[h$epoch >= iter_start & h$epoch < end, , drop = FALSE]
  if (requireNamespace("ggplot2", quietly = TRUE)) {
    .data <- ggplot2::.data
    ggplot2::ggplot(h, ggplot2::aes(x = .data$epoch, y = .data$elbo_train)) +
      ggplot2::geom_line() +
      ggplot2::labs(x = "Training epochs", y = "-ELBO loss", title = "elbo_train") +
      ggplot2::theme_bw()
  } else {
    graphics::plot(h$epoch, h$elbo_train, type = "l", xlab = "Training epochs",
                   ylab = "-ELBO loss", main = "elbo_train")
    invisible(NULL)
  }
}

#' Posterior summaries of a fitted cell2location model
#'
#' As upstream's `export_posterior()`: draws `num_samples` samples from the fitted guide and
#' summarises every site (mean, standard deviation with `ddof = 0`, quantiles with linear
#' interpolation). With `use_quantiles = TRUE` the quantiles are computed analytically
#' (`exp(loc + sigma * qnorm(q))`) and means and standard deviations are not returned, as
#' upstream.
#'
#' For a spatial mapping fit ([cell2location()]) the deterministic sites `u_sf_mRNA_factors`
#' (`w_sf * sum_g signature_gf * m_g`, from joint draws) and `detection_hyp_prior_alpha` are
#' included; use [cell_abundance()] for the spots x cell types abundances. For a reference fit
#' ([reference_signatures()]) use [signatures()] for the genes x cell types signatures.
#'
#' @param fit a `scnative_c2l` or `scnative_reference` fit.
#' @param num_samples number of posterior draws (whole number >= 2).
#' @param quantiles probabilities in (0, 1).
#' @param use_quantiles `TRUE` for analytic quantiles only.
#' @param seed `NULL` or a whole number.
#' @param threads `NULL` or a number of threads.
#' @param ... unused.
#' @return A `scnative_c2l_posterior` or `scnative_reference_posterior` list: `means`, `stds`
#'   (lists of matrices per site, or `NULL` with `use_quantiles`), one list per quantile named
#'   as upstream (`q05`, `q95`), and the names of the cell types (and spots or genes).
#' @examples
#' set.seed(1)
#' sig <- matrix(rgamma(40 * 3, 1), 40, 3,
#'               dimnames = list(paste0("g", 1:40), c("A", "B", "C")))
#' x <- matrix(rpois(40 * 20, 2), 40, 20, dimnames = list(rownames(sig), paste0("s", 1:20)))
#' fit <- cell2location(x, sig, max_epochs = 30, seed = 1, progress = FALSE)
#' post <- export_posterior(fit, num_samples = 100)
#' dim(post$means$w_sf)
#' @export
export_posterior <- function(fit, num_samples = 1000, quantiles = c(0.05, 0.95),
                             use_quantiles = FALSE, seed = NULL, threads = NULL, ...) {
  UseMethod("export_posterior")
}

#' @export
export_posterior.default <- function(fit, num_samples = 1000, quantiles = c(0.05, 0.95),
                                     use_quantiles = FALSE, seed = NULL, threads = NULL, ...) {
  stopf("'fit' must be a scnative_c2l or scnative_reference fit, not %s", class(fit)[1L])
}

# The common part of both export_posterior methods: the guide sites' summaries.
svi_export <- function(params, num_samples, quantiles, use_quantiles, seed, threads) {
  check_number(num_samples, "num_samples", min = 2, whole = TRUE)
  svi_check_quantiles(quantiles)
  check_flag(use_quantiles, "use_quantiles")
  seed <- resolve_seed(seed)
  threads <- resolve_threads(threads)
  if (use_quantiles) {
    out <- list()
    for (q in quantiles) out[[svi_qname(q)]] <- svi_guide_quantiles(params, q)
    return(list(out = out, res = NULL, seed = seed, threads = threads))
  }
  res <- lapply(seq_along(params), function(j) {
    svi_site_summary(j, params[[j]], num_samples, seed, quantiles, threads)
  })
  names(res) <- names(params)
  list(out = NULL, res = res, seed = seed, threads = threads)
}
