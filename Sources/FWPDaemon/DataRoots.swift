import FWPTasks
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Where fwpd's jobs may read: every path parameter of a job (a `.path` or `.directory` in its
/// module's schema) must resolve, symlinks followed, inside one of the data roots, and never into
/// the rest of the state directory (the database, other jobs' checkpoints). Files must be regular
/// and of plausible size; folders, folders. fwp-task, which a user runs on their own files, does
/// not confine anything. docs/SECURITY.md describes the model.
struct DataRoots: Sendable {
    /// The roots, resolved: `<state>/data` and the configured `data_roots`.
    let roots: [String]
    /// The state directory, resolved.
    let state: String
    /// The largest file a path parameter may name.
    static let maximumFileBytes: Int64 = 1 << 40

    init(config: DaemonConfig) {
        let stateDirectory = URL(fileURLWithPath: config.stateDirectory).standardizedFileURL.path
        let own = (stateDirectory as NSString).appendingPathComponent("data")
        try? FileManager.default.createDirectory(atPath: own, withIntermediateDirectories: true)
        state = Self.resolved(stateDirectory) ?? stateDirectory
        roots = ([own] + config.dataRoots).compactMap(Self.resolved)
    }

    /// The absolute path with every symlink followed, or nil when it does not exist.
    static func resolved(_ path: String) -> String? {
        guard let r = realpath(path, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    static func isInside(_ path: String, _ folder: String) -> Bool {
        path == folder || path.hasPrefix(folder.hasSuffix("/") ? folder : folder + "/")
    }

    /// Whether a resolved path lies in a root and not in the state directory (but its data/).
    func allows(_ path: String) -> Bool {
        roots.contains { Self.isInside(path, $0) }
            && (!Self.isInside(path, state) || Self.isInside(path, (state as NSString).appendingPathComponent("data")))
    }

    /// Checks every path parameter of `module` in `values`; a refusal names the parameter and the
    /// reason (never the file's contents).
    func check(_ module: any TaskModule, _ values: [String: JSONValue]) throws {
        for spec in module.parameters where spec.type == .path || spec.type == .directory {
            if module.name == "exec" && spec.name == "program" { continue }  // exec_programs decides
            guard let given = values[spec.name]?.stringValue else { continue }
            try check(given, directory: spec.type == .directory, parameter: spec.name)
        }
    }

    func check(_ given: String, directory: Bool, parameter: String) throws {
        func refuse(_ why: String) -> WireError {
            WireError(.invalidParameter, "parameter '\(parameter)': \(why)", details: ["parameter": .string(parameter)])
        }
        guard let path = Self.resolved(given) else { throw refuse("\(given) does not exist") }
        if Self.isInside(path, state) && !Self.isInside(path, (state as NSString).appendingPathComponent("data")) {
            throw refuse("\(given) is inside fwpd's state directory")
        }
        guard allows(path) else {
            throw refuse("\(given) is outside fwpd's data roots (data_roots in its configuration)")
        }
        var info = stat()
        guard stat(path, &info) == 0 else { throw refuse("\(given) cannot be examined") }
        let kind = info.st_mode & S_IFMT
        if directory {
            guard kind == S_IFDIR else { throw refuse("\(given) is not a folder") }
            // The task reads the files inside: none of them may lead out of the roots.
            for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] {
                let entry = (path as NSString).appendingPathComponent(name)
                guard let target = Self.resolved(entry) else { continue }
                guard allows(target) else {
                    throw refuse("\(given) holds \(name), which leads outside fwpd's data roots")
                }
            }
        } else {
            guard kind == S_IFREG else { throw refuse("\(given) is not a regular file") }
            guard info.st_size > 0, Int64(info.st_size) <= Self.maximumFileBytes else {
                throw refuse("\(given) is empty or larger than \(Self.maximumFileBytes >> 30) GiB")
            }
        }
    }
}
