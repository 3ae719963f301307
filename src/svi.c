/* svi.c: the stochastic variational inference machinery shared by both cell2location models
 * (the spatial mapping model in cell2location.c and the reference regression model in
 * regression.c); spec/cell2location.md sections 3, 4 and 6.1.
 *
 *   guide      AutoNormal: every latent element has loc and rho, sigma = softplus(rho),
 *              u = loc + sigma * eps, z = exp(u) (spec 3.2); initial rho = softplus^-1(0.1).
 *   step       one reparameterised ELBO gradient step: draw eps, sample, evaluate the model's
 *              log p(x, z) and d log p / dz through a callback, form the loss (spec 4.4) and the
 *              gradients of loc and rho (spec 6.1), then one optimiser step.
 *   optimiser  torch Adam (upstream's default) or pyro ClippedAdam (spec 4.2).
 *   posterior  draws from the guide and their summaries (mean, sd, numpy-linear quantiles).
 *   special    thread-safe digamma / lgamma, softplus (the branch-free exp, log, log1p and
 *              lgamma + digamma that loops vectorise are in scnative.h).
 *
 * Cost: every step touches every parameter (a normal, softplus, exp, log and two Adam updates),
 * which matters next to the model's own pass when the data are small (S x F parameters against
 * an S x G likelihood). The per-parameter loops run over fixed pieces (threads) and are
 * vectorised (the square roots through the vector instructions, see scn_vsqrt). Profiled, they
 * are bound by their arithmetic (the special functions, divisions and square roots), so:
 *   - the sample keeps d sigma / d rho for the update instead of recomputing softplus there,
 *     and each Adam update has one division;
 *   - a float32 fit (g->f32, cell2location's precision = "single") does the arithmetic of the
 *     normals, the sample and Adam in float, as torch's float32 guide and optimiser do (twice
 *     the vector lanes, shorter polynomials), and keeps eps, the d sigma terms and Adam's
 *     moments as floats (SVI_F); loc, rho, u, z and gz stay double (the model's interface);
 *   - a model may take whole sites out of the step's loops (the fused range [fa, fb)) and
 *     sample and update them itself, block by block, while they are in cache
 *     (scn_guide_fused_sample / _update; cell2location's n_s, b_s and z_sr).
 *
 * Random numbers: eps of site j at step t is the block [t * n_j, (t + 1) * n_j) of the
 * counter-based stream 1 + j (rng.c), filled in fixed pieces, so a fit for a given seed does
 * not depend on the thread count.
 */
#include "scnative.h"

/* ---- special functions ---------------------------------------------------------------- */

double scn_digamma(double x) {
  double r = 0.0;
  while (x < 6.0) {
    r -= 1.0 / x;
    x += 1.0;
  }
  double f = 1.0 / (x * x);
  return r + log(x) - 0.5 / x -
         f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f / 132))));
}

double scn_lgamma(double x) {
  double p = 1.0;
  while (x < 10.0) {
    p *= x;
    x += 1.0;
  }
  double x2 = 1.0 / (x * x);
  double s = (1.0 / 12 - x2 * (1.0 / 360 - x2 * (1.0 / 1260 - x2 / 1680))) / x;
  return (x - 0.5) * log(x) - x + 0.91893853320467274178 + s - log(p);
}

/* ---- optimiser ------------------------------------------------------------------------ */

/* Per-step constants of torch Adam / pyro ClippedAdam at step t (1-based). */
typedef struct {
  double a, b, eps, clip; /* theta -= a * m / (sqrt(v) / b + eps); clip: Inf for torch Adam */
} adam_step;

static adam_step adam_consts(long t, double lr, int clipped, double clip) {
  const double b1 = 0.9, b2 = 0.999;
  double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
  adam_step c;
  c.eps = 1e-8, c.clip = clipped ? clip : HUGE_VAL;
  if (!clipped) {
    c.a = lr / bc1, c.b = sqrt(bc2);
  } else {
    c.a = lr * sqrt(bc2) / bc1, c.b = 1.0;
  }
  return c;
}

/* One optimiser step on n <= SVI_BLOCK elements: the moment updates and the parameter update
 * are vectorised loops around the square roots. */
#define SVI_BLOCK 256
static SCN_INLINE void adam_block(int n, double *theta, const double *grad, double *m, double *v,
                                  const adam_step *c, double *sq) {
  const double b1 = 0.9, b2 = 0.999, hi = c->clip, lo = -c->clip;
#pragma omp simd
  for (int i = 0; i < n; i++) {
    double g = grad[i];
    g = scn_blend(g > hi, hi, g);
    g = scn_blend(g < lo, lo, g);
    m[i] = b1 * m[i] + (1.0 - b1) * g;
    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
  }
  scn_vsqrt(n, v, sq);
  /* a m / (sqrt(v) / b + eps) as (a b) m / (sqrt(v) + b eps): one division, not two (equal
   * up to rounding; b = 1 for ClippedAdam, where it is the same expression) */
  const double ab = c->a * c->b, beps = c->b * c->eps;
#pragma omp simd
  for (int i = 0; i < n; i++) theta[i] -= ab * m[i] / (sq[i] + beps);
}

