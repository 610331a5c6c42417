// Element-wise kernels of the fast-weight feature path (ELU + 1, sum normalisation, sigmoid) and
// of LayerNorm in AVX2/FMA, for FWPCore. FWPCore keeps portable Swift versions and calls these only when
// fwp_vector_kernels_supported() says the CPU has AVX2 and FMA.
#include "fwp_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define FWP_AVX2 __attribute__((target("avx2,fma")))
#define FWP_INLINE static inline __attribute__((always_inline))

#include "simd_shared.h"
#include "prefetch.h"

// e^x for x ≤ 0 (callers clamp): Cody–Waite reduction x = n·ln2 + r, a degree-6 polynomial for
// e^r on |r| ≤ ln2/2, and 2ⁿ built in the exponent field. Below −87.33 the result is 0.
// NaN lanes are not handled here; callers put x back where x is NaN. The constants serve the
// 8- and 16-lane versions alike.
#define EXP_LOWEST -87.33654f
#define EXP_LOG2E 1.44269504f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
static const float exp_poly[6] = {1.98756915e-4f, 1.39819995e-3f, 8.33345190e-3f,
                                  4.16657959e-2f, 1.66666655e-1f, 5.00000012e-1f};

FWP_INLINE FWP_AVX2 __m256 exp_nonpositive(__m256 x) {
    const __m256 lo = _mm256_set1_ps(EXP_LOWEST);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 xc = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(exp_poly[0]);
    for (int i = 1; i < 6; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(exp_poly[i]));
    __m256 e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    // n ∈ [−126, 0]: 2ⁿ as one float with biased exponent n + 127 ≥ 1 (n = −126 is the smallest
    // normal), so no split is needed on this side.
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
    return _mm256_andnot_ps(under, _mm256_mul_ps(e, s));
}

// ELU + 1 of 8 lanes: x + 1 where x > 0, e^x elsewhere, NaN kept.
FWP_INLINE FWP_AVX2 __m256 elu1(__m256 x) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 pos = _mm256_cmp_ps(x, zero, _CMP_GT_OQ);
    __m256 y = exp_nonpositive(_mm256_min_ps(x, zero));
    y = _mm256_blendv_ps(y, _mm256_add_ps(x, _mm256_set1_ps(1.0f)), pos);
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

FWP_INLINE FWP_AVX2 __m256i tail_mask(long count) {
    // Lanes 0..<count set (0 < count < 8).
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), idx);
}

FWP_INLINE FWP_AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// A vector of the 8 floats at p, or of the first `count` (< 8) with the rest 0; masked
// stores (slow on AMD cores) only for such partial blocks.
FWP_INLINE FWP_AVX2 __m256 load_upto(const float *p, long count, __m256i m) {
    return count >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
}

FWP_INLINE FWP_AVX2 void store_upto(float *p, long count, __m256i m, __m256 v) {
    if (count >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, m, v);
}

FWP_AVX2 void fwp_elu_plus_one(const float *x, float *y, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, elu1(_mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, m, elu1(_mm256_maskload_ps(x + i, m)));
    }
}

// --- AVX-512 versions (used where the small kernel uses its AVX-512 blocks) --------------------
#define FWP_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

// exp_nonpositive with 16 lanes: the same constants, reduction, polynomial and exponent.
FWP_INLINE FWP_AVX512 __m512 exp_nonpositive512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(EXP_LOWEST);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    __m512 xc = _mm512_max_ps(x, lo);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(exp_poly[0]);
    for (int i = 1; i < 6; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(exp_poly[i]));
    __m512 e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    __m512i ni = _mm512_cvtps_epi32(n);
    __m512 sc = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23));
    return _mm512_maskz_mul_ps((__mmask16)~under, e, sc);
}

FWP_INLINE FWP_AVX512 __m512 elu1_512(__m512 x) {
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 pos = _mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ);
    __m512 y = exp_nonpositive512(_mm512_min_ps(x, zero));
    y = _mm512_mask_blend_ps(pos, y, _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
}

// Masks of the first n lanes of each of `count` 16-float vectors (none past n); returns how
// many vectors a row of n floats spans. For the short-row paths below, which keep a row in
// registers.
FWP_INLINE int row_masks16(long n, __mmask16 *mk, int count) {
    for (int v = 0; v < count; v++) mk[v] = lanes16(n - 16 * v);
    return (int)((n + 15) / 16);
}

// How many rows ahead the row loops below ask for their output rows (fwp_prefetch_lines, for
// writing): the step writes its activations fresh, mostly into lines outside the caches, and a
// store to such a line waits while the line is read; asked for early, the lines arrive while the
// rows before them are computed.
enum { WRITE_AHEAD = 16 };

