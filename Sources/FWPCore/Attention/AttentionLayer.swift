import CKernels
import Foundation

/// Which attention a layer uses.
public enum AttentionKind: String, Sendable, Codable, CaseIterable {
    /// Causal softmax attention (the Transformer baseline).
    case softmax
    /// A fast-weight memory (linear attention, delta rule, …).
    case fastWeight = "fast-weight"
}

/// How a fast-weight layer computes its recurrence over a segment.
public enum FastWeightAlgorithm: Sendable, Equatable {
    /// Chunkwise for segments of at least `ChunkwiseKernel.minimumSteps` steps without attention
    /// normalisation, the fused recurrence otherwise (step-by-step inference, short segments).
    case automatic
    /// Always the fused per-row recurrence (`FastWeightKernel`).
    case recurrent
    /// The chunkwise form with this chunk size where it applies (no attention normalisation).
    case chunkwise(Int)
}

/// The carried state of one attention layer for a batch of B sequences.
public struct AttentionState: Sendable, Equatable {
    /// Fast weights, B·H blocks of d_head × d_dot (row-major), for fast-weight layers.
    public var weights: TensorStorage
    /// Normaliser z, B·H blocks of d_dot, for attention normalisation.
    public var normalizer: TensorStorage
    /// Cached keys and values for softmax layers: per (b, h), `length` rows of d_head.
    public var keys: [[Float]]
    public var values: [[Float]]
    public var length: Int
    /// The short convolution's last w − 1 inputs per sequence (empty without one).
    public var convolution: TensorStorage = []
    /// The recurrent fast nets' fast matrices and vectors per sequence (`RecurrentFastNet`'s
    /// state; empty for the linear fast net).
    public var recurrent: TensorStorage = []

    /// An empty state that holds a layer's place in `ModelState` while the layer runs.
    static let placeholder = AttentionState(weights: [], normalizer: [], keys: [], values: [], length: 0)
}

/// Multi-head causal attention, fast-weight or softmax, with projections.
///
/// Parameters (prefix `layers.{i}.attn`): `qkv.weight` (3·H·d_head × D; rows are q, k, v),
/// `out.weight` (D × H·d_head), for the delta rules `beta.weight` (H × D), `beta.bias` (H), and
/// for the gated delta rule `decay.weight` (H × D), `decay.bias` (H). The recurrent fast nets
/// (`LMConfig.fastNet`) add `recurrent.weight`: the Delta RNN's and LSTM's recurrent projection
/// (H·gates·(2·d_head + 1) × D) or the RDN's slow recurrent matrices (H·(3·d_head + 1) × d_head);
/// the Delta LSTM's q, k, v and β have 3H heads (one delta memory per gate).
/// FAVOR+ layers keep a buffer `favor_projection` (m × d_head) used in evaluation.
public struct AttentionLayer: Sendable {
    public let kind: AttentionKind
    public let heads: Int
    public let headSize: Int
    public let featureMap: FeatureMap
    public let rule: UpdateRule
    public let normalization: Normalization
    /// The fast net: linear (the 2021 models) or one of the recurrent FWPs.
    public let fastNet: FastNet
    /// Heads of the layer's delta memory (its q, k, v and β): H, or 3H for the Delta LSTM.
    let memoryHeads: Int
    /// The recurrent fast nets' sequential part, and its weight (`recurrent.weight`).
    var recurrentNet: RecurrentFastNet?
    let recurrentWeight: Linear?
    /// Factor applied to fast-weight outputs (1/√d_head when enabled in the config).
    public let outputScale: Float
    public let qkv: Linear
    public let out: Linear
    public let beta: Linear?
    /// The gated delta rule's decay logits: α = σ(decay(x)).
    public let decay: Linear?
    /// The short convolution on q, k, v (`LMConfig.shortConvolution`).
    let convolution: ShortConvolution?
    /// Index of the FAVOR+ projection in the model's buffer store.
    public let favorBuffer: Int?
    /// Recurrent or chunkwise computation of the fast-weight memory.
    public var algorithm = FastWeightAlgorithm.automatic
    /// Softmax: query steps per block of the causal products in training (`SoftmaxAttention`);
    /// nil lets it choose. The result does not depend on it.
    var causalBlock: Int? = nil
    /// Softmax: train with the online form from this segment length on (nil: its default), in
    /// blocks of `onlineBlock` steps (`SoftmaxAttention`); the result does not depend on either.
    var onlineFrom: Int? = nil
    var onlineBlock = 64
    /// FAVOR+: the projection a training forward uses instead of drawing its own (set by
    /// `LanguageModel` when one step's shards share the draw).
    var drawnProjection: Tensor? = nil

