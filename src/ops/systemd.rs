//! Talking to systemd (`Type=notify`, `contrib/tgdl.service`): `READY=1`
//! once recovery has run and the bot serves, `STOPPING=1` on shutdown,
//! `STATUS=` with the queue, and `WATCHDOG=1` only while the runtime and the
//! store answer, so a hung bot is restarted. Without `NOTIFY_SOCKET` (not
//! under systemd) every call here does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pipeline::JobService;
use crate::store::StateCounts;

/// How often the status line is refreshed when systemd asks for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Whether a service manager listens (systemd sets `NOTIFY_SOCKET`).
fn managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        // systemd restarts a bot whose watchdog stops; say why here.
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// A status line for `systemctl status`.
pub fn status(text: &str) {
    if managed() {
        send(&[NotifyState::Status(text)]);
    }
}

/// Recovery has run and the bot takes updates and jobs.
pub fn ready(counts: Option<&StateCounts>) {
    if managed() {
        let line = counts.map_or_else(|| "serving".to_string(), queue_line);
        send(&[NotifyState::Ready, NotifyState::Status(&line)]);
    }
}

/// Shutdown has begun: systemd waits for the exit instead of the watchdog.
pub fn stopping() {
    if managed() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

fn queue_line(c: &StateCounts) -> String {
    format!(
        "serving; queue: {} queued, {} downloading, {} uploading, {} cleaning",
        c.queued, c.downloading, c.uploading, c.cleaning
    )
}

/// The task that pings the watchdog (at half of `WATCHDOG_USEC`, as
/// sd_watchdog_enabled(3) advises) and refreshes the status line. Each ping
/// follows a store read made through the runtime's blocking pool within the
/// period: a stuck runtime, a full pool or a hung store stops the pings.
/// Statuses before `ready` would say "serving" too early, so the task sends
/// only `WATCHDOG=1` until `serving` is set.
pub fn spawn_watchdog(
    jobs: Arc<JobService>,
    serving: Arc<AtomicBool>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    if !managed() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(STATUS_EVERY, |d| d / 2);
    tracing::info!(?watchdog, "systemd notifications");
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let answer = tokio::time::timeout(every, jobs.store.counts()).await;
            let counts = match answer {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "watchdog: the store does not answer");
                    continue;
                }
                Err(_) => {
                    tracing::error!("watchdog: the store did not answer in time");
                    continue;
                }
            };
            let line = queue_line(&counts);
            let mut states = Vec::with_capacity(2);
            if watchdog.is_some() {
                states.push(NotifyState::Watchdog);
            }
            if serving.load(Ordering::Relaxed) {
                states.push(NotifyState::Status(&line));
            }
            if !states.is_empty() {
                send(&states);
            }
        }
    });
}
