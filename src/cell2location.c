/* cell2location.c: the cell2location spatial mapping model (spec/cell2location.md).
 *
 * Generative model (spec 2): 17 latent sites, all positive, log-transformed; AutoNormal guide
 * (spec 3: u = loc + softplus(rho) * eps, z = exp(u)); one reparameterised sample per step;
 * exact gradients of log p(x, z) (spec 6); torch Adam or pyro ClippedAdam (spec 4.2); the loss
 * value of spec 4.4 (elbo_train).
 *
 * Data layout. Spots are sorted by batch on the R side, so every batch is a contiguous range
 * of spots. Counts are a CSC matrix of spots x genes (per gene, the spots with a non-zero
 * count, in increasing order). Site values are column-major, as in R.
 *
 * The S x G pass (the cost): spots are cut into blocks of `nb` spots inside one batch, genes
 * into tiles of `gb`; per tile one GEMM gives A = W %*% sig (nb x gb, through scn_dgemm), one
 * fused elementwise pass computes mu, log(a + mu), 1/(a + mu), the likelihood derivatives and
 * the per-gene/per-spot sums, then overwrites the tile with R * y * m for the backward GEMM
 * dW += tile %*% t(sig). Zero counts use the closed forms of spec 6.5; non-zero counts are
 * patched from the CSC copy; the digamma/lgamma terms come from per-(batch, gene) histograms
 * of the count values. Tiles are small enough (nb * gb * F <= 2^18) that OpenBLAS runs each
 * GEMM on the calling thread, so the OpenMP threads do not oversubscribe the BLAS pool.
 *
 * The rest of an epoch is kept small against the S x G pass (small gene panels make it
 * visible): the local priors run over blocks of spots with spots innermost (vectorised, with
 * a branch-free lgamma + digamma); the histogram terms are running sums stepped over all
 * (batch, gene) pairs at once; per-fit constants (per-batch terms, chunk cursors, histogram
 * order) are computed in setup; each chunk clears and the reduction reads only the batches the
 * chunk holds. The guide's per-parameter work (normals, softplus, exp, Adam) is vectorised in
 * svi.c and rng.c; in a training step the sites that only the local priors read (n_s, b_s,
 * z_sr: most parameters on small panels) are sampled, evaluated and updated block by block in
 * c2l_eval (svi.c's fused range), in per-thread buffers, not in three passes over memory.
 *
 * precision = "single" (c2l_pass_f32, kernels in c2l_f32.h): the same blocks, tiles and chunks
 * in float32, as torch trains: W and y_s are copied to float per block (rows padded to a
 * multiple of 16), our register-blocked sgemm (or the BLAS's sgemm_ when asked) does both
 * GEMMs, the NB terms use log(a + mu) = log a + log1p(mu / a) so that the per-gene sums hold
 * small terms, and the counts are read from a block-major float copy. On AVX-512 each gene of
 * a tile is one intrinsics loop (c2l_gene16): one division per element, the log by getexp and
 * an Estrin polynomial (the loop is bound by latency), and the non-zero counts' second log
 * only over their compressed pairs, several genes at once. Per-gene sums go to the same double
 * accumulators; everything after the pass (and the whole double path) is as above.
 *
 * Buffers: everything (tile buffers included) is allocated once per fit and held by the state
 * (an external pointer with a finalizer); no S x G matrix exists at any time.
 *
 * Determinism: blocks are grouped into a fixed number of chunks (independent of the thread
 * count); each chunk owns its per-(batch, gene) accumulators and is processed by one thread in
 * block order; chunks are reduced in chunk order. Per-spot values are owned by their block.
 * Random numbers come from the counter-based generator with a stream per site and an offset
 * from the epoch. So a fit for a given seed does not depend on the thread count.
 */
#include "scnative.h"
#include <time.h>

#define C2L_NSITE 17
enum {
  S_MMEAN, S_MTAU, S_MG, S_NS, S_BS, S_Z, S_K, S_X, S_W, S_YE, S_YS, S_H, S_SMEAN, S_SINV,
  S_SEG, S_PHI, S_O
};
#define C2L_NACC 5 /* per-(batch, gene) sums: log(a+mu), 1/(a+mu), R y, R y A, -x/(a+mu) */
#define C2L_NHYP 15
#define C2L_MAXCHUNK 32
#define C2L_SPOT_BLOCK 256 /* spots per block of the local priors */
#define C2L_HMAX 32 /* counts up to this use running sums, larger ones digamma/lgamma */
#define C2L_GEMM_MNK 262144.0 /* OpenBLAS's threshold for single-threaded GEMM */

/* Vectorisable clones of the elementwise kernel where the compiler supports them. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    __GNUC__ >= 8
#define C2L_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define C2L_CLONES
#endif

/* The float32 kernels (precision = "single"), one copy per instruction set (c2l_f32.h). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 8
#define C2L_F32_X86 1
#include <immintrin.h>
#define C2L_F32_SUFFIX avx512
#define C2L_F32_TARGET __attribute__((target("avx512f,avx2,fma")))
#define C2L_F32_AVX512 1
#include "c2l_f32.h"
#undef C2L_F32_AVX512
#undef C2L_F32_SUFFIX
#undef C2L_F32_TARGET
#define C2L_F32_SUFFIX avx2
#define C2L_F32_TARGET __attribute__((target("avx2,fma")))
#include "c2l_f32.h"
#undef C2L_F32_SUFFIX
#undef C2L_F32_TARGET
#endif
#define C2L_F32_SUFFIX base
#define C2L_F32_TARGET
#include "c2l_f32.h"
#undef C2L_F32_SUFFIX
#undef C2L_F32_TARGET

typedef struct {
  void (*sgemm)(int, int, int, int, const float *, int, const float *, int, int, float *, int);
  void (*tile)(int, int, int, R_xlen_t, int, int, int, float *, const double *, const double *,
               const double *, const R_xlen_t *, const uint16_t *, const float *, const float *,
               float *, double *, float *, double *);
  void (*logpass)(R_xlen_t, float *);
  const char *name;
  int masks; /* the tile reads a dense gene's counts through spot masks (c2l_f32.h) */
} c2l_f32_kern;

/* The float kernels for this CPU (AVX-512 + FMA, AVX2 + FMA, else the portable copy). */
static c2l_f32_kern c2l_f32_pick(void);

/* want: 0 this CPU's best, 1 AVX-512, 2 AVX2, 3 the portable copy; one the CPU lacks gives
 * its best (the state's "kernel" attribute names the one in use). Lets the tests run every
 * copy on a machine that would only pick one. */
