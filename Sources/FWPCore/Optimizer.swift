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
    /// Large tensors are updated by `threads` in parallel ranges; every element's update is the
    /// same arithmetic whichever thread does it, so results do not depend on the thread count.
    @discardableResult
    public mutating func update(
        _ parameters: inout ParameterStore, gradients: ParameterStore, threads: ComputeThreads = ComputeThreads(1)
    ) -> Double {
        precondition(parameters.names == gradients.names, "gradients do not match parameters")
        step += 1
        let norm = gradients.globalNorm()
        let clip: Float = (maxGradientNorm > 0 && norm > maxGradientNorm) ? Float(maxGradientNorm / (norm + 1e-6)) : 1
        let lr = schedule.rate(at: step)
        let b1 = Float(beta1), b2 = Float(beta2)
        let c1 = Float(1 - Foundation.pow(beta1, Double(step)))
        let c2 = Float(1 - Foundation.pow(beta2, Double(step)))
        let stepSize = Float(lr) / c1
        let sqrtC2 = c2.squareRoot()
        let eps = Float(epsilon)
        for i in parameters.values.indices {
            let decay = parameters.values[i].rank >= 2 ? Float(lr * weightDecay) : 0
            let n = parameters.values[i].count
            gradients.values[i].withUnsafePointer { g in
                firstMoment.values[i].withUnsafeMutablePointer { m in
                    secondMoment.values[i].withUnsafeMutablePointer { v in
                        parameters.values[i].withUnsafeMutablePointer { p in
                            let s = (SharedConstPointer(g), SharedPointer(m), SharedPointer(v), SharedPointer(p))
                            threads.forEachRowRange(n, minimumRows: 8192) { range in
                                let (g, m, v, p) = (s.0.base, s.1.base, s.2.base, s.3.base)
                                for j in range {
                                    let gj = g[j] * clip
                                    m[j] = b1 * m[j] + (1 - b1) * gj
                                    v[j] = b2 * v[j] + (1 - b2) * gj * gj
                                    p[j] -= decay * p[j]
                                    p[j] -= stepSize * m[j] / (v[j].squareRoot() / sqrtC2 + eps)
                                }
                            }
                        }
                    }
                }
            }
        }
        return norm
    }
}
