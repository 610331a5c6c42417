import Dispatch
import Synchronization

/// How many threads FWPCore's own loops (over batch × head sequences) use.
///
/// Work is split by sequence, and each sequence is computed by one thread in a fixed order, so
/// results do not depend on this number.
public struct ComputeThreads: Sendable, Equatable {
    public var count: Int
    public init(_ count: Int) {
        precondition(count >= 1, "thread count must be at least 1")
        self.count = count
    }

    /// Runs body(i) for i in 0..<n, spread over `count` threads.
    ///
    /// Items are handed out one at a time from a shared counter rather than striped in advance:
    /// when the system takes a core from one worker (the daemon answering a request, another
    /// process), the others take over its remaining items instead of waiting for it at the end.
    /// Which thread runs an item never changes its result.
    func forEach(_ n: Int, _ body: (Int) -> Void) {
        if count <= 1 || n <= 1 {
            for i in 0..<n { body(i) }
            return
        }
        let workers = min(count, n)
        let next = Atomic<Int>(0)
        withoutActuallyEscaping(body) { body in
            let box = UncheckedBox(body)
            DispatchQueue.concurrentPerform(iterations: workers) { _ in
                while true {
                    let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    if i >= n { break }
                    box.value(i)
                }
            }
        }
    }
}

extension ComputeThreads {
    /// Runs body over contiguous row ranges that cover 0..<rows: one range when there is one
    /// thread or too little work, otherwise a few ranges per thread (handed out by `forEach`).
    /// For row-wise element-wise work, whose results cannot depend on how rows are grouped.
    func forEachRowRange(_ rows: Int, minimumRows: Int = 128, _ body: (Range<Int>) -> Void) {
        let pieces = count <= 1 ? 1 : min(count * 4, rows / minimumRows)
        if pieces <= 1 {
            body(0..<rows)
            return
        }
        forEach(pieces) { i in body((i * rows / pieces)..<((i + 1) * rows / pieces)) }
    }
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// One result slot per parallel work item; each slot is written by exactly one worker.
final class ResultSlots<T>: @unchecked Sendable {
    private let base: UnsafeMutablePointer<T?>
    let count: Int
    init(_ count: Int) {
        self.count = count
        base = .allocate(capacity: count)
        base.initialize(repeating: nil, count: count)
    }
    deinit {
        base.deinitialize(count: count)
        base.deallocate()
    }
    subscript(i: Int) -> T? {
        get { base[i] }
        set { base[i] = newValue }
    }
}
