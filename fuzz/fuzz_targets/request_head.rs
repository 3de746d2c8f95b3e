//! Request heads: the CRLF scanner then the strict parser, over arbitrary bytes. Must
//! never panic; an accepted head must have a normalized path and sane framing.
#![no_main]

use gateway::http::{
    head::{HeadScanner, Scan, leading_empty_lines},
    request::{ParseLimits, RequestHead},
    target::normalize_path,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let start = leading_empty_lines(data);
    let data = &data[start..];
    let mut scanner = HeadScanner::new(0);
    // Feed in two parts, as a socket would.
    let split = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    if scanner.scan(&data[..split]).is_err() {
        return;
    }
    let Ok(Scan::Complete(end)) = scanner.scan(data) else {
        return;
    };
    let mut head = RequestHead::default();
    let limits = ParseLimits {
        max_headers: 64,
        max_uri_length: 4096,
    };
    if head.parse(&data[..end], limits).is_ok() && head.path != b"*" {
        let again = normalize_path(&head.path).expect("a normalized path stays valid");
        assert_eq!(again, head.path, "normalization is idempotent");
        assert!(head.path.starts_with(b"/"));
    }
});
