//! Credentials end to end against the real binary: JWT vectors for every algorithm
//! family (valid, expired, not yet valid, wrong issuer or audience, missing claim, bad
//! signature, `alg: none`, HS256 signed with an RSA public key, unknown `kid` then a
//! rotated JWKS picked up by reload, malformed and oversized tokens), scopes, tokens from
//! cookies and the query, API keys, consumer groups, identity forwarding and credential
//! stripping.

use std::{io::Write, path::PathBuf};

use gateway_tests::jwt::{SigningKey, b64, jwks, now};
use gateway_tests::{
    backend::Backend,
    client::{Response, connect, read_response},
    gateway::Gateway,
    sha256_hex,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test";
const ALICE_KEY: &str = "alice-key-7f3a9c";
const BOB_KEY: &str = "bob-key-11d2e8";
const HMAC_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

/// Signing keys, and their public halves written where the config points.
struct Keys {
    dir: tempfile::TempDir,
    ec: SigningKey,
    ec_next: SigningKey,
    rsa: SigningKey,
    ps: SigningKey,
    ed: SigningKey,
    hmac: SigningKey,
}

impl Keys {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let rsa = SigningKey::rsa(Algorithm::RS256, "rsa-1");
        let keys = Self {
            ec: SigningKey::es256("ec-1"),
            ec_next: SigningKey::es256("ec-2"),
            ps: rsa.with_alg(Algorithm::PS256, "ps-1"),
            rsa,
            ed: SigningKey::ed25519("ed-1"),
            hmac: SigningKey::hmac(Algorithm::HS256, "hs-1", HMAC_SECRET.as_bytes()),
            dir,
        };
        std::fs::write(keys.path("rsa.pub.pem"), &keys.rsa.public_pem).expect("write");
        std::fs::write(keys.path("ed.pub.pem"), &keys.ed.public_pem).expect("write");
        std::fs::write(keys.path("hmac.secret"), format!("{HMAC_SECRET}\n")).expect("write");
        keys.write_jwks(&[&keys.ec]);
        keys
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the JWKS document the provider loads.
    fn write_jwks(&self, keys: &[&SigningKey]) {
        std::fs::write(self.path("jwks.json"), jwks(keys)).expect("jwks");
    }
}

/// Claims that pass every check of the config below.
fn good_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": "api",
        "sub": "alice",
        "tenant": "acme",
        "scope": "orders:read orders:write",
        "iat": now(),
        "exp": now() + 600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("object").remove(key);
    claims
}

/// A token assembled by hand: any header, any signature bytes.
fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

