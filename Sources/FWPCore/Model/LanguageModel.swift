import Foundation

/// The carried state of the whole model: one `AttentionState` per layer plus the position.
public struct ModelState: Sendable, Equatable {
    public var layers: [AttentionState]
    /// Tokens consumed so far (the next position for sinusoidal encodings).
    public var position: Int
    /// Sequences in the batch.
    public let batch: Int

    /// The state of sequences `range` of the batch.
    public func slice(_ range: Range<Int>) -> ModelState {
        ModelState(layers: layers.map { $0.slice(range, batch: batch) }, position: position, batch: range.count)
    }

    /// The batch made of `parts` in order.
    public static func concatenate(_ parts: [ModelState]) -> ModelState {
        ModelState(
            layers: parts[0].layers.indices.map { l in AttentionState.concatenate(parts.map { $0.layers[l] }) },
            position: parts[0].position, batch: parts.reduce(0) { $0 + $1.batch })
    }
}

extension AttentionState {
    func slice(_ range: Range<Int>, batch: Int) -> AttentionState {
        func part<C: RandomAccessCollection>(_ a: C) -> [C.Element] where C.Index == Int {
            if a.isEmpty { return [] }
            let per = a.count / batch
            return Array(a[(range.lowerBound * per)..<(range.upperBound * per)])
        }
        return AttentionState(
            weights: TensorStorage(part(weights)), normalizer: TensorStorage(part(normalizer)), keys: part(keys),
            values: part(values),
            length: length, convolution: TensorStorage(part(convolution)), recurrent: TensorStorage(part(recurrent)))
    }

    static func concatenate(_ parts: [AttentionState]) -> AttentionState {
        AttentionState(
            weights: TensorStorage(parts.flatMap(\.weights)), normalizer: TensorStorage(parts.flatMap(\.normalizer)),
            keys: parts.flatMap(\.keys),
            values: parts.flatMap(\.values), length: parts[0].length,
            convolution: TensorStorage(parts.flatMap(\.convolution)),
            recurrent: TensorStorage(parts.flatMap(\.recurrent)))
    }
}

/// How a batch of sequences is cut into shards for a training step, and the one order in which
/// the shards' gradients are added: the batch in blocks of 16 sequences, each block in shards of
/// 4, 3, 3, 2, 2, 1, 1 sixteenths of it (`LanguageModel.shardBounds`). The gradient is
/// ((B₀ + B₁) + B₂) + … over the blocks, where each block's Bₖ = ((g₀ + g₁) + g₂) + … over its
/// shards. Processes that share a batch (data-parallel training) add in this order too, so the
/// sum does not depend on how the shards are spread.
public struct ShardLayout: Sendable, Equatable {
    /// Shard boundaries: shard i holds sequences bounds[i] ..< bounds[i + 1].
    public let bounds: [Int]
    /// Shard index ranges of the blocks, in order.
    public let blocks: [Range<Int>]

    public init(batch: Int) {
        var bounds = [0], blocks: [Range<Int>] = []
        var start = 0
        while start < batch {
            let size = min(16, batch - start)
            let first = bounds.count - 1
            for sixteenths in [4, 7, 10, 12, 14, 15, 16] {
                let b = start + (size * sixteenths + 8) / 16
                if bounds.last != b { bounds.append(b) }
            }
            blocks.append(first..<(bounds.count - 1))
            start += size
        }
        self.bounds = bounds
        self.blocks = blocks
    }

    /// Shards in the batch.
    public var count: Int { bounds.count - 1 }
    /// Sequences of shard `i`.
    public func sequences(of i: Int) -> Range<Int> { bounds[i]..<bounds[i + 1] }
    /// The block holding shard `i`.
    public func block(of i: Int) -> Int { blocks.firstIndex { $0.contains(i) }! }
}

/// The autoregressive language model of docs/MODEL.md.
///
/// Embedding → N pre-LN blocks [LN → attention → residual; LN → ReLU FF → residual] → LN →
/// output layer → softmax cross-entropy. Parameters live in `parameters` under PyTorch-style
/// names; non-trained tensors (FAVOR+ projections) in `buffers`.
public struct LanguageModel: Sendable {
    public let config: LMConfig
    public var parameters: ParameterStore
    public var buffers: ParameterStore
    /// Threads for the per-sequence loops (results do not depend on it).
    public var threads = ComputeThreads(1)
    /// How fast-weight layers run their recurrence (results agree to float32 rounding).
    public var fastWeightAlgorithm: FastWeightAlgorithm {
        get { blocks.first?.attention.algorithm ?? .automatic }
        set { for i in blocks.indices { blocks[i].attention.algorithm = newValue } }
    }