static c2l_f32_kern c2l_f32_pick_kind(int want) {
  c2l_f32_kern best = c2l_f32_pick();
#ifdef C2L_F32_X86
  if (want == 2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return (c2l_f32_kern){c2l_sgemm_avx2, c2l_tile_f32_avx2, c2l_logpass_f32_avx2, "avx2", 0};
#endif
  if (want == 3)
    return (c2l_f32_kern){c2l_sgemm_base, c2l_tile_f32_base, c2l_logpass_f32_base, "base", 0};
  return best;
}

static c2l_f32_kern c2l_f32_pick(void) {
#ifdef C2L_F32_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma"))
    return (c2l_f32_kern){c2l_sgemm_avx512, c2l_tile_f32_avx512, c2l_logpass_f32_avx512,
                          "avx512", 1};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return (c2l_f32_kern){c2l_sgemm_avx2, c2l_tile_f32_avx2, c2l_logpass_f32_avx2, "avx2", 0};
#endif
  return (c2l_f32_kern){c2l_sgemm_base, c2l_tile_f32_base, c2l_logpass_f32_base, "base", 0};
}

typedef struct c2l_state_s {
  int S, G, F, R, E;
  int *bstart;            /* E + 1 */
  int *spot_batch;        /* S */
  double *sigT;           /* F x G */
  int *xp, *xi;           /* CSC spots x genes */
  double *xv;
  int *hp;                /* E*G + 1: per (e, g) = e + g*E, distinct values */
  double *hv, *hc;        /* value, count */
  double lgx1;            /* sum lgamma(x + 1) */
  double hyp[C2L_NHYP];
  double *de, *alphad;    /* E */
  scn_guide gd;           /* the AutoNormal guide (svi.c) */
  /* scratch, allocated once */
  double *mw, *D, *dW, *ysacc, *lpspot;
  double *gxpart;         /* nblk x R x F: each spot block's share of d log p / d x_rf */
  double *xt;             /* F x R: x_rf transposed, per evaluation */
  double *spx;            /* S x 5 per-spot scratch of the local priors */
  double *cyd;            /* E: alpha_e log(alpha_e) - lgamma(alpha_e) */
  double *acc, *chunk_loss;
  double *a_eg, *hd, *hl;
  /* the histogram terms in running-sum form: (e, g) pairs sorted by their largest count <= 32
   * (hperm), nact[k] = how many have one > k; entries with values <= 32 sorted by value
   * (hs_j = position in hperm, hs_c = count; value v at hs_v0[v] .. hs_v0[v + 1] - 1); entries
   * with values > 32 by (e, g) (hb_ie, hb_v, hb_c) */
  int *hperm, nact[C2L_HMAX + 1], hs_v0[C2L_HMAX + 2], *hs_j, nhb, *hb_ie;
  double *hs_c, *hb_v, *hb_c, *hscr; /* hscr: 5 x E*G running sums */
  int nb, gb, nblock, nchunk;
  int *blk_s0, *blk_n, *blk_e, *chunk_b0;
  int *chunk_e0, *chunk_e1; /* batches of each chunk (its accumulators' rows) */
  int *ccur;                /* nchunk x G: each chunk's first non-zero per gene */
  double *red;              /* 6 x G: per-batch reduction of the chunks */
  double *tbuf; /* per-thread tile buffers, grown on demand, kept for the fit */
  double *nbzbuf; /* per-thread buffers of a fused step's local sites (c2l_eval), and lq */
  int nbzcap;
  int *tint;
  int tcap;
  /* precision = "single" (prec = 1): sig in float, per-thread float buffers, the kernels for
   * this CPU and whether the GEMMs go to the BLAS's sgemm (sgemm_blas) or to ours */
  int prec, sgemm_blas;
  int lean; /* minibatch training only: no full-size pass buffers, lean guide (c2l_build) */
  float *sigTf, *fbuf;
  int fcap;
  /* the counts again, block-major for the float pass: block b, gene g at bo[b * G + g] ..
   * bo[b * G + g + 1] - 1, local spot (bi) and value (bv), spots increasing */
  R_xlen_t *bo;
  uint16_t *bi;
  float *bv;
  c2l_f32_kern kern;
  /* minibatch training (spec: cell2location, Minibatch regime): the plate scale n / b on the
   * local terms and the likelihood (1 in full batch), and the current minibatch's state */
  double sc;
  int tl[6]; /* the tile settings of setup (for the minibatch states, never lean) */
  struct c2l_state_s *sub;
  int *rp, *rg; /* the counts by spot (CSR), made at the first minibatch: spot s's genes */
  double *rv;   /* rg[rp[s] .. rp[s + 1] - 1] and values rv */
} c2l_state;

/* ---- state ---------------------------------------------------------------------------- */

static void c2l_free(c2l_state *st) {
  if (!st) return;
  void *ptrs[] = {st->bstart, st->spot_batch, st->sigT, st->xp, st->xi, st->xv, st->hp, st->hv,
                  st->hc, st->de, st->alphad, st->mw, st->D, st->dW, st->ysacc, st->lpspot, st->spx, st->cyd, st->acc,
                  st->chunk_loss, st->a_eg, st->hd, st->hl, st->blk_s0, st->blk_n, st->blk_e,
                  st->chunk_b0, st->tbuf, st->tint, st->hperm, st->hs_j, st->hb_ie, st->hs_c,
                  st->hb_v, st->hb_c, st->hscr, st->chunk_e0, st->chunk_e1, st->ccur, st->red,
                  st->sigTf, st->fbuf, st->bo, st->bi, st->bv, st->gxpart, st->xt, st->nbzbuf};
  for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
  scn_guide_free(&st->gd);
  c2l_free(st->sub);
  free(st->rp), free(st->rg), free(st->rv);
  free(st);
}

static void c2l_finalizer(SEXP ptr) {
  c2l_state *st = (c2l_state *)R_ExternalPtrAddr(ptr);
  c2l_free(st);
  R_ClearExternalPtr(ptr);
}

static c2l_state *c2l_get(SEXP ptr) { return scn_state_get(ptr, "cell2location"); }

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The running-sum form of the histograms (see c2l_state); 0 when out of memory. */
static int c2l_hist_index(c2l_state *st) {
  const R_xlen_t EG = (R_xlen_t)st->E * st->G;
  const int *hp = st->hp;
  const double *hv = st->hv;
  int *vmax = malloc(((size_t)EG + 1) * sizeof(int)), cntv[C2L_HMAX + 2];
  if (!vmax) return 0;
  int ns = 0, nbig = 0;
  memset(cntv, 0, sizeof cntv);
  for (R_xlen_t ie = 0; ie < EG; ie++) {
    vmax[ie] = 0;
    for (int h = hp[ie]; h < hp[ie + 1]; h++) {
      if (hv[h] <= C2L_HMAX) {
        int v = (int)hv[h];
        vmax[ie] = v > vmax[ie] ? v : vmax[ie];
        cntv[v]++;
        ns++;
      } else {
        nbig++;
      }
    }
  }
  st->hs_j = malloc(((size_t)ns + 1) * sizeof(int));
  st->hs_c = malloc(((size_t)ns + 1) * sizeof(double));
  st->hb_ie = malloc(((size_t)nbig + 1) * sizeof(int));
  st->hb_v = malloc(((size_t)nbig + 1) * sizeof(double));
  st->hb_c = malloc(((size_t)nbig + 1) * sizeof(double));
  if (!st->hs_j || !st->hs_c || !st->hb_ie || !st->hb_v || !st->hb_c) {
    free(vmax);
    return 0;
  }
  /* (e, g) by decreasing largest small count (a counting sort; ties in (e, g) order) */
  int pos[C2L_HMAX + 2], np = 0;
  for (int k = 0; k <= C2L_HMAX; k++) st->nact[k] = 0;
  for (R_xlen_t ie = 0; ie < EG; ie++)
    for (int k = 0; k < vmax[ie]; k++) st->nact[k]++;
  for (int v = C2L_HMAX; v >= 1; v--) {
    pos[v] = np;
    np += st->nact[v - 1] - (v < C2L_HMAX ? st->nact[v] : 0);
  }
  int *jof = vmax; /* reused: vmax[ie] -> position of ie in hperm */
  for (R_xlen_t ie = 0; ie < EG; ie++) {
    int v = vmax[ie];
    if (v > 0) {
      st->hperm[pos[v]] = (int)ie;
      jof[ie] = pos[v]++;
    } else {
      jof[ie] = -1;
    }
  }
  st->hs_v0[1] = 0;
  for (int v = 1; v <= C2L_HMAX; v++) st->hs_v0[v + 1] = st->hs_v0[v] + cntv[v];
  for (int v = 1; v <= C2L_HMAX; v++) pos[v] = st->hs_v0[v];
  int nb = 0;
  for (R_xlen_t ie = 0; ie < EG; ie++) {
    for (int h = hp[ie]; h < hp[ie + 1]; h++) {
      if (hv[h] <= C2L_HMAX) {
        int q = pos[(int)hv[h]]++;
        st->hs_j[q] = jof[ie];
        st->hs_c[q] = st->hc[h];
      } else {
        st->hb_ie[nb] = (int)ie;
        st->hb_v[nb] = hv[h];
        st->hb_c[nb++] = st->hc[h];
      }
    }
  }
  st->nhb = nb;
  free(vmax);
  return 1;
}

/* st->rp, rg, rv := the counts by spot (CSR of spots x genes) from the CSC xp, xi, xv, so that a
 * minibatch's counts are gathered in O(its non-zeros). 0: out of memory. */
static int c2l_spot_major(c2l_state *st, const int *xp, const int *xi, const double *xv) {
  const int S = st->S, G = st->G;
  const R_xlen_t nnz = xp[G];
  int *rp = malloc(((size_t)S + 1) * sizeof(int)), *rg = malloc((nnz + 1) * sizeof(int));
  double *rv = malloc((nnz + 1) * sizeof(double));
  int *at = malloc(((size_t)S + 1) * sizeof(int));
  if (!rp || !rg || !rv || !at) {
    free(rp), free(rg), free(rv), free(at);
    return 0;
  }
  memset(rp, 0, ((size_t)S + 1) * sizeof(int));
  for (R_xlen_t k = 0; k < nnz; k++) rp[xi[k] + 1]++;
  for (int s = 0; s < S; s++) rp[s + 1] += rp[s];
  memcpy(at, rp, (size_t)S * sizeof(int));
  for (int g = 0; g < G; g++)
    for (int k = xp[g]; k < xp[g + 1]; k++) {
      int q = at[xi[k]]++;
      rg[q] = g, rv[q] = xv[k];
    }
  free(at);
  st->rp = rp, st->rg = rg, st->rv = rv;
  return 1;
}

/* A state from the setup's arrays (see scnative_c2l_setup); an R error on bad input. */
static c2l_state *c2l_build(const int *xp_, const int *xi_, const double *xv_, R_xlen_t nnz_,
                            const int *d, const int *bs_, const double *sigT_, const double *hyp_,
                            const double *de_, const double *alphad_, const int *tl, int ntl) {
  int S = d[0], G = d[1], F = d[2], R = d[3], E = d[4];
  /* Guards (R's validate_fit() checks fits first; these keep a damaged object from reaching
   * the passes below, which index with these values unchecked): sizes, batch ranges covering
   * all spots, the CSC structure (row indices increasing within a column: the tile pass
   * searches them) and values of the counts. O(spots + non-zeros). */
  if (S < 1 || G < 1 || F < 1 || R < 1 || E < 1)
    error(_("the cell2location model's sizes are invalid (a damaged fit?)"));
  {
    const int *b = bs_, *p = xp_, *ix = xi_;
    const double *v = xv_;
    if (b[0] != 0 || b[E] != S) error(_("the batches do not cover the spots (a damaged fit?)"));
    for (int e = 0; e < E; e++)
      if (b[e + 1] < b[e]) error(_("the batches do not cover the spots (a damaged fit?)"));
    if (p[0] != 0 || (R_xlen_t)p[G] != nnz_)
      error(_("the counts' column pointers do not match their row indices (an invalid dgCMatrix?)"));
    for (int g = 0; g < G; g++)
      if (p[g + 1] < p[g]) error(_("the counts' column pointers decrease (an invalid dgCMatrix?)"));
    for (int g = 0; g < G; g++) {
      for (int q = p[g]; q < p[g + 1]; q++) {
        if (ix[q] < 0 || ix[q] >= S || (q > p[g] && ix[q] <= ix[q - 1]))
          error(_("the counts' row indices are out of range or not increasing (an invalid dgCMatrix?)"));
        if (!(v[q] >= 0.0) || !R_FINITE(v[q])) error(_("the counts must be finite and non-negative"));
      }
    }
  }
  c2l_state *st = calloc(1, sizeof *st);
  if (!st) error(_("out of memory"));
  st->S = S, st->G = G, st->F = F, st->R = R, st->E = E;
  R_xlen_t nnz = nnz_, EG = (R_xlen_t)E * G;
  R_xlen_t sizes[C2L_NSITE] = {1, 1, G, S, S, (R_xlen_t)S * R, R, (R_xlen_t)R * F,
                               (R_xlen_t)S * F, E, S, 1, E, E, EG, 1, EG};
  /* tiles */
  int nb = tl[0], gb = tl[1];
  if (nb < 1) nb = 128;
  if (gb < 1) {
    gb = (int)(C2L_GEMM_MNK / ((double)nb * F));
    if (gb < 16) gb = 16;
  }
  if (gb > G) gb = G;
  st->nb = nb, st->gb = gb;
  st->prec = ntl >= 4 && tl[2] == 1;
  /* lean (tiles[5] = 1): a state that only trains in minibatches. Its own likelihood pass never
   * runs (each step builds the minibatch's state, c2l_mb_state), so the block-major copy, the
   * histograms, the S x F pass buffers and the guide's per-step arrays are not made. */
  const int lean = st->lean = ntl >= 5 && tl[4] == 1;
  const R_xlen_t SFl = lean ? 1 : (R_xlen_t)S * F;
  st->sc = 1.0;
  if (st->prec && nb > 4096) nb = st->nb = 4096; /* local spot indices are 16-bit */
  st->kern = c2l_f32_pick_kind(ntl >= 6 ? tl[5] : 0);
  {
    int gm = ntl >= 4 ? tl[3] : 0;
    /* automatic: ours (register-blocked, vectorised for the CPU); the BLAS's sgemm only when
     * asked for (it may have been built for an older CPU, e.g. OpenBLAS's SSE3 kernels) */
    st->sgemm_blas = gm == 1 && scn_have_sgemm();
  }
  const int *bs = bs_;
  int nblock = 0;
  for (int e = 0; e < E; e++) nblock += (bs[e + 1] - bs[e] + nb - 1) / nb;
  st->nblock = nblock;
  st->nchunk = nblock < C2L_MAXCHUNK ? nblock : C2L_MAXCHUNK;
  if (st->nchunk < 1) st->nchunk = 1;
  int ok = 1;
#define C2L_ALLOC(p, n, T) \
  do { \
    p = malloc(((size_t)(n) > 0 ? (size_t)(n) : 1) * sizeof(T)); \
    if (!p) ok = 0; \
  } while (0)
  C2L_ALLOC(st->bstart, E + 1, int);
  C2L_ALLOC(st->spot_batch, S, int);
  C2L_ALLOC(st->sigT, (R_xlen_t)F * G, double);
  if (!lean) { /* a lean state keeps the counts by spot only (c2l_spot_major, below) */
    C2L_ALLOC(st->xp, G + 1, int);
    C2L_ALLOC(st->xi, nnz, int);
    C2L_ALLOC(st->xv, nnz, double);
  }
  C2L_ALLOC(st->hp, EG + 1, int);
  C2L_ALLOC(st->de, E, double);
  C2L_ALLOC(st->alphad, E, double);
  if (!scn_guide_alloc2(&st->gd, C2L_NSITE, sizes, lean)) ok = 0;
  st->gd.f32 = st->prec; /* a float32 fit samples its guide in float, as torch does */
  if (ok && !lean) { /* n_s, b_s, z_sr (contiguous) are sampled and updated in c2l_eval */
    st->gd.fa = st->gd.off[S_NS];
    st->gd.fb = st->gd.off[S_K];
  }
  C2L_ALLOC(st->mw, SFl, double);
  C2L_ALLOC(st->D, SFl, double);
  C2L_ALLOC(st->xt, (R_xlen_t)R * F, double);
  C2L_ALLOC(st->gxpart, lean ? 1 : (R_xlen_t)((S + C2L_SPOT_BLOCK - 1) / C2L_SPOT_BLOCK) * R * F,
            double);
  C2L_ALLOC(st->dW, SFl, double);
  C2L_ALLOC(st->ysacc, S, double);
  C2L_ALLOC(st->lpspot, S, double);
  C2L_ALLOC(st->spx, (R_xlen_t)S * 5, double);
  C2L_ALLOC(st->cyd, E, double);
  C2L_ALLOC(st->acc, (R_xlen_t)st->nchunk * C2L_NACC * EG, double);
  C2L_ALLOC(st->chunk_loss, st->nchunk, double);
  C2L_ALLOC(st->a_eg, EG, double);
  C2L_ALLOC(st->hd, EG, double);
  C2L_ALLOC(st->hl, EG, double);
  C2L_ALLOC(st->blk_s0, nblock, int);
  C2L_ALLOC(st->blk_n, nblock, int);
  C2L_ALLOC(st->blk_e, nblock, int);
  C2L_ALLOC(st->chunk_b0, st->nchunk + 1, int);
  C2L_ALLOC(st->chunk_e0, st->nchunk, int);
  C2L_ALLOC(st->chunk_e1, st->nchunk, int);
  C2L_ALLOC(st->ccur, (R_xlen_t)st->nchunk * G, int);
  C2L_ALLOC(st->red, (R_xlen_t)6 * G, double);
  C2L_ALLOC(st->hperm, EG, int);
  C2L_ALLOC(st->hscr, 5 * EG, double);
  if (st->prec) C2L_ALLOC(st->sigTf, (R_xlen_t)F * G, float);
  if (!ok) {
    c2l_free(st);
    error(_("out of memory allocating the cell2location state"));
  }
  memcpy(st->bstart, bs, (E + 1) * sizeof(int));
  for (int e = 0; e < E; e++)
    for (int s = bs[e]; s < bs[e + 1]; s++) st->spot_batch[s] = e;
  memcpy(st->sigT, sigT_, (size_t)F * G * sizeof(double));
  if (st->prec)
    for (R_xlen_t i = 0; i < (R_xlen_t)F * G; i++) st->sigTf[i] = (float)st->sigT[i];
  if (lean) {
    if (!c2l_spot_major(st, xp_, xi_, xv_)) {
      c2l_free(st);
      error(_("out of memory allocating the cell2location state"));
    }
  } else {
    memcpy(st->xp, xp_, (G + 1) * sizeof(int));
    memcpy(st->xi, xi_, nnz * sizeof(int));
    memcpy(st->xv, xv_, nnz * sizeof(double));
  }
  memcpy(st->hyp, hyp_, C2L_NHYP * sizeof(double));
  memcpy(st->de, de_, E * sizeof(double));
  memcpy(st->alphad, alphad_, E * sizeof(double));
  for (int e = 0; e < E; e++) st->cyd[e] = st->alphad[e] * log(st->alphad[e]) - scn_lgamma(st->alphad[e]);
  /* blocks and chunks */
  int b = 0;
  for (int e = 0; e < E; e++)
    for (int s = bs[e]; s < bs[e + 1]; s += nb, b++) {
      st->blk_s0[b] = s;
      st->blk_n[b] = (bs[e + 1] - s) < nb ? (bs[e + 1] - s) : nb;
      st->blk_e[b] = e;
    }
  if (st->prec && !lean) { /* the block-major copy of the counts */
    st->bo = malloc(((size_t)nblock * G + 1) * sizeof(R_xlen_t));
    st->bi = calloc((size_t)nnz + 16, sizeof(uint16_t)); /* 16 of slack (c2l_f32.h) */
    st->bv = calloc((size_t)nnz + 16, sizeof(float));
    int *sblk = malloc(((size_t)S + 1) * sizeof(int));
    if (!st->bo || !st->bi || !st->bv || !sblk) {
      free(sblk);
      c2l_free(st);
      error(_("out of memory allocating the cell2location state"));
    }
    for (int bb = 0; bb < nblock; bb++)
      for (int i = 0; i < st->blk_n[bb]; i++) sblk[st->blk_s0[bb] + i] = bb;
    R_xlen_t *bo = st->bo;
    memset(bo, 0, ((size_t)nblock * G + 1) * sizeof(R_xlen_t));
    for (int g = 0; g < G; g++)
      for (int q = st->xp[g]; q < st->xp[g + 1]; q++) bo[(R_xlen_t)sblk[st->xi[q]] * G + g + 1]++;
    for (R_xlen_t i = 0; i < (R_xlen_t)nblock * G; i++) bo[i + 1] += bo[i];
    for (int g = 0; g < G; g++) /* per (block, gene) in increasing spot order */
      for (int q = st->xp[g]; q < st->xp[g + 1]; q++) {
        int s = st->xi[q], bb = sblk[s];
        R_xlen_t at = bo[(R_xlen_t)bb * G + g]++;
        st->bi[at] = (uint16_t)(s - st->blk_s0[bb]);
        st->bv[at] = (float)st->xv[q];
      }
    for (R_xlen_t i = (R_xlen_t)nblock * G; i > 0; i--) bo[i] = bo[i - 1]; /* back to starts */
    bo[0] = 0;
    free(sblk);
    if (st->kern.masks) /* the dense pairs' spot indices become spot masks (c2l_f32.h) */
      for (int bb = 0; bb < nblock; bb++)
        for (int g = 0; g < G; g++) {
          R_xlen_t a = bo[(R_xlen_t)bb * G + g];
          c2l_dense_masks((int)(bo[(R_xlen_t)bb * G + g + 1] - a), st->blk_n[bb], st->bi + a);
        }
  }
  for (int c = 0; c <= st->nchunk; c++)
    st->chunk_b0[c] = (int)(((long)nblock * c) / st->nchunk);
  for (int c = 0; c < st->nchunk; c++) {
    int b0 = st->chunk_b0[c], b1 = st->chunk_b0[c + 1];
    st->chunk_e0[c] = b0 < b1 ? st->blk_e[b0] : 0;
    st->chunk_e1[c] = b0 < b1 ? st->blk_e[b1 - 1] : -1;
    int sfirst = b0 < b1 ? st->blk_s0[b0] : S;
    if (lean) continue; /* no pass, no cursors */
    for (int g = 0; g < G; g++) { /* first non-zero at or after sfirst */
      int lo = st->xp[g], hi = st->xp[g + 1];
      while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (st->xi[mid] < sfirst) lo = mid + 1; else hi = mid;
      }
      st->ccur[(R_xlen_t)c * G + g] = lo;
    }
  }
  /* lgamma(x + 1) and per-(batch, gene) histograms of non-zero counts */
  double lgx1 = 0.0, lgt[256];
  lgt[0] = 0.0;
  for (int v = 1; v < 256; v++) lgt[v] = lgt[v - 1] + log((double)v);
  for (R_xlen_t p = 0; p < nnz; p++) {
    double v = xv_[p];
    lgx1 += v < 256.0 ? lgt[(int)v] : scn_lgamma(v + 1.0);
  }
  st->lgx1 = lgx1;
  if (lean) return st;
  double *tmp = malloc(((size_t)S + 1) * sizeof(double));
  double *hv = malloc(((size_t)nnz + 1) * sizeof(double)), *hc = malloc(((size_t)nnz + 1) * sizeof(double));
  if (!tmp || !hv || !hc) {
    free(tmp), free(hv), free(hc);
    c2l_free(st);
    error(_("out of memory allocating the cell2location state"));
  }
  int nh = 0, cnt[256];
  for (int g = 0; g < G; g++) {
    int p = st->xp[g];
    for (int e = 0; e < E; e++) {
      st->hp[e + (R_xlen_t)g * E] = nh;
      int n = 0, vmax = 0;
      memset(cnt, 0, sizeof cnt);
      while (p < st->xp[g + 1] && st->xi[p] < bs[e + 1]) {
        double v = st->xv[p++];
        if (v < 256.0) {
          cnt[(int)v]++;
          if ((int)v > vmax) vmax = (int)v;
        } else {
          tmp[n++] = v;
        }
      }
      for (int v = 1; v <= vmax; v++)
        if (cnt[v]) {
          hv[nh] = v;
          hc[nh++] = cnt[v];
        }
      qsort(tmp, n, sizeof(double), cmp_double);
      for (int i = 0; i < n; i++) {
        if (i == 0 || tmp[i] != tmp[i - 1]) {
          hv[nh] = tmp[i];
          hc[nh++] = 1.0;
        } else {
          hc[nh - 1] += 1.0;
        }
      }
    }
  }
  st->hp[EG] = nh;
  free(tmp);
  /* shrink to fit; on failure keep the larger block */
  double *hv2 = realloc(hv, ((size_t)nh + 1) * sizeof(double));
  st->hv = hv2 ? hv2 : hv;
  double *hc2 = realloc(hc, ((size_t)nh + 1) * sizeof(double));
  st->hc = hc2 ? hc2 : hc;
  if (!c2l_hist_index(st)) {
    c2l_free(st);
    error(_("out of memory allocating the cell2location state"));
  }
  return st;
}

