/* The CSR8 kernels of oats/deploy/kernels.py, compiled on first use with the machine's C
 * compiler (-O3 -march=native -fopenmp) and called through ctypes.
 *
 * S (d_out, d_in) in CSR8: for row r and 256-column segment s, S's entries are
 * val[ptr[r*nseg+s] .. ptr[r*nseg+s+1]) at columns s*256 + off[j] (off: 8 bits).
 * Rows are shared among OpenMP threads (schedule static, nthreads of them: torch's count).
 * The OpenMP runtime is the one already in the process: torch loads libgomp.so.1 first. */
#include <stdint.h>

/* out (d_out,) = S x: one token. Four sums per row keep independent gathers in flight. */
void csr8_matvec(const int32_t *ptr, const uint8_t *off, const float *val, const float *x,
                 float *out, int64_t d_out, int64_t nseg, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < d_out; r++) {
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
        const int32_t *p = ptr + r * nseg;
        for (int64_t s = 0; s < nseg; s++) {
            const float *xs = x + s * 256;
            int64_t j = p[s];
            const int64_t e = p[s + 1];
            for (; j + 4 <= e; j += 4) {
                a0 += val[j] * xs[off[j]];
                a1 += val[j + 1] * xs[off[j + 1]];
                a2 += val[j + 2] * xs[off[j + 2]];
                a3 += val[j + 3] * xs[off[j + 3]];
            }
            for (; j < e; j++) a0 += val[j] * xs[off[j]];
        }
        out[r] = (a0 + a1) + (a2 + a3);
    }
}

/* out (d_out, n) = S xt for xt (d_in, n), both row-major: a batch. The batch is cut into
 * tiles of 16 columns whose sums stay in registers while a row's entries stream past (16
 * measured fastest here: 32 spills, two interleaved sets of 16 were slower); the last,
 * narrower tile has its own call so that the full tiles' loop has a constant trip count.
 * Against numba's loop (the whole batch per entry, sums in memory) this is 1.5x faster up to
 * about 100 columns and 10-25% slower past 250 (one layer on this machine; tried: chunks of
 * 256-1024 columns in memory, 2-3x slower here). */
#define TILE 16

/* One row's sums for batch columns t0 .. t0 + m - 1 (m <= TILE). Always inlined: called with
 * m = TILE its loops have a constant trip count and the sums live in registers. */
static inline __attribute__((always_inline)) void row_part(
        const int32_t *p, const uint8_t *off, const float *val, const float *xt, float *acc,
        int64_t nseg, int64_t n, int64_t t0, int64_t m) {
    float a[TILE] = {0};
    for (int64_t s = 0; s < nseg; s++) {
        const float *xs = xt + s * 256 * n + t0;
        for (int64_t j = p[s]; j < p[s + 1]; j++) {
            const float v = val[j];
            const float *xr = xs + (int64_t)off[j] * n;
            for (int64_t t = 0; t < m; t++) a[t] += v * xr[t];
        }
    }
    for (int64_t t = 0; t < m; t++) acc[t0 + t] = a[t];
}

void csr8_matmat(const int32_t *ptr, const uint8_t *off, const float *val, const float *xt,
                 float *out, int64_t d_out, int64_t nseg, int64_t n, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < d_out; r++) {
        int64_t t0 = 0;
        for (; t0 + TILE <= n; t0 += TILE) row_part(ptr + r * nseg, off, val, xt, out + r * n, nseg, n, t0, TILE);
        if (t0 < n) row_part(ptr + r * nseg, off, val, xt, out + r * n, nseg, n, t0, n - t0);
    }
}
