import FWPCore
import Foundation

/// Data-parallel training over a `Collective`: which shards of every batch a rank computes, the
/// sum of all shards' gradients in the one fixed order, and the checks that keep ranks in step.
///
/// The batch's shards (`LanguageModel.shardBounds`) depend on the batch size only. Rank r takes a
/// contiguous run of them (`assignment`), so the global shard order is rank 0's shards, then rank
/// 1's, and so on. `orderedSum` adds the shards' gradients along that order as a chain: rank 0
/// folds its own, sends the running sum to rank 1, which adds its shards one by one and passes it
/// on, piece by piece so that the ranks work at once; the last rank broadcasts the total. Every
/// element is therefore ((g₀ + g₁) + g₂) + … exactly as in one process, and training gives the
/// same bits with any number of ranks (docs/SCALING.md).
public final class DataParallel: @unchecked Sendable {
    public let collective: Collective
    /// Floats per message of the chain (256 KiB).
    public static let pieceSize = 1 << 16
    private var buffer = ParameterStore()
    /// Seconds spent in `orderedSum` waiting and adding (rank 0's view), for progress events.
    public private(set) var reductionSeconds = 0.0

    public init(_ collective: Collective) { self.collective = collective }

    public var rank: Int { collective.rank }
    public var size: Int { collective.size }

    /// Contiguous runs of shards, one per rank, that balance the ranks' sequences (the largest
    /// run as small as it can be; among equals the first in order). Nil when there are fewer
    /// shards than ranks. Depends on the sizes and the rank count only.
    public static func assignment(shardSizes: [Int], ranks: Int) -> [Range<Int>]? {
        let n = shardSizes.count
        guard ranks >= 1, n >= ranks else { return nil }
        var best: (load: Int, cuts: [Int])? = nil
        func search(_ start: Int, _ left: Int, _ cuts: [Int], _ load: Int) {
            if left == 1 {
                let total = max(load, shardSizes[start...].reduce(0, +))
                if best == nil || total < best!.load { best = (total, cuts + [n]) }
                return
            }
            for end in (start + 1)...(n - left + 1) {
                search(end, left - 1, cuts + [end], max(load, shardSizes[start..<end].reduce(0, +)))
            }
        }
        search(0, ranks, [0], 0)
        let cuts = best!.cuts
        return (0..<ranks).map { cuts[$0]..<cuts[$0 + 1] }
    }

    /// The shards of a batch with bounds `bounds` that this rank computes.
    public func shards(bounds: [Int]) -> Range<Int>? {
        let sizes = zip(bounds.dropFirst(), bounds).map { $0 - $1 }
        return Self.assignment(shardSizes: sizes, ranks: size)?[rank]
    }

    /// The whole batch's loss and gradients on every rank, from this rank's shards' `parts` (in
    /// shard order): the same sums, bit for bit, as one process adding all shards in order.
    public func orderedSum(_ parts: [(loss: Double, gradients: ParameterStore)], threads: ComputeThreads) throws
        -> (loss: Double, gradients: ParameterStore)
    {
        precondition(!parts.isEmpty, "a rank computes at least one shard")
        let c = collective, r = c.rank, n = c.size
        let started = ContinuousClock.now
        defer { reductionSeconds += (ContinuousClock.now - started).seconds }
        var loss = r == 0 ? 0.0 : try c.receiveDouble(from: r - 1, tag: 1)
        for p in parts { loss += p.loss }
        if r < n - 1 { try c.send(loss, to: r + 1, tag: 1) }
        var total: ParameterStore
        if r == 0 {
            total = parts[0].gradients
            total.accumulate(parts.dropFirst().map(\.gradients), threads: threads)
            if n > 1 {
                for t in total.values.indices {
                    try total.values[t].storage.withUnsafeBufferPointer { all in
                        try forEachPiece(all.count) { range in
                            try c.send(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: all[range])), to: 1, tag: 2)
                        }
                    }
                }
            }
        } else {
            let like = parts[0].gradients
            if buffer.names != like.names || buffer.values.map(\.count) != like.values.map(\.count) {
                buffer = like.zerosLike()
            }
            total = buffer
            buffer = ParameterStore()  // so that writing into `total` does not copy it
            for t in total.values.indices {
                let sources = parts.map { $0.gradients.values[t].storage }
                try total.values[t].storage.withUnsafeMutableBufferPointer { all in
                    try forEachPiece(all.count) { range in
                        try c.receive(
                            UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: all[range])),
                            from: r - 1, tag: 2)
                        for s in sources {
                            s.withUnsafeBufferPointer { s in
                                for j in range { all[j] += s[j] }
                            }
                        }
                        if r < n - 1 {
                            try c.send(
                                UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: all[range])), to: r + 1, tag: 2)
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
        if r != 0 { buffer = total }
        return (loss, total)
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
    public func gatherState(_ state: ModelState, bounds: [Int]) throws -> ModelState? {
        let c = collective, r = c.rank
        let sizes = zip(bounds.dropFirst(), bounds).map { $0 - $1 }
        guard let runs = Self.assignment(shardSizes: sizes, ranks: c.size) else { return state }
        let rows = runs.map { bounds[$0.lowerBound]..<bounds[$0.upperBound] }
        var s = state
        for l in s.layers.indices {
            for keyPath in [\AttentionState.weights, \AttentionState.normalizer] {
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
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
