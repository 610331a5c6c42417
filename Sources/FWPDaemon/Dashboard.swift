import FWPProtocol
import FWPStore
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// The dashboard's URL once its server listens (port 0 picks one), for `health` and `token`.
public final class DashboardAddress: Sendable {
    private let value = Mutex<String?>(nil)
    public init() {}
    public var url: String? { value.withLock { $0 } }
    func set(_ url: String) { value.withLock { $0 = url } }
}

/// A request's context: Hummingbird's, and the address the connection comes from.
struct DashboardContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let remote: SocketAddress?
    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remote = source.channel.remoteAddress
    }
}

/// fwpd's web dashboard (docs/DASHBOARD.md): the pages under `web_dir`, the charting library from
/// Debian's JavaScript folder, a read-only JSON API with cancel, and live event streams, all
/// answered by the same `RequestHandler` as the ZeroMQ protocol so that principals, roles and
/// errors are the same.
public final class Dashboard: Service, @unchecked Sendable {
    let config: DaemonConfig
    let store: JobStore
    let address: DashboardAddress
    let logger: Logger
    /// `RequestHandler` is not thread-safe; HTTP requests come on several event loops.
    private let handler: Mutex<RequestHandler>
    /// Each listed job's newest progress and eval events, kept while its last sequence number
    /// is unchanged (a finished job's never change), so that a live jobs page re-reads only
    /// the jobs that moved.
    private let summaries = Mutex<[Int64: (seq: Double, progress: JSONValue?, eval: JSONValue?)]>([:])
    /// Set when fwpd stops: streams end so that the server can close.
    private let stopping = Atomic<Bool>(false)

    init(config: DaemonConfig, store: JobStore, handler: RequestHandler, address: DashboardAddress, logger: Logger) {
        self.config = config
        self.store = store
        self.handler = Mutex(handler)
        self.address = address
        self.logger = logger
    }

