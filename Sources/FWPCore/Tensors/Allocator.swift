#if os(Linux)
    // glibc's mallopt(3); <malloc.h> is not part of the Glibc module.
    @_silgen_name("mallopt") private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
    private let M_TRIM_THRESHOLD: Int32 = -1
    private let M_MMAP_THRESHOLD: Int32 = -3
#endif

/// Process-wide allocator tuning for training loops.
///
/// Every training step allocates and frees the same large activation buffers (megabytes each).
/// glibc serves blocks above its mmap threshold with fresh mappings and returns them to the
/// kernel on free, so each step paid for zero-filling new pages: a profile of the LM step showed
/// about a fifth of the time in page faults. Raising the mmap threshold to its maximum (32 MiB)
/// and the trim threshold keeps freed blocks in the heap for the next step. Peak memory is
/// unchanged (it is set by the largest live set); freed memory stays with the process.
public enum Allocator {
    private static let configured: Bool = {
        #if os(Linux)
            _ = glibcMallopt(M_MMAP_THRESHOLD, 32 << 20)
            _ = glibcMallopt(M_TRIM_THRESHOLD, 512 << 20)
            return true
        #else
            return false
        #endif
    }()

    /// Applies the tuning once per process (idempotent, cheap to call).
    public static func configureForTraining() { _ = configured }
}
