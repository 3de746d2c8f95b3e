//! Authentication and authorization: who is calling ([`Identity`]) and whether the route
//! lets them.
//!
//! A route names the credentials it accepts (`auth = ["jwt", "api_key"]`, any of). Each
//! is looked for where its config says; the first that verifies gives the identity. When
//! none verifies the most specific failure is answered (a bad token beats a missing
//! one), with RFC 6750 semantics: 401 and `WWW-Authenticate: Bearer` for missing or
//! invalid credentials, 403 `insufficient_scope` for a valid token without the route's
//! scopes, 403 for a consumer the route does not admit.
//!
//! Verified tokens are cached per worker ([`TokenCache`]), so a client repeating its
//! token pays for one signature check, not one per request. API keys are stored as
//! SHA-256 hashes only.

mod cache;
pub mod client;
pub mod introspect;
pub mod jwks;
pub mod jwt;

use std::{cell::RefCell, collections::HashMap, rc::Rc};

pub use self::cache::TokenCache;
use self::{
    introspect::{Introspection, Introspector},
    jwt::{JwtVerifier, TokenError},
};
use crate::{
    config::{Config, ConsumerConfig, RoutePolicy},
    http::{fields::cookie_value, request::RequestHead, target::query_param},
};

/// A verified caller, as later phases (limits, forwarding, logs) see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Index into the config's consumers, when the credential maps to one.
    pub consumer: Option<usize>,
    /// The token's `sub`.
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    /// Claims the config forwards or keys limits on: (claim, value as text).
    pub claims: Vec<(String, String)>,
    /// Unix seconds after which this verification no longer holds.
    pub expires_at: u64,
}

impl Identity {
    /// Whether selected claim `name` is `wanted`, or, for an array claim, contains it.
    pub fn claim_matches(&self, name: &str, wanted: &str) -> bool {
        match self.claim(name) {
            Some(value) if value == wanted => true,
            Some(value) if value.starts_with('[') => {
                serde_json::from_str::<Vec<serde_json::Value>>(value)
                    .is_ok_and(|items| items.iter().any(|item| item.as_str() == Some(wanted)))
            }
            _ => false,
        }
    }

    /// The value of a selected claim.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(claim, _)| claim == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A credential kind a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Index into `[[auth.jwt]]`.
    Jwt(usize),
    /// Index into `[[auth.introspection]]`.
    Introspection(usize),
    ApiKey,
}

impl AuthMethod {
    /// Whether the credential is a bearer token (RFC 6750 challenges apply).
    pub fn is_bearer(self) -> bool {
        !matches!(self, Self::ApiKey)
    }
}

/// Where a JWT provider looks for the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    Cookie(String),
    Query(String),
}

/// Why a request was not authorized; [`crate::proxy::error`] turns it into 401 or 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("credentials required")]
    Missing,
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("the token lacks a required scope")]
    InsufficientScope,
    #[error("this consumer may not call this route")]
    ConsumerNotAllowed,
    #[error("the token lacks a claim this route requires")]
    ClaimMismatch,
    #[error("the token cannot be checked now")]
    Unavailable,
}

impl AuthFailure {
    /// The `reason` label of the auth-failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::InvalidToken(_) => "invalid_token",
            Self::UnknownApiKey => "unknown_api_key",
            Self::InsufficientScope => "insufficient_scope",
            Self::ConsumerNotAllowed => "consumer_not_allowed",
            Self::ClaimMismatch => "claim_mismatch",
            Self::Unavailable => "unavailable",
        }
    }

    /// Preference when several credentials failed: the most specific is reported.
    fn rank(&self) -> u8 {
        match self {
            Self::Missing => 0,
            Self::Unavailable => 2,
            _ => 1,
        }
    }
}

/// Where the credential that identified the request sits, to strip it before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialPlace {
    /// A header field, by index.
    Field(usize),
    /// A query parameter (by name, in the authenticator's config).
    Query(AuthMethod),
    /// A cookie: left in place (other cookies share the header).
    Cookie,
}

