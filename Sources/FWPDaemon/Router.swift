import FWPCore
import FWPStore
import FWPTasks
import Foundation
import Logging
import ZeroMQ

/// The I/O thread: owns the ROUTER (requests), PUB (events), the inproc PULL that collects
/// events from workers, and the ZAP handler for CURVE. Nothing else touches these sockets.
final class Router: @unchecked Sendable {
    let config: DaemonConfig
    let zmq: ZMQContext
    let store: JobStore
    let scheduler: Scheduler
    let registry: TaskRegistry
    let presets: [String: Preset]
    let metrics: DaemonMetrics
    let logger: Logger
    let started = Date()
    let router: ZMQSocket
    let pub: ZMQSocket
    let pull: ZMQSocket
    var zap: ZMQSocket?
    var allowedKeys: Set<String> = []
    /// The last `status` reply per job, reused while the job is unchanged (I/O thread only).
    private var statusReplies: [Int64: (JobInfo, [UInt8])] = [:]
    private let stopLock = NSLock()
    private var stopRequested = false
    private let stopped = DispatchSemaphore(value: 0)

    init(
        config: DaemonConfig, zmq: ZMQContext, store: JobStore, scheduler: Scheduler, registry: TaskRegistry, presets: [String: Preset],
        metrics: DaemonMetrics, logger: Logger, pull: ZMQSocket
    ) throws {
        self.config = config
        self.zmq = zmq
        self.store = store
        self.scheduler = scheduler
        self.registry = registry
        self.presets = presets
        self.metrics = metrics
        self.logger = logger
        self.pull = pull
        router = try zmq.socket(.router)
        pub = try zmq.socket(.pub)
        try router.setMaxMessageSize(config.maxMessageBytes)
        if let keyFile = config.curveSecretKeyFile {
            guard let secret = try? String(contentsOfFile: keyFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
                CurveKeyPair.isValidKey(secret)
            else { throw ConfigError("curve_secret_key_file \(keyFile) does not hold a Z85 secret key") }
            allowedKeys = try Self.loadAllowedKeys(config.curveAllowedKeysFile!)
            let z = try zmq.socket(.rep)
            try z.bind("inproc://zeromq.zap.01")
            zap = z
            try router.makeCurveServer(secretKey: secret)
            try pub.makeCurveServer(secretKey: secret)
        }
        try router.bind(config.requestEndpoint)
        try pub.bind(config.publishEndpoint)
    }

    static func loadAllowedKeys(_ path: String) throws -> Set<String> {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError("cannot read curve_allowed_keys_file \(path)")
        }
        var keys = Set<String>()
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            // Z85 keys may contain '#': a line's first word is a key if it decodes as one; otherwise
            // a line starting with '#' is a comment. Text after the key is ignored.
            let trimmed = raw.trimmingCharacters(in: .whitespaces)
            let word = String(trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
            if CurveKeyPair.isValidKey(word) {
                keys.insert(word)
            } else if !trimmed.isEmpty && !trimmed.hasPrefix("#") {
                throw ConfigError("\(path):\(n + 1): not a Z85 public key")
            }
        }
        return keys
    }

    var boundRequestEndpoint: String { router.lastEndpoint }
    var boundPublishEndpoint: String { pub.lastEndpoint }

    /// Serves until `stop()`; runs on its own thread.
    func run() {
        if config.requestNice > 0 { Self.lowerRequestThreadPriority(to: Int32(config.requestNice), logger: logger) }
        var sockets = [router, pull]
        if let zap { sockets.append(zap) }
        while !stopLock.withLock({ stopRequested }) {
            do {
                let ready = try ZMQSocket.poll(sockets, timeoutMilliseconds: 100)
                if ready[1] { forwardEvents() }
                if sockets.count > 2 && ready[2] { handleZAP() }
                if ready[0], let frames = try router.receive(timeoutMilliseconds: 0) { handle(frames) }
            } catch {
                logger.error("I/O loop: \(error)")
            }
        }
        forwardEvents()
        router.close()
        pub.close()
        pull.close()
        zap?.close()
        stopped.signal()
    }

