//! [`Store`] and [`Diagnostics`] for [`PgStore`]: every change is one
//! [`PgStore::transact`] call whose derived writes come from [`apply`].

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::apply::apply;
use super::limits::{admit, lock_user, read_user};
use super::quarantine::Record;
use super::rows::{self, int_db, int_of, job_of, limit_db, state_db, user_db};
use super::tx::{pg, Cached, Fail};
use super::PgStore;
use crate::job::{now_ms, Job, JobId, JobState, Lease, Millis, NewJob, HOUR_MS};
use crate::store::codec;
use crate::store::{
    CachedMedia, Diagnostics, Edit, EnqueueLimits, Enqueued, Expect, FindError, IdPrefix, InFlight,
    InvariantReport, NodeBeat, PollerLease, QuarantineEntry, Refusal, StateCounts, Store,
    StoreError, StoreEvent, UserSettings,
};

/// Users a claim tries within one transaction when their due jobs are
/// being taken by other claimers at the same moment.
const CLAIM_USERS: usize = 16;

/// Claims retried after finding a corrupt record (each quarantines one).
const CLAIM_RETRIES: usize = 8;

/// Claims retried when one found nothing although a due job is queued: its
/// user's row, or the job, was locked by another claim or an enqueue at
/// that moment (`SKIP LOCKED`), which commits within milliseconds. Without
/// the retry the worker would idle until its next poll with work waiting.
const CLAIM_BUSY_RETRIES: usize = 20;

/// The pause before such a retry: long enough for the other transaction to
/// commit, short against a worker's poll (a second).
const CLAIM_BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// What [`change`] does to one job.
#[derive(Clone)]
struct Change {
    expect: Expect,
    /// Admit the job as one more active job of its user (a reopen).
    admit: Option<EnqueueLimits>,
    to: Option<JobState>,
    now: Millis,
    edit: Edit,
}

/// Change one job inside a transaction, as sled's `change` does: lock it,
/// check what the caller expects (state, then the lease's owner when
/// given), admit it against the limits when asked, apply the edit (which
/// may not move the job: only `enter` does), move it, derive every row.
async fn change(tx: &Transaction<'_>, id: JobId, c: &Change) -> Result<Job, Fail> {
    let row = tx
        .qopt(
            "SELECT id, record FROM jobs WHERE id = $1 FOR UPDATE",
            &[&id.0],
        )
        .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound(id).into());
    };
    let old = job_of(&row)?;
    if old.state != c.expect.state {
        return Err(StoreError::Conflict {
            id,
            expected: c.expect.state,
            actual: old.state,
        }
        .into());
    }
    if let Some(owner) = c.expect.owner {
        if old.lease.map(|l| l.owner) != Some(owner) {
            return Err(StoreError::LeaseLost { id }.into());
        }
    }
    if let Some(limits) = c.admit {
        admit(tx, old.user_id, limits, c.now).await?;
    }
    let mut new = old.clone();
    (c.edit)(&mut new);
    new.state = old.state;
    new.id = old.id;
    new.user_id = old.user_id;
    match c.to {
        Some(to) => new.enter(to, c.now)?,
        None => new.updated_at = c.now,
    }
    apply(tx, Some(&old), Some(&new), None).await?;
    Ok(new)
}

/// The job already made for `job`'s request (chat, message, url), if any.
async fn request_job(tx: &Transaction<'_>, job: &Job) -> Result<Option<Job>, Fail> {
    let row = tx
        .qopt(
            "SELECT id, record FROM jobs
             WHERE chat_id = $1 AND request_msg_id = $2 AND md5(url) = md5($3::text) AND url = $3",
            &[&job.chat_id, &job.request_msg_id, &job.url],
        )
        .await?;
    Ok(match row {
        Some(r) => Some(job_of(&r)?),
        None => None,
    })
}

