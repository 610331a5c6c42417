import Foundation

/// Learning-rate schedule: linear warm-up to `peak`, then cosine decay to `minimum` at `totalSteps`.
public struct LearningRateSchedule: Codable, Equatable, Sendable {
    public var peak: Double
    public var warmupSteps: Int
    public var totalSteps: Int
    public var minimum: Double

    public init(peak: Double, warmupSteps: Int = 0, totalSteps: Int = 0, minimum: Double = 0) {
        self.peak = peak
        self.warmupSteps = warmupSteps
        self.totalSteps = totalSteps
        self.minimum = minimum
    }

    /// The rate for 1-based step `step`. With `totalSteps` 0 the rate stays at `peak` after warm-up.
    public func rate(at step: Int) -> Double {
        if warmupSteps > 0 && step <= warmupSteps { return peak * Double(step) / Double(warmupSteps) }
        guard totalSteps > warmupSteps else { return peak }
        let progress = min(1, Double(step - warmupSteps) / Double(totalSteps - warmupSteps))
        return minimum + 0.5 * (peak - minimum) * (1 + Foundation.cos(Double.pi * progress))
    }
}

/// Adam with decoupled weight decay (AdamW), a schedule and global gradient-norm clipping.
///
/// Weight decay applies to every tensor of rank ≥ 2 (weight matrices and embeddings); biases and
/// LayerNorm gains do not decay.
public struct AdamW: Sendable, Equatable {
    public var schedule: LearningRateSchedule
    public var beta1: Double
    public var beta2: Double
    public var epsilon: Double
    public var weightDecay: Double
    /// Clip the global gradient norm to this value (0 disables clipping).
    public var maxGradientNorm: Double
    /// First and second moments, named `exp_avg.<param>` / `exp_avg_sq.<param>` in checkpoints.
    public var firstMoment: ParameterStore
    public var secondMoment: ParameterStore
    /// Updates taken so far.
    public var step: Int

    public init(
        parameters: ParameterStore, schedule: LearningRateSchedule, beta1: Double = 0.9, beta2: Double = 0.999,
        epsilon: Double = 1e-8, weightDecay: Double = 0, maxGradientNorm: Double = 0
    ) {
        self.schedule = schedule
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.maxGradientNorm = maxGradientNorm
        firstMoment = parameters.zerosLike()
        secondMoment = parameters.zerosLike()
        step = 0
    }

    /// Applies one update and returns the gradient norm before clipping.
    ///
    /// The tensors are updated by `threads` in fixed pieces (`ParameterStore.pieces`); every
    /// element's update is the same arithmetic whichever thread does it, so results do not depend
    /// on the thread count.
    @discardableResult
    public mutating func update(
        _ parameters: inout ParameterStore, gradients: ParameterStore, threads: ComputeThreads = ComputeThreads(1)
    ) -> Double {
        precondition(parameters.names == gradients.names, "gradients do not match parameters")
        precondition(
            firstMoment.values.count == parameters.values.count && secondMoment.values.count == parameters.values.count,
            "the optimiser's moments are for another model")
        for i in parameters.values.indices {
            let n = parameters.values[i].count
            precondition(
                gradients.values[i].count == n && firstMoment.values[i].count == n && secondMoment.values[i].count == n,
                "\(parameters.names[i]): gradient or moments differ in size from the parameter")
        }
        step += 1
        let norm = gradients.globalNorm(threads: threads)
        let clip: Float = (maxGradientNorm > 0 && norm > maxGradientNorm) ? Float(maxGradientNorm / (norm + 1e-6)) : 1
        let lr = schedule.rate(at: step)
        let b1 = Float(beta1), b2 = Float(beta2)
        let c1 = Float(1 - Foundation.pow(beta1, Double(step)))
        let c2 = Float(1 - Foundation.pow(beta2, Double(step)))
        let stepSize = Float(lr) / c1
        let sqrtC2 = c2.squareRoot()
        let eps = Float(epsilon)
        let decays = parameters.values.map { $0.rank >= 2 ? Float(lr * weightDecay) : 0 }
        // One parallel pass over fixed pieces of every tensor (not one per tensor); the moments
        // are moved out of self for it, so that no copy is made.
        let pieces = parameters.pieces()
        var m = firstMoment, v = secondMoment
        firstMoment = ParameterStore()
        secondMoment = ParameterStore()
        gradients.withBaseAddresses { (g: [SharedConstPointer?]) in
            m.withBaseAddresses { m in
                v.withBaseAddresses { v in
                    parameters.withBaseAddresses { p in
                        threads.forEach(pieces.count) { piece in
                            let (t, range) = pieces[piece]
                            AdamW.step(
                                g[t]!.base, m[t]!.base, v[t]!.base, p[t]!.base, range, clip: clip, b1: b1, b2: b2,
                                decay: decays[t], stepSize: stepSize, sqrtC2: sqrtC2, eps: eps)
                        }
                    }
                }
            }
        }
        firstMoment = m
        secondMoment = v
        return norm
    }

    /// The update of elements `range`, eight lanes at a time: each lane does the scalar loop's
    /// operations in its order (no fused multiply-adds), so every element gets the same bits as
    /// one at a time.
    @inline(__always)
    static func step(
        _ g: UnsafePointer<Float>, _ m: UnsafeMutablePointer<Float>, _ v: UnsafeMutablePointer<Float>,
        _ p: UnsafeMutablePointer<Float>, _ range: Range<Int>, clip: Float, b1: Float, b2: Float, decay: Float,
        stepSize: Float, sqrtC2: Float, eps: Float
    ) {
        typealias V = SIMD8<Float>
        var j = range.lowerBound
        let rg = UnsafeRawPointer(g)
        let (rm, rv, rp) = (UnsafeMutableRawPointer(m), UnsafeMutableRawPointer(v), UnsafeMutableRawPointer(p))
        let (vclip, vb1, vb2, vdecay) = (V(repeating: clip), V(repeating: b1), V(repeating: b2), V(repeating: decay))
        let (c1, c2) = (V(repeating: 1 - b1), V(repeating: 1 - b2))
        let (vstep, vsqrtC2, veps) = (V(repeating: stepSize), V(repeating: sqrtC2), V(repeating: eps))
        while j + 8 <= range.upperBound {
            let o = j * 4
            let gj = rg.loadUnaligned(fromByteOffset: o, as: V.self) * vclip
            let mj = vb1 * rm.loadUnaligned(fromByteOffset: o, as: V.self) + c1 * gj
            let vj = vb2 * rv.loadUnaligned(fromByteOffset: o, as: V.self) + c2 * gj * gj
            var pj = rp.loadUnaligned(fromByteOffset: o, as: V.self)
            pj -= vdecay * pj
            pj -= vstep * mj / (vj.squareRoot() / vsqrtC2 + veps)
            rm.storeBytes(of: mj, toByteOffset: o, as: V.self)
            rv.storeBytes(of: vj, toByteOffset: o, as: V.self)
            rp.storeBytes(of: pj, toByteOffset: o, as: V.self)
            j += 8
        }
        while j < range.upperBound {
            let gj = g[j] * clip
            m[j] = b1 * m[j] + (1 - b1) * gj
            v[j] = b2 * v[j] + (1 - b2) * gj * gj
            p[j] -= decay * p[j]
            p[j] -= stepSize * m[j] / (v[j].squareRoot() / sqrtC2 + eps)
            j += 1
        }
    }
}
