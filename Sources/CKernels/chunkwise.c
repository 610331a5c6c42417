#include "fwp_kernels.h"

// The chunkwise fast-weight recurrence's loops over chunks (FWPCore's ChunkwiseKernel has the
// mathematics and the layouts), in C: each chunk is a dozen small products and C × C steps, and
// at the model's sizes (C = 16, d = 32) the Swift loop's own work between them (argument checks,
// term building, closures) was a tenth of the kernel's time. The products are the same calls on
// the small kernel in the same order, so the results are the Swift loop's, bit for bit.

#include <string.h>

#include "prefetch.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define FWP_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

// Chunks of 16 steps with AVX-512: a C × C matrix is 16 registers, one per row. M⁻¹ by forward
// substitution kept in registers, stored, and A = M⁻¹ diag(β) from them: the same operations in
// the same order as fwp_unit_lower_inverse and fwp_scale_columns_lower (lane by lane), so the
// same results, without reloading each finished row for every later one.
static FWP_AVX512 void inverse_and_scale16(const float *g, const float *b, float *minv, float *a) {
    __m512 r[16];
    const __m512 bv = _mm512_loadu_ps(b);
    for (int i = 0; i < 16; i++) {
        __m512 acc = _mm512_setzero_ps();
        for (int m = 0; m < i; m++) acc = _mm512_fmadd_ps(_mm512_set1_ps(g[i * 16 + m]), r[m], acc);
        acc = _mm512_mul_ps(acc, _mm512_set1_ps(-b[i]));
        // lanes < i keep the sum, lane i is 1, lanes > i are 0
        acc = _mm512_maskz_mov_ps((__mmask16)((1u << i) - 1), acc);
        r[i] = _mm512_mask_mov_ps(acc, (__mmask16)(1u << i), _mm512_set1_ps(1.0f));
        _mm512_storeu_ps(minv + i * 16, r[i]);
        _mm512_storeu_ps(a + i * 16, _mm512_maskz_mul_ps((__mmask16)((2u << i) - 1), r[i], bv));
    }
}

// A = M⁻¹ diag(β), and dβ_j = Σ_i M⁻¹_ij dA_ij then dA ← dA diag(β) (lower triangle, zero
// above): fwp_scale_columns_lower and fwp_chunk_dbeta_inverse for one chunk of 16, same order.
static FWP_AVX512 void scale_and_dbeta16(const float *minv, const float *b, float *a, float *da, float *db) {
    const __m512 bv = _mm512_loadu_ps(b);
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < 16; i++) {
        __mmask16 low = (__mmask16)((2u << i) - 1);
        __m512 mr = _mm512_loadu_ps(minv + i * 16);
        _mm512_storeu_ps(a + i * 16, _mm512_maskz_mul_ps(low, mr, bv));
        __m512 d = _mm512_maskz_loadu_ps(low, da + i * 16);
        acc = _mm512_fmadd_ps(mr, d, acc);
        _mm512_storeu_ps(da + i * 16, _mm512_mul_ps(d, bv));
    }
    _mm512_storeu_ps(db, acc);
}

// The gradient through the inverse for one chunk of 16: dA ← −M⁻ᵀ dA M⁻ᵀ, as the two products
// tmp = M⁻ᵀ dA and dA = −tmp M⁻ᵀ would give it on the small kernel (each element summed over p
// in ascending order by FMAs from zero, then negated), with dA's rows and M⁻ᵀ's in registers.
// M⁻¹ is unit lower triangular with exact zeros above the diagonal, so row i of tmp starts at
// p = i: the terms before it add exact zeros.
static FWP_AVX512 void inverse_backward16(const float *minv, float *da, float *tmp) {
    float mt[256] __attribute__((aligned(64)));
    __m512 acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    // tmp's rows accumulate together, p outer, so that sixteen FMA chains run side by side.
    for (int p = 0; p < 16; p++) {
        const __m512 row = _mm512_loadu_ps(da + p * 16);
        for (int i = 0; i <= p; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(minv[p * 16 + i]), row, acc[i]);
    }
    for (int i = 0; i < 16; i++) {
        _mm512_storeu_ps(tmp + i * 16, acc[i]);
        acc[i] = _mm512_setzero_ps();
    }
    fwp_transpose(16, 16, minv, 16, mt, 16);
    for (int p = 0; p < 16; p++) {
        const __m512 row = _mm512_load_ps(mt + p * 16);
        for (int i = 0; i < 16; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(tmp[i * 16 + p]), row, acc[i]);
    }
    const __m512 minus = _mm512_set1_ps(-1.0f);
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(da + i * 16, _mm512_mul_ps(minus, acc[i]));
}

