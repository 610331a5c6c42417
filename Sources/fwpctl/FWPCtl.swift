// fwpctl: the command-line client of fwpd. Thin: argument parsing, one request per command
// (tail subscribes to events too), human or --json output, distinct exit codes.
import ArgumentParser
import FWPProtocol
import Foundation
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

struct ConnectionOptions: ParsableArguments {
    @Option(help: "fwpd's request endpoint (env FWPCTL_ENDPOINT).")
    var endpoint = ProcessInfo.processInfo.environment["FWPCTL_ENDPOINT"] ?? "tcp://127.0.0.1:5555"
    @Option(help: "fwpd's event endpoint (env FWPCTL_EVENTS_ENDPOINT).")
    var eventsEndpoint = ProcessInfo.processInfo.environment["FWPCTL_EVENTS_ENDPOINT"] ?? "tcp://127.0.0.1:5556"
    @Option(help: "Seconds to wait for a reply.") var timeout = 5.0
    @Option(help: "The server's CURVE public key (env FWPCTL_SERVER_KEY).")
    var serverKey = ProcessInfo.processInfo.environment["FWPCTL_SERVER_KEY"]
    @Option(help: "File with this client's CURVE secret key (env FWPCTL_KEY_FILE).")
    var keyFile = ProcessInfo.processInfo.environment["FWPCTL_KEY_FILE"]

    var connection: Connection {
        Connection(
            endpoint: endpoint, eventsEndpoint: eventsEndpoint, timeout: timeout, serverKey: serverKey, keyFile: keyFile
        )
    }
}

/// Runs `body`, printing errors and exiting with their code.
func perform(_ body: () throws -> Void) throws {
    do { try body() } catch let e as CtlError {
        FileHandle.standardError.write(Data("fwpctl: \(e.message)\n".utf8))
        throw ExitCode(e.code)
    } catch let e as ZMQError {
        FileHandle.standardError.write(Data("fwpctl: \(e)\n".utf8))
        throw ExitCode(Exit.unreachable)
    }
}

func printJSON(_ v: JSONValue) {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
    print(String(decoding: (try? e.encode(v)) ?? Data(), as: UTF8.self))
}

func describe(_ j: JobInfo) -> String {
    var s =
        "job \(j.id)  \(j.state.rawValue)  \(j.preset ?? j.task)  priority \(j.priority)  attempt \(j.attempt)/\(j.maxAttempts)"
        + (j.owner.map { "  owner \($0)" } ?? "") + (j.slurmJob.map { "  slurm job \($0)" } ?? "")
        + (j.sweep.map { "  sweep \($0)" } ?? "")
    if let e = j.error { s += "\n  error \(e.code): \(e.message)" }
    if let r = j.result { s += "\n  result \(r.jsonText)" }
    return s
}

@main
struct FWPCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fwpctl",
        abstract: "Talks to fwpd: submit jobs, follow them, manage their checkpoints.",
        discussion:
            "Exit codes: 0 ok, 1 request refused, 2 usage, 3 daemon unreachable, 4 job failed, 5 job cancelled.",
        subcommands: [
            Submit.self, Status.self, List.self, Tail.self, Cancel.self, Checkpoints.self, Export.self, Tasks.self,
            Health.self, Metrics.self, Keygen.self, Sweep.self, SweepStatus.self, Token.self,
        ])
}