void scn_adam(R_xlen_t n, double *theta, const double *grad, double *m, double *v, long t,
              double lr, int clipped, double clip) {
  adam_step c = adam_consts(t, lr, clipped, clip);
  double sq[SVI_BLOCK];
  for (R_xlen_t i0 = 0; i0 < n; i0 += SVI_BLOCK) {
    int k = n - i0 < SVI_BLOCK ? (int)(n - i0) : SVI_BLOCK;
    adam_block(k, theta + i0, grad + i0, m + i0, v + i0, &c, sq);
  }
}

/* ---- the guide ------------------------------------------------------------------------ */

#define SVI_SITE_STREAM 1
/* A float32 guide (g->f32) keeps eps, ds, dsr and Adam's moments as floats, in the same
 * allocations (the first P floats of eps, ds and dsr, the first 2P of m and v): its loops move
 * half the bytes and convert nothing but loc, rho, u, z and gz. */
#define SVI_F(p) ((float *)(void *)(p))
/* The per-element loops of a step run over fixed pieces of the flat parameter vector; per-piece
 * partial sums are added in piece order, so the result does not depend on the thread count. */
#define SVI_PIECE 8192

/* Guides allocated and not yet freed: every model state owns one, so this counts the native
 * model states alive (tests check that interrupted and collected fits leave none). States are
 * made and freed on R's main thread only. */
static int live_guides = 0;

int scn_guide_alloc(scn_guide *g, int nsite, const R_xlen_t *sizes) {
  return scn_guide_alloc2(g, nsite, sizes, 0);
}

/* lean = 1: a guide that only holds the optimiser's state for minibatch steps
 * (scn_svi_step_sub, whose sub-guide samples): loc, rho, m, v, and u and z as the scattered
 * gradients; no eps, gz, ds, dsr (4 of 12 arrays: 530 MB at 200,000 spots). */
int scn_guide_alloc2(scn_guide *g, int nsite, const R_xlen_t *sizes, int lean) {
  memset(g, 0, sizeof *g);
  if (nsite < 1 || nsite > SCN_GUIDE_MAXSITE) return 0;
  g->nsite = nsite;
  g->off = malloc((size_t)(nsite + 1) * sizeof(R_xlen_t));
  if (!g->off) return 0;
  g->off[0] = 0;
  for (int j = 0; j < nsite; j++) g->off[j + 1] = g->off[j] + sizes[j];
  R_xlen_t P = g->P = g->off[nsite];
  size_t n = (size_t)(P > 0 ? P : 1), npiece = n / SVI_PIECE + 2; /* + the fused split */
  double *blk = malloc(((lean ? 8 : 12) * n + npiece) * sizeof(double));
  if (!blk) {
    free(g->off);
    g->off = NULL;
    return 0;
  }
  g->loc = blk, g->rho = blk + n, g->m = blk + 2 * n, g->v = blk + 4 * n;
  g->u = blk + 6 * n, g->z = blk + 7 * n;
  if (lean) {
    g->lqp = blk + 8 * n;
  } else {
    g->eps = blk + 8 * n, g->gz = blk + 9 * n, g->ds = blk + 10 * n, g->dsr = blk + 11 * n;
    g->lqp = blk + 12 * n;
  }
  for (R_xlen_t i = 0; i < P; i++) g->loc[i] = 0.0, g->rho[i] = -2.2521684610440906;
  g->fa = g->fb = P;
  scn_guide_reset_optim(g);
  live_guides++;
  return 1;
}

void scn_guide_free(scn_guide *g) {
  if (!g) return;
  if (g->loc) live_guides--;
  free(g->loc); /* the one block */
  free(g->off);
  g->loc = NULL, g->off = NULL;
}

void scn_guide_reset_optim(scn_guide *g) {
  memset(g->m, 0, 2 * (size_t)g->P * sizeof(double));
  memset(g->v, 0, 2 * (size_t)g->P * sizeof(double));
  g->t = 0;
}

static void svi_draw_eps(scn_guide *g, uint64_t seed, double step, const R_xlen_t *stride,
                         int skip_fused, int nth);

void scn_guide_draw_eps(scn_guide *g, uint64_t seed, double step, int nth) {
  svi_draw_eps(g, seed, step, g->off, 0, nth);
}

void scn_guide_draw_eps_at(scn_guide *g, uint64_t seed, double step, const R_xlen_t *stride,
                           int nth) {
  svi_draw_eps(g, seed, step, stride, 0, nth);
}

/* eps of site j: the first n_j numbers of block `step` of stream 1 + j, blocks of
 * stride[j + 1] - stride[j] numbers (the site's own size in a full step; the full guide's in a
 * minibatch step, so that the blocks of consecutive steps never overlap). */
