//! JWT verification on arbitrary bytes: never panics, and whatever it accepts is a token
//! this provider's own secret signed (so the fuzzer must never find an acceptance it
//! did not start from), within the size cap.
#![no_main]

use gateway::auth::jwt::{ClaimRules, JwtVerifier, VerificationKey};
use libfuzzer_sys::fuzz_target;

/// The secret the seed corpus' tokens are signed with.
const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32b";

thread_local! {
    static VERIFIER: JwtVerifier = {
        let rules = ClaimRules {
            issuer: Some("https://idp.fuzz".into()),
            audience: vec!["api".into()],
            leeway_secs: 30,
        };
        let key = VerificationKey::from_secret(
            Some("k1".into()),
            gateway::auth::jwt::parse_algorithm("HS256").expect("HS256"),
            SECRET,
            &rules,
        )
        .expect("key");
        JwtVerifier {
            keys: vec![key],
            remote: None,
            leeway_secs: 30,
            max_token_size: 4096,
            required_claims: vec!["sub".into()],
            consumer_claim: "sub".into(),
            selected_claims: vec!["tenant".into()],
        }
    };
}

fuzz_target!(|data: &[u8]| {
    VERIFIER.with(|verifier| {
        if let Ok(identity) = verifier.verify(data, 1_800_000_000, |_| None) {
            assert!(data.len() <= 4096);
            assert!(identity.expires_at >= 1_800_000_000 - 30);
        }
    });
});
