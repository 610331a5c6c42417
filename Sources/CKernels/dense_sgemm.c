#include "fwp_kernels.h"

// Matrix products of the model's dense layers (N × D activations against D × D' weights) on
// AVX-512: op(B) is packed into panels of 32 columns (contiguous, 64-byte aligned, zero-padded),
// then each block of 12 rows × 32 columns of C is accumulated in 24 registers over the whole
// inner dimension (in slices for weight gradients), reading op(A) by broadcasts — in place, or
// from a 12-row slab copied first for wide outputs and weight gradients — and written once, with
// alpha, beta and an epilogue (a bias, ReLU, or a ReLU's backward with its column sums) applied
// in the same pass. Against OpenBLAS this saves its separate pass over C for beta (a memset when
// beta is 0) and the layers' own passes; docs/PERFORMANCE.md has the measurements.

#if defined(__x86_64__)
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define FWP_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define FWP_INLINE static inline __attribute__((always_inline))

#include "simd_shared.h"
// `rows` is a constant at every call of `block`; its loops over rows must unroll fully so the
// 24 accumulators live in registers (clang otherwise keeps some 12-row cases in memory).

enum { ROWS = 12, PANEL = 32 };

// The calling thread's panel buffer, grown as needed and kept for its next product; freed when
// the thread exits (a pthread key's destructor), so worker threads that come and go in a
// long-running process leave nothing behind.
static __thread float *panel_buffer;
static __thread size_t panel_capacity;
static pthread_key_t panel_key;
static pthread_once_t panel_key_once = PTHREAD_ONCE_INIT;

static void panel_key_create(void) {
    if (pthread_key_create(&panel_key, free) != 0) __builtin_trap();
}

static float *panels(size_t floats) {
    if (floats > panel_capacity) {
        pthread_once(&panel_key_once, panel_key_create);
        free(panel_buffer);
        size_t bytes = (floats * sizeof(float) + 63) & ~(size_t)63;
        panel_buffer = aligned_alloc(64, bytes);
        if (!panel_buffer) __builtin_trap();
        panel_capacity = bytes / sizeof(float);
        pthread_setspecific(panel_key, panel_buffer);
    }
    return panel_buffer;
}

// What a block does to C after alpha and beta: + bias[j] (per column), ReLU, · [gate[i, j] > 0]
// (a ReLU's backward, gate being its output), then colsum[j] += the column's sum — each only
// when set. Pointers are to column 0 (row 0 for the gate) of the whole product.
typedef struct {
    const float *bias;
    int relu;
    const float *gate;
    long ldg;
    float *colsum;
} epilogue_t;

static const epilogue_t plain = {0};

// op(B) (k × n) into panels: panel p holds columns 32p … 32p + 31 as k rows of 32 floats.
static __attribute__((noinline)) FWP_AVX512 void pack_b(int transpose_b, int k, int n, const float *b, long ldb, float *out) {
    int np = (n + PANEL - 1) / PANEL;
    for (int p = 0; p < np; p++) {
        int w = n - p * PANEL < PANEL ? n - p * PANEL : PANEL;
        float *d = out + (long)p * k * PANEL;
        if (!transpose_b) {
            __mmask16 m0 = lanes16(w), m1 = lanes16(w - 16);
            const float *s = b + p * PANEL;
            for (int q = 0; q < k; q++) {
                _mm512_store_ps(d + q * PANEL, _mm512_maskz_loadu_ps(m0, s + q * ldb));
                _mm512_store_ps(d + q * PANEL + 16, _mm512_maskz_loadu_ps(m1, s + q * ldb + 16));
            }
        } else {
            // op(B)(q, j) = b[j * ldb + q]: rows of b become the panel's columns.
            const float *s = b + (long)p * PANEL * ldb;
            if (w == PANEL) {
                fwp_transpose(PANEL, k, s, (int)ldb, d, PANEL);
            } else {
                for (int q = 0; q < k; q++) memset(d + q * PANEL, 0, PANEL * sizeof(float));
                fwp_transpose(w, k, s, (int)ldb, d, PANEL);
            }
        }
    }
}