    let embedding: Embedding
    var blocks: [Block]
    let finalNorm: LayerNorm
    let head: Linear?
    let headBias: Int

    struct Block: Sendable {
        let norm1: LayerNorm
        var attention: AttentionLayer
        let norm2: LayerNorm
        let feedForward: FeedForward
    }

    /// A freshly initialised model; throws if the config is invalid.
    public init(config: LMConfig, seed: UInt64) throws {
        try config.validate()
        Allocator.configureForTraining()
        self.config = config
        var rng = FWPRandom(seed: seed)
        var store = ParameterStore()
        var buffers = ParameterStore()
        let d = config.modelSize
        embedding = Embedding(
            "embedding", vocabulary: config.vocabularySize, dimension: d, std: config.initStd, store: &store, rng: &rng)
        var blocks: [Block] = []
        for i in 0..<config.layers {
            let prefix = "layers.\(i)"
            let n1 = LayerNorm("\(prefix).norm1", dimension: d, store: &store)
            let attn = AttentionLayer(
                prefix: "\(prefix).attn", config: config, store: &store, buffers: &buffers, rng: &rng)
            let n2 = LayerNorm("\(prefix).norm2", dimension: d, store: &store)
            let ff = FeedForward(
                "\(prefix).ff", dimension: d, hidden: config.feedForwardSize, std: config.initStd,
                outputStd: config.initStd / (2 * Float(config.layers)).squareRoot(), store: &store, rng: &rng)
            blocks.append(Block(norm1: n1, attention: attn, norm2: n2, feedForward: ff))
        }
        self.blocks = blocks
        finalNorm = LayerNorm("norm", dimension: d, store: &store)
        if config.tiedEmbeddings {
            head = nil
        } else {
            head = Linear(
                "head", in: d, out: config.vocabularySize, bias: false, std: config.initStd, store: &store, rng: &rng)
        }
        headBias = store.add("head.bias", Tensor(shape: [config.vocabularySize]))
        parameters = store
        self.buffers = buffers
    }

    /// A zero state for `batch` sequences.
    public func initialState(batch: Int) -> ModelState {
        ModelState(layers: blocks.map { $0.attention.initialState(batch: batch) }, position: 0, batch: batch)
    }

    /// What `backward` needs from `forward`.
    public struct Cache {
        var tokens: [Int]
        var batch: Int, steps: Int
        var embeddingMask: [Float]?
        var blocks: [BlockCache]
        var finalNorm: LayerNorm.Cache
        var finalHidden: Tensor
    }

    struct BlockCache {
        var norm1: LayerNorm.Cache
        var attention: AttentionLayer.Cache
        var attentionMask: [Float]?
        var norm2: LayerNorm.Cache
        var feedForward: FeedForward.Cache
        var feedForwardMask: [Float]?
    }

