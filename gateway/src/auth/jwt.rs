//! JWT verification (jsonwebtoken, aws-lc-rs backend): keys bound to one algorithm,
//! strict claim checks, and nothing taken from the token that could choose its own key.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
};
use serde_json::Value;

use super::{Identity, jwks::RemoteJwks};

/// A verification key and the one algorithm it verifies.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be loaded (reported at config load, with the key's path).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "unknown algorithm {0:?} (use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA)"
    )]
    UnknownAlgorithm(String),
    #[error("`alg` is required for this key")]
    MissingAlgorithm,
    #[error("{alg:?} cannot be verified with this kind of key")]
    AlgorithmMismatch { alg: Algorithm },
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("{path}: invalid JWKS document: {source}")]
    Jwks {
        path: String,
        source: serde_json::Error,
    },
}

/// Parses an algorithm name as written in configs and JWT headers.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    name.parse::<Algorithm>()
        .map_err(|_| KeyError::UnknownAlgorithm(name.to_owned()))
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(error: jsonwebtoken::errors::Error) -> KeyError {
    KeyError::Invalid(error.to_string())
}

/// The claim checks every key of a provider applies.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway_secs: u64,
}

impl VerificationKey {
    fn new(
        kid: Option<String>,
        alg: Algorithm,
        key: DecodingKey,
        rules: &ClaimRules,
    ) -> Result<Self, KeyError> {
        if !key.family().algorithms().contains(&alg) {
            return Err(KeyError::AlgorithmMismatch { alg });
        }
        let mut validation = Validation::new(alg);
        validation.leeway = rules.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if rules.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&rules.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            kid,
            alg,
            key,
            validation,
        })
    }

    /// A PEM public key (RSA, EC or Ed25519) for `alg`.
    pub fn from_pem(
        kid: Option<String>,
        alg: Algorithm,
        path: &Path,
        rules: &ClaimRules,
    ) -> Result<Self, KeyError> {
        let pem = read(path)?;
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(KeyError::AlgorithmMismatch { alg });
            }
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        }
        .map_err(invalid)?;
        Self::new(kid, alg, key, rules)
    }

    /// An HMAC secret for `alg`.
    pub fn from_secret(
        kid: Option<String>,
        alg: Algorithm,
        secret: &[u8],
        rules: &ClaimRules,
    ) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::Invalid(
                "an HMAC secret needs at least 32 bytes".into(),
            ));
        }
        Self::new(kid, alg, DecodingKey::from_secret(secret), rules)
    }

    /// A JWK; its algorithm from `alg`, else from the JWK, else from its curve.
    pub fn from_jwk(
        jwk: &Jwk,
        alg: Option<Algorithm>,
        rules: &ClaimRules,
    ) -> Result<Self, KeyError> {
        let alg = match (alg, jwk.common.key_algorithm) {
            (Some(alg), _) => alg,
            (None, Some(alg)) => key_algorithm(alg)?,
            (None, None) => match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => return Err(KeyError::MissingAlgorithm),
                },
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => return Err(KeyError::MissingAlgorithm),
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(invalid)?;
        Self::new(jwk.common.key_id.clone(), alg, key, rules)
    }

    /// Every usable key of a JWKS file (keys marked for encryption are skipped).
    pub fn from_jwks_file(path: &Path, rules: &ClaimRules) -> Result<Vec<Self>, KeyError> {
        Self::from_jwks(&read(path)?, &path.display().to_string(), rules)
    }

    /// Every usable key of a JWKS document read from `source`.
    pub fn from_jwks(
        document: &[u8],
        source: &str,
        rules: &ClaimRules,
    ) -> Result<Vec<Self>, KeyError> {
        let set: JwkSet = serde_json::from_slice(document).map_err(|error| KeyError::Jwks {
            path: source.to_owned(),
            source: error,
        })?;
        set.keys
            .iter()
            .filter(|jwk| {
                !matches!(
                    jwk.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                )
            })
            .map(|jwk| Self::from_jwk(jwk, None, rules))
            .collect()
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Result<Algorithm, KeyError> {
    parse_algorithm(&alg.to_string())
}

/// Why a token was refused; the text goes into `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not accepted")]
    Algorithm,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("unsupported critical header")]
    Critical,
    #[error("invalid signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("missing claim {0}")]
    MissingClaim(String),
    #[error("token inactive")]
    Inactive,
}