    public init(
        prefix: String, config: LMConfig, store: inout ParameterStore, buffers: inout ParameterStore,
        rng: inout FWPRandom
    ) {
        let d = config.modelSize, hd = config.heads * config.headSize
        kind = config.attention
        heads = config.heads
        fastNet = kind == .fastWeight ? config.fastNet : .linear
        memoryHeads = heads * fastNet.memoriesPerHead
        headSize = config.headSize
        featureMap = FeatureMap(config.featureMap, inputSize: config.headSize)
        rule = config.updateRule
        normalization = config.normalization
        outputScale = config.scaleOutput ? 1 / Float(config.headSize).squareRoot() : 1
        let std = config.initStd
        qkv = Linear(
            "\(prefix).qkv", in: d, out: 3 * memoryHeads * headSize, bias: false, std: std, store: &store, rng: &rng)
        convolution =
            config.shortConvolution > 0
            ? ShortConvolution(
                "\(prefix).conv", width: config.shortConvolution, channels: hd, store: &store, rng: &rng) : nil
        if kind == .fastWeight && rule.hasBeta {
            beta = Linear(
                "\(prefix).beta", in: d, out: memoryHeads, bias: true, std: std, store: &store, rng: &rng)
        } else {
            beta = nil
        }
        if kind == .fastWeight && rule == .gatedDelta {
            let gate = Linear("\(prefix).decay", in: d, out: heads, bias: true, std: std, store: &store, rng: &rng)
            // Head h starts with α ≈ 1 − 2^−(2 + 4h/(H−1)) (from 0.75 to 0.984): a spread of
            // memory lengths from a few steps to a few dozen, for the data to adjust.
            for h in 0..<heads {
                let e = -(2 + 4 * Float(h) / Float(max(heads - 1, 1)))
                let a = 1 - powf(2, e)
                store.values[gate.bias!].storage[h] = logf(a / (1 - a))
            }
            decay = gate
        } else {
            decay = nil
        }
        if fastNet != .linear {
            let net = RecurrentFastNet(
                kind: fastNet, heads: heads, headSize: headSize, outputScale: outputScale)
            recurrentNet = net
            recurrentWeight =
                fastNet == .rdn
                ? Linear(
                    "\(prefix).recurrent", in: headSize, out: heads * net.slowRows, bias: false, std: std,
                    store: &store, rng: &rng)
                : Linear(
                    "\(prefix).recurrent", in: d, out: heads * net.projectionWidthPerHead, bias: false, std: std,
                    store: &store, rng: &rng)
        } else {
            (recurrentNet, recurrentWeight) = (nil, nil)
        }
        out = Linear(
            "\(prefix).out", in: hd, out: d, bias: false, std: std / (2 * Float(config.layers)).squareRoot(),
            store: &store, rng: &rng)
        if kind == .fastWeight, case .favor(let m) = config.featureMap {
            favorBuffer = buffers.add(
                "\(prefix).favor_projection",
                FeatureMap.favorProjection(features: m, inputSize: config.headSize, using: &rng))
        } else {
            favorBuffer = nil
        }
    }

    var keySize: Int { kind == .softmax ? headSize : featureMap.outputSize }

    /// The fast-weight memory between this layer's projections (fast-weight layers).
    var fastWeight: FastWeightAttention {
        FastWeightAttention(
            heads: memoryHeads, headSize: headSize, featureMap: featureMap, rule: rule, normalization: normalization,
            outputScale: fastNet == .linear ? outputScale : 1, favorBuffer: favorBuffer, algorithm: algorithm,
            drawnProjection: drawnProjection)
    }

    /// The softmax attention between this layer's projections (softmax layers).
    var softmax: SoftmaxAttention {
        SoftmaxAttention(
            heads: heads, headSize: headSize, causalBlock: causalBlock, onlineThreshold: onlineFrom,
            onlineBlock: onlineBlock)
    }

