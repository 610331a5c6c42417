import Foundation
import Testing

@testable import FWPCore

/// Finite-difference checks of every layer's hand-written backward pass.
@Suite struct LayerGradientTests {
    @Test func linearWeightsBiasAndInput() {
        var store = ParameterStore()
        var rng = FWPRandom(seed: 1)
        let layer = Linear("fc", in: 5, out: 4, bias: true, std: 0.5, store: &store, rng: &rng)
        store.values[layer.bias!] = randomTensor([4], seed: 2)
        let x = randomTensor([3, 5], seed: 3), r = randomTensor([3, 4], seed: 4)
        var g = store.zerosLike()
        let dx = layer.backward(r, input: x, store, &g)
        expectGradient("x", values: x, analytic: dx) { weightedSum(layer.forward($0, store), r) }
        for (i, name) in store.names.enumerated() {
            expectGradient(name, values: store.values[i], analytic: g.values[i]) { v in
                var s = store
                s.values[i] = v
                return weightedSum(layer.forward(x, s), r)
            }
        }
    }

    @Test func embeddingScattersIntoRows() {
        var store = ParameterStore()
        var rng = FWPRandom(seed: 1)
        let emb = Embedding("e", vocabulary: 6, dimension: 3, std: 1, store: &store, rng: &rng)
        let tokens = [1, 4, 1, 5]
        let r = randomTensor([4, 3], seed: 2)
        var g = store.zerosLike()
        emb.backward(r, tokens: tokens, &g)
        expectGradient("embedding", values: store.values[0], analytic: g.values[0], samples: 18) { v in
            var s = store
            s.values[0] = v
            return weightedSum(emb.forward(tokens, s), r)
        }
        #expect(g.values[0][0, 0] == 0, "an unused row gets no gradient")
    }

    /// 6 lies inside one 8-wide vector, 19 spans two and a partial one (the C kernel's tails).
    @Test(arguments: [6, 19]) func layerNormGainBiasAndInput(dimension n: Int) {
        var store = ParameterStore()
        let ln = LayerNorm("ln", dimension: n, store: &store)
        store.values[ln.weight] = randomTensor([n], seed: 5)
        store.values[ln.bias] = randomTensor([n], seed: 6)
        let x = randomTensor([4, n], std: 2, seed: 7), r = randomTensor([4, n], seed: 8)
        let (_, cache) = ln.forward(x, store)
        var g = store.zerosLike()
        let dx = ln.backward(r, cache: cache, store, &g)
        expectGradient("x", values: x, analytic: dx, samples: 24) { weightedSum(ln.forward($0, store).0, r) }
        // Adding into a residual gradient gives exactly residual + dx, and the same parameter gradients.
        var residual = randomTensor([4, n], seed: 11), g2 = store.zerosLike()
        let before = residual
        ln.backward(r, cache: cache, store, &g2, addingTo: &residual)
        #expect(residual.elements == zip(before.storage, dx.storage).map { $0 + $1 })
        #expect(g2 == g)
        for i in 0..<2 {
            expectGradient(store.names[i], values: store.values[i], analytic: g.values[i]) { v in
                var s = store
                s.values[i] = v
                return weightedSum(ln.forward(x, s).0, r)
            }
        }
    }

