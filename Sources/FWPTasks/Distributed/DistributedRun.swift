import FWPCore
import FWPProtocol
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Runs a job of several ranks: `mpirun` starts `fwp-task rank` as `ranks` processes, and this
/// side relays what rank 0 reports into the job's own context — events, checkpoints, the result —
/// so that the job looks the same as one run in-process. Used by fwpd's local executor and by
/// `fwp-task run --ranks N`.
///
/// The ranks speak the relay protocol (docs/SCALING.md, "How a job of several ranks runs"): one
/// JSON object per line on standard output, with one key each — `event` (a progress event),
/// `checkpoint` (`file`, `step`, `best`: a checkpoint file written in the relay folder),
/// `log` (`level`, `message`), `result`, `stopped`, or `error` (`code`, `message`, `rank`). The
/// checkpoint to resume from is handed over as `resume.safetensors` in the relay folder.
///
/// Stopping: a pause (`checkpointBeforeStopping`) sends SIGUSR1 to mpirun, which passes it to
/// every rank; the ranks agree to stop after the current step, rank 0 writes a checkpoint, and
/// all exit. A cancel sends SIGTERM, on which mpirun ends the ranks. Either way, whatever is left
/// of mpirun's process group after `grace` seconds is killed.
public struct DistributedRun: Sendable {
    public var launch: MPILaunch
    /// The `fwp-task` executable the ranks run.
    public var taskProgram: String
    /// Seconds to wait for ranks to stop on a cancel before they are killed.
    public var cancelGrace: Double = 10
    /// Seconds to wait for a paused job's step and checkpoint before it is killed.
    public var pauseGrace: Double = 300

    public init(launch: MPILaunch, taskProgram: String) {
        self.launch = launch
        self.taskProgram = taskProgram
    }

