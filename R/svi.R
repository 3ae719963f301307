# The SVI pieces shared by cell2location's two models (the spatial mapping model in
# cell2location.R and the reference regression model in reference.R); the C side is svi.c.

# Runs `epochs` epochs by calling run(k, done) -> the k epochs' losses, in blocks of about half a
# second each so that Ctrl-C and the progress display respond. `early_stop`: NULL or the
# settings of svi_check_early_stop(); the criterion is evaluated epoch by epoch on the losses,
# and no block runs past the earliest epoch at which it could fire (svi_es_horizon), so the
# stopping epoch depends only on the losses (the seed), never on the block sizes (timing), and
# the state is exactly that of a fixed run of that many epochs. Returns list(loss, interrupted,
# early_stop = the record of svi_es_record() or NULL); on an interrupt the losses of the
# finished blocks are kept.
svi_train_blocks <- function(run, epochs, progress, label, early_stop = NULL) {
  loss <- rep(NA_real_, epochs)
  done <- 0L
  block <- 1L
  es <- if (is.null(early_stop)) NULL else svi_es_start(early_stop)
  pb <- if (progress) svi_progress_start(epochs, label, early_stop$window %||% 100L) else NULL
  interrupted <- FALSE
  tryCatch({
    while (done < epochs) {
      k <- min(block, epochs - done)
      if (!is.null(es)) k <- min(k, svi_es_horizon(es))
      t0 <- proc.time()[["elapsed"]]
      loss[done + seq_len(k)] <- run(k, done)
      done <- done + k
      el <- proc.time()[["elapsed"]] - t0
      block <- max(1L, min(1000L, as.integer(k * 0.5 / max(el, 1e-3))))
      if (!is.null(es)) es <- svi_es_update(es, loss, done)
      if (!is.null(pb)) pb <- svi_progress_update(pb, loss, done)
      if (.Call(C_scnative_interrupt_pending)) { # Ctrl-C during the block
        interrupted <- TRUE
        break
      }
      if (!is.null(es) && es$stopped) {
        # cannot happen (the horizon caps each block); it would mean extra epochs were run
        if (es$seen != done) stopf("%s: internal error: early stop inside a block", label)
        break
      }
    }
  }, interrupt = function(cond) {
    interrupted <<- TRUE
  })
  if (!is.null(pb)) svi_progress_end(pb, loss, done, es)
  if (done < epochs) loss <- loss[seq_len(done)]
  if (interrupted) {
    warnf("%s: training interrupted after %d of %d epochs; returning the fit so far", label,
          done, epochs)
  }
  list(loss = loss, interrupted = interrupted,
       early_stop = if (is.null(es)) NULL else svi_es_record(es, done, epochs, interrupted))
}

# ---- early stopping ------------------------------------------------------------------------

# Defaults of `early_stop = TRUE` (chosen on simulated data, see bench/cell2location_early_stop.R
# and ?cell2location): the -ELBO averaged over `window` epochs must fall by more than
# `min_delta` (relative) below its best value within `patience` epochs.
svi_early_stop_defaults <- list(patience = 1000L, min_delta = 5e-4, window = 200L)

# `early_stop` as given by the user (FALSE, TRUE, or a list with some of patience, min_delta,
# window) -> NULL (off) or the complete settings.
svi_check_early_stop <- function(early_stop, arg = "early_stop") {
  if (is.logical(early_stop) && length(early_stop) == 1L && !is.na(early_stop) &&
      is.null(attributes(early_stop))) {
    return(if (early_stop) svi_early_stop_defaults else NULL)
  }
  if (!is.list(early_stop) || is.object(early_stop)) {
    stopf("'%s' must be TRUE, FALSE or a list(patience =, min_delta =, window =)", arg)
  }
  nm <- names(early_stop)
  if (length(early_stop) && (is.null(nm) || any(!nzchar(nm)) || anyDuplicated(nm))) {
    stopf("'%s' must be a list with named elements (patience, min_delta, window)", arg)
  }
  unknown <- setdiff(nm, names(svi_early_stop_defaults))
  if (length(unknown)) {
    stopf("'%s' has unknown element(s) %s; allowed: patience, min_delta, window", arg,
          paste(sprintf("'%s'", unknown), collapse = ", "))
  }
  s <- svi_early_stop_defaults
  s[names(early_stop)] <- early_stop
  check_number(s$patience, sprintf("%s$patience", arg), min = 1, whole = TRUE)
  check_number(s$min_delta, sprintf("%s$min_delta", arg), min = 0, max = 1)
  check_number(s$window, sprintf("%s$window", arg), min = 1, whole = TRUE)
  list(patience = as.integer(s$patience), min_delta = as.double(s$min_delta),
       window = as.integer(s$window))
}

# The criterion's state over the epochs of one training call (epoch i = 1, 2, ... of the call):
# from epoch `window` on, the smoothed loss s_i = mean(loss[i - window + 1 .. i]); s_i is an
# improvement when s_i < best - min_delta * |best| (the first s_i always is); training stops at
# the first epoch i with i - best_epoch >= patience.
svi_es_start <- function(settings) {
  c(settings, list(seen = 0L, best = NA_real_, best_epoch = NA_integer_, stopped = FALSE))
}

