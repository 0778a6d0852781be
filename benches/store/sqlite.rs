//! The SQLite baseline: the schema and transactions a careful user would
//! write for the same job model, with the same record codec, the same
//! transition table and the same limit checks as tgdl, so the difference
//! measured is the storage engine.
//!
//! The operations run inside a transaction their caller opens, so both writer
//! models share them (see [`Model`]): one connection per worker, each change
//! its own transaction, or one writer thread that commits the changes of
//! every waiting worker together ([`super::sqlite_writer`]).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tgdl::job::{now_ms, Job, JobId, JobState, Lease, Millis, NewJob, HOUR_MS};
use tgdl::store::codec;
use tgdl::store::{EnqueueLimits, Expect};
use uuid::Uuid;

use super::sqlite_writer::{Batches, Writer};
use crate::common::{delivered, downloaded, LEASE_MS};
use crate::{run_threads_with, store_job, Throughput, LIMITS};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id              BLOB PRIMARY KEY,
    user_id         INTEGER NOT NULL,
    state           INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    owner           BLOB,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    record          BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (user_id, created_at);
CREATE TABLE IF NOT EXISTS counters (
    state INTEGER PRIMARY KEY,
    n     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    user_id     INTEGER PRIMARY KEY,
    active      INTEGER NOT NULL,
    queued      INTEGER NOT NULL,
    last_served INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cache (
    key     TEXT PRIMARY KEY,
    file_id TEXT NOT NULL,
    record  BLOB NOT NULL
);
";

/// A job's new state, lease and record, if it is still in the state read.
const MOVE: &str =
    "UPDATE jobs SET state = ?2, owner = ?3, lease_until = ?4, updated_at = ?5, record = ?6
             WHERE id = ?1 AND state = ?7";

/// SQLite's `synchronous` setting in WAL mode.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// The WAL is synced at every commit: survives power loss.
    Full,
    /// The WAL is synced only at checkpoints: survives a process crash, may
    /// lose the last commits on power loss.
    Normal,
}

/// How workers get their changes to the database.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// A connection per worker, a `BEGIN IMMEDIATE` transaction per change.
    /// Only one connection can write at a time: the others get SQLITE_BUSY
    /// and wait in the busy handler, which sleeps 1, 2, 5, 10 … 100 ms
    /// between tries. Shown because it is what most code does.
    PerConnection,
    /// One writer thread owns the only connection and commits the changes
    /// of all waiting workers in one transaction (group commit): SQLite's
    /// best model for concurrent writers.
    Writer,
}

/// One SQLite configuration the bench measures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub model: Model,
    pub sync: SyncMode,
}

impl Variant {
    pub const FULL_PER_CONNECTION: Variant = Variant {
        model: Model::PerConnection,
        sync: SyncMode::Full,
    };
    pub const FULL_WRITER: Variant = Variant {
        model: Model::Writer,
        sync: SyncMode::Full,
    };
    pub const NORMAL_PER_CONNECTION: Variant = Variant {
        model: Model::PerConnection,
        sync: SyncMode::Normal,
    };

    pub fn label(self) -> &'static str {
        match (self.model, self.sync) {
            (Model::PerConnection, SyncMode::Full) => "sqlite FULL, conn/worker",
            (Model::PerConnection, SyncMode::Normal) => "sqlite NORMAL, conn/worker",
            (Model::Writer, SyncMode::Full) => "sqlite FULL, 1 writer",
            (Model::Writer, SyncMode::Normal) => "sqlite NORMAL, 1 writer",
        }
    }

    fn file_name(self) -> &'static str {
        match (self.model, self.sync) {
            (Model::PerConnection, SyncMode::Full) => "full-conn",
            (Model::PerConnection, SyncMode::Normal) => "normal-conn",
            (Model::Writer, SyncMode::Full) => "full-writer",
            (Model::Writer, SyncMode::Normal) => "normal-writer",
        }
    }
}

/// What the workers of a run do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Enqueue jobs, nothing else.
    Enqueue,
    /// Enqueue a job, claim one, drive it to done ([`lifecycle`]).
    Lifecycle,
}

