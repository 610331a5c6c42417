import FWPCore
import FWPProtocol
import Foundation

/// The associative-retrieval model of the paper's section 6.1 (reference setup in FWP-NOTES).
///
/// A sequence of L (key, value) pairs is written into a fast-weight memory of S × d_dot; one key
/// is then queried and the model must output the one-hot value stored last with it. Values are
/// fixed one-hot vectors; keys (and queries) share a learned embedding of size ⌊2S·1.1⌋.
public struct RetrievalConfig: Codable, Equatable, Sendable {
    /// Number of distinct keys and of distinct values (S).
    public var keys: Int
    /// 1: L = S pairs, keys without replacement. 2: L = 2S pairs, keys with replacement.
    public var setting: Int
    /// `linear` (ELU+1), `dpfp-ν`, `favor-m` or `softmax` (attention baseline, no φ).
    public var attention: String
    /// `sum` (attention-normalised readout), `delta` (sum-normalised keys and query, dynamic β) or
    /// `gated-delta` (the delta rule's, with a decay α_t = σ(w·x_t + b) as well).
    public var rule: UpdateRule
    /// Size of keys and queries before φ (64 in the paper).
    public var keySize: Int
    /// `reference`: initialised as the reference code (ischlag/fast-weight-transformers,
    /// synthetic/): W_k and W_q uniform ±1/√d_key for the fast-weight models, Xavier-uniform for
    /// softmax; every bias, and β's weight, uniform ±1/√fan_in (PyTorch's nn.Linear default).
    /// `uniform`: W_k, W_q and their biases ±1/√d_key for every model, β's bias zero.
    public var initialization = "reference"
    /// Setting 1 draws the values without replacement too (each value once), as the reference;
    /// false draws them with replacement. Setting 2 draws both with replacement.
    public var distinctValues = true
    /// Pairs per evaluation sequence: `keys` (S, as the reference, in both settings) or `train`
    /// (the training length: 2S in setting 2).
    public var evalLength = "keys"
    /// The training query: `position` (a random position's key, as the reference: keys are asked
    /// in proportion to how often they occur) or `key` (uniform over the distinct keys present).
    public var queryDraw = "position"
    /// Keys queried per evaluation sequence at most, the smallest key ids first (the reference:
    /// 200); 0: every key.
    public var maxEvalQueries = 200
    /// nil: the paper's model (one memory written with the one-hot values, read once). Otherwise
    /// the sequence goes through one fast-weight layer with this fast net (`linear`: the layer
    /// the language model uses), its output at an extra query step read out to S values
    /// (`RetrievalModel` "The layer model").
    public var fastNet: FastNet? = nil

    public var sequenceLength: Int { setting == 1 ? keys : 2 * keys }
    /// Pairs per evaluation sequence.
    public var evalSequenceLength: Int { evalLength == "keys" ? keys : sequenceLength }
    public var embeddingSize: Int { Int(Double(2 * keys) * 1.1) }
    public var isSoftmax: Bool { attention == "softmax" }

    public var featureMap: FeatureMapKind {
        if attention == "linear" { return .eluPlusOne }
        return FeatureMapKind(name: attention) ?? .eluPlusOne
    }

    public init(keys: Int, setting: Int, attention: String, rule: UpdateRule, keySize: Int) {
        self.keys = keys
        self.setting = setting
        self.attention = attention
        self.rule = rule
        self.keySize = keySize
    }
}

/// A batch of retrieval sequences and their queries.
public struct RetrievalBatch: Sendable {
    /// B × L key ids and value ids.
    public var keys: [[Int]]
    public var values: [[Int]]
    /// Per sequence, the queried keys and the expected (latest) values.
    public var queries: [[Int]]
    public var targets: [[Int]]

