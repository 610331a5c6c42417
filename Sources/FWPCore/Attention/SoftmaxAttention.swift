import CKernels
import Foundation

/// Causal softmax attention between an attention layer's projections (the Transformer
/// baseline): in training, blockwise products that skip the blocks above the diagonal, with the
/// T × T probabilities kept per head for the backward; in recurrent use, a key/value cache.
struct SoftmaxAttention: Sendable {
    let heads: Int
    let headSize: Int
    /// Softmax: query steps per block of the causal products in training (blocks wholly above
    /// the diagonal are skipped, about half the work); the result does not depend on it. Nil:
    /// `causalBlock(steps:)` chooses.
    var causalBlock: Int? = nil
    /// Training at T ≥ this runs the online (blockwise, running-softmax) form, which keeps only
    /// a block of scores per head (`forwardOnline`); shorter segments keep the T × T
    /// probabilities. Nil: `onlineFrom(…)` chooses.
    var onlineThreshold: Int? = nil
    /// Query and key steps per block of the online form.
    var onlineBlock = 64

    /// The shortest segment that trains with the online form.
    var onlineFrom: Int { onlineThreshold ?? Self.defaultOnlineThreshold }
    /// `FWP_SOFTMAX_ONLINE_FROM` overrides it (for measuring both forms: 1 is always online).
    static let defaultOnlineThreshold =
        ProcessInfo.processInfo.environment["FWP_SOFTMAX_ONLINE_FROM"].flatMap { Int($0) } ?? 512

    /// 32 up to T = 256 with the small kernel's AVX-512 blocks (more of the upper triangle
    /// skipped), 64 otherwise (longer blocks of 32 send their long dV and dK products to OpenBLAS
    /// 32 rows at a time, which costs more than the skipped blocks save).
    func causalBlock(steps: Int) -> Int {
        causalBlock ?? (steps <= 256 && KernelDispatch.avx512 ? 32 : 64)
    }
    /// The softmax blocks' products (k up to T) run on the small kernel up to this dimension:
    /// 256 with its AVX-512 blocks, which beat OpenBLAS there; the AVX2 blocks keep the general
    /// limit (`fwp-bench --only lm-softmax` compares).
    var softmaxSmallLimit: Int { KernelDispatch.avx512 ? 256 : BLAS.smallKernelLimit }

    /// Everything the backward pass needs.
    struct Cache {
        var qRaw: Tensor, kRaw: Tensor, v: Tensor  // (N·H) × d_head
        var core: Tensor  // N × H·d_head
        var probabilities: TensorStorage  // B·H blocks of T × T (empty after the online form)
        var batch: Int, steps: Int
        /// The online form's log Σ_j exp(s_tj) per (sequence, head) and step (B·H·T).
        var logSumExp: TensorStorage = []
    }

