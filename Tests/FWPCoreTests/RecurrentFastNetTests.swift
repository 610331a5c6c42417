import Testing

@testable import FWPCore

/// The recurrent fast nets (Delta RNN, Delta LSTM, RDN) beyond the shared variant tests.
@Suite struct RecurrentFastNetTests {
    /// Gradients of the layer started from a random carried state (fast matrices, y and c), with
    /// several stored states per segment: the backward must replay from the carried matrices.
    @Test(arguments: [FastNet.deltaRNN, .deltaLSTM, .rdn])
    func layerGradientsFromCarriedState(_ net: FastNet) {
        let config = Variant(rule: .delta, normalization: .sum, fastNet: net).config()
        var store = ParameterStore(), buffers = ParameterStore()
        var rng = FWPRandom(seed: 41)
        var layer = AttentionLayer(prefix: "attn", config: config, store: &store, buffers: &buffers, rng: &rng)
        layer.recurrentNet?.checkpointInterval = 2
        let batch = 2, steps = 5
        var start = layer.initialState(batch: batch)
        start.weights = TensorStorage(randomTensor([start.weights.count], seed: 42).elements.map { 0.5 * $0 })
        start.recurrent = TensorStorage(randomTensor([start.recurrent.count], seed: 43).elements.map { 0.5 * $0 })
        let x = randomTensor([batch * steps, config.modelSize], seed: 44)
        let r = randomTensor([batch * steps, config.modelSize], seed: 45)
        func output(_ x: Tensor, _ p: ParameterStore) -> Tensor {
            var state: AttentionState? = start
            var rng = FWPRandom(seed: 0)
            return layer.forward(
                x, batch: batch, steps: steps, p, buffers, state: &state, training: false, rng: &rng,
                threads: ComputeThreads(2)
            ).0
        }
        var state: AttentionState? = start
        var frng = FWPRandom(seed: 0)
        let (_, cache) = layer.forward(
            x, batch: batch, steps: steps, store, buffers, state: &state, training: false, rng: &frng,
            threads: ComputeThreads(2))
        #expect(state!.recurrent != start.recurrent, "the segment advanced the carried state")
        var g = store.zerosLike()
        let dx = layer.backward(r, cache: cache, store, &g, threads: ComputeThreads(2))
        expectGradient("\(net) x", values: x, analytic: dx, samples: 10) { weightedSum(output($0, store), r) }
        for i in store.values.indices {
            expectGradient("\(net) \(store.names[i])", values: store.values[i], analytic: g.values[i], samples: 8) {
                var s = store
                s.values[i] = $0
                return weightedSum(output(x, s), r)
            }
        }
    }
}
