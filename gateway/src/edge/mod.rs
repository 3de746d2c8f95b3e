//! The edge policy: which sources may reach the protected ports (the gateway's
//! listeners), and how fast each may open connections.
//!
//! The XDP program enforces it in the driver when attached ([`crate::xdp`] loads these
//! lists into its LPM tries). Without XDP (not root, no interface, a build without the
//! object) the same decisions are made here, at accept: identical behaviour, only later
//! in the packet's life. Semantics, both places: a match in `deny` drops; when `allow`
//! is non-empty a source not in it drops; deny wins over allow; then the SYN guard's
//! per-source token bucket.

use std::{net::IpAddr, time::Instant};

use gateway_common::{TokenBucket, Verdict};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use crate::config::{EdgePolicyConfig, SynGuardConfig};

/// The compiled lists of one config snapshot (shared, immutable).
#[derive(Debug)]
pub struct EdgePolicy {
    config: EdgePolicyConfig,
    deny_v4: PrefixMap<Ipv4Net, u32>,
    deny_v6: PrefixMap<Ipv6Net, u32>,
    allow_v4: PrefixMap<Ipv4Net, u32>,
    allow_v6: PrefixMap<Ipv6Net, u32>,
}

fn compile(nets: &[IpNet]) -> (PrefixMap<Ipv4Net, u32>, PrefixMap<Ipv6Net, u32>) {
    let mut v4 = PrefixMap::new();
    let mut v6 = PrefixMap::new();
    for (id, net) in nets.iter().enumerate() {
        match net {
            IpNet::V4(n) => {
                v4.insert(*n, id as u32);
            }
            IpNet::V6(n) => {
                v6.insert(*n, id as u32);
            }
        }
    }
    (v4, v6)
}

impl EdgePolicy {
    /// Compiles the lists of `config`.
    pub fn new(config: &EdgePolicyConfig) -> Self {
        let (deny_v4, deny_v6) = compile(&config.deny);
        let (allow_v4, allow_v6) = compile(&config.allow);
        Self {
            config: config.clone(),
            deny_v4,
            deny_v6,
            allow_v4,
            allow_v6,
        }
    }

    /// The policy as configured.
    pub fn config(&self) -> &EdgePolicyConfig {
        &self.config
    }

    /// Whether there is anything to enforce.
    pub fn is_active(&self) -> bool {
        !self.config.deny.is_empty()
            || !self.config.allow.is_empty()
            || self.config.syn_guard.is_some()
    }

    /// The list verdict for a source: `DeniedByList`, `NotAllowed` or `Admitted`.
    pub fn judge_source(&self, ip: IpAddr) -> Verdict {
        let ip = crate::proxy::canonical_ip(ip);
        let (denied, allowed) = match ip {
            IpAddr::V4(v4) => {
                let host = Ipv4Net::from(v4);
                (
                    self.deny_v4.get_lpm(&host).is_some(),
                    self.allow_v4.get_lpm(&host).is_some(),
                )
            }
            IpAddr::V6(v6) => {
                let host = Ipv6Net::from(v6);
                (
                    self.deny_v6.get_lpm(&host).is_some(),
                    self.allow_v6.get_lpm(&host).is_some(),
                )
            }
        };
        if denied {
            Verdict::DeniedByList
        } else if !self.config.allow.is_empty() && !allowed {
            Verdict::NotAllowed
        } else {
            Verdict::Admitted
        }
    }
}

/// Slots of a worker's [`SynLimiter`]; memory is fixed whatever the number of sources.
const LIMITER_SLOTS: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    source: [u8; 16],
    used: bool,
    bucket: TokenBucket,
}

/// The userspace SYN guard: a per-source token bucket on accepted connections, per
/// worker (the kernel's is per CPU). Direct-mapped: a source colliding with another
/// takes over its slot with a fresh bucket, so memory is bounded and an attacker
/// cannot grow it; the cost is an occasional extra burst for a colliding source.
#[derive(Debug)]
pub struct SynLimiter {
    guard: SynGuardConfig,
    slots: Box<[Slot]>,
    epoch: Instant,
}

impl SynLimiter {
    /// A limiter for `guard`.
    pub fn new(guard: SynGuardConfig) -> Self {
        Self {
            guard,
            slots: vec![Slot::default(); LIMITER_SLOTS].into_boxed_slice(),
            epoch: Instant::now(),
        }
    }

    /// Whether `ip` may open a connection at `now` (taking a token if so).
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        let source = match crate::proxy::canonical_ip(ip) {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let index = (crate::upstream::maglev::fnv1a(0, &source) % LIMITER_SLOTS as u64) as usize;
        let slot = &mut self.slots[index];
        if !slot.used || slot.source != source {
            *slot = Slot {
                source,
                used: true,
                bucket: TokenBucket::full(self.guard.burst, now_ns),
            };
        }
        slot.bucket
            .take(now_ns, self.guard.rate_per_sec, self.guard.burst)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(deny: &[&str], allow: &[&str]) -> EdgePolicy {
        EdgePolicy::new(&EdgePolicyConfig {
            deny: deny.iter().map(|s| s.parse().expect("cidr")).collect(),
            allow: allow.iter().map(|s| s.parse().expect("cidr")).collect(),
            protect_all: false,
            syn_guard: None,
            ban: None,
        })
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let p = policy(&["203.0.113.0/24", "2001:db8::/32"], &[]);
        for (ip, verdict) in [
            ("203.0.113.7", Verdict::DeniedByList),
            ("203.0.114.7", Verdict::Admitted),
            ("2001:db8::1", Verdict::DeniedByList),
            ("::ffff:203.0.113.9", Verdict::DeniedByList),
            ("2001:db9::1", Verdict::Admitted),
        ] {
            assert_eq!(p.judge_source(ip.parse().expect("ip")), verdict, "{ip}");
        }
        let p = policy(&["10.1.0.0/16"], &["10.0.0.0/8", "fd00::/8"]);
        for (ip, verdict) in [
            ("10.2.3.4", Verdict::Admitted),
            ("10.1.3.4", Verdict::DeniedByList),
            ("192.0.2.1", Verdict::NotAllowed),
            ("fd00::5", Verdict::Admitted),
            ("2001:db8::5", Verdict::NotAllowed),
        ] {
            assert_eq!(p.judge_source(ip.parse().expect("ip")), verdict, "{ip}");
        }
    }

    #[test]
    fn syn_limiter_spends_the_burst_then_refills_at_the_rate() {
        let mut limiter = SynLimiter::new(SynGuardConfig {
            rate_per_sec: 10,
            burst: 3,
        });
        let ip: IpAddr = "198.51.100.1".parse().expect("ip");
        let other: IpAddr = "198.51.100.2".parse().expect("ip");
        let t0 = Instant::now();
        assert_eq!(
            (0..5).map(|_| limiter.admit(ip, t0)).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert!(
            limiter.admit(other, t0),
            "another source has its own budget"
        );
        assert!(
            !limiter.admit(ip, t0 + Duration::from_millis(50)),
            "half a token is not a token"
        );
        assert!(limiter.admit(ip, t0 + Duration::from_millis(110)));
        assert!(!limiter.admit(ip, t0 + Duration::from_millis(115)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..4).map(|_| limiter.admit(ip, later)).collect::<Vec<_>>(),
            [true, true, true, false],
            "refill stops at the burst"
        );
    }
}
