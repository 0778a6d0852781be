//! Telegram handlers. Each one parses the update, calls one function of
//! [`crate::core`], and replies. Long work never runs here: teloxide handles a
//! chat's updates one at a time, so a slow handler would stall that chat.

use std::sync::Arc;

use teloxide::dispatching::UpdateFilterExt;
use teloxide::prelude::*;
use teloxide::types::{MessageId, ReplyParameters};
use tokio_util::sync::CancellationToken;

use crate::core::{
    self, Access, Asker, CancelOutcome, Core, LinkRequest, Lookup, RetryOutcome, Submission,
};
use crate::i18n::{render, JobLine, Lang, Msg};
use crate::job::{now_ms, Job, JobOptions, MediaKind};
use crate::netguard::LinkEntity;
use crate::store::Refusal;

/// Run long polling until `shutdown` fires. Updates in flight finish first,
/// so an accepted link is always answered.
pub async fn run_dispatcher(bot: Bot, core: Arc<Core>, shutdown: CancellationToken) {
    let handler = dptree::entry().branch(Update::filter_message().endpoint(on_message));
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
    let lang = Lang::pick(user.language_code.as_deref(), core.default_lang);
    let access = core.access(user_id);
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
                let options = JobOptions {
                    kind: MediaKind::Audio,
                    max_height: None,
                };
                return submit(&bot, &msg, &core, lang, text, entities, options).await;
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
            "cancel" => match core::cancel(&core, asker, &arg).await {
                Ok(CancelOutcome::Cancelled(j)) => say(Msg::Cancelled {
                    short_id: j.id.short(),
                }),
                Ok(CancelOutcome::AlreadyFinished(j)) => say(Msg::AlreadyFinished {
                    short_id: j.id.short(),
                    state: j.state.name().into(),
                }),
                Ok(CancelOutcome::Lookup(l)) => lookup_text(lang, l, &arg),
                Err(e) => internal(lang, e),
            },
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
    submit(
        &bot,
        &msg,
        &core,
        lang,
        text,
        entities,
        JobOptions::default(),
    )
    .await
}

async fn submit(
    bot: &Bot,
    msg: &Message,
    core: &Core,
    lang: Lang,
    text: String,
    entities: Vec<LinkEntity>,
    options: JobOptions,
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
                let sent = bot
                    .send_message(msg.chat.id, text)
                    .reply_parameters(
                        ReplyParameters::new(MessageId(job.request_msg_id))
                            .allow_sending_without_reply(),
                    )
                    .await?;
                if let Err(e) = core::attach_status(core, job.id, sent.id.0).await {
                    tracing::warn!(job = %job.id, error = %e, "cannot record the status message");
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
