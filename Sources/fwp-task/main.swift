// fwp-task: runs a task module or preset in-process, with checkpoints in a state directory.
//
//   fwp-task list                          modules and presets
//   fwp-task show NAME                     a module's or preset's parameters
//   fwp-task run NAME [--set key=value]... [--state DIR] [--threads N] [--ranks N] [--fresh] [--json]
//   fwp-task rank MODULE --parameters FILE --relay DIR --threads N
//                                          one rank of a job on several processes (started by mpirun)
//   mpirun -np N fwp-task mpi-check        checks that MPI works here for fwp
//
// With --ranks N (or the parameter ranks = N) the job runs as N processes under mpirun, each with
// --threads threads (default: the cores divided by N); FWP_MPIRUN_ARGUMENTS adds mpirun options (a
// hostfile, say). See docs/SCALING.md.
//
// NAME is a preset (tasks/NAME.json) or a module. A run resumes from the newest valid checkpoint
// in its state directory (default ./var/fwp-task/NAME) unless --fresh; Ctrl-C stops it after the
// current step, and the same command resumes it.
import FWPConsole
import FWPCore
import FWPTasks
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

func fail(_ message: String, code: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("fwp-task: \(message)\n".utf8))
    exit(code)
}

/// Writes a line to standard output unbuffered, in order with the event printer's output.
func say(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }

let usage = """
    usage: fwp-task list
           fwp-task show NAME
           fwp-task run NAME [--set key=value]... [--state DIR] [--threads N] [--ranks N] [--fresh] [--json]
                    [--tasks DIR]
    NAME is a preset from the tasks folder or a module (retrieval, lm, eval, generate, exec).
    --ranks N runs the job as N processes under mpirun (data-parallel; --threads is then per rank).
    """

BLAS.relaunchIfNeeded()
var args = Array(CommandLine.arguments.dropFirst())
guard let command = args.first else { fail(usage) }
args.removeFirst()
if ["-h", "--help", "help"].contains(command) {
    say(usage)
    exit(0)
}
var overrides: [String: JSONValue] = [:]
var stateDir: String? = nil
var threads = max(1, ProcessInfo.processInfo.activeProcessorCount)
var threadsGiven = false
var parametersFile: String? = nil, relayDir: String? = nil, ingest: String? = nil, ingestTokenFile: String? = nil
var ingestKeysFile: String? = nil
var fresh = false, json = false
var tasksDir = ProcessInfo.processInfo.environment["FWP_TASKS_DIR"] ?? "tasks"
var positional: [String] = []
while !args.isEmpty {
    let a = args.removeFirst()
    func value() -> String {
        guard !args.isEmpty else { fail("\(a) needs a value") }
        return args.removeFirst()
    }
    switch a {
    case "--set":
        do {
            let (k, v) = try parseOverride(value())
            overrides[k] = v
        } catch { fail("\(error)") }
    case "--state": stateDir = value()
    case "--threads":
        guard let n = Int(value()), n >= 1 else { fail("--threads needs a positive integer") }
        threads = n
        threadsGiven = true
    case "--ranks":
        guard let n = Int(value()), n >= 1 else { fail("--ranks needs a positive integer") }
        overrides["ranks"] = .number(Double(n))
    case "--parameters": parametersFile = value()
    case "--relay": relayDir = value()
    case "--ingest": ingest = value()
    case "--ingest-token-file": ingestTokenFile = value()
    case "--ingest-keys-file": ingestKeysFile = value()
    case "--fresh": fresh = true
    case "--json": json = true
    case "--tasks": tasksDir = value()
    case "-h", "--help":
        say(usage)
        exit(0)
    default:
        if a.hasPrefix("-") { fail("unknown option \(a)\n\(usage)") }
        positional.append(a)
    }
}

let registry = TaskRegistry.builtIn
var presets: [String: Preset] = [:]
if FileManager.default.fileExists(atPath: tasksDir) {
    do { presets = try registry.loadPresets(from: URL(fileURLWithPath: tasksDir)) } catch { fail("\(error)") }
}