struct Submit: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Queue a job from a preset or a task module.")
    @OptionGroup var options: ConnectionOptions
    @Argument(help: "A preset (tasks/NAME.json) or a task module.") var name: String
    @Option(name: .customLong("set"), help: "Parameter override key=value (repeatable).") var overrides: [String] = []
    @Option(help: "Higher runs first.") var priority = 0
    @Option(help: "Idempotency key: resubmitting with it returns the first job.") var key: String?
    @Option(help: "Attempts before the job fails.") var maxAttempts: Int?
    @Option(
        name: .customLong("slurm"),
        help: "Under the Slurm executor: partition, time_limit, memory or cpus_per_task as key=value (repeatable).")
    var slurm: [String] = []
    @Flag(help: "Follow the job after submitting (like tail).") var tail = false
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        try perform {
            var params: [String: JSONValue] = [:]
            for o in overrides {
                let (k, v) = try keyValue(o, flag: "--set")
                params[k] = v
            }
            let client = try Client(options.connection)
            var body: [String: JSONValue] = ["parameters": .object(params), "priority": .number(Double(priority))]
            if let key { body["idempotency_key"] = .string(key) }
            if let maxAttempts { body["max_attempts"] = .number(Double(maxAttempts)) }
            if !slurm.isEmpty { body["slurm"] = try slurmObject(slurm) }
            let reply = try callWithPresetOrTask(client, "submit", body, name: name)
            let job = try client.decode(JobInfo.self, reply["job"] ?? .null)
            if json {
                printJSON(reply)
            } else {
                print(
                    (reply["created"] == .bool(true) ? "submitted " : "already submitted with this key: ")
                        + describe(job))
            }
            if tail { try follow(job.id, client: client, options: options.connection, json: json) }
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one job.")
    @OptionGroup var options: ConnectionOptions
    @Argument var job: Int
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        try perform {
            let client = try Client(options.connection)
            let reply = try client.call("status", ["job": .number(Double(job))]).0
            if json { printJSON(reply) } else { print(describe(try client.decode(JobInfo.self, reply))) }
        }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List jobs, oldest first.")
    @OptionGroup var options: ConnectionOptions
    @Option(help: "queued, running, succeeded, failed or cancelled.") var state: String?
    @Option(help: "Jobs per page.") var limit = 50
    @Option(help: "Start after this job id.") var after = 0
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        try perform {
            let client = try Client(options.connection)
            var body: [String: JSONValue] = ["limit": .number(Double(limit)), "after": .number(Double(after))]
            if let state { body["state"] = .string(state) }
            let reply = try client.call("list", body).0
            if json { return printJSON(reply) }
            let jobs = try client.decode([JobInfo].self, reply["jobs"] ?? .array([]))
            if jobs.isEmpty { print("no jobs") }
            for j in jobs {
                print(
                    "\(String(j.id).padding(toLength: 6, withPad: " ", startingAt: 0)) \(j.state.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \((j.preset ?? j.task).padding(toLength: 22, withPad: " ", startingAt: 0)) prio \(j.priority)"
                        + (j.sweep.map { "  sweep \($0)" } ?? "") + (j.slurmJob.map { "  slurm \($0)" } ?? "")
                )
            }
            if let next = reply["next"]?.doubleValue { print("more: fwpctl list --after \(Int(next))") }
        }
    }
}

struct Tail: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow a job's progress live until it ends; exits 0 if it succeeded, 4 failed, 5 cancelled.")
    @OptionGroup var options: ConnectionOptions
    @Argument(help: "A job id (or, with --sweep, a sweep id).") var job: Int
    @Flag(help: "Follow a sweep: its points' progress, one line each.") var sweep = false
    @Flag(help: "Print events as JSON lines.") var json = false
    func run() throws {
        try perform {
            let client = try Client(options.connection)
            if sweep { return try followSweep(Int64(job), client: client, options: options.connection) }
            try follow(Int64(job), client: client, options: options.connection, json: json)
        }
    }
}

struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel a job (a running one stops within one step).")
    @OptionGroup var options: ConnectionOptions
    @Argument(help: "A job id (or, with --sweep, a sweep id).") var job: Int
    @Flag(help: "Cancel a sweep: all its points.") var sweep = false
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        try perform {
            let client = try Client(options.connection)
            if sweep {
                let reply = try client.call("cancel", ["sweep": .number(Double(job))]).0
                if json { return printJSON(reply) }
                return print("cancelling sweep \(job): its queued points are cancelled, its running ones stop")
            }
            let reply = try client.call("cancel", ["job": .number(Double(job))]).0
            if json { return printJSON(reply) }
            let j = try client.decode(JobInfo.self, reply)
            print(j.state == .running ? "cancelling job \(j.id) (it stops after its current step)" : describe(j))
        }
    }
}

struct Checkpoints: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a job's checkpoints, newest first.")
    @OptionGroup var options: ConnectionOptions
    @Argument var job: Int
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        try perform {
            let client = try Client(options.connection)
            let reply = try client.call("checkpoints", ["job": .number(Double(job))]).0
            if json { return printJSON(reply) }
            let list = try client.decode([CheckpointInfo].self, reply["checkpoints"] ?? .array([]))
            if list.isEmpty { print("job \(job) has no checkpoints") }
            for c in list {
                print(
                    "\(c.id)  step \(c.step)\(c.best ? " (best)" : "")  \(c.size) bytes  sha256 \(c.sha256.prefix(16))…  \(c.path)"
                )
            }
        }
    }
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a job's checkpoint (newest, --best, or --checkpoint ID) to a file.")
    @OptionGroup var options: ConnectionOptions
    @Argument var job: Int
    @Argument(help: "Output file (.safetensors).") var output: String
    @Flag(help: "The best checkpoint rather than the newest.") var best = false
    @Option(help: "A checkpoint id from fwpctl checkpoints.") var checkpoint: Int?
    func run() throws {
        try perform {
            let client = try Client(options.connection)
            var body: [String: JSONValue] = ["job": .number(Double(job)), "best": .bool(best)]
            if let checkpoint { body["checkpoint"] = .number(Double(checkpoint)) }
            let (reply, data) = try client.call("export", body)
            guard let data else {
                throw CtlError(message: "the reply carried no checkpoint data", code: Exit.requestFailed)
            }
            let tmp = output + ".part"
            guard FileManager.default.createFile(atPath: tmp, contents: Data(data)), rename(tmp, output) == 0 else {
                throw CtlError(message: "cannot write \(output)", code: Exit.requestFailed)
            }
            let info = try client.decode(CheckpointInfo.self, reply)
            print("wrote \(output): step \(info.step), \(data.count) bytes, sha256 \(info.sha256)")
        }
    }
}

