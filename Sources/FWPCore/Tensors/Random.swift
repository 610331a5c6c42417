import Foundation

/// A seeded, serialisable random number generator (xoshiro256**), seeded through SplitMix64.
///
/// Every random choice in the core (initialisation, dropout masks, FAVOR+ features) draws from
/// one of these, so a seed fixes a run. Its four state words go into checkpoints.
public struct FWPRandom: RandomNumberGenerator, Sendable, Equatable {
    /// The generator's state.
    public private(set) var state: (UInt64, UInt64, UInt64, UInt64)

    /// A generator whose state is derived from `seed`.
    public init(seed: UInt64) {
        var x = seed
        func splitMix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        state = (splitMix(), splitMix(), splitMix(), splitMix())
    }

    /// A generator resumed from a saved state.
    public init(state: (UInt64, UInt64, UInt64, UInt64)) {
        precondition(state != (0, 0, 0, 0), "xoshiro state must not be all zero")
        self.state = state
    }

    public static func == (l: FWPRandom, r: FWPRandom) -> Bool { l.state == r.state }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        let result = rotl(state.1 &* 5, 7) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = rotl(state.3, 45)
        return result
    }

    @inline(__always) private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// A uniform Double in [0, 1) with 53 random bits.
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// A standard normal Double (Box–Muller; one draw of two uniforms per value).
    public mutating func normal() -> Double {
        let u1 = max(uniform(), 0x1.0p-60)
        let u2 = uniform()
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
    }

    /// A child generator for an independent stream (e.g. one per layer), advancing this one.
    public mutating func split() -> FWPRandom { FWPRandom(seed: next()) }

    /// The state as 64 hex digits, for checkpoint metadata.
    public var hexState: String {
        [state.0, state.1, state.2, state.3].map { String(format: "%016llx", $0) }.joined()
    }

    /// Parses `hexState`; nil if malformed.
    public init?(hexState: String) {
        guard hexState.count == 64 else { return nil }
        var words: [UInt64] = []
        var index = hexState.startIndex
        for _ in 0..<4 {
            let end = hexState.index(index, offsetBy: 16)
            guard let w = UInt64(hexState[index..<end], radix: 16) else { return nil }
            words.append(w)
            index = end
        }
        if words.allSatisfy({ $0 == 0 }) { return nil }
        self.init(state: (words[0], words[1], words[2], words[3]))
    }
}

extension Tensor {
    /// A tensor of independent N(0, std²) draws.
    public static func normal(shape: [Int], std: Float, using rng: inout FWPRandom) -> Tensor {
        var t = Tensor(shape: shape)
        for i in 0..<t.count { t.storage[i] = Float(rng.normal()) * std }
        return t
    }

    /// A tensor of independent uniform draws in [-bound, bound).
    public static func uniform(shape: [Int], bound: Float, using rng: inout FWPRandom) -> Tensor {
        var t = Tensor(shape: shape)
        for i in 0..<t.count { t.storage[i] = Float((rng.uniform() * 2 - 1)) * bound }
        return t
    }
}