// One block of `rows` ≤ 12 rows × 32 columns (16 unless `wide`; masks m0, m1 at the column
// edge), over all k: C ← alpha · op(A) op(B) + beta · C, then the epilogue `e`; the block is
// rows i … of C (at c) and columns j … (at c too). op(A)(i, q) is a[q * lda + i] with trans_a,
// a[i * lda + q] without. `rows`, `wide` and `trans_a` are constants at each call site.
FWP_INLINE FWP_AVX512 void block(int rows, int wide, int trans_a, int k, const float *a, long lda, const float *bp,
                                 float alpha, float beta, float *c, long ldc, __mmask16 m0, __mmask16 m1,
                                 const epilogue_t *e, long i, long j) {
    __m512 x0[ROWS], x1[ROWS];
    _Pragma("clang loop unroll(full)")
    for (int r = 0; r < ROWS; r++) {
        x0[r] = _mm512_setzero_ps();
        x1[r] = _mm512_setzero_ps();
    }
    if (trans_a) {
        for (int q = 0; q < k; q++) {
            __m512 b0 = _mm512_load_ps(bp + q * PANEL), b1 = wide ? _mm512_load_ps(bp + q * PANEL + 16) : b0;
            const float *aq = a + q * lda;
            _Pragma("clang loop unroll(full)")
            for (int r = 0; r < rows; r++) {
                __m512 av = _mm512_set1_ps(aq[r]);
                x0[r] = _mm512_fmadd_ps(av, b0, x0[r]);
                if (wide) x1[r] = _mm512_fmadd_ps(av, b1, x1[r]);
            }
        }
    } else {
        // Four base pointers and one index reach all twelve rows (x86 scales 1, 2, 4, 8).
        const float *p0 = a, *p3 = a + 3 * lda, *p6 = a + 6 * lda, *p9 = a + 9 * lda;
        for (int q = 0; q < k; q++) {
            __m512 b0 = _mm512_load_ps(bp + q * PANEL), b1 = wide ? _mm512_load_ps(bp + q * PANEL + 16) : b0;
            _Pragma("clang loop unroll(full)")
            for (int r = 0; r < rows; r++) {
                const float *base = r < 3 ? p0 : r < 6 ? p3 : r < 9 ? p6 : p9;
                __m512 av = _mm512_set1_ps(base[(r % 3) * lda + q]);
                x0[r] = _mm512_fmadd_ps(av, b0, x0[r]);
                if (wide) x1[r] = _mm512_fmadd_ps(av, b1, x1[r]);
            }
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta), zero = _mm512_setzero_ps();
    const float *bias = e->bias ? e->bias + j : NULL;
    __m512 bias0 = zero, bias1 = zero, sum0 = zero, sum1 = zero;
    if (bias) {
        bias0 = _mm512_maskz_loadu_ps(m0, bias);
        bias1 = _mm512_maskz_loadu_ps(m1, bias + 16);
    }
    _Pragma("clang loop unroll(full)")
    for (int r = 0; r < rows; r++) {
        float *cr = c + r * ldc;
        __m512 y0 = x0[r], y1 = x1[r];
        if (alpha != 1.0f) {
            y0 = _mm512_mul_ps(va, y0);
            y1 = _mm512_mul_ps(va, y1);
        }
        if (beta == 1.0f) {
            y0 = _mm512_add_ps(y0, _mm512_maskz_loadu_ps(m0, cr));
            y1 = _mm512_add_ps(y1, _mm512_maskz_loadu_ps(m1, cr + 16));
        } else if (beta != 0.0f) {
            y0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, cr), y0);
            y1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16), y1);
        }
        if (bias) {
            y0 = _mm512_add_ps(y0, bias0);
            y1 = _mm512_add_ps(y1, bias1);
        }
        if (e->relu) {
            y0 = _mm512_max_ps(y0, zero);
            y1 = _mm512_max_ps(y1, zero);
        }
        if (e->gate) {
            const float *g = e->gate + (i + r) * e->ldg + j;
            y0 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m0, g), zero, _CMP_GT_OQ), y0);
            y1 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m1, g + 16), zero, _CMP_GT_OQ), y1);
        }
        if (e->colsum) {
            sum0 = _mm512_add_ps(sum0, y0);
            sum1 = _mm512_add_ps(sum1, y1);
        }
        _mm512_mask_storeu_ps(cr, m0, y0);
        if (wide) _mm512_mask_storeu_ps(cr + 16, m1, y1);
    }
    if (e->colsum) {
        float *cs = e->colsum + j;
        _mm512_mask_storeu_ps(cs, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cs), sum0));
        if (wide) _mm512_mask_storeu_ps(cs + 16, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cs + 16), sum1));
    }
}

