import FWPCore
import Foundation
import Testing

@testable import FWPTasks

@Suite struct RetrievalTests {
    func run(_ given: [String: JSONValue], context: MemoryContext = MemoryContext()) throws -> JSONValue {
        let t = RetrievalTask()
        return try t.run(try t.validate(given), context: context)
    }

    @Test func deltaRuleLearnsEightKeys() throws {
        let r = try run([
            "keys": 8, "key_size": 16, "rule": "delta", "attention": "linear", "max_steps": 4000, "target_loss": 0.005,
        ])
        let best = r["best_eval_loss"]!.doubleValue!
        #expect(best <= 0.01, "delta rule at S = 8, d_key = 16: best eval loss \(best)")
        #expect(r["stopped"] == "target_loss")
    }

    /// Setting 1 at S = 16: ELU+1 with d_key = 8 has d_dot = 8 < S and cannot store every key
    /// without interference; DPFP-2 (d_dot = 32) can.
    @Test func sumRuleBelowCapacityFailsWhereLargerDPFPSucceeds() throws {
        let base: [String: JSONValue] = [
            "keys": 16, "key_size": 8, "rule": "sum", "max_steps": 3000, "patience": 5, "target_loss": 0.005,
        ]
        let small = try run(base.merging(["attention": "linear"]) { $1 })
        let large = try run(base.merging(["attention": "dpfp-2"]) { $1 })
        let s = small["best_eval_loss"]!.doubleValue!, l = large["best_eval_loss"]!.doubleValue!
        #expect(s > 0.05, "d_dot 8 < S 16 should fail, got \(s)")
        #expect(l <= 0.01, "d_dot 32 ≥ S 16 should succeed, got \(l)")
    }

    @Test(arguments: ["softmax", "favor-8", "dpfp-1"])
    func otherAttentionKindsRunAndLearnSomething(_ attention: String) throws {
        let ctx = MemoryContext()
        let r = try run(
            [
                "keys": 6, "key_size": 16, "attention": .string(attention), "max_steps": 300, "eval_every": 100,
                "target_loss": 0,
            ], context: ctx)
        #expect(r["best_eval_loss"]!.doubleValue! < 0.4, "\(attention) beats chance (0.5)")
        #expect(ctx.events.contains { $0.kind == "eval" && $0.step == 300 })
        #expect(ctx.checkpoints.map(\.step) == [100, 200, 300])
    }

    @Test func resumeAfterInterruptionIsBitIdentical() throws {
        let given: [String: JSONValue] = [
            "keys": 6, "setting": 2, "key_size": 16, "rule": "delta", "attention": "linear", "max_steps": 300,
            "eval_every": 50, "target_loss": 0,
        ]
        let straight = MemoryContext()
        let r1 = try run(given, context: straight)
        let interrupted = MemoryContext(cancelWhen: { $0.kind == "eval" && $0.step == 150 })
        #expect(throws: TaskError.cancelled) { try run(given, context: interrupted) }
        #expect(interrupted.checkpoints.last?.step == 150)
        let resumed = MemoryContext(checkpoints: interrupted.checkpoints)
        let r2 = try run(given, context: resumed)
        #expect(r1 == r2)
        #expect(
            resumed.checkpoints.last!.data == straight.checkpoints.last!.data, "final checkpoints are byte-identical")
    }
}

/// The retrieval task follows the reference code (ischlag/fast-weight-transformers, synthetic/)
/// by default; each place where the task could depart from it is pinned here, with the option
/// that departs.
@Suite struct RetrievalReferenceTests {
    func config(_ keys: Int, setting: Int = 1, attention: String = "linear", rule: UpdateRule = .sum) -> RetrievalConfig
    {
        RetrievalConfig(keys: keys, setting: setting, attention: attention, rule: rule, keySize: 64)
    }

    func maxAbs(_ m: RetrievalModel, _ name: String) -> Float {
        m.parameters[name]!.storage.reduce(0) { max($0, abs($1)) }
    }

    @Test func initialisationFollowsTheReference() {
        // S = 30: embedding e = 66, so W_k's fan-in is 96 and W_q's 66; d_key = 64.
        let softmax = RetrievalModel(config: config(30, attention: "softmax"), seed: 1)
        let xavierK = (6 / Float(96 + 64)).squareRoot(), xavierQ = (6 / Float(66 + 64)).squareRoot()
        #expect(maxAbs(softmax, "key.weight") <= xavierK && maxAbs(softmax, "key.weight") > 0.9 * xavierK)
        #expect(maxAbs(softmax, "query.weight") <= xavierQ && maxAbs(softmax, "query.weight") > 0.9 * xavierQ)
        #expect(maxAbs(softmax, "key.bias") <= 1 / Float(96).squareRoot())
        #expect(maxAbs(softmax, "query.bias") <= 1 / Float(66).squareRoot())
        #expect(maxAbs(softmax, "query.bias") > 0.8 / Float(66).squareRoot(), "biases drawn, not zero")

        let delta = RetrievalModel(config: config(30, rule: .delta), seed: 1)
        let uKey = 1 / Float(64).squareRoot()
        #expect(maxAbs(delta, "key.weight") <= uKey && maxAbs(delta, "key.weight") > 0.9 * uKey)
        #expect(maxAbs(delta, "key.bias") <= 1 / Float(96).squareRoot())
        #expect(maxAbs(delta, "beta.weight") <= 1 / Float(96).squareRoot())
        #expect(maxAbs(delta, "beta.bias") > 0, "β's bias is drawn as PyTorch's default")

        var old = config(30, rule: .delta)
        old.initialization = "uniform"
        let uniform = RetrievalModel(config: old, seed: 1)
        #expect(maxAbs(uniform, "key.bias") > 1 / Float(96).squareRoot(), "uniform: biases ±1/√d_key")
        #expect(maxAbs(uniform, "beta.bias") == 0)
    }

