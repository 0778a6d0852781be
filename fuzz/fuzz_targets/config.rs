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
        Err(e @ ConfigError::Syntax { line, .. }) => {
            assert!(line >= 1, "{e}");
            assert!(e.to_string().contains(&format!("line {line}")), "{e}");
        }
        Err(ConfigError::UnknownKey(key)) => assert!(!key.is_empty()),
        Err(ConfigError::Invalid { key, .. }) => assert!(!key.is_empty()),
        Err(ConfigError::Read { .. }) => unreachable!("parse reads no file"),
    }
});
