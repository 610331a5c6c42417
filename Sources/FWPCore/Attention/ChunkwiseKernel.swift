import CKernels

/// The fast-weight recurrence in chunkwise-parallel form, forward and backward.
///
/// The sequence is cut into chunks of C steps. Within a chunk the rank-1 updates become matrix
/// products (the WY/UT representation of products of Householder-like factors, as in Yang et al.
/// 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence Length"):
///
///     G = K Kᵀ,  L = strictly-lower(diag(β) G),  M = I + L,  A = M⁻¹ diag(β)
///     X = V − K Sᵀ,   Ũ = A X                            (delta rule; Ũ = V for the sum rule)
///     Y = Q Sᵀ + causal(Q Kᵀ) Ũ,   S ← S + Ũᵀ K
///
/// where S (d_value × d_dot) is the state at the chunk's start and the rows of Ũ are exactly the
/// values u_t = β_t (v_t − W_{t−1} k_t) that the recurrence writes. (Ũ = A V − (A K) Sᵀ is the
/// same thing in the "W, U" form of the paper, which costs one C × C × d product more here.)
/// Almost all work is GEMMs of C × C × d or C × d × d. The backward pass walks chunks in reverse
/// with the saved chunk-start states, Ũ, X, M⁻¹ and the chunks' causal(Q Kᵀ) and K Kᵀ (memory
/// O(T·(C + d_value) + T/C·d_value·d_dot) per sequence, linear in T), differentiating each
/// product by hand (derivation in docs/MODEL.md).
///
/// The Swift loops over chunks here are the reference path. With the small kernel and the vector
/// kernels on (`KernelDispatch`), the same loops run in C (CKernels' chunkwise.c: the same
/// products in the same order, so the same bits — `ChunkwiseKernelTests` checks bit for bit —
/// without the Swift loop's own work between products; chunks of 16 keep their C × C steps in
/// AVX-512 registers).
///
/// It covers the sum and delta rules without attention normalisation; `FastWeightKernel` (the
/// fused per-row recurrence) remains for attention normalisation and for step-by-step inference.
public struct ChunkwiseKernel: Sendable {
    /// The chunk size `FastWeightAlgorithm.automatic` uses.
    public static let defaultChunkSize = 16
    /// Segments shorter than this use the recurrence under `.automatic`.
    public static let minimumSteps = 16

    public let rule: UpdateRule
    public let chunkSize: Int
    public let steps: Int
    public let keySize: Int
    public let valueSize: Int
    public let keyStride: Int
    public let valueStride: Int
    /// Row strides of the outputs dq, dk (keys) and y, dv (values); the input strides unless given.
    public let outputKeyStride: Int
    public let outputValueStride: Int
    /// When set, `forwardPacked` takes q and k before the feature map and applies ELU + 1 with
    /// sum normalisation itself (the C kernel, as it gathers the rows), and `backwardPacked`
    /// returns their gradients before it. Requires `VectorKernels.supported`.
    public let featureMapped: Bool
    public let betaStride: Int
    /// The forward writes outputScale · y (the attention's 1/√d folded into the product that
    /// makes y, not a pass of its own); `backwardPacked` then takes the gradient of that scaled
    /// output and scales it back as it gathers it. The plain `backward` requires 1.
    public let outputScale: Float
    /// Whether the loops over chunks run in C where they can (`nativeShape`); off, they run in
    /// Swift (for tests that compare the two).
    var nativeLoops = true

    public init(
        rule: UpdateRule, chunkSize: Int, steps: Int, keySize: Int, valueSize: Int, keyStride: Int,
        valueStride: Int, betaStride: Int, outputKeyStride: Int? = nil, outputValueStride: Int? = nil,
        featureMapped: Bool = false, outputScale: Float = 1
    ) {
        self.outputScale = outputScale
        precondition(!featureMapped || VectorKernels.supported, "the fused feature map needs AVX2 and FMA")
        self.featureMapped = featureMapped
        precondition(chunkSize >= 1 && steps >= 0)
        self.rule = rule
        self.chunkSize = chunkSize
        self.steps = steps
        self.keySize = keySize
        self.valueSize = valueSize
        self.keyStride = keyStride
        self.valueStride = valueStride
        self.outputKeyStride = outputKeyStride ?? keyStride
        self.outputValueStride = outputValueStride ?? valueStride
        self.betaStride = betaStride
    }

