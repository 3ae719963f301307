/* dynamics_assign.c: the time assignment of scVelo's dynamical model (spec 4), both flows'
 * shared part: branch times by projection onto the curves or by inversion (float64 flow; the
 * float32 flow's inverse assignment is in dynamics_f32.c), the increment constraint, the
 * four state distances smoothed over the neighbour graph, the state choice, and the cache of
 * assignments already computed for a gene.
 */
#include "dynamics.h"
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ascending sort with NaN last (numpy order), LSD radix on the order-preserving bit image
 * of the doubles; tmp and keys have room for n values */
static inline uint64_t dbl_key(double x) {
  uint64_t b;
  if (isnan(x)) x = NAN;
  memcpy(&b, &x, sizeof b);
  if (isnan(x)) return UINT64_MAX; /* NaN after +Inf */
  return (b >> 63) ? ~b : (b | 0x8000000000000000ULL);
}
static inline double key_dbl(uint64_t k) {
  if (k == UINT64_MAX) return NAN;
  uint64_t b = (k >> 63) ? (k & 0x7fffffffffffffffULL) : ~k;
  double x;
  memcpy(&x, &b, sizeof x);
  return x;
}
void dyn_sort(double *a, ptrdiff_t n, uint64_t *k1, uint64_t *k2) {
  if (n < 2) return;
  if (n < 32) { /* insertion sort */
    for (ptrdiff_t i = 1; i < n; i++) {
      double v = a[i];
      uint64_t kv = dbl_key(v);
      ptrdiff_t j = i - 1;
      while (j >= 0 && dbl_key(a[j]) > kv) {
        a[j + 1] = a[j];
        j--;
      }
      a[j + 1] = v;
    }
    return;
  }
  enum { BITS = 8, NB = 1 << BITS, PASSES = 8 };
  static const int shifts[PASSES] = {0, 8, 16, 24, 32, 40, 48, 56};
  uint32_t cnt[PASSES][NB];
  memset(cnt, 0, sizeof cnt);
  for (ptrdiff_t i = 0; i < n; i++) {
    uint64_t k = dbl_key(a[i]);
    k1[i] = k;
    for (int p = 0; p < PASSES; p++) cnt[p][(k >> shifts[p]) & (NB - 1)]++;
  }
  uint64_t *src = k1, *dst = k2;
  for (int p = 0; p < PASSES; p++) {
    uint32_t *c = cnt[p];
    /* a digit shared by all keys needs no pass */
    if (c[(src[0] >> shifts[p]) & (NB - 1)] == (uint32_t)n) continue;
    uint32_t sum = 0;
    for (int b = 0; b < NB; b++) {
      uint32_t t = c[b];
      c[b] = sum;
      sum += t;
    }
    for (ptrdiff_t i = 0; i < n; i++) dst[c[(src[i] >> shifts[p]) & (NB - 1)]++] = src[i];
    uint64_t *t = src;
    src = dst;
    dst = t;
  }
  for (ptrdiff_t i = 0; i < n; i++) a[i] = key_dbl(src[i]);
}


/* y_m = C x_m for k = 2 or 4 vectors stored interleaved (x[i * k + m]); each row is
 * accumulated in stored order, one multiply and one add per term as scipy does (packed
 * SSE2 lanes do exactly the scalar operations) */
static void smooth2(const dyn_shared *sh, const double *x, double *y0, double *y1) {
  int n = sh->n;
  const int *cp = sh->cp, *ci = sh->ci;
  const double *cx = sh->cx;
  for (int i = 0; i < n; i++) {
#ifdef __SSE2__
    __m128d a = _mm_setzero_pd();
    for (int p = cp[i]; p < cp[i + 1]; p++) {
      __m128d wv = _mm_set1_pd(cx[p]);
      a = _mm_add_pd(a, _mm_mul_pd(wv, _mm_loadu_pd(x + 2 * (size_t)ci[p])));
    }
    double r[2];
    _mm_storeu_pd(r, a);
    y0[i] = r[0];
    y1[i] = r[1];
#else
    double a0 = 0, a1 = 0;
    for (int p = cp[i]; p < cp[i + 1]; p++) {
      const double *xj = x + 2 * (size_t)ci[p];
      double wv = cx[p];
      a0 += wv * xj[0];
      a1 += wv * xj[1];
    }
    y0[i] = a0;
    y1[i] = a1;
#endif
  }
}
static void smooth4(const dyn_shared *sh, const double *x, double *const *y) {
  int n = sh->n;
  const int *cp = sh->cp, *ci = sh->ci;
  const double *cx = sh->cx;
  for (int i = 0; i < n; i++) {
#ifdef __SSE2__
    __m128d a = _mm_setzero_pd(), b = _mm_setzero_pd();
    for (int p = cp[i]; p < cp[i + 1]; p++) {
      const double *xj = x + 4 * (size_t)ci[p];
      __m128d wv = _mm_set1_pd(cx[p]);
      a = _mm_add_pd(a, _mm_mul_pd(wv, _mm_loadu_pd(xj)));
      b = _mm_add_pd(b, _mm_mul_pd(wv, _mm_loadu_pd(xj + 2)));
    }
    double r[4];
    _mm_storeu_pd(r, a);
    _mm_storeu_pd(r + 2, b);
    y[0][i] = r[0];
    y[1][i] = r[1];
    y[2][i] = r[2];
    y[3][i] = r[3];
#else
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int p = cp[i]; p < cp[i + 1]; p++) {
      const double *xj = x + 4 * (size_t)ci[p];
      double wv = cx[p];
      a0 += wv * xj[0];
      a1 += wv * xj[1];
      a2 += wv * xj[2];
      a3 += wv * xj[3];
    }
    y[0][i] = a0;
    y[1][i] = a1;
    y[2][i] = a2;
    y[3][i] = a3;
#endif
  }
}

