/* streamplot.c: streamlines of a 2-D vector field on an evenly spaced grid, computed the way
 * matplotlib's Axes.streamplot computes them (spec: matplotlib streamplot, as needed for a native
 * integrator; used by the stream variant of velocity_embedding_stream).
 *
 * R-facing: scnative_streamlines(x, y, u, v, linewidth, density, maxlength, minlength,
 *                                direction, broken)   (called by stream_lines() in R/streamplot.R)
 *
 * Coordinates. Data coordinates are those of x and y. Grid coordinates run over [0, nx - 1] x
 * [0, ny - 1] (gx = (x - x0) / dx). Axes coordinates run over [0, 1]^2 and measure the length of
 * a streamline. The mask is a mnx x mny grid (mnx = int(30 * density_x)); each streamline marks
 * every mask cell it enters and, with broken streamlines, stops on entering an occupied one, so
 * lines keep roughly one mask cell apart.
 *
 * Layout. u, v (and linewidth) are R matrices with ny rows and nx columns: u[iy, ix] is the x
 * component at (x[ix], y[iy]), matplotlib's [row = y, column = x] layout; column-major, so
 * element (iy, ix) sits at iy + ix * ny.
 *
 * Arithmetic follows matplotlib's order operation by operation (the reciprocal 1 / dx, the
 * bilinear weights (1 - t) and t, pow(., 0.5) in the step-size rule, the grid -> data map
 * gx / (1 / dx) + x0, the sequential arc length), so equal inputs give equal streamlines. The one
 * known difference: numpy squares the axes-unit speeds with np.power, which on AVX-512 CPUs is a
 * vector pow accurate to 1 ulp, where we square exactly (u * u); see the tests for what this
 * does to the agreement. The code assumes no FMA contraction (the default flags on x86-64). */
#include "scnative.h"
#include <limits.h>

/* ---------------------------------------------------------------- growable buffers */

typedef struct {
  double *v;
  size_t n, cap; /* in doubles */
} sp_dbuf;

typedef struct {
  int *v;
  size_t n, cap;
} sp_ibuf;

/* Every malloc'd block of one call; owned by an external pointer whose finalizer frees it, so an
 * interrupt (a longjmp out of the kernel) or an R allocation error leaks nothing. */
typedef struct {
  sp_dbuf pts;   /* kept streamlines: (gx, gy) pairs in grid coordinates */
  sp_dbuf tmp;   /* one direction of the current integration */
  sp_ibuf lens;  /* points per kept streamline */
  sp_ibuf cells; /* mask cells marked by the current streamline (ym * mnx + xm) */
} sp_bufs;

static int dbuf_reserve(sp_dbuf *b, size_t extra) {
  if (b->n + extra <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->n + extra) {
    if (cap > SIZE_MAX / 2 / sizeof(double)) return -1;
    cap *= 2;
  }
  double *v = realloc(b->v, cap * sizeof(double));
  if (!v) return -1;
  b->v = v;
  b->cap = cap;
  return 0;
}

static int dbuf_push2(sp_dbuf *b, double x, double y) {
  if (dbuf_reserve(b, 2)) return -1;
  b->v[b->n++] = x;
  b->v[b->n++] = y;
  return 0;
}

static int ibuf_push(sp_ibuf *b, int x) {
  if (b->n == b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 256;
    if (cap > SIZE_MAX / sizeof(int)) return -1;
    int *v = realloc(b->v, cap * sizeof(int));
    if (!v) return -1;
    b->v = v;
    b->cap = cap;
  }
  b->v[b->n++] = x;
  return 0;
}

static void sp_bufs_free(sp_bufs *b) {
  if (!b) return;
  free(b->pts.v);
  free(b->tmp.v);
  free(b->lens.v);
  free(b->cells.v);
  free(b);
}

/* ---------------------------------------------------------------- the field */

typedef struct {
  int nx, ny;
  const double *u, *v;      /* velocity in grid units per data unit of time */
  const double *speed;      /* speed in axes units */
  const unsigned char *bad; /* 1 where u, v or the speed is not finite (numpy's masked cells) */
} sp_field;

/* u, v (data units) -> grid units (times the reciprocal 1 / dx, as matplotlib), the axes-unit
 * speed and the mask of bad cells. np.ma masks NaN/Inf inputs and every non-finite intermediate
 * of the speed, hence one test on the finished speed. */
