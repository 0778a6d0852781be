//! `cargo bench --bench transfer`: what `tgdl export` and `tgdl import` cost
//! as a store grows (issue 11, moving between backends), through the release
//! binary as an operator runs them.
//!
//! For each size a store is seeded through the public API (finished jobs,
//! with 1 % of them in flight, as `benches/recovery.rs` seeds), then
//! `tgdl export --output FILE` and `tgdl import FILE` (into an empty data
//! dir) are timed. Import includes its checks: the whole file is read once
//! to validate it before the load, and the store's full invariant check
//! runs after. The figures set against each other: jobs per second each
//! way, the file's bytes per job, and the new store's size beside the old.
//!
//! Stores live in `/dev/shm` when it is tmpfs (seeding with a sync per
//! transaction would otherwise dominate), so the import's syncs cost little
//! here; on a disk each 512-line batch costs one more fdatasync.
//!
//! Environment:
//! - `TGDL_BENCH_QUICK=1`: 10,000 jobs only.
//! - `TGDL_BENCH_SEED_DIR=path`: where the stores are made.
//!
//! Arguments (cargo passes `--bench`) are ignored.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{describe_fs, fmt_dur, loadavg, new_job, seed_finished, seed_in_flight, tgdl_binary};
use tgdl::store::{JobStore, SledStore};
use uuid::Uuid;

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map_or(0, |m| m.len());
    };
    rd.filter_map(Result::ok).map(|e| dir_size(&e.path())).sum()
}

/// Run `tgdl <args> --config <dir>/config.toml` for the data dir `data`;
/// how long it took.
fn tgdl(binary: &Path, data: &Path, args: &[&str]) -> Duration {
    let cfg = data.with_extension("toml");
    std::fs::write(&cfg, format!("[storage]\ndata_dir = {data:?}\n")).expect("config");
    let t = Instant::now();
    let out = Command::new(binary)
        .args(args)
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run tgdl");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "tgdl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn per_sec(n: u64, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64())
}

fn main() {
    let sizes: Vec<u64> = if common::quick() {
        vec![10_000]
    } else {
        vec![10_000, 100_000]
    };
    let root = common::seed_dir().join("transfer");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("bench dir");
    let binary = tgdl_binary();
    println!(
        "tgdl export/import benchmark ({} CPUs, load average {}; stores in {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        describe_fs(&root)
    );
    println!();
    println!(
        "{:>9}  {:>10}  {:>10}  {:>9}  {:>10}  {:>10}  {:>11}  {:>11}",
        "jobs", "export", "rate", "B/job", "import", "rate", "store before", "store after"
    );
    for n in sizes {
        let old = root.join(format!("old-{n}"));
        {
            let store = SledStore::open(&old.join("db")).expect("open seed store");
            let in_flight = n / 100;
            seed_in_flight(&store, in_flight, Uuid::now_v7(), |i| new_job(1, i));
            seed_finished(&store, n - in_flight, 2);
            store.flush().expect("flush");
        }
        let file = root.join(format!("export-{n}.jsonl"));
        let out = file.to_str().expect("utf-8 path");
        let export = tgdl(&binary, &old, &["export", "--output", out]);
        let new = root.join(format!("new-{n}"));
        let import = tgdl(&binary, &new, &["import", out]);
        let bytes = std::fs::metadata(&file).map_or(0, |m| m.len());
        println!(
            "{:>9}  {:>10}  {:>10}  {:>9}  {:>10}  {:>10}  {:>11}  {:>11}",
            n,
            fmt_dur(export),
            per_sec(n, export),
            bytes / n,
            fmt_dur(import),
            per_sec(n, import),
            format!("{:.1} MB", dir_size(&old.join("db")) as f64 / 1e6),
            format!("{:.1} MB", dir_size(&new.join("db")) as f64 / 1e6),
        );
        let _ = std::fs::remove_dir_all(&old);
        let _ = std::fs::remove_dir_all(&new);
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_dir_all(&root);
}
