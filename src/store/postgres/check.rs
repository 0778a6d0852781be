//! The full consistency check: every record decodes, and every derived
//! column, counter, per-user row and cache entry agrees with the records.
//! Slow by design (it reads every table); for tests and diagnostics.
//! Read-only, in one REPEATABLE READ snapshot: it reports, never repairs.
//!
//! Every problem starts with the table (or `leases`, `counters`) it was
//! found in. What "agrees" means is what [`super::apply::apply`] writes:
//! - `jobs`: the columns (short id, user, request, state, next attempt,
//!   updated, lease) equal the record's; the record's history ends in its
//!   state.
//! - `state_counts`: one row per state, equal to a recount.
//! - `users`: `active` and `queued` equal to the user's jobs (a row for a
//!   user without jobs says 0 and 0); `recent` sorted.
//! - `cache`: as in sled: every entry decodes with a well-formed key and a
//!   file id, and every job that left `uploading` with a delivery has an
//!   entry under its key at least as new as that moment.
//! - `finished_minutes`: done or failed, positive counts.
//! - `inbox`: non-empty JSON whose `update_id`, if any, is the key.
//! - `settings` and `quarantine`: decode / are counted.
//! - `schema_migrations`: exactly the versions this build knows.
//! - leases: a job in `downloading` or `uploading` has one; a job in
//!   `queued`, `done` or `failed` has none.

use std::collections::{BTreeMap, HashMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::IsolationLevel;

use super::rows::{self, int_of, state_of, user_of};
use super::tx::{pg, Cached, Fail};
use super::PgStore;
use crate::job::{Job, JobId, JobState, Millis};
use crate::store::codec;
use crate::store::{CachedMedia, InvariantReport, StoreError, UserSettings};

#[derive(Default, Clone, Copy)]
struct Tally {
    jobs: u32,
    active: u32,
    queued: u32,
}

struct Check<'a> {
    tx: &'a Transaction<'a>,
    r: InvariantReport,
    jobs: BTreeMap<JobId, Job>,
    tally: HashMap<u64, Tally>,
    /// Cache keys quarantined (their jobs' entries may be missing).
    quarantined_cache: HashSet<Vec<u8>>,
}

impl PgStore {
    pub(super) async fn full_check(&self) -> Result<InvariantReport, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let report = run(&tx).await.map_err(|e| match e {
            Fail::Store(e) => e,
            Fail::Pg(e) => pg(e),
            Fail::Raced => StoreError::unavailable(std::io::Error::other("race in a read")),
        })?;
        tx.commit().await.map_err(pg)?;
        Ok(report)
    }
}

async fn run(tx: &Transaction<'_>) -> Result<InvariantReport, Fail> {
    let mut c = Check {
        tx,
        r: InvariantReport {
            counters: rows::counts(tx).await?,
            ..Default::default()
        },
        jobs: BTreeMap::new(),
        tally: HashMap::new(),
        quarantined_cache: HashSet::new(),
    };
    c.schema().await?;
    c.quarantine().await?;
    c.jobs().await?;
    c.leases();
    c.counters().await?;
    c.users().await?;
    c.cache().await?;
    c.finished().await?;
    c.inbox().await?;
    c.settings().await?;
    Ok(c.r)
}

