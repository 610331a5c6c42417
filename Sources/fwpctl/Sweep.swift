import ArgumentParser
import FWPProtocol
import Foundation
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// Sends `command` with `name` as a preset, or, when no preset has that name, as a task module.
func callWithPresetOrTask(_ client: Client, _ command: String, _ body: [String: JSONValue], name: String) throws
    -> JSONValue
{
    var body = body
    body["preset"] = .string(name)
    do {
        return try client.call(command, body).0
    } catch let e as CtlError where e.message.hasPrefix("unknown_task: no preset") {
        body["preset"] = nil
        body["task"] = .string(name)
        return try client.call(command, body).0
    }
}

/// `--slurm key=value` settings as the request's `slurm` object (every value a string but
/// cpus_per_task's).
func slurmObject(_ settings: [String]) throws -> JSONValue {
    var object: [String: JSONValue] = [:]
    for s in settings {
        guard let eq = s.firstIndex(of: "="), eq != s.startIndex else {
            throw CtlError(message: "--slurm expects key=value, got '\(s)'", code: 2)
        }
        let key = String(s[..<eq]), raw = String(s[s.index(after: eq)...])
        object[key] = key == "cpus_per_task" ? ((try? JSONValue.parse(raw)) ?? .string(raw)) : .string(raw)
    }
    return .object(object)
}

/// `key=value` with the value parsed as JSON where it parses (numbers, true/false), else a string.
func keyValue(_ text: String, flag: String) throws -> (String, JSONValue) {
    guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
        throw CtlError(message: "\(flag) expects key=value, got '\(text)'", code: 2)
    }
    let raw = String(text[text.index(after: eq)...])
    return (String(text[..<eq]), (try? JSONValue.parse(raw)) ?? .string(raw))
}

struct Sweep: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Queue a sweep: one job per point of a grid and/or random search, with seeds.",
        discussion: """
            fwpctl sweep retrieval-capacity --grid keys=20,40,60 --grid attention=linear,dpfp-1 --seeds 2
            fwpctl sweep lm-bytes-small --random lr=0.0001:0.01:log --random-count 8
            """)
    @OptionGroup var options: ConnectionOptions
    @Argument(help: "A preset (tasks/NAME.json) or a task module.") var name: String
    @Option(name: .customLong("set"), help: "A fixed parameter key=value (repeatable).") var fixed: [String] = []
    @Option(help: "A swept parameter and its values, key=v1,v2,… (repeatable).") var grid: [String] = []
    @Option(help: "Seeds per point: seed = 1…N.") var seeds: Int?
    @Option(
        help: "A randomly searched parameter, key=min:max (add :log for log-uniform, :int to round) (repeatable).")
    var random: [String] = []
    @Option(help: "Random samples to draw.") var randomCount: Int?
    @Option(help: "Seed of the random search.") var randomSeed: Int?
    @Option(help: "Points that may run at once (default: fwpd's workers).") var maxRunning: Int?
    @Option(help: "Higher runs first.") var priority = 0
    @Option(help: "Idempotency key: resubmitting with it returns the first sweep.") var key: String?
    @Option(help: "Attempts before a point fails.") var maxAttempts: Int?
    @Option(
        name: .customLong("slurm"),
        help: "Under the Slurm executor: partition, time_limit, memory or cpus_per_task as key=value (repeatable).")
    var slurm: [String] = []
    @Flag(help: "Follow the sweep after submitting (like tail --sweep).") var tail = false
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try perform {
            var body: [String: JSONValue] = ["priority": .number(Double(priority))]
            var parameters: [String: JSONValue] = [:]
            for f in fixed {
                let (k, v) = try keyValue(f, flag: "--set")
                parameters[k] = v
            }
            body["parameters"] = .object(parameters)
            if !grid.isEmpty {
                var axes: [String: JSONValue] = [:]
                for g in grid {
                    guard let eq = g.firstIndex(of: "="), eq != g.startIndex else {
                        throw CtlError(message: "--grid expects key=v1,v2,…, got '\(g)'", code: 2)
                    }
                    let values = g[g.index(after: eq)...].split(separator: ",", omittingEmptySubsequences: false).map {
                        (try? JSONValue.parse(String($0))) ?? .string(String($0))
                    }
                    axes[String(g[..<eq])] = .array(values)
                }
                body["grid"] = .object(axes)
            }
            if !random.isEmpty || randomCount != nil {
                var ranges: [String: JSONValue] = [:]
                for r in random {
                    guard let eq = r.firstIndex(of: "="), eq != r.startIndex else {
                        throw CtlError(message: "--random expects key=min:max[:log][:int], got '\(r)'", code: 2)
                    }
                    let parts = r[r.index(after: eq)...].split(separator: ":").map(String.init)
                    guard parts.count >= 2, let lo = Double(parts[0]), let hi = Double(parts[1]),
                        parts.dropFirst(2).allSatisfy({ $0 == "log" || $0 == "int" })
                    else {
                        throw CtlError(message: "--random expects key=min:max[:log][:int], got '\(r)'", code: 2)
                    }
                    ranges[String(r[..<eq])] = .object([
                        "min": .number(lo), "max": .number(hi), "log": .bool(parts.contains("log")),
                        "integer": .bool(parts.contains("int")),
                    ])
                }
                var spec: [String: JSONValue] = ["count": .number(Double(randomCount ?? 1)), "ranges": .object(ranges)]
                if let randomSeed { spec["seed"] = .number(Double(randomSeed)) }
                body["random"] = .object(spec)
            }
            if let seeds { body["seeds"] = .number(Double(seeds)) }
            if let maxRunning { body["max_running"] = .number(Double(maxRunning)) }
            if let key { body["idempotency_key"] = .string(key) }
            if let maxAttempts { body["max_attempts"] = .number(Double(maxAttempts)) }
            if !slurm.isEmpty { body["slurm"] = try slurmObject(slurm) }
            let client = try Client(options.connection)
            let reply = try callWithPresetOrTask(client, "sweep", body, name: name)
            let sweep = try client.decode(SweepInfo.self, reply["sweep"] ?? .null)
            if json {
                printJSON(reply)
            } else {
                print(
                    (reply["created"] == .bool(true) ? "submitted sweep " : "already submitted with this key: sweep ")
                        + "\(sweep.id): \(sweep.points) points over \(sweep.swept.joined(separator: ", ")), at most \(sweep.maxRunning) at once"
                )
            }
            if tail { try followSweep(sweep.id, client: client, options: options.connection) }
        }
    }
}

