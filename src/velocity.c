/* velocity.c: helpers of moments() and simulate_velocity().
 *
 * - Exact k-nearest neighbours (Euclidean) of the rows of a small-dimensional embedding
 *   (PCA scores), each cell's own index first, memory O(n k) (no n x n matrix).
 * - MT19937 streams as Python draws them in scvelo.datasets.simulation: CPython's
 *   random.seed(int) (init_by_array) + random(), and numpy's legacy RandomState
 *   (init_genrand seeding, 53-bit doubles, the Marsaglia polar Gaussian with its cached value).
 *   The generator is the published MT19937 algorithm (Matsumoto & Nishimura 1998). */
#include "scnative.h"

/* ---------------------------------------------------------------- kNN kernel */

/* Insert (d, j) into the sorted lists (ascending by distance, then index) of length m <= k. */
static void knn_insert(double *bd, int *bi, int *m, int k, double d, int j) {
  int pos = *m;
  if (pos == k) {
    if (d > bd[k - 1] || (d == bd[k - 1] && j > bi[k - 1])) return;
    pos = k - 1;
  } else {
    (*m)++;
  }
  while (pos > 0 && (bd[pos - 1] > d || (bd[pos - 1] == d && bi[pos - 1] > j))) {
    bd[pos] = bd[pos - 1];
    bi[pos] = bi[pos - 1];
    pos--;
  }
  bd[pos] = d;
  bi[pos] = j;
}

/* Squared Euclidean distance of two rows of a row-major n x p copy, summed in column order
 * (the exact kernel and NN-descent give bitwise the same distance for the same pair). */
static inline double knn_d2(const double *a, const double *b, int p) {
  double s = 0.0;
  for (int c = 0; c < p; c++) {
    double df = a[c] - b[c];
    s += df * df;
  }
  return s;
}

/* xt: n x p row-major. Row i: k - 1 nearest other rows, self first. idx/dst: n x k
 * column-major (0-based indices). Squared distances sum((x_i - x_j)^2) then sqrt. */
static void knn_row(const double *xt, int n, int p, int k, int i, int *idx, double *dst,
                    double *bd, int *bi) {
  int m = 0;
  const double *xi = xt + (size_t)i * p;
  int j = 0;
  /* four rows at a time: independent sums (each in column order, as knn_d2) */
  for (; j + 4 <= n; j += 4) {
    const double *a0 = xt + (size_t)j * p, *a1 = a0 + p, *a2 = a1 + p, *a3 = a2 + p;
    double s4[4] = {0.0, 0.0, 0.0, 0.0};
    for (int c = 0; c < p; c++) {
      double v = xi[c], d0 = v - a0[c], d1 = v - a1[c], d2 = v - a2[c], d3 = v - a3[c];
      s4[0] += d0 * d0;
      s4[1] += d1 * d1;
      s4[2] += d2 * d2;
      s4[3] += d3 * d3;
    }
    for (int q = 0; q < 4; q++) {
      if (j + q == i) continue;
      if (m == k - 1 && s4[q] > bd[k - 2]) continue;
      knn_insert(bd, bi, &m, k - 1, s4[q], j + q);
    }
  }
  for (; j < n; j++) {
    if (j == i) continue;
    double s = knn_d2(xi, xt + (size_t)j * p, p);
    if (m == k - 1 && s > bd[k - 2]) continue;
    knn_insert(bd, bi, &m, k - 1, s, j);
  }
  idx[i] = i;
  dst[i] = 0.0;
  for (int r = 0; r < k - 1; r++) {
    idx[i + (ptrdiff_t)(r + 1) * n] = r < m ? bi[r] : -1;
    dst[i + (ptrdiff_t)(r + 1) * n] = r < m ? sqrt(bd[r]) : R_PosInf;
  }
}

/* Row-major copy of a column-major n x p matrix. */
static double *knn_row_major(const double *x, int n, int p) {
  double *xt = (double *)R_alloc((size_t)n * (p > 0 ? p : 1), sizeof(double));
  for (int c = 0; c < p; c++) {
    const double *col = x + (size_t)c * n;
    for (int i = 0; i < n; i++) xt[(size_t)i * p + c] = col[i];
  }
  return xt;
}

