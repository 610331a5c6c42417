@_exported import FWPProtocol
import Foundation

/// Severity of a task's log line.
public enum TaskLogLevel: String, Codable, Sendable { case debug, info, warning, error }

/// Everything a running task may use of the outside world.
///
/// The daemon gives each job its own context (events stored and published, checkpoints in the
/// state directory, cancellation from clients); `fwp-task` and the tests give simpler ones.
public protocol TaskContext: AnyObject, Sendable {
    /// Records and publishes an event.
    func emit(_ event: ProgressEvent)
    /// Stores a checkpoint durably (write, fsync, rename). `best` also marks it as the best so far.
    func saveCheckpoint(_ data: Data, step: Int, best: Bool) throws
    /// The newest checkpoint that verifies, or nil when the job starts fresh.
    func latestCheckpoint() throws -> Data?
    /// True once the job has been asked to stop; tasks check it between steps.
    var isCancelled: Bool { get }
    /// Writes a log line.
    func log(_ level: TaskLogLevel, _ message: String)
    /// Threads this job may use (BLAS and per-sequence loops).
    var threads: Int { get }
    /// True when a stop is a pause (the daemon is shutting down): a task that sees
    /// `isCancelled` should then save a checkpoint before throwing `TaskError.cancelled`, so the
    /// job resumes where it stopped. False for a user's cancel.
    var checkpointBeforeStopping: Bool { get }
    /// Records the process group of an external program the task runs (nil once it has ended), so
    /// that a restarted fwpd can make sure no process of an interrupted attempt is left before it
    /// runs the job again.
    func recordChildProcessGroup(_ group: ChildProcessGroup?)
    /// The processes this one trains with when a job runs on several ranks (`ranks` > 1, started
    /// by mpirun); nil in a job of one process.
    var collective: (any Collective)? { get }
}

extension TaskContext {
    public var checkpointBeforeStopping: Bool { false }
    public var collective: (any Collective)? { nil }
    public func recordChildProcessGroup(_ group: ChildProcessGroup?) {}
}

/// A process group an `exec` job started, identified beyond its number: the leader's start time
/// (clock ticks since boot) and the boot, so that a recorded group is never confused with an
/// unrelated one that reuses the number later.
public struct ChildProcessGroup: Codable, Equatable, Sendable {
    public var id: Int32
    public var leaderStart: UInt64
    public var boot: String

    public init(id: Int32, leaderStart: UInt64, boot: String) {
        self.id = id
        self.leaderStart = leaderStart
        self.boot = boot
    }

    /// The group led by live process `pid`, read from /proc (nil where there is none).
    public static func led(by pid: Int32) -> ChildProcessGroup? {
        guard let start = processStat(pid)?.start, let boot = currentBoot else { return nil }
        return ChildProcessGroup(id: pid, leaderStart: start, boot: boot)
    }

    /// This boot's id (/proc/sys/kernel/random/boot_id).
    public static var currentBoot: String? {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A process's group and start time from /proc/<pid>/stat (fields 5 and 22).
    public static func processStat(_ pid: Int32) -> (group: Int32, start: UInt64)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)": state is field 3, so field n is at index n - 3.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let group = Int32(fields[2]), let start = UInt64(fields[19]) else { return nil }
        return (group, start)
    }

    /// The live processes of this group (members started no earlier than its leader, in this boot).
    public func members() -> [Int32] {
        guard Self.currentBoot == boot else { return [] }
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
        return pids.filter { pid in
            guard let s = Self.processStat(pid) else { return false }
            return s.group == id && s.start >= leaderStart
        }
    }
}

/// Why a task did not produce a result.
public enum TaskError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The context asked the task to stop.
    case cancelled
    /// The task failed; `code` is stable (for clients), `message` is for people.
    case failed(code: ErrorCode, message: String)

    public var description: String {
        switch self {
        case .cancelled: return "cancelled"
        case .failed(let code, let message): return "\(code): \(message)"
        }
    }
}

/// A task module: a named, parameterised kind of job.
///
/// Its `parameters` schema is the single description of what it accepts (names, types, defaults,
/// ranges, choices; served to clients by `tasks`). Validated values are decoded into the module's
/// own `Parameters` struct, whose properties are the schema's names in camelCase (`model_size` →
/// `modelSize`); `check` and `run` read only that struct.
public protocol TaskModule: Sendable {
    /// The module's parameters as Swift values.
    associatedtype Parameters: Decodable & Sendable
    /// Unique name, as used in submits and presets.
    var name: String { get }
    /// One paragraph on what the task does and what it returns.
    var summary: String { get }
    /// The parameters it accepts, with defaults and ranges.
    var parameters: [ParameterSpec] { get }
    /// Task-specific checks beyond the schema (files exist, combinations make sense); errors are
    /// `ParameterError`s naming a parameter.
    func check(_ p: Parameters) throws
    /// Runs the job to completion, resuming from `context.latestCheckpoint()` if there is one.
    /// Returns the result; throws `TaskError.cancelled` when stopped.
    func run(_ p: Parameters, context: TaskContext) throws -> JSONValue
}

extension TaskModule {
    public func check(_ p: Parameters) throws {}

    /// Schema validation, decoding and `check`: everything a job must pass before it is queued.
    public func validate(_ given: [String: JSONValue]) throws -> TaskParameters {
        let values = try parameters.validate(given)
        try check(try values.decode(Parameters.self))
        return values
    }

    /// Runs the job on validated values (as stored with the job).
    public func run(_ values: TaskParameters, context: TaskContext) throws -> JSONValue {
        try run(try values.decode(Parameters.self), context: context)
    }
}

/// Emits `progress` events with tokens (or items) per second and an ETA, at most every
/// `interval` seconds and always on the last step.
public struct ProgressMeter: Sendable {
    public let total: Int
    public let startStep: Int
    let start = Date()
    var lastEmit = Date.distantPast
    public var interval: TimeInterval

    public init(total: Int, startStep: Int, interval: TimeInterval = 0.5) {
        self.total = total
        self.startStep = startStep
        self.interval = interval
    }

    /// Builds the event for `step` if it is time to emit one.
    public mutating func event(step: Int, loss: Double, itemsPerStep: Int, metrics: [String: JSONValue] = [:])
        -> ProgressEvent?
    {
        let now = Date()
        guard step == total || now.timeIntervalSince(lastEmit) >= interval else { return nil }
        lastEmit = now
        let elapsed = now.timeIntervalSince(start)
        let done = step - startStep
        let rate = elapsed > 0 && done > 0 ? Double(done * itemsPerStep) / elapsed : nil
        let eta = done > 0 ? elapsed / Double(done) * Double(total - step) : nil
        return ProgressEvent(
            kind: "progress", step: step, total: total, loss: loss, metrics: metrics, tokensPerSecond: rate,
            etaSeconds: eta)
    }
}