// Rows of at most 64 floats (a head's features): the row's φ stays in four registers between
// its sum and its scaling. Storing φ and reading it back, as the general loop below does, costs
// a stall per vector here: a masked store cannot forward its data to the load that follows it.
static FWP_AVX512 void elu_sum_normalize_short512(const float *x, long ldx, float *y, long ldy, float *sums, long rows,
                                                  long n, float epsilon) {
    __mmask16 m[4];
    int vecs = row_masks16(n, m, 4);
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float *yr = y + r * ldy;
        if (r + 6 < rows)
            for (long i = 0; i < n; i += 16) __builtin_prefetch(xr + 6 * ldx + i, 0, 3);
        if (r + WRITE_AHEAD < rows) fwp_prefetch_lines(yr + WRITE_AHEAD * ldy, n, FWP_WRITE);
        // The same additions in the same order as the general loop: one accumulator, vector by vector.
        __m512 phi[4], acc = _mm512_setzero_ps();
        for (int v = 0; v < 4; v++) {
            if (v >= vecs) break;
            phi[v] = _mm512_maskz_mov_ps(m[v], elu1_512(_mm512_maskz_loadu_ps(m[v], xr + 16 * v)));
            acc = _mm512_add_ps(acc, phi[v]);
        }
        float s = _mm512_reduce_add_ps(acc) + epsilon;
        sums[r] = s;
        __m512 inv = _mm512_set1_ps(1.0f / s);
        for (int v = 0; v < 4; v++) {
            if (v >= vecs) break;
            _mm512_mask_storeu_ps(yr + 16 * v, m[v], _mm512_mul_ps(phi[v], inv));
        }
    }
}

static FWP_AVX512 void elu_sum_normalize_strided512(const float *x, long ldx, float *y, long ldy, float *sums,
                                                    long rows, long n, float epsilon) {
    if (n <= 64) {
        elu_sum_normalize_short512(x, ldx, y, ldy, sums, rows, n, epsilon);
        return;
    }
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float *yr = y + r * ldy;
        if (r + 6 < rows)
            for (long i = 0; i < n; i += 16) __builtin_prefetch(xr + 6 * ldx + i, 0, 3);
        __m512 acc = _mm512_setzero_ps();
        for (long i = 0; i < n; i += 16) {
            __mmask16 m = lanes16(n - i);
            __m512 v = _mm512_maskz_mov_ps(m, elu1_512(_mm512_maskz_loadu_ps(m, xr + i)));
            _mm512_mask_storeu_ps(yr + i, m, v);
            acc = _mm512_add_ps(acc, v);
        }
        float s = _mm512_reduce_add_ps(acc) + epsilon;
        sums[r] = s;
        __m512 inv = _mm512_set1_ps(1.0f / s);
        for (long i = 0; i < n; i += 16) {
            __mmask16 m = lanes16(n - i);
            _mm512_mask_storeu_ps(yr + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, yr + i), inv));
        }
    }
}

FWP_AVX2 void fwp_elu_plus_one_sum_normalize_strided(const float *x, long ldx, float *y, long ldy, float *sums,
                                                      long rows, long n, float epsilon) {
    if (fwp_small_sgemm_uses_avx512()) {
        elu_sum_normalize_strided512(x, ldx, y, ldy, sums, rows, n, epsilon);
        return;
    }
    long full = n & ~7L;
    __m256i m = tail_mask(n - full > 0 ? n - full : 1);
    for (long r = 0; r < rows; r++) {
        // φ goes to y first (the row is then in L1), and is scaled in place once its sum is known.
        const float *xr = x + r * ldx;
        float *yr = y + r * ldy;
        // The rows lie ldx floats apart (a head's slice of the projection), mostly outside the
        // caches: fetch a few rows ahead, as fwp_copy_rows does.
        if (r + 6 < rows)
            for (long i = 0; i < n; i += 16) __builtin_prefetch(xr + 6 * ldx + i, 0, 3);
        __m256 acc = _mm256_setzero_ps();
        for (long i = 0; i < full; i += 8) {
            __m256 v = elu1(_mm256_loadu_ps(xr + i));
            _mm256_storeu_ps(yr + i, v);
            acc = _mm256_add_ps(acc, v);
        }
        if (full < n) {
            __m256 v = elu1(_mm256_maskload_ps(xr + full, m));
            v = _mm256_and_ps(v, _mm256_castsi256_ps(m));
            _mm256_maskstore_ps(yr + full, m, v);
            acc = _mm256_add_ps(acc, v);
        }
        float s = hsum(acc) + epsilon;
        sums[r] = s;
        __m256 inv = _mm256_set1_ps(1.0f / s);
        for (long i = 0; i < full; i += 8) _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_loadu_ps(yr + i), inv));
        if (full < n) _mm256_maskstore_ps(yr + full, m, _mm256_mul_ps(_mm256_maskload_ps(yr + full, m), inv));
    }
}

FWP_AVX2 void fwp_elu_plus_one_sum_normalize(const float *x, float *y, float *sums, long rows, long n,
                                              float epsilon) {
    fwp_elu_plus_one_sum_normalize_strided(x, n, y, n, sums, rows, n, epsilon);
}

// The rows the ELU + 1 backward reads and writes six rows ahead (dy and y to read, dx to write):
// they lie a head's width apart, mostly outside the caches.
FWP_INLINE void prefetch_backward_rows(const float *g, const float *y, const float *d, long n) {
    for (long i = 0; i < n; i += 16) {
        __builtin_prefetch(g + i, 0, 3);
        __builtin_prefetch(y + i, 0, 3);
        __builtin_prefetch(d + i, 1, 3);
    }
}