    var chunks: Int { (steps + chunkSize - 1) / chunkSize }

    /// Floats saved per sequence by `forward` for `backward`.
    public var savedCount: Int {
        chunks * valueSize * keySize + steps * chunkSize
            + (rule == .delta ? steps * (2 * valueSize + 2 * chunkSize) : 0)
    }

    /// Scratch floats per sequence needed by `forward` and `backward`.
    public var scratchCount: Int {
        5 * chunkSize * chunkSize + chunkSize * (valueSize + keySize + 2) + keySize * (valueSize + chunkSize)
    }

    // Offsets of the saved arrays.
    private var savedStatesCount: Int { chunks * valueSize * keySize }
    private var savedUOffset: Int { savedStatesCount }
    private var savedMOffset: Int { savedStatesCount + steps * valueSize }
    private var savedXOffset: Int { savedMOffset + steps * chunkSize }
    // causal(Q Kᵀ) of every chunk (both rules), then K Kᵀ (delta rule): the backward reuses them.
    private var savedPOffset: Int { rule == .delta ? savedXOffset + steps * valueSize : savedStatesCount }
    private var savedGOffset: Int { savedPOffset + steps * chunkSize }

    /// Where `forwardPacked` keeps its rows beyond `savedCount` in a sequence's saved floats,
    /// each array on a cache line: q, k, v (the sum rule's; empty for the delta rule), the
    /// feature map's row sums for q and k (with `featureMapped`), and the end.
    private var packedOffsets: (q: Int, k: Int, v: Int, sums: Int, end: Int) {
        let q = AlignedFloats.lineRounded(savedCount)
        let k = q + AlignedFloats.lineRounded(steps * keySize)
        let v = k + AlignedFloats.lineRounded(steps * keySize)
        let sums = v + (rule == .sum ? AlignedFloats.lineRounded(steps * valueSize) : 0)
        return (q, k, v, sums, sums + (featureMapped ? 2 * AlignedFloats.lineRounded(steps) : 0))
    }

    /// Floats per sequence that `forwardPacked` saves for `backwardPacked`: `savedCount` plus the
    /// gathered q and k rows (and v for the sum rule, and the feature sums with `featureMapped`).
    public var packedSavedCount: Int { packedOffsets.end }

    /// Floats of `packed` workspace that `backwardPacked` needs (the gathered dy rows, and with
    /// `featureMapped` the gradients of the features before the feature map's backward).
    public var packedCount: Int {
        AlignedFloats.lineRounded(steps * valueSize)
            + (featureMapped ? 2 * AlignedFloats.lineRounded(steps * keySize) : 0)
    }

    /// The feature map's row sums (q's, then k's) inside a sequence's `packedSavedCount` floats.
    private func featureSums(_ saved: UnsafeMutablePointer<Float>) -> (
        q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>
    ) {
        let q = saved + packedOffsets.sums
        return (q, q + AlignedFloats.lineRounded(steps))
    }

    /// Where the gathered q, k (and v) rows live inside a sequence's `packedSavedCount` floats.
    private func packedRows(_ saved: UnsafeMutablePointer<Float>) -> (
        q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>
    ) {
        let o = packedOffsets
        return (saved + o.q, saved + o.k, saved + o.v)
    }

    /// This kernel reading q and k back to back (from `packedRows`) and v, dy at `valueStride`,
    /// writing dq, dk at `outputKeyStride` and y, dv at this kernel's `outputValueStride`.
    private func packedKernel(valueStride vs: Int, outputKeyStride oks: Int, outputScale: Float = 1) -> ChunkwiseKernel
    {
        var kernel = ChunkwiseKernel(
            rule: rule, chunkSize: chunkSize, steps: steps, keySize: keySize, valueSize: valueSize, keyStride: keySize,
            valueStride: vs, betaStride: betaStride, outputKeyStride: oks, outputValueStride: outputValueStride,
            outputScale: outputScale)
        kernel.nativeLoops = nativeLoops
        return kernel
    }

