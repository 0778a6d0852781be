//! Uploading: send a downloaded file (or a cached `file_id`) to the chat with
//! the method that fits it, replying to the user's message.

use std::path::{Path, PathBuf};

use teloxide::prelude::*;
use teloxide::types::{FileId, InlineKeyboardMarkup, InputFile, MessageId, ReplyParameters};

use super::pacer::{PaceError, Priority};
use super::text::{truncate_utf16, CAPTION_MAX};
use super::Api;
use super::{classify, TgFailure};
use crate::job::FailureCode;
use crate::job::{MediaInfo, MediaKind};

/// What to send.
#[derive(Clone, Debug)]
pub struct Upload {
    pub chat_id: i64,
    pub reply_to: i32,
    /// What the user asked for.
    pub kind: MediaKind,
    pub source: Source,
    pub caption: String,
    pub media: Option<MediaInfo>,
    /// What the player shows besides the file.
    pub extras: Extras,
    /// Send a file by its absolute path (`file://...`) for a local Bot API
    /// server to read (`telegram.local_api`), not in the request body.
    pub by_path: bool,
    /// Buttons under the delivered file (the other forms).
    pub keyboard: Option<InlineKeyboardMarkup>,
}

/// Everything Telegram shows of a file besides its bytes; each is left out
/// of the request when unknown.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// The upload's file name (see [`super::filename`]); the file on disk
    /// keeps its own.
    pub file_name: Option<String>,
    /// A JPEG within Telegram's thumbnail limits.
    pub thumbnail: Option<PathBuf>,
    /// An audio's track title and performer.
    pub title: Option<String>,
    pub performer: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    /// A `file_id` Telegram gave for the same media before.
    Cached {
        file_id: String,
        sent_as: MediaKind,
    },
}

/// What Telegram answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub message_id: i32,
    pub file_id: String,
    pub sent_as: MediaKind,
}

const VIDEO_EXT: &[&str] = &["mp4", "m4v", "mov", "webm", "mkv"];
const AUDIO_EXT: &[&str] = &["mp3", "m4a", "aac", "ogg", "opus", "flac", "wav"];

/// The method for a file: what the user asked for when the file is that kind
/// of media, a document otherwise (an unknown type is never sent as video).
pub fn method_for(kind: MediaKind, path: &Path) -> MediaKind {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match kind {
        MediaKind::Video if VIDEO_EXT.contains(&ext.as_str()) => MediaKind::Video,
        MediaKind::Audio if AUDIO_EXT.contains(&ext.as_str()) => MediaKind::Audio,
        // An audio file asked for as video is still best played as audio.
        MediaKind::Video if AUDIO_EXT.contains(&ext.as_str()) => MediaKind::Audio,
        _ => MediaKind::Document,
    }
}

/// Title and source link, cut to Telegram's caption limit.
pub fn caption(title: Option<&str>, url: &str) -> String {
    let full = match title.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => format!("{t}\n{url}"),
        None => url.to_string(),
    };
    truncate_utf16(&full, CAPTION_MAX)
}

/// Send once with the chosen method; if Telegram refuses a video as video,
/// send it as a document instead (SPEC: "or when the video upload is refused").
/// Paced as urgent; a 429 is waited out inside (only shutdown ends the wait).
pub async fn send(api: &Api, up: &Upload) -> Result<Sent, PaceError> {
    let (method, input) = match &up.source {
        Source::File(p) => {
            let mut input = file_input(p, up.by_path);
            // The same name whichever method ends up sending it.
            if let Some(name) = &up.extras.file_name {
                input = input.file_name(name.clone());
            }
            (method_for(up.kind, p), input)
        }
        Source::Cached { file_id, sent_as } => {
            (*sent_as, InputFile::file_id(FileId(file_id.clone())))
        }
    };
    match send_as(api, up, method, input.clone()).await {
        Err(PaceError::Request(e))
            if method == MediaKind::Video
                && matches!(
                    classify(&e),
                    TgFailure::Permanent {
                        code: FailureCode::UploadRefused,
                        ..
                    }
                ) =>
        {
            tracing::info!(error = %e, "video refused, sending as a document");
            send_as(api, up, MediaKind::Document, input).await
        }
        other => other,
    }
}

/// A file as the request carries it: its bytes in a multipart body, or, for
/// a `telegram-bot-api --local` server, its absolute path as a `file://`
/// URL, which the Bot API's local mode accepts wherever a file goes and
/// teloxide sends as a plain parameter (no upload). The server then reads
/// the file itself, so it must stay in place until the server answered.
fn file_input(path: &Path, by_path: bool) -> InputFile {
    match by_path.then(|| file_url(path)).flatten() {
        Some(url) => InputFile::url(url),
        // Not asked for, or a path no URL can name (empty): the bytes.
        None => InputFile::file(path.to_path_buf()),
    }
}

/// `file:///absolute/path`, percent-encoded as the Bot API expects.
fn file_url(path: &Path) -> Option<url::Url> {
    std::path::absolute(path)
        .ok()
        .and_then(|abs| url::Url::from_file_path(abs).ok())
}

