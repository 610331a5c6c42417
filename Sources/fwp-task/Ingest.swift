import Foundation
import Synchronization
import ZeroMQ

/// A rank 0's line to fwpd's ingest endpoint (the Slurm executor's jobs): each relay line goes out
/// with the job's token and a sequence number and stays in an outbox until fwpd acknowledges it;
/// unacknowledged lines are sent again every second, so that a restarted fwpd receives what the
/// old one never stored (it drops what it had).
final class IngestClient: Sendable {
    private struct State {
        var socket: ZMQSocket
        var seq: Int64 = 0
        var outbox: [(seq: Int64, line: String, sent: Date)] = []
    }
    private let state: Mutex<State>
    private let token: String
    private let context: ZMQContext

    /// Connects to `endpoint`; with `curve`, as a CURVE client of a server with that public key,
    /// with the job's own key pair.
    init(endpoint: String, token: String, curve: (serverKey: String, keys: CurveKeyPair)? = nil) throws {
        context = try ZMQContext()
        let socket = try context.socket(.dealer)
        if let curve { try socket.makeCurveClient(serverKey: curve.serverKey, keys: curve.keys) }
        try socket.connect(endpoint)
        self.token = token
        state = Mutex(State(socket: socket))
    }

    /// Queues and sends one line.
    func send(_ line: String) {
        state.withLock { s in
            s.seq += 1
            s.outbox.append((s.seq, line, Date()))
            transmit(s.socket, s.seq, line)
            pump(&s)
        }
    }

    /// Waits until fwpd has acknowledged every line, or `timeout` seconds; returns the lines it
    /// has not acknowledged then, with their sequence numbers.
    @discardableResult
    func flush(timeout: Double) -> [(seq: Int64, line: String)] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let left = state.withLock { s in
                pump(&s, wait: 100)
                return s.outbox.map { ($0.seq, $0.line) }
            }
            if left.isEmpty || Date() >= deadline { return left }
        }
    }

    private func transmit(_ socket: ZMQSocket, _ seq: Int64, _ line: String) {
        try? socket.send([Array("FWPI1".utf8), Array(token.utf8), Array("\(seq)".utf8), Array(line.utf8)])
    }

    /// Takes in acknowledgements and resends what has waited a second.
    private func pump(_ s: inout State, wait: Int = 0) {
        var timeout = wait
        while let frames = try? s.socket.receive(timeoutMilliseconds: timeout), frames.count == 2,
            let acked = Int64(String(decoding: frames[1], as: UTF8.self))
        {
            s.outbox.removeAll { $0.seq == acked }
            timeout = 0
        }
        let now = Date()
        for i in s.outbox.indices where now.timeIntervalSince(s.outbox[i].sent) >= 1 {
            transmit(s.socket, s.outbox[i].seq, s.outbox[i].line)
            s.outbox[i].sent = now
        }
    }
}