// The backward for rows of at most 64 floats on AVX-512: each row's dy and y are loaded once
// into registers and used for both the dot product and the output.
static FWP_AVX512 void elu_sum_normalize_backward_short512(const float *dy, long lddy, const float *y, long ldy,
                                                           const float *sums, float *dx, long lddx, long rows,
                                                           long n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __mmask16 m[4];
    int vecs = row_masks16(n, m, 4);
    for (long r = 0; r < rows; r++) {
        const float *gr = dy + r * lddy, *yr = y + r * ldy;
        float *dr = dx + r * lddx;
        if (r + 6 < rows) prefetch_backward_rows(gr + 6 * lddy, yr + 6 * ldy, dr + 6 * lddx, n);
        __m512 g[4], yv[4], acc = _mm512_setzero_ps();
        for (int v = 0; v < 4; v++) {
            if (v >= vecs) break;
            g[v] = _mm512_maskz_loadu_ps(m[v], gr + 16 * v);
            yv[v] = _mm512_maskz_loadu_ps(m[v], yr + 16 * v);
            acc = _mm512_fmadd_ps(g[v], yv[v], acc);
        }
        __m512 c = _mm512_set1_ps(_mm512_reduce_add_ps(acc)), s = _mm512_set1_ps(sums[r]);
        __m512 inv = _mm512_set1_ps(1.0f / sums[r]);
        for (int v = 0; v < 4; v++) {
            if (v >= vecs) break;
            // dφ = (dy − dy·y) / s times ELU + 1's derivative min(φ, 1), φ = y·s (as below).
            __m512 dphi = _mm512_mul_ps(_mm512_sub_ps(g[v], c), inv);
            _mm512_mask_storeu_ps(dr + 16 * v, m[v], _mm512_mul_ps(dphi, _mm512_min_ps(_mm512_mul_ps(yv[v], s), one)));
        }
    }
}

FWP_AVX2 void fwp_elu_plus_one_sum_normalize_backward_strided(const float *dy, long lddy, const float *y, long ldy,
                                                               const float *sums, float *dx, long lddx, long rows,
                                                               long n) {
    if (n <= 64 && fwp_small_sgemm_uses_avx512()) {
        elu_sum_normalize_backward_short512(dy, lddy, y, ldy, sums, dx, lddx, rows, n);
        return;
    }
    long full = n & ~7L;
    __m256i m = tail_mask(n - full > 0 ? n - full : 1);
    const __m256 one = _mm256_set1_ps(1.0f);
    for (long r = 0; r < rows; r++) {
        const float *gr = dy + r * lddy, *yr = y + r * ldy;
        float *dr = dx + r * lddx;
        if (r + 6 < rows) prefetch_backward_rows(gr + 6 * lddy, yr + 6 * ldy, dr + 6 * lddx, n);
        __m256 acc = _mm256_setzero_ps();
        for (long i = 0; i < full; i += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(gr + i), _mm256_loadu_ps(yr + i), acc);
        if (full < n) acc = _mm256_fmadd_ps(_mm256_maskload_ps(gr + full, m), _mm256_maskload_ps(yr + full, m), acc);
        __m256 c = _mm256_set1_ps(hsum(acc)), s = _mm256_set1_ps(sums[r]), inv = _mm256_set1_ps(1.0f / sums[r]);
        for (long i = 0; i <= n - 1; i += 8) {
            __m256 g = load_upto(gr + i, n - i, m), yv = load_upto(yr + i, n - i, m);
            // dφ = (dy − dy·y) / s, and ELU + 1's derivative is min(φ, 1) with φ = y·s: 1 where
            // x > 0 (φ = x + 1 > 1), e^x = φ ≤ 1 elsewhere. So neither x nor φ is needed here.
            __m256 dphi = _mm256_mul_ps(_mm256_sub_ps(g, c), inv);
            __m256 d = _mm256_mul_ps(dphi, _mm256_min_ps(_mm256_mul_ps(yv, s), one));
            store_upto(dr + i, n - i, m, d);
        }
    }
}

FWP_AVX2 void fwp_elu_plus_one_sum_normalize_backward(const float *dy, const float *y, const float *sums,
                                                       float *dx, long rows, long n) {
    fwp_elu_plus_one_sum_normalize_backward_strided(dy, n, y, n, sums, dx, n, rows, n);
}

FWP_AVX2 void fwp_relu_backward_column_sums(const float *h, float *d, float *colsum, long rows, long n) {
    __m256i m = tail_mask(n % 8 ? n % 8 : 1);
    const __m256 zero = _mm256_setzero_ps();
    for (long r = 0; r < rows; r++) {
        const float *hr = h + r * n;
        float *dr = d + r * n;
        for (long i = 0; i < n; i += 8) {
            __m256 keep = _mm256_cmp_ps(load_upto(hr + i, n - i, m), zero, _CMP_GT_OQ);
            __m256 v = _mm256_and_ps(keep, load_upto(dr + i, n - i, m));
            store_upto(dr + i, n - i, m, v);
            store_upto(colsum + i, n - i, m, _mm256_add_ps(load_upto(colsum + i, n - i, m), v));
        }
    }
}

