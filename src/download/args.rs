//! The yt-dlp command line, built once from a typed struct.
//!
//! Every safety property of a download hangs on this list, so it is built in
//! exactly one place and never by string concatenation or a shell:
//! - `--ignore-config` so no user or system config file can add options;
//! - `--no-playlist --playlist-items 1` so a download is one media, never a
//!   whole playlist;
//! - the link is the very last argument, after `--`, so a link that looks
//!   like an option (`--exec=...`) can only ever be a positional URL;
//! - the output path is `<downloads>/<job id>/<media id>.<ext>`: the folder is
//!   ours, the name comes from the media id (restricted to safe ASCII and
//!   truncated), never from the title.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Prefix of the progress lines we ask yt-dlp to print (see [`PROGRESS_TEMPLATE`]).
pub const PROGRESS_PREFIX: &str = "tgdl-progress ";

/// Prefix of the one line printed after the final file is in place.
pub const META_PREFIX: &str = "tgdl-meta ";

/// The `--progress-template` value. Fields are space separated because every
/// one of them is a number or yt-dlp's `NA` placeholder; `_percent` is the
/// float yt-dlp itself computes from the exact or estimated total.
pub const PROGRESS_TEMPLATE: &str = "download:tgdl-progress %(progress.status)s \
%(progress.downloaded_bytes)s %(progress.total_bytes)s %(progress.total_bytes_estimate)s \
%(progress.speed)s %(progress.eta)s %(progress._percent)s";

/// The `--print` value. `after_move` runs once the file has its final name
/// (after merging or audio extraction), and `%(.{...})j` prints those fields as
/// one line of ASCII JSON, so a title with newlines or odd characters cannot
/// break line-based parsing or forge another line. Fields yt-dlp does not know
/// are simply left out of the object.
pub const META_PRINT: &str = "after_move:tgdl-meta \
%(.{id,title,ext,width,height,duration,filesize,filepath,track,artist,uploader})j";

/// yt-dlp's sort order of its own `-t mp4` preset: prefer H.264 video and AAC
/// audio, which every Telegram client can play inline.
const MP4_SORT: &str = "vcodec:h264,lang,quality,res,fps,hdr:12,acodec:aac";

/// What the user asked for. The worker maps the job's media kind onto this;
/// it is local so this module does not depend on the job record's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Want {
    /// A video Telegram can stream: mp4 preferred, merged with ffmpeg.
    Video,
    /// Audio only: mp3 when ffmpeg can convert, else the best audio as is.
    Audio,
    /// The best file under the limit, sent as a document, no remuxing.
    Document,
}

/// The folder that holds everything a job downloads. Cleaning removes this
/// folder and nothing else, and the recovery pass recognises job folders by
/// this name, so it must be built here and only here.
pub fn job_dir(downloads_dir: &Path, job_id: Uuid) -> PathBuf {
    downloads_dir.join(job_id.hyphenated().to_string())
}

/// A format filter that leaves out protocols an HTTP proxy does not carry
/// (RTMP, RTSP, MMS, websockets, FTP).
const PROXIED: &str =
    "[protocol!*=rtmp][protocol!*=rtsp][protocol!*=mms][protocol!*=websocket][protocol!*=ftp]";

