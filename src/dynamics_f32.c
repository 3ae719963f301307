/* dynamics_f32.c: the float32 flow of scVelo's dynamical model.
 *
 * scVelo stores Ms/Mu as float32 (pp.moments, every h5ad). Under numpy 1.x casting (value-based:
 * a float32 array combined with a Python or numpy float64 scalar stays float32, the scalar
 * rounded to float32 first; two scalars promote to float64) upstream's EM then runs partly in
 * float32. The dtype of each step, traced from scvelo 0.3.4 on numpy 1.26 (spec sections
 * "Weights", "initialize()", "Time assignment", "Residuals, mse and loss"):
 *
 *   step                                      dtype
 *   u, s (layers), basal subtraction          float32 arrays
 *   percentile (weights, initialize, KDE)     float64, from float32 order statistics whose
 *                                             difference is float32; compared with a float32
 *                                             array in float32 (the bound rounded)
 *   std_u, std_s, means, regression sums      float32 (pairwise sums with float32 accumulators)
 *   z = std_u / std_s                         float32 scalar until a candidate z is accepted
 *   gamma = us / ss + 1e-6, alpha, beta, t_   float64 scalars (scalar + Python float promotes)
 *   u / z                                     float32 array (z rounded)
 *   std_u / z                                 float32 if z is still float32, else float64
 *   inverse branch times: ratio, clip, log,   float32, numpy's own float32 log (npyf32.c)
 *     times -1/rate, clip to [0, t_]
 *   model values at float32 times             float32, numpy's float32 exp (npyf32.c)
 *   branch and steady-state distances         float32
 *   smoothing C x (float32 weights)           float32 accumulation when all rows are float32
 *   increments: sorted values                 float32; increments, P99.5 and threshold float64
 *   closing a gap                             float32 subtraction of the rounded increment
 *   cell time t = tau, tau_ + t_, 0 or t_     float32 (t_ rounded)
 *   projection (grid, branch distances)       float64; steady-state distances float32
 *   loss: o = t < t_, t - t_                  float32 when t is (t_ rounded); tau float64
 *   loss: model values, residuals, sums       float64 (the time vector is float64 after
 *                                             multiplying by the int64 state); the
 *                                             regulariser (g/b - ratio) s / std_s float32
 *   Nelder-Mead simplex, parameters, losses   float64
 *
 * Results held in double arrays carry exactly the float32 values (every float32 operation is
 * done in float; a double operation followed by rounding is used only where that is the same:
 * one +, -, *, / or sqrt).
 */
#include "dynamics.h"
#include "npyf32.h"
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define DYN32_SSE 1
#endif

/* numpy's pairwise summation of a float32 array (float32 accumulators) */
static float pw32(const double *a, ptrdiff_t n) {
  if (n < 8) {
    float res = 0.f;
    for (ptrdiff_t i = 0; i < n; i++) res += (float)a[i];
    return res;
  } else if (n <= 128) {
    float r[8];
    ptrdiff_t i;
    for (int j = 0; j < 8; j++) r[j] = (float)a[j];
    for (i = 8; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; j++) r[j] += (float)a[i + j];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += (float)a[i];
    return res;
  }
  ptrdiff_t n2 = n / 2;
  n2 -= n2 % 8;
  return pw32(a, n2) + pw32(a + n2, n - n2);
}

double dyn_pw_sum32(const double *a, ptrdiff_t n) { return (double)pw32(a, n); }

/* np.mean of a float32 array: float32 sum, then divided (float32 result) */
double dyn_mean32(const double *a, ptrdiff_t n) {
  return (double)(float)((double)pw32(a, n) / (double)n);
}

/* np.std (ddof 0) of a float32 array, all in float32; tmp has room for n values */
double dyn_std32(const double *a, ptrdiff_t n, double *tmp) {
  float m = (float)dyn_mean32(a, n);
  for (ptrdiff_t i = 0; i < n; i++) {
    float d = (float)a[i] - m;
    tmp[i] = (double)(d * d);
  }
  float v = (float)((double)pw32(tmp, n) / (double)n);
  return (double)sqrtf(v);
}

/* std_u / z: a float32 division while z is the float32 initial scaling, else float64 */
double dyn_scaled_std_u(const dyn_gene *g, double z, int zf32) {
  return zf32 ? r32(g->std_u / z) : g->std_u / z;
}

/* np.clip on float32 (NaN propagates) */
static inline float clip32(float x, float lo, float hi) {
  if (isnan(x)) return x;
  float v = x >= lo ? x : lo;
  return v <= hi ? v : hi;
}