FWP_AVX2 void fwp_softmax_row(float *row, long valid, long zeros) {
    // Maximum, then e^(x − max) and its sum, then the scaling: three passes over ≤ a few KB.
    long i = 0;
    __m256 mv = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= valid; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(row + i));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float m = _mm_cvtss_f32(m4);
    for (; i < valid; i++) m = row[i] > m ? row[i] : m;
    const __m256 vm = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    for (i = 0; i + 8 <= valid; i += 8) {
        __m256 x = _mm256_sub_ps(_mm256_loadu_ps(row + i), vm);
        __m256 e = exp_nonpositive(x);
        e = _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
        _mm256_storeu_ps(row + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (i < valid) {
        __m256i mask = tail_mask(valid - i);
        __m256 x = _mm256_sub_ps(_mm256_maskload_ps(row + i, mask), vm);
        __m256 e = exp_nonpositive(x);
        e = _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(mask));
        _mm256_maskstore_ps(row + i, mask, e);
        acc = _mm256_add_ps(acc, e);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / hsum(acc));
    for (i = 0; i + 8 <= valid; i += 8) _mm256_storeu_ps(row + i, _mm256_mul_ps(_mm256_loadu_ps(row + i), inv));
    for (; i < valid; i++) row[i] *= _mm256_cvtss_f32(inv);
    for (long j = 0; j < zeros; j++) row[valid + j] = 0;
}

// y[i] = e^(x[i] − shift) for i < n (x[i] − shift ≤ 0; NaN kept), returning Σ y[i] (x and y may
// be the same array): the online softmax's rows and the cross-entropy's.
static FWP_AVX2 float exp_shifted_sum(const float *x, float *y, long n, float shift) {
    const __m256 vs = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    for (long i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i < 8 ? n - i : 1);
        __m256 d = _mm256_sub_ps(load_upto(x + i, n - i, m), vs);
        __m256 e = exp_nonpositive(d);
        e = _mm256_blendv_ps(e, d, _mm256_cmp_ps(d, d, _CMP_UNORD_Q));
        if (n - i < 8) e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
        store_upto(y + i, n - i, m, e);
        acc = _mm256_add_ps(acc, e);
    }
    return hsum(acc);
}

FWP_AVX2 float fwp_exp_shifted_sum(float *row, long n, float shift) { return exp_shifted_sum(row, row, n, shift); }

FWP_AVX2 void fwp_softmax_scores_backward(float *p, float *d, long n, float lse, float c, float scale) {
    const __m256 vl = _mm256_set1_ps(lse), vc = _mm256_set1_ps(c), vs = _mm256_set1_ps(scale);
    for (long i = 0; i < n; i += 8) {
        __m256i m = tail_mask(n - i < 8 ? n - i : 1);
        __m256 x = _mm256_sub_ps(load_upto(p + i, n - i, m), vl);
        __m256 e = exp_nonpositive(x);
        e = _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
        store_upto(p + i, n - i, m, e);
        __m256 g = _mm256_mul_ps(_mm256_mul_ps(e, _mm256_sub_ps(load_upto(d + i, n - i, m), vc)), vs);
        store_upto(d + i, n - i, m, g);
    }
}

FWP_AVX2 void fwp_softmax_row_backward(const float *p, float *d, long valid, long zeros, float scale) {
    long i = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= valid; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + i), _mm256_loadu_ps(d + i), acc);
    float dot = hsum(acc);
    for (; i < valid; i++) dot += p[i] * d[i];
    const __m256 vdot = _mm256_set1_ps(dot), vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= valid; i += 8) {
        __m256 g = _mm256_sub_ps(_mm256_loadu_ps(d + i), vdot);
        _mm256_storeu_ps(d + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(p + i), g), vs));
    }
    for (; i < valid; i++) d[i] = p[i] * (d[i] - dot) * scale;
    for (long j = 0; j < zeros; j++) d[valid + j] = 0;
}

FWP_AVX2 void fwp_sigmoid(const float *x, float *y, long n) {
    // σ(x) = 1 / (1 + e^−|x|) for x ≥ 0 and e^−|x| / (1 + e^−|x|) below: e^−|x| never overflows.
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    long i = 0;
    for (; i < n; i += 8) {
        __m256i m = tail_mask(n - i < 8 ? n - i : 1);
        __m256 v = load_upto(x + i, n - i, m);
        __m256 e = exp_nonpositive(_mm256_or_ps(v, sign));  // e^−|x|
        __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
        __m256 s = _mm256_blendv_ps(_mm256_mul_ps(e, inv), inv, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ));
        s = _mm256_blendv_ps(s, v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        store_upto(y + i, n - i, m, s);
    }
}

