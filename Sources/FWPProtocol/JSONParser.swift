import Foundation

/// A strict RFC 8259 JSON parser producing `JSONValue` directly from UTF-8 bytes.
///
/// Foundation's JSONSerialization returns bridged NSDictionary/NSNumber values whose conversion
/// to Swift enums dominated the daemon's request handling; this walks the bytes once.
struct JSONParser {
    let bytes: [UInt8]
    var i = 0
    var depth = 0

    struct Failure: Error, CustomStringConvertible {
        let offset: Int
        let reason: String
        var description: String { "invalid JSON at byte \(offset): \(reason)" }
    }

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        var p = JSONParser(bytes)
        p.skipSpace()
        let v = try p.value()
        p.skipSpace()
        guard p.i == bytes.count else { throw Failure(offset: p.i, reason: "trailing characters") }
        return v
    }

    mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    mutating func expect(_ word: String) throws {
        for b in word.utf8 {
            guard i < bytes.count, bytes[i] == b else { throw Failure(offset: i, reason: "expected \(word)") }
            i += 1
        }
    }

    mutating func value() throws -> JSONValue {
        guard i < bytes.count else { throw Failure(offset: i, reason: "unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            depth += 1
            defer { depth -= 1 }
            guard depth < 512 else { throw Failure(offset: i, reason: "nested too deeply") }
            i += 1
            var o: [String: JSONValue] = [:]
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
                i += 1
                return .object(o)
            }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else {
                    throw Failure(offset: i, reason: "expected a key")
                }
                let key = try string()
                skipSpace()
                try expect(":")
                skipSpace()
                o[key] = try value()
                skipSpace()
                guard i < bytes.count else { throw Failure(offset: i, reason: "unterminated object") }
                if bytes[i] == UInt8(ascii: ",") {
                    i += 1
                    continue
                }
                try expect("}")
                return .object(o)
            }
        case UInt8(ascii: "["):
            depth += 1
            defer { depth -= 1 }
            guard depth < 512 else { throw Failure(offset: i, reason: "nested too deeply") }
            i += 1
            var a: [JSONValue] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
                i += 1
                return .array(a)
            }
            while true {
                skipSpace()
                a.append(try value())
                skipSpace()
                guard i < bytes.count else { throw Failure(offset: i, reason: "unterminated array") }
                if bytes[i] == UInt8(ascii: ",") {
                    i += 1
                    continue
                }
                try expect("]")
                return .array(a)
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"):
            try expect("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expect("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expect("null")
            return .null
        default: return .number(try number())
        }
    }

    mutating func number() throws -> Double {
        let start = i
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard i < bytes.count, bytes[i] >= 0x30 && bytes[i] <= 0x39 else {
            throw Failure(offset: start, reason: "unexpected character")
        }
        var integer: Int64 = 0
        if bytes[i] == 0x30 {
            i += 1
        } else {
            while i < bytes.count, bytes[i] >= 0x30 && bytes[i] <= 0x39 {
                if i - start < 16 { integer = integer &* 10 &+ Int64(bytes[i] - 0x30) }
                i += 1
            }
        }
        // Fast path: a plain integer of at most 15 digits converts exactly without text.
        let isPlainEnd =
            i >= bytes.count
            || (bytes[i] != UInt8(ascii: ".") && bytes[i] != UInt8(ascii: "e") && bytes[i] != UInt8(ascii: "E"))
        let digits = i - start - (bytes[start] == UInt8(ascii: "-") ? 1 : 0)
        if isPlainEnd && digits <= 15 {
            return bytes[start] == UInt8(ascii: "-") ? -Double(integer) : Double(integer)
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard i < bytes.count, bytes[i] >= 0x30 && bytes[i] <= 0x39 else {
                throw Failure(offset: i, reason: "digit expected")
            }
            while i < bytes.count, bytes[i] >= 0x30 && bytes[i] <= 0x39 { i += 1 }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard i < bytes.count, bytes[i] >= 0x30 && bytes[i] <= 0x39 else {
                throw Failure(offset: i, reason: "digit expected")
            }
            while i < bytes.count, bytes[i] >= 0x30 && bytes[i] <= 0x39 { i += 1 }
        }
        guard let d = Double(String(decoding: bytes[start..<i], as: UTF8.self)) else {
            throw Failure(offset: start, reason: "bad number")
        }
        return d
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw Failure(offset: i, reason: "short \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw Failure(offset: i, reason: "bad hex digit")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    mutating func string() throws -> String {
        i += 1  // opening quote
        // Fast path: no escapes before the closing quote (keys and most values).
        var j = i
        while j < bytes.count, bytes[j] != UInt8(ascii: "\""), bytes[j] != UInt8(ascii: "\\"), bytes[j] >= 0x20 {
            j += 1
        }
        if j < bytes.count, bytes[j] == UInt8(ascii: "\"") {
            guard let s = String(validating: bytes[i..<j], as: UTF8.self) else {
                throw Failure(offset: j + 1, reason: "invalid UTF-8")
            }
            i = j + 1
            return s
        }
        var out: [UInt8] = Array(bytes[i..<j])
        i = j
        while true {
            guard i < bytes.count else { throw Failure(offset: i, reason: "unterminated string") }
            let b = bytes[i]
            i += 1
            switch b {
            case UInt8(ascii: "\""):
                guard let s = String(validating: out, as: UTF8.self) else {
                    throw Failure(offset: i, reason: "invalid UTF-8")
                }
                return s
            case UInt8(ascii: "\\"):
                guard i < bytes.count else { throw Failure(offset: i, reason: "unterminated escape") }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        try expect("\\u")
                        let low = try hex4()
                        guard low >= 0xDC00 && low < 0xE000 else {
                            throw Failure(offset: i, reason: "bad surrogate pair")
                        }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw Failure(offset: i, reason: "bad \\u escape") }
                    out += Array(String(Character(u)).utf8)
                default: throw Failure(offset: i, reason: "bad escape")
                }
            case 0..<0x20: throw Failure(offset: i - 1, reason: "control character in string")
            default: out.append(b)
            }
        }
    }
}
