//! Health: alerts reach the admin through the fake Bot API (once per
//! cooldown, then "resolved"), the disk guard pauses and resumes claiming,
//! admin commands, and /metrics parsed as Prometheus text.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::bot::{media, wait_for_text, TestBot, ADMIN};
use support::fake_telegram::{FakeTelegram, SentMessage};
use support::service::{service_for, submit_link};
use tgdl::botapi::pacer::PacerConfig;
use tgdl::botapi::Api;
use tgdl::job::JobState;
use tgdl::ops::health::{HealthState, Monitor, Probe, SystemSample};
use tgdl::pipeline::JobService;
use tgdl::pipeline::{Pipeline, StepOutcome};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);
const GB: u64 = 1 << 30;
/// The shipped threshold; test configs lower it so the host's own disk
/// cannot pause them, and these tests drive a scripted disk against it.
const DISK_GUARD_AT_10: &str = "[health]\ndisk_free_percent_critical = 10";

/// A probe the test controls: the same interface the sysinfo probe
/// implements, fed with the machine state the test needs.
#[derive(Clone)]
struct Scripted(Arc<Mutex<SystemSample>>);

impl Probe for Scripted {
    fn system(&mut self) -> SystemSample {
        self.0.lock().unwrap().clone()
    }
}

fn normal() -> SystemSample {
    SystemSample {
        disk_total_bytes: 100 * GB,
        disk_free_bytes: 60 * GB,
        memory_percent: 30.0,
        cpu_percent: 5.0,
        process_rss_bytes: 20 << 20,
        threads: 8,
        open_files: 12,
    }
}

/// `user` sends `text` in their private chat; waits until one of the bot's
/// messages there satisfies `answered` and returns the bot's messages.
async fn ask(
    api: &FakeTelegram,
    user: i64,
    text: &str,
    answered: impl Fn(&str) -> bool,
) -> Vec<SentMessage> {
    api.push_text(user, user as u64, text, None);
    wait_for_text(api, user, answered, T).await
}

/// A health monitor over `core` that samples `machine` and alerts through the
/// fake Bot API, and the state it records its samples in.
/// The fake's Bot API behind the bot's pacer, as the running bot has it.
fn paced(api: &FakeTelegram) -> Api {
    Api::new(
        api.bot(),
        PacerConfig::default(),
        CancellationToken::new(),
        tokio_util::task::TaskTracker::new(),
    )
}