static void svi_draw_eps(scn_guide *g, uint64_t seed, double step, const R_xlen_t *stride,
                         int skip_fused, int nth) {
  const R_xlen_t piece = 4096;
  const int ns = g->nsite;
  R_xlen_t npieces[SCN_GUIDE_MAXSITE], tot = 0;
  for (int j = 0; j < ns; j++) {
    R_xlen_t n = g->off[j + 1] - g->off[j];
    if (skip_fused && g->off[j] >= g->fa && g->off[j + 1] <= g->fb) n = 0; /* the model's */
    npieces[j] = (n + piece - 1) / piece;
    tot += npieces[j];
  }
  int nt = scn_threads_for(tot / 4 + 1, nth); /* a piece is ~10 us: 4 per thread at least */
#pragma omp parallel for num_threads(nt) schedule(static)
  for (R_xlen_t q = 0; q < tot; q++) {
    int j = 0;
    R_xlen_t k = q;
    while (k >= npieces[j]) k -= npieces[j++];
    R_xlen_t n = g->off[j + 1] - g->off[j], a = k * piece, b = a + piece < n ? a + piece : n;
    uint64_t off0 = (uint64_t)step * (uint64_t)(stride[j + 1] - stride[j]) + (uint64_t)a;
    if (g->f32)
      scn_rng_normals_f(seed, (uint64_t)(SVI_SITE_STREAM + j), off0, b - a,
                        SVI_F(g->eps) + g->off[j] + a);
    else
      scn_rng_normals(seed, (uint64_t)(SVI_SITE_STREAM + j), off0, b - a, g->eps + g->off[j] + a);
  }
}

/* sigma = softplus(rho) as torch (rho itself above 20) and d sigma / d rho = e / (1 + e),
 * sharing 1 / (1 + e) with log1p's correction (scn_log1p_fast). */
static SCN_INLINE void svi_softplus(double r, double *s, double *ds) {
  int64_t big = r > 20.0;
  double e = scn_exp_fast(scn_blend(big, 20.0, r)), w = 1.0 + e, iw = 1.0 / w;
  *s = scn_blend(big, r, scn_log_fast(w) - ((w - 1.0) - e) * iw);
  *ds = scn_blend(big, 1.0, e * iw);
}

/* The sample of n elements: u = loc + sigma * eps, z = exp(u), and for the update d sigma /
 * d rho and that over sigma (kept: the special functions and divisions, not the memory, bound
 * these passes, so the update reads them rather than recomputing softplus); returns sum
 * log q(u) + log |du/dz| without the constant. */
SCN_CLONES
static double svi_sample_piece(R_xlen_t n, const double *loc, const double *rho,
                               const double *eps, double *u, double *z, double *dsv,
                               double *dsr) {
  double lq = 0.0;
#pragma omp simd reduction(+ : lq)
  for (R_xlen_t i = 0; i < n; i++) {
    double s, ds;
    svi_softplus(rho[i], &s, &ds);
    double ep = eps[i], uu = loc[i] + s * ep;
    u[i] = uu;
    z[i] = scn_exp_fast(uu);
    dsv[i] = ds;
    dsr[i] = ds / s;
    lq += -0.5 * ep * ep - scn_log_fast(s) - uu;
  }
  return lq;
}

/* The same in float arithmetic (a float32 fit's guide, as torch samples it): sigma, u and z are
 * float values (u and z held in the double arrays), eps, ds and dsr floats; log q is summed in
 * double. */
static SCN_INLINE void svi_softplus_f(float r, float *s, float *ds) {
  int32_t big = r > 20.0f;
  float e = scn_expf_fast(scn_blendf(big, 20.0f, r)), w = 1.0f + e, iw = 1.0f / w;
  *s = scn_blendf(big, r, scn_logf_fast(w) - ((w - 1.0f) - e) * iw);
  *ds = scn_blendf(big, 1.0f, e * iw);
}

SCN_CLONES
static double svi_sample_piece_f(R_xlen_t n, const double *loc, const double *rho,
                                 const float *eps, double *u, double *z, float *dsv,
                                 float *dsr) {
  double lq = 0.0;
#pragma omp simd reduction(+ : lq)
  for (R_xlen_t i = 0; i < n; i++) {
    float s, ds;
    svi_softplus_f((float)rho[i], &s, &ds);
    float ep = eps[i], uu = (float)loc[i] + s * ep;
    u[i] = uu;
    z[i] = scn_expf_fast(uu);
    dsv[i] = ds;
    dsr[i] = ds / s;
    lq += (double)(-0.5f * ep * ep - scn_logf_fast(s) - uu);
  }
  return lq;
}

/* The sample of the guide's own elements a .. a + n - 1 */
static double svi_sample_at(scn_guide *g, R_xlen_t a, R_xlen_t n) {
  if (g->f32)
    return svi_sample_piece_f(n, g->loc + a, g->rho + a, SVI_F(g->eps) + a, g->u + a, g->z + a,
                              SVI_F(g->ds) + a, SVI_F(g->dsr) + a);
  return svi_sample_piece(n, g->loc + a, g->rho + a, g->eps + a, g->u + a, g->z + a, g->ds + a,
                          g->dsr + a);
}

