import FWPCore
import FWPProtocol
import Foundation

/// A token stream cut into B contiguous rows, read L tokens at a time (with the next token as target).
struct BatchedStream {
    let rows: [[Int]]
    let segment: Int

    init(tokens: [Int], batch: Int, segment: Int) {
        let n = tokens.count / batch
        rows = (0..<batch).map { Array(tokens[($0 * n)..<($0 * n + n)]) }
        self.segment = segment
    }

    /// Full segments per row (each needs L + 1 tokens).
    var segmentsPerRow: Int { rows.isEmpty ? 0 : max(0, (rows[0].count - 1) / segment) }

    /// Inputs and targets of segment i (batch-major).
    func batch(_ i: Int) -> (inputs: [Int], targets: [Int]) {
        var x: [Int] = [], y: [Int] = []
        x.reserveCapacity(rows.count * segment)
        y.reserveCapacity(rows.count * segment)
        for r in rows {
            x += r[(i * segment)..<(i * segment + segment)]
            y += r[(i * segment + 1)..<(i * segment + segment + 1)]
        }
        return (x, y)
    }
}

/// Mean cross-entropy of a model over a whole stream, segment by segment, optionally carrying
/// fast weights (and softmax caches) across segments. Checks `cancelled` between segments.
func evaluateStream(
    _ model: LanguageModel, tokens: [Int], batch: Int, segment: Int, carry: Bool, maxSegments: Int = 0,
    cancelled: () -> Bool = { false }
) throws -> (loss: Double, tokens: Int) {
    let stream = BatchedStream(tokens: tokens, batch: batch, segment: segment)
    var count = stream.segmentsPerRow
    if maxSegments > 0 { count = min(count, maxSegments) }
    guard count > 0 else {
        throw TaskError.failed(
            code: .textTooShort, message: "the evaluation text holds too few tokens for \(batch) rows of \(segment + 1)"
        )
    }
    var state: ModelState? = carry ? model.initialState(batch: batch) : nil
    var total = 0.0
    for i in 0..<count {
        if cancelled() { throw TaskError.cancelled }
        let (x, y) = stream.batch(i)
        var s = carry ? state : nil
        total += model.loss(tokens: x, targets: y, batch: batch, state: &s) * Double(x.count)
        if carry { state = s }
    }
    let n = count * batch * segment
    return (total / Double(n), n)
}

/// The metrics people read for a mean loss in nats: perplexity (words) or bits per byte (bytes).
func languageMetrics(_ loss: Double, level: Tokenizer.Level) -> [String: JSONValue] {
    level == .word
        ? ["perplexity": .number(Foundation.exp(loss))] : ["bits_per_byte": .number(loss / Foundation.log(2.0))]
}

/// Mean cross-entropy over the same targets as `evaluateStream` (the stream cut into `rows` rows of
/// `maxSegments` segments of `window` tokens), but with every target scored after a full window of
/// context where the row has one: windows of `window` tokens end every `stride` tokens along each
/// row, each starting from a fresh state at position 0; the first scores all its targets, each
/// later one its last `stride`. With `stride` 1 this is the reference code's sliding-window
/// evaluation of a limited-context Transformer (every token after the first window sees exactly
/// `window` tokens); it costs about window / stride forward tokens per scored token.
func evaluateSliding(
    _ model: LanguageModel, tokens: [Int], rows: Int, window: Int, stride: Int, maxSegments: Int = 0,
    windowsPerCall: Int = 16, cancelled: () -> Bool = { false }
) throws -> (loss: Double, tokens: Int) {
    precondition(stride >= 1 && stride <= window, "stride must be in 1...window")
    let stream = BatchedStream(tokens: tokens, batch: rows, segment: window)
    var count = stream.segmentsPerRow
    if maxSegments > 0 { count = min(count, maxSegments) }
    guard count > 0 else {
        throw TaskError.failed(
            code: .textTooShort, message: "the evaluation text holds too few tokens for \(rows) rows of \(window + 1)")
    }
    // (row, end, scored): the window reads row[end − window ..< end] and scores its last `scored`
    // targets, row[end − scored + 1 ... end].
    let length = count * window
    var windows: [(row: Int, end: Int, scored: Int)] = []
    for r in 0..<rows {
        windows.append((r, window, window))
        var previous = window
        while previous < length {
            let end = min(previous + stride, length)
            windows.append((r, end, end - previous))
            previous = end
        }
    }
    let vocabulary = model.config.vocabularySize
    var total = 0.0, scoredCount = 0
    var rng = FWPRandom(seed: 0)
    var start = 0
    while start < windows.count {
        if cancelled() { throw TaskError.cancelled }
        let part = windows[start..<min(start + windowsPerCall, windows.count)]
        var x: [Int] = []
        x.reserveCapacity(part.count * window)
        for w in part { x += stream.rows[w.row][(w.end - window)..<w.end] }
        var none: ModelState? = nil
        let (logits, _) = model.forward(tokens: x, batch: part.count, state: &none, training: false, rng: &rng)
        logits.storage.withUnsafeBufferPointer { l in
            for (b, w) in part.enumerated() {
                for t in (window - w.scored)..<window {
                    let row = l.baseAddress! + (b * window + t) * vocabulary
                    var m = -Float.infinity
                    for v in 0..<vocabulary { m = max(m, row[v]) }
                    var s = 0.0
                    for v in 0..<vocabulary { s += Foundation.exp(Double(row[v] - m)) }
                    let target = stream.rows[w.row][w.end - window + t + 1]
                    total += Double(m) + Foundation.log(s) - Double(row[target])
                }
                scoredCount += w.scored
            }
        }
        start += part.count
    }
    return (total / Double(scoredCount), scoredCount)
}
