#include "fwp_kernels.h"
#include "prefetch.h"

void fwp_prefetch_rows(const float *p, long stride, long rows, long width) {
    fwp_prefetch_row_lines(p, stride, rows, width, FWP_READ_L1);
}

#if defined(__x86_64__)
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define FWP_AVX2 __attribute__((target("avx2,fma")))
#define FWP_INLINE static inline __attribute__((always_inline))

#include "simd_shared.h"

// One term of a product sum, as the blocks read it: A(i, p) = a[i * ars + p * aps],
// B(p, j) = b[p * ldb + j] (B already transposed where the caller asked), accumulated with its sign.
// k and negate are not neighbours, so that copying them from the caller's fwp_gemm_term stays
// two 4-byte loads: as neighbours the compiler merged them into one 8-byte load, which the
// caller's two 4-byte stores (just made) cannot forward to, and the chunkwise loops stalled on it.
typedef struct {
    int negate;
    const float *a;
    long ars, aps;
    const float *b;
    long ldb;
    int k;
} term_t;

// Accumulates one term into a block's registers. `rows` and `neg` are constants at each call
// site (the switch in column_panel), so the loops unroll and the sign costs nothing.
FWP_INLINE FWP_AVX2 void accumulate(int rows, int masked, int neg, __m256i m0, __m256i m1, int k, const float *a,
                                    long ars, long aps, const float *b, long ldb, __m256 *acc0, __m256 *acc1) {
    for (int p = 0; p < k; p++) {
        const float *bp = b + p * ldb;
        __m256 b0 = masked ? _mm256_maskload_ps(bp, m0) : _mm256_loadu_ps(bp);
        __m256 b1 = masked ? _mm256_maskload_ps(bp + 8, m1) : _mm256_loadu_ps(bp + 8);
        const float *ap = a + p * aps;
        for (int r = 0; r < rows; r++) {
            __m256 av = _mm256_broadcast_ss(ap + r * ars);
            acc0[r] = neg ? _mm256_fnmadd_ps(av, b0, acc0[r]) : _mm256_fmadd_ps(av, b0, acc0[r]);
            acc1[r] = neg ? _mm256_fnmadd_ps(av, b1, acc1[r]) : _mm256_fmadd_ps(av, b1, acc1[r]);
        }
    }
}

