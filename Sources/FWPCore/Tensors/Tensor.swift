import Foundation
import Synchronization

/// A dense, row-major Float32 tensor with value semantics.
///
/// Its elements live in a `TensorStorage` (cache-line aligned, copy on write). Hot loops reach
/// the memory through `withUnsafePointer` / `withUnsafeMutablePointer`, or, for several tensors
/// at once, through `pointer` / `mutablePointer()` inside one `borrowing(...)` scope.
public struct Tensor: Equatable, Sendable {
    /// The extent of each dimension, outermost first.
    public private(set) var shape: [Int]
    /// The elements in row-major order.
    public var storage: TensorStorage

    /// A tensor of the given shape filled with `value`.
    public init(shape: [Int], repeating value: Float = 0) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative extent in shape \(shape)")
        self.shape = shape
        self.storage = TensorStorage(repeating: value, count: shape.reduce(1, *))
    }

    /// A tensor whose elements are not initialised, for outputs that are written in full before
    /// they are read (a GEMM with beta 0, a row-wise map), so that no pass zero-fills them first.
    init(uninitializedShape shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative extent in shape \(shape)")
        self.shape = shape
        self.storage = TensorStorage(uninitializedCount: shape.reduce(1, *))
    }

    /// A tensor of the given shape over `storage`, whose count must match the shape.
    public init(shape: [Int], storage: [Float]) {
        precondition(shape.reduce(1, *) == storage.count, "shape \(shape) does not hold \(storage.count) elements")
        self.shape = shape
        self.storage = TensorStorage(storage)
    }

    /// A tensor of the given shape over `storage` (shared until either side writes).
    public init(shape: [Int], storage: TensorStorage) {
        precondition(shape.reduce(1, *) == storage.count, "shape \(shape) does not hold \(storage.count) elements")
        self.shape = shape
        self.storage = storage
    }

    /// The elements as an array (a copy).
    public var elements: [Float] { Array(storage) }

    /// The number of elements.
    @inlinable public var count: Int { storage.count }

    /// The number of dimensions.
    public var rank: Int { shape.count }

    /// Rows of a rank-2 tensor (or the product of all leading dimensions).
    public var rows: Int { shape.dropLast().reduce(1, *) }

    /// Columns of a rank-2 tensor (the last dimension).
    public var columns: Int { shape.last ?? 1 }

    /// The same elements viewed with another shape of the same size.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        Tensor(shape: newShape, storage: storage)
    }

    /// Element access by flat index.
    @inlinable public subscript(index: Int) -> Float {
        get { storage[index] }
        set { storage[index] = newValue }
    }

    /// Element access of a rank-2 tensor.
    public subscript(row: Int, column: Int) -> Float {
        get { storage[row * columns + column] }
        set { storage[row * columns + column] = newValue }
    }

    /// Sets every element to zero, keeping the allocation.
    public mutating func zero() {
        storage.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
    }

    /// Calls `body` with a pointer to the elements.
    @inlinable public func withUnsafePointer<R>(_ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        try withExtendedLifetime(storage.buffer) { try body(storage.buffer.base) }
    }

    /// Calls `body` with a mutable pointer to the elements.
    @inlinable public mutating func withUnsafeMutablePointer<R>(
        _ body: (UnsafeMutablePointer<Float>) throws -> R
    ) rethrows -> R {
        storage.makeUnique()
        return try withExtendedLifetime(storage.buffer) { try body(storage.buffer.base) }
    }

    /// The elements' address, for reading. Valid while this tensor is alive and unchanged: use
    /// it inside `borrowing(...)`, which keeps the tensors it is given alive.
    @inlinable public var pointer: UnsafePointer<Float> { UnsafePointer(storage.buffer.base) }

    /// The elements' address, for writing: gives the tensor its own storage first (copy on
    /// write). Valid while this tensor is alive and not copied: use it inside `borrowing(...)`.
    @inlinable public mutating func mutablePointer() -> UnsafeMutablePointer<Float> {
        storage.makeUnique()
        return storage.buffer.base
    }

    /// Sum of all elements, accumulated in Double.
    public func sum() -> Double {
        storage.reduce(0.0) { $0 + Double($1) }
    }

    /// Sum of squares of all elements, accumulated in Double.
    public func squaredNorm() -> Double {
        storage.reduce(0.0) { $0 + Double($1) * Double($1) }
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let head = storage.prefix(8).map { String(format: "%.4g", $0) }.joined(separator: ", ")
        return "Tensor\(shape)[\(head)\(count > 8 ? ", …" : "")]"
    }
}

