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
    public var weights: [Float]
    /// Normaliser z, B·H blocks of d_dot, for attention normalisation.
    public var normalizer: [Float]
    /// Cached keys and values for softmax layers: per (b, h), `length` rows of d_head.
    public var keys: [[Float]]
    public var values: [[Float]]
    public var length: Int

    /// An empty state that holds a layer's place in `ModelState` while the layer runs.
    static let placeholder = AttentionState(weights: [], normalizer: [], keys: [], values: [], length: 0)
}

/// Multi-head causal attention, fast-weight or softmax, with projections.
///
/// Parameters (prefix `layers.{i}.attn`): `qkv.weight` (3·H·d_head × D; rows are q, k, v),
/// `out.weight` (D × H·d_head), and for the delta rule `beta.weight` (H × D), `beta.bias` (H).
/// FAVOR+ layers keep a buffer `favor_projection` (m × d_head) used in evaluation.
public struct AttentionLayer: Sendable {
    public let kind: AttentionKind
    public let heads: Int
    public let headSize: Int
    public let featureMap: FeatureMap
    public let rule: UpdateRule
    public let normalization: Normalization
    /// Factor applied to fast-weight outputs (1/√d_head when enabled in the config).
    public let outputScale: Float
    public let qkv: Linear
    public let out: Linear
    public let beta: Linear?
    /// Index of the FAVOR+ projection in the model's buffer store.
    public let favorBuffer: Int?
    /// Recurrent or chunkwise computation of the fast-weight memory.
    public var algorithm = FastWeightAlgorithm.automatic
    /// Softmax: query steps per block of the causal products in training (blocks wholly above
    /// the diagonal are skipped, about half the work); the result does not depend on it. Nil:
    /// `causalBlock(steps:)` chooses.
    var causalBlock: Int? = nil

    /// 32 up to T = 256 with the small kernel's AVX-512 blocks (more of the upper triangle
    /// skipped; `fwp-bench --only lm-softmax` +4–5% against 64), 64 otherwise (at T = 1024 blocks
    /// of 32 measured 8–10% slower: their long dV and dK products go to OpenBLAS 32 rows at a time).
    func causalBlock(steps: Int) -> Int {
        causalBlock ?? (steps <= 256 && KernelDispatch.avx512 ? 32 : 64)
    }
    /// The softmax blocks' products (k up to T) run on the small kernel up to this dimension:
    /// with its AVX-512 blocks `fwp-bench --only lm-softmax` measured 5–7% faster at 256 than
    /// with OpenBLAS taking those over 128 (the AVX2 blocks keep the general limit).
    var softmaxSmallLimit: Int { KernelDispatch.avx512 ? 256 : BLAS.smallKernelLimit }

