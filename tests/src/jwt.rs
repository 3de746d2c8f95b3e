//! Signing keys and tokens for tests: freshly generated keys (rcgen), their public
//! halves as PEM and JWKS, and tokens signed with jsonwebtoken.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

/// A private key with its identifier and algorithm.
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    pub key: EncodingKey,
    /// The public key as SPKI PEM (empty for HMAC).
    pub public_pem: String,
}

impl SigningKey {
    fn generate(alg: Algorithm, kid: &str, rcgen_alg: &'static rcgen::SignatureAlgorithm) -> Self {
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("generate key");
        let private = pair.serialize_pem();
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(private.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
            _ => EncodingKey::from_rsa_pem(private.as_bytes()),
        }
        .expect("encoding key");
        Self {
            alg,
            kid: kid.to_owned(),
            key,
            public_pem: pair.public_key_pem(),
        }
    }

    /// A new P-256 key for ES256.
    pub fn es256(kid: &str) -> Self {
        Self::generate(Algorithm::ES256, kid, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A new 2048-bit RSA key for `alg` (RS* or PS*).
    pub fn rsa(alg: Algorithm, kid: &str) -> Self {
        Self::generate(alg, kid, &rcgen::PKCS_RSA_SHA256)
    }

    /// A new Ed25519 key.
    pub fn ed25519(kid: &str) -> Self {
        Self::generate(Algorithm::EdDSA, kid, &rcgen::PKCS_ED25519)
    }

    /// An HMAC key.
    pub fn hmac(alg: Algorithm, kid: &str, secret: &[u8]) -> Self {
        Self {
            alg,
            kid: kid.to_owned(),
            key: EncodingKey::from_secret(secret),
            public_pem: String::new(),
        }
    }

    /// The same key under another algorithm of its family (RS256 → PS256).
    pub fn with_alg(&self, alg: Algorithm, kid: &str) -> Self {
        Self {
            alg,
            kid: kid.to_owned(),
            key: self.key.clone(),
            public_pem: self.public_pem.clone(),
        }
    }

    /// A token with `claims`, this key's `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }
}

/// A JWKS document with the public halves of `keys`.
pub fn jwks(keys: &[&SigningKey]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let mut jwk = Jwk::from_encoding_key(&k.key, k.alg).expect("jwk");
            jwk.common.key_id = Some(k.kid.clone());
            serde_json::to_value(jwk).expect("jwk json")
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// URL-safe base64 without padding, as JWTs use.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
