// fwp-bench: throughput of the numeric core's hot paths (not part of the test suite).
//
//   swift run -c release fwp-bench [--threads N] [--blas-threads N] [--repeats R] [--only core|layer|lm]
//
// layer: one fast-weight attention layer (delta rule, ELU+1, sum normalisation), forward +
//        backward, at B=8, H=4, T=256, d_head=64 (D = 256).
// lm:    one training step (forward, backward, AdamW) of a byte-level LM with D=128, 4 layers,
//        4 heads of 32, FF 512, T=256, B=16, for the delta rule, the sum rule and softmax.
// Prints the median tokens/s over R timed repetitions after one warm-up.
import FWPCore
import Foundation

var threads = 2, repeats = 5
var blasThreads: Int? = nil
var only: String? = nil
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--threads": threads = Int(args.popFirst() ?? "") ?? threads
    case "--repeats": repeats = Int(args.popFirst() ?? "") ?? repeats
    case "--only": only = args.popFirst()
    case "--blas-threads": blasThreads = Int(args.popFirst() ?? "")
    default:
        print("usage: fwp-bench [--threads N] [--blas-threads N] [--repeats R] [--only core|layer|lm]")
        exit(2)
    }
}
BLAS.setThreads(blasThreads ?? threads)

func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

func time(_ body: () -> Void) -> Double {
    let start = DispatchTime.now().uptimeNanoseconds
    body()
    return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
}

/// The delta-rule memory alone (what the PyTorch peer's "layer" measures): ELU+1 and sum
/// normalisation on q and k, β = σ(logits), the recurrence, forward and backward.
@MainActor func benchCore(_ label: String, algorithm: FastWeightAlgorithm, steps: Int = 256, batch: Int = 8) throws {
    let (b, h, t, d) = (batch, 4, steps, 64)
    let config = LMConfig(
        vocabularySize: 256, modelSize: h * d, layers: 1, heads: h, headSize: d, feedForwardSize: 4 * h * d,
        attention: .fastWeight, featureMap: .eluPlusOne, updateRule: .delta, normalization: .sum)
    let probe = try AttentionProbe(config: config, threads: threads)
    var rng = FWPRandom(seed: 1)
    let q = Tensor.normal(shape: [b * t, h * d], std: 1, using: &rng)
    let k = Tensor.normal(shape: [b * t, h * d], std: 1, using: &rng)
    let v = Tensor.normal(shape: [b * t, h * d], std: 1, using: &rng)
    let beta = Tensor.normal(shape: [b * t, h], std: 1, using: &rng)
    let run = { _ = probe.coreForwardBackward(q: q, k: k, v: v, betaLogits: beta, batch: b, algorithm: algorithm) }
    run()
    var secs: [Double] = []
    for _ in 0..<repeats { secs.append(time(run)) }
    let tps = Double(b * t) / median(secs)
    print(String(format: "%-20@ %12.0f tokens/s  (delta-rule memory fwd+bwd, B=%d H=%d T=%d d=%d)", label as NSString, tps, b, h, t, d))
}

@MainActor func benchLayer() throws {
    let (b, h, t, d) = (8, 4, 256, 64)
    let config = LMConfig(
        vocabularySize: 256, modelSize: h * d, layers: 1, heads: h, headSize: d, feedForwardSize: 4 * h * d,
        attention: .fastWeight, featureMap: .eluPlusOne, updateRule: .delta, normalization: .sum)
    let probe = try AttentionProbe(config: config, threads: threads)
    var rng = FWPRandom(seed: 1)
    let x = Tensor.normal(shape: [b * t, h * d], std: 1, using: &rng)
    _ = probe.forwardBackward(x, batch: b)
    var secs: [Double] = []
    for _ in 0..<repeats { secs.append(time { _ = probe.forwardBackward(x, batch: b) }) }
    let tps = Double(b * t) / median(secs)
    print(String(format: "delta-rule layer fwd+bwd  B=%d H=%d T=%d d=%d  %10.0f tokens/s  (median of %d, %d threads)", b, h, t, d, tps, repeats, threads))
}

@MainActor func benchLM(_ name: String, attention: AttentionKind, rule: UpdateRule) throws {
    let (batch, context) = (16, 256)
    let config = LMConfig(
        vocabularySize: 256, modelSize: 128, layers: 4, heads: 4, headSize: 32, feedForwardSize: 512,
        attention: attention, featureMap: .eluPlusOne, updateRule: rule, normalization: .sum)
    var model = try LanguageModel(config: config, seed: 1)
    model.threads = ComputeThreads(threads)
    var opt = AdamW(parameters: model.parameters, schedule: LearningRateSchedule(peak: 1e-3))
    var rng = FWPRandom(seed: 2)
    let tokens = (0..<(batch * context)).map { _ in Int(rng.next() % 256) }
    let targets = tokens.map { ($0 + 1) % 256 }
    func step() {
        var none: ModelState? = nil
        let (_, g) = model.lossAndGradients(tokens: tokens, targets: targets, batch: batch, state: &none, training: true, rng: &rng)
        opt.update(&model.parameters, gradients: g)
    }
    step()
    var secs: [Double] = []
    for _ in 0..<repeats { secs.append(time(step)) }
    let tps = Double(batch * context) / median(secs)
    print(String(format: "LM training step %-8@ D=128 L=4 H=4 T=256 B=16  %10.0f tokens/s", name as NSString, tps))
}

if only == nil || only == "core" || only == "core32" {
    try benchCore("core-recurrent", algorithm: .recurrent)
    for c in [16, 32, 64, 128] where only != "core32" || c == 32 { try benchCore("core-chunk\(c)", algorithm: .chunkwise(c)) }
    try benchCore("core-auto", algorithm: .automatic)
}
if only == nil || only == "layer" { try benchLayer() }
if only == nil || only == "lm" {
    try benchLM("delta", attention: .fastWeight, rule: .delta)
    try benchLM("sum", attention: .fastWeight, rule: .sum)
    try benchLM("softmax", attention: .softmax, rule: .sum)
}