struct SweepStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep-status", abstract: "A sweep's points: one row each, with their values, state and result.")
    @OptionGroup var options: ConnectionOptions
    @Argument var sweep: Int
    @Option(help: "The result metric to show (default: the task's main best_ metric).") var metric: String?
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        try perform {
            let client = try Client(options.connection)
            let reply = try client.call("sweep_status", ["sweep": .number(Double(sweep))]).0
            if json { return printJSON(reply) }
            print(sweepTable(reply, metric: metric).joined(separator: "\n"))
        }
    }
}

/// The result metric a table shows: the one asked for, else the task's headline `best_` metric.
func headlineMetric(_ results: [JSONValue]) -> String? {
    let names = Set(results.flatMap { r -> [String] in r.objectValue.map { Array($0.keys) } ?? [] })
    for preferred in ["best_valid_bits_per_byte", "best_valid_perplexity", "best_eval_loss", "best_valid_loss"]
    where names.contains(preferred) {
        return preferred
    }
    return names.filter { $0.hasPrefix("best_") }.sorted().first
}

/// A sweep's status reply as text: a summary line, then one row per point.
func sweepTable(_ reply: JSONValue, metric: String?, progress: [Int64: String] = [:]) -> [String] {
    let sweep = reply["sweep"] ?? .null
    var swept: [String] = []
    if case .array(let names) = sweep["swept"] ?? .null { swept = names.compactMap(\.stringValue) }
    var points: [JSONValue] = []
    if case .array(let p) = reply["points"] ?? .null { points = p }
    let metric = metric ?? headlineMetric(points.compactMap { $0["result"] })
    let counts = (sweep["counts"]?.objectValue ?? [:]).sorted { $0.key < $1.key }
        .map { "\(Int($0.value.doubleValue ?? 0)) \($0.key)" }.joined(separator: ", ")
    var lines = [
        "sweep \(Int(sweep["id"]?.doubleValue ?? 0)): \(sweep["preset"]?.stringValue ?? sweep["task"]?.stringValue ?? "?"), \(points.count) points (\(counts)), \(sweep["state"]?.stringValue ?? "?")"
    ]
    func cell(_ v: JSONValue?) -> String {
        guard let v, v != .null else { return "-" }
        if let s = v.stringValue { return s }
        if let d = v.doubleValue {
            return d.rounded() == d && abs(d) < 1e15 ? String(Int64(d)) : String(format: "%.6g", d)
        }
        return v.jsonText
    }
    let header = ["job"] + swept + ["state", metric ?? "result"]
    var rows = points.map { p -> [String] in
        let id = Int64(p["job"]?.doubleValue ?? 0)
        var state = p["state"]?.stringValue ?? "?"
        if state == "running", let live = progress[id] { state += " " + live }
        return [String(id)] + swept.map { cell(p["values"]?[$0]) } + [state, cell(metric.flatMap { p["result"]?[$0] })]
    }
    rows.insert(header, at: 0)
    let widths = header.indices.map { i in rows.map { $0[i].count }.max() ?? 0 }
    for r in rows {
        lines.append(
            r.enumerated().map { i, c in
                i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }
            .joined(separator: "  "))
    }
    return lines
}