    @Test func settingOneUsesEachValueOnce() {
        var rng = FWPRandom(seed: 3)
        let b = RetrievalBatch.sample(config(40), count: 20, allKeys: false, using: &rng)
        #expect(b.values.allSatisfy { Set($0).count == 40 }, "values without replacement")
        #expect(b.keys.allSatisfy { Set($0).count == 40 })
        var random = config(40)
        random.distinctValues = false
        let r = RetrievalBatch.sample(random, count: 20, allKeys: false, using: &rng)
        #expect(r.values.contains { Set($0).count < 40 }, "with replacement: repeats")
    }

    @Test func settingTwoEvaluatesSequencesOfSPairs() {
        var rng = FWPRandom(seed: 4)
        let c = config(20, setting: 2)
        #expect(RetrievalBatch.sample(c, count: 3, allKeys: false, using: &rng).keys.allSatisfy { $0.count == 40 })
        let eval = RetrievalBatch.sample(c, count: 3, allKeys: true, using: &rng)
        #expect(eval.keys.allSatisfy { $0.count == 20 }, "the reference evaluates S pairs")
        #expect(eval.queries.allSatisfy { q in q == q.sorted() && !q.isEmpty })
        var train = c
        train.evalLength = "train"
        #expect(RetrievalBatch.sample(train, count: 3, allKeys: true, using: &rng).keys.allSatisfy { $0.count == 40 })
    }

    @Test func evaluationQueriesAtMost200KeysSmallestFirst() {
        var rng = FWPRandom(seed: 5)
        let eval = RetrievalBatch.sample(config(250), count: 2, allKeys: true, using: &rng)
        #expect(eval.queries.allSatisfy { $0 == Array(0..<200) })
        var all = config(250)
        all.maxEvalQueries = 0
        #expect(RetrievalBatch.sample(all, count: 2, allKeys: true, using: &rng).queries.allSatisfy { $0.count == 250 })
    }

    /// Setting 2's training query is a random position's key: a key occurring c times in the L
    /// pairs is asked with probability c/L, so the queried key's count averages Σc²/L, not the
    /// mean count over distinct keys.
    @Test func trainingQueriesFollowKeyFrequency() {
        func meanQueriedCount(_ c: RetrievalConfig) -> (observed: Double, byPosition: Double, byKey: Double) {
            var rng = FWPRandom(seed: 6)
            let b = RetrievalBatch.sample(c, count: 4000, allKeys: false, using: &rng)
            var observed = 0.0, byPosition = 0.0, byKey = 0.0
            for (ks, q) in zip(b.keys, b.queries) {
                var counts: [Int: Int] = [:]
                for k in ks { counts[k, default: 0] += 1 }
                observed += Double(counts[q[0]]!)
                byPosition += counts.values.reduce(0.0) { $0 + Double($1 * $1) } / Double(ks.count)
                byKey += Double(ks.count) / Double(counts.count)
            }
            let n = Double(b.keys.count)
            return (observed / n, byPosition / n, byKey / n)
        }
        let position = meanQueriedCount(config(5, setting: 2))
        #expect(position.byPosition - position.byKey > 0.3, "the two rules differ here: \(position)")
        #expect(abs(position.observed - position.byPosition) < 0.1, "\(position)")
        var uniform = config(5, setting: 2)
        uniform.queryDraw = "key"
        let key = meanQueriedCount(uniform)
        #expect(abs(key.observed - key.byKey) < 0.1, "\(key)")
    }

