//! Why a job failed: [`FailureCode`], one stable code per reason a user can
//! be told, and [`JobError`], what the store keeps of the last error.
//!
//! The codes are stored in job records as their text ([`FailureCode::as_str`]),
//! so renaming a variant is free but changing its text is a format change.
//! The message catalogue (`i18n`) matches every variant exhaustively: a new
//! code does not compile until both languages say something for it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether trying again can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    Retryable,
    Permanent,
}

/// The last error a job met: class, a stable code (for the message catalogue
/// and metrics) and the raw text (for logs and admins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub class: ErrorClass,
    pub code: FailureCode,
    pub text: String,
}

impl JobError {
    pub fn permanent(code: FailureCode, text: impl Into<String>) -> Self {
        JobError {
            class: ErrorClass::Permanent,
            code,
            text: text.into(),
        }
    }

    /// The failure recorded on a cancelled job.
    pub fn cancelled() -> Self {
        JobError::permanent(FailureCode::Cancelled, "cancelled by request")
    }
}

macro_rules! failure_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// Every reason a job can fail for, as the user will be told it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum FailureCode {
            $($(#[$doc])* $variant,)*
        }

        impl FailureCode {
            /// Every code, for exhaustive tests of the catalogue.
            pub const ALL: &'static [FailureCode] = &[$(FailureCode::$variant,)*];

            /// The stored and logged text of the code. Never change one.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(FailureCode::$variant => $text,)*
                }
            }
        }
    };
}

failure_codes! {
    // What the site or yt-dlp said.
    /// No extractor understands the link.
    UnsupportedUrl = "unsupported_url",
    /// Removed, deleted, never existed, not yet live.
    Unavailable = "unavailable",
    Private = "private",
    GeoBlocked = "geo_blocked",
    /// Needs an account or cookies.
    LoginRequired = "login_required",
    /// Larger than the upload limit (or the download limit), with no smaller format.
    TooLarge = "too_large",
    Http403 = "http_403",
    Http404 = "http_404",
    Http429 = "http_429",
    Http5xx = "http_5xx",
    /// 416 again after the download started over without its partial file.
    RangeNotSatisfiable = "range_not_satisfiable",
    /// Connection refused or reset, DNS failure, TLS error.
    Network = "network",
    /// The download took longer than `downloader.timeout_secs`.
    Timeout = "timeout",
    /// yt-dlp rejected its command line: an operator problem.
    YtdlpUsage = "ytdlp_usage",
    /// yt-dlp failed in a way nobody recognised (often an outdated extractor).
    Unknown = "unknown",
    /// A request of the download (a redirect, a segment, a page's media) went
    /// to a refused address and the egress filter stopped it.
    DestinationRefused = "destination_refused",
    // What the pipeline decided.
    Cancelled = "cancelled",
    /// The bot died at the same point of this job too often.
    CrashedRepeatedly = "crashed_repeatedly",
    /// Something on this machine failed (yt-dlp would not start, a file vanished).
    LocalError = "local_error",
    /// The job's files on disk passed `downloader.max_download_mb` while it
    /// downloaded (a stream without an end, a response without a length).
    DownloadTooLarge = "download_too_large",
    /// The disk filled up under the download (ENOSPC). Recorded as the last
    /// error of a job put back in the queue; never a final failure.
    NoSpace = "no_space",
    // What Telegram said.
    /// The user blocked the bot, the chat is gone, or the bot was removed.
    ChatUnreachable = "chat_unreachable",
    /// Telegram refused the file (bad request, wrong type).
    UploadRefused = "upload_refused",
    TelegramNetwork = "telegram_network",
    Telegram5xx = "telegram_5xx",
}

impl FailureCode {
    /// The code stored as `s`; a code this build does not know (written by a
    /// newer tgdl) reads as [`FailureCode::Unknown`].
    pub fn parse(s: &str) -> FailureCode {
        FailureCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .unwrap_or(FailureCode::Unknown)
    }
}

impl From<&str> for FailureCode {
    fn from(s: &str) -> Self {
        FailureCode::parse(s)
    }
}

/// Compare with a stored code's text (logs, JSON, tests).
impl PartialEq<&str> for FailureCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Stored as its text so records written before the enum existed (codec
// version 1 kept a free string) read back unchanged.
impl Serialize for FailureCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(FailureCode::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for c in FailureCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {c}");
            assert_eq!(FailureCode::parse(c.as_str()), *c);
        }
        assert_eq!(
            FailureCode::parse("from_a_newer_build"),
            FailureCode::Unknown
        );
    }
}
