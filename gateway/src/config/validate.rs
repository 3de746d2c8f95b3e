//! Turns a [`RawConfig`] into a [`Config`], collecting every problem with its key path.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
};

use super::{
    Config, EdgePolicyConfig, GatewaySettings, Limits, ListenerConfig, Locator, Problem,
    SynGuardConfig, TlsListenerConfig, XdpConfig, XdpMode, XdpOnExit,
    raw::{RawClientAuth, RawConfig, RawTls, RawXdp, RawXdpMode, RawXdpOnExit},
    validate_policy::{validate_auth, validate_consumers, validate_route_policy},
    validate_route::{validate_route, validate_upstream},
};

/// Collects problems as (key path, message) and locates them at the end.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<(String, String)>);

impl Problems {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push((key.into(), message.into()));
    }
}

pub(super) fn parse_and_validate(path: &Path, text: &str) -> Result<Config, Vec<Problem>> {
    let locator = Locator::new(text);
    let raw = match parse_raw(text) {
        Ok(raw) => raw,
        Err((key, message, offset)) => {
            let line = offset
                .map(|o| locator.line_at(o))
                .or_else(|| locator.line_of(&key));
            return Err(vec![Problem {
                file: path.to_owned(),
                line,
                key,
                message,
            }]);
        }
    };
    let mut problems = Problems::default();
    let mut config = validate(path, raw, &mut problems);
    config.text = text.to_owned();
    if problems.0.is_empty() {
        Ok(config)
    } else {
        Err(problems
            .0
            .into_iter()
            .map(|(key, message)| Problem {
                file: path.to_owned(),
                line: locator.line_of(&key),
                key,
                message,
            })
            .collect())
    }
}

/// Deserializes with the key path of the first error, its message and byte offset.
fn parse_raw(text: &str) -> Result<RawConfig, (String, String, Option<usize>)> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| {
        (
            String::new(),
            e.message().to_owned(),
            e.span().map(|s| s.start),
        )
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let inner = e.into_inner();
        // A span that covers the whole document says nothing; locate by key instead.
        let offset = inner.span().filter(|s| s.start > 0).map(|s| s.start);
        (key, inner.message().to_owned(), offset)
    })
}

