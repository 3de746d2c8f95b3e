//! Config loading over arbitrary text: errors, never panics; every problem names a key
//! or a line.
#![no_main]

use std::path::Path;

use gateway::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(ConfigError::Invalid(problems)) = Config::parse(Path::new("fuzz.toml"), text) {
        assert!(!problems.is_empty());
        for problem in problems {
            assert!(
                problem.line.is_some() || !problem.key.is_empty() || !problem.message.is_empty()
            );
        }
    }
});
