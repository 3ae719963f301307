/* rng.c: counter-based random numbers for the C core (R: the internal rng_normal() and
 * rng_uniform() used by tests; models call the C functions directly).
 *
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): the
 * 128-bit counter holds (index, stream) and the 64-bit key the seed, so value i of stream s is
 * a pure function of (seed, s, i). A parallel fill in any chunking, with any thread count,
 * produces the same numbers. Uniforms use 53 random bits; normals use Box-Muller on one
 * Philox block (two uniforms -> two normals, cos for even and sin for odd indices), computed on
 * vectors of blocks with the package's branch-free log, sin and cos (scnative.h), so that the
 * normals cost a few ns each (they are drawn for every parameter at every SVI step). */
#include "scnative.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void philox_round(uint32_t c[4], const uint32_t k[2]) {
  uint64_t p0 = (uint64_t)PHILOX_M0 * c[0];
  uint64_t p1 = (uint64_t)PHILOX_M1 * c[2];
  uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
  uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
  uint32_t n0 = hi1 ^ c[1] ^ k[0], n2 = hi0 ^ c[3] ^ k[1];
  c[0] = n0;
  c[1] = lo1;
  c[2] = n2;
  c[3] = lo0;
}

void scn_philox(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]) {
  uint32_t c[4] = {(uint32_t)counter, (uint32_t)(counter >> 32), (uint32_t)stream,
                   (uint32_t)(stream >> 32)};
  uint32_t k[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  for (int r = 0; r < 10; r++) {
    if (r) {
      k[0] += PHILOX_W0;
      k[1] += PHILOX_W1;
    }
    philox_round(c, k);
  }
  memcpy(out, c, sizeof c);
}

#define TWO_M53 1.1102230246251565404e-16 /* 2^-53 */

/* (0, 1]: never 0, so log() is finite */
static inline double u53_open0(uint32_t a, uint32_t b) {
  return ((double)(a >> 5) * 67108864.0 + (double)(b >> 6) + 1.0) * TWO_M53;
}

/* sin(2 pi u) and cos(2 pi u) for u in [0, 1), branch-free: u = q / 4 + f exactly, |f| <= 1/8,
 * Taylor series of sin and cos at x = 2 pi f (|x| <= pi / 4), rotated by q quarter turns. */
static inline void sincos_2pi(double u, double *sn, double *cs) {
  double qd = (double)(int)(4.0 * u + 0.5), f = u - 0.25 * qd, x = 6.283185307179586476925 * f;
  double x2 = x * x;
  double ps = 1.0 / 355687428096000.0; /* 1/17! */
  ps = ps * x2 - 1.0 / 1307674368000.0;
  ps = ps * x2 + 1.0 / 6227020800.0;
  ps = ps * x2 - 1.0 / 39916800.0;
  ps = ps * x2 + 1.0 / 362880.0;
  ps = ps * x2 - 1.0 / 5040.0;
  ps = ps * x2 + 1.0 / 120.0;
  ps = ps * x2 - 1.0 / 6.0;
  double s = x + x * x2 * ps;
  double pc = 1.0 / 20922789888000.0; /* 1/16! */
  pc = pc * x2 - 1.0 / 87178291200.0;
  pc = pc * x2 + 1.0 / 479001600.0;
  pc = pc * x2 - 1.0 / 3628800.0;
  pc = pc * x2 + 1.0 / 40320.0;
  pc = pc * x2 - 1.0 / 720.0;
  pc = pc * x2 + 1.0 / 24.0;
  pc = pc * x2 - 0.5;
  double c = 1.0 + x2 * pc;
  /* (cos, sin) of x + q pi / 2, q = qd mod 4 (qd in 0..4) */
  double odd = qd - 2.0 * (double)(int)(0.5 * qd), q4 = qd - 4.0 * (double)(int)(0.25 * qd);
  int64_t o = odd != 0.0, h = q4 >= 2.0;
  double c1 = scn_blend(o, -s, c), s1 = scn_blend(o, c, s);
  *cs = scn_blend(h, -c1, c1);
  *sn = scn_blend(h, -s1, s1);
}

/* Box-Muller on the Philox blocks k0 .. k0 + NORMAL_BLOCK - 1: r2 = -2 log(u1) and (cos, sin)
 * of 2 pi u2 per block, u1 from words (0, 1) and u2 from words (2, 3). The Philox rounds run on
 * vectors of blocks; the square root is left to the caller. The trip count is a constant, a
 * multiple of every vector width: a vectorised loop's remainder iterations may round
 * differently (FMA contraction), and value i must not depend on where a fill starts. */
#define NORMAL_BLOCK 64

/* The ten Philox rounds on (c0, c1, c2, c3), unrolled for a vectorised loop over blocks (a
 * loop over the rounds, or the words in an array, keeps GCC from vectorising). */
#define PHILOX_VROUND(r) \
  do { \
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2; \
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ key0[r], n2 = (uint32_t)(p0 >> 32) ^ c3 ^ key1[r]; \
    c0 = n0, c1 = (uint32_t)p1, c2 = n2, c3 = (uint32_t)p0; \
  } while (0)
#define PHILOX10_V(ctr) \
  uint32_t c0 = (uint32_t)(ctr), c1 = (uint32_t)((ctr) >> 32), c2 = st0, c3 = st1; \
  PHILOX_VROUND(0); \
  PHILOX_VROUND(1); \
  PHILOX_VROUND(2); \
  PHILOX_VROUND(3); \
  PHILOX_VROUND(4); \
  PHILOX_VROUND(5); \
  PHILOX_VROUND(6); \
  PHILOX_VROUND(7); \
  PHILOX_VROUND(8); \
  PHILOX_VROUND(9)

static void philox_keys(uint64_t seed, uint32_t key0[10], uint32_t key1[10]) {
  key0[0] = (uint32_t)seed, key1[0] = (uint32_t)(seed >> 32);
  for (int r = 1; r < 10; r++) key0[r] = key0[r - 1] + PHILOX_W0, key1[r] = key1[r - 1] + PHILOX_W1;
}

/* The four words of the Philox blocks k0 .. k0 + NORMAL_BLOCK - 1 (word q of block j at
 * w[q * NORMAL_BLOCK + j]). Portable: the rounds on vectors of blocks as GCC vectorises them
 * (it widens the 32 x 32 -> 64-bit products into full 64-bit multiplies); AVX-512: 16 blocks
 * per vector, the high halves from two even/odd widening multiplies. The words are exact
 * integers, so both give the same numbers. */
SCN_CLONES
static void philox_words_v(uint64_t seed, uint64_t stream, uint64_t k0, uint32_t *w) {
  uint32_t key0[10], key1[10];
  philox_keys(seed, key0, key1);
  const uint32_t st0 = (uint32_t)stream, st1 = (uint32_t)(stream >> 32);
#pragma omp simd
  for (int j = 0; j < NORMAL_BLOCK; j++) {
    PHILOX10_V(k0 + (uint64_t)j);
    w[j] = c0, w[NORMAL_BLOCK + j] = c1, w[2 * NORMAL_BLOCK + j] = c2, w[3 * NORMAL_BLOCK + j] = c3;
  }
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 8
#include <immintrin.h>
#define RNG_AVX512 1
/* the high 32 bits of the 16 products a * m (m the same in every lane) */
__attribute__((target("avx512f"))) static inline __m512i mulhi_epu32_512(__m512i a, __m512i m) {
  __m512i pe = _mm512_mul_epu32(a, m), po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  return _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(pe, 32), po);
}

__attribute__((target("avx512f"))) static void philox_words_avx512(uint64_t seed,
                                                                     uint64_t stream,
                                                                     uint64_t k0, uint32_t *w) {
  uint32_t key0[10], key1[10];
  philox_keys(seed, key0, key1);
  const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
  const __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i s0 = _mm512_set1_epi32((int)(uint32_t)stream),
                s1 = _mm512_set1_epi32((int)(uint32_t)(stream >> 32));
  for (int j0 = 0; j0 < NORMAL_BLOCK; j0 += 16) {
    const uint64_t base = k0 + (uint64_t)j0;
    const __m512i b = _mm512_set1_epi32((int)(uint32_t)base),
                  bh = _mm512_set1_epi32((int)(uint32_t)(base >> 32));
    __m512i c0 = _mm512_add_epi32(b, idx); /* the low word of base + j; a carry where it wraps */
    __m512i c1 = _mm512_mask_add_epi32(bh, _mm512_cmplt_epu32_mask(c0, b), bh,
                                       _mm512_set1_epi32(1));
    __m512i c2 = s0, c3 = s1;
    for (int r = 0; r < 10; r++) {
      __m512i lo0 = _mm512_mullo_epi32(c0, m0), lo1 = _mm512_mullo_epi32(c2, m1);
      __m512i hi0 = mulhi_epu32_512(c0, m0), hi1 = mulhi_epu32_512(c2, m1);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)key0[r]));
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)key1[r]));
      c1 = lo1, c3 = lo0;
    }
    _mm512_storeu_si512((void *)(w + j0), c0);
    _mm512_storeu_si512((void *)(w + NORMAL_BLOCK + j0), c1);
    _mm512_storeu_si512((void *)(w + 2 * NORMAL_BLOCK + j0), c2);
    _mm512_storeu_si512((void *)(w + 3 * NORMAL_BLOCK + j0), c3);
  }
}
#endif

