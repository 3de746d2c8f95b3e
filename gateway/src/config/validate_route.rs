//! Validation of `[[upstreams]]` (targets, balancing, health, TLS) and `[[routes]]`
//! (matchers and rewrites; policy and traffic settings have their own modules).

use std::{collections::HashMap, net::SocketAddr, path::Path};

use regex::bytes::Regex;

use super::{
    Balance, HashKey, HostMatch, PathMatch, RouteConfig, TargetConfig, UpstreamConfig,
    ValueCondition, ValueMatch,
    raw::{RawBalance, RawMatcher, RawRoute, RawUpstream},
    validate::{Problems, is_token},
};

pub(super) fn validate_upstream(
    base: &Path,
    i: usize,
    u: &RawUpstream,
    problems: &mut Problems,
) -> UpstreamConfig {
    let key = format!("upstreams[{i}]");
    if u.targets.is_empty() {
        problems.push(format!("{key}.targets"), "at least one target is required");
    }
    if u.max_in_flight == Some(0) {
        problems.push(format!("{key}.max_in_flight"), "must be at least 1");
    }
    let mut targets = Vec::new();
    for (t, target) in u.targets.iter().enumerate() {
        let tkey = format!("{key}.targets[{t}]");
        if !(1..=10_000).contains(&target.weight) {
            problems.push(format!("{tkey}.weight"), "must be between 1 and 10000");
        }
        match target.addr.parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => targets.push(TargetConfig {
                addr,
                weight: target.weight,
            }),
            _ => problems.push(
                format!("{tkey}.addr"),
                format!(
                    "invalid address {:?}; write IP:PORT such as \"10.0.0.5:8080\"",
                    target.addr
                ),
            ),
        }
    }
    let balance = match (u.balance, &u.hash_key) {
        (RawBalance::ConsistentHash, Some(hash_key)) => match parse_hash_key(hash_key) {
            Some(k) => Balance::ConsistentHash(k),
            None => {
                problems.push(
                    format!("{key}.hash_key"),
                    format!("invalid hash key {hash_key:?}; write \"header:NAME\", \"cookie:NAME\" or \"client_ip\""),
                );
                Balance::RoundRobin
            }
        },
        (RawBalance::ConsistentHash, None) => {
            problems.push(
                format!("{key}.hash_key"),
                "consistent_hash needs a hash_key",
            );
            Balance::RoundRobin
        }
        (_, Some(_)) => {
            problems.push(
                format!("{key}.hash_key"),
                "hash_key only applies to balance = \"consistent_hash\"",
            );
            Balance::RoundRobin
        }
        (RawBalance::RoundRobin | RawBalance::Weighted, None) => Balance::RoundRobin,
        (RawBalance::LeastConn, None) => Balance::LeastConn,
        (RawBalance::P2cEwma, None) => Balance::P2cEwma,
    };
    if u.connect_timeout.is_zero() || u.read_timeout.is_zero() || u.write_timeout.is_zero() {
        problems.push(key.clone(), "upstream timeouts must be greater than zero");
    }
    UpstreamConfig {
        name: u.name.clone(),
        balance,
        targets,
        connect_timeout: u.connect_timeout,
        read_timeout: u.read_timeout,
        write_timeout: u.write_timeout,
        max_idle_per_target: u.max_idle_per_target,
        max_in_flight: u.max_in_flight,
        max_connections: u.max_connections,
        max_pending: u.max_pending,
        retry_budget: super::validate_traffic::validate_circuit(&key, u, problems),
        health_check: u.health_check.as_ref().map(|h| {
            if h.port.is_some() {
                problems.push(
                    format!("{key}.health_check.port"),
                    "upstream targets are probed on their own port; port is for [[l4_services]]",
                );
            }
            health_check(&format!("{key}.health_check"), h, problems)
        }),
        outlier: u.outlier.as_ref().map(|o| {
            if o.consecutive_failures == 0 || o.base_ejection.is_zero() {
                problems.push(
                    format!("{key}.outlier"),
                    "consecutive_failures and base_ejection must be above zero",
                );
            }
            crate::config::OutlierConfig {
                consecutive_failures: o.consecutive_failures,
                base_ejection: o.base_ejection,
                max_ejection: o.max_ejection.max(o.base_ejection),
            }
        }),
        panic_threshold: if (0.0..=1.0).contains(&u.panic_threshold) {
            u.panic_threshold
        } else {
            problems.push(format!("{key}.panic_threshold"), "a share between 0 and 1");
            0.5
        },
        idle_timeout: u.idle_timeout,
        tls: validate_upstream_tls(base, &key, u, problems),
    }
}