// LayerNorm rows of at most 128 floats on AVX-512: each row is loaded once into (up to) eight
// registers for its mean, deviations, variance and outputs. The same two-pass arithmetic as the
// loop below, in 16 lanes.
static FWP_AVX512 void layer_norm_forward_short512(const float *x, const float *gamma, const float *beta, float *y,
                                                   float *xhat, float *rstd, long rows, long n, float epsilon) {
    __mmask16 mk[8];
    int vecs = row_masks16(n, mk, 8);
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        if (r + WRITE_AHEAD < rows) {
            fwp_prefetch_lines(y + (r + WRITE_AHEAD) * n, n, FWP_WRITE);
            fwp_prefetch_lines(xhat + (r + WRITE_AHEAD) * n, n, FWP_WRITE);
        }
        __m512 xv[8], acc = _mm512_setzero_ps();
        for (int v = 0; v < 8; v++) {
            if (v >= vecs) break;
            xv[v] = _mm512_maskz_loadu_ps(mk[v], xr + 16 * v);
            acc = _mm512_add_ps(acc, xv[v]);
        }
        __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(acc) / (float)n);
        acc = _mm512_setzero_ps();
        for (int v = 0; v < 8; v++) {
            if (v >= vecs) break;
            xv[v] = _mm512_maskz_sub_ps(mk[v], xv[v], mean);  // the deviations, zero past n
            acc = _mm512_fmadd_ps(xv[v], xv[v], acc);
        }
        float s = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)n + epsilon);
        rstd[r] = s;
        __m512 vs = _mm512_set1_ps(s);
        for (int v = 0; v < 8; v++) {
            if (v >= vecs) break;
            __m512 h = _mm512_mul_ps(xv[v], vs);
            _mm512_mask_storeu_ps(xhat + r * n + 16 * v, mk[v], h);
            __m512 g = _mm512_maskz_loadu_ps(mk[v], gamma + 16 * v), b = _mm512_maskz_loadu_ps(mk[v], beta + 16 * v);
            _mm512_mask_storeu_ps(y + r * n + 16 * v, mk[v], _mm512_fmadd_ps(h, g, b));
        }
    }
}

// Its backward for rows of at most 128 floats: dy and x̂ loaded once per row.
static FWP_AVX512 void layer_norm_backward_short512(const float *dy, const float *xhat, const float *gamma,
                                                    const float *rstd, float *dx, int accumulate, float *dgamma,
                                                    float *dbeta, long rows, long n) {
    __mmask16 mk[8];
    int vecs = row_masks16(n, mk, 8);
    __m512 vn = _mm512_set1_ps((float)n);
    for (long r = 0; r < rows; r++) {
        const float *dr = dy + r * n, *hr = xhat + r * n;
        if (r + WRITE_AHEAD < rows) fwp_prefetch_lines(dx + (r + WRITE_AHEAD) * n, n, FWP_WRITE);
        __m512 d[8], h[8], sg = _mm512_setzero_ps(), sgh = _mm512_setzero_ps();
        for (int v = 0; v < 8; v++) {
            if (v >= vecs) break;
            d[v] = _mm512_maskz_loadu_ps(mk[v], dr + 16 * v);
            h[v] = _mm512_maskz_loadu_ps(mk[v], hr + 16 * v);
            float *dg = dgamma + 16 * v, *db = dbeta + 16 * v;
            _mm512_mask_storeu_ps(dg, mk[v], _mm512_fmadd_ps(d[v], h[v], _mm512_maskz_loadu_ps(mk[v], dg)));
            _mm512_mask_storeu_ps(db, mk[v], _mm512_add_ps(d[v], _mm512_maskz_loadu_ps(mk[v], db)));
            d[v] = _mm512_mul_ps(d[v], _mm512_maskz_loadu_ps(mk[v], gamma + 16 * v));  // g = dy·γ
            sg = _mm512_add_ps(sg, d[v]);
            sgh = _mm512_fmadd_ps(d[v], h[v], sgh);
        }
        // dx = (1/σ)/n · (n·g − Σg − x̂·Σ g x̂)
        __m512 sumG = _mm512_set1_ps(_mm512_reduce_add_ps(sg)), sumGH = _mm512_set1_ps(_mm512_reduce_add_ps(sgh));
        __m512 vs = _mm512_set1_ps(rstd[r] / (float)n);
        for (int v = 0; v < 8; v++) {
            if (v >= vecs) break;
            __m512 t = _mm512_fnmadd_ps(h[v], sumGH, _mm512_fmsub_ps(vn, d[v], sumG));
            __m512 o = _mm512_mul_ps(vs, t);
            float *xr = dx + r * n + 16 * v;
            if (accumulate) o = _mm512_add_ps(_mm512_maskz_loadu_ps(mk[v], xr), o);
            _mm512_mask_storeu_ps(xr, mk[v], o);
        }
    }
}

FWP_AVX2 void fwp_layer_norm_forward(const float *x, const float *gamma, const float *beta, float *y, float *xhat,
                                     float *rstd, long rows, long n, float epsilon) {
    if (n <= 128 && fwp_small_sgemm_uses_avx512()) {
        layer_norm_forward_short512(x, gamma, beta, y, xhat, rstd, rows, n, epsilon);
        return;
    }
    __m256i m = tail_mask(n % 8 ? n % 8 : 1);
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        __m256 acc = _mm256_setzero_ps();
        for (long i = 0; i < n; i += 8) acc = _mm256_add_ps(acc, load_upto(xr + i, n - i, m));
        __m256 mean = _mm256_set1_ps(hsum(acc) / (float)n);
        // Two passes (mean, then squared deviations): no cancellation for rows far from zero.
        acc = _mm256_setzero_ps();
        for (long i = 0; i < n; i += 8) {
            __m256 d = _mm256_sub_ps(load_upto(xr + i, n - i, m), mean);
            if (i + 8 > n) d = _mm256_and_ps(d, _mm256_castsi256_ps(m));
            acc = _mm256_fmadd_ps(d, d, acc);
        }
        float s = 1.0f / sqrtf(hsum(acc) / (float)n + epsilon);
        rstd[r] = s;
        __m256 vs = _mm256_set1_ps(s);
        for (long i = 0; i < n; i += 8) {
            __m256 h = _mm256_mul_ps(_mm256_sub_ps(load_upto(xr + i, n - i, m), mean), vs);
            store_upto(xhat + r * n + i, n - i, m, h);
            store_upto(y + r * n + i, n - i, m, _mm256_fmadd_ps(h, load_upto(gamma + i, n - i, m), load_upto(beta + i, n - i, m)));
        }
    }
}

