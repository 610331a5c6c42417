import CKernels
import Foundation

/// The AVX2/FMA element-wise kernels in CKernels (ELU + 1, ELU + 1 with sum normalisation fused,
/// the sigmoid) and the switch that chooses them over the portable Swift loops in `Vec`.
///
/// Swift compiles the package for baseline x86-64, where `SIMD8<Float>` becomes pairs of SSE
/// operations and every masked select several instructions; these loops are exp-heavy, so the C
/// versions, compiled for AVX2/FMA and chosen at run time, are several times faster. Both versions
/// compute the same functions to float32 rounding; they are not bit-identical (FMA).
public enum VectorKernels {
    /// Whether this CPU can run the C kernels (AVX2 and FMA).
    public static let supported: Bool = KernelDispatch.vectorKernelsSupported

    /// Whether FWPCore uses them: `supported` unless the environment sets `FWP_VECTOR_KERNELS=0`.
    public static let enabled: Bool = KernelDispatch.vectorKernels

    /// ELU + 1 of n floats (`native` picks the C kernel; it must be `supported`).
    static func eluPlusOne(
        _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int, native: Bool = enabled
    ) {
        if native {
            precondition(supported, "the vector kernels need AVX2 and FMA")
            fwp_elu_plus_one(x, y, n)
        } else {
            Vec.eluPlusOne(x, y, n)
        }
    }

    /// σ(x) of n floats.
    static func sigmoid(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int, native: Bool = enabled) {
        if native {
            precondition(supported, "the vector kernels need AVX2 and FMA")
            fwp_sigmoid(x, y, n)
        } else {
            for i in 0..<n { y[i] = 1 / (1 + expf(-x[i])) }
        }
    }
}

extension SumNormalization {
    /// ELU + 1 followed by sum normalisation, in one pass over x when the vector kernels are on:
    /// φ = elu(x) + 1, y = φ / (Σ φ + ε) row-wise — the same as `FeatureMap.forward` then
    /// `forward`. Returns y, each row's denominator and, on the Swift path only, φ (the C path's
    /// backward needs only y and the sums, since φ = y·s and ELU + 1's derivative is min(φ, 1);
    /// there φ is an empty tensor).
    public static func eluPlusOneForward(
        _ x: Tensor, threads: ComputeThreads = ComputeThreads(1), native: Bool = VectorKernels.enabled
    ) -> (phi: Tensor, y: Tensor, sums: [Float]) {
        guard native else {
            let phi = FeatureMap(.eluPlusOne, inputSize: x.columns).forward(x, threads: threads)
            let (y, sums) = forward(phi, threads: threads)
            return (phi, y, sums)
        }
        precondition(VectorKernels.supported, "the vector kernels need AVX2 and FMA")
        let n = x.columns
        var y = Tensor(uninitializedShape: x.shape)  // every row written
        var sums = UninitializedMemory.floats(x.rows)
        x.withUnsafePointer { px in
            y.withUnsafeMutablePointer { py in
                sums.withUnsafeMutableBufferPointer { ps in
                    let s = SharedPointer(ps.baseAddress!)
                    threads.forEachRowRange(x.rows) { r in
                        let o = r.lowerBound * n
                        fwp_elu_plus_one_sum_normalize(px + o, py + o, s.base + r.lowerBound, r.count, n, epsilon)
                    }
                }
            }
        }
        return (Tensor(shape: [0, n]), y, sums)
    }

    /// The gradient of `eluPlusOneForward` with respect to x, given dL/dy (`phi` as that
    /// returned it; the C path reads only y and the sums).
    public static func eluPlusOneBackward(
        _ dy: Tensor, input x: Tensor, phi: Tensor, output y: Tensor, sums: [Float],
        threads: ComputeThreads = ComputeThreads(1), native: Bool = VectorKernels.enabled
    ) -> Tensor {
        guard native else {
            precondition(phi.count == x.count, "the Swift path needs φ from the Swift forward")
            let dphi = backward(dy, output: y, sums: sums, threads: threads)
            return FeatureMap(.eluPlusOne, inputSize: x.columns).backward(
                dphi, input: x, output: phi, threads: threads)
        }
        precondition(VectorKernels.supported, "the vector kernels need AVX2 and FMA")
        let n = y.columns
        var dx = Tensor(uninitializedShape: dy.shape)  // every row written
        dy.withUnsafePointer { pg in
            y.withUnsafePointer { py in
                dx.withUnsafeMutablePointer { pd in
                    sums.withUnsafeBufferPointer { ps in
                        threads.forEachRowRange(y.rows) { r in
                            let o = r.lowerBound * n
                            fwp_elu_plus_one_sum_normalize_backward(
                                pg + o, py + o, ps.baseAddress! + r.lowerBound, pd + o, r.count, n)
                        }
                    }
                }
            }
        }
        return dx
    }
}
