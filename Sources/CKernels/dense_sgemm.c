#include "fwp_kernels.h"

// Matrix products of the model's dense layers (N × D activations against D × D' weights) on
// AVX-512: op(B) is packed into panels of 64 columns (contiguous, 64-byte aligned, zero-padded),
// then each block of 6 rows × 64 columns of C is accumulated in 24 registers over the whole
// inner dimension (in slices for weight gradients), reading op(A) by broadcasts — in place, or
// for weight gradients from a 12-column slab copied first — and written once, with alpha, beta
// and an epilogue (a bias, ReLU, or a ReLU's backward with its column sums) applied in the same
// pass. Against OpenBLAS this saves its separate pass over C for beta (a memset when beta is 0)
// and the layers' own passes. Six rows × four registers take 10 loads (6 broadcasts, 4 of the
// panel) per 24 FMAs, where 12 × 32 blocks took 14.
// With FWP_AMX=1 on a CPU with AMX, the same products run on its tiles instead, at float32
// accuracy (three-part bfloat16 splits; the second half of this file), through the same
// epilogue.

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FWP_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define FWP_INLINE static inline __attribute__((always_inline))

#include "simd_shared.h"
// `rows` is a constant at every call of `block`; its loops over rows must unroll fully so the
// 24 accumulators live in registers (clang otherwise kept some 12-row cases of the earlier
// 12 × 32 blocks in memory).

enum { ROWS = 6, VECS = 4, PANEL = 16 * VECS, SLAB = 2 * ROWS };

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

// op(B) (k × n) into panels: panel p holds columns 64p … 64p + 63 as k rows of 64 floats.
static __attribute__((noinline)) FWP_AVX512 void pack_b(int transpose_b, int k, int n, const float *b, long ldb, float *out) {
    int np = (n + PANEL - 1) / PANEL;
    for (int p = 0; p < np; p++) {
        int w = n - p * PANEL < PANEL ? n - p * PANEL : PANEL;
        float *d = out + (long)p * k * PANEL;
        if (!transpose_b) {
            __mmask16 m0 = lanes16(w), m1 = lanes16(w - 16), m2 = lanes16(w - 32), m3 = lanes16(w - 48);
            const float *s = b + p * PANEL;
            for (int q = 0; q < k; q++) {
                const float *sq = s + q * ldb;
                float *dq = d + q * PANEL;
                _mm512_store_ps(dq, _mm512_maskz_loadu_ps(m0, sq));
                _mm512_store_ps(dq + 16, _mm512_maskz_loadu_ps(m1, sq + 16));
                _mm512_store_ps(dq + 32, _mm512_maskz_loadu_ps(m2, sq + 32));
                _mm512_store_ps(dq + 48, _mm512_maskz_loadu_ps(m3, sq + 48));
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

// Row i of a block of C (`vecs` registers y[0 …] of 16 columns from column j, at cr; masks mk
// at the column edge), its product accumulated: C ← alpha · y + beta · C, then the epilogue e
// (its bias's columns preloaded in bias[]); the row's values are added into sum[] when e has
// column sums.
FWP_INLINE FWP_AVX512 void finish_row(int vecs, const __m512 *y, float *cr, const __mmask16 *mk, float alpha,
                                      float beta, const epilogue_t *e, const __m512 *bias, long i, long j,
                                      __m512 *sum) {
    __m512 zero = _mm512_setzero_ps();
    _Pragma("clang loop unroll(full)")
    for (int v = 0; v < vecs; v++) {
        __m512 x = y[v];
        if (alpha != 1.0f) x = _mm512_mul_ps(_mm512_set1_ps(alpha), x);
        if (beta == 1.0f)
            x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mk[v], cr + 16 * v));
        else if (beta != 0.0f)
            x = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(mk[v], cr + 16 * v), x);
        if (e->bias) x = _mm512_add_ps(x, bias[v]);
        if (e->relu) x = _mm512_max_ps(x, zero);
        if (e->gate) {
            const float *g = e->gate + i * e->ldg + j + 16 * v;
            x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(mk[v], g), zero, _CMP_GT_OQ), x);
        }
        if (e->colsum) sum[v] = _mm512_add_ps(sum[v], x);
        _mm512_mask_storeu_ps(cr + 16 * v, mk[v], x);
    }
}