# Epochs that may still run before the criterion could fire (>= 1 while not stopped).
svi_es_horizon <- function(es) {
  (if (is.na(es$best_epoch)) es$window else es$best_epoch) + es$patience - es$seen
}

# Feeds the losses of epochs seen+1 .. done (loss holds the whole call's losses).
svi_es_update <- function(es, loss, done) {
  w <- es$window
  for (i in seq.int(es$seen + 1L, length.out = done - es$seen)) {
    if (i < w) next
    s <- sum(loss[(i - w + 1L):i]) / w
    if (is.na(es$best_epoch) ||
        (is.finite(s) && (!is.finite(es$best) || s < es$best - es$min_delta * abs(es$best)))) {
      es$best <- s
      es$best_epoch <- i
    } else if (i - es$best_epoch >= es$patience) {
      es$seen <- i
      es$stopped <- TRUE
      return(es)
    }
  }
  es$seen <- done
  es
}

# What the fit records: the settings, whether and when it stopped, the best smoothed loss.
svi_es_record <- function(es, done, epochs, interrupted) {
  reason <- if (es$stopped) "converged" else if (interrupted) "interrupted" else "max_epochs"
  list(patience = es$patience, min_delta = es$min_delta, window = es$window,
       stopped = es$stopped, reason = reason, epochs = as.integer(done),
       max_epochs = as.integer(epochs), best_epoch = es$best_epoch, best_elbo = es$best)
}

# One line for print methods.
svi_es_format <- function(es) {
  what <- switch(es$reason,
    converged = sprintf("stopped after %d of %d epochs: no relative improvement > %g of the mean -ELBO over %d epochs in %d epochs",
                        es$epochs, es$max_epochs, es$min_delta, es$window, es$patience),
    max_epochs = sprintf("did not stop: ran all %d epochs (patience %d, min_delta %g, window %d)",
                         es$max_epochs, es$patience, es$min_delta, es$window),
    interrupted = sprintf("interrupted after %d of %d epochs", es$epochs, es$max_epochs))
  sprintf("  early stopping: %s\n", what)
}

# ---- progress ------------------------------------------------------------------------------

# A progress display for svi_train_blocks: epochs done, epochs/s, the -ELBO averaged over the
# last `window` epochs, the time left (an upper bound with early stopping). Interactively one
# line updated in place (\r); otherwise a line when another tenth of the epochs is done.
svi_progress_start <- function(epochs, label, window) {
  list(epochs = epochs, label = label, window = window, t0 = proc.time()[["elapsed"]],
       live = interactive(), next_report = 0.1, width = 0L)
}

svi_progress_line <- function(pb, loss, done) {
  el <- proc.time()[["elapsed"]] - pb$t0
  rate <- done / max(el, 1e-6)
  sm <- mean(loss[max(1L, done - pb$window + 1L):done])
  left <- (pb$epochs - done) / max(rate, 1e-9)
  sprintf("%s: epoch %d/%d (%d%%), %.3g epochs/s, mean -ELBO (last %d) %.6g, %s left",
          pb$label, done, pb$epochs, as.integer(floor(100 * done / pb$epochs)), rate,
          min(pb$window, done), sm, svi_format_seconds(left))
}

svi_progress_update <- function(pb, loss, done) {
  if (done < 1L) return(pb)
  if (pb$live) {
    line <- svi_progress_line(pb, loss, done)
    message("\r", formatC(line, width = -pb$width), appendLF = FALSE)
    pb$width <- max(pb$width, nchar(line))
  } else if (done / pb$epochs >= pb$next_report && done < pb$epochs) {
    message(svi_progress_line(pb, loss, done))
    pb$next_report <- (floor(10 * done / pb$epochs) + 1) / 10
  }
  pb
}

svi_progress_end <- function(pb, loss, done, es) {
  el <- proc.time()[["elapsed"]] - pb$t0
  if (pb$live) message("")
  if (done < 1L) return(invisible())
  msg <- sprintf("%s: %d epochs in %s (%.3g epochs/s), mean -ELBO (last %d) %.6g", pb$label,
                 done, svi_format_seconds(el), done / max(el, 1e-6), min(pb$window, done),
                 mean(loss[max(1L, done - pb$window + 1L):done]))
  if (!is.null(es) && es$stopped) {
    msg <- sprintf("%s; stopped early (%d of %d epochs)", msg, done, pb$epochs)
  }
  message(msg)
}

svi_format_seconds <- function(s) {
  if (!is.finite(s)) return("?")
  s <- round(s)
  if (s < 60) return(sprintf("%ds", s))
  if (s < 3600) return(sprintf("%dm %02ds", s %/% 60, s %% 60))
  sprintf("%dh %02dm", s %/% 3600, (s %% 3600) %/% 60)
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
