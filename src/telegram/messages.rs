//! Messages: a command, or links to download.

use std::sync::Arc;

use teloxide::types::{InlineKeyboardMarkup, Message};

use super::commands::{self, Command, Parsed};
use super::replies::{
    cancel_text, internal, job_details, job_line, lookup_text, refusal_msg, reply,
};
use super::Deps;
use crate::botapi::board::{self, Board};
use crate::botapi::keyboard::{choice_keyboard, settings_keyboard};
use crate::botapi::pacer::{PaceError, Priority};
use crate::botapi::Api;
use crate::i18n::{render, Lang, Msg};
use crate::job::{now_ms, Job, JobOptions, MediaKind};
use crate::net::{self, LinkEntity};
use crate::ops::report;
use crate::ops::update::Request;
use crate::pipeline::service::{Access, Asker, LinkRequest, Lookup, RetryOutcome, Submission};
use crate::pipeline::JobService;
use crate::store::UserSettings;

pub(super) async fn on_message(msg: Message, deps: Arc<Deps>) -> Result<(), PaceError> {
    let (api, jobs) = (&deps.api, &deps.jobs);
    let Some(user) = msg.from.as_ref() else {
        return Ok(());
    };
    if user.is_bot {
        return Ok(());
    }
    let user_id = user.id.0;
    let access = jobs.access(user_id);
    let settings = if access == Access::Denied {
        UserSettings::default()
    } else {
        jobs.user_settings(user_id).await.unwrap_or_default()
    };
    let lang = Lang::pick(
        settings.lang.as_deref().or(user.language_code.as_deref()),
        jobs.default_lang(),
    );
    let text = msg.text().or(msg.caption()).unwrap_or("").to_string();
    let entities: Vec<LinkEntity> = msg
        .entities()
        .or(msg.caption_entities())
        .unwrap_or(&[])
        .iter()
        .filter_map(LinkEntity::from_telegram)
        .collect();
    let parsed = commands::parse(&text, &deps.username);
    // In a group (a negative chat id) people talk among themselves: a
    // message without a link that is not one of our commands gets no reply
    // at all, not help, "no link" or "not allowed".
    let chatter = msg.chat.id.0 < 0
        && !matches!(parsed, Parsed::Command(_))
        && net::extract_links(&text, &entities, 1).is_empty();
    if chatter {
        return Ok(());
    }
    if access == Access::Denied {
        reply(api, &msg, render(lang, &Msg::NotAllowed)).await?;
        return Ok(());
    }
    let asker = Asker {
        user_id,
        admin: access == Access::Admin,
    };

    let say = |m: Msg| render(lang, &m);
    let help = || {
        say(Msg::Help {
            commands: commands::listed(),
        })
    };
    let command = match parsed {
        Parsed::Command(c) => c,
        Parsed::ForAnotherBot => return Ok(()),
        Parsed::Unknown => {
            reply(api, &msg, help()).await?;
            return Ok(());
        }
        Parsed::NotACommand => {
            let options = JobOptions {
                kind: settings.kind,
                max_height: settings.max_height,
            };
            // A group that had a link within the minute is busy: its next
            // links start at once and share a status message, since the
            // group gets 20 messages a minute (`botapi::board`).
            let chat = msg.chat.id.0;
            let busy_group = board::is_group(chat) && api.boards.busy(chat);
            let ask = settings.ask && jobs.config.telegram.choice_wait_secs > 0 && !busy_group;
            return submit(&msg, &deps, lang, text, entities, options, ask).await;
        }
    };
    let out = match command {
        Command::Start | Command::Help => help(),
        Command::Audio(arg) if arg.is_empty() => say(Msg::UsageAudio),
        Command::Audio(_) => {
            // Asked for audio explicitly: no choice to offer.
            let options = JobOptions {
                kind: MediaKind::Audio,
                max_height: None,
            };
            return submit(&msg, &deps, lang, text, entities, options, false).await;
        }
        Command::Settings => {
            let text = say(Msg::Settings {
                kind: settings.kind,
                max_height: settings.max_height,
                ask: settings.ask,
                lang: settings.lang.clone(),
            });
            api.send(
                msg.chat.id.0,
                Some(msg.id.0),
                &text,
                Some(settings_keyboard(lang, user_id, &settings)),
            )
            .await?;
            return Ok(());
        }
        // Admins see the whole queue; `/jobs failed` the recent failures.
        Command::Jobs(arg) if asker.admin && arg.eq_ignore_ascii_case("failed") => {
            report::admin_failures(jobs, 20)
                .await
                .unwrap_or_else(|e| internal(lang, e))
        }
        Command::Jobs(_) if asker.admin => report::admin_jobs(jobs)
            .await
            .unwrap_or_else(|e| internal(lang, e)),
        Command::Jobs(_) => match jobs.user_jobs(user_id, 15).await {
            Ok(list) if list.is_empty() => say(Msg::NoJobs),
            Ok(list) => say(Msg::JobList {
                lines: list.iter().map(job_line).collect(),
            }),
            Err(e) => internal(lang, e),
        },
        Command::Job(arg) if arg.is_empty() => say(Msg::UsageJob),
        Command::Job(arg) => match jobs.lookup(asker, &arg).await {
            Ok(Lookup::Found(j)) => say(job_details(&j)),
            Ok(other) => lookup_text(lang, other, &arg),
            Err(e) => internal(lang, e),
        },
        Command::Cancel(arg) if arg.is_empty() => say(Msg::UsageCancel),
        Command::Cancel(arg) => cancel_text(lang, jobs.cancel(asker, &arg).await, &arg).0,
        Command::Retry(arg) if arg.is_empty() => say(Msg::UsageRetry),
        Command::Retry(arg) => match jobs.retry(asker, &arg).await {
            Ok(RetryOutcome::Requeued(j)) => say(Msg::Retried {
                short_id: j.id.short(),
            }),
            Ok(RetryOutcome::NotFailed(j)) => say(Msg::NotRetryable {
                short_id: j.id.short(),
                state: j.state.name().into(),
            }),
            Ok(RetryOutcome::Refused(r)) => say(refusal_msg(r)),
            Ok(RetryOutcome::Lookup(l)) => lookup_text(lang, l, &arg),
            Err(e) => internal(lang, e),
        },
        Command::Health if !asker.admin => say(Msg::AdminOnly),
        Command::Health => report::health_text(jobs, &deps.health)
            .await
            .unwrap_or_else(|e| internal(lang, e)),
        Command::Update(_) if !asker.admin => say(Msg::AdminOnly),
        Command::Update(arg) => {
            let (request, started) = match arg.to_ascii_lowercase().as_str() {
                "" => (Request::Update, Msg::UpdateStarted),
                "rollback" => (Request::Rollback, Msg::RollbackStarted),
                _ => {
                    reply(api, &msg, say(Msg::UsageUpdate)).await?;
                    return Ok(());
                }
            };
            if deps.updater.request(request) {
                say(started)
            } else {
                say(Msg::UpdateBusy)
            }
        }
    };
    reply(api, &msg, out).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn submit(
    msg: &Message,
    deps: &Deps,
    lang: Lang,
    text: String,
    entities: Vec<LinkEntity>,
    options: JobOptions,
    ask: bool,
) -> Result<(), PaceError> {
    let (api, jobs) = (&deps.api, &deps.jobs);
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
        not_before: ask.then(|| now_ms() + jobs.config.telegram.choice_wait_secs * 1000),
    };
    let report = match jobs.submit(req).await {
        Ok(r) => r,
        Err(e) => {
            reply(api, msg, internal(lang, e)).await?;
            return Ok(());
        }
    };
    if report.outcomes.is_empty() {
        reply(api, msg, render(lang, &Msg::NoLink)).await?;
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
                // The form buttons go on every status message of its own: a
                // private chat's, or a group's when the user asks. A group's
                // shared board has none (its edits are budgeted).
                let buttons = ask || !board::is_group(msg.chat.id.0);
                announce(api, jobs, &job, position, lang, buttons).await?;
                if ask {
                    jobs.offer_quality(job.id);
                }
            }
            Submission::BadLink { link, error } => {
                refusals.push(render(lang, &Msg::LinkRefused { link, error }))
            }
            Submission::Refused { refusal, .. } => {
                refusals.push(render(lang, &refusal_msg(refusal)))
            }
        }
    }
    if report.extra_ignored {
        refusals.push(render(
            lang,
            &Msg::IgnoredExtraLinks {
                max: jobs.config.telegram.max_links_per_message,
            },
        ));
    }
    refusals.dedup();
    if !refusals.is_empty() {
        reply(api, msg, refusals.join("\n")).await?;
    }
    Ok(())
}

