//! Validation of the security policy: `[auth]`, `[[consumers]]` and each route's auth,
//! rate limit, concurrency, IP and CORS settings.

use std::{collections::HashMap, path::Path, time::Duration};

use super::{
    AuthConfig, ConsumerConfig, CorsConfig, IntrospectionConfig, JwtProviderConfig, RoutePolicy,
    raw::{
        RawAuth, RawConsumer, RawCors, RawIntrospection, RawJwtProvider, RawRateLimit, RawRoute,
    },
    validate::{Problems, is_token, parse_cidr},
};
use crate::{
    auth::{
        AuthMethod, TokenSource,
        client::Endpoint,
        introspect::Introspector,
        jwks::RemoteJwks,
        jwt::{ClaimRules, JwtVerifier, VerificationKey, parse_algorithm},
    },
    ratelimit::{LimitKey, LimitMode, LimitSpec, Rate, SLIDING_MAX},
};

/// Name routes use for API keys in `auth`.
const API_KEY: &str = "api_key";

/// Loads every JWT provider's keys; paths are relative to the config's folder.
pub(super) fn validate_auth(dir: &Path, raw: &RawAuth, problems: &mut Problems) -> AuthConfig {
    let mut names = HashMap::new();
    let mut jwt = Vec::new();
    for (i, p) in raw.jwt.iter().enumerate() {
        let key = format!("auth.jwt[{i}]");
        if p.name == API_KEY || !is_token(&p.name) {
            problems.push(
                format!("{key}.name"),
                format!("invalid provider name {:?}", p.name),
            );
        }
        if names.insert(p.name.as_str(), i).is_some() {
            problems.push(
                format!("{key}.name"),
                format!("duplicate provider name {:?}", p.name),
            );
        }
        jwt.push(validate_jwt_provider(dir, &key, p, problems));
    }
    let mut introspection = Vec::new();
    for (i, p) in raw.introspection.iter().enumerate() {
        let key = format!("auth.introspection[{i}]");
        if p.name == API_KEY || !is_token(&p.name) || names.insert(p.name.as_str(), i).is_some() {
            problems.push(
                format!("{key}.name"),
                format!("invalid or duplicate credential name {:?}", p.name),
            );
        }
        introspection.extend(validate_introspection(dir, &key, p, problems));
    }
    for (name, header) in [
        ("auth.consumer_header", &raw.consumer_header),
        ("auth.subject_header", &raw.subject_header),
        ("auth.api_key.header", &raw.api_key.header),
    ] {
        if !is_token(header) {
            problems.push(name, format!("invalid header name {header:?}"));
        }
    }
    AuthConfig {
        jwt,
        introspection,
        api_key_header: raw.api_key.header.to_ascii_lowercase(),
        api_key_query: raw.api_key.query.clone(),
        consumer_header: raw.consumer_header.to_ascii_lowercase(),
        subject_header: raw.subject_header.to_ascii_lowercase(),
        token_cache_entries: raw.token_cache_entries,
    }
}

