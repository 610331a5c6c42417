import Foundation
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif
import FWPTasks
import TOMLKit

/// fwpd's settings. Defaults are embedded; `etc/fwpd.toml` documents each one.
/// Precedence: defaults < config file < `FWPD_*` environment variables < command-line flags.
public struct DaemonConfig: Equatable, Sendable {
    /// Holds fwpd.sqlite and checkpoints/.
    public var stateDirectory = "var/fwpd"
    /// ROUTER endpoint for requests.
    public var requestEndpoint = "tcp://127.0.0.1:5555"
    /// PUB endpoint for progress events.
    public var publishEndpoint = "tcp://127.0.0.1:5556"
    /// Jobs run at once.
    public var workers = 1
    /// Threads each job may use; 0 divides the machine's cores among the workers.
    public var threadsPerJob = 0
    /// Folder of preset manifests.
    public var tasksDirectory = "tasks"
    /// Step checkpoints kept per job (the best one is kept besides).
    public var checkpointsKept = CheckpointRetention.defaultKept
    /// Attempts a job gets by default (a crash or kill -9 during a run uses one).
    public var defaultMaxAttempts = 3
    /// The most points one sweep may have.
    public var maxSweepPoints = 1000
    /// Requests larger than this get a `too_large` error.
    public var maxRequestBytes = 1 << 20
    /// Inbound messages larger than this make libzmq drop the connection (ZMQ_MAXMSGSIZE).
    public var maxMessageBytes: Int64 = 16 << 20
    /// Seconds a claimed job's lease lasts between heartbeats.
    public var leaseSeconds = 60.0
    /// Z85 secret key file of the server; enables CURVE on both sockets when set.
    public var curveSecretKeyFile: String? = nil
    /// File of allowed client public keys for CURVE: one per line, `KEY [ROLE [NAME]]`, `#` comments.
    public var curveAllowedKeysFile: String? = nil
    /// The principal every client without CURVE is (loopback TCP and ipc:// endpoints).
    public var localPrincipal = "local"
    /// That principal's role.
    public var localRole = Role.user
    /// Programs `exec` jobs may run (absolute paths); empty: the exec task is off.
    public var execPrograms: [String] = []
    /// The MPI launcher for jobs with `ranks` > 1: a path, or a name looked up in PATH.
    public var mpirun = "mpirun"
    /// More mpirun options, space-separated (say, `--hostfile /etc/fwpd/hosts`).
    public var mpirunArguments: [String] = []
    /// The `fwp-task` the ranks run; empty: the one beside fwpd.
    public var taskProgram = ""
    /// Where claimed jobs run: `local` (this machine) or `slurm` (sbatch onto a cluster).
    public var executor = "local"
    /// Slurm: a folder fwpd and every node see at the same path (job scripts, hand-over files,
    /// checkpoints on their way to fwpd).
    public var sharedDirectory = ""
    /// Slurm: sbatch's --partition, --account, --time, --mem ("" leaves Slurm's default),
    /// --cpus-per-task (0: threads_per_job), and more options, space-separated.
    public var slurmPartition = "", slurmAccount = "", slurmTimeLimit = "", slurmMemory = ""
    public var slurmCPUsPerTask = 0
    public var slurmOptions: [String] = []
    /// Slurm: the partitions a job may ask for in its `slurm` settings (none: jobs take
    /// slurm_partition).
    public var slurmPartitions: [String] = []
    /// Slurm: the ROUTER endpoint fwpd binds for the workers' events, and the address the workers
    /// connect to ("" : the same endpoint).
    public var ingestEndpoint = "tcp://127.0.0.1:5557"
    public var ingestAddress = ""
    /// Slurm: whether the ingest endpoint speaks CURVE, each job's workers with a key pair of
    /// their own: `auto` (when ingest_endpoint is not loopback), `on` or `off`.
    public var ingestCurve = "auto"
    /// Folders job path parameters may point into, besides `<state_dir>/data`.
    public var dataRoots: [String] = []
    /// Permit binding a non-loopback TCP address without CURVE.
    public var allowInsecureRemote = false
    /// trace, debug, info, notice, warning, error, critical.
    public var logLevel = "info"
    /// Nice value (0–19) of the threads that serve requests (fwpd's I/O thread and libzmq's):
    /// above 0, a busy machine runs training first and answers requests in its gaps.
    public var requestNice = 0
    /// Where the web dashboard listens, `HOST:PORT` (port 0: any free port), or `off`.
    public var httpAddress = "127.0.0.1:5580"
    /// Whether browsers on loopback without a token are the local principal (off behind a proxy
    /// on the same machine, where every remote browser would look local).
    public var httpLocalAccess = true
    /// The dashboard's pages and scripts.
    public var webDirectory = "web"
    /// Where Debian puts packaged JavaScript libraries (the charts come from `dygraphs/` there).
    public var javascriptDirectory = "/usr/share/javascript"

