import Foundation

/// A causal depthwise convolution of width w over time followed by SiLU, applied to an attention
/// layer's q, k and v (the "short convolution" of DeltaNet-style layers), with its backward pass.
///
/// Channel c of part i (q, k, v; each H·d channels) at step t:
///
///     pre_t = Σ_{j=0}^{w−1} weight[i·H·d + c, j] · x_{t−(w−1)+j},   out_t = pre_t · σ(pre_t)
///
/// where x_s for s < 0 is the carried input of the previous segment (zero for a fresh sequence):
/// the state keeps each sequence's last w − 1 inputs, so segment by segment (and step by step)
/// gives what one long segment gives. Gradients stop at the carried inputs, as at carried fast
/// weights.
struct ShortConvolution: Sendable {
    let width: Int
    /// Channels per part (H·d).
    let channels: Int
    /// Index of the weight (3·H·d × w) in the parameter store.
    let weight: Int

    /// Registers `name`.weight, uniform in ±1/√w (PyTorch's Conv1d default for one input channel
    /// per group).
    init(_ name: String, width: Int, channels: Int, store: inout ParameterStore, rng: inout FWPRandom) {
        self.width = width
        self.channels = channels
        weight = store.add(
            "\(name).weight", .uniform(shape: [3 * channels, width], bound: 1 / Float(width).squareRoot(), using: &rng))
    }

    /// Floats of carried state per sequence: the last w − 1 inputs of all 3·H·d channels.
    var stateCount: Int { (width - 1) * 3 * channels }

    struct Cache {
        var inputs: [Tensor]  // q, k, v before the convolution (N rows of H·d)
        var pre: [Tensor]  // before SiLU
        var carried: TensorStorage  // the state at entry (B · stateCount), empty for zeros
    }

    /// The convolved q, k, v, and the cache. `state` (B · stateCount floats, rows oldest first, each
    /// row q | k | v) is read as the inputs before step 0 and replaced by the last w − 1 inputs.
    func forward(
        _ parts: [Tensor], batch: Int, steps: Int, _ p: ParameterStore, state: inout TensorStorage?,
        threads: ComputeThreads
    ) -> ([Tensor], Cache) {
        let w = width, hd = channels, rows3 = 3 * hd, past = w - 1
        let carried = state ?? []
        let taps = tapMajorWeights(p)
        let ptaps = SharedConstPointer(taps.pointer)
        var outs: [Tensor] = [], pres: [Tensor] = []
        for (i, x) in parts.enumerated() {
            var pre = Tensor(uninitializedShape: x.shape), out = Tensor(uninitializedShape: x.shape)
            let px = SharedConstPointer(x.pointer)
            let pc = carried.isEmpty ? nil : SharedConstPointer(carried.pointer)
            let pp = SharedPointer(pre.mutablePointer()), po = SharedPointer(out.mutablePointer())
            borrowing(x, pre, out, taps, carried) {
                threads.forEach(batch) { b in
                    for t in 0..<steps {
                        let acc = pp.base + (b * steps + t) * hd
                        acc.update(repeating: 0, count: hd)
                        for j in 0..<w {
                            guard
                                let row = inputRow(
                                    part: i, b: b, s: t - past + j, steps: steps, x: px.base, carried: pc?.base)
                            else { continue }
                            Vec.multiplyAdd(ptaps.base + (j * 3 + i) * hd, row, acc, hd)
                        }
                        Vec.silu(acc, into: po.base + (b * steps + t) * hd, hd)
                    }
                }
            }
            outs.append(out)
            pres.append(pre)
        }
        if state != nil && past > 0 {
            // The new state: the last w − 1 inputs, from this segment or (if shorter) the old state.
            var next = TensorStorage(repeating: 0, count: batch * past * rows3)
            next.withUnsafeMutableBufferPointer { pn in
                for (i, x) in parts.enumerated() {
                    x.withUnsafePointer { px in
                        carried.withUnsafeBufferPointer { pc in
                            for b in 0..<batch {
                                for r in 0..<past {
                                    let dst = pn.baseAddress! + b * past * rows3 + r * rows3 + i * hd
                                    if let row = inputRow(
                                        part: i, b: b, s: steps - past + r, steps: steps, x: px,
                                        carried: carried.isEmpty ? nil : pc.baseAddress)
                                    {
                                        dst.update(from: row, count: hd)
                                    }
                                }
                            }
                        }
                    }
                }
            }
            state = next
        }
        return (outs, Cache(inputs: parts, pre: pres, carried: carried))
    }

