//! The health task: every `interval_secs` take a [`Sample`], evaluate it,
//! alert admins, drive the disk guard, and run retention pruning.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::alerts::{Alert, Alerter};
use super::rules::{Condition, ConditionKind, Rules};
use super::sample::{Probe, Sample, SharedProbe};
use crate::botapi::pacer::Priority;
use crate::botapi::{notify_admins, Api};
use crate::i18n::{render, Lang, Msg};
use crate::job::{now_ms, JobState, HOUR_MS};
use crate::pipeline::cleanup::tree_size;
use crate::pipeline::JobService;
use crate::store::{NodeBeat, StoreError};

/// What the health task learned, shared with `/health`, `tgdl health` and
/// the metrics endpoint. (The disk guard itself is the pipeline's
/// [`crate::pipeline::guard::Guard`].)
pub struct HealthState {
    pub started: Instant,
    latest: RwLock<Option<(Sample, Vec<Condition>)>>,
    pub ytdlp_version: RwLock<String>,
    /// Who manages yt-dlp, when it was installed, the last update attempt
    /// (written by the updater, [`crate::ops::update`]).
    pub ytdlp_detail: RwLock<String>,
    pub ffmpeg: AtomicBool,
    pub ffprobe: AtomicBool,
    /// Whether this process polls Telegram now (on a shared store, one
    /// node does; its heartbeat says so).
    pub polling: AtomicBool,
    /// The probe of samples the monitor does not take (see [`SharedProbe`]).
    pub fresh_probe: SharedProbe,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            started: Instant::now(),
            latest: RwLock::new(None),
            ytdlp_version: RwLock::new(String::from("unknown")),
            ytdlp_detail: RwLock::new(String::new()),
            ffmpeg: AtomicBool::new(false),
            ffprobe: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            fresh_probe: SharedProbe::default(),
        }
    }
}

impl HealthState {
    /// Records which of ffmpeg and ffprobe the bot found.
    pub fn set_tools(&self, tools: &crate::download::media::MediaTools) {
        self.ffmpeg.store(tools.ffmpeg.is_some(), Ordering::Relaxed);
        self.ffprobe
            .store(tools.ffprobe.is_some(), Ordering::Relaxed);
    }

    pub fn latest(&self) -> Option<(Sample, Vec<Condition>)> {
        self.latest.read().unwrap().clone()
    }
}

pub struct Monitor {
    jobs: Arc<JobService>,
    state: Arc<HealthState>,
    api: Option<Api>,
    probe: Box<dyn Probe>,
    rules: Rules,
    alerter: Alerter,
}

/// What one tick did, for tests.
#[derive(Debug)]
pub struct Tick {
    pub sample: Sample,
    pub conditions: Vec<Condition>,
    pub alerts: Vec<Alert>,
    pub paused: bool,
}

impl Monitor {
    pub fn new(
        jobs: Arc<JobService>,
        state: Arc<HealthState>,
        api: Option<Api>,
        probe: Box<dyn Probe>,
    ) -> Self {
        let h = jobs.config.health.clone();
        Monitor {
            alerter: Alerter::new(Duration::from_secs(h.alert_cooldown_secs)),
            rules: Rules::new(h),
            jobs,
            state,
            api,
            probe,
        }
    }

    /// Sample the machine and the queue (no side effects).
    ///
    /// The store's reads are independent of each other, and of the walk of
    /// the downloads folder: they run at once (the folder walk and sled's
    /// reads each on the blocking pool, PostgreSQL's on their own pooled
    /// connections), so a sample takes about as long as its slowest read
    /// rather than their sum (issue 16).
    pub async fn sample(&mut self) -> Result<Sample, StoreError> {
        let core = &self.jobs;
        let downloads = core.config.downloads_dir();
        let folder = tokio::task::spawn_blocking(move || tree_size(&downloads));
        let system = self.probe.system();
        let now = now_ms();
        let cfg = core.config.clone();
        let s = &core.store;
        let (counts, oldest, in_flight, (done, failed), db_bytes, nodes) = tokio::try_join!(
            s.counts(),
            s.list_state(JobState::Queued, 1),
            s.in_flight_since(),
            s.finished_since(now.saturating_sub(HOUR_MS)),
            async { Ok(s.size_on_disk().await) },
            s.nodes(),
        )?;
        let oldest = oldest.into_iter().next();
        let downloads_dir_bytes = folder.await.unwrap_or(0);
        let stuck = in_flight
            .iter()
            .filter_map(|j| {
                let secs = now.saturating_sub(j.since) / 1000;
                let limit = match j.state {
                    JobState::Downloading => cfg.downloader.timeout_secs + 60,
                    JobState::Uploading => cfg.telegram.request_timeout_secs * 2 + 60,
                    _ => 300,
                };
                (secs > limit).then(|| (j.id.short(), j.state.name().to_string(), secs))
            })
            .collect();
        let h = &self.state;
        Ok(Sample {
            nodes,
            at_ms: now,
            system,
            downloads_dir_bytes,
            db_bytes,
            counts,
            oldest_queued_age_secs: oldest.map(|j| now.saturating_sub(j.created_at) / 1000),
            stuck,
            done_last_hour: done,
            failed_last_hour: failed,
            extractor_errors_last_hour: core
                .guard
                .extractor_errors_since(now.saturating_sub(HOUR_MS)),
            ytdlp_version: h.ytdlp_version.read().unwrap().clone(),
            ytdlp_detail: h.ytdlp_detail.read().unwrap().clone(),
            ffmpeg: h.ffmpeg.load(Ordering::Relaxed),
            ffprobe: h.ffprobe.load(Ordering::Relaxed),
            uptime_secs: h.started.elapsed().as_secs(),
        })
    }