/* The gradients of the loss in loc and rho (spec 6.1) and one optimiser step on both. */
SCN_CLONES
static void svi_update_piece(R_xlen_t n, double *loc, double *rho, const double *eps,
                             const double *z, const double *gz, const double *dsv,
                             const double *dsr, double *ml, double *vl, double *mr, double *vr,
                             const adam_step *c) {
  double gl[SVI_BLOCK], gr[SVI_BLOCK], sq[SVI_BLOCK];
  for (R_xlen_t i0 = 0; i0 < n; i0 += SVI_BLOCK) {
    int k = n - i0 < SVI_BLOCK ? (int)(n - i0) : SVI_BLOCK;
#pragma omp simd
    for (int j = 0; j < k; j++) {
      R_xlen_t i = i0 + j;
      double gu = z[i] * gz[i] + 1.0;
      gl[j] = -gu;
      gr[j] = -(gu * eps[i] * dsv[i] + dsr[i]); /* -(gu eps + 1 / sigma) d sigma / d rho */
    }
    adam_block(k, loc + i0, gl, ml + i0, vl + i0, c, sq);
    adam_block(k, rho + i0, gr, mr + i0, vr + i0, c, sq);
  }
}

/* The same in float arithmetic (a float32 fit, as torch's Adam steps its float32 parameters):
 * float moments, the step in float subtracted from the double parameters. */
static SCN_INLINE void adam_block_f(int n, double *theta, const float *grad, float *m, float *v,
                                    const adam_step *c, float *sq) {
  const float b1 = 0.9f, b2 = 0.999f, hi = (float)c->clip, lo = -hi;
  const float ab = (float)(c->a * c->b), beps = (float)(c->b * c->eps);
#pragma omp simd
  for (int i = 0; i < n; i++) {
    float g = grad[i];
    g = scn_blendf(g > hi, hi, g);
    g = scn_blendf(g < lo, lo, g);
    m[i] = b1 * m[i] + (1.0f - b1) * g;
    v[i] = b2 * v[i] + (1.0f - b2) * g * g;
  }
  scn_vsqrtf(n, v, sq);
#pragma omp simd
  for (int i = 0; i < n; i++) theta[i] -= ab * m[i] / (sq[i] + beps);
}

SCN_CLONES
static void svi_update_piece_f(R_xlen_t n, double *loc, double *rho, const float *eps,
                               const double *z, const double *gz, const float *dsv,
                               const float *dsr, float *ml, float *vl, float *mr, float *vr,
                               const adam_step *c) {
  float gl[SVI_BLOCK], gr[SVI_BLOCK], sq[SVI_BLOCK];
  for (R_xlen_t i0 = 0; i0 < n; i0 += SVI_BLOCK) {
    int k = n - i0 < SVI_BLOCK ? (int)(n - i0) : SVI_BLOCK;
#pragma omp simd
    for (int j = 0; j < k; j++) {
      R_xlen_t i = i0 + j;
      float gu = (float)(z[i] * gz[i]) + 1.0f;
      gl[j] = -gu;
      gr[j] = -(gu * eps[i] * dsv[i] + dsr[i]);
    }
    adam_block_f(k, loc + i0, gl, ml + i0, vl + i0, c, sq);
    adam_block_f(k, rho + i0, gr, mr + i0, vr + i0, c, sq);
  }
}

/* The gradients and optimiser step of the guide's own elements a .. a + n - 1 */
static void svi_update_at(scn_guide *g, R_xlen_t a, R_xlen_t n, const adam_step *c) {
  const R_xlen_t P = g->P;
  if (g->f32) {
    float *m = SVI_F(g->m), *v = SVI_F(g->v);
    svi_update_piece_f(n, g->loc + a, g->rho + a, SVI_F(g->eps) + a, g->z + a, g->gz + a,
                       SVI_F(g->ds) + a, SVI_F(g->dsr) + a, m + a, v + a, m + P + a, v + P + a,
                       c);
  } else {
    svi_update_piece(n, g->loc + a, g->rho + a, g->eps + a, g->z + a, g->gz + a, g->ds + a,
                     g->dsr + a, g->m + a, g->v + a, g->m + P + a, g->v + P + a, c);
  }
}

/* The pieces of a step's loops: [0, fa) then [fb, P) in pieces of SVI_PIECE (the fused
 * elements [fa, fb) are the model's); piece k starts at *a and has *n elements. */
static SCN_INLINE void svi_piece(const scn_guide *g, R_xlen_t np1, R_xlen_t k, R_xlen_t *a,
                                 R_xlen_t *n) {
  R_xlen_t s = k < np1 ? k * SVI_PIECE : g->fb + (k - np1) * SVI_PIECE,
           e = k < np1 ? g->fa : g->P;
  *a = s, *n = e - s < SVI_PIECE ? e - s : SVI_PIECE;
}

