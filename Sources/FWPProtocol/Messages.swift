import Foundation

/// The wire protocol between fwpd and its clients (docs/PROTOCOL.md is its human description).
///
/// Requests go to fwpd's ROUTER socket as frames `["FWP1", command, json-body]` and are answered
/// with `["FWP1", "ok" | "error", json-body]` (plus, for `export`, a fourth frame with the
/// checkpoint's bytes). Progress is published on a PUB socket as `["job.<id>", json-event]`.
public enum FWPWire {
    /// The protocol version tag, the first frame of every request and reply.
    public static let version = "FWP1"
    /// Requests larger than this (all frames together) get a `too_large` error.
    public static let maximumRequestBytes = 1 << 20
    /// Every command the daemon understands (`Command`'s names).
    public static let commands = Command.allCases.map(\.rawValue)
}

/// A job's lifecycle state.
public enum JobState: String, Codable, Sendable, CaseIterable {
    case queued, running, succeeded, failed, cancelled
    public var isFinal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

/// A structured error: a stable code for programs and a message for people.
public struct WireError: Codable, Error, Equatable, Sendable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    public var details: [String: JSONValue]?

    public init(_ code: ErrorCode, _ message: String, details: [String: JSONValue]? = nil) {
        self.code = code
        self.message = message
        self.details = details
    }
    public var description: String { "\(code): \(message)" }
}

/// A job as the daemon reports it.
public struct JobInfo: Codable, Equatable, Sendable {
    public var id: Int64
    public var task: String
    public var preset: String?
    public var parameters: [String: JSONValue]
    public var priority: Int
    public var state: JobState
    public var attempt: Int
    public var maxAttempts: Int
    public var idempotencyKey: String?
    public var createdAt: Double
    public var startedAt: Double?
    public var finishedAt: Double?
    public var result: JSONValue?
    public var error: WireError?
    public var cancelRequested: Bool
    /// The sequence number of the job's newest event (0 when none).
    public var lastSeq: Int64
    /// The principal who submitted it (nil for jobs stored before owners were recorded).
    public var owner: String?
    /// The Slurm job of its latest run under the Slurm executor (nil otherwise).
    public var slurmJob: String?
    /// The sbatch settings it asked for (its preset's and its own), over fwpd's defaults.
    public var slurm: [String: JSONValue]?
    /// The sweep it is a point of (nil for a job submitted on its own).
    public var sweep: Int64?

    enum CodingKeys: String, CodingKey {
        case id, task, preset, parameters, priority, state, attempt, result, error, owner, slurm, sweep
        case slurmJob = "slurm_job"
        case maxAttempts = "max_attempts"
        case idempotencyKey = "idempotency_key"
        case createdAt = "created_at"
        case startedAt = "started_at"
        case finishedAt = "finished_at"
        case cancelRequested = "cancel_requested"
        case lastSeq = "last_seq"
    }

    public init(
        id: Int64, task: String, preset: String?, parameters: [String: JSONValue], priority: Int, state: JobState,
        attempt: Int,
        maxAttempts: Int, idempotencyKey: String?, createdAt: Double, startedAt: Double?, finishedAt: Double?,
        result: JSONValue?, error: WireError?, cancelRequested: Bool, lastSeq: Int64, owner: String? = nil,
        slurmJob: String? = nil, slurm: [String: JSONValue]? = nil, sweep: Int64? = nil
    ) {
        self.id = id
        self.task = task
        self.preset = preset
        self.parameters = parameters
        self.priority = priority
        self.state = state
        self.attempt = attempt
        self.maxAttempts = maxAttempts
        self.idempotencyKey = idempotencyKey
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.result = result
        self.error = error
        self.cancelRequested = cancelRequested
        self.lastSeq = lastSeq
        self.owner = owner
        self.slurmJob = slurmJob
        self.slurm = slurm
        self.sweep = sweep
    }
}

/// A sweep: a set of jobs (its points) made from one task or preset, fixed parameters and the
/// values of the swept ones, run at most `maxRunning` at a time.
public struct SweepInfo: Codable, Equatable, Sendable {
    public var id: Int64
    public var task: String
    public var preset: String?
    /// The request as given (fixed parameters, grid, random search, seeds), for the record.
    public var spec: JSONValue
    /// The parameters that vary between points, in the order the points vary them.
    public var swept: [String]
    public var priority: Int
    public var maxRunning: Int
    public var idempotencyKey: String?
    public var createdAt: Double
    public var owner: String?
    public var cancelRequested: Bool
    /// The number of points, and how many are in each state.
    public var points: Int
    public var counts: [String: Int]
    /// `running` while a point is queued or running, `cancelled` once cancelled, else `finished`.
    public var state: String