@MainActor func resolve(_ name: String) -> (any TaskModule, [String: JSONValue], String) {
    if let p = presets[name] {
        return (registry.module(named: p.module)!, p.parameters, p.description)
    }
    if let m = registry.module(named: name) { return (m, [:], m.summary) }
    fail("no preset or module called '\(name)' (try: fwp-task list)")
}

switch command {
case "mpi-check": runMPICheck()
case "rank":
    guard positional.count == 1 else { fail(usage) }
    runRank(
        module: positional[0], parametersFile: parametersFile, relay: relayDir, threads: threads, ingest: ingest,
        tokenFile: ingestTokenFile, keysFile: ingestKeysFile)
case "list":
    say("modules:")
    for n in registry.names { say("  \(n)") }
    say("presets (\(tasksDir)):")
    for p in presets.values.sorted(by: { $0.name < $1.name }) {
        say("  \(p.name.padding(toLength: 22, withPad: " ", startingAt: 0)) \(p.module): \(p.description)")
    }
case "show":
    guard positional.count == 1 else { fail(usage) }
    let (module, preset, description) = resolve(positional[0])
    say("\(positional[0]) (module \(module.name)): \(description)\n")
    for s in module.parameters {
        let value = preset[s.name] ?? s.defaultValue
        var line =
            "  \(s.name.padding(toLength: 16, withPad: " ", startingAt: 0)) \(s.type.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0))"
        line += " = \(value.map { $0.description } ?? (s.optional ? "(unset)" : "(required)"))"
        if let c = s.choices { line += "  {\(c.joined(separator: ", "))}" }
        if s.minimum != nil || s.maximum != nil {
            line += "  [\(s.minimum.map { "\($0)" } ?? "")…\(s.maximum.map { "\($0)" } ?? "")]"
        }
        say(line + "\n      \(s.description)")
    }
case "run":
    guard positional.count == 1 else { fail(usage) }
    let name = positional[0]
    let (module, preset, _) = resolve(name)
    let parameters: TaskParameters
    do {
        parameters = try module.validate(preset.merging(overrides) { _, new in new })
    } catch { fail("\(error)") }
    let dir = URL(fileURLWithPath: stateDir ?? "var/fwp-task/\(name)")
    if fresh { try? FileManager.default.removeItem(at: dir.appendingPathComponent("checkpoints")) }
    let printer = ProgressView(json: json)
    let context: DirectoryContext
    do { context = try DirectoryContext(directory: dir, threads: threads, printer: printer) } catch {
        fail("cannot use state directory \(dir.path): \(error)")
    }
    signal(SIGINT, SIG_IGN)
    let sigint = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
    sigint.setEventHandler {
        printer.log("warning", "interrupt: stopping after the current step")
        context.cancel()
    }
    sigint.resume()
    let ranks = parameters.values["ranks"]?.doubleValue.map { Int($0) } ?? 1
    if ranks > 1 && !threadsGiven { threads = max(1, threads / ranks) }
    if !json {
        say(
            "\(name): module \(module.name), state in \(dir.path), "
                + (ranks > 1 ? "\(ranks) ranks × \(threads) threads" : "\(threads) threads"))
    }
    do {
        let result: JSONValue
        if ranks > 1 {
            let program = DistributedRun.siblingTaskProgram ?? CommandLine.arguments[0]
            result = try DistributedRun(launch: .fromEnvironment, taskProgram: program).run(
                module: module.name, parameters: parameters, ranks: ranks, threadsPerRank: threads,
                folder: dir.appendingPathComponent("ranks"), context: context)
        } else {
            result = try module.run(parameters, context: context)
        }
        printer.finish()
        if json {
            say(JSONValue.object(["result": result]).jsonText)
        } else {
            say("result:")
            for (k, v) in (result.objectValue ?? ["value": result]).sorted(by: { $0.key < $1.key }) {
                say("  \(k): \(ProgressView.format(v))")
            }
            say("checkpoints: \(context.checkpoints.path)")
        }
    } catch TaskError.cancelled {
        printer.finish()
        fail("stopped; run the same command again to resume from the last checkpoint", code: 130)
    } catch {
        printer.finish()
        fail("\(error)", code: 1)
    }
default:
    fail("unknown command '\(command)'\n\(usage)")
}
