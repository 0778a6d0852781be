//! Time as the store keeps it: milliseconds since the Unix epoch.

/// Milliseconds since the Unix epoch. A plain integer so records stay small and
/// comparisons stay cheap; the store never reads the clock itself.
pub type Millis = u64;

/// One hour in [`Millis`] (the hourly limit's window, "the last hour" in reports).
pub const HOUR_MS: Millis = 3_600_000;

/// Current wall-clock time in [`Millis`].
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// RFC 3339 UTC, to the second: how times are shown to people (CLI, `/job`).
pub fn iso(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}