async fn send_as(
    api: &Api,
    up: &Upload,
    method: MediaKind,
    input: InputFile,
) -> Result<Sent, PaceError> {
    let (bot, chat) = (&api.bot, ChatId(up.chat_id));
    let reply = ReplyParameters::new(MessageId(up.reply_to)).allow_sending_without_reply();
    let urgent = Priority::Urgent;
    // Only with a file upload: a resend by file_id keeps Telegram's own.
    let thumbnail = match (&up.source, &up.extras.thumbnail) {
        (Source::File(_), Some(t)) => Some(InputFile::file(t.clone()).file_name("thumb.jpg")),
        _ => None,
    };
    let msg = match method {
        MediaKind::Video => {
            api.pacer
                .call(chat, urgent, || {
                    let mut req = bot
                        .send_video(chat, input.clone())
                        .caption(up.caption.clone())
                        .supports_streaming(true)
                        .reply_parameters(reply.clone());
                    if let Some(k) = &up.keyboard {
                        req = req.reply_markup(k.clone());
                    }
                    if let Some(m) = up.media {
                        if let Some(w) = m.width {
                            req = req.width(w);
                        }
                        if let Some(h) = m.height {
                            req = req.height(h);
                        }
                        if let Some(d) = m.duration_secs {
                            req = req.duration(d);
                        }
                    }
                    if let Some(t) = &thumbnail {
                        req = req.thumbnail(t.clone());
                    }
                    req
                })
                .await?
        }
        MediaKind::Audio => {
            api.pacer
                .call(chat, urgent, || {
                    let mut req = bot
                        .send_audio(chat, input.clone())
                        .caption(up.caption.clone())
                        .reply_parameters(reply.clone());
                    if let Some(k) = &up.keyboard {
                        req = req.reply_markup(k.clone());
                    }
                    if let Some(d) = up.media.and_then(|m| m.duration_secs) {
                        req = req.duration(d);
                    }
                    if let Some(t) = &up.extras.title {
                        req = req.title(t.clone());
                    }
                    if let Some(p) = &up.extras.performer {
                        req = req.performer(p.clone());
                    }
                    if let Some(t) = &thumbnail {
                        req = req.thumbnail(t.clone());
                    }
                    req
                })
                .await?
        }
        MediaKind::Document => {
            api.pacer
                .call(chat, urgent, || {
                    let mut req = bot
                        .send_document(chat, input.clone())
                        .caption(up.caption.clone())
                        .reply_parameters(reply.clone());
                    if let Some(k) = &up.keyboard {
                        req = req.reply_markup(k.clone());
                    }
                    match &thumbnail {
                        Some(t) => req.thumbnail(t.clone()),
                        None => req,
                    }
                })
                .await?
        }
    };
    let (file_id, sent_as) = if let Some(v) = msg.video() {
        (v.file.id.0.clone(), MediaKind::Video)
    } else if let Some(a) = msg.audio() {
        (a.file.id.0.clone(), MediaKind::Audio)
    } else if let Some(d) = msg.document() {
        (d.file.id.0.clone(), MediaKind::Document)
    } else if let Some(a) = msg.animation() {
        (a.file.id.0.clone(), MediaKind::Video)
    } else {
        (String::new(), method)
    };
    Ok(Sent {
        message_id: msg.id.0,
        file_id,
        sent_as,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_go_as_documents() {
        assert_eq!(
            method_for(MediaKind::Video, Path::new("a.mp4")),
            MediaKind::Video
        );
        assert_eq!(
            method_for(MediaKind::Video, Path::new("a.bin")),
            MediaKind::Document
        );
        assert_eq!(
            method_for(MediaKind::Audio, Path::new("a.m4a")),
            MediaKind::Audio
        );
        assert_eq!(
            method_for(MediaKind::Audio, Path::new("a.mp4")),
            MediaKind::Document
        );
        assert_eq!(
            method_for(MediaKind::Document, Path::new("a.mp4")),
            MediaKind::Document
        );
    }

    #[test]
    fn a_local_server_gets_the_absolute_path_as_a_file_url() {
        let cwd = std::env::current_dir().unwrap();
        let url = file_url(Path::new("data/downloads/a b/x.mp4")).unwrap();
        assert_eq!(
            url.as_str(),
            format!("file://{}/data/downloads/a%20b/x.mp4", cwd.display())
        );
        assert_eq!(
            url.to_file_path().unwrap(),
            cwd.join("data/downloads/a b/x.mp4")
        );
        assert_eq!(file_url(Path::new("")), None);
    }

    #[test]
    fn captions_fit_the_limit_in_utf16_units() {
        let title = "ویدیو 🎬 ".repeat(200);
        let c = caption(Some(&title), "https://example.com/v");
        assert!(c.encode_utf16().count() <= CAPTION_MAX);
        assert!(c.ends_with('…'));
        assert_eq!(caption(None, "https://e/x"), "https://e/x");
        assert_eq!(caption(Some("T"), "https://e/x"), "T\nhttps://e/x");
    }
}
