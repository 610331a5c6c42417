// Row-wise kernels (elementwise.c): the feature map's ELU + 1 with sum normalisation, the sigmoid,
// softmax rows, cross-entropy, ReLU's backward, LayerNorm, and the chunkwise delta rule's C × C
// steps. Each has a Swift reference loop in FWPCore (Sources/CKernels/README.md names it and its
// test). Whether they run: fwp_dispatch.h (vector_kernels).
#ifndef FWP_ELEMENTWISE_H
#define FWP_ELEMENTWISE_H
#include "fwp_dispatch.h"

#ifdef __cplusplus
extern "C" {
#endif

/// In place: row[0..<valid] ← softmax(row[0..<valid]) (e^(x − max) / Σ; a NaN anywhere makes the
/// row NaN), then row[valid..<valid + zeros] ← 0. One causal row of attention probabilities.
void fwp_softmax_row(float *row, long valid, long zeros);

/// Softmax's backward for one row, in place: with c = Σ p[j]·d[j] over the valid prefix,
/// d[j] ← p[j] · (d[j] − c) · scale there, then d[valid..<valid + zeros] ← 0.
void fwp_softmax_row_backward(const float *p, float *d, long valid, long zeros, float scale);

/// The online softmax's rows. In place: row[j] ← e^(row[j] − shift) for j < n (every
/// row[j] − shift ≤ 0: shift is at least the row's maximum; NaN stays NaN); returns Σ row[j].
float fwp_exp_shifted_sum(float *row, long n, float shift);

/// Its backward per row: p[j] ← e^(p[j] − lse) (the probabilities from the scores and the log
/// Σ exp), then d[j] ← p[j] · (d[j] − c) · scale, for j < n.
void fwp_softmax_scores_backward(float *p, float *d, long n, float lse, float c, float scale);

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
