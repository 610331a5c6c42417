import FWPProtocol
import Foundation
import Testing

/// The protocol's own JSON reader and writer, checked against Foundation's JSONSerialization.
@Suite struct JSONTests {
    @Test func parsesWhatFoundationParses() throws {
        let text = #"{"a": [1, -2.5e3, 0.001, true, false, null], "b": {"c": "x\"y\\z\n\u00e9\ud83d\ude00/"}, "d": 12345678901}"#
        let mine = try JSONValue.parse(text)
        let theirs = try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
        #expect(mine["a"] == .array([1, -2500, 0.001, true, false, .null]))
        #expect(mine["b"]?["c"]?.stringValue == (theirs["b"] as! [String: Any])["c"] as? String)
        #expect(mine["d"]?.doubleValue == 12345678901)
    }

    @Test func writesSortedCompactJSONThatRoundTrips() throws {
        let v: JSONValue = .object(["z": 1, "a": .array(["tab\there", .null, 2.5, true]), "m": .object(["q": "\u{1}é"])])
        let text = v.jsonText
        #expect(text == #"{"a":["tab\there",null,2.5,true],"m":{"q":"\u0001é"},"z":1}"#)
        #expect(try JSONValue.parse(text) == v)
        #expect(try JSONSerialization.jsonObject(with: Data(text.utf8)) is [String: Any], "Foundation reads it too")
    }

    @Test func rejectsMalformedInput() {
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "tru", "01", "1.", "\"\u{1}\"", "{\"a\":1} x", "\"\\q\"", "[\"\\ud800\"]", "nan"] {
            #expect(throws: (any Error).self, "\(bad.debugDescription)") { try JSONValue.parse(bad) }
        }
        #expect(throws: (any Error).self) { try JSONValue.parse(Data([0x22, 0xFF, 0x22])) }
        #expect(throws: (any Error).self) { try JSONValue.parse(String(repeating: "[", count: 1000) + String(repeating: "]", count: 1000)) }
    }
}
