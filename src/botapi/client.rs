//! Building the Bot API client and reaching the API: an HTTP timeout that
//! fits uploads, `getMe` with backoff at start (teloxide's dispatcher would
//! panic instead), and messages to the admins.

use std::time::Duration;

use teloxide::prelude::*;
use teloxide::{ApiError, RequestError};
use tokio_util::sync::CancellationToken;

use super::pacer::{PaceError, Priority, Target};
use super::Api;
use crate::config::Config;

/// A Bot with the configured API URL and an HTTP timeout that fits uploads.
pub fn build_bot(config: &Config) -> anyhow::Result<Bot> {
    let timeout = Duration::from_secs(config.telegram.request_timeout_secs);
    let client = teloxide::net::default_reqwest_settings()
        .timeout(timeout)
        .build()?;
    let url = url::Url::parse(&config.telegram.api_url)?;
    Ok(Bot::with_client(config.telegram.token.clone(), client).set_api_url(url))
}

/// Call `getMe` until it answers, backing off up to a minute between tries.
/// Returns `None` if `shutdown` fires first. A wrong token is not retried.
/// Through the pacer like every call: Telegram counts it toward the overall
/// limit, and a burst of links waiting at start-up follows it at once.
pub async fn wait_for_api(
    api: &Api,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<teloxide::types::Me>> {
    let mut delay = Duration::from_millis(250);
    loop {
        let answer = api
            .pacer
            .call(Target::NoChat, Priority::Urgent, || api.bot.get_me())
            .await;
        match answer {
            Ok(me) => return Ok(Some(me)),
            Err(PaceError::Shutdown) => return Ok(None),
            Err(PaceError::Request(RequestError::Api(ApiError::InvalidToken))) => {
                anyhow::bail!("telegram.token: the Bot API rejected the token (Unauthorized)");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Bot API not reachable yet");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// Send a text to every admin; failures are logged, never fatal.
pub async fn notify_admins(api: &Api, config: &Config, text: &str) {
    for admin in &config.telegram.admins {
        if let Err(e) = api.send(*admin as i64, None, text, None).await {
            tracing::warn!(admin, error = %e, "cannot notify admin");
        }
    }
}
