import FWPDaemon
import FWPProtocol
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// One HTTP/1.1 exchange over a plain socket, so that a test controls every header (Host,
/// Cookie, Last-Event-ID) and can read a stream that never ends.
struct HTTPExchange {
    var status = 0
    var headers: [String: String] = [:]
    var body = ""

    var json: JSONValue { (try? JSONValue.parse(Data(body.utf8))) ?? .null }

    /// Sends the request and reads until the server closes or `until` holds for what came so far.
    static func send(
        port: Int, _ method: String, _ path: String, headers: [String: String] = [:], host: String? = nil,
        timeout: Double = 10, until: ((String) -> Bool)? = nil
    ) throws -> HTTPExchange {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { throw POSIXError(.ECONNREFUSED) }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var text = "\(method) \(path) HTTP/1.1\r\nHost: \(host ?? "127.0.0.1:\(port)")\r\nConnection: close\r\n"
        for (k, v) in headers { text += "\(k): \(v)\r\n" }
        text += "Content-Length: 0\r\n\r\n"
        _ = text.withCString { Glibc.send(fd, $0, strlen($0), 0) }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n == 0 { break }
            if n > 0 { received += buffer[0..<n] }
            if let until, until(String(decoding: received, as: UTF8.self)) { break }
        }
        return parse(String(decoding: received, as: UTF8.self))
    }

    static func parse(_ raw: String) -> HTTPExchange {
        var r = HTTPExchange()
        guard let split = raw.range(of: "\r\n\r\n") else { return r }
        let head = raw[..<split.lowerBound].split(separator: "\r\n")
        r.status = Int(head.first?.split(separator: " ").dropFirst().first ?? "") ?? 0
        for line in head.dropFirst() {
            if let c = line.firstIndex(of: ":") {
                r.headers[line[..<c].lowercased()] = line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)
            }
        }
        var body = String(raw[split.upperBound...])
        if r.headers["transfer-encoding"] == "chunked" {
            var out = "", rest = Substring(body)
            while let nl = rest.range(of: "\r\n"), let size = Int(rest[..<nl.lowerBound], radix: 16), size > 0 {
                let start = nl.upperBound
                let bytes = Array(rest[start...].utf8)
                out += String(decoding: bytes.prefix(size), as: UTF8.self)
                rest = Substring(String(decoding: bytes.dropFirst(min(size + 2, bytes.count)), as: UTF8.self))
            }
            body = out
        }
        r.body = body
        return r
    }
}

@Suite(.serialized) struct DashboardTests {
    /// A daemon with the dashboard on a free port, and that port.
    static func start(_ extra: [String] = []) throws -> (DaemonProcess, Int) {
        let d = try DaemonProcess(arguments: extra).start()
        if extra.contains("off") { return (d, 0) }
        var url = ""
        for _ in 0..<100 {  // the HTTP server starts beside the ZeroMQ one
            url = try d.client().ok("health")["dashboard"]?.stringValue ?? ""
            if !url.isEmpty { break }
            usleep(50_000)
        }
        let port = Int(url.split(separator: ":").last?.split(separator: "/").first ?? "") ?? 0
        #expect(port > 0, "health names the dashboard: '\(url)'")
        return (d, port)
    }

    static func retrieval(_ steps: Int) -> [String: JSONValue] {
        [
            "task": "retrieval",
            "parameters": .object([
                "keys": 6, "key_size": 16, "max_steps": .number(Double(steps)), "eval_every": 50, "target_loss": 0,
                "batch": 8, "patience": 100_000,
            ]),
        ]
    }

    @Test func readsTheSameJobsAsTheProtocol() throws {
        let (d, port) = try Self.start()
        defer { _ = d.stop() }
        let c = try d.client()
        let earlier = try c.submit(Self.retrieval(50))
        let job = try c.submit(Self.retrieval(100))
        _ = try c.wait(job.id) { $0.state == .succeeded }
        let list = try HTTPExchange.send(port: port, "GET", "/api/jobs")
        #expect(list.status == 200 && list.headers["content-type"] == "application/json")
        let jobs = list.json["jobs"]?.arrayValue ?? []
        #expect(jobs.compactMap { $0["id"]?.doubleValue } == [Double(job.id), Double(earlier.id)], "newest first")
        #expect(jobs.first?["progress"]?["kind"]?.stringValue == "progress", "each job with its newest progress")
        #expect(jobs.first?["progress"]?["step"]?.doubleValue == 100, "the newest progress event")
        let paged = try HTTPExchange.send(port: port, "GET", "/api/jobs?after=0&limit=1")
        #expect(paged.json["jobs"]?.arrayValue?.compactMap { $0["id"]?.doubleValue } == [Double(earlier.id)])
        #expect(paged.json["next"]?.doubleValue == Double(earlier.id))
        let one = try HTTPExchange.send(port: port, "GET", "/api/jobs/\(job.id)")
        let viaProtocol = try c.ok("status", ["job": .number(Double(job.id))])
        #expect(one.json["state"]?.stringValue == "succeeded" && one.json["last_seq"] == viaProtocol["last_seq"])
        let after = try HTTPExchange.send(port: port, "GET", "/api/jobs/\(job.id)/events?after=2&limit=3")
        #expect(after.json["events"]?.arrayValue?.compactMap { $0["seq"]?.doubleValue } == [3, 4, 5])
        let missing = try HTTPExchange.send(port: port, "GET", "/api/jobs/999")
        #expect(missing.status == 404 && missing.json["code"]?.stringValue == "not_found")
        let bad = try HTTPExchange.send(port: port, "GET", "/api/jobs?state=sleeping")
        #expect(bad.status == 400 && bad.json["code"]?.stringValue == "invalid_request")
        let page = try HTTPExchange.send(port: port, "GET", "/job?id=1")
        #expect(page.status == 200 && page.body.contains("/js/dygraphs/dygraph.min.js"))
    }

