// fwp-bench: throughput and memory of the numeric core's hot paths (not part of the test suite).
//
//   swift build -c release --product fwp-bench
//   .build/release/fwp-bench [--threads N] [--repeats R] [--json] [--only WHAT] [--context T] [--batch B]
//                            [--head-size d] [--model-size D --layers L --heads H --ff F]
//
// WHAT (default: core lm):
//   core      the delta-rule memory alone (ELU+1 + sum normalisation on q, k; β = σ(logits);
//             the recurrence), forward + backward, B=8 H=4 T=256 d=64: recurrent, chunkwise
//             C ∈ {16, 32, 64, 128}, and the automatic choice (`--batch B` for another B,
//             `--head-size d` for another d, e.g. 32, the LM's; core-auto too)
//   layer     one whole attention layer (projections included) at the same shape
//   lm        one training step (forward, backward, AdamW) of the byte-level LM: D=128, 4 layers,
//             4 heads of 32, FF 512, T=256, B=16 — delta rule, sum rule, softmax, gated delta; with
//             the FLOP count per token and the fraction of the measured sgemm rate. --model-size,
//             --layers, --heads (head size D/H), --ff, --batch and --context give it another shape
//             (rows then named lm-<kind>-D<D>L<L>)
//   favor     the lm step with the delta rule and FAVOR+ (favor-64, redrawn each step) beside
//             ELU + 1 at the same shape
//   sgemm     OpenBLAS sgemm GFLOP/s on one thread (1024³ and the LM's FF shape), and the
//             same products through BLAS.gemm where the dense kernel is on
//   sweep     the lm step at T = 256 … 8192 with B·T = 4096 (B ≥ 1): delta, sum, softmax
//   sweep-softmax  the softmax lm step alone at T = 256 … 8192 (B·T = 4096, B ≥ 1)
//   generate  recurrent generation, batch 1: tokens/s and resident memory at 1K … 64K tokens
//             of context, stepping through all of it (softmax up to 8K: its per-token cost grows
//             with the context)
//   decode    one generated token per sequence at batch 1 and 16 with 1K and 64K tokens of
//             context, every kind, with the FLOPs per token: the state at context T is random of
//             the right size (a softmax key/value cache of T rows with room for the run, so never
//             copied; fast weights d × d), as the peer's `decode` builds it
//   memory    peak resident memory of one delta-rule training step at --context T (B = 4),
//             (memory-softmax: the same for the softmax LM)
//             minus the resident memory before it, per token; run once per T (own process)
//   reduce    under mpirun -np N: one gradient reduction across the ranks (the ordered chain
//             training uses, and MPI_Allreduce) at three gradient sizes, and the latency of a
//             one-number allreduce (docs/SCALING.md)
// Prints medians over R timed repetitions after one warm-up. BLAS runs single-threaded; the
// core parallelises over batch shards and sequences itself.
import FWPCore
import Foundation

BLAS.relaunchIfNeeded()
var threads = 2, repeats = 5, json = false, coreHeadSize = 64
var contextOption: Int? = nil, batchOption: Int? = nil
var lmShape = (modelSize: 128, layers: 4, heads: 4, ff: 512)
var lmAlgorithm = FastWeightAlgorithm.automatic
var only: [String] = []
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--threads": threads = Int(args.popFirst() ?? "") ?? threads
    case "--repeats": repeats = Int(args.popFirst() ?? "") ?? repeats
    case "--only": only.append(args.popFirst() ?? "")
    case "--context": contextOption = Int(args.popFirst() ?? "").map { max(1, $0) }
    case "--batch": batchOption = Int(args.popFirst() ?? "").map { max(1, $0) }
    case "--model-size": lmShape.modelSize = max(1, Int(args.popFirst() ?? "") ?? lmShape.modelSize)
    case "--layers": lmShape.layers = max(1, Int(args.popFirst() ?? "") ?? lmShape.layers)
    case "--heads": lmShape.heads = max(1, Int(args.popFirst() ?? "") ?? lmShape.heads)
    case "--ff": lmShape.ff = max(1, Int(args.popFirst() ?? "") ?? lmShape.ff)
    case "--head-size": coreHeadSize = max(1, Int(args.popFirst() ?? "") ?? coreHeadSize)
    case "--json": json = true
    case "--algorithm":
        // recurrent | chunkN | auto: how fast-weight layers of the lm workloads run
        let a = args.popFirst() ?? ""
        if a == "recurrent" {
            lmAlgorithm = .recurrent
        } else if a.hasPrefix("chunk"), let c = Int(a.dropFirst(5)) {
            lmAlgorithm = .chunkwise(c)
        }
    case "--blas-threads": _ = args.popFirst()  // accepted for older command lines; BLAS stays at 1
    default:
        FileHandle.standardError.write(
            "usage: fwp-bench [--threads N] [--repeats R] [--json] [--only core|layer|lm|favor|sgemm|sweep|sweep-softmax|generate|decode|memory|memory-softmax|reduce] [--context T] [--batch B] [--head-size d] [--model-size D --layers L --heads H --ff F]\n"
                .data(using: .utf8)!)
        exit(2)
    }
}
if only.isEmpty { only = ["core", "lm"] }
guard lmShape.modelSize % lmShape.heads == 0 else {
    FileHandle.standardError.write(Data("fwp-bench: --model-size must be a multiple of --heads\n".utf8))
    exit(2)
}
let coreBatch = batchOption ?? 8
let context = contextOption ?? 256
BLAS.setThreads(1)
FileHandle.standardError.write(Data("fwp-bench: \(BLAS.kernelNote)\n".utf8))