    /// `forward` on copies of the sequence's q and k rows (and v for the sum rule) gathered into
    /// `saved` beyond `savedCount`, where the backward reads them too; y is written in place.
    /// `saved` and `scratch` should start on a cache line. The model's q, k, v are one head's
    /// slice of (B·T) × (H·d) rows at 16-byte-aligned addresses: as a product's B operand (read
    /// 16 floats per row) they straddle cache lines, and a chunk's rows lie H·d floats apart.
    /// Operands read only by broadcast (the delta rule's v, the addend of X) and outputs, each
    /// written once, stay where they are. Results are identical to `forward`'s.
    public func forwardPacked(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, beta: UnsafePointer<Float>?,
        y: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>,
        saved: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        let rows = packedRows(saved)
        if featureMapped {
            let sums = featureSums(saved)
            let eps = SumNormalization.epsilon
            fwp_elu_plus_one_sum_normalize_strided(q, keyStride, rows.q, keySize, sums.q, steps, keySize, eps)
            fwp_elu_plus_one_sum_normalize_strided(k, keyStride, rows.k, keySize, sums.k, steps, keySize, eps)
        } else {
            fwp_copy_rows(q, keyStride, rows.q, keySize, steps, keySize)
            fwp_copy_rows(k, keyStride, rows.k, keySize, steps, keySize)
        }
        var vIn = v
        if rule == .sum {
            fwp_copy_rows(v, valueStride, rows.v, valueSize, steps, valueSize)
            vIn = UnsafePointer(rows.v)
        }
        packedKernel(
            valueStride: rule == .sum ? valueSize : valueStride, outputKeyStride: outputKeyStride,
            outputScale: outputScale
        ).forward(
            q: rows.q, k: rows.k, v: vIn, beta: beta, y: y, w: w, saved: saved, scratch: scratch)
    }

    /// `backward` after `forwardPacked`: q, k (v) are read from `saved`, dy is gathered into
    /// `packed`; dq, dk (at `outputKeyStride`), dv (at `outputValueStride`) and dβ are written at
    /// their strides. Results are identical to `backward`'s.
    public func backwardPacked(
        dy: UnsafePointer<Float>, beta: UnsafePointer<Float>?, saved: UnsafePointer<Float>,
        dw: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
        dbeta: UnsafeMutablePointer<Float>?, seeded: Bool = false, packed: UnsafeMutablePointer<Float>
    ) {
        let rows = packedRows(UnsafeMutablePointer(mutating: saved))
        // The gradient of the scaled output, times the scale: the gradient of y itself.
        fwp_copy_rows_scaled(dy, valueStride, packed, valueSize, steps, valueSize, outputScale)
        guard featureMapped else {
            packedKernel(valueStride: valueSize, outputKeyStride: outputKeyStride).backward(
                dy: packed, q: rows.q, k: rows.k, v: rows.v, beta: beta, saved: saved, dw: dw, scratch: scratch, dq: dq,
                dk: dk, dv: dv, dbeta: dbeta, seeded: seeded)
            return
        }
        // Gradients of the features into the workspace, then through the feature map into dq, dk.
        let nk = AlignedFloats.lineRounded(steps * keySize)
        let dqf = packed + AlignedFloats.lineRounded(steps * valueSize), dkf = dqf + nk
        packedKernel(valueStride: valueSize, outputKeyStride: keySize).backward(
            dy: packed, q: rows.q, k: rows.k, v: rows.v, beta: beta, saved: saved, dw: dw, scratch: scratch, dq: dqf,
            dk: dkf, dv: dv, dbeta: dbeta, seeded: seeded)
        let sums = featureSums(UnsafeMutablePointer(mutating: saved))
        fwp_elu_plus_one_sum_normalize_backward_strided(
            dqf, keySize, rows.q, keySize, sums.q, dq, outputKeyStride, steps, keySize)
        fwp_elu_plus_one_sum_normalize_backward_strided(
            dkf, keySize, rows.k, keySize, sums.k, dk, outputKeyStride, steps, keySize)
    }

