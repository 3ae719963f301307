/* velocity_graph.c: scVelo's velocity graph (spec: tl.velocity_graph).
 *
 * For each cell i, the neighbourhood S_i = {i} + N(i) + N(N(i)) (n_recurse 2; r hops in
 * general) of the kNN index (spec: get_iterative_indices), sorted ascending, and for every
 * j in S_i the cosine of the centred displacement with the cell's centred velocity
 * (spec: Per-cell cosines):
 *
 *   c_ij = sum_g (d_g - mean(d)) v_g / (|d - mean(d)| |v|),   d = x_j - x_i,
 *
 * computed in double from float32-rounded inputs and rounded to float32 at the end (spec:
 * Precision and expected port tolerance). NaN (j = i, x_j = x_i) and exact zeros are not
 * emitted (spec: Assembly: NaN -> 0 -> eliminated).
 *
 * The R side runs the cells in chunks (progress, interrupts); each chunk is one call that
 * counts |S_i| for its cells, then fills them in parallel. The output of a chunk is the
 * chunk's columns of t(graph) in CSC form: for cell i (a column) the sorted j and c_ij, so
 * the result does not depend on the thread count.
 */
#include "scnative.h"

/* Neighbourhood of cell i after `nrec` hops over nb (k x n, 0-based, -1 = absent), sorted
 * ascending into out (capacity n); mark is an n-vector of stamps owned by the caller. */
static int vg_neighbourhood(const int *nb, int k, int i, int nrec, int *mark, int stamp,
                            int *out) {
  int m = 0;
  out[m++] = i;
  mark[i] = stamp;
  int lo = 0;
  for (int r = 0; r < nrec; r++) {
    int hi = m;
    for (int a = lo; a < hi; a++) {
      const int *row = nb + (ptrdiff_t)out[a] * k;
      for (int b = 0; b < k; b++) {
        int j = row[b];
        if (j < 0 || mark[j] == stamp) continue;
        mark[j] = stamp;
        out[m++] = j;
      }
    }
    lo = hi;
  }
  /* insertion sort is fine for the few hundred entries; keeps the kernel dependency-free */
  for (int a = 1; a < m; a++) {
    int v = out[a], b = a - 1;
    while (b >= 0 && out[b] > v) {
      out[b + 1] = out[b];
      b--;
    }
    out[b + 1] = v;
  }
  return m;
}

static inline double vg_signed_sqrt(double x) { return x < 0 ? -sqrt(-x) : sqrt(x); }

/* Cosines of cell i with every j of S (m entries). x, v: g x n float (column = cell), v
 * already transformed and centred; vnorm = |v_i|, xsum the cells' sums of x. Writes c (NaN
 * where undefined). With d = x_j - x_i: sum d = xsum_j - xsum_i, sum d v = x_j.v - x_i.v
 * (x_i.v and sum v once per cell; the centred velocity's sum is 0 only up to rounding, so it
 * is kept), so one pass per pair accumulates |d|^2 (directly, no cancellation) and x_j.v.
 * The signed-sqrt variant transforms d element-wise and keeps the four direct sums.
 * Compiled for three instruction sets below; the sums' order (SIMD lanes) differs between
 * them by rounding in the last bits of a double, far below the float32 the result is
 * rounded to. */