    /// Logits (B·T × V) for `tokens` (B·T ids, batch-major).
    ///
    /// With `state`, fast weights (or softmax key/value caches) continue from it and it is
    /// replaced by the state at the segment's end; gradients do not flow into the carried state.
    /// `training` enables dropout and redraws FAVOR+ features from `rng`.
    public func forward(
        tokens: [Int], batch: Int, state: inout ModelState?, training: Bool, rng: inout FWPRandom
    ) -> (logits: Tensor, cache: Cache) {
        precondition(batch >= 1 && tokens.count % batch == 0, "tokens must hold batch × steps ids")
        let steps = tokens.count / batch
        if let state { precondition(state.batch == batch, "state is for a batch of \(state.batch)") }
        var x = embedding.forward(tokens, parameters)
        if config.embeddingScale != 1 { scaleInPlace(&x, config.embeddingScale) }
        if config.sinusoidalPositions { addPositions(&x, batch: batch, steps: steps, offset: state?.position ?? 0) }
        let rate = training ? config.dropout : 0
        let embMask = Dropout.mask(count: x.count, rate: rate, using: &rng)
        Dropout.apply(embMask, to: &x)
        var caches: [BlockCache] = []
        caches.reserveCapacity(blocks.count)
        for (i, block) in blocks.enumerated() {
            let (h1, c1) = block.norm1.forward(x, parameters)
            // Moved out of `state` (an empty placeholder stays there until it is put back), so
            // that its arrays are uniquely referenced and the layer updates them in place rather
            // than copying the whole fast-weight state or key/value cache first (copy-on-write).
            var layerState = state?.layers[i]
            if state != nil { state!.layers[i] = .placeholder }
            let ca: AttentionLayer.Cache, aMask: [Float]?
            if rate == 0 {
                // No dropout: the output projection adds straight into the residual stream.
                ca = block.attention.forward(
                    h1, batch: batch, steps: steps, parameters, buffers, state: &layerState, training: training,
                    rng: &rng, threads: threads, addingTo: &x)
                aMask = nil
            } else {
                var a: Tensor
                (a, ca) = block.attention.forward(
                    h1, batch: batch, steps: steps, parameters, buffers, state: &layerState, training: training,
                    rng: &rng, threads: threads)
                aMask = Dropout.mask(count: a.count, rate: rate, using: &rng)
                Dropout.apply(aMask, to: &a)
                Vec.addTensor(a, into: &x)
            }
            if let layerState { state!.layers[i] = layerState }
            let (h2, c2) = block.norm2.forward(x, parameters)
            let cf: FeedForward.Cache, fMask: [Float]?
            if rate == 0 {
                cf = block.feedForward.forward(h2, parameters, addingTo: &x, threads: threads)
                fMask = nil
            } else {
                var f: Tensor
                (f, cf) = block.feedForward.forward(h2, parameters, threads: threads)
                fMask = Dropout.mask(count: f.count, rate: rate, using: &rng)
                Dropout.apply(fMask, to: &f)
                Vec.addTensor(f, into: &x)
            }
            caches.append(
                BlockCache(
                    norm1: c1, attention: ca, attentionMask: aMask, norm2: c2, feedForward: cf, feedForwardMask: fMask))
        }
        if state != nil { state!.position += steps }
        let (h, cn) = finalNorm.forward(x, parameters)
        // Written by the product, the bias added as it stores each row (`BLAS.linear`).
        var logits = Tensor(uninitializedShape: [h.rows, config.vocabularySize])
        BLAS.linear(
            h, weight: parameters.values[head?.weight ?? embedding.weight], bias: parameters.values[headBias],
            into: &logits, threads: threads)
        return (
            logits,
            Cache(
                tokens: tokens, batch: batch, steps: steps, embeddingMask: embMask, blocks: caches, finalNorm: cn,
                finalHidden: h)
        )
    }

    /// Gradients of the loss with respect to every parameter, given dL/dlogits.
    public func backward(_ dLogits: Tensor, cache: Cache) -> ParameterStore {
        // The weight matrices' gradients are each written once, by a product that overwrites
        // them (the output layer's first, before a tied embedding's rows are added into it):
        // left uninitialised here rather than zeroed and added into.
        var g = parameters.zerosLike(leavingUninitialized: overwrittenGradients)
        addColumnSums(dLogits, into: &g.values[headBias])
        let wIndex = head?.weight ?? embedding.weight
        BLAS.gemm(dLogits, transposeA: true, cache.finalHidden, beta: 0, into: &g.values[wIndex], threads: threads)
        var dx = finalNorm.backward(
            BLAS.matmul(dLogits, parameters.values[wIndex], threads: threads), cache: cache.finalNorm, parameters, &g)
        /// dx masked by a dropout mask, or dx itself (no copy) without one.
        func masked(_ dx: Tensor, _ mask: [Float]?) -> Tensor {
            guard mask != nil else { return dx }
            var d = dx
            Dropout.apply(mask, to: &d)
            return d
        }
        for (block, c) in zip(blocks, cache.blocks).reversed() {
            let dh2 = block.feedForward.backward(
                masked(dx, c.feedForwardMask), cache: c.feedForward, parameters, &g, overwrite: true, threads: threads)
            block.norm2.backward(dh2, cache: c.norm2, parameters, &g, addingTo: &dx)
            let dh1 = block.attention.backward(
                masked(dx, c.attentionMask), cache: c.attention, parameters, &g, threads: threads, overwrite: true)
            block.norm1.backward(dh1, cache: c.norm1, parameters, &g, addingTo: &dx)
        }
        Dropout.apply(cache.embeddingMask, to: &dx)
        if config.embeddingScale != 1 { scaleInPlace(&dx, config.embeddingScale) }
        embedding.backward(dx, tokens: cache.tokens, &g)
        return g
    }

    /// The parameters whose gradients `backward` writes before anything adds into them: every
    /// attention and feed-forward weight matrix, and the output layer's (or the tied embedding).
    var overwrittenGradients: Set<Int> {
        var s: Set<Int> = [head?.weight ?? embedding.weight]
        for block in blocks {
            s.formUnion(block.attention.overwrittenGradients)
            s.formUnion(block.feedForward.overwrittenGradients)
        }
        return s
    }