/* .Call(C_scnative_c2l_setup, xp, xi, xv, dims = c(S, G, F, R, E), bstart, sigT, hyper, de,
 *       alphad, tiles = c(nb, gb, precision, gemm[, lean[, kernel]])): precision 0 double,
 *       1 single; gemm (single only) 0 automatic, 1 the BLAS's sgemm, 2 ours; lean 1: a
 *       minibatch-only state (c2l_build); kernel (single only): c2l_f32_pick_kind; tiles =
 *       c(nb, gb) is double. The pointer's attribute "kernel" names the float kernels used. */
SEXP scnative_c2l_setup(SEXP xp, SEXP xi, SEXP xv, SEXP dims, SEXP bstart, SEXP sigT, SEXP hyper,
                        SEXP de, SEXP alphad, SEXP tiles) {
  if (!isInteger(dims) || XLENGTH(dims) != 5) SCN_INTERNAL_ERROR("dims");
  const int *d = INTEGER(dims);
  int G = d[1], F = d[2], E = d[4];
  if (!isInteger(xp) || XLENGTH(xp) != G + 1 || !isInteger(xi) || !isReal(xv) ||
      XLENGTH(xi) != XLENGTH(xv) || !isInteger(bstart) || XLENGTH(bstart) != E + 1 ||
      !isReal(sigT) || XLENGTH(sigT) != (R_xlen_t)F * G || !isReal(hyper) ||
      XLENGTH(hyper) != C2L_NHYP || !isReal(de) || XLENGTH(de) != E || !isReal(alphad) ||
      XLENGTH(alphad) != E || !isInteger(tiles) || XLENGTH(tiles) < 2 || XLENGTH(tiles) == 3 ||
      XLENGTH(tiles) > 6 || (XLENGTH(tiles) == 6 && (INTEGER(tiles)[5] < 0 ||
                                                      INTEGER(tiles)[5] > 3)))
    SCN_INTERNAL_ERROR("bad arguments");
  c2l_state *st = c2l_build(INTEGER(xp), INTEGER(xi), REAL(xv), XLENGTH(xi), d, INTEGER(bstart),
                            REAL(sigT), REAL(hyper), REAL(de), REAL(alphad), INTEGER(tiles),
                            (int)XLENGTH(tiles));
  st->tl[0] = INTEGER(tiles)[0], st->tl[1] = INTEGER(tiles)[1];
  st->tl[2] = XLENGTH(tiles) >= 4 ? INTEGER(tiles)[2] : 0;
  st->tl[3] = XLENGTH(tiles) >= 4 ? INTEGER(tiles)[3] : 0;
  st->tl[4] = 0;
  st->tl[5] = XLENGTH(tiles) >= 6 ? INTEGER(tiles)[5] : 0;
  SEXP ans = PROTECT(R_MakeExternalPtr(st, R_NilValue, R_NilValue));
  R_RegisterCFinalizerEx(ans, c2l_finalizer, TRUE);
  setAttrib(ans, install("kernel"), mkString(st->kern.name));
  UNPROTECT(1);
  return ans;
}

/* ---- the S x G likelihood pass -------------------------------------------------------- */

