//! The name a file is uploaded under: made from the media's title, so the
//! user saves "Song title.mp3" rather than the job's internal name. The file
//! on disk keeps its job-id path; only the multipart file name changes.
//!
//! The title is outside text: every character that could hide or reorder
//! what follows (controls, bidi overrides and marks, zero-width characters),
//! act as a path (slashes) or be refused by a file system (`:*?"<>|`) is
//! left out; Persian and other scripts stay readable.

/// Most characters of the title kept in a name; the extension comes on top.
pub const NAME_MAX_CHARS: usize = 64;

/// Characters Windows, macOS or a shell treat specially in a file name.
/// Longest extension taken as one (`webm`, `flac`, `m4a`).
const EXT_MAX: usize = 5;

const RESERVED: &[char] = &['/', '\\', ':', '*', '?', '"', '<', '>', '|'];

fn dropped(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'                  // zero-width space
            | '\u{200E}' | '\u{200F}'   // LRM, RLM: invisible, reorder
            | '\u{202A}'..='\u{202E}'   // embeddings and overrides
            | '\u{2066}'..='\u{2069}'   // isolates
            | '\u{061C}'                // Arabic letter mark
            | '\u{FEFF}')
}

/// `<title>.<ext>`, safe; `fallback` (e.g. "video") when the title leaves
/// nothing readable. `ext` is the downloaded file's extension; `bin` when
/// it is none.
pub fn upload_name(title: Option<&str>, ext: &str, fallback: &str) -> String {
    let mut base = String::new();
    let mut space = false;
    for c in title.unwrap_or("").chars() {
        if dropped(c) && !c.is_whitespace() {
            continue;
        }
        if c.is_whitespace() || RESERVED.contains(&c) {
            // Runs of separators become one space; a slash must not read
            // as a folder.
            space = !base.is_empty();
            continue;
        }
        if base.chars().count() >= NAME_MAX_CHARS {
            break;
        }
        if space {
            base.push(' ');
            space = false;
        }
        base.push(c);
    }
    // No hidden file (".name") and no name that ends in dots or spaces.
    let base = base.trim_matches(|c: char| c == '.' || c == ' ' || c == '-');
    let base = if base.is_empty() { fallback } else { base };
    // yt-dlp's placeholder for a type it does not know (`unknown_video`)
    // or anything else that is no plain extension: a generic binary file.
    let ext = if !ext.is_empty()
        && ext.len() <= EXT_MAX
        && ext.chars().all(|c| c.is_ascii_alphanumeric())
    {
        ext.to_ascii_lowercase()
    } else {
        "bin".to_string()
    };
    format!("{base}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordinary_title_reads_as_it_is() {
        assert_eq!(
            upload_name(Some("My Song (Live)"), "mp3", "audio"),
            "My Song (Live).mp3"
        );
        assert_eq!(
            upload_name(Some("ویدیو تست"), "MP4", "video"),
            "ویدیو تست.mp4"
        );
        assert_eq!(upload_name(None, "bin", "file"), "file.bin");
        assert_eq!(upload_name(Some("x"), "", "file"), "x.bin");
        assert_eq!(
            upload_name(Some("blob"), "unknown_video", "file"),
            "blob.bin"
        );
    }

    #[test]
    fn hostile_titles_become_safe_names() {
        let n = upload_name(Some("../../etc/passwd\0\r\n"), "mp4", "video");
        assert_eq!(n, "etc passwd.mp4");
        // A right-to-left override would show "gnp.exe" as "exe.png".
        let n = upload_name(Some("photo\u{202E}gnp.exe"), "mp4", "video");
        assert_eq!(n, "photognp.exe.mp4");
        assert_eq!(
            upload_name(Some("\u{200F}\u{2066}...  "), "m4a", "audio"),
            "audio.m4a"
        );
        assert_eq!(
            upload_name(Some("a:b*c?d\"e<f>g|h\\i"), "mp4", "v"),
            "a b c d e f g h i.mp4"
        );
        let long = "ب".repeat(5000);
        let n = upload_name(Some(&long), "mp3", "audio");
        assert_eq!(n.chars().count(), NAME_MAX_CHARS + 4);
        assert!(n.ends_with(".mp3"));
        // The extension is ours, never the title's.
        assert_eq!(upload_name(Some("t"), "../sh", "v"), "t.bin");
    }
}
