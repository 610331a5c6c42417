import FWPDaemon
import FWPProtocol
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct ConfigTests {
    /// etc/fwpd.toml documents the built-in defaults: loading it changes nothing.
    @Test func documentedConfigEqualsTheDefaults() throws {
        var c = DaemonConfig()
        try c.apply(file: repositoryRoot.appendingPathComponent("etc/fwpd.toml").path)
        #expect(c == DaemonConfig())
    }

    @Test func environmentOverridesFileAndFlagsOverrideEnvironment() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("fwpd.toml")
        try "[fwpd]\nworkers = 2  # two jobs\nstate_dir = \"/srv/fwpd\"\nlog_level = \"debug\"\n".write(
            to: file, atomically: true, encoding: .utf8)
        var c = DaemonConfig()
        try c.apply(file: file.path)
        try c.apply(environment: ["FWPD_WORKERS": "3", "UNRELATED": "x"])
        try c.apply(flags: [("--workers", "4")])
        #expect(c.workers == 4 && c.stateDirectory == "/srv/fwpd" && c.logLevel == "debug")
    }

    /// Any valid TOML is read: quoted keys, literal strings, a dotted table, comments after values;
    /// invalid TOML is refused with its line.
    @Test func fullTOMLIsAccepted() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("fwpd.toml")
        try """
        # top-level settings and the [fwpd] table mix
        "workers" = 3
        [fwpd]
        state_dir = '/srv/fwpd # not a comment'
        lease_seconds = 1.5e1  # fifteen
        allow_insecure_remote = false
        log_level = \"\"\"warning\"\"\"
        """.write(to: file, atomically: true, encoding: .utf8)
        var c = DaemonConfig()
        try c.apply(file: file.path)
        #expect(
            c.workers == 3 && c.stateDirectory == "/srv/fwpd # not a comment" && c.leaseSeconds == 15
                && c.logLevel == "warning")
        try "workers = 2\nworkers = 3\n".write(to: file, atomically: true, encoding: .utf8)
        do {
            try c.apply(file: file.path)
            Issue.record("a key set twice was accepted")
        } catch let e as ConfigError {
            #expect(e.message.contains("fwpd.toml:2") && e.message.contains("not valid TOML"))
        }
        try "[other]\nworkers = 2\n".write(to: file, atomically: true, encoding: .utf8)
        do {
            try c.apply(file: file.path)
            Issue.record("an unknown section was accepted")
        } catch let e as ConfigError { #expect(e.message.contains("unknown section [other]")) }
    }

    @Test func loopbackInEverySpelling() {
        for local in [
            "tcp://127.0.0.1:5555", "tcp://127.4.5.6:1", "tcp://[::1]:5555", "tcp://[0:0:0:0:0:0:0:1]:5555",
            "tcp://localhost:5555", "ipc:///run/fwpd/requests", "inproc://x",
        ] {
            #expect(DaemonConfig.isLocal(local), "\(local)")
        }
        for remote in ["tcp://10.0.0.1:1", "tcp://[::2]:1", "tcp://0.0.0.0:5555", "tcp://[::]:5555", "tcp://eth0:5555"]
        {
            #expect(!DaemonConfig.isLocal(remote), "\(remote)")
        }
        #expect(DaemonConfig.bindable("tcp://localhost:5555") == "tcp://127.0.0.1:5555")
        #expect(DaemonConfig.bindable("tcp://[::1]:5555") == "tcp://[::1]:5555")
    }

    @Test func badSettingsAreNamed() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("bad.toml")
        try "workers = 0\n".write(to: file, atomically: true, encoding: .utf8)
        var c = DaemonConfig()
        #expect(throws: ConfigError.self) { try c.apply(file: file.path) }
        do { try c.apply(file: file.path) } catch let e as ConfigError {
            #expect(e.message.contains("bad.toml:1") && e.message.contains("workers"))
        }
        try "wrokers = 2\n".write(to: file, atomically: true, encoding: .utf8)
        do { try c.apply(file: file.path) } catch let e as ConfigError {
            #expect(e.message.contains("unknown setting 'wrokers'"))
        }
        #expect(throws: ConfigError.self) { try c.apply(environment: ["FWPD_LOG_LEVEL": "loud"]) }
        for bad in ["-1", "20", "low"] {
            do {
                try c.apply(environment: ["FWPD_REQUEST_NICE": bad])
                Issue.record("request_nice \(bad) was accepted")
            } catch let e as ConfigError { #expect(e.message.contains("request_nice")) }
        }
        try c.apply(environment: ["FWPD_REQUEST_NICE": "19"])
        #expect(c.requestNice == 19)
        var remote = DaemonConfig()
        remote.requestEndpoint = "tcp://0.0.0.0:5555"
        #expect(throws: ConfigError.self) { try remote.validate() }
        remote.allowInsecureRemote = true
        try remote.validate()
        #expect(
            DaemonConfig.isLocal("ipc:///run/fwpd/requests") && DaemonConfig.isLocal("tcp://127.0.0.1:1")
                && !DaemonConfig.isLocal("tcp://10.0.0.1:1"))

    }

    /// The Slurm executor's ingest endpoint: CURVE comes on by itself off loopback; turning it off
    /// there needs allow_insecure_remote; a bad value is named.
    @Test func ingestCurveFollowsTheEndpoint() throws {
        var c = DaemonConfig()
        c.executor = "slurm"
        c.sharedDirectory = "/tmp"
        #expect(!c.ingestUsesCurve, "loopback: off")
        c.ingestEndpoint = "tcp://10.0.0.5:5557"
        #expect(c.ingestUsesCurve, "off loopback: on")
        try c.validate()
        try c.apply(environment: ["FWPD_INGEST_CURVE": "off"])
        do {
            try c.validate()
            Issue.record("an unencrypted remote ingest endpoint was accepted")
        } catch let e as ConfigError { #expect(e.message.contains("ingest_curve")) }
        c.allowInsecureRemote = true
        try c.validate()
        try c.apply(environment: ["FWPD_INGEST_CURVE": "on"])
        c.ingestEndpoint = "tcp://127.0.0.1:5557"
        #expect(c.ingestUsesCurve, "on: on loopback too")
        do {
            try c.apply(environment: ["FWPD_INGEST_CURVE": "yes"])
            Issue.record("ingest_curve = yes was accepted")
        } catch let e as ConfigError { #expect(e.message.contains("auto, on or off")) }
    }
}

extension DaemonTests {
    /// Type=notify: fwpd sends READY=1 once it serves and STOPPING=1 on SIGTERM, to $NOTIFY_SOCKET.
    @Test func notifiesReadyAndStopping() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(
            "notify-\(UUID().uuidString.prefix(8))"
        ).path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer {
            close(fd)
            unlink(path)
        }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(bound == 0)
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        func receive() -> String {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buffer, buffer.count, 0)
            return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
        }
        let d = DaemonProcess()
        let p = Process()
        p.executableURL = productsDirectory.appendingPathComponent("fwpd")
        p.arguments = d.arguments
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = path
        p.environment = env
        try p.run()
        let ready = receive()
        #expect(ready.contains("READY=1"), "got '\(ready)'")
        #expect(try d.client().call("health", [:]).0 == "ok", "READY means it serves")
        kill(p.processIdentifier, SIGTERM)
        #expect(receive().contains("STOPPING=1"))
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
    }
}
