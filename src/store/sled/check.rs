//! The full consistency check: every record decodes, and every index,
//! counter, per-user record, cache entry, inbox entry and lease agrees with
//! the records. Slow by design (it reads every tree); for tests, the crash
//! harnesses and diagnostics. Read-only: unlike the normal read paths it
//! never quarantines or repairs what it finds, it reports it.
//!
//! Every problem starts with the name of the tree (or `leases`, `counters`)
//! it was found in, so a report says where to look.
//!
//! What "agrees" means is what [`super::apply::apply`] writes:
//! - `by_state`: `[state][id] -> user`, state and user as in the record:
//!   exactly one per job in an indexed state, none for a done job but one a
//!   store of schema 3 or older may have left ([`keys::indexed_by_state`]).
//! - `by_user`: `[user][id] -> ()`, exactly one per job.
//! - `ready`: `[user][next attempt][id] -> ()`, exactly the queued jobs.
//! - `users`: per user, `active` and `queued` equal to the user's jobs (a
//!   record for a user without jobs says 0 and 0).
//! - `turns`: `[last served][user]`, one for each user with queued jobs, under
//!   the `last_served` of the user's record; none for anyone else.
//! - `cache`: written when a job leaves `uploading` with a delivery, with
//!   `cached_at` = that moment. So every entry decodes, with a well-formed
//!   key and a file id; every job that left `uploading` with a delivery has
//!   an entry under its key at least as new as that moment, and an entry
//!   written at that very moment carries that job's file id. (An entry newer
//!   than every job with its key is one whose job was pruned: kept.)
//! - `requests`: every entry points at a job whose request key it is (or at
//!   a quarantined one); every job has its entry.
//! - `shorts`: `[last 4 id bytes][id] -> ()`, exactly one per job.
//! - `meta`: the schema version; per-state counters equal to a recount;
//!   well-formed finished-per-minute counters.
//! - `inbox`: 4-byte update ids, non-empty JSON values (whose `update_id`,
//!   if any, is the key).
//! - leases: a job in `downloading` or `uploading` has one; a job in
//!   `queued`, `done` or `failed` has none (`cleaning` may have either).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::handles::Held;
use super::keys;
use super::repair::qkey;
use super::SledStore;
use crate::job::{Job, JobId, JobState, Millis};
use crate::store::codec;
use crate::store::{
    CachedMedia, InvariantReport, JobStore, QuarantineEntry, StoreError, UserRecord, UserSettings,
};

/// What the jobs say about one user.
#[derive(Default, Clone, Copy)]
struct Tally {
    jobs: u32,
    active: u32,
    queued: u32,
}

struct Check<'a> {
    /// sled's trees, held for the whole check.
    h: Held<'a>,
    r: InvariantReport,
    jobs: BTreeMap<JobId, Job>,
    tally: HashMap<u64, Tally>,
    /// Keys of the quarantine tree (`tree\0key`).
    quarantined: HashSet<Vec<u8>>,
}

impl SledStore {
    pub(super) fn full_check(&self) -> Result<InvariantReport, StoreError> {
        let mut c = Check {
            h: self.h()?,
            r: InvariantReport {
                counters: self.counts()?,
                ..Default::default()
            },
            jobs: BTreeMap::new(),
            tally: HashMap::new(),
            quarantined: HashSet::new(),
        };
        c.quarantine()?;
        c.jobs()?;
        c.leases();
        c.counters()?;
        c.by_state()?;
        c.by_user()?;
        c.ready()?;
        c.users_and_turns()?;
        c.cache()?;
        c.requests()?;
        c.shorts()?;
        c.inbox()?;
        c.settings()?;
        Ok(c.r)
    }
}

