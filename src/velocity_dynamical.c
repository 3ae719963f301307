/* velocity_dynamical.c: the velocities of the dynamical model (scVelo's tl.velocity with
 * mode = "dynamical"), every fitted gene in one call, genes in parallel (spec: scVelo dynamics,
 * tl.velocity, dynamical mode; the closed-form solution of section 5.1).
 *
 * Per gene, over all cells: the state distances of both branches and of the two steady states,
 * the "chi" variance of the nearer branch, the four distances smoothed over the row-normalised
 * neighbour graph, the most likely state of each cell, its time (smoothed over the graph), the
 * model re-evaluated at that time and the velocities clipped at -s and -u * scaling. Every
 * expression is evaluated in the order the R reference (dyn_state_distances() and the R loop it
 * replaced) evaluates it, NaN/NA propagation included, so results do not depend on the thread
 * count or on how genes are chunked. */
#include "scnative.h"

/* the per-gene inputs, prepared in R (scaled as upstream scales them) */
typedef struct {
  const double *alpha, *beta, *gamma, *t_, *scaling, *std_u, *std_s, *u0b, *s0b;
} vd_par;

/* closed-form solution (spec 5.1), R's evaluation order */
static inline double vd_ode_u(double tau, double u0, double a, double b) {
  double eu = exp(-b * tau);
  return u0 * eu + (a / b) * (1 - eu);
}

static inline double vd_ode_s(double tau, double s0, double u0, double a, double b, double g) {
  double eu = exp(-b * tau), es = exp(-g * tau), gb = g - b;
  double inv = (1 / gb) * (double)(gb != 0);   /* NaN when g == b, as the R reference */
  double cc = (a - u0 * b) * inv;
  return ((s0 * es) + (a / g) * (1 - es)) + cc * (es - eu);
}

/* R's pmax(a, b) for two doubles: NA/NaN when either is */
static inline double vd_pmax(double a, double b) {
  if (ISNAN(a)) return a;
  if (ISNAN(b)) return b;
  return a >= b ? a : b;
}

/* out[i] = sum over row i of the graph (column i of its transpose Ct) of weight * m[j] */
static void vd_smooth(int n, const int *cp, const int *ci, const double *cx, const double *m,
                      double *out) {
  for (int i = 0; i < n; i++) {
    double acc = 0.0;
    for (int e = cp[i]; e < cp[i + 1]; e++) acc += cx[e] * m[ci[e]];
    out[i] = acc;
  }
}

/* One gene: u, s its (scaled) moments over the n cells, tau, tau_ its fitted times; vt, wt
 * receive the velocities. w: scratch of 11 n doubles. */
