import Foundation

/// Which fast net a fast-weight layer runs (Irie, Schlag, Csordás, Schmidhuber 2021, "Going
/// Beyond Linear Transformers with Recurrent Fast Weight Programmers").
public enum FastNet: String, Sendable, Codable, CaseIterable {
    /// The 2021 models: y_t = W_t φ(q_t), a feed-forward fast net (linear attention, delta rule).
    case linear
    /// Delta RNN: y_t = W_t φ(q_t) + R_t softmax(y_{t−1}), R a second fast matrix programmed by
    /// the delta rule from keys, values and β of its own.
    case deltaRNN = "delta-rnn"
    /// Delta LSTM: an LSTM (coupled input and forget gates) whose input and recurrent weights are
    /// all fast weights programmed by the delta rule.
    case deltaLSTM = "delta-lstm"
    /// Recurrent Delta Net: the slow net is recurrent, q, k, v and β also read tanh(y_{t−1})
    /// through slow weights.
    case rdn

    /// Feed-forward delta memories per head (the W_t φ(q_t) terms): one per gate of the LSTM.
    var memoriesPerHead: Int { self == .deltaLSTM ? 3 : 1 }
    /// Fast matrices per head that `RecurrentFastNet` carries: R (Delta RNN), R_i, R_u, R_o
    /// (Delta LSTM), W (RDN).
    var recurrentMatrices: Int { self == .deltaLSTM ? 3 : self == .linear ? 0 : 1 }
}

/// The sequential part of the recurrent fast nets, per (batch, head) sequence over a segment.
///
/// Every fast matrix here is d × d, programmed by the delta rule
///
///     M_t = M_{t−1} + β_t (v_t − M_{t−1} k_t) k_tᵀ
///
/// with k_t = softmax(·) and β_t = σ(·). With f_t = softmax(y_{t−1}):
///
/// - **Delta RNN**: R from (r_k, r_v, r_β) of the recurrent projection; y_t = z_t + R_t f_t, where
///   z_t is the layer's delta memory's output.
/// - **Delta LSTM**: for g ∈ {i, u, o}, R_g from (r_k, r_v, r_β)_g and a_g = z_g + R_{g,t} f_t;
///   i, u, o = σ(a); c_t = i ⊙ u + (1 − i) ⊙ c_{t−1}; y_t = o ⊙ c_t.
/// - **RDN**: with s = tanh(y_{t−1}) and per head the slow (3d + 1) × d matrix P = [R_q; R_k; R_v;
///   r_βᵀ]: q = softmax(q_x + R_q s), k = softmax(k_x + R_k s), v = v_x + R_v s, β = σ(b_x + r_β·s);
///   W by the delta rule from (k, v, β); y_t = W_t q.
///
/// The layer's output is outputScale · y. Training form: the recurrence. The forward stores
/// every fast matrix each `checkpointInterval` steps; the backward replays each stretch from its
/// stored matrices (reverse recovery would divide by I − β k kᵀ). Memory per sequence and head:
/// ⌈T/C⌉·m·d² stored, (C + 1)·m·d² scratch, plus per step 4d (LSTM: i, u, o, c) or 3d + 1 (RDN:
/// q, k, v, β), with m the number of fast matrices and C = `checkpointInterval`.
struct RecurrentFastNet: Sendable {
    let kind: FastNet
    let heads: Int
    let headSize: Int
    let outputScale: Float
    var checkpointInterval = 16

    init(kind: FastNet, heads: Int, headSize: Int, outputScale: Float) {
        precondition(kind != .linear)
        self.kind = kind
        self.heads = heads
        self.headSize = headSize
        self.outputScale = outputScale
    }

    private var d: Int { headSize }
    private var matrices: Int { kind.recurrentMatrices }
    private var gates: Int { kind == .deltaLSTM ? 3 : 1 }