static void sp_prepare(const double *u, const double *v, R_xlen_t n, int nx, int ny, double dx,
                       double dy, double *ug, double *vg, double *speed, unsigned char *bad) {
  const double rx = 1.0 / dx, ry = 1.0 / dy;
  for (R_xlen_t k = 0; k < n; k++) {
    ug[k] = u[k] * rx;
    vg[k] = v[k] * ry;
    double ua = ug[k] / (double)(nx - 1), va = vg[k] / (double)(ny - 1);
    speed[k] = sqrt(ua * ua + va * va);
    bad[k] = !(isfinite(u[k]) && isfinite(v[k]) && isfinite(speed[k]));
  }
}

static inline int sp_within(const sp_field *f, double xi, double yi) {
  return 0 <= xi && xi <= f->nx - 1 && 0 <= yi && yi <= f->ny - 1;
}

/* Bilinear interpolation at grid point (xi, yi), which lies within the grid: numpy's
 * interpgrid for a scalar position. Returns 0, or -1 when one of the four corners is masked
 * (numpy's masked result, whatever its weight). */
static int sp_interp(const sp_field *f, const double *a, double xi, double yi, double *out) {
  int x = (int)xi, y = (int)yi;
  int xn = x == f->nx - 1 ? x : x + 1, yn = y == f->ny - 1 ? y : y + 1;
  const ptrdiff_t ny = f->ny;
  ptrdiff_t i00 = y + x * ny, i01 = y + xn * ny, i10 = yn + x * ny, i11 = yn + xn * ny;
  if (f->bad[i00] || f->bad[i01] || f->bad[i10] || f->bad[i11]) return -1;
  double xt = xi - x, yt = yi - y;
  double a0 = a[i00] * (1 - xt) + a[i01] * xt;
  double a1 = a[i10] * (1 - xt) + a[i11] * xt;
  *out = a0 * (1 - yt) + a1 * yt;
  return 0;
}

enum { SP_OK = 0, SP_OUT = 1, SP_STOP = 2 };

/* The direction of unit axes-speed at (xi, yi), in grid units; sign -1 integrates backward.
 * SP_OUT outside the grid, SP_STOP on a masked corner or zero speed. */
static int sp_direction(const sp_field *f, double xi, double yi, double sign, double *kx,
                        double *ky) {
  double ds_dt, ui, vi;
  if (!sp_within(f, xi, yi)) return SP_OUT;
  if (sp_interp(f, f->speed, xi, yi, &ds_dt)) return SP_STOP;
  if (ds_dt == 0) return SP_STOP;
  double dt_ds = 1. / ds_dt;
  if (sp_interp(f, f->u, xi, yi, &ui) || sp_interp(f, f->v, xi, yi, &vi)) return SP_STOP;
  *kx = ui * dt_ds;
  *ky = vi * dt_ds;
  if (sign < 0) {
    *kx = -*kx;
    *ky = -*ky;
  }
  return SP_OK;
}

/* ---------------------------------------------------------------- the mask */

typedef struct {
  int mnx, mny;
  double x_grid2mask, y_grid2mask, x_mask2grid, y_mask2grid;
  unsigned char *occ;  /* mny x mnx, row-major */
  int cur_x, cur_y;    /* the cell the current streamline is in (matplotlib's _current_xy) */
  int has_cur;
  int broken;
} sp_mask;

/* Grid -> nearest mask cell; Python's round() is round-half-even, so is nearbyint() under the
 * default rounding mode. The clamp never binds for positions within the grid (a safety net). */
static inline int sp_g2m(double g, double scale, int m) {
  double r = nearbyint(g * scale);
  if (!(r >= 0)) return 0;
  if (r > m - 1) return m - 1;
  return (int)r;
}

/* Enter mask cell (xm, ym): mark it if free; -1 if it is taken and streamlines break there.
 * Staying in the same cell does nothing. */
static int sp_mask_enter(sp_mask *m, sp_bufs *b, int xm, int ym, int *oom) {
  if (m->has_cur && m->cur_x == xm && m->cur_y == ym) return 0;
  int k = ym * m->mnx + xm;
  if (m->occ[k] == 0) {
    if (ibuf_push(&b->cells, k)) {
      *oom = 1;
      return -1;
    }
    m->occ[k] = 1;
    m->cur_x = xm;
    m->cur_y = ym;
    m->has_cur = 1;
    return 0;
  }
  return m->broken ? -1 : 0;
}

