/* reference.c: cell2location's reference regression model (RegressionModel,
 * RegressionBackgroundDetectionTechPyroModel; spec/cell2location.md section 7) on the SVI
 * machinery of svi.c.
 *
 * Model (all sites global, upstream order):
 *   per_cluster_mu_fg (F x G) ~ Gamma(1, 1)
 *   detection_tech_gene_tg (K x G) ~ Gamma(t_a, t_b)       only with categorical covariates
 *   detection_mean_y_e (E) ~ Gamma(d_a, d_b)
 *   s_g_gene_add_alpha_hyp ~ Gamma(h_a, h_b); s_g_gene_add_mean (E) ~ Gamma(S_a, S_b)
 *   s_g_gene_add_alpha_e_inv (E) ~ Exponential(hyp); s_g_gene_add (E x G) ~ Gamma(a_e, a_e/mean)
 *   alpha_g_phi_hyp ~ Gamma(p_a, p_b); alpha_g_inverse (G) ~ Exponential(phi)
 *   mu_cg = (mu_{l(c) g} + s_{e(c) g}) * y_{e(c)} * sum_k tech_{cat_k(c) g}
 *   x_cg ~ GammaPoisson(a_g, a_g / mu_cg), a_g = 1 / o_g^2; likelihood scaled by N / b on a
 *   minibatch of b cells (Pyro's plate subsampling).
 *
 * The cost trick: mu_cg depends on the cell only through its group (label, batch, covariate
 * levels), so the zero-count parts of the likelihood and of its derivatives are computed once
 * per (group, gene) and multiplied by the group's cell count in the minibatch; only the
 * non-zero counts are visited per cell (patches to the zero-count forms, spec 6.5). Per step:
 * O(groups x genes + non-zeros of the minibatch); nothing cells x genes is ever dense.
 *
 * Counts stay where R keeps them: the genes x cells dgCMatrix slots (p, i, x) are referenced
 * (protected by the external pointer), not copied. Streaming (a DelayedArray input): the state
 * holds no counts; R reads each minibatch's cells from disk as a small dgCMatrix and hands it to
 * scnative_reg_step with the cells in the order of the in-memory path's minibatch, so that
 * every sum runs in the same order and the fit is bit-identical. The per-cell and per-gene
 * constants of the counts (lgx, vmax) then come from a block-wise pass (scnative_reg_block_stats,
 * the same loop as the in-memory setup).
 *
 * Determinism: the group-sorted minibatch is cut into pieces (at most one group each, sizes
 * fixed by the minibatch size only); each piece owns its per-gene buffers; genes are reduced
 * in fixed blocks. Results for a seed do not depend on the thread count.
 */
#include "scnative.h"

enum { R_MU, R_TECH, R_YE, R_H, R_SMEAN, R_SINV, R_SEG, R_PHI, R_O, R_NSITE };
#define REG_NHYP 10
#define REG_GBLOCK 256
#define REG_VT 32 /* counts up to this use per-gene running sums, larger ones digamma/lgamma */

typedef struct {
  int N, G, F, E, K, NC, NG; /* cells, genes, labels, batches, covariate levels, covariates, groups */
  const int *xp, *xi;        /* genes x cells CSC (R's memory; streaming: the step's block) */
  const double *xv;
  int stream;                /* 1: no counts kept, minibatches come from scnative_reg_step */
  int *col;                  /* streaming, N: column of each cell in the step's block */
  int *stamp, cur;           /* streaming, N: the step that set col (duplicate check) */
  int *cell_group;           /* N */
  int *gdef;                 /* (2 + NC) x NG: label, batch, covariate level rows */
  double hyp[REG_NHYP];
  int site[R_NSITE];         /* guide site index of each model site (-1: absent) */
  scn_guide gd;
  /* minibatch */
  int b;                     /* current minibatch size */
  int *mb;                   /* N: the current minibatch (cells) */
  int *perm;                 /* N: the epoch's permutation */
  double *un;                /* N: its uniforms */
  int *ord, *cnt, *gstart;   /* N, NG, NG + 1: minibatch sorted by group */
  int *pc0, *pc1, *pgrp, *gp0; /* pieces: cell range in ord, group; first piece of each group */
  int npiece, cap_piece;
  double *pdR, *pdQ, *pll;   /* per piece: G, G, 1 */
  double *a_g, *dga, *lga;   /* per gene, per step (dga, lga only for genes with counts > REG_VT) */
  double *rsd, *rsl;         /* G x REG_VT per step: sum_{k < v} 1 / (a_g + k), log(a_g + k) */
  int *vmax;                 /* G: largest count of each gene (capped at REG_VT + 1) */
  double *lgx;               /* N: sum of lgamma(x + 1) over each cell's counts */
  double *blk_y, *blk_ll;    /* per gene block: E, 1 */
  double lgt[256];           /* lgamma(v + 1) */
} reg_state;

