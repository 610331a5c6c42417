import Foundation
import Testing

@testable import FWPCore

/// A text with structure: a Markov chain over 16 symbols in which each symbol has two possible
/// successors, so the next symbol carries 1 bit given the previous one, while the unigram
/// entropy is close to 4 bits.
func markovText(length: Int, seed: UInt64) -> [Int] {
    var rng = FWPRandom(seed: seed)
    let successors = (0..<16).map { s in [(s * 5 + 3) % 16, (s * 11 + 7) % 16] }
    var text = [0]
    while text.count < length { text.append(successors[text.last!][Int(rng.next() & 1)]) }
    return text
}

func unigramEntropyNats(_ text: [Int]) -> Double {
    var counts = [Int: Double]()
    for t in text { counts[t, default: 0] += 1 }
    let n = Double(text.count)
    return counts.values.reduce(0.0) { $0 - ($1 / n) * log($1 / n) }
}

@Suite struct TrainingTests {
    @Test(arguments: [
        Variant(attention: .softmax), Variant(featureMap: "elu", rule: .sum, normalization: .sum),
        Variant(featureMap: "dpfp-1", rule: .delta, normalization: .sum),
    ])
    func smallLanguageModelLearns(_ variant: Variant) throws {
        var config = variant.config(modelSize: 32, heads: 2, headSize: 16, layers: 2)
        config.vocabularySize = 16
        config.feedForwardSize = 64
        config.initStd = 0.02
        config.sinusoidalPositions = variant.attention == .softmax
        var model = try LanguageModel(config: config, seed: 3)
        model.threads = ComputeThreads(2)
        let text = markovText(length: 20_000, seed: 9)
        let entropy = unigramEntropyNats(text)
        let steps = 300, batch = 8, context = 32
        var opt = AdamW(
            parameters: model.parameters,
            schedule: LearningRateSchedule(peak: 3e-3, warmupSteps: 20, totalSteps: steps),
            maxGradientNorm: 1)
        var rng = FWPRandom(seed: 4)
        func sample() -> ([Int], [Int]) {
            var x: [Int] = [], y: [Int] = []
            for _ in 0..<batch {
                let o = Int(rng.next() % UInt64(text.count - context - 1))
                x += text[o..<o + context]
                y += text[o + 1..<o + context + 1]
            }
            return (x, y)
        }
        for _ in 0..<steps {
            let (x, y) = sample()
            var none: ModelState? = nil
            let (_, g) = model.lossAndGradients(
                tokens: x, targets: y, batch: batch, state: &none, training: true, rng: &rng)
            opt.update(&model.parameters, gradients: g)
        }
        let held = markovText(length: 2_000, seed: 123)
        var x: [Int] = [], y: [Int] = []
        for b in 0..<8 {
            x += held[(b * 64)..<(b * 64 + 64)]
            y += held[(b * 64 + 1)..<(b * 64 + 65)]
        }
        var none: ModelState? = nil
        let loss = model.loss(tokens: x, targets: y, batch: 8, state: &none)
        // The chain's conditional entropy is log 2 ≈ 0.69 nats; the unigram entropy ≈ 2.77.
        #expect(loss < 0.5 * entropy, "\(variant.testDescription): held-out loss \(loss) vs unigram entropy \(entropy)")
    }

    /// Shards computed in parallel; FAVOR+ shards share the step's drawn projections.
    @Test(arguments: ["favor-4", "elu"])
    func sameSeedGivesBitIdenticalLosses(_ featureMap: String) throws {
        var config = Variant(featureMap: featureMap, rule: .delta, normalization: .sum).config(
            modelSize: 8, heads: 2, headSize: 4, layers: 2)
        config.dropout = 0.1
        func run(threads: Int) throws -> [Double] {
            var model = try LanguageModel(config: config, seed: 12)
            model.threads = ComputeThreads(threads)
            var opt = AdamW(
                parameters: model.parameters, schedule: LearningRateSchedule(peak: 1e-2), maxGradientNorm: 0.5)
            var rng = FWPRandom(seed: 13)
            var losses: [Double] = []
            for _ in 0..<8 {
                let x = (0..<32).map { _ in Int(rng.next() % 9) }
                var none: ModelState? = nil
                let (l, g) = model.lossAndGradients(
                    tokens: x, targets: x.reversed(), batch: 4, state: &none, training: true, rng: &rng)
                opt.update(&model.parameters, gradients: g)
                losses.append(l)
            }
            return losses
        }
        let a = try run(threads: 1)
        #expect(a == (try run(threads: 1)))
        #expect(a == (try run(threads: 2)), "the per-sequence thread count does not change results")
        #expect(Set(a).count > 1, "the losses change as training proceeds")
    }