// The bias's columns j … j + 16·vecs − 1 (zero past the masks, or without a bias).
FWP_INLINE FWP_AVX512 void load_bias(int vecs, const epilogue_t *e, long j, const __mmask16 *mk, __m512 *bias) {
    _Pragma("clang loop unroll(full)")
    for (int v = 0; v < vecs; v++)
        bias[v] = e->bias ? _mm512_maskz_loadu_ps(mk[v], e->bias + j + 16 * v) : _mm512_setzero_ps();
}

// Adds a block's column sums (finish_row's sum[]) into e's, when it has them.
FWP_INLINE FWP_AVX512 void finish_sums(int vecs, const __mmask16 *mk, const epilogue_t *e, long j, const __m512 *sum) {
    if (!e->colsum) return;
    float *cs = e->colsum + j;
    _Pragma("clang loop unroll(full)")
    for (int v = 0; v < vecs; v++)
        _mm512_mask_storeu_ps(cs + 16 * v, mk[v], _mm512_add_ps(_mm512_maskz_loadu_ps(mk[v], cs + 16 * v), sum[v]));
}

// One block of `rows` ≤ 6 rows × 16·vecs columns (masks mk at the column edge), over all k:
// C ← alpha · op(A) op(B) + beta · C, then the epilogue `e`; the block is rows i … of C (at c)
// and columns j … (at c too). op(A)(i, q) is a[q * lda + i] with trans_a, a[i * lda + q]
// without. `rows`, `vecs` and `trans_a` are constants at each call site. The panel is zero past
// n, so its loads need no masks.
FWP_INLINE FWP_AVX512 void block(int rows, int vecs, int trans_a, int k, const float *a, long lda, const float *bp,
                                 float alpha, float beta, float *c, long ldc, const __mmask16 *mk,
                                 const epilogue_t *e, long i, long j) {
    __m512 x[ROWS][VECS];
    _Pragma("clang loop unroll(full)")
    for (int r = 0; r < ROWS; r++) {
        _Pragma("clang loop unroll(full)")
        for (int v = 0; v < VECS; v++) x[r][v] = _mm512_setzero_ps();
    }
    if (trans_a) {
        for (int q = 0; q < k; q++) {
            __m512 b[VECS];
            _Pragma("clang loop unroll(full)")
            for (int v = 0; v < vecs; v++) b[v] = _mm512_load_ps(bp + q * PANEL + 16 * v);
            const float *aq = a + q * lda;
            _Pragma("clang loop unroll(full)")
            for (int r = 0; r < rows; r++) {
                __m512 av = _mm512_set1_ps(aq[r]);
                _Pragma("clang loop unroll(full)")
                for (int v = 0; v < vecs; v++) x[r][v] = _mm512_fmadd_ps(av, b[v], x[r][v]);
            }
        }
    } else {
        // Two base pointers and one index reach all six rows (x86 scales 1, 2, 4, 8).
        const float *p0 = a, *p3 = a + 3 * lda;
        for (int q = 0; q < k; q++) {
            __m512 b[VECS];
            _Pragma("clang loop unroll(full)")
            for (int v = 0; v < vecs; v++) b[v] = _mm512_load_ps(bp + q * PANEL + 16 * v);
            _Pragma("clang loop unroll(full)")
            for (int r = 0; r < rows; r++) {
                const float *base = r < 3 ? p0 : p3;
                __m512 av = _mm512_set1_ps(base[(r % 3) * lda + q]);
                _Pragma("clang loop unroll(full)")
                for (int v = 0; v < vecs; v++) x[r][v] = _mm512_fmadd_ps(av, b[v], x[r][v]);
            }
        }
    }
    __m512 sum[VECS], bias[VECS];
    _Pragma("clang loop unroll(full)")
    for (int v = 0; v < VECS; v++) sum[v] = _mm512_setzero_ps();
    load_bias(vecs, e, j, mk, bias);
    _Pragma("clang loop unroll(full)")
    for (int r = 0; r < rows; r++)
        finish_row(vecs, x[r], c + r * ldc, mk, alpha, beta, e, bias, i + r, j, sum);
    finish_sums(vecs, mk, e, j, sum);
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
        __mmask16 mk[VECS];
        for (int v = 0; v < VECS; v++) mk[v] = lanes16(w - 16 * v);
        // a last panel narrower than 64 columns: only the registers it needs
        switch (w >= PANEL ? VECS : (w + 15) / 16) {
        case 4: block(rows, 4, trans_a, k, ai, lda, bp, alpha, beta, cij, ldc, mk, e, i, p * PANEL); break;
        case 3: block(rows, 3, trans_a, k, ai, lda, bp, alpha, beta, cij, ldc, mk, e, i, p * PANEL); break;
        case 2: block(rows, 2, trans_a, k, ai, lda, bp, alpha, beta, cij, ldc, mk, e, i, p * PANEL); break;
        default: block(rows, 1, trans_a, k, ai, lda, bp, alpha, beta, cij, ldc, mk, e, i, p * PANEL); break;
        }
    }
}

