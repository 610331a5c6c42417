import FWPCore
import FWPTasks
import Foundation

/// The points of a `sweep` request: the product of its grid's values, crossed with its random
/// samples and its seeds, each point the fixed parameters plus its own values. Everything is
/// checked before a single job is stored, and an error names the entry of the request at fault
/// (`grid.keys[2]`, `random.ranges.lr`, `seeds`, `parameters.batch`).
///
/// Points vary in a fixed order: grid parameters by name (the last fastest), then the random
/// samples, then the seed (fastest of all), so point i of a request is always the same.
struct SweepPlan {
    /// The parameters that vary between points, in the order they vary (slowest first).
    var swept: [String]
    /// Each point's parameters as given to the task (fixed ∪ swept values), before defaults.
    var points: [[String: JSONValue]]

    /// A refusal that names the request's entry.
    static func refuse(_ entry: String, _ message: String) -> WireError {
        WireError(.invalidParameter, "\(entry): \(message)", details: ["entry": .string(entry)])
    }

    /// Expands `grid` ({name: [values]}), `random` ({"count", "seed", "ranges": {name: range}})
    /// and `seeds` (a count n: seed = 1…n) over `fixed` (a preset's parameters, then the request's
    /// own, `given`, which may not name a swept parameter) for `module`; at most `maxPoints`.
    init(
        module: any TaskModule, fixed: [String: JSONValue], given: Set<String>, grid: [String: JSONValue]?,
        random: [String: JSONValue]?, seeds: Int?, maxPoints: Int
    ) throws {
        let known = Set(module.parameters.map(\.name))
        func checkName(_ name: String, _ entry: String) throws {
            guard known.contains(name) else {
                throw Self.refuse(
                    entry,
                    "'\(name)' is not a parameter of \(module.name) (known: \(known.sorted().joined(separator: ", ")))")
            }
        }
        // The grid: named axes, each a non-empty list.
        var axes: [(name: String, values: [JSONValue], entry: String)] = []
        for name in (grid ?? [:]).keys.sorted() {
            let entry = "grid.\(name)"
            try checkName(name, entry)
            guard case .array(let values) = grid![name]! else {
                throw Self.refuse(entry, "must be a list of values, got \(grid![name]!.typeName)")
            }
            guard !values.isEmpty else { throw Self.refuse(entry, "is empty: give at least one value") }
            axes.append((name, values, entry))
        }
        if grid != nil && axes.isEmpty { throw Self.refuse("grid", "is empty: name at least one parameter") }
        // Random search: `count` samples, each drawing every ranged parameter.
        var samples: [[String: JSONValue]] = [[:]]
        var randomNames: [String] = []
        if let random {
            if let unknown = random.keys.sorted().first(where: { !["count", "seed", "ranges"].contains($0) }) {
                throw Self.refuse("random.\(unknown)", "is not a field of random (count, seed, ranges)")
            }
            guard case .number(let c) = random["count"] ?? .null, c.rounded() == c, c >= 1 else {
                throw Self.refuse("random.count", "must be a whole number ≥ 1")
            }
            let count = Int(min(c, 1e9))
            var seed: UInt64 = 0
            if let s = random["seed"], s != .null {
                guard case .number(let x) = s, x.rounded() == x, x >= 0, x < 9e15 else {
                    throw Self.refuse("random.seed", "must be a whole number ≥ 0")
                }
                seed = UInt64(x)
            }
            guard case .object(let ranges) = random["ranges"] ?? .null, !ranges.isEmpty else {
                throw Self.refuse("random.ranges", "must name at least one parameter with its range")
            }
            var draws: [(String, Range)] = []
            for name in ranges.keys.sorted() {
                let entry = "random.ranges.\(name)"
                try checkName(name, entry)
                if axes.contains(where: { $0.name == name }) {
                    throw Self.refuse(entry, "'\(name)' is in the grid too")
                }
                draws.append((name, try Range(ranges[name]!, entry: entry)))
            }
            randomNames = draws.map(\.0)
            let total = axes.reduce(Double(count)) { $0 * Double($1.values.count) } * Double(max(1, seeds ?? 1))
            guard total <= Double(maxPoints) else {
                throw Self.refuse(
                    "random.count", "the sweep would have \(Int64(min(total, 9e15))) points; at most \(maxPoints)")
            }
            var rng = SplitMix64(seed: seed)
            samples = (0..<count).map { _ in
                var point: [String: JSONValue] = [:]
                for (name, range) in draws { point[name] = range.draw(&rng) }
                return point
            }
        }
        // Seeds: the innermost axis.
        if let seeds {
            guard seeds >= 1 else { throw Self.refuse("seeds", "must be ≥ 1") }
            guard known.contains("seed") else { throw Self.refuse("seeds", "\(module.name) has no seed parameter") }
            if axes.contains(where: { $0.name == "seed" }) || randomNames.contains("seed") {
                throw Self.refuse("seeds", "the seed is swept already (grid.seed or random.ranges.seed)")
            }
        }
        let product = axes.reduce(Double(samples.count)) { $0 * Double($1.values.count) } * Double(seeds ?? 1)
        guard product <= Double(maxPoints) else {
            throw Self.refuse(
                axes.count > 0 ? "grid" : "seeds",
                "the sweep would have \(Int64(min(product, 9e15))) points; at most \(maxPoints)")
        }
        let seedValues: [JSONValue?] = seeds.map { n in (1...n).map { .number(Double($0)) } } ?? [nil]
        let total = Int(product)
        guard total > 1 || grid != nil || random != nil || seeds != nil else {
            throw Self.refuse("grid", "a sweep needs a grid, a random search or seeds")
        }
        for name in given.sorted() {
            if axes.contains(where: { $0.name == name }) || randomNames.contains(name)
                || (name == "seed" && seeds != nil)
            {
                throw Self.refuse("parameters.\(name)", "'\(name)' is swept; it cannot be fixed too")
            }
        }
        swept = axes.map(\.name) + randomNames + (seeds != nil ? ["seed"] : [])
        var points: [[String: JSONValue]] = []
        points.reserveCapacity(total)
        var index = [Int](repeating: 0, count: axes.count)
        for _ in 0..<(axes.reduce(1) { $0 * $1.values.count }) {
            var gridPoint = fixed
            for (a, i) in zip(axes, index) { gridPoint[a.name] = a.values[i] }
            for sample in samples {
                for seed in seedValues {
                    var p = gridPoint.merging(sample) { _, new in new }
                    if let seed { p["seed"] = seed }
                    points.append(p)
                }
            }
            // The last axis varies fastest.
            var k = axes.count - 1
            while k >= 0 {
                index[k] += 1
                if index[k] < axes[k].values.count { break }
                index[k] = 0
                k -= 1
            }
        }
        // Every point must pass the task's own checks; a refusal names the swept entry it came
        // from where it came from one.
        for p in points {
            do { _ = try module.validate(p) } catch let e as ParameterError {
                if let axis = axes.first(where: { $0.name == e.parameter }),
                    let i = axis.values.firstIndex(of: p[axis.name]!)
                {
                    throw Self.refuse("\(axis.entry)[\(i)]", "\(p[axis.name]!.jsonText): \(e.message)")
                }
                if randomNames.contains(e.parameter) {
                    throw Self.refuse("random.ranges.\(e.parameter)", "drew \(p[e.parameter]!.jsonText): \(e.message)")
                }
                if e.parameter == "seed" && seeds != nil { throw Self.refuse("seeds", e.message) }
                throw Self.refuse("parameters.\(e.parameter)", e.message)
            } catch let e as WireError {
                throw e
            } catch {
                throw Self.refuse("parameters", "\(error)")
            }
        }
        self.points = points
    }