/* One tile (nb spots of batch e, genes g0..g1-1) after the forward GEMM (col = A). */
C2L_CLONES
static void c2l_tile_pass(const c2l_state *st, int s0, int nb, int e, int g0, int g1, double *buf,
                          const double *mg_, const double *seg, const double *ys,
                          double *ysacc, double *acc, int *cursor, double *scr, int *scri,
                          double *loss) {
  const int E = st->E;
  const R_xlen_t G = st->G;
  const int *xp = st->xp, *xi = st->xi;
  const double *xv = st->xv;
  double *scx = scr + nb, *scA = scr + 2 * nb, *scy = scr + 3 * nb;
  double lnz = 0.0;
  for (int g = g0; g < g1; g++) {
    double *col = buf + (R_xlen_t)(g - g0) * nb;
    const R_xlen_t ie = e + (R_xlen_t)g * E;
    const double mg = mg_[g], sg = seg[ie], ag = st->a_eg[ie];
    int k = 0, p = cursor[g];
    const int pend = xp[g + 1], s1 = s0 + nb;
    /* non-zero counts: gather, then corrections to the zero-count forms (vectorised) */
    while (p < pend && xi[p] < s1) {
      int sl = xi[p] - s0;
      scri[k] = sl;
      scx[k] = xv[p++];
      scA[k] = col[sl];
      scy[k++] = ys[sl];
    }
    cursor[g] = p;
    double cT = 0.0, cTA = 0.0, cQ = 0.0, cl = 0.0;
#pragma omp simd reduction(+ : cT, cTA, cQ, cl)
    for (int j = 0; j < k; j++) {
      double x = scx[j], A = scA[j], y = scy[j];
      double base = A * mg + sg, mu = base * y, apa = ag + mu;
      double inv = 1.0 / apa, rmu = 1.0 / mu;
      double dR = x * (rmu - inv), Tc = dR * y;
      cT += Tc;
      cTA += Tc * A;
      cQ -= x * inv;
      cl += x * scn_log_fast(mu * inv);
      scr[j] = dR * base;
      scA[j] = Tc * mg;
    }
    lnz += cl;
    for (int j = 0; j < k; j++) ysacc[scri[j]] += scr[j];
    double sL = 0.0, sI = 0.0, sT = 0.0, sTA = 0.0;
#pragma omp simd reduction(+ : sL, sI, sT, sTA)
    for (int i = 0; i < nb; i++) {
      double A = col[i], base = A * mg + sg, y = ys[i];
      double apa = ag + base * y;
      double L = scn_log_fast(apa), inv = 1.0 / apa;
      double Rr = -ag * inv, T = Rr * y;
      sL += L;
      sI += inv;
      sT += T;
      sTA += T * A;
      ysacc[i] += Rr * base;
      col[i] = T * mg;
    }
    for (int j = 0; j < k; j++) col[scri[j]] += scA[j];
    acc[g] += sL;
    acc[G + g] += sI;
    acc[2 * G + g] += sT + cT;
    acc[3 * G + g] += sTA + cTA;
    acc[4 * G + g] += cQ;
  }
  *loss += lnz;
}

/* One step k of the running sums over the first n (e, g) pairs (those with a count > k):
 * rd += 1 / (a + k), rl += log(a + k). */
C2L_CLONES
static void c2l_hist_step(int n, int k, const double *a, double *rd, double *rl) {
#pragma omp simd
  for (int j = 0; j < n; j++) {
    double t = a[j] + k;
    rd[j] += 1.0 / t;
    rl[j] += scn_log_fast(t);
  }
}

/* Per (e, g): a = 1 / o^2 and the histogram terms sum_x (digamma(a + x) - digamma(a)) (hd) and
 * sum_x (lgamma(a + x) - lgamma(a)) (hl) over the non-zero counts x of batch e and gene g
 * (spec 6.5). Counts <= 32 use the running sums sum_{k < x} 1 / (a + k) and log(a + k), one step
 * k at a time over all pairs that need it (vectorised); larger counts digamma and lgamma. */
static void c2l_hist_terms(c2l_state *st, const double *zo) {
  const R_xlen_t EG = (R_xlen_t)st->E * st->G;
  double *a_eg = st->a_eg, *hd = st->hd, *hl = st->hl;
  for (R_xlen_t ie = 0; ie < EG; ie++) {
    double o = zo[ie];
    a_eg[ie] = 1.0 / (o * o);
  }
  memset(hd, 0, EG * sizeof(double));
  memset(hl, 0, EG * sizeof(double));
  const int n0 = st->nact[0];
  double *as = st->hscr, *rd = as + EG, *rl = rd + EG, *sd = rl + EG, *sl = sd + EG;
  for (int j = 0; j < n0; j++) {
    as[j] = a_eg[st->hperm[j]];
    rd[j] = rl[j] = sd[j] = sl[j] = 0.0;
  }
  for (int k = 0; k < C2L_HMAX && st->nact[k] > 0; k++) {
    c2l_hist_step(st->nact[k], k, as, rd, rl);
    for (int h = st->hs_v0[k + 1]; h < st->hs_v0[k + 2]; h++) { /* counts equal to k + 1 */
      int j = st->hs_j[h];
      double c = st->hs_c[h];
      sd[j] += c * rd[j];
      sl[j] += c * rl[j];
    }
  }
  for (int j = 0; j < n0; j++) {
    hd[st->hperm[j]] = sd[j];
    hl[st->hperm[j]] = sl[j];
  }
  double dga = 0.0, lga = 0.0;
  for (int h = 0, last = -1; h < st->nhb; h++) {
    int ie = st->hb_ie[h];
    double a = a_eg[ie], v = st->hb_v[h], c = st->hb_c[h];
    if (ie != last) {
      dga = scn_digamma(a);
      lga = scn_lgamma(a);
      last = ie;
    }
    hd[ie] += c * (scn_digamma(a + v) - dga);
    hl[ie] += c * (scn_lgamma(a + v) - lga);
  }
}

/* The S x G pass in float (precision = "single"): per block, W (n x F) and y_s in float
 * (rows padded with zeros to ld, a multiple of 16), per tile the forward GEMM, the float
 * elementwise kernel and the backward GEMM into a float dW of the block; the block's dW and
 * y_s gradient go to the double arrays once. Per-gene sums, the loss and everything after are
 * double. Same chunks and order as the double pass, so the result does not depend on the
 * thread count. */
static void c2l_pass_f32(c2l_state *st, const double *z, int nth_c) {
  const int S = st->S, G = st->G, F = st->F, E = st->E;
  const R_xlen_t EG = (R_xlen_t)E * G, accsz = (R_xlen_t)C2L_NACC * EG;
  const double *zW = z + st->gd.off[S_W], *zm = z + st->gd.off[S_MG], *zs = z + st->gd.off[S_SEG],
               *zys = z + st->gd.off[S_YS];
  const int nchunk = st->nchunk, nb = st->nb, gb = st->gb, ld = (nb + 15) / 16 * 16;
  /* per thread: the tile, W and dW of the block, y_s and its gradient, the kernel's scratch
   * (20 ld + 16 floats, c2l_f32.h) */
  const size_t per = (size_t)ld * gb + 2 * (size_t)ld * F + 22 * (size_t)ld + 16;
  if (nth_c > st->fcap) {
    free(st->fbuf);
    st->fbuf = malloc((size_t)nth_c * per * sizeof(float));
    st->fcap = st->fbuf ? nth_c : 0;
    if (!st->fbuf) error(_("out of memory in the cell2location likelihood pass"));
  }
  const c2l_f32_kern kern = st->kern;
  const int blas = st->sgemm_blas;
  float *fbuf = st->fbuf;
#pragma omp parallel num_threads(nth_c)
  {
    int tid = omp_get_thread_num();
    float *buf = fbuf + (size_t)tid * per, *Wf = buf + (size_t)ld * gb, *dWf = Wf + (size_t)ld * F,
          *ysf = dWf + (size_t)ld * F, *yaf = ysf + ld, *scr = yaf + ld;
#pragma omp for schedule(dynamic, 1)
    for (int c = 0; c < nchunk; c++) {
      double *acc = st->acc + c * accsz;
      const int e0 = st->chunk_e0[c], e1 = st->chunk_e1[c];
      if (e1 >= e0)
        memset(acc + (R_xlen_t)e0 * C2L_NACC * G, 0,
               (size_t)(e1 - e0 + 1) * C2L_NACC * G * sizeof(double));
      double closs = 0.0;
      int b0 = st->chunk_b0[c], b1 = st->chunk_b0[c + 1];
      for (int b = b0; b < b1; b++) {
        int s0 = st->blk_s0[b], n = st->blk_n[b], e = st->blk_e[b];
        double *acce = acc + (R_xlen_t)e * C2L_NACC * G;
        const R_xlen_t *boff = st->bo + (R_xlen_t)b * G;
        for (int f = 0; f < F; f++) {
          float *wf = Wf + (R_xlen_t)f * ld;
          const double *zw = zW + s0 + (R_xlen_t)f * S;
          for (int i = 0; i < n; i++) wf[i] = (float)zw[i];
          for (int i = n; i < ld; i++) wf[i] = 0.0f;
        }
        memset(dWf, 0, (size_t)ld * F * sizeof(float));
        for (int i = 0; i < n; i++) ysf[i] = (float)zys[s0 + i], yaf[i] = 0.0f;
        for (int i = n; i < ld; i++) ysf[i] = 1.0f; /* finite terms for the padded gathers */
        for (int g0 = 0; g0 < G; g0 += gb) {
          int g1 = g0 + gb < G ? g0 + gb : G, gn = g1 - g0;
          const float *sg = st->sigTf + (R_xlen_t)g0 * F;
          if (blas)
            scn_sgemm('N', 'N', ld, gn, F, 1.0f, Wf, ld, sg, F, 0.0f, buf, ld);
          else
            kern.sgemm(0, ld, gn, F, Wf, ld, sg, F, 0, buf, ld);
          kern.tile(n, ld, E, G, e, g0, g1, buf, zm, zs, st->a_eg, boff, st->bi, st->bv, ysf, yaf,
                    acce, scr, &closs);
          if (blas)
            scn_sgemm('N', 'T', ld, F, gn, 1.0f, buf, ld, sg, F, 1.0f, dWf, ld);
          else
            kern.sgemm(1, ld, F, gn, buf, ld, sg, F, 1, dWf, ld);
        }
        for (int f = 0; f < F; f++) {
          double *dw = st->dW + s0 + (R_xlen_t)f * S;
          const float *df = dWf + (R_xlen_t)f * ld;
          for (int i = 0; i < n; i++) dw[i] = df[i];
        }
        for (int i = 0; i < n; i++) st->ysacc[s0 + i] = yaf[i];
      }
      st->chunk_loss[c] = closs;
    }
  }
}