// Rows i … i + rows − 1 (1 ≤ rows ≤ 6) against every panel: the switch makes `rows` a constant
// for `block`.
FWP_INLINE FWP_AVX512 void row_block_any(int rows, int trans_a, int n, int k, const float *ai, long lda,
                                         const float *packed, float alpha, float beta, float *c, long ldc,
                                         const epilogue_t *e, long i) {
    switch (rows) {
#define ROWS_CASE(R) \
    case R: row_block(R, trans_a, n, k, ai, lda, packed, alpha, beta, c, ldc, e, i); break;
        ROWS_CASE(6) ROWS_CASE(5) ROWS_CASE(4) ROWS_CASE(3) ROWS_CASE(2) ROWS_CASE(1)
#undef ROWS_CASE
    default: break;
    }
}

// op(A) read in place: a block's six rows (6 × k floats, 3 KB at the model's k = 128) stay in
// L1 across the panels, so A needs no packing (12-row blocks would, for wide outputs).
static FWP_AVX512 void dense_a(int m, int n, int k, const float *a, long lda, const float *packed, float alpha,
                               float beta, float *c, long ldc, const epilogue_t *e) {
    long i = 0;
    for (; i + ROWS <= m; i += ROWS) row_block(ROWS, 0, n, k, a + i * lda, lda, packed, alpha, beta, c, ldc, e, i);
    if (i < m) row_block_any((int)(m - i), 0, n, k, a + i * lda, lda, packed, alpha, beta, c, ldc, e, i);
}

// op(A) = Aᵀ (a weight gradient: the inner dimension is the batch's rows, long): in slices of
// KC inner steps, each 12-column block of A is copied into a contiguous KC × 12 slab, so both
// operands stream from L1/L2 in order, and feeds two blocks of 6 rows of C; C accumulates
// across slices.
enum { KC = 128 };

// Columns i … i + rows − 1 of kk rows of A into a contiguous kk × 12 slab (zero past rows).
static __attribute__((noinline)) FWP_AVX512 void pack_slab(int rows, int kk, const float *a, long lda, float *slab) {
    __mmask16 mr = lanes16(rows);
    for (int q = 0; q < kk; q++) _mm512_mask_storeu_ps(slab + q * SLAB, 0x0FFF, _mm512_maskz_loadu_ps(mr, a + q * lda));
}

