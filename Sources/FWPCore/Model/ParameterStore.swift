/// Named tensors in a fixed order: a model's parameters, its gradients, or optimiser moments.
///
/// Layers hold indices into a store rather than tensors, so that the optimiser and the
/// checkpoint code see every parameter by its PyTorch-style name.
public struct ParameterStore: Sendable, Equatable {
    /// Names in registration order.
    public private(set) var names: [String] = []
    /// Tensors, parallel to `names`.
    public var values: [Tensor] = []
    private var indexByName: [String: Int] = [:]

    /// An empty store.
    public init() {}

    /// Registers a tensor under a new name and returns its index.
    @discardableResult
    public mutating func add(_ name: String, _ tensor: Tensor) -> Int {
        precondition(indexByName[name] == nil, "duplicate parameter name \(name)")
        indexByName[name] = values.count
        names.append(name)
        values.append(tensor)
        return values.count - 1
    }

    /// The index of `name`, if registered.
    public func index(of name: String) -> Int? { indexByName[name] }

    /// The tensor called `name`, if registered.
    public subscript(name: String) -> Tensor? {
        indexByName[name].map { values[$0] }
    }

    /// A store with the same names and shapes, all zeros.
    public func zerosLike() -> ParameterStore { zerosLike(leavingUninitialized: []) }

    /// The same names and shapes, zeros except the tensors in `skip`, left uninitialised (NaN
    /// when poisoning is on) for a caller that writes every element of them first.
    func zerosLike(leavingUninitialized skip: Set<Int>) -> ParameterStore {
        // New tensors, not `self` copied and then overwritten (a copy of every parameter first).
        var s = self
        for i in s.values.indices {
            s.values[i] =
                skip.contains(i) ? Tensor(uninitializedShape: values[i].shape) : Tensor(shape: values[i].shape)
        }
        return s
    }

    /// Sets every tensor to zero in place.
    public mutating func zeroAll() {
        for i in values.indices { values[i].zero() }
    }

    /// Adds `other` (same names and shapes) element-wise.
    public mutating func accumulate(_ other: ParameterStore) {
        accumulate([other])
    }

    /// Adds each of `others` (same names and shapes) element-wise, in order: every element is
    /// ((x + o₀) + o₁) + …, the same sums as repeated `accumulate(_:)`. The tensors are cut into
    /// fixed pieces (`pieces`) run by `threads` in one parallel pass (results do not depend on the
    /// thread count).
    public mutating func accumulate(_ others: [ParameterStore], threads: ComputeThreads = ComputeThreads(1)) {
        for other in others {
            precondition(other.names == names, "stores differ")
            for i in values.indices { precondition(other.values[i].count == values[i].count, "tensor sizes differ") }
        }
        let pieces = self.pieces()
        withBaseAddresses { dst in
            ParameterStore.withBaseAddresses(of: others) { sources in
                threads.forEach(pieces.count) { p in
                    let (t, range) = pieces[p]
                    let d = dst[t]!.base
                    for source in sources {
                        let s = source[t]!.base
                        for j in range { d[j] += s[j] }
                    }
                }
            }
        }
    }

    /// Element ranges of at most `size` that cover every tensor, in order: the unit of the
    /// parallel element-wise passes over a whole store (one pass for all tensors instead of one
    /// per tensor). They depend on the shapes only.
    func pieces(size: Int = 1 << 14) -> [(tensor: Int, range: Range<Int>)] {
        var out: [(tensor: Int, range: Range<Int>)] = []
        for (t, v) in values.enumerated() {
            var start = 0
            while start < v.count {
                out.append((t, start..<min(v.count, start + size)))
                start += size
            }
        }
        return out
    }

    /// Calls `body` with the address of every tensor's elements (nil for empty tensors), valid
    /// only during the call.
    mutating func withBaseAddresses<R>(_ body: ([SharedPointer?]) -> R) -> R {
        values.withUnsafeMutableBufferPointer { tensors in
            ParameterStore.nestAddresses(
                tensors.count, isEmpty: { tensors[$0].count == 0 },
                enter: { i, next in tensors[i].withUnsafeMutablePointer { next(SharedPointer($0)) } }, body)
        }
    }

    /// Read-only `withBaseAddresses`.
    func withBaseAddresses<R>(_ body: ([SharedConstPointer?]) -> R) -> R {
        values.withUnsafeBufferPointer { tensors in
            ParameterStore.nestAddresses(
                tensors.count, isEmpty: { tensors[$0].count == 0 },
                enter: { i, next in tensors[i].withUnsafePointer { next(SharedConstPointer($0)) } }, body)
        }
    }

    /// Enters item 0's pointer scope, within it item 1's, and so on (`enter(i, next)` holds item
    /// i's pointer while `next` runs), then calls body with all of them (nil for empty items).
    private static func nestAddresses<P, R>(
        _ count: Int, isEmpty: (Int) -> Bool, enter: (Int, (P) -> R) -> R, _ body: ([P?]) -> R
    ) -> R {
        // `enter` runs within itself (item i's call holds item i + 1's); as an escaping closure
        // type that is allowed. It still does not outlive this call.
        withoutActuallyEscaping(enter) { enter in
            var addresses: [P?] = []
            addresses.reserveCapacity(count)
            func nest(_ i: Int) -> R {
                if i == count { return body(addresses) }
                if isEmpty(i) {
                    addresses.append(nil)
                    return nest(i + 1)
                }
                return enter(i) { p in
                    addresses.append(p)
                    return nest(i + 1)
                }
            }
            return nest(0)
        }
    }

    /// `withBaseAddresses` of several stores at once: body gets one address list per store.
    static func withBaseAddresses<R>(of stores: [ParameterStore], _ body: ([[SharedConstPointer?]]) -> R) -> R {
        nestAddresses(
            stores.count, isEmpty: { _ in false },
            enter: { s, next in stores[s].withBaseAddresses { (addresses: [SharedConstPointer?]) in next(addresses) } }
        ) { lists in body(lists.map { $0! }) }
    }

    /// Total number of scalars.
    public var scalarCount: Int { values.reduce(0) { $0 + $1.count } }

    /// √(Σ over all tensors of Σ x²), accumulated in Double; each tensor's sum is taken by one of
    /// `threads` and the sums are added in tensor order, so the result does not depend on them.
    public func globalNorm(threads: ComputeThreads = ComputeThreads(1)) -> Double {
        let sums = ResultSlots<Double>(values.count)
        let tensors = values
        threads.forEach(tensors.count) { i in sums[i] = tensors[i].squaredNorm() }
        return (0..<values.count).reduce(0.0) { $0 + sums[$1]! }.squareRoot()
    }
}