/* ---------------------------------------------------------------- the integrator */

typedef struct {
  const sp_field *f;
  sp_mask *m;
  sp_bufs *b;
  double maxlength, minlength; /* axes units; maxlength per direction */
  int direction;               /* 0 both, 1 forward, 2 backward */
  void (*check)(void);         /* interrupt check, may not return */
  unsigned long steps;
  int oom;
} sp_ctx;

/* One direction from (x0, y0) with Heun's method (RK12) and step-size control; the points go
 * to b->tmp (start point first). Returns the length travelled in axes units. */
static double sp_rk12(sp_ctx *c, double x0, double y0, double sign) {
  const sp_field *f = c->f;
  sp_dbuf *out = &c->b->tmp;
  const double maxerror = 0.003;
  double maxds = 1. / c->m->mnx;
  if (1. / c->m->mny < maxds) maxds = 1. / c->m->mny;
  if (0.1 < maxds) maxds = 0.1;
  double ds = maxds, stotal = 0, xi = x0, yi = y0;
  double k1x = 0, k1y = 0, k2x = 0, k2y = 0;
  out->n = 0;
  for (;;) {
    if ((++c->steps & 0xFFFF) == 0 && c->check) c->check();
    int st;
    if (sp_within(f, xi, yi)) {
      if (dbuf_push2(out, xi, yi)) {
        c->oom = 1;
        return stotal;
      }
      st = sp_direction(f, xi, yi, sign, &k1x, &k1y);
      if (st == SP_OK) st = sp_direction(f, xi + ds * k1x, yi + ds * k1y, sign, &k2x, &k2y);
    } else {
      st = SP_OUT;
    }
    if (st == SP_OUT) {
      /* left the domain during this step: one Euler step to the boundary */
      if (out->n > 0) {
        double lx = out->v[out->n - 2], ly = out->v[out->n - 1], cx, cy;
        if (sp_direction(f, lx, ly, sign, &cx, &cy) == SP_OK) {
          double dsx, dsy;
          if (cx == 0) dsx = R_PosInf;
          else if (cx < 0) dsx = lx / -cx;
          else dsx = ((double)(f->nx - 1) - lx) / cx;
          if (cy == 0) dsy = R_PosInf;
          else if (cy < 0) dsy = ly / -cy;
          else dsy = ((double)(f->ny - 1) - ly) / cy;
          double dse = dsy < dsx ? dsy : dsx;
          if (dbuf_push2(out, lx + cx * dse, ly + cy * dse)) {
            c->oom = 1;
            return stotal;
          }
          stotal += dse;
        }
      }
      break;
    }
    if (st == SP_STOP) break;

    double dx1 = ds * k1x, dy1 = ds * k1y;
    double dx2 = ds * 0.5 * (k1x + k2x), dy2 = ds * 0.5 * (k1y + k2y);
    /* the error in axes units */
    double error = hypot((dx2 - dx1) / (double)(f->nx - 1), (dy2 - dy1) / (double)(f->ny - 1));
    if (error < maxerror) {
      xi += dx2;
      yi += dy2;
      if (!sp_within(f, xi, yi)) break;
      int xm = sp_g2m(xi, c->m->x_grid2mask, c->m->mnx);
      int ym = sp_g2m(yi, c->m->y_grid2mask, c->m->mny);
      if (sp_mask_enter(c->m, c->b, xm, ym, &c->oom)) break;
      if (stotal + ds > c->maxlength) break;
      stotal += ds;
    }
    if (error == 0) {
      ds = maxds;
    } else {
      double nds = 0.85 * ds * pow(maxerror / error, 0.5);
      ds = nds < maxds ? nds : maxds;
    }
  }
  return stotal;
}

/* The streamline through grid point (x0, y0): backward part reversed, then the forward part
 * without its repeated start (a forward-only line starts after its seed, as matplotlib's does).
 * Kept (appended to b->pts, its length to b->lens) if longer than minlength; otherwise its
 * mask cells are released. */
