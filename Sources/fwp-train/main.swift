// fwp-train: trains a byte-level language model on a text file, in-process.
//
// The service (fwpd) will run this kind of job; until then this is the project's main job.
// Usage: fwp-train [--text FILE|DIR] [--steps N] [--attention softmax|fast-weight] [--feature-map elu|dpfp-N|favor-M]
//                  [--rule sum|delta] [--normalization none|sum|attention] [--layers N] [--model-size D]
//                  [--heads H] [--head-size d] [--ff F] [--batch B] [--context T] [--lr X] [--seed S]
//                  [--threads N] [--checkpoint FILE]
import FWPCore
import Foundation

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("fwp-train: \(message)\n".utf8))
    exit(2)
}

var options: [String: String] = [:]
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    guard a.hasPrefix("--") else { fail("unexpected argument '\(a)'") }
    if a == "--help" || a == "-h" {
        print("""
            usage: fwp-train [--text FILE|DIR] [--steps N] [--attention softmax|fast-weight]
                             [--feature-map elu|dpfp-N|favor-M|identity] [--rule sum|delta]
                             [--normalization none|sum|attention] [--layers N] [--model-size D] [--heads H]
                             [--head-size d] [--ff F] [--batch B] [--context T] [--lr X] [--seed S]
                             [--threads N] [--checkpoint FILE]
            Trains a byte-level language model and reports train/validation bits per byte.
            """)
        exit(0)
    }
    guard let v = args.popFirst() else { fail("\(a) needs a value") }
    options[String(a.dropFirst(2))] = v
}
let known: Set = [
    "text", "steps", "attention", "feature-map", "rule", "normalization", "layers", "model-size", "heads", "head-size",
    "ff", "batch", "context", "lr", "seed", "threads", "checkpoint",
]
if let unknown = options.keys.first(where: { !known.contains($0) }) { fail("unknown option --\(unknown)") }

@MainActor func int(_ key: String, _ def: Int, min: Int = 1) -> Int {
    guard let s = options[key] else { return def }
    guard let v = Int(s), v >= min else { fail("--\(key) must be an integer ≥ \(min), got '\(s)'") }
    return v
}

// The default corpus is English text every Debian system has: the licence texts of base-files.
let textPath = options["text"] ?? "/usr/share/common-licenses"
@MainActor func readCorpus(_ path: String) -> Data {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { fail("\(path) does not exist") }
    if !isDirectory.boolValue {
        guard let d = FileManager.default.contents(atPath: path) else { fail("cannot read \(path)") }
        return d
    }
    // A folder: its regular files, sorted by name, concatenated.
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { fail("cannot list \(path)") }
    var all = Data()
    for name in names.sorted() {
        let full = (path as NSString).appendingPathComponent(name)
        var dir: ObjCBool = false
        if FileManager.default.fileExists(atPath: full, isDirectory: &dir), !dir.boolValue,
            let d = FileManager.default.contents(atPath: full)
        {
            all.append(d)
        }
    }
    return all
}
let bytes = readCorpus(textPath)
guard bytes.count > 1000 else { fail("\(textPath) holds \(bytes.count) bytes; need at least 1000") }
let tokens = bytes.map { Int($0) }
let split = tokens.count * 9 / 10
let train = Array(tokens[..<split]), valid = Array(tokens[split...])

var config = LMConfig(
    vocabularySize: 256, modelSize: int("model-size", 64), layers: int("layers", 2), heads: int("heads", 4),
    headSize: int("head-size", 16), feedForwardSize: int("ff", 256))
