//! Durable intake (SPEC "Intake is durable"): every batch `getUpdates`
//! returns is stored in the inbox, in one synced write, before the next
//! `getUpdates` (whose offset confirms the batch to Telegram) is sent. An
//! update leaves the inbox only once its handler has made its effects
//! durable, so a crash at any point neither loses a user's message nor
//! forgets that it was handled. At start, whatever the inbox holds is
//! handled before polling resumes.

use std::sync::Arc;
use std::time::Duration;

use teloxide::prelude::*;
use teloxide::types::{AllowedUpdate, Update};
use teloxide::RequestError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dispatch::Dispatch;
use super::Deps;

/// Long-poll timeout asked of Telegram.
const POLL_SECS: u32 = 25;

/// Set (to anything) only by `--bench e2e`, to measure what the inbox costs:
/// updates are then confirmed without being stored, as before durable intake,
/// and a crash loses them. Never set it on a real bot.
pub const UNSTORED_ENV: &str = "TGDL_BENCH_UNSTORED_INTAKE";

/// Poll, store, dispatch, until `stop`. Returns once polling has stopped;
/// handlers still running are on `tracker`.
pub async fn run(deps: Arc<Deps>, tracker: TaskTracker, stop: CancellationToken) {
    let durable = std::env::var_os(UNSTORED_ENV).is_none();
    if !durable {
        tracing::warn!("{UNSTORED_ENV} is set: updates are not stored before they are confirmed");
    }
    let dispatch = Dispatch::new(deps.clone(), tracker, durable);
    let bot = &deps.api.bot;
    let Some(mut offset) = drain(&deps, &dispatch, &stop).await else {
        return;
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        let request = bot
            .get_updates()
            .offset(offset as i32)
            .timeout(POLL_SECS)
            .allowed_updates([AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
        let answer = tokio::select! {
            r = request.send() => r,
            _ = stop.cancelled() => return,
        };
        let updates = match answer {
            Ok(u) => {
                backoff = Duration::from_millis(250);
                u
            }
            Err(RequestError::RetryAfter(s)) => {
                pause(s.duration(), &stop).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "getUpdates failed");
                pause(backoff, &stop).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let Some(last) = updates.iter().map(|u| u.id.0).max() else {
            continue;
        };
        if durable && !store(&deps, &updates, &stop).await {
            return;
        }
        // Only now may the next request confirm the batch.
        offset = last.saturating_add(1);
        for u in updates {
            dispatch.send(u);
        }
    }
}

/// Hand over what a previous run stored but did not finish; the offset to
/// poll from next (`None` when stopped first).
async fn drain(deps: &Deps, dispatch: &Dispatch, stop: &CancellationToken) -> Option<u32> {
    let pending = loop {
        match deps.jobs.store.inbox_pending().await {
            Ok(p) => break p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the inbox; retrying");
                if pause(Duration::from_secs(1), stop).await {
                    return None;
                }
            }
        }
    };
    if !pending.is_empty() {
        tracing::info!(
            updates = pending.len(),
            "handling updates stored before the restart"
        );
    }
    let mut offset = 0;
    for (id, bytes) in pending {
        offset = offset.max(id.saturating_add(1));
        match serde_json::from_slice::<Update>(&bytes) {
            Ok(u) => dispatch.send(u),
            Err(e) => {
                // Nothing can handle it; keeping it would replay it forever.
                tracing::error!(update = id, error = %e, "stored update does not decode; dropped");
                let _ = deps.jobs.store.inbox_done(vec![id]).await;
            }
        }
    }
    Some(offset)
}

/// Store a batch durably, retrying until it is stored or `stop` fires
/// (then the batch stays unconfirmed and Telegram sends it again).
async fn store(deps: &Deps, updates: &[Update], stop: &CancellationToken) -> bool {
    let batch: Vec<(u32, Vec<u8>)> = updates
        .iter()
        .filter_map(|u| match serde_json::to_vec(u) {
            Ok(b) => Some((u.id.0, b)),
            Err(e) => {
                tracing::error!(update = u.id.0, error = %e, "cannot encode an update");
                None
            }
        })
        .collect();
    loop {
        let b = batch.clone();
        match deps.jobs.store.inbox_put(b).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::error!(error = %e, "cannot store updates; not confirming them");
                if pause(Duration::from_secs(1), stop).await {
                    return false;
                }
            }
        }
    }
}

/// Sleep `d`; true when `stop` fired first.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}