#ifdef DYN_AVX
/* smooth4 with 256-bit lanes: the same multiply and add per lane (no fused multiply-add).
 * Two rows advance together (two independent dependency chains), each in its stored order. */
#define DYN_ACC4(acc, p)                                                                    \
  acc = _mm256_add_pd(acc, _mm256_mul_pd(_mm256_set1_pd(cx[p]),                           \
                                         _mm256_loadu_pd(x + 4 * (size_t)ci[p])))
__attribute__((target("avx"))) static void smooth4_avx(const dyn_shared *sh, const double *x,
                                                       double *const *y) {
  int n = sh->n;
  const int *cp = sh->cp, *ci = sh->ci;
  const double *cx = sh->cx;
  double r[8];
  int i = 0;
  for (; i + 1 < n; i += 2) {
    __m256d a = _mm256_setzero_pd(), b = _mm256_setzero_pd();
    int p = cp[i], q = cp[i + 1], e = cp[i + 2], L = (q - p) < (e - q) ? q - p : e - q;
    for (int k = 0; k < L; k++) {
      DYN_ACC4(a, p + k);
      DYN_ACC4(b, q + k);
    }
    for (int k = p + L; k < q; k++) DYN_ACC4(a, k);
    for (int k = q + L; k < e; k++) DYN_ACC4(b, k);
    _mm256_storeu_pd(r, a);
    _mm256_storeu_pd(r + 4, b);
    for (int m = 0; m < 4; m++) {
      y[m][i] = r[m];
      y[m][i + 1] = r[4 + m];
    }
  }
  for (; i < n; i++) {
    __m256d a = _mm256_setzero_pd();
    for (int p = cp[i]; p < cp[i + 1]; p++) DYN_ACC4(a, p);
    _mm256_storeu_pd(r, a);
    for (int m = 0; m < 4; m++) y[m][i] = r[m];
  }
}
#undef DYN_ACC4

/* the standardised distances of assign() (r0..r3) for the first multiple of 4 cells, 4 cells
 * per 256-bit lane; the same subtractions, divisions, squares and sums as the scalar loop
 * (no fused multiply-add). Returns the number of cells done. */
__attribute__((target("avx"))) static int dist_avx(dyn_scratch *w, const double *s, int n, int K,
                                                   double su, double ss, double uinf,
                                                   double sinf) {
  const double *uh = w->uhat, *eU = w->eU, *eS = w->eS, *eU_ = w->eU_, *eS_ = w->eS_;
  __m256d vsu = _mm256_set1_pd(su), vss = _mm256_set1_pd(ss);
  __m256d vui = _mm256_set1_pd(uinf), vsi = _mm256_set1_pd(sinf);
  int i = 0;
  for (; i + 3 < n; i += 4) {
    __m256d u = _mm256_loadu_pd(uh + i), x = _mm256_loadu_pd(s + i);
    __m256d du = _mm256_div_pd(_mm256_sub_pd(u, _mm256_loadu_pd(eU + i)), vsu);
    __m256d du_ = _mm256_div_pd(_mm256_sub_pd(u, _mm256_loadu_pd(eU_ + i)), vsu);
    __m256d ds = _mm256_div_pd(_mm256_sub_pd(x, _mm256_loadu_pd(eS + i)), vss);
    __m256d ds_ = _mm256_div_pd(_mm256_sub_pd(x, _mm256_loadu_pd(eS_ + i)), vss);
    _mm256_storeu_pd(w->r0 + i, _mm256_add_pd(_mm256_mul_pd(du_, du_), _mm256_mul_pd(ds_, ds_)));
    _mm256_storeu_pd(w->r1 + i, _mm256_add_pd(_mm256_mul_pd(du, du), _mm256_mul_pd(ds, ds)));
    if (K == 4) {
      __m256d a = _mm256_div_pd(_mm256_sub_pd(u, vui), vsu);
      __m256d b = _mm256_div_pd(_mm256_sub_pd(x, vsi), vss);
      __m256d a2 = _mm256_div_pd(u, vsu), b2 = _mm256_div_pd(x, vss);
      _mm256_storeu_pd(w->r2 + i, _mm256_add_pd(_mm256_mul_pd(a2, a2), _mm256_mul_pd(b2, b2)));
      _mm256_storeu_pd(w->r3 + i, _mm256_add_pd(_mm256_mul_pd(a, a), _mm256_mul_pd(b, b)));
    }
  }
  return i;
}
#endif

