//! Link intake and the network guard.
//!
//! Everything a user sends passes through here before it can become a job:
//!
//! 1. [`extract_links`] finds candidate links in a message (Telegram `url` / `text_link`
//!    entities, or bare `scheme://` links when the message carries no entities).
//! 2. [`parse_link`] turns one candidate into a [`url::Url`], accepting only `http` and `https`
//!    and refusing anything yt-dlp could mistake for an option.
//! 3. [`check_destination`] resolves the host and refuses loopback, private, link-local,
//!    multicast and other non-public addresses (SPEC "Security"), unless the operator set
//!    `allow_private_networks = true`.
//!
//! Every refusal is a [`LinkError`] whose [`LinkError::code`] is stable, so the message catalog
//! can map it to English and Persian text without parsing `Display` output.
//!
//! Known limits (by design of a pre-flight check): yt-dlp resolves the host again and follows
//! HTTP redirects on its own, so a DNS answer that changes between the check and the download
//! (rebinding) or a public page that redirects to a private address is not caught here.

pub mod egress;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Longest link accepted. Telegram messages are at most 4096 characters, so a longer "link"
/// can only come from a crafted `text_link`; bounding it keeps logs and the store small.
pub const MAX_LINK_LEN: usize = 4096;

/// How long a DNS lookup may take before the link is reported [`LinkError::Unresolvable`].
/// `getaddrinfo` has no timeout of its own and can hang for a long time on a broken resolver,
/// which would stall the intake path.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// What kind of link entity Telegram attached to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A `url` entity: the link is the entity's span of the text itself.
    Url,
    /// A `text_link` entity: the text is a label and the link is carried here.
    TextLink(String),
}

/// A link entity, with `offset` and `length` in UTF-16 code units exactly as the Bot API sends
/// them (they are *not* byte or `char` offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEntity {
    pub kind: LinkKind,
    pub offset: usize,
    pub length: usize,
}

impl LinkEntity {
    /// Converts a teloxide entity, keeping only the kinds that carry links.
    pub fn from_telegram(entity: &teloxide::types::MessageEntity) -> Option<Self> {
        use teloxide::types::MessageEntityKind as K;
        let kind = match &entity.kind {
            K::Url => LinkKind::Url,
            K::TextLink { url } => LinkKind::TextLink(url.as_str().to_owned()),
            _ => return None,
        };
        Some(Self {
            kind,
            offset: entity.offset,
            length: entity.length,
        })
    }
}

/// Which refused range an address fell into (in [`LinkError::PrivateAddress`]): the egress
/// filter's table, so a link is judged exactly as the traffic that follows it.
pub use egress::RefusedRange as BlockedRange;

/// The destination rules of one running bot: the address policy (refused ranges, the
/// operator's allow-list, this machine's own addresses) and the bounded asynchronous resolver,
/// shared by the link check and the egress proxy that carries yt-dlp's traffic.
#[derive(Clone)]
pub struct Destinations {
    pub policy: egress::AddressPolicy,
    pub resolver: egress::BoundedResolver,
}

impl Destinations {
    pub fn new(
        allow_private: bool,
        allow_networks: Vec<egress::IpNet>,
    ) -> Result<Self, egress::EgressError> {
        Ok(Destinations {
            policy: egress::AddressPolicy::new(allow_private, allow_networks)?,
            resolver: egress::BoundedResolver::system(egress::ResolveLimits::default())?,
        })
    }
}

/// Why a link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The text is not an absolute URL at all.
    #[error("not a link: {reason}")]
    NotALink { reason: String },
    /// Starts with `-`: passed to yt-dlp it would be read as an option (`--exec=...`).
    #[error("the link starts with '-' and could be mistaken for a command-line option")]
    LooksLikeOption,
    /// A scheme other than `http` or `https` (`ftp`, `file`, `javascript`, ...).
    #[error("unsupported link scheme '{scheme}': only http and https are accepted")]
    UnsupportedScheme { scheme: String },
    /// `http://` with no host, or a URL without an authority.
    #[error("the link has no host")]
    MissingHost,
    /// Longer than [`MAX_LINK_LEN`] bytes.
    #[error("the link is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    /// The host is, or resolves to, an address that is not on the public internet.
    #[error("{host} points to a {range} address ({addr}), which is not allowed")]
    PrivateAddress {
        host: String,
        addr: IpAddr,
        range: BlockedRange,
    },
    /// DNS gave no usable answer (no such name, resolver down, or timed out).
    #[error("could not resolve {host}: {reason}")]
    Unresolvable { host: String, reason: String },
}

