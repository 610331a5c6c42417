import Foundation

/// The fast-weight update rule.
public enum UpdateRule: String, Sendable, Codable, CaseIterable {
    /// W_t = W_{t−1} + v_t ⊗ k_t (linear attention).
    case sum
    /// W_t = W_{t−1} + β_t (v_t − W_{t−1} k_t) ⊗ k_t.
    case delta
    /// W_t = α_t W_{t−1} + β_t (v_t − α_t W_{t−1} k_t) ⊗ k_t with a decay α_t ∈ (0, 1) per head
    /// (`GatedDeltaKernel`).
    case gatedDelta = "gated-delta"

    /// Whether the rule writes with a learned strength β_t (and so has β's projection).
    public var hasBeta: Bool { self != .sum }
}

/// How keys, queries and outputs are normalised.
public enum Normalization: String, Sendable, Codable, CaseIterable {
    /// No normalisation.
    case none
    /// φ(x) / Σ_j φ(x)_j on keys and queries before the update.
    case sum
    /// y_t = W_t q_t / (z_t · q_t + ε), z_t = Σ_{s≤t} k_s.
    case attention
    /// φ(x) / √(Σ_j φ(x)_j² + ε) on keys and queries: unit keys keep I − β k kᵀ contractive
    /// for β ∈ (0, 2) (the convention of DeltaNet and Gated DeltaNet).
    case l2
}

/// The per-sequence recurrence of a fast-weight memory, forward and backward, over strided rows.
///
/// One call handles one (batch, head) sequence of T steps. The forward pass keeps only per-step
/// vectors (the inserted value u_t, v_t − v̄_t for the delta rule, the attention denominator)
/// and the final W; the backward pass walks time in reverse and recovers W_{t−1} = W_t − u_t ⊗ k_t.
/// Memory is O(T·(d_dot + d_value) + d_value·d_dot) per sequence, never O(T·d²).
public struct FastWeightKernel: Sendable {
    public let rule: UpdateRule
    public let attentionNormalization: Bool
    public let steps: Int
    public let keySize: Int  // d_dot
    public let valueSize: Int  // d_value
    /// Row strides (in floats) of the q/k, v/y and β arrays.
    public let keyStride: Int
    public let valueStride: Int
    public let betaStride: Int
    /// The ε in the attention normalisation's denominator.
    public static let denominatorEpsilon: Float = 1e-6

    public init(
        rule: UpdateRule, attentionNormalization: Bool, steps: Int, keySize: Int, valueSize: Int, keyStride: Int,
        valueStride: Int, betaStride: Int
    ) {
        self.rule = rule
        self.attentionNormalization = attentionNormalization
        self.steps = steps
        self.keySize = keySize
        self.valueSize = valueSize
        self.keyStride = keyStride
        self.valueStride = valueStride
        self.betaStride = betaStride
    }

    /// Runs the recurrence from state (W, z) (W: valueSize × keySize row-major, z: keySize),
    /// leaving the final state in them. Writes y_t to `y`; saves per-step vectors to `saved`
    /// (`valueSize` floats per step: v − v̄ for delta) and `denominators`.
    public func forward(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, beta: UnsafePointer<Float>?,
        y: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, z: UnsafeMutablePointer<Float>,
        saved: UnsafeMutablePointer<Float>?, denominators: UnsafeMutablePointer<Float>?
    ) {
        let dk = keySize, dv = valueSize
        for t in 0..<steps {
            let qt = q + t * keyStride, kt = k + t * keyStride, vt = v + t * valueStride
            let yt = y + t * valueStride
            let b = beta.map { $0[t * betaStride] } ?? 1
            // Fused per-row pass: v̄_i = W_i·k, u_i = β(v_i − v̄_i), W_i += u_i k, y_i = W_i·q.
            for i in 0..<dv {
                let wi = w + i * dk
                var u = vt[i]
                if rule == .delta {
                    let diff = vt[i] - Vec.dot(wi, kt, dk)
                    saved?[t * dv + i] = diff
                    u = b * diff
                }
                Vec.axpy(u, kt, wi, dk)
                yt[i] = Vec.dot(wi, qt, dk)
            }
            if attentionNormalization {
                Vec.axpy(1, kt, z, dk)
                let den = Vec.dot(z, qt, dk) + FastWeightKernel.denominatorEpsilon
                denominators?[t] = den
                Vec.scale(1 / den, yt, dv)
            }
        }
    }

    /// Backpropagates dy through the recurrence. On entry (W, z) hold the final state; on exit
    /// the initial one. dW is valueSize × keySize scratch. Gradients are written (not accumulated)
    /// to dq, dk, dv, dβ at the same strides as the inputs. With `seeded`, dW and the z-gradient
    /// accumulator already hold the gradient with respect to the final state (a readout after the
    /// last step) instead of being zeroed.
    public func backward(
        dy: UnsafePointer<Float>, y: UnsafePointer<Float>,
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, beta: UnsafePointer<Float>?,
        saved: UnsafePointer<Float>?, denominators: UnsafePointer<Float>?,
        w: UnsafeMutablePointer<Float>, z: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>,
        dzAccumulator: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
        dbeta: UnsafeMutablePointer<Float>?, seeded: Bool = false
    ) {
        let nk = keySize, nv = valueSize
        if !seeded {
            dw.update(repeating: 0, count: nk * nv)
            dzAccumulator.update(repeating: 0, count: nk)
        }
        let a = scratch  // nv floats: gradient with respect to the unnormalised readout
        for t in stride(from: steps - 1, through: 0, by: -1) {
            let qt = q + t * keyStride, kt = k + t * keyStride, vt = v + t * valueStride
            let dqt = dq + t * keyStride, dkt = dk + t * keyStride, dvt = dv + t * valueStride
            let dyt = dy + t * valueStride
            dqt.update(repeating: 0, count: nk)
            dkt.update(repeating: 0, count: nk)
            if attentionNormalization, let denominators {
                let den = denominators[t]
                let dden = -Vec.dot(dyt, y + t * valueStride, nv) / den
                for i in 0..<nv { a[i] = dyt[i] / den }
                Vec.axpy(dden, z, dqt, nk)
                Vec.axpy(dden, qt, dzAccumulator, nk)
                Vec.axpy(1, dzAccumulator, dkt, nk)
                Vec.axpy(-1, kt, z, nk)
            } else {
                a.update(from: dyt, count: nv)
            }
            let b = beta.map { $0[t * betaStride] } ?? 1
            var db: Float = 0
            for i in 0..<nv {
                let wi = w + i * nk, dwi = dw + i * nk
                let ai = a[i]
                Vec.axpy(ai, wi, dqt, nk)  // dq += a_i W_t,i
                Vec.axpy(ai, qt, dwi, nk)  // dW_t,i += a_i q
                let du = Vec.dot(dwi, kt, nk)
                if rule == .delta {
                    let diff = saved![t * nv + i]
                    let u = b * diff
                    Vec.axpy(u, dwi, dkt, nk)  // write: dk += u_i dW_i
                    Vec.axpy(-u, kt, wi, nk)  // recover W_{t−1}
                    dvt[i] = b * du
                    db += du * diff
                    let dvbar = -b * du
                    Vec.axpy(dvbar, wi, dkt, nk)  // v̄ = W_{t−1} k
                    Vec.axpy(dvbar, kt, dwi, nk)
                } else {
                    let u = vt[i]
                    Vec.axpy(u, dwi, dkt, nk)
                    Vec.axpy(-u, kt, wi, nk)
                    dvt[i] = du
                }
            }
            if let dbeta { dbeta[t * betaStride] = db }
        }
    }
}