    /// The stream sends every stored event once, with its sequence number as the event id, and
    /// a reconnect with Last-Event-ID gets exactly the events after it.
    @Test func eventStreamResumesAfterTheLastEventID() throws {
        let (d, port) = try Self.start()
        defer { _ = d.stop() }
        let c = try d.client()
        let job = try c.submit(Self.retrieval(200))
        let done = try c.wait(job.id) { $0.state == .succeeded }
        func ids(_ body: String) -> [Int] {
            body.split(separator: "\n").filter { $0.hasPrefix("id: ") }.compactMap { Int($0.dropFirst(4)) }
        }
        let all = try HTTPExchange.send(port: port, "GET", "/api/jobs/\(job.id)/stream", timeout: 20) {
            $0.contains("event: end")
        }
        #expect(all.headers["content-type"] == "text/event-stream")
        #expect(ids(all.body) == Array(1...Int(done.lastSeq)))
        #expect(all.body.contains("event: end\ndata: {\"state\":\"succeeded\"}"))
        let resumed = try HTTPExchange.send(
            port: port, "GET", "/api/jobs/\(job.id)/stream", headers: ["Last-Event-ID": "7"], timeout: 20
        ) { $0.contains("event: end") }
        #expect(ids(resumed.body) == Array(8...Int(done.lastSeq)))
    }

    /// A live stream delivers events as they are stored, not only stored ones.
    @Test func eventStreamIsLive() throws {
        let (d, port) = try Self.start()
        defer { _ = d.stop() }
        let c = try d.client()
        let job = try c.submit(Self.retrieval(100_000))
        _ = try c.wait(job.id) { $0.state == .running }
        let live = try HTTPExchange.send(port: port, "GET", "/api/jobs/\(job.id)/stream?after=2", timeout: 30) {
            $0.components(separatedBy: "\"kind\":\"progress\"").count > 4
        }
        #expect(live.body.components(separatedBy: "\"kind\":\"progress\"").count > 4)
        _ = try c.ok("cancel", ["job": .number(Double(job.id))])
    }

    @Test func tokensCarryTheirPrincipalAndRole() throws {
        let (d, port) = try Self.start(["--local-role", "user"])
        defer { _ = d.stop() }
        let c = try d.client()
        let job = try c.submit(Self.retrieval(100_000))
        _ = try c.wait(job.id) { $0.state == .running }
        let viewer = try c.ok("token", ["role": "viewer"])
        let token = viewer["token"]?.stringValue ?? ""
        #expect(token.hasPrefix("fwp_") && token.count == 68)
        #expect(viewer["dashboard"]?.stringValue == "http://127.0.0.1:\(port)/")
        let who = try HTTPExchange.send(port: port, "GET", "/api/whoami", headers: ["Authorization": "Bearer \(token)"])
        #expect(who.json == .object(["name": "local", "role": "viewer"]))
        // a viewer's cancel is refused by the server
        let refused = try HTTPExchange.send(
            port: port, "POST", "/api/jobs/\(job.id)/cancel",
            headers: ["Authorization": "Bearer \(token)", "X-FWP-Request": "1"])
        #expect(refused.status == 403 && refused.json["code"]?.stringValue == "forbidden")
        #expect(try c.job(job.id).state == .running && !(try c.job(job.id).cancelRequested))
        // a role above the principal's own is refused; another principal's token needs admin
        #expect(try c.call("token", ["role": "admin"]).1["code"]?.stringValue == "forbidden")
        #expect(try c.call("token", ["principal": "mallory"]).1["code"]?.stringValue == "forbidden")
        #expect(try c.call("token", ["role": "root"]).1["code"]?.stringValue == "invalid_request")
        // the login page keeps the token in an HTTP-only cookie; a revoked token is refused
        let login = try HTTPExchange.send(port: port, "GET", "/login?token=\(token)")
        #expect(login.status == 303 && login.headers["set-cookie"]?.contains("HttpOnly") == true)
        let byCookie = try HTTPExchange.send(
            port: port, "GET", "/api/whoami", headers: ["Cookie": "a=b; fwp_token=\(token)"])
        #expect(byCookie.json["role"]?.stringValue == "viewer")
        _ = try c.ok("token", ["revoke": .number(viewer["id"]?.doubleValue ?? 0)])
        let revoked = try HTTPExchange.send(
            port: port, "GET", "/api/jobs", headers: ["Authorization": "Bearer \(token)"])
        #expect(revoked.status == 401 && revoked.json["code"]?.stringValue == "forbidden")
        #expect(try HTTPExchange.send(port: port, "GET", "/login?token=\(token)").status == 401)
        // the loopback principal (a user) cancels its own job
        let cancelled = try HTTPExchange.send(
            port: port, "POST", "/api/jobs/\(job.id)/cancel", headers: ["X-FWP-Request": "1"])
        #expect(cancelled.status == 200 && cancelled.json["cancel_requested"] == .bool(true))
        _ = try c.wait(job.id) { $0.state == .cancelled }
    }