    /// Columns per head of the recurrent projection (Delta RNN, LSTM): per gate r_k, r_v, r_β.
    var projectionWidthPerHead: Int { kind == .rdn ? 0 : gates * (2 * d + 1) }
    /// Rows per head of the RDN's slow recurrent matrix P.
    var slowRows: Int { 3 * d + 1 }
    /// Carried floats per sequence: per head the fast matrices, y, and (LSTM) c.
    var stateCount: Int { heads * stateCountPerHead }
    private var stateCountPerHead: Int { matrices * d * d + d + (kind == .deltaLSTM ? d : 0) }
    /// Floats saved per step and head for the backward.
    private var savedPerStep: Int {
        switch kind {
        case .deltaLSTM: return 4 * d
        case .rdn: return 3 * d + 1
        default: return 0
        }
    }

    struct Cache {
        /// y per step, N × H·d (unscaled).
        var core: Tensor
        /// Per (n, h): what `savedPerStep` names.
        var saved: Tensor
        /// Per (b, h): the fast matrices every `checkpointInterval` steps.
        var checkpoints: Tensor
        /// Per (b, h): y (and c) at entry.
        var initial: Tensor
        var batch: Int, steps: Int
    }

    /// The inputs of one segment: N = B·T rows, batch-major.
    struct Inputs {
        /// Delta RNN / LSTM: the delta memories' outputs z (N × gates·H·d, gate-major heads:
        /// column (g·H + h)·d + i) and the recurrent projection (N × H·gates·(2d + 1)).
        var z: Tensor? = nil
        var projection: Tensor? = nil
        /// RDN: q_x, k_x, v_x ((N·H) × d) and the β logits (N × H) from the input, and the slow
        /// recurrent weights P (H·(3d + 1) × d).
        var q: Tensor? = nil, k: Tensor? = nil, v: Tensor? = nil, betaLogits: Tensor? = nil
        var slow: Tensor? = nil
    }

    /// Runs the segment from `state` (B·stateCount, zeros when nil) and leaves the final state
    /// there.
    func forward(_ x: Inputs, batch: Int, steps: Int, state: inout TensorStorage?, threads: ComputeThreads) -> Cache {
        let n = batch * steps, chunks = (steps + checkpointInterval - 1) / checkpointInterval
        let md2 = matrices * d * d, vec = stateCountPerHead - md2
        var cache = Cache(
            core: Tensor(shape: [n, heads * d]), saved: Tensor(shape: [n * heads, max(savedPerStep, 1)]),
            checkpoints: Tensor(shape: [batch * heads * max(chunks, 1), md2]),
            initial: Tensor(shape: [batch * heads, vec]), batch: batch, steps: steps)
        var carried = Tensor(
            shape: [batch, stateCount], storage: state ?? TensorStorage(repeating: 0, count: batch * stateCount))
        precondition(carried.count == batch * stateCount, "recurrent state has the wrong size")
        let view = InputView(x)
        let y = Self.shared(&cache.core), saved = Self.shared(&cache.saved)
        let checkpoints = Self.shared(&cache.checkpoints), initial = Self.shared(&cache.initial)
        let st = Self.shared(&carried)
        threads.forEach(batch * heads) { bh in
            let (b, h) = (bh / heads, bh % heads)
            let mine = st.base + b * stateCount + h * stateCountPerHead
            (initial.base + bh * vec).update(from: mine + md2, count: vec)
            var scratch = Tensor(shape: [6 * d + 2])
            let w = Self.shared(&scratch).base
            for t in 0..<steps {
                if t % checkpointInterval == 0 {
                    (checkpoints.base + (bh * chunks + t / checkpointInterval) * md2).update(from: mine, count: md2)
                }
                step(
                    view, row: b * steps + t, head: h, matrices: mine, vectors: mine + md2, y: y.base,
                    saved: saved.base, scratch: w)
            }
            withExtendedLifetime(scratch) {}
        }
        withExtendedLifetime((view, carried, cache)) {}
        if state != nil { state = carried.storage }
        return cache
    }

