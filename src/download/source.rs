//! Where yt-dlp releases come from (`downloader.ytdlp_source`): a PEP 503
//! "simple" index (PyPI by default) or a folder of wheels, and how far apart
//! two yt-dlp versions are (its versions are dates: 2026.10.26).

use std::path::PathBuf;

pub const PYPI: &str = "https://pypi.org/simple";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A PEP 503 simple index: `pip --index-url`.
    Index(String),
    /// A folder of wheels: `pip --no-index --find-links`.
    Folder(PathBuf),
}

impl Source {
    /// From the config value: "" is PyPI, an http(s) URL an index, anything
    /// else a folder.
    pub fn from_setting(s: &str) -> Self {
        let s = s.trim();
        if s.is_empty() {
            Source::Index(PYPI.into())
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Source::Index(s.trim_end_matches('/').into())
        } else {
            Source::Folder(PathBuf::from(s))
        }
    }

    pub fn pip_args(&self) -> Vec<String> {
        match self {
            Source::Index(url) => vec!["--index-url".into(), url.clone()],
            Source::Folder(dir) => vec![
                "--no-index".into(),
                "--find-links".into(),
                dir.display().to_string(),
            ],
        }
    }

    /// The newest yt-dlp release the source lists, without installing it
    /// (for an operator-managed yt-dlp, which the bot never changes).
    pub async fn newest(&self) -> Result<String, String> {
        let names: Vec<String> = match self {
            Source::Folder(dir) => std::fs::read_dir(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Source::Index(url) => {
                let page = format!("{url}/yt-dlp/");
                // teloxide's reqwest (as src/botapi does): the bot has no
                // HTTP client crate of its own.
                let body = teloxide::net::default_reqwest_settings()
                    .timeout(std::time::Duration::from_secs(30))
                    .build()
                    .map_err(|e| e.to_string())?
                    .get(&page)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| format!("{page}: {e}"))?
                    .text()
                    .await
                    .map_err(|e| format!("{page}: {e}"))?;
                // Anchor texts of a simple index are the file names.
                body.split('>')
                    .filter_map(|s| s.split('<').next())
                    .map(str::to_owned)
                    .collect()
            }
        };
        names
            .iter()
            .filter_map(|n| wheel_version(n))
            .max_by(|a, b| compare(a, b))
            .ok_or_else(|| "no yt-dlp release listed".into())
    }
}

/// `yt_dlp-2026.10.26-py3-none-any.whl` -> `2026.10.26`. Pre-releases
/// (`2026.10.26.232815.dev0`) are left out, as pip leaves them out.
fn wheel_version(name: &str) -> Option<String> {
    let rest = name.strip_prefix("yt_dlp-")?;
    let stem = rest.strip_suffix(".whl")?;
    let v = stem.split('-').next()?;
    v.split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.to_string())
}

fn numbers(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Compare two versions number by number (2026.2.1 < 2026.10.26).
pub fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    numbers(a).cmp(&numbers(b))
}

/// Days from version `old` to version `new` when both are yt-dlp's date
/// versions (YYYY.MM.DD); `None` otherwise.
pub fn days_behind(old: &str, new: &str) -> Option<i64> {
    let day = |v: &str| {
        let n = numbers(v);
        let (y, m, d) = (*n.first()?, *n.get(1)?, *n.get(2)?);
        if !(2000..3000).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return None;
        }
        Some(days_from_civil(y as i64, m as i64, d as i64))
    };
    Some(day(new)? - day(old)?)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm), to subtract dates without a calendar crate.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_an_index_or_a_folder() {
        assert_eq!(Source::from_setting(""), Source::Index(PYPI.into()));
        assert_eq!(
            Source::from_setting("http://127.0.0.1:9/simple/"),
            Source::Index("http://127.0.0.1:9/simple".into())
        );
        assert_eq!(
            Source::from_setting("/srv/wheels"),
            Source::Folder("/srv/wheels".into())
        );
    }

    #[test]
    fn versions_compare_by_number_and_count_days() {
        assert!(compare("2026.2.1", "2026.10.26").is_lt());
        assert!(compare("2026.10.26", "2026.10.26.1").is_lt());
        assert_eq!(days_behind("2026.01.31", "2026.03.01"), Some(29));
        assert_eq!(days_behind("2024.12.31", "2025.01.01"), Some(1));
        assert_eq!(days_behind("1.2", "2026.1.1"), None);
        assert_eq!(
            wheel_version("yt_dlp-2026.10.26-py3-none-any.whl").as_deref(),
            Some("2026.10.26")
        );
        assert_eq!(wheel_version("yt_dlp-2026.10.26.tar.gz"), None);
        assert_eq!(
            wheel_version("yt_dlp-2026.10.26.232815.dev0-py3-none-any.whl"),
            None
        );
    }

    #[tokio::test]
    async fn the_newest_wheel_of_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "yt_dlp-2026.2.1-py3-none-any.whl",
            "yt_dlp-2026.10.26-py3-none-any.whl",
            "other-9999.1.1-py3-none-any.whl",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let s = Source::Folder(dir.path().into());
        assert_eq!(s.newest().await.unwrap(), "2026.10.26");
        let empty = tempfile::tempdir().unwrap();
        assert!(Source::Folder(empty.path().into()).newest().await.is_err());
    }
}
