/* scnative.h: the shared pieces of the C core, used by every model.
 *
 *   threads   (openmp.c): one package-wide thread count; scn_threads_for() is what every
 *                         parallel region passes to num_threads().
 *   BLAS      (blas.c):   scn_dgemm(), the one wrapper around R's dgemm.
 *   RNG       (rng.c):    a counter-based generator (Philox4x32-10): value i of stream s under
 *                         seed k is a pure function of (k, s, i), so a parallel fill gives the same
 *                         numbers whatever the thread count.
 *   interrupts(openmp.c): scn_interrupt_pending(), a non-jumping check for use between chunks.
 *
 * Shims that R calls are named scnative_<topic>_<what>() and registered in init.c;
 * kernels take plain pointers and never touch SEXP.
 */
#ifndef SCNATIVE_H
#define SCNATIVE_H

#define USE_FC_LEN_T
#include <R.h>
#include <Rinternals.h>
#include <R_ext/BLAS.h>
#include <R_ext/Lapack.h>
#include <R_ext/Rdynload.h>
#include <R_ext/Visibility.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <limits.h>
#include <stddef.h>
#ifndef FCONE
#define FCONE
#endif

#ifdef _OPENMP
#include <omp.h>
#else
/* Serial fallback: the code builds and runs without OpenMP. */
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_num_procs(void) { return 1; }
static inline int omp_get_thread_limit(void) { return 1; }
#endif

#include <libintl.h>
#define _(String) dgettext("scnative", String)

/* ---- threads (openmp.c) ---- */
/* Threads to use for a region with `work` independent items: `requested` if > 0 (capped by
 * the limits), else the package-wide count; never more than `work`; at least 1. */
int scn_threads_for(R_xlen_t work, int requested);
int scn_threads_get(void);
/* TRUE if the user pressed Ctrl-C; does not jump, so callers can free and then error(). */
int scn_interrupt_pending(void);

/* ---- BLAS (blas.c) ---- */
/* C = alpha * op(A) %*% op(B) + beta * C, column-major, op = "N" or "T".
 * m x n result, k the inner dimension; lda/ldb/ldc the leading dimensions. */
void scn_dgemm(char transA, char transB, int m, int n, int k, double alpha, const double *A,
               int lda, const double *B, int ldb, double beta, double *C, int ldc);
/* The same in float through the BLAS's own sgemm_ where the linked BLAS exports one (looked
 * up at run time); returns 0 (and does nothing) where there is none or a size is 0. */
int scn_have_sgemm(void);
int scn_sgemm(char transA, char transB, int m, int n, int k, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* ---- RNG (rng.c) ---- */
/* 4 x 32 random bits for (seed, stream, counter). */
void scn_philox(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]);
/* out[j] = the (offset + j)-th standard normal of stream `stream`, j = 0..n-1. */
void scn_rng_normals(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, double *out);
/* the same blocks' normals computed in float, as floats (a float32 fit's guide) */
void scn_rng_normals_f(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, float *out);
/* out[j] = the (offset + j)-th uniform on (0, 1) of stream `stream`. */
void scn_rng_uniforms(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, double *out);
/* perm = a uniformly random permutation of 0..n-1 (Fisher-Yates on the n uniforms of `stream`
 * at offset counter * n; un: scratch of n). */
void scn_rng_permutation(uint64_t seed, uint64_t stream, uint64_t counter, int n, double *un,
                         int *perm);
/* seed from an R double in [0, 2^53) (validated on the R side). */
uint64_t scn_seed_from_sexp(SEXP seed);

/* ---- numeric kernels (numeric.c) ---- */
/* y = sqrt(x) elementwise (x >= 0), vectorised whatever the errno flags (identical results). */
void scn_vsqrt(int n, const double *x, double *y);
void scn_vsqrtf(int n, const float *x, float *y);
/* k-th smallest (0-based) of a[0..n-1] by quickselect; permutes a; no NaN in a. */
double scn_select_kth(double *a, ptrdiff_t n, ptrdiff_t k);
/* numpy's quantile with the default "linear" method, q in [0, 1]; permutes a; NaN if any NaN. */
double scn_quantile_linear(double *a, ptrdiff_t n, double q);
/* the same for a float32 array held as doubles: numpy's result is float64, interpolated with the
 * float32 difference of the two order statistics */
double scn_quantile_linear32(double *a, ptrdiff_t n, double q);

