/* h5ad.c: process setup for read_h5ad()'s isolated reader (issue 17, "Hostile input").
 *
 * read_h5ad() reads an untrusted file in a forked child, because the HDF5 library can crash on
 * some corrupt files. This runs first in that child.
 * - A crash must end only the child, and quietly: R's handlers for SIGSEGV, SIGBUS and SIGILL
 *   would print a traceback and then delete the session's temporary directory, which the
 *   forked child shares with its parent. With the default actions the child just ends (the
 *   parent sees no result and reports the element it was reading); with a zero core-file limit
 *   it leaves no core file behind.
 * - Its standard error goes to /dev/null: the C library's messages about a corrupted heap (the
 *   child's last words before it ends) would only alarm; the parent reports what happened.
 * - Its address space may grow by at most `budget` bytes (0 = no limit; Linux, where
 *   /proc/self/statm gives the current size), so that a corrupt length inside the HDF5 library
 *   makes an allocation fail instead of exhausting the machine's memory. */
#include "scnative.h"

#ifndef _WIN32
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>
#endif

SEXP scnative_h5ad_child_init(SEXP budget) {
#ifndef _WIN32
  struct rlimit lim;
  lim.rlim_cur = 0;
  lim.rlim_max = 0;
  setrlimit(RLIMIT_CORE, &lim);
  signal(SIGSEGV, SIG_DFL);
  signal(SIGBUS, SIG_DFL);
  signal(SIGILL, SIG_DFL);
  signal(SIGFPE, SIG_DFL);
  int devnull = open("/dev/null", O_WRONLY);
  if (devnull >= 0) {
    dup2(devnull, STDERR_FILENO);
    close(devnull);
  }

  double extra = Rf_asReal(budget);
  FILE *statm = fopen("/proc/self/statm", "r");
  if (statm != NULL) {
    unsigned long pages = 0;
    int got = fscanf(statm, "%lu", &pages);
    fclose(statm);
    long page = sysconf(_SC_PAGESIZE);
    if (got == 1 && page > 0 && R_FINITE(extra) && extra > 0 &&
        getrlimit(RLIMIT_AS, &lim) == 0) {
      double want = (double)pages * (double)page + extra;
      if (want < 1.8e19 &&
          (lim.rlim_max == RLIM_INFINITY || want < (double)lim.rlim_max)) {
        lim.rlim_cur = (rlim_t)want;
        setrlimit(RLIMIT_AS, &lim);
      }
    }
  }
#endif
  return R_NilValue;
}
