import FWPCore
import Foundation
import Testing

@testable import FWPTasks

@Suite struct SchemaTests {
    func rejected(_ module: any TaskModule, _ given: [String: JSONValue]) -> ParameterError? {
        do {
            _ = try module.validate(given)
            return nil
        } catch let e as ParameterError {
            return e
        } catch {
            Issue.record("unexpected error \(error)")
            return nil
        }
    }

    @Test func retrievalRejectsEachBadParameterByName() {
        let t = RetrievalTask()
        let cases: [(String, [String: JSONValue])] = [
            ("keys", ["keys": 1]), ("keys", ["keys": 2.5]), ("keys", ["keys": "ten"]), ("setting", ["setting": 3]),
            ("rule", ["rule": "hebb"]), ("attention", ["attention": "relu"]),
            ("attention", ["attention": "dpfp-200", "key_size": 8]),
            ("lr", ["lr": 0]), ("batch", ["batch": 0]), ("bogus", ["bogus": 1]), ("target_loss", ["target_loss": -1]),
            ("model", ["model": "gru"]), ("rule", ["model": "delta-rnn"]),
            ("attention", ["model": "delta-lstm", "rule": "delta", "attention": "softmax"]),
            ("attention", ["model": "rdn", "rule": "delta", "attention": "dpfp-1"]),
            ("attention", ["model": "layer", "attention": "favor-8"]),
        ]
        for (name, given) in cases {
            let e = rejected(t, given)
            #expect(e?.parameter == name, "\(given) should be rejected naming \(name), got \(String(describing: e))")
            #expect(e?.description.contains("'\(name)'") == true)
        }
        #expect(rejected(t, [:]) == nil, "defaults are valid")
    }

    @Test func languageModelChecksFilesAndCombinations() throws {
        let dir = TemporaryDirectory()
        let good = dir.file("train.txt", sampleText(lines: 50, seed: 1))
        let empty = dir.file("empty.txt", "")
        let binary = dir.url.appendingPathComponent("binary.txt").path
        try Data([0xFF, 0xFE, 0x00, 0xC3]).write(to: URL(fileURLWithPath: binary))
        let t = LanguageModelTask()
        let cases: [(String, [String: JSONValue])] = [
            ("train", [:]),
            ("train", ["train": "/nonexistent/file.txt"]),
            ("train", ["train": .string(empty)]),
            ("train", ["train": .string(dir.url.path)]),
            ("train", ["train": .string(binary), "level": "word"]),
            ("data_dir", ["train": .string(good), "data_dir": .string(dir.url.path)]),
            ("data_dir", ["data_dir": .string(dir.url.path)]),
            ("valid", ["train": .string(good), "valid": "/nonexistent"]),
            ("carry", ["train": .string(good), "attention": "softmax", "carry": true]),
            ("feature_map", ["train": .string(good), "feature_map": "cosine"]),
            ("level", ["train": .string(good), "level": "char"]),
            ("segment", ["train": .string(good), "segment": 1]),
            ("tied", ["train": .string(good), "tied": "yes"]),
            ("fast_net", ["train": .string(good), "fast_net": "delta-gru"]),
            ("fast_net", ["train": .string(good), "fast_net": "delta-rnn", "attention": "softmax"]),
            ("rule", ["train": .string(good), "fast_net": "delta-lstm", "rule": "sum"]),
            ("short_conv", ["train": .string(good), "fast_net": "rdn", "short_conv": 4]),
            ("feature_map", ["train": .string(good), "fast_net": "rdn", "feature_map": "dpfp-1"]),
            ("normalization", ["train": .string(good), "fast_net": "rdn", "normalization": "l2"]),
            ("normalization", ["train": .string(good), "fast_net": "delta-rnn", "normalization": "attention"]),
        ]
        for (name, given) in cases {
            let e = rejected(t, given)
            #expect(e?.parameter == name, "\(given) should be rejected naming \(name), got \(String(describing: e))")
        }
        #expect(rejected(t, ["train": .string(good)]) == nil)
        #expect(rejected(t, ["train": .string(binary), "level": "byte"]) == nil, "any bytes are a byte-level text")
    }

    @Test func evalGenerateExecCheckTheirInputs() throws {
        let dir = TemporaryDirectory()
        let corrupt = dir.file("bad.safetensors", "not a checkpoint at all")
        let text = dir.file("t.txt", "hello\n")
        #expect(
            rejected(EvalTask(), ["checkpoint": .string(corrupt), "text": .string(text)])?.parameter == "checkpoint")
        #expect(rejected(EvalTask(), ["checkpoint": "/nonexistent", "text": .string(text)])?.parameter == "checkpoint")
        #expect(rejected(GenerateTask(), ["checkpoint": .string(corrupt)])?.parameter == "checkpoint")
        #expect(rejected(GenerateTask(), ["checkpoint": .string(corrupt), "max_tokens": 0])?.parameter == "max_tokens")
        #expect(rejected(ExecTask(), ["program": .string(text)])?.parameter == "program", "not executable")
        #expect(rejected(ExecTask(), ["program": "/bin/true", "args": "[1, 2]"])?.parameter == "args")
        #expect(rejected(ExecTask(), ["program": "/bin/true", "directory": "/nonexistent"])?.parameter == "directory")
        #expect(rejected(ExecTask(), ["program": "/bin/true"]) == nil)
    }

    @Test func overridesParseTypedValues() throws {
        #expect(try parseOverride("keys=20") == ("keys", .number(20)))
        #expect(try parseOverride("carry=true") == ("carry", .bool(true)))
        #expect(try parseOverride("train=/tmp/a b.txt") == ("train", .string("/tmp/a b.txt")))
        #expect(try parseOverride("prompt=\"42\"") == ("prompt", .string("42")))
        #expect(throws: ParameterError.self) { try parseOverride("novalue") }
    }

    @Test func repositoryPresetsLoadAndValidate() throws {
        let tasks = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("tasks")
        let presets = try TaskRegistry.builtIn.loadPresets(from: tasks)
        #expect(
            Set(presets.keys) == [
                "retrieval-capacity", "retrieval-update", "lm-bytes-small", "lm-bytes-gated", "lm-wikitext-small",
                "lm-bytes-delta-rnn", "lm-bytes-delta-lstm", "lm-bytes-rdn",
                "eval", "generate",
            ])
        #expect(presets["retrieval-update"]?.parameters["setting"] == 2)
    }

    @Test func badPresetIsRejectedWithItsFileName() throws {
        let dir = TemporaryDirectory()
        dir.file(
            "oops.json", #"{"name": "oops", "module": "retrieval", "description": "", "parameters": {"keys": -4}}"#)
        do {
            _ = try TaskRegistry.builtIn.loadPresets(from: dir.url)
            Issue.record("accepted")
        } catch let e as PresetError {
            #expect(e.file == "oops.json" && e.message.contains("keys"))
        }
    }
}