/* ---- SVI shared by the cell2location models (svi.c) ---- */
double scn_digamma(double x);
double scn_lgamma(double x);
static inline double scn_softplus(double r) { return r > 20.0 ? r : log1p(exp(r)); }
static inline double scn_dsoftplus(double r) { return r > 20.0 ? 1.0 : 1.0 / (1.0 + exp(-r)); }
/* log Gamma(z; a, b) density with log z = lz */
static inline double scn_lgamma_pdf(double z, double lz, double a, double b) {
  return a * log(b) + (a - 1.0) * lz - b * z - scn_lgamma(a);
}
/* the branch-free kernels below must be inlined into the loops that use them to vectorise */
#if defined(__GNUC__)
#define SCN_INLINE inline __attribute__((always_inline))
#else
#define SCN_INLINE inline
#endif
/* cond ? a : b on the bits, without a branch: GCC turns ?: on doubles into branches and, where
 * one side folds to a constant, into paths whose floating-point operations keep loops from
 * vectorising (except with AVX-512's masks). */
static SCN_INLINE double scn_blend(int64_t cond, double a, double b) {
  uint64_t m = (uint64_t)0 - (uint64_t)cond, ua, ub;
  memcpy(&ua, &a, sizeof ua);
  memcpy(&ub, &b, sizeof ub);
  ua = (ua & m) | (ub & ~m);
  memcpy(&a, &ua, sizeof a);
  return a;
}
static SCN_INLINE float scn_blendf(int32_t cond, float a, float b) {
  uint32_t m = (uint32_t)0 - (uint32_t)cond, ua, ub;
  memcpy(&ua, &a, sizeof ua);
  memcpy(&ub, &b, sizeof ub);
  ua = (ua & m) | (ub & ~m);
  memcpy(&a, &ua, sizeof a);
  return a;
}
/* log for positive normal doubles, branch-free so that loops vectorise:
 * x = 2^e m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(t), t = (m - 1)/(m + 1). */
static SCN_INLINE double scn_log_fast(double x) {
  uint64_t b;
  memcpy(&b, &x, sizeof b);
  /* m > sqrt(2) (mantissa bits above sqrt(2)'s): m / 2 and e + 1, in integer arithmetic (a
   * conditional floating-point operation would keep AVX2 from vectorising) */
  int64_t mant = (int64_t)(b & 0x000fffffffffffffULL);
  int64_t big = mant > (int64_t)0x6A09E667F3BCDLL ? 1 : 0;
  uint64_t eb = ((b >> 52) + (uint64_t)big) | 0x4330000000000000ULL; /* 2^52 + biased exponent */
  double ed;
  memcpy(&ed, &eb, sizeof ed);
  ed -= 4503599627370496.0 + 1023.0;
  uint64_t mb = (uint64_t)mant | ((uint64_t)(1023 - big) << 52);
  double m;
  memcpy(&m, &mb, sizeof m);
  double t = (m - 1.0) / (m + 1.0), t2 = t * t;
  double p = 1.0 / 19;
  p = p * t2 + 1.0 / 17;
  p = p * t2 + 1.0 / 15;
  p = p * t2 + 1.0 / 13;
  p = p * t2 + 1.0 / 11;
  p = p * t2 + 1.0 / 9;
  p = p * t2 + 1.0 / 7;
  p = p * t2 + 1.0 / 5;
  p = p * t2 + 1.0 / 3;
  p = p * t2 + 1.0;
  return ed * 0.69314718055994530942 + 2.0 * t * p;
}
/* exp, branch-free so that loops vectorise (a few ulp): x = k ln 2 + r, |r| <= ln 2 / 2, Taylor
 * series of exp(r) to degree 13, times 2^k applied in two halves (so that subnormal results come
 * out as exp()'s); Inf above and 0 below the range (selected at the end: a clamped argument
 * would give constant paths with trapping operations, which keep loops from vectorising). NaN
 * gives NaN. */
static SCN_INLINE double scn_exp_fast(double x) {
  const double shifter = 6755399441055744.0; /* 1.5 * 2^52: rounds to an integer in the low bits */
  double kd = x * 1.4426950408889634074 + shifter;
  uint64_t kb;
  memcpy(&kb, &kd, sizeof kb);
  kd -= shifter;
  int64_t k = (int64_t)(int32_t)(uint32_t)kb;
  double r = x - kd * 0.693147180369123816490; /* ln 2, high part (exact times k) */
  r -= kd * 1.90821492927058770002e-10;        /* ln 2, low part */
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t k1 = k / 2, k2 = k - k1;
  uint64_t b1 = (uint64_t)(k1 + 1023) << 52, b2 = (uint64_t)(k2 + 1023) << 52;
  double s1, s2;
  memcpy(&s1, &b1, sizeof s1);
  memcpy(&s2, &b2, sizeof s2);
  double y = scn_blend(x > 709.782712893384, HUGE_VAL, p * s1 * s2);
  return scn_blend(x < -745.2, 0.0, y);
}
/* log for positive normal floats, branch-free and without a division so that loops vectorise:
 * x = 2^e m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), log m = f - f^2 / 2 + f^3 P(f)
 * with P of degree 7 fitted to log1p on that range (relative error of P's part below 6e-9;
 * the float evaluation is within about 1e-7 of log). */
