//! Wiring: open the store, recover, start the bot and the workers, and stop
//! them all in order when the shutdown future resolves.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::botapi::pacer::PacerConfig;
use crate::botapi::{self, notify_admins, Api};
use crate::config::Config;
use crate::config::StorageBackend;
use crate::download::install;
use crate::download::media::MediaTools;
use crate::download::source::Source;
use crate::net::egress::{EgressProxy, ProxyLimits};
use crate::ops::admin;
use crate::ops::health::{HealthState, Monitor, SysinfoProbe};
use crate::ops::http::{self, Observed};
use crate::ops::systemd;
use crate::ops::update;
use crate::pipeline::{quality, recovery, spawn_workers, JobService, Pipeline};
use crate::store::{Backend, OnBlockingPool, PgStore, SledStore, StoreError, StoreEvent};
use crate::telegram::{self, commands, Deps};

/// How long an upload in flight may continue after shutdown begins.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(3);

/// Run the bot until `shutdown` resolves. Tests pass their own trigger.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let downloads = config.downloads_dir();
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    tokio::pin!(shutdown);
    let store = tokio::select! {
        s = open_backend(&config) => s?,
        _ = &mut shutdown => {
            tracing::info!("shutdown requested before the store was reached");
            return Ok(());
        }
    };
    let (probe_tx, probe_rx) = quality::queue();
    let jobs = Arc::new(JobService::new(config.clone(), store, Some(probe_tx))?);
    tracing::info!(
        backend = ?config.storage.backend,
        node = %config.node_name(),
        owner = %jobs.owner,
        "store open"
    );

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let serving = serve(jobs.clone(), probe_rx, stop.clone(), &tracker);
    tokio::pin!(serving);
    let result = tokio::select! {
        r = &mut serving => r,
        _ = &mut shutdown => {
            tracing::info!("shutdown requested");
            systemd::stopping();
            // Stop taking updates and jobs; let `serve` wind down in order.
            stop.cancel();
            serving.await
        }
    };

    // Whatever happened, stop everything and make the store durable.
    if !stop.is_cancelled() {
        systemd::stopping();
    }
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(4), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop in time");
    }
    jobs.store.flush().await?;
    tracing::info!("stopped");
    result
}

