import FWPConsole
import FWPCore
import FWPTasks
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A task context over a state directory: checkpoints in `<state>/checkpoints`, events printed.
final class DirectoryContext: TaskContext, Sendable {
    let directory: URL
    let threads: Int
    let retention: CheckpointRetention
    let printer: ProgressView
    private let cancelled = Mutex(false)

    init(directory: URL, threads: Int, retention: CheckpointRetention = CheckpointRetention(), printer: ProgressView)
        throws
    {
        self.directory = directory
        self.threads = threads
        self.retention = retention
        self.printer = printer
        try FileManager.default.createDirectory(at: checkpoints, withIntermediateDirectories: true)
    }

    var checkpoints: URL { directory.appendingPathComponent("checkpoints") }

    var isCancelled: Bool { cancelled.withLock { $0 } }
    func cancel() { cancelled.withLock { $0 = true } }

    func emit(_ event: ProgressEvent) { printer.show(event) }

    func log(_ level: TaskLogLevel, _ message: String) { printer.log(level.rawValue, message) }

    /// Step files, newest first.
    func stepFiles() -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: checkpoints.path)) ?? []
        return names.filter(CheckpointRetention.isStepFileName).sorted(by: >).map {
            checkpoints.appendingPathComponent($0)
        }
    }

    func saveCheckpoint(_ data: Data, step: Int, best: Bool) throws {
        let url = checkpoints.appendingPathComponent(CheckpointRetention.stepFileName(step))
        try writeFileDurably(data, to: url)
        if best { try writeFileDurably(data, to: checkpoints.appendingPathComponent(CheckpointRetention.bestFileName)) }
        for old in retention.expired(newestFirst: stepFiles()) { try? FileManager.default.removeItem(at: old) }
    }

    func latestCheckpoint() throws -> Data? {
        for url in stepFiles() {
            guard let data = FileManager.default.contents(atPath: url.path) else { continue }
            do {
                try Safetensors.verify(data)
                return data
            } catch {
                log(.warning, "skipping \(url.lastPathComponent): \(error)")
            }
        }
        return nil
    }
}