/// One line per point: `job 3 keys=8 rule=sum: running step 50/300 loss 0.2`.
func pointLines(_ reply: JSONValue, progress: [Int64: String]) -> [String] {
    var swept: [String] = []
    if case .array(let names) = reply["sweep"]?["swept"] ?? .null { swept = names.compactMap(\.stringValue) }
    guard case .array(let points) = reply["points"] ?? .null else { return [] }
    return points.map { p in
        let id = Int64(p["job"]?.doubleValue ?? 0)
        let values = swept.map { "\($0)=\(p["values"]?[$0].map { $0.stringValue ?? $0.jsonText } ?? "-")" }
        let state = p["state"]?.stringValue ?? "?"
        return "job \(id) \(values.joined(separator: " ")): \(state)"
            + (state == "running" ? progress[id].map { " " + $0 } ?? "" : "")
    }
}

/// Follows a sweep until no point is queued or running: on a terminal its table, redrawn in place
/// whenever something changes, with each running point's latest step and loss from the event
/// stream; elsewhere a line per point whenever its state or progress changes, then the table. Exits 0 when every point succeeded, 4 when one failed, 5 when cancelled.
func followSweep(_ id: Int64, client: Client, options: Connection) throws {
    let sub = try client.context.socket(.sub)
    defer { sub.close() }
    if let keys = try options.curveKeys() { try sub.makeCurveClient(serverKey: options.serverKey!, keys: keys) }
    try sub.subscribe("job.")
    try sub.connect(options.eventsEndpoint)
    let live = isatty(1) == 1
    var progress: [Int64: String] = [:]
    var shown: [String] = []
    var lastPoll = Date.distantPast
    var reply = JSONValue.null
    while true {
        if Date().timeIntervalSince(lastPoll) >= 1 {
            reply = try client.call("sweep_status", ["sweep": .number(Double(id))]).0
            lastPoll = Date()
        }
        if live {
            let lines = sweepTable(reply, metric: nil, progress: progress)
            if lines != shown {
                if !shown.isEmpty { print("\u{1B}[\(shown.count)A\u{1B}[J", terminator: "") }
                print(lines.joined(separator: "\n"))
                shown = lines
            }
        } else {
            // Not a terminal (a log, a pipe): a line whenever a point's state or progress changes.
            let lines = pointLines(reply, progress: progress)
            for l in lines where !shown.contains(l) { print(l) }
            shown = lines
        }
        fflush(nil)
        if reply["sweep"]?["state"]?.stringValue != "running" { break }
        if let frames = try sub.receive(timeoutMilliseconds: 250), frames.count == 2,
            let e = try? WireJSON.decode(JobEvent.self, from: frames[1]), e.kind == "progress" || e.kind == "eval",
            let step = e.step
        {
            let ids: [Int64] = {
                guard case .array(let p) = reply["points"] ?? .null else { return [] }
                return p.compactMap { $0["job"]?.doubleValue.map { Int64($0) } }
            }()
            if ids.contains(e.job) {
                progress[e.job] =
                    "step \(step)\(e.total.map { "/\($0)" } ?? "")\(e.loss.map { String(format: " loss %.4g", $0) } ?? "")"
            }
        }
    }
    if !live { print(sweepTable(reply, metric: nil).joined(separator: "\n")) }
    let counts = reply["sweep"]?["counts"]?.objectValue ?? [:]
    if reply["sweep"]?["cancel_requested"] == .bool(true) {
        throw CtlError(message: "sweep \(id) was cancelled", code: Exit.jobCancelled)
    }
    if (counts["failed"]?.doubleValue ?? 0) > 0 || (counts["cancelled"]?.doubleValue ?? 0) > 0 {
        throw CtlError(message: "sweep \(id): not every point succeeded", code: Exit.jobFailed)
    }
}