// Rows i … i + rows − 1 of C against every panel; ai is where op(A)'s row i starts.
FWP_INLINE FWP_AVX512 void row_block(int rows, int trans_a, int n, int k, const float *ai, long lda,
                                     const float *packed, float alpha, float beta, float *c, long ldc,
                                     const epilogue_t *e, long i) {
    int np = (n + PANEL - 1) / PANEL;
    for (int p = 0; p < np; p++) {
        int w = n - p * PANEL;
        const float *bp = packed + (long)p * k * PANEL;
        float *cij = c + i * ldc + p * PANEL;
        if (w > 16)
            block(rows, 1, trans_a, k, ai, lda, bp, alpha, beta, cij, ldc, lanes16(w), lanes16(w - 16), e, i, p * PANEL);
        else  // a last panel of at most 16 columns: one register per row
            block(rows, 0, trans_a, k, ai, lda, bp, alpha, beta, cij, ldc, lanes16(w), 0, e, i, p * PANEL);
    }
}

static void pack_rows(int rows, int k, const float *a, long lda, float *slab);

// A is packed into slabs (pack_rows) when C has at least this many panels to reuse each slab
// over; with fewer, the transposition cost more than the in-place broadcasts.
enum { PACK_A_PANELS = 8 };

static FWP_AVX512 void dense_a(int m, int n, int k, const float *a, long lda, const float *packed, float *slab,
                               float alpha, float beta, float *c, long ldc, const epilogue_t *e) {
    long i = 0;
    if ((n + PANEL - 1) / PANEL >= PACK_A_PANELS) {
        for (; i + ROWS <= m; i += ROWS) {
            pack_rows(ROWS, k, a + i * lda, lda, slab);
            row_block(ROWS, 1, n, k, slab, ROWS, packed, alpha, beta, c, ldc, e, i);
        }
        if (i < m) pack_rows((int)(m - i), k, a + i * lda, lda, slab);
        switch (m - i) {
#define REST(R) \
    case R: row_block(R, 1, n, k, slab, ROWS, packed, alpha, beta, c, ldc, e, i); break;
            REST(11) REST(10) REST(9) REST(8) REST(7) REST(6) REST(5) REST(4) REST(3) REST(2) REST(1)
#undef REST
        default: break;
        }
        return;
    }
    for (; i + ROWS <= m; i += ROWS) row_block(ROWS, 0, n, k, a + i * lda, lda, packed, alpha, beta, c, ldc, e, i);
    switch (m - i) {
#define REST(R) \
    case R: row_block(R, 0, n, k, a + i * lda, lda, packed, alpha, beta, c, ldc, e, i); break;
        REST(11) REST(10) REST(9) REST(8) REST(7) REST(6) REST(5) REST(4) REST(3) REST(2) REST(1)
#undef REST
    default: break;
    }
}

// op(A) = Aᵀ (a weight gradient: the inner dimension is the batch's rows, long): in slices of
// KC inner steps, each 12-column block of A is copied into a contiguous KC × 12 slab, so both
// operands stream from L1/L2 in order; C accumulates across slices.
enum { KC = 128 };

