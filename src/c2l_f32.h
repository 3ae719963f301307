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
 *                        loss), so that the per-gene sums hold the small terms only.
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

/* One tile: nb spots (rows of col, leading dimension ld), genes g0..g1-1 of batch e, after the
 * forward GEMM (col = A = W sig). Per gene g: mg = m_g, sg = s_eg, ag = a_eg, the non-zero
 * counts of the block from the CSC copy (cursor[g] onwards). Sums per gene (double, added to
 * acc): [0] sum log1p(mu / a), [1] sum mu / (a + mu), [2] sum T, [3] sum T A, [4] sum over
 * non-zeros of -x / (a + mu); per spot ysacc (float) += d/dy; col is overwritten with T m_g for
 * the backward GEMM; the loss gets the non-zero counts' x log(mu / (a + mu)). */
C2L_F32_TARGET
static void C2L_CAT(c2l_tile_f32, C2L_F32_SUFFIX)(
    int nb, int ld, int E, R_xlen_t G, int e, int g0, int g1, float *buf, const double *mg_,
    const double *seg, const double *a_eg, const R_xlen_t *boff, const uint16_t *bi,
    const float *bv, const float *ys, float *ysacc, double *acc, float *scr, double *loss) {
  float *scA = scr + ld, *scy = scr + 2 * ld, *scx = scr + 3 * ld;
  double lnz = 0.0;
  for (int g = g0; g < g1; g++) {
    float *col = buf + (R_xlen_t)(g - g0) * ld;
    const R_xlen_t ie = e + (R_xlen_t)g * E;
    const float mg = (float)mg_[g], sg = (float)seg[ie], ag = (float)a_eg[ie],
                ia = (float)(1.0 / a_eg[ie]);
    /* the block's non-zero counts of gene g: local spots bi, values bv (block-major copy).
     * Gathered for kp = k rounded up to 16 entries (whole vectors, no scalar remainder): the
     * entries past k are the next ones' spots (the copies have 16 zeros of slack at the end)
     * with x = 0, so they add zeros and are not scattered back. */
    const uint16_t *scri = bi + boff[g];
    const float *xv = bv + boff[g];
    const int k = (int)(boff[g + 1] - boff[g]), kp = (k + 15) & ~15;
    if (k * C2L_DENSE_RATIO > nb) {
      /* Many non-zeros: the counts as a dense column and one pass with the non-zero terms for
       * every spot (zero counts add zeros), instead of gathers and scatters per non-zero. */
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
    }
#pragma omp simd
    for (int j = 0; j < kp; j++) {
      int ix = scri[j];
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
    C2L_CAT(c2l_scatter_add, C2L_F32_SUFFIX)(k, scri, scA, col);
    acc[g] += sL;
    acc[G + g] += sM;
    acc[2 * G + g] += (double)sT + cT;
    acc[3 * G + g] += (double)sTA + cTA;
    acc[4 * G + g] += cQ;
  }
  *loss += lnz;
}

/* One vectorised float pass over n values (the floor bench's elementwise part): y = log(1 + x). */
C2L_F32_TARGET
static void C2L_CAT(c2l_logpass_f32, C2L_F32_SUFFIX)(R_xlen_t n, float *x) {
#pragma omp simd
  for (R_xlen_t i = 0; i < n; i++) x[i] = scn_logf_fast(1.0f + x[i]);
}

#endif
