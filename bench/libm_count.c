/* bench/libm_count.c: for bench/dynamics_floor.R. Interposes exp() and log() (the process is
 * started with LD_PRELOAD pointing here, so these stand before libm's), forwards every call to
 * libm, and while recording counts the calls and keeps their arguments, so that the number of
 * distinct arguments can be reported. R reads the counts with .C() after dyn.load() of this
 * same file. scn_libm_speed() times libm's own exp() and log() in a loop of independent calls.
 *   R CMD SHLIB -o libm_count.so libm_count.c   (with PKG_LIBS = -ldl) */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double (*real_exp)(double), (*real_log)(double);
static int recording;
static uint64_t *arg_e, *arg_l;
static size_t cap, n_e, n_l;

__attribute__((constructor)) static void find_libm(void) {
  real_exp = (double (*)(double))dlsym(RTLD_NEXT, "exp");
  real_log = (double (*)(double))dlsym(RTLD_NEXT, "log");
}

static void keep(uint64_t *a, size_t *n, double x) {
  if (*n < cap) memcpy(a + *n, &x, sizeof x);
  (*n)++;
}

double exp(double x) {
  if (recording) keep(arg_e, &n_e, x);
  return real_exp(x);
}
double log(double x) {
  if (recording) keep(arg_l, &n_l, x);
  return real_log(x);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}
static double distinct(uint64_t *a, size_t n) {
  if (n > cap) n = cap;
  if (n == 0) return 0;
  qsort(a, n, sizeof *a, cmp_u64);
  size_t u = 1;
  for (size_t i = 1; i < n; i++) u += a[i] != a[i - 1];
  return (double)u;
}

/* start recording, keeping up to *capacity arguments of each function; *ok = 0 on failure */
void scn_libm_start(double *capacity, int *ok) {
  free(arg_e);
  free(arg_l);
  cap = (size_t)*capacity;
  arg_e = malloc(sizeof(uint64_t) * cap);
  arg_l = malloc(sizeof(uint64_t) * cap);
  n_e = n_l = 0;
  *ok = arg_e && arg_l && real_exp && real_log;
  recording = *ok;
}

/* stop; out = calls of exp, distinct exp arguments, calls of log, distinct log arguments,
 * and 1 if every argument was kept (else the distinct counts cover the first `capacity`) */
void scn_libm_stop(double *out) {
  recording = 0;
  out[0] = (double)n_e;
  out[1] = distinct(arg_e, n_e);
  out[2] = (double)n_l;
  out[3] = distinct(arg_l, n_l);
  out[4] = n_e <= cap && n_l <= cap;
  free(arg_e);
  free(arg_l);
  arg_e = arg_l = NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ns per call of libm's exp() on [-5, 0] and log() on (0, 1], independent calls; the fastest
 * of 5 timings (the machine's noise only ever adds time) */
void scn_libm_speed(double *ns) {
  enum { N = 4096, R = 1000 };
  static double x[N], y[N];
  volatile double sink = 0;
  double acc = 0;
  double (*fe)(double) = real_exp ? real_exp : exp, (*fl)(double) = real_log ? real_log : log;
  for (int i = 0; i < N; i++) {
    x[i] = -5.0 * (i + 0.5) / N;
    y[i] = (i + 0.5) / N;
  }
  ns[0] = ns[1] = INFINITY;
  for (int k = 0; k < 5; k++) {
    double t0 = now();
    for (int r = 0; r < R; r++)
      for (int i = 0; i < N; i++) acc += fe(x[i] + r * 1e-9);
    double te = (now() - t0) / ((double)R * N) * 1e9;
    t0 = now();
    for (int r = 0; r < R; r++)
      for (int i = 0; i < N; i++) acc += fl(y[i] + r * 1e-9);
    double tl = (now() - t0) / ((double)R * N) * 1e9;
    if (te < ns[0]) ns[0] = te;
    if (tl < ns[1]) ns[1] = tl;
  }
  sink = acc;
  (void)sink;
}
