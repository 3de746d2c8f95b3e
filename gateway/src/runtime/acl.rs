//! Live ACL entries: deny/allow entries added to a running gateway (admin API, `gateway
//! acl`), optionally with a time to live. They live on the main thread, on top of the
//! config's lists: the effective edge policy is the config's lists plus these, rebuilt
//! and swapped in (XDP maps updated new-entries-first) on every change, expiry and
//! reload. A reload keeps them. With XDP attached they are also recorded in a pinned map,
//! so a restarted or upgraded gateway restores them with their remaining TTL; without
//! XDP a restart forgets them.

use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::{config::EdgePolicyConfig, xdp::PersistedEntry};

/// Which list an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclList {
    Deny,
    Allow,
}

impl AclList {
    /// Parses `deny` or `allow`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "deny" => Some(Self::Deny),
            "allow" => Some(Self::Allow),
            _ => None,
        }
    }

    /// `deny` or `allow`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// What the admin API asks of the ACL.
pub enum AclCommand {
    List,
    Add {
        list: AclList,
        net: IpNet,
        ttl: Option<Duration>,
    },
    Remove {
        list: AclList,
        net: IpNet,
    },
}

#[derive(Debug, Clone)]
struct LiveEntry {
    list: AclList,
    net: IpNet,
    expires: Option<Instant>,
    added_by: String,
}

/// The live entries.
#[derive(Debug, Default)]
pub struct LiveAcl {
    entries: Vec<LiveEntry>,
}