SEXP scnative_velocity_knn(SEXP x, SEXP k_, SEXP threads_) {
  int n = nrows(x), p = ncols(x), k = asInteger(k_);
  if (!isReal(x)) error(_("'%s' must be a double matrix"), "x");
  if (k < 2 || k > n) error(_("'%s' must be in [2, number of cells]"), "k");
  int nprot = 0;
  SEXP idx = PROTECT(allocMatrix(INTSXP, n, k)); nprot++;
  SEXP dst = PROTECT(allocMatrix(REALSXP, n, k)); nprot++;
  const double *xt = knn_row_major(REAL(x), n, p);
  int *ip = INTEGER(idx);
  double *dp = REAL(dst);
  int nth = scn_threads_for((R_xlen_t)n * n * (p > 0 ? p : 1), asInteger(threads_));
  double *bdall = (double *)R_alloc((size_t)nth * (k + 1), sizeof(double));
  int *biall = (int *)R_alloc((size_t)nth * (k + 1), sizeof(int));
  int chunk = 256;
  for (int from = 0; from < n; from += chunk) {
    int to = from + chunk < n ? from + chunk : n;
#pragma omp parallel for num_threads(nth) schedule(dynamic, 8)
    for (int i = from; i < to; i++) {
      int t = omp_get_thread_num();
      knn_row(xt, n, p, k, i, ip, dp, bdall + (size_t)t * (k + 1), biall + (size_t)t * (k + 1));
    }
    if (scn_interrupt_pending()) error(_("interrupted"));
  }
  for (R_xlen_t q = 0; q < (R_xlen_t)n * k; q++) ip[q] += 1;  /* 1-based for R */
  SEXP out = PROTECT(allocVector(VECSXP, 2)); nprot++;
  SET_VECTOR_ELT(out, 0, idx);
  SET_VECTOR_ELT(out, 1, dst);
  UNPROTECT(nprot);
  return out;
}

/* ---------------------------------------------------------------- NN-descent */

/* Approximate kNN graph by NN-descent (Dong, Moses & Li 2011: a neighbour of a neighbour is
 * likely a neighbour), written "pull" style so that the result does not depend on the
 * number of threads: in each round every cell looks at the neighbourhoods (forward and
 * reverse neighbours, a random subset of at most max_cand) of the cells of its own
 * neighbourhood, and writes only its own list of the next round (double buffer). Only pairs
 * joined through at least one entry that is new since the last round are compared. Cells
 * are processed in the order of the first column (memory locality); the start lists hold
 * the nearest cells in that order and random cells (a counter-based generator keyed by the
 * seed and the cell). The search compares fast sums of squares; at the end every list is
 * re-measured with the exact search's sums and sorted by distance, then index, so every
 * neighbour found has its exact distance. */

static inline uint64_t nnd_mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static inline uint64_t nnd_key(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return nnd_mix(nnd_mix(nnd_mix(seed ^ 0x5851F42D4C957F2DULL) ^ a) ^ (b << 1)) ^ c;
}

typedef struct {
  uint64_t key;
  int who;
  int fresh;
} nnd_rev;

static int nnd_rev_cmp(const void *a, const void *b) {
  const nnd_rev *x = (const nnd_rev *)a, *y = (const nnd_rev *)b;
  if (x->key != y->key) return x->key < y->key ? -1 : 1;
  return x->who < y->who ? -1 : (x->who > y->who);
}

/* Squared distance for the search only: four partial sums (no loop-carried dependency, so
 * about four times faster than knn_d2); it differs from knn_d2 by rounding, and the lists
 * found are re-measured with knn_d2 at the end. */
static inline double nnd_d2(const double *a, const double *b, int p) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int c = 0;
  for (; c + 4 <= p; c += 4) {
    double d0 = a[c] - b[c], d1 = a[c + 1] - b[c + 1], d2 = a[c + 2] - b[c + 2],
           d3 = a[c + 3] - b[c + 3];
    s0 += d0 * d0;
    s1 += d1 * d1;
    s2 += d2 * d2;
    s3 += d3 * d3;
  }
  for (; c < p; c++) {
    double d0 = a[c] - b[c];
    s0 += d0 * d0;
  }
  return (s0 + s1) + (s2 + s3);
}

