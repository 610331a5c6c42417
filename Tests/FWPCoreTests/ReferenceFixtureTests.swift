import Foundation
import Testing

@testable import FWPCore

/// Comparisons against the independent float64 numpy reference (Tests/Reference/reference.py).
@Suite struct ReferenceFixtureTests {
    @Test(arguments: ["elu", "silu", "dpfp-1", "dpfp-2", "dpfp-3", "favor-6"])
    func featureMapMatchesReference(_ name: String) throws {
        let json = try loadJSON("feature_maps.json") as! [String: Any]
        let x = tensor(fromJSON: json["x"]!)
        let projection = tensor(fromJSON: json["projection"]!)
        let expected = tensor(fromJSON: (json["outputs"] as! [String: Any])[name]!)
        let map = FeatureMap(FeatureMapKind(name: name)!, inputSize: x.columns)
        let y = map.forward(x, projection: projection)
        #expect(y.shape == expected.shape)
        #expect(maxRelativeError(y, expected) < 1e-5, "\(name) differs from the float64 reference")
    }

    @Test func fastWeightMemoriesMatchReference() throws {
        let cases = try loadJSON("fast_weights.json") as! [[String: Any]]
        #expect(cases.count == 13)
        for c in cases {
            let rule = UpdateRule(rawValue: c["rule"] as! String)!
            let norm = Normalization(rawValue: c["normalization"] as! String)!
            let kind = FeatureMapKind(name: c["featureMap"] as! String)!
            let qr = tensor(fromJSON: c["q"]!), kr = tensor(fromJSON: c["k"]!), v = tensor(fromJSON: c["v"]!)
            let beta = tensor(fromJSON: c["beta"]!)
            let expected = tensor(fromJSON: c["y"]!)
            let projection = c["projection"].map { tensor(fromJSON: $0) }
            let map = FeatureMap(kind, inputSize: qr.columns)
            var q = map.forward(qr, projection: projection), k = map.forward(kr, projection: projection)
            if norm == .sum {
                q = SumNormalization.forward(q).0
                k = SumNormalization.forward(k).0
            } else if norm == .l2 {
                q = L2Normalization.forward(q).0
                k = L2Normalization.forward(k).0
            }
            let steps = q.rows, dk = q.columns, dv = v.columns
            if rule == .gatedDelta {
                let logDecay = tensor(fromJSON: c["decay"]!).storage.map { logf($0) }
                var y = [Float](repeating: 0, count: steps * dv), w = [Float](repeating: 0, count: dv * dk)
                let kernel = GatedDeltaKernel(
                    steps: steps, keySize: dk, valueSize: dv, keyStride: dk, valueStride: dv, gateStride: 1,
                    chunkSize: 4)
                kernel.forwardRecurrent(
                    q: q.elements, k: k.elements, v: v.elements, beta: beta.elements, logDecay: logDecay, y: &y, w: &w,
                    saved: nil)
                var scratch = [Float](repeating: 0, count: kernel.chunkwiseScratchCount)
                var saved = [Float](repeating: 0, count: kernel.chunkwiseSavedCount)
                var yc = [Float](repeating: 0, count: steps * dv)
                w = [Float](repeating: 0, count: dv * dk)
                kernel.forwardChunkwise(
                    q: q.elements, k: k.elements, v: v.elements, beta: beta.elements, logDecay: logDecay, y: &yc,
                    w: &w, saved: &saved, scratch: &scratch)
                for (form, out) in [("recurrent", y), ("chunkwise", yc)] {
                    let err = maxRelativeError(Tensor(shape: [steps, dv], storage: out), expected, floor: 1e-2)
                    #expect(err < 1e-4, "\(rule)/\(kind.name)/\(norm) \(form): relative error \(err)")
                }
                continue
            }
            let kernel = FastWeightKernel(
                rule: rule, attentionNormalization: norm == .attention, steps: steps, keySize: dk, valueSize: dv,
                keyStride: dk, valueStride: dv, betaStride: 1)
            var y = Tensor(shape: [steps, dv])
            var w = [Float](repeating: 0, count: dv * dk), z = [Float](repeating: 0, count: dk)
            var saved = [Float](repeating: 0, count: steps * dv), den = [Float](repeating: 0, count: steps)
            q.withUnsafePointer { pq in
                k.withUnsafePointer { pk in
                    v.withUnsafePointer { pv in
                        beta.withUnsafePointer { pb in
                            y.withUnsafeMutablePointer { py in
                                kernel.forward(
                                    q: pq, k: pk, v: pv, beta: rule == .delta ? pb : nil, y: py, w: &w, z: &z,
                                    saved: &saved,
                                    denominators: &den)
                            }
                        }
                    }
                }
            }
            let err = maxRelativeError(y, expected, floor: 1e-2)
            #expect(err < 1e-4, "\(rule)/\(kind.name)/\(norm): relative error \(err)")
        }
    }

    @Test(arguments: [
        "delta_dpfp2", "sum_elu_attention", "softmax_positions", "delta_favor3", "softmax_scaled_embeddings",
        "gated_silu_l2", "gated_conv_l2", "delta_rnn", "delta_lstm", "rdn",
    ])
    func twoLayerLanguageModelLoss(_ name: String) throws {
        let data = try Data(contentsOf: fixtureDirectory.appendingPathComponent("lm_\(name).safetensors"))
        let checkpoint = try TrainingCheckpoint.decode(data)
        #expect(checkpoint.model.config.layers == 2)
        let spec = try loadJSON("lm_\(name).json") as! [String: Any]
        let tokens = (spec["tokens"] as! [NSNumber]).map(\.intValue)
        let targets = (spec["targets"] as! [NSNumber]).map(\.intValue)
        let expected = (spec["loss"] as! NSNumber).doubleValue
        var none: ModelState? = nil
        let loss = checkpoint.model.loss(tokens: tokens, targets: targets, batch: spec["batch"] as! Int, state: &none)
        #expect(abs(loss - expected) / expected < 1e-4, "\(name): loss \(loss) vs float64 reference \(expected)")
    }

    /// The softmax fixtures again with every layer on the online form, in blocks of 4 steps (the
    /// reference computes the T × T probabilities).
    @Test(arguments: ["softmax_positions", "softmax_scaled_embeddings"])
    func onlineSoftmaxMatchesReference(_ name: String) throws {
        let data = try Data(contentsOf: fixtureDirectory.appendingPathComponent("lm_\(name).safetensors"))
        var model = try TrainingCheckpoint.decode(data).model
        for i in model.blocks.indices {
            model.blocks[i].attention.onlineFrom = 1
            model.blocks[i].attention.onlineBlock = 4
        }
        let spec = try loadJSON("lm_\(name).json") as! [String: Any]
        let tokens = (spec["tokens"] as! [NSNumber]).map(\.intValue)
        let targets = (spec["targets"] as! [NSNumber]).map(\.intValue)
        let expected = (spec["loss"] as! NSNumber).doubleValue
        #expect(tokens.count / (spec["batch"] as! Int) > 4, "several blocks per sequence")
        var none: ModelState? = nil
        let loss = model.loss(tokens: tokens, targets: targets, batch: spec["batch"] as! Int, state: &none)
        #expect(abs(loss - expected) / expected < 1e-4, "\(name): loss \(loss) vs float64 reference \(expected)")
    }
}
