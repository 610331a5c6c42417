/// A tensor's elements: Float32 in one allocation aligned to a cache line (64 bytes), shared
/// between copies until one of them writes (copy on write), like an array's.
///
/// Kernels read rows straight from it: aligned rows keep vector loads within cache lines. It is
/// a collection of floats, so element access, slicing and comparison read as they do for `[Float]`.
public struct TensorStorage: RandomAccessCollection, MutableCollection, Equatable, Sendable, ExpressibleByArrayLiteral {
    @usableFromInline var buffer: AlignedFloats

    /// `count` zeros (or copies of `value`).
    public init(repeating value: Float = 0, count: Int) {
        buffer = AlignedFloats(count: count, zeroed: value == 0 && value.sign == .plus)
        if !(value == 0 && value.sign == .plus) { buffer.base.update(repeating: value, count: count) }
    }

    /// `count` uninitialised floats (NaN while `UninitializedMemory` poisons).
    init(uninitializedCount count: Int) { buffer = AlignedFloats(count: count) }

    /// A copy of `elements`.
    public init<S: Sequence>(_ elements: S) where S.Element == Float {
        let array = Array(elements)
        buffer = AlignedFloats(count: array.count)
        array.withUnsafeBufferPointer { buffer.base.update(from: $0.baseAddress!, count: array.count) }
    }

    public init(arrayLiteral elements: Float...) { self.init(elements) }

    @inlinable public var startIndex: Int { 0 }
    @inlinable public var endIndex: Int { buffer.count }

    @inlinable public subscript(index: Int) -> Float {
        get {
            precondition(index >= 0 && index < buffer.count, "index \(index) out of range 0..<\(buffer.count)")
            return buffer.base[index]
        }
        set {
            precondition(index >= 0 && index < buffer.count, "index \(index) out of range 0..<\(buffer.count)")
            makeUnique()
            buffer.base[index] = newValue
        }
    }

    /// Gives this value its own buffer before a write, if another copy shares it.
    @inlinable mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&buffer) { buffer = buffer.copy() }
    }

    /// The elements' address, for reading; valid inside `borrowing(...)` of this storage.
    @inlinable public var pointer: UnsafePointer<Float> { UnsafePointer(buffer.base) }

    /// The elements' address, for writing, after giving this value its own buffer; valid inside
    /// `borrowing(...)` of this storage while it is not copied.
    @inlinable public mutating func mutablePointer() -> UnsafeMutablePointer<Float> {
        makeUnique()
        return buffer.base
    }

    /// Calls `body` with the elements' memory.
    @inlinable public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try withExtendedLifetime(buffer) { try body(UnsafeBufferPointer(start: buffer.base, count: buffer.count)) }
    }

    /// Calls `body` with the elements' memory, to write.
    @inlinable public mutating func withUnsafeMutableBufferPointer<R>(
        _ body: (UnsafeMutableBufferPointer<Float>) throws -> R
    ) rethrows -> R {
        makeUnique()
        return try withExtendedLifetime(buffer) {
            try body(UnsafeMutableBufferPointer(start: buffer.base, count: buffer.count))
        }
    }

    /// Calls `body` with the elements' bytes (little-endian Float32 on the machines fwp runs on).
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBufferPointer { try body(UnsafeRawBufferPointer($0)) }
    }

    /// Element-wise equality, as for `[Float]` (NaN equals nothing, −0 equals 0).
    public static func == (a: TensorStorage, b: TensorStorage) -> Bool {
        a.count == b.count
            && a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in pa.elementsEqual(pb) } }
    }
}

extension AlignedFloats {
    /// A new buffer holding the same floats.
    @usableFromInline func copy() -> AlignedFloats {
        let c = AlignedFloats(count: count, initialized: false)
        c.base.update(from: base, count: count)
        return c
    }
}
