import CZeroMQ
import Testing

@testable import ZeroMQ

/// The wrapper over the real libzmq: messages, polling, errors and CURVE keys.
@Suite struct ZeroMQTests {
    @Test func libzmqLinks() {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        #expect(major >= 4)
    }

    @Test func multipartMessagesArriveWholeAndInOrder() throws {
        let context = try ZMQContext()
        defer { context.terminate() }
        let pull = try context.socket(.pull)
        let push = try context.socket(.push)
        defer {
            push.close()
            pull.close()
        }
        try pull.bind("inproc://zeromq-tests-multipart")
        try push.connect("inproc://zeromq-tests-multipart")
        try push.send([[1, 2, 3], [], Array("last".utf8)])
        try push.send(["second"])
        #expect(try ZMQSocket.poll([pull], timeoutMilliseconds: 1000) == [true])
        #expect(try pull.receive(timeoutMilliseconds: 1000) == [[1, 2, 3], [], Array("last".utf8)])
        #expect(try pull.receive(timeoutMilliseconds: 1000) == [Array("second".utf8)])
        #expect(try pull.receive(timeoutMilliseconds: 50) == nil, "nothing more: a timeout, not an error")
    }

    @Test func errorsKeepLibzmqsErrno() throws {
        let context = try ZMQContext()
        defer { context.terminate() }
        let socket = try context.socket(.pull)
        defer { socket.close() }
        let error = try #require(throws: ZMQError.self) { try socket.bind("nonsense://here") }
        #expect(error.code == EPROTONOSUPPORT)
        #expect(error.description.contains("errno \(EPROTONOSUPPORT)"))
    }

    @Test func curveKeysRoundTripThroughZ85() throws {
        let pair = try CurveKeyPair.generate()
        #expect(CurveKeyPair.isValidKey(pair.publicKey) && CurveKeyPair.isValidKey(pair.secretKey))
        #expect(try CurveKeyPair.publicKey(forSecret: pair.secretKey) == pair.publicKey)
        let raw = try #require(CurveKeyPair.rawKey(pair.publicKey))
        #expect(raw.count == 32)
        #expect(CurveKeyPair.z85(raw) == pair.publicKey)
        #expect(!CurveKeyPair.isValidKey("too short"))
    }
}