fn validate(path: &Path, raw: RawConfig, problems: &mut Problems) -> Config {
    let gateway = validate_gateway(path.parent().unwrap_or(Path::new(".")), &raw, problems);
    let limits = validate_limits(&raw, problems);

    if raw.listeners.is_empty() {
        problems.push("listeners", "at least one [[listeners]] entry is required");
    }
    let mut listener_names = HashSet::new();
    let mut binds = HashSet::new();
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if !listener_names.insert(l.name.as_str()) {
            problems.push(
                format!("{key}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        match l.bind.parse::<SocketAddr>() {
            Ok(bind) => {
                if bind.port() != 0 && !binds.insert(bind) {
                    problems.push(format!("{key}.bind"), format!("{bind} is bound twice"));
                }
                let tls = l
                    .tls
                    .as_ref()
                    .and_then(|t| validate_tls(path, &key, t, problems));
                listeners.push(ListenerConfig {
                    name: l.name.clone(),
                    bind,
                    backlog: l.backlog,
                    tls,
                    redirect_to_https: l.redirect_to_https.then_some(l.https_port),
                });
            }
            Err(_) => problems.push(
                format!("{key}.bind"),
                format!(
                    "invalid address {:?}; write e.g. \"0.0.0.0:8080\" or \"[::]:8080\"",
                    l.bind
                ),
            ),
        }
    }

    let mut upstream_index = HashMap::new();
    let mut upstreams = Vec::new();
    for (i, u) in raw.upstreams.iter().enumerate() {
        if upstream_index.insert(u.name.as_str(), i).is_some() {
            problems.push(
                format!("upstreams[{i}].name"),
                format!("duplicate upstream name {:?}", u.name),
            );
        }
        upstreams.push(validate_upstream(
            path.parent().unwrap_or(Path::new(".")),
            i,
            u,
            problems,
        ));
    }

    let dir = path.parent().unwrap_or(Path::new("."));
    let mut auth = validate_auth(dir, &raw.auth, problems);
    let plans = validate_plans(&raw.plans, problems);
    let consumers = validate_consumers(&raw.consumers, &plans, problems);

    let mut route_names = HashSet::new();
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        if !route_names.insert(r.name.as_str()) {
            problems.push(
                format!("routes[{i}].name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        let policy = validate_route_policy(&format!("routes[{i}]"), r, &auth, &consumers, problems);
        if let Some(mut route) = validate_route(i, r, &upstream_index, policy, problems) {
            route.openapi = r.openapi.as_deref().and_then(|file| {
                let loaded = std::fs::read(dir.join(file))
                    .map_err(|e| format!("cannot read {file}: {e}"))
                    .and_then(|bytes| {
                        serde_json::from_slice::<serde_json::Value>(&bytes)
                            .map_err(|e| format!("{file}: not a JSON OpenAPI document: {e}"))
                    });
                match loaded {
                    Ok(doc) if doc.get("openapi").is_some() || doc.get("swagger").is_some() => {
                        Some(std::sync::Arc::new(doc))
                    }
                    Ok(_) => {
                        problems.push(
                            format!("routes[{i}].openapi"),
                            format!("{file} has no \"openapi\" version field"),
                        );
                        None
                    }
                    Err(message) => {
                        problems.push(format!("routes[{i}].openapi"), message);
                        None
                    }
                }
            });
            route.mediation = super::validate_mediation::validate_mediation(
                dir,
                &format!("routes[{i}]"),
                r,
                &route,
                &upstream_index,
                problems,
            )
            .map(std::sync::Arc::new);
            routes.push(route);
        }
    }
    // Claims that limits are keyed on or routes require are copied into identities too.
    for route in &routes {
        let limit_claim = match &route.policy.rate_limit {
            Some(crate::ratelimit::LimitSpec {
                key: crate::ratelimit::LimitKey::Claim(claim),
                ..
            }) => Some(claim),
            _ => None,
        };
        for claim in limit_claim
            .into_iter()
            .chain(route.policy.claims.iter().map(|(c, _)| c))
            .chain(route.traffic.request_headers.claims())
            .chain(route.traffic.response_headers.claims())
        {
            let selections = auth
                .jwt
                .iter_mut()
                .map(|p| &mut p.verifier.selected_claims)
                .chain(
                    auth.introspection
                        .iter_mut()
                        .map(|p| &mut p.introspector.selected_claims),
                );
            for selected in selections {
                if !selected.contains(claim) {
                    selected.push(claim.clone());
                }
            }
        }
    }

    let edge = raw
        .xdp
        .as_ref()
        .map(|x| validate_edge(x, problems))
        .unwrap_or_default();
    let xdp = raw.xdp.as_ref().map(|x| {
        let tunnels = super::validate_l4::tunnel_sources(x, problems);
        if x.interface
            .as_deref()
            .is_some_and(|s| s.is_empty() || s.len() >= 16)
        {
            problems.push("xdp.interface", "an interface name has 1 to 15 characters");
        }
        if !x.pin_path.is_absolute() {
            problems.push(
                "xdp.pin_path",
                "must be an absolute path on a bpf filesystem",
            );
        }
        XdpConfig {
            interface: x.interface.clone(),
            mode: match x.mode {
                RawXdpMode::Driver => XdpMode::Driver,
                RawXdpMode::Skb => XdpMode::Skb,
            },
            pin_path: x.pin_path.clone(),
            on_exit: match x.on_exit {
                RawXdpOnExit::Detach => XdpOnExit::Detach,
                RawXdpOnExit::Keep => XdpOnExit::Keep,
            },
            tunnel_source_v4: tunnels.0,
            tunnel_source_v6: tunnels.1,
            l4_remembered_flows_per_cpu: x.l4_remembered_flows_per_cpu,
        }
    });

    let access_log = raw.access_log.as_ref().map(|log| {
        use crate::observe::access_log::{AccessLogConfig, FIELDS, LogTarget};
        let mut fields = 0u32;
        match &log.fields {
            None => fields = (1 << FIELDS.len()) - 1,
            Some(list) => {
                for (f, name) in list.iter().enumerate() {
                    match FIELDS.iter().position(|known| known == name) {
                        Some(bit) => fields |= 1 << bit,
                        None => problems.push(
                            format!("access_log.fields[{f}]"),
                            format!("unknown field {name:?}; known: {}", FIELDS.join(", ")),
                        ),
                    }
                }
            }
        }
        let target = if log.path == "stderr" {
            LogTarget::Stderr
        } else {
            LogTarget::File(path.parent().unwrap_or(Path::new(".")).join(&log.path))
        };
        AccessLogConfig { target, fields }
    });

    Config {
        source: path.to_owned(),
        text: String::new(),
        access_log,
        gateway,
        limits,
        listeners,
        upstreams,
        routes,
        xdp,
        edge,
        auth,
        consumers,
        cache: crate::config::CacheSettings {
            max_size: raw.cache.max_size,
            max_entry_size: raw.cache.max_entry_size,
        },
        webhooks: validate_webhooks(dir, &raw.webhooks, problems),
        l4_services: super::validate_l4::validate_l4_services(
            &raw.l4_services,
            raw.xdp.as_ref(),
            problems,
        ),
        metering: {
            if raw.metering.flush_interval.is_zero() {
                problems.push("metering.flush_interval", "must be greater than zero");
            }
            crate::config::MeteringConfig {
                path: raw.metering.path.as_ref().map(|p| dir.join(p)),
                flush_interval: raw.metering.flush_interval,
            }
        },
    }
}

/// `[[webhooks]]`: reachable URLs, a secret, known event types, sane retries.
fn validate_webhooks(
    dir: &Path,
    raw: &[super::raw::RawWebhook],
    problems: &mut Problems,
) -> Vec<crate::webhooks::WebhookConfig> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let key = format!("webhooks[{i}]");
        if w.name.is_empty() || !names.insert(w.name.as_str()) {
            problems.push(
                format!("{key}.name"),
                format!("empty or duplicate webhook name {:?}", w.name),
            );
        }
        let url = match url::Url::parse(&w.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                Some(url)
            }
            _ => {
                problems.push(
                    format!("{key}.url"),
                    format!("{:?}: write an http:// or https:// URL", w.url),
                );
                None
            }
        };
        if w.secret.len() < 16 {
            problems.push(
                format!("{key}.secret"),
                "use a secret of at least 16 characters",
            );
        }
        for (e, event) in w.events.iter().enumerate() {
            if !crate::webhooks::Event::KINDS.contains(&event.as_str()) {
                problems.push(
                    format!("{key}.events[{e}]"),
                    format!(
                        "unknown event {event:?}; known: {}",
                        crate::webhooks::Event::KINDS.join(", ")
                    ),
                );
            }
        }
        if !(1..=20).contains(&w.max_attempts) {
            problems.push(format!("{key}.max_attempts"), "must be between 1 and 20");
        }
        if w.timeout.is_zero() {
            problems.push(format!("{key}.timeout"), "must be greater than zero");
        }
        if let Some(url) = url {
            out.push(crate::webhooks::WebhookConfig {
                name: w.name.clone(),
                url,
                secret: w.secret.clone(),
                events: w.events.clone(),
                timeout: w.timeout,
                max_attempts: w.max_attempts,
                retry_backoff: w.retry_backoff,
                ca_file: w.ca_file.as_ref().map(|f| dir.join(f)),
            });
        }
    }
    out
}

