//! Delivered media looks right in Telegram (issue 17): what the fake Bot API
//! received for videos of three shapes, a video whose index was at the end,
//! a source thumbnail (and one on a refused host), audio with its tags, a
//! document, a hostile title, and a bot without ffmpeg and ffprobe.
//!
//! Every expected size and length is ffprobe's reading of the bytes the fake
//! received, not a number written here.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::bot::{media, wait_for_text, TestBot, ADMIN};
use support::fake_telegram::{Call, FakeTelegram};
use support::media_server::MediaServer;
use support::{fixture_bytes, fixtures_dir};

const T: Duration = Duration::from_secs(90);

/// Width, height and whole seconds of `bytes` as ffprobe reads them.
fn ffprobe(bytes: &[u8]) -> (Option<i64>, Option<i64>, Option<i64>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe");
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json"])
        .args(["-show_format", "-show_streams"])
        .arg(&path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let video = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "video");
    let dim = |k: &str| video.and_then(|s| s[k].as_i64());
    let secs = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse::<f64>().ok())
        .map(|d| (d.round() as i64).max(1));
    (dim("width"), dim("height"), secs)
}

/// The uploaded thumbnail: a JPEG under 200 kB, at most 320 px on its long
/// side; its size.
fn thumbnail(call: &Call) -> (i64, i64) {
    let t = call.file("thumbnail").expect("a thumbnail was uploaded");
    assert!(t.bytes.starts_with(&[0xFF, 0xD8, 0xFF]), "not a JPEG");
    assert!(t.bytes.len() < 200_000, "{} bytes", t.bytes.len());
    let (w, h, _) = ffprobe(&t.bytes);
    let (w, h) = (w.unwrap(), h.unwrap());
    assert!(w.max(h) <= 320, "{w}x{h}");
    (w, h)
}

/// A file name a person can read: the extension, some text before it, no
/// control, bidi or path characters.
fn readable_name(call: &Call, field: &str, ext: &str) -> String {
    let name = call
        .file(field)
        .unwrap()
        .file_name
        .clone()
        .expect("a file name");
    assert!(name.ends_with(ext), "{name:?}");
    assert!(name.len() > ext.len(), "{name:?}");
    assert!(
        !name.chars().any(|c| c.is_control()
            || "/\\:*?\"<>|".contains(c)
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')),
        "{name:?}"
    );
    name
}

/// The admin's `/health` report.
async fn health(api: &FakeTelegram) -> String {
    let admin = ADMIN as i64;
    api.push_text(admin, ADMIN, "/health", None);
    let msgs = wait_for_text(api, admin, |t| t.contains("ffprobe"), T).await;
    msgs.iter()
        .filter_map(|m| m.text.clone())
        .find(|t| t.contains("ffprobe"))
        .unwrap()
}

fn call_for<'a>(calls: &'a [Call], link: &str) -> &'a Call {
    calls
        .iter()
        .find(|c| c.caption().is_some_and(|t| t.contains(link)))
        .unwrap_or_else(|| panic!("no upload for {link}"))
}

/// Top-level MP4 boxes in order.
fn boxes(bytes: &[u8]) -> Vec<String> {
    let (mut pos, mut out) = (0usize, Vec::new());
    while pos + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        out.push(String::from_utf8_lossy(&bytes[pos + 4..pos + 8]).into_owned());
        if size < 8 {
            break;
        }
        pos += size;
    }
    out
}

