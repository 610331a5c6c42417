import FWPProtocol
import FWPTasks
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A one-node Slurm cluster with an fwpd in front of it (executor = slurm), and a text to train
/// on; both stop when it goes.
final class SlurmSetup {
    let cluster: SlurmCluster
    let text: URL
    let daemon: DaemonProcess
    let client: TestClient

    init(_ tests: DaemonTests) throws {
        cluster = try SlurmCluster()
        text = try DaemonTests.rankTestText()
        daemon = try tests.slurmDaemon(cluster, dataRoot: text.deletingLastPathComponent())
        client = try daemon.client()
    }

    deinit {
        daemon.stop()
        cluster.stop()
    }
}

/// fwpd in front of a real one-node Slurm cluster (executor = slurm).
extension DaemonTests {
    func slurmDaemon(_ cluster: SlurmCluster, dataRoot: URL, extra: [String] = []) throws -> DaemonProcess {
        setenv("SLURM_CONF", cluster.configFile.path, 1)
        let shared = cluster.folder.appendingPathComponent("shared")
        try FileManager.default.createDirectory(at: shared, withIntermediateDirectories: true)
        return try DaemonProcess(
            arguments: [
                "--executor", "slurm", "--shared-directory", shared.path, "--ingest-endpoint",
                "tcp://127.0.0.1:\(freePort())", "--data-roots", dataRoot.path, "--threads-per-job", "1",
            ] + extra
        ).start()
    }

    func slurmJobID(_ c: TestClient, _ job: Int64) -> String? {
        let events = (try? c.events(job)) ?? []
        return events.compactMap { $0.message }.last { $0.hasPrefix("running as Slurm job ") }?
            .split(separator: " ").last.map(String.init)
    }

