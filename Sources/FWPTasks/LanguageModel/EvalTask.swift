import FWPCore
import FWPProtocol
import Foundation

/// Loads a language-model checkpoint's model and tokenizer, with the parameter name in errors.
func loadLanguageModel(_ path: String, parameter: String) throws -> (LanguageModel, Tokenizer, TrainingCheckpoint) {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw TaskError.failed(code: .unreadableInput, message: "parameter '\(parameter)': cannot read \(path)")
    }
    let c: TrainingCheckpoint
    do {
        c = try TrainingCheckpoint.decode(data)
    } catch {
        throw TaskError.failed(code: .badCheckpoint, message: "parameter '\(parameter)': \(error)")
    }
    var tokenizer = Tokenizer.bytes
    if let json = c.extra["tokenizer"] {
        guard let t = try? JSONDecoder().decode(Tokenizer.self, from: Data(json.utf8)) else {
            throw TaskError.failed(
                code: .badCheckpoint, message: "parameter '\(parameter)': the stored tokenizer does not parse")
        }
        tokenizer = t
    }
    guard tokenizer.size == c.model.config.vocabularySize else {
        throw TaskError.failed(
            code: .badCheckpoint, message: "parameter '\(parameter)': tokenizer and model vocabulary differ")
    }
    return (c.model, tokenizer, c)
}

/// Checks that a checkpoint file exists and parses (before queueing).
func checkCheckpointFile(_ path: String, parameter: String) throws {
    guard FileManager.default.isReadableFile(atPath: path) else {
        throw ParameterError(parameter, "\(path) does not exist or is not readable")
    }
    do {
        _ = try loadLanguageModel(path, parameter: parameter)
    } catch let TaskError.failed(_, message) {
        throw ParameterError(parameter, message.replacingOccurrences(of: "parameter '\(parameter)': ", with: ""))
    }
}

/// Perplexity or bits per byte of a checkpoint on a text.
public struct EvalTask: TaskModule {
    public init() {}

    public let name = "eval"
    public let summary = """
        Evaluates a language-model checkpoint on a text file: mean loss and perplexity (word level) or bits \
        per byte (byte level), with or without carrying fast weights across segments (carry = true is the \
        paper's evaluation without context truncation; by default the checkpoint's own training mode).
        """

    public let parameters: [ParameterSpec] = [
        ParameterSpec("checkpoint", .path, "a language-model checkpoint (.safetensors)"),
        ParameterSpec("text", .path, "the text to evaluate on"),
        ParameterSpec(
            "segment", .integer, "tokens per segment (0: the checkpoint's training segment)", default: 0, minimum: 0,
            maximum: 65536),
        ParameterSpec("batch", .integer, "contiguous rows the text is cut into", default: 1, minimum: 1, maximum: 4096),
        ParameterSpec(
            "carry", .boolean, "carry fast weights across segments (unset: as the checkpoint was trained)",
            optional: true),
        ParameterSpec(
            "sliding_stride", .integer,
            "score with sliding windows of `segment` tokens advancing by this many instead (1: every token after "
                + "the first window sees a full window, as the reference evaluates Transformers; 0: segments)",
            default: 0, minimum: 0, maximum: 65536),
    ]

    /// The schema's parameters as Swift values.
    public struct Parameters: Decodable, Sendable {
        var checkpoint: String
        var text: String
        var segment: Int
        var batch: Int
        /// nil: as the checkpoint was trained.
        var carry: Bool?
        var slidingStride: Int
    }

    public func check(_ p: Parameters) throws {
        try checkCheckpointFile(p.checkpoint, parameter: "checkpoint")
        let (model, tokenizer, _) = try loadLanguageModel(p.checkpoint, parameter: "checkpoint")
        try checkTextFile(p.text, parameter: "text", level: tokenizer.level)
        if p.carry == true && model.config.attention == .softmax {
            throw ParameterError("carry", "carrying state needs a fast-weight model; this checkpoint is softmax")
        }
        if p.slidingStride > 0 && p.carry == true {
            throw ParameterError(
                "sliding_stride", "sliding windows start from a fresh state; do not combine with carry")
        }
        if p.slidingStride > 0 && p.segment > 0 && p.slidingStride > p.segment {
            throw ParameterError("sliding_stride", "must be at most segment (\(p.segment)), got \(p.slidingStride)")
        }
    }

    public func run(_ p: Parameters, context: TaskContext) throws -> JSONValue {
        BLAS.setThreads(1)  // parallelism comes from fwp's own loops (docs/ARCHITECTURE.md: "OpenBLAS starts without worker threads")
        var (model, tokenizer, c) = try loadLanguageModel(p.checkpoint, parameter: "checkpoint")
        model.threads = ComputeThreads(max(1, context.threads))
        let carry = p.slidingStride > 0 ? false : p.carry ?? trainedWithCarry(c)
        var segment = p.segment
        if segment == 0 { segment = Int(c.extra["segment"] ?? "") ?? 256 }
        let tokens = tokenizer.encode(try readTextFile(p.text, parameter: "text"))
        let loss: Double, n: Int
        if p.slidingStride > 0 {
            let stride = min(p.slidingStride, segment)
            context.emit(
                ProgressEvent(
                    kind: "log",
                    message: "evaluating \(tokens.count) tokens with windows of \(segment) every \(stride) tokens"))
            (loss, n) = try evaluateSliding(
                model, tokens: tokens, rows: p.batch, window: segment, stride: stride,
                cancelled: { context.isCancelled })
        } else {
            context.emit(
                ProgressEvent(kind: "log", message: "evaluating \(tokens.count) tokens in segments of \(segment)"))
            (loss, n) = try evaluateStream(
                model, tokens: tokens, batch: p.batch, segment: segment, carry: carry,
                cancelled: { context.isCancelled }
            )
        }
        var result: [String: JSONValue] = ["loss": .number(loss), "tokens": .number(Double(n)), "carry": .bool(carry)]
        if p.slidingStride > 0 { result["sliding_stride"] = .number(Double(min(p.slidingStride, segment))) }
        for (k, v) in languageMetrics(loss, level: tokenizer.level) { result[k] = v }
        return .object(result)
    }
}