/// `[[plans]]`: unique names and positive quotas.
fn validate_plans(raw: &[super::raw::RawPlan], problems: &mut Problems) -> Vec<super::PlanConfig> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let key = format!("plans[{i}]");
        if p.name.is_empty() || !names.insert(p.name.as_str()) {
            problems.push(
                format!("{key}.name"),
                format!("empty or duplicate plan name {:?}", p.name),
            );
        }
        for (field, value) in [
            ("requests_per_day", p.requests_per_day),
            ("requests_per_month", p.requests_per_month),
        ] {
            if value == Some(0) {
                problems.push(
                    format!("{key}.{field}"),
                    "must be at least 1 (leave it out for no quota)",
                );
            }
        }
        out.push(super::PlanConfig {
            name: p.name.clone(),
            quota: crate::metering::Quota {
                per_day: p.requests_per_day,
                per_month: p.requests_per_month,
            },
        });
    }
    out
}

fn validate_gateway(dir: &Path, raw: &RawConfig, problems: &mut Problems) -> GatewaySettings {
    let g = &raw.gateway;
    let admin = g
        .admin
        .as_deref()
        .and_then(|text| match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.push(
                    "gateway.admin",
                    format!("invalid address {text:?}; write e.g. \"127.0.0.1:9901\""),
                );
                None
            }
        });
    let admin_token = match std::env::var("GATEWAY_ADMIN_TOKEN") {
        Ok(token) if !token.is_empty() => Some(token),
        _ => g.admin_token_file.as_deref().and_then(|file| {
            match std::fs::read_to_string(dir.join(file)) {
                Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                Ok(_) => {
                    problems.push("gateway.admin_token_file", format!("{file} is empty"));
                    None
                }
                Err(e) => {
                    problems.push(
                        "gateway.admin_token_file",
                        format!("cannot read {file}: {e}"),
                    );
                    None
                }
            }
        }),
    }
    .map(super::Secret);
    if g.workers > 1024 {
        problems.push("gateway.workers", "at most 1024 workers");
    }
    let mut trusted_proxies = Vec::new();
    for (i, cidr) in g.trusted_proxies.iter().enumerate() {
        match parse_cidr(cidr) {
            Some(net) => trusted_proxies.push(net),
            None => problems.push(
                format!("gateway.trusted_proxies[{i}]"),
                format!("invalid address or CIDR {cidr:?}"),
            ),
        }
    }
    let steer_by_client = match g.worker_steering.as_str() {
        "client_ip" => true,
        "kernel" => false,
        other => {
            problems.push(
                "gateway.worker_steering",
                format!("{other:?}: use client_ip or kernel"),
            );
            false
        }
    };
    if !(1.0..=100.0).contains(&g.steering_overload) {
        problems.push("gateway.steering_overload", "must be between 1.0 and 100.0");
    }
    if !is_token(&g.via) {
        problems.push("gateway.via", "must be a single token such as \"gateway\"");
    }
    GatewaySettings {
        workers: g.workers,
        log_level: g.log_level.clone(),
        drain_timeout: g.drain_timeout,
        trusted_proxies,
        via: g.via.clone(),
        rate_limit_keys: g.rate_limit_keys,
        admin,
        admin_token,
        audit_log: g.audit_log.as_deref().map(|f| dir.join(f)),
        upgrade_socket: g.upgrade_socket.as_deref().map(|f| dir.join(f)),
        steer_by_client,
        steering_overload_percent: (g.steering_overload * 100.0) as u32,
        debug_worker_header: g.debug_worker_header,
    }
}