    @Test func evaluationLossIsTheMeanOfChunkMeans() {
        var rng = FWPRandom(seed: 7)
        let model = RetrievalModel(config: config(7, rule: .delta), seed: 2)
        let batch = RetrievalBatch.sample(model.config, count: 3, allKeys: true, using: &rng)  // 7 queries each
        var chunks: [Double] = []
        for b in 0..<3 {
            for range in [0..<3, 3..<6, 6..<7] {
                let part = RetrievalBatch(
                    keys: [batch.keys[b]], values: [batch.values[b]], queries: [Array(batch.queries[b][range])],
                    targets: [Array(batch.targets[b][range])])
                chunks.append(model.loss(part, gradients: false).loss)
            }
        }
        var unused = FWPRandom(seed: 0)
        let byChunks = RetrievalTask.evaluate(model, batch, chunk: 3, chunkMean: true, redraw: true, using: &unused)
        #expect(byChunks.loss == chunks.reduce(0, +) / 9, "the one-query chunks weigh as much as the full ones")
        let byQueries = RetrievalTask.evaluate(model, batch, chunk: 3, chunkMean: false, redraw: true, using: &unused)
        #expect(abs(byQueries.loss - model.loss(batch, gradients: false).loss) < 1e-6)
        #expect(byChunks.loss != byQueries.loss)
    }

    @Test func favorRedrawsItsProjectionEveryForwardPass() {
        var rng = FWPRandom(seed: 8)
        let model = RetrievalModel(config: config(6, attention: "favor-8"), seed: 3)
        let batch = RetrievalBatch.sample(model.config, count: 2, allKeys: true, using: &rng)
        var a = FWPRandom(seed: 1), b = FWPRandom(seed: 2)
        let first = RetrievalTask.evaluate(model, batch, chunk: 32, chunkMean: true, redraw: true, using: &a)
        let second = RetrievalTask.evaluate(model, batch, chunk: 32, chunkMean: true, redraw: true, using: &b)
        #expect(first.loss != second.loss, "a new projection each pass")
        let fixedA = RetrievalTask.evaluate(model, batch, chunk: 32, chunkMean: true, redraw: false, using: &a)
        let fixedB = RetrievalTask.evaluate(model, batch, chunk: 32, chunkMean: true, redraw: false, using: &b)
        #expect(fixedA.loss == fixedB.loss, "favor_redraw = false: the run's one projection")
    }

    /// The model's gradients against central differences of its loss, for every parameter, for
    /// each rule (and softmax), in setting 2 where keys repeat and the delta rules overwrite; and
    /// of the layer models (`model` = layer with a rule or softmax, and the recurrent FWPs).
    @Test(arguments: [
        "sum", "delta", "gated-delta", "softmax", "layer/sum", "layer/gated-delta", "layer/softmax", "delta-rnn/delta",
        "delta-lstm/delta", "rdn/delta",
    ])
    func gradientsMatchFiniteDifferences(_ variant: String) {
        let parts = variant.split(separator: "/").map(String.init)
        let rule = parts.last!
        var c = RetrievalConfig(
            keys: 4, setting: 2, attention: rule == "softmax" ? "softmax" : "linear",
            rule: UpdateRule(rawValue: rule) ?? .sum, keySize: 5)
        if parts.count == 2 { c.fastNet = parts[0] == "layer" ? .linear : FastNet(rawValue: parts[0])! }
        c.maxEvalQueries = 0
        let model = RetrievalModel(config: c, seed: 9)
        var rng = FWPRandom(seed: 10)
        let batch = RetrievalBatch.sample(c, count: 2, allKeys: true, using: &rng)
        let g = model.loss(batch, gradients: true).gradients!
        if variant == "gated-delta" { #expect(model.parameters["decay.weight"] != nil) }
        for i in model.parameters.values.indices {
            let name = model.parameters.names[i]
            var worst = 0.0
            for j in stride(from: 0, to: model.parameters.values[i].count, by: 3) {
                let eps: Float = 1e-2
                var plus = model, minus = model
                plus.parameters.values[i].storage[j] += eps
                minus.parameters.values[i].storage[j] -= eps
                let numeric =
                    (plus.loss(batch, gradients: false).loss - minus.loss(batch, gradients: false).loss)
                    / Double(2 * eps)
                let analytic = Double(g.values[i].storage[j])
                worst = max(worst, abs(numeric - analytic) / max(abs(numeric), 1e-3))
            }
            #expect(worst < 3e-2, "\(variant) \(name): analytic gradient off by \(worst)")
        }
    }

    @Test func patienceIsTheReferences() {
        #expect(RetrievalTask().parameters.first { $0.name == "patience" }?.defaultValue == 11)
    }
}

@Suite struct LanguageModelTaskTests {
    static let tiny: [String: JSONValue] = [
        "layers": 1, "model_size": 16, "heads": 2, "head_size": 8, "ff": 32, "batch": 4, "segment": 16, "steps": 40,
        "eval_every": 10, "lr": 0.01, "warmup": 5,
    ]

    func run(_ module: any TaskModule, _ given: [String: JSONValue], context: MemoryContext = MemoryContext()) throws
        -> JSONValue
    {
        try module.run(try module.validate(given), context: context)
    }

