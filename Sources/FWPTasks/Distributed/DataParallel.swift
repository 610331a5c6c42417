import FWPCore
import Foundation

/// Data-parallel training over a `Collective`: which shards of every batch a rank computes, the
/// sum of all shards' gradients in the one fixed order, and the checks that keep ranks in step.
///
/// The batch's shards (`ShardLayout`) depend on the batch size only. Rank r takes a contiguous
/// run of them (`assignment`), so the global shard order is rank 0's shards, then rank 1's, and
/// so on. The sum follows the layout's order — each block's shards left to right, then the
/// blocks left to right — as a chain: rank 0 adds what it can, sends its running sums (the total
/// of the blocks finished so far, and the partial sum of a block it ends inside) to rank 1, which
/// continues them with its own shards and passes them on, piece by piece so that the ranks work
/// at once; the last rank broadcasts the total. Every element therefore gets exactly the
/// additions of one process, and training gives the same bits with any number of ranks
/// (docs/SCALING.md).
public final class DataParallel: @unchecked Sendable {
    public let collective: Collective
    /// Floats per message of the chain (256 KiB).
    public static let pieceSize = 1 << 16
    private var totalBuffer = ParameterStore(), partialBuffer = ParameterStore()
    /// Seconds spent in `reduce` waiting and adding (this rank's view), for progress events.
    public private(set) var reductionSeconds = 0.0

    public init(_ collective: Collective) { self.collective = collective }

    public var rank: Int { collective.rank }
    public var size: Int { collective.size }

    /// Contiguous runs of shards, one per rank, that balance the ranks' sequences: the largest
    /// run as small as it can be, each rank taking as much as that allows from the left. Nil
    /// when there are fewer shards than ranks. Depends on the sizes and the rank count only.
    public static func assignment(shardSizes: [Int], ranks: Int) -> [Range<Int>]? {
        let n = shardSizes.count
        guard ranks >= 1, n >= ranks else { return nil }
        func runs(_ limit: Int) -> [Range<Int>]? {
            var out: [Range<Int>] = [], start = 0
            for r in 0..<ranks {
                var end = start + 1, load = shardSizes[start]
                // Leave at least one shard for every later rank; the last rank takes the rest.
                while end < n - (ranks - r - 1) && (r == ranks - 1 || load + shardSizes[end] <= limit) {
                    load += shardSizes[end]
                    end += 1
                }
                if load > limit { return nil }
                out.append(start..<end)
                start = end
            }
            return start == n ? out : nil
        }
        var low = shardSizes.max()!, high = shardSizes.reduce(0, +)
        while low < high {
            let mid = (low + high) / 2
            if runs(mid) != nil { high = mid } else { low = mid + 1 }
        }
        return runs(low)
    }

    /// The shards of `layout` that this rank computes.
    public func shards(_ layout: ShardLayout) -> Range<Int>? {
        let sizes = (0..<layout.count).map { layout.sequences(of: $0).count }
        return Self.assignment(shardSizes: sizes, ranks: size)?[rank]
    }

    /// What one rank has computed of a step, folded as far as it can be without the ranks before
    /// it: the shards of a block it enters in the middle (kept one by one, to be added to the
    /// running sum that arrives), the sums of the blocks it holds whole, and the partial sum of a
    /// block it leaves in the middle.
    public struct Parts {
        let layout: ShardLayout
        let shards: Range<Int>
        var losses: [Double] = []
        var head: [ParameterStore] = []
        var blocks: [ParameterStore] = []
        var tail: ParameterStore? = nil

        /// Adds the results of `part` (this rank's shards of one block, in order).
        public mutating func add(
            _ part: Range<Int>, _ results: [(loss: Double, gradients: ParameterStore)], threads: ComputeThreads
        ) {
            losses += results.map(\.loss)
            let block = layout.blocks[layout.block(of: part.lowerBound)]
            if part.lowerBound != block.lowerBound {
                head = results.map(\.gradients)
                return
            }
            var sum = results[0].gradients
            sum.accumulate(results.dropFirst().map(\.gradients), threads: threads)
            if part.upperBound == block.upperBound { blocks.append(sum) } else { tail = sum }
        }
    }

    /// An empty set of parts for this rank's `shards` of `layout`.
    public func parts(_ layout: ShardLayout, shards: Range<Int>) -> Parts { Parts(layout: layout, shards: shards) }