// One block of up to 4 rows × 16 columns of C (rows i…, columns j…), accumulated over every
// term's k in 8 registers and stored once. `masked` selects partial-width loads/stores.
// C ← C_in ± Σ (beta 1, alpha ±1: the state updates) starts the registers from C_in and folds
// alpha into the terms' signs; alpha 1 skips the scaling: no floating-point work outside the
// products' own FMAs in either case (which share the two FMA pipes with it).
FWP_INLINE FWP_AVX2 void block(int rows, int masked, __m256i m0, __m256i m1, int nterms, const term_t *t, long i,
                               long j, float alpha, float beta, const float *cin, long ldcin, float *c, long ldc) {
    __m256 acc0[4], acc1[4];
    int from_c = beta == 1.0f && (alpha == 1.0f || alpha == -1.0f);
    int flip = from_c && alpha == -1.0f;
    for (int r = 0; r < 4; r++) {
        acc0[r] = _mm256_setzero_ps();
        acc1[r] = _mm256_setzero_ps();
    }
    if (from_c)
        for (int r = 0; r < rows; r++) {
            const float *cir = cin + (i + r) * ldcin + j;
            acc0[r] = masked ? _mm256_maskload_ps(cir, m0) : _mm256_loadu_ps(cir);
            acc1[r] = masked ? _mm256_maskload_ps(cir + 8, m1) : _mm256_loadu_ps(cir + 8);
        }
    for (int s = 0; s < nterms; s++) {
        const float *a = t[s].a + i * t[s].ars, *b = t[s].b + j;
        if (t[s].negate != flip)
            accumulate(rows, masked, 1, m0, m1, t[s].k, a, t[s].ars, t[s].aps, b, t[s].ldb, acc0, acc1);
        else
            accumulate(rows, masked, 0, m0, m1, t[s].k, a, t[s].ars, t[s].aps, b, t[s].ldb, acc0, acc1);
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (int r = 0; r < rows; r++) {
        float *cr = c + (i + r) * ldc + j;
        const float *cir = cin + (i + r) * ldcin + j;
        __m256 x0 = acc0[r], x1 = acc1[r];
        if (!from_c) {
            if (alpha != 1.0f) {
                x0 = _mm256_mul_ps(va, x0);
                x1 = _mm256_mul_ps(va, x1);
            }
            if (beta != 0) {
                __m256 c0 = masked ? _mm256_maskload_ps(cir, m0) : _mm256_loadu_ps(cir);
                __m256 c1 = masked ? _mm256_maskload_ps(cir + 8, m1) : _mm256_loadu_ps(cir + 8);
                x0 = _mm256_fmadd_ps(vb, c0, x0);
                x1 = _mm256_fmadd_ps(vb, c1, x1);
            }
        }
        if (masked) {
            _mm256_maskstore_ps(cr, m0, x0);
            _mm256_maskstore_ps(cr + 8, m1, x1);
        } else {
            _mm256_storeu_ps(cr, x0);
            _mm256_storeu_ps(cr + 8, x1);
        }
    }
}

FWP_INLINE FWP_AVX2 void column_panel(int masked, __m256i m0, __m256i m1, int m, int nterms, const term_t *t, long j,
                                      float alpha, float beta, const float *cin, long ldcin, float *c, long ldc) {
    int i = 0;
    for (; i + 4 <= m; i += 4) block(4, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc);
    switch (m - i) {
    case 3: block(3, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    case 2: block(2, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    case 1: block(1, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    default: break;
    }
}

static int use_avx512(void);
static void transpose16_tiles(int rows, int cols, const float *src, int lds, float *dst, int ldd);

// dst (cols × rows, row stride ldd) ← srcᵀ: 16 × 16 tiles through registers where AVX-512 runs,
// then 8 × 8 tiles, element by element at the edges. Also the small kernel's transposition of a
// transposed B operand.
FWP_AVX2 void fwp_transpose(int rows, int cols, const float *src, int lds, float *dst, int ldd) {
    if (rows >= 16 && cols >= 16 && use_avx512()) {
        int r16 = rows / 16 * 16, c16 = cols / 16 * 16;
        transpose16_tiles(r16, c16, src, lds, dst, ldd);
        // The rest: the columns past c16 of the first r16 rows, then the rows past r16.
        if (c16 < cols) fwp_transpose(r16, cols - c16, src + c16, lds, dst + (long)c16 * ldd, ldd);
        if (r16 < rows) fwp_transpose(rows - r16, cols, src + (long)r16 * lds, lds, dst + r16, ldd);
        return;
    }
    int j = 0;
    for (; j + 8 <= rows; j += 8) {
        int p = 0;
        for (; p + 8 <= cols; p += 8) transpose8(src + (long)j * lds + p, lds, dst + (long)p * ldd + j, ldd);
        for (; p < cols; p++)
            for (int jj = j; jj < j + 8; jj++) dst[(long)p * ldd + jj] = src[(long)jj * lds + p];
    }
    for (; j < rows; j++)
        for (int p = 0; p < cols; p++) dst[(long)p * ldd + j] = src[(long)j * lds + p];
}

// Asks for row r + 6 of `rows` rows of src: the model's per-head rows lie H·d floats apart,
// mostly outside L1 and L2, and the row copies below read them a few rows ahead.
FWP_INLINE void prefetch_row_ahead(const float *src, long lds, long r, long rows, long width) {
    const long ahead = 6;
    if (r + ahead < rows)
        for (long j = 0; j < width; j += 16) __builtin_prefetch(src + (r + ahead) * lds + j, 0, 3);
}

// Rows of `width` floats from src (stride lds) to dst (stride ldd), prefetching the source a few
// rows ahead.
static FWP_AVX2 void copy_rows_avx2(const float *src, long lds, float *dst, long ldd, long rows, long width) {
    for (long r = 0; r < rows; r++) {
        const float *s = src + r * lds;
        float *d = dst + r * ldd;
        prefetch_row_ahead(src, lds, r, rows, width);
        long j = 0;
        for (; j + 32 <= width; j += 32) {
            __m256 a = _mm256_loadu_ps(s + j), b = _mm256_loadu_ps(s + j + 8);
            __m256 c = _mm256_loadu_ps(s + j + 16), e = _mm256_loadu_ps(s + j + 24);
            _mm256_storeu_ps(d + j, a);
            _mm256_storeu_ps(d + j + 8, b);
            _mm256_storeu_ps(d + j + 16, c);
            _mm256_storeu_ps(d + j + 24, e);
        }
        for (; j + 8 <= width; j += 8) _mm256_storeu_ps(d + j, _mm256_loadu_ps(s + j));
        for (; j < width; j++) d[j] = s[j];
    }
}

static FWP_AVX2 void copy_rows_scaled_avx2(const float *src, long lds, float *dst, long ldd, long rows, long width,
                                            float scale) {
    const __m256 s = _mm256_set1_ps(scale);
    for (long r = 0; r < rows; r++) {
        const float *sr = src + r * lds;
        float *d = dst + r * ldd;
        prefetch_row_ahead(src, lds, r, rows, width);
        long j = 0;
        for (; j + 8 <= width; j += 8) _mm256_storeu_ps(d + j, _mm256_mul_ps(_mm256_loadu_ps(sr + j), s));
        for (; j < width; j++) d[j] = sr[j] * scale;
    }
}

// Whether the row copies run their AVX2 loops (asked of the CPU once).
static int copy_rows_avx2_supported(void) {
    static int avx2 = -1;
    if (avx2 < 0) avx2 = fwp_small_sgemm_supported();
    return avx2;
}

void fwp_copy_rows_scaled(const float *src, long lds, float *dst, long ldd, long rows, long width, float scale) {
    if (scale == 1.0f) {
        fwp_copy_rows(src, lds, dst, ldd, rows, width);
    } else if (copy_rows_avx2_supported()) {
        copy_rows_scaled_avx2(src, lds, dst, ldd, rows, width, scale);
    } else {
        for (long r = 0; r < rows; r++)
            for (long j = 0; j < width; j++) dst[r * ldd + j] = src[r * lds + j] * scale;
    }
}

void fwp_copy_rows(const float *src, long lds, float *dst, long ldd, long rows, long width) {
    if (copy_rows_avx2_supported()) {
        copy_rows_avx2(src, lds, dst, ldd, rows, width);
        return;
    }
    for (long r = 0; r < rows; r++)
        for (long j = 0; j < width; j++) dst[r * ldd + j] = src[r * lds + j];
}

// --- AVX-512 ---------------------------------------------------------------------------------
// The same product sums with 16-float registers, for CPUs with AVX-512 (fwp_cpu_vector_level 3):
// blocks of up to 8 rows × 32 columns (16 accumulators, two per row), or × 16 columns for
// narrower panels; column edges use mask registers, so no lane past n is read or written.
#define FWP_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

FWP_INLINE FWP_AVX512 void accumulate512(int rows, int vecs, int masked, int neg, __mmask16 m0, __mmask16 m1, int k,
                                         const float *a, long ars, long aps, const float *b, long ldb, __m512 *acc0,
                                         __m512 *acc1) {
    for (int p = 0; p < k; p++) {
        const float *bp = b + p * ldb;
        __m512 b0 = masked ? _mm512_maskz_loadu_ps(m0, bp) : _mm512_loadu_ps(bp);
        __m512 b1 = _mm512_setzero_ps();
        if (vecs == 2) b1 = masked ? _mm512_maskz_loadu_ps(m1, bp + 16) : _mm512_loadu_ps(bp + 16);
        const float *ap = a + p * aps;
        for (int r = 0; r < rows; r++) {
            __m512 av = _mm512_set1_ps(ap[r * ars]);
            acc0[r] = neg ? _mm512_fnmadd_ps(av, b0, acc0[r]) : _mm512_fmadd_ps(av, b0, acc0[r]);
            if (vecs == 2) acc1[r] = neg ? _mm512_fnmadd_ps(av, b1, acc1[r]) : _mm512_fmadd_ps(av, b1, acc1[r]);
        }
    }
}

FWP_INLINE FWP_AVX512 __m512 load512(int masked, __mmask16 m, const float *p) {
    return masked ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
}

FWP_INLINE FWP_AVX512 void store512(int masked, __mmask16 m, float *p, __m512 x) {
    if (masked)
        _mm512_mask_storeu_ps(p, m, x);
    else
        _mm512_storeu_ps(p, x);
}

// One block of `rows` ≤ 8 rows × 16·vecs columns; the epilogue is the AVX2 block's.
FWP_INLINE FWP_AVX512 void block512(int rows, int vecs, int masked, __mmask16 m0, __mmask16 m1, int nterms,
                                    const term_t *t, long i, long j, float alpha, float beta, const float *cin,
                                    long ldcin, float *c, long ldc) {
    __m512 acc0[8], acc1[8];
    int from_c = beta == 1.0f && (alpha == 1.0f || alpha == -1.0f);
    int flip = from_c && alpha == -1.0f;
    for (int r = 0; r < 8; r++) {
        acc0[r] = _mm512_setzero_ps();
        acc1[r] = _mm512_setzero_ps();
    }
    if (from_c)
        for (int r = 0; r < rows; r++) {
            const float *cir = cin + (i + r) * ldcin + j;
            acc0[r] = load512(masked, m0, cir);
            if (vecs == 2) acc1[r] = load512(masked, m1, cir + 16);
        }
    for (int s = 0; s < nterms; s++) {
        const float *a = t[s].a + i * t[s].ars, *b = t[s].b + j;
        if (t[s].negate != flip)
            accumulate512(rows, vecs, masked, 1, m0, m1, t[s].k, a, t[s].ars, t[s].aps, b, t[s].ldb, acc0, acc1);
        else
            accumulate512(rows, vecs, masked, 0, m0, m1, t[s].k, a, t[s].ars, t[s].aps, b, t[s].ldb, acc0, acc1);
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < rows; r++) {
        float *cr = c + (i + r) * ldc + j;
        const float *cir = cin + (i + r) * ldcin + j;
        __m512 x0 = acc0[r], x1 = acc1[r];
        if (!from_c) {
            if (alpha != 1.0f) {
                x0 = _mm512_mul_ps(va, x0);
                if (vecs == 2) x1 = _mm512_mul_ps(va, x1);
            }
            if (beta != 0) {
                x0 = _mm512_fmadd_ps(vb, load512(masked, m0, cir), x0);
                if (vecs == 2) x1 = _mm512_fmadd_ps(vb, load512(masked, m1, cir + 16), x1);
            }
        }
        store512(masked, m0, cr, x0);
        if (vecs == 2) store512(masked, m1, cr + 16, x1);
    }
}

FWP_INLINE FWP_AVX512 void column_panel512(int vecs, int masked, __mmask16 m0, __mmask16 m1, int m, int nterms,
                                           const term_t *t, long j, float alpha, float beta, const float *cin,
                                           long ldcin, float *c, long ldc) {
    int i = 0;
    for (; i + 8 <= m; i += 8) block512(8, vecs, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc);
    switch (m - i) {
    case 7: block512(7, vecs, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    case 6: block512(6, vecs, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    case 5: block512(5, vecs, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    case 4: block512(4, vecs, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    case 3: block512(3, vecs, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    case 2: block512(2, vecs, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    case 1: block512(1, vecs, masked, m0, m1, nterms, t, i, j, alpha, beta, cin, ldcin, c, ldc); break;
    default: break;
    }
}

static FWP_AVX512 void small_sgemm_sum512(int m, int n, int count, const term_t *t, float alpha, float beta,
                                          const float *c_in, int ldc_in, float *c, int ldc) {
    const __mmask16 all = 0xFFFF;
    int j = 0;
    for (; j + 32 <= n; j += 32) column_panel512(2, 0, all, all, m, count, t, j, alpha, beta, c_in, ldc_in, c, ldc);
    int w = n - j;
    if (w > 16)
        column_panel512(2, 1, all, lanes16(w - 16), m, count, t, j, alpha, beta, c_in, ldc_in, c, ldc);
    else if (w == 16)
        column_panel512(1, 0, all, all, m, count, t, j, alpha, beta, c_in, ldc_in, c, ldc);
    else if (w > 0)
        column_panel512(1, 1, lanes16(w), 0, m, count, t, j, alpha, beta, c_in, ldc_in, c, ldc);
}

// A 16 × 16 tile of src (row stride lds) transposed into dst (row stride ldd): pairs of rows
// interleaved, then pairs of pairs, then 128-bit quarters twice (64 shuffles for 256 floats).
FWP_INLINE FWP_AVX512 void transpose16(const float *src, long lds, float *dst, long ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    // r[4g + q] now holds, in each 128-bit quarter l, column 4l + q of rows 4g … 4g + 3.
    for (int q = 0; q < 4; q++) {
        t[q] = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);       // quarters 0, 2 of rows 0–7
        t[4 + q] = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xDD);   // quarters 1, 3
        t[8 + q] = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
        t[12 + q] = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xDD);
    }
    for (int q = 0; q < 4; q++) {
        // column q (quarter 0), 4 + q (1), 8 + q (2), 12 + q (3)
        _mm512_storeu_ps(dst + (q + 0) * ldd, _mm512_shuffle_f32x4(t[q], t[8 + q], 0x88));
        _mm512_storeu_ps(dst + (q + 8) * ldd, _mm512_shuffle_f32x4(t[q], t[8 + q], 0xDD));
        _mm512_storeu_ps(dst + (q + 4) * ldd, _mm512_shuffle_f32x4(t[4 + q], t[12 + q], 0x88));
        _mm512_storeu_ps(dst + (q + 12) * ldd, _mm512_shuffle_f32x4(t[4 + q], t[12 + q], 0xDD));
    }
}

static FWP_AVX512 void transpose16_tiles(int rows, int cols, const float *src, int lds, float *dst, int ldd) {
    for (int i = 0; i < rows; i += 16)
        for (int j = 0; j < cols; j += 16) transpose16(src + (long)i * lds + j, lds, dst + (long)j * ldd + i, ldd);
}

// Whether the product sums run on the AVX-512 blocks: fwp_dispatch.h (FWP_AVX512=0 keeps the AVX2
// blocks, for comparison and tests).
static int use_avx512(void) { return fwp_dispatch()->avx512; }

FWP_AVX2 void fwp_small_sgemm_sum(int m, int n, int count, const fwp_gemm_term *terms, float alpha, float beta,
                                  const float *c_in, int ldc_in, float *c, int ldc) {
    float bt[FWP_SMALL_SGEMM_MAX_BT] __attribute__((aligned(32)));
    term_t t[FWP_SMALL_SGEMM_MAX_TERMS];
    if (count < 1 || count > FWP_SMALL_SGEMM_MAX_TERMS) __builtin_trap();
    long used = 0;
    for (int s = 0; s < count; s++) {
        const fwp_gemm_term *x = terms + s;
        t[s].ars = x->transpose_a ? 1 : x->lda;
        t[s].aps = x->transpose_a ? x->lda : 1;
        t[s].a = x->a;
        t[s].k = x->k;
        t[s].negate = x->negate;
        if (x->transpose_b) {
            fwp_transpose(n, x->k, x->b, x->ldb, bt + used, n);  // op(B) = Bᵀ, k × n
            t[s].b = bt + used;
            t[s].ldb = n;
            used += (long)n * x->k;
        } else {
            t[s].b = x->b;
            t[s].ldb = x->ldb;
        }
    }
    if (use_avx512()) {
        small_sgemm_sum512(m, n, count, t, alpha, beta, c_in, ldc_in, c, ldc);
        return;
    }
    __m256i none = _mm256_setzero_si256();
    int j = 0;
    for (; j + 16 <= n; j += 16) column_panel(0, none, none, m, count, t, j, alpha, beta, c_in, ldc_in, c, ldc);
    if (j < n) {
        int w = n - j;
        __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(w), lane);
        __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(w - 8), lane);
        column_panel(1, m0, m1, m, count, t, j, alpha, beta, c_in, ldc_in, c, ldc);
    }
}

FWP_AVX2 void fwp_small_sgemm_add(int transpose_a, int transpose_b, int m, int n, int k, float alpha,
                                  const float *a, int lda, const float *b, int ldb, float beta, const float *c_in,
                                  int ldc_in, float *c, int ldc) {
    fwp_gemm_term term = {transpose_a, transpose_b, k, 0, a, lda, b, ldb};
    fwp_small_sgemm_sum(m, n, 1, &term, alpha, beta, c_in, ldc_in, c, ldc);
}

#else

void fwp_copy_rows(const float *src, long lds, float *dst, long ldd, long rows, long width) {
    for (long r = 0; r < rows; r++)
        for (long j = 0; j < width; j++) dst[r * ldd + j] = src[r * lds + j];
}

void fwp_copy_rows_scaled(const float *src, long lds, float *dst, long ldd, long rows, long width, float scale) {
    for (long r = 0; r < rows; r++)
        for (long j = 0; j < width; j++) dst[r * ldd + j] = src[r * lds + j] * scale;
}

void fwp_transpose(int rows, int cols, const float *src, int lds, float *dst, int ldd) {
    (void)rows; (void)cols; (void)src; (void)lds; (void)dst; (void)ldd;
    __builtin_trap();
}

void fwp_small_sgemm_sum(int m, int n, int count, const fwp_gemm_term *terms, float alpha, float beta,
                         const float *c_in, int ldc_in, float *c, int ldc) {
    (void)m; (void)n; (void)count; (void)terms; (void)alpha; (void)beta; (void)c_in; (void)ldc_in; (void)c; (void)ldc;
    __builtin_trap();
}

void fwp_small_sgemm_add(int transpose_a, int transpose_b, int m, int n, int k, float alpha, const float *a, int lda,
                         const float *b, int ldb, float beta, const float *c_in, int ldc_in, float *c, int ldc) {
    (void)transpose_a; (void)transpose_b; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)lda;
    (void)b; (void)ldb; (void)beta; (void)c_in; (void)ldc_in; (void)c; (void)ldc;
    __builtin_trap();
}

#endif
