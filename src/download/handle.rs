//! [`YtDlp`]: which yt-dlp a job runs. Workers ask for [`YtDlp::current`]
//! once per job and keep the [`Install`] they got for the whole run, so a
//! switch (an update or a rollback) moves new jobs only; running ones finish
//! with the install they started with.
//!
//! For the managed install the pointer is the `current` symlink in
//! `data_dir/tools/ytdlp` (see [`super::managed`]), swapped with one
//! `rename`: the bot, `tgdl update` and `tgdl health` read the same truth.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};

use super::managed::{self, Layout};

/// One yt-dlp executable and what is known about it.
#[derive(Debug, PartialEq, Eq)]
pub struct Install {
    pub bin: PathBuf,
    /// The install's own folder (managed installs only).
    pub dir: Option<PathBuf>,
    /// As recorded at install time; "unknown" for the operator's yt-dlp
    /// until the health task asks it.
    pub version: String,
    /// Unix millis; `None` when not known.
    pub installed_at: Option<u64>,
}

#[derive(Clone)]
pub struct YtDlp(Arc<Inner>);

enum Inner {
    /// `downloader.ytdlp` is a path, or yt-dlp is on PATH: never changed.
    Operator(Arc<Install>),
    Managed {
        layout: Layout,
        cached: RwLock<Arc<Install>>,
        /// Installs handed out to jobs, to tell which folders are in use.
        handed: RwLock<Vec<Weak<Install>>>,
    },
}

impl YtDlp {
    pub fn operator(bin: PathBuf) -> Self {
        let installed_at = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        YtDlp(Arc::new(Inner::Operator(Arc::new(Install {
            bin,
            dir: None,
            version: "unknown".into(),
            installed_at,
        }))))
    }

    /// A handle on the managed install whose `current` pointer exists.
    pub fn managed(layout: Layout) -> Result<Self, managed::ManagedError> {
        let first = Arc::new(layout.current()?);
        Ok(YtDlp(Arc::new(Inner::Managed {
            layout,
            handed: RwLock::new(vec![Arc::downgrade(&first)]),
            cached: RwLock::new(first),
        })))
    }

    /// The install a new job should use. For the managed install this reads
    /// the `current` pointer (one `readlink`), so a switch made by any
    /// process applies to the next job.
    pub fn current(&self) -> Arc<Install> {
        match &*self.0 {
            Inner::Operator(i) => i.clone(),
            Inner::Managed {
                layout,
                cached,
                handed,
            } => {
                let dir = layout.current_dir();
                let now = cached.read().unwrap().clone();
                if dir.is_none() || now.dir == dir {
                    return now;
                }
                match layout.current() {
                    Ok(fresh) => {
                        let fresh = Arc::new(fresh);
                        *cached.write().unwrap() = fresh.clone();
                        let mut h = handed.write().unwrap();
                        h.retain(|w| w.strong_count() > 0);
                        h.push(Arc::downgrade(&fresh));
                        fresh
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the new yt-dlp install; keeping the one in use");
                        now
                    }
                }
            }
        }
    }

    /// The managed layout, when the bot manages yt-dlp.
    pub fn layout(&self) -> Option<&Layout> {
        match &*self.0 {
            Inner::Operator(_) => None,
            Inner::Managed { layout, .. } => Some(layout),
        }
    }

    /// Folders of installs a job of this process still runs with.
    pub fn in_use(&self) -> Vec<PathBuf> {
        match &*self.0 {
            Inner::Operator(_) => Vec::new(),
            Inner::Managed { handed, .. } => handed
                .read()
                .unwrap()
                .iter()
                .filter_map(Weak::upgrade)
                .filter_map(|i| i.dir.clone())
                .collect(),
        }
    }
}
