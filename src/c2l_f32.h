/* c2l_f32.h: the float32 kernels of cell2location's S x G pass (precision = "single"),
 * included by cell2location.c once per instruction set: C2L_F32_SUFFIX names the copy and
 * C2L_F32_TARGET is its target attribute (AVX-512 + FMA, AVX2 + FMA, or none). One copy is
 * picked at run time from the CPU's features (cell2location.c, c2l_f32_pick); within a machine
 * the choice is fixed, so results do not depend on the thread count.
 *
 *   c2l_sgemm_<sfx>:     C (+)= A op(B) in float, A m x k (column-major, m a multiple of 16 for
 *                        the vector path), op(B) k x n; the inner kernel keeps a 16 x 6 block of
 *                        C in registers.
 *   c2l_tile_f32_<sfx>:  one tile's elementwise negative-binomial terms (spec 6.5) in float,
 *                        written as log(a + mu) = log(a) + log1p(mu / a) (spec 6.5: reuse for the
 *                        loss), so that the per-gene sums hold the small terms only. The
 *                        AVX-512 copy runs each gene through c2l_gene16 (intrinsics).
 */
#define C2L_CAT2(a, b) a##_##b
#define C2L_CAT(a, b) C2L_CAT2(a, b)

#ifndef C2L_F32_ONCE
#define C2L_F32_ONCE
#if defined(__GNUC__)
typedef float c2l_v16 __attribute__((vector_size(64)));
#define C2L_HAVE_V16 1
#else
#define C2L_HAVE_V16 0
#endif
/* a gene of a tile takes the dense path when it has more than nb / C2L_DENSE_RATIO non-zero
 * counts (measured: a non-zero costs ~10 times an element of the dense pass) */
#define C2L_DENSE_RATIO 12
#define C2L_DENSE(k, nb) ((k) * C2L_DENSE_RATIO > (nb))

/* The block-major copy for the AVX-512 tile: the k increasing local spot indices of a dense
 * (block, gene) pair (nb spots) are replaced, in place, by its ceil(nb / 16) masks (bit j of
 * mask w: spot 16 w + j has a stored count), which c2l_gene16 expands the counts with. A dense
 * pair always has k >= ceil(nb / 16) entries (k > nb / 12), checked all the same. */
static void c2l_dense_masks(int k, int nb, uint16_t *ix) {
  const int nw = (nb + 15) / 16;
  if (!C2L_DENSE(k, nb) || k < nw) return;
  uint16_t m[4096 / 16] = {0};
  for (int j = 0; j < k; j++) m[ix[j] >> 4] |= (uint16_t)(1u << (ix[j] & 15));
  memcpy(ix, m, (size_t)nw * sizeof(uint16_t));
}
#endif

#ifdef C2L_F32_SUFFIX

/* A 16 x nj block of C (nj <= 6) over the whole inner dimension; columns past nj repeat the
 * last one (computed, not stored). */
C2L_F32_TARGET
static void C2L_CAT(c2l_mk16, C2L_F32_SUFFIX)(int K, const float *a, int lda, const float *b,
                                            R_xlen_t bk, R_xlen_t bj, int nj, float *c,
                                            int ldc, int accum) {
#if C2L_HAVE_V16
  const float *b0 = b, *b1 = b + (nj > 1 ? 1 : 0) * bj, *b2 = b + (nj > 2 ? 2 : nj - 1) * bj,
              *b3 = b + (nj > 3 ? 3 : nj - 1) * bj, *b4 = b + (nj > 4 ? 4 : nj - 1) * bj,
              *b5 = b + (nj > 5 ? 5 : nj - 1) * bj;
  c2l_v16 c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0};
  for (int p = 0; p < K; p++) {
    c2l_v16 av;
    memcpy(&av, a + (R_xlen_t)p * lda, sizeof av);
    const R_xlen_t o = (R_xlen_t)p * bk;
    c0 += av * b0[o];
    c1 += av * b1[o];
    c2 += av * b2[o];
    c3 += av * b3[o];
    c4 += av * b4[o];
    c5 += av * b5[o];
  }
  c2l_v16 cs[6] = {c0, c1, c2, c3, c4, c5};
  for (int j = 0; j < nj; j++) {
    float *cj = c + (R_xlen_t)j * ldc;
    if (accum) {
      c2l_v16 old;
      memcpy(&old, cj, sizeof old);
      cs[j] += old;
    }
    memcpy(cj, &cs[j], sizeof cs[j]);
  }
