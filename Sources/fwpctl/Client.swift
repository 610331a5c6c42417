import FWPProtocol
import Foundation
import ZeroMQ

/// Exit codes of fwpctl (documented in docs/OPERATIONS.md).
enum Exit {
    static let requestFailed: Int32 = 1
    static let unreachable: Int32 = 3
    static let jobFailed: Int32 = 4
    static let jobCancelled: Int32 = 5
}

struct CtlError: Error, CustomStringConvertible {
    var message: String
    var code: Int32
    var description: String { message }
}

/// Connection settings shared by every command.
struct Connection {
    var endpoint: String
    var eventsEndpoint: String
    var timeout: Double
    var serverKey: String?
    var keyFile: String?

    func curveKeys() throws -> CurveKeyPair? {
        guard let serverKey else { return nil }
        guard CurveKeyPair.isValidKey(serverKey) else {
            throw CtlError(message: "server key is not a 40-character Z85 key", code: 2)
        }
        guard let keyFile else {
            throw CtlError(
                message: "CURVE needs a client key: --key-file or FWPCTL_KEY_FILE (see fwpctl keygen)", code: 2)
        }
        guard
            let secret = try? String(contentsOfFile: keyFile, encoding: .utf8).trimmingCharacters(
                in: .whitespacesAndNewlines),
            CurveKeyPair.isValidKey(secret)
        else { throw CtlError(message: "\(keyFile) does not hold a Z85 secret key", code: 2) }
        return CurveKeyPair(publicKey: try CurveKeyPair.publicKey(forSecret: secret), secretKey: secret)
    }
}

/// A request/reply client over a DEALER socket.
final class Client {
    let context: ZMQContext
    let socket: ZMQSocket
    let connection: Connection

    init(_ connection: Connection) throws {
        self.connection = connection
        context = try ZMQContext()
        socket = try context.socket(.dealer)
        if let keys = try connection.curveKeys() {
            try socket.makeCurveClient(serverKey: connection.serverKey!, keys: keys)
        }
        try socket.connect(connection.endpoint)
    }

    deinit {
        socket.close()
        context.terminate()
    }

    /// Sends a command and returns the reply body (and attachment frame, if any).
    func call(_ command: String, _ body: [String: JSONValue]) throws -> (JSONValue, [UInt8]?) {
        try socket.send([Array(FWPWire.version.utf8), Array(command.utf8), WireJSON.encode(JSONValue.object(body))])
        guard let frames = try socket.receive(timeoutMilliseconds: Int(connection.timeout * 1000)) else {
            throw CtlError(
                message:
                    "fwpd is not reachable at \(connection.endpoint) (no reply within \(connection.timeout) s); is it running? (fwpd, or systemctl status fwpd)",
                code: Exit.unreachable)
        }
        guard frames.count >= 3, String(decoding: frames[0], as: UTF8.self) == FWPWire.version else {
            throw CtlError(message: "malformed reply from \(connection.endpoint)", code: Exit.requestFailed)
        }
        let status = String(decoding: frames[1], as: UTF8.self)
        if status == "error" {
            let e =
                (try? WireJSON.decode(WireError.self, from: frames[2]))
                ?? WireError(ErrorCode("unknown"), "unreadable error reply")
            throw CtlError(message: "\(e.code): \(e.message)", code: Exit.requestFailed)
        }
        let body = try JSONDecoder().decode(JSONValue.self, from: Data(frames[2]))
        return (body, frames.count > 3 ? frames[3] : nil)
    }

    func decode<T: Decodable>(_ type: T.Type, _ value: JSONValue) throws -> T {
        try WireJSON.decode(type, from: WireJSON.encode(value))
    }
}