/* An unsigned key ordered as the double v (IEEE bits, negatives flipped). */
static uint64_t nnd_order_key(double v) {
  uint64_t b;
  if (v == 0.0) v = 0.0;  /* -0 as +0 */
  memcpy(&b, &v, sizeof b);
  return (b >> 63) ? ~b : (b | 0x8000000000000000ULL);
}

/* Insert (d, j) into a full sorted list of length K with flags; returns 1 if inserted. */
static int nnd_insert(double *bd, int *bi, unsigned char *bf, int K, double d, int j) {
  if (d > bd[K - 1] || (d == bd[K - 1] && j > bi[K - 1])) return 0;
  int pos = K - 1;
  while (pos > 0 && (bd[pos - 1] > d || (bd[pos - 1] == d && bi[pos - 1] > j))) {
    bd[pos] = bd[pos - 1];
    bi[pos] = bi[pos - 1];
    bf[pos] = bf[pos - 1];
    pos--;
  }
  bd[pos] = d;
  bi[pos] = j;
  bf[pos] = 1;
  return 1;
}

/* x: n x p (column-major, R's), k: neighbours with self (2 <= k <= n), seed: a double whole
 * number, max_iter, delta: stop when fewer than delta * n * (k - 1) list entries changed in a
 * round, max_cand: the most neighbours (forward and reverse) joined per cell and round (a
 * random subset). Returns list(idx, dst,
 * rounds) as scnative_velocity_knn. */
