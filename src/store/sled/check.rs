//! The full consistency check: every record decodes, and every index,
//! counter and per-user record agrees with the records. Slow by design (it
//! reads everything); for tests, the crash harnesses and diagnostics.

use std::collections::HashMap;

use super::keys;
use super::SledStore;
use crate::job::{Job, JobId, JobState};
use crate::store::codec;
use crate::store::{InvariantReport, JobStore, StoreError, UserRecord};

impl SledStore {
    pub(super) fn full_check(&self) -> Result<InvariantReport, StoreError> {
        let mut r = InvariantReport {
            counters: self.counts()?,
            quarantined: self.quarantine.len() as u64,
            ..Default::default()
        };
        let mut users: HashMap<u64, UserRecord> = HashMap::new();
        let mut jobs: HashMap<JobId, Job> = HashMap::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv?;
            r.jobs += 1;
            match (JobId::from_slice(&k), codec::decode::<Job>(&v)) {
                (Some(id), Ok(job)) if job.id == id => {
                    *r.recount.get_mut(job.state) += 1;
                    let u = users.entry(job.user_id).or_default();
                    u.active += job.state.is_active() as u32;
                    u.queued += (job.state == JobState::Queued) as u32;
                    jobs.insert(id, job);
                }
                _ => r
                    .problems
                    .push(format!("undecodable record under key {k:?}")),
            }
        }
        if r.recount != r.counters {
            r.problems.push(format!(
                "counters {:?} differ from recount {:?}",
                r.counters, r.recount
            ));
        }
        let mut indexed: HashMap<JobId, u32> = HashMap::new();
        for k in self.by_state.iter().keys() {
            let k = k?;
            let state = JobState::from_u8(k[0]);
            let id = JobId::from_slice(&k[1..]);
            match (state, id) {
                (Some(s), Some(id)) => {
                    *indexed.entry(id).or_default() += 1;
                    match jobs.get(&id) {
                        Some(j) if j.state == s => {}
                        Some(j) => r
                            .problems
                            .push(format!("job {id} indexed as {s} but is {}", j.state)),
                        None => r
                            .problems
                            .push(format!("index {s} points at missing job {id}")),
                    }
                }
                _ => r.problems.push(format!("malformed state index key {k:?}")),
            }
        }
        for (id, job) in &jobs {
            if indexed.get(id).copied().unwrap_or(0) != 1 {
                r.problems.push(format!(
                    "job {id} ({}) is in {} state indexes",
                    job.state,
                    indexed.get(id).copied().unwrap_or(0)
                ));
            }
            if !self
                .by_user
                .contains_key(keys::user_key(job.user_id, *id))?
            {
                r.problems
                    .push(format!("job {id} missing from its user index"));
            }
            if job.state == JobState::Queued
                && !self.ready.contains_key(keys::ready_key(
                    job.user_id,
                    job.next_attempt_at,
                    *id,
                ))?
            {
                r.problems
                    .push(format!("queued job {id} missing from the ready queue"));
            }
        }
        if self.by_user.len() != jobs.len() {
            r.problems.push(format!(
                "user index has {} entries for {} jobs",
                self.by_user.len(),
                jobs.len()
            ));
        }
        let queued = r.recount.queued as usize;
        if self.ready.len() != queued {
            r.problems.push(format!(
                "ready queue has {} entries for {queued} queued jobs",
                self.ready.len()
            ));
        }
        let mut turn_users = Vec::new();
        for k in self.turns.iter().keys() {
            turn_users.push(keys::u64_at(&k?, 8).unwrap_or(0));
        }
        for (user, want) in &users {
            let have = match self.users.get(user.to_be_bytes())? {
                Some(b) => codec::decode::<UserRecord>(&b).unwrap_or_default(),
                None => UserRecord::default(),
            };
            if have.active != want.active || have.queued != want.queued {
                r.problems.push(format!(
                    "user {user}: record says active {} queued {}, jobs say {} and {}",
                    have.active, have.queued, want.active, want.queued
                ));
            }
            let turns = turn_users.iter().filter(|u| *u == user).count();
            if turns != (want.queued > 0) as usize {
                r.problems.push(format!(
                    "user {user} has {turns} turn entries with {} queued",
                    want.queued
                ));
            }
        }
        Ok(r)
    }
}
