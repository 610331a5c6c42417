// Matrix products outside OpenBLAS (small_sgemm.c, dense_sgemm.c), transposes and row copies.
//
// The chunkwise fast-weight kernels issue tens of thousands of products per training step whose
// operands are a few kilobytes; OpenBLAS spends more time packing, scaling C and dispatching on
// those than in its inner kernel, so FWPCore sends them to the small kernel, which reads operands
// in place. With AVX-512 the layers' products go to the dense kernel, whose epilogues fuse bias,
// ReLU and ReLU's backward into the one store of C. Whether either runs: fwp_dispatch.h.
#ifndef FWP_GEMM_H
#define FWP_GEMM_H
#include "fwp_dispatch.h"

#ifdef __cplusplus
extern "C" {
#endif

/// The largest n·k for which fwp_small_sgemm_add accepts transpose_b (it transposes B on the stack).
#define FWP_SMALL_SGEMM_MAX_BT 16384

/// C ← alpha · op(A) · op(B) + beta · C_in, row-major, op = transpose when the flag is set.
/// op(A) is m × k, op(B) is k × n, C and C_in are m × n; lda, ldb, ldc_in, ldc are row strides.
/// c_in may be c itself (the usual C ← αAB + βC); otherwise the two must not overlap. With
/// beta == 0, C_in is not read. Requires fwp_small_sgemm_supported() and, with transpose_b,
/// n · k <= FWP_SMALL_SGEMM_MAX_BT.
void fwp_small_sgemm_add(int transpose_a, int transpose_b, int m, int n, int k, float alpha,
                         const float *a, int lda, const float *b, int ldb, float beta, const float *c_in, int ldc_in,
                         float *c, int ldc);

/// One term ± op(A) · op(B) of fwp_small_sgemm_sum: op(A) is m × k, op(B) k × n (row-major, op =
/// transpose when the flag is set), subtracted when `negate` is nonzero.
typedef struct fwp_gemm_term {
    int transpose_a, transpose_b, k, negate;
    const float *a;
    int lda;
    const float *b;
    int ldb;
} fwp_gemm_term;

/// The most terms fwp_small_sgemm_sum takes.
#define FWP_SMALL_SGEMM_MAX_TERMS 4

/// C ← alpha · Σ_t ±op(A_t) · op(B_t) + beta · C_in: each register block of C accumulates every
/// term before it is stored once (C_in as in fwp_small_sgemm_add). Requires
/// fwp_small_sgemm_supported(), 1 ≤ count ≤ FWP_SMALL_SGEMM_MAX_TERMS, and Σ n · k over the terms
/// with transpose_b at most FWP_SMALL_SGEMM_MAX_BT.
void fwp_small_sgemm_sum(int m, int n, int count, const fwp_gemm_term *terms, float alpha, float beta,
                         const float *c_in, int ldc_in, float *c, int ldc);

/// C ← alpha · op(A) · op(B) + beta · C (row-major; op = transpose when flagged; op(A) m × k,
/// op(B) k × n), for the dense layers' products: op(B) is packed into 64-column panels in a
/// per-thread buffer, and C is read (beta ≠ 0) and written once. With beta == 0, C is not read.
/// Requires fwp_dense_sgemm_supported().
void fwp_dense_sgemm(int transpose_a, int transpose_b, int m, int n, int k, float alpha, const float *a, int lda,
                     const float *b, int ldb, float beta, float *c, int ldc);

/// fwp_dense_sgemm, then C[i, j] += bias[j] (when bias is not NULL), then C ← max(C, 0) (when relu
/// is not 0), in the same pass over C. Only without transpose_a.
void fwp_dense_sgemm_bias(int transpose_a, int transpose_b, int m, int n, int k, float alpha, const float *a, int lda,
                          const float *b, int ldb, float beta, float *c, int ldc, const float *bias, int relu);

/// C ← (A · op(B)) ⊙ [gate > 0] and colsum[j] += Σᵢ C[i, j] (A m × k, not transposed; gate m × n
/// with row stride ldg): a ReLU's backward (gate its output) and its bias gradient fused into the
/// product that makes the gradient. Requires fwp_dense_sgemm_supported().
void fwp_dense_sgemm_gated(int transpose_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                           float *c, int ldc, const float *gate, int ldg, float *colsum);

/// 1 when fwp_dense_sgemm* can run on AMX tiles: x86-64 with AMX-TILE, AMX-BF16 and AVX-512, and
/// an OS that grants this process the tile state (the first call asks Linux for it). There the
/// products are accumulated from six bfloat16 products of each operand's exact three-part split,
/// at float32 accuracy (dense_sgemm.c explains).
int fwp_dense_sgemm_amx_supported(void);

/// 1 when the calling thread's fwp_dense_sgemm* products run on AMX: where supported, when
/// FWP_AMX=1 is in the environment or fwp_dense_sgemm_set_amx chose it for this thread. (Off by
/// default: on a shared machine the tile unit's throughput depends on what the neighbours run;
/// docs/ARCHITECTURE.md: "AMX is opt-in".)
int fwp_dense_sgemm_uses_amx(void);

/// For the calling thread only: 1 runs fwp_dense_sgemm* on AMX where supported, 0 on AVX-512
/// FMAs, -1 returns to the process's default. Returns fwp_dense_sgemm_uses_amx().
int fwp_dense_sgemm_set_amx(int mode);

/// dst (cols × rows, row stride ldd) ← the transpose of src (rows × cols, row stride lds), through
/// 8 × 8 register tiles. Requires fwp_small_sgemm_supported().
void fwp_transpose(int rows, int cols, const float *src, int lds, float *dst, int ldd);

/// dst[r · ldd + j] ← src[r · lds + j] for r < rows, j < width (non-overlapping), prefetching the
/// source a few rows ahead. Runs on any CPU.
void fwp_copy_rows(const float *src, long lds, float *dst, long ldd, long rows, long width);

/// fwp_copy_rows with every element multiplied by scale (one rounding; a plain copy when scale is 1).
void fwp_copy_rows_scaled(const float *src, long lds, float *dst, long ldd, long rows, long width, float scale);

/// Asks the cache hierarchy for rows r < rows of `width` floats at p + r · stride (a prefetch
/// hint per 64-byte line; no effect on results). Runs on any CPU.
void fwp_prefetch_rows(const float *p, long stride, long rows, long width);

#ifdef __cplusplus
}
#endif

#endif