    /// The whole batch's loss and gradients on every rank, from every rank's parts: the same
    /// sums, bit for bit, as one process adding all shards in the layout's order.
    public func reduce(_ parts: Parts) throws -> (loss: Double, gradients: ParameterStore) {
        let c = collective, r = c.rank, n = c.size
        let started = ContinuousClock.now
        defer { reductionSeconds += (ContinuousClock.now - started).seconds }
        let layout = parts.layout, first = parts.shards.lowerBound, last = parts.shards.upperBound - 1
        precondition(parts.losses.count == parts.shards.count, "every shard of the rank is computed")
        var loss = r == 0 ? 0.0 : try c.receiveDouble(from: r - 1, tag: 1)
        for l in parts.losses { loss += l }
        if r < n - 1 { try c.send(loss, to: r + 1, tag: 1) }

        // Which running sums arrive from rank r − 1 and which leave for rank r + 1.
        let firstBlock = layout.blocks[layout.block(of: first)]
        let totalIn = layout.block(of: first) > 0
        let partialIn = first != firstBlock.lowerBound
        let headEndsBlock = partialIn && last >= firstBlock.upperBound - 1
        let totalOut = totalIn || headEndsBlock || !parts.blocks.isEmpty
        let partialOut = (partialIn && !headEndsBlock) || parts.tail != nil
        let template = parts.head.first ?? parts.blocks.first ?? parts.tail!
        func buffer(_ b: inout ParameterStore) -> ParameterStore {
            if b.names != template.names || b.values.map(\.count) != template.values.map(\.count) {
                b = template.zerosLike()
            }
            let out = b
            b = ParameterStore()  // so that writing into the returned store does not copy it
            return out
        }
        var total = buffer(&totalBuffer), partial = buffer(&partialBuffer)
        for t in template.values.indices {
            let head = parts.head.map { $0.values[t].storage }, blocks = parts.blocks.map { $0.values[t].storage }
            let tail = parts.tail?.values[t].storage
            try total.values[t].storage.withUnsafeMutableBufferPointer { tot in
                try partial.values[t].storage.withUnsafeMutableBufferPointer { par in
                    try forEachPiece(tot.count) { range in
                        if totalIn { try c.receive(Self.raw(tot, range), from: r - 1, tag: 2) }
                        if partialIn { try c.receive(Self.raw(par, range), from: r - 1, tag: 3) }
                        var haveTotal = totalIn
                        for g in head { Self.add(g, into: par, range) }
                        if headEndsBlock {
                            if haveTotal { Self.add(par, into: tot, range) } else { Self.copy(par, into: tot, range) }
                            haveTotal = true
                        }
                        for b in blocks {
                            if haveTotal { Self.add(b, into: tot, range) } else { Self.copy(b, into: tot, range) }
                            haveTotal = true
                        }
                        if let tail { Self.copy(tail, into: par, range) }
                        if r < n - 1 {
                            if totalOut { try c.send(Self.raw(UnsafeBufferPointer(tot), range), to: r + 1, tag: 2) }
                            if partialOut { try c.send(Self.raw(UnsafeBufferPointer(par), range), to: r + 1, tag: 3) }
                        }
                    }
                }
            }
        }
        if n > 1 {
            loss = try c.broadcast(loss, root: n - 1)
            for t in total.values.indices {
                try total.values[t].storage.withUnsafeMutableBufferPointer { all in
                    try c.broadcast(UnsafeMutableRawBufferPointer(all), root: n - 1)
                }
            }
        }
        partialBuffer = partial
        totalBuffer = total
        return (loss, total)
    }

