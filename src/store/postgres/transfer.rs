//! [`Transfer`] for [`PgStore`]: `tgdl export` and `tgdl import` on
//! PostgreSQL.
//!
//! Export reads every table in one read-only REPEATABLE READ transaction:
//! the file is one consistent snapshot of the database, so it may run while
//! nodes run (what they change after the snapshot was taken is not in it).
//! Tables are read through portals a page at a time, so a large store is
//! never held in memory. Rows come out in the order sled keeps its trees
//! (user ids and job ids ascending, cache keys bytewise), so the same
//! contents export as the same lines from either backend.
//!
//! Import loads a batch of lines per transaction. Jobs go through
//! [`apply`], as the store's own changes do, so the columns, the state
//! counters, the users' counts and the finished-per-minute counters come
//! out as a store that made those jobs itself would hold them; user lines
//! then set each user's hourly window and fair turn.

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

use super::apply::apply;
use super::rows::{self, int_db, int_of, recent_of, state_db, state_of, user_db, user_of};
use super::tx::{pg, Cached, Fail};
use super::PgStore;
use crate::job::{now_ms, Job};
use crate::store::codec;
use crate::store::transfer::{
    CacheLine, FinishedLine, InboxLine, Line, QuarantineLine, SettingsLine, Sink, Transfer,
    TransferError, UserLine,
};
use crate::store::{CachedMedia, InvariantReport, QuarantineEntry, StateCounts, StoreError};

/// Rows fetched per round trip on export.
const PAGE: i32 = 512;

/// User ids ascending as unsigned numbers (they are stored bit for bit as
/// bigint): sled's order of its `users` and `settings` trees.
const BY_USER: &str = "ORDER BY user_id < 0, user_id";

impl PgStore {
    /// `postgres://host:port/db`, without the user or any password: where
    /// this store is, for messages.
    pub fn shown(&self) -> String {
        super::describe(&self.config)
    }
}

/// A record that does not decode: exported as a quarantine line.
fn undecodable(tree: &str, key: &[u8], bytes: &[u8], reason: String) -> Line {
    Line::Quarantine(QuarantineLine::from_entry(&QuarantineEntry {
        tree: tree.to_string(),
        key: key.to_vec(),
        bytes: bytes.to_vec(),
        reason: format!("undecodable at export: {reason}"),
        at: now_ms(),
    }))
}

/// Hand a line made of each row of `sql` to `sink`, a page at a time.
async fn each(
    tx: &Transaction<'_>,
    sql: &str,
    sink: &mut Sink<'_>,
    line: impl Fn(&Row) -> Option<Line> + Send,
) -> Result<(), TransferError> {
    let portal = tx
        .bind(sql, &[] as &[&(dyn ToSql + Sync)])
        .await
        .map_err(pg)?;
    loop {
        let page = tx.query_portal(&portal, PAGE).await.map_err(pg)?;
        for row in &page {
            if let Some(l) = line(row) {
                sink(l)?;
            }
        }
        if page.len() < PAGE as usize {
            return Ok(());
        }
    }
}

fn user_line(row: &Row) -> Option<Line> {
    Some(Line::User(UserLine {
        user_id: user_of(row.get(0)),
        recent: recent_of(row.get(1)),
        last_served: int_of(row.get(2)),
    }))
}

fn job_line(row: &Row) -> Option<Line> {
    let id: uuid::Uuid = row.get(0);
    let bytes: &[u8] = row.get(1);
    Some(match codec::decode::<Job>(bytes) {
        Ok(job) => Line::Job(Box::new(job)),
        Err(e) => undecodable("jobs", id.as_bytes(), bytes, e.to_string()),
    })
}

fn cache_line(row: &Row) -> Option<Line> {
    let key: String = row.get(0);
    let bytes: &[u8] = row.get(1);
    Some(match codec::decode::<CachedMedia>(bytes) {
        Ok(media) => Line::Cache(CacheLine { key, media }),
        Err(e) => undecodable("cache", key.as_bytes(), bytes, e.to_string()),
    })
}

fn settings_line(row: &Row) -> Option<Line> {
    let user_id = user_of(row.get(0));
    let bytes: &[u8] = row.get(1);
    Some(match codec::decode(bytes) {
        Ok(settings) => Line::Settings(SettingsLine { user_id, settings }),
        Err(e) => undecodable("settings", &user_id.to_be_bytes(), bytes, e.to_string()),
    })
}