static FWP_AVX512 void dense_at(int transpose_b, int m, int n, int k, const float *a, long lda, const float *b,
                                long ldb, float *packed, float *slab, float alpha, float beta, float *c, long ldc) {
    for (int kc = 0; kc < k || kc == 0; kc += KC) {
        int kk = k - kc < KC ? k - kc : KC;
        float sliceBeta = kc == 0 ? beta : 1.0f;
        if (kk > 0) pack_b(transpose_b, kk, n, transpose_b ? b + kc : b + (long)kc * ldb, ldb, packed);
        for (long i = 0; i < m; i += SLAB) {
            int rows = m - i < SLAB ? (int)(m - i) : SLAB;
            pack_slab(rows, kk, a + (long)kc * lda + i, lda, slab);
            // the slab's first six columns, then the rest
            row_block_any(rows < ROWS ? rows : ROWS, 1, n, kk, slab, SLAB, packed, alpha, sliceBeta, c, ldc, &plain, i);
            if (rows > ROWS)
                row_block_any(rows - ROWS, 1, n, kk, slab + ROWS, SLAB, packed, alpha, sliceBeta, c, ldc, &plain,
                              i + ROWS);
        }
        if (k == 0) break;
    }
}

// ---------------------------------------------------------------------------------------------
// The same products on AMX tiles (Intel's matrix unit, where the CPU and the OS provide it), at
// float32 accuracy. Each float32 x is split exactly into three bfloat16 parts, x = h + m + l (h
// its leading 8 significant bits, m the next 8, l the last 8: truncations, so each difference is
// exact), and op(A) op(B) is accumulated in float32 tiles from the six products of parts whose
// weight reaches 2^-16 of the leading one: hₐh_b, hₐm_b, mₐh_b, hₐl_b, mₐm_b, lₐh_b. Each
// bf16 × bf16 product is exact in float32; the three left out (mₐl_b, lₐm_b, lₐl_b) are below
// 2^-24 |a||b|, float32's own rounding unit. This splitting is the "bf16x6" of Henry, Tang and
// Heinecke (ARITH 2019). One tile instruction does 16 × 16 × 32 multiply-adds, so six of them
// can beat float32 FMAs; the tests check the accuracy against float64.
//
// Packed layouts (bf16 as uint16_t), one 1 KB tile per part, three parts (h, m, l) in a row:
// op(A): per 16-row half of a 32-row block, per block of 32 inner steps, 16 rows × 32 values;
// op(B): per 16-column block, per block of 32 inner steps, 16 rows of pairs (the tile unit's
// "VNNI" layout: row p holds op(B)(2p, j), op(B)(2p + 1, j) side by side for j < 16).

#define FWP_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

enum { TILE = 16, TILE_K = 32, PART = TILE * TILE_K, PARTS = 3, AMX_KC = 128 };

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) tile_config_t;

static int amx_available;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_probe(void) {
    if (fwp_cpu_vector_level() < 3) return;
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return;
    if (!(edx & (1u << 22)) || !(edx & (1u << 24))) return;  // AMX-BF16, AMX-TILE
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return;  // the OS manages tile config and data (XCR0)
#if defined(__linux__)
    // Linux hands out the 8 KB of tile state per process on request (ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA); it refuses when it cannot, and then the AVX-512 kernel runs.
    amx_available = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#endif
}

int fwp_dense_sgemm_amx_supported(void) {
    pthread_once(&amx_once, amx_probe);
    return amx_available;
}

// FWP_AMX=1 (fwp_dispatch.h) on a CPU and OS that provide the tiles.
static int amx_default(void) { return fwp_dispatch()->amx_requested && fwp_dense_sgemm_amx_supported(); }

static __thread int amx_mode = -1;

int fwp_dense_sgemm_uses_amx(void) {
    return amx_mode < 0 ? amx_default() : amx_mode && fwp_dense_sgemm_amx_supported();
}