    /// Where `lossAndGradients` cuts a batch into shards of whole sequences: the bounds, from 0 to
    /// `batch` (`ShardLayout`). The batch is taken in blocks of 16 sequences (the last one may be
    /// smaller), and each block in shards that shrink: 4, 3, 3, 2, 2, 1 and 1 sixteenths of the
    /// block (rounded to whole sequences; empty ones dropped), so 4, 3, 3, 2, 2, 1, 1 sequences of
    /// a block of 16. Threads take shards in order, so the small ones come last and go to
    /// whichever thread is free first: when one core runs slower than the other (another process
    /// or tenant on it), the step does not wait for it to finish a quarter of the block alone.
    /// Blocks bound the memory of a step (one block's shard gradients at a time) and let a large
    /// batch be shared by many ranks (one shard each at most). The bounds depend on the batch
    /// size only.
    public static func shardBounds(batch: Int) -> [Int] { ShardLayout(batch: batch).bounds }

    /// Mean cross-entropy of predicting `targets` from `tokens` and its gradients.
    ///
    /// The batch is split into shards of whole sequences (`shardLayout`), each run forward and
    /// backward on its own (in parallel when `threads` allows). Every shard divides by the whole
    /// batch's target count, so the sum is the full-batch gradient, added in one fixed order:
    /// each block's shards in order, then the blocks in order (`ShardLayout`). The shards depend
    /// only on the batch size, never on the thread count, so results do not depend on `threads`.
    /// Each shard draws its dropout masks from its own child of `rng`. FAVOR+ models redraw
    /// their projections every training step: drawn once from `rng` before the shards, shared by
    /// all of them.
    public func lossAndGradients(
        tokens: [Int], targets: [Int], batch: Int, state: inout ModelState?, training: Bool, rng: inout FWPRandom
    ) -> (loss: Double, gradients: ParameterStore) {
        precondition(batch >= 1 && tokens.count % batch == 0 && targets.count == tokens.count)
        let layout = shardLayout(batch: batch)
        if layout.count == 1 {
            let (logits, cache) = forward(tokens: tokens, batch: batch, state: &state, training: training, rng: &rng)
            let (loss, dLogits) = CrossEntropy.lossAndGradient(logits: logits, targets: targets)
            return (loss, backward(dLogits, cache: cache))
        }
        let model = drawingProjections(training: training, rng: &rng)
        let rngs = (0..<layout.count).map { _ in rng.split() }
        var states = state.map { st in (0..<layout.count).map { st.slice(layout.sequences(of: $0)) } }
        var loss = 0.0
        var total = ParameterStore()
        for block in layout.blocks {
            var parts = model.computeShards(
                tokens: tokens, targets: targets, batch: batch, layout: layout, shards: block, rngs: rngs,
                states: &states, training: training)
            for p in parts { loss += p.loss }
            var sum = parts[0].gradients
            parts[0].gradients = ParameterStore()  // so that adding into it does not copy it first
            sum.accumulate(parts.dropFirst().map(\.gradients), threads: threads)
            if block.lowerBound == 0 { total = sum } else { total.accumulate([sum], threads: threads) }
        }
        if let states { state = ModelState.concatenate(states) }
        return (loss, total)
    }

    /// The shard layout `lossAndGradients` uses for this model: `ShardLayout(batch:)`.
    public func shardLayout(batch: Int) -> ShardLayout { ShardLayout(batch: batch) }

    /// This model with each FAVOR+ layer's training projection drawn from `rng` (in layer order),
    /// so that all shards of one step use the same ones; itself when not training FAVOR+.
    private func drawingProjections(training: Bool, rng: inout FWPRandom) -> LanguageModel {
        guard training, config.attention == .fastWeight, case .favor(let m) = config.featureMap else { return self }
        var model = self
        for i in model.blocks.indices {
            model.blocks[i].attention.drawnProjection = FeatureMap.favorProjection(
                features: m, inputSize: config.headSize, using: &rng)
        }
        return model
    }