static void c2l_likelihood(c2l_state *st, const double *z, int nth, double *lp_out) {
  const int S = st->S, G = st->G, F = st->F, E = st->E;
  const R_xlen_t EG = (R_xlen_t)E * G, accsz = (R_xlen_t)C2L_NACC * EG;
  const double sc = st->sc; /* plate scale (the local gradients are scaled by c2l_eval) */
  const double *zW = z + st->gd.off[S_W], *zm = z + st->gd.off[S_MG], *zs = z + st->gd.off[S_SEG],
               *zo = z + st->gd.off[S_O], *zys = z + st->gd.off[S_YS];
  double *gz = st->gd.gz;
  c2l_hist_terms(st, zo);
  memset(st->dW, 0, (size_t)S * F * sizeof(double));
  memset(st->ysacc, 0, (size_t)S * sizeof(double));
  const int nchunk = st->nchunk, nb = st->nb, gb = st->gb;
  int nth_c = scn_threads_for(nchunk, nth);
  /* per-thread scratch */
  size_t per = (size_t)nb * gb + 4 * (size_t)nb + 8;
  if (nth_c > st->tcap) {
    free(st->tbuf);
    free(st->tint);
    st->tbuf = malloc((size_t)nth_c * per * sizeof(double));
    st->tint = malloc((size_t)nth_c * ((size_t)G + nb + 24) * sizeof(int));
    st->tcap = nth_c;
    if (!st->tbuf || !st->tint) {
      free(st->tbuf), free(st->tint);
      st->tbuf = NULL, st->tint = NULL, st->tcap = 0;
      error(_("out of memory in the cell2location likelihood pass"));
    }
  }
  double *tbuf = st->tbuf;
  int *tint = st->tint;
  /* Each chunk accumulates per (e, g) for its own batches only: rows e0..e1 of its block of
   * accumulators, laid out [e][sum][g]. */
  if (st->prec) c2l_pass_f32(st, z, nth_c);
  else
#pragma omp parallel num_threads(nth_c)
  {
    int tid = omp_get_thread_num();
    double *buf = tbuf + (size_t)tid * per, *scr = buf + (size_t)nb * gb;
    int *cursor = tint + (size_t)tid * ((size_t)G + nb + 24), *scri = cursor + G;
#pragma omp for schedule(dynamic, 1)
    for (int c = 0; c < nchunk; c++) {
      double *acc = st->acc + c * accsz;
      const int e0 = st->chunk_e0[c], e1 = st->chunk_e1[c];
      if (e1 >= e0)
        memset(acc + (R_xlen_t)e0 * C2L_NACC * G, 0,
               (size_t)(e1 - e0 + 1) * C2L_NACC * G * sizeof(double));
      double closs = 0.0;
      int b0 = st->chunk_b0[c], b1 = st->chunk_b0[c + 1];
      memcpy(cursor, st->ccur + (R_xlen_t)c * G, (size_t)G * sizeof(int));
      for (int b = b0; b < b1; b++) {
        int s0 = st->blk_s0[b], n = st->blk_n[b], e = st->blk_e[b];
        double *acce = acc + (R_xlen_t)e * C2L_NACC * G;
        for (int g0 = 0; g0 < G; g0 += gb) {
          int g1 = g0 + gb < G ? g0 + gb : G, gn = g1 - g0;
          scn_dgemm('N', 'N', n, gn, F, 1.0, zW + s0, S, st->sigT + (R_xlen_t)g0 * F, F, 0.0,
                    buf, n);
          c2l_tile_pass(st, s0, n, e, g0, g1, buf, zm, zs, zys + s0, st->ysacc + s0, acce,
                        cursor, scr, scri, &closs);
          scn_dgemm('N', 'T', n, F, gn, 1.0, buf, n, st->sigT + (R_xlen_t)g0 * F, F, 1.0,
                    st->dW + s0, S);
        }
      }
      st->chunk_loss[c] = closs;
    }
  }
  /* reduce, per batch, the chunks that hold it, in chunk order; gradients per (e, g) */
  double *gm = gz + st->gd.off[S_MG], *gs = gz + st->gd.off[S_SEG], *go = gz + st->gd.off[S_O];
  double lp = -st->lgx1;
  for (int c = 0; c < nchunk; c++) lp += st->chunk_loss[c];
  double lp_eg = 0.0, *red = st->red, *gTA = red + C2L_NACC * (R_xlen_t)G;
  memset(gTA, 0, (size_t)G * sizeof(double));
  for (int e = 0; e < E; e++) {
    memset(red, 0, (size_t)C2L_NACC * G * sizeof(double));
    for (int c = 0; c < nchunk; c++) {
      if (e < st->chunk_e0[c] || e > st->chunk_e1[c]) continue;
      const double *acc = st->acc + c * accsz + (R_xlen_t)e * C2L_NACC * G;
      for (R_xlen_t i = 0; i < (R_xlen_t)C2L_NACC * G; i++) red[i] += acc[i];
    }
    const double ne = st->bstart[e + 1] - st->bstart[e];
    for (int g = 0; g < G; g++) {
      R_xlen_t ie = e + (R_xlen_t)g * E;
      double sL = red[g], sI = red[G + g], sT = red[2 * G + g], sTA = red[3 * G + g],
             sQ = red[4 * G + g];
      double a = st->a_eg[ie], la = log(a), Qsum;
      if (st->prec) { /* sL = sum log1p(mu / a), sI = sum mu / (a + mu) (c2l_f32.h) */
        lp_eg += st->hl[ie] - a * sL;
        Qsum = sI - sL + st->hd[ie] + sQ;
      } else {
        lp_eg += ne * a * la - a * sL + st->hl[ie];
        Qsum = ne * (la + 1.0) - sL - a * sI + st->hd[ie] + sQ;
      }
      double o = zo[ie];
      go[ie] += sc * (-2.0 / (o * o * o) * Qsum);
      gs[ie] += sc * sT;
      gTA[g] += sTA;
    }
  }
  for (int g = 0; g < G; g++) gm[g] += sc * gTA[g];
  lp += lp_eg;
  double *gw = gz + st->gd.off[S_W], *gys = gz + st->gd.off[S_YS];
  for (R_xlen_t i = 0; i < (R_xlen_t)S * F; i++) gw[i] += st->dW[i];
  for (int s = 0; s < S; s++) gys[s] += st->ysacc[s];
  *lp_out = lp;
}

/* C (n x m, ldc) += A (n x k, lda) B^T, B[j + l * ldb]: register blocks of 16 rows x 4
 * columns (n = a block of spots; k, m small), accumulated over l in a fixed order. */
#if defined(__GNUC__)
typedef double c2l_v8d __attribute__((vector_size(64)));
#define C2L_V8D_LOAD(v, p) memcpy(&(v), (p), sizeof(c2l_v8d))
#define C2L_V8D_STORE(p, v) memcpy((p), &(v), sizeof(c2l_v8d))
C2L_CLONES
static void c2l_small_gemm_nt(int n, int m, int k, const double *A, R_xlen_t lda,
                              const double *B, R_xlen_t ldb, double *C, R_xlen_t ldc) {
  int i0 = 0;
  for (; i0 + 16 <= n; i0 += 16) {
    for (int j0 = 0; j0 < m; j0 += 4) {
      const int nj = m - j0 < 4 ? m - j0 : 4;
      const double *b0 = B + j0, *b1 = b0 + (nj > 1), *b2 = b0 + (nj > 2 ? 2 : nj - 1),
                   *b3 = b0 + (nj > 3 ? 3 : nj - 1);
      c2l_v8d c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, d0 = {0}, d1 = {0}, d2 = {0}, d3 = {0};
      for (int l = 0; l < k; l++) {
        c2l_v8d a0, a1;
        C2L_V8D_LOAD(a0, A + i0 + l * lda);
        C2L_V8D_LOAD(a1, A + i0 + 8 + l * lda);
        const R_xlen_t o = l * ldb;
        c0 += a0 * b0[o], d0 += a1 * b0[o];
        c1 += a0 * b1[o], d1 += a1 * b1[o];
        c2 += a0 * b2[o], d2 += a1 * b2[o];
        c3 += a0 * b3[o], d3 += a1 * b3[o];
      }
      c2l_v8d cs[4] = {c0, c1, c2, c3}, ds[4] = {d0, d1, d2, d3};
      for (int j = 0; j < nj; j++) {
        double *cj = C + i0 + (R_xlen_t)(j0 + j) * ldc;
        c2l_v8d o0, o1;
        C2L_V8D_LOAD(o0, cj);
        C2L_V8D_LOAD(o1, cj + 8);
        o0 += cs[j], o1 += ds[j];
        C2L_V8D_STORE(cj, o0);
        C2L_V8D_STORE(cj + 8, o1);
      }
    }
  }
  for (; i0 < n; i0++)
    for (int j = 0; j < m; j++) {
      double acc = 0.0;
      for (int l = 0; l < k; l++) acc += A[i0 + l * lda] * B[j + l * ldb];
      C[i0 + (R_xlen_t)j * ldc] += acc;
    }
}

/* Gm (m x p, ldg) = A^T B over n rows: A n x m (lda), B n x p (ldb); per pair (j, q) a sum
 * over the rows in 8 lanes, then the lanes and the remaining rows in order. */
C2L_CLONES
static void c2l_small_gemm_tn(int n, int m, int p, const double *A, R_xlen_t lda,
                              const double *B, R_xlen_t ldb, double *Gm, R_xlen_t ldg) {
  const int n8 = n / 8 * 8;
  for (int q0 = 0; q0 < p; q0 += 4) {
    const int nq = p - q0 < 4 ? p - q0 : 4;
    for (int j0 = 0; j0 < m; j0 += 2) {
      const int nj = m - j0 < 2 ? m - j0 : 2;
      const double *a0p = A + (R_xlen_t)j0 * lda, *a1p = A + (R_xlen_t)(j0 + nj - 1) * lda;
      const double *bq[4];
      for (int q = 0; q < 4; q++) bq[q] = B + (R_xlen_t)(q0 + (q < nq ? q : nq - 1)) * ldb;
      c2l_v8d s00 = {0}, s01 = {0}, s02 = {0}, s03 = {0}, s10 = {0}, s11 = {0}, s12 = {0},
              s13 = {0};
      for (int i = 0; i < n8; i += 8) {
        c2l_v8d a0, a1, v0, v1, v2, v3;
        C2L_V8D_LOAD(a0, a0p + i);
        C2L_V8D_LOAD(a1, a1p + i);
        C2L_V8D_LOAD(v0, bq[0] + i);
        C2L_V8D_LOAD(v1, bq[1] + i);
        C2L_V8D_LOAD(v2, bq[2] + i);
        C2L_V8D_LOAD(v3, bq[3] + i);
        s00 += a0 * v0, s01 += a0 * v1, s02 += a0 * v2, s03 += a0 * v3;
        s10 += a1 * v0, s11 += a1 * v1, s12 += a1 * v2, s13 += a1 * v3;
      }
      c2l_v8d sv[2][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13}};
      for (int j = 0; j < nj; j++)
        for (int q = 0; q < nq; q++) {
          double t = 0.0;
          for (int i = 0; i < 8; i++) t += sv[j][q][i];
          const double *aj = A + (R_xlen_t)(j0 + j) * lda, *bqq = bq[q];
          for (int i = n8; i < n; i++) t += aj[i] * bqq[i];
          Gm[(j0 + j) + (R_xlen_t)(q0 + q) * ldg] = t;
        }
    }
  }
}
#else
static void c2l_small_gemm_nt(int n, int m, int k, const double *A, R_xlen_t lda,
                              const double *B, R_xlen_t ldb, double *C, R_xlen_t ldc) {
  for (int j = 0; j < m; j++)
    for (int l = 0; l < k; l++) {
      const double bj = B[j + l * ldb];
      for (int i = 0; i < n; i++) C[i + (R_xlen_t)j * ldc] += A[i + l * lda] * bj;
    }
}
static void c2l_small_gemm_tn(int n, int m, int p, const double *A, R_xlen_t lda,
                              const double *B, R_xlen_t ldb, double *Gm, R_xlen_t ldg) {
  for (int q = 0; q < p; q++)
    for (int j = 0; j < m; j++) {
      double t = 0.0;
      for (int i = 0; i < n; i++) t += A[i + (R_xlen_t)j * lda] * B[i + (R_xlen_t)q * ldb];
      Gm[j + (R_xlen_t)q * ldg] = t;
    }
}
#endif

/* The local hierarchy's products for spots s0 .. s0 + n - 1 (spec 6.3, item 10): mw = z x
 * (z: S x R, x: R x F, mw: S x F), and after the priors have filled D = d log p / d mw, the
 * chain rule gz_z += D x^T and the block's share of gx = z^T D. Small inner sizes (R groups,
 * F types): own register-blocked loops per block of spots rather than BLAS calls, whose own
 * threads would compete with ours. */
static void c2l_mw_block(int S, int F, int R, int s0, int n, const double *zb, R_xlen_t ld,
                         const double *xt, double *mw) {
  for (int f = 0; f < F; f++) memset(mw + s0 + (R_xlen_t)f * S, 0, (size_t)n * sizeof(double));
  c2l_small_gemm_nt(n, F, R, zb, ld, xt, F, mw + s0, S); /* xt = x^T (F x R) */
}

static void c2l_dmw_block(int S, int R, int F, int s0, int n, const double *zb, R_xlen_t ld,
                          const double *x, const double *D, double *gzb, double *gxk) {
  /* gz_z (n x R) += D (n x F) x^T: B[j + l * ldb] = x[r + f * R] with j = r, l = f, ldb = R */
  c2l_small_gemm_nt(n, R, F, D + s0, S, x, R, gzb, ld);
  c2l_small_gemm_tn(n, R, F, zb, ld, D + s0, S, gxk, R);
}

