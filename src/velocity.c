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

/* x: n x p column-major. For rows [from, to): k - 1 nearest other rows, self first.
 * idx/dst: n x k column-major (0-based indices). Squared distances accumulated exactly as
 * sum((x_i - x_j)^2) then sqrt. */
static void knn_rows(const double *x, int n, int p, int k, int from, int to, int *idx,
                     double *dst, double *bd, int *bi) {
  for (int i = from; i < to; i++) {
    int m = 0;
    for (int j = 0; j < n; j++) {
      if (j == i) continue;
      double s = 0.0;
      for (int c = 0; c < p; c++) {
        double df = x[i + (ptrdiff_t)c * n] - x[j + (ptrdiff_t)c * n];
        s += df * df;
      }
      knn_insert(bd, bi, &m, k - 1, s, j);
    }
    idx[i] = i;
    dst[i] = 0.0;
    for (int r = 0; r < k - 1; r++) {
      idx[i + (ptrdiff_t)(r + 1) * n] = r < m ? bi[r] : -1;
      dst[i + (ptrdiff_t)(r + 1) * n] = r < m ? sqrt(bd[r]) : R_PosInf;
    }
  }
}

SEXP scnative_velocity_knn(SEXP x, SEXP k_, SEXP threads_) {
  int n = nrows(x), p = ncols(x), k = asInteger(k_);
  if (!isReal(x)) error(_("'%s' must be a double matrix"), "x");
  if (k < 1 || k > n) error(_("'%s' must be in [1, number of cells]"), "k");
  int nprot = 0;
  SEXP idx = PROTECT(allocMatrix(INTSXP, n, k)); nprot++;
  SEXP dst = PROTECT(allocMatrix(REALSXP, n, k)); nprot++;
  const double *xp = REAL(x);
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
      knn_rows(xp, n, p, k, i, i + 1, ip, dp, bdall + (size_t)t * (k + 1),
               biall + (size_t)t * (k + 1));
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