/* d0/d1 again for the rows with a neighbour among the nc cells whose time changed, read from
 * the interleaved distances X (stride K, lane 0 = r0, lane 1 = r1). Each recomputed lane has
 * the multiply and add order of the full smoothing, so it keeps its bits where its inputs
 * did not change, and the rows left alone keep theirs. */
static void resmooth(const dyn_shared *sh, dyn_scratch *w, const int *cells, int nc, int K) {
  int n = sh->n;
  const int *cp = sh->cp, *ci = sh->ci, *tp = sh->tp, *ti = sh->ti;
  const double *cx = sh->cx, *X = w->ilv;
  unsigned char *rm = w->rmark;
  memset(rm, 0, (size_t)n);
  for (int c = 0; c < nc; c++) {
    int j = cells[c], q1 = tp[j + 1];
    for (int q = tp[j]; q < q1; q++) rm[ti[q]] = 1;
  }
  int *rows = w->idx_on, nr = 0; /* free here */
  for (int i = 0; i < n; i++)
    if (rm[i]) rows[nr++] = i;
  /* both lanes of every marked row (an unchanged lane gets its old bits again), two rows at a
   * time for two independent chains */
  int k = 0;
#ifdef __SSE2__
  for (; k + 1 < nr; k += 2) {
    int i = rows[k], h = rows[k + 1];
    int p = cp[i], e = cp[i + 1], q = cp[h], f = cp[h + 1];
    int L = (e - p) < (f - q) ? e - p : f - q;
    __m128d a = _mm_setzero_pd(), b = _mm_setzero_pd();
    for (int m = 0; m < L; m++) {
      a = _mm_add_pd(a, _mm_mul_pd(_mm_set1_pd(cx[p + m]), _mm_loadu_pd(X + K * (size_t)ci[p + m])));
      b = _mm_add_pd(b, _mm_mul_pd(_mm_set1_pd(cx[q + m]), _mm_loadu_pd(X + K * (size_t)ci[q + m])));
    }
    for (int m = p + L; m < e; m++)
      a = _mm_add_pd(a, _mm_mul_pd(_mm_set1_pd(cx[m]), _mm_loadu_pd(X + K * (size_t)ci[m])));
    for (int m = q + L; m < f; m++)
      b = _mm_add_pd(b, _mm_mul_pd(_mm_set1_pd(cx[m]), _mm_loadu_pd(X + K * (size_t)ci[m])));
    double r[4];
    _mm_storeu_pd(r, a);
    _mm_storeu_pd(r + 2, b);
    w->d0[i] = r[0];
    w->d1[i] = r[1];
    w->d0[h] = r[2];
    w->d1[h] = r[3];
  }
#endif
  for (; k < nr; k++) {
    int i = rows[k];
    double a0 = 0, a1 = 0;
    for (int p = cp[i]; p < cp[i + 1]; p++) {
      const double *xj = X + K * (size_t)ci[p];
      a0 += cx[p] * xj[0];
      a1 += cx[p] * xj[1];
    }
    w->d0[i] = a0;
    w->d1[i] = a1;
  }
}

/* d_k = C r_k for the first K (2 or 4) distance vectors of the scratch */
static void smooth_k(const dyn_shared *sh, dyn_scratch *w, int K) {
  int n = sh->n;
  double *X = w->ilv;
  if (K == 4) {
    for (int i = 0; i < n; i++) {
      double *xi = X + 4 * (size_t)i;
      xi[0] = w->r0[i];
      xi[1] = w->r1[i];
      xi[2] = w->r2[i];
      xi[3] = w->r3[i];
    }
    double *yout[4] = {w->d0, w->d1, w->d2, w->d3};
#ifdef DYN_AVX
    if (sh->avx) {
      smooth4_avx(sh, X, yout);
      return;
    }
#endif
    smooth4(sh, X, yout);
  } else {
    for (int i = 0; i < n; i++) {
      X[2 * (size_t)i] = w->r0[i];
      X[2 * (size_t)i + 1] = w->r1[i];
    }
    smooth2(sh, X, w->d0, w->d1);
  }
}

