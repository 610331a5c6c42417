import FWPCore
import FWPProtocol
import Foundation

/// The paper's synthetic retrieval experiment (section 6.1), settings 1 (capacity) and 2 (updates).
public struct RetrievalTask: TaskModule {
    public init() {}

    public let name = "retrieval"
    public let summary = """
        Associative retrieval (paper section 6.1): write L key/value pairs into a fast-weight memory, \
        query one key, output its latest one-hot value. Trains with Adam on loss ½‖v* − ŷ‖², evaluates every \
        eval_every steps on eval_sequences fresh sequences queried at every key, and stops at target_loss, after \
        patience evaluations without a new best, or at max_steps. Result: best eval loss and accuracy, steps, \
        reason for stopping.
        """

    public let parameters: [ParameterSpec] = [
        ParameterSpec("keys", .integer, "S: distinct keys and distinct values", default: 20, minimum: 2, maximum: 2000),
        ParameterSpec(
            "setting", .integer, "1: L = S, keys without replacement; 2: L = 2S, with replacement", default: 1,
            minimum: 1, maximum: 2),
        ParameterSpec("attention", .string, "linear (ELU+1), dpfp-ν, favor-m or softmax", default: "dpfp-1"),
        ParameterSpec(
            "rule", .string, "fast-weight update rule (the delta rules sum-normalise keys and query)", default: "sum",
            choices: ["sum", "delta", "gated-delta"]),
        ParameterSpec(
            "model", .string,
            "memory (the paper's: one memory written with the one-hot values, read once) or one attention layer "
                + "over the pairs and a query step, its output read out to the values: layer (the language model's "
                + "fast-weight or softmax layer), or a recurrent FWP layer: delta-rnn, delta-lstm, rdn",
            default: "memory", choices: ["memory", "layer", "delta-rnn", "delta-lstm", "rdn"]),
        ParameterSpec(
            "key_size", .integer, "size of keys and queries before the feature map", default: 64, minimum: 1,
            maximum: 4096),
        ParameterSpec("batch", .integer, "sequences per training step", default: 32, minimum: 1, maximum: 4096),
        ParameterSpec("lr", .number, "Adam learning rate", default: 1e-3, minimum: 1e-7, maximum: 1),
        ParameterSpec(
            "max_steps", .integer, "training steps at most", default: 100_000, minimum: 1, maximum: 10_000_000),
        ParameterSpec("eval_every", .integer, "steps between evaluations (and checkpoints)", default: 100, minimum: 1),
        ParameterSpec(
            "eval_sequences", .integer, "fresh sequences per evaluation, each queried at every key", default: 20,
            minimum: 1, maximum: 10_000),
        ParameterSpec(
            "patience", .integer,
            "stop after this many evaluations in a row without a new best (the reference: 11, its strike > 10)",
            default: 11, minimum: 1),
        ParameterSpec(
            "target_loss", .number, "stop once the eval loss is at or below this", default: 0.001, minimum: 0),
        ParameterSpec(
            "seed", .integer, "seed of initialisation and data", default: 1, minimum: 0, maximum: 9_007_199_254_740_991),
        ParameterSpec(
            "initialization", .string,
            "reference (W_k, W_q ±1/√d_key, Xavier-uniform for softmax, biases ±1/√fan_in) or uniform (all ±1/√d_key)",
            default: "reference", choices: ["reference", "uniform"]),
        ParameterSpec(
            "values", .string,
            "setting 1: each value once per sequence (distinct, the reference) or drawn with replacement",
            default: "distinct", choices: ["distinct", "random"]),
        ParameterSpec(
            "eval_length", .string, "pairs per evaluation sequence: keys (S, the reference) or train (as in training)",
            default: "keys", choices: ["keys", "train"]),
        ParameterSpec(
            "query_draw", .string,
            "training query: a random position's key (position, the reference) or a distinct key uniformly (key)",
            default: "position", choices: ["position", "key"]),
        ParameterSpec(
            "max_eval_queries", .integer, "keys queried per evaluation sequence at most, smallest first (0: all)",
            default: 200, minimum: 0, maximum: 100_000),
        ParameterSpec(
            "favor_redraw", .boolean,
            "FAVOR+: a new random projection every forward pass (the reference) or one per run",
            default: true),
        ParameterSpec(
            "eval_mean", .string,
            "evaluation loss: mean of per-chunk means, chunks of batch queries (chunks, the reference) or per query",
            default: "chunks", choices: ["chunks", "queries"]),
        ParameterSpec(
            "ranks", .integer,
            "processes sharing every batch (data-parallel over MPI; cut into shards from 2 ranks on)", default: 1,
            minimum: 1, maximum: 1024),
    ]