    func forward(_ cache: inout Cache, state: inout AttentionState?, threads: ComputeThreads) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dh = headSize, hd = heads * headSize, seqs = batch * heads
        let scale = 1 / Float(dh).squareRoot()
        if var st = state {
            // Recurrent use: append to each sequence's key/value cache and attend over all of it.
            // `st` is then the only reference, so the caches grow in place (not copied per step).
            state = nil
            precondition(st.keys.count == seqs, "carried state is for another batch size")
            let (q, k, v) = (cache.qRaw, cache.kRaw, cache.v)
            let y = cache.core.mutablePointer()
            borrowing(q, k, v, cache.core) {
                for s in 0..<seqs {
                    let b = s / heads, h = s % heads
                    for t in 0..<steps {
                        let r = (b * steps + t) * hd + h * dh
                        st.keys[s].append(contentsOf: UnsafeBufferPointer(start: k.pointer + r, count: dh))
                        st.values[s].append(contentsOf: UnsafeBufferPointer(start: v.pointer + r, count: dh))
                    }
                }
                let past = st.length
                // The (sequence, head) pairs in parallel; `cached` only reads the caches (it is
                // gone before the next append, so they are not copied).
                let cached = (keys: st.keys, values: st.values)
                let native = VectorKernels.enabled  // the exponentials in C
                let pq = SharedConstPointer(q.pointer), py = SharedPointer(y)
                threads.forEach(seqs) { s in
                    let b = s / heads, h = s % heads
                    var scores = [Float](repeating: 0, count: past + steps)
                    scores.withUnsafeMutableBufferPointer { buffer in
                        cached.keys[s].withUnsafeBufferPointer { pk in
                            cached.values[s].withUnsafeBufferPointer { pv in
                                let p = buffer.baseAddress!
                                for t in 0..<steps {
                                    let r = (b * steps + t) * hd + h * dh
                                    let visible = past + t + 1
                                    // scores = softmax(K q / √d) over the visible keys, y = Vᵀ scores
                                    BLAS.gemv(
                                        transpose: false, rows: visible, columns: dh, alpha: scale, a: pk.baseAddress!,
                                        lda: dh, x: pq.base + r, y: p)
                                    let m = Vec.maximum(p, visible)
                                    let sum =
                                        native
                                        ? fwp_exp_shifted_sum(p, visible, m) : Vec.expShifted(p, p, visible, shift: m)
                                    BLAS.gemv(
                                        transpose: true, rows: visible, columns: dh, alpha: 1 / sum, a: pv.baseAddress!,
                                        lda: dh, x: p, y: py.base + r)
                                }
                            }
                        }
                    }
                }
            }
            st.length += steps
            state = st
            return
        }
        if steps >= onlineFrom {
            forwardOnline(&cache, threads: threads)
            return
        }
        // Each row block writes columns [0, r1) of its rows (zeros above the diagonal); columns
        // past the block's end are never read, here or in the backward pass, so nothing else is
        // initialised (at T = 2048 zero-filling this buffer was a serial 67 MB memset per layer).
        var probs = TensorStorage(uninitializedCount: seqs * steps * steps)
        let native = VectorKernels.enabled  // each row's softmax as one C kernel call
        let block = causalBlock(steps: steps), smallLimit = softmaxSmallLimit
        let (q, k, v) = (cache.qRaw, cache.kRaw, cache.v)
        let pq = SharedConstPointer(q.pointer), pk = SharedConstPointer(k.pointer), pv = SharedConstPointer(v.pointer)
        let py = SharedPointer(cache.core.mutablePointer()), pp = SharedPointer(probs.mutablePointer())
        borrowing(q, k, v, cache.core, probs) {
            threads.forEach(seqs) { s in
                let b = s / heads, h = s % heads
                let off = b * steps * hd + h * dh  // sequence b's first row, head h's columns
                let P = pp.base + s * steps * steps
                // Row blocks of `causalBlock` query steps see keys up to the block's end only: the
                // products skip the masked upper blocks (about half).
                var r0 = 0
                while r0 < steps {
                    let r1 = min(r0 + block, steps)
                    // S = Q Kᵀ / √d over the block's rows and columns [0, r1)
                    BLAS.gemm(
                        transposeA: false, transposeB: true, m: r1 - r0, n: r1, k: dh, alpha: scale,
                        a: pq.base + off + r0 * hd,
                        lda: hd, b: pk.base + off, ldb: hd, beta: 0, c: P + r0 * steps, ldc: steps,
                        smallLimit: smallLimit)
                    // P = causal softmax(S), zero up to the block's end
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
                    // Y = P V
                    BLAS.gemm(
                        transposeA: false, transposeB: false, m: r1 - r0, n: dh, k: r1, a: P + r0 * steps, lda: steps,
                        b: pv.base + off, ldb: hd, beta: 0, c: py.base + off + r0 * hd, ldc: hd, smallLimit: smallLimit)
                    r0 = r1
                }
            }
        }
        cache.probabilities = probs
    }

    func backward(_ dCore: Tensor, cache: Cache, threads: ComputeThreads) -> (Tensor, Tensor, Tensor) {
        if !cache.logSumExp.isEmpty { return backwardOnline(dCore, cache: cache, threads: threads) }
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
        let (q, k, v, probs) = (cache.qRaw, cache.kRaw, cache.v, cache.probabilities)
        let pdy = SharedConstPointer(dCore.pointer), pq = SharedConstPointer(q.pointer),
            pk = SharedConstPointer(k.pointer)
        let pv = SharedConstPointer(v.pointer), pp = SharedConstPointer(probs.pointer)
        let pdq = SharedPointer(dq.mutablePointer()), pdk = SharedPointer(dk.mutablePointer()),
            pdv = SharedPointer(dv.mutablePointer())
        let block = causalBlock(steps: steps)
        borrowing(dCore, q, k, v, probs, dq, dk, dv) {
            threads.forEach(seqs) { s in
                let b = s / heads, h = s % heads
                let off = b * steps * hd + h * dh  // sequence b's first row, head h's columns
                let P = pp.base + s * steps * steps
                // Written where read, as P in the forward pass.
                var dPStorage = TensorStorage(uninitializedCount: steps * steps)
                let dP = dPStorage.mutablePointer()
                borrowing(dPStorage) {
                    // Blocks as in the forward pass: row block [r0, r1) of dP, dS and dQ needs
                    // columns [0, r1); column block [c0, c1) of dV and dK needs rows [c0, T).
                    // P is zero above the diagonal within each block and unset past it.
                    var r0 = 0
                    while r0 < steps {
                        let r1 = min(r0 + block, steps)
                        // dP = dY Vᵀ
                        BLAS.gemm(
                            transposeA: false, transposeB: true, m: r1 - r0, n: r1, k: dh, a: pdy.base + off + r0 * hd,
                            lda: hd,
                            b: pv.base + off, ldb: hd, beta: 0, c: dP + r0 * steps, ldc: steps, smallLimit: smallLimit)
                        // dS = P ⊙ (dP − rowsum(dP ⊙ P)), then scaled; zero up to the block's end.
                        for t in r0..<r1 {
                            let pr = P + t * steps, dr = dP + t * steps
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
                            transposeA: false, transposeB: false, m: r1 - r0, n: dh, k: r1, a: dP + r0 * steps,
                            lda: steps,
                            b: pk.base + off, ldb: hd, beta: 0, c: pdq.base + off + r0 * hd, ldc: hd,
                            smallLimit: smallLimit)
                        r0 = r1
                    }
                    var c0 = 0
                    while c0 < steps {
                        let c1 = min(c0 + block, steps)
                        // dV = Pᵀ dY and dK = dSᵀ Q over rows [c0, T)
                        BLAS.gemm(
                            transposeA: true, transposeB: false, m: c1 - c0, n: dh, k: steps - c0,
                            a: P + c0 * steps + c0,
                            lda: steps, b: pdy.base + off + c0 * hd, ldb: hd, beta: 0, c: pdv.base + off + c0 * hd,
                            ldc: hd,
                            smallLimit: smallLimit)
                        BLAS.gemm(
                            transposeA: true, transposeB: false, m: c1 - c0, n: dh, k: steps - c0,
                            a: dP + c0 * steps + c0,
                            lda: steps, b: pq.base + off + c0 * hd, ldb: hd, beta: 0, c: pdk.base + off + c0 * hd,
                            ldc: hd,
                            smallLimit: smallLimit)
                        c0 = c1
                    }
                }
            }
        }
        return (dq, dk, dv)
    }

    // MARK: the online form

    /// Causal softmax attention a block of queries at a time against a block of keys at a time,
    /// with a running maximum m and sum l per query (Milakov & Gimelshein 2018; FlashAttention):
    /// for each key block, m' = max(m, max_j s_tj), O ← O·e^{m − m'} + Σ_j e^{s_tj − m'} v_j,
    /// l ← l·e^{m − m'} + Σ_j e^{s_tj − m'}; finally y_t = O_t / l_t and L_t = m + log l is kept
    /// for the backward. Scratch per sequence: one block of scores; nothing T × T.
    private func forwardOnline(_ cache: inout Cache, threads: ComputeThreads) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dh = headSize, hd = heads * headSize, seqs = batch * heads, bs = onlineBlock
        let native = VectorKernels.enabled  // the rows' exponentials in C
        var lse = TensorStorage(uninitializedCount: seqs * steps)
        let (q, k, v) = (cache.qRaw, cache.kRaw, cache.v)
        let pq = SharedConstPointer(q.pointer), pk = SharedConstPointer(k.pointer), pv = SharedConstPointer(v.pointer)
        let py = SharedPointer(cache.core.mutablePointer()), pl = SharedPointer(lse.mutablePointer())
        borrowing(q, k, v, cache.core, lse) {
            threads.forEach(seqs) { s in
                let b = s / heads, h = s % heads
                let off = b * steps * hd + h * dh
                var scratch = TensorStorage(uninitializedCount: bs * bs + 2 * bs)
                let S = scratch.mutablePointer(), m = S + bs * bs, l = m + bs
                borrowing(scratch) {
                    var r0 = 0
                    while r0 < steps {
                        let r1 = min(r0 + bs, steps), rows = r1 - r0
                        let out = py.base + off + r0 * hd
                        for i in 0..<rows { (out + i * hd).update(repeating: 0, count: dh) }
                        m.update(repeating: -Float.infinity, count: rows)
                        l.update(repeating: 0, count: rows)
                        var c0 = 0
                        while c0 < r1 {
                            let c1 = min(c0 + bs, r1), cols = c1 - c0
                            blockScores(pq, pk, offset: off, queries: r0, rows, keys: c0, cols, into: S)
                            for i in 0..<rows {
                                let row = S + i * bs
                                let valid = Self.visibleKeys(query: r0 + i, keys: c0, cols)
                                if valid == 0 {
                                    row.update(repeating: 0, count: cols)
                                    continue
                                }
                                let mNew = max(m[i], Vec.maximum(row, valid))
                                let correction = expf(m[i] - mNew)
                                let sum =
                                    native
                                    ? fwp_exp_shifted_sum(row, valid, mNew)
                                    : Vec.expShifted(row, row, valid, shift: mNew)
                                (row + valid).update(repeating: 0, count: cols - valid)
                                l[i] = l[i] * correction + sum
                                m[i] = mNew
                                if correction != 1 { Vec.scale(correction, out + i * hd, dh) }
                            }
                            // O += P V over the block's keys
                            BLAS.gemm(
                                transposeA: false, transposeB: false, m: rows, n: dh, k: cols, a: S, lda: bs,
                                b: pv.base + off + c0 * hd, ldb: hd, beta: 1, c: out, ldc: hd,
                                smallLimit: softmaxSmallLimit)
                            c0 = c1
                        }
                        for i in 0..<rows {
                            Vec.scale(1 / l[i], out + i * hd, dh)
                            pl.base[s * steps + r0 + i] = m[i] + logf(l[i])
                        }
                        r0 = r1
                    }
                }
            }
        }
        cache.probabilities = []
        cache.logSumExp = lse
    }

    /// The online form's backward (FlashAttention-2's order): with D_t = dy_t · y_t, per pair of
    /// blocks the probabilities are recomputed as P = exp(s − L), then dV += Pᵀ dY,
    /// dP = dY Vᵀ, dS = P ⊙ (dP − D) / √d, dQ += dS K, dK += dSᵀ Q. One thread per (sequence,
    /// head) owns its rows of dQ, dK and dV.
    private func backwardOnline(_ dCore: Tensor, cache: Cache, threads: ComputeThreads) -> (Tensor, Tensor, Tensor) {
        let (batch, steps) = (cache.batch, cache.steps)
        let dh = headSize, hd = heads * headSize, seqs = batch * heads, n = batch * steps, bs = onlineBlock
        let native = VectorKernels.enabled  // the rows' exponentials and score gradients in C
        let scale = 1 / Float(dh).squareRoot()
        var dq = Tensor(shape: [n, hd]), dk = Tensor(shape: [n, hd]), dv = Tensor(shape: [n, hd])
        let (q, k, v, y, lse) = (cache.qRaw, cache.kRaw, cache.v, cache.core, cache.logSumExp)
        let pdy = SharedConstPointer(dCore.pointer), pq = SharedConstPointer(q.pointer)
        let pk = SharedConstPointer(k.pointer), pv = SharedConstPointer(v.pointer)
        let py = SharedConstPointer(y.pointer), pl = SharedConstPointer(lse.pointer)
        let pdq = SharedPointer(dq.mutablePointer()), pdk = SharedPointer(dk.mutablePointer()),
            pdv = SharedPointer(dv.mutablePointer())
        borrowing(dCore, q, k, v, y, lse, dq, dk, dv) {
            threads.forEach(seqs) { s in
                let b = s / heads, h = s % heads
                let off = b * steps * hd + h * dh
                var scratch = TensorStorage(uninitializedCount: 2 * bs * bs + steps)
                let P = scratch.mutablePointer(), dP = P + bs * bs, D = dP + bs * bs
                borrowing(scratch) {
                    for t in 0..<steps { D[t] = Vec.dot(pdy.base + off + t * hd, py.base + off + t * hd, dh) }
                    var r0 = 0
                    while r0 < steps {
                        let r1 = min(r0 + bs, steps), rows = r1 - r0
                        var c0 = 0
                        while c0 < r1 {
                            let c1 = min(c0 + bs, r1), cols = c1 - c0
                            blockScores(pq, pk, offset: off, queries: r0, rows, keys: c0, cols, into: P)
                            BLAS.gemm(
                                transposeA: false, transposeB: true, m: rows, n: cols, k: dh,
                                a: pdy.base + off + r0 * hd, lda: hd, b: pv.base + off + c0 * hd, ldb: hd, beta: 0,
                                c: dP, ldc: bs, smallLimit: softmaxSmallLimit)
                            for i in 0..<rows {
                                let t = r0 + i, row = P + i * bs, drow = dP + i * bs
                                let valid = Self.visibleKeys(query: t, keys: c0, cols)
                                let lse = pl.base[s * steps + t]
                                if native {
                                    fwp_softmax_scores_backward(row, drow, valid, lse, D[t], scale)
                                } else {
                                    _ = Vec.expShifted(row, row, valid, shift: lse)
                                    Vec.softmaxGradient(row, drow, valid, shift: D[t], scale: scale)
                                }
                                for j in valid..<cols {
                                    row[j] = 0
                                    drow[j] = 0
                                }
                            }
                            // dV += Pᵀ dY, dQ += dS K, dK += dSᵀ Q
                            BLAS.gemm(
                                transposeA: true, transposeB: false, m: cols, n: dh, k: rows, a: P, lda: bs,
                                b: pdy.base + off + r0 * hd, ldb: hd, beta: 1, c: pdv.base + off + c0 * hd, ldc: hd,
                                smallLimit: softmaxSmallLimit)
                            BLAS.gemm(
                                transposeA: false, transposeB: false, m: rows, n: dh, k: cols, a: dP, lda: bs,
                                b: pk.base + off + c0 * hd, ldb: hd, beta: 1, c: pdq.base + off + r0 * hd, ldc: hd,
                                smallLimit: softmaxSmallLimit)
                            BLAS.gemm(
                                transposeA: true, transposeB: false, m: cols, n: dh, k: rows, a: dP, lda: bs,
                                b: pq.base + off + r0 * hd, ldb: hd, beta: 1, c: pdk.base + off + c0 * hd, ldc: hd,
                                smallLimit: softmaxSmallLimit)
                            c0 = c1
                        }
                        r0 = r1
                    }
                }
            }
        }
        return (dq, dk, dv)
    }

    /// S = Q[r0 ..< r0 + rows] K[c0 ..< c0 + cols]ᵀ / √d for one head (rows `offset` + t·H·d in
    /// q and k), into a block with row stride `onlineBlock`.
    private func blockScores(
        _ q: SharedConstPointer, _ k: SharedConstPointer, offset: Int, queries r0: Int, _ rows: Int, keys c0: Int,
        _ cols: Int, into s: UnsafeMutablePointer<Float>
    ) {
        let hd = heads * headSize
        BLAS.gemm(
            transposeA: false, transposeB: true, m: rows, n: cols, k: headSize,
            alpha: 1 / Float(headSize).squareRoot(), a: q.base + offset + r0 * hd, lda: hd,
            b: k.base + offset + c0 * hd, ldb: hd, beta: 0, c: s, ldc: onlineBlock, smallLimit: softmaxSmallLimit)
    }

    /// How many of the keys c0 ..< c0 + cols query t sees (those at or before t).
    private static func visibleKeys(query t: Int, keys c0: Int, _ cols: Int) -> Int { max(0, min(cols, t - c0 + 1)) }
}
