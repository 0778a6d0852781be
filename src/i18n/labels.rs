//! Short texts: button labels, words inside other texts, and the
//! description of each command (for /help and Telegram's command menu).

use super::Lang;
use crate::job::MediaKind;

/// A short text that is not a whole message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// "video", "audio", "document".
    Kind(MediaKind),
    /// The button for a kind, with its icon.
    KindButton(MediaKind),
    /// The Cancel button on a job's status message.
    CancelButton,
    /// The best quality that fits ("no height limit").
    Best,
    /// Follow Telegram's language.
    Auto,
    /// The "ask on each link" toggle, showing its state.
    Ask(bool),
    YesNo(bool),
    /// A language's own name, the same in every language.
    LanguageName(Lang),
}

pub fn label(lang: Lang, l: Label) -> String {
    use Lang::*;
    let s = match (lang, l) {
        (En, Label::Kind(MediaKind::Video)) => "video",
        (Fa, Label::Kind(MediaKind::Video)) => "ویدیو",
        (En, Label::Kind(MediaKind::Audio)) => "audio",
        (Fa, Label::Kind(MediaKind::Audio)) => "صوت",
        (En, Label::Kind(MediaKind::Document)) => "document",
        (Fa, Label::Kind(MediaKind::Document)) => "فایل",
        (En, Label::KindButton(MediaKind::Video)) => "🎬 Video",
        (Fa, Label::KindButton(MediaKind::Video)) => "🎬 ویدیو",
        (En, Label::KindButton(MediaKind::Audio)) => "🎵 Audio",
        (Fa, Label::KindButton(MediaKind::Audio)) => "🎵 صوت",
        (En, Label::KindButton(MediaKind::Document)) => "📄 Document",
        (Fa, Label::KindButton(MediaKind::Document)) => "📄 فایل",
        (En, Label::CancelButton) => "✖ Cancel",
        (Fa, Label::CancelButton) => "✖ لغو",
        (En, Label::Best) => "best",
        (Fa, Label::Best) => "بهترین",
        (En, Label::Auto) => "auto",
        (Fa, Label::Auto) => "خودکار",
        (En, Label::Ask(true)) => "ask: on",
        (En, Label::Ask(false)) => "ask: off",
        (Fa, Label::Ask(true)) => "پرسیدن: روشن",
        (Fa, Label::Ask(false)) => "پرسیدن: خاموش",
        (En, Label::YesNo(true)) => "yes",
        (En, Label::YesNo(false)) => "no",
        (Fa, Label::YesNo(true)) => "بله",
        (Fa, Label::YesNo(false)) => "خیر",
        (_, Label::LanguageName(En)) => "English",
        (_, Label::LanguageName(Fa)) => "فارسی",
    };
    s.to_string()
}

/// What a command does, for /help and the command menu, by the command's
/// name as users type it. `None` for a name that is not a command; the
/// Telegram side's tests check that every command it parses has both
/// languages here.
pub fn command_description(lang: Lang, command: &str) -> Option<&'static str> {
    use Lang::*;
    Some(match (lang, command) {
        (En, "start") => "start and show help",
        (Fa, "start") => "شروع و نمایش راهنما",
        (En, "help") => "how to use the bot",
        (Fa, "help") => "راهنمای استفاده",
        (En, "audio") => "audio only: /audio <link>",
        (Fa, "audio") => "فقط صوت: /audio <لینک>",
        (En, "settings") => "your defaults: format, quality, language",
        (Fa, "settings") => "تنظیمات پیش‌فرض شما: نوع، کیفیت، زبان",
        (En, "jobs") => "your jobs",
        (Fa, "jobs") => "کارهای شما",
        (En, "job") => "one job: /job <id>",
        (Fa, "job") => "یک کار: /job <شناسه>",
        (En, "cancel") => "cancel a job: /cancel <id>",
        (Fa, "cancel") => "لغو کار: /cancel <شناسه>",
        (En, "retry") => "retry a failed job: /retry <id>",
        (Fa, "retry") => "تلاش دوباره برای کار ناموفق: /retry <شناسه>",
        (En, "health") => "admins: the bot's health",
        (Fa, "health") => "مدیران: وضعیت سلامت ربات",
        (En, "update") => "admins: update yt-dlp now, or /update rollback",
        (Fa, "update") => "مدیران: به‌روزرسانی yt-dlp، یا /update rollback",
        _ => return None,
    })
}
