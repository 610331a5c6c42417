// fwpd: the fwp job daemon. Thin: parses settings, wires the Daemon service, runs it under
// swift-service-lifecycle with SIGTERM/SIGINT as graceful shutdown.
import ArgumentParser
import FWPCore
import FWPDaemon
import Foundation
import Logging
import ServiceLifecycle

@main
struct FWPD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fwpd",
        abstract: "Runs fwp training and evaluation jobs received over ZeroMQ.",
        discussion: """
            Settings come from built-in defaults, then the config file (--config, or FWPD_CONFIG), then FWPD_* \
            environment variables, then these flags. etc/fwpd.toml documents every setting.
            """)

    @Option(help: "Config file (TOML, see etc/fwpd.toml).") var config: String?
    @Option(help: "State folder (fwpd.sqlite, checkpoints/).") var stateDir: String?
    @Option(help: "ROUTER endpoint for requests.") var requestEndpoint: String?
    @Option(help: "PUB endpoint for progress events.") var publishEndpoint: String?
    @Option(help: "Jobs run at once.") var workers: Int?
    @Option(help: "Threads per job (0: cores / workers).") var threadsPerJob: Int?
    @Option(help: "Folder of preset manifests.") var tasksDir: String?
    @Option(help: "Step checkpoints kept per job.") var checkpointsKept: Int?
    @Option(help: "Default attempts per job.") var maxAttempts: Int?
    @Option(help: "The most points one sweep may have.") var maxSweepPoints: Int?
    @Option(help: "Largest request in bytes (larger ones get too_large).") var maxRequestBytes: Int?
    @Option(help: "Z85 secret key file; enables CURVE.") var curveSecretKeyFile: String?
    @Option(help: "Allowed client public keys (KEY [ROLE [NAME]] per line).") var curveAllowedKeysFile: String?
    @Option(help: "The principal of clients without CURVE (loopback, ipc).") var localPrincipal: String?
    @Option(help: "That principal's role (viewer, user, admin).") var localRole: String?
    @Option(help: "Programs exec jobs may run, comma-separated absolute paths (none: exec is off).")
    var execPrograms: String?
    @Option(help: "Folders job path parameters may point into, comma-separated (besides <state-dir>/data).")
    var dataRoots: String?
    @Option(help: "The MPI launcher for jobs with ranks > 1.") var mpirun: String?
    @Option(help: "More mpirun options, space-separated.") var mpirunArguments: String?
    @Option(help: "The fwp-task the ranks run (default: beside fwpd).") var taskProgram: String?
    @Option(help: "Where jobs run: local or slurm.") var executor: String?
    @Option(help: "Slurm: a folder fwpd and every node see.") var sharedDirectory: String?
    @Option(help: "Slurm: the endpoint fwpd binds for the workers' events.") var ingestEndpoint: String?
    @Option(help: "Slurm: the address the workers connect to (default: the endpoint).") var ingestAddress: String?
    @Option(help: "Slurm: CURVE on the ingest endpoint: auto (off loopback), on or off.") var ingestCurve: String?
    @Option(help: "Slurm: sbatch --partition.") var slurmPartition: String?
    @Option(help: "Slurm: more sbatch options, space-separated.") var slurmOptions: String?
    @Option(help: "Slurm: the partitions a job may ask for, space-separated.") var slurmPartitions: String?
    @Flag(help: "Allow a non-loopback TCP endpoint without CURVE.") var allowInsecureRemote = false
    @Option(help: "Log level (trace … critical).") var logLevel: String?
    @Option(help: "Nice value (0–19) of the request-serving threads.") var requestNice: Int?
    @Option(help: "The web dashboard's HOST:PORT (port 0: any free port), or off.") var httpAddress: String?
    @Option(help: "The dashboard's pages and scripts.") var webDir: String?
    @Option(help: "Debian's packaged JavaScript libraries (the charts).") var javascriptDir: String?

    func run() async throws {
        BLAS.relaunchIfNeeded()
        var settings = DaemonConfig()
        let env = ProcessInfo.processInfo.environment
        do {
            if let file = config ?? env["FWPD_CONFIG"] { try settings.apply(file: file) }
            try settings.apply(environment: env)
            let flags: [(String?, String)] = [
                (stateDir, "--state-dir"), (requestEndpoint, "--request-endpoint"),
                (publishEndpoint, "--publish-endpoint"),
                (workers.map(String.init), "--workers"), (threadsPerJob.map(String.init), "--threads-per-job"),
                (tasksDir, "--tasks-dir"),
                (checkpointsKept.map(String.init), "--checkpoints-kept"),
                (maxAttempts.map(String.init), "--max-attempts"),
                (maxSweepPoints.map(String.init), "--max-sweep-points"),
                (maxRequestBytes.map(String.init), "--max-request-bytes"),
                (curveSecretKeyFile, "--curve-secret-key-file"),
                (curveAllowedKeysFile, "--curve-allowed-keys-file"),
                (localPrincipal, "--local-principal"), (localRole, "--local-role"), (execPrograms, "--exec-programs"),
                (dataRoots, "--data-roots"),
                (allowInsecureRemote ? "true" : nil, "--allow-insecure-remote"),
                (logLevel, "--log-level"), (requestNice.map(String.init), "--request-nice"),
                (mpirun, "--mpirun"), (mpirunArguments, "--mpirun-arguments"), (taskProgram, "--task-program"),
                (executor, "--executor"), (sharedDirectory, "--shared-directory"),
                (ingestEndpoint, "--ingest-endpoint"), (ingestAddress, "--ingest-address"),
                (ingestCurve, "--ingest-curve"),
                (slurmPartition, "--slurm-partition"), (slurmOptions, "--slurm-options"),
                (slurmPartitions, "--slurm-partitions"),
                (httpAddress, "--http-address"), (webDir, "--web-dir"), (javascriptDir, "--javascript-dir"),
            ]
            try settings.apply(flags: flags.compactMap { v, f in v.map { (f, $0) } })
        } catch {
            throw ValidationError("\(error)")
        }
        let level = Logger.Level(rawValue: settings.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "fwpd")
        let daemon: Daemon
        do {
            daemon = try Daemon(config: settings, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(1)
        }
        let group = ServiceGroup(
            services: [daemon] + (daemon.dashboard.map { [$0] } ?? []), gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        try await group.run()
    }
}