static void reg_free(reg_state *st) {
  if (!st) return;
  void *ptrs[] = {st->cell_group, st->gdef, st->mb, st->perm, st->un, st->ord, st->cnt, st->gstart,
                  st->pc0, st->pc1, st->pgrp, st->gp0, st->pdR, st->pdQ, st->pll, st->a_g,
                  st->dga, st->lga, st->blk_y, st->blk_ll, st->rsd, st->rsl, st->vmax, st->lgx,
                  st->col, st->stamp};
  for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
  scn_guide_free(&st->gd);
  free(st);
}

static void reg_finalizer(SEXP ptr) {
  reg_free((reg_state *)R_ExternalPtrAddr(ptr));
  R_ClearExternalPtr(ptr);
}

static reg_state *reg_get(SEXP ptr) { return scn_state_get(ptr, "regression model"); }

#define SITE(j) (st->gd.off[st->site[j]])

/* Checks a genes x ncol CSC (R's dgCMatrix slots): structure, finite non-negative values. */
static void reg_check_csc(SEXP xp, SEXP xi, SEXP xv, int ncol, int G) {
  if (!isInteger(xp) || XLENGTH(xp) != (R_xlen_t)ncol + 1 || !isInteger(xi) || !isReal(xv) ||
      XLENGTH(xi) != XLENGTH(xv))
    SCN_INTERNAL_ERROR("counts' slots");
  const int *p = INTEGER(xp), *ix = INTEGER(xi);
  const double *v = REAL(xv);
  if (p[0] != 0 || (R_xlen_t)p[ncol] != XLENGTH(xi))
    error(_("the counts' column pointers do not match their row indices (an invalid dgCMatrix?)"));
  for (int c = 0; c < ncol; c++)
    if (p[c + 1] < p[c])
      error(_("the counts' column pointers decrease (an invalid dgCMatrix?)"));
  for (R_xlen_t q = 0; q < XLENGTH(xi); q++) {
    if (ix[q] < 0 || ix[q] >= G) error(_("the counts' row indices are out of range (an invalid dgCMatrix?)"));
    if (!(v[q] >= 0.0) || !R_FINITE(v[q])) error(_("the counts must be finite and non-negative"));
  }
}

static void reg_lgamma_table(double *lgt) {
  lgt[0] = 0.0;
  for (int v = 1; v < 256; v++) lgt[v] = lgt[v - 1] + log((double)v);
}

/* Constants of the counts of ncol cells: per cell sum lgamma(x + 1) (lgx), per gene the
 * largest count capped at REG_VT + 1 (vmax, raised, not reset). */
static void reg_column_stats(const int *p, const int *ix, const double *xv, int ncol,
                             const double *lgt, double *lgx, int *vmax) {
  for (int c = 0; c < ncol; c++) {
    double l = 0.0;
    for (int q = p[c]; q < p[c + 1]; q++) {
      double x = xv[q];
      int g = ix[q], v = x > REG_VT ? REG_VT + 1 : (int)x;
      l += x < 256.0 ? lgt[(int)x] : scn_lgamma(x + 1.0);
      if (v > vmax[g]) vmax[g] = v;
    }
    lgx[c] = l;
  }
}

/* .Call(C_scnative_reg_setup, xp, xi, xv, dims = c(N, G, F, E, K, NC, NG), cell_group,
 *       gdef, hyper, stats): xp, xi, xv are the dgCMatrix's slots, kept (not copied) by the
 *       pointer; stats NULL. Streaming: xp, xi, xv NULL and stats = list(lgx (N), vmax (G))
 *       from scnative_reg_block_stats. */
