/* numeric.c: small numeric kernels shared by the models (no R API, no SEXP).
 *   scn_select_kth()      k-th smallest by quickselect (permutes its input)
 *   scn_quantile_linear() numpy's quantile/percentile with the default "linear" method;
 *   scn_quantile_linear32() the same of a float32 array (values held as doubles)
 *   scn_vsqrt()           square roots of an array through the vector instructions
 *   scn_vsqrtf()          the same for floats */
#include "scnative.h"

/* Square roots of n doubles. With errno semantics (R's default flags) sqrt() keeps a loop from
 * vectorising, so the vector instructions are called directly where the CPU has them (the
 * results are the same: IEEE square roots are correctly rounded). */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static void vsqrt_avx512(int n, const double *x, double *y) {
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm512_storeu_pd(y + i, _mm512_sqrt_pd(_mm512_loadu_pd(x + i)));
  for (; i < n; i++) y[i] = sqrt(x[i]);
}
__attribute__((target("avx"))) static void vsqrt_avx(int n, const double *x, double *y) {
  int i = 0;
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(y + i, _mm256_sqrt_pd(_mm256_loadu_pd(x + i)));
  for (; i < n; i++) y[i] = sqrt(x[i]);
}
static void vsqrt_sse2(int n, const double *x, double *y) {
  int i = 0;
  for (; i + 2 <= n; i += 2) _mm_storeu_pd(y + i, _mm_sqrt_pd(_mm_loadu_pd(x + i)));
  for (; i < n; i++) y[i] = sqrt(x[i]);
}
void scn_vsqrt(int n, const double *x, double *y) {
  if (__builtin_cpu_supports("avx512f")) vsqrt_avx512(n, x, y);
  else if (__builtin_cpu_supports("avx")) vsqrt_avx(n, x, y);
  else vsqrt_sse2(n, x, y);
}
__attribute__((target("avx512f"))) static void vsqrtf_avx512(int n, const float *x, float *y) {
  int i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_sqrt_ps(_mm512_loadu_ps(x + i)));
  for (; i < n; i++) y[i] = sqrtf(x[i]);
}
__attribute__((target("avx"))) static void vsqrtf_avx(int n, const float *x, float *y) {
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
  for (; i < n; i++) y[i] = sqrtf(x[i]);
}
static void vsqrtf_sse2(int n, const float *x, float *y) {
  int i = 0;
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(y + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
  for (; i < n; i++) y[i] = sqrtf(x[i]);
}
void scn_vsqrtf(int n, const float *x, float *y) {
  if (__builtin_cpu_supports("avx512f")) vsqrtf_avx512(n, x, y);
  else if (__builtin_cpu_supports("avx")) vsqrtf_avx(n, x, y);
  else vsqrtf_sse2(n, x, y);
}
#else
void scn_vsqrt(int n, const double *x, double *y) {
  for (int i = 0; i < n; i++) y[i] = sqrt(x[i]);
}
void scn_vsqrtf(int n, const float *x, float *y) {
  for (int i = 0; i < n; i++) y[i] = sqrtf(x[i]);
}
#endif


double scn_select_kth(double *a, ptrdiff_t n, ptrdiff_t k) {
  ptrdiff_t lo = 0, hi = n - 1;
  while (hi > lo) {
    ptrdiff_t mid = lo + (hi - lo) / 2;
    /* median of three as pivot */
    double x = a[lo], y = a[mid], z = a[hi], piv;
    if (x < y)
      piv = (y < z) ? y : ((x < z) ? z : x);
    else
      piv = (x < z) ? x : ((y < z) ? z : y);
    ptrdiff_t i = lo, j = hi;
    while (i <= j) {
      while (a[i] < piv) i++;
      while (a[j] > piv) j--;
      if (i <= j) {
        double t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j)
      hi = j;
    else if (k >= i)
      lo = i;
    else
      return a[k];
  }
  return a[k];
}

/* numpy's linear quantile (q in [0, 1]) of a[0..n-1], which is permuted; NaN if any NaN.
 * Virtual index h = (n - 1) q, g = h - floor(h); a + (b - a) g if g < 0.5 else
 * b - (b - a)(1 - g), as numpy's _lerp. */
static double quantile_linear(double *a, ptrdiff_t n, double q, int f32) {
  if (n == 0) return NAN;
  for (ptrdiff_t i = 0; i < n; i++)
    if (isnan(a[i])) return NAN;
  double vi = (double)(n - 1) * q;
  double fl = floor(vi);
  ptrdiff_t prev = (ptrdiff_t)fl, next = prev + 1;
  double g = vi - fl;
  if (vi >= (double)(n - 1)) {
    prev = next = n - 1;
  } else if (vi < 0) {
    prev = next = 0;
  }
  double lo = scn_select_kth(a, n, prev);
  double hi = lo;
  if (next != prev) {
    /* the smallest of the upper part */
    hi = a[prev + 1];
    for (ptrdiff_t i = prev + 2; i < n; i++)
      if (a[i] < hi) hi = a[i];
  }
  double diff = hi - lo;
  if (f32) diff = (double)(float)diff; /* numpy subtracts the two float32 values in float32 */
  double r = lo + diff * g;
  if (g >= 0.5) r = hi - diff * (1 - g);
  return r;
}
double scn_quantile_linear(double *a, ptrdiff_t n, double q) { return quantile_linear(a, n, q, 0); }
double scn_quantile_linear32(double *a, ptrdiff_t n, double q) {
  return quantile_linear(a, n, q, 1);
}

/* .Call(C_scnative_value_flags, x): for a double, integer or logical vector, whether it holds
 * NA/NaN, +-Inf, negative values, non-integer values (1/0), and the largest finite |value|
 * (one pass, no temporaries) */
SEXP scnative_value_flags(SEXP x) {
  SEXP out = PROTECT(allocVector(REALSXP, 5));
  double *f = REAL(out);
  f[0] = f[1] = f[2] = f[3] = f[4] = 0;
  R_xlen_t n = XLENGTH(x);
  if (isReal(x)) {
    const double *v = REAL(x);
    double mx = 0;
    for (R_xlen_t i = 0; i < n; i++) {
      double a = v[i];
      if (isnan(a)) f[0] = 1;
      else if (isinf(a)) f[1] = 1;
      else {
        if (a < 0) f[2] = 1;
        if (a != floor(a)) f[3] = 1;
        if (fabs(a) > mx) mx = fabs(a);
      }
    }
    f[4] = mx;
  } else if (isInteger(x) || isLogical(x)) {
    const int *v = isInteger(x) ? INTEGER(x) : LOGICAL(x);
    double mx = 0;
    for (R_xlen_t i = 0; i < n; i++) {
      if (v[i] == NA_INTEGER) f[0] = 1;
      else {
        if (v[i] < 0) f[2] = 1;
        if (fabs((double) v[i]) > mx) mx = fabs((double) v[i]);
      }
    }
    f[4] = mx;
  } else {
    UNPROTECT(1);
    error("value_flags: unsupported type");
  }
  UNPROTECT(1);
  return out;
}

/* .Call(C_scnative_dense_csc, m): the non-zero entries of a dense numeric / integer / logical
 * matrix as CSC slots list(p, i, x) (x double; NA kept as a non-zero). A straight pass,
 * column by column, for the blocks read from dense DelayedArrays. */
SEXP scnative_dense_csc(SEXP m) {
  SEXP dim = getAttrib(m, R_DimSymbol);
  if (!isInteger(dim) || XLENGTH(dim) != 2 || !(isReal(m) || isInteger(m) || isLogical(m)))
    error("dense_csc: not a numeric matrix");
  const int nr = INTEGER(dim)[0], nc = INTEGER(dim)[1];
  const int isr = isReal(m);
  const double *dv = isr ? REAL(m) : NULL;
  const int *iv = isr ? NULL : (isInteger(m) ? INTEGER(m) : LOGICAL(m));
  R_xlen_t nnz = 0, n = (R_xlen_t)nr * nc;
  for (R_xlen_t k = 0; k < n; k++) nnz += isr ? dv[k] != 0.0 : iv[k] != 0;
  if (nnz > INT_MAX) error("dense_csc: more than 2^31 - 1 non-zero values in one block");
  SEXP p = PROTECT(allocVector(INTSXP, (R_xlen_t)nc + 1));
  SEXP ix = PROTECT(allocVector(INTSXP, nnz)), x = PROTECT(allocVector(REALSXP, nnz));
  int *pp = INTEGER(p), *ii = INTEGER(ix);
  double *xx = REAL(x);
  int q = 0;
  pp[0] = 0;
  for (int c = 0; c < nc; c++) {
    R_xlen_t off = (R_xlen_t)c * nr;
    for (int r = 0; r < nr; r++) {
      if (isr) {
        double v = dv[off + r];
        if (v != 0.0) ii[q] = r, xx[q++] = v; /* NaN != 0: kept */
      } else {
        int v = iv[off + r];
        if (v != 0) ii[q] = r, xx[q++] = v == NA_INTEGER ? NA_REAL : (double)v;
      }
    }
    pp[c + 1] = q;
  }
  static const char *names[] = {"p", "i", "x"};
  SEXP res = PROTECT(scn_named_list(3, names));
  SET_VECTOR_ELT(res, 0, p);
  SET_VECTOR_ELT(res, 1, ix);
  SET_VECTOR_ELT(res, 2, x);
  UNPROTECT(4);
  return res;
}