static void philox_words(uint64_t seed, uint64_t stream, uint64_t k0, uint32_t *w) {
#ifdef RNG_AVX512
  if (__builtin_cpu_supports("avx512f")) {
    philox_words_avx512(seed, stream, k0, w);
    return;
  }
#endif
  philox_words_v(seed, stream, k0, w);
}

SCN_CLONES
static void normal_block(uint64_t seed, uint64_t stream, uint64_t k0, double *r2, double *cs,
                         double *sn) {
  uint32_t w[4 * NORMAL_BLOCK];
  philox_words(seed, stream, k0, w);
#pragma omp simd
  for (int j = 0; j < NORMAL_BLOCK; j++) {
    uint32_t c0 = w[j], c1 = w[NORMAL_BLOCK + j], c2 = w[2 * NORMAL_BLOCK + j],
             c3 = w[3 * NORMAL_BLOCK + j];
    double u1 = ((double)(int32_t)(c0 >> 5) * 67108864.0 + (double)(int32_t)(c1 >> 6) + 1.0) * TWO_M53;
    double u2 = ((double)(int32_t)(c2 >> 5) * 67108864.0 + (double)(int32_t)(c3 >> 6)) * TWO_M53;
    r2[j] = -2.0 * scn_log_fast(u1);
    sincos_2pi(u2, sn + j, cs + j);
  }
}

