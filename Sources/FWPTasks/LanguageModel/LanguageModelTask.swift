import FWPCore
import FWPProtocol
import Foundation

/// Language modelling on text files: byte or word level, WikiText layout, truncated BPTT.
public struct LanguageModelTask: TaskModule {
    public init() {}

    public let name = "lm"
    public let summary = """
        Trains an autoregressive FWP or Transformer language model on a text file (byte level) or a \
        whitespace-tokenised corpus (word level, WikiText layout). Each batch row reads its own contiguous \
        stream in segments of `segment` tokens, optionally carrying fast weights across segments. Reports \
        train loss, validation loss and perplexity or bits per byte, tokens/s; keeps the best checkpoint; \
        stops early after `patience` evaluations without improvement (0: never).
        """

    public let parameters: [ParameterSpec] = [
        ParameterSpec("train", .path, "training text (or use data_dir)", optional: true),
        ParameterSpec("valid", .path, "validation text; default: the last valid_fraction of train", optional: true),
        ParameterSpec("test", .path, "test text, evaluated with the best model at the end", optional: true),
        ParameterSpec(
            "data_dir", .directory, "a WikiText folder: wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens",
            optional: true),
        ParameterSpec(
            "valid_fraction", .number, "share of train held out when no valid file is given", default: 0.05,
            minimum: 0.001, maximum: 0.5),
        ParameterSpec("level", .string, "tokenisation", default: "byte", choices: ["byte", "word"]),
        ParameterSpec(
            "max_vocabulary", .integer,
            "word level: keep the most frequent words of train, this many with <unk> (0: every word)", default: 0,
            minimum: 0, maximum: 10_000_000),
        ParameterSpec("layers", .integer, "blocks", default: 2, minimum: 1, maximum: 64),
        ParameterSpec("model_size", .integer, "model width D", default: 128, minimum: 2, maximum: 8192),
        ParameterSpec("heads", .integer, "attention heads", default: 4, minimum: 1, maximum: 128),
        ParameterSpec("head_size", .integer, "d_head", default: 32, minimum: 1, maximum: 1024),
        ParameterSpec("ff", .integer, "feed-forward hidden size", default: 512, minimum: 1, maximum: 65536),
        ParameterSpec(
            "attention", .string, "attention kind", default: "fast-weight", choices: ["fast-weight", "softmax"]),
        ParameterSpec("feature_map", .string, "elu, silu, dpfp-ν, favor-m or identity", default: "elu"),
        ParameterSpec(
            "rule", .string, "update rule (gated-delta: the delta rule with a learned decay per head and step)",
            default: "delta", choices: ["sum", "delta", "gated-delta"]),
        ParameterSpec(
            "normalization", .string, "key/query normalisation (l2: unit keys and queries)", default: "sum",
            choices: ["none", "sum", "attention", "l2"]),
        ParameterSpec(
            "short_conv", .integer,
            "width of a causal depthwise convolution (then SiLU) on q, k and v, as DeltaNet-style layers use (4); "
                + "0: none", default: 0, minimum: 0, maximum: 64),
        ParameterSpec(
            "fast_net", .string,
            "the fast net: linear (the 2021 models) or a recurrent FWP: delta-rnn (a recurrent fast weight matrix "
                + "reads softmax(y_{t-1})), delta-lstm (an LSTM of fast weights), rdn (q, k, v and β also read "
                + "tanh(y_{t-1}) through slow weights)", default: "linear",
            choices: ["linear", "delta-rnn", "delta-lstm", "rdn"]),
        ParameterSpec("dropout", .number, "dropout rate", default: 0.0, minimum: 0, maximum: 0.9),
        ParameterSpec("tied", .boolean, "tie input and output embeddings", default: false),
        ParameterSpec("positions", .boolean, "sinusoidal position encodings", default: false),
        ParameterSpec(
            "scale_embeddings", .boolean,
            "multiply the embeddings by √model_size before positions are added (as Transformer-XL-style code does)",
            default: false),
        ParameterSpec("batch", .integer, "batch rows (contiguous streams)", default: 16, minimum: 1, maximum: 4096),
        ParameterSpec(
            "segment", .integer, "tokens per segment (training context)", default: 128, minimum: 2, maximum: 65536),
        ParameterSpec("carry", .boolean, "carry fast weights across segments (truncated BPTT)", default: false),
        ParameterSpec("steps", .integer, "optimiser steps", default: 1000, minimum: 1, maximum: 100_000_000),
        ParameterSpec("lr", .number, "peak learning rate", default: 1e-3, minimum: 1e-7, maximum: 1),
        ParameterSpec("warmup", .integer, "linear warm-up steps", default: 100, minimum: 0),
        ParameterSpec("weight_decay", .number, "AdamW weight decay", default: 0.01, minimum: 0, maximum: 1),
        ParameterSpec("clip", .number, "global gradient-norm clip (0: off)", default: 1.0, minimum: 0),
        ParameterSpec("eval_every", .integer, "steps between validations (and checkpoints)", default: 200, minimum: 1),
        ParameterSpec(
            "eval_segments", .integer, "segments per row to validate on (0: the whole text)", default: 0, minimum: 0),
        ParameterSpec(
            "sliding_stride", .integer,
            "also evaluate the best model with sliding windows of `segment` tokens advancing by this many (1: every "
                + "token after the first window sees a full window, as the reference evaluates Transformers; 0: off)",
            default: 0, minimum: 0, maximum: 65536),
        ParameterSpec(
            "patience", .integer, "early stopping: validations without improvement (0: off)", default: 0, minimum: 0),
        ParameterSpec(
            "seed", .integer, "seed of initialisation, dropout and FAVOR+ draws", default: 1, minimum: 0,
            maximum: 9_007_199_254_740_991),
        ParameterSpec(
            "ranks", .integer,
            "processes sharing every batch (data-parallel over MPI; same results for any count)", default: 1,
            minimum: 1, maximum: 1024),
    ]

