import FWPProtocol
import Foundation

/// The type of a task parameter.
public enum ParameterType: String, Codable, Sendable {
    case integer, number, string, boolean
    /// A file's path (a string; the task checks the file, and fwpd confines it to its data roots).
    case path
    /// A folder's path (as `path`, for a folder).
    case directory
    /// A list of strings: a JSON array of strings, or one string (space-separated words, or a JSON
    /// array written as text, as a command line gives it).
    case strings
}

/// One parameter a task accepts: its type, default, range or choices, and what it means.
public struct ParameterSpec: Codable, Equatable, Sendable {
    public var name: String
    public var type: ParameterType
    public var description: String
    /// The default; nil makes the parameter required (unless `optional`).
    public var defaultValue: JSONValue?
    public var minimum: Double?
    public var maximum: Double?
    /// Allowed values of a string parameter; nil allows any.
    public var choices: [String]?
    /// A parameter with no default that may be left out.
    public var optional: Bool

    public init(
        _ name: String, _ type: ParameterType, _ description: String, default defaultValue: JSONValue? = nil,
        minimum: Double? = nil, maximum: Double? = nil, choices: [String]? = nil, optional: Bool = false
    ) {
        self.name = name
        self.type = type
        self.description = description
        self.defaultValue = defaultValue
        self.minimum = minimum
        self.maximum = maximum
        self.choices = choices
        self.optional = optional
    }

    enum CodingKeys: String, CodingKey {
        case name, type, description
        case defaultValue = "default"
        case minimum, maximum, choices, optional
    }
}

/// A parameter problem, always naming the parameter.
public struct ParameterError: Error, Equatable, CustomStringConvertible, Sendable {
    public var parameter: String
    public var message: String
    public init(_ parameter: String, _ message: String) {
        self.parameter = parameter
        self.message = message
    }
    public var description: String { "parameter '\(parameter)': \(message)" }
}

/// Validated parameters: every declared parameter with a value (given or default).
public struct TaskParameters: Equatable, Sendable {
    public var values: [String: JSONValue]

    public init(_ values: [String: JSONValue]) { self.values = values }

    /// Whether the optional parameter `name` was given.
    public func has(_ name: String) -> Bool { values[name].map { $0 != .null } ?? false }

    /// The values as `T`, whose properties are the parameters' names in camelCase (`model_size`
    /// → `modelSize`; an optional parameter left out is nil). A value `T` cannot hold (an enum
    /// case that does not exist, say) is a `ParameterError` naming the parameter.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try decoder.decode(T.self, from: Data(json.jsonBytes))
        } catch let error as DecodingError {
            let (path, reason): ([any CodingKey], String)
            switch error {
            case .dataCorrupted(let c): (path, reason) = (c.codingPath, c.debugDescription)
            case .keyNotFound(let key, let c): (path, reason) = (c.codingPath + [key], "is required")
            case .typeMismatch(_, let c), .valueNotFound(_, let c): (path, reason) = (c.codingPath, c.debugDescription)
            @unknown default: (path, reason) = ([], "\(error)")
            }
            throw ParameterError(path.first.map { snakeCase($0.stringValue) } ?? "parameters", reason)
        }
    }
    /// The parameters as one JSON object.
    public var json: JSONValue { .object(values) }
}

extension Array where Element == ParameterSpec {
    /// Checks `given` against the schema: unknown names, types, integrality, ranges, choices,
    /// required parameters; fills in defaults. Throws the first problem found.
    public func validate(_ given: [String: JSONValue]) throws -> TaskParameters {
        let known = Set(map(\.name))
        if let unknown = given.keys.sorted().first(where: { !known.contains($0) }) {
            throw ParameterError(unknown, "unknown parameter (known: \(map(\.name).sorted().joined(separator: ", ")))")
        }
        var out: [String: JSONValue] = [:]
        for spec in self {
            guard let value = given[spec.name] ?? spec.defaultValue, value != .null else {
                if spec.optional { continue }
                throw ParameterError(spec.name, "is required")
            }
            switch spec.type {
            case .integer, .number:
                guard case .number(let n) = value, n.isFinite else {
                    throw ParameterError(
                        spec.name,
                        "must be a \(spec.type == .integer ? "whole number" : "number"), got \(value.typeName) \(value)"
                    )
                }
                if spec.type == .integer && n.rounded() != n {
                    throw ParameterError(spec.name, "must be a whole number, got \(n)")
                }
                if let lo = spec.minimum, n < lo {
                    throw ParameterError(spec.name, "must be ≥ \(format(lo)), got \(format(n))")
                }
                if let hi = spec.maximum, n > hi {
                    throw ParameterError(spec.name, "must be ≤ \(format(hi)), got \(format(n))")
                }
            case .string, .path, .directory:
                guard case .string(let s) = value else {
                    throw ParameterError(spec.name, "must be a string, got \(value.typeName) \(value)")
                }
                if (spec.type == .path || spec.type == .directory) && s.isEmpty {
                    throw ParameterError(spec.name, "must be a non-empty path")
                }
                if let choices = spec.choices, !choices.contains(s) {
                    throw ParameterError(spec.name, "must be one of \(choices.joined(separator: ", ")), got '\(s)'")
                }
            case .strings:
                switch value {
                case .string: break
                case .array(let items) where items.allSatisfy({ $0.stringValue != nil }): break
                default: throw ParameterError(spec.name, "must be an array of strings, got \(value.typeName)")
                }
            case .boolean:
                guard case .bool = value else {
                    throw ParameterError(spec.name, "must be true or false, got \(value.typeName) \(value)")
                }
            }
            out[spec.name] = value
        }
        return TaskParameters(out)
    }
}

/// `modelSize` → `model_size`: a Swift property's name as the schema spells it.
func snakeCase(_ name: String) -> String {
    var out = ""
    for c in name {
        if c.isUppercase {
            out += "_" + c.lowercased()
        } else {
            out.append(c)
        }
    }
    return out
}

private func format(_ x: Double) -> String {
    x.rounded() == x && abs(x) < 1e15 ? String(Int64(x)) : String(x)
}

/// Parses a command-line override `key=value`: numbers, true/false and JSON stay typed, anything
/// else is a string.
public func parseOverride(_ text: String) throws -> (String, JSONValue) {
    guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
        throw ParameterError(text, "expected key=value")
    }
    let key = String(text[..<eq]), raw = String(text[text.index(after: eq)...])
    if let v = try? JSONValue.parse(raw) { return (key, v) }
    return (key, .string(raw))
}