/// The payload of the `mdat` box: the coded frames.
fn mdat(bytes: &[u8]) -> &[u8] {
    let mut pos = 0usize;
    while pos + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if &bytes[pos + 4..pos + 8] == b"mdat" {
            return &bytes[pos + 8..pos + size];
        }
        pos += size;
    }
    panic!("no mdat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn videos_of_three_shapes_carry_ffprobes_size_length_and_a_thumbnail() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, "").await;
    let shapes = [
        ("tiny.mp4", (160, 120)),
        ("portrait.mp4", (90, 160)),
        ("square.mp4", (120, 120)),
    ];
    for (i, (name, _)) in shapes.iter().enumerate() {
        let chat = 1001 + i as i64;
        api.push_text(chat, chat as u64, &media.url(name), None);
    }
    assert!(
        api.wait_succeeded("sendVideo", 3, T).await,
        "{}",
        api.describe_calls()
    );
    let calls = api.calls_to("sendVideo");
    for (name, (w, h)) in shapes {
        let call = call_for(&calls, &media.url(name));
        let video = call.file("video").unwrap();
        let (pw, ph, secs) = ffprobe(&video.bytes);
        assert_eq!((pw, ph), (Some(w), Some(h)), "{name}: the fixture's shape");
        assert_eq!(call.param_i64("width"), pw, "{name}");
        assert_eq!(call.param_i64("height"), ph, "{name}");
        assert_eq!(call.param_i64("duration"), secs, "{name}");
        // A frame of the video, so the thumbnail has the video's shape.
        let (tw, th) = thumbnail(call);
        assert_eq!(tw * h, th * w, "{name}: thumbnail {tw}x{th}");
        let stem = name.trim_end_matches(".mp4");
        assert_eq!(readable_name(call, "video", ".mp4"), format!("{stem}.mp4"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_video_with_its_index_at_the_end_is_remuxed_without_reencoding() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, "").await;
    let original = fixture_bytes("square.mp4");
    let before = boxes(&original);
    let at = |b: &[String], k: &str| b.iter().position(|x| x == k).unwrap();
    assert!(at(&before, "mdat") < at(&before, "moov"), "{before:?}");

    api.push_text(1001, 1001, &media.url("square.mp4"), None);
    let call = &api.wait_for_calls("sendVideo", 1, T).await[0];
    let sent = &call.file("video").unwrap().bytes;
    let after = boxes(sent);
    assert!(at(&after, "moov") < at(&after, "mdat"), "{after:?}");
    assert_eq!(mdat(sent), mdat(&original), "the coded frames are copied");
    assert_eq!(
        call.param("supports_streaming").and_then(Value::as_bool),
        Some(true)
    );
    // A file that was streamable already goes byte for byte (see
    // bot_delivery: tiny.mp4 arrives identical).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_source_thumbnail_is_used_and_fetched_through_the_egress_rules() {
    // 127.0.0.2 stands for the internet (allowed), 127.0.0.1 for a refused
    // address, as in tests/egress.rs.
    let allowed = MediaServer::start_on(fixtures_dir(), "127.0.0.2".parse().unwrap()).await;
    let refused = MediaServer::start_on(fixtures_dir(), "127.0.0.1".parse().unwrap()).await;
    let page = |name: &str, cover: &str| {
        let html = format!(
            "<!DOCTYPE html><html><head><title>{name}</title>\
             <meta property=\"og:image\" content=\"{cover}\"></head>\
             <body><video src=\"{}\"></video></body></html>",
            allowed.url("tiny.mp4")
        );
        allowed.add_page(name, &html);
        allowed.url(&format!("page/{name}"))
    };
    let good = page("good", &allowed.url("cover.jpg"));
    let evil = page("evil", &refused.url("cover.jpg"));
    let api = FakeTelegram::start().await;
    let _bot = TestBot::start(
        &api,
        "[security]\nallow_private_networks = false\nallow_networks = [\"127.0.0.2/32\"]",
    )
    .await;
    api.push_text(1001, 1001, &good, None);
    api.push_text(1002, 1002, &evil, None);
    assert!(
        api.wait_succeeded("sendVideo", 2, T).await,
        "{}",
        api.describe_calls()
    );
    let calls = api.calls_to("sendVideo");

    // The 480x270 cover, scaled to 320 on its long side: not a 4:3 frame.
    assert!(!allowed.requests_to("/cover.jpg").is_empty());
    assert_eq!(thumbnail(call_for(&calls, &good)), (320, 180));
    // The cover on a refused host is never fetched; the video still goes,
    // with a frame of its own (160x120) as thumbnail.
    assert!(refused.requests().is_empty(), "{:?}", refused.requests());
    assert_eq!(thumbnail(call_for(&calls, &evil)), (160, 120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audio_carries_title_performer_and_length_and_a_document_its_name() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, "").await;
    api.push_text(
        1001,
        1001,
        &format!("/audio {}", media.url("song.m4a")),
        None,
    );
    api.push_text(1002, 1002, &media.url("blob.bin"), None);

    let audio = &api.wait_for_calls("sendAudio", 1, T).await[0];
    assert!(audio.succeeded(), "{:?}", audio.error());
    let file = audio.file("audio").unwrap();
    // The track's own tags, as the fixture carries them.
    assert_eq!(audio.param_str("title"), Some("Fixture Song"));
    assert_eq!(audio.param_str("performer"), Some("Fixture Artist"));
    assert_eq!(audio.param_i64("duration"), ffprobe(&file.bytes).2);
    assert_eq!(readable_name(audio, "audio", ".mp3"), "song.mp3");

    let doc = &api.wait_for_calls("sendDocument", 1, T).await[0];
    assert_eq!(
        doc.file("document").unwrap().bytes,
        fixture_bytes("blob.bin")
    );
    assert_eq!(readable_name(doc, "document", ".bin"), "blob.bin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_audio_with_a_source_picture_carries_it_as_its_cover() {
    let media = media().await;
    let html = format!(
        "<!DOCTYPE html><html><head><title>album</title>\
         <meta property=\"og:image\" content=\"{}\"></head>\
         <body><audio src=\"{}\"></audio></body></html>",
        media.url("cover.jpg"),
        media.url("song.m4a")
    );
    media.add_page("album", &html);
    let api = FakeTelegram::start().await;
    let _bot = TestBot::start(&api, "").await;
    let link = media.url("page/album");
    api.push_text(1001, 1001, &format!("/audio {link}"), None);
    let audio = &api.wait_for_calls("sendAudio", 1, T).await[0];
    assert!(audio.succeeded(), "{:?}", audio.error());
    // The 480x270 picture, within Telegram's limits.
    assert_eq!(thumbnail(audio), (320, 180));
    assert_eq!(audio.param_str("performer"), Some("Fixture Artist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_title_becomes_a_safe_file_name_and_the_disk_keeps_the_job_path() {
    let media = media().await;
    let title = format!(
        "../../etc/passwd&#7;&#27;[2J \u{202E}4pm.exe\u{202C} ویدیو/تست\\ {}",
        "x".repeat(3000)
    );
    let html = format!(
        "<!DOCTYPE html><html><head><title>{title}</title></head>\
         <body><video src=\"{}\"></video></body></html>",
        media.url("tiny.mp4")
    );
    media.add_page("hostile", &html);
    let api = FakeTelegram::start().await;
    let bot = TestBot::start(&api, "").await;
    // Held, so the file is still on disk to be looked at.
    let held = api.hold_next("sendVideo");
    api.push_text(1001, 1001, &media.url("page/hostile"), None);
    assert!(held.wait_arrived(1, T).await);
    let on_disk = bot.leftover_files();
    let file = on_disk
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "mp4"))
        .unwrap_or_else(|| panic!("{on_disk:?}"));
    let folder = file
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::parse_str(folder).is_ok(), "{file:?}");
    assert!(file.starts_with(bot.downloads()), "{file:?}");
    assert!(!file.to_string_lossy().contains("passwd"), "{file:?}");
    held.release();
    assert!(
        api.wait_succeeded("sendVideo", 1, T).await,
        "{}",
        api.describe_calls()
    );
    let call = &api.calls_to("sendVideo")[0];
    let name = readable_name(call, "video", ".mp4");
    assert!(name.chars().count() <= 64 + ".mp4".len(), "{name:?}");
    assert!(name.contains("ویدیو تست"), "{name:?}");
    assert!(!name.starts_with('.'), "{name:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_ffmpeg_and_ffprobe_the_video_goes_with_what_ytdlp_reported() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    // An empty folder: the configured place holds neither tool.
    let tools = tempfile::tempdir().unwrap();
    let extra = format!("[downloader]\nffmpeg = \"{}\"", tools.path().display());
    let _bot = TestBot::start(&api, &extra).await;
    api.push_text(1001, 1001, &media.url("tiny.mp4"), None);
    let call = &api.wait_for_calls("sendVideo", 1, T).await[0];
    assert!(call.succeeded(), "{:?}", call.error());
    assert_eq!(call.file("video").unwrap().bytes, fixture_bytes("tiny.mp4"));
    assert!(call.file("thumbnail").is_none(), "no ffmpeg, no thumbnail");
    // yt-dlp's generic extractor reports no size for a direct link, and
    // nothing else made one up.
    assert_eq!(call.param("width"), None);
    assert_eq!(readable_name(call, "video", ".mp4"), "tiny.mp4");

    let text = health(&api).await;
    assert!(text.contains("ffmpeg missing, ffprobe missing"), "{text}");
    assert!(text.contains("without ffprobe"), "{text}");
}

/// The media step on its own, with ffprobe taken away: yt-dlp's values go
/// out (here deliberately wrong ones, so the source of each is visible);
/// with ffprobe, the file's own.
#[tokio::test]
async fn without_ffprobe_the_values_are_ytdlps_and_with_it_the_files() {
    use tgdl::download::media::{prepare, MediaTools};
    use tgdl::download::DownloadOutput;
    use tgdl::job::{MediaInfo, MediaKind};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.mp4");
    std::fs::write(&file, fixture_bytes("portrait.mp4")).unwrap();
    let out = DownloadOutput {
        file_path: file.clone(),
        title: Some("clip title".into()),
        id: Some("p".into()),
        ext: Some("mp4".into()),
        width: Some(640),
        height: Some(360),
        duration: Some(7.2),
        filesize: 0,
        track: None,
        artist: None,
        uploader: Some("The Uploader".into()),
    };
    let all = MediaTools::resolve("auto");
    assert!(all.missing().is_empty(), "ffmpeg and ffprobe are installed");
    let no_ffprobe = MediaTools {
        ffprobe: None,
        ..all.clone()
    };

    let p = prepare(&no_ffprobe, &out, MediaKind::Video).await;
    let reported = MediaInfo {
        width: Some(640),
        height: Some(360),
        duration_secs: Some(7),
    };
    assert_eq!(p.media, reported);
    assert!(p.thumbnail.is_some(), "ffmpeg alone still takes a frame");

    let p = prepare(&all, &out, MediaKind::Video).await;
    let (w, h, secs) = ffprobe(&fixture_bytes("portrait.mp4"));
    let probed = MediaInfo {
        width: w.map(|v| v as u32),
        height: h.map(|v| v as u32),
        duration_secs: secs.map(|v| v as u32),
    };
    assert_eq!(p.media, probed);

    // An audio without tags and without ffprobe: the uploader performs.
    let p = prepare(&MediaTools::default(), &out, MediaKind::Audio).await;
    assert_eq!(p.title.as_deref(), Some("clip title"));
    assert_eq!(p.performer.as_deref(), Some("The Uploader"));
    assert_eq!(p.thumbnail, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_ffmpeg_but_no_ffprobe_the_video_has_a_thumbnail_and_health_names_ffprobe() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    // A folder holding ffmpeg only: ffprobe is "elsewhere".
    let tools = tempfile::tempdir().unwrap();
    let ffmpeg = tgdl::download::install::find_on_path("ffmpeg").expect("ffmpeg installed");
    std::os::unix::fs::symlink(ffmpeg, tools.path().join("ffmpeg")).unwrap();
    let extra = format!("[downloader]\nffmpeg = \"{}\"", tools.path().display());
    let _bot = TestBot::start(&api, &extra).await;
    api.push_text(1001, 1001, &media.url("portrait.mp4"), None);
    let call = &api.wait_for_calls("sendVideo", 1, T).await[0];
    assert!(call.succeeded(), "{:?}", call.error());
    // A frame of the portrait video, made by ffmpeg alone.
    assert_eq!(thumbnail(call), (90, 160));
    // No size from ffprobe, and yt-dlp reported none for a direct link.
    assert_eq!(call.param("width"), None);

    let text = health(&api).await;
    assert!(text.contains("ffmpeg present, ffprobe missing"), "{text}");
    assert!(!text.contains("without ffmpeg"), "{text}");
}
