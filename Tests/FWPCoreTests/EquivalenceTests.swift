import Foundation
import Testing

@testable import FWPCore

/// Two algorithms for the same quantity must agree.
@Suite struct EquivalenceTests {
    /// The sum rule's recurrence equals causal linear attention computed in parallel:
    /// Y = ((Q Kᵀ) ⊙ M) V, divided row-wise by ((Q Kᵀ) ⊙ M) 1 with attention normalisation.
    @Test(arguments: [false, true])
    func sumRuleIsCausalLinearAttention(_ attentionNormalization: Bool) {
        let steps = 9, dk = 5, dv = 4
        var q = randomTensor([steps, dk], seed: 41), k = randomTensor([steps, dk], seed: 42)
        let map = FeatureMap(.eluPlusOne, inputSize: dk)
        q = map.forward(q)
        k = map.forward(k)
        let v = randomTensor([steps, dv], seed: 43)
        // Parallel form with BLAS.
        var a = BLAS.matmul(q, k, transposeB: true)
        for i in 0..<steps { for j in (i + 1)..<steps { a[i, j] = 0 } }
        var expected = BLAS.matmul(a, v)
        if attentionNormalization {
            for i in 0..<steps {
                let den = (0..<steps).reduce(Float(0)) { $0 + a[i, $1] } + FastWeightKernel.denominatorEpsilon
                for c in 0..<dv { expected[i, c] /= den }
            }
        }
        let kernel = FastWeightKernel(
            rule: .sum, attentionNormalization: attentionNormalization, steps: steps, keySize: dk, valueSize: dv,
            keyStride: dk, valueStride: dv, betaStride: 1)
        var y = Tensor(shape: [steps, dv])
        var w = [Float](repeating: 0, count: dv * dk), z = [Float](repeating: 0, count: dk)
        var den = [Float](repeating: 0, count: steps)
        q.withUnsafePointer { pq in
            k.withUnsafePointer { pk in
                v.withUnsafePointer { pv in
                    y.withUnsafeMutablePointer { py in
                        kernel.forward(
                            q: pq, k: pk, v: pv, beta: nil, y: py, w: &w, z: &z, saved: nil, denominators: &den)
                    }
                }
            }
        }
        #expect(maxRelativeError(y, expected, floor: 1e-2) < 1e-5)
        // The final fast weight is Σ_t v_t ⊗ k_t = Vᵀ K.
        let wExpected = BLAS.matmul(v, transposeA: true, k)
        #expect(maxRelativeError(Tensor(shape: [dv, dk], storage: w), wExpected, floor: 1e-2) < 1e-5)
    }

    /// Token-by-token recurrent inference gives the parallel forward pass's logits, for every variant.
    @Test(arguments: Variant.all)
    func recurrentStepMatchesParallelForward(_ variant: Variant) throws {
        var config = variant.config(modelSize: 8, heads: 2, headSize: 4, layers: 2)
        config.initStd = 0.4
        config.sinusoidalPositions = variant.attention == .softmax
        var model = try LanguageModel(config: config, seed: 17)
        model.fastWeightAlgorithm = variant.algorithm  // the parallel pass; `step` uses the recurrence
        let batch = 2, steps = 11
        var rng = FWPRandom(seed: 3)
        let tokens = (0..<(batch * steps)).map { _ in Int(rng.next() % 9) }
        var none: ModelState? = nil
        let (parallel, _) = model.forward(tokens: tokens, batch: batch, state: &none, training: false, rng: &rng)
        var state = model.initialState(batch: batch)
        for t in 0..<steps {
            let logits = model.step(tokens: [tokens[t], tokens[steps + t]], state: &state)
            for b in 0..<batch {
                let expected = Tensor(
                    shape: [9], storage: Array(parallel.storage[((b * steps + t) * 9)..<((b * steps + t) * 9 + 9)]))
                let got = Tensor(shape: [9], storage: Array(logits.storage[(b * 9)..<(b * 9 + 9)]))
                let err = maxRelativeError(got, expected, floor: 1e-2)
                #expect(err < 1e-4, "\(variant.testDescription): step \(t), sequence \(b): relative error \(err)")
            }
        }
        #expect(state.position == steps)
    }