    public init() {}

    /// Every setting as (file key, environment variable, flag) with a setter from text.
    static let settings:
        [(key: String, env: String, flag: String, set: @Sendable (inout DaemonConfig, String) throws -> Void)] = [
            ("state_dir", "FWPD_STATE_DIR", "--state-dir", { $0.stateDirectory = $1 }),
            ("request_endpoint", "FWPD_REQUEST_ENDPOINT", "--request-endpoint", { $0.requestEndpoint = $1 }),
            ("publish_endpoint", "FWPD_PUBLISH_ENDPOINT", "--publish-endpoint", { $0.publishEndpoint = $1 }),
            ("workers", "FWPD_WORKERS", "--workers", { $0.workers = try positive($1, "workers") }),
            (
                "threads_per_job", "FWPD_THREADS_PER_JOB", "--threads-per-job",
                { $0.threadsPerJob = try nonNegative($1, "threads_per_job") }
            ),
            ("tasks_dir", "FWPD_TASKS_DIR", "--tasks-dir", { $0.tasksDirectory = $1 }),
            (
                "checkpoints_kept", "FWPD_CHECKPOINTS_KEPT", "--checkpoints-kept",
                { $0.checkpointsKept = try positive($1, "checkpoints_kept") }
            ),
            (
                "max_attempts", "FWPD_MAX_ATTEMPTS", "--max-attempts",
                { $0.defaultMaxAttempts = try positive($1, "max_attempts") }
            ),
            (
                "max_sweep_points", "FWPD_MAX_SWEEP_POINTS", "--max-sweep-points",
                { $0.maxSweepPoints = try positive($1, "max_sweep_points") }
            ),
            (
                "max_request_bytes", "FWPD_MAX_REQUEST_BYTES", "--max-request-bytes",
                { $0.maxRequestBytes = try positive($1, "max_request_bytes") }
            ),
            (
                "max_message_bytes", "FWPD_MAX_MESSAGE_BYTES", "--max-message-bytes",
                { $0.maxMessageBytes = Int64(try positive($1, "max_message_bytes")) }
            ),
            (
                "lease_seconds", "FWPD_LEASE_SECONDS", "--lease-seconds",
                {
                    guard let v = Double($1), v > 0 else {
                        throw ConfigError("lease_seconds must be a positive number, got '\($1)'")
                    }
                    $0.leaseSeconds = v
                }
            ),
            (
                "curve_secret_key_file", "FWPD_CURVE_SECRET_KEY_FILE", "--curve-secret-key-file",
                { $0.curveSecretKeyFile = $1.isEmpty ? nil : $1 }
            ),
            (
                "curve_allowed_keys_file", "FWPD_CURVE_ALLOWED_KEYS_FILE", "--curve-allowed-keys-file",
                { $0.curveAllowedKeysFile = $1.isEmpty ? nil : $1 }
            ),
            (
                "allow_insecure_remote", "FWPD_ALLOW_INSECURE_REMOTE", "--allow-insecure-remote",
                { $0.allowInsecureRemote = try boolean($1, "allow_insecure_remote") }
            ),
            (
                "local_principal", "FWPD_LOCAL_PRINCIPAL", "--local-principal",
                {
                    guard !$1.isEmpty, $1.allSatisfy({ $0.isLetter || $0.isNumber || "-_.@".contains($0) }) else {
                        throw ConfigError("local_principal must be a name of letters, digits and -_.@, got '\($1)'")
                    }
                    $0.localPrincipal = $1
                }
            ),
            (
                "local_role", "FWPD_LOCAL_ROLE", "--local-role",
                {
                    guard let role = Role(rawValue: $1) else {
                        throw ConfigError("local_role must be viewer, user or admin, got '\($1)'")
                    }
                    $0.localRole = role
                }
            ),
            (
                "data_roots", "FWPD_DATA_ROOTS", "--data-roots",
                {
                    $0.dataRoots = $1.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                        .filter { !$0.isEmpty }
                }
            ),
            (
                "exec_programs", "FWPD_EXEC_PROGRAMS", "--exec-programs",
                {
                    let programs = $1.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                        .filter { !$0.isEmpty }
                    if let relative = programs.first(where: { !$0.hasPrefix("/") }) {
                        throw ConfigError("exec_programs must list absolute paths, got '\(relative)'")
                    }
                    $0.execPrograms = programs
                }
            ),
            (
                "mpirun", "FWPD_MPIRUN", "--mpirun",
                {
                    guard !$1.isEmpty else { throw ConfigError("mpirun must name the MPI launcher") }
                    $0.mpirun = $1
                }
            ),
            (
                "mpirun_arguments", "FWPD_MPIRUN_ARGUMENTS", "--mpirun-arguments",
                { $0.mpirunArguments = $1.split(separator: " ").map(String.init) }
            ),
            (
                "task_program", "FWPD_TASK_PROGRAM", "--task-program",
                {
                    guard $1.isEmpty || $1.hasPrefix("/") else {
                        throw ConfigError("task_program must be an absolute path, got '\($1)'")
                    }
                    $0.taskProgram = $1
                }
            ),
            (
                "executor", "FWPD_EXECUTOR", "--executor",
                {
                    guard ["local", "slurm"].contains($1) else {
                        throw ConfigError("executor must be local or slurm, got '\($1)'")
                    }
                    $0.executor = $1
                }
            ),
            (
                "shared_directory", "FWPD_SHARED_DIRECTORY", "--shared-directory",
                {
                    guard $1.isEmpty || $1.hasPrefix("/") else {
                        throw ConfigError("shared_directory must be an absolute path, got '\($1)'")
                    }
                    $0.sharedDirectory = $1
                }
            ),
            (
                "slurm_partition", "FWPD_SLURM_PARTITION", "--slurm-partition",
                {
                    guard $1.isEmpty || SlurmRequest.isPartition($1) else {
                        throw ConfigError("slurm_partition: '\($1)' is not a partition name")
                    }
                    $0.slurmPartition = $1
                }
            ),
            (
                "slurm_account", "FWPD_SLURM_ACCOUNT", "--slurm-account",
                {
                    guard $1.isEmpty || SlurmRequest.isPartition($1) else {
                        throw ConfigError("slurm_account: '\($1)' is not an account name")
                    }
                    $0.slurmAccount = $1
                }
            ),
            (
                "slurm_time_limit", "FWPD_SLURM_TIME_LIMIT", "--slurm-time-limit",
                {
                    guard $1.isEmpty || SlurmRequest.isTimeLimit($1) else {
                        throw ConfigError("slurm_time_limit: '\($1)' is not a Slurm time (minutes, h:m:s, d-h)")
                    }
                    $0.slurmTimeLimit = $1
                }
            ),
            (
                "slurm_memory", "FWPD_SLURM_MEMORY", "--slurm-memory",
                {
                    guard $1.isEmpty || SlurmRequest.isMemory($1) else {
                        throw ConfigError("slurm_memory: '\($1)' is not a size like 8G")
                    }
                    $0.slurmMemory = $1
                }
            ),
            (
                "slurm_cpus_per_task", "FWPD_SLURM_CPUS_PER_TASK", "--slurm-cpus-per-task",
                { $0.slurmCPUsPerTask = try nonNegative($1, "slurm_cpus_per_task") }
            ),
            (
                "slurm_options", "FWPD_SLURM_OPTIONS", "--slurm-options",
                { $0.slurmOptions = $1.split(separator: " ").map(String.init) }
            ),
            (
                "slurm_partitions", "FWPD_SLURM_PARTITIONS", "--slurm-partitions",
                {
                    let names = $1.split(separator: " ").map(String.init)
                    if let bad = names.first(where: { !SlurmRequest.isPartition($0) }) {
                        throw ConfigError("slurm_partitions: '\(bad)' is not a partition name")
                    }
                    $0.slurmPartitions = names
                }
            ),
            ("ingest_endpoint", "FWPD_INGEST_ENDPOINT", "--ingest-endpoint", { $0.ingestEndpoint = $1 }),
            ("ingest_address", "FWPD_INGEST_ADDRESS", "--ingest-address", { $0.ingestAddress = $1 }),
            (
                "ingest_curve", "FWPD_INGEST_CURVE", "--ingest-curve",
                {
                    guard ["auto", "on", "off"].contains($1) else {
                        throw ConfigError("ingest_curve must be auto, on or off, got '\($1)'")
                    }
                    $0.ingestCurve = $1
                }
            ),
            (
                "log_level", "FWPD_LOG_LEVEL", "--log-level",
                {
                    guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains($1) else {
                        throw ConfigError(
                            "log_level must be trace, debug, info, notice, warning, error or critical, got '\($1)'")
                    }
                    $0.logLevel = $1
                }
            ),
            (
                "request_nice", "FWPD_REQUEST_NICE", "--request-nice",
                {
                    guard let v = Int($1), (0...19).contains(v) else {
                        throw ConfigError("request_nice must be an integer from 0 to 19, got '\($1)'")
                    }
                    $0.requestNice = v
                }
            ),
            (
                "http_address", "FWPD_HTTP_ADDRESS", "--http-address",
                {
                    guard $1 == "off" || Self.httpHostPort($1) != nil else {
                        throw ConfigError("http_address must be HOST:PORT (port 0 to 65535) or off, got '\($1)'")
                    }
                    $0.httpAddress = $1
                }
            ),
            (
                "http_local_access", "FWPD_HTTP_LOCAL_ACCESS", "--http-local-access",
                { $0.httpLocalAccess = try boolean($1, "http_local_access") }
            ),
            ("web_dir", "FWPD_WEB_DIR", "--web-dir", { $0.webDirectory = $1 }),
            ("javascript_dir", "FWPD_JAVASCRIPT_DIR", "--javascript-dir", { $0.javascriptDirectory = $1 }),
        ]

