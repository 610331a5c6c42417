import CKernels
import Foundation

/// The fast-weight memory of an attention layer, between its projections: the feature map, sum
/// normalisation, β = σ(logits), and the update rule run over a segment by the chunkwise (WY)
/// form or the recurrence. `chunkSize(steps:)` is the one place that chooses the form;
/// `FastWeightKernel` (the recurrence, the reference) and `ChunkwiseKernel` run it per sequence.
struct FastWeightAttention: Sendable {
    let heads: Int
    let headSize: Int
    let featureMap: FeatureMap
    let rule: UpdateRule
    let normalization: Normalization
    /// Factor applied to the outputs (1/√d_head when enabled in the config).
    let outputScale: Float
    /// Index of the FAVOR+ projection in the model's buffer store.
    let favorBuffer: Int?
    /// Recurrent or chunkwise computation of the memory.
    let algorithm: FastWeightAlgorithm

    /// Everything the backward pass needs.
    struct Cache {
        var qRaw: Tensor, kRaw: Tensor, v: Tensor  // (N·H) × d_head
        var qPhi: Tensor, kPhi: Tensor  // (N·H) × d_dot, before sum normalisation (empty on the fused C path)
        var qSums: [Float], kSums: [Float]
        var q: Tensor, k: Tensor  // what the memory saw
        var beta: Tensor?  // (N·H), after the sigmoid
        var saved: AlignedFloats, denominators: [Float]
        /// Set when the chunkwise kernel ran; `saved` then holds its data, and `core` already holds
        /// outputScale · y (the kernel's product applied the scale).
        var chunkSize: Int?
        var core: Tensor  // N × H·d_head
        var finalWeights: [Float], finalNormalizer: [Float]
        var projection: Tensor?
        var batch: Int, steps: Int

        /// A cache holding the raw projections, before `forward`.
        init(qRaw: Tensor, kRaw: Tensor, v: Tensor, batch: Int, steps: Int, heads: Int, headSize: Int) {
            self.qRaw = qRaw
            self.kRaw = kRaw
            self.v = v
            (qPhi, kPhi, q, k) = (qRaw, kRaw, qRaw, kRaw)
            (qSums, kSums) = ([], [])
            beta = nil
            saved = .empty
            denominators = []
            chunkSize = nil
            // `forward` allocates `core` (uninitialised where every row is written).
            core = Tensor(shape: [0, heads * headSize])
            (finalWeights, finalNormalizer) = ([], [])
            projection = nil
            self.batch = batch
            self.steps = steps
        }
    }

    /// Columns of the layer's input projection: q, k, v, and for the delta rule the H β logits.
    var projectionWidth: Int { 3 * heads * headSize + (rule == .delta ? heads : 0) }

    /// The input of the layer's output projection: outputScale · y. The chunkwise kernel applied
    /// the scale already; after the recurrence it is one pass into a new tensor (the recurrence's
    /// backward reads `core` unscaled).
    func attended(_ cache: Cache) -> Tensor {
        guard outputScale != 1 && cache.chunkSize == nil else { return cache.core }
        var attended = Tensor(uninitializedShape: cache.core.shape)
        let count = cache.core.count
        cache.core.withUnsafePointer { pc in
            attended.withUnsafeMutablePointer { pa in Vec.scale(outputScale, from: pc, to: pa, count) }
        }
        return attended
    }

    /// dL/dcore from dL/dattended: the inverse of `attended`'s scaling where it scaled (where the
    /// chunkwise kernel scaled its output, it scales this gradient as it gathers it).
    func coreGradient(_ dAttended: Tensor, cache: Cache) -> Tensor {
        guard outputScale != 1 && cache.chunkSize == nil else { return dAttended }
        var d = dAttended
        Vec.scaleTensor(outputScale, &d)
        return d
    }

    /// Everything between the projections: feature map, normalisation, β = σ(logits), and the
    /// memory; `cache` holds qRaw, kRaw, v on entry, `core` on exit.
    func forward(
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
        memoryForward(&cache, state: &state, threads: threads)
    }

    /// ELU + 1 followed by sum normalisation runs as one fused pass (`SumNormalization.eluPlusOneForward`).
    private var fusedEluSum: Bool { featureMap.kind == .eluPlusOne && normalization == .sum }

    /// Whether the chunkwise kernel applies that fused feature map itself, per sequence, as it
    /// gathers q and k (and its backward returns their gradients before it): one pass over q and
    /// k fewer each way. Needs the C kernels.
    func featureMapInKernel(steps: Int) -> Bool {
        fusedEluSum && VectorKernels.enabled && chunkSize(steps: steps) != nil
    }

    private func kernel(steps: Int) -> FastWeightKernel {
        FastWeightKernel(
            rule: rule, attentionNormalization: normalization == .attention, steps: steps,
            keySize: featureMap.outputSize, valueSize: headSize, keyStride: heads * featureMap.outputSize,
            valueStride: heads * headSize, betaStride: heads)
    }

    /// The chunk size to use for a segment of `steps`, or nil for the recurrence: the one place
    /// that chooses between the chunkwise (WY) form and the recurrence.
    func chunkSize(steps: Int) -> Int? {
        guard normalization != .attention else { return nil }
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

    private func memoryForward(_ cache: inout Cache, state: inout AttentionState?, threads: ComputeThreads) {
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

    /// The backward pass of `forward`: gradients of qRaw, kRaw, v and the β logits.
    /// With `projected` (only where the chunkwise kernel applies the feature map itself), the
    /// gradients of qRaw, kRaw and v go to its columns 0, H·d and 2·H·d instead (rows of
    /// `projectionWidth` floats: the input projection's gradient) and come back empty.
    func backward(
        _ dCore: Tensor, cache: Cache, threads: ComputeThreads, into projected: SharedPointer? = nil
    ) -> (Tensor, Tensor, Tensor, Tensor?) {
        let n = cache.batch * cache.steps
        var (dq, dk, dv, dbeta) = memoryBackward(dCore, cache: cache, threads: threads, into: projected)
        let dqRaw: Tensor, dkRaw: Tensor
        if featureMapInKernel(steps: cache.steps) {
            (dqRaw, dkRaw) = (dq, dk)  // already through the feature map (see forward)
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

    private func memoryBackward(
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
}