int fwp_dense_sgemm_set_amx(int mode) {
    amx_mode = mode < 0 ? -1 : mode != 0;
    return fwp_dense_sgemm_uses_amx();
}

// 16 floats' three parts, each in the upper half of its 32-bit lane (the lower half zero).
FWP_INLINE FWP_AMX void split3(__m512 x, __m512i *h, __m512i *m, __m512i *l) {
    const __m512i top = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512i hi = _mm512_and_si512(_mm512_castps_si512(x), top);
    __m512 rest = _mm512_sub_ps(x, _mm512_castsi512_ps(hi));
    __m512i mid = _mm512_and_si512(_mm512_castps_si512(rest), top);
    *h = hi;
    *m = mid;
    *l = _mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(rest, _mm512_castsi512_ps(mid))), top);
}

// Rows 0 … rows − 1 (≤ 16; zero past them) of a row-major matrix (k contiguous, row stride lda),
// kk inner steps (zero past them), into one half of a packed op(A) block.
static __attribute__((noinline)) FWP_AMX void amx_pack_a(int rows, int kk, const float *a, long lda, uint16_t *dst) {
    int nkb = (kk + TILE_K - 1) / TILE_K;
    __m512i upper = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25,
                                     23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int r = 0; r < TILE; r++) {
        const float *ar = a + r * lda;
        for (int kb = 0; kb < nkb; kb++) {
            int q = kb * TILE_K;
            __m512 x0 = _mm512_setzero_ps(), x1 = _mm512_setzero_ps();
            if (r < rows) {
                x0 = _mm512_maskz_loadu_ps(lanes16(kk - q), ar + q);
                x1 = _mm512_maskz_loadu_ps(lanes16(kk - q - 16), ar + q + 16);
            }
            __m512i h0, m0, l0, h1, m1, l1;
            split3(x0, &h0, &m0, &l0);
            split3(x1, &h1, &m1, &l1);
            uint16_t *d = dst + (long)kb * PARTS * PART + r * TILE_K;
            _mm512_store_si512(d, _mm512_permutex2var_epi16(h0, upper, h1));
            _mm512_store_si512(d + PART, _mm512_permutex2var_epi16(m0, upper, m1));
            _mm512_store_si512(d + 2 * PART, _mm512_permutex2var_epi16(l0, upper, l1));
        }
    }
}

// op(B) (kk × n, row-major at s with row stride lds) into nbe 16-column blocks (zero past n and
// kk); each block holds nkb k-blocks of three parts.
static __attribute__((noinline)) FWP_AMX void amx_pack_b(int kk, int n, int nbe, const float *s, long lds, uint16_t *dst) {
    int nkb = (kk + TILE_K - 1) / TILE_K;
    for (int cb = 0; cb < nbe; cb++) {
        __mmask16 mask = lanes16(n - cb * TILE);
        const float *sc = s + cb * TILE;
        for (int kb = 0; kb < nkb; kb++) {
            uint16_t *d = dst + ((long)cb * nkb + kb) * PARTS * PART;
            for (int p = 0; p < TILE; p++) {
                int q = kb * TILE_K + 2 * p;
                __m512 x0 = _mm512_setzero_ps(), x1 = _mm512_setzero_ps();
                if (q < kk) x0 = _mm512_maskz_loadu_ps(mask, sc + q * lds);
                if (q + 1 < kk) x1 = _mm512_maskz_loadu_ps(mask, sc + (q + 1) * lds);
                __m512i h0, m0, l0, h1, m1, l1;
                split3(x0, &h0, &m0, &l0);
                split3(x1, &h1, &m1, &l1);
                // A pair per 32-bit lane: op(B)(q, j) in its lower half, op(B)(q + 1, j) in its upper.
                _mm512_store_si512(d + p * TILE_K, _mm512_or_si512(h1, _mm512_srli_epi32(h0, 16)));
                _mm512_store_si512(d + PART + p * TILE_K, _mm512_or_si512(m1, _mm512_srli_epi32(m0, 16)));
                _mm512_store_si512(d + 2 * PART + p * TILE_K, _mm512_or_si512(l1, _mm512_srli_epi32(l0, 16)));
            }
        }
    }
}