impl LinkError {
    /// Stable identifier per variant, the key the message catalog translates.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotALink { .. } => "not_a_link",
            Self::LooksLikeOption => "looks_like_option",
            Self::UnsupportedScheme { .. } => "unsupported_scheme",
            Self::MissingHost => "missing_host",
            Self::TooLong { .. } => "link_too_long",
            Self::PrivateAddress { .. } => "private_address",
            Self::Unresolvable { .. } => "unresolvable",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// Returns the part of `text` covered by a UTF-16 `offset`/`length` span, or `None` when the span
/// runs past the text or cuts a character (a surrogate pair) in half.
pub fn utf16_slice(text: &str, offset: usize, length: usize) -> Option<&str> {
    let end = offset.checked_add(length)?;
    let mut start_byte = None;
    let mut end_byte = None;
    let mut units = 0usize;
    // Walk once, recording the byte index where the unit counter hits each bound; a bound that
    // falls between the two halves of a surrogate pair is never hit and yields `None`.
    for (byte, ch) in text.char_indices() {
        if units == offset {
            start_byte = Some(byte);
        }
        if units == end {
            end_byte = Some(byte);
            break;
        }
        units += ch.len_utf16();
    }
    if units == offset && start_byte.is_none() {
        start_byte = Some(text.len());
    }
    if units == end && end_byte.is_none() {
        end_byte = Some(text.len());
    }
    text.get(start_byte?..end_byte?)
}

/// Finds the links in a message, in the order they appear, without duplicates, at most `max`.
///
/// With entities, only they count (Telegram already did the link detection, and text links hide
/// the URL behind a label). Without entities (a message built by hand, a forwarded text, a
/// command argument) the text is scanned for `scheme://` links. Links of any scheme are
/// returned so that [`parse_link`] can refuse `ftp://` or `file://` with a precise reason
/// rather than the caller answering "no link here".
///
/// A `url` entity without a scheme (`youtube.com/watch?v=x`) gets `http://` prepended, which is
/// what Telegram clients do when the link is tapped.
pub fn extract_links(text: &str, entities: &[LinkEntity], max: usize) -> Vec<String> {
    let candidates: Vec<String> = if entities.is_empty() {
        scan_bare_links(text)
    } else {
        let mut sorted: Vec<&LinkEntity> = entities.iter().collect();
        // Telegram sends entities sorted, but hand-built updates might not be; the user expects
        // jobs in reading order.
        sorted.sort_by_key(|e| e.offset);
        sorted
            .into_iter()
            .filter_map(|e| match &e.kind {
                LinkKind::TextLink(url) => Some(url.trim().to_owned()),
                LinkKind::Url => {
                    let s = utf16_slice(text, e.offset, e.length)?.trim();
                    if s.contains("://") {
                        Some(s.to_owned())
                    } else {
                        Some(format!("http://{s}"))
                    }
                }
            })
            .filter(|s| !s.is_empty())
            .collect()
    };

    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for link in candidates {
        if out.len() >= max {
            break;
        }
        // Compare normalised forms so `https://A.com` and `https://a.com/` are one job; what is
        // returned is still the text as the user wrote it.
        let key = url::Url::parse(&link)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| link.clone());
        if seen.insert(key) {
            out.push(link);
        }
    }
    out
}

/// Characters that can be part of a URL scheme (RFC 3986 `scheme`).
fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// Characters that end a bare link: whitespace and the delimiters people wrap links in.
fn ends_link(c: char) -> bool {
    c.is_whitespace() || matches!(c, '<' | '>' | '"' | '`' | '«' | '»' | '\u{200B}')
}

/// Punctuation that usually belongs to the sentence, not the link, when it ends one
/// (English and Persian: `،` comma, `؛` semicolon, `؟` question mark).
fn is_trailing_punct(c: char) -> bool {
    matches!(
        c,
        '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '،' | '؛' | '؟' | '…'
    )
}

fn scan_bare_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let sep = from + found;
        // The scheme is the run of scheme characters right before "://", starting at a letter.
        let scheme_start = text[..sep]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_scheme_char(c))
            .last()
            .map_or(sep, |(i, _)| i);
        let scheme_start = text[scheme_start..sep]
            .find(|c: char| c.is_ascii_alphabetic())
            .map_or(sep, |i| scheme_start + i);
        let rest_start = sep + 3;
        let rest_len = text[rest_start..]
            .find(ends_link)
            .unwrap_or(text.len() - rest_start);
        let end = trim_link_end(&text[rest_start..rest_start + rest_len]) + rest_start;
        from = rest_start + rest_len;
        if scheme_start < sep && end > rest_start {
            links.push(text[scheme_start..end].to_owned());
        }
    }
    links
}