/// The credentials verifiers of one config (shared, immutable).
#[derive(Debug)]
pub struct Authenticator {
    providers: Vec<(JwtVerifier, Vec<TokenSource>)>,
    introspectors: Vec<(Introspector, Vec<TokenSource>)>,
    api_key_header: String,
    api_key_query: Option<String>,
    api_keys: HashMap<[u8; 32], usize>,
    subjects: HashMap<String, usize>,
}

impl Authenticator {
    /// Compiles the verifiers and consumer look-ups of `config`.
    pub fn new(config: &Config) -> Self {
        let mut api_keys = HashMap::new();
        let mut subjects = HashMap::new();
        for (index, consumer) in config.consumers.iter().enumerate() {
            for hash in &consumer.api_key_hashes {
                api_keys.insert(*hash, index);
            }
            for subject in &consumer.jwt_subjects {
                subjects.insert(subject.clone(), index);
            }
        }
        Self {
            providers: config
                .auth
                .jwt
                .iter()
                .map(|p| (p.verifier.clone(), p.token_from.clone()))
                .collect(),
            introspectors: config
                .auth
                .introspection
                .iter()
                .map(|p| (p.introspector.clone(), p.token_from.clone()))
                .collect(),
            api_key_header: config.auth.api_key_header.clone(),
            api_key_query: config.auth.api_key_query.clone(),
            api_keys,
            subjects,
        }
    }

    /// Identifies the caller of `head` by the credentials `policy` accepts, then checks
    /// the route's scopes and consumers. The cache is borrowed only between awaits.
    pub async fn authenticate(
        &self,
        head: &RequestHead,
        policy: &RoutePolicy,
        consumers: &[ConsumerConfig],
        cache: &RefCell<TokenCache>,
        now: u64,
    ) -> Result<(Rc<Identity>, CredentialPlace), AuthFailure> {
        let mut failure = AuthFailure::Missing;
        let mut found = None;
        for &method in &policy.auth {
            let attempt = match method {
                AuthMethod::Jwt(provider) => self.jwt(head, provider, cache, now),
                AuthMethod::Introspection(server) => {
                    self.introspect(head, server, cache, now).await
                }
                AuthMethod::ApiKey => self.api_key(head),
            };
            match attempt {
                Ok(identified) => {
                    found = Some(identified);
                    break;
                }
                Err(error) if error.rank() > failure.rank() => failure = error,
                Err(_) => {}
            }
        }
        let (identity, place) = found.ok_or(failure)?;
        if !policy
            .scopes
            .iter()
            .all(|scope| identity.scopes.contains(scope))
        {
            return Err(AuthFailure::InsufficientScope);
        }
        if !policy
            .claims
            .iter()
            .all(|(claim, wanted)| identity.claim_matches(claim, wanted))
        {
            return Err(AuthFailure::ClaimMismatch);
        }
        if !policy.consumers.is_empty() {
            let admitted = identity.consumer.is_some_and(|c| {
                let consumer = &consumers[c];
                policy.consumers.iter().any(|allowed| {
                    *allowed == consumer.name || consumer.group.as_deref() == Some(allowed)
                })
            });
            if !admitted {
                return Err(AuthFailure::ConsumerNotAllowed);
            }
        }
        Ok((identity, place))
    }

    fn jwt(
        &self,
        head: &RequestHead,
        provider: usize,
        cache: &RefCell<TokenCache>,
        now: u64,
    ) -> Result<(Rc<Identity>, CredentialPlace), AuthFailure> {
        let (verifier, sources) = &self.providers[provider];
        let (token, place) = sources
            .iter()
            .find_map(|source| find_token(head, source, AuthMethod::Jwt(provider)))
            .ok_or(AuthFailure::Missing)?;
        if let Some(Some(identity)) = cache.borrow().get(provider, token, now) {
            return Ok((identity, place));
        }
        let identity = verifier
            .verify(token, now, |subject| self.subjects.get(subject).copied())
            .map_err(AuthFailure::InvalidToken)?;
        Ok((
            cache.borrow_mut().insert(provider, token, identity, now),
            place,
        ))
    }