static SCN_INLINE float scn_logf_fast(float x) {
  uint32_t b;
  memcpy(&b, &x, sizeof b);
  int32_t mant = (int32_t)(b & 0x007fffffU);
  int32_t big = mant > 0x3504F3 ? 1 : 0;
  int32_t e = (int32_t)(b >> 23) - 127 + big;
  uint32_t mb = (uint32_t)mant | ((uint32_t)(127 - big) << 23);
  float m;
  memcpy(&m, &mb, sizeof m);
  float f = m - 1.0f, f2 = f * f;
  float p = -0.07633508741855621f;
  p = p * f + 0.12760266661643982f;
  p = p * f - 0.13159936666488647f;
  p = p * f + 0.14201922714710236f;
  p = p * f - 0.16623398661613464f;
  p = p * f + 0.20001220703125f;
  p = p * f - 0.2500081956386566f;
  p = p * f + 0.3333333134651184f;
  float y = f2 * f * p - 0.5f * f2;
  float ed = (float)e;
  return ed * 0.693145751953125f + (f + (y + ed * 1.428606765330187e-06f));
}
/* exp for floats, branch-free: x = k ln 2 + r, |r| <= ln 2 / 2, e^r by its Taylor polynomial of
 * degree 7 (relative error below 1e-8 before rounding); 0 below -87.3, Inf above 88.7. */
static SCN_INLINE float scn_expf_fast(float x) {
  const float shifter = 12582912.0f; /* 1.5 * 2^23 */
  float xc = scn_blendf(x < -87.3f, -87.3f, x);
  xc = scn_blendf(xc > 88.0f, 88.0f, xc);
  float kd = xc * 1.44269504088896341f + shifter;
  uint32_t kb;
  memcpy(&kb, &kd, sizeof kb);
  kd -= shifter;
  int32_t k = (int32_t)(kb & 0x7fffffU) - 0x400000; /* 1.5 * 2^23 + k: k + 2^22 in the low bits */
  float r = xc - kd * 0.693145751953125f;
  r -= kd * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  uint32_t sb = (uint32_t)(k + 127) << 23;
  float sc;
  memcpy(&sc, &sb, sizeof sc);
  float y = p * sc;
  y = scn_blendf(x > 88.7f, HUGE_VALF, y);
  return scn_blendf(x < -87.3f, 0.0f, y);
}
/* log1p for x >= 0 (branch-free): log(1 + x) corrected for the rounding of 1 + x. */
static SCN_INLINE double scn_log1p_fast(double x) {
  double w = 1.0 + x;
  return scn_log_fast(w) - ((w - 1.0) - x) / w;
}
/* lgamma(x) and digamma(x) for x > 0 together, branch-free so that loops vectorise: x is shifted
 * to x + n >= 10 (n <= 10 fixed steps; the product and the sum of reciprocals are kept as one
 * fraction, so one division), then Stirling's series for both. */
static SCN_INLINE void scn_lgamma_digamma_fast(double x, double *lg, double *dg) {
  double p = 1.0, q = 0.0, t = x; /* sum_k 1/(x + k) = q / p */
  for (int k = 0; k < 10; k++) {
    int64_t lt = t < 10.0;
    double tt = scn_blend(lt, t, 1.0), pp = scn_blend(lt, p, 0.0), one = scn_blend(lt, 1.0, 0.0);
    q = q * tt + pp;
    p *= tt;
    t += one;
  }
  double lt = scn_log_fast(t), it = 1.0 / t, f = it * it;
  double s = (1.0 / 12 - f * (1.0 / 360 - f * (1.0 / 1260 - f * (1.0 / 1680 - f / 1188)))) * it;
  *lg = (t - 0.5) * lt - t + 0.91893853320467274178 + s - scn_log_fast(p);
  *dg = lt - 0.5 * it -
        f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f / 132)))) - q / p;
}
/* Vectorisable clones of hot kernels where the compiler supports them. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    __GNUC__ >= 8
#define SCN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SCN_CLONES
#endif
/* One step of torch Adam (clipped = 0) or pyro ClippedAdam (clipped = 1) on n elements. */
void scn_adam(R_xlen_t n, double *theta, const double *grad, double *m, double *v, long t,
              double lr, int clipped, double clip);
typedef struct {
  double lr, clip, lrd;
  int clipped;
} scn_optim;
/* An AutoNormal guide over nsite sites, flat: site j is [off[j], off[j+1]). The model's
 * callback reads u and z (z = exp(u)) and writes d log p / dz into gz. */
