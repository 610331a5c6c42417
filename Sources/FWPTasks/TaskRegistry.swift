import FWPProtocol
import Foundation

/// The task modules a process knows, by name.
public struct TaskRegistry: Sendable {
    public private(set) var modules: [String: any TaskModule] = [:]

    public init(_ modules: [any TaskModule] = []) {
        for m in modules { register(m) }
    }

    /// The built-in modules: retrieval, lm, eval, generate, exec.
    public static let builtIn = TaskRegistry([
        RetrievalTask(), LanguageModelTask(), EvalTask(), GenerateTask(), ExecTask(),
    ])

    public mutating func register(_ module: any TaskModule) {
        precondition(modules[module.name] == nil, "task \(module.name) registered twice")
        modules[module.name] = module
    }

    public func module(named name: String) -> (any TaskModule)? { modules[name] }

    public var names: [String] { modules.keys.sorted() }
}

/// A named set of default parameters for a task module, read from `tasks/<name>.json`.
public struct Preset: Codable, Equatable, Sendable {
    /// The preset's name (the file name without `.json`).
    public var name: String
    /// The task module it runs.
    public var module: String
    public var description: String
    /// Parameters that override the module's defaults; submit-time values override these.
    public var parameters: [String: JSONValue]
    /// sbatch settings for the preset's jobs under the Slurm executor (partition, time_limit,
    /// memory, cpus_per_task); a submit's own `slurm` values override these.
    public var slurm: [String: JSONValue]? = nil

    /// Module defaults ← preset parameters ← `overrides`.
    public func merged(with overrides: [String: JSONValue]) -> [String: JSONValue] {
        parameters.merging(overrides) { _, new in new }
    }
}

/// Errors loading presets; each names the file.
public struct PresetError: Error, CustomStringConvertible, Sendable {
    public var file: String
    public var message: String
    public var description: String { "preset \(file): \(message)" }
}

extension TaskRegistry {
    /// Reads every `*.json` in `directory` as a preset and validates it against its module.
    public func loadPresets(from directory: URL) throws -> [String: Preset] {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".json") }
            .sorted()
        var presets: [String: Preset] = [:]
        for file in files {
            let url = directory.appendingPathComponent(file)
            let preset: Preset
            do {
                preset = try JSONDecoder().decode(Preset.self, from: Data(contentsOf: url))
            } catch {
                throw PresetError(file: file, message: "does not parse: \(error)")
            }
            guard preset.name + ".json" == file else {
                throw PresetError(file: file, message: "its name '\(preset.name)' must match the file name")
            }
            guard let module = module(named: preset.module) else {
                throw PresetError(file: file, message: "unknown module '\(preset.module)'")
            }
            do {
                _ = try module.parameters.validate(preset.parameters)
            } catch {
                throw PresetError(file: file, message: "\(error)")
            }
            presets[preset.name] = preset
        }
        return presets
    }
}
