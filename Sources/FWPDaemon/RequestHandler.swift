import FWPCore
import FWPStore
import FWPTasks
import Foundation

/// What the request handler asks of the running daemon besides the store: publish an event,
/// start claiming queued work, stop a running job, refresh the job gauges. The scheduler provides
/// it; tests provide a recorder.
protocol JobControl: AnyObject, Sendable {
    func publish(_ event: JobEvent)
    func wake()
    /// Asks the running job `id` to stop; false when it is not running here.
    func cancel(_ id: Int64) -> Bool
    func updateGauges()
    /// Where jobs run (`health` reports it).
    var executorName: String { get }
    /// What `health` reports of the executor's back end (Slurm: whether it answers).
    var executorStatus: JSONValue? { get }
}

/// A reply: the JSON body and, for `export`, the checkpoint's bytes as a fourth frame.
struct Reply {
    var body: [UInt8]
    var attachment: [UInt8]? = nil
}

/// Answers requests without sockets: one method per `Command`, each validating its body before
/// it reads or changes anything. `Router` frames requests and replies around it; tests call it
/// directly.
///
/// Not thread-safe: one thread (the router's) calls `handle`.
final class RequestHandler: @unchecked Sendable {
    let config: DaemonConfig
    let store: JobStore
    let control: any JobControl
    let registry: TaskRegistry
    let presets: [String: Preset]
    let metrics: DaemonMetrics
    /// Whether CURVE is on (reported by `health`).
    let curve: Bool
    /// Where path parameters may point.
    let dataRoots: DataRoots
    let started = Date()
    /// The dashboard's address once its server is listening (`health` and `token` report it).
    let dashboard: DashboardAddress
    /// The last `status` reply per job, reused while the job is unchanged.
    private var statusReplies: [Int64: (JobInfo, [UInt8])] = [:]

    init(
        config: DaemonConfig, store: JobStore, control: any JobControl, registry: TaskRegistry,
        presets: [String: Preset],
        metrics: DaemonMetrics, curve: Bool, dashboard: DashboardAddress = DashboardAddress()
    ) {
        self.dashboard = dashboard
        self.config = config
        self.store = store
        self.control = control
        self.registry = registry
        self.presets = presets
        self.metrics = metrics
        self.curve = curve
        dataRoots = DataRoots(config: config)
    }

    /// The least role each command needs; `cancel`, `checkpoints` and `export` also need the job
    /// to be the principal's own unless the principal is an admin, and `exec` jobs need an admin.
    static func requiredRole(_ command: Command) -> Role {
        switch command {
        case .status, .list, .events, .tasks, .health, .metrics, .sweepStatus, .token: return .viewer
        case .submit, .cancel, .checkpoints, .export, .sweep: return .user
        }
    }

    /// Handles one request's command frame and body from `principal`; every failure is a `WireError`.
    func handle(command name: String, body raw: [UInt8], principal: Principal) -> Result<Reply, WireError> {
        guard let command = Command(rawValue: name) else {
            metrics.request("unknown")
            return .failure(
                WireError(
                    .unknownCommand,
                    "unknown command '\(String(name.prefix(64)))'; known: \(FWPWire.commands.joined(separator: ", "))"))
        }
        metrics.request(command.rawValue)
        return Result {
            let needed = Self.requiredRole(command)
            guard principal.role >= needed else {
                throw Self.forbidden("\(command.rawValue) needs role \(needed.rawValue); \(principal) has not", needed)
            }
            let parsed: JSONValue
            do { parsed = try JSONValue.parse(Data(raw)) } catch {
                throw WireError(.invalidJSON, "the body is not valid JSON")
            }
            guard case .object(let fields) = parsed else {
                throw WireError(.invalidJSON, "the body must be a JSON object, got \(parsed.typeName)")
            }
            return try handle(command, RequestBody(fields), principal)
        }.mapError { ($0 as? WireError) ?? WireError(.internal, "\($0)") }
    }

    /// One case per command: adding a command to `Command` makes this switch incomplete.
    func handle(_ command: Command, _ body: RequestBody, _ principal: Principal) throws -> Reply {
        switch command {
        case .submit: return Reply(body: try submit(body, by: principal))
        case .status: return Reply(body: try status(body))
        case .list: return Reply(body: try list(body))
        case .cancel: return Reply(body: try cancel(body, by: principal))
        case .events: return Reply(body: try events(body))
        case .checkpoints: return Reply(body: try checkpoints(body, by: principal))
        case .export: return try export(body, by: principal)
        case .tasks: return Reply(body: try tasks(body))
        case .health: return Reply(body: try health(body))
        case .metrics: return Reply(body: try metricsText(body))
        case .sweep: return Reply(body: try sweep(body, by: principal))
        case .sweepStatus: return Reply(body: try sweepStatus(body))
        case .token: return Reply(body: try token(body, by: principal))
        }
    }

