//! Validation of traffic management: each route's timeouts and retry policy, and each
//! upstream's circuit breakers and retry budget.

use std::collections::HashMap;

use super::{
    CacheKeyPart, Coding, CompressionConfig, HashKey, MirrorConfig, RetryBudgetConfig, RetryPolicy,
    RouteCache, RouteTraffic, SplitChoice, SplitRule, VersionConfig, VersionSource, VersionTarget,
    raw::{RawRetry, RawRetryBudget, RawRoute, RawUpstream},
    validate::{Problems, is_token},
};

/// The route's `retry`, timeouts, `split`, `mirror` and header transformations.
pub(super) fn validate_route_traffic(
    key: &str,
    r: &RawRoute,
    upstreams: &HashMap<&str, usize>,
    problems: &mut Problems,
) -> RouteTraffic {
    for (name, value) in [
        ("timeout", r.timeout),
        ("per_try_timeout", r.per_try_timeout),
    ] {
        if value.is_some_and(|d| d.is_zero()) {
            problems.push(format!("{key}.{name}"), "must be greater than zero");
        }
    }
    if let (Some(total), Some(per_try)) = (r.timeout, r.per_try_timeout)
        && per_try > total
    {
        problems.push(
            format!("{key}.per_try_timeout"),
            "longer than the route's total timeout; it could never fire",
        );
    }
    let (split, split_key) = validate_split(key, r, upstreams, problems);
    let mirror = r.mirror.as_ref().and_then(|m| {
        if !(0.0..=100.0).contains(&m.percent) {
            problems.push(format!("{key}.mirror.percent"), "between 0 and 100");
        }
        let Some(&upstream) = upstreams.get(m.upstream.as_str()) else {
            problems.push(
                format!("{key}.mirror.upstream"),
                format!("unknown upstream {:?}", m.upstream),
            );
            return None;
        };
        Some(MirrorConfig {
            upstream,
            share: basis_points(m.percent),
            max_body: m.max_body,
        })
    });
    let compression = r
        .compression
        .as_ref()
        .map(|c| validate_compression(&format!("{key}.compression"), c, problems));
    let cache = r
        .cache
        .as_ref()
        .map(|c| validate_route_cache(key, c, problems));
    if cache.is_some() && compression.is_some() {
        problems.push(
            format!("{key}.cache"),
            "cache and compression on one route are not supported yet; put them on different routes",
        );
    }
    RouteTraffic {
        split,
        split_key,
        mirror,
        compression,
        cache,
        retry: r
            .retry
            .as_ref()
            .map(|retry| validate_retry(&format!("{key}.retry"), retry, problems))
            .unwrap_or_default(),
        timeout: r.timeout,
        per_try_timeout: r.per_try_timeout,
        request_headers: r
            .request_headers
            .as_ref()
            .map(|t| {
                super::transform::validate_header_transform(
                    &format!("{key}.request_headers"),
                    t,
                    problems,
                )
            })
            .unwrap_or_default(),
        response_headers: r
            .response_headers
            .as_ref()
            .map(|t| {
                super::transform::validate_header_transform(
                    &format!("{key}.response_headers"),
                    t,
                    problems,
                )
            })
            .unwrap_or_default(),
    }
}

fn validate_route_cache(
    key: &str,
    raw: &super::raw::RawRouteCache,
    problems: &mut Problems,
) -> RouteCache {
    let mut parts = Vec::new();
    for (i, part) in raw.key.iter().enumerate() {
        let parsed = match part.as_str() {
            "method" => Some(CacheKeyPart::Method),
            "host" => Some(CacheKeyPart::Host),
            "path" => Some(CacheKeyPart::Path),
            "query" => Some(CacheKeyPart::Query),
            other => match other.split_once(':') {
                Some(("header", name)) if is_token(name) => {
                    Some(CacheKeyPart::Header(name.to_ascii_lowercase()))
                }
                Some(("cookie", name)) if is_token(name) => {
                    Some(CacheKeyPart::Cookie(name.to_owned()))
                }
                _ => None,
            },
        };
        match parsed {
            Some(p) => parts.push(p),
            None => problems.push(
                format!("{key}.cache.key[{i}]"),
                format!(
                    "unknown key part {part:?}; write method, host, path, query, header:NAME or cookie:NAME"
                ),
            ),
        }
    }
    if !parts.contains(&CacheKeyPart::Path) {
        problems.push(
            format!("{key}.cache.key"),
            "the key must contain the path, or different resources would share answers",
        );
    }
    RouteCache {
        key: parts,
        default_ttl: raw.default_ttl,
        stale_while_revalidate: raw.stale_while_revalidate,
        stale_if_error: raw.stale_if_error,
    }
}