    /// The schema's parameters as Swift values.
    public struct Parameters: Decodable, Sendable {
        var keys: Int
        var setting: Int
        var attention: String
        var rule: UpdateRule
        var keySize: Int
        var batch: Int
        var lr: Double
        var maxSteps: Int
        var evalEvery: Int
        var evalSequences: Int
        var patience: Int
        var targetLoss: Double
        var seed: UInt64
        var ranks: Int
        var initialization: String
        var values: String
        var evalLength: String
        var queryDraw: String
        var maxEvalQueries: Int
        var favorRedraw: Bool
        var evalMean: String
        var model: String
    }

    public func check(_ p: Parameters) throws {
        let a = p.attention
        if a != "linear" && a != "softmax" {
            guard let kind = FeatureMapKind(name: a), kind != .identity, kind != .eluPlusOne else {
                throw ParameterError("attention", "must be linear, dpfp-ν, favor-m or softmax, got '\(a)'")
            }
            if case .dpfp(let nu) = kind, nu >= 2 * p.keySize {
                throw ParameterError("attention", "DPFP's ν must be below 2·key_size (\(2 * p.keySize))")
            }
        }
        if p.model != "memory" {
            if case .favor = FeatureMapKind(name: a) {
                throw ParameterError("attention", "FAVOR+ is offered with model = memory only")
            }
            if p.model != "layer" {
                if a == "softmax" {
                    throw ParameterError("attention", "\(p.model) is a fast-weight layer: softmax needs model = layer")
                }
                if p.rule != .delta {
                    throw ParameterError("rule", "\(p.model) programs its fast weights by the delta rule")
                }
                if p.model == "rdn" && a != "linear" {
                    throw ParameterError("attention", "the RDN applies softmax to its queries and keys: use linear")
                }
            }
        }
        let shards = ShardLayout(batch: p.batch).count
        if p.ranks > shards {
            throw ParameterError(
                "ranks", "a batch of \(p.batch) is cut into \(shards) shards, so at most \(shards) ranks can share it")
        }
    }

    func config(_ p: Parameters) -> RetrievalConfig {
        var c = RetrievalConfig(
            keys: p.keys, setting: p.setting, attention: p.attention, rule: p.rule, keySize: p.keySize)
        c.initialization = p.initialization
        c.distinctValues = p.values == "distinct"
        c.evalLength = p.evalLength
        c.queryDraw = p.queryDraw
        c.maxEvalQueries = p.maxEvalQueries
        c.fastNet = p.model == "memory" ? nil : p.model == "layer" ? .linear : FastNet(rawValue: p.model)
        return c
    }

    static let format = "fwp.retrieval.v2"

    /// A fresh FAVOR+ projection for `config` (nil for other feature maps).
    static func redraw(_ config: RetrievalConfig, using rng: inout FWPRandom) -> Tensor? {
        guard !config.isSoftmax, case .favor(let m) = config.featureMap else { return nil }
        return FeatureMap.favorProjection(features: m, inputSize: config.keySize, using: &rng)
    }

