import FWPCore
import FWPStore
import FWPTasks
import Foundation
import Logging
import ZeroMQ

/// A run that ended outside fwpd's control (a node failed, the job was preempted, cancelled from
/// outside or ran out of time): the scheduler requeues it, spending an attempt, and it resumes
/// from its latest checkpoint.
struct RunLost: Error {
    let reason: String
}

/// The executor's back end does not answer (Slurm's controller is down or unreachable): the job
/// was not started; it waits in the queue, and claims pause for `retrySeconds`.
struct ExecutorUnavailable: Error {
    let message: String
    var retrySeconds = 10.0
}

/// A cluster behind Slurm: each claimed job becomes a batch job (sbatch) whose `srun` starts
/// `fwp-task rank` as the job's ranks (one without `ranks`); rank 0 sends its events to fwpd's
/// ingest endpoint, which relays them into the job's context as a local run's are. Hand-over
/// files and checkpoints pass through `shared_directory`, which fwpd and the nodes see alike.
///
/// fwpd follows the job with squeue (then scontrol for its end state); a cancel is scancel, and
/// fwpd's shutdown asks the ranks (SIGUSR1) to checkpoint and stop, as under mpirun.
struct SlurmExecutor: JobExecutor {
    let config: DaemonConfig
    let logger: Logger
    let ingest: IngestServer
    let name = "slurm"
    /// Whether Slurm answered its last probe (squeue every few seconds, on a thread of its own,
    /// so that `health` never waits on Slurm), and what it said when it did not.
    private let answers = LockedBox<(ok: Bool, message: String)>((false, "not asked yet"))

    init(config: DaemonConfig, logger: Logger, ingest: IngestServer) {
        self.config = config
        self.logger = logger
        self.ingest = ingest
        let answers = self.answers
        Thread.detachNewThread {
            while true {
                let (rc, out) = Self.command("squeue", ["-h", "-o", "%i"], timeout: 10)
                answers.set(rc == 0 ? (true, "") : (false, out.split(separator: "\n").last.map(String.init) ?? out))
                Thread.sleep(forTimeInterval: 3)
            }
        }
    }

    var status: JSONValue? {
        let a = answers.get()
        return a.ok ? .object(["answers": true]) : .object(["answers": false, "message": .string(a.message)])
    }

    /// Whether sbatch's complaint means the controller could not be reached (rather than that it
    /// refused the script).
    static func unreachable(_ reply: String) -> Bool {
        [
            "Unable to contact slurm controller", "Socket timed out", "Connection refused",
            "Zero Bytes were transmitted", "Communication connection failure",
        ].contains { reply.contains($0) }
    }

