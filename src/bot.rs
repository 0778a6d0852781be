//! Telegram handlers. Each one parses the update, calls one function of
//! [`crate::core`], and replies. Long work never runs here: teloxide handles a
//! chat's updates one at a time, so a slow handler would stall that chat.

use std::sync::Arc;

use teloxide::dispatching::UpdateFilterExt;
use teloxide::prelude::*;
use teloxide::types::{
    CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, MessageId, ReplyParameters,
};
use tokio_util::sync::CancellationToken;

use crate::core::{
    self, Access, Asker, CancelOutcome, ChooseOutcome, Core, LinkRequest, Lookup, RetryOutcome,
    Submission,
};
use crate::i18n::{render, JobLine, Lang, Msg};
use crate::job::{now_ms, Job, JobId, JobOptions, MediaKind};
use crate::netguard::LinkEntity;
use crate::store::{Refusal, UserSettings};

/// Run long polling until `shutdown` fires. Updates in flight finish first,
/// so an accepted link is always answered.
pub async fn run_dispatcher(bot: Bot, core: Arc<Core>, shutdown: CancellationToken) {
    let handler = dptree::entry()
        .branch(Update::filter_message().endpoint(on_message))
        .branch(Update::filter_callback_query().endpoint(on_callback));
    let mut dispatcher = Dispatcher::builder(bot, handler)
        .dependencies(dptree::deps![core])
        .default_handler(|_| async {})
        .error_handler(LoggingErrorHandler::with_custom_text("handler error"))
        .build();
    let token = dispatcher.shutdown_token();
    let stopper = tokio::spawn(async move {
        shutdown.cancelled().await;
        // `shutdown` refuses while the dispatcher is still starting; retry.
        for _ in 0..200 {
            match token.shutdown() {
                Ok(done) => {
                    done.await;
                    return;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
            }
        }
    });
    dispatcher.dispatch().await;
    stopper.abort();
}

/// A parsed command: name (lowercase, without `/` and `@bot`) and argument.
fn parse_command(text: &str) -> Option<(String, String)> {
    let text = text.trim_start();
    let rest = text.strip_prefix('/')?;
    let (head, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let name = head.split('@').next()?.to_ascii_lowercase();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some((name, arg.trim().to_string()))
}

/// Telegram's message length limit, in characters (UTF-16 units, to be safe).
const TEXT_MAX: usize = 4096;

async fn reply(bot: &Bot, msg: &Message, text: String) -> ResponseResult<Message> {
    let text = if text.encode_utf16().count() > TEXT_MAX {
        let mut cut = String::new();
        let mut used = 0;
        for c in text.chars() {
            if used + c.len_utf16() > TEXT_MAX - 1 {
                break;
            }
            used += c.len_utf16();
            cut.push(c);
        }
        cut.push('…');
        cut
    } else {
        text
    };
    bot.send_message(msg.chat.id, text)
        .reply_parameters(ReplyParameters::new(msg.id).allow_sending_without_reply())
        .await
}

async fn on_message(bot: Bot, msg: Message, core: Arc<Core>) -> ResponseResult<()> {
    let Some(user) = msg.from.as_ref() else {
        return Ok(());
    };
    if user.is_bot {
        return Ok(());
    }
    let user_id = user.id.0;
    let access = core.access(user_id);
    let settings = if access == Access::Denied {
        UserSettings::default()
    } else {
        core::user_settings(&core, user_id)
            .await
            .unwrap_or_default()
    };
    let lang = Lang::pick(
        settings.lang.as_deref().or(user.language_code.as_deref()),
        core.default_lang,
    );
    if access == Access::Denied {
        reply(&bot, &msg, render(lang, &Msg::NotAllowed)).await?;
        return Ok(());
    }
    let asker = Asker {
        user_id,
        admin: access == Access::Admin,
    };
    let text = msg.text().or(msg.caption()).unwrap_or("").to_string();
    let entities: Vec<LinkEntity> = msg
        .entities()
        .or(msg.caption_entities())
        .unwrap_or(&[])
        .iter()
        .filter_map(LinkEntity::from_telegram)
        .collect();

    let say = |m: Msg| render(lang, &m);
    if let Some((cmd, arg)) = parse_command(&text) {
        let out = match cmd.as_str() {
            "start" | "help" => say(Msg::Help),
            "audio" if arg.is_empty() => say(Msg::UsageAudio),
            "audio" => {
                // Asked for audio explicitly: no choice to offer.
                let options = JobOptions {
                    kind: MediaKind::Audio,
                    max_height: None,
                };
                return submit(&bot, &msg, &core, lang, text, entities, options, false).await;
            }
            "settings" => {
                let (text, keyboard) = settings_view(lang, &settings);
                bot.send_message(msg.chat.id, text)
                    .reply_markup(keyboard)
                    .reply_parameters(ReplyParameters::new(msg.id).allow_sending_without_reply())
                    .await?;
                return Ok(());
            }
            // Admins see the whole queue; `/jobs failed` the recent failures.
            "jobs" if asker.admin && arg.eq_ignore_ascii_case("failed") => {
                match crate::report::admin_failures(&core, 20).await {
                    Ok(t) => t,
                    Err(e) => internal(lang, e),
                }
            }
            "jobs" if asker.admin => match crate::report::admin_jobs(&core).await {
                Ok(t) => t,
                Err(e) => internal(lang, e),
            },
            "jobs" => match core::user_jobs(&core, user_id, 15).await {
                Ok(jobs) if jobs.is_empty() => say(Msg::NoJobs),
                Ok(jobs) => say(Msg::JobList {
                    lines: jobs.iter().map(job_line).collect(),
                }),
                Err(e) => internal(lang, e),
            },
            "job" if arg.is_empty() => say(Msg::UsageJob),
            "job" => match core::find_job(&core, asker, &arg).await {
                Ok(Lookup::Found(j)) => say(Msg::JobDetails {
                    text: job_details(&j),
                }),
                Ok(other) => lookup_text(lang, other, &arg),
                Err(e) => internal(lang, e),
            },
            "cancel" if arg.is_empty() => say(Msg::UsageCancel),
            "cancel" => cancel_text(lang, core::cancel(&core, asker, &arg).await, &arg).0,
            "retry" if arg.is_empty() => say(Msg::UsageRetry),
            "retry" => match core::retry(&core, asker, &arg).await {
                Ok(RetryOutcome::Requeued(j)) => say(Msg::Retried {
                    short_id: j.id.short(),
                }),
                Ok(RetryOutcome::NotFailed(j)) => say(Msg::NotRetryable {
                    short_id: j.id.short(),
                    state: j.state.name().into(),
                }),
                Ok(RetryOutcome::Lookup(l)) => lookup_text(lang, l, &arg),
                Err(e) => internal(lang, e),
            },
            "health" if !asker.admin => say(Msg::AdminOnly),
            "health" => match crate::report::health_text(&core).await {
                Ok(t) => t,
                Err(e) => internal(lang, e),
            },
            _ => say(Msg::Help),
        };
        reply(&bot, &msg, out).await?;
        return Ok(());
    }
    let options = JobOptions {
        kind: settings.kind,
        max_height: settings.max_height,
    };
    let ask = settings.ask && core.config.telegram.choice_wait_secs > 0;
    submit(&bot, &msg, &core, lang, text, entities, options, ask).await
}

#[allow(clippy::too_many_arguments)]
async fn submit(
    bot: &Bot,
    msg: &Message,
    core: &Core,
    lang: Lang,
    text: String,
    entities: Vec<LinkEntity>,
    options: JobOptions,
    ask: bool,
) -> ResponseResult<()> {
    let Some(user) = msg.from.as_ref() else {
        return Ok(());
    };
    let req = LinkRequest {
        chat_id: msg.chat.id.0,
        user_id: user.id.0,
        message_id: msg.id.0,
        lang,
        text,
        entities,
        options,
        // While the user may still choose, workers leave the job alone.
        not_before: ask.then(|| now_ms() + core.config.telegram.choice_wait_secs * 1000),
    };
    let report = match core::submit(core, req).await {
        Ok(r) => r,
        Err(e) => {
            reply(bot, msg, internal(lang, e)).await?;
            return Ok(());
        }
    };
    if report.outcomes.is_empty() {
        reply(bot, msg, render(lang, &Msg::NoLink)).await?;
        return Ok(());
    }
    let mut refusals = Vec::new();
    for outcome in report.outcomes {
        match outcome {
            // Answered already, before a crash made Telegram send it again.
            Submission::Accepted {
                job,
                duplicate: true,
                ..
            } if job.status_msg_id.is_some() => {}
            Submission::Accepted { job, position, .. } => {
                // One status message per job: it is edited with that job's
                // progress and final line.
                let text = render(
                    lang,
                    &Msg::Accepted {
                        short_id: job.id.short(),
                        position,
                    },
                );
                let mut send = bot.send_message(msg.chat.id, text).reply_parameters(
                    ReplyParameters::new(MessageId(job.request_msg_id))
                        .allow_sending_without_reply(),
                );
                if ask {
                    send = send.reply_markup(choice_keyboard(lang, job.id, &[]));
                }
                let sent = send.await?;
                match core::attach_status(core, job.id, sent.id.0).await {
                    // Finished before its status message was recorded (a
                    // cache hit, a fast failure): the worker has already sent
                    // the file or its own failure reply, so the
                    // acknowledgement has nothing left to say.
                    Ok(Some(j)) if j.state.is_finished() => {
                        let _ = bot.delete_message(msg.chat.id, sent.id).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(job = %job.id, error = %e, "cannot record the status message")
                    }
                }
                if ask {
                    core::offer_quality(core, job.id);
                }
            }
            Submission::BadLink { link, error } => refusals.push(render(
                lang,
                &Msg::LinkRefused {
                    link,
                    code: error.code(),
                    detail: error.to_string(),
                },
            )),
            Submission::Refused { refusal, .. } => {
                refusals.push(render(lang, &refusal_msg(refusal)))
            }
        }
    }
    if report.extra_ignored {
        refusals.push(render(
            lang,
            &Msg::IgnoredExtraLinks {
                max: core.config.telegram.max_links_per_message,
            },
        ));
    }
    refusals.dedup();
    if !refusals.is_empty() {
        reply(bot, msg, refusals.join("\n")).await?;
    }
    Ok(())
}

fn refusal_msg(r: Refusal) -> Msg {
    match r {
        Refusal::UserActive { limit } => Msg::LimitActive { limit },
        Refusal::UserHourly { limit, retry_at } => Msg::LimitHourly {
            limit,
            retry_at,
            now: now_ms(),
        },
        Refusal::QueueFull { .. } => Msg::QueueFull,
    }
}

fn lookup_text(lang: Lang, l: Lookup, id: &str) -> String {
    let id = id.to_string();
    render(
        lang,
        &match l {
            Lookup::NotYours => Msg::NotYours { id },
            Lookup::Ambiguous => Msg::Ambiguous { id },
            Lookup::NotFound | Lookup::Found(_) => Msg::NotFound { id },
        },
    )
}

fn internal(lang: Lang, e: impl std::fmt::Display) -> String {
    tracing::error!(error = %e, "command failed");
    render(lang, &Msg::Internal)
}

fn job_line(j: &Job) -> JobLine {
    JobLine {
        short_id: j.id.short(),
        state: j.state.name().into(),
        url: j.url.clone(),
    }
}

/// `/job <id>`: the job and its history (times in UTC).
pub fn job_details(j: &Job) -> String {
    let mut s = format!(
        "Job {}\nstate: {}\nlink: {}\nkind: {}\nattempts: {} (rescues {})",
        j.id.short(),
        j.state,
        j.url,
        j.options.kind.name(),
        j.attempts,
        j.rescues
    );
    if let Some(t) = &j.title {
        s.push_str(&format!("\ntitle: {t}"));
    }
    if let Some(e) = j.failure.as_ref().or(j.last_error.as_ref()) {
        s.push_str(&format!("\nerror: {} ({})", e.code, e.text));
    }
    s.push_str("\nhistory:");
    for (state, at) in &j.history {
        s.push_str(&format!("\n  {} {}", crate::cli::iso(*at), state));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn button_data_round_trips_and_fits_telegram_limits() {
        let id = JobId::new();
        for k in [MediaKind::Video, MediaKind::Audio, MediaKind::Document] {
            let data = format!("k:{id}:{}", kind_code(k));
            assert!(data.len() <= 64);
            assert_eq!(parse_press(&data), Some(Press::Choose(id, k)));
        }
        assert_eq!(parse_press(&format!("c:{id}")), Some(Press::Cancel(id)));
        assert_eq!(
            parse_press(&format!("q:{id}:720")),
            Some(Press::Quality(id, 720))
        );
        assert_eq!(
            parse_press("s:q:720"),
            Some(Press::Setting("q".into(), "720".into()))
        );
        assert_eq!(parse_press("k:nope:v"), None);
        assert_eq!(parse_press("zzz"), None);
    }

    #[test]
    fn commands_parse_with_bot_names_and_arguments() {
        assert_eq!(parse_command("/start"), Some(("start".into(), "".into())));
        assert_eq!(
            parse_command("/Cancel@tgdl_bot  ab12cd34 "),
            Some(("cancel".into(), "ab12cd34".into()))
        );
        assert_eq!(
            parse_command("/audio https://e.com/x"),
            Some(("audio".into(), "https://e.com/x".into()))
        );
        assert_eq!(parse_command("https://e.com/x"), None);
        assert_eq!(parse_command("/"), None);
        assert_eq!(parse_command("/../etc"), None);
    }
}

fn button(label: impl Into<String>, data: String) -> InlineKeyboardButton {
    InlineKeyboardButton::callback(label.into(), data)
}

/// Video / Audio / Document / Cancel under a new job's status message, and
/// a row of video heights once the quality probe found more than one.
/// Callback data stays well under Telegram's 64 bytes: `k:<id>:<v|a|d>`,
/// `q:<id>:<height>`, `c:<id>`.
pub(crate) fn choice_keyboard(lang: Lang, id: JobId, heights: &[u32]) -> InlineKeyboardMarkup {
    let l = |en: &str, fa: &str| {
        if lang == Lang::Fa {
            fa.to_string()
        } else {
            en.to_string()
        }
    };
    let mut rows = vec![vec![
        button(l("🎬 Video", "🎬 ویدیو"), format!("k:{id}:v")),
        button(l("🎵 Audio", "🎵 صوت"), format!("k:{id}:a")),
        button(l("📄 Document", "📄 فایل"), format!("k:{id}:d")),
    ]];
    if heights.len() > 1 {
        rows.push(
            heights
                .iter()
                .map(|h| button(format!("{h}p"), format!("q:{id}:{h}")))
                .collect(),
        );
    }
    rows.push(vec![button(l("✖ Cancel", "✖ لغو"), format!("c:{id}"))]);
    InlineKeyboardMarkup::new(rows)
}

const QUALITIES: [u32; 4] = [1080, 720, 480, 360];

/// The `/settings` text and its buttons (`s:<field>:<value>`).
fn settings_view(lang: Lang, s: &UserSettings) -> (String, InlineKeyboardMarkup) {
    let fa = lang == Lang::Fa;
    let quality = s.max_height.map(|h| format!("{h}p")).unwrap_or_else(|| {
        if fa {
            "بهترین".into()
        } else {
            "best".into()
        }
    });
    let language = s.lang.clone().unwrap_or_else(|| {
        if fa {
            "خودکار".into()
        } else {
            "auto".into()
        }
    });
    let text = if fa {
        format!(
            "تنظیمات شما:\nنوع: {}\nکیفیت: {}\nپرسیدن برای هر لینک: {}\nزبان: {}",
            kind_label(lang, s.kind),
            quality,
            if s.ask { "بله" } else { "خیر" },
            language
        )
    } else {
        format!(
            "Your settings:\nformat: {}\nquality: {}\nask on each link: {}\nlanguage: {}",
            kind_label(lang, s.kind),
            quality,
            if s.ask { "yes" } else { "no" },
            language
        )
    };
    let mark = |on: bool, label: String| if on { format!("• {label}") } else { label };
    let kinds = [MediaKind::Video, MediaKind::Audio, MediaKind::Document].map(|k| {
        button(
            mark(s.kind == k, kind_label(lang, k)),
            format!("s:k:{}", kind_code(k)),
        )
    });
    let mut qualities = vec![button(
        mark(
            s.max_height.is_none(),
            if fa {
                "بهترین".into()
            } else {
                "best".into()
            },
        ),
        "s:q:0".into(),
    )];
    qualities.extend(QUALITIES.map(|h| {
        button(
            mark(s.max_height == Some(h), format!("{h}p")),
            format!("s:q:{h}"),
        )
    }));
    let ask = if fa {
        if s.ask {
            "پرسیدن: روشن"
        } else {
            "پرسیدن: خاموش"
        }
    } else if s.ask {
        "ask: on"
    } else {
        "ask: off"
    };
    let langs = vec![
        button(
            mark(s.lang.as_deref() == Some("en"), "English".into()),
            "s:l:en".into(),
        ),
        button(
            mark(s.lang.as_deref() == Some("fa"), "فارسی".into()),
            "s:l:fa".into(),
        ),
        button(
            mark(
                s.lang.is_none(),
                if fa {
                    "خودکار".into()
                } else {
                    "auto".into()
                },
            ),
            "s:l:-".into(),
        ),
    ];
    let keyboard = InlineKeyboardMarkup::new(vec![
        kinds.to_vec(),
        qualities,
        vec![button(ask, format!("s:a:{}", if s.ask { 0 } else { 1 }))],
        langs,
    ]);
    (text, keyboard)
}

fn kind_code(k: MediaKind) -> char {
    match k {
        MediaKind::Video => 'v',
        MediaKind::Audio => 'a',
        MediaKind::Document => 'd',
    }
}

fn kind_from_code(c: &str) -> Option<MediaKind> {
    match c {
        "v" => Some(MediaKind::Video),
        "a" => Some(MediaKind::Audio),
        "d" => Some(MediaKind::Document),
        _ => None,
    }
}

fn kind_label(lang: Lang, k: MediaKind) -> String {
    let fa = lang == Lang::Fa;
    match k {
        MediaKind::Video => {
            if fa {
                "ویدیو"
            } else {
                "video"
            }
        }
        MediaKind::Audio => {
            if fa {
                "صوت"
            } else {
                "audio"
            }
        }
        MediaKind::Document => {
            if fa {
                "فایل"
            } else {
                "document"
            }
        }
    }
    .to_string()
}

/// What a callback button asks for.
#[derive(Debug, PartialEq, Eq)]
enum Press {
    Choose(JobId, MediaKind),
    Quality(JobId, u32),
    Cancel(JobId),
    Setting(String, String),
}

fn parse_press(data: &str) -> Option<Press> {
    let mut parts = data.splitn(3, ':');
    match (parts.next()?, parts.next(), parts.next()) {
        ("k", Some(id), Some(k)) => Some(Press::Choose(id.parse().ok()?, kind_from_code(k)?)),
        ("c", Some(id), None) => Some(Press::Cancel(id.parse().ok()?)),
        ("q", Some(id), Some(h)) => Some(Press::Quality(id.parse().ok()?, h.parse().ok()?)),
        ("s", Some(field), Some(value)) => {
            Some(Press::Setting(field.to_string(), value.to_string()))
        }
        _ => None,
    }
}

/// What `/cancel` and the Cancel button say, and whether the job was
/// cancelled (the button then turns the status message into that line).
fn cancel_text(
    lang: Lang,
    outcome: Result<CancelOutcome, crate::store::StoreError>,
    id: &str,
) -> (String, bool) {
    match outcome {
        Ok(CancelOutcome::Cancelled(j)) => (
            render(
                lang,
                &Msg::Cancelled {
                    short_id: j.id.short(),
                },
            ),
            true,
        ),
        Ok(CancelOutcome::AlreadyFinished(j)) => (
            render(
                lang,
                &Msg::AlreadyFinished {
                    short_id: j.id.short(),
                    state: j.state.name().into(),
                },
            ),
            false,
        ),
        Ok(CancelOutcome::Lookup(l)) => (lookup_text(lang, l, id), false),
        Err(e) => (internal(lang, e), false),
    }
}

/// Apply a choice and say what happened; on success the status message
/// becomes the chosen line (replacing the text drops the buttons).
#[allow(clippy::too_many_arguments)]
async fn chosen_text(
    bot: &Bot,
    core: &Core,
    asker: Asker,
    lang: Lang,
    id: JobId,
    choice: core::Choice,
    label: String,
    message: Option<(ChatId, MessageId)>,
) -> String {
    match core::choose(core, asker, id, choice).await {
        Ok(ChooseOutcome::Chosen(j)) => {
            let line = render(
                lang,
                &Msg::Chosen {
                    short_id: j.id.short(),
                    kind: label,
                },
            );
            if let Some((chat, mid)) = message {
                let _ = bot.edit_message_text(chat, mid, line.clone()).await;
            }
            line
        }
        Ok(ChooseOutcome::TooLate(j)) => render(
            lang,
            &Msg::TooLate {
                short_id: j.id.short(),
            },
        ),
        Ok(ChooseOutcome::Lookup(l)) => lookup_text(lang, l, &id.short()),
        Err(e) => internal(lang, e),
    }
}

/// Inline buttons: the choice on a new job, its cancel, and `/settings`.
async fn on_callback(bot: Bot, q: CallbackQuery, core: Arc<Core>) -> ResponseResult<()> {
    let user_id = q.from.id.0;
    let access = core.access(user_id);
    let settings = core::user_settings(&core, user_id)
        .await
        .unwrap_or_default();
    let lang = Lang::pick(
        settings.lang.as_deref().or(q.from.language_code.as_deref()),
        core.default_lang,
    );
    let asker = Asker {
        user_id,
        admin: access == Access::Admin,
    };
    let message = q.regular_message().map(|m| (m.chat.id, m.id));
    let press = q.data.as_deref().and_then(parse_press);
    let answer = |text: String| {
        let bot = bot.clone();
        let id = q.id.clone();
        async move { bot.answer_callback_query(id).text(text).await.map(|_| ()) }
    };
    if access == Access::Denied {
        return answer(render(lang, &Msg::NotAllowed)).await;
    }
    match press {
        None => answer(render(lang, &Msg::Help)).await,
        Some(Press::Choose(id, kind)) => {
            let label = kind_label(lang, kind);
            let text = chosen_text(
                &bot,
                &core,
                asker,
                lang,
                id,
                core::Choice::Kind(kind),
                label,
                message,
            )
            .await;
            answer(text).await
        }
        Some(Press::Quality(id, height)) => {
            let label = format!("{} ≤{height}p", kind_label(lang, MediaKind::Video));
            let text = chosen_text(
                &bot,
                &core,
                asker,
                lang,
                id,
                core::Choice::Height(height),
                label,
                message,
            )
            .await;
            answer(text).await
        }
        Some(Press::Cancel(id)) => {
            let (text, cancelled) = cancel_text(
                lang,
                core::cancel(&core, asker, &id.to_string()).await,
                &id.short(),
            );
            if let (true, Some((chat, mid))) = (cancelled, message) {
                let _ = bot.edit_message_text(chat, mid, text.clone()).await;
            }
            answer(text).await
        }
        Some(Press::Setting(field, value)) => {
            let changed = core::change_settings(&core, user_id, move |s| {
                match (field.as_str(), value.as_str()) {
                    ("k", v) => {
                        if let Some(k) = kind_from_code(v) {
                            s.kind = k
                        }
                    }
                    ("q", v) => s.max_height = v.parse::<u32>().ok().filter(|h| *h > 0),
                    ("a", v) => s.ask = v == "1",
                    ("l", "en") => s.lang = Some("en".into()),
                    ("l", "fa") => s.lang = Some("fa".into()),
                    ("l", _) => s.lang = None,
                    _ => {}
                }
            })
            .await;
            match changed {
                Ok(new) => {
                    let lang = Lang::pick(
                        new.lang.as_deref().or(q.from.language_code.as_deref()),
                        core.default_lang,
                    );
                    let (text, keyboard) = settings_view(lang, &new);
                    if let Some((chat, mid)) = message {
                        let _ = bot
                            .edit_message_text(chat, mid, text)
                            .reply_markup(keyboard)
                            .await;
                    }
                    answer(render(lang, &Msg::Saved)).await
                }
                Err(e) => answer(internal(lang, e)).await,
            }
        }
    }
}