/// Whether a checkpoint's model was trained carrying fast weights across segments: its
/// `extra.carry` metadata, or, in files written before that existed, carried-state tensors.
/// Softmax models never carry.
func trainedWithCarry(_ c: TrainingCheckpoint) -> Bool {
    guard c.model.config.attention != .softmax else { return false }
    if let flag = c.extra["carry"] { return flag == "true" }
    return c.extraTensors.contains { $0.name.hasPrefix("state.") }
}

/// Sampling text from a checkpoint with the recurrent (constant-memory) form.
public struct GenerateTask: TaskModule {
    public init() {}

    public let name = "generate"
    public let summary = """
        Generates text from a language-model checkpoint: feeds the prompt through the recurrent form, then \
        samples max_tokens tokens (temperature, top-k, seed), streaming them as `text` events.
        """

    public let parameters: [ParameterSpec] = [
        ParameterSpec("checkpoint", .path, "a language-model checkpoint (.safetensors)"),
        ParameterSpec("prompt", .string, "text to continue", default: ""),
        ParameterSpec("max_tokens", .integer, "tokens to generate", default: 200, minimum: 1, maximum: 1_000_000),
        ParameterSpec(
            "temperature", .number, "sampling temperature (0: greedy)", default: 1.0, minimum: 0, maximum: 100),
        ParameterSpec("top_k", .integer, "sample among the k most likely tokens (0: all)", default: 0, minimum: 0),
        ParameterSpec("seed", .integer, "sampling seed", default: 1, minimum: 0, maximum: 9_007_199_254_740_991),
    ]

    /// The schema's parameters as Swift values.
    public struct Parameters: Decodable, Sendable {
        var checkpoint: String
        var prompt: String
        var maxTokens: Int
        var temperature: Double
        var topK: Int
        var seed: UInt64
    }

    public func check(_ p: Parameters) throws {
        try checkCheckpointFile(p.checkpoint, parameter: "checkpoint")
    }

    public func run(_ p: Parameters, context: TaskContext) throws -> JSONValue {
        BLAS.setThreads(1)
        let (model, tokenizer, _) = try loadLanguageModel(p.checkpoint, parameter: "checkpoint")
        var prompt = tokenizer.encode(p.prompt)
        if tokenizer.level == .word && !p.prompt.hasSuffix("\n"), prompt.last == tokenizer.encode("\n").last {
            prompt.removeLast()  // continue the prompt's line rather than start a new one
        }
        if prompt.isEmpty { prompt = [tokenizer.encode("\n").first ?? 10] }
        var state = model.initialState(batch: 1)
        var logits = Tensor(shape: [1, model.config.vocabularySize])
        for t in prompt {
            if context.isCancelled { throw TaskError.cancelled }
            logits = model.step(tokens: [t], state: &state)
        }
        var rng = FWPRandom(seed: p.seed)
        var generated: [Int] = []
        var pending: [Int] = []
        let total = p.maxTokens, start = Date()
        for i in 0..<total {
            if context.isCancelled { throw TaskError.cancelled }
            let next = sample(logits.elements, temperature: p.temperature, topK: p.topK, rng: &rng)
            generated.append(next)
            pending.append(next)
            // Emit whole characters: hold back a byte sequence that is not yet valid UTF-8.
            let text = tokenizer.decode(pending)
            if tokenizer.level == .word || !text.contains("\u{FFFD}") || pending.count >= 4 || i == total - 1 {
                let rate = Double(i + 1) / max(Date().timeIntervalSince(start), 1e-9)
                context.emit(
                    ProgressEvent(kind: "text", step: i + 1, total: total, tokensPerSecond: rate, message: text))
                pending = []
            }
            logits = model.step(tokens: [next], state: &state)
        }
        return .object([
            "text": .string(tokenizer.decode(generated)), "tokens": .number(Double(generated.count)),
            "prompt_tokens": .number(Double(prompt.count)),
        ])
    }
}

/// Samples an index from logits with temperature and top-k (temperature 0: argmax).
func sample(_ logits: [Float], temperature: Double, topK: Int, rng: inout FWPRandom) -> Int {
    if temperature == 0 { return argmax(logits) }
    var candidates = Array(logits.indices)
    if topK > 0 && topK < logits.count {
        candidates.sort { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
        candidates = Array(candidates.prefix(topK))
    }
    let m = candidates.map { Double(logits[$0]) }.max()!
    let weights = candidates.map { Foundation.exp((Double(logits[$0]) - m) / temperature) }
    var u = rng.uniform() * weights.reduce(0, +)
    for (c, w) in zip(candidates, weights) {
        u -= w
        if u < 0 { return c }
    }
    return candidates.last!
}
