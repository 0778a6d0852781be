//! Turning yt-dlp's error output into a decision: retry later, or give up
//! and tell the user why.
//!
//! yt-dlp has no machine-readable error codes; what it has is a fairly stable
//! set of messages on `ERROR:` lines. The patterns below come from lines
//! produced by real yt-dlp runs (see the tests) and from yt-dlp's own source.
//! When nothing matches, the failure is [`Reason::Unknown`] and retryable:
//! attempts are capped, and a wrong "permanent" would throw away a job that a
//! second try could have delivered.

use std::fmt;

use crate::job::FailureCode;

/// Why a download failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No extractor understands the link (or it is not a URL at all).
    UnsupportedUrl,
    /// Removed, deleted, never existed, not yet live.
    Unavailable,
    /// Private video.
    Private,
    /// Not available from this server's country.
    GeoBlocked,
    /// Needs an account or cookies (age gate, members only, "confirm you're
    /// not a bot"); retrying without credentials cannot help.
    LoginRequired,
    /// Larger than the upload limit, and no smaller format exists.
    TooLarge,
    Http403,
    Http404,
    Http429,
    Http5xx,
    /// 416: the server would not serve the byte range asked for. With
    /// `--continue` that is a kept `.part` the file no longer extends: most
    /// often one already complete, left by a kill between yt-dlp's last
    /// write and its rename. yt-dlp's own way out (asking again without the
    /// range) sends the range again (2026.10.26), so every retry that keeps
    /// the `.part` fails the same way; the worker starts over without it.
    RangeNotSatisfiable,
    /// Connection refused or reset, DNS failure, TLS error.
    Network,
    Timeout,
    /// yt-dlp rejected its command line (`yt-dlp: error: ...`): a bad
    /// `extra_args` entry or a yt-dlp too old for our options. An operator
    /// problem that no retry fixes.
    Usage,
    /// The disk filled up under yt-dlp or ffmpeg (ENOSPC): nothing is wrong
    /// with the link, and nothing helps until space returns.
    NoSpace,
    Unknown,
}

impl Reason {
    /// Every reason, for exhaustive tests and for whoever maps them to text.
    pub const ALL: [Reason; 16] = [
        Reason::UnsupportedUrl,
        Reason::Unavailable,
        Reason::Private,
        Reason::GeoBlocked,
        Reason::LoginRequired,
        Reason::TooLarge,
        Reason::Http403,
        Reason::Http404,
        Reason::Http429,
        Reason::Http5xx,
        Reason::RangeNotSatisfiable,
        Reason::Network,
        Reason::Timeout,
        Reason::Usage,
        Reason::NoSpace,
        Reason::Unknown,
    ];

    /// Whether another attempt could succeed.
    ///
    /// 403 counts as retryable: on the big sites it mostly means an expired
    /// signed media URL, which a fresh extraction replaces.
    pub fn is_retryable(self) -> bool {
        match self {
            Reason::UnsupportedUrl
            | Reason::Unavailable
            | Reason::Private
            | Reason::GeoBlocked
            | Reason::LoginRequired
            | Reason::TooLarge
            | Reason::Http404
            | Reason::Usage => false,
            Reason::Http403
            | Reason::Http429
            | Reason::Http5xx
            | Reason::RangeNotSatisfiable
            | Reason::Network
            | Reason::Timeout
            | Reason::NoSpace
            | Reason::Unknown => true,
        }
    }

    /// The code the job records and the user is told about.
    pub fn failure_code(self) -> FailureCode {
        match self {
            Reason::UnsupportedUrl => FailureCode::UnsupportedUrl,
            Reason::Unavailable => FailureCode::Unavailable,
            Reason::Private => FailureCode::Private,
            Reason::GeoBlocked => FailureCode::GeoBlocked,
            Reason::LoginRequired => FailureCode::LoginRequired,
            Reason::TooLarge => FailureCode::TooLarge,
            Reason::Http403 => FailureCode::Http403,
            Reason::Http404 => FailureCode::Http404,
            Reason::Http429 => FailureCode::Http429,
            Reason::Http5xx => FailureCode::Http5xx,
            Reason::RangeNotSatisfiable => FailureCode::RangeNotSatisfiable,
            Reason::Network => FailureCode::Network,
            Reason::Timeout => FailureCode::Timeout,
            Reason::Usage => FailureCode::YtdlpUsage,
            Reason::NoSpace => FailureCode::NoSpace,
            Reason::Unknown => FailureCode::Unknown,
        }
    }