static inline __attribute__((always_inline)) void
vg_cosines_body(const float *x, const float *v, const double *xsum, int g, int i, const int *S,
                int m, int sqrt_dx, double vnorm, double *c) {
  const float *xi = x + (ptrdiff_t)i * g, *vi = v + (ptrdiff_t)i * g;
  if (sqrt_dx) {
    for (int a = 0; a < m; a++) {
      const float *xj = x + (ptrdiff_t)S[a] * g;
      double sd = 0.0, sdd = 0.0, sdv = 0.0, sv = 0.0;
      for (int q = 0; q < g; q++) {
        double d = vg_signed_sqrt((double)xj[q] - (double)xi[q]);
        sd += d;
        sdd += d * d;
        sdv += d * vi[q];
        sv += vi[q];
      }
      double mean = sd / g, den2 = sdd - mean * sd;
      double den = den2 > 0 ? sqrt(den2) * vnorm : 0.0;
      c[a] = den > 0 ? (sdv - mean * sv) / den : NAN;
    }
    return;
  }
  /* per cell: sum v, x_i . v; per pair two sums: |x_j - x_i|^2 and x_j . v (sum d from the
   * column sums) */
  double sv = 0.0, xiv = 0.0;
  for (int q = 0; q < g; q++) {
    sv += vi[q];
    xiv += (double)xi[q] * vi[q];
  }
  for (int a = 0; a < m; a++) {
    const float *xj = x + (ptrdiff_t)S[a] * g;
    double sdd = 0.0, sjv = 0.0;
#pragma omp simd reduction(+ : sdd, sjv)
    for (int q = 0; q < g; q++) {
      double d = (double)xj[q] - (double)xi[q];
      sdd += d * d;
      sjv += (double)xj[q] * vi[q];
    }
    double sd = xsum[S[a]] - xsum[i];
    double mean = sd / g;
    double den2 = sdd - mean * sd;
    double den = den2 > 0 ? sqrt(den2) * vnorm : 0.0;
    c[a] = den > 0 ? ((sjv - xiv) - mean * sv) / den : NAN;
  }
}

#define VG_COS_ARGS                                                                          \
  const float *x, const float *v, const double *xsum, int g, int i, const int *S, int m,       \
      int sqrt_dx, double vnorm, double *c
static void vg_cosines_plain(VG_COS_ARGS) {
  vg_cosines_body(x, v, xsum, g, i, S, m, sqrt_dx, vnorm, c);
}
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define VG_HAVE_X86 1
__attribute__((target("avx2,fma"))) static void vg_cosines_avx2(VG_COS_ARGS) {
  vg_cosines_body(x, v, xsum, g, i, S, m, sqrt_dx, vnorm, c);
}
__attribute__((target("avx512f,avx2,fma"))) static void vg_cosines_avx512(VG_COS_ARGS) {
  vg_cosines_body(x, v, xsum, g, i, S, m, sqrt_dx, vnorm, c);
}
#endif
typedef void (*vg_cosines_fn)(VG_COS_ARGS);

static vg_cosines_fn vg_cosines_select(void) {
#ifdef VG_HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return vg_cosines_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return vg_cosines_avx2;
#endif
  return vg_cosines_plain;
}

/* scnative_velocity_graph_prep(Ms, V, genes, sqrt_v): the float32 inputs of spec "Data" and
 * "Velocity transform", once per graph. Ms, V: G x n double matrices; genes: the used rows
 * (0-based). Returns list(x, v, vnorm, xsum): x = f32(Ms[genes, ]), v = the velocity rounded to
 * float32, signed-square-rooted when sqrt_v (float32 sqrt), centred per cell (mean rounded to
 * float32, difference rounded to float32), both g x n floats in raw vectors (column = cell);
 * vnorm = |v_i| and xsum = sum of x_i, in double. */
