/// A stable error code: what programs match on in an `error` reply or a failed job's `error`.
///
/// A `RawRepresentable` string with named constants, so that a `switch` can match them and a
/// misspelt code does not compile. `requestErrors` and `jobFailures` are the lists docs/PROTOCOL.md's
/// tables are tested against; task modules fail jobs with the codes under "job failures".
public struct ErrorCode: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }

    public init(from decoder: Decoder) throws { rawValue = try decoder.singleValueContainer().decode(String.self) }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
    public var description: String { rawValue }

    // Request errors (replies with status `error`).
    public static let badFrame = ErrorCode("bad_frame")
    public static let unsupportedVersion = ErrorCode("unsupported_version")
    public static let unknownCommand = ErrorCode("unknown_command")
    public static let invalidJSON = ErrorCode("invalid_json")
    public static let invalidRequest = ErrorCode("invalid_request")
    public static let unknownTask = ErrorCode("unknown_task")
    public static let invalidParameter = ErrorCode("invalid_parameter")
    public static let notFound = ErrorCode("not_found")
    public static let tooLarge = ErrorCode("too_large")
    public static let corruptCheckpoint = ErrorCode("corrupt_checkpoint")
    public static let forbidden = ErrorCode("forbidden")
    public static let `internal` = ErrorCode("internal")

    // Job failures (a failed job's `error.code`).
    public static let attemptsExhausted = ErrorCode("attempts_exhausted")
    public static let diverged = ErrorCode("diverged")
    public static let badCheckpoint = ErrorCode("bad_checkpoint")
    public static let textTooShort = ErrorCode("text_too_short")
    public static let unreadableInput = ErrorCode("unreadable_input")
    public static let exitStatus = ErrorCode("exit_status")
    public static let signal = ErrorCode("signal")
    public static let timeout = ErrorCode("timeout")
    public static let spawnFailed = ErrorCode("spawn_failed")
    public static let rankFailed = ErrorCode("rank_failed")
    public static let slurmRefused = ErrorCode("slurm_refused")

    /// Every request error with its meaning, in the order PROTOCOL.md's table lists them.
    public static let requestErrors: [(code: ErrorCode, meaning: String)] = [
        (.badFrame, "not three frames"),
        (.unsupportedVersion, "frame 1 is not `FWP1`"),
        (.unknownCommand, "frame 2 is no command below"),
        (.invalidJSON, "frame 3 is not a JSON object"),
        (.invalidRequest, "a field has the wrong type, is out of range, missing, or unknown"),
        (.unknownTask, "no such task module or preset"),
        (.invalidParameter, "the task rejected a parameter (named in `details.parameter`)"),
        (.notFound, "no such job or checkpoint"),
        (.tooLarge, "the request exceeds `max_request_bytes` (default 1 MiB)"),
        (.corruptCheckpoint, "the checkpoint file is missing or does not match its sha256"),
        (.forbidden, "the principal's role does not allow this (`details.required_role` names the role needed)"),
        (.internal, "a bug; the message says more"),
    ]

    /// Every code a failed job's `error` may carry besides the request errors above (which a job
    /// whose stored parameters no longer validate can carry too), in PROTOCOL.md's order.
    public static let jobFailures: [(code: ErrorCode, meaning: String)] = [
        (.attemptsExhausted, "the job was interrupted (daemon crash) more often than `max_attempts` allows"),
        (.diverged, "the training loss became NaN or infinite"),
        (.badCheckpoint, "a checkpoint to load or resume from does not parse or does not fit the task"),
        (.textTooShort, "a text holds too few tokens for one batch of segments"),
        (.unreadableInput, "an input file cannot be read"),
        (.exitStatus, "an `exec` program exited with a nonzero status"),
        (.signal, "an `exec` program was killed by a signal"),
        (.timeout, "an `exec` program ran longer than its `timeout`"),
        (.spawnFailed, "an `exec` program could not be started"),
        (
            .rankFailed,
            "a process of a job on several ranks (`ranks` > 1) died, or mpirun could not start or ended the job"
        ),
        (.slurmRefused, "Slurm refused the job's batch script (the message is Slurm's)"),
    ]
}
