/// A request's command (the second frame), one case per command docs/PROTOCOL.md describes.
public enum Command: String, CaseIterable, Sendable {
    /// Queue a job (task or preset, parameters, priority, idempotency key, attempts).
    case submit
    /// One job's state.
    case status
    /// Jobs, newest first, filtered by state, paged.
    case list
    /// Cancel a queued or running job.
    case cancel
    /// A job's stored events after a sequence number.
    case events
    /// A job's checkpoints.
    case checkpoints
    /// A checkpoint's bytes (a fourth reply frame).
    case export
    /// Task modules with their parameter schemas, and presets.
    case tasks
    /// Liveness and counts.
    case health
    /// Prometheus text metrics.
    case metrics
    /// Queue a sweep: one job per point of a grid and/or random search, with seeds.
    case sweep
    /// A sweep and every point's parameters, state and result.
    case sweepStatus = "sweep_status"
    /// A token for the web dashboard bound to a principal, or a token's revocation.
    case token
}