impl Check<'_> {
    fn problem(&mut self, table: &str, what: String) {
        self.r.problems.push(format!("{table}: {what}"));
    }

    async fn schema(&mut self) -> Result<(), Fail> {
        let applied: Vec<i32> = self
            .tx
            .q(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let known = super::migrate::known_versions();
        if applied != known {
            self.problem(
                "schema_migrations",
                format!("applied versions {applied:?}, this build knows {known:?}"),
            );
        }
        Ok(())
    }

    async fn quarantine(&mut self) -> Result<(), Fail> {
        for row in self.tx.q("SELECT tree, key FROM quarantine", &[]).await? {
            self.r.quarantined += 1;
            let tree: String = row.get(0);
            if tree == "cache" {
                self.quarantined_cache.insert(row.get(1));
            }
        }
        Ok(())
    }

    async fn jobs(&mut self) -> Result<(), Fail> {
        let rows = self
            .tx
            .q(
                "SELECT id, record, short, user_id, chat_id, request_msg_id, url, state,
                        next_attempt_at, updated_at, lease_owner, lease_until
                 FROM jobs ORDER BY id",
                &[],
            )
            .await?;
        for row in rows {
            self.r.jobs += 1;
            let id = JobId(row.get(0));
            let job = match rows::job_of(&row) {
                Ok(j) if j.id == id => j,
                Ok(j) => {
                    self.problem("jobs", format!("record of job {} under id {id}", j.id));
                    continue;
                }
                Err(e) => {
                    self.problem("jobs", format!("undecodable record of job {id}: {e}"));
                    continue;
                }
            };
            let cols = Cols {
                short: row.get(2),
                user: user_of(row.get(3)),
                chat: row.get(4),
                msg: row.get(5),
                url: row.get(6),
                state: state_of(row.get(7)),
                next: int_of(row.get(8)),
                updated: int_of(row.get(9)),
                lease: row
                    .get::<_, Option<uuid::Uuid>>(10)
                    .zip(row.get::<_, Option<i64>>(11).map(int_of)),
            };
            for p in cols.disagreements(&job) {
                self.problem("jobs", format!("job {id}: {p}"));
            }
            *self.r.recount.get_mut(job.state) += 1;
            if job.history.last().map(|h| h.0) != Some(job.state) {
                self.problem(
                    "jobs",
                    format!(
                        "job {id} is {} but its history ends in {:?}",
                        job.state,
                        job.history.last().map(|h| h.0)
                    ),
                );
            }
            let t = self.tally.entry(job.user_id).or_default();
            t.jobs += 1;
            t.active += u32::from(job.state.is_active());
            t.queued += u32::from(job.state == JobState::Queued);
            self.jobs.insert(id, job);
        }
        Ok(())
    }

    fn leases(&mut self) {
        let found: Vec<String> = self
            .jobs
            .values()
            .filter_map(crate::store::lease_problem)
            .collect();
        for p in found {
            self.problem("leases", p);
        }
    }

    async fn counters(&mut self) -> Result<(), Fail> {
        let rows = self
            .tx
            .q(
                "SELECT state, sum(n)::bigint, min(n), count(*) FROM state_counts GROUP BY state ORDER BY state",
                &[],
            )
            .await?;
        let mut seen = HashSet::new();
        for row in &rows {
            let raw: i16 = row.get(0);
            match state_of(raw) {
                Some(s) => {
                    seen.insert(s);
                }
                None => self.problem("state_counts", format!("row for unknown state {raw}")),
            }
            let (least, shards): (i64, i64) = (row.get(2), row.get(3));
            if least < 0 {
                self.problem(
                    "state_counts",
                    format!("state {raw} has a shard at {least}"),
                );
            }
            if shards != 16 {
                self.problem(
                    "state_counts",
                    format!("state {raw} has {shards} shards, not 16"),
                );
            }
        }
        for s in JobState::ALL {
            if !seen.contains(&s) {
                self.problem("state_counts", format!("no counter row for {s}"));
            }
            let (have, want) = (self.r.counters.get(s), self.r.recount.get(s));
            if have != want {
                self.problem(
                    "counters",
                    format!("{s} counter says {have}, the records say {want}"),
                );
            }
        }
        Ok(())
    }

    async fn users(&mut self) -> Result<(), Fail> {
        let rows = self
            .tx
            .q("SELECT user_id, active, queued, recent FROM users", &[])
            .await?;
        let mut have: HashMap<u64, (i32, i32)> = HashMap::new();
        for row in rows {
            let user = user_of(row.get(0));
            have.insert(user, (row.get(1), row.get(2)));
            let recent: Vec<i64> = row.get(3);
            if recent.windows(2).any(|w| w[0] > w[1]) {
                self.problem(
                    "users",
                    format!("user {user}: recent enqueues out of order"),
                );
            }
        }
        let mut all: Vec<u64> = have.keys().chain(self.tally.keys()).copied().collect();
        all.sort_unstable();
        all.dedup();
        for user in all {
            let want = self.tally.get(&user).copied().unwrap_or_default();
            let (active, queued) = have.get(&user).copied().unwrap_or((0, 0));
            if i64::from(active) != i64::from(want.active)
                || i64::from(queued) != i64::from(want.queued)
            {
                self.problem(
                    "users",
                    format!(
                        "user {user}: row says active {active} queued {queued}, their {} jobs say {} and {}",
                        want.jobs, want.active, want.queued
                    ),
                );
            }
        }
        Ok(())
    }

    async fn cache(&mut self) -> Result<(), Fail> {
        // When each job last left `uploading` with a delivery: the moment
        // `apply` wrote its cache entry (`cached_at`).
        let mut written: HashMap<String, Vec<(Millis, &Job)>> = HashMap::new();
        for job in self.jobs.values() {
            if job.delivery.is_none() {
                continue;
            }
            let Some(up) = job.history.iter().rposition(|h| h.0 == JobState::Uploading) else {
                continue;
            };
            if let Some(&(_, at)) = job.history.get(up + 1) {
                written.entry(job.cache_key()).or_default().push((at, job));
            }
        }
        let mut found = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for row in self.tx.q("SELECT key, entry FROM cache", &[]).await? {
            let key: String = row.get(0);
            if !well_formed_cache_key(&key) {
                found.push(format!("malformed key {key:?}"));
                continue;
            }
            seen.insert(key.clone());
            let bytes: &[u8] = row.get(1);
            let c = match codec::decode::<CachedMedia>(bytes) {
                Ok(c) if !c.file_id.is_empty() => c,
                Ok(_) => {
                    found.push(format!("entry {key:?} has an empty file id"));
                    continue;
                }
                Err(e) => {
                    found.push(format!("entry {key:?} undecodable: {e}"));
                    continue;
                }
            };
            let Some(writers) = written.get(&key) else {
                continue; // its job was pruned
            };
            found.extend(crate::store::cache_entry_problem(key.as_ref(), &c, writers));
        }
        for (key, writers) in &written {
            if !seen.contains(key) && !self.quarantined_cache.contains(key.as_bytes()) {
                found.push(format!(
                    "no entry {key:?} for the delivery of job {}",
                    writers[0].1.id
                ));
            }
        }
        for p in found {
            self.problem("cache", p);
        }
        Ok(())
    }

    async fn finished(&mut self) -> Result<(), Fail> {
        for row in self
            .tx
            .q("SELECT state, minute, n FROM finished_minutes", &[])
            .await?
        {
            let (state, minute, n): (i16, i64, i64) = (row.get(0), row.get(1), row.get(2));
            if !state_of(state).is_some_and(|s| s.is_finished()) || minute < 0 || n <= 0 {
                self.problem(
                    "finished_minutes",
                    format!("malformed counter: state {state} minute {minute} = {n}"),
                );
            }
        }
        Ok(())
    }

    async fn inbox(&mut self) -> Result<(), Fail> {
        for row in self.tx.q("SELECT update_id, body FROM inbox", &[]).await? {
            let id: i64 = row.get(0);
            let body: &[u8] = row.get(1);
            if u32::try_from(id).is_err() {
                self.problem("inbox", format!("id {id} is not a 32-bit update id"));
                continue;
            }
            if body.is_empty() {
                self.problem("inbox", format!("update {id} is empty"));
                continue;
            }
            match serde_json::from_slice::<serde_json::Value>(body) {
                Err(e) => self.problem("inbox", format!("update {id} is not JSON: {e}")),
                Ok(json) => {
                    let said = json.get("update_id").map(|u| u.as_i64());
                    if said.is_some_and(|u| u != Some(id)) {
                        self.problem(
                            "inbox",
                            format!("update stored as {id} says update_id {}", json["update_id"]),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    async fn settings(&mut self) -> Result<(), Fail> {
        for row in self
            .tx
            .q("SELECT user_id, entry FROM settings", &[])
            .await?
        {
            let user = user_of(row.get(0));
            let bytes: &[u8] = row.get(1);
            if codec::decode::<UserSettings>(bytes).is_err() {
                self.problem("settings", format!("undecodable record of user {user}"));
            }
        }
        Ok(())
    }
}

/// A job row's derived columns.
struct Cols {
    short: String,
    user: u64,
    chat: i64,
    msg: i32,
    url: String,
    state: Option<JobState>,
    next: Millis,
    updated: Millis,
    lease: Option<(uuid::Uuid, Millis)>,
}

impl Cols {
    fn disagreements(&self, j: &Job) -> Vec<String> {
        let mut out = Vec::new();
        if self.short != j.id.short() {
            out.push(format!("short id column {:?}", self.short));
        }
        if self.user != j.user_id {
            out.push(format!("user column {}, record {}", self.user, j.user_id));
        }
        if (self.chat, self.msg, self.url.as_str()) != (j.chat_id, j.request_msg_id, j.url.as_str())
        {
            out.push(format!(
                "request columns ({}, {}, {:?}), record ({}, {}, {:?})",
                self.chat, self.msg, self.url, j.chat_id, j.request_msg_id, j.url
            ));
        }
        if self.state != Some(j.state) {
            out.push(format!("state column {:?}, record {}", self.state, j.state));
        }
        if self.next != j.next_attempt_at {
            out.push(format!(
                "next attempt column {}, record {}",
                self.next, j.next_attempt_at
            ));
        }
        if self.updated != j.updated_at {
            out.push(format!(
                "updated column {}, record {}",
                self.updated, j.updated_at
            ));
        }
        if self.lease != j.lease.map(|l| (l.owner, l.until)) {
            out.push(format!(
                "lease columns {:?}, record {:?}",
                self.lease, j.lease
            ));
        }
        out
    }
}

/// `kind|height|url`, as [`crate::job::cache_key`] writes it.
fn well_formed_cache_key(k: &str) -> bool {
    let mut parts = k.splitn(3, '|');
    let (Some(kind), Some(height), Some(url)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    matches!(kind, "video" | "audio" | "document")
        && (height == "best" || height.parse::<u32>().is_ok())
        && !url.is_empty()
}