static void sp_integrate(sp_ctx *c, double x0, double y0) {
  sp_mask *m = c->m;
  sp_bufs *b = c->b;
  b->cells.n = 0;
  int xm = sp_g2m(x0, m->x_grid2mask, m->mnx), ym = sp_g2m(y0, m->y_grid2mask, m->mny);
  if (sp_mask_enter(m, b, xm, ym, &c->oom)) return;
  size_t base = b->pts.n;
  double stotal = 0.;
  if (c->direction != 1) {
    stotal += sp_rk12(c, x0, y0, -1.0);
    if (c->oom || dbuf_reserve(&b->pts, b->tmp.n)) goto oom;
    for (size_t k = b->tmp.n; k >= 2; k -= 2) {
      b->pts.v[b->pts.n++] = b->tmp.v[k - 2];
      b->pts.v[b->pts.n++] = b->tmp.v[k - 1];
    }
  }
  if (c->direction != 2) {
    m->cur_x = xm; /* matplotlib's reset_start_point */
    m->cur_y = ym;
    m->has_cur = 1;
    stotal += sp_rk12(c, x0, y0, 1.0);
    if (c->oom) goto oom;
    if (b->tmp.n > 2) {
      if (dbuf_reserve(&b->pts, b->tmp.n - 2)) goto oom;
      memcpy(b->pts.v + b->pts.n, b->tmp.v + 2, (b->tmp.n - 2) * sizeof(double));
      b->pts.n += b->tmp.n - 2;
    }
  }
  if (stotal > c->minlength) {
    size_t np = (b->pts.n - base) / 2;
    if (np > INT_MAX || ibuf_push(&b->lens, (int)np)) goto oom;
    return;
  }
  for (size_t k = 0; k < b->cells.n; k++) m->occ[b->cells.v[k]] = 0;
  b->pts.n = base;
  return;
oom:
  c->oom = 1;
}

/* Seeds every still-free mask cell in matplotlib's order: a spiral from the corner (0, 0) along
 * the bottom edge, up the right, back along the top, down the left, then inward. */
static void sp_seed_all(sp_ctx *c) {
  sp_mask *m = c->m;
  int xfirst = 0, yfirst = 1, xlast = m->mnx - 1, ylast = m->mny - 1, x = 0, y = 0, dir = 0;
  const ptrdiff_t ncell = (ptrdiff_t)m->mnx * m->mny;
  for (ptrdiff_t i = 0; i < ncell && !c->oom; i++) {
    if (x >= 0 && x < m->mnx && y >= 0 && y < m->mny && m->occ[y * m->mnx + x] == 0) {
      sp_integrate(c, x * m->x_mask2grid, y * m->y_mask2grid);
    }
    switch (dir) {
      case 0:
        if (++x >= xlast) xlast--, dir = 1;
        break;
      case 1:
        if (++y >= ylast) ylast--, dir = 2;
        break;
      case 2:
        if (--x <= xfirst) xfirst++, dir = 3;
        break;
      default:
        if (--y <= yfirst) yfirst++, dir = 0;
        break;
    }
  }
}

/* ---------------------------------------------------------------- drawing quantities */

/* Grid -> data coordinates of n points: g / (1 / d) + origin, as matplotlib. */
static void sp_grid2data(const double *g, size_t n, double d, double origin, double *out) {
  const double r = 1. / d;
  for (size_t k = 0; k < n; k++) out[k] = g[2 * k] / r + origin;
}

/* numpy's interpgrid for arrays of positions (the line widths): integer parts by truncation,
 * the upper neighbour clipped to the last row/column; no masking (NaN widths propagate). The
 * clamp of x and y never binds for points of a streamline (a safety net). */
static double sp_interp_plain(const double *a, int nx, int ny, double xi, double yi) {
  int x = (int)xi, y = (int)yi;
  if (x < 0) x = 0;
  if (x > nx - 1) x = nx - 1;
  if (y < 0) y = 0;
  if (y > ny - 1) y = ny - 1;
  int xn = x + 1 > nx - 1 ? nx - 1 : x + 1, yn = y + 1 > ny - 1 ? ny - 1 : y + 1;
  const ptrdiff_t nr = ny;
  double xt = xi - x, yt = yi - y;
  double a0 = a[y + x * nr] * (1 - xt) + a[y + xn * nr] * xt;
  double a1 = a[yn + x * nr] * (1 - xt) + a[yn + xn * nr] * xt;
  return a0 * (1 - yt) + a1 * yt;
}

/* The arrow of one line of n >= 2 points: the first point idx where the running arc length (in
 * data units, summed in order) reaches half the total; the arrow goes from point idx to the
 * middle of segment idx. */
