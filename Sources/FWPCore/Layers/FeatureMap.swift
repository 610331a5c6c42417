import Foundation

/// The kernel feature map φ that turns keys and queries (size d) into fast-weight
/// coordinates (size d_dot). See docs/MODEL.md for the exact definitions.
public enum FeatureMapKind: Sendable, Equatable, Codable {
    /// φ(x) = x; d_dot = d.
    case identity
    /// φ(x) = elu(x) + 1; d_dot = d.
    case eluPlusOne
    /// DPFP-ν: x' = [relu(x), relu(−x)], φ = concat_{j=1..ν} x' ⊙ roll(x', j); d_dot = 2dν.
    case dpfp(nu: Int)
    /// FAVOR+ with m random features: exp(±Rx − |x|²/2) / √(2m); d_dot = 2m.
    case favor(features: Int)
    /// φ(x) = x σ(x) (SiLU), as DeltaNet-style layers apply to q and k; d_dot = d.
    case silu

    /// The output size for inputs of size `d`.
    public func outputSize(inputSize d: Int) -> Int {
        switch self {
        case .identity, .eluPlusOne, .silu: return d
        case .dpfp(let nu): return 2 * d * nu
        case .favor(let m): return 2 * m
        }
    }

    /// Short name as used in configs and presets: identity, elu, dpfp-ν, favor-m.
    public var name: String {
        switch self {
        case .identity: return "identity"
        case .eluPlusOne: return "elu"
        case .dpfp(let nu): return "dpfp-\(nu)"
        case .favor(let m): return "favor-\(m)"
        case .silu: return "silu"
        }
    }

    /// Parses `name`'s format; nil if it is not one.
    public init?(name: String) {
        switch name {
        case "identity": self = .identity
        case "elu", "elu+1", "linear": self = .eluPlusOne
        case "silu": self = .silu
        default:
            let parts = name.split(separator: "-", maxSplits: 1)
            guard parts.count == 2, let n = Int(parts[1]), n >= 1 else { return nil }
            switch parts[0] {
            case "dpfp": self = .dpfp(nu: n)
            case "favor": self = .favor(features: n)
            default: return nil
            }
        }
    }

    public init(from decoder: Decoder) throws {
        let s = try decoder.singleValueContainer().decode(String.self)
        guard let k = FeatureMapKind(name: s) else {
            throw DecodingError.dataCorrupted(
                .init(
                    codingPath: decoder.codingPath,
                    debugDescription: "unknown feature map '\(s)' (identity, elu, silu, dpfp-N, favor-M)"))
        }
        self = k
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(name)
    }
}

/// φ applied row-wise to an R × d tensor, with its backward pass.
public struct FeatureMap: Sendable {
    public let kind: FeatureMapKind
    public let inputSize: Int
    public var outputSize: Int { kind.outputSize(inputSize: inputSize) }

    public init(_ kind: FeatureMapKind, inputSize: Int) {
        self.kind = kind
        self.inputSize = inputSize
    }

    /// Draws a FAVOR+ projection R (m × d): blocks of d orthogonal directions (Gram–Schmidt on
    /// Gaussian vectors, in Double), each row rescaled to the norm of a fresh Gaussian vector.
    public static func favorProjection(features m: Int, inputSize d: Int, using rng: inout FWPRandom) -> Tensor {
        var r = Tensor(shape: [m, d])
        var row = 0
        while row < m {
            var block: [[Double]] = []
            for _ in 0..<d {
                var v = (0..<d).map { _ in rng.normal() }
                for u in block {
                    let p = zip(v, u).reduce(0.0) { $0 + $1.0 * $1.1 }
                    for i in 0..<d { v[i] -= p * u[i] }
                }
                let n = v.reduce(0.0) { $0 + $1 * $1 }.squareRoot()
                block.append(v.map { $0 / n })
            }
            for u in block where row < m {
                let norm = (0..<d).reduce(0.0) { acc, _ in
                    let g = rng.normal()
                    return acc + g * g
                }.squareRoot()
                for i in 0..<d { r[row, i] = Float(u[i] * norm) }
                row += 1
            }
        }
        return r
    }