    /// A zero state for `batch` sequences.
    public func initialState(batch: Int) -> AttentionState {
        let fw = kind == .fastWeight, memory = fw && fastNet != .rdn
        return AttentionState(
            weights: memory ? TensorStorage(repeating: 0, count: batch * memoryHeads * headSize * keySize) : [],
            normalizer: fw && normalization == .attention
                ? TensorStorage(repeating: 0, count: batch * heads * keySize) : [],
            keys: fw ? [] : Array(repeating: [], count: batch * heads),
            values: fw ? [] : Array(repeating: [], count: batch * heads),
            length: 0,
            convolution: TensorStorage(repeating: 0, count: batch * (convolution?.stateCount ?? 0)),
            recurrent: TensorStorage(repeating: 0, count: batch * (recurrentNet?.stateCount ?? 0)))
    }

    /// Everything the backward pass needs: the layer's input and attended output, and the
    /// memory's own cache.
    public struct Cache {
        var input: Tensor
        var attended: Tensor  // N × H·d_head (input of `out`)
        var memory: Memory
        var batch: Int, steps: Int
        var convolution: ShortConvolution.Cache? = nil

        enum Memory {
            case softmax(SoftmaxAttention.Cache)
            case fastWeight(FastWeightAttention.Cache)
            /// A recurrent fast net: its inputs and cache, and the delta memory's (Delta RNN, LSTM).
            case recurrent(RecurrentFastNet.Inputs, RecurrentFastNet.Cache, FastWeightAttention.Cache?)
        }
    }

    /// The layer's output for x (B·T × D, batch-major) and the cache for `backward`.
    ///
    /// `state`, if given, is the carried state at entry and is replaced by the state after the
    /// segment (fast-weight layers: truncated BPTT, no gradient flows into it).
    public func forward(
        _ x: Tensor, batch: Int, steps: Int, _ p: ParameterStore, _ buffers: ParameterStore,
        state: inout AttentionState?, training: Bool, rng: inout FWPRandom, threads: ComputeThreads
    ) -> (Tensor, Cache) {
        let cache = attend(
            x, batch: batch, steps: steps, p, buffers, state: &state, training: training, rng: &rng, threads: threads)
        return (out.forward(cache.attended, p, threads: threads), cache)
    }

    /// `forward` with the output added to `residual` by the output projection itself (one pass
    /// over the residual stream instead of an output tensor and a sum).
    func forward(
        _ x: Tensor, batch: Int, steps: Int, _ p: ParameterStore, _ buffers: ParameterStore,
        state: inout AttentionState?, training: Bool, rng: inout FWPRandom, threads: ComputeThreads,
        addingTo residual: inout Tensor
    ) -> Cache {
        let cache = attend(
            x, batch: batch, steps: steps, p, buffers, state: &state, training: training, rng: &rng, threads: threads)
        out.forward(cache.attended, p, addingTo: &residual, threads: threads)
        return cache
    }

