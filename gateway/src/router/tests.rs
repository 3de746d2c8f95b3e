use std::path::Path;

use super::Router;
use crate::{
    config::Config,
    http::request::{ParseLimits, RequestHead},
};

const ROUTES: &str = r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "u"
targets = [ { addr = "127.0.0.1:9" } ]

[[routes]]
name = "catch-all"
upstream = "u"

[[routes]]
name = "api-prefix"
path_prefix = "/api"
upstream = "u"

[[routes]]
name = "api-v2-prefix"
path_prefix = "/api/v2"
upstream = "u"

[[routes]]
name = "api-exact"
path = "/api/health"
upstream = "u"

[[routes]]
name = "api-post"
path_prefix = "/api"
methods = ["POST"]
upstream = "u"

[[routes]]
name = "api-beta"
path_prefix = "/api"
headers = [ { name = "X-Beta", value = "1" } ]
upstream = "u"

[[routes]]
name = "api-debug"
path_prefix = "/api"
query = [ { name = "debug", present = true } ]
upstream = "u"

[[routes]]
name = "regex"
path_regex = "/items/[0-9]+"
upstream = "u"

[[routes]]
name = "wild"
host = "*.example.com"
upstream = "u"

[[routes]]
name = "exact-host"
host = "api.example.com"
path_prefix = "/"
upstream = "u"

[[routes]]
name = "exact-host-users"
host = "api.example.com"
path_prefix = "/users"
strip_prefix = true
upstream = "u"

[[routes]]
name = "rewrite"
path_prefix = "/old"
rewrite = "/new"
upstream = "u"
"#;

fn router() -> Router {
    Router::new(&Config::parse(Path::new("routes.toml"), ROUTES).expect("valid config"))
}

fn route_name(router: &Router, head: &str) -> String {
    let mut req = RequestHead::default();
    req.parse(
        head.as_bytes(),
        ParseLimits {
            max_headers: 64,
            max_uri_length: 4096,
        },
    )
    .expect("valid request");
    router
        .find(&req)
        .map(|i| router.routes()[i].name.clone())
        .unwrap_or_default()
}

#[test]
fn most_specific_route_wins() {
    let r = router();
    for (head, expected) in [
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "catch-all"),
        ("GET /apix HTTP/1.1\r\nHost: x\r\n\r\n", "catch-all"),
        ("GET /api HTTP/1.1\r\nHost: x\r\n\r\n", "api-prefix"),
        ("GET /api/users HTTP/1.1\r\nHost: x\r\n\r\n", "api-prefix"),
        (
            "GET /api/v2/users HTTP/1.1\r\nHost: x\r\n\r\n",
            "api-v2-prefix",
        ),
        ("GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n", "api-exact"),
        (
            "POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "api-post",
        ),
        (
            "GET /api/users HTTP/1.1\r\nHost: x\r\nX-Beta: 1\r\n\r\n",
            "api-beta",
        ),
        (
            "GET /api/users HTTP/1.1\r\nHost: x\r\nX-Beta: 2\r\n\r\n",
            "api-prefix",
        ),
        (
            "GET /api/users?debug HTTP/1.1\r\nHost: x\r\n\r\n",
            "api-debug",
        ),
        ("GET /items/42 HTTP/1.1\r\nHost: x\r\n\r\n", "regex"),
        ("GET /items/42x HTTP/1.1\r\nHost: x\r\n\r\n", "catch-all"),
        ("GET /api HTTP/1.1\r\nHost: www.example.com\r\n\r\n", "wild"),
        (
            "GET /api HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "api-prefix",
        ),
        (
            "GET /api HTTP/1.1\r\nHost: API.example.com:443\r\n\r\n",
            "exact-host",
        ),
        (
            "GET /users/1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            "exact-host-users",
        ),
        (
            "GET /x/../api/%2e%2e/api//users HTTP/1.1\r\nHost: x\r\n\r\n",
            "api-prefix",
        ),
    ] {
        assert_eq!(route_name(&r, head), expected, "request {head:?}");
    }
}