    /// FAVOR+ draws each layer's projection once per training step for the whole batch: the
    /// sharded step's loss is the one-pass forward's with the same draws (to rounding), not that
    /// of shards drawing their own.
    @Test func favorShardsShareTheStepsProjections() throws {
        let config = Variant(featureMap: "favor-4", rule: .delta, normalization: .sum).config(
            modelSize: 8, heads: 2, headSize: 4, layers: 2)
        let model = try LanguageModel(config: config, seed: 3)
        var rng = FWPRandom(seed: 4)
        let x = (0..<64).map { _ in Int(rng.next() % 9) }
        #expect(model.shardLayout(batch: 4).count > 1)
        var a = FWPRandom(seed: 5), b = FWPRandom(seed: 5), c = FWPRandom(seed: 6), none: ModelState? = nil
        let sharded = model.lossAndGradients(
            tokens: x, targets: x.reversed(), batch: 4, state: &none, training: true, rng: &a
        ).loss
        let (logits, _) = model.forward(tokens: x, batch: 4, state: &none, training: true, rng: &b)
        let whole = CrossEntropy.lossAndGradient(logits: logits, targets: x.reversed()).loss
        let (other, _) = model.forward(tokens: x, batch: 4, state: &none, training: true, rng: &c)
        let elsewhere = CrossEntropy.lossAndGradient(logits: other, targets: x.reversed()).loss
        #expect(abs(sharded - whole) <= 1e-6 * whole, "sharded \(sharded), one pass \(whole)")
        #expect(abs(elsewhere - whole) > 1e-4 * whole, "other draws give another loss: \(elsewhere)")
    }

    /// A batch of one sequence is one shard; with two threads its dense products cut their rows
    /// (and the feed-forward backward its columns) into pieces: the loss and every gradient are
    /// bit for bit those of one thread. T = 1024 and FF 512, so that every cut happens (and
    /// FAVOR+'s feature map, threaded over rows, with its products).
    @Test(arguments: ["softmax", "elu", "favor-8"])
    func oneSequenceOnTwoThreadsGivesOneThreadsBits(_ kind: String) throws {
        let variant =
            kind == "softmax"
            ? Variant(attention: .softmax) : Variant(featureMap: kind, rule: .delta, normalization: .sum)
        var config = variant.config(modelSize: 32, heads: 2, headSize: 16, layers: 2)
        config.feedForwardSize = 512
        var rng = FWPRandom(seed: 31)
        let x = (0..<1024).map { _ in Int(rng.next() % 9) }
        func run(threads: Int) throws -> (Double, [Tensor]) {
            var model = try LanguageModel(config: config, seed: 5)
            model.threads = ComputeThreads(threads)
            var r = FWPRandom(seed: 6), none: ModelState? = nil
            let (loss, g) = model.lossAndGradients(
                tokens: x, targets: x.reversed(), batch: 1, state: &none, training: true, rng: &r)
            return (loss, g.values)
        }
        let (one, two) = (try run(threads: 1), try run(threads: 2))
        #expect(one.0 == two.0)
        #expect(one.1.map(\.storage) == two.1.map(\.storage), "every gradient bit for bit")
    }