    /// A Slurm command's exit status and output (standard output and error together).
    static func command(
        _ program: String, _ arguments: [String], environment: [String: String] = [:], timeout: Double = 60
    ) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [program] + arguments
        if !environment.isEmpty {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        do { try p.run() } catch { return (127, "cannot run \(program): \(error)") }
        let data = LockedBox<Data>(Data())
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            data.set(out.fileHandleForReading.readDataToEndOfFile())
            done.signal()
        }
        if done.wait(timeout: .now() + timeout) == .timedOut {
            p.terminate()
            done.wait()
        }
        p.waitUntilExit()
        return (
            p.terminationStatus,
            String(decoding: data.get(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        )
    }

    func run(_ job: JobInfo, module: any TaskModule, parameters: TaskParameters, context: JobContext) throws
        -> JSONValue
    {
        let folder = URL(fileURLWithPath: config.sharedDirectory).appendingPathComponent("jobs")
            .appendingPathComponent("job-\(job.id)")
        let outcome = LockedBox<DistributedRun.Outcome>(DistributedRun.Outcome())
        let handle: @Sendable (Int64, String) -> Void = { seq, line in
            context.handleIngested(seq: seq) {
                DistributedRun.relay(line, folder: folder, context: context, outcome: outcome)
            }
        }
        let tokenFile = folder.appendingPathComponent("token")
        let keysFile = folder.appendingPathComponent("ingest-keys")
        // fwpd stopped unexpectedly while this job ran under Slurm (its folder is still there):
        // follow that Slurm job again if it still runs, or take what it left if it ended.
        if let previous = job.slurmJob, let token = try? String(contentsOf: tokenFile, encoding: .utf8) {
            defer { try? FileManager.default.removeItem(at: folder) }
            let clientKey = (try? String(contentsOf: keysFile, encoding: .utf8)).flatMap {
                $0.split(separator: "\n").dropFirst().first.flatMap {
                    try? CurveKeyPair.publicKey(forSecret: String($0))
                }
            }
            ingest.register(token, last: try context.store.ingestSeq(job.id), clientKey: clientKey, handle)
            defer { ingest.unregister(token) }
            let (rc, state) = Self.command("squeue", ["-h", "-j", previous, "-o", "%T"])
            if rc == 0 && !state.isEmpty && !Self.finalStates.contains(state) {
                context.emit(ProgressEvent(kind: "log", message: "re-attached to Slurm job \(previous) (\(state))"))
                logger.info("job \(job.id): re-attached to Slurm job \(previous)")
            } else {
                context.emit(ProgressEvent(kind: "log", message: "Slurm job \(previous) ended while fwpd was away"))
            }
            return try follow(previous, job: job, folder: folder, token: token, context: context, outcome: outcome)
        }

        let ranks = parameters.values["ranks"]?.doubleValue.map { Int($0) } ?? 1
        guard let program = config.taskProgram.isEmpty ? DistributedRun.siblingTaskProgram : config.taskProgram else {
            throw WireError(.rankFailed, "fwp-task is not installed beside fwpd (see task_program)")
        }
        let parametersFile = try DistributedRun.prepare(folder, parameters: parameters, context: context)
        defer { try? FileManager.default.removeItem(at: folder) }
        let token = (0..<4).map { _ in String(format: "%016llx", UInt64.random(in: 0...UInt64.max)) }.joined()
        try writePrivate(token, to: tokenFile)
        // With CURVE, the job's workers get a key pair of their own, let in while the job runs.
        var clientKey: String? = nil
        if let serverKey = ingest.serverPublicKey {
            let keys = try CurveKeyPair.generate()
            try writePrivate("\(serverKey)\n\(keys.secretKey)\n", to: keysFile)
            clientKey = keys.publicKey
        }
        // The job's own settings, checked again: the configuration may have changed since submit.
        let asked = try SlurmRequest(job.slurm ?? [:], allowedPartitions: config.slurmPartitions)
        let cpus =
            asked.cpusPerTask ?? (config.slurmCPUsPerTask > 0 ? config.slurmCPUsPerTask : config.effectiveThreadsPerJob)
        // The Slurm job's name is this fwpd's (its state folder's) and the job's. A Slurm job of an
        // earlier attempt still running under it (fwpd was killed after sbatch, before it recorded
        // the Slurm job) is cancelled first, so that the job never runs twice.
        let slurmName = "fwp-\(Digest.sha256Hex(Data(config.stateDirectory.utf8)).prefix(8))-\(job.id)"
        let (_, stale) = Self.command("squeue", ["-h", "--name=\(slurmName)", "-o", "%i"])
        if !stale.isEmpty {
            logger.warning("job \(job.id): cancelling Slurm job(s) \(stale) left from an earlier attempt")
            _ = Self.command("scancel", ["--name=\(slurmName)"])
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline && !Self.command("squeue", ["-h", "--name=\(slurmName)", "-o", "%i"]).1.isEmpty {
                usleep(200_000)
            }
        }
        var script = "#!/bin/sh\n"
        for (option, value) in [
            ("job-name", slurmName), ("output", folder.appendingPathComponent("slurm-%j.out").path),
            ("ntasks", "\(ranks)"), ("cpus-per-task", "\(cpus)"),
            ("partition", asked.partition ?? config.slurmPartition), ("account", config.slurmAccount),
            ("time", asked.timeLimit ?? config.slurmTimeLimit), ("mem", asked.memory ?? config.slurmMemory),
        ] where !value.isEmpty {
            script += "#SBATCH --\(option)=\(value)\n"
        }
        let ingestAddress = config.ingestAddress.isEmpty ? config.ingestEndpoint : config.ingestAddress
        var rankCommand = [
            program, "rank", job.task, "--parameters", parametersFile.path, "--relay", folder.path, "--threads",
            "\(cpus)", "--ingest", ingestAddress, "--ingest-token-file", tokenFile.path,
        ]
        if clientKey != nil { rankCommand += ["--ingest-keys-file", keysFile.path] }
        script += "exec srun --mpi=pmix " + rankCommand.map { "'\($0)'" }.joined(separator: " ") + "\n"
        let scriptFile = folder.appendingPathComponent("job.sh")
        try Data(script.utf8).write(to: scriptFile)

        // A new run: its worker numbers its lines from 1.
        try context.store.setIngestSeq(job.id, 0)
        ingest.register(token, clientKey: clientKey, handle)
        defer { ingest.unregister(token) }
        let (status, reply) = Self.command("sbatch", ["--parsable"] + config.slurmOptions + [scriptFile.path])
        guard status == 0, let slurmJob = reply.split(separator: ";").first.map(String.init), Int(slurmJob) != nil
        else {
            if Self.unreachable(reply) {
                throw ExecutorUnavailable(
                    message: "Slurm does not answer (sbatch: \(reply.split(separator: "\n").last ?? ""))")
            }
            throw TaskError.failed(code: .slurmRefused, message: "sbatch: \(reply)")
        }
        try context.store.setSlurmJob(job.id, slurmJob)
        context.emit(ProgressEvent(kind: "log", message: "running as Slurm job \(slurmJob)"))
        logger.info("job \(job.id): Slurm job \(slurmJob)")
        return try follow(slurmJob, job: job, folder: folder, token: token, context: context, outcome: outcome)
    }

    /// Follows Slurm job `slurmJob` until it ends, passing on fwpd's cancel (scancel) and shutdown
    /// (SIGUSR1: the ranks checkpoint and stop); returns the job's result or throws its outcome.
    private func follow(
        _ slurmJob: String, job: JobInfo, folder: URL, token: String, context: JobContext,
        outcome: LockedBox<DistributedRun.Outcome>
    ) throws -> JSONValue {
        var signalled: String? = nil
        var lastPoll = Date.distantPast
        while true {
            if signalled == nil, context.isCancelled {
                signalled = context.checkpointBeforeStopping ? "USR1" : "TERM"
                _ = Self.command("scancel", ["--signal=\(signalled!)", slurmJob])
                if signalled == "TERM" { _ = Self.command("scancel", [slurmJob]) }
            }
            if Date().timeIntervalSince(lastPoll) >= 1 {
                lastPoll = Date()
                let (rc, state) = Self.command("squeue", ["-h", "-j", slurmJob, "-o", "%T"])
                if rc == 0 && (state.isEmpty || Self.finalStates.contains(state)) { break }
                // squeue forgets a finished job after a while and then says so with an error.
                if rc != 0 && state.contains("Invalid job id") { break }
            }
            usleep(100_000)
        }
        func ended() -> Bool {
            let o = outcome.get()
            return o.result != nil || o.error != nil || o.stopped
        }
        // The ranks flush their lines before they exit; give the last ones a moment to arrive.
        let deadline = Date().addingTimeInterval(10)
        while !ended() && Date() < deadline { usleep(100_000) }
        // What rank 0 could not deliver (fwpd was away when it ended) it left in the folder: its
        // unacknowledged lines, and its last line (the result, or why it stopped).
        if !ended(), let text = try? String(contentsOf: folder.appendingPathComponent("unsent.jsonl"), encoding: .utf8)
        {
            for entry in text.split(separator: "\n") {
                guard let tab = entry.firstIndex(of: "\t"), let seq = Int64(entry[..<tab]) else { continue }
                ingest.deliver(token, seq: seq, line: String(entry[entry.index(after: tab)...]))
            }
        }
        if !ended(), let line = try? String(contentsOf: folder.appendingPathComponent("final"), encoding: .utf8) {
            DistributedRun.relay(line, folder: folder, context: context, outcome: outcome)
        }
        // A rank other than 0 that failed said why on its standard output, in Slurm's output file.
        if !ended(),
            let text = try? String(
                contentsOf: folder.appendingPathComponent("slurm-\(slurmJob).out"), encoding: .utf8)
        {
            for line in text.split(separator: "\n") where line.hasPrefix("{\"error\":") {
                DistributedRun.relay(String(line), folder: folder, context: context, outcome: outcome)
            }
        }
        let (_, info) = Self.command("scontrol", ["show", "job", slurmJob])
        let state =
            info.split(separator: " ").first { $0.hasPrefix("JobState=") }.map { String($0.dropFirst(9)) }
            ?? "gone"
        let o = outcome.get()
        if let e = o.error { throw TaskError.failed(code: e.code, message: e.message) }
        if let r = o.result { return r }
        if signalled != nil { throw TaskError.cancelled }
        // Stopped without fwpd asking: Slurm signalled the ranks (scancel from outside, a time
        // limit, preemption) or killed them.
        throw RunLost(
            reason:
                "Slurm job \(slurmJob) ended \(state)\(o.stopped ? " (its ranks were signalled)" : "") before the job finished"
        )
    }

    /// Writes `text` to a new file only fwpd's user may read (the job's token and keys).
    private func writePrivate(_ text: String, to url: URL) throws {
        try? FileManager.default.removeItem(at: url)
        guard FileManager.default.createFile(atPath: url.path, contents: nil, attributes: [.posixPermissions: 0o600])
        else { throw WireError(.internal, "cannot create \(url.path)") }
        try Data(text.utf8).write(to: url)
    }

    static let finalStates: Set<String> = [
        "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
        "OUT_OF_MEMORY",
    ]
}