/// One status message per job (edited with that job's progress and final
/// line), replying to the job's request message, with the form buttons when
/// `buttons`; recorded on the job.
pub(super) async fn announce(
    api: &Api,
    jobs: &JobService,
    job: &Job,
    position: u64,
    lang: Lang,
    buttons: bool,
) -> Result<(), PaceError> {
    let text = render(
        lang,
        &Msg::Accepted {
            short_id: job.id.short(),
            position,
        },
    );
    let keyboard = buttons.then(|| choice_keyboard(lang, job.id, &[]));
    let chat = job.chat_id;
    let (status, board) = acknowledge(api, job, text, keyboard).await?;
    match jobs.attach_status(job, status).await {
        // Finished before its status message was recorded (a cache hit, a
        // fast failure): the worker has already sent the file or its own
        // failure reply, so the acknowledgement has nothing left to say.
        Ok(Some(j)) if j.state.is_finished() => match board {
            Some(b) if b.remove(job.id) => api.close_board(&b),
            Some(b) => api.refresh_board(&b, Priority::Progress),
            None => {
                let _ = api.delete(chat, status).await;
            }
        },
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "cannot record the status message")
        }
    }
    Ok(())
}

/// Acknowledge a new job: its own reply, or in a group without buttons (a
/// busy group, or a user who does not ask) a line on the group's shared
/// status message (a new one when none is open).
/// The status message id, and the board when it is one.
async fn acknowledge(
    api: &Api,
    job: &Job,
    text: String,
    keyboard: Option<InlineKeyboardMarkup>,
) -> Result<(i32, Option<Arc<Board>>), PaceError> {
    let chat = job.chat_id;
    let group = board::is_group(chat);
    if group {
        api.boards.acknowledged(chat);
    }
    let shared = keyboard.is_none() && group;
    if shared {
        if let Some(b) = api.boards.join(chat, job.id, text.clone()) {
            api.refresh_board(&b, Priority::Urgent);
            return Ok((b.message, Some(b)));
        }
    }
    let sent = api
        .send(chat, Some(job.request_msg_id), &text, keyboard)
        .await?;
    let board = shared.then(|| api.boards.open(chat, sent, job.id, text));
    Ok((sent, board))
}
