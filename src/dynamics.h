/* dynamics.h: internal to the scVelo dynamical model (dynamics.c: the EM; dynamics_assign.c:
 * the time assignment; dynamics_f32.c: the float32 flow).
 *
 * A parameter vector p has DYN_NPARV entries: alpha, beta_hat, gamma, z, t_ and whether z is
 * still the float32 initial scaling (in the float32 flow that decides the precision of
 * std_u / z, spec section "float32 inputs and numpy version"). Assignments are cached by that
 * vector plus the projection flag.
 */
#ifndef SCNATIVE_DYNAMICS_H
#define SCNATIVE_DYNAMICS_H
#include "scnative.h"

#define DYN_MAX_LOSS 64
#define DYN_NPAR 14 /* output columns per gene */
#define DYN_CACHE 6  /* cached assignments per gene */

enum { AM_NONE = 0, AM_PROJECTION = 1, AM_PARTIAL = 2, AM_FULL = 3 };
#define DYN_NPARV 6 /* alpha, beta, gamma, z, t_, z-is-float32 */
#define DYN_NKEY 7  /* the above plus the projection flag */

/* numpy maximum/minimum (NaN propagates) */
static inline double np_max2(double a, double b) {
  if (isnan(a)) return a;
  if (isnan(b)) return b;
  return a >= b ? a : b;
}
static inline double np_min2(double a, double b) {
  if (isnan(a)) return a;
  if (isnan(b)) return b;
  return a <= b ? a : b;
}
static inline double np_clip(double x, double lo, double hi) { return np_min2(np_max2(x, lo), hi); }

/* ---------------------------------------------------------------- model pieces */

static inline double inv0(double x) { return (1.0 / x) * (double)(x != 0); }

/* U(tau) from u0 under transcription a */
static inline double sol_u(double tau, double u0, double a, double b) {
  double eu = exp(-b * tau);
  return u0 * eu + a / b * (1 - eu);
}
/* U, S from u0, s0 given eu = exp(-b tau), es = exp(-g tau) */
static inline void sol_us_e(double eu, double es, double u0, double s0, double a, double b,
                            double g, double *U, double *S) {
  *U = u0 * eu + a / b * (1 - eu);
  double c = (a - u0 * b) * inv0(g - b);
  *S = s0 * es + a / g * (1 - es) + c * (es - eu);
}
static inline void sol_us(double tau, double u0, double s0, double a, double b, double g,
                          double *U, double *S) {
  sol_us_e(exp(-b * tau), exp(-g * tau), u0, s0, a, b, g, U, S);
}

static inline double clipped_log(double x) { return log(np_clip(x, 1e-6, 1 - 1e-6)); }

/* tau_inv for one cell (spec 5.2); u-branch if gamma >= beta */
static inline double tau_inv1(double u, double s, double u0, double s0, double a, double b,
                              double g) {
  if (g >= b) {
    double uinf = a / b;
    return -1 / b * clipped_log((u - uinf) / (u0 - uinf));
  }
  double b_ = b * inv0(g - b);
  double xinf = a / g - b_ * (a / b);
  return -1 / g * clipped_log((s - b_ * u - xinf) / (s0 - b_ * u0 - xinf));
}

/* ---------------------------------------------------------------- per-gene state */

typedef struct {
  int n;
  /* connectivities: CSR with float32-rounded weights, or NULL */
  const int *cp, *ci;
  const double *cx;
  const float *cx32; /* the same weights as float (float32 flow) */
  const int *ord;    /* the rows by ascending number of terms (float32 flow) */
  int *tp, *ti; /* the pattern transposed: column j lists the rows i that read x_j */
  int fit_steady;
  int proj_grid; /* M */
  int avx;       /* 256-bit smoothing available */
  int f32;       /* upstream's float32 flow (float32 Ms/Mu under numpy 1.x casting) */
  int argsort_net; /* np.argsort's tie order is that of numpy's AVX512_SKX sorting network */
} dyn_shared;