    async fn introspect(
        &self,
        head: &RequestHead,
        server: usize,
        cache: &RefCell<TokenCache>,
        now: u64,
    ) -> Result<(Rc<Identity>, CredentialPlace), AuthFailure> {
        let (introspector, sources) = &self.introspectors[server];
        let (token, place) = sources
            .iter()
            .find_map(|source| find_token(head, source, AuthMethod::Introspection(server)))
            .ok_or(AuthFailure::Missing)?;
        if token.len() > introspector.max_token_size {
            return Err(AuthFailure::InvalidToken(TokenError::TooLarge));
        }
        // Cache slots after the JWT providers'.
        let slot = self.providers.len() + server;
        match cache.borrow().get(slot, token, now) {
            Some(Some(identity)) => return Ok((identity, place)),
            Some(None) => return Err(AuthFailure::InvalidToken(TokenError::Inactive)),
            None => {}
        }
        let answer = introspector
            .introspect(token, now, |subject| self.subjects.get(subject).copied())
            .await
            .map_err(|error| {
                tracing::warn!(%error, "token introspection unavailable");
                AuthFailure::Unavailable
            })?;
        match answer {
            Introspection::Active(identity) => {
                Ok((cache.borrow_mut().insert(slot, token, identity, now), place))
            }
            Introspection::Inactive => {
                let until = now + introspector.negative_ttl.as_secs();
                cache.borrow_mut().insert_inactive(slot, token, until, now);
                Err(AuthFailure::InvalidToken(TokenError::Inactive))
            }
        }
    }

    fn api_key(&self, head: &RequestHead) -> Result<(Rc<Identity>, CredentialPlace), AuthFailure> {
        let from_header = (0..head.fields.len())
            .find(|&i| {
                head.fields
                    .name(i)
                    .eq_ignore_ascii_case(self.api_key_header.as_bytes())
            })
            .map(|i| (head.fields.value(i), CredentialPlace::Field(i)));
        let from_query = || {
            let name = self.api_key_query.as_deref()?;
            let value = query_param(head.query()?, name.as_bytes())?;
            Some((value, CredentialPlace::Query(AuthMethod::ApiKey)))
        };
        let (key, place) = from_header
            .or_else(from_query)
            .ok_or(AuthFailure::Missing)?;
        let hash = sha256(key);
        let consumer = *self.api_keys.get(&hash).ok_or(AuthFailure::UnknownApiKey)?;
        let identity = Identity {
            consumer: Some(consumer),
            subject: None,
            scopes: Vec::new(),
            claims: Vec::new(),
            expires_at: u64::MAX,
        };
        Ok((Rc::new(identity), place))
    }

    /// The query parameter a credential of `method` was read from.
    pub fn query_name(&self, method: AuthMethod) -> Option<&str> {
        match method {
            AuthMethod::ApiKey => self.api_key_query.as_deref(),
            AuthMethod::Jwt(p) => query_source(&self.providers[p].1),
            AuthMethod::Introspection(p) => query_source(&self.introspectors[p].1),
        }
    }
}

fn query_source(sources: &[TokenSource]) -> Option<&str> {
    sources.iter().find_map(|s| match s {
        TokenSource::Query(name) => Some(name.as_str()),
        _ => None,
    })
}

/// The token of `head` from `source`, with where it sits.
fn find_token<'h>(
    head: &'h RequestHead,
    source: &TokenSource,
    method: AuthMethod,
) -> Option<(&'h [u8], CredentialPlace)> {
    match source {
        TokenSource::Bearer => (0..head.fields.len()).find_map(|i| {
            if !head.fields.name(i).eq_ignore_ascii_case(b"authorization") {
                return None;
            }
            let value = head.fields.value(i);
            let (scheme, token) = value.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| (crate::http::trim_ows(token), CredentialPlace::Field(i)))
        }),
        TokenSource::Cookie(name) => {
            cookie_value(&head.fields, name.as_bytes()).map(|v| (v, CredentialPlace::Cookie))
        }
        TokenSource::Query(name) => {
            query_param(head.query()?, name.as_bytes()).map(|v| (v, CredentialPlace::Query(method)))
        }
    }
}

/// SHA-256 of an API key: what the config stores and what is compared.
pub fn sha256(key: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