    /// B sequences. Training (`allKeys` false): the training length, one query each. Evaluation
    /// (`allKeys` true): the evaluation length, queried at every distinct key present, smallest
    /// id first, at most `maxEvalQueries`.
    public static func sample(
        _ config: RetrievalConfig, count: Int, allKeys: Bool, using rng: inout FWPRandom
    ) -> RetrievalBatch {
        let s = config.keys, l = allKeys ? config.evalSequenceLength : config.sequenceLength
        func permutation() -> [Int] {
            var p = Array(0..<s)
            for i in stride(from: s - 1, to: 0, by: -1) { p.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
            return p
        }
        var b = RetrievalBatch(keys: [], values: [], queries: [], targets: [])
        for _ in 0..<count {
            // Setting 1 draws without replacement, so that L = S uses every key once.
            let ks =
                config.setting == 1 ? Array(permutation().prefix(l)) : (0..<l).map { _ in Int(rng.next() % UInt64(s)) }
            let vs =
                config.setting == 1 && config.distinctValues
                ? Array(permutation().prefix(l)) : (0..<l).map { _ in Int(rng.next() % UInt64(s)) }
            var latest: [Int: Int] = [:]
            for (k, v) in zip(ks, vs) { latest[k] = v }
            let present = latest.keys.sorted()
            let qs: [Int]
            if allKeys {
                qs = config.maxEvalQueries > 0 ? Array(present.prefix(config.maxEvalQueries)) : present
            } else if config.queryDraw == "position" {
                qs = [ks[Int(rng.next() % UInt64(l))]]
            } else {
                qs = [present[Int(rng.next() % UInt64(present.count))]]
            }
            b.keys.append(ks)
            b.values.append(vs)
            b.queries.append(qs)
            b.targets.append(qs.map { latest[$0]! })
        }
        return b
    }

    /// Sequences `range` of the batch.
    public func sequences(_ range: Range<Int>) -> RetrievalBatch {
        RetrievalBatch(
            keys: Array(keys[range]), values: Array(values[range]), queries: Array(queries[range]),
            targets: Array(targets[range]))
    }

    /// Queries in the batch.
    public var queryCount: Int { queries.reduce(0) { $0 + $1.count } }
}

public struct RetrievalModel: Sendable {
    public let config: RetrievalConfig
    public var parameters: ParameterStore
    public var buffers: ParameterStore
    let embedding: Embedding
    /// The paper's model: key and query projections (nil for the layer model).
    let key: Linear?
    let query: Linear?
    /// The layer model: one attention layer over x_t and a readout from its query-step output.
    let layer: AttentionLayer?
    let readout: Linear?
    let beta: Linear?
    /// The gated delta rule's decay logits (one per step).
    let decay: Linear?
    let featureMap: FeatureMap?
    let projection: Int?

