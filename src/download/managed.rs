//! The managed yt-dlp: each release in its own folder under
//! `data_dir/tools/ytdlp`, a `current` and a `previous` symlink naming
//! folders, and `state.json` with the last update attempt.
//!
//! ```text
//! tools/ytdlp/i-1764661200000/venv/bin/yt-dlp   one install (a venv)
//! tools/ytdlp/i-1764661200000/installed.json    its version and time
//! tools/ytdlp/current  -> i-1764661200000       what new jobs use
//! tools/ytdlp/previous -> i-1764574800000       what /update rollback restores
//! tools/ytdlp/state.json                        last attempt, newest known
//! tools/ytdlp/.lock                             one updater at a time (flock)
//! ```
//!
//! A new release goes into a fresh folder and is checked there (its
//! `--version` and [`super::selftest`]) before anything points at it; the
//! switch is one `rename` of a new symlink over `current`, so no reader ever
//! sees a half-made state. Folders that are neither current nor previous
//! are removed, unless a job of this process still runs from one.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::handle::Install;
use super::source::Source;

#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error("Python 3 (needed to install yt-dlp) was not found; install python3, or set downloader.ytdlp")]
    NoPython,
    #[error("installing yt-dlp failed: {0}")]
    Install(String),
    #[error("the new yt-dlp does not start: {0}")]
    Version(String),
    #[error("the new yt-dlp {version} failed its self-test: {detail}")]
    SelfTest { version: String, detail: String },
    #[error("there is no previous yt-dlp install to go back to")]
    NoPrevious,
    #[error("no managed yt-dlp is installed yet")]
    NotInstalled,
    #[error("{path}: {error}")]
    Io {
        path: String,
        #[source]
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ManagedError + '_ {
    move |error| ManagedError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// What one install folder says about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Installed {
    version: String,
    installed_at: u64,
}

/// How the last update attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Installed { version: String },
    Updated { from: String, to: String },
    UpToDate { version: String },
    Failed { error: String },
    RolledBack { from: String, to: String },
}