fn monitor_for(
    core: &Arc<JobService>,
    api: &FakeTelegram,
    machine: &Scripted,
) -> (Monitor, Arc<HealthState>) {
    let health = Arc::new(HealthState::default());
    let monitor = Monitor::new(
        core.clone(),
        health.clone(),
        Some(paced(api)),
        Box::new(machine.clone()),
    );
    (monitor, health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_condition_alerts_the_admin_once_per_cooldown_then_resolves() {
    let api = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let core = service_for(
        &api,
        dir.path(),
        "[health]\nalert_cooldown_secs = 3600\nmemory_percent_warning = 50",
    );
    let machine = Scripted(Arc::new(Mutex::new(normal())));
    let (mut monitor, _) = monitor_for(&core, &api, &machine);

    assert!(
        monitor.tick().await.unwrap().alerts.is_empty(),
        "healthy: no alert"
    );
    machine.0.lock().unwrap().memory_percent = 91.0;
    let tick = monitor.tick().await.unwrap();
    assert_eq!(tick.alerts.len(), 1);
    let to_admin = api
        .wait_for_messages(ADMIN as i64, |m| !m.is_empty(), T)
        .await;
    let text = to_admin[0].text.clone().unwrap();
    assert!(
        text.contains("memory_high") && text.contains("91 %"),
        "{text}"
    );
    assert!(text.contains("What to do"), "{text}");
    // Still high: no second alert within the cooldown.
    monitor.tick().await.unwrap();
    monitor.tick().await.unwrap();
    assert_eq!(api.sent_messages(ADMIN as i64).len(), 1);
    // It clears: one "resolved".
    machine.0.lock().unwrap().memory_percent = 30.0;
    monitor.tick().await.unwrap();
    let msgs = api
        .wait_for_messages(ADMIN as i64, |m| m.len() >= 2, T)
        .await;
    assert!(msgs[1]
        .text
        .as_deref()
        .unwrap()
        .contains("resolved: memory_high"));
    monitor.tick().await.unwrap();
    assert_eq!(api.sent_messages(ADMIN as i64).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_that_cannot_be_delivered_stops_nothing() {
    let api = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let core = service_for(&api, dir.path(), "[health]\nmemory_percent_warning = 50");
    let machine = Scripted(Arc::new(Mutex::new(SystemSample {
        memory_percent: 95.0,
        ..normal()
    })));
    let (mut monitor, health) = monitor_for(&core, &api, &machine);
    api.fail_next("sendMessage", support::fake_telegram::Failure::Forbidden);
    let tick = monitor.tick().await.expect("the tick completes");
    assert_eq!(tick.alerts.len(), 1);
    assert!(health.latest().is_some(), "the sample was still recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_disk_guard_pauses_claiming_tells_users_and_resumes() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let dir = tempfile::tempdir().unwrap();
    let core = service_for(&api, dir.path(), DISK_GUARD_AT_10);
    let machine = Scripted(Arc::new(Mutex::new(normal())));
    let (mut monitor, _) = monitor_for(&core, &api, &machine);
    let pipeline = Pipeline {
        jobs: core.clone(),
        api: paced(&api),
        ytdlp: tgdl::download::YtDlp::operator(support::ytdlp()),
        tools: tgdl::download::media::MediaTools::resolve("auto"),
        shutdown: tokio_util::sync::CancellationToken::new(),
        upload_grace: Duration::from_secs(1),
        egress: None,
    };
    // A user's link is accepted and has its status message.
    let job = submit_link(&core, 77, 77, &media.url("/tiny.mp4")).await;
    let status = api.bot();
    use teloxide::prelude::Requester;
    let sent = status
        .send_message(teloxide::types::ChatId(77), "Accepted")
        .await
        .unwrap();
    core.attach_status(&job, sent.id.0).await.unwrap();

    // The disk fills: claiming pauses, the job waits, the user is told why.
    machine.0.lock().unwrap().disk_free_bytes = 5 * GB;
    let tick = monitor.tick().await.unwrap();
    assert!(tick.paused);
    assert!(matches!(pipeline.claim().await.unwrap(), StepOutcome::Idle));
    assert_eq!(
        core.store.get(job.id).await.unwrap().unwrap().state,
        JobState::Queued
    );
    let msgs = wait_for_text(&api, 77, |t| t.contains("low on disk space"), T).await;
    assert!(!msgs.is_empty());
    // Still low: still paused, and no job failed for it.
    monitor.tick().await.unwrap();
    assert!(matches!(pipeline.claim().await.unwrap(), StepOutcome::Idle));
    assert_eq!(core.store.counts().await.unwrap().failed, 0);

    // Space returns: claiming resumes by itself.
    machine.0.lock().unwrap().disk_free_bytes = 50 * GB;
    assert!(!monitor.tick().await.unwrap().paused);
    match pipeline.claim().await.unwrap() {
        StepOutcome::Advanced(j) => assert_eq!(j.id, job.id),
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_commands_work_and_refuse_non_admins() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, "").await;
    let user = 4242i64;
    // A job that fails (404), for /jobs failed, /job and /retry.
    let failed = ask(&api, user, &media.url("/404"), |t| t.contains("failed")).await;
    let short = failed
        .iter()
        .find_map(|m| {
            m.text
                .as_deref()
                .and_then(|t| t.split("Job ").nth(1))
                .map(|t| t[..8].to_string())
        })
        .expect("a short id");

    // Non-admins: /health is refused.
    ask(&api, user, "/health", |t| {
        t == "This command is for the bot's admins only."
    })
    .await;

    // Admin /health: status line and figures.
    let admin = ADMIN as i64;
    let m = ask(&api, admin, "/health", |t| t.contains("tgdl is")).await;
    let health = m
        .iter()
        .filter_map(|m| m.text.clone())
        .find(|t| t.contains("tgdl is"))
        .unwrap();
    for needle in [
        "disk free",
        "memory",
        "queue:",
        "last hour",
        "yt-dlp",
        "uptime",
    ] {
        assert!(health.contains(needle), "{needle} in {health}");
    }
    // Admin /jobs: counts per state; /jobs failed: the failure with its reason.
    ask(&api, admin, "/jobs", |t| {
        t.starts_with("jobs:") && t.contains("1 failed")
    })
    .await;
    ask(&api, admin, "/jobs failed", |t| {
        t.contains("recent failures") && t.contains(&short) && t.contains("http_404")
    })
    .await;
    // Admin /job on another user's job shows its history.
    ask(&api, admin, &format!("/job {short}"), |t| {
        t.contains("history:") && t.contains("failed")
    })
    .await;
    // Admin /retry on another user's failed job requeues it.
    ask(&api, admin, &format!("/retry {short}"), |t| {
        t.contains("queued again")
    })
    .await;
    // A non-owner, non-admin cannot touch it.
    ask(&api, 5555, &format!("/cancel {short}"), |t| {
        t.contains("not yours")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_cancel_works_on_any_job() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, "[downloader]\nconcurrency = 1").await;
    let user = 4243i64;
    // Hold the worker with a slow download so the second job stays queued.
    api.push_text(
        user,
        user as u64,
        &media.url("/slow/clip.mp4?burst=1024&chunk=1024&delay_ms=200"),
        None,
    );
    api.push_text(user, user as u64, &media.url("/tiny.mp4?second"), None);
    // Status messages are edited later; the acknowledgements as sent carry
    // the short ids.
    let acks = api
        .wait_for(
            |calls| {
                calls
                    .iter()
                    .filter(|c| {
                        c.is("sendMessage")
                            && c.text().is_some_and(|t| t.contains("Accepted as job "))
                    })
                    .count()
                    >= 2
            },
            T,
        )
        .await;
    let shorts: Vec<String> = acks
        .iter()
        .filter(|c| c.is("sendMessage"))
        .filter_map(|c| c.text())
        .filter(|t| t.contains("Accepted as job "))
        .map(|t| t.split("job ").nth(1).unwrap()[..8].to_string())
        .collect();
    let admin = ADMIN as i64;
    for s in &shorts {
        api.push_text(admin, ADMIN, &format!("/cancel {s}"), None);
    }
    api.wait_for_messages(
        admin,
        |m| {
            m.iter()
                .filter(|m| m.text.as_deref().is_some_and(|t| t.contains("cancelled")))
                .count()
                >= 2
        },
        T,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_as_prometheus_text_and_healthz_answers() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let port = support::free_port();
    let bot = TestBot::start(
        &api,
        &format!("[health]\nmetrics_listen = \"127.0.0.1:{port}\"\ninterval_secs = 1"),
    )
    .await;
    api.push_text(31, 31, &media.url("/tiny.mp4"), None);
    api.wait_for_call("deleteMessage", T).await;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // The listener starts with the bot; the job is done, so the metrics
    // carry its transitions.
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition format");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} {label:?} missing in:\n{text}"))
    };
    assert_eq!(value("tgdl_jobs", Some(("state", "done"))), 1.0);
    assert_eq!(value("tgdl_jobs", Some(("state", "queued"))), 0.0);
    assert!(value("tgdl_transitions_total", Some(("to", "done"))) >= 1.0);
    assert!(value("tgdl_uploaded_bytes_total", None) > 0.0);
    // The names scrapers and dashboards know, whatever writes them
    // (`value` panics on a missing one); nothing was rescued or retried.
    for name in ["tgdl_rescues_total", "tgdl_retries_total"] {
        assert_eq!(value(name, None), 0.0, "{name}");
    }
    assert!(value("tgdl_downloaded_bytes_total", None) > 0.0);
    assert_eq!(value("tgdl_downloads_paused", None), 0.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "tgdl_stage_duration_seconds"),
        "histogram present"
    );
    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(bot);
}

/// A stand-in yt-dlp for a full disk: it writes a partial file, then fails
/// with the line real yt-dlp prints on ENOSPC (captured from yt-dlp
/// 2026.10.26 writing through a `.part` that was a symlink to /dev/full).
/// Once `space` exists it delivers `tiny.mp4` instead.
fn enospc_ytdlp(
    dir: &std::path::Path,
    runs: &std::path::Path,
    space: &std::path::Path,
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let fixture = support::fixtures_dir().join("tiny.mp4");
    let script = format!(
        r#"#!/bin/sh
case "$1" in --version) echo 2026.10.26; exit 0;; esac
echo run >> '{runs}'
prev=""; out=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
dir=$(dirname "$out")
mkdir -p "$dir"
if [ -e '{space}' ]; then
  cp '{fixture}' "$dir/x.mp4"
  echo "tgdl-meta {{\"id\": \"x\", \"ext\": \"mp4\", \"filepath\": \"$dir/x.mp4\"}}"
  exit 0
fi
head -c 200000 /dev/zero > "$dir/x.mp4.part"
echo "[download] Destination: $dir/x.mp4"
echo 'ERROR: unable to write data: [Errno 28] No space left on device' >&2
exit 1
"#,
        runs = runs.display(),
        space = space.display(),
        fixture = fixture.display(),
    );
    let path = dir.join("yt-dlp-enospc");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enospc_requeues_uncounted_deletes_the_partial_and_holds_claims_until_a_download_fits() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let dir = tempfile::tempdir().unwrap();
    let core = service_for(&api, dir.path(), DISK_GUARD_AT_10);
    let runs = dir.path().join("runs");
    let space = dir.path().join("space-is-back");
    let machine = Scripted(Arc::new(Mutex::new(normal())));
    let (mut monitor, _) = monitor_for(&core, &api, &machine);
    let pipeline = Pipeline {
        jobs: core.clone(),
        api: paced(&api),
        ytdlp: tgdl::download::YtDlp::operator(enospc_ytdlp(dir.path(), &runs, &space)),
        tools: tgdl::download::media::MediaTools::resolve("auto"),
        shutdown: tokio_util::sync::CancellationToken::new(),
        upload_grace: Duration::from_secs(1),
        egress: None,
    };
    let runs_so_far = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let job = submit_link(&core, 78, 78, &media.url("/tiny.mp4")).await;
    use teloxide::prelude::Requester;
    let sent = api
        .bot()
        .send_message(teloxide::types::ChatId(78), "Accepted")
        .await
        .unwrap();
    core.attach_status(&job, sent.id.0).await.unwrap();
    let folder = tgdl::download::job_dir(&core.config.downloads_dir(), job.id.0);

    // The disk fills under the download.
    let claimed = match pipeline.claim().await.unwrap() {
        StepOutcome::Advanced(j) => j,
        other => panic!("expected a claim, got {other:?}"),
    };
    let j = match pipeline.step(claimed).await.unwrap() {
        StepOutcome::Requeued(j) => j,
        other => panic!("expected the job back in the queue, got {other:?}"),
    };
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.attempts, 0, "no attempt counted");
    let err = j.last_error.clone().unwrap();
    assert_eq!(err.code, "no_space");
    assert!(err.text.contains("No space left on device"), "{err:?}");
    assert!(!folder.exists(), "the partial file is deleted");
    assert!(core.guard.is_paused() && core.guard.is_out_of_space());
    wait_for_text(&api, 78, |t| t.contains("low on disk space"), T).await;

    // Held: nothing is claimed, however often a worker asks.
    for _ in 0..3 {
        assert!(matches!(pipeline.claim().await.unwrap(), StepOutcome::Idle));
    }
    // Free space above the critical percentage, but not room for one more
    // download (100 MB by default): still held.
    {
        let mut m = machine.0.lock().unwrap();
        m.disk_total_bytes = 500 << 20;
        m.disk_free_bytes = 60 << 20;
    }
    assert!(monitor.tick().await.unwrap().paused);
    assert!(matches!(pipeline.claim().await.unwrap(), StepOutcome::Idle));
    assert_eq!(runs_so_far(), 1, "no retry loop while the disk is full");

    // Space returns: claims resume, and the job is delivered.
    std::fs::write(&space, b"").unwrap();
    machine.0.lock().unwrap().disk_free_bytes = 400 << 20;
    assert!(!monitor.tick().await.unwrap().paused);
    let claimed = match pipeline.claim().await.unwrap() {
        StepOutcome::Advanced(j) => j,
        other => panic!("expected a claim, got {other:?}"),
    };
    assert_eq!(claimed.id, job.id);
    match pipeline.run_job(claimed).await.unwrap() {
        StepOutcome::Finished(j) => {
            assert_eq!((j.state, j.attempts), (JobState::Done, 0));
        }
        other => panic!("expected done, got {other:?}"),
    }
    assert_eq!(runs_so_far(), 2);
    assert_eq!(api.count("sendVideo"), 1);
}

/// `/health` before the monitor's first tick samples afresh: the queue's
/// counts from the store, and each in-flight job past its stage's limit
/// named as stuck with its state and how long it has been in it (since it
/// entered the state, not since its last write); jobs that just entered
/// their state are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_health_sample_names_stuck_jobs_and_counts_the_queue() {
    use tgdl::job::{now_ms, JobOptions, NewJob, HOUR_MS};
    use tgdl::store::{no_edit, EnqueueLimits, Expect};
    let api = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let core = service_for(&api, dir.path(), "");
    let store = &core.store;
    let limits = EnqueueLimits {
        per_user_active: 100,
        per_user_per_hour: 100,
        queue_capacity: 100,
        exempt: false,
    };
    let now = now_ms();
    let ago = now - HOUR_MS;
    for u in 1..=6u64 {
        let new = NewJob {
            chat_id: u as i64,
            user_id: u,
            request_msg_id: 1,
            lang: "en".into(),
            url: format!("https://example.com/{u}"),
            options: JobOptions::default(),
            parent: None,
            not_before: None,
        };
        store.enqueue(new, limits, ago).await.unwrap();
    }
    let owner = core.owner;
    let claim = |at| async move { store.claim(owner, HOUR_MS * 2, at).await.unwrap().unwrap() };
    let own = |s| Expect::owned(s, owner);
    // Downloading for an hour (the limit is timeout_secs + 60 = 1860 s),
    // though written to a moment ago: stuck.
    let slow = claim(ago).await;
    store
        .update(slow.id, own(JobState::Downloading), None, now, no_edit())
        .await
        .unwrap();
    // Uploading for an hour (limit 1260 s): stuck.
    let upload = claim(ago).await;
    store
        .update(
            upload.id,
            own(JobState::Downloading),
            Some(JobState::Uploading),
            ago,
            no_edit(),
        )
        .await
        .unwrap();
    // Cleaning for an hour (limit 300 s): stuck.
    let clean = claim(ago).await;
    store
        .update(
            clean.id,
            own(JobState::Downloading),
            Some(JobState::Cleaning),
            ago,
            no_edit(),
        )
        .await
        .unwrap();
    // Claimed an hour ago, uploading since now: not stuck.
    let moved = claim(ago).await;
    store
        .update(
            moved.id,
            own(JobState::Downloading),
            Some(JobState::Uploading),
            now,
            no_edit(),
        )
        .await
        .unwrap();
    // Claimed now: not stuck. One left queued.
    let fresh = claim(now).await;

    let state = Arc::new(HealthState::default());
    let text = tgdl::ops::report::health_text(&core, &state).await.unwrap();
    assert!(
        text.contains("queue: 1 queued, 2 downloading, 2 uploading, 1 cleaning"),
        "{text}"
    );
    assert!(text.contains("stuck_job"), "{text}");
    for (job, st) in [
        (&slow, "downloading"),
        (&upload, "uploading"),
        (&clean, "cleaning"),
    ] {
        let named = format!("{} {st} for ", job.id.short());
        let secs: u64 = text
            .split(&named)
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{named} in {text}"));
        assert!((3600..3700).contains(&secs), "{named}{secs} in {text}");
    }
    for job in [&moved, &fresh] {
        assert!(
            !text.contains(&job.id.short()),
            "{} in {text}",
            job.id.short()
        );
    }
    // The same through the monitor's own sample.
    let machine = Scripted(Arc::new(Mutex::new(normal())));
    let (mut monitor, _) = monitor_for(&core, &api, &machine);
    let sample = monitor.sample().await.unwrap();
    let mut stuck: Vec<(String, String)> = sample
        .stuck
        .iter()
        .map(|(id, st, _)| (id.clone(), st.clone()))
        .collect();
    stuck.sort();
    let mut want = vec![
        (slow.id.short(), "downloading".to_string()),
        (upload.id.short(), "uploading".to_string()),
        (clean.id.short(), "cleaning".to_string()),
    ];
    want.sort();
    assert_eq!(stuck, want);
    assert_eq!(sample.counts.active(), 6);
    assert_eq!(sample.oldest_queued_age_secs.map(|s| s >= 3600), Some(true));
}
