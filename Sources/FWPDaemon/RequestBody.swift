import FWPProtocol
import Foundation

/// A request body with typed, named-field accessors that fail with `invalid_request`.
struct RequestBody {
    let fields: [String: JSONValue]
    init(_ fields: [String: JSONValue]) { self.fields = fields }

    func allow(_ names: Set<String>) throws {
        if let unknown = fields.keys.sorted().first(where: { !names.contains($0) }) {
            throw WireError(
                .invalidRequest,
                "unknown field '\(unknown)'"
                    + (names.isEmpty ? "" : "; allowed: \(names.sorted().joined(separator: ", "))"))
        }
    }

    func int(_ name: String, min: Int? = nil, max: Int? = nil) throws -> Int? {
        guard let v = fields[name], v != .null else { return nil }
        guard case .number(let n) = v, n.rounded() == n, abs(n) < 9e15 else {
            throw WireError(.invalidRequest, "field '\(name)' must be an integer, got \(v.typeName)")
        }
        if let min, Int(n) < min { throw WireError(.invalidRequest, "field '\(name)' must be ≥ \(min)") }
        if let max, Int(n) > max { throw WireError(.invalidRequest, "field '\(name)' must be ≤ \(max)") }
        return Int(n)
    }

    func requiredInt(_ name: String) throws -> Int {
        guard let v = try int(name, min: 1) else { throw WireError(.invalidRequest, "field '\(name)' is required") }
        return v
    }

    func string(_ name: String) throws -> String? {
        guard let v = fields[name], v != .null else { return nil }
        guard case .string(let s) = v else {
            throw WireError(.invalidRequest, "field '\(name)' must be a string, got \(v.typeName)")
        }
        return s
    }

    func bool(_ name: String) throws -> Bool? {
        guard let v = fields[name], v != .null else { return nil }
        guard case .bool(let x) = v else {
            throw WireError(.invalidRequest, "field '\(name)' must be true or false, got \(v.typeName)")
        }
        return x
    }

    func object(_ name: String) throws -> [String: JSONValue]? {
        guard let v = fields[name], v != .null else { return nil }
        guard case .object(let o) = v else {
            throw WireError(.invalidRequest, "field '\(name)' must be an object, got \(v.typeName)")
        }
        return o
    }
}
