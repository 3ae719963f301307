/* terminal_states.c: the sparse eigen solver behind terminal_states() and
 * velocity_pseudotime() (R: the internal sparse_eigs()).
 *
 * scVelo calls ARPACK (scipy's eigs with which = "LR" on a transition matrix transposed, and
 * eigsh with which = "LM" on a symmetric diffusion operator), both for 10 eigenpairs with 21
 * Krylov vectors. This is a Krylov-Schur solver (Stewart, SIAM J. Matrix Anal. Appl. 23, 2001)
 * in double precision with the same sizes: Arnoldi expansion with classical Gram-Schmidt
 * applied twice (full re-orthogonalisation), a real Schur form of the projected matrix
 * (LAPACK dgees; dsyev in the symmetric case), the wanted Ritz values moved to the front
 * (dtrexc), a truncation to the leading Schur vectors, and a restart. Given the same start
 * vector (numpy's MT19937 seed 0 rand(n), made on the R side) every run is identical and
 * independent of the thread count: the only parallel part is the matrix-vector product,
 * one output entry per iteration, and only for graphs with millions of stored entries (the R
 * side's `grain`: one parallel region per product costs more than it saves below that).
 *
 * The operator is y = M' x for a dgCMatrix M (column j of M dotted with x), so eigenvectors
 * of M' (the left eigenvectors of a transition matrix M) need no transposed copy, and a
 * symmetric M is used as is. */
#include "scnative.h"

typedef struct {
  int n;
  const int *p, *i;
  const double *x;
  int nth;
} csc_op;

/* y = M' x, one column of M per output entry. */
static void op_apply(const csc_op *A, const double *x, double *y) {
  const int n = A->n;
  const int *Ap = A->p, *Ai = A->i;
  const double *Ax = A->x;
#pragma omp parallel for num_threads(A->nth) schedule(static)
  for (int j = 0; j < n; j++) {
    double s = 0.0;
    for (int k = Ap[j]; k < Ap[j + 1]; k++) s += Ax[k] * x[Ai[k]];
    y[j] = s;
  }
}

static double nrm2(int n, const double *x) {
  int one = 1;
  return F77_CALL(dnrm2)(&n, x, &one);
}

/* w <- w - V h with h = V' w (ncol columns of V), twice; h accumulates both passes.
 * Returns ||w|| after the projection. */
static double orthogonalise(int n, int ncol, const double *V, double *w, double *h, double *c) {
  const int one = 1;
  const double d1 = 1.0, d0 = 0.0, dm1 = -1.0;
  for (int r = 0; r < ncol; r++) h[r] = 0.0;
  for (int pass = 0; pass < 2; pass++) {
    F77_CALL(dgemv)("T", &n, &ncol, &d1, V, &n, w, &one, &d0, c, &one FCONE);
    F77_CALL(dgemv)("N", &n, &ncol, &dm1, V, &n, c, &one, &d1, w, &one FCONE);
    for (int r = 0; r < ncol; r++) h[r] += c[r];
  }
  return nrm2(n, w);
}

/* A deterministic fill for the rare restart after an invariant subspace: a fixed
 * xorshift stream (its values only need to be generic). */
static void fill_generic(int n, unsigned int *state, double *w) {
  for (int r = 0; r < n; r++) {
    unsigned int s = *state;
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    *state = s;
    w[r] = (double)s / 4294967296.0 - 0.5;
  }
}

#define WHICH_LR 0
#define WHICH_LM 1

static double ks_crit(int which, double re, double im) {
  return which == WHICH_LR ? re : hypot(re, im);
}

/* Eigenvalue(s) of the diagonal block of a real Schur form T (ld m) starting at i; returns the
 * block size (1 or 2). A standardised 2 x 2 block [a b; c a] has eigenvalues a +- sqrt(-bc) i. */
static int schur_block(const double *T, int m, int i, double *re, double *im) {
  if (i + 1 < m && T[(i + 1) + (size_t)i * m] != 0.0) {
    *re = 0.5 * (T[i + (size_t)i * m] + T[(i + 1) + (size_t)(i + 1) * m]);
    *im = sqrt(fabs(T[i + (size_t)(i + 1) * m])) * sqrt(fabs(T[(i + 1) + (size_t)i * m]));
    return 2;
  }
  *re = T[i + (size_t)i * m];
  *im = 0.0;
  return 1;
}

/* Sort the Schur form T = Q' H Q so that the wanted eigenvalues come first (largest criterion
 * first; ties: larger imaginary part first). dtrexc moves one block at a time; if a swap is
 * refused (info 1, too ill-conditioned) that block stays where it ended up. */
