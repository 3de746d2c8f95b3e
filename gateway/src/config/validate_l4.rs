//! Validation of `[[l4_services]]` and the `[xdp]` tunnel sources.

use std::{collections::HashSet, net::IpAddr};

use gateway_common::{L4_RING_CAPACITY, MAX_L4_REALS, MAX_L4_SERVICES};

use super::{
    L4HealthCheck, L4Protocol, L4ServiceConfig, L4TargetConfig,
    raw::{RawL4Service, RawXdp},
    validate::Problems,
    validate_route::health_check,
};

/// Largest Maglev table one service may have (16 × the default).
pub const MAX_TABLE_SIZE: u32 = 1_048_573;

/// Validates every L4 service; `xdp` is the `[xdp]` table, which they need.
pub(super) fn validate_l4_services(
    raw: &[RawL4Service],
    xdp: Option<&RawXdp>,
    problems: &mut Problems,
) -> Vec<L4ServiceConfig> {
    if !raw.is_empty() && xdp.and_then(|x| x.interface.as_ref()).is_none() {
        problems.push(
            "l4_services",
            "L4 services are balanced by the XDP program: set [xdp] interface",
        );
    }
    if raw.len() > MAX_L4_SERVICES as usize {
        problems.push("l4_services", format!("at most {MAX_L4_SERVICES} services"));
    }
    let mut names = HashSet::new();
    let mut vips = HashSet::new();
    let (mut reals, mut slots) = (0usize, 0u64);
    let services: Vec<L4ServiceConfig> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let key = format!("l4_services[{i}]");
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                problems.push(format!("{key}.name"), "must be non-empty and unique");
            }
            let service = validate_service(&key, s, problems)?;
            if !vips.insert((service.vip, service.port, service.protocol)) {
                problems.push(
                    format!("{key}.vip"),
                    "another service has the same VIP, port and protocol",
                );
            }
            reals += service.targets.len();
            slots += u64::from(service.table_size);
            Some(service)
        })
        .collect();
    if reals > MAX_L4_REALS as usize {
        problems.push(
            "l4_services",
            format!("at most {MAX_L4_REALS} targets over all services"),
        );
    }
    // Half the ring space: a service changing its table size needs room for both.
    if slots > u64::from(L4_RING_CAPACITY / 2) {
        problems.push(
            "l4_services",
            format!(
                "the table sizes add up to {slots} slots; at most {} fit",
                L4_RING_CAPACITY / 2
            ),
        );
    }
    services
}

fn validate_service(
    key: &str,
    s: &RawL4Service,
    problems: &mut Problems,
) -> Option<L4ServiceConfig> {
    let vip: Option<IpAddr> = s.vip.parse().ok();
    if vip.is_none() {
        problems.push(
            format!("{key}.vip"),
            format!("{:?} is not an IP address", s.vip),
        );
    }
    let protocol = match s.protocol.as_str() {
        "tcp" => Some(L4Protocol::Tcp),
        "udp" => Some(L4Protocol::Udp),
        other => {
            problems.push(
                format!("{key}.protocol"),
                format!("{other:?}: use tcp or udp"),
            );
            None
        }
    };
    if s.forwarding != "ipip" {
        problems.push(
            format!("{key}.forwarding"),
            format!("{:?}: the only forwarding mode is ipip", s.forwarding),
        );
    }
    let hash_ports = match s.flow_hash.as_str() {
        "5-tuple" => true,
        "3-tuple" => false,
        other => {
            problems.push(
                format!("{key}.flow_hash"),
                format!("{other:?}: use 5-tuple or 3-tuple"),
            );
            true
        }
    };
    if s.port == Some(0) {
        problems.push(format!("{key}.port"), "leave port out to take every port");
    }
    if s.targets.is_empty() {
        problems.push(format!("{key}.targets"), "at least one target");
    }
    let mut seen = HashSet::new();
    let targets: Vec<L4TargetConfig> = s
        .targets
        .iter()
        .enumerate()
        .filter_map(|(t, target)| {
            let tkey = format!("{key}.targets[{t}]");
            let Ok(addr) = target.addr.parse::<IpAddr>() else {
                problems.push(
                    format!("{tkey}.addr"),
                    format!(
                        "{:?} is not an IP address (targets keep the service's port)",
                        target.addr
                    ),
                );
                return None;
            };
            if vip.is_some_and(|v| v.is_ipv6()) && addr.is_ipv4() {
                problems.push(
                    format!("{tkey}.addr"),
                    "an IPv6 VIP needs IPv6 targets (IPv6 is not tunnelled in IPv4)",
                );
            }
            if !seen.insert(addr) {
                problems.push(format!("{tkey}.addr"), "listed twice");
            }
            Some(L4TargetConfig {
                addr,
                weight: target.weight,
            })
        })
        .collect();
    if !s.targets.is_empty() && s.targets.iter().all(|t| t.weight == 0) {
        problems.push(format!("{key}.targets"), "at least one weight above zero");
    }
    let size = s.table_size;
    if !is_prime(size) || size > MAX_TABLE_SIZE {
        problems.push(
            format!("{key}.table_size"),
            format!("{size}: must be a prime of at most {MAX_TABLE_SIZE}"),
        );
    } else if (size as usize) < 100 * targets.len() {
        problems.push(
            format!("{key}.table_size"),
            format!(
                "{size} slots for {} targets: at least 100 per target",
                targets.len()
            ),
        );
    }
    let health_check = s.health_check.as_ref().and_then(|h| {
        let hkey = format!("{key}.health_check");
        let probe = health_check(&hkey, h, problems);
        match h.port.or(s.port) {
            Some(port) if port != 0 => Some(L4HealthCheck { port, probe }),
            _ => {
                problems.push(
                    format!("{hkey}.port"),
                    "a service of every port needs the port to probe",
                );
                None
            }
        }
    });
    Some(L4ServiceConfig {
        name: s.name.clone(),
        vip: vip?,
        port: s.port,
        protocol: protocol?,
        hash_ports,
        table_size: size,
        targets,
        health_check,
    })
}

