import Foundation

/// Everything needed to continue training exactly: model, optimiser, step, RNG, extra metadata.
public struct TrainingCheckpoint: Sendable {
    public var model: LanguageModel
    public var optimizer: AdamW?
    public var rng: FWPRandom?
    /// Caller-defined string metadata (data position, task name, …), kept verbatim.
    public var extra: [String: String]

    public init(model: LanguageModel, optimizer: AdamW? = nil, rng: FWPRandom? = nil, extra: [String: String] = [:]) {
        self.model = model
        self.optimizer = optimizer
        self.rng = rng
        self.extra = extra
    }

    /// Format tag in the metadata; readers refuse other values.
    public static let format = "fwp.lm.v1"

    struct OptimizerSettings: Codable {
        var schedule: LearningRateSchedule
        var beta1: Double, beta2: Double, epsilon: Double, weightDecay: Double, maxGradientNorm: Double
    }

    /// The checkpoint as safetensors bytes.
    ///
    /// Tensors: the model's parameters and buffers under their own names, then the optimiser's
    /// moments as `optimizer.exp_avg.<name>` and `optimizer.exp_avg_sq.<name>`. Metadata:
    /// `format`, `config` (LMConfig JSON), `step`, `rng`, `optimizer` (settings JSON),
    /// `crc32` of the data region, plus `extra` under `extra.<key>`.
    public func encoded() -> Data {
        var tensors: [(name: String, tensor: Tensor)] = []
        for (n, t) in zip(model.parameters.names, model.parameters.values) { tensors.append((n, t)) }
        for (n, t) in zip(model.buffers.names, model.buffers.values) { tensors.append((n, t)) }
        var meta: [String: String] = ["format": Self.format]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        meta["config"] = String(decoding: try! encoder.encode(model.config), as: UTF8.self)
        if let optimizer {
            for (n, t) in zip(optimizer.firstMoment.names, optimizer.firstMoment.values) { tensors.append(("optimizer.exp_avg.\(n)", t)) }
            for (n, t) in zip(optimizer.secondMoment.names, optimizer.secondMoment.values) {
                tensors.append(("optimizer.exp_avg_sq.\(n)", t))
            }
            meta["step"] = String(optimizer.step)
            let s = OptimizerSettings(
                schedule: optimizer.schedule, beta1: optimizer.beta1, beta2: optimizer.beta2, epsilon: optimizer.epsilon,
                weightDecay: optimizer.weightDecay, maxGradientNorm: optimizer.maxGradientNorm)
            meta["optimizer"] = String(decoding: try! encoder.encode(s), as: UTF8.self)
        }
        if let rng { meta["rng"] = rng.hexState }
        for (k, v) in extra { meta["extra.\(k)"] = v }
        meta["crc32"] = String(format: "%08x", Safetensors.dataChecksum(of: tensors))
        return Safetensors(metadata: meta, tensors: tensors).encoded()
    }

    /// Parses checkpoint bytes, checking format, checksum, config, names, shapes and dtype.
    ///
    /// With `expecting`, the stored config must equal it. Throws `FWPError.checkpoint` naming
    /// the first problem found.
    public static func decode(_ data: Data, expecting: LMConfig? = nil) throws -> TrainingCheckpoint {
        let file = try Safetensors.decode(data)
        let meta = file.metadata
        guard let format = meta["format"] else { throw FWPError.checkpoint("no 'format' in metadata: not an fwp checkpoint") }
        guard format == Self.format else { throw FWPError.checkpoint("format '\(format)' is not \(Self.format)") }
        if let stored = meta["crc32"] {
            let actual = String(format: "%08x", Safetensors.dataChecksum(of: file.tensors))
            guard stored == actual else { throw FWPError.checkpoint("data checksum \(actual) differs from stored \(stored) (corrupt file)") }
        }
        guard let configJSON = meta["config"] else { throw FWPError.checkpoint("no model config in metadata") }
        let config: LMConfig
        do {
            config = try JSONDecoder().decode(LMConfig.self, from: Data(configJSON.utf8))
        } catch {
            throw FWPError.checkpoint("model config does not parse: \(error)")
        }
        if let expecting, expecting != config {
            throw FWPError.checkpoint("checkpoint's model config differs from the expected one")
        }
        var model: LanguageModel
        do {
            model = try LanguageModel(config: config, seed: 0)
        } catch {
            throw FWPError.checkpoint("stored model config is invalid: \(error)")
        }
        var byName: [String: Tensor] = [:]
        for (n, t) in file.tensors { byName[n] = t }
        func fill(_ store: inout ParameterStore, prefix: String) throws {
            for (i, n) in store.names.enumerated() {
                guard let t = byName.removeValue(forKey: prefix + n) else { throw FWPError.checkpoint("tensor \(prefix + n) is missing") }
                guard t.shape == store.values[i].shape else {
                    throw FWPError.checkpoint("tensor \(prefix + n) has shape \(t.shape), the config needs \(store.values[i].shape)")
                }
                store.values[i] = t
            }
        }
        try fill(&model.parameters, prefix: "")
        try fill(&model.buffers, prefix: "")
        var optimizer: AdamW? = nil
        if let settingsJSON = meta["optimizer"] {
            guard let s = try? JSONDecoder().decode(OptimizerSettings.self, from: Data(settingsJSON.utf8)) else {
                throw FWPError.checkpoint("optimizer settings do not parse")
            }
            guard let stepText = meta["step"], let step = Int(stepText), step >= 0 else {
                throw FWPError.checkpoint("missing or malformed 'step'")
            }
            var o = AdamW(
                parameters: model.parameters, schedule: s.schedule, beta1: s.beta1, beta2: s.beta2, epsilon: s.epsilon,
                weightDecay: s.weightDecay, maxGradientNorm: s.maxGradientNorm)
            try fill(&o.firstMoment, prefix: "optimizer.exp_avg.")
            try fill(&o.secondMoment, prefix: "optimizer.exp_avg_sq.")
            o.step = step
            optimizer = o
        }
        var rng: FWPRandom? = nil
        if let hex = meta["rng"] {
            guard let r = FWPRandom(hexState: hex) else { throw FWPError.checkpoint("malformed rng state") }
            rng = r
        }
        if let extraName = byName.keys.sorted().first {
            throw FWPError.checkpoint("unexpected tensor \(extraName) for this config")
        }
        var extra: [String: String] = [:]
        for (k, v) in meta where k.hasPrefix("extra.") { extra[String(k.dropFirst(6))] = v }
        return TrainingCheckpoint(model: model, optimizer: optimizer, rng: rng, extra: extra)
    }
}