    enum CodingKeys: String, CodingKey {
        case id, task, preset, spec, swept, priority, owner, points, counts, state
        case maxRunning = "max_running"
        case idempotencyKey = "idempotency_key"
        case createdAt = "created_at"
        case cancelRequested = "cancel_requested"
    }

    public init(
        id: Int64, task: String, preset: String?, spec: JSONValue, swept: [String], priority: Int, maxRunning: Int,
        idempotencyKey: String?, createdAt: Double, owner: String?, cancelRequested: Bool, points: Int,
        counts: [String: Int], state: String
    ) {
        self.id = id
        self.task = task
        self.preset = preset
        self.spec = spec
        self.swept = swept
        self.priority = priority
        self.maxRunning = maxRunning
        self.idempotencyKey = idempotencyKey
        self.createdAt = createdAt
        self.owner = owner
        self.cancelRequested = cancelRequested
        self.points = points
        self.counts = counts
        self.state = state
    }
}

/// One stored and published event of a job: a task's `ProgressEvent`, or a lifecycle change
/// (`kind` "state", with `state`, and `result` or `error` at the end), under the job's id, its
/// per-job sequence number and the time. On the wire its fields are one flat JSON object.
public struct JobEvent: Codable, Equatable, Sendable {
    public var job: Int64
    /// Per-job sequence number, from 1, without gaps.
    public var seq: Int64
    /// Unix time in seconds.
    public var time: Double
    /// What happened: kind, step, loss, metrics, message, ….
    public var event: ProgressEvent
    public var state: JobState?
    public var result: JSONValue?
    public var error: WireError?

    public var kind: String {
        get { event.kind }
        set { event.kind = newValue }
    }
    public var step: Int? { event.step }
    public var total: Int? { event.total }
    public var loss: Double? { event.loss }
    /// nil when the event has none.
    public var metrics: [String: JSONValue]? { event.metrics.isEmpty ? nil : event.metrics }
    public var tokensPerSecond: Double? { event.tokensPerSecond }
    public var etaSeconds: Double? { event.etaSeconds }
    public var message: String? { event.message }

    /// A task's event as job `job`'s.
    public init(job: Int64, seq: Int64, time: Double, _ event: ProgressEvent) {
        self.job = job
        self.seq = seq
        self.time = time
        self.event = event
    }

    public init(
        job: Int64, seq: Int64, time: Double, kind: String, state: JobState? = nil, step: Int? = nil, total: Int? = nil,
        loss: Double? = nil, metrics: [String: JSONValue]? = nil, tokensPerSecond: Double? = nil,
        etaSeconds: Double? = nil,
        message: String? = nil, result: JSONValue? = nil, error: WireError? = nil
    ) {
        self.job = job
        self.seq = seq
        self.time = time
        event = ProgressEvent(
            kind: kind, step: step, total: total, loss: loss, metrics: metrics ?? [:], tokensPerSecond: tokensPerSecond,
            etaSeconds: etaSeconds, message: message)
        self.state = state
        self.result = result
        self.error = error
    }

    enum CodingKeys: String, CodingKey { case job, seq, time, state, result, error }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        job = try c.decode(Int64.self, forKey: .job)
        seq = try c.decode(Int64.self, forKey: .seq)
        time = try c.decode(Double.self, forKey: .time)
        state = try c.decodeIfPresent(JobState.self, forKey: .state)
        result = try c.decodeIfPresent(JSONValue.self, forKey: .result)
        error = try c.decodeIfPresent(WireError.self, forKey: .error)
        event = try ProgressEvent(from: decoder)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(job, forKey: .job)
        try c.encode(seq, forKey: .seq)
        try c.encode(time, forKey: .time)
        try c.encodeIfPresent(state, forKey: .state)
        try c.encodeIfPresent(result, forKey: .result)
        try c.encodeIfPresent(error, forKey: .error)
        try event.encode(to: encoder)
    }
}

/// A stored checkpoint of a job.
public struct CheckpointInfo: Codable, Equatable, Sendable {
    public var id: Int64
    public var job: Int64
    public var step: Int
    public var path: String
    public var size: Int64
    public var sha256: String
    public var best: Bool
    public var createdAt: Double

    enum CodingKeys: String, CodingKey {
        case id, job, step, path, size, sha256, best
        case createdAt = "created_at"
    }

    public init(
        id: Int64, job: Int64, step: Int, path: String, size: Int64, sha256: String, best: Bool, createdAt: Double
    ) {
        self.id = id
        self.job = job
        self.step = step
        self.path = path
        self.size = size
        self.sha256 = sha256
        self.best = best
        self.createdAt = createdAt
    }
}

/// JSON coding used on the wire: compact, sorted keys, no slash escaping.
public enum WireJSON {
    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(512)
        ((try? WireEncoder().encode(value)) ?? .object([:])).write(into: &out)
        return out
    }

    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try JSONDecoder().decode(type, from: Data(bytes))
    }
}
