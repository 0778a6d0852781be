//! The message catalog: every text a user sees, in English and Persian.
//!
//! Handlers and workers build a [`Msg`] (what to say, with its data) and
//! [`render`] it in the user's [`Lang`]. Keeping every sentence here means a
//! new language is one new match arm per message, and no user-facing string
//! hides in the pipeline.

mod labels;
pub mod operator;
mod printable;
mod reasons;

pub use labels::{command_description, label, Label};
#[cfg(test)]
pub(crate) use printable::leftovers_in_layout;
pub use printable::{json_printable, printable};

use crate::job::{iso, FailureCode, JobState, MediaKind, Millis};
use crate::net::LinkError;
use reasons::{link_refusal, reason};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Fa,
}

impl Lang {
    /// Choose from Telegram's `language_code` ("fa", "fa-IR", "en-US"...),
    /// falling back to the configured default.
    pub fn pick(code: Option<&str>, default: Lang) -> Lang {
        match code.map(|c| {
            c.split(['-', '_'])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        }) {
            Some(c) if c == "fa" => Lang::Fa,
            Some(c) if c == "en" => Lang::En,
            _ => default,
        }
    }

    pub fn from_config(s: &str) -> Lang {
        if s == "fa" {
            Lang::Fa
        } else {
            Lang::En
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Fa => "fa",
        }
    }
}

/// `/job <id>`: what a user or an admin is shown of one job.
#[derive(Clone, Debug)]
pub struct JobDetails {
    pub short_id: String,
    pub state: JobState,
    pub url: String,
    pub kind: MediaKind,
    pub attempts: u32,
    pub rescues: u32,
    pub title: Option<String>,
    /// The failure, or the last error of a job still trying.
    pub error: Option<(FailureCode, String)>,
    pub history: Vec<(JobState, Millis)>,
}

/// One line of a user's job list.
#[derive(Clone, Debug)]
pub struct JobLine {
    pub short_id: String,
    pub state: String,
    pub url: String,
}