impl Check<'_> {
    fn problem(&mut self, tree: &str, what: String) {
        self.r.problems.push(format!("{tree}: {what}"));
    }

    fn quarantine(&mut self) -> Result<(), StoreError> {
        for kv in self.h.quarantine.iter() {
            let (k, v) = kv?;
            self.r.quarantined += 1;
            if codec::decode::<QuarantineEntry>(&v).is_err() {
                self.problem("quarantine", format!("undecodable entry under key {k:?}"));
            }
            self.quarantined.insert(k.to_vec());
        }
        Ok(())
    }

    fn jobs(&mut self) -> Result<(), StoreError> {
        for kv in self.h.tree("jobs").iter() {
            let (k, v) = kv?;
            self.r.jobs += 1;
            let job = match (JobId::from_slice(&k), codec::decode::<Job>(&v)) {
                (Some(id), Ok(job)) if job.id == id => job,
                (Some(id), Ok(job)) => {
                    self.problem("jobs", format!("record of job {} under key {id}", job.id));
                    continue;
                }
                _ => {
                    self.problem("jobs", format!("undecodable record under key {k:?}"));
                    continue;
                }
            };
            *self.r.recount.get_mut(job.state) += 1;
            if job.history.last().map(|h| h.0) != Some(job.state) {
                self.problem(
                    "jobs",
                    format!(
                        "job {} is {} but its history ends in {:?}",
                        job.id,
                        job.state,
                        job.history.last().map(|h| h.0)
                    ),
                );
            }
            let t = self.tally.entry(job.user_id).or_default();
            t.jobs += 1;
            t.active += job.state.is_active() as u32;
            t.queued += (job.state == JobState::Queued) as u32;
            self.jobs.insert(job.id, job);
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

    fn counters(&mut self) -> Result<(), StoreError> {
        let meta = self.h.tree("meta").clone();
        match meta.get(keys::META_SCHEMA)? {
            Some(v) if v.len() == 4 => {}
            other => self.problem("meta", format!("schema version is {other:?}")),
        }
        for s in JobState::ALL {
            let (have, want) = (self.r.counters.get(s), self.r.recount.get(s));
            if have != want {
                self.problem(
                    "counters",
                    format!("{s} counter says {have}, the records say {want}"),
                );
            }
            if let Some(v) = meta.get(keys::count_key(s))? {
                if v.len() != 8 {
                    self.problem("counters", format!("{s} counter is {} bytes", v.len()));
                }
            }
        }
        // `count` + the state byte (see `keys::count_key`).
        for kv in meta.scan_prefix(b"count") {
            let (k, _) = kv?;
            if k.len() != 6 || JobState::from_u8(k[5]).is_none() {
                self.problem("counters", format!("malformed counter key {k:?}"));
            }
        }
        for kv in meta.scan_prefix(b"fin\0") {
            let (k, v) = kv?;
            let state = k.get(4).copied().and_then(JobState::from_u8);
            if k.len() != 13 || !state.is_some_and(|s| s.is_finished()) || v.len() != 8 {
                self.problem(
                    "counters",
                    format!("malformed finished-per-minute counter {k:?} = {v:?}"),
                );
            }
        }
        Ok(())
    }

    fn by_state(&mut self) -> Result<(), StoreError> {
        let mut indexed: HashMap<JobId, u32> = HashMap::new();
        for kv in self.h.tree("by_state").iter() {
            let (k, v) = kv?;
            let state = k.first().copied().and_then(JobState::from_u8);
            let id = k.get(1..).and_then(JobId::from_slice);
            let (Some(s), Some(id)) = (state, id) else {
                self.problem("by_state", format!("malformed key {k:?}"));
                continue;
            };
            *indexed.entry(id).or_default() += 1;
            let p = match self.jobs.get(&id) {
                None => format!("{s} entry points at missing job {id}"),
                Some(j) if j.state != s => format!("job {id} indexed as {s} but is {}", j.state),
                Some(j) if keys::u64_at(&v, 0) != Some(j.user_id) || v.len() != 8 => {
                    format!(
                        "entry of job {id} says user {v:?}, the job's is {}",
                        j.user_id
                    )
                }
                Some(_) => continue,
            };
            self.problem("by_state", p);
        }
        let mut found = Vec::new();
        for (id, job) in &self.jobs {
            let n = indexed.get(id).copied().unwrap_or(0);
            // A done job has none, or one a store of schema 3 left.
            let ok = if keys::indexed_by_state(job.state) {
                n == 1
            } else {
                n <= 1
            };
            if !ok {
                found.push(format!("job {id} ({}) has {n} entries", job.state));
            }
        }
        for p in found {
            self.problem("by_state", p);
        }
        Ok(())
    }

    fn by_user(&mut self) -> Result<(), StoreError> {
        for kv in self.h.tree("by_user").iter() {
            let (k, v) = kv?;
            let user = keys::u64_at(&k, 0);
            let id = k.get(8..).and_then(JobId::from_slice);
            let (Some(user), Some(id)) = (user, id) else {
                self.problem("by_user", format!("malformed key {k:?}"));
                continue;
            };
            let p = match self.jobs.get(&id) {
                None => format!("entry of user {user} points at missing job {id}"),
                Some(j) if j.user_id != user => {
                    format!(
                        "job {id} listed under user {user}, its user is {}",
                        j.user_id
                    )
                }
                Some(_) if !v.is_empty() => format!("entry of job {id} has a value {v:?}"),
                Some(_) => continue,
            };
            self.problem("by_user", p);
        }
        for (id, job) in &self.jobs {
            if !self
                .h
                .tree("by_user")
                .contains_key(keys::user_key(job.user_id, *id))?
            {
                self.r.problems.push(format!(
                    "by_user: job {id} is missing from its user's index"
                ));
            }
        }
        Ok(())
    }

    fn ready(&mut self) -> Result<(), StoreError> {
        for k in self.h.tree("ready").iter().keys() {
            let k = k?;
            let user = keys::u64_at(&k, 0);
            let next = keys::u64_at(&k, 8);
            let id = k.get(16..).and_then(JobId::from_slice);
            let (Some(user), Some(next), Some(id)) = (user, next, id) else {
                self.problem("ready", format!("malformed key {k:?}"));
                continue;
            };
            let p = match self.jobs.get(&id) {
                None => format!("entry points at missing job {id}"),
                Some(j) if j.state != JobState::Queued => {
                    format!("job {id} is {} but in the ready queue", j.state)
                }
                Some(j) if j.user_id != user || j.next_attempt_at != next => format!(
                    "job {id} queued under user {user} at {next}, the job says user {} at {}",
                    j.user_id, j.next_attempt_at
                ),
                Some(_) => continue,
            };
            self.problem("ready", p);
        }
        for (id, job) in &self.jobs {
            if job.state == JobState::Queued
                && !self.h.tree("ready").contains_key(keys::ready_key(
                    job.user_id,
                    job.next_attempt_at,
                    *id,
                ))?
            {
                self.r
                    .problems
                    .push(format!("ready: queued job {id} is missing from the queue"));
            }
        }
        Ok(())
    }

    fn users_and_turns(&mut self) -> Result<(), StoreError> {
        let mut records: HashMap<u64, UserRecord> = HashMap::new();
        for kv in self.h.tree("users").iter() {
            let (k, v) = kv?;
            let Ok(user) = <[u8; 8]>::try_from(k.as_ref()).map(u64::from_be_bytes) else {
                self.problem("users", format!("malformed key {k:?}"));
                continue;
            };
            match codec::decode::<UserRecord>(&v) {
                Ok(rec) => {
                    records.insert(user, rec);
                }
                Err(e) => self.problem("users", format!("record of user {user} undecodable: {e}")),
            }
        }
        let mut all: Vec<u64> = records.keys().chain(self.tally.keys()).copied().collect();
        all.sort_unstable();
        all.dedup();
        for user in &all {
            let want = self.tally.get(user).copied().unwrap_or_default();
            let have = records.get(user).cloned().unwrap_or_default();
            if have.active != want.active || have.queued != want.queued {
                self.problem(
                    "users",
                    format!(
                        "user {user}: record says active {} queued {}, their {} jobs say {} and {}",
                        have.active, have.queued, want.jobs, want.active, want.queued
                    ),
                );
            }
        }
        let mut turns: HashMap<u64, Vec<Millis>> = HashMap::new();
        for k in self.h.tree("turns").iter().keys() {
            let k = k?;
            match (k.len(), keys::u64_at(&k, 0), keys::u64_at(&k, 8)) {
                (16, Some(at), Some(user)) => turns.entry(user).or_default().push(at),
                _ => self.problem("turns", format!("malformed key {k:?}")),
            }
        }
        let mut users: Vec<u64> = turns.keys().chain(self.tally.keys()).copied().collect();
        users.sort_unstable();
        users.dedup();
        for user in users {
            let queued = self.tally.get(&user).map_or(0, |t| t.queued);
            let have = turns.get(&user).cloned().unwrap_or_default();
            if have.len() != (queued > 0) as usize {
                self.problem(
                    "turns",
                    format!(
                        "user {user} has {} turn entries with {queued} queued jobs",
                        have.len()
                    ),
                );
                continue;
            }
            if let (Some(at), Some(rec)) = (have.first(), records.get(&user)) {
                if *at != rec.last_served {
                    self.problem(
                        "turns",
                        format!(
                            "user {user}'s turn is at {at}, their record says last served at {}",
                            rec.last_served
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    fn cache(&mut self) -> Result<(), StoreError> {
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
        for kv in self.h.tree("cache").iter() {
            let (k, v) = kv?;
            let Some(key) = std::str::from_utf8(&k)
                .ok()
                .filter(|k| well_formed_cache_key(k))
            else {
                found.push(format!("malformed key {k:?}"));
                continue;
            };
            seen.insert(key.to_string());
            let c = match codec::decode::<CachedMedia>(&v) {
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
            let Some(writers) = written.get(key) else {
                continue; // its job was pruned
            };
            found.extend(crate::store::cache_entry_problem(key, &c, writers));
        }
        for (key, writers) in &written {
            if !seen.contains(key) && !self.quarantined.contains(&qkey("cache", key.as_bytes())) {
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

    fn requests(&mut self) -> Result<(), StoreError> {
        let mut found = Vec::new();
        for kv in self.h.tree("requests").iter() {
            let (k, v) = kv?;
            let Some(id) = JobId::from_slice(&v) else {
                found.push(format!("entry {k:?} holds no job id: {v:?}"));
                continue;
            };
            match self.jobs.get(&id) {
                Some(j) if keys::request_key(j) == k.as_ref() => {}
                Some(_) => found.push(format!("entry {k:?} points at job {id} of another request")),
                None if self.quarantined.contains(&qkey("jobs", id.as_bytes())) => {}
                None => found.push(format!("entry {k:?} points at missing job {id}")),
            }
        }
        for (id, job) in &self.jobs {
            match self.h.tree("requests").get(keys::request_key(job))? {
                Some(v) if v.as_ref() == id.as_bytes() => {}
                other => found.push(format!(
                    "job {id}'s request points at {:?}",
                    other.as_deref().and_then(JobId::from_slice)
                )),
            }
        }
        for p in found {
            self.problem("requests", p);
        }
        Ok(())
    }

    fn shorts(&mut self) -> Result<(), StoreError> {
        let mut found = Vec::new();
        for kv in self.h.tree("shorts").iter() {
            let (k, v) = kv?;
            let Some(id) = k.get(4..).and_then(JobId::from_slice) else {
                found.push(format!("malformed key {k:?}"));
                continue;
            };
            if keys::short_key(id) != k.as_ref() {
                found.push(format!("key {k:?} is not job {id}'s short key"));
            } else if !self.jobs.contains_key(&id) {
                found.push(format!("entry points at missing job {id}"));
            } else if !v.is_empty() {
                found.push(format!("entry of job {id} has a value {v:?}"));
            }
        }
        for id in self.jobs.keys() {
            if !self.h.tree("shorts").contains_key(keys::short_key(*id))? {
                found.push(format!("job {id} ({}) has no entry", id.short()));
            }
        }
        for p in found {
            self.problem("shorts", p);
        }
        Ok(())
    }

    fn inbox(&mut self) -> Result<(), StoreError> {
        for kv in self.h.tree("inbox").iter() {
            let (k, v) = kv?;
            let Ok(id) = <[u8; 4]>::try_from(k.as_ref()).map(u32::from_be_bytes) else {
                self.problem("inbox", format!("key {k:?} is not a 4-byte update id"));
                continue;
            };
            if v.is_empty() {
                self.problem("inbox", format!("update {id} is empty"));
                continue;
            }
            match serde_json::from_slice::<serde_json::Value>(&v) {
                Err(e) => self.problem("inbox", format!("update {id} is not JSON: {e}")),
                Ok(json) => {
                    let said = json.get("update_id").map(|u| u.as_u64());
                    if said.is_some_and(|u| u != Some(id as u64)) {
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

    fn settings(&mut self) -> Result<(), StoreError> {
        for kv in self.h.settings.iter() {
            let (k, v) = kv?;
            if k.len() != 8 {
                self.problem("settings", format!("malformed key {k:?}"));
            } else if codec::decode::<UserSettings>(&v).is_err() {
                self.problem("settings", format!("undecodable record under key {k:?}"));
            }
        }
        Ok(())
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
