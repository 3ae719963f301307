/* npyf32.c: numpy 1.26's float32 exp and log on x86-64, bit for bit (no R API, no SEXP).
 *
 * On x86-64, numpy 1.26 computes np.exp and np.log of float32 arrays with its own SIMD code
 * (numpy 1.26 loops_exponent_log.dispatch.c.src) when the CPU has AVX512F, or AVX2 with FMA3;
 * otherwise it calls the C library's expf/logf. We do the same choice at run time. Each lane
 * is computed on its own (no lane sees another), so any vector width gives the same bits, and
 * the results below hold value by value.
 *
 * exp(x), single precision throughout, every a*b+c below a fused multiply-add:
 *   - NaN gives the quiet NaN 0x7fc00000 (sign and payload dropped); x >= 88.72283935546875
 *     (including +Inf) gives +Inf; x <= -103.97208404541015625 (including -Inf) gives +0.
 *   - k = round-to-nearest-even of the rounded product x*log2(e), done by adding and then
 *     subtracting 1.5*2^23 (the product is rounded on its own, not fused into the sum).
 *   - Cody-Waite reduction r = x + k*c1 + k*c2, two fused steps, with c1 = -0.693145752 (a
 *     short float, so k*c1 is exact) and c2 = -1.42860677e-6 (the rest of -ln 2).
 *   - exp(r) ~ P(r)/Q(r), a minimax rational function with P of degree 5 and Q of degree 2,
 *     both by Horner's rule, then one correctly rounded division.
 *   - scale by 2^k: with AVX512F the scalef instruction (one rounding, gradual underflow);
 *     with AVX2 by adding k to the exponent field, except for k <= -125 where 2^-125 is
 *     added that way and the rest is a division by the exact power of two, which rounds the
 *     denormal result once as well, so both targets give the same bits.
 * log(x):
 *   - NaN gives 0x7fc00000, x < 0 (including -Inf) gives the negative quiet NaN 0xffc00000,
 *     +-0 gives -Inf, +Inf gives +Inf.
 *   - x = m*2^e with m in [0.5, 1) (denormals normalised exactly: getexp/getmant with
 *     AVX512F; with AVX2 a multiplication by 2^100 and e - 100); if m <= sqrt(1/2) (the
 *     float), m = 2m and e = e - 1; then f = m - 1.
 *   - log(1+f) ~ P(f)/Q(f), minimax, P and Q both of degree 5 (P's constant term is 0), by
 *     Horner's rule and one division; result = fma(e, ln 2, P/Q).
 * Without AVX2/FMA3 the fallback is expf/logf, except that log(x < 0) gives +NaN 0x7fc00000
 * as numpy's Linux wheels do (they bind glibc's older logf wrapper).
 * The rounding mode must be the default (nearest, no flush-to-zero / denormals-are-zero),
 * as it is under R and Python. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "npyf32.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SCN_NPY_X86 1
#include <immintrin.h>
#else
#define SCN_NPY_X86 0
#endif

int scn_npy_f32_force_libm = 0;

/* The test harness builds this file with -DSCN_NPYF32_TEST to call each target directly. */
#ifdef SCN_NPYF32_TEST
#define SCN_NPY_KERNEL
#else
#define SCN_NPY_KERNEL static
#endif

static void libm_exp(const float *x, float *y, ptrdiff_t n) {
  for (ptrdiff_t i = 0; i < n; i++) y[i] = expf(x[i]);
}

/* numpy's Linux wheels bind the pre-2.27 glibc logf, whose wrapper returns +NaN (not logf's
 * -NaN) for x < 0; the same bits are returned here */
static void libm_log(const float *x, float *y, ptrdiff_t n) {
  const uint32_t qnan_bits = 0x7fc00000u;
  float qnan;
  memcpy(&qnan, &qnan_bits, sizeof qnan);
  for (ptrdiff_t i = 0; i < n; i++) y[i] = x[i] < 0.0f ? qnan : logf(x[i]);
}

#if SCN_NPY_X86

