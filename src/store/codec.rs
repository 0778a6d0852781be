//! The one codec for every stored record: a format version byte, then bincode 2.
//!
//! Why a version byte: bincode is not self-describing, so adding a field to
//! [`crate::job::Job`] changes the layout. A new layout gets a new version and
//! a decoder arm here; old records keep decoding. `tests/fixtures/job_v1.bin`
//! and `job_v2.bin` pin versions 1 and 2 so that such a change cannot
//! silently drop one.
//!
//! Versions:
//! - 1: the first layout.
//! - 2: [`Job`] gained `rescue_mark` at its end; every other record is laid
//!   out as in version 1. A version-1 job reads with no mark.
//!
//! Decoding never panics and never allocates more than [`MAX_RECORD`] bytes,
//! whatever the input: bad bytes are an error the store quarantines.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::job::{Delivery, Job, JobError, JobId, JobOptions, JobState, Lease, MediaInfo, Millis};

/// The version written by this build.
pub const CURRENT_VERSION: u8 = 2;

/// Upper bound on what decoding may allocate. Jobs are a few hundred bytes; a
/// length prefix claiming gigabytes is corruption, not data.
pub const MAX_RECORD: usize = 1 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD>()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    #[error("undecodable record: {0}")]
    Decode(String),
    #[error("record has {0} trailing bytes")]
    Trailing(usize),
    #[error("cannot encode record: {0}")]
    Encode(String),
}

/// A record the store keeps, and how it reads the layouts of older codec
/// versions. By default a version-1 body is laid out as today's.
pub trait Record: Serialize + DeserializeOwned {
    /// Decode the body of a record written by codec version 1.
    fn decode_v1(body: &[u8]) -> Result<Self, CodecError> {
        decode_body(body)
    }
}

impl Record for Job {
    fn decode_v1(body: &[u8]) -> Result<Self, CodecError> {
        decode_body::<JobV1>(body).map(Job::from)
    }
}

impl Record for super::UserRecord {}
impl Record for super::CachedMedia {}
impl Record for super::QuarantineEntry {}
impl Record for super::UserSettings {}

/// Encode with the current version byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![CURRENT_VERSION];
    let body = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode any supported version. Every byte must be consumed: a record with
/// garbage after it is as suspect as one that is cut short.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        1 => T::decode_v1(body),
        2 => decode_body(body),
        v => Err(CodecError::UnknownVersion(v)),
    }
}

/// One bincode body, all of it.
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

/// An in-flight job's id, state and when it entered the state, read from
/// the head of its record: the fields up to `updated_at`, borrowing the
/// strings, without the rest of the record (errors, file, title, media,
/// delivery, lease, ...). What `/health`'s stuck-job check needs, at a
/// fraction of a full [`decode`] (issue 16).
///
/// Versions 1 and 2 lay these fields out alike (version 2 only added a
/// field at the end); a version that changes them needs its own arm here,
/// and `tests/fixtures/job_v*.bin` pin that this agrees with [`decode`].
/// Only the head is checked: a record whose tail is corrupt reads here, and
/// is quarantined by the next full read (the caller falls back to a full
/// decode, which quarantines, when the head does not read).
pub fn decode_in_flight(bytes: &[u8]) -> Result<super::InFlight, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if !matches!(version, 1 | 2) {
        return Err(CodecError::UnknownVersion(version));
    }
    let (head, _): (JobHead<'_>, usize) = bincode::serde::borrow_decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    Ok(super::InFlight {
        id: head.id,
        state: head.state,
        since: head.history.last().map(|h| h.1).unwrap_or(head.updated_at),
    })
}

/// The head of [`Job`] (and of [`JobV1`]): every field up to `updated_at`,
/// in the record's order. Frozen with the layouts it reads.
#[derive(Deserialize)]
#[allow(dead_code)] // read for their length only
struct JobHead<'a> {
    id: JobId,
    chat_id: i64,
    user_id: u64,
    request_msg_id: i32,
    status_msg_id: Option<i32>,
    #[serde(borrow)]
    lang: &'a str,
    #[serde(borrow)]
    url: &'a str,
    options: JobOptions,
    state: JobState,
    attempts: u32,
    rescues: u32,
    history: Vec<(JobState, Millis)>,
    created_at: Millis,
    updated_at: Millis,
}

/// [`Job`] as codec version 1 laid it out. Frozen: never change a field.
#[derive(Deserialize)]
struct JobV1 {
    id: JobId,
    chat_id: i64,
    user_id: u64,
    request_msg_id: i32,
    status_msg_id: Option<i32>,
    lang: String,
    url: String,
    options: JobOptions,
    state: JobState,
    attempts: u32,
    rescues: u32,
    history: Vec<(JobState, Millis)>,
    created_at: Millis,
    updated_at: Millis,
    next_attempt_at: Millis,
    last_error: Option<JobError>,
    failure: Option<JobError>,
    file_path: Option<String>,
    file_size: Option<u64>,
    title: Option<String>,
    media: Option<MediaInfo>,
    delivery: Option<Delivery>,
    lease: Option<Lease>,
    parent: Option<JobId>,
}

impl From<JobV1> for Job {
    fn from(v: JobV1) -> Job {
        Job {
            id: v.id,
            chat_id: v.chat_id,
            user_id: v.user_id,
            request_msg_id: v.request_msg_id,
            status_msg_id: v.status_msg_id,
            lang: v.lang,
            url: v.url,
            options: v.options,
            state: v.state,
            attempts: v.attempts,
            rescues: v.rescues,
            history: v.history,
            created_at: v.created_at,
            updated_at: v.updated_at,
            next_attempt_at: v.next_attempt_at,
            last_error: v.last_error,
            failure: v.failure,
            file_path: v.file_path,
            file_size: v.file_size,
            title: v.title,
            media: v.media,
            delivery: v.delivery,
            lease: v.lease,
            parent: v.parent,
            rescue_mark: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Job, JobId, JobOptions, NewJob};

    fn job() -> Job {
        Job::new(
            JobId::new(),
            NewJob {
                chat_id: -100,
                user_id: 42,
                request_msg_id: 7,
                lang: "fa".into(),
                url: "https://example.com/watch?v=1".into(),
                options: JobOptions::default(),
                parent: None,
                not_before: None,
            },
            1_700_000_000_000,
        )
    }

    #[test]
    fn round_trips_and_starts_with_the_version() {
        let j = job();
        let bytes = encode(&j).unwrap();
        assert_eq!(bytes[0], CURRENT_VERSION);
        let back: Job = decode(&bytes).unwrap();
        assert_eq!(back, j);
    }

    #[test]
    fn rejects_empty_unknown_truncated_and_trailing() {
        let bytes = encode(&job()).unwrap();
        assert!(matches!(decode::<Job>(&[]), Err(CodecError::Empty)));
        let mut v9 = bytes.clone();
        v9[0] = 9;
        assert!(matches!(
            decode::<Job>(&v9),
            Err(CodecError::UnknownVersion(9))
        ));
        assert!(matches!(
            decode::<Job>(&bytes[..bytes.len() - 3]),
            Err(CodecError::Decode(_))
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(decode::<Job>(&long), Err(CodecError::Trailing(1))));
    }

    #[test]
    fn a_huge_length_prefix_is_an_error_not_an_allocation() {
        // Version 1 or 2, then a varint claiming a u64::MAX-long string
        // (a quarantine entry starts with one).
        for v in [1u8, 2] {
            let bytes = [v, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
            assert!(decode::<crate::store::QuarantineEntry>(&bytes).is_err());
            assert!(decode::<Job>(&bytes).is_err());
        }
    }
}
