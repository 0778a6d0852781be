//! Prometheus metrics and the optional HTTP listener (`health.metrics_listen`):
//! `GET /metrics` in the text exposition format, `GET /healthz`.
//!
//! Counters live in memory (since process start, as Prometheus expects);
//! gauges of jobs per state come from the store's maintained counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::job::JobState;
use crate::store;

/// Upper bounds (seconds) of the stage-duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Process-lifetime counters, updated by workers and recovery.
#[derive(Default)]
pub struct Metrics {
    transitions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    rescues: AtomicU64,
    retries: AtomicU64,
    downloaded_bytes: AtomicU64,
    uploaded_bytes: AtomicU64,
    stages: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl Metrics {
    pub fn transition(&self, from: JobState, to: JobState) {
        *self
            .transitions
            .lock()
            .unwrap()
            .entry((from.name(), to.name()))
            .or_default() += 1;
    }

    pub fn rescues(&self, n: u64) {
        self.rescues.fetch_add(n, Ordering::Relaxed);
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn downloaded(&self, bytes: u64) {
        self.downloaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn uploaded(&self, bytes: u64) {
        self.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// How long a job spent in `stage`.
    pub fn stage_duration(&self, stage: JobState, secs: f64) {
        let mut stages = self.stages.lock().unwrap();
        let h = stages.entry(stage.name()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Record what a change from `old` to `new` means: a transition, the time
    /// spent in the stage it left, a retry, bytes moved.
    pub fn record(&self, old: &crate::job::Job, new: &crate::job::Job) {
        if old.state == new.state {
            return;
        }
        self.transition(old.state, new.state);
        if let Some((_, entered)) = old.history.last() {
            self.stage_duration(
                old.state,
                new.updated_at.saturating_sub(*entered) as f64 / 1000.0,
            );
        }
        if new.state == JobState::Queued && new.attempts > old.attempts {
            self.retry();
        }
        if new.rescues > old.rescues {
            self.rescues(u64::from(new.rescues - old.rescues));
        }
        let size = new.file_size.unwrap_or(0);
        match (old.state, new.state) {
            (JobState::Downloading, JobState::Uploading) if new.file_path.is_some() => {
                self.downloaded(size)
            }
            (JobState::Uploading, JobState::Cleaning)
                if new.delivery.is_some() && old.file_path.is_some() =>
            {
                self.uploaded(size)
            }
            _ => {}
        }
    }

    pub fn transitions_total(&self) -> u64 {
        self.transitions.lock().unwrap().values().sum()
    }
}

/// Render every metric in the Prometheus text format.
pub async fn render(core: &Core) -> String {
    let mut out = String::new();
    let m = &core.metrics;
    let counts = store::blocking(&core.store, |s| s.counts()).await.ok();
    if let Some(c) = counts {
        out.push_str("# HELP tgdl_jobs Jobs per state.\n# TYPE tgdl_jobs gauge\n");
        for s in JobState::ALL {
            let _ = writeln!(out, "tgdl_jobs{{state=\"{}\"}} {}", s.name(), c.get(s));
        }
    }
    out.push_str("# HELP tgdl_transitions_total State transitions made by this process.\n# TYPE tgdl_transitions_total counter\n");
    for ((from, to), n) in m.transitions.lock().unwrap().iter() {
        let _ = writeln!(
            out,
            "tgdl_transitions_total{{from=\"{from}\",to=\"{to}\"}} {n}"
        );
    }
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        &mut out,
        "tgdl_rescues_total",
        "Jobs rescued after a crash.",
        m.rescues.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tgdl_retries_total",
        "Jobs requeued after a retryable error.",
        m.retries.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tgdl_downloaded_bytes_total",
        "Bytes downloaded by yt-dlp.",
        m.downloaded_bytes.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tgdl_uploaded_bytes_total",
        "Bytes uploaded to Telegram.",
        m.uploaded_bytes.load(Ordering::Relaxed),
    );
    out.push_str("# HELP tgdl_stage_duration_seconds Time a job spent in a stage.\n# TYPE tgdl_stage_duration_seconds histogram\n");
    for (stage, h) in m.stages.lock().unwrap().iter() {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tgdl_stage_duration_seconds_bucket{{stage=\"{stage}\",le=\"{b}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "tgdl_stage_duration_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "tgdl_stage_duration_seconds_sum{{stage=\"{stage}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "tgdl_stage_duration_seconds_count{{stage=\"{stage}\"}} {}",
            h.count
        );
    }
    if let Some((s, conditions)) = core.health.latest() {
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "tgdl_disk_free_bytes",
            "Free bytes on the downloads volume.",
            s.system.disk_free_bytes as f64,
        );
        gauge(
            &mut out,
            "tgdl_disk_free_percent",
            "Free space on the downloads volume, percent.",
            s.system.disk_free_percent(),
        );
        gauge(
            &mut out,
            "tgdl_memory_used_percent",
            "Machine memory in use, percent.",
            s.system.memory_percent,
        );
        gauge(
            &mut out,
            "tgdl_cpu_used_percent",
            "Machine CPU in use, percent.",
            s.system.cpu_percent,
        );
        gauge(
            &mut out,
            "tgdl_process_resident_bytes",
            "Resident memory of the bot.",
            s.system.process_rss_bytes as f64,
        );
        gauge(
            &mut out,
            "tgdl_downloads_dir_bytes",
            "Size of the downloads folder.",
            s.downloads_dir_bytes as f64,
        );
        gauge(
            &mut out,
            "tgdl_db_bytes",
            "Size of the database on disk.",
            s.db_bytes as f64,
        );
        gauge(
            &mut out,
            "tgdl_health_conditions",
            "Active health conditions.",
            conditions.len() as f64,
        );
    }
    let _ = writeln!(
        out,
        "# HELP tgdl_downloads_paused 1 while the disk guard holds new downloads.\n# TYPE tgdl_downloads_paused gauge\ntgdl_downloads_paused {}",
        core.health.is_paused() as u8
    );
    out
}

async fn metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        render(&core).await,
    )
}

async fn healthz(State(core): State<Arc<Core>>) -> impl IntoResponse {
    match store::blocking(&core.store, |s| s.probe_write()).await {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store cannot write: {e}\n"),
        ),
    }
}

/// Serve `/metrics` and `/healthz` on `addr` until `stop`.
pub async fn serve(
    addr: SocketAddr,
    core: Arc<Core>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics listener");
    serve_on(listener, core, stop).await
}

pub async fn serve_on(
    listener: tokio::net::TcpListener,
    core: Arc<Core>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(core);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