static void schur_sort(int which, int m, double *T, double *Q, double *work) {
  int pos = 0;
  while (pos < m) {
    int best = -1;
    double bc = 0.0, bim = 0.0;
    for (int i = pos; i < m;) {
      double re, im;
      int bs = schur_block(T, m, i, &re, &im);
      double c = ks_crit(which, re, im);
      if (best < 0 || c > bc || (c == bc && im > bim)) {
        best = i;
        bc = c;
        bim = im;
      }
      i += bs;
    }
    if (best != pos) {
      int ifst = best + 1, ilst = pos + 1, info = 0;
      F77_CALL(dtrexc)("V", &m, T, &m, Q, &m, &ifst, &ilst, work, &info FCONE);
    }
    double re, im;
    pos += schur_block(T, m, pos, &re, &im);
  }
}

/* Krylov-Schur for the nev eigenvalues of M' with the largest real part (which = LR) or
 * modulus (LM). sym: M is symmetric (the projected matrix is symmetrised, dsyev). v0: start
 * vector (n, non-zero). tol: a Ritz pair (theta, x) with ||x|| = 1 is converged when
 * ||M'x - theta x|| <= tol * max(|theta|, eps^(2/3)). maxit: restarts.
 * Work: V n x (m+1), H (m+1) x m, T, Q, Y m x m, small m-vectors, lwork >= 4 m + 64.
 * Outputs: vre, vim (nev), vecs n x nev (real parts of unit-norm eigenvectors, largest
 * entry of the complex vector real positive), *iters. Returns the number of converged leading
 * pairs (< nev means not converged within maxit). */
