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

/// 1 when this CPU can run fwp_small_sgemm_add (x86-64 with AVX2 and FMA), 0 otherwise.
int fwp_small_sgemm_supported(void);

/// The widest x86-64 vector extension this CPU and OS support: 3 for AVX-512 (F, CD, BW, DQ, VL),
/// 2 for AVX2 with FMA, 1 for AVX, 0 otherwise (and on other architectures).
int fwp_cpu_vector_level(void);

/// 1 when fwp_small_sgemm_add/_sum run their AVX-512 blocks (level 3 and FWP_AVX512 is not "0").
int fwp_small_sgemm_uses_avx512(void);

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

/// 1 when this CPU can run fwp_dense_sgemm (x86-64 with AVX-512: fwp_cpu_vector_level 3).
int fwp_dense_sgemm_supported(void);

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
/// default: on a shared machine the tile unit's throughput halves whenever a neighbour uses it;
/// docs/PERFORMANCE.md has the measurements.)
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

/// 1 when this CPU can run the element-wise kernels below (x86-64 with AVX2 and FMA), 0 otherwise.
int fwp_vector_kernels_supported(void);

/// In place: row[0..<valid] ← softmax(row[0..<valid]) (e^(x − max) / Σ; a NaN anywhere makes the
/// row NaN), then row[valid..<valid + zeros] ← 0. One causal row of attention probabilities.
void fwp_softmax_row(float *row, long valid, long zeros);

/// Softmax's backward for one row, in place: with c = Σ p[j]·d[j] over the valid prefix,
/// d[j] ← p[j] · (d[j] − c) · scale there, then d[valid..<valid + zeros] ← 0.
void fwp_softmax_row_backward(const float *p, float *d, long valid, long zeros, float scale);

/// y = x + 1 where x > 0, e^x elsewhere (NaN stays NaN). x and y may be the same array.
void fwp_elu_plus_one(const float *x, float *y, long n);

/// For each of `rows` rows of n: phi = ELU+1(x), sums[r] = Σ phi + epsilon, y = phi / sums[r]
/// (phi itself is not kept: it is y · sums[r]).
void fwp_elu_plus_one_sum_normalize(const float *x, float *y, float *sums, long rows, long n, float epsilon);

/// The gradient of the above with respect to x, given dL/dy, from y and the sums alone:
/// dphi = (dy − (dy · y)) / sums[r], dx = dphi · min(y · sums[r], 1) (ELU + 1's derivative).
void fwp_elu_plus_one_sum_normalize_backward(const float *dy, const float *y, const float *sums, float *dx, long rows,
                                             long n);

/// The two above over rows at strides (x, dy, y, dx row r at r · ld…), e.g. one head's rows of a
/// wider matrix read or written in place.
void fwp_elu_plus_one_sum_normalize_strided(const float *x, long ldx, float *y, long ldy, float *sums, long rows, long n,
                                            float epsilon);
void fwp_elu_plus_one_sum_normalize_backward_strided(const float *dy, long lddy, const float *y, long ldy,
                                                     const float *sums, float *dx, long lddx, long rows, long n);

/// y = 1 / (1 + e^−x), computed without overflow for any x (NaN stays NaN).
void fwp_sigmoid(const float *x, float *y, long n);

/// Softmax cross-entropy of `rows` rows of n logits against targets[r] (< n; negative: the row is
/// ignored and its gradient row zeroed): grad[r] ← scale · (softmax(logits[r]) − onehot(target))
/// and the return value Σ over counted rows of −log softmax(logits[r])[target], each term
/// computed in float as log Σ e^(x − max) + max − x[target] and added in double. Requires
/// fwp_vector_kernels_supported().
double fwp_cross_entropy(const float *logits, const long *targets, float *grad, long rows, long n, float scale);

/// ReLU's gradient and the next layer's bias gradient in one pass over `rows` rows of n:
/// d ← d where h > 0, else 0 (h is the ReLU's output); colsum[j] += Σ_rows d (row by row).
void fwp_relu_backward_column_sums(const float *h, float *d, float *colsum, long rows, long n);

/// LayerNorm of `rows` rows of n: xhat = (x − mean) / σ with σ = sqrt(var + epsilon) (two-pass
/// mean and variance), y = xhat · gamma + beta, rstd[r] = 1/σ.
void fwp_layer_norm_forward(const float *x, const float *gamma, const float *beta, float *y, float *xhat, float *rstd,
                            long rows, long n, float epsilon);

/// Its backward: dx = rstd/n · (n·g − Σg − xhat·Σ(g·xhat)) with g = dy·gamma (dx += that when
/// `accumulate` is nonzero, for a residual stream); dgamma += Σ_rows dy·xhat and dbeta += Σ_rows dy
/// (accumulated, row by row).
void fwp_layer_norm_backward(const float *dy, const float *xhat, const float *gamma, const float *rstd, float *dx,
                             int accumulate, float *dgamma, float *dbeta, long rows, long n);

/// A sequence's shape for fwp_chunkwise_forward/_backward: FWPCore's ChunkwiseKernel's fields
/// (strides in floats) and the offsets of its saved arrays (Ũ, M⁻¹, X, causal(Q Kᵀ), K Kᵀ).
typedef struct fwp_chunkwise_shape {
    int delta, chunk, steps, key_size, value_size;
    long key_stride, value_stride, output_key_stride, output_value_stride, beta_stride;
    long u_offset, m_offset, x_offset, p_offset, g_offset;
    float output_scale;  // the forward writes output_scale · y
} fwp_chunkwise_shape;

/// ChunkwiseKernel.forward's loop over chunks, on the small kernel and the C × C helpers below
/// (the same calls in the same order). Requires fwp_small_sgemm_supported() and every product
/// within the small kernel's limits (ChunkwiseKernel checks).
void fwp_chunkwise_forward(const fwp_chunkwise_shape *s, const float *q, const float *k, const float *v,
                           const float *beta, float *y, float *w, float *saved, float *scratch);

/// ChunkwiseKernel.backward's loop over chunks, as fwp_chunkwise_forward.
void fwp_chunkwise_backward(const fwp_chunkwise_shape *s, const float *dy, const float *q, const float *k,
                            const float *v, const float *beta, const float *saved, float *dw, float *scratch, float *dq,
                            float *dk, float *dv, float *dbeta, int seeded);

// The chunkwise delta rule's C × C steps (see FWPCore's ChunkwiseKernel). Matrices are c × c
// inside rows of ld floats; b holds β_0 … β_{c−1} contiguously.

/// minv ← (I + strictly-lower(diag(b) G))⁻¹ by forward substitution; rows written over all ld.
void fwp_unit_lower_inverse(const float *g, const float *b, int c, int ld, float *minv);

/// out_ij ← m_ij b_j for j ≤ i, 0 for i < j < c.
void fwp_scale_columns_lower(const float *m, const float *b, int c, int ld, float *out);

/// db_j ← Σ_{i ≥ j} minv_ij da_ij; then da_ij ← da_ij b_j for j ≤ i and 0 for i < j < c.
void fwp_chunk_dbeta_inverse(const float *minv, float *da, const float *b, int c, int ld, float *db);

/// db_i += Σ_{j<i} da_ij g_ij; then E_ij = b_i da_ij (j < i), and da ← E + Eᵀ (zero diagonal).
void fwp_chunk_dbeta_lower(const float *g, float *da, const float *b, int c, int ld, float *db);

#ifdef __cplusplus
}
#endif

#endif
