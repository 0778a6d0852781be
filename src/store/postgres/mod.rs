//! The PostgreSQL backend of the [`Store`](super::Store) contract: one queue
//! shared by several machines.
//!
//! Tables (`migrations/0001_init.sql`):
//! - `jobs`: per job, the codec-encoded [`Job`](crate::job::Job) record (the
//!   bytes sled keeps, so both backends share one record format) and the
//!   columns the queries need, derived from it: state, user, next attempt,
//!   lease, the request (chat, message, url) and the short id. Indexes on
//!   those columns are what sled keeps as separate trees.
//! - `state_counts`: 16 counter rows (shards) per state; a job always
//!   counts in the shard its id picks.
//! - `users`: sled's `UserRecord` as columns (limits and fair scheduling).
//! - `cache`, `settings`, `finished_minutes`, `inbox`, `quarantine`, `meta`.
//!
//! As in sled, every derived row is written by one function,
//! [`apply::apply`], from a job's before and after images, inside the
//! transaction that changes the job.
//!
//! # Concurrency
//!
//! Transactions run at READ COMMITTED with explicit row locks, always taken
//! in one order: the job row, then the user row, then (an admission) the
//! admission lock, then the job's counter shards in ascending state, then
//! cache and per-minute rows. So transactions never
//! wait on each other in a circle; a deadlock or serialization failure that
//! happens anyway is retried ([`tx`]).
//!
//! The limits are race-free between nodes because `enqueue` and `reopen`
//! lock the user's row (the per-user limits) and then take a transaction
//! advisory lock every admission takes (the capacity): only an admission
//! makes a job active, so between the check's read and its commit no other
//! job can become active, and whatever else commits meanwhile only lowers
//! the active count. Admissions therefore serialize with each other (enqueue
//! is not the hot path); state changes do not wait for them, and, with the
//! counters in shards, rarely for each other.
//!
//! `claim` locks the least recently served user's row and then that user's
//! first due job, both `SKIP LOCKED`, so concurrent claimers (other nodes)
//! take different jobs instead of waiting; a user whose row is locked by an
//! enqueue at that instant is passed over for that one claim. A claim that
//! finds nothing while a plain read shows a due job (it passed over rows
//! locked at that instant) is tried again shortly (`ops.rs`, `claim`).
//!
//! Several nodes: `lead.rs` elects the one that polls Telegram (a session
//! advisory lock), `listen.rs` carries LISTEN/NOTIFY (queued jobs, cancels),
//! `cluster.rs` keeps heartbeats and the cluster's alert cooldowns.
//!
//! Files: `tx.rs` runs a transaction with retries and maps errors; `rows.rs`
//! converts columns; `apply.rs` derives every row from a job change;
//! `limits.rs` admits a job against the limits; `ops.rs` implements the
//! contract; `quarantine.rs` moves undecodable records aside; `check.rs` is
//! the full invariant check; `migrate.rs` applies the embedded migrations.

mod apply;
mod check;
mod cluster;
mod lead;
mod limits;
mod listen;
mod migrate;
mod ops;
mod quarantine;
mod rows;
mod transfer;
mod tx;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::StoreError;

/// Connections per process: every store call holds one for one short
/// transaction, and the pipeline runs a handful of workers.
const POOL_SIZE: usize = 16;

/// How long a call waits for a free connection, or for a new one, before it
/// reports the store unavailable rather than hanging.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// The PostgreSQL store. Cheap to share: calls take pooled connections.
pub struct PgStore {
    pool: Pool,
    /// For the sessions that live outside the pool (LISTEN).
    config: tokio_postgres::Config,
}

impl PgStore {
    /// Connect to the database at `url` (a `postgres://` URL or a libpq
    /// key=value string; no TLS) and bring its schema up to date.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let cfg: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
            path: "(unparsable PostgreSQL URL)".into(),
            reason: format!("{e}"),
        })?;
        let shown = describe(&cfg);
        let open_error = |reason: String| StoreError::Open {
            path: shown.clone(),
            reason,
        };
        let manager = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                // Every transaction ends in COMMIT or ROLLBACK, so a returned
                // connection is clean; a broken one fails its next call.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| open_error(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| open_error(e.to_string()))?;
        migrate::run(&mut client).await.map_err(|e| match e {
            StoreError::Unavailable(source) => open_error(source.to_string()),
            other => other,
        })?;
        Ok(PgStore { pool, config: cfg })
    }
}

/// `postgres://host:port/db`, without the user or any password, for errors.
fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().or(cfg.get_user()).unwrap_or("");
    format!("postgres://{host}:{port}/{db}")
}