/* The sites n_s, b_s and z_sr of one block of spots: values, logs and gradients from the
 * block's first spot, z_sr's column r at r * ld (the global arrays with ld = S, or a block's
 * own buffers when the guide's step is fused, c2l_eval). */
typedef struct {
  const double *zn, *un, *zb, *ub, *zz, *uz;
  double *gn, *gb, *gzz;
  R_xlen_t ld;
} c2l_nbz;

/* The local priors of spots s0..s1-1 (spec 6.3, items 6-11): log densities per spot into
 * lpspot, their gradients, and D (d log p / d mw) for the two GEMMs that follow. Loops run over
 * spots innermost, so that they vectorise (the special functions are branch-free). */
C2L_CLONES
static void c2l_spot_block(c2l_state *st, const double *u, const double *z, const c2l_nbz *q,
                           int s0, int s1) {
  const int S = st->S, F = st->F, R = st->R;
  const double *h = st->hyp;
  const double Nc = h[3], vN = h[4], Bg = h[5], cw = h[7];
  double *gz = st->gd.gz;
  const R_xlen_t *off = st->gd.off, ld = q->ld;
  const double *zn = q->zn, *un = q->un, *zb = q->zb, *ub = q->ub, *zz = q->zz, *uz = q->uz,
               *zw = z + off[S_W], *uw = u + off[S_W], *zys = z + off[S_YS],
               *uys = u + off[S_YS], *zye = z + off[S_YE], *uye = u + off[S_YE];
  double *gn = q->gn, *gb = q->gb, *gzz = q->gzz, *gw = gz + off[S_W], *gys = gz + off[S_YS];
  const double lcw = log(cw), c0 = Nc * vN * log(vN) - scn_lgamma(Nc * vN) - scn_lgamma(Bg);
  double *l = st->lpspot, *al = st->spx, *be = al + S, *lbe = be + S, *s1v = lbe + S,
         *s2v = s1v + S;
  double lgd[C2L_SPOT_BLOCK], dgd[C2L_SPOT_BLOCK];
  const int nb = s1 - s0;
#pragma omp simd
  for (int j = 0; j < nb; j++) {
    int s = s0 + j;
    double n = zn[j], b = zb[j], a = b / R, lg, dg;
    scn_lgamma_digamma_fast(a, &lg, &dg);
    al[s] = a, be[s] = b / n, lbe[s] = ub[j] - un[j];
    lgd[j] = lg, dgd[j] = dg;
    l[s] = c0 + (Nc * vN - 1.0) * un[j] - vN * n + (Bg - 1.0) * ub[j] - b;
    s1v[s] = 0.0, s2v[s] = 0.0;
  }
  for (int r = 0; r < R; r++) {
    const R_xlen_t o = (R_xlen_t)r * ld;
#pragma omp simd
    for (int j = 0; j < nb; j++) {
      int s = s0 + j;
      double n = zn[j], zr = zz[o + j], uzr = uz[o + j], a = al[s], bb = be[s], lb = lbe[s];
      l[s] += a * lb + (a - 1.0) * uzr - bb * zr - lgd[j];
      gzz[o + j] = (a - 1.0) / zr - bb;
      s1v[s] += zr - n / R;
      s2v[s] += (lb + uzr - dgd[j]) / R + (n / R - zr) / n;
    }
  }
#pragma omp simd
  for (int j = 0; j < nb; j++) {
    int s = s0 + j;
    double n = zn[j], b = zb[j];
    gn[j] = (Nc * vN - 1.0) / n - vN + b / (n * n) * s1v[s];
    gb[j] = (Bg - 1.0) / b - 1.0 + s2v[s];
  }
  for (int f = 0; f < F; f++) {
    const R_xlen_t o = (R_xlen_t)f * S;
#pragma omp simd
    for (int j = 0; j < nb; j++) {
      int s = s0 + j;
      double cm = cw * st->mw[o + s], w = zw[o + s], lg, dg;
      scn_lgamma_digamma_fast(cm, &lg, &dg);
      l[s] += cm * lcw + (cm - 1.0) * uw[o + s] - cw * w - lg;
      gw[o + s] = (cm - 1.0) / w - cw;
      st->D[o + s] = cw * (lcw + uw[o + s] - dg);
    }
  }
  for (int j = 0; j < nb; j++) {
    int s = s0 + j, e = st->spot_batch[s];
    double ad = st->alphad[e], ye = zye[e];
    l[s] += st->cyd[e] - ad * uye[e] + (ad - 1.0) * uys[s] - ad * zys[s] / ye;
    gys[s] = (ad - 1.0) / zys[s] - ad / ye;
  }
}

/* log p(x, z) and gz = d log p / dz, for u (z = exp(u) given). */
static double c2l_eval(c2l_state *st, const double *u, const double *z, int nth) {
  const int S = st->S, G = st->G, F = st->F, R = st->R, E = st->E;
  const double *h = st->hyp;
  const double shM = h[0], rtM = h[1], lamM = h[2], kap = h[6], ay = h[8], ah = h[9],
               bh_ = h[10], aS = h[11], bS = h[12], aphi = h[13], bphi = h[14];
  /* plate scale (spec: cell2location, Minibatch regime): multiplies the local sites' log
   * densities and the likelihood; exactly 1 in full batch (products by 1 change nothing) */
  const double sc = st->sc;
  double *gz = st->gd.gz;
  {
    /* gz starts at zero, except the local sites that c2l_spot_block assigns for every spot
     * (n_s, b_s, z_sr; w_sf; y_s) before anything adds to them: one pass over S x F less */
    const R_xlen_t *o = st->gd.off;
    memset(gz, 0, (size_t)o[S_NS] * sizeof(double));
    memset(gz + o[S_K], 0, (size_t)(o[S_W] - o[S_K]) * sizeof(double));
    memset(gz + o[S_YE], 0, (size_t)(o[S_YS] - o[S_YE]) * sizeof(double));
    memset(gz + o[S_H], 0, (size_t)(st->gd.P - o[S_H]) * sizeof(double));
  }
#define U(j) (u + st->gd.off[j])
#define Z(j) (z + st->gd.off[j])
#define GZ(j) (gz + st->gd.off[j])
  double lp = 0.0;
  /* m_g hierarchy */
  {
    double M = Z(S_MMEAN)[0], uM = U(S_MMEAN)[0], tau = Z(S_MTAU)[0];
    double am = 1.0 / (tau * tau), rate = am / M, lrate = log(rate), lga = scn_lgamma(am),
           dga = scn_digamma(am);
    lp += scn_lgamma_pdf(M, uM, shM, rtM) + log(lamM) - lamM * tau;
    const double *zm = Z(S_MG), *um = U(S_MG);
    double *gm = GZ(S_MG), s1 = 0.0, s2 = 0.0, lpm = 0.0;
    for (int g = 0; g < G; g++) {
      lpm += am * lrate + (am - 1.0) * um[g] - rate * zm[g] - lga;
      gm[g] = (am - 1.0) / zm[g] - rate;
      s1 += zm[g] - M;
      s2 += lrate + 1.0 + um[g] - dga - zm[g] / M;
    }
    lp += lpm;
    GZ(S_MMEAN)[0] = (shM - 1.0) / M - rtM + am * s1 / (M * M);
    GZ(S_MTAU)[0] = -lamM - 2.0 / (tau * tau * tau) * s2;
  }
  /* k_r, x_rf */
  {
    const double *zk = Z(S_K), *uk = U(S_K), *zx = Z(S_X), *ux = U(S_X);
    double *gk = GZ(S_K), *gx = GZ(S_X);
    for (int r = 0; r < R; r++) {
      double k = zk[r], al = k / F, lga = scn_lgamma(al), dga = scn_digamma(al);
      lp += scn_lgamma_pdf(k, uk[r], kap, 1.0);
      double s = 0.0;
      for (int f = 0; f < F; f++) {
        double x = zx[r + f * R], lx = ux[r + f * R];
        lp += al * uk[r] + (al - 1.0) * lx - k * x - lga;
        gx[r + f * R] = (al - 1.0) / x - k;
        s += (uk[r] + lx - dga) / F + 1.0 / F - x;
      }
      gk[r] = (kap - 1.0) / k - 1.0 + s;
    }
  }
  /* local hierarchy per spot: n_s, b_s, z_sr, w_sf prior, y_s prior (blocks of spots) */
  {
    const double *zys = Z(S_YS), *zye = Z(S_YE), *uye = U(S_YE);
    const int nblk = (S + C2L_SPOT_BLOCK - 1) / C2L_SPOT_BLOCK;
    int nths = scn_threads_for(nblk, nth);
    for (int r = 0; r < R; r++)
      for (int f = 0; f < F; f++) st->xt[f + (R_xlen_t)r * F] = Z(S_X)[r + (R_xlen_t)f * R];
    /* In a fused step (scn_guide) the guide's sample and update of n_s, b_s and z_sr happen
     * here, per block of spots, in the block's own buffers (6 x (R + 2) x block, per thread):
     * those sites' values never go through memory between the sample, the priors and the
     * update. Their log q sums go per block into lqb (added in block order). Segment r of a
     * block (-2: n_s, -1: b_s, 0..R-1: z_sr's column r) is its n spots of one site. */
    scn_guide *gd = &st->gd;
    const int fused = gd->fused;
    if (fused && sc != 1.0) SCN_INTERNAL_ERROR("a fused step with a plate scale");
    const size_t per = 6 * (size_t)(R + 2) * C2L_SPOT_BLOCK;
    if (fused && nths > st->nbzcap) { /* once per fit (or when more threads are asked for) */
      free(st->nbzbuf);
      st->nbzbuf = malloc(((size_t)nths * per + nblk) * sizeof(double));
      st->nbzcap = st->nbzbuf ? nths : 0;
      if (!st->nbzbuf) error(_("out of memory in the cell2location local priors"));
    }
    double *lqb = fused ? st->nbzbuf + (size_t)st->nbzcap * per : NULL;
#pragma omp parallel num_threads(nths)
    {
      double *fb = fused ? st->nbzbuf + (size_t)omp_get_thread_num() * per : NULL;
#pragma omp for schedule(static)
      for (int k = 0; k < nblk; k++) {
        int s0 = k * C2L_SPOT_BLOCK, s1 = s0 + C2L_SPOT_BLOCK < S ? s0 + C2L_SPOT_BLOCK : S;
        const int n = s1 - s0;
        /* the thread's six buffers (eps, u, z, gz, ds, dsr), each of the block's segments */
        const R_xlen_t w = (R_xlen_t)(R + 2) * n;
        double *eps = NULL, *bu = NULL, *bz = NULL, *bg = NULL, *bds = NULL, *bdsr = NULL;
        if (fused)
          eps = fb, bu = fb + w, bz = fb + 2 * w, bg = fb + 3 * w, bds = fb + 4 * w,
          bdsr = fb + 5 * w;
        c2l_nbz q;
        if (fused) {
          double lqk = 0.0;
          for (int r = -2; r < R; r++) {
            const int j = r == -2 ? S_NS : r == -1 ? S_BS : S_Z;
            const R_xlen_t i0 = (r < 0 ? 0 : (R_xlen_t)r * S) + s0, o = (R_xlen_t)(r + 2) * n;
            lqk += scn_guide_fused_sample(gd, j, i0, n, eps + o, bu + o, bz + o, bds + o,
                                          bdsr + o);
          }
          lqb[k] = lqk;
          q = (c2l_nbz){bz, bu, bz + n, bu + n, bz + 2 * n, bu + 2 * n, bg, bg + n, bg + 2 * n, n};
        } else {
          const R_xlen_t *o = gd->off;
          q = (c2l_nbz){z + o[S_NS] + s0, u + o[S_NS] + s0, z + o[S_BS] + s0, u + o[S_BS] + s0,
                        z + o[S_Z] + s0,  u + o[S_Z] + s0,  gz + o[S_NS] + s0, gz + o[S_BS] + s0,
                        gz + o[S_Z] + s0, S};
        }
        c2l_mw_block(S, F, R, s0, n, q.zz, q.ld, st->xt, st->mw);
        c2l_spot_block(st, u, z, &q, s0, s1);
        c2l_dmw_block(S, R, F, s0, n, q.zz, q.ld, Z(S_X), st->D, q.gzz,
                      st->gxpart + (R_xlen_t)k * R * F);
        if (fused) /* the optimiser step of the block's segments, now that gz is complete */
          for (int r = -2; r < R; r++) {
            const int j = r == -2 ? S_NS : r == -1 ? S_BS : S_Z;
            const R_xlen_t a = gd->off[j] + (r < 0 ? 0 : (R_xlen_t)r * S) + s0,
                           o = (R_xlen_t)(r + 2) * n;
            scn_guide_fused_update(gd, a, n, eps + o, bz + o, bg + o, bds + o, bdsr + o);
          }
      }
    }
    if (fused)
      for (int k = 0; k < nblk; k++) gd->flq += lqb[k];
    for (int s = 0; s < S; s++) lp += sc * st->lpspot[s];
    /* x_rf: the blocks' shares in block order (independent of the thread count) */
    double *gx = GZ(S_X);
    for (int k = 0; k < nblk; k++) {
      const double *pk = st->gxpart + (R_xlen_t)k * R * F;
      for (R_xlen_t i = 0; i < (R_xlen_t)R * F; i++) gx[i] += sc * pk[i];
    }
    /* y_e */
    double *gye = GZ(S_YE);
    for (int e = 0; e < E; e++) {
      double ye = zye[e], ad = st->alphad[e], s1 = 0.0;
      lp += scn_lgamma_pdf(ye, uye[e], ay, ay / st->de[e]);
      for (int s = st->bstart[e]; s < st->bstart[e + 1]; s++) s1 += zys[s] - ye;
      gye[e] = (ay - 1.0) / ye - ay / st->de[e] + sc * (ad * s1 / (ye * ye));
    }
  }
  /* background and over-dispersion */
  {
    const double bh[4] = {ah, bh_, aS, bS};
    lp += scn_background_prior(E, G, Z(S_H)[0], U(S_H)[0], Z(S_SMEAN), U(S_SMEAN), Z(S_SINV),
                               Z(S_SEG), U(S_SEG), bh, GZ(S_H), GZ(S_SMEAN), GZ(S_SINV),
                               GZ(S_SEG));
    lp += scn_overdispersion_prior((R_xlen_t)E * G, Z(S_PHI)[0], U(S_PHI)[0], Z(S_O), aphi,
                                   bphi, GZ(S_PHI), GZ(S_O));
  }
  double lplik = 0.0;
  c2l_likelihood(st, z, nth, &lplik);
  if (sc != 1.0) { /* the local sites' gradients: priors and likelihood alike */
    static const int loc_sites[] = {S_NS, S_BS, S_Z, S_W, S_YS};
    for (int j = 0; j < 5; j++)
      for (R_xlen_t i = st->gd.off[loc_sites[j]]; i < st->gd.off[loc_sites[j] + 1]; i++)
        gz[i] *= sc;
  }
#undef U
#undef Z
#undef GZ
  return lp + sc * lplik;
}