    /// A stable identifier for logs and metrics: the failure code's text.
    pub fn code(self) -> &'static str {
        self.failure_code().as_str()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A classified failure: the reason, and whether to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DownloadFailure {
    Retryable(Reason),
    Permanent(Reason),
}

impl DownloadFailure {
    /// The failure with the retry policy of [`Reason::is_retryable`].
    pub fn from_reason(reason: Reason) -> Self {
        if reason.is_retryable() {
            DownloadFailure::Retryable(reason)
        } else {
            DownloadFailure::Permanent(reason)
        }
    }

    pub fn reason(self) -> Reason {
        match self {
            DownloadFailure::Retryable(r) | DownloadFailure::Permanent(r) => r,
        }
    }

    pub fn is_retryable(self) -> bool {
        matches!(self, DownloadFailure::Retryable(_))
    }

    /// The reason's stable code.
    pub fn code(self) -> &'static str {
        self.reason().code()
    }
}

impl fmt::Display for DownloadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_retryable() {
            "retryable"
        } else {
            "permanent"
        };
        write!(f, "{kind} {}", self.code())
    }
}

/// Classifies one message (case-insensitively). Order matters: the most
/// specific patterns come first, because yt-dlp messages nest ("Video
/// unavailable. The uploader has not made this video available in your
/// country" is geo-blocking, "Private video. Sign in if ..." is private).
pub fn classify_message(message: &str) -> Option<Reason> {
    let m = message.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));

    if has(&["yt-dlp: error:", "no such option:"]) {
        return Some(Reason::Usage);
    }
    // Before everything else that could match the same line: a full disk is
    // the machine's problem, whatever yt-dlp was doing when it struck.
    if has(&["no space left on device", "[errno 28]"]) {
        return Some(Reason::NoSpace);
    }
    if has(&["private video", "this video is private", "video is private"]) {
        return Some(Reason::Private);
    }
    if has(&[
        "available in your country",
        "from your location",
        "geo restriction",
        "geo-restrict",
        "georestrict",
        "in your region",
    ]) {
        return Some(Reason::GeoBlocked);
    }
    if has(&[
        "larger than max-filesize",
        "requested format is not available",
    ]) {
        // With our selector every alternative ends in a size filter only, so
        // "no format" means "no format under the limit".
        return Some(Reason::TooLarge);
    }
    if has(&["unsupported url", "is not a valid url"]) {
        return Some(Reason::UnsupportedUrl);
    }
    if has(&[
        "sign in to confirm",
        "only available for registered users",
        "login required",
        "requires authentication",
        "members-only",
        "members only",
        "join this channel",
        "premium members",
        "use --cookies",
        "--cookies-from-browser or --cookies",
    ]) {
        return Some(Reason::LoginRequired);
    }
    if let Some(code) = http_status(&m) {
        return Some(match code {
            403 => Reason::Http403,
            404 | 410 => Reason::Http404,
            429 => Reason::Http429,
            401 => Reason::LoginRequired,
            451 => Reason::GeoBlocked,
            416 => Reason::RangeNotSatisfiable,
            500..=599 => Reason::Http5xx,
            _ => Reason::Unknown,
        });
    }
    if has(&[
        "video unavailable",
        "this video is unavailable",
        "video is not available",
        "content isn't available",
        "content is not available",
        "has been removed",
        "no longer available",
        "does not exist",
        "has been terminated",
        "no video formats found",
        "this live event will begin",
        "premieres in",
    ]) {
        return Some(Reason::Unavailable);
    }
    if has(&["timed out", "timeout"]) {
        return Some(Reason::Timeout);
    }
    if has(&[
        "connection refused",
        "connection reset",
        "connection aborted",
        "failed to resolve",
        "name or service not known",
        "temporary failure in name resolution",
        "no address associated",
        "network is unreachable",
        "no route to host",
        "remote end closed connection",
        "incompleteread",
        "incomplete read",
        "ssl:",
        "certificate verify failed",
        "urlopen error",
        "transporterror",
        "eof occurred",
        "broken pipe",
    ]) {
        return Some(Reason::Network);
    }
    None
}