impl Outcome {
    pub fn describe(&self) -> String {
        match self {
            Outcome::Installed { version } => format!("installed {version}"),
            Outcome::Updated { from, to } => format!("updated {from} → {to}"),
            Outcome::UpToDate { version } => format!("{version} is the newest"),
            Outcome::Failed { error } => format!("failed, nothing changed: {error}"),
            Outcome::RolledBack { from, to } => format!("rolled back {from} → {to}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `state.json`: kept across restarts so the interval counts from the last
/// attempt, not from the start of the process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub last_attempt: Option<Attempt>,
    /// The newest release the package source listed, and when it was asked.
    pub newest_known: Option<(String, u64)>,
}

/// A switch that happened.
#[derive(Debug)]
pub struct Switched {
    pub from: String,
    pub to: String,
    /// How long the pointer swap took (the two renames).
    pub took: Duration,
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(tools_dir: &Path) -> Self {
        Layout {
            root: tools_dir.join("ytdlp"),
        }
    }

    fn link(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn target(&self, name: &str) -> Option<PathBuf> {
        let t = std::fs::read_link(self.link(name)).ok()?;
        Some(self.root.join(t))
    }

    /// The folder `current` names, if any.
    pub fn current_dir(&self) -> Option<PathBuf> {
        self.target("current")
    }

    pub fn previous_dir(&self) -> Option<PathBuf> {
        self.target("previous")
    }

    /// The install `current` names.
    pub fn current(&self) -> Result<Install, ManagedError> {
        let dir = self.current_dir().ok_or(ManagedError::NotInstalled)?;
        Ok(read_install(&dir))
    }

    pub fn previous(&self) -> Option<Install> {
        self.previous_dir().map(|d| read_install(&d))
    }

    pub fn state(&self) -> State {
        std::fs::read(self.root.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_state(&self, state: &State) -> Result<(), ManagedError> {
        let path = self.root.join("state.json");
        let tmp = self.root.join("state.json.tmp");
        let body = serde_json::to_vec_pretty(state).expect("state serialises");
        std::fs::write(&tmp, body).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn record(&self, outcome: Outcome) -> Result<(), ManagedError> {
        let mut state = self.state();
        state.last_attempt = Some(Attempt {
            at: crate::job::now_ms(),
            outcome,
        });
        self.save_state(&state)
    }

    /// Point `name` at `dir` in one step: a new symlink renamed over the old.
    fn point(&self, name: &str, dir: &Path) -> Result<(), ManagedError> {
        let rel = dir.file_name().unwrap_or(dir.as_os_str());
        let tmp = self.link(&format!(".{name}.new"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(rel, &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.link(name)).map_err(io(&self.link(name)))
    }

    /// Make `dir` current and the old current previous.
    fn switch_to(&self, dir: &Path) -> Result<Switched, ManagedError> {
        let old = self.current_dir();
        let from = old
            .as_deref()
            .map(|d| read_install(d).version)
            .unwrap_or_default();
        let started = Instant::now();
        self.point("current", dir)?;
        if let Some(old) = &old {
            self.point("previous", old)?;
        }
        let took = started.elapsed();
        let to = read_install(dir).version;
        tracing::info!(%from, %to, took_us = took.as_micros() as u64, "yt-dlp switched");
        Ok(Switched { from, to, took })
    }

    /// Remove install folders that are neither current nor previous nor in
    /// `in_use` (installs jobs of this process still run from).
    /// Takes the lock (blocking): a folder another process is installing
    /// into must not be taken for an old one.
    pub fn prune(&self, in_use: &[PathBuf]) {
        let _lock = match self.lock() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot prune old yt-dlp installs");
                return;
            }
        };
        let keep: Vec<PathBuf> = [self.current_dir(), self.previous_dir()]
            .into_iter()
            .flatten()
            .chain(in_use.iter().cloned())
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let is_install =
                name.to_string_lossy().starts_with("i-") && e.file_type().is_ok_and(|t| t.is_dir());
            if is_install && !keep.contains(&path) {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => tracing::info!(dir = %path.display(), "old yt-dlp install removed"),
                    Err(e) => {
                        tracing::warn!(dir = %path.display(), error = %e, "cannot remove an old yt-dlp install")
                    }
                }
            }
        }
    }

    /// One updater at a time, across processes (the bot and `tgdl update`).
    /// The lock is released when the returned guard is dropped (or the
    /// process dies: flock belongs to the open file).
    fn lock(&self) -> Result<Flock<std::fs::File>, ManagedError> {
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let path = self.root.join(".lock");
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        // Blocking, but only against another updater; callers run this on
        // the blocking pool.
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io(&path)(std::io::Error::from(errno)))
    }

    /// Install the newest release from `source` into a fresh folder, check
    /// it, and switch to it. Nothing changes unless every step succeeds; the
    /// attempt is recorded in `state.json` either way.
    ///
    /// Old folders are not removed here ([`Layout::prune`]): deleting a venv
    /// takes seconds, and the admin should hear the outcome first.
    pub async fn update(&self, source: &Source) -> Result<Outcome, ManagedError> {
        let layout = self.clone();
        let lock = tokio::task::spawn_blocking(move || layout.lock())
            .await
            .expect("lock task")?;
        let result = self.update_locked(source).await;
        let outcome = match &result {
            Ok(o) => o.clone(),
            Err(e) => Outcome::Failed {
                error: e.to_string(),
            },
        };
        if let Err(e) = self.record(outcome) {
            tracing::warn!(error = %e, "cannot record the yt-dlp update attempt");
        }
        drop(lock);
        result
    }

    async fn update_locked(&self, source: &Source) -> Result<Outcome, ManagedError> {
        let current = self.current().ok();
        // Asking the source costs one page; a fresh venv costs seconds.
        if let (Some(c), Ok(newest)) = (&current, source.newest().await) {
            if super::source::compare(&c.version, &newest).is_ge() {
                return Ok(Outcome::UpToDate {
                    version: c.version.clone(),
                });
            }
        }
        let dir = self.root.join(format!("i-{}", crate::job::now_ms()));
        let fresh = async {
            let bin = install_into(&dir, source).await?;
            let version = super::ytdlp_version(&bin)
                .await
                .map_err(|e| ManagedError::Version(e.to_string()))?;
            Ok::<_, ManagedError>((bin, version))
        }
        .await;
        let (bin, version) = match fresh {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        if current.as_ref().is_some_and(|c| c.version == version) {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(Outcome::UpToDate { version });
        }
        if let Err(detail) = super::selftest::check(&bin).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ManagedError::SelfTest { version, detail });
        }
        let meta = Installed {
            version: version.clone(),
            installed_at: crate::job::now_ms(),
        };
        let path = dir.join("installed.json");
        std::fs::write(&path, serde_json::to_vec(&meta).expect("serialises")).map_err(io(&path))?;
        let switched = self.switch_to(&dir)?;
        Ok(match current {
            Some(_) => Outcome::Updated {
                from: switched.from,
                to: switched.to,
            },
            None => Outcome::Installed { version },
        })
    }

    /// Swap `current` and `previous`: new jobs go back to the previous
    /// install (a second rollback undoes the first).
    pub async fn rollback(&self) -> Result<Switched, ManagedError> {
        let layout = self.clone();
        let lock = tokio::task::spawn_blocking(move || layout.lock())
            .await
            .expect("lock task")?;
        let prev = self.previous_dir().ok_or(ManagedError::NoPrevious)?;
        if !prev.join("venv/bin/yt-dlp").exists() {
            return Err(ManagedError::NoPrevious);
        }
        let switched = self.switch_to(&prev)?;
        if let Err(e) = self.record(Outcome::RolledBack {
            from: switched.from.clone(),
            to: switched.to.clone(),
        }) {
            tracing::warn!(error = %e, "cannot record the rollback");
        }
        drop(lock);
        Ok(switched)
    }
}

fn read_install(dir: &Path) -> Install {
    let meta: Option<Installed> = std::fs::read(dir.join("installed.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    Install {
        bin: dir.join("venv").join("bin").join("yt-dlp"),
        dir: Some(dir.to_path_buf()),
        version: meta
            .as_ref()
            .map(|m| m.version.clone())
            .unwrap_or_else(|| "unknown".into()),
        installed_at: meta.map(|m| m.installed_at),
    }
}

/// A venv in `dir/venv` with the newest yt-dlp from `source` in it.
async fn install_into(dir: &Path, source: &Source) -> Result<PathBuf, ManagedError> {
    let python = ["python3", "python"]
        .into_iter()
        .find_map(super::install::find_on_path)
        .ok_or(ManagedError::NoPython)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let venv = dir.join("venv");
    tracing::info!(dir = %dir.display(), "installing yt-dlp");
    run(
        &python,
        ["-m", "venv"]
            .map(OsStr::new)
            .into_iter()
            .chain([venv.as_os_str()]),
    )
    .await
    .map_err(ManagedError::Install)?;
    let pip = venv.join("bin").join("pip");
    let mut args: Vec<String> = [
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--upgrade",
        // A dead index should fail the attempt, not stall it for minutes.
        "--retries",
        "1",
        "--timeout",
        "30",
    ]
    .map(String::from)
    .to_vec();
    args.extend(source.pip_args());
    args.push("yt-dlp".into());
    run(&pip, args.iter().map(OsStr::new))
        .await
        .map_err(ManagedError::Install)?;
    let bin = venv.join("bin").join("yt-dlp");
    if super::install::is_executable(&bin) {
        Ok(bin)
    } else {
        Err(ManagedError::Install(
            "pip finished but bin/yt-dlp is missing".into(),
        ))
    }
}

/// Run an installer step; its last line of stderr is the error.
async fn run<'a>(program: &Path, args: impl IntoIterator<Item = &'a OsStr>) -> Result<(), String> {
    let mut cmd = Command::new(program);
    super::process::without_secrets(&mut cmd);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .map_err(|_| format!("{} took over 10 minutes", program.display()))?
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    Err(format!(
        "{} exited with {}: {last}",
        program.file_name().unwrap_or_default().to_string_lossy(),
        out.status
    ))
}