/// The `[xdp]` tunnel source prefixes.
pub(super) fn tunnel_sources(
    x: &RawXdp,
    problems: &mut Problems,
) -> (ipnet::Ipv4Net, ipnet::Ipv6Net) {
    let v4 = x.tunnel_source_v4.parse().unwrap_or_else(|_| {
        problems.push(
            "xdp.tunnel_source_v4",
            format!("{:?} is not an IPv4 prefix", x.tunnel_source_v4),
        );
        ipnet::Ipv4Net::default()
    });
    let v6: ipnet::Ipv6Net = x.tunnel_source_v6.parse().unwrap_or_else(|_| {
        problems.push(
            "xdp.tunnel_source_v6",
            format!("{:?} is not an IPv6 prefix", x.tunnel_source_v6),
        );
        ipnet::Ipv6Net::default()
    });
    if v6.prefix_len() < 96 {
        problems.push(
            "xdp.tunnel_source_v6",
            "must be a /96 or longer (the flow hash fills the last 32 bits at most)",
        );
    }
    (v4.trunc(), v6.trunc())
}

/// Whether a table size is prime.
fn is_prime(n: u32) -> bool {
    crate::upstream::maglev::is_prime(n as usize)
}

#[cfg(test)]
mod tests {
    use super::is_prime;
    use crate::config::{Config, ConfigError};

    /// `key: message` of every problem of `l4` (an `[[l4_services]]` table) after a
    /// minimal valid config with `[xdp] interface` when `xdp` is set.
    fn problems(l4: &str, xdp: bool) -> Vec<String> {
        let xdp = if xdp {
            "[xdp]\ninterface = \"eth0\"\n"
        } else {
            ""
        };
        let text = format!("[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n{xdp}{l4}");
        match Config::parse(std::path::Path::new("t.toml"), &text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(list)) => list
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect(),
            Err(other) => vec![other.to_string()],
        }
    }

    #[test]
    fn bad_l4_services_are_refused_with_their_keys() {
        let ok = "[[l4_services]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 80\ntargets = [ { addr = \"10.0.1.1\" } ]\n";
        assert!(problems(ok, true).is_empty(), "{:?}", problems(ok, true));
        let cases: &[(&str, bool, &str)] = &[
            (
                ok,
                false,
                "l4_services: L4 services are balanced by the XDP program",
            ),
            (
                &ok.replace("10.0.0.1", "nowhere"),
                true,
                "l4_services[0].vip",
            ),
            (
                &ok.replace("port = 80", "port = 80\nprotocol = \"sctp\""),
                true,
                "l4_services[0].protocol",
            ),
            (
                &ok.replace("port = 80", "port = 80\nforwarding = \"gre\""),
                true,
                "l4_services[0].forwarding",
            ),
            (
                &ok.replace("port = 80", "port = 80\nflow_hash = \"4-tuple\""),
                true,
                "l4_services[0].flow_hash",
            ),
            (
                &ok.replace("port = 80", "port = 80\ntable_size = 65536"),
                true,
                "l4_services[0].table_size: 65536: must be a prime",
            ),
            (
                &ok.replace("port = 80", "port = 80\ntable_size = 2"),
                true,
                "at least 100 per target",
            ),
            (
                &ok.replace("10.0.1.1", "10.0.1.1:80"),
                true,
                "l4_services[0].targets[0].addr",
            ),
            (
                &ok.replace("10.0.0.1", "fd00::1"),
                true,
                "an IPv6 VIP needs IPv6 targets",
            ),
            (&ok.replace("port = 80\n", ""), false, "l4_services"),
            (
                &ok.replace("targets = [ { addr = \"10.0.1.1\" } ]", "targets = []"),
                true,
                "l4_services[0].targets: at least one target",
            ),
            (&format!("{ok}{ok}"), true, "l4_services[1].name"),
            (
                &format!("{ok}{}", ok.replace("name = \"a\"", "name = \"b\"")),
                true,
                "l4_services[1].vip: another service",
            ),
            (
                &ok.replace("port = 80\n", "health_check = { interval = \"1s\" }\n"),
                true,
                "l4_services[0].health_check.port",
            ),
        ];
        for (text, xdp, expected) in cases {
            let found = problems(text, *xdp);
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "expected {expected:?} in {found:?}"
            );
        }
    }

    #[test]
    fn primes_are_recognised() {
        assert!(is_prime(65_537) && is_prime(2) && is_prime(MAX));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(0) && !is_prime(9));
        const MAX: u32 = super::MAX_TABLE_SIZE;
    }
}