#else
  for (int j = 0; j < nj; j++) {
    float acc[16] = {0};
    for (int p = 0; p < K; p++) {
      float bv = b[(R_xlen_t)p * bk + j * bj];
      for (int i = 0; i < 16; i++) acc[i] += a[(R_xlen_t)p * lda + i] * bv;
    }
    float *cj = c + (R_xlen_t)j * ldc;
    for (int i = 0; i < 16; i++) cj[i] = accum ? cj[i] + acc[i] : acc[i];
  }
#endif
}

/* C (m x n) = A op(B) (accum = 0) or C + A op(B) (accum = 1); tb: op(B) = t(B). */
C2L_F32_TARGET
static void C2L_CAT(c2l_sgemm, C2L_F32_SUFFIX)(int tb, int m, int n, int k, const float *A,
                                             int lda, const float *B, int ldb, int accum,
                                             float *C, int ldc) {
  const R_xlen_t bk = tb ? ldb : 1, bj = tb ? 1 : ldb;
  const int m16 = m - m % 16;
  for (int j0 = 0; j0 < n; j0 += 6) {
    int nj = n - j0 < 6 ? n - j0 : 6;
    for (int i0 = 0; i0 < m16; i0 += 16)
      C2L_CAT(c2l_mk16, C2L_F32_SUFFIX)(k, A + i0, lda, B + j0 * bj, bk, bj, nj,
                                        C + i0 + (R_xlen_t)j0 * ldc, ldc, accum);
    for (int j = j0; j < j0 + nj; j++)
      for (int i = m16; i < m; i++) {
        float s = 0.0f;
        for (int p = 0; p < k; p++) s += A[i + (R_xlen_t)p * lda] * B[p * bk + j * bj];
        float *cij = C + i + (R_xlen_t)j * ldc;
        *cij = accum ? *cij + s : s;
      }
  }
}

/* y[ix[j]] += v[j], j < k, the ix distinct (scalar: AVX-512 scatters are slow on some CPUs,
 * AMD's in particular, and the tiles with many non-zeros take the dense path). */
static SCN_INLINE void C2L_CAT(c2l_scatter_add, C2L_F32_SUFFIX)(int k, const uint16_t *ix,
                                                               const float *v, float *y) {
  for (int j = 0; j < k; j++) y[ix[j]] += v[j];
}

#ifdef C2L_F32_AVX512
/* log of 16 positive floats: scn_logf_fast's reduction and polynomial, with the exponent and
 * mantissa taken by getexp/scalef (x = m 2^e, m in [1/sqrt 2, sqrt 2)) instead of bit tricks
 * (the dense pass is bound by this chain's latency, not by its instruction count). */
C2L_F32_TARGET
static SCN_INLINE __m512 c2l_log16(__m512 x) {
  __m512 e = _mm512_getexp_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.41421356237f)));
  __m512 m = _mm512_scalef_ps(x, _mm512_sub_ps(_mm512_setzero_ps(), e));
  __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f)), f2 = _mm512_mul_ps(f, f);
  /* the polynomial by Estrin's scheme (pairs, then f^2, then f^4): a shorter dependency chain
   * than Horner's for the same coefficients */
  __m512 f4 = _mm512_mul_ps(f2, f2);
  __m512 q0 = _mm512_fmadd_ps(_mm512_set1_ps(-0.2500081956386566f), f,
                              _mm512_set1_ps(0.3333333134651184f));
  __m512 q1 = _mm512_fmadd_ps(_mm512_set1_ps(-0.16623398661613464f), f,
                              _mm512_set1_ps(0.20001220703125f));
  __m512 q2 = _mm512_fmadd_ps(_mm512_set1_ps(-0.13159936666488647f), f,
                              _mm512_set1_ps(0.14201922714710236f));
  __m512 q3 = _mm512_fmadd_ps(_mm512_set1_ps(-0.07633508741855621f), f,
                              _mm512_set1_ps(0.12760266661643982f));
  __m512 p = _mm512_fmadd_ps(_mm512_fmadd_ps(q3, f2, q2), f4, _mm512_fmadd_ps(q1, f2, q0));
  __m512 y = _mm512_fmsub_ps(_mm512_mul_ps(f2, f), p, _mm512_mul_ps(_mm512_set1_ps(0.5f), f2));
  /* e ln 2 with ln 2 rounded to float, not split in two: |e| ln 2 is at least 0.35 when e != 0
   * (the reduction's range), so the constant's rounding (3e-9 relative) stays far below the
   * result's own float rounding */
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.6931471805599453f), _mm512_add_ps(f, y));
}

