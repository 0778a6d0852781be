//! The recovery pass (SPEC "Crash recovery"), run at start before any new
//! work: end the processes a dead run left working in job folders, finish or
//! requeue what it left in flight, and delete files that belong to no live
//! job.
//!
//! It reads only the in-flight state indexes, the downloads folder and the
//! process table, so its cost grows with what was in flight, never with
//! history.

use std::path::Path;

use uuid::Uuid;

use super::cleanup::{self, tree_size, CleanupError};
use super::JobService;
use crate::botapi::board::{self, Boards};
use crate::download::job_dir;
use crate::download::leftovers::{self, Leftover};
use crate::job::{now_ms, FailureCode, Job, JobError, JobId, JobState, Lease, Millis, RescueMark};
use crate::store::{no_edit, Edit, Expect, JobStore, OnBlockingPool, Store, StoreError};
use std::sync::Arc;

/// How long the pass keeps ending processes of an earlier run before it
/// goes on (they die at once; this bounds a process stuck in the kernel).
const LEFTOVER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the pass did (or, in a dry run, would do).
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// Uploads taken over to be sent again (their file is complete).
    pub resumed: Vec<Job>,
    /// Jobs put back in the queue (partial files kept).
    pub requeued: Vec<JobId>,
    /// Jobs failed with "crashed repeatedly": more than `max_rescues`
    /// rescues found them no further than the one before.
    pub failed: Vec<JobId>,
    /// Jobs whose cleaning was finished.
    pub cleaned: Vec<JobId>,
    /// Files or folders deleted because no live job owns them.
    pub orphan_paths: Vec<String>,
    pub bytes_freed: u64,
    /// Processes of an earlier run (yt-dlp, ffmpeg) ended with SIGKILL.
    pub processes_ended: Vec<Leftover>,
}

impl RecoveryReport {
    pub fn is_empty(&self) -> bool {
        self.resumed.is_empty()
            && self.requeued.is_empty()
            && self.failed.is_empty()
            && self.cleaned.is_empty()
            && self.orphan_paths.is_empty()
            && self.processes_ended.is_empty()
    }

    pub fn summary(&self) -> String {
        format!(
            "Recovery: {} upload(s) resumed, {} job(s) requeued, {} failed (crashed repeatedly), {} cleaned, {} orphan file(s) deleted ({} bytes freed), {} leftover process(es) ended",
            self.resumed.len(),
            self.requeued.len(),
            self.failed.len(),
            self.cleaned.len(),
            self.orphan_paths.len(),
            self.bytes_freed,
            self.processes_ended.len()
        )
    }
}