SEXP scnative_velocity_nndescent(SEXP x, SEXP k_, SEXP seed_, SEXP max_iter_, SEXP delta_,
                                 SEXP max_cand_, SEXP threads_) {
  if (!isReal(x)) error(_("'%s' must be a double matrix"), "x");
  int n = nrows(x), p = ncols(x), k = asInteger(k_), max_iter = asInteger(max_iter_);
  int max_cand = asInteger(max_cand_);
  double seedd = asReal(seed_), delta = asReal(delta_);
  if (k < 2 || k > n) error(_("'%s' must be in [2, number of cells]"), "k");
  if (max_iter < 0) error(_("'%s' must be non-negative"), "max_iter");
  if (max_cand < 1) error(_("'%s' must be positive"), "max_cand");
  if (!R_FINITE(seedd) || seedd < 0) error(_("'%s' must be a non-negative number"), "seed");
  if (!R_FINITE(delta) || delta < 0) error(_("'%s' must be a non-negative number"), "delta");
  uint64_t seed = (uint64_t)seedd;
  int K = k - 1;
  size_t nK = (size_t)n * K;
  /* cells in the order of the first column (then index): neighbours lie close in memory,
   * and the start lists take half their entries from this order */
  int *perm = (int *)R_alloc((size_t)n, sizeof(int));
  {
    nnd_rev *ord = (nnd_rev *)R_alloc((size_t)n, sizeof(nnd_rev));
    const double *x0 = REAL(x);
    for (int i = 0; i < n; i++) {
      ord[i].key = p > 0 ? nnd_order_key(x0[i]) : 0;
      ord[i].who = i;
    }
    qsort(ord, (size_t)n, sizeof(nnd_rev), nnd_rev_cmp);
    for (int r = 0; r < n; r++) perm[r] = ord[r].who;
  }
  double *xt = (double *)R_alloc((size_t)n * (p > 0 ? p : 1), sizeof(double));
  for (int c = 0; c < p; c++) {
    const double *col = REAL(x) + (size_t)c * n;
    for (int r = 0; r < n; r++) xt[(size_t)r * p + c] = col[perm[r]];
  }
  int nth = scn_threads_for((R_xlen_t)n * K, asInteger(threads_));
  double *cd = (double *)R_alloc(nK, sizeof(double)), *nd = (double *)R_alloc(nK, sizeof(double));
  int *ci = (int *)R_alloc(nK, sizeof(int)), *ni = (int *)R_alloc(nK, sizeof(int));
  unsigned char *cf = (unsigned char *)R_alloc(nK, 1), *nf = (unsigned char *)R_alloc(nK, 1);
  int *rcnt = (int *)R_alloc((size_t)n + 1, sizeof(int));
  size_t *roff = (size_t *)R_alloc((size_t)n + 1, sizeof(size_t));
  int *rlen = (int *)R_alloc((size_t)n, sizeof(int));
  int *rwho = (int *)R_alloc(nK > 0 ? nK : 1, sizeof(int));
  unsigned char *rfresh = (unsigned char *)R_alloc(nK > 0 ? nK : 1, 1);
  int H = max_cand;
  int *hwho = (int *)R_alloc((size_t)n * H + 1, sizeof(int));
  unsigned char *hfresh = (unsigned char *)R_alloc((size_t)n * H + 1, 1);
  int *hlen = (int *)R_alloc((size_t)n, sizeof(int));
  int *markall = (int *)R_alloc((size_t)nth * n, sizeof(int));
  for (size_t q = 0; q < (size_t)nth * n; q++) markall[q] = -1;

  /* start lists (distinct, not self): the nearest positions in the sorted order for half,
   * random cells for the rest */
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int i = 0; i < n; i++) {
    double *bd = cd + (size_t)i * K;
    int *bi = ci + (size_t)i * K;
    unsigned char *bf = cf + (size_t)i * K;
    int *mark = markall + (size_t)omp_get_thread_num() * n;
    const double *xi = xt + (size_t)i * p;
    mark[i] = i;
    int m = 0;
    uint64_t ctr = 0;
    int step = 1, side = 0, tries = 0;
    while (m < K) {
      int j;
      if (m < K / 2 && tries < 2 * K) {
        j = side ? i - step : i + step;
        if (side) step++;
        side = !side;
        tries++;
        if (j < 0 || j >= n) continue;
      } else {
        j = (int)(nnd_key(seed, (uint64_t)perm[i], 0, ctr++) % (uint64_t)n);
      }
      if (mark[j] == i) continue;
      mark[j] = i;
      double d = nnd_d2(xi, xt + (size_t)j * p, p);
      int pos = m++;
      while (pos > 0 && (bd[pos - 1] > d || (bd[pos - 1] == d && bi[pos - 1] > j))) {
        bd[pos] = bd[pos - 1];
        bi[pos] = bi[pos - 1];
        pos--;
      }
      bd[pos] = d;
      bi[pos] = j;
    }
    for (int r = 0; r < K; r++) bf[r] = 1;
  }

  int rounds = 0;
  for (int it = 0; it < max_iter; it++) {
    for (size_t q = 0; q < (size_t)nth * n; q++) markall[q] = -1;
    /* reverse lists: who has j as a neighbour, with the flag of that entry */
    memset(rcnt, 0, ((size_t)n + 1) * sizeof(int));
    for (size_t q = 0; q < nK; q++) rcnt[ci[q]]++;
    roff[0] = 0;
    int maxcnt = 0;
    for (int j = 0; j < n; j++) {
      roff[j + 1] = roff[j] + (size_t)rcnt[j];
      rlen[j] = 0;
      if (rcnt[j] > maxcnt) maxcnt = rcnt[j];
    }
    for (int i = 0; i < n; i++) {
      for (int r = 0; r < K; r++) {
        int j = ci[(size_t)i * K + r];
        size_t q = roff[j] + (size_t)rlen[j]++;
        rwho[q] = i;
        rfresh[q] = cf[(size_t)i * K + r];
      }
    }
    /* the neighbourhood of each cell in this round: forward and reverse neighbours (once
     * each, new if either entry is new), a random subset of at most H of them */
    nnd_rev *tmpall = (nnd_rev *)R_alloc((size_t)nth * (K + maxcnt), sizeof(nnd_rev));
#pragma omp parallel for num_threads(nth) schedule(dynamic, 64)
    for (int j = 0; j < n; j++) {
      nnd_rev *e = tmpall + (size_t)omp_get_thread_num() * (K + maxcnt);
      int m = 0;
      for (int r = 0; r < K; r++) {
        e[m].who = ci[(size_t)j * K + r];
        e[m++].fresh = cf[(size_t)j * K + r];
      }
      for (int q = 0; q < rlen[j]; q++) {
        e[m].who = rwho[roff[j] + (size_t)q];
        e[m++].fresh = rfresh[roff[j] + (size_t)q];
      }
      for (int q = 0; q < m; q++) e[q].key = (uint64_t)e[q].who;
      qsort(e, (size_t)m, sizeof(nnd_rev), nnd_rev_cmp);
      int u = 0;
      for (int q = 0; q < m; q++) {
        if (u > 0 && e[u - 1].who == e[q].who) {
          e[u - 1].fresh |= e[q].fresh;
        } else {
          e[u++] = e[q];
        }
      }
      m = u;
      if (m > H) {
        for (int q = 0; q < m; q++) e[q].key = nnd_key(seed, (uint64_t)it + 1, (uint64_t)j, (uint64_t)e[q].who);
        qsort(e, (size_t)m, sizeof(nnd_rev), nnd_rev_cmp);
        m = H;
      }
      int *hw = hwho + (size_t)j * H;
      unsigned char *hf = hfresh + (size_t)j * H;
      for (int q = 0; q < m; q++) {
        hw[q] = e[q].who;
        hf[q] = (unsigned char)e[q].fresh;
      }
      hlen[j] = m;
    }
    long long updates = 0;
#pragma omp parallel for num_threads(nth) schedule(dynamic, 16) reduction(+:updates)
    for (int i = 0; i < n; i++) {
      const double *xi = xt + (size_t)i * p;
      const int *li = ci + (size_t)i * K;
      double *bd = nd + (size_t)i * K;
      int *bi = ni + (size_t)i * K;
      unsigned char *bf = nf + (size_t)i * K;
      int *mark = markall + (size_t)omp_get_thread_num() * n;
      memcpy(bd, cd + (size_t)i * K, (size_t)K * sizeof(double));
      memcpy(bi, li, (size_t)K * sizeof(int));
      memset(bf, 0, (size_t)K);
      mark[i] = i;
      for (int r = 0; r < K; r++) mark[li[r]] = i;
      const int *hi = hwho + (size_t)i * H;
      const unsigned char *hif = hfresh + (size_t)i * H;
      for (int a = 0; a < hlen[i]; a++) {
        int u = hi[a], fu = hif[a];
        const int *hu = hwho + (size_t)u * H;
        const unsigned char *huf = hfresh + (size_t)u * H;
        for (int b = 0; b < hlen[u]; b++) {
          int c = hu[b];
          if (!fu && !huf[b]) continue;
          if (mark[c] == i) continue;
          mark[c] = i;
          double d = nnd_d2(xi, xt + (size_t)c * p, p);
          updates += nnd_insert(bd, bi, bf, K, d, c);
        }
      }
    }
    double *td = cd; cd = nd; nd = td;
    int *ti = ci; ci = ni; ni = ti;
    unsigned char *tf = cf; cf = nf; nf = tf;
    rounds++;
    if (scn_interrupt_pending()) error(_("interrupted"));
    if ((double)updates <= delta * (double)nK) break;
  }

  SEXP idx = PROTECT(allocMatrix(INTSXP, n, k));
  SEXP dst = PROTECT(allocMatrix(REALSXP, n, k));
  int *ip = INTEGER(idx);
  double *dp = REAL(dst);
  /* exact distances (the sums of the exact search), lists re-sorted by them and the original
   * indices (ties as the exact search) */