static int full16(int c, int C) { return c == 16 && C == 16 && fwp_small_sgemm_uses_avx512(); }
#else
static int full16(int c, int C) { (void)c, (void)C; return 0; }
static void inverse_and_scale16(const float *g, const float *b, float *minv, float *a) { (void)g, (void)b, (void)minv, (void)a; }
static void scale_and_dbeta16(const float *minv, const float *b, float *a, float *da, float *db) {
    (void)minv, (void)b, (void)a, (void)da, (void)db;
}
static void inverse_backward16(const float *minv, float *da, float *tmp) { (void)minv, (void)da, (void)tmp; }
#endif

static void gemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb,
                 float beta, const float *c_in, int ldc_in, float *c, int ldc) {
    fwp_small_sgemm_add(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c_in ? c_in : c, c_in ? ldc_in : ldc, c, ldc);
}

static fwp_gemm_term term(int ta, int tb, int k, int negate, const float *a, long lda, const float *b, long ldb) {
    fwp_gemm_term t = {ta, tb, k, negate, a, (int)lda, b, (int)ldb};
    return t;
}

static void mask_upper(float *p, int c, int ld) {
    for (int i = 0; i + 1 < c; i++) memset(p + (long)i * ld + i + 1, 0, sizeof(float) * (size_t)(c - i - 1));
}

// Asks, for writing, for what the forward's chunk ci will write to `saved`: its causal(Q Kᵀ),
// Ũ, X, M⁻¹ and K Kᵀ rows and the slot of the state it ends with. These lines are written once
// and read by the backward much later; a store to a line outside the caches waits while it is
// read, so the forward asks for them two chunks ahead.
static void prefetch_forward_outputs(const fwp_chunkwise_shape *s, int ci, int chunks, float *saved) {
    const int C = s->chunk, nk = s->key_size, nv = s->value_size;
    const long t0 = (long)ci * C, c = s->steps - t0 < C ? s->steps - t0 : C;
    fwp_prefetch_lines(saved + s->p_offset + t0 * C, c * C, FWP_WRITE);
    if (s->delta) {
        fwp_prefetch_lines(saved + s->u_offset + t0 * nv, c * nv, FWP_WRITE);
        fwp_prefetch_lines(saved + s->x_offset + t0 * nv, c * nv, FWP_WRITE);
        fwp_prefetch_lines(saved + s->m_offset + t0 * C, c * C, FWP_WRITE);
        fwp_prefetch_lines(saved + s->g_offset + t0 * C, c * C, FWP_WRITE);
    }
    if (ci + 1 < chunks) fwp_prefetch_lines(saved + (long)(ci + 1) * nv * nk, (long)nv * nk, FWP_WRITE);
}

