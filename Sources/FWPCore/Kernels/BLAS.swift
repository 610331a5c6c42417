import Foundation
import CBLAS
import CKernels

/// The single boundary between FWPCore and its matrix-product kernels: OpenBLAS, the small
/// AVX2/FMA kernel in CKernels for products of a few kilobytes, and (with AVX-512) CKernels'
/// dense kernel for the model's layer-sized products.
///
/// Every matrix product in the core goes through `gemm`, which checks its shapes and takes
/// transpose flags instead of transposed copies. Gradients accumulate by passing `beta: 1`.
public enum BLAS {
    /// Sets OpenBLAS's worker-thread count for the whole process.
    public static func setThreads(_ count: Int) {
        precondition(count >= 1, "BLAS thread count must be at least 1")
        openblas_set_num_threads(Int32(count))
    }

    /// Re-executes the program, once, with the OpenBLAS settings FWPCore wants; executables call
    /// it first thing. Two settings are made through the environment, because OpenBLAS reads
    /// them when the library loads, before `main`:
    ///
    /// - OPENBLAS_NUM_THREADS=1. OpenBLAS creates its worker threads at load time (default: one
    ///   per core). FWPCore runs every BLAS product on the calling thread (`setThreads(1)`;
    ///   parallelism comes from its own loops), yet those workers spin (sched_yield) for a while
    ///   after start and take a core from the compute threads.
    /// - OPENBLAS_CORETYPE, only when OpenBLAS's own CPU detection fell back to pre-AVX2 kernels
    ///   on a CPU with AVX2 or AVX-512 (`coreTypeOverride`). A library older than the CPU does
    ///   that: Debian 12's OpenBLAS 0.3.21 takes a 2023 Xeon (family 6, model 207) for a
    ///   Prescott and multiplies with SSE3 instead of its SkylakeX (AVX-512) kernels.
    ///
    /// A variable already set in the environment is left as it is (the user's choice wins).
    /// When neither needs setting, or the re-execution fails, it returns and nothing changes.
    /// The process keeps its id; `blasCoreNote` says afterwards what was chosen and why.
    public static func relaunchIfNeeded() {
        #if os(Linux)
            let setThreads = getenv("OPENBLAS_NUM_THREADS") == nil
            let coreType =
                getenv("OPENBLAS_CORETYPE") == nil
                ? coreTypeOverride(detected: coreName, vectorLevel: vectorLevel) : nil
            guard setThreads || coreType != nil else { return }
            // The program's own path, not /proc/self/exe: the kernel names a process after the
            // file it executes, and ps, pgrep and the journal should still see fwpd, not "exe".
            var path = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let length = readlink("/proc/self/exe", &path, path.count - 1)
            guard length > 0 else { return }
            if setThreads { setenv("OPENBLAS_NUM_THREADS", "1", 1) }
            if let coreType {
                setenv("OPENBLAS_CORETYPE", coreType, 1)
                setenv(detectedCoreVariable, coreName, 1)
            }
            execv(path, CommandLine.unsafeArgv)
        #endif
    }

    /// Where `relaunchIfNeeded` leaves the core name OpenBLAS detected before it was overridden.
    static let detectedCoreVariable = "FWP_OPENBLAS_DETECTED_CORE"

    /// OpenBLAS cores without AVX2 kernels: on a CPU with AVX2 these mean its detection fell
    /// back (an unknown model), not that the CPU is old.
    static let preAVX2Cores: Set<String> = [
        "katmai", "coppermine", "northwood", "prescott", "banias", "core2", "penryn", "dunnington", "nehalem",
        "atom", "sandybridge", "opteron", "opteron_sse3", "barcelona", "bobcat", "bulldozer", "piledriver",
        "steamroller", "nano", "unknown",
    ]