#pragma omp parallel for num_threads(nth) schedule(static)
  for (int r0 = 0; r0 < n; r0++) {
    const double *xi = xt + (size_t)r0 * p;
    double *bd = nd + (size_t)r0 * K;
    int *bi = ni + (size_t)r0 * K;
    int m = 0, i = perm[r0];
    for (int r = 0; r < K; r++) {
      int j = ci[(size_t)r0 * K + r];
      knn_insert(bd, bi, &m, K, knn_d2(xi, xt + (size_t)j * p, p), perm[j]);
    }
    ip[i] = i + 1;
    dp[i] = 0.0;
    for (int r = 0; r < K; r++) {
      ip[i + (size_t)(r + 1) * n] = bi[r] + 1;
      dp[i + (size_t)(r + 1) * n] = sqrt(bd[r]);
    }
  }
  SEXP out = PROTECT(allocVector(VECSXP, 3));
  SET_VECTOR_ELT(out, 0, idx);
  SET_VECTOR_ELT(out, 1, dst);
  SET_VECTOR_ELT(out, 2, ScalarInteger(rounds));
  UNPROTECT(3);
  return out;
}

/* ---------------------------------------------------------------- sparse Gram */

/* G = x x' (genes x genes, dense, symmetric) of a column-compressed genes x cells x (xp, xi,
 * xx; row indices sorted within each column), given also its transpose (tp, ti, tx: the
 * cells of each gene, sorted). Row a of G is accumulated from the cells of gene a in
 * increasing order, so the sums do not depend on the number of threads. Indices were
 * checked in R (valid dgCMatrix objects). */