    /// `HOST:PORT` (`[v6]:PORT` for IPv6) split, or nil.
    public static func httpHostPort(_ address: String) -> (host: String, port: Int)? {
        guard let colon = address.lastIndex(of: ":") else { return nil }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(address[address.index(after: colon)...]), (0...65535).contains(port) else {
            return nil
        }
        return (host, port)
    }

    /// Applies a TOML config file (parsed by TOMLKit, any valid TOML): settings at the top level
    /// or in an `[fwpd]` table, as strings, integers, floats or booleans. Errors name the file, the
    /// line and the setting.
    public mutating func apply(file path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError("cannot read config file \(path)")
        }
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch let e as TOMLParseError {
            throw ConfigError(
                "\(path):\(e.source.begin.line):\(e.source.begin.column): not valid TOML: \(e.description)")
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        /// Where `key` is set: the first line that assigns it, for messages.
        func location(_ key: String) -> String {
            let n = lines.firstIndex { line in
                let t = line.drop { $0 == " " || $0 == "\t" }
                for form in [key, "\"\(key)\"", "'\(key)'"] where t.hasPrefix(form) {
                    if t.dropFirst(form.count).drop(while: { $0 == " " || $0 == "\t" }).first == "=" { return true }
                }
                return false
            }
            return n.map { "\(path):\($0 + 1)" } ?? path
        }
        var entries: [(key: String, value: any TOMLValueConvertible)] = []
        for key in table.keys {
            guard let value = table[key] else { continue }
            if value.type == .table {
                guard key == "fwpd", let section = value.table else {
                    throw ConfigError("\(location(key)): unknown section [\(key)]")
                }
                for k in section.keys { if let v = section[k] { entries.append((k, v)) } }
            } else {
                entries.append((key, value))
            }
        }
        for (key, value) in entries {
            guard let setting = Self.settings.first(where: { $0.key == key }) else {
                throw ConfigError("\(location(key)): unknown setting '\(key)'")
            }
            let text: String
            switch value.type {
            case .string: text = value.string ?? ""
            case .int: text = String(value.int ?? 0)
            case .double: text = String(value.double ?? 0)
            case .bool: text = (value.bool ?? false) ? "true" : "false"
            case .array:
                let items = value.array.map { Array($0) } ?? []
                let strings = items.compactMap { $0.string }
                guard strings.count == items.count, !strings.contains(where: { $0.contains(",") }) else {
                    throw ConfigError("\(location(key)): \(key) must be a list of strings without commas")
                }
                text = strings.joined(separator: ",")
            default: throw ConfigError("\(location(key)): \(key) must be a string, a number or true/false")
            }
            do { try setting.set(&self, text) } catch let e as ConfigError {
                throw ConfigError("\(location(key)): \(e.message)")
            }
        }
    }

