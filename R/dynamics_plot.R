# Plots of a dynamical fit: phase portraits with the fitted trajectory and the parameter
# histograms (ggplot2, in Suggests).

# ggplot2's .data pronoun in aes()
utils::globalVariables(".data")

need_ggplot <- function() need_pkg("ggplot2", "for the plots")

#' Phase portrait of one gene with its fitted dynamics
#'
#' Plots unspliced (`Mu`) against spliced (`Ms`) moments of every cell for one gene, the
#' trajectory of the fitted model in the same (raw) units (induction from 0 to the switching
#' time `t_`, then repression; `u = scaling * U(t)`), and the steady-state line
#' `Mu = (gamma / beta) Ms`.
#'
#' @param fit A `scnative_dynamics` fit ([recover_dynamics()]).
#' @param gene A single gene name (or row number) of the fit.
#' @param Ms,Mu Genes x cells moments the fit was made on.
#' @param color `NULL` (colour cells by the gene's fitted time `fit_t`), or a vector with
#'   one value per cell (a factor or character for groups, numeric for a continuous
#'   variable such as latent time).
#' @param n_points Whole number: points along each branch of the trajectory.
#' @return A `ggplot` object (layers: cells, trajectory, steady-state line).
#' @examples
#' if (requireNamespace("ggplot2", quietly = TRUE)) {
#'   sim <- simulate_velocity(n_obs = 200, n_vars = 2)
#'   fit <- recover_dynamics(sim$spliced, sim$unspliced, var_names = "all", threads = 1,
#'                           progress = FALSE)
#'   plot_phase_portrait(fit, "0", sim$spliced, sim$unspliced)
#' }
#' @export
plot_phase_portrait <- function(fit, gene, Ms, Mu, color = NULL, n_points = 200) {
  need_ggplot()
  validate_dynamics(fit, "fit", layers = c("fit_t", "fit_tau_"))
  check_number(n_points, "n_points", min = 2, whole = TRUE)
  genes <- rownames(fit$var)
  if (is.numeric(gene) && length(gene) == 1L && gene >= 1 && gene <= length(genes)) {
    gene <- genes[gene]
  }
  check_string(gene, "gene")
  if (!gene %in% genes) stopf("'gene' = \"%s\" is not a gene of the fit", gene)
  gi <- match(gene, genes)
  Ms <- as_checked_matrix(Ms, "Ms", nonneg = TRUE)
  Mu <- as_checked_matrix(Mu, "Mu", nonneg = TRUE)
  if (!identical(dim(Ms), dim(Mu)) || !identical(dimnames(Ms), dimnames(Mu))) {
    stopf("'Ms' and 'Mu' must have the same dimensions and dimnames (genes x cells)")
  }
  if (ncol(Ms) != ncol(fit$layers$fit_t)) {
    stopf("'Ms' has %d cells but the fit has %d", ncol(Ms), ncol(fit$layers$fit_t))
  }
  rn <- rownames(Ms) %||% genes
  if (!gene %in% rn) stopf("'gene' = \"%s\" is not a row of 'Ms' and 'Mu'", gene)
  s <- as.numeric(Ms[match(gene, rn), ])
  u <- as.numeric(Mu[match(gene, rn), ])
  n_cells <- length(s)
  v <- fit$var[gi, ]
  df <- data.frame(Ms = s, Mu = u)
  if (is.null(color)) {
    df$color <- as.numeric(fit$layers$fit_t[gi, ])
    clab <- "fit_t"
  } else {
    check_color(color, n_cells)
    df$color <- if (is.character(color)) factor(color) else color
    clab <- "color"
  }
  p <- ggplot2::ggplot(df, ggplot2::aes(x = .data$Ms, y = .data$Mu)) +
    ggplot2::geom_point(ggplot2::aes(colour = .data$color), size = 1, alpha = 0.8) +
    ggplot2::labs(title = gene, x = "spliced (Ms)", y = "unspliced (Mu)", colour = clab) +
    ggplot2::theme_minimal()
  if (!is.na(v$fit_alpha)) {
    a <- v$fit_alpha
    z <- v$fit_scaling
    b <- v$fit_beta * z
    g <- v$fit_gamma
    t_ <- v$fit_t_
    u0b <- if (isTRUE(fit$uns$recover_dynamics$fit_basal_transcription)) v$fit_u0 %||% 0 else 0
    s0b <- if (isTRUE(fit$uns$recover_dynamics$fit_basal_transcription)) v$fit_s0 %||% 0 else 0
    if (is.na(u0b)) u0b <- 0
    if (is.na(s0b)) s0b <- 0
    t_on <- seq(0, t_, length.out = n_points)
    u_sw <- ode_u(t_, 0, a, b)
    s_sw <- ode_s(t_, 0, 0, a, b, g)
    tau_max <- max(c(as.numeric(fit$layers$fit_tau_[gi, ]), t_), na.rm = TRUE)
    t_off <- seq(0, tau_max, length.out = n_points)
    traj <- rbind(
      data.frame(Ms = ode_s(t_on, 0, 0, a, b, g) + s0b, Mu = z * ode_u(t_on, 0, a, b) + u0b,
                 branch = "induction"),
      data.frame(Ms = ode_s(t_off, s_sw, u_sw, 0, b, g) + s0b,
                 Mu = z * ode_u(t_off, u_sw, 0, b) + u0b, branch = "repression"))
    slope <- g / v$fit_beta
    p <- p +
      ggplot2::geom_abline(slope = slope, intercept = u0b - slope * s0b, linetype = "dashed",
                           colour = "grey40") +
      ggplot2::geom_path(data = traj, ggplot2::aes(x = .data$Ms, y = .data$Mu,
                                                   linetype = .data$branch),
                         colour = "purple", linewidth = 0.9, inherit.aes = FALSE) +
      ggplot2::labs(linetype = "fitted")
  }
  p
}

