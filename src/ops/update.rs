//! The updater: keeps the managed yt-dlp current and watches the operator's.
//!
//! One task owns every change (so two never overlap in this process; the
//! install folder's lock covers `tgdl update` in another). It runs
//! - every `downloader.update_interval_hours`, counted from the last attempt
//!   recorded in `tools/ytdlp/state.json` (a restart does not reinstall);
//! - on an admin's `/update` or `/update rollback` ([`Updater::request`]);
//! - at once when extractor errors spike on a release that is not fresh.
//!
//! When they spike right after a switch, admins are offered the rollback
//! instead. A failed periodic attempt is told to the admins once (until an
//! attempt succeeds); `/update` always answers. For an operator-managed
//! yt-dlp nothing is ever changed: the newest known release is looked up and
//! an alert says when it is more than `downloader.stale_after_days` behind.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::health::HealthState;
use crate::botapi::{notify_admins, Api};
use crate::config::Config;
use crate::download::managed::{Layout, ManagedError, Outcome, State};
use crate::download::source::{self, Source};
use crate::download::{self, YtDlp};
use crate::i18n::{render, Msg};
use crate::job::{iso, now_ms, HOUR_MS};
use crate::pipeline::JobService;

/// Extractor errors in an hour that count as a spike (the health rule's
/// threshold for its own alert).
pub const SPIKE: u64 = 5;
/// A switch this recent is "right after an update".
const FRESH_MS: u64 = 6 * HOUR_MS;
/// How often the task looks at the clock and the error count.
const TICK: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Update,
    Rollback,
}

/// What handlers hold: a way to ask the updater for work.
#[derive(Clone)]
pub struct Updater {
    tx: mpsc::Sender<Request>,
}

impl Updater {
    /// Queue a request; `false` when one is already waiting.
    pub fn request(&self, r: Request) -> bool {
        self.tx.try_send(r).is_ok()
    }
}

pub struct UpdateTask {
    jobs: Arc<JobService>,
    api: Option<Api>,
    ytdlp: YtDlp,
    health: Arc<HealthState>,
    source: Source,
    rx: mpsc::Receiver<Request>,
    /// The failure last told to admins, so a failing schedule tells once.
    told_failure: Option<String>,
    spike_offered_for: Option<String>,
    spike_update_at: Option<u64>,
    stale_told_for: Option<String>,
    stale_checked_at: Option<u64>,
}

pub fn spawn_parts(
    jobs: Arc<JobService>,
    api: Option<Api>,
    ytdlp: YtDlp,
    health: Arc<HealthState>,
) -> (Updater, UpdateTask) {
    let (tx, rx) = mpsc::channel(1);
    let source = Source::from_setting(&jobs.config.downloader.ytdlp_source);
    let task = UpdateTask {
        jobs,
        api,
        ytdlp,
        health,
        source,
        rx,
        told_failure: None,
        spike_offered_for: None,
        spike_update_at: None,
        stale_told_for: None,
        stale_checked_at: None,
    };
    (Updater { tx }, task)
}

