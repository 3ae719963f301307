/* dynamics.c: scVelo's dynamical model (tl.recover_dynamics) per gene.
 *
 * Every gene is fitted independently by the EM of the scVelo dynamics spec: weights and
 * initial estimates (spec 2), time assignment (4, in dynamics_assign.c), loss and accept rule
 * (3.1-3.2), scipy's Nelder-Mead (3.3), the stage schedule (3.4), likelihood and variance
 * (5.4).
 * The shim runs a chunk of genes in parallel (OpenMP over genes, one scratch per thread);
 * each gene's fit is sequential and deterministic, so results do not depend on threads.
 * Reductions follow numpy's order (pairwise sums, linear percentiles, first-index argmin)
 * so that trajectories track upstream's run. Two flows: upstream given float64 Ms/Mu (all in
 * double) and given float32 Ms/Mu as scVelo stores them (sh->f32; the float32 steps live in
 * dynamics_f32.c, the dtype of every step is listed there).
 */
#include "dynamics.h"

/* numpy's pairwise summation of a contiguous double array */
static double pw_sum(const double *a, ptrdiff_t n) {
  if (n < 8) {
    double res = 0.;
    for (ptrdiff_t i = 0; i < n; i++) res += a[i];
    return res;
  } else if (n <= 128) {
    double r[8];
    ptrdiff_t i;
    for (int j = 0; j < 8; j++) r[j] = a[j];
    for (i = 8; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; j++) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[i];
    return res;
  } else {
    ptrdiff_t n2 = n / 2;
    n2 -= n2 % 8;
    return pw_sum(a, n2) + pw_sum(a + n2, n - n2);
  }
}

static double np_mean(const double *a, ptrdiff_t n) { return pw_sum(a, n) / (double)n; }

/* population std (ddof 0), numpy order; tmp has room for n values */
static double np_std(const double *a, ptrdiff_t n, double *tmp) {
  double m = np_mean(a, n);
  for (ptrdiff_t i = 0; i < n; i++) {
    double d = a[i] - m;
    tmp[i] = d * d;
  }
  return sqrt(pw_sum(tmp, n) / (double)n);
}

/* per-cell values se_loss() gathers in its first pass (k-th cell of W) */
typedef struct {
  const double *o, *eu, *es, *u, *s;
  double alpha, beta, gamma, z, u0_, s0_, std_u, std_s, reg_c, ig;
  int reg;
  int f32; /* u holds the float32 array u / z; the regulariser is a float32 array */
} loss_in;

/* d_k of spec 3.1 from the gathered values, cells k0 <= k < k1; sd_out (if not NULL) gets (S - s) / std_s */
static void loss_terms(const loss_in *L, int k0, int k1, double *d, double *sd_out) {
  double b = L->beta, g = L->gamma, z = L->z;
  for (int k = k0; k < k1; k++) {
    double o = L->o[k], eu = L->eu[k], es = L->es[k];
    double u0 = 0 * o + L->u0_ * (1 - o), s0 = 0 * o + L->s0_ * (1 - o);
    double a = L->alpha * o + 0 * (1 - o);
    double U, S;
    sol_us_e(eu, es, u0, s0, a, b, g, &U, &S);
    double ud = L->f32 ? (U - L->u[k]) / L->std_u * z : (U - L->u[k] / z) / L->std_u * z;
    double sd = (S - L->s[k]) / L->std_s;
    double dd = ud * ud + sd * sd;
    if (L->reg && L->f32) { /* (gamma / beta - ratio) * s / std_s in float32 */
      float r = (float)L->reg_c * (float)L->s[k] / (float)L->std_s;
      dd += (double)(r * r);
    } else if (L->reg) {
      double r = L->reg_c * L->s[k] / L->std_s;
      dd += r * r;
    }
    d[k] = dd;
    if (sd_out) sd_out[k] = sd;
  }
}

#ifdef DYN_AVX
/* loss_terms() four cells per 256-bit lane (the same operations, no fused multiply-add);
 * returns the number of cells done */
__attribute__((target("avx"))) static int loss_terms_avx(const loss_in *L, int m, double *d) {
  __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
  __m256d b = _mm256_set1_pd(L->beta), g = _mm256_set1_pd(L->gamma), z = _mm256_set1_pd(L->z);
  __m256d al = _mm256_set1_pd(L->alpha), u0c = _mm256_set1_pd(L->u0_);
  __m256d s0c = _mm256_set1_pd(L->s0_), ig = _mm256_set1_pd(L->ig);
  __m256d su = _mm256_set1_pd(L->std_u), ss = _mm256_set1_pd(L->std_s);
  __m256d rc = _mm256_set1_pd(L->reg_c);
  __m128 rc32 = _mm_set1_ps((float)L->reg_c), ss32 = _mm_set1_ps((float)L->std_s);
  int k = 0;
  for (; k + 3 < m; k += 4) {
    __m256d o = _mm256_loadu_pd(L->o + k), eu = _mm256_loadu_pd(L->eu + k);
    __m256d es = _mm256_loadu_pd(L->es + k), x = _mm256_loadu_pd(L->s + k);
    __m256d no = _mm256_sub_pd(one, o), zo = _mm256_mul_pd(zero, o);
    __m256d u0 = _mm256_add_pd(zo, _mm256_mul_pd(u0c, no));
    __m256d s0 = _mm256_add_pd(zo, _mm256_mul_pd(s0c, no));
    __m256d a = _mm256_add_pd(_mm256_mul_pd(al, o), _mm256_mul_pd(zero, no));
    __m256d U = _mm256_add_pd(_mm256_mul_pd(u0, eu),
                              _mm256_mul_pd(_mm256_div_pd(a, b), _mm256_sub_pd(one, eu)));
    __m256d c = _mm256_mul_pd(_mm256_sub_pd(a, _mm256_mul_pd(u0, b)), ig);
    __m256d S = _mm256_add_pd(
        _mm256_add_pd(_mm256_mul_pd(s0, es),
                      _mm256_mul_pd(_mm256_div_pd(a, g), _mm256_sub_pd(one, es))),
        _mm256_mul_pd(c, _mm256_sub_pd(es, eu)));
    __m256d uk = _mm256_loadu_pd(L->u + k); /* u, or the float32 u / z (f32) */
    __m256d ud = _mm256_mul_pd(
        _mm256_div_pd(_mm256_sub_pd(U, L->f32 ? uk : _mm256_div_pd(uk, z)), su), z);
    __m256d sd = _mm256_div_pd(_mm256_sub_pd(S, x), ss);
    __m256d dd = _mm256_add_pd(_mm256_mul_pd(ud, ud), _mm256_mul_pd(sd, sd));
    if (L->reg && L->f32) { /* the regulariser in float32, four lanes of 128 bits */
      __m128 r = _mm_div_ps(_mm_mul_ps(rc32, _mm256_cvtpd_ps(x)), ss32);
      dd = _mm256_add_pd(dd, _mm256_cvtps_pd(_mm_mul_ps(r, r)));
    } else if (L->reg) {
      __m256d r = _mm256_div_pd(_mm256_mul_pd(rc, x), ss);
      dd = _mm256_add_pd(dd, _mm256_mul_pd(r, r));
    }
    _mm256_storeu_pd(d + k, dd);
  }
  return k;
}
#endif

