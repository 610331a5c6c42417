import FWPConsole
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
            let reply = try client.call(
                "events", ["job": .number(Double(job)), "after": .number(Double(lastSeq)), "limit": 1000]
            ).0
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