    /// φ(x) for each row of x (R × d); `projection` is FAVOR+'s R (m × d), unused otherwise.
    /// ELU+1 spreads its rows over `threads`.
    public func forward(_ x: Tensor, projection: Tensor? = nil, threads: ComputeThreads = ComputeThreads(1)) -> Tensor {
        precondition(x.columns == inputSize, "feature map expects rows of \(inputSize), got \(x.columns)")
        let rows = x.rows, d = inputSize, dd = outputSize
        var y = Tensor(uninitializedShape: [rows, dd])  // every kind below writes every element
        switch kind {
        case .identity:
            y = x
        case .eluPlusOne:
            x.withUnsafePointer { px in
                y.withUnsafeMutablePointer { py in
                    threads.forEachRowRange(rows) { r in
                        VectorKernels.eluPlusOne(px + r.lowerBound * d, py + r.lowerBound * d, r.count * d)
                    }
                }
            }
        case .dpfp(let nu):
            let w = 2 * d
            x.withUnsafePointer { px in
                y.withUnsafeMutablePointer { py in
                    var xp = [Float](repeating: 0, count: w)
                    for r in 0..<rows {
                        for i in 0..<d {
                            let v = px[r * d + i]
                            xp[i] = max(v, 0)
                            xp[d + i] = max(-v, 0)
                        }
                        for j in 1...nu {
                            let out = py + r * dd + (j - 1) * w
                            for i in 0..<w { out[i] = xp[i] * xp[(i - j % w + w) % w] }
                        }
                    }
                }
            }
        case .silu:
            x.withUnsafePointer { px in
                y.withUnsafeMutablePointer { py in
                    for i in 0..<(rows * d) { py[i] = px[i] / (1 + expf(-px[i])) }
                }
            }
        case .favor(let m):
            guard let projection else { preconditionFailure("FAVOR+ needs its projection") }
            precondition(projection.shape == [m, d], "FAVOR+ projection must be \(m)×\(d)")
            // a = x Rᵀ into each output row's first half (cut only as `forEachRowPiece` allows,
            // so the bits do not depend on the threads), then both halves exp(±a − |x|²/2 − c).
            let c = 0.5 * logf(Float(2 * m))
            x.withUnsafePointer { px in
                projection.withUnsafePointer { pr in
                    y.withUnsafeMutablePointer { py in
                        BLAS.forEachRowPiece(rows, n: m, k: d, transposeB: true, threads: threads) { range in
                            BLAS.gemm(
                                transposeA: false, transposeB: true, m: range.count, n: m, k: d,
                                a: px + range.lowerBound * d, lda: d, b: pr, ldb: d, beta: 0,
                                c: py + range.lowerBound * dd, ldc: dd)
                        }
                        threads.forEachRowRange(rows, minimumRows: 64) { range in
                            for r in range {
                                let shift = 0.5 * Vec.dot(px + r * d, px + r * d, d) + c
                                Vec.favorPair(py + r * dd, m, shift: shift)
                            }
                        }
                    }
                }
            }
        }
        return y
    }

    /// dx given x, φ(x) and dφ. ELU+1 and FAVOR+ spread their rows over `threads`.
    public func backward(
        _ dy: Tensor, input x: Tensor, output y: Tensor, projection: Tensor? = nil,
        threads: ComputeThreads = ComputeThreads(1)
    ) -> Tensor {
        let rows = x.rows, d = inputSize, dd = outputSize
        switch kind {
        case .identity:
            return dy
        case .eluPlusOne:
            var dx = Tensor(uninitializedShape: dy.shape)
            dy.withUnsafePointer { pg in
                x.withUnsafePointer { px in
                    y.withUnsafePointer { py in
                        dx.withUnsafeMutablePointer { pd in
                            threads.forEachRowRange(rows) { r in
                                let o = r.lowerBound * d
                                Vec.eluPlusOneBackward(pg + o, input: px + o, output: py + o, into: pd + o, r.count * d)
                            }
                        }
                    }
                }
            }
            return dx
        case .silu:
            // d/dx x σ(x) = σ(x) (1 + x (1 − σ(x)))
            var dx = Tensor(uninitializedShape: dy.shape)
            dy.withUnsafePointer { pg in
                x.withUnsafePointer { px in
                    dx.withUnsafeMutablePointer { pd in
                        for i in 0..<(rows * d) {
                            let s = 1 / (1 + expf(-px[i]))
                            pd[i] = pg[i] * s * (1 + px[i] * (1 - s))
                        }
                    }
                }
            }
            return dx
        case .dpfp(let nu):
            var dx = Tensor(shape: [rows, d])
            let w = 2 * d
            var xp = [Float](repeating: 0, count: w)
            var dxp = [Float](repeating: 0, count: w)
            for r in 0..<rows {
                for i in 0..<d {
                    let v = x[r, i]
                    xp[i] = max(v, 0)
                    xp[d + i] = max(-v, 0)
                }
                for i in 0..<w { dxp[i] = 0 }
                for j in 1...nu {
                    let off = r * dd + (j - 1) * w
                    for i in 0..<w {
                        let s = (i - j % w + w) % w
                        let g = dy.storage[off + i]
                        dxp[i] += g * xp[s]
                        dxp[s] += g * xp[i]
                    }
                }
                for i in 0..<d {
                    let v = x[r, i]
                    dx[r, i] = v > 0 ? dxp[i] : (v < 0 ? -dxp[d + i] : 0)
                }
            }
            return dx
        case .favor(let m):
            guard let projection else { preconditionFailure("FAVOR+ needs its projection") }
            // φ± = exp(±a − |x|²/2 − c): dφ±/dx = φ± (±R − x), so per row
            // dx = −(Σ dφ·φ) x + (dφ₊·φ₊ − dφ₋·φ₋) R.
            var dx = Tensor(uninitializedShape: [rows, d])  // every row written below
            var g = Tensor(uninitializedShape: [rows, m])  // every row written below
            dy.withUnsafePointer { pg in
                x.withUnsafePointer { px in
                    y.withUnsafePointer { py in
                        dx.withUnsafeMutablePointer { pd in
                            g.withUnsafeMutablePointer { pgr in
                                threads.forEachRowRange(rows, minimumRows: 64) { range in
                                    for r in range {
                                        let total = Vec.favorPairBackward(
                                            pg + r * dd, output: py + r * dd, into: pgr + r * m, m)
                                        Vec.scale(-total, px + r * d, into: pd + r * d, d)
                                    }
                                }
                            }
                        }
                    }
                }
            }
            BLAS.gemm(g, projection, beta: 1, into: &dx, threads: threads)
            return dx
        }
    }
}