/* ---- shims ---------------------------------------------------------------------------- */

/* .Call(C_scnative_c2l_set_params, ptr, loc, rho): also resets the Adam state. */
SEXP scnative_c2l_set_params(SEXP ptr, SEXP loc, SEXP rho) {
  return scn_guide_set_params(&c2l_get(ptr)->gd, loc, rho);
}

SEXP scnative_c2l_get_params(SEXP ptr) {
  c2l_state *st = c2l_get(ptr);
  return scn_guide_params_sexp(&st->gd);
}

static double c2l_logp(void *ctx, int nth) {
  c2l_state *st = (c2l_state *)ctx;
  return c2l_eval(st, st->gd.u, st->gd.z, nth);
}

/* .Call(C_scnative_c2l_train, ptr, n_epochs, epoch0, lr, optimizer, clip, lrd, seed, threads)
 * -> the loss (negative ELBO) of each epoch. epoch0 is the fit's epoch count so far (offset
 * of the random streams); the Adam step count continues from the state (set_params resets). */
SEXP scnative_c2l_train(SEXP ptr, SEXP n_epochs, SEXP epoch0, SEXP lr_, SEXP optimizer,
                        SEXP clip_, SEXP lrd_, SEXP seed_, SEXP threads) {
  c2l_state *st = c2l_get(ptr);
  if (st->lean) SCN_INTERNAL_ERROR("full-batch training on a minibatch-only state");
  int ne = asInteger(n_epochs), nth = asInteger(threads);
  scn_optim opt = {asReal(lr_), asReal(clip_), asReal(lrd_), asInteger(optimizer)};
  double ep0 = asReal(epoch0);
  uint64_t seed = scn_seed_from_sexp(seed_);
  SEXP ans = PROTECT(allocVector(REALSXP, ne));
  for (int it = 0; it < ne; it++)
    REAL(ans)[it] = scn_svi_step(&st->gd, c2l_logp, st, seed, ep0 + it, &opt, nth);
  UNPROTECT(1);
  return ans;
}

/* ---- minibatches (spec: cell2location, Minibatch regime) --------------------------------- */

static int cmp_int(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x > y) - (x < y);
}

/* Scratch of the minibatch states, allocated with R_alloc for one .Call. */
typedef struct {
  const int *rp, *rg; /* the state's counts by spot */
  const double *rv;
  int *xp, *xi;   /* the minibatch's counts (CSC, genes), capacity: all non-zeros */
  double *xv;
  int *bstart;    /* E + 1 */
  R_xlen_t *idx;  /* the minibatch guide's elements in the full guide */
  double scale[C2L_NSITE];
} c2l_mb_scratch;

static void c2l_mb_alloc(c2l_state *st, int bmax, c2l_mb_scratch *w) {
  const int S = st->S, G = st->G;
  /* the spot-major copy (made by c2l_build for a lean state, else here once and kept) */
  if (!st->rp && !c2l_spot_major(st, st->xp, st->xi, st->xv))
    error(_("out of memory allocating the cell2location minibatch index"));
  w->rp = st->rp, w->rg = st->rg, w->rv = st->rv;
  /* a minibatch holds at most the non-zeros of the bmax spots with the most (not all nnz:
   * at 200,000 spots that is 1/80 of them) */
  R_xlen_t cap = 0;
  {
    int *cnt = (int *)R_alloc(S, sizeof(int));
    for (int s = 0; s < S; s++) cnt[s] = st->rp[s + 1] - st->rp[s];
    qsort(cnt, S, sizeof(int), cmp_int);
    for (int s = S - 1; s >= 0 && s >= S - bmax; s--) cap += cnt[s];
  }
  w->xp = (int *)R_alloc(G + 1, sizeof(int));
  w->xi = (int *)R_alloc(cap + 1, sizeof(int));
  w->xv = (double *)R_alloc(cap + 1, sizeof(double));
  w->bstart = (int *)R_alloc(st->E + 1, sizeof(int));
  R_xlen_t pmax = st->gd.P - (R_xlen_t)(S - bmax) * (3 + st->R + st->F);
  w->idx = (R_xlen_t *)R_alloc(pmax > 0 ? pmax : 1, sizeof(R_xlen_t));
}

static int c2l_is_local(int j) {
  return j == S_NS || j == S_BS || j == S_Z || j == S_W || j == S_YS;
}

/* st->sub := the model on spots bsp[0..b-1] (increasing, so sorted by batch as the full
 * state's spots), with plate scale n / b; w->idx maps its guide into st's. O(non-zeros). */
static c2l_state *c2l_mb_state(c2l_state *st, const int *bsp, int b, double n,
                               c2l_mb_scratch *w) {
  const int S = st->S, G = st->G, E = st->E;
  /* counting sort of the minibatch's non-zeros by gene; rows increase within a gene because
   * the spots are visited in increasing order */
  memset(w->xp, 0, ((size_t)G + 1) * sizeof(int));
  for (int i = 0; i < b; i++)
    for (int k = w->rp[bsp[i]]; k < w->rp[bsp[i] + 1]; k++) w->xp[w->rg[k] + 1]++;
  for (int g = 0; g < G; g++) w->xp[g + 1] += w->xp[g];
  R_xlen_t q = w->xp[G];
  for (int i = 0; i < b; i++)
    for (int k = w->rp[bsp[i]]; k < w->rp[bsp[i] + 1]; k++) {
      int at = w->xp[w->rg[k]]++;
      w->xi[at] = i, w->xv[at] = w->rv[k];
    }
  for (int g = G; g > 0; g--) w->xp[g] = w->xp[g - 1]; /* back to starts */
  w->xp[0] = 0;
  for (int e = 0; e <= E; e++) w->bstart[e] = 0;
  for (int i = 0; i < b; i++) w->bstart[st->spot_batch[bsp[i]] + 1]++;
  for (int e = 0; e < E; e++) w->bstart[e + 1] += w->bstart[e];
  c2l_free(st->sub);
  st->sub = NULL;
  int d[5] = {b, G, st->F, st->R, E};
  st->sub = c2l_build(w->xp, w->xi, w->xv, q, d, w->bstart, st->sigT, st->hyp, st->de,
                      st->alphad, st->tl, 6);
  c2l_state *sb = st->sub;
  sb->sc = n / (double)b;
  for (int j = 0; j < C2L_NSITE; j++) {
    w->scale[j] = c2l_is_local(j) ? sb->sc : 1.0;
    R_xlen_t a = sb->gd.off[j], m = sb->gd.off[j + 1] - a, af = st->gd.off[j];
    if (c2l_is_local(j)) {
      int nc = (int)(m / b);
      for (int c = 0; c < nc; c++)
        for (int i = 0; i < b; i++) w->idx[a + (R_xlen_t)c * b + i] = af + (R_xlen_t)c * S + bsp[i];
    } else {
      for (R_xlen_t i = 0; i < m; i++) w->idx[a + i] = af + i;
    }
  }
  return sb;
}

/* .Call(C_scnative_c2l_train_mb, ptr, n_epochs, epoch0, opt = c(lr, clip, lrd, clipped),
 *       train = the training spots (0-based, the state's order), batch_size, seed, threads)
 * -> the loss of each epoch, the mean of its steps' losses (as scvi's elbo_train). Epoch k
 * (k = epoch0, epoch0 + 1, ...) shuffles the training spots with the permutation of counter k
 * of stream 1001 and cuts it into ceil(n / batch_size) minibatches (the last one smaller);
 * its step i draws the eps of step k * nsteps + i. The Adam step count continues from the
 * state (set_params resets it). */
