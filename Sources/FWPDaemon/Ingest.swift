import FWPTasks
import Foundation
import Logging
import Synchronization
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// Where the workers of jobs that run elsewhere (the Slurm executor) send their events: a ROUTER
/// socket on `ingest_endpoint`, served by a thread of its own.
///
/// A worker's message is four frames: `FWPI1`, the job's token, a sequence number (decimal) and
/// one relay-protocol line (`DistributedRun`). The line goes to the handler registered for the
/// token, once: a sequence number at or below the last one handled is a resend, acknowledged but
/// not handled again. The reply `ack`, seq comes after the handler returns (the line's events are
/// stored, with the sequence number), so a worker resends what fwpd never stored, and a restarted
/// fwpd registers the token again from the number it stored. A message for a token with no
/// handler (its job is not followed here) gets no reply, and the worker keeps resending it.
///
/// With CURVE (`ingest_curve`), the socket has a context of its own whose ZAP handler lets in only
/// the client keys registered for running jobs, and tags each connection with its job's token:
/// a message is handled only when its token is the one its connection authenticated for.
final class IngestServer: @unchecked Sendable {
    private let context: ZMQContext
    private let socket: ZMQSocket
    private let zap: ZMQSocket?
    private struct Handler {
        var handle: @Sendable (Int64, String) -> Void
        var last: Int64
        var clientKey: String?
    }
    private let handlers = Mutex<[String: Handler]>([:])
    private let stopping = Mutex(false)
    /// One line handled at a time (the ingest thread's and the executor's deliveries).
    private let delivering = NSLock()
    private let done = DispatchSemaphore(value: 0)
    /// The server's public key when CURVE is on (workers need it).
    let serverPublicKey: String?
    let logger: Logger

    /// Binds `endpoint`; with `curveSecretKey`, as a CURVE server.
    init(endpoint: String, curveSecretKey: String?, logger: Logger) throws {
        context = try ZMQContext()
        socket = try context.socket(.router)
        try socket.setMaxMessageSize(16 << 20)
        if let curveSecretKey {
            let z = try context.socket(.rep)
            try z.bind("inproc://zeromq.zap.01")
            zap = z
            try socket.makeCurveServer(secretKey: curveSecretKey)
            serverPublicKey = try CurveKeyPair.publicKey(forSecret: curveSecretKey)
        } else {
            zap = nil
            serverPublicKey = nil
        }
        do { try socket.bind(DaemonConfig.bindable(endpoint)) } catch let e as ZMQError {
            throw ConfigError("cannot bind ingest_endpoint \(endpoint): \(e.message)")
        }
        self.logger = logger
        let t = Thread { [self] in loop() }
        t.name = "fwpd-ingest"
        t.start()
    }

    /// fwpd's ingest secret key: read from `file`, or made there (mode 0600) on the first start.
    /// It stays the same across restarts, so that running workers reconnect to a restarted fwpd.
    static func secretKey(in file: URL) throws -> String {
        if let text = try? String(contentsOf: file, encoding: .utf8) {
            let key = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard CurveKeyPair.isValidKey(key) else {
                throw ConfigError("\(file.path) does not hold a Z85 secret key; remove it to make a new one")
            }
            return key
        }
        let keys = try CurveKeyPair.generate()
        let fd = open(file.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ConfigError("cannot create \(file.path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array((keys.secretKey + "\n").utf8)
        guard write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else {
            throw ConfigError("cannot write \(file.path): \(String(cString: strerror(errno)))")
        }
        return keys.secretKey
    }

    /// Sends the lines of token `token` to `handle` (with their sequence numbers), from sequence
    /// `last` + 1 on; with CURVE, only from a connection authenticated with `clientKey`.
    func register(
        _ token: String, last: Int64 = 0, clientKey: String? = nil,
        _ handle: @escaping @Sendable (Int64, String) -> Void
    ) {
        handlers.withLock { $0[token] = Handler(handle: handle, last: last, clientKey: clientKey) }
    }

    /// Hands line `seq` of token `token` to its handler unless it was handled before; false when
    /// no handler is registered for the token. (The ingest thread calls it for each message; the
    /// executor for the lines a worker left in the shared folder.)
    @discardableResult
    func deliver(_ token: String, seq: Int64, line: String) -> Bool {
        delivering.lock()
        defer { delivering.unlock() }
        guard let entry = handlers.withLock({ $0[token] }) else { return false }
        if seq > entry.last {
            entry.handle(seq, line)
            handlers.withLock { h in if let last = h[token]?.last, last < seq { h[token]?.last = seq } }
        }
        return true
    }

    func unregister(_ token: String) { handlers.withLock { $0[token] = nil } }

    func stop() {
        stopping.withLock { $0 = true }
        done.wait()
        context.terminate()
    }

    private func loop() {
        defer {
            socket.close()
            zap?.close()
            done.signal()
        }
        let sockets = [socket] + (zap.map { [$0] } ?? [])
        while !stopping.withLock({ $0 }) {
            guard let ready = try? ZMQSocket.poll(sockets, timeoutMilliseconds: 200) else { continue }
            if ready.count > 1 && ready[1] { handleZAP() }
            guard ready[0],
                let (frames, userID) = try? socket.receive(timeoutMilliseconds: 0, property: "User-Id")
            else { continue }
            guard frames.count == 5, frames[1] == Array("FWPI1".utf8),
                let seq = Int64(String(decoding: frames[3], as: UTF8.self))
            else {
                logger.warning("ingest: a message that is not FWPI1 (\(frames.count) frames) was dropped")
                continue
            }
            let token = String(decoding: frames[2], as: UTF8.self)
            // With CURVE, a connection speaks only for the job whose key it authenticated with.
            if zap != nil && userID != token { continue }
            guard deliver(token, seq: seq, line: String(decoding: frames[4], as: UTF8.self)) else { continue }
            try? socket.send([frames[0], Array("ack".utf8), frames[3]])
        }
    }

    /// ZAP (RFC 27): a CURVE client is let in when its key is a running job's; its connection is
    /// tagged with that job's token.
    private func handleZAP() {
        guard let zap, let f = try? zap.receive(timeoutMilliseconds: 0), f.count >= 6 else { return }
        var status = "400", text = "client key not allowed", userID = ""
        if String(decoding: f[5], as: UTF8.self) == "CURVE", f.count >= 7, f[6].count == 32 {
            let key = CurveKeyPair.z85(f[6])
            if let token = handlers.withLock({ $0.first { $0.value.clientKey == key }?.key }) {
                status = "200"
                text = "OK"
                userID = token
            } else {
                logger.warning("ingest: refused CURVE client \(key)")
            }
        }
        try? zap.send([Array("1.0".utf8), f[1], Array(status.utf8), Array(text.utf8), Array(userID.utf8), []])
    }
}
