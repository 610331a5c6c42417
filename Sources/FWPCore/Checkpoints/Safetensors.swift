import Foundation

/// Reading and writing the safetensors format (F32 tensors only).
///
/// Layout: an 8-byte little-endian header length n, n bytes of JSON (padded with spaces to a
/// multiple of 8), then the tensors' bytes back to back. The JSON maps each tensor name to
/// `{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}` (offsets into the data
/// region) and may hold a `__metadata__` object of string values.
public struct Safetensors: Sendable {
    /// Free-form string metadata.
    public var metadata: [String: String]
    /// Tensors in file order.
    public var tensors: [(name: String, tensor: Tensor)]

    public init(metadata: [String: String] = [:], tensors: [(name: String, tensor: Tensor)] = []) {
        self.metadata = metadata
        self.tensors = tensors
    }

    /// The tensor called `name`, if present.
    public subscript(name: String) -> Tensor? {
        tensors.first { $0.name == name }?.tensor
    }

    /// The largest header this reader accepts (a corrupt length fails fast).
    public static let maximumHeaderSize = 100 << 20

    /// The file's bytes.
    public func encoded() -> Data {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for (name, t) in tensors {
            precondition(name != "__metadata__", "reserved tensor name")
            header[name] =
                ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + 4 * t.count]] as [String: Any]
            offset += 4 * t.count
        }
        var json = try! JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        for (_, t) in tensors {
            t.storage.withUnsafeBufferPointer { buf in
                if Int(bitPattern: 1) == 1 && UInt32(1).littleEndian == 1 {
                    out.append(
                        UnsafeBufferPointer(
                            start: UnsafeRawPointer(buf.baseAddress!).assumingMemoryBound(to: UInt8.self),
                            count: buf.count * 4))
                } else {
                    for v in buf { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
                }
            }
        }
        return out
    }

    /// Parses a file's bytes; throws `FWPError.checkpoint` with the reason on any inconsistency.
    public static func decode(_ data: Data) throws -> Safetensors {
        func fail(_ m: String) -> FWPError { .checkpoint(m) }
        guard data.count >= 8 else {
            throw fail("file is \(data.count) bytes, too short for a safetensors header (truncated?)")
        }
        let n = data.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        guard n <= UInt64(maximumHeaderSize) else {
            throw fail("header too large: not a safetensors file, or a corrupt one")
        }
        guard 8 + Int(n) <= data.count else {
            throw fail("the header runs past the end of the file (truncated, or not a safetensors file)")
        }
        let headerBytes = data.subdata(in: data.startIndex + 8..<data.startIndex + 8 + Int(n))
        guard let object = try? JSONSerialization.jsonObject(with: headerBytes), let header = object as? [String: Any]
        else {
            throw fail("header is not a JSON object (corrupt file)")
        }
        var metadata: [String: String] = [:]
        if let meta = header["__metadata__"] {
            guard let m = meta as? [String: String] else { throw fail("__metadata__ must map strings to strings") }
            metadata = m
        }
        let dataStart = 8 + Int(n)
        let dataSize = data.count - dataStart
        var entries: [(name: String, shape: [Int], begin: Int, end: Int)] = []
        for (name, value) in header where name != "__metadata__" {
            guard let info = value as? [String: Any] else { throw fail("a header entry is not an object") }
            guard let dtype = info["dtype"] as? String else { throw fail("a tensor has no dtype") }
            guard dtype == "F32" else { throw fail("a tensor's dtype is not F32, the only one supported") }
            guard let shape = (info["shape"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
                shape.count == (info["shape"] as? [Any])?.count, shape.allSatisfy({ $0 >= 0 })
            else { throw fail("a tensor has a malformed shape") }
            guard let offs = (info["data_offsets"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
                offs.count == 2,
                offs[0] >= 0, offs[0] <= offs[1]
            else { throw fail("a tensor has malformed data_offsets") }
            let expected = 4 * shape.reduce(1, *)
            guard offs[1] - offs[0] == expected else { throw fail("a tensor's byte range does not match its shape") }
            guard offs[1] <= dataSize else { throw fail("a tensor ends past the data region (truncated file)") }
            entries.append((name, shape, offs[0], offs[1]))
        }
        entries.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }
        var cursor = 0
        for e in entries {
            guard e.begin == cursor else { throw fail("tensors overlap or leave a gap in the data region") }
            cursor = e.end
        }
        guard cursor == dataSize else { throw fail("the data region's size does not match its tensors") }
        var tensors: [(name: String, tensor: Tensor)] = []
        data.withUnsafeBytes { raw in
            for e in entries {
                let count = (e.end - e.begin) / 4
                var storage = [Float](repeating: 0, count: count)
                storage.withUnsafeMutableBytes { dst in
                    dst.copyMemory(
                        from: UnsafeRawBufferPointer(rebasing: raw[(dataStart + e.begin)..<(dataStart + e.end)]))
                }
                if UInt32(1).littleEndian != 1 {
                    for i in 0..<count { storage[i] = Float(bitPattern: UInt32(littleEndian: storage[i].bitPattern)) }
                }
                tensors.append((e.name, Tensor(shape: e.shape, storage: storage)))
            }
        }
        return Safetensors(metadata: metadata, tensors: tensors)
    }

    /// The data region's CRC-32 (IEEE), as stored in fwp checkpoints' metadata.
    public static func dataChecksum(of tensors: [(name: String, tensor: Tensor)]) -> UInt32 {
        var crc = CRC32()
        for (_, t) in tensors {
            t.storage.withUnsafeBytes { crc.update($0) }
        }
        return crc.value
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320).
public struct CRC32: Sendable {
    private static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }
    private var state: UInt32 = 0xFFFF_FFFF

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var c = state
        CRC32.table.withUnsafeBufferPointer { t in
            for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        }
        state = c
    }

    public var value: UInt32 { state ^ 0xFFFF_FFFF }
}

extension Safetensors {
    /// Checks that `data` is a complete safetensors file and, when its metadata carries a
    /// `crc32`, that the data region matches it. Throws `FWPError.checkpoint` otherwise.
    public static func verify(_ data: Data) throws {
        let file = try decode(data)
        if let stored = file.metadata["crc32"] {
            let actual = String(format: "%08x", dataChecksum(of: file.tensors))
            guard stored == actual else {
                throw FWPError.checkpoint("the data checksum differs from the stored one (corrupt file)")
            }
        }
    }
}