if let a = options["attention"] {
    guard let k = AttentionKind(rawValue: a) else { fail("--attention must be softmax or fast-weight") }
    config.attention = k
}
if let f = options["feature-map"] {
    guard let k = FeatureMapKind(name: f) else { fail("--feature-map must be identity, elu, dpfp-N or favor-M") }
    config.featureMap = k
}
if let r = options["rule"] {
    guard let k = UpdateRule(rawValue: r) else { fail("--rule must be sum or delta") }
    config.updateRule = k
}
if let n = options["normalization"] {
    guard let k = Normalization(rawValue: n) else { fail("--normalization must be none, sum or attention") }
    config.normalization = k
}
let steps = int("steps", 300), batch = int("batch", 16), context = int("context", 64)
let threads = int("threads", max(1, ProcessInfo.processInfo.activeProcessorCount))
guard let lr = Double(options["lr"] ?? "3e-3"), lr > 0 else { fail("--lr must be a positive number") }
let seed = UInt64(int("seed", 1, min: 0))
BLAS.setThreads(threads)

var model: LanguageModel
do { model = try LanguageModel(config: config, seed: seed) } catch { fail("\(error)") }
model.threads = ComputeThreads(threads)
var optimizer = AdamW(
    parameters: model.parameters, schedule: LearningRateSchedule(peak: lr, warmupSteps: steps / 20, totalSteps: steps),
    weightDecay: 0.01, maxGradientNorm: 1)
var rng = FWPRandom(seed: seed &+ 1)

@MainActor func batchAt(_ data: [Int], _ offsets: [Int]) -> ([Int], [Int]) {
    var x: [Int] = [], y: [Int] = []
    for o in offsets {
        x.append(contentsOf: data[o..<o + context])
        y.append(contentsOf: data[o + 1..<o + context + 1])
    }
    return (x, y)
}

@MainActor func validationBitsPerByte() -> Double {
    let n = min(8, (valid.count - 1) / context)
    guard n > 0 else { return .nan }
    let offsets = (0..<n).map { $0 * context }
    let (x, y) = batchAt(valid, offsets)
    var state: ModelState? = nil
    return model.loss(tokens: x, targets: y, batch: n, state: &state) / log(2)
}

print("fwp-train: \(textPath) (\(tokens.count) bytes), \(model.parameters.scalarCount) parameters")
print("  attention \(config.attention.rawValue), φ \(config.featureMap.name), rule \(config.updateRule.rawValue), "
    + "normalisation \(config.normalization.rawValue), \(config.layers) layers × \(config.heads) heads × \(config.headSize)")
print("  unigram entropy of the text: \(String(format: "%.3f", unigramBits(train))) bits/byte")

func unigramBits(_ data: [Int]) -> Double {
    var counts = [Double](repeating: 0, count: 256)
    for t in data { counts[t] += 1 }
    let n = Double(data.count)
    return counts.filter { $0 > 0 }.reduce(0.0) { $0 - ($1 / n) * log2($1 / n) }
}

let start = Date()
for step in 1...steps {
    let offsets = (0..<batch).map { _ in Int(rng.next() % UInt64(train.count - context - 1)) }
    let (x, y) = batchAt(train, offsets)
    var state: ModelState? = nil
    let (loss, grads) = model.lossAndGradients(tokens: x, targets: y, batch: batch, state: &state, training: true, rng: &rng)
    optimizer.update(&model.parameters, gradients: grads)
    if step % 25 == 0 || step == steps || step == 1 {
        let elapsed = Date().timeIntervalSince(start)
        let tps = Double(step * batch * context) / elapsed
        let eta = elapsed / Double(step) * Double(steps - step)
        var line = String(format: "step %5d/%d  train %.3f bits/byte  %.0f tokens/s  eta %.0fs", step, steps, loss / log(2), tps, eta)
        if step % 100 == 0 || step == steps { line += String(format: "  valid %.3f bits/byte", validationBitsPerByte()) }
        print(line)
    }
}

if let path = options["checkpoint"] {
    let data = TrainingCheckpoint(model: model, optimizer: optimizer, rng: rng).encoded()
    do {
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        print("checkpoint written to \(path) (\(data.count) bytes)")
    } catch { fail("cannot write checkpoint: \(error)") }
}
