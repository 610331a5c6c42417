import FWPProtocol
import Foundation
import Testing
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// The folder holding the built executables (next to the test bundle).
let productsDirectory: URL = {
    var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    while url.path != "/"
        && !FileManager.default.fileExists(atPath: url.deletingLastPathComponent().appendingPathComponent("fwpd").path)
    {
        url = url.deletingLastPathComponent()
    }
    return url.deletingLastPathComponent()
}()

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// A free TCP port on loopback (bound and released; the daemon binds it right after).
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    _ = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// A real fwpd process on free loopback ports with its own state folder.
final class DaemonProcess {
    let state: URL
    let requestEndpoint: String
    let publishEndpoint: String
    let extraArguments: [String]
    private(set) var process: Process?
    let logURL: URL

    /// `host`: the loopback host both endpoints bind (an IPv4 address, `[::1]` or `localhost`).
    init(state: URL? = nil, arguments: [String] = [], host: String = "127.0.0.1") {
        self.state =
            state ?? FileManager.default.temporaryDirectory.appendingPathComponent("fwpd-test-\(UUID().uuidString)")
        requestEndpoint = "tcp://\(host):\(freePort())"
        publishEndpoint = "tcp://\(host):\(freePort())"
        extraArguments = arguments
        logURL = self.state.appendingPathExtension("log")
    }

    deinit {
        if let p = process, p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }

    var arguments: [String] {
        [
            "--state-dir", state.path, "--request-endpoint", requestEndpoint, "--publish-endpoint", publishEndpoint,
            "--tasks-dir", repositoryRoot.appendingPathComponent("tasks").path, "--threads-per-job", "1", "--log-level",
            "debug", "--http-address", "127.0.0.1:0", "--web-dir", repositoryRoot.appendingPathComponent("web").path,
        ] + extraArguments
    }

    /// Starts fwpd and waits until it answers `health` (asked by `probe`, a plain client by default).
    @discardableResult
    func start(probe: TestClient? = nil) throws -> DaemonProcess {
        let p = Process()
        p.executableURL = productsDirectory.appendingPathComponent("fwpd")
        p.arguments = arguments
        // As a service manager would start it: fwpd sets OpenBLAS's thread count (and, where
        // OpenBLAS's CPU detection falls short, its kernel family) itself.
        var env = ProcessInfo.processInfo.environment
        for key in ["OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "FWP_OPENBLAS_DETECTED_CORE"] {
            env.removeValue(forKey: key)
        }
        p.environment = env
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let log = try FileHandle(forWritingTo: logURL)
        log.seekToEndOfFile()
        p.standardError = log
        p.standardOutput = log
        try p.run()
        process = p
        let client = try probe ?? TestClient(endpoint: requestEndpoint)
        for _ in 0..<300 {
            if (try? client.call("health", [:], timeout: 0.1)) != nil { return self }
            guard p.isRunning else { break }
        }
        throw WireError(ErrorCode("start_failed"), "fwpd did not come up: \(self.log())")
    }

    func log() -> String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    /// Sends a signal and waits for the exit status.
    @discardableResult
    func stop(_ signal: Int32 = SIGTERM) -> Int32 {
        guard let p = process else { return -1 }
        kill(p.processIdentifier, signal)
        p.waitUntilExit()
        return p.terminationStatus
    }

    func client() throws -> TestClient { try TestClient(endpoint: requestEndpoint) }

    /// Runs fwpctl against this daemon; returns its exit status and output.
    func fwpctl(_ args: [String], timeout: Double = 120) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = productsDirectory.appendingPathComponent("fwpctl")
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["FWPCTL_ENDPOINT"] = requestEndpoint
        env["FWPCTL_EVENTS_ENDPOINT"] = publishEndpoint
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}

/// A DEALER client speaking the protocol directly.
final class TestClient {
    let context: ZMQContext
    let socket: ZMQSocket

    init(endpoint: String, curve: (server: String, keys: CurveKeyPair)? = nil) throws {
        context = try ZMQContext()
        socket = try context.socket(.dealer)
        if let curve { try socket.makeCurveClient(serverKey: curve.server, keys: curve.keys) }
        try socket.connect(endpoint)
    }

    deinit {
        socket.close()
        context.terminate()
    }

    /// Raw frames in, raw frames out (nil on timeout).
    func raw(_ frames: [[UInt8]], timeout: Double = 5) throws -> [[UInt8]]? {
        try socket.send(frames)
        return try socket.receive(timeoutMilliseconds: Int(timeout * 1000))
    }

    /// A command; returns ("ok" | "error", body). Throws on timeout.
    func call(_ command: String, _ body: [String: JSONValue], timeout: Double = 10) throws -> (String, JSONValue) {
        guard
            let f = try raw(
                [Array("FWP1".utf8), Array(command.utf8), WireJSON.encode(JSONValue.object(body))], timeout: timeout)
        else {
            throw WireError(ErrorCode("timeout"), "no reply to \(command)")
        }
        return (String(decoding: f[1], as: UTF8.self), try JSONDecoder().decode(JSONValue.self, from: Data(f[2])))
    }

    /// The reply body of a command that must succeed.
    func ok(_ command: String, _ body: [String: JSONValue] = [:]) throws -> JSONValue {
        let (status, reply) = try call(command, body)
        guard status == "ok" else { throw WireError(ErrorCode("unexpected_error"), "\(command): \(reply.jsonText)") }
        return reply
    }

    func job(_ id: Int64) throws -> JobInfo {
        try WireJSON.decode(JobInfo.self, from: WireJSON.encode(try ok("status", ["job": .number(Double(id))])))
    }

    func submit(_ body: [String: JSONValue]) throws -> JobInfo {
        try WireJSON.decode(JobInfo.self, from: WireJSON.encode(try ok("submit", body)["job"]!))
    }

    func events(_ id: Int64) throws -> [JobEvent] {
        try WireJSON.decode(
            [JobEvent].self,
            from: WireJSON.encode(try ok("events", ["job": .number(Double(id)), "limit": 10000])["events"]!))
    }

    /// Polls until `condition` holds for the job (or fails after `timeout` seconds).
    func wait(_ id: Int64, timeout: Double = 60, until condition: (JobInfo) -> Bool) throws -> JobInfo {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let j = try job(id)
            if condition(j) { return j }
            usleep(50_000)
        }
        throw WireError(ErrorCode("timeout"), "job \(id) did not reach the expected state: \(try job(id))")
    }
}

/// A retrieval job that runs for a while (long enough to interrupt) and checkpoints often.
func longRetrieval(steps: Int = 100_000, evalEvery: Int = 50) -> [String: JSONValue] {
    [
        "task": "retrieval",
        "parameters": .object([
            "keys": 8, "key_size": 16, "rule": "delta", "attention": "linear", "max_steps": .number(Double(steps)),
            "eval_every": .number(Double(evalEvery)), "target_loss": 0, "patience": 1000, "batch": 8,
        ]),
    ]
}

/// Runs fwpd with `arguments` until it exits (a start it refuses); its status and standard error.
func runFwpd(_ arguments: [String]) throws -> (status: Int32, stderr: String) {
    let p = Process()
    p.executableURL = productsDirectory.appendingPathComponent("fwpd")
    p.arguments = arguments
    let err = Pipe()
    p.standardError = err
    try p.run()
    let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, text)
}