    /// The evaluation loss and accuracy of `batch`. With `chunk`, each sequence's queries go in
    /// chunks of at most `chunk` (the reference's evaluation batches), each a forward pass of its
    /// own (with a fresh FAVOR+ projection when `redraw`); the loss is then the mean of the
    /// chunks' means (`chunkMean`) or of all queries.
    static func evaluate(
        _ model: RetrievalModel, _ batch: RetrievalBatch, chunk: Int?, chunkMean: Bool, redraw: Bool,
        using rng: inout FWPRandom
    ) -> (loss: Double, accuracy: Double) {
        guard let chunk, chunkMean || (redraw && redrawsFAVOR(model.config)) else {
            let r = model.loss(batch, gradients: false)
            return (r.loss, r.accuracy)
        }
        var chunkLosses: [Double] = [], weighted = 0.0, correct = 0.0, queries = 0
        for b in 0..<batch.keys.count {
            for start in stride(from: 0, to: batch.queries[b].count, by: chunk) {
                let end = min(start + chunk, batch.queries[b].count)
                let part = RetrievalBatch(
                    keys: [batch.keys[b]], values: [batch.values[b]], queries: [Array(batch.queries[b][start..<end])],
                    targets: [Array(batch.targets[b][start..<end])])
                let r = model.loss(
                    part, gradients: false, projection: redraw ? Self.redraw(model.config, using: &rng) : nil)
                chunkLosses.append(r.loss)
                weighted += r.loss * Double(end - start)
                correct += r.accuracy * Double(end - start)
                queries += end - start
            }
        }
        let loss = chunkMean ? chunkLosses.reduce(0, +) / Double(chunkLosses.count) : weighted / Double(queries)
        return (loss, correct / Double(queries))
    }

    static func redrawsFAVOR(_ config: RetrievalConfig) -> Bool {
        if !config.isSoftmax, case .favor = config.featureMap { return true }
        return false
    }