    /// Applies `FWPD_*` variables.
    public mutating func apply(environment: [String: String]) throws {
        for s in Self.settings {
            if let v = environment[s.env] { try s.set(&self, v) }
        }
    }

    /// Checks combinations that single settings cannot.
    public func validate() throws {
        if httpAddress != "off", let (host, _) = Self.httpHostPort(httpAddress), !allowInsecureRemote,
            !Self.isLocal("tcp://\(host.contains(":") ? "[\(host)]" : host):1")
        {
            throw ConfigError(
                "refusing to serve the dashboard on \(host) off loopback over plain HTTP (its tokens would travel unencrypted): put a TLS proxy on the same machine in front of a loopback address with http_local_access = false, or allow_insecure_remote = true on a trusted network"
            )
        }
        if !allowInsecureRemote && curveSecretKeyFile == nil {
            for e in [requestEndpoint, publishEndpoint] where !Self.isLocal(e) {
                throw ConfigError(
                    "refusing to bind \(e) without CURVE: set curve_secret_key_file (and curve_allowed_keys_file), or allow_insecure_remote = true"
                )
            }
        }
        if curveSecretKeyFile != nil && curveAllowedKeysFile == nil {
            throw ConfigError("curve_secret_key_file needs curve_allowed_keys_file (the client keys allowed in)")
        }
        if executor == "slurm" {
            if sharedDirectory.isEmpty {
                throw ConfigError("executor = slurm needs shared_directory, a folder fwpd and every node see")
            }
            // Without CURVE the workers' events carry a per-job token but travel unencrypted.
            if !ingestUsesCurve && !allowInsecureRemote && !Self.isLocal(ingestEndpoint) {
                throw ConfigError(
                    "refusing to bind ingest_endpoint \(ingestEndpoint) off loopback with ingest_curve = off: the workers' events would travel unencrypted; set ingest_curve = auto, or allow_insecure_remote = true on a trusted cluster network"
                )
            }
            if ingestUsesCurve && !ZMQContext.hasCurve {
                throw ConfigError("ingest_curve needs a libzmq built with CURVE (libsodium); this one has none")
            }
        }
    }

