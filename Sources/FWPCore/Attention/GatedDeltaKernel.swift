import Foundation

/// The gated delta rule (Yang, Kautz, Hatamizadeh 2024, "Gated Delta Networks") for one
/// (batch, head) sequence over strided rows, forward and backward, in two forms that compute the
/// same thing:
///
///     W_t = α_t W_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ
///         = α_t W_{t−1} + u_t k_tᵀ,   u_t = β_t (v_t − α_t W_{t−1} k_t),   y_t = W_t q_t
///
/// with α_t = exp(a_t) ∈ (0, 1]: the kernel takes the log decay a_t (the layer computes it as
/// log σ(logit) without forming α first, so α near 1 keeps its precision).
///
/// **Recurrence** (`forwardRecurrent`, `backwardRecurrent`): one step at a time. Dividing by α
/// to walk the states backwards would amplify rounding by Π 1/α, so the forward stores the state
/// every `checkpointInterval` steps and the backward replays each stretch from its checkpoint
/// (memory O(T/R·d_v·d_k + R·d_v·d_k + T·d_v) per sequence with R = `checkpointInterval`).
///
/// **Chunkwise** (`forwardChunkwise`, `backwardChunkwise`): the WY form of `ChunkwiseKernel`
/// with decays. In a chunk of c steps from state S, with g_t = Σ_{r≤t} a_r (from the chunk's
/// start), γ_t = e^{g_t}, Γ_ts = e^{g_t − g_s} (s ≤ t) and λ_s = e^{g_{c−1} − g_s}:
///
///     M = I + strictly-lower(diag(β) (Γ ⊙ K Kᵀ)),  A = M⁻¹ diag(β)
///     X = V − diag(γ) K Sᵀ,   U = A X
///     Y = diag(γ) Q Sᵀ + (Γ ⊙ causal(Q Kᵀ)) U,   S ← γ_{c−1} S + Uᵀ diag(λ) K
///
/// Every decay factor is an e^{difference} with the later position first, so each is ≤ 1: no
/// 1/γ appears (folding γ into K and 1/γ into another copy of K would overflow for strong decay).
/// The backward differentiates each product by hand (docs/MODEL.md); memory O(T·(C + d_v) +
/// T/C·d_v·d_k) per sequence.
public struct GatedDeltaKernel: Sendable {
    /// Steps per chunk, and between the recurrence's stored states, where none is given (the
    /// delta rule's chunk size, which `FastWeightAlgorithm.automatic` uses for both rules).
    public static let defaultChunkSize = ChunkwiseKernel.defaultChunkSize

    /// log α = log σ(z) = −softplus(−z), formed without α so that α near 1 keeps its precision.
    public static func logDecay(logit z: Float) -> Float {
        z >= 0 ? -log1pf(expf(-z)) : z - log1pf(expf(z))
    }

    public let steps: Int
    public let keySize: Int
    public let valueSize: Int
    public let keyStride: Int
    public let valueStride: Int
    /// Row stride of β and the log decays.
    public let gateStride: Int
    /// Steps per chunk of the chunkwise form, and between the recurrence's stored states.
    public let chunkSize: Int

    public init(
        steps: Int, keySize: Int, valueSize: Int, keyStride: Int, valueStride: Int, gateStride: Int,
        chunkSize: Int = GatedDeltaKernel.defaultChunkSize
    ) {
        precondition(chunkSize >= 1 && steps >= 0)
        self.steps = steps
        self.keySize = keySize
        self.valueSize = valueSize
        self.keyStride = keyStride
        self.valueStride = valueStride
        self.gateStride = gateStride
        self.chunkSize = chunkSize
    }

    var chunks: Int { (steps + chunkSize - 1) / chunkSize }
    private var stateCount: Int { valueSize * keySize }

    // MARK: recurrence

    /// Floats per sequence that `forwardRecurrent` saves: a state per stretch, then v − α v̄ per step.
    public var recurrentSavedCount: Int { chunks * stateCount + steps * valueSize }
    /// Scratch floats per sequence for `backwardRecurrent`: the stretch's states and the gradient.
    public var recurrentScratchCount: Int { (chunkSize + 1) * stateCount + 2 * keySize + valueSize }