    /// Shards are whole, non-empty runs of sequences that cover the batch in order, in blocks of
    /// 16 sequences, none larger than a quarter of its block (rounded up), the small ones last.
    @Test func shardBoundsCoverTheBatchLargestFirst() {
        #expect(LanguageModel.shardBounds(batch: 16) == [0, 4, 7, 10, 12, 14, 15, 16])
        #expect(
            LanguageModel.shardBounds(batch: 40) == [
                0, 4, 7, 10, 12, 14, 15, 16, 20, 23, 26, 28, 30, 31, 32, 34, 36, 37, 38, 39, 40,
            ])
        #expect(ShardLayout(batch: 40).blocks == [0..<7, 7..<14, 14..<20])
        #expect(LanguageModel.shardBounds(batch: 1) == [0, 1])
        #expect(LanguageModel.shardBounds(batch: 2) == [0, 1, 2])
        for batch in 1...200 {
            let layout = ShardLayout(batch: batch)
            let b = layout.bounds
            #expect(b.first == 0 && b.last == batch, "batch \(batch): \(b)")
            #expect(layout.blocks.first?.lowerBound == 0 && layout.blocks.last?.upperBound == layout.count)
            for block in layout.blocks {
                let sizes = block.map { layout.sequences(of: $0).count }
                let total = sizes.reduce(0, +)
                #expect(total <= 16 && (total == 16 || block == layout.blocks.last), "batch \(batch): \(sizes)")
                #expect(sizes.allSatisfy { $0 >= 1 && $0 <= (total + 3) / 4 }, "batch \(batch): \(sizes)")
                #expect(sizes.last! <= sizes.first! && sizes.count <= 7, "batch \(batch): \(sizes)")
            }
        }
    }

    /// The sharded training step (batch split into independent shards, gradients summed) gives
    /// the gradient of one unsharded forward/backward pass, and carries the same state.
    @Test(arguments: [(AttentionKind.fastWeight, 6), (.softmax, 6), (.fastWeight, 37)])
    func shardedStepMatchesWholeBatch(_ kind: AttentionKind, _ batch: Int) throws {
        var config = Variant(attention: kind, featureMap: "elu", rule: .delta, normalization: .sum)
            .config(modelSize: 8, heads: 2, headSize: 4, layers: 2)
        config.initStd = 0.3
        var model = try LanguageModel(config: config, seed: 4)
        model.threads = ComputeThreads(2)
        let steps = 7
        var rng = FWPRandom(seed: 5)
        let x = (0..<(batch * steps)).map { _ in Int(rng.next() % 9) }
        var y = x.map { ($0 + 1) % 9 }
        y[3] = -1  // an ignored target: the shards must divide by the whole batch's count
        // Whole batch, by hand, with a carried state from a first segment (fast weights only:
        // softmax layers do not train through a carried key/value cache, and their backward
        // refuses a forward that used one).
        var whole: ModelState? = kind == .fastWeight ? model.initialState(batch: batch) : nil
        if whole != nil { _ = model.forward(tokens: x, batch: batch, state: &whole, training: false, rng: &rng) }
        var sharded = whole
        let (logits, cache) = model.forward(tokens: x, batch: batch, state: &whole, training: false, rng: &rng)
        let (wholeLoss, dLogits) = CrossEntropy.lossAndGradient(logits: logits, targets: y)
        let wholeGrads = model.backward(dLogits, cache: cache)
        let (shardLoss, shardGrads) = model.lossAndGradients(
            tokens: x, targets: y, batch: batch, state: &sharded, training: false, rng: &rng)
        #expect(abs(shardLoss - wholeLoss) < 1e-6 * abs(wholeLoss))
        for i in wholeGrads.values.indices {
            let err = maxRelativeError(shardGrads.values[i], wholeGrads.values[i], floor: 1e-4)
            #expect(err < 1e-4, "\(wholeGrads.names[i]): \(err)")
        }
        guard let sharded, let whole else {
            #expect(sharded == nil && whole == nil)
            return
        }
        #expect(sharded.batch == batch && sharded.position == whole.position)
        for l in 0..<config.layers {
            // Equal up to float rounding: the projections are GEMMs with a different row count.
            func flat(_ s: AttentionState) -> Tensor {
                let x = s.weights + s.keys.flatMap { $0 } + s.values.flatMap { $0 }
                return Tensor(shape: [x.count], storage: x)
            }
            #expect(maxRelativeError(flat(sharded.layers[l]), flat(whole.layers[l])) < 1e-5)
            #expect(sharded.layers[l].keys.map(\.count) == whole.layers[l].keys.map(\.count))
        }
    }

    @Test func scheduleWarmsUpThenDecays() {
        let s = LearningRateSchedule(peak: 1, warmupSteps: 10, totalSteps: 110, minimum: 0.1)
        #expect(s.rate(at: 5) == 0.5)
        #expect(s.rate(at: 10) == 1)
        #expect(abs(s.rate(at: 60) - 0.55) < 1e-12)
        #expect(abs(s.rate(at: 110) - 0.1) < 1e-12)
        #expect(abs(s.rate(at: 500) - 0.1) < 1e-12)
    }

    @Test func adamMatchesHandComputedStepAndClips() {
        var p = ParameterStore()
        p.add("w", Tensor(shape: [2, 1], storage: [1, -2]))
        var g = p.zerosLike()
        g.values[0] = Tensor(shape: [2, 1], storage: [3, 4])  // norm 5
        var opt = AdamW(parameters: p, schedule: LearningRateSchedule(peak: 0.1), weightDecay: 0.5, maxGradientNorm: 1)
        let norm = opt.update(&p, gradients: g)
        #expect(abs(norm - 5) < 1e-9)
        // First Adam step moves each coordinate by lr · sign(g) (ε aside), after decay by lr·wd.
        #expect(abs(p.values[0][0] - (1 * (1 - 0.05) - 0.1)) < 1e-5)
        #expect(abs(p.values[0][1] - (-2 * (1 - 0.05) - 0.1)) < 1e-5)
        // Clipped gradient (3, 4)/5 feeds the moments.
        #expect(abs(opt.firstMoment.values[0][0] - 0.1 * 0.6) < 1e-6)
    }

    /// Large tensors are updated in parallel ranges: with 2 threads every element must come out
    /// exactly as with 1, and the one-pass sum of several gradient stores must equal repeated sums.
    /// The update's eight-lane loop gives every element the bits of the scalar formula (no fused
    /// multiply-adds, the same order), including the elements past the last full lane group.
    @Test func adamStepMatchesTheScalarFormulaBitForBit() {
        var rng = FWPRandom(seed: 21)
        let n = 45
        let g = Tensor.normal(shape: [n], std: 3, using: &rng).storage
        var m = Tensor.normal(shape: [n], std: 1, using: &rng).storage
        var v = Tensor.normal(shape: [n], std: 1, using: &rng).storage.map { $0 * $0 }
        var p = Tensor.normal(shape: [n], std: 1, using: &rng).storage
        let (clip, b1, b2, decay, stepSize, sqrtC2, eps): (Float, Float, Float, Float, Float, Float, Float) =
            (0.7, 0.9, 0.999, 1e-3, 0.0123, 0.0447, 1e-8)
        var (em, ev, ep) = (m, v, p)
        for j in 0..<n {
            let gj = g[j] * clip
            em[j] = b1 * em[j] + (1 - b1) * gj
            ev[j] = b2 * ev[j] + (1 - b2) * gj * gj
            ep[j] -= decay * ep[j]
            ep[j] -= stepSize * em[j] / (ev[j].squareRoot() / sqrtC2 + eps)
        }
        g.withUnsafeBufferPointer { g in
            m.withUnsafeMutableBufferPointer { m in
                v.withUnsafeMutableBufferPointer { v in
                    p.withUnsafeMutableBufferPointer { p in
                        // From element 3: lane groups that start off the array's alignment.
                        AdamW.step(
                            g.baseAddress!, m.baseAddress!, v.baseAddress!, p.baseAddress!, 3..<n, clip: clip, b1: b1,
                            b2: b2, decay: decay, stepSize: stepSize, sqrtC2: sqrtC2, eps: eps)
                        AdamW.step(
                            g.baseAddress!, m.baseAddress!, v.baseAddress!, p.baseAddress!, 0..<3, clip: clip, b1: b1,
                            b2: b2, decay: decay, stepSize: stepSize, sqrtC2: sqrtC2, eps: eps)
                    }
                }
            }
        }
        #expect(m.map(\.bitPattern) == em.map(\.bitPattern))
        #expect(v.map(\.bitPattern) == ev.map(\.bitPattern))
        #expect(p.map(\.bitPattern) == ep.map(\.bitPattern))
    }

    @Test func adamAndAccumulateDoNotDependOnThreads() {
        var rng = FWPRandom(seed: 9)
        var p = ParameterStore()
        p.add("big", .normal(shape: [300, 200], std: 1, using: &rng))  // split into ranges
        p.add("small", .normal(shape: [7], std: 1, using: &rng))
        let grads = (0..<3).map { _ in
            var g = p.zerosLike()
            for i in g.values.indices { g.values[i] = .normal(shape: g.values[i].shape, std: 1, using: &rng) }
            return g
        }
        var summed = grads[0]
        summed.accumulate(Array(grads[1...]), threads: ComputeThreads(2))
        var sequential = grads[0]
        for g in grads[1...] { sequential.accumulate(g) }
        #expect(summed == sequential)
        #expect(summed.values[0][123] == grads[0].values[0][123] + grads[1].values[0][123] + grads[2].values[0][123])

        func run(threads: Int) -> (ParameterStore, AdamW) {
            var params = p
            var opt = AdamW(
                parameters: p, schedule: LearningRateSchedule(peak: 0.01), weightDecay: 0.1, maxGradientNorm: 50)
            for g in grads { opt.update(&params, gradients: g, threads: ComputeThreads(threads)) }
            return (params, opt)
        }
        let (one, optOne) = run(threads: 1), (two, optTwo) = run(threads: 2)
        #expect(one == two)
        #expect(optOne == optTwo)
        #expect(one.values[0] != p.values[0])
    }
}
