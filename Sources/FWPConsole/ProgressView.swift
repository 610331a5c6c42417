import FWPProtocol
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Prints a job's events for people, the same way in `fwpctl tail` and `fwp-task run`: on a
/// terminal a live progress bar that other events interrupt, elsewhere one line per event (and a
/// progress line at most every two seconds, plus the last); with `json`, each event's wire JSON
/// on a line of its own. Thread-safe.
public final class ProgressView: Sendable {
    public let json: Bool
    let live: Bool
    private struct State {
        var barShown = false
        var lastProgressLine = Date.distantPast
    }
    private let state = Mutex(State())

    /// `live` defaults to whether standard output is a terminal.
    public init(json: Bool, live: Bool = isatty(1) == 1) {
        self.json = json
        self.live = live
    }

    /// Shows a job's stored or published event.
    public func show(_ e: JobEvent) {
        state.withLock { state in
            if json { return write(String(decoding: WireJSON.encode(e), as: UTF8.self) + "\n") }
            render(e.event, jobState: e.state, error: e.error, result: e.result, &state)
        }
    }

    /// Shows a task's event (no job around it).
    public func show(_ e: ProgressEvent) {
        state.withLock { state in
            if json { return write(String(decoding: WireJSON.encode(e), as: UTF8.self) + "\n") }
            render(e, jobState: nil, error: nil, result: nil, &state)
        }
    }

    /// A log line on standard error, below the progress bar.
    public func log(_ level: String, _ message: String) {
        state.withLock { state in
            clearBar(&state)
            FileHandle.standardError.write(Data("[\(level)] \(message)\n".utf8))
        }
    }

    /// Ends the progress bar's line, if one is shown.
    public func finish() { state.withLock { clearBar(&$0) } }

    private func render(
        _ e: ProgressEvent, jobState: JobState?, error: WireError?, result: JSONValue?, _ state: inout State
    ) {
        switch e.kind {
        case "progress":
            let line = Self.bar(e)
            if live {
                write("\r\u{1B}[K" + line)
                state.barShown = true
            } else if Date().timeIntervalSince(state.lastProgressLine) >= 2 || e.step == e.total {
                write(line + "\n")
                state.lastProgressLine = Date()
            }
        case "text":
            clearBar(&state)
            write(e.message ?? "")
        default:
            clearBar(&state)
            write(Self.line(e, state: jobState, error: error, result: result) + "\n")
        }
    }

    private func clearBar(_ state: inout State) {
        if state.barShown {
            write("\n")
            state.barShown = false
        }
    }

    private func write(_ s: String) { FileHandle.standardOutput.write(Data(s.utf8)) }

    /// The progress bar of a `progress` event: steps, loss, metrics (but the best-so-far ones),
    /// throughput and time left.
    public static func bar(_ e: ProgressEvent) -> String {
        let step = e.step ?? 0, total = max(e.total ?? 1, 1), width = 24
        let filled = min(width, step * width / total)
        var s =
            "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            + "] \(step)/\(total)"
        if let l = e.loss { s += String(format: "  loss %.4f", l) }
        for (k, v) in e.metrics.sorted(by: { $0.key < $1.key }) where !k.hasPrefix("best") {
            s += "  \(k) \(format(v))"
        }
        if let r = e.tokensPerSecond { s += String(format: "  %.0f tok/s", r) }
        if let eta = e.etaSeconds { s += "  ETA " + duration(eta) }
        return s
    }

    /// One line for any other event: `[kind] state step loss metrics message error`, and the
    /// result on a line of its own.
    public static func line(
        _ e: ProgressEvent, state: JobState? = nil, error: WireError? = nil, result: JSONValue? = nil
    ) -> String {
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
        if case .number(let n) = v {
            return n.rounded() == n && abs(n) < 1e12 ? String(Int64(n)) : String(format: "%.4g", n)
        }
        return v.jsonText
    }

    /// m:ss, or h:mm:ss from an hour on.
    public static func duration(_ seconds: Double) -> String {
        let t = Int(seconds.rounded())
        return t >= 3600
            ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}