SEXP scnative_reg_setup(SEXP xp, SEXP xi, SEXP xv, SEXP dims, SEXP cell_group, SEXP gdef,
                        SEXP hyper, SEXP stats) {
  if (!isInteger(dims) || XLENGTH(dims) != 7) SCN_INTERNAL_ERROR("dims");
  const int *d = INTEGER(dims);
  int N = d[0], G = d[1], F = d[2], E = d[3], K = d[4], NC = d[5], NG = d[6];
  const int stream = isNull(xp);
  if (stream && (!isNull(xi) || !isNull(xv) || !isNewList(stats) || XLENGTH(stats) != 2 ||
                 !isReal(VECTOR_ELT(stats, 0)) || XLENGTH(VECTOR_ELT(stats, 0)) != N ||
                 !isInteger(VECTOR_ELT(stats, 1)) || XLENGTH(VECTOR_ELT(stats, 1)) != G))
    SCN_INTERNAL_ERROR("streaming setup");
  if (!stream && !isNull(stats)) SCN_INTERNAL_ERROR("stats");
  if (!isInteger(cell_group) || XLENGTH(cell_group) != N ||
      !isInteger(gdef) || XLENGTH(gdef) != (R_xlen_t)(2 + NC) * NG || !isReal(hyper) ||
      XLENGTH(hyper) != REG_NHYP)
    SCN_INTERNAL_ERROR("bad arguments");
  /* Guards (R's validate_fit() checks fits first; these keep a damaged object from reaching
   * the loops below, which index with these values unchecked): sizes, the CSC structure and
   * values of the counts, the cells' groups and the groups' codes. O(cells + non-zeros). */
  if (N < 1 || G < 1 || F < 1 || E < 1 || K < 0 || NC < 0 || NG < 1)
    error(_("the regression model's sizes are invalid (a damaged fit?)"));
  {
    const int *cg = INTEGER(cell_group), *gd = INTEGER(gdef);
    if (!stream) reg_check_csc(xp, xi, xv, N, G);
    else {
      const double *l = REAL(VECTOR_ELT(stats, 0));
      const int *vm = INTEGER(VECTOR_ELT(stats, 1));
      for (int c = 0; c < N; c++)
        if (!R_FINITE(l[c])) error(_("the counts' per-cell constants are invalid"));
      for (int g = 0; g < G; g++)
        if (vm[g] < 0 || vm[g] > REG_VT + 1) error(_("the counts' per-gene maxima are invalid"));
    }
    for (int c = 0; c < N; c++)
      if (cg[c] < 0 || cg[c] >= NG) error(_("a cell's group is out of range (a damaged fit?)"));
    for (int gr = 0; gr < NG; gr++) {
      const int *d1 = gd + (size_t)(2 + NC) * gr;
      if (d1[0] < 0 || d1[0] >= F || d1[1] < 0 || d1[1] >= E)
        error(_("a group's label or batch code is out of range (a damaged fit?)"));
      for (int k = 0; k < NC; k++)
        if (d1[2 + k] < 0 || d1[2 + k] >= K)
          error(_("a group's covariate code is out of range (a damaged fit?)"));
    }
  }
  reg_state *st = calloc(1, sizeof *st);
  if (!st) error(_("out of memory"));
  st->N = N, st->G = G, st->F = F, st->E = E, st->K = K, st->NC = NC, st->NG = NG;
  st->stream = stream;
  if (!stream) st->xp = INTEGER(xp), st->xi = INTEGER(xi), st->xv = REAL(xv);
  memcpy(st->hyp, REAL(hyper), sizeof st->hyp);
  R_xlen_t sizes[R_NSITE];
  int ns = 0;
  R_xlen_t all[R_NSITE] = {(R_xlen_t)F * G, (R_xlen_t)K * G, E, 1, E, E, (R_xlen_t)E * G, 1, G};
  for (int j = 0; j < R_NSITE; j++) {
    if (j == R_TECH && NC == 0) {
      st->site[j] = -1;
      continue;
    }
    st->site[j] = ns;
    sizes[ns++] = all[j];
  }
  int nblk = (G + REG_GBLOCK - 1) / REG_GBLOCK;
  int ok = scn_guide_alloc(&st->gd, ns, sizes);
#define REG_ALLOC(p, n, T) \
  do { \
    p = malloc(((size_t)(n) > 0 ? (size_t)(n) : 1) * sizeof(T)); \
    if (!p) ok = 0; \
  } while (0)
  REG_ALLOC(st->cell_group, N, int);
  REG_ALLOC(st->gdef, (R_xlen_t)(2 + NC) * NG, int);
  REG_ALLOC(st->mb, N, int);
  REG_ALLOC(st->perm, N, int);
  REG_ALLOC(st->un, N, double);
  REG_ALLOC(st->ord, N, int);
  REG_ALLOC(st->cnt, NG, int);
  REG_ALLOC(st->gstart, NG + 1, int);
  REG_ALLOC(st->gp0, NG + 1, int);
  REG_ALLOC(st->a_g, G, double);
  REG_ALLOC(st->dga, G, double);
  REG_ALLOC(st->lga, G, double);
  REG_ALLOC(st->blk_y, (R_xlen_t)nblk * E, double);
  REG_ALLOC(st->blk_ll, nblk, double);
  REG_ALLOC(st->rsd, (R_xlen_t)G * REG_VT, double);
  REG_ALLOC(st->rsl, (R_xlen_t)G * REG_VT, double);
  REG_ALLOC(st->vmax, G, int);
  REG_ALLOC(st->lgx, N, double);
  if (stream) {
    REG_ALLOC(st->col, N, int);
    REG_ALLOC(st->stamp, N, int);
  }
  if (!ok) {
    reg_free(st);
    error(_("out of memory allocating the regression model state"));
  }
  memcpy(st->cell_group, INTEGER(cell_group), N * sizeof(int));
  memcpy(st->gdef, INTEGER(gdef), (size_t)(2 + NC) * NG * sizeof(int));
  reg_lgamma_table(st->lgt);
  for (int c = 0; c < N; c++) st->mb[c] = c;
  st->b = N;
  /* constants of the counts: per cell sum lgamma(x + 1), per gene the largest count */
  if (stream) {
    memcpy(st->lgx, REAL(VECTOR_ELT(stats, 0)), N * sizeof(double));
    memcpy(st->vmax, INTEGER(VECTOR_ELT(stats, 1)), G * sizeof(int));
    for (int c = 0; c < N; c++) st->stamp[c] = 0;
    st->cur = 0;
  } else {
    memset(st->vmax, 0, G * sizeof(int));
    reg_column_stats(st->xp, st->xi, st->xv, N, st->lgt, st->lgx, st->vmax);
  }
  SEXP prot = PROTECT(allocVector(VECSXP, 3));
  SET_VECTOR_ELT(prot, 0, xp);
  SET_VECTOR_ELT(prot, 1, xi);
  SET_VECTOR_ELT(prot, 2, xv);
  SEXP ans = PROTECT(R_MakeExternalPtr(st, R_NilValue, prot));
  R_RegisterCFinalizerEx(ans, reg_finalizer, TRUE);
  UNPROTECT(2);
  return ans;
}