    /// Runs the recurrence from `w` (d_v × d_k, row-major), leaving the final state there; writes
    /// y_t; with `saved`, keeps what `backwardRecurrent` needs.
    public func forwardRecurrent(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, beta: UnsafePointer<Float>,
        logDecay: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>,
        saved: UnsafeMutablePointer<Float>?
    ) {
        let dk = keySize, dv = valueSize
        let diffs = saved.map { $0 + chunks * stateCount }
        for t in 0..<steps {
            if t % chunkSize == 0, let saved {
                (saved + (t / chunkSize) * stateCount).update(from: w, count: stateCount)
            }
            let qt = q + t * keyStride, kt = k + t * keyStride, vt = v + t * valueStride, yt = y + t * valueStride
            let b = beta[t * gateStride], alpha = expf(logDecay[t * gateStride])
            for i in 0..<dv {
                let wi = w + i * dk
                let diff = vt[i] - alpha * Vec.dot(wi, kt, dk)
                diffs?[t * dv + i] = diff
                Vec.scale(alpha, wi, dk)
                Vec.axpy(b * diff, kt, wi, dk)
                yt[i] = Vec.dot(wi, qt, dk)
            }
        }
    }

    /// Backpropagates dy through `forwardRecurrent`. `dw` holds the gradient with respect to the
    /// final state when `seeded` (zeroed otherwise) and with respect to the initial state on exit.
    /// Writes dq, dk, dv at the inputs' strides and dβ, d(log decay) at `gateStride`.
    public func backwardRecurrent(
        dy: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        beta: UnsafePointer<Float>, logDecay: UnsafePointer<Float>, saved: UnsafePointer<Float>,
        dw: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
        dbeta: UnsafeMutablePointer<Float>, dlogDecay: UnsafeMutablePointer<Float>, seeded: Bool = false
    ) {
        let nk = keySize, nv = valueSize, R = chunkSize
        if !seeded { dw.update(repeating: 0, count: stateCount) }
        let states = scratch  // (R + 1) states: entering each step of the stretch, then after its last
        let diffs = saved + chunks * stateCount
        for ci in stride(from: chunks - 1, through: 0, by: -1) {
            let t0 = ci * R, c = min(R, steps - t0)
            // Replay the stretch from its checkpoint.
            states.update(from: saved + ci * stateCount, count: stateCount)
            for j in 0..<c {
                let t = t0 + j
                let kt = k + t * keyStride, alpha = expf(logDecay[t * gateStride]), b = beta[t * gateStride]
                let next = states + (j + 1) * stateCount
                next.update(from: states + j * stateCount, count: stateCount)
                for i in 0..<nv {
                    let wi = next + i * nk
                    Vec.scale(alpha, wi, nk)
                    Vec.axpy(b * diffs[t * nv + i], kt, wi, nk)
                }
            }
            for j in stride(from: c - 1, through: 0, by: -1) {
                let t = t0 + j
                let qt = q + t * keyStride, kt = k + t * keyStride
                let dqt = dq + t * keyStride, dkt = dk + t * keyStride, dvt = dv + t * valueStride
                let dyt = dy + t * valueStride
                let alpha = expf(logDecay[t * gateStride]), b = beta[t * gateStride]
                let wNow = states + (j + 1) * stateCount, wPrev = states + j * stateCount
                dqt.update(repeating: 0, count: nk)
                dkt.update(repeating: 0, count: nk)
                var db: Float = 0, dalpha: Float = 0
                for i in 0..<nv {
                    let dwi = dw + i * nk, wi = wNow + i * nk, pi = wPrev + i * nk
                    let a = dyt[i]
                    Vec.axpy(a, wi, dqt, nk)  // y = W_t q
                    Vec.axpy(a, qt, dwi, nk)  // dW_t now complete
                    let diff = diffs[t * nv + i]
                    let du = Vec.dot(dwi, kt, nk)
                    Vec.axpy(b * diff, dwi, dkt, nk)  // W_t ∋ u kᵀ
                    db += du * diff
                    let ddiff = b * du
                    dvt[i] = ddiff
                    let vbar = Vec.dot(pi, kt, nk)
                    dalpha += Vec.dot(dwi, pi, nk) - ddiff * vbar  // W_t ∋ α W_{t−1}; diff = v − α v̄
                    let dvbar = -alpha * ddiff
                    Vec.axpy(dvbar, pi, dkt, nk)  // v̄ = W_{t−1} k
                    Vec.scale(alpha, dwi, nk)  // dW_{t−1} = α dW_t + dv̄ kᵀ
                    Vec.axpy(dvbar, kt, dwi, nk)
                }
                dbeta[t * gateStride] = db
                dlogDecay[t * gateStride] = dalpha * alpha
            }
        }
    }

