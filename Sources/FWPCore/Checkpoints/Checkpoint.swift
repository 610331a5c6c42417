import Foundation

/// A generic checkpoint: named parameters and buffers, optimiser state, RNG state, a config
/// (JSON) and caller metadata, as safetensors bytes. Models define the template the reader fills.
public struct CheckpointContents: Sendable {
    /// Format tag (for example `fwp.lm.v1`); readers refuse other values.
    public var format: String
    /// The model's configuration as JSON.
    public var config: String
    public var parameters: ParameterStore
    public var buffers: ParameterStore
    public var optimizer: AdamW?
    public var rng: FWPRandom?
    /// Caller-defined string metadata, stored as `extra.<key>`.
    public var extra: [String: String]
    /// Caller-defined tensors (carried state and the like), stored as `extra.<name>`.
    public var extraTensors: [(name: String, tensor: Tensor)]

    public init(
        format: String, config: String, parameters: ParameterStore, buffers: ParameterStore = ParameterStore(),
        optimizer: AdamW? = nil, rng: FWPRandom? = nil, extra: [String: String] = [:],
        extraTensors: [(name: String, tensor: Tensor)] = []
    ) {
        self.format = format
        self.config = config
        self.parameters = parameters
        self.buffers = buffers
        self.optimizer = optimizer
        self.rng = rng
        self.extra = extra
        self.extraTensors = extraTensors
    }

    struct OptimizerSettings: Codable {
        var schedule: LearningRateSchedule
        var beta1: Double, beta2: Double, epsilon: Double, weightDecay: Double, maxGradientNorm: Double
    }

    /// The safetensors bytes (layout in docs/MODEL.md).
    public func encoded() -> Data {
        var tensors: [(name: String, tensor: Tensor)] = []
        for (n, t) in zip(parameters.names, parameters.values) { tensors.append((n, t)) }
        for (n, t) in zip(buffers.names, buffers.values) { tensors.append((n, t)) }
        var meta: [String: String] = ["format": format, "config": config]
        if let optimizer {
            for (n, t) in zip(optimizer.firstMoment.names, optimizer.firstMoment.values) {
                tensors.append(("optimizer.exp_avg.\(n)", t))
            }
            for (n, t) in zip(optimizer.secondMoment.names, optimizer.secondMoment.values) {
                tensors.append(("optimizer.exp_avg_sq.\(n)", t))
            }
            meta["step"] = String(optimizer.step)
            let s = OptimizerSettings(
                schedule: optimizer.schedule, beta1: optimizer.beta1, beta2: optimizer.beta2,
                epsilon: optimizer.epsilon,
                weightDecay: optimizer.weightDecay, maxGradientNorm: optimizer.maxGradientNorm)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            meta["optimizer"] = String(decoding: try! encoder.encode(s), as: UTF8.self)
        }
        for (n, t) in extraTensors { tensors.append(("extra.\(n)", t)) }
        if let rng { meta["rng"] = rng.hexState }
        for (k, v) in extra { meta["extra.\(k)"] = v }
        meta["crc32"] = String(format: "%08x", Safetensors.dataChecksum(of: tensors))
        return Safetensors(metadata: meta, tensors: tensors).encoded()
    }