/// Returns the length of `tail` (the part after `://`) without trailing sentence punctuation and
/// without closing brackets that have no opening partner inside the link, so
/// `(see https://en.wikipedia.org/wiki/Rust_(language))` keeps its last `)` only once.
fn trim_link_end(tail: &str) -> usize {
    let mut end = tail.len();
    loop {
        let Some(last) = tail[..end].chars().next_back() else {
            return end;
        };
        let strip = if is_trailing_punct(last) {
            true
        } else if let Some(open) = match last {
            ')' => Some('('),
            ']' => Some('['),
            '}' => Some('{'),
            _ => None,
        } {
            let body = &tail[..end];
            body.matches(last).count() > body.matches(open).count()
        } else {
            false
        };
        if !strip {
            return end;
        }
        end -= last.len_utf8();
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Parses one candidate link, accepting only absolute `http`/`https` URLs with a host.
///
/// The returned [`url::Url`] is normalised by the WHATWG parser: numeric IPv4 forms such as
/// `http://2130706433/`, `http://0x7f000001/`, `http://0177.0.0.1/` and `http://127.1/` all come
/// back as host `127.0.0.1`, so [`check_destination`] sees the real address. Its serialisation
/// always starts with the scheme, never with `-`.
///
/// Credentials in the URL (`https://user:pass@host/`) are accepted, because some media servers
/// need them and yt-dlp forwards them; callers should log [`url::Url::host_str`] rather than the
/// whole URL.
pub fn parse_link(s: &str) -> Result<url::Url, LinkError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(LinkError::NotALink {
            reason: "empty".into(),
        });
    }
    // Checked before parsing so the refusal is explicit even for strings that would not parse:
    // this is the guarantee that nothing option-like is ever handed to yt-dlp.
    if s.starts_with('-') {
        return Err(LinkError::LooksLikeOption);
    }
    if s.len() > MAX_LINK_LEN {
        return Err(LinkError::TooLong {
            len: s.len(),
            max: MAX_LINK_LEN,
        });
    }
    let url = match url::Url::parse(s) {
        Ok(url) => url,
        Err(url::ParseError::EmptyHost) => return Err(LinkError::MissingHost),
        Err(e) => {
            return Err(LinkError::NotALink {
                reason: e.to_string(),
            })
        }
    };
    match url.scheme() {
        "http" | "https" => {}
        // `example.com:8080/x` parses with scheme "example.com"; calling that a scheme would
        // confuse the user, it is simply not a full link.
        scheme if scheme.contains('.') => {
            return Err(LinkError::NotALink {
                reason: "no scheme (expected http:// or https://)".into(),
            })
        }
        scheme => {
            return Err(LinkError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            })
        }
    }
    match url.host_str() {
        Some(h) if !h.is_empty() => Ok(url),
        _ => Err(LinkError::MissingHost),
    }
}

