import CZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// An error from libzmq, keeping its errno.
public struct ZMQError: Error, CustomStringConvertible, Equatable, Sendable {
    /// `zmq_errno()` at the failure.
    public let code: Int32
    /// What was being done.
    public let operation: String

    public init(_ operation: String, code: Int32 = zmq_errno()) {
        self.operation = operation
        self.code = code
    }

    /// libzmq's text for the code.
    public var message: String { String(cString: zmq_strerror(code)) }
    public var description: String { "\(operation): \(message) (errno \(code))" }

    /// The call was interrupted or would block; retry.
    public var isRetryable: Bool { code == EINTR || code == EAGAIN }
}

/// A ZeroMQ context. Sockets are created from it and must be closed before it is.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init() throws {
        guard let h = zmq_ctx_new() else { throw ZMQError("zmq_ctx_new") }
        handle = h
    }

    /// Blocks until every socket is closed, then frees the context.
    public func terminate() {
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }

    public func socket(_ type: ZMQSocket.Kind) throws -> ZMQSocket { try ZMQSocket(context: self, kind: type) }

    /// libzmq's version, e.g. (4, 3, 4).
    public static var version: (Int, Int, Int) {
        var a: Int32 = 0, b: Int32 = 0, c: Int32 = 0
        zmq_version(&a, &b, &c)
        return (Int(a), Int(b), Int(c))
    }

    /// Whether libzmq was built with CURVE security.
    public static var hasCurve: Bool { zmq_has("curve") == 1 }
}

/// A ZeroMQ socket. Not thread-safe: use it from the thread that owns it.
public final class ZMQSocket: @unchecked Sendable {
    public enum Kind: Sendable {
        case router, dealer, req, rep, pub, sub, push, pull
        var raw: Int32 {
            switch self {
            case .router: ZMQ_ROUTER
            case .dealer: ZMQ_DEALER
            case .req: ZMQ_REQ
            case .rep: ZMQ_REP
            case .pub: ZMQ_PUB
            case .sub: ZMQ_SUB
            case .push: ZMQ_PUSH
            case .pull: ZMQ_PULL
            }
        }
    }

    let handle: UnsafeMutableRawPointer
    private var closed = false

    init(context: ZMQContext, kind: Kind) throws {
        guard let h = zmq_socket(context.handle, kind.raw) else { throw ZMQError("zmq_socket") }
        handle = h
        try setOption(ZMQ_LINGER, Int32(0))
    }

    deinit { close() }

    public func close() {
        if !closed {
            zmq_close(handle)
            closed = true
        }
    }

    public func bind(_ endpoint: String) throws {
        try enableIPv6IfNeeded(endpoint)
        guard zmq_bind(handle, endpoint) == 0 else { throw ZMQError("bind \(endpoint)") }
    }

    /// libzmq refuses IPv6 addresses on a socket without ZMQ_IPV6; a tcp:// endpoint with a
    /// bracketed address turns it on.
    private func enableIPv6IfNeeded(_ endpoint: String) throws {
        if endpoint.hasPrefix("tcp://[") || endpoint.contains(";[") { try setOption(ZMQ_IPV6, Int32(1)) }
    }

    public func connect(_ endpoint: String) throws {
        try enableIPv6IfNeeded(endpoint)
        guard zmq_connect(handle, endpoint) == 0 else { throw ZMQError("connect \(endpoint)") }
    }

