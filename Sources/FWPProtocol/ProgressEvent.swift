import Foundation

/// A progress event a task emits: training progress, an evaluation, generated text, a log line.
///
/// The one event type of fwp: tasks emit it, fwp-task prints it, `exec` programs write it as JSON
/// lines, and the wire's `JobEvent` wraps it with the job, sequence number, time and lifecycle
/// fields. Its JSON keys are the wire's (`tokens_per_second`, `eta_seconds`).
public struct ProgressEvent: Codable, Equatable, Sendable {
    /// `progress`, `eval`, `text`, `checkpoint`, `log` or a task's own kind.
    public var kind: String
    public var step: Int?
    public var total: Int?
    public var loss: Double?
    public var metrics: [String: JSONValue]
    public var tokensPerSecond: Double?
    public var etaSeconds: Double?
    public var message: String?

    public init(
        kind: String, step: Int? = nil, total: Int? = nil, loss: Double? = nil, metrics: [String: JSONValue] = [:],
        tokensPerSecond: Double? = nil, etaSeconds: Double? = nil, message: String? = nil
    ) {
        self.kind = kind
        self.step = step
        self.total = total
        self.loss = loss
        self.metrics = metrics
        self.tokensPerSecond = tokensPerSecond
        self.etaSeconds = etaSeconds
        self.message = message
    }

    enum CodingKeys: String, CodingKey {
        case kind, step, total, loss, metrics, message
        case tokensPerSecond = "tokens_per_second"
        case etaSeconds = "eta_seconds"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        kind = try c.decode(String.self, forKey: .kind)
        step = try c.decodeIfPresent(Int.self, forKey: .step)
        total = try c.decodeIfPresent(Int.self, forKey: .total)
        loss = try c.decodeIfPresent(Double.self, forKey: .loss)
        metrics = try c.decodeIfPresent([String: JSONValue].self, forKey: .metrics) ?? [:]
        tokensPerSecond = try c.decodeIfPresent(Double.self, forKey: .tokensPerSecond)
        etaSeconds = try c.decodeIfPresent(Double.self, forKey: .etaSeconds)
        message = try c.decodeIfPresent(String.self, forKey: .message)
    }

    /// Absent fields and empty metrics are left out.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind, forKey: .kind)
        try c.encodeIfPresent(step, forKey: .step)
        try c.encodeIfPresent(total, forKey: .total)
        try c.encodeIfPresent(loss, forKey: .loss)
        if !metrics.isEmpty { try c.encode(metrics, forKey: .metrics) }
        try c.encodeIfPresent(tokensPerSecond, forKey: .tokensPerSecond)
        try c.encodeIfPresent(etaSeconds, forKey: .etaSeconds)
        try c.encodeIfPresent(message, forKey: .message)
    }
}