/* Bucket pass over one set of values (for adjust_fast): appends to gap/thr the increments it
 * knows exactly, in ascending order of position, with the sorted value that ends each (the
 * smallest value, i.e. the first increment v_(1) - 0, and the gaps between consecutive
 * non-empty buckets, which are gaps between consecutive sorted values); returns the largest
 * range inside a bucket, which bounds every other (rounded) increment, or -1 if a value is
 * not finite. Buckets split [min, max] evenly, so bucket order is value order. */
static double gap_scan(const double *v, int m, double *bmin, double *bmax, double *gap,
                       double *thr, int *nk) {
  double lo = v[0], hi = v[0];
  int fin = 1;
  for (int k = 0; k < m; k++) { /* branch-free: min, max and finiteness */
    double x = v[k];
    fin &= isfinite(x) != 0;
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
  }
  if (!fin) return -1;
  gap[*nk] = lo - 0;
  thr[(*nk)++] = lo;
  if (hi == lo) return 0;
  int B = m;
  double scale = (double)B / (hi - lo);
  if (!isfinite(scale)) return -1;
  for (int b = 0; b < B; b++) {
    bmin[b] = INFINITY;
    bmax[b] = -INFINITY;
  }
  for (int k = 0; k < m; k++) {
    int b = (int)((v[k] - lo) * scale); /* monotone in v */
    b = b < B ? b : B - 1;
    double x = v[k], mn = bmin[b], mx = bmax[b];
    bmin[b] = x < mn ? x : mn;
    bmax[b] = x > mx ? x : mx;
  }
  double R = 0, prev = 0;
  int first = 1;
  for (int b = 0; b < B; b++) {
    if (bmin[b] > bmax[b]) continue;
    double r = bmax[b] - bmin[b];
    if (r > R) R = r;
    if (!first) {
      gap[*nk] = bmin[b] - prev;
      thr[(*nk)++] = bmin[b];
    }
    prev = bmax[b];
    first = 0;
  }
  return R;
}

/* adjust_increments (spec 4.3) without sorting, when the buckets of gap_scan() settle it: if
 * no increment hidden inside a bucket can reach the k largest known ones (k = the order
 * statistics P99.5 interpolates between), those are the k largest of all increments and give
 * the threshold exactly; if no hidden increment exceeds the threshold either, every jump is a
 * known gap. Applies the jumps to von/voff (in place, subtractions in upstream's order) and
 * returns 1; returns 0 (values untouched) when the exact sorting path is needed. */
static int adjust_fast(double *von, int non, double *voff, int noff, dyn_scratch *w, int round32) {
  int N = non + noff, nk = 0;
  double *gap = w->wbuf, *thr = w->dbuf, *bk = (double *)w->k1, R = 0; /* k1, k2: 2n doubles */
  int nk_on = 0;
  if (non > 0) {
    R = gap_scan(von, non, bk, bk + non, gap, thr, &nk);
    if (R < 0) return 0;
    nk_on = nk;
  }
  if (noff > 0) {
    double r = gap_scan(voff, noff, bk + 2 * (size_t)non, bk + 2 * (size_t)non + noff, gap, thr,
                        &nk);
    if (r < 0) return 0;
    if (r > R) R = r;
  }
  double vi = (double)(N - 1) * (99.5 / 100.0);
  ptrdiff_t prev = (ptrdiff_t)floor(vi), next = prev + 1;
  double g = vi - floor(vi);
  if (vi >= (double)(N - 1)) prev = next = N - 1;
  ptrdiff_t k = N - prev; /* sorted[prev] is the k-th largest increment */
  if (k > nk) return 0;
  double *cp = w->sbuf2;
  memcpy(cp, gap, sizeof(double) * (size_t)nk);
  double lo = scn_select_kth(cp, nk, nk - k), hi = lo;
  if (!(R <= lo)) return 0; /* a hidden increment might be among the k largest */
  if (next != prev) {
    hi = cp[nk - k + 1];
    for (ptrdiff_t i = nk - k + 2; i < nk; i++)
      if (cp[i] < hi) hi = cp[i];
  }
  double diff = hi - lo, P = lo + diff * g;
  if (g >= 0.5) P = hi - diff * (1 - g);
  double ub = 3 * P;
  if (!(R <= ub)) return 0; /* a hidden increment might be a jump */
  for (int set = 0; set < 2; set++) {
    double *v = set ? voff : von;
    int m = set ? noff : non, q0 = set ? nk_on : 0, q1 = set ? nk : nk_on;
    int nj = 0, *jumps = w->ao;
    for (int q = q0; q < q1; q++)
      if (gap[q] > ub) jumps[nj++] = q;
    if (nj == 0) continue;
    for (int i = 0; i < m; i++) {
      double x = v[i], val = x;
      for (int j = 0; j < nj; j++) {
        if (x >= thr[jumps[j]]) val = round32 ? r32(val - r32(gap[jumps[j]])) : val - gap[jumps[j]];
        else break;
      }
      v[i] = val;
    }
  }
  return 1;
}