    public init(config: RetrievalConfig, seed: UInt64) {
        self.config = config
        var rng = FWPRandom(seed: seed)
        var store = ParameterStore(), buffers = ParameterStore()
        let s = config.keys, e = config.embeddingSize, d = config.keySize
        embedding = Embedding("embedding", vocabulary: s, dimension: e, std: 1, store: &store, rng: &rng)
        if let net = config.fastNet {
            let width = s + e
            let lm = LMConfig(
                vocabularySize: 2, modelSize: width, layers: 1, heads: 1, headSize: d, feedForwardSize: 1,
                attention: config.isSoftmax ? .softmax : .fastWeight, featureMap: config.featureMap,
                updateRule: config.rule, normalization: config.rule.hasBeta ? .sum : .attention,
                initStd: 1 / Float(width).squareRoot(), fastNet: config.isSoftmax ? .linear : net)
            layer = AttentionLayer(prefix: "layer", config: lm, store: &store, buffers: &buffers, rng: &rng)
            readout = Linear("readout", in: width, out: s, bias: true, std: 1, store: &store, rng: &rng)
            store.values[readout!.weight] = .uniform(
                shape: [s, width], bound: 1 / Float(width).squareRoot(), using: &rng)
            (key, query, beta, decay, featureMap, projection) = (nil, nil, nil, nil, nil, nil)
            parameters = store
            self.buffers = buffers
            return
        }
        (layer, readout) = (nil, nil)
        let bound = 1 / Float(d).squareRoot()
        let key = Linear("key", in: s + e, out: d, bias: true, std: 1, store: &store, rng: &rng)
        let query = Linear("query", in: e, out: d, bias: true, std: 1, store: &store, rng: &rng)
        (self.key, self.query) = (key, query)
        let reference = config.initialization == "reference"
        // Uniform draws replace the normal ones above: (tensor, bound) in a fixed order.
        let xavier = { (fanIn: Int, fanOut: Int) in (6 / Float(fanIn + fanOut)).squareRoot() }
        let bounds: [(Int, Float)] =
            reference
            ? [
                (key.weight, config.isSoftmax ? xavier(s + e, d) : bound),
                (key.bias!, 1 / Float(s + e).squareRoot()),
                (query.weight, config.isSoftmax ? xavier(e, d) : bound), (query.bias!, 1 / Float(e).squareRoot()),
            ] : [(key.weight, bound), (key.bias!, bound), (query.weight, bound), (query.bias!, bound)]
        for (idx, b) in bounds {
            store.values[idx] = .uniform(shape: store.values[idx].shape, bound: b, using: &rng)
        }
        if !config.isSoftmax && config.rule.hasBeta {
            let b = beta_(s + e, &store, &rng)
            if reference {
                store.values[b.bias!] = .uniform(shape: [1], bound: 1 / Float(s + e).squareRoot(), using: &rng)
            }
            beta = b
        } else {
            beta = nil
        }
        if !config.isSoftmax && config.rule == .gatedDelta {
            // Weight as β's; the bias starts α at 1 − 1/(2L + 1), so that the first pair of a
            // sequence is still at α^L ≈ e^{−1/2} of its strength when the query comes.
            let a = Linear("decay", in: s + e, out: 1, bias: true, std: 1, store: &store, rng: &rng)
            store.values[a.weight] = .uniform(shape: [1, s + e], bound: 1 / Float(s + e).squareRoot(), using: &rng)
            store.values[a.bias!] = Tensor(shape: [1], storage: [logf(Float(2 * config.sequenceLength))])
            decay = a
        } else {
            decay = nil
        }
        if config.isSoftmax {
            featureMap = nil
            projection = nil
        } else {
            let fm = FeatureMap(config.featureMap, inputSize: d)
            featureMap = fm
            if case .favor(let m) = config.featureMap {
                projection = buffers.add(
                    "favor_projection", FeatureMap.favorProjection(features: m, inputSize: d, using: &rng))
            } else {
                projection = nil
            }
        }
        parameters = store
        self.buffers = buffers
    }