double scn_svi_step(scn_guide *g, scn_logp_fn logp, void *ctx, uint64_t seed, double step,
                    const scn_optim *opt, int nth) {
  static const double half_log_2pi = 0.91893853320467274178;
  const R_xlen_t P = g->P, np1 = (g->fa + SVI_PIECE - 1) / SVI_PIECE,
                 np = np1 + (P - g->fb + SVI_PIECE - 1) / SVI_PIECE;
  svi_draw_eps(g, seed, step, g->off, 1, nth); /* not the fused sites: the model draws them */
  int nt = scn_threads_for(np, nth);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (R_xlen_t k = 0; k < np; k++) {
    R_xlen_t a, n;
    svi_piece(g, np1, k, &a, &n);
    g->lqp[k] = svi_sample_at(g, a, n);
  }
  double lq = -half_log_2pi * (double)P;
  for (R_xlen_t k = 0; k < np; k++) lq += g->lqp[k];
  g->t++;
  double lr_t = opt->clipped ? opt->lr * pow(opt->lrd, (double)g->t) : opt->lr;
  adam_step c = adam_consts(g->t, lr_t, opt->clipped, opt->clip);
  g->fused = g->fb > g->fa, g->fseed = seed, g->fstep = step, g->flq = 0.0;
  g->fc[0] = c.a, g->fc[1] = c.b, g->fc[2] = c.eps, g->fc[3] = c.clip;
  double lp = logp(ctx, nth);
  g->fused = 0;
  lq += g->flq;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (R_xlen_t k = 0; k < np; k++) {
    R_xlen_t a, n;
    svi_piece(g, np1, k, &a, &n);
    svi_update_at(g, a, n, &c);
  }
  return -lp + lq;
}

double scn_guide_fused_sample(const scn_guide *g, int j, R_xlen_t i0, R_xlen_t n, double *eps,
                              double *u, double *z, double *ds, double *dsr) {
  const R_xlen_t nj = g->off[j + 1] - g->off[j], a = g->off[j] + i0;
  const uint64_t stream = (uint64_t)(SVI_SITE_STREAM + j),
                 off0 = (uint64_t)g->fstep * (uint64_t)nj + (uint64_t)i0;
  if (g->f32) {
    scn_rng_normals_f(g->fseed, stream, off0, n, SVI_F(eps));
    return svi_sample_piece_f(n, g->loc + a, g->rho + a, SVI_F(eps), u, z, SVI_F(ds), SVI_F(dsr));
  }
  scn_rng_normals(g->fseed, stream, off0, n, eps);
  return svi_sample_piece(n, g->loc + a, g->rho + a, eps, u, z, ds, dsr);
}

void scn_guide_fused_update(scn_guide *g, R_xlen_t a, R_xlen_t n, const double *eps,
                            const double *z, const double *gz, const double *ds,
                            const double *dsr) {
  const adam_step c = {g->fc[0], g->fc[1], g->fc[2], g->fc[3]};
  const R_xlen_t P = g->P;
  if (g->f32) {
    float *m = SVI_F(g->m), *v = SVI_F(g->v);
    const float *ef = (const float *)(const void *)eps, *df = (const float *)(const void *)ds,
                *rf = (const float *)(const void *)dsr;
    svi_update_piece_f(n, g->loc + a, g->rho + a, ef, z, gz, df, rf, m + a, v + a, m + P + a,
                       v + P + a, &c);
  } else {
    svi_update_piece(n, g->loc + a, g->rho + a, eps, z, gz, ds, dsr, g->m + a, g->v + a,
                     g->m + P + a, g->v + P + a, &c);
  }
}

/* One minibatch step (spec: cell2location, Minibatch regime). `sub` is the model's guide
 * over the minibatch: its element i is element idx[i] of the full guide `g`, and site j of
 * `sub` carries the plate scale scale[j] (n / b for the sites inside the subsampled plate, 1
 * for the global ones). The minibatch's loc and rho are gathered into `sub`, its eps drawn
 * there (below), it is sampled, the model's callback (which
 * applies the same scales to its own terms) fills sub->gz, the guide's log q terms are scaled
 * per site, and the gradients are scattered back (zero for the rows outside the minibatch),
 * after which the optimiser steps every element of `g` (Adam's moments move the rows outside
 * the minibatch too, as torch does). g->u and g->z serve as the scattered gradients. eps is
 * drawn for the minibatch only, from the blocks a full step would use (the same numbers as a
 * full step when the minibatch is all spots).
 * Returns the step's loss -log p + log q, both scaled. */
