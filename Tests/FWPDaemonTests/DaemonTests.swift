import FWPCore
import FWPProtocol
import FWPStore
import Foundation
import Testing
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// End-to-end tests of the real fwpd and fwpctl binaries on free loopback ports.
@Suite(.serialized) struct DaemonTests {
    @Test func submitThenTailUntilSucceeded() throws {
        let d = try DaemonProcess().start()
        defer { d.stop() }
        let c = try d.client()
        let job = try c.submit(longRetrieval(steps: 300, evalEvery: 100))
        let (status, output) = try d.fwpctl(["tail", "\(job.id)"])
        #expect(status == 0, "fwpctl tail exits 0 for a succeeded job: \(output)")
        #expect(output.contains("[state] succeeded"))
        let events = try c.events(job.id)
        #expect(events.map(\.seq) == Array(1...Int64(events.count)), "sequence numbers from 1 without gaps")
        #expect(events.filter { $0.kind == "eval" }.map(\.step) == [100, 200, 300])
        let final = try c.job(job.id)
        #expect(final.state == .succeeded && final.result?["steps"] == 300)
        // tail of a finished job replays its history exactly once.
        let (again, replay) = try d.fwpctl(["tail", "\(job.id)", "--json"])
        #expect(again == 0)
        let seqs = replay.split(separator: "\n").compactMap {
            try? WireJSON.decode(JobEvent.self, from: Array($0.utf8)).seq
        }
        #expect(seqs == events.map(\.seq), "every stored event once, in order")
        // A page of the history: the stored events spliced into the reply, with the job's state.
        let page = try c.ok("events", ["job": .number(Double(job.id)), "after": 2, "limit": 3])
        let pageEvents = try WireJSON.decode([JobEvent].self, from: WireJSON.encode(page["events"]!))
        #expect(pageEvents == Array(events[2..<5]))
        #expect(page["last_seq"] == .number(Double(events.count)) && page["state"] == "succeeded")
        #expect(
            try c.ok("events", ["job": .number(Double(job.id)), "after": .number(Double(events.count))])["events"]
                == .array([]))
    }

    /// Started without OPENBLAS_NUM_THREADS, fwpd re-executes itself with it set to 1 (same
    /// process, still answering, still named fwpd), so OpenBLAS starts no worker threads to spin
    /// beside the jobs.
    @Test func relaunchesWithSingleThreadedOpenBLAS() throws {
        let d = try DaemonProcess().start()
        defer { d.stop() }
        let pid = d.process!.processIdentifier
        let environ = try Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))
        let variables = environ.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        #expect(variables.contains("OPENBLAS_NUM_THREADS=1"))
        // The kernel family: overridden exactly where this test process's OpenBLAS (started
        // without the variable) detected a pre-AVX2 core on a CPU with AVX2 or AVX-512.
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil {
            let coreTypes = variables.filter { $0.hasPrefix("OPENBLAS_CORETYPE=") }
            if let expected = BLAS.coreTypeOverride(detected: BLAS.coreName, vectorLevel: BLAS.vectorLevel) {
                #expect(coreTypes == ["OPENBLAS_CORETYPE=\(expected)"])
                #expect(variables.contains("FWP_OPENBLAS_DETECTED_CORE=\(BLAS.coreName)"))
            } else {
                #expect(coreTypes.isEmpty)
            }
        }
        let name = try String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)
        #expect(name == "fwpd\n", "process name \(name)")
        _ = try d.client().ok("health", [:])
    }

    @Test func cancelStopsARunningJob() throws {
        let d = try DaemonProcess().start()
        defer { d.stop() }
        let c = try d.client()
        let job = try c.submit(longRetrieval())
        _ = try c.wait(job.id) { $0.state == .running && $0.lastSeq > 3 }
        let (status, output) = try d.fwpctl(["cancel", "\(job.id)"])
        #expect(status == 0, "\(output)")
        let done = try c.wait(job.id, timeout: 10) { $0.state.isFinal }
        #expect(done.state == .cancelled)
        let (tailStatus, _) = try d.fwpctl(["tail", "\(job.id)"])
        #expect(tailStatus == 5, "tail exits 5 for a cancelled job")
        // Cancelling a queued job is immediate; cancelling a finished one changes nothing.
        let again = try c.ok("cancel", ["job": .number(Double(job.id))])
        #expect(again["state"] == "cancelled")
    }

    @Test func priorityThenFIFO() throws {
        let d = try DaemonProcess(arguments: ["--workers", "1"]).start()
        defer { d.stop() }
        let c = try d.client()
        let blocker = try c.submit(longRetrieval())
        _ = try c.wait(blocker.id) { $0.state == .running }
        let quick = longRetrieval(steps: 20, evalEvery: 10)
        var b = quick
        b["priority"] = 0
        let low1 = try c.submit(b)
        b["priority"] = 5
        let high = try c.submit(b)
        b["priority"] = 0
        let low2 = try c.submit(b)
        _ = try c.ok("cancel", ["job": .number(Double(blocker.id))])
        for j in [low1, high, low2] { _ = try c.wait(j.id) { $0.state == .succeeded } }
        let started = try [high, low1, low2].map { try c.job($0.id).startedAt! }
        #expect(started == started.sorted(), "high priority first, then the two low ones in submission order")
    }

    @Test func idempotentResubmitReturnsTheFirstJob() throws {
        let d = try DaemonProcess().start()
        defer { d.stop() }
        let c = try d.client()
        var body = longRetrieval(steps: 10, evalEvery: 10)
        body["idempotency_key"] = "run-42"
        let first = try c.ok("submit", body)
        let second = try c.ok("submit", body)
        #expect(first["created"] == true && second["created"] == false)
        #expect(first["job"]?["id"] == second["job"]?["id"])
        let all = try c.ok("list", [:])["jobs"]
        if case .array(let jobs) = all { #expect(jobs.count == 1) } else { Issue.record("no job list") }
    }

    /// SIGTERM: the running job checkpoints and is requeued; the next start resumes it from that
    /// checkpoint, not from the beginning.
    @Test func sigtermThenRestartResumes() throws {
        let d = try DaemonProcess().start()
        let c = try d.client()
        let job = try c.submit(longRetrieval(steps: 4000, evalEvery: 50))
        _ = try c.wait(job.id) { _ in
            (try? c.ok("checkpoints", ["job": .number(Double(job.id))])["checkpoints"].map { $0 != .array([]) }) == true
        }
        #expect(d.stop(SIGTERM) == 0, "graceful stop exits 0: \(d.log())")
        let restarted = DaemonProcess(state: d.state)
        let stateAfterStop = try restarted.start().client().job(job.id)
        defer { restarted.stop() }
        _ = stateAfterStop
        let c2 = try restarted.client()
        let done = try c2.wait(job.id, timeout: 120) { $0.state.isFinal }
        #expect(done.state == .succeeded, "\(restarted.log())")
        #expect(done.attempt == 1, "a graceful stop spends no attempt")
        let events = try c2.events(job.id)
        #expect(events.map(\.seq) == Array(1...Int64(events.count)), "no lost or duplicated events")
        let requeued = events.firstIndex {
            $0.kind == "state" && $0.state == .queued && ($0.message ?? "").contains("stopping")
        }
        #expect(requeued != nil, "the stop requeued the job")
        // The checkpoint written at the stop is where the second run starts.
        let stopCheckpoint = events[..<requeued!].last { $0.kind == "checkpoint" }!.step!
        let firstAfter = events[requeued!...].first { $0.kind == "progress" || $0.kind == "eval" }!
        #expect(
            firstAfter.step! > stopCheckpoint && firstAfter.step! <= stopCheckpoint + 50,
            "resumed at \(firstAfter.step!) after checkpoint \(stopCheckpoint)")
        #expect(done.result?["steps"] == 4000)
    }

    /// Four times as many workers as cores, all busy: every claimed job makes progress, and SIGTERM
    /// stops them all at once. (Jobs must not run on Dispatch's shared pool, which is as wide as
    /// the machine has cores and also runs the graceful stop: there, the jobs beyond its width sat
    /// in state running without running.)
    @Test func moreWorkersThanCoresAllRunAndStopPromptly() throws {
        let workers = 4 * max(2, ProcessInfo.processInfo.activeProcessorCount)
        let d = try DaemonProcess(arguments: ["--workers", "\(workers)"]).start()
        let c = try d.client()
        let jobs = try (0..<workers).map { _ in try c.submit(longRetrieval(steps: 100_000, evalEvery: 50)) }
        for job in jobs { _ = try c.wait(job.id) { $0.state == .running && $0.lastSeq > 3 } }
        let started = Date()
        #expect(d.stop(SIGTERM) == 0, "graceful stop exits 0: \(d.log())")
        let seconds = Date().timeIntervalSince(started)
        #expect(seconds < 15, "stopped \(seconds) s after SIGTERM")
        #expect(d.log().components(separatedBy: "checkpointed and requeued").count - 1 == workers, "\(d.log())")
    }

    /// kill -9 mid-training: the next start requeues the job (attempt + 1) and resumes from its
    /// latest checkpoint; every event acknowledged before the kill is still there.
    @Test func killNineThenRestartResumesFromCheckpoint() throws {
        let d = try DaemonProcess().start()
        let c = try d.client()
        let job = try c.submit(longRetrieval(steps: 4000, evalEvery: 50))
        _ = try c.wait(job.id) { $0.lastSeq > 12 }
        let before = try c.events(job.id)
        d.stop(SIGKILL)
        // Damage the newest checkpoint file: the restart must notice (sha256) and use the one before.
        let store = try JobStore(path: d.state.appendingPathComponent("fwpd.sqlite").path)
        let steps = try store.checkpoints(job: job.id).filter { !$0.best }
        #expect(steps.count >= 2, "several step checkpoints were written")
        let damaged = steps[0], fallback = steps[1]
        var bytes = try Data(contentsOf: URL(fileURLWithPath: damaged.path))
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: damaged.path))
        let restarted = DaemonProcess(state: d.state)
        try restarted.start()
        defer { restarted.stop() }
        let c2 = try restarted.client()
        let done = try c2.wait(job.id, timeout: 120) { $0.state.isFinal }
        #expect(done.state == .succeeded)
        #expect(done.attempt == 2, "the interrupted run counted as an attempt")
        let events = try c2.events(job.id)
        #expect(Array(events.prefix(before.count)) == before, "events stored before the kill are unchanged")
        #expect(events.map(\.seq) == Array(1...Int64(events.count)))
        let recovery = events.firstIndex { ($0.message ?? "").contains("unexpectedly") }!
        let firstAfter = events[recovery...].first { $0.kind == "progress" || $0.kind == "eval" }!
        #expect(
            firstAfter.step! > fallback.step && firstAfter.step! <= fallback.step + 50,
            "resumed after step \(fallback.step), not from the damaged checkpoint at \(damaged.step): first step \(firstAfter.step!)"
        )
        #expect(restarted.log().contains("does not match its sha256"))
    }

    @Test func badInputGetsStructuredErrorsAndChangesNothing() throws {
        let d = try DaemonProcess(arguments: ["--max-request-bytes", "65536"]).start()
        defer { d.stop() }
        let c = try d.client()
        let kept = try c.submit(longRetrieval(steps: 10, evalEvery: 10))
        _ = try c.wait(kept.id) { $0.state.isFinal }
        let before = try c.ok("list", [:])
        func code(_ frames: [[UInt8]]) throws -> String? {
            guard let f = try c.raw(frames), f.count == 3, String(decoding: f[1], as: UTF8.self) == "error" else {
                return nil
            }
            return try WireJSON.decode(WireError.self, from: f[2]).code.rawValue
        }
        let v = Array("FWP1".utf8)
        #expect(try code([v]) == "bad_frame")
        #expect(try code([v, Array("health".utf8), Array("{}".utf8), Array("extra".utf8)]) == "bad_frame")
        #expect(try code([Array("FWP9".utf8), Array("health".utf8), Array("{}".utf8)]) == "unsupported_version")
        #expect(try code([v, Array("reboot".utf8), Array("{}".utf8)]) == "unknown_command")
        #expect(try code([v, Array("status".utf8), Array("{not json".utf8)]) == "invalid_json")
        #expect(try code([v, Array("status".utf8), Array("[1]".utf8)]) == "invalid_json")
        #expect(try code([v, Array("status".utf8), [0xFF, 0xFE]]) == "invalid_json")
        #expect(try code([v, Array("status".utf8), Array(#"{"job": "one"}"#.utf8)]) == "invalid_request")
        #expect(try code([v, Array("status".utf8), Array(#"{"job": 1, "x": 2}"#.utf8)]) == "invalid_request")
        #expect(try code([v, Array("status".utf8), Array(#"{"job": 999}"#.utf8)]) == "not_found")
        #expect(try code([v, Array("submit".utf8), Array(#"{"task": "teleport"}"#.utf8)]) == "unknown_task")
        #expect(try code([v, Array("submit".utf8), Array(#"{"preset": "nope"}"#.utf8)]) == "unknown_task")
        #expect(
            try code([v, Array("submit".utf8), Array(#"{"task": "retrieval", "parameters": {"keys": 100000}}"#.utf8)])
                == "invalid_parameter")
        #expect(
            try code([v, Array("submit".utf8), Array(#"{"task": "retrieval", "parameters": {"keys": "many"}}"#.utf8)])
                == "invalid_parameter")
        #expect(
            try code([v, Array("submit".utf8), Array(#"{"task": "retrieval", "priority": 1.5}"#.utf8)])
                == "invalid_request")
        #expect(
            try code([
                v, Array("submit".utf8),
                Array(("{\"task\": \"retrieval\", \"pad\": \"" + String(repeating: "x", count: 100_000) + "\"}").utf8),
            ]) == "too_large")
        // Larger than ZMQ_MAXMSGSIZE (16 MiB): libzmq drops that connection; the daemon carries on.
        let big = try d.client()
        #expect(try big.raw([v, Array("health".utf8), [UInt8](repeating: 0x20, count: 17 << 20)], timeout: 2) == nil)
        #expect(try d.client().ok("health")["status"] == "ok", "the daemon keeps running")
        #expect(try c.ok("list", [:]) == before, "nothing stored changed")
    }

    @Test func refusesRemoteBindWithoutCurve() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fwpd-remote-\(UUID().uuidString)")
        let (status, text) = try runFwpd(["--state-dir", dir.path, "--request-endpoint", "tcp://0.0.0.0:\(freePort())"])
        #expect(status != 0)
        #expect(text.contains("without CURVE"), "\(text)")
    }

    @Test func curveAllowsListedKeysAndRefusesOthers() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fwpd-curve-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let server = try CurveKeyPair.generate(), stranger = try CurveKeyPair.generate()
        // Z85 keys may contain '#': make sure the allow-list holds such a key.
        var allowed = try CurveKeyPair.generate()
        while !allowed.publicKey.dropFirst().contains("#") { allowed = try CurveKeyPair.generate() }
        let second = try CurveKeyPair.generate()
        try server.secretKey.write(to: dir.appendingPathComponent("server.key"), atomically: true, encoding: .utf8)
        try "# clients\n\(allowed.publicKey)   # laptop\n\(second.publicKey)\n".write(
            to: dir.appendingPathComponent("clients"), atomically: true, encoding: .utf8)
        let d = DaemonProcess(arguments: [
            "--curve-secret-key-file", dir.appendingPathComponent("server.key").path,
            "--curve-allowed-keys-file", dir.appendingPathComponent("clients").path,
        ])
        // CURVE refuses a plain client, so the start-up probe uses the allowed key.
        let good = try TestClient(endpoint: d.requestEndpoint, curve: (server.publicKey, allowed))
        try d.start(probe: good)
        defer { d.stop() }
        let reply = try good.call("health", [:])
        #expect(reply.1["curve"] == true, "a listed key gets answers: \(d.log())")
        let bad = try TestClient(endpoint: d.requestEndpoint, curve: (server.publicKey, stranger))
        #expect((try? bad.call("health", [:], timeout: 1)) == nil, "an unlisted key is refused")
        let plain = try TestClient(endpoint: d.requestEndpoint)
        #expect((try? plain.call("health", [:], timeout: 1)) == nil, "a client without CURVE is refused")
        #expect(try good.call("health", [:]).0 == "ok", "the daemon still serves the listed client")
        let other = try TestClient(endpoint: d.requestEndpoint, curve: (server.publicKey, second))
        #expect(try other.call("health", [:]).0 == "ok", "every listed key is admitted")
    }
}

extension DaemonTests {
    /// IPv6 loopback and `localhost` bind (no CURVE needed: both are loopback) and answer.
    @Test(arguments: ["[::1]", "localhost"]) func bindsLoopbackInOtherSpellings(_ host: String) throws {
        let d = DaemonProcess(host: host)
        try d.start()
        defer { _ = d.stop() }
        #expect(try d.client().call("health", [:]).0 == "ok")
    }
}

extension DaemonTests {
    /// Roles through real CURVE connections: the allow-list names each key's principal and role.
    @Test func curvePrincipalsActWithinTheirRoles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fwpd-roles-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let server = try CurveKeyPair.generate()
        let (alice, bob, vera, root) = try (
            CurveKeyPair.generate(), CurveKeyPair.generate(), CurveKeyPair.generate(), CurveKeyPair.generate()
        )
        try server.secretKey.write(to: dir.appendingPathComponent("server.key"), atomically: true, encoding: .utf8)
        try """
        \(alice.publicKey) user alice
        \(bob.publicKey) user bob   # a second user
        \(vera.publicKey) viewer vera
        \(root.publicKey) admin root
        """.write(to: dir.appendingPathComponent("clients"), atomically: true, encoding: .utf8)
        let d = DaemonProcess(arguments: [
            "--curve-secret-key-file", dir.appendingPathComponent("server.key").path,
            "--curve-allowed-keys-file", dir.appendingPathComponent("clients").path,
        ])
        func client(_ keys: CurveKeyPair) throws -> TestClient {
            try TestClient(endpoint: d.requestEndpoint, curve: (server.publicKey, keys))
        }
        let (a, b, v, r) = try (client(alice), client(bob), client(vera), client(root))
        // A probe client of its own: its retries while fwpd starts may leave late replies behind.
        try d.start(probe: client(alice))
        defer { _ = d.stop() }
        let job = try a.submit(longRetrieval())
        #expect(job.owner == "alice")
        #expect(try v.call("status", ["job": .number(Double(job.id))]).1["owner"] == "alice", "viewers read")
        let refused = try v.call("submit", longRetrieval())
        #expect(
            refused.0 == "error" && refused.1["code"] == "forbidden" && refused.1["details"]?["required_role"] == "user"
        )
        let exec = try r.call("submit", ["task": "exec", "parameters": .object(["program": "/bin/true"])])
        #expect(exec.0 == "error" && exec.1["code"] == "forbidden", "exec is off by default, even for an admin")
        let notYours = try b.call("cancel", ["job": .number(Double(job.id))])
        #expect(notYours.0 == "error" && notYours.1["code"] == "forbidden")
        #expect(try b.call("export", ["job": .number(Double(job.id))]).1["code"] == "forbidden")
        #expect(try r.call("cancel", ["job": .number(Double(job.id))]).0 == "ok", "an admin cancels any job")
        let final = try a.wait(job.id) { $0.state.isFinal }
        #expect(final.state == .cancelled)
    }
}

