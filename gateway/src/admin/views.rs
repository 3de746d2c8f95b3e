//! The JSON views the admin endpoints return, built from the running snapshot.

use std::{fmt::Write as _, net::IpAddr};

use serde_json::{Value, json};

use super::{AdminState, Control};
use crate::{
    auth::AuthMethod,
    config::{Balance, Config, HostMatch, PathMatch},
    proxy::Snapshot,
    ratelimit::{LimitKey, LimitSpec},
};

/// Config keys whose values never leave the process.
const SECRET_KEYS: &[&str] = &["secret", "client_secret", "admin_token"];

pub fn status(state: &AdminState, snapshot: &Snapshot) -> Value {
    let listeners: Vec<Value> = snapshot
        .config
        .listeners
        .iter()
        .zip(&state.listener_addrs)
        .map(
            |(l, addr)| json!({ "name": l.name, "addr": addr.to_string(), "tls": l.tls.is_some() }),
        )
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "workers": state.workers,
        "listeners": listeners,
        "config_file": snapshot.config.source.display().to_string(),
        "reloads": state.reloads.load(std::sync::atomic::Ordering::Relaxed),
        "edge_enforcement": state.edge_enforcement,
        "routes": snapshot.config.routes.len(),
        "upstreams": snapshot.config.upstreams.len(),
    })
}

/// The config file as loaded, as JSON, with secret values replaced.
pub fn config(config: &Config) -> Value {
    let mut value = toml::from_str::<toml::Value>(&config.text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Value::Null);
    redact(&mut value);
    json!({ "file": config.source.display().to_string(), "config": value })
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) {
                    *inner = Value::String("[redacted]".into());
                } else {
                    redact(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn limit_view(spec: &LimitSpec) -> Value {
    let key = match &spec.key {
        LimitKey::ClientIp => "client_ip".to_owned(),
        LimitKey::Consumer => "consumer".to_owned(),
        LimitKey::Route => "route".to_owned(),
        LimitKey::Header(h) => format!("header:{h}"),
        LimitKey::Claim(c) => format!("claim:{c}"),
    };
    json!({
        "name": spec.name,
        "count": spec.rate.count,
        "per_seconds": spec.rate.per.as_secs_f64(),
        "burst": spec.rate.burst,
        "key": key,
        "mode": match spec.mode {
            crate::ratelimit::LimitMode::Gcra => "gcra",
            crate::ratelimit::LimitMode::SlidingWindow => "sliding_window",
        },
    })
}

pub fn routes(snapshot: &Snapshot) -> Value {
    let config = &snapshot.config;
    let list: Vec<Value> = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let host = match &r.host {
                None => Value::Null,
                Some(HostMatch::Exact(h)) => json!(h),
                Some(HostMatch::Suffix(s)) => json!(format!("*{s}")),
            };
            let path = match &r.path {
                PathMatch::Exact(p) => json!({ "exact": p }),
                PathMatch::Prefix(p) => json!({ "prefix": p }),
                PathMatch::Regex(re) => json!({ "regex": re.as_str() }),
            };
            let auth: Vec<String> = r
                .policy
                .auth
                .iter()
                .map(|m| match m {
                    AuthMethod::Jwt(p) => config.auth.jwt[*p].name.clone(),
                    AuthMethod::Introspection(p) => config.auth.introspection[*p].name.clone(),
                    AuthMethod::ApiKey => "api_key".into(),
                })
                .collect();
            let in_flight = snapshot.in_flight[i]
                .as_ref()
                .map(|f| json!({ "limit": r.policy.max_in_flight, "current": f.current() }));
            json!({
                "name": r.name,
                "host": host,
                "path": path,
                "methods": r.methods,
                "upstream": config.upstreams[r.upstream].name,
                "auth": auth,
                "scopes": r.policy.scopes,
                "consumers": r.policy.consumers,
                "rate_limit": r.policy.rate_limit.as_ref().map(limit_view),
                "max_in_flight": in_flight,
                "cors": r.policy.cors.is_some(),
            })
        })
        .collect();
    json!({ "routes": list })
}