    @Test func byteLevelTrainsAndReportsBitsPerByte() throws {
        let dir = TemporaryDirectory()
        let train = dir.file("train.txt", sampleText(lines: 400, seed: 1))
        let ctx = MemoryContext()
        let r = try run(LanguageModelTask(), Self.tiny.merging(["train": .string(train)]) { $1 }, context: ctx)
        let bpb = r["best_valid_bits_per_byte"]!.doubleValue!
        #expect(bpb < 4.0, "well below the 8 bits of a uniform byte model: \(bpb)")
        let progress = ctx.events.filter { $0.kind == "progress" }
        #expect(progress.last?.step == 40 && progress.last?.tokensPerSecond != nil && progress.last?.etaSeconds != nil)
        #expect(ctx.checkpoints.contains { $0.best })
        // each progress event carries the rate its step used: linear warm-up over 5 steps to 0.01,
        // then a cosine down to a tenth of it at step 40 (docs/TASKS.md)
        for e in progress {
            let s = Double(e.step!)
            let expected = s <= 5 ? 0.01 * s / 5 : 0.001 + 0.5 * 0.009 * (1 + cos(Double.pi * (s - 5) / 35))
            #expect(abs((e.metrics["lr"]?.doubleValue ?? -1) - expected) < 1e-12, "step \(e.step!)")
        }
    }

    /// The delta rule with unnormalised ELU + 1 keys diverges at once (β‖φ(k)‖² ≫ 2); the error
    /// says why and what to set.
    @Test func deltaRuleWithoutSumNormalisationFailsWithAHint() throws {
        let dir = TemporaryDirectory()
        let train = dir.file("train.txt", sampleText(lines: 400, seed: 1))
        let given = Self.tiny.merging([
            "train": .string(train), "rule": "delta", "normalization": "attention", "feature_map": "elu",
            "model_size": 64, "head_size": 32, "segment": 128, "steps": 3,
        ]) { $1 }
        do {
            _ = try run(LanguageModelTask(), given)
            Issue.record("expected divergence")
        } catch TaskError.failed(let code, let message) {
            #expect(code == .diverged)
            #expect(message.contains("use normalization = sum"), "\(message)")
        }
    }

    @Test func wordLevelWikiTextLayoutReportsPerplexity() throws {
        let dir = TemporaryDirectory()
        dir.file("wt/wiki.train.tokens", sampleText(lines: 300, seed: 2))
        dir.file("wt/wiki.valid.tokens", sampleText(lines: 60, seed: 3) + "an unseen word .\n")
        dir.file("wt/wiki.test.tokens", sampleText(lines: 60, seed: 4))
        let r = try run(
            LanguageModelTask(),
            Self.tiny.merging(["data_dir": .string(dir.url.appendingPathComponent("wt").path), "level": "word"]) { $1 })
        let ppl = r["best_valid_perplexity"]!.doubleValue!, vocab = r["vocabulary"]!.doubleValue!
        #expect(vocab == 29, "26 distinct words, '.', <eos> and <unk>: \(vocab)")
        #expect(ppl < vocab / 2, "perplexity \(ppl) well below the vocabulary size")
        #expect(r["test_perplexity"] != nil)
    }

    @Test func maxVocabularyKeepsTheMostFrequentWords() throws {
        let t = Tokenizer.words(trainingText: "a a a b b c d\nc a b\n", limit: 4)
        // Counts: a 4, <eos> 3 (three lines, the last empty), b 3; ties in lexicographic order.
        #expect(t.vocabulary == ["a", "<eos>", "b", "<unk>"], "\(t.vocabulary)")
        #expect(t.encode("a c d b\n") == [0, 3, 3, 2, 1])
        #expect(Tokenizer.words(trainingText: "a b\n", limit: 10).vocabulary == ["<eos>", "a", "b", "<unk>"])
        let dir = TemporaryDirectory()
        dir.file("wt/wiki.train.tokens", sampleText(lines: 300, seed: 2))
        dir.file("wt/wiki.valid.tokens", sampleText(lines: 60, seed: 3))
        dir.file("wt/wiki.test.tokens", sampleText(lines: 60, seed: 4))
        let given = Self.tiny.merging([
            "data_dir": .string(dir.url.appendingPathComponent("wt").path), "level": "word", "max_vocabulary": 10,
            "steps": 10,
        ]) { $1 }
        let r = try run(LanguageModelTask(), given)
        #expect(r["vocabulary"]?.doubleValue == 10)
        #expect(throws: ParameterError("max_vocabulary", "applies to level = word (bytes always have 256)")) {
            _ = try LanguageModelTask().validate(given.merging(["level": "byte"]) { $1 })
        }
    }