/// The status of the first `HTTP Error NNN` in a message.
fn http_status(lower: &str) -> Option<u16> {
    let at = lower.find("http error ")? + "http error ".len();
    let digits = lower.get(at..at + 3)?;
    digits.parse().ok()
}

/// The `ERROR:` blocks of yt-dlp's stderr, last first: each is the `ERROR:`
/// line plus any following lines that belong to it (yt-dlp's messages can
/// span lines, e.g. geo-blocking lists countries on the next line).
fn error_blocks(lines: &[&str]) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in lines {
        let line = line.trim_matches(|c: char| c == '\r' || c == '\n');
        if line.starts_with("ERROR:") || line.starts_with("yt-dlp: error:") {
            blocks.extend(current.take());
            current = Some(line.to_owned());
        } else if line.starts_with("WARNING:") || line.starts_with('[') {
            blocks.extend(current.take());
        } else if let Some(block) = current.as_mut() {
            block.push('\n');
            block.push_str(line);
        }
    }
    blocks.extend(current);
    blocks.reverse();
    blocks
}

/// Classifies the tail of yt-dlp's stderr from a run that exited non-zero.
///
/// The last `ERROR:` block decides; earlier ones are consulted only if it says
/// nothing recognisable. Warnings never decide (yt-dlp warns about problems it
/// then works around). With no `ERROR:` line at all (a crash with a Python
/// traceback, a kill by the OOM killer) the whole tail is searched.
pub fn classify<'a>(stderr: impl IntoIterator<Item = &'a str>) -> DownloadFailure {
    let lines: Vec<&str> = stderr.into_iter().collect();
    let blocks = error_blocks(&lines);
    let reason = if blocks.is_empty() {
        lines
            .iter()
            .rev()
            .filter(|l| !l.starts_with("WARNING:"))
            .find_map(|l| classify_message(l))
    } else {
        blocks.iter().find_map(|b| classify_message(b))
    };
    DownloadFailure::from_reason(reason.unwrap_or(Reason::Unknown))
}