#define DYN_BLK 16
/* bounding boxes of consecutive blocks of DYN_BLK curve points */
static int curve_boxes(const double *gU, const double *gS, int M, double *box) {
  int nb = (M + DYN_BLK - 1) / DYN_BLK;
  for (int b = 0; b < nb; b++) {
    int k0 = b * DYN_BLK, k1 = k0 + DYN_BLK < M ? k0 + DYN_BLK : M;
    double u0 = gU[k0], u1 = gU[k0], s0 = gS[k0], s1 = gS[k0];
    for (int k = k0 + 1; k < k1; k++) {
      if (gU[k] < u0) u0 = gU[k];
      if (gU[k] > u1) u1 = gU[k];
      if (gS[k] < s0) s0 = gS[k];
      if (gS[k] > s1) s1 = gS[k];
    }
    box[4 * b] = u0;
    box[4 * b + 1] = u1;
    box[4 * b + 2] = s0;
    box[4 * b + 3] = s1;
  }
  return nb;
}

/* Same result as curve_argmin (first index of the minimal distance), evaluating only the
 * blocks whose box could hold a point at least as close. Rounded subtraction, squaring and
 * addition are monotone, so the box bound never exceeds a point's computed distance. */
static int curve_argmin_pruned(const double *gU, const double *gS, int M, const double *box,
                               int nb, double u, double s, double *lb) {
  int bb = 0;
  for (int b = 0; b < nb; b++) {
    const double *x = box + 4 * b;
    double dx = u < x[0] ? x[0] - u : (u > x[1] ? u - x[1] : 0);
    double dy = s < x[2] ? x[2] - s : (s > x[3] ? s - x[3] : 0);
    lb[b] = dx * dx + dy * dy;
    if (lb[b] < lb[bb]) bb = b;
  }
  double best = INFINITY;
  int bk = -1;
  for (int pass = 0; pass < 2; pass++) {
    for (int b = (pass ? 0 : bb); b < (pass ? nb : bb + 1); b++) {
      if (pass && b == bb) continue;
      int k0 = b * DYN_BLK;
      if (bk >= 0 && !(lb[b] < best || (lb[b] == best && k0 < bk))) continue;
      int k1 = k0 + DYN_BLK < M ? k0 + DYN_BLK : M;
      for (int k = k0; k < k1; k++) {
        double du = gU[k] - u, ds = gS[k] - s;
        double d = du * du + ds * ds;
        if (bk < 0 || d < best || (d == best && k < bk)) {
          best = d;
          bk = k;
        }
      }
    }
  }
  return bk < 0 ? 0 : bk;
}

/* adjust_increments on values v (in cell order, length m) with sorted copy srt and increments;
 * round32: v is a float32 array, so each subtraction is float32 (the increment rounded first) */
static void apply_jumps(double *v, const double *orig, int m, const double *srt, const double *dt,
                        double ub, int *jumps, int round32) {
  int nj = 0;
  for (int j = 0; j < m; j++)
    if (dt[j] > ub) jumps[nj++] = j;
  if (nj == 0) return;
  for (int i = 0; i < m; i++) {
    double x = orig[i], val = v[i];
    for (int q = 0; q < nj; q++) {
      if (x >= srt[jumps[q]]) val = round32 ? r32(val - r32(dt[jumps[q]])) : val - dt[jumps[q]];
      else break;
    }
    v[i] = val;
  }
}

/* The increment constraint (spec 4.3) on the branch times w->tau (cells with D1 < D0) and
 * w->tau_ (the others): writes the adjusted times back and lists the changed cells in w->ao,
 * on-branch ones first (*nch_on of them); returns their number. round32: the times are float32
 * arrays (the subtractions are float32; increments and threshold are float64 as numpy's). */
