//! The Bot API client: building it, waiting for the API at start, classifying
//! its errors, and the rate-limited status message.
//!
//! teloxide's defaults are wrong for this bot in three ways (SPEC "Parts"): a
//! 17 s timeout breaks uploads, a failed `getMe` at start panics the
//! dispatcher, and edits are not rate limited. This module fixes all three.

use std::time::{Duration, Instant};

use teloxide::prelude::*;
use teloxide::types::{BotCommand, MessageId};
use teloxide::{ApiError, RequestError};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// A Bot with the configured API URL and an HTTP timeout that fits uploads.
pub fn build_bot(config: &Config) -> anyhow::Result<Bot> {
    let timeout = Duration::from_secs(config.telegram.request_timeout_secs);
    let client = teloxide::net::default_reqwest_settings()
        .timeout(timeout)
        .build()?;
    let url = reqwest::Url::parse(&config.telegram.api_url)?;
    Ok(Bot::with_client(config.telegram.token.clone(), client).set_api_url(url))
}

/// Call `getMe` until it answers, backing off up to a minute between tries.
/// Returns `None` if `shutdown` fires first. A wrong token is not retried.
pub async fn wait_for_api(
    bot: &Bot,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<teloxide::types::Me>> {
    let mut delay = Duration::from_millis(250);
    loop {
        match bot.get_me().await {
            Ok(me) => return Ok(Some(me)),
            Err(RequestError::Api(ApiError::InvalidToken)) => {
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

/// Register the command list shown by clients. Failure is logged only.
pub async fn set_commands(bot: &Bot) {
    let cmds = [
        ("start", "Start and show help"),
        ("help", "How to use the bot"),
        ("audio", "Download audio only: /audio <link>"),
        ("settings", "Your defaults: format, quality, language"),
        ("jobs", "Your jobs"),
        ("job", "One job: /job <id>"),
        ("cancel", "Cancel a job: /cancel <id>"),
        ("retry", "Retry a failed job: /retry <id>"),
    ]
    .map(|(c, d)| BotCommand::new(c, d));
    if let Err(e) = bot.set_my_commands(cmds).await {
        tracing::warn!(error = %e, "setMyCommands failed (commands still work)");
    }
}

/// What a failed Bot API call means for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgFailure {
    /// 429: wait this long, then try again; not an attempt.
    RetryAfter(Duration),
    /// Trying again cannot help (too large, blocked, bad request).
    Permanent { code: &'static str, text: String },
    /// Network, 5xx, timeouts: retry later with backoff.
    Retryable { code: &'static str, text: String },
}

pub fn classify(e: &RequestError) -> TgFailure {
    let text = e.to_string();
    match e {
        RequestError::RetryAfter(s) => TgFailure::RetryAfter(s.duration()),
        RequestError::Api(api) => match api {
            ApiError::RequestEntityTooLarge => TgFailure::Permanent {
                code: "too_large",
                text,
            },
            ApiError::BotBlocked
            | ApiError::UserDeactivated
            | ApiError::ChatNotFound
            | ApiError::BotKicked
            | ApiError::BotKickedFromSupergroup
            | ApiError::CantInitiateConversation
            | ApiError::CantTalkWithBots => TgFailure::Permanent {
                code: "chat_unreachable",
                text,
            },
            ApiError::Unknown(desc) if is_server_side(desc) => TgFailure::Retryable {
                code: "telegram_5xx",
                text,
            },
            _ => TgFailure::Permanent {
                code: "upload_refused",
                text,
            },
        },
        // A proxy in front of the API answers 413 and 5xx with HTML.
        RequestError::InvalidJson { raw, .. } => {
            if raw.contains("413") || raw.contains("Request Entity Too Large") {
                TgFailure::Permanent {
                    code: "too_large",
                    text,
                }
            } else {
                TgFailure::Retryable {
                    code: "telegram_5xx",
                    text,
                }
            }
        }
        RequestError::Network(_) | RequestError::Io(_) => TgFailure::Retryable {
            code: "telegram_network",
            text,
        },
        RequestError::MigrateToChatId(_) => TgFailure::Permanent {
            code: "chat_unreachable",
            text,
        },
    }
}

fn is_server_side(desc: &str) -> bool {
    let d = desc.to_ascii_lowercase();
    [
        "internal server error",
        "bad gateway",
        "service unavailable",
        "gateway timeout",
        "timeout",
    ]
    .iter()
    .any(|p| d.contains(p))
}

/// The bot's status message for one job: edited with progress at most once
/// per interval, never with unchanged text, tolerant of "message is not
/// modified" and of `RetryAfter` (which only delays the next edit).
pub struct StatusMessage {
    bot: Bot,
    chat: ChatId,
    message: Option<MessageId>,
    interval: Duration,
    last_text: String,
    next_allowed: Instant,
}

impl StatusMessage {
    pub fn new(bot: Bot, chat_id: i64, message_id: Option<i32>, interval: Duration) -> Self {
        StatusMessage {
            bot,
            chat: ChatId(chat_id),
            message: message_id.map(MessageId),
            interval,
            last_text: String::new(),
            next_allowed: Instant::now(),
        }
    }

    /// Edit if allowed now; returns whether an edit was sent.
    pub async fn update(&mut self, text: &str) -> bool {
        if Instant::now() < self.next_allowed {
            return false;
        }
        self.edit(text).await
    }

    /// Edit regardless of the interval (stage changes, final lines), still
    /// skipping unchanged text and honouring a pending `RetryAfter`.
    pub async fn force(&mut self, text: &str) -> bool {
        let wait = self.next_allowed.saturating_duration_since(Instant::now());
        if wait > Duration::ZERO && wait < Duration::from_secs(5) {
            tokio::time::sleep(wait).await;
        }
        self.edit(text).await
    }

    async fn edit(&mut self, text: &str) -> bool {
        let Some(id) = self.message else {
            return false;
        };
        if text == self.last_text {
            return false;
        }
        self.next_allowed = Instant::now() + self.interval;
        match self.bot.edit_message_text(self.chat, id, text).await {
            Ok(_) | Err(RequestError::Api(ApiError::MessageNotModified)) => {
                self.last_text = text.to_string();
                true
            }
            Err(RequestError::RetryAfter(s)) => {
                self.next_allowed = Instant::now() + s.duration();
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "status edit failed");
                false
            }
        }
    }

    /// Remove the status message (after a successful delivery).
    pub async fn delete(&mut self) {
        if let Some(id) = self.message.take() {
            if let Err(e) = self.bot.delete_message(self.chat, id).await {
                tracing::debug!(error = %e, "status delete failed");
            }
        }
    }

    pub fn message_id(&self) -> Option<i32> {
        self.message.map(|m| m.0)
    }

    /// Start editing `message_id` when it became known only after this was
    /// built (a worker can claim a job before the handler has recorded its
    /// acknowledgement).
    pub fn attach(&mut self, message_id: i32) {
        if self.message.is_none() {
            self.message = Some(MessageId(message_id));
        }
    }
}
