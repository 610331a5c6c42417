import FWPProtocol
import Foundation

/// The sbatch settings a job may ask for under the Slurm executor — in its preset's `slurm`
/// object, overridden by its submit's — over fwpd's configured defaults. Each value becomes an
/// `#SBATCH` line of the job's script, so each is checked against Slurm's own syntax (a newline or
/// a quote never reaches the script), and a partition must be one fwpd's configuration offers.
struct SlurmRequest: Equatable {
    var partition: String?
    var timeLimit: String?
    var memory: String?
    var cpusPerTask: Int?

    static let keys = ["cpus_per_task", "memory", "partition", "time_limit"]

    /// Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
    /// days-hours:minutes, days-hours:minutes:seconds.
    static func isTimeLimit(_ s: String) -> Bool {
        s.wholeMatch(of: /(\d{1,4}-)?\d{1,6}(:\d{1,2}){0,2}/) != nil
    }

    /// A size in megabytes, or with a unit K, M, G or T.
    static func isMemory(_ s: String) -> Bool { s.wholeMatch(of: /\d{1,9}[KMGT]?/) != nil }

    /// A partition name as Slurm spells them.
    static func isPartition(_ s: String) -> Bool { s.wholeMatch(of: /[A-Za-z0-9_.\-]{1,64}/) != nil }

    /// Reads and checks `object` (the `slurm` field of a submit, or a preset's); `field` names it in
    /// errors.
    init(_ object: [String: JSONValue], allowedPartitions: [String], field: String = "slurm") throws {
        func fail(_ key: String, _ message: String) -> WireError {
            WireError(
                .invalidParameter, "\(field).\(key) \(message)", details: ["parameter": .string("\(field).\(key)")])
        }
        if let unknown = object.keys.sorted().first(where: { !Self.keys.contains($0) }) {
            throw fail(
                unknown, "is not a Slurm setting a job may ask for; allowed: \(Self.keys.joined(separator: ", "))")
        }
        func string(_ key: String) throws -> String? {
            guard let v = object[key], v != .null else { return nil }
            guard case .string(let s) = v else { throw fail(key, "must be a string, got \(v.typeName)") }
            return s
        }
        if let p = try string("partition") {
            guard Self.isPartition(p), allowedPartitions.contains(p) else {
                throw fail(
                    "partition",
                    allowedPartitions.isEmpty
                        ? "cannot be chosen: this fwpd offers no partitions to choose from (slurm_partitions)"
                        : "must be one of \(allowedPartitions.joined(separator: ", "))")
            }
            partition = p
        }
        if let t = try string("time_limit") {
            guard Self.isTimeLimit(t) else {
                throw fail("time_limit", "must be a Slurm time: minutes, hours:minutes:seconds or days-hours[:minutes]")
            }
            timeLimit = t
        }
        if let m = try string("memory") {
            guard Self.isMemory(m) else { throw fail("memory", "must be a size like 4096, 8G or 512M") }
            memory = m
        }
        if let v = object["cpus_per_task"], v != .null {
            guard case .number(let n) = v, n.rounded() == n, n >= 1, n <= 4096 else {
                throw fail("cpus_per_task", "must be an integer from 1 to 4096")
            }
            cpusPerTask = Int(n)
        }
    }
}
