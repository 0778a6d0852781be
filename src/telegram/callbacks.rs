//! Inline buttons: the choice on a new job, its cancel, and `/settings`.

use std::sync::Arc;

use teloxide::types::CallbackQuery;

use super::messages::announce;
use super::replies::{cancel_text, internal, lookup_text, refusal_msg};
use super::Deps;
use crate::botapi::keyboard::{choice_keyboard, parse_press, settings_keyboard, Press};
use crate::botapi::pacer::{PaceError, Priority};
use crate::botapi::Api;
use crate::i18n::{render, Lang, Msg};
use crate::job::{JobId, JobState, MediaKind};
use crate::pipeline::service::{Access, Asker, Choice, ChooseOutcome};
use crate::pipeline::JobService;

pub(super) async fn on_callback(q: CallbackQuery, deps: Arc<Deps>) -> Result<(), PaceError> {
    let (api, jobs) = (&deps.api, &deps.jobs);
    let user_id = q.from.id.0;
    let access = jobs.access(user_id);
    let settings = jobs.user_settings(user_id).await.unwrap_or_default();
    let lang = Lang::pick(
        settings.lang.as_deref().or(q.from.language_code.as_deref()),
        jobs.default_lang(),
    );
    let asker = Asker {
        user_id,
        admin: access == Access::Admin,
    };
    let message = q.regular_message().map(|m| (m.chat.id.0, m.id.0));
    let answer = |text: String| {
        let id = q.id.clone();
        async move { api.answer_callback(&id, &text).await }
    };
    if access == Access::Denied {
        return answer(render(lang, &Msg::NotAllowed)).await;
    }
    let Some(press) = q.data.as_deref().and_then(parse_press) else {
        return answer(render(
            lang,
            &Msg::Help {
                commands: super::commands::listed(),
            },
        ))
        .await;
    };
    let text = match press {
        Press::Choose(id, kind) => {
            chosen_text(api, jobs, asker, lang, id, Choice::Kind(kind), message).await
        }
        Press::Quality(id, height) => {
            chosen_text(api, jobs, asker, lang, id, Choice::Height(height), message).await
        }
        Press::Cancel(id) => {
            let (text, cancelled) =
                cancel_text(lang, jobs.cancel(asker, &id.to_string()).await, &id.short());
            if let (true, Some((chat, mid))) = (cancelled, message) {
                let _ = api.edit(chat, mid, &text, None, Priority::Urgent).await;
            }
            text
        }
        // Someone else's panel (in a group): their settings are theirs.
        Press::Setting { owner, .. } if owner != user_id => render(lang, &Msg::NotYourSettings),
        Press::Setting { setting, .. } => {
            match jobs
                .change_settings(user_id, move |s| setting.apply(s))
                .await
            {
                Ok(new) => {
                    let lang = Lang::pick(
                        new.lang.as_deref().or(q.from.language_code.as_deref()),
                        jobs.default_lang(),
                    );
                    let text = render(
                        lang,
                        &Msg::Settings {
                            kind: new.kind,
                            max_height: new.max_height,
                            ask: new.ask,
                            lang: new.lang.clone(),
                        },
                    );
                    if let Some((chat, mid)) = message {
                        let keyboard = settings_keyboard(lang, user_id, &new);
                        let _ = api
                            .edit(chat, mid, &text, Some(keyboard), Priority::Urgent)
                            .await;
                    }
                    render(lang, &Msg::Saved)
                }
                Err(e) => internal(lang, e),
            }
        }
    };
    answer(text).await
}

/// Apply a choice (see [`crate::pipeline::switch`]) and say what happened.
/// The buttons stay on the status message whatever was pressed: the user may
/// still want another form.
async fn chosen_text(
    api: &Api,
    jobs: &JobService,
    asker: Asker,
    lang: Lang,
    id: JobId,
    choice: Choice,
    message: Option<(i64, i32)>,
) -> String {
    let (kind, max_height) = match choice {
        Choice::Kind(k) => (k, None),
        Choice::Height(h) => (MediaKind::Video, Some(h)),
    };
    let on_message = message.map(|(_, mid)| mid);
    match jobs.choose(asker, id, choice, on_message).await {
        Ok(ChooseOutcome::Chosen(j)) => {
            let line = render(
                lang,
                &Msg::Chosen {
                    short_id: j.id.short(),
                    kind,
                    max_height,
                },
            );
            if let Some((chat, mid)) = message {
                let keyboard = choice_keyboard(lang, j.id, &[]);
                let _ = api
                    .edit(chat, mid, &line, Some(keyboard), Priority::Urgent)
                    .await;
            }
            line
        }
        // The worker shows the switch on the status message as it restarts.
        Ok(ChooseOutcome::Switching(j)) => render(
            lang,
            &Msg::Switching {
                short_id: j.id.short(),
                kind,
                max_height,
            },
        ),
        Ok(ChooseOutcome::Unchanged(j)) => {
            let short_id = j.id.short();
            render(
                lang,
                &if j.state == JobState::Downloading {
                    Msg::AlreadyAs {
                        short_id,
                        kind,
                        max_height,
                    }
                } else {
                    Msg::AlreadySent {
                        short_id,
                        kind,
                        max_height,
                    }
                },
            )
        }
        Ok(ChooseOutcome::Again {
            job,
            position,
            duplicate,
        }) => {
            // A second press of the same form on the same message finds the
            // job the first one made, already announced.
            if !(duplicate && job.status_msg_id.is_some()) {
                if let Err(e) = announce(api, jobs, &job, position, lang, true).await {
                    tracing::warn!(job = %job.id, error = %e, "cannot announce the new form's job");
                }
            }
            render(
                lang,
                &Msg::Accepted {
                    short_id: job.id.short(),
                    position,
                },
            )
        }
        Ok(ChooseOutcome::TooManySwitches(j)) => render(
            lang,
            &Msg::TooManySwitches {
                short_id: j.id.short(),
                max: crate::pipeline::switch::MAX_SWITCHES,
            },
        ),
        Ok(ChooseOutcome::Refused(r)) => render(lang, &refusal_msg(r)),
        Ok(ChooseOutcome::Lookup(l)) => lookup_text(lang, l, &id.short()),
        Err(e) => internal(lang, e),
    }
}