    /// Mean over queries of ½‖v* − ŷ‖² and its gradients (when `gradients` is true). With
    /// `normalizer`, the sum is divided by it instead of by the batch's query count (a shard of a
    /// larger batch passes the whole batch's count; accuracy stays this batch's own).
    ///
    /// `projection` replaces FAVOR+'s stored projection for this call (a redraw).
    public func loss(
        _ batch: RetrievalBatch, gradients wantGradients: Bool, normalizer: Int? = nil,
        projection redrawn: Tensor? = nil
    ) -> (
        loss: Double, accuracy: Double, gradients: ParameterStore?
    ) {
        if layer != nil { return layerLoss(batch, gradients: wantGradients, normalizer: normalizer) }
        let key = key!, query = query!
        let s = config.keys, e = config.embeddingSize, l = batch.keys.first?.count ?? config.sequenceLength
        let nSeq = batch.keys.count
        let queryCount = batch.queryCount
        let nQueries = normalizer ?? queryCount
        // Inputs x_t = [onehot(value_t), e(key_t)] for all sequences at once.
        let keyEmb = embedding.forward(batch.keys.flatMap { $0 }, parameters)
        var x = Tensor(shape: [nSeq * l, s + e])
        for r in 0..<(nSeq * l) {
            x[r, batch.values[r / l][r % l]] = 1
            for j in 0..<e { x[r, s + j] = keyEmb[r, j] }
        }
        let queryKeys = batch.queries.flatMap { $0 }
        let qEmb = embedding.forward(queryKeys, parameters)
        let kRaw = key.forward(x, parameters)  // (B·L) × d
        let qRaw = query.forward(qEmb, parameters)  // (ΣQ) × d
        var dkRaw = Tensor(shape: kRaw.shape), dqRaw = Tensor(shape: qRaw.shape)
        var dBetaLogit = Tensor(shape: [nSeq * l, 1])
        var dLogDecayAll: [Float] = [], alphasAll: [Float] = []  // the gated rule's, per step
        var total = 0.0, correct = 0
        let scale = 1 / Float(nQueries)

        if config.isSoftmax {
            let d = config.keySize, inv = 1 / Float(d).squareRoot()
            var qi = 0
            for b in 0..<nSeq {
                for target in batch.targets[b] {
                    var scores = [Float](repeating: 0, count: l)
                    var m = -Float.infinity
                    for t in 0..<l {
                        var dot: Float = 0
                        for c in 0..<d { dot += kRaw[b * l + t, c] * qRaw[qi, c] }
                        scores[t] = dot * inv
                        m = max(m, scores[t])
                    }
                    var sum: Float = 0
                    for t in 0..<l {
                        scores[t] = expf(scores[t] - m)
                        sum += scores[t]
                    }
                    for t in 0..<l { scores[t] /= sum }
                    var y = [Float](repeating: 0, count: s)
                    for t in 0..<l { y[batch.values[b][t]] += scores[t] }
                    let (loss, dy) = halfSquaredError(y, oneHot: target, gradientScale: scale)
                    total += loss
                    if argmax(y) == target { correct += 1 }
                    if wantGradients {
                        var dotPD: Float = 0
                        for t in 0..<l { dotPD += scores[t] * dy[batch.values[b][t]] }
                        for t in 0..<l {
                            let ds = scores[t] * (dy[batch.values[b][t]] - dotPD) * inv
                            for c in 0..<d {
                                dkRaw[b * l + t, c] += ds * qRaw[qi, c]
                                dqRaw[qi, c] += ds * kRaw[b * l + t, c]
                            }
                        }
                    }
                    qi += 1
                }
            }
        } else {
            let fm = featureMap!
            let proj = redrawn ?? projection.map { buffers.values[$0] }
            let kPhi = fm.forward(kRaw, projection: proj), qPhi = fm.forward(qRaw, projection: proj)
            let delta = config.rule.hasBeta, gated = config.rule == .gatedDelta
            var k = kPhi, q = qPhi
            var kSums: [Float] = [], qSums: [Float] = []
            if delta {
                (k, kSums) = SumNormalization.forward(kPhi)
                (q, qSums) = SumNormalization.forward(qPhi)
            }
            var betaT: Tensor? = nil
            if let beta {
                var bl = beta.forward(x, parameters)
                for i in 0..<bl.count { bl.storage[i] = 1 / (1 + expf(-bl.storage[i])) }
                betaT = bl
            }
            // log α = log σ(z) and α, per step.
            var logDecay: [Float] = [], alphas: [Float] = []
            if let decay {
                let z = decay.forward(x, parameters)
                logDecay = z.elements.map { GatedDeltaKernel.logDecay(logit: $0) }
                alphas = logDecay.map { expf($0) }
            }
            var dLogDecay = [Float](repeating: 0, count: gated ? nSeq * l : 0)
            let dd = fm.outputSize
            var dk = Tensor(shape: k.shape), dq = Tensor(shape: q.shape)
            var dBeta = Tensor(shape: [nSeq * l])
            var values = Tensor(shape: [nSeq * l, s])
            for r in 0..<(nSeq * l) { values[r, batch.values[r / l][r % l]] = 1 }
            let kernel = FastWeightKernel(
                rule: config.rule, attentionNormalization: !delta, steps: l, keySize: dd, valueSize: s, keyStride: dd,
                valueStride: s, betaStride: 1)
            let gatedKernel = GatedDeltaKernel(
                steps: l, keySize: dd, valueSize: s, keyStride: dd, valueStride: s, gateStride: 1)
            let zeroQ = [Float](repeating: 0, count: l * dd)
            let betaStorage = betaT?.storage ?? TensorStorage(repeating: 1, count: nSeq * l)  // unused by the sum rule
            var qi = 0
            for b in 0..<nSeq {
                var w = [Float](repeating: 0, count: s * dd), z = [Float](repeating: 0, count: dd)
                var saved = [Float](repeating: 0, count: l * s), den = [Float](repeating: 0, count: l)
                var yScratch = [Float](repeating: 0, count: l * s)
                var gatedSaved = [Float](repeating: 0, count: gated ? gatedKernel.recurrentSavedCount : 0)
                if gated {
                    k.withUnsafePointer { pk in
                        values.withUnsafePointer { pv in
                            betaStorage.withUnsafeBufferPointer { pb in
                                gatedKernel.forwardRecurrent(
                                    q: zeroQ, k: pk + b * l * dd, v: pv + b * l * s, beta: pb.baseAddress! + b * l,
                                    logDecay: Array(logDecay[(b * l)..<((b + 1) * l)]), y: &yScratch, w: &w,
                                    saved: &gatedSaved)
                            }
                        }
                    }
                } else {
                    k.withUnsafePointer { pk in
                        values.withUnsafePointer { pv in
                            betaStorage.withUnsafeBufferPointer { pb in
                                saved.withUnsafeMutableBufferPointer { ps in
                                    den.withUnsafeMutableBufferPointer { pd in
                                        kernel.forward(
                                            q: zeroQ, k: pk + b * l * dd, v: pv + b * l * s,
                                            beta: delta ? pb.baseAddress! + b * l : nil,
                                            y: &yScratch, w: &w, z: &z, saved: delta ? ps.baseAddress : nil,
                                            denominators: delta ? nil : pd.baseAddress)
                                    }
                                }
                            }
                        }
                    }
                }
                var dw = [Float](repeating: 0, count: s * dd), dz = [Float](repeating: 0, count: dd)
                for target in batch.targets[b] {
                    // ŷ = W q; sum rule: y = ŷ / (z·q + ε); delta rule: y = ŷ (q already sum-normalised).
                    var yhat = [Float](repeating: 0, count: s)
                    for v in 0..<s {
                        var acc: Float = 0
                        for c in 0..<dd { acc += w[v * dd + c] * q[qi, c] }
                        yhat[v] = acc
                    }
                    var denom: Float = 1
                    if !delta {
                        denom = FastWeightKernel.denominatorEpsilon
                        for c in 0..<dd { denom += z[c] * q[qi, c] }
                    }
                    let y = yhat.map { $0 / denom }
                    let (loss, dy) = halfSquaredError(y, oneHot: target, gradientScale: scale)
                    total += loss
                    if argmax(y) == target { correct += 1 }
                    if wantGradients {
                        let a = dy.map { $0 / denom }
                        var dden: Float = 0
                        if !delta { for v in 0..<s { dden -= dy[v] * y[v] / denom } }
                        for v in 0..<s {
                            for c in 0..<dd {
                                dq[qi, c] += a[v] * w[v * dd + c]
                                dw[v * dd + c] += a[v] * q[qi, c]
                            }
                        }
                        if !delta {
                            for c in 0..<dd {
                                dq[qi, c] += dden * z[c]
                                dz[c] += dden * q[qi, c]
                            }
                        }
                    }
                    qi += 1
                }
                if wantGradients && gated {
                    let zeroDy = [Float](repeating: 0, count: l * s)
                    var scratch = [Float](repeating: 0, count: gatedKernel.recurrentScratchCount)
                    var dqSteps = [Float](repeating: 0, count: l * dd), dvSteps = [Float](repeating: 0, count: l * s)
                    var dla = [Float](repeating: 0, count: l)
                    k.withUnsafePointer { pk in
                        values.withUnsafePointer { pv in
                            betaStorage.withUnsafeBufferPointer { pb in
                                dk.withUnsafeMutablePointer { pdk in
                                    dBeta.withUnsafeMutablePointer { pdb in
                                        gatedKernel.backwardRecurrent(
                                            dy: zeroDy, q: zeroQ, k: pk + b * l * dd, v: pv + b * l * s,
                                            beta: pb.baseAddress! + b * l,
                                            logDecay: Array(logDecay[(b * l)..<((b + 1) * l)]), saved: gatedSaved,
                                            dw: &dw, scratch: &scratch, dq: &dqSteps, dk: pdk + b * l * dd,
                                            dv: &dvSteps, dbeta: pdb + b * l, dlogDecay: &dla, seeded: true)
                                    }
                                }
                            }
                        }
                    }
                    for t in 0..<l { dLogDecay[b * l + t] = dla[t] }
                } else if wantGradients {
                    let zeroDy = [Float](repeating: 0, count: l * s)
                    var scratch = [Float](repeating: 0, count: s)
                    var dqSteps = [Float](repeating: 0, count: l * dd), dvSteps = [Float](repeating: 0, count: l * s)
                    k.withUnsafePointer { pk in
                        values.withUnsafePointer { pv in
                            betaStorage.withUnsafeBufferPointer { pb in
                                dk.withUnsafeMutablePointer { pdk in
                                    dBeta.withUnsafeMutablePointer { pdb in
                                        saved.withUnsafeBufferPointer { psb in
                                            den.withUnsafeBufferPointer { pdb2 in
                                                let ps = psb.baseAddress!, pdn = pdb2.baseAddress!
                                                kernel.backward(
                                                    dy: zeroDy, y: yScratch, q: zeroQ, k: pk + b * l * dd,
                                                    v: pv + b * l * s,
                                                    beta: delta ? pb.baseAddress! + b * l : nil,
                                                    saved: delta ? UnsafePointer(ps) : nil,
                                                    denominators: delta ? nil : UnsafePointer(pdn), w: &w, z: &z,
                                                    dw: &dw, dzAccumulator: &dz,
                                                    scratch: &scratch, dq: &dqSteps, dk: pdk + b * l * dd, dv: &dvSteps,
                                                    dbeta: delta ? pdb + b * l : nil, seeded: true)
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if wantGradients {
                (dLogDecayAll, alphasAll) = (dLogDecay, alphas)
                if delta {
                    dk = SumNormalization.backward(dk, output: k, sums: kSums)
                    dq = SumNormalization.backward(dq, output: q, sums: qSums)
                }
                dkRaw = fm.backward(dk, input: kRaw, output: kPhi, projection: proj)
                dqRaw = fm.backward(dq, input: qRaw, output: qPhi, projection: proj)
                if let betaT {
                    for i in 0..<(nSeq * l) {
                        dBetaLogit.storage[i] = dBeta.storage[i] * betaT.storage[i] * (1 - betaT.storage[i])
                    }
                }
            }
        }
        let loss = total / Double(nQueries)
        let accuracy = Double(correct) / Double(queryCount)
        guard wantGradients else { return (loss, accuracy, nil) }
        var g = parameters.zerosLike()
        var dx = key.backward(dkRaw, input: x, parameters, &g)
        if let beta {
            let dxb = beta.backward(dBetaLogit, input: x, parameters, &g)
            for i in 0..<dx.count { dx.storage[i] += dxb.storage[i] }
        }
        if let decay {
            // d log σ(z) / dz = 1 − α
            let dz = Tensor(shape: [nSeq * l, 1], storage: zip(dLogDecayAll, alphasAll).map { $0 * (1 - $1) })
            let dxa = decay.backward(dz, input: x, parameters, &g)
            for i in 0..<dx.count { dx.storage[i] += dxa.storage[i] }
        }
        let dqEmb = query.backward(dqRaw, input: qEmb, parameters, &g)
        var dKeyEmb = Tensor(shape: [nSeq * l, e])
        for r in 0..<(nSeq * l) { for j in 0..<e { dKeyEmb[r, j] = dx[r, s + j] } }
        embedding.backward(dKeyEmb, tokens: batch.keys.flatMap { $0 }, &g)
        embedding.backward(dqEmb, tokens: queryKeys, &g)
        return (loss, accuracy, g)
    }
}

extension RetrievalModel {
    /// The layer model's loss: each query gets a sequence of its own, the L pairs then a query
    /// step, x_t = [onehot(v_t), e(k_t)] and x_{L+1} = [0, e(query)], run through the attention
    /// layer from a zero state; ŷ = readout(layer output at the query step) and the loss is the
    /// paper's ½‖v* − ŷ‖², averaged as `loss` averages it.
    func layerLoss(_ batch: RetrievalBatch, gradients wantGradients: Bool, normalizer: Int?) -> (
        loss: Double, accuracy: Double, gradients: ParameterStore?
    ) {
        let layer = layer!, readout = readout!
        let s = config.keys, e = config.embeddingSize, width = s + e
        var rows: [(sequence: Int, query: Int, target: Int)] = []
        for b in batch.keys.indices {
            for (q, t) in zip(batch.queries[b], batch.targets[b]) { rows.append((b, q, t)) }
        }
        let n = rows.count, l = batch.keys.first?.count ?? config.sequenceLength, steps = l + 1
        let tokens = rows.flatMap { batch.keys[$0.sequence] + [$0.query] }
        let emb = embedding.forward(tokens, parameters)
        var x = Tensor(shape: [n * steps, width])
        for (r, row) in rows.enumerated() {
            for t in 0..<steps {
                let i = r * steps + t
                if t < l { x[i, batch.values[row.sequence][t]] = 1 }
                for j in 0..<e { x[i, s + j] = emb[i, j] }
            }
        }
        var none: AttentionState? = nil
        var rng = FWPRandom(seed: 0)  // unused: no dropout, no FAVOR+ in the layer model
        let threads = ComputeThreads(1)
        let (out, cache) = layer.forward(
            x, batch: n, steps: steps, parameters, buffers, state: &none, training: false, rng: &rng, threads: threads)
        var last = Tensor(shape: [n, width])
        for r in 0..<n { for j in 0..<width { last[r, j] = out[r * steps + l, j] } }
        let y = readout.forward(last, parameters)
        let scale = 1 / Float(normalizer ?? n)
        var total = 0.0, correct = 0
        var dy = Tensor(shape: [n, s])
        for (r, row) in rows.enumerated() {
            let yr = (0..<s).map { y[r, $0] }
            let (loss, d) = halfSquaredError(yr, oneHot: row.target, gradientScale: scale)
            total += loss
            if argmax(yr) == row.target { correct += 1 }
            for v in 0..<s { dy[r, v] = d[v] }
        }
        let loss = total / Double(normalizer ?? n), accuracy = Double(correct) / Double(n)
        guard wantGradients else { return (loss, accuracy, nil) }
        var g = parameters.zerosLike()
        let dLast = readout.backward(dy, input: last, parameters, &g)
        var dOut = Tensor(shape: [n * steps, width])
        for r in 0..<n { for j in 0..<width { dOut[r * steps + l, j] = dLast[r, j] } }
        let dx = layer.backward(dOut, cache: cache, parameters, &g, threads: threads)
        var dEmb = Tensor(shape: [n * steps, e])
        for i in 0..<(n * steps) { for j in 0..<e { dEmb[i, j] = dx[i, s + j] } }
        embedding.backward(dEmb, tokens: tokens, &g)
        return (loss, accuracy, g)
    }
}

/// β's layer: weight uniform ±1/√fan_in (the reference's PyTorch default), bias zero.
private func beta_(_ fanIn: Int, _ store: inout ParameterStore, _ rng: inout FWPRandom) -> Linear {
    let b = Linear("beta", in: fanIn, out: 1, bias: true, std: 1, store: &store, rng: &rng)
    store.values[b.weight] = .uniform(shape: [1, fanIn], bound: 1 / Float(fanIn).squareRoot(), using: &rng)
    return b
}

/// ½‖y − onehot(target)‖² and its gradient with respect to y, scaled by `gradientScale`.
func halfSquaredError(_ y: [Float], oneHot target: Int, gradientScale: Float) -> (Double, [Float]) {
    var loss = 0.0
    var dy = [Float](repeating: 0, count: y.count)
    for v in y.indices {
        let diff = y[v] - (v == target ? 1 : 0)
        loss += 0.5 * Double(diff * diff)
        dy[v] = diff * gradientScale
    }
    return (loss, dy)
}

func argmax(_ y: [Float]) -> Int {
    var best = 0
    for i in 1..<y.count where y[i] > y[best] { best = i }
    return best
}
