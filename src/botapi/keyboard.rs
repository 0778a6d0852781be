//! Inline keyboards and what their buttons say back: the choice under a new
//! job's status message and the `/settings` panel. Building the buttons and
//! parsing their callback data live together so the two cannot drift.
//!
//! Callback data stays well under Telegram's 64 bytes: `k:<id>:<v|a|d>`
//! (kind), `q:<id>:<height>` (quality), `c:<id>` (cancel),
//! `s:<user id>:<field>:<value>` (a setting of that user's; in a group anyone
//! can press a button, and only its owner's press counts).

use teloxide::types::{InlineKeyboardButton, InlineKeyboardMarkup};

use crate::i18n::{label, Label, Lang};
use crate::job::{JobId, MediaKind};
use crate::store::UserSettings;

/// Heights offered in `/settings`.
const QUALITIES: [u32; 4] = [1080, 720, 480, 360];
const KINDS: [MediaKind; 3] = [MediaKind::Video, MediaKind::Audio, MediaKind::Document];

/// What a callback button asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Press {
    Choose(JobId, MediaKind),
    Quality(JobId, u32),
    Cancel(JobId),
    /// A change to `owner`'s settings: the user the panel was shown to.
    Setting {
        owner: u64,
        setting: Setting,
    },
}

/// A change pressed on the `/settings` panel.
#[derive(Debug, PartialEq, Eq)]
pub enum Setting {
    Kind(MediaKind),
    /// `None`: the best that fits.
    Quality(Option<u32>),
    Ask(bool),
    /// `None`: follow Telegram's language.
    Language(Option<Lang>),
}

impl Setting {
    /// Apply the change to a user's settings.
    pub fn apply(&self, s: &mut UserSettings) {
        match self {
            Setting::Kind(k) => s.kind = *k,
            Setting::Quality(h) => s.max_height = *h,
            Setting::Ask(a) => s.ask = *a,
            Setting::Language(l) => s.lang = l.map(|l| l.code().to_string()),
        }
    }
}

pub fn parse_press(data: &str) -> Option<Press> {
    let mut parts = data.splitn(3, ':');
    match (parts.next()?, parts.next(), parts.next()) {
        ("k", Some(id), Some(k)) => Some(Press::Choose(id.parse().ok()?, kind_from_code(k)?)),
        ("c", Some(id), None) => Some(Press::Cancel(id.parse().ok()?)),
        ("q", Some(id), Some(h)) => Some(Press::Quality(id.parse().ok()?, h.parse().ok()?)),
        ("s", Some(owner), Some(rest)) => {
            let (field, value) = rest.split_once(':')?;
            Some(Press::Setting {
                owner: owner.parse().ok()?,
                setting: parse_setting(field, value)?,
            })
        }
        _ => None,
    }
}

fn parse_setting(field: &str, value: &str) -> Option<Setting> {
    Some(match (field, value) {
        ("k", v) => Setting::Kind(kind_from_code(v)?),
        ("q", v) => Setting::Quality(v.parse::<u32>().ok().filter(|h| *h > 0)),
        ("a", v) => Setting::Ask(v == "1"),
        ("l", "en") => Setting::Language(Some(Lang::En)),
        ("l", "fa") => Setting::Language(Some(Lang::Fa)),
        ("l", _) => Setting::Language(None),
        _ => return None,
    })
}

fn kind_code(k: MediaKind) -> char {
    match k {
        MediaKind::Video => 'v',
        MediaKind::Audio => 'a',
        MediaKind::Document => 'd',
    }
}

fn kind_from_code(c: &str) -> Option<MediaKind> {
    KINDS
        .into_iter()
        .find(|k| c.len() == 1 && c.starts_with(kind_code(*k)))
}

fn button(label: impl Into<String>, data: String) -> InlineKeyboardButton {
    InlineKeyboardButton::callback(label.into(), data)
}

/// One button per form (`k:<id>:<kind>`).
fn kind_row(lang: Lang, id: JobId) -> Vec<InlineKeyboardButton> {
    KINDS
        .map(|k| {
            button(
                label(lang, Label::KindButton(k)),
                format!("k:{id}:{}", kind_code(k)),
            )
        })
        .to_vec()
}

