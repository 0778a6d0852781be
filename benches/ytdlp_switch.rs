//! `cargo bench --bench ytdlp_switch`: how long switching yt-dlp installs
//! takes (issue 14), and what choosing the install costs every job.
//!
//! Two install folders as the updater leaves them (`installed.json`,
//! `venv/bin/yt-dlp`) under `tools/ytdlp` on the build's disk
//! (`CARGO_TARGET_TMPDIR`, like a data_dir), then:
//! 1. the switch as `/update rollback` does it (`Layout::rollback`: the
//!    lock, two symlinks renamed over `current` and `previous`, both
//!    versions read, `state.json` written), timed in a loop that flips
//!    between the two installs. An update's switch is the same two renames
//!    after a install and self-test that take seconds (see the log line
//!    "yt-dlp switched ... took_us").
//! 2. `YtDlp::current()` as a job calls it: with nothing switched (one
//!    `readlink`), and the first call after a switch (also reads the new
//!    install's `installed.json`).
//! 3. Baseline from the same run: one `rename(2)` of a file in that folder.
//!
//! `TGDL_BENCH_QUICK=1`: fewer repetitions.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{describe_fs, fmt_dur, loadavg, quick, time_reps, Stats};
use tgdl::download::managed::Layout;
use tgdl::download::YtDlp;

fn fake_install(root: &Path, name: &str, version: &str) {
    let bin = root.join(name).join("venv/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("yt-dlp");
    std::fs::write(&script, format!("#!/bin/sh\necho {version}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        root.join(name).join("installed.json"),
        format!("{{\"version\":\"{version}\",\"installed_at\":0}}"),
    )
    .unwrap();
}

fn line(what: &str, s: &Stats) {
    println!(
        "{what:<52} median {:>9}  p99 {:>9}  max {:>9}  (n={})",
        fmt_dur(s.median),
        fmt_dur(s.p99),
        fmt_dur(s.max),
        s.n
    );
}

fn main() {
    let reps = if quick() { 200 } else { 5_000 };
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tools = base.path().join("tools");
    let layout = Layout::new(&tools);
    fake_install(&layout.root, "i-1", "2026.1.1");
    fake_install(&layout.root, "i-2", "2026.2.1");
    std::os::unix::fs::symlink("i-2", layout.root.join("current")).unwrap();
    std::os::unix::fs::symlink("i-1", layout.root.join("previous")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("ytdlp_switch: {}", describe_fs(&layout.root));
    println!("load before: {}", loadavg());

    let a = layout.root.join("a");
    let b = layout.root.join("b");
    std::fs::write(&a, b"x").unwrap();
    let mut flip = false;
    let rename = time_reps(reps, || {
        let (from, to) = if flip { (&b, &a) } else { (&a, &b) };
        std::fs::rename(from, to).unwrap();
        flip = !flip;
    });
    line("baseline: one rename(2) in tools/ytdlp", &rename);

    let switch = time_reps(reps, || {
        rt.block_on(layout.rollback()).unwrap();
    });
    line("switch (Layout::rollback: lock, 2 renames, state)", &switch);

    let ytdlp = YtDlp::managed(layout.clone()).unwrap();
    let same = time_reps(reps, || {
        std::hint::black_box(ytdlp.current());
    });
    line("YtDlp::current(), nothing switched (per job)", &same);

    let mut after = Vec::with_capacity(reps);
    for _ in 0..reps {
        rt.block_on(layout.rollback()).unwrap();
        let t = std::time::Instant::now();
        let got = ytdlp.current();
        after.push(t.elapsed());
        assert_eq!(Some(got.dir.clone().unwrap()), layout.current_dir());
    }
    line(
        "YtDlp::current(), first call after a switch",
        &common::stats(after),
    );
    println!("load after: {}", loadavg());
}
