//! What a failed Bot API call means for a job: wait (429), retry later, or
//! give up with a [`FailureCode`] the user is told.

use std::time::Duration;

use teloxide::{ApiError, RequestError};

use crate::job::FailureCode;

/// What a failed Bot API call means for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgFailure {
    /// 429: wait this long, then try again; not an attempt.
    RetryAfter(Duration),
    /// Trying again cannot help (too large, blocked, bad request).
    Permanent { code: FailureCode, text: String },
    /// Network, 5xx, timeouts: retry later with backoff.
    Retryable { code: FailureCode, text: String },
}

pub fn classify(e: &RequestError) -> TgFailure {
    let text = e.to_string();
    match e {
        RequestError::RetryAfter(s) => TgFailure::RetryAfter(s.duration()),
        RequestError::Api(api) => match api {
            ApiError::RequestEntityTooLarge => TgFailure::Permanent {
                code: FailureCode::TooLarge,
                text,
            },
            ApiError::BotBlocked
            | ApiError::UserDeactivated
            | ApiError::ChatNotFound
            | ApiError::BotKicked
            | ApiError::BotKickedFromSupergroup
            | ApiError::CantInitiateConversation
            | ApiError::CantTalkWithBots => TgFailure::Permanent {
                code: FailureCode::ChatUnreachable,
                text,
            },
            ApiError::Unknown(desc) if is_server_side(desc) => TgFailure::Retryable {
                code: FailureCode::Telegram5xx,
                text,
            },
            _ => TgFailure::Permanent {
                code: FailureCode::UploadRefused,
                text,
            },
        },
        // A proxy in front of the API answers 413 and 5xx with HTML.
        RequestError::InvalidJson { raw, .. } => {
            if raw.contains("413") || raw.contains("Request Entity Too Large") {
                TgFailure::Permanent {
                    code: FailureCode::TooLarge,
                    text,
                }
            } else {
                TgFailure::Retryable {
                    code: FailureCode::Telegram5xx,
                    text,
                }
            }
        }
        RequestError::Network(_) | RequestError::Io(_) => TgFailure::Retryable {
            code: FailureCode::TelegramNetwork,
            text,
        },
        RequestError::MigrateToChatId(_) => TgFailure::Permanent {
            code: FailureCode::ChatUnreachable,
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
