import FWPProtocol
import FWPStore
@testable import FWPTasks
import Foundation
import Synchronization
import Testing

@testable import FWPDaemon

/// Records what the handler asks of the scheduler.
final class RecordingControl: JobControl {
    let executorName = "local"
    let executorStatus: JSONValue? = nil
    let calls = Mutex<[String]>([])
    func publish(_ event: JobEvent) { calls.withLock { $0.append("publish \(event.job)") } }
    func wake() { calls.withLock { $0.append("wake") } }
    func cancel(_ id: Int64) -> Bool {
        calls.withLock { $0.append("cancel \(id)") }
        return true
    }
    func updateGauges() { calls.withLock { $0.append("gauges") } }
}

/// The request handler without sockets or a daemon: a real store in a temporary folder.
@Suite struct RequestHandlerTests {
    let store: JobStore
    let control = RecordingControl()
    let handler: RequestHandler

    static let alice = Principal(name: "alice", role: .user)
    static let bob = Principal(name: "bob", role: .user)
    static let viewer = Principal(name: "vera", role: .viewer)
    static let admin = Principal(name: "root", role: .admin)

    init() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fwp-handler-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        store = try JobStore(path: dir.appendingPathComponent("fwpd.sqlite").path)
        let preset = Preset(name: "tiny", module: "retrieval", description: "", parameters: ["keys": 4])
        var config = DaemonConfig()
        config.execPrograms = ["/bin/true"]
        handler = RequestHandler(
            config: config, store: store, control: control, registry: .builtIn, presets: ["tiny": preset],
            metrics: DaemonMetrics(), curve: false)
    }

    func request(_ command: String, _ body: String, as principal: Principal = alice) -> Result<Reply, WireError> {
        handler.handle(command: command, body: Array(body.utf8), principal: principal)
    }

    func code(_ command: String, _ body: String, as principal: Principal = alice) -> ErrorCode? {
        if case .failure(let e) = request(command, body, as: principal) { return e.code }
        return nil
    }

    /// Submits the tiny preset as `principal`; returns the job id.
    func submitTiny(as principal: Principal) throws -> Int {
        guard case .success(let reply) = request("submit", #"{"preset":"tiny"}"#, as: principal) else {
            throw WireError(.internal, "submit failed")
        }
        let id = try #require(try WireJSON.decode(JSONValue.self, from: reply.body)["job"]?["id"]?.doubleValue)
        return Int(id)
    }

    @Test func viewersReadButDoNotWrite() throws {
        let id = try submitTiny(as: Self.alice)
        for (command, body) in [
            ("status", #"{"job":\#(id)}"#), ("list", "{}"), ("events", #"{"job":\#(id)}"#), ("tasks", "{}"),
        ] {
            #expect(code(command, body, as: Self.viewer) == nil, "\(command)")
        }
        let stored = try store.list(state: nil, after: 0, limit: 10).count
        guard case .failure(let e) = request("submit", #"{"preset":"tiny"}"#, as: Self.viewer) else {
            Issue.record("a viewer submitted")
            return
        }
        #expect(e.code == .forbidden && e.details?["required_role"] == "user")
        #expect(code("cancel", #"{"job":\#(id)}"#, as: Self.viewer) == .forbidden)
        #expect(code("export", #"{"job":\#(id)}"#, as: Self.viewer) == .forbidden)
        #expect(try store.list(state: nil, after: 0, limit: 10).count == stored, "nothing stored")
    }

    @Test func usersActOnTheirOwnJobsAndAdminsOnAny() throws {
        let id = try submitTiny(as: Self.alice)
        #expect(try store.job(Int64(id))?.owner == "alice")
        // Bob may read it but neither cancel it nor see its checkpoints.
        #expect(code("status", #"{"job":\#(id)}"#, as: Self.bob) == nil)
        guard case .failure(let e) = request("cancel", #"{"job":\#(id)}"#, as: Self.bob) else {
            Issue.record("bob cancelled alice's job")
            return
        }
        #expect(e.code == .forbidden && e.details?["required_role"] == "admin")
        #expect(code("checkpoints", #"{"job":\#(id)}"#, as: Self.bob) == .forbidden)
        #expect(code("export", #"{"job":\#(id)}"#, as: Self.bob) == .forbidden)
        #expect(try store.job(Int64(id))?.state == .queued)
        // An admin may; the event says who.
        #expect(code("cancel", #"{"job":\#(id)}"#, as: Self.admin) == nil)
        #expect(try store.job(Int64(id))?.state == .cancelled)
        let events = try store.eventBodies(job: Int64(id), after: 0, limit: 10)
        #expect(events.last?.contains("cancelled by root") == true, "\(events)")
        // Alice may cancel her own.
        let second = try submitTiny(as: Self.alice)
        #expect(code("cancel", #"{"job":\#(second)}"#, as: Self.alice) == nil)
    }

    @Test func execIsForAdminsAndListedProgramsOnly() throws {
        let job = #"{"task":"exec","parameters":{"program":"/bin/true"}}"#
        guard case .failure(let e) = request("submit", job, as: Self.alice) else {
            Issue.record("a user submitted exec")
            return
        }
        #expect(e.code == .forbidden && e.details?["required_role"] == "admin")
        #expect(
            code("submit", #"{"task":"exec","parameters":{"program":"/bin/sh"}}"#, as: Self.admin) == .invalidParameter)
        #expect(code("submit", job, as: Self.admin) == nil)
        // With no programs listed, exec is off for everyone.
        var config = DaemonConfig()
        config.execPrograms = []
        let off = RequestHandler(
            config: config, store: store, control: control, registry: .builtIn, presets: [:], metrics: DaemonMetrics(),
            curve: false)
        guard case .failure(let e2) = off.handle(command: "submit", body: Array(job.utf8), principal: Self.admin) else {
            Issue.record("exec ran with exec_programs empty")
            return
        }
        #expect(e2.code == .forbidden && e2.message.contains("exec_programs"))
    }

    @Test func everyCommandHasAHandler() {
        // A command the wire lists but the handler does not know would answer unknown_command.
        for command in Command.allCases {
            #expect(code(command.rawValue, "{}") != .unknownCommand, "\(command)")
        }
        #expect(code("frobnicate", "{}") == .unknownCommand)
    }

    @Test func badBodiesAreRefusedBeforeAnythingIsStored() throws {
        #expect(code("submit", "not json") == .invalidJSON)
        #expect(code("submit", "[1]") == .invalidJSON)
        #expect(code("submit", #"{"task":"retrieval","preset":"tiny"}"#) == .invalidRequest)
        #expect(code("submit", #"{"task":"nope"}"#) == .unknownTask)
        #expect(code("submit", #"{"preset":"nope"}"#) == .unknownTask)
        #expect(code("submit", #"{"task":"retrieval","colour":1}"#) == .invalidRequest)
        #expect(code("submit", #"{"task":"retrieval","priority":5000}"#) == .invalidRequest)
        #expect(code("submit", #"{"task":"retrieval","parameters":{"keys":-3}}"#) == .invalidParameter)
        #expect(code("status", #"{"job":"one"}"#) == .invalidRequest)
        #expect(code("status", #"{"job":99}"#) == .notFound)
        #expect(code("list", #"{"state":"sleeping"}"#) == .invalidRequest)
        #expect(code("cancel", #"{"job":99}"#) == .notFound)
        #expect(try store.list(state: nil, after: 0, limit: 10).isEmpty)
        #expect(control.calls.withLock { $0 }.isEmpty)
    }

    @Test func submitStoresPublishesAndWakesOnce() throws {
        guard case .success(let reply) = request("submit", #"{"preset":"tiny","idempotency_key":"k1"}"#) else {
            Issue.record("submit failed")
            return
        }
        let first = try WireJSON.decode(JSONValue.self, from: reply.body)
        let id = try #require(first["job"]?["id"]?.doubleValue).rounded()
        #expect(first["created"] == .bool(true))
        #expect(try store.job(Int64(id))?.parameters["keys"] == .number(4))
        #expect(control.calls.withLock { $0 } == ["publish \(Int(id))", "wake"])
        // The same key again: the same job, nothing new stored or published.
        guard case .success(let again) = request("submit", #"{"preset":"tiny","idempotency_key":"k1"}"#) else {
            Issue.record("repeated submit failed")
            return
        }
        #expect(try WireJSON.decode(JSONValue.self, from: again.body)["created"] == .bool(false))
        #expect(control.calls.withLock { $0 }.count == 2)
        #expect(try store.list(state: nil, after: 0, limit: 10).count == 1)
    }

    /// PROTOCOL.md's two error tables list exactly `ErrorCode`'s codes, with the same meanings.
    @Test func protocolDocumentListsEveryErrorCode() throws {
        let doc = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
            .appendingPathComponent("docs/PROTOCOL.md")
        let text = try String(contentsOf: doc, encoding: .utf8)
        var rows: [(String, String)] = []
        for line in text.split(separator: "\n") where line.hasPrefix("| `") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count == 2, cells[0].hasPrefix("`"), cells[0].hasSuffix("`") else { continue }
            rows.append((String(cells[0].dropFirst().dropLast()), cells[1]))
        }
        let expected = (ErrorCode.requestErrors + ErrorCode.jobFailures).map { ($0.code.rawValue, $0.meaning) }
        #expect(rows.map(\.0) == expected.map(\.0))
        #expect(rows.map(\.1) == expected.map(\.1))
    }
}