    static func forbidden(_ message: String, _ role: Role) -> WireError {
        WireError(.forbidden, message, details: ["required_role": .string(role.rawValue)])
    }

    /// Refuses `action` on a job that is not `principal`'s own, unless it is an admin.
    private func requireOwnJob(_ job: JobInfo, _ principal: Principal, _ action: String) throws {
        guard principal.role == .admin || (job.owner != nil && job.owner == principal.name) else {
            throw Self.forbidden(
                "\(action) job \(job.id) of another principal needs role admin; \(principal) has not", .admin)
        }
    }

    /// `exec` runs programs as the daemon's user: only for admins, only when the configuration
    /// lists programs, and only those.
    func checkExec(_ values: [String: JSONValue], by principal: Principal) throws {
        guard principal.role >= .admin else {
            throw Self.forbidden("exec jobs need role admin; \(principal) has not", .admin)
        }
        guard !config.execPrograms.isEmpty else {
            throw WireError(
                .forbidden, "the exec task is off: exec_programs lists no programs", details: ["required_role": "admin"]
            )
        }
        let program = values["program"]?.stringValue ?? ""
        guard config.allowsExec(program: program) else {
            throw WireError(
                .invalidParameter, "parameter 'program': \(program) is not among exec_programs",
                details: ["parameter": "program"])
        }
    }

    /// What submit and sweep share: the task module (named, or a preset's), the given parameters
    /// over the preset's, and the Slurm settings over the preset's (checked).
    func resolve(_ b: RequestBody) throws -> (
        module: any TaskModule, preset: String?, given: [String: JSONValue], slurm: [String: JSONValue]?
    ) {
        let taskName = try b.string("task"), presetName = try b.string("preset")
        guard (taskName == nil) != (presetName == nil) else {
            throw WireError(.invalidRequest, "give exactly one of 'task' and 'preset'")
        }
        var given = try b.object("parameters") ?? [:]
        let askedSlurm = try b.object("slurm")
        if askedSlurm != nil && config.executor != "slurm" {
            throw WireError(
                .invalidRequest, "field 'slurm' needs the Slurm executor; this fwpd runs jobs on its own machine")
        }
        var slurm = askedSlurm
        let module: any TaskModule
        if let presetName {
            guard let p = presets[presetName] else {
                throw WireError(
                    .unknownTask, "no preset '\(presetName)'; presets: \(presets.keys.sorted().joined(separator: ", "))"
                )
            }
            guard let m = registry.module(named: p.module) else {
                throw WireError(
                    .unknownTask, "preset '\(presetName)' names task module '\(p.module)', which is not registered")
            }
            module = m
            given = p.merged(with: given)
            if let defaults = p.slurm, config.executor == "slurm" {
                slurm = defaults.merging(slurm ?? [:]) { _, new in new }
            }
        } else {
            guard let name = taskName, let m = registry.module(named: name) else {
                throw WireError(
                    .unknownTask,
                    "no task module '\(taskName ?? "")'; modules: \(registry.names.joined(separator: ", "))")
            }
            module = m
        }
        if let slurm { _ = try SlurmRequest(slurm, allowedPartitions: config.slurmPartitions) }
        return (module, presetName, given, slurm)
    }

    /// The fields every queueing request may carry: priority, attempts, idempotency key.
    func queueing(_ b: RequestBody) throws -> (priority: Int, maxAttempts: Int, key: String?) {
        let priority = try b.int("priority", min: -1000, max: 1000) ?? 0
        let maxAttempts = try b.int("max_attempts", min: 1, max: 100) ?? config.defaultMaxAttempts
        let key = try b.string("idempotency_key")
        if let key, key.isEmpty || key.utf8.count > 200 {
            throw WireError(.invalidRequest, "field 'idempotency_key' must be 1 to 200 bytes")
        }
        return (priority, maxAttempts, key)
    }