    /// A pointer to `t`'s elements that worker threads may share (the storage is one stable
    /// allocation; the caller keeps `t` alive and unshared while they use it).
    private static func shared(_ t: inout Tensor) -> SharedPointer {
        SharedPointer(t.withUnsafeMutablePointer { $0 })
    }

    /// Pointers to the inputs (read-only, shared by the worker threads).
    private struct InputView: @unchecked Sendable {
        var z: UnsafePointer<Float>? = nil, projection: UnsafePointer<Float>? = nil
        var q: UnsafePointer<Float>? = nil, k: UnsafePointer<Float>? = nil, v: UnsafePointer<Float>? = nil
        var betaLogits: UnsafePointer<Float>? = nil, slow: UnsafePointer<Float>? = nil
        /// Keeps the tensors (and so the storage the pointers read) alive.
        let inputs: Inputs

        init(_ x: Inputs) {
            inputs = x
            func base(_ t: Tensor?) -> UnsafePointer<Float>? { t.map { $0.withUnsafePointer { $0 } } }
            z = base(x.z)
            projection = base(x.projection)
            q = base(x.q)
            k = base(x.k)
            v = base(x.v)
            betaLogits = base(x.betaLogits)
            slow = base(x.slow)
        }
    }

    /// One step of one head: updates the fast matrices and the vectors (y, c) in place, writes y
    /// into `y`'s row and what the backward needs into `saved`.
    private func step(
        _ x: InputView, row n: Int, head h: Int, matrices m: UnsafeMutablePointer<Float>,
        vectors: UnsafeMutablePointer<Float>, y: UnsafeMutablePointer<Float>, saved: UnsafeMutablePointer<Float>,
        scratch w: UnsafeMutablePointer<Float>
    ) {
        let d = self.d, hd = heads * d
        let yOut = y + n * hd + h * d
        switch kind {
        case .linear:
            preconditionFailure("the linear fast net has no recurrent part")
        case .deltaRNN, .deltaLSTM:
            let f = w, kk = w + d, u = w + 2 * d, a = w + 3 * d  // a: the pre-activations (LSTM) or y (RNN)
            Self.softmax(vectors, into: f, d)  // f = softmax(y_{t−1})
            let zStride = gates * hd, pStride = heads * projectionWidthPerHead
            for g in 0..<gates {
                let r = x.projection! + n * pStride + h * projectionWidthPerHead + g * (2 * d + 1)
                let mg = m + g * d * d
                Self.softmax(r, into: kk, d)
                Self.deltaUpdate(mg, key: kk, value: r + d, beta: Self.sigmoid(r[2 * d]), scratch: u, d)
                let z = x.z! + n * zStride + (g * heads + h) * d
                for i in 0..<d { a[g * d + i] = z[i] + Vec.dot(mg + i * d, f, d) }
            }
            if kind == .deltaRNN {
                for i in 0..<d { vectors[i] = a[i] }
            } else {
                let c = vectors + d, sv = saved + (n * heads + h) * savedPerStep
                for i in 0..<d {
                    let gi = Self.sigmoid(a[i]), gu = Self.sigmoid(a[d + i]), go = Self.sigmoid(a[2 * d + i])
                    c[i] = gi * gu + (1 - gi) * c[i]
                    vectors[i] = go * c[i]
                    (sv[i], sv[d + i], sv[2 * d + i], sv[3 * d + i]) = (gi, gu, go, c[i])
                }
            }
            yOut.update(from: vectors, count: d)
        case .rdn:
            let s = w, u = w + d
            for i in 0..<d { s[i] = tanhf(vectors[i]) }
            let sv = saved + (n * heads + h) * savedPerStep
            let (q, k, v) = (sv, sv + d, sv + 2 * d)
            let p = x.slow! + h * slowRows * d
            let row = (n * heads + h) * d
            for part in 0..<3 {
                let input = (part == 0 ? x.q! : part == 1 ? x.k! : x.v!) + row, out = sv + part * d
                for i in 0..<d { out[i] = input[i] + Vec.dot(p + (part * d + i) * d, s, d) }
            }
            let beta = Self.sigmoid(x.betaLogits![n * heads + h] + Vec.dot(p + 3 * d * d, s, d))
            sv[3 * d] = beta
            Self.softmaxInPlace(q, d)
            Self.softmaxInPlace(k, d)
            Self.deltaUpdate(m, key: k, value: v, beta: beta, scratch: u, d)
            for i in 0..<d { vectors[i] = Vec.dot(m + i * d, q, d) }
            yOut.update(from: vectors, count: d)
        }
    }

