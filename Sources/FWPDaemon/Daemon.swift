import FWPCore
import FWPStore
import FWPTasks
import Foundation
import Logging
import ServiceLifecycle
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

/// fwpd as one long-running `Service`: opens the store, recovers interrupted jobs, binds the
/// sockets, runs the scheduler and the I/O thread, and on graceful shutdown checkpoints and
/// requeues running jobs before it returns.
public final class Daemon: Service, @unchecked Sendable {
    public let config: DaemonConfig
    let logger: Logger
    let notifier = SystemdNotifier()
    let zmq: ZMQContext
    let store: JobStore
    let router: Router
    let scheduler: Scheduler
    let publisher: EventPublisher
    /// The workers' event endpoint, for the Slurm executor.
    let ingest: IngestServer?
    let lockFD: Int32
    /// The web dashboard, a service of its own beside this one (nil with `http_address = off`).
    public let dashboard: Dashboard?

    /// Prepares everything that can fail (config, lock, database, bind) before `run`.
    public init(config: DaemonConfig, logger: Logger) throws {
        try config.validate()
        self.config = config
        self.logger = logger
        let state = URL(fileURLWithPath: config.stateDirectory)
        try FileManager.default.createDirectory(
            at: state.appendingPathComponent("checkpoints"), withIntermediateDirectories: true)
        lockFD = open(state.appendingPathComponent("fwpd.lock").path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lockFD >= 0, flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            throw ConfigError("another fwpd is using \(state.path) (fwpd.lock is held)")
        }
        try? "\(getpid())\n".write(to: state.appendingPathComponent("fwpd.pid"), atomically: true, encoding: .utf8)
        store = try JobStore(path: state.appendingPathComponent("fwpd.sqlite").path)
        let registry = TaskRegistry.builtIn
        var presets: [String: Preset] = [:]
        if FileManager.default.fileExists(atPath: config.tasksDirectory) {
            presets = try registry.loadPresets(from: URL(fileURLWithPath: config.tasksDirectory))
        } else {
            logger.warning("no tasks folder at \(config.tasksDirectory); no presets loaded")
        }
        zmq = try ZMQContext()
        let pull = try zmq.socket(.pull)
        try pull.bind(EventPublisher.endpoint)
        publisher = try EventPublisher(context: zmq)
        let metrics = DaemonMetrics()
        ingest =
            config.executor == "slurm"
            ? try IngestServer(
                endpoint: config.ingestEndpoint,
                curveSecretKey: config.ingestUsesCurve
                    ? try IngestServer.secretKey(in: state.appendingPathComponent("ingest-curve.key")) : nil,
                logger: logger) : nil
        scheduler = Scheduler(
            config: config, store: store, registry: registry, publisher: publisher, logger: logger, metrics: metrics,
            ingest: ingest)
        let address = DashboardAddress()
        router = try Router(
            config: config, zmq: zmq, store: store, scheduler: scheduler, registry: registry, presets: presets,
            metrics: metrics,
            logger: logger, pull: pull, dashboard: address)
        dashboard =
            config.httpAddress == "off"
            ? nil
            : Dashboard(
                config: config, store: store,
                handler: RequestHandler(
                    config: config, store: store, control: scheduler, registry: registry, presets: presets,
                    metrics: metrics, curve: config.curveSecretKeyFile != nil, dashboard: address),
                address: address, logger: logger)
        for e in try store.recoverInterrupted() {
            publisher.publish(e)
            logger.warning("job \(e.job): \(e.message ?? e.state?.rawValue ?? "")")
        }
        logger.info(
            "fwpd \(FWPDVersion.string): requests on \(router.boundRequestEndpoint), events on \(router.boundPublishEndpoint), state in \(state.path), \(config.workers) worker(s) × \(config.effectiveThreadsPerJob) thread(s), \(presets.count) presets, CURVE \(config.curveSecretKeyFile == nil ? "off" : "on"), \(BLAS.kernelNote)"
        )
    }

    public func run() async throws {
        let io = Thread { [router] in router.run() }
        io.name = "fwpd-io"
        io.start()
        scheduler.start()
        scheduler.wake()
        notifier.notify("READY=1\nSTATUS=serving on \(router.boundRequestEndpoint)")
        let watchdog = SystemdNotifier.watchdogInterval().map { interval in
            Task.detached { [notifier] in
                while !Task.isCancelled {
                    notifier.notify("WATCHDOG=1")
                    try? await Task.sleep(nanoseconds: UInt64(interval / 2 * 1e9))
                }
            }
        }
        try? await gracefulShutdown()
        logger.info("stopping: no new work; checkpointing running jobs")
        notifier.notify("STOPPING=1\nSTATUS=checkpointing running jobs")
        scheduler.shutdown()
        ingest?.stop()
        watchdog?.cancel()
        router.stop()
        publisher.close()
        zmq.terminate()
        try? FileManager.default.removeItem(
            at: URL(fileURLWithPath: config.stateDirectory).appendingPathComponent("fwpd.pid"))
        flock(lockFD, LOCK_UN)
        close(lockFD)
        logger.info("stopped")
    }
}