static int sp_arrow_index(const double *tx, const double *ty, int n) {
  double s = 0, half;
  for (int k = 0; k < n - 1; k++) s += hypot(tx[k + 1] - tx[k], ty[k + 1] - ty[k]);
  half = s * 0.5;
  s = 0;
  for (int k = 0; k < n - 1; k++) {
    s += hypot(tx[k + 1] - tx[k], ty[k + 1] - ty[k]);
    if (!(s < half)) return k;
  }
  return n - 2; /* only with NaN lengths */
}

/* ---------------------------------------------------------------- .Call shim */

static void sp_finalizer(SEXP p) {
  sp_bufs_free((sp_bufs *)R_ExternalPtrAddr(p));
  R_ClearExternalPtr(p);
}

static void sp_check_interrupt(void) { R_CheckUserInterrupt(); }

/* x (nx), y (ny): grid vectors, validated in R (finite, strictly increasing, evenly spaced,
 * at least 2 each); u, v: ny x nx double matrices; linewidth: NULL or an ny x nx double matrix;
 * density: 2 doubles; maxlength, minlength: doubles (axes units, maxlength for the whole line);
 * direction: 0 both, 1 forward, 2 backward; broken: TRUE/FALSE.
 * Returns list(x, y, n, width, arrow): data coordinates of all points (lines one after another),
 * the points per line, the interpolated width at each point (NA at each line's last point;
 * NULL without linewidth), and arrow = integer point index (1-based within its line, NA for a
 * line of one point) of each line's arrow tail, plus arrow_head = L x 2 head coordinates. */