    static func raw(_ b: UnsafeMutableBufferPointer<Float>, _ r: Range<Int>) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: b[r]))
    }
    static func raw(_ b: UnsafeBufferPointer<Float>, _ r: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: b[r]))
    }
    static func add(_ s: TensorStorage, into d: UnsafeMutableBufferPointer<Float>, _ r: Range<Int>) {
        s.withUnsafeBufferPointer { s in for j in r { d[j] += s[j] } }
    }
    static func add(_ s: UnsafeMutableBufferPointer<Float>, into d: UnsafeMutableBufferPointer<Float>, _ r: Range<Int>)
    {
        for j in r { d[j] += s[j] }
    }
    static func copy(_ s: TensorStorage, into d: UnsafeMutableBufferPointer<Float>, _ r: Range<Int>) {
        s.withUnsafeBufferPointer { s in for j in r { d[j] = s[j] } }
    }
    static func copy(_ s: UnsafeMutableBufferPointer<Float>, into d: UnsafeMutableBufferPointer<Float>, _ r: Range<Int>)
    {
        for j in r { d[j] = s[j] }
    }

    /// Throws unless every rank holds the same bits in `store` (compared by a 64-bit hash).
    public func checkIdentical(_ store: ParameterStore, _ what: String) throws {
        let hashes = try collective.allgather(Self.hash(store))
        if let bad = hashes.firstIndex(where: { $0 != hashes[0] }) {
            throw TaskError.failed(
                code: .internal,
                message: "rank \(bad) holds different \(what) from rank 0 (hash \(hashes[bad]) ≠ \(hashes[0]))")
        }
    }

    /// FNV-1a over the tensors' bytes.
    public static func hash(_ store: ParameterStore) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for v in store.values {
            v.storage.withUnsafeBytes { bytes in
                for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            }
        }
        return h
    }

    /// The step's stop decision, agreed by all ranks: the largest of their `flag`s.
    public func agree(_ flag: Int64) throws -> Int64 { try collective.maximum(flag) }

    /// Rank 0's `state` with every rank's own rows (the sequences of its shards) filled in from
    /// that rank; other ranks send theirs and get nil. Only the fast-weight state (weights and
    /// normaliser) is carried across segments.
    public func gatherState(_ state: ModelState, layout: ShardLayout) throws -> ModelState? {
        let c = collective, r = c.rank
        let bounds = layout.bounds
        let sizes = (0..<layout.count).map { layout.sequences(of: $0).count }
        guard let runs = Self.assignment(shardSizes: sizes, ranks: c.size) else { return state }
        let rows = runs.map { bounds[$0.lowerBound]..<bounds[$0.upperBound] }
        var s = state
        for l in s.layers.indices {
            for keyPath in [
                \AttentionState.weights, \AttentionState.normalizer, \AttentionState.convolution,
                \AttentionState.recurrent,
            ] {
                let count = s.layers[l][keyPath: keyPath].count
                if count == 0 { continue }
                let per = count / state.batch
                if r == 0 {
                    for other in 1..<c.size {
                        let range = (rows[other].lowerBound * per)..<(rows[other].upperBound * per)
                        try s.layers[l][keyPath: keyPath].withUnsafeMutableBufferPointer { all in
                            try c.receive(
                                UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: all[range])),
                                from: other, tag: 3)
                        }
                    }
                } else {
                    let range = (rows[r].lowerBound * per)..<(rows[r].upperBound * per)
                    try s.layers[l][keyPath: keyPath].withUnsafeBufferPointer { all in
                        try c.send(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: all[range])), to: 0, tag: 3)
                    }
                }
            }
        }
        return r == 0 ? s : nil
    }

    /// The job's data-parallel group for a task with `ranks`: nil for one rank; throws unless
    /// the context runs in a group of exactly that many processes.
    public static func forTask(ranks: Int, context: TaskContext) throws -> DataParallel? {
        let group = context.collective
        let size = group?.size ?? 1
        guard size == ranks else {
            throw TaskError.failed(
                code: .invalidParameter,
                message: ranks > 1 && group == nil
                    ? "ranks = \(ranks) needs \(ranks) processes started by mpirun: fwp-task run ... --ranks \(ranks), or submit to fwpd"
                    : "ranks = \(ranks), but the job was started as \(size) processes")
        }
        return size > 1 ? DataParallel(group!) : nil
    }

    /// The checkpoint to resume from: rank 0's, sent to every rank (nil when there is none).
    public static func latestCheckpoint(_ context: TaskContext, _ parallel: DataParallel?) throws -> Data? {
        guard let parallel else { return try context.latestCheckpoint() }
        let mine = parallel.rank == 0 ? try context.latestCheckpoint() : nil
        let bytes = try parallel.collective.broadcast(bytes: mine.map { [UInt8]($0) } ?? [], root: 0)
        return bytes.isEmpty ? nil : Data(bytes)
    }

    /// Whether to stop before the next step, agreed by all ranks: nil to go on, otherwise whether
    /// to write a checkpoint first (when any rank was asked to pause rather than cancel).
    public static func stopRequest(_ context: TaskContext, _ parallel: DataParallel?) throws -> Bool? {
        let flag: Int64 = context.isCancelled ? (context.checkpointBeforeStopping ? 2 : 1) : 0
        let agreed = try parallel?.agree(flag) ?? flag
        return agreed == 0 ? nil : agreed == 2
    }

    private func forEachPiece(_ count: Int, _ body: (Range<Int>) throws -> Void) throws {
        var start = 0
        while start < count {
            let end = min(count, start + Self.pieceSize)
            try body(start..<end)
            start = end
        }
    }
}

extension Duration {
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