SEXP scnative_c2l_train_mb(SEXP ptr, SEXP n_epochs, SEXP epoch0, SEXP opt_, SEXP train,
                           SEXP batch_size, SEXP seed_, SEXP threads) {
  c2l_state *st = c2l_get(ptr);
  int ne = asInteger(n_epochs), nth = asInteger(threads), bs = asInteger(batch_size);
  if (!isReal(opt_) || XLENGTH(opt_) != 4 || !isInteger(train) || XLENGTH(train) < 1 ||
      XLENGTH(train) > st->S || bs == NA_INTEGER || bs < 1 || ne == NA_INTEGER || ne < 0)
    SCN_INTERNAL_ERROR("train_mb arguments");
  const double *o = REAL(opt_);
  scn_optim opt = {o[0], o[1], o[2], (int)o[3]};
  const int n = (int)XLENGTH(train), *tr = INTEGER(train);
  {
    int *seen = (int *)R_alloc(st->S, sizeof(int));
    memset(seen, 0, (size_t)st->S * sizeof(int));
    for (int i = 0; i < n; i++) {
      if (tr[i] < 0 || tr[i] >= st->S || seen[tr[i]]) SCN_INTERNAL_ERROR("training spots");
      seen[tr[i]] = 1;
    }
  }
  if (bs > n) bs = n;
  const int nsteps = (n + bs - 1) / bs;
  double ep0 = asReal(epoch0);
  uint64_t seed = scn_seed_from_sexp(seed_);
  c2l_mb_scratch w;
  c2l_mb_alloc(st, bs, &w);
  int *perm = (int *)R_alloc(n, sizeof(int)), *bsp = (int *)R_alloc(bs, sizeof(int));
  double *un = (double *)R_alloc(n, sizeof(double));
  SEXP ans = PROTECT(allocVector(REALSXP, ne));
  for (int it = 0; it < ne; it++) {
    scn_rng_permutation(seed, 1001, (uint64_t)(ep0 + it), n, un, perm);
    double tot = 0.0;
    for (int k = 0; k < nsteps; k++) {
      int c0 = k * bs, b = c0 + bs < n ? bs : n - c0;
      for (int i = 0; i < b; i++) bsp[i] = tr[perm[c0 + i]];
      qsort(bsp, b, sizeof(int), cmp_int);
      c2l_state *sb = c2l_mb_state(st, bsp, b, (double)n, &w);
      tot += scn_svi_step_sub(&st->gd, &sb->gd, w.idx, w.scale, c2l_logp, sb, seed,
                              (ep0 + it) * nsteps + k, &opt, nth);
    }
    REAL(ans)[it] = tot / nsteps;
  }
  c2l_free(st->sub);
  st->sub = NULL;
  UNPROTECT(1);
  return ans;
}

/* .Call(C_scnative_c2l_logjoint, ptr, u, threads) -> list(logp, grad = d log p(x, exp(u)) / du)
 * (test helper: no guide terms, no +1 Jacobian). */
SEXP scnative_c2l_logjoint(SEXP ptr, SEXP u, SEXP threads) {
  c2l_state *st = c2l_get(ptr);
  if (st->lean) SCN_INTERNAL_ERROR("log joint of a minibatch-only state");
  if (!isReal(u) || XLENGTH(u) != st->gd.P) SCN_INTERNAL_ERROR("u length");
  scn_guide_set_u(&st->gd, REAL(u));
  double lp = c2l_logp(st, asInteger(threads));
  return scn_logjoint_sexp(&st->gd, lp);
}

/* .Call(C_scnative_c2l_logjoint_mb, ptr, u, threads, spots, n): the same on the minibatch of
 * `spots` (0-based, increasing) with plate scale n / length(spots); u of the minibatch's guide
 * (its local rows in the order of `spots`), the state built as in training. */
SEXP scnative_c2l_logjoint_mb(SEXP ptr, SEXP u, SEXP threads, SEXP spots, SEXP n) {
  c2l_state *st = c2l_get(ptr);
  if (!isInteger(spots) || XLENGTH(spots) < 1 || XLENGTH(spots) > st->S)
    SCN_INTERNAL_ERROR("spots");
  const int b = (int)XLENGTH(spots), *sp = INTEGER(spots);
  for (int i = 0; i < b; i++)
    if (sp[i] < 0 || sp[i] >= st->S || (i > 0 && sp[i] <= sp[i - 1]))
      SCN_INTERNAL_ERROR("spots must be increasing");
  c2l_mb_scratch w;
  c2l_mb_alloc(st, b, &w);
  c2l_state *ev = c2l_mb_state(st, sp, b, asReal(n), &w);
  if (!isReal(u) || XLENGTH(u) != ev->gd.P) SCN_INTERNAL_ERROR("u length");
  scn_guide_set_u(&ev->gd, REAL(u));
  double lp = c2l_logp(ev, asInteger(threads));
  SEXP ans = PROTECT(scn_logjoint_sexp(&ev->gd, lp));
  c2l_free(st->sub);
  st->sub = NULL;
  UNPROTECT(1);
  return ans;
}

/* ---- floor benchmark (bench/cell2location_floor32.R) ------------------------------------- */

C2L_CLONES
static void c2l_logpass_f64(R_xlen_t n, double *x) {
#pragma omp simd
  for (R_xlen_t i = 0; i < n; i++) x[i] = scn_log_fast(1.0 + x[i]);
}

/* CPU seconds of the calling thread where available (the bench machine is shared), else the
 * process's CPU time. */
static double c2l_now(void) {
#if defined(CLOCK_THREAD_CPUTIME_ID)
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return ts.tv_sec + 1e-9 * ts.tv_nsec;
#endif
  return (double)clock() / CLOCKS_PER_SEC;
}

/* .Call(C_scnative_c2l_floor, c(S, G, F, reps, nb, gb)) -> seconds per repetition of the parts
 * of one epoch's S x G pass at its floor, on the calling thread (CPU time): the two GEMMs (A = W sig^T,
 * S x F x G, and dW = A sig, S x G x F) at full size through the BLAS in double and in float
 * (NA without sgemm_), ours in float over nb x gb tiles (as the pass runs them) and the BLAS's
 * dgemm over the same tiles, and one vectorised log(1 + x) pass over S x G in double and in
 * float, from memory (one S x G array) and over one cache-resident tile repeated. Internal. */
SEXP scnative_c2l_floor(SEXP dims) {
  if (!isInteger(dims) || XLENGTH(dims) != 6) SCN_INTERNAL_ERROR("dims");
  const int *d = INTEGER(dims);
  const int S = d[0], G = d[1], F = d[2], reps = d[3], nb = d[4], gb = d[5];
  if (S < 16 || G < 1 || F < 1 || reps < 1 || nb < 16 || nb % 16 || gb < 1 || gb > G)
    SCN_INTERNAL_ERROR("sizes");
  const R_xlen_t SG = (R_xlen_t)S * G, SF = (R_xlen_t)S * F, FG = (R_xlen_t)F * G;
  double *W = malloc(SF * sizeof(double)), *sig = malloc(FG * sizeof(double)),
         *A = malloc(SG * sizeof(double)), *dW = malloc(SF * sizeof(double));
  float *Wf = malloc(SF * sizeof(float)), *sigf = malloc(FG * sizeof(float)),
        *Af = malloc(SG * sizeof(float)), *dWf = malloc(SF * sizeof(float));
  if (!W || !sig || !A || !dW || !Wf || !sigf || !Af || !dWf) {
    free(W), free(sig), free(A), free(dW), free(Wf), free(sigf), free(Af), free(dWf);
    error(_("out of memory"));
  }
  uint64_t r = 88172645463325252ULL;
  for (R_xlen_t i = 0; i < SF; i++) {
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    W[i] = (double)(r >> 11) / 9007199254740992.0, Wf[i] = (float)W[i];
  }
  for (R_xlen_t i = 0; i < FG; i++) {
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    sig[i] = (double)(r >> 11) / 9007199254740992.0, sigf[i] = (float)sig[i];
  }
  const c2l_f32_kern kern = c2l_f32_pick();
  SEXP ans = PROTECT(allocVector(REALSXP, 8));
  double *out = REAL(ans), t0;
  /* full-size BLAS, double and float: sig is F x G (the state's sigT) */
  t0 = c2l_now();
  for (int k = 0; k < reps; k++) {
    scn_dgemm('N', 'N', S, G, F, 1.0, W, S, sig, F, 0.0, A, S);
    scn_dgemm('N', 'T', S, F, G, 1.0, A, S, sig, F, 0.0, dW, S);
  }
  out[0] = (c2l_now() - t0) / reps;
  if (scn_have_sgemm()) {
    t0 = c2l_now();
    for (int k = 0; k < reps; k++) {
      scn_sgemm('N', 'N', S, G, F, 1.0f, Wf, S, sigf, F, 0.0f, Af, S);
      scn_sgemm('N', 'T', S, F, G, 1.0f, Af, S, sigf, F, 0.0f, dWf, S);
    }
    out[1] = (c2l_now() - t0) / reps;
  } else {
    out[1] = NA_REAL;
  }
  /* tiles, as the pass: rows s0.. of W copied to an nb x F block, per tile forward and backward */
  float *Wb = malloc((size_t)nb * F * sizeof(float)), *dWb = malloc((size_t)nb * F * sizeof(float));
  double *Wd = malloc((size_t)nb * F * sizeof(double)), *dWd = malloc((size_t)nb * F * sizeof(double));
  if (!Wb || !dWb || !Wd || !dWd) {
    free(Wb), free(dWb), free(Wd), free(dWd);
    free(W), free(sig), free(A), free(dW), free(Wf), free(sigf), free(Af), free(dWf);
    error(_("out of memory"));
  }
  t0 = c2l_now();
  for (int k = 0; k < reps; k++)
    for (int s0 = 0; s0 + nb <= S; s0 += nb) {
      for (int f = 0; f < F; f++) memcpy(Wb + (size_t)f * nb, Wf + s0 + (R_xlen_t)f * S, nb * sizeof(float));
      memset(dWb, 0, (size_t)nb * F * sizeof(float));
      for (int g0 = 0; g0 < G; g0 += gb) {
        int gn = g0 + gb < G ? gb : G - g0;
        kern.sgemm(0, nb, gn, F, Wb, nb, sigf + (R_xlen_t)g0 * F, F, 0, Af, nb);
        kern.sgemm(1, nb, F, gn, Af, nb, sigf + (R_xlen_t)g0 * F, F, 1, dWb, nb);
      }
    }
  out[2] = (c2l_now() - t0) / reps * ((double)S / (S - S % nb));
  t0 = c2l_now();
  for (int k = 0; k < reps; k++)
    for (int s0 = 0; s0 + nb <= S; s0 += nb) {
      for (int f = 0; f < F; f++) memcpy(Wd + (size_t)f * nb, W + s0 + (R_xlen_t)f * S, nb * sizeof(double));
      memset(dWd, 0, (size_t)nb * F * sizeof(double));
      for (int g0 = 0; g0 < G; g0 += gb) {
        int gn = g0 + gb < G ? gb : G - g0;
        scn_dgemm('N', 'N', nb, gn, F, 1.0, Wd, nb, sig + (R_xlen_t)g0 * F, F, 0.0, A, nb);
        scn_dgemm('N', 'T', nb, F, gn, 1.0, A, nb, sig + (R_xlen_t)g0 * F, F, 1.0, dWd, nb);
      }
    }
  out[3] = (c2l_now() - t0) / reps * ((double)S / (S - S % nb));
  /* one vectorised pass over S x G (values kept small so that they stay in range) */
  for (R_xlen_t i = 0; i < SG; i++) A[i] = (double)(i % 1000) * 1e-3, Af[i] = (float)A[i];
  t0 = c2l_now();
  for (int k = 0; k < reps; k++) c2l_logpass_f64(SG, A);
  out[4] = (c2l_now() - t0) / reps;
  t0 = c2l_now();
  for (int k = 0; k < reps; k++) kern.logpass(SG, Af);
  out[5] = (c2l_now() - t0) / reps;
  /* the same pass over one nb x gb tile held in cache, repeated to cover S x G (the pass's own
   * access pattern: each tile is fresh from the forward GEMM) */
  const R_xlen_t nt = (R_xlen_t)nb * gb, ntile = SG / nt;
  t0 = c2l_now();
  for (int k = 0; k < reps; k++)
    for (R_xlen_t t = 0; t < ntile; t++) c2l_logpass_f64(nt, A);
  out[6] = (c2l_now() - t0) / reps * ((double)SG / ((double)ntile * nt));
  t0 = c2l_now();
  for (int k = 0; k < reps; k++)
    for (R_xlen_t t = 0; t < ntile; t++) kern.logpass(nt, Af);
  out[7] = (c2l_now() - t0) / reps * ((double)SG / ((double)ntile * nt));
  free(Wb), free(dWb), free(Wd), free(dWd);
  free(W), free(sig), free(A), free(dW), free(Wf), free(sigf), free(Af), free(dWf);
  UNPROTECT(1);
  return ans;
}
