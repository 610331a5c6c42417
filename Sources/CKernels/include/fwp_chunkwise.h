// The chunkwise (WY) delta and sum rules' loops over chunks (chunkwise.c): the same calls in the
// same order as FWPCore's ChunkwiseKernel Swift loops, which are their bit-exact reference.
#ifndef FWP_CHUNKWISE_H
#define FWP_CHUNKWISE_H
#include "fwp_dispatch.h"

#ifdef __cplusplus
extern "C" {
#endif

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

#ifdef __cplusplus
}
#endif

#endif