    /// Loopback TCP (any 127.0.0.0/8 address, `::1` in any spelling, `localhost`), ipc:// and
    /// inproc:// endpoints are local.
    public static func isLocal(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard let host = tcpHost(endpoint) else { return false }
        if host == "localhost" { return true }
        var v4 = in_addr(), v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        if inet_pton(AF_INET6, host, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { b in b.prefix(15).allSatisfy { $0 == 0 } && b[15] == 1 }
        }
        return false
    }

    /// The host of a tcp:// endpoint, without the brackets of an IPv6 literal; nil for others.
    static func tcpHost(_ endpoint: String) -> String? {
        guard endpoint.hasPrefix("tcp://") else { return nil }
        let rest = endpoint.dropFirst(6)
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            return String(rest[rest.index(after: rest.startIndex)..<close])
        }
        guard let colon = rest.lastIndex(of: ":") else { return String(rest) }
        return String(rest[..<colon])
    }

    /// The endpoint as libzmq can bind it: `localhost` becomes 127.0.0.1 (libzmq takes a bare
    /// name for a network interface, and there is none called localhost).
    public static func bindable(_ endpoint: String) -> String {
        guard tcpHost(endpoint) == "localhost" else { return endpoint }
        return endpoint.replacingOccurrences(of: "tcp://localhost:", with: "tcp://127.0.0.1:")
    }

    /// Whether exec jobs may run `program`: it is one of `exec_programs` (none when the list is empty).
    public func allowsExec(program: String) -> Bool { execPrograms.contains(program) }

    /// Whether the ingest endpoint speaks CURVE.
    public var ingestUsesCurve: Bool {
        ingestCurve == "on" || (ingestCurve == "auto" && !Self.isLocal(ingestEndpoint))
    }

    /// Threads each job gets.
    public var effectiveThreadsPerJob: Int {
        threadsPerJob > 0 ? threadsPerJob : max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, workers))
    }
}

/// A configuration problem, with where it came from.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

private func positive(_ s: String, _ name: String) throws -> Int {
    guard let v = Int(s), v > 0 else { throw ConfigError("\(name) must be a positive integer, got '\(s)'") }
    return v
}

private func nonNegative(_ s: String, _ name: String) throws -> Int {
    guard let v = Int(s), v >= 0 else { throw ConfigError("\(name) must be a non-negative integer, got '\(s)'") }
    return v
}

private func boolean(_ s: String, _ name: String) throws -> Bool {
    switch s.lowercased() {
    case "true", "1", "yes": return true
    case "false", "0", "no": return false
    default: throw ConfigError("\(name) must be true or false, got '\(s)'")
    }
}

extension DaemonConfig {
    /// Applies command-line flags given as (flag, value) pairs.
    public mutating func apply(flags: [(String, String)]) throws {
        for (flag, value) in flags {
            guard let s = Self.settings.first(where: { $0.flag == flag }) else {
                throw ConfigError("unknown flag \(flag)")
            }
            try s.set(&self, value)
        }
    }
}