/* the model values of the ODE solution (spec 5.1) on float32 arrays; scalars rounded */
static inline void sol32(float eu, float es, float u0, float s0, float ab, float ag, float c,
                         float *U, float *S) {
  *U = u0 * eu + ab * (1.f - eu);
  *S = (s0 * es + ag * (1.f - es)) + c * (es - eu);
}

/* float32 constants of one branch: start (u0, s0), alpha/beta, alpha/gamma, c */
typedef struct {
  float u0, s0, ab, ag, c, nb, ng;
} branch32;

static branch32 branch_consts(double u0, double s0, double a, double b, double g) {
  branch32 k;
  k.u0 = (float)u0;
  k.s0 = (float)s0;
  k.ab = (float)(a / b);
  k.ag = (float)(a / g);
  k.c = (float)((a - u0 * b) * inv0(g - b));
  k.nb = (float)(-b);
  k.ng = (float)(-g);
  return k;
}

/* steady-state distances (spec 4.4 D2, D3) in float32 into w->r2, w->r3: upstream computes them
 * on the float32 u / z and s in both assignment modes */
void dyn_steady_dists32(dyn_gene *g, double alpha, double beta, double gamma, double su) {
  dyn_scratch *w = g->w;
  int n = g->sh->n;
  const double *uh = w->uhat, *s = g->s;
  float ui = (float)(alpha / beta), si = (float)(alpha / gamma);
  float fsu = (float)su, fss = (float)g->std_s;
  for (int i = 0; i < n; i++) {
    float x = (float)uh[i], y = (float)s[i];
    float a = (x - ui) / fsu, b = (y - si) / fss;
    float a2 = x / fsu, b2 = y / fss;
    w->r2[i] = (double)(a2 * a2 + b2 * b2);
    w->r3[i] = (double)(a * a + b * b);
  }
}

/* rows i of y_m = C x_m for the 4 interleaved float32 vectors x (stride 4), accumulated in
 * float32 in stored order (scipy's float32 sparse product); rows = NULL: all n rows. Four rows
 * advance together (four independent dependency chains), each in its own order; rows come in
 * order of their length (sh->ord), so the four have about the same number of terms. */
#ifdef DYN32_SSE
#define DYN32_ACC(acc, p)                                                                     \
  acc = _mm_add_ps(acc, _mm_mul_ps(_mm_set1_ps(cw[p]), _mm_loadu_ps(x + 4 * (size_t)ci[p])))
