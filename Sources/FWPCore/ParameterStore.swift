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
    public func zerosLike() -> ParameterStore {
        // New zero tensors, not `self` copied and then zeroed (a copy of every parameter first).
        var s = self
        for i in s.values.indices { s.values[i] = Tensor(shape: values[i].shape) }
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
    /// ((x + o₀) + o₁) + …, the same sums as repeated `accumulate(_:)`. Large tensors are split
    /// into ranges run by `threads` (results do not depend on the thread count).
    public mutating func accumulate(_ others: [ParameterStore], threads: ComputeThreads = ComputeThreads(1)) {
        for other in others { precondition(other.names == names, "stores differ") }
        for i in values.indices {
            let n = values[i].count
            for other in others { precondition(other.values[i].count == n, "tensor sizes differ") }
            let sources = others.map { $0.values[i] }
            values[i].withUnsafeMutablePointer { px in
                let dst = SharedPointer(px)
                threads.forEachRowRange(n, minimumRows: 8192) { range in
                    for src in sources {
                        src.withUnsafePointer { ps in
                            for j in range { dst.base[j] += ps[j] }
                        }
                    }
                }
            }
        }
    }

    /// Total number of scalars.
    public var scalarCount: Int { values.reduce(0) { $0 + $1.count } }

    /// √(Σ over all tensors of Σ x²), accumulated in Double.
    public func globalNorm() -> Double {
        values.reduce(0.0) { $0 + $1.squaredNorm() }.squareRoot()
    }
}
