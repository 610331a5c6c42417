import FWPProtocol
import Foundation
import CSpawn
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Runs an external program as a task: the way out-of-tree task plugins in any language join.
///
/// The program reports progress as JSON lines on stdout (docs/TASKS.md): objects with any of
/// `step`, `total`, `loss`, `metrics`, `message`, `kind`, and one object `{"result": …}` for the
/// result. Other stdout lines and all stderr lines become `log` events. Cancellation (and the
/// optional timeout) sends SIGTERM to the program's process group, then SIGKILL after `grace`
/// seconds. Exit status 0 is success; anything else fails the job.
public struct ExecTask: TaskModule {
    public init() {}

    public let name = "exec"
    public let summary = """
        Runs an external program as a task. It reports progress as JSON lines on stdout and its result as \
        {"result": …}; its exit status decides the outcome. Cancel sends SIGTERM, then SIGKILL after `grace` seconds.
        """

    public let parameters: [ParameterSpec] = [
        ParameterSpec("program", .path, "the executable to run"),
        ParameterSpec(
            "args", .strings, "arguments: a JSON array of strings (or one string of space-separated words)",
            default: .array([])),
        ParameterSpec("directory", .directory, "working directory (default: the daemon's)", optional: true),
        ParameterSpec("grace", .number, "seconds between SIGTERM and SIGKILL", default: 5, minimum: 0, maximum: 3600),
        ParameterSpec(
            "timeout", .number, "stop the program after this many seconds (0: never)", default: 0, minimum: 0),
    ]

    /// The schema's parameters as Swift values.
    public struct Parameters: Decodable, Sendable {
        var program: String
        var args: Arguments
        var directory: String?
        var grace: Double
        var timeout: Double
    }

    /// The `args` parameter: a JSON array of strings, or one string (space-separated words, or a
    /// JSON array written as text, as `--set args=[...]` on a command line gives it).
    public enum Arguments: Decodable, Sendable {
        case list([String])
        case text(String)

        public init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let list = try? c.decode([String].self) {
                self = .list(list)
            } else {
                self = .text(try c.decode(String.self))
            }
        }
    }

    func arguments(_ p: Parameters) throws -> [String] {
        switch p.args {
        case .list(let list): return list
        case .text(let text):
            let raw = text.trimmingCharacters(in: .whitespaces)
            if raw.hasPrefix("[") {
                guard case .array(let items) = try? JSONValue.parse(raw) else {
                    throw ParameterError("args", "must be a JSON array of strings")
                }
                let strings = items.compactMap(\.stringValue)
                guard strings.count == items.count else {
                    throw ParameterError("args", "must be a JSON array of strings")
                }
                return strings
            }
            return raw.split(separator: " ").map(String.init)
        }
    }

    public func check(_ p: Parameters) throws {
        let program = p.program
        guard FileManager.default.isExecutableFile(atPath: program) else {
            throw ParameterError("program", "\(program) does not exist or is not executable")
        }
        if let dir = p.directory {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                throw ParameterError("directory", "\(dir) is not a directory")
            }
        }
        _ = try arguments(p)
    }

    public func run(_ p: Parameters, context: TaskContext) throws -> JSONValue {
        let program = p.program
        let child = try ChildProcess(program: program, arguments: try arguments(p), directory: p.directory)
        context.recordChildProcessGroup(ChildProcessGroup.led(by: child.pid))
        let result = LockedBox<JSONValue?>(nil)
        let done = DispatchGroup()
        done.enter()
        Thread.detachNewThread {
            child.readLines(fd: child.stdout) { line in
                if let v = try? JSONValue.parse(line), case .object(let o) = v {
                    if let r = o["result"] {
                        result.set(r)
                    } else {
                        context.emit(Self.event(from: o))
                    }
                } else if !line.isEmpty {
                    context.emit(ProgressEvent(kind: "log", message: line))
                }
            }
            done.leave()
        }
        done.enter()
        Thread.detachNewThread {
            child.readLines(fd: child.stderr) { line in
                if !line.isEmpty { context.log(.warning, "\(program): \(line)") }
            }
            done.leave()
        }
        let start = Date()
        let timeout = p.timeout, grace = p.grace
        var stopReason: String? = nil
        var termSentAt: Date? = nil
        var status: Int32 = 0
        while true {
            if let s = child.poll() {
                status = s
                break
            }
            if stopReason == nil {
                if context.isCancelled {
                    stopReason = "cancelled"
                } else if timeout > 0 && Date().timeIntervalSince(start) > timeout {
                    stopReason = "timeout"
                }
                if stopReason != nil {
                    child.signalGroup(SIGTERM)
                    termSentAt = Date()
                }
            } else if let sent = termSentAt, Date().timeIntervalSince(sent) >= grace {
                child.signalGroup(SIGKILL)
                termSentAt = .distantFuture
            }
            usleep(20_000)
        }
        // The program has exited; make sure nothing it started keeps the pipes open.
        if stopReason != nil { child.signalGroup(SIGKILL) }
        done.wait()
        child.closePipes()
        context.recordChildProcessGroup(nil)
        if stopReason == "cancelled" { throw TaskError.cancelled }
        if stopReason == "timeout" {
            throw TaskError.failed(code: .timeout, message: "\(program) ran longer than \(timeout) s and was stopped")
        }
        if wasSignaled(status) {
            throw TaskError.failed(code: .signal, message: "\(program) was killed by signal \(termSignal(status))")
        }
        let code = exitStatus(status)
        guard code == 0 else {
            throw TaskError.failed(code: .exitStatus, message: "\(program) exited with status \(code)")
        }
        return result.get() ?? .object(["exit_status": 0])
    }

    static func event(from o: [String: JSONValue]) -> ProgressEvent {
        ProgressEvent(
            kind: o["kind"]?.stringValue ?? "progress", step: o["step"]?.doubleValue.map { Int($0) },
            total: o["total"]?.doubleValue.map { Int($0) }, loss: o["loss"]?.doubleValue,
            metrics: o["metrics"]?.objectValue ?? [:],
            tokensPerSecond: o["tokens_per_second"]?.doubleValue, etaSeconds: o["eta_seconds"]?.doubleValue,
            message: o["message"]?.stringValue)
    }
}