    /// The schema's parameters as Swift values.
    public struct Parameters: Decodable, Sendable {
        var train: String?
        var valid: String?
        var test: String?
        var dataDir: String?
        var validFraction: Double
        var level: Tokenizer.Level
        var maxVocabulary: Int
        var layers: Int
        var modelSize: Int
        var heads: Int
        var headSize: Int
        var ff: Int
        var attention: AttentionKind
        var featureMap: FeatureMapKind
        var rule: UpdateRule
        var normalization: Normalization
        var dropout: Double
        var tied: Bool
        var positions: Bool
        var scaleEmbeddings: Bool
        var shortConv: Int
        var fastNet: FastNet
        var batch: Int
        var segment: Int
        var carry: Bool
        var steps: Int
        var lr: Double
        var warmup: Int
        var weightDecay: Double
        var clip: Double
        var evalEvery: Int
        var evalSegments: Int
        var slidingStride: Int
        var patience: Int
        var seed: UInt64
        var ranks: Int
    }

    struct Files {
        var train: String, valid: String?, test: String?
    }

    func files(_ p: Parameters) -> Files {
        if let dir = p.dataDir {
            let u = URL(fileURLWithPath: dir)
            return Files(
                train: u.appendingPathComponent("wiki.train.tokens").path,
                valid: u.appendingPathComponent("wiki.valid.tokens").path,
                test: u.appendingPathComponent("wiki.test.tokens").path)
        }
        return Files(train: p.train ?? "", valid: p.valid, test: p.test)
    }

    func modelConfig(_ p: Parameters, vocabulary: Int) -> LMConfig {
        LMConfig(
            vocabularySize: vocabulary, modelSize: p.modelSize, layers: p.layers, heads: p.heads, headSize: p.headSize,
            feedForwardSize: p.ff, attention: p.attention, featureMap: p.featureMap, updateRule: p.rule,
            normalization: p.normalization, dropout: Float(p.dropout), tiedEmbeddings: p.tied,
            sinusoidalPositions: p.positions,
            embeddingScale: p.scaleEmbeddings ? Float(Double(p.modelSize).squareRoot()) : 1,
            shortConvolution: p.shortConv, fastNet: p.fastNet)
    }