int dyn_adjust_block(dyn_gene *g, const double *D0, const double *D1, int round32, int *nch_on) {
  dyn_scratch *w = g->w;
  int n = g->sh->n, non = 0, noff = 0;
  double *tau = w->tau, *tau_ = w->tau_;
  for (int i = 0; i < n; i++) {
    double a0 = D0[i], a1 = D1[i];
    int on = (isnan(a1) && !isnan(a0)) || (!isnan(a0) && a1 < a0);
    if (on) w->idx_on[non++] = i;
    else w->idx_off[noff++] = i;
  }
  int nch = 0, *chl = w->ao;
  /* values of both sets: sbuf = [on values | off values] */
  double *von = w->sbuf, *voff = von + non;
  for (int k = 0; k < non; k++) von[k] = tau[w->idx_on[k]];
  for (int k = 0; k < noff; k++) voff[k] = tau_[w->idx_off[k]];
  double *non_v = w->jv0, *noff_v = w->jv1;
  memcpy(non_v, von, sizeof(double) * (size_t)non);
  memcpy(noff_v, voff, sizeof(double) * (size_t)noff);
  if (!adjust_fast(non_v, non, noff_v, noff, w, round32)) {
    double *soff = w->sbuf2;
    double *son = soff, *soff2 = soff + non; /* sorted copies */
    memcpy(son, von, sizeof(double) * (size_t)non);
    memcpy(soff2, voff, sizeof(double) * (size_t)noff);
    dyn_sort(son, non, w->k1, w->k2);
    dyn_sort(soff2, noff, w->k1, w->k2);
    double *dt = w->dbuf, *dt_ = w->dbuf + non;
    for (int k = 0; k < non; k++) dt[k] = son[k] - (k ? son[k - 1] : 0);
    for (int k = 0; k < noff; k++) dt_[k] = soff2[k] - (k ? soff2[k - 1] : 0);
    memcpy(w->wbuf, dt, sizeof(double) * (size_t)(non + noff));
    double ub = 3 * np_percentile(w->wbuf, non + noff, 99.5);
    int *jumps = w->ao; /* free int buffer of length n */
    if (noff > 0) apply_jumps(noff_v, voff, noff, soff2, dt_, ub, jumps, round32);
    if (non > 0) apply_jumps(non_v, von, non, son, dt, ub, jumps, round32);
  }
  for (int k = 0; k < non; k++) {
    if (non_v[k] == von[k]) continue;
    int i = w->idx_on[k];
    tau[i] = non_v[k];
    chl[nch++] = i;
  }
  *nch_on = nch;
  for (int k = 0; k < noff; k++) {
    if (noff_v[k] == voff[k]) continue;
    int i = w->idx_off[k];
    tau_[i] = noff_v[k];
    chl[nch++] = i;
  }
  return nch;
}

/* the state of cell i (spec 4.4): first index of the smallest of D[0..K-1][i] (numpy argmin,
 * a NaN wins) */
int dyn_state_choice(const double *const *D, int K, int i) {
  int k = 0;
  double best = D[0][i];
  if (!isnan(best)) {
    for (int m = 1; m < K; m++) {
      double v = D[m][i];
      if (isnan(v)) return m;
      if (v < best) {
        best = v;
        k = m;
      }
    }
  }
  return k;
}

/* Full time assignment at the given parameters p (spec 4). If t_out is NULL, writes the raw
 * adjusted branch times into tau_raw/tau_raw_ (mode "tau"). In the float32 flow the inverse
 * assignment is dyn_assign_inv32(); the projection runs here (float64 grid and branch
 * distances, float32 steady-state distances, as upstream). */