SEXP scnative_velocity_gram(SEXP xp_, SEXP xi_, SEXP xx_, SEXP tp_, SEXP ti_, SEXP tx_,
                            SEXP threads_) {
  int p = LENGTH(tp_) - 1;
  if (p < 0) error(_("'%s' must have at least one entry"), "tp");
  const int *xp = INTEGER(xp_), *xi = INTEGER(xi_), *tp = INTEGER(tp_), *ti = INTEGER(ti_);
  const double *xx = REAL(xx_), *tx = REAL(tx_);
  SEXP out = PROTECT(allocMatrix(REALSXP, p, p));
  double *g = REAL(out);
  int nth = scn_threads_for((R_xlen_t)LENGTH(xi_) / 64 + 1, asInteger(threads_));
#pragma omp parallel for num_threads(nth) schedule(dynamic, 4)
  for (int a = 0; a < p; a++) {
    double *row = g + (size_t)a * p;  /* column a of G, rows b >= a */
    for (int b = a; b < p; b++) row[b] = 0.0;
    for (int e = tp[a]; e < tp[a + 1]; e++) {
      int c = ti[e];
      double va = tx[e];
      /* the entries of cell c from gene a on (rows sorted: binary search for a) */
      int lo = xp[c], hi = xp[c + 1];
      while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (xi[mid] < a) lo = mid + 1; else hi = mid;
      }
      for (int q = lo; q < xp[c + 1]; q++) row[xi[q]] += va * xx[q];
    }
  }
  for (int a = 0; a < p; a++) {
    for (int b = a + 1; b < p; b++) g[a + (size_t)b * p] = g[b + (size_t)a * p];
  }
  UNPROTECT(1);
  return out;
}

/* ---------------------------------------------------------------- smoothing */

/* out = x C' (genes x cells, dense, rounded to float32 as upstream stores Ms/Mu), C' given
 * column-compressed (column i: the weights of
 * cell i's neighbours, rows sorted). Each entry is summed in float64 in the stored order of
 * C' (spec: get_connectivities, "a plain row-wise sum in stored column order"), the same for a
 * dense x and a column-compressed x (zeros add nothing), without an intermediate product.
 * x: a dense double matrix, or NULL with xp/xi/xx/nrow of a dgCMatrix. Indices were checked
 * in R (C' comes from normalise_connectivities; x is a valid dgCMatrix). */
SEXP scnative_velocity_smooth(SEXP x, SEXP xp_, SEXP xi_, SEXP xx_, SEXP nrow_, SEXP cp_,
                              SEXP ci_, SEXP cx_, SEXP threads_) {
  int g = asInteger(nrow_), n = LENGTH(cp_) - 1;
  int dense = !isNull(x);
  if (g < 0 || n < 0) error(_("'%s' must be non-negative"), "nrow");
  if (dense && (!isReal(x) || nrows(x) != g || ncols(x) != n)) error(_("'%s' must be a %d x %d double matrix"), "x", g, n);
  if (!dense && (LENGTH(xp_) != n + 1)) error(_("'%s' must have %d entries"), "xp", n + 1);
  const int *cp = INTEGER(cp_), *ci = INTEGER(ci_);
  const double *cx = REAL(cx_);
  const int *xp = dense ? NULL : INTEGER(xp_), *xi = dense ? NULL : INTEGER(xi_);
  const double *xx = dense ? REAL(x) : REAL(xx_);
  SEXP out = PROTECT(allocMatrix(REALSXP, g, n));
  double *o = REAL(out);
  int nth = scn_threads_for((R_xlen_t)LENGTH(ci_) * (g > 0 ? g : 1) / 64 + 1, asInteger(threads_));
#pragma omp parallel for num_threads(nth) schedule(dynamic, 32)
  for (int i = 0; i < n; i++) {
    double *oc = o + (size_t)i * g;
    for (int r = 0; r < g; r++) oc[r] = 0.0;
    for (int e = cp[i]; e < cp[i + 1]; e++) {
      int j = ci[e];
      double w = cx[e];
      if (dense) {
        const double *xc = xx + (size_t)j * g;
        for (int r = 0; r < g; r++) oc[r] += w * xc[r];
      } else {
        for (int q = xp[j]; q < xp[j + 1]; q++) oc[xi[q]] += w * xx[q];
      }
    }
    for (int r = 0; r < g; r++) oc[r] = (double)(float)oc[r];  /* stored as float32 */
  }
  UNPROTECT(1);
  return out;
}