// Columns i … i + rows − 1 of kk rows of A into a contiguous kk × 12 slab (zero past rows).
static __attribute__((noinline)) FWP_AVX512 void pack_slab(int rows, int kk, const float *a, long lda, float *slab) {
    __mmask16 mr = lanes16(rows);
    for (int q = 0; q < kk; q++) _mm512_mask_storeu_ps(slab + q * ROWS, 0x0FFF, _mm512_maskz_loadu_ps(mr, a + q * lda));
}

// Rows 0 … rows − 1 (≤ 12) of a k-column block of A (row stride lda) into a contiguous k × 12
// slab, transposed (slab[q · 12 + r] = a[r · lda + q]; zero past rows), so the block's
// broadcasts read one line in order instead of twelve rows far apart.
static __attribute__((noinline)) FWP_AVX512 void pack_rows(int rows, int k, const float *a, long lda, float *slab) {
    if (rows < ROWS) {
        for (int q = 0; q < k; q++) {
            for (int r = 0; r < rows; r++) slab[q * ROWS + r] = a[r * lda + q];
            for (int r = rows; r < ROWS; r++) slab[q * ROWS + r] = 0;
        }
        return;
    }
    int q = 0;
    for (; q + 8 <= k; q += 8) {
        // Rows 0–7: one 8 × 8 transpose; rows 8–11: four rows of 8 as two 4 × 4 transposes.
        float *d = slab + q * ROWS;
        transpose8(a + q, lda, d, ROWS);
        __m256 u0 = _mm256_loadu_ps(a + 8 * lda + q), u1 = _mm256_loadu_ps(a + 9 * lda + q);
        __m256 u2 = _mm256_loadu_ps(a + 10 * lda + q), u3 = _mm256_loadu_ps(a + 11 * lda + q);
        __m256 v0 = _mm256_unpacklo_ps(u0, u1), v1 = _mm256_unpackhi_ps(u0, u1);
        __m256 v2 = _mm256_unpacklo_ps(u2, u3), v3 = _mm256_unpackhi_ps(u2, u3);
        __m256 w0 = _mm256_shuffle_ps(v0, v2, 0x44), w1 = _mm256_shuffle_ps(v0, v2, 0xEE);
        __m256 w2 = _mm256_shuffle_ps(v1, v3, 0x44), w3 = _mm256_shuffle_ps(v1, v3, 0xEE);
        // w0 holds column q (low half) and q + 4 (high half), w1 q + 1 and q + 5, and so on.
        _mm_storeu_ps(d + 0 * ROWS + 8, _mm256_castps256_ps128(w0));
        _mm_storeu_ps(d + 1 * ROWS + 8, _mm256_castps256_ps128(w1));
        _mm_storeu_ps(d + 2 * ROWS + 8, _mm256_castps256_ps128(w2));
        _mm_storeu_ps(d + 3 * ROWS + 8, _mm256_castps256_ps128(w3));
        _mm_storeu_ps(d + 4 * ROWS + 8, _mm256_extractf128_ps(w0, 1));
        _mm_storeu_ps(d + 5 * ROWS + 8, _mm256_extractf128_ps(w1, 1));
        _mm_storeu_ps(d + 6 * ROWS + 8, _mm256_extractf128_ps(w2, 1));
        _mm_storeu_ps(d + 7 * ROWS + 8, _mm256_extractf128_ps(w3, 1));
    }
    for (; q < k; q++)
        for (int r = 0; r < ROWS; r++) slab[q * ROWS + r] = a[r * lda + q];
}

static FWP_AVX512 void dense_at(int transpose_b, int m, int n, int k, const float *a, long lda, const float *b,
                                long ldb, float *packed, float *slab, float alpha, float beta, float *c, long ldc) {
    for (int kc = 0; kc < k || kc == 0; kc += KC) {
        int kk = k - kc < KC ? k - kc : KC;
        float sliceBeta = kc == 0 ? beta : 1.0f;
        if (kk > 0) pack_b(transpose_b, kk, n, transpose_b ? b + kc : b + (long)kc * ldb, ldb, packed);
        long i = 0;
        for (; i < m; i += ROWS) {
            int rows = m - i < ROWS ? (int)(m - i) : ROWS;
            pack_slab(rows, kk, a + (long)kc * lda + i, lda, slab);
            switch (rows) {
#define SLAB(R) \
    case R: row_block(R, 1, n, kk, slab, ROWS, packed, alpha, sliceBeta, c, ldc, &plain, i); break;
                SLAB(12) SLAB(11) SLAB(10) SLAB(9) SLAB(8) SLAB(7) SLAB(6) SLAB(5) SLAB(4) SLAB(3) SLAB(2) SLAB(1)
#undef SLAB
            default: break;
            }
        }
        if (k == 0) break;
    }
}

