//! The gateway's calls to a real identity provider on loopback: a remote JWKS fetched
//! at start, refreshed after an unknown `kid` (rate-limited) and kept when a fetch
//! fails; OAuth2 introspection of opaque tokens with client credentials, cached answers
//! (active and inactive), and 503 when the server cannot answer.

use std::{
    io::Write,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use gateway_tests::{
    backend::Backend,
    client::{Response, connect, read_response},
    gateway::Gateway,
    idp::Idp,
    jwt::{SigningKey, jwks, now},
};
use serde_json::{Value, json};

fn claims() -> Value {
    json!({ "sub": "alice", "exp": now() + 600, "scope": "read" })
}

fn bearer(gw: &Gateway, token: &str) -> Response {
    let mut stream = connect(gw.addr());
    write!(
        stream,
        "GET /api HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("send");
    read_response(&mut stream, false)
}

fn upstream_header(res: &Response, name: &str) -> Option<String> {
    let headers: Vec<(String, String)> =
        serde_json::from_value(res.json()["headers"].clone()).expect("echoed headers");
    headers
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn config(backend: &Backend, auth: &str, route_auth: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{}" }} ]

{auth}

[[consumers]]
name = "alice"
jwt_subjects = ["alice"]

[[routes]]
name = "api"
upstream = "app"
auth = ["{route_auth}"]
scopes = ["read"]
"#,
        backend.addr
    )
}

#[test]
fn remote_jwks_is_refreshed_after_an_unknown_kid_and_kept_when_fetches_fail() {
    let first = SigningKey::es256("k1");
    let second = SigningKey::es256("k2");
    let idp = Idp::start(jwks(&[&first]), "unused", "unused");
    let backend = Backend::start("app");
    let auth = format!(
        "[[auth.jwt]]\nname = \"idp\"\njwks_url = \"http://{}/jwks\"\njwks_refresh = \"1h\"\njwks_min_refresh = \"1s\"\n",
        idp.addr
    );
    let gw = Gateway::start(&config(&backend, &auth, "idp"));
    assert_eq!(
        bearer(&gw, &first.sign(&claims())).status,
        200,
        "keys fetched at start"
    );
    let fetched_at_start = idp.jwks_calls.load(Ordering::Relaxed);
    assert!(fetched_at_start >= 1);

    // The provider rotates: tokens signed with the new key are refused until the
    // gateway refetches, which a token with an unknown kid triggers (at most once per
    // jwks_min_refresh, however many such tokens arrive).
    idp.update(|s| s.jwks = Ok(jwks(&[&first, &second])));
    let rotated = second.sign(&claims());
    let start = Instant::now();
    let mut refused = 0;
    loop {
        let res = bearer(&gw, &rotated);
        if res.status == 200 {
            break;
        }
        assert_eq!(res.status, 401, "{}", res.text());
        refused += 1;
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "new key never picked up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refetches = idp.jwks_calls.load(Ordering::Relaxed) - fetched_at_start;
    assert!(
        (1..=3).contains(&refetches),
        "{refused} refused tokens caused {refetches} fetches in {:?}",
        start.elapsed()
    );

    // A failing provider: the keys the gateway has stay in use.
    idp.update(|s| s.jwks = Err(500));
    let calls = idp.jwks_calls.load(Ordering::Relaxed);
    let unknown = SigningKey::es256("k3").sign(&claims());
    let deadline = Instant::now() + Duration::from_secs(10);
    while idp.jwks_calls.load(Ordering::Relaxed) == calls {
        assert!(Instant::now() < deadline, "no refetch after an unknown kid");
        assert_eq!(bearer(&gw, &unknown).status, 401);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(bearer(&gw, &first.sign(&claims())).status, 200);
    assert_eq!(bearer(&gw, &rotated).status, 200);
    gw.wait_for_log("JWKS refresh failed; keeping the current keys");
}

fn introspection_auth(idp: &Idp, secret: &str) -> String {
    format!(
        "[[auth.introspection]]\nname = \"oauth\"\nurl = \"http://{}/introspect\"\nclient_id = \"gateway\"\nclient_secret = \"{secret}\"\nnegative_ttl = \"1m\"\n",
        idp.addr
    )
}

#[test]
fn opaque_tokens_are_introspected_once_and_cached() {
    let idp = Idp::start(jwks(&[]), "gateway", "s3cret:with/odd chars");
    idp.update(|s| {
        s.tokens.insert(
            "opaque-alice".into(),
            json!({ "active": true, "sub": "alice", "scope": "read write", "exp": now() + 600 }),
        );
        s.tokens.insert(
            "opaque-reader".into(),
            json!({ "active": true, "sub": "bob", "scope": "write" }),
        );
    });
    let backend = Backend::start("app");
    // One worker: the cache is per worker, and this test counts calls and outages.
    let auth = format!(
        "[gateway]\nworkers = 1\n\n{}",
        introspection_auth(&idp, "s3cret:with/odd chars")
    );
    let gw = Gateway::start(&config(&backend, &auth, "oauth"));
    for _ in 0..3 {
        let res = bearer(&gw, "opaque-alice");
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(
            upstream_header(&res, "x-consumer").as_deref(),
            Some("alice")
        );
    }
    assert_eq!(
        idp.introspection_calls.load(Ordering::Relaxed),
        1,
        "then cached"
    );

    for _ in 0..2 {
        let res = bearer(&gw, "opaque-revoked");
        assert_eq!(res.status, 401);
        assert!(
            res.header("www-authenticate")
                .unwrap_or("")
                .contains("error_description=\"token inactive\"")
        );
    }
    assert_eq!(
        idp.introspection_calls.load(Ordering::Relaxed),
        2,
        "inactive answers are cached too"
    );
    let res = bearer(&gw, "opaque-reader");
    assert_eq!(res.status, 403, "active but without the route's scope");

    // An outage: cached answers keep working, new tokens get 503 (not 401: the token
    // may be fine).
    idp.update(|s| s.introspection_status = Some(500));
    assert_eq!(bearer(&gw, "opaque-alice").status, 200);
    let res = bearer(&gw, "opaque-new");
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.json()["code"], "auth_unavailable");
}

#[test]
fn wrong_client_credentials_make_introspection_unavailable() {
    let idp = Idp::start(jwks(&[]), "gateway", "right");
    idp.update(|s| {
        s.tokens.insert(
            "opaque".into(),
            json!({ "active": true, "sub": "alice", "scope": "read" }),
        );
    });
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(
        &backend,
        &introspection_auth(&idp, "wrong"),
        "oauth",
    ));
    assert_eq!(bearer(&gw, "opaque").status, 503);
    gw.wait_for_log("token introspection unavailable");
}