/* The same in float (the normals of a float32 fit's guide, as torch draws float32 normals):
 * u1 and u2 from the top 24 bits of words 0 and 2 of the same blocks, float log and a float
 * sine and cosine (Taylor to x^9 and x^8 on |x| <= pi / 4). */
SCN_CLONES
static void normal_block_f(uint64_t seed, uint64_t stream, uint64_t k0, double *r2, double *cs,
                           double *sn) {
  uint32_t w[4 * NORMAL_BLOCK];
  philox_words(seed, stream, k0, w);
#pragma omp simd
  for (int j = 0; j < NORMAL_BLOCK; j++) {
    uint32_t c0 = w[j], c2 = w[2 * NORMAL_BLOCK + j];
    float u1 = ((float)(int32_t)(c0 >> 8) + 1.0f) * 5.9604644775390625e-8f; /* (0, 1] */
    float u2 = (float)(int32_t)(c2 >> 8) * 5.9604644775390625e-8f;          /* [0, 1) */
    r2[j] = -2.0f * scn_logf_fast(u1);
    float qd = (float)(int32_t)(4.0f * u2 + 0.5f), f = u2 - 0.25f * qd,
          x = 6.2831853071795864769f * f, x2 = x * x;
    float ps = 1.0f / 362880.0f;
    ps = ps * x2 - 1.0f / 5040.0f;
    ps = ps * x2 + 1.0f / 120.0f;
    ps = ps * x2 - 1.0f / 6.0f;
    float sv = x + x * x2 * ps;
    float pc = 1.0f / 40320.0f;
    pc = pc * x2 - 1.0f / 720.0f;
    pc = pc * x2 + 1.0f / 24.0f;
    pc = pc * x2 - 0.5f;
    float cv = 1.0f + x2 * pc;
    int32_t q = (int32_t)qd & 3, o = q & 1, h = q >> 1;
    float cq = scn_blendf(o, -sv, cv), sq = scn_blendf(o, cv, sv);
    cs[j] = scn_blendf(h, -cq, cq);
    sn[j] = scn_blendf(h, -sq, sq);
  }
}

