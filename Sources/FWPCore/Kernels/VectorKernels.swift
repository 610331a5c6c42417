/// Tight loops over contiguous Float32 memory, written with SIMD8 so that they vectorise in
/// every build. Their summation order depends only on `n`, which keeps results deterministic.
///
/// These Swift loops are the reference path: the C kernels in CKernels mirror them, tests pin each
/// pair together (Sources/CKernels/README.md lists which), and they run wherever the C kernels do
/// not (`KernelDispatch.vectorKernels` false: no AVX2, or `FWP_VECTOR_KERNELS=0`).
@usableFromInline
enum Vec {
    /// Σ a[i] · b[i].
    @inlinable @inline(__always)
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var i = 0
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        while i + 16 <= n {
            acc0 +=
                ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            acc1 +=
                ra.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: (i + 8) * 4, as: SIMD8<Float>.self)
            i += 16
        }
        if i + 8 <= n {
            acc0 +=
                ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        var s = (acc0 + acc1).sum()
        while i < n {
            s += a[i] * b[i]
            i += 1
        }
        return s
    }

    /// y[i] += alpha · x[i].
    @inlinable @inline(__always)
    static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let rx = UnsafeRawPointer(x), ry = UnsafeMutableRawPointer(y)
        let va = SIMD8<Float>(repeating: alpha)
        while i + 8 <= n {
            let v =
                ry.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                + va * rx.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            ry.storeBytes(of: v, toByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n {
            y[i] += alpha * x[i]
            i += 1
        }
    }

    /// Σ x[i].
    @inlinable @inline(__always)
    static func sum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        let rx = UnsafeRawPointer(x)
        while i + 8 <= n {
            acc += rx.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        var s = acc.sum()
        while i < n {
            s += x[i]
            i += 1
        }
        return s
    }

    /// x[i] *= alpha.
    @inlinable @inline(__always)
    static func scale(_ alpha: Float, _ x: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { x[i] *= alpha }
    }

    /// y[i] = alpha · x[i].
    @inlinable @inline(__always)
    static func scale(_ alpha: Float, _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { y[i] = alpha * x[i] }
    }

    /// y[i] = (x[i] + shift) · scale.
    @inlinable @inline(__always)
    static func shiftScale(
        _ x: UnsafePointer<Float>, shift: Float, scale: Float, into y: UnsafeMutablePointer<Float>, _ n: Int
    ) {
        for i in 0..<n { y[i] = (x[i] + shift) * scale }
    }

    // MARK: Exponential and element-wise maps

    /// eˣ for 8 lanes: x = n·ln 2 + r with |r| ≤ ln 2 / 2, eʳ by a degree-6 polynomial (the
    /// Cephes single-precision coefficients), 2ⁿ built in the exponent bits. Relative error
    /// below 2·10⁻⁷ over the normal range (checked against Foundation's `exp` in the tests);
    /// 0 below −87.3, +∞ above 88.7, NaN stays NaN.
    @inlinable @inline(__always)
    static func exp8(_ x: SIMD8<Float>) -> SIMD8<Float> {
        // Only element-wise arithmetic, comparisons and bit casts: the generic SIMD conversions
        // and `rounded` are not specialised and cost more than the whole polynomial.
        let hi = SIMD8<Float>(repeating: 88.72283)
        let lo = SIMD8<Float>(repeating: -87.33654)
        var xc = x
        xc.replace(with: hi, where: x .> hi)
        xc.replace(with: lo, where: x .< lo)
        xc.replace(with: 0, where: x .!= x)
        // Round x·log₂e to the nearest integer n by adding 1.5·2²³: the sum's low mantissa bits
        // then hold n (|n| ≤ 128 ≪ 2²²), and subtracting the constant again gives n as a float.
        let magic = SIMD8<Float>(repeating: 12_582_912)
        let t = xc * 1.442_695_04 + magic
        let n = t - magic
        let ni = unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000
        var r = xc - n * 0.693_359_375
        r = r - n * -2.121_944_4e-4
        var p = SIMD8<Float>(repeating: 1.987_569_15e-4)
        p = p * r + 1.398_199_95e-3
        p = p * r + 8.333_451_9e-3
        p = p * r + 4.166_579_59e-2
        p = p * r + 1.666_666_55e-1
        p = p * r + 5.000_000_12e-1
        let e = p * r * r + r + 1
        // 2ⁿ for n in [−126, 128]: split as 2^(n/2)·2^(n − n/2) so that n = 128 does not overflow
        // the exponent field.
        let half = ni &>> 1
        let s1 = unsafeBitCast((half &+ 127) &<< 23, to: SIMD8<Float>.self)
        let s2 = unsafeBitCast((ni &- half &+ 127) &<< 23, to: SIMD8<Float>.self)
        var y = e * s1 * s2
        y.replace(with: 0, where: x .< lo)
        y.replace(with: Float.infinity, where: x .> hi)
        y.replace(with: x, where: x .!= x)
        return y
    }

    /// The first `count` (< 8) elements at p as a vector, the rest 0.
    @inlinable @inline(__always)
    static func loadPartial(_ p: UnsafePointer<Float>, _ count: Int) -> SIMD8<Float> {
        var v = SIMD8<Float>()
        for k in 0..<count { v[k] = p[k] }
        return v
    }

    /// max over x[0..<n] (n ≥ 1).
    @inlinable
    static func maximum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var m = -Float.infinity
        var i = 0
        let rx = UnsafeRawPointer(x)
        if n >= 8 {
            var acc = SIMD8<Float>(repeating: -.infinity)
            while i + 8 <= n {
                let v = rx.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                acc.replace(with: v, where: v .> acc)
                i += 8
            }
            m = acc.max()
        }
        while i < n {
            m = Swift.max(m, x[i])
            i += 1
        }
        return m
    }

    /// dst[i] = exp(src[i] − shift) for i < n; returns Σ dst[i] (src and dst may be the same).
    @inlinable
    static func expShifted(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int, shift: Float)
        -> Float
    {
        var acc = SIMD8<Float>()
        var i = 0
        let rs = UnsafeRawPointer(src), rd = UnsafeMutableRawPointer(dst)
        let vs = SIMD8<Float>(repeating: shift)
        while i + 8 <= n {
            let e = exp8(rs.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) - vs)
            rd.storeBytes(of: e, toByteOffset: i * 4, as: SIMD8<Float>.self)
            acc += e
            i += 8
        }
        var total = acc.sum()
        if i < n {
            let e = exp8(loadPartial(src + i, n - i) - vs)
            for k in 0..<(n - i) {
                dst[i + k] = e[k]
                total += e[k]
            }
        }
        return total
    }

    /// x[r, j] = max(x[r, j] + bias[j], 0) for `rows` rows of n.
    @inlinable
    static func addBiasRelu(_ x: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows: Int, _ n: Int) {
        let rb = UnsafeRawPointer(bias)
        for r in 0..<rows {
            let row = x + r * n
            let rx = UnsafeMutableRawPointer(row)
            var i = 0
            while i + 8 <= n {
                var v = rx.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                v += rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                v.replace(with: 0, where: v .< 0)
                rx.storeBytes(of: v, toByteOffset: i * 4, as: SIMD8<Float>.self)
                i += 8
            }
            while i < n {
                row[i] = Swift.max(row[i] + bias[i], 0)
                i += 1
            }
        }
    }

    /// g[i] = 0 where out[i] ≤ 0 (ReLU's backward from its output).
    @inlinable
    static func reluBackward(_ g: UnsafeMutablePointer<Float>, output out: UnsafePointer<Float>, _ n: Int) {
        var i = 0
        let rg = UnsafeMutableRawPointer(g), ro = UnsafeRawPointer(out)
        while i + 8 <= n {
            var v = rg.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            v.replace(with: 0, where: ro.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) .<= 0)
            rg.storeBytes(of: v, toByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n {
            if out[i] <= 0 { g[i] = 0 }
            i += 1
        }
    }

    /// dst[i] = src[i] + 1 if src[i] > 0, else exp(src[i]) (ELU + 1).
    @inlinable
    static func eluPlusOne(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let rs = UnsafeRawPointer(src), rd = UnsafeMutableRawPointer(dst)
        while i + 8 <= n {
            let v = rs.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            var y = exp8(v.replacing(with: 0, where: v .> 0))
            y.replace(with: v + 1, where: v .> 0)
            rd.storeBytes(of: y, toByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        if i < n {
            let v = loadPartial(src + i, n - i)
            var y = exp8(v.replacing(with: 0, where: v .> 0))
            y.replace(with: v + 1, where: v .> 0)
            for k in 0..<(n - i) { dst[i + k] = y[k] }
        }
    }

    /// dp[i] = p[i] · (dp[i] − shift) · scale: a softmax row's score gradient from its
    /// probabilities p and the gradient dp with respect to them (shift = Σ p·dp).
    @inlinable
    static func softmaxGradient(
        _ p: UnsafePointer<Float>, _ dp: UnsafeMutablePointer<Float>, _ n: Int, shift: Float, scale: Float
    ) {
        var i = 0
        let rp = UnsafeRawPointer(p), rd = UnsafeMutableRawPointer(dp)
        let vs = SIMD8<Float>(repeating: shift), vc = SIMD8<Float>(repeating: scale)
        while i + 8 <= n {
            let g =
                rp.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                * (rd.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) - vs) * vc
            rd.storeBytes(of: g, toByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n {
            dp[i] = p[i] * (dp[i] - shift) * scale
            i += 1
        }
    }

    /// FAVOR+'s two halves from a = Rx held in row[0..<n]: row[n + i] = exp(−a[i] − shift), then
    /// row[i] = exp(a[i] − shift).
    @inlinable
    static func favorPair(_ row: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) {
        var i = 0
        let r = UnsafeMutableRawPointer(row), vs = SIMD8<Float>(repeating: shift)
        while i + 8 <= n {
            let a = r.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            r.storeBytes(of: exp8(-a - vs), toByteOffset: (n + i) * 4, as: SIMD8<Float>.self)
            r.storeBytes(of: exp8(a - vs), toByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        if i < n {
            let a = loadPartial(row + i, n - i)
            let minus = exp8(-a - vs), plus = exp8(a - vs)
            for k in 0..<(n - i) {
                row[n + i + k] = minus[k]
                row[i + k] = plus[k]
            }
        }
    }

    /// FAVOR+'s backward from φ = (φ₊, φ₋) (y, 2n) and its gradient dy: g[i] = dy₊[i]·φ₊[i] −
    /// dy₋[i]·φ₋[i]; returns Σ (dy₊·φ₊ + dy₋·φ₋).
    @inlinable
    static func favorPairBackward(
        _ dy: UnsafePointer<Float>, output y: UnsafePointer<Float>, into g: UnsafeMutablePointer<Float>, _ n: Int
    ) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        let rg = UnsafeRawPointer(dy), ry = UnsafeRawPointer(y), ro = UnsafeMutableRawPointer(g)
        while i + 8 <= n {
            let p =
                rg.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                * ry.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            let q =
                rg.loadUnaligned(fromByteOffset: (n + i) * 4, as: SIMD8<Float>.self)
                * ry.loadUnaligned(fromByteOffset: (n + i) * 4, as: SIMD8<Float>.self)
            ro.storeBytes(of: p - q, toByteOffset: i * 4, as: SIMD8<Float>.self)
            acc += p + q
            i += 8
        }
        var total = acc.sum()
        while i < n {
            let p = dy[i] * y[i], q = dy[n + i] * y[n + i]
            g[i] = p - q
            total += p + q
            i += 1
        }
        return total
    }

    /// dx[i] = dy[i] where x[i] > 0, else dy[i]·y[i] (ELU + 1's derivative is its output there).
    @inlinable
    static func eluPlusOneBackward(
        _ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, output y: UnsafePointer<Float>,
        into dx: UnsafeMutablePointer<Float>, _ n: Int
    ) {
        var i = 0
        let rg = UnsafeRawPointer(dy), rx = UnsafeRawPointer(x), ry = UnsafeRawPointer(y),
            rd = UnsafeMutableRawPointer(dx)
        while i + 8 <= n {
            let g = rg.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            var v = g * ry.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            v.replace(with: g, where: rx.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) .> 0)
            rd.storeBytes(of: v, toByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n {
            dx[i] = x[i] > 0 ? dy[i] : dy[i] * y[i]
            i += 1
        }
    }
}
