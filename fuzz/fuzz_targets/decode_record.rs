//! Arbitrary bytes as a stored record: decoding never panics, and whatever
//! decodes re-encodes to a record that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tgdl::store::codec;
use tgdl::job::Job;
use tgdl::store::{CachedMedia, QuarantineEntry, UserRecord};

fn round_trip<T>(data: &[u8])
where
    T: codec::Record + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = codec::decode::<T>(data) {
        let bytes = codec::encode(&value).expect("a decoded record encodes");
        let again: T = codec::decode(&bytes).expect("an encoded record decodes");
        assert_eq!(again, value);
    }
}

fuzz_target!(|data: &[u8]| {
    // The head `/health` reads never panics, and agrees with a whole job.
    let head = codec::decode_in_flight(data);
    if let Ok(job) = codec::decode::<Job>(data) {
        assert_eq!(head.expect("a job's head decodes"), tgdl::store::InFlight::of(&job));
    }
    round_trip::<Job>(data);
    round_trip::<UserRecord>(data);
    round_trip::<CachedMedia>(data);
    round_trip::<QuarantineEntry>(data);
});
