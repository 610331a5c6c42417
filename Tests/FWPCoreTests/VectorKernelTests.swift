import Foundation
import Testing

@testable import FWPCore

/// The SIMD exponential and the element-wise maps built on it, against Foundation's double
/// precision `exp` and plain scalar loops.
@Suite struct VectorKernelTests {
    @Test func exp8MatchesDoublePrecisionExp() {
        var worst = 0.0
        var x: Float = -87
        while x < 88.5 {
            var v = SIMD8<Float>()
            for k in 0..<8 { v[k] = x + Float(k) * 0.0137 }
            let e = Vec.exp8(v)
            for k in 0..<8 {
                let exact = Foundation.exp(Double(v[k]))
                worst = max(worst, abs(Double(e[k]) - exact) / exact)
            }
            x += 0.173
        }
        #expect(worst < 3e-7, "worst relative error \(worst)")
        let edge = Vec.exp8(SIMD8(-200, -87.5, 0, 1e-9, 88.8, .infinity, -.infinity, .nan))
        #expect(edge[0] == 0 && edge[1] == 0 && edge[2] == 1 && edge[3] == 1)
        #expect(edge[4] == .infinity && edge[5] == .infinity && edge[6] == 0 && edge[7].isNaN)
    }

    @Test func expShiftedAndMaximumHandleEveryLength() {
        var rng = FWPRandom(seed: 3)
        for n in [1, 3, 7, 8, 9, 16, 31, 256, 257] {
            let src = UnsafeMutablePointer<Float>.allocate(capacity: n)
            let dst = UnsafeMutablePointer<Float>.allocate(capacity: n)
            defer {
                src.deallocate()
                dst.deallocate()
            }
            for i in 0..<n { src[i] = Float(rng.uniform() * 20 - 10) }
            let m = Vec.maximum(src, n)
            #expect(m == (0..<n).map { src[$0] }.max()!)
            let sum = Vec.expShifted(src, dst, n, shift: m)
            var exactSum = 0.0
            for i in 0..<n {
                let exact = Foundation.exp(Double(src[i] - m))
                exactSum += exact
                #expect(abs(Double(dst[i]) - exact) <= 3e-7 * exact, "n=\(n) i=\(i)")
            }
            #expect(abs(Double(sum) - exactSum) <= 1e-6 * exactSum)
        }
    }

    @Test func reluAndEluMatchScalarDefinitions() {
        let n = 37
        let src = UnsafeMutablePointer<Float>.allocate(capacity: n)
        let dst = UnsafeMutablePointer<Float>.allocate(capacity: n)
        let g = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer {
            src.deallocate()
            dst.deallocate()
            g.deallocate()
        }
        for i in 0..<n { src[i] = Float(i - 18) * 0.37 }
        Vec.eluPlusOne(src, dst, n)
        for i in 0..<n {
            let v = Double(src[i])
            let exact = v > 0 ? v + 1 : Foundation.exp(v)
            #expect(abs(Double(dst[i]) - exact) <= 3e-7 * exact)
        }
        let dx = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { dx.deallocate() }
        for i in 0..<n { g[i] = Float(i % 5) - 2 }
        Vec.eluPlusOneBackward(g, input: src, output: dst, into: dx, n)
        for i in 0..<n { #expect(dx[i] == (src[i] > 0 ? g[i] : g[i] * dst[i])) }
        let bias = (0..<n).map { Float($0 % 3) * 0.5 - 0.5 }
        for i in 0..<n {
            dst[i] = src[i]
            g[i] = 1
        }
        Vec.addBiasRelu(dst, bias: bias, rows: 1, n)
        Vec.reluBackward(g, output: dst, n)
        for i in 0..<n {
            #expect(dst[i] == max(src[i] + bias[i], 0))
            #expect(g[i] == (src[i] + bias[i] > 0 ? 1 : 0))
        }
    }
}
