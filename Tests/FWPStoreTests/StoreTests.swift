import FWPProtocol
import FWPStore
import Foundation
import Testing

/// The store's in-memory copy of jobs must never hide a committed change.
@Suite struct StoreTests {
    func makeStore() throws -> JobStore {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fwp-store-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return try JobStore(path: dir.appendingPathComponent("fwpd.sqlite").path)
    }

    @Test func cachedJobsFollowEveryWrite() throws {
        let store = try makeStore()
        let (job, created, first) = try store.submit(
            task: "retrieval", preset: nil, parameters: ["keys": 4], priority: 0, idempotencyKey: nil, maxAttempts: 2)
        #expect(created && first?.seq == 1 && first?.state == .queued)
        #expect(try store.job(job.id)?.lastSeq == 1)  // now cached
        #expect(try store.job(job.id)?.state == .queued)

        let (claimed, _) = try #require(try store.claim(leaseSeconds: 60))
        #expect(claimed.id == job.id)
        #expect(try store.job(job.id)?.state == .running)
        #expect(try store.job(job.id)?.attempt == 1)

        _ = try store.appendEvent(JobEvent(job: job.id, seq: 0, time: 0, kind: "progress", step: 1))
        #expect(try store.job(job.id)?.lastSeq == 3)

        _ = try store.requestCancel(job.id)
        #expect(try store.job(job.id)?.cancelRequested == true)

        _ = try store.requeue(job.id, reason: "test")
        #expect(try store.job(job.id)?.state == .queued)
        #expect(try store.job(job.id)?.attempt == 0, "a graceful stop spends no attempt")

        _ = try store.claim(leaseSeconds: 60)
        #expect(try store.job(job.id)?.attempt == 1, "the next run takes the same attempt number")
        _ = try store.recoverInterrupted()
        #expect(try store.job(job.id)?.state == .queued, "a crash in attempt 1 of 2 requeues")
        _ = try store.claim(leaseSeconds: 60)
        _ = try store.recoverInterrupted()
        #expect(try store.job(job.id)?.state == .failed, "second attempt of two used up")
        #expect(try store.job(job.id)?.error?.code == .attemptsExhausted)
        #expect(try store.job(job.id + 1) == nil)
    }

    @Test func finishIsVisibleAtOnce() throws {
        let store = try makeStore()
        let (job, _, _) = try store.submit(
            task: "retrieval", preset: nil, parameters: [:], priority: 0, idempotencyKey: "k", maxAttempts: 1)
        _ = try store.claim(leaseSeconds: 60)
        #expect(try store.job(job.id)?.state == .running)
        _ = try store.finish(job.id, state: .succeeded, result: .object(["loss": 0.5]), error: nil)
        let after = try #require(try store.job(job.id))
        #expect(after.state == .succeeded && after.result?["loss"] == 0.5 && after.finishedAt != nil)
    }

    /// A job running under Slurm when fwpd stopped: the crash spends no attempt (its Slurm job may
    /// still run and is re-attached), even at the last attempt; the ingest sequence number is
    /// stored with the event that carried it, and a checkpoint saved twice at one path is one row.
    @Test func slurmJobsSurviveACrashWithTheirAttempt() throws {
        let store = try makeStore()
        let (job, _, _) = try store.submit(
            task: "lm", preset: nil, parameters: [:], priority: 0, idempotencyKey: nil, maxAttempts: 1)
        _ = try store.claim(leaseSeconds: 60)
        try store.setIngestSeq(job.id, 0)
        try store.setSlurmJob(job.id, "4711")
        #expect(try store.job(job.id)?.slurmJob == "4711")
        _ = try store.appendEvent(JobEvent(job: job.id, seq: 0, time: 0, kind: "progress", step: 1), ingestSeq: 7)
        #expect(try store.ingestSeq(job.id) == 7)
        _ = try store.appendEvent(JobEvent(job: job.id, seq: 0, time: 0, kind: "progress", step: 2))
        #expect(try store.ingestSeq(job.id) == 7, "an event of fwpd's own leaves it")
        for _ in 0..<2 {
            _ = try store.addCheckpoint(job: job.id, step: 5, path: "/c/step-5", size: 1, sha256: "x", best: false)
        }
        #expect(try store.checkpoints(job: job.id).count == 1)

        let events = try store.recoverInterrupted()
        #expect(events.first?.message?.contains("Slurm job 4711") == true)
        #expect(try store.job(job.id)?.state == .queued, "attempt 1 of 1, but not lost")
        let (again, _) = try #require(try store.claim(leaseSeconds: 60))
        #expect(again.attempt == 1 && again.slurmJob == "4711")

        // A job that never ran under Slurm still spends its attempt.
        let (local, _, _) = try store.submit(
            task: "lm", preset: nil, parameters: [:], priority: 0, idempotencyKey: nil, maxAttempts: 1)
        _ = try store.claim(leaseSeconds: 60)
        _ = try store.recoverInterrupted()
        #expect(try store.job(local.id)?.state == .failed)
    }
}