    func submit(_ b: RequestBody, by principal: Principal) throws -> [UInt8] {
        try b.allow(["task", "preset", "parameters", "priority", "idempotency_key", "max_attempts", "slurm"])
        let (module, presetName, given, slurm) = try resolve(b)
        let (priority, maxAttempts, key) = try queueing(b)
        if module.name == "exec" { try checkExec(given, by: principal) }
        try dataRoots.check(module, given)
        let parameters: TaskParameters
        do { parameters = try module.validate(given) } catch let e as ParameterError {
            throw WireError(.invalidParameter, e.description, details: ["parameter": .string(e.parameter)])
        } catch {
            throw WireError(.invalidParameter, "\(error)")
        }
        let (job, created, first) = try store.submit(
            task: module.name, preset: presetName, parameters: parameters.values, priority: priority,
            idempotencyKey: key,
            maxAttempts: maxAttempts, owner: principal.name, slurm: slurm)
        if created {
            metrics.submitted.increment()
            if let first { control.publish(first) }
            control.wake()
        }
        return WireJSON.encode(SubmitReply(job: job, created: created))
    }

    func sweep(_ b: RequestBody, by principal: Principal) throws -> [UInt8] {
        try b.allow([
            "task", "preset", "parameters", "grid", "random", "seeds", "priority", "max_running", "idempotency_key",
            "max_attempts", "slurm",
        ])
        let (module, presetName, given, slurm) = try resolve(b)
        let (priority, maxAttempts, key) = try queueing(b)
        let maxRunning = try b.int("max_running", min: 1, max: 10_000) ?? config.workers
        let seeds = try b.int("seeds", min: 1, max: config.maxSweepPoints)
        let plan = try SweepPlan(
            module: module, fixed: given, given: Set((try b.object("parameters") ?? [:]).keys),
            grid: try b.object("grid"), random: try b.object("random"), seeds: seeds, maxPoints: config.maxSweepPoints)
        if module.name == "exec" { for p in plan.points { try checkExec(p, by: principal) } }
        for p in plan.points { try dataRoots.check(module, p) }
        var spec: [String: JSONValue] = ["parameters": .object(try b.object("parameters") ?? [:])]
        for field in ["grid", "random"] { if let v = b.fields[field], v != .null { spec[field] = v } }
        if let seeds { spec["seeds"] = .number(Double(seeds)) }
        let (sweep, created, events) = try store.submitSweep(
            task: module.name, preset: presetName, spec: .object(spec), swept: plan.swept,
            points: try plan.points.map { try module.validate($0).values }, priority: priority,
            maxRunning: maxRunning, idempotencyKey: key, maxAttempts: maxAttempts, owner: principal.name, slurm: slurm)
        if created {
            metrics.submitted.increment(by: Int64(events.count))
            for e in events { control.publish(e) }
            control.wake()
        }
        return Array(JSONValue.object(["sweep": try encode(sweep), "created": .bool(created)]).jsonBytes)
    }

    func sweepStatus(_ b: RequestBody) throws -> [UInt8] {
        try b.allow(["sweep"])
        let id = try b.requiredInt("sweep")
        guard let sweep = try store.sweep(Int64(id)) else { throw WireError(.notFound, "no sweep \(id)") }
        let points: [JSONValue] = try store.sweepJobs(Int64(id)).map { job in
            var values: [String: JSONValue] = [:]
            for name in sweep.swept { values[name] = job.parameters[name] ?? .null }
            var point: [String: JSONValue] = [
                "job": .number(Double(job.id)), "values": .object(values), "state": .string(job.state.rawValue),
                "attempt": .number(Double(job.attempt)),
            ]
            if let r = job.result { point["result"] = r }
            if let e = job.error { point["error"] = try encode(e) }
            return .object(point)
        }
        return Array(JSONValue.object(["sweep": try encode(sweep), "points": .array(points)]).jsonBytes)
    }

    func status(_ b: RequestBody) throws -> [UInt8] {
        try b.allow(["job"])
        let info = try job(try b.requiredInt("job"))
        if let (cached, bytes) = statusReplies[info.id], cached == info { return bytes }
        let bytes = WireJSON.encode(info)
        if statusReplies.count >= 1024 { statusReplies.removeAll(keepingCapacity: true) }
        statusReplies[info.id] = (info, bytes)
        return bytes
    }

