import FWPCore
import FWPStore
import FWPTasks
import Foundation
import Logging
import ZeroMQ
import Synchronization

/// The I/O thread: owns the ROUTER (requests), PUB (events), the inproc PULL that collects
/// events from workers, and the ZAP handler for CURVE. Nothing else touches these sockets.
/// It checks a request's framing and hands command and body to the socket-free `RequestHandler`.
final class Router: @unchecked Sendable {
    let config: DaemonConfig
    let zmq: ZMQContext
    let metrics: DaemonMetrics
    let logger: Logger
    private(set) var handler: RequestHandler!
    let router: ZMQSocket
    let pub: ZMQSocket
    let pull: ZMQSocket
    var zap: ZMQSocket?
    /// CURVE clients by public key (with CURVE on, every client is one of these).
    var allowedKeys: [String: Principal] = [:]
    /// CURVE clients by name, as the ZAP handler tags their connections (User-Id).
    private var principalsByName: [String: Principal] = [:]
    private let stopRequested = Mutex(false)
    private let stopped = DispatchSemaphore(value: 0)

    init(
        config: DaemonConfig, zmq: ZMQContext, store: JobStore, scheduler: Scheduler, registry: TaskRegistry,
        presets: [String: Preset],
        metrics: DaemonMetrics, logger: Logger, pull: ZMQSocket, dashboard: DashboardAddress = DashboardAddress()
    ) throws {
        self.config = config
        self.zmq = zmq
        self.metrics = metrics
        self.logger = logger
        self.pull = pull
        router = try zmq.socket(.router)
        pub = try zmq.socket(.pub)
        try router.setMaxMessageSize(config.maxMessageBytes)
        if let keyFile = config.curveSecretKeyFile {
            guard
                let secret = try? String(contentsOfFile: keyFile, encoding: .utf8).trimmingCharacters(
                    in: .whitespacesAndNewlines),
                CurveKeyPair.isValidKey(secret)
            else { throw ConfigError("curve_secret_key_file \(keyFile) does not hold a Z85 secret key") }
            allowedKeys = try Self.loadAllowedKeys(config.curveAllowedKeysFile!)
            for p in allowedKeys.values { principalsByName[p.name] = p }
            let z = try zmq.socket(.rep)
            try z.bind("inproc://zeromq.zap.01")
            zap = z
            try router.makeCurveServer(secretKey: secret)
            try pub.makeCurveServer(secretKey: secret)
        }
        for (socket, endpoint, setting) in [
            (router, config.requestEndpoint, "request_endpoint"), (pub, config.publishEndpoint, "publish_endpoint"),
        ] {
            do { try socket.bind(DaemonConfig.bindable(endpoint)) } catch let e as ZMQError {
                throw ConfigError("cannot bind \(setting) \(endpoint): \(e.message)")
            }
            // An ipc:// socket is a file: only fwpd's user and group may connect to it (they are the
            // local principal); others get EACCES from the operating system.
            if endpoint.hasPrefix("ipc://"), chmod(String(endpoint.dropFirst(6)), 0o660) != 0 {
                throw ConfigError(
                    "cannot restrict \(setting) \(endpoint) to fwpd's user and group: \(String(cString: strerror(errno)))"
                )
            }
        }
        handler = RequestHandler(
            config: config, store: store, control: scheduler, registry: registry, presets: presets, metrics: metrics,
            curve: zap != nil, dashboard: dashboard)
    }