#' Fitted kinetic parameters across genes
#'
#' Histograms of the fitted rates (log10 `alpha`, `beta`, `gamma`), switching time `t_`,
#' `scaling` and `likelihood` of every fitted gene.
#'
#' @param fit A `scnative_dynamics` fit ([recover_dynamics()]).
#' @param bins Whole number of histogram bins.
#' @return A `ggplot` object (one facet per parameter).
#' @examples
#' if (requireNamespace("ggplot2", quietly = TRUE)) {
#'   sim <- simulate_velocity(n_obs = 150, n_vars = 4)
#'   fit <- recover_dynamics(sim$spliced, sim$unspliced, var_names = "all", threads = 1,
#'                           progress = FALSE)
#'   plot_dynamics_params(fit)
#' }
#' @export
plot_dynamics_params <- function(fit, bins = 30) {
  need_ggplot()
  validate_dynamics(fit, "fit", layers = character())
  check_number(bins, "bins", min = 1, whole = TRUE)
  v <- fit$var[!is.na(fit$var$fit_alpha), , drop = FALSE]
  if (!nrow(v)) stopf("'fit' has no fitted genes")
  pars <- list(`log10 alpha` = log10(v$fit_alpha), `log10 beta` = log10(v$fit_beta),
               `log10 gamma` = log10(v$fit_gamma), `t_` = v$fit_t_,
               scaling = v$fit_scaling, likelihood = v$fit_likelihood)
  df <- data.frame(parameter = factor(rep(names(pars), each = nrow(v)), levels = names(pars)),
                   value = unlist(pars, use.names = FALSE),
                   gene = rep(rownames(v), length(pars)))
  df <- df[is.finite(df$value), , drop = FALSE]
  ggplot2::ggplot(df, ggplot2::aes(x = .data$value)) +
    ggplot2::geom_histogram(bins = bins, fill = "steelblue", colour = "white") +
    ggplot2::facet_wrap(~parameter, scales = "free") +
    ggplot2::labs(x = NULL, y = "genes",
                  title = sprintf("Fitted dynamics of %d genes", nrow(v))) +
    ggplot2::theme_minimal()
}