struct Tasks: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List task modules and presets with their parameters.")
    @OptionGroup var options: ConnectionOptions
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        try perform {
            let reply = try Client(options.connection).call("tasks", [:]).0
            if json { return printJSON(reply) }
            print("modules:")
            if case .array(let ms) = reply["modules"] ?? .null {
                for m in ms {
                    print("  \(m["name"]?.stringValue ?? "")")
                    if case .array(let ps) = m["parameters"] ?? .null {
                        for p in ps {
                            let d = p["default"].map { " = \($0.jsonText)" } ?? ""
                            print("      \(p["name"]?.stringValue ?? "") (\(p["type"]?.stringValue ?? ""))\(d)")
                        }
                    }
                }
            }
            print("presets:")
            if case .array(let ps) = reply["presets"] ?? .null {
                for p in ps {
                    print(
                        "  \(p["name"]?.stringValue ?? "")  [\(p["module"]?.stringValue ?? "")]  \(p["description"]?.stringValue ?? "")"
                    )
                }
            }
        }
    }
}

struct Health: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check that fwpd answers; exits 3 if it does not.")
    @OptionGroup var options: ConnectionOptions
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        try perform {
            let r = try Client(options.connection).call("health", [:]).0
            if json { return printJSON(r) }
            print(
                "fwpd \(r["version"]?.stringValue ?? "?") ok: \(Int(r["running"]?.doubleValue ?? 0)) running, \(Int(r["queued"]?.doubleValue ?? 0)) queued, \(Int(r["workers"]?.doubleValue ?? 0)) workers (\(r["executor"]?.stringValue ?? "local") executor), up \(Int(r["uptime_seconds"]?.doubleValue ?? 0)) s"
            )
            if let url = r["dashboard"]?.stringValue { print("dashboard: \(url)") }
            if let slurm = r["slurm"] {
                print(
                    slurm["answers"]?.boolValue == true
                        ? "slurm: answers"
                        : "slurm: does not answer: \(slurm["message"]?.stringValue ?? "no reason given")")
            }
        }
    }
}

struct Token: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a token for the web dashboard (or revoke one).",
        discussion: """
            The token stands for you (or, for an admin, --principal) with your role or a lesser one \
            (--role). Open the printed /login address once: the browser keeps the token in a cookie. \
            Programs send it as "Authorization: Bearer TOKEN". fwpd keeps only its SHA-256.
            """)
    @OptionGroup var options: ConnectionOptions
    @Option(help: "Whom the token stands for (admins only; default: you).") var principal: String?
    @Option(help: "Its role: viewer, user or admin (default: the principal's own).") var role: String?
    @Option(help: "Revoke the token with this id instead.") var revoke: Int?
    @Flag(help: "Print JSON.") var json = false
    func run() throws {
        try perform {
            let client = try Client(options.connection)
            if let revoke {
                let reply = try client.call("token", ["revoke": .number(Double(revoke))]).0
                if json { return printJSON(reply) }
                return print("revoked token \(revoke)")
            }
            var body: [String: JSONValue] = [:]
            if let principal { body["principal"] = .string(principal) }
            if let role { body["role"] = .string(role) }
            let r = try client.call("token", body).0
            if json { return printJSON(r) }
            let token = r["token"]?.stringValue ?? ""
            print(
                "token \(Int(r["id"]?.doubleValue ?? 0)) for \(r["principal"]?.stringValue ?? "?") (\(r["role"]?.stringValue ?? "?")): \(token)"
            )
            if let url = r["dashboard"]?.stringValue {
                print("open \(url)login?token=\(token)")
            }
            print("revoke it with: fwpctl token --revoke \(Int(r["id"]?.doubleValue ?? 0))")
        }
    }
}

struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print fwpd's Prometheus metrics.")
    @OptionGroup var options: ConnectionOptions
    func run() throws {
        try perform {
            print(try Client(options.connection).call("metrics", [:]).0["text"]?.stringValue ?? "", terminator: "")
        }
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a CURVE key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.",
        discussion: "Put a client's .pub line in fwpd's curve_allowed_keys_file; give the server's .pub to clients.")
    @Option(help: "Write PREFIX.key and PREFIX.pub instead of printing.") var out: String?
    func run() throws {
        try perform {
            let k = try CurveKeyPair.generate()
            guard let out else {
                print("public \(k.publicKey)\nsecret \(k.secretKey)")
                return
            }
            let secretPath = out + ".key"
            let fd = open(secretPath, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0 else {
                throw CtlError(
                    message: "cannot create \(secretPath) (does it exist already?)", code: Exit.requestFailed)
            }
            let line = Array((k.secretKey + "\n").utf8)
            _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            try (k.publicKey + "\n").write(toFile: out + ".pub", atomically: true, encoding: .utf8)
            print("wrote \(secretPath) (secret) and \(out).pub: \(k.publicKey)")
        }
    }
}