    init(
        prefix: String, config: LMConfig, store: inout ParameterStore, buffers: inout ParameterStore,
        rng: inout FWPRandom
    ) {
        let d = config.modelSize, hd = config.heads * config.headSize
        kind = config.attention
        heads = config.heads
        headSize = config.headSize
        featureMap = FeatureMap(config.featureMap, inputSize: config.headSize)
        rule = config.updateRule
        normalization = config.normalization
        outputScale = config.scaleOutput ? 1 / Float(config.headSize).squareRoot() : 1
        let std = config.initStd
        qkv = Linear("\(prefix).qkv", in: d, out: 3 * hd, bias: false, std: std, store: &store, rng: &rng)
        if kind == .fastWeight && rule == .delta {
            beta = Linear("\(prefix).beta", in: d, out: heads, bias: true, std: std, store: &store, rng: &rng)
        } else {
            beta = nil
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

    /// A zero state for `batch` sequences.
    public func initialState(batch: Int) -> AttentionState {
        let fw = kind == .fastWeight
        return AttentionState(
            weights: fw ? [Float](repeating: 0, count: batch * heads * headSize * keySize) : [],
            normalizer: fw && normalization == .attention ? [Float](repeating: 0, count: batch * heads * keySize) : [],
            keys: fw ? [] : Array(repeating: [], count: batch * heads),
            values: fw ? [] : Array(repeating: [], count: batch * heads),
            length: 0)
    }

    /// Everything the backward pass needs.
    struct Cache {
        var input: Tensor
        var qRaw: Tensor, kRaw: Tensor, v: Tensor  // (N·H) × d_head
        var qPhi: Tensor, kPhi: Tensor  // (N·H) × d_dot, before sum normalisation (empty on the fused C path)
        var qSums: [Float], kSums: [Float]
        var q: Tensor, k: Tensor  // what the memory saw
        var beta: Tensor?  // (N·H), after the sigmoid
        var saved: AlignedFloats, denominators: [Float]
        /// Set when the chunkwise kernel ran; `saved` then holds its data, and `core` already holds
        /// outputScale · y (the kernel's product applied the scale).
        var chunkSize: Int?
        var core: Tensor  // N × H·d_head, before outputScale
        var attended: Tensor  // N × H·d_head, after outputScale (input of `out`)
        var probabilities: [Float]  // softmax: B·H blocks of T × T
        var finalWeights: [Float], finalNormalizer: [Float]
        var projection: Tensor?
        var batch: Int, steps: Int
    }

    /// The layer's output for x (B·T × D, batch-major) and the cache for `backward`.
    ///
    /// `state`, if given, is the carried state at entry and is replaced by the state after the
    /// segment (fast-weight layers: truncated BPTT, no gradient flows into it).
    func forward(
        _ x: Tensor, batch: Int, steps: Int, _ p: ParameterStore, _ buffers: ParameterStore,
        state: inout AttentionState?, training: Bool, rng: inout FWPRandom, threads: ComputeThreads
    ) -> (Tensor, Cache) {
        let cache = attend(
            x, batch: batch, steps: steps, p, buffers, state: &state, training: training, rng: &rng, threads: threads)
        return (out.forward(cache.attended, p), cache)
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
        out.forward(cache.attended, p, addingTo: &residual)
        return cache
    }

    /// Everything up to the output projection; `attended` is its input.
    private func attend(
        _ x: Tensor, batch: Int, steps: Int, _ p: ParameterStore, _ buffers: ParameterStore,
        state: inout AttentionState?, training: Bool, rng: inout FWPRandom, threads: ComputeThreads
    ) -> Cache {
        let n = batch * steps, hd = heads * headSize
        let (qRaw, kRaw, v, betaLogits) = projectParts(x, p)
        var cache = Cache(
            input: x, qRaw: qRaw, kRaw: kRaw, v: v, qPhi: qRaw, kPhi: kRaw, qSums: [], kSums: [], q: qRaw, k: kRaw,
            // Fast-weight layers allocate `core` themselves (uninitialised where every row is
            // written); `attended` is assigned below.
            beta: nil, saved: .empty, denominators: [], chunkSize: nil,
            core: kind == .softmax ? Tensor(shape: [n, hd]) : Tensor(shape: [0, hd]), attended: Tensor(shape: [0, hd]),
            probabilities: [], finalWeights: [], finalNormalizer: [], projection: nil, batch: batch, steps: steps)
        if kind == .softmax {
            softmaxForward(&cache, state: &state, threads: threads)
        } else {
            fastWeightCoreForward(
                &cache, betaLogits: betaLogits, buffers, state: &state, training: training, rng: &rng,
                threads: threads)
        }
        if kind == .fastWeight && outputScale != 1 && cache.chunkSize == nil {
            // One pass into a new tensor (the recurrence's backward reads `core` unscaled).
            cache.attended = Tensor(uninitializedShape: cache.core.shape)
            let count = cache.core.count
            cache.core.withUnsafePointer { pc in
                cache.attended.withUnsafeMutablePointer { pa in Vec.scale(outputScale, from: pc, to: pa, count) }
            }
        } else {
            cache.attended = cache.core
        }
        return cache
    }

    /// Everything between the projections of a fast-weight layer: feature map, normalisation,
    /// β = σ(logits), and the memory; `cache` holds qRaw, kRaw, v on entry, `core` on exit.
    func fastWeightCoreForward(
        _ cache: inout Cache, betaLogits: Tensor?, _ buffers: ParameterStore, state: inout AttentionState?,
        training: Bool, rng: inout FWPRandom, threads: ComputeThreads
    ) {
        let n = cache.batch * cache.steps, dh = headSize
        if let favorBuffer {
            if training, case .favor(let m) = featureMap.kind {
                cache.projection = FeatureMap.favorProjection(features: m, inputSize: dh, using: &rng)
            } else {
                cache.projection = buffers.values[favorBuffer]
            }
        }
        if featureMapInKernel(steps: cache.steps) {
            // The chunkwise kernel applies ELU + 1 and the sum normalisation as it gathers q and k.
            cache.q = cache.qRaw
            cache.k = cache.kRaw
        } else if fusedEluSum {
            (cache.qPhi, cache.q, cache.qSums) = SumNormalization.eluPlusOneForward(cache.qRaw, threads: threads)
            (cache.kPhi, cache.k, cache.kSums) = SumNormalization.eluPlusOneForward(cache.kRaw, threads: threads)
        } else {
            cache.qPhi = featureMap.forward(cache.qRaw, projection: cache.projection, threads: threads)
            cache.kPhi = featureMap.forward(cache.kRaw, projection: cache.projection, threads: threads)
            if normalization == .sum {
                (cache.q, cache.qSums) = SumNormalization.forward(cache.qPhi, threads: threads)
                (cache.k, cache.kSums) = SumNormalization.forward(cache.kPhi, threads: threads)
            } else {
                cache.q = cache.qPhi
                cache.k = cache.kPhi
            }
        }
        if let logits = betaLogits {
            var b = Tensor(uninitializedShape: [n * heads])  // written in full below
            logits.withUnsafePointer { pl in b.withUnsafeMutablePointer { VectorKernels.sigmoid(pl, $0, n * heads) } }
            cache.beta = b
        }
        fastWeightForward(&cache, state: &state, threads: threads)
    }

    /// ELU + 1 followed by sum normalisation runs as one fused pass (`SumNormalization.eluPlusOneForward`).
    private var fusedEluSum: Bool { featureMap.kind == .eluPlusOne && normalization == .sum }

    /// Whether the chunkwise kernel applies that fused feature map itself, per sequence, as it
    /// gathers q and k (and its backward returns their gradients before it): one pass over q and
    /// k fewer each way. Needs the C kernels.
    private func featureMapInKernel(steps: Int) -> Bool {
        fusedEluSum && VectorKernels.enabled && chunkSize(steps: steps) != nil
    }

    private func kernel(steps: Int) -> FastWeightKernel {
        FastWeightKernel(
            rule: rule, attentionNormalization: normalization == .attention, steps: steps,
            keySize: featureMap.outputSize, valueSize: headSize, keyStride: heads * featureMap.outputSize,
            valueStride: heads * headSize, betaStride: heads)
    }

    /// The chunk size to use for a segment of `steps`, or nil for the recurrence.
    func chunkSize(steps: Int) -> Int? {
        guard kind == .fastWeight, normalization != .attention else { return nil }
        switch algorithm {
        case .recurrent: return nil
        case .chunkwise(let c): return c
        case .automatic: return steps >= ChunkwiseKernel.minimumSteps ? ChunkwiseKernel.defaultChunkSize : nil
        }
    }

    /// The chunkwise kernel for sequences of `steps`; with `outputStride` its backward writes dq,
    /// dk and dv at that row stride (into the input projection's gradient).
    private func chunkwiseKernel(
        steps: Int, chunk: Int, outputStride: Int? = nil, outputScale: Float = 1
    ) -> ChunkwiseKernel {
        ChunkwiseKernel(
            rule: rule, chunkSize: chunk, steps: steps, keySize: featureMap.outputSize, valueSize: headSize,
            keyStride: heads * featureMap.outputSize, valueStride: heads * headSize, betaStride: heads,
            outputKeyStride: outputStride, outputValueStride: outputStride, featureMapped: featureMapInKernel(steps: steps),
            outputScale: outputScale)
    }

    private func fastWeightForward(_ cache: inout Cache, state: inout AttentionState?, threads: ComputeThreads) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dk = featureMap.outputSize, dv = headSize, seqs = batch * heads
        let kern = kernel(steps: steps)
        var weights = state?.weights ?? [Float](repeating: 0, count: seqs * dv * dk)
        // `weights` is then the only reference (no copy-on-write of the state on the first write).
        if state != nil { state!.weights = [] }
        let attn = normalization == .attention
        var zs = attn ? (state?.normalizer ?? [Float](repeating: 0, count: seqs * dk)) : [Float](repeating: 0, count: seqs * dk)
        precondition(weights.count == seqs * dv * dk, "carried state is for another batch size or shape")
        let chunk = chunkSize(steps: steps)
        cache.chunkSize = chunk
        // The chunkwise kernel applies the output scale in the product that makes y.
        let chunked = chunk.map { chunkwiseKernel(steps: steps, chunk: $0, outputScale: outputScale) }
        // Each sequence's part starts on a cache line. The chunkwise forward writes every saved
        // float and every output row; only the recurrence relies on zeroed buffers.
        let savedPerSequence = AlignedFloats.lineRounded(chunked?.packedSavedCount ?? (rule == .delta ? steps * dv : 0))
        cache.saved = AlignedFloats(count: seqs * savedPerSequence, zeroed: chunked == nil)
        let coreShape = [batch * steps, heads * dv]
        cache.core = chunked != nil ? Tensor(uninitializedShape: coreShape) : Tensor(shape: coreShape)
        cache.denominators = [Float](repeating: 0, count: attn ? seqs * steps : 0)
        let q = cache.q, k = cache.k, v = cache.v
        let betaT = cache.beta
        q.withUnsafePointer { pq in
            k.withUnsafePointer { pk in
                v.withUnsafePointer { pv in
                    cache.core.withUnsafeMutablePointer { py in
                        weights.withUnsafeMutableBufferPointer { pw in
                            zs.withUnsafeMutableBufferPointer { pz in
                                do {  // the saved buffer stays alive in `cache`
                                    let ps = UnsafeMutableBufferPointer(start: cache.saved.base, count: cache.saved.count)
                                    cache.denominators.withUnsafeMutableBufferPointer { pden in
                                        let pb = betaT?.storage.withUnsafeBufferPointer { $0.baseAddress! }
                                        let sp = (
                                            SharedConstPointer(pq), SharedConstPointer(pk), SharedConstPointer(pv),
                                            SharedPointer(py), SharedPointer(pw.baseAddress!), SharedPointer(pz.baseAddress!)
                                        )
                                        // Empty arrays may still have a base address: choose by variant, not by pointer.
                                        let sSaved = savedPerSequence > 0 ? ps.baseAddress.map(SharedPointer.init) : nil
                                        let sDen = attn ? pden.baseAddress.map(SharedPointer.init) : nil
                                        let sBeta = pb.map(SharedConstPointer.init)
                                        threads.forEach(seqs) { s in
                                            let b = s / heads, h = s % heads
                                            let row = b * steps * heads + h
                                            if let chunked {
                                                let work = AlignedFloats(count: chunked.scratchCount)  // cache-line aligned
                                                chunked.forwardPacked(
                                                    q: sp.0.base + row * dk, k: sp.1.base + row * dk, v: sp.2.base + row * dv,
                                                    beta: sBeta.map { $0.base + row }, y: sp.3.base + row * dv,
                                                    w: sp.4.base + s * dv * dk, saved: sSaved!.base + s * savedPerSequence,
                                                    scratch: work.base)
                                                return
                                            }
                                            kern.forward(
                                                q: sp.0.base + row * dk, k: sp.1.base + row * dk, v: sp.2.base + row * dv,
                                                beta: sBeta.map { $0.base + row },
                                                y: sp.3.base + row * dv, w: sp.4.base + s * dv * dk, z: sp.5.base + s * dk,
                                                saved: sSaved.map { $0.base + s * savedPerSequence },
                                                denominators: sDen.map { $0.base + s * steps })
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        cache.finalWeights = weights
        cache.finalNormalizer = attn ? zs : []
        if state != nil {
            state!.weights = weights
            if attn { state!.normalizer = zs }
            state!.length += steps
        }
    }


    private func softmaxForward(_ cache: inout Cache, state: inout AttentionState?, threads: ComputeThreads) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dh = headSize, hd = heads * headSize, seqs = batch * heads
        let scale = 1 / Float(dh).squareRoot()
        if var st = state {
            // Recurrent use: append to each sequence's key/value cache and attend over all of it.
            // `st` is then the only reference, so the caches grow in place (not copied per step).
            state = nil
            precondition(st.keys.count == seqs, "carried state is for another batch size")
            for s in 0..<seqs {
                let b = s / heads, h = s % heads
                for t in 0..<steps {
                    let r = (b * steps + t) * hd + h * dh
                    st.keys[s].append(contentsOf: cache.kRaw.storage[r..<r + dh])
                    st.values[s].append(contentsOf: cache.v.storage[r..<r + dh])
                }
            }
            let past = st.length
            for s in 0..<seqs {
                let b = s / heads, h = s % heads
                let total = past + steps
                for t in 0..<steps {
                    let r = (b * steps + t) * hd + h * dh
                    let visible = past + t + 1
                    var scores = [Float](repeating: 0, count: visible)
                    var m = -Float.infinity
                    st.keys[s].withUnsafeBufferPointer { pk in
                        cache.qRaw.withUnsafePointer { pq in
                            for j in 0..<visible {
                                scores[j] = Vec.dot(pq + r, pk.baseAddress! + j * dh, dh) * scale
                                m = max(m, scores[j])
                            }
                        }
                    }
                    var sum: Float = 0
                    for j in 0..<visible {
                        scores[j] = expf(scores[j] - m)
                        sum += scores[j]
                    }
                    for c in 0..<dh {
                        var acc: Float = 0
                        for j in 0..<visible { acc += scores[j] * st.values[s][j * dh + c] }
                        cache.core.storage[r + c] = acc / sum
                    }
                }
                _ = total
            }
            st.length += steps
            state = st
            return
        }
        // Each row block writes columns [0, r1) of its rows (zeros above the diagonal); columns
        // past the block's end are never read, here or in the backward pass, so nothing else is
        // initialised (at T = 2048 zero-filling this buffer was a serial 67 MB memset per layer).
        var probs = UninitializedMemory.floats(seqs * steps * steps)
        let native = VectorKernels.enabled  // each row's softmax as one C kernel call
        let block = causalBlock(steps: steps), smallLimit = softmaxSmallLimit
        cache.qRaw.withUnsafePointer { pq in
            cache.kRaw.withUnsafePointer { pk in
                cache.v.withUnsafePointer { pv in
                    cache.core.withUnsafeMutablePointer { py in
                        probs.withUnsafeMutableBufferPointer { pp in
                            let sp = (
                                SharedConstPointer(pq), SharedConstPointer(pk), SharedConstPointer(pv), SharedPointer(py),
                                SharedPointer(pp.baseAddress!)
                            )
                            threads.forEach(seqs) { s in
                                let b = s / heads, h = s % heads
                                let off = b * steps * hd + h * dh
                                let P = sp.4.base + s * steps * steps
                                // Row blocks of `causalBlock` query steps see keys up to the block's end
                                // only: the products skip the masked upper blocks (about half).
                                var r0 = 0
                                while r0 < steps {
                                    let r1 = min(r0 + block, steps)
                                    BLAS.gemm(
                                        transposeA: false, transposeB: true, m: r1 - r0, n: r1, k: dh, alpha: scale,
                                        a: sp.0.base + off + r0 * hd, lda: hd, b: sp.1.base + off, ldb: hd, beta: 0, c: P + r0 * steps,
                                        ldc: steps, smallLimit: smallLimit)
                                    for t in r0..<r1 {
                                        let row = P + t * steps
                                        if native {
                                            fwp_softmax_row(row, t + 1, r1 - t - 1)
                                            continue
                                        }
                                        let m = Vec.maximum(row, t + 1)
                                        let sum = Vec.expShifted(row, row, t + 1, shift: m)
                                        Vec.scale(1 / sum, row, t + 1)
                                        (row + t + 1).update(repeating: 0, count: r1 - t - 1)
                                    }
                                    BLAS.gemm(
                                        transposeA: false, transposeB: false, m: r1 - r0, n: dh, k: r1,
                                        a: P + r0 * steps, lda: steps, b: sp.2.base + off, ldb: hd, beta: 0,
                                        c: sp.3.base + off + r0 * hd, ldc: hd, smallLimit: smallLimit)
                                    r0 = r1
                                }
                            }
                        }
                    }
                }
            }
        }
        cache.probabilities = probs
    }

    /// Accumulates parameter gradients and returns dx. With `overwrite` the gradients of the
    /// weights in `overwrittenGradients` are written, not added (g's entries for them may be
    /// uninitialised).
    func backward(
        _ dOut: Tensor, cache: Cache, _ p: ParameterStore, _ g: inout ParameterStore, threads: ComputeThreads,
        overwrite: Bool = false
    ) -> Tensor {
        let n = cache.batch * cache.steps, hd = heads * headSize
        var dCore = out.backward(dOut, input: cache.attended, p, &g, overwrite: overwrite)
        // (where the chunkwise kernel scaled its output, it scales this gradient as it gathers it)
        if kind == .fastWeight && outputScale != 1 && cache.chunkSize == nil { Vec.scaleTensor(outputScale, &dCore) }
        var dqRaw: Tensor, dkRaw: Tensor, dv: Tensor
        var dBetaLogit: Tensor? = nil
        let width = projectionWidth
        var dProjected = Tensor(uninitializedShape: [n, width])  // every column written below
        // Where the chunkwise kernel applies the feature map itself, it writes dq, dk and dv
        // straight into their columns of dProjected, not into tensors of their own to be copied.
        let direct = kind == .fastWeight && cache.chunkSize != nil && featureMapInKernel(steps: cache.steps)
        if kind == .softmax {
            (dqRaw, dkRaw, dv) = softmaxBackward(dCore, cache: cache, threads: threads)
        } else if direct {
            (dqRaw, dkRaw, dv, dBetaLogit) = dProjected.withUnsafeMutablePointer { pp in
                fastWeightCoreBackward(dCore, cache: cache, threads: threads, into: SharedPointer(pp))
            }
        } else {
            (dqRaw, dkRaw, dv, dBetaLogit) = fastWeightCoreBackward(dCore, cache: cache, threads: threads)
        }
        precondition((beta != nil) == (dBetaLogit != nil), "β gradient missing")
        dProjected.withUnsafeMutablePointer { pp in
            if !direct {
                dqRaw.withUnsafePointer { fwp_copy_rows($0, hd, pp, width, n, hd) }
                dkRaw.withUnsafePointer { fwp_copy_rows($0, hd, pp + hd, width, n, hd) }
                dv.withUnsafePointer { fwp_copy_rows($0, hd, pp + 2 * hd, width, n, hd) }
            }
            dBetaLogit?.withUnsafePointer { fwp_copy_rows($0, heads, pp + 3 * hd, width, n, heads) }
        }
        guard let beta, let dBetaLogit else {
            return qkv.backward(dProjected, input: cache.input, p, &g, overwrite: overwrite)
        }
        // One product for the weight gradients of qkv and β together, split into the two.
        var dw = Tensor(uninitializedShape: [width, qkv.inFeatures])  // beta 0: written in full
        BLAS.gemm(dProjected, transposeA: true, cache.input, beta: 0, into: &dw)
        let split = 3 * hd * qkv.inFeatures
        dw.withUnsafePointer { pw in
            /// The part of dw from `offset` written into (or, without `overwrite`, added to) g's entry `index`.
            func put(_ offset: Int, into index: Int) {
                let count = g.values[index].count
                g.values[index].withUnsafeMutablePointer {
                    if overwrite { $0.update(from: pw + offset, count: count) } else { Vec.axpy(1, pw + offset, $0, count) }
                }
            }
            put(0, into: qkv.weight)
            put(split, into: beta.weight)
        }
        addColumnSums(dBetaLogit, into: &g.values[beta.bias!])
        return BLAS.matmul(dProjected, projectionWeight(p))
    }

    /// The weights whose gradients `backward` writes with `overwrite`.
    var overwrittenGradients: [Int] { [qkv.weight, out.weight] + (beta.map { [$0.weight] } ?? []) }

    /// Columns of the input projection: q, k, v, and for the delta rule the H β logits.
    private var projectionWidth: Int { 3 * heads * headSize + (beta != nil ? heads : 0) }

    /// The weight of the input projection: qkv's rows, then β's rows for the delta rule, so that
    /// the backward makes one dx product for q, k, v and the β logits instead of four and a sum.
    private func projectionWeight(_ p: ParameterStore) -> Tensor {
        guard let beta else { return p.values[qkv.weight] }
        var w = Tensor(uninitializedShape: [projectionWidth, qkv.inFeatures])  // both parts copied in
        let split = 3 * heads * headSize * qkv.inFeatures
        w.withUnsafeMutablePointer { pw in
            p.values[qkv.weight].withUnsafePointer { pw.update(from: $0, count: split) }
            p.values[beta.weight].withUnsafePointer { (pw + split).update(from: $0, count: heads * qkv.inFeatures) }
        }
        return w
    }

    /// q, k, v and the β logits from x, each by its own product into its own tensor (the rows of
    /// qkv's weight for q, then k, then v): the layer reads them there. (One N × projectionWidth
    /// product with its columns copied out afterwards cost those copies, 0.5–1% of the LM step.)
    private func projectParts(_ x: Tensor, _ p: ParameterStore) -> (q: Tensor, k: Tensor, v: Tensor, betaLogits: Tensor?) {
        precondition(x.columns == qkv.inFeatures, "Linear expects \(qkv.inFeatures) features, got \(x.columns)")
        let n = x.rows, hd = heads * headSize, d = qkv.inFeatures
        // Shaped as the layer reads them: one row per position and head. Three allocations: one
        // array shared by all three would be copied on each first write.
        var parts = (0..<3).map { _ in Tensor(uninitializedShape: [n * heads, headSize]) }
        x.withUnsafePointer { px in
            p.values[qkv.weight].withUnsafePointer { pw in
                for i in 0..<3 {
                    parts[i].withUnsafeMutablePointer { py in  // beta 0: written in full
                        BLAS.gemm(
                            transposeA: false, transposeB: true, m: n, n: hd, k: d, a: px, lda: d, b: pw + i * hd * d,
                            ldb: d, beta: 0, c: py, ldc: hd)
                    }
                }
            }
        }
        var betaLogits: Tensor? = nil
        if let beta {
            var b = Tensor(uninitializedShape: [n, heads])
            BLAS.linear(x, weight: p.values[beta.weight], bias: p.values[beta.bias!], into: &b)
            betaLogits = b
        }
        return (parts[0], parts[1], parts[2], betaLogits)
    }

    /// The backward pass of `fastWeightCoreForward`: gradients of qRaw, kRaw, v and the β logits.
    /// With `projected` (only where the chunkwise kernel applies the feature map itself), the
    /// gradients of qRaw, kRaw and v go to its columns 0, H·d and 2·H·d instead (rows of
    /// `projectionWidth` floats: the input projection's gradient) and come back empty.
    func fastWeightCoreBackward(
        _ dCore: Tensor, cache: Cache, threads: ComputeThreads, into projected: SharedPointer? = nil
    ) -> (Tensor, Tensor, Tensor, Tensor?) {
        let n = cache.batch * cache.steps
        var (dq, dk, dv, dbeta) = fastWeightBackward(dCore, cache: cache, threads: threads, into: projected)
        let dqRaw: Tensor, dkRaw: Tensor
        if featureMapInKernel(steps: cache.steps) {
            (dqRaw, dkRaw) = (dq, dk)  // already through the feature map (see fastWeightCoreForward)
        } else if fusedEluSum {
            dqRaw = SumNormalization.eluPlusOneBackward(
                dq, input: cache.qRaw, phi: cache.qPhi, output: cache.q, sums: cache.qSums, threads: threads)
            dkRaw = SumNormalization.eluPlusOneBackward(
                dk, input: cache.kRaw, phi: cache.kPhi, output: cache.k, sums: cache.kSums, threads: threads)
        } else {
            if normalization == .sum {
                dq = SumNormalization.backward(dq, output: cache.q, sums: cache.qSums, threads: threads)
                dk = SumNormalization.backward(dk, output: cache.k, sums: cache.kSums, threads: threads)
            }
            dqRaw = featureMap.backward(
                dq, input: cache.qRaw, output: cache.qPhi, projection: cache.projection, threads: threads)
            dkRaw = featureMap.backward(
                dk, input: cache.kRaw, output: cache.kPhi, projection: cache.projection, threads: threads)
        }
        var dBetaLogit: Tensor? = nil
        if var db = dbeta, let b = cache.beta {
            for i in 0..<db.count { db.storage[i] *= b.storage[i] * (1 - b.storage[i]) }
            dBetaLogit = db.reshaped([n, heads])
        }
        return (dqRaw, dkRaw, dv, dBetaLogit)
    }

    private func fastWeightBackward(
        _ dCore: Tensor, cache: Cache, threads: ComputeThreads, into projected: SharedPointer? = nil
    ) -> (Tensor, Tensor, Tensor, Tensor?) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dk = featureMap.outputSize, dv = headSize, seqs = batch * heads, n = batch * steps
        precondition(projected == nil || cache.chunkSize != nil, "only the chunkwise kernel writes into the projection")
        let kern = kernel(steps: steps)
        // The chunkwise backward writes (not accumulates) every row of dq, dk, dv and dβ.
        let make = { (shape: [Int]) in cache.chunkSize != nil ? Tensor(uninitializedShape: shape) : Tensor(shape: shape) }
        let outputRows = projected == nil ? n * heads : 0
        var dq = make([outputRows, dk]), dkT = make([outputRows, dk]), dvT = make([outputRows, dv])
        var dbeta: Tensor? = rule == .delta ? make([n * heads]) : nil
        var weights = cache.finalWeights
        var zs = cache.finalNormalizer.isEmpty ? [Float](repeating: 0, count: seqs * dk) : cache.finalNormalizer
        var dbStorage = dbeta?.storage ?? []
        dCore.withUnsafePointer { pdy in
            cache.core.withUnsafePointer { py in
                cache.q.withUnsafePointer { pq in
                    cache.k.withUnsafePointer { pk in
                        cache.v.withUnsafePointer { pv in
                            dq.withUnsafeMutablePointer { pdq in
                                dkT.withUnsafeMutablePointer { pdk in
                                    dvT.withUnsafeMutablePointer { pdv in
                                        weights.withUnsafeMutableBufferPointer { pw in
                                            zs.withUnsafeMutableBufferPointer { pz in
                                                dbStorage.withUnsafeMutableBufferPointer { pdb in
                                                    do {  // the saved buffer stays alive in `cache`
                                                        let ps = UnsafeBufferPointer(start: cache.saved.base, count: cache.saved.count)
                                                        cache.denominators.withUnsafeBufferPointer { pden in
                                                            let pb = cache.beta?.storage.withUnsafeBufferPointer { $0.baseAddress! }
                                                            let c = (
                                                                SharedConstPointer(pdy), SharedConstPointer(py), SharedConstPointer(pq),
                                                                SharedConstPointer(pk), SharedConstPointer(pv)
                                                            )
                                                            let m = (
                                                                SharedPointer(pdq), SharedPointer(pdk), SharedPointer(pdv),
                                                                SharedPointer(pw.baseAddress!), SharedPointer(pz.baseAddress!)
                                                            )
                                                            // Empty arrays may still have a base address.
                                                            let isDelta = rule == .delta, attn = normalization == .attention
                                                            let sdb = isDelta ? pdb.baseAddress.map(SharedPointer.init) : nil
                                                            let ssaved = !ps.isEmpty ? ps.baseAddress.map(SharedConstPointer.init) : nil
                                                            let savedPerSequence = cache.saved.count / seqs
                                                            let width = projectionWidth, hd = heads * headSize
                                                            let chunked = cache.chunkSize.map {
                                                                chunkwiseKernel(
                                                                    steps: steps, chunk: $0, outputStride: projected == nil ? nil : width,
                                                                    outputScale: outputScale)
                                                            }
                                                            let sden = attn ? pden.baseAddress.map(SharedConstPointer.init) : nil
                                                            let sbeta = pb.map(SharedConstPointer.init)
                                                            threads.forEach(seqs) { s in
                                                                let b = s / heads, h = s % heads
                                                                let row = b * steps * heads + h
                                                                if let chunked {
                                                                    // Aligned workspace: scratch, dS, then the packed rows.
                                                                    let sc = AlignedFloats.lineRounded(chunked.scratchCount)
                                                                    let sw = AlignedFloats.lineRounded(dv * dk)
                                                                    let work = AlignedFloats(count: sc + sw + chunked.packedCount)
                                                                    let scratch = work.base
                                                                    // Sequence s's rows: in dq, dk, dv of their own, or in
                                                                    // its head's columns of the projection's gradient.
                                                                    let (pdq, pdk, pdv) = projected.map { pp in
                                                                        let base = pp.base + b * steps * width
                                                                        return (base + h * dk, base + hd + h * dk, base + 2 * hd + h * dv)
                                                                    } ?? (m.0.base + row * dk, m.1.base + row * dk, m.2.base + row * dv)
                                                                    chunked.backwardPacked(
                                                                        dy: c.0.base + row * dv, beta: sbeta.map { $0.base + row },
                                                                        saved: ssaved!.base + s * savedPerSequence, dw: scratch + sc,
                                                                        scratch: scratch, dq: pdq, dk: pdk, dv: pdv,
                                                                        dbeta: sdb.map { $0.base + row }, packed: scratch + sc + sw)
                                                                    return
                                                                }
                                                                var scratch = [Float](repeating: 0, count: dv * dk + 2 * dk + dv)
                                                                scratch.withUnsafeMutableBufferPointer { sc in
                                                                    let base = sc.baseAddress!
                                                                    kern.backward(
                                                                        dy: c.0.base + row * dv, y: c.1.base + row * dv,
                                                                        q: c.2.base + row * dk, k: c.3.base + row * dk, v: c.4.base + row * dv,
                                                                        beta: sbeta.map { $0.base + row },
                                                                        saved: isDelta ? ssaved.map { $0.base + s * savedPerSequence } : nil,
                                                                        denominators: sden.map { $0.base + s * steps },
                                                                        w: m.3.base + s * dv * dk, z: m.4.base + s * dk,
                                                                        dw: base, dzAccumulator: base + dv * dk, scratch: base + dv * dk + 2 * dk,
                                                                        dq: m.0.base + row * dk, dk: m.1.base + row * dk, dv: m.2.base + row * dv,
                                                                        dbeta: sdb.map { $0.base + row })
                                                                }
                                                            }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if dbeta != nil { dbeta!.storage = dbStorage }
        return (dq, dkT, dvT, dbeta)
    }

    private func softmaxBackward(_ dCore: Tensor, cache: Cache, threads: ComputeThreads) -> (Tensor, Tensor, Tensor) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dh = headSize, hd = heads * headSize, seqs = batch * heads, n = batch * steps
        let scale = 1 / Float(dh).squareRoot()
        precondition(
            cache.probabilities.count == seqs * steps * steps,
            "softmax backward needs the probabilities of a forward without carried state "
                + "(softmax layers do not train through a carried key/value cache)")
        // Every row of each is written by a beta-0 block product below. Three allocations, not
        // one shared array that each first write would copy.
        var dq = Tensor(uninitializedShape: [n, hd]), dk = Tensor(uninitializedShape: [n, hd])
        var dv = Tensor(uninitializedShape: [n, hd])
        let native = VectorKernels.enabled  // each row of dS as one C kernel call
        let smallLimit = softmaxSmallLimit
        dCore.withUnsafePointer { pdy in
            cache.qRaw.withUnsafePointer { pq in
                cache.kRaw.withUnsafePointer { pk in
                    cache.v.withUnsafePointer { pv in
                        cache.probabilities.withUnsafeBufferPointer { pp in
                            dq.withUnsafeMutablePointer { pdq in
                                dk.withUnsafeMutablePointer { pdk in
                                    dv.withUnsafeMutablePointer { pdv in
                                        let c = (
                                            SharedConstPointer(pdy), SharedConstPointer(pq), SharedConstPointer(pk),
                                            SharedConstPointer(pv), SharedConstPointer(pp.baseAddress!)
                                        )
                                        let m = (SharedPointer(pdq), SharedPointer(pdk), SharedPointer(pdv))
                                        threads.forEach(seqs) { s in
                                            let b = s / heads, h = s % heads
                                            let off = b * steps * hd + h * dh
                                            let P = c.4.base + s * steps * steps
                                            // Written where read, as P in the forward pass.
                                            var dP = UninitializedMemory.floats(steps * steps)
                                            dP.withUnsafeMutableBufferPointer { dpb in
                                                let dPp = dpb.baseAddress!
                                                // Blocks as in the forward pass: row block [r0, r1) of dP, dS
                                                // and dQ needs columns [0, r1); column block [c0, c1) of dV
                                                // and dK needs rows [c0, T). P is zero above the diagonal
                                                // within each block and unset past it.
                                                let block = causalBlock(steps: steps)
                                                var r0 = 0
                                                while r0 < steps {
                                                    let r1 = min(r0 + block, steps)
                                                    // dP = dY Vᵀ
                                                    BLAS.gemm(
                                                        transposeA: false, transposeB: true, m: r1 - r0, n: r1, k: dh,
                                                        a: c.0.base + off + r0 * hd, lda: hd, b: c.3.base + off, ldb: hd, beta: 0,
                                                        c: dPp + r0 * steps, ldc: steps, smallLimit: smallLimit)
                                                    // dS = P ⊙ (dP − rowsum(dP ⊙ P)), then scaled; zero up to the block's end.
                                                    for t in r0..<r1 {
                                                        let pr = P + t * steps, dr = dPp + t * steps
                                                        if native {
                                                            fwp_softmax_row_backward(pr, dr, t + 1, r1 - t - 1, scale)
                                                            continue
                                                        }
                                                        let dotv = Vec.dot(pr, dr, t + 1)
                                                        for j in 0...t { dr[j] = pr[j] * (dr[j] - dotv) * scale }
                                                        for j in (t + 1)..<r1 { dr[j] = 0 }
                                                    }
                                                    // dQ = dS K
                                                    BLAS.gemm(
                                                        transposeA: false, transposeB: false, m: r1 - r0, n: dh, k: r1,
                                                        a: dPp + r0 * steps, lda: steps, b: c.2.base + off, ldb: hd, beta: 0,
                                                        c: m.0.base + off + r0 * hd, ldc: hd, smallLimit: smallLimit)
                                                    r0 = r1
                                                }
                                                var c0 = 0
                                                while c0 < steps {
                                                    let c1 = min(c0 + block, steps)
                                                    // dV = Pᵀ dY and dK = dSᵀ Q over rows [c0, T)
                                                    BLAS.gemm(
                                                        transposeA: true, transposeB: false, m: c1 - c0, n: dh, k: steps - c0,
                                                        a: P + c0 * steps + c0, lda: steps, b: c.0.base + off + c0 * hd, ldb: hd, beta: 0,
                                                        c: m.2.base + off + c0 * hd, ldc: hd, smallLimit: smallLimit)
                                                    BLAS.gemm(
                                                        transposeA: true, transposeB: false, m: c1 - c0, n: dh, k: steps - c0,
                                                        a: dPp + c0 * steps + c0, lda: steps, b: c.1.base + off + c0 * hd, ldb: hd, beta: 0,
                                                        c: m.1.base + off + c0 * hd, ldc: hd, smallLimit: smallLimit)
                                                    c0 = c1
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return (dq, dk, dv)
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