/// Loads a listener's certificates; paths are relative to the config file's folder.
fn validate_tls(
    config_path: &Path,
    key: &str,
    raw: &RawTls,
    problems: &mut Problems,
) -> Option<TlsListenerConfig> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut pairs: Vec<(String, &str, &str, Option<&str>)> = Vec::new();
    match (&raw.cert, &raw.key) {
        (Some(cert), Some(k)) => pairs.push((format!("{key}.tls"), cert, k, None)),
        (None, None) => {}
        _ => problems.push(format!("{key}.tls"), "cert and key go together"),
    }
    for (i, c) in raw.certificates.iter().enumerate() {
        pairs.push((
            format!("{key}.tls.certificates[{i}]"),
            &c.cert,
            &c.key,
            c.ocsp.as_deref(),
        ));
    }
    if pairs.is_empty() {
        problems.push(
            format!("{key}.tls"),
            "a TLS listener needs cert and key, or certificates",
        );
        return None;
    }
    let mut certificates = Vec::new();
    for (pair_key, cert, k, ocsp) in pairs {
        match crate::tls::load_certificate(&base.join(cert), &base.join(k)) {
            Ok(mut loaded) => {
                if let Some(ocsp) = ocsp {
                    match std::fs::read(base.join(ocsp)) {
                        Ok(response) if !response.is_empty() => loaded.staple_ocsp(response),
                        Ok(_) => problems.push(
                            format!("{pair_key}.ocsp"),
                            format!("{ocsp}: empty OCSP response"),
                        ),
                        Err(e) => problems.push(
                            format!("{pair_key}.ocsp"),
                            format!("cannot read {ocsp}: {e}"),
                        ),
                    }
                }
                certificates.push(loaded)
            }
            Err(error) => {
                let field = if matches!(
                    error,
                    crate::tls::TlsError::KeyMismatch { .. } | crate::tls::TlsError::NoKey { .. }
                ) || matches!(&error, crate::tls::TlsError::Read { path, .. } if path.ends_with(k))
                {
                    "key"
                } else {
                    "cert"
                };
                problems.push(format!("{pair_key}.{field}"), error.to_string());
            }
        }
    }
    if raw.handshake_timeout.is_zero() {
        problems.push(
            format!("{key}.tls.handshake_timeout"),
            "must be greater than zero",
        );
    }
    let hsts = raw.hsts_max_age.map(|age| {
        let sub = if raw.hsts_include_subdomains {
            "; includeSubDomains"
        } else {
            ""
        };
        format!("max-age={}{sub}", age.as_secs())
    });
    let client_auth = match (raw.client_auth, raw.client_ca.as_deref()) {
        (RawClientAuth::None, None) => None,
        (RawClientAuth::None, Some(_)) => {
            problems.push(
                format!("{key}.tls.client_ca"),
                "client_ca without client_auth = \"optional\" or \"required\"",
            );
            None
        }
        (_, None) => {
            problems.push(
                format!("{key}.tls.client_ca"),
                "client_auth needs client_ca: the CAs client certificates must chain to",
            );
            None
        }
        (mode, Some(ca)) => match crate::tls::load_roots(&base.join(ca)) {
            Ok(roots) => Some(crate::tls::ClientAuth {
                required: mode == RawClientAuth::Required,
                roots: std::sync::Arc::new(roots),
            }),
            Err(error) => {
                problems.push(format!("{key}.tls.client_ca"), error.to_string());
                None
            }
        },
    };
    Some(TlsListenerConfig {
        certificates,
        sni_required: raw.sni_required,
        handshake_timeout: raw.handshake_timeout,
        hsts,
        client_auth,
    })
}

