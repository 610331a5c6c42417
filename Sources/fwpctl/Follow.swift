import FWPProtocol
import Foundation
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// Follows a job until it ends: subscribe first, then fetch the stored history, then print live
/// events, dropping any whose sequence number was already seen and fetching the history again
/// when a gap appears. So no event is missed or printed twice. Exits with the job's outcome.
func follow(_ job: Int64, client: Client, options: Connection, json: Bool) throws {
    let sub = try client.context.socket(.sub)
    defer { sub.close() }
    if let keys = try options.curveKeys() { try sub.makeCurveClient(serverKey: options.serverKey!, keys: keys) }
    try sub.subscribe("job.\(job) ")
    try sub.subscribe("job.\(job)")
    try sub.connect(options.eventsEndpoint)
    let view = ProgressView(json: json)
    var lastSeq: Int64 = 0
    var final: JobState? = nil

    func fetchHistory() throws {
        var more = true
        while more {
            let reply = try client.call("events", ["job": .number(Double(job)), "after": .number(Double(lastSeq)), "limit": 1000]).0
            let events = try client.decode([JobEvent].self, reply["events"] ?? .array([]))
            for e in events where e.seq == lastSeq + 1 {
                view.show(e)
                lastSeq = e.seq
                if e.kind == "state", let s = e.state, s.isFinal { final = s }
            }
            more = events.count == 1000
        }
    }

    try fetchHistory()
    var quietSince = Date()
    while final == nil {
        if let frames = try sub.receive(timeoutMilliseconds: 500), frames.count == 2,
            String(decoding: frames[0], as: UTF8.self) == "job.\(job)",
            let e = try? WireJSON.decode(JobEvent.self, from: frames[1])
        {
            quietSince = Date()
            if e.seq <= lastSeq { continue }  // already shown from the history
            if e.seq > lastSeq + 1 {
                try fetchHistory()  // a gap: the stored history fills it, in order
                continue
            }
            view.show(e)
            lastSeq = e.seq
            if e.kind == "state", let s = e.state, s.isFinal { final = s }
        } else if Date().timeIntervalSince(quietSince) > 2 {
            // Nothing published for a while: check the store (also notices a restarted daemon).
            try fetchHistory()
            quietSince = Date()
        }
    }
    view.finish()
    switch final! {
    case .succeeded: return
    case .cancelled: throw CtlError(message: "job \(job) was cancelled", code: Exit.jobCancelled)
    default: throw CtlError(message: "job \(job) failed", code: Exit.jobFailed)
    }
}

/// Renders events: a live progress bar on a terminal, plain lines otherwise.
final class ProgressView {
    let json: Bool
    let live = isatty(1) == 1
    var barShown = false
    var lastPrinted = Date.distantPast

    init(json: Bool) { self.json = json }

    func show(_ e: JobEvent) {
        if json {
            print(String(decoding: WireJSON.encode(e), as: UTF8.self))
            fflush(nil)
            return
        }
        switch e.kind {
        case "progress":
            let line = bar(e)
            if live {
                print("\r\u{1B}[K" + line, terminator: "")
                barShown = true
            } else if Date().timeIntervalSince(lastPrinted) >= 2 || e.step == e.total {
                print(line)
                lastPrinted = Date()
            }
        case "text":
            clear()
            print(e.message ?? "", terminator: "")
        default:
            clear()
            var line = "[\(e.kind)]"
            if let s = e.state { line += " \(s.rawValue)" }
            if let s = e.step { line += " step \(s)" }
            if let l = e.loss { line += String(format: " loss %.4f", l) }
            for (k, v) in (e.metrics ?? [:]).sorted(by: { $0.key < $1.key }) { line += " \(k) \(format(v))" }
            if let m = e.message, e.kind != "checkpoint" { line += " \(m)" }
            if let err = e.error { line += " \(err.code): \(err.message)" }
            if let r = e.result { line += "\nresult: \(r.jsonText)" }
            print(line)
        }
        fflush(nil)
    }

    func finish() { clear() }

    private func clear() {
        if barShown {
            print("")
            barShown = false
        }
    }

    private func format(_ v: JSONValue) -> String {
        if case .number(let n) = v { return n.rounded() == n && abs(n) < 1e12 ? String(Int64(n)) : String(format: "%.4g", n) }
        return v.jsonText
    }

    private func bar(_ e: JobEvent) -> String {
        let step = e.step ?? 0, total = max(e.total ?? 1, 1), width = 24
        let filled = min(width, step * width / total)
        var s = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] \(step)/\(total)"
        if let l = e.loss { s += String(format: "  loss %.4f", l) }
        for (k, v) in (e.metrics ?? [:]).sorted(by: { $0.key < $1.key }) where !k.hasPrefix("best") { s += "  \(k) \(format(v))" }
        if let r = e.tokensPerSecond { s += String(format: "  %.0f tok/s", r) }
        if let eta = e.etaSeconds {
            let t = Int(eta.rounded())
            s += String(format: "  ETA %d:%02d", t / 60, t % 60)
        }
        return s
    }
}