fn config(keys: &Keys, backend: &Backend) -> String {
    let p = |name: &str| keys.path(name).display().to_string();
    format!(
        r#"
[gateway]
workers = 2

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{backend}" }} ]

[auth.api_key]
query = "api_key"

[[auth.jwt]]
name = "idp"
issuer = "{ISSUER}"
audience = ["api"]
required_claims = ["tenant"]
jwks = "{jwks}"
keys = [
  {{ kid = "rsa-1", alg = "RS256", pem = "{rsa}" }},
  {{ kid = "ps-1", alg = "PS256", pem = "{rsa}" }},
  {{ kid = "ed-1", alg = "EdDSA", pem = "{ed}" }},
  {{ kid = "hs-1", alg = "HS256", secret_file = "{hmac}" }},
]
token_from = ["header", "cookie:session", "query:access_token"]
claim_headers = {{ tenant = "x-tenant" }}

[[consumers]]
name = "alice"
group = "gold"
jwt_subjects = ["alice"]
api_keys = ["sha256:{alice}"]

[[consumers]]
name = "bob"
api_keys = ["sha256:{bob}"]

[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstream = "app"
auth = ["idp"]

[[routes]]
name = "scoped"
path_prefix = "/scoped"
upstream = "app"
auth = ["idp"]
scopes = ["orders:write", "admin"]

[[routes]]
name = "keys"
path_prefix = "/keys"
upstream = "app"
auth = ["api_key"]

[[routes]]
name = "gold"
path_prefix = "/gold"
upstream = "app"
auth = ["api_key", "idp"]
consumers = ["gold"]

[[routes]]
name = "admins"
path_prefix = "/admin"
upstream = "app"
auth = ["idp"]
claims = {{ roles = "admin", tenant = "acme" }}

[[routes]]
name = "public"
path_prefix = "/"
upstream = "app"
"#,
        backend = backend.addr,
        jwks = p("jwks.json"),
        rsa = p("rsa.pub.pem"),
        ed = p("ed.pub.pem"),
        hmac = p("hmac.secret"),
        alice = sha256_hex(ALICE_KEY),
        bob = sha256_hex(BOB_KEY),
    )
}

fn send(gw: &Gateway, path: &str, headers: &str) -> Response {
    let mut stream = connect(gw.addr());
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: api.test\r\n{headers}\r\n"
    )
    .expect("send");
    read_response(&mut stream, false)
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Response {
    send(gw, path, &format!("Authorization: Bearer {token}\r\n"))
}

/// The headers the backend received.
fn upstream_headers(res: &Response) -> Vec<(String, String)> {
    serde_json::from_value(res.json()["headers"].clone()).expect("echoed headers")
}

fn upstream_header(res: &Response, name: &str) -> Option<String> {
    upstream_headers(res)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

#[track_caller]
fn assert_refused(res: &Response, status: u16, code: &str, challenge: &str) {
    assert_eq!(res.status, status, "{}", res.text());
    assert_eq!(res.json()["code"], code);
    let www = res.header("www-authenticate").unwrap_or("");
    assert!(
        www.contains(challenge),
        "WWW-Authenticate {www:?} should contain {challenge:?}"
    );
}

fn start() -> (Keys, Backend, Gateway) {
    let keys = Keys::new();
    let backend = Backend::start("app");
    let gw = Gateway::start(&config(&keys, &backend));
    (keys, backend, gw)
}

#[test]
fn valid_tokens_of_every_algorithm_family_pass_and_forward_the_identity() {
    let (keys, _backend, gw) = start();
    let claims = good_claims();
    for key in [&keys.ec, &keys.rsa, &keys.ps, &keys.ed, &keys.hmac] {
        let res = bearer(&gw, "/jwt/orders", &key.sign(&claims));
        assert_eq!(res.status, 200, "{:?}: {}", key.alg, res.text());
        assert_eq!(
            upstream_header(&res, "x-consumer").as_deref(),
            Some("alice")
        );
        assert_eq!(
            upstream_header(&res, "x-auth-subject").as_deref(),
            Some("alice")
        );
        assert_eq!(upstream_header(&res, "x-tenant").as_deref(), Some("acme"));
        assert_eq!(
            upstream_header(&res, "authorization"),
            None,
            "credential stripped"
        );
    }
    // The same token again is served from the worker's cache, with the same result.
    let token = keys.ec.sign(&claims);
    for _ in 0..3 {
        assert_eq!(bearer(&gw, "/jwt/x", &token).status, 200);
    }
}

#[test]
fn every_bad_token_gets_401_with_the_reason() {
    let (keys, _backend, gw) = start();
    let es = |claims: &Value| keys.ec.sign(claims);
    let good = good_claims();
    let valid = es(&good);
    let (head, rest) = valid.split_once('.').expect("three parts");
    let (_, signature) = rest.split_once('.').expect("three parts");
    let tampered = format!(
        "{head}.{}.{signature}",
        b64(with(good.clone(), "sub", json!("mallory"))
            .to_string()
            .as_bytes())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            es(&with(good.clone(), "exp", json!(now() - 3600))),
            "token expired",
        ),
        (
            "not yet valid",
            es(&with(good.clone(), "nbf", json!(now() + 3600))),
            "token not yet valid",
        ),
        (
            "issued in the future",
            es(&with(good.clone(), "iat", json!(now() + 3600))),
            "issued in the future",
        ),
        (
            "wrong issuer",
            es(&with(good.clone(), "iss", json!("https://evil.test"))),
            "wrong issuer",
        ),
        (
            "wrong audience",
            es(&with(good.clone(), "aud", json!("other"))),
            "wrong audience",
        ),
        (
            "no audience",
            es(&without(good.clone(), "aud")),
            "missing claim aud",
        ),
        (
            "no exp",
            es(&without(good.clone(), "exp")),
            "missing claim exp",
        ),
        (
            "no tenant",
            es(&without(good.clone(), "tenant")),
            "missing claim tenant",
        ),
        ("bad signature", tampered, "invalid signature"),
        (
            "alg none",
            forge(&json!({"alg": "none", "typ": "JWT"}), &good, b""),
            "algorithm not accepted",
        ),
        (
            "HS256 keyed with the RSA public key",
            SigningKey::hmac(Algorithm::HS256, "rsa-1", keys.rsa.public_pem.as_bytes()).sign(&good),
            "unknown signing key",
        ),
        (
            "HS256 keyed with the RSA public key, no kid",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &good,
                &EncodingKey::from_secret(keys.rsa.public_pem.as_bytes()),
            )
            .expect("sign"),
            "invalid signature",
        ),
        (
            "unknown kid",
            keys.ec_next.sign(&good),
            "unknown signing key",
        ),
        (
            "critical header",
            forge(
                &json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"], "exp": 1}),
                &good,
                b"x",
            ),
            "unsupported critical header",
        ),
        ("one segment", "abc".to_owned(), "malformed token"),
        ("two segments", "abc.def".to_owned(), "malformed token"),
        ("four segments", format!("{valid}.x"), "malformed token"),
        ("not base64", "!!!.@@@.###".to_owned(), "malformed token"),
        (
            "oversized",
            format!("{valid}{}", "A".repeat(9 * 1024)),
            "token too large",
        ),
    ];
    for (name, token, reason) in cases {
        let res = bearer(&gw, "/jwt/orders", &token);
        assert_eq!(res.status, 401, "{name}: {}", res.text());
        assert_eq!(res.json()["code"], "invalid_token", "{name}");
        let www = res.header("www-authenticate").unwrap_or("");
        assert!(
            www.starts_with("Bearer realm=\"gateway\", error=\"invalid_token\"")
                && www.contains(reason),
            "{name}: WWW-Authenticate {www:?} should give {reason:?}"
        );
        assert!(
            !gw.log().contains(&token),
            "{name}: the token must never be logged"
        );
    }
    // No credentials at all: a bare challenge, no error code (RFC 6750 §3.1).
    let res = send(&gw, "/jwt/orders", "");
    assert_refused(&res, 401, "unauthorized", "Bearer realm=\"gateway\"");
    assert!(
        !res.header("www-authenticate")
            .unwrap_or("")
            .contains("error=")
    );
    // Public routes stay public, and a client cannot claim an identity itself.
    let res = send(&gw, "/open", "X-Consumer: alice\r\nX-Tenant: acme\r\n");
    assert_eq!(res.status, 200);
    assert_eq!(upstream_header(&res, "x-consumer"), None);
    assert_eq!(upstream_header(&res, "x-tenant"), None);
}