    /// Carrying fast weights across two segments gives the same logits as one long segment.
    @Test(arguments: [
        Variant(featureMap: "elu", rule: .sum, normalization: .attention),
        Variant(featureMap: "dpfp-1", rule: .delta, normalization: .sum),
        Variant(featureMap: "identity", rule: .gatedDelta, normalization: .l2, conv: 4),
        Variant(featureMap: "silu", rule: .gatedDelta, normalization: .l2, chunk: 2, conv: 3),
        Variant(attention: .softmax, conv: 3),
        Variant(rule: .delta, normalization: .sum, fastNet: .deltaRNN),
        Variant(featureMap: "elu", rule: .delta, normalization: .sum, chunk: 2, fastNet: .deltaLSTM),
        Variant(rule: .delta, normalization: .sum, fastNet: .rdn),
    ])
    func carriedStateAcrossSegments(_ variant: Variant) throws {
        var model = try LanguageModel(config: variant.config(modelSize: 8, heads: 2, headSize: 4, layers: 2), seed: 4)
        model.fastWeightAlgorithm = variant.algorithm
        let seq = [1, 5, 2, 7, 3, 3, 8, 0, 6, 4, 2, 1]
        var rng = FWPRandom(seed: 1)
        var none: ModelState? = nil
        let (full, _) = model.forward(tokens: seq, batch: 1, state: &none, training: false, rng: &rng)
        var state: ModelState? = model.initialState(batch: 1)
        // Three segments, the first shorter than a short convolution's carried inputs.
        var parts: [Float] = []
        for range in [0..<2, 2..<5, 5..<seq.count] {
            let (out, _) = model.forward(tokens: Array(seq[range]), batch: 1, state: &state, training: false, rng: &rng)
            parts += out.elements
        }
        let joined = Tensor(shape: full.shape, storage: parts)
        #expect(maxRelativeError(joined, full, floor: 1e-2) < 1e-5)
        #expect(state?.position == seq.count)
    }

    /// The training backward pass with a carried initial state still matches finite differences
    /// (gradients stop at the carried state; the reverse walk must end at it).
    @Test(arguments: [
        Variant(featureMap: "elu", rule: .delta, normalization: .sum),
        Variant(featureMap: "identity", rule: .gatedDelta, normalization: .l2, conv: 3),
        Variant(rule: .delta, normalization: .sum, fastNet: .deltaRNN),
        Variant(rule: .delta, normalization: .sum, fastNet: .deltaLSTM),
        Variant(rule: .delta, normalization: .sum, fastNet: .rdn),
    ])
    func gradientsWithCarriedState(_ variant: Variant) throws {
        var config = variant.config(modelSize: 8, heads: 2, headSize: 4, layers: 1)
        config.initStd = 0.4
        // Seed 8 leaves a ReLU unit of the Delta RNN's feed-forward block at its kink, where
        // central differences are meaningless.
        let model = try LanguageModel(config: config, seed: variant.fastNet == .linear ? 8 : 9)
        var warm: ModelState? = model.initialState(batch: 1)
        var rng = FWPRandom(seed: 2)
        _ = model.forward(tokens: [3, 1, 4, 1, 5], batch: 1, state: &warm, training: false, rng: &rng)
        let tokens = [2, 6, 5, 3], targets = [6, 5, 3, 5]
        func loss(_ p: ParameterStore) -> Double {
            var m = model
            m.parameters = p
            var s = warm
            return m.loss(tokens: tokens, targets: targets, batch: 1, state: &s)
        }
        var s = warm
        let (_, grads) = model.lossAndGradients(
            tokens: tokens, targets: targets, batch: 1, state: &s, training: false, rng: &rng)
        expectDirectionalDerivative("carried", parameters: model.parameters, gradients: grads, loss: loss)
    }

    /// BLAS gemm with every transpose combination against a naive triple loop.
    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func gemmTransposes(_ flags: (Bool, Bool)) {
        let (ta, tb) = flags
        let m = 5, n = 3, k = 4
        let a = randomTensor(ta ? [k, m] : [m, k], seed: 51), b = randomTensor(tb ? [n, k] : [k, n], seed: 52)
        var c = randomTensor([m, n], seed: 53)
        let c0 = c
        BLAS.gemm(a, transposeA: ta, b, transposeB: tb, alpha: 0.5, beta: 2, into: &c)
        for i in 0..<m {
            for j in 0..<n {
                var s: Float = 0
                for p in 0..<k { s += (ta ? a[p, i] : a[i, p]) * (tb ? b[j, p] : b[p, j]) }
                #expect(abs(c[i, j] - (0.5 * s + 2 * c0[i, j])) < 1e-5)
            }
        }
    }
}