double scn_svi_step_sub(scn_guide *g, scn_guide *sub, const R_xlen_t *idx, const double *scale,
                        scn_logp_fn logp, void *ctx, uint64_t seed, double step,
                        const scn_optim *opt, int nth) {
  static const double half_log_2pi = 0.91893853320467274178;
  const R_xlen_t P = g->P, Pb = sub->P;
  scn_guide_draw_eps_at(sub, seed, step, g->off, nth);
  for (R_xlen_t i = 0; i < Pb; i++) {
    R_xlen_t k = idx[i];
    sub->loc[i] = g->loc[k], sub->rho[i] = g->rho[k];
  }
  double lq = 0.0;
  for (int j = 0; j < sub->nsite; j++) {
    R_xlen_t a = sub->off[j], n = sub->off[j + 1] - a;
    double l = -half_log_2pi * (double)n;
    for (R_xlen_t q = a; q < a + n; q += SVI_PIECE) {
      R_xlen_t m = a + n - q < SVI_PIECE ? a + n - q : SVI_PIECE;
      l += svi_sample_at(sub, q, m);
    }
    lq += scale[j] * l;
  }
  double lp = logp(ctx, nth);
  double *gl = g->u, *gr = g->z;
  memset(gl, 0, (size_t)P * sizeof(double));
  memset(gr, 0, (size_t)P * sizeof(double));
  for (int j = 0; j < sub->nsite; j++) {
    const double sc = scale[j];
    for (R_xlen_t i = sub->off[j]; i < sub->off[j + 1]; i++) {
      double gu = sub->z[i] * sub->gz[i] + sc;
      gl[idx[i]] = -gu;
      double ep = sub->f32 ? SVI_F(sub->eps)[i] : sub->eps[i],
             ds = sub->f32 ? SVI_F(sub->ds)[i] : sub->ds[i],
             dr = sub->f32 ? SVI_F(sub->dsr)[i] : sub->dsr[i];
      gr[idx[i]] = -(gu * ep * ds + sc * dr);
    }
  }
  g->t++;
  double lr_t = opt->clipped ? opt->lr * pow(opt->lrd, (double)g->t) : opt->lr;
  adam_step c = adam_consts(g->t, lr_t, opt->clipped, opt->clip);
  const R_xlen_t np = (P + SVI_PIECE - 1) / SVI_PIECE;
  int nt = scn_threads_for(np, nth);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (R_xlen_t k = 0; k < np; k++) {
    R_xlen_t a = k * SVI_PIECE, n = P - a < SVI_PIECE ? P - a : SVI_PIECE;
    double sq[SVI_BLOCK];
    float gf[SVI_BLOCK], sqf[SVI_BLOCK], *mF = SVI_F(g->m), *vF = SVI_F(g->v);
    for (R_xlen_t i0 = a; i0 < a + n; i0 += SVI_BLOCK) {
      int m = a + n - i0 < SVI_BLOCK ? (int)(a + n - i0) : SVI_BLOCK;
      if (g->f32) { /* a float32 fit's Adam in float (float moments), as in a full-batch step */
        for (int j = 0; j < m; j++) gf[j] = (float)gl[i0 + j];
        adam_block_f(m, g->loc + i0, gf, mF + i0, vF + i0, &c, sqf);
        for (int j = 0; j < m; j++) gf[j] = (float)gr[i0 + j];
        adam_block_f(m, g->rho + i0, gf, mF + P + i0, vF + P + i0, &c, sqf);
      } else {
        adam_block(m, g->loc + i0, gl + i0, g->m + i0, g->v + i0, &c, sq);
        adam_block(m, g->rho + i0, gr + i0, g->m + P + i0, g->v + P + i0, &c, sq);
      }
    }
  }
  return -lp + lq;
}

/* ---- priors shared by both models (spec 6.3, items 12-17) ------------------------------ */

double scn_background_prior(int E, int G, double hh, double uh, const double *zSe,
                            const double *uSe, const double *zi, const double *zs,
                            const double *us, const double hyp[4], double *gh, double *gSe,
                            double *gi, double *gs) {
  const double ah = hyp[0], bh = hyp[1], aS = hyp[2], bS = hyp[3];
  double lp = scn_lgamma_pdf(hh, uh, ah, bh), sh = 0.0;
  for (int e = 0; e < E; e++) {
    double Se = zSe[e], io = zi[e], ae = 1.0 / (io * io), rate = ae / Se, lrate = log(rate);
    double lga = scn_lgamma(ae), dga = scn_digamma(ae);
    lp += scn_lgamma_pdf(Se, uSe[e], aS, bS) + log(hh) - hh * io;
    sh += 1.0 / hh - io;
    double s1 = 0.0, s2 = 0.0, l = 0.0;
    for (int g = 0; g < G; g++) {
      R_xlen_t i = e + (R_xlen_t)g * E;
      l += ae * lrate + (ae - 1.0) * us[i] - rate * zs[i] - lga;
      gs[i] = (ae - 1.0) / zs[i] - rate;
      s1 += zs[i] - Se;
      s2 += lrate + 1.0 + us[i] - dga - zs[i] / Se;
    }
    lp += l;
    gSe[e] = (aS - 1.0) / Se - bS + ae * s1 / (Se * Se);
    gi[e] = -hh - 2.0 / (io * io * io) * s2;
  }
  *gh = (ah - 1.0) / hh - bh + sh;
  return lp;
}

double scn_overdispersion_prior(R_xlen_t n, double phi, double uphi, const double *zo, double a,
                                double b, double *gphi, double *go) {
  double lphi = log(phi), so = 0.0, l = 0.0;
  for (R_xlen_t i = 0; i < n; i++) {
    l += lphi - phi * zo[i];
    go[i] = -phi;
    so += 1.0 / phi - zo[i];
  }
  *gphi = (a - 1.0) / phi - b + so;
  return scn_lgamma_pdf(phi, uphi, a, b) + l;
}