/// Only well-formed counters, as sled exports only well-formed keys.
fn finished_line(row: &Row) -> Option<Line> {
    let state = state_of(row.get(0)).filter(|s| s.is_finished())?;
    Some(Line::Finished(FinishedLine {
        state,
        minute: u64::try_from(row.get::<_, i64>(1)).ok()?,
        count: u64::try_from(row.get::<_, i64>(2)).ok()?,
    }))
}

fn inbox_line(row: &Row) -> Option<Line> {
    let id: i64 = row.get(0);
    let body: &[u8] = row.get(1);
    Some(match u32::try_from(id) {
        Ok(update_id) => Line::Inbox(InboxLine::new(update_id, body)),
        Err(_) => undecodable(
            "inbox",
            &id.to_be_bytes(),
            body,
            format!("update id {id} is not 32-bit"),
        ),
    })
}

fn quarantine_line(row: &Row) -> Option<Line> {
    Some(Line::Quarantine(QuarantineLine::from_entry(
        &QuarantineEntry {
            tree: row.get(0),
            key: row.get(1),
            bytes: row.get(2),
            reason: row.get(3),
            at: int_of(row.get(4)),
        },
    )))
}

/// One import batch, encoded and checked before its transaction starts.
#[derive(Default)]
struct Batch {
    users: Vec<(i64, Vec<i64>, i64)>,
    jobs: Vec<Job>,
    cache: Vec<(String, Vec<u8>)>,
    settings: Vec<(i64, Vec<u8>)>,
    inbox: Vec<(i64, Vec<u8>)>,
    quarantine: Vec<QuarantineEntry>,
}

impl Batch {
    fn of(lines: Vec<Line>) -> Result<Batch, TransferError> {
        let mut b = Batch::default();
        for line in lines {
            match line {
                Line::User(u) => b.users.push((
                    user_db(u.user_id),
                    u.recent.iter().map(|t| int_db(*t)).collect(),
                    int_db(u.last_served),
                )),
                Line::Job(j) => b.jobs.push(*j),
                Line::Cache(c) => b
                    .cache
                    .push((c.key, codec::encode(&c.media).map_err(StoreError::from)?)),
                Line::Settings(s) => b.settings.push((
                    user_db(s.user_id),
                    codec::encode(&s.settings).map_err(StoreError::from)?,
                )),
                Line::Inbox(i) => b.inbox.push((
                    i64::from(i.update_id),
                    i.raw().map_err(TransferError::Record)?,
                )),
                Line::Quarantine(q) => b
                    .quarantine
                    .push(q.to_entry().map_err(TransferError::Record)?),
                Line::Finished(_) | Line::TgdlExport(_) | Line::End(_) => {}
            }
        }
        Ok(b)
    }

    /// Write the batch: user rows first (their window and turn; the counts
    /// are the jobs' to derive), then the jobs through [`apply`], then the
    /// records that stand alone.
    async fn load(&self, tx: &Transaction<'_>) -> Result<(), Failed> {
        for (user, recent, last_served) in &self.users {
            tx.exec(
                "INSERT INTO users (user_id, recent, last_served) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id) DO UPDATE
                 SET recent = EXCLUDED.recent, last_served = EXCLUDED.last_served",
                &[user, recent, last_served],
            )
            .await?;
        }
        for job in &self.jobs {
            match apply(tx, None, Some(job), None).await {
                Ok(()) => {}
                // The insert did nothing: the id or the request is taken.
                Err(Fail::Raced) => {
                    return Err(Failed::Transfer(TransferError::Record(format!(
                        "job {} has the id or the request (chat {}, message {}, link) \
                         of a job loaded before it",
                        job.id, job.chat_id, job.request_msg_id
                    ))))
                }
                Err(e) => return Err(e.into()),
            }
        }
        for (key, entry) in &self.cache {
            tx.exec(
                "INSERT INTO cache (key, entry) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET entry = EXCLUDED.entry",
                &[key, entry],
            )
            .await?;
        }
        for (user, entry) in &self.settings {
            tx.exec(
                "INSERT INTO settings (user_id, entry) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET entry = EXCLUDED.entry",
                &[user, entry],
            )
            .await?;
        }
        for (id, body) in &self.inbox {
            tx.exec(
                "INSERT INTO inbox (update_id, body) VALUES ($1, $2)
                 ON CONFLICT (update_id) DO UPDATE SET body = EXCLUDED.body",
                &[id, body],
            )
            .await?;
        }
        for q in &self.quarantine {
            tx.exec(
                "INSERT INTO quarantine (tree, key, bytes, reason, at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&q.tree, &q.key, &q.bytes, &q.reason, &int_db(q.at)],
            )
            .await?;
        }
        Ok(())
    }
}

