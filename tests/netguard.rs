//! Link intake and network guard, exercised through the public API only.

use std::net::IpAddr;

use proptest::prelude::*;
use tgdl::net::{
    check_destination, extract_links, parse_link, BlockedRange, Destinations, LinkEntity,
    LinkError, LinkKind, MAX_LINK_LEN,
};

/// What intake does with one link: parse, then check where it goes.
async fn verdict(link: &str, allow_private: bool) -> Result<url::Url, LinkError> {
    let url = parse_link(link)?;
    let dest = Destinations::new(allow_private, vec![]).expect("destinations");
    check_destination(&url, &dest).await?;
    Ok(url)
}

/// Asserts `link` is refused as a non-public destination and returns the range it fell into.
async fn refused_range(link: &str) -> BlockedRange {
    match verdict(link, false).await {
        Err(LinkError::PrivateAddress { range, .. }) => range,
        other => panic!("{link}: expected a private-address refusal, got {other:?}"),
    }
}

fn url_entity(offset: usize, length: usize) -> LinkEntity {
    LinkEntity {
        kind: LinkKind::Url,
        offset,
        length,
    }
}

fn text_link(url: &str, offset: usize, length: usize) -> LinkEntity {
    LinkEntity {
        kind: LinkKind::TextLink(url.into()),
        offset,
        length,
    }
}

/// UTF-16 length, the unit Telegram counts entity offsets in.
fn u16len(s: &str) -> usize {
    s.encode_utf16().count()
}

// ---------------------------------------------------------------- private destinations

#[tokio::test]
async fn loopback_ipv4_literals_are_refused() {
    for link in [
        "http://127.0.0.1/",
        "https://127.0.0.1:8443/video.mp4",
        "http://127.255.255.254/",
    ] {
        assert_eq!(refused_range(link).await, BlockedRange::Loopback, "{link}");
    }
}