/* One gene over the nb spots of a tile, 16 at a time (AVX-512): the terms of the dense path
 * below with the counts expanded from the pair's spot masks xm and values xv (has_x; see
 * c2l_dense_masks), or the zero-count forms only (x = 0, the sparse path's pass). One division gives both 1 / (a + mu) and 1 / mu. The non-zero counts'
 * (mu / (a + mu), x) pairs are appended, compressed, to cm and cx at *ncp (room for nb + 16
 * more each), and their x log(mu / (a + mu)) is taken later over many genes at once
 * (c2l_xlog16), so the second log runs only where x > 0 and on full vectors. The sums U = T + Tc
 * and U A are one sum each (the backward GEMM takes U m_g). out: sum L, sum mu / (a + mu),
 * sum U, sum U A, sum -x / (a + mu). */
C2L_F32_TARGET
static SCN_INLINE __attribute__((always_inline)) void c2l_gene16(
    int nb, int has_x, float *col, const float *ys, const uint16_t *xm, const float *xv,
    float *ysacc, float mg_, float sg_, float ag_, float ia_, float *cm, float *cx, int *ncp,
    double *out) {
  const __m512 mg = _mm512_set1_ps(mg_), sg = _mm512_set1_ps(sg_), ag = _mm512_set1_ps(ag_),
               ia = _mm512_set1_ps(ia_), one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  __m512 sL = zero, sM = zero, sU = zero, sUA = zero, cQ = zero;
  int nc = *ncp, xo = 0;
  for (int i = 0; i < nb; i += 16) {
    const __mmask16 km = nb - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nb - i)) - 1u);
    __m512 A = _mm512_loadu_ps(col + i), y = _mm512_loadu_ps(ys + i);
    __m512 base = _mm512_fmadd_ps(A, mg, sg), mu = _mm512_mul_ps(base, y);
    __m512 r = _mm512_mul_ps(mu, ia), w = _mm512_add_ps(one, r), apa = _mm512_add_ps(ag, mu);
    __m512 inv, dRa;
    if (has_x) {
      const unsigned xk = xm[i >> 4]; /* the stored counts of these 16 spots, expanded */
      __m512 x = _mm512_maskz_expandloadu_ps((__mmask16)xk, xv + xo);
      xo += __builtin_popcount(xk);
      __m512 q = _mm512_div_ps(one, _mm512_mul_ps(mu, apa));
      inv = _mm512_mul_ps(mu, q);
      __m512 dR = _mm512_mul_ps(x, _mm512_fmsub_ps(apa, q, inv));
      dRa = _mm512_fnmadd_ps(ag, inv, dR);
      cQ = _mm512_fnmadd_ps(x, inv, cQ);
      __mmask16 kx = _mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ);
      _mm512_storeu_ps(cm + nc, _mm512_maskz_compress_ps(kx, _mm512_mul_ps(mu, inv)));
      _mm512_storeu_ps(cx + nc, _mm512_maskz_compress_ps(kx, x));
      nc += __builtin_popcount((unsigned)kx);
    } else {
      inv = _mm512_div_ps(one, apa);
      dRa = _mm512_mul_ps(_mm512_set1_ps(-ag_), inv);
    }
    /* log1p(r) = log(w) + (r - (w - 1)) / w, and 1 / w = a / (a + mu) */
    __m512 ainv = _mm512_mul_ps(ag, inv);
    __m512 L = _mm512_fmadd_ps(_mm512_sub_ps(r, _mm512_sub_ps(w, one)), ainv, c2l_log16(w));
    __m512 U = _mm512_mul_ps(dRa, y);
    sL = _mm512_mask_add_ps(sL, km, sL, L);
    sM = _mm512_mask3_fmadd_ps(mu, inv, sM, km); /* one op: no extra step in the chain */
    sU = _mm512_mask_add_ps(sU, km, sU, U);
    sUA = _mm512_mask3_fmadd_ps(U, A, sUA, km);
    _mm512_storeu_ps(ysacc + i, _mm512_fmadd_ps(dRa, base, _mm512_loadu_ps(ysacc + i)));
    _mm512_storeu_ps(col + i, _mm512_mul_ps(U, mg));
  }
  *ncp = nc;
  out[0] = _mm512_reduce_add_ps(sL);
  out[1] = _mm512_reduce_add_ps(sM);
  out[2] = _mm512_reduce_add_ps(sU);
  out[3] = _mm512_reduce_add_ps(sUA);
  out[4] = _mm512_reduce_add_ps(cQ);
}

