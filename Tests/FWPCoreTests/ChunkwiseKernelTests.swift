import Testing

@testable import FWPCore

/// The chunkwise (WY) form against the per-row recurrence (a second algorithm, itself checked
/// against finite differences in AttentionGradientTests): outputs, final state and every gradient.
@Suite struct ChunkwiseKernelTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var rule: UpdateRule
        var steps: Int
        var chunk: Int
        var testDescription: String { "\(rule) T=\(steps) C=\(chunk)" }
    }

    static let cases: [Case] = [
        Case(rule: .delta, steps: 37, chunk: 8),  // a partial last chunk
        Case(rule: .delta, steps: 32, chunk: 16),
        Case(rule: .delta, steps: 37, chunk: 12),  // rows of 12: partial vectors in the C × C steps
        Case(rule: .delta, steps: 5, chunk: 16),  // one chunk shorter than C
        Case(rule: .delta, steps: 64, chunk: 64),
        Case(rule: .sum, steps: 37, chunk: 8),
        Case(rule: .sum, steps: 64, chunk: 64),
    ]

    @Test(arguments: cases)
    func matchesRecurrence(_ tc: Case) {
        // Two interleaved heads, so that strides differ from widths.
        let heads = 2, dk = 12, dv = 9, T = tc.steps
        let ks = heads * dk, vs = heads * dv
        var rng = FWPRandom(seed: UInt64(T * 31 + tc.chunk))
        func rand(_ n: Int, _ scale: Float) -> [Float] { (0..<n).map { _ in Float(rng.normal()) * scale } }
        // Keys/queries sum-normalised positive features, as the model feeds them.
        func features(_ n: Int) -> [Float] {
            var x = (0..<n).map { _ in Float(rng.uniform()) + 0.05 }
            for r in 0..<(n / dk) {
                let s = x[(r * dk)..<(r * dk + dk)].reduce(0, +)
                for j in 0..<dk { x[r * dk + j] /= s }
            }
            return x
        }
        let q = features(T * ks), k = features(T * ks), v = rand(T * vs, 1)
        let beta = (0..<(T * heads)).map { _ in Float(rng.uniform()) * 0.9 + 0.05 }
        let w0 = rand(dv * dk, 0.5)
        let dy = rand(T * vs, 1)
        let dwSeed = rand(dv * dk, 0.3)
        let h = 1  // test the second head
        let isDelta = tc.rule == .delta

        // Owned buffers: pointers into Swift arrays must not escape their closures.
        let owned = OwnedBuffers()
        let buf = owned.copy
        func zeros(_ n: Int) -> UnsafeMutablePointer<Float> { buf([Float](repeating: 0, count: n)) }
        func nans(_ n: Int) -> UnsafeMutablePointer<Float> { buf([Float](repeating: .nan, count: n)) }
        func array(_ p: UnsafeMutablePointer<Float>, _ n: Int) -> [Float] {
            Array(UnsafeBufferPointer(start: p, count: n))
        }
        let pq = buf(q) + h * dk, pk = buf(k) + h * dk, pv = buf(v) + h * dv, pdy = buf(dy) + h * dv
        let pb: UnsafeMutablePointer<Float>? = isDelta ? buf(beta) + h : nil

        // Reference: the recurrence.
        let rec = FastWeightKernel(
            rule: tc.rule, attentionNormalization: false, steps: T, keySize: dk, valueSize: dv, keyStride: ks,
            valueStride: vs, betaStride: heads)
        let yR = zeros(T * vs), wR = buf(w0), z = zeros(dk), saved = zeros(T * dv)
        let dqR = zeros(T * ks), dkR = zeros(T * ks), dvR = zeros(T * vs), dbR = zeros(T * heads)
        let dwR = buf(dwSeed), dz = zeros(dk), scratch = zeros(dv)
        rec.forward(q: pq, k: pk, v: pv, beta: pb, y: yR + h * dv, w: wR, z: z, saved: saved, denominators: nil)
        let wFinalR = array(wR, dv * dk)
        rec.backward(
            dy: pdy, y: yR + h * dv, q: pq, k: pk, v: pv, beta: pb, saved: saved, denominators: nil, w: wR, z: z,
            dw: dwR,
            dzAccumulator: dz, scratch: scratch, dq: dqR + h * dk, dk: dkR + h * dk, dv: dvR + h * dv,
            dbeta: isDelta ? dbR + h : nil, seeded: true)

        // Chunkwise, with NaN-filled scratch and saved space (nothing may be read before written).
        let ch = ChunkwiseKernel(
            rule: tc.rule, chunkSize: tc.chunk, steps: T, keySize: dk, valueSize: dv, keyStride: ks, valueStride: vs,
            betaStride: heads)
        let yC = zeros(T * vs), wC = buf(w0), savedC = nans(ch.savedCount)
        let dqC = zeros(T * ks), dkC = zeros(T * ks), dvC = zeros(T * vs), dbC = zeros(T * heads), dwC = buf(dwSeed)
        ch.forward(q: pq, k: pk, v: pv, beta: pb, y: yC + h * dv, w: wC, saved: savedC, scratch: nans(ch.scratchCount))
        ch.backward(
            dy: pdy, q: pq, k: pk, v: pv, beta: pb, saved: savedC, dw: dwC, scratch: nans(ch.scratchCount),
            dq: dqC + h * dk, dk: dkC + h * dk, dv: dvC + h * dv, dbeta: isDelta ? dbC + h : nil, seeded: true)

        func err(_ a: [Float], _ b: [Float]) -> Float {
            maxRelativeError(Tensor(shape: [a.count], storage: a), Tensor(shape: [b.count], storage: b), floor: 1e-3)
        }
        #expect(err(array(yC, T * vs), array(yR, T * vs)) < 2e-5, "outputs")
        #expect(err(array(wC, dv * dk), wFinalR) < 2e-5, "final state")
        #expect(err(array(dqC, T * ks), array(dqR, T * ks)) < 5e-5, "dq")
        #expect(err(array(dkC, T * ks), array(dkR, T * ks)) < 5e-5, "dk")
        #expect(err(array(dvC, T * vs), array(dvR, T * vs)) < 5e-5, "dv")
        #expect(err(array(dwC, dv * dk), array(dwR, dv * dk)) < 5e-5, "gradient of the initial state")
        if isDelta { #expect(err(array(dbC, T * heads), array(dbR, T * heads)) < 5e-5, "dβ") }
        // The other head's rows are untouched.
        #expect(yC[0] == 0 && dqC[0] == 0 && dvC[0] == 0 && dbC[0] == 0)

        // The packed variants (rows gathered into NaN-filled saved space and workspace, outputs in place)
        // compute the same products on the same numbers: identical results, other head untouched.
        let yP = zeros(T * vs), wP = buf(w0), savedP = nans(ch.packedSavedCount)
        let dqP = zeros(T * ks), dkP = zeros(T * ks), dvP = zeros(T * vs), dbP = zeros(T * heads), dwP = buf(dwSeed)
        ch.forwardPacked(
            q: pq, k: pk, v: pv, beta: pb, y: yP + h * dv, w: wP, saved: savedP, scratch: nans(ch.scratchCount))
        ch.backwardPacked(
            dy: pdy, beta: pb, saved: savedP, dw: dwP, scratch: nans(ch.scratchCount),
            dq: dqP + h * dk, dk: dkP + h * dk, dv: dvP + h * dv, dbeta: isDelta ? dbP + h : nil, seeded: true,
            packed: nans(ch.packedCount))
        #expect(array(yP, T * vs) == array(yC, T * vs), "packed outputs")
        #expect(array(wP, dv * dk) == array(wC, dv * dk), "packed final state")
        #expect(array(dqP, T * ks) == array(dqC, T * ks), "packed dq")
        #expect(array(dkP, T * ks) == array(dkC, T * ks), "packed dk")
        #expect(array(dvP, T * vs) == array(dvC, T * vs), "packed dv")
        #expect(array(dwP, dv * dk) == array(dwC, dv * dk), "packed gradient of the initial state")
        #expect(array(dbP, T * heads) == array(dbC, T * heads), "packed dβ")
    }

    /// The loops over chunks in C (`fwp_chunkwise_forward`, `_backward`) against the Swift loops:
    /// the same products in the same order, so every output, the saved arrays and every gradient
    /// are the same bits. The model's shape (d = 32, chunks of 16: the C path's 16-row steps in
    /// registers), a partial last chunk, uneven widths, and the sum rule.
    @Test(
        .enabled(if: BLAS.smallKernel && VectorKernels.enabled),
        arguments: [
            (UpdateRule.delta, 64, 16, 32, 32), (.delta, 37, 16, 32, 32), (.delta, 37, 8, 12, 9),
            (.delta, 48, 16, 16, 24),
            (.sum, 37, 16, 32, 32), (.sum, 37, 8, 12, 9),
        ])
    func nativeLoopsMatchTheSwiftLoopsBitForBit(_ rule: UpdateRule, _ T: Int, _ chunk: Int, _ dk: Int, _ dv: Int) {
        let heads = 3, h = 1, ks = heads * dk, vs = heads * dv
        var rng = FWPRandom(seed: UInt64(T * 7 + dk))
        func rand(_ n: Int, _ scale: Float) -> [Float] { (0..<n).map { _ in Float(rng.normal()) * scale } }
        let q = rand(T * ks, 0.2), k = rand(T * ks, 0.2), v = rand(T * vs, 1), dy = rand(T * vs, 1)
        let beta = (0..<(T * heads)).map { _ in Float(rng.uniform()) * 0.9 + 0.05 }
        let w0 = rand(dv * dk, 0.5), dwSeed = rand(dv * dk, 0.3)
        let isDelta = rule == .delta
        let owned = OwnedBuffers()
        let buf = owned.copy
        func array(_ p: UnsafeMutablePointer<Float>, _ n: Int) -> [Float] {
            Array(UnsafeBufferPointer(start: p, count: n))
        }
        func run(native: Bool) -> [[Float]] {
            var ch = ChunkwiseKernel(
                rule: rule, chunkSize: chunk, steps: T, keySize: dk, valueSize: dv, keyStride: ks, valueStride: vs,
                betaStride: heads)
            ch.nativeLoops = native
            let pb: UnsafeMutablePointer<Float>? = isDelta ? buf(beta) + h : nil
            let y = buf([Float](repeating: 0, count: T * vs)), w = buf(w0)
            let saved = buf([Float](repeating: .nan, count: ch.savedCount))
            let dq = buf([Float](repeating: 0, count: T * ks)), dkO = buf([Float](repeating: 0, count: T * ks))
            let dvO = buf([Float](repeating: 0, count: T * vs)), db = buf([Float](repeating: 0, count: T * heads))
            let dw = buf(dwSeed)
            ch.forward(
                q: buf(q) + h * dk, k: buf(k) + h * dk, v: buf(v) + h * dv, beta: pb, y: y + h * dv, w: w, saved: saved,
                scratch: buf([Float](repeating: .nan, count: ch.scratchCount)))
            ch.backward(
                dy: buf(dy) + h * dv, q: buf(q) + h * dk, k: buf(k) + h * dk, v: buf(v) + h * dv, beta: pb,
                saved: saved,
                dw: dw, scratch: buf([Float](repeating: .nan, count: ch.scratchCount)), dq: dq + h * dk,
                dk: dkO + h * dk, dv: dvO + h * dv, dbeta: isDelta ? db + h : nil, seeded: true)
            return [
                array(y, T * vs), array(w, dv * dk), array(saved, ch.savedCount), array(dq, T * ks), array(dkO, T * ks),
                array(dvO, T * vs), array(db, T * heads), array(dw, dv * dk),
            ]
        }
        // The forward with an output scale (1/√32, not a power of two): y scaled in the product.
        func scaledForward(native: Bool) -> [Float] {
            var ch = ChunkwiseKernel(
                rule: rule, chunkSize: chunk, steps: T, keySize: dk, valueSize: dv, keyStride: ks, valueStride: vs,
                betaStride: heads, outputScale: 1 / Float(32).squareRoot())
            ch.nativeLoops = native
            let y = buf([Float](repeating: 0, count: T * vs))
            ch.forward(
                q: buf(q) + h * dk, k: buf(k) + h * dk, v: buf(v) + h * dv, beta: isDelta ? buf(beta) + h : nil,
                y: y + h * dv, w: buf(w0), saved: buf([Float](repeating: .nan, count: ch.savedCount)),
                scratch: buf([Float](repeating: .nan, count: ch.scratchCount)))
            return array(y, T * vs)
        }
        let scaledNative = scaledForward(native: true)
        #expect(scaledNative.map(\.bitPattern) == scaledForward(native: false).map(\.bitPattern), "scaled y")
        let native = run(native: true), swift = run(native: false)
        let scale = 1 / Float(32).squareRoot()
        #expect(zip(scaledNative, native[0]).allSatisfy { $0 == scale * $1 }, "y scaled in the product, rounded once")
        for (i, name) in ["y", "final state", "saved", "dq", "dk", "dv", "dβ", "dw"].enumerated() {
            // Bitwise, so NaN-safe: the saved space starts as NaN and a partial last chunk leaves
            // the columns past its length unwritten, in both.
            #expect(native[i].map(\.bitPattern) == swift[i].map(\.bitPattern), "\(name)")
            if name != "saved" { #expect(!native[i].contains { $0.isNaN }, "\(name) has NaN") }
        }
        #expect(native[0].contains { $0 != 0 } && native[3].contains { $0 != 0 }, "outputs were written")
    }

    /// Output strides of their own (the attention writes dq, dk, dv into the input projection's
    /// gradient this way): the same values as with the input strides, at the new places, and
    /// nothing written between them.
    @Test(.enabled(if: VectorKernels.supported), arguments: [UpdateRule.delta, .sum])
    func packedBackwardWritesAtItsOutputStrides(_ rule: UpdateRule) {
        let heads = 2, d = 16, T = 40, h = 1, ks = heads * d, wide = 3 * ks + 5
        var rng = FWPRandom(seed: 13)
        func rand(_ n: Int) -> [Float] { (0..<n).map { _ in Float(rng.normal()) } }
        let q = rand(T * ks), k = rand(T * ks), v = rand(T * ks), dy = rand(T * ks)
        let beta = (0..<(T * heads)).map { _ in Float(rng.uniform()) * 0.9 + 0.05 }
        let owned = OwnedBuffers()
        let buf = owned.copy
        let pb: UnsafeMutablePointer<Float>? = rule == .delta ? buf(beta) + h : nil
        func run(outputStride: Int?) -> (dq: [Float], dk: [Float], dv: [Float]) {
            let ch = ChunkwiseKernel(
                rule: rule, chunkSize: 16, steps: T, keySize: d, valueSize: d, keyStride: ks, valueStride: ks,
                betaStride: heads, outputKeyStride: outputStride, outputValueStride: outputStride, featureMapped: true)
            let forwardKernel = ChunkwiseKernel(
                rule: rule, chunkSize: 16, steps: T, keySize: d, valueSize: d, keyStride: ks, valueStride: ks,
                betaStride: heads, featureMapped: true)
            let saved = buf([Float](repeating: .nan, count: ch.packedSavedCount))
            forwardKernel.forwardPacked(
                q: buf(q) + h * d, k: buf(k) + h * d, v: buf(v) + h * d, beta: pb,
                y: buf([Float](repeating: 0, count: T * ks)) + h * d,
                w: buf([Float](repeating: 0, count: d * d)), saved: saved,
                scratch: buf([Float](repeating: .nan, count: ch.scratchCount)))
            let os = outputStride ?? ks, n = T * os
            let out = buf([Float](repeating: 7, count: 3 * n))  // dq, dk, dv regions, 7 where nothing is written
            ch.backwardPacked(
                dy: buf(dy) + h * d, beta: pb, saved: saved, dw: buf([Float](repeating: 0, count: d * d)),
                scratch: buf([Float](repeating: .nan, count: ch.scratchCount)), dq: out + h * d, dk: out + n + h * d,
                dv: out + 2 * n + h * d, dbeta: rule == .delta ? buf([Float](repeating: 0, count: T * heads)) + h : nil,
                packed: buf([Float](repeating: .nan, count: ch.packedCount)))
            let all = Array(UnsafeBufferPointer(start: out, count: 3 * n))
            return (Array(all[0..<n]), Array(all[n..<(2 * n)]), Array(all[(2 * n)...]))
        }
        let base = run(outputStride: nil), strided = run(outputStride: wide)
        for (a, b, name) in [(base.dq, strided.dq, "dq"), (base.dk, strided.dk, "dk"), (base.dv, strided.dv, "dv")] {
            for t in 0..<T {
                for j in 0..<(wide) {
                    let value = b[t * wide + j]
                    if j >= h * d && j < h * d + d {
                        #expect(value == a[t * ks + j], "\(name) row \(t) column \(j)")
                    } else {
                        #expect(value == 7, "\(name) written outside its rows at \(t), \(j)")
                    }
                }
            }
        }
    }

    /// With `featureMapped` the packed kernel takes raw q, k and applies ELU + 1 with sum
    /// normalisation itself: exactly the feature map's own C pass, then the plain packed kernel,
    /// then the feature map's backward.
    @Test(.enabled(if: VectorKernels.supported), arguments: [UpdateRule.delta, .sum])
    func featureMappedPackedMatchesSeparatePasses(_ rule: UpdateRule) {
        let heads = 2, d = 12, dv = 9, T = 37, h = 1
        let ks = heads * d, vs = heads * dv
        var rng = FWPRandom(seed: 77)
        func rand(_ n: Int) -> [Float] { (0..<n).map { _ in Float(rng.normal()) } }
        let qRaw = rand(T * ks), kRaw = rand(T * ks), v = rand(T * vs), dy = rand(T * vs), w0 = rand(dv * d)
        let beta = (0..<(T * heads)).map { _ in Float(rng.uniform()) * 0.9 + 0.05 }
        let isDelta = rule == .delta
        let owned = OwnedBuffers()
        let buf = owned.copy
        func array(_ p: UnsafeMutablePointer<Float>, _ n: Int) -> [Float] {
            Array(UnsafeBufferPointer(start: p, count: n))
        }
        let pb: UnsafeMutablePointer<Float>? = isDelta ? buf(beta) + h : nil
        func kernel(_ mapped: Bool) -> ChunkwiseKernel {
            ChunkwiseKernel(
                rule: rule, chunkSize: 16, steps: T, keySize: d, valueSize: dv, keyStride: ks, valueStride: vs,
                betaStride: heads, featureMapped: mapped)
        }
        func run(_ mapped: Bool, q: [Float], k: [Float]) -> (
            y: [Float], w: [Float], dq: [Float], dk: [Float], dv: [Float], dw: [Float]
        ) {
            let ch = kernel(mapped)
            let y = buf([Float](repeating: 0, count: T * vs)), w = buf(w0),
                saved = buf([Float](repeating: .nan, count: ch.packedSavedCount))
            let dq = buf([Float](repeating: 0, count: T * ks)), dk = buf([Float](repeating: 0, count: T * ks))
            let dvO = buf([Float](repeating: 0, count: T * vs)), db = buf([Float](repeating: 0, count: T * heads))
            let dw = buf([Float](repeating: 0, count: dv * d))
            ch.forwardPacked(
                q: buf(q) + h * d, k: buf(k) + h * d, v: buf(v) + h * dv, beta: pb, y: y + h * dv, w: w, saved: saved,
                scratch: buf([Float](repeating: .nan, count: ch.scratchCount)))
            ch.backwardPacked(
                dy: buf(dy) + h * dv, beta: pb, saved: saved, dw: dw,
                scratch: buf([Float](repeating: .nan, count: ch.scratchCount)),
                dq: dq + h * d, dk: dk + h * d, dv: dvO + h * dv, dbeta: isDelta ? db + h : nil,
                packed: buf([Float](repeating: .nan, count: ch.packedCount)))
            return (
                array(y, T * vs), array(w, dv * d), array(dq, T * ks), array(dk, T * ks), array(dvO, T * vs),
                array(dw, dv * d)
            )
        }
        let fused = run(true, q: qRaw, k: kRaw)
        // Separately: the feature map over all rows, the plain packed kernel, the map's backward.
        let qT = Tensor(shape: [T * heads, d], storage: qRaw), kT = Tensor(shape: [T * heads, d], storage: kRaw)
        let (_, qF, qS) = SumNormalization.eluPlusOneForward(qT, native: true)
        let (_, kF, kS) = SumNormalization.eluPlusOneForward(kT, native: true)
        let plain = run(false, q: qF.elements, k: kF.elements)
        let dqRaw = SumNormalization.eluPlusOneBackward(
            Tensor(shape: [T * heads, d], storage: plain.dq), input: qT, phi: Tensor(shape: [0, d]), output: qF,
            sums: qS,
            native: true)
        let dkRaw = SumNormalization.eluPlusOneBackward(
            Tensor(shape: [T * heads, d], storage: plain.dk), input: kT, phi: Tensor(shape: [0, d]), output: kF,
            sums: kS,
            native: true)
        #expect(fused.y == plain.y && fused.w == plain.w && fused.dv == plain.dv && fused.dw == plain.dw)
        // Rows of the other head: untouched by the fused kernel, zero gradients through the map.
        for r in 0..<T {
            for j in 0..<d {
                #expect(fused.dq[r * ks + h * d + j] == dqRaw.storage[r * ks + h * d + j], "dq (\(r), \(j))")
                #expect(fused.dk[r * ks + h * d + j] == dkRaw.storage[r * ks + h * d + j], "dk (\(r), \(j))")
                #expect(fused.dq[r * ks + j] == 0 && fused.dk[r * ks + j] == 0)
            }
        }
    }
}

/// Buffers of floats that live until the owner goes (the kernels take raw pointers, and pointers
/// into Swift arrays must not escape their closures).
final class OwnedBuffers {
    private var owned: [UnsafeMutablePointer<Float>] = []

    /// A new buffer holding a copy of `a`.
    func copy(_ a: [Float]) -> UnsafeMutablePointer<Float> {
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(a.count, 1))
        p.initialize(from: a, count: a.count)
        owned.append(p)
        return p
    }

    deinit { owned.forEach { $0.deallocate() } }
}