#[test]
fn route_claims_must_match_exactly_or_be_in_the_array() {
    let (keys, _backend, gw) = start();
    for (roles, status) in [
        (json!(["user", "admin"]), 200),
        (json!("admin"), 200),
        (json!(["user"]), 403),
        (json!("administrator"), 403),
    ] {
        let token = keys.ec.sign(&with(good_claims(), "roles", roles.clone()));
        let res = bearer(&gw, "/admin/x", &token);
        assert_eq!(res.status, status, "roles {roles}: {}", res.text());
        if status == 403 {
            assert_eq!(res.json()["code"], "claim_mismatch");
        }
    }
    let other_tenant = with(
        with(good_claims(), "roles", json!("admin")),
        "tenant",
        json!("globex"),
    );
    assert_eq!(
        bearer(&gw, "/admin/x", &keys.ec.sign(&other_tenant)).status,
        403
    );
}

#[test]
fn scopes_are_enforced_with_403_insufficient_scope() {
    let (keys, _backend, gw) = start();
    let token = keys.ec.sign(&good_claims());
    let res = bearer(&gw, "/scoped/x", &token);
    assert_refused(
        &res,
        403,
        "insufficient_scope",
        "error=\"insufficient_scope\"",
    );
    assert!(
        res.header("www-authenticate")
            .unwrap_or("")
            .contains("scope=\"orders:write admin\"")
    );
    let admin = with(good_claims(), "scp", json!(["orders:write", "admin"]));
    let admin = keys.ec.sign(&without(admin, "scope"));
    assert_eq!(bearer(&gw, "/scoped/x", &admin).status, 200);
}