    /// Everything up to the output projection; `attended` is its input.
    private func attend(
        _ x: Tensor, batch: Int, steps: Int, _ p: ParameterStore, _ buffers: ParameterStore,
        state: inout AttentionState?, training: Bool, rng: inout FWPRandom, threads: ComputeThreads
    ) -> Cache {
        let n = batch * steps, hd = heads * headSize
        var (qRaw, kRaw, v, betaLogits, decayLogits) = projectParts(x, p, threads: threads)
        var convolutionCache: ShortConvolution.Cache? = nil
        if let convolution {
            var carried: TensorStorage? = state.map { $0.convolution }
            let (outs, c) = convolution.forward(
                [qRaw, kRaw, v], batch: batch, steps: steps, p, state: &carried, threads: threads)
            (qRaw, kRaw, v) = (outs[0], outs[1], outs[2])
            convolutionCache = c
            if let carried { state!.convolution = carried }
        }
        switch kind {
        case .softmax:
            var c = SoftmaxAttention.Cache(
                qRaw: qRaw, kRaw: kRaw, v: v, core: Tensor(shape: [n, hd]), probabilities: [], batch: batch,
                steps: steps)
            softmax.forward(&c, state: &state, threads: threads)
            return Cache(
                input: x, attended: c.core, memory: .softmax(c), batch: batch, steps: steps,
                convolution: convolutionCache)
        case .fastWeight where recurrentNet != nil:
            let net = recurrentNet!
            var inputs = RecurrentFastNet.Inputs()
            var memoryCache: FastWeightAttention.Cache? = nil
            if fastNet == .rdn {
                (inputs.q, inputs.k, inputs.v, inputs.betaLogits) = (qRaw, kRaw, v, betaLogits)
                inputs.slow = p.values[recurrentWeight!.weight]
            } else {
                let c = runMemory(
                    qRaw, kRaw, v, betaLogits, decayLogits, batch: batch, steps: steps, buffers, state: &state,
                    training: training, rng: &rng, threads: threads)
                inputs.z = fastWeight.attended(c)
                inputs.projection = recurrentWeight!.forward(x, p)
                memoryCache = c
            }
            var carried: TensorStorage? = state.map { $0.recurrent }
            let c = net.forward(inputs, batch: batch, steps: steps, state: &carried, threads: threads)
            if let carried { state!.recurrent = carried }
            var attended = c.core
            if outputScale != 1 { Vec.scaleTensor(outputScale, &attended) }
            return Cache(
                input: x, attended: attended, memory: .recurrent(inputs, c, memoryCache), batch: batch, steps: steps)
        case .fastWeight:
            let c = runMemory(
                qRaw, kRaw, v, betaLogits, decayLogits, batch: batch, steps: steps, buffers, state: &state,
                training: training, rng: &rng, threads: threads)
            return Cache(
                input: x, attended: fastWeight.attended(c), memory: .fastWeight(c), batch: batch, steps: steps,
                convolution: convolutionCache)
        }
    }

    /// The fast-weight memory (`fastWeight`) over q, k, v and the gates: its cache, `core` filled.
    private func runMemory(
        _ qRaw: Tensor, _ kRaw: Tensor, _ v: Tensor, _ betaLogits: Tensor?, _ decayLogits: Tensor?, batch: Int,
        steps: Int, _ buffers: ParameterStore, state: inout AttentionState?, training: Bool, rng: inout FWPRandom,
        threads: ComputeThreads
    ) -> FastWeightAttention.Cache {
        var c = FastWeightAttention.Cache(
            qRaw: qRaw, kRaw: kRaw, v: v, batch: batch, steps: steps, heads: memoryHeads, headSize: headSize)
        fastWeight.forward(
            &c, betaLogits: betaLogits, decayLogits: decayLogits, buffers, state: &state, training: training,
            rng: &rng, threads: threads)
        return c
    }

