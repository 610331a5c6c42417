import FWPCore
import FWPStore
import FWPTasks
import Foundation
import Logging
import ZeroMQ
import Synchronization

/// Hands events from worker threads to the I/O thread, which owns the PUB socket.
///
/// ZeroMQ sockets are not thread-safe; workers share one inproc PUSH socket behind a lock, and
/// the I/O thread forwards what arrives on its PULL end to PUB.
final class EventPublisher: Sendable {
    static let endpoint = "inproc://fwpd-events"
    private let socket: Mutex<ZMQSocket>

    /// Connects to the PULL end, which must already be bound.
    init(context: ZMQContext) throws {
        let push = try context.socket(.push)
        try push.connect(Self.endpoint)
        socket = Mutex(push)
    }

    func publish(_ event: JobEvent) {
        socket.withLock { socket in
            do { try socket.send([Array("job.\(event.job)".utf8), WireJSON.encode(event)]) } catch {}
        }
    }

    func close() { socket.withLock { $0.close() } }
}

/// Claims queued jobs and runs them, each on a thread of its own, `workers` at a time.
final class Scheduler: JobControl, @unchecked Sendable {
    let config: DaemonConfig
    let store: JobStore
    let registry: TaskRegistry
    let publisher: EventPublisher
    let logger: Logger
    let metrics: DaemonMetrics
    let stateDirectory: URL
    let dataRoots: DataRoots
    /// Where claimed jobs run.
    let executor: any JobExecutor
    private let condition = NSCondition()
    private var running: [Int64: JobContext] = [:]
    private var stopping = false
    private var pendingWake = false
    /// No claims before this (the executor's back end does not answer).
    private var claimsPausedUntil = Date.distantPast
    private var thread: Thread?
    private let finished = DispatchGroup()

    init(
        config: DaemonConfig, store: JobStore, registry: TaskRegistry, publisher: EventPublisher, logger: Logger,
        metrics: DaemonMetrics, ingest: IngestServer? = nil
    ) {
        self.config = config
        self.store = store
        self.registry = registry
        self.publisher = publisher
        self.logger = logger
        self.metrics = metrics
        stateDirectory = URL(fileURLWithPath: config.stateDirectory)
        dataRoots = DataRoots(config: config)
        executor =
            ingest.map { SlurmExecutor(config: config, logger: logger, ingest: $0) }
            ?? LocalExecutor(config: config, logger: logger)
    }

    var runningCount: Int { condition.withLock { running.count } }

    var executorName: String { executor.name }
    var executorStatus: JSONValue? { executor.status }

    func publish(_ event: JobEvent) { publisher.publish(event) }

    func start() {
        let t = Thread { [self] in loop() }
        t.name = "fwpd-scheduler"
        thread = t
        t.start()
    }

    /// Looks for work now (after a submit or a finished job).
    func wake() {
        condition.withLock {
            pendingWake = true
            condition.signal()
        }
    }

    /// Asks a running job to stop; returns false if it is not running here.
    func cancel(_ id: Int64) -> Bool {
        condition.withLock { running[id] }.map {
            $0.requestCancel()
            return true
        } ?? false
    }

    /// Stops claiming work, asks running jobs to checkpoint and stop, and waits for them.
    func shutdown() {
        let contexts = condition.withLock {
            stopping = true
            condition.broadcast()
            return Array(running.values)
        }
        for c in contexts { c.requestShutdown() }
        finished.wait()
    }

    private func loop() {
        while true {
            condition.lock()
            if !stopping && (running.count >= config.workers || !pendingWake) {
                // Woken by submit or a finished job; the timeout also polls the queue now and then.
                _ = condition.wait(until: Date().addingTimeInterval(1))
            }
            if stopping {
                condition.unlock()
                return
            }
            pendingWake = false
            let free = Date() < claimsPausedUntil ? 0 : config.workers - running.count
            condition.unlock()
            guard free > 0 else { continue }
            do {
                for _ in 0..<free {
                    guard let (job, event) = try store.claim(leaseSeconds: config.leaseSeconds) else { break }
                    publisher.publish(event)
                    try launch(job)
                }
            } catch {
                logger.error("scheduler: \(error)")
                Thread.sleep(forTimeInterval: 1)
            }
            updateGauges()
        }
    }

    /// Makes sure no process of an earlier, interrupted attempt of `job` is alive before it runs
    /// again: the process group its program ran in (recorded by the job context) is killed and
    /// waited for. Its leader died with the old fwpd (parent-death signal); what it started may not.
    func endStaleProcesses(of job: JobInfo) throws {
        guard let json = try store.childGroup(job.id) else { return }
        if let group = try? WireJSON.decode(ChildProcessGroup.self, from: Array(json.utf8)) {
            var left = group.members()
            if !left.isEmpty {
                logger.warning(
                    "job \(job.id): ending \(left.count) process(es) left from an earlier attempt (group \(group.id))")
            }
            let deadline = Date().addingTimeInterval(10)
            while !left.isEmpty && Date() < deadline {
                for pid in left { kill(pid, SIGKILL) }
                usleep(20_000)
                left = group.members()
            }
            guard left.isEmpty else {
                throw WireError(.internal, "processes of an earlier attempt (group \(group.id)) do not end")
            }
        }
        try store.setChildGroup(job.id, nil)
    }

