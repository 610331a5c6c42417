import Foundation
import CKernels

/// A fully connected layer y = x Wᵀ + b, W of shape out × in (PyTorch's convention).
public struct Linear: Sendable {
    /// Index of the weight (out × in) in the parameter store.
    public let weight: Int
    /// Index of the bias (out), if any.
    public let bias: Int?
    public let inFeatures: Int
    public let outFeatures: Int

    /// Registers the weight (N(0, std²)) and optional zero bias under `name`.weight / `name`.bias.
    public init(
        _ name: String, in inFeatures: Int, out outFeatures: Int, bias: Bool, std: Float,
        store: inout ParameterStore, rng: inout FWPRandom
    ) {
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        weight = store.add("\(name).weight", .normal(shape: [outFeatures, inFeatures], std: std, using: &rng))
        self.bias = bias ? store.add("\(name).bias", Tensor(shape: [outFeatures])) : nil
    }

    /// y = x Wᵀ + b for x of shape N × in (ReLU(x Wᵀ + b) with `relu`), y written in one pass where
    /// the dense kernel runs (`BLAS.linear`).
    /// `threads` cut the rows of the products (`BLAS.forEachRowPiece`; results do not change).
    public func forward(
        _ x: Tensor, _ p: ParameterStore, relu: Bool = false, threads: ComputeThreads = ComputeThreads(1)
    ) -> Tensor {
        precondition(x.columns == inFeatures, "Linear expects \(inFeatures) features, got \(x.columns)")
        var y = Tensor(uninitializedShape: [x.rows, outFeatures])  // written by the product (beta 0)
        BLAS.linear(
            x, weight: p.values[weight], bias: bias.map { p.values[$0] }, relu: relu, into: &y, threads: threads)
        return y
    }

    /// y += x Wᵀ + b (a residual stream): the product accumulates into y, with the bias.
    public func forward(
        _ x: Tensor, _ p: ParameterStore, addingTo y: inout Tensor, threads: ComputeThreads = ComputeThreads(1)
    ) {
        precondition(x.columns == inFeatures, "Linear expects \(inFeatures) features, got \(x.columns)")
        precondition(
            y.rows == x.rows && y.columns == outFeatures,
            "Linear output is \(y.shape), expected [\(x.rows), \(outFeatures)]")
        BLAS.linear(
            x, weight: p.values[weight], bias: bias.map { p.values[$0] }, accumulate: true, into: &y, threads: threads)
    }

    /// Accumulates dW += dyᵀ x, db += Σ dy (unless the caller has: `biasDone`) and returns dx = dy W.
    /// With `overwrite`, dW ← dyᵀ x instead (g's entry for W may be uninitialised).
    public func backward(
        _ dy: Tensor, input x: Tensor, _ p: ParameterStore, _ g: inout ParameterStore, biasDone: Bool = false,
        overwrite: Bool = false, threads: ComputeThreads = ComputeThreads(1)
    ) -> Tensor {
        accumulateGradients(dy, input: x, &g, biasDone: biasDone, overwrite: overwrite, threads: threads)
        return BLAS.matmul(dy, p.values[weight], threads: threads)
    }

    /// The parameter half of `backward`: dW += dyᵀ x (dW ← dyᵀ x with `overwrite`) and db += Σ dy
    /// (unless `biasDone`).
    public func accumulateGradients(
        _ dy: Tensor, input x: Tensor, _ g: inout ParameterStore, biasDone: Bool = false, overwrite: Bool = false,
        threads: ComputeThreads = ComputeThreads(1)
    ) {
        BLAS.gemm(dy, transposeA: true, x, beta: overwrite ? 0 : 1, into: &g.values[weight], threads: threads)
        if let bias, !biasDone { addColumnSums(dy, into: &g.values[bias]) }
    }
}

/// g[j] += Σ_r x[r, j].
func addColumnSums(_ x: Tensor, into g: inout Tensor) {
    let n = x.columns
    x.withUnsafePointer { px in
        g.withUnsafeMutablePointer { pg in
            for r in 0..<x.rows { Vec.axpy(1, px + r * n, pg, n) }
        }
    }
}

/// A token embedding table of shape vocabulary × D.
public struct Embedding: Sendable {
    public let weight: Int
    public let vocabulary: Int
    public let dimension: Int

