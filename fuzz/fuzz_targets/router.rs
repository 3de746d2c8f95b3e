//! The router over arbitrary request heads, against a table that uses every kind of
//! condition: never panics, and a route it returns really matches the request (host,
//! path, methods), so precedence shortcuts can never hand a request to a route whose own
//! conditions refuse it.
#![no_main]

use std::{path::Path, sync::OnceLock};

use gateway::{
    config::{Config, HostMatch, PathMatch},
    http::{
        head::{HeadScanner, Scan, leading_empty_lines},
        request::{ParseLimits, RequestHead},
    },
    router::{Router, prefix_matches},
};
use libfuzzer_sys::fuzz_target;

const TABLE: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"

[[upstreams]]
name = "u"
targets = [ { addr = "127.0.0.1:9" } ]

[[routes]]
name = "exact-host-prefix"
host = "api.test"
path_prefix = "/v1"
methods = ["GET", "POST"]
upstream = "u"

[[routes]]
name = "wildcard"
host = "*.wild.test"
path_prefix = "/"
upstream = "u"

[[routes]]
name = "exact-path"
path = "/health"
upstream = "u"

[[routes]]
name = "regex"
path_regex = "/users/[0-9]+"
upstream = "u"

[[routes]]
name = "header"
path_prefix = "/h"
headers = [ { name = "x-flag", value = "on" }, { name = "x-re", regex = "a+b" } ]
upstream = "u"

[[routes]]
name = "query"
path_prefix = "/q"
query = [ { name = "v", present = true } ]
upstream = "u"

[[routes]]
name = "cert"
path_prefix = "/c"
client_cert = [ { name = "san", present = false } ]
upstream = "u"

[[routes]]
name = "catch-all"
path_prefix = "/"
methods = ["GET"]
upstream = "u"
"#;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let config = Config::parse(Path::new("router.toml"), TABLE).expect("the table is valid");
        Router::new(&config)
    })
}

fuzz_target!(|data: &[u8]| {
    let data = &data[leading_empty_lines(data)..];
    let mut scanner = HeadScanner::new(0);
    let Ok(Scan::Complete(end)) = scanner.scan(data) else {
        return;
    };
    let mut head = RequestHead::default();
    let limits = ParseLimits {
        max_headers: 64,
        max_uri_length: 4096,
    };
    if head.parse(&data[..end], limits).is_err() {
        return;
    }
    let Some(index) = router().find(&head) else {
        return;
    };
    let route = &router().routes()[index];
    match &route.host {
        Some(HostMatch::Exact(host)) => assert_eq!(head.host, host.as_bytes()),
        Some(HostMatch::Suffix(suffix)) => {
            assert!(head.host.len() > suffix.len() && head.host.ends_with(suffix.as_bytes()))
        }
        None => {}
    }
    // Routes match the path without `;parameters` (the routing path), as documented.
    let path = head.routing_path();
    match &route.path {
        PathMatch::Exact(exact) => assert_eq!(path, exact.as_bytes()),
        PathMatch::Prefix(prefix) => assert!(prefix_matches(prefix.as_bytes(), path)),
        PathMatch::Regex(re) => assert!(re.is_match(path)),
    }
    assert!(
        route.methods.is_empty() || route.methods.iter().any(|m| m.as_bytes() == head.method()),
        "route {} took method {:?}",
        route.name,
        String::from_utf8_lossy(head.method())
    );
});
