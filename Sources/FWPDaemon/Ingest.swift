import FWPTasks
import Foundation
import Logging
import Synchronization
import ZeroMQ

/// Where the workers of jobs that run elsewhere (the Slurm executor) send their events: a ROUTER
/// socket on `ingest_endpoint`, served by a thread of its own.
///
/// A worker's message is four frames: `FWPI1`, the job's token, a sequence number (decimal) and
/// one relay-protocol line (`DistributedRun`). The line goes to the handler registered for the
/// token, once: a sequence number at or below the last one handled is a resend, acknowledged but
/// not handled again. The reply `ack`, seq comes after the handler returns (the event is stored),
/// so a worker resends what fwpd never stored. A message for a token with no handler (its job is
/// not running here) gets no reply, and the worker keeps resending it.
final class IngestServer: @unchecked Sendable {
    private let socket: ZMQSocket
    private let handlers = Mutex<[String: (handle: @Sendable (String) -> Void, last: Int64)]>([:])
    private let stopping = Mutex(false)
    private let done = DispatchSemaphore(value: 0)
    let logger: Logger

    init(context: ZMQContext, endpoint: String, logger: Logger) throws {
        socket = try context.socket(.router)
        try socket.setMaxMessageSize(16 << 20)
        try socket.bind(endpoint)
        self.logger = logger
        let t = Thread { [self] in loop() }
        t.name = "fwpd-ingest"
        t.start()
    }

    /// Sends the lines of token `token` to `handle`, from sequence `last` + 1 on.
    func register(_ token: String, last: Int64 = 0, _ handle: @escaping @Sendable (String) -> Void) {
        handlers.withLock { $0[token] = (handle, last) }
    }

    func unregister(_ token: String) { handlers.withLock { $0[token] = nil } }

    func stop() {
        stopping.withLock { $0 = true }
        done.wait()
    }

    private func loop() {
        defer {
            socket.close()
            done.signal()
        }
        while !stopping.withLock({ $0 }) {
            guard let frames = try? socket.receive(timeoutMilliseconds: 200) else { continue }
            guard frames.count == 5, frames[1] == Array("FWPI1".utf8),
                let seq = Int64(String(decoding: frames[3], as: UTF8.self))
            else {
                logger.warning("ingest: a message that is not FWPI1 (\(frames.count) frames) was dropped")
                continue
            }
            let token = String(decoding: frames[2], as: UTF8.self)
            guard let entry = handlers.withLock({ $0[token] }) else { continue }
            if seq > entry.last {
                entry.handle(String(decoding: frames[4], as: UTF8.self))
                handlers.withLock { $0[token]?.last = seq }
            }
            try? socket.send([frames[0], Array("ack".utf8), frames[3]])
        }
    }
}
