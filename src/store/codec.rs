//! The one codec for every stored record: a format version byte, then bincode 2.
//!
//! Why a version byte: bincode is not self-describing, so adding a field to
//! [`crate::job::Job`] changes the layout. A new layout gets a new version and
//! a decoder arm here; old records keep decoding. `tests/fixtures/job_v1.bin`
//! pins version 1 so that such a change cannot silently drop it.
//!
//! Decoding never panics and never allocates more than [`MAX_RECORD`] bytes,
//! whatever the input: bad bytes are an error the store quarantines.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The version written by this build.
pub const CURRENT_VERSION: u8 = 1;

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
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        1 => {
            let (value, used): (T, usize) = bincode::serde::decode_from_slice(body, config())
                .map_err(|e| CodecError::Decode(e.to_string()))?;
            if used != body.len() {
                return Err(CodecError::Trailing(body.len() - used));
            }
            Ok(value)
        }
        v => Err(CodecError::UnknownVersion(v)),
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
        // Version 1, then a varint claiming a u64::MAX-long string.
        let bytes = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<String>(&bytes).is_err());
    }
}