pub fn upstreams(snapshot: &Snapshot) -> Value {
    let list: Vec<Value> = snapshot
        .config
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let balance = match &u.balance {
                Balance::RoundRobin => "round_robin",
                Balance::LeastConn => "least_conn",
                Balance::P2cEwma => "p2c_ewma",
                Balance::ConsistentHash(_) => "consistent_hash",
            };
            let first = snapshot.upstreams.entries[i].first_target;
            let health = &snapshot.upstreams.health;
            let targets: Vec<Value> = u
                .targets
                .iter()
                .enumerate()
                .map(|(t, target)| {
                    json!({
                        "addr": target.addr.to_string(),
                        "weight": target.weight,
                        "state": health.state(first + t),
                    })
                })
                .collect();
            let in_flight = snapshot.upstream_in_flight[i]
                .as_ref()
                .map(|f| json!({ "limit": u.max_in_flight, "current": f.current() }));
            let connections = snapshot.upstreams.entries[i].connections.as_ref().map(|c| {
                json!({
                    "limit": c.max_open(),
                    "open": c.open(),
                    "pending_limit": u.max_pending,
                    "pending": c.pending(),
                })
            });
            json!({
                "name": u.name,
                "balance": balance,
                "targets": targets,
                "tls": u.tls.is_some(),
                "max_in_flight": in_flight,
                "max_connections": connections,
            })
        })
        .collect();
    json!({ "upstreams": list })
}

/// `?limit=route:NAME|consumer:NAME&key=VALUE`: requests that fit now.
pub fn rate_limit(
    state: &AdminState,
    snapshot: &Snapshot,
    query: &str,
) -> Result<Value, (u16, String)> {
    let mut limit = None;
    let mut key = String::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "limit" => limit = Some(value.into_owned()),
            "key" => key = value.into_owned(),
            _ => {}
        }
    }
    let limit = limit.ok_or((400, "the limit parameter is required".to_owned()))?;
    let config = &snapshot.config;
    let spec = config
        .routes
        .iter()
        .filter_map(|r| r.policy.rate_limit.as_ref())
        .chain(
            config
                .consumers
                .iter()
                .filter_map(|c| c.rate_limit.as_ref()),
        )
        .find(|spec| spec.name == limit)
        .ok_or_else(|| {
            (
                400,
                format!("no limit named {limit:?} (route:NAME or consumer:NAME)"),
            )
        })?;
    let table = &state.rate_table;
    let hash = match &spec.key {
        LimitKey::ClientIp => {
            let ip: IpAddr = key
                .parse()
                .map_err(|_| (400, format!("key {key:?} is not an IP address")))?;
            match crate::proxy::canonical_ip(ip) {
                IpAddr::V4(v4) => table.key_hash(&spec.name, &v4.octets()),
                IpAddr::V6(v6) => table.key_hash(&spec.name, &v6.octets()),
            }
        }
        LimitKey::Route => table.key_hash(&spec.name, b""),
        _ => table.key_hash(&spec.name, key.as_bytes()),
    };
    let remaining = spec.peek(table, hash, table.now_ns());
    Ok(json!({
        "limit": limit_view(spec),
        "key": key,
        "remaining": remaining,
    }))
}

/// Prometheus text: the metrics crate's registry, then the XDP counters.
pub fn metrics(state: &AdminState) -> String {
    let mut out = match &state.prometheus {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    };
    if let Some(counters) = state.ask(Control::XdpCounters)
        && !counters.is_empty()
    {
        out.push_str("# TYPE gateway_xdp_packets_total counter\n");
        for (verdict, packets, _) in &counters {
            let _ = writeln!(
                out,
                "gateway_xdp_packets_total{{verdict=\"{verdict}\"}} {packets}"
            );
        }
        out.push_str("# TYPE gateway_xdp_bytes_total counter\n");
        for (verdict, _, bytes) in &counters {
            let _ = writeln!(
                out,
                "gateway_xdp_bytes_total{{verdict=\"{verdict}\"}} {bytes}"
            );
        }
    }
    if let Some(view) = state.ask(Control::L4View) {
        l4_metrics(&mut out, &view);
    }
    out
}