    /// One full round: sample, evaluate, alert, guard the disk, prune.
    pub async fn tick(&mut self) -> Result<Tick, StoreError> {
        let sample = self.sample().await?;
        let conditions = self.rules.evaluate(&sample);
        let alerts = self.alerter.update(&conditions, Instant::now());
        let low_disk = conditions.iter().any(|c| c.kind == ConditionKind::DiskLow);
        let was = self.jobs.guard.is_paused();
        // After ENOSPC, claims wait until one more download fits.
        // (A disk whose size cannot be read gives no reason to hold.)
        let disk = &sample.system;
        let room = disk.disk_total_bytes == 0
            || disk.disk_free_bytes >= self.jobs.config.max_download_bytes();
        let paused = self.jobs.guard.settle(low_disk, room);
        if low_disk && !was {
            tracing::warn!("free disk below the critical threshold: new downloads paused");
            self.tell_waiting_users().await;
        } else if was && !paused {
            tracing::info!("disk space is back: downloads resume");
            self.jobs.wake_workers();
        }
        let mut sample = sample;
        self.beat(&mut sample).await;
        if let Some(api) = &self.api {
            for a in &alerts {
                if let Some(text) = self.cluster_alert(a).await {
                    notify_admins(api, &self.jobs.config, &text).await;
                }
            }
        }
        *self.state.latest.write().unwrap() = Some((sample.clone(), conditions.clone()));
        let days = self.jobs.config.storage.retention_days;
        if days > 0 {
            let cutoff = now_ms().saturating_sub(days * 24 * HOUR_MS);
            match self.jobs.store.prune_finished(cutoff, 500).await {
                Ok(n) if n > 0 => tracing::info!(pruned = n, "retention: old jobs pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention pruning failed"),
            }
        }
        Ok(Tick {
            paused,
            sample,
            conditions,
            alerts,
        })
    }

    /// On a shared store: this node's heartbeat, and the sample's list of
    /// nodes brought up to date with it.
    async fn beat(&self, sample: &mut Sample) {
        let jobs = &self.jobs;
        if jobs.store.is_exclusive() {
            return;
        }
        let beat = NodeBeat {
            name: jobs.config.node_name(),
            owner: jobs.owner,
            at: sample.at_ms,
            in_flight: jobs.running_count(),
            disk_free_bytes: sample.system.disk_free_bytes,
            polling: self.state.polling.load(Ordering::Relaxed),
        };
        if let Err(e) = jobs.store.heartbeat(beat.clone()).await {
            tracing::warn!(error = %e, "cannot record this node's heartbeat");
            return;
        }
        sample.nodes.retain(|n| n.name != beat.name);
        sample.nodes.push(beat);
        sample.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The text of an alert, if this node is the one to send it: on a
    /// shared store one node per cooldown for the whole cluster. A condition
    /// of this machine (its disk, memory, CPU, folder, yt-dlp) is its own
    /// alert, named with the node; the queue's are the cluster's.
    async fn cluster_alert(&self, alert: &Alert) -> Option<String> {
        let jobs = &self.jobs;
        if jobs.store.is_exclusive() {
            return Some(alert.text());
        }
        let (kind, phase) = match alert {
            Alert::Started(c) => (c.kind, "started"),
            Alert::Resolved(k) => (*k, "resolved"),
        };
        let node = jobs.config.node_name();
        let (key, text) = if kind.is_per_node() {
            (
                format!("{node}:{}:{phase}", kind.code()),
                format!("[{node}] {}", alert.text()),
            )
        } else {
            (format!("{}:{phase}", kind.code()), alert.text())
        };
        let cooldown_ms = jobs.config.health.alert_cooldown_secs * 1000;
        match jobs.store.claim_alert(&key, now_ms(), cooldown_ms).await {
            Ok(true) => Some(text),
            Ok(false) => None,
            // Better twice than never.
            Err(e) => {
                tracing::warn!(error = %e, "cannot share the alert's cooldown; sending it");
                Some(text)
            }
        }
    }

    /// Tell users whose jobs wait why they wait (the first 100 in line).
    async fn tell_waiting_users(&self) {
        let Some(api) = &self.api else { return };
        let Ok(waiting) = self.jobs.store.list_state(JobState::Queued, 100).await else {
            return;
        };
        for job in waiting {
            let Some(msg) = job.status_msg_id else {
                continue;
            };
            let lang = Lang::pick(Some(&job.lang), self.jobs.default_lang());
            let text = render(
                lang,
                &Msg::WaitingForDisk {
                    short_id: job.id.short(),
                },
            );
            let _ = api
                .edit(job.chat_id, msg, &text, None, Priority::Progress)
                .await;
        }
    }

    /// Tick every `interval_secs` until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut every =
            tokio::time::interval(Duration::from_secs(self.jobs.config.health.interval_secs));
        loop {
            tokio::select! {
                _ = every.tick() => {
                    if let Err(e) = self.tick().await {
                        tracing::warn!(error = %e, "health sample failed");
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    }
}
