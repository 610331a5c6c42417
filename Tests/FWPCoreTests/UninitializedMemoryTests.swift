import Foundation
import Testing

@testable import FWPCore

/// Buffers allocated without initialisation must be written before they are read. With
/// poisoning on they start as NaN, so any element read before it is written reaches the loss or
/// a gradient; the test checks those are finite and bit-identical to a run without poisoning.
@Suite struct UninitializedMemoryTests {
    @Test(arguments: [
        // Chunkwise delta and sum rules on segments with a partial last chunk (37 = 2·16 + 5).
        (Variant(featureMap: "elu", rule: .delta, normalization: .sum), 37),
        (Variant(featureMap: "elu", rule: .sum, normalization: .sum), 37),
        (Variant(featureMap: "dpfp-2", rule: .delta, normalization: .sum), 37),
        (Variant(featureMap: "favor-4", rule: .sum, normalization: .sum), 37),
        // The recurrence (attention normalisation; with the delta rule its denominator can cross
        // zero on random data this long, so the sum rule) and softmax over three causal blocks,
        // the last partial.
        (Variant(featureMap: "elu", rule: .sum, normalization: .attention), 37),
        (Variant(attention: .softmax), 150),
    ])
    func uninitialisedBuffersAreWrittenBeforeTheyAreRead(_ variant: Variant, steps: Int) throws {
        var config = variant.config(modelSize: 16, heads: 2, headSize: 8, layers: 2)
        config.vocabularySize = 11
        config.feedForwardSize = 32
        var model = try LanguageModel(config: config, seed: 5)
        model.threads = ComputeThreads(2)
        let batch = 3
        var rng = FWPRandom(seed: 6)
        let tokens = (0..<(batch * steps)).map { _ in Int(rng.next() % 11) }
        let targets = tokens.map { ($0 + 1) % 11 }
        func run() -> (Double, [[Float]]) {
            var none: ModelState? = nil
            var r = FWPRandom(seed: 7)
            let (loss, g) = model.lossAndGradients(
                tokens: tokens, targets: targets, batch: batch, state: &none, training: true, rng: &r)
            return (loss, g.values.map(\.elements))
        }
        // The switch is process-wide and other tests may run meanwhile; poisoning changes no
        // result of correct code, so they are unaffected either way. It is restored afterwards.
        let wasPoisoned = UninitializedMemory.isPoisoned
        UninitializedMemory.setPoison(false)
        let (plainLoss, plainGrads) = run()
        UninitializedMemory.setPoison(true)
        let (poisonedLoss, poisonedGrads) = run()
        UninitializedMemory.setPoison(wasPoisoned)
        #expect(poisonedLoss.isFinite)
        #expect(poisonedLoss == plainLoss)
        for (i, name) in model.parameters.names.enumerated() {
            let plainFinite = plainGrads[i].allSatisfy { $0.isFinite }
            #expect(plainFinite, "plain run: \(name) not finite")
            let finite = poisonedGrads[i].allSatisfy { $0.isFinite }
            #expect(finite, "a NaN reached the gradient of \(name)")
            #expect(!finite || poisonedGrads[i] == plainGrads[i], "gradient of \(name) changed")
        }
    }
}
