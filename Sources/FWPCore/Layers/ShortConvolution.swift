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
        var outs: [Tensor] = [], pres: [Tensor] = []
        for (i, x) in parts.enumerated() {
            var pre = Tensor(uninitializedShape: x.shape), out = Tensor(uninitializedShape: x.shape)
            let pw = SharedConstPointer(p.values[weight].pointer + i * hd * w), px = SharedConstPointer(x.pointer)
            let pc = carried.isEmpty ? nil : SharedConstPointer(carried.pointer)
            let pp = SharedPointer(pre.mutablePointer()), po = SharedPointer(out.mutablePointer())
            borrowing(x, pre, out, p.values[weight], carried) {
                threads.forEach(batch) { b in
                    for t in 0..<steps {
                        let row = (b * steps + t) * hd
                        for c in 0..<hd {
                            var acc: Float = 0
                            for j in 0..<w {
                                let s = t - past + j
                                let xs: Float
                                if s >= 0 {
                                    xs = px.base[(b * steps + s) * hd + c]
                                } else if let pc {
                                    xs = pc.base[b * past * rows3 + (past + s) * rows3 + i * hd + c]
                                } else {
                                    xs = 0
                                }
                                acc += pw.base[c * w + j] * xs
                            }
                            pp.base[row + c] = acc
                            po.base[row + c] = acc / (1 + expf(-acc))
                        }
                    }
                }
            }
            outs.append(out)
            pres.append(pre)
        }
        if state != nil && past > 0 {
            // The new state: the last w − 1 inputs, from this segment or (if shorter) the old state.
            var next = TensorStorage(repeating: 0, count: batch * past * rows3)
            for b in 0..<batch {
                for r in 0..<past {
                    let s = steps - past + r  // input index of state row r
                    for (i, x) in parts.enumerated() {
                        for c in 0..<hd {
                            let value: Float
                            if s >= 0 {
                                value = x.storage[(b * steps + s) * hd + c]
                            } else if !carried.isEmpty {
                                value = carried[b * past * rows3 + (past + s) * rows3 + i * hd + c]
                            } else {
                                value = 0
                            }
                            next[b * past * rows3 + r * rows3 + i * hd + c] = value
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
        var dIns: [Tensor] = []
        // Per-sequence weight gradients, added in sequence order afterwards (the same sum for any
        // thread count).
        let dwParts = AlignedFloats(count: batch * rows3 * w, zeroed: true)
        let pdwParts = SharedPointer(dwParts.base)
        for i in 0..<3 {
            let x = cache.inputs[i], pre = cache.pre[i], dy = dOut[i]
            var dpre = Tensor(uninitializedShape: x.shape), dx = Tensor(uninitializedShape: x.shape)
            let pw = SharedConstPointer(p.values[weight].pointer + i * hd * w)
            let px = SharedConstPointer(x.pointer), ppre = SharedConstPointer(pre.pointer)
            let pdy = SharedConstPointer(dy.pointer)
            let pc = cache.carried.isEmpty ? nil : SharedConstPointer(cache.carried.pointer)
            let pdp = SharedPointer(dpre.mutablePointer()), pdx = SharedPointer(dx.mutablePointer())
            borrowing(x, pre, dy, dpre, dx, p.values[weight], cache.carried, dwParts) {
                threads.forEach(batch) { b in
                    let base = b * steps * hd
                    for n in 0..<(steps * hd) {
                        let z = ppre.base[base + n], s = 1 / (1 + expf(-z))
                        pdp.base[base + n] = pdy.base[base + n] * s * (1 + z * (1 - s))
                    }
                    let dwb = pdwParts.base + b * rows3 * w + i * hd * w
                    for t in 0..<steps {
                        for c in 0..<hd {
                            var acc: Float = 0
                            for j in 0..<w {
                                let u = t + past - j  // output step that reads input t through tap j
                                if u < steps { acc += pw.base[c * w + j] * pdp.base[base + u * hd + c] }
                            }
                            pdx.base[base + t * hd + c] = acc
                        }
                    }
                    for t in 0..<steps {
                        for c in 0..<hd {
                            let d = pdp.base[base + t * hd + c]
                            for j in 0..<w {
                                let s = t - past + j
                                let xs: Float
                                if s >= 0 {
                                    xs = px.base[base + s * hd + c]
                                } else if let pc {
                                    xs = pc.base[b * past * rows3 + (past + s) * rows3 + i * hd + c]
                                } else {
                                    xs = 0
                                }
                                dwb[c * w + j] += d * xs
                            }
                        }
                    }
                }
            }
            dIns.append(dx)
        }
        withExtendedLifetime(dwParts) {
            g.values[weight].withUnsafeMutablePointer { pg in
                for b in 0..<batch { Vec.axpy(1, pdwParts.base + b * rows3 * w, pg, rows3 * w) }
            }
        }
        return dIns
    }
}