/// Parses `203.0.113.0/24` or a bare address; host bits are refused like in the config.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let net = text
        .parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
        .ok_or_else(|| format!("invalid address or CIDR {text:?}"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

impl LiveAcl {
    /// Adds (or renews) an entry; returns whether it was new.
    pub fn add(&mut self, list: AclList, net: IpNet, ttl: Option<Duration>, who: &str) -> bool {
        let expires = ttl.map(|t| Instant::now() + t);
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.list == list && e.net == net)
        {
            entry.expires = expires;
            entry.added_by = who.to_owned();
            return false;
        }
        self.entries.push(LiveEntry {
            list,
            net,
            expires,
            added_by: who.to_owned(),
        });
        true
    }

    /// How many live entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `net` is a live entry of `list`.
    pub fn contains(&self, list: AclList, net: IpNet) -> bool {
        self.entries.iter().any(|e| e.list == list && e.net == net)
    }

    /// Removes an entry; returns whether it existed.
    pub fn remove(&mut self, list: AclList, net: IpNet) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !(e.list == list && e.net == net));
        self.entries.len() != before
    }

    /// Drops expired entries; returns them as (list, net).
    pub fn expire(&mut self, now: Instant) -> Vec<(&'static str, IpNet)> {
        let mut gone = Vec::new();
        self.entries.retain(|e| {
            let keep = e.expires.is_none_or(|t| t > now);
            if !keep {
                gone.push((e.list.name(), e.net));
            }
            keep
        });
        gone
    }

    /// The entries as recorded for the next process (expiry as wall-clock time).
    pub fn persisted(&self) -> Vec<PersistedEntry> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        self.entries
            .iter()
            .map(|e| PersistedEntry {
                deny: e.list == AclList::Deny,
                net: e.net,
                expires: e.expires.map(|t| wall + t.saturating_duration_since(now)),
            })
            .collect()
    }

    /// The entries a previous process recorded, minus the expired ones.
    pub fn restore(recorded: Vec<PersistedEntry>) -> Self {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let entries = recorded
            .into_iter()
            .filter_map(|e| {
                let expires = match e.expires {
                    None => None,
                    Some(at) => Some(now + at.duration_since(wall).ok()?),
                };
                Some(LiveEntry {
                    list: if e.deny {
                        AclList::Deny
                    } else {
                        AclList::Allow
                    },
                    net: e.net,
                    expires,
                    added_by: "restored".into(),
                })
            })
            .collect();
        Self { entries }
    }

    /// The config's lists with the live entries added.
    pub fn merged(&self, base: &EdgePolicyConfig) -> EdgePolicyConfig {
        let mut merged = base.clone();
        for entry in &self.entries {
            let list = match entry.list {
                AclList::Deny => &mut merged.deny,
                AclList::Allow => &mut merged.allow,
            };
            if !list.contains(&entry.net) {
                list.push(entry.net);
            }
        }
        merged
    }

    /// Every entry, config and live, for `GET /acl`; `hits(deny, merged list)` gives
    /// each entry's packet count when XDP counts them.
    pub fn view(
        &self,
        base: &EdgePolicyConfig,
        enforcement: &str,
        hits: impl Fn(bool, &[IpNet]) -> Option<Vec<Option<u64>>>,
    ) -> Value {
        let now = Instant::now();
        let merged = self.merged(base);
        let list = |which: AclList, configured: &[IpNet], effective: &[IpNet]| {
            let counts = hits(which == AclList::Deny, effective);
            let hits_of = |net: &IpNet| {
                let id = effective.iter().position(|n| n == net)?;
                counts.as_ref()?.get(id).copied().flatten()
            };
            let mut out: Vec<Value> = configured
                .iter()
                .map(|n| json!({ "cidr": n.to_string(), "source": "config", "hits": hits_of(n) }))
                .collect();
            out.extend(self.entries.iter().filter(|e| e.list == which).map(|e| {
                json!({
                    "cidr": e.net.to_string(),
                    "source": "live",
                    "added_by": e.added_by,
                    "expires_in_seconds": e.expires.map(|t| t.saturating_duration_since(now).as_secs()),
                    "hits": hits_of(&e.net),
                })
            }));
            out
        };
        json!({
            "enforcement": enforcement,
            "deny": list(AclList::Deny, &base.deny, &merged.deny),
            "allow": list(AclList::Allow, &base.allow, &merged.allow),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_merge_renew_and_expire() {
        let mut acl = LiveAcl::default();
        let base = EdgePolicyConfig {
            deny: vec![parse_net("10.0.0.0/8").expect("net")],
            ..EdgePolicyConfig::default()
        };
        let net = parse_net("192.0.2.7").expect("net");
        assert!(acl.add(AclList::Deny, net, Some(Duration::from_secs(60)), "t"));
        assert!(
            !acl.add(AclList::Deny, net, None, "t"),
            "renewed, not duplicated"
        );
        assert_eq!(acl.merged(&base).deny.len(), 2);
        assert!(
            acl.expire(Instant::now() + Duration::from_secs(120))
                .is_empty(),
            "no TTL now"
        );
        acl.add(AclList::Allow, net, Some(Duration::from_millis(1)), "t");
        assert_eq!(acl.expire(Instant::now() + Duration::from_secs(1)).len(), 1);
        assert!(acl.remove(AclList::Deny, net));
        assert!(!acl.remove(AclList::Deny, net));
        assert!(parse_net("10.0.0.1/8").is_err());
    }

    #[test]
    fn recorded_entries_come_back_with_their_remaining_ttl() {
        let mut acl = LiveAcl::default();
        let (a, b, c) = (
            parse_net("192.0.2.1").expect("net"),
            parse_net("2001:db8::/48").expect("net"),
            parse_net("198.51.100.0/24").expect("net"),
        );
        acl.add(AclList::Deny, a, Some(Duration::from_secs(600)), "t");
        acl.add(AclList::Allow, b, None, "t");
        let mut recorded = acl.persisted();
        recorded.push(PersistedEntry {
            deny: true,
            net: c,
            expires: Some(SystemTime::now() - Duration::from_secs(1)),
        });
        let restored = LiveAcl::restore(recorded);
        assert!(restored.contains(AclList::Deny, a));
        assert!(restored.contains(AclList::Allow, b));
        assert!(!restored.contains(AclList::Deny, c), "expired while down");
        let ttl = restored.entries[0].expires.expect("kept its TTL");
        let left = ttl.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600));
    }
}
