//! Arbitrary lines of yt-dlp output (our prefixed progress and result lines,
//! its notices, its errors): every parser and the error classifier take any
//! line without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tgdl::download::classify::{classify, classify_message};
use tgdl::download::progress::{parse_max_filesize_abort, parse_meta, parse_progress};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let _ = parse_progress(line);
        let _ = parse_meta(line);
        let _ = parse_max_filesize_abort(line);
        let _ = classify_message(line);
    }
    let _ = classify(text.lines());
});
