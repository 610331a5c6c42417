import Foundation

/// The language model's architecture and training-time switches, stored in checkpoints as JSON.
public struct LMConfig: Codable, Equatable, Sendable {
    /// Number of token ids (256 for bytes).
    public var vocabularySize: Int
    /// Model width D.
    public var modelSize: Int
    /// Number of blocks.
    public var layers: Int
    /// Attention heads per block.
    public var heads: Int
    /// Key/query/value size per head (d_head).
    public var headSize: Int
    /// Hidden size of the ReLU feed-forward block.
    public var feedForwardSize: Int
    /// softmax or fast-weight.
    public var attention: AttentionKind
    /// φ for fast-weight layers.
    public var featureMap: FeatureMapKind
    /// sum, delta or gated-delta.
    public var updateRule: UpdateRule
    /// none, sum, attention or l2.
    public var normalization: Normalization
    /// Dropout rate on the embedding and on each sub-layer's output.
    public var dropout: Float
    /// Output layer shares the embedding matrix.
    public var tiedEmbeddings: Bool
    /// Adds sinusoidal position encodings to the embeddings.
    public var sinusoidalPositions: Bool
    /// Multiplies the looked-up embeddings by this before positions are added (√D in
    /// Transformer-XL-style code, where embeddings start at std 0.02 and positions at amplitude 1).
    public var embeddingScale: Float
    /// Multiplies fast-weight outputs by 1/√d_head (as the paper's code does).
    public var scaleOutput: Bool
    /// Standard deviation of the normal initialisation of weight matrices and embeddings.
    public var initStd: Float
    /// Width of the causal depthwise convolution (then SiLU) on q, k and v; 0: none.
    public var shortConvolution: Int
    /// The fast net of fast-weight layers: linear, or the recurrent delta-rnn, delta-lstm, rdn.
    public var fastNet: FastNet

    public init(
        vocabularySize: Int = 256, modelSize: Int = 128, layers: Int = 4, heads: Int = 4, headSize: Int = 32,
        feedForwardSize: Int = 512, attention: AttentionKind = .fastWeight, featureMap: FeatureMapKind = .eluPlusOne,
        updateRule: UpdateRule = .delta, normalization: Normalization = .sum, dropout: Float = 0,
        tiedEmbeddings: Bool = false, sinusoidalPositions: Bool = false, scaleOutput: Bool = true,
        initStd: Float = 0.02, embeddingScale: Float = 1, shortConvolution: Int = 0, fastNet: FastNet = .linear
    ) {
        self.shortConvolution = shortConvolution
        self.fastNet = fastNet
        self.vocabularySize = vocabularySize
        self.modelSize = modelSize
        self.layers = layers
        self.heads = heads
        self.headSize = headSize
        self.feedForwardSize = feedForwardSize
        self.attention = attention
        self.featureMap = featureMap
        self.updateRule = updateRule
        self.normalization = normalization
        self.dropout = dropout
        self.tiedEmbeddings = tiedEmbeddings
        self.sinusoidalPositions = sinusoidalPositions
        self.scaleOutput = scaleOutput
        self.initStd = initStd
        self.embeddingScale = embeddingScale
    }

    enum CodingKeys: String, CodingKey {
        case vocabularySize, modelSize, layers, heads, headSize, feedForwardSize, attention, featureMap, updateRule
        case normalization, dropout, tiedEmbeddings, sinusoidalPositions, scaleOutput, initStd, embeddingScale
        case shortConvolution, fastNet
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(vocabularySize, forKey: .vocabularySize)
        try c.encode(modelSize, forKey: .modelSize)
        try c.encode(layers, forKey: .layers)
        try c.encode(heads, forKey: .heads)
        try c.encode(headSize, forKey: .headSize)
        try c.encode(feedForwardSize, forKey: .feedForwardSize)
        try c.encode(attention, forKey: .attention)
        try c.encode(featureMap, forKey: .featureMap)
        try c.encode(updateRule, forKey: .updateRule)
        try c.encode(normalization, forKey: .normalization)
        try c.encode(dropout, forKey: .dropout)
        try c.encode(tiedEmbeddings, forKey: .tiedEmbeddings)
        try c.encode(sinusoidalPositions, forKey: .sinusoidalPositions)
        try c.encode(scaleOutput, forKey: .scaleOutput)
        try c.encode(initStd, forKey: .initStd)
        try c.encode(embeddingScale, forKey: .embeddingScale)
        // Written only when on, so that configs without it read the same as before it existed.
        if shortConvolution != 0 { try c.encode(shortConvolution, forKey: .shortConvolution) }
        if fastNet != .linear { try c.encode(fastNet, forKey: .fastNet) }
    }