/* k nearest rows of ref (n x p) for each row of query (m x p), both column-major: 1-based
 * indices and Euclidean distances, m x k each, ties by index (the velocity grid: spec
 * compute_velocity_on_grid, kNN of grid points among cells). */
SEXP scnative_velocity_knn_query(SEXP ref, SEXP query, SEXP k_, SEXP threads_) {
  if (!isReal(ref) || !isReal(query)) error(_("'%s' and '%s' must be double matrices"), "ref", "query");
  int n = nrows(ref), p = ncols(ref), m = nrows(query), k = asInteger(k_);
  if (ncols(query) != p) error(_("'%s' and '%s' must have the same columns"), "ref", "query");
  if (k < 1 || k > n) error(_("'%s' must be in [1, number of cells]"), "k");
  SEXP idx = PROTECT(allocMatrix(INTSXP, m, k));
  SEXP dst = PROTECT(allocMatrix(REALSXP, m, k));
  const double *rp = REAL(ref), *qp = REAL(query);
  int *ip = INTEGER(idx);
  double *dp = REAL(dst);
  int nth = scn_threads_for((R_xlen_t)m * n, asInteger(threads_));
  double *bdall = (double *)R_alloc((size_t)nth * k, sizeof(double));
  int *biall = (int *)R_alloc((size_t)nth * k, sizeof(int));
#pragma omp parallel for num_threads(nth) schedule(dynamic, 4)
  for (int i = 0; i < m; i++) {
    int t = omp_get_thread_num(), cnt = 0;
    double *bd = bdall + (size_t)t * k;
    int *bi = biall + (size_t)t * k;
    for (int j = 0; j < n; j++) {
      double s = 0.0;
      for (int c = 0; c < p; c++) {
        double df = qp[i + (ptrdiff_t)c * m] - rp[j + (ptrdiff_t)c * n];
        s += df * df;
      }
      knn_insert(bd, bi, &cnt, k, s, j);
    }
    for (int r = 0; r < k; r++) {
      ip[i + (ptrdiff_t)r * m] = bi[r] + 1;
      dp[i + (ptrdiff_t)r * m] = sqrt(bd[r]);
    }
  }
  SEXP out = PROTECT(allocVector(VECSXP, 2));
  SET_VECTOR_ELT(out, 0, idx);
  SET_VECTOR_ELT(out, 1, dst);
  UNPROTECT(3);
  return out;
}

/* ---------------------------------------------------------------- MT19937 */

#define MT_N 624
#define MT_M 397

typedef struct {
  uint32_t key[MT_N];
  int pos;
  int has_gauss;
  double gauss;
} mt_state;

static void mt_init_genrand(mt_state *st, uint32_t s) {
  st->key[0] = s;
  for (int i = 1; i < MT_N; i++) {
    st->key[i] = (uint32_t)(1812433253UL * (st->key[i - 1] ^ (st->key[i - 1] >> 30)) + (uint32_t)i);
  }
  st->pos = MT_N;
  st->has_gauss = 0;
  st->gauss = 0.0;
}

static void mt_init_by_array(mt_state *st, const uint32_t *init_key, int key_length) {
  mt_init_genrand(st, 19650218U);
  int i = 1, j = 0;
  int kk = MT_N > key_length ? MT_N : key_length;
  for (; kk; kk--) {
    st->key[i] = (st->key[i] ^ ((st->key[i - 1] ^ (st->key[i - 1] >> 30)) * 1664525U)) +
                 init_key[j] + (uint32_t)j;
    i++;
    j++;
    if (i >= MT_N) {
      st->key[0] = st->key[MT_N - 1];
      i = 1;
    }
    if (j >= key_length) j = 0;
  }
  for (kk = MT_N - 1; kk; kk--) {
    st->key[i] = (st->key[i] ^ ((st->key[i - 1] ^ (st->key[i - 1] >> 30)) * 1566083941U)) -
                 (uint32_t)i;
    i++;
    if (i >= MT_N) {
      st->key[0] = st->key[MT_N - 1];
      i = 1;
    }
  }
  st->key[0] = 0x80000000U;
  st->pos = MT_N;
}

