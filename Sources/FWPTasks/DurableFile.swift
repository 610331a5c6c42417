import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Writes `data` to `url` so that a crash leaves either the old file or the new one: write to a
/// temporary file beside it, fsync it, rename it into place, fsync the folder.
public func writeFileDurably(_ data: Data, to url: URL) throws {
    let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp")
    let fd = open(tmp.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw DurableWriteError(path: tmp.path, reason: String(cString: strerror(errno))) }
    var ok = data.withUnsafeBytes { raw -> Bool in
        var off = 0
        while off < raw.count {
            let n = write(fd, raw.baseAddress! + off, raw.count - off)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }
    ok = ok && fsync(fd) == 0
    close(fd)
    guard ok, rename(tmp.path, url.path) == 0 else {
        let why = String(cString: strerror(errno))
        unlink(tmp.path)
        throw DurableWriteError(path: url.path, reason: why)
    }
    let dfd = open(url.deletingLastPathComponent().path, O_RDONLY | O_CLOEXEC)
    if dfd >= 0 {
        fsync(dfd)
        close(dfd)
    }
}

/// A file could not be written durably.
public struct DurableWriteError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var reason: String
    public var description: String { "cannot write \(path): \(reason)" }
}