    /// Decodes a stored config; `embeddingScale` is 1 in checkpoints written before it existed.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vocabularySize = try c.decode(Int.self, forKey: .vocabularySize)
        modelSize = try c.decode(Int.self, forKey: .modelSize)
        layers = try c.decode(Int.self, forKey: .layers)
        heads = try c.decode(Int.self, forKey: .heads)
        headSize = try c.decode(Int.self, forKey: .headSize)
        feedForwardSize = try c.decode(Int.self, forKey: .feedForwardSize)
        attention = try c.decode(AttentionKind.self, forKey: .attention)
        featureMap = try c.decode(FeatureMapKind.self, forKey: .featureMap)
        updateRule = try c.decode(UpdateRule.self, forKey: .updateRule)
        normalization = try c.decode(Normalization.self, forKey: .normalization)
        dropout = try c.decode(Float.self, forKey: .dropout)
        tiedEmbeddings = try c.decode(Bool.self, forKey: .tiedEmbeddings)
        sinusoidalPositions = try c.decode(Bool.self, forKey: .sinusoidalPositions)
        scaleOutput = try c.decode(Bool.self, forKey: .scaleOutput)
        initStd = try c.decode(Float.self, forKey: .initStd)
        embeddingScale = try c.decodeIfPresent(Float.self, forKey: .embeddingScale) ?? 1
        shortConvolution = try c.decodeIfPresent(Int.self, forKey: .shortConvolution) ?? 0
        fastNet = try c.decodeIfPresent(FastNet.self, forKey: .fastNet) ?? .linear
    }

    /// Throws `FWPError.invalidConfig` naming the first field out of range.
    public func validate() throws {
        func check(_ ok: Bool, _ field: String, _ why: String) throws {
            if !ok { throw FWPError.invalidConfig(field: field, reason: why) }
        }
        try check(vocabularySize >= 2, "vocabularySize", "must be at least 2, got \(vocabularySize)")
        try check(modelSize >= 1, "modelSize", "must be positive, got \(modelSize)")
        try check(layers >= 1, "layers", "must be positive, got \(layers)")
        try check(heads >= 1, "heads", "must be positive, got \(heads)")
        try check(headSize >= 1, "headSize", "must be positive, got \(headSize)")
        try check(feedForwardSize >= 1, "feedForwardSize", "must be positive, got \(feedForwardSize)")
        try check(dropout >= 0 && dropout < 1, "dropout", "must be in [0, 1), got \(dropout)")
        try check(initStd > 0 && initStd.isFinite, "initStd", "must be positive, got \(initStd)")
        try check(
            embeddingScale > 0 && embeddingScale.isFinite, "embeddingScale", "must be positive, got \(embeddingScale)")
        try check(!sinusoidalPositions || modelSize % 2 == 0, "modelSize", "must be even with sinusoidal positions")
        try check(
            shortConvolution >= 0 && shortConvolution <= 64, "shortConvolution",
            "must be 0 (off) to 64, got \(shortConvolution)")
        switch featureMap {
        case .dpfp(let nu): try check(nu >= 1 && nu < 2 * headSize, "featureMap", "DPFP's ν must be in 1..<2·d_head")
        case .favor(let m): try check(m >= 1, "featureMap", "FAVOR+ needs at least one feature")
        default: break
        }
        if attention == .fastWeight && normalization == .attention {
            try check(featureMap != .identity, "normalization", "attention normalisation needs a positive feature map")
        }
        if fastNet != .linear {
            let name = fastNet.rawValue
            try check(attention == .fastWeight, "fastNet", "\(name) is a fast-weight layer (attention fast-weight)")
            try check(updateRule == .delta, "updateRule", "\(name) programs its fast weights by the delta rule")
            try check(shortConvolution == 0, "shortConvolution", "is not offered with \(name)")
            try check(
                normalization != .attention, "normalization",
                "\(name) takes none, sum or l2 (no attention normalisation)")
            if fastNet == .rdn {
                try check(
                    featureMap == .eluPlusOne && normalization == .sum, "featureMap",
                    "the RDN applies softmax to its queries and keys; leave featureMap and normalization at "
                        + "their defaults (elu+1, sum)")
            }
        }
        if attention == .fastWeight && updateRule == .gatedDelta {
            try check(
                normalization != .attention, "normalization",
                "the gated delta rule takes none, sum or l2 (attention normalisation has no decay)")
        }
    }
}

/// Errors the core reports to its callers.
public enum FWPError: Error, Equatable, CustomStringConvertible {
    case invalidConfig(field: String, reason: String)
    case checkpoint(String)
    case invalidInput(String)

    public var description: String {
        switch self {
        case .invalidConfig(let field, let reason): return "invalid model config: \(field) \(reason)"
        case .checkpoint(let m): return "checkpoint: \(m)"
        case .invalidInput(let m): return "invalid input: \(m)"
        }
    }
}
