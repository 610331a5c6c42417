/// Encodes any `Encodable` into a `JSONValue` tree, which `JSONValue.write(into:)` then turns
/// into compact, sorted-key JSON.
///
/// It replaces Foundation's `JSONEncoder` on the daemon's request path: that encoder spent about
/// a third of the daemon's CPU per `status` request (boxing every value, bridging keys, sorting
/// through `NSString`). The output is the same JSON text for the wire types: keys sorted by their
/// UTF-8 bytes, `nil` optionals left out (`encodeIfPresent`), integral numbers without a
/// fraction, non-finite numbers as `null`.
public struct WireEncoder {
    public init() {}

    public func encode<T: Encodable>(_ value: T) throws -> JSONValue {
        if let v = value as? JSONValue { return v }
        let root = Node()
        try value.encode(to: EncoderImpl(node: root, codingPath: []))
        return root.value
    }
}

/// A mutable slot in the tree under construction: containers write into their node, which
/// resolves to a `JSONValue` once encoding is done.
private final class Node {
    var scalar: JSONValue?
    var members: [String: Node]?
    var items: [Node]?

    var value: JSONValue {
        if let scalar { return scalar }
        if let items { return .array(items.map { $0.value }) }
        return .object((members ?? [:]).mapValues { $0.value })
    }

    func set(_ v: JSONValue) {
        scalar = v
        members = nil
        items = nil
    }

    func member(_ key: String) -> Node {
        ensureObject()
        let n = Node()
        members![key] = n
        return n
    }

    func ensureObject() {
        if members == nil {
            scalar = nil
            items = nil
            members = [:]
        }
    }

    func ensureArray() {
        if items == nil {
            scalar = nil
            members = nil
            items = []
        }
    }

    func appendItem() -> Node {
        ensureArray()
        let n = Node()
        items!.append(n)
        return n
    }

    var count: Int { items?.count ?? 0 }
}

private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init(intValue: Int) {
        stringValue = String(intValue)
        self.intValue = intValue
    }
}

private struct EncoderImpl: Encoder {
    let node: Node
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        node.ensureObject()
        return KeyedEncodingContainer(KeyedContainer<Key>(node: node, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        node.ensureArray()
        return UnkeyedContainer(node: node, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        SingleContainer(node: node, codingPath: codingPath)
    }
}

/// Encodes one value into `node`: scalars directly, `JSONValue` as itself, anything else through
/// its own `encode(to:)`.
private func put<T: Encodable>(_ value: T, into node: Node, codingPath: [any CodingKey]) throws {
    switch value {
    case let v as JSONValue: node.set(v)
    case let v as String: node.set(.string(v))
    case let v as Bool: node.set(.bool(v))
    case let v as Double: node.set(.number(v))
    case let v as Float: node.set(.number(Double(v)))
    case let v as Int: node.set(.number(Double(v)))
    case let v as Int64: node.set(.number(Double(v)))
    case let v as Int32: node.set(.number(Double(v)))
    case let v as UInt64: node.set(.number(Double(v)))
    case let v as [String: JSONValue]: node.set(.object(v))
    default: try value.encode(to: EncoderImpl(node: node, codingPath: codingPath))
    }
}

private struct KeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let node: Node
    let codingPath: [any CodingKey]

    mutating func encodeNil(forKey key: Key) throws { node.member(key.stringValue).set(.null) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { node.member(key.stringValue).set(.bool(value)) }
    mutating func encode(_ value: String, forKey key: Key) throws { node.member(key.stringValue).set(.string(value)) }
    mutating func encode(_ value: Double, forKey key: Key) throws { node.member(key.stringValue).set(.number(value)) }
    mutating func encode(_ value: Int, forKey key: Key) throws {
        node.member(key.stringValue).set(.number(Double(value)))
    }
    mutating func encode(_ value: Int64, forKey key: Key) throws {
        node.member(key.stringValue).set(.number(Double(value)))
    }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try put(value, into: node.member(key.stringValue), codingPath: codingPath + [key])
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key)
        -> KeyedEncodingContainer<NestedKey>
    {
        let child = node.member(key.stringValue)
        child.ensureObject()
        return KeyedEncodingContainer(KeyedContainer<NestedKey>(node: child, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let child = node.member(key.stringValue)
        child.ensureArray()
        return UnkeyedContainer(node: child, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder { EncoderImpl(node: node.member("super"), codingPath: codingPath) }
    mutating func superEncoder(forKey key: Key) -> any Encoder {
        EncoderImpl(node: node.member(key.stringValue), codingPath: codingPath + [key])
    }
}

private struct UnkeyedContainer: UnkeyedEncodingContainer {
    let node: Node
    let codingPath: [any CodingKey]
    var count: Int { node.count }

    mutating func encodeNil() throws { node.appendItem().set(.null) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let index = node.count
        try put(value, into: node.appendItem(), codingPath: codingPath + [AnyKey(intValue: index)])
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<
        NestedKey
    > {
        let child = node.appendItem()
        child.ensureObject()
        return KeyedEncodingContainer(KeyedContainer<NestedKey>(node: child, codingPath: codingPath))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let child = node.appendItem()
        child.ensureArray()
        return UnkeyedContainer(node: child, codingPath: codingPath)
    }

    mutating func superEncoder() -> any Encoder { EncoderImpl(node: node.appendItem(), codingPath: codingPath) }
}

private struct SingleContainer: SingleValueEncodingContainer {
    let node: Node
    let codingPath: [any CodingKey]

    mutating func encodeNil() throws { node.set(.null) }
    mutating func encode<T: Encodable>(_ value: T) throws { try put(value, into: node, codingPath: codingPath) }
}