/// Everything the bot can say.
#[derive(Clone, Debug)]
pub enum Msg {
    /// The introduction and the commands (by name, as users type them).
    Help {
        commands: Vec<String>,
    },
    Accepted {
        short_id: String,
        position: u64,
    },
    NoLink,
    IgnoredExtraLinks {
        max: usize,
    },
    /// A link refused before a job exists.
    LinkRefused {
        link: String,
        error: LinkError,
    },
    LimitActive {
        limit: u32,
    },
    LimitHourly {
        limit: u32,
        retry_at: Millis,
        now: Millis,
    },
    QueueFull,
    NotAllowed,
    AdminOnly,
    /// `/update` for admins: what the updater will do, then what it did.
    UpdateStarted,
    RollbackStarted,
    UpdateBusy,
    UsageUpdate,
    YtdlpUpdated {
        from: String,
        to: String,
    },
    YtdlpInstalled {
        version: String,
    },
    YtdlpUpToDate {
        version: String,
    },
    YtdlpUpdateFailed {
        still: String,
        error: String,
    },
    YtdlpRolledBack {
        from: String,
        to: String,
    },
    YtdlpNoRollback,
    YtdlpNotManaged {
        path: String,
    },
    /// Extractor errors spiked right after a switch: offer the way back.
    YtdlpSpikeAfterUpdate {
        errors: u64,
        version: String,
        previous: String,
    },
    /// Extractor errors spiked on an old release: updating now.
    YtdlpSpikeUpdating {
        errors: u64,
        version: String,
    },
    /// The operator's yt-dlp is far behind the newest release.
    YtdlpStale {
        path: String,
        version: String,
        newest: String,
        days: i64,
    },
    Downloading {
        short_id: String,
    },
    Progress {
        short_id: String,
        percent: Option<f64>,
        downloaded: u64,
        total: Option<u64>,
        speed: Option<f64>,
        eta: Option<u64>,
    },
    Uploading {
        short_id: String,
    },
    WaitingRetry {
        short_id: String,
        attempt: u32,
        max: u32,
    },
    Delivered {
        short_id: String,
    },
    /// A job failed.
    Failed {
        short_id: String,
        code: FailureCode,
        /// The limit `code` is about, in MB: the download limit for
        /// `DownloadTooLarge`, else the upload limit.
        limit_mb: u64,
    },
    Chosen {
        short_id: String,
        kind: MediaKind,
        max_height: Option<u32>,
    },
    /// A press of the form the download already has.
    AlreadyAs {
        short_id: String,
        kind: MediaKind,
        max_height: Option<u32>,
    },
    /// A press of the form a delivered job was sent in.
    AlreadySent {
        short_id: String,
        kind: MediaKind,
        max_height: Option<u32>,
    },
    /// A job that changed form too often already.
    TooManySwitches {
        short_id: String,
        max: u32,
    },
    /// A running download stops and starts again in another form.
    Switching {
        short_id: String,
        kind: MediaKind,
        max_height: Option<u32>,
    },
    Saved,
    Playlist {
        short_id: String,
        title: String,
        count: usize,
        /// Items listed but not taken, each with why.
        skipped: Vec<String>,
        /// `limits.playlist_max_items`.
        limit: u64,
        /// Items past the limit that were not even listed (the playlist
        /// says how many it has).
        unlisted: u64,
        /// Items past the limit exist, and the playlist does not say how
        /// many.
        more_unknown: bool,
    },
    WaitingForDisk {
        short_id: String,
    },
    Cancelled {
        short_id: String,
    },
    NotFound {
        id: String,
    },
    Ambiguous {
        id: String,
    },
    NotYours {
        id: String,
    },
    /// A press on another user's `/settings` panel.
    NotYourSettings,
    AlreadyFinished {
        short_id: String,
        state: String,
    },
    Retried {
        short_id: String,
    },
    NotRetryable {
        short_id: String,
        state: String,
    },
    UsageJob,
    UsageCancel,
    UsageRetry,
    UsageAudio,
    JobList {
        lines: Vec<JobLine>,
    },
    NoJobs,
    JobDetails(JobDetails),
    Settings {
        kind: MediaKind,
        max_height: Option<u32>,
        ask: bool,
        lang: Option<String>,
    },
    Internal,
}

fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GB", b / 1024.0 / 1024.0 / 1024.0)
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.0} KB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn duration(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{}:{:02}", secs / 60, secs % 60)
    }
}

