//! Telegram's text limits, counted the way Telegram counts: in UTF-16 code
//! units (a Persian letter is one, an emoji two).

/// A message's text limit.
pub const TEXT_MAX: usize = 4096;

/// A media caption's limit.
pub const CAPTION_MAX: usize = 1024;

/// `s` cut to at most `max` UTF-16 units, ending in `…` when it was cut.
pub fn truncate_utf16(s: &str, max: usize) -> String {
    if s.encode_utf16().count() <= max {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        // Leave room for the ellipsis (one UTF-16 unit).
        if used + c.len_utf16() > max - 1 {
            break;
        }
        used += c.len_utf16();
        out.push(c);
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_in_utf16_units_and_marks_the_cut() {
        assert_eq!(truncate_utf16("short", 10), "short");
        let long = "🎬".repeat(10); // 20 units
        let cut = truncate_utf16(&long, 7);
        assert_eq!(cut, "🎬🎬🎬…");
        assert!(cut.encode_utf16().count() <= 7);
    }
}