    /// The endpoint actually bound (resolves `tcp://127.0.0.1:*`).
    public var lastEndpoint: String {
        var buffer = [CChar](repeating: 0, count: 256)
        var size = buffer.count
        zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size)
        return String(cString: buffer)
    }

    public func setOption(_ option: Int32, _ value: Int32) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size) == 0 else {
            throw ZMQError("setsockopt \(option)")
        }
    }

    public func setOption(_ option: Int32, _ value: Int64) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int64>.size) == 0 else {
            throw ZMQError("setsockopt \(option)")
        }
    }

    public func setOption(_ option: Int32, _ value: String) throws {
        let ok = value.withCString { zmq_setsockopt(handle, option, $0, strlen($0)) == 0 }
        guard ok else { throw ZMQError("setsockopt \(option)") }
    }

    public func setOption(_ option: Int32, bytes: [UInt8]) throws {
        let ok = bytes.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, $0.count) == 0 }
        guard ok else { throw ZMQError("setsockopt \(option)") }
    }

    /// Subscribes a SUB socket to messages whose first frame starts with `prefix`.
    public func subscribe(_ prefix: String) throws { try setOption(ZMQ_SUBSCRIBE, prefix) }

    /// Largest inbound message accepted; a peer sending a larger one is disconnected.
    public func setMaxMessageSize(_ bytes: Int64) throws { try setOption(ZMQ_MAXMSGSIZE, bytes) }

    /// Sends a multipart message. With `dontWait`, throws EAGAIN instead of blocking.
    public func send(_ frames: [[UInt8]], dontWait: Bool = false) throws {
        for (i, f) in frames.enumerated() {
            var flags: Int32 = i < frames.count - 1 ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            while true {
                let rc = f.withUnsafeBytes { zmq_send(handle, $0.baseAddress, $0.count, flags) }
                if rc >= 0 { break }
                let e = ZMQError("send")
                if e.code == EINTR { continue }
                throw e
            }
        }
    }

    public func send(_ frames: [String], dontWait: Bool = false) throws {
        try send(frames.map { Array($0.utf8) }, dontWait: dontWait)
    }

    /// Receives a multipart message; nil when `timeoutMilliseconds` passes first.
    public func receive(timeoutMilliseconds: Int = -1) throws -> [[UInt8]]? {
        try receive(timeoutMilliseconds: timeoutMilliseconds, property: nil)?.frames
    }

    /// A multipart message and one metadata property of it (`zmq_msg_gets`, e.g. "User-Id", which
    /// the ZAP handler set for the connection; nil where the message has none, or it is empty).
    public func receive(timeoutMilliseconds: Int = -1, property: String?) throws -> (
        frames: [[UInt8]], property: String?
    )? {
        if timeoutMilliseconds >= 0 {
            guard try ZMQSocket.poll([self], timeoutMilliseconds: timeoutMilliseconds).first == true else { return nil }
        }
        var value: String? = nil
        var frames: [[UInt8]] = []
        while true {
            var msg = zmq_msg_t()
            zmq_msg_init(&msg)
            defer { zmq_msg_close(&msg) }
            var rc: Int32
            repeat {
                rc = zmq_msg_recv(&msg, handle, 0)
            } while rc < 0 && zmq_errno() == EINTR
            guard rc >= 0 else { throw ZMQError("receive") }
            let size = zmq_msg_size(&msg)
            let data = zmq_msg_data(&msg)!
            frames.append(Array(UnsafeRawBufferPointer(start: data, count: size)))
            if let property, value == nil, let p = zmq_msg_gets(&msg, property) {
                let text = String(cString: p)
                if !text.isEmpty { value = text }
            }
            if zmq_msg_more(&msg) == 0 { break }
        }
        return (frames, value)
    }

    /// Waits until any socket is readable; returns readability per socket (all false on timeout).
    public static func poll(_ sockets: [ZMQSocket], timeoutMilliseconds: Int) throws -> [Bool] {
        var items = sockets.map { zmq_pollitem_t(socket: $0.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
        var rc: Int32
        repeat {
            rc = zmq_poll(&items, Int32(items.count), timeoutMilliseconds)
        } while rc < 0 && zmq_errno() == EINTR
        guard rc >= 0 else { throw ZMQError("poll") }
        return items.map { ($0.revents & Int16(ZMQ_POLLIN)) != 0 }
    }
}

/// A CURVE key pair in Z85 text (40 characters each).
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    /// A fresh key pair from libzmq.
    public static func generate() throws -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw ZMQError("zmq_curve_keypair") }
        return CurveKeyPair(publicKey: String(cString: pub), secretKey: String(cString: sec))
    }

    /// The public key that belongs to a Z85 secret key.
    public static func publicKey(forSecret secret: String) throws -> String {
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, secret) == 0 else { throw ZMQError("zmq_curve_public") }
        return String(cString: pub)
    }

    public init(publicKey: String, secretKey: String) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// Whether `key` is 40 characters of Z85.
    public static func isValidKey(_ key: String) -> Bool {
        guard key.utf8.count == 40 else { return false }
        var out = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&out, key) != nil
    }

    /// The 32 raw bytes of a Z85 key.
    public static func rawKey(_ key: String) -> [UInt8]? {
        guard key.utf8.count == 40 else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&out, key) != nil ? out : nil
    }

    /// Z85 text of 32 raw key bytes.
    public static func z85(_ raw: [UInt8]) -> String {
        var out = [CChar](repeating: 0, count: 41)
        _ = raw.withUnsafeBufferPointer { zmq_z85_encode(&out, $0.baseAddress, 32) }
        return String(cString: out)
    }
}

extension ZMQSocket {
    /// Makes this socket a CURVE server with the given secret key (clients need its public key).
    public func makeCurveServer(secretKey: String) throws {
        try setOption(ZMQ_CURVE_SERVER, Int32(1))
        try setOption(ZMQ_CURVE_SECRETKEY, secretKey)
        try setOption(ZMQ_ZAP_DOMAIN, "fwp")
    }

    /// Makes this socket a CURVE client of a server with public key `serverKey`.
    public func makeCurveClient(serverKey: String, keys: CurveKeyPair) throws {
        try setOption(ZMQ_CURVE_SERVERKEY, serverKey)
        try setOption(ZMQ_CURVE_PUBLICKEY, keys.publicKey)
        try setOption(ZMQ_CURVE_SECRETKEY, keys.secretKey)
    }
}