/// A pointer that may cross into `DispatchQueue.concurrentPerform` workers, each of which
/// writes a disjoint region. The caller guarantees the disjointness.
@usableFromInline
struct SharedPointer: @unchecked Sendable {
    @usableFromInline let base: UnsafeMutablePointer<Float>
    @usableFromInline init(_ base: UnsafeMutablePointer<Float>) { self.base = base }
}

/// A read-only pointer that may cross into concurrent workers.
@usableFromInline
struct SharedConstPointer: @unchecked Sendable {
    @usableFromInline let base: UnsafePointer<Float>
    @usableFromInline init(_ base: UnsafePointer<Float>) { self.base = base }
}

/// Buffers the core allocates without initialising because every element is written before it
/// is read (GEMM outputs with beta 0, row-wise maps, the chunkwise saved state, softmax
/// probabilities). With poisoning on they are filled with NaN instead, so that a read before a
/// write — a wrong claim of "written in full" — turns results into NaN where a test sees it.
/// Poisoning is on when the environment sets `FWP_POISON_UNINITIALIZED=1` (the test suite does)
/// or after `setPoison(true)`; it changes no result of correct code.
public enum UninitializedMemory {
    private static let poison = Atomic<Bool>(KernelDispatch.poisonUninitialized)

    public static func setPoison(_ on: Bool) { poison.store(on, ordering: .relaxed) }
    public static var isPoisoned: Bool { poison.load(ordering: .relaxed) }

    /// n floats in an array, uninitialised (or NaN when poisoning).
    static func floats(_ n: Int) -> [Float] {
        if poison.load(ordering: .relaxed) { return [Float](repeating: .nan, count: n) }
        return [Float](unsafeUninitializedCapacity: n) { _, count in count = n }
    }
}

/// Floats at a 64-byte-aligned address (a cache line), for buffers whose rows the small GEMM
/// kernel streams: a Swift array's elements start 32 bytes into a 16-byte-aligned block, so
/// half of its 32-byte loads straddle two cache lines. The chunkwise kernel's saved states and
/// its workspace live here. Uninitialised unless `zeroed` (NaN when poisoning is on).
@usableFromInline final class AlignedFloats: @unchecked Sendable {
    @usableFromInline let base: UnsafeMutablePointer<Float>
    @usableFromInline let count: Int

    /// `count` floats whose values the caller writes next (no poisoning).
    init(count: Int, initialized: Bool) {
        precondition(count >= 0)
        self.count = count
        base = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
            .bindMemory(to: Float.self, capacity: max(count, 1))
    }

    init(count: Int, zeroed: Bool = false) {
        precondition(count >= 0)
        self.count = count
        base = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
            .bindMemory(to: Float.self, capacity: max(count, 1))
        if zeroed {
            base.initialize(repeating: 0, count: count)
        } else if UninitializedMemory.isPoisoned {
            base.initialize(repeating: .nan, count: count)
        }
    }

    deinit { UnsafeMutableRawPointer(base).deallocate() }

    static let empty = AlignedFloats(count: 0)

    /// n rounded up to a whole number of cache lines (16 floats).
    static func lineRounded(_ n: Int) -> Int { (n + 15) / 16 * 16 }
}

/// Runs `body` with `values` kept alive to its end, so that the `pointer`s and
/// `mutablePointer()`s taken from those tensors stay valid inside it: one scope for every
/// operand of a loop, instead of one nested `withUnsafe…` closure per tensor.
@inlinable func borrowing<each T, R>(_ values: repeat each T, body: () throws -> R) rethrows -> R {
    try withExtendedLifetime((repeat each values)) { try body() }
}