void dyn_assign(dyn_gene *g, const double *p, double *t_out, double *tau_out, int *o_out,
                   double *tau_raw, double *tau_raw_) {
  const dyn_shared *sh = g->sh;
  double alpha = p[0], beta = p[1], gamma = p[2], z = p[3], t_ = p[4];
  if (sh->f32 && !use_projection(g->mode, beta, gamma)) {
    dyn_assign_inv32(g, p, t_out, tau_out, o_out, tau_raw, tau_raw_);
    return;
  }
  dyn_scratch *w = g->w;
  int n = sh->n;
  const double *s = g->s;
  double *uh = w->uhat, *tau = w->tau, *tau_ = w->tau_;
  double su, ss = g->std_s;
  if (sh->f32) { /* u / z is a float32 array; std_u / z a float32 or float64 scalar */
    float zf = (float)z;
    for (int i = 0; i < n; i++) uh[i] = (double)((float)g->u[i] / zf);
    su = dyn_scaled_std_u(g, z, (int)p[5]);
  } else {
    for (int i = 0; i < n; i++) uh[i] = g->u[i] / z;
    su = g->std_u / z;
  }
  double u0_, s0_;
  sol_us(t_, 0, 0, alpha, beta, gamma, &u0_, &s0_);

  int have_e = use_projection(g->mode, beta, gamma);
  if (have_e) {
    double umin = INFINITY;
    int first = 1;
    for (int i = 0; i < n; i++)
      if (s[i] > 0) {
        if (first || isnan(uh[i]) || uh[i] < umin) umin = uh[i];
        first = 0;
        if (isnan(umin)) break;
      }
    double t0 = -1 / beta * clipped_log((umin - 0 / beta) / (u0_ - 0 / beta));
    int M = sh->proj_grid;
    double *gU = w->grid, *gS = gU + M, *hU = gS + M, *hS = hU + M;
    double *tp = hS + M, *tp_ = tp + M;
    int nan_on = -1, nan_off = -1;
    for (int k = 0; k < M; k++) {
      tp[k] = lsp(0, t_, M, k);
      sol_us(tp[k], 0, 0, alpha, beta, gamma, &gU[k], &gS[k]);
      if (nan_on < 0 && (isnan(gU[k]) || isnan(gS[k]))) nan_on = k;
    }
    for (int k = 0; k < M - 1; k++) {
      tp_[k] = lsp(0, t0, M, k + 1);
      sol_us(tp_[k], u0_, s0_, 0, beta, gamma, &hU[k], &hS[k]);
      if (nan_off < 0 && (isnan(hU[k]) || isnan(hS[k]))) nan_off = k;
    }
    double *box_on = tp_ + M, *box_off = box_on + 4 * (M / DYN_BLK + 1);
    int nb_on = nan_on < 0 ? curve_boxes(gU, gS, M, box_on) : 0;
    int nb_off = nan_off < 0 ? curve_boxes(hU, hS, M - 1, box_off) : 0;
    for (int i = 0; i < n; i++) {
      double ui = uh[i], si = s[i];
      int best;
      if (nan_on >= 0 || isnan(ui) || isnan(si)) best = nan_on >= 0 ? nan_on : 0;
      else best = curve_argmin_pruned(gU, gS, M, box_on, nb_on, ui, si, w->dbuf);
      tau[i] = tp[best];
      w->eU[i] = gU[best];
      w->eS[i] = gS[best];
      if (nan_off >= 0 || isnan(ui) || isnan(si)) best = nan_off >= 0 ? nan_off : 0;
      else best = curve_argmin_pruned(hU, hS, M - 1, box_off, nb_off, ui, si, w->dbuf);
      tau_[i] = tp_[best];
      w->eU_[i] = hU[best];
      w->eS_[i] = hS[best];
    }
  } else {
    double mx = -INFINITY;
    int anys = 0;
    for (int i = 0; i < n; i++) {
      tau[i] = np_clip(tau_inv1(uh[i], s[i], 0, 0, alpha, beta, gamma), 0, t_);
      tau_[i] = tau_inv1(uh[i], s[i], u0_, s0_, 0, beta, gamma);
      if (s[i] > 0) {
        mx = anys ? np_max2(mx, tau_[i]) : tau_[i];
        anys = 1;
      }
    }
    for (int i = 0; i < n; i++) tau_[i] = np_clip(tau_[i], 0, mx);
  }

  /* increment constraint (spec 4.3) and state distances (4.4). The distances to the two
   * branches at the raw times are those of the state step unless an increment is adjusted,
   * and the steady-state distances do not depend on the times, so all K distance vectors are
   * computed and smoothed in one pass; an adjustment (rare) recomputes the branch ones. */
  double *eU = w->eU, *eS = w->eS, *eU_ = w->eU_, *eS_ = w->eS_;
  int K = (t_out && sh->fit_steady) ? 4 : 2;
  double uinf = alpha / beta, sinf = alpha / gamma;
  if (!have_e)
    for (int i = 0; i < n; i++) {
      sol_us(tau[i], 0, 0, alpha, beta, gamma, &eU[i], &eS[i]);
      sol_us(tau_[i], u0_, s0_, 0, beta, gamma, &eU_[i], &eS_[i]);
    }
  int i0 = 0;
#ifdef DYN_AVX
  if (sh->avx) i0 = dist_avx(w, s, n, K, su, ss, uinf, sinf);
#endif
  for (int i = i0; i < n; i++) {
    double U = eU[i], S = eS[i], U_ = eU_[i], S_ = eS_[i];
    double du = (uh[i] - U) / su, du_ = (uh[i] - U_) / su;
    double ds = (s[i] - S) / ss, ds_ = (s[i] - S_) / ss;
    w->r0[i] = du_ * du_ + ds_ * ds_;
    w->r1[i] = du * du + ds * ds;
    if (K == 4) {
      double a = (uh[i] - uinf) / su, b = (s[i] - sinf) / ss;
      double a2 = uh[i] / su, b2 = s[i] / ss;
      w->r2[i] = a2 * a2 + b2 * b2;
      w->r3[i] = a * a + b * b;
    }
  }
  if (sh->f32 && K == 4) dyn_steady_dists32(g, alpha, beta, gamma, su);
  double *D[4] = {w->r0, w->r1, w->r2, w->r3};
  if (sh->cp) {
    smooth_k(sh, w, K);
    D[0] = w->d0;
    D[1] = w->d1;
    D[2] = w->d2;
    D[3] = w->d3;
  }
  int nch_on = 0, *chl = w->ao; /* the cells whose time changed */
  int nch = dyn_adjust_block(g, D[0], D[1], 0, &nch_on);
  for (int c = 0; c < nch; c++) {
    int i = chl[c];
    if (c < nch_on) sol_us(tau[i], 0, 0, alpha, beta, gamma, &eU[i], &eS[i]);
    else sol_us(tau_[i], u0_, s0_, 0, beta, gamma, &eU_[i], &eS_[i]);
  }
  if (!t_out) {
    memcpy(tau_raw, tau, sizeof(double) * (size_t)n);
    memcpy(tau_raw_, tau_, sizeof(double) * (size_t)n);
    return;
  }

  /* state distances (spec 4.4): the branch distances again at the adjusted times */
  if (nch > 0) {
    /* only the distances of changed cells, and (smoothed) only the rows with a changed
     * neighbour; the others are the same bits as before */
    double *X = w->ilv;
    for (int c = 0; c < nch; c++) {
      int i = chl[c];
      if (c < nch_on) {
        double du = (uh[i] - eU[i]) / su, ds = (s[i] - eS[i]) / ss;
        w->r1[i] = X[K * (size_t)i + 1] = du * du + ds * ds;
      } else {
        double du_ = (uh[i] - eU_[i]) / su, ds_ = (s[i] - eS_[i]) / ss;
        w->r0[i] = X[K * (size_t)i] = du_ * du_ + ds_ * ds_;
      }
    }
    if (sh->cp) resmooth(sh, w, chl, nch, K);
  }
  for (int i = 0; i < n; i++) {
    int k = dyn_state_choice((const double *const *)D, K, i);
    double tm = tau[i] * (double)(k == 1), tm_ = tau_[i] * (double)(k == 0);
    int ob = (k == 1 || k == 2);
    t_out[i] = tm * (double)ob + (tm_ + t_) * (double)(!ob);
    tau_out[i] = tm;
    o_out[i] = ob;
  }
}