/// Refuses a link whose host is, or resolves to, a refused address.
///
/// IP literals are judged directly; `localhost` and `*.localhost` are refused before any lookup
/// (RFC 6761 reserves them for loopback, and some resolvers answer them from the network);
/// other names are resolved (asynchronously, with a timeout, never on the blocking pool) and
/// refused if *any* answer is refused, so a name with one public and one private record cannot
/// slip through on the private one. This is a first answer for the user; the egress proxy
/// checks every request yt-dlp makes again, whatever DNS says by then.
///
/// When the policy allows private networks the check is skipped entirely (no DNS): there is
/// nothing left to refuse.
pub async fn check_destination(url: &url::Url, dest: &Destinations) -> Result<(), LinkError> {
    // Defensive: the caller may hand over a URL that did not come from `parse_link`.
    if !matches!(url.scheme(), "http" | "https") {
        return Err(LinkError::UnsupportedScheme {
            scheme: url.scheme().to_owned(),
        });
    }
    if dest.policy.allows_private() {
        return Ok(());
    }
    let host = url.host().ok_or(LinkError::MissingHost)?;
    if let url::Host::Domain(name) = host {
        if name.is_empty() {
            return Err(LinkError::MissingHost);
        }
        if is_localhost_name(name) {
            return Err(LinkError::PrivateAddress {
                host: name.to_owned(),
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                range: BlockedRange::Loopback,
            });
        }
    }
    match egress::check_host(&dest.policy, &dest.resolver, host).await {
        Ok(_) => Ok(()),
        Err(egress::HostError::Refused(egress::Refusal::Address { host, addr, range })) => {
            Err(LinkError::PrivateAddress { host, addr, range })
        }
        Err(egress::HostError::Refused(egress::Refusal::Scheme { scheme, .. })) => {
            Err(LinkError::UnsupportedScheme { scheme })
        }
        Err(egress::HostError::Unresolvable(e)) => Err(LinkError::Unresolvable {
            host: url.host_str().unwrap_or_default().to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// `localhost`, `localhost.`, `foo.localhost`, `foo.localhost.` (case already folded by `url`).
fn is_localhost_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refused range of `ip` under the default policy (no allow-list, no
    /// interface addresses, so only the tables speak).
    fn classify_ip(ip: IpAddr) -> Option<BlockedRange> {
        egress::AddressPolicy::with_local_addrs(false, vec![], vec![]).classify(ip)
    }

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    #[test]
    fn utf16_slice_handles_astral_and_persian_text() {
        // "😀" is 2 UTF-16 units and 4 bytes; Persian letters are 1 unit and 2 bytes.
        let text = "😀 سلام x";
        assert_eq!(utf16_slice(text, 0, 2), Some("😀"));
        assert_eq!(utf16_slice(text, 3, 4), Some("سلام"));
        assert_eq!(utf16_slice(text, 8, 1), Some("x"));
        assert_eq!(utf16_slice(text, 9, 0), Some(""));
        // Cutting the emoji's surrogate pair in half, or running past the end, is refused.
        assert_eq!(utf16_slice(text, 1, 2), None);
        assert_eq!(utf16_slice(text, 0, 1), None);
        assert_eq!(utf16_slice(text, 8, 2), None);
        assert_eq!(utf16_slice(text, usize::MAX, 2), None);
    }

    #[test]
    fn bare_scan_trims_sentence_punctuation_but_keeps_balanced_parens() {
        let text = "see https://en.wikipedia.org/wiki/Rust_(language)). and (http://a.com/x), ok?";
        assert_eq!(
            scan_bare_links(text),
            vec![
                "https://en.wikipedia.org/wiki/Rust_(language)",
                "http://a.com/x"
            ]
        );
    }

    #[test]
    fn bare_scan_handles_persian_punctuation_and_paths() {
        let text = "لینک: https://fa.wikipedia.org/wiki/ایران، و «https://b.com/v»؟";
        assert_eq!(
            scan_bare_links(text),
            vec!["https://fa.wikipedia.org/wiki/ایران", "https://b.com/v"]
        );
    }

    #[test]
    fn bare_scan_ignores_scheme_less_separators() {
        assert!(scan_bare_links(":// nothing here ://").is_empty());
        assert!(scan_bare_links("https:// ").is_empty());
        assert_eq!(scan_bare_links("xx1https://a.b"), vec!["xx1https://a.b"]);
    }

    #[test]
    fn classify_covers_every_listed_v4_range() {
        let cases = [
            ("0.0.0.0", BlockedRange::Unspecified),
            ("0.1.2.3", BlockedRange::ThisNetwork),
            ("10.1.2.3", BlockedRange::Private),
            ("100.64.0.1", BlockedRange::SharedAddressSpace),
            ("100.127.255.254", BlockedRange::SharedAddressSpace),
            ("127.0.0.1", BlockedRange::Loopback),
            ("127.255.255.254", BlockedRange::Loopback),
            ("169.254.169.254", BlockedRange::LinkLocal),
            ("172.16.0.1", BlockedRange::Private),
            ("172.31.255.255", BlockedRange::Private),
            ("192.0.0.8", BlockedRange::Reserved),
            ("192.0.2.1", BlockedRange::Documentation),
            ("192.168.1.1", BlockedRange::Private),
            ("198.18.0.1", BlockedRange::Benchmarking),
            ("198.19.255.1", BlockedRange::Benchmarking),
            ("198.51.100.7", BlockedRange::Documentation),
            ("203.0.113.9", BlockedRange::Documentation),
            ("224.0.0.1", BlockedRange::Multicast),
            ("239.255.255.250", BlockedRange::Multicast),
            ("240.0.0.1", BlockedRange::Reserved),
            ("255.255.255.255", BlockedRange::Broadcast),
        ];
        for (ip, range) in cases {
            assert_eq!(classify_ip(v4(ip)), Some(range), "{ip}");
        }
        // Neighbours just outside the blocks are public.
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert_eq!(classify_ip(v4(ip)), None, "{ip}");
        }
    }

    #[test]
    fn classify_covers_v6_ranges_and_embedded_v4() {
        let cases = [
            ("::", BlockedRange::Unspecified),
            ("::1", BlockedRange::Loopback),
            ("::ffff:127.0.0.1", BlockedRange::Loopback),
            ("::ffff:10.0.0.1", BlockedRange::Private),
            ("::ffff:169.254.169.254", BlockedRange::LinkLocal),
            ("::127.0.0.1", BlockedRange::Loopback),
            ("::8.8.8.8", BlockedRange::Reserved),
            ("64:ff9b::192.168.0.1", BlockedRange::Private),
            ("64:ff9b:1::1", BlockedRange::Private),
            ("2002:7f00:1::1", BlockedRange::Loopback),
            ("100::1", BlockedRange::Reserved),
            ("2001:2::1", BlockedRange::Benchmarking),
            ("2001:db8::1", BlockedRange::Documentation),
            ("3fff::1", BlockedRange::Documentation),
            ("fc00::1", BlockedRange::Private),
            ("fd12:3456::1", BlockedRange::Private),
            ("fe80::1", BlockedRange::LinkLocal),
            ("febf::1", BlockedRange::LinkLocal),
            ("fec0::1", BlockedRange::Private),
            ("ff02::1", BlockedRange::Multicast),
        ];
        for (ip, range) in cases {
            assert_eq!(classify_ip(v6(ip)), Some(range), "{ip}");
        }
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(classify_ip(v6(ip)), None, "{ip}");
        }
    }

    /// A resolver that answers every name with the same addresses.
    struct Fixed(Vec<IpAddr>);

    impl egress::Resolver for Fixed {
        fn lookup<'a>(&'a self, _name: &'a str) -> egress::ResolveFuture<'a> {
            let addrs = self.0.clone();
            Box::pin(async move { Ok(addrs) })
        }
    }

    async fn check_with(link: &str, answers: Vec<IpAddr>) -> Result<(), LinkError> {
        let dest = Destinations {
            policy: egress::AddressPolicy::with_local_addrs(false, vec![], vec![]),
            resolver: egress::BoundedResolver::new(
                std::sync::Arc::new(Fixed(answers)),
                egress::ResolveLimits::default(),
            ),
        };
        check_destination(&url::Url::parse(link).unwrap(), &dest).await
    }

    #[tokio::test]
    async fn any_private_answer_refuses_the_name() {
        let err = check_with("http://mixed.example/", vec![v4("8.8.8.8"), v4("10.0.0.5")])
            .await
            .unwrap_err();
        assert_eq!(
            err,
            LinkError::PrivateAddress {
                host: "mixed.example".into(),
                addr: v4("10.0.0.5"),
                range: BlockedRange::Private,
            }
        );
        assert!(check_with(
            "http://public.example/",
            vec![v4("8.8.8.8"), v6("2606:4700::1")]
        )
        .await
        .is_ok());
    }

    #[test]
    fn localhost_names() {
        for name in [
            "localhost",
            "localhost.",
            "a.b.localhost",
            "x.localhost.",
            "LOCALHOST",
        ] {
            assert!(is_localhost_name(name), "{name}");
        }
        for name in ["localhost.com", "notlocalhost", "localhostx.org"] {
            assert!(!is_localhost_name(name), "{name}");
        }
    }

    #[test]
    fn codes_are_distinct() {
        let errors = [
            LinkError::NotALink { reason: "x".into() },
            LinkError::LooksLikeOption,
            LinkError::UnsupportedScheme {
                scheme: "ftp".into(),
            },
            LinkError::MissingHost,
            LinkError::TooLong { len: 1, max: 0 },
            LinkError::PrivateAddress {
                host: "h".into(),
                addr: v4("127.0.0.1"),
                range: BlockedRange::Loopback,
            },
            LinkError::Unresolvable {
                host: "h".into(),
                reason: "r".into(),
            },
        ];
        let codes: std::collections::HashSet<_> = errors.iter().map(LinkError::code).collect();
        assert_eq!(codes.len(), errors.len());
    }
}