void fwp_chunkwise_forward(const fwp_chunkwise_shape *s, const float *q, const float *k, const float *v,
                           const float *beta, float *y, float *w, float *saved, float *scratch) {
    const int C = s->chunk, dk = s->key_size, dv = s->value_size, steps = s->steps;
    const long ks = s->key_stride, vs = s->value_stride, ovs = s->output_value_stride, bs = s->beta_stride;
    const int chunks = (steps + C - 1) / C, delta = s->delta;
    float *A = scratch + C * C;
    float *St = scratch + 5 * C * C + C * (dv + dk + 2), *Kt = St + dk * dv;
    float *bcont = scratch + 5 * C * C + C * (dv + dk + 1);
    if (chunks > 0) memcpy(saved, w, sizeof(float) * (size_t)dv * dk);
    for (int ci = 0; ci < chunks; ci++) {
        const int t0 = ci * C, c = steps - t0 < C ? steps - t0 : C;
        const float *qc = q + t0 * ks, *kc = k + t0 * ks, *vc = v + t0 * vs;
        float *yc = y + t0 * ovs;
        const float *S = saved + (long)ci * dv * dk;
        fwp_transpose(dv, dk, S, dk, St, dv);
        fwp_transpose(c, dk, kc, (int)ks, Kt, c);
        if (ci + 2 < chunks) prefetch_forward_outputs(s, ci + 2, chunks, saved);
        if (ci + 1 < chunks) {
            int t1 = t0 + C;
            fwp_prefetch_rows(v + t1 * vs, vs, steps - t1 < C ? steps - t1 : C, dv);
        }
        const float *ut = vc;
        long ldu = vs;
        float *P = saved + s->p_offset + (long)t0 * C;
        if (delta) {
            const float *bc = beta + t0 * bs;
            float *minv = saved + s->m_offset + (long)t0 * C;
            float *x = saved + s->x_offset + (long)t0 * dv;
            float *u = saved + s->u_offset + (long)t0 * dv;
            float *G = saved + s->g_offset + (long)t0 * C;
            gemm(0, 0, c, c, dk, 1, kc, (int)ks, Kt, c, 0, NULL, 0, G, C);
            for (int j = 0; j < c; j++) bcont[j] = bc[j * bs];
            if (full16(c, C)) {
                inverse_and_scale16(G, bcont, minv, A);
            } else {
                fwp_unit_lower_inverse(G, bcont, c, C, minv);
                fwp_scale_columns_lower(minv, bcont, c, C, A);
            }
            gemm(0, 0, c, dv, dk, -1, kc, (int)ks, St, dv, 1, vc, (int)vs, x, dv);
            gemm(0, 0, c, dv, c, 1, A, C, x, dv, 0, NULL, 0, u, dv);
            ut = u;
            ldu = dv;
        }
        gemm(0, 0, c, c, dk, 1, qc, (int)ks, Kt, c, 0, NULL, 0, P, C);
        mask_upper(P, c, C);
        fwp_gemm_term terms[2] = {term(0, 0, dk, 0, qc, ks, St, dv), term(0, 0, c, 0, P, C, ut, ldu)};
        fwp_small_sgemm_sum(c, dv, 2, terms, s->output_scale, 0, yc, (int)ovs, yc, (int)ovs);
        gemm(1, 0, dv, dk, c, 1, ut, (int)ldu, kc, (int)ks, 1, S, dk, ci + 1 < chunks ? saved + (long)(ci + 1) * dv * dk : w,
             dk);
    }
}

// What the backward reads of chunk ci: its start state, the forward's saved arrays and its q, k
// and dy rows, all written long before (the saved arrays by the forward, outside the caches by
// now). The backward asks for the chunk before the one it works on into L1 and the one before
// that into L2, so that these lines arrive while a chunk's products run.
static void prefetch_backward_chunk(const fwp_chunkwise_shape *s, int ci, const float *q, const float *k,
                                    const float *dy, const float *saved, int how) {
    const int C = s->chunk, nk = s->key_size, nv = s->value_size;
    const long t0 = (long)ci * C, c = s->steps - t0 < C ? s->steps - t0 : C;
    fwp_prefetch_lines(saved + (long)ci * nv * nk, (long)nv * nk, how);
    fwp_prefetch_lines(saved + s->p_offset + t0 * C, c * C, how);
    fwp_prefetch_row_lines(q + t0 * s->key_stride, s->key_stride, c, nk, how);
    fwp_prefetch_row_lines(k + t0 * s->key_stride, s->key_stride, c, nk, how);
    fwp_prefetch_row_lines(dy + t0 * s->value_stride, s->value_stride, c, nv, how);
    if (s->delta) {
        fwp_prefetch_lines(saved + s->u_offset + t0 * nv, c * nv, how);
        fwp_prefetch_lines(saved + s->x_offset + t0 * nv, c * nv, how);
        fwp_prefetch_lines(saved + s->m_offset + t0 * C, c * C, how);
        fwp_prefetch_lines(saved + s->g_offset + t0 * C, c * C, how);
    }
}