/* sum x log(q) over the nc compressed pairs of c2l_gene16 */
C2L_F32_TARGET
static double c2l_xlog16(int nc, const float *cm, const float *cx) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 cl = _mm512_setzero_ps();
  for (int j = 0; j < nc; j += 16) {
    const __mmask16 km = nc - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nc - j)) - 1u);
    __m512 q = _mm512_mask_loadu_ps(one, km, cm + j), x = _mm512_maskz_loadu_ps(km, cx + j);
    cl = _mm512_fmadd_ps(x, c2l_log16(q), cl);
  }
  return _mm512_reduce_add_ps(cl);
}
#endif

/* One tile: nb spots (rows of col, leading dimension ld), genes g0..g1-1 of batch e, after the
 * forward GEMM (col = A = W sig). Per gene g: mg = m_g, sg = s_eg, ag = a_eg, the non-zero
 * counts of the block from the CSC copy (cursor[g] onwards). Sums per gene (double, added to
 * acc): [0] sum log1p(mu / a), [1] sum mu / (a + mu), [2] sum T, [3] sum T A, [4] sum over
 * non-zeros of -x / (a + mu); per spot ysacc (float) += d/dy; col is overwritten with T m_g for
 * the backward GEMM; the loss gets the non-zero counts' x log(mu / (a + mu)). scr: 20 ld + 16
 * floats (the gathers, the dense counts, or on AVX-512 c2l_gene16's compressed pairs). */
