import FWPCore
import FWPTasks
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A task context over a state directory: checkpoints in `<state>/checkpoints`, events printed.
final class DirectoryContext: TaskContext, @unchecked Sendable {
    let directory: URL
    let threads: Int
    let keep: Int
    let printer: EventPrinter
    private let lock = NSLock()
    private var cancelled = false

    init(directory: URL, threads: Int, keep: Int = 3, printer: EventPrinter) throws {
        self.directory = directory
        self.threads = threads
        self.keep = keep
        self.printer = printer
        try FileManager.default.createDirectory(at: checkpoints, withIntermediateDirectories: true)
    }

    var checkpoints: URL { directory.appendingPathComponent("checkpoints") }

    var isCancelled: Bool { lock.withLock { cancelled } }
    func cancel() { lock.withLock { cancelled = true } }

    func emit(_ event: ProgressEvent) { printer.print(event) }

    func log(_ level: TaskLogLevel, _ message: String) { printer.log(level, message) }

    /// Step files, newest first.
    func stepFiles() -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: checkpoints.path)) ?? []
        return names.filter { $0.hasPrefix("step-") && $0.hasSuffix(".safetensors") }.sorted(by: >).map { checkpoints.appendingPathComponent($0) }
    }

    func saveCheckpoint(_ data: Data, step: Int, best: Bool) throws {
        let url = checkpoints.appendingPathComponent(String(format: "step-%010d.safetensors", step))
        try writeFileDurably(data, to: url)
        if best { try writeFileDurably(data, to: checkpoints.appendingPathComponent("best.safetensors")) }
        for old in stepFiles().dropFirst(keep) { try? FileManager.default.removeItem(at: old) }
    }

    func latestCheckpoint() throws -> Data? {
        for url in stepFiles() {
            guard let data = FileManager.default.contents(atPath: url.path) else { continue }
            do {
                try Safetensors.verify(data)
                return data
            } catch {
                log(.warning, "skipping \(url.lastPathComponent): \(error)")
            }
        }
        return nil
    }
}

/// Prints events: a live status line on a terminal, one line per event otherwise.
final class EventPrinter: @unchecked Sendable {
    let json: Bool
    let live = isatty(1) == 1
    private let lock = NSLock()
    private var statusShown = false

    init(json: Bool) { self.json = json }

    func print(_ e: ProgressEvent) {
        lock.withLock {
            if json {
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                write(String(decoding: (try? enc.encode(e)) ?? Data(), as: UTF8.self) + "\n")
                return
            }
            switch e.kind {
            case "progress":
                let line = Self.describe(e)
                if live {
                    write("\r\u{1B}[K" + line)
                    statusShown = true
                } else if let step = e.step, let total = e.total, step == total || step % max(1, total / 20) == 0 {
                    write(line + "\n")
                }
            case "text":
                clearStatus()
                write(e.message ?? "")
            default:
                clearStatus()
                var line = "[\(e.kind)]"
                if let s = e.step { line += " step \(s)" }
                if let l = e.loss { line += String(format: " loss %.4f", l) }
                for (k, v) in e.metrics.sorted(by: { $0.key < $1.key }) { line += " \(k) \(Self.format(v))" }
                if let m = e.message { line += " \(m)" }
                write(line + "\n")
            }
        }
    }

    func log(_ level: TaskLogLevel, _ message: String) {
        lock.withLock {
            clearStatus()
            FileHandle.standardError.write(Data("[\(level.rawValue)] \(message)\n".utf8))
        }
    }

    func finish() { lock.withLock { clearStatus() } }

    private func clearStatus() {
        if statusShown {
            write("\n")
            statusShown = false
        }
    }

    private func write(_ s: String) { FileHandle.standardOutput.write(Data(s.utf8)) }

    static func format(_ v: JSONValue) -> String {
        if case .number(let n) = v { return n.rounded() == n && abs(n) < 1e12 ? String(Int64(n)) : String(format: "%.4g", n) }
        return v.description
    }

    static func describe(_ e: ProgressEvent) -> String {
        let step = e.step ?? 0, total = max(e.total ?? 1, 1)
        let width = 24, filled = min(width, step * width / total)
        var line = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "]"
        line += " \(step)/\(total)"
        if let l = e.loss { line += String(format: "  loss %.4f", l) }
        for (k, v) in e.metrics.sorted(by: { $0.key < $1.key }) where k != "best_eval_loss" && k != "best_valid_loss" {
            line += "  \(k) \(format(v))"
        }
        if let r = e.tokensPerSecond { line += String(format: "  %.0f/s", r) }
        if let eta = e.etaSeconds { line += "  ETA " + formatDuration(eta) }
        return line
    }

    static func formatDuration(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}