static void vd_gene(int q, const vd_par *P, int n, const double *u, const double *s,
                    const double *tau, const double *tau_, const int *cp, const int *ci,
                    const double *cx, double *w, double *vt, double *wt) {
  double alpha = P->alpha[q], beta = P->beta[q], gamma = P->gamma[q], t_ = P->t_[q];
  double scaling = P->scaling[q], std_u = P->std_u[q], std_s = P->std_s[q];
  int connect = cp != NULL;
  double *m[4], *res[4];
  for (int j = 0; j < 4; j++) {
    m[j] = w + (size_t)j * n;
    res[j] = connect ? w + (size_t)(4 + j) * n : m[j];
  }
  double *t = w + (size_t)8 * n, *ts = w + (size_t)9 * n, *kk = w + (size_t)10 * n;
  double u0_ = vd_ode_u(t_, 0, alpha, beta);
  double s0_ = vd_ode_s(t_, 0, 0, alpha, beta, gamma);
  long double sum1 = 0, sum2 = 0;   /* as R's rowMeans() accumulates */
  for (int i = 0; i < n; i++) {
    double ut = vd_ode_u(tau[i], 0, alpha, beta), st = vd_ode_s(tau[i], 0, 0, alpha, beta, gamma);
    double ut_ = vd_ode_u(tau_[i], u0_, 0, beta), st_ = vd_ode_s(tau_[i], s0_, u0_, 0, beta, gamma);
    double distu = (u[i] - ut) / std_u, distu_ = (u[i] - ut_) / std_u;
    double dists = (s[i] - st) / std_s, dists_ = (s[i] - st_) / std_s;
    double distx = distu * distu + dists * dists, distx_ = distu_ * distu_ + dists_ * dists_;
    double a1 = (u[i] - alpha / beta) / std_u, a2 = (s[i] - alpha / gamma) / std_s;
    double b1 = u[i] / std_u, b2 = s[i] / std_s;
    m[0][i] = distx_;
    m[1][i] = distx;
    m[2][i] = b1 * b1 + b2 * b2;
    m[3][i] = a1 * a1 + a2 * a2;
    double dist, dd;
    if (ISNAN(distx) || ISNAN(distx_)) {   /* ifelse() on an NA condition */
      dist = NA_REAL;
      dd = NA_REAL;
    } else if (distx < distx_) {
      dist = distx;
      dd = dists;
    } else {
      dist = distx_;
      dd = dists_;
    }
    double sgn = ISNAN(dd) ? dd : (double)((dd > 0) - (dd < 0));
    sum1 += dist;
    sum2 += sgn * sqrt(dist);
  }
  double mean2 = (double)(sum2 / n);
  double varx = (double)(sum1 / n) - mean2 * mean2;
  if (connect) {
    for (int j = 0; j < 4; j++) vd_smooth(n, cp, ci, cx, m[j], res[j]);
  }
  /* the most likely state: 0 repression, 1 induction, 2 and 3 the steady states, 4 none */
  double sdx = sqrt(varx > 0 ? varx : 0);
  int have = varx > 0;   /* no variance (a constant gene): no likelihood (upstream: NaN) */
  double c = 1 / (2 * M_PI * sdx);
  for (int i = 0; i < n; i++) {
    int k = 4;
    double best = 1e-6;
    if (have) {
      for (int j = 3; j >= 0; j--) {
        double lik = c * exp(-0.5 * (res[j][i] / varx));
        if (!ISNAN(lik) && lik >= best) {
          best = lik;
          k = j;
        }
      }
    }
    kk[i] = k;
    t[i] = tau[i] * (double)(k == 1) + (tau_[i] + t_) * (double)(k == 0);
  }
  if (connect) vd_smooth(n, cp, ci, cx, t, ts);
  for (int i = 0; i < n; i++) {
    int k = (int)kk[i];
    double ut, st, av;
    if (connect) {
      double tt = ts[i];
      double on = (double)(k < 2 && tt < t_), off = (double)(k < 2 && tt >= t_);
      double o2 = (double)(tt < t_);
      double tau2 = tt * o2 + (tt - t_) * (1 - o2);
      double u0v = 0 * o2 + u0_ * (1 - o2), s0v = 0 * o2 + s0_ * (1 - o2);
      av = alpha * o2 + 0 * (1 - o2);
      ut = vd_ode_u(tau2, u0v, av, beta);
      st = vd_ode_s(tau2, s0v, u0v, av, beta, gamma);
      ut = ut * on + ut * off;
      st = st * on + st * off;
      av = av * on;
    } else {
      double on = (double)(k == 1), off = (double)(k == 0);
      ut = vd_ode_u(tau[i], 0, alpha, beta) * on + vd_ode_u(tau_[i], u0_, 0, beta) * off;
      st = vd_ode_s(tau[i], 0, 0, alpha, beta, gamma) * on +
           vd_ode_s(tau_[i], s0_, u0_, 0, beta, gamma) * off;
      av = alpha * on;
    }
    double v = ut * beta - st * gamma;
    double wv = (av - beta * ut) * scaling;
    vt[i] = vd_pmax(v, -s[i]);
    wt[i] = vd_pmax(wv, -u[i] * scaling);
  }
}