fn validate_jwt_provider(
    dir: &Path,
    key: &str,
    p: &RawJwtProvider,
    problems: &mut Problems,
) -> JwtProviderConfig {
    let rules = ClaimRules {
        issuer: p.issuer.clone(),
        audience: p.audience.clone(),
        leeway_secs: p.leeway.as_secs(),
    };
    let mut keys = Vec::new();
    for (k, raw_key) in p.keys.iter().enumerate() {
        let kkey = format!("{key}.keys[{k}]");
        let alg = match raw_key.alg.as_deref().map(parse_algorithm) {
            Some(Ok(alg)) => Some(alg),
            Some(Err(e)) => {
                problems.push(format!("{kkey}.alg"), e.to_string());
                continue;
            }
            None => None,
        };
        let sources = [
            raw_key.pem.is_some(),
            raw_key.jwk.is_some(),
            raw_key.secret.is_some(),
            raw_key.secret_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            problems.push(kkey, "set exactly one of pem, jwk, secret and secret_file");
            continue;
        }
        let kid = raw_key.kid.clone();
        let loaded = match (alg, &raw_key.jwk) {
            (_, Some(path)) => std::fs::read(dir.join(path))
                .map_err(|e| format!("cannot read {path}: {e}"))
                .and_then(|text| {
                    serde_json::from_slice::<jsonwebtoken::jwk::Jwk>(&text)
                        .map_err(|e| format!("{path}: invalid JWK: {e}"))
                })
                .and_then(|jwk| {
                    VerificationKey::from_jwk(&jwk, alg, &rules).map_err(|e| e.to_string())
                }),
            (None, None) => Err("`alg` is required for this key".to_owned()),
            (Some(alg), None) => match (&raw_key.pem, &raw_key.secret, &raw_key.secret_file) {
                (Some(pem), _, _) => VerificationKey::from_pem(kid, alg, &dir.join(pem), &rules)
                    .map_err(|e| e.to_string()),
                (_, Some(secret), _) => {
                    VerificationKey::from_secret(kid, alg, secret.as_bytes(), &rules)
                        .map_err(|e| e.to_string())
                }
                (_, _, Some(file)) => std::fs::read(dir.join(file))
                    .map_err(|e| format!("cannot read {file}: {e}"))
                    .and_then(|secret| {
                        let secret = secret.trim_ascii_end();
                        VerificationKey::from_secret(kid, alg, secret, &rules)
                            .map_err(|e| e.to_string())
                    }),
                (None, None, None) => continue,
            },
        };
        match loaded {
            Ok(key) => keys.push(key),
            Err(message) => problems.push(kkey, message),
        }
    }
    if let Some(jwks) = &p.jwks {
        match VerificationKey::from_jwks_file(&dir.join(jwks), &rules) {
            Ok(set) => keys.extend(set),
            Err(e) => problems.push(format!("{key}.jwks"), e.to_string()),
        }
    }
    let remote = p.jwks_url.as_deref().and_then(|url| {
        let ca = p.jwks_ca.as_deref().map(|ca| dir.join(ca));
        match Endpoint::parse(url, ca.as_deref()) {
            Ok(endpoint) => Some(std::sync::Arc::new(RemoteJwks::new(
                endpoint,
                rules.clone(),
                p.jwks_refresh,
                p.jwks_min_refresh,
            ))),
            Err(e) => {
                problems.push(format!("{key}.jwks_url"), e.to_string());
                None
            }
        }
    });
    if let Some(remote) = &remote
        && let Err(error) = remote.fetch_now()
    {
        // The gateway starts anyway: the refresher keeps trying, and tokens fail as
        // signed by an unknown key until it succeeds.
        tracing::warn!(%error, "{key}.jwks_url: initial fetch failed");
    }
    if keys.is_empty() && p.jwks.is_none() && p.jwks_url.is_none() {
        problems.push(key, "a JWT provider needs keys, jwks or jwks_url");
    }
    let token_from = token_sources(key, &p.token_from, problems);
    let mut claim_headers = Vec::new();
    for (claim, header) in &p.claim_headers {
        if is_token(header) {
            claim_headers.push((claim.clone(), header.to_ascii_lowercase()));
        } else {
            problems.push(
                format!("{key}.claim_headers.{claim}"),
                format!("invalid header name {header:?}"),
            );
        }
    }
    JwtProviderConfig {
        name: p.name.clone(),
        verifier: JwtVerifier {
            keys,
            remote,
            leeway_secs: p.leeway.as_secs(),
            max_token_size: p.max_token_size.try_into().unwrap_or(usize::MAX),
            required_claims: p.required_claims.clone(),
            consumer_claim: p.consumer_claim.clone(),
            selected_claims: claim_headers.iter().map(|(c, _)| c.clone()).collect(),
        },
        token_from,
        claim_headers,
    }
}

/// Where a provider reads its token: `header`, `cookie:NAME`, `query:NAME`.
fn token_sources(key: &str, list: &[String], problems: &mut Problems) -> Vec<TokenSource> {
    let mut out = Vec::new();
    for (t, source) in list.iter().enumerate() {
        let parsed = match source.split_once(':') {
            None if source == "header" => Some(TokenSource::Bearer),
            Some(("cookie", name)) if is_token(name) => Some(TokenSource::Cookie(name.into())),
            Some(("query", name)) if !name.is_empty() => Some(TokenSource::Query(name.into())),
            _ => None,
        };
        match parsed {
            Some(source) => out.push(source),
            None => problems.push(
                format!("{key}.token_from[{t}]"),
                format!("{source:?}: write \"header\", \"cookie:NAME\" or \"query:NAME\""),
            ),
        }
    }
    out
}