/* Sorts the minibatch by group and cuts it into pieces; grows the piece buffers. */
static void reg_prepare_batch(reg_state *st) {
  const int NG = st->NG, b = st->b;
  memset(st->cnt, 0, NG * sizeof(int));
  for (int i = 0; i < b; i++) st->cnt[st->cell_group[st->mb[i]]]++;
  st->gstart[0] = 0;
  for (int g = 0; g < NG; g++) st->gstart[g + 1] = st->gstart[g] + st->cnt[g];
  int *pos = st->gp0; /* scratch: next slot per group */
  memcpy(pos, st->gstart, NG * sizeof(int));
  for (int i = 0; i < b; i++) {
    int c = st->mb[i];
    st->ord[pos[st->cell_group[c]]++] = c;
  }
  int maxlen = b / 64 > 256 ? b / 64 : 256, np = 0;
  for (int g = 0; g < NG; g++) np += (st->cnt[g] + maxlen - 1) / maxlen;
  if (np > st->cap_piece) {
    free(st->pc0), free(st->pc1), free(st->pgrp), free(st->pdR), free(st->pdQ), free(st->pll);
    st->pc0 = malloc(np * sizeof(int));
    st->pc1 = malloc(np * sizeof(int));
    st->pgrp = malloc(np * sizeof(int));
    st->pdR = malloc((size_t)np * st->G * sizeof(double));
    st->pdQ = malloc((size_t)np * st->G * sizeof(double));
    st->pll = malloc(np * sizeof(double));
    st->cap_piece = np;
    if (!st->pc0 || !st->pc1 || !st->pgrp || !st->pdR || !st->pdQ || !st->pll) {
      free(st->pc0), free(st->pc1), free(st->pgrp), free(st->pdR), free(st->pdQ), free(st->pll);
      st->pc0 = st->pc1 = st->pgrp = NULL;
      st->pdR = st->pdQ = st->pll = NULL;
      st->cap_piece = 0;
      error(_("out of memory in the regression model's minibatch buffers"));
    }
  }
  np = 0;
  for (int g = 0; g < NG; g++) {
    st->gp0[g] = np;
    for (int a = st->gstart[g]; a < st->gstart[g + 1]; a += maxlen) {
      st->pc0[np] = a;
      st->pc1[np] = a + maxlen < st->gstart[g + 1] ? a + maxlen : st->gstart[g + 1];
      st->pgrp[np++] = g;
    }
  }
  st->gp0[NG] = np;
  st->npiece = np;
}

/* sum over the covariates' tech rows of group gr at gene g (1 without covariates) */
static inline double reg_tech(const reg_state *st, const double *ztech, const int *gd, int g) {
  if (!st->NC) return 1.0;
  double t = 0.0;
  for (int k = 0; k < st->NC; k++) t += ztech[gd[2 + k] + (R_xlen_t)g * st->K];
  return t;
}

/* Per gene and step: a_g and the tables sum_{k < v} 1 / (a + k), sum_{k < v} log(a + k) for
 * v = 1 .. min(largest count, REG_VT); digamma(a), lgamma(a) only where larger counts occur. */
static void reg_gene_terms(reg_state *st, int g, double a) {
  st->a_g[g] = a;
  int vm = st->vmax[g] < REG_VT ? st->vmax[g] : REG_VT;
  double *rd = st->rsd + (R_xlen_t)g * REG_VT, *rl = st->rsl + (R_xlen_t)g * REG_VT;
  double sd = 0.0, sl = 0.0;
  for (int k = 0; k < vm; k++) {
    sd += 1.0 / (a + k);
    sl += scn_log_fast(a + k);
    rd[k] = sd;
    rl[k] = sl;
  }
  if (st->vmax[g] > REG_VT) scn_lgamma_digamma_fast(a, st->lga + g, st->dga + g);
}

