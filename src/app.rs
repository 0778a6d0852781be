//! Wiring: open the store, start the tasks, wait for shutdown.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::store::SledStore;

/// Run the bot until `shutdown` resolves. Tests pass their own trigger.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(config.downloads_dir())
        .with_context(|| format!("cannot create {}", config.downloads_dir().display()))?;
    let store = Arc::new(SledStore::open(&config.db_dir())?);
    tracing::info!(db = %store.path().display(), "store open");
    shutdown.await;
    tracing::info!("shutting down");
    store.flush()?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Entry point of `tgdl run`: logging, runtime, signals.
pub fn run_blocking(config: Config) -> anyhow::Result<()> {
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(config, shutdown_signal()))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TGDL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sled=warn,reqwest=warn,hyper=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