    /// Gradients of one segment.
    struct Gradients {
        /// Delta RNN / LSTM: dL/dz (as z) and dL/d(recurrent projection) (as the projection).
        var z: Tensor? = nil
        var projection: Tensor? = nil
        /// RDN: dL/dq_x, dL/dk_x, dL/dv_x ((N·H) × d), dL/d(β logits) (N × H), dL/dP.
        var q: Tensor? = nil, k: Tensor? = nil, v: Tensor? = nil, betaLogits: Tensor? = nil
        var slow: Tensor? = nil
    }

    /// Gradients from dL/d(outputScale · y) (N × H·d); no gradient flows into the state at entry.
    func backward(_ dOutput: Tensor, _ x: Inputs, cache: Cache, threads: ComputeThreads) -> Gradients {
        let batch = cache.batch, steps = cache.steps, n = batch * steps, hd = heads * d
        let chunks = (steps + checkpointInterval - 1) / checkpointInterval
        let md2 = matrices * d * d, vec = stateCountPerHead - md2
        var grads = Gradients()
        if kind == .rdn {
            grads.q = Tensor(shape: [n * heads, d])
            grads.k = Tensor(shape: [n * heads, d])
            grads.v = Tensor(shape: [n * heads, d])
            grads.betaLogits = Tensor(shape: [n, heads])
        } else {
            grads.z = Tensor(shape: [n, gates * hd])
            grads.projection = Tensor(shape: [n, heads * projectionWidthPerHead])
        }
        // The RDN's dP per sequence and head, added over the batch in order afterwards.
        var slowPerSequence = Tensor(shape: [kind == .rdn ? batch * heads * slowRows : 1, d])
        let view = InputView(x)
        let out = GradientView(&grads)
        let dSlowAll = Self.shared(&slowPerSequence)
        let scale = outputScale, span = checkpointInterval
        let dOut = SharedConstPointer(dOutput.withUnsafePointer { $0 })
        let y = SharedConstPointer(cache.core.withUnsafePointer { $0 })
        let saved = SharedConstPointer(cache.saved.withUnsafePointer { $0 })
        let checkpoints = SharedConstPointer(cache.checkpoints.withUnsafePointer { $0 })
        let initialAll = SharedConstPointer(cache.initial.withUnsafePointer { $0 })
        threads.forEach(batch * heads) { bh in
            let (b, h) = (bh / heads, bh % heads)
            // Scratch: the stretch's matrices, dL/dM, dL/dy, dL/dc, and the step's vectors.
            var work = Tensor(shape: [(span + 1) * md2 + md2 + 2 * d + 12 * d + 4])
            let states = Self.shared(&work).base
            let dM = states + (span + 1) * md2, dy = dM + md2, dc = dy + d, w = dc + d
            let initial = initialAll.base + bh * vec
            for chunk in stride(from: chunks - 1, through: 0, by: -1) {
                let t0 = chunk * span, t1 = min(steps, t0 + span)
                states.update(from: checkpoints.base + (bh * chunks + chunk) * md2, count: md2)
                for t in t0..<t1 {
                    let next = states + (t - t0 + 1) * md2
                    next.update(from: next - md2, count: md2)
                    replay(view, row: b * steps + t, head: h, matrices: next, saved: saved.base, scratch: w)
                }
                for t in stride(from: t1 - 1, through: t0, by: -1) {
                    let row = b * steps + t
                    let yPrev = t == 0 ? initial : y.base + (row - 1) * hd + h * d
                    var cPrev: UnsafePointer<Float>? = nil
                    if kind == .deltaLSTM {
                        cPrev = t == 0 ? initial + d : saved.base + ((row - 1) * heads + h) * savedPerStep + 3 * d
                    }
                    for i in 0..<d { dy[i] += scale * dOut.base[row * hd + h * d + i] }
                    stepBackward(
                        view, out, row: row, head: h, before: states + (t - t0) * md2,
                        after: states + (t - t0 + 1) * md2, yPrev: yPrev, cPrev: cPrev, saved: saved.base, dM: dM,
                        dy: dy, dc: dc, dSlow: dSlowAll.base + bh * slowRows * d, scratch: w)
                }
            }
            withExtendedLifetime(work) {}
        }
        withExtendedLifetime((view, dOutput, cache)) {}
        if kind == .rdn {
            var slow = Tensor(shape: [heads * slowRows, d])
            let per = heads * slowRows * d
            slow.withUnsafeMutablePointer { p in
                slowPerSequence.withUnsafePointer { ps in
                    for b in 0..<batch { for i in 0..<per { p[i] += ps[b * per + i] } }
                }
            }
            grads.slow = slow
        }
        return grads
    }