FWP_AVX2 void fwp_layer_norm_backward(const float *dy, const float *xhat, const float *gamma, const float *rstd,
                                      float *dx, int accumulate, float *dgamma, float *dbeta, long rows, long n) {
    if (n <= 128 && fwp_small_sgemm_uses_avx512()) {
        layer_norm_backward_short512(dy, xhat, gamma, rstd, dx, accumulate, dgamma, dbeta, rows, n);
        return;
    }
    __m256i m = tail_mask(n % 8 ? n % 8 : 1);
    for (long r = 0; r < rows; r++) {
        const float *dr = dy + r * n, *hr = xhat + r * n;
        __m256 sg = _mm256_setzero_ps(), sgh = _mm256_setzero_ps();
        for (long i = 0; i < n; i += 8) {
            __m256 d = load_upto(dr + i, n - i, m), h = load_upto(hr + i, n - i, m);
            store_upto(dgamma + i, n - i, m, _mm256_fmadd_ps(d, h, load_upto(dgamma + i, n - i, m)));
            store_upto(dbeta + i, n - i, m, _mm256_add_ps(d, load_upto(dbeta + i, n - i, m)));
            __m256 gh = _mm256_mul_ps(d, load_upto(gamma + i, n - i, m));
            sg = _mm256_add_ps(sg, gh);
            sgh = _mm256_fmadd_ps(gh, h, sgh);
        }
        // dx = (1/σ)/n · (n·g − Σg − x̂·Σ g x̂), g = dy·γ
        __m256 sumG = _mm256_set1_ps(hsum(sg)), sumGH = _mm256_set1_ps(hsum(sgh));
        __m256 vn = _mm256_set1_ps((float)n), vs = _mm256_set1_ps(rstd[r] / (float)n);
        for (long i = 0; i < n; i += 8) {
            __m256 gh = _mm256_mul_ps(load_upto(dr + i, n - i, m), load_upto(gamma + i, n - i, m));
            __m256 t = _mm256_fnmadd_ps(load_upto(hr + i, n - i, m), sumGH, _mm256_fmsub_ps(vn, gh, sumG));
            __m256 v = _mm256_mul_ps(vs, t);
            if (accumulate) v = _mm256_add_ps(load_upto(dx + r * n + i, n - i, m), v);
            store_upto(dx + r * n + i, n - i, m, v);
        }
    }
}

// The chunkwise delta rule's C × C steps (rows of `ld` floats, c ≤ ld active rows and columns).
// Whole 8-float blocks use plain loads and stores; only a row's last partial block is masked
// (masked stores are slow on AMD cores).

FWP_AVX2 void fwp_unit_lower_inverse(const float *g, const float *b, int c, int ld, float *minv) {
    for (int i = 0; i < c; i++) {
        float *row = minv + (long)i * ld;
        // row_i[0, i) = −β_i Σ_{m<i} G_im row_m[0, i): rows m < i are final and zero past m.
        for (int p = 0; p < i; p += 8) {
            int n = i - p;
            __m256i mk = tail_mask(n < 8 ? n : 1);
            __m256 acc = _mm256_setzero_ps();
            for (int m = 0; m < i; m++)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(g[(long)i * ld + m]), load_upto(minv + (long)m * ld + p, n, mk), acc);
            // Lanes from column i on are zero (rows m < i are zero past m); stored whole where the
            // block lies in the row, then column i and the rest are set below.
            store_upto(row + p, p + 8 <= ld ? 8 : n, mk, _mm256_mul_ps(acc, _mm256_set1_ps(-b[i])));
        }
        row[i] = 1;
        for (int j = i + 1; j < ld; j++) row[j] = 0;
    }
}

FWP_AVX2 void fwp_scale_columns_lower(const float *m, const float *b, int c, int ld, float *out) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int i = 0; i < c; i++) {
        for (int p = 0; p < c; p += 8) {
            int n = c - p;
            __m256i mk = tail_mask(n < 8 ? n : 1);
            // columns j ≤ i keep m_ij β_j, the rest of the c columns become 0
            __m256i low = _mm256_cmpgt_epi32(_mm256_set1_epi32(i - p + 1), lane);
            __m256 v = _mm256_mul_ps(load_upto(m + (long)i * ld + p, n, mk), load_upto(b + p, n, mk));
            store_upto(out + (long)i * ld + p, n, mk, _mm256_and_ps(v, _mm256_castsi256_ps(low)));
        }
    }
}