    public init(
        _ name: String, vocabulary: Int, dimension: Int, std: Float, store: inout ParameterStore,
        rng: inout FWPRandom
    ) {
        self.vocabulary = vocabulary
        self.dimension = dimension
        weight = store.add("\(name).weight", .normal(shape: [vocabulary, dimension], std: std, using: &rng))
    }

    /// Rows of the table for each token.
    public func forward(_ tokens: [Int], _ p: ParameterStore) -> Tensor {
        var y = Tensor(uninitializedShape: [tokens.count, dimension])  // every row copied in below
        let w = p.values[weight]
        w.withUnsafePointer { pw in
            y.withUnsafeMutablePointer { py in
                for (i, t) in tokens.enumerated() {
                    precondition(t >= 0 && t < vocabulary, "token \(t) outside vocabulary of \(vocabulary)")
                    (py + i * dimension).update(from: pw + t * dimension, count: dimension)
                }
            }
        }
        return y
    }

    /// Scatters dy into the rows of the table's gradient.
    public func backward(_ dy: Tensor, tokens: [Int], _ g: inout ParameterStore) {
        dy.withUnsafePointer { pd in
            g.values[weight].withUnsafeMutablePointer { pg in
                for (i, t) in tokens.enumerated() { Vec.axpy(1, pd + i * dimension, pg + t * dimension, dimension) }
            }
        }
    }
}

/// Layer normalisation over the last dimension with a learned gain and bias (ε = 1e-5).
public struct LayerNorm: Sendable {
    public let weight: Int
    public let bias: Int
    public let dimension: Int
    public static let epsilon: Float = 1e-5

    public init(_ name: String, dimension: Int, store: inout ParameterStore) {
        self.dimension = dimension
        weight = store.add("\(name).weight", Tensor(shape: [dimension], repeating: 1))
        bias = store.add("\(name).bias", Tensor(shape: [dimension]))
    }

    /// What the backward pass needs: the normalised input and 1/σ per row.
    public struct Cache: Sendable {
        var normalized: Tensor
        var inverseStd: [Float]
    }

    /// `native` selects the AVX2 C kernel (`VectorKernels`) over the Swift loops.
    public func forward(_ x: Tensor, _ p: ParameterStore, native: Bool = VectorKernels.enabled) -> (Tensor, Cache) {
        let n = dimension, rows = x.rows
        var y = Tensor(uninitializedShape: x.shape)  // both written row by row below
        var xhat = Tensor(uninitializedShape: x.shape)
        var rstd = [Float](repeating: 0, count: rows)
        let gamma = p.values[weight], beta = p.values[bias]
        precondition(!native || VectorKernels.supported, "the vector kernels need AVX2 and FMA")
        x.withUnsafePointer { px in
            gamma.withUnsafePointer { pg in
                beta.withUnsafePointer { pb in
                    y.withUnsafeMutablePointer { py in
                        xhat.withUnsafeMutablePointer { ph in
                            if native {
                                fwp_layer_norm_forward(px, pg, pb, py, ph, &rstd, rows, n, LayerNorm.epsilon)
                                return
                            }
                            for r in 0..<rows {
                                let row = px + r * n
                                let mean = Vec.sum(row, n) / Float(n)
                                var v: Float = 0
                                for j in 0..<n {
                                    let d = row[j] - mean
                                    v += d * d
                                }
                                let s = 1 / (v / Float(n) + LayerNorm.epsilon).squareRoot()
                                rstd[r] = s
                                for j in 0..<n {
                                    let h = (row[j] - mean) * s
                                    ph[r * n + j] = h
                                    py[r * n + j] = h * pg[j] + pb[j]
                                }
                            }
                        }
                    }
                }
            }
        }
        return (y, Cache(normalized: xhat, inverseStd: rstd))
    }

    public func backward(
        _ dy: Tensor, cache: Cache, _ p: ParameterStore, _ g: inout ParameterStore, native: Bool = VectorKernels.enabled
    ) -> Tensor {
        var dx = Tensor(uninitializedShape: dy.shape)  // every row written
        backward(dy, cache: cache, p, &g, into: &dx, accumulate: false, native: native)
        return dx
    }

    /// Adds the gradient with respect to the input to `dx` (a residual stream's gradient), in
    /// the pass that computes it: the same sums as `dx + backward(…)`, with one pass over the rows instead of two.
    public func backward(
        _ dy: Tensor, cache: Cache, _ p: ParameterStore, _ g: inout ParameterStore, addingTo dx: inout Tensor,
        native: Bool = VectorKernels.enabled
    ) {
        precondition(dx.shape == dy.shape, "LayerNorm gradient: dx is \(dx.shape), dy is \(dy.shape)")
        backward(dy, cache: cache, p, &g, into: &dx, accumulate: true, native: native)
    }