/* numpy's constants (single precision) */
#define EXP_XMAX 88.72283935546875f
#define EXP_XMIN -103.97208404541015625f
#define RINT_MAGIC 0x1.8p+23f
#define LOG2E_F 1.442695040888963407359924681001892137f
#define LN2_HI -6.93145752e-1f
#define LN2_LO -1.42860677e-6f
#define EXP_P0 9.999999999980870924916e-01f
#define EXP_P1 7.257664613233124478488e-01f
#define EXP_P2 2.473615434895520810817e-01f
#define EXP_P3 5.114512081637298353406e-02f
#define EXP_P4 6.757896990527504603057e-03f
#define EXP_P5 5.082762527590693718096e-04f
#define EXP_Q0 1.0f
#define EXP_Q1 -2.742335390411667452936e-01f
#define EXP_Q2 2.159509375685829852307e-02f
#define LOG_P0 0.0f
#define LOG_P1 9.999999999999998702752e-01f
#define LOG_P2 2.112677543073053063722e+00f
#define LOG_P3 1.480000633576506585156e+00f
#define LOG_P4 3.808837741388407920751e-01f
#define LOG_P5 2.589979117907922693523e-02f
#define LOG_Q0 1.0f
#define LOG_Q1 2.612677543073109236779e+00f
#define LOG_Q2 2.453006071784736363091e+00f
#define LOG_Q3 9.864942958519418960339e-01f
#define LOG_Q4 1.546476374983906719538e-01f
#define LOG_Q5 5.875095403124574342950e-03f
#define LN2_F 0.693147180559945309417232121458176568f
#define SQRT1_2_F 0.707106781186547524400844362104849039f
#define BITS_QNAN 0x7fc00000
#define BITS_NEG_QNAN ((int)0xffc00000u)
#define BITS_INF 0x7f800000
#define BITS_NEG_INF ((int)0xff800000u)

/* Hides a value from the optimiser so that a product is rounded on its own and never fused
 * into the sum that follows (gcc contracts vector a*b+c under -ffp-contract=fast). */
#define SCN_NPY_ROUNDED(v) __asm__("" : "+v"(v))

#define TGT_AVX2 __attribute__((target("avx2,fma")))
#define TGT_AVX512 __attribute__((target("avx512f,avx2,fma")))

/* ---- AVX2 + FMA3, 8 lanes ---- */

static inline TGT_AVX2 __m256 exp8(__m256 x) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 magic = _mm256_set1_ps(RINT_MAGIC);
  __m256 nan_m = _mm256_cmp_ps(x, x, _CMP_NEQ_UQ);
  x = _mm256_blendv_ps(x, zero, nan_m);
  __m256 big_m = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_XMAX), _CMP_GE_OQ);
  __m256 small_m = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_XMIN), _CMP_LE_OQ);
  x = _mm256_blendv_ps(x, zero, _mm256_or_ps(big_m, small_m));
  __m256 k = _mm256_mul_ps(x, _mm256_set1_ps(LOG2E_F));
  SCN_NPY_ROUNDED(k);
  k = _mm256_sub_ps(_mm256_add_ps(k, magic), magic);
  /* numpy also adds k*0, which changes nothing here */
  __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(LN2_HI), x);
  r = _mm256_fmadd_ps(k, _mm256_set1_ps(LN2_LO), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(EXP_P5), r, _mm256_set1_ps(EXP_P4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P0));
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(EXP_Q2), r, _mm256_set1_ps(EXP_Q1));
  q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(EXP_Q0));
  p = _mm256_div_ps(p, q);
  /* p * 2^k through the exponent field; k <= -125 (a denormal result) goes through 2^-125
   * and an exact division that rounds once */
  const __m256 kmin = _mm256_set1_ps(-125.0f);
  __m256 den_m = _mm256_cmp_ps(k, kmin, _CMP_LE_OQ);
  if (_mm256_movemask_ps(den_m)) {
    __m256 shift = _mm256_and_ps(den_m, _mm256_sub_ps(kmin, k));
    __m256i pow2 = _mm256_sllv_epi32(_mm256_set1_epi32(1), _mm256_cvtps_epi32(shift));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(_mm256_max_ps(k, kmin)), 23);
    p = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    p = _mm256_blendv_ps(p, _mm256_div_ps(p, _mm256_cvtepi32_ps(pow2)), den_m);
  } else {
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(k), 23);
    p = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  }
  p = _mm256_blendv_ps(p, _mm256_castsi256_ps(_mm256_set1_epi32(BITS_QNAN)), nan_m);
  p = _mm256_blendv_ps(p, _mm256_castsi256_ps(_mm256_set1_epi32(BITS_INF)), big_m);
  return _mm256_blendv_ps(p, zero, small_m);
}