typedef struct {
  double *uhat, *tau, *tau_, *r0, *r1, *r2, *r3, *d0, *d1, *d2, *d3;
  double *sbuf, *sbuf2, *dbuf, *wbuf, *ilv, *eU, *eS, *eU_, *eS_, *jv0, *jv1;
  unsigned char *rmark; /* resmooth's row marks */
  uint64_t *k1, *k2;
  double *ct, *ctau, *at, *atau, *grid;
  int *co, *ao, *idx_on, *idx_off;
  /* assignments already computed for this gene, keyed by the exact parameters */
  double ckey[DYN_CACHE][DYN_NKEY];
  double *ct_[DYN_CACHE], *ctau_[DYN_CACHE];
  int *co_[DYN_CACHE];
  unsigned long cstamp[DYN_CACHE], clock;
  int cvalid[DYN_CACHE];
  double *cbuf;
  int *cibuf;
  float *f32buf; /* float32 flow: fa, fb, fc, fd (n each) and the interleaved x32 (4 n) */
  float *fa, *fb, *fc, *fd, *x32;
} dyn_scratch;

typedef struct {
  const dyn_shared *sh;
  dyn_scratch *w;
  const double *u, *s; /* after basal subtraction */
  int *W, nW, *Wup, nWup;
  double std_u, std_s;
  double alpha, beta, gamma, t_, z;
  int zf32;  /* float32 flow: z is still the float32 initial scaling (numpy scalar type) */
  int t32;   /* float32 flow: the stored t is a float32 array (inverse assignment) */
  double ratio;
  int has_ratio;
  double steady_u, steady_s, pval;
  int mode;  /* current assignment mode */
  int refit; /* refit_time */
  double *t, *tau;
  int *o;
  double key[DYN_NKEY];
  int key_valid;
  double loss[DYN_MAX_LOSS];
  int nloss;
  int fail;
} dyn_gene;

static inline int use_projection(int mode, double beta, double gamma) {
  return mode == AM_FULL || mode == AM_PARTIAL || (mode == AM_PROJECTION && beta < gamma);
}

/* numpy percentile, method "linear", of a (permuted in place); NaN if any NaN. With f32 the
 * values are a float32 array's: numpy interpolates with their difference rounded to float32
 * and returns float64 */
static inline double np_percentile(double *a, ptrdiff_t n, double q) {
  return scn_quantile_linear(a, n, q / 100.0);
}
static inline double np_percentile_t(double *a, ptrdiff_t n, double q, int f32) {
  return f32 ? scn_quantile_linear32(a, n, q / 100.0) : scn_quantile_linear(a, n, q / 100.0);
}

/* numpy linspace point i of num from a to b */
static inline double lsp(double a, double b, int num, int i) {
  if (i == num - 1) return b;
  double div = (double)(num - 1);
  double step = (b - a) / div;
  if (step == 0) return ((double)i / div) * (b - a) + a;
  return (double)i * step + a;
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define DYN_AVX 1 /* 256-bit paths compiled (used where the CPU has AVX) */
#endif

/* float32 helpers of the float32 flow */
static inline double r32(double x) { return (double)(float)x; }

/* shared by both flows (dynamics.c, dynamics_assign.c) */
void dyn_sort(double *a, ptrdiff_t n, uint64_t *k1, uint64_t *k2);
int dyn_adjust_block(dyn_gene *g, const double *D0, const double *D1, int round32, int *nch_on);
int dyn_state_choice(const double *const *D, int K, int i);

/* the time assignment (dynamics_assign.c) */
void dyn_assign(dyn_gene *g, const double *p, double *t_out, double *tau_out, int *o_out,
                double *tau_raw, double *tau_raw_);
void dyn_assign_key(const dyn_gene *g, const double *p, double *key);
int dyn_get_assignment(dyn_gene *g, const double *p, double *t, double *tau, int *o);

/* the float32 flow (dynamics_f32.c) */
double dyn_pw_sum32(const double *a, ptrdiff_t n);
double dyn_mean32(const double *a, ptrdiff_t n);
double dyn_std32(const double *a, ptrdiff_t n, double *tmp);
double dyn_scaled_std_u(const dyn_gene *g, double z, int zf32);
void dyn_assign_inv32(dyn_gene *g, const double *p, double *t_out, double *tau_out, int *o_out,
                      double *tau_raw, double *tau_raw_);
void dyn_steady_dists32(dyn_gene *g, double alpha, double beta, double gamma, double su);

#endif