static int krylov_schur(const csc_op *A, int nev, int m, int which, int sym, const double *v0,
                        double tol, int maxit, double *vre, double *vim, double *vecs,
                        int *iters, double *V, double *H, double *T, double *Q, double *Y,
                        double *hcol, double *ctmp, double *wr, double *wi, double *res,
                        double *work, int lwork, int *bwork, double *Xtmp) {
  const int n = A->n, ldh = m + 1;
  const double eps23 = pow(DOUBLE_EPS, 2.0 / 3.0);
  unsigned int gen_state = 2463534242u;
  double beta = 0.0, anorm = 0.0;
  int k = 0, nconv = 0, it = 0;

  double s = nrm2(n, v0);
  for (int r = 0; r < n; r++) V[r] = v0[r] / s;
  memset(H, 0, sizeof(double) * (size_t)ldh * m);

  for (it = 0; it < maxit; it++) {
    /* expansion to m basis vectors */
    for (int j = k; j < m; j++) {
      double *w = V + (size_t)(j + 1) * n;
      op_apply(A, V + (size_t)j * n, w);
      double wn = nrm2(n, w);
      if (wn > anorm) anorm = wn;
      double b = orthogonalise(n, j + 1, V, w, hcol, ctmp);
      for (int r = 0; r <= j; r++) H[r + (size_t)j * ldh] = hcol[r];
      if (b <= 1e-12 * (anorm > 0 ? anorm : 1.0)) {
        /* invariant subspace: continue with a generic direction orthogonal to V */
        double bb = 0.0;
        for (int tries = 0; tries < 5; tries++) {
          fill_generic(n, &gen_state, w);
          double wn0 = nrm2(n, w);
          bb = orthogonalise(n, j + 1, V, w, ctmp + m + 1, ctmp);
          if (bb > 1e-8 * wn0) break;
        }
        for (int r = 0; r < n; r++) w[r] /= bb;
        H[(j + 1) + (size_t)j * ldh] = 0.0;
      } else {
        for (int r = 0; r < n; r++) w[r] /= b;
        H[(j + 1) + (size_t)j * ldh] = b;
      }
    }
    beta = H[m + (size_t)(m - 1) * ldh];

    /* Schur form of the projected m x m matrix */
    for (int c = 0; c < m; c++)
      for (int r = 0; r < m; r++) T[r + (size_t)c * m] = H[r + (size_t)c * ldh];
    int info = 0;
    if (sym) {
      for (int c = 0; c < m; c++)
        for (int r = 0; r < c; r++) {
          double a = 0.5 * (T[r + (size_t)c * m] + T[c + (size_t)r * m]);
          T[r + (size_t)c * m] = a;
        }
      memcpy(Q, T, sizeof(double) * (size_t)m * m);
      F77_CALL(dsyev)("V", "U", &m, Q, &m, wr, work, &lwork, &info FCONE FCONE);
      if (info != 0) return -1;
      /* order: largest criterion first (dsyev: ascending) -- selection sort on (wr, Q) */
      for (int a = 0; a < m; a++) {
        int best = a;
        for (int b2 = a + 1; b2 < m; b2++) {
          if (ks_crit(which, wr[b2], 0.0) > ks_crit(which, wr[best], 0.0)) best = b2;
        }
        if (best != a) {
          double t = wr[a];
          wr[a] = wr[best];
          wr[best] = t;
          for (int r = 0; r < m; r++) {
            double q = Q[r + (size_t)a * m];
            Q[r + (size_t)a * m] = Q[r + (size_t)best * m];
            Q[r + (size_t)best * m] = q;
          }
        }
      }
      memset(T, 0, sizeof(double) * (size_t)m * m);
      for (int a = 0; a < m; a++) {
        T[a + (size_t)a * m] = wr[a];
        wi[a] = 0.0;
      }
      memset(Y, 0, sizeof(double) * (size_t)m * m);
      for (int a = 0; a < m; a++) Y[a + (size_t)a * m] = 1.0;
    } else {
      int sdim = 0;
      F77_CALL(dgees)("V", "N", NULL, &m, T, &m, &sdim, wr, wi, Q, &m, work, &lwork, bwork,
                      &info FCONE FCONE);
      if (info != 0) return -1;
      schur_sort(which, m, T, Q, work);
      for (int i = 0; i < m;) {
        int bs = schur_block(T, m, i, wr + i, wi + i);
        if (bs == 2) {
          wr[i + 1] = wr[i];
          wi[i + 1] = -wi[i];
        }
        i += bs;
      }
      int mm = m, mout = 0;
      F77_CALL(dtrevc)("R", "A", NULL, &m, T, &m, NULL, &m, Y, &m, &mm, &mout, work, &info
                       FCONE FCONE);
      if (info != 0) return -1;
    }

    /* residuals of the leading Ritz pairs: |beta| |e_m' Q y| / ||y|| */
    for (int i = 0; i < m;) {
      int bs = (wi[i] != 0.0 && i + 1 < m) ? 2 : 1;
      double pr = 0.0, pi = 0.0, yn = 0.0;
      for (int r = 0; r < m; r++) {
        pr += Q[(m - 1) + (size_t)r * m] * Y[r + (size_t)i * m];
        yn += Y[r + (size_t)i * m] * Y[r + (size_t)i * m];
        if (bs == 2) {
          pi += Q[(m - 1) + (size_t)r * m] * Y[r + (size_t)(i + 1) * m];
          yn += Y[r + (size_t)(i + 1) * m] * Y[r + (size_t)(i + 1) * m];
        }
      }
      double rr = fabs(beta) * sqrt(pr * pr + pi * pi) / sqrt(yn);
      res[i] = rr;
      if (bs == 2) res[i + 1] = rr;
      i += bs;
    }
    nconv = 0;
    while (nconv < nev) {
      double th = hypot(wr[nconv], wi[nconv]);
      if (res[nconv] > tol * (th > eps23 ? th : eps23)) break;
      nconv++;
    }
    if (nconv >= nev) break;
    if (it + 1 >= maxit) break;
    R_CheckUserInterrupt(); /* scratch is R_alloc'ed: a jump leaks nothing */

    /* restart: keep kk leading Schur vectors (not splitting a 2 x 2 block) */
    int kk = nev + (m - nev) / 2;
    if (kk > m - 2) kk = m - 2;
    if (kk < 1) kk = 1;
    if (!sym && T[kk + (size_t)(kk - 1) * m] != 0.0) kk = (kk + 1 <= m - 1) ? kk + 1 : kk - 1;
    const double d1 = 1.0, d0 = 0.0;
    F77_CALL(dgemm)("N", "N", &n, &kk, &m, &d1, V, &n, Q, &m, &d0, Xtmp, &n FCONE FCONE);
    memcpy(V, Xtmp, sizeof(double) * (size_t)n * kk);
    memcpy(V + (size_t)kk * n, V + (size_t)m * n, sizeof(double) * (size_t)n);
    memset(H, 0, sizeof(double) * (size_t)ldh * m);
    for (int c = 0; c < kk; c++) {
      for (int r = 0; r < kk; r++) H[r + (size_t)c * ldh] = T[r + (size_t)c * m];
      H[kk + (size_t)c * ldh] = beta * Q[(m - 1) + (size_t)c * m];
    }
    k = kk;
  }
  *iters = it + 1;

  /* eigenvectors of the nev leading Ritz values: x = V_m Q y */
  const double d1 = 1.0, d0 = 0.0;
  int nv = nev + 1 <= m ? nev + 1 : m; /* a complex pair may straddle position nev */
  F77_CALL(dgemm)("N", "N", &m, &nv, &m, &d1, Q, &m, Y, &m, &d0, T, &m FCONE FCONE);
  F77_CALL(dgemm)("N", "N", &n, &nv, &m, &d1, V, &n, T, &m, &d0, Xtmp, &n FCONE FCONE);
  for (int i = 0; i < nev;) {
    vre[i] = wr[i];
    vim[i] = wi[i];
    int pair = wi[i] != 0.0 && i + 1 < nv;
    const double *xr = Xtmp + (size_t)i * n;
    const double *xi = pair ? Xtmp + (size_t)(i + 1) * n : NULL;
    /* phase: the entry of largest modulus becomes real positive; unit norm */
    double nn = 0.0, big = -1.0, cr = 1.0, ci = 0.0;
    for (int r = 0; r < n; r++) {
      double a = xr[r], b = xi ? xi[r] : 0.0, mod = a * a + b * b;
      nn += mod;
      if (mod > big) {
        big = mod;
        cr = a;
        ci = b;
      }
    }
    double cm = hypot(cr, ci), sc = 1.0 / sqrt(nn);
    double ur = cm > 0 ? cr / cm : 1.0, ui = cm > 0 ? -ci / cm : 0.0; /* conj(c)/|c| */
    double *out = vecs + (size_t)i * n;
    for (int r = 0; r < n; r++) {
      double a = xr[r], b = xi ? xi[r] : 0.0;
      out[r] = (a * ur - b * ui) * sc;
    }
    if (pair && i + 1 < nev) {
      vre[i + 1] = wr[i + 1];
      vim[i + 1] = wi[i + 1];
      memcpy(vecs + (size_t)(i + 1) * n, out, sizeof(double) * (size_t)n);
      i += 2;
    } else {
      i += 1;
    }
  }
  return nconv;
}