#define SCN_GUIDE_MAXSITE 32
typedef struct {
  int nsite;
  R_xlen_t P, *off;
  double *loc, *rho, *m, *v; /* m, v: 2P (loc then rho) */
  long t;                    /* optimiser steps since the last reset */
  double *eps, *u, *z, *gz;
  double *ds, *dsr; /* the step's d sigma / d rho and (d sigma / d rho) / sigma, per element */
  double *lqp;     /* per piece of the step's loops: partial sums of log q */
  /* Elements [fa, fb) (whole sites) are sampled and updated by the model inside its own pass
   * (scn_guide_fused_sample / _update, while they are in cache), not by scn_svi_step's loops;
   * fa = fb = P: none. During scn_svi_step's model call `fused` is 1 and fseed, fstep, fc
   * hold the step's seed, step and optimiser constants; the model puts the fused elements'
   * sum of log q (without the constant) into flq. */
  R_xlen_t fa, fb;
  int fused;
  int f32; /* 1: a float32 guide (svi.c): float arithmetic; eps, ds, dsr, m, v hold floats */
  uint64_t fseed;
  double fstep, fc[4], flq;
} scn_guide;
typedef double (*scn_logp_fn)(void *ctx, int nth); /* log p(x, z); fills the guide's gz */
int scn_guide_alloc(scn_guide *g, int nsite, const R_xlen_t *sizes); /* 0: out of memory */
int scn_guide_alloc2(scn_guide *g, int nsite, const R_xlen_t *sizes, int lean);
void scn_guide_free(scn_guide *g);
void scn_guide_reset_optim(scn_guide *g);
void scn_guide_draw_eps(scn_guide *g, uint64_t seed, double step, int nth);
void scn_guide_draw_eps_at(scn_guide *g, uint64_t seed, double step, const R_xlen_t *stride,
                           int nth);
/* One SVI step (eps of `step`); returns the loss -log p + log q. */
double scn_svi_step(scn_guide *g, scn_logp_fn logp, void *ctx, uint64_t seed, double step,
                    const scn_optim *opt, int nth);
/* One minibatch step: `sub` holds elements idx[] of `g`, site j scaled by scale[j]; the
 * optimiser steps all of `g` (svi.c). */
double scn_svi_step_sub(scn_guide *g, scn_guide *sub, const R_xlen_t *idx, const double *scale,
                        scn_logp_fn logp, void *ctx, uint64_t seed, double step,
                        const scn_optim *opt, int nth);
void scn_guide_set_u(scn_guide *g, const double *u); /* u and z = exp(u) */
/* The fused elements (see scn_guide): site j's elements i0 .. i0 + n - 1 drawn and sampled
 * into the caller's buffers (returns their log q without the constant), and, once the model
 * has filled gz for them, their optimiser step (global element a = off[j] + i0). For a float32
 * guide, eps, ds and dsr hold n floats (in buffers of n doubles). */
double scn_guide_fused_sample(const scn_guide *g, int j, R_xlen_t i0, R_xlen_t n, double *eps,
                              double *u, double *z, double *ds, double *dsr);
void scn_guide_fused_update(scn_guide *g, R_xlen_t a, R_xlen_t n, const double *eps,
                            const double *z, const double *gz, const double *ds,
                            const double *dsr);
/* loc and rho from R vectors of length P; resets the optimiser state. Returns R's NULL. */
SEXP scn_guide_set_params(scn_guide *g, SEXP loc, SEXP rho);
/* Priors shared by both models; each returns its log density and SETS the gradients
 * d log p / dz of its sites (callers add the likelihood's parts afterwards).
 * Background: h ~ Gamma(hyp[0], hyp[1]); S_e ~ Gamma(hyp[2], hyp[3]); iota_e ~ Exp(h);
 * s_eg ~ Gamma(1/iota_e^2, 1/(iota_e^2 S_e)), s stored e + g * E. */
double scn_background_prior(int E, int G, double hh, double uh, const double *zSe,
                            const double *uSe, const double *zi, const double *zs,
                            const double *us, const double hyp[4], double *gh, double *gSe,
                            double *gi, double *gs);
/* Over-dispersion: phi ~ Gamma(a, b); o_i ~ Exp(phi), i < n. */
double scn_overdispersion_prior(R_xlen_t n, double phi, double uphi, const double *zo, double a,
                                double b, double *gphi, double *go);
SEXP scn_named_list(int n, const char **names); /* a list with names, elements NULL */
void *scn_state_get(SEXP ptr, const char *what); /* a model state's pointer, or an R error */
SEXP scn_guide_params_sexp(const scn_guide *g);     /* list(loc, rho, steps) */
SEXP scn_logjoint_sexp(const scn_guide *g, double lp); /* list(logp, grad wrt u) */

/* ---- small helpers ---- */
#define SCN_INTERNAL_ERROR(msg) \
  error("internal error in %s (%s:%d): %s; please report it", __func__, __FILE__, __LINE__, msg)

#endif