async fn serve(
    jobs: Arc<JobService>,
    probe_rx: tokio::sync::mpsc::Receiver<crate::job::JobId>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let config = jobs.config.clone();
    let health = Arc::new(HealthState::default());
    let source = Source::from_setting(&config.downloader.ytdlp_source);
    let ytdlp = install::resolve(&config.downloader.ytdlp, &config.tools_dir(), &source).await?;
    let tools = MediaTools::resolve(&config.downloader.ffmpeg);
    let missing = tools.missing();
    tracing::info!(
        ytdlp = %ytdlp.current().bin.display(),
        managed = ytdlp.layout().is_some(),
        ?tools,
        "downloader ready"
    );
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "media tools missing: uploads carry only what yt-dlp reports"
        );
    }
    // yt-dlp's version is asked by the updater task below (it also follows
    // every switch), not here.
    health.set_tools(&tools);
    // Under systemd: the watchdog from now on (waiting for the Bot API and
    // recovery can take long), READY=1 once recovery has run.
    let serving = Arc::new(AtomicBool::new(false));
    systemd::spawn_watchdog(jobs.clone(), serving.clone(), tracker, stop.clone());
    if let Some(addr) = config.health.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("health.metrics_listen: cannot listen on {addr}"))?;
        tracing::info!(%addr, "metrics listener");
        let observed = Observed {
            jobs: jobs.clone(),
            health: health.clone(),
        };
        tracker.spawn(http::serve_on(listener, observed, stop.clone()));
    }
    // The shell's way in while we hold the database (`tgdl jobs`, `cancel`...).
    let admin = Arc::new(admin::server::Served {
        jobs: jobs.clone(),
        health: admin::HealthSource::Live(health.clone()),
        ready: AtomicBool::new(false),
    });
    admin::server::start(admin.clone(), &admin::socket_path(&config), &stop, tracker);

    let bot = botapi::build_bot(&config)?;
    let api = Api::new(
        bot.clone(),
        PacerConfig::from_config(&config.telegram),
        stop.clone(),
        tracker.clone(),
    );
    systemd::status("waiting for the Bot API");
    let Some(me) = botapi::wait_for_api(&api, &stop).await? else {
        return Ok(());
    };
    tracing::info!(username = ?me.username, "connected to the Bot API");
    commands::set_commands(&api).await;

    // Every request yt-dlp makes goes through the egress filter, unless the
    // operator allows every destination anyway.
    let egress = if config.security.allow_private_networks {
        None
    } else {
        let d = &jobs.destinations;
        let proxy = EgressProxy::start(
            d.policy.clone(),
            d.resolver.clone(),
            ProxyLimits::default(),
            &stop,
        )
        .await?;
        tracing::info!(addr = %proxy.local_addr(), "egress filter");
        Some(Arc::new(proxy))
    };
    let pipeline = Arc::new(Pipeline {
        jobs: jobs.clone(),
        api: api.clone(),
        ytdlp,
        tools,
        shutdown: stop.clone(),
        upload_grace: UPLOAD_GRACE,
        egress: egress.clone(),
    });

    // Recovery runs before any new work is taken.
    systemd::status("recovering");
    let report = recovery::recover(&jobs, false).await?;
    admin.ready.store(true, Ordering::Release);
    jobs.metrics
        .rescues((report.requeued.len() + report.resumed.len() + report.failed.len()) as u64);
    if !report.is_empty() {
        notify_admins(&api, &config, &report.summary()).await;
    }
    match recovery::adopt_boards(&jobs, &api.boards).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(boards = n, "shared status messages taken back"),
        Err(e) => tracing::warn!(error = %e, "cannot read the shared status messages"),
    }
    for job in report.resumed {
        let p = pipeline.clone();
        tracker.spawn(async move {
            if let Err(e) = p.run_job(job).await {
                tracing::error!(error = %e, "resumed upload failed");
            }
        });
    }

    // The updater also asks yt-dlp its version (a Python start-up, 0.3-0.5
    // s), beside the start rather than before serving.
    let (updater, update_task) = update::spawn_parts(
        jobs.clone(),
        Some(api.clone()),
        pipeline.ytdlp.clone(),
        health.clone(),
    );
    if pipeline.ytdlp.layout().is_some() {
        // Cheap for the managed install (its folder says its version), and
        // /health is right from the first answer.
        update_task.refresh_health().await;
    }
    tracker.spawn(update_task.run(stop.clone()));
    let monitor = Monitor::new(
        jobs.clone(),
        health.clone(),
        Some(api.clone()),
        Box::new(SysinfoProbe::new(&config.downloads_dir())),
    );
    tracker.spawn(monitor.run(stop.clone()));
    quality::spawn(
        jobs.clone(),
        api.clone(),
        pipeline.ytdlp.clone(),
        egress,
        probe_rx,
        tracker,
        stop.clone(),
    );
    spawn_rescuer(jobs.clone(), tracker, stop.clone());
    spawn_event_listener(jobs.clone(), tracker, stop.clone());
    spawn_workers(pipeline, tracker);
    let deps = Arc::new(Deps {
        api,
        jobs,
        health,
        updater,
        username: me.username.clone().unwrap_or_default(),
    });
    let counts = deps.jobs.store.counts().await.ok();
    serving.store(true, std::sync::atomic::Ordering::Relaxed);
    systemd::ready(counts.as_ref());
    poll_while_leading(deps, tracker, &stop).await;
    stop.cancelled().await;
    Ok(())
}

/// Poll Telegram while this process holds the poller lease (at once on sled;
/// on PostgreSQL, while no other node does), and wait for it again if it is
/// lost. Workers run either way.
async fn poll_while_leading(deps: Arc<Deps>, tracker: &TaskTracker, stop: &CancellationToken) {
    loop {
        let lease = tokio::select! {
            l = deps.jobs.store.poller_lease() => l,
            _ = stop.cancelled() => return,
        };
        let lease = match lease {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask for the poller lease; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        if !deps.jobs.store.is_exclusive() {
            tracing::info!(node = %deps.jobs.config.node_name(), "this node polls Telegram");
        }
        deps.health.polling.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = telegram::intake::run(deps.clone(), tracker.clone(), stop.clone()) => return,
            // Another node may poll now: stop (an update stored but not yet
            // confirmed is handled again there, and the dedupe of requests
            // makes that harmless).
            _ = lease.lost() => tracing::warn!("lost the poller lease; polling stops"),
        }
        deps.health.polling.store(false, Ordering::Relaxed);
    }
}

