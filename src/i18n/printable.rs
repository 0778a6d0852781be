//! Text from outside (a media title, a link, yt-dlp's error text) made safe
//! to show in a terminal or a chat: no C0 or C1 control characters (escape
//! sequences, carriage returns that overwrite a line, bells) and no bidi
//! embeddings, overrides or isolates (which reorder what follows them, so a
//! title could make a line read differently from what it is). Line breaks
//! and tabs become spaces: our own layout places the line breaks.

use std::borrow::Cow;

/// Whether `c` is removed (or, for whitespace, replaced by a space).
fn unsafe_char(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` without control characters and bidi overrides; borrowed when clean.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .filter_map(|c| match c {
                '\n' | '\r' | '\t' => Some(' '),
                c if unsafe_char(c) => None,
                c => Some(c),
            })
            .collect(),
    )
}

/// What a rendered text still holds that [`printable`] would remove, line
/// breaks aside (our layout's): for tests of every screen that shows outside
/// text.
#[cfg(test)]
pub(crate) fn leftovers_in_layout(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| *c != '\n' && unsafe_char(*c))
        .collect()
}

/// JSON text (as serde_json writes it) with every character [`printable`]
/// would drop written as a `\uXXXX` escape instead: the same JSON value,
/// safe in a terminal. serde_json escapes C0 inside strings itself, so a raw
/// line break is layout (pretty printing) and stays.
pub fn json_printable(json: &str) -> Cow<'_, str> {
    let escape = |c: char| c != '\n' && unsafe_char(c);
    if !json.chars().any(escape) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escape(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_go_persian_and_joiners_stay() {
        assert_eq!(printable("plain title"), Cow::Borrowed("plain title"));
        // ZWNJ (U+200C) and RLM (U+200F) are ordinary parts of Persian text.
        let fa = "تلاش‌ها \u{200F}ویدیو";
        assert!(matches!(printable(fa), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\u{1b}[2J\u{1b}]0;pwned\u{7}b\rc\nd\te\u{7f}\u{9b}31m\u{85}"),
            "a[2J]0;pwnedb c d e31m"
        );
        assert_eq!(
            printable("x\u{202E}gnp.exe\u{202C}\u{2066}y\u{2069}"),
            "xgnp.exey"
        );
    }

    #[test]
    fn json_keeps_its_value_with_controls_escaped() {
        let title = "t\u{1b}[31m\u{9b}1m\u{202E}x\u{7f}";
        let value = serde_json::json!({ "title": title, "n": [1, 2] });
        for json in [
            serde_json::to_string(&value).unwrap(),
            serde_json::to_string_pretty(&value).unwrap(),
        ] {
            let safe = json_printable(&json);
            assert!(!safe.chars().any(|c| c != '\n' && unsafe_char(c)), "{safe}");
            assert_eq!(safe.lines().count(), json.lines().count());
            let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
            assert_eq!(back, value);
        }
    }
}