    /// The config as JSON with sorted keys, so that equal states give byte-identical checkpoints.
    static func configJSON(_ c: RetrievalConfig) -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return String(decoding: try! e.encode(c), as: UTF8.self)
    }

    public func run(_ p: Parameters, context: TaskContext) throws -> JSONValue {
        BLAS.setThreads(1)  // parallelism comes from fwp's own loops (docs/ARCHITECTURE.md: "OpenBLAS starts without worker threads")
        let config = config(p)
        let seed = p.seed
        var model = RetrievalModel(config: config, seed: seed)
        var optimizer = AdamW(parameters: model.parameters, schedule: LearningRateSchedule(peak: p.lr))
        var rng = FWPRandom(seed: seed &+ 0x5EED)
        var best = Double.infinity, bestAccuracy = 0.0, badEvals = 0
        let maxSteps = p.maxSteps, evalEvery = p.evalEvery
        let parallel = try DataParallel.forTask(ranks: p.ranks, context: context)
        let leader = parallel?.rank ?? 0 == 0
        let layout = ShardLayout(batch: p.batch)
        let myShards = parallel.flatMap { $0.shards(layout) }
        if let data = try DataParallel.latestCheckpoint(context, parallel) {
            let c = try CheckpointContents.decode(data, format: Self.format) { json in
                guard let stored = try? JSONDecoder().decode(RetrievalConfig.self, from: Data(json.utf8)),
                    stored == config
                else {
                    throw FWPError.checkpoint("checkpoint was written for another retrieval configuration")
                }
                return (model.parameters, model.buffers)
            }
            model.parameters = c.parameters
            model.buffers = c.buffers
            guard let o = c.optimizer, let r = c.rng, let b = c.extra["best"].flatMap(Double.init),
                let a = c.extra["best_accuracy"].flatMap(Double.init), let n = c.extra["bad_evals"].flatMap(Int.init)
            else { throw TaskError.failed(code: .badCheckpoint, message: "retrieval checkpoint lacks training state") }
            optimizer = o
            rng = r
            (best, bestAccuracy, badEvals) = (b, a, n)
            context.log(.info, "resuming from step \(o.step)")
        }
        try parallel?.checkIdentical(model.parameters, "parameters")
        var meter = ProgressMeter(total: maxSteps, startStep: optimizer.step)
        var reason = "max_steps"
        var lastEval: Double = .nan
        func checkpoint(improved: Bool) throws {
            guard leader else { return }
            let contents = CheckpointContents(
                format: Self.format, config: Self.configJSON(config),
                parameters: model.parameters, buffers: model.buffers, optimizer: optimizer, rng: rng,
                extra: ["best": "\(best)", "best_accuracy": "\(bestAccuracy)", "bad_evals": "\(badEvals)"])
            try context.saveCheckpoint(contents.encoded(), step: optimizer.step, best: improved)
        }
        while optimizer.step < maxSteps {
            if let checkpointFirst = try DataParallel.stopRequest(context, parallel) {
                if checkpointFirst { try checkpoint(improved: false) }
                throw TaskError.cancelled
            }
            let batch = RetrievalBatch.sample(config, count: p.batch, allKeys: false, using: &rng)
            let projection = p.favorRedraw ? Self.redraw(config, using: &rng) : nil
            let loss: Double, g: ParameterStore?
            if let parallel, let myShards {
                // Every rank draws the whole batch (the same stream) and computes its shards,
                // each divided by the whole batch's query count; the chain adds them in order.
                let count = batch.queryCount
                var parts = parallel.parts(layout, shards: myShards)
                for block in layout.blocks {
                    let part = block.clamped(to: myShards)
                    if part.isEmpty { continue }
                    let results = part.map { i in
                        let r = model.loss(
                            batch.sequences(layout.sequences(of: i)), gradients: true, normalizer: count,
                            projection: projection)
                        return (loss: r.loss, gradients: r.gradients!)
                    }
                    parts.add(part, results, threads: ComputeThreads(1))
                }
                (loss, g) = try parallel.reduce(parts)
            } else {
                (loss, _, g) = model.loss(batch, gradients: true, projection: projection)
            }
            guard loss.isFinite else {
                throw TaskError.failed(
                    code: .diverged, message: "training loss is \(loss) at step \(optimizer.step + 1)")
            }
            optimizer.update(&model.parameters, gradients: g!)
            let step = optimizer.step
            if leader,
                let e = meter.event(
                    step: step, loss: loss, itemsPerStep: p.batch,
                    metrics: ["best_eval_loss": best.isFinite ? .number(best) : .null])
            {
                context.emit(e)
            }
            if step % evalEvery == 0 || step == maxSteps {
                var evalRng = FWPRandom(seed: seed ^ (0x9E37_79B9 &* UInt64(step)))
                let evalBatch = RetrievalBatch.sample(config, count: p.evalSequences, allKeys: true, using: &evalRng)
                var (evalLoss, accuracy) =
                    leader
                    ? Self.evaluate(
                        model, evalBatch, chunk: p.batch, chunkMean: p.evalMean == "chunks", redraw: p.favorRedraw,
                        using: &evalRng) : (Double.nan, Double.nan)
                if let parallel {  // rank 0's figures, so that every rank decides alike
                    evalLoss = try parallel.collective.broadcast(evalLoss, root: 0)
                    accuracy = try parallel.collective.broadcast(accuracy, root: 0)
                }
                lastEval = evalLoss
                let improved = evalLoss < best
                if improved {
                    best = evalLoss
                    bestAccuracy = accuracy
                    badEvals = 0
                } else {
                    badEvals += 1
                }
                context.emit(
                    ProgressEvent(
                        kind: "eval", step: step, total: maxSteps, loss: evalLoss,
                        metrics: [
                            "accuracy": .number(accuracy), "best_eval_loss": .number(best),
                        ]))
                try checkpoint(improved: improved)
                if best <= p.targetLoss {
                    reason = "target_loss"
                    break
                }
                if badEvals >= p.patience {
                    reason = "no_improvement"
                    break
                }
            }
        }
        var result: [String: JSONValue] = [
            "best_eval_loss": .number(best), "best_accuracy": .number(bestAccuracy),
            "last_eval_loss": .number(lastEval),
            "steps": .number(Double(optimizer.step)), "stopped": .string(reason),
            "sequence_length": .number(Double(config.sequenceLength)),
        ]
        if let parallel { result["ranks"] = .number(Double(parallel.size)) }
        return .object(result)
    }
}