SEXP scnative_streamlines(SEXP x, SEXP y, SEXP u, SEXP v, SEXP linewidth, SEXP density,
                          SEXP maxlength, SEXP minlength, SEXP direction, SEXP broken) {
  if (!isReal(x) || !isReal(y) || XLENGTH(x) < 2 || XLENGTH(y) < 2 || XLENGTH(x) > INT_MAX ||
      XLENGTH(y) > INT_MAX)
    error(_("'%s' and '%s' must be double vectors of length >= 2"), "x", "y");
  const int nx = (int)XLENGTH(x), ny = (int)XLENGTH(y);
  const R_xlen_t ng = (R_xlen_t)nx * ny;
  if (!isReal(u) || !isReal(v) || XLENGTH(u) != ng || XLENGTH(v) != ng)
    error(_("'%s' and '%s' must be double matrices with length(y) rows and length(x) columns"),
          "u", "v");
  if (!isNull(linewidth) && (!isReal(linewidth) || XLENGTH(linewidth) != ng))
    error(_("'%s' must be NULL or a double matrix of the shape of 'u'"), "linewidth");
  if (!isReal(density) || XLENGTH(density) != 2 || !isReal(maxlength) ||
      XLENGTH(maxlength) != 1 || !isReal(minlength) || XLENGTH(minlength) != 1)
    error(_("'%s', '%s' and '%s' must be doubles"), "density", "maxlength", "minlength");
  const double dens_x = REAL(density)[0], dens_y = REAL(density)[1];
  if (!(30 * dens_x >= 2 && 30 * dens_y >= 2 && 30 * dens_x * (30 * dens_y) <= INT_MAX))
    error(_("'%s' out of range"), "density");
  const int dir = asInteger(direction), brk = asLogical(broken);
  if (dir < 0 || dir > 2) error(_("'%s' must be 0, 1 or 2"), "direction");
  if (brk == NA_LOGICAL) error(_("'%s' must be TRUE or FALSE"), "broken");
  const double *xv = REAL(x), *yv = REAL(y);
  const double dx = xv[1] - xv[0], dy = yv[1] - yv[0];
  if (!(dx > 0 && dy > 0 && isfinite(dx) && isfinite(dy)))
    error(_("'%s' and '%s' must be strictly increasing"), "x", "y");

  int nprot = 0;
  sp_bufs *b = calloc(1, sizeof(sp_bufs));
  if (!b) error(_("out of memory in streamlines"));
  SEXP owner = PROTECT(R_MakeExternalPtr(b, R_NilValue, R_NilValue));
  nprot++;
  R_RegisterCFinalizerEx(owner, sp_finalizer, TRUE);

  double *ug = (double *)R_alloc(ng, sizeof(double));
  double *vg = (double *)R_alloc(ng, sizeof(double));
  double *speed = (double *)R_alloc(ng, sizeof(double));
  unsigned char *bad = (unsigned char *)R_alloc(ng, 1);
  sp_prepare(REAL(u), REAL(v), ng, nx, ny, dx, dy, ug, vg, speed, bad);
  sp_field f = {nx, ny, ug, vg, speed, bad};

  sp_mask m;
  m.mnx = (int)(30 * dens_x); /* numpy's astype(int): truncation */
  m.mny = (int)(30 * dens_y);
  m.x_grid2mask = (double)(m.mnx - 1) / (double)(nx - 1);
  m.y_grid2mask = (double)(m.mny - 1) / (double)(ny - 1);
  m.x_mask2grid = 1. / m.x_grid2mask;
  m.y_mask2grid = 1. / m.y_grid2mask;
  m.occ = (unsigned char *)R_alloc((size_t)m.mnx * m.mny, 1);
  memset(m.occ, 0, (size_t)m.mnx * m.mny);
  m.has_cur = 0;
  m.cur_x = m.cur_y = -1;
  m.broken = brk;

  sp_ctx c = {&f, &m, b, asReal(maxlength), asReal(minlength), dir, sp_check_interrupt, 0, 0};
  if (dir == 0) c.maxlength /= 2.;
  sp_seed_all(&c);
  if (c.oom) error(_("out of memory in streamlines"));

  /* drawing quantities */
  const size_t np = b->pts.n / 2, nl = b->lens.n;
  if (np > (size_t)R_XLEN_T_MAX) error(_("out of memory in streamlines"));
  SEXP tx = PROTECT(allocVector(REALSXP, (R_xlen_t)np));
  nprot++;
  SEXP ty = PROTECT(allocVector(REALSXP, (R_xlen_t)np));
  nprot++;
  SEXP lens = PROTECT(allocVector(INTSXP, (R_xlen_t)nl));
  nprot++;
  SEXP width = R_NilValue;
  if (!isNull(linewidth)) {
    width = PROTECT(allocVector(REALSXP, (R_xlen_t)np));
    nprot++;
  }
  SEXP arrow = PROTECT(allocVector(INTSXP, (R_xlen_t)nl));
  nprot++;
  SEXP head = PROTECT(allocMatrix(REALSXP, (int)nl, 2));
  nprot++;
  sp_grid2data(b->pts.v, np, dx, xv[0], REAL(tx));
  sp_grid2data(b->pts.v + 1, np, dy, yv[0], REAL(ty));
  size_t off = 0;
  for (size_t l = 0; l < nl; l++) {
    const int n = b->lens.v[l];
    const double *px = REAL(tx) + off, *py = REAL(ty) + off;
    INTEGER(lens)[l] = n;
    if (width != R_NilValue) {
      for (int k = 0; k < n; k++) {
        REAL(width)[off + k] =
            k < n - 1 ? sp_interp_plain(REAL(linewidth), nx, ny, b->pts.v[2 * (off + k)],
                                        b->pts.v[2 * (off + k) + 1])
                      : NA_REAL;
      }
    }
    if (n >= 2) {
      int idx = sp_arrow_index(px, py, n);
      INTEGER(arrow)[l] = idx + 1;
      REAL(head)[l] = (px[idx] + px[idx + 1]) / 2;
      REAL(head)[l + nl] = (py[idx] + py[idx + 1]) / 2;
    } else {
      INTEGER(arrow)[l] = NA_INTEGER;
      REAL(head)[l] = REAL(head)[l + nl] = NA_REAL;
    }
    off += (size_t)n;
  }
  sp_bufs_free(b);
  R_ClearExternalPtr(owner);

  SEXP ans = PROTECT(allocVector(VECSXP, 6));
  nprot++;
  SET_VECTOR_ELT(ans, 0, tx);
  SET_VECTOR_ELT(ans, 1, ty);
  SET_VECTOR_ELT(ans, 2, lens);
  SET_VECTOR_ELT(ans, 3, width);
  SET_VECTOR_ELT(ans, 4, arrow);
  SET_VECTOR_ELT(ans, 5, head);
  SEXP nms = PROTECT(allocVector(STRSXP, 6));
  nprot++;
  const char *names[] = {"x", "y", "n", "width", "arrow", "arrow_head"};
  for (int k = 0; k < 6; k++) SET_STRING_ELT(nms, k, mkChar(names[k]));
  setAttrib(ans, R_NamesSymbol, nms);
  UNPROTECT(nprot);
  return ans;
}