    /// The OPENBLAS_CORETYPE to ask for when OpenBLAS detected `detected` on a CPU whose widest
    /// vector extension is `vectorLevel` (`fwp_cpu_vector_level`: 3 AVX-512, 2 AVX2 + FMA), or
    /// nil to keep OpenBLAS's choice. Only a fallback to a pre-AVX2 core is overridden: SkylakeX
    /// (AVX-512 kernels) where AVX-512 is there, Haswell (AVX2) otherwise.
    public static func coreTypeOverride(detected: String, vectorLevel: Int) -> String? {
        guard preAVX2Cores.contains(detected.lowercased()) else { return nil }
        switch vectorLevel {
        case 3...: return "SkylakeX"
        case 2: return "Haswell"
        default: return nil
        }
    }

    /// The kernel family OpenBLAS runs (Haswell, SkylakeX, Zen, Prescott, …).
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// The CPU's widest vector extension (`fwp_cpu_vector_level`).
    public static var vectorLevel: Int { KernelDispatch.vectorLevel }

    /// One line for logs: OpenBLAS's kernel family, and whether `relaunchIfNeeded` chose it.
    public static var blasCoreNote: String {
        let core = coreName
        if let detected = getenv(detectedCoreVariable).map({ String(cString: $0) }),
            detected.lowercased() != core.lowercased()
        {
            return "OpenBLAS \(core) kernels (its CPU detection gave \(detected), which lacks this CPU's vector units; "
                + "set OPENBLAS_CORETYPE to choose)"
        }
        return "OpenBLAS \(core) kernels"
    }

    /// One line for logs: which kernels run the products (`blasCoreNote`, and ours where they are on).
    public static var kernelNote: String {
        var own: [String] = []
        if denseKernel {
            if denseAMX {
                own.append("layer products on fwp's AMX kernel (bf16x6, FWP_AMX=1)")
            } else if KernelDispatch.amxRequested {
                own.append(
                    "layer products on fwp's AVX-512 kernel (FWP_AMX=1 asked for AMX, which this CPU or OS does not provide)"
                )
            } else {
                own.append("layer products on fwp's AVX-512 kernel")
            }
        }
        if smallKernel { own.append("small products on fwp's \(KernelDispatch.avx512 ? "AVX-512" : "AVX2") kernel") }
        return own.isEmpty ? blasCoreNote : "\(own.joined(separator: ", ")), the rest on \(blasCoreNote)"
    }

    /// OpenBLAS's current worker-thread count.
    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// OpenBLAS's build description (version, target kernel).
    public static var configuration: String { String(cString: openblas_get_config()) }

    /// Whether small products go to FWPCore's own AVX2/FMA kernel (CKernels) instead of OpenBLAS:
    /// true on CPUs with AVX2 and FMA unless the environment sets `FWP_SMALL_GEMM=0`.
    public static let smallKernel: Bool = KernelDispatch.smallGemm

    /// Whether this CPU can run the small kernel at all (AVX2 and FMA), whatever FWP_SMALL_GEMM says.
    public static let smallKernelSupported: Bool = KernelDispatch.smallGemmSupported

    /// The largest dimension sent to the small kernel, and the largest m·n·k: above them
    /// OpenBLAS's packing pays for itself (`fwp-bench --only smallgemm` compares the two).
    public static let smallKernelLimit = 128
    public static let smallKernelWork = 64 * 64 * 128

    /// Whether the dense layers' products go to FWPCore's own AVX-512 kernel (`fwp_dense_sgemm`)
    /// instead of OpenBLAS: true on CPUs with AVX-512 unless the environment sets
    /// `FWP_DENSE_GEMM=0` (or `FWP_AVX512=0`, which turns off every AVX-512 kernel).
    public static let denseKernel: Bool = KernelDispatch.denseGemm

    /// Whether the dense kernel runs its products on AMX tiles (`FWP_AMX=1` on a CPU and OS that
    /// provide them; CKernels' `fwp_dense_sgemm_amx_supported`): float32 accuracy from six bfloat16
    /// products of each operand's exact three-part split. Worker threads follow the process default.
    public static var denseAMX: Bool { denseKernel && fwp_dense_sgemm_uses_amx() != 0 }