/// How far the pass is, for whoever watches (`tgdl recover` on a terminal
/// draws a bar; the bot watches nothing). Each phase has a known total.
pub trait Progress: Sync {
    fn phase(&self, name: &'static str, total: u64);
    fn advance(&self);
    fn finish(&self);
}

/// Nobody watches.
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &'static str, _: u64) {}
    fn advance(&self) {}
    fn finish(&self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the downloads folder {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Whether nobody is working on a job. With an exclusive store (sled: one
/// process at a time) any owner other than this process is dead; with a
/// shared store, only an expired lease frees a job.
pub fn is_orphan(job: &Job, me: Uuid, now: Millis, exclusive: bool) -> bool {
    match job.lease {
        None => true,
        Some(Lease { owner, .. }) if owner == me => false,
        Some(Lease { until, .. }) => exclusive || until < now,
    }
}

/// Where this rescue finds `job` (in `downloading` or `uploading`, with
/// `bytes` in its folder), against where the last one found it. Only a
/// rescue that finds no progress since, neither more bytes nor a later
/// stage, is a stall; `max_rescues` limits stalls. A slow download that
/// resumes further after every crash is no poison pill; a job that brings
/// the bot down at the same point again and again still is.
pub fn rescue_mark(job: &Job, bytes: u64) -> RescueMark {
    // Later stages rank higher.
    let rank = |s: JobState| match s {
        JobState::Downloading => 0,
        JobState::Uploading => 1,
        _ => 2,
    };
    match job.rescue_mark {
        Some(m) => {
            let progressed = rank(job.state) > rank(m.stage) || bytes > m.bytes;
            RescueMark {
                stage: if rank(job.state) > rank(m.stage) {
                    job.state
                } else {
                    m.stage
                },
                bytes: bytes.max(m.bytes),
                stalls: m.stalls + u32::from(!progressed),
            }
        }
        // Never rescued before: progress since the job started.
        None if job.rescues == 0 => {
            let progressed = rank(job.state) > 0 || bytes > 0;
            RescueMark {
                stage: job.state,
                bytes,
                stalls: u32::from(!progressed),
            }
        }
        // Rescued by a build that kept no mark, which counted every rescue.
        None => RescueMark {
            stage: job.state,
            bytes,
            stalls: job.rescues + 1,
        },
    }
}

fn file_complete(job: &Job) -> bool {
    match (&job.file_path, job.file_size) {
        (Some(p), Some(size)) => std::fs::metadata(p)
            .map(|m| m.len() == size)
            .unwrap_or(false),
        // A cache-hit upload has no file: it is resent by file_id.
        (None, _) => true,
        _ => false,
    }
}

/// Run the pass. With `dry_run` nothing changes and the report says what
/// would happen.
pub async fn recover(jobs: &JobService, dry_run: bool) -> Result<RecoveryReport, RecoveryError> {
    let me = jobs.owner;
    let max_rescues = jobs.config.downloader.max_rescues;
    let lease_ms = jobs.config.downloader.lease_secs * 1000;
    let downloads = jobs.config.downloads_dir();
    let report = pass(
        &*jobs.store,
        me,
        max_rescues,
        lease_ms,
        &downloads,
        dry_run,
        &Quiet,
    )
    .await?;
    if !report.is_empty() {
        tracing::info!(dry_run, "{}", report.summary());
    }
    Ok(report)
}

/// Jobs still to finish that share a status message in a group get their
/// board back (`botapi::board`), so their lines do not overwrite each other;
/// how many boards.
pub async fn adopt_boards(jobs: &JobService, boards: &Boards) -> Result<usize, StoreError> {
    let mut active = jobs.store.list_state(JobState::Queued, usize::MAX).await?;
    active.extend(jobs.store.in_flight().await?);
    let mut shared: std::collections::BTreeMap<(i64, i32), Vec<JobId>> = Default::default();
    for j in active.iter().filter(|j| board::is_group(j.chat_id)) {
        if let Some(m) = j.status_msg_id {
            shared.entry((j.chat_id, m)).or_default().push(j.id);
        }
    }
    shared.retain(|_, ids| ids.len() > 1);
    for ((chat, message), ids) in &shared {
        boards.adopt(*chat, *message, ids);
    }
    Ok(shared.len())
}

/// The pass over any backend. Store calls are awaited; the file work is
/// small (one folder's size per job in flight, one listing of the downloads
/// folder) except ending leftover processes, which runs on the blocking pool.
async fn pass(
    s: &dyn Store,
    me: Uuid,
    max_rescues: u32,
    lease_ms: u64,
    downloads: &Path,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<RecoveryReport, RecoveryError> {
    // First, so nothing of a dead run still writes while jobs are requeued.
    let dir = downloads.to_path_buf();
    let ended = tokio::task::spawn_blocking(move || {
        if dry_run {
            leftovers::find(&dir)
        } else {
            leftovers::end_all(&dir, LEFTOVER_PATIENCE)
        }
    })
    .await
    .unwrap_or_default();
    let mut r = RecoveryReport {
        processes_ended: ended,
        ..RecoveryReport::default()
    };
    let ctx = Rescue {
        me,
        max_rescues,
        lease_ms,
        downloads,
        dry_run,
        resume: true,
    };
    rescue(s, &ctx, progress, &mut r).await?;
    sweep_orphans(s, downloads, dry_run, progress, &mut r).await?;
    progress.finish();
    Ok(r)
}

async fn settle(s: &dyn Store, downloads: &Path, job: Job) -> Result<(), StoreError> {
    match cleanup::settle(s, downloads, &job).await {
        // Left in `cleaning` for the next start; not a reason to stop here.
        Ok(_) | Err(CleanupError::Io(_)) => Ok(()),
        Err(CleanupError::Store(e)) => Err(e),
    }
}

/// What one rescue of the jobs in flight works with.
struct Rescue<'a> {
    me: Uuid,
    max_rescues: u32,
    lease_ms: u64,
    downloads: &'a Path,
    dry_run: bool,
    /// Take over an upload whose file is complete here. Only at start:
    /// the start-up pass hands resumed uploads to this process's workers.
    resume: bool,
}

/// Finish or requeue every job in flight that nobody works on any more
/// ([`is_orphan`]): the heart of the start-up pass, and, on a shared store,
/// of the rescuer every node runs (a lapsed lease is a dead node's job).
async fn rescue(
    s: &dyn Store,
    ctx: &Rescue<'_>,
    progress: &dyn Progress,
    r: &mut RecoveryReport,
) -> Result<(), StoreError> {
    let now = now_ms();
    let exclusive = s.is_exclusive();
    let in_flight = s.in_flight().await?;
    progress.phase("jobs in flight", in_flight.len() as u64);
    for job in in_flight {
        progress.advance();
        if !is_orphan(&job, ctx.me, now, exclusive) {
            continue;
        }
        let (id, state) = (job.id, job.state);
        let rescues = job.rescues + 1;
        let mark = match state {
            JobState::Downloading | JobState::Uploading => {
                rescue_mark(&job, tree_size(&job_dir(ctx.downloads, id.0)))
            }
            _ => job.rescue_mark.unwrap_or(RescueMark {
                stage: state,
                bytes: 0,
                stalls: 0,
            }),
        };
        let res = match state {
            // A cancel was asked of the node that ran it (the request is
            // the failure it carries): finish it as cancelled, never rerun.
            JobState::Downloading | JobState::Uploading if job.failure.is_some() => {
                r.cleaned.push(id);
                if ctx.dry_run {
                    continue;
                }
                match s
                    .update(
                        id,
                        Expect::state(state),
                        Some(JobState::Cleaning),
                        now,
                        no_edit(),
                    )
                    .await
                {
                    Ok(j) => settle(s, ctx.downloads, j).await,
                    Err(e) => Err(e),
                }
            }
            JobState::Downloading | JobState::Uploading if mark.stalls > ctx.max_rescues => {
                r.failed.push(id);
                if ctx.dry_run {
                    continue;
                }
                let err = JobError::permanent(
                    FailureCode::CrashedRepeatedly,
                    format!(
                        "rescued {rescues} times, {} of them without progress",
                        mark.stalls
                    ),
                );
                let edit: Edit = Arc::new(move |j| {
                    j.rescues = rescues;
                    j.rescue_mark = Some(mark);
                    j.failure = Some(err.clone());
                    j.last_error = Some(err.clone());
                });
                match s
                    .update(
                        id,
                        Expect::state(state),
                        Some(JobState::Cleaning),
                        now,
                        edit,
                    )
                    .await
                {
                    Ok(j) => settle(s, ctx.downloads, j).await,
                    Err(e) => Err(e),
                }
            }
            JobState::Uploading if ctx.resume && file_complete(&job) => {
                if ctx.dry_run {
                    r.resumed.push(job);
                    continue;
                }
                let lease = Lease {
                    owner: ctx.me,
                    until: now + ctx.lease_ms,
                };
                let edit: Edit = Arc::new(move |j| {
                    j.rescues = rescues;
                    j.rescue_mark = Some(mark);
                    j.lease = Some(lease);
                });
                s.update(id, Expect::state(state), None, now, edit)
                    .await
                    .map(|j| r.resumed.push(j))
            }
            JobState::Downloading | JobState::Uploading => {
                r.requeued.push(id);
                if ctx.dry_run {
                    continue;
                }
                let edit: Edit = Arc::new(move |j| {
                    j.rescues = rescues;
                    j.rescue_mark = Some(mark);
                    j.next_attempt_at = now;
                });
                s.update(id, Expect::state(state), Some(JobState::Queued), now, edit)
                    .await
                    .map(|_| ())
            }
            JobState::Cleaning => {
                r.cleaned.push(id);
                if ctx.dry_run {
                    continue;
                }
                settle(s, ctx.downloads, job).await
            }
            _ => Ok(()),
        };
        match res {
            Ok(()) => {}
            // Someone else moved it (or its record was quarantined): not ours.
            Err(StoreError::Conflict { .. })
            | Err(StoreError::Corrupt { .. })
            | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// On a shared store: requeue (or fail, or finish cleaning) the jobs whose
/// owner's lease lapsed, counted by the same progress rule as the start-up
/// pass. What it requeued is in the report.
pub async fn rescue_lapsed(jobs: &JobService) -> Result<RecoveryReport, StoreError> {
    let downloads = jobs.config.downloads_dir();
    let ctx = Rescue {
        me: jobs.owner,
        max_rescues: jobs.config.downloader.max_rescues,
        lease_ms: jobs.config.downloader.lease_secs * 1000,
        downloads: &downloads,
        dry_run: false,
        resume: false,
    };
    let mut r = RecoveryReport::default();
    rescue(&*jobs.store, &ctx, &Quiet, &mut r).await?;
    Ok(r)
}

/// Delete every entry of the downloads folder that belongs to no live job.
/// Partial files of queued jobs stay, so their download resumes.
async fn sweep_orphans(
    s: &dyn Store,
    downloads: &Path,
    dry_run: bool,
    progress: &dyn Progress,
    r: &mut RecoveryReport,
) -> Result<(), RecoveryError> {
    let entries: Vec<_> = match std::fs::read_dir(downloads) {
        Ok(e) => e.flatten().collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RecoveryError::Io {
                path: downloads.display().to_string(),
                source,
            })
        }
    };
    progress.phase("downloads folder", entries.len() as u64);
    for entry in entries {
        progress.advance();
        let path = entry.path();
        let id = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Uuid>().ok())
            .map(JobId);
        let live = match id {
            Some(id) => s
                .get(id)
                .await?
                .is_some_and(|j| j.state.is_active() && j.state != JobState::Cleaning),
            None => false,
        };
        if live {
            continue;
        }
        let size = tree_size(&path);
        r.orphan_paths.push(path.display().to_string());
        r.bytes_freed += size;
        if dry_run {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete orphan");
        }
    }
    Ok(())
}

/// The dry-run report as printed by `tgdl recover --dry-run`.
pub fn describe(r: &RecoveryReport) -> String {
    let mut out = String::new();
    for j in &r.resumed {
        out.push_str(&format!("resume upload  {}\n", j.id));
    }
    for id in &r.requeued {
        out.push_str(&format!("requeue        {id}\n"));
    }
    for id in &r.failed {
        out.push_str(&format!("fail (crashed) {id}\n"));
    }
    for id in &r.cleaned {
        out.push_str(&format!("finish cleaning {id}\n"));
    }
    for p in &r.orphan_paths {
        out.push_str(&format!("delete orphan  {p}\n"));
    }
    for l in &r.processes_ended {
        out.push_str(&format!(
            "end process    {} ({}) in {}\n",
            l.pid,
            l.name,
            l.cwd.display()
        ));
    }
    out.push_str(&r.summary());
    out
}

/// The pass over a stopped sled store, for the CLI (which shows
/// `progress`): blocking, on a runtime of its own.
pub fn recover_offline(
    s: Arc<dyn JobStore>,
    config: &crate::config::Config,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<RecoveryReport, RecoveryError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RecoveryError::Io {
            path: String::new(),
            source,
        })?;
    rt.block_on(pass(
        &OnBlockingPool(s),
        Uuid::now_v7(),
        config.downloader.max_rescues,
        config.downloader.lease_secs * 1000,
        &config.downloads_dir(),
        dry_run,
        progress,
    ))
}