    /// The losses and gradients of shards `shards` (indices into `shardLayout(batch:)`, at least
    /// two shards in the batch), each divided by the whole batch's target count: the parts that
    /// `lossAndGradients` adds up. `rng` advances as for the whole batch (one child per shard,
    /// whichever shards are computed), and only the computed shards' rows of `state` change, so
    /// that processes which each compute some of the shards stay in step. Shards are computed one
    /// block at a time, `body` receiving each block's part (`shards` ∩ the block) in order —
    /// so that a caller can fold a block before the next one is computed. This is the unit of
    /// data-parallel training (FWPTasks' DataParallel).
    public func shardLossesAndGradients(
        tokens: [Int], targets: [Int], batch: Int, shards: Range<Int>, state: inout ModelState?, training: Bool,
        rng: inout FWPRandom, _ body: (Range<Int>, [(loss: Double, gradients: ParameterStore)]) throws -> Void
    ) rethrows {
        let layout = shardLayout(batch: batch)
        precondition(layout.count > 1 && shards.lowerBound >= 0 && shards.upperBound <= layout.count)
        let model = drawingProjections(training: training, rng: &rng)
        let rngs = (0..<layout.count).map { _ in rng.split() }
        var states = state.map { st in (0..<layout.count).map { st.slice(layout.sequences(of: $0)) } }
        for block in layout.blocks {
            let part = block.clamped(to: shards)
            if part.isEmpty { continue }
            let results = model.computeShards(
                tokens: tokens, targets: targets, batch: batch, layout: layout, shards: part, rngs: rngs,
                states: &states, training: training)
            try body(part, results)
        }
        if let states { state = ModelState.concatenate(states) }
    }

    /// Forward and backward of shards `shards`, in parallel when `threads` allows; their end
    /// states replace theirs in `states`.
    private func computeShards(
        tokens: [Int], targets: [Int], batch: Int, layout: ShardLayout, shards: Range<Int>, rngs: [FWPRandom],
        states: inout [ModelState]?, training: Bool
    ) -> [(loss: Double, gradients: ParameterStore)] {
        let steps = tokens.count / batch
        let counted = targets.filter { $0 >= 0 }.count
        let outer = min(threads.count, shards.count)
        var shardModel = self
        shardModel.threads = ComputeThreads(max(1, threads.count / outer))
        let model = shardModel
        let starts = states
        let results = ResultSlots<(loss: Double, gradients: ParameterStore, state: ModelState?)>(shards.count)
        ComputeThreads(outer).forEach(shards.count) { k in
            let i = shards.lowerBound + k
            let sequences = layout.sequences(of: i)
            let rows = (sequences.lowerBound * steps)..<(sequences.upperBound * steps)
            var shardRng = rngs[i]
            var shardState = starts?[i]
            let (logits, cache) = model.forward(
                tokens: Array(tokens[rows]), batch: sequences.count, state: &shardState, training: training,
                rng: &shardRng)
            let (loss, dLogits) = CrossEntropy.lossAndGradient(
                logits: logits, targets: Array(targets[rows]), normalizer: counted)
            results[k] = (loss, model.backward(dLogits, cache: cache), shardState)
        }
        var out: [(loss: Double, gradients: ParameterStore)] = []
        for k in 0..<shards.count {
            let r = results[k]!
            results[k] = nil
            out.append((r.loss, r.gradients))
            if let s = r.state { states![shards.lowerBound + k] = s }
        }
        return out
    }

    /// Mean cross-entropy without gradients (evaluation mode: no dropout, fixed features).
    public func loss(tokens: [Int], targets: [Int], batch: Int, state: inout ModelState?) -> Double {
        var rng = FWPRandom(seed: 0)
        let (logits, _) = forward(tokens: tokens, batch: batch, state: &state, training: false, rng: &rng)
        return CrossEntropy.lossAndGradient(logits: logits, targets: targets).loss
    }

    /// Recurrent inference: consumes one token per sequence and returns next-token logits (B × V).
    ///
    /// Fast-weight layers carry W (and z) in `state`, so memory is constant in the context length;
    /// softmax layers carry a growing key/value cache.
    public func step(tokens: [Int], state: inout ModelState) -> Tensor {
        precondition(tokens.count == state.batch, "one token per sequence")
        var rng = FWPRandom(seed: 0)
        var s: ModelState? = state
        // Only `s` refers to the layers' arrays now, so `forward` updates them in place.
        state = ModelState(layers: [], position: state.position, batch: state.batch)
        let (logits, _) = forward(tokens: tokens, batch: state.batch, state: &s, training: false, rng: &rng)
        state = s!
        return logits
    }

    private func scaleInPlace(_ x: inout Tensor, _ s: Float) {
        for i in 0..<x.count { x.storage[i] *= s }
    }

    private func addPositions(_ x: inout Tensor, batch: Int, steps: Int, offset: Int) {
        let d = config.modelSize
        for t in 0..<steps {
            let pos = Double(offset + t)
            for i in 0..<(d / 2) {
                let freq = Foundation.pow(10000.0, -Double(2 * i) / Double(d))
                let s = Float(Foundation.sin(pos * freq)), c = Float(Foundation.cos(pos * freq))
                for b in 0..<batch {
                    let r = (b * steps + t) * d
                    x.storage[r + 2 * i] += s
                    x.storage[r + 2 * i + 1] += c
                }
            }
        }
    }
}
