import FWPCore
import FWPMPI
import FWPTasks
import Foundation

extension Communicator: Collective {}

/// `--only reduce`, run under mpirun (`mpirun -np 2 fwp-bench --only reduce`): the time of one
/// gradient reduction across the ranks for gradients of the presets' and the paper's sizes — the
/// ordered chain that training uses (DataParallel.reduce) and MPI_Allreduce for comparison —
/// with the ranks lined up by a barrier before each; plus the latency of an 8-byte allreduce.
/// Rank 0 reports medians; bandwidth is the gradient's bytes over the time.
@MainActor func benchReduce() throws {
    guard MPI.launchedByMPI else {
        FileHandle.standardError.write(Data("fwp-bench: --only reduce runs under mpirun -np N\n".utf8))
        exit(2)
    }
    let comm = try MPI.initialize()
    let parallel = DataParallel(comm)
    // A batch of 16 sequences per rank: every rank holds shards of its own block(s), and the
    // chain passes the running total along as in training with a large batch.
    let layout = ShardLayout(batch: 16 * comm.size)
    let mine = parallel.shards(layout)!
    func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
    // The gradients of lm-bytes-small, of the paper's small shape at byte level and of
    // lm-wikitext-small (WikiText-103's 267,735-word vocabulary, untied embeddings).
    for floats in [462_600, 9_562_752, 78_305_369] {
        var store = ParameterStore()
        _ = store.add("g", Tensor(shape: [floats], storage: TensorStorage(repeating: 1e-3, count: floats)))
        var chain: [Double] = [], allreduce: [Double] = []
        for _ in 0..<(repeats + 1) {
            var parts = parallel.parts(layout, shards: mine)
            for block in layout.blocks where !block.clamped(to: mine).isEmpty {
                let part = block.clamped(to: mine)
                parts.add(part, part.map { _ in (0.5, store) }, threads: ComputeThreads(1))
            }
            try comm.barrier()
            var t = MPI.wallTime
            _ = try parallel.reduce(parts)
            chain.append(MPI.wallTime - t)
            var copy = store
            try comm.barrier()
            t = MPI.wallTime
            try copy.values[0].storage.withUnsafeMutableBufferPointer { try comm.allreduceSum($0) }
            allreduce.append(MPI.wallTime - t)
        }
        chain.removeFirst()
        allreduce.removeFirst()
        if comm.rank == 0 {
            let bytes = Double(floats * 4)
            for (name, times) in [("reduce-chain", chain), ("reduce-allreduce", allreduce)] {
                let s = median(times)
                report(
                    "\(name)-\(floats)", bytes / s / 1e9, "GB/s",
                    ["ranks": comm.size, "floats": floats, "seconds": (s * 1e6).rounded() / 1e6])
            }
        }
    }
    var latencies: [Double] = []
    for _ in 0..<1000 {
        let t = MPI.wallTime
        _ = try comm.maximum(1)
        latencies.append(MPI.wallTime - t)
    }
    if comm.rank == 0 { report("reduce-latency", median(latencies) * 1e6, "µs", ["ranks": comm.size]) }
    MPI.finalize()
}
