import CSpawn
import FWPCore
import FWPMPI
import FWPTasks
import Foundation
import Synchronization
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#endif

extension Communicator: Collective {}

/// The context of one rank of a job started by `DistributedRun` (`fwp-task rank`): rank 0 speaks
/// the relay protocol on standard output — events, checkpoints written into the relay folder, log
/// lines — and reads the checkpoint to resume from there; the other ranks only compute, and say
/// nothing but warnings and errors (on standard error, which mpirun passes on).
final class RelayContext: TaskContext, Sendable {
    let communicator: Communicator
    let folder: URL
    let threads: Int
    /// 0 running, 1 cancelled, 2 paused (checkpoint, then stop).
    private let stop = Mutex(0)
    /// fwpd's ingest endpoint, for a job it submitted to Slurm; nil: lines go to standard output.
    let ingest: IngestClient?

    init(communicator: Communicator, folder: URL, threads: Int, ingest: IngestClient?) {
        self.communicator = communicator
        self.folder = folder
        self.threads = threads
        self.ingest = ingest
    }

    /// Sends one relay line: to fwpd's ingest endpoint, or on standard output.
    func line(_ text: String) {
        if let ingest { ingest.send(text) } else { FileHandle.standardOutput.write(Data((text + "\n").utf8)) }
    }

    var rank: Int { communicator.rank }
    var collective: (any Collective)? { communicator }
    var isCancelled: Bool { stop.withLock { $0 != 0 } }
    var checkpointBeforeStopping: Bool { stop.withLock { $0 == 2 } }
    func cancel() { stop.withLock { $0 = max($0, 1) } }
    func pause() { stop.withLock { $0 = 2 } }

    /// One relay line: `{"key": body}` (rank 0 only). Sent to fwpd's ingest endpoint, rank 0's
    /// last line (its result, or why it stopped) is also left in the folder as `final`, where fwpd
    /// finds it if it was away when the rank ended.
    func relay(_ key: String, _ body: JSONValue) {
        let text = JSONValue.object([key: body]).jsonText
        if ingest != nil, rank == 0, ["result", "stopped", "error"].contains(key) {
            try? writeFileDurably(Data(text.utf8), to: folder.appendingPathComponent("final"))
        }
        line(text)
    }

    func emit(_ event: ProgressEvent) {
        guard rank == 0 else { return }
        let json = String(decoding: WireJSON.encode(event), as: UTF8.self)
        line("{\"event\":\(json)}")
    }

    func saveCheckpoint(_ data: Data, step: Int, best: Bool) throws {
        guard rank == 0 else { return }
        let name = "checkpoint-\(step)\(best ? "-best" : "").safetensors"
        try writeFileDurably(data, to: folder.appendingPathComponent(name))
        relay("checkpoint", .object(["file": .string(name), "step": .number(Double(step)), "best": .bool(best)]))
    }

    func latestCheckpoint() throws -> Data? {
        guard rank == 0 else { return nil }
        let url = folder.appendingPathComponent(DistributedRun.resumeFileName)
        guard let data = FileManager.default.contents(atPath: url.path) else { return nil }
        try Safetensors.verify(data)
        return data
    }

    func log(_ level: TaskLogLevel, _ message: String) {
        if rank == 0 {
            relay("log", .object(["level": .string(level.rawValue), "message": .string(message)]))
        } else if level == .warning || level == .error {
            FileHandle.standardError.write(Data("rank \(rank): [\(level.rawValue)] \(message)\n".utf8))
        }
    }
}