static uint32_t mt_next32(mt_state *st) {
  static const uint32_t mag01[2] = {0x0U, 0x9908b0dfU};
  if (st->pos >= MT_N) {
    int kk;
    uint32_t y;
    for (kk = 0; kk < MT_N - MT_M; kk++) {
      y = (st->key[kk] & 0x80000000U) | (st->key[kk + 1] & 0x7fffffffU);
      st->key[kk] = st->key[kk + MT_M] ^ (y >> 1) ^ mag01[y & 1U];
    }
    for (; kk < MT_N - 1; kk++) {
      y = (st->key[kk] & 0x80000000U) | (st->key[kk + 1] & 0x7fffffffU);
      st->key[kk] = st->key[kk + (MT_M - MT_N)] ^ (y >> 1) ^ mag01[y & 1U];
    }
    y = (st->key[MT_N - 1] & 0x80000000U) | (st->key[0] & 0x7fffffffU);
    st->key[MT_N - 1] = st->key[MT_M - 1] ^ (y >> 1) ^ mag01[y & 1U];
    st->pos = 0;
  }
  uint32_t y = st->key[st->pos++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680U;
  y ^= (y << 15) & 0xefc60000U;
  y ^= (y >> 18);
  return y;
}

static double mt_double53(mt_state *st) {
  uint32_t a = mt_next32(st) >> 5, b = mt_next32(st) >> 6;
  return (a * 67108864.0 + b) / 9007199254740992.0;
}

static double mt_legacy_gauss(mt_state *st) {
  if (st->has_gauss) {
    double tmp = st->gauss;
    st->has_gauss = 0;
    st->gauss = 0.0;
    return tmp;
  }
  double x1, x2, r2;
  do {
    x1 = 2.0 * mt_double53(st) - 1.0;
    x2 = 2.0 * mt_double53(st) - 1.0;
    r2 = x1 * x1 + x2 * x2;
  } while (r2 >= 1.0 || r2 == 0.0);
  double f = sqrt(-2.0 * log(r2) / r2);
  st->gauss = f * x1;
  st->has_gauss = 1;
  return f * x2;
}

/* kind 0: CPython random.seed(seed); n x random().
 * kind 1: numpy np.random.seed(seed); n x standard normals (legacy gauss, contiguous stream).
 * kind 2: numpy np.random.seed(seed); n x random_sample(). seed: whole number in [0, 2^53). */
SEXP scnative_velocity_mt(SEXP seed_, SEXP n_, SEXP kind_) {
  double seed = asReal(seed_);
  double nd = asReal(n_);
  int kind = asInteger(kind_);
  if (!R_FINITE(seed) || seed < 0 || seed != floor(seed) || seed >= 9007199254740992.0) {
    error(_("'%s' must be a whole number in [0, 2^53)"), "seed");
  }
  if (!R_FINITE(nd) || nd < 0) error(_("'%s' must be a non-negative number"), "n");
  R_xlen_t n = (R_xlen_t)nd;
  mt_state *st = (mt_state *)R_alloc(1, sizeof(mt_state));
  if (kind == 0) {
    uint32_t key[2];
    uint64_t s = (uint64_t)seed;
    int len = 0;
    key[len++] = (uint32_t)(s & 0xffffffffU);
    if (s >> 32) key[len++] = (uint32_t)(s >> 32);
    mt_init_by_array(st, key, len);
  } else {
    if (seed > 4294967295.0) error(_("'%s' must be at most 2^32 - 1 for numpy's legacy seeding"), "seed");
    mt_init_genrand(st, (uint32_t)seed);
  }
  SEXP out = PROTECT(allocVector(REALSXP, n));
  double *o = REAL(out);
  for (R_xlen_t i = 0; i < n; i++) {
    o[i] = kind == 1 ? mt_legacy_gauss(st) : mt_double53(st);
  }
  UNPROTECT(1);
  return out;
}
