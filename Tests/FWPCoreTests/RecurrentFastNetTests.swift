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
        var start = layer.initialState(batch: 2)
        start.weights = TensorStorage(randomTensor([start.weights.count], seed: 42).elements.map { 0.5 * $0 })
        start.recurrent = TensorStorage(randomTensor([start.recurrent.count], seed: 43).elements.map { 0.5 * $0 })
        var state: AttentionState? = start
        var rng0 = FWPRandom(seed: 0)
        _ = layer.forward(
            randomTensor([10, config.modelSize], seed: 44), batch: 2, steps: 5, store, buffers, state: &state,
            training: false, rng: &rng0, threads: ComputeThreads(2))
        #expect(state!.recurrent != start.recurrent, "the segment advanced the carried state")
        expectLayerGradients("\(net)", layer, store, buffers, start: start, seeds: (44, 45))
    }
}