/* Genes in blocks of VD_BLOCK rows, read cell by cell (one cache line holds 8 neighbouring
 * genes of a cell), so the gene-major buffers are filled without a strided pass per gene. */
#define VD_BLOCK 8

static void vd_run(const vd_par *P, int basal, int G, int n, int ng, const int *g0,
                   const double *Ms, const double *Mu, const double *Tau, const double *Tau_,
                   const int *cp, const int *ci, const double *cx, double *vt, double *wt,
                   int nth, int *failed) {
  int nblocks = (ng + VD_BLOCK - 1) / VD_BLOCK;
#pragma omp parallel num_threads(nth)
  {
    size_t bn = (size_t)VD_BLOCK * n;
    double *buf = malloc(sizeof(double) * (bn * 6 + (size_t)11 * n));
    if (!buf) {
#pragma omp atomic write
      *failed = 1;
    }
#pragma omp for schedule(dynamic, 1)
    for (int b = 0; b < nblocks; b++) {
      if (!buf) continue;
      int q0 = b * VD_BLOCK, nb = ng - q0 < VD_BLOCK ? ng - q0 : VD_BLOCK;
      double *u = buf, *s = buf + bn, *ta = buf + 2 * bn, *ta_ = buf + 3 * bn;
      double *ov = buf + 4 * bn, *ow = buf + 5 * bn, *w = buf + 6 * bn;
      for (int i = 0; i < n; i++) {
        for (int r = 0; r < nb; r++) {
          int q = q0 + r;
          size_t at = (size_t)i * G + g0[q];
          double uu = (double)(float)(Mu[at] / P->scaling[q]);  /* upstream's float32 Mu / scaling */
          double ss = Ms[at];
          if (basal) {
            uu = uu - P->u0b[q];
            ss = ss - P->s0b[q];
          }
          u[(size_t)r * n + i] = uu;
          s[(size_t)r * n + i] = ss;
          ta[(size_t)r * n + i] = Tau[at];
          ta_[(size_t)r * n + i] = Tau_[at];
        }
      }
      for (int r = 0; r < nb; r++) {
        size_t o = (size_t)r * n;
        vd_gene(q0 + r, P, n, u + o, s + o, ta + o, ta_ + o, cp, ci, cx, w, ov + o, ow + o);
      }
      for (int i = 0; i < n; i++) {
        for (int r = 0; r < nb; r++) {
          vt[(size_t)i * ng + q0 + r] = ov[(size_t)r * n + i];
          wt[(size_t)i * ng + q0 + r] = ow[(size_t)r * n + i];
        }
      }
    }
    free(buf);
  }
}

static const double *vd_matrix(SEXP x, const char *what, int G, int n) {
  if (!isReal(x) || !isMatrix(x) || nrows(x) != G || ncols(x) != n) {
    error(_("'%s' must be a %d x %d double matrix"), what, G, n);
  }
  return REAL(x);
}

/* Ms, Mu, tau, tau_: genes x cells double matrices (all genes); g: 1-based rows of the fitted
 * genes; par: list of the nine per-gene vectors (length(g) each) alpha, beta (times scaling),
 * gamma, t_, scaling, std_u (divided by scaling), std_s, u0 (divided by scaling), s0; basal:
 * subtract u0, s0; cp, ci, cx: the slots of t(C) for the normalised graph C (cells x cells), or
 * NULL for no smoothing. Returns list(vt, wt), length(g) x cells each. */