#[test]
fn rewrites_the_forwarded_path() {
    let r = router();
    let find = |name: &str| {
        r.routes()
            .iter()
            .find(|route| route.name == name)
            .expect("route exists")
    };
    let mut out = Vec::new();
    for (route, path, expected) in [
        ("exact-host-users", "/users", "/"),
        ("exact-host-users", "/users/7", "/7"),
        ("rewrite", "/old", "/new"),
        ("rewrite", "/old/a/b", "/new/a/b"),
        ("api-prefix", "/api/a", "/api/a"),
    ] {
        Router::upstream_path(find(route), path.as_bytes(), &mut out);
        assert_eq!(String::from_utf8_lossy(&out), expected, "{route} {path}");
    }
}

#[test]
fn matching_hundreds_of_routes_finds_the_right_one() {
    let mut text = String::from(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"u\"\ntargets = [ { addr = \"127.0.0.1:9\" } ]\n",
    );
    for i in 0..500 {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/svc{i}\"\nupstream = \"u\"\n"
        ));
    }
    let r = Router::new(&Config::parse(Path::new("many.toml"), &text).expect("valid"));
    for i in [0, 7, 123, 499] {
        assert_eq!(
            route_name(&r, &format!("GET /svc{i}/x HTTP/1.1\r\nHost: h\r\n\r\n")),
            format!("r{i}")
        );
    }
    assert_eq!(
        route_name(&r, "GET /svc500 HTTP/1.1\r\nHost: h\r\n\r\n"),
        ""
    );
}

mod precedence {
    use proptest::prelude::*;

    use super::*;
    use crate::config::{HostMatch, PathMatch, RouteConfig};

    /// Specificity as the module docs define it; larger sorts first.
    fn rank(
        route: &RouteConfig,
        index: usize,
    ) -> (u8, usize, u8, usize, usize, std::cmp::Reverse<usize>) {
        let (host_rank, host_len) = match &route.host {
            Some(HostMatch::Exact(_)) => (2, 0),
            Some(HostMatch::Suffix(s)) => (1, s.len()),
            None => (0, 0),
        };
        let (path_rank, prefix_len) = match &route.path {
            PathMatch::Exact(_) => (3, 0),
            PathMatch::Prefix(p) if p != "/" => (2, p.len()),
            PathMatch::Regex(_) => (1, 0),
            PathMatch::Prefix(_) => (0, 0),
        };
        let conditions =
            usize::from(!route.methods.is_empty()) + route.headers.len() + route.query.len();
        (
            host_rank,
            host_len,
            path_rank,
            prefix_len,
            conditions,
            std::cmp::Reverse(index),
        )
    }