/// Brotli window for response compression (256 KiB): the encoder's memory per response.
const BROTLI_WINDOW: u32 = 18;

fn validate_compression(
    key: &str,
    raw: &super::raw::RawCompression,
    problems: &mut Problems,
) -> CompressionConfig {
    let mut codings = Vec::new();
    for (i, name) in raw.algorithms.iter().enumerate() {
        let coding = match name.as_str() {
            "br" => Coding::Brotli,
            "gzip" => Coding::Gzip,
            _ => {
                problems.push(
                    format!("{key}.algorithms[{i}]"),
                    format!("unknown algorithm {name:?}; write \"br\" or \"gzip\""),
                );
                continue;
            }
        };
        if !codings.contains(&coding) {
            codings.push(coding);
        }
    }
    if raw.algorithms.is_empty() {
        problems.push(format!("{key}.algorithms"), "name at least one algorithm");
    }
    if raw.gzip_level > 9 {
        problems.push(format!("{key}.gzip_level"), "between 0 and 9");
    }
    if raw.brotli_quality > 11 {
        problems.push(format!("{key}.brotli_quality"), "between 0 and 11");
    }
    let mut types = Vec::new();
    for (i, t) in raw.types.iter().enumerate() {
        let lower = t.to_ascii_lowercase();
        let valid = match lower.split_once('/') {
            Some((major, minor)) => is_token(major) && (minor == "*" || is_token(minor)),
            None => false,
        };
        if valid {
            types.push(lower);
        } else {
            problems.push(
                format!("{key}.types[{i}]"),
                format!("invalid media type {t:?}; write \"text/*\" or \"application/json\""),
            );
        }
    }
    CompressionConfig {
        codings,
        min_size: raw.min_size,
        types,
        gzip_level: raw.gzip_level.min(9),
        brotli_quality: raw.brotli_quality.min(11),
        brotli_window: BROTLI_WINDOW,
    }
}

/// The route's `version`.
pub(super) fn validate_version(
    key: &str,
    r: &RawRoute,
    problems: &mut Problems,
) -> Option<VersionConfig> {
    let raw = r.version.as_ref()?;
    let key = format!("{key}.version");
    if raw.value.is_empty()
        || !raw
            .value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.')
    {
        problems.push(
            format!("{key}.value"),
            "letters, digits and dots, e.g. \"2\" or \"2.1\"",
        );
    }
    let header = |text: &str| {
        text.strip_prefix("header:")
            .filter(|name| is_token(name))
            .map(str::to_ascii_lowercase)
    };
    let from = match raw.from.as_str() {
        "path" => VersionSource::Path,
        "accept" => VersionSource::Accept,
        other => match header(other) {
            Some(name) => VersionSource::Header(name),
            None => {
                problems.push(
                    format!("{key}.from"),
                    format!("{other:?}: write \"path\", \"accept\" or \"header:NAME\""),
                );
                return None;
            }
        },
    };
    let to = match raw.to.as_deref() {
        None => VersionTarget::Unchanged,
        Some("path") if from == VersionSource::Path => {
            problems.push(format!("{key}.to"), "the version is already in the path");
            return None;
        }
        Some("path") => VersionTarget::Path,
        Some(other) => match header(other) {
            Some(name) => VersionTarget::Header(name),
            None => {
                problems.push(
                    format!("{key}.to"),
                    format!("{other:?}: write \"path\" or \"header:NAME\""),
                );
                return None;
            }
        },
    };
    let moves_path = to == VersionTarget::Path
        || (from == VersionSource::Path && matches!(to, VersionTarget::Header(_)));
    if moves_path && (r.strip_prefix || r.rewrite.is_some()) {
        problems.push(
            format!("{key}.to"),
            "a version written into or taken out of the path cannot be combined with strip_prefix or rewrite",
        );
    }
    Some(VersionConfig {
        value: raw.value.clone(),
        from,
        to,
    })
}

/// A percentage as basis points.
fn basis_points(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 100.0).round() as u32
}