FWP_AVX2 void fwp_chunk_dbeta_inverse(const float *minv, float *da, const float *b, int c, int ld, float *db) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < c; j++) db[j] = 0;
    for (int i = 0; i < c; i++) {
        for (int p = 0; p < c; p += 8) {
            int n = c - p;
            __m256i mk = tail_mask(n < 8 ? n : 1);
            __m256 low = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(i - p + 1), lane));
            float *dr = da + (long)i * ld + p;
            __m256 d = _mm256_and_ps(load_upto(dr, n, mk), low);
            store_upto(db + p, n, mk, _mm256_fmadd_ps(load_upto(minv + (long)i * ld + p, n, mk), d, load_upto(db + p, n, mk)));
            store_upto(dr, n, mk, _mm256_mul_ps(d, load_upto(b + p, n, mk)));
        }
    }
}

// A full chunk of 16 (c = ld = 16) with AVX-512: each row of E and G is one register, the
// row's dβ a reduction of their product, and E + Eᵀ through one 16 × 16 transpose (fwp_transpose)
// instead of 120 scalar column stores.
static FWP_AVX512 void chunk_dbeta_lower16(const float *g, float *da, const float *b, float *db) {
    float scaled[256] __attribute__((aligned(64))), mirrored[256] __attribute__((aligned(64)));
    for (int i = 0; i < 16; i++) {
        __mmask16 below = (__mmask16)((1u << i) - 1);
        __m512 e = _mm512_maskz_loadu_ps(below, da + i * 16);
        db[i] += _mm512_reduce_add_ps(_mm512_mul_ps(e, _mm512_maskz_loadu_ps(below, g + i * 16)));
        _mm512_store_ps(scaled + i * 16, _mm512_mul_ps(e, _mm512_set1_ps(b[i])));
    }
    fwp_transpose(16, 16, scaled, 16, mirrored, 16);
    for (int i = 0; i < 16; i++)
        _mm512_storeu_ps(da + i * 16, _mm512_add_ps(_mm512_load_ps(scaled + i * 16), _mm512_load_ps(mirrored + i * 16)));
}

FWP_AVX2 void fwp_chunk_dbeta_lower(const float *g, float *da, const float *b, int c, int ld, float *db) {
    if (c == 16 && ld == 16 && fwp_small_sgemm_uses_avx512()) {
        chunk_dbeta_lower16(g, da, b, db);
        return;
    }
    for (int i = 0; i < c; i++) {
        float *er = da + (long)i * ld;
        __m256 acc = _mm256_setzero_ps(), bi = _mm256_set1_ps(b[i]);
        for (int p = 0; p < i; p += 8) {
            int n = i - p;
            __m256i mk = tail_mask(n < 8 ? n : 1);
            __m256 e = load_upto(er + p, n, mk);
            acc = _mm256_fmadd_ps(e, load_upto(g + (long)i * ld + p, n, mk), acc);
            // Lanes from column i on are zero here (masked load); where the whole block lies in
            // the row, store them too (the symmetrisation below overwrites columns i < j < c, and
            // columns ≥ c are not read): a plain store instead of a slow masked one.
            store_upto(er + p, p + 8 <= ld ? 8 : n, mk, _mm256_mul_ps(e, bi));
        }
        db[i] += hsum(acc);
        er[i] = 0;
    }
    // E + Eᵀ (E strictly lower) in place.
    for (int i = 0; i < c; i++)
        for (int j = 0; j < i; j++) da[(long)j * ld + i] = da[(long)i * ld + j];
}

// One row of softmax cross-entropy, 16 lanes: the maximum (*max), e^(x − max) into g with its
// sum (four accumulators; returned), then g scaled by scale / sum. NaN logits stay NaN.
static FWP_AVX512 float cross_entropy_row512(const float *x, float *g, long n, float scale, float *max) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 mv = ninf;
    for (long i = 0; i < n; i += 16) mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(ninf, lanes16(n - i), x + i));
    const float m = _mm512_reduce_max_ps(mv);
    const __m512 vm = _mm512_set1_ps(m);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (long i = 0, v = 0; i < n; i += 16, v++) {
        __mmask16 mk = lanes16(n - i);
        __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), vm);
        __m512 e = exp_nonpositive512(d);
        e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q), d);
        e = _mm512_maskz_mov_ps(mk, e);
        _mm512_mask_storeu_ps(g + i, mk, e);
        acc[v & 3] = _mm512_add_ps(acc[v & 3], e);
    }
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    const __m512 f = _mm512_set1_ps(1.0f / sum * scale);
    for (long i = 0; i < n; i += 16) {
        __mmask16 mk = lanes16(n - i);
        _mm512_mask_storeu_ps(g + i, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, g + i), f));
    }
    *max = m;
    return sum;
}

