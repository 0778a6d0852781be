//! The status message of one job, edited with progress.

use std::time::{Duration, Instant};

use teloxide::prelude::*;
use teloxide::types::MessageId;
use teloxide::{ApiError, RequestError};

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