    /// Rules between parameters, named as the schema names them; the model config's own
    /// validation (LMConfig.validate) then finds nothing left to refuse.
    public func check(_ p: Parameters) throws {
        if (p.dataDir != nil) == (p.train != nil) {
            throw ParameterError(p.dataDir != nil ? "data_dir" : "train", "give exactly one of train and data_dir")
        }
        switch p.featureMap {
        case .dpfp(let nu) where nu >= 2 * p.headSize:
            throw ParameterError("feature_map", "DPFP's ν must be below 2·head_size (\(2 * p.headSize))")
        case .identity where p.attention == .fastWeight && p.normalization == .attention:
            throw ParameterError("normalization", "attention normalisation needs a positive feature map (not identity)")
        default: break
        }
        if p.attention == .fastWeight && p.rule == .gatedDelta && p.normalization == .attention {
            throw ParameterError("normalization", "the gated delta rule takes none, sum or l2 (not attention)")
        }
        if p.fastNet != .linear {
            let name = p.fastNet.rawValue
            if p.attention != .fastWeight { throw ParameterError("fast_net", "\(name) needs attention = fast-weight") }
            if p.rule != .delta { throw ParameterError("rule", "\(name) programs its fast weights by the delta rule") }
            if p.shortConv != 0 { throw ParameterError("short_conv", "is not offered with fast_net = \(name)") }
            if p.normalization == .attention {
                throw ParameterError("normalization", "\(name) takes none, sum or l2 (not attention)")
            }
            if p.fastNet == .rdn && (p.featureMap != .eluPlusOne || p.normalization != .sum) {
                throw ParameterError(
                    p.featureMap != .eluPlusOne ? "feature_map" : "normalization",
                    "the RDN applies softmax to its queries and keys: leave feature_map and normalization unset")
            }
        }
        if p.positions && p.modelSize % 2 != 0 {
            throw ParameterError("model_size", "must be even with sinusoidal positions, got \(p.modelSize)")
        }
        if p.maxVocabulary > 0 && p.level != .word {
            throw ParameterError("max_vocabulary", "applies to level = word (bytes always have 256)")
        }
        if p.maxVocabulary > 0 && p.maxVocabulary < 3 {
            throw ParameterError(
                "max_vocabulary", "must be 0 or at least 3 (<eos>, <unk> and a word), got \(p.maxVocabulary)")
        }
        if p.slidingStride > p.segment {
            throw ParameterError("sliding_stride", "must be at most segment (\(p.segment)), got \(p.slidingStride)")
        }
        if p.slidingStride > 0 && p.carry {
            throw ParameterError(
                "sliding_stride",
                "sliding windows start from a fresh state; with carry every token already sees its past")
        }
        if p.carry && p.attention == .softmax {
            throw ParameterError("carry", "carrying state across segments needs fast-weight attention")
        }
        if p.ranks > 1 {
            let shards = ShardLayout(batch: p.batch).count
            if p.ranks > shards {
                throw ParameterError(
                    "ranks",
                    "a batch of \(p.batch) is cut into \(shards) shards, so at most \(shards) ranks can share it")
            }
        }
        let f = files(p)
        let hasDir = p.dataDir != nil
        try checkTextFile(f.train, parameter: hasDir ? "data_dir" : "train", level: p.level)
        if let v = f.valid { try checkTextFile(v, parameter: hasDir ? "data_dir" : "valid", level: p.level) }
        if let t = f.test { try checkTextFile(t, parameter: hasDir ? "data_dir" : "test", level: p.level) }
    }

    static let format = TrainingCheckpoint.format