    /// The route a brute-force scan picks: the best-ranked route whose every condition holds.
    fn reference(router: &Router, req: &RequestHead) -> Option<usize> {
        router
            .routes()
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                let host_ok = match &r.host {
                    Some(HostMatch::Exact(h)) => req.host == h.as_bytes(),
                    Some(HostMatch::Suffix(s)) => {
                        req.host.len() > s.len() && req.host.ends_with(s.as_bytes())
                    }
                    None => true,
                };
                let path_ok = match &r.path {
                    PathMatch::Exact(p) => req.path == p.as_bytes(),
                    PathMatch::Prefix(p) => super::super::prefix_matches(p.as_bytes(), &req.path),
                    PathMatch::Regex(re) => re.is_match(&req.path),
                };
                host_ok && path_ok && super::super::conditions_hold(r, req)
            })
            .max_by_key(|(i, r)| rank(r, *i))
            .map(|(i, _)| i)
    }

    fn route_text(i: usize, host: u8, path: u8, method: bool, header: bool) -> String {
        let host = match host {
            0 => String::new(),
            1 => "host = \"a.example.com\"\n".into(),
            2 => "host = \"*.example.com\"\n".into(),
            _ => "host = \"*.a.example.com\"\n".into(),
        };
        let path = match path {
            0 => String::new(),
            1 => "path = \"/x/y\"\n".into(),
            2 => "path_prefix = \"/x\"\n".into(),
            3 => "path_prefix = \"/x/y\"\n".into(),
            4 => "path_regex = \"/x/[a-z]+\"\n".into(),
            _ => "path_prefix = \"/\"\n".into(),
        };
        let method = if method { "methods = [\"GET\"]\n" } else { "" };
        let header = if header {
            "headers = [ { name = \"x-t\", present = true } ]\n"
        } else {
            ""
        };
        format!("[[routes]]\nname = \"r{i}\"\nupstream = \"u\"\n{host}{path}{method}{header}\n")
    }

    proptest! {
        #[test]
        fn compiled_table_agrees_with_a_brute_force_scan(
            routes in proptest::collection::vec((0u8..4, 0u8..6, any::<bool>(), any::<bool>()), 1..24),
            host in prop::sample::select(vec!["a.example.com", "b.a.example.com", "z.example.com", "other"]),
            path in prop::sample::select(vec!["/", "/x", "/x/y", "/x/yz", "/x/y/z", "/q"]),
            post in any::<bool>(),
            header in any::<bool>(),
        ) {
            let mut text = String::from("[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"u\"\ntargets = [ { addr = \"127.0.0.1:9\" } ]\n");
            for (i, (h, p, m, hd)) in routes.iter().enumerate() {
                text.push_str(&route_text(i, *h, *p, *m, *hd));
            }
            let router = Router::new(&Config::parse(Path::new("p.toml"), &text).expect("valid"));
            let method = if post { "POST" } else { "GET" };
            let extra = if header { "X-T: 1\r\n" } else { "" };
            let head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
            let mut req = RequestHead::default();
            req.parse(head.as_bytes(), ParseLimits { max_headers: 16, max_uri_length: 64 }).expect("valid request");
            prop_assert_eq!(router.find(&req), reference(&router, &req));
        }
    }
}

#[test]
fn client_certificate_conditions_match_subject_and_san() {
    let config = Config::parse(
        Path::new("certs.toml"),
        r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "u"
targets = [ { addr = "127.0.0.1:9" } ]

[[routes]]
name = "anonymous"
upstream = "u"
client_cert = [ { name = "subject", present = false } ]

[[routes]]
name = "billing"
upstream = "u"
client_cert = [ { name = "san", value = "URI:spiffe://acme/billing" } ]

[[routes]]
name = "acme"
upstream = "u"
client_cert = [ { name = "subject", regex = "CN=[a-z-]+, O=Acme" } ]

[[routes]]
name = "any-certificate"
upstream = "u"
client_cert = [ { name = "san", present = true } ]
"#,
    )
    .expect("valid config");
    let router = Router::new(&config);
    let route_for = |cert: Option<crate::tls::ClientIdentity>| {
        let mut head = RequestHead::default();
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        head.parse(
            raw,
            ParseLimits {
                max_headers: 16,
                max_uri_length: 1024,
            },
        )
        .expect("parse");
        head.client_cert = cert.map(std::rc::Rc::new);
        router.find(&head).map(|i| router.routes()[i].name.clone())
    };
    let identity = |subject: &str, san: &[&str]| crate::tls::ClientIdentity {
        subject: subject.into(),
        san: san.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(route_for(None).as_deref(), Some("anonymous"));
    assert_eq!(
        route_for(Some(identity(
            "CN=svc, O=Other",
            &["DNS:a.test", "URI:spiffe://acme/billing"]
        )))
        .as_deref(),
        Some("billing"),
        "any SAN entry matches"
    );
    assert_eq!(
        route_for(Some(identity("CN=svc-x, O=Acme", &["URI:spiffe://acme/x"]))).as_deref(),
        Some("acme"),
        "the subject is matched, not the SANs"
    );
    assert_eq!(
        route_for(Some(identity("CN=x, O=Other", &["URI:spiffe://other"]))).as_deref(),
        Some("any-certificate")
    );
}