fn validate_edge(x: &RawXdp, problems: &mut Problems) -> EdgePolicyConfig {
    let mut list = |key: &str, entries: &[String]| {
        let mut nets = Vec::new();
        for (i, text) in entries.iter().enumerate() {
            match parse_cidr(text) {
                Some(net) if net.trunc() != net => problems.push(
                    format!("xdp.{key}[{i}]"),
                    format!(
                        "{text:?} has host bits set; did you mean \"{}\"?",
                        net.trunc()
                    ),
                ),
                Some(net) => nets.push(net),
                None => problems.push(
                    format!("xdp.{key}[{i}]"),
                    format!("invalid address or CIDR {text:?}"),
                ),
            }
        }
        for v6 in [false, true] {
            let count = nets
                .iter()
                .filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6)
                .count();
            if count > gateway_common::MAX_LIST_ENTRIES as usize {
                problems.push(
                    format!("xdp.{key}"),
                    format!(
                        "at most {} entries per address family",
                        gateway_common::MAX_LIST_ENTRIES
                    ),
                );
            }
        }
        nets
    };
    let deny = list("deny", &x.deny);
    let allow = list("allow", &x.allow);
    let syn_guard = x.syn_guard.as_ref().map(|g| {
        if g.rate == 0 || g.burst == 0 {
            problems.push("xdp.syn_guard", "rate and burst must be at least 1");
        }
        SynGuardConfig {
            rate_per_sec: g.rate,
            burst: g.burst,
        }
    });
    let ban = x.ban.as_ref().map(|b| {
        if b.threshold == 0 || b.window.is_zero() || b.duration.is_zero() {
            problems.push(
                "xdp.ban",
                "threshold, window and duration must be above zero",
            );
        }
        if let Some(bad) = b.statuses.iter().find(|s| !(400..600).contains(*s)) {
            problems.push(
                "xdp.ban.statuses",
                format!("{bad} is not an error status (400-599)"),
            );
        }
        super::BanPolicy {
            statuses: b.statuses.clone(),
            threshold: b.threshold,
            window: b.window,
            duration: b.duration,
        }
    });
    EdgePolicyConfig {
        deny,
        allow,
        protect_all: x.protect_all,
        syn_guard,
        ban,
    }
}

