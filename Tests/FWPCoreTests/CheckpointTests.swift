import Foundation
import Testing

@testable import FWPCore

@Suite struct CheckpointTests {
    func trained(
        steps: Int, config: LMConfig = Variant(featureMap: "favor-3", rule: .delta, normalization: .sum).config()
    ) throws
        -> (LanguageModel, AdamW, FWPRandom)
    {
        var model = try LanguageModel(config: config, seed: 1)
        var opt = AdamW(
            parameters: model.parameters, schedule: LearningRateSchedule(peak: 1e-2, warmupSteps: 2, totalSteps: 20))
        var rng = FWPRandom(seed: 2)
        for _ in 0..<steps {
            let x = (0..<12).map { _ in Int(rng.next() % 9) }
            var none: ModelState? = nil
            let (_, g) = model.lossAndGradients(
                tokens: x, targets: x.reversed(), batch: 2, state: &none, training: true, rng: &rng)
            opt.update(&model.parameters, gradients: g)
        }
        return (model, opt, rng)
    }

    @Test func roundTripIsExact() throws {
        let (model, opt, rng) = try trained(steps: 3)
        let data = TrainingCheckpoint(model: model, optimizer: opt, rng: rng, extra: ["data.offset": "1234"]).encoded()
        let back = try TrainingCheckpoint.decode(data, expecting: model.config)
        #expect(back.model.parameters == model.parameters)
        #expect(back.model.buffers == model.buffers)
        #expect(back.model.buffers.names == ["layers.0.attn.favor_projection"])
        #expect(back.optimizer == opt)
        #expect(back.rng == rng)
        #expect(back.extra == ["data.offset": "1234"])
        #expect(
            TrainingCheckpoint(model: back.model, optimizer: back.optimizer, rng: back.rng, extra: back.extra).encoded()
                == data)
    }

    @Test func tensorNamesAndShapesFollowPyTorch() throws {
        let model = try LanguageModel(
            config: LMConfig(vocabularySize: 50, modelSize: 16, layers: 2, heads: 2, headSize: 8, feedForwardSize: 32),
            seed: 1)
        let file = try Safetensors.decode(TrainingCheckpoint(model: model).encoded())
        #expect(file["embedding.weight"]?.shape == [50, 16])
        #expect(file["layers.1.attn.qkv.weight"]?.shape == [48, 16])
        #expect(file["layers.1.attn.beta.weight"]?.shape == [2, 16])
        #expect(file["layers.1.attn.out.weight"]?.shape == [16, 16])
        #expect(file["layers.0.ff.fc1.weight"]?.shape == [32, 16])
        #expect(file["layers.0.ff.fc2.weight"]?.shape == [16, 32])
        #expect(file["head.weight"]?.shape == [50, 16])
        #expect(file.metadata["format"] == "fwp.lm.v1")
    }

    @Test func resumedTrainingIsBitIdentical() throws {
        let (straight, straightOpt, _) = try trained(steps: 6)
        // Train 3 steps, checkpoint, reload, train 3 more with the restored optimiser and RNG.
        let (half, opt, rng) = try trained(steps: 3)
        let restored = try TrainingCheckpoint.decode(
            TrainingCheckpoint(model: half, optimizer: opt, rng: rng).encoded())
        var model = restored.model, o = restored.optimizer!, r = restored.rng!
        for _ in 0..<3 {
            let x = (0..<12).map { _ in Int(r.next() % 9) }
            var none: ModelState? = nil
            let (_, g) = model.lossAndGradients(
                tokens: x, targets: x.reversed(), batch: 2, state: &none, training: true, rng: &r)
            o.update(&model.parameters, gradients: g)
        }
        #expect(model.parameters == straight.parameters)
        #expect(o == straightOpt)
    }

    @Test func truncatedFilesAreRejected() throws {
        let (model, opt, rng) = try trained(steps: 1)
        let data = TrainingCheckpoint(model: model, optimizer: opt, rng: rng).encoded()
        for cut in [0, 5, 8, 40, data.count / 2, data.count - 1] {
            #expect(throws: FWPError.self, "cut at \(cut)") { try TrainingCheckpoint.decode(data.prefix(cut)) }
        }
        do {
            _ = try TrainingCheckpoint.decode(data.prefix(data.count - 4))
            Issue.record("a truncated file was accepted")
        } catch let e as FWPError {
            #expect(e.description.contains("truncated"), "message says what is wrong: \(e)")
        }
    }

    @Test func corruptFilesAreRejected() throws {
        let (model, opt, rng) = try trained(steps: 1)
        let data = TrainingCheckpoint(model: model, optimizer: opt, rng: rng).encoded()
        var flipped = data
        flipped[data.count - 10] ^= 0x40
        #expect(throws: FWPError.self) { try TrainingCheckpoint.decode(flipped) }
        do {
            _ = try TrainingCheckpoint.decode(flipped)
        } catch let e as FWPError {
            #expect(e.description.contains("checksum"), "\(e)")
        }
        var badHeader = data
        badHeader[10] = 0x7B  // '{' inside the JSON
        badHeader[11] = 0x7B
        #expect(throws: FWPError.self) { try TrainingCheckpoint.decode(badHeader) }
        var hugeLength = data
        hugeLength[6] = 0xFF
        #expect(throws: FWPError.self) { try TrainingCheckpoint.decode(hugeLength) }
        #expect(throws: FWPError.self) { try TrainingCheckpoint.decode(Data(repeating: 0x41, count: 64)) }
    }

    @Test func mismatchedConfigOrShapeIsRejected() throws {
        let (model, _, _) = try trained(steps: 0)
        let data = TrainingCheckpoint(model: model).encoded()
        var other = model.config
        other.heads = 1
        #expect(throws: FWPError.checkpoint("checkpoint's model config differs from the expected one")) {
            try TrainingCheckpoint.decode(data, expecting: other)
        }
        // A file whose config promises a wider model than its tensors hold.
        var file = try Safetensors.decode(data)
        var config = model.config
        config.feedForwardSize += 1
        file.metadata["config"] = String(decoding: try JSONEncoder().encode(config), as: UTF8.self)
        file.metadata["crc32"] = nil
        do {
            _ = try TrainingCheckpoint.decode(file.encoded())
            Issue.record("a shape mismatch was accepted")
        } catch let e as FWPError {
            #expect(e.description.contains("ff.fc1.weight") && e.description.contains("shape"), "\(e)")
        }
        // Another dtype.
        let json = #"{"__metadata__":{"format":"fwp.lm.v1"},"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#
        var raw = Data()
        var header = Data(json.utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { raw.append(contentsOf: $0) }
        raw.append(header)
        raw.append(Data(count: 4))
        do {
            _ = try TrainingCheckpoint.decode(raw)
            Issue.record("F16 accepted")
        } catch let e as FWPError {
            #expect(e.description.contains("only one supported") && !e.description.contains("F16"), "\(e)")
        }
    }
}