int fwp_dense_sgemm_supported(void) { return fwp_cpu_vector_level() >= 3; }

FWP_AVX512 void fwp_dense_sgemm(int transpose_a, int transpose_b, int m, int n, int k, float alpha, const float *a,
                                int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    fwp_dense_sgemm_bias(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, NULL, 0);
}

// The untransposed-A products (op(B) packed whole), with an epilogue.
static FWP_AVX512 void dense_untransposed(int transpose_b, int m, int n, int k, float alpha, const float *a, int lda,
                                          const float *b, int ldb, float beta, float *c, int ldc, const epilogue_t *e) {
    long np = (n + PANEL - 1) / PANEL;
    size_t depth = k > 0 ? (size_t)k : 1;
    float *packed = panels((size_t)np * PANEL * depth + depth * ROWS);
    if (k > 0) pack_b(transpose_b, k, n, b, ldb, packed);
    dense_a(m, n, k, a, lda, packed, packed + np * PANEL * depth, alpha, beta, c, ldc, e);
}

FWP_AVX512 void fwp_dense_sgemm_bias(int transpose_a, int transpose_b, int m, int n, int k, float alpha,
                                     const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                                     const float *bias, int relu) {
    if (m <= 0 || n <= 0) return;
    if (transpose_a && (bias || relu)) __builtin_trap();
    long np = (n + PANEL - 1) / PANEL;
    if (transpose_a) {
        float *packed = panels((size_t)np * PANEL * KC + (size_t)KC * ROWS);
        dense_at(transpose_b, m, n, k, a, lda, b, ldb, packed, packed + np * PANEL * KC, alpha, beta, c, ldc);
        return;
    }
    epilogue_t e = plain;
    e.bias = bias;
    e.relu = relu;
    dense_untransposed(transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, &e);
}

FWP_AVX512 void fwp_dense_sgemm_gated(int transpose_b, int m, int n, int k, const float *a, int lda, const float *b,
                                      int ldb, float *c, int ldc, const float *gate, int ldg, float *colsum) {
    if (m <= 0 || n <= 0) return;
    epilogue_t e = plain;
    e.gate = gate;
    e.ldg = ldg;
    e.colsum = colsum;
    dense_untransposed(transpose_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc, &e);
}

#else

int fwp_dense_sgemm_supported(void) { return 0; }

void fwp_dense_sgemm(int transpose_a, int transpose_b, int m, int n, int k, float alpha, const float *a, int lda,
                     const float *b, int ldb, float beta, float *c, int ldc) {
    (void)transpose_a, (void)transpose_b, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda, (void)b;
    (void)ldb, (void)beta, (void)c, (void)ldc;
    __builtin_trap();
}

void fwp_dense_sgemm_bias(int transpose_a, int transpose_b, int m, int n, int k, float alpha, const float *a, int lda,
                          const float *b, int ldb, float beta, float *c, int ldc, const float *bias, int relu) {
    (void)transpose_a, (void)transpose_b, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda, (void)b;
    (void)ldb, (void)beta, (void)c, (void)ldc, (void)bias, (void)relu;
    __builtin_trap();
}

void fwp_dense_sgemm_gated(int transpose_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                           float *c, int ldc, const float *gate, int ldg, float *colsum) {
    (void)transpose_b, (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb, (void)c, (void)ldc;
    (void)gate, (void)ldg, (void)colsum;
    __builtin_trap();
}

#endif
