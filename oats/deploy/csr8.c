/* The CSR8 kernels of oats/deploy/kernels.py, compiled on first use with the machine's C
 * compiler (-O3 -march=native -fopenmp) and called through ctypes.
 *
 * S (d_out, d_in) in CSR8: for row r and 256-column segment s, S's entries are
 * val[ptr[r*nseg+s] .. ptr[r*nseg+s+1]) at columns s*256 + off[j] (off: 8 bits).
 * Rows are shared among OpenMP threads (schedule static, nthreads of them: torch's count).
 * The OpenMP runtime is the one already in the process: torch loads libgomp.so.1 first.
 *
 * One row's dot product with a token has two loops: the scalar one, and a vector one whose
 * version is picked by what the compiler targets (-march=native, or -mno-avx512f for an
 * AVX2-only build):
 *   AVX-512  16 offsets widened to int32, 16 values of x gathered from the segment (1 KB, in
 *            L1), one fused multiply-add; two accumulators; the tail under a mask.
 *   AVX2     the same 8 at a time.
 *   scalar   four independent sums (gathers in flight): the scalar loop again, where the
 *            build has neither.
 * Which is faster depends on the CPU's gathers: on an AMD EPYC (Zen 4) the scalar loop was
 * faster in cache (29 against 42 us for a 576 x 576 layer at 37.5% density, 2 threads), and the
 * two equal once the weights come from memory. The fused layer kernel takes the loop as an
 * argument, so oats/deploy/plan.py can measure both on the machine and keep the faster. */
#include <stdint.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

const char *csr8_isa(void) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#else
    return "scalar";
#endif
}

static inline float row_dot_scalar(const int32_t *p, const uint8_t *off, const float *val, const float *x,
                                   int64_t nseg) {
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
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
    return (a0 + a1) + (a2 + a3);
}

static inline float row_dot_vec(const int32_t *p, const uint8_t *off, const float *val, const float *x,
                                int64_t nseg) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (int64_t s = 0; s < nseg; s++) {
        const float *xs = x + s * 256;
        int64_t j = p[s];
        const int64_t e = p[s + 1];
        for (; j + 32 <= e; j += 32) {
            __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(off + j)));
            __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(off + j + 16)));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + j), _mm512_i32gather_ps(i0, xs, 4), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(val + j + 16), _mm512_i32gather_ps(i1, xs, 4), a1);
        }
        for (; j < e; j += 16) {  /* the last 1-31 entries, 16 at a time, the rest masked off */
            const int64_t left = e - j;
            const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
            __m512i i0 = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, off + j));
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, val + j),
                                 _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, i0, xs, 4), a0);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    float t = 0.f;
    for (int64_t s = 0; s < nseg; s++) {
        const float *xs = x + s * 256;
        int64_t j = p[s];
        const int64_t e = p[s + 1];
        for (; j + 16 <= e; j += 16) {
            __m256i i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(off + j)));
            __m256i i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(off + j + 8)));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + j), _mm256_i32gather_ps(xs, i0, 4), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(val + j + 8), _mm256_i32gather_ps(xs, i1, 4), a1);
        }
        for (; j < e; j++) t += val[j] * xs[off[j]];
    }
    __m256 a = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h) + t;
#else
    return row_dot_scalar(p, off, val, x, nseg);
#endif
}

/* vec = 0: the scalar loop, 1: the gathers (the scalar loop where the build has neither). */
static inline float row_dot(const int32_t *p, const uint8_t *off, const float *val, const float *x,
                            int64_t nseg, int vec) {
    return vec ? row_dot_vec(p, off, val, x, nseg) : row_dot_scalar(p, off, val, x, nseg);
}

/* out (d_out,) = S x: one token. */
void csr8_matvec(const int32_t *ptr, const uint8_t *off, const float *val, const float *x,
                 float *out, int64_t d_out, int64_t nseg, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t r = 0; r < d_out; r++) out[r] = row_dot_scalar(ptr + r * nseg, off, val, x, nseg);
}

/* A dense dot product of n floats (the thin factors' rows); omp simd lets the compiler
 * vectorise the sum, which it may not reorder on its own. */
static inline float dense_dot(const float *a, const float *b, int64_t n) {
    float acc = 0.f;
    #pragma omp simd reduction(+:acc)
    for (int64_t k = 0; k < n; k++) acc += a[k] * b[k];
    return acc;
}

/* out (d_out,) = S x + U (V x) + bias for one token, in one parallel region: a layer of a
 * decoding step is one call instead of four (the sparse product, the two thin products and
 * the sum), which saves the Python and dispatch work of three and two thread wake-ups.
 * v (r, d_in), u (d_out, r) row-major; tmp (r,) scratch; bias may be NULL. */
void slr_matvec(const int32_t *ptr, const uint8_t *off, const float *val, const float *x,
                const float *v, const float *u, const float *bias, float *tmp, float *out,
                int64_t d_out, int64_t d_in, int64_t nseg, int64_t r, int vec, int nthreads) {
    #pragma omp parallel num_threads(nthreads)
    {
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < r; k++) tmp[k] = dense_dot(v + k * d_in, x, d_in);
        /* the implicit barrier: every thread sees the whole of V x */
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < d_out; i++) {
            float y = row_dot(ptr + i * nseg, off, val, x, nseg, vec);
            if (r) y += dense_dot(u + i * r, tmp, r);
            out[i] = bias ? y + bias[i] : y;
        }
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