    /// Products the dense kernel takes (past the small kernel's): at least `denseKernelMinimumRows`
    /// rows of C and 16 columns, so that packing op(B) pays for itself, and, when op(A) is not
    /// transposed (op(B) is then packed whole), an inner dimension of at most
    /// `denseKernelMaximumDepth`: the model's layers have 128–512, and at large squares such as
    /// 1024³ OpenBLAS is faster (`fwp-bench --only sgemm` compares).
    public static let denseKernelMinimumRows = 32
    public static let denseKernelMaximumDepth = 512

    @usableFromInline
    static func usesDenseKernel(transposeA: Bool, m: Int, n: Int, k: Int) -> Bool {
        denseKernel && m >= denseKernelMinimumRows && n >= 16 && (transposeA || k <= denseKernelMaximumDepth)
    }

    @usableFromInline
    static func usesSmallKernel(transposeB: Bool, m: Int, n: Int, k: Int, limit: Int = smallKernelLimit) -> Bool {
        smallKernel && m <= limit && n <= limit && k <= limit
            && m * n * k <= smallKernelWork && (!transposeB || n * k <= Int(FWP_SMALL_SGEMM_MAX_BT))
    }

    /// C ← alpha · op(A) · op(B) + beta · C on raw row-major memory, op = transpose when flagged.
    ///
    /// `m × k` is op(A), `k × n` is op(B), `m × n` is C; leading dimensions are row strides.
    /// Products within `smallKernelLimit` and `smallKernelWork` run on the small kernel when it
    /// is enabled, those `usesDenseKernel` accepts on the dense kernel, the rest on OpenBLAS.
    /// With `cIn` the addend is read from there instead (C ← alpha · op(A) · op(B) + beta · C_in;
    /// row stride `ldcIn`, not overlapping C), which saves copying it into C first: the small
    /// kernel reads it in place, for the others it is copied into C and the product accumulated
    /// there. `smallLimit` raises the largest dimension the small kernel takes (the work limit
    /// stays) for callers whose products run faster there.
    @inlinable
    public static func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, cIn: UnsafePointer<Float>? = nil, ldcIn: Int = 0, c: UnsafeMutablePointer<Float>, ldc: Int,
        smallLimit: Int = smallKernelLimit
    ) {
        if m == 0 || n == 0 { return }
        precondition(cIn == nil || ldcIn >= n, "bad leading dimension")
        if k > 0 {
            precondition(
                lda >= (transposeA ? m : k) && ldb >= (transposeB ? k : n) && ldc >= n, "bad leading dimension")
            if usesSmallKernel(transposeB: transposeB, m: m, n: n, k: k, limit: smallLimit) {
                runSmallKernel(
                    transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                    b: b, ldb: ldb, beta: beta, cIn: cIn, ldcIn: ldcIn, c: c, ldc: ldc)
                return
            }
        }
        if let cIn { for i in 0..<m { (c + i * ldc).update(from: cIn + i * ldcIn, count: n) } }
        if k > 0 && usesDenseKernel(transposeA: transposeA, m: m, n: n, k: k) {
            fwp_dense_sgemm(
                transposeA ? 1 : 0, transposeB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b,
                Int32(ldb), beta, c, Int32(ldc))
            return
        }
        if k == 0 {
            // BLAS would only scale C; do that without calling it.
            for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] } }
            return
        }
        openBLASGemm(
            transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b,
            ldb: ldb, beta: beta, c: c, ldc: ldc)
    }

    /// One term ± op(A) · op(B) of `gemmSum`: op(A) is m × k, op(B) is k × n.
    public struct Term {
        public var transposeA: Bool, transposeB: Bool
        public var k: Int
        public var negate: Bool
        public var a: UnsafePointer<Float>, lda: Int
        public var b: UnsafePointer<Float>, ldb: Int

        public init(
            transposeA: Bool = false, transposeB: Bool = false, k: Int, negate: Bool = false, a: UnsafePointer<Float>,
            lda: Int, b: UnsafePointer<Float>, ldb: Int
        ) {
            (self.transposeA, self.transposeB, self.k, self.negate) = (transposeA, transposeB, k, negate)
            (self.a, self.lda, self.b, self.ldb) = (a, lda, b, ldb)
        }

        var kernelTerm: fwp_gemm_term {
            fwp_gemm_term(
                transpose_a: transposeA ? 1 : 0, transpose_b: transposeB ? 1 : 0, k: Int32(k), negate: negate ? 1 : 0,
                a: a, lda: Int32(lda), b: b, ldb: Int32(ldb))
        }
    }

    /// C ← Σ ±op(Aᵢ) · op(Bᵢ) + beta · C_in for two to four terms (C_in = C unless `cIn` is given,
    /// as in `gemm`). On the small kernel every register block of C accumulates all terms before
    /// it is stored, so C is loaded and stored once instead of once per term; otherwise (or when
    /// a term is too large for it) the terms are products accumulated one after another.
    /// With `alpha`, C ← alpha · Σ ±op(Aᵢ) · op(Bᵢ) + beta · C_in (on the small kernel, alpha times
    /// the block's sum, rounded once).
    public static func gemmSum(
        m: Int, n: Int, _ t0: Term, _ t1: Term, _ t2: Term? = nil, _ t3: Term? = nil, alpha: Float = 1, beta: Float,
        cIn: UnsafePointer<Float>? = nil, ldcIn: Int = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        let count = t3 != nil ? 4 : t2 != nil ? 3 : 2
        precondition(t3 == nil || t2 != nil, "terms must be given in order")
        precondition(ldc >= n && (cIn == nil || ldcIn >= n), "bad leading dimension")
        var terms = (t0, t1, t2 ?? t1, t3 ?? t1)
        let fits = withUnsafeBytes(of: &terms) { raw -> Bool in
            let ts = raw.bindMemory(to: Term.self)
            var transposed = 0
            for t in ts.prefix(count) {
                precondition(
                    t.lda >= (t.transposeA ? m : t.k) && t.ldb >= (t.transposeB ? t.k : n), "bad leading dimension")
                if t.transposeB { transposed += n * t.k }
                if t.k == 0 || !usesSmallKernel(transposeB: false, m: m, n: n, k: t.k) { return false }
            }
            return transposed <= Int(FWP_SMALL_SGEMM_MAX_BT)
        }
        if fits {
            var kernelTerms = (t0.kernelTerm, t1.kernelTerm, (t2 ?? t1).kernelTerm, (t3 ?? t1).kernelTerm)
            withUnsafePointer(to: &kernelTerms) { p in
                p.withMemoryRebound(to: fwp_gemm_term.self, capacity: 4) { pt in
                    fwp_small_sgemm_sum(
                        Int32(m), Int32(n), Int32(count), pt, alpha, beta, cIn ?? UnsafePointer(c),
                        Int32(cIn == nil ? ldc : ldcIn), c, Int32(ldc))
                }
            }
            return
        }
        for (i, t) in [t0, t1, t2, t3].prefix(count).enumerated() {
            let term = t!
            gemm(
                transposeA: term.transposeA, transposeB: term.transposeB, m: m, n: n, k: term.k,
                alpha: term.negate ? -alpha : alpha, a: term.a, lda: term.lda, b: term.b, ldb: term.ldb,
                beta: i == 0 ? beta : 1, cIn: i == 0 ? cIn : nil, ldcIn: i == 0 ? ldcIn : 0, c: c, ldc: ldc)
        }
    }

    /// The same product, always on the small kernel (any size; for benchmarks and tests).
    /// Requires `fwp_small_sgemm_supported()`; with transposeB, n · k ≤ FWP_SMALL_SGEMM_MAX_BT.
    public static func smallKernelGemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        precondition(smallKernelSupported, "the small kernel needs AVX2 and FMA")
        precondition(!transposeB || n * k <= Int(FWP_SMALL_SGEMM_MAX_BT), "transposed B too large for the small kernel")
        precondition(m > 0 && n > 0 && k > 0)
        runSmallKernel(
            transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b,
            ldb: ldb, beta: beta, c: c, ldc: ldc)
    }

    /// dst (cols × rows, row stride ldd) ← srcᵀ for src (rows × cols, row stride lds): for an operand
    /// that several products would otherwise each transpose (the small kernel transposes B per call).
    /// Through 8 × 8 register tiles when the small kernel is on, a plain loop otherwise.
    public static func transpose(
        rows: Int, cols: Int, _ src: UnsafePointer<Float>, lds: Int, into dst: UnsafeMutablePointer<Float>, ldd: Int
    ) {
        precondition(rows >= 0 && cols >= 0 && lds >= cols && ldd >= rows, "bad transpose shape")
        if smallKernel {
            fwp_transpose(Int32(rows), Int32(cols), src, Int32(lds), dst, Int32(ldd))
        } else {
            for r in 0..<rows { for c in 0..<cols { dst[c * ldd + r] = src[r * lds + c] } }
        }
    }

    /// The call into CKernels shared by `gemm` and `smallKernelGemm`; callers have checked
    /// the sizes. The addend is read from `cIn` when given, from C itself otherwise.
    @usableFromInline
    static func runSmallKernel(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, cIn: UnsafePointer<Float>? = nil, ldcIn: Int = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        fwp_small_sgemm_add(
            transposeA ? 1 : 0, transposeB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b,
            Int32(ldb), beta, cIn ?? UnsafePointer(c), Int32(cIn == nil ? ldc : ldcIn), c, Int32(ldc))
    }

    /// The same product, always through OpenBLAS (the reference the small kernel is tested against).
    @inlinable
    public static func openBLASGemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        cblas_sgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// y ← alpha · op(A) · x for A of `rows` × `columns` (row stride `lda`), through OpenBLAS:
    /// op(A) = A takes x of `columns` and writes `rows`, op(A) = Aᵀ the other way round.
    @inlinable
    public static func gemv(
        transpose: Bool, rows: Int, columns: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
    ) {
        cblas_sgemv(
            CblasRowMajor, transpose ? CblasTrans : CblasNoTrans, Int32(rows), Int32(columns), alpha, a, Int32(lda),
            x, 1, 0, y, 1)
    }

    /// 0 ..< count cut at multiples of 64 into pieces of at least 256, at most two per thread
    /// (the last takes the remainder), run over `threads`; the whole at once when there is one
    /// thread or too little to cut.
    static func forEachPiece(_ count: Int, threads: ComputeThreads, _ body: (Range<Int>) -> Void) {
        let units = count / 64
        let pieces = threads.count <= 1 ? 1 : min(2 * threads.count, units / 4)
        guard pieces > 1 else { return body(0..<count) }
        threads.forEach(pieces) { i in
            body(((i * units / pieces) * 64)..<(i == pieces - 1 ? count : ((i + 1) * units / pieces) * 64))
        }
    }

    /// Rows 0 ..< m of a product's output cut by `forEachPiece` when the product runs on the dense
    /// kernel, whose arithmetic for an output element does not depend on the rows around it: the
    /// result then does not depend on the thread count. (Pieces have at least 256 rows, past the
    /// small kernel's limit, so the dense kernel takes every piece too. OpenBLAS picks its paths by
    /// size, and cut products came out different in the last bits.) The whole otherwise. For the
    /// dense layers' products when a training shard has threads to spare (a batch of one sequence).
    static func forEachRowPiece(
        _ m: Int, n: Int, k: Int, transposeA: Bool = false, transposeB: Bool = false, threads: ComputeThreads,
        _ body: (Range<Int>) -> Void
    ) {
        let cut = usesDenseKernel(transposeA: transposeA, m: m, n: n, k: k)
        forEachPiece(m, threads: cut ? threads : ComputeThreads(1), body)
    }

    /// C ← alpha · op(A) · op(B) + beta · C for rank-2 tensors, with shape checks; C's rows cut
    /// over `threads` (`forEachRowPiece`).
    public static func gemm(
        _ a: Tensor, transposeA: Bool = false, _ b: Tensor, transposeB: Bool = false,
        alpha: Float = 1, beta: Float = 0, into c: inout Tensor, threads: ComputeThreads = ComputeThreads(1)
    ) {
        let (ar, ac) = (a.rows, a.columns)
        let (br, bc) = (b.rows, b.columns)
        let m = transposeA ? ac : ar
        let k = transposeA ? ar : ac
        let kb = transposeB ? bc : br
        let n = transposeB ? br : bc
        precondition(k == kb, "gemm: inner dimensions differ: op(A) is \(m)×\(k), op(B) is \(kb)×\(n)")
        precondition(c.rows == m && c.columns == n, "gemm: C is \(c.rows)×\(c.columns), expected \(m)×\(n)")
        a.withUnsafePointer { pa in
            b.withUnsafePointer { pb in
                c.withUnsafeMutablePointer { pc in
                    forEachRowPiece(m, n: n, k: k, transposeA: transposeA, transposeB: transposeB, threads: threads) {
                        r in
                        gemm(
                            transposeA: transposeA, transposeB: transposeB, m: r.count, n: n, k: k, alpha: alpha,
                            a: pa + (transposeA ? r.lowerBound : r.lowerBound * ac), lda: ac, b: pb, ldb: bc,
                            beta: beta, c: pc + r.lowerBound * n, ldc: n)
                    }
                }
            }
        }
    }

    /// y ← x Wᵀ + bias (y + x Wᵀ + bias with `accumulate`), then ReLU when asked: a dense layer's
    /// forward product for x of N × in, W of out × in, y of N × out. The dense kernel adds the bias
    /// and applies ReLU while it writes y; otherwise the product runs through `gemm` and a second
    /// pass does the rest.
    public static func linear(
        _ x: Tensor, weight w: Tensor, bias: Tensor?, relu: Bool = false, accumulate: Bool = false,
        into y: inout Tensor,
        threads: ComputeThreads = ComputeThreads(1)
    ) {
        let (m, k, n) = (x.rows, x.columns, w.rows)
        precondition(w.columns == k, "linear: input has \(k) features, the weight expects \(w.columns)")
        precondition(y.rows == m && y.columns == n, "linear: output is \(y.rows)×\(y.columns), expected \(m)×\(n)")
        precondition(bias.map { $0.count == n } ?? true, "linear: bias has \(bias?.count ?? 0) entries, expected \(n)")
        let beta: Float = accumulate ? 1 : 0
        let dense =
            k > 0 && m > 0 && n > 0 && usesDenseKernel(transposeA: false, m: m, n: n, k: k)
            && !usesSmallKernel(transposeB: true, m: m, n: n, k: k)
        x.withUnsafePointer { px0 in
            w.withUnsafePointer { pw in
                y.withUnsafeMutablePointer { py0 in
                    func run(_ pb: UnsafePointer<Float>?, rows: Range<Int>) {
                        let m = rows.count, px = px0 + rows.lowerBound * k, py = py0 + rows.lowerBound * n
                        if dense {
                            fwp_dense_sgemm_bias(
                                0, 1, Int32(m), Int32(n), Int32(k), 1, px, Int32(k), pw, Int32(k), beta, py, Int32(n),
                                pb,
                                relu ? 1 : 0)
                            return
                        }
                        gemm(
                            transposeA: false, transposeB: true, m: m, n: n, k: k, a: px, lda: k, b: pw, ldb: k,
                            beta: beta,
                            c: py, ldc: n)
                        switch (pb, relu) {
                        case (let pb?, true): Vec.addBiasRelu(py, bias: pb, rows: m, n)
                        case (let pb?, false): for r in 0..<m { Vec.axpy(1, pb, py + r * n, n) }
                        case (nil, true): for i in 0..<(m * n) { py[i] = max(py[i], 0) }
                        case (nil, false): break
                        }
                    }
                    func pieces(_ pb: UnsafePointer<Float>?) {
                        forEachRowPiece(m, n: n, k: k, transposeB: true, threads: threads) { run(pb, rows: $0) }
                    }
                    if let bias { bias.withUnsafePointer { pieces($0) } } else { pieces(nil) }
                }
            }
        }
    }

    /// dh ← (dy · W) ⊙ [gate > 0] and columnSums[j] += Σᵢ dh[i, j] (dy N × k, W k × n, gate and
    /// dh N × n): a ReLU's backward and its bias gradient in the dense kernel's one pass over dh
    /// where it takes the product (`usesDenseKernel`), otherwise the product and then one pass
    /// (the AVX2 C kernel with `native`, a Swift loop without).
    /// With `threads`, where the dense kernel runs, the columns of dh (and their sums) are cut
    /// into pieces of at least 256 (each column's arithmetic unchanged).
    public static func gatedProduct(
        _ dy: Tensor, weight w: Tensor, gate: Tensor, into dh: inout Tensor, columnSums: inout Tensor,
        native: Bool = VectorKernels.enabled, threads: ComputeThreads = ComputeThreads(1)
    ) {
        let (m, k, n) = (dy.rows, dy.columns, w.columns)
        precondition(w.rows == k, "gatedProduct: dy has \(k) columns, the weight \(w.rows) rows")
        precondition(
            gate.rows == m && gate.columns == n && dh.rows == m && dh.columns == n, "gatedProduct: shapes differ")
        precondition(columnSums.count == n, "gatedProduct: \(columnSums.count) column sums for \(n) columns")
        guard usesDenseKernel(transposeA: false, m: m, n: n, k: k) else {
            gemm(dy, w, into: &dh)
            precondition(!native || VectorKernels.supported, "the vector kernels need AVX2 and FMA")
            gate.withUnsafePointer { pg in
                dh.withUnsafeMutablePointer { pc in
                    columnSums.withUnsafeMutablePointer { ps in
                        if native { return fwp_relu_backward_column_sums(pg, pc, ps, m, n) }
                        for i in 0..<m {
                            for j in 0..<n {
                                if !(pg[i * n + j] > 0) { pc[i * n + j] = 0 }
                                ps[j] += pc[i * n + j]
                            }
                        }
                    }
                }
            }
            return
        }
        dy.withUnsafePointer { pa in
            w.withUnsafePointer { pb in
                gate.withUnsafePointer { pg in
                    dh.withUnsafeMutablePointer { pc in
                        columnSums.withUnsafeMutablePointer { ps in
                            // Column pieces of dh: each is a product of its own with the same rows
                            // (64-column steps keep the dense kernel's register blocks whole).
                            forEachPiece(n, threads: m < 256 ? ComputeThreads(1) : threads) { c in
                                fwp_dense_sgemm_gated(
                                    0, Int32(m), Int32(c.count), Int32(k), pa, Int32(k), pb + c.lowerBound, Int32(n),
                                    pc + c.lowerBound, Int32(n), pg + c.lowerBound, Int32(n), ps + c.lowerBound)
                            }
                        }
                    }
                }
            }
        }
    }

    /// op(A) · op(B) as a new rank-2 tensor.
    public static func matmul(
        _ a: Tensor, transposeA: Bool = false, _ b: Tensor, transposeB: Bool = false,
        threads: ComputeThreads = ComputeThreads(1)
    ) -> Tensor {
        let m = transposeA ? a.columns : a.rows
        let n = transposeB ? b.rows : b.columns
        var c = Tensor(uninitializedShape: [m, n])  // beta 0: every element is written
        gemm(a, transposeA: transposeA, b, transposeB: transposeB, into: &c, threads: threads)
        return c
    }
}