/// One throughput run of `work` by `threads` workers on a fresh database in
/// `dir`, checked afterwards against the counters it left.
pub fn run(dir: &Path, v: Variant, work: Work, threads: u64, dur: Duration) -> Run {
    let name = match work {
        Work::Enqueue => "enqueue",
        Work::Lifecycle => "life",
    };
    let path = dir.join(format!("{name}{threads}-{}.sqlite", v.file_name()));
    init(&path);
    let (r, batches) = match v.model {
        Model::PerConnection => {
            let conns = (0..threads).map(|_| open(&path, v.sync)).collect();
            (drive(conns, work, dur), None)
        }
        Model::Writer => {
            let writer = Writer::start(open(&path, v.sync));
            let clients = (0..threads).map(|_| writer.client()).collect();
            let r = drive(clients, work, dur);
            (r, Some(writer.stop()))
        }
    };
    let state = match work {
        Work::Enqueue => JobState::Queued,
        Work::Lifecycle => JobState::Done,
    };
    let counted: u64 = open(&path, v.sync)
        .query_row(
            "SELECT n FROM counters WHERE state = ?1",
            [state.as_u8()],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(counted, r.ops, "every counted job is {}", state.name());
    Run { r, batches }
}

pub struct Run {
    pub r: Throughput,
    /// How the writer thread grouped the changes, for [`Model::Writer`].
    pub batches: Option<Batches>,
}

fn drive<C: Committer + Send>(workers: Vec<C>, work: Work, dur: Duration) -> Throughput {
    run_threads_with(workers, dur, |mut c, t, i| {
        let ok = match work {
            Work::Enqueue => {
                c.enqueue(store_job(t, i), now_ms());
                true
            }
            Work::Lifecycle => lifecycle(&mut c, Uuid::from_u64_pair(0, t), t, i),
        };
        (c, ok)
    })
}

/// The same worker loop as the store's `sled_lifecycle`: enqueue one job,
/// then claim whatever is due and drive it to done.
fn lifecycle(c: &mut impl Committer, owner: Uuid, t: u64, i: u64) -> bool {
    c.enqueue(store_job(t, i), now_ms());
    let Some(job) = c.claim(owner, now_ms()) else {
        return false;
    };
    let mut step = |from, to, edit: fn(&mut Job)| {
        c.update(job.id, Expect::owned(from, owner), to, now_ms(), edit);
    };
    step(JobState::Downloading, JobState::Uploading, downloaded);
    step(JobState::Uploading, JobState::Cleaning, delivered);
    step(JobState::Cleaning, JobState::Done, |_| {});
    true
}

/// How a worker's change is committed: the seam between the operations and
/// the writer models. Every call returns once its change is durable.
pub trait Committer {
    fn enqueue(&mut self, n: NewJob, now: Millis) -> u64;
    fn claim(&mut self, owner: Uuid, now: Millis) -> Option<Job>;
    fn update(
        &mut self,
        id: JobId,
        expect: Expect,
        to: JobState,
        now: Millis,
        edit: fn(&mut Job),
    ) -> Job;
}

/// [`Model::PerConnection`]: each change in its own transaction.
impl Committer for Connection {
    fn enqueue(&mut self, n: NewJob, now: Millis) -> u64 {
        in_tx(self, |tx| enqueue(tx, &n, LIMITS, now))
    }

    fn claim(&mut self, owner: Uuid, now: Millis) -> Option<Job> {
        in_tx(self, |tx| claim(tx, owner, now))
    }

    fn update(
        &mut self,
        id: JobId,
        expect: Expect,
        to: JobState,
        now: Millis,
        edit: fn(&mut Job),
    ) -> Job {
        in_tx(self, |tx| update(tx, id, expect, to, now, edit))
    }
}

fn in_tx<T>(conn: &mut Connection, f: impl FnOnce(&Transaction) -> T) -> T {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    let out = f(&tx);
    tx.commit().expect("commit");
    out
}

pub fn init(path: &Path) {
    let conn = open(path, SyncMode::Full);
    conn.execute_batch(SCHEMA).expect("schema");
    for s in JobState::ALL {
        conn.execute(
            "INSERT OR IGNORE INTO counters (state, n) VALUES (?1, 0)",
            [s.as_u8()],
        )
        .expect("counters");
    }
}

pub fn open(path: &Path, sync: SyncMode) -> Connection {
    let conn = Connection::open(path).expect("open sqlite");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    let mode = match sync {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", mode)
        .expect("synchronous");
    // Writers queue on the database lock rather than fail.
    conn.busy_timeout(Duration::from_secs(30)).expect("busy");
    conn
}

// ---------------------------------------------------------------------------
// The operations, each inside the caller's transaction. Each checks before it
// writes, so one that fails its checks leaves the transaction as it found it
// (the bench's never fail: they assert).

/// The counterpart of `JobStore::enqueue`: admitted under `limits`, the job,
/// its user and the counters written. Returns the queue position.
pub fn enqueue(tx: &Transaction, n: &NewJob, limits: EnqueueLimits, now: Millis) -> u64 {
    let job = Job::new(JobId::new(), n.clone(), now);
    admit(tx, job.user_id, limits, now);
    tx.prepare_cached(
        "INSERT INTO jobs (id, user_id, state, next_attempt_at, created_at, updated_at, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            &job.id.as_bytes()[..],
            job.user_id,
            job.state.as_u8(),
            job.next_attempt_at,
            now,
            codec::encode(&job).expect("encode"),
        ])
    })
    .expect("insert job");
    tx.prepare_cached(
        "INSERT INTO users (user_id, active, queued, last_served) VALUES (?1, 1, 1, 0)
         ON CONFLICT (user_id) DO UPDATE SET active = active + 1, queued = queued + 1",
    )
    .and_then(|mut st| st.execute([job.user_id]))
    .expect("user");
    bump(tx, JobState::Queued, 1);
    tx.prepare_cached("SELECT n FROM counters WHERE state = 1")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .expect("position")
}