    /// Sets the nice value of the calling thread and of libzmq's I/O threads ("ZMQbg/IO/…",
    /// created with the context's first socket). On Linux, nice applies per thread.
    static func lowerRequestThreadPriority(to nice: Int32, logger: Logger) {
        // The calling thread's id: /proc/thread-self links to "<pid>/task/<tid>".
        var threads: [pid_t] = []
        if let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self"),
            let tid = pid_t(link.split(separator: "/").last ?? "")
        {
            threads.append(tid)
        }
        if let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") {
            for t in tasks {
                if let comm = try? String(contentsOfFile: "/proc/self/task/\(t)/comm", encoding: .utf8), comm.hasPrefix("ZMQbg/IO"),
                    let tid = pid_t(t)
                {
                    threads.append(tid)
                }
            }
        }
        for tid in threads where setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), nice) != 0 {
            logger.warning("cannot set nice \(nice) on request thread \(tid): \(String(cString: strerror(errno)))")
        }
    }

    /// Ends the loop and waits until the sockets are closed.
    func stop() {
        stopLock.withLock { stopRequested = true }
        stopped.wait()
    }

    private func forwardEvents() {
        while let frames = try? pull.receive(timeoutMilliseconds: 0) {
            try? pub.send(frames)
        }
    }

    // MARK: ZAP (RFC 27): accept CURVE clients whose public key is on the allow-list.

    private func handleZAP() {
        guard let zap, let f = try? zap.receive(timeoutMilliseconds: 0), f.count >= 6 else { return }
        let requestID = f[1]
        var status = "400", text = "client key not allowed"
        if String(decoding: f[5], as: UTF8.self) == "CURVE", f.count >= 7, f[6].count == 32 {
            let key = CurveKeyPair.z85(f[6])
            if allowedKeys.contains(key) {
                status = "200"
                text = "OK"
            } else {
                logger.warning("refused CURVE client \(key)")
            }
        }
        try? zap.send([Array("1.0".utf8), requestID, Array(status.utf8), Array(text.utf8), [], []])
    }

    // MARK: Requests

    private func handle(_ frames: [[UInt8]]) {
        guard frames.count >= 2 else { return }
        // DEALER: [identity, version, command, body]; REQ adds an empty delimiter after the identity.
        var envelope = [frames[0]]
        var rest = Array(frames.dropFirst())
        if rest.first?.isEmpty == true {
            envelope.append([])
            rest.removeFirst()
        }
        let size = rest.reduce(0) { $0 + $1.count }
        let reply: Result<([UInt8], [UInt8]?), WireError>
        var command = "?"
        if size > config.maxRequestBytes {
            reply = .failure(WireError("too_large", "request of \(size) bytes exceeds the limit of \(config.maxRequestBytes)"))
        } else if rest.count != 3 {
            reply = .failure(WireError("bad_frame", "expected 3 frames (version, command, JSON body), got \(rest.count)"))
        } else if String(decoding: rest[0], as: UTF8.self) != FWPWire.version {
            reply = .failure(WireError("unsupported_version", "this daemon speaks \(FWPWire.version), not '\(String(decoding: rest[0].prefix(16), as: UTF8.self))'"))
        } else {
            command = String(decoding: rest[1], as: UTF8.self)
            reply = Result { try dispatch(command, body: rest[2]) }.mapError {
                ($0 as? WireError) ?? WireError("internal", "\($0)")
            }
        }
        metrics.request(FWPWire.commands.contains(command) ? command : "unknown")
        var out = envelope + [Array(FWPWire.version.utf8)]
        switch reply {
        case .success(let (body, attachment)):
            out += [Array("ok".utf8), body]
            if let attachment { out.append(attachment) }
        case .failure(let error):
            metrics.error(error.code)
            out += [Array("error".utf8), WireJSON.encode(error)]
        }
        do { try router.send(out, dontWait: true) } catch { logger.warning("reply not sent: \(error)") }
    }

    /// Handles one command; returns the reply body (already JSON) and an optional attachment.
    private func dispatch(_ command: String, body raw: [UInt8]) throws -> ([UInt8], [UInt8]?) {
        guard FWPWire.commands.contains(command) else {
            throw WireError("unknown_command", "unknown command '\(String(command.prefix(64)))'; known: \(FWPWire.commands.joined(separator: ", "))")
        }
        let parsed: JSONValue
        do { parsed = try JSONValue.parse(Data(raw)) } catch {
            throw WireError("invalid_json", "the body is not valid JSON")
        }
        guard case .object(let fields) = parsed else { throw WireError("invalid_json", "the body must be a JSON object, got \(parsed.typeName)") }
        let b = RequestBody(fields)
        switch command {
        case "submit": return (try submit(b), nil)
        case "status":
            try b.allow(["job"])
            let info = try job(try b.requiredInt("job"))
            if let (cached, bytes) = statusReplies[info.id], cached == info { return (bytes, nil) }
            let bytes = WireJSON.encode(info)
            if statusReplies.count >= 1024 { statusReplies.removeAll(keepingCapacity: true) }
            statusReplies[info.id] = (info, bytes)
            return (bytes, nil)
        case "list":
            try b.allow(["state", "after", "limit"])
            var state: JobState? = nil
            if let s = try b.string("state") {
                guard let v = JobState(rawValue: s) else {
                    throw WireError("invalid_request", "field 'state' must be one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                state = v
            }
            let limit = try b.int("limit", min: 1, max: 1000) ?? 100
            let jobs = try store.list(state: state, after: Int64(try b.int("after", min: 0) ?? 0), limit: limit)
            return (WireJSON.encode(ListReply(jobs: jobs, next: jobs.count == limit ? jobs.last!.id : nil)), nil)
        case "cancel":
            try b.allow(["job"])
            let id = Int64(try b.requiredInt("job"))
            guard let (info, event) = try store.requestCancel(id) else { throw WireError("not_found", "no job \(id)") }
            if let event { scheduler.publisher.publish(event) }
            if info.state == .running { _ = scheduler.cancel(id) }
            return (WireJSON.encode(info), nil)
        case "events":
            try b.allow(["job", "after", "limit"])
            let id = Int64(try b.requiredInt("job"))
            let info = try job(Int(id))
            let bodies = try store.eventBodies(
                job: id, after: Int64(try b.int("after", min: 0) ?? 0), limit: try b.int("limit", min: 1, max: 10_000) ?? 1000)
            // The stored events are already wire JSON: splice them instead of decoding and
            // re-encoding each (keys in sorted order: events, last_seq, state).
            var out = Array("{\"events\":[".utf8)
            for (i, body) in bodies.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                out.append(contentsOf: body.utf8)
            }
            out.append(contentsOf: "],\"last_seq\":\(info.lastSeq),\"state\":\"\(info.state.rawValue)\"}".utf8)
            return (out, nil)
        case "checkpoints":
            try b.allow(["job"])
            let id = try b.requiredInt("job")
            _ = try job(id)
            return (WireJSON.encode(CheckpointsReply(checkpoints: try store.checkpoints(job: Int64(id)))), nil)
        case "export":
            try b.allow(["job", "checkpoint", "best"])
            let id = try b.requiredInt("job")
            _ = try job(id)
            let all = try store.checkpoints(job: Int64(id))
            let chosen: CheckpointInfo?
            if let cid = try b.int("checkpoint", min: 1) {
                chosen = all.first { $0.id == Int64(cid) }
            } else if try b.bool("best") == true {
                chosen = all.first { $0.best }
            } else {
                chosen = all.first { !$0.best }
            }
            guard let c = chosen else { throw WireError("not_found", "job \(id) has no such checkpoint") }
            guard let data = FileManager.default.contents(atPath: c.path), SHA256.hex(data) == c.sha256 else {
                throw WireError("corrupt_checkpoint", "checkpoint \(c.id) of job \(id) is missing or does not match its sha256")
            }
            return (WireJSON.encode(c), Array(data))
        case "tasks":
            try b.allow([])
            let modules = registry.names.map { name -> JSONValue in
                let m = registry.module(named: name)!
                return .object(["name": .string(name), "summary": .string(m.summary), "parameters": (try? encode(m.parameters)) ?? .null])
            }
            let presetList = try encode(presets.values.sorted { $0.name < $1.name })
            return (Array(JSONValue.object(["modules": .array(modules), "presets": presetList]).jsonBytes), nil)
        case "health":
            try b.allow([])
            let counts = try store.counts()
            return (
                Array(JSONValue.object([
                    "status": "ok", "version": .string(FWPDVersion.string), "pid": .number(Double(ProcessInfo.processInfo.processIdentifier)),
                    "uptime_seconds": .number(Date().timeIntervalSince(started)), "workers": .number(Double(config.workers)),
                    "running": .number(Double(counts[.running] ?? 0)), "queued": .number(Double(counts[.queued] ?? 0)),
                    "curve": .bool(zap != nil),
                ]).jsonBytes), nil
            )
        case "metrics":
            try b.allow([])
            scheduler.updateGauges()
            return (Array(JSONValue.object(["text": .string(metrics.text())]).jsonBytes), nil)
        default:
            throw WireError("unknown_command", "unknown command '\(command)'")
        }
    }

    private func job(_ id: Int) throws -> JobInfo {
        guard let j = try store.job(Int64(id)) else { throw WireError("not_found", "no job \(id)") }
        return j
    }

    private func submit(_ b: RequestBody) throws -> [UInt8] {
        try b.allow(["task", "preset", "parameters", "priority", "idempotency_key", "max_attempts"])
        let taskName = try b.string("task"), presetName = try b.string("preset")
        guard (taskName == nil) != (presetName == nil) else {
            throw WireError("invalid_request", "give exactly one of 'task' and 'preset'")
        }
        var given = try b.object("parameters") ?? [:]
        let module: any TaskModule
        if let presetName {
            guard let p = presets[presetName] else {
                throw WireError("unknown_task", "no preset '\(presetName)'; presets: \(presets.keys.sorted().joined(separator: ", "))")
            }
            module = registry.module(named: p.module)!
            given = p.merged(with: given)
        } else {
            guard let m = registry.module(named: taskName!) else {
                throw WireError("unknown_task", "no task module '\(taskName!)'; modules: \(registry.names.joined(separator: ", "))")
            }
            module = m
        }
        let priority = try b.int("priority", min: -1000, max: 1000) ?? 0
        let maxAttempts = try b.int("max_attempts", min: 1, max: 100) ?? config.defaultMaxAttempts
        let key = try b.string("idempotency_key")
        if let key, key.isEmpty || key.utf8.count > 200 {
            throw WireError("invalid_request", "field 'idempotency_key' must be 1 to 200 bytes")
        }
        let parameters: TaskParameters
        do { parameters = try module.validate(given) } catch let e as ParameterError {
            throw WireError("invalid_parameter", e.description, details: ["parameter": .string(e.parameter)])
        } catch {
            throw WireError("invalid_parameter", "\(error)")
        }
        let (job, created, first) = try store.submit(
            task: module.name, preset: presetName, parameters: parameters.values, priority: priority, idempotencyKey: key, maxAttempts: maxAttempts)
        if created {
            metrics.submitted.increment()
            if let first { scheduler.publisher.publish(first) }
            scheduler.wake()
        }
        return WireJSON.encode(SubmitReply(job: job, created: created))
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

/// A request body with typed, named-field accessors that fail with `invalid_request`.
struct RequestBody {
    let fields: [String: JSONValue]
    init(_ fields: [String: JSONValue]) { self.fields = fields }

    func allow(_ names: Set<String>) throws {
        if let unknown = fields.keys.sorted().first(where: { !names.contains($0) }) {
            throw WireError("invalid_request", "unknown field '\(unknown)'" + (names.isEmpty ? "" : "; allowed: \(names.sorted().joined(separator: ", "))"))
        }
    }

    func int(_ name: String, min: Int? = nil, max: Int? = nil) throws -> Int? {
        guard let v = fields[name], v != .null else { return nil }
        guard case .number(let n) = v, n.rounded() == n, abs(n) < 9e15 else {
            throw WireError("invalid_request", "field '\(name)' must be an integer, got \(v.typeName)")
        }
        if let min, Int(n) < min { throw WireError("invalid_request", "field '\(name)' must be ≥ \(min)") }
        if let max, Int(n) > max { throw WireError("invalid_request", "field '\(name)' must be ≤ \(max)") }
        return Int(n)
    }

    func requiredInt(_ name: String) throws -> Int {
        guard let v = try int(name, min: 1) else { throw WireError("invalid_request", "field '\(name)' is required") }
        return v
    }

    func string(_ name: String) throws -> String? {
        guard let v = fields[name], v != .null else { return nil }
        guard case .string(let s) = v else { throw WireError("invalid_request", "field '\(name)' must be a string, got \(v.typeName)") }
        return s
    }

    func bool(_ name: String) throws -> Bool? {
        guard let v = fields[name], v != .null else { return nil }
        guard case .bool(let x) = v else { throw WireError("invalid_request", "field '\(name)' must be true or false, got \(v.typeName)") }
        return x
    }

    func object(_ name: String) throws -> [String: JSONValue]? {
        guard let v = fields[name], v != .null else { return nil }
        guard case .object(let o) = v else { throw WireError("invalid_request", "field '\(name)' must be an object, got \(v.typeName)") }
        return o
    }
}

/// The daemon's version string.
public enum FWPDVersion {
    public static let string = "0.1.0"
}
