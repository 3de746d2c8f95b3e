//! The per-request cost of the policy phases, measured in isolation: a cold JWT
//! verification (ES256 and RS256, what a new token costs before the cache has it), a
//! cache hit (what every repeat costs), and a rate-limit check.
//! `cargo xtask bench` runs this and quotes the figures.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::{
    auth::{
        Identity, TokenCache,
        jwt::{ClaimRules, JwtVerifier, VerificationKey},
    },
    ratelimit::{Rate, RateTable},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A verifier for one fresh key of `alg`, and a token it accepts.
fn verifier_and_token(alg: Algorithm) -> (JwtVerifier, String) {
    let (rcgen_alg, encoding): (_, fn(&[u8]) -> _) = match alg {
        Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
        _ => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("generate key");
    let dir = std::env::temp_dir().join(format!("gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let public = dir.join(format!("{alg:?}.pem"));
    std::fs::write(&public, pair.public_key_pem()).expect("write key");
    let rules = ClaimRules {
        issuer: Some("https://idp.bench".into()),
        audience: vec!["api".into()],
        leeway_secs: 30,
    };
    let key = VerificationKey::from_pem(Some("k".into()), alg, &public, &rules).expect("key");
    let _ = std::fs::remove_dir_all(&dir);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://idp.bench", "aud": "api", "sub": "consumer-1",
        "scope": "read write", "exp": now + 3600, "iat": now,
    });
    let mut header = Header::new(alg);
    header.kid = Some("k".into());
    let signing = encoding(pair.serialize_pem().as_bytes()).expect("signing key");
    let token = jsonwebtoken::encode(&header, &claims, &signing).expect("sign");
    let verifier = JwtVerifier {
        keys: vec![key],
        remote: None,
        leeway_secs: 30,
        max_token_size: 8192,
        required_claims: Vec::new(),
        consumer_claim: "sub".into(),
        selected_claims: Vec::new(),
    };
    (verifier, token)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn jwt(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt");
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let (verifier, token) = verifier_and_token(alg);
        let now = now_secs();
        group.bench_function(format!("cold_{alg:?}"), |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(token.as_bytes()), now, |_| Some(0))
                    .expect("valid token")
            })
        });
    }
    let (verifier, token) = verifier_and_token(Algorithm::ES256);
    let now = now_secs();
    let identity: Identity = verifier
        .verify(token.as_bytes(), now, |_| Some(0))
        .expect("valid token");
    let mut cache = TokenCache::new(4096);
    cache.insert(0, token.as_bytes(), identity, now);
    group.bench_function("cache_hit", |b| {
        b.iter(|| {
            cache
                .get(0, black_box(token.as_bytes()), now)
                .expect("cached")
        })
    });
    group.finish();
}

fn ratelimit(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit");
    let table = RateTable::new(65_536);
    let rate = Rate {
        count: 1_000_000_000,
        per: Duration::from_secs(1),
        burst: 1_000_000,
    };
    let key = table.key_hash("consumer:bench", b"consumer-1");
    group.bench_function("check", |b| {
        b.iter(|| table.check(black_box(key), &rate, table.now_ns()))
    });
    group.bench_function("hash_and_check", |b| {
        b.iter(|| {
            let key = table.key_hash("consumer:bench", black_box(b"consumer-1"));
            table.check(key, &rate, table.now_ns())
        })
    });
    group.finish();
}

criterion_group!(benches, jwt, ratelimit);
criterion_main!(benches);
