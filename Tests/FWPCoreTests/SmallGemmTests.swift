import Foundation
import CKernels
import Testing

@testable import FWPCore

/// The small product kernel (AVX-512 blocks where the CPU has them, AVX2/FMA otherwise or with
/// FWP_AVX512=0, which `make test` also runs) against a float64 triple loop written here: every
/// transpose combination, sizes around the 6 × 16 register block's edges, padded leading
/// dimensions, alpha/beta, and C's padding left untouched.
@Suite struct SmallGemmTests {
    typealias Case = ProductCase

    static func cases() -> [Case] {
        let sizes = [1, 2, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 70]
        var rng = FWPRandom(seed: 11)
        var out: [Case] = []
        for m in sizes {
            for n in sizes {
                let k = sizes[Int(rng.next() % UInt64(sizes.count))]
                let flags = Int(rng.next() % 4)
                let (alpha, beta): (Float, Float) = [(1, 0), (1, 1), (-1, 1), (-0.5, 2)][Int(rng.next() % 4)]
                out.append(
                    Case(
                        m: m, n: n, k: k, transposeA: flags & 1 != 0, transposeB: flags & 2 != 0, alpha: alpha,
                        beta: beta))
            }
        }
        return out
    }

    /// The AVX-512 blocks run exactly where the CPU has AVX-512 and FWP_AVX512 is not "0".
    @Test func avx512BlocksFollowTheCPUAndTheSwitch() {
        let off = ProcessInfo.processInfo.environment["FWP_AVX512"] == "0"
        #expect((fwp_small_sgemm_uses_avx512() != 0) == (BLAS.vectorLevel >= 3 && !off))
    }

    @Test(.enabled(if: BLAS.smallKernelSupported)) func smallKernelMatchesFloat64Reference() {
        var rng = FWPRandom(seed: 12)
        for c in Self.cases() {
            let worst = float64ProductError(c, &rng) { a, lda, b, ldb, out, ldc in
                BLAS.smallKernelGemm(
                    transposeA: c.transposeA, transposeB: c.transposeB, m: c.m, n: c.n, k: c.k, alpha: c.alpha, a: a,
                    lda: lda, b: b, ldb: ldb, beta: c.beta, c: out, ldc: ldc)
            }
            #expect(worst < 1e-6, "\(c): relative error \(worst)")
        }
    }