    /// Where the backward writes its per-row gradients (each (row, head) slot by one thread).
    private struct GradientView: @unchecked Sendable {
        var z: UnsafeMutablePointer<Float>? = nil, projection: UnsafeMutablePointer<Float>? = nil
        var q: UnsafeMutablePointer<Float>? = nil, k: UnsafeMutablePointer<Float>? = nil
        var v: UnsafeMutablePointer<Float>? = nil, betaLogits: UnsafeMutablePointer<Float>? = nil

        init(_ g: inout Gradients) {
            func base(_ t: inout Tensor?) -> UnsafeMutablePointer<Float>? {
                guard t != nil else { return nil }
                return t!.withUnsafeMutablePointer { $0 }
            }
            z = base(&g.z)
            projection = base(&g.projection)
            q = base(&g.q)
            k = base(&g.k)
            v = base(&g.v)
            betaLogits = base(&g.betaLogits)
        }
    }

    /// The fast-matrix updates of step `n` alone, applied to `matrices` (the backward's replay).
    private func replay(
        _ x: InputView, row n: Int, head h: Int, matrices m: UnsafeMutablePointer<Float>,
        saved: UnsafePointer<Float>, scratch w: UnsafeMutablePointer<Float>
    ) {
        let d = self.d
        if kind == .rdn {
            let sv = saved + (n * heads + h) * savedPerStep
            Self.deltaUpdate(m, key: sv + d, value: sv + 2 * d, beta: sv[3 * d], scratch: w, d)
            return
        }
        let pStride = heads * projectionWidthPerHead
        for g in 0..<gates {
            let r = x.projection! + n * pStride + h * projectionWidthPerHead + g * (2 * d + 1)
            Self.softmax(r, into: w, d)
            Self.deltaUpdate(m + g * d * d, key: w, value: r + d, beta: Self.sigmoid(r[2 * d]), scratch: w + d, d)
        }
    }

