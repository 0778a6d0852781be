//! The optional HTTP listener (`health.metrics_listen`): `GET /metrics` in
//! Prometheus' text exposition format, `GET /healthz`.
//!
//! Counters are the pipeline's [`Metrics`] (since process start, as
//! Prometheus expects); gauges of jobs per state come from the store's
//! maintained counters, machine gauges from the health task's latest sample.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::health::HealthState;
use crate::job::JobState;
use crate::pipeline::metrics::{Metrics, BUCKETS};
use crate::pipeline::JobService;

/// What the listener reads.
#[derive(Clone)]
pub struct Observed {
    pub jobs: Arc<JobService>,
    pub health: Arc<HealthState>,
}

/// The pipeline's counters without labels: name and help, in the order
/// `render` reads their values.
const COUNTERS: [(&str, &str); 4] = [
    ("tgdl_rescues_total", "Jobs rescued after a crash."),
    (
        "tgdl_retries_total",
        "Jobs requeued after a retryable error.",
    ),
    ("tgdl_downloaded_bytes_total", "Bytes downloaded by yt-dlp."),
    ("tgdl_uploaded_bytes_total", "Bytes uploaded to Telegram."),
];

/// The health sample's gauges, likewise.
const GAUGES: [(&str, &str); 8] = [
    (
        "tgdl_disk_free_bytes",
        "Free bytes on the downloads volume.",
    ),
    (
        "tgdl_disk_free_percent",
        "Free space on the downloads volume, percent.",
    ),
    (
        "tgdl_memory_used_percent",
        "Machine memory in use, percent.",
    ),
    ("tgdl_cpu_used_percent", "Machine CPU in use, percent."),
    ("tgdl_process_resident_bytes", "Resident memory of the bot."),
    ("tgdl_downloads_dir_bytes", "Size of the downloads folder."),
    ("tgdl_db_bytes", "Size of the database on disk."),
    ("tgdl_health_conditions", "Active health conditions."),
];

/// Render every metric in the Prometheus text format.
pub async fn render(o: &Observed) -> String {
    let mut out = String::new();
    let m: &Metrics = &o.jobs.metrics;
    let counts = o.jobs.call(|s| s.counts()).await.ok();
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
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    let counters = [
        load(&m.rescues),
        load(&m.retries),
        load(&m.downloaded_bytes),
        load(&m.uploaded_bytes),
    ];
    for ((name, help), v) in COUNTERS.iter().zip(counters) {
        metric(&mut out, name, help, "counter", v);
    }
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
    if let Some((s, conditions)) = o.health.latest() {
        let sys = &s.system;
        let gauges = [
            sys.disk_free_bytes as f64,
            sys.disk_free_percent(),
            sys.memory_percent,
            sys.cpu_percent,
            sys.process_rss_bytes as f64,
            s.downloads_dir_bytes as f64,
            s.db_bytes as f64,
            conditions.len() as f64,
        ];
        for ((name, help), v) in GAUGES.iter().zip(gauges) {
            metric(&mut out, name, help, "gauge", v);
        }
    }
    let _ = writeln!(
        out,
        "# HELP tgdl_downloads_paused 1 while the disk guard holds new downloads.\n# TYPE tgdl_downloads_paused gauge\ntgdl_downloads_paused {}",
        o.jobs.guard.is_paused() as u8
    );
    out
}

/// One metric without labels, with its help and type lines.
fn metric(out: &mut String, name: &str, help: &str, kind: &str, v: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

async fn metrics(State(o): State<Observed>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        render(&o).await,
    )
}

async fn healthz(State(o): State<Observed>) -> impl IntoResponse {
    match o.jobs.call(|s| s.probe_write()).await {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store cannot write: {e}\n"),
        ),
    }
}

/// Serve `/metrics` and `/healthz` on `listener` until `stop`.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    observed: Observed,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(observed);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