// Rows i … i + 31 × columns j … j + 31 of the product over nkb k-blocks (tiles 0–3 accumulate;
// a0, a1 are the two 16-row halves' packed parts, b0, b1 the two 16-column blocks'), stored to
// out (32 × 32). Each B part is loaded once per k-block and the A parts (reused from L1 for
// every column block) once per product; the smaller products come first.
FWP_INLINE FWP_AMX void amx_block(int nkb, const uint16_t *a0, const uint16_t *a1, const uint16_t *b0,
                                  const uint16_t *b1, float *out) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int kb = 0; kb < nkb; kb++) {
        long o = (long)kb * PARTS * PART;
#define AMX_TERM(pa, pb, load_b)                                                          \
    _tile_loadd(4, a0 + o + (pa) * PART, 64);                                             \
    _tile_loadd(5, a1 + o + (pa) * PART, 64);                                             \
    if (load_b) {                                                                         \
        _tile_loadd(6, b0 + o + (pb) * PART, 64);                                         \
        _tile_loadd(7, b1 + o + (pb) * PART, 64);                                         \
    }                                                                                     \
    _tile_dpbf16ps(0, 4, 6);                                                              \
    _tile_dpbf16ps(1, 4, 7);                                                              \
    _tile_dpbf16ps(2, 5, 6);                                                              \
    _tile_dpbf16ps(3, 5, 7);
        AMX_TERM(2, 0, 1) AMX_TERM(1, 0, 0) AMX_TERM(0, 0, 0) AMX_TERM(1, 1, 1) AMX_TERM(0, 1, 0) AMX_TERM(0, 2, 1)
#undef AMX_TERM
    }
    _tile_stored(0, out, 128);
    _tile_stored(1, out + 16, 128);
    _tile_stored(2, out + 16 * 32, 128);
    _tile_stored(3, out + 16 * 32 + 16, 128);
}