static inline TGT_AVX2 __m256 log8(__m256 x) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 neg_m = _mm256_cmp_ps(x, zero, _CMP_LT_OQ);
  __m256 zero_m = _mm256_cmp_ps(x, zero, _CMP_EQ_OQ);
  __m256 inf_m = _mm256_cmp_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(BITS_INF)), _CMP_EQ_OQ);
  __m256 nan_m = _mm256_cmp_ps(x, x, _CMP_NEQ_UQ);
  x = _mm256_blendv_ps(x, zero, neg_m);
  /* x = m 2^e, m in [0.5, 1); denormals (and 0) are first scaled by 2^100 */
  __m256 den_m = _mm256_cmp_ps(x, _mm256_set1_ps(0x1p-126f), _CMP_LT_OQ);
  __m256 scaled = _mm256_mul_ps(_mm256_and_ps(den_m, x), _mm256_set1_ps(0x1p100f));
  __m256i bits = _mm256_castps_si256(_mm256_blendv_ps(x, scaled, den_m));
  __m256 e = _mm256_cvtepi32_ps(
    _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
  e = _mm256_blendv_ps(e, _mm256_sub_ps(e, _mm256_set1_ps(100.0f)), den_m);
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffff)),
                                                 _mm256_set1_epi32(126 << 23)));
  __m256 s_m = _mm256_cmp_ps(m, _mm256_set1_ps(SQRT1_2_F), _CMP_LE_OQ);
  m = _mm256_blendv_ps(m, _mm256_add_ps(m, m), s_m);
  e = _mm256_blendv_ps(e, _mm256_sub_ps(e, one), s_m);
  __m256 f = _mm256_sub_ps(m, one);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(LOG_P5), f, _mm256_set1_ps(LOG_P4));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(LOG_P3));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(LOG_P2));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(LOG_P1));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(LOG_P0));
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(LOG_Q5), f, _mm256_set1_ps(LOG_Q4));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(LOG_Q3));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(LOG_Q2));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(LOG_Q1));
  q = _mm256_fmadd_ps(q, f, _mm256_set1_ps(LOG_Q0));
  p = _mm256_fmadd_ps(e, _mm256_set1_ps(LN2_F), _mm256_div_ps(p, q));
  p = _mm256_blendv_ps(p, _mm256_castsi256_ps(_mm256_set1_epi32(BITS_QNAN)), nan_m);
  p = _mm256_blendv_ps(p, _mm256_castsi256_ps(_mm256_set1_epi32(BITS_NEG_QNAN)), neg_m);
  p = _mm256_blendv_ps(p, _mm256_castsi256_ps(_mm256_set1_epi32(BITS_NEG_INF)), zero_m);
  return _mm256_blendv_ps(p, _mm256_castsi256_ps(_mm256_set1_epi32(BITS_INF)), inf_m);
}

/* lanes [0, rem) of a load/store mask, 0 < rem < 8 */
static inline TGT_AVX2 __m256i tail_mask8(ptrdiff_t rem) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

SCN_NPY_KERNEL TGT_AVX2 void scn_npy_exp_avx2(const float *x, float *y, ptrdiff_t n) {
  ptrdiff_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    __m256i mask = tail_mask8(n - i);
    _mm256_maskstore_ps(y + i, mask, exp8(_mm256_maskload_ps(x + i, mask)));
  }
}

SCN_NPY_KERNEL TGT_AVX2 void scn_npy_log_avx2(const float *x, float *y, ptrdiff_t n) {
  ptrdiff_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, log8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    __m256i mask = tail_mask8(n - i);
    _mm256_maskstore_ps(y + i, mask, log8(_mm256_maskload_ps(x + i, mask)));
  }
}

/* ---- AVX512F, 16 lanes ---- */

static inline TGT_AVX512 __m512 exp16(__m512 x) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 magic = _mm512_set1_ps(RINT_MAGIC);
  __mmask16 nan_k = _mm512_cmp_ps_mask(x, x, _CMP_NEQ_UQ);
  x = _mm512_mask_mov_ps(x, nan_k, zero);
  __mmask16 big_k = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_XMAX), _CMP_GE_OQ);
  __mmask16 small_k = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_XMIN), _CMP_LE_OQ);
  x = _mm512_mask_mov_ps(x, (__mmask16)(big_k | small_k), zero);
  __m512 k = _mm512_mul_ps(x, _mm512_set1_ps(LOG2E_F));
  SCN_NPY_ROUNDED(k);
  k = _mm512_sub_ps(_mm512_add_ps(k, magic), magic);
  __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(LN2_HI), x);
  r = _mm512_fmadd_ps(k, _mm512_set1_ps(LN2_LO), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(EXP_P5), r, _mm512_set1_ps(EXP_P4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P0));
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(EXP_Q2), r, _mm512_set1_ps(EXP_Q1));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(EXP_Q0));
  p = _mm512_scalef_ps(_mm512_div_ps(p, q), k);
  p = _mm512_mask_mov_ps(p, nan_k, _mm512_castsi512_ps(_mm512_set1_epi32(BITS_QNAN)));
  p = _mm512_mask_mov_ps(p, big_k, _mm512_castsi512_ps(_mm512_set1_epi32(BITS_INF)));
  return _mm512_mask_mov_ps(p, small_k, zero);
}