/* sum of d over W (mean if mean), d from spec 3.1; t is the full cell-time vector, a float32
 * array if t32 (then t < t_ and t - t_ are float32 operations, as numpy's on such an array) */
static double se_loss(dyn_gene *g, const double *p, const double *t, int t32, int mean, int upper,
                      int with_reg, double *var_out) {
  double alpha = p[0], beta = p[1], gamma = p[2], z = p[3], t_ = p[4];
  const int *idx = upper ? g->Wup : g->W;
  int m = upper ? g->nWup : g->nW;
  dyn_scratch *w = g->w;
  double *d = w->wbuf, *e = w->dbuf;
  double u0_ = sol_u(t_, 0, alpha, beta), s0_;
  {
    double tmpu;
    sol_us(t_, 0, 0, alpha, beta, gamma, &tmpu, &s0_);
  }
  /* first pass: each cell's branch, the exponentials of its sol_us() and its u, s */
  double *O = w->sbuf, *EU = w->sbuf2, *ES = w->jv0, *Uk = w->jv1, *Sk = (double *)w->k1;
  int f32 = g->sh->f32;
  float zf = (float)z, tf = (float)t_;
  for (int k = 0; k < m; k++) {
    int i = idx[k];
    double ti = t[i];
    double o, tau;
    if (t32) {
      o = (double)((float)ti < tf);
      tau = ti * o + (double)((float)ti - tf) * (1 - o);
    } else {
      o = (double)(ti < t_);
      tau = ti * o + (ti - t_) * (1 - o);
    }
    O[k] = o;
    EU[k] = exp(-beta * tau);
    ES[k] = exp(-gamma * tau);
    Uk[k] = f32 ? (double)((float)g->u[i] / zf) : g->u[i];
    Sk[k] = g->s[i];
  }
  loss_in L = {O, EU, ES, Uk, Sk, alpha, beta, gamma, z, u0_, s0_, g->std_u, g->std_s,
               g->has_ratio ? (gamma / beta - g->ratio) : 0, inv0(gamma - beta),
               with_reg && g->has_ratio, f32};
  int k0 = 0;
#ifdef DYN_AVX
  if (!var_out && g->sh->avx) k0 = loss_terms_avx(&L, m, d);
#endif
  loss_terms(&L, k0, m, d, var_out ? e : NULL);
  if (var_out) {
    for (int k = 0; k < m; k++) {
      double sd = e[k];
      e[k] = (double)((sd > 0) - (sd < 0)) * sqrt(d[k]) + (isnan(sd) ? NAN : 0);
    }
    double md = pw_sum(d, m) / (double)m, me = pw_sum(e, m) / (double)m;
    *var_out = md - me * me;
  }
  double sum = pw_sum(d, m);
  return mean ? sum / (double)m : sum;
}

/* ---------------------------------------------------------------- update (spec 3.2) */

static void store(dyn_gene *g, const double *p, double *t, int t32, double *tau, int *o,
                  double loss, int key_valid) {
  int n = g->sh->n;
  g->steady_u *= g->z / p[3];
  memcpy(g->t, t, sizeof(double) * (size_t)n);
  memcpy(g->tau, tau, sizeof(double) * (size_t)n);
  memcpy(g->o, o, sizeof(int) * (size_t)n);
  g->alpha = p[0];
  g->beta = p[1];
  g->gamma = p[2];
  g->z = p[3];
  g->t_ = p[4];
  g->zf32 = (int)p[5];
  g->t32 = t32;
  if (key_valid) dyn_assign_key(g, p, g->key);
  g->key_valid = key_valid && g->refit;
  if (g->nloss < DYN_MAX_LOSS) g->loss[g->nloss++] = loss;
  else g->fail = 1;
}

static inline void cur_pars(const dyn_gene *g, double *p) {
  p[0] = g->alpha;
  p[1] = g->beta;
  p[2] = g->gamma;
  p[3] = g->z;
  p[4] = g->t_;
  p[5] = (double)g->zf32;
}

/* candidate p (alpha, beta, gamma, z, t_, z-is-float32), already filled with current values
 * where omitted */
static int update(dyn_gene *g, double *p, int adjust) {
  dyn_scratch *w = g->w;
  int n = g->sh->n;
  double loss_prev = g->nloss > 0 ? g->loss[g->nloss - 1] : 1e6;
  if (p[4] == 0) p[4] = g->t_;
  int c32 = dyn_get_assignment(g, p, w->ct, w->ctau, w->co);
  double loss = se_loss(g, p, w->ct, c32, 0, 0, 1, NULL);
  int perform = loss < loss_prev;
  int key_ok = 1;
  int any_on = 0;
  for (int i = 0; i < n; i++)
    if (g->o[i] == 1) {
      any_on = 1;
      break;
    }
  if (adjust && any_on) {
    if (!perform) {
      cur_pars(g, p);
      c32 = dyn_get_assignment(g, p, w->ct, w->ctau, w->co);
      loss = se_loss(g, p, w->ct, c32, 0, 0, 1, NULL);
    }
    double alt = 0;
    int first = 1;
    for (int i = 0; i < n; i++)
      if (g->o[i] == 1) {
        alt = first ? w->ct[i] : np_max2(alt, w->ct[i]);
        first = 0;
      }
    if (0 < alt && alt < p[4]) {
      double mx = w->ct[0];
      double cnt = 0, tcmp = c32 ? r32(p[4]) : p[4]; /* t == t_ on a float32 array */
      for (int i = 0; i < n; i++) {
        mx = np_max2(mx, w->ct[i]);
        cnt += (w->ct[i] == tcmp);
      }
      alt += mx / (double)n * cnt;
      double pa[DYN_NPARV] = {p[0], p[1], p[2], p[3], alt, p[5]};
      if (pa[4] == 0) pa[4] = g->t_;
      int a32 = dyn_get_assignment(g, pa, w->at, w->atau, w->ao);
      double alt_loss = se_loss(g, pa, w->at, a32, 0, 0, 1, NULL);
      double ut_cur = sol_u(p[4], 0, p[0], p[1]);
      double ut_alt = sol_u(pa[4], 0, p[0], p[1]);
      double min_loss = np_min2(loss, loss_prev);
      if (alt_loss * 0.99 <= min_loss || ut_cur * 0.99 < ut_alt) {
        memcpy(w->ct, w->at, sizeof(double) * (size_t)n);
        memcpy(w->ctau, w->atau, sizeof(double) * (size_t)n);
        memcpy(w->co, w->ao, sizeof(int) * (size_t)n);
        p[4] = pa[4];
        c32 = a32;
        loss = alt_loss;
        perform = 1;
      }
    }
  }
  if (perform) store(g, p, w->ct, c32, w->ctau, w->co, loss, key_ok);
  return perform;
}