@MainActor func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

@MainActor func time(_ body: () -> Void) -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

@MainActor func medianSeconds(_ body: () -> Void) -> Double {
    body()
    var secs: [Double] = []
    for _ in 0..<repeats { secs.append(time(body)) }
    return median(secs)
}

/// One result line: human-readable, or one JSON object per line with `--json`.
@MainActor func report(_ name: String, _ value: Double, _ unit: String, _ extra: [String: Any] = [:]) {
    if json {
        var obj: [String: Any] = ["name": name, "value": (value * 10).rounded() / 10, "unit": unit, "threads": threads]
        for (k, v) in extra { obj[k] = v }
        let data = try! JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    } else {
        let detail = extra.keys.sorted().map { "\($0)=\(extra[$0]!)" }.joined(separator: " ")
        let line = String(
            format: "%-22@ %14.1f %@  %@\n", name as NSString, value, unit as NSString, detail as NSString)
        FileHandle.standardOutput.write(Data(line.utf8))
    }
}

@MainActor func residentBytes() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let f = s.split(separator: " ")
    return (Int(f[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
}

@MainActor func peakResidentBytes() -> Int {
    var u = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
    return u.ru_maxrss * 1024
}

// MARK: - workloads

@MainActor func coreConfig(h: Int, d: Int) -> LMConfig {
    LMConfig(
        vocabularySize: 256, modelSize: h * d, layers: 1, heads: h, headSize: d, feedForwardSize: 4 * h * d,
        attention: .fastWeight, featureMap: .eluPlusOne, updateRule: .delta, normalization: .sum)
}

@MainActor func benchCore(_ label: String, algorithm: FastWeightAlgorithm) throws {
    let (b, h, t, d) = (coreBatch, 4, 256, coreHeadSize)
    let probe = try AttentionProbe(config: coreConfig(h: h, d: d), threads: threads)
    var rng = FWPRandom(seed: 1)
    let q = Tensor.normal(shape: [b * t, h * d], std: 1, using: &rng)
    let k = Tensor.normal(shape: [b * t, h * d], std: 1, using: &rng)
    let v = Tensor.normal(shape: [b * t, h * d], std: 1, using: &rng)
    let beta = Tensor.normal(shape: [b * t, h], std: 1, using: &rng)
    let secs = medianSeconds {
        _ = probe.coreForwardBackward(q: q, k: k, v: v, betaLogits: beta, batch: b, algorithm: algorithm)
    }
    report(label, Double(b * t) / secs, "tokens/s", ["shape": "B\(b) H4 T256 d\(d)"])
}

@MainActor func benchLayer() throws {
    let (b, h, t, d) = (8, 4, 256, 64)
    let probe = try AttentionProbe(config: coreConfig(h: h, d: d), threads: threads)
    var rng = FWPRandom(seed: 1)
    let x = Tensor.normal(shape: [b * t, h * d], std: 1, using: &rng)
    let secs = medianSeconds { _ = probe.forwardBackward(x, batch: b) }
    report("layer-delta", Double(b * t) / secs, "tokens/s", ["shape": "B8 H4 T256 d64 D256"])
}

/// The LM of the lm workloads (D 128, 4 layers, 4 heads of 32, FF 512 unless the shape options
/// say otherwise).
@MainActor func lmConfig(
    _ attention: AttentionKind, _ rule: UpdateRule, featureMap: FeatureMapKind = .eluPlusOne
) -> LMConfig {
    LMConfig(
        vocabularySize: 256, modelSize: lmShape.modelSize, layers: lmShape.layers, heads: lmShape.heads,
        headSize: lmShape.modelSize / lmShape.heads, feedForwardSize: lmShape.ff,
        attention: attention, featureMap: featureMap, updateRule: rule, normalization: .sum)
}

/// Suffix of the lm rows' names when the shape options changed the LM.
@MainActor func shapeSuffixed(_ name: String) -> String {
    name + (lmShape == (128, 4, 4, 512) ? "" : "-D\(lmShape.modelSize)L\(lmShape.layers)")
}

/// FLOPs per token of one training step (forward + backward ≈ 3 × forward), counting the dense
/// products and the attention core in its cheapest exact form: fast weights 2·d·d_dot per
/// product per head (sum rule: write + read; delta: + the retrieval v̄), softmax the causal half
/// of QKᵀ and PV. Element-wise work, the optimiser and the chunkwise form's extra products are
/// not counted.
@MainActor func trainingFlopsPerToken(_ c: LMConfig, steps: Int) -> Double {
    let D = Double(c.modelSize), hd = Double(c.heads * c.headSize), F = Double(c.feedForwardSize)
    let V = Double(c.vocabularySize), d = Double(c.headSize), H = Double(c.heads)
    var layer = 2 * D * 3 * hd + 2 * hd * D + 2 * 2 * D * F
    if c.attention == .softmax {
        layer += 2 * 2 * H * d * Double(steps + 1) / 2
    } else {
        layer += Double(c.updateRule.hasBeta ? 3 : 2) * 2 * H * d * d
        if c.updateRule.hasBeta { layer += 2 * D * H }
        if c.updateRule == .gatedDelta { layer += 2 * D * H }
    }
    return 3 * (Double(c.layers) * layer + 2 * D * V)
}

/// FLOPs of one generated token (forward only) at `context` tokens of context: the dense
/// products, and the attention at that context (softmax: q·k and p·v over context + 1 keys; fast
/// weights: the state's products, as above).
@MainActor func stepFlopsPerToken(_ c: LMConfig, context: Int) -> Double {
    // The training count covers forward + backward (3 × forward) and the causal half of the
    // keys; a step reads all context + 1 of them.
    trainingFlopsPerToken(c, steps: 2 * context + 1) / 3
}

@MainActor func lmStepSeconds(_ config: LMConfig, batch: Int, steps: Int) throws -> Double {
    var model = try LanguageModel(config: config, seed: 1)
    model.threads = ComputeThreads(threads)
    model.fastWeightAlgorithm = lmAlgorithm
    var opt = AdamW(parameters: model.parameters, schedule: LearningRateSchedule(peak: 1e-3))
    var rng = FWPRandom(seed: 2)
    let tokens = (0..<(batch * steps)).map { _ in Int(rng.next() % 256) }
    let targets = tokens.map { ($0 + 1) % 256 }
    return medianSeconds {
        var none: ModelState? = nil
        let (_, g) = model.lossAndGradients(
            tokens: tokens, targets: targets, batch: batch, state: &none, training: true, rng: &rng)
        opt.update(&model.parameters, gradients: g, threads: model.threads)
    }
}

/// Single-thread GFLOP/s of one m × n × k product: through `BLAS.gemm` (our dense kernel where it
/// runs), or through OpenBLAS itself.
@MainActor func sgemmGflops(m: Int, n: Int, k: Int, openBLAS: Bool = false) -> Double {
    var rng = FWPRandom(seed: 3)
    let a = Tensor.normal(shape: [m, k], std: 1, using: &rng), b = Tensor.normal(shape: [k, n], std: 1, using: &rng)
    var c = Tensor(shape: [m, n])
    let secs = medianSeconds {
        guard openBLAS else { return BLAS.gemm(a, b, into: &c) }
        a.withUnsafePointer { pa in
            b.withUnsafePointer { pb in
                c.withUnsafeMutablePointer { pc in
                    BLAS.openBLASGemm(
                        transposeA: false, transposeB: false, m: m, n: n, k: k, a: pa, lda: k, b: pb, ldb: n, beta: 0,
                        c: pc, ldc: n)
                }
            }
        }
    }
    return 2 * Double(m * n * k) / secs / 1e9
}

/// The machine's single-thread sgemm rate at 1024³ that the LM's FLOP fraction is taken of: the
/// faster of OpenBLAS and the product `BLAS.gemm` runs, so that a kernel of our own in that path
/// could only lower the fraction.
@MainActor func referenceSgemmGflops() -> Double {
    let viaGemm = sgemmGflops(m: 1024, n: 1024, k: 1024)
    return BLAS.denseKernel ? max(viaGemm, sgemmGflops(m: 1024, n: 1024, k: 1024, openBLAS: true)) : viaGemm
}

/// GFLOP/s of one product shape on OpenBLAS and on the small kernel (single thread, operands
/// resident in cache, each product repeated until it takes a few milliseconds).
@MainActor func benchSmallGemm() {
    let shapes: [(Int, Int, Int, Bool, Bool)] = [
        // The chunkwise kernel's own (chunk 16, d 32 or 64): K Sᵀ, Q Kᵀ, the state update Vᵀ K.
        (16, 64, 64, false, false), (16, 16, 64, false, true), (64, 64, 16, true, false),
        (16, 32, 32, false, false), (16, 16, 32, false, true), (32, 32, 16, true, false),
        (32, 32, 32, false, false), (32, 32, 32, false, true), (32, 32, 32, true, false),
        (32, 64, 64, false, false), (32, 64, 64, false, true), (64, 64, 32, true, false),
        (64, 64, 64, false, false), (64, 64, 64, false, true), (64, 256, 32, false, true),
        (128, 128, 128, false, false), (128, 128, 128, false, true), (256, 256, 64, false, false),
    ]
    var rng = FWPRandom(seed: 4)
    for (m, n, k, ta, tb) in shapes {
        let a = Tensor.normal(shape: [m * k], std: 1, using: &rng),
            b = Tensor.normal(shape: [k * n], std: 1, using: &rng)
        var c = Tensor(shape: [m * n])
        let reps = max(1, 4_000_000 / (m * n * k))
        let lda = ta ? m : k, ldb = tb ? k : n
        var rates: [String: Double] = [:]
        for backend in ["openblas", "small"] {
            let secs = a.withUnsafePointer { pa in
                b.withUnsafePointer { pb in
                    c.withUnsafeMutablePointer { pc in
                        medianSeconds {
                            for _ in 0..<reps {
                                if backend == "small" {
                                    BLAS.smallKernelGemm(
                                        transposeA: ta, transposeB: tb, m: m, n: n, k: k, a: pa, lda: lda, b: pb,
                                        ldb: ldb,
                                        beta: 1, c: pc, ldc: n)
                                } else {
                                    BLAS.openBLASGemm(
                                        transposeA: ta, transposeB: tb, m: m, n: n, k: k, a: pa, lda: lda, b: pb,
                                        ldb: ldb,
                                        beta: 1, c: pc, ldc: n)
                                }
                            }
                        }
                    }
                }
            }
            rates[backend] = 2 * Double(m * n * k * reps) / secs / 1e9
        }
        let shape = "\(m)x\(n)x\(k)\(ta ? " At" : "")\(tb ? " Bt" : "")"
        report(
            "gemm \(shape)", rates["small"]!, "GFLOP/s",
            [
                "openblas": (rates["openblas"]! * 10).rounded() / 10,
                "ratio": (rates["small"]! / rates["openblas"]! * 100).rounded() / 100,
            ])
    }
}

let lmVariants: [(String, AttentionKind, UpdateRule)] = [
    ("delta", .fastWeight, .delta), ("sum", .fastWeight, .sum), ("softmax", .softmax, .sum),
    ("gated", .fastWeight, .gatedDelta),
]

@MainActor func benchLM(only variant: String? = nil) throws {
    let peak = referenceSgemmGflops()
    let (batch, steps) = (batchOption ?? 16, contextOption ?? 256)
    for (name, attention, rule) in lmVariants where variant == nil || variant == name {
        let config = lmConfig(attention, rule)
        let tps = Double(batch * steps) / (try lmStepSeconds(config, batch: batch, steps: steps))
        let flops = trainingFlopsPerToken(config, steps: steps)
        let rate = tps * flops / 1e9
        report(
            shapeSuffixed("lm-\(name)"), tps, "tokens/s",
            [
                "mflop_per_token": (flops / 1e4).rounded() / 100, "gflops": (rate * 10).rounded() / 10,
                "fraction_of_sgemm": (rate / (peak * Double(threads)) * 1000).rounded() / 1000,
            ])
    }
}

@MainActor func benchGenerate() throws {
    let window = 256
    for (name, attention, rule) in lmVariants {
        let model = try LanguageModel(config: lmConfig(attention, rule), seed: 1)
        var state = model.initialState(batch: 1)
        let marks = attention == .softmax ? [1024, 2048, 4096, 8192] : [1024, 4096, 16384, 65536]
        var token = 1, position = 0
        var windowStart: UInt64 = 0
        while position < marks.last! {
            if marks.contains(position + window) { windowStart = DispatchTime.now().uptimeNanoseconds }
            let logits = model.step(tokens: [token], state: &state)
            token = logits.storage.indices.max { logits.storage[$0] < logits.storage[$1] }!
            position += 1
            if marks.contains(position) {
                let secs = Double(DispatchTime.now().uptimeNanoseconds - windowStart) / 1e9
                report(
                    "generate-\(name)", Double(window) / secs, "tokens/s",
                    ["context": position, "resident_mib": (Double(residentBytes()) / 1048576 * 10).rounded() / 10])
            }
        }
    }
}

/// The delta-rule lm step with FAVOR+ features (m = 64, so d_dot = 128; redrawn every step as
/// in training) beside ELU + 1, at the lm workload's shape.
@MainActor func benchFavor() throws {
    let (batch, steps) = (batchOption ?? 16, contextOption ?? 256)
    for (name, map) in [("elu", FeatureMapKind.eluPlusOne), ("favor-64", .favor(features: 64))] {
        let secs = try lmStepSeconds(lmConfig(.fastWeight, .delta, featureMap: map), batch: batch, steps: steps)
        report(shapeSuffixed("lm-delta-\(name)"), Double(batch * steps) / secs, "tokens/s")
    }
}

/// Generation at batch 1 and 16 from a state of 1K and 64K tokens of context (see `decode`).
@MainActor func benchDecode() throws {
    var poolRng = FWPRandom(seed: 3)
    let pool = (0..<(1 << 20)).map { _ in Float(poolRng.normal()) }
    for (name, attention, rule) in lmVariants {
        let config = lmConfig(attention, rule)
        var model = try LanguageModel(config: config, seed: 1)
        model.threads = ComputeThreads(threads)
        for batch in [1, 16] {
            for ctx in [1024, 65536] {
                let window = batch == 1 ? 256 : 32
                var rng = FWPRandom(seed: 2)
                var state = model.initialState(batch: batch)
                state.position = ctx
                let capacity = ctx + 4 + (repeats + 1) * window
                for l in state.layers.indices {
                    if attention == .softmax {
                        // Random rows cut from one pool (drawing every float would take longer
                        // than the measurement at 64K × batch 16).
                        let count = ctx * config.headSize
                        func cache() -> [Float] {
                            var c = [Float]()
                            c.reserveCapacity(capacity * config.headSize)
                            while c.count < count {
                                let start = Int(rng.next() % UInt64(pool.count / 2))
                                c.append(contentsOf: pool[start..<min(pool.count, start + count - c.count)])
                            }
                            return c
                        }
                        state.layers[l].keys = (0..<(batch * config.heads)).map { _ in cache() }
                        state.layers[l].values = (0..<(batch * config.heads)).map { _ in cache() }
                        state.layers[l].length = ctx
                    } else {
                        for i in state.layers[l].weights.indices {
                            state.layers[l].weights[i] = 0.1 * Float(rng.normal())
                        }
                    }
                }
                var tokens = [Int](repeating: 1, count: batch)
                var secs: [Double] = []
                for w in 0...repeats {
                    let t = time {
                        for _ in 0..<(w == 0 ? 4 : window) {
                            let logits = model.step(tokens: tokens, state: &state)
                            let v = config.vocabularySize
                            tokens = (0..<batch).map { b in
                                (0..<v).max { logits.storage[b * v + $0] < logits.storage[b * v + $1] }!
                            }
                        }
                    }
                    if w > 0 { secs.append(t) }
                }
                let perStep = median(secs) / Double(window)
                let flops = stepFlopsPerToken(config, context: ctx)
                report(
                    "decode-\(name)-B\(batch)-T\(ctx)", Double(batch) / perStep, "tokens/s",
                    [
                        "latency_us": (perStep * 1e7).rounded() / 10,
                        "mflop_per_token": (flops / 1e4).rounded() / 100,
                        "gflops": (Double(batch) / perStep * flops / 1e8).rounded() / 10,
                        "resident_mib": (Double(residentBytes()) / 1048576 * 10).rounded() / 10,
                    ])
            }
        }
    }
}

@MainActor func benchMemory(_ attention: AttentionKind = .fastWeight) throws {
    let batch = 4
    let config = lmConfig(attention, .delta)
    var model = try LanguageModel(config: config, seed: 1)
    model.threads = ComputeThreads(threads)
    var opt = AdamW(parameters: model.parameters, schedule: LearningRateSchedule(peak: 1e-3))
    var rng = FWPRandom(seed: 2)
    let tokens = (0..<(batch * context)).map { _ in Int(rng.next() % 256) }
    let before = peakResidentBytes()
    var none: ModelState? = nil
    let (_, g) = model.lossAndGradients(
        tokens: tokens, targets: tokens, batch: batch, state: &none, training: true, rng: &rng)
    opt.update(&model.parameters, gradients: g, threads: model.threads)
    let grown = peakResidentBytes() - before
    report(
        attention == .softmax ? "memory-softmax" : "memory-delta", Double(grown) / Double(batch * context),
        "bytes/token",
        ["context": context, "batch": batch, "peak_mib": (Double(peakResidentBytes()) / 1048576 * 10).rounded() / 10])
}

for what in only {
    switch what {
    case "core", "core32":
        try benchCore("core-recurrent", algorithm: .recurrent)
        for c in [16, 32, 64, 128] where what == "core" || c == 32 {
            try benchCore("core-chunk\(c)", algorithm: .chunkwise(c))
        }
        try benchCore("core-auto", algorithm: .automatic)
    case "core-auto": try benchCore("core-auto", algorithm: .automatic)
    case "smallgemm": benchSmallGemm()
    case "layer": try benchLayer()
    case "lm": try benchLM()
    case "lm-delta", "lm-sum", "lm-softmax", "lm-gated": try benchLM(only: String(what.dropFirst(3)))
    case "sgemm":
        report(
            "sgemm-1024", sgemmGflops(m: 1024, n: 1024, k: 1024, openBLAS: true), "GFLOP/s",
            ["blas_threads": 1, "blas_core": BLAS.coreName])
        report(
            "sgemm-4096x512x128", sgemmGflops(m: 4096, n: 512, k: 128, openBLAS: true), "GFLOP/s",
            ["blas_threads": 1, "blas_core": BLAS.coreName])
        if BLAS.denseKernel {  // through BLAS.gemm: our dense kernel for the LM's shape, OpenBLAS at 1024³
            report("gemm-1024", sgemmGflops(m: 1024, n: 1024, k: 1024), "GFLOP/s", [:])
            report(
                "gemm-4096x512x128", sgemmGflops(m: 4096, n: 512, k: 128), "GFLOP/s",
                ["kernel": BLAS.denseAMX ? "fwp_dense_sgemm-amx" : "fwp_dense_sgemm"])
        }
    case "sweep":
        for t in [256, 512, 1024, 2048, 4096, 8192] {
            for (name, attention, rule) in lmVariants where name != "gated" {
                let batch = max(1, 4096 / t)
                let secs = try lmStepSeconds(lmConfig(attention, rule), batch: batch, steps: t)
                report("lm-\(name)-T\(t)", Double(batch * t) / secs, "tokens/s", ["context": t])
            }
        }
    case "favor": try benchFavor()
    case "decode": try benchDecode()
    case "sweep-softmax":  // the softmax LM step alone, T = 256 … 8192 (B·T = 4096, B ≥ 1)
        for t in [256, 512, 1024, 2048, 4096, 8192] {
            let batch = max(1, 4096 / t)
            let secs = try lmStepSeconds(lmConfig(.softmax, .sum), batch: batch, steps: t)
            report("lm-softmax-T\(t)", Double(batch * t) / secs, "tokens/s", ["context": t])
        }
    case "generate": try benchGenerate()
    case "memory": try benchMemory()
    case "memory-softmax": try benchMemory(.softmax)
    case "reduce": try benchReduce()
    default:
        FileHandle.standardError.write("unknown workload \(what)\n".data(using: .utf8)!)
        exit(2)
    }
}