fn validate_introspection(
    dir: &Path,
    key: &str,
    p: &RawIntrospection,
    problems: &mut Problems,
) -> Option<IntrospectionConfig> {
    let secret = match (&p.client_secret, &p.client_secret_file) {
        (Some(secret), None) => secret.clone(),
        (None, Some(file)) => match std::fs::read_to_string(dir.join(file)) {
            Ok(text) => text.trim_end().to_owned(),
            Err(e) => {
                problems.push(
                    format!("{key}.client_secret_file"),
                    format!("cannot read {file}: {e}"),
                );
                return None;
            }
        },
        _ => {
            problems.push(
                key,
                "set exactly one of client_secret and client_secret_file",
            );
            return None;
        }
    };
    let ca = p.ca.as_deref().map(|ca| dir.join(ca));
    let endpoint = match Endpoint::parse(&p.url, ca.as_deref()) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            problems.push(format!("{key}.url"), e.to_string());
            return None;
        }
    };
    let mut introspector = Introspector::new(
        endpoint,
        &p.client_id,
        &secret,
        p.timeout,
        p.cache_ttl,
        p.negative_ttl,
        p.consumer_claim.clone(),
    );
    introspector.max_token_size = p.max_token_size.try_into().unwrap_or(usize::MAX);
    Some(IntrospectionConfig {
        name: p.name.clone(),
        introspector,
        token_from: token_sources(key, &p.token_from, problems),
    })
}

/// Consumers, with their API key hashes decoded.
pub(super) fn validate_consumers(
    raw: &[RawConsumer],
    plans: &[super::PlanConfig],
    problems: &mut Problems,
) -> Vec<ConsumerConfig> {
    let mut names = HashMap::new();
    let mut keys = HashMap::new();
    let mut subjects = HashMap::new();
    let mut out = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let key = format!("consumers[{i}]");
        if c.name.is_empty() || names.insert(c.name.as_str(), i).is_some() {
            problems.push(
                format!("{key}.name"),
                format!("empty or duplicate consumer name {:?}", c.name),
            );
        }
        let mut api_key_hashes = Vec::new();
        for (k, text) in c.api_keys.iter().enumerate() {
            let mut hash = [0u8; 32];
            let decoded = text
                .strip_prefix("sha256:")
                .is_some_and(|hex_digits| hex::decode_to_slice(hex_digits, &mut hash).is_ok());
            if !decoded {
                problems.push(
                    format!("{key}.api_keys[{k}]"),
                    "write \"sha256:<64 hex digits>\" (printf %s KEY | sha256sum); keys are never stored in clear",
                );
            } else if keys.insert(hash, i).is_some() {
                problems.push(
                    format!("{key}.api_keys[{k}]"),
                    "this key already belongs to another consumer",
                );
            } else {
                api_key_hashes.push(hash);
            }
        }
        for (s, subject) in c.jwt_subjects.iter().enumerate() {
            if subjects.insert(subject.as_str(), i).is_some() {
                problems.push(
                    format!("{key}.jwt_subjects[{s}]"),
                    format!("{subject:?} already maps to another consumer"),
                );
            }
        }
        let rate_limit = c.rate_limit.as_ref().and_then(|r| {
            let mut spec = validate_rate_limit(&format!("{key}.rate_limit"), &c.name, r, problems)?;
            spec.name = format!("consumer:{}", c.name);
            spec.key = LimitKey::Consumer;
            Some(spec)
        });
        let plan = c.plan.as_ref().and_then(|name| {
            let found = plans.iter().find(|p| &p.name == name).cloned();
            if found.is_none() {
                problems.push(format!("{key}.plan"), format!("unknown plan {name:?}"));
            }
            found
        });
        out.push(ConsumerConfig {
            name: c.name.clone(),
            group: c.group.clone(),
            api_key_hashes,
            jwt_subjects: c.jwt_subjects.clone(),
            rate_limit,
            plan,
        });
    }
    out
}