void fwp_chunkwise_backward(const fwp_chunkwise_shape *s, const float *dy, const float *q, const float *k,
                            const float *v, const float *beta, const float *saved, float *dw, float *scratch, float *dq,
                            float *dk, float *dv, float *dbeta, int seeded) {
    const int C = s->chunk, nk = s->key_size, nv = s->value_size, steps = s->steps;
    const long ks = s->key_stride, vs = s->value_stride, oks = s->output_key_stride, ovs = s->output_value_stride;
    const long bs = s->beta_stride;
    const int chunks = (steps + C - 1) / C, delta = s->delta;
    if (!seeded) memset(dw, 0, sizeof(float) * (size_t)nk * nv);
    float *dP = scratch + C * C, *A = scratch + 2 * C * C, *dA = scratch + 3 * C * C;
    float *tmp = scratch + 4 * C * C, *dU = scratch + 5 * C * C;
    float *db = dU + C * (nv + nk), *bcont = db + C;
    for (int ci = chunks - 1; ci >= 0; ci--) {
        const int t0 = ci * C, c = steps - t0 < C ? steps - t0 : C;
        const float *qc = q + t0 * ks, *kc = k + t0 * ks, *vc = v + t0 * vs, *dyc = dy + t0 * vs;
        float *dqc = dq + t0 * oks, *dkc = dk + t0 * oks, *dvc = dv + t0 * ovs;
        const float *S = saved + (long)ci * nv * nk;
        const float *ut = delta ? saved + s->u_offset + (long)t0 * nv : vc;
        const long ldu = delta ? nv : vs;
        const float *P = saved + s->p_offset + (long)t0 * C;
        if (ci > 0) prefetch_backward_chunk(s, ci - 1, q, k, dy, saved, FWP_READ_L1);
        if (ci > 1) prefetch_backward_chunk(s, ci - 2, q, k, dy, saved, FWP_READ_L2);
        float *dUt = delta ? dU : dvc;
        const long lddu = delta ? nv : ovs;
        fwp_gemm_term t_du[2] = {term(1, 0, c, 0, P, C, dyc, vs), term(0, 1, nk, 0, kc, ks, dw, nk)};
        fwp_small_sgemm_sum(c, nv, 2, t_du, 1, 0, dUt, (int)lddu, dUt, (int)lddu);
        gemm(0, 1, c, c, nv, 1, dyc, (int)vs, ut, (int)ldu, 0, NULL, 0, dP, C);
        mask_upper(dP, c, C);
        fwp_gemm_term t_dq[2] = {term(0, 0, nv, 0, dyc, vs, S, nk), term(0, 0, c, 0, dP, C, kc, ks)};
        fwp_small_sgemm_sum(c, nk, 2, t_dq, 1, 0, dqc, (int)oks, dqc, (int)oks);
        const fwp_gemm_term dKQ = term(1, 0, c, 0, dP, C, qc, ks);
        const fwp_gemm_term dKU = term(0, 0, nv, 0, ut, ldu, dw, nk);
        const fwp_gemm_term dSQ = term(1, 0, c, 0, dyc, vs, qc, ks);
        if (!delta) {
            fwp_gemm_term t_dk[2] = {dKQ, dKU};
            fwp_small_sgemm_sum(c, nk, 2, t_dk, 1, 0, dkc, (int)oks, dkc, (int)oks);
            gemm(1, 0, nv, nk, c, 1, dyc, (int)vs, qc, (int)ks, 1, NULL, 0, dw, nk);
            continue;
        }
        const float *bc = beta + t0 * bs;
        const float *minv = saved + s->m_offset + (long)t0 * C;
        const float *x = saved + s->x_offset + (long)t0 * nv;
        for (int j = 0; j < c; j++) bcont[j] = bc[j * bs];
        gemm(0, 1, c, c, nv, 1, dU, nv, x, nv, 0, NULL, 0, dA, C);
        if (full16(c, C)) {
            scale_and_dbeta16(minv, bcont, A, dA, db);
        } else {
            fwp_scale_columns_lower(minv, bcont, c, C, A);
            fwp_chunk_dbeta_inverse(minv, dA, bcont, c, C, db);
        }
        gemm(1, 0, c, nv, c, 1, A, C, dU, nv, 0, NULL, 0, dvc, (int)ovs);
        if (full16(c, C)) {
            inverse_backward16(minv, dA, tmp);
        } else {
            gemm(1, 0, c, c, c, 1, minv, C, dA, C, 0, NULL, 0, tmp, C);
            gemm(0, 1, c, c, c, -1, tmp, C, minv, C, 0, NULL, 0, dA, C);
        }
        const float *G = saved + s->g_offset + (long)t0 * C;
        fwp_chunk_dbeta_lower(G, dA, bcont, c, C, db);
        fwp_gemm_term t_dk[4] = {dKQ, dKU, term(0, 0, nv, 1, dvc, ovs, S, nk), term(0, 0, c, 0, dA, C, kc, ks)};
        fwp_small_sgemm_sum(c, nk, 4, t_dk, 1, 0, dkc, (int)oks, dkc, (int)oks);
        fwp_gemm_term t_ds[2] = {dSQ, term(1, 0, c, 1, dvc, ovs, kc, ks)};
        fwp_small_sgemm_sum(nv, nk, 2, t_ds, 1, 1, dw, nk, dw, nk);
        if (dbeta)
            for (int j = 0; j < c; j++) dbeta[(t0 + j) * bs] = db[j];
    }
}
