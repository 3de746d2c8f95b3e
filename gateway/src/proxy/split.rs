//! Phase "split": which upstream a request of a route goes to. Flag rules (a header or
//! cookie value) pick their upstream outright; otherwise a roll in basis points walks the
//! weighted shares (canary), and what is left goes to the route's own upstream. With a
//! `split_key` the roll is a hash of the client's key, so a client stays on its side.

use super::{Worker, connection::Connection};
use crate::{
    config::{HashKey, RouteConfig, SplitChoice},
    http::fields::cookie_value,
    upstream::maglev::fnv1a,
};

/// Basis points in the whole traffic.
const ALL: u32 = 10_000;

impl<S> Connection<S> {
    /// The upstream index this request goes to.
    pub(super) fn choose_upstream(&self, worker: &Worker, route: &RouteConfig) -> usize {
        let mut roll = None;
        let mut cumulative = 0;
        for rule in &route.traffic.split {
            let chosen = match &rule.choice {
                SplitChoice::Header(name, value) => {
                    self.state.head.fields.get(name.as_bytes()) == Some(value.as_bytes())
                }
                SplitChoice::Cookie(name, value) => {
                    cookie_value(&self.state.head.fields, name.as_bytes()) == Some(value.as_bytes())
                }
                SplitChoice::Weight(share) => {
                    let roll = *roll.get_or_insert_with(|| self.split_roll(worker, route));
                    cumulative += share;
                    roll < cumulative
                }
            };
            if chosen {
                return rule.upstream;
            }
        }
        route.upstream
    }

    /// A number below [`ALL`]: from the client's key when configured and present (a
    /// multiplicative mix spreads FNV's low bits), random otherwise.
    fn split_roll(&self, worker: &Worker, route: &RouteConfig) -> u32 {
        match route
            .traffic
            .split_key
            .as_ref()
            .and_then(|k| self.key_hash(k))
        {
            Some(hash) => {
                ((hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % u64::from(ALL)) as u32
            }
            None => (worker.random_unit() * f64::from(ALL)) as u32,
        }
    }

    /// The hash of the request's `key` (the client's address as the policy judged it,
    /// a header or a cookie), when present.
    pub(super) fn key_hash(&self, key: &HashKey) -> Option<u64> {
        match key {
            HashKey::ClientIp => Some(match self.state.client_ip {
                std::net::IpAddr::V4(v4) => fnv1a(0, &v4.octets()),
                std::net::IpAddr::V6(v6) => fnv1a(0, &v6.octets()),
            }),
            HashKey::Header(name) => self
                .state
                .head
                .fields
                .get(name.as_bytes())
                .map(|v| fnv1a(0, v)),
            HashKey::Cookie(name) => {
                crate::http::fields::cookie_value(&self.state.head.fields, name.as_bytes())
                    .map(|v| fnv1a(0, v))
            }
        }
    }
}
