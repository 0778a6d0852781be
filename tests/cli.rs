//! The command line's promises (README "Command line"), on the real binary:
//! one-line usage errors and the exit-code table, `tgdl config check`,
//! `tgdl completions`, and `tgdl health` naming the yt-dlp the bot runs.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::binary::{run_tgdl, write_config};
use tgdl::store::SledStore;

fn tgdl(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tgdl"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TGDL_TOKEN")
        .env_remove("TGDL_CONFIG")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A config whose data dir (and database, created empty) is in `dir`.
fn stopped_bot(dir: &Path) -> std::path::PathBuf {
    drop(SledStore::open(&dir.join("db")).unwrap());
    write_config(dir, &format!("[storage]\ndata_dir = {:?}\n", dir))
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["frobnicate"][..],
        &["job"][..],
        &["jobs", "--bogus"][..],
        &["jobs", "--state", "sleeping"][..],
        &["completions", "tcsh"][..],
    ] {
        let out = tgdl(args, dir.path());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.starts_with("tgdl: "), "{args:?}: {err}");
        assert!(err.contains("tgdl --help"), "{args:?}: {err}");
    }
    // The one line still says what was wrong.
    let err = stderr(&tgdl(&["job"], dir.path()));
    assert!(err.contains("<ID>"), "{err}");
    let err = stderr(&tgdl(&["frobnicate"], dir.path()));
    assert!(err.contains("'frobnicate'"), "{err}");
}

#[test]
fn help_and_version_are_successes() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["--version"][..], &["jobs", "--help"][..]] {
        let out = tgdl(args, dir.path());
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn a_job_that_is_not_there_exits_1_and_a_malformed_id_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = stopped_bot(dir.path());
    let out = run_tgdl(&["job", "deadbeef"], &cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no job matches 'deadbeef'"), "{err}");

    let out = run_tgdl(&["job", "not-hex!"], &cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not a job id"), "{err}");
}

#[test]
fn config_check_accepts_a_good_config_and_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let out = tgdl(
        &["config", "check", "--config", example.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("config.example.toml: ok"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[downloader]\nconcurency = 2\n").unwrap();
    let out = tgdl(
        &["config", "check", "--config", bad.to_str().unwrap()],
        dir.path(),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("downloader.concurency"), "{err}");

    // A token that cannot be one is refused as `run` would, without a
    // network call; the token itself is not printed.
    std::fs::write(&bad, "[telegram]\ntoken = \"s3cret value\"\n").unwrap();
    let out = tgdl(
        &["config", "check", "--config", bad.to_str().unwrap()],
        dir.path(),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("telegram.token"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    // Nothing was created: no data dir next to the config.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn completions_for_each_shell_need_no_config() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef tgdl"),
        ("fish", "complete -c tgdl"),
    ] {
        let out = tgdl(&["completions", shell], dir.path());
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        for sub in ["jobs", "recover", "health", "completions"] {
            assert!(text.contains(sub), "{shell} completes {sub}");
        }
    }
}

#[test]
fn health_on_a_stopped_bot_reports_the_managed_ytdlp() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = stopped_bot(dir.path());
    // The managed install the bot made on its first start: one release
    // folder (its installed.json says its version) and `current` naming it.
    let root = dir.path().join("tools/ytdlp");
    let install = root.join("i-1");
    let bin = install.join("venv/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("yt-dlp");
    std::fs::write(&fake, "#!/bin/sh\necho 2031.02.03\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        install.join("installed.json"),
        r#"{"version":"2031.02.03","installed_at":1}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink("i-1", root.join("current")).unwrap();
    // A PATH without yt-dlp, as on a machine where only the bot installed it.
    let path = std::env::var_os("PATH").unwrap();
    let path =
        std::env::join_paths(std::env::split_paths(&path).filter(|d| !d.join("yt-dlp").exists()))
            .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tgdl"))
        .args(["health", "--config"])
        .arg(&cfg)
        .env("PATH", path)
        .env_remove("TGDL_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(text.contains("yt-dlp 2031.02.03"), "{text}");
    assert!(text.contains("yt-dlp managed by tgdl"), "{text}");
}

#[test]
fn health_while_the_database_is_held_and_no_socket_answers_says_try_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("[storage]\ndata_dir = {:?}\n", dir.path()),
    );
    // This process holds the database, as a running bot does.
    let _held = SledStore::open(&dir.path().join("db")).unwrap();
    let out = run_tgdl(&["health"], &cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("the bot is running"), "{err}");
    // The live CLI asks a running bot over its socket; with the database
    // held and no socket yet (a bot starting), the way out is to wait.
    assert!(err.contains("try again in a moment"), "{err}");
    assert!(err.contains("socket"), "{err}");
    assert!(!err.contains("/jobs"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_carry_the_job_and_user_on_job_lines() {
    let t = support::binary::BinaryTest::start("").await;
    let bot = t.start_bot_with_env(&[("TGDL_LOG_FORMAT", "json")]);
    t.api.push_text(1001, 1001, &t.media.url("tiny.mp4"), None);
    assert!(
        t.api
            .wait_succeeded("sendVideo", 1, std::time::Duration::from_secs(60))
            .await,
        "delivered; log:\n{}",
        bot.log_text()
    );
    let (status, bot) = bot
        .sigterm_and_wait(std::time::Duration::from_secs(10))
        .await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let log = bot.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Every line the worker wrote about the job is in its span.
    let ended: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "job step ended")
        .collect();
    assert_eq!(ended.len(), 1, "{log}");
    let span = &ended[0]["span"];
    assert_eq!(span["name"], "job", "{log}");
    assert_eq!(span["user_id"], 1001, "{log}");
    let job_id = span["job_id"].as_str().expect("job_id");
    assert!(
        job_id.len() == 32 && job_id.chars().all(|c| c.is_ascii_hexdigit()),
        "a full job id: {job_id}"
    );
    assert_eq!(ended[0]["outcome"], "finished done", "{log}");
    // The update's line names its sender, for an operator looking for an id.
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "update received" && l["user_id"] == 1001),
        "{log}"
    );
}

#[test]
fn an_unknown_log_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[telegram]\ntoken = \"123456:TEST-token\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_tgdl"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("TGDL_LOG_FORMAT", "xml")
        .env_remove("TGDL_TOKEN")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("TGDL_LOG_FORMAT: 'xml'"), "{err}");
    assert!(!dir.path().join("data").exists(), "nothing started");
}
