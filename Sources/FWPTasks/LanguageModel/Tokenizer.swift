import FWPProtocol
import Foundation

/// Turns text into token ids: bytes (vocabulary 256) or whitespace-separated words.
///
/// Word level follows the WikiText convention: the vocabulary is every word of the training file
/// (most frequent first, ties in lexicographic order), `<eos>` ends every line, and words not in
/// the vocabulary become `<unk>`.
public struct Tokenizer: Codable, Equatable, Sendable {
    public enum Level: String, Codable, Sendable { case byte, word }

    public var level: Level
    /// Word level only: id → word.
    public var vocabulary: [String]
    private var index: [String: Int] = [:]

    public static let unknown = "<unk>"
    public static let endOfLine = "<eos>"

    enum CodingKeys: String, CodingKey { case level, vocabulary }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        level = try c.decode(Level.self, forKey: .level)
        vocabulary = try c.decode([String].self, forKey: .vocabulary)
        buildIndex()
    }

    private init(level: Level, vocabulary: [String]) {
        self.level = level
        self.vocabulary = vocabulary
        buildIndex()
    }

    private mutating func buildIndex() {
        index = [:]
        for (i, w) in vocabulary.enumerated() { index[w] = i }
    }

    /// The byte-level tokenizer.
    public static let bytes = Tokenizer(level: .byte, vocabulary: [])

    /// A word-level tokenizer whose vocabulary is built from `text`: every word, or with `limit`
    /// the `limit − 1` most frequent ones and `<unk>` (which then stands for the rest).
    public static func words(trainingText text: String, limit: Int = 0) -> Tokenizer {
        var counts: [String: Int] = [Tokenizer.endOfLine: 0, Tokenizer.unknown: 0]
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            for w in line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }) {
                counts[String(w), default: 0] += 1
            }
            counts[Tokenizer.endOfLine, default: 0] += 1
        }
        var vocab = counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.map(\.key)
        if limit > 0 && vocab.count > limit {
            vocab = Array(vocab.lazy.filter { $0 != Tokenizer.unknown }.prefix(limit - 1)) + [Tokenizer.unknown]
        }
        return Tokenizer(level: .word, vocabulary: vocab)
    }

    /// Number of distinct ids.
    public var size: Int { level == .byte ? 256 : vocabulary.count }

    /// Token ids of a file's contents.
    public func encode(_ data: Data) -> [Int] {
        if level == .byte { return data.map { Int($0) } }
        return encode(String(decoding: data, as: UTF8.self))
    }

    /// Token ids of a text (word level: every line ends with `<eos>`; a final newline adds none).
    public func encode(_ text: String) -> [Int] {
        if level == .byte { return Array(text.utf8).map { Int($0) } }
        let unk = index[Tokenizer.unknown]!, eos = index[Tokenizer.endOfLine]!
        var ids: [Int] = []
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if lines.last == "" { lines.removeLast() }
        for line in lines {
            for w in line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }) {
                ids.append(index[String(w)] ?? unk)
            }
            ids.append(eos)
        }
        return ids
    }

    /// Text for token ids (bytes decoded as UTF-8 with replacement; words joined by spaces).
    public func decode(_ ids: [Int]) -> String {
        if level == .byte { return String(decoding: ids.map { UInt8(clamping: $0) }, as: UTF8.self) }
        var out = ""
        for id in ids {
            let w = id >= 0 && id < vocabulary.count ? vocabulary[id] : Tokenizer.unknown
            if w == Tokenizer.endOfLine {
                out += "\n"
            } else {
                if !out.isEmpty && !out.hasSuffix("\n") { out += " " }
                out += w
            }
        }
        return out
    }

    /// As JSON with sorted keys (stable bytes), for checkpoint metadata.
    public var json: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return String(decoding: try! e.encode(self), as: UTF8.self)
    }
}

/// Checks a text file before a job is queued: exists, is a regular readable file, not empty,
/// and (word level) valid UTF-8 in its first megabyte.
func checkTextFile(_ path: String, parameter: String, level: Tokenizer.Level) throws {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        throw ParameterError(parameter, "\(path) does not exist")
    }
    guard !isDirectory.boolValue else { throw ParameterError(parameter, "\(path) is a directory, not a text file") }
    guard let handle = FileHandle(forReadingAtPath: path) else {
        throw ParameterError(parameter, "\(path) is not readable")
    }
    defer { try? handle.close() }
    let head = (try? handle.read(upToCount: 1 << 20)) ?? Data()
    guard !head.isEmpty else { throw ParameterError(parameter, "\(path) is empty") }
    if level == .word {
        // Allow a multi-byte character cut at the 1 MiB boundary.
        var ok = String(data: head, encoding: .utf8) != nil
        var cut = 1
        while !ok && cut <= 3 && head.count == 1 << 20 {
            ok = String(data: head.dropLast(cut), encoding: .utf8) != nil
            cut += 1
        }
        guard ok else { throw ParameterError(parameter, "\(path) is not UTF-8 text") }
    }
}

/// Reads a whole text file as data, with the parameter name in the error.
func readTextFile(_ path: String, parameter: String) throws -> Data {
    guard let d = FileManager.default.contents(atPath: path) else {
        throw TaskError.failed(code: .unreadableInput, message: "parameter '\(parameter)': cannot read \(path)")
    }
    return d
}
