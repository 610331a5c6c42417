// Small matrix products for FWPCore, outside OpenBLAS.
//
// The chunkwise fast-weight kernels issue tens of thousands of products per training step whose
// operands are a few kilobytes (32 × 32 × 32 … 64 × 64 × 64). OpenBLAS spends more time packing
// operands, scaling C and dispatching on those than in its inner kernel, so FWPCore sends them
// here instead: a register-blocked AVX2/FMA kernel that reads the operands in place.
#ifndef FWP_KERNELS_H
#define FWP_KERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when this CPU can run fwp_small_sgemm (x86-64 with AVX2 and FMA), 0 otherwise.
int fwp_small_sgemm_supported(void);

/// The largest n·k for which fwp_small_sgemm accepts transpose_b (it transposes B on the stack).
#define FWP_SMALL_SGEMM_MAX_BT 16384

/// C ← alpha · op(A) · op(B) + beta · C, row-major, op = transpose when the flag is set.
/// op(A) is m × k, op(B) is k × n, C is m × n; lda, ldb, ldc are row strides. With beta == 0,
/// C is not read. Requires fwp_small_sgemm_supported() and, with transpose_b,
/// n · k <= FWP_SMALL_SGEMM_MAX_BT.
void fwp_small_sgemm(int transpose_a, int transpose_b, int m, int n, int k, float alpha,
                     const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);

#ifdef __cplusplus
}
#endif

#endif
