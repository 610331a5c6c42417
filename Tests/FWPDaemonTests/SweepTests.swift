import FWPProtocol
import FWPStore
@testable import FWPTasks
import Foundation
import Testing

@testable import FWPDaemon

/// Sweeps through the request handler and a real store: creation, refusals that name the entry
/// at fault, idempotency, cancel, roles; and the store's fair claim order.
@Suite struct SweepTests {
    let store: JobStore
    let control = RecordingControl()
    let handler: RequestHandler

    init() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fwp-sweep-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        store = try JobStore(path: dir.appendingPathComponent("fwpd.sqlite").path)
        let preset = Preset(name: "tiny", module: "retrieval", description: "", parameters: ["keys": 4])
        var config = DaemonConfig()
        config.maxSweepPoints = 50
        handler = RequestHandler(
            config: config, store: store, control: control, registry: .builtIn, presets: ["tiny": preset],
            metrics: DaemonMetrics(), curve: false)
    }

    func request(_ command: String, _ body: String, as principal: Principal = RequestHandlerTests.alice) throws
        -> JSONValue
    {
        switch handler.handle(command: command, body: Array(body.utf8), principal: principal) {
        case .success(let r): return try JSONValue.parse(Data(r.body))
        case .failure(let e): throw e
        }
    }

    func refusal(_ body: String, as principal: Principal = RequestHandlerTests.alice) -> WireError? {
        do {
            _ = try request("sweep", body, as: principal)
            return nil
        } catch { return error as? WireError }
    }

    @Test func aGridWithSeedsBecomesOneJobPerPointInOrder() throws {
        let reply = try request(
            "sweep",
            #"{"preset":"tiny","parameters":{"batch":4},"grid":{"rule":["sum","delta"],"keys":[6,8]},"seeds":2,"max_running":3}"#
        )
        #expect(reply["created"] == true)
        let sweep = try #require(reply["sweep"])
        #expect(sweep["points"] == 8 && sweep["max_running"] == 3 && sweep["state"] == "running")
        #expect(sweep["swept"] == .array(["keys", "rule", "seed"]), "grid by name, values as given, seed innermost")
        let status = try request("sweep_status", #"{"sweep":1}"#)
        guard case .array(let points) = status["points"] ?? .null else {
            Issue.record("no points")
            return
        }
        let values = points.map { p in
            ["keys", "rule", "seed"].map { p["values"]?[$0]?.jsonText ?? "?" }.joined(separator: " ")
        }
        #expect(
            values == [
                "6 \"sum\" 1", "6 \"sum\" 2", "6 \"delta\" 1", "6 \"delta\" 2", "8 \"sum\" 1", "8 \"sum\" 2",
                "8 \"delta\" 1", "8 \"delta\" 2",
            ])
        let jobs = try store.sweepJobs(1)
        #expect(jobs.count == 8 && jobs.allSatisfy { $0.sweep == 1 && $0.state == .queued && $0.preset == "tiny" })
        #expect(jobs.allSatisfy { $0.parameters["batch"] == 4 }, "fixed parameters in every point")
        #expect(jobs[0].parameters["lr"] == 0.001, "defaults filled in as for a submit")
        let listed = try request("list", #"{"sweep":1,"limit":100}"#)
        #expect(listed["jobs"].map { if case .array(let a) = $0 { a.count } else { 0 } } == 8)
        #expect(control.calls.withLock { $0.filter { $0.hasPrefix("publish") }.count } == 8)
    }

    @Test func badSpecsAreRefusedNamingTheEntryAndStoreNothing() throws {
        let cases: [(String, String)] = [
            (#"{"preset":"tiny","grid":{"keys":[]}}"#, "grid.keys"),
            (#"{"preset":"tiny","grid":{}}"#, "grid"),
            (#"{"preset":"tiny","grid":{"kyes":[4,6]}}"#, "grid.kyes"),
            (#"{"preset":"tiny","grid":{"keys":[6,"many",8]}}"#, "grid.keys[1]"),
            (#"{"preset":"tiny","grid":{"keys":[6,1]}}"#, "grid.keys[1]"),
            (#"{"preset":"tiny","grid":{"rule":["sum","hebb"]}}"#, "grid.rule[1]"),
            (#"{"preset":"tiny","grid":{"keys":4}}"#, "grid.keys"),
            (#"{"preset":"tiny","grid":{"keys":[4,5,6,7,8,9,10,11]},"seeds":7}"#, "grid"),
            (#"{"preset":"tiny","parameters":{"keys":5},"grid":{"keys":[6,8]}}"#, "parameters.keys"),
            (#"{"preset":"tiny","parameters":{"batch":0},"grid":{"keys":[6,8]}}"#, "parameters.batch"),
            (
                #"{"preset":"tiny","random":{"count":3,"ranges":{"lr":{"min":0,"max":1,"log":true}}}}"#,
                "random.ranges.lr"
            ),
            (#"{"preset":"tiny","random":{"count":3,"ranges":{"lr":{"min":0.5,"max":5}}}}"#, "random.ranges.lr"),
            (#"{"preset":"tiny","random":{"count":0,"ranges":{"lr":{"min":0.01,"max":0.1}}}}"#, "random.count"),
            (#"{"preset":"tiny","random":{"count":100,"ranges":{"lr":{"min":0.01,"max":0.1}}}}"#, "random.count"),
            (#"{"preset":"tiny","grid":{"seed":[1,2]},"seeds":2}"#, "seeds"),
            (#"{"preset":"tiny"}"#, "grid"),
        ]
        for (body, entry) in cases {
            guard let e = refusal(body) else {
                Issue.record("accepted: \(body)")
                continue
            }
            #expect(e.code == .invalidParameter, "\(body): \(e)")
            #expect(e.details?["entry"] == .string(entry), "\(body): \(e)")
            #expect(e.message.hasPrefix(entry + ":"), "the message names the entry: \(e.message)")
        }
        #expect(refusal(#"{"preset":"tiny","grid":{"keys":[6]},"max_running":0}"#)?.code == .invalidRequest)
        #expect(refusal(#"{"preset":"nope","grid":{"keys":[6]}}"#)?.code == .unknownTask)
        #expect(refusal(#"{"preset":"tiny","grid":{"keys":[6]},"bogus":1}"#)?.code == .invalidRequest)
        #expect(try store.sweep(1) == nil)
        #expect(try store.list(state: nil, after: 0, limit: 10).isEmpty, "no job stored")
    }

    @Test func randomSearchIsReproducibleAndInRange() throws {
        let body =
            #"{"preset":"tiny","random":{"count":5,"seed":7,"ranges":{"lr":{"min":0.0001,"max":0.01,"log":true},"batch":{"min":2,"max":9,"integer":true},"attention":{"values":["linear","dpfp-1"]}}}}"#
        _ = try request("sweep", body)
        _ = try request("sweep", body)
        let a = try store.sweepJobs(1), b = try store.sweepJobs(2)
        #expect(a.count == 5 && a.map(\.parameters) == b.map(\.parameters), "the same draws for the same seed")
        for j in a {
            let lr = j.parameters["lr"]!.doubleValue!, batch = j.parameters["batch"]!.doubleValue!
            #expect(lr >= 0.0001 && lr <= 0.01)
            #expect(batch >= 2 && batch <= 9 && batch.rounded() == batch)
            #expect(["linear", "dpfp-1"].contains(j.parameters["attention"]!.stringValue!))
        }
        #expect(Set(a.map { $0.parameters["lr"]!.doubleValue! }).count == 5, "five different draws")
    }

    @Test func idempotentCancelAndRoles() throws {
        let body = #"{"preset":"tiny","grid":{"keys":[6,8,10]},"idempotency_key":"k1"}"#
        #expect(try request("sweep", body)["created"] == true)
        let again = try request("sweep", body)
        #expect(again["created"] == false && again["sweep"]?["id"] == 1)
        #expect(try store.list(state: nil, after: 0, limit: 100).count == 3, "no second set of points")
        #expect(refusal(body, as: RequestHandlerTests.viewer)?.code == .forbidden)
        #expect(try request("sweep_status", #"{"sweep":1}"#, as: RequestHandlerTests.viewer)["sweep"] != nil)
        // Claim one point, so that cancel meets a running point and queued ones.
        let (running, _) = try #require(try store.claim(leaseSeconds: 60))
        do {
            _ = try request("cancel", #"{"sweep":1}"#, as: RequestHandlerTests.bob)
            Issue.record("bob cancelled alice's sweep")
        } catch let e as WireError { #expect(e.code == .forbidden) }
        let cancelled = try request("cancel", #"{"sweep":1}"#)
        #expect(cancelled["sweep"]?["cancel_requested"] == true)
        let jobs = try store.sweepJobs(1)
        #expect(jobs.filter { $0.state == .cancelled }.count == 2, "queued points cancelled at once")
        #expect(jobs.first { $0.id == running.id }?.cancelRequested == true, "the running one asked to stop")
        #expect(control.calls.withLock { $0.contains("cancel \(running.id)") })
        _ = try store.finish(running.id, state: .cancelled, result: nil, error: nil)
        #expect(try store.sweep(1)?.state == "cancelled")
        do {
            _ = try request("cancel", #"{"sweep":9}"#)
            Issue.record("cancelled a sweep that does not exist")
        } catch let e as WireError { #expect(e.code == .notFound) }
        do {
            _ = try request("sweep_status", #"{"sweep":9}"#)
            Issue.record("status of a sweep that does not exist")
        } catch let e as WireError { #expect(e.code == .notFound) }
    }

    /// The claim order: a sweep does not starve a job submitted after it, sweeps take turns, and a
    /// sweep never has more than max_running points running.
    @Test func claimsAreFairAndRespectMaxRunning() throws {
        _ = try request("sweep", #"{"preset":"tiny","grid":{"keys":[6,8,10,12]},"max_running":2}"#)  // jobs 1–4
        _ = try request("submit", #"{"preset":"tiny"}"#)  // job 5
        _ = try request("sweep", #"{"preset":"tiny","grid":{"keys":[6,8]},"max_running":5}"#)  // jobs 6–7
        var order: [Int64] = []
        while let (job, _) = try store.claim(leaseSeconds: 60) { order.append(job.id) }
        // 1 (sweep 1, served 0) · 5 (single) · 6 (sweep 2, served 0) · 2 (sweep 1, served 1) ·
        // 7 (sweep 2, served 1); sweep 1 then has two running and waits.
        #expect(order == [1, 5, 6, 2, 7], "\(order)")
        _ = try store.finish(1, state: .succeeded, result: nil, error: nil)
        #expect(try store.claim(leaseSeconds: 60)?.0.id == 3, "a finished point frees a place")
        #expect(try store.claim(leaseSeconds: 60) == nil)
        // A higher priority still goes first.
        _ = try request("submit", #"{"preset":"tiny","priority":5}"#)  // job 8
        _ = try store.finish(2, state: .succeeded, result: nil, error: nil)
        #expect(try store.claim(leaseSeconds: 60)?.0.id == 8)
        #expect(try store.claim(leaseSeconds: 60)?.0.id == 4)
    }
}

extension DaemonTests {
    /// A sweep survives kill -9 like single jobs: every point ends succeeded after a restart.
    /// fwpctl sweep makes it from flags, tail --sweep follows it, sweep-status shows its table.
    @Test func sweepSurvivesKillNineAndShowsItsPoints() throws {
        let d = try DaemonProcess().start()
        let (rc, out) = try d.fwpctl([
            "sweep", "retrieval", "--set", "key_size=16", "--set", "max_steps=400", "--set", "eval_every=50",
            "--set", "target_loss=0", "--set", "patience=1000", "--set", "batch=8", "--set", "attention=linear",
            "--grid", "keys=6,8", "--grid", "rule=sum,delta", "--seeds", "2", "--max-running", "1", "--json",
        ])
        #expect(rc == 0, "\(out)")
        let reply = try JSONValue.parse(out)
        let id = try #require(reply["sweep"]?["id"]?.doubleValue.map { Int64($0) })
        #expect(reply["sweep"]?["points"] == 8)
        let c = try d.client()
        _ = try c.wait(2) { $0.state == .running }
        d.stop(SIGKILL)
        let restarted = try DaemonProcess(state: d.state).start()
        defer { restarted.stop() }
        let c2 = try restarted.client()
        // tail --sweep follows it to the end: a line per point change, exit 0 when all succeeded.
        let tail = try restarted.fwpctl(["tail", "--sweep", "\(id)"], timeout: 240)
        #expect(tail.0 == 0, "\(tail.1)")
        let ended = tail.1.split(separator: "\n").filter { $0.hasPrefix("job ") && $0.hasSuffix(": succeeded") }
        #expect(ended.count == 8, "\(tail.1)")
        let status = try c2.ok("sweep_status", ["sweep": .number(Double(id))])
        #expect(status["sweep"]?["counts"] == .object(["succeeded": 8]), "\(status["sweep"] ?? .null)")
        if case .array(let points) = status["points"] ?? .null {
            #expect(points.contains { $0["attempt"] == 2 }, "the point running at the kill ran again")
        }
        let table = try restarted.fwpctl(["sweep-status", "\(id)"])
        #expect(table.0 == 0)
        let rows = table.1.split(separator: "\n").dropFirst(2).filter { $0.contains("succeeded") }
        #expect(rows.count == 8, "one row per point: \(table.1)")
        #expect(table.1.contains("keys") && table.1.contains("rule") && table.1.contains("seed"), "\(table.1)")
        #expect(rows.allSatisfy { $0.contains("delta") || $0.contains("sum") })
    }
}
