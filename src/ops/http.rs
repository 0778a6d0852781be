//! The optional HTTP listener (`health.metrics_listen`): `GET /metrics` in
//! the OpenMetrics text format (the `prometheus-client` crate's encoder),
//! `GET /healthz`.
//!
//! Counters are the pipeline's [`Metrics`] (since process start, as
//! Prometheus expects); gauges of jobs per state come from the store's
//! maintained counters, machine gauges from the health task's latest sample.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::health::HealthState;
use crate::job::JobState;
use crate::pipeline::JobService;

/// What the listener reads.
#[derive(Clone)]
pub struct Observed {
    pub jobs: Arc<JobService>,
    pub health: Arc<HealthState>,
}

/// Labels of `tgdl_jobs`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// A gauge whose value is read at scrape time.
fn gauge(registry: &mut Registry, name: &str, help: &str, v: f64) {
    let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    g.set(v);
    registry.register(name, help, g);
}

/// Every metric in the OpenMetrics text format (which Prometheus reads).
/// The pipeline's counters are registered as shared handles; gauges of jobs
/// per state come from the store's maintained counters and machine gauges
/// from the health task's latest sample, read now.
pub async fn render(o: &Observed) -> String {
    let mut r = Registry::default();
    if let Ok(c) = o.jobs.store.counts().await {
        let jobs = Family::<StateLabel, Gauge>::default();
        for s in JobState::ALL {
            jobs.get_or_create(&StateLabel { state: s.name() })
                .set(c.get(s) as i64);
        }
        r.register("tgdl_jobs", "Jobs per state.", jobs);
    }
    let m = &o.jobs.metrics;
    // The encoder adds `_total` to a counter's name.
    r.register(
        "tgdl_transitions",
        "State transitions made by this process.",
        m.transitions.clone(),
    );
    r.register(
        "tgdl_rescues",
        "Jobs rescued after a crash.",
        m.rescues.clone(),
    );
    r.register(
        "tgdl_retries",
        "Jobs requeued after a retryable error.",
        m.retries.clone(),
    );
    r.register(
        "tgdl_downloaded_bytes",
        "Bytes downloaded by yt-dlp.",
        m.downloaded_bytes.clone(),
    );
    r.register(
        "tgdl_uploaded_bytes",
        "Bytes uploaded to Telegram.",
        m.uploaded_bytes.clone(),
    );
    r.register(
        "tgdl_stage_duration_seconds",
        "Time a job spent in a stage.",
        m.stages.clone(),
    );
    if let Some((s, conditions)) = o.health.latest() {
        let sys = &s.system;
        let gauges = [
            (
                "tgdl_disk_free_bytes",
                "Free bytes on the downloads volume.",
                sys.disk_free_bytes as f64,
            ),
            (
                "tgdl_disk_free_percent",
                "Free space on the downloads volume, percent.",
                sys.disk_free_percent(),
            ),
            (
                "tgdl_memory_used_percent",
                "Machine memory in use, percent.",
                sys.memory_percent,
            ),
            (
                "tgdl_cpu_used_percent",
                "Machine CPU in use, percent.",
                sys.cpu_percent,
            ),
            (
                "tgdl_process_resident_bytes",
                "Resident memory of the bot.",
                sys.process_rss_bytes as f64,
            ),
            (
                "tgdl_downloads_dir_bytes",
                "Size of the downloads folder.",
                s.downloads_dir_bytes as f64,
            ),
            (
                "tgdl_db_bytes",
                "Size of the database on disk.",
                s.db_bytes as f64,
            ),
            (
                "tgdl_health_conditions",
                "Active health conditions.",
                conditions.len() as f64,
            ),
        ];
        for (name, help, v) in gauges {
            gauge(&mut r, name, help, v);
        }
    }
    gauge(
        &mut r,
        "tgdl_downloads_paused",
        "1 while the disk guard holds new downloads.",
        f64::from(u8::from(o.jobs.guard.is_paused())),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

async fn metrics(State(o): State<Observed>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&o).await,
    )
}

async fn healthz(State(o): State<Observed>) -> impl IntoResponse {
    match o.jobs.store.probe_write().await {
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