    /// Accumulates the weight's gradient and returns the inputs' gradients, given the outputs'.
    func backward(
        _ dOut: [Tensor], cache: Cache, batch: Int, steps: Int, _ p: ParameterStore, _ g: inout ParameterStore,
        threads: ComputeThreads
    ) -> [Tensor] {
        let w = width, hd = channels, rows3 = 3 * hd, past = w - 1
        let taps = tapMajorWeights(p)
        let ptaps = SharedConstPointer(taps.pointer)
        var dIns: [Tensor] = []
        // Per-sequence weight gradients (tap-major, as `taps`), added in sequence order afterwards
        // (the same sum for any thread count).
        let dwParts = AlignedFloats(count: batch * rows3 * w, zeroed: true)
        let pdwParts = SharedPointer(dwParts.base)
        for i in 0..<3 {
            let x = cache.inputs[i], pre = cache.pre[i], dy = dOut[i]
            var dpre = Tensor(uninitializedShape: x.shape), dx = Tensor(uninitializedShape: x.shape)
            let px = SharedConstPointer(x.pointer), ppre = SharedConstPointer(pre.pointer)
            let pdy = SharedConstPointer(dy.pointer)
            let pc = cache.carried.isEmpty ? nil : SharedConstPointer(cache.carried.pointer)
            let pdp = SharedPointer(dpre.mutablePointer()), pdx = SharedPointer(dx.mutablePointer())
            borrowing(x, pre, dy, dpre, dx, taps, cache.carried, dwParts) {
                threads.forEach(batch) { b in
                    let base = b * steps * hd
                    Vec.siluBackward(pdy.base + base, input: ppre.base + base, into: pdp.base + base, steps * hd)
                    let dwb = pdwParts.base + b * rows3 * w
                    for t in 0..<steps {
                        // dx_t = Σ_j W_j ⊙ dpre_{t + (w−1) − j}
                        let acc = pdx.base + base + t * hd
                        acc.update(repeating: 0, count: hd)
                        for j in 0..<w where t + past - j < steps {
                            Vec.multiplyAdd(
                                ptaps.base + (j * 3 + i) * hd, pdp.base + base + (t + past - j) * hd, acc, hd)
                        }
                        // dW_j += dpre_t ⊙ x_{t − (w−1) + j}
                        let d = pdp.base + base + t * hd
                        for j in 0..<w {
                            guard
                                let row = inputRow(
                                    part: i, b: b, s: t - past + j, steps: steps, x: px.base, carried: pc?.base)
                            else { continue }
                            Vec.multiplyAdd(d, row, dwb + (j * 3 + i) * hd, hd)
                        }
                    }
                }
            }
            dIns.append(dx)
        }
        withExtendedLifetime(dwParts) {
            g.values[weight].withUnsafeMutablePointer { pg in
                // Sum the sequences' tap-major gradients, then scatter into the weight's layout.
                let sum = pdwParts.base
                for b in 1..<max(batch, 1) { Vec.axpy(1, pdwParts.base + b * rows3 * w, sum, rows3 * w) }
                for j in 0..<w {
                    for c in 0..<rows3 { pg[c * w + j] += sum[j * rows3 + c] }
                }
            }
        }
        return dIns
    }

    /// The weight (3·H·d × w) as w rows of 3·H·d (tap j's weights for every channel, contiguous).
    private func tapMajorWeights(_ p: ParameterStore) -> Tensor {
        let w = width, n = 3 * channels
        var taps = Tensor(uninitializedShape: [w, n])
        p.values[weight].withUnsafePointer { pw in
            taps.withUnsafeMutablePointer { pt in
                for c in 0..<n { for j in 0..<w { pt[j * n + c] = pw[c * w + j] } }
            }
        }
        return taps
    }

    /// Part i's input row for sequence b at step s (s < 0: the carried inputs; nil: zero).
    private func inputRow(
        part i: Int, b: Int, s: Int, steps: Int, x: UnsafePointer<Float>, carried: UnsafePointer<Float>?
    ) -> UnsafePointer<Float>? {
        let hd = channels, past = width - 1
        if s >= 0 { return x + (b * steps + s) * hd }
        guard let carried else { return nil }
        return carried + b * past * 3 * hd + (past + s) * 3 * hd + i * hd
    }
}

extension Vec {
    /// y += a ⊙ x (element-wise).
    static func multiplyAdd(
        _ a: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int
    ) {
        for i in 0..<n { y[i] += a[i] * x[i] }
    }

    /// y = x σ(x).
    static func silu(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { y[i] = x[i] / (1 + expf(-x[i])) }
    }

    /// dx = dy σ(x) (1 + x (1 − σ(x))).
    static func siluBackward(
        _ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>, _ n: Int
    ) {
        for i in 0..<n {
            let s = 1 / (1 + expf(-x[i]))
            dx[i] = dy[i] * s * (1 + x[i] * (1 - s))
        }
    }
}
