import Foundation
import CKernels
import Testing

@testable import FWPCore

/// The dense layers' product kernel (`fwp_dense_sgemm`) against a float64 triple loop written
/// here: every transpose combination, sizes around its 6-row blocks, 12-column slabs, 64-column
/// panels and 16-lane masks (AVX-512), its 16-row/column tiles and 32-step k-blocks (AMX), wide
/// and narrow C, inner dimensions around its 128-step slices (transposed A) and 8-column
/// transposes, padded leading dimensions, alpha/beta, and C's padding left untouched — on each
/// engine the CPU has (AVX-512 FMAs; AMX tiles where supported, chosen per thread). The kernel's
/// own tests run where the CPU has AVX-512; those of `BLAS.linear`, `BLAS.gatedProduct` and the
/// dispatch run everywhere (on their fallbacks where the kernel is off or missing).
@Suite struct DenseGemmTests {
    static let kernelSupported = fwp_dense_sgemm_supported() != 0
    static let amxSupported = fwp_dense_sgemm_amx_supported() != 0

    /// The dense kernel's engines on this CPU: AVX-512 FMAs, then AMX tiles where supported.
    static let engines: [Engine] = amxSupported ? [.avx512, .amx] : [.avx512]

    enum Engine: Int32, CustomStringConvertible, Sendable {
        case avx512 = 0
        case amx = 1
        var description: String { self == .amx ? "AMX" : "AVX-512" }

        /// Runs body with the calling thread's dense products on this engine (where the kernel
        /// runs at all), then returns the thread to the process's default.
        func run<T>(_ body: () throws -> T) rethrows -> T {
            fwp_dense_sgemm_set_amx(rawValue)
            defer { fwp_dense_sgemm_set_amx(-1) }
            return try body()
        }
    }

    typealias Case = ProductCase

    static func cases() -> [Case] {
        let rows = [1, 5, 6, 7, 11, 12, 13, 24, 37]
        let columns = [1, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 70, 130, 260]
        let depths = [1, 5, 64, 127, 128, 129, 257, 530]
        var rng = FWPRandom(seed: 21)
        var out: [Case] = []
        for m in rows {
            for n in columns {
                for flags in 0..<4 {
                    let k = depths[Int(rng.next() % UInt64(depths.count))]
                    let (alpha, beta): (Float, Float) = [(1, 0), (1, 1), (-1, 1), (-0.5, 2)][Int(rng.next() % 4)]
                    out.append(
                        Case(
                            m: m, n: n, k: k, transposeA: flags & 1 != 0, transposeB: flags & 2 != 0, alpha: alpha,
                            beta: beta))
                }
            }
        }
        return out
    }

    /// The worst error of one product on the dense kernel (`float64ProductError`).
    static func run(_ c: Case, _ rng: inout FWPRandom) -> Double {
        float64ProductError(c, &rng) { a, lda, b, ldb, out, ldc in
            fwp_dense_sgemm(
                c.transposeA ? 1 : 0, c.transposeB ? 1 : 0, Int32(c.m), Int32(c.n), Int32(c.k), c.alpha, a, Int32(lda),
                b,
                Int32(ldb), c.beta, out, Int32(ldc))
        }
    }

    @Test(.enabled(if: kernelSupported), arguments: engines) func matchesFloat64Reference(engine: Engine) {
        var rng = FWPRandom(seed: 22)
        engine.run {
            for c in Self.cases() {
                let worst = Self.run(c, &rng)
                #expect(worst < 1e-6, "\(engine) \(c): relative error \(worst)")
            }
        }
    }

    /// Outputs wider than one chunk of packed panels (512 KB: 256 columns at depth 512, 128 on
    /// AMX; 1,024 for weight gradients' 128-row slices) run in column chunks, and weight
    /// gradients with more than 512 KB of C in row chunks (480 rows at 130 columns); every
    /// orientation across the chunk edges, with padded strides.
    @Test(.enabled(if: kernelSupported), arguments: engines) func largeOutputsRunInChunks(engine: Engine) {
        var rng = FWPRandom(seed: 28)
        engine.run {
            for c in [
                Case(m: 40, n: 600, k: 512, transposeA: false, transposeB: true, alpha: 1, beta: 0),
                Case(m: 37, n: 530, k: 500, transposeA: false, transposeB: false, alpha: -0.5, beta: 2),
                Case(m: 13, n: 1100, k: 129, transposeA: true, transposeB: false, alpha: 1, beta: 1),
                Case(m: 21, n: 1090, k: 200, transposeA: true, transposeB: true, alpha: 2, beta: 0),
                Case(m: 1100, n: 130, k: 150, transposeA: true, transposeB: false, alpha: 1, beta: 1),
                Case(m: 1000, n: 140, k: 40, transposeA: true, transposeB: true, alpha: -1, beta: 0.5),
            ] {
                let worst = Self.run(c, &rng)
                #expect(worst < 1e-6, "\(engine) \(c): relative error \(worst)")
            }
        }
    }

