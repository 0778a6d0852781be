//! Arbitrary config text: parsing never panics, and every refusal names a
//! key or a line, as the one-line error contract promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tgdl::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, None) {
        Ok(_) => {}
        Err(ConfigError::Syntax(msg)) => assert!(msg.contains("line"), "{msg}"),
        Err(ConfigError::UnknownKey(key)) => assert!(!key.is_empty()),
        Err(ConfigError::Invalid { key, .. }) => assert!(!key.is_empty()),
        Err(ConfigError::Read { .. }) => unreachable!("parse reads no file"),
    }
});