/// The store's admission check (`admit` and `refusal` in
/// src/store/sled/ops.rs) as queries: the queue's capacity, then, unless
/// exempt, the user's active jobs and the jobs they created in the last hour.
/// Like the store, the bench's enqueues are never refused.
fn admit(tx: &Transaction, user: u64, limits: EnqueueLimits, now: Millis) {
    let active: u64 = tx
        .prepare_cached("SELECT SUM(n) FROM counters WHERE state IN (1, 2, 3, 4)")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .expect("active");
    assert!(active < limits.queue_capacity, "queue full");
    if limits.exempt {
        return;
    }
    let user_active: u32 = tx
        .prepare_cached("SELECT active FROM users WHERE user_id = ?1")
        .and_then(|mut st| st.query_row([user], |r| r.get(0)).optional())
        .expect("user")
        .unwrap_or(0);
    assert!(user_active < limits.per_user_active, "user active limit");
    let hourly: u32 = tx
        .prepare_cached("SELECT COUNT(*) FROM jobs WHERE user_id = ?1 AND created_at > ?2")
        .and_then(|mut st| st.query_row(params![user, now.saturating_sub(HOUR_MS)], |r| r.get(0)))
        .expect("hourly");
    assert!(hourly < limits.per_user_per_hour, "hourly limit");
}

fn bump(tx: &Transaction, s: JobState, delta: i64) {
    tx.prepare_cached("UPDATE counters SET n = n + ?2 WHERE state = ?1")
        .and_then(|mut st| st.execute(params![s.as_u8(), delta]))
        .expect("counter");
}

/// Claim the due job of the least recently served user.
pub fn claim(tx: &Transaction, owner: Uuid, now: Millis) -> Option<Job> {
    let raw: Option<Vec<u8>> = tx
        .prepare_cached(
            "SELECT j.record FROM jobs j JOIN users u ON u.user_id = j.user_id
             WHERE j.state = 1 AND j.next_attempt_at <= ?1
             ORDER BY u.last_served, j.next_attempt_at, j.id LIMIT 1",
        )
        .and_then(|mut st| st.query_row([now], |r| r.get(0)).optional())
        .expect("pick");
    let raw = raw?;
    let old: Job = codec::decode(&raw).expect("decode");
    let mut job = old.clone();
    job.enter(JobState::Downloading, now).expect("legal");
    job.lease = Some(Lease {
        owner,
        until: now + LEASE_MS,
    });
    let changed = tx
        .prepare_cached(MOVE)
        .and_then(|mut st| {
            st.execute(params![
                &job.id.as_bytes()[..],
                job.state.as_u8(),
                &owner.as_bytes()[..],
                now + LEASE_MS,
                now,
                codec::encode(&job).expect("encode"),
                old.state.as_u8(),
            ])
        })
        .expect("claim");
    assert_eq!(changed, 1, "one writer at a time: nobody claimed it since");
    tx.prepare_cached(
        "UPDATE users SET queued = queued - 1, last_served = MAX(last_served, ?2)
         WHERE user_id = ?1",
    )
    .and_then(|mut st| st.execute(params![job.user_id, now]))
    .expect("user");
    bump(tx, JobState::Queued, -1);
    bump(tx, JobState::Downloading, 1);
    Some(job)
}

/// The counterpart of `JobStore::update`: state and owner checked, edit
/// applied, transition checked by the same table, counters and cache kept in
/// the same transaction.
pub fn update(
    tx: &Transaction,
    id: JobId,
    expect: Expect,
    to: JobState,
    now: Millis,
    edit: fn(&mut Job),
) -> Job {
    let raw: Vec<u8> = tx
        .prepare_cached("SELECT record FROM jobs WHERE id = ?1")
        .and_then(|mut st| st.query_row([&id.as_bytes()[..]], |r| r.get(0)))
        .expect("load");
    let old: Job = codec::decode(&raw).expect("decode");
    assert_eq!(old.state, expect.state, "conflict");
    if let Some(owner) = expect.owner {
        assert_eq!(old.lease.map(|l| l.owner), Some(owner), "lease lost");
    }
    let mut job = old.clone();
    edit(&mut job);
    job.enter(to, now).expect("legal");
    let changed = tx
        .prepare_cached(MOVE)
        .and_then(|mut st| {
            st.execute(params![
                &id.as_bytes()[..],
                job.state.as_u8(),
                job.lease.map(|l| l.owner.as_bytes().to_vec()),
                job.lease.map(|l| l.until),
                now,
                codec::encode(&job).expect("encode"),
                old.state.as_u8(),
            ])
        })
        .expect("update");
    assert_eq!(changed, 1, "conflict");
    bump(tx, old.state, -1);
    bump(tx, job.state, 1);
    if old.state == JobState::Uploading {
        if let Some(d) = &job.delivery {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO cache (key, file_id, record) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    job.cache_key(),
                    d.file_id,
                    codec::encode(d).expect("encode")
                ])
            })
            .expect("cache");
        }
    }
    if job.state.is_finished() {
        tx.prepare_cached("UPDATE users SET active = active - 1 WHERE user_id = ?1")
            .and_then(|mut st| st.execute([job.user_id]))
            .expect("user");
    }
    job
}
