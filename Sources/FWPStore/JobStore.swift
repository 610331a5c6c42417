import FWPProtocol
import Foundation
import GRDB
import Synchronization

/// The daemon's durable state in SQLite: jobs, their events, checkpoints, idempotency keys.
///
/// WAL journal, `synchronous = FULL` (an acknowledged submit or event survives power loss),
/// IMMEDIATE write transactions, jobs claimed with `UPDATE … RETURNING` under a lease.
public final class JobStore: Sendable {
    let pool: DatabasePool

    /// Jobs as last read, so that `status` requests for a job that has not changed cost no SQLite
    /// read. Only this process writes the database (fwpd holds its state folder's lock), and
    /// every write below that changes a job's row drops that job (after its commit). A read that
    /// overlaps a write does not fill the cache: each write bumps `generation`.
    private struct JobCache {
        var jobs: [Int64: JobInfo] = [:]
        var generation: UInt64 = 0
        static let capacity = 4096
    }
    private let cache = Mutex(JobCache())

    private func invalidate(_ id: Int64?) {
        cache.withLock {
            $0.generation &+= 1
            if let id { $0.jobs[id] = nil } else { $0.jobs.removeAll(keepingCapacity: true) }
        }
    }

    /// Opens (creating and migrating) the database at `path`.
    public init(path: String) throws {
        var config = Configuration()
        config.busyMode = .timeout(10)
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            try db.execute(sql: "PRAGMA foreign_keys = ON")
        }
        pool = try DatabasePool(path: path, configuration: config)
        try Self.migrator.migrate(pool)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE jobs (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        task TEXT NOT NULL,
                        preset TEXT,
                        parameters TEXT NOT NULL,
                        priority INTEGER NOT NULL DEFAULT 0,
                        state TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','cancelled')),
                        attempt INTEGER NOT NULL DEFAULT 0,
                        max_attempts INTEGER NOT NULL DEFAULT 3,
                        idempotency_key TEXT UNIQUE,
                        created_at REAL NOT NULL,
                        started_at REAL,
                        finished_at REAL,
                        lease_until REAL,
                        cancel_requested INTEGER NOT NULL DEFAULT 0,
                        result TEXT,
                        error_code TEXT,
                        error_message TEXT,
                        last_seq INTEGER NOT NULL DEFAULT 0
                    );
                    CREATE INDEX jobs_queue ON jobs(state, priority DESC, id);
                    CREATE TABLE events (
                        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
                        seq INTEGER NOT NULL,
                        body TEXT NOT NULL,
                        PRIMARY KEY (job_id, seq)
                    ) WITHOUT ROWID;
                    CREATE TABLE checkpoints (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
                        step INTEGER NOT NULL,
                        path TEXT NOT NULL,
                        size INTEGER NOT NULL,
                        sha256 TEXT NOT NULL,
                        best INTEGER NOT NULL DEFAULT 0,
                        created_at REAL NOT NULL
                    );
                    CREATE INDEX checkpoints_job ON checkpoints(job_id, id);
                    """)
        }
        m.registerMigration("v2: job owners") { db in
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN owner TEXT")
        }
        m.registerMigration("v3: exec process groups") { db in
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN child_group TEXT")
        }
        m.registerMigration("v4: Slurm jobs") { db in
            // The Slurm job of the latest run, and the last ingest sequence number whose line is
            // handled (written in the transaction that stores that line's event), so that a
            // restarted fwpd re-attaches to a running Slurm job and drops the lines already stored.
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN slurm_job TEXT")
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN ingest_seq INTEGER NOT NULL DEFAULT 0")
            // The sbatch settings the job asked for (JSON), over fwpd's configured defaults.
            try db.execute(sql: "ALTER TABLE jobs ADD COLUMN slurm_request TEXT")
        }
        m.registerMigration("v5: sweeps") { db in
            // `started` counts the sweep's claims: the scheduler serves the least-served first.
            try db.execute(
                sql: """
                    CREATE TABLE sweeps (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        task TEXT NOT NULL,
                        preset TEXT,
                        spec TEXT NOT NULL,
                        swept TEXT NOT NULL,
                        priority INTEGER NOT NULL,
                        max_running INTEGER NOT NULL,
                        idempotency_key TEXT UNIQUE,
                        created_at REAL NOT NULL,
                        owner TEXT,
                        cancel_requested INTEGER NOT NULL DEFAULT 0,
                        started INTEGER NOT NULL DEFAULT 0
                    );
                    ALTER TABLE jobs ADD COLUMN sweep_id INTEGER REFERENCES sweeps(id);
                    CREATE INDEX jobs_sweep ON jobs(sweep_id, state);
                    """)
        }
        m.registerMigration("v6: dashboard tokens") { db in
            // Only the token's SHA-256 is kept: the token itself is shown once, to whoever asked.
            try db.execute(
                sql: """
                    CREATE TABLE tokens (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        sha256 TEXT NOT NULL UNIQUE,
                        principal TEXT NOT NULL,
                        role TEXT NOT NULL,
                        created_by TEXT NOT NULL,
                        created_at REAL NOT NULL,
                        revoked INTEGER NOT NULL DEFAULT 0
                    );
                    """)
        }
        return m
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: Jobs

    /// Inserts a queued job, or returns the existing one with the same idempotency key
    /// (`created` false). The key's uniqueness is enforced by the database. A new job comes with
    /// its first event (`queued`), to be published.
    public func submit(
        task: String, preset: String?, parameters: [String: JSONValue], priority: Int, idempotencyKey: String?,
        maxAttempts: Int, owner: String? = nil, slurm: [String: JSONValue]? = nil
    ) throws -> (job: JobInfo, created: Bool, event: JobEvent?) {
        try pool.write { db in
            if let key = idempotencyKey,
                let row = try Row.fetchOne(
                    try db.cachedStatement(sql: "SELECT * FROM jobs WHERE idempotency_key = ?"), arguments: [key])
            {
                return (try Self.job(row), false, nil)
            }
            let params = JSONValue.object(parameters).jsonText
            try db.cachedStatement(
                sql: """
                    INSERT INTO jobs (task, preset, parameters, priority, state, attempt, max_attempts, idempotency_key, created_at, owner, slurm_request)
                    VALUES (?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?)
                    """
            ).execute(arguments: [
                task, preset, params, priority, maxAttempts, idempotencyKey, Self.now(), owner,
                slurm.map { JSONValue.object($0).jsonText },
            ])
            let id = db.lastInsertedRowID
            let event = try Self.appendEvent(
                db, job: id, JobEvent(job: id, seq: 0, time: Self.now(), kind: "state", state: .queued))
            return (
                try Self.job(
                    Row.fetchOne(try db.cachedStatement(sql: "SELECT * FROM jobs WHERE id = ?"), arguments: [id])!),
                true, event
            )
        }
    }

    // Reads below are single SELECTs, each atomic on its own in WAL mode, so they run without the
    // BEGIN/COMMIT that `read` wraps around its closure (`unsafeRead`): a third less work per
    // `status` request.
    public func job(_ id: Int64) throws -> JobInfo? {
        let (hit, generation) = cache.withLock { ($0.jobs[id], $0.generation) }
        if let hit { return hit }
        let job = try pool.unsafeRead { db in
            try Row.fetchOne(try db.cachedStatement(sql: "SELECT * FROM jobs WHERE id = ?"), arguments: [id]).map(
                Self.job)
        }
        if let job {
            cache.withLock {
                guard $0.generation == generation else { return }
                if $0.jobs.count >= JobCache.capacity { $0.jobs.removeAll(keepingCapacity: true) }
                $0.jobs[id] = job
            }
        }
        return job
    }

    /// Jobs in id order after `after`, optionally in one state; with `before`, the newest first
    /// of those with ids below it.
    public func list(state: JobState?, after: Int64, limit: Int, sweep: Int64? = nil, before: Int64? = nil) throws
        -> [JobInfo]
    {
        if let before {
            return try pool.unsafeRead { db in
                try Row.fetchAll(
                    try db.cachedStatement(
                        sql: """
                            SELECT * FROM jobs WHERE (? IS NULL OR sweep_id = ?) AND (? IS NULL OR state = ?)
                            AND id > ? AND id < ? ORDER BY id DESC LIMIT ?
                            """),
                    arguments: [sweep, sweep, state?.rawValue, state?.rawValue, after, before, limit]
                ).map(Self.job)
            }
        }
        return try pool.unsafeRead { db in
            let rows: [Row]
            if let sweep {
                rows = try Row.fetchAll(
                    try db.cachedStatement(
                        sql:
                            "SELECT * FROM jobs WHERE sweep_id = ? AND (? IS NULL OR state = ?) AND id > ? ORDER BY id LIMIT ?"
                    ),
                    arguments: [sweep, state?.rawValue, state?.rawValue, after, limit])
            } else if let state {
                rows = try Row.fetchAll(
                    try db.cachedStatement(sql: "SELECT * FROM jobs WHERE state = ? AND id > ? ORDER BY id LIMIT ?"),
                    arguments: [state.rawValue, after, limit])
            } else {
                rows = try Row.fetchAll(
                    try db.cachedStatement(sql: "SELECT * FROM jobs WHERE id > ? ORDER BY id LIMIT ?"),
                    arguments: [after, limit])
            }
            return try rows.map(Self.job)
        }
    }

    public func counts() throws -> [JobState: Int] {
        try pool.unsafeRead { db in
            var out: [JobState: Int] = [:]
            for row in try Row.fetchAll(
                try db.cachedStatement(sql: "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"))
            {
                if let s = JobState(rawValue: row["state"]) { out[s] = row["n"] }
            }
            return out
        }
    }

    /// The id of the job to run next: highest priority first; within a priority, the least-served
    /// first — a job on its own counts as served 0 times, a sweep's point as often as its sweep has
    /// had points claimed — then the oldest. A sweep never starves the jobs submitted after it, and
    /// sweeps take turns. A sweep with `max_running` points running waits.
    static let nextQueued = """
        SELECT j.id FROM jobs j LEFT JOIN sweeps s ON s.id = j.sweep_id
        WHERE j.state = 'queued' AND (s.id IS NULL OR
            (SELECT COUNT(*) FROM jobs r WHERE r.sweep_id = s.id AND r.state = 'running') < s.max_running)
        ORDER BY j.priority DESC, COALESCE(s.started, 0), j.id LIMIT 1
        """

    /// Takes the next queued job (`nextQueued`) and marks it running with a lease.
    public func claim(leaseSeconds: Double) throws -> (JobInfo, JobEvent)? {
        let claimed: (JobInfo, JobEvent)? = try pool.write { db in
            let now = Self.now()
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        UPDATE jobs SET state = 'running', attempt = attempt + 1, started_at = ?, lease_until = ?
                        WHERE id = (\(Self.nextQueued))
                        RETURNING *
                        """, arguments: [now, now + leaseSeconds])
            else { return nil }
            let job = try Self.job(row)
            if let sweep = job.sweep {
                try db.cachedStatement(sql: "UPDATE sweeps SET started = started + 1 WHERE id = ?").execute(
                    arguments: [sweep])
            }
            let e = try Self.appendEvent(
                db, job: job.id,
                JobEvent(
                    job: job.id, seq: 0, time: now, kind: "state", state: .running, message: "attempt \(job.attempt)"))
            return (job, e)
        }
        if let id = claimed?.0.id { invalidate(id) }
        return claimed
    }

    /// Extends the lease of a running job.
    public func heartbeat(_ id: Int64, leaseSeconds: Double) throws {
        try pool.write { db in
            try db.cachedStatement(sql: "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running'").execute(
                arguments: [Self.now() + leaseSeconds, id])
        }
    }

    /// Records a running job's outcome and its final `state` event.
    public func finish(_ id: Int64, state: JobState, result: JSONValue?, error: WireError?) throws -> JobEvent {
        precondition(state.isFinal)
        defer { invalidate(id) }
        return try pool.write { db in
            try db.execute(
                sql: """
                    UPDATE jobs SET state = ?, finished_at = ?, lease_until = NULL, result = ?, error_code = ?, error_message = ?
                    WHERE id = ?
                    """,
                arguments: [state.rawValue, Self.now(), result?.jsonText, error?.code.rawValue, error?.message, id])
            return try Self.appendEvent(
                db, job: id,
                JobEvent(job: id, seq: 0, time: Self.now(), kind: "state", state: state, result: result, error: error))
        }
    }

    /// Puts a running job back in the queue: it resumes from its checkpoint. A graceful stop
    /// spends no attempt (the next run takes this run's attempt number again); a run lost outside
    /// fwpd's control (`spendAttempt`: a cluster node failed, the job was preempted) spends one.
    public func requeue(_ id: Int64, reason: String, spendAttempt: Bool = false) throws -> JobEvent {
        defer { invalidate(id) }
        return try pool.write { db in
            try db.cachedStatement(
                sql: spendAttempt
                    ? "UPDATE jobs SET state = 'queued', lease_until = NULL WHERE id = ?"
                    : "UPDATE jobs SET state = 'queued', lease_until = NULL, attempt = MAX(attempt - 1, 0) WHERE id = ?"
            ).execute(arguments: [id])
            return try Self.appendEvent(
                db, job: id, JobEvent(job: id, seq: 0, time: Self.now(), kind: "state", state: .queued, message: reason)
            )
        }
    }

    /// After a crash: every job still marked running goes back to the queue, or fails when it has
    /// used all its attempts. Returns the events written.
    public func recoverInterrupted() throws -> [JobEvent] {
        defer { invalidate(nil) }
        return try pool.write { db in
            var events: [JobEvent] = []
            for row in try Row.fetchAll(try db.cachedStatement(sql: "SELECT * FROM jobs WHERE state = 'running'")) {
                let job = try Self.job(row)
                if let slurmJob = job.slurmJob {
                    // Its Slurm job may still be running: the next claim re-attaches to it, under the
                    // same attempt number (the claim adds the one taken off here).
                    try db.cachedStatement(
                        sql:
                            "UPDATE jobs SET state = 'queued', lease_until = NULL, attempt = MAX(attempt - 1, 0) WHERE id = ?"
                    ).execute(arguments: [job.id])
                    events.append(
                        try Self.appendEvent(
                            db, job: job.id,
                            JobEvent(
                                job: job.id, seq: 0, time: Self.now(), kind: "state", state: .queued,
                                message:
                                    "requeued after the daemon stopped unexpectedly; it re-attaches to Slurm job \(slurmJob) if that still runs"
                            )))
                } else if job.attempt >= job.maxAttempts {
                    let err = WireError(
                        .attemptsExhausted, "the daemon stopped during attempt \(job.attempt) of \(job.maxAttempts)")
                    try db.execute(
                        sql:
                            "UPDATE jobs SET state = 'failed', finished_at = ?, lease_until = NULL, error_code = ?, error_message = ? WHERE id = ?",
                        arguments: [Self.now(), err.code.rawValue, err.message, job.id])
                    events.append(
                        try Self.appendEvent(
                            db, job: job.id,
                            JobEvent(job: job.id, seq: 0, time: Self.now(), kind: "state", state: .failed, error: err)))
                } else {
                    try db.cachedStatement(sql: "UPDATE jobs SET state = 'queued', lease_until = NULL WHERE id = ?")
                        .execute(arguments: [job.id])
                    events.append(
                        try Self.appendEvent(
                            db, job: job.id,
                            JobEvent(
                                job: job.id, seq: 0, time: Self.now(), kind: "state", state: .queued,
                                message: "requeued after the daemon stopped unexpectedly")))
                }
            }
            return events
        }
    }

    /// Cancels a queued job at once; marks a running one so that its worker stops it. The event
    /// written says who asked (`by`): the queued job's `cancelled` state event, or a `log` event
    /// for a running one (its `cancelled` state follows when the worker stops). Returns the job and
    /// that event; final jobs are returned unchanged, with none.
    public func requestCancel(_ id: Int64, by principal: String? = nil) throws -> (JobInfo, JobEvent?)? {
        defer { invalidate(id) }
        return try pool.write { db in try Self.requestCancel(db, id, by: principal) }
    }

    static func requestCancel(_ db: Database, _ id: Int64, by principal: String?) throws -> (JobInfo, JobEvent?)? {
        guard
            let row = try Row.fetchOne(
                try db.cachedStatement(sql: "SELECT * FROM jobs WHERE id = ?"), arguments: [id])
        else { return nil }
        let job = try Self.job(row)
        var event: JobEvent? = nil
        let who = principal.map { " by \($0)" } ?? ""
        switch job.state {
        case .queued:
            try db.cachedStatement(
                sql: "UPDATE jobs SET state = 'cancelled', finished_at = ?, cancel_requested = 1 WHERE id = ?"
            ).execute(arguments: [Self.now(), id])
            event = try Self.appendEvent(
                db, job: id,
                JobEvent(
                    job: id, seq: 0, time: Self.now(), kind: "state", state: .cancelled,
                    message: principal.map { "cancelled by \($0)" }))
        case .running:
            try db.cachedStatement(sql: "UPDATE jobs SET cancel_requested = 1 WHERE id = ?").execute(arguments: [id]
            )
            if !job.cancelRequested {
                event = try Self.appendEvent(
                    db, job: id,
                    JobEvent(job: id, seq: 0, time: Self.now(), kind: "log", message: "cancel requested\(who)"))
            }
        default: break
        }
        return (
            try Self.job(
                Row.fetchOne(try db.cachedStatement(sql: "SELECT * FROM jobs WHERE id = ?"), arguments: [id])!),
            event
        )
    }

    // MARK: Sweeps

    /// Inserts a sweep and one queued job per point (`points`: each point's full parameters) in
    /// one transaction, or returns the sweep with the same idempotency key (`created` false).
    /// Returns the points' `queued` events, to be published.
    public func submitSweep(
        task: String, preset: String?, spec: JSONValue, swept: [String], points: [[String: JSONValue]],
        priority: Int, maxRunning: Int, idempotencyKey: String?, maxAttempts: Int, owner: String?,
        slurm: [String: JSONValue]?
    ) throws -> (sweep: SweepInfo, created: Bool, events: [JobEvent]) {
        let (id, created, events): (Int64, Bool, [JobEvent]) = try pool.write { db in
            if let key = idempotencyKey,
                let existing = try Int64.fetchOne(
                    try db.cachedStatement(sql: "SELECT id FROM sweeps WHERE idempotency_key = ?"), arguments: [key])
            {
                return (existing, false, [])
            }
            try db.execute(
                sql: """
                    INSERT INTO sweeps (task, preset, spec, swept, priority, max_running, idempotency_key, created_at, owner)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    task, preset, spec.jsonText, JSONValue.array(swept.map { .string($0) }).jsonText, priority,
                    maxRunning, idempotencyKey, Self.now(), owner,
                ])
            let sweep = db.lastInsertedRowID
            var events: [JobEvent] = []
            let slurmText = slurm.map { JSONValue.object($0).jsonText }
            for point in points {
                try db.cachedStatement(
                    sql: """
                        INSERT INTO jobs (task, preset, parameters, priority, state, attempt, max_attempts, created_at, owner, slurm_request, sweep_id)
                        VALUES (?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?)
                        """
                ).execute(arguments: [
                    task, preset, JSONValue.object(point).jsonText, priority, maxAttempts, Self.now(), owner,
                    slurmText, sweep,
                ])
                let job = db.lastInsertedRowID
                events.append(
                    try Self.appendEvent(
                        db, job: job,
                        JobEvent(
                            job: job, seq: 0, time: Self.now(), kind: "state", state: .queued,
                            message: "point of sweep \(sweep)")))
            }
            return (sweep, true, events)
        }
        return (try self.sweep(id)!, created, events)
    }

    /// A sweep with its points' counts by state.
    public func sweep(_ id: Int64) throws -> SweepInfo? {
        try pool.read { db -> SweepInfo? in
            guard let r = try Row.fetchOne(db, sql: "SELECT * FROM sweeps WHERE id = ?", arguments: [id]) else {
                return nil
            }
            var counts: [String: Int] = [:]
            for row in try Row.fetchAll(
                db, sql: "SELECT state, COUNT(*) FROM jobs WHERE sweep_id = ? GROUP BY state", arguments: [id])
            {
                counts[row[0]] = row[1]
            }
            let points = counts.values.reduce(0, +)
            let cancelled: Bool = r["cancel_requested"]
            let active = (counts["queued"] ?? 0) + (counts["running"] ?? 0) > 0
            var swept: [String] = []
            if case .array(let names) = (try? JSONValue.parse(r["swept"] as String)) ?? .null {
                swept = names.compactMap(\.stringValue)
            }
            return SweepInfo(
                id: r["id"], task: r["task"], preset: r["preset"],
                spec: (try? JSONValue.parse(r["spec"] as String)) ?? .null, swept: swept, priority: r["priority"],
                maxRunning: r["max_running"], idempotencyKey: r["idempotency_key"], createdAt: r["created_at"],
                owner: r["owner"], cancelRequested: cancelled, points: points, counts: counts,
                state: active ? "running" : cancelled ? "cancelled" : "finished")
        }
    }

    /// Sweeps, newest first, at most `limit`, those with an id below `before` when it is given.
    public func sweeps(before: Int64?, limit: Int) throws -> [SweepInfo] {
        let ids = try pool.read { db in
            try Int64.fetchAll(
                db, sql: "SELECT id FROM sweeps WHERE id < ? ORDER BY id DESC LIMIT ?",
                arguments: [before ?? Int64.max, limit])
        }
        return try ids.compactMap { try sweep($0) }
    }

    /// A sweep's points, in the order they were made.
    public func sweepJobs(_ id: Int64) throws -> [JobInfo] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM jobs WHERE sweep_id = ? ORDER BY id", arguments: [id]).map(
                Self.job)
        }
    }

    /// Cancels a sweep: its queued points at once, its running ones marked for their workers to
    /// stop. Returns the events written and the ids of the running points.
    public func cancelSweep(_ id: Int64, by principal: String?) throws -> (events: [JobEvent], running: [Int64])? {
        defer { invalidate(nil) }
        return try pool.write { db in
            guard try Int64.fetchOne(db, sql: "SELECT id FROM sweeps WHERE id = ?", arguments: [id]) != nil else {
                return nil
            }
            try db.execute(sql: "UPDATE sweeps SET cancel_requested = 1 WHERE id = ?", arguments: [id])
            var events: [JobEvent] = []
            var running: [Int64] = []
            for job in try Int64.fetchAll(
                db, sql: "SELECT id FROM jobs WHERE sweep_id = ? AND state IN ('queued', 'running') ORDER BY id",
                arguments: [id])
            {
                guard let (info, event) = try Self.requestCancel(db, job, by: principal) else { continue }
                if let event { events.append(event) }
                if info.state == .running { running.append(job) }
            }
            return (events, running)
        }
    }

    /// Records (or, with nil, clears) the process group a job's external program runs in, as JSON.
    public func setChildGroup(_ id: Int64, _ json: String?) throws {
        try pool.write { db in
            try db.cachedStatement(sql: "UPDATE jobs SET child_group = ? WHERE id = ?").execute(arguments: [json, id])
        }
    }

    /// Records the Slurm job a run was submitted as (nil: none yet, before a new submission).
    public func setSlurmJob(_ id: Int64, _ slurmJob: String?) throws {
        defer { invalidate(id) }
        try pool.write { db in
            try db.cachedStatement(sql: "UPDATE jobs SET slurm_job = ? WHERE id = ?").execute(arguments: [slurmJob, id])
        }
    }

    /// Records that the ingest lines of a job's run up to `seq` are handled (0 before a new run).
    public func setIngestSeq(_ id: Int64, _ seq: Int64) throws {
        try pool.write { db in
            try db.cachedStatement(sql: "UPDATE jobs SET ingest_seq = ? WHERE id = ?").execute(arguments: [seq, id])
        }
    }

    /// The last ingest sequence number handled for a job's run.
    public func ingestSeq(_ id: Int64) throws -> Int64 {
        try pool.unsafeRead { db in
            try Int64.fetchOne(
                try db.cachedStatement(sql: "SELECT ingest_seq FROM jobs WHERE id = ?"), arguments: [id]) ?? 0
        }
    }

    /// The process group recorded for a job, if any.
    public func childGroup(_ id: Int64) throws -> String? {
        try pool.read { db in
            try String.fetchOne(
                try db.cachedStatement(sql: "SELECT child_group FROM jobs WHERE id = ?"), arguments: [id])
        }
    }

    // MARK: Events

    /// Stores an event under the job's next sequence number and returns it with that number. With
    /// `ingestSeq`, the same transaction records that the ingest line carrying it is handled.
    public func appendEvent(_ event: JobEvent, ingestSeq: Int64? = nil) throws -> JobEvent {
        defer { invalidate(event.job) }
        return try pool.write { db in
            if let ingestSeq {
                try db.cachedStatement(sql: "UPDATE jobs SET ingest_seq = ? WHERE id = ?").execute(
                    arguments: [ingestSeq, event.job])
            }
            return try Self.appendEvent(db, job: event.job, event)
        }
    }

    static func appendEvent(_ db: Database, job: Int64, _ event: JobEvent) throws -> JobEvent {
        try db.cachedStatement(sql: "UPDATE jobs SET last_seq = last_seq + 1 WHERE id = ?").execute(arguments: [job])
        guard
            let seq = try Int64.fetchOne(
                try db.cachedStatement(sql: "SELECT last_seq FROM jobs WHERE id = ?"), arguments: [job])
        else {
            throw WireError(.notFound, "job \(job) does not exist")
        }
        var e = event
        e.job = job
        e.seq = seq
        try db.cachedStatement(sql: "INSERT INTO events (job_id, seq, body) VALUES (?, ?, ?)").execute(
            arguments: [job, seq, String(decoding: WireJSON.encode(e), as: UTF8.self)])
        return e
    }

    /// The stored JSON of a job's newest `limit` events, newest first.
    public func recentEventBodies(job: Int64, limit: Int) throws -> [String] {
        try pool.read { db in
            try String.fetchAll(
                db, sql: "SELECT body FROM events WHERE job_id = ? ORDER BY seq DESC LIMIT ?", arguments: [job, limit])
        }
    }

    /// The stored JSON of a job's events with sequence numbers above `after`, oldest first (each
    /// as `WireJSON` wrote it: compact, sorted keys), for replies that pass them on unchanged.
    public func eventBodies(job: Int64, after: Int64, limit: Int) throws -> [String] {
        try pool.unsafeRead { db in
            try String.fetchAll(
                try db.cachedStatement(
                    sql: "SELECT body FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?"),
                arguments: [job, after, limit])
        }
    }

    // MARK: Checkpoints

    public func addCheckpoint(job: Int64, step: Int, path: String, size: Int64, sha256: String, best: Bool) throws
        -> CheckpointInfo
    {
        try pool.write { db in
            // A file written again at the same path replaces its row (a checkpoint saved twice).
            try db.execute(sql: "DELETE FROM checkpoints WHERE job_id = ? AND path = ?", arguments: [job, path])
            try db.execute(
                sql:
                    "INSERT INTO checkpoints (job_id, step, path, size, sha256, best, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [job, step, path, size, sha256, best, Self.now()])
            return CheckpointInfo(
                id: db.lastInsertedRowID, job: job, step: step, path: path, size: size, sha256: sha256, best: best,
                createdAt: Self.now())
        }
    }

    /// A job's checkpoints, newest first.
    public func checkpoints(job: Int64) throws -> [CheckpointInfo] {
        try pool.unsafeRead { db in
            try Row.fetchAll(
                try db.cachedStatement(sql: "SELECT * FROM checkpoints WHERE job_id = ? ORDER BY id DESC"),
                arguments: [job]
            ).map { r in
                CheckpointInfo(
                    id: r["id"], job: r["job_id"], step: r["step"], path: r["path"], size: r["size"],
                    sha256: r["sha256"], best: r["best"],
                    createdAt: r["created_at"])
            }
        }
    }

    public func deleteCheckpoint(id: Int64) throws {
        try pool.write { db in
            try db.cachedStatement(sql: "DELETE FROM checkpoints WHERE id = ?").execute(arguments: [id])
        }
    }

    // MARK: Rows

    /// A job from a `jobs` row. Columns are read by position (the schema's order): looking
    /// them up by name costs a case-insensitive string comparison per column.
    static func job(_ r: Row) throws -> JobInfo {
        let params = (try? JSONValue.parse(r[3] as String))?.objectValue ?? [:]
        let resultText: String? = r[14]
        let code: String? = r[15]
        let state = JobState(rawValue: r[5] as String) ?? .failed
        return JobInfo(
            id: r[0], task: r[1], preset: r[2], parameters: params, priority: r[4], state: state, attempt: r[6],
            maxAttempts: r[7],
            idempotencyKey: r[8], createdAt: r[9], startedAt: r[10], finishedAt: r[11],
            result: resultText.flatMap { try? JSONValue.parse($0) },
            error: code.map { WireError(ErrorCode($0), r[16] ?? "") },
            cancelRequested: r[13], lastSeq: r[17], owner: r[18], slurmJob: r[20],
            slurm: (r[22] as String?).flatMap { try? JSONValue.parse($0) }?.objectValue, sweep: r[23])
    }

    // MARK: Dashboard tokens

    /// Stores a new token for `principal` with `role` (its SHA-256 only) and returns its id.
    public func addToken(sha256: String, principal: String, role: Role, createdBy: String) throws -> Int64 {
        try pool.write { db in
            try db.execute(
                sql: "INSERT INTO tokens (sha256, principal, role, created_by, created_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [sha256, principal, role.rawValue, createdBy, Self.now()])
            return db.lastInsertedRowID
        }
    }

    /// The principal a token's SHA-256 stands for, unless the token is unknown or revoked.
    public func tokenPrincipal(sha256: String) throws -> Principal? {
        try pool.read { db in
            guard
                let row = try Row.fetchOne(
                    db, sql: "SELECT principal, role FROM tokens WHERE sha256 = ? AND revoked = 0", arguments: [sha256]),
                let role = Role(rawValue: row["role"])
            else { return nil }
            return Principal(name: row["principal"], role: role)
        }
    }

    /// The principal token `id` belongs to (revoked or not), for the revoking request's check.
    public func tokenOwner(_ id: Int64) throws -> String? {
        try pool.read { db in try String.fetchOne(db, sql: "SELECT principal FROM tokens WHERE id = ?", arguments: [id])
        }
    }

    /// Revokes token `id`; false when there is none.
    public func revokeToken(_ id: Int64) throws -> Bool {
        try pool.write { db in
            try db.execute(sql: "UPDATE tokens SET revoked = 1 WHERE id = ?", arguments: [id])
            return db.changesCount > 0
        }
    }
}