/// Render a message in a language.
pub fn render(lang: Lang, msg: &Msg) -> String {
    use Lang::*;
    match (lang, msg) {
        (_, Msg::Help { commands }) => {
            let mut s = match lang {
                En => "Send me a link to a video or audio (YouTube and the other sites yt-dlp supports) and I will send you the file.\n",
                Fa => "لینک یک ویدیو یا صوت (یوتیوب و سایت‌های دیگری که yt-dlp پشتیبانی می‌کند) را بفرستید تا فایلش را برایتان بفرستم.\n",
            }
            .to_string();
            for c in commands {
                if let Some(d) = command_description(lang, c) {
                    s.push_str(&format!("\n/{c} – {d}"));
                }
            }
            s
        }
        (En, Msg::Accepted { short_id, position }) => format!("✅ Accepted as job {short_id}. Position in queue: {position}."),
        (Fa, Msg::Accepted { short_id, position }) => format!("✅ پذیرفته شد؛ کار {short_id}. جایگاه در صف: {position}."),
        (En, Msg::NoLink) => "I did not find a link in your message. Send a link that starts with http:// or https://, or /help.".into(),
        (Fa, Msg::NoLink) => "لینکی در پیام شما پیدا نکردم. لینکی که با http:// یا https:// شروع می‌شود بفرستید، یا /help.".into(),
        (En, Msg::IgnoredExtraLinks { max }) => format!("Only the first {max} links of a message are taken."),
        (Fa, Msg::IgnoredExtraLinks { max }) => format!("از هر پیام فقط {max} لینک اول پذیرفته می‌شود."),
        (_, Msg::LinkRefused { link, error }) => format!("❌ {link}: {}.", link_refusal(lang, error)),
        (En, Msg::LimitActive { limit }) => format!("⏳ You already have {limit} jobs waiting or running. Try again when one of them finishes."),
        (Fa, Msg::LimitActive { limit }) => format!("⏳ شما هم‌اکنون {limit} کار در صف یا در حال اجرا دارید. وقتی یکی تمام شد دوباره بفرستید."),
        (En, Msg::LimitHourly { limit, retry_at, now }) => format!("⏳ You reached {limit} jobs per hour. Try again in {} minutes.", minutes_until(*retry_at, *now)),
        (Fa, Msg::LimitHourly { limit, retry_at, now }) => format!("⏳ به سقف {limit} کار در ساعت رسیدید. {} دقیقهٔ دیگر دوباره امتحان کنید.", minutes_until(*retry_at, *now)),
        (En, Msg::QueueFull) => "⏳ The queue is full right now. Please try again in a few minutes.".into(),
        (Fa, Msg::QueueFull) => "⏳ صف در حال حاضر پر است. چند دقیقهٔ دیگر دوباره امتحان کنید.".into(),
        (En, Msg::NotAllowed) => "Sorry, this bot is private.".into(),
        (Fa, Msg::NotAllowed) => "متأسفم، این ربات خصوصی است.".into(),
        (En, Msg::AdminOnly) => "This command is for the bot's admins only.".into(),
        (Fa, Msg::AdminOnly) => "این دستور فقط برای مدیران ربات است.".into(),
        (En, Msg::UpdateStarted) => "⏳ Updating yt-dlp: installing the newest release beside the current one and testing it. Admins get the result.".into(),
        (Fa, Msg::UpdateStarted) => "⏳ به‌روزرسانی yt-dlp: تازه‌ترین نسخه کنار نسخهٔ فعلی نصب و آزموده می‌شود. نتیجه برای مدیران فرستاده می‌شود.".into(),
        (En, Msg::RollbackStarted) => "⏳ Going back to the previous yt-dlp. Admins get the result.".into(),
        (Fa, Msg::RollbackStarted) => "⏳ بازگشت به نسخهٔ قبلی yt-dlp. نتیجه برای مدیران فرستاده می‌شود.".into(),
        (En, Msg::UpdateBusy) => "An update of yt-dlp is already running; its result comes shortly.".into(),
        (Fa, Msg::UpdateBusy) => "به‌روزرسانی yt-dlp در جریان است؛ نتیجه‌اش به‌زودی می‌رسد.".into(),
        (En, Msg::UsageUpdate) => "Usage: /update (install the newest yt-dlp) or /update rollback (go back to the previous one).".into(),
        (Fa, Msg::UsageUpdate) => "استفاده: /update (نصب تازه‌ترین yt-dlp) یا /update rollback (بازگشت به نسخهٔ قبلی).".into(),
        (En, Msg::YtdlpUpdated { from, to }) => format!("✅ yt-dlp updated: {from} → {to}. New downloads use {to}; running ones finish with {from}. /update rollback goes back."),
        (Fa, Msg::YtdlpUpdated { from, to }) => format!("✅ yt-dlp به‌روز شد: {from} ← {to}. دانلودهای تازه با {to} انجام می‌شوند؛ دانلودهای در جریان با {from} تمام می‌شوند. /update rollback برمی‌گرداند."),
        (En, Msg::YtdlpInstalled { version }) => format!("✅ yt-dlp {version} installed."),
        (Fa, Msg::YtdlpInstalled { version }) => format!("✅ yt-dlp {version} نصب شد."),
        (En, Msg::YtdlpUpToDate { version }) => format!("✅ yt-dlp {version} is the newest release; nothing changed."),
        (Fa, Msg::YtdlpUpToDate { version }) => format!("✅ yt-dlp {version} تازه‌ترین نسخه است؛ چیزی تغییر نکرد."),
        (En, Msg::YtdlpUpdateFailed { still, error }) => format!("⚠️ yt-dlp update failed; nothing changed, downloads keep using {still}.\nWhy: {error}"),
        (Fa, Msg::YtdlpUpdateFailed { still, error }) => format!("⚠️ به‌روزرسانی yt-dlp ناموفق بود؛ چیزی تغییر نکرد و دانلودها با {still} ادامه می‌یابند.\nعلت: {error}"),
        (En, Msg::YtdlpRolledBack { from, to }) => format!("↩️ yt-dlp rolled back: {from} → {to}. New downloads use {to}."),
        (Fa, Msg::YtdlpRolledBack { from, to }) => format!("↩️ yt-dlp برگردانده شد: {from} ← {to}. دانلودهای تازه با {to} انجام می‌شوند."),
        (En, Msg::YtdlpNoRollback) => "There is no previous yt-dlp install to go back to.".into(),
        (Fa, Msg::YtdlpNoRollback) => "نسخهٔ قبلی‌ای از yt-dlp برای بازگشت وجود ندارد.".into(),
        (En, Msg::YtdlpNotManaged { path }) => format!("yt-dlp here is the operator's ({path}); the bot never changes it. Update it the way it was installed."),
        (Fa, Msg::YtdlpNotManaged { path }) => format!("yt-dlp اینجا را گرداننده نصب کرده است ({path})؛ ربات هرگز آن را تغییر نمی‌دهد. همان‌طور که نصب شده به‌روزش کنید."),
        (En, Msg::YtdlpSpikeAfterUpdate { errors, version, previous }) => format!("⚠️ {errors} extractor errors since yt-dlp was updated to {version}. If the new release is to blame, /update rollback goes back to {previous}."),
        (Fa, Msg::YtdlpSpikeAfterUpdate { errors, version, previous }) => format!("⚠️ {errors} خطای استخراج از زمان به‌روزرسانی yt-dlp به {version}. اگر نسخهٔ تازه مقصر است، /update rollback به {previous} برمی‌گرداند."),
        (En, Msg::YtdlpSpikeUpdating { errors, version }) => format!("⚠️ {errors} extractor errors in the last hour on yt-dlp {version}: sites may have changed, updating yt-dlp now."),
        (Fa, Msg::YtdlpSpikeUpdating { errors, version }) => format!("⚠️ {errors} خطای استخراج در یک ساعت گذشته با yt-dlp {version}: شاید سایت‌ها تغییر کرده‌اند؛ yt-dlp هم‌اکنون به‌روز می‌شود."),
        (En, Msg::YtdlpStale { path, version, newest, days }) => format!("🟠 yt-dlp {version} ({path}, managed by the operator) is {days} days behind the newest release {newest}. Sites break on old releases: please update it."),
        (Fa, Msg::YtdlpStale { path, version, newest, days }) => format!("🟠 yt-dlp {version} ({path}، نصب‌شده به دست گرداننده) {days} روز از تازه‌ترین نسخه {newest} عقب است. سایت‌ها با نسخه‌های قدیمی کار نمی‌کنند: لطفاً به‌روزش کنید."),
        (En, Msg::Downloading { short_id }) => format!("⬇️ Job {short_id}: downloading…"),
        (Fa, Msg::Downloading { short_id }) => format!("⬇️ کار {short_id}: در حال دانلود…"),
        (_, Msg::Progress { short_id, percent, downloaded, total, speed, eta }) => {
            let mut parts = Vec::new();
            if let Some(p) = percent {
                parts.push(format!("{p:.0}%"));
            }
            parts.push(match total {
                Some(t) => format!("{} / {}", size(*downloaded), size(*t)),
                None => size(*downloaded),
            });
            if let Some(s) = speed {
                parts.push(format!("{}/s", size(*s as u64)));
            }
            if let Some(e) = eta {
                parts.push(match lang { En => format!("ETA {}", duration(*e)), Fa => format!("زمان باقی‌مانده {}", duration(*e)) });
            }
            match lang {
                En => format!("⬇️ Job {short_id}: {}", parts.join(" · ")),
                Fa => format!("⬇️ کار {short_id}: {}", parts.join(" · ")),
            }
        }
        (En, Msg::Uploading { short_id }) => format!("⬆️ Job {short_id}: sending the file…"),
        (Fa, Msg::Uploading { short_id }) => format!("⬆️ کار {short_id}: در حال ارسال فایل…"),
        (En, Msg::WaitingRetry { short_id, attempt, max }) => format!("🔁 Job {short_id}: a temporary error; retrying (attempt {attempt} of {max})."),
        (Fa, Msg::WaitingRetry { short_id, attempt, max }) => format!("🔁 کار {short_id}: خطای موقت؛ تلاش دوباره ({attempt} از {max})."),
        (En, Msg::Delivered { short_id }) => format!("✅ Job {short_id}: sent."),
        (Fa, Msg::Delivered { short_id }) => format!("✅ کار {short_id}: ارسال شد."),
        (En, Msg::Failed { short_id, code, limit_mb }) => format!("❌ Job {short_id} failed: {}.", reason(lang, *code, *limit_mb)),
        (Fa, Msg::Failed { short_id, code, limit_mb }) => format!("❌ کار {short_id} ناموفق بود: {}.", reason(lang, *code, *limit_mb)),
        (En, Msg::Chosen { short_id, kind, max_height }) => format!("✅ Job {short_id}: {}. Starting soon…", chosen(lang, *kind, *max_height)),
        (Fa, Msg::Chosen { short_id, kind, max_height }) => format!("✅ کار {short_id}: {}. به‌زودی شروع می‌شود…", chosen(lang, *kind, *max_height)),
        (En, Msg::AlreadyAs { short_id, kind, max_height }) => format!("Job {short_id} is already downloading as {}.", chosen(lang, *kind, *max_height)),
        (Fa, Msg::AlreadyAs { short_id, kind, max_height }) => format!("کار {short_id} همین حالا به صورت {} دانلود می‌شود.", chosen(lang, *kind, *max_height)),
        (En, Msg::AlreadySent { short_id, kind, max_height }) => format!("Job {short_id} was already sent as {}.", chosen(lang, *kind, *max_height)),
        (Fa, Msg::AlreadySent { short_id, kind, max_height }) => format!("کار {short_id} قبلاً به صورت {} ارسال شد.", chosen(lang, *kind, *max_height)),
        (En, Msg::TooManySwitches { short_id, max }) => format!("Job {short_id} has changed form {max} times already; send the link again for another form."),
        (Fa, Msg::TooManySwitches { short_id, max }) => format!("شکل کار {short_id} تاکنون {max} بار عوض شده است؛ برای شکل دیگر، لینک را دوباره بفرستید."),
        (En, Msg::Switching { short_id, kind, max_height }) => format!("🔁 Job {short_id}: switching to {}; starting again…", chosen(lang, *kind, *max_height)),
        (Fa, Msg::Switching { short_id, kind, max_height }) => format!("🔁 کار {short_id}: تغییر به {}؛ از نو شروع می‌شود…", chosen(lang, *kind, *max_height)),
        (En, Msg::Saved) => "Saved.".into(),
        (En, Msg::Playlist { short_id, title, count, skipped, limit, unlisted, more_unknown }) => {
            let mut t = format!("📃 Playlist {title} (job {short_id}): {count} item(s) will come, one by one.");
            let n = skipped.len() as u64 + unlisted;
            if n > 0 {
                let more = if *more_unknown { " or more" } else { "" };
                t.push_str(&format!("\nSkipped {n}{more}:"));
                for s in skipped.iter().take(20) {
                    t.push_str(&format!("\n• {s}"));
                }
                if *unlisted > 0 {
                    t.push_str(&format!("\n• … and {unlisted} more over the playlist limit of {limit}"));
                } else if *more_unknown {
                    t.push_str(&format!("\n• … and any after them (the playlist limit is {limit})"));
                }
            }
            t
        }
        (Fa, Msg::Playlist { short_id, title, count, skipped, limit, unlisted, more_unknown }) => {
            let mut t = format!("📃 فهرست پخش {title} (کار {short_id}): {count} مورد یکی‌یکی فرستاده می‌شود.");
            let n = skipped.len() as u64 + unlisted;
            if n > 0 {
                let more = if *more_unknown { " یا بیشتر" } else { "" };
                t.push_str(&format!("\n{n}{more} مورد کنار گذاشته شد:"));
                for s in skipped.iter().take(20) {
                    t.push_str(&format!("\n• {s}"));
                }
                if *unlisted > 0 {
                    t.push_str(&format!("\n• … و {unlisted} مورد دیگر بیش از سقف {limit} موردی فهرست پخش"));
                } else if *more_unknown {
                    t.push_str(&format!("\n• … و هر موردی پس از آن‌ها (سقف فهرست پخش {limit} مورد است)"));
                }
            }
            t
        }
        (Fa, Msg::Saved) => "ذخیره شد.".into(),
        (En, Msg::WaitingForDisk { short_id }) => format!("⏸ Job {short_id} is waiting: the server is low on disk space. It will start by itself when space is back."),
        (Fa, Msg::WaitingForDisk { short_id }) => format!("⏸ کار {short_id} در انتظار است: فضای دیسک سرور کم است. وقتی فضا آزاد شود خودش شروع می‌شود."),
        (En, Msg::Cancelled { short_id }) => format!("🛑 Job {short_id} cancelled."),
        (Fa, Msg::Cancelled { short_id }) => format!("🛑 کار {short_id} لغو شد."),
        (En, Msg::NotFound { id }) => format!("No job {id} found. /jobs lists yours."),
        (Fa, Msg::NotFound { id }) => format!("کاری با شناسهٔ {id} پیدا نشد. /jobs کارهای شما را نشان می‌دهد."),
        (En, Msg::Ambiguous { id }) => format!("{id} matches several jobs; send more of the id."),
        (Fa, Msg::Ambiguous { id }) => format!("{id} با چند کار جور است؛ بخش بیشتری از شناسه را بفرستید."),
        (En, Msg::NotYours { id }) => format!("Job {id} is not yours."),
        (Fa, Msg::NotYours { id }) => format!("کار {id} متعلق به شما نیست."),
        (En, Msg::NotYourSettings) => "These are someone else's settings; send /settings for yours.".into(),
        (Fa, Msg::NotYourSettings) => "این تنظیمات مال کاربر دیگری است؛ برای تنظیمات خودتان /settings را بفرستید.".into(),
        (En, Msg::AlreadyFinished { short_id, state }) => format!("Job {short_id} is already {state}."),
        (Fa, Msg::AlreadyFinished { short_id, state }) => format!("کار {short_id} از قبل {} است.", state_fa(state)),
        (En, Msg::Retried { short_id }) => format!("🔁 Job {short_id} is queued again."),
        (Fa, Msg::Retried { short_id }) => format!("🔁 کار {short_id} دوباره در صف قرار گرفت."),
        (En, Msg::NotRetryable { short_id, state }) => format!("Job {short_id} is {state}; only failed jobs can be retried."),
        (Fa, Msg::NotRetryable { short_id, state }) => format!("کار {short_id} {} است؛ فقط کارهای ناموفق را می‌توان دوباره اجرا کرد.", state_fa(state)),
        (En, Msg::UsageJob) => "Usage: /job <id>".into(),
        (Fa, Msg::UsageJob) => "روش استفاده: /job <شناسه>".into(),
        (En, Msg::UsageCancel) => "Usage: /cancel <id>".into(),
        (Fa, Msg::UsageCancel) => "روش استفاده: /cancel <شناسه>".into(),
        (En, Msg::UsageRetry) => "Usage: /retry <id>".into(),
        (Fa, Msg::UsageRetry) => "روش استفاده: /retry <شناسه>".into(),
        (En, Msg::UsageAudio) => "Usage: /audio <link>".into(),
        (Fa, Msg::UsageAudio) => "روش استفاده: /audio <لینک>".into(),
        (_, Msg::JobList { lines }) => {
            let head = match lang { En => "Your jobs:", Fa => "کارهای شما:" };
            let mut s = head.to_string();
            for l in lines {
                let st = match lang { En => l.state.clone(), Fa => state_fa(&l.state).to_string() };
                s.push_str(&format!("\n{} · {} · {}", l.short_id, st, printable(&l.url)));
            }
            s
        }
        (En, Msg::NoJobs) => "You have no jobs yet. Send a link!".into(),
        (Fa, Msg::NoJobs) => "هنوز کاری ندارید. یک لینک بفرستید!".into(),
        (_, Msg::JobDetails(d)) => job_details(lang, d),
        (_, Msg::Settings { kind, max_height, ask, lang: chosen_lang }) => settings(lang, *kind, *max_height, *ask, chosen_lang.as_deref()),
        (En, Msg::Internal) => "Something went wrong on our side; please try again shortly.".into(),
        (Fa, Msg::Internal) => "مشکلی در سمت ما پیش آمد؛ لطفاً کمی بعد دوباره امتحان کنید.".into(),
    }
}