/// The configured backend. A PostgreSQL server may not be up yet when a
/// node starts (a machine booting, a database failing over): it is retried
/// with backoff and each failure reported, as the Bot API is. A database of
/// a newer schema is final.
pub async fn open_backend(config: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    match config.storage.backend {
        StorageBackend::Sled => Ok(OnBlockingPool::shared(Arc::new(SledStore::open(
            &config.db_dir(),
        )?))),
        StorageBackend::Postgres => {
            let mut wait = Duration::from_secs(1);
            loop {
                match PgStore::connect(&config.storage.postgres_url).await {
                    Ok(s) => return Ok(Arc::new(s)),
                    Err(e @ StoreError::NewerSchema { .. }) => return Err(e.into()),
                    Err(e) => {
                        tracing::error!(error = %e, retry_in = ?wait, "cannot reach PostgreSQL; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    }
}

/// On a shared store, every node requeues the jobs of nodes whose lease
/// lapsed (a node that died mid-job), every half lease.
fn spawn_rescuer(jobs: Arc<JobService>, tracker: &TaskTracker, stop: CancellationToken) {
    if jobs.store.is_exclusive() {
        return;
    }
    let every =
        Duration::from_millis(jobs.config.downloader.lease_secs * 500).max(Duration::from_secs(1));
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match recovery::rescue_lapsed(&jobs).await {
                Ok(r) if r.is_empty() => {}
                Ok(r) => {
                    jobs.metrics
                        .rescues((r.requeued.len() + r.failed.len()) as u64);
                    tracing::warn!("lapsed leases: {}", r.summary());
                    jobs.wake_workers();
                }
                Err(e) => tracing::warn!(error = %e, "rescue of lapsed leases failed"),
            }
        }
    });
}

/// On a shared store: act on what other nodes announce (a queued job wakes
/// idle workers here; a cancel reaches the job's worker if it runs here).
/// Subscribes again when the listening session ends; workers poll anyway.
fn spawn_event_listener(jobs: Arc<JobService>, tracker: &TaskTracker, stop: CancellationToken) {
    if jobs.store.is_exclusive() {
        return;
    }
    tracker.spawn(async move {
        loop {
            let events = tokio::select! {
                e = jobs.store.events() => e,
                _ = stop.cancelled() => return,
            };
            match events {
                Ok(Some(mut rx)) => loop {
                    let event = tokio::select! {
                        e = rx.recv() => e,
                        _ = stop.cancelled() => return,
                    };
                    match event {
                        Some(StoreEvent::JobReady) => jobs.wake_workers(),
                        Some(StoreEvent::CancelAnnounced(id)) => {
                            if jobs.cancel_running(id) {
                                tracing::info!(job = %id, "cancel announced by another node");
                            }
                        }
                        None => break,
                    }
                },
                Ok(None) => return,
                Err(e) => tracing::warn!(error = %e, "cannot listen for other nodes' events"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Entry point of `tgdl run`: logging, runtime, signals.
pub fn run_blocking(config: Config, log_format: LogFormat) -> anyhow::Result<()> {
    init_logging_as(log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Store calls run on the blocking pool; a burst of links must queue
        // there rather than start hundreds of threads (tokio's default cap
        // is 512) that each wait for the same fsync.
        .max_blocking_threads(16)
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(config, shutdown_signal()))
}

/// How log lines are written (`TGDL_LOG_FORMAT`): text for a terminal or
/// the journal, JSON lines (with the fields of the span, e.g. a job's
/// `job_id` and `user_id`) for a log collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The environment variable that chooses the [`LogFormat`].
pub const LOG_FORMAT_ENV: &str = "TGDL_LOG_FORMAT";

impl LogFormat {
    /// `TGDL_LOG_FORMAT`: unset, `text` or `json`; anything else is an error
    /// that names the variable.
    pub fn from_env() -> Result<LogFormat, String> {
        match std::env::var(LOG_FORMAT_ENV).as_deref() {
            Err(_) | Ok("") | Ok("text") => Ok(LogFormat::Text),
            Ok("json") => Ok(LogFormat::Json),
            Ok(other) => Err(format!(
                "{LOG_FORMAT_ENV}: '{}' is not a log format (text or json)",
                crate::i18n::printable(other)
            )),
        }
    }
}

pub fn init_logging() {
    init_logging_as(LogFormat::Text)
}

fn init_logging_as(format: LogFormat) {
    // sled's own messages duplicate the one line we print for a store that
    // cannot be opened; TGDL_LOG can bring them back.
    let filter = tracing_subscriber::EnvFilter::try_from_env("TGDL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sled=off,reqwest=warn,hyper=warn")
    });
    let text = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => text
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => text
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
