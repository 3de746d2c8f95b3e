//! Path normalization: never panics, idempotent, no `//`, no dot segments, no decoded
//! ambiguous bytes.
#![no_main]

use gateway::http::target::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(once) = normalize_path(data) {
        assert_eq!(normalize_path(&once).as_deref(), Ok(once.as_slice()));
        assert!(!once.windows(2).any(|w| w == b"//"));
        assert!(!once.split(|&b| b == b'/').any(|s| s == b"." || s == b".."));
        assert!(!once.contains(&b'\\') && !once.contains(&0));
    }
});