    /// Accumulates parameter gradients and returns dx. With `overwrite` the gradients of the
    /// weights in `overwrittenGradients` are written, not added (g's entries for them may be
    /// uninitialised).
    public func backward(
        _ dOut: Tensor, cache: Cache, _ p: ParameterStore, _ g: inout ParameterStore, threads: ComputeThreads,
        overwrite: Bool = false
    ) -> Tensor {
        let n = cache.batch * cache.steps, hd = memoryHeads * headSize
        let dAttended = out.backward(dOut, input: cache.attended, p, &g, overwrite: overwrite, threads: threads)
        var dqRaw: Tensor, dkRaw: Tensor, dv: Tensor
        var dBetaLogit: Tensor? = nil, dDecayLogit: Tensor? = nil
        let width = projectionWidth
        var dProjected = Tensor(uninitializedShape: [n, width])  // every column written below
        var direct = false
        var recurrentDx: Tensor? = nil
        switch cache.memory {
        case .recurrent(let inputs, let c, let memoryCache):
            let gr = recurrentNet!.backward(dAttended, inputs, cache: c, threads: threads)
            if let memoryCache {
                let memory = fastWeight
                (dqRaw, dkRaw, dv, dBetaLogit, dDecayLogit) = memory.backward(
                    memory.coreGradient(gr.z!, cache: memoryCache), cache: memoryCache, threads: threads)
                recurrentDx = recurrentWeight!.backward(gr.projection!, input: cache.input, p, &g)
            } else {
                (dqRaw, dkRaw, dv, dBetaLogit) = (gr.q!, gr.k!, gr.v!, gr.betaLogits)
                Vec.addTensor(gr.slow!, into: &g.values[recurrentWeight!.weight])
            }
        case .softmax(let c):
            (dqRaw, dkRaw, dv) = softmax.backward(dAttended, cache: c, threads: threads)
        case .fastWeight(let c):
            let memory = fastWeight
            let dCore = memory.coreGradient(dAttended, cache: c)
            // Where the chunkwise kernel applies the feature map itself, it writes dq, dk and dv
            // straight into their columns of dProjected, not into tensors of their own to be copied.
            direct = c.chunkSize != nil && memory.featureMapInKernel(steps: c.steps) && convolution == nil
            if direct {
                (dqRaw, dkRaw, dv, dBetaLogit, dDecayLogit) = dProjected.withUnsafeMutablePointer { pp in
                    memory.backward(dCore, cache: c, threads: threads, into: SharedPointer(pp))
                }
            } else {
                (dqRaw, dkRaw, dv, dBetaLogit, dDecayLogit) = memory.backward(dCore, cache: c, threads: threads)
            }
        }
        precondition((beta != nil) == (dBetaLogit != nil), "β gradient missing")
        precondition((decay != nil) == (dDecayLogit != nil), "decay gradient missing")
        if let convolution, let cc = cache.convolution {
            let d = convolution.backward(
                [dqRaw, dkRaw, dv], cache: cc, batch: cache.batch, steps: cache.steps, p, &g, threads: threads)
            (dqRaw, dkRaw, dv) = (d[0], d[1], d[2])
        }
        dProjected.withUnsafeMutablePointer { pp in
            if !direct {
                dqRaw.withUnsafePointer { fwp_copy_rows($0, hd, pp, width, n, hd) }
                dkRaw.withUnsafePointer { fwp_copy_rows($0, hd, pp + hd, width, n, hd) }
                dv.withUnsafePointer { fwp_copy_rows($0, hd, pp + 2 * hd, width, n, hd) }
            }
            dBetaLogit?.withUnsafePointer { fwp_copy_rows($0, memoryHeads, pp + 3 * hd, width, n, memoryHeads) }
            dDecayLogit?.withUnsafePointer { fwp_copy_rows($0, heads, pp + 3 * hd + heads, width, n, heads) }
        }
        guard let beta, let dBetaLogit else {
            precondition(recurrentDx == nil, "the recurrent fast nets take the delta rule")
            return qkv.backward(dProjected, input: cache.input, p, &g, overwrite: overwrite, threads: threads)
        }

        // One product for the weight gradients of qkv and β together, split into the two.
        var dw = Tensor(uninitializedShape: [width, qkv.inFeatures])  // beta 0: written in full
        BLAS.gemm(dProjected, transposeA: true, cache.input, beta: 0, into: &dw, threads: threads)
        let split = 3 * hd * qkv.inFeatures
        dw.withUnsafePointer { pw in
            /// The part of dw from `offset` written into (or, without `overwrite`, added to) g's entry `index`.
            func put(_ offset: Int, into index: Int) {
                let count = g.values[index].count
                g.values[index].withUnsafeMutablePointer {
                    if overwrite {
                        $0.update(from: pw + offset, count: count)
                    } else {
                        Vec.axpy(1, pw + offset, $0, count)
                    }
                }
            }
            put(0, into: qkv.weight)
            put(split, into: beta.weight)
            if let decay { put(split + heads * qkv.inFeatures, into: decay.weight) }
        }
        addColumnSums(dBetaLogit, into: &g.values[beta.bias!])
        if let decay, let dDecayLogit { addColumnSums(dDecayLogit, into: &g.values[decay.bias!]) }
        guard var dx = recurrentDx else { return BLAS.matmul(dProjected, projectionWeight(p), threads: threads) }
        BLAS.gemm(dProjected, projectionWeight(p), beta: 1, into: &dx, threads: threads)
        return dx
    }

    /// The weights whose gradients `backward` writes with `overwrite`.
    var overwrittenGradients: [Int] {
        [qkv.weight, out.weight] + (beta.map { [$0.weight] } ?? []) + (decay.map { [$0.weight] } ?? [])
    }

