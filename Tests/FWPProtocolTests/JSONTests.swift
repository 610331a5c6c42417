import FWPProtocol
import Foundation
import Testing

/// The protocol's own JSON reader and writer, checked against Foundation's JSONSerialization.
@Suite struct JSONTests {
    @Test func parsesWhatFoundationParses() throws {
        let text =
            #"{"a": [1, -2.5e3, 0.001, true, false, null], "b": {"c": "x\"y\\z\n\u00e9\ud83d\ude00/"}, "d": 12345678901}"#
        let mine = try JSONValue.parse(text)
        let theirs = try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
        #expect(mine["a"] == .array([1, -2500, 0.001, true, false, .null]))
        #expect(mine["b"]?["c"]?.stringValue == (theirs["b"] as! [String: Any])["c"] as? String)
        #expect(mine["d"]?.doubleValue == 12345678901)
    }

    @Test func writesSortedCompactJSONThatRoundTrips() throws {
        let v: JSONValue = .object([
            "z": 1, "a": .array(["tab\there", .null, 2.5, true]), "m": .object(["q": "\u{1}é"]),
        ])
        let text = v.jsonText
        #expect(text == #"{"a":["tab\there",null,2.5,true],"m":{"q":"\u0001é"},"z":1}"#)
        #expect(try JSONValue.parse(text) == v)
        #expect(try JSONSerialization.jsonObject(with: Data(text.utf8)) is [String: Any], "Foundation reads it too")
    }

    @Test func rejectsMalformedInput() {
        for bad in [
            "", "{", "[1,]", "{\"a\" 1}", "tru", "01", "1.", "\"\u{1}\"", "{\"a\":1} x", "\"\\q\"", "[\"\\ud800\"]",
            "nan",
        ] {
            #expect(throws: (any Error).self, "\(bad.debugDescription)") { try JSONValue.parse(bad) }
        }
        #expect(throws: (any Error).self) { try JSONValue.parse(Data([0x22, 0xFF, 0x22])) }
        #expect(throws: (any Error).self) {
            try JSONValue.parse(String(repeating: "[", count: 1000) + String(repeating: "]", count: 1000))
        }
    }

    @Test func integerFastPathMatchesTextConversion() throws {
        // Up to 15 digits go through the integer path, longer ones and fractions through Double(text).
        for text in [
            "0", "-0", "7", "-42", "999999999999999", "-999999999999999", "1234567890123456", "12345678901234567890",
            "3.25", "-1e3", "5E-2",
        ] {
            let v = try JSONValue.parse(text)
            #expect(v.doubleValue == Double(text), "\(text)")
        }
        #expect(try JSONValue.parse("[1,23,456]") == .array([1, 23, 456]))
    }

    @Test func wireEncoderAgreesWithFoundation() throws {
        let job = JobInfo(
            id: 12, task: "lm", preset: nil,
            parameters: ["lr": 0.003, "name": "a/b \"q\"", "layers": 2, "nested": .object(["x": .array([1, .null])])],
            priority: -3, state: .failed, attempt: 2, maxAttempts: 3, idempotencyKey: "k-1",
            createdAt: 1_764_400_000.125, startedAt: nil,
            finishedAt: 1_764_400_010.5, result: .object(["best": 3.02]),
            error: WireError(ErrorCode("diverged"), "loss is nan", details: ["step": 7]),
            cancelRequested: true, lastSeq: 41)
        let event = JobEvent(
            job: 12, seq: 3, time: 1_764_400_001.75, kind: "progress", step: 10, total: 600, loss: 2.5,
            tokensPerSecond: 21_000.5)
        let foundation = JSONEncoder()
        foundation.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        func check<T: Encodable>(_ value: T) throws {
            let mine = WireJSON.encode(value)
            let theirs = try foundation.encode(value)
            #expect(try JSONValue.parse(Data(mine)) == JSONValue.parse(theirs), "\(T.self)")
            // Keys come out sorted, and absent optionals are left out rather than written as null.
            #expect(String(decoding: mine, as: UTF8.self) == String(decoding: theirs, as: UTF8.self), "\(T.self)")
        }
        try check(job)
        try check(event)
        try check([job, job])
        try check(WireError(ErrorCode("bad"), "message"))
        try check(
            CheckpointInfo(
                id: 1, job: 12, step: 100, path: "/x/y.safetensors", size: 1 << 40, sha256: "ab", best: false,
                createdAt: 5))
        #expect(!String(decoding: WireJSON.encode(event), as: UTF8.self).contains("null"))
    }
}