/* ---- helpers for the models' shims --------------------------------------------------- */

void *scn_state_get(SEXP ptr, const char *what) {
  if (TYPEOF(ptr) != EXTPTRSXP) error(_("not a %s state"), what);
  void *st = R_ExternalPtrAddr(ptr);
  if (!st) error(_("the %s state is no longer valid (saved and reloaded?)"), what);
  return st;
}

SEXP scn_named_list(int n, const char **names) {
  SEXP ans = PROTECT(allocVector(VECSXP, n)), nms = PROTECT(allocVector(STRSXP, n));
  for (int i = 0; i < n; i++) SET_STRING_ELT(nms, i, mkChar(names[i]));
  setAttrib(ans, R_NamesSymbol, nms);
  UNPROTECT(2);
  return ans;
}

/* list(loc, rho, steps) of a guide */
SEXP scn_guide_params_sexp(const scn_guide *g) {
  static const char *names[] = {"loc", "rho", "steps"};
  SEXP ans = PROTECT(scn_named_list(3, names));
  SET_VECTOR_ELT(ans, 2, ScalarReal((double)g->t));
  SEXP l = allocVector(REALSXP, g->P);
  SET_VECTOR_ELT(ans, 0, l);
  memcpy(REAL(l), g->loc, g->P * sizeof(double));
  SEXP r = allocVector(REALSXP, g->P);
  SET_VECTOR_ELT(ans, 1, r);
  memcpy(REAL(r), g->rho, g->P * sizeof(double));
  UNPROTECT(1);
  return ans;
}

SEXP scn_guide_set_params(scn_guide *g, SEXP loc, SEXP rho) {
  if (!isReal(loc) || !isReal(rho) || XLENGTH(loc) != g->P || XLENGTH(rho) != g->P)
    SCN_INTERNAL_ERROR("parameter length");
  memcpy(g->loc, REAL(loc), g->P * sizeof(double));
  memcpy(g->rho, REAL(rho), g->P * sizeof(double));
  scn_guide_reset_optim(g);
  return R_NilValue;
}

void scn_guide_set_u(scn_guide *g, const double *u) {
  for (R_xlen_t i = 0; i < g->P; i++) {
    g->u[i] = u[i];
    g->z[i] = exp(u[i]);
  }
}

/* list(logp, grad = d log p / du) after the model's callback ran on the guide's u */
SEXP scn_logjoint_sexp(const scn_guide *g, double lp) {
  static const char *names[] = {"logp", "grad"};
  SEXP ans = PROTECT(scn_named_list(2, names));
  SET_VECTOR_ELT(ans, 0, ScalarReal(lp));
  SEXP gr = allocVector(REALSXP, g->P);
  SET_VECTOR_ELT(ans, 1, gr);
  for (R_xlen_t i = 0; i < g->P; i++) REAL(gr)[i] = g->z[i] * g->gz[i];
  UNPROTECT(1);
  return ans;
}

/* ---- shims shared by both models ------------------------------------------------------ */

/* .Call(C_scnative_svi_adam, theta0, grads (n x T), lr, clipped, clip, lrd) -> n x T matrix of
 * the parameters after each step (test helper for the optimiser). */
/* .Call(C_scnative_svi_live_states): the number of native model states alive */
SEXP scnative_svi_live_states(void) { return ScalarInteger(live_guides); }

SEXP scnative_svi_adam(SEXP theta0, SEXP grads, SEXP lr_, SEXP clipped_, SEXP clip_, SEXP lrd_) {
  R_xlen_t n = XLENGTH(theta0);
  if (!isReal(theta0) || !isReal(grads) || !isMatrix(grads) || nrows(grads) != n)
    SCN_INTERNAL_ERROR("adam arguments");
  int T = ncols(grads), clipped = asInteger(clipped_);
  double lr = asReal(lr_), clip = asReal(clip_), lrd = asReal(lrd_);
  SEXP ans = PROTECT(allocMatrix(REALSXP, n, T));
  double *th = (double *)R_alloc(n, sizeof(double)), *m = (double *)R_alloc(n, sizeof(double)),
         *v = (double *)R_alloc(n, sizeof(double));
  memcpy(th, REAL(theta0), n * sizeof(double));
  memset(m, 0, n * sizeof(double));
  memset(v, 0, n * sizeof(double));
  for (int t = 0; t < T; t++) {
    double lr_t = clipped ? lr * pow(lrd, (double)(t + 1)) : lr;
    scn_adam(n, th, REAL(grads) + (R_xlen_t)t * n, m, v, t + 1, lr_t, clipped, clip);
    memcpy(REAL(ans) + (R_xlen_t)t * n, th, n * sizeof(double));
  }
  UNPROTECT(1);
  return ans;
}