/* Normal i of a stream is r cos(th) (i even) or r sin(th) (i odd) of Philox block i / 2. */
/* out: n doubles, or n floats (f32: a float32 guide's normals, from normal_block_f) */
static void rng_normals(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, void *out,
                        int f32) {
  double r2[NORMAL_BLOCK], cs[NORMAL_BLOCK], sn[NORMAL_BLOCK], rr[NORMAL_BLOCK];
  double *od = f32 ? NULL : (double *)out;
  float *of = f32 ? (float *)out : NULL;
  R_xlen_t j = 0;
  uint64_t i = offset;
  while (j < n) {
    /* blocks covering normals i .. i + n - j - 1 */
    uint64_t k0 = i >> 1, k1 = (i + (uint64_t)(n - j) + 1) >> 1;
    int np = k1 - k0 < NORMAL_BLOCK ? (int)(k1 - k0) : NORMAL_BLOCK;
    if (f32)
      normal_block_f(seed, stream, k0, r2, cs, sn);
    else
      normal_block(seed, stream, k0, r2, cs, sn);
    scn_vsqrt(np, r2, rr);
    if ((i & 1u) == 0 && n - j >= 2 * (R_xlen_t)np) { /* whole blocks: both normals of each */
      if (f32) {
        float *o = of + j;
#pragma omp simd
        for (int b = 0; b < np; b++) {
          o[2 * b] = (float)(rr[b] * cs[b]);
          o[2 * b + 1] = (float)(rr[b] * sn[b]);
        }
      } else {
        double *o = od + j;
#pragma omp simd
        for (int b = 0; b < np; b++) {
          o[2 * b] = rr[b] * cs[b];
          o[2 * b + 1] = rr[b] * sn[b];
        }
      }
      j += 2 * (R_xlen_t)np, i += 2 * (uint64_t)np;
      continue;
    }
    for (int b = 0; b < np && j < n; b++) {
      double r = rr[b];
      if ((i & 1u) == 0) {
        if (f32) of[j++] = (float)(r * cs[b]);
        else od[j++] = r * cs[b];
        i++;
        if (j == n) break;
      }
      if (f32) of[j++] = (float)(r * sn[b]);
      else od[j++] = r * sn[b];
      i++;
    }
  }
}

void scn_rng_normals(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, double *out) {
  rng_normals(seed, stream, offset, n, out, 0);
}

void scn_rng_normals_f(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, float *out) {
  rng_normals(seed, stream, offset, n, out, 1);
}

void scn_rng_uniforms(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, double *out) {
  uint32_t w[4];
  for (R_xlen_t j = 0; j < n; j++) {
    uint64_t i = offset + (uint64_t)j;
    scn_philox(seed, stream, i >> 1, w);
    /* two uniforms per block: words (0,1) for even, (2,3) for odd indices */
    out[j] = (i & 1u) ? u53_open0(w[2], w[3]) : u53_open0(w[0], w[1]);
    if (out[j] >= 1.0) out[j] = 1.0 - TWO_M53; /* keep inside (0, 1) */
  }
}

void scn_rng_permutation(uint64_t seed, uint64_t stream, uint64_t counter, int n, double *un,
                         int *perm) {
  scn_rng_uniforms(seed, stream, counter * (uint64_t)n, n, un);
  for (int i = 0; i < n; i++) perm[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(un[i] * (i + 1));
    if (j > i) j = i;
    int t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

uint64_t scn_seed_from_sexp(SEXP seed) {
  double s = asReal(seed);
  if (!R_FINITE(s) || s < 0 || s >= 9007199254740992.0 || s != floor(s))
    error(_("'%s' must be a whole number in [0, 2^53)"), "seed");
  return (uint64_t)s;
}

/* R: .Call(C_scnative_rng, seed, stream, offset, n, normal, threads). The fill is split into
 * chunks over threads to show (in tests) that the numbers do not depend on the split. */
SEXP scnative_rng(SEXP seed, SEXP stream, SEXP offset, SEXP n, SEXP normal, SEXP threads) {
  uint64_t k = scn_seed_from_sexp(seed);
  uint64_t st = (uint64_t)asReal(stream), off = (uint64_t)asReal(offset);
  R_xlen_t len = (R_xlen_t)asReal(n);
  if (len < 0) error(_("'%s' must be non-negative"), "n");
  int nrm = asLogical(normal);
  SEXP ans = PROTECT(allocVector(REALSXP, len));
  double *pa = REAL(ans);
  int nth = scn_threads_for(len / 1024 + 1, asInteger(threads));
  R_xlen_t chunk = (len + nth - 1) / (nth > 0 ? nth : 1);
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int t = 0; t < nth; t++) {
    R_xlen_t a = (R_xlen_t)t * chunk, b = a + chunk > len ? len : a + chunk;
    if (a < b) {
      if (nrm)
        scn_rng_normals(k, st, off + (uint64_t)a, b - a, pa + a);
      else
        scn_rng_uniforms(k, st, off + (uint64_t)a, b - a, pa + a);
    }
  }
  UNPROTECT(1);
  return ans;
}
