/* scnative.h: the shared pieces of the C core, used by every model.
 *
 *   threads   (openmp.c): one package-wide thread count; scn_threads_for() is what every
 *                         parallel region passes to num_threads().
 *   BLAS      (blas.c):   scn_dgemm(), the one wrapper around R's dgemm.
 *   RNG       (rng.c):    a counter-based generator (Philox4x32-10): value i of stream s under
 *                         seed k is a pure function of (k, s, i), so a parallel fill gives the same
 *                         numbers whatever the thread count.
 *   interrupts(openmp.c): scn_interrupt_pending(), a non-jumping check for use between chunks.
 *
 * Shims that R calls are named scnative_<topic>_<what>() and registered in init.c;
 * kernels take plain pointers and never touch SEXP.
 */
#ifndef SCNATIVE_H
#define SCNATIVE_H

#define USE_FC_LEN_T
#include <R.h>
#include <Rinternals.h>
#include <R_ext/BLAS.h>
#include <R_ext/Lapack.h>
#include <R_ext/Rdynload.h>
#include <R_ext/Visibility.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <stddef.h>
#ifndef FCONE
#define FCONE
#endif

#ifdef _OPENMP
#include <omp.h>
#else
/* Serial fallback: the code builds and runs without OpenMP. */
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_num_procs(void) { return 1; }
static inline int omp_get_thread_limit(void) { return 1; }
#endif

#include <libintl.h>
#define _(String) dgettext("scnative", String)

/* ---- threads (openmp.c) ---- */
/* Threads to use for a region with `work` independent items: `requested` if > 0 (capped by
 * the limits), else the package-wide count; never more than `work`; at least 1. */
int scn_threads_for(R_xlen_t work, int requested);
int scn_threads_get(void);
/* TRUE if the user pressed Ctrl-C; does not jump, so callers can free and then error(). */
int scn_interrupt_pending(void);

/* ---- BLAS (blas.c) ---- */
/* C = alpha * op(A) %*% op(B) + beta * C, column-major, op = "N" or "T".
 * m x n result, k the inner dimension; lda/ldb/ldc the leading dimensions. */
void scn_dgemm(char transA, char transB, int m, int n, int k, double alpha, const double *A,
               int lda, const double *B, int ldb, double beta, double *C, int ldc);

/* ---- RNG (rng.c) ---- */
/* 4 x 32 random bits for (seed, stream, counter). */
void scn_philox(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]);
/* out[j] = the (offset + j)-th standard normal of stream `stream`, j = 0..n-1. */
void scn_rng_normals(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, double *out);
/* out[j] = the (offset + j)-th uniform on (0, 1) of stream `stream`. */
void scn_rng_uniforms(uint64_t seed, uint64_t stream, uint64_t offset, R_xlen_t n, double *out);
/* seed from an R double in [0, 2^53) (validated on the R side). */
uint64_t scn_seed_from_sexp(SEXP seed);

/* ---- numeric kernels (numeric.c) ---- */
/* k-th smallest (0-based) of a[0..n-1] by quickselect; permutes a; no NaN in a. */
double scn_select_kth(double *a, ptrdiff_t n, ptrdiff_t k);
/* numpy's quantile with the default "linear" method, q in [0, 1]; permutes a; NaN if any NaN. */
double scn_quantile_linear(double *a, ptrdiff_t n, double q);

/* ---- small helpers ---- */
#define SCN_INTERNAL_ERROR(msg) \
  error("internal error in %s (%s:%d): %s; please report it", __func__, __FILE__, __LINE__, msg)

#endif