/// One `[[auth.jwt]]` provider, compiled.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    pub keys: Vec<VerificationKey>,
    /// Keys fetched from a JWKS URL, refreshed in the background.
    pub remote: Option<Arc<RemoteJwks>>,
    pub leeway_secs: u64,
    pub max_token_size: usize,
    pub required_claims: Vec<String>,
    pub consumer_claim: String,
    /// Claims copied into the identity (forwarded as headers or keying limits).
    pub selected_claims: Vec<String>,
}

impl JwtVerifier {
    /// Verifies `token` at `now` (Unix seconds). `consumer_of` maps the consumer
    /// claim's value to a consumer.
    pub fn verify(
        &self,
        token: &[u8],
        now: u64,
        consumer_of: impl Fn(&str) -> Option<usize>,
    ) -> Result<Identity, TokenError> {
        if token.len() > self.max_token_size {
            return Err(TokenError::TooLarge);
        }
        if token.iter().filter(|&&b| b == b'.').count() != 2 {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
            // `"alg": "none"` (or any name jsonwebtoken does not know) fails to
            // deserialize as an unknown variant of its algorithm enum.
            ErrorKind::Json(json) if json.to_string().contains("unknown variant") => {
                TokenError::Algorithm
            }
            _ => TokenError::Malformed,
        })?;
        // No extension is understood, so any critical one refuses the token
        // (RFC 7515 §4.1.11). `jku`, `x5u` and an embedded `jwk` are never looked at.
        if header.crit.is_some() {
            return Err(TokenError::Critical);
        }
        let remote = self.remote.as_ref().map(|r| r.keys());
        let all_keys = || {
            self.keys
                .iter()
                .chain(remote.iter().flat_map(|keys| keys.iter()))
        };
        let mut candidates = all_keys()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                (Some(_), None) => true,
                (None, _) => true,
            })
            .peekable();
        if candidates.peek().is_none() {
            if let Some(remote) = &self.remote {
                remote.want_refresh();
            }
            return Err(if all_keys().any(|k| k.alg == header.alg) {
                TokenError::UnknownKey
            } else {
                TokenError::Algorithm
            });
        }
        let mut last = TokenError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<BTreeMap<String, Value>>(token, &key.key, &key.validation)
            {
                Ok(data) => return self.identity(data.claims, now, &consumer_of),
                Err(e) => {
                    last = token_error(e.into_kind());
                    if last != TokenError::Signature {
                        // The signature verified; the claims are what is wrong.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn identity(
        &self,
        claims: BTreeMap<String, Value>,
        now: u64,
        consumer_of: &impl Fn(&str) -> Option<usize>,
    ) -> Result<Identity, TokenError> {
        if let Some(iat) = claims.get("iat").and_then(Value::as_u64)
            && iat > now + self.leeway_secs
        {
            return Err(TokenError::IssuedInFuture);
        }
        if let Some(missing) = self
            .required_claims
            .iter()
            .find(|c| claims.get(*c).is_none_or(Value::is_null))
        {
            return Err(TokenError::MissingClaim(missing.clone()));
        }
        Ok(identity_from_claims(
            &claims,
            &self.consumer_claim,
            &self.selected_claims,
            now,
            consumer_of,
        ))
    }
}

/// The identity carried by verified claims (a JWT payload or an introspection answer).
pub fn identity_from_claims(
    claims: &BTreeMap<String, Value>,
    consumer_claim: &str,
    selected_claims: &[String],
    now: u64,
    consumer_of: &impl Fn(&str) -> Option<usize>,
) -> Identity {
    // Values may be forwarded as header values: only those without control characters.
    let text = |name: &str| {
        let value = match claims.get(name)? {
            Value::String(s) => s.clone(),
            Value::Null => return None,
            other => other.to_string(),
        };
        value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
            .then_some(value)
    };
    let scopes = match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => {
            s.split_ascii_whitespace().map(str::to_owned).collect()
        }
        (_, Some(Value::Array(list))) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Identity {
        consumer: text(consumer_claim).and_then(|v| consumer_of(&v)),
        subject: text("sub"),
        scopes,
        claims: selected_claims
            .iter()
            .filter_map(|name| Some((name.clone(), text(name)?)))
            .collect(),
        expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or(now),
    }
}

fn token_error(kind: ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim),
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
        ErrorKind::InvalidClaimFormat(claim) => TokenError::MissingClaim(claim),
        _ => TokenError::Malformed,
    }
}