impl UpdateTask {
    pub async fn run(mut self, stop: CancellationToken) {
        self.refresh_health().await;
        let mut every = tokio::time::interval(TICK);
        loop {
            let asked = tokio::select! {
                r = self.rx.recv() => match r {
                    Some(r) => Some(r),
                    None => return,
                },
                _ = every.tick() => None,
                _ = stop.cancelled() => return,
            };
            let work = async {
                match asked {
                    Some(r) => self.handle(r).await,
                    None => self.tick().await,
                }
            };
            // Shutdown does not wait for pip: dropping the work kills it
            // (`kill_on_drop`), and its half-made folder is pruned later.
            tokio::select! {
                _ = work => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// An admin's request (`/update`, `/update rollback`).
    pub async fn handle(&mut self, r: Request) {
        match r {
            Request::Update => self.update(true).await,
            Request::Rollback => self.rollback().await,
        }
    }

    async fn tell(&self, msg: Msg) {
        let text = render(self.jobs.default_lang(), &msg);
        tracing::info!(message = %text, "told admins");
        if let Some(api) = &self.api {
            notify_admins(api, &self.jobs.config, &text).await;
        }
    }

    fn interval_ms(&self) -> u64 {
        self.jobs.config.downloader.update_interval_hours * HOUR_MS
    }

    /// One round: a due update, the spike rule, the operator's staleness.
    pub async fn tick(&mut self) {
        let now = now_ms();
        let Some(layout) = self.ytdlp.layout().cloned() else {
            self.check_stale(now).await;
            return;
        };
        let state = layout.state();
        let due = self.interval_ms() > 0
            && state
                .last_attempt
                .as_ref()
                .is_none_or(|a| now >= a.at + self.interval_ms());
        if due {
            self.update(false).await;
            return;
        }
        self.check_spike(&layout, &state, now).await;
    }

    /// Extractor errors spiking: right after a switch, offer the way back;
    /// on an older release, update now (at most once an hour).
    async fn check_spike(&mut self, layout: &Layout, state: &State, now: u64) {
        let current = self.ytdlp.current();
        let switched_at = state.last_attempt.as_ref().and_then(|a| match &a.outcome {
            Outcome::Updated { to, .. } | Outcome::RolledBack { to, .. }
                if *to == current.version =>
            {
                Some(a.at)
            }
            _ => None,
        });
        let guard = &self.jobs.guard;
        match (switched_at, layout.previous()) {
            (Some(at), Some(prev)) if now.saturating_sub(at) < FRESH_MS => {
                let errors = guard.extractor_errors_since(at.max(now.saturating_sub(HOUR_MS)));
                if errors >= SPIKE && self.spike_offered_for.as_ref() != Some(&current.version) {
                    self.spike_offered_for = Some(current.version.clone());
                    tracing::warn!(errors, version = %current.version, "extractor errors spiked after an update");
                    self.tell(Msg::YtdlpSpikeAfterUpdate {
                        errors,
                        version: current.version.clone(),
                        previous: prev.version,
                    })
                    .await;
                }
            }
            _ => {
                let errors = guard.extractor_errors_since(now.saturating_sub(HOUR_MS));
                let rested = self
                    .spike_update_at
                    .is_none_or(|t| now.saturating_sub(t) >= HOUR_MS);
                if errors >= SPIKE && rested {
                    self.spike_update_at = Some(now);
                    tracing::warn!(errors, version = %current.version, "extractor errors spiked on an old release: updating now");
                    self.tell(Msg::YtdlpSpikeUpdating {
                        errors,
                        version: current.version.clone(),
                    })
                    .await;
                    self.update(false).await;
                }
            }
        }
    }

    /// Install the newest release and switch to it. `asked`: an admin's
    /// `/update`, which always gets an answer.
    async fn update(&mut self, asked: bool) {
        let Some(layout) = self.ytdlp.layout().cloned() else {
            if asked {
                let path = self.ytdlp.current().bin.display().to_string();
                self.tell(Msg::YtdlpNotManaged { path }).await;
            }
            return;
        };
        let before = self.ytdlp.current().version.clone();
        let result = layout.update(&self.source).await;
        self.refresh_health().await;
        if result.is_ok() {
            self.told_failure = None;
        }
        let msg = match result {
            Ok(Outcome::Updated { from, to }) => {
                // A fresh release gets its own spike watch.
                self.spike_offered_for = None;
                Some(Msg::YtdlpUpdated { from, to })
            }
            Ok(Outcome::Installed { version }) => Some(Msg::YtdlpInstalled { version }),
            Ok(Outcome::UpToDate { version }) => asked.then_some(Msg::YtdlpUpToDate { version }),
            Ok(Outcome::Failed { .. } | Outcome::RolledBack { .. }) => None,
            Err(e) => {
                let error = e.to_string();
                tracing::warn!(%error, "yt-dlp update failed; nothing changed");
                let first = self.told_failure.as_ref() != Some(&error);
                self.told_failure = Some(error.clone());
                (asked || first).then_some(Msg::YtdlpUpdateFailed {
                    still: before,
                    error,
                })
            }
        };
        if let Some(m) = msg {
            self.tell(m).await;
        }
        // After the message: removing a venv takes seconds.
        let in_use = self.ytdlp.in_use();
        let _ = tokio::task::spawn_blocking(move || layout.prune(&in_use)).await;
    }

    async fn rollback(&mut self) {
        let Some(layout) = self.ytdlp.layout().cloned() else {
            let path = self.ytdlp.current().bin.display().to_string();
            self.tell(Msg::YtdlpNotManaged { path }).await;
            return;
        };
        let msg = match layout.rollback().await {
            Ok(s) => Msg::YtdlpRolledBack {
                from: s.from,
                to: s.to,
            },
            Err(ManagedError::NoPrevious) => Msg::YtdlpNoRollback,
            Err(e) => Msg::YtdlpUpdateFailed {
                still: self.ytdlp.current().version.clone(),
                error: e.to_string(),
            },
        };
        self.refresh_health().await;
        self.tell(msg).await;
    }

    /// The operator's yt-dlp: look up the newest release (once per interval,
    /// daily when updates are off) and alert once per release when far behind.
    async fn check_stale(&mut self, now: u64) {
        let every = match self.interval_ms() {
            0 => 24 * HOUR_MS,
            ms => ms,
        };
        if self
            .stale_checked_at
            .is_some_and(|t| now.saturating_sub(t) < every)
        {
            return;
        }
        self.stale_checked_at = Some(now);
        let newest = match self.source.newest().await {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(error = %e, "cannot look up the newest yt-dlp");
                return;
            }
        };
        let layout = Layout::new(&self.jobs.config.tools_dir());
        let mut state = layout.state();
        state.newest_known = Some((newest.clone(), now));
        if std::fs::create_dir_all(&layout.root).is_ok() {
            let _ = layout.save_state(&state);
        }
        self.refresh_health().await;
        let current = self.ytdlp.current();
        let version = self.health.ytdlp_version.read().unwrap().clone();
        let limit = self.jobs.config.downloader.stale_after_days as i64;
        if let Some(days) = source::days_behind(&version, &newest) {
            if days > limit && self.stale_told_for.as_ref() != Some(&newest) {
                self.stale_told_for = Some(newest.clone());
                self.tell(Msg::YtdlpStale {
                    path: current.bin.display().to_string(),
                    version,
                    newest,
                    days,
                })
                .await;
            }
        }
    }

    /// Put the install in use into `/health`.
    pub async fn refresh_health(&self) {
        let (version, detail) = describe(&self.ytdlp, &self.jobs.config).await;
        *self.health.ytdlp_version.write().unwrap() = version;
        *self.health.ytdlp_detail.write().unwrap() = detail;
    }
}

/// The version in use and the `/health` line about it: who manages it, when
/// it was installed, the last update attempt (managed), or the newest known
/// release (operator-managed).
pub async fn describe(ytdlp: &YtDlp, config: &Config) -> (String, String) {
    let current = ytdlp.current();
    let installed = current
        .installed_at
        .map(iso)
        .unwrap_or_else(|| "unknown".into());
    match ytdlp.layout() {
        Some(layout) => {
            let state = layout.state();
            let last = match &state.last_attempt {
                Some(a) => format!("{}: {}", iso(a.at), a.outcome.describe()),
                None => "none".into(),
            };
            let every = match config.downloader.update_interval_hours {
                0 => "off".to_string(),
                h => format!("every {h} h"),
            };
            let previous = layout
                .previous()
                .map(|p| format!(", previous {} kept for /update rollback", p.version))
                .unwrap_or_default();
            (
                current.version.clone(),
                format!(
                    "yt-dlp managed by tgdl: installed {installed}, updates {every}{previous}\nlast update attempt: {last}"
                ),
            )
        }
        None => {
            let version = download::ytdlp_version(&current.bin)
                .await
                .unwrap_or_else(|e| format!("unknown ({e})"));
            let state = Layout::new(&config.tools_dir()).state();
            let newest = match &state.newest_known {
                Some((v, at)) => {
                    let behind = source::days_behind(&version, v)
                        .filter(|d| *d > 0)
                        .map(|d| format!(", {d} days newer"))
                        .unwrap_or_default();
                    format!("{v} (seen {}{behind})", iso(*at))
                }
                None => "not looked up yet".into(),
            };
            (
                version,
                format!(
                    "yt-dlp managed by the operator ({}): installed {installed}, never changed by tgdl\nnewest known release: {newest}",
                    current.bin.display()
                ),
            )
        }
    }
}

/// `tgdl update [rollback]`: the same steps without the bot; the running bot
/// picks the switch up at its next job (it reads the same pointer).
pub async fn run_cli(config: &Config, rollback: bool) -> Result<String, String> {
    let setting = config.downloader.ytdlp.as_str();
    let managed = setting == "managed"
        || (setting == "auto" && download::install::find_on_path("yt-dlp").is_none());
    if !managed {
        let path = if setting == "auto" {
            download::install::find_on_path("yt-dlp")
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        } else {
            setting.to_string()
        };
        return Err(render(
            crate::i18n::Lang::En,
            &Msg::YtdlpNotManaged { path },
        ));
    }
    let layout = Layout::new(&config.tools_dir());
    let en = |m: Msg| render(crate::i18n::Lang::En, &m);
    if rollback {
        return match layout.rollback().await {
            Ok(s) => Ok(en(Msg::YtdlpRolledBack {
                from: s.from,
                to: s.to,
            })),
            Err(e) => Err(e.to_string()),
        };
    }
    let still = layout.current().map(|c| c.version).unwrap_or_default();
    let source = Source::from_setting(&config.downloader.ytdlp_source);
    let result = layout.update(&source).await;
    // No bot's jobs are known here: a folder older than `previous` that a
    // running bot still uses is removed anyway (rare: two updates during one
    // download); the bot's own updates never do that.
    layout.prune(&[]);
    match result {
        Ok(Outcome::Updated { from, to }) => Ok(en(Msg::YtdlpUpdated { from, to })),
        Ok(Outcome::Installed { version }) => Ok(en(Msg::YtdlpInstalled { version })),
        Ok(Outcome::UpToDate { version }) => Ok(en(Msg::YtdlpUpToDate { version })),
        Ok(other) => Ok(other.describe()),
        Err(e) => Err(en(Msg::YtdlpUpdateFailed {
            still,
            error: e.to_string(),
        })),
    }
}
