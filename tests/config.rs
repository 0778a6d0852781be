//! Configuration through the real binary: bad configs stop start-up with exit
//! code 2 and one line naming the key; the example config documents every key.

mod support;

use std::path::Path;
use std::process::Command;

use support::binary::{run_tgdl, write_config};
use tgdl::config::{Config, ConfigError};

/// Runs `tgdl run` with a broken config and returns its single stderr line.
fn refused(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = run_tgdl(&["run"], &write_config(dir.path(), config));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "exactly one line: {err:?}");
    assert!(
        !dir.path().join("data").exists(),
        "a refused config must not create anything"
    );
    err
}

const TOKEN: &str = "[telegram]\ntoken = \"123456:abcdef\"\n";

#[test]
fn a_misspelt_key_is_named_with_its_section() {
    let err = refused(&format!("{TOKEN}[downloader]\nconcurency = 4\n"));
    assert!(
        err.contains("config: unknown key 'downloader.concurency'"),
        "{err}"
    );
}

#[test]
fn an_unknown_section_is_named() {
    let err = refused(&format!("{TOKEN}[downloads]\nconcurrency = 4\n"));
    assert!(err.contains("unknown key 'downloads'"), "{err}");
}

#[test]
fn a_wrong_type_is_named() {
    let err = refused(&format!("{TOKEN}[downloader]\nconcurrency = \"four\"\n"));
    assert!(err.contains("'downloader.concurrency'"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn out_of_range_values_are_named() {
    for (cfg, key) in [
        ("[downloader]\nconcurrency = 0\n", "downloader.concurrency"),
        (
            "[telegram]\nupload_limit_mb = 5000\n",
            "telegram.upload_limit_mb",
        ),
        (
            "[health]\ndisk_free_percent_critical = 120\n",
            "health.disk_free_percent_critical",
        ),
        (
            "[health]\nmetrics_listen = \"nowhere\"\n",
            "health.metrics_listen",
        ),
        ("[telegram]\nlanguage = \"de\"\n", "telegram.language"),
        ("[telegram]\napi_url = \"ftp://x\"\n", "telegram.api_url"),
        ("[limits]\nqueue_capacity = 0\n", "limits.queue_capacity"),
    ] {
        // Keep the token valid so the range problem is the one reported.
        let text = if cfg.starts_with("[telegram]") {
            cfg.replace("[telegram]\n", TOKEN)
        } else {
            format!("{TOKEN}{cfg}")
        };
        let err = refused(&text);
        assert!(err.contains(&format!("'{key}'")), "{key}: {err}");
    }
}

#[test]
fn big_uploads_and_files_by_path_need_a_local_bot_api_server() {
    // Telegram's own server can neither read a path on this machine nor
    // take more than 50 MB.
    let err = refused(&format!("{TOKEN}local_api = true\n"));
    assert!(err.contains("'telegram.local_api'"), "{err}");
    assert!(err.contains("telegram-bot-api server (--local)"), "{err}");
    let err = refused(&format!("{TOKEN}upload_limit_mb = 1500\n"));
    assert!(err.contains("'telegram.upload_limit_mb'"), "{err}");
    assert!(err.contains("at most 50 MB"), "{err}");
    // A local server takes both, up to its 2000 MB.
    let local = format!("{TOKEN}api_url = \"http://127.0.0.1:8081\"\nlocal_api = true\n");
    let c = Config::parse(&format!("{local}upload_limit_mb = 2000\n"), None).unwrap();
    assert!(c.telegram.local_api);
    assert_eq!(c.upload_limit_bytes(), 2000 * 1024 * 1024);
    let err = refused(&format!("{local}upload_limit_mb = 2001\n"));
    assert!(err.contains("'telegram.upload_limit_mb'"), "{err}");
}

#[test]
fn a_missing_token_is_named() {
    let err = refused("");
    assert!(err.contains("'telegram.token'"), "{err}");
    assert!(err.contains("TGDL_TOKEN"), "{err}");
}

#[test]
fn tgdl_token_overrides_the_file_and_is_never_printed() {
    let c = Config::parse("[telegram]\ntoken = \"1:file\"\n", Some("2:env".into())).unwrap();
    assert_eq!(c.telegram.token, "2:env");
    assert!(!format!("{c:?}").contains("2:env"));
}

#[test]
fn bad_toml_and_missing_file_are_usage_errors() {
    let err = refused("[telegram\n");
    assert!(err.contains("invalid TOML"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tgdl"))
        .args(["jobs", "--config", "/nonexistent/tgdl.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read '/nonexistent/tgdl.toml'"));
}

#[test]
fn tgdl_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.toml");
    std::fs::write(&path, "[downloader]\nconcurency = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tgdl"))
        .arg("jobs")
        .env("TGDL_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("downloader.concurency"));
}

#[test]
fn bad_usage_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_tgdl"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_example_config_is_valid_and_documents_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config.example.toml")).unwrap();
    let parsed = Config::parse(&text, None).expect("example parses");
    assert_eq!(parsed, Config::default(), "the example shows the defaults");
    // Every known key appears, each with a comment line right above it.
    let known = toml::Table::try_from(Config::default()).unwrap();
    for (section, keys) in &known {
        let keys = keys.as_table().unwrap();
        assert!(text.contains(&format!("[{section}]")), "section {section}");
        for key in keys.keys() {
            let line = text
                .lines()
                .position(|l| l.starts_with(&format!("{key} =")))
                .unwrap_or_else(|| panic!("{section}.{key} missing from the example"));
            let above = text.lines().nth(line - 1).unwrap();
            assert!(above.starts_with('#'), "{section}.{key} has no comment");
        }
    }
}

#[test]
fn spec_keys_are_all_known() {
    // The names in SPEC "Configuration" are a contract.
    let text = r#"
[telegram]
token = "1:x"
api_url = "https://api.telegram.org"
admins = [123456789]
allowed_users = []
upload_limit_mb = 50
language = "en"
[storage]
data_dir = "data"
backend = "sled"
postgres_url = ""
node_name = ""
[downloader]
ytdlp = "auto"
concurrency = 2
timeout_secs = 1800
max_attempts = 3
[limits]
per_user_active = 3
per_user_per_hour = 20
queue_capacity = 10000
[security]
allow_private_networks = false
[health]
interval_secs = 60
alert_cooldown_secs = 300
disk_free_percent_critical = 10
memory_percent_warning = 85
cpu_percent_warning = 90
downloads_dir_gb_warning = 50
metrics_listen = ""
"#;
    let c = Config::parse(text, None).unwrap();
    assert_eq!(c.telegram.admins, vec![123456789]);
    assert!(matches!(
        Config::parse("[telegram]\nadmins = [0]\n", None),
        Err(ConfigError::Invalid { key, .. }) if key == "telegram.admins"
    ));
}

#[test]
fn an_empty_ffmpeg_setting_is_refused_by_name() {
    let text = "[telegram]\ntoken = \"1:x\"\n[downloader]\nffmpeg = \" \"\n";
    assert!(matches!(
        Config::parse(text, None),
        Err(ConfigError::Invalid { key, .. }) if key == "downloader.ffmpeg"
    ));
    let ok = "[telegram]\ntoken = \"1:x\"\n[downloader]\nffmpeg = \"/opt/ffmpeg\"\n";
    assert_eq!(
        Config::parse(ok, None).unwrap().downloader.ffmpeg,
        "/opt/ffmpeg"
    );
}

#[test]
fn storage_backend_keys_are_checked_by_name() {
    let err = refused(&format!("{TOKEN}[storage]\nbackend = \"mysql\"\n"));
    assert!(err.contains("'storage.backend'"), "{err}");
    let err = refused(&format!("{TOKEN}[storage]\nbackend = \"postgres\"\n"));
    assert!(err.contains("storage.postgres_url"), "{err}");
    assert!(err.contains("must be set"), "{err}");
    let err = refused(&format!(
        "{TOKEN}[storage]\nbackend = \"postgres\"\npostgres_url = \"mysql://db\"\n"
    ));
    assert!(err.contains("storage.postgres_url"), "{err}");
    let err = refused(&format!("{TOKEN}[storage]\nnode_name = \"a b\"\n"));
    assert!(err.contains("storage.node_name"), "{err}");
    // Accepted as written; the host name stands in for an empty node name.
    let ok = "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://u:secret@db/tgdl\"\nnode_name = \"n1\"\n";
    let c = Config::parse(ok, None).unwrap();
    assert_eq!(c.storage.backend, tgdl::config::StorageBackend::Postgres);
    assert_eq!(c.node_name(), "n1");
    assert!(!Config::default().node_name().is_empty());
    // The URL's password never reaches a log line.
    assert!(!format!("{c:?}").contains("secret"));
}