    /// `fwp-task` beside the running executable (fwpd and fwp-task are built and installed
    /// together), or nil.
    public static var siblingTaskProgram: String? {
        var path = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &path, path.count - 1)
        guard n > 0 else { return nil }
        let exe = URL(fileURLWithPath: String(decoding: path.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self))
        let candidate = exe.deletingLastPathComponent().appendingPathComponent("fwp-task").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : nil
    }

    /// Runs `module` with validated `parameters` as `ranks` processes of `threadsPerRank` threads,
    /// using `folder` for the hand-over files (made afresh, removed at the end).
    public func run(
        module: String, parameters: TaskParameters, ranks: Int, threadsPerRank: Int, folder: URL,
        context: TaskContext
    ) throws -> JSONValue {
        guard let mpirun = launch.program else {
            throw TaskError.failed(
                code: .rankFailed,
                message: "\(launch.mpirun) is not installed (Open MPI: apt-get install openmpi-bin libopenmpi-dev)")
        }
        let parametersFile = try Self.prepare(folder, parameters: parameters, context: context)
        defer { try? FileManager.default.removeItem(at: folder) }
        var launchArguments = launch
        launchArguments.mpirun = mpirun
        let argv = launchArguments.arguments(
            ranks: ranks,
            command: [
                taskProgram, "rank", module, "--parameters", parametersFile.path, "--relay", folder.path, "--threads",
                "\(threadsPerRank)",
            ])
        let child = try ChildProcess(program: argv[0], arguments: Array(argv.dropFirst()), directory: nil)
        context.recordChildProcessGroup(ChildProcessGroup.led(by: child.pid))
        let outcome = LockedBox<Outcome>(Outcome())
        let done = DispatchGroup()
        done.enter()
        Thread.detachNewThread {
            child.readLines(fd: child.stdout) { line in
                Self.relay(line, folder: folder, context: context, outcome: outcome)
            }
            done.leave()
        }
        done.enter()
        Thread.detachNewThread {
            child.readLines(fd: child.stderr) { line in
                guard !line.trimmingCharacters(in: .whitespaces).isEmpty else { return }
                context.log(.warning, "mpirun: \(line)")
                outcome.update { $0.stderrTail = Array(($0.stderrTail + [line]).suffix(20)) }
            }
            done.leave()
        }
        var stopSentAt: Date? = nil, grace = cancelGrace, killed = false, stoppedByUs = false
        var status: Int32 = 0
        while true {
            if let s = child.poll() {
                status = s
                break
            }
            if stopSentAt == nil, context.isCancelled {
                stoppedByUs = true
                if context.checkpointBeforeStopping {
                    kill(child.pid, SIGUSR1)
                    grace = pauseGrace
                } else {
                    kill(child.pid, SIGTERM)
                }
                stopSentAt = Date()
            } else if let sent = stopSentAt, !killed, Date().timeIntervalSince(sent) >= grace {
                child.signalGroup(SIGKILL)
                killed = true
            }
            usleep(20_000)
        }
        // mpirun has exited; nothing it started may keep running or hold the pipes open.
        child.signalGroup(SIGKILL)
        done.wait()
        child.closePipes()
        context.recordChildProcessGroup(nil)
        let o = outcome.get()
        if let e = o.error { throw TaskError.failed(code: e.code, message: e.message) }
        if o.stopped || stoppedByUs { throw TaskError.cancelled }
        if let r = o.result, exitStatus(status) == 0 && !wasSignaled(status) { return r }
        let summary =
            o.stderrTail.last(where: { $0.contains("process rank") || $0.contains("exited") })
            ?? o.stderrTail.last ?? "no message"
        let how =
            wasSignaled(status) ? "was killed by signal \(status & 0x7f)" : "exited with status \(exitStatus(status))"
        throw TaskError.failed(code: .rankFailed, message: "mpirun \(how) before the job finished: \(summary)")
    }

    public static let resumeFileName = "resume.safetensors"

    /// Makes `folder` afresh with what the ranks read: the validated parameters
    /// (`parameters.json`, returned) and the checkpoint to resume from, if the job has one.
    public static func prepare(_ folder: URL, parameters: TaskParameters, context: TaskContext) throws -> URL {
        try? FileManager.default.removeItem(at: folder)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let parametersFile = folder.appendingPathComponent("parameters.json")
        try Data(JSONValue.object(parameters.values).jsonText.utf8).write(to: parametersFile)
        if let data = try context.latestCheckpoint() {
            try writeFileDurably(data, to: folder.appendingPathComponent(resumeFileName))
        }
        return parametersFile
    }

    /// What the ranks reported of their end.
    public struct Outcome: Sendable {
        public var result: JSONValue? = nil
        public var error: (code: ErrorCode, message: String)? = nil
        public var stopped = false
        public var stderrTail: [String] = []
        public init() {}
    }

    /// Handles one relay-protocol line from rank 0 (the same for mpirun's standard output and
    /// fwpd's ingest endpoint).
    public static func relay(_ line: String, folder: URL, context: TaskContext, outcome: LockedBox<Outcome>) {
        guard let value = try? JSONValue.parse(line), case .object(let o) = value, o.count == 1,
            let (key, body) = o.first
        else {
            if !line.isEmpty { context.emit(ProgressEvent(kind: "log", message: line)) }
            return
        }
        switch key {
        case "event":
            if let e = try? WireJSON.decode(ProgressEvent.self, from: Array(body.jsonText.utf8)) { context.emit(e) }
        case "checkpoint":
            guard let name = body["file"]?.stringValue, !name.contains("/"),
                let step = body["step"]?.doubleValue.map({ Int($0) })
            else { return }
            let url = folder.appendingPathComponent(name)
            do {
                guard let data = FileManager.default.contents(atPath: url.path) else {
                    throw TaskError.failed(code: .badCheckpoint, message: "rank 0's checkpoint \(name) is missing")
                }
                try Safetensors.verify(data)
                try context.saveCheckpoint(data, step: step, best: body["best"]?.boolValue ?? false)
                try? FileManager.default.removeItem(at: url)
            } catch {
                context.log(.error, "checkpoint of step \(step) not kept: \(error)")
            }
        case "log":
            let level = body["level"]?.stringValue.flatMap(TaskLogLevel.init(rawValue:)) ?? .info
            context.log(level, body["message"]?.stringValue ?? "")
        case "result":
            outcome.update { $0.result = body }
        case "stopped":
            outcome.update { $0.stopped = true }
        case "error":
            let code = ErrorCode(body["code"]?.stringValue ?? ErrorCode.internal.rawValue)
            var message = body["message"]?.stringValue ?? "a rank failed"
            if let rank = body["rank"]?.doubleValue, rank != 0 { message = "rank \(Int(rank)): \(message)" }
            outcome.update { if $0.error == nil { $0.error = (code, message) } }
        default:
            context.emit(ProgressEvent(kind: "log", message: line))
        }
    }
}

private func wasSignaled(_ s: Int32) -> Bool { (s & 0x7f) != 0 && (s & 0x7f) != 0x7f }
private func exitStatus(_ s: Int32) -> Int32 { (s >> 8) & 0xff }