    public func run() async throws {
        guard let (host, port) = DaemonConfig.httpHostPort(config.httpAddress) else { return }
        let router = Hummingbird.Router(context: DashboardContext.self)
        routes(router)
        let app = Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: "fwpd"),
            onServerRunning: { [address, logger] channel in
                let bound = channel.localAddress?.port ?? port
                let shown = host.contains(":") ? "[\(host)]" : host
                address.set("http://\(shown):\(bound)/")
                logger.info("dashboard on http://\(shown):\(bound)/")
            }, logger: quietLogger())
        try await withGracefulShutdownHandler {
            do { try await app.run() } catch {
                let message =
                    "the dashboard cannot listen on \(config.httpAddress): \(error); set http_address to another HOST:PORT, or off"
                logger.critical("\(message)")
                throw ConfigError(message)
            }
        } onGracefulShutdown: { [self] in
            stopping.store(true, ordering: .relaxed)
        }
    }

    /// Hummingbird logs every request at info; fwpd's log keeps its own lines.
    private func quietLogger() -> Logger {
        var l = Logger(label: "fwpd-http")
        l.logLevel = .warning
        return l
    }

    // MARK: Routes

    func routes(_ router: Hummingbird.Router<DashboardContext>) {
        for (path, file) in [
            ("/", "index.html"), ("/job", "job.html"), ("/sweep", "sweep.html"), ("/compare", "compare.html"),
        ] {
            router.get(RouterPath(path)) { [self] _, _ in try staticFile(config.webDirectory, file) }
        }
        router.get("/static/:file") { [self] _, context in
            try staticFile(config.webDirectory, context.parameters.get("file") ?? "")
        }
        router.get("/js/dygraphs/:file") { [self] _, context in
            try staticFile(config.javascriptDirectory + "/dygraphs", context.parameters.get("file") ?? "")
        }
        router.get("/login") { [self] request, _ in try login(request) }

        router.get("/api/whoami") { [self] request, context in
            let p = try principal(request, context)
            return json(Array(JSONValue.object(["name": .string(p.name), "role": .string(p.role.rawValue)]).jsonBytes))
        }
        router.get("/api/health") { [self] request, context in try call("health", [:], request, context) }
        router.get("/api/jobs") { [self] request, context in
            json(try jobsWithProgress(listQuery(request), request, context))
        }
        router.get("/api/jobs/stream") { [self] request, context in
            let body = listQuery(request)
            _ = try jobsWithProgress(body, request, context)  // refuses now, before the stream starts
            return stream(interval: 1) { [self] in try? jobsWithProgress(body, request, context) }
        }
        router.get("/api/jobs/:id") { [self] request, context in
            try call("status", ["job": .number(Double(try id(context)))], request, context)
        }
        router.get("/api/jobs/:id/events") { [self] request, context in
            var body = query(request, ints: ["after", "limit"], strings: [])
            body["job"] = .number(Double(try id(context)))
            return try call("events", body, request, context)
        }
        router.get("/api/jobs/:id/stream") { [self] request, context in try eventStream(request, context) }
        router.get("/api/jobs/:id/checkpoints") { [self] request, context in
            try call("checkpoints", ["job": .number(Double(try id(context)))], request, context)
        }
        router.get("/api/jobs/:id/checkpoints/:checkpoint") { [self] request, context in
            try download(request, context)
        }
        router.post("/api/jobs/:id/cancel") { [self] request, context in
            try requireScriptedRequest(request)
            return try call("cancel", ["job": .number(Double(try id(context)))], request, context)
        }
        router.get("/api/sweeps") { [self] request, context in
            _ = try handle("health", [:], request, context)  // viewer
            let q = query(request, ints: ["before", "limit"], strings: [])
            let limit = min(max(Int(q["limit"]?.doubleValue ?? 100), 1), 1000)
            let sweeps = try store.sweeps(before: q["before"]?.doubleValue.map { Int64($0) }, limit: limit)
            return json(Array(JSONValue.object(["sweeps": try WireEncoder().encode(sweeps)]).jsonBytes))
        }
        router.get("/api/sweeps/:id") { [self] request, context in
            try call("sweep_status", ["sweep": .number(Double(try id(context)))], request, context)
        }
        router.get("/api/sweeps/:id/stream") { [self] request, context in
            let body: [String: JSONValue] = ["sweep": .number(Double(try id(context)))]
            _ = try handle("sweep_status", body, request, context)
            return stream(interval: 1) { [self] in try? handle("sweep_status", body, request, context).body }
        }
        router.post("/api/sweeps/:id/cancel") { [self] request, context in
            try requireScriptedRequest(request)
            return try call("cancel", ["sweep": .number(Double(try id(context)))], request, context)
        }
    }

    // MARK: Principals

    /// The request's principal: a token's (Authorization: Bearer, or the cookie `/login` sets),
    /// else the local principal for a loopback browser addressing fwpd by a loopback name (a
    /// page of another site rebound to 127.0.0.1 names its own host, and is refused).
    func principal(_ request: Request, _ context: DashboardContext) throws -> Principal {
        if let token = Self.token(request) {
            guard let p = try store.tokenPrincipal(sha256: Digest.sha256Hex(Data(token.utf8))) else {
                throw HTTPRefusal(
                    .unauthorized, .forbidden, "this token is unknown or revoked; make one with fwpctl token")
            }
            return p
        }
        guard config.httpLocalAccess, Self.isLoopback(context.remote) else {
            throw HTTPRefusal(
                .unauthorized, .forbidden,
                "the dashboard needs a token from this address: run fwpctl token, then open the printed /login address")
        }
        guard Self.isLoopbackHost(request.head.authority ?? "") else {
            throw HTTPRefusal(
                .forbidden, .forbidden,
                "requests without a token must name this machine by a loopback address or localhost")
        }
        return Principal(name: config.localPrincipal, role: config.localRole)
    }

    static func token(_ request: Request) -> String? {
        if let auth = request.headers[.authorization], auth.hasPrefix("Bearer ") {
            return String(auth.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        }
        for cookie in request.headers[values: .cookie].flatMap({ $0.split(separator: ";") }) {
            let parts = cookie.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
            if parts.count == 2 && parts[0] == "fwp_token" { return String(parts[1]) }
        }
        return nil
    }

    /// A header's value by its lowercase name.
    static func header(_ request: Request, _ name: String) -> String? {
        request.headers.first { $0.name.canonicalName == name }?.value
    }

    static func isLoopback(_ address: SocketAddress?) -> Bool {
        guard let ip = address?.ipAddress else { return false }
        return ip.hasPrefix("127.") || ip == "::1" || ip.hasPrefix("::ffff:127.")
    }

    static func isLoopbackHost(_ authority: String) -> Bool {
        var host = authority
        if host.hasPrefix("[") {
            host = String(host.dropFirst().prefix { $0 != "]" })
        } else if let c = host.lastIndex(of: ":") {
            host = String(host[..<c])
        }
        return host == "localhost" || host == "::1"
            || (host.hasPrefix("127.") && host.allSatisfy { $0.isNumber || $0 == "." })
    }

    /// Changes come from the page's scripts, which add this header; a form or link on another
    /// site cannot (browsers send custom headers across origins only after a preflight, which
    /// this server never grants).
    func requireScriptedRequest(_ request: Request) throws {
        guard Self.header(request, "x-fwp-request") == "1" else {
            throw HTTPRefusal(.forbidden, .forbidden, "changes need the header X-FWP-Request: 1")
        }
    }

    /// `/login?token=…`: checks the token, keeps it in an HTTP-only cookie, and goes to the jobs.
    func login(_ request: Request) throws -> Response {
        guard let token = request.uri.queryParameters.get("token"),
            token.count < 200, token.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }),
            try store.tokenPrincipal(sha256: Digest.sha256Hex(Data(token.utf8))) != nil
        else {
            throw HTTPRefusal(.unauthorized, .forbidden, "this token is unknown or revoked; make one with fwpctl token")
        }
        return Response(
            status: .seeOther,
            headers: [
                .location: "/",
                .setCookie: "fwp_token=\(token); Path=/; HttpOnly; SameSite=Strict",
            ])
    }

    // MARK: Calls into the request handler

    func handle(_ command: String, _ body: [String: JSONValue], _ request: Request, _ context: DashboardContext) throws
        -> Reply
    {
        let p = try principal(request, context)
        let bytes = Array(JSONValue.object(body).jsonBytes)
        let result = handler.withLock { $0.handle(command: command, body: bytes, principal: p) }
        switch result {
        case .success(let reply): return reply
        case .failure(let error): throw HTTPRefusal(error)
        }
    }

    func call(_ command: String, _ body: [String: JSONValue], _ request: Request, _ context: DashboardContext) throws
        -> Response
    {
        json(try handle(command, body, request, context).body)
    }

    func id(_ context: DashboardContext) throws -> Int {
        guard let v = context.parameters.get("id", as: Int.self), v > 0 else {
            throw HTTPRefusal(.badRequest, .invalidRequest, "the id in the path must be a positive integer")
        }
        return v
    }

    /// The query's named integer and string fields as a request body; the handler validates them.
    func query(_ request: Request, ints: [String], strings: [String]) -> [String: JSONValue] {
        var body: [String: JSONValue] = [:]
        let q = request.uri.queryParameters
        for name in ints {
            if let v = q.get(name) { body[name] = Int(v).map { .number(Double($0)) } ?? .string(String(v)) }
        }
        for name in strings { if let v = q.get(name) { body[name] = .string(String(v)) } }
        return body
    }

    /// A jobs query: `list`'s fields, the newest first unless it pages with `after`.
    func listQuery(_ request: Request) -> [String: JSONValue] {
        var body = query(request, ints: ["after", "before", "limit", "sweep"], strings: ["state"])
        if body["after"] == nil && body["before"] == nil { body["before"] = .number(1e15) }
        return body
    }

    /// `list`'s reply with each job's newest progress and eval events (`progress`, `eval`).
    func jobsWithProgress(_ body: [String: JSONValue], _ request: Request, _ context: DashboardContext) throws
        -> [UInt8]
    {
        let reply = try handle("list", body, request, context)
        guard case .object(var fields) = try JSONValue.parse(Data(reply.body)),
            case .array(let jobs) = fields["jobs"] ?? .null
        else { return reply.body }
        fields["jobs"] = .array(
            jobs.map { job in
                guard case .object(var j) = job, let id = j["id"]?.doubleValue, let seq = j["last_seq"]?.doubleValue
                else { return job }
                if let known = summaries.withLock({ $0[Int64(id)] }), known.seq == seq {
                    j["progress"] = known.progress
                    j["eval"] = known.eval
                    return .object(j)
                }
                var progress: JSONValue? = nil, eval: JSONValue? = nil
                for body in (try? store.recentEventBodies(job: Int64(id), limit: 40)) ?? [] {
                    guard let e = try? JSONValue.parse(Data(body.utf8)), let kind = e["kind"]?.stringValue else {
                        continue
                    }
                    if kind == "progress" && progress == nil { progress = e }
                    if kind == "eval" && eval == nil { eval = e }
                }
                summaries.withLock {
                    if $0.count > 10_000 { $0.removeAll(keepingCapacity: true) }
                    $0[Int64(id)] = (seq, progress, eval)
                }
                j["progress"] = progress
                j["eval"] = eval
                return .object(j)
            })
        return Array(JSONValue.object(fields).jsonBytes)
    }

    func download(_ request: Request, _ context: DashboardContext) throws -> Response {
        let job = try id(context)
        guard let checkpoint = context.parameters.get("checkpoint", as: Int.self), checkpoint > 0 else {
            throw HTTPRefusal(.badRequest, .invalidRequest, "the checkpoint in the path must be a positive integer")
        }
        let reply = try handle(
            "export", ["job": .number(Double(job)), "checkpoint": .number(Double(checkpoint))], request, context)
        return Response(
            status: .ok,
            headers: [
                .contentType: "application/octet-stream",
                .contentDisposition: "attachment; filename=\"job-\(job)-checkpoint-\(checkpoint).fwpc\"",
            ], body: ResponseBody(byteBuffer: ByteBuffer(bytes: reply.attachment ?? [])))
    }

    // MARK: Streams

    /// Server-sent events of job `id`: every stored event after `Last-Event-ID` (a reconnecting
    /// browser sends it) or `?after=`, each with its sequence number as the event id, then new
    /// ones as they are stored; `end` once the job has finished and every event is sent.
    func eventStream(_ request: Request, _ context: DashboardContext) throws -> Response {
        let job = try id(context)
        var after = 0
        if let last = Self.header(request, "last-event-id") {
            after = Int(last) ?? 0
        } else if let q = request.uri.queryParameters.get("after") {
            guard let v = Int(q), v >= 0 else {
                throw HTTPRefusal(.badRequest, .invalidRequest, "field 'after' must be an integer ≥ 0")
            }
            after = v
        }
        _ = try handle("status", ["job": .number(Double(job))], request, context)  // exists, and the role reads
        let start = after
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
            body: ResponseBody { [self] writer in
                var last = Int64(start)
                let opened = ContinuousClock.now
                var quiet = ContinuousClock.now
                try await writer.write(ByteBuffer(string: "retry: 1000\n\n"))
                while !stopping.load(ordering: .relaxed) && ContinuousClock.now - opened < .seconds(300) {
                    let bodies = try store.eventBodies(job: Int64(job), after: last, limit: 500)
                    var out = ""
                    for body in bodies {
                        guard let seq = (try? JSONValue.parse(Data(body.utf8)))?["seq"]?.doubleValue else { continue }
                        last = Int64(seq)
                        out += "id: \(last)\ndata: \(body)\n\n"
                    }
                    if !out.isEmpty {
                        try await writer.write(ByteBuffer(string: out))
                        quiet = ContinuousClock.now
                    }
                    if bodies.count == 500 { continue }
                    if let info = try store.job(Int64(job)), info.state.isFinal, info.lastSeq <= last {
                        try await writer.write(
                            ByteBuffer(string: "event: end\ndata: {\"state\":\"\(info.state.rawValue)\"}\n\n"))
                        break
                    }
                    if ContinuousClock.now - quiet > .seconds(15) {
                        try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                        quiet = ContinuousClock.now
                    }
                    try await Task.sleep(for: .milliseconds(250))
                }
                try await writer.finish(nil)
            })
    }

    /// Server-sent events of a changing reply (the jobs list, a sweep): sent when it changes.
    func stream(interval: Double, _ next: @escaping @Sendable () -> [UInt8]?) -> Response {
        Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
            body: ResponseBody { [self] writer in
                var previous: [UInt8]? = nil
                let opened = ContinuousClock.now
                var quiet = ContinuousClock.now
                try await writer.write(ByteBuffer(string: "retry: 1000\n\n"))
                while !stopping.load(ordering: .relaxed) && ContinuousClock.now - opened < .seconds(300) {
                    if let bytes = next(), bytes != previous {
                        previous = bytes
                        try await writer.write(
                            ByteBuffer(string: "data: \(String(decoding: bytes, as: UTF8.self))\n\n"))
                        quiet = ContinuousClock.now
                    } else if ContinuousClock.now - quiet > .seconds(15) {
                        try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                        quiet = ContinuousClock.now
                    }
                    try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                }
                try await writer.finish(nil)
            })
    }

    // MARK: Files

    static let types = [
        "html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
        "png": "image/png", "svg": "image/svg+xml", "map": "application/json",
    ]

    /// A file straight from `folder`: names of letters, digits, `-`, `_` and one extension from
    /// `types`, so that no request reaches outside the folder.
    func staticFile(_ folder: String, _ name: String) throws -> Response {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 2, parts.allSatisfy({ !$0.isEmpty }),
            name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }),
            let type = Self.types[String(parts.last!)]
        else { throw HTTPRefusal(.notFound, .notFound, "no such file") }
        guard let data = FileManager.default.contents(atPath: folder + "/" + name) else {
            throw HTTPRefusal(.notFound, .notFound, "no such file")
        }
        return Response(
            status: .ok, headers: [.contentType: type, .cacheControl: "no-cache"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    func json(_ bytes: [UInt8]) -> Response {
        Response(
            status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}

/// A refusal as an HTTP status with the protocol's error body (`{code, message, details}`).
struct HTTPRefusal: HTTPResponseError {
    let status: HTTPResponse.Status
    let error: WireError

    init(_ status: HTTPResponse.Status, _ code: ErrorCode, _ message: String) {
        self.status = status
        error = WireError(code, message)
    }

    init(_ error: WireError) {
        self.error = error
        switch error.code {
        case .forbidden: status = .forbidden
        case .notFound: status = .notFound
        case .internal, .corruptCheckpoint: status = .internalServerError
        default: status = .badRequest
        }
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: WireJSON.encode(error))))
    }
}