SEXP scnative_velocity_dynamical(SEXP Ms_, SEXP Mu_, SEXP tau_m, SEXP tau__m, SEXP g_,
                                 SEXP par_, SEXP basal_, SEXP cp_, SEXP ci_, SEXP cx_,
                                 SEXP threads_) {
  if (!isReal(Ms_) || !isMatrix(Ms_)) error(_("'%s' must be a double matrix"), "Ms");
  int G = nrows(Ms_), n = ncols(Ms_);
  const double *Ms = vd_matrix(Ms_, "Ms", G, n), *Mu = vd_matrix(Mu_, "Mu", G, n);
  const double *Tau = vd_matrix(tau_m, "fit_tau", G, n), *Tau_ = vd_matrix(tau__m, "fit_tau_", G, n);
  if (!isInteger(g_)) error(_("'%s' must be an integer vector"), "g");
  int ng = LENGTH(g_);
  const int *g1 = INTEGER(g_);
  for (int q = 0; q < ng; q++) {
    if (g1[q] == NA_INTEGER || g1[q] < 1 || g1[q] > G) error(_("'%s' holds a row outside 1..%d"), "g", G);
  }
  static const char *names[9] = {"alpha", "beta", "gamma", "t_", "scaling", "std_u", "std_s",
                                 "u0", "s0"};
  if (!isNewList(par_) || LENGTH(par_) != 9) error(_("'%s' must be a list of 9 vectors"), "par");
  const double *pv[9];
  for (int j = 0; j < 9; j++) {
    SEXP v = VECTOR_ELT(par_, j);
    if (!isReal(v) || LENGTH(v) != ng) error(_("'par$%s' must be a double vector of length %d"), names[j], ng);
    pv[j] = REAL(v);
  }
  vd_par P = {pv[0], pv[1], pv[2], pv[3], pv[4], pv[5], pv[6], pv[7], pv[8]};
  int basal = asLogical(basal_) == TRUE;
  const int *cp = NULL, *ci = NULL;
  const double *cx = NULL;
  if (!isNull(cp_)) {
    if (!isInteger(cp_) || LENGTH(cp_) != n + 1 || !isInteger(ci_) || !isReal(cx_) ||
        LENGTH(ci_) != LENGTH(cx_)) {
      error(_("'%s' is not a valid %d x %d sparse matrix"), "connectivities", n, n);
    }
    cp = INTEGER(cp_);
    ci = INTEGER(ci_);
    cx = REAL(cx_);
    if (cp[0] != 0 || cp[n] != LENGTH(ci_)) error(_("'%s' is not a valid %d x %d sparse matrix"), "connectivities", n, n);
    for (int i = 0; i < n; i++) {
      if (cp[i + 1] < cp[i]) error(_("'%s' is not a valid %d x %d sparse matrix"), "connectivities", n, n);
    }
    for (int e = 0; e < cp[n]; e++) {
      if (ci[e] < 0 || ci[e] >= n) error(_("'%s' is not a valid %d x %d sparse matrix"), "connectivities", n, n);
    }
  }
  int *g0 = (int *)R_alloc(ng > 0 ? ng : 1, sizeof(int));
  for (int q = 0; q < ng; q++) g0[q] = g1[q] - 1;
  SEXP vt = PROTECT(allocMatrix(REALSXP, ng, n));
  SEXP wt = PROTECT(allocMatrix(REALSXP, ng, n));
  int failed = 0;
  if (ng > 0 && n > 0) {
    int nth = scn_threads_for((ng + VD_BLOCK - 1) / VD_BLOCK, asInteger(threads_));
    vd_run(&P, basal, G, n, ng, g0, Ms, Mu, Tau, Tau_, cp, ci, cx, REAL(vt), REAL(wt), nth,
           &failed);
  }
  if (failed) error(_("cannot allocate the work space of velocity()"));
  SEXP out = PROTECT(allocVector(VECSXP, 2));
  SET_VECTOR_ELT(out, 0, vt);
  SET_VECTOR_ELT(out, 1, wt);
  SEXP nm = PROTECT(allocVector(STRSXP, 2));
  SET_STRING_ELT(nm, 0, mkChar("vt"));
  SET_STRING_ELT(nm, 1, mkChar("wt"));
  setAttrib(out, R_NamesSymbol, nm);
  UNPROTECT(4);
  return out;
}