    /// The AMX engine's three-part split keeps float32's accuracy: with one inner step, each
    /// element of C is a single product x·y of full 24-bit significands, which the six bf16
    /// products must give to within a few float32 rounding units (the three left out are below
    /// 2⁻²⁴ |xy|; each of the six additions rounds once). Keeping only the three largest products
    /// would leave errors near 2⁻¹⁶ |xy|, and plain bfloat16 near 2⁻⁸.
    @Test(.enabled(if: amxSupported)) func amxSplitKeepsFloat32Accuracy() {
        var rng = FWPRandom(seed: 27)
        let (m, n) = (48, 40)
        // Significands with every bit set somewhere, over a wide range of exponents.
        let a = (0..<m).map { _ in
            Float(rng.normal()) * Float(sign: .plus, exponent: Int(rng.next() % 40) - 20, significand: 1)
        }
        let b = (0..<n).map { _ in
            Float(rng.normal()) * Float(sign: .plus, exponent: Int(rng.next() % 40) - 20, significand: 1)
        }
        var c = [Float](repeating: .nan, count: m * n)
        Engine.amx.run { fwp_dense_sgemm(0, 0, Int32(m), Int32(n), 1, 1, a, 1, b, Int32(n), 0, &c, Int32(n)) }
        var worst = 0.0
        for i in 0..<m {
            for j in 0..<n {
                let exact = Double(a[i]) * Double(b[j])
                worst = max(worst, abs(Double(c[i * n + j]) - exact) / abs(exact))
            }
        }
        #expect(worst <= 8 * 0x1p-24, "worst relative error \(worst) (\(worst / 0x1p-24) float32 rounding units)")
    }

    /// A NaN or infinity in an operand reaches C (as NaN on AMX, whose split subtracts ∞ − ∞),
    /// and a product with no inner steps leaves beta · C.
    @Test(.enabled(if: kernelSupported), arguments: engines) func specialValues(engine: Engine) {
        let (m, n, k) = (40, 36, 20)
        for poison in [Float.nan, .infinity] {
            var a = [Float](repeating: 0.5, count: m * k)
            a[3 * k + 7] = poison
            let b = [Float](repeating: 0.25, count: k * n)
            var c = [Float](repeating: .nan, count: m * n)
            engine.run {
                fwp_dense_sgemm(0, 0, Int32(m), Int32(n), Int32(k), 1, a, Int32(k), b, Int32(n), 0, &c, Int32(n))
            }
            for i in 0..<m {
                for j in 0..<n {
                    let v = c[i * n + j]
                    if i == 3 {
                        #expect(!v.isFinite, "\(engine): row 3 holds \(poison) × 0.25 but C(3, \(j)) = \(v)")
                    } else {
                        #expect(v == 0.5 * 0.25 * Float(k), "\(engine): C(\(i), \(j)) = \(v)")
                    }
                }
            }
        }
        var c = [Float](repeating: 3, count: m * n)
        engine.run {
            fwp_dense_sgemm(
                0, 0, Int32(m), Int32(n), 0, 1, [Float](repeating: 1, count: m), 1, [Float](repeating: 1, count: n),
                Int32(n), 0.5, &c, Int32(n))
        }
        #expect(c.allSatisfy { $0 == 1.5 }, "\(engine): k = 0 must leave beta · C")
    }