/// A route's policy; `auth` names resolve against the JWT providers and `api_key`.
pub(super) fn validate_route_policy(
    key: &str,
    r: &RawRoute,
    auth: &AuthConfig,
    consumers: &[ConsumerConfig],
    problems: &mut Problems,
) -> RoutePolicy {
    let mut methods = Vec::new();
    for (a, name) in r.auth.iter().enumerate() {
        let method = if name == API_KEY {
            Some(AuthMethod::ApiKey)
        } else {
            auth.jwt
                .iter()
                .position(|p| p.name == *name)
                .map(AuthMethod::Jwt)
                .or_else(|| {
                    auth.introspection
                        .iter()
                        .position(|p| p.name == *name)
                        .map(AuthMethod::Introspection)
                })
        };
        match method {
            Some(m) => methods.push(m),
            None => problems.push(
                format!("{key}.auth[{a}]"),
                format!(
                    "unknown credential {name:?}: name an [[auth.jwt]] provider or \"api_key\""
                ),
            ),
        }
    }
    let needs_auth = |field: &str, set: bool, problems: &mut Problems| {
        if set && r.auth.is_empty() {
            problems.push(format!("{key}.{field}"), format!("{field} needs auth"));
        }
    };
    needs_auth("scopes", !r.scopes.is_empty(), problems);
    needs_auth("claims", !r.claims.is_empty(), problems);
    needs_auth("consumers", !r.consumers.is_empty(), problems);
    for (c, name) in r.consumers.iter().enumerate() {
        let known = consumers
            .iter()
            .any(|k| k.name == *name || k.group.as_deref() == Some(name));
        if !known {
            problems.push(
                format!("{key}.consumers[{c}]"),
                format!("no consumer or group is named {name:?}"),
            );
        }
    }
    if r.max_in_flight == Some(0) {
        problems.push(format!("{key}.max_in_flight"), "must be at least 1");
    }
    let rate_limit = r.rate_limit.as_ref().and_then(|limit| {
        let spec = validate_rate_limit(&format!("{key}.rate_limit"), &r.name, limit, problems)?;
        if matches!(spec.key, LimitKey::Claim(_))
            && !methods.iter().any(|m| matches!(m, AuthMethod::Jwt(_)))
        {
            problems.push(
                format!("{key}.rate_limit.key"),
                "a claim key needs a token credential (JWT or introspection) in auth",
            );
        }
        Some(LimitSpec {
            name: format!("route:{}", r.name),
            ..spec
        })
    });
    let cidrs = |field: &str, list: &[String], problems: &mut Problems| {
        list.iter()
            .enumerate()
            .filter_map(|(n, text)| {
                let net = parse_cidr(text);
                if net.is_none() {
                    problems.push(
                        format!("{key}.{field}[{n}]"),
                        format!("invalid address or CIDR {text:?}"),
                    );
                }
                net.map(|n| n.trunc())
            })
            .collect()
    };
    RoutePolicy {
        auth: methods,
        scopes: r.scopes.clone(),
        claims: r
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        consumers: r.consumers.clone(),
        strip_credentials: r.strip_credentials,
        rate_limit,
        max_in_flight: r.max_in_flight,
        ip_allow: cidrs("ip_allow", &r.ip_allow, problems),
        ip_deny: cidrs("ip_deny", &r.ip_deny, problems),
        cors: r
            .cors
            .as_ref()
            .and_then(|c| validate_cors(&format!("{key}.cors"), c, problems)),
    }
}

/// Parses `"100/s"`, `"6000/min"`, `"10/h"` or `"5/10s"` into a count and period.
fn parse_rate(text: &str) -> Option<(u32, Duration)> {
    let (count, per) = text.split_once('/')?;
    let count = count.trim().parse::<u32>().ok().filter(|c| *c > 0)?;
    let per = match per.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => humantime::parse_duration(other).ok()?,
    };
    (!per.is_zero()).then_some((count, per))
}

