import FWPCore
import FWPTasks
import Foundation
import Logging

/// Where a claimed job runs. The scheduler claims, records and finishes jobs; an executor runs
/// one job to its result, reporting through the job's context (events, checkpoints,
/// cancellation) and throwing `TaskError.cancelled` when stopped.
protocol JobExecutor: Sendable {
    /// Its name in `health`.
    var name: String { get }
    /// What `health` reports of its back end (nil: nothing to report).
    var status: JSONValue? { get }
    func run(_ job: JobInfo, module: any TaskModule, parameters: TaskParameters, context: JobContext) throws
        -> JSONValue
}

/// This machine: a job runs in fwpd's own process on the worker's thread, or — with `ranks` > 1 —
/// as that many `fwp-task rank` processes under mpirun, sharing the job's threads (ranks ×
/// threads per rank ≤ threads_per_job, one thread each at least), their events and checkpoints
/// relayed into the job's context by `DistributedRun`.
struct LocalExecutor: JobExecutor {
    let config: DaemonConfig
    let logger: Logger
    let name = "local"
    var status: JSONValue? { nil }

    func run(_ job: JobInfo, module: any TaskModule, parameters: TaskParameters, context: JobContext) throws
        -> JSONValue
    {
        let ranks = parameters.values["ranks"]?.doubleValue.map { Int($0) } ?? 1
        guard ranks > 1 else { return try module.run(parameters, context: context) }
        guard let program = config.taskProgram.isEmpty ? DistributedRun.siblingTaskProgram : config.taskProgram,
            FileManager.default.isExecutableFile(atPath: program)
        else {
            throw WireError(
                .rankFailed, "fwp-task, which runs the ranks, is not installed beside fwpd (see task_program)")
        }
        let perRank = max(1, context.threads / ranks)
        if ranks > context.threads {
            logger.warning("job \(job.id): \(ranks) ranks on \(context.threads) threads: the cores are oversubscribed")
        }
        let folder = URL(fileURLWithPath: config.stateDirectory).appendingPathComponent("ranks")
            .appendingPathComponent("job-\(job.id)")
        let run = DistributedRun(
            launch: MPILaunch(mpirun: config.mpirun, extraArguments: config.mpirunArguments), taskProgram: program)
        return try run.run(
            module: job.task, parameters: parameters, ranks: ranks, threadsPerRank: perRank, folder: folder,
            context: context)
    }
}