    /// The model's own shapes (a shard of 1,024 rows; D = 128, qkv + β = 388, FF 512) in the three
    /// orientations the layers use: forward x Wᵀ, dX = dY W, dW += dYᵀ x.
    @Test(.enabled(if: kernelSupported), arguments: engines, [(128, 388), (128, 512), (512, 128)])
    func layerShapesMatchFloat64(engine: Engine, features: (Int, Int)) {
        var rng = FWPRandom(seed: 23)
        let (inF, outF) = features
        for c in [
            Case(m: 1024, n: outF, k: inF, transposeA: false, transposeB: true, alpha: 1, beta: 0),
            Case(m: 1024, n: inF, k: outF, transposeA: false, transposeB: false, alpha: 1, beta: 0),
            Case(m: outF, n: inF, k: 1024, transposeA: true, transposeB: false, alpha: 1, beta: 1),
        ] {
            let worst = engine.run { Self.run(c, &rng) }
            #expect(worst < 1e-6, "\(engine) \(c): relative error \(worst)")
        }
    }

    /// BLAS.linear (the dense kernel's bias and ReLU epilogue, or the product followed by its own pass)
    /// against float64: y = [y +] x Wᵀ + b, then ReLU; both sizes the dense kernel takes and not,
    /// and one it splits into column chunks (600 columns at depth 512).
    @Test(
        arguments: [(37, 70, 45), (200, 388, 128), (5, 20, 7), (40, 600, 512)],
        [(false, false), (true, false), (false, true), (true, true)])
    func linearAddsBiasAndReLU(shape: (Int, Int, Int), flags: (Bool, Bool)) {
        for engine in Self.engines { Self.checkLinear(engine: engine, shape: shape, flags: flags) }
    }

    static func checkLinear(engine: Engine, shape: (Int, Int, Int), flags: (Bool, Bool)) {
        let (m, n, k) = shape
        let (relu, accumulate) = flags
        var rng = FWPRandom(seed: 25)
        let x = Tensor.normal(shape: [m, k], std: 1, using: &rng)
        let w = Tensor.normal(shape: [n, k], std: 1, using: &rng)
        let bias = Tensor.normal(shape: [n], std: 1, using: &rng)
        let y0 = Tensor.normal(shape: [m, n], std: 1, using: &rng)
        var y = accumulate ? y0 : Tensor(shape: [m, n], repeating: .nan)
        engine.run { BLAS.linear(x, weight: w, bias: bias, relu: relu, accumulate: accumulate, into: &y) }
        var worst = 0.0
        for i in 0..<m {
            for j in 0..<n {
                var sum = Double(bias.storage[j]) + (accumulate ? Double(y0.storage[i * n + j]) : 0)
                var magnitude = abs(sum)
                for p in 0..<k {
                    let t = Double(x.storage[i * k + p]) * Double(w.storage[j * k + p])
                    sum += t
                    magnitude += abs(t)
                }
                let expected = relu ? max(sum, 0) : sum
                worst = max(worst, abs(Double(y.storage[i * n + j]) - expected) / (magnitude + 1e-30))
            }
        }
        #expect(worst < 1e-6, "\(engine) \(m)×\(n)×\(k) relu=\(relu) accumulate=\(accumulate): relative error \(worst)")
    }

    /// The gated product (a ReLU's backward with its bias gradient) against float64: dh = (dy W) ⊙
    /// [h > 0], zero exactly where h ≤ 0 (h has exact zeros), and the column sums added to what
    /// was there; a narrow (70 columns) and a wide (512) output, and column chunks (600 columns at
    /// depth 512); with FWP_DENSE_GEMM=0, the fallback.
    @Test(arguments: [(37, 70, 45), (200, 512, 128), (40, 600, 512)])
    func gatedProductMatchesFloat64(shape: (Int, Int, Int)) {
        for engine in Self.engines { Self.checkGated(engine: engine, shape: shape) }
    }

