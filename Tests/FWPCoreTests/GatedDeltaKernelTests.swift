import Foundation
import Testing

@testable import FWPCore

/// The gated delta rule's two forms against each other, and the recurrence against finite
/// differences; the float64 reference check is in ReferenceFixtureTests.
@Suite struct GatedDeltaKernelTests {
    /// One head's inputs stored as the model stores them: rows of two heads side by side (this
    /// head's at offset 0), so that every stride differs from the row size.
    struct Inputs {
        var steps: Int, dk: Int, dv: Int
        var q: [Float], k: [Float], v: [Float], beta: [Float], logDecay: [Float], w0: [Float]
        var keyStride: Int { 2 * dk }
        var valueStride: Int { 2 * dv }

        init(steps: Int, dk: Int = 5, dv: Int = 4, seed: UInt64, strongDecay: Bool = false, keyNorm: Float = 1) {
            (self.steps, self.dk, self.dv) = (steps, dk, dv)
            var rng = FWPRandom(seed: seed)
            func normals(_ n: Int, _ rng: inout FWPRandom) -> [Float] {
                var out = [Float]()
                for _ in 0..<n { out.append(Float(rng.normal())) }
                return out
            }
            q = normals(steps * 2 * dk, &rng)
            var k = normals(steps * 2 * dk, &rng)
            // Unit keys, as the l2 normalisation gives (the rule is contractive then).
            for t in 0..<steps {
                let row = t * 2 * dk
                let n = (0..<dk).reduce(Float(0)) { $0 + k[row + $1] * k[row + $1] }.squareRoot()
                for i in 0..<dk { k[row + i] *= keyNorm / n }
            }
            self.k = k
            v = normals(steps * 2 * dv, &rng)
            beta = normals(steps * 2, &rng).map { 1 / (1 + expf(-$0)) }
            // Decays from α ≈ 1 − 1e-4 to α ≈ 0.05, and with `strongDecay` some α ≈ e^{-30}.
            var decays = [Float]()
            for i in 0..<(steps * 2) {
                let u = Float(rng.next() % 1000) / 1000
                decays.append(strongDecay && i % 7 == 3 ? -30 : i % 5 == 0 ? -1e-4 : -3 * u)
            }
            logDecay = decays
            w0 = normals(dv * dk, &rng).map { 0.5 * $0 }
        }

        func kernel(chunk: Int) -> GatedDeltaKernel {
            GatedDeltaKernel(
                steps: steps, keySize: dk, valueSize: dv, keyStride: keyStride, valueStride: valueStride,
                gateStride: 2, chunkSize: chunk)
        }
    }

    struct Outputs {
        var y: [Float], w: [Float]
        var dq: [Float], dk: [Float], dv: [Float], dbeta: [Float], dlogDecay: [Float], dw0: [Float]
    }

    /// Runs one form forward and backward (with dy and the seeded final-state gradient dwEnd).
    static func run(_ x: Inputs, chunk: Int, chunkwise: Bool, dy: [Float], dwEnd: [Float]) -> Outputs {
        let kern = x.kernel(chunk: chunk)
        var y = [Float](repeating: .nan, count: x.steps * x.valueStride), w = x.w0
        var saved = [Float](
            repeating: .nan, count: chunkwise ? kern.chunkwiseSavedCount : kern.recurrentSavedCount)
        var scratch = [Float](
            repeating: .nan, count: max(kern.chunkwiseScratchCount, kern.recurrentScratchCount))
        if chunkwise {
            kern.forwardChunkwise(
                q: x.q, k: x.k, v: x.v, beta: x.beta, logDecay: x.logDecay, y: &y, w: &w, saved: &saved,
                scratch: &scratch)
        } else {
            kern.forwardRecurrent(
                q: x.q, k: x.k, v: x.v, beta: x.beta, logDecay: x.logDecay, y: &y, w: &w, saved: &saved)
        }
        var dq = [Float](repeating: 0, count: x.q.count), dk = dq
        var dv = [Float](repeating: 0, count: x.v.count)
        var db = [Float](repeating: 0, count: x.beta.count), dla = db
        var dw = dwEnd
        if chunkwise {
            kern.backwardChunkwise(
                dy: dy, q: x.q, k: x.k, beta: x.beta, saved: saved, dw: &dw, scratch: &scratch, dq: &dq, dk: &dk,
                dv: &dv, dbeta: &db, dlogDecay: &dla, seeded: true)
        } else {
            kern.backwardRecurrent(
                dy: dy, q: x.q, k: x.k, v: x.v, beta: x.beta, logDecay: x.logDecay, saved: saved, dw: &dw,
                scratch: &scratch, dq: &dq, dk: &dk, dv: &dv, dbeta: &db, dlogDecay: &dla, seeded: true)
        }
        // Only this head's columns are results; the other head's must be untouched.
        func mine(_ a: [Float], _ width: Int) -> [Float] {
            (0..<x.steps).flatMap { t in a[(t * 2 * width)..<(t * 2 * width + width)] }
        }
        let yMine = mine(y, x.dv)
        for t in 0..<x.steps {
            #expect(y[(t * 2 + 1) * x.dv..<(t * 2 + 2) * x.dv].allSatisfy { $0.isNaN }, "wrote another head's y")
        }
        return Outputs(
            y: yMine, w: w, dq: mine(dq, x.dk), dk: mine(dk, x.dk), dv: mine(dv, x.dv),
            dbeta: mine(db, 1), dlogDecay: mine(dla, 1), dw0: dw)
    }

    static func relativeError(_ a: [Float], _ b: [Float], floor: Float = 1e-2) -> Float {
        precondition(a.count == b.count)
        let scale = max(b.map(abs).max() ?? 0, floor)
        return zip(a, b).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
    }

