//! The PostgreSQL rows: the store's own PostgreSQL backend (`PgStore`) doing
//! exactly what the sled rows do, on the local server.
//!
//! Same limits ([`LIMITS`]), same jobs ([`store_job`]), same edits
//! ([`downloaded`], [`delivered`]), same owner-checked transitions; the
//! workers are tokio tasks on one multi-thread runtime sharing one `PgStore`
//! (its pool holds 16 connections, so with 16 workers each can hold one).
//! Every measurement gets a database of its own, created before and dropped
//! after it (also when the bench panics: [`TempDb`]'s drop), and is checked
//! afterwards with `Diagnostics::check_invariants`, as the sled rows are.
//!
//! Durability: the server's own settings, not changed here. With
//! `synchronous_commit = on` and `fsync = on` (the defaults, and what this
//! machine's server runs at: the bench prints them in its header) a COMMIT
//! returns only after the WAL up to it was flushed with `wal_sync_method`
//! (`fdatasync` on Linux by default), concurrent commits sharing one flush:
//! the same guarantee as the sled rows, where every change is followed by an
//! `fdatasync` of sled's data file before it counts. A run whose database
//! reports other settings than the header stops with a panic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tgdl::job::{now_ms, Job, JobId, JobState, NewJob};
use tgdl::store::{Diagnostics, Edit, Expect, PgStore, Store};
use tokio::runtime::Runtime;
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::common::{delivered, downloaded, LEASE_MS};
use crate::pg::{admin_url, TempDb};
use crate::sqlite::Work;
use crate::{store_job, Throughput, LIMITS};

/// The backend column of the table.
pub const LABEL: &str = "postgres (PgStore)";

/// What the server does at COMMIT, read with `SHOW`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Durability {
    pub synchronous_commit: String,
    pub fsync: String,
    pub wal_sync_method: String,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "synchronous_commit = {}, fsync = {}, wal_sync_method = {}",
            self.synchronous_commit, self.fsync, self.wal_sync_method
        )
    }
}

/// The server the PostgreSQL rows run on, as the header shows it.
pub struct Server {
    pub version: String,
    pub durability: Durability,
    /// Where the server keeps its data (and WAL), when it says.
    pub data_directory: Option<String>,
}

/// The PostgreSQL side of the bench: one runtime for every measurement.
pub struct Pg {
    rt: Runtime,
    pub server: Server,
}

impl Pg {
    /// Reach the server (`TGDL_TEST_PG`, else the local trust-auth server)
    /// and read its durability settings.
    pub fn start() -> Pg {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let server = rt.block_on(async {
            let admin = admin_url();
            let client = session(&admin).await.unwrap_or_else(|e| {
                panic!(
                    "cannot reach PostgreSQL at {admin}: {e} (start it, point TGDL_TEST_PG at \
                     one, or set TGDL_BENCH_PG=0 to skip the PostgreSQL rows)"
                )
            });
            let version = show(&client, "server_version").await;
            let durability = durability(&client).await;
            // Superusers and pg_read_all_settings only; fine to miss.
            let data_directory = client
                .query_one("SHOW data_directory", &[])
                .await
                .ok()
                .map(|r| r.get::<_, String>(0));
            Server {
                version,
                durability,
                data_directory,
            }
        });
        Pg { rt, server }
    }

