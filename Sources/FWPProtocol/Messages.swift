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

    enum CodingKeys: String, CodingKey {
        case id, task, preset, parameters, priority, state, attempt, result, error
        case maxAttempts = "max_attempts", idempotencyKey = "idempotency_key", createdAt = "created_at"
        case startedAt = "started_at", finishedAt = "finished_at", cancelRequested = "cancel_requested", lastSeq = "last_seq"
    }

    public init(
        id: Int64, task: String, preset: String?, parameters: [String: JSONValue], priority: Int, state: JobState, attempt: Int,
        maxAttempts: Int, idempotencyKey: String?, createdAt: Double, startedAt: Double?, finishedAt: Double?,
        result: JSONValue?, error: WireError?, cancelRequested: Bool, lastSeq: Int64
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
    }
}

/// One stored and published event of a job.
public struct JobEvent: Codable, Equatable, Sendable {
    public var job: Int64
    /// Per-job sequence number, from 1, without gaps.
    public var seq: Int64
    /// Unix time in seconds.
    public var time: Double
    /// `state` (lifecycle changes), `progress`, `eval`, `text`, `log`, `checkpoint`, …
    public var kind: String
    public var state: JobState?
    public var step: Int?
    public var total: Int?
    public var loss: Double?
    public var metrics: [String: JSONValue]?
    public var tokensPerSecond: Double?
    public var etaSeconds: Double?
    public var message: String?
    public var result: JSONValue?
    public var error: WireError?

    enum CodingKeys: String, CodingKey {
        case job, seq, time, kind, state, step, total, loss, metrics, message, result, error
        case tokensPerSecond = "tokens_per_second", etaSeconds = "eta_seconds"
    }

    public init(
        job: Int64, seq: Int64, time: Double, kind: String, state: JobState? = nil, step: Int? = nil, total: Int? = nil,
        loss: Double? = nil, metrics: [String: JSONValue]? = nil, tokensPerSecond: Double? = nil, etaSeconds: Double? = nil,
        message: String? = nil, result: JSONValue? = nil, error: WireError? = nil
    ) {
        self.job = job
        self.seq = seq
        self.time = time
        self.kind = kind
        self.state = state
        self.step = step
        self.total = total
        self.loss = loss
        self.metrics = metrics
        self.tokensPerSecond = tokensPerSecond
        self.etaSeconds = etaSeconds
        self.message = message
        self.result = result
        self.error = error
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

    public init(id: Int64, job: Int64, step: Int, path: String, size: Int64, sha256: String, best: Bool, createdAt: Double) {
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