/// The line to show an operator (and store as the job's last error): the last
/// `ERROR:` line, else the last non-empty line.
pub fn summary<'a>(stderr: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut last_error = None;
    let mut last = None;
    for line in stderr {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("ERROR:") || line.starts_with("yt-dlp: error:") {
            last_error = Some(line);
        }
        last = Some(line);
    }
    last_error.or(last).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    use DownloadFailure::{Permanent, Retryable};

    fn one(line: &str) -> DownloadFailure {
        classify([line])
    }

    // Produced by yt-dlp 2026.10.26 against loopback servers (python
    // http.server and a tiny status-code server), copied byte for byte.
    #[test]
    fn real_lines_from_local_runs() {
        let cases = [
            ("ERROR: [generic] nope: Unable to download webpage: HTTP Error 404: File not found (caused by <HTTPError 404: File not found>)", Permanent(Reason::Http404)),
            ("ERROR: Unsupported URL: http://127.0.0.1:18765/page.html", Permanent(Reason::UnsupportedUrl)),
            ("ERROR: [generic] x: Unable to download webpage: HTTPConnection(host='127.0.0.1', port=18766): Failed to establish a new connection: [Errno 111] Connection refused (caused by TransportError(\"HTTPConnection(host='127.0.0.1', port=18766): Failed to establish a new connection: [Errno 111] Connection refused\"))", Retryable(Reason::Network)),
            ("ERROR: [generic] 403: Unable to download webpage: HTTP Error 403: Forbidden (caused by <HTTPError 403: Forbidden>)", Retryable(Reason::Http403)),
            ("ERROR: [generic] 429: Unable to download webpage: HTTP Error 429: Too Many Requests (caused by <HTTPError 429: Too Many Requests>)", Retryable(Reason::Http429)),
            ("ERROR: [generic] 503: Unable to download webpage: HTTP Error 503: Service Unavailable (caused by <HTTPError 503: Service Unavailable>)", Retryable(Reason::Http5xx)),
            ("ERROR: [generic] 500: Unable to download webpage: HTTP Error 500: Internal Server Error (caused by <HTTPError 500: Internal Server Error>)", Retryable(Reason::Http5xx)),
            // A complete `.part` kept by `--continue`, resumed: the test media
            // server (the kill -9 test's CI run) and Python's `http.server`.
            ("ERROR: unable to download video data: HTTP Error 416: Range Not Satisfiable", Retryable(Reason::RangeNotSatisfiable)),
            ("ERROR: unable to download video data: HTTP Error 416: Requested Range Not Satisfiable", Retryable(Reason::RangeNotSatisfiable)),
            ("ERROR: [download] Got error: HTTPConnectionPool(host='127.0.0.1', port=18767): Read timed out.", Retryable(Reason::Timeout)),
            ("ERROR: [generic] stallhead: Unable to download webpage: HTTPConnectionPool(host='127.0.0.1', port=18767): Read timed out. (read timeout=2.0) (caused by TransportError(\"HTTPConnectionPool(host='127.0.0.1', port=18767): Read timed out. (read timeout=2.0)\"))", Retryable(Reason::Timeout)),
            ("ERROR: [generic] x: Unable to download webpage: HTTPConnection(host='nonexistent.invalid', port=80): Failed to resolve 'nonexistent.invalid' ([Errno -2] Name or service not known) (caused by TransportError(\"HTTPConnection(host='nonexistent.invalid', port=80): Failed to resolve 'nonexistent.invalid' ([Errno -2] Name or service not known)\"))", Retryable(Reason::Network)),
            ("ERROR: [generic] 'not a url' is not a valid URL", Permanent(Reason::UnsupportedUrl)),
            ("ERROR: [generic] clip: Requested format is not available. Use --list-formats for a list of available formats", Permanent(Reason::TooLarge)),
            // The .part file was a symlink to /dev/full, which fails every
            // write with ENOSPC as a full disk does.
            ("ERROR: unable to write data: [Errno 28] No space left on device", Retryable(Reason::NoSpace)),
        ];
        for (line, want) in cases {
            assert_eq!(one(line), want, "{line}");
        }
    }

    // Lines reported in yt-dlp's issue tracker (yt-dlp/yt-dlp#4455, #13217,
    // #11876, #10603) and youtube-dl's, plus messages from yt-dlp's source.
    #[test]
    fn real_lines_from_the_issue_tracker() {
        let cases = [
            ("ERROR: [youtube] M7mKMWjAxG8: Private video. Sign in if you've been granted access to this video", Permanent(Reason::Private)),
            ("ERROR: [youtube] qh_liphx2no: Video unavailable. The uploader has not made this video available in your country", Permanent(Reason::GeoBlocked)),
            ("ERROR: [youtube] xyz12345678: Video unavailable", Permanent(Reason::Unavailable)),
            ("ERROR: [youtube] xyz12345678: Video unavailable. This video has been removed by the uploader", Permanent(Reason::Unavailable)),
            ("ERROR: unable to download video data: HTTP Error 403: Forbidden", Retryable(Reason::Http403)),
            ("ERROR: Unable to download webpage: HTTP Error 429: Too Many Requests (caused by <HTTPError 429: 'Too Many Requests'>)", Retryable(Reason::Http429)),
            ("ERROR: [youtube] abc: Sign in to confirm you\u{2019}re not a bot. Use --cookies-from-browser or --cookies for the authentication. See  https://github.com/yt-dlp/yt-dlp/wiki/FAQ#how-do-i-pass-cookies-to-yt-dlp  for how to manually pass cookies. Also see  https://github.com/yt-dlp/yt-dlp/wiki/Extractors#exporting-youtube-cookies  for tips on effectively exporting YouTube cookies", Permanent(Reason::LoginRequired)),
            ("ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate for some users.", Permanent(Reason::LoginRequired)),
            ("ERROR: [vimeo] 123: This video is not available from your location due to geo restriction", Permanent(Reason::GeoBlocked)),
            ("ERROR: [youtube] abc: HTTPSConnectionPool(host='rr7---sn-pouxgn8t51-jx3z.googlevideo.com', port=443): Read timed out.", Retryable(Reason::Timeout)),
            ("ERROR: [download] Got error: The read operation timed out", Retryable(Reason::Timeout)),
            ("ERROR: unable to download video data: <urlopen error [Errno 111] Connection refused>", Retryable(Reason::Network)),
            ("yt-dlp: error: no such option: --progress-delta", Permanent(Reason::Usage)),
        ];
        for (line, want) in cases {
            assert_eq!(one(line), want, "{line}");
        }
    }

    #[test]
    fn multi_line_error_block_is_one_message() {
        // yt-dlp/yt-dlp#13217: the country list continues on the next line.
        let stderr = [
            "WARNING: [youtube] some recoverable hiccup: HTTP Error 403: Forbidden",
            "ERROR: [youtube] qh_liphx2no: The uploader has not made this video available in your country",
            "This video is available in Andorra, Belgium, Burundi, Benin.",
        ];
        assert_eq!(classify(stderr), Permanent(Reason::GeoBlocked));
    }

    #[test]
    fn warnings_do_not_decide() {
        let stderr = [
            "WARNING: [generic] Falling back on generic information extractor",
            "WARNING: [youtube] abc: HTTP Error 404: Not Found. Retrying (1/3)...",
            "ERROR: [youtube] abc: HTTP Error 503: Service Unavailable",
        ];
        assert_eq!(classify(stderr), Retryable(Reason::Http5xx));
        assert_eq!(
            classify(["WARNING: [youtube] abc: Video unavailable"]),
            Retryable(Reason::Unknown)
        );
    }

    #[test]
    fn the_last_error_wins() {
        let stderr = [
            "ERROR: [download] Got error: HTTP Error 503: Service Unavailable",
            "ERROR: [generic] nope: Unable to download webpage: HTTP Error 404: Not Found",
        ];
        assert_eq!(classify(stderr), Permanent(Reason::Http404));
    }

    #[test]
    fn unknown_is_retryable() {
        assert_eq!(
            classify(["ERROR: Postprocessing: something odd happened"]),
            Retryable(Reason::Unknown)
        );
        assert_eq!(classify([]), Retryable(Reason::Unknown));
    }

    #[test]
    fn traceback_without_error_line_is_searched() {
        let stderr = [
            "Traceback (most recent call last):",
            "  File \"/usr/lib/python3/socket.py\", line 1, in connect",
            "ConnectionResetError: [Errno 104] Connection reset by peer",
        ];
        assert_eq!(classify(stderr), Retryable(Reason::Network));
    }

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate {}", r.code());
            assert_eq!(FailureCode::parse(r.code()), r.failure_code());
            assert_eq!(DownloadFailure::from_reason(r).reason(), r);
            assert_eq!(
                DownloadFailure::from_reason(r).is_retryable(),
                r.is_retryable()
            );
        }
        assert_eq!(
            DownloadFailure::Permanent(Reason::Http404).to_string(),
            "permanent http_404"
        );
    }

    #[test]
    fn spec_retry_policy() {
        for r in [
            Reason::UnsupportedUrl,
            Reason::Unavailable,
            Reason::TooLarge,
            Reason::Private,
        ] {
            assert!(!r.is_retryable(), "{r}");
        }
        for r in [
            Reason::Network,
            Reason::Http5xx,
            Reason::Http429,
            Reason::Timeout,
            Reason::Unknown,
        ] {
            assert!(r.is_retryable(), "{r}");
        }
    }

    #[test]
    fn summary_prefers_the_last_error_line() {
        let stderr = ["ERROR: first", "ERROR: second", "some trailing note", ""];
        assert_eq!(summary(stderr).as_deref(), Some("ERROR: second"));
        assert_eq!(summary(["only a note"]).as_deref(), Some("only a note"));
        assert_eq!(summary(["", "  "]), None);
    }
}
