import Foundation

/// How checkpoint files are named and which are kept: one rule for every place that writes them
/// (fwpd's job context and fwp-task's state folder). A run's folder holds `step-<step>.safetensors`
/// for the newest `kept` steps and `best.safetensors`, the best model so far, kept apart.
public struct CheckpointRetention: Sendable, Equatable {
    /// Step checkpoints kept (the newest); older ones are deleted after each new one is written.
    public var kept: Int

    /// The default of `checkpoints_kept` (fwpd) and of fwp-task.
    public static let defaultKept = 3

    /// The file that holds the best checkpoint so far.
    public static let bestFileName = "best.safetensors"

    public init(kept: Int = CheckpointRetention.defaultKept) {
        precondition(kept >= 1, "at least one step checkpoint must be kept")
        self.kept = kept
    }

    /// The file name of step `step`'s checkpoint; names sort in step order.
    public static func stepFileName(_ step: Int) -> String { String(format: "step-%010d.safetensors", step) }

    /// Whether `name` is a step checkpoint's file name.
    public static func isStepFileName(_ name: String) -> Bool {
        name.hasPrefix("step-") && name.hasSuffix(".safetensors")
    }

    /// Of a run's step checkpoints, newest first, those to delete now.
    public func expired<C: Collection>(newestFirst checkpoints: C) -> [C.Element] { Array(checkpoints.dropFirst(kept)) }
}
