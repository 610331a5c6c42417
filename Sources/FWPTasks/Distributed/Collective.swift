import FWPCore

/// The processes of one data-parallel job, as a training task sees them: its rank among `size`,
/// point-to-point byte messages and the few collectives the tasks need.
///
/// `fwp-task` implements it over MPI (FWPMPI's `Communicator`) when it runs under `mpirun`; a job
/// in one process has none (`TaskContext.collective` is nil). Every method except `rank`, `size`
/// and `send`/`receive` is collective: all ranks call it, in the same order.
public protocol Collective: AnyObject, Sendable {
    var rank: Int { get }
    var size: Int { get }
    /// Sends `bytes` to rank `destination` (blocking until the buffer may be reused).
    func send(_ bytes: UnsafeRawBufferPointer, to destination: Int, tag: Int) throws
    /// Receives exactly `bytes.count` bytes from rank `source`.
    func receive(_ bytes: UnsafeMutableRawBufferPointer, from source: Int, tag: Int) throws
    /// Copies `root`'s bytes into every rank's buffer (all pass the same size).
    func broadcast(_ bytes: UnsafeMutableRawBufferPointer, root: Int) throws
    /// The largest of the ranks' values.
    func maximum(_ value: Int64) throws -> Int64
    /// Every rank's value, in rank order.
    func allgather(_ value: UInt64) throws -> [UInt64]
    /// Ends every rank of the job at once, with `code` as the exit status.
    func abort(code: Int32) -> Never
}

extension Collective {
    /// `root`'s byte string on every rank (the others' `bytes` are ignored).
    public func broadcast(bytes: [UInt8], root: Int) throws -> [UInt8] {
        var count = UInt64(bytes.count)
        try withUnsafeMutableBytes(of: &count) { try broadcast($0, root: root) }
        var out = rank == root ? bytes : [UInt8](repeating: 0, count: Int(count))
        if count > 0 { try out.withUnsafeMutableBytes { try broadcast($0, root: root) } }
        return out
    }

    /// `root`'s value on every rank, bit for bit.
    public func broadcast(_ value: Double, root: Int) throws -> Double {
        var bits = value.bitPattern
        try withUnsafeMutableBytes(of: &bits) { try broadcast($0, root: root) }
        return Double(bitPattern: bits)
    }

    /// Sends a Double's bits.
    func send(_ value: Double, to destination: Int, tag: Int) throws {
        var bits = value.bitPattern
        try withUnsafeBytes(of: &bits) { try send($0, to: destination, tag: tag) }
    }

    /// Receives a Double's bits.
    func receiveDouble(from source: Int, tag: Int) throws -> Double {
        var bits: UInt64 = 0
        try withUnsafeMutableBytes(of: &bits) { try receive($0, from: source, tag: tag) }
        return Double(bitPattern: bits)
    }
}