    /// Interrupt at step 20 of 40 and resume: the final parameters equal an uninterrupted run's,
    /// with dropout, FAVOR+ redraws and fast weights carried across segments all in play; for the
    /// recurrent fast nets, their fast matrices and outputs carried through the checkpoint too.
    @Test(arguments: ["linear", "delta-lstm", "rdn"])
    func resumeWithCarriedStateIsBitIdentical(_ net: String) throws {
        let dir = TemporaryDirectory()
        let train = dir.file("train.txt", sampleText(lines: 300, seed: 5))
        let given = Self.tiny.merging([
            "train": .string(train), "carry": true, "dropout": 0.1, "fast_net": .string(net),
        ]) { $1 }.merging(net == "linear" ? ["feature_map": "favor-4"] : [:]) { $1 }
        let straight = MemoryContext()
        let r1 = try run(LanguageModelTask(), given, context: straight)
        let interrupted = MemoryContext(cancelWhen: { $0.kind == "eval" && $0.step == 20 })
        #expect(throws: TaskError.cancelled) { try run(LanguageModelTask(), given, context: interrupted) }
        let resumed = MemoryContext(checkpoints: interrupted.checkpoints)
        let r2 = try run(LanguageModelTask(), given, context: resumed)
        let a = try TrainingCheckpoint.decode(straight.checkpoints.last!.data)
        let b = try TrainingCheckpoint.decode(resumed.checkpoints.last!.data)
        #expect(a.model.parameters == b.model.parameters)
        #expect(a.extraTensors.map(\.tensor) == b.extraTensors.map(\.tensor), "carried state and best parameters match")
        #expect(r1["best_valid_loss"] == r2["best_valid_loss"])
    }

    /// eval carries exactly when the checkpoint was trained carrying, unless told otherwise; the
    /// carrying evaluation of a carried model equals the lm task's own validation.
    @Test func evalFollowsTheCheckpointsTrainingMode() throws {
        let dir = TemporaryDirectory()
        let train = dir.file("train.txt", sampleText(lines: 300, seed: 16))
        let valid = dir.file("valid.txt", sampleText(lines: 40, seed: 17))
        for carry in [false, true] {
            let ctx = MemoryContext()
            let r = try run(
                LanguageModelTask(),
                Self.tiny.merging(["train": .string(train), "valid": .string(valid), "batch": 1, "carry": .bool(carry)])
                { $1 },
                context: ctx)
            let best = dir.url.appendingPathComponent("best-\(carry).safetensors")
            try ctx.checkpoints.last { $0.best }!.data.write(to: best)
            #expect(try TrainingCheckpoint.decode(Data(contentsOf: best)).extra["carry"] == "\(carry)")
            let e = try run(EvalTask(), ["checkpoint": .string(best.path), "text": .string(valid)])
            #expect(e["carry"] == .bool(carry))
            #expect(e["loss"] == r["best_valid_loss"], "carry \(carry): eval as the training's validation")
            let other = try run(
                EvalTask(), ["checkpoint": .string(best.path), "text": .string(valid), "carry": .bool(!carry)])
            #expect(other["carry"] == .bool(!carry) && other["loss"] != e["loss"])
        }
    }