/* R: .Call(C_scnative_eigs, p, i, x, v0, nev, ncv, which, sym, tol, maxit, threads, grain)
 * for a validated square dgCMatrix M (slots p, i, x; n = length(v0)); grain: stored entries
 * per thread below which the product stays serial (a parallel region per product costs more
 * than it saves on small graphs, far more on a busy machine) ->
 * list(values_re, values_im, vectors (n x nev), nconv, iterations). */
SEXP scnative_eigs(SEXP p_, SEXP i_, SEXP x_, SEXP v0_, SEXP nev_, SEXP ncv_, SEXP which_,
                   SEXP sym_, SEXP tol_, SEXP maxit_, SEXP threads_, SEXP grain_) {
  if (!isInteger(p_) || !isInteger(i_) || !isReal(x_) || !isReal(v0_)) {
    error(_("'%s' must be the integer/double slots of a dgCMatrix and a double vector"), "M");
  }
  const int n = LENGTH(v0_);
  const int nev = asInteger(nev_), m = asInteger(ncv_), which = asInteger(which_);
  const int sym = asLogical(sym_), maxit = asInteger(maxit_), nth_req = asInteger(threads_);
  const double tol = asReal(tol_), grain = asReal(grain_);
  if (LENGTH(p_) != n + 1) error(_("'%s' must have %d column pointers"), "M", n + 1);
  const int *P = INTEGER(p_), *I = INTEGER(i_);
  if (P[0] != 0 || P[n] != LENGTH(i_) || LENGTH(x_) != LENGTH(i_)) {
    error(_("'%s' has inconsistent slots"), "M");
  }
  for (int j = 0; j < n; j++) {
    if (P[j + 1] < P[j]) error(_("'%s' has decreasing column pointers"), "M");
  }
  for (int k = 0; k < LENGTH(i_); k++) {
    if (I[k] < 0 || I[k] >= n) error(_("'%s' has a row index out of range"), "M");
  }
  if (n < 3 || m < 2 || m > n - 1 || nev < 1 || nev > m - 2 || (which != 0 && which != 1) ||
      sym == NA_LOGICAL || !(tol > 0) || maxit < 1 || !(grain >= 1)) {
    error(_("invalid eigen solver settings (n %d, nev %d, ncv %d)"), n, nev, m);
  }
  csc_op A = {n, P, I, REAL(x_),
              scn_threads_for((R_xlen_t)(LENGTH(i_) / grain) + 1, nth_req)};

  const int lwork = 8 * m + 64;
  double *V = (double *)R_alloc((size_t)n * (m + 1), sizeof(double));
  double *Xtmp = (double *)R_alloc((size_t)n * (m + 1), sizeof(double));
  double *H = (double *)R_alloc((size_t)(m + 1) * m, sizeof(double));
  double *T = (double *)R_alloc((size_t)m * m, sizeof(double));
  double *Q = (double *)R_alloc((size_t)m * m, sizeof(double));
  double *Y = (double *)R_alloc((size_t)m * m, sizeof(double));
  double *hcol = (double *)R_alloc((size_t)2 * (m + 1), sizeof(double));
  double *ctmp = (double *)R_alloc((size_t)2 * (m + 1), sizeof(double));
  double *wr = (double *)R_alloc(m, sizeof(double));
  double *wi = (double *)R_alloc(m, sizeof(double));
  double *res = (double *)R_alloc(m, sizeof(double));
  double *work = (double *)R_alloc(lwork, sizeof(double));
  int *bwork = (int *)R_alloc(m, sizeof(int));

  SEXP vre = PROTECT(allocVector(REALSXP, nev));
  SEXP vim = PROTECT(allocVector(REALSXP, nev));
  SEXP vecs = PROTECT(allocMatrix(REALSXP, n, nev));
  int iters = 0;
  int nconv = krylov_schur(&A, nev, m, which, sym, REAL(v0_), tol, maxit, REAL(vre), REAL(vim),
                           REAL(vecs), &iters, V, H, T, Q, Y, hcol, ctmp, wr, wi, res, work,
                           lwork, bwork, Xtmp);
  if (nconv < 0) {
    UNPROTECT(3);
    error(_("LAPACK failed on the projected %d x %d eigenproblem"), m, m);
  }
  SEXP out = PROTECT(allocVector(VECSXP, 5));
  SET_VECTOR_ELT(out, 0, vre);
  SET_VECTOR_ELT(out, 1, vim);
  SET_VECTOR_ELT(out, 2, vecs);
  SET_VECTOR_ELT(out, 3, ScalarInteger(nconv));
  SET_VECTOR_ELT(out, 4, ScalarInteger(iters));
  SEXP nms = PROTECT(allocVector(STRSXP, 5));
  SET_STRING_ELT(nms, 0, mkChar("values_re"));
  SET_STRING_ELT(nms, 1, mkChar("values_im"));
  SET_STRING_ELT(nms, 2, mkChar("vectors"));
  SET_STRING_ELT(nms, 3, mkChar("nconv"));
  SET_STRING_ELT(nms, 4, mkChar("iterations"));
  setAttrib(out, R_NamesSymbol, nms);
  UNPROTECT(5);
  return out;
}

