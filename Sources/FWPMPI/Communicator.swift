import CMPI

#if canImport(Glibc)
    import Glibc
#endif

private func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

/// An MPI call that failed: the function, MPI's error code and MPI's own error string.
public struct MPIError: Error, CustomStringConvertible, Sendable {
    public let function: String
    public let code: Int32
    public let message: String

    public var description: String { "\(function) failed: \(message) (MPI error \(code))" }
}

/// MPI for one process of a parallel job: start-up, the world communicator, and the few
/// collectives fwp needs. Calls are made from one thread at a time (MPI_THREAD_FUNNELED); the
/// threads a rank computes with never call MPI.
public enum MPI {
    /// True when this process was started by an MPI launcher (mpirun, or srun with PMIx), judged
    /// from the environment the launcher sets; `MPI.initialize` is then expected.
    public static var launchedByMPI: Bool {
        environment("OMPI_COMM_WORLD_SIZE") != nil || environment("PMIX_RANK") != nil
    }

    /// The number of ranks the launcher started, from its environment (nil when not launched by one).
    public static var launchedSize: Int? {
        (environment("OMPI_COMM_WORLD_SIZE") ?? environment("PMIX_SIZE")).flatMap { Int($0) }
    }

    /// Initialises MPI (once per process) and returns the world communicator. Errors are returned
    /// to the caller, not fatal.
    public static func initialize() throws -> Communicator {
        var initialized: Int32 = 0
        MPI_Initialized(&initialized)
        if initialized == 0 {
            var provided: Int32 = 0
            let rc = MPI_Init_thread(nil, nil, fwp_mpi_thread_funneled(), &provided)
            guard rc == fwp_mpi_success() else { throw error(rc, "MPI_Init_thread") }
        }
        let world = fwp_mpi_comm_world()!
        try check(MPI_Comm_set_errhandler(world, fwp_mpi_errors_return()), "MPI_Comm_set_errhandler")
        return try Communicator(world)
    }

    /// Ends MPI in this process (after the last collective).
    public static func finalize() {
        var finalized: Int32 = 0
        MPI_Finalized(&finalized)
        if finalized == 0 { MPI_Finalize() }
    }

    /// Seconds on MPI's wall clock.
    public static var wallTime: Double { MPI_Wtime() }

    static func error(_ code: Int32, _ function: String) -> MPIError {
        var buffer = [CChar](repeating: 0, count: Int(fwp_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        let message: String
        if MPI_Error_string(code, &buffer, &length) == fwp_mpi_success() {
            message = String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        } else {
            message = "unknown MPI error"
        }
        return MPIError(function: function, code: code, message: message)
    }

    @inline(__always)
    static func check(_ rc: Int32, _ function: String) throws {
        if rc != fwp_mpi_success() { throw error(rc, function) }
    }
}

/// A communicator: this process's rank among `size`, point-to-point messages and collectives.
public final class Communicator: @unchecked Sendable {
    let comm: MPI_Comm
    public let rank: Int
    public let size: Int

    init(_ comm: MPI_Comm) throws {
        self.comm = comm
        var r: Int32 = 0, s: Int32 = 0
        try MPI.check(MPI_Comm_rank(comm, &r), "MPI_Comm_rank")
        try MPI.check(MPI_Comm_size(comm, &s), "MPI_Comm_size")
        rank = Int(r)
        size = Int(s)
    }

    /// Waits until every rank has reached the barrier.
    public func barrier() throws { try MPI.check(MPI_Barrier(comm), "MPI_Barrier") }

    /// Copies `root`'s bytes into every rank's `buffer` (all ranks pass buffers of the same size).
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        try forEachPiece(buffer.count) { offset, count in
            try MPI.check(
                MPI_Bcast(buffer.baseAddress! + offset, Int32(count), fwp_mpi_byte(), Int32(root), comm), "MPI_Bcast")
        }
    }

    /// `root`'s byte string on every rank (the others' `bytes` are ignored; lengths may differ).
    public func broadcast(bytes: [UInt8], root: Int) throws -> [UInt8] {
        var count = UInt64(bytes.count)
        try withUnsafeMutableBytes(of: &count) { try broadcast($0, root: root) }
        var out = rank == root ? bytes : [UInt8](repeating: 0, count: Int(count))
        try out.withUnsafeMutableBytes { try broadcast($0, root: root) }
        return out
    }

    /// Sums `buffer` element-wise over all ranks in place (MPI_Allreduce with MPI_SUM). The order
    /// of the additions is MPI's choice.
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        try forEachPiece(buffer.count) { offset, count in
            try MPI.check(
                MPI_Allreduce(
                    fwp_mpi_in_place(), buffer.baseAddress! + offset, Int32(count), fwp_mpi_float(), fwp_mpi_sum(),
                    comm),
                "MPI_Allreduce")
        }
    }

    /// The largest of every rank's `value`.
    public func maximum(_ value: Int64) throws -> Int64 {
        var v = value, out: Int64 = 0
        try MPI.check(MPI_Allreduce(&v, &out, 1, fwp_mpi_long_long(), fwp_mpi_max(), comm), "MPI_Allreduce")
        return out
    }

    /// Every rank's `value`, in rank order.
    public func allgather(_ value: UInt64) throws -> [UInt64] {
        var v = value
        var out = [UInt64](repeating: 0, count: size)
        try out.withUnsafeMutableBufferPointer { o in
            try MPI.check(
                MPI_Allgather(
                    &v, 1, fwp_mpi_unsigned_long_long(), o.baseAddress, 1, fwp_mpi_unsigned_long_long(), comm),
                "MPI_Allgather")
        }
        return out
    }

    /// Sends `buffer`'s bytes to `destination` (blocking until the buffer may be reused).
    public func send(_ buffer: UnsafeRawBufferPointer, to destination: Int, tag: Int = 0) throws {
        try forEachPiece(buffer.count) { offset, count in
            try MPI.check(
                MPI_Send(
                    buffer.baseAddress! + offset, Int32(count), fwp_mpi_byte(), Int32(destination), Int32(tag), comm),
                "MPI_Send")
        }
    }

    /// Receives exactly `buffer.count` bytes from `source` (sent by `send` with the same size and tag).
    public func receive(_ buffer: UnsafeMutableRawBufferPointer, from source: Int, tag: Int = 0) throws {
        try forEachPiece(buffer.count) { offset, count in
            try MPI.check(
                MPI_Recv(
                    buffer.baseAddress! + offset, Int32(count), fwp_mpi_byte(), Int32(source), Int32(tag), comm,
                    fwp_mpi_status_ignore()),
                "MPI_Recv")
        }
    }

    /// Ends every rank of the job (MPI_Abort); the launcher reports `code` as the exit status.
    public func abort(code: Int32) -> Never {
        MPI_Abort(comm, code)
        fatalError("MPI_Abort returned")
    }

    /// MPI counts are 32-bit: larger buffers go in pieces of at most 2^30 elements (none when empty).
    private func forEachPiece(_ total: Int, _ body: (Int, Int) throws -> Void) throws {
        var offset = 0
        while offset < total {
            let n = min(total - offset, 1 << 30)
            try body(offset, n)
            offset += n
        }
    }
}