static inline TGT_AVX512 __m512 log16(__m512 x) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 inf = _mm512_castsi512_ps(_mm512_set1_epi32(BITS_INF));
  __mmask16 neg_k = _mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ);
  __mmask16 zero_k = _mm512_cmp_ps_mask(x, zero, _CMP_EQ_OQ);
  __mmask16 inf_k = _mm512_cmp_ps_mask(x, inf, _CMP_EQ_OQ);
  __mmask16 nan_k = _mm512_cmp_ps_mask(x, x, _CMP_NEQ_UQ);
  x = _mm512_mask_mov_ps(x, neg_k, zero);
  __m512 e = _mm512_add_ps(_mm512_getexp_ps(x), one);
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_p5_1, _MM_MANT_SIGN_src);
  __mmask16 s_k = _mm512_cmp_ps_mask(m, _mm512_set1_ps(SQRT1_2_F), _CMP_LE_OQ);
  m = _mm512_mask_add_ps(m, s_k, m, m);
  e = _mm512_mask_sub_ps(e, s_k, e, one);
  __m512 f = _mm512_sub_ps(m, one);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(LOG_P5), f, _mm512_set1_ps(LOG_P4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(LOG_P3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(LOG_P2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(LOG_P1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(LOG_P0));
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(LOG_Q5), f, _mm512_set1_ps(LOG_Q4));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(LOG_Q3));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(LOG_Q2));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(LOG_Q1));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(LOG_Q0));
  p = _mm512_fmadd_ps(e, _mm512_set1_ps(LN2_F), _mm512_div_ps(p, q));
  p = _mm512_mask_mov_ps(p, nan_k, _mm512_castsi512_ps(_mm512_set1_epi32(BITS_QNAN)));
  p = _mm512_mask_mov_ps(p, neg_k, _mm512_castsi512_ps(_mm512_set1_epi32(BITS_NEG_QNAN)));
  p = _mm512_mask_mov_ps(p, zero_k, _mm512_castsi512_ps(_mm512_set1_epi32(BITS_NEG_INF)));
  return _mm512_mask_mov_ps(p, inf_k, inf);
}

SCN_NPY_KERNEL TGT_AVX512 void scn_npy_exp_avx512(const float *x, float *y, ptrdiff_t n) {
  ptrdiff_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp16(_mm512_loadu_ps(x + i)));
  if (i < n) {
    __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(y + i, k, exp16(_mm512_maskz_loadu_ps(k, x + i)));
  }
}

SCN_NPY_KERNEL TGT_AVX512 void scn_npy_log_avx512(const float *x, float *y, ptrdiff_t n) {
  ptrdiff_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, log16(_mm512_loadu_ps(x + i)));
  if (i < n) {
    __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(y + i, k, log16(_mm512_maskz_loadu_ps(k, x + i)));
  }
}

#endif /* SCN_NPY_X86 */

/* 0: libm, 1: AVX2 + FMA3, 2: AVX512F; detected once (a benign race: every thread stores the
 * same value, through atomic accesses) */
static int cpu_level(void) {
  static int level = -1;
  int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
  if (l < 0) {
    l = 0;
#if SCN_NPY_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      l = __builtin_cpu_supports("avx512f") ? 2 : 1;
#endif
    __atomic_store_n(&level, l, __ATOMIC_RELAXED);
  }
  return l;
}

int scn_npy_f32_simd(void) {
  return !scn_npy_f32_force_libm && cpu_level() > 0;
}

/* the kernel of the CPU's level: 2 AVX512F, 1 AVX2+FMA3, 0 the C library */
typedef void (*npy_kernel)(const float *, float *, ptrdiff_t);
static npy_kernel pick(npy_kernel k512, npy_kernel k2, npy_kernel klibm) {
  int l = scn_npy_f32_force_libm ? 0 : cpu_level();
#if SCN_NPY_X86
  if (l == 2) return k512;
  if (l == 1) return k2;
#endif
  (void)l;
  (void)k512;
  (void)k2;
  return klibm;
}

#if SCN_NPY_X86
#define NPY_PICK(f) pick(scn_npy_##f##_avx512, scn_npy_##f##_avx2, libm_##f)
#else
#define NPY_PICK(f) pick(NULL, NULL, libm_##f)
#endif

void scn_npy_expf_array(const float *x, float *y, ptrdiff_t n) { NPY_PICK(exp)(x, y, n); }

void scn_npy_logf_array(const float *x, float *y, ptrdiff_t n) { NPY_PICK(log)(x, y, n); }

float scn_npy_expf(float x) {
  float y;
  scn_npy_expf_array(&x, &y, 1);
  return y;
}

float scn_npy_logf(float x) {
  float y;
  scn_npy_logf_array(&x, &y, 1);
  return y;
}
