import FWPProtocol
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Prints a job's events for people, the same way in `fwpctl tail` and `fwp-task run`: on a
/// terminal a live progress bar that other events interrupt, elsewhere one line per event (and a
/// progress line at most every two seconds, plus the last); with `json`, each event's wire JSON
/// on a line of its own. Thread-safe.
public final class ProgressView: @unchecked Sendable {
    public let json: Bool
    let live: Bool
    private let lock = NSLock()
    private var barShown = false
    private var lastProgressLine = Date.distantPast

    /// `live` defaults to whether standard output is a terminal.
    public init(json: Bool, live: Bool = isatty(1) == 1) {
        self.json = json
        self.live = live
    }

    /// Shows a job's stored or published event.
    public func show(_ e: JobEvent) {
        lock.withLock {
            if json { return write(String(decoding: WireJSON.encode(e), as: UTF8.self) + "\n") }
            render(e.event, state: e.state, error: e.error, result: e.result)
        }
    }

    /// Shows a task's event (no job around it).
    public func show(_ e: ProgressEvent) {
        lock.withLock {
            if json { return write(String(decoding: WireJSON.encode(e), as: UTF8.self) + "\n") }
            render(e, state: nil, error: nil, result: nil)
        }
    }

    /// A log line on standard error, below the progress bar.
    public func log(_ level: String, _ message: String) {
        lock.withLock {
            clearBar()
            FileHandle.standardError.write(Data("[\(level)] \(message)\n".utf8))
        }
    }

    /// Ends the progress bar's line, if one is shown.
    public func finish() { lock.withLock { clearBar() } }

    private func render(_ e: ProgressEvent, state: JobState?, error: WireError?, result: JSONValue?) {
        switch e.kind {
        case "progress":
            let line = Self.bar(e)
            if live {
                write("\r\u{1B}[K" + line)
                barShown = true
            } else if Date().timeIntervalSince(lastProgressLine) >= 2 || e.step == e.total {
                write(line + "\n")
                lastProgressLine = Date()
            }
        case "text":
            clearBar()
            write(e.message ?? "")
        default:
            clearBar()
            write(Self.line(e, state: state, error: error, result: result) + "\n")
        }
    }

    private func clearBar() {
        if barShown {
            write("\n")
            barShown = false
        }
    }

    private func write(_ s: String) { FileHandle.standardOutput.write(Data(s.utf8)) }

    /// The progress bar of a `progress` event: steps, loss, metrics (but the best-so-far ones),
    /// throughput and time left.
    public static func bar(_ e: ProgressEvent) -> String {
        let step = e.step ?? 0, total = max(e.total ?? 1, 1), width = 24
        let filled = min(width, step * width / total)
        var s = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] \(step)/\(total)"
        if let l = e.loss { s += String(format: "  loss %.4f", l) }
        for (k, v) in e.metrics.sorted(by: { $0.key < $1.key }) where !k.hasPrefix("best") { s += "  \(k) \(format(v))" }
        if let r = e.tokensPerSecond { s += String(format: "  %.0f tok/s", r) }
        if let eta = e.etaSeconds { s += "  ETA " + duration(eta) }
        return s
    }

    /// One line for any other event: `[kind] state step loss metrics message error`, and the
    /// result on a line of its own.
    public static func line(_ e: ProgressEvent, state: JobState? = nil, error: WireError? = nil, result: JSONValue? = nil) -> String {
        var line = "[\(e.kind)]"
        if let s = state { line += " \(s.rawValue)" }
        if let s = e.step { line += " step \(s)" }
        if let l = e.loss { line += String(format: " loss %.4f", l) }
        for (k, v) in e.metrics.sorted(by: { $0.key < $1.key }) { line += " \(k) \(format(v))" }
        if let m = e.message, e.kind != "checkpoint" { line += " \(m)" }
        if let err = error { line += " \(err.code): \(err.message)" }
        if let r = result { line += "\nresult: \(r.jsonText)" }
        return line
    }

    /// Whole numbers without a fraction, others to four significant digits, the rest as JSON.
    public static func format(_ v: JSONValue) -> String {
        if case .number(let n) = v { return n.rounded() == n && abs(n) < 1e12 ? String(Int64(n)) : String(format: "%.4g", n) }
        return v.jsonText
    }

    /// m:ss, or h:mm:ss from an hour on.
    public static func duration(_ seconds: Double) -> String {
        let t = Int(seconds.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}