    /// Runs the recurrence from state `w` (d_value × d_dot, row-major), leaving the final state in
    /// it, writing y_t (unnormalised, unscaled) to `y`.
    public func forward(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, beta: UnsafePointer<Float>?,
        y: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>,
        saved: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        if var shape = nativeShape {
            fwp_chunkwise_forward(&shape, q, k, v, beta, y, w, saved, scratch)
            return
        }
        let C = chunkSize, dk = keySize, dv = valueSize, ks = keyStride, vs = valueStride, ovs = outputValueStride
        let isDelta = rule == .delta
        let A = scratch + C * C
        // Sᵀ and the chunk's Kᵀ, each transposed once here rather than inside each of the two
        // products that read it (the small kernel transposes a B operand on every call).
        let St = scratch + 5 * C * C + C * (dv + dk + 2), Kt = St + dk * dv
        let bcont = scratch + 5 * C * C + C * (dv + dk + 1)  // the chunk's β, contiguous (C floats)
        // Chunk ci's start state lives in its saved slot: the first is copied from w, each later
        // one is written there by the previous chunk's update, and the last update goes to w.
        if chunks > 0 { saved.update(from: w, count: dv * dk) }
        for ci in 0..<chunks {
            let t0 = ci * C, c = min(C, steps - t0)
            let qc = q + t0 * ks, kc = k + t0 * ks, vc = v + t0 * vs, yc = y + t0 * ovs
            let S = UnsafePointer(saved + ci * dv * dk)
            BLAS.transpose(rows: dv, cols: dk, S, lds: dk, into: St, ldd: dv)
            BLAS.transpose(rows: c, cols: dk, kc, lds: ks, into: Kt, ldd: c)
            if ci + 1 < chunks { prefetchForwardValues(chunk: ci + 1, v: v) }
            var ut = UnsafePointer(vc), ldu = vs
            let P = saved + savedPOffset + t0 * C
            if isDelta {
                let bc = beta! + t0 * betaStride
                let minv = saved + savedMOffset + t0 * C
                let x = saved + savedXOffset + t0 * dv
                let u = saved + savedUOffset + t0 * dv
                // G = K Kᵀ, then M⁻¹ by forward substitution: row_i = e_i − Σ_{m<i} β_i G_im row_m.
                let G = saved + savedGOffset + t0 * C
                BLAS.gemm(
                    transposeA: false, transposeB: false, m: c, n: c, k: dk, a: kc, lda: ks, b: Kt, ldb: c, beta: 0,
                    c: G, ldc: C)
                gatherBeta(bc, c: c, into: bcont)
                invertUnitLower(g: G, beta: bc, c: c, into: minv, contiguousBeta: bcont)
                // A = M⁻¹ diag(β); X = V − K Sᵀ (what the chunk-start state leaves unpredicted);
                // Ũ = A X (= A V − (A K) Sᵀ, the W/U form, with one C × C × d product fewer).
                scaleColumns(minv, by: bc, c: c, into: A, contiguousBeta: bcont)
                BLAS.gemm(
                    transposeA: false, transposeB: false, m: c, n: dv, k: dk, alpha: -1, a: kc, lda: ks, b: St, ldb: dv,
                    beta: 1, cIn: vc, ldcIn: vs, c: x, ldc: dv)
                BLAS.gemm(
                    transposeA: false, transposeB: false, m: c, n: dv, k: c, a: A, lda: C, b: x, ldb: dv, beta: 0,
                    c: u, ldc: dv)
                ut = UnsafePointer(u)
                ldu = dv
            }
            // Y = Q Sᵀ + causal(Q Kᵀ) Ũ, both terms in one pass over Y
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: c, k: dk, a: qc, lda: ks, b: Kt, ldb: c, beta: 0, c: P,
                ldc: C)
            maskUpper(P, c: c, ld: C)
            BLAS.gemmSum(
                m: c, n: dv, .init(k: dk, a: qc, lda: ks, b: St, ldb: dv), .init(k: c, a: P, lda: C, b: ut, ldb: ldu),
                alpha: outputScale, beta: 0, c: yc, ldc: ovs)
            // S ← S + Ũᵀ K, into the next chunk's slot (or w after the last chunk)
            BLAS.gemm(
                transposeA: true, transposeB: false, m: dv, n: dk, k: c, a: ut, lda: ldu, b: kc, ldb: ks, beta: 1,
                cIn: S, ldcIn: dk, c: ci + 1 < chunks ? saved + (ci + 1) * dv * dk : w, ldc: dk)
        }
    }

    /// Backpropagates dy. `dw` holds the gradient with respect to the final state when `seeded`
    /// (it is zeroed otherwise) and the gradient with respect to the initial state on exit.
    /// Gradients are written (not accumulated) to dq, dk, dv, dβ at the inputs' strides.
    public func backward(
        dy: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        beta: UnsafePointer<Float>?, saved: UnsafePointer<Float>, dw: UnsafeMutablePointer<Float>,
        scratch: UnsafeMutablePointer<Float>,
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
        dbeta: UnsafeMutablePointer<Float>?, seeded: Bool = false
    ) {
        precondition(outputScale == 1, "the plain backward takes the gradient of an unscaled output")
        if var shape = nativeShape {
            fwp_chunkwise_backward(&shape, dy, q, k, v, beta, saved, dw, scratch, dq, dk, dv, dbeta, seeded ? 1 : 0)
            return
        }
        let C = chunkSize, nk = keySize, nv = valueSize, ks = keyStride, vs = valueStride
        let oks = outputKeyStride, ovs = outputValueStride
        let isDelta = rule == .delta
        if !seeded { dw.update(repeating: 0, count: nk * nv) }
        let dP = scratch + C * C, A = scratch + 2 * C * C, dA = scratch + 3 * C * C
        let tmp = scratch + 4 * C * C, dU = scratch + 5 * C * C
        let db = dU + C * (nv + nk)  // C floats: dβ of the chunk
        let bcont = db + C  // C floats: the chunk's β, contiguous
        for ci in stride(from: chunks - 1, through: 0, by: -1) {
            let t0 = ci * C, c = min(C, steps - t0)
            let qc = q + t0 * ks, kc = k + t0 * ks, vc = v + t0 * vs, dyc = dy + t0 * vs
            let dqc = dq + t0 * oks, dkc = dk + t0 * oks, dvc = dv + t0 * ovs
            let s = saved + ci * nv * nk
            let ut = isDelta ? saved + savedUOffset + t0 * nv : vc
            let ldu = isDelta ? nv : vs
            let P = saved + savedPOffset + t0 * C  // causal(Q Kᵀ), from the forward
            if ci > 0 { prefetchBackwardState(chunk: ci - 1, saved: saved) }
            // dŨ = Pᵀ dY + K dSᵀ   (dS: gradient of the chunk-end state). Sums of products go
            // through gemmSum: one pass over their output instead of one per term.
            let dUt = isDelta ? dU : dvc
            let lddu = isDelta ? nv : ovs
            BLAS.gemmSum(
                m: c, n: nv, .init(transposeA: true, k: c, a: P, lda: C, b: dyc, ldb: vs),
                .init(transposeB: true, k: nk, a: kc, lda: ks, b: dw, ldb: nk), beta: 0, c: dUt, ldc: lddu)
            // dP = causal(dY Ũᵀ)
            BLAS.gemm(
                transposeA: false, transposeB: true, m: c, n: c, k: nv, a: dyc, lda: vs, b: ut, ldb: ldu, beta: 0,
                c: dP, ldc: C)
            maskUpper(dP, c: c, ld: C)
            // dQ = dY S + dP K
            BLAS.gemmSum(
                m: c, n: nk, .init(k: nv, a: dyc, lda: vs, b: s, ldb: nk), .init(k: c, a: dP, lda: C, b: kc, ldb: ks),
                beta: 0, c: dqc, ldc: oks)
            // dK = dPᵀ Q + Ũ dS (+ the delta rule's terms below); dS ← dS + dYᵀ Q (− dXᵀ K)
            let dKQ = BLAS.Term(transposeA: true, k: c, a: dP, lda: C, b: qc, ldb: ks)
            let dKU = BLAS.Term(k: nv, a: ut, lda: ldu, b: dw, ldb: nk)
            let dSQ = BLAS.Term(transposeA: true, k: c, a: dyc, lda: vs, b: qc, ldb: ks)
            guard isDelta, let beta else {
                BLAS.gemmSum(m: c, n: nk, dKQ, dKU, beta: 0, c: dkc, ldc: oks)
                BLAS.gemm(
                    transposeA: true, transposeB: false, m: nv, n: nk, k: c, a: dyc, lda: vs, b: qc, ldb: ks, beta: 1,
                    c: dw, ldc: nk)
                continue
            }
            let bc = beta + t0 * betaStride
            let minv = saved + savedMOffset + t0 * C
            let x = saved + savedXOffset + t0 * nv
            // Ũ = A X:  dA = dŨ Xᵀ;  dX = Aᵀ dŨ, which is dV (X = V − K Sᵀ)
            gatherBeta(bc, c: c, into: bcont)
            scaleColumns(minv, by: bc, c: c, into: A, contiguousBeta: bcont)
            BLAS.gemm(
                transposeA: false, transposeB: true, m: c, n: c, k: nv, a: dU, lda: nv, b: x, ldb: nv, beta: 0, c: dA,
                ldc: C)
            BLAS.gemm(
                transposeA: true, transposeB: false, m: c, n: nv, k: c, a: A, lda: C, b: dU, ldb: nv, beta: 0, c: dvc,
                ldc: ovs)
            // A = M⁻¹ diag(β):  dβ_j = Σ_i M⁻¹_ij dA_ij;  dM⁻¹ = dA diag(β)
            if VectorKernels.enabled {
                fwp_chunk_dbeta_inverse(minv, dA, bcont, Int32(c), Int32(C), db)
            } else {
                db.update(repeating: 0, count: c)
                for i in 0..<c {
                    let mr = minv + i * C, dr = dA + i * C
                    for j in 0...i {
                        db[j] += mr[j] * dr[j]
                        dr[j] *= bc[j * betaStride]
                    }
                    for j in (i + 1)..<max(i + 1, c) { dr[j] = 0 }
                }
            }
            // dM = −M⁻ᵀ dM⁻¹ M⁻ᵀ
            BLAS.gemm(
                transposeA: true, transposeB: false, m: c, n: c, k: c, a: minv, lda: C, b: dA, ldb: C, beta: 0, c: tmp,
                ldc: C)
            BLAS.gemm(
                transposeA: false, transposeB: true, m: c, n: c, k: c, alpha: -1, a: tmp, lda: C, b: minv, ldb: C,
                beta: 0, c: dA, ldc: C)
            // L_ij = β_i G_ij (i > j):  dβ_i += Σ_j dL_ij G_ij;  E = diag(β) dL, made E + Eᵀ in place
            let G = saved + savedGOffset + t0 * C  // K Kᵀ, from the forward
            if VectorKernels.enabled {
                fwp_chunk_dbeta_lower(G, dA, bcont, Int32(c), Int32(C), db)
            } else {
                for i in 0..<c {
                    let gr = G + i * C, er = dA + i * C
                    let bi = bc[i * betaStride]
                    var acc: Float = 0
                    for j in 0..<i {
                        acc += er[j] * gr[j]
                        er[j] *= bi
                    }
                    db[i] += acc
                    er[i] = 0
                }
                // E + Eᵀ in place (E is strictly lower), so that dK takes one term instead of two.
                for i in 0..<c { for j in 0..<i { dA[j * C + i] = dA[i * C + j] } }
            }
            // dK = dPᵀ Q + Ũ dS − dX S + (E + Eᵀ) K  (X = V − K Sᵀ; dS still the chunk-end gradient)
            BLAS.gemmSum(
                m: c, n: nk, dKQ, dKU, .init(k: nv, negate: true, a: dvc, lda: ovs, b: s, ldb: nk),
                .init(k: c, a: dA, lda: C, b: kc, ldb: ks), beta: 0, c: dkc, ldc: oks)
            // dS ← dS + dYᵀ Q − dXᵀ K
            BLAS.gemmSum(
                m: nv, n: nk, dSQ, .init(transposeA: true, k: c, negate: true, a: dvc, lda: ovs, b: kc, ldb: ks),
                beta: 1, c: dw, ldc: nk)
            if let dbeta { for j in 0..<c { dbeta[(t0 + j) * betaStride] = db[j] } }
        }
    }

    /// This kernel's shape for the C loops (`fwp_chunkwise_forward`, `fwp_chunkwise_backward`),
    /// when they apply: with the small kernel and the vector kernels on, and every product of a
    /// chunk within the small kernel's limits (the Swift loop would send each of them there too).
    /// The C loops make the same calls in the same order, so the results are the same.
    private var nativeShape: fwp_chunkwise_shape? {
        let dims = [chunkSize, keySize, valueSize]
        guard nativeLoops, BLAS.smallKernel, VectorKernels.enabled, dims.allSatisfy({ $0 <= BLAS.smallKernelLimit }),
            chunkSize * keySize * valueSize <= BLAS.smallKernelWork,
            keySize * valueSize <= Int(FWP_SMALL_SGEMM_MAX_BT)
        else { return nil }
        return fwp_chunkwise_shape(
            delta: rule == .delta ? 1 : 0, chunk: Int32(chunkSize), steps: Int32(steps), key_size: Int32(keySize),
            value_size: Int32(valueSize), key_stride: keyStride, value_stride: valueStride,
            output_key_stride: outputKeyStride, output_value_stride: outputValueStride, beta_stride: betaStride,
            u_offset: savedUOffset, m_offset: savedMOffset, x_offset: savedXOffset, p_offset: savedPOffset,
            g_offset: savedGOffset, output_scale: outputScale)
    }

    /// Asks for chunk `ci`'s v rows, which the forward reads at their stride (a head's slice of
    /// the projection) one chunk later. (The y rows and the next state's slot are not asked for:
    /// more hints there cost more than they saved.)
    private func prefetchForwardValues(chunk ci: Int, v: UnsafePointer<Float>) {
        let C = chunkSize, t0 = ci * C
        fwp_prefetch_rows(v + t0 * valueStride, valueStride, min(C, steps - t0), valueSize)
    }

    /// Asks for chunk `ci`'s start state while the chunk after it is processed backwards: 16 KB
    /// at d = 64, written by the forward long before, and read by the products one 256-byte-
    /// strided line at a time. (Prefetching the chunk's other saved arrays and rows as well cost
    /// more than it gained.)
    private func prefetchBackwardState(chunk ci: Int, saved: UnsafePointer<Float>) {
        fwp_prefetch_rows(saved + ci * valueSize * keySize, keySize, valueSize, keySize)
    }

    /// The chunk's β (at `betaStride`) copied contiguously for the C helpers of the vector-kernel
    /// path, which every C × C step below reads; a no-op on the Swift path, which reads `beta`.
    private func gatherBeta(_ beta: UnsafePointer<Float>, c: Int, into contiguous: UnsafeMutablePointer<Float>) {
        if VectorKernels.enabled { for j in 0..<c { contiguous[j] = beta[j * betaStride] } }
    }

    /// M⁻¹ for M = I + strictly-lower(diag(β) G), by forward substitution (rows of C floats).
    /// On the C path `contiguousBeta` must already hold the chunk's β (`gatherBeta`).
    private func invertUnitLower(
        g: UnsafePointer<Float>, beta: UnsafePointer<Float>, c: Int, into minv: UnsafeMutablePointer<Float>,
        contiguousBeta: UnsafePointer<Float>
    ) {
        let C = chunkSize
        if VectorKernels.enabled {
            fwp_unit_lower_inverse(g, contiguousBeta, Int32(c), Int32(C), minv)
            return
        }
        for i in 0..<c {
            let row = minv + i * C
            row.update(repeating: 0, count: C)
            row[i] = 1
            let bi = beta[i * betaStride]
            for m in 0..<i {
                let coef = -bi * g[i * C + m]
                if coef != 0 { Vec.axpy(coef, minv + m * C, row, m + 1) }
            }
        }
    }

    /// out_ij = m_ij β_j for the lower triangle (zero above). On the C path `contiguousBeta`
    /// must already hold the chunk's β (`gatherBeta`).
    private func scaleColumns(
        _ m: UnsafePointer<Float>, by beta: UnsafePointer<Float>, c: Int, into out: UnsafeMutablePointer<Float>,
        contiguousBeta: UnsafePointer<Float>
    ) {
        if VectorKernels.enabled {
            Self.scaleColumnsLower(m, by: contiguousBeta, c: c, ld: chunkSize, into: out)
            return
        }
        let C = chunkSize
        for i in 0..<c {
            for j in 0...i { out[i * C + j] = m[i * C + j] * beta[j * betaStride] }
            for j in (i + 1)..<max(i + 1, c) { out[i * C + j] = 0 }
        }
    }

    /// out_ij = m_ij β_j for j ≤ i < c, zero for i < j < c (rows of `ld` floats, β contiguous):
    /// A = M⁻¹ diag(β) of a chunk, by the vector kernel where it runs (one rounding per element
    /// either way, so the same bits).
    static func scaleColumnsLower(
        _ m: UnsafePointer<Float>, by beta: UnsafePointer<Float>, c: Int, ld: Int, into out: UnsafeMutablePointer<Float>
    ) {
        if VectorKernels.enabled {
            fwp_scale_columns_lower(m, beta, Int32(c), Int32(ld), out)
            return
        }
        for i in 0..<c {
            for j in 0...i { out[i * ld + j] = m[i * ld + j] * beta[j] }
            for j in (i + 1)..<max(i + 1, c) { out[i * ld + j] = 0 }
        }
    }

    private func maskUpper(_ p: UnsafeMutablePointer<Float>, c: Int, ld: Int) {
        for i in 0..<c where i + 1 < c { (p + i * ld + i + 1).update(repeating: 0, count: c - i - 1) }
    }
}