    /// A model shared without optimiser state (no `optimizer.*` tensors, no `optimizer`/`step`
    /// metadata) loads for eval and generate, and lm refuses to resume from it by name.
    @Test func modelWithoutOptimizerStateLoadsForEvalButNotForResuming() throws {
        let dir = TemporaryDirectory()
        let train = dir.file("train.txt", sampleText(lines: 300, seed: 18))
        let ctx = MemoryContext()
        let given = Self.tiny.merging(["train": .string(train), "steps": 10]) { $1 }
        _ = try run(LanguageModelTask(), given, context: ctx)
        var c = try TrainingCheckpoint.decode(ctx.checkpoints.last!.data)
        c.optimizer = nil
        c.rng = nil
        let bytes = c.encoded()
        let names = try Safetensors.decode(bytes).tensors.map(\.name)
        #expect(!names.contains { $0.hasPrefix("optimizer.") })
        let shared = dir.url.appendingPathComponent("shared.safetensors")
        try bytes.write(to: shared)
        let e = try run(EvalTask(), ["checkpoint": .string(shared.path), "text": .string(train)])
        #expect(e["loss"]?.doubleValue?.isFinite == true)
        let g = try run(GenerateTask(), ["checkpoint": .string(shared.path), "max_tokens": 5, "temperature": 0])
        #expect(g["tokens"] == 5)
        let resume = MemoryContext(checkpoints: [(10, bytes, false)])
        #expect(throws: TaskError.self) {
            try run(LanguageModelTask(), given.merging(["steps": 20]) { $1 }, context: resume)
        }
    }

    /// The carried position is stored exactly past 2^24 tokens, where float32 would round it;
    /// files that hold it as a float32 tensor still load.
    @Test func carriedPositionIsExact() throws {
        let model = try LanguageModel(
            config: LMConfig(vocabularySize: 256, modelSize: 16, layers: 1, heads: 2, headSize: 8, feedForwardSize: 32),
            seed: 1)
        let fresh = model.initialState(batch: 1)
        let tensors = fresh.layers.enumerated().map {
            ("state.\($0.offset).weights", Tensor(shape: [$0.element.weights.count], storage: $0.element.weights))
        }
        let exact = try LanguageModelTask().restoreState(tensors, position: "16777217", into: fresh)
        #expect(exact.position == 16_777_217)
        let old = try LanguageModelTask().restoreState(
            tensors + [("state.position", Tensor(shape: [1], storage: [4096]))], position: nil, into: fresh)
        #expect(old.position == 4096)
        #expect(throws: TaskError.self) { try LanguageModelTask().restoreState(tensors, position: "-3", into: fresh) }
    }

    @Test func evalAndGenerateUseTheCheckpoint() throws {
        let dir = TemporaryDirectory()
        let train = dir.file("train.txt", sampleText(lines: 300, seed: 6))
        let valid = dir.file("valid.txt", sampleText(lines: 40, seed: 7))
        let ctx = MemoryContext()
        let r = try run(
            LanguageModelTask(),
            Self.tiny.merging(["train": .string(train), "valid": .string(valid), "batch": 1]) { $1 }, context: ctx)
        let best = dir.url.appendingPathComponent("best.safetensors")
        try ctx.checkpoints.last { $0.best }!.data.write(to: best)
        // eval on the validation file with the training setup reproduces the reported best loss.
        let e = try run(EvalTask(), ["checkpoint": .string(best.path), "text": .string(valid), "batch": 1])
        #expect(e["loss"] == r["best_valid_loss"])
        #expect(e["bits_per_byte"] != nil)
        let carried = try run(EvalTask(), ["checkpoint": .string(best.path), "text": .string(valid), "carry": true])
        #expect(carried["loss"] != e["loss"], "carrying fast weights changes the evaluation")
        // Sliding windows as wide as their stride are the segments; a stride of 1 gives more context.
        let coarse = try run(
            EvalTask(), ["checkpoint": .string(best.path), "text": .string(valid), "sliding_stride": 16])
        let segmentLoss = e["loss"]!.doubleValue!
        #expect(abs(coarse["loss"]!.doubleValue! - segmentLoss) < 1e-6 * segmentLoss)
        #expect(coarse["tokens"] == e["tokens"])
        let fine = try run(EvalTask(), ["checkpoint": .string(best.path), "text": .string(valid), "sliding_stride": 1])
        #expect(fine["tokens"] == e["tokens"] && fine["loss"] != e["loss"], "the same targets, with other contexts")
        // generate: seeded sampling is reproducible and streams text events.
        let g = MemoryContext()
        let out1 = try run(
            GenerateTask(), ["checkpoint": .string(best.path), "prompt": "the ", "max_tokens": 30, "seed": 3],
            context: g)
        let out2 = try run(
            GenerateTask(), ["checkpoint": .string(best.path), "prompt": "the ", "max_tokens": 30, "seed": 3])
        #expect(out1 == out2)
        #expect(out1["tokens"] == 30)
        #expect(g.events.filter { $0.kind == "text" }.compactMap(\.message).joined() == out1["text"]?.stringValue)
        let greedy = try run(
            GenerateTask(), ["checkpoint": .string(best.path), "prompt": "the ", "max_tokens": 10, "temperature": 0])
        #expect(greedy["text"]?.stringValue?.isEmpty == false)
    }
}

@Suite struct ExecTaskTests {
    func run(_ given: [String: JSONValue], context: MemoryContext = MemoryContext()) throws -> JSONValue {
        let t = ExecTask()
        return try t.run(try t.validate(given), context: context)
    }

    @Test func reportsProgressAndResult() throws {
        let dir = TemporaryDirectory()
        let script = dir.file(
            "ok.sh",
            """
            #!/bin/sh
            echo '{"step": 1, "total": 2, "loss": 0.5}'
            echo 'plain text line'
            echo '{"step": 2, "total": 2, "loss": 0.25, "metrics": {"acc": 1}}'
            echo "arg: $1" >&2
            echo '{"result": {"answer": 42}}'
            """, executable: true)
        let ctx = MemoryContext()
        let r = try run(["program": .string(script), "args": "[\"x y\"]"], context: ctx)
        #expect(r == .object(["answer": 42]))
        let progress = ctx.events.filter { $0.kind == "progress" }
        #expect(progress.map(\.step) == [1, 2])
        #expect(progress.last?.metrics["acc"] == 1)
        #expect(ctx.events.contains { $0.kind == "log" && $0.message == "plain text line" })
    }

