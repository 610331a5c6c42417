import CKernels

/// Which kernel family runs: the Swift face of CKernels' dispatch record (`fwp_dispatch`), which
/// reads the CPU's vector extensions and the `FWP_*` switches once per process.
///
/// `BLAS` and `VectorKernels` consult only this; the C kernels consult the same record, so a
/// switch means the same to both. docs/PERFORMANCE.md lists the switches, docs/ARCHITECTURE.md
/// ("Flow 3: kernel dispatch") which function each family calls.
public enum KernelDispatch {
    private static let record = fwp_dispatch().pointee

    /// The widest vector extension of this CPU and OS: 3 AVX-512, 2 AVX2 + FMA, 1 AVX, 0 none.
    public static let vectorLevel = Int(record.vector_level)

    /// Whether the AVX-512 versions of the kernels run (AVX-512, and `FWP_AVX512` is not `0`).
    public static let avx512 = record.avx512 != 0

    /// Whether this CPU can run the small product kernel (AVX2 + FMA), whatever the switches say.
    public static let smallGemmSupported = vectorLevel >= 2

    /// Whether small products go to the small kernel (AVX2 + FMA, and `FWP_SMALL_GEMM` is not `0`).
    public static let smallGemm = record.small_gemm != 0

    /// Whether this CPU can run the dense kernel (AVX-512), whatever the switches say.
    public static let denseGemmSupported = vectorLevel >= 3

    /// Whether the layers' products go to the dense kernel (`avx512`, and `FWP_DENSE_GEMM` is not `0`).
    public static let denseGemm = record.dense_gemm != 0

    /// Whether this CPU can run the element-wise C kernels (AVX2 + FMA), whatever the switches say.
    public static let vectorKernelsSupported = vectorLevel >= 2

    /// Whether element-wise rows and the chunkwise loops run in C (AVX2 + FMA, and
    /// `FWP_VECTOR_KERNELS` is not `0`); otherwise the Swift reference loops run.
    public static let vectorKernels = record.vector_kernels != 0

    /// Whether `FWP_AMX=1` asked for the dense kernel on AMX tiles (`BLAS.denseAMX` says whether
    /// this CPU and OS provide them).
    public static let amxRequested = record.amx_requested != 0

    /// Whether `FWP_POISON_UNINITIALIZED=1` asked for uninitialised buffers to start as NaN.
    public static let poisonUninitialized = record.poison_uninitialized != 0
}
