/// What a principal may do, each role including the ones before it (docs/SECURITY.md).
public enum Role: String, Codable, Sendable, CaseIterable, Comparable {
    /// Reads: status, list, events, tasks, health, metrics.
    case viewer
    /// And submits jobs (but `exec`), cancels its own, lists and exports its own checkpoints.
    case user
    /// And everything else: `exec` jobs, cancelling and exporting any job's.
    case admin

    public static func < (a: Role, b: Role) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// Who made a request: a name (a CURVE key's name from the allow-list, or the configured local
/// principal for loopback and ipc:// clients) and its role.
public struct Principal: Equatable, Sendable, CustomStringConvertible {
    public var name: String
    public var role: Role

    public init(name: String, role: Role) {
        self.name = name
        self.role = role
    }

    public var description: String { "\(name) (\(role.rawValue))" }
}
