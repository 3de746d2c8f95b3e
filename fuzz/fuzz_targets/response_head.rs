//! Upstream response heads over arbitrary bytes: must never panic.
#![no_main]

use gateway::http::{
    head::{HeadScanner, Scan},
    response::ResponseHead,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut scanner = HeadScanner::new(0);
    let Ok(Scan::Complete(end)) = scanner.scan(data) else {
        return;
    };
    let mut head = ResponseHead::default();
    let was_head = data.len() % 2 == 0;
    if head.parse(&data[..end], was_head).is_ok() && was_head {
        assert_eq!(head.body, Some(gateway::http::response::ResponseBody::None));
    }
});