C2L_F32_TARGET
static void C2L_CAT(c2l_tile_f32, C2L_F32_SUFFIX)(
    int nb, int ld, int E, R_xlen_t G, int e, int g0, int g1, float *buf, const double *mg_,
    const double *seg, const double *a_eg, const R_xlen_t *boff, const uint16_t *bi,
    const float *bv, const float *ys, float *ysacc, double *acc, float *scr, double *loss) {
  float *scA = scr + ld, *scy = scr + 2 * ld, *scx = scr + 3 * ld;
  double lnz = 0.0;
#ifdef C2L_F32_AVX512
  float *cm = scr + 4 * ld, *cx = scr + 12 * ld; /* the compressed pairs, 8 ld each */
  int nc = 0;
#endif
  for (int g = g0; g < g1; g++) {
    float *col = buf + (R_xlen_t)(g - g0) * ld;
    const R_xlen_t ie = e + (R_xlen_t)g * E;
    const float mg = (float)mg_[g], sg = (float)seg[ie], ag = (float)a_eg[ie],
                ia = (float)(1.0 / a_eg[ie]);
    /* the block's non-zero counts of gene g: local spots bi, values bv (block-major copy).
     * Gathered for kp = k rounded up to 16 entries (whole vectors, no scalar remainder): the
     * entries past k read spot 0 with x = 0 (the copies have 16 zeros of slack at the end), so
     * they add zeros and are not scattered back. */
    const uint16_t *scri = bi + boff[g];
    const float *xv = bv + boff[g];
    const int k = (int)(boff[g + 1] - boff[g]), kp = (k + 15) & ~15;
    if (C2L_DENSE(k, nb)) {
      /* Many non-zeros: the counts as a dense column and one pass with the non-zero terms for
       * every spot (zero counts add zeros), instead of gathers and scatters per non-zero. */
#ifdef C2L_F32_AVX512
      double s6[5];
      if (nc + ld + 16 > 8 * ld) {
        lnz += c2l_xlog16(nc, cm, cx);
        nc = 0;
      }
      c2l_gene16(nb, 1, col, ys, scri, xv, ysacc, mg, sg, ag, ia, cm, cx, &nc, s6);
      acc[g] += s6[0];
      acc[G + g] += s6[1];
      acc[2 * G + g] += s6[2];
      acc[3 * G + g] += s6[3];
      acc[4 * G + g] += s6[4];
      continue;
#else
      float *xd = scx;
      memset(xd, 0, (size_t)nb * sizeof(float));
      for (int j = 0; j < k; j++) xd[scri[j]] = xv[j];
      float sL = 0.0f, sM = 0.0f, sT = 0.0f, sTA = 0.0f, cT = 0.0f, cTA = 0.0f, cQ = 0.0f,
            cl = 0.0f;
#pragma omp simd reduction(+ : sL, sM, sT, sTA, cT, cTA, cQ, cl)
      for (int i = 0; i < nb; i++) {
        float A = col[i], base = A * mg + sg, y = ys[i], x = xd[i];
        float mu = base * y, r = mu * ia, w = 1.0f + r;
        float inv = 1.0f / (ag + mu), ainv = ag * inv, rmu = 1.0f / mu;
        float L = scn_logf_fast(w) + (r - (w - 1.0f)) * ainv;
        float T = -ainv * y, dR = x * (rmu - inv), Tc = dR * y;
        sL += L;
        sM += mu * inv;
        sT += T;
        sTA += T * A;
        cT += Tc;
        cTA += Tc * A;
        cQ -= x * inv;
        cl += x * scn_logf_fast(mu * inv);
        ysacc[i] += (dR - ainv) * base;
        col[i] = (T + Tc) * mg;
      }
      lnz += cl;
      acc[g] += sL;
      acc[G + g] += sM;
      acc[2 * G + g] += (double)sT + cT;
      acc[3 * G + g] += (double)sTA + cTA;
      acc[4 * G + g] += cQ;
      continue;
#endif
    }
#pragma omp simd
    for (int j = 0; j < kp; j++) {
      int ix = j < k ? scri[j] : 0; /* past k: the next pair's entries (masks, on AVX-512) */
      scA[j] = col[ix];
      scy[j] = ys[ix];
      scx[j] = j < k ? xv[j] : 0.0f;
    }
    float cT = 0.0f, cTA = 0.0f, cQ = 0.0f, cl = 0.0f;
#pragma omp simd reduction(+ : cT, cTA, cQ, cl)
    for (int j = 0; j < kp; j++) {
      float x = scx[j], A = scA[j], y = scy[j];
      float base = A * mg + sg, mu = base * y, apa = ag + mu;
      float inv = 1.0f / apa, rmu = 1.0f / mu;
      float dR = x * (rmu - inv), Tc = dR * y;
      cT += Tc;
      cTA += Tc * A;
      cQ -= x * inv;
      cl += x * scn_logf_fast(mu * inv);
      scr[j] = dR * base;
      scA[j] = Tc * mg;
    }
    lnz += cl;
    /* the spots of one gene are distinct, so the scatters have no conflicts */
    C2L_CAT(c2l_scatter_add, C2L_F32_SUFFIX)(k, scri, scr, ysacc);
#ifdef C2L_F32_AVX512
    double s6[5];
    c2l_gene16(nb, 0, col, ys, NULL, NULL, ysacc, mg, sg, ag, ia, cm, cx, &nc, s6);
    const double sL = s6[0], sM = s6[1], sT = s6[2], sTA = s6[3];
#else
    float sL = 0.0f, sM = 0.0f, sT = 0.0f, sTA = 0.0f;
#pragma omp simd reduction(+ : sL, sM, sT, sTA)
    for (int i = 0; i < nb; i++) {
      float A = col[i], base = A * mg + sg, y = ys[i];
      float mu = base * y, r = mu * ia, w = 1.0f + r;
      float inv = 1.0f / (ag + mu), ainv = ag * inv;
      /* log1p(r) = log(w) + (r - (w - 1)) / w, and 1 / w = a / (a + mu) */
      float L = scn_logf_fast(w) + (r - (w - 1.0f)) * ainv;
      float T = -ainv * y;
      sL += L;
      sM += mu * inv;
      sT += T;
      sTA += T * A;
      ysacc[i] -= ainv * base;
      col[i] = T * mg;
    }
#endif
    C2L_CAT(c2l_scatter_add, C2L_F32_SUFFIX)(k, scri, scA, col);
    acc[g] += sL;
    acc[G + g] += sM;
    acc[2 * G + g] += (double)sT + cT;
    acc[3 * G + g] += (double)sTA + cTA;
    acc[4 * G + g] += cQ;
  }
#ifdef C2L_F32_AVX512
  lnz += c2l_xlog16(nc, cm, cx);
#endif
  *loss += lnz;
}

/* One vectorised float pass over n values (the floor bench's elementwise part): y = log(1 + x). */
C2L_F32_TARGET
static void C2L_CAT(c2l_logpass_f32, C2L_F32_SUFFIX)(R_xlen_t n, float *x) {
#pragma omp simd
  for (R_xlen_t i = 0; i < n; i++) x[i] = scn_logf_fast(1.0f + x[i]);
}

#endif