/* ---------------------------------------------------------------- Nelder-Mead (scipy) */

/* which parameters a stage optimises: indices into (alpha, beta, gamma, z, t_) */
typedef struct {
  dyn_gene *g;
  int np;
  int which[4];
  int refit; /* objective re-assigns times */
} nm_ctx;

/* the candidate of a stage: current parameters with x in the optimised places (a z from the
 * optimiser is a float64 scalar) */
static void stage_pars(const dyn_gene *g, const int *which, int np, const double *x, double *p) {
  cur_pars(g, p);
  for (int k = 0; k < np; k++) {
    p[which[k]] = x[k];
    if (which[k] == 3) p[5] = 0;
  }
}

static double nm_obj(nm_ctx *c, const double *x) {
  dyn_gene *g = c->g;
  double p[DYN_NPARV];
  stage_pars(g, c->which, c->np, x, p);
  if (p[4] == 0) p[4] = g->t_;
  double *t;
  int t32;
  if (c->refit && g->refit) {
    t32 = dyn_get_assignment(g, p, g->w->at, g->w->atau, g->w->ao);
    t = g->w->at;
  } else {
    t = g->t;
    t32 = g->t32;
  }
  return se_loss(g, p, t, t32, 1, 0, 1, NULL);
}

#include "argsort_ties.h"

/* The permutation np.argsort gives N + 1 <= 5 values without NaN on AVX512_SKX CPUs (a sorting
 * network: ties are neither stable nor reversed), from the generated table; 0 if none. */
static int argsort_net(int n, const double *f, int *perm) {
  int code = 0;
  for (int i = 0; i < n; i++) {
    if (isnan(f[i])) return 0;
    int r = 0; /* dense rank: distinct values below f[i] */
    for (int j = 0; j < n; j++) {
      if (!(f[j] < f[i])) continue;
      int first = 1;
      for (int k = 0; k < j; k++)
        if (f[k] == f[j]) first = 0;
      r += first;
    }
    code = code * 5 + r;
  }
  int lo = 0, hi = (int)(sizeof argsort_ties / sizeof argsort_ties[0]) - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, mn = argsort_ties[mid].n, mc = argsort_ties[mid].code;
    if (mn == n && mc == code) {
      for (int k = 0; k < n; k++) perm[k] = (argsort_ties[mid].perm >> (3 * k)) & 7;
      return 1;
    }
    if (mn < n || (mn == n && mc < code)) lo = mid + 1;
    else hi = mid - 1;
  }
  return 0;
}

/* scipy sorts the simplex by np.argsort(fsim): numpy's sorting network on AVX512_SKX CPUs
 * (net), else its introsort, which is a stable insertion sort for these sizes (NaN last, as
 * also with the network when a NaN is present) */
static void nm_sort(int N, double sim[5][4], double *f, int net) {
  int perm[5];
  if (net && argsort_net(N + 1, f, perm)) {
    double s2[5][4], f2[5];
    for (int k = 0; k <= N; k++) {
      f2[k] = f[perm[k]];
      memcpy(s2[k], sim[perm[k]], sizeof(s2[k]));
    }
    memcpy(f, f2, sizeof(double) * (size_t)(N + 1));
    memcpy(sim, s2, sizeof(s2[0]) * (size_t)(N + 1));
    return;
  }
  /* stable insertion sort by f, NaN last */
  for (int i = 1; i <= N; i++) {
    double fv = f[i], xv[4];
    memcpy(xv, sim[i], sizeof(xv));
    int j = i - 1;
    while (j >= 0 && (isnan(f[j]) ? !isnan(fv) : (fv < f[j]))) {
      f[j + 1] = f[j];
      memcpy(sim[j + 1], sim[j], sizeof(xv));
      j--;
    }
    f[j + 1] = fv;
    memcpy(sim[j + 1], xv, sizeof(xv));
  }
}

static void nelder_mead(nm_ctx *c, const double *x0, int maxiter, double tol, double *xout) {
  int N = c->np;
  double sim[5][4], f[5];
  for (int k = 0; k <= N; k++) {
    for (int j = 0; j < N; j++) sim[k][j] = x0[j];
    if (k > 0) {
      double y = sim[k][k - 1];
      sim[k][k - 1] = (y != 0) ? (1 + 0.05) * y : 0.00025;
    }
  }
  for (int k = 0; k <= N; k++) f[k] = nm_obj(c, sim[k]);
  int net = c->g->sh->argsort_net;
  nm_sort(N, sim, f, net);
  nm_sort(N, sim, f, net);
  int iterations = 1;
  while (iterations < maxiter) {
    double mx = -INFINITY, mf = -INFINITY;
    int nanx = 0, nanf = 0;
    for (int k = 1; k <= N; k++) {
      for (int j = 0; j < N; j++) {
        double a = fabs(sim[k][j] - sim[0][j]);
        if (isnan(a)) nanx = 1;
        else if (a > mx) mx = a;
      }
      double b = fabs(f[0] - f[k]);
      if (isnan(b)) nanf = 1;
      else if (b > mf) mf = b;
    }
    if (!nanx && !nanf && mx <= tol && mf <= tol) break;
    double xbar[4], xr[4], xe[4], xc[4];
    for (int j = 0; j < N; j++) {
      double acc = sim[0][j];
      for (int k = 1; k < N; k++) acc += sim[k][j];
      xbar[j] = acc / N;
    }
    for (int j = 0; j < N; j++) xr[j] = (1 + 1.0) * xbar[j] - 1.0 * sim[N][j];
    double fxr = nm_obj(c, xr);
    int doshrink = 0;
    if (fxr < f[0]) {
      for (int j = 0; j < N; j++) xe[j] = (1 + 2.0) * xbar[j] - 2.0 * sim[N][j];
      double fxe = nm_obj(c, xe);
      if (fxe < fxr) {
        memcpy(sim[N], xe, sizeof(double) * N);
        f[N] = fxe;
      } else {
        memcpy(sim[N], xr, sizeof(double) * N);
        f[N] = fxr;
      }
    } else {
      if (fxr < f[N - 1]) {
        memcpy(sim[N], xr, sizeof(double) * N);
        f[N] = fxr;
      } else {
        if (fxr < f[N]) {
          for (int j = 0; j < N; j++) xc[j] = (1 + 0.5) * xbar[j] - 0.5 * sim[N][j];
          double fxc = nm_obj(c, xc);
          if (fxc <= fxr) {
            memcpy(sim[N], xc, sizeof(double) * N);
            f[N] = fxc;
          } else {
            doshrink = 1;
          }
        } else {
          for (int j = 0; j < N; j++) xc[j] = (1 - 0.5) * xbar[j] + 0.5 * sim[N][j];
          double fxcc = nm_obj(c, xc);
          if (fxcc < f[N]) {
            memcpy(sim[N], xc, sizeof(double) * N);
            f[N] = fxcc;
          } else {
            doshrink = 1;
          }
        }
        if (doshrink) {
          for (int k = 1; k <= N; k++) {
            for (int j = 0; j < N; j++) sim[k][j] = sim[0][j] + 0.5 * (sim[k][j] - sim[0][j]);
            f[k] = nm_obj(c, sim[k]);
          }
        }
      }
    }
    iterations++;
    nm_sort(N, sim, f, net);
  }
  memcpy(xout, sim[0], sizeof(double) * N);
}