    func list(_ b: RequestBody) throws -> [UInt8] {
        try b.allow(["state", "after", "before", "limit", "sweep"])
        var state: JobState? = nil
        if let s = try b.string("state") {
            guard let v = JobState(rawValue: s) else {
                throw WireError(
                    .invalidRequest,
                    "field 'state' must be one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            state = v
        }
        let limit = try b.int("limit", min: 1, max: 1000) ?? 100
        let before = try b.int("before", min: 1).map(Int64.init)
        let jobs = try store.list(
            state: state, after: Int64(try b.int("after", min: 0) ?? 0), limit: limit,
            sweep: try b.int("sweep", min: 1).map(Int64.init), before: before)
        return WireJSON.encode(ListReply(jobs: jobs, next: jobs.count == limit ? jobs.last?.id : nil))
    }

    func cancel(_ b: RequestBody, by principal: Principal) throws -> [UInt8] {
        try b.allow(["job", "sweep"])
        if b.fields["sweep"] != nil {
            guard b.fields["job"] == nil else { throw WireError(.invalidRequest, "give one of 'job' and 'sweep'") }
            let id = Int64(try b.requiredInt("sweep"))
            guard let sweep = try store.sweep(id) else { throw WireError(.notFound, "no sweep \(id)") }
            guard principal.role == .admin || (sweep.owner != nil && sweep.owner == principal.name) else {
                throw Self.forbidden(
                    "cancelling sweep \(id) of another principal needs role admin; \(principal) has not", .admin)
            }
            guard let (events, running) = try store.cancelSweep(id, by: principal.name) else {
                throw WireError(.notFound, "no sweep \(id)")
            }
            for e in events { control.publish(e) }
            for job in running { _ = control.cancel(job) }
            return Array(JSONValue.object(["sweep": try encode(try store.sweep(id)!)]).jsonBytes)
        }
        let id = Int64(try b.requiredInt("job"))
        try requireOwnJob(try job(Int(id)), principal, "cancelling")
        guard let (info, event) = try store.requestCancel(id, by: principal.name) else {
            throw WireError(.notFound, "no job \(id)")
        }
        if let event { control.publish(event) }
        if info.state == .running { _ = control.cancel(id) }
        return WireJSON.encode(info)
    }

    func events(_ b: RequestBody) throws -> [UInt8] {
        try b.allow(["job", "after", "limit"])
        let id = Int64(try b.requiredInt("job"))
        let info = try job(Int(id))
        let bodies = try store.eventBodies(
            job: id, after: Int64(try b.int("after", min: 0) ?? 0),
            limit: try b.int("limit", min: 1, max: 10_000) ?? 1000)
        // The stored events are already wire JSON: splice them instead of decoding and
        // re-encoding each (keys in sorted order: events, last_seq, state).
        var out = Array("{\"events\":[".utf8)
        for (i, body) in bodies.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: body.utf8)
        }
        out.append(contentsOf: "],\"last_seq\":\(info.lastSeq),\"state\":\"\(info.state.rawValue)\"}".utf8)
        return out
    }

    func checkpoints(_ b: RequestBody, by principal: Principal) throws -> [UInt8] {
        try b.allow(["job"])
        let id = try b.requiredInt("job")
        try requireOwnJob(try job(id), principal, "listing the checkpoints of")
        return WireJSON.encode(CheckpointsReply(checkpoints: try store.checkpoints(job: Int64(id))))
    }

    func export(_ b: RequestBody, by principal: Principal) throws -> Reply {
        try b.allow(["job", "checkpoint", "best"])
        let id = try b.requiredInt("job")
        try requireOwnJob(try job(id), principal, "exporting a checkpoint of")
        let all = try store.checkpoints(job: Int64(id))
        let chosen: CheckpointInfo?
        if let cid = try b.int("checkpoint", min: 1) {
            chosen = all.first { $0.id == Int64(cid) }
        } else if try b.bool("best") == true {
            chosen = all.first { $0.best }
        } else {
            chosen = all.first { !$0.best }
        }
        guard let c = chosen else { throw WireError(.notFound, "job \(id) has no such checkpoint") }
        guard let data = FileManager.default.contents(atPath: c.path), Digest.sha256Hex(data) == c.sha256 else {
            throw WireError(
                .corruptCheckpoint, "checkpoint \(c.id) of job \(id) is missing or does not match its sha256")
        }
        return Reply(body: WireJSON.encode(c), attachment: Array(data))
    }

    func tasks(_ b: RequestBody) throws -> [UInt8] {
        try b.allow([])
        let modules = registry.names.compactMap { name -> JSONValue? in
            guard let m = registry.module(named: name) else { return nil }
            return .object([
                "name": .string(name), "summary": .string(m.summary),
                "parameters": (try? encode(m.parameters)) ?? .null,
            ])
        }
        let presetList = try encode(presets.values.sorted { $0.name < $1.name })
        return Array(JSONValue.object(["modules": .array(modules), "presets": presetList]).jsonBytes)
    }

