/* npyf32.h: numpy 1.26's float32 exp and log, bit for bit (see npyf32.c). Plain C, no R API. */
#ifndef SCN_NPYF32_H
#define SCN_NPYF32_H

#include <stddef.h>

/* y[i] = np.exp(x[i]) / np.log(x[i]) for float32, i = 0..n-1; y == x is allowed
 * (other overlaps are not). */
void scn_npy_expf_array(const float *x, float *y, ptrdiff_t n);
void scn_npy_logf_array(const float *x, float *y, ptrdiff_t n);
/* the same for one value */
float scn_npy_expf(float x);
float scn_npy_logf(float x);

/* 1 when numpy's SIMD algorithm is in use (the CPU has AVX2 and FMA3, or AVX512F), 0 when
 * the C library's expf/logf are used instead, as numpy does on such CPUs. */
int scn_npy_f32_simd(void);

/* for testing: nonzero forces the expf/logf fallback (default 0) */
extern int scn_npy_f32_force_libm;

#endif