/* The likelihood of the minibatch: returns its log (scaled) and adds the gradients. */
static double reg_likelihood(reg_state *st, const double *z, double *gz, double scale, int nth) {
  const int G = st->G, F = st->F, E = st->E, K = st->K, NC = st->NC, NG = st->NG;
  const double *zmu = z + SITE(R_MU), *zye = z + SITE(R_YE), *zs = z + SITE(R_SEG),
               *zo = z + SITE(R_O);
  const double *ztech = NC ? z + SITE(R_TECH) : NULL;
  double *gmu = gz + SITE(R_MU), *gye = gz + SITE(R_YE), *gs = gz + SITE(R_SEG),
         *go = gz + SITE(R_O);
  double *gtech = NC ? gz + SITE(R_TECH) : NULL;
  reg_prepare_batch(st);
  int ntg = scn_threads_for(G / 512 + 1, nth);
#pragma omp parallel for num_threads(ntg) schedule(static)
  for (int g = 0; g < G; g++) reg_gene_terms(st, g, 1.0 / (zo[g] * zo[g]));
  /* pass 1: non-zero counts, per piece. What depends on mu (the group's, per gene) is applied
   * in pass 2 to the piece's sum of counts per gene (dR; integers, so exact in any order); per
   * count only the rising-factorial terms remain: sum_{k < x} 1 / (a + k) into dQ and
   * sum_{k < x} log(a + k) into the log-likelihood, looked up in the per-gene tables. */
  const int np = st->npiece;
  int ntp = scn_threads_for(np, nth);
#pragma omp parallel for num_threads(ntp) schedule(dynamic, 1)
  for (int p = 0; p < np; p++) {
    double *dR = st->pdR + (size_t)p * G, *dQ = st->pdQ + (size_t)p * G;
    memset(dR, 0, G * sizeof(double));
    memset(dQ, 0, G * sizeof(double));
    double ll = 0.0;
    for (int i = st->pc0[p]; i < st->pc1[p]; i++) {
      int c = st->ord[i], cc = st->col ? st->col[c] : c; /* cc: the cell's column */
      ll -= st->lgx[c];
      for (int q = st->xp[cc]; q < st->xp[cc + 1]; q++) {
        int g = st->xi[q];
        double x = st->xv[q];
        dR[g] += x;
        if (x < 1.0) continue; /* an explicit zero: no rising-factorial terms */
        if (x <= REG_VT) {
          R_xlen_t t = (R_xlen_t)g * REG_VT + (int)x - 1;
          dQ[g] += st->rsd[t];
          ll += st->rsl[t];
        } else {
          double a = st->a_g[g]; /* a + x > 32: both series without recurrences */
          dQ[g] += scn_digamma(a + x) - st->dga[g];
          ll += scn_lgamma(a + x) - st->lga[g];
        }
      }
    }
    st->pll[p] = ll;
  }
  /* pass 2: per gene, the zero-count forms per group plus the pieces' patches */
  const int nblk = (G + REG_GBLOCK - 1) / REG_GBLOCK;
  int ntb = scn_threads_for(nblk, nth);
#pragma omp parallel for num_threads(ntb) schedule(dynamic, 1)
  for (int bk = 0; bk < nblk; bk++) {
    double *by = st->blk_y + (size_t)bk * E, bll = 0.0;
    memset(by, 0, E * sizeof(double));
    int g1 = (bk + 1) * REG_GBLOCK < G ? (bk + 1) * REG_GBLOCK : G;
    for (int g = bk * REG_GBLOCK; g < g1; g++) {
      double a = st->a_g[g], Qs = 0.0;
      for (int gr = 0; gr < NG; gr++) {
        int n = st->cnt[gr];
        if (!n) continue;
        const int *gd = st->gdef + (size_t)(2 + NC) * gr;
        const int l = gd[0], e = gd[1];
        R_xlen_t il = l + (R_xlen_t)g * F, ie = e + (R_xlen_t)g * E;
        double y = zye[e], base = zmu[il] + zs[ie], T = reg_tech(st, ztech, gd, g);
        double mu = base * y * T, apa = a + mu, r = mu / a, l1p = log1p(r);
        double sx = 0.0; /* the group's counts of gene g in the minibatch */
        for (int p = st->gp0[gr]; p < st->gp0[gr + 1]; p++) sx += st->pdR[(size_t)p * G + g];
        double Rs = -n * a / apa + sx * (1.0 / mu - 1.0 / apa);
        Qs += n * (mu / apa - l1p) - sx / apa;
        bll -= n * a * l1p;
        if (sx > 0.0) bll += sx * log(mu / apa);
        double dmu = scale * Rs * y * T;
        gmu[il] += dmu;
        gs[ie] += dmu;
        by[e] += scale * Rs * base * T;
        if (NC) {
          double dt = scale * Rs * base * y;
          for (int k = 0; k < NC; k++) gtech[gd[2 + k] + (R_xlen_t)g * K] += dt;
        }
      }
      for (int p = 0; p < np; p++) Qs += st->pdQ[(size_t)p * G + g];
      double o = zo[g];
      go[g] += scale * (-2.0 / (o * o * o)) * Qs;
    }
    st->blk_ll[bk] = bll;
  }
  double ll = 0.0;
  for (int bk = 0; bk < nblk; bk++) {
    ll += st->blk_ll[bk];
    for (int e = 0; e < E; e++) gye[e] += st->blk_y[(size_t)bk * E + e];
  }
  for (int p = 0; p < np; p++) ll += st->pll[p];
  return scale * ll;
}