    /// Parses checkpoint bytes of the given format. `template` turns the stored config JSON into
    /// stores with the expected names and shapes (it throws if the config is unacceptable).
    public static func decode(
        _ data: Data, format expectedFormat: String,
        template: (String) throws -> (parameters: ParameterStore, buffers: ParameterStore)
    ) throws -> CheckpointContents {
        let file = try Safetensors.decode(data)
        let meta = file.metadata
        guard let format = meta["format"] else {
            throw FWPError.checkpoint("no 'format' in metadata: not an fwp checkpoint")
        }
        guard format == expectedFormat else { throw FWPError.checkpoint("the format is not \(expectedFormat)") }
        if let stored = meta["crc32"] {
            let actual = String(format: "%08x", Safetensors.dataChecksum(of: file.tensors))
            guard stored == actual else {
                throw FWPError.checkpoint("the data checksum differs from the stored one (corrupt file)")
            }
        }
        guard let config = meta["config"] else { throw FWPError.checkpoint("no model config in metadata") }
        var (parameters, buffers) = try template(config)
        var byName: [String: Tensor] = [:]
        for (n, t) in file.tensors { byName[n] = t }
        func fill(_ store: inout ParameterStore, prefix: String) throws {
            for (i, n) in store.names.enumerated() {
                guard let t = byName.removeValue(forKey: prefix + n) else {
                    throw FWPError.checkpoint("tensor \(prefix + n) is missing")
                }
                guard t.shape == store.values[i].shape else {
                    throw FWPError.checkpoint(
                        "tensor \(prefix + n) does not have the shape the config needs")
                }
                store.values[i] = t
            }
        }
        try fill(&parameters, prefix: "")
        try fill(&buffers, prefix: "")
        var optimizer: AdamW? = nil
        if let settingsJSON = meta["optimizer"] {
            guard let s = try? JSONDecoder().decode(OptimizerSettings.self, from: Data(settingsJSON.utf8)) else {
                throw FWPError.checkpoint("optimizer settings do not parse")
            }
            guard let stepText = meta["step"], let step = Int(stepText), step >= 0 else {
                throw FWPError.checkpoint("missing or malformed 'step'")
            }
            var o = AdamW(
                parameters: parameters, schedule: s.schedule, beta1: s.beta1, beta2: s.beta2, epsilon: s.epsilon,
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
        var extraTensors: [(name: String, tensor: Tensor)] = []
        for (n, t) in file.tensors where n.hasPrefix("extra.") && byName[n] != nil {
            extraTensors.append((String(n.dropFirst(6)), t))
            byName[n] = nil
        }
        if !byName.isEmpty {
            throw FWPError.checkpoint("the file holds a tensor this config does not have")
        }
        var extra: [String: String] = [:]
        for (k, v) in meta where k.hasPrefix("extra.") { extra[String(k.dropFirst(6))] = v }
        return CheckpointContents(
            format: format, config: config, parameters: parameters, buffers: buffers, optimizer: optimizer, rng: rng,
            extra: extra, extraTensors: extraTensors)
    }
}

/// A language model's checkpoint: model, optimiser, RNG, extra metadata and tensors.
public struct TrainingCheckpoint: Sendable {
    public var model: LanguageModel
    public var optimizer: AdamW?
    public var rng: FWPRandom?
    /// Caller-defined string metadata (data position, task name, …), kept verbatim.
    public var extra: [String: String]
    /// Caller-defined tensors (for example carried fast weights), kept verbatim.
    public var extraTensors: [(name: String, tensor: Tensor)]

    public init(
        model: LanguageModel, optimizer: AdamW? = nil, rng: FWPRandom? = nil, extra: [String: String] = [:],
        extraTensors: [(name: String, tensor: Tensor)] = []
    ) {
        self.model = model
        self.optimizer = optimizer
        self.rng = rng
        self.extra = extra
        self.extraTensors = extraTensors
    }

    /// Format tag in the metadata; readers refuse other values.
    public static let format = "fwp.lm.v1"

    /// The checkpoint as safetensors bytes (tensor names and metadata in docs/MODEL.md).
    public func encoded() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return CheckpointContents(
            format: Self.format, config: String(decoding: try! encoder.encode(model.config), as: UTF8.self),
            parameters: model.parameters, buffers: model.buffers, optimizer: optimizer, rng: rng, extra: extra,
            extraTensors: extraTensors
        ).encoded()
    }

    /// Parses checkpoint bytes, checking format, checksum, config, names, shapes and dtype.
    ///
    /// With `expecting`, the stored config must equal it. Throws `FWPError.checkpoint` naming
    /// the first problem found.
    public static func decode(_ data: Data, expecting: LMConfig? = nil) throws -> TrainingCheckpoint {
        var model: LanguageModel? = nil
        let contents = try CheckpointContents.decode(data, format: Self.format) { json in
            let config: LMConfig
            do {
                config = try JSONDecoder().decode(LMConfig.self, from: Data(json.utf8))
            } catch {
                throw FWPError.checkpoint("the model config in the metadata does not parse")
            }
            if let expecting, expecting != config {
                throw FWPError.checkpoint("checkpoint's model config differs from the expected one")
            }
            do {
                model = try LanguageModel(config: config, seed: 0)
            } catch {
                throw FWPError.checkpoint("the stored model config is invalid")
            }
            return (model!.parameters, model!.buffers)
        }
        model!.parameters = contents.parameters
        model!.buffers = contents.buffers
        return TrainingCheckpoint(
            model: model!, optimizer: contents.optimizer, rng: contents.rng, extra: contents.extra,
            extraTensors: contents.extraTensors)
    }
}