/// Accepts `10.0.0.0/8` or a bare address (a /32 or /128).
pub(super) fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn validate_limits(raw: &RawConfig, problems: &mut Problems) -> Limits {
    let l = &raw.limits;
    if !(1..=crate::http::MAX_HEADERS_CEILING).contains(&l.max_headers) {
        problems.push(
            "limits.max_headers",
            format!("must be between 1 and {}", crate::http::MAX_HEADERS_CEILING),
        );
    }
    if !(1024..=1024 * 1024).contains(&l.max_head_size) {
        problems.push("limits.max_head_size", "must be between 1KiB and 1MiB");
    }
    if l.max_uri_length < 16 || l.max_uri_length > l.max_head_size {
        problems.push(
            "limits.max_uri_length",
            "must be at least 16 bytes and at most max_head_size",
        );
    }
    for (key, value) in [
        ("limits.header_read_timeout", l.header_read_timeout),
        ("limits.idle_timeout", l.idle_timeout),
        ("limits.body_read_timeout", l.body_read_timeout),
        ("limits.websocket_idle_timeout", l.websocket_idle_timeout),
    ] {
        if value.is_zero() {
            problems.push(key, "must be greater than zero");
        }
    }
    Limits {
        max_head_size: l.max_head_size as usize,
        max_headers: l.max_headers,
        max_uri_length: l.max_uri_length as usize,
        max_body_size: l.max_body_size,
        header_read_timeout: l.header_read_timeout,
        idle_timeout: l.idle_timeout,
        body_read_timeout: l.body_read_timeout,
        websocket_idle_timeout: l.websocket_idle_timeout,
        discard_body_max: l.discard_body_max,
    }
}