/* run one optimiser stage over the parameters `which` and update with the result */
static void stage(dyn_gene *g, int np, const int *which, double tol, int refit_obj, int maxiter) {
  nm_ctx c;
  c.g = g;
  c.np = np;
  c.refit = refit_obj;
  double p[DYN_NPARV], x0[4], x[4];
  cur_pars(g, p);
  for (int k = 0; k < np; k++) {
    c.which[k] = which[k];
    x0[k] = p[which[k]];
  }
  nelder_mead(&c, x0, maxiter, tol, x);
  stage_pars(g, which, np, x, p);
  update(g, p, 1);
}

/* ---------------------------------------------------------------- bimodality (spec 2.4) */

/* returns 0 when the KDE cannot be built (upstream's ValueError path); f32: x is a float32
 * array (only its percentile differs; the KDE is float64 either way) */
static int bimodality(const double *x, int n, double *pval, double *mode_hi, double *tmp,
                      int f32) {
  const int bins = 30;
  double lb = x[0], mxv = x[0];
  for (int i = 1; i < n; i++) {
    lb = np_min2(lb, x[i]);
    mxv = np_max2(mxv, x[i]);
  }
  memcpy(tmp, x, sizeof(double) * (size_t)n);
  double ub = np_percentile_t(tmp, n, 99.9, f32);
  double hi = (ub <= lb) ? ub : mxv;
  double grid[30], f[30];
  for (int k = 0; k < bins; k++) grid[k] = lsp(lb, hi, bins, k);
  /* scipy gaussian_kde with equal weights 1/n and Scott's factor */
  double wv = 1.0 / (double)n;
  for (int i = 0; i < n; i++) tmp[i] = wv * wv;
  double neff = 1.0 / pw_sum(tmp, n);
  double factor = pow(neff, -1.0 / 5.0);
  for (int i = 0; i < n; i++) tmp[i] = x[i] * wv;
  double wsum = wv * (double)n;
  for (int i = 0; i < n; i++) tmp[i] = wv;
  wsum = pw_sum(tmp, n);
  for (int i = 0; i < n; i++) tmp[i] = x[i] * wv;
  double avg = pw_sum(tmp, n) / wsum;
  for (int i = 0; i < n; i++) tmp[i] = wv * wv;
  double fact = wsum - 1 * pw_sum(tmp, n) / wsum;
  for (int i = 0; i < n; i++) {
    double d = x[i] - avg;
    tmp[i] = d * (d * wv);
  }
  double cov = pw_sum(tmp, n) * (1.0 / fact);
  if (!(cov > 0) || !isfinite(cov) || n < 2) {
    *pval = 1;
    *mode_hi = 0;
    return 0;
  }
  double h = sqrt(cov) * factor;
  double norm = pow(2 * M_PI, -0.5) / h;
  double gs[30];
  for (int k = 0; k < bins; k++) {
    gs[k] = grid[k] / h;
    f[k] = 0;
  }
  for (int i = 0; i < n; i++) {
    double xi = x[i] / h;
    for (int k = 0; k < bins; k++) {
      double r = xi - gs[k];
      double arg = r * r;
      f[k] += wv * (exp(-arg / 2.) * norm);
    }
  }
  int idx = bins / 2 - 2;
  {
    int best = idx;
    for (int k = idx + 1; k < idx + 4; k++)
      if (f[k] < f[best]) best = k;
    idx = best;
  }
  int p0 = 0, p1 = 0;
  for (int k = 1; k < idx; k++)
    if (f[k] > f[p0]) p0 = k;
  for (int k = 1; k < bins - idx; k++)
    if (f[idx + k] > f[idx + p1]) p1 = k;
  double peak = f[idx + p1];
  double mid = pw_sum(f + idx, bins - idx) / (double)(bins - idx);
  double fm = pw_sum(f, bins) / bins, dv[30];
  for (int k = 0; k < bins; k++) dv[k] = (f[k] - fm) * (f[k] - fm);
  double sd = sqrt(pw_sum(dv, bins) / bins);
  double den = sd / sqrt((double)bins);
  if (den < 1) den = 1;
  double tst = (peak - mid) / den;
  /* scipy norm.sf(t) = ndtr(-t) */
  double xx = -tst * M_SQRT1_2, y;
  double zz = fabs(xx);
  if (zz < M_SQRT1_2) y = 0.5 + 0.5 * erf(xx);
  else {
    y = 0.5 * erfc(zz);
    if (xx > 0) y = 1.0 - y;
  }
  *pval = y;
  int n1 = bins - idx;
  *mode_hi = (grid[idx + p1] + grid[idx + (p1 + 1 < n1 - 1 ? p1 + 1 : n1 - 1)]) / 2;
  (void)p0;
  return 1;
}

/* ---------------------------------------------------------------- per-gene driver */

typedef struct {
  int max_iter;
  int amode; /* requested mode */
  int scaling_mode; /* 0 FALSE, 1 TRUE, 2 number */
  double scaling_val;
  int fit_time;
  double perc;
  const int *prior; /* n or NULL */
} dyn_opts;

/* weights (spec 2.2); returns 0 if not recoverable */
static int init_weights(dyn_gene *g, double perc) {
  int n = g->sh->n, f32 = g->sh->f32;
  double *tmp = g->w->wbuf;
  int m = 0;
  for (int i = 0; i < n; i++)
    if (g->s[i] > 0 && g->u[i] > 0) g->W[m++] = i;
  if (m <= 2) return 0;
  for (int k = 0; k < m; k++) tmp[k] = g->s[g->W[k]];
  double ub_s = np_percentile_t(tmp, m, perc, f32);
  for (int k = 0; k < m; k++) tmp[k] = g->u[g->W[k]];
  double ub_u = np_percentile_t(tmp, m, perc, f32);
  /* float32 flow: s <= ub compares in float32 (the float64 bound is rounded) */
  double cs = f32 ? r32(ub_s) : ub_s, cu = f32 ? r32(ub_u) : ub_u;
  int nW = 0;
  for (int k = 0; k < m; k++) {
    int i = g->W[k];
    if (ub_s > 0 && !(g->s[i] <= cs)) continue;
    if (ub_u > 0 && !(g->u[i] <= cu)) continue;
    g->W[nW++] = i;
  }
  g->nW = nW;
  double *a = g->w->dbuf;
  for (int k = 0; k < nW; k++) a[k] = g->u[g->W[k]];
  g->std_u = f32 ? dyn_std32(a, nW, tmp) : np_std(a, nW, tmp);
  double mu = a[0];
  for (int k = 1; k < nW; k++) mu = np_max2(mu, a[k]);
  for (int k = 0; k < nW; k++) a[k] = g->s[g->W[k]];
  g->std_s = f32 ? dyn_std32(a, nW, tmp) : np_std(a, nW, tmp);
  double ms = a[0];
  for (int k = 1; k < nW; k++) ms = np_max2(ms, a[k]);
  double bu = mu / 3, bs = ms / 3; /* max / 3 is a float64 scalar; compared in float32 */
  if (f32) {
    bu = r32(bu);
    bs = r32(bs);
  }
  int nu = 0;
  if (nW > 0)
    for (int k = 0; k < nW; k++) {
      int i = g->W[k];
      if (g->u[i] > bu && g->s[i] > bs) g->Wup[nu++] = i;
    }
  g->nWup = nu;
  return 1;
}