SEXP scnative_velocity_graph_prep(SEXP Ms_, SEXP V_, SEXP genes_, SEXP sqrt_) {
  if (!isReal(Ms_) || !isReal(V_) || !isInteger(genes_))
    error(_("velocity_graph: bad argument types"));
  int G = nrows(Ms_), n = ncols(Ms_), g = LENGTH(genes_), sqrt_v = asLogical(sqrt_);
  if (nrows(V_) != G || ncols(V_) != n || g < 1) error(_("velocity_graph: inconsistent dimensions"));
  const int *gi = INTEGER(genes_);
  for (int q = 0; q < g; q++)
    if (gi[q] < 0 || gi[q] >= G) error(_("velocity_graph: gene index out of range"));
  R_xlen_t gn = (R_xlen_t)g * n;
  SEXP x_ = PROTECT(allocVector(RAWSXP, gn * (R_xlen_t)sizeof(float)));
  SEXP v_ = PROTECT(allocVector(RAWSXP, gn * (R_xlen_t)sizeof(float)));
  SEXP vn_ = PROTECT(allocVector(REALSXP, n));
  SEXP xs_ = PROTECT(allocVector(REALSXP, n));
  double *xsum = REAL(xs_);
  float *x = (float *)RAW(x_), *v = (float *)RAW(v_);
  double *vnorm = REAL(vn_);
  const double *Md = REAL(Ms_), *Vd = REAL(V_);
  for (int i = 0; i < n; i++) {
    const double *mc = Md + (ptrdiff_t)i * G, *vc = Vd + (ptrdiff_t)i * G;
    float *xo = x + (ptrdiff_t)i * g, *vo = v + (ptrdiff_t)i * g;
    double s = 0.0, sx = 0.0;
    for (int q = 0; q < g; q++) {
      xo[q] = (float)mc[gi[q]];
      sx += xo[q];
      float f = (float)vc[gi[q]];
      if (sqrt_v) f = f < 0 ? -sqrtf(-f) : sqrtf(f);
      vo[q] = f;
      s += f;
    }
    float mean = (float)(s / g);
    double ss = 0.0;
    for (int q = 0; q < g; q++) {
      vo[q] = (float)((double)vo[q] - (double)mean);
      ss += (double)vo[q] * vo[q];
    }
    vnorm[i] = sqrt(ss);
    xsum[i] = sx;
  }
  SEXP out = PROTECT(allocVector(VECSXP, 4));
  SET_VECTOR_ELT(out, 0, x_);
  SET_VECTOR_ELT(out, 1, v_);
  SET_VECTOR_ELT(out, 2, vn_);
  SET_VECTOR_ELT(out, 3, xs_);
  UNPROTECT(5);
  return out;
}

/* scnative_velocity_graph(x, v, vnorm, xsum, g, nb, nrec, sqrt_dx, from, to, threads)
 * x, v, vnorm, xsum from scnative_velocity_graph_prep (g genes); nb: k x n integer (0-based, -1
 * absent); cells [from, to) (0-based). Returns list(p (to - from + 1), j (0-based), c). */