/// RFC 9110 token.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(crate::http::is_tchar)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const BASE: &str = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ { addr = \"127.0.0.1:9000\" } ]\n";

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(Path::new("t.toml"), text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn the_base_config_is_valid() {
        assert_eq!(
            problems(&format!(
                "{BASE}[[routes]]\nname = \"r\"\nupstream = \"u\"\n"
            )),
            Vec::<String>::new()
        );
    }

    /// Every validation rule, each with a config that breaks it and the key it must name.
    #[test]
    fn every_rule_rejects_with_its_key() {
        let route =
            |body: &str| format!("{BASE}[[routes]]\nname = \"r\"\nupstream = \"u\"\n{body}\n");
        let cases: Vec<(String, &str)> = vec![
            (
                "[gateway]\nworkers = 5000\n".to_owned() + BASE,
                "gateway.workers",
            ),
            (
                "[gateway]\ntrusted_proxies = [\"10.0.0.0/33\"]\n".to_owned() + BASE,
                "gateway.trusted_proxies[0]",
            ),
            (
                "[gateway]\nvia = \"two words\"\n".to_owned() + BASE,
                "gateway.via",
            ),
            (
                "[limits]\nmax_headers = 0\n".to_owned() + BASE,
                "limits.max_headers",
            ),
            (
                "[limits]\nmax_headers = 300\n".to_owned() + BASE,
                "limits.max_headers",
            ),
            (
                "[limits]\nmax_head_size = 100\n".to_owned() + BASE,
                "limits.max_head_size",
            ),
            (
                "[limits]\nmax_uri_length = 8\n".to_owned() + BASE,
                "limits.max_uri_length",
            ),
            (
                "[limits]\nidle_timeout = \"0s\"\n".to_owned() + BASE,
                "limits.idle_timeout",
            ),
            (
                "[[upstreams]]\nname = \"u\"\ntargets = [ { addr = \"127.0.0.1:1\" } ]\n"
                    .to_owned(),
                "listeners",
            ),
            (
                BASE.to_owned() + "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n",
                "listeners[1].name",
            ),
            (
                BASE.replace("127.0.0.1:0", "127.0.0.1:80")
                    + "[[listeners]]\nname = \"m\"\nbind = \"127.0.0.1:80\"\n",
                "listeners[1].bind",
            ),
            (
                BASE.replace("127.0.0.1:0", "localhost:80"),
                "listeners[0].bind",
            ),
            (
                BASE.to_owned()
                    + "[[upstreams]]\nname = \"u\"\ntargets = [ { addr = \"127.0.0.1:1\" } ]\n",
                "upstreams[1].name",
            ),
            (
                BASE.to_owned() + "[[upstreams]]\nname = \"v\"\n",
                "upstreams[1].targets",
            ),
            (
                BASE.replace("127.0.0.1:9000\" }", "127.0.0.1:9000\", weight = 0 }"),
                "upstreams[0].targets[0].weight",
            ),
            (
                BASE.replace("127.0.0.1:9000", "backend:9000"),
                "upstreams[0].targets[0].addr",
            ),
            (
                BASE.replace("127.0.0.1:9000", "127.0.0.1:0"),
                "upstreams[0].targets[0].addr",
            ),
            (
                BASE.to_owned() + "balance = \"consistent_hash\"\n",
                "upstreams[0].hash_key",
            ),
            (
                BASE.to_owned() + "balance = \"consistent_hash\"\nhash_key = \"body\"\n",
                "upstreams[0].hash_key",
            ),
            (
                BASE.to_owned() + "hash_key = \"client_ip\"\n",
                "upstreams[0].hash_key",
            ),
            (
                BASE.to_owned() + "connect_timeout = \"0ms\"\n",
                "upstreams[0]",
            ),
            (
                route("upstream = \"x\"")
                    .replace("upstream = \"u\"\nupstream = \"x\"", "upstream = \"x\""),
                "routes[0].upstream",
            ),
            (
                route("") + "[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
                "routes[1].name",
            ),
            (route("host = \"bad host\""), "routes[0].host"),
            (route("host = \"*.\""), "routes[0].host"),
            (
                route("path = \"/a\"\npath_prefix = \"/b\""),
                "routes[0].path",
            ),
            (route("path = \"a\""), "routes[0].path"),
            (route("path_prefix = \"/a/../b\""), "routes[0].path_prefix"),
            (route("path_regex = \"(\""), "routes[0].path_regex"),
            (route("methods = [\"get\"]"), "routes[0].methods[0]"),
            (
                route("headers = [ { name = \"x\" } ]"),
                "routes[0].headers[0]",
            ),
            (
                route("headers = [ { name = \"x\", value = \"1\", present = true } ]"),
                "routes[0].headers[0]",
            ),
            (
                route("headers = [ { name = \"bad name\", value = \"1\" } ]"),
                "routes[0].headers[0].name",
            ),
            (
                route("query = [ { name = \"q\", regex = \"[\" } ]"),
                "routes[0].query[0].regex",
            ),
            (route("strip_prefix = true"), "routes[0].strip_prefix"),
            (
                route("path_prefix = \"/a\"\nstrip_prefix = true\nrewrite = \"/b\""),
                "routes[0].rewrite",
            ),
            (
                route("path_prefix = \"/a\"\nrewrite = \"b\""),
                "routes[0].rewrite",
            ),
            (
                BASE.to_owned() + "[xdp]\ninterface = \"an-interface-name-too-long\"\n",
                "xdp.interface",
            ),
            (BASE.to_owned() + "[xdp]\nmode = \"hardware\"\n", "xdp.mode"),
            (BASE.to_owned() + "[gateway]\nadmin_typo = 1\n", "gateway"),
        ];
        for (text, key) in cases {
            let found = problems(&text);
            assert!(
                found.iter().any(|p| p.contains(&format!(": {key}: "))
                    || p.contains(&format!(": {key}."))
                    || (p.contains(&format!(": {key}")) && key == "gateway")),
                "expected a problem at {key:?} for\n{text}\ngot {found:#?}"
            );
            assert!(
                found.iter().all(|p| p.starts_with("t.toml:")),
                "every problem names file and line: {found:#?}"
            );
        }
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = format!(
            "{BASE}[[routes]]\nname = \"a\"\nupstream = \"nope\"\n\n[[routes]]\nname = \"b\"\nupstream = \"u\"\nmethods = [\"x\"]\n"
        );
        let found = problems(&text);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].starts_with("t.toml:10: routes[0].upstream"),
            "{found:#?}"
        );
        assert!(
            found[1].starts_with("t.toml:15: routes[1].methods[0]"),
            "{found:#?}"
        );
    }
}