fn validate_upstream_tls(
    base: &Path,
    key: &str,
    u: &RawUpstream,
    problems: &mut Problems,
) -> Option<crate::tls::UpstreamTls> {
    if !u.tls {
        if u.tls_server_name.is_some() || u.tls_ca.is_some() || u.tls_insecure_skip_verify {
            problems.push(format!("{key}.tls"), "tls_* settings need tls = true");
        }
        return None;
    }
    let server_name = match u
        .tls_server_name
        .as_deref()
        .map(|n| rustls::pki_types::ServerName::try_from(n.to_owned()))
    {
        None => None,
        Some(Ok(name)) => Some(name),
        Some(Err(e)) => {
            problems.push(
                format!("{key}.tls_server_name"),
                format!("invalid server name: {e}"),
            );
            return None;
        }
    };
    let ca = u.tls_ca.as_deref().map(|ca| base.join(ca));
    match crate::tls::client_config(ca.as_deref(), u.tls_insecure_skip_verify) {
        Ok(config) => Some(crate::tls::UpstreamTls {
            config,
            server_name,
            insecure_skip_verify: u.tls_insecure_skip_verify,
        }),
        Err(error) => {
            problems.push(format!("{key}.tls_ca"), error.to_string());
            None
        }
    }
}

pub(super) fn parse_hash_key(text: &str) -> Option<HashKey> {
    match text.split_once(':') {
        Some(("header", name)) if is_token(name) => {
            Some(HashKey::Header(name.to_ascii_lowercase()))
        }
        Some(("cookie", name)) if is_token(name) => Some(HashKey::Cookie(name.to_owned())),
        None if text == "client_ip" => Some(HashKey::ClientIp),
        _ => None,
    }
}

pub(super) fn validate_route(
    i: usize,
    r: &RawRoute,
    upstreams: &HashMap<&str, usize>,
    policy: super::RoutePolicy,
    problems: &mut Problems,
) -> Option<RouteConfig> {
    let key = format!("routes[{i}]");
    let before = problems.0.len();
    let upstream = upstreams.get(r.upstream.as_str()).copied();
    if upstream.is_none() {
        problems.push(
            format!("{key}.upstream"),
            format!("unknown upstream {:?}", r.upstream),
        );
    }
    let host = r.host.as_deref().and_then(|h| {
        let h = h.to_ascii_lowercase();
        let (suffix, bare) = match h.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, h.clone()),
        };
        let valid = !bare.is_empty()
            && bare.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            problems.push(
                format!("{key}.host"),
                format!("invalid host {h:?}; write \"api.example.com\" or \"*.example.com\""),
            );
            return None;
        }
        Some(if suffix {
            HostMatch::Suffix(format!(".{bare}"))
        } else {
            HostMatch::Exact(bare)
        })
    });

    let path_kinds = [
        r.path.is_some(),
        r.path_prefix.is_some(),
        r.path_regex.is_some(),
    ];
    let path = match (&r.path, &r.path_prefix, &r.path_regex) {
        _ if path_kinds.iter().filter(|k| **k).count() > 1 => {
            problems.push(
                format!("{key}.path"),
                "set only one of path, path_prefix and path_regex",
            );
            None
        }
        (Some(p), _, _) if p.contains('{') => path_template(&format!("{key}.path"), p, problems),
        (Some(p), _, _) => {
            check_path(&format!("{key}.path"), p, problems).then(|| PathMatch::Exact(p.clone()))
        }
        (_, Some(p), _) => check_path(&format!("{key}.path_prefix"), p, problems)
            .then(|| PathMatch::Prefix(p.clone())),
        (_, _, Some(re)) => {
            compile_regex(&format!("{key}.path_regex"), re, problems).map(PathMatch::Regex)
        }
        (None, None, None) => Some(PathMatch::Prefix("/".to_owned())),
    };

    let mut methods = Vec::new();
    for (m, method) in r.methods.iter().flatten().enumerate() {
        if method.is_empty()
            || !method
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        {
            problems.push(
                format!("{key}.methods[{m}]"),
                format!("invalid method {method:?}; write it upper-case, e.g. \"GET\""),
            );
        } else {
            methods.push(method.clone());
        }
    }
    let headers = validate_matchers(&format!("{key}.headers"), &r.headers, true, problems);
    let query = validate_matchers(&format!("{key}.query"), &r.query, false, problems);
    let client_cert = validate_matchers(
        &format!("{key}.client_cert"),
        &r.client_cert,
        false,
        problems,
    );
    for (i, m) in client_cert.iter().enumerate() {
        if m.name != "subject" && m.name != "san" {
            problems.push(
                format!("{key}.client_cert[{i}].name"),
                format!(
                    "{:?}: a client_cert condition names \"subject\" or \"san\"",
                    m.name
                ),
            );
        }
    }

    if r.strip_prefix && r.path_prefix.is_none() {
        problems.push(
            format!("{key}.strip_prefix"),
            "strip_prefix needs path_prefix",
        );
    }
    if r.strip_prefix && r.rewrite.is_some() {
        problems.push(
            format!("{key}.rewrite"),
            "set either rewrite or strip_prefix, not both",
        );
    }
    if let Some(rewrite) = &r.rewrite {
        check_path(&format!("{key}.rewrite"), rewrite, problems);
    }
    if problems.0.len() != before {
        return None;
    }
    Some(RouteConfig {
        name: r.name.clone(),
        host,
        path: path?,
        methods,
        headers,
        query,
        client_cert,
        websocket: r.websocket,
        version: super::validate_traffic::validate_version(&key, r, problems),
        upstream: upstream?,
        strip_prefix: r.strip_prefix,
        rewrite: r.rewrite.clone(),
        policy,
        traffic: super::validate_traffic::validate_route_traffic(&key, r, upstreams, problems),
        openapi: None,
        mediation: None,
    })
}