    public func run(_ p: Parameters, context: TaskContext) throws -> JSONValue {
        let threads = max(1, context.threads)
        BLAS.setThreads(1)  // parallelism comes from fwp's own loops (docs/ARCHITECTURE.md: "OpenBLAS starts without worker threads")
        let level = p.level
        let f = files(p)
        let trainData = try readTextFile(f.train, parameter: "train")
        let tokenizer =
            level == .byte
            ? Tokenizer.bytes
            : Tokenizer.words(trainingText: String(decoding: trainData, as: UTF8.self), limit: p.maxVocabulary)
        var trainTokens = tokenizer.encode(trainData)
        var validTokens: [Int]
        if let v = f.valid {
            validTokens = tokenizer.encode(try readTextFile(v, parameter: "valid"))
        } else {
            let cut = trainTokens.count - Int(Double(trainTokens.count) * p.validFraction)
            validTokens = Array(trainTokens[cut...])
            trainTokens = Array(trainTokens[..<cut])
        }
        let batch = p.batch, segment = p.segment, steps = p.steps, carry = p.carry
        let stream = BatchedStream(tokens: trainTokens, batch: batch, segment: segment)
        guard stream.segmentsPerRow > 0 else {
            throw TaskError.failed(
                code: .textTooShort,
                message: "train holds \(trainTokens.count) tokens, too few for \(batch) rows of \(segment + 1)")
        }
        let evalBatch = max(1, min(batch, validTokens.count / (segment + 1)))
        let config = modelConfig(p, vocabulary: tokenizer.size)
        let seed = p.seed
        var model = try LanguageModel(config: config, seed: seed)
        model.threads = ComputeThreads(threads)
        let parallel = try DataParallel.forTask(ranks: p.ranks, context: context)
        let leader = parallel?.rank ?? 0 == 0
        let layout = model.shardLayout(batch: batch)
        let myShards = parallel.flatMap { $0.shards(layout) }
        var optimizer = AdamW(
            parameters: model.parameters,
            schedule: LearningRateSchedule(peak: p.lr, warmupSteps: p.warmup, totalSteps: steps, minimum: p.lr / 10),
            weightDecay: p.weightDecay, maxGradientNorm: p.clip)
        var rng = FWPRandom(seed: seed &+ 0x7EA1)
        var state: ModelState? = carry ? model.initialState(batch: batch) : nil
        var best = Double.infinity, badEvals = 0
        var bestParameters = model.parameters

        if let data = try DataParallel.latestCheckpoint(context, parallel) {
            let c = try TrainingCheckpoint.decode(data, expecting: config)
            guard let o = c.optimizer, let r = c.rng, let b = c.extra["best_valid_loss"].flatMap(Double.init),
                let n = c.extra["bad_evals"].flatMap(Int.init), c.extra["tokenizer"] == tokenizer.json
            else {
                throw TaskError.failed(
                    code: .badCheckpoint, message: "checkpoint lacks training state or has another vocabulary")
            }
            model.parameters = c.model.parameters
            model.buffers = c.model.buffers
            optimizer = o
            rng = r
            best = b
            badEvals = n
            bestParameters = model.parameters
            for (name, t) in c.extraTensors where name.hasPrefix("best.") {
                if let i = bestParameters.index(of: String(name.dropFirst(5))) { bestParameters.values[i] = t }
            }
            if carry {
                state = try restoreState(
                    c.extraTensors, position: c.extra["state.position"], into: model.initialState(batch: batch))
            }
            context.log(.info, "resuming from step \(o.step)")
        }
        try parallel?.checkIdentical(model.parameters, "parameters")

        func checkpoint(improved: Bool) throws {
            var extraTensors: [(name: String, tensor: Tensor)] = []
            var state = state
            if let parallel, let s = state {
                // Every rank advanced only its own sequences' state; rank 0 collects the rest.
                state = try parallel.gatherState(s, layout: layout)
                guard parallel.rank == 0 else { return }
            }
            if let state {
                for (i, l) in state.layers.enumerated() {
                    extraTensors.append(("state.\(i).weights", Tensor(shape: [l.weights.count], storage: l.weights)))
                    if !l.normalizer.isEmpty {
                        extraTensors.append(
                            ("state.\(i).normalizer", Tensor(shape: [l.normalizer.count], storage: l.normalizer)))
                    }
                    if !l.convolution.isEmpty {
                        extraTensors.append(
                            ("state.\(i).convolution", Tensor(shape: [l.convolution.count], storage: l.convolution)))
                    }
                    if !l.recurrent.isEmpty {
                        extraTensors.append(
                            ("state.\(i).recurrent", Tensor(shape: [l.recurrent.count], storage: l.recurrent)))
                    }
                }
            }
            if !improved {
                for (n, t) in zip(bestParameters.names, bestParameters.values) { extraTensors.append(("best.\(n)", t)) }
            }
            var extra = [
                "task": "lm", "tokenizer": tokenizer.json, "segment": "\(segment)", "carry": "\(carry)",
                "best_valid_loss": "\(best)",
                "bad_evals": "\(badEvals)", "data.segment_index": "\(optimizer.step % stream.segmentsPerRow)",
            ]
            // The position as an exact decimal integer (a float32 tensor is exact only to 2^24 tokens).
            if let state { extra["state.position"] = "\(state.position)" }
            let data = TrainingCheckpoint(
                model: model, optimizer: optimizer, rng: rng, extra: extra, extraTensors: extraTensors
            ).encoded()
            try context.saveCheckpoint(data, step: optimizer.step, best: improved)
        }

        var meter = ProgressMeter(total: steps, startStep: optimizer.step)
        var reason = "steps"
        let tokensPerStep = batch * segment
        var lastTrain = Double.nan, updateSeconds = 0.0
        while optimizer.step < steps {
            if let checkpointFirst = try DataParallel.stopRequest(context, parallel) {
                if checkpointFirst { try checkpoint(improved: false) }
                throw TaskError.cancelled
            }
            let index = optimizer.step % stream.segmentsPerRow
            if index == 0 && carry { state = model.initialState(batch: batch) }  // a new pass over the data
            let (x, y) = stream.batch(index)
            let loss: Double, grads: ParameterStore
            if let parallel, let myShards {
                var parts = parallel.parts(layout, shards: myShards)
                model.shardLossesAndGradients(
                    tokens: x, targets: y, batch: batch, shards: myShards, state: &state, training: true, rng: &rng
                ) { part, results in parts.add(part, results, threads: model.threads) }
                (loss, grads) = try parallel.reduce(parts)
            } else {
                (loss, grads) = model.lossAndGradients(
                    tokens: x, targets: y, batch: batch, state: &state, training: true, rng: &rng)
            }
            guard loss.isFinite else {
                throw TaskError.failed(
                    code: .diverged,
                    message: "training loss is \(loss) at step \(optimizer.step + 1)" + divergenceHint(p))
            }
            let updateStarted = ContinuousClock.now
            optimizer.update(&model.parameters, gradients: grads, threads: model.threads)
            updateSeconds += (ContinuousClock.now - updateStarted).seconds
            lastTrain = loss
            var stepMetrics = languageMetrics(loss, level: level)
            // The learning rate the update just used (the schedule's rate at this step).
            stepMetrics["lr"] = .number(optimizer.schedule.rate(at: optimizer.step))
            if let parallel {
                stepMetrics["ranks"] = .number(Double(parallel.size))
                // Per step since the start: the reduction (waiting for the slowest rank included)
                // and the AdamW update, which every rank does in full.
                let done = Double(max(1, optimizer.step - meter.startStep))
                stepMetrics["reduce_seconds_per_step"] = .number(parallel.reductionSeconds / done)
                stepMetrics["update_seconds_per_step"] = .number(updateSeconds / done)
            }
            if leader,
                let e = meter.event(
                    step: optimizer.step, loss: loss, itemsPerStep: tokensPerStep, metrics: stepMetrics)
            {
                context.emit(e)
            }
            if optimizer.step % p.evalEvery == 0 || optimizer.step == steps {
                // Rank 0 validates; the others wait for its figure, so that all decide alike.
                var vloss = Double.nan
                if leader {
                    (vloss, _) = try evaluateStream(
                        model, tokens: validTokens, batch: evalBatch, segment: segment, carry: carry,
                        maxSegments: p.evalSegments,
                        cancelled: { context.isCancelled })
                }
                if let parallel { vloss = try parallel.collective.broadcast(vloss, root: 0) }
                let improved = vloss < best
                if improved {
                    best = vloss
                    badEvals = 0
                    bestParameters = model.parameters
                } else {
                    badEvals += 1
                }
                var metrics = languageMetrics(vloss, level: level)
                metrics["best_valid_loss"] = .number(best)
                context.emit(
                    ProgressEvent(kind: "eval", step: optimizer.step, total: steps, loss: vloss, metrics: metrics))
                try checkpoint(improved: improved)
                if p.patience > 0 && badEvals >= p.patience {
                    reason = "no_improvement"
                    break
                }
            }
        }
        var result: [String: JSONValue] = [
            "steps": .number(Double(optimizer.step)), "stopped": .string(reason), "best_valid_loss": .number(best),
            "last_train_loss": .number(lastTrain), "level": .string(level.rawValue),
            "vocabulary": .number(Double(tokenizer.size)),
            "parameters": .number(Double(model.parameters.scalarCount)),
        ]
        for (k, v) in languageMetrics(best, level: level) { result["best_valid_\(k)"] = v }
        if let parallel {
            result["ranks"] = .number(Double(parallel.size))
            guard leader else { return .object(result) }
        }
        var bestModel = model
        bestModel.parameters = bestParameters
        if p.slidingStride > 0 {
            let (sloss, n) = try evaluateSliding(
                bestModel, tokens: validTokens, rows: evalBatch, window: segment, stride: p.slidingStride,
                maxSegments: p.evalSegments, cancelled: { context.isCancelled })
            context.log(.info, "sliding-window validation of \(n) tokens (stride \(p.slidingStride)): loss \(sloss)")
            result["best_valid_sliding_loss"] = .number(sloss)
            for (k, v) in languageMetrics(sloss, level: level) { result["best_valid_sliding_\(k)"] = v }
        }
        if let t = f.test {
            let testTokens = tokenizer.encode(try readTextFile(t, parameter: "test"))
            let testRows = max(1, min(batch, testTokens.count / (segment + 1)))
            let (tloss, _) = try evaluateStream(
                bestModel, tokens: testTokens, batch: testRows, segment: segment, carry: carry,
                cancelled: { context.isCancelled })
            result["test_loss"] = .number(tloss)
            for (k, v) in languageMetrics(tloss, level: level) { result["test_\(k)"] = v }
            if p.slidingStride > 0 {
                let (sloss, _) = try evaluateSliding(
                    bestModel, tokens: testTokens, rows: testRows, window: segment, stride: p.slidingStride,
                    cancelled: { context.isCancelled })
                result["test_sliding_loss"] = .number(sloss)
                for (k, v) in languageMetrics(sloss, level: level) { result["test_sliding_\(k)"] = v }
            }
        }
        return .object(result)
    }