    /// The backward of one step of one head. On entry `dy` holds dL/dy_t and `dM` dL/dM_t (and
    /// `dc` dL/dc_t from later steps); on exit they hold the same for step t − 1. `before` and
    /// `after` are the fast matrices before and after the step.
    private func stepBackward(
        _ x: InputView, _ out: GradientView, row n: Int, head h: Int, before: UnsafePointer<Float>,
        after: UnsafePointer<Float>, yPrev: UnsafePointer<Float>, cPrev: UnsafePointer<Float>?,
        saved: UnsafePointer<Float>, dM: UnsafeMutablePointer<Float>, dy: UnsafeMutablePointer<Float>,
        dc: UnsafeMutablePointer<Float>, dSlow: UnsafeMutablePointer<Float>, scratch w: UnsafeMutablePointer<Float>
    ) {
        let d = self.d, hd = heads * d
        switch kind {
        case .linear:
            preconditionFailure("the linear fast net has no recurrent part")
        case .deltaRNN, .deltaLSTM:
            let f = w, df = w + d, kk = w + 2 * d, dkk = w + 3 * d, da = w + 4 * d  // da: 3d
            let dvTmp = w + 7 * d, g = w + 8 * d, e = w + 9 * d
            Self.softmax(yPrev, into: f, d)
            for i in 0..<d { df[i] = 0 }
            if kind == .deltaRNN {
                for i in 0..<d { da[i] = dy[i] }
            } else {
                let sv = saved + (n * heads + h) * savedPerStep
                for i in 0..<d {
                    let (gi, gu, go, c) = (sv[i], sv[d + i], sv[2 * d + i], sv[3 * d + i])
                    let dct = dy[i] * go + dc[i]
                    da[2 * d + i] = dy[i] * c * go * (1 - go)
                    da[i] = dct * (gu - cPrev![i]) * gi * (1 - gi)
                    da[d + i] = dct * gi * gu * (1 - gu)
                    dc[i] = dct * (1 - gi)
                }
            }
            let zStride = gates * hd, pStride = heads * projectionWidthPerHead
            for gate in 0..<gates {
                let dag = da + gate * d
                let dz = out.z! + n * zStride + (gate * heads + h) * d
                for i in 0..<d { dz[i] = dag[i] }
                let mAfter = after + gate * d * d, mBefore = before + gate * d * d, dm = dM + gate * d * d
                // y (or a_g) = z + M_t f: dM_t += da fᵀ, df += M_tᵀ da.
                for i in 0..<d {
                    Vec.axpy(dag[i], f, dm + i * d, d)
                    Vec.axpy(dag[i], mAfter + i * d, df, d)
                }
                let r = x.projection! + n * pStride + h * projectionWidthPerHead + gate * (2 * d + 1)
                let dr = out.projection! + n * pStride + h * projectionWidthPerHead + gate * (2 * d + 1)
                Self.softmax(r, into: kk, d)
                let beta = Self.sigmoid(r[2 * d])
                let dBeta = Self.deltaBackward(
                    mBefore, dM: dm, key: kk, value: r + d, beta: beta, dKey: dkk, dValue: dvTmp, g: g, e: e, d)
                Self.softmaxBackward(kk, dkk, into: dr, d)
                for i in 0..<d { dr[d + i] = dvTmp[i] }
                dr[2 * d] = dBeta * beta * (1 - beta)
            }
            Self.softmaxBackward(f, df, into: dy, d)
        case .rdn:
            let sv = saved + (n * heads + h) * savedPerStep
            let (q, k, v, beta) = (sv, sv + d, sv + 2 * d, sv[3 * d])
            let dpre = w  // 3d + 1: dq_pre, dk_pre, dv, dβ_pre
            let dq = w + 3 * d + 1, dk = w + 4 * d + 1, g = w + 5 * d + 1, e = w + 6 * d + 1, s = w + 7 * d + 1
            // y = W_t q: dW_t += dy qᵀ, dq = W_tᵀ dy.
            for j in 0..<d { dq[j] = 0 }
            for i in 0..<d {
                Vec.axpy(dy[i], q, dM + i * d, d)
                Vec.axpy(dy[i], after + i * d, dq, d)
            }
            let dBeta = Self.deltaBackward(
                before, dM: dM, key: k, value: v, beta: beta, dKey: dk, dValue: dpre + 2 * d, g: g, e: e, d)
            Self.softmaxBackward(q, dq, into: dpre, d)
            Self.softmaxBackward(k, dk, into: dpre + d, d)
            dpre[3 * d] = dBeta * beta * (1 - beta)
            let row = (n * heads + h) * d
            (out.q! + row).update(from: dpre, count: d)
            (out.k! + row).update(from: dpre + d, count: d)
            (out.v! + row).update(from: dpre + 2 * d, count: d)
            out.betaLogits![n * heads + h] = dpre[3 * d]
            // pre = x-part + P s: dP += dpre sᵀ, ds = Pᵀ dpre; s = tanh(y_{t−1}).
            for j in 0..<d { s[j] = tanhf(yPrev[j]) }
            let p = x.slow! + h * slowRows * d
            for j in 0..<d { dy[j] = 0 }
            for r in 0..<slowRows {
                Vec.axpy(dpre[r], s, dSlow + r * d, d)
                Vec.axpy(dpre[r], p + r * d, dy, d)
            }
            for j in 0..<d { dy[j] *= 1 - s[j] * s[j] }
        }
    }

