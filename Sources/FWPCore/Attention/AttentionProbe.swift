/// One attention layer on its own, for benchmarks and experiments outside the language model.
public struct AttentionProbe: Sendable {
    let layer: AttentionLayer
    var parameters: ParameterStore
    var buffers: ParameterStore
    let threads: ComputeThreads

    /// A layer built from the attention fields of `config` (its `modelSize` is the input width).
    public init(config: LMConfig, seed: UInt64 = 1, threads: Int = 1) throws {
        try config.validate()
        Allocator.configureForTraining()
        var store = ParameterStore(), buffers = ParameterStore()
        var rng = FWPRandom(seed: seed)
        layer = AttentionLayer(prefix: "attn", config: config, store: &store, buffers: &buffers, rng: &rng)
        parameters = store
        self.buffers = buffers
        self.threads = ComputeThreads(threads)
    }

    /// Forward and backward (with dL/dy = y) of x (B·T × D); returns dx.
    public func forwardBackward(_ x: Tensor, batch: Int) -> Tensor {
        var none: AttentionState? = nil
        var rng = FWPRandom(seed: 0)
        let (y, cache) = layer.forward(
            x, batch: batch, steps: x.rows / batch, parameters, buffers, state: &none, training: false, rng: &rng,
            threads: threads)
        var g = parameters.zerosLike()
        return layer.backward(y, cache: cache, parameters, &g, threads: threads)
    }

    /// The fast-weight memory alone — feature map, normalisation, β = σ(logits) and the recurrence,
    /// without the projections — forward and backward with dL/dy = y. q, k, v are (B·T) × (H·d)
    /// (head-major within a row), β logits (B·T) × H. Returns dq.
    public func coreForwardBackward(
        q: Tensor, k: Tensor, v: Tensor, betaLogits: Tensor?, batch: Int, algorithm: FastWeightAlgorithm = .automatic
    ) -> Tensor {
        var layer = self.layer
        layer.algorithm = algorithm
        let n = q.rows, steps = n / batch
        let flat = { (t: Tensor) in t.reshaped([n * layer.heads, layer.headSize]) }
        let memory = layer.fastWeight
        var cache = FastWeightAttention.Cache(
            qRaw: flat(q), kRaw: flat(k), v: flat(v), batch: batch, steps: steps, heads: layer.heads,
            headSize: layer.headSize)
        var none: AttentionState? = nil
        var rng = FWPRandom(seed: 0)
        memory.forward(
            &cache, betaLogits: betaLogits, buffers, state: &none, training: false, rng: &rng, threads: threads)
        return memory.backward(cache.core, cache: cache, threads: threads).0
    }
}