    /// `args` as a JSON array of strings (each one argument, spaces kept), or as words in a string.
    @Test func argumentsAsAnArrayOrAsWords() throws {
        let dir = TemporaryDirectory()
        let script = dir.file(
            "args.sh", "#!/bin/sh\necho \"{\\\"result\\\": {\\\"first\\\": \\\"$1\\\", \\\"count\\\": $#}}\"\n",
            executable: true)
        let array = try run(["program": .string(script), "args": .array(["x y", "z"])])
        #expect(array == .object(["first": "x y", "count": 2]))
        let words = try run(["program": .string(script), "args": "a b c"])
        #expect(words == .object(["first": "a", "count": 3]))
        #expect(throws: ParameterError.self) {
            try ExecTask().validate(["program": .string(script), "args": .array([1])])
        }
    }

    @Test func crashingChildFailsTheJob() throws {
        let dir = TemporaryDirectory()
        let crash = dir.file("crash.sh", "#!/bin/sh\necho '{\"step\": 1}'\nexit 3\n", executable: true)
        #expect(throws: TaskError.failed(code: .exitStatus, message: "\(crash) exited with status 3")) {
            try run(["program": .string(crash)])
        }
        let segv = dir.file("segv.sh", "#!/bin/sh\nkill -SEGV $$\n", executable: true)
        #expect(throws: TaskError.failed(code: .signal, message: "\(segv) was killed by signal 11")) {
            try run(["program": .string(segv)])
        }
    }

    @Test func hangingChildIsKilledOnCancel() throws {
        let dir = TemporaryDirectory()
        // Ignores SIGTERM, and so does the sleep it starts: only SIGKILL to the group ends them.
        let hang = dir.file("hang.sh", "#!/bin/sh\ntrap '' TERM\necho '{\"step\": 1}'\nsleep 60\n", executable: true)
        let ctx = MemoryContext(cancelWhen: { $0.step == 1 })
        let start = Date()
        #expect(throws: TaskError.cancelled) { try run(["program": .string(hang), "grace": 0.5], context: ctx) }
        #expect(Date().timeIntervalSince(start) < 10, "SIGKILL after the grace period ends it")
        let timeout = dir.file("slow.sh", "#!/bin/sh\nsleep 60\n", executable: true)
        #expect(throws: TaskError.failed(code: .timeout, message: "\(timeout) ran longer than 0.3 s and was stopped")) {
            try run(["program": .string(timeout), "timeout": 0.3, "grace": 0.2])
        }
    }
}

/// A file given where a checkpoint or text belongs is refused without any of its bytes in the
/// message: the reason is named, the content is not.
@Suite struct ErrorMessageTests {
    @Test func refusalsNeverEchoFileBytes() throws {
        let dir = TemporaryDirectory()
        let secret = "SECRET-7f3a9c-password=hunter2\nsecond line of the secret\n"
        var looksLikeSafetensors = Data()
        let header =
            #"{"__metadata__":{"format":"SECRET-7f3a9c"},"SECRET-TENSOR":{"dtype":"SECRETDT","shape":[1],"data_offsets":[0,4]}}"#
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { looksLikeSafetensors.append(contentsOf: $0) }
        looksLikeSafetensors.append(Data(header.utf8))
        looksLikeSafetensors.append(Data(count: 4))
        let files = [
            dir.file("plain.txt", secret),
            dir.url.appendingPathComponent("fake.safetensors").path,
        ]
        try looksLikeSafetensors.write(to: URL(fileURLWithPath: files[1]))
        for f in files {
            for module in [EvalTask() as any TaskModule, GenerateTask()] {
                var given: [String: JSONValue] = ["checkpoint": .string(f)]
                if module.name == "eval" { given["text"] = .string(files[0]) }
                do {
                    _ = try module.validate(given)
                    Issue.record("\(module.name) accepted \(f)")
                } catch {
                    let message = "\(error)"
                    for leak in ["SECRET", "7f3a9c", "hunter2", "TENSOR", "SECRETDT"] {
                        #expect(!message.contains(leak), "\(module.name): \(message)")
                    }
                    #expect(message.contains("checkpoint"), "names the parameter: \(message)")
                }
            }
        }
    }
}

/// How the shards of a batch are spread over ranks.
@Suite struct DataParallelAssignmentTests {
    @Test func runsAreContiguousNonEmptyAndAsEvenAsShardsAllow() {
        for batch in [1, 2, 5, 16, 17, 40, 96, 333] {
            let layout = ShardLayout(batch: batch)
            let sizes = (0..<layout.count).map { layout.sequences(of: $0).count }
            for ranks in 1...min(layout.count, 40) {
                guard let runs = DataParallel.assignment(shardSizes: sizes, ranks: ranks) else {
                    Issue.record("batch \(batch), \(ranks) ranks: no assignment")
                    continue
                }
                #expect(runs.count == ranks && runs.first?.lowerBound == 0 && runs.last?.upperBound == layout.count)
                #expect(zip(runs, runs.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
                #expect(runs.allSatisfy { !$0.isEmpty })
                // No contiguous split has a smaller largest load (checked exhaustively for two ranks).
                let largest = runs.map { r in r.reduce(0) { $0 + sizes[$1] } }.max()!
                if ranks == 2 {
                    let best = (1..<sizes.count).map { cut in
                        max(sizes[..<cut].reduce(0, +), sizes[cut...].reduce(0, +))
                    }.min()!
                    #expect(largest == best, "batch \(batch): \(largest) vs \(best)")
                }
                #expect(largest <= (batch + ranks - 1) / ranks + 4, "batch \(batch), \(ranks) ranks: \(largest)")
            }
            #expect(DataParallel.assignment(shardSizes: sizes, ranks: layout.count + 1) == nil)
        }
    }
}

