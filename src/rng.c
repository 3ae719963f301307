/* rng.c: counter-based random numbers for the C core (R: the internal rng_normal() and
 * rng_uniform() used by tests; models call the C functions directly).
 *
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): the
 * 128-bit counter holds (index, stream) and the 64-bit key the seed, so value i of stream s is
 * a pure function of (seed, s, i). A parallel fill in any chunking, with any thread count,
 * produces the same numbers. Uniforms use 53 random bits; normals use Box-Muller on one
 * Philox block (two uniforms -> two normals, cos for even and sin for odd indices). */
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
/* [0, 1) */
static inline double u53(uint32_t a, uint32_t b) {
  return ((double)(a >> 5) * 67108864.0 + (double)(b >> 6)) * TWO_M53;
}

void scn_rng_normals(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, double *out) {
  const double two_pi = 6.283185307179586476925;
  uint32_t w[4];
  R_xlen_t j = 0;
  uint64_t i = offset;
  while (j < n) {
    scn_philox(seed, stream, i >> 1, w);
    double r = sqrt(-2.0 * log(u53_open0(w[0], w[1])));
    double th = two_pi * u53(w[2], w[3]);
    if ((i & 1u) == 0) {
      out[j++] = r * cos(th);
      i++;
      if (j == n) break;
    }
    out[j++] = r * sin(th);
    i++;
  }
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