fn validate_split(
    key: &str,
    r: &RawRoute,
    upstreams: &HashMap<&str, usize>,
    problems: &mut Problems,
) -> (Vec<SplitRule>, Option<HashKey>) {
    let mut flags = Vec::new();
    let mut weighted = Vec::new();
    let mut total = 0.0;
    for (i, s) in r.split.iter().enumerate() {
        let skey = format!("{key}.split[{i}]");
        let Some(&upstream) = upstreams.get(s.upstream.as_str()) else {
            problems.push(
                format!("{skey}.upstream"),
                format!("unknown upstream {:?}", s.upstream),
            );
            continue;
        };
        let choice = match (s.weight, &s.header, &s.cookie, &s.value) {
            (Some(weight), None, None, None) if (0.0..=100.0).contains(&weight) => {
                total += weight;
                SplitChoice::Weight(basis_points(weight))
            }
            (None, Some(name), None, Some(value)) if is_token(name) => {
                SplitChoice::Header(name.to_ascii_lowercase(), value.clone())
            }
            (None, None, Some(name), Some(value)) if is_token(name) => {
                SplitChoice::Cookie(name.clone(), value.clone())
            }
            _ => {
                problems.push(
                    skey,
                    "write { upstream, weight = PERCENT } or { upstream, header|cookie = NAME, value }",
                );
                continue;
            }
        };
        let rule = SplitRule { upstream, choice };
        if matches!(rule.choice, SplitChoice::Weight(_)) {
            weighted.push(rule);
        } else {
            flags.push(rule);
        }
    }
    if total > 100.0 {
        problems.push(
            format!("{key}.split"),
            format!("weights add up to {total}%, more than 100%"),
        );
    }
    let split_key = r.split_key.as_deref().and_then(|text| {
        let parsed = super::validate_route::parse_hash_key(text);
        if parsed.is_none() {
            problems.push(
                format!("{key}.split_key"),
                format!(
                    "invalid key {text:?}; write \"client_ip\", \"header:NAME\" or \"cookie:NAME\""
                ),
            );
        }
        parsed
    });
    flags.extend(weighted);
    (flags, split_key)
}

fn validate_retry(key: &str, raw: &RawRetry, problems: &mut Problems) -> RetryPolicy {
    if !(1..=10).contains(&raw.attempts) {
        problems.push(
            format!("{key}.attempts"),
            "between 1 (no retries) and 10 tries",
        );
    }
    if raw.max_backoff < raw.backoff {
        problems.push(
            format!("{key}.max_backoff"),
            "must be at least the base backoff",
        );
    }
    let mut policy = RetryPolicy {
        attempts: raw.attempts.clamp(1, 10),
        on_connect_failure: false,
        on_reset: false,
        on_timeout: false,
        on_statuses: Vec::new(),
        non_idempotent: raw.non_idempotent,
        backoff: raw.backoff,
        max_backoff: raw.max_backoff,
    };
    for (i, condition) in raw.on.iter().enumerate() {
        match condition.as_str() {
            "connect_failure" => policy.on_connect_failure = true,
            "reset" => policy.on_reset = true,
            "timeout" => policy.on_timeout = true,
            status => match status.parse::<u16>() {
                Ok(code @ 400..=599) => policy.on_statuses.push(code),
                _ => problems.push(
                    format!("{key}.on[{i}]"),
                    format!(
                        "unknown retry condition {condition:?}; write \"connect_failure\", \
                         \"reset\", \"timeout\" or a status such as \"503\""
                    ),
                ),
            },
        }
    }
    policy
}

/// The upstream's `max_connections`, `max_pending` and `retry_budget`.
pub(super) fn validate_circuit(
    key: &str,
    u: &RawUpstream,
    problems: &mut Problems,
) -> RetryBudgetConfig {
    if u.max_connections == Some(0) {
        problems.push(format!("{key}.max_connections"), "must be at least 1");
    }
    let RawRetryBudget {
        ratio,
        min_per_second,
    } = u.retry_budget;
    if !(0.0..=10.0).contains(&ratio) {
        problems.push(
            format!("{key}.retry_budget.ratio"),
            "a share of requests between 0 and 10",
        );
    }
    if !(0.0..=1_000_000.0).contains(&min_per_second) {
        problems.push(
            format!("{key}.retry_budget.min_per_second"),
            "between 0 and 1000000",
        );
    }
    RetryBudgetConfig {
        ratio,
        min_per_second,
    }
}
