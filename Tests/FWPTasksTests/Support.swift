import FWPCore
import Foundation
import Testing

@testable import FWPTasks

/// An in-memory task context: records events and checkpoints; can cancel on a chosen event.
final class MemoryContext: TaskContext, @unchecked Sendable {
    private let lock = NSLock()
    private var _events: [ProgressEvent] = []
    private var _checkpoints: [(step: Int, data: Data, best: Bool)] = []
    private var cancelled = false
    let cancelWhen: (@Sendable (ProgressEvent) -> Bool)?
    let threads: Int

    init(
        threads: Int = 1, checkpoints: [(step: Int, data: Data, best: Bool)] = [],
        cancelWhen: (@Sendable (ProgressEvent) -> Bool)? = nil
    ) {
        self.threads = threads
        self._checkpoints = checkpoints
        self.cancelWhen = cancelWhen
    }

    var events: [ProgressEvent] { lock.withLock { _events } }
    var checkpoints: [(step: Int, data: Data, best: Bool)] { lock.withLock { _checkpoints } }
    var isCancelled: Bool { lock.withLock { cancelled } }
    func cancel() { lock.withLock { cancelled = true } }

    func emit(_ event: ProgressEvent) {
        lock.withLock {
            _events.append(event)
            if cancelWhen?(event) == true { cancelled = true }
        }
    }
    func saveCheckpoint(_ data: Data, step: Int, best: Bool) throws {
        lock.withLock { _checkpoints.append((step, data, best)) }
    }
    func latestCheckpoint() throws -> Data? { lock.withLock { _checkpoints.last?.data } }
    func log(_ level: TaskLogLevel, _ message: String) {}
}

/// A temporary folder removed when the test ends.
final class TemporaryDirectory {
    let url: URL
    init() {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("fwp-tests-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }

    /// Writes `text` to `name` and returns its path.
    ///
    /// The file is opened with O_CLOEXEC: tests run in parallel, and a child process that another
    /// test spawns while this file is open for writing would otherwise keep that descriptor for
    /// its whole life, and running the file (a script) would fail with ETXTBSY meanwhile.
    @discardableResult
    func file(_ name: String, _ text: String, executable: Bool = false) -> String {
        let u = url.appendingPathComponent(name)
        try! FileManager.default.createDirectory(at: u.deletingLastPathComponent(), withIntermediateDirectories: true)
        let fd = open(u.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, executable ? 0o755 : 0o644)
        precondition(fd >= 0, "cannot create \(u.path): \(String(cString: strerror(errno)))")
        let bytes = Array(text.utf8)
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            precondition(n > 0, "cannot write \(u.path): \(String(cString: strerror(errno)))")
            written += n
        }
        if executable { fchmod(fd, 0o755) }  // the mode given to open is masked by the umask
        close(fd)
        return u.path
    }
}

/// A small English-like text with structure (repeated sentences with variations).
func sampleText(lines: Int, seed: UInt64) -> String {
    var rng = FWPRandom(seed: seed)
    let subjects = ["the cat", "a dog", "the fast weight", "my program", "the slow net", "a key"]
    let verbs = ["writes", "reads", "stores", "forgets", "updates", "retrieves"]
    let objects = ["the value", "a memory", "the delta", "an outer product", "the query", "its state"]
    return (0..<lines).map { _ in
        "\(subjects[Int(rng.next() % 6)]) \(verbs[Int(rng.next() % 6)]) \(objects[Int(rng.next() % 6)]) ."
    }.joined(separator: "\n") + "\n"
}