/// A job's own sbatch settings: checked at submit against Slurm's syntax and the offered
/// partitions, merged over its preset's, refused where jobs run locally.
@Suite struct SlurmRequestTests {
    func handler(executor: String) throws -> (RequestHandler, JobStore) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fwp-slurmreq-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let store = try JobStore(path: dir.appendingPathComponent("fwpd.sqlite").path)
        var preset = Preset(name: "tiny", module: "retrieval", description: "", parameters: ["keys": 4])
        preset.slurm = ["time_limit": "30", "memory": "1G"]
        var config = DaemonConfig()
        config.executor = executor
        config.sharedDirectory = dir.path
        config.slurmPartitions = ["short", "long"]
        return (
            RequestHandler(
                config: config, store: store, control: RecordingControl(), registry: .builtIn,
                presets: ["tiny": preset], metrics: DaemonMetrics(), curve: false), store
        )
    }

    func submit(_ h: RequestHandler, _ body: String) -> Result<Reply, WireError> {
        h.handle(command: "submit", body: Array(body.utf8), principal: RequestHandlerTests.alice)
    }

    @Test func settingsAreCheckedAndMergedOverThePreset() throws {
        let (h, store) = try handler(executor: "slurm")
        guard case .success = submit(h, #"{"preset":"tiny","slurm":{"partition":"long","memory":"2G"}}"#) else {
            Issue.record("a valid request was refused")
            return
        }
        let job = try #require(try store.job(1))
        #expect(
            job.slurm == ["partition": "long", "memory": "2G", "time_limit": "30"], "the submit's over the preset's")
        for (body, parameter) in [
            (#"{"preset":"tiny","slurm":{"time_limit":"1:00\n#SBATCH --uid=0"}}"#, "slurm.time_limit"),
            (#"{"preset":"tiny","slurm":{"memory":"8G'; rm -rf /"}}"#, "slurm.memory"),
            (#"{"preset":"tiny","slurm":{"partition":"gpu"}}"#, "slurm.partition"),
            (#"{"preset":"tiny","slurm":{"cpus_per_task":0}}"#, "slurm.cpus_per_task"),
            (#"{"preset":"tiny","slurm":{"account":"other"}}"#, "slurm.account"),
        ] {
            guard case .failure(let e) = submit(h, body) else {
                Issue.record("accepted: \(body)")
                continue
            }
            #expect(e.code == .invalidParameter && e.details?["parameter"] == .string(parameter), "\(e)")
        }
        #expect(try store.job(2) == nil, "nothing stored for a refused request")
    }

    @Test func localExecutorRefusesTheField() throws {
        let (h, store) = try handler(executor: "local")
        guard case .failure(let e) = submit(h, #"{"preset":"tiny","slurm":{"memory":"2G"}}"#) else {
            Issue.record("a slurm field was accepted by a local fwpd")
            return
        }
        #expect(e.code == .invalidRequest && e.message.contains("Slurm executor"))
        guard case .success = submit(h, #"{"preset":"tiny"}"#) else {
            Issue.record("a preset with slurm settings was refused locally")
            return
        }
        #expect(try store.job(1)?.slurm == nil, "a preset's Slurm settings do not apply locally")
    }
}