    static func checkGated(engine: Engine, shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        var rng = FWPRandom(seed: 26)
        let dy = Tensor.normal(shape: [m, k], std: 1, using: &rng)
        let w = Tensor.normal(shape: [k, n], std: 1, using: &rng)
        var gate = Tensor.normal(shape: [m, n], std: 1, using: &rng)
        for i in stride(from: 0, to: gate.count, by: 7) { gate.storage[i] = 0 }
        let sums0 = Tensor.normal(shape: [n], std: 1, using: &rng)
        var dh = Tensor(shape: [m, n], repeating: .nan), sums = sums0
        engine.run { BLAS.gatedProduct(dy, weight: w, gate: gate, into: &dh, columnSums: &sums) }
        var worst = 0.0, worstSum = 0.0
        for j in 0..<n {
            var columnSum = Double(sums0.storage[j]), columnMagnitude = abs(columnSum)
            for i in 0..<m {
                var sum = 0.0, magnitude = 0.0
                for p in 0..<k {
                    let t = Double(dy.storage[i * k + p]) * Double(w.storage[p * n + j])
                    sum += t
                    magnitude += abs(t)
                }
                let open = gate.storage[i * n + j] > 0
                let got = Double(dh.storage[i * n + j])
                if open {
                    worst = max(worst, abs(got - sum) / (magnitude + 1e-30))
                    columnSum += sum
                    columnMagnitude += magnitude
                } else {
                    #expect(got == 0, "\(engine) (\(i), \(j)): \(got) where the gate is closed")
                }
            }
            worstSum = max(worstSum, abs(Double(sums.storage[j]) - columnSum) / (columnMagnitude + 1e-30))
        }
        #expect(worst < 1e-6, "\(engine) \(shape): relative error \(worst)")
        #expect(worstSum < 1e-6, "\(engine) \(shape): column sums' relative error \(worstSum)")
    }

    /// Each thread's panel buffer is freed when the thread exits: a hundred short-lived threads,
    /// each packing a 4 MB operand, leave the resident size about where it was (400 MB more if
    /// the buffers leaked; glibc returns blocks this large to the system when they are freed).
    @Test(.enabled(if: kernelSupported)) func panelBuffersDoNotOutliveTheirThreads() {
        func residentBytes() -> Int {
            let fields = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8))?.split(separator: " ") ?? []
            return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
        }
        let (m, n, k) = (32, 1024, 1024)
        let a = [Float](repeating: 1, count: m * k), b = [Float](repeating: 1, count: k * n)
        func runOnNewThread() {
            let done = DispatchSemaphore(value: 0)
            let thread = Thread {
                var c = [Float](repeating: 0, count: m * n)
                fwp_dense_sgemm(0, 0, Int32(m), Int32(n), Int32(k), 1, a, Int32(k), b, Int32(n), 0, &c, Int32(n))
                precondition(c[0] == Float(k))
                done.signal()
            }
            thread.start()
            done.wait()
            usleep(2000)  // the signal comes before the thread's exit and its key destructors
        }
        runOnNewThread()
        let before = residentBytes()
        for _ in 0..<100 { runOnNewThread() }
        let grown = residentBytes() - before
        #expect(grown < 100 << 20, "resident size grew by \(grown >> 20) MB over 100 threads")
    }

    /// BLAS.gemm sends the dense layers' products here exactly when the kernel is on and the shape
    /// qualifies, and the result is OpenBLAS's to float32 rounding either way.
    @Test func dispatchAgreesWithOpenBLAS() {
        var rng = FWPRandom(seed: 24)
        let off =
            ProcessInfo.processInfo.environment["FWP_DENSE_GEMM"] == "0"
            || ProcessInfo.processInfo.environment["FWP_AVX512"] == "0"
            || !Self.kernelSupported
        #expect(BLAS.denseKernel == !off)
        // AMX only on request (FWP_AMX=1), where the CPU and OS provide it.
        #expect(BLAS.denseAMX == (!off && Self.amxSupported && ProcessInfo.processInfo.environment["FWP_AMX"] == "1"))
        #expect(BLAS.kernelNote.contains("fwp's AMX kernel") == BLAS.denseAMX, "\(BLAS.kernelNote)")
        // Deep products with A in place stay on OpenBLAS; weight gradients (Aᵀ) slice any depth.
        #expect(!BLAS.usesDenseKernel(transposeA: false, m: 1024, n: 1024, k: BLAS.denseKernelMaximumDepth + 1))
        #expect(BLAS.usesDenseKernel(transposeA: true, m: 1024, n: 1024, k: 4096) == !off)
        for (m, n, k) in [(200, 150, 140), (BLAS.denseKernelMinimumRows - 1, 150, 140)] {
            #expect(
                BLAS.usesDenseKernel(transposeA: false, m: m, n: n, k: k) == (!off && m >= BLAS.denseKernelMinimumRows))
            let a = Tensor.normal(shape: [m, k], std: 1, using: &rng)
            let b = Tensor.normal(shape: [n, k], std: 1, using: &rng)
            let diff = dispatchDifferenceFromOpenBLAS(a, b)
            #expect(diff < 1e-4, "\(m)×\(n)×\(k): max difference \(diff)")
        }
    }
}