/// The L4 services' counters and target health, from the `/l4` view.
fn l4_metrics(out: &mut String, view: &Value) {
    let services = view["services"].as_array().map_or(&[][..], Vec::as_slice);
    if services.is_empty() {
        return;
    }
    for (metric, field, kind) in [
        ("gateway_l4_packets_total", "packets", "counter"),
        ("gateway_l4_bytes_total", "bytes", "counter"),
        ("gateway_l4_new_flows_total", "new_flows", "counter"),
        ("gateway_l4_target_healthy", "healthy", "gauge"),
        ("gateway_l4_target_ring_slots", "ring_slots", "gauge"),
    ] {
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        for service in services {
            let name = service["name"].as_str().unwrap_or_default();
            for target in service["targets"].as_array().map_or(&[][..], Vec::as_slice) {
                let value = match &target[field] {
                    Value::Bool(b) => u64::from(*b),
                    other => other.as_u64().unwrap_or(0),
                };
                let addr = target["addr"].as_str().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{metric}{{service=\"{name}\",target=\"{addr}\"}} {value}"
                );
            }
        }
    }
}

/// `GET /usage`: each consumer's totals against its plan, and its requests per route.
pub fn usage(snapshot: &Snapshot) -> Value {
    let now = crate::metering::Period::now();
    let book = snapshot.meter.book();
    let routes = book.usage(now);
    let consumers: Vec<Value> = book
        .totals(now)
        .into_iter()
        .map(|total| {
            let plan = snapshot
                .config
                .consumers
                .iter()
                .find(|c| c.name == total.consumer)
                .and_then(|c| c.plan.as_ref());
            let quota = plan.map(|p| {
                json!({
                    "plan": p.name,
                    "requests_per_day": p.quota.per_day,
                    "requests_per_month": p.quota.per_month,
                    "day_left": p.quota.per_day.map(|q| q.saturating_sub(total.day)),
                    "month_left": p.quota.per_month.map(|q| q.saturating_sub(total.month)),
                })
            });
            json!({
                "consumer": total.consumer,
                "day_requests": total.day,
                "month_requests": total.month,
                "quota": quota,
                "routes": routes
                    .iter()
                    .filter(|u| u.consumer == total.consumer)
                    .map(|u| json!({ "route": u.route, "day_requests": u.day, "month_requests": u.month }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "day": crate::metering::day_label(now.day),
        "month": crate::metering::month_label(now.month),
        "consumers": consumers,
    })
}

/// `GET /usage.csv`: one line per consumer and route (names are quoted when needed).
pub fn usage_csv(snapshot: &Snapshot) -> String {
    let now = crate::metering::Period::now();
    let (day, month) = (
        crate::metering::day_label(now.day),
        crate::metering::month_label(now.month),
    );
    let mut out = String::from("consumer,route,day,day_requests,month,month_requests\n");
    for usage in snapshot.meter.book().usage(now) {
        let route = usage.route.unwrap_or_default();
        out.push_str(&format!(
            "{},{},{day},{},{month},{}\n",
            csv_field(&usage.consumer),
            csv_field(&route),
            usage.day,
            usage.month
        ));
    }
    out
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// `GET /webhooks`: subscribers (secrets left out) and the last deliveries.
pub fn webhooks(snapshot: &Snapshot) -> Value {
    let (deliveries, dropped) = crate::webhooks::deliveries();
    json!({
        "subscribers": snapshot.config.webhooks.iter().map(|w| json!({
            "name": w.name,
            "url": w.url.as_str(),
            "events": if w.events.is_empty() { crate::webhooks::Event::KINDS.iter().map(|k| k.to_string()).collect() } else { w.events.clone() },
            "max_attempts": w.max_attempts,
        })).collect::<Vec<_>>(),
        "dropped_events": dropped,
        "deliveries": deliveries,
    })
}
