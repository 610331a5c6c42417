// Which kernels may run: the CPU's vector extensions and the FWP_* switches, read once per process
// (dispatch.c). Every kernel family consults this record; FWPCore reads it through KernelDispatch.
#ifndef FWP_DISPATCH_H
#define FWP_DISPATCH_H

#ifdef __cplusplus
extern "C" {
#endif

/// The process's kernel choices (1 yes, 0 no), fixed at the first call of fwp_dispatch().
typedef struct fwp_dispatch_record {
    /// The widest x86-64 vector extension this CPU and OS support: 3 for AVX-512 (F, CD, BW, DQ,
    /// VL) with AVX2 and FMA, 2 for AVX2 with FMA, 1 for AVX, 0 otherwise (and off x86-64).
    int vector_level;
    /// The AVX-512 versions of the kernels run (level 3, and FWP_AVX512 is not "0").
    int avx512;
    /// Small products go to fwp_small_sgemm_* (level ≥ 2, and FWP_SMALL_GEMM is not "0").
    int small_gemm;
    /// The layers' products go to fwp_dense_sgemm* (avx512, and FWP_DENSE_GEMM is not "0").
    int dense_gemm;
    /// Element-wise rows and the chunkwise loops run in C (level ≥ 2, and FWP_VECTOR_KERNELS is not "0").
    int vector_kernels;
    /// FWP_AMX is "1": the dense kernel runs on AMX tiles where the CPU and OS provide them.
    int amx_requested;
    /// FWP_POISON_UNINITIALIZED is "1": buffers left uninitialised start as NaN (tests).
    int poison_uninitialized;
} fwp_dispatch_record;

/// The record, read on the first call (thread-safe) and the same afterwards.
const fwp_dispatch_record *fwp_dispatch(void);

/// fwp_dispatch()->vector_level.
int fwp_cpu_vector_level(void);

/// 1 when this CPU can run the small product kernel (vector level ≥ 2), whatever the switches say.
int fwp_small_sgemm_supported(void);

/// 1 when this CPU can run the element-wise kernels (vector level ≥ 2), whatever the switches say.
int fwp_vector_kernels_supported(void);

/// fwp_dispatch()->avx512: the small kernel and the element-wise kernels use their AVX-512 versions.
int fwp_small_sgemm_uses_avx512(void);

/// 1 when this CPU can run fwp_dense_sgemm (vector level 3), whatever the switches say.
int fwp_dense_sgemm_supported(void);

#ifdef __cplusplus
}
#endif

#endif