/* log p(x_minibatch, z) with the likelihood scaled by N / b; fills the guide's gz. */
static double reg_logp(void *ctx, int nth) {
  reg_state *st = (reg_state *)ctx;
  const int G = st->G, F = st->F, E = st->E, K = st->K;
  const double *h = st->hyp;
  const double da = h[0], db = h[1], ha = h[2], hb = h[3], Sa = h[4], Sb = h[5], pa = h[6],
               pb = h[7], ta = h[8], tb = h[9];
  const double *u = st->gd.u, *z = st->gd.z;
  double *gz = st->gd.gz;
  memset(gz, 0, (size_t)st->gd.P * sizeof(double));
  double lp = 0.0;
  /* per_cluster_mu_fg ~ Gamma(1, 1) */
  {
    const double *zm = z + SITE(R_MU);
    double *gm = gz + SITE(R_MU), l = 0.0;
    for (R_xlen_t i = 0; i < (R_xlen_t)F * G; i++) {
      l -= zm[i];
      gm[i] = -1.0;
    }
    lp += l;
  }
  if (st->NC) {
    const double *zt = z + SITE(R_TECH), *ut = u + SITE(R_TECH);
    double *gt = gz + SITE(R_TECH), l = 0.0, c0 = ta * log(tb) - scn_lgamma(ta);
    for (R_xlen_t i = 0; i < (R_xlen_t)K * G; i++) {
      l += c0 + (ta - 1.0) * ut[i] - tb * zt[i];
      gt[i] = (ta - 1.0) / zt[i] - tb;
    }
    lp += l;
  }
  {
    const double *zy = z + SITE(R_YE), *uy = u + SITE(R_YE);
    double *gy = gz + SITE(R_YE);
    for (int e = 0; e < E; e++) {
      lp += scn_lgamma_pdf(zy[e], uy[e], da, db);
      gy[e] = (da - 1.0) / zy[e] - db;
    }
  }
  /* background s_eg and its hierarchy; over-dispersion */
  {
    const double bh[4] = {ha, hb, Sa, Sb};
    lp += scn_background_prior(E, G, z[SITE(R_H)], u[SITE(R_H)], z + SITE(R_SMEAN),
                               u + SITE(R_SMEAN), z + SITE(R_SINV), z + SITE(R_SEG),
                               u + SITE(R_SEG), bh, gz + SITE(R_H), gz + SITE(R_SMEAN),
                               gz + SITE(R_SINV), gz + SITE(R_SEG));
    lp += scn_overdispersion_prior(G, z[SITE(R_PHI)], u[SITE(R_PHI)], z + SITE(R_O), pa, pb,
                                   gz + SITE(R_PHI), gz + SITE(R_O));
  }
  double scale = (double)st->N / (double)st->b;
  return lp + reg_likelihood(st, z, gz, scale, nth);
}

/* ---- shims ---------------------------------------------------------------------------- */

/* .Call(C_scnative_reg_set_params, ptr, loc, rho): also resets the Adam state. */
SEXP scnative_reg_set_params(SEXP ptr, SEXP loc, SEXP rho) {
  return scn_guide_set_params(&reg_get(ptr)->gd, loc, rho);
}

SEXP scnative_reg_get_params(SEXP ptr) { return scn_guide_params_sexp(&reg_get(ptr)->gd); }

/* The permutation of epoch `epoch` (Fisher-Yates on the counter-based stream 1000). */
static void reg_permute(reg_state *st, uint64_t seed, double epoch) {
  scn_rng_permutation(seed, 1000, (uint64_t)epoch, st->N, st->un, st->perm);
}

/* .Call(C_scnative_reg_train, ptr, n_epochs, epoch0, step0, opt = c(lr, clip, lrd, clipped),
 *       minibatch = c(batch_size, drop_last, shuffle), seed, threads)
 * -> list(loss = mean step loss per epoch, steps = steps done). batch_size >= N: full batch. */
