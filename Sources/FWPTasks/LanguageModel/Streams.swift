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