    /// Columns of the input projection: q, k, v, for the delta rules the H β logits, and for the
    /// gated rule the H decay logits (as FastWeightAttention's).
    private var projectionWidth: Int {
        3 * memoryHeads * headSize + (beta != nil ? memoryHeads : 0) + (decay != nil ? heads : 0)
    }

    /// The weight of the input projection: qkv's rows, then β's rows for the delta rule, so that
    /// the backward makes one dx product for q, k, v and the β logits instead of four and a sum.
    private func projectionWeight(_ p: ParameterStore) -> Tensor {
        guard let beta else { return p.values[qkv.weight] }
        var w = Tensor(uninitializedShape: [projectionWidth, qkv.inFeatures])  // both parts copied in
        let split = 3 * memoryHeads * headSize * qkv.inFeatures
        w.withUnsafeMutablePointer { pw in
            p.values[qkv.weight].withUnsafePointer { pw.update(from: $0, count: split) }
            p.values[beta.weight].withUnsafePointer {
                (pw + split).update(from: $0, count: memoryHeads * qkv.inFeatures)
            }
            if let decay {
                p.values[decay.weight].withUnsafePointer {
                    (pw + split + heads * qkv.inFeatures).update(from: $0, count: heads * qkv.inFeatures)
                }
            }
        }
        return w
    }

    /// q, k, v and the β logits from x, each by its own product into its own tensor (the rows of
    /// qkv's weight for q, then k, then v): the layer reads them there, with no columns to copy
    /// out of one N × projectionWidth product.
    private func projectParts(_ x: Tensor, _ p: ParameterStore, threads: ComputeThreads) -> (
        q: Tensor, k: Tensor, v: Tensor, betaLogits: Tensor?, decayLogits: Tensor?
    ) {
        precondition(x.columns == qkv.inFeatures, "Linear expects \(qkv.inFeatures) features, got \(x.columns)")
        let n = x.rows, hd = memoryHeads * headSize, d = qkv.inFeatures
        // Shaped as the layer reads them: one row per position and head. Three allocations: one
        // array shared by all three would be copied on each first write.
        var parts = (0..<3).map { _ in Tensor(uninitializedShape: [n * memoryHeads, headSize]) }
        x.withUnsafePointer { px in
            p.values[qkv.weight].withUnsafePointer { pw in
                for i in 0..<3 {
                    parts[i].withUnsafeMutablePointer { py in  // beta 0: written in full
                        BLAS.forEachRowPiece(n, n: hd, k: d, transposeB: true, threads: threads) { r in
                            BLAS.gemm(
                                transposeA: false, transposeB: true, m: r.count, n: hd, k: d, a: px + r.lowerBound * d,
                                lda: d, b: pw + i * hd * d, ldb: d, beta: 0, c: py + r.lowerBound * hd, ldc: hd)
                        }
                    }
                }
            }
        }
        var betaLogits: Tensor? = nil
        if let beta {
            var b = Tensor(uninitializedShape: [n, memoryHeads])
            BLAS.linear(x, weight: p.values[beta.weight], bias: p.values[beta.bias!], into: &b, threads: threads)
            betaLogits = b
        }
        var decayLogits: Tensor? = nil
        if let decay {
            var a = Tensor(uninitializedShape: [n, heads])
            BLAS.linear(x, weight: p.values[decay.weight], bias: p.values[decay.bias!], into: &a, threads: threads)
            decayLogits = a
        }
        return (parts[0], parts[1], parts[2], betaLogits, decayLogits)
    }
}

extension Vec {
    /// y = alpha · x (x and y do not overlap).
    static func scale(_ alpha: Float, from x: UnsafePointer<Float>, to y: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { y[i] = alpha * x[i] }
    }

    static func scaleTensor(_ alpha: Float, _ x: inout Tensor) {
        let n = x.count
        x.withUnsafeMutablePointer { p in scale(alpha, p, n) }
    }

    static func addTensor(_ x: Tensor, into y: inout Tensor) {
        precondition(x.count == y.count)
        x.withUnsafePointer { px in y.withUnsafeMutablePointer { py in axpy(1, px, py, x.count) } }
    }
}