/// One claim attempt: the least recently served user with a due queued
/// job, then that user's job due first; see the module documentation for
/// the locks.
async fn claim_in(
    tx: &Transaction<'_>,
    owner: Uuid,
    lease_ms: u64,
    now: Millis,
) -> Result<Option<Job>, Fail> {
    let mut passed: Vec<i64> = Vec::new();
    for _ in 0..CLAIM_USERS {
        let user = tx
            .qopt(
                "SELECT u.user_id FROM users u
                 WHERE u.queued > 0 AND u.user_id <> ALL($2)
                   AND EXISTS (SELECT 1 FROM jobs j
                               WHERE j.state = $3 AND j.user_id = u.user_id
                                 AND j.next_attempt_at <= $1)
                 ORDER BY u.last_served, u.user_id
                 LIMIT 1
                 FOR UPDATE OF u SKIP LOCKED",
                &[&int_db(now), &passed, &state_db(JobState::Queued)],
            )
            .await?;
        let Some(user) = user else {
            return Ok(None);
        };
        let user: i64 = user.get(0);
        let row = tx
            .qopt(
                "SELECT id, record FROM jobs
                 WHERE state = $3 AND user_id = $1 AND next_attempt_at <= $2
                 ORDER BY next_attempt_at, id
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED",
                &[&user, &int_db(now), &state_db(JobState::Queued)],
            )
            .await?;
        let Some(row) = row else {
            // Its due jobs are being claimed by others right now.
            passed.push(user);
            continue;
        };
        let old = job_of(&row)?;
        if old.state != JobState::Queued || old.next_attempt_at > now {
            // The columns disagree with the record: the check reports it;
            // claiming it would act on the wrong one.
            passed.push(user);
            continue;
        }
        let mut new = old.clone();
        new.enter(JobState::Downloading, now)?;
        new.lease = Some(Lease {
            owner,
            until: now + lease_ms,
        });
        apply(tx, Some(&old), Some(&new), Some(now)).await?;
        return Ok(Some(new));
    }
    Ok(None)
}

