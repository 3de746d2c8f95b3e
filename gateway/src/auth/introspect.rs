//! OAuth2 token introspection (RFC 7662) for opaque tokens: the worker asks the
//! authorization server with its client credentials, and caches the answer (active
//! until the token's `exp` or `cache_ttl`, inactive for `negative_ttl`).

use std::{collections::BTreeMap, time::Duration};

use base64::Engine as _;
use serde_json::Value;

use super::{Identity, client::Endpoint, jwt::identity_from_claims};

/// Largest introspection answer accepted.
const MAX_ANSWER: usize = 64 * 1024;

/// One `[[auth.introspection]]` server, compiled.
#[derive(Debug, Clone)]
pub struct Introspector {
    pub endpoint: Endpoint,
    /// `authorization: Basic …` header line with the client credentials.
    credentials: String,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_token_size: usize,
    pub consumer_claim: String,
    pub selected_claims: Vec<String>,
}

/// What the authorization server said.
#[derive(Debug)]
pub enum Introspection {
    /// Active, with the identity valid until its `expires_at` (capped by `cache_ttl`).
    Active(Identity),
    /// Not active (expired, revoked, unknown).
    Inactive,
}

/// Why the server could not be asked (the request gets 503, nothing is cached).
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    #[error("introspection at {url} failed: {reason}")]
    Failed { url: String, reason: String },
}

impl Introspector {
    /// An introspector calling `endpoint` as `client_id`.
    pub fn new(
        endpoint: Endpoint,
        client_id: &str,
        client_secret: &str,
        timeout: Duration,
        cache_ttl: Duration,
        negative_ttl: Duration,
        consumer_claim: String,
    ) -> Self {
        // RFC 6749 §2.3.1: both parts form-encoded, then Basic.
        let form = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form(client_id),
            form(client_secret)
        ));
        Self {
            endpoint,
            credentials: format!(
                "authorization: Basic {basic}\r\ncontent-type: application/x-www-form-urlencoded\r\n"
            ),
            timeout,
            cache_ttl,
            negative_ttl,
            max_token_size: 8 * 1024,
            consumer_claim,
            selected_claims: Vec::new(),
        }
    }

    /// Asks the server about `token` at `now` (Unix seconds).
    pub async fn introspect(
        &self,
        token: &[u8],
        now: u64,
        consumer_of: impl Fn(&str) -> Option<usize>,
    ) -> Result<Introspection, IntrospectionError> {
        let failed = |reason: String| IntrospectionError::Failed {
            url: self.endpoint.url.clone(),
            reason,
        };
        let mut body = b"token=".to_vec();
        body.extend(url::form_urlencoded::byte_serialize(token).flat_map(str::bytes));
        body.extend_from_slice(b"&token_type_hint=access_token");
        let (status, answer) = self
            .endpoint
            .call("POST", &self.credentials, &body, self.timeout, MAX_ANSWER)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if status != 200 {
            return Err(failed(format!("HTTP status {status}")));
        }
        let claims: BTreeMap<String, Value> =
            serde_json::from_slice(&answer).map_err(|e| failed(format!("invalid JSON: {e}")))?;
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Ok(Introspection::Inactive);
        }
        let mut identity = identity_from_claims(
            &claims,
            &self.consumer_claim,
            &self.selected_claims,
            now,
            &consumer_of,
        );
        let cap = now + self.cache_ttl.as_secs();
        identity.expires_at = match claims.get("exp").and_then(Value::as_u64) {
            Some(exp) if exp <= now => return Ok(Introspection::Inactive),
            Some(exp) => exp.min(cap),
            None => cap,
        };
        Ok(Introspection::Active(identity))
    }
}