    /// A random-search range: `{"min": a, "max": b}` (uniform; `"log": true` for log-uniform,
    /// `"integer": true` to round) or `{"values": [...]}` (one of them, uniformly).
    enum Range {
        case uniform(Double, Double, log: Bool, integer: Bool)
        case values([JSONValue])

        init(_ value: JSONValue, entry: String) throws {
            guard case .object(let o) = value else {
                throw SweepPlan.refuse(entry, "must be {\"min\", \"max\"} or {\"values\": [...]}")
            }
            if let unknown = o.keys.sorted().first(where: { !["min", "max", "log", "integer", "values"].contains($0) })
            {
                throw SweepPlan.refuse(entry, "unknown field '\(unknown)' (min, max, log, integer, values)")
            }
            if case .array(let values) = o["values"] ?? .null {
                guard !values.isEmpty, o.count == 1 else {
                    throw SweepPlan.refuse(entry, "values must be a non-empty list, given alone")
                }
                self = .values(values)
                return
            }
            guard case .number(let lo) = o["min"] ?? .null, case .number(let hi) = o["max"] ?? .null, lo <= hi else {
                throw SweepPlan.refuse(entry, "needs numbers min ≤ max, or values")
            }
            let log = o["log"]?.boolValue ?? false
            if log && lo <= 0 { throw SweepPlan.refuse(entry, "a log range needs min > 0") }
            self = .uniform(lo, hi, log: log, integer: o["integer"]?.boolValue ?? false)
        }

        func draw(_ rng: inout SplitMix64) -> JSONValue {
            switch self {
            case .values(let v): return v[Int(rng.next() % UInt64(v.count))]
            case .uniform(let lo, let hi, let log, let integer):
                let u = Double(rng.next() >> 11) / Double(1 << 53)
                var x =
                    log
                    ? Foundation.exp(Foundation.log(lo) + u * (Foundation.log(hi) - Foundation.log(lo)))
                    : lo + u * (hi - lo)
                if integer { x = min(hi, max(lo, x.rounded())) }
                return .number(x)
            }
        }
    }
}

/// A small deterministic generator for random search (SplitMix64): the same request draws the
/// same points on every machine.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
