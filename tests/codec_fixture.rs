//! Stored records must stay readable. `tests/fixtures/job_v1.bin` is a job
//! record exactly as version 1 of the codec wrote it, `job_v2.bin` one as
//! version 2 did (the same job, with a rescue mark); a later format change
//! must keep decoding both to the same jobs.

use tgdl::job::{
    Delivery, ErrorClass, Job, JobError, JobId, JobOptions, JobState, Lease, MediaInfo, MediaKind,
    RescueMark,
};
use tgdl::store::{codec, InFlight};
use uuid::Uuid;

fn expected() -> Job {
    Job {
        id: JobId(Uuid::parse_str("019ad2f0-1c2a-7b3e-8f00-112233445566").unwrap()),
        chat_id: -1001234567890,
        user_id: 987654321,
        request_msg_id: 42,
        status_msg_id: Some(43),
        lang: "fa".into(),
        url: "https://example.com/watch?v=abc&t=1".into(),
        options: JobOptions {
            kind: MediaKind::Audio,
            max_height: Some(720),
        },
        state: JobState::Done,
        attempts: 2,
        rescues: 1,
        history: vec![
            (JobState::Queued, 1_764_000_000_000),
            (JobState::Downloading, 1_764_000_001_000),
            (JobState::Uploading, 1_764_000_060_000),
            (JobState::Cleaning, 1_764_000_070_000),
            (JobState::Done, 1_764_000_070_500),
        ],
        created_at: 1_764_000_000_000,
        updated_at: 1_764_000_070_500,
        next_attempt_at: 1_764_000_000_000,
        last_error: Some(JobError {
            class: ErrorClass::Retryable,
            code: "http_5xx".into(),
            text: "HTTP Error 503".into(),
        }),
        failure: None,
        file_path: Some("data/downloads/019ad2f01c2a7b3e8f00112233445566/abc.m4a".into()),
        file_size: Some(1_234_567),
        title: Some("عنوان — title".into()),
        media: Some(MediaInfo {
            width: None,
            height: None,
            duration_secs: Some(215),
        }),
        delivery: Some(Delivery {
            message_id: 44,
            file_id: "CQACAgIAAxkBAAIB".into(),
            sent_as: MediaKind::Audio,
        }),
        lease: Some(Lease {
            owner: Uuid::parse_str("019ad2f0-0000-7000-8000-000000000001").unwrap(),
            until: 1_764_000_100_000,
        }),
        parent: None,
        // Version 1 had no mark; it reads as none.
        rescue_mark: None,
    }
}

fn expected_v2() -> Job {
    Job {
        rescue_mark: Some(RescueMark {
            stage: JobState::Uploading,
            bytes: 1_234_567,
            stalls: 1,
        }),
        ..expected()
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).expect("fixture present")
}

#[test]
fn version_1_job_fixture_still_decodes() {
    let bytes = fixture("job_v1.bin");
    assert_eq!(bytes[0], 1, "version byte");
    let job: Job = codec::decode(&bytes).expect("version 1 decodes");
    assert_eq!(job, expected());
    // Re-encoding with the current version gives a record that decodes to the
    // same job.
    let again = codec::encode(&job).unwrap();
    assert_eq!(again[0], codec::CURRENT_VERSION);
    assert_eq!(codec::decode::<Job>(&again).unwrap(), job);
}

#[test]
fn version_2_job_fixture_still_decodes() {
    let bytes = fixture("job_v2.bin");
    assert_eq!(bytes[0], 2, "version byte");
    let job: Job = codec::decode(&bytes).expect("version 2 decodes");
    assert_eq!(job, expected_v2());
    // While the current version is 2, re-encoding gives the same bytes.
    let again = codec::encode(&job).unwrap();
    assert_eq!(codec::decode::<Job>(&again).unwrap(), job);
    if again[0] == 2 {
        assert_eq!(again, bytes);
    }
    // A version-2 body under a version-1 byte is not a version-1 job.
    let mut relabelled = bytes.clone();
    relabelled[0] = 1;
    assert!(codec::decode::<Job>(&relabelled).is_err());
}

/// `decode_in_flight` reads the head of a record (what `/health`'s stuck-job
/// check needs) and must agree with the full decode on every version.
#[test]
fn the_in_flight_head_agrees_with_the_whole_record() {
    for name in ["job_v1.bin", "job_v2.bin"] {
        let bytes = fixture(name);
        let job: Job = codec::decode(&bytes).unwrap();
        let head = codec::decode_in_flight(&bytes).expect(name);
        assert_eq!(head, InFlight::of(&job), "{name}");
        assert_eq!(
            (head.state, head.since),
            (JobState::Done, 1_764_000_070_500),
            "{name}"
        );
        // The current encoding of the same job.
        let again = codec::encode(&job).unwrap();
        assert_eq!(codec::decode_in_flight(&again).unwrap(), head);
    }
    // No history: since the last update.
    let mut bare = expected();
    bare.history.clear();
    let bytes = codec::encode(&bare).unwrap();
    assert_eq!(
        codec::decode_in_flight(&bytes).unwrap().since,
        bare.updated_at
    );
    // A head cut short, an unknown version, nothing: errors, not panics.
    assert!(codec::decode_in_flight(&bytes[..20]).is_err());
    let mut v9 = bytes.clone();
    v9[0] = 9;
    assert!(codec::decode_in_flight(&v9).is_err());
    assert!(codec::decode_in_flight(&[]).is_err());
}

#[test]
fn fuzz_seed_corpus_decodes_without_panic() {
    // The same property as fuzz/fuzz_targets/decode_record.rs, replayed on the
    // committed seeds in every normal test run.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode_record");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        if let Ok(job) = codec::decode::<Job>(&bytes) {
            let again: Job = codec::decode(&codec::encode(&job).unwrap()).unwrap();
            assert_eq!(again, job);
        }
        let _ = codec::decode_in_flight(&bytes);
        let _ = codec::decode::<tgdl::store::UserRecord>(&bytes);
        let _ = codec::decode::<tgdl::store::CachedMedia>(&bytes);
        n += 1;
    }
    assert!(n >= 3, "seed corpus present");
}

/// Writes `job_v2.bin` from [`expected_v2`]; run once when the version was
/// introduced (`cargo test --test codec_fixture -- --ignored write_v2`).
#[test]
#[ignore = "writes the version-2 fixture"]
fn write_v2_fixture() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/job_v2.bin");
    let bytes = codec::encode(&expected_v2()).unwrap();
    assert_eq!(bytes[0], 2);
    std::fs::write(path, bytes).unwrap();
}
