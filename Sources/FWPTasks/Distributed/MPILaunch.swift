import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// How a job of several ranks is started on this machine: `mpirun` with the rank count and the
/// options a single-machine launch needs. Used by `fwp-task run --ranks N` and by fwpd's local
/// executor.
public struct MPILaunch: Sendable, Equatable {
    /// The launcher: a path, or a name looked up in PATH.
    public var mpirun: String
    /// More mpirun options (from the configuration), placed before the program.
    public var extraArguments: [String]

    public init(mpirun: String = "mpirun", extraArguments: [String] = []) {
        self.mpirun = mpirun
        self.extraArguments = extraArguments
    }

    /// The launch `fwp-task run --ranks N` uses: mpirun from PATH, with the options in
    /// `FWP_MPIRUN_ARGUMENTS` (space-separated: a hostfile and a mapping, say).
    public static var fromEnvironment: MPILaunch {
        let extra = ProcessInfo.processInfo.environment["FWP_MPIRUN_ARGUMENTS"] ?? ""
        return MPILaunch(extraArguments: extra.split(separator: " ").map(String.init))
    }

    /// The launcher's full path, or nil when it cannot be found.
    public var program: String? {
        if mpirun.contains("/") { return FileManager.default.isExecutableFile(atPath: mpirun) ? mpirun : nil }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let path = "\(dir)/\(mpirun)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    /// The argument vector (launcher first) that runs `command` as `ranks` processes here.
    ///
    /// - `--oversubscribe`: more ranks than cores is allowed (slower, never refused);
    /// - `--bind-to none`: each rank runs its own compute threads, which binding to one core
    ///   would pile onto that core;
    /// - `--allow-run-as-root` when running as root, which Open MPI otherwise refuses;
    /// - `btl_vader_single_copy_mechanism none`: shared-memory messages without cross-memory
    ///   attach, which containers commonly forbid (ptrace scope).
    public func arguments(ranks: Int, command: [String]) -> [String] {
        var a = [
            program ?? mpirun, "-np", "\(ranks)", "--oversubscribe", "--bind-to", "none", "--mca",
            "btl_vader_single_copy_mechanism", "none",
        ]
        if geteuid() == 0 { a.append("--allow-run-as-root") }
        return a + extraArguments + command
    }
}