    private func backward(
        _ dy: Tensor, cache: Cache, _ p: ParameterStore, _ g: inout ParameterStore, into dx: inout Tensor,
        accumulate: Bool, native: Bool
    ) {
        let n = dimension, rows = dy.rows
        let gamma = p.values[weight]
        var dgamma = g.values[weight], dbeta = g.values[bias]
        precondition(!native || VectorKernels.supported, "the vector kernels need AVX2 and FMA")
        dy.withUnsafePointer { pd in
            cache.normalized.withUnsafePointer { ph in
                gamma.withUnsafePointer { pg in
                    dx.withUnsafeMutablePointer { px in
                        dgamma.withUnsafeMutablePointer { pdg in
                            dbeta.withUnsafeMutablePointer { pdb in
                                if native {
                                    fwp_layer_norm_backward(
                                        pd, ph, pg, cache.inverseStd, px, accumulate ? 1 : 0, pdg, pdb, rows, n)
                                    return
                                }
                                for r in 0..<rows {
                                    var sumG: Float = 0, sumGH: Float = 0
                                    for j in 0..<n {
                                        let d = pd[r * n + j], h = ph[r * n + j]
                                        pdg[j] += d * h
                                        pdb[j] += d
                                        let gh = d * pg[j]
                                        sumG += gh
                                        sumGH += gh * h
                                    }
                                    let s = cache.inverseStd[r] / Float(n)
                                    for j in 0..<n {
                                        let gh = pd[r * n + j] * pg[j]
                                        let v = s * (Float(n) * gh - sumG - ph[r * n + j] * sumGH)
                                        px[r * n + j] = accumulate ? px[r * n + j] + v : v
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        g.values[weight] = dgamma
        g.values[bias] = dbeta
    }
}

/// The position-wise feed-forward block: fc2(ReLU(fc1(x))).
public struct FeedForward: Sendable {
    public let fc1: Linear
    public let fc2: Linear

    public init(
        _ name: String, dimension: Int, hidden: Int, std: Float, outputStd: Float,
        store: inout ParameterStore, rng: inout FWPRandom
    ) {
        fc1 = Linear("\(name).fc1", in: dimension, out: hidden, bias: true, std: std, store: &store, rng: &rng)
        fc2 = Linear("\(name).fc2", in: hidden, out: dimension, bias: true, std: outputStd, store: &store, rng: &rng)
    }

    public struct Cache: Sendable {
        var input: Tensor
        var hidden: Tensor  // after ReLU
    }

    /// `threads` cut the products' rows or columns (results do not change).
    public func forward(
        _ x: Tensor, _ p: ParameterStore, threads: ComputeThreads = ComputeThreads(1)
    ) -> (Tensor, Cache) {
        let h = hidden(x, p, threads)
        return (fc2.forward(h, p, threads: threads), Cache(input: x, hidden: h))
    }

    /// `forward` with the output added to `residual` by fc2's product itself.
    public func forward(
        _ x: Tensor, _ p: ParameterStore, addingTo residual: inout Tensor, threads: ComputeThreads = ComputeThreads(1)
    ) -> Cache {
        let h = hidden(x, p, threads)
        fc2.forward(h, p, addingTo: &residual, threads: threads)
        return Cache(input: x, hidden: h)
    }

    /// ReLU(x W₁ᵀ + b₁), written once where the dense kernel runs (`BLAS.linear`).
    private func hidden(_ x: Tensor, _ p: ParameterStore, _ threads: ComputeThreads) -> Tensor {
        fc1.forward(x, p, relu: true, threads: threads)
    }

    /// `native` selects the AVX2 C kernel (`VectorKernels`) for ReLU's gradient. With `overwrite`
    /// the two weights' gradients are written, not added (g's entries for them may be uninitialised).
    public func backward(
        _ dy: Tensor, cache: Cache, _ p: ParameterStore, _ g: inout ParameterStore,
        native: Bool = VectorKernels.enabled,
        overwrite: Bool = false, threads: ComputeThreads = ComputeThreads(1)
    ) -> Tensor {
        guard native else {
            var dh = fc2.backward(dy, input: cache.hidden, p, &g, overwrite: overwrite, threads: threads)
            let rows = dh.rows, n = dh.columns
            cache.hidden.withUnsafePointer { ph in
                dh.withUnsafeMutablePointer { Vec.reluBackward($0, output: ph, rows * n) }
            }
            return fc1.backward(dh, input: cache.input, p, &g, overwrite: overwrite, threads: threads)
        }
        // dh = (dy W₂) ⊙ [h > 0] and fc1's bias gradient (column sums) together: in the dense
        // kernel's pass over dh where it runs, otherwise one C pass after the product.
        fc2.accumulateGradients(dy, input: cache.hidden, &g, overwrite: overwrite, threads: threads)
        var dh = Tensor(uninitializedShape: [dy.rows, fc2.inFeatures])  // written by the product
        BLAS.gatedProduct(
            dy, weight: p.values[fc2.weight], gate: cache.hidden, into: &dh, columnSums: &g.values[fc1.bias!],
            native: true, threads: threads)
        return fc1.backward(dh, input: cache.input, p, &g, biasDone: true, overwrite: overwrite, threads: threads)
    }

    /// The weights whose gradients `backward` writes with `overwrite`.
    var overwrittenGradients: [Int] { [fc1.weight, fc2.weight] }
}

/// Inverted dropout: keeps each element with probability 1 − p and scales kept ones by 1/(1 − p).
public enum Dropout {
    /// A mask of 0 and 1/(1 − p), or nil when p is 0 (nothing to do).
    public static func mask(count: Int, rate: Float, using rng: inout FWPRandom) -> [Float]? {
        guard rate > 0 else { return nil }
        precondition(rate < 1, "dropout rate must be below 1")
        let keep = 1 / (1 - rate)
        return (0..<count).map { _ in rng.uniform() < Double(rate) ? 0 : keep }
    }

    /// x ⊙ mask in place (the same call serves the backward pass).
    public static func apply(_ mask: [Float]?, to x: inout Tensor) {
        guard let mask else { return }
        precondition(mask.count == x.count)
        let n = x.count
        mask.withUnsafeBufferPointer { pm in
            x.withUnsafeMutablePointer { px in
                for i in 0..<n { px[i] *= pm[i] }
            }
        }
    }
}

/// Softmax cross-entropy averaged over rows.
public enum CrossEntropy {
    /// Mean −log softmax(logits)[target] and its gradient with respect to the logits.
    /// Rows whose target is negative are ignored (neither counted nor given gradient).
    ///
    /// `normalizer` overrides the count of targeted rows that the mean divides by (used when a
    /// batch is split into shards: each shard divides by the whole batch's count).
    ///
    /// `native` runs the rows through the C kernel (`fwp_cross_entropy`: one pass for the maximum,
    /// one for e^(x − max) and its sum, one for the scaling), the Swift loops otherwise.
    public static func lossAndGradient(
        logits: Tensor, targets: [Int], normalizer: Int? = nil, native: Bool = VectorKernels.enabled
    ) -> (
        loss: Double, gradient: Tensor
    ) {
        let v = logits.columns, rows = logits.rows
        precondition(targets.count == rows, "one target per row")
        let counted = normalizer ?? targets.filter { $0 >= 0 }.count
        let scale = counted > 0 ? 1 / Float(counted) : 0
        if native {
            for t in targets { precondition(t < v, "target \(t) outside vocabulary of \(v)") }
            var grad = Tensor(uninitializedShape: logits.shape)  // every row written
            let total = logits.withUnsafePointer { pl in
                grad.withUnsafeMutablePointer { pg in
                    targets.withUnsafeBufferPointer { pt in
                        fwp_cross_entropy(pl, pt.baseAddress, pg, rows, v, scale)
                    }
                }
            }
            return (counted > 0 ? total / Double(counted) : 0, grad)
        }
        var grad = Tensor(shape: logits.shape)
        var total = 0.0
        logits.withUnsafePointer { pl in
            grad.withUnsafeMutablePointer { pg in
                for r in 0..<rows {
                    let t = targets[r]
                    guard t >= 0 else { continue }
                    precondition(t < v, "target \(t) outside vocabulary of \(v)")
                    let row = pl + r * v
                    let m = Vec.maximum(row, v)
                    let s = Vec.expShifted(row, pg + r * v, v, shift: m)
                    let inv = 1 / s
                    total += Double(logf(s) + m - row[t])
                    for j in 0..<v { pg[r * v + j] *= inv * scale }
                    pg[r * v + t] -= scale
                }
            }
        }
        return (counted > 0 ? total / Double(counted) : 0, grad)
    }
}
