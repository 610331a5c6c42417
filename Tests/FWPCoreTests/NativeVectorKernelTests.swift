import CKernels
import Foundation
import Testing

@testable import FWPCore

/// The AVX2/FMA element-wise kernels in CKernels against float64 definitions (and, for the fused
/// ELU + 1 with sum normalisation, against central finite differences of a float64 forward).
/// Skipped on CPUs without AVX2/FMA, where FWPCore never calls them.
@Suite(.enabled(if: VectorKernels.supported, "needs AVX2 and FMA"))
struct NativeVectorKernelTests {
    static func elu1(_ x: Double) -> Double { x > 0 ? x + 1 : Foundation.exp(x) }

    /// Softmax cross-entropy rows against float64: the loss (log Σ e^x − x_target, summed and
    /// divided by the count) and the gradient scale · (softmax − onehot); rows with a negative
    /// target are not counted and get a zero gradient; widths around the 8- and 16-lane blocks.
    @Test func crossEntropyMatchesDoublePrecision() {
        var rng = FWPRandom(seed: 5)
        for width in [1, 3, 8, 15, 16, 17, 40, 256, 257] {
            let rows = 6
            // all-negative logits for some rows (the maximum must not come from padding lanes)
            let x = (0..<(rows * width)).map { i in Float(rng.normal() * 6) - (i / width == 2 ? 50 : 0) }
            let targets = (0..<rows).map { r in r == 4 ? -1 : Int(rng.next() % UInt64(width)) }
            let logits = Tensor(shape: [rows, width], storage: x)
            let (loss, grad) = CrossEntropy.lossAndGradient(
                logits: logits, targets: targets, normalizer: 7, native: true)
            var total = 0.0
            for r in 0..<rows {
                let row = x[(r * width)..<((r + 1) * width)].map(Double.init)
                let m = row.max()!, sum = row.map { Foundation.exp($0 - m) }.reduce(0, +)
                for j in 0..<width {
                    let g = Double(grad.storage[r * width + j])
                    guard targets[r] >= 0 else {
                        #expect(g == 0, "ignored row \(r) has gradient")
                        continue
                    }
                    let expected = (Foundation.exp(row[j] - m) / sum - (j == targets[r] ? 1 : 0)) / 7
                    // p − 1 at the target cancels: a float rounding unit of the scale (1/7) on top.
                    #expect(abs(g - expected) <= 2e-6 * abs(expected) + 2e-8, "width \(width) row \(r) column \(j)")
                }
                if targets[r] >= 0 { total += Foundation.log(sum) + m - row[targets[r]] }
            }
            #expect(
                abs(loss - total / 7) <= 1e-5 * abs(total / 7) + 1e-6,
                "width \(width): loss \(loss), expected \(total / 7)")
        }
        // NaN logits give a NaN loss.
        let (nanLoss, _) = CrossEntropy.lossAndGradient(
            logits: Tensor(shape: [1, 20], storage: (0..<20).map { $0 == 7 ? .nan : Float($0) }), targets: [3],
            native: true)
        #expect(nanLoss.isNaN)
    }

    /// One causal softmax row: float64 softmax over the valid prefix (spread of 60 so that small
    /// probabilities underflow towards 0), zeros after it, nothing written past them; NaN spreads.
    @Test func softmaxRowMatchesDoublePrecision() {
        var rng = FWPRandom(seed: 21)
        for valid in [1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200] {
            for zeros in [0, 1, 9] {
                let x = (0..<valid).map { _ in Float(rng.normal() * 20) }
                var row = x + [Float](repeating: 5, count: zeros) + [-3]  // a guard element at the end
                CKernels.fwp_softmax_row(&row, valid, zeros)
                let m = Double(x.max()!)
                let e = x.map { Foundation.exp(Double($0) - m) }
                let sum = e.reduce(0, +)
                for i in 0..<valid {
                    // x − max is rounded to float first: relative error up to its rounding (|x|
                    // + |max| ulps), plus the polynomial's; results below the smallest normal
                    // float may be 0.
                    let p = e[i] / sum, relative = 1e-6 + 1.2e-7 * (abs(Double(x[i])) + abs(m))
                    #expect(abs(Double(row[i]) - p) <= relative * p + 1.2e-38, "valid \(valid) i \(i)")
                }
                for i in valid..<(valid + zeros) { #expect(row[i] == 0) }
                #expect(row[valid + zeros] == -3, "wrote past the end at \(valid), \(zeros)")
            }
        }
        var row: [Float] = [1, 2, .nan, 3, 4, 5, 6, 7, 8, 9]
        CKernels.fwp_softmax_row(&row, 10, 0)
        #expect(row.filter { !$0.isNaN }.isEmpty)
    }

    /// Softmax's row backward against float64: d ← p ⊙ (d − p·d) · scale on the valid prefix,
    /// zeros after it, nothing written past them.
    @Test func softmaxRowBackwardMatchesDoublePrecision() {
        var rng = FWPRandom(seed: 22)
        for valid in [1, 7, 8, 9, 31, 64, 65, 130] {
            for zeros in [0, 3, 17] {
                let p = (0..<valid).map { _ in Float(rng.uniform()) }
                let d0 = (0..<valid).map { _ in Float(rng.normal()) }
                var d = d0 + [Float](repeating: 4, count: zeros) + [-3]
                CKernels.fwp_softmax_row_backward(p, &d, valid, zeros, 0.125)
                let c = zip(p, d0).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
                let bound = zip(p, d0).reduce(0.0) { $0 + abs(Double($1.0) * Double($1.1)) }
                for i in 0..<valid {
                    let exact = Double(p[i]) * (Double(d0[i]) - c) * 0.125
                    let tolerance = 1e-6 * Double(p[i]) * (abs(Double(d0[i])) + bound) * 0.125 + 1e-30
                    #expect(abs(Double(d[i]) - exact) <= tolerance, "valid \(valid) i \(i)")
                }
                for i in valid..<(valid + zeros) { #expect(d[i] == 0) }
                #expect(d[valid + zeros] == -3, "wrote past the end at \(valid), \(zeros)")
            }
        }
    }

    /// The online softmax's exponentials: e^(x − shift) in place and their sum, against float64;
    /// nothing written past the row; NaN kept.
    @Test func expShiftedSumMatchesDoublePrecision() {
        var rng = FWPRandom(seed: 23)
        for n in [1, 7, 8, 9, 17, 64, 65] {
            let x = (0..<n).map { _ in Float(rng.normal() * 10) }
            let shift = x.max()! + Float(rng.uniform())
            var row = x + [-3]
            let sum = CKernels.fwp_exp_shifted_sum(&row, n, shift)
            var exactSum = 0.0
            for i in 0..<n {
                let e = Foundation.exp(Double(x[i]) - Double(shift))
                exactSum += e
                let relative = 1e-6 + 1.2e-7 * (abs(Double(x[i])) + abs(Double(shift)))
                #expect(abs(Double(row[i]) - e) <= relative * e + 1.2e-38, "n \(n) i \(i)")
            }
            #expect(abs(Double(sum) - exactSum) <= 1e-5 * exactSum, "n \(n): sum \(sum) vs \(exactSum)")
            #expect(row[n] == -3, "wrote past the end at \(n)")
        }
        var row: [Float] = [1, .nan, 0]
        #expect(CKernels.fwp_exp_shifted_sum(&row, 3, 2).isNaN)
        #expect(row[1].isNaN)
    }

    /// The online softmax's row backward against float64: p ← e^(s − lse), d ← p (d − c) · scale.
    @Test func softmaxScoresBackwardMatchesDoublePrecision() {
        var rng = FWPRandom(seed: 24)
        for n in [1, 7, 8, 9, 31, 64, 65] {
            let s = (0..<n).map { _ in Float(rng.normal() * 3) }
            let d0 = (0..<n).map { _ in Float(rng.normal()) }
            let lse = s.max()! + 1.5, c: Float = 0.25
            var p = s + [-3], d = d0 + [-3]
            CKernels.fwp_softmax_scores_backward(&p, &d, n, lse, c, 0.125)
            for i in 0..<n {
                let e = Foundation.exp(Double(s[i]) - Double(lse))
                #expect(abs(Double(p[i]) - e) <= 2e-6 * e, "n \(n) i \(i)")
                let g = e * (Double(d0[i]) - Double(c)) * 0.125
                #expect(
                    abs(Double(d[i]) - g) <= 3e-6 * e * (abs(Double(d0[i])) + 0.25) * 0.125 + 1e-30, "n \(n) i \(i)")
            }
            #expect(p[n] == -3 && d[n] == -3, "wrote past the end at \(n)")
        }
    }

    @Test func eluPlusOneMatchesDoublePrecision() {
        var xs: [Float] = [-200, -88, -87.5, -87.3, -20, -1e-7, 0, 1e-7, 1, 50, .infinity, -.infinity, .nan]
        var x: Float = -90
        while x < 5 {
            xs.append(x)
            x += 0.0371
        }
        for n in [xs.count, 1, 7, 8, 9] {
            var y = [Float](repeating: -1, count: n + 1)  // one guard element after the n
            fwpEluPlusOne(xs, &y, n)
            for i in 0..<n {
                let v = xs[i]
                if v.isNaN {
                    #expect(y[i].isNaN)
                    continue
                }
                let exact = Self.elu1(Double(v))
                if exact.isInfinite {
                    #expect(y[i] == .infinity)
                } else if exact < 1.2e-38 {
                    // Below the smallest normal float the kernel returns 0 (like the Swift path).
                    #expect(y[i] == 0 || abs(Double(y[i]) - exact) <= 1.2e-38, "x=\(v) y=\(y[i])")
                } else {
                    #expect(abs(Double(y[i]) - exact) <= 2.5e-7 * exact, "x=\(v) y=\(y[i]) exact=\(exact)")
                }
            }
            #expect(y[n] == -1, "wrote past the end at n=\(n)")
        }
    }

    @Test func sigmoidMatchesDoublePrecisionWithoutOverflow() {
        var xs: [Float] = [-1000, -104, -88, -87.3, -30, 0, -0.0, 30, 88, 104, 1000, .infinity, -.infinity, .nan]
        var x: Float = -20
        while x < 20 {
            xs.append(x)
            x += 0.0517
        }
        var y = [Float](repeating: -1, count: xs.count + 1)
        VectorKernels.sigmoid(xs, &y, xs.count, native: true)
        for (i, v) in xs.enumerated() {
            if v.isNaN {
                #expect(y[i].isNaN)
                continue
            }
            let exact = 1 / (1 + Foundation.exp(-Double(v)))
            #expect(y[i].isFinite && y[i] >= 0 && y[i] <= 1, "x=\(v) y=\(y[i])")
            #expect(abs(Double(y[i]) - exact) <= max(3e-7 * exact, 1e-38), "x=\(v) y=\(y[i]) exact=\(exact)")
        }
        #expect(y[xs.count] == -1)
    }

    /// float64 forward of ELU + 1 then sum normalisation for one row.
    static func reference(_ x: [Double]) -> (phi: [Double], y: [Double], sum: Double) {
        let phi = x.map(elu1)
        let s = phi.reduce(0, +) + Double(SumNormalization.epsilon)
        return (phi, phi.map { $0 / s }, s)
    }

    /// Widths up to 64 run the AVX-512 register path (where the CPU has it), wider ones the loop.
    @Test(arguments: [1, 5, 8, 13, 17, 33, 48, 64, 65, 96])
    func fusedEluSumNormalisationForwardAndBackward(columns n: Int) {
        var rng = FWPRandom(seed: UInt64(n))
        let rows = 9
        let x = Tensor.normal(shape: [rows, n], std: 1.5, using: &rng)
        let dy = Tensor.normal(shape: [rows, n], std: 1, using: &rng)
        let (phi, y, sums) = SumNormalization.eluPlusOneForward(x, threads: ComputeThreads(3), native: true)
        let dx = SumNormalization.eluPlusOneBackward(
            dy, input: x, phi: phi, output: y, sums: sums, threads: ComputeThreads(3), native: true)
        var worstForward = 0.0, worstGradient = 0.0
        for r in 0..<rows {
            let xr = (0..<n).map { Double(x[r, $0]) }
            let ref = Self.reference(xr)
            worstForward = max(worstForward, abs(Double(sums[r]) - ref.sum) / ref.sum)
            for i in 0..<n {
                worstForward = max(worstForward, abs(Double(y[r, i]) - ref.y[i]) / ref.y[i])
                // dL/dx_i with L = Σ_j dy_j y_j, by central differences of the float64 forward.
                let h = 1e-6
                var plus = xr, minus = xr
                plus[i] += h
                minus[i] -= h
                let yp = Self.reference(plus).y, ym = Self.reference(minus).y
                let fd = (0..<n).reduce(0.0) { $0 + Double(dy[r, $1]) * (yp[$1] - ym[$1]) } / (2 * h)
                // The gradient is a difference of terms of this size (dy_i and dy·y, over the
                // sum, times ELU's slope); float32 can only be asked for relative accuracy to it.
                let terms =
                    (abs(Double(dy[r, i])) + (0..<n).reduce(0.0) { $0 + abs(Double(dy[r, $1])) * ref.y[$1] })
                    / ref.sum * (xr[i] > 0 ? 1 : ref.phi[i])
                worstGradient = max(worstGradient, abs(Double(dx[r, i]) - fd) / max(abs(fd), terms))
            }
        }
        #expect(worstForward < 1e-6, "forward relative error \(worstForward)")
        #expect(worstGradient < 1e-4, "gradient error \(worstGradient)")
    }

    @Test func fusedPathAgreesWithTheSeparateSwiftPasses() {
        var rng = FWPRandom(seed: 11)
        let x = Tensor.normal(shape: [300, 64], std: 2, using: &rng)
        let dy = Tensor.normal(shape: [300, 64], std: 1, using: &rng)
        let fused = SumNormalization.eluPlusOneForward(x, threads: ComputeThreads(2), native: true)
        let swift = SumNormalization.eluPlusOneForward(x, threads: ComputeThreads(2), native: false)
        let dFused = SumNormalization.eluPlusOneBackward(
            dy, input: x, phi: fused.phi, output: fused.y, sums: fused.sums, native: true)
        let dSwift = SumNormalization.eluPlusOneBackward(
            dy, input: x, phi: swift.phi, output: swift.y, sums: swift.sums, native: false)
        var worst: Float = 0
        #expect(fused.phi.count == 0, "the C path keeps no φ")
        for i in 0..<x.count {
            worst = max(worst, abs(fused.y.storage[i] - swift.y.storage[i]) / abs(swift.y.storage[i]))
            worst = max(worst, abs(dFused.storage[i] - dSwift.storage[i]) / max(abs(dSwift.storage[i]), 1e-3))
        }
        #expect(worst < 2e-6, "worst relative difference \(worst)")
    }

    @Test(arguments: [6, 100, 128, 131]) func layerNormAgreesWithTheSwiftLoops(dimension n: Int) {
        var store = ParameterStore()
        let ln = LayerNorm("ln", dimension: n, store: &store)
        var rng = FWPRandom(seed: UInt64(n))
        store.values[ln.weight] = Tensor.normal(shape: [n], std: 1, using: &rng)
        store.values[ln.bias] = Tensor.normal(shape: [n], std: 1, using: &rng)
        // Rows with a large common offset: a one-pass variance would lose digits there.
        var x = Tensor.normal(shape: [33, n], std: 2, using: &rng)
        for i in 0..<x.count { x.storage[i] += 300 }
        let dy = Tensor.normal(shape: [33, n], std: 1, using: &rng)
        let (yC, cacheC) = ln.forward(x, store, native: true)
        let (yS, cacheS) = ln.forward(x, store, native: false)
        // Gradients accumulate onto what is already there.
        var gC = store.zerosLike(), gS = store.zerosLike()
        for g in [ln.weight, ln.bias] {
            for j in 0..<n {
                gC.values[g].storage[j] = Float(j) * 0.25
                gS.values[g].storage[j] = Float(j) * 0.25
            }
        }
        let dxC = ln.backward(dy, cache: cacheC, store, &gC, native: true)
        let dxS = ln.backward(dy, cache: cacheS, store, &gS, native: false)
        func worst(_ a: Tensor, _ b: Tensor) -> Float {
            let scale = b.storage.map(abs).max()!
            return zip(a.storage, b.storage).map { abs($0 - $1) }.max()! / scale
        }
        // The forward against float64 (x is ~300 ± 2, so float32 itself carries ~1e-5 of σ; a
        // one-pass variance would be off by ~1e-3).
        var worstForward = 0.0
        for r in 0..<x.rows {
            let row = (0..<n).map { Double(x[r, $0]) }
            let mean = row.reduce(0, +) / Double(n)
            let variance = row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n)
            let rstd = 1 / (variance + Double(LayerNorm.epsilon)).squareRoot()
            worstForward = max(worstForward, abs(Double(cacheC.inverseStd[r]) - rstd) / rstd)
            for j in 0..<n {
                let h = (row[j] - mean) * rstd
                let y = h * Double(store.values[ln.weight][j]) + Double(store.values[ln.bias][j])
                worstForward = max(worstForward, abs(Double(cacheC.normalized[r, j]) - h) / 3)
                worstForward = max(worstForward, abs(Double(yC[r, j]) - y) / 3)
            }
        }
        #expect(worstForward < 1e-4, "forward error \(worstForward)")
        #expect(worst(yC, yS) < 1e-4, "y")
        #expect(worst(dxC, dxS) < 1e-4, "dx")
        #expect(worst(gC.values[ln.weight], gS.values[ln.weight]) < 1e-4, "dγ")
        #expect(worst(gC.values[ln.bias], gS.values[ln.bias]) < 1e-5, "dβ")
    }

    /// The fused ReLU gradient + fc1 bias sums against the separate Swift passes, at a width with
    /// a partial vector: the same masked values and the same row-by-row sums, so exactly equal.
    @Test(arguments: [13, 64]) func feedForwardBackwardAgreesWithTheSwiftPasses(hidden: Int) {
        var store = ParameterStore()
        var rng = FWPRandom(seed: 21)
        let ff = FeedForward("ff", dimension: 6, hidden: hidden, std: 0.5, outputStd: 0.5, store: &store, rng: &rng)
        store.values[ff.fc1.bias!] = .normal(shape: [hidden], std: 0.3, using: &rng)
        let x = Tensor.normal(shape: [9, 6], std: 1, using: &rng),
            dy = Tensor.normal(shape: [9, 6], std: 1, using: &rng)
        let (_, cache) = ff.forward(x, store)
        var gC = store.zerosLike(), gS = store.zerosLike()
        let dxC = ff.backward(dy, cache: cache, store, &gC, native: true)
        let dxS = ff.backward(dy, cache: cache, store, &gS, native: false)
        #expect(dxC == dxS)
        #expect(gC == gS)
        #expect(gC.values[ff.fc1.bias!].storage.contains { $0 != 0 })
    }

    /// With enough rows for the dense kernel (where the CPU has it), the ReLU backward and fc1's
    /// bias gradient come from the gated product: the same gradients to float32 rounding.
    @Test func feedForwardBackwardOnTheDenseKernelAgreesWithTheSwiftPasses() {
        var store = ParameterStore()
        var rng = FWPRandom(seed: 22)
        let ff = FeedForward("ff", dimension: 20, hidden: 300, std: 0.5, outputStd: 0.5, store: &store, rng: &rng)
        store.values[ff.fc1.bias!] = .normal(shape: [300], std: 0.3, using: &rng)
        let x = Tensor.normal(shape: [64, 20], std: 1, using: &rng),
            dy = Tensor.normal(shape: [64, 20], std: 1, using: &rng)
        let (_, cache) = ff.forward(x, store)
        var gC = store.zerosLike(), gS = store.zerosLike()
        let dxC = ff.backward(dy, cache: cache, store, &gC, native: true)
        let dxS = ff.backward(dy, cache: cache, store, &gS, native: false)
        func close(_ a: Tensor, _ b: Tensor) -> Bool {
            let scale = b.storage.map { abs($0) }.max()! + 1e-6
            return zip(a.storage, b.storage).allSatisfy { abs($0 - $1) <= 1e-5 * scale }
        }
        #expect(close(dxC, dxS))
        for i in gS.values.indices { #expect(close(gC.values[i], gS.values[i]), "\(gS.names[i])") }
        #expect(gC.values[ff.fc1.bias!].storage.contains { $0 != 0 })
    }

    private func fwpEluPlusOne(_ x: [Float], _ y: inout [Float], _ n: Int) {
        x.withUnsafeBufferPointer { px in
            y.withUnsafeMutableBufferPointer {
                VectorKernels.eluPlusOne(px.baseAddress!, $0.baseAddress!, n, native: true)
            }
        }
    }
}
