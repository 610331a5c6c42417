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
    /// FAVOR+ in training: the step's projection when drawn for the whole batch (nil: draw one).
    var drawnProjection: Tensor? = nil

    /// Everything the backward pass needs.
    struct Cache {
        var qRaw: Tensor, kRaw: Tensor, v: Tensor  // (N·H) × d_head
        var qPhi: Tensor, kPhi: Tensor  // (N·H) × d_dot, before sum normalisation (empty on the fused C path)
        var qSums: [Float], kSums: [Float]
        var q: Tensor, k: Tensor  // what the memory saw
        var beta: Tensor?  // (N·H), after the sigmoid
        var logDecay: Tensor?  // (N·H): log α = log σ(logit), the gated delta rule's
        /// The gated delta rule's chunk size when it ran chunkwise (nil: the recurrence).
        var gatedChunk: Int?
        var saved: AlignedFloats, denominators: TensorStorage
        /// Set when the chunkwise kernel ran; `saved` then holds its data, and `core` already holds
        /// outputScale · y (the kernel's product applied the scale).
        var chunkSize: Int?
        var core: Tensor  // N × H·d_head
        var finalWeights: TensorStorage, finalNormalizer: TensorStorage
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
            (logDecay, gatedChunk) = (nil, nil)
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

    /// Columns of the layer's input projection: q, k, v, for the delta rules the H β logits, and
    /// for the gated rule the H decay logits.
    var projectionWidth: Int {
        3 * heads * headSize + (rule.hasBeta ? heads : 0) + (rule == .gatedDelta ? heads : 0)
    }

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
        _ cache: inout Cache, betaLogits: Tensor?, decayLogits: Tensor? = nil, _ buffers: ParameterStore,
        state: inout AttentionState?,
        training: Bool, rng: inout FWPRandom, threads: ComputeThreads
    ) {
        let n = cache.batch * cache.steps, dh = headSize
        if let favorBuffer {
            if training, case .favor(let m) = featureMap.kind {
                cache.projection =
                    drawnProjection ?? FeatureMap.favorProjection(features: m, inputSize: dh, using: &rng)
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
            } else if normalization == .l2 {
                (cache.q, cache.qSums) = L2Normalization.forward(cache.qPhi, threads: threads)
                (cache.k, cache.kSums) = L2Normalization.forward(cache.kPhi, threads: threads)
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
        if let logits = decayLogits {
            var la = Tensor(uninitializedShape: [n * heads])
            logits.withUnsafePointer { pl in
                la.withUnsafeMutablePointer { pla in
                    for i in 0..<(n * heads) { pla[i] = GatedDeltaKernel.logDecay(logit: pl[i]) }
                }
            }
            cache.logDecay = la
        }
        if rule == .gatedDelta {
            gatedMemoryForward(&cache, state: &state, threads: threads)
        } else {
            memoryForward(&cache, state: &state, threads: threads)
        }
    }

    /// ELU + 1 followed by sum normalisation runs as one fused pass (`SumNormalization.eluPlusOneForward`).
    private var fusedEluSum: Bool { featureMap.kind == .eluPlusOne && normalization == .sum }

    /// Whether the chunkwise kernel applies that fused feature map itself, per sequence, as it
    /// gathers q and k (and its backward returns their gradients before it): one pass over q and
    /// k fewer each way. Needs the C kernels.
    func featureMapInKernel(steps: Int) -> Bool {
        fusedEluSum && rule != .gatedDelta && VectorKernels.enabled && chunkSize(steps: steps) != nil
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
            outputKeyStride: outputStride, outputValueStride: outputStride,
            featureMapped: featureMapInKernel(steps: steps),
            outputScale: outputScale)
    }

    private func memoryForward(_ cache: inout Cache, state: inout AttentionState?, threads: ComputeThreads) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dk = featureMap.outputSize, dv = headSize, seqs = batch * heads
        let kern = kernel(steps: steps)
        var weights = state?.weights ?? TensorStorage(repeating: 0, count: seqs * dv * dk)
        // `weights` is then the only reference (no copy-on-write of the state on the first write).
        if state != nil { state!.weights = [] }
        let attn = normalization == .attention
        var zs =
            attn
            ? (state?.normalizer ?? TensorStorage(repeating: 0, count: seqs * dk))
            : TensorStorage(repeating: 0, count: seqs * dk)
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
        cache.denominators = TensorStorage(repeating: 0, count: attn ? seqs * steps : 0)
        let (q, k, v, beta, saved) = (cache.q, cache.k, cache.v, cache.beta, cache.saved)
        // Sequence s = (b, h): its rows start at row (b·T·H + h) of q, k, v, y and β, its state at
        // s·d_v·d_k of W and s·d_k of z; savedPerSequence floats of `saved` and T denominators each.
        let pq = SharedConstPointer(q.pointer), pk = SharedConstPointer(k.pointer), pv = SharedConstPointer(v.pointer)
        let pb = beta.map { SharedConstPointer($0.pointer) }
        let py = SharedPointer(cache.core.mutablePointer())
        let pw = SharedPointer(weights.mutablePointer()), pz = SharedPointer(zs.mutablePointer())
        let pSaved = savedPerSequence > 0 ? SharedPointer(saved.base) : nil
        let pDen = attn ? SharedPointer(cache.denominators.mutablePointer()) : nil
        borrowing(q, k, v, beta, saved, cache.core, weights, zs, cache.denominators) {
            threads.forEach(seqs) { s in
                let row = (s / heads) * steps * heads + s % heads
                if let chunked {
                    let work = AlignedFloats(count: chunked.scratchCount)  // cache-line aligned
                    chunked.forwardPacked(
                        q: pq.base + row * dk, k: pk.base + row * dk, v: pv.base + row * dv,
                        beta: pb.map { $0.base + row },
                        y: py.base + row * dv, w: pw.base + s * dv * dk, saved: pSaved!.base + s * savedPerSequence,
                        scratch: work.base)
                } else {
                    kern.forward(
                        q: pq.base + row * dk, k: pk.base + row * dk, v: pv.base + row * dv,
                        beta: pb.map { $0.base + row },
                        y: py.base + row * dv, w: pw.base + s * dv * dk, z: pz.base + s * dk,
                        saved: pSaved.map { $0.base + s * savedPerSequence },
                        denominators: pDen.map { $0.base + s * steps })
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
    ) -> (Tensor, Tensor, Tensor, Tensor?, Tensor?) {
        let n = cache.batch * cache.steps
        var dq: Tensor, dk: Tensor, dv: Tensor, dbeta: Tensor?, dDecayLogit: Tensor? = nil
        if rule == .gatedDelta {
            var dla: Tensor
            (dq, dk, dv, dbeta, dla) = gatedMemoryBackward(dCore, cache: cache, threads: threads)
            // d log σ(z) / dz = 1 − σ(z) = 1 − α
            let la = cache.logDecay!
            for i in 0..<dla.count { dla.storage[i] *= 1 - expf(la.storage[i]) }
            dDecayLogit = dla.reshaped([n, heads])
        } else {
            (dq, dk, dv, dbeta) = memoryBackward(dCore, cache: cache, threads: threads, into: projected)
        }
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
            } else if normalization == .l2 {
                dq = L2Normalization.backward(dq, output: cache.q, norms: cache.qSums, threads: threads)
                dk = L2Normalization.backward(dk, output: cache.k, norms: cache.kSums, threads: threads)
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
        return (dqRaw, dkRaw, dv, dBetaLogit, dDecayLogit)
    }

    private func memoryBackward(
        _ dCore: Tensor, cache: Cache, threads: ComputeThreads, into projected: SharedPointer? = nil
    ) -> (Tensor, Tensor, Tensor, Tensor?) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dk = featureMap.outputSize, dv = headSize, seqs = batch * heads, n = batch * steps
        precondition(projected == nil || cache.chunkSize != nil, "only the chunkwise kernel writes into the projection")
        let kern = kernel(steps: steps)
        // The chunkwise backward writes (not accumulates) every row of dq, dk, dv and dβ.
        let make = { (shape: [Int]) in cache.chunkSize != nil ? Tensor(uninitializedShape: shape) : Tensor(shape: shape)
        }
        let outputRows = projected == nil ? n * heads : 0
        var dq = make([outputRows, dk]), dkT = make([outputRows, dk]), dvT = make([outputRows, dv])
        var dbeta: Tensor? = rule == .delta ? make([n * heads]) : nil
        var weights = cache.finalWeights
        var zs = cache.finalNormalizer.isEmpty ? TensorStorage(repeating: 0, count: seqs * dk) : cache.finalNormalizer
        let isDelta = rule == .delta, attn = normalization == .attention
        let savedPerSequence = cache.saved.count / seqs
        let width = projectionWidth, hd = heads * headSize
        let chunked = cache.chunkSize.map {
            chunkwiseKernel(
                steps: steps, chunk: $0, outputStride: projected == nil ? nil : width, outputScale: outputScale)
        }
        let (y, q, k, v, beta, saved, denominators) = (
            cache.core, cache.q, cache.k, cache.v, cache.beta, cache.saved, cache.denominators
        )
        let pdy = SharedConstPointer(dCore.pointer), py = SharedConstPointer(y.pointer)
        let pq = SharedConstPointer(q.pointer), pk = SharedConstPointer(k.pointer), pv = SharedConstPointer(v.pointer)
        let pb = beta.map { SharedConstPointer($0.pointer) }
        let pSaved = saved.count > 0 ? SharedConstPointer(UnsafePointer(saved.base)) : nil
        let pDen = attn ? SharedConstPointer(denominators.pointer) : nil
        let pdq = SharedPointer(dq.mutablePointer()), pdk = SharedPointer(dkT.mutablePointer()),
            pdv = SharedPointer(dvT.mutablePointer())
        var pdb: SharedPointer? = nil
        if isDelta, dbeta != nil { pdb = SharedPointer(dbeta!.mutablePointer()) }
        let pw = SharedPointer(weights.mutablePointer()), pz = SharedPointer(zs.mutablePointer())
        borrowing(dCore, y, q, k, v, beta, saved, denominators, dq, dkT, dvT, dbeta, weights, zs) {
            threads.forEach(seqs) { s in
                let b = s / heads, h = s % heads
                let row = b * steps * heads + h
                if let chunked {
                    // Aligned workspace: scratch, dS, then the packed rows.
                    let sc = AlignedFloats.lineRounded(chunked.scratchCount)
                    let sw = AlignedFloats.lineRounded(dv * dk)
                    let work = AlignedFloats(count: sc + sw + chunked.packedCount)
                    let scratch = work.base
                    // Sequence s's rows: in dq, dk, dv of their own, or in its head's columns of
                    // the projection's gradient.
                    let (dqRow, dkRow, dvRow) =
                        projected.map { pp in
                            let base = pp.base + b * steps * width
                            return (base + h * dk, base + hd + h * dk, base + 2 * hd + h * dv)
                        } ?? (pdq.base + row * dk, pdk.base + row * dk, pdv.base + row * dv)
                    chunked.backwardPacked(
                        dy: pdy.base + row * dv, beta: pb.map { $0.base + row },
                        saved: pSaved!.base + s * savedPerSequence,
                        dw: scratch + sc, scratch: scratch, dq: dqRow, dk: dkRow, dv: dvRow,
                        dbeta: pdb.map { $0.base + row },
                        packed: scratch + sc + sw)
                } else {
                    var scratch = [Float](repeating: 0, count: dv * dk + 2 * dk + dv)
                    scratch.withUnsafeMutableBufferPointer { sc in
                        let base = sc.baseAddress!
                        kern.backward(
                            dy: pdy.base + row * dv, y: py.base + row * dv, q: pq.base + row * dk,
                            k: pk.base + row * dk,
                            v: pv.base + row * dv, beta: pb.map { $0.base + row },
                            saved: isDelta ? pSaved.map { $0.base + s * savedPerSequence } : nil,
                            denominators: pDen.map { $0.base + s * steps }, w: pw.base + s * dv * dk,
                            z: pz.base + s * dk,
                            dw: base, dzAccumulator: base + dv * dk, scratch: base + dv * dk + 2 * dk,
                            dq: pdq.base + row * dk, dk: pdk.base + row * dk, dv: pdv.base + row * dv,
                            dbeta: pdb.map { $0.base + row })
                    }
                }
            }
        }
        return (dq, dkT, dvT, dbeta)
    }

    // MARK: the gated delta rule

    private func gatedKernel(steps: Int, chunk: Int?) -> GatedDeltaKernel {
        GatedDeltaKernel(
            steps: steps, keySize: featureMap.outputSize, valueSize: headSize, keyStride: heads * featureMap.outputSize,
            valueStride: heads * headSize, gateStride: heads, chunkSize: chunk ?? GatedDeltaKernel.defaultChunkSize)
    }

    /// The gated rule's memory: chunkwise where `chunkSize` says so, the recurrence otherwise.
    /// `core` holds y unscaled (`attended` scales it).
    private func gatedMemoryForward(_ cache: inout Cache, state: inout AttentionState?, threads: ComputeThreads) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dk = featureMap.outputSize, dv = headSize, seqs = batch * heads
        var weights = state?.weights ?? TensorStorage(repeating: 0, count: seqs * dv * dk)
        if state != nil { state!.weights = [] }
        precondition(weights.count == seqs * dv * dk, "carried state is for another batch size or shape")
        let chunk = chunkSize(steps: steps)
        cache.gatedChunk = chunk
        let kern = gatedKernel(steps: steps, chunk: chunk)
        let perSequence = AlignedFloats.lineRounded(chunk != nil ? kern.chunkwiseSavedCount : kern.recurrentSavedCount)
        cache.saved = AlignedFloats(count: seqs * perSequence)
        cache.core = Tensor(uninitializedShape: [batch * steps, heads * dv])
        let (q, k, v, beta, la, saved) = (cache.q, cache.k, cache.v, cache.beta!, cache.logDecay!, cache.saved)
        let pq = SharedConstPointer(q.pointer), pk = SharedConstPointer(k.pointer), pv = SharedConstPointer(v.pointer)
        let pb = SharedConstPointer(beta.pointer), pla = SharedConstPointer(la.pointer)
        let py = SharedPointer(cache.core.mutablePointer()), pw = SharedPointer(weights.mutablePointer())
        let pSaved = SharedPointer(saved.base)
        borrowing(q, k, v, beta, la, saved, cache.core, weights) {
            threads.forEach(seqs) { s in
                let row = (s / heads) * steps * heads + s % heads
                let (qs, ks, vs) = (pq.base + row * dk, pk.base + row * dk, pv.base + row * dv)
                let (bs, las, ys) = (pb.base + row, pla.base + row, py.base + row * dv)
                let ws = pw.base + s * dv * dk, ss = pSaved.base + s * perSequence
                if chunk != nil {
                    let work = AlignedFloats(count: kern.chunkwiseScratchCount)
                    kern.forwardChunkwise(
                        q: qs, k: ks, v: vs, beta: bs, logDecay: las, y: ys, w: ws, saved: ss, scratch: work.base)
                } else {
                    kern.forwardRecurrent(q: qs, k: ks, v: vs, beta: bs, logDecay: las, y: ys, w: ws, saved: ss)
                }
            }
        }
        if state != nil {
            state!.weights = weights
            state!.length += steps
        }
    }

    /// The backward pass of `gatedMemoryForward`: dq, dk, dv, dβ and d(log α).
    private func gatedMemoryBackward(
        _ dCore: Tensor, cache: Cache, threads: ComputeThreads
    ) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dk = featureMap.outputSize, dv = headSize, seqs = batch * heads, n = batch * steps
        let chunk = cache.gatedChunk
        let kern = gatedKernel(steps: steps, chunk: chunk)
        let perSequence = cache.saved.count / max(seqs, 1)
        var dq = Tensor(uninitializedShape: [n * heads, dk]), dkT = Tensor(uninitializedShape: [n * heads, dk])
        var dvT = Tensor(uninitializedShape: [n * heads, dv])
        var dbeta = Tensor(uninitializedShape: [n * heads]), dla = Tensor(uninitializedShape: [n * heads])
        let (q, k, v, beta, la, saved) = (cache.q, cache.k, cache.v, cache.beta!, cache.logDecay!, cache.saved)
        let pdy = SharedConstPointer(dCore.pointer)
        let pq = SharedConstPointer(q.pointer), pk = SharedConstPointer(k.pointer), pv = SharedConstPointer(v.pointer)
        let pb = SharedConstPointer(beta.pointer), pla = SharedConstPointer(la.pointer)
        let pSaved = SharedConstPointer(UnsafePointer(saved.base))
        let pdq = SharedPointer(dq.mutablePointer()), pdk = SharedPointer(dkT.mutablePointer())
        let pdv = SharedPointer(dvT.mutablePointer()), pdb = SharedPointer(dbeta.mutablePointer())
        let pdla = SharedPointer(dla.mutablePointer())
        borrowing(dCore, q, k, v, beta, la, saved, dq, dkT, dvT, dbeta, dla) {
            threads.forEach(seqs) { s in
                let row = (s / heads) * steps * heads + s % heads
                let scratchCount = chunk != nil ? kern.chunkwiseScratchCount : kern.recurrentScratchCount
                let sc = AlignedFloats.lineRounded(scratchCount)
                let work = AlignedFloats(count: sc + dv * dk)
                let (dys, qs, ks) = (pdy.base + row * dv, pq.base + row * dk, pk.base + row * dk)
                let (dqs, dks, dvs) = (pdq.base + row * dk, pdk.base + row * dk, pdv.base + row * dv)
                let ss = pSaved.base + s * perSequence
                if chunk != nil {
                    kern.backwardChunkwise(
                        dy: dys, q: qs, k: ks, beta: pb.base + row, saved: ss, dw: work.base + sc, scratch: work.base,
                        dq: dqs, dk: dks, dv: dvs, dbeta: pdb.base + row, dlogDecay: pdla.base + row)
                } else {
                    kern.backwardRecurrent(
                        dy: dys, q: qs, k: ks, v: pv.base + row * dv, beta: pb.base + row, logDecay: pla.base + row,
                        saved: ss, dw: work.base + sc, scratch: work.base, dq: dqs, dk: dks, dv: dvs,
                        dbeta: pdb.base + row, dlogDecay: pdla.base + row)
                }
            }
        }
        return (dq, dkT, dvT, dbeta, dla)
    }
}
