import CSpawn
@testable import FWPDaemon
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A one-node Slurm cluster on this machine, from Debian's packages (slurm-wlm, munge), for the
/// tests: its own munged (socket and key in a temporary folder), slurmctld and slurmd in the
/// foreground on free ports, a slurm.conf naming this host, state and spool in the folder.
/// `environment` holds what Slurm's commands need (SLURM_CONF). Stopped by `stop()` or deinit.
final class SlurmCluster {
    let folder: URL
    let host: String
    /// The daemons' pids. They are started with fwp_spawn, not Foundation's Process: slurmctld
    /// closes the descriptors it inherits, which Foundation takes for an exit and then waits for
    /// in a blocking call that stalls every other Process of the test run.
    private var pids: [pid_t] = []
    private var controller: pid_t = 0

    /// Stops slurmctld alone (Slurm "down"), and starts it again.
    func stopController() {
        kill(controller, SIGTERM)
        var status: Int32 = 0
        waitpid(controller, &status, 0)
        pids.removeAll { $0 == controller }
    }

    func startController() throws {
        controller = try start("/usr/sbin/slurmctld", ["-D", "-f", configFile.path])
        try waitFor("the node to be idle again") {
            (try? self.run("/usr/bin/sinfo", ["-h", "-o", "%T"]).1)?.contains("idle") == true
        }
    }

    /// Whether this machine can run one: the daemons are installed and we are root (munged and
    /// slurmd as another user need a set-up the tests do not make).
    static var available: Bool {
        geteuid() == 0
            && ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch"].allSatisfy {
                FileManager.default.isExecutableFile(atPath: $0)
            }
    }

    var configFile: URL { folder.appendingPathComponent("slurm.conf") }
    var environment: [String: String] { ["SLURM_CONF": configFile.path] }

    init() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent(
            "fwp-slurm-\(UUID().uuidString.prefix(8))")
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count)
        host =
            String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .split(separator: ".").first.map(String.init) ?? "localhost"
        let fm = FileManager.default
        for sub in ["munge", "state", "spool"] {
            try fm.createDirectory(at: folder.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        chmod(folder.appendingPathComponent("munge").path, 0o700)
        let key = folder.appendingPathComponent("munge/munge.key")
        var bytes = [UInt8](repeating: 0, count: 128)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
        try Data(bytes).write(to: key)
        chmod(key.path, 0o600)
        let socket = folder.appendingPathComponent("munge/munge.socket").path
        let p = folder.path
        try """
        ClusterName=fwptest
        SlurmctldHost=\(host)
        SlurmctldPort=\(freePort())
        SlurmdPort=\(freePort())
        SlurmUser=root
        SlurmdUser=root
        AuthType=auth/munge
        AuthInfo=socket=\(socket)
        CredType=cred/munge
        StateSaveLocation=\(p)/state
        SlurmdSpoolDir=\(p)/spool
        SlurmctldPidFile=\(p)/slurmctld.pid
        SlurmdPidFile=\(p)/slurmd.pid
        SlurmctldLogFile=\(p)/slurmctld.log
        SlurmdLogFile=\(p)/slurmd.log
        ProctrackType=proctrack/linuxproc
        TaskPlugin=task/none
        SchedulerType=sched/backfill
        SelectType=select/cons_tres
        SelectTypeParameters=CR_Core
        ReturnToService=2
        MpiDefault=none
        JobCompType=jobcomp/none
        AccountingStorageType=accounting_storage/none
        NodeName=\(host) CPUs=\(ProcessInfo.processInfo.activeProcessorCount) State=UNKNOWN
        PartitionName=debug Nodes=\(host) Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4

        """.write(to: configFile, atomically: true, encoding: .utf8)
        try start(
            "/usr/sbin/munged",
            [
                "--foreground", "--force", "--socket=\(socket)", "--key-file=\(key.path)",
                "--pid-file=\(p)/munge/munged.pid", "--log-file=\(p)/munge/munged.log", "--seed-file=\(p)/munge/seed",
            ])
        try waitFor("munged's socket") { fm.fileExists(atPath: socket) }
        controller = try start("/usr/sbin/slurmctld", ["-D", "-c", "-f", configFile.path])
        try start("/usr/sbin/slurmd", ["-D", "-f", configFile.path])
        try waitFor("the node to be idle") {
            (try? self.run("/usr/bin/sinfo", ["-h", "-o", "%T"]).1)?.contains("idle") == true
        }
    }

    deinit { stop() }

    /// Stops the daemons (slurmd, slurmctld, munged) and waits for them.
    func stop() {
        for pid in pids.reversed() {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            let deadline = Date().addingTimeInterval(10)
            while waitpid(pid, &status, WNOHANG) == 0 {
                if Date() > deadline { kill(pid, SIGKILL) }
                usleep(20_000)
            }
        }
        pids.removeAll()
    }

    @discardableResult
    private func start(_ program: String, _ arguments: [String]) throws -> pid_t {
        let log = folder.appendingPathComponent(URL(fileURLWithPath: program).lastPathComponent + ".out")
        let fd = open(log.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        defer { close(fd) }
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        let env =
            ProcessInfo.processInfo.environment.merging(environment) { _, new in new }.map { strdup("\($0)=\($1)") }
            + [nil]
        defer { for a in argv + env { free(a) } }
        var error: Int32 = 0
        let pid = fwp_spawn(program, argv, env, nil, fd, fd, &error)
        guard pid > 0 else {
            throw NSError(
                domain: "SlurmCluster", code: Int(error),
                userInfo: [NSLocalizedDescriptionKey: "cannot start \(program): \(String(cString: strerror(error)))"])
        }
        pids.append(pid)
        return pid
    }

    private func waitFor(_ what: String, timeout: Double = 30, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            guard Date() < deadline else {
                let logs = ["slurmctld.log", "slurmd.log", "munge/munged.log"].map {
                    (try? String(contentsOf: folder.appendingPathComponent($0), encoding: .utf8)) ?? ""
                }
                throw NSError(
                    domain: "SlurmCluster", code: 1,
                    userInfo: [
                        NSLocalizedDescriptionKey: "timed out waiting for \(what): \(logs.joined(separator: "\n"))"
                    ])
            }
            usleep(100_000)
        }
    }

    /// Runs a Slurm command (or any program) with the cluster's environment; returns its exit
    /// status and its standard output and error together, trimmed (fwpd's own runner).
    @discardableResult
    func run(_ program: String, _ arguments: [String], timeout: Double = 120) throws -> (Int32, String) {
        SlurmExecutor.command(program, arguments, environment: environment, timeout: timeout)
    }
}
