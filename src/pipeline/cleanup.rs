//! Cleaning: remove everything a job left on disk, then settle its outcome.
//!
//! A job's files live only under `downloads/<job id>/` (see
//! [`crate::download::job_dir`]), so cleaning is one folder removal, and the
//! recovery pass can tell a live job's folder from an orphan by its name.

use std::io;
use std::path::Path;

use super::JobService;
use crate::download::job_dir;
use crate::job::{now_ms, Job, JobState};
use crate::store::{Expect, JobStore, StoreError};

/// Size of a file or folder tree in bytes (what removing it frees).
pub fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Remove a job's folder. A folder that is already gone is success: cleaning
/// runs again after a crash and must be idempotent. Returns bytes freed.
pub fn remove_job_dir(downloads: &Path, job: &Job) -> io::Result<u64> {
    let dir = job_dir(downloads, job.id.0);
    let freed = tree_size(&dir);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(freed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("cannot remove the job's files: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Finish a job in `cleaning`: remove its files, then move it to `failed`
/// when it carries a failure, else to `done`. If the files cannot be removed
/// the job stays in `cleaning` (the next start tries again) and the error is
/// returned. Blocking: file removal and an fsync.
pub fn finish_cleaning_blocking(
    store: &dyn JobStore,
    downloads: &Path,
    job: &Job,
) -> Result<Job, CleanupError> {
    if let Err(e) = remove_job_dir(downloads, job) {
        tracing::error!(job = %job.id, error = %e, "cannot remove job files; will retry at next start");
        return Err(e.into());
    }
    let to = if job.failure.is_some() {
        JobState::Failed
    } else {
        JobState::Done
    };
    Ok(store.update(
        job.id,
        Expect::state(JobState::Cleaning),
        Some(to),
        now_ms(),
        &|j| {
            j.lease = None;
            j.file_path = None;
        },
    )?)
}

/// [`finish_cleaning_blocking`] on the blocking pool, recorded in metrics.
pub async fn finish_cleaning(jobs: &JobService, job: Job) -> Result<Job, CleanupError> {
    jobs.switches.forget(job.id);
    let downloads = jobs.config.downloads_dir();
    let store = jobs.store.clone();
    let before = job.clone();
    let done =
        tokio::task::spawn_blocking(move || finish_cleaning_blocking(&*store, &downloads, &job))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string()).into()))?;
    jobs.metrics.record(&before, &done);
    Ok(done)
}