/* initialize() (spec 2.3). Float32 flow: std, z = std_u / std_s, u / z, the means and the
 * regression sums are float32 (numpy keeps the array dtype), percentiles float64 from float32
 * values and compared in float32; gamma + 1e-6 and everything after it is float64. */
static void initialize(dyn_gene *g, const dyn_opts *op) {
  int nW = g->nW, f32 = g->sh->f32;
  dyn_scratch *w = g->w;
  double *uw = w->r0, *sw = w->r1, *tmp = w->wbuf;
  for (int k = 0; k < nW; k++) {
    uw[k] = g->u[g->W[k]];
    sw[k] = g->s[g->W[k]];
  }
  g->std_u = f32 ? dyn_std32(uw, nW, tmp) : np_std(uw, nW, tmp);
  g->std_s = f32 ? dyn_std32(sw, nW, tmp) : np_std(sw, nW, tmp);
  int zero_sd = g->std_u == 0 || g->std_s == 0;
  if (zero_sd) g->std_u = g->std_s = 1;
  double z = op->scaling_mode == 1 ? g->std_u / g->std_s : (op->scaling_mode == 0 ? 1 : op->scaling_val);
  /* a float32 scalar only when it is float32 std_u / float32 std_s */
  g->zf32 = f32 && op->scaling_mode == 1 && !zero_sd;
  if (g->zf32) z = r32(z);
  if (f32) {
    float zf = (float)z;
    for (int k = 0; k < nW; k++) uw[k] = (double)((float)uw[k] / zf);
  } else {
    for (int k = 0; k < nW; k++) uw[k] = uw[k] / z;
  }
  memcpy(tmp, sw, sizeof(double) * nW);
  double ps = np_percentile_t(tmp, nW, 98, f32);
  memcpy(tmp, uw, sizeof(double) * nW);
  double pu = np_percentile_t(tmp, nW, 98, f32);
  if (f32) {
    ps = r32(ps);
    pu = r32(pu);
  }
  double *a = w->r2, *b = w->r3;
  for (int k = 0; k < nW; k++) {
    int es = sw[k] >= ps;
    int gg = es || (op->prior && op->prior[g->W[k]]);
    double uu = gg ? uw[k] : 0, ssv = gg ? sw[k] : 0;
    a[k] = f32 ? r32(ssv * ssv) : ssv * ssv;
    b[k] = f32 ? r32(ssv * uu) : ssv * uu;
  }
  double gamma = f32 ? r32(dyn_pw_sum32(b, nW) / dyn_pw_sum32(a, nW)) + 1e-6
                     : pw_sum(b, nW) / pw_sum(a, nW) + 1e-6;
  if (gamma < 0.05 / z) gamma *= 1.2;
  else if (gamma > 1.5 / z) gamma /= 1.2;
  int m1 = 0, m2 = 0;
  for (int k = 0; k < nW; k++) {
    int es = sw[k] >= ps, eu = uw[k] >= pu;
    if (eu || es) a[m1++] = uw[k];
    if (es) b[m2++] = sw[k];
  }
  double u_inf = f32 ? dyn_mean32(a, m1) : pw_sum(a, m1) / m1;
  double s_inf = f32 ? dyn_mean32(b, m2) : pw_sum(b, m2) / m2;
  double u0_ = u_inf, s0_ = s_inf;
  double beta = 1, alpha = u_inf * beta;
  double pu_, ps_, mu_, ms_;
  if (!bimodality(uw, nW, &pu_, &mu_, tmp, f32) || !bimodality(sw, nW, &ps_, &ms_, tmp, f32)) {
    pu_ = ps_ = 1;
    mu_ = ms_ = 0;
  }
  g->pval = (ps_ > pu_) ? ps_ : pu_;
  g->steady_u = mu_;
  g->steady_s = ms_;
  if (g->pval < 1e-3) {
    u_inf = (u_inf + g->steady_u) / 2;
    alpha = gamma * s_inf;
    beta = alpha / u_inf;
    u0_ = u_inf;
    s0_ = s_inf;
  }
  double t_ = tau_inv1(u0_, s0_, 0, 0, alpha, beta, gamma);
  g->alpha = alpha;
  g->beta = beta;
  g->gamma = gamma;
  g->z = z;
  g->t_ = t_;
  g->has_ratio = 0;
  double p[DYN_NPARV];
  cur_pars(g, p);
  g->t32 = f32 && !use_projection(g->mode, p[1], p[2]);
  dyn_assign(g, p, g->t, g->tau, g->o, NULL, NULL);
  dyn_assign_key(g, p, g->key);
  g->key_valid = g->refit;
  g->nloss = 0;
  /* get_loss() at the current parameters: re-assigns (cache) */
  int c32 = dyn_get_assignment(g, p, w->ct, w->ctau, w->co);
  g->loss[g->nloss++] = se_loss(g, p, w->ct, c32, 0, 0, 1, NULL);
  if (op->scaling_mode != 0 && !(op->scaling_mode == 2 && op->scaling_val == 0)) {
    const double sights[2] = {0.5, 0.1};
    for (int si = 0; si < 2; si++) {
      double z0 = g->z;
      for (int k = 0; k < 4; k++) {
        double c = lsp(-1, 1, 4, k);
        double zk = z0 + c * z0 * sights[si];
        cur_pars(g, p);
        p[1] = g->beta / g->z * zk;
        p[3] = zk;
        p[5] = 0; /* z from linspace is a float64 scalar */
        update(g, p, 1);
      }
    }
  }
  g->ratio = g->gamma / g->beta;
  g->has_ratio = 1;
}

