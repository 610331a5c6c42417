import FWPProtocol
import FWPTasks
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Data-parallel training on real Open MPI: `fwp-task run --ranks N` and fwpd launching mpirun.
/// (In DaemonTests' serialized suite: ranks on this machine's two cores should not also share
/// them with the other daemon tests.)
extension DaemonTests {
    /// A text of a few thousand words drawn from a small vocabulary (deterministic).
    static func rankTestText() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fwp-ranks-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let words = [
            "fast", "weight", "programmer", "delta", "rule", "key", "value", "query", "slow", "net", "the", "a",
        ]
        var x: UInt64 = 12345
        var text = ""
        for i in 0..<6000 {
            x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            text += words[Int(x >> 33) % words.count] + (i % 13 == 12 ? ".\n" : " ")
        }
        let url = dir.appendingPathComponent("text.txt")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    /// A small LM with everything a rank split touches: seven shards, dropout (per-shard random
    /// streams), carried fast weights (per-rank rows of the state) and two checkpoints.
    static func rankTestParameters(_ text: URL, steps: Int = 6, batch: Int = 16) -> [String] {
        [
            "train=\(text.path)", "layers=1", "model_size=32", "heads=2", "head_size=16", "ff=64", "batch=\(batch)",
            "segment=32", "steps=\(steps)", "eval_every=3", "eval_segments=1", "carry=true", "dropout=0.1",
            "warmup=2",
        ].flatMap { ["--set", $0] }
    }

    /// A started fwpd whose data roots hold the rank tests' text, two threads per job.
    func rankDaemon(_ text: URL, state: URL? = nil) throws -> DaemonProcess {
        try DaemonProcess(
            state: state, arguments: ["--data-roots", text.deletingLastPathComponent().path, "--threads-per-job", "2"]
        ).start()
    }

    /// `rankTestParameters` as a submit's parameter object.
    static func rankTestObject(_ text: URL, steps: Int) throws -> [String: JSONValue] {
        var parameters: [String: JSONValue] = [:]
        for pair in rankTestParameters(text, steps: steps) where pair != "--set" {
            let (k, v) = try parseOverride(pair)
            parameters[k] = v
        }
        return parameters
    }

    /// Runs fwp-task; returns its exit status, standard output and standard error.
    func fwpTask(_ arguments: [String], whileRunning: ((Process) -> Void)? = nil) throws -> (Int32, String, String) {
        let p = Process()
        p.executableURL = productsDirectory.appendingPathComponent("fwp-task")
        p.arguments = arguments
        p.currentDirectoryURL = repositoryRoot
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let outData = LockedData(), errData = LockedData()
        let group = DispatchGroup()
        for (pipe, box) in [(out, outData), (err, errData)] {
            group.enter()
            Thread.detachNewThread {
                box.set(pipe.fileHandleForReading.readDataToEndOfFile())
                group.leave()
            }
        }
        whileRunning?(p)
        // A hung launch fails the test instead of the whole run: fwp-task ends, and mpirun and
        // the ranks die with it (parent-death signals).
        if group.wait(timeout: .now() + 300) == .timedOut {
            Issue.record("fwp-task \(arguments.prefix(3)) ran past 300 s")
            kill(p.processIdentifier, SIGKILL)
            group.wait()
        }
        p.waitUntilExit()
        return (
            p.terminationStatus, String(decoding: outData.get(), as: UTF8.self),
            String(decoding: errData.get(), as: UTF8.self)
        )
    }

    func checkpoint(_ state: URL, step: Int) -> Data? {
        FileManager.default.contents(
            atPath: state.appendingPathComponent("checkpoints").appendingPathComponent(
                CheckpointRetention.stepFileName(step)
            ).path)
    }