impl PgStore {
    /// Decode read rows of `id, record`; a corrupt one is quarantined and
    /// left out, as sled's listings do.
    async fn jobs_of(&self, rows: Vec<tokio_postgres::Row>) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match job_of(&row) {
                Ok(j) => out.push(j),
                Err(StoreError::Corrupt { id, source }) => {
                    self.quarantine_job(id, &source.to_string()).await?
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Whether a queued job is due at `now`, locked by a transaction or
    /// not (`jobs_ready` serves it).
    async fn a_job_is_due(&self, now: Millis) -> Result<bool, StoreError> {
        let row = self
            .client()
            .await?
            .qopt(
                "SELECT 1 FROM jobs WHERE state = $1 AND next_attempt_at <= $2 LIMIT 1",
                &[&state_db(JobState::Queued), &int_db(now)],
            )
            .await
            .map_err(pg)?;
        Ok(row.is_some())
    }

    async fn query_jobs(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Job>, StoreError> {
        let rows = self.client().await?.q(sql, params).await.map_err(pg)?;
        self.jobs_of(rows).await
    }

    /// Old finished-per-minute counters (older than a day are of no use to
    /// the report), at most `batch`.
    async fn prune_minutes(&self, batch: usize) -> Result<(), StoreError> {
        let day_ago = now_ms().saturating_sub(24 * HOUR_MS) / 60_000;
        self.client()
            .await?
            .exec(
                "DELETE FROM finished_minutes WHERE ctid IN
                     (SELECT ctid FROM finished_minutes WHERE minute < $1 LIMIT $2)",
                &[&int_db(day_ago), &limit_db(batch)],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }
}

fn read_err(e: Fail) -> StoreError {
    match e {
        Fail::Store(e) => e,
        Fail::Pg(e) => pg(e),
        Fail::Raced => StoreError::unavailable(std::io::Error::other("unexpected race in a read")),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn enqueue(
        &self,
        new: NewJob,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Enqueued, StoreError> {
        let job = Job::new(JobId::at(now), new, now);
        self.transact(move |tx| {
            let job = job.clone();
            Box::pin(async move {
                // The user's lock first: a redelivered update racing its
                // first delivery waits here, then sees that job below.
                lock_user(tx, job.user_id).await?;
                if let Some(prev) = request_job(tx, &job).await? {
                    return Ok(Enqueued {
                        job: prev,
                        position: rows::queued(tx).await?,
                        duplicate: true,
                    });
                }
                admit(tx, job.user_id, limits, now).await?;
                apply(tx, None, Some(&job), None).await?;
                Ok(Enqueued {
                    position: rows::queued(tx).await?,
                    job,
                    duplicate: false,
                })
            })
        })
        .await
    }

    async fn reopen(
        &self,
        id: JobId,
        limits: EnqueueLimits,
        now: Millis,
        edit: Edit,
    ) -> Result<Job, StoreError> {
        let c = Change {
            expect: Expect::state(JobState::Failed),
            admit: Some(limits),
            to: Some(JobState::Queued),
            now,
            edit,
        };
        self.transact(move |tx| {
            let c = c.clone();
            Box::pin(async move { change(tx, id, &c).await })
        })
        .await
    }

    async fn claim(
        &self,
        owner: Uuid,
        lease_ms: u64,
        now: Millis,
    ) -> Result<Option<Job>, StoreError> {
        let (mut corrupt, mut busy) = (0, 0);
        while corrupt < CLAIM_RETRIES {
            let res = self
                .transact(move |tx| Box::pin(claim_in(tx, owner, lease_ms, now)))
                .await;
            match res {
                // Quarantined by `transact`: look again.
                Err(StoreError::Corrupt { .. }) => corrupt += 1,
                // Passed over locked rows, or nothing is due: a plain read
                // (no lock, so it sees them) tells which.
                Ok(None) if busy < CLAIM_BUSY_RETRIES && self.a_job_is_due(now).await? => {
                    busy += 1;
                    tokio::time::sleep(CLAIM_BUSY_PAUSE).await;
                }
                other => return other,
            }
        }
        Ok(None)
    }

    async fn update(
        &self,
        id: JobId,
        expect: Expect,
        to: Option<JobState>,
        now: Millis,
        edit: Edit,
    ) -> Result<Job, StoreError> {
        let c = Change {
            expect,
            admit: None,
            to,
            now,
            edit,
        };
        self.transact(move |tx| {
            let c = c.clone();
            Box::pin(async move { change(tx, id, &c).await })
        })
        .await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let jobs = self
            .query_jobs("SELECT id, record FROM jobs WHERE id = $1", &[&id.0])
            .await?;
        Ok(jobs.into_iter().next())
    }

    async fn find_prefix(&self, prefix: &IdPrefix) -> Result<Result<Job, FindError>, StoreError> {
        let jobs = if prefix.short {
            // Hex digits only: nothing in them is special to LIKE.
            self.query_jobs(
                "SELECT id, record FROM jobs WHERE short LIKE $1 ORDER BY id LIMIT 2",
                &[&format!("{}%", prefix.hex)],
            )
            .await?
        } else {
            // A prefix of the full id is a range of ids (uuids compare as
            // bytes): from the prefix padded with 0s to it padded with fs.
            let pad = |c: char| {
                let mut s = prefix.hex.clone();
                while s.len() < 32 {
                    s.push(c);
                }
                Uuid::parse_str(&s)
            };
            let (Ok(lo), Ok(hi)) = (pad('0'), pad('f')) else {
                return Ok(Err(FindError::Invalid(prefix.hex.clone())));
            };
            self.query_jobs(
                "SELECT id, record FROM jobs WHERE id BETWEEN $1 AND $2 ORDER BY id LIMIT 2",
                &[&lo, &hi],
            )
            .await?
        };
        let mut matching = jobs.into_iter().filter(|j| prefix.matches(j.id));
        Ok(match (matching.next(), matching.next()) {
            (None, _) => Err(FindError::NotFound(prefix.hex.clone())),
            (Some(j), None) => Ok(j),
            (Some(_), Some(_)) => Err(FindError::Ambiguous(prefix.hex.clone())),
        })
    }

    async fn list_state(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.query_jobs(
            "SELECT id, record FROM jobs WHERE state = $1 ORDER BY id LIMIT $2",
            &[&state_db(state), &limit_db(limit)],
        )
        .await
    }

    async fn list_state_rev(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.query_jobs(
            "SELECT id, record FROM jobs WHERE state = $1 ORDER BY id DESC LIMIT $2",
            &[&state_db(state), &limit_db(limit)],
        )
        .await
    }

    async fn list_user(&self, user_id: u64, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.query_jobs(
            "SELECT id, record FROM jobs WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
            &[&user_db(user_id), &limit_db(limit)],
        )
        .await
    }

    async fn in_flight_since(&self) -> Result<Vec<InFlight>, StoreError> {
        let states: Vec<i16> = JobState::IN_FLIGHT.into_iter().map(state_db).collect();
        let rows = self
            .client()
            .await?
            .q(
                "SELECT id, record FROM jobs WHERE state = ANY($1) ORDER BY state, id",
                &[&states],
            )
            .await
            .map_err(pg)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            // The record's head only; one whose head does not read gets the
            // full decode, which quarantines it as `in_flight` does.
            let bytes: &[u8] = row.get(1);
            match codec::decode_in_flight(bytes) {
                Ok(f) => out.push(f),
                Err(_) => match job_of(&row) {
                    Ok(j) => out.push(InFlight::of(&j)),
                    Err(StoreError::Corrupt { id, source }) => {
                        self.quarantine_job(id, &source.to_string()).await?
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(out)
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        rows::counts(&self.client().await?).await.map_err(read_err)
    }

    async fn cache_get(&self, key: &str) -> Result<Option<CachedMedia>, StoreError> {
        let row = self
            .client()
            .await?
            .qopt("SELECT entry FROM cache WHERE key = $1", &[&key])
            .await
            .map_err(pg)?;
        match row {
            None => Ok(None),
            Some(r) => {
                self.decode_or_quarantine(Record::Cache(key.to_string()), r.get(0))
                    .await
            }
        }
    }

    async fn prune_finished(&self, older_than: Millis, batch: usize) -> Result<usize, StoreError> {
        self.prune_minutes(batch).await?;
        let finished: Vec<i16> = [JobState::Done, JobState::Failed]
            .into_iter()
            .map(state_db)
            .collect();
        let (pruned, corrupt) = self
            .transact(move |tx| {
                let finished = finished.clone();
                Box::pin(async move {
                    let victims = tx
                        .q(
                            "SELECT id, record FROM jobs
                             WHERE state = ANY($1) AND updated_at < $2
                             ORDER BY id LIMIT $3
                             FOR UPDATE SKIP LOCKED",
                            &[&finished, &int_db(older_than), &limit_db(batch)],
                        )
                        .await?;
                    let (mut pruned, mut corrupt) = (0, Vec::new());
                    for row in &victims {
                        let old = match job_of(row) {
                            Ok(j) => j,
                            // Quarantined after this commits.
                            Err(StoreError::Corrupt { id, source }) => {
                                corrupt.push((id, source.to_string()));
                                continue;
                            }
                            Err(e) => return Err(e.into()),
                        };
                        if !old.state.is_finished() || old.updated_at >= older_than {
                            continue;
                        }
                        apply(tx, Some(&old), None, None).await?;
                        pruned += 1;
                    }
                    Ok((pruned, corrupt))
                })
            })
            .await?;
        for (id, reason) in corrupt {
            self.quarantine_job(id, &reason).await?;
        }
        Ok(pruned)
    }

    async fn finished_since(&self, since: Millis) -> Result<(u64, u64), StoreError> {
        let rows = self
            .client()
            .await?
            .q(
                "SELECT state, sum(n)::bigint FROM finished_minutes
                 WHERE minute >= $1 GROUP BY state",
                &[&int_db(since / 60_000)],
            )
            .await
            .map_err(pg)?;
        let (mut done, mut failed) = (0, 0);
        for r in rows {
            match rows::state_of(r.get(0)) {
                Some(JobState::Done) => done = int_of(r.get(1)),
                Some(JobState::Failed) => failed = int_of(r.get(1)),
                _ => {}
            }
        }
        Ok((done, failed))
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        // A committed write is durable (synchronous_commit): that is the probe.
        self.client()
            .await?
            .exec(
                "INSERT INTO meta (key, value) VALUES ('healthz', $1)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&now_ms().to_string()],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn would_refuse(
        &self,
        user: u64,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Option<Refusal>, StoreError> {
        let client = self.client().await?;
        let active = rows::counts(&client).await.map_err(read_err)?.active();
        let mut rec = read_user(&client, user).await.map_err(read_err)?;
        rec.recent.retain(|t| *t + HOUR_MS > now);
        Ok(rec.refusal(active, limits))
    }

    async fn inbox_put(&self, updates: Vec<(u32, Vec<u8>)>) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        self.transact(move |tx| {
            let updates = updates.clone();
            Box::pin(async move {
                for (id, body) in &updates {
                    tx.exec(
                        "INSERT INTO inbox (update_id, body) VALUES ($1, $2)
                         ON CONFLICT (update_id) DO NOTHING",
                        &[&i64::from(*id), body],
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn inbox_pending(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        let rows = self
            .client()
            .await?
            .q("SELECT update_id, body FROM inbox ORDER BY update_id", &[])
            .await
            .map_err(pg)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.get(0);
            match u32::try_from(id) {
                Ok(id) => out.push((id, r.get(1))),
                Err(_) => tracing::error!(id, "malformed inbox id, skipped"),
            }
        }
        Ok(out)
    }

    async fn inbox_done(&self, update_ids: Vec<u32>) -> Result<(), StoreError> {
        let ids: Vec<i64> = update_ids.into_iter().map(i64::from).collect();
        self.client()
            .await?
            .exec("DELETE FROM inbox WHERE update_id = ANY($1)", &[&ids])
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn settings(&self, user_id: u64) -> Result<Option<UserSettings>, StoreError> {
        let row = self
            .client()
            .await?
            .qopt(
                "SELECT entry FROM settings WHERE user_id = $1",
                &[&user_db(user_id)],
            )
            .await
            .map_err(pg)?;
        match row {
            None => Ok(None),
            Some(r) => {
                self.decode_or_quarantine(Record::Settings(user_id), r.get(0))
                    .await
            }
        }
    }

    async fn put_settings(&self, user_id: u64, settings: UserSettings) -> Result<(), StoreError> {
        let entry = codec::encode(&settings)?;
        self.client()
            .await?
            .exec(
                "INSERT INTO settings (user_id, entry) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET entry = EXCLUDED.entry",
                &[&user_db(user_id), &entry],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    fn is_exclusive(&self) -> bool {
        // Other nodes share the database: a lease not held here may be live.
        false
    }

    async fn announce_cancel(&self, id: JobId) -> Result<(), StoreError> {
        self.notify_cancel(id).await
    }

    async fn events(&self) -> Result<Option<mpsc::Receiver<StoreEvent>>, StoreError> {
        self.listen().await.map(Some)
    }

    async fn heartbeat(&self, beat: NodeBeat) -> Result<(), StoreError> {
        self.put_heartbeat(&beat).await
    }

    async fn nodes(&self) -> Result<Vec<NodeBeat>, StoreError> {
        self.list_nodes().await
    }

    async fn claim_alert(
        &self,
        key: &str,
        now: Millis,
        cooldown_ms: u64,
    ) -> Result<bool, StoreError> {
        self.take_alert(key, now, cooldown_ms).await
    }

    async fn poller_lease(&self) -> Result<PollerLease, StoreError> {
        self.lead().await
    }
}

#[async_trait]
impl Diagnostics for PgStore {
    async fn check_invariants(&self) -> Result<InvariantReport, StoreError> {
        self.full_check().await
    }

    async fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        self.quarantine_list().await
    }

    async fn size_on_disk(&self) -> u64 {
        let Ok(client) = self.client().await else {
            return 0;
        };
        client
            .q1("SELECT pg_database_size(current_database())", &[])
            .await
            .map(|r| int_of(r.get(0)))
            .unwrap_or(0)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every committed transaction is already durable.
        Ok(())
    }
}