static void fit_gene(dyn_gene *g, const dyn_opts *op) {
  int maxiter = (int)(op->max_iter / 5);
  double p[DYN_NPARV];
  int scal = op->scaling_mode != 0 && !(op->scaling_mode == 2 && op->scaling_val == 0);
  if (op->max_iter > 0) {
    if (op->amode == AM_FULL) g->mode = AM_FULL;
    /* fit_t_and_alpha */
    double a0 = g->alpha;
    for (int k = 0; k < 5; k++) {
      double c = lsp(-1, 1, 5, k);
      cur_pars(g, p);
      p[0] = a0 + c * a0 / 10;
      update(g, p, 1);
    }
    static const int w_ta[2] = {4, 0}, w_sc[3] = {4, 1, 3}, w_r[2] = {0, 2}, w_t[1] = {4},
                     w_all[4] = {4, 0, 1, 2};
    stage(g, 2, w_ta, 1e-4, 1, maxiter);
    if (scal) stage(g, 3, w_sc, 1e-4, 1, maxiter);
    stage(g, 2, w_r, 1e-2, 1, maxiter);
    stage(g, 1, w_t, 1e-4, 1, maxiter);
    stage(g, 4, w_all, 1e-2, 1, maxiter);
    g->mode = op->amode;
    cur_pars(g, p);
    update(g, p, 0);
    stage(g, 4, w_all, 1e-2, 0, maxiter);
  }
  cur_pars(g, p);
  update(g, p, 1);
}

/* outputs for one fitted gene: pars[14], tau, tau_ (n each) */
static void finish_gene(dyn_gene *g, double *pars, double *tau, double *tau_) {
  double p[DYN_NPARV];
  cur_pars(g, p);
  dyn_assign(g, p, NULL, NULL, NULL, tau, tau_);
  double var_lik = 0;
  double sum = se_loss(g, p, g->t, g->t32, 0, 1, 1, &var_lik);
  int m = g->nWup;
  double nn = (double)m - (double)g->sh->n * 0.01;
  if (nn < 2) nn = 2;
  double varx = var_lik;
  varx += (double)(varx == 0);
  double ll = -1.0 / 2 / nn * sum / varx;
  ll -= 1.0 / 2 * log(2 * M_PI * varx);
  double lik = exp(ll);
  /* variance: fresh assignment, no regulariser */
  dyn_scratch *w = g->w;
  int c32 = dyn_get_assignment(g, p, w->ct, w->ctau, w->co);
  double variance = 0;
  se_loss(g, p, w->ct, c32, 0, 1, 0, &variance);
  pars[0] = g->alpha;
  pars[1] = g->beta / g->z;
  pars[2] = g->gamma;
  pars[3] = g->t_;
  pars[4] = g->z;
  pars[5] = g->std_u;
  pars[6] = g->std_s;
  pars[7] = lik;
  pars[10] = g->pval;
  pars[11] = g->steady_u * g->z;
  pars[12] = g->steady_s;
  pars[13] = variance;
}

/* ---------------------------------------------------------------- shim */

static void scratch_free(dyn_scratch *w) {
  if (!w) return;
  free(w->uhat);
  free(w->rmark);
  free(w->co);
  free(w->cbuf);
  free(w->cibuf);
  free(w->f32buf);
}

static int scratch_alloc(dyn_scratch *w, int n, int M) {
  size_t nd = (size_t)n;
  double *b = malloc(sizeof(double) * (nd * 31 + 16 * (size_t)M + 64));
  int *ib = malloc(sizeof(int) * (nd * 4 + 8));
  double *cb = malloc(sizeof(double) * nd * 2 * DYN_CACHE);
  int *cib = malloc(sizeof(int) * nd * DYN_CACHE);
  float *fb = malloc(sizeof(float) * (nd * 8 + 16));
  w->rmark = malloc(nd);
  w->uhat = b;
  w->co = ib;
  w->cbuf = cb;
  w->cibuf = cib;
  w->f32buf = fb;
  if (!b || !ib || !cb || !cib || !fb || !w->rmark) {
    free(w->rmark);
    w->rmark = NULL;
    free(fb);
    w->f32buf = NULL;
    free(b);
    free(ib);
    free(cb);
    free(cib);
    w->uhat = NULL;
    w->co = NULL;
    w->cbuf = NULL;
    w->cibuf = NULL;
    return 0;
  }
  for (int c = 0; c < DYN_CACHE; c++) {
    w->ct_[c] = cb + nd * (size_t)(2 * c);
    w->ctau_[c] = cb + nd * (size_t)(2 * c + 1);
    w->co_[c] = cib + nd * (size_t)c;
    w->cvalid[c] = 0;
  }
  double *q = b;
  w->uhat = q; q += nd;
  w->tau = q; q += nd;
  w->tau_ = q; q += nd;
  w->r0 = q; q += nd;
  w->r1 = q; q += nd;
  w->r2 = q; q += nd;
  w->r3 = q; q += nd;
  w->d0 = q; q += nd;
  w->d1 = q; q += nd;
  w->d2 = q; q += nd;
  w->d3 = q; q += nd;
  w->sbuf = q; q += nd;
  w->sbuf2 = q; q += nd;
  w->dbuf = q; q += nd;
  w->wbuf = q; q += nd;
  w->ct = q; q += nd;
  w->ctau = q; q += nd;
  w->at = q; q += nd;
  w->atau = q; q += nd;
  w->ilv = q; q += 4 * nd;
  w->eU = q; q += nd;
  w->eS = q; q += nd;
  w->eU_ = q; q += nd;
  w->eS_ = q; q += nd;
  w->jv0 = q; q += nd;
  w->jv1 = q; q += nd;
  w->k1 = (uint64_t *)q; q += nd;
  w->k2 = (uint64_t *)q; q += nd;
  w->grid = q;
  w->ao = ib + nd;
  w->idx_on = ib + 2 * nd;
  w->idx_off = ib + 3 * nd;
  w->fa = fb;
  w->fb = fb + nd;
  w->fc = fb + 2 * nd;
  w->fd = fb + 3 * nd;
  w->x32 = fb + 4 * nd;
  return 1;
}

/* Alignment factor of one gene (spec 6.3): target / (the longest on-branch time plus the
 * longest off-branch time, over the share of cells not at t_ or 0). NaN propagates. */
static double align_factor(const double *T, int n, double tg, double target) {
  double m1 = -INFINITY, m2 = -INFINITY;
  int cnt = 0, nan = 0;
  for (int i = 0; i < n; i++) {
    double x = T[i];
    if (isnan(x) || isnan(tg)) {
      nan = 1;
      break;
    }
    double a = x * (double)(x < tg), b = (x - tg) * (double)(x > tg);
    if (a > m1) m1 = a;
    if (b > m2) m2 = b;
    cnt += (x == tg || x == 0);
  }
  if (nan) return NAN;
  double Tmax = m1 + m2;
  double denom = 1 - (double)cnt / (double)n;
  denom = denom + (double)(denom == 0);
  Tmax = Tmax / denom;
  Tmax = Tmax + (double)(Tmax == 0);
  return target / Tmax;
}