/* .Call(C_scnative_svi_summary, loc, rho, num, seed, stream, probs, mult, mcol, threads)
 * Per element i: draws d = 0..num-1 of exp(loc + softplus(rho) * eps) * mult[d, mcol[i]]
 * (eps = normal number i * num + d of `stream`); returns list(mean, sd (ddof 0),
 * q = n x length(probs) with numpy's linear interpolation). mult may be NULL. */
SEXP scnative_svi_summary(SEXP loc, SEXP rho, SEXP num_, SEXP seed_, SEXP stream_, SEXP probs,
                          SEXP mult, SEXP mcol, SEXP threads) {
  R_xlen_t n = XLENGTH(loc);
  int num = asInteger(num_), nq = LENGTH(probs), nth = asInteger(threads);
  uint64_t seed = scn_seed_from_sexp(seed_), stream = (uint64_t)asReal(stream_);
  int has_mult = !isNull(mult);
  /* guards: loc and rho come from a fit's params, which a user may have edited; a shorter rho
   * would be read past its end (R's validate_fit() names the bad field first) */
  if (!isReal(loc) || !isReal(rho) || XLENGTH(rho) != n)
    error(_("a site's 'loc' and 'rho' must be double vectors of the same length"));
  if (num < 1 || !isReal(probs)) SCN_INTERNAL_ERROR("num or probs");
  if (has_mult && (!isReal(mult) || !isMatrix(mult) || nrows(mult) != num || !isInteger(mcol) ||
                   XLENGTH(mcol) != n))
    SCN_INTERNAL_ERROR("mult");
  if (has_mult) {
    const int nc = ncols(mult), *mc0 = INTEGER(mcol);
    for (R_xlen_t i = 0; i < n; i++)
      if (mc0[i] < 0 || mc0[i] >= nc) SCN_INTERNAL_ERROR("mcol out of range");
  }
  SEXP ans = PROTECT(allocVector(VECSXP, 3));
  SEXP mean = allocVector(REALSXP, n);
  SET_VECTOR_ELT(ans, 0, mean);
  SEXP sd = allocVector(REALSXP, n);
  SET_VECTOR_ELT(ans, 1, sd);
  SEXP q = allocMatrix(REALSXP, n, nq);
  SET_VECTOR_ELT(ans, 2, q);
  const double *pl = REAL(loc), *pr = REAL(rho), *pp = REAL(probs);
  const double *pm = has_mult ? REAL(mult) : NULL;
  const int *mc = has_mult ? INTEGER(mcol) : NULL;
  double *pmean = REAL(mean), *psd = REAL(sd), *pq = REAL(q);
  int nt = scn_threads_for(n, nth);
  double *work = malloc((size_t)nt * 2 * num * sizeof(double));
  if (!work) error(_("out of memory"));
#pragma omp parallel num_threads(nt)
  {
    double *a = work + (size_t)omp_get_thread_num() * 2 * num, *b = a + num;
#pragma omp for schedule(static)
    for (R_xlen_t i = 0; i < n; i++) {
      double sg = scn_softplus(pr[i]);
      scn_rng_normals(seed, stream, (uint64_t)i * num, num, a);
      double s1 = 0.0;
      for (int d = 0; d < num; d++) {
        a[d] = exp(pl[i] + sg * a[d]);
        if (pm) a[d] *= pm[d + (R_xlen_t)mc[i] * num];
        s1 += a[d];
      }
      double mu = s1 / num, s2 = 0.0;
      for (int d = 0; d < num; d++) s2 += (a[d] - mu) * (a[d] - mu);
      pmean[i] = mu;
      psd[i] = sqrt(s2 / num);
      for (int k = 0; k < nq; k++) {
        memcpy(b, a, num * sizeof(double));
        pq[i + (R_xlen_t)k * n] = scn_quantile_linear(b, num, pp[k]);
      }
    }
  }
  free(work);
  UNPROTECT(1);
  return ans;
}

/* .Call(C_scnative_svi_draws, loc, rho, num, seed, stream) -> num x n draws (same numbers as
 * scnative_svi_summary for the same seed and stream). */
SEXP scnative_svi_draws(SEXP loc, SEXP rho, SEXP num_, SEXP seed_, SEXP stream_) {
  R_xlen_t n = XLENGTH(loc);
  int num = asInteger(num_);
  uint64_t seed = scn_seed_from_sexp(seed_), stream = (uint64_t)asReal(stream_);
  /* guards as in scnative_svi_summary */
  if (!isReal(loc) || !isReal(rho) || XLENGTH(rho) != n)
    error(_("a site's 'loc' and 'rho' must be double vectors of the same length"));
  if (num < 1) SCN_INTERNAL_ERROR("num");
  SEXP ans = PROTECT(allocMatrix(REALSXP, num, n));
  for (R_xlen_t i = 0; i < n; i++) {
    double *a = REAL(ans) + i * num, sg = scn_softplus(REAL(rho)[i]);
    scn_rng_normals(seed, stream, (uint64_t)i * num, num, a);
    for (int d = 0; d < num; d++) a[d] = exp(REAL(loc)[i] + sg * a[d]);
  }
  UNPROTECT(1);
  return ans;
}
