/* blas.c: the one wrapper around R's BLAS, used by every model (R: the internal gemm()
 * helper used in tests and bench/). Dimensions are int as BLAS needs; callers check that they
 * fit. Does nothing when the result is empty; scales C by beta when the inner dimension is 0. */
#if !defined(_WIN32) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* RTLD_DEFAULT */
#endif
#include "scnative.h"
#ifndef _WIN32
#include <dlfcn.h>
#endif

void scn_dgemm(char transA, char transB, int m, int n, int k, double alpha, const double *A,
               int lda, const double *B, int ldb, double beta, double *C, int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) C[i + (R_xlen_t)j * ldc] = beta == 0.0 ? 0.0 : beta * C[i + (R_xlen_t)j * ldc];
    return;
  }
  const char ta[2] = {transA, '\0'}, tb[2] = {transB, '\0'};
  if (lda < 1) lda = 1;
  if (ldb < 1) ldb = 1;
  if (ldc < 1) ldc = 1;
  F77_CALL(dgemm)(ta, tb, &m, &n, &k, &alpha, A, &lda, B, &ldb, &beta, C, &ldc FCONE FCONE);
}

/* R: .Call(C_scnative_dgemm, A, B, transA, transB, out) -> op(A) %*% op(B). `out` is NULL or a
 * double matrix of the result's shape that is overwritten in place (internal use: benchmarks
 * that must not time R's allocation of a fresh result each call). */
SEXP scnative_dgemm(SEXP A, SEXP B, SEXP transA, SEXP transB, SEXP out) {
  if (!isReal(A) || !isMatrix(A)) error(_("'%s' must be a double matrix"), "A");
  if (!isReal(B) || !isMatrix(B)) error(_("'%s' must be a double matrix"), "B");
  int ta = asLogical(transA), tb = asLogical(transB);
  int ra = nrows(A), ca = ncols(A), rb = nrows(B), cb = ncols(B);
  int m = ta ? ca : ra, k = ta ? ra : ca, kb = tb ? cb : rb, n = tb ? rb : cb;
  if (k != kb) error(_("non-conformable matrices: %d and %d"), k, kb);
  int nprot = 0;
  SEXP ans = out;
  if (isNull(out)) {
    ans = PROTECT(allocMatrix(REALSXP, m, n));
    nprot++;
  } else if (!isReal(out) || !isMatrix(out) || nrows(out) != m || ncols(out) != n) {
    error(_("'%s' must be a %d x %d double matrix"), "out", m, n);
  }
  scn_dgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.0, REAL(A), ra, REAL(B), rb, 0.0,
            REAL(ans), m);
  UNPROTECT(nprot);
  return ans;
}

/* sgemm: R's BLAS API has no single-precision routines, but the BLAS that R is linked to
 * often exports Fortran's sgemm_ (OpenBLAS, MKL, the reference BLAS as a shared library). It
 * is looked up once in the process's global symbols; NULL where there is none (R's internal
 * BLAS, Windows). */
typedef void (*scn_sgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                             const float *, const float *, const int *, const float *,
                             const int *, const float *, float *, const int *, size_t, size_t);
static scn_sgemm_fn scn_sgemm_ptr(void) {
  static int looked = 0;
  static scn_sgemm_fn fn = NULL;
  if (!looked) {
#ifndef _WIN32
    void *sym = dlsym(RTLD_DEFAULT, "sgemm_");
    if (sym) memcpy(&fn, &sym, sizeof fn);
#endif
    looked = 1;
  }
  return fn;
}

int scn_have_sgemm(void) { return scn_sgemm_ptr() != NULL; }

int scn_sgemm(char transA, char transB, int m, int n, int k, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc) {
  scn_sgemm_fn fn = scn_sgemm_ptr();
  if (!fn) return 0;
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  const char ta[2] = {transA, '\0'}, tb[2] = {transB, '\0'};
  fn(ta, tb, &m, &n, &k, &alpha, A, &lda, B, &ldb, &beta, C, &ldc, 1, 1);
  return 1;
}