SEXP scnative_reg_train(SEXP ptr, SEXP n_epochs, SEXP epoch0, SEXP step0, SEXP opt_, SEXP mbs,
                        SEXP seed_, SEXP threads) {
  reg_state *st = reg_get(ptr);
  if (st->stream) SCN_INTERNAL_ERROR("a streaming state trains by scnative_reg_step");
  int ne = asInteger(n_epochs), nth = asInteger(threads);
  if (!isReal(opt_) || XLENGTH(opt_) != 4 || !isInteger(mbs) || XLENGTH(mbs) != 3)
    SCN_INTERNAL_ERROR("train arguments");
  const double *o = REAL(opt_);
  scn_optim opt = {o[0], o[1], o[2], (int)o[3]};
  /* guard: a minibatch size < 1 (or NA) would divide by zero below */
  if (INTEGER(mbs)[0] < 1) error(_("the minibatch size must be at least 1"));
  const int N = st->N, bs = INTEGER(mbs)[0] < N ? INTEGER(mbs)[0] : N;
  const int drop_last = INTEGER(mbs)[1], shuffle = INTEGER(mbs)[2];
  double ep0 = asReal(epoch0), step = asReal(step0);
  uint64_t seed = scn_seed_from_sexp(seed_);
  int nfull = N / bs, rest = N - nfull * bs;
  int nsteps = nfull + (rest > 0 && !drop_last ? 1 : 0);
  SEXP ans = PROTECT(allocVector(REALSXP, ne));
  for (int it = 0; it < ne; it++) {
    const int *order = NULL;
    if (bs < N && shuffle) {
      reg_permute(st, seed, ep0 + it);
      order = st->perm;
    }
    double tot = 0.0;
    for (int k = 0; k < nsteps; k++) {
      int c0 = k * bs, b = c0 + bs < N ? bs : N - c0;
      for (int i = 0; i < b; i++) st->mb[i] = order ? order[c0 + i] : c0 + i;
      st->b = b;
      tot += scn_svi_step(&st->gd, reg_logp, st, seed, step++, &opt, nth);
    }
    REAL(ans)[it] = tot / nsteps;
  }
  static const char *names[] = {"loss", "steps"};
  SEXP res = PROTECT(scn_named_list(2, names));
  SET_VECTOR_ELT(res, 0, ans);
  SET_VECTOR_ELT(res, 1, ScalarReal(step));
  UNPROTECT(2);
  return res;
}

/* .Call(C_scnative_reg_logjoint, ptr, u, cells (0-based, NULL: all), threads)
 * -> list(logp, grad = d log p / du) with the likelihood of `cells` scaled by N / length. */
SEXP scnative_reg_logjoint(SEXP ptr, SEXP u, SEXP cells, SEXP threads) {
  reg_state *st = reg_get(ptr);
  if (st->stream) SCN_INTERNAL_ERROR("a streaming state has no counts");
  if (!isReal(u) || XLENGTH(u) != st->gd.P) SCN_INTERNAL_ERROR("u length");
  if (isNull(cells)) {
    for (int c = 0; c < st->N; c++) st->mb[c] = c;
    st->b = st->N;
  } else {
    if (!isInteger(cells) || XLENGTH(cells) < 1 || XLENGTH(cells) > st->N)
      SCN_INTERNAL_ERROR("cells");
    for (R_xlen_t i = 0; i < XLENGTH(cells); i++) {
      int c = INTEGER(cells)[i];
      if (c < 0 || c >= st->N) SCN_INTERNAL_ERROR("cell index");
      st->mb[i] = c;
    }
    st->b = (int)XLENGTH(cells);
  }
  scn_guide_set_u(&st->gd, REAL(u));
  double lp = reg_logp(st, asInteger(threads));
  return scn_logjoint_sexp(&st->gd, lp);
}

/* ---- streaming (DelayedArray input) -------------------------------------------------- */

/* .Call(C_scnative_reg_block_stats, xp, xi, xv, G, labels, w, acc) for a genes x b block of
 * cells (dgCMatrix slots) -> list(lgx (b), vmax (G), acc). labels (0-based, b) and w (per
 * label) may be NULL; otherwise acc (G x F) is a copy of `acc` plus x * w[label] of every count,
 * added cell after cell in column order: the order of the sparse product x %*% indicator in
 * cluster_averages(), so the per-type averages of blocks visited in column order are the same
 * numbers as the in-memory ones. */