    /// 1, 2 and 3 ranks at the same global batch write the same checkpoint, byte for byte; a
    /// second 2-rank run repeats it; a run stopped after step 3 with 2 ranks resumes with 3 and
    /// ends at the same bytes as the uninterrupted runs.
    @Test func ranksGiveTheSameBitsAndResumeAcrossRankCounts() throws {
        let text = try Self.rankTestText()
        let base = text.deletingLastPathComponent()
        var final: [String: Data] = [:]
        for (label, ranks) in [("1", 1), ("2", 2), ("3", 3), ("2-again", 2)] {
            let state = base.appendingPathComponent("state-\(label)")
            let (status, out, err) = try fwpTask(
                ["run", "lm", "--state", state.path, "--fresh", "--json", "--ranks", "\(ranks)"]
                    + Self.rankTestParameters(text))
            #expect(status == 0, "\(ranks) ranks: \(err)")
            if ranks > 1 { #expect(out.contains("\"ranks\":\(ranks)"), "the result names the ranks: \(out)") }
            final[label] = checkpoint(state, step: 6)
            #expect(final[label] != nil, "\(label): step 6 checkpoint")
        }
        #expect(final["1"] == final["2"], "2 ranks give 1 rank's bits")
        #expect(final["1"] == final["3"], "3 ranks give 1 rank's bits")
        #expect(final["2"] == final["2-again"], "the same rank count repeats")

        // Resume: drop step 6 from the 2-rank run; 3 ranks continue from step 3.
        let state = base.appendingPathComponent("state-2")
        try FileManager.default.removeItem(
            at: state.appendingPathComponent("checkpoints").appendingPathComponent(CheckpointRetention.stepFileName(6)))
        let (status, out, err) = try fwpTask(
            ["run", "lm", "--state", state.path, "--json", "--ranks", "3"] + Self.rankTestParameters(text))
        #expect(status == 0, "\(err)")
        #expect(err.contains("resuming from step 3"), "resumed: \(out) \(err)")
        #expect(checkpoint(state, step: 6) == final["1"], "2 ranks, then 3, give the uninterrupted bits")
        // A batch of 40 (three blocks of shards): the ranks' runs start and end inside blocks.
        var big: [Int: Data] = [:]
        for ranks in [1, 2, 3, 5] {
            let state = base.appendingPathComponent("big-\(ranks)")
            let (status, _, err) = try fwpTask(
                ["run", "lm", "--state", state.path, "--fresh", "--json", "--ranks", "\(ranks)"]
                    + Self.rankTestParameters(text, batch: 40))
            #expect(status == 0, "batch 40, \(ranks) ranks: \(err)")
            big[ranks] = checkpoint(state, step: 6)
        }
        #expect(big[1] != nil && big[1] == big[2] && big[1] == big[3] && big[1] == big[5], "batch 40: same bits")
        // More ranks than the batch has shards is refused up front.
        let (refused, _, message) = try fwpTask(
            ["run", "lm", "--state", state.path, "--ranks", "8"] + Self.rankTestParameters(text))
        #expect(DataParallel.assignment(shardSizes: [4, 3, 3, 2, 2, 1, 1], ranks: 2) == [0..<2, 2..<7])
        #expect(refused != 0 && message.contains("at most 7 ranks"), "\(message)")
    }

    /// The MPI wrapper on real Open MPI: the collectives give what they must, and an invalid call
    /// comes back as an error carrying MPI's own message.
    @Test func mpiCheckPassesOnTwoRanks() throws {
        let program = productsDirectory.appendingPathComponent("fwp-task").path
        let argv = MPILaunch().arguments(ranks: 2, command: [program, "mpi-check"])
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "\(text)")
        for rank in 0..<2 {
            #expect(
                text.contains("rank \(rank) of 2: collectives ok; invalid call: MPI_Send failed: MPI_ERR_RANK"),
                "\(text)")
        }
    }

    /// FAVOR+ redraws its projections every step, once for the whole batch before the shards:
    /// every rank draws the same ones, so 2 ranks give 1 rank's bits.
    @Test func favorRanksGiveOneRanksBits() throws {
        let text = try Self.rankTestText()
        let base = text.deletingLastPathComponent()
        var final: [Int: Data] = [:]
        for ranks in [1, 2] {
            let state = base.appendingPathComponent("favor-\(ranks)")
            let (status, out, err) = try fwpTask(
                ["run", "lm", "--state", state.path, "--fresh", "--json", "--ranks", "\(ranks)"]
                    + Self.rankTestParameters(text) + ["--set", "feature_map=favor-8"])
            #expect(status == 0, "\(ranks) ranks: \(err)")
            if ranks > 1 { #expect(out.contains("\"ranks\":\(ranks)"), "the result names the ranks: \(out)") }
            final[ranks] = checkpoint(state, step: 6)
        }
        #expect(final[1] != nil && final[1] == final[2], "2 ranks give 1 rank's bits")
    }

    /// The retrieval task from 2 ranks on cuts its batch into shards: 2 and 3 ranks give the same
    /// bits, and one rank (the whole batch in one product) the same figures to float32 rounding.
    @Test func retrievalRanksAgree() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("fwp-ranks-\(UUID().uuidString)")
        var results: [Int: JSONValue] = [:]
        var final: [Int: Data] = [:]
        for ranks in [1, 2, 3] {
            let state = base.appendingPathComponent("state-\(ranks)")
            let (status, out, err) = try fwpTask(
                ["run", "retrieval", "--state", state.path, "--fresh", "--json", "--ranks", "\(ranks)"]
                    + ["keys=20", "max_steps=60", "eval_every=30", "batch=32", "attention=dpfp-1", "rule=delta"]
                    .flatMap { ["--set", $0] })
            #expect(status == 0, "\(ranks) ranks: \(err)")
            let last = out.split(separator: "\n").last.map(String.init) ?? ""
            results[ranks] = try JSONValue.parse(last)["result"]
            final[ranks] = checkpoint(state, step: 60)
        }
        #expect(final[2] != nil && final[2] == final[3], "2 and 3 ranks: the same bits")
        let one = results[1]?["best_eval_loss"]?.doubleValue ?? .nan
        let two = results[2]?["best_eval_loss"]?.doubleValue ?? .nan
        // Summing per-shard products instead of one product changes the last bits of each
        // gradient (relative ~1e-7); sixty Adam steps carry that to a few parts in 10^7 here.
        #expect(abs(one - two) <= 1e-4 * abs(one) + 1e-7, "1 rank \(one), 2 ranks \(two)")
    }

    /// kill -9 of one rank ends the job with a clear error, and no rank is left running.
    @Test func aKilledRankEndsTheJobWithNothingLeft() throws {
        let text = try Self.rankTestText()
        let state = text.deletingLastPathComponent().appendingPathComponent("state")
        let marker = state.appendingPathComponent("ranks").path
        var killed: Int32 = 0
        let (status, _, err) = try fwpTask(
            ["run", "lm", "--state", state.path, "--fresh", "--json", "--ranks", "2"]
                + Self.rankTestParameters(text, steps: 100_000)
        ) { _ in
            let deadline = Date().addingTimeInterval(60)
            var ranks: [Int32] = []
            while ranks.count < 2 && Date() < deadline {
                usleep(100_000)
                let program = productsDirectory.appendingPathComponent("fwp-task").path
                ranks = self.processes(containing: marker).filter { self.commandLine($0).hasPrefix(program + " rank ") }
            }
            usleep(1_500_000)  // into training
            if let victim = ranks.last {
                kill(victim, SIGKILL)
                killed = victim
            }
        }
        #expect(killed != 0, "found the ranks")
        #expect(status == 1, "fwp-task fails: \(err)")
        #expect(err.contains("rank_failed"), "the error says a rank failed: \(err)")
        waitFor(processes(containing: marker).isEmpty, "no rank or mpirun left", timeout: 10)
    }

    /// fwpd runs a job with ranks = 2 under mpirun, streams its progress as for any job, and a
    /// cancel stops every rank; a kill -9 of fwpd takes the ranks with it and the restarted fwpd
    /// resumes the job from its checkpoint.
    @Test func fwpdRunsCancelsAndResumesAJobOfTwoRanks() throws {
        let text = try Self.rankTestText()
        let d = try rankDaemon(text)
        let c = try d.client()
        var parameters = try Self.rankTestObject(text, steps: 100_000)
        parameters["ranks"] = 2
        parameters["eval_every"] = 20
        let marker = d.state.appendingPathComponent("ranks").path
        #expect(try c.ok("health")["executor"] == "local")
        let job = try c.submit(["task": "lm", "parameters": .object(parameters)])
        // Progress events arrive from rank 0, with the rank count, and a checkpoint is indexed.
        _ = try c.wait(job.id, timeout: 120) { _ in
            (try? c.ok("checkpoints", ["job": .number(Double(job.id))])["checkpoints"].map { $0 != .array([]) }) == true
        }
        let progress = try c.events(job.id).filter { $0.event.kind == "progress" }
        #expect(progress.last?.event.metrics["ranks"] == 2, "progress from the ranks")
        #expect(processes(containing: marker).count == 3, "mpirun and two ranks")
        // kill -9 of fwpd: mpirun and the ranks die with it; the restarted fwpd resumes the job.
        d.stop(SIGKILL)
        waitFor(processes(containing: marker).isEmpty, "the ranks died with fwpd", timeout: 10)
        let restarted = try rankDaemon(text, state: d.state)
        defer { restarted.stop() }
        let c2 = try restarted.client()
        let resumed = try c2.wait(job.id, timeout: 120) { j in
            j.attempt == 2 && restarted.log().contains("resuming from step")
        }
        #expect(resumed.state == .running)
        waitFor(processes(containing: marker).count == 3, "mpirun and two ranks again")
        #expect(try c2.ok("cancel", ["job": .number(Double(job.id))])["id"] != nil)
        #expect(try c2.wait(job.id) { $0.state.isFinal }.state == .cancelled)
        waitFor(processes(containing: marker).isEmpty, "cancel stopped every rank", timeout: 15)
    }

    /// SIGTERM of fwpd during a job of 2 ranks: the ranks agree to stop after a step, rank 0
    /// writes a checkpoint, every rank exits, fwpd requeues the job and exits 0; the restarted
    /// fwpd resumes from that checkpoint (not from the last evaluation) and finishes the job.
    @Test func fwpdShutdownPausesRanksAtACheckpoint() throws {
        let text = try Self.rankTestText()
        let d = try rankDaemon(text)
        let c = try d.client()
        var parameters = try Self.rankTestObject(text, steps: 2000)
        parameters["ranks"] = 2
        parameters["eval_every"] = 1000  // no checkpoint but the one the stop writes
        let marker = d.state.appendingPathComponent("ranks").path
        let job = try c.submit(["task": "lm", "parameters": .object(parameters)])
        _ = try c.wait(job.id, timeout: 120) { j in
            j.lastSeq > 2 && (try? c.events(job.id).contains { $0.event.kind == "progress" }) == true
        }
        #expect(d.stop(SIGTERM) == 0, "graceful stop exits 0: \(d.log())")
        waitFor(processes(containing: marker).isEmpty, "every rank exited with fwpd")
        let restarted = try rankDaemon(text, state: d.state)
        defer { restarted.stop() }
        let c2 = try restarted.client()
        let done = try c2.wait(job.id, timeout: 180) { $0.state.isFinal }
        #expect(done.state == .succeeded, "\(restarted.log())")
        #expect(done.attempt == 1, "a graceful stop spends no attempt")
        let events = try c2.events(job.id)
        // The second "queued" (the first is the submit's).
        let requeued = events.indices.filter { events[$0].kind == "state" && events[$0].state == .queued }.dropFirst()
            .first
        #expect(requeued != nil, "the stop requeued the job")
        guard let requeued, let paused = events[..<requeued].last(where: { $0.kind == "checkpoint" })?.step else {
            Issue.record("no checkpoint before the requeue: \(events.map(\.kind))")
            return
        }
        #expect(paused > 0 && paused < 2000, "paused at step \(paused)")
        let firstAfter = events[requeued...].first { $0.kind == "progress" }?.step ?? 0
        #expect(firstAfter > paused, "resumed after step \(paused), at \(firstAfter)")
        #expect(done.result?["steps"] == 2000 && done.result?["ranks"] == 2)
    }

    func waitFor(_ condition: @autoclosure () -> Bool, _ what: String, timeout: Double = 30) {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() && Date() < deadline { usleep(50_000) }
        #expect(condition(), "\(what)")
    }

    func commandLine(_ pid: Int32) -> String {
        let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()
        return String(decoding: raw.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
    }
}

/// Bytes shared between a reader thread and the test.
final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func set(_ d: Data) { lock.withLock { data = d } }
    func get() -> Data { lock.withLock { data } }
}

/// Ranks started by Slurm rather than mpirun: srun with PMIx starts fwp-task's ranks on a real
/// one-node cluster, and MPI comes up through PMIx.
extension DaemonTests {
    @Test(.enabled(if: SlurmCluster.available, "needs root and Debian's slurm-wlm and munge"))
    func ranksRunUnderSlurmWithPMIx() throws {
        let cluster = try SlurmCluster()
        defer { cluster.stop() }
        let program = productsDirectory.appendingPathComponent("fwp-task").path
        let (status, out) = try cluster.run("/usr/bin/srun", ["-n", "2", "--mpi=pmix", program, "mpi-check"])
        #expect(status == 0, "\(out)")
        for rank in 0..<2 {
            #expect(out.contains("rank \(rank) of 2: collectives ok"), "\(out)")
        }
    }
}