/// A configured path must be in the normalized form requests are matched in.
pub(super) fn check_path(key: &str, path: &str, problems: &mut Problems) -> bool {
    let ok = path.starts_with('/')
        && crate::http::target::normalize_path(path.as_bytes()).is_ok_and(|n| n == path.as_bytes());
    if !ok {
        problems.push(
            key,
            format!(
                "{path:?} must start with '/' and be normalized (no dot segments, no '//', no %2F)"
            ),
        );
    }
    ok
}

/// `path = "/users/{id}"`: a path whose `{name}` segments match one segment each and
/// are captured by name (for translations' parameters).
fn path_template(key: &str, template: &str, problems: &mut Problems) -> Option<PathMatch> {
    let mut literal = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            problems.push(key, "an unclosed { in the path template");
            return None;
        };
        let name = &rest[open + 1..open + close];
        let segment_start = open == 0 || rest[..open].ends_with('/');
        let segment_end =
            rest[open + close + 1..].is_empty() || rest[open + close + 1..].starts_with('/');
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(
                key,
                format!("{{{name}}}: a template parameter is a name of letters, digits and _"),
            );
            return None;
        }
        if !(segment_start && segment_end) {
            problems.push(key, format!("{{{name}}} must be a whole path segment"));
            return None;
        }
        literal.push_str(&rest[..open]);
        literal.push('x');
        rest = &rest[open + close + 1..];
    }
    literal.push_str(rest);
    if !check_path(key, &literal, problems) {
        return None;
    }
    compile_regex(
        key,
        &crate::mediate::schema::template_pattern(template),
        problems,
    )
    .map(PathMatch::Regex)
}

pub(super) fn compile_regex(key: &str, pattern: &str, problems: &mut Problems) -> Option<Regex> {
    // Anchored so a route never matches on a substring by accident.
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| problems.push(key, format!("invalid regex: {e}")))
        .ok()
}

pub(super) fn validate_matchers(
    key: &str,
    raw: &[RawMatcher],
    header: bool,
    problems: &mut Problems,
) -> Vec<ValueMatch> {
    let mut out = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        let mkey = format!("{key}[{i}]");
        if header && !is_token(&m.name) || m.name.is_empty() {
            problems.push(format!("{mkey}.name"), format!("invalid name {:?}", m.name));
            continue;
        }
        let condition = match (&m.value, &m.regex, m.present) {
            (Some(v), None, None) => ValueCondition::Exact(v.clone()),
            (None, Some(re), None) => match compile_regex(&format!("{mkey}.regex"), re, problems) {
                Some(re) => ValueCondition::Regex(re),
                None => continue,
            },
            (None, None, Some(p)) => ValueCondition::Present(p),
            _ => {
                problems.push(mkey, "set exactly one of value, regex and present");
                continue;
            }
        };
        let name = if header {
            m.name.to_ascii_lowercase()
        } else {
            m.name.clone()
        };
        out.push(ValueMatch { name, condition });
    }
    out
}

/// The probe settings of a `health_check = { … }` table (upstreams and L4 services).
pub(super) fn health_check(
    key: &str,
    h: &super::raw::RawHealthCheck,
    problems: &mut Problems,
) -> crate::config::HealthCheckConfig {
    if let Some(path) = &h.path {
        check_path(&format!("{key}.path"), path, problems);
    }
    if h.interval.is_zero() || h.timeout.is_zero() || h.healthy == 0 || h.unhealthy == 0 {
        problems.push(
            key,
            "interval, timeout, healthy and unhealthy must be above zero",
        );
    }
    crate::config::HealthCheckConfig {
        path: h.path.clone(),
        host: h.host.clone(),
        expect: h.expect.clone(),
        interval: h.interval,
        timeout: h.timeout,
        healthy: h.healthy,
        unhealthy: h.unhealthy,
    }
}