SEXP scnative_reg_block_stats(SEXP xp, SEXP xi, SEXP xv, SEXP G_, SEXP labels, SEXP w,
                              SEXP acc) {
  int G = asInteger(G_);
  if (G < 1 || !isInteger(xp) || XLENGTH(xp) < 1 || XLENGTH(xp) - 1 > INT_MAX)
    SCN_INTERNAL_ERROR("block");
  int b = (int)(XLENGTH(xp) - 1);
  reg_check_csc(xp, xi, xv, b, G);
  const int *p = INTEGER(xp), *ix = INTEGER(xi);
  const double *xvv = REAL(xv);
  int F = 0;
  if (!isNull(labels)) {
    if (!isInteger(labels) || XLENGTH(labels) != b || !isReal(w) || !isReal(acc) ||
        XLENGTH(acc) != (R_xlen_t)G * XLENGTH(w))
      SCN_INTERNAL_ERROR("block labels");
    F = (int)XLENGTH(w);
    for (int c = 0; c < b; c++)
      if (INTEGER(labels)[c] < 0 || INTEGER(labels)[c] >= F) SCN_INTERNAL_ERROR("block label");
  }
  static const char *names[] = {"lgx", "vmax", "acc"};
  SEXP res = PROTECT(scn_named_list(3, names));
  SEXP lgx = PROTECT(allocVector(REALSXP, b)), vmax = PROTECT(allocVector(INTSXP, G));
  double lgt[256];
  reg_lgamma_table(lgt);
  memset(INTEGER(vmax), 0, G * sizeof(int));
  reg_column_stats(p, ix, xvv, b, lgt, REAL(lgx), INTEGER(vmax));
  SET_VECTOR_ELT(res, 0, lgx);
  SET_VECTOR_ELT(res, 1, vmax);
  if (F) {
    SEXP a = PROTECT(duplicate(acc));
    double *av = REAL(a);
    const double *wv = REAL(w);
    for (int c = 0; c < b; c++) {
      int l = INTEGER(labels)[c];
      double *al = av + (R_xlen_t)l * G;
      for (int q = p[c]; q < p[c + 1]; q++) al[ix[q]] += xvv[q] * wv[l];
    }
    SET_VECTOR_ELT(res, 2, a);
    UNPROTECT(1);
  }
  UNPROTECT(3);
  return res;
}

/* .Call(C_scnative_reg_perm, ptr, seed, epoch) -> the epoch's shuffled cell order (0-based),
 * the one scnative_reg_train uses. */
SEXP scnative_reg_perm(SEXP ptr, SEXP seed_, SEXP epoch) {
  reg_state *st = reg_get(ptr);
  reg_permute(st, scn_seed_from_sexp(seed_), asReal(epoch));
  SEXP ans = PROTECT(allocVector(INTSXP, st->N));
  memcpy(INTEGER(ans), st->perm, st->N * sizeof(int));
  UNPROTECT(1);
  return ans;
}

/* .Call(C_scnative_reg_step, ptr, cells, cols, xp, xi, xv, step, opt, seed, threads) -> loss:
 * one SVI step of a streaming state on the minibatch `cells` (0-based, in the minibatch's
 * order), whose counts are column cols[i] (0-based) of the genes x b block (xp, xi, xv). */
SEXP scnative_reg_step(SEXP ptr, SEXP cells, SEXP cols, SEXP xp, SEXP xi, SEXP xv, SEXP step_,
                       SEXP opt_, SEXP seed_, SEXP threads) {
  reg_state *st = reg_get(ptr);
  if (!st->stream) SCN_INTERNAL_ERROR("not a streaming state");
  if (!isReal(opt_) || XLENGTH(opt_) != 4 || !isInteger(cells) || !isInteger(cols) ||
      XLENGTH(cells) < 1 || XLENGTH(cells) > st->N || XLENGTH(cols) != XLENGTH(cells) ||
      !isInteger(xp) || XLENGTH(xp) < 1 || XLENGTH(xp) - 1 > st->N)
    SCN_INTERNAL_ERROR("step arguments");
  const int b = (int)XLENGTH(cells), nb = (int)(XLENGTH(xp) - 1);
  reg_check_csc(xp, xi, xv, nb, st->G);
  {
    /* the block's counts must not exceed the per-gene maxima of the pass that set up the state
     * (the tables are built up to them): a larger count means the data changed on disk */
    const int *p = INTEGER(xp), *ix = INTEGER(xi);
    const double *v = REAL(xv);
    for (int q = 0; q < p[nb]; q++) {
      int vv = v[q] > REG_VT ? REG_VT + 1 : (int)v[q];
      if (vv > st->vmax[ix[q]])
        error(_("the counts read from 'x' differ from those of the first pass (did the data change on disk?)"));
    }
  }
  if (st->cur == INT_MAX) {
    for (int c = 0; c < st->N; c++) st->stamp[c] = 0;
    st->cur = 0;
  }
  const int cur = ++st->cur;
  const int *ce = INTEGER(cells), *co = INTEGER(cols);
  for (int i = 0; i < b; i++) {
    int c = ce[i];
    if (c < 0 || c >= st->N || co[i] < 0 || co[i] >= nb || st->stamp[c] == cur)
      SCN_INTERNAL_ERROR("minibatch cells");
    st->stamp[c] = cur;
    st->col[c] = co[i];
    st->mb[i] = c;
  }
  st->b = b;
  const double *o = REAL(opt_);
  scn_optim opt = {o[0], o[1], o[2], (int)o[3]};
  st->xp = INTEGER(xp), st->xi = INTEGER(xi), st->xv = REAL(xv);
  double loss = scn_svi_step(&st->gd, reg_logp, st, scn_seed_from_sexp(seed_), asReal(step_),
                             &opt, asInteger(threads));
  st->xp = st->xi = NULL, st->xv = NULL;
  return ScalarReal(loss);
}