/// Sum normalisation φ'(x) = φ(x) / (Σ_j φ(x)_j + ε), row-wise.
public enum SumNormalization {
    /// ε added to each row's sum so that an all-zero row (possible with DPFP) stays finite.
    public static let epsilon: Float = 1e-6

    /// The normalised rows and each row's denominator (rows spread over `threads`).
    public static func forward(_ x: Tensor, threads: ComputeThreads = ComputeThreads(1)) -> (Tensor, [Float]) {
        divideRows(x, threads: threads) { row, n in Vec.sum(row, n) + epsilon }
    }

    /// dx = (dy − (dy · y)) / s for each row (rows spread over `threads`).
    public static func backward(
        _ dy: Tensor, output y: Tensor, sums: [Float], threads: ComputeThreads = ComputeThreads(1)
    ) -> Tensor {
        let n = y.columns
        var dx = Tensor(uninitializedShape: dy.shape)  // every row written below
        dy.withUnsafePointer { pd in
            y.withUnsafePointer { py in
                dx.withUnsafeMutablePointer { px in
                    sums.withUnsafeBufferPointer { ps in
                        threads.forEachRowRange(y.rows) { rows in
                            for r in rows {
                                let c = Vec.dot(pd + r * n, py + r * n, n)
                                Vec.shiftScale(pd + r * n, shift: -c, scale: 1 / ps[r], into: px + r * n, n)
                            }
                        }
                    }
                }
            }
        }
        return dx
    }
}

/// L2 normalisation x / √(Σ_j x_j² + ε), row-wise.
public enum L2Normalization {
    /// ε under the square root, so that an all-zero row stays finite.
    public static let epsilon: Float = 1e-6

    /// The normalised rows and each row's norm √(Σ x² + ε) (rows spread over `threads`).
    public static func forward(_ x: Tensor, threads: ComputeThreads = ComputeThreads(1)) -> (Tensor, [Float]) {
        divideRows(x, threads: threads) { row, n in (Vec.dot(row, row, n) + epsilon).squareRoot() }
    }

    /// dx = (dy − y (dy · y)) / s for each row (rows spread over `threads`).
    public static func backward(
        _ dy: Tensor, output y: Tensor, norms: [Float], threads: ComputeThreads = ComputeThreads(1)
    ) -> Tensor {
        let n = y.columns
        var dx = Tensor(uninitializedShape: dy.shape)  // every row written below
        dy.withUnsafePointer { pd in
            y.withUnsafePointer { py in
                dx.withUnsafeMutablePointer { px in
                    norms.withUnsafeBufferPointer { ps in
                        threads.forEachRowRange(y.rows) { rows in
                            for r in rows {
                                let c = Vec.dot(pd + r * n, py + r * n, n), s = 1 / ps[r]
                                for i in 0..<n { px[r * n + i] = (pd[r * n + i] - c * py[r * n + i]) * s }
                            }
                        }
                    }
                }
            }
        }
        return dx
    }
}

/// Each row of x divided by its `denominator`, and the denominators (rows spread over `threads`):
/// the forward pass of the sum and L2 normalisations.
private func divideRows(
    _ x: Tensor, threads: ComputeThreads, denominator: (UnsafePointer<Float>, Int) -> Float
) -> (Tensor, [Float]) {
    let n = x.columns
    var y = Tensor(uninitializedShape: x.shape)  // every row written below
    var denominators = [Float](repeating: 0, count: x.rows)
    x.withUnsafePointer { px in
        y.withUnsafeMutablePointer { py in
            denominators.withUnsafeMutableBufferPointer { ps in
                threads.forEachRowRange(x.rows) { rows in
                    for r in rows {
                        let s = denominator(px + r * n, n)
                        ps[r] = s
                        Vec.scale(1 / s, px + r * n, into: py + r * n, n)
                    }
                }
            }
        }
    }
    return (y, denominators)
}