#[tokio::test]
async fn localhost_names_are_refused_before_dns() {
    for link in [
        "http://localhost/",
        "http://localhost./",
        "http://LOCALHOST:9000/x",
        "http://foo.localhost/",
        "http://a.b.localhost./",
    ] {
        match verdict(link, false).await {
            Err(LinkError::PrivateAddress { range, host, .. }) => {
                assert_eq!(range, BlockedRange::Loopback, "{link}");
                assert!(host.to_ascii_lowercase().contains("localhost"), "{host}");
            }
            other => panic!("{link}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn cloud_metadata_address_is_refused() {
    assert_eq!(
        refused_range("http://169.254.169.254/latest/meta-data/").await,
        BlockedRange::LinkLocal
    );
}

#[tokio::test]
async fn ipv6_loopback_and_mapped_forms_are_refused() {
    for link in [
        "http://[::1]/",
        "http://[0:0:0:0:0:0:0:1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
    ] {
        assert_eq!(refused_range(link).await, BlockedRange::Loopback, "{link}");
    }
    assert_eq!(
        refused_range("http://[::ffff:169.254.169.254]/").await,
        BlockedRange::LinkLocal
    );
    assert_eq!(
        refused_range("http://[fe80::1]/").await,
        BlockedRange::LinkLocal
    );
    assert_eq!(
        refused_range("http://[fd00::1]/").await,
        BlockedRange::Private
    );
    assert_eq!(
        refused_range("http://[ff02::1]/").await,
        BlockedRange::Multicast
    );
    assert_eq!(
        refused_range("http://[::]/").await,
        BlockedRange::Unspecified
    );
}

#[tokio::test]
async fn private_and_special_ipv4_ranges_are_refused() {
    let cases = [
        ("http://10.0.0.1/", BlockedRange::Private),
        ("http://172.16.5.4/", BlockedRange::Private),
        ("http://192.168.1.1/", BlockedRange::Private),
        ("http://100.64.0.1/", BlockedRange::SharedAddressSpace),
        ("http://224.0.0.1/", BlockedRange::Multicast),
        ("http://255.255.255.255/", BlockedRange::Broadcast),
        ("http://0.0.0.0/", BlockedRange::Unspecified),
        ("http://0.1.2.3/", BlockedRange::ThisNetwork),
        ("http://192.0.2.10/", BlockedRange::Documentation),
        ("http://203.0.113.10/", BlockedRange::Documentation),
    ];
    for (link, range) in cases {
        assert_eq!(refused_range(link).await, range, "{link}");
    }
}

/// The WHATWG parser in `url` folds every numeric spelling of an IPv4 address into dotted
/// decimal, so the guard sees 127.0.0.1 however it was written.
#[tokio::test]
async fn numeric_ipv4_spellings_normalise_to_loopback_and_are_refused() {
    for link in [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0X7F000001/",
        "http://0177.0.0.1/",
        "http://0177.0000.0000.0001/",
        "http://017700000001/",
        "http://127.1/",
        "http://127.0.1/",
        "http://0x7f.1/",
        "http://0x7f.0x0.0x0.0x1/",
        "http://127。0。0。1/",
        "http://127.0.0.1./",
        "http://%31%32%37.0.0.1/",
    ] {
        let url = parse_link(link).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert_eq!(url.host_str(), Some("127.0.0.1"), "{link}");
        assert_eq!(refused_range(link).await, BlockedRange::Loopback, "{link}");
    }
    // `http://0/` is 0.0.0.0, which on Linux connects to the local host.
    assert_eq!(parse_link("http://0/").unwrap().host_str(), Some("0.0.0.0"));
    assert_eq!(refused_range("http://0/").await, BlockedRange::Unspecified);
    // Decimal form of the metadata address.
    assert_eq!(
        refused_range("http://2852039166/").await,
        BlockedRange::LinkLocal
    );
}

/// A name that is not `localhost` but resolves to loopback through the system resolver must be
/// refused after DNS. /etc/hosts is the only resolver available offline, so the test uses a
/// loopback name from it (e.g. the container's own hostname).
#[tokio::test]
async fn hostname_resolving_to_loopback_is_refused_after_dns() {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let name = hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let addr: IpAddr = fields.next()?.parse().ok()?;
            let name = fields.find(|n| {
                let n = n.to_ascii_lowercase();
                n != "localhost" && !n.ends_with(".localhost") && !n.contains(':')
            })?;
            addr.is_loopback().then(|| name.to_owned())
        })
        .next();
    // `./scripts/test` adds `127.0.0.1 tgdl-loopback.test` so that a fresh machine
    // always has one; the test never skips.
    let name = name.expect(
        "/etc/hosts has no loopback name other than localhost; ./scripts/test adds tgdl-loopback.test",
    );
    let link = format!("http://{name}/video");
    match verdict(&link, false).await {
        Err(LinkError::PrivateAddress { host, addr, range }) => {
            assert_eq!(host, name.to_ascii_lowercase());
            assert!(addr.is_loopback(), "{addr}");
            assert_eq!(range, BlockedRange::Loopback);
        }
        other => panic!("{link}: {other:?}"),
    }
    // The operator switch lets the same name through.
    assert!(verdict(&link, true).await.is_ok());
}

#[tokio::test]
async fn a_name_that_does_not_exist_is_unresolvable() {
    // `.invalid` is reserved (RFC 6761): no resolver may answer it, online or offline.
    match verdict("https://no-such-host.invalid/watch?v=1", false).await {
        Err(e @ LinkError::Unresolvable { .. }) => {
            assert_eq!(e.code(), "unresolvable");
            assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn public_literals_are_allowed_without_network() {
    for link in [
        "http://93.184.216.34/",
        "https://93.184.216.34:8443/v.mp4",
        "http://1572395042/", // 93.184.216.34 in decimal
        "http://[2606:2800:220:1:248:1893:25c8:1946]/",
        "http://[::ffff:93.184.216.34]/",
    ] {
        verdict(link, false)
            .await
            .unwrap_or_else(|e| panic!("{link}: {e}"));
    }
}

#[tokio::test]
async fn allow_private_lets_private_destinations_through() {
    for link in [
        "http://127.0.0.1:8080/media.mp4",
        "http://localhost/",
        "http://[::1]/",
        "http://169.254.169.254/",
        "http://2130706433/",
        "http://10.1.2.3/",
    ] {
        verdict(link, true)
            .await
            .unwrap_or_else(|e| panic!("{link}: {e}"));
    }
}

#[tokio::test]
async fn check_destination_refuses_other_schemes_even_when_private_is_allowed() {
    // A caller that skipped `parse_link` still cannot get an ftp URL approved.
    let url = url::Url::parse("ftp://93.184.216.34/file").unwrap();
    assert_eq!(
        check_destination(&url, &Destinations::new(true, vec![]).unwrap()).await,
        Err(LinkError::UnsupportedScheme {
            scheme: "ftp".into()
        })
    );
}

// ---------------------------------------------------------------- parsing

#[test]
fn other_schemes_are_refused_with_their_name() {
    for (link, scheme) in [
        ("ftp://example.com/file.mp4", "ftp"),
        ("FTP://example.com/", "ftp"),
        ("file:///etc/passwd", "file"),
        ("javascript:alert(1)", "javascript"),
        ("data:text/html,<script>alert(1)</script>", "data"),
        ("gopher://example.com/", "gopher"),
        ("tg://resolve?domain=x", "tg"),
    ] {
        let err = parse_link(link).unwrap_err();
        assert_eq!(
            err,
            LinkError::UnsupportedScheme {
                scheme: scheme.into()
            },
            "{link}"
        );
        assert_eq!(err.code(), "unsupported_scheme");
        assert!(err.to_string().contains(scheme), "{err}");
    }
}

#[test]
fn option_like_strings_are_refused() {
    for link in [
        "--exec=x",
        "--exec=touch /tmp/pwned",
        "-o/tmp/x",
        "-o",
        "--",
        "-",
        "  --exec=x",
        "-https://example.com/",
    ] {
        let err = parse_link(link).unwrap_err();
        assert_eq!(err, LinkError::LooksLikeOption, "{link}");
        assert_eq!(err.code(), "looks_like_option");
    }
}

#[test]
fn text_that_is_not_an_absolute_link_is_refused() {
    for link in [
        "",
        "   ",
        "hello",
        "example.com/video",
        "example.com:8080/x",
        "//example.com/",
    ] {
        let err = parse_link(link).unwrap_err();
        assert!(
            matches!(err, LinkError::NotALink { .. }),
            "{link:?}: {err:?}"
        );
        assert_eq!(err.code(), "not_a_link");
    }
    assert_eq!(parse_link("http://"), Err(LinkError::MissingHost));
    assert_eq!(parse_link("https://:443/x"), Err(LinkError::MissingHost));
    assert!(matches!(
        parse_link("http://999999999999/"),
        Err(LinkError::NotALink { .. })
    ));
}

#[test]
fn overlong_links_are_refused() {
    let link = format!("https://example.com/{}", "a".repeat(MAX_LINK_LEN));
    assert_eq!(
        parse_link(&link),
        Err(LinkError::TooLong {
            len: link.len(),
            max: MAX_LINK_LEN
        })
    );
}

#[test]
fn valid_links_parse_and_keep_their_parts() {
    let url = parse_link("  https://www.YouTube.com/watch?v=dQw4w9WgXcQ&t=10  ").unwrap();
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some("www.youtube.com"));
    assert_eq!(url.query(), Some("v=dQw4w9WgXcQ&t=10"));

    // Credentials are allowed (some media servers need them); they stay in the URL.
    let url = parse_link("https://user:secret@example.com/v.mp4").unwrap();
    assert_eq!(url.username(), "user");
    assert_eq!(url.password(), Some("secret"));

    // Internationalised names become punycode, which is what DNS and yt-dlp need.
    let url = parse_link("https://ویکی.ایران/فیلم").unwrap();
    assert!(url.host_str().unwrap().starts_with("xn--"), "{url}");
}

proptest! {
    /// Whatever the input, an accepted link serialises starting with its scheme, so it can
    /// never be read as an option by yt-dlp.
    #[test]
    fn accepted_links_never_look_like_options(s in "\\PC{0,40}", prefix in "(-|--|http://|https://| )?") {
        let input = format!("{prefix}{s}");
        if let Ok(url) = parse_link(&input) {
            let text = url.as_str();
            prop_assert!(text.starts_with("http://") || text.starts_with("https://"), "{}", text);
            prop_assert!(url.host_str().is_some_and(|h| !h.is_empty()));
        }
    }
}

#[test]
fn error_codes_are_stable() {
    // The message catalog keys on these strings: changing one is a breaking change.
    let cases: [(LinkError, &str); 7] = [
        (LinkError::NotALink { reason: "x".into() }, "not_a_link"),
        (LinkError::LooksLikeOption, "looks_like_option"),
        (
            LinkError::UnsupportedScheme {
                scheme: "ftp".into(),
            },
            "unsupported_scheme",
        ),
        (LinkError::MissingHost, "missing_host"),
        (LinkError::TooLong { len: 2, max: 1 }, "link_too_long"),
        (
            LinkError::PrivateAddress {
                host: "h".into(),
                addr: "127.0.0.1".parse().unwrap(),
                range: BlockedRange::Loopback,
            },
            "private_address",
        ),
        (
            LinkError::Unresolvable {
                host: "h".into(),
                reason: "r".into(),
            },
            "unresolvable",
        ),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code);
    }
    assert_eq!(
        BlockedRange::SharedAddressSpace.code(),
        "shared_address_space"
    );
    assert_eq!(BlockedRange::Loopback.code(), "loopback");
}

// ---------------------------------------------------------------- extraction

#[test]
fn url_entity_offsets_are_utf16_with_emoji_before_the_link() {
    // Each emoji is two UTF-16 units and four bytes: byte offsets would cut the link.
    let prefix = "🎬🔥 ببین این: ";
    let link = "https://example.com/v/1";
    let text = format!("{prefix}{link} 👍");
    let entities = [url_entity(u16len(prefix), u16len(link))];
    assert_eq!(extract_links(&text, &entities, 5), vec![link]);
}

#[test]
fn url_entity_containing_non_ascii_path() {
    let prefix = "😀 ";
    let link = "https://fa.wikipedia.org/wiki/ایران";
    let text = format!("{prefix}{link}");
    let entities = [url_entity(u16len(prefix), u16len(link))];
    assert_eq!(extract_links(&text, &entities, 5), vec![link]);
}

#[test]
fn text_link_entities_use_the_hidden_url() {
    let text = "👉 click here and also https://a.example/x";
    let label_at = u16len("👉 ");
    let bare_at = u16len("👉 click here and also ");
    let entities = [
        text_link(
            "https://hidden.example/video",
            label_at,
            u16len("click here"),
        ),
        url_entity(bare_at, u16len("https://a.example/x")),
    ];
    assert_eq!(
        extract_links(text, &entities, 5),
        vec!["https://hidden.example/video", "https://a.example/x"]
    );
}

#[test]
fn entities_are_taken_in_reading_order() {
    let text = "https://one.example/ https://two.example/";
    let entities = [url_entity(21, 20), url_entity(0, 20)];
    assert_eq!(
        extract_links(text, &entities, 5),
        vec!["https://one.example/", "https://two.example/"]
    );
}

#[test]
fn url_entity_without_scheme_gets_http() {
    let text = "watch youtube.com/watch?v=abc now";
    let entities = [url_entity(6, u16len("youtube.com/watch?v=abc"))];
    let links = extract_links(text, &entities, 5);
    assert_eq!(links, vec!["http://youtube.com/watch?v=abc"]);
    assert!(parse_link(&links[0]).is_ok());
}

#[test]
fn entities_out_of_range_or_splitting_a_character_are_skipped() {
    let text = "😀https://a.example/";
    let entities = [
        url_entity(1, 5),   // starts inside the emoji's surrogate pair
        url_entity(2, 500), // runs past the end
        url_entity(2, u16len("https://a.example/")),
    ];
    assert_eq!(
        extract_links(text, &entities, 5),
        vec!["https://a.example/"]
    );
}

#[test]
fn bare_links_are_found_when_there_are_no_entities() {
    let text = "دو لینک: https://a.example/1، و (http://b.example/2). تمام";
    assert_eq!(
        extract_links(text, &[], 5),
        vec!["https://a.example/1", "http://b.example/2"]
    );
    // Other schemes are found too, so the user hears "unsupported scheme", not "no link".
    let links = extract_links("get ftp://files.example/a.mp4 please", &[], 5);
    assert_eq!(links, vec!["ftp://files.example/a.mp4"]);
    assert_eq!(
        parse_link(&links[0]).unwrap_err().code(),
        "unsupported_scheme"
    );
    assert!(extract_links("no links here, just text", &[], 5).is_empty());
}

#[test]
fn with_entities_the_text_is_not_scanned_again() {
    // Telegram already decided what is a link; a text_link label that looks like a URL must
    // not add a second, different job.
    let text = "https://label.example/";
    let entities = [text_link("https://real.example/", 0, u16len(text))];
    assert_eq!(
        extract_links(text, &entities, 5),
        vec!["https://real.example/"]
    );
}

#[test]
fn duplicates_are_dropped_keeping_the_first() {
    let text = "https://a.example https://A.example/ https://b.example/ https://a.example";
    assert_eq!(
        extract_links(text, &[], 10),
        vec!["https://a.example", "https://b.example/"]
    );
}

#[test]
fn max_caps_the_number_of_links() {
    let text = (1..=10)
        .map(|i| format!("https://e.example/{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let links = extract_links(&text, &[], 3);
    assert_eq!(
        links,
        vec![
            "https://e.example/1",
            "https://e.example/2",
            "https://e.example/3"
        ]
    );
    assert!(extract_links(&text, &[], 0).is_empty());
    // Duplicates do not use up the cap.
    let text = "https://x.example/ https://x.example/ https://y.example/";
    assert_eq!(extract_links(text, &[], 2).len(), 2);
}

#[test]
fn teloxide_entities_convert() {
    use teloxide::types::{MessageEntity, MessageEntityKind};
    let url =
        LinkEntity::from_telegram(&MessageEntity::new(MessageEntityKind::Url, 3, 10)).unwrap();
    assert_eq!(url, url_entity(3, 10));
    let hidden = url::Url::parse("https://hidden.example/v").unwrap();
    let tl = LinkEntity::from_telegram(&MessageEntity::text_link(hidden, 0, 4)).unwrap();
    assert_eq!(tl, text_link("https://hidden.example/v", 0, 4));
    assert!(LinkEntity::from_telegram(&MessageEntity::bold(0, 4)).is_none());
    assert!(
        LinkEntity::from_telegram(&MessageEntity::new(MessageEntityKind::Email, 0, 4)).is_none()
    );
}