/// Every format of a selector (`a+b/c`), restricted to [`PROXIED`] protocols:
/// ones that do not go through an HTTP proxy would reach their host around
/// the egress filter, so they are never chosen.
pub fn proxied(selector: &str) -> String {
    selector
        .split('/')
        .map(|alt| {
            alt.split('+')
                .map(|f| format!("{f}{PROXIED}"))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Everything needed to run yt-dlp for one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YtDlpArgs {
    /// The yt-dlp executable.
    pub binary: PathBuf,
    /// The link, exactly as the user sent it (validated elsewhere).
    pub url: String,
    /// `<downloads>/<job id>/`, see [`job_dir`].
    pub output_dir: PathBuf,
    pub want: Want,
    /// Highest video height to pick (e.g. 720); formats of unknown height pass.
    pub max_height: Option<u32>,
    /// Telegram's upload limit in bytes: formats above it are not chosen and
    /// downloads that turn out larger are aborted.
    pub upload_limit: Option<u64>,
    /// A Netscape cookies file for sites that need a login.
    pub cookies: Option<PathBuf>,
    /// Operator-supplied options from the config, placed after ours (so they
    /// may override them) and before `--`.
    pub extra_args: Vec<String>,
    /// Whether ffmpeg is usable: without it yt-dlp cannot merge separate video
    /// and audio streams or convert audio, so we must not ask it to.
    pub has_ffmpeg: bool,
    /// The egress proxy of this run (`--proxy`): every request yt-dlp and its
    /// ffmpeg make goes through it.
    pub proxy: Option<String>,
    /// `--ffmpeg-location`: the folder `downloader.ffmpeg` names, so yt-dlp
    /// uses the ffmpeg the bot checked; `None` leaves it to PATH.
    pub ffmpeg_location: Option<PathBuf>,
}

impl YtDlpArgs {
    /// Arguments for one job with no limits, no cookies, and ffmpeg absent;
    /// set the public fields for the rest.
    pub fn new(
        binary: impl Into<PathBuf>,
        url: impl Into<String>,
        downloads_dir: &Path,
        job_id: Uuid,
        want: Want,
    ) -> Self {
        YtDlpArgs {
            binary: binary.into(),
            url: url.into(),
            output_dir: job_dir(downloads_dir, job_id),
            want,
            max_height: None,
            upload_limit: None,
            cookies: None,
            extra_args: Vec::new(),
            has_ffmpeg: false,
            proxy: None,
            ffmpeg_location: None,
        }
    }

    /// The `-o` template: `<output dir>/<media id, at most 64 bytes>.<ext>`.
    pub fn output_template(&self) -> OsString {
        // The directory is literal text inside a yt-dlp template, where `%`
        // starts a field: double it so a `%` in the downloads path survives.
        let mut bytes = Vec::new();
        for &b in self.output_dir.as_os_str().as_bytes() {
            if b == b'%' {
                bytes.push(b'%');
            }
            bytes.push(b);
        }
        if bytes.last() != Some(&b'/') {
            bytes.push(b'/');
        }
        // `.64B` caps the id at 64 bytes (ids are usually 5-20 characters, but
        // the generic extractor derives them from URL paths of any length).
        bytes.extend_from_slice(b"%(id).64B.%(ext)s");
        OsString::from_vec(bytes)
    }

    /// The `-f` format selector, honouring the upload limit and max height.
    pub fn format_selector(&self) -> String {
        let h = self
            .max_height
            .map(|h| format!("[height<=?{h}]"))
            .unwrap_or_default();
        // `<?` lets formats of unknown size through; `--max-filesize` and the
        // size check after the download catch those.
        let size = |n: Option<u64>| match n {
            Some(n) => format!("[filesize<?{n}][filesize_approx<?{n}]"),
            None => String::new(),
        };
        let all = size(self.upload_limit);
        // A merged download is video + audio, but yt-dlp filters each part on
        // its own; split the budget so the sum stays under the limit. Audio is
        // usually a few percent of a video, a fifth leaves room for long ones.
        let (v, a) = match self.upload_limit {
            Some(l) => (size(Some(l - l / 5)), size(Some(l / 5))),
            None => (String::new(), String::new()),
        };
        let selector = match (self.want, self.has_ffmpeg) {
            (Want::Video, true) => format!(
                "bv*[ext=mp4]{h}{v}+ba[ext=m4a]{a}/b[ext=mp4]{h}{all}/bv*{h}{v}+ba{a}/b{h}{all}"
            ),
            (Want::Video, false) => format!("b[ext=mp4]{h}{all}/b{h}{all}"),
            (Want::Audio, true) => format!("ba[acodec^=mp3]{all}/ba{all}/b{all}"),
            // Telegram's sendAudio plays m4a and mp3; anything else is still
            // better than nothing, and a video with sound is the last resort.
            (Want::Audio, false) => {
                format!("ba[ext=m4a]{all}/ba[ext=mp3]{all}/ba{all}/b{all}")
            }
            (Want::Document, true) => format!("bv*{h}{v}+ba{a}/b{h}{all}"),
            (Want::Document, false) => format!("b{h}{all}"),
        };
        proxied(&selector)
    }

    /// The complete argument list (without the program name).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::with_capacity(40 + self.extra_args.len());
        let mut push = |s: &OsStr| out.push(s.to_owned());
        for s in [
            "--ignore-config",
            "--no-colors",
            "--newline",
            // `--print` implies `--quiet`, which would hide both the progress
            // lines and the "larger than max-filesize" notice; undo that.
            "--no-quiet",
            "--progress",
            "--no-simulate",
            // No `--progress-delta`: yt-dlp reports once per block read and
            // its blocks grow with the speed (up to 4 MiB), so the line rate
            // stays modest, and a delta would hide every report during a
            // fast burst (and needs yt-dlp 2024.07 or later).
            "--progress-template",
            PROGRESS_TEMPLATE,
            "--restrict-filenames",
            // A download is one media, never a playlist: `--no-playlist` for
            // a link that is a video and a playlist at once, and only the
            // first item of a link that is a playlist all the same (a child
            // whose link is itself a list, a parent whose probe missed it).
            // Playlists are expanded into child jobs by the worker only.
            "--no-playlist",
            "--playlist-items",
            "1",
            // Keep `.part` files and resume them: a retried job continues
            // where the last attempt stopped.
            "--continue",
            // A fragment the egress filter refused must fail the download,
            // not leave a hole in the file.
            "--abort-on-unavailable-fragments",
        ] {
            push(OsStr::new(s));
        }
        push(OsStr::new("-o"));
        push(&self.output_template());
        push(OsStr::new("-f"));
        push(OsStr::new(&self.format_selector()));
        match (self.want, self.has_ffmpeg) {
            (Want::Video, true) => {
                // No `--remux-video`: a direct link to something that is not
                // media (sent as a document) would fail post-processing.
                for s in ["-S", MP4_SORT, "--merge-output-format", "mp4"] {
                    push(OsStr::new(s));
                }
            }
            (Want::Audio, true) => {
                for s in ["-x", "--audio-format", "mp3"] {
                    push(OsStr::new(s));
                }
            }
            _ => {}
        }
        if matches!(self.want, Want::Video | Want::Audio) {
            // The source's own picture becomes the Telegram thumbnail (or
            // the audio's cover). It is fetched like every other request of
            // the run, through `--proxy`; a failure is only a warning.
            push(OsStr::new("--write-thumbnail"));
        }
        if let Some(dir) = &self.ffmpeg_location {
            push(OsStr::new("--ffmpeg-location"));
            push(dir.as_os_str());
        }
        if let Some(limit) = self.upload_limit {
            push(OsStr::new("--max-filesize"));
            push(OsStr::new(&limit.to_string()));
        }
        if let Some(proxy) = &self.proxy {
            push(OsStr::new("--proxy"));
            push(OsStr::new(proxy));
        }
        if let Some(cookies) = &self.cookies {
            push(OsStr::new("--cookies"));
            push(cookies.as_os_str());
        }
        push(OsStr::new("--print"));
        push(OsStr::new(META_PRINT));
        for extra in &self.extra_args {
            push(OsStr::new(extra));
        }
        push(OsStr::new("--"));
        push(OsStr::new(&self.url));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> YtDlpArgs {
        let id = Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8057").unwrap();
        YtDlpArgs::new("yt-dlp", url, Path::new("/data/downloads"), id, Want::Video)
    }

    fn strings(a: &YtDlpArgs) -> Vec<String> {
        a.to_args()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    fn value_of(list: &[String], flag: &str) -> Option<String> {
        let i = list.iter().position(|s| s == flag)?;
        list.get(i + 1).cloned()
    }

    #[test]
    fn url_is_last_and_right_after_the_separator() {
        let list = strings(&args("https://example.com/v"));
        assert_eq!(list[list.len() - 2], "--");
        assert_eq!(list[list.len() - 1], "https://example.com/v");
        // `--` appears once, so nothing after our separator is an option.
        assert_eq!(list.iter().filter(|s| *s == "--").count(), 1);
    }

    #[test]
    fn option_looking_url_stays_positional() {
        let mut a = args("--exec=rm -rf /");
        a.extra_args = vec!["--socket-timeout".into(), "30".into()];
        let list = strings(&a);
        let sep = list.iter().position(|s| s == "--").unwrap();
        assert_eq!(&list[sep + 1..], ["--exec=rm -rf /"]);
        // The only occurrence of the hostile text is the positional one.
        assert_eq!(list.iter().filter(|s| s.contains("--exec")).count(), 1);
        // Extra args come before the separator.
        assert!(list.iter().position(|s| s == "--socket-timeout").unwrap() < sep);
    }

    #[test]
    fn first_argument_ignores_config() {
        assert_eq!(strings(&args("https://x.test/"))[0], "--ignore-config");
    }

    #[test]
    fn output_is_the_job_folder_and_the_media_id_only() {
        let a = args("https://x.test/");
        let list = strings(&a);
        let o = value_of(&list, "-o").unwrap();
        assert_eq!(
            o,
            "/data/downloads/01890a5d-ac96-774b-bcce-b302099a8057/%(id).64B.%(ext)s"
        );
        assert!(!o.contains("title"));
        assert_eq!(
            a.output_dir,
            Path::new("/data/downloads/01890a5d-ac96-774b-bcce-b302099a8057")
        );
        assert!(list.contains(&"--restrict-filenames".to_string()));
    }

    #[test]
    fn percent_in_the_downloads_path_is_escaped() {
        let id = Uuid::nil();
        let a = YtDlpArgs::new("yt-dlp", "u", Path::new("/srv/100%/dl"), id, Want::Video);
        assert_eq!(
            a.output_template(),
            OsString::from("/srv/100%%/dl/00000000-0000-0000-0000-000000000000/%(id).64B.%(ext)s")
        );
    }

    #[test]
    fn required_flags_are_present() {
        let list = strings(&args("https://x.test/"));
        for flag in [
            "--newline",
            "--no-colors",
            "--continue",
            "--no-playlist",
            "--no-quiet",
            "--progress",
        ] {
            assert!(list.iter().any(|s| s == flag), "missing {flag}");
        }
        assert!(!list.iter().any(|s| s == "--no-part"));
        assert_eq!(value_of(&list, "--playlist-items").unwrap(), "1");
        assert_eq!(
            value_of(&list, "--progress-template").unwrap(),
            PROGRESS_TEMPLATE
        );
        assert_eq!(value_of(&list, "--print").unwrap(), META_PRINT);
    }

    #[test]
    fn upload_limit_filters_formats_and_sets_max_filesize() {
        let mut a = args("https://x.test/");
        a.upload_limit = Some(50_000_000);
        a.has_ffmpeg = true;
        a.max_height = Some(720);
        let list = strings(&a);
        assert_eq!(value_of(&list, "--max-filesize").unwrap(), "50000000");
        let f = value_of(&list, "-f").unwrap();
        assert_eq!(
            f,
            proxied(
                "bv*[ext=mp4][height<=?720][filesize<?40000000][filesize_approx<?40000000]\
             +ba[ext=m4a][filesize<?10000000][filesize_approx<?10000000]\
             /b[ext=mp4][height<=?720][filesize<?50000000][filesize_approx<?50000000]\
             /bv*[height<=?720][filesize<?40000000][filesize_approx<?40000000]\
             +ba[filesize<?10000000][filesize_approx<?10000000]\
             /b[height<=?720][filesize<?50000000][filesize_approx<?50000000]"
            )
        );
        // Every alternative carries a size filter.
        for alt in f.split('/') {
            assert!(alt.contains("[filesize<?"), "{alt}");
        }
        assert_eq!(value_of(&list, "--merge-output-format").unwrap(), "mp4");
    }

    #[test]
    fn without_ffmpeg_nothing_needs_merging_or_converting() {
        for want in [Want::Video, Want::Audio, Want::Document] {
            let mut a = args("https://x.test/");
            a.want = want;
            a.upload_limit = Some(1000);
            let list = strings(&a);
            let f = value_of(&list, "-f").unwrap();
            assert!(!f.contains('+'), "{want:?}: {f}");
            assert!(!list
                .iter()
                .any(|s| s == "-x" || s == "--merge-output-format"));
        }
    }

    #[test]
    fn audio_with_ffmpeg_extracts_mp3() {
        let mut a = args("https://x.test/");
        a.want = Want::Audio;
        a.has_ffmpeg = true;
        let list = strings(&a);
        assert!(list.iter().any(|s| s == "-x"));
        assert_eq!(value_of(&list, "--audio-format").unwrap(), "mp3");
        assert_eq!(
            value_of(&list, "-f").unwrap(),
            proxied("ba[acodec^=mp3]/ba/b")
        );
        assert!(value_of(&list, "--max-filesize").is_none());
    }

    #[test]
    fn the_source_thumbnail_is_fetched_for_media_through_the_same_proxy() {
        for (want, thumb) in [
            (Want::Video, true),
            (Want::Audio, true),
            (Want::Document, false),
        ] {
            let mut a = args("https://x.test/");
            a.want = want;
            a.proxy = Some("http://u:p@127.0.0.1:9/".into());
            let list = strings(&a);
            assert_eq!(
                list.iter().any(|s| s == "--write-thumbnail"),
                thumb,
                "{want:?}"
            );
            // `--proxy` is global to the run: the thumbnail request takes it too.
            assert_eq!(
                value_of(&list, "--proxy").unwrap(),
                "http://u:p@127.0.0.1:9/"
            );
        }
    }

    #[test]
    fn a_configured_ffmpeg_folder_is_given_to_ytdlp() {
        let mut a = args("https://x.test/");
        assert!(!strings(&a).iter().any(|s| s == "--ffmpeg-location"));
        a.ffmpeg_location = Some("/opt/ffmpeg/bin".into());
        assert_eq!(
            value_of(&strings(&a), "--ffmpeg-location").unwrap(),
            "/opt/ffmpeg/bin"
        );
    }

    #[test]
    fn cookies_are_passed_as_one_argument() {
        let mut a = args("https://x.test/");
        a.cookies = Some("/etc/tgdl/cookies file.txt".into());
        let list = strings(&a);
        assert_eq!(
            value_of(&list, "--cookies").unwrap(),
            "/etc/tgdl/cookies file.txt"
        );
    }
}