SEXP scnative_velocity_graph(SEXP x_, SEXP v_, SEXP vnorm_, SEXP xsum_, SEXP g_, SEXP nb_, SEXP nrec_,
                             SEXP sqrt_, SEXP from_, SEXP to_, SEXP threads_) {
  if (TYPEOF(x_) != RAWSXP || TYPEOF(v_) != RAWSXP || !isReal(vnorm_) || !isReal(xsum_) ||
      !isInteger(nb_))
    error(_("velocity_graph: bad argument types"));
  int g = asInteger(g_), n = ncols(nb_), k = nrows(nb_);
  int nrec = asInteger(nrec_), sqrt_dx = asLogical(sqrt_), from = asInteger(from_),
      to = asInteger(to_);
  if (g < 1 || k < 1 || LENGTH(vnorm_) != n || LENGTH(xsum_) != n ||
      XLENGTH(x_) != (R_xlen_t)g * n * (R_xlen_t)sizeof(float) || XLENGTH(v_) != XLENGTH(x_))
    error(_("velocity_graph: inconsistent dimensions"));
  if (nrec < 1 || nrec > 8 || from < 0 || to > n || from >= to)
    error(_("velocity_graph: bad cell range or recursion depth"));
  const int *nb = INTEGER(nb_);
  for (R_xlen_t a = 0; a < XLENGTH(nb_); a++)
    if (nb[a] < -1 || nb[a] >= n) error(_("velocity_graph: neighbour index out of range"));
  int nc = to - from;
  int nth = scn_threads_for(nc, asInteger(threads_));
  const float *x = (const float *)RAW(x_), *v = (const float *)RAW(v_);
  const double *vnorm = REAL(vnorm_), *xsum = REAL(xsum_);

  /* pass 1: neighbourhood sizes */
  int *cnt = (int *)R_alloc(nc, sizeof(int));
  int *marks = (int *)calloc((size_t)nth * n, sizeof(int));
  int *bufs = (int *)malloc((size_t)nth * n * sizeof(int));
  if (!marks || !bufs) {
    free(marks);
    free(bufs);
    error(_("velocity_graph: out of memory"));
  }
#pragma omp parallel for num_threads(nth) schedule(dynamic, 16)
  for (int a = 0; a < nc; a++) {
    int t = omp_get_thread_num();
    int i = from + a;
    cnt[a] = vnorm[i] > 0 ? vg_neighbourhood(nb, k, i, nrec, marks + (ptrdiff_t)t * n, a + 1,
                                             bufs + (ptrdiff_t)t * n)
                          : 0;
  }
  R_xlen_t total = 0;
  SEXP p_ = PROTECT(allocVector(INTSXP, nc + 1));
  int *p = INTEGER(p_);
  /* offsets in a double-width running sum; the final CSC must fit R's int pointers */
  R_xlen_t *off = (R_xlen_t *)R_alloc(nc + 1, sizeof(R_xlen_t));
  off[0] = 0;
  for (int a = 0; a < nc; a++) off[a + 1] = off[a] + cnt[a];
  total = off[nc];
  int *jj = (int *)malloc((size_t)(total > 0 ? total : 1) * sizeof(int));
  double *cc = (double *)malloc((size_t)(total > 0 ? total : 1) * sizeof(double));
  if (!jj || !cc) {
    free(marks);
    free(bufs);
    free(jj);
    free(cc);
    UNPROTECT(1);
    error(_("velocity_graph: out of memory (%.0f pairs)"), (double)total);
  }
  memset(marks, 0, (size_t)nth * n * sizeof(int));
  /* pass 2: cosines, then drop NaN and zeros in place (per cell) */
  int *kept = (int *)R_alloc(nc, sizeof(int));
  vg_cosines_fn cos_fn = vg_cosines_select();
#pragma omp parallel for num_threads(nth) schedule(dynamic, 16)
  for (int a = 0; a < nc; a++) {
    int t = omp_get_thread_num();
    int i = from + a;
    kept[a] = 0;
    if (cnt[a] == 0) continue;
    int *S = jj + off[a];
    double *c = cc + off[a];
    int m = vg_neighbourhood(nb, k, i, nrec, marks + (ptrdiff_t)t * n, a + 1, S);
    cos_fn(x, v, xsum, g, i, S, m, sqrt_dx, vnorm[i], c);
    int w = 0;
    for (int b = 0; b < m; b++) {
      double cf = (double)(float)c[b];
      if (ISNAN(cf) || cf == 0.0) continue;
      S[w] = S[b];
      c[w] = cf;
      w++;
    }
    kept[a] = w;
  }
  free(marks);
  free(bufs);
  R_xlen_t nk = 0;
  for (int a = 0; a < nc; a++) nk += kept[a];
  if (nk > INT_MAX) {
    free(jj);
    free(cc);
    UNPROTECT(1);
    error(_("velocity_graph: more than 2^31 - 1 pairs in one chunk"));
  }
  SEXP j_ = PROTECT(allocVector(INTSXP, nk));
  SEXP c_ = PROTECT(allocVector(REALSXP, nk));
  int *jo = INTEGER(j_);
  double *co = REAL(c_);
  R_xlen_t w = 0;
  p[0] = 0;
  for (int a = 0; a < nc; a++) {
    memcpy(jo + w, jj + off[a], (size_t)kept[a] * sizeof(int));
    memcpy(co + w, cc + off[a], (size_t)kept[a] * sizeof(double));
    w += kept[a];
    p[a + 1] = (int)w;
  }
  free(jj);
  free(cc);
  SEXP out = PROTECT(allocVector(VECSXP, 3));
  SET_VECTOR_ELT(out, 0, p_);
  SET_VECTOR_ELT(out, 1, j_);
  SET_VECTOR_ELT(out, 2, c_);
  UNPROTECT(4);
  return out;
}