/// Why an import transaction stopped.
enum Failed {
    Transfer(TransferError),
    Pg(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Failed::Pg(e)
    }
}

impl From<Fail> for Failed {
    fn from(e: Fail) -> Self {
        match e {
            Fail::Store(e) => Failed::Transfer(e.into()),
            Fail::Pg(e) => Failed::Pg(e),
            Fail::Raced => Failed::Transfer(TransferError::Record(
                "a record collides with one loaded before it".into(),
            )),
        }
    }
}

impl From<Failed> for TransferError {
    fn from(e: Failed) -> Self {
        match e {
            Failed::Transfer(e) => e,
            Failed::Pg(e) => TransferError::Store(pg(e)),
        }
    }
}

impl PgStore {
    /// Run `body` in one transaction and commit it, or roll it back. No
    /// retries: an import writes into an empty database nothing else
    /// writes to, so a conflict is a failure to report.
    async fn import_tx<F>(&self, body: F) -> Result<(), TransferError>
    where
        F: for<'a> FnOnce(
            &'a Transaction<'a>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), Failed>> + Send + 'a>,
        >,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        match body(&tx).await {
            Ok(()) => tx.commit().await.map_err(pg)?,
            Err(e) => {
                // Its own failure changes nothing: nothing was committed.
                let _ = tx.rollback().await;
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Transfer for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn export_lines(&self, sink: &mut Sink<'_>) -> Result<(), TransferError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let users = format!("SELECT user_id, recent, last_served FROM users {BY_USER}");
        each(&tx, &users, sink, user_line).await?;
        each(
            &tx,
            "SELECT id, record FROM jobs ORDER BY id",
            sink,
            job_line,
        )
        .await?;
        each(
            &tx,
            "SELECT key, entry FROM cache ORDER BY key COLLATE \"C\"",
            sink,
            cache_line,
        )
        .await?;
        let settings = format!("SELECT user_id, entry FROM settings {BY_USER}");
        each(&tx, &settings, sink, settings_line).await?;
        each(
            &tx,
            "SELECT state, minute, n FROM finished_minutes ORDER BY state, minute",
            sink,
            finished_line,
        )
        .await?;
        each(
            &tx,
            "SELECT update_id, body FROM inbox ORDER BY update_id",
            sink,
            inbox_line,
        )
        .await?;
        each(
            &tx,
            "SELECT tree, key, bytes, reason, at FROM quarantine ORDER BY seq",
            sink,
            quarantine_line,
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        let row = self
            .client()
            .await?
            .q1(
                "SELECT NOT (EXISTS (SELECT 1 FROM jobs) OR EXISTS (SELECT 1 FROM users)
                          OR EXISTS (SELECT 1 FROM cache) OR EXISTS (SELECT 1 FROM settings)
                          OR EXISTS (SELECT 1 FROM inbox) OR EXISTS (SELECT 1 FROM quarantine))",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }

    async fn import_lines(&self, lines: Vec<Line>) -> Result<(), TransferError> {
        let batch = Batch::of(lines)?;
        self.import_tx(move |tx| Box::pin(async move { batch.load(tx).await }))
            .await
    }

    async fn import_finished(&self, counters: Vec<FinishedLine>) -> Result<(), TransferError> {
        let counters: Vec<(i16, i64, i64)> = counters
            .iter()
            .filter(|c| c.state.is_finished() && c.count > 0)
            .map(|c| (state_db(c.state), int_db(c.minute), int_db(c.count)))
            .collect();
        self.import_tx(move |tx| {
            Box::pin(async move {
                tx.exec("DELETE FROM finished_minutes", &[]).await?;
                for (state, minute, n) in &counters {
                    tx.exec(
                        "INSERT INTO finished_minutes (state, minute, n) VALUES ($1, $2, $3)
                         ON CONFLICT (state, minute) DO UPDATE SET n = EXCLUDED.n",
                        &[state, minute, n],
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        let client = self.client().await?;
        rows::counts(&client).await.map_err(|e| match e {
            Fail::Store(e) => e,
            Fail::Pg(e) => pg(e),
            Fail::Raced => StoreError::unavailable(std::io::Error::other("race in a read")),
        })
    }

    async fn check(&self) -> Result<InvariantReport, StoreError> {
        self.full_check().await
    }
}