/// "video", or "video ≤720p" when a height was picked.
fn chosen(lang: Lang, kind: MediaKind, max_height: Option<u32>) -> String {
    match max_height {
        Some(h) => format!("{} ≤{h}p", label(lang, Label::Kind(kind))),
        None => label(lang, Label::Kind(kind)),
    }
}

fn job_details(lang: Lang, d: &JobDetails) -> String {
    let st = |s: JobState| match lang {
        Lang::En => s.name(),
        Lang::Fa => state_fa(s.name()),
    };
    let names: [&str; 7] = match lang {
        Lang::En => [
            "Job", "state", "link", "kind", "attempts", "rescues", "title",
        ],
        Lang::Fa => ["کار", "وضعیت", "لینک", "نوع", "تلاش‌ها", "نجات‌ها", "عنوان"],
    };
    let mut s = format!(
        "{} {}\n{}: {}\n{}: {}\n{}: {}\n{}: {} ({} {})",
        names[0],
        d.short_id,
        names[1],
        st(d.state),
        names[2],
        printable(&d.url),
        names[3],
        label(lang, Label::Kind(d.kind)),
        names[4],
        d.attempts,
        names[5],
        d.rescues
    );
    if let Some(t) = &d.title {
        s.push_str(&format!("\n{}: {}", names[6], printable(t)));
    }
    if let Some((code, text)) = &d.error {
        let head = match lang {
            Lang::En => "error",
            Lang::Fa => "خطا",
        };
        s.push_str(&format!(
            "\n{head}: {} ({code}: {})",
            reason(lang, *code, 0),
            printable(text)
        ));
    }
    s.push_str(match lang {
        Lang::En => "\nhistory:",
        Lang::Fa => "\nتاریخچه:",
    });
    for (state, at) in &d.history {
        s.push_str(&format!("\n  {} {}", iso(*at), st(*state)));
    }
    s
}

