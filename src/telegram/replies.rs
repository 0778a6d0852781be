//! The service's outcomes, as the catalogue messages a handler sends.

use teloxide::types::Message;

use crate::botapi::pacer::PaceError;
use crate::botapi::Api;
use crate::i18n::{render, JobDetails, JobLine, Lang, Msg};
use crate::job::{now_ms, Job};
use crate::pipeline::service::{CancelOutcome, Lookup};
use crate::store::{Refusal, StoreError};

/// Reply to `msg` with `text` (paced, cut to Telegram's limit); the reply's
/// message id.
pub(super) async fn reply(api: &Api, msg: &Message, text: String) -> Result<i32, PaceError> {
    api.send(msg.chat.id.0, Some(msg.id.0), &text, None).await
}

pub(super) fn refusal_msg(r: Refusal) -> Msg {
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

pub(super) fn lookup_text(lang: Lang, l: Lookup, id: &str) -> String {
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

pub(super) fn internal(lang: Lang, e: impl std::fmt::Display) -> String {
    tracing::error!(error = %e, "command failed");
    render(lang, &Msg::Internal)
}

pub(super) fn job_line(j: &Job) -> JobLine {
    JobLine {
        short_id: j.id.short(),
        state: j.state.name().into(),
        url: j.url.clone(),
    }
}

/// `/job <id>`: the job and its history.
pub(super) fn job_details(j: &Job) -> Msg {
    Msg::JobDetails(JobDetails {
        short_id: j.id.short(),
        state: j.state,
        url: j.url.clone(),
        kind: j.options.kind,
        attempts: j.attempts,
        rescues: j.rescues,
        title: j.title.clone(),
        error: j
            .failure
            .as_ref()
            .or(j.last_error.as_ref())
            .map(|e| (e.code, e.text.clone())),
        history: j.history.clone(),
    })
}

/// What `/cancel` and the Cancel button say, and whether the job was
/// cancelled (the button then turns the status message into that line).
pub(super) fn cancel_text(
    lang: Lang,
    outcome: Result<CancelOutcome, StoreError>,
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