#endif
static inline __attribute__((always_inline)) void smooth32_body(const dyn_shared *sh,
                                                                const float *x, dyn_scratch *w,
                                                                const int *rows, int nr) {
  const int *cp = sh->cp, *ci = sh->ci;
  const float *cw = sh->cx32;
  double *y[4] = {w->d0, w->d1, w->d2, w->d3};
  int k = 0;
#ifdef DYN32_SSE
  for (; k + 3 < nr; k += 4) {
    int r[4], p[4], e[4], L = -1;
    __m128 acc[4];
    for (int j = 0; j < 4; j++) {
      r[j] = rows ? rows[k + j] : sh->ord[k + j];
      p[j] = cp[r[j]];
      e[j] = cp[r[j] + 1];
      if (L < 0 || e[j] - p[j] < L) L = e[j] - p[j];
      acc[j] = _mm_setzero_ps();
    }
    for (int m = 0; m < L; m++) {
      DYN32_ACC(acc[0], p[0] + m);
      DYN32_ACC(acc[1], p[1] + m);
      DYN32_ACC(acc[2], p[2] + m);
      DYN32_ACC(acc[3], p[3] + m);
    }
    for (int j = 0; j < 4; j++) {
      for (int m = p[j] + L; m < e[j]; m++) DYN32_ACC(acc[j], m);
      float v[4];
      _mm_storeu_ps(v, acc[j]);
      for (int c = 0; c < 4; c++) y[c][r[j]] = (double)v[c];
    }
  }
#endif
  for (; k < nr; k++) {
    int i = rows ? rows[k] : sh->ord[k];
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    for (int p = cp[i]; p < cp[i + 1]; p++) {
      const float *xj = x + 4 * (size_t)ci[p];
      for (int c = 0; c < 4; c++) v[c] += cw[p] * xj[c];
    }
    for (int c = 0; c < 4; c++) y[c][i] = (double)v[c];
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
/* the same operations with VEX encoding (broadcasts from memory) where the CPU has AVX */
__attribute__((target("avx"))) static void smooth32_avx(const dyn_shared *sh, const float *x,
                                                        dyn_scratch *w, const int *rows, int nr) {
  smooth32_body(sh, x, w, rows, nr);
}
#endif
static void smooth32(const dyn_shared *sh, const float *x, dyn_scratch *w, const int *rows,
                     int nr) {
#if defined(__GNUC__) && defined(__x86_64__)
  if (sh->avx) {
    smooth32_avx(sh, x, w, rows, nr);
    return;
  }
#endif
  smooth32_body(sh, x, w, rows, nr);
}

/* branch distances of cell i (spec 4.3 step 2) in float32 into r0 (repression), r1 (induction)
 * and their lanes of x32 */
static inline void branch_dists32(dyn_scratch *w, const double *s, int i, float su, float ss,
                                  int which) {
  float x = (float)w->uhat[i], y = (float)s[i];
  if (which & 1) {
    float du = (x - (float)w->eU[i]) / su, ds = (y - (float)w->eS[i]) / ss;
    float r = du * du + ds * ds;
    w->r1[i] = (double)r;
    w->x32[4 * (size_t)i + 1] = r;
  }
  if (which & 2) {
    float du = (x - (float)w->eU_[i]) / su, ds = (y - (float)w->eS_[i]) / ss;
    float r = du * du + ds * ds;
    w->r0[i] = (double)r;
    w->x32[4 * (size_t)i] = r;
  }
}

/* The inverse time assignment of the float32 flow (spec 4.2-4.4 with upstream's float32
 * dtypes; see the table above). Arguments as assign() in dynamics.c. */
void dyn_assign_inv32(dyn_gene *g, const double *p, double *t_out, double *tau_out, int *o_out,
                      double *tau_raw, double *tau_raw_) {
  const dyn_shared *sh = g->sh;
  dyn_scratch *w = g->w;
  int n = sh->n;
  double alpha = p[0], beta = p[1], gamma = p[2], z = p[3], t_ = p[4];
  const double *s = g->s;
  double *uh = w->uhat, *tau = w->tau, *tau_ = w->tau_;
  float zf = (float)z;
  for (int i = 0; i < n; i++) uh[i] = (double)((float)g->u[i] / zf);
  double su = dyn_scaled_std_u(g, z, (int)p[5]);
  float fsu = (float)su, fss = (float)g->std_s, tf = (float)t_;
  double u0_, s0_;
  sol_us(t_, 0, 0, alpha, beta, gamma, &u0_, &s0_); /* float64 scalars */
  float *A = w->fa, *B = w->fb, *C = w->fc, *D = w->fd;
  const float lo = (float)1e-6, hi = (float)(1 - 1e-6);

  /* raw branch times (spec 4.2, inverse): tau_inv with a float32 ratio, clipped_log */
  double m1;
  if (gamma >= beta) {
    double uinf = alpha / beta, uinf_ = 0 / beta;
    float a1 = (float)uinf, d1 = (float)(0 - uinf), a2 = (float)uinf_, d2 = (float)(u0_ - uinf_);
    for (int i = 0; i < n; i++) {
      float x = (float)uh[i];
      A[i] = clip32((x - a1) / d1, lo, hi);
      B[i] = clip32((x - a2) / d2, lo, hi);
    }
    m1 = -1 / beta;
  } else {
    double b_ = beta * inv0(gamma - beta);
    double xinf = alpha / gamma - b_ * (alpha / beta), xinf_ = 0 / gamma - b_ * (0 / beta);
    float bb = (float)b_, x1 = (float)xinf, x2 = (float)xinf_;
    float d1 = (float)(0 - b_ * 0 - xinf), d2 = (float)(s0_ - b_ * u0_ - xinf_);
    for (int i = 0; i < n; i++) {
      float v = (float)s[i] - bb * (float)uh[i];
      A[i] = clip32((v - x1) / d1, lo, hi);
      B[i] = clip32((v - x2) / d2, lo, hi);
    }
    m1 = -1 / gamma;
  }
  scn_npy_logf_array(A, A, n);
  scn_npy_logf_array(B, B, n);
  float fm = (float)m1, mx = 0.f;
  int anys = 0;
  for (int i = 0; i < n; i++) {
    float a = fm * A[i], b = fm * B[i];
    tau[i] = (double)clip32(a, 0.f, tf);
    tau_[i] = (double)b;
    if (s[i] > 0) { /* np.max over s > 0 (a NaN wins) */
      if (!anys) mx = b;
      else if (!isnan(mx) && (isnan(b) || b > mx)) mx = b;
      anys = 1;
    }
  }
  for (int i = 0; i < n; i++) tau_[i] = (double)clip32((float)tau_[i], 0.f, mx);

  /* model values at the raw times, float32 (spec 4.3 step 2) */
  branch32 on = branch_consts(0, 0, alpha, beta, gamma), off = branch_consts(u0_, s0_, 0, beta, gamma);
  on.u0 = on.s0 = 0.f;
  for (int i = 0; i < n; i++) {
    float t1 = (float)tau[i], t0 = (float)tau_[i];
    A[i] = on.nb * t1;
    B[i] = on.ng * t1;
    C[i] = off.nb * t0;
    D[i] = off.ng * t0;
  }
  scn_npy_expf_array(A, A, n);
  scn_npy_expf_array(B, B, n);
  scn_npy_expf_array(C, C, n);
  scn_npy_expf_array(D, D, n);
  int K = (t_out && sh->fit_steady) ? 4 : 2;
  for (int i = 0; i < n; i++) {
    float U, S;
    sol32(A[i], B[i], on.u0, on.s0, on.ab, on.ag, on.c, &U, &S);
    w->eU[i] = U;
    w->eS[i] = S;
    sol32(C[i], D[i], off.u0, off.s0, off.ab, off.ag, off.c, &U, &S);
    w->eU_[i] = U;
    w->eS_[i] = S;
  }
  for (int i = 0; i < n; i++) branch_dists32(w, s, i, fsu, fss, 3);
  if (K == 4) dyn_steady_dists32(g, alpha, beta, gamma, su);
  float *X = w->x32;
  for (int i = 0; i < n; i++) {
    X[4 * (size_t)i + 2] = K == 4 ? (float)w->r2[i] : 0.f;
    X[4 * (size_t)i + 3] = K == 4 ? (float)w->r3[i] : 0.f;
  }
  double *Dd[4] = {w->r0, w->r1, w->r2, w->r3};
  if (sh->cp) {
    smooth32(sh, X, w, NULL, n);
    Dd[0] = w->d0;
    Dd[1] = w->d1;
    Dd[2] = w->d2;
    Dd[3] = w->d3;
  }

  /* increment constraint (spec 4.3) on float32 times */
  int nch_on = 0, *chl = w->ao;
  int nch = dyn_adjust_block(g, Dd[0], Dd[1], 1, &nch_on);
  for (int c = 0; c < nch; c++) {
    int i = chl[c];
    const branch32 *k = c < nch_on ? &on : &off;
    float tt = (float)(c < nch_on ? tau[i] : tau_[i]);
    float U, S;
    sol32(scn_npy_expf(k->nb * tt), scn_npy_expf(k->ng * tt), k->u0, k->s0, k->ab, k->ag, k->c,
          &U, &S);
    if (c < nch_on) {
      w->eU[i] = U;
      w->eS[i] = S;
    } else {
      w->eU_[i] = U;
      w->eS_[i] = S;
    }
  }
  if (!t_out) {
    memcpy(tau_raw, tau, sizeof(double) * (size_t)n);
    memcpy(tau_raw_, tau_, sizeof(double) * (size_t)n);
    return;
  }

  /* state distances (spec 4.4): the branch distances again at the adjusted times; only the
   * changed cells' values and the rows that read them change */
  if (nch > 0) {
    for (int c = 0; c < nch; c++) branch_dists32(w, s, chl[c], fsu, fss, c < nch_on ? 1 : 2);
    if (sh->cp) {
      unsigned char *rm = w->rmark;
      const int *tp = sh->tp, *ti = sh->ti, *ord = sh->ord;
      memset(rm, 0, (size_t)n);
      for (int c = 0; c < nch; c++) {
        int j = chl[c], q1 = tp[j + 1];
        for (int q = tp[j]; q < q1; q++) rm[ti[q]] = 1;
      }
      int *rows = w->idx_on, nr = 0; /* free here */
      for (int k = 0; k < n; k++) {
        int i = ord[k];
        rows[nr] = i;
        nr += rm[i];
      }
      smooth32(sh, X, w, rows, nr);
    }
  }
  for (int i = 0; i < n; i++) {
    int k = dyn_state_choice((const double *const *)Dd, K, i);
    float tm = (float)tau[i] * (float)(k == 1), tm_ = (float)tau_[i] * (float)(k == 0);
    int ob = (k == 1 || k == 2);
    t_out[i] = (double)(tm * (float)ob + (tm_ + tf) * (float)(!ob));
    tau_out[i] = (double)tm;
    o_out[i] = ob;
  }
}