fn settings(
    lang: Lang,
    kind: MediaKind,
    max_height: Option<u32>,
    ask: bool,
    chosen_lang: Option<&str>,
) -> String {
    let quality = max_height
        .map(|h| format!("{h}p"))
        .unwrap_or_else(|| label(lang, Label::Best));
    let language = chosen_lang
        .map(str::to_string)
        .unwrap_or_else(|| label(lang, Label::Auto));
    let kind = label(lang, Label::Kind(kind));
    let ask = label(lang, Label::YesNo(ask));
    match lang {
        Lang::En => format!(
            "Your settings:\nformat: {kind}\nquality: {quality}\nask on each link: {ask}\nlanguage: {language}"
        ),
        Lang::Fa => format!(
            "تنظیمات شما:\nنوع: {kind}\nکیفیت: {quality}\nپرسیدن برای هر لینک: {ask}\nزبان: {language}"
        ),
    }
}

fn minutes_until(at: Millis, now: Millis) -> u64 {
    at.saturating_sub(now).div_ceil(60_000).max(1)
}

fn state_fa(state: &str) -> &'static str {
    match state {
        "queued" => "در صف",
        "downloading" => "در حال دانلود",
        "uploading" => "در حال ارسال",
        "cleaning" => "در حال پاک‌سازی",
        "done" => "انجام‌شده",
        "failed" => "ناموفق",
        _ => "نامشخص",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_details_strip_control_characters_from_title_link_and_error() {
        let d = JobDetails {
            short_id: "abcd1234".into(),
            state: JobState::Failed,
            url: "https://example.com/\u{1b}]0;x\u{7}".into(),
            kind: MediaKind::Video,
            attempts: 1,
            rescues: 0,
            title: Some("Evil\u{1b}[2J\u{9b}31m\u{202E}txt.exe\nline".into()),
            error: Some((
                FailureCode::Unknown,
                "ERROR: \u{1b}[1mbold\rover\u{2066}".into(),
            )),
            history: vec![(JobState::Queued, 1), (JobState::Failed, 2)],
        };
        for lang in [Lang::En, Lang::Fa] {
            let text = render(lang, &Msg::JobDetails(d.clone()));
            let bad = crate::i18n::leftovers_in_layout(&text);
            assert!(bad.is_empty(), "{bad:?} in {text}");
            assert!(text.contains("Evil[2J31mtxt.exe line"), "{text}");
            assert!(text.contains("ERROR: [1mbold over"), "{text}");
            // Our own layout: head, state, link, kind, attempts, title,
            // error, "history:", two events.
            assert_eq!(text.lines().count(), 10, "{text}");
        }
    }

    #[test]
    fn language_is_picked_from_the_code_with_a_default() {
        assert_eq!(Lang::pick(Some("fa"), Lang::En), Lang::Fa);
        assert_eq!(Lang::pick(Some("fa-IR"), Lang::En), Lang::Fa);
        assert_eq!(Lang::pick(Some("en-US"), Lang::Fa), Lang::En);
        assert_eq!(Lang::pick(Some("de"), Lang::Fa), Lang::Fa);
        assert_eq!(Lang::pick(None, Lang::En), Lang::En);
    }

    #[test]
    fn too_large_names_the_limit_in_both_languages() {
        let m = Msg::Failed {
            short_id: "abcd1234".into(),
            code: FailureCode::TooLarge,
            limit_mb: 50,
        };
        assert!(render(Lang::En, &m).contains("50 MB"));
        assert!(render(Lang::Fa, &m).contains("50 مگابایت"));
        let m = Msg::Failed {
            short_id: "abcd1234".into(),
            code: FailureCode::DownloadTooLarge,
            limit_mb: 100,
        };
        assert!(
            render(Lang::En, &m).contains("100 MB limit"),
            "{}",
            render(Lang::En, &m)
        );
        assert!(
            render(Lang::Fa, &m).contains("100 مگابایت"),
            "{}",
            render(Lang::Fa, &m)
        );
    }

    #[test]
    fn hourly_limit_says_when_to_try_again() {
        let m = Msg::LimitHourly {
            limit: 20,
            retry_at: 10 * 60_000 + 1,
            now: 0,
        };
        assert!(
            render(Lang::En, &m).contains("11 minutes"),
            "{}",
            render(Lang::En, &m)
        );
    }

    #[test]
    fn progress_shows_percent_size_speed_and_eta() {
        let m = Msg::Progress {
            short_id: "x".into(),
            percent: Some(42.4),
            downloaded: 5 * 1024 * 1024,
            total: Some(12 * 1024 * 1024),
            speed: Some(1024.0 * 1024.0),
            eta: Some(75),
        };
        assert_eq!(
            render(Lang::En, &m),
            "⬇️ Job x: 42% · 5.0 MB / 12.0 MB · 1.0 MB/s · ETA 1:15"
        );
    }
}