/* the cache key of an assignment at p: p and the projection flag */
void dyn_assign_key(const dyn_gene *g, const double *p, double *key) {
  memcpy(key, p, sizeof(double) * DYN_NPARV);
  if (!g->sh->f32) key[5] = 0; /* z's type only matters in the float32 flow */
  key[6] = (double)use_projection(g->mode, p[1], p[2]);
}

/* time assignment at candidate parameters, or the stored one when times are not refitted;
 * reuses the stored assignment when it was computed at exactly these parameters. Returns
 * whether t is a float32 array (float32 flow, inverse assignment). */
int dyn_get_assignment(dyn_gene *g, const double *p, double *t, double *tau, int *o) {
  int n = g->sh->n;
  if (!g->refit) {
    memcpy(t, g->t, sizeof(double) * (size_t)n);
    memcpy(tau, g->tau, sizeof(double) * (size_t)n);
    memcpy(o, g->o, sizeof(int) * (size_t)n);
    return g->t32;
  }
  double key[DYN_NKEY];
  dyn_assign_key(g, p, key);
  int t32 = g->sh->f32 && key[6] == 0;
  size_t nb = sizeof(double) * (size_t)n, ni = sizeof(int) * (size_t)n;
  if (g->key_valid && memcmp(g->key, key, sizeof key) == 0) {
    memcpy(t, g->t, nb);
    memcpy(tau, g->tau, nb);
    memcpy(o, g->o, ni);
    return t32;
  }
  dyn_scratch *w = g->w;
  for (int c = 0; c < DYN_CACHE; c++) {
    if (w->cvalid[c] && memcmp(w->ckey[c], key, sizeof key) == 0) {
      memcpy(t, w->ct_[c], nb);
      memcpy(tau, w->ctau_[c], nb);
      memcpy(o, w->co_[c], ni);
      w->cstamp[c] = ++w->clock;
      return t32;
    }
  }
  dyn_assign(g, p, t, tau, o, NULL, NULL);
  int slot = 0;
  for (int c = 0; c < DYN_CACHE; c++) {
    if (!w->cvalid[c]) {
      slot = c;
      break;
    }
    if (w->cstamp[c] < w->cstamp[slot]) slot = c;
  }
  memcpy(w->ckey[slot], key, sizeof key);
  memcpy(w->ct_[slot], t, nb);
  memcpy(w->ctau_[slot], tau, nb);
  memcpy(w->co_[slot], o, ni);
  w->cvalid[slot] = 1;
  w->cstamp[slot] = ++w->clock;
  return t32;
}
