//! Cleaning: remove everything a job left on disk, then settle its outcome.
//!
//! A job's files live only under `downloads/<job id>/` (see
//! [`crate::download::job_dir`]), so cleaning is one folder removal, and the
//! recovery pass can tell a live job's folder from an orphan by its name.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::JobService;
use crate::download::job_dir;
use crate::job::{now_ms, Job, JobState};
use crate::store::{Expect, Store, StoreError};

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

/// Finish a job in `cleaning`: remove its files (on the blocking pool),
/// then move it to `failed` when it carries a failure, else to `done`. If
/// the files cannot be removed the job stays in `cleaning` (the next start
/// tries again) and the error is returned.
pub async fn settle(store: &dyn Store, downloads: &Path, job: &Job) -> Result<Job, CleanupError> {
    let (dir, owned) = (downloads.to_path_buf(), job.clone());
    let removed = tokio::task::spawn_blocking(move || remove_job_dir(&dir, &owned))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
    if let Err(e) = removed {
        tracing::error!(job = %job.id, error = %e, "cannot remove job files; will retry at next start");
        return Err(e.into());
    }
    let to = if job.failure.is_some() {
        JobState::Failed
    } else {
        JobState::Done
    };
    Ok(store
        .update(
            job.id,
            Expect::state(JobState::Cleaning),
            Some(to),
            now_ms(),
            Arc::new(|j| {
                j.lease = None;
                j.file_path = None;
            }),
        )
        .await?)
}

/// [`settle`] a job of this process, recorded in metrics.
pub async fn finish_cleaning(jobs: &JobService, job: Job) -> Result<Job, CleanupError> {
    jobs.switches.forget(job.id);
    let downloads = jobs.config.downloads_dir();
    let done = settle(&*jobs.store, &downloads, &job).await?;
    jobs.metrics.record(&job, &done);
    Ok(done)
}