/// Sliding-window evaluation against a second algorithm: every target scored by running the model
/// alone on the context the definition gives it (the tokens from its window's start up to it).
@Suite struct SlidingWindowEvaluationTests {
    func model(softmax: Bool) throws -> LanguageModel {
        var config = LMConfig(
            vocabularySize: 11, modelSize: 8, layers: 2, heads: 2, headSize: 4, feedForwardSize: 16,
            attention: softmax ? .softmax : .fastWeight, sinusoidalPositions: softmax, initStd: 0.3)
        config.embeddingScale = softmax ? 2 : 1
        return try LanguageModel(config: config, seed: 3)
    }

    /// The loss of `target` given exactly `context`, from a forward pass over the context alone.
    func loss(_ m: LanguageModel, context: [Int], target: Int) -> Double {
        var none: ModelState? = nil
        var rng = FWPRandom(seed: 0)
        let (logits, _) = m.forward(tokens: context, batch: 1, state: &none, training: false, rng: &rng)
        let v = m.config.vocabularySize
        let row = Array(logits.storage[(context.count - 1) * v..<context.count * v]).map(Double.init)
        let top = row.max()!
        return top + Foundation.log(row.map { Foundation.exp($0 - top) }.reduce(0, +)) - row[target]
    }

    @Test(arguments: [(true, 1), (true, 3), (false, 1), (false, 4)])
    func everyTargetSeesItsWindow(_ softmax: Bool, _ stride: Int) throws {
        let m = try model(softmax: softmax)
        var rng = FWPRandom(seed: 9)
        let tokens = (0..<70).map { _ in Int(rng.next() % 11) }
        let window = 6, rows = 2, segments = 4
        let (got, n) = try evaluateSliding(
            m, tokens: tokens, rows: rows, window: window, stride: stride, maxSegments: segments, windowsPerCall: 5)
        // The rows of BatchedStream: 35 tokens each; targets 1...24 of each row are scored.
        var total = 0.0, count = 0
        let length = segments * window
        for r in 0..<rows {
            let row = Array(tokens[(r * 35)..<(r * 35 + 35)])
            for j in 1...length {
                // The window that scores target j ends at the first end ≥ j among window, window + stride, …
                // (the last capped at length); it starts `window` tokens before its end.
                var end = window
                while end < j { end = min(end + stride, length) }
                total += loss(m, context: Array(row[(end - window)..<j]), target: row[j])
                count += 1
            }
        }
        #expect(n == count && n == rows * length)
        #expect(
            abs(got - total / Double(count)) < 1e-5 * abs(got),
            "sliding \(got), one context at a time \(total / Double(count))")
    }

    /// With the stride equal to the window, the windows are the segments: the segment-wise figure.
    @Test func strideOfAWindowIsTheSegmentWiseEvaluation() throws {
        let m = try model(softmax: true)
        var rng = FWPRandom(seed: 4)
        let tokens = (0..<100).map { _ in Int(rng.next() % 11) }
        let (sliding, n1) = try evaluateSliding(m, tokens: tokens, rows: 3, window: 8, stride: 8, maxSegments: 3)
        let (segments, n2) = try evaluateStream(m, tokens: tokens, batch: 3, segment: 8, carry: false, maxSegments: 3)
        #expect(n1 == n2)
        #expect(abs(sliding - segments) < 1e-6 * segments, "\(sliding) vs \(segments)")
        // A stride of 1 gives the later targets more context, so the figure changes.
        let (fine, _) = try evaluateSliding(m, tokens: tokens, rows: 3, window: 8, stride: 1, maxSegments: 3)
        #expect(abs(fine - segments) > 1e-4, "\(fine) vs \(segments)")
    }

    @Test func theTaskReportsBothAndRefusesAStrideBeyondTheSegment() throws {
        let dir = TemporaryDirectory()
        let train = dir.file("train.txt", sampleText(lines: 400, seed: 1))
        let test = dir.file("test.txt", sampleText(lines: 40, seed: 5))
        let task = LanguageModelTask()
        var given = LanguageModelTaskTests.tiny.merging([
            "train": .string(train), "test": .string(test), "attention": "softmax", "positions": true,
            "scale_embeddings": true, "sliding_stride": 4, "eval_segments": 3, "steps": 20,
        ]) { $1 }
        let r = try task.run(try task.validate(given), context: MemoryContext())
        for key in ["best_valid_sliding_bits_per_byte", "test_sliding_bits_per_byte", "best_valid_bits_per_byte"] {
            #expect(r[key]?.doubleValue.map { $0 > 0 && $0 < 8 } == true, "\(key): \(String(describing: r[key]))")
        }
        given["sliding_stride"] = 17
        #expect(throws: ParameterError("sliding_stride", "must be at most segment (16), got 17")) {
            _ = try task.validate(given)
        }
    }
}