/* .Call(C_scnative_dynamics_fit, Ms, Mu, rows, conn, iopts, dopts, prior, load, layers,
 *       align, threads)
 *   Ms, Mu: genes x cells double matrices (all genes); rows: 0-based rows of this chunk
 *   conn: NULL or list(p, j, x) CSR (0-based) with row-normalised weights
 *   iopts: (max_iter, amode, scaling_mode, fit_time, fit_steady, basal, load, simd, f32)
 *   dopts: (scaling_val, perc)
 *   prior: NULL or logical n
 *   load: NULL or list(pars G x 8 (alpha, beta, gamma, t_, scaling, steady_u, steady_s,
 *         pval) for the chunk's genes, fit_t genes x cells (all genes))
 *   layers: list(fit_t, fit_tau, fit_tau_), genes x cells matrices created by the caller
 *           for this fit; the rows of fitted genes are written in place (fit_t smoothed by
 *           conn when given), multiplied by the gene's alignment factor
 *   align: target of the alignment (spec 6.3), or NA for none (factor 1)
 * returns list(pars G x 14 (unaligned), loss G x DYN_MAX_LOSS, ok int G, factor G) */
SEXP scnative_dynamics_fit(SEXP Ms, SEXP Mu, SEXP rows, SEXP conn, SEXP iopts, SEXP dopts,
                           SEXP prior, SEXP load, SEXP layers, SEXP align, SEXP threads) {
  int nprot = 0;
  int Gall = nrows(Ms), n = ncols(Ms), G = LENGTH(rows);
  if (nrows(Mu) != Gall || ncols(Mu) != n || !isReal(Ms) || !isReal(Mu) || !isInteger(rows))
    SCN_INTERNAL_ERROR("Ms and Mu must be double matrices of the same shape");
  const int *rw = INTEGER(rows);
  for (int j = 0; j < G; j++)
    if (rw[j] < 0 || rw[j] >= Gall) SCN_INTERNAL_ERROR("bad rows");
  double *Lt = REAL(VECTOR_ELT(layers, 0)), *Ltau = REAL(VECTOR_ELT(layers, 1)),
         *Ltau_ = REAL(VECTOR_ELT(layers, 2));
  for (int k = 0; k < 3; k++) {
    SEXP L = VECTOR_ELT(layers, k);
    if (!isReal(L) || nrows(L) != Gall || ncols(L) != n) SCN_INTERNAL_ERROR("bad layers");
  }
  double target = asReal(align);
  int do_align = !ISNA(target);
  const int *io = INTEGER(iopts);
  const double *dop = REAL(dopts);
  dyn_shared sh;
  sh.n = n;
  sh.cp = sh.ci = NULL;
  sh.cx = NULL;
  sh.fit_steady = io[4];
  sh.f32 = XLENGTH(iopts) > 8 && io[8];
  sh.avx = 0;
  sh.argsort_net = 0;
#ifdef DYN_AVX
  __builtin_cpu_init();
  sh.avx = __builtin_cpu_supports("avx") && (XLENGTH(iopts) < 8 || io[7]) ? 1 : 0;
  /* numpy 1.26 sorts float64 with x86-simd-sort where the CPU has AVX512_SKX */
  sh.argsort_net = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
                   __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vl");
#endif
  int M = n / 5;
  if (M < 200) M = 200;
  if (M > 500) M = 500;
  sh.proj_grid = M;
  if (!isNull(conn)) {
    sh.cp = INTEGER(VECTOR_ELT(conn, 0));
    sh.ci = INTEGER(VECTOR_ELT(conn, 1));
    sh.cx = REAL(VECTOR_ELT(conn, 2));
    if (XLENGTH(VECTOR_ELT(conn, 0)) != n + 1) SCN_INTERNAL_ERROR("bad connectivities");
  }
  dyn_opts op;
  op.max_iter = io[0];
  op.amode = io[1];
  op.scaling_mode = io[2];
  op.fit_time = io[3];
  op.scaling_val = dop[0];
  op.perc = dop[1];
  op.prior = isNull(prior) ? NULL : LOGICAL(prior);
  int basal = io[5], doload = io[6];
  const double *lp = NULL, *lt = NULL;
  if (doload) {
    lp = REAL(VECTOR_ELT(load, 0));
    lt = REAL(VECTOR_ELT(load, 1));
  }
  size_t nd = (size_t)n, Gs = (size_t)Gall;
  SEXP pars = PROTECT(allocMatrix(REALSXP, G, DYN_NPAR)); nprot++;
  SEXP Loss = PROTECT(allocMatrix(REALSXP, G, DYN_MAX_LOSS)); nprot++;
  SEXP ok = PROTECT(allocVector(INTSXP, G)); nprot++;
  SEXP fac = PROTECT(allocVector(REALSXP, G)); nprot++;
  double *pp = REAL(pars), *pl = REAL(Loss), *pf = REAL(fac);
  int *pok = INTEGER(ok);
  for (R_xlen_t k = 0; k < XLENGTH(pars); k++) pp[k] = NA_REAL;
  for (R_xlen_t k = 0; k < XLENGTH(Loss); k++) pl[k] = NA_REAL;
  for (int k = 0; k < G; k++) pf[k] = 1;
  const double *Sp = REAL(Ms), *Up = REAL(Mu);

  int nth = scn_threads_for(G, asInteger(threads));
  dyn_scratch *ws = calloc((size_t)nth, sizeof(dyn_scratch));
  double *gbuf = malloc(sizeof(double) * nd * 7 * (size_t)nth);
  int *ibuf = malloc(sizeof(int) * nd * 3 * (size_t)nth);
  int *tbuf = NULL;
  sh.tp = sh.ti = NULL;
  if (sh.cp) { /* the transposed pattern, for resmooth() */
    size_t nnz = (size_t)sh.cp[n];
    tbuf = malloc(sizeof(int) * (nd + 1 + nnz));
    if (tbuf) {
      int *tp = tbuf, *ti = tbuf + nd + 1;
      memset(tp, 0, sizeof(int) * (nd + 1));
      for (size_t q = 0; q < nnz; q++) tp[sh.ci[q] + 1]++;
      for (int i = 0; i < n; i++) tp[i + 1] += tp[i];
      for (int i = 0; i < n; i++)
        for (int q = sh.cp[i]; q < sh.cp[i + 1]; q++) ti[tp[sh.ci[q]]++] = i;
      for (int i = n; i > 0; i--) tp[i] = tp[i - 1];
      tp[0] = 0;
      sh.tp = tp;
      sh.ti = ti;
    }
  }
  /* the float32 flow smooths with float weights, rows taken in order of their length */
  float *cx32 = NULL;
  int *ord = NULL;
  sh.cx32 = NULL;
  sh.ord = NULL;
  if (sh.cp && sh.f32) {
    size_t nnz = (size_t)sh.cp[n];
    cx32 = malloc(sizeof(float) * (nnz + 1));
    ord = malloc(sizeof(int) * (nd + (size_t)n + 2));
    if (cx32 && ord) {
      for (size_t q = 0; q < nnz; q++) cx32[q] = (float)sh.cx[q];
      int maxlen = 0, *cnt;
      for (int i = 0; i < n; i++)
        if (sh.cp[i + 1] - sh.cp[i] > maxlen) maxlen = sh.cp[i + 1] - sh.cp[i];
      cnt = calloc((size_t)maxlen + 2, sizeof(int));
      if (cnt) { /* counting sort by length */
        for (int i = 0; i < n; i++) cnt[sh.cp[i + 1] - sh.cp[i] + 1]++;
        for (int l = 0; l <= maxlen; l++) cnt[l + 1] += cnt[l];
        for (int i = 0; i < n; i++) ord[cnt[sh.cp[i + 1] - sh.cp[i]]++] = i;
        free(cnt);
        sh.cx32 = cx32;
        sh.ord = ord;
      }
    }
  }
  int okalloc = ws && gbuf && ibuf && (!sh.cp || tbuf) && (!sh.cp || !sh.f32 || sh.ord);
  for (int k = 0; okalloc && k < nth; k++) okalloc = scratch_alloc(&ws[k], n, M);
  if (!okalloc) {
    if (ws)
      for (int k = 0; k < nth; k++) scratch_free(&ws[k]);
    free(ws);
    free(gbuf);
    free(ibuf);
    free(tbuf);
    free(cx32);
    free(ord);
    error(_("recover_dynamics: out of memory for %d threads x %d cells"), nth, n);
  }
#pragma omp parallel for num_threads(nth) schedule(dynamic)
  for (int j = 0; j < G; j++) {
    int tid = omp_get_thread_num();
    dyn_scratch *w = &ws[tid];
    double *ub = gbuf + nd * 7 * (size_t)tid;
    int *ib = ibuf + nd * 3 * (size_t)tid;
    double *u = ub, *s = ub + nd, *tt = ub + 2 * nd, *ttau = ub + 3 * nd;
    double *otau = ub + 4 * nd, *otau_ = ub + 5 * nd, *ot = ub + 6 * nd;
    size_t r = (size_t)rw[j];
    const double *S0 = Sp + r, *U0 = Up + r; /* element i at i * Gall */
    double u0b = 0, s0b = 0;
    for (int i = 0; i < n; i++) { /* the float32 flow reads Ms/Mu as float32 arrays */
      u[i] = sh.f32 ? r32(U0[i * Gs]) : U0[i * Gs];
      s[i] = sh.f32 ? r32(S0[i * Gs]) : S0[i * Gs];
    }
    if (basal) {
      u0b = u[0];
      s0b = s[0];
      for (int i = 1; i < n; i++) {
        u0b = np_min2(u0b, u[i]);
        s0b = np_min2(s0b, s[i]);
      }
      for (int i = 0; i < n; i++) {
        u[i] = sh.f32 ? r32(u[i] - u0b) : u[i] - u0b;
        s[i] = sh.f32 ? r32(s[i] - s0b) : s[i] - s0b;
      }
    }
    dyn_gene g;
    memset(&g, 0, sizeof(g));
    g.sh = &sh;
    g.w = w;
    g.u = u;
    g.s = s;
    g.W = ib;
    g.Wup = ib + nd;
    g.o = ib + 2 * nd;
    g.t = tt;
    g.tau = ttau;
    g.refit = op.fit_time;
    g.mode = AM_NONE;
    for (int c = 0; c < DYN_CACHE; c++) w->cvalid[c] = 0;
    w->clock = 0;
    if (!init_weights(&g, op.perc)) {
      pok[j] = 0;
      continue;
    }
    if (doload) {
      const double *q = lp;
      g.alpha = q[j];
      g.beta = q[j + G] * q[j + 4 * (size_t)G];
      g.gamma = q[j + 2 * (size_t)G];
      g.z = q[j + 4 * (size_t)G];
      g.t_ = q[j + 3 * (size_t)G];
      g.ratio = g.gamma / g.beta;
      g.has_ratio = 1;
      g.steady_u = q[j + 5 * (size_t)G];
      g.steady_s = q[j + 6 * (size_t)G];
      g.pval = q[j + 7 * (size_t)G];
      const double *tl = lt + r;
      for (int i = 0; i < n; i++) {
        double tv = tl[i * Gs];
        int o = tv < g.t_;
        g.t[i] = tv;
        g.o[i] = o;
        g.tau[i] = tv * o + (tv - g.t_) * (1 - o);
      }
      g.key_valid = 0;
      double p[DYN_NPARV];
      g.zf32 = 0; /* loaded values are float64 */
      g.t32 = 0;  /* and so is the fit_t layer */
      cur_pars(&g, p);
      int c32 = dyn_get_assignment(&g, p, w->ct, w->ctau, w->co);
      g.loss[0] = se_loss(&g, p, w->ct, c32, 0, 0, 1, NULL);
      g.nloss = 1;
    } else {
      initialize(&g, &op);
    }
    fit_gene(&g, &op);
    double pr[DYN_NPAR];
    finish_gene(&g, pr, otau, otau_);
    pr[8] = u0b;
    pr[9] = s0b;
    for (int c = 0; c < DYN_NPAR; c++) pp[j + (size_t)c * G] = pr[c];
    if (sh.cp) { /* fit_t = C t (spec 6.2), row sums in stored order as scipy */
      for (int i = 0; i < n; i++) {
        double acc = 0;
        for (int q = sh.cp[i]; q < sh.cp[i + 1]; q++) acc += sh.cx[q] * g.t[sh.ci[q]];
        ot[i] = acc;
      }
    } else {
      memcpy(ot, g.t, sizeof(double) * nd);
    }
    double m = do_align ? align_factor(ot, n, pr[3], target) : 1;
    pf[j] = m;
    for (int i = 0; i < n; i++) {
      size_t at = r + (size_t)i * Gs;
      Lt[at] = ot[i] * m;
      Ltau[at] = otau[i] * m;
      Ltau_[at] = otau_[i] * m;
    }
    for (int k = 0; k < g.nloss; k++) pl[j + (size_t)k * G] = g.loss[k];
    pok[j] = g.fail ? 2 : 1;
  }
  for (int k = 0; k < nth; k++) scratch_free(&ws[k]);
  free(ws);
  free(gbuf);
  free(ibuf);
  free(tbuf);
  free(cx32);
  free(ord);
  SEXP res = PROTECT(allocVector(VECSXP, 4)); nprot++;
  SET_VECTOR_ELT(res, 0, pars);
  SET_VECTOR_ELT(res, 1, Loss);
  SET_VECTOR_ELT(res, 2, ok);
  SET_VECTOR_ELT(res, 3, fac);
  UNPROTECT(nprot);
  return res;
}

/* .Call(C_scnative_dynamics_f32, x): x rounded to single precision (upstream stores the
 * normalised connectivities as float32) */
SEXP scnative_dynamics_f32(SEXP x) {
  R_xlen_t n = XLENGTH(x);
  SEXP out = PROTECT(allocVector(REALSXP, n));
  const double *px = REAL(x);
  double *po = REAL(out);
  for (R_xlen_t i = 0; i < n; i++) po[i] = (double)(float)px[i];
  UNPROTECT(1);
  return out;
}