    /// A job runs under Slurm and its events arrive as a local run's; killed from outside
    /// (scancel --signal=KILL), it is requeued with an attempt spent and resumes from its
    /// checkpoint under a new Slurm job, then succeeds.
    @Test(.enabled(if: SlurmCluster.available, "needs root and Debian's slurm-wlm and munge"))
    func slurmRunsAJobAndRequeuesItWhenKilledOutside() throws {
        let slurm = try SlurmSetup(self)
        defer { withExtendedLifetime(slurm) {} }  // its deinit stops fwpd and the cluster
        let (cluster, text, d, c) = (slurm.cluster, slurm.text, slurm.daemon, slurm.client)
        #expect(try c.ok("health")["executor"] == "slurm")
        var parameters = try Self.rankTestObject(text, steps: 3000)
        parameters["eval_every"] = 100
        let job = try c.submit([
            "task": "lm", "parameters": .object(parameters),
            "slurm": .object(["time_limit": "50", "cpus_per_task": 1]),
        ])
        _ = try c.wait(job.id, timeout: 120) { _ in
            (try? c.ok("checkpoints", ["job": .number(Double(job.id))])["checkpoints"].map { $0 != .array([]) }) == true
        }
        guard let first = slurmJobID(c, job.id) else {
            Issue.record("no Slurm job id in the events: \(d.log())")
            return
        }
        // The job's own sbatch settings reached Slurm.
        let shown = try cluster.run("/usr/bin/scontrol", ["show", "job", first]).1
        #expect(shown.contains("TimeLimit=00:50:00"), "\(shown)")
        #expect(try c.events(job.id).contains { $0.kind == "progress" }, "progress from the node")
        let (rc, out) = try cluster.run("/usr/bin/scancel", ["--signal=KILL", first])
        #expect(rc == 0, "\(out)")
        let again = try c.wait(job.id, timeout: 120) { j in j.attempt == 2 && self.slurmJobID(c, job.id) != first }
        #expect(again.attempt == 2)
        let done = try c.wait(job.id, timeout: 300) { $0.state.isFinal }
        #expect(done.state == .succeeded, "\(d.log())")
        let events = try c.events(job.id)
        #expect(events.map(\.seq) == Array(1...Int64(events.count)), "no lost or duplicated events")
        #expect(
            events.contains { ($0.message ?? "").contains("resuming from step") } || d.log().contains("resuming"),
            "the second Slurm job resumed from a checkpoint")
        #expect(done.result?["steps"] == 3000)
    }

    /// cancel → scancel: the job is cancelled and Slurm's queue is empty. A job asking for more
    /// than the cluster has fails at once with Slurm's own message.
    @Test(.enabled(if: SlurmCluster.available, "needs root and Debian's slurm-wlm and munge"))
    func slurmCancelIsScancel() throws {
        let slurm = try SlurmSetup(self)
        defer { withExtendedLifetime(slurm) {} }  // its deinit stops fwpd and the cluster
        let (cluster, text, d, c) = (slurm.cluster, slurm.text, slurm.daemon, slurm.client)
        let parameters = try Self.rankTestObject(text, steps: 100_000)
        let job = try c.submit(["task": "lm", "parameters": .object(parameters)])
        _ = try c.wait(job.id, timeout: 120) { _ in (try? c.events(job.id).contains { $0.kind == "progress" }) == true }
        #expect(try c.ok("cancel", ["job": .number(Double(job.id))])["id"] != nil)
        #expect(try c.wait(job.id, timeout: 60) { $0.state.isFinal }.state == .cancelled, "\(d.log())")
        let deadline = Date().addingTimeInterval(30)
        var queue = ""
        repeat {
            queue = try cluster.run("/usr/bin/squeue", ["-h"]).1
            if queue.isEmpty { break }
            usleep(200_000)
        } while Date() < deadline
        #expect(queue.isEmpty, "Slurm's queue is empty: \(queue)")
        let greedy = try c.submit([
            "task": "lm", "parameters": .object(parameters), "slurm": .object(["memory": "900T"]),
        ])
        let refused = try c.wait(greedy.id, timeout: 60) { $0.state.isFinal }
        #expect(refused.state == .failed && refused.error?.code == .slurmRefused, "\(refused)")
        #expect(refused.error?.message.contains("Memory specification") == true, "Slurm's message")
    }

    /// Slurm's controller down: health says so, a submitted job waits in the queue with the
    /// reason (no attempt spent, nothing lost), and runs once the controller is back.
    @Test(.enabled(if: SlurmCluster.available, "needs root and Debian's slurm-wlm and munge"))
    func slurmDownJobsWaitAndHealthSaysSo() throws {
        let slurm = try SlurmSetup(self)
        defer { withExtendedLifetime(slurm) {} }  // its deinit stops fwpd and the cluster
        let (cluster, text, d, c) = (slurm.cluster, slurm.text, slurm.daemon, slurm.client)
        func answers() -> Bool? { (try? c.ok("health"))?["slurm"]?["answers"]?.boolValue }
        func waitFor(_ what: String, timeout: Double, _ condition: () -> Bool) {
            let deadline = Date().addingTimeInterval(timeout)
            while !condition() && Date() < deadline { usleep(200_000) }
            #expect(condition(), "\(what): \(d.log().suffix(2000))")
        }
        waitFor("health: Slurm answers", timeout: 20) { answers() == true }
        cluster.stopController()
        waitFor("health: Slurm does not answer", timeout: 60) { answers() == false }
        let parameters = try Self.rankTestObject(text, steps: 30)
        let job = try c.submit(["task": "lm", "parameters": .object(parameters)])
        waitFor("the job waits, saying why", timeout: 120) {
            ((try? c.events(job.id)) ?? []).contains { ($0.message ?? "").contains("Slurm does not answer") }
        }
        let waiting = try c.job(job.id)
        #expect(waiting.state == .queued || waiting.state == .running, "\(waiting.state)")
        try cluster.startController()
        let done = try c.wait(job.id, timeout: 180) { $0.state.isFinal }
        #expect(done.state == .succeeded, "\(d.log().suffix(3000))")
        #expect(done.attempt == 1, "waiting spent no attempt")
    }

    /// kill -9 of fwpd while its job runs under Slurm (with CURVE on the ingest endpoint): the
    /// Slurm job keeps running; the restarted fwpd re-attaches to it (same Slurm job, same
    /// attempt, no resume) and the job completes with every evaluation's event stored once.
    @Test(.enabled(if: SlurmCluster.available, "needs root and Debian's slurm-wlm and munge"))
    func slurmRestartedFwpdReattaches() throws {
        let cluster = try SlurmCluster()
        defer { cluster.stop() }
        let text = try DaemonTests.rankTestText()
        let d = try slurmDaemon(cluster, dataRoot: text.deletingLastPathComponent(), extra: ["--ingest-curve", "on"])
        let c = try d.client()
        var parameters = try Self.rankTestObject(text, steps: 3000)
        parameters["eval_every"] = 100
        let job = try c.submit(["task": "lm", "parameters": .object(parameters)])
        _ = try c.wait(job.id, timeout: 120) { _ in
            (try? c.ok("checkpoints", ["job": .number(Double(job.id))])["checkpoints"].map { $0 != .array([]) }) == true
        }
        let first = try #require(slurmJobID(c, job.id), "no Slurm job id in the events: \(d.log())")
        #expect(try c.job(job.id).slurmJob == first, "status shows the Slurm job")
        d.stop(SIGKILL)
        let outliving = try cluster.run("/usr/bin/squeue", ["-h", "-o", "%i"]).1
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(outliving == first, "the Slurm job outlives fwpd: \(outliving)")
        sleep(3)  // the worker trains on and keeps its events until fwpd is back
        let restarted = try DaemonProcess(state: d.state, arguments: d.extraArguments).start()
        defer { restarted.stop() }
        let c2 = try restarted.client()
        let done = try c2.wait(job.id, timeout: 300) { $0.state.isFinal }
        let log = restarted.log()
        #expect(done.state == .succeeded, "\(log.suffix(3000))")
        #expect(done.attempt == 1, "re-attaching spends no attempt")
        #expect(done.slurmJob == first)
        #expect(done.result?["steps"] == 3000)
        let events = try c2.events(job.id)
        let messages = events.compactMap(\.message)
        #expect(messages.contains { $0.hasPrefix("re-attached to Slurm job \(first)") }, "\(messages)")
        #expect(messages.filter { $0.hasPrefix("running as Slurm job") }.count == 1, "one submission: \(messages)")
        #expect(!log.contains("resuming from step"), "no resume from a checkpoint")
        #expect(events.map(\.seq) == Array(1...Int64(events.count)))
        let evalSteps = events.filter { $0.kind == "eval" }.compactMap(\.step)
        #expect(evalSteps == Array(stride(from: 100, through: 3000, by: 100)), "each evaluation once, none lost")
        // fwpctl shows the Slurm job, and health that Slurm answers.
        let status = try restarted.fwpctl(["status", "\(job.id)"])
        #expect(status.0 == 0 && status.1.contains("slurm job \(first)"), "\(status.1)")
        let list = try restarted.fwpctl(["list"])
        #expect(list.1.contains("slurm \(first)"), "\(list.1)")
        let health = try restarted.fwpctl(["health"])
        #expect(health.1.contains("slurm executor") && health.1.contains("slurm: answers"), "\(health.1)")
        let progress = events.filter { $0.kind == "progress" }.compactMap(\.step)
        #expect(progress == progress.sorted() && Set(progress).count == progress.count, "no progress repeated")
    }
}