// C ← alpha · op(A) op(B) + beta · C, then the epilogue e (only without trans_a), on AMX: op(B)
// is packed whole (in slices of AMX_KC inner steps for weight gradients, trans_a, whose inner
// dimension is the batch's rows), then for each 32-row block op(A) is packed (L1-sized) and run
// against every 32-column block. Transposed operands are transposed (fwp_transpose) first.
static FWP_AMX void dense_amx(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, long lda,
                              const float *b, long ldb, float beta, float *c, long ldc, const epilogue_t *e) {
    int kc = trans_a ? AMX_KC : k > 0 ? k : 1;
    int kcmax = k < kc ? k : kc;
    int nkbmax = (kcmax + TILE_K - 1) / TILE_K;
    int nbe = ((n + TILE - 1) / TILE + 1) & ~1;  // 16-column blocks, padded to whole pairs
    size_t blockParts = (size_t)nkbmax * PARTS * PART;  // bf16 per 16-row or 16-column block
    size_t bFloats = (size_t)nbe * blockParts / 2, aFloats = blockParts;  // two halves of bf16
    size_t tFloats = trans_b ? (size_t)kcmax * n : 0, sFloats = trans_a ? (size_t)kcmax * 2 * TILE : 0;
    float *buffer = panels(bFloats + aFloats + tFloats + sFloats + 16);
    uint16_t *bp = (uint16_t *)buffer, *ap = (uint16_t *)(buffer + bFloats);
    float *tb = buffer + bFloats + aFloats, *sa = tb + tFloats;
    float out[2 * TILE * 2 * TILE] __attribute__((aligned(64)));
    tile_config_t config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = TILE;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
    for (int q0 = 0; q0 < k || q0 == 0; q0 += kc) {
        int kk = k - q0 < kc ? k - q0 : kc, nkb = (kk + TILE_K - 1) / TILE_K;
        size_t partsPerBlock = (size_t)nkb * PARTS * PART;
        float sliceBeta = q0 == 0 ? beta : 1.0f;
        if (trans_b) {
            if (kk > 0) fwp_transpose(n, kk, b + q0, (int)ldb, tb, n);
            amx_pack_b(kk, n, nbe, tb, n, bp);
        } else {
            amx_pack_b(kk, n, nbe, b + (long)q0 * ldb, ldb, bp);
        }
        for (long i = 0; i < m; i += 2 * TILE) {
            int rows = m - i < 2 * TILE ? (int)(m - i) : 2 * TILE;
            const float *ai = a + i * lda + q0;
            long lds = lda;
            if (trans_a) {  // op(A)'s rows i … are columns of a: transposed into sa (rows × kk)
                if (kk > 0) fwp_transpose(kk, rows, a + (long)q0 * lda + i, (int)lda, sa, kk);
                ai = sa;
                lds = kk;
            }
            amx_pack_a(rows < TILE ? rows : TILE, kk, ai, lds, ap);
            amx_pack_a(rows > TILE ? rows - TILE : 0, kk, ai + TILE * lds, lds, ap + partsPerBlock);
            for (long j = 0; j < n; j += 2 * TILE) {
                const uint16_t *b0 = bp + (j / TILE) * partsPerBlock;
                amx_block(nkb, ap, ap + partsPerBlock, b0, b0 + partsPerBlock, out);
                __mmask16 mk[2] = {lanes16(n - j), lanes16(n - j - 16)};
                __m512 sum[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, bias[2];
                load_bias(2, e, j, mk, bias);
                for (int r = 0; r < rows; r++) {
                    __m512 y[2] = {_mm512_load_ps(out + r * 32), _mm512_load_ps(out + r * 32 + 16)};
                    finish_row(2, y, c + (i + r) * ldc + j, mk, alpha, sliceBeta, e, bias, i + r, j, sum);
                }
                finish_sums(2, mk, e, j, sum);
            }
        }
        if (k == 0) break;
    }
    _tile_release();
}


FWP_AVX512 void fwp_dense_sgemm(int transpose_a, int transpose_b, int m, int n, int k, float alpha, const float *a,
                                int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    fwp_dense_sgemm_bias(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, NULL, 0);
}

// The untransposed-A products (op(B) packed whole), with an epilogue.
static FWP_AVX512 void dense_untransposed(int transpose_b, int m, int n, int k, float alpha, const float *a, int lda,
                                          const float *b, int ldb, float beta, float *c, int ldc, const epilogue_t *e) {
    long np = (n + PANEL - 1) / PANEL;
    size_t depth = k > 0 ? (size_t)k : 1;
    float *packed = panels((size_t)np * PANEL * depth);
    if (k > 0) pack_b(transpose_b, k, n, b, ldb, packed);
    dense_a(m, n, k, a, lda, packed, alpha, beta, c, ldc, e);
}

#ifndef DENSE_CHUNK_BYTES
// The most bytes of packed op(B) one pass over op(A) works against: wider outputs (a word-level
// vocabulary's logits, tens of thousands of columns) go in column chunks of this much, so the
// panels stay in L2 instead of streaming from memory for every block of rows. The byte-level LM's products
// (up to 512 columns at depth 128, 128 at 512) fit in one chunk.
#define DENSE_CHUNK_BYTES (512 << 10)
#endif

// One product on the engine the thread uses, with op(B) and C split into column chunks whose
// packed panels fit DENSE_CHUNK_BYTES (and a weight gradient's C into row chunks when it is
// larger than that); the chunks are independent, and each element of C sees the same
// operations in the same order whatever the chunking.
static FWP_AVX512 void dense_product(int transpose_a, int transpose_b, int m, int n, int k, float alpha, const float *a,
                                     int lda, const float *b, int ldb, float beta, float *c, int ldc,
                                     const epilogue_t *e) {
    int amx = fwp_dense_sgemm_uses_amx(), slice = amx ? AMX_KC : KC;
    long depth = transpose_a && k > slice ? slice : k;  // op(B) rows packed at a time
    long bytesPerColumn = (depth > 0 ? depth : 1) * (amx ? 2 * PARTS : (long)sizeof(float));
    long chunk = DENSE_CHUNK_BYTES / bytesPerColumn / PANEL * PANEL;  // whole panels (and tile pairs: PANEL is 64)
    if (chunk < PANEL) chunk = PANEL;
    for (long j = 0; j < n; j += chunk) {
        int w = n - j < chunk ? (int)(n - j) : (int)chunk;
        const float *bj = transpose_b ? b + j * ldb : b + j;
        epilogue_t ej = *e;
        if (e->bias) ej.bias = e->bias + j;
        if (e->gate) ej.gate = e->gate + j;
        if (e->colsum) ej.colsum = e->colsum + j;
        if (transpose_a) {
            // Weight gradients run their inner dimension in slices, each adding into C: when C
            // is larger than L2 (a vocabulary's rows) it goes in row chunks of about 256 KB, all
            // slices for one chunk before the next, so C is not streamed once per slice.
            long rowsPerChunk = (long)m * w * (long)sizeof(float) <= DENSE_CHUNK_BYTES
                                    ? m
                                    : (DENSE_CHUNK_BYTES / 2) / ((long)w * (long)sizeof(float)) / 96 * 96;
            if (rowsPerChunk < 96) rowsPerChunk = 96;
            for (long i = 0; i < m; i += rowsPerChunk) {
                int h = m - i < rowsPerChunk ? (int)(m - i) : (int)rowsPerChunk;
                if (amx) {
                    dense_amx(1, transpose_b, h, w, k, alpha, a + i, lda, bj, ldb, beta, c + i * ldc + j, ldc, &ej);
                } else {
                    long np = (w + PANEL - 1) / PANEL;
                    float *packed = panels((size_t)np * PANEL * KC + (size_t)KC * SLAB);
                    dense_at(transpose_b, h, w, k, a + i, lda, bj, ldb, packed, packed + np * PANEL * KC, alpha, beta,
                             c + i * ldc + j, ldc);
                }
            }
        } else if (amx) {
            dense_amx(0, transpose_b, m, w, k, alpha, a, lda, bj, ldb, beta, c + j, ldc, &ej);
        } else {
            dense_untransposed(transpose_b, m, w, k, alpha, a, lda, bj, ldb, beta, c + j, ldc, &ej);
        }
    }
}

FWP_AVX512 void fwp_dense_sgemm_bias(int transpose_a, int transpose_b, int m, int n, int k, float alpha,
                                     const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                                     const float *bias, int relu) {
    if (m <= 0 || n <= 0) return;
    if (transpose_a && (bias || relu)) __builtin_trap();
    epilogue_t e = plain;
    e.bias = bias;
    e.relu = relu;
    dense_product(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, &e);
}

FWP_AVX512 void fwp_dense_sgemm_gated(int transpose_b, int m, int n, int k, const float *a, int lda, const float *b,
                                      int ldb, float *c, int ldc, const float *gate, int ldg, float *colsum) {
    if (m <= 0 || n <= 0) return;
    epilogue_t e = plain;
    e.gate = gate;
    e.ldg = ldg;
    e.colsum = colsum;
    dense_product(0, transpose_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc, &e);
}

#else

int fwp_dense_sgemm_amx_supported(void) { return 0; }
int fwp_dense_sgemm_uses_amx(void) { return 0; }
int fwp_dense_sgemm_set_amx(int mode) {
    (void)mode;
    return 0;
}

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
