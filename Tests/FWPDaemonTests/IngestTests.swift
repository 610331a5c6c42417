@testable import FWPDaemon
import Foundation
import Logging
import Synchronization
import Testing
import ZeroMQ

/// The ingest endpoint with CURVE: only a running job's key gets in, and a connection speaks only
/// for the job whose key it authenticated with.
@Suite struct IngestTests {
    /// Sends line `seq` as `token` from a DEALER (a CURVE client with `keys`, or plain without);
    /// returns whether fwpd acknowledged it within `wait` milliseconds.
    func send(
        _ endpoint: String, server: String, keys: CurveKeyPair?, token: String, seq: Int64, wait: Int = 1500
    ) throws -> Bool {
        let context = try ZMQContext()
        defer { context.terminate() }
        let socket = try context.socket(.dealer)
        defer { socket.close() }
        if let keys { try socket.makeCurveClient(serverKey: server, keys: keys) }
        try socket.connect(endpoint)
        try socket.send([Array("FWPI1".utf8), Array(token.utf8), Array("\(seq)".utf8), Array("line \(seq)".utf8)])
        guard let reply = try socket.receive(timeoutMilliseconds: wait) else { return false }
        return reply == [Array("ack".utf8), Array("\(seq)".utf8)]
    }

    @Test(.enabled(if: ZMQContext.hasCurve, "needs a libzmq with CURVE"))
    func onlyTheJobsKeyGetsIn() throws {
        let endpoint = "tcp://127.0.0.1:\(freePort())"
        let serverKeys = try CurveKeyPair.generate()
        let server = try IngestServer(
            endpoint: endpoint, curveSecretKey: serverKeys.secretKey, logger: Logger(label: "ingest-test"))
        defer { server.stop() }
        let jobA = try CurveKeyPair.generate(), jobB = try CurveKeyPair.generate()
        let stranger = try CurveKeyPair.generate()
        let seen = Mutex<[String]>([])
        server.register("token-a", clientKey: jobA.publicKey) { seq, line in seen.withLock { $0.append("a \(line)") } }
        server.register("token-b", clientKey: jobB.publicKey) { seq, line in seen.withLock { $0.append("b \(line)") } }
        let pub = serverKeys.publicKey

        #expect(try send(endpoint, server: pub, keys: jobA, token: "token-a", seq: 1), "job A's key, job A's token")
        #expect(!(try send(endpoint, server: pub, keys: stranger, token: "token-a", seq: 2)), "an unknown key")
        #expect(!(try send(endpoint, server: pub, keys: nil, token: "token-a", seq: 3)), "no CURVE")
        #expect(!(try send(endpoint, server: pub, keys: jobA, token: "token-b", seq: 4)), "job A's key, B's token")
        #expect(try send(endpoint, server: pub, keys: jobA, token: "token-a", seq: 1), "a resend is acknowledged")
        server.unregister("token-b")
        #expect(!(try send(endpoint, server: pub, keys: jobB, token: "token-b", seq: 5)), "a job no longer running")
        #expect(seen.withLock { $0 } == ["a line 1"], "handled once, and nothing else")
    }

    /// fwpd's ingest key is made once, private, and read back unchanged after a restart.
    @Test func theIngestKeyPersists() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("ingest-key-\(UUID())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("ingest-curve.key")
        let first = try IngestServer.secretKey(in: file)
        #expect(CurveKeyPair.isValidKey(first))
        #expect(try IngestServer.secretKey(in: file) == first)
        let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        try Data("not a key\n".utf8).write(to: file)
        #expect(throws: ConfigError.self) { try IngestServer.secretKey(in: file) }
    }
}