    /// The chunkwise form's outputs, final state and every gradient equal the recurrence's, for
    /// lengths that are and are not multiples of the chunk, decays from ≈1 to e^{-30}.
    @Test(arguments: [(1, 4), (7, 4), (16, 16), (37, 8), (64, 16)])
    func chunkwiseMatchesRecurrence(_ shape: (Int, Int)) {
        let (steps, chunk) = shape
        for strong in [false, true] {
            let x = Inputs(steps: steps, seed: UInt64(steps * 10 + chunk), strongDecay: strong)
            var rng = FWPRandom(seed: 77)
            let dy = (0..<(steps * x.valueStride)).map { _ in Float(rng.normal()) }
            let dwEnd = (0..<(x.dv * x.dk)).map { _ in Float(rng.normal()) }
            let r = Self.run(x, chunk: chunk, chunkwise: false, dy: dy, dwEnd: dwEnd)
            let c = Self.run(x, chunk: chunk, chunkwise: true, dy: dy, dwEnd: dwEnd)
            let label = "T=\(steps) C=\(chunk) strong=\(strong)"
            for (name, a, b) in [
                ("y", c.y, r.y), ("W", c.w, r.w), ("dq", c.dq, r.dq), ("dk", c.dk, r.dk), ("dv", c.dv, r.dv),
                ("dβ", c.dbeta, r.dbeta), ("d log α", c.dlogDecay, r.dlogDecay), ("dW₀", c.dw0, r.dw0),
            ] {
                #expect(a.allSatisfy { $0.isFinite }, "\(label) \(name): not finite")
                let err = Self.relativeError(a, b)
                #expect(err < 2e-5, "\(label) \(name): chunkwise differs from the recurrence by \(err)")
            }
        }
    }

    /// The recurrence's gradients (over two stored-state stretches) against central differences
    /// of Σ r ⊙ y + ⟨R, W_T⟩, for every input and the initial state.
    @Test(arguments: [1, 1.6, 2.5]) func recurrenceMatchesFiniteDifferences(keyNorm: Float) {
        let x = Inputs(steps: 7, dk: 3, dv: 2, seed: 5, keyNorm: keyNorm)
        var rng = FWPRandom(seed: 6)
        let dy = (0..<(x.steps * x.valueStride)).map { _ in Float(rng.normal()) }
        let dwEnd = (0..<(x.dv * x.dk)).map { _ in Float(rng.normal()) }
        let out = Self.run(x, chunk: 4, chunkwise: false, dy: dy, dwEnd: dwEnd)
        func objective(_ x: Inputs) -> Double {
            let o = Self.run(x, chunk: 4, chunkwise: false, dy: dy, dwEnd: dwEnd)
            var s = 0.0
            for t in 0..<x.steps { for i in 0..<x.dv { s += Double(o.y[t * x.dv + i] * dy[t * x.valueStride + i]) } }
            for i in 0..<dwEnd.count { s += Double(o.w[i] * dwEnd[i]) }
            return s
        }
        func check(_ name: String, _ path: WritableKeyPath<Inputs, [Float]>, width: Int, stride: Int, _ g: [Float]) {
            let eps: Float = 1e-2
            var worst: Double = 0
            for t in 0..<(x[keyPath: path].count / stride) {
                for i in 0..<width {
                    var plus = x, minus = x
                    plus[keyPath: path][t * stride + i] += eps
                    minus[keyPath: path][t * stride + i] -= eps
                    let numeric = (objective(plus) - objective(minus)) / Double(2 * eps)
                    let analytic = Double(g[t * width + i])
                    worst = max(worst, abs(numeric - analytic) / max(abs(numeric), 0.05))
                }
            }
            #expect(worst < 2e-2, "\(name): analytic gradient differs from finite differences by \(worst)")
        }
        check("q", \.q, width: x.dk, stride: x.keyStride, out.dq)
        check("k", \.k, width: x.dk, stride: x.keyStride, out.dk)
        check("v", \.v, width: x.dv, stride: x.valueStride, out.dv)
        check("β", \.beta, width: 1, stride: 2, out.dbeta)
        check("log α", \.logDecay, width: 1, stride: 2, out.dlogDecay)
        check("W₀", \.w0, width: x.dv * x.dk, stride: x.dv * x.dk, out.dw0)
    }

    /// With α = 1 the gated rule is the delta rule: same outputs as `FastWeightKernel`.
    @Test func unitDecayIsTheDeltaRule() {
        var x = Inputs(steps: 9, seed: 8)
        x.logDecay = [Float](repeating: 0, count: x.logDecay.count)
        x.w0 = [Float](repeating: 0, count: x.w0.count)
        let gated = Self.run(
            x, chunk: 4, chunkwise: true, dy: [Float](repeating: 0, count: x.steps * x.valueStride),
            dwEnd: [Float](repeating: 0, count: x.dv * x.dk))
        let delta = FastWeightKernel(
            rule: .delta, attentionNormalization: false, steps: x.steps, keySize: x.dk, valueSize: x.dv,
            keyStride: x.keyStride, valueStride: x.valueStride, betaStride: 2)
        var y = [Float](repeating: 0, count: x.steps * x.valueStride), w = x.w0
        var z = [Float](repeating: 0, count: x.dk)
        delta.forward(q: x.q, k: x.k, v: x.v, beta: x.beta, y: &y, w: &w, z: &z, saved: nil, denominators: nil)
        let yMine = (0..<x.steps).flatMap { t in y[(t * x.valueStride)..<(t * x.valueStride + x.dv)] }
        #expect(Self.relativeError(gated.y, yMine) < 1e-5)
        #expect(Self.relativeError(gated.w, w) < 1e-5)
    }
}