    /// The CURVE allow-list: one client per line, `KEY [ROLE [NAME]]` (role viewer, user or admin,
    /// default user; name default `key-` and the key's first eight characters), `#` comments.
    static func loadAllowedKeys(_ path: String) throws -> [String: Principal] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError("cannot read curve_allowed_keys_file \(path)")
        }
        var keys: [String: Principal] = [:]
        var names = Set<String>()
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            // Z85 keys may contain '#': a line's first word is a key if it decodes as one; otherwise
            // a line starting with '#' is a comment. After the key, '#' starts a comment.
            let trimmed = raw.trimmingCharacters(in: .whitespaces)
            var words = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let key = words.first, CurveKeyPair.isValidKey(key) else {
                if !trimmed.isEmpty && !trimmed.hasPrefix("#") {
                    throw ConfigError("\(path):\(n + 1): not a Z85 public key")
                }
                continue
            }
            words = Array(words.dropFirst().prefix { !$0.hasPrefix("#") })
            guard words.count <= 2 else { throw ConfigError("\(path):\(n + 1): expected KEY [ROLE [NAME]]") }
            var role = Role.user
            if let r = words.first {
                guard let parsed = Role(rawValue: r) else {
                    throw ConfigError("\(path):\(n + 1): the role must be viewer, user or admin")
                }
                role = parsed
            }
            let name = words.count == 2 ? words[1] : "key-\(key.prefix(8))"
            guard names.insert(name).inserted else { throw ConfigError("\(path):\(n + 1): the name \(name) is taken") }
            keys[key] = Principal(name: name, role: role)
        }
        return keys
    }

    var boundRequestEndpoint: String { router.lastEndpoint }
    var boundPublishEndpoint: String { pub.lastEndpoint }

    /// Serves until `stop()`; runs on its own thread.
    func run() {
        if config.requestNice > 0 { Self.lowerRequestThreadPriority(to: Int32(config.requestNice), logger: logger) }
        var sockets = [router, pull]
        if let zap { sockets.append(zap) }
        while !stopRequested.withLock({ $0 }) {
            do {
                let ready = try ZMQSocket.poll(sockets, timeoutMilliseconds: 100)
                if ready[1] { forwardEvents() }
                if sockets.count > 2 && ready[2] { handleZAP() }
                if ready[0], let (frames, userID) = try router.receive(timeoutMilliseconds: 0, property: "User-Id") {
                    handle(frames, principal: principal(userID: userID))
                }
            } catch {
                logger.error("I/O loop: \(error)")
            }
        }
        forwardEvents()
        router.close()
        pub.close()
        pull.close()
        zap?.close()
        stopped.signal()
    }

    /// Sets the nice value of the calling thread and of libzmq's I/O threads ("ZMQbg/IO/…",
    /// created with the context's first socket). On Linux, nice applies per thread.
    static func lowerRequestThreadPriority(to nice: Int32, logger: Logger) {
        // The calling thread's id: /proc/thread-self links to "<pid>/task/<tid>".
        var threads: [pid_t] = []
        if let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self"),
            let tid = pid_t(link.split(separator: "/").last ?? "")
        {
            threads.append(tid)
        }
        if let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") {
            for t in tasks {
                if let comm = try? String(contentsOfFile: "/proc/self/task/\(t)/comm", encoding: .utf8),
                    comm.hasPrefix("ZMQbg/IO"),
                    let tid = pid_t(t)
                {
                    threads.append(tid)
                }
            }
        }
        for tid in threads where setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), nice) != 0 {
            logger.warning("cannot set nice \(nice) on request thread \(tid): \(String(cString: strerror(errno)))")
        }
    }

    /// Ends the loop and waits until the sockets are closed.
    func stop() {
        stopRequested.withLock { $0 = true }
        stopped.wait()
    }

    private func forwardEvents() {
        while let frames = try? pull.receive(timeoutMilliseconds: 0) {
            try? pub.send(frames)
        }
    }

    // MARK: ZAP (RFC 27): accept CURVE clients whose public key is on the allow-list.

    private func handleZAP() {
        guard let zap, let f = try? zap.receive(timeoutMilliseconds: 0), f.count >= 6 else { return }
        let requestID = f[1]
        var status = "400", text = "client key not allowed", userID = ""
        if String(decoding: f[5], as: UTF8.self) == "CURVE", f.count >= 7, f[6].count == 32 {
            let key = CurveKeyPair.z85(f[6])
            if let principal = allowedKeys[key] {
                status = "200"
                text = "OK"
                userID = principal.name  // every message on this connection carries it
            } else {
                logger.warning("refused CURVE client \(key)")
            }
        }
        try? zap.send([Array("1.0".utf8), requestID, Array(status.utf8), Array(text.utf8), Array(userID.utf8), []])
    }

    // MARK: Requests

    /// Who sent a message: with CURVE, the allow-listed key its connection authenticated with (the
    /// ZAP handler tagged the connection with the key's name); without, the local principal.
    private func principal(userID: String?) -> Principal? {
        guard zap != nil else { return Principal(name: config.localPrincipal, role: config.localRole) }
        return userID.flatMap { principalsByName[$0] }
    }

    private func handle(_ frames: [[UInt8]], principal: Principal?) {
        guard frames.count >= 2 else { return }
        // DEALER: [identity, version, command, body]; REQ adds an empty delimiter after the identity.
        var envelope = [frames[0]]
        var rest = Array(frames.dropFirst())
        if rest.first?.isEmpty == true {
            envelope.append([])
            rest.removeFirst()
        }
        let size = rest.reduce(0) { $0 + $1.count }
        // The framing first: a request that fails it never reaches the handler.
        var framing: WireError? = nil
        if size > config.maxRequestBytes {
            framing = WireError(.tooLarge, "request of \(size) bytes exceeds the limit of \(config.maxRequestBytes)")
        } else if rest.count != 3 {
            framing = WireError(.badFrame, "expected 3 frames (version, command, JSON body), got \(rest.count)")
        } else if String(decoding: rest[0], as: UTF8.self) != FWPWire.version {
            framing = WireError(
                .unsupportedVersion,
                "this daemon speaks \(FWPWire.version), not '\(String(decoding: rest[0].prefix(16), as: UTF8.self))'")
        }
        let reply: Result<Reply, WireError>
        if let framing {
            metrics.request("unknown")
            reply = .failure(framing)
        } else if let principal {
            reply = handler.handle(
                command: String(decoding: rest[1], as: UTF8.self), body: rest[2], principal: principal)
        } else {
            reply = .failure(
                WireError(.forbidden, "this connection has no principal", details: ["required_role": "viewer"]))
        }
        var out = envelope + [Array(FWPWire.version.utf8)]
        switch reply {
        case .success(let r):
            out += [Array("ok".utf8), r.body]
            if let attachment = r.attachment { out.append(attachment) }
        case .failure(let error):
            metrics.error(error.code.rawValue)
            out += [Array("error".utf8), WireJSON.encode(error)]
        }
        do { try router.send(out, dontWait: true) } catch { logger.warning("reply not sent: \(error)") }
    }

}

/// The daemon's version string.
public enum FWPDVersion {
    public static let string = "0.1.0"
}