#[test]
fn tokens_from_cookies_and_the_query_and_stripped_query_credentials() {
    let (keys, _backend, gw) = start();
    let token = keys.ec.sign(&good_claims());
    let res = send(
        &gw,
        "/jwt/c",
        &format!("Cookie: theme=dark; session={token}\r\n"),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    let res = send(
        &gw,
        &format!("/jwt/q?page=2&access_token={token}&sort=asc"),
        "",
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json()["target"],
        "/jwt/q?page=2&sort=asc",
        "token removed from the query"
    );
}

#[test]
fn api_keys_identify_consumers_and_groups_gate_routes() {
    let (keys, _backend, gw) = start();
    let res = send(&gw, "/keys/a", &format!("X-Api-Key: {ALICE_KEY}\r\n"));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        upstream_header(&res, "x-consumer").as_deref(),
        Some("alice")
    );
    assert_eq!(upstream_header(&res, "x-api-key"), None, "key stripped");
    let res = send(&gw, &format!("/keys/a?api_key={BOB_KEY}"), "");
    assert_eq!(res.status, 200);
    assert_eq!(upstream_header(&res, "x-consumer").as_deref(), Some("bob"));
    assert_eq!(res.json()["target"], "/keys/a");

    let res = send(&gw, "/keys/a", "X-Api-Key: not-a-key\r\n");
    assert_refused(&res, 401, "invalid_api_key", "ApiKey realm=\"gateway\"");
    assert_refused(&send(&gw, "/keys/a", ""), 401, "unauthorized", "ApiKey");

    // /gold admits the group "gold": alice (by key or by token), not bob.
    assert_eq!(
        send(&gw, "/gold/x", &format!("X-Api-Key: {ALICE_KEY}\r\n")).status,
        200
    );
    let res = send(&gw, "/gold/x", &format!("X-Api-Key: {BOB_KEY}\r\n"));
    assert_eq!(res.status, 403);
    assert_eq!(res.json()["code"], "consumer_not_allowed");
    let token = keys.ec.sign(&good_claims());
    assert_eq!(bearer(&gw, "/gold/x", &token).status, 200);
    let stranger = keys.ec.sign(&with(good_claims(), "sub", json!("carol")));
    assert_eq!(bearer(&gw, "/gold/x", &stranger).status, 403);
}

#[test]
fn a_rotated_jwks_is_picked_up_by_reload_and_a_bad_one_keeps_the_old_keys() {
    let (keys, _backend, gw) = start();
    let next = keys.ec_next.sign(&good_claims());
    let current = keys.ec.sign(&good_claims());
    assert_eq!(bearer(&gw, "/jwt/x", &next).status, 401);

    std::fs::write(keys.path("jwks.json"), "{ not json").expect("write");
    assert!(!gw.reload(), "a broken JWKS is refused");
    assert_eq!(bearer(&gw, "/jwt/x", &current).status, 200, "old keys kept");

    keys.write_jwks(&[&keys.ec, &keys.ec_next]);
    assert!(gw.reload());
    let res = bearer(&gw, "/jwt/x", &next);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(bearer(&gw, "/jwt/x", &current).status, 200);
}

#[test]
fn bad_auth_config_is_refused_with_file_line_and_key() {
    let keys = Keys::new();
    let cases = [
        (
            "[[auth.jwt]]\nkeys = [ { alg = \"RS256\", secret = \"x\" } ]\n",
            "auth.jwt[0].keys[0]",
        ),
        (
            "[[auth.jwt]]\nkeys = [ { alg = \"HS256\", secret = \"short\" } ]\n",
            "auth.jwt[0].keys[0]",
        ),
        (
            "[[auth.jwt]]\nkeys = [ { alg = \"none\", secret = \"x\" } ]\n",
            "auth.jwt[0].keys[0].alg",
        ),
        (
            &format!(
                "[[auth.jwt]]\nkeys = [ {{ alg = \"ES256\", pem = \"{}\" }} ]\n",
                keys.path("rsa.pub.pem").display()
            ),
            "auth.jwt[0].keys[0]",
        ),
        (
            "[[consumers]]\nname = \"c\"\napi_keys = [\"plaintext\"]\n",
            "consumers[0].api_keys[0]",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"u\"\nauth = [\"nope\"]\n",
            "routes[0].auth[0]",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"u\"\nrate_limit = { rate = \"fast\" }\n",
            "routes[0].rate_limit.rate",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"u\"\nscopes = [\"a\"]\n",
            "routes[0].scopes",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"u\"\ncors = { allow_origins = [\"*\"], allow_credentials = true }\n",
            "routes[0].cors.allow_credentials",
        ),
    ];
    for (body, key) in cases {
        let text = format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"127.0.0.1:9\" }} ]\n\n{body}"
        );
        let file = gateway_tests::gateway::write_config(&text);
        let (status, _, stderr) = gateway_tests::gateway::run_cli(&[
            "check",
            "--config",
            file.path().to_str().expect("utf8 path"),
        ]);
        assert!(!status.success(), "{body} should be refused");
        let expected = format!("{}:", file.path().display());
        assert!(
            stderr.contains(&expected) && stderr.contains(&format!(": {key}: ")),
            "{body}: expected {key} located in {expected}, got:\n{stderr}"
        );
    }
}