    /// C ← alpha·AB + beta·C_in with the addend elsewhere: the same as copying C_in into C and
    /// accumulating, on the small kernel and (past its limits) on OpenBLAS; C_in is not changed.
    /// α = ±1 with β = 1 is the kernel's path that starts its registers from C_in.
    @Test(
        arguments: [(16, 64, 16), (64, 64, 16), (5, 19, 3), (200, 130, 40)],
        [(-0.5, 2), (-1, 1), (1, 1)] as [(Float, Float)])
    func productWithSeparateAddend(shape: (Int, Int, Int), scales: (Float, Float)) {
        let (m, n, k) = shape
        let (alpha, beta) = scales
        var rng = FWPRandom(seed: UInt64(m * 1000 + n))
        let a = Tensor.normal(shape: [m, k], std: 1, using: &rng),
            b = Tensor.normal(shape: [k, n], std: 1, using: &rng)
        let cIn = Tensor.normal(shape: [m, n + 2], std: 1, using: &rng)  // padded rows
        var expected = [Float](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var acc = 0.0
                for p in 0..<k { acc += Double(a[i, p]) * Double(b[p, j]) }
                expected[i * n + j] = Float(Double(alpha) * acc + Double(beta) * Double(cIn[i, j]))
            }
        }
        var c = [Float](repeating: .nan, count: m * n)
        let before = cIn.storage
        a.withUnsafePointer { pa in
            b.withUnsafePointer { pb in
                cIn.withUnsafePointer { pci in
                    c.withUnsafeMutableBufferPointer {
                        BLAS.gemm(
                            transposeA: false, transposeB: false, m: m, n: n, k: k, alpha: alpha, a: pa, lda: k, b: pb,
                            ldb: n, beta: beta, cIn: pci, ldcIn: n + 2, c: $0.baseAddress!, ldc: n)
                    }
                }
            }
        }
        let worst = zip(c, expected).map { abs($0 - $1) / (1 + abs($1)) }.max()!
        #expect(worst < 1e-5, "\(m)×\(n)×\(k) α=\(alpha) β=\(beta): worst \(worst)")
        #expect(cIn.storage == before, "C_in was modified")
    }

    /// Sums of two to four products (mixed transposes, a subtracted term, a separate addend or C
    /// itself) against float64; a term past the small kernel's limits sends the whole sum down the
    /// product-by-product path, which must give the same result.
    @Test(arguments: [(2, false), (3, true), (4, false), (4, true)])
    func productSumsMatchFloat64(terms count: Int, largeTerm: Bool) {
        let m = 13, n = 37
        let ks = [16, largeTerm ? 150 : 64, 9, 32]
        let beta: Float = count == 4 ? 1 : 0.5  // β = 1: the registers start from C
        let flags = [(true, false), (false, true), (false, false), (true, true)]  // (transposeA, transposeB)
        var rng = FWPRandom(seed: UInt64(count * 10 + (largeTerm ? 1 : 0)))
        // op(A_t) is m × k (stored k × m when transposed), op(B_t) is k × n (stored n × k when transposed).
        let a = (0..<count).map { Tensor.normal(shape: [m * ks[$0]], std: 1, using: &rng) }
        let b = (0..<count).map { Tensor.normal(shape: [n * ks[$0]], std: 1, using: &rng) }
        let c0 = Tensor.normal(shape: [m * n], std: 1, using: &rng)
        func opA(_ t: Int, _ i: Int, _ p: Int) -> Double {
            Double(flags[t].0 ? a[t][p * m + i] : a[t][i * ks[t] + p])
        }
        func opB(_ t: Int, _ p: Int, _ j: Int) -> Double {
            Double(flags[t].1 ? b[t][j * ks[t] + p] : b[t][p * n + j])
        }
        var expected = [Float](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var acc = Double(beta) * Double(c0[i * n + j])
                for t in 0..<count {
                    var sum = 0.0
                    for p in 0..<ks[t] { sum += opA(t, i, p) * opB(t, p, j) }
                    acc += t == 2 ? -sum : sum
                }
                expected[i * n + j] = Float(acc)
            }
        }
        var c = c0.storage
        func ptr(_ x: Tensor) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: x.count)
            p.initialize(from: x.elements, count: x.count)
            return p
        }
        let pa = a.map(ptr), pb = b.map(ptr)
        defer { (pa + pb).forEach { $0.deallocate() } }
        let terms = (0..<count).map { t in
            BLAS.Term(
                transposeA: flags[t].0, transposeB: flags[t].1, k: ks[t], negate: t == 2, a: pa[t],
                lda: flags[t].0 ? m : ks[t], b: pb[t], ldb: flags[t].1 ? ks[t] : n)
        }
        c.withUnsafeMutableBufferPointer {
            BLAS.gemmSum(
                m: m, n: n, terms[0], terms[1], count > 2 ? terms[2] : nil, count > 3 ? terms[3] : nil, beta: beta,
                c: $0.baseAddress!, ldc: n)
        }
        let worst = zip(c, expected).map { abs($0 - $1) / (1 + abs($1)) }.max()!
        #expect(worst < 2e-5, "\(count) terms, large \(largeTerm): worst \(worst)")
    }

    /// Runs `move` from a rows × cols source (row stride cols + 3, padding −1) into a NaN-filled
    /// destination of `count` floats and checks that element (r, c) of the source, and nothing
    /// else, lands at `index(r, c)`.
    private func expectMoves(
        rows: Int, cols: Int, into count: Int, index: (Int, Int) -> Int,
        _ move: (UnsafePointer<Float>, Int, UnsafeMutablePointer<Float>) -> Void
    ) {
        let lds = cols + 3
        var src = [Float](repeating: 0, count: rows * lds)
        for r in 0..<rows { for c in 0..<lds { src[r * lds + c] = c < cols ? Float(r * 1000 + c) : -1 } }
        var dst = [Float](repeating: .nan, count: count)
        src.withUnsafeBufferPointer { ps in
            dst.withUnsafeMutableBufferPointer { move(ps.baseAddress!, lds, $0.baseAddress!) }
        }
        var expected = [Float](repeating: .nan, count: count)
        for r in 0..<rows { for c in 0..<cols { expected[index(r, c)] = Float(r * 1000 + c) } }
        for i in 0..<count {
            if expected[i].isNaN {
                #expect(dst[i].isNaN, "\(rows)×\(cols): padding at \(i) was written")
            } else {
                #expect(dst[i] == expected[i], "\(rows)×\(cols): element at \(i)")
            }
        }
    }

    @Test func transposeMovesEveryElementAndNothingElse() {
        // 16 × 16 tiles (AVX-512) with rows, columns or both left over, then 8 × 8 tiles and single elements.
        for (rows, cols) in [
            (1, 1), (3, 5), (8, 8), (9, 17), (16, 64), (64, 64), (24, 7), (16, 17), (47, 16), (33, 50), (37, 70),
        ] {
            let ldd = rows + 2
            expectMoves(rows: rows, cols: cols, into: cols * ldd, index: { r, c in c * ldd + r }) { src, lds, dst in
                BLAS.transpose(rows: rows, cols: cols, src, lds: lds, into: dst, ldd: ldd)
            }
        }
    }

    /// Widths around the 8- and 32-float blocks, strides wider than the rows on both sides.
    @Test func copyRowsMovesEveryElementAndNothingElse() {
        for (rows, width) in [(1, 1), (3, 7), (9, 8), (10, 32), (7, 37), (20, 64), (12, 70)] {
            let ldd = width + 3
            expectMoves(rows: rows, cols: width, into: rows * ldd, index: { r, c in r * ldd + c }) { src, lds, dst in
                fwp_copy_rows(src, lds, dst, ldd, rows, width)
            }
        }
    }

    @Test func dispatchAgreesWithOpenBLASOnEitherSideOfTheLimit() {
        // BLAS.gemm picks the small kernel or, past its limit, the dense kernel or OpenBLAS; either way
        // the product agrees with OpenBLAS.
        var rng = FWPRandom(seed: 13)
        for size in [64, BLAS.smallKernelLimit + 1] {
            #expect(BLAS.usesSmallKernel(transposeB: true, m: size, n: size, k: 40) == (BLAS.smallKernel && size == 64))
            let a = Tensor.normal(shape: [size, 40], std: 1, using: &rng)
            let b = Tensor.normal(shape: [size, 40], std: 1, using: &rng)
            let diff = dispatchDifferenceFromOpenBLAS(a, b)
            #expect(diff < 1e-4, "size \(size): max difference \(diff)")
        }
    }
}