    /// One throughput run of `work` by `workers` tasks on a fresh database,
    /// checked afterwards: every counted job is queued (enqueue) or done
    /// (lifecycle), and the store's invariants hold.
    pub fn run(&self, work: Work, workers: u64, dur: Duration) -> Throughput {
        self.rt.block_on(async {
            // Declared first, dropped last: the store's connections close
            // before the database goes (and FORCE ends any left over).
            let db = TempDb::create().await;
            {
                let client = session(&db.url)
                    .await
                    .expect("connect to the bench database");
                let d = durability(&client).await;
                assert_eq!(
                    d, self.server.durability,
                    "the bench database commits with other settings than the server's defaults"
                );
            }
            let store = Arc::new(PgStore::connect(&db.url).await.expect("PgStore::connect"));
            warm_up(&store, workers).await;
            let r = drive(&store, work, workers, dur).await;
            let report = store.check_invariants().await.expect("check invariants");
            assert!(report.problems.is_empty(), "{:#?}", report.problems);
            match work {
                Work::Enqueue => {
                    assert_eq!(report.counters.queued, r.ops, "every counted job is queued")
                }
                Work::Lifecycle => {
                    assert_eq!(report.counters.done, r.ops, "every counted job is done")
                }
            }
            drop(store);
            drop(db);
            r
        })
    }
}

/// Open one connection per worker before the clock starts: the pool opens
/// them lazily, and the first jobs would otherwise pay for the handshakes.
async fn warm_up(store: &Arc<PgStore>, workers: u64) {
    let calls: Vec<_> = (0..workers)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.counts().await.expect("counts") })
        })
        .collect();
    for c in calls {
        join(c.await);
    }
}

/// `workers` tasks, each looping until the deadline as the sled threads do
/// (`run_threads`), counting the calls that completed a job.
async fn drive(store: &Arc<PgStore>, work: Work, workers: u64, dur: Duration) -> Throughput {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = (0..workers)
        .map(|t| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                // One lease owner per worker, as each sled worker has.
                let owner = Uuid::now_v7();
                let mut i = 0;
                while Instant::now() < deadline {
                    let ok = match work {
                        Work::Enqueue => {
                            enqueue(&store, store_job(t, i)).await;
                            true
                        }
                        Work::Lifecycle => lifecycle(&store, owner, t, i).await,
                    };
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        join(task.await);
    }
    Throughput {
        ops: done.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}

/// A worker's panic is the bench's.
fn join<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("bench task: {e}"),
    }
}

/// `sled_enqueue` on PostgreSQL: under [`LIMITS`], insisting on a new job.
async fn enqueue(store: &PgStore, new: NewJob) {
    let e = store.enqueue(new, LIMITS, now_ms()).await.expect("enqueue");
    assert!(!e.duplicate, "bench requests must be distinct");
}

/// `sled_lifecycle` on PostgreSQL: enqueue one job, then claim whatever is
/// due and drive it to done with owner-checked transitions. Returns whether
/// a job reached done.
async fn lifecycle(store: &PgStore, owner: Uuid, t: u64, i: u64) -> bool {
    enqueue(store, store_job(t, i)).await;
    // Another worker may have taken the job just enqueued, and every queued
    // one: then this worker has nothing to do this round.
    let Some(job) = store.claim(owner, LEASE_MS, now_ms()).await.expect("claim") else {
        return false;
    };
    let step = |from, to, edit: fn(&mut Job)| {
        advance(
            store,
            job.id,
            Expect::owned(from, owner),
            to,
            Arc::new(edit),
        )
    };
    step(JobState::Downloading, JobState::Uploading, downloaded).await;
    step(JobState::Uploading, JobState::Cleaning, delivered).await;
    step(JobState::Cleaning, JobState::Done, |_| {}).await;
    true
}

/// `common::advance` on PostgreSQL: one durable transition, or a panic.
async fn advance(store: &PgStore, id: JobId, expect: Expect, to: JobState, edit: Edit) {
    if let Err(e) = store.update(id, expect, Some(to), now_ms(), edit).await {
        panic!("to {to}: {e:?}");
    }
}

/// A plain session (not the store's pool) for `SHOW`.
async fn session(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap_or_else(|e| panic!("SHOW {name}: {e}"))
        .get(0)
}

async fn durability(client: &tokio_postgres::Client) -> Durability {
    Durability {
        synchronous_commit: show(client, "synchronous_commit").await,
        fsync: show(client, "fsync").await,
        wal_sync_method: show(client, "wal_sync_method").await,
    }
}