/* R: .Call(C_scnative_components, p, i, n) for a validated n x n dgCMatrix pattern (slots p, i)
 * -> integer labels 1..c of the weakly connected components (edge j -> i for each stored
 * (i, j)), numbered in order of each component's first cell, as scipy's connected_components. */
SEXP scnative_components(SEXP p_, SEXP i_, SEXP n_) {
  const int n = asInteger(n_);
  if (!isInteger(p_) || !isInteger(i_) || n < 0 || LENGTH(p_) != n + 1) {
    error(_("'%s' must be the slots of a square dgCMatrix"), "graph");
  }
  const int *P = INTEGER(p_), *I = INTEGER(i_);
  if (P[0] != 0 || P[n] != LENGTH(i_)) error(_("'%s' has inconsistent slots"), "graph");
  for (int j = 0; j < n; j++) {
    if (P[j + 1] < P[j]) error(_("'%s' has decreasing column pointers"), "graph");
  }
  for (int k = 0; k < LENGTH(i_); k++) {
    if (I[k] < 0 || I[k] >= n) error(_("'%s' has a row index out of range"), "graph");
  }
  int *parent = (int *)R_alloc(n > 0 ? n : 1, sizeof(int));
  for (int a = 0; a < n; a++) parent[a] = a;
  for (int j = 0; j < n; j++) {
    for (int k = P[j]; k < P[j + 1]; k++) {
      int a = I[k], b = j;
      while (parent[a] != a) a = parent[a] = parent[parent[a]];
      while (parent[b] != b) b = parent[b] = parent[parent[b]];
      if (a != b) {
        if (a < b) parent[b] = a;
        else parent[a] = b;
      }
    }
  }
  SEXP out = PROTECT(allocVector(INTSXP, n));
  int *lab = INTEGER(out), nc = 0;
  for (int a = 0; a < n; a++) {
    int r = a;
    while (parent[r] != r) r = parent[r];
    lab[a] = (r == a) ? ++nc : lab[r];
  }
  UNPROTECT(1);
  return out;
}