/// Video / Audio / Document under a delivered file: a press sends that
/// form too.
pub fn form_keyboard(lang: Lang, id: JobId) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new(vec![kind_row(lang, id)])
}

/// Video / Audio / Document / Cancel under a job's status message, and a
/// row of video heights once the quality probe found more than one.
pub fn choice_keyboard(lang: Lang, id: JobId, heights: &[u32]) -> InlineKeyboardMarkup {
    let mut rows = vec![kind_row(lang, id)];
    if heights.len() > 1 {
        rows.push(
            heights
                .iter()
                .map(|h| button(format!("{h}p"), format!("q:{id}:{h}")))
                .collect(),
        );
    }
    rows.push(vec![button(
        label(lang, Label::CancelButton),
        format!("c:{id}"),
    )]);
    InlineKeyboardMarkup::new(rows)
}

/// The `/settings` buttons of user `owner` (`s:<owner>:<field>:<value>`),
/// the current choice of each row marked with a dot.
pub fn settings_keyboard(lang: Lang, owner: u64, s: &UserSettings) -> InlineKeyboardMarkup {
    let mark = |on: bool, label: String| if on { format!("• {label}") } else { label };
    let kinds = KINDS.map(|k| {
        button(
            mark(s.kind == k, label(lang, Label::Kind(k))),
            format!("s:{owner}:k:{}", kind_code(k)),
        )
    });
    let mut qualities = vec![button(
        mark(s.max_height.is_none(), label(lang, Label::Best)),
        format!("s:{owner}:q:0"),
    )];
    qualities.extend(QUALITIES.map(|h| {
        button(
            mark(s.max_height == Some(h), format!("{h}p")),
            format!("s:{owner}:q:{h}"),
        )
    }));
    let ask = button(
        label(lang, Label::Ask(s.ask)),
        format!("s:{owner}:a:{}", if s.ask { 0 } else { 1 }),
    );
    let mut langs: Vec<InlineKeyboardButton> = [Lang::En, Lang::Fa]
        .map(|l| {
            button(
                mark(
                    s.lang.as_deref() == Some(l.code()),
                    label(lang, Label::LanguageName(l)),
                ),
                format!("s:{owner}:l:{}", l.code()),
            )
        })
        .to_vec();
    langs.push(button(
        mark(s.lang.is_none(), label(lang, Label::Auto)),
        format!("s:{owner}:l:-"),
    ));
    InlineKeyboardMarkup::new(vec![kinds.to_vec(), qualities, vec![ask], langs])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn button_data_round_trips_and_fits_telegram_limits() {
        let id = JobId::new();
        for k in KINDS {
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
            parse_press("s:42:q:720"),
            Some(Press::Setting {
                owner: 42,
                setting: Setting::Quality(Some(720))
            })
        );
        // A panel from before buttons carried their owner acts for nobody.
        assert_eq!(parse_press("s:q:720"), None);
        assert_eq!(parse_press("s:x:q:720"), None);
        assert_eq!(parse_press("k:nope:v"), None);
        assert_eq!(parse_press("zzz"), None);
    }

    #[test]
    fn every_button_of_both_keyboards_parses_back() {
        let id = JobId::new();
        for lang in [Lang::En, Lang::Fa] {
            let boards = [
                choice_keyboard(lang, id, &[720, 360]),
                settings_keyboard(lang, u64::MAX, &UserSettings::default()),
            ];
            for b in boards
                .iter()
                .flat_map(|k| k.inline_keyboard.iter().flatten())
            {
                let teloxide::types::InlineKeyboardButtonKind::CallbackData(data) = &b.kind else {
                    panic!("not a callback button: {b:?}");
                };
                assert!(data.len() <= 64, "{data}");
                match parse_press(data) {
                    Some(Press::Setting { owner, .. }) => assert_eq!(owner, u64::MAX),
                    Some(_) => {}
                    None => panic!("{data} does not parse"),
                }
            }
        }
    }
}