    // MARK: small helpers over d-vectors and d × d matrices

    static func sigmoid(_ x: Float) -> Float { 1 / (1 + expf(-x)) }

    static func softmax(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ d: Int) {
        var m = -Float.infinity
        for i in 0..<d { m = max(m, x[i]) }
        var s: Float = 0
        for i in 0..<d {
            y[i] = expf(x[i] - m)
            s += y[i]
        }
        for i in 0..<d { y[i] /= s }
    }

    static func softmaxInPlace(_ x: UnsafeMutablePointer<Float>, _ d: Int) { softmax(x, into: x, d) }

    /// dx = p ⊙ (dp − p·dp) for p = softmax(x); `dx` may be `dp`.
    static func softmaxBackward(
        _ p: UnsafePointer<Float>, _ dp: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>, _ d: Int
    ) {
        var dot: Float = 0
        for i in 0..<d { dot += p[i] * dp[i] }
        for i in 0..<d { dx[i] = p[i] * (dp[i] - dot) }
    }

    /// M += β (v − M k) kᵀ (M d × d row-major; `scratch` d floats).
    static func deltaUpdate(
        _ m: UnsafeMutablePointer<Float>, key k: UnsafePointer<Float>, value v: UnsafePointer<Float>, beta: Float,
        scratch e: UnsafeMutablePointer<Float>, _ d: Int
    ) {
        for i in 0..<d { e[i] = beta * (v[i] - Vec.dot(m + i * d, k, d)) }
        for i in 0..<d { Vec.axpy(e[i], k, m + i * d, d) }
    }

    /// The backward of `deltaUpdate` from M_{t−1} = `before`: with dM = dL/dM_t on entry, writes
    /// dL/dk and dL/dv, returns dL/dβ, and leaves dL/dM_{t−1} = dM (I − β k kᵀ) in dM.
    /// (g = dM k; e = v − M_{t−1} k; dβ = e·g; dv = β g; dk = β (dMᵀ e − M_{t−1}ᵀ g).)
    static func deltaBackward(
        _ before: UnsafePointer<Float>, dM: UnsafeMutablePointer<Float>, key k: UnsafePointer<Float>,
        value v: UnsafePointer<Float>, beta: Float, dKey dk: UnsafeMutablePointer<Float>,
        dValue dv: UnsafeMutablePointer<Float>, g: UnsafeMutablePointer<Float>, e: UnsafeMutablePointer<Float>,
        _ d: Int
    ) -> Float {
        var dBeta: Float = 0
        for i in 0..<d {
            g[i] = Vec.dot(dM + i * d, k, d)
            e[i] = v[i] - Vec.dot(before + i * d, k, d)
            dBeta += e[i] * g[i]
            dv[i] = beta * g[i]
        }
        for j in 0..<d { dk[j] = 0 }
        for i in 0..<d {
            Vec.axpy(beta * e[i], dM + i * d, dk, d)
            Vec.axpy(-beta * g[i], before + i * d, dk, d)
        }
        for i in 0..<d { Vec.axpy(-beta * g[i], k, dM + i * d, d) }
        return dBeta
    }
}