    /// What a page of another site could make a browser send: a form post without the header,
    /// or requests to a name it rebound to 127.0.0.1. Neither changes anything.
    @Test func requestsFromOtherSitesAreRefused() throws {
        let (d, port) = try Self.start()
        defer { _ = d.stop() }
        let c = try d.client()
        let job = try c.submit(Self.retrieval(100_000))
        let form = try HTTPExchange.send(port: port, "POST", "/api/jobs/\(job.id)/cancel")
        #expect(form.status == 403 && form.json["message"]?.stringValue?.contains("X-FWP-Request") == true)
        let rebound = try HTTPExchange.send(
            port: port, "POST", "/api/jobs/\(job.id)/cancel", headers: ["X-FWP-Request": "1"],
            host: "evil.example:\(port)")
        #expect(rebound.status == 403)
        let read = try HTTPExchange.send(port: port, "GET", "/api/jobs", host: "evil.example")
        #expect(read.status == 403)
        #expect(!(try c.job(job.id).cancelRequested))
        _ = try c.ok("cancel", ["job": .number(Double(job.id))])
    }

    @Test func filesComeOnlyFromTheirFolders() throws {
        let (d, port) = try Self.start()
        defer { _ = d.stop() }
        #expect(try HTTPExchange.send(port: port, "GET", "/static/app.js").status == 200)
        let chart = try HTTPExchange.send(port: port, "GET", "/js/dygraphs/dygraph.min.js")
        #expect(chart.status == 200 && chart.headers["content-type"]?.hasPrefix("text/javascript") == true)
        for path in [
            "/static/..%2F..%2Fetc%2Fpasswd", "/static/.htaccess", "/static/app.js.bak", "/js/dygraphs/..%2Fjquery",
            "/static/%2Fetc%2Fpasswd.js",
        ] {
            let r = try HTTPExchange.send(port: port, "GET", path)
            #expect(r.status == 404, "\(path)")
            #expect(!r.body.contains("root:"), "\(path)")
        }
    }

    /// A dashboard port already taken stops fwpd with an error that says what to set.
    @Test func aTakenPortIsAClearError() throws {
        let (d, port) = try Self.start()
        defer { _ = d.stop() }
        let other = DaemonProcess(arguments: ["--http-address", "127.0.0.1:\(port)"])
        let (status, text) = try runFwpd(other.arguments)
        #expect(status != 0)
        #expect(
            text.contains("the dashboard cannot listen on 127.0.0.1:\(port)") && text.contains("http_address"),
            "\(text)")
        #expect(try d.client().ok("health")["status"] == "ok", "the first fwpd is unaffected")
    }

    @Test func offTurnsItOffAndRemoteNeedsAProxyOrConsent() throws {
        let (d, _) = try Self.start(["--http-address", "off"])
        #expect(try d.client().ok("health")["dashboard"] == nil)
        _ = d.stop()
        func check(_ flags: [(String, String)]) throws {
            var c = DaemonConfig()
            try c.apply(flags: flags)
            try c.validate()
        }
        #expect(throws: Error.self) { try check([("--http-address", "0.0.0.0:8080")]) }
        #expect(throws: Never.self) {
            try check([("--http-address", "0.0.0.0:8080"), ("--allow-insecure-remote", "true")])
        }
        #expect(throws: Never.self) { try check([("--http-address", "[::1]:0")]) }
        #expect(throws: Error.self) { try check([("--http-address", "127.0.0.1")]) }
        #expect(throws: Error.self) { try check([("--http-address", "127.0.0.1:70000")]) }
    }
}