    @Test func feedForwardThroughReLU() {
        var store = ParameterStore()
        var rng = FWPRandom(seed: 3)
        let ff = FeedForward("ff", dimension: 5, hidden: 7, std: 0.5, outputStd: 0.5, store: &store, rng: &rng)
        let x = randomTensor([3, 5], seed: 9), r = randomTensor([3, 5], seed: 10)
        let (_, cache) = ff.forward(x, store)
        var g = store.zerosLike()
        let dx = ff.backward(r, cache: cache, store, &g)
        expectGradient("x", values: x, analytic: dx, eps: 1e-3) { weightedSum(ff.forward($0, store).0, r) }
        // The residual form adds the same output (up to the order of the bias addition).
        store.values[ff.fc2.bias!] = randomTensor([5], seed: 12)
        let base = randomTensor([3, 5], seed: 13)
        var residual = base
        _ = ff.forward(x, store, addingTo: &residual)
        let expected = zip(base.storage, ff.forward(x, store).0.storage).map { $0 + $1 }
        for (got, want) in zip(residual.storage, expected) { #expect(abs(got - want) <= 1e-6 * max(1, abs(want))) }
        store.values[ff.fc2.bias!] = Tensor(shape: [5])
        for i in store.values.indices {
            expectGradient(store.names[i], values: store.values[i], analytic: g.values[i], eps: 1e-3) { v in
                var s = store
                s.values[i] = v
                return weightedSum(ff.forward(x, s).0, r)
            }
        }
    }

    @Test func dropoutKeepsExpectationAndMasksGradient() {
        var rng = FWPRandom(seed: 4)
        let mask = Dropout.mask(count: 20_000, rate: 0.25, using: &rng)!
        let kept = mask.filter { $0 != 0 }
        #expect(kept.allSatisfy { abs($0 - 1 / 0.75) < 1e-6 }, "kept elements are scaled by 1/(1 − p)")
        let fraction = Double(kept.count) / Double(mask.count)
        #expect(abs(fraction - 0.75) < 0.02, "about 1 − p of the elements survive, got \(fraction)")
        #expect(Dropout.mask(count: 10, rate: 0, using: &rng) == nil)
        // Dropout is linear with a fixed mask: its gradient is the same mask.
        let m = Array(mask.prefix(12))
        let x = randomTensor([3, 4], seed: 5), r = randomTensor([3, 4], seed: 6)
        var dx = r
        Dropout.apply(m, to: &dx)
        expectGradient("x", values: x, analytic: dx, samples: 12) { v in
            var y = v
            Dropout.apply(m, to: &y)
            return weightedSum(y, r)
        }
    }

    @Test func crossEntropyLogits() {
        let logits = randomTensor([4, 7], std: 2, seed: 11)
        let targets = [3, 0, 6, 2]
        let (loss, grad) = CrossEntropy.lossAndGradient(logits: logits, targets: targets)
        var expected = 0.0
        for r in 0..<4 {
            let row = (0..<7).map { Double(logits[r, $0]) }
            let lse = log(row.map { exp($0) }.reduce(0, +))
            expected += lse - row[targets[r]]
        }
        #expect(abs(loss - expected / 4) < 1e-5)
        expectGradient("logits", values: logits, analytic: grad, samples: 28) {
            CrossEntropy.lossAndGradient(logits: $0, targets: targets).loss
        }
    }

    @Test func crossEntropyIgnoresNegativeTargets() {
        let logits = randomTensor([3, 5], seed: 12)
        let (all, _) = CrossEntropy.lossAndGradient(logits: logits, targets: [1, -1, 2])
        let (first, _) = CrossEntropy.lossAndGradient(
            logits: Tensor(shape: [1, 5], storage: Array(logits.storage[0..<5])), targets: [1])
        let (third, _) = CrossEntropy.lossAndGradient(
            logits: Tensor(shape: [1, 5], storage: Array(logits.storage[10..<15])), targets: [2])
        #expect(abs(all - (first + third) / 2) < 1e-6)
    }

    @Test(arguments: ["identity", "elu", "silu", "dpfp-1", "dpfp-2", "dpfp-3", "favor-5"])
    func featureMap(_ name: String) {
        let kind = FeatureMapKind(name: name)!
        let map = FeatureMap(kind, inputSize: 4)
        let x = randomTensor([3, 4], seed: 13)
        var rng = FWPRandom(seed: 14)
        let projection: Tensor? =
            if case .favor(let m) = kind { .normal(shape: [m, 4], std: 0.7, using: &rng) } else { nil }
        let y = map.forward(x, projection: projection)
        #expect(y.shape == [3, kind.outputSize(inputSize: 4)])
        let r = randomTensor(y.shape, seed: 15)
        let dx = map.backward(r, input: x, output: y, projection: projection)
        expectGradient(name, values: x, analytic: dx, samples: 12, eps: 1e-3) {
            weightedSum(map.forward($0, projection: projection), r)
        }
    }

    @Test func l2Normalization() {
        let x = randomTensor([3, 6], seed: 19)
        let (y, norms) = L2Normalization.forward(x)
        for r in 0..<3 { #expect(abs((0..<6).reduce(Float(0)) { $0 + y[r, $1] * y[r, $1] } - 1) < 1e-5) }
        let rr = randomTensor([3, 6], seed: 20)
        let dx = L2Normalization.backward(rr, output: y, norms: norms)
        expectGradient("x", values: x, analytic: dx, samples: 18, eps: 1e-3) {
            weightedSum(L2Normalization.forward($0).0, rr)
        }
    }

    @Test func sumNormalization() {
        var x = randomTensor([3, 6], seed: 16)
        for i in 0..<x.count { x.storage[i] = abs(x.storage[i]) + 0.1 }
        let (y, sums) = SumNormalization.forward(x)
        for r in 0..<3 { #expect(abs((0..<6).reduce(Float(0)) { $0 + y[r, $1] } - 1) < 1e-5) }
        let rr = randomTensor([3, 6], seed: 17)
        let dx = SumNormalization.backward(rr, output: y, sums: sums)
        expectGradient("x", values: x, analytic: dx, samples: 18, eps: 1e-3) {
            weightedSum(SumNormalization.forward($0).0, rr)
        }
    }
}

/// Row-parallel element-wise work gives the same bits as one thread.
@Suite struct RowParallelTests {
    @Test func featureMapAndSumNormalisationDoNotDependOnThreads() {
        // 1,037 rows: several ranges per thread, the last one uneven.
        let x = randomTensor([1037, 16], seed: 21), dy = randomTensor([1037, 16], seed: 22)
        let map = FeatureMap(.eluPlusOne, inputSize: 16)
        let one = ComputeThreads(1), three = ComputeThreads(3)
        let phi1 = map.forward(x, threads: one), phi3 = map.forward(x, threads: three)
        #expect(phi1.storage == phi3.storage)
        #expect(
            map.backward(dy, input: x, output: phi1, threads: one).storage
                == map.backward(dy, input: x, output: phi1, threads: three).storage)
        let (n1, s1) = SumNormalization.forward(phi1, threads: one)
        let (n3, s3) = SumNormalization.forward(phi1, threads: three)
        #expect(n1.storage == n3.storage && s1 == s3)
        #expect(
            SumNormalization.backward(dy, output: n1, sums: s1, threads: one).storage
                == SumNormalization.backward(dy, output: n1, sums: s1, threads: three).storage)
        // And the normalised rows sum to one (up to ε), so the parallel path wrote every row.
        for r in [0, 517, 1036] {
            let sum = (0..<16).reduce(Float(0)) { $0 + n3[r, $1] }
            #expect(abs(sum - 1) < 1e-5)
        }
    }
}
