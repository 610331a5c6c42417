import FWPCore
import FWPStore
import FWPTasks
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The ingest line being handled on this thread (see `JobContext.handleIngested`).
enum Ingesting {
    @TaskLocal static var seq: Int64?
}

/// The context a job's task runs in inside fwpd: events stored then published, checkpoints
/// written durably with a sha256 row, cancellation from clients or shutdown.
final class JobContext: TaskContext, Sendable {
    let job: JobInfo
    let store: JobStore
    let publisher: EventPublisher
    let checkpointDirectory: URL
    let retention: CheckpointRetention
    let threads: Int
    let logger: Logger
    let metrics: DaemonMetrics
    /// Stores and publishes this job's events in order, off the task's thread: a training step
    /// never waits for SQLite's fsync or for a write transaction another request holds.
    private let eventQueue = DispatchQueue(label: "fwpd.job-events")
    /// Whether a client asked to cancel, and whether the daemon is stopping.
    private let flags: Mutex<(cancelRequested: Bool, shuttingDown: Bool)>
    /// The ingest sequence number stored with this job's latest event from an ingest line.
    private let lastIngestSeqStored = Mutex<Int64>(0)

    init(
        job: JobInfo, store: JobStore, publisher: EventPublisher, stateDirectory: URL, retention: CheckpointRetention,
        threads: Int, logger: Logger,
        metrics: DaemonMetrics
    ) throws {
        self.job = job
        self.store = store
        self.publisher = publisher
        self.retention = retention
        self.threads = threads
        self.metrics = metrics
        var l = logger
        l[metadataKey: "job"] = "\(job.id)"
        self.logger = l
        checkpointDirectory = stateDirectory.appendingPathComponent("checkpoints").appendingPathComponent(
            "job-\(job.id)")
        try FileManager.default.createDirectory(at: checkpointDirectory, withIntermediateDirectories: true)
        flags = Mutex((job.cancelRequested, false))
    }

    var isCancelled: Bool { flags.withLock { $0.cancelRequested || $0.shuttingDown } }
    var checkpointBeforeStopping: Bool { flags.withLock { $0.shuttingDown } }
    var isShuttingDown: Bool { flags.withLock { $0.shuttingDown } }
    var wasCancelledByUser: Bool { flags.withLock { $0.cancelRequested } }
    func requestCancel() { flags.withLock { $0.cancelRequested = true } }
    func requestShutdown() { flags.withLock { $0.shuttingDown = true } }

    func recordChildProcessGroup(_ group: ChildProcessGroup?) {
        let json = group.map { String(decoding: WireJSON.encode($0), as: UTF8.self) }
        do { try store.setChildGroup(job.id, json) } catch {
            logger.error("cannot record the child process group: \(error)")
        }
    }

    func emit(_ e: ProgressEvent) {
        let event = JobEvent(job: job.id, seq: 0, time: Date().timeIntervalSince1970, e)
        let ingestSeq = Ingesting.seq
        let store: @Sendable () -> Void = { [store, publisher, metrics, logger, job] in
            do {
                publisher.publish(try store.appendEvent(event, ingestSeq: ingestSeq))
                if let r = e.tokensPerSecond, e.kind == "progress" { metrics.tokensPerSecond(job: job.id, r) }
            } catch {
                logger.error("cannot store event: \(error)")
            }
        }
        // An event from an ingest line is stored before the line is acknowledged, together with
        // the line's sequence number; the others are stored off the caller's thread.
        if ingestSeq != nil {
            eventQueue.sync(execute: store)
            lastIngestSeqStored.withLock { $0 = ingestSeq! }
        } else {
            eventQueue.async(execute: store)
        }
    }

    /// Handles ingest line `seq` (`handle` relays it into this context): its events are stored
    /// with the sequence number, and a line that stored no event records the number on its own,
    /// so that after a restart the worker's resends of handled lines are recognised.
    func handleIngested(seq: Int64, _ handle: () -> Void) {
        Ingesting.$seq.withValue(seq, operation: handle)
        if lastIngestSeqStored.withLock({ $0 }) != seq {
            flushEvents()
            do { try store.setIngestSeq(job.id, seq) } catch {
                logger.error("cannot record ingest line \(seq): \(error)")
            }
        }
    }

    /// Waits until every event emitted so far is stored and published (before the job's final
    /// state event, so that it stays the last one).
    func flushEvents() { eventQueue.sync {} }

    func log(_ level: TaskLogLevel, _ message: String) {
        switch level {
        case .debug: logger.debug("\(message)")
        case .info: logger.info("\(message)")
        case .warning: logger.warning("\(message)")
        case .error: logger.error("\(message)")
        }
    }

    func saveCheckpoint(_ data: Data, step: Int, best: Bool) throws {
        let url = checkpointDirectory.appendingPathComponent(CheckpointRetention.stepFileName(step))
        try writeFileDurably(data, to: url)
        let digest = Digest.sha256Hex(data)
        _ = try store.addCheckpoint(
            job: job.id, step: step, path: url.path, size: Int64(data.count), sha256: digest, best: false)
        if best {
            let bestURL = checkpointDirectory.appendingPathComponent(CheckpointRetention.bestFileName)
            try writeFileDurably(data, to: bestURL)
            for old in try store.checkpoints(job: job.id) where old.best { try store.deleteCheckpoint(id: old.id) }
            _ = try store.addCheckpoint(
                job: job.id, step: step, path: bestURL.path, size: Int64(data.count), sha256: digest, best: true)
        }
        for old in retention.expired(newestFirst: try store.checkpoints(job: job.id).filter({ !$0.best })) {
            try? FileManager.default.removeItem(atPath: old.path)
            try store.deleteCheckpoint(id: old.id)
        }
        emit(
            ProgressEvent(
                kind: "checkpoint", step: step, metrics: ["bytes": .number(Double(data.count)), "best": .bool(best)],
                message: url.path))
    }

    /// The newest step checkpoint whose file matches its recorded sha256; older ones are tried
    /// when the newest is missing or damaged.
    func latestCheckpoint() throws -> Data? {
        for c in try store.checkpoints(job: job.id) where !c.best {
            guard let data = FileManager.default.contents(atPath: c.path) else {
                logger.warning("checkpoint \(c.path) is missing; trying an older one")
                continue
            }
            guard Digest.sha256Hex(data) == c.sha256 else {
                logger.warning("checkpoint \(c.path) does not match its sha256; trying an older one")
                continue
            }
            logger.info("resuming from checkpoint at step \(c.step)")
            return data
        }
        return nil
    }
}
