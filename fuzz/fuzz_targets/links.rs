//! Arbitrary message text and entities: link extraction and parsing never
//! panic, and a link that parses keeps its host when written out and read
//! again, so the host the filter checks is the host yt-dlp is given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tgdl::net::{extract_links, parse_link, LinkEntity, LinkKind};

fuzz_target!(|data: &[u8]| {
    // The first bytes pick entity spans (UTF-16 offsets and lengths, like
    // Telegram's), the rest is the message text.
    let (spans, text) = data.split_at(data.len().min(8));
    let text = String::from_utf8_lossy(text);
    let entities: Vec<LinkEntity> = spans
        .chunks(2)
        .map(|c| LinkEntity {
            kind: if c[0] % 2 == 0 {
                LinkKind::Url
            } else {
                LinkKind::TextLink(text.chars().rev().collect())
            },
            offset: usize::from(c[0]),
            length: usize::from(*c.get(1).unwrap_or(&0)),
        })
        .collect();
    for entities in [&entities[..], &[]] {
        for link in extract_links(&text, entities, 10) {
            if let Ok(url) = parse_link(&link) {
                // What yt-dlp is given is `url.as_str()`; the filter checked
                // `url.host()`. Read back, the text names the same host.
                let again = url::Url::parse(url.as_str()).expect("a parsed link reparses");
                assert_eq!(again.host(), url.host(), "{link}");
            }
        }
    }
});