    func health(_ b: RequestBody) throws -> [UInt8] {
        try b.allow([])
        let counts = try store.counts()
        var reply: [String: JSONValue] = [
            "status": "ok", "version": .string(FWPDVersion.string),
            "pid": .number(Double(ProcessInfo.processInfo.processIdentifier)),
            "uptime_seconds": .number(Date().timeIntervalSince(started)),
            "workers": .number(Double(config.workers)),
            "running": .number(Double(counts[.running] ?? 0)), "queued": .number(Double(counts[.queued] ?? 0)),
            "curve": .bool(curve), "executor": .string(control.executorName),
        ]
        if let status = control.executorStatus { reply[control.executorName] = status }
        if let url = dashboard.url { reply["dashboard"] = .string(url) }
        return Array(JSONValue.object(reply).jsonBytes)
    }

    func metricsText(_ b: RequestBody) throws -> [UInt8] {
        try b.allow([])
        control.updateGauges()
        return Array(JSONValue.object(["text": .string(metrics.text())]).jsonBytes)
    }

    /// Makes a dashboard token bound to a principal (by default the caller, at the caller's
    /// role; a lesser role on request; another principal only for admins), or revokes one (the
    /// caller's own, or any for admins). Only the token's SHA-256 is stored.
    func token(_ b: RequestBody, by principal: Principal) throws -> [UInt8] {
        try b.allow(["principal", "role", "revoke"])
        if b.fields["revoke"] != nil {
            guard b.fields.count == 1 else { throw WireError(.invalidRequest, "'revoke' takes no other field") }
            let id = Int64(try b.int("revoke", min: 1)!)
            guard let owner = try store.tokenOwner(id) else { throw WireError(.notFound, "no token \(id)") }
            guard principal.role == .admin || owner == principal.name else {
                throw Self.forbidden(
                    "revoking a token of another principal needs role admin; \(principal) has not", .admin)
            }
            _ = try store.revokeToken(id)
            return Array(JSONValue.object(["revoked": .number(Double(id))]).jsonBytes)
        }
        let name = try b.string("principal") ?? principal.name
        guard !name.isEmpty, name.count <= 64,
            name.unicodeScalars.allSatisfy({
                CharacterSet.alphanumerics.contains($0) || "-_.@".unicodeScalars.contains($0)
            })
        else {
            throw WireError(.invalidRequest, "field 'principal' must be 1 to 64 letters, digits and -_.@")
        }
        var role = name == principal.name ? principal.role : .viewer
        if let r = try b.string("role") {
            guard let v = Role(rawValue: r) else {
                throw WireError(.invalidRequest, "field 'role' must be viewer, user or admin")
            }
            role = v
        }
        if name != principal.name {
            guard principal.role == .admin else {
                throw Self.forbidden("a token for another principal needs role admin; \(principal) has not", .admin)
            }
        } else if role > principal.role {
            throw Self.forbidden(
                "a token cannot carry more than its principal's role; \(principal) has not \(role.rawValue)", role)
        }
        var generator = SystemRandomNumberGenerator()
        let secret =
            "fwp_" + (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
        let id = try store.addToken(
            sha256: Digest.sha256Hex(Data(secret.utf8)), principal: name, role: role, createdBy: principal.name)
        var reply: [String: JSONValue] = [
            "id": .number(Double(id)), "token": .string(secret), "principal": .string(name),
            "role": .string(role.rawValue),
        ]
        if let url = dashboard.url { reply["dashboard"] = .string(url) }
        return Array(JSONValue.object(reply).jsonBytes)
    }

    private func job(_ id: Int) throws -> JobInfo {
        guard let j = try store.job(Int64(id)) else { throw WireError(.notFound, "no job \(id)") }
        return j
    }

    private func encode<T: Encodable>(_ value: T) throws -> JSONValue { try WireEncoder().encode(value) }
}

struct SubmitReply: Encodable {
    let job: JobInfo
    let created: Bool
}

struct ListReply: Encodable {
    let jobs: [JobInfo]
    let next: Int64?
    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(jobs, forKey: .jobs)
        try c.encode(next, forKey: .next)  // null on the last page, as documented
    }
    enum CodingKeys: String, CodingKey { case jobs, next }
}

struct CheckpointsReply: Encodable {
    let checkpoints: [CheckpointInfo]
}