extension DaemonTests {
    /// Path parameters are confined to the data roots: device files, /proc, the state directory and
    /// symlinks leading out are refused at submit, naming the parameter; a file inside is accepted.
    @Test func pathParametersStayInsideTheDataRoots() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("fwpd-roots-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        let text = root.appendingPathComponent("text.txt")
        try String(repeating: "the fast weight stores a value . ", count: 200).write(
            to: text, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(
            atPath: root.appendingPathComponent("escape.txt").path, withDestinationPath: "/etc/passwd")
        let d = DaemonProcess(arguments: ["--data-roots", root.path])
        try d.start()
        defer { _ = d.stop() }
        let c = try d.client()
        func submit(_ train: String) throws -> (String, JSONValue) {
            try c.call("submit", ["task": "lm", "parameters": .object(["train": .string(train), "steps": 1])])
        }
        for bad in [
            "/dev/zero", "/proc/self/environ", "/etc/passwd", d.state.appendingPathComponent("fwpd.sqlite").path,
            root.appendingPathComponent("escape.txt").path, root.path, root.appendingPathComponent("missing.txt").path,
        ] {
            let (status, reply) = try submit(bad)
            #expect(status == "error" && reply["code"] == "invalid_parameter", "\(bad): \(reply.jsonText)")
            #expect(reply["details"]?["parameter"] == "train", "\(bad)")
        }
        #expect(try c.call("list", [:]).1["jobs"] == .array([]), "nothing stored")
        let (status, reply) = try submit(text.path)
        #expect(status == "ok", "\(reply.jsonText)")
    }
}

extension DaemonTests {
    /// The live processes whose command line contains `marker`.
    func processes(containing marker: String) -> [Int32] {
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
        return pids.filter { pid in
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
                let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                !stat.contains(") Z ")  // a zombie has exited
            else { return false }
            return String(decoding: raw.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(marker)
        }
    }

    /// kill -9 of fwpd during an exec job: the program dies with fwpd, what it started is ended
    /// before the job runs again, and it then runs exactly once more — never two copies at once.
    @Test func execChildrenNeitherOutliveFwpdNorRunTwice() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fwpd-orphans-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        // A copy of sleep under a name of its own marks this test's processes.
        let marker = dir.appendingPathComponent("sleep-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.copyItem(atPath: "/bin/sleep", toPath: marker)
        let starts = dir.appendingPathComponent("starts")
        let script = dir.appendingPathComponent("long.sh")
        // Counts its starts, leaves a grandchild in its process group, and runs until stopped.
        try """
        #!/bin/sh
        echo started >> \(starts.path)
        \(marker) 300 &
        exec \(marker) 300
        """.write(to: script, atomically: true, encoding: .utf8)
        chmod(script.path, 0o755)
        let arguments = ["--local-role", "admin", "--exec-programs", script.path]
        let d = DaemonProcess(arguments: arguments)
        try d.start()
        let c = try d.client()
        let job = try c.submit(["task": "exec", "parameters": .object(["program": .string(script.path)])])
        func startCount() -> Int {
            ((try? String(contentsOf: starts, encoding: .utf8)) ?? "").split(separator: "\n").count
        }
        func waitFor(_ what: String, timeout: Double = 20, _ condition: () -> Bool) {
            let deadline = Date().addingTimeInterval(timeout)
            while !condition() && Date() < deadline { usleep(50_000) }
            let found = processes(containing: marker).map { pid in
                (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? "\(pid) gone"
            }
            #expect(condition(), "\(what): \(found)")
        }
        waitFor("the program started, with its grandchild") {
            startCount() == 1 && processes(containing: marker).count == 2
        }
        d.stop(SIGKILL)
        // The program dies with fwpd (parent-death signal); its grandchild is re-parented and lives.
        waitFor("only the grandchild is left") { processes(containing: marker).count == 1 }
        let restarted = DaemonProcess(state: d.state, arguments: arguments)
        try restarted.start()
        defer { restarted.stop() }
        let c2 = try restarted.client()
        waitFor("the job runs again") { startCount() == 2 }
        waitFor("the old grandchild was ended: one program and one grandchild") {
            processes(containing: marker).count == 2
        }
        usleep(500_000)
        #expect(startCount() == 2, "started exactly once more")
        #expect(try c2.ok("cancel", ["job": .number(Double(job.id))])["id"] != nil)
        #expect(try c2.wait(job.id) { $0.state.isFinal }.state == .cancelled)
        waitFor("nothing left after the cancel") { processes(containing: marker).isEmpty }
    }
}