/// `fwp-task rank MODULE --parameters FILE --relay DIR --threads N`: one rank of a job, as started
/// by mpirun for `DistributedRun`. Never returns.
func runRank(
    module name: String, parametersFile: String?, relay: String?, threads: Int, ingest: String?, tokenFile: String?,
    keysFile: String?
) -> Never {
    // Die with mpirun, whichever way it ends, so that no rank outlives its launch.
    if fwp_die_with_parent() != 0 { exit(1) }
    func report(_ code: ErrorCode, _ message: String, rank: Int) {
        let line = JSONValue.object([
            "error": .object([
                "code": .string(code.rawValue), "message": .string(message), "rank": .number(Double(rank)),
            ])
        ])
        FileHandle.standardOutput.write(Data((line.jsonText + "\n").utf8))
    }
    guard MPI.launchedByMPI else { fail("fwp-task rank is started by mpirun (use fwp-task run --ranks N, or fwpd)") }
    guard let module = TaskRegistry.builtIn.module(named: name), let parametersFile, let relay else {
        report(.invalidRequest, "fwp-task rank needs a module, --parameters and --relay", rank: 0)
        exit(1)
    }
    let communicator: Communicator
    do { communicator = try MPI.initialize() } catch {
        report(.rankFailed, "\(error)", rank: 0)
        exit(1)
    }
    var client: IngestClient? = nil
    if let ingest, communicator.rank == 0 {
        guard let tokenFile, let token = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
            report(.invalidRequest, "--ingest needs --ingest-token-file with the job's token", rank: 0)
            communicator.abort(code: 1)
        }
        // With CURVE: fwpd's public key, then this job's secret key, one a line.
        var curve: (String, CurveKeyPair)? = nil
        if let keysFile {
            let lines = ((try? String(contentsOfFile: keysFile, encoding: .utf8)) ?? "").split(separator: "\n").map(
                String.init)
            guard lines.count == 2, CurveKeyPair.isValidKey(lines[0]), CurveKeyPair.isValidKey(lines[1]),
                let publicKey = try? CurveKeyPair.publicKey(forSecret: lines[1])
            else {
                report(.invalidRequest, "--ingest-keys-file does not hold fwpd's public key and a secret key", rank: 0)
                communicator.abort(code: 1)
            }
            curve = (lines[0], CurveKeyPair(publicKey: publicKey, secretKey: lines[1]))
        }
        do {
            client = try IngestClient(
                endpoint: ingest, token: token.trimmingCharacters(in: .whitespacesAndNewlines), curve: curve)
        } catch {
            report(.rankFailed, "cannot reach fwpd at \(ingest): \(error)", rank: 0)
            communicator.abort(code: 1)
        }
    }
    let context = RelayContext(
        communicator: communicator, folder: URL(fileURLWithPath: relay), threads: threads, ingest: client)
    func finish(_ code: Int32) -> Never {
        // fwpd has every line before the rank goes; what it does not acknowledge within a minute
        // (it is away) stays in the folder for it.
        if let left = client?.flush(timeout: 60), !left.isEmpty {
            let text = left.map { "\($0.seq)\t\($0.line)\n" }.joined()
            try? writeFileDurably(
                Data(text.utf8), to: URL(fileURLWithPath: relay).appendingPathComponent("unsent.jsonl"))
        }
        if code == 0 {
            MPI.finalize()
            exit(0)
        }
        communicator.abort(code: code)
    }
    for (sig, action) in [(SIGUSR1, context.pause), (SIGTERM, context.cancel), (SIGINT, context.cancel)] {
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler(handler: action)
        source.resume()
        signalSources.append(source)
    }
    do {
        guard let data = FileManager.default.contents(atPath: parametersFile),
            case .object(let values) = try JSONValue.parse(String(decoding: data, as: UTF8.self))
        else { throw TaskError.failed(code: .invalidRequest, message: "\(parametersFile) holds no JSON object") }
        let result = try module.run(try module.validate(values), context: context)
        if context.rank == 0 { context.relay("result", result) }
        finish(0)
    } catch TaskError.cancelled {
        if context.rank == 0 { context.relay("stopped", .bool(true)) }
        finish(0)
    } catch TaskError.failed(let code, let message) {
        context.relay("error", errorBody(code, message, rank: context.rank))
    } catch let e as ParameterError {
        context.relay("error", errorBody(.invalidParameter, e.description, rank: context.rank))
    } catch {
        context.relay("error", errorBody(.internal, "\(error)", rank: context.rank))
    }
    // The other ranks may be waiting in a collective: end them all now.
    finish(1)
}

func errorBody(_ code: ErrorCode, _ message: String, rank: Int) -> JSONValue {
    .object(["code": .string(code.rawValue), "message": .string(message), "rank": .number(Double(rank))])
}

nonisolated(unsafe) var signalSources: [DispatchSourceSignal] = []

/// `mpirun -np N fwp-task mpi-check`: checks that MPI works for fwp on these machines — every
/// collective data-parallel training uses, with results compared against what they must be, and
/// an invalid call answered with MPI's own error — and prints one line per rank. Exits 0 when
/// all is well.
func runMPICheck() -> Never {
    guard MPI.launchedByMPI else { fail("mpi-check runs under mpirun: mpirun -np 2 fwp-task mpi-check") }
    do {
        let c = try MPI.initialize()
        var problems: [String] = []
        var sum = [Float](repeating: Float(c.rank + 1), count: 100_000)
        try sum.withUnsafeMutableBufferPointer { try c.allreduceSum($0) }
        let expected = Float(c.size * (c.size + 1) / 2)
        if sum.contains(where: { $0 != expected }) { problems.append("allreduce gave \(sum[0]), not \(expected)") }
        let root = c.size - 1
        let bytes = try c.broadcast(bytes: c.rank == root ? Array("from the last rank".utf8) : [], root: root)
        if String(decoding: bytes, as: UTF8.self) != "from the last rank" { problems.append("broadcast lost bytes") }
        if try c.allgather(UInt64(c.rank * 7)) != (0..<c.size).map({ UInt64($0 * 7) }) {
            problems.append("allgather out of order")
        }
        if try c.maximum(Int64(c.rank)) != Int64(c.size - 1) { problems.append("maximum wrong") }
        var invalid = "no error"
        do {
            let one: [UInt8] = [1]
            try one.withUnsafeBytes { try c.send($0, to: c.size, tag: 0) }  // no such rank
        } catch { invalid = "\(error)" }
        if !invalid.contains("MPI_ERR_RANK") { problems.append("an invalid rank was not refused by MPI") }
        try c.barrier()
        say(
            "rank \(c.rank) of \(c.size): "
                + (problems.isEmpty ? "collectives ok; invalid call: \(invalid)" : problems.joined(separator: "; ")))
        MPI.finalize()
        exit(problems.isEmpty ? 0 : 1)
    } catch {
        fail("\(error)", code: 1)
    }
}