    // MARK: chunkwise

    /// Floats per sequence that `forwardChunkwise` saves: the chunk-start states, then per step
    /// X and U (d_v each), M⁻¹, K Kᵀ and Γ ⊙ causal(Q Kᵀ) rows (C each) and g.
    public var chunkwiseSavedCount: Int { chunks * stateCount + steps * (2 * valueSize + 3 * chunkSize + 1) }
    private var xOffset: Int { chunks * stateCount }
    private var uOffset: Int { xOffset + steps * valueSize }
    private var minvOffset: Int { uOffset + steps * valueSize }
    private var gOffset: Int { minvOffset + steps * chunkSize }  // K Kᵀ
    private var pOffset: Int { gOffset + steps * chunkSize }
    private var logOffset: Int { pOffset + steps * chunkSize }  // g_t

    /// Scratch floats per sequence for either chunkwise pass.
    public var chunkwiseScratchCount: Int {
        let C = chunkSize
        return 5 * C * C + C * (3 * valueSize + 3 * keySize) + 8 * C + max(keySize, C) * valueSize
    }

    /// The chunkwise form of `forwardRecurrent` (same results to float32 rounding).
    public func forwardChunkwise(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, beta: UnsafePointer<Float>,
        logDecay: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>,
        saved: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        let C = chunkSize, dk = keySize, dv = valueSize, ks = keyStride, vs = valueStride
        let A = scratch, ks2 = A + C * C  // C × C; then K Sᵀ / Q Sᵀ (C × d_v)
        let decay = ks2 + C * dv  // C floats each: γ, λ
        let lambda = decay + C
        // Γ (C × C), and Sᵀ and the chunk's Kᵀ, each transposed once for the products that read
        // them (the small kernel would transpose a B operand on every call).
        let gamma = lambda + C, St = gamma + C * C, Kt = St + dk * dv
        let bc = Kt + dk * C  // the chunk's β, contiguous
        if chunks > 0 { saved.update(from: w, count: stateCount) }
        for ci in 0..<chunks {
            let t0 = ci * C, c = min(C, steps - t0)
            let qc = q + t0 * ks, kc = k + t0 * ks, vc = v + t0 * vs, yc = y + t0 * vs
            let S = UnsafePointer(saved + ci * stateCount)
            let x = saved + xOffset + t0 * dv, u = saved + uOffset + t0 * dv
            let minv = saved + minvOffset + t0 * C, G = saved + gOffset + t0 * C, P = saved + pOffset + t0 * C
            let g = saved + logOffset + t0
            var acc: Float = 0
            for j in 0..<c {
                acc += logDecay[(t0 + j) * gateStride]
                g[j] = acc
            }
            Self.decays(g, c: c, ld: C, gamma: decay, lambda: lambda, matrix: gamma)
            for j in 0..<c { bc[j] = beta[(t0 + j) * gateStride] }
            BLAS.transpose(rows: dv, cols: dk, S, lds: dk, into: St, ldd: dv)
            BLAS.transpose(rows: c, cols: dk, kc, lds: ks, into: Kt, ldd: c)
            // X = V − diag(γ) K Sᵀ
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: dv, k: dk, a: kc, lda: ks, b: St, ldb: dv, beta: 0,
                c: ks2, ldc: dv)
            for j in 0..<c {
                let xr = x + j * dv, vr = vc + j * vs, sr = ks2 + j * dv, gj = decay[j]
                for i in 0..<dv { xr[i] = vr[i] - gj * sr[i] }
            }
            // G = K Kᵀ; M⁻¹ by forward substitution with L_ts = β_t Γ_ts G_ts (s < t)
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: c, k: dk, a: kc, lda: ks, b: Kt, ldb: c, beta: 0, c: G,
                ldc: C)
            for i in 0..<c {
                let row = minv + i * C
                row.update(repeating: 0, count: C)
                row[i] = 1
                let bi = bc[i]
                for m in 0..<i {
                    let coef = -bi * gamma[i * C + m] * G[i * C + m]
                    if coef != 0 { Vec.axpy(coef, minv + m * C, row, m + 1) }
                }
            }
            // A = M⁻¹ diag(β); U = A X
            ChunkwiseKernel.scaleColumnsLower(minv, by: bc, c: c, ld: C, into: A)
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: dv, k: c, a: A, lda: C, b: x, ldb: dv, beta: 0, c: u,
                ldc: dv)
            // P = Γ ⊙ causal(Q Kᵀ); Y = P U + diag(γ) Q Sᵀ
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: c, k: dk, a: qc, lda: ks, b: Kt, ldb: c, beta: 0, c: P,
                ldc: C)
            for i in 0..<(c * C) { P[i] *= gamma[i] }  // Γ is zero above the diagonal
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: dv, k: dk, a: qc, lda: ks, b: St, ldb: dv, beta: 0,
                c: ks2, ldc: dv)
            for j in 0..<c {
                let yr = yc + j * vs, sr = ks2 + j * dv, gj = decay[j]
                for i in 0..<dv { yr[i] = gj * sr[i] }
            }
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: dv, k: c, a: P, lda: C, b: u, ldb: dv, beta: 1, c: yc,
                ldc: vs)
            // S ← γ_{c−1} S + (diag(λ) U)ᵀ K, into the next chunk's slot (or w after the last)
            let lu = ks2
            for j in 0..<c { Vec.scale(lambda[j], u + j * dv, into: lu + j * dv, dv) }
            let next = ci + 1 < chunks ? saved + (ci + 1) * stateCount : w
            Vec.scale(decay[c - 1], S, into: next, stateCount)
            BLAS.gemm(
                transposeA: true, transposeB: false, m: dv, n: dk, k: c, a: lu, lda: dv, b: kc, ldb: ks, beta: 1,
                c: next, ldc: dk)
        }
    }

    /// Backpropagates dy through `forwardChunkwise`; arguments as for `backwardRecurrent`.
    public func backwardChunkwise(
        dy: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
        beta: UnsafePointer<Float>, saved: UnsafePointer<Float>,
        dw: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
        dbeta: UnsafeMutablePointer<Float>, dlogDecay: UnsafeMutablePointer<Float>, seeded: Bool = false
    ) {
        let C = chunkSize, nk = keySize, nv = valueSize, ks = keyStride, vs = valueStride
        if !seeded { dw.update(repeating: 0, count: stateCount) }
        let dP = scratch, A = dP + C * C, dA = A + C * C, tmp = dA + C * C
        let dU = tmp + C * C, lu = dU + C * nv, dUl = lu + C * nv  // C × d_v each
        let dKS = dUl + C * nv, dYS = dKS + C * nk  // C × d_k each
        let decay = dYS + C * nk, lambda = decay + C, dgamma = lambda + C, dlambda = dgamma + C
        let dg = dlambda + C, db = dg + C, bc = db + C
        let gamma = bc + C, T1 = gamma + C * C  // Γ; a transposed operand (up to d_k·d_v or C·d_v)
        for ci in stride(from: chunks - 1, through: 0, by: -1) {
            let t0 = ci * C, c = min(C, steps - t0)
            let qc = q + t0 * ks, kc = k + t0 * ks, dyc = dy + t0 * vs
            let dqc = dq + t0 * ks, dkc = dk + t0 * ks, dvc = dv + t0 * vs
            let S = saved + ci * stateCount
            let x = saved + xOffset + t0 * nv, u = saved + uOffset + t0 * nv
            let minv = saved + minvOffset + t0 * C, G = saved + gOffset + t0 * C, P = saved + pOffset + t0 * C
            let g = saved + logOffset + t0
            Self.decays(g, c: c, ld: C, gamma: decay, lambda: lambda, matrix: gamma)
            for j in 0..<c { bc[j] = beta[(t0 + j) * gateStride] }
            dg.update(repeating: 0, count: c)
            db.update(repeating: 0, count: c)
            // The chunk-end state S' = γ_{c−1} S + (diag(λ) U)ᵀ K, with dS' in dw:
            //   d(λU) = K dS'ᵀ;  dK = (λU) dS';  d(γ_{c−1}) = ⟨dS', S⟩
            BLAS.transpose(rows: nv, cols: nk, dw, lds: nk, into: T1, ldd: nv)  // dS'ᵀ
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: nv, k: nk, a: kc, lda: ks, b: T1, ldb: nv, beta: 0,
                c: dUl, ldc: nv)
            for j in 0..<c { Vec.scale(lambda[j], u + j * nv, into: lu + j * nv, nv) }
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: nk, k: nv, a: lu, lda: nv, b: dw, ldb: nk, beta: 0,
                c: dkc, ldc: ks)
            let dEnd = Vec.dot(dw, S, stateCount)
            for j in 0..<c {
                dlambda[j] = Vec.dot(u + j * nv, dUl + j * nv, nv)
                Vec.scale(lambda[j], dUl + j * nv, nv)
            }
            // Y = P U + diag(γ) Q Sᵀ:  dU = Pᵀ dY + λ d(λU);  dP = causal(dY Uᵀ)
            BLAS.gemm(
                transposeA: true, transposeB: false, m: c, n: nv, k: c, a: P, lda: C, b: dyc, ldb: vs, beta: 1,
                cIn: dUl, ldcIn: nv, c: dU, ldc: nv)
            BLAS.transpose(rows: c, cols: nv, u, lds: nv, into: T1, ldd: c)  // Uᵀ
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: c, k: nv, a: dyc, lda: vs, b: T1, ldb: c, beta: 0, c: dP,
                ldc: C)
            // P = Γ ⊙ causal(Q Kᵀ): the decay's share is dP ⊙ P; dP ← dP ⊙ Γ (the product's)
            for i in 0..<c {
                for j in 0...i {
                    let e = dP[i * C + j] * P[i * C + j]
                    dg[i] += e
                    dg[j] -= e
                    dP[i * C + j] *= gamma[i * C + j]
                }
                for j in (i + 1)..<C { dP[i * C + j] = 0 }
            }
            // dQ = diag(γ) dY S + dP K;  dγ_t = q_t · (dY S)_t
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: nk, k: nv, a: dyc, lda: vs, b: S, ldb: nk, beta: 0,
                c: dYS, ldc: nk)
            for j in 0..<c {
                dgamma[j] = Vec.dot(dYS + j * nk, qc + j * ks, nk)
                Vec.scale(decay[j], dYS + j * nk, into: dqc + j * ks, nk)
            }
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: nk, k: c, a: dP, lda: C, b: kc, ldb: ks, beta: 1,
                c: dqc, ldc: ks)
            // dK += dPᵀ Q
            BLAS.gemm(
                transposeA: true, transposeB: false, m: c, n: nk, k: c, a: dP, lda: C, b: qc, ldb: ks, beta: 1, c: dkc,
                ldc: ks)
            // U = A X:  dA = dU Xᵀ;  dX = Aᵀ dU = dV
            ChunkwiseKernel.scaleColumnsLower(minv, by: bc, c: c, ld: C, into: A)
            BLAS.transpose(rows: c, cols: nv, x, lds: nv, into: T1, ldd: c)  // Xᵀ
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: c, k: nv, a: dU, lda: nv, b: T1, ldb: c, beta: 0, c: dA,
                ldc: C)
            BLAS.gemm(
                transposeA: true, transposeB: false, m: c, n: nv, k: c, a: A, lda: C, b: dU, ldb: nv, beta: 0, c: dvc,
                ldc: vs)
            // X = V − diag(γ) K Sᵀ:  dK −= diag(γ) dX S;  dγ_t −= k_t · (dX S)_t
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: nk, k: nv, a: dvc, lda: vs, b: S, ldb: nk, beta: 0,
                c: dKS, ldc: nk)
            for j in 0..<c {
                dgamma[j] -= Vec.dot(dKS + j * nk, kc + j * ks, nk)
                Vec.axpy(-decay[j], dKS + j * nk, dkc + j * ks, nk)
            }
            // A = M⁻¹ diag(β):  dβ_j = Σ_i M⁻¹_ij dA_ij;  dM⁻¹ = dA diag(β)
            for i in 0..<c {
                for j in 0...i {
                    db[j] += minv[i * C + j] * dA[i * C + j]
                    dA[i * C + j] *= bc[j]
                }
                for j in (i + 1)..<C { dA[i * C + j] = 0 }
            }
            // dM = −M⁻ᵀ dM⁻¹ M⁻ᵀ
            BLAS.gemm(
                transposeA: true, transposeB: false, m: c, n: c, k: c, a: minv, lda: C, b: dA, ldb: C, beta: 0, c: tmp,
                ldc: C)
            BLAS.gemm(
                transposeA: false, transposeB: true, m: c, n: c, k: c, alpha: -1, a: tmp, lda: C, b: minv, ldb: C,
                beta: 0, c: dA, ldc: C)
            // M_ts = β_t Γ_ts G_ts (s < t):  dβ_t += Σ_s dM_ts Γ_ts G_ts;  the decay's share is
            // dM ⊙ (M − I);  dG = β_t Γ_ts dM_ts, symmetrised in place for dK += (dG + dGᵀ) K
            for i in 0..<c {
                var acc: Float = 0
                for j in 0..<i {
                    let gij = gamma[i * C + j], kk = G[i * C + j]
                    let dm = dA[i * C + j]
                    acc += dm * gij * kk
                    let e = dm * bc[i] * gij * kk
                    dg[i] += e
                    dg[j] -= e
                    dA[i * C + j] = dm * bc[i] * gij
                }
                db[i] += acc
                dA[i * C + i] = 0
                for j in (i + 1)..<C { dA[i * C + j] = 0 }
            }
            for i in 0..<c { for j in 0..<i { dA[j * C + i] = dA[i * C + j] } }
            BLAS.gemm(
                transposeA: false, transposeB: false, m: c, n: nk, k: c, a: dA, lda: C, b: kc, ldb: ks, beta: 1, c: dkc,
                ldc: ks)
            // dS ← γ_{c−1} dS' + (diag(γ) dY)ᵀ Q − (diag(γ) dX)ᵀ K
            Vec.scale(decay[c - 1], dw, stateCount)
            let gdy = lu, gdx = dUl  // scratch reused: diag(γ) dY, diag(γ) dX
            for j in 0..<c {
                Vec.scale(decay[j], dyc + j * vs, into: gdy + j * nv, nv)
                Vec.scale(-decay[j], dvc + j * vs, into: gdx + j * nv, nv)
            }
            BLAS.gemm(
                transposeA: true, transposeB: false, m: nv, n: nk, k: c, a: gdy, lda: nv, b: qc, ldb: ks, beta: 1,
                c: dw,
                ldc: nk)
            BLAS.gemm(
                transposeA: true, transposeB: false, m: nv, n: nk, k: c, a: gdx, lda: nv, b: kc, ldb: ks, beta: 1,
                c: dw,
                ldc: nk)
            // Through γ_t = e^{g_t}, γ_{c−1} and λ_s = e^{g_{c−1} − g_s} to g, then a_r = Σ_{t ≥ r} dg_t.
            for j in 0..<c {
                dg[j] += dgamma[j] * decay[j] - dlambda[j] * lambda[j]
                dg[c - 1] += dlambda[j] * lambda[j]
            }
            dg[c - 1] += dEnd * decay[c - 1]
            var run: Float = 0
            for j in stride(from: c - 1, through: 0, by: -1) {
                run += dg[j]
                dlogDecay[(t0 + j) * gateStride] = run
                dbeta[(t0 + j) * gateStride] = db[j]
            }
        }
    }

    /// A chunk's decay factors from its cumulative log decays g: γ_t = e^{g_t}, λ_t = e^{g_{c−1} − g_t},
    /// and Γ_ts = e^{g_t − g_s} for s ≤ t < c, zero elsewhere (rows of `ld` floats, c rows).
    private static func decays(
        _ g: UnsafePointer<Float>, c: Int, ld: Int, gamma: UnsafeMutablePointer<Float>,
        lambda: UnsafeMutablePointer<Float>, matrix: UnsafeMutablePointer<Float>
    ) {
        for j in 0..<c {
            gamma[j] = expf(g[j])
            lambda[j] = expf(g[c - 1] - g[j])
        }
        for i in 0..<c {
            let row = matrix + i * ld
            for j in 0...i { row[j] = expf(g[i] - g[j]) }
            for j in (i + 1)..<ld { row[j] = 0 }
        }
    }
}