    func updateGauges() {
        if let counts = try? store.counts() {
            metrics.running.set(Double(counts[.running] ?? 0))
            metrics.queued.set(Double(counts[.queued] ?? 0))
        }
    }

    private func launch(_ job: JobInfo) throws {
        let context = try JobContext(
            job: job, store: store, publisher: publisher, stateDirectory: stateDirectory,
            retention: CheckpointRetention(kept: config.checkpointsKept),
            threads: config.effectiveThreadsPerJob, logger: logger, metrics: metrics)
        condition.withLock { running[job.id] = context }
        finished.enter()
        // A thread of its own, not a Dispatch work item: a job holds its thread for as long as it
        // trains, and Dispatch's shared pool (which also runs the Swift concurrency runtime, the
        // signal handling of the graceful stop and the lease heartbeats) is as wide as the machine
        // has cores — with every core's worth of jobs running, those would wait for a job to end.
        let thread = Thread { [self] in
            run(job, context)
            condition.withLock {
                running[job.id] = nil
                pendingWake = true
                condition.signal()
            }
            updateGauges()
            finished.leave()
        }
        thread.name = "fwpd-job-\(job.id)"
        thread.stackSize = 8 << 20
        thread.start()
    }

    private func run(_ job: JobInfo, _ context: JobContext) {
        logger.info("job \(job.id) (\(job.task)) starting, attempt \(job.attempt)")
        let heartbeat = DispatchSource.makeTimerSource(queue: .global())
        heartbeat.schedule(deadline: .now() + config.leaseSeconds / 3, repeating: config.leaseSeconds / 3)
        heartbeat.setEventHandler { [store, config] in try? store.heartbeat(job.id, leaseSeconds: config.leaseSeconds) }
        heartbeat.resume()
        defer { heartbeat.cancel() }
        var outcome: (JobState, JSONValue?, WireError?)
        do {
            defer { context.flushEvents() }
            guard let module = registry.module(named: job.task) else {
                throw WireError(.unknownTask, "task module '\(job.task)' is not registered")
            }
            try endStaleProcesses(of: job)
            if job.task == "exec" {
                // Checked again as the job starts: the configuration may have changed since submit.
                let program = job.parameters["program"]?.stringValue ?? ""
                guard config.allowsExec(program: program) else {
                    throw WireError(.forbidden, "exec is off, or \(program) is no longer among exec_programs")
                }
            }
            try dataRoots.check(module, job.parameters)  // again: files may have changed since submit
            let parameters = try module.validate(job.parameters)
            let result = try executor.run(job, module: module, parameters: parameters, context: context)
            outcome = (.succeeded, result, nil)
        } catch TaskError.cancelled {
            if context.isShuttingDown && !context.wasCancelledByUser {
                do {
                    publisher.publish(
                        try store.requeue(job.id, reason: "the daemon is stopping; the job resumes from its checkpoint")
                    )
                    logger.info("job \(job.id) checkpointed and requeued")
                } catch {
                    logger.error("job \(job.id): cannot requeue: \(error)")
                }
                return
            }
            outcome = (.cancelled, nil, nil)
        } catch let down as ExecutorUnavailable {
            // Nothing was started: the job waits in the queue, spending no attempt, and claims
            // pause for a while rather than retry at once.
            condition.withLock { claimsPausedUntil = Date().addingTimeInterval(down.retrySeconds) }
            do {
                publisher.publish(
                    try store.requeue(job.id, reason: "\(down.message); the job waits for it"))
                logger.warning("job \(job.id): \(down.message); requeued, claims pause \(down.retrySeconds) s")
            } catch {
                logger.error("job \(job.id): cannot requeue: \(error)")
            }
            return
        } catch let lost as RunLost {
            if job.attempt < job.maxAttempts {
                do {
                    publisher.publish(
                        try store.requeue(
                            job.id, reason: "\(lost.reason); the job resumes from its checkpoint",
                            spendAttempt: true))
                    logger.warning("job \(job.id): \(lost.reason); requeued")
                } catch {
                    logger.error("job \(job.id): cannot requeue: \(error)")
                }
                return
            }
            outcome = (
                .failed, nil,
                WireError(.attemptsExhausted, "\(lost.reason), attempt \(job.attempt) of \(job.maxAttempts)")
            )
        } catch TaskError.failed(let code, let message) {
            outcome = (.failed, nil, WireError(code, message))
        } catch let e as ParameterError {
            outcome = (
                .failed, nil, WireError(.invalidParameter, e.description, details: ["parameter": .string(e.parameter)])
            )
        } catch let e as WireError {
            outcome = (.failed, nil, e)
        } catch {
            outcome = (.failed, nil, WireError(.internal, "\(error)"))
        }
        do {
            publisher.publish(try store.finish(job.id, state: outcome.0, result: outcome.1, error: outcome.2))
            metrics.finished(outcome.0.rawValue)
            logger.info("job \(job.id) \(outcome.0.rawValue)\(outcome.2.map { ": \($0)" } ?? "")")
        } catch {
            logger.error("job \(job.id): cannot record outcome: \(error)")
        }
    }
}
