/* openmp.c: package-wide thread control (R: scnative_threads(), set_scnative_threads()).
 *
 * One static count, set at load from R_SCNATIVE_NUM_THREADS and capped by the core count,
 * OMP_THREAD_LIMIT and OMP_NUM_THREADS (read from the environment each time, because the OpenMP
 * runtime reads them only once). Every parallel region asks scn_threads_for(); the OpenMP
 * runtime's global thread setting is never changed (it is R's and every other package's). */
#include "scnative.h"

static int scn_nthreads = 1;

static int env_int(const char *name, int fallback) {
  const char *v = getenv(name);
  if (v == NULL || v[0] == '\0') return fallback;
  char *end;
  long n = strtol(v, &end, 10);
  /* OMP_NUM_THREADS may be a list ("4,2"): its first entry counts. */
  if (end == v || (*end != '\0' && *end != ',') || n < 1) {
    warning(_("ignoring invalid %s='%s': it must be a positive integer"), name, v);
    return fallback;
  }
  return n > INT_MAX ? INT_MAX : (int)n;
}

/* The most threads this process may use now. */
static int thread_cap(void) {
  int cap = omp_get_num_procs();
  int lim = omp_get_thread_limit();
  if (lim > 0 && lim < cap) cap = lim;
  int e = env_int("OMP_THREAD_LIMIT", cap);
  if (e < cap) cap = e;
  e = env_int("OMP_NUM_THREADS", cap);
  if (e < cap) cap = e;
  return cap < 1 ? 1 : cap;
}

static int threads_from_env(void) {
  int cap = thread_cap();
  int n = env_int("R_SCNATIVE_NUM_THREADS", cap);
  return n < cap ? n : cap;
}

void scn_threads_init(void) { scn_nthreads = threads_from_env(); }

int scn_threads_get(void) { return scn_nthreads; }

int scn_threads_for(R_xlen_t work, int requested) {
  int n = requested > 0 ? requested : scn_nthreads;
  int cap = thread_cap();
  if (n > cap) n = cap;
  if (work < n) n = (int)(work < 1 ? 1 : work);
  return n < 1 ? 1 : n;
}

static void check_interrupt_fn(void *dummy) { R_CheckUserInterrupt(); }

int scn_interrupt_pending(void) { return !R_ToplevelExec(check_interrupt_fn, NULL); }

/* .Call shims ------------------------------------------------------------------------------ */

/* .Call(C_scnative_interrupt_pending): TRUE if Ctrl-C is pending (the pending interrupt is
 * consumed). R loops that call long .Call's check it after each: R's evaluator itself looks
 * only every ~1000 evaluation steps, seconds later when each step is a long .Call. */
SEXP scnative_interrupt_pending(void) { return ScalarLogical(scn_interrupt_pending()); }

SEXP scnative_threads_info(void) {
  const char *nms[] = {"threads", "cap", "num_procs", "thread_limit", "omp_max_threads",
                       "openmp", ""};
  SEXP ans = PROTECT(mkNamed(INTSXP, nms));
  int *a = INTEGER(ans);
  a[0] = scn_nthreads;
  a[1] = thread_cap();
  a[2] = omp_get_num_procs();
  a[3] = omp_get_thread_limit();
  a[4] = omp_get_max_threads();
#ifdef _OPENMP
  a[5] = 1;
#else
  a[5] = 0;
#endif
  UNPROTECT(1);
  return ans;
}

/* n = NULL: re-read the environment. Returns the old value. */
SEXP scnative_threads_set(SEXP n) {
  int old = scn_nthreads;
  if (isNull(n)) {
    scn_nthreads = threads_from_env();
  } else {
    if (!isNumeric(n) || LENGTH(n) != 1) error(_("'%s' must be a single number"), "threads");
    int v = asInteger(n);
    if (v == NA_INTEGER || v < 1) error(_("'%s' must be a positive whole number"), "threads");
    int cap = thread_cap();
    scn_nthreads = v < cap ? v : cap;
  }
  return ScalarInteger(old);
}

/* A threaded reduction used by the tests to show results do not depend on the thread count:
 * per-column sums of a matrix in fixed order (each column one task). */
SEXP scnative_threads_colsums(SEXP x, SEXP threads) {
  if (!isReal(x) || !isMatrix(x)) error(_("'%s' must be a double matrix"), "x");
  int nr = nrows(x), nc = ncols(x);
  const double *px = REAL(x);
  SEXP ans = PROTECT(allocVector(REALSXP, nc));
  double *pa = REAL(ans);
  int nth = scn_threads_for(nc, asInteger(threads));
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int j = 0; j < nc; j++) {
    const double *c = px + (R_xlen_t)j * nr;
    double s = 0.0;
    for (int i = 0; i < nr; i++) s += c[i];
    pa[j] = s;
  }
  UNPROTECT(1);
  return ans;
}