    /// Why a run may have diverged, when its settings say: the delta rule without sum-normalised
    /// keys updates W by (I − β k̃ k̃ᵀ), which expands wherever β‖k̃‖² > 2 — at once with ELU + 1 or
    /// FAVOR+ features, whose squared norm grows with d.
    func divergenceHint(_ p: Parameters) -> String {
        guard p.attention == .fastWeight, p.rule.hasBeta, p.normalization != .sum, p.normalization != .l2 else {
            return ""
        }
        return
            "; the delta rule without sum- or L2-normalised keys (normalization = \(p.normalization.rawValue)) "
            + "expands where β‖φ(k)‖² > 2: use normalization = sum or l2"
    }

    /// The carried state from a checkpoint's `extra.state.*` tensors and its position: the
    /// `extra.state.position` metadata, or in files written before it existed a float32 tensor.
    func restoreState(_ tensors: [(name: String, tensor: Tensor)], position: String?, into fresh: ModelState) throws
        -> ModelState
    {
        var s = fresh
        let byName = Dictionary(tensors.map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a })
        for i in s.layers.indices {
            guard let w = byName["state.\(i).weights"], w.count == s.layers[i].weights.count else {
                throw TaskError.failed(
                    code: .badCheckpoint, message: "carried state of layer \(i) is missing or has the wrong size")
            }
            s.layers[i].weights = w.storage
            if !s.layers[i].normalizer.isEmpty {
                guard let z = byName["state.\(i).normalizer"], z.count == s.layers[i].normalizer.count else {
                    throw TaskError.failed(code: .badCheckpoint, message: "carried normaliser of layer \(i) is missing")
                }
                s.layers[i].normalizer = z.storage
            }
            if !s.layers[i].convolution.isEmpty {
                guard let c = byName["state.\(i).convolution"], c.count == s.layers[i].convolution.count else {
                    throw TaskError.failed(
                        code: .badCheckpoint, message: "carried convolution inputs of layer \(i) are missing")
                }
                s.layers[i].convolution = c.storage
            }
            if !s.layers[i].recurrent.isEmpty {
                guard let r = byName["state.\(i).recurrent"], r.count == s.layers[i].recurrent.count else {
                    throw TaskError.failed(
                        code: .badCheckpoint, message: "carried recurrent fast-net state of layer \(i) is missing")
                }
                s.layers[i].recurrent = r.storage
            }
        }
        if let position {
            guard let p = Int(position), p >= 0 else {
                throw TaskError.failed(
                    code: .badCheckpoint, message: "the carried position in the metadata is not a whole number")
            }
            s.position = p
        } else {
            s.position = Int(byName["state.position"]?.storage.first ?? 0)
        }
        return s
    }
}