fn validate_rate_limit(
    key: &str,
    owner: &str,
    r: &RawRateLimit,
    problems: &mut Problems,
) -> Option<LimitSpec> {
    let Some((count, per)) = parse_rate(&r.rate) else {
        problems.push(
            format!("{key}.rate"),
            format!(
                "invalid rate {:?}; write e.g. \"100/s\", \"6000/min\" or \"5/10s\"",
                r.rate
            ),
        );
        return None;
    };
    let one_second = (f64::from(count) / per.as_secs_f64()).floor() as u32;
    let burst = r.burst.unwrap_or(one_second.max(1));
    if burst == 0 {
        problems.push(format!("{key}.burst"), "must be at least 1");
        return None;
    }
    let limit_key = match r.key.split_once(':') {
        None if r.key == "client_ip" => LimitKey::ClientIp,
        None if r.key == "consumer" => LimitKey::Consumer,
        None if r.key == "route" => LimitKey::Route,
        Some(("header", name)) if is_token(name) => LimitKey::Header(name.to_ascii_lowercase()),
        Some(("claim", name)) if !name.is_empty() => LimitKey::Claim(name.to_owned()),
        _ => {
            problems.push(
                format!("{key}.key"),
                format!(
                    "{:?}: write client_ip, consumer, route, header:NAME or claim:NAME",
                    r.key
                ),
            );
            return None;
        }
    };
    let mode = match r.mode.as_str() {
        "gcra" => LimitMode::Gcra,
        "sliding_window" => {
            if r.burst.is_some() {
                problems.push(
                    format!("{key}.burst"),
                    "a sliding window has no burst: at most `rate` in any window",
                );
            }
            if count > SLIDING_MAX || per.subsec_nanos() % 1_000_000 != 0 {
                problems.push(
                    format!("{key}.rate"),
                    format!(
                        "a sliding window counts up to {SLIDING_MAX} requests per window of whole milliseconds"
                    ),
                );
            }
            LimitMode::SlidingWindow
        }
        other => {
            problems.push(
                format!("{key}.mode"),
                format!("{other:?}: write \"gcra\" or \"sliding_window\""),
            );
            return None;
        }
    };
    Some(LimitSpec {
        name: owner.to_owned(),
        rate: Rate { count, per, burst },
        key: limit_key,
        mode,
    })
}

fn validate_cors(key: &str, c: &RawCors, problems: &mut Problems) -> Option<CorsConfig> {
    let mut origins = Vec::new();
    let mut origin_patterns = Vec::new();
    let mut any_origin = false;
    for (o, origin) in c.allow_origins.iter().enumerate() {
        let origin = origin.to_ascii_lowercase();
        if origin == "*" {
            any_origin = true;
        } else if let Some((scheme, rest)) = origin.split_once("://*.") {
            origin_patterns.push((format!("{scheme}://"), format!(".{rest}")));
        } else if origin.contains("://") && !origin.ends_with('/') {
            origins.push(origin);
        } else {
            problems.push(
                format!("{key}.allow_origins[{o}]"),
                format!("{origin:?}: write \"https://app.example.com\", \"https://*.example.com\" or \"*\""),
            );
        }
    }
    if any_origin && c.allow_credentials {
        problems.push(
            format!("{key}.allow_credentials"),
            "credentials cannot be allowed for any origin (\"*\"); list the origins",
        );
    }
    let tokens = |field: &str, list: &[String], problems: &mut Problems| {
        for (n, item) in list.iter().enumerate() {
            if !is_token(item) {
                problems.push(
                    format!("{key}.{field}[{n}]"),
                    format!("invalid name {item:?}"),
                );
            }
        }
        list.join(", ")
    };
    Some(CorsConfig {
        origins,
        origin_patterns,
        any_origin,
        allow_methods: tokens("allow_methods", &c.allow_methods, problems),
        allow_headers: tokens("allow_headers", &c.allow_headers, problems).to_ascii_lowercase(),
        expose_headers: tokens("expose_headers", &c.expose_headers, problems),
        allow_credentials: c.allow_credentials,
        max_age: c.max_age,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_rate;
    use std::time::Duration;

    #[test]
    fn rates_in_every_spelling() {
        assert_eq!(parse_rate("100/s"), Some((100, Duration::from_secs(1))));
        assert_eq!(
            parse_rate("6000/min"),
            Some((6000, Duration::from_secs(60)))
        );
        assert_eq!(parse_rate("5/10s"), Some((5, Duration::from_secs(10))));
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("10"), None);
        assert_eq!(parse_rate("10/0s"), None);
    }
}