// The same with 8 lanes (one accumulator).
static FWP_AVX2 float cross_entropy_row256(const float *x, float *g, long n, float scale, float *max) {
    float m = -INFINITY;
    for (long i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    float sum = exp_shifted_sum(x, g, n, m);
    const __m256 f = _mm256_set1_ps(1.0f / sum * scale);
    for (long i = 0; i < n; i += 8) {
        __m256i mk = tail_mask(n - i < 8 ? n - i : 1);
        store_upto(g + i, n - i, mk, _mm256_mul_ps(load_upto(g + i, n - i, mk), f));
    }
    *max = m;
    return sum;
}

double fwp_cross_entropy(const float *logits, const long *targets, float *grad, long rows, long n, float scale) {
    if (n <= 0) return 0;
    const int wide = fwp_small_sgemm_uses_avx512();
    double total = 0;
    for (long r = 0; r < rows; r++) {
        const float *x = logits + r * n;
        float *g = grad + r * n;
        if (r + WRITE_AHEAD < rows) fwp_prefetch_lines(grad + (r + WRITE_AHEAD) * n, n, FWP_WRITE);
        long t = targets[r];
        if (t < 0) {
            memset(g, 0, sizeof(float) * (size_t)n);
            continue;
        }
        float m, sum = wide ? cross_entropy_row512(x, g, n, scale, &m) : cross_entropy_row256(x, g, n, scale, &m);
        g[t] -= scale;
        total += (double)(logf(sum) + m - x[t]);
    }
    return total;
}

#else

void fwp_unit_lower_inverse(const float *g, const float *b, int c, int ld, float *minv) {
    (void)g; (void)b; (void)c; (void)ld; (void)minv;
    __builtin_trap();
}
void fwp_scale_columns_lower(const float *m, const float *b, int c, int ld, float *out) {
    (void)m; (void)b; (void)c; (void)ld; (void)out;
    __builtin_trap();
}
void fwp_chunk_dbeta_inverse(const float *minv, float *da, const float *b, int c, int ld, float *db) {
    (void)minv; (void)da; (void)b; (void)c; (void)ld; (void)db;
    __builtin_trap();
}
void fwp_chunk_dbeta_lower(const float *g, float *da, const float *b, int c, int ld, float *db) {
    (void)g; (void)da; (void)b; (void)c; (void)ld; (void)db;
    __builtin_trap();
}
void fwp_layer_norm_forward(const float *x, const float *gamma, const float *beta, float *y, float *xhat, float *rstd,
                            long rows, long n, float epsilon) {
    (void)x; (void)gamma; (void)beta; (void)y; (void)xhat; (void)rstd; (void)rows; (void)n; (void)epsilon;
    __builtin_trap();
}
void fwp_layer_norm_backward(const float *dy, const float *xhat, const float *gamma, const float *rstd, float *dx,
                             int accumulate, float *dgamma, float *dbeta, long rows, long n) {
    (void)dy; (void)xhat; (void)gamma; (void)rstd; (void)dx; (void)accumulate; (void)dgamma; (void)dbeta; (void)rows;
    (void)n;
    __builtin_trap();
}
void fwp_elu_plus_one(const float *x, float *y, long n) { (void)x; (void)y; (void)n; __builtin_trap(); }
void fwp_elu_plus_one_sum_normalize(const float *x, float *y, float *sums, long rows, long n, float epsilon) {
    (void)x; (void)y; (void)sums; (void)rows; (void)n; (void)epsilon;
    __builtin_trap();
}
void fwp_elu_plus_one_sum_normalize_backward(const float *dy, const float *y, const float *sums, float *dx, long rows,
                                             long n) {
    (void)dy; (void)y; (void)sums; (void)dx; (void)rows; (void)n;
    __builtin_trap();
}
void fwp_sigmoid(const float *x, float *y, long n) { (void)x; (void)y; (void)n; __builtin_trap(); }
void fwp_softmax_row(float *row, long valid, long zeros) { (void)row; (void)valid; (void)zeros; __builtin_trap(); }
void fwp_softmax_row_backward(const float *p, float *d, long valid, long zeros, float scale) {
    (void)p; (void)d; (void)valid; (void)zeros; (void)scale;
    __builtin_trap();
}
float fwp_exp_shifted_sum(float *row, long n, float shift) {
    (void)row; (void)n; (void)shift;
    __builtin_trap();
}
void fwp_softmax_scores_backward(float *p, float *d, long n, float lse, float c, float scale) {
    (void)p; (void)d; (void)n; (void)lse; (void)c; (void)scale;
    __builtin_trap();
}
void fwp_elu_plus_one_sum_normalize_strided(const float *x, long ldx, float *y, long ldy, float *sums, long rows, long n,
                                            float epsilon) {
    (void)x; (void)ldx; (void)y; (void)ldy; (void)sums; (void)rows; (void)n; (void)epsilon;
    __builtin_trap();
}
void fwp_elu_plus_one_sum_normalize_backward_strided(const float *dy, long lddy, const float *y, long ldy,
                                                     const float *sums, float *dx, long lddx, long rows, long n) {
    (void)dy; (void)lddy; (void)y; (void)ldy; (void)sums; (void)dx; (void)lddx; (void)rows; (void)n;
    __builtin_trap();
}
void fwp_relu_backward_column_sums(const float *h, float *d, float *colsum, long rows, long n) {
    (void)h; (void)d; (void)colsum; (void)rows; (void)n;
    __builtin_trap();
}

double fwp_cross_entropy(const float *logits, const long *targets, float *grad, long rows, long n, float scale) {
    (void)logits, (void)targets, (void)grad, (void)rows, (void)n, (void)scale;
    __builtin_trap();
}

#endif