private func wasSignaled(_ s: Int32) -> Bool { (s & 0x7f) != 0 && (s & 0x7f) != 0x7f }
private func termSignal(_ s: Int32) -> Int32 { s & 0x7f }
private func exitStatus(_ s: Int32) -> Int32 { (s >> 8) & 0xff }

/// A value shared between threads behind a lock.
public final class LockedBox<T: Sendable>: Sendable {
    private let value: Mutex<T>
    public init(_ value: T) { self.value = Mutex(value) }
    public func get() -> T { value.withLock { $0 } }
    public func set(_ v: T) { value.withLock { $0 = v } }
    public func update(_ body: (inout T) -> Void) { value.withLock { body(&$0) } }
}

/// A child process in its own process group with piped stdout and stderr (posix_spawn).
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    let stdout: Int32
    let stderr: Int32

    init(program: String, arguments: [String], directory: String?) throws {
        var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        // Close-on-exec (set right after pipe(2); pipe2 is not visible from Swift), so that children spawned concurrently by other jobs do not inherit these
        // ends (a leaked write end would keep the reader from ever seeing end of file).
        guard pipe(&outPipe) == 0, pipe(&errPipe) == 0 else {
            throw TaskError.failed(code: .spawnFailed, message: "pipe: \(String(cString: strerror(errno)))")
        }
        for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // fwp_spawn: its own process group, a parent-death signal (it dies with fwpd), default
        // signals, stdin from /dev/null, stdout and stderr to the pipes.
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var child: pid_t = -1
        var error: Int32 = 0
        for _ in 0..<50 {
            child = fwp_spawn(program, argv, environ, directory, outPipe[1], errPipe[1], &error)
            // ETXTBSY: another thread's fork briefly holds a just-written script open for writing.
            guard child < 0 && error == ETXTBSY else { break }
            usleep(10_000)
        }
        close(outPipe[1])
        close(errPipe[1])
        guard child > 0 else {
            close(outPipe[0])
            close(errPipe[0])
            throw TaskError.failed(
                code: .spawnFailed, message: "cannot start \(program): \(String(cString: strerror(error)))")
        }
        pid = child
        stdout = outPipe[0]
        stderr = errPipe[0]
    }

    /// The raw wait status once the child has exited, nil while it runs.
    func poll() -> Int32? {
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        return r == pid ? status : nil
    }

    func signalGroup(_ signal: Int32) { kill(-pid, signal) }

    /// Calls `body` with each line read from `fd` until end of file.
    func readLines(fd: Int32, _ body: (String) -> Void) {
        var buffer = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            buffer.append(contentsOf: chunk[0..<n])
            while let nl = buffer.firstIndex(of: 10) {
                body(String(decoding: buffer[..<nl], as: UTF8.self))
                buffer.removeSubrange(...nl)
            }
            if buffer.count > 1 << 20 {  // an endless line: pass it on in pieces
                body(String(decoding: buffer, as: UTF8.self))
                buffer.removeAll()
            }
        }
        if !buffer.isEmpty { body(String(decoding: buffer, as: UTF8.self)) }
    }

    func closePipes() {
        close(stdout)
        close(stderr)
    }
}
