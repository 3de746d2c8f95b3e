//! Phases "auth" and "rate limit" of the request path, for the matched route:
//!
//! ```text
//! client IP (trusted-proxy aware) → route IP allow/deny → CORS preflight
//!   → credentials (auth::Authenticator) → rate limits (route, then consumer)
//!   → traffic split → concurrency limits → header transforms → forward
//! ```
//!
//! Each phase continues or ends the request with a [`ProxyError`]; headers the answer
//! needs (`WWW-Authenticate`, `Retry-After`, `RateLimit-*`, CORS) go into the
//! connection's per-request reply headers, headers for the upstream (the verified
//! identity) into its upstream headers.

use std::{
    io::Write as _,
    net::IpAddr,
    rc::Rc,
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::{
    Snapshot, Worker, connection::Connection, error::ProxyError, io::SendNow, serialize::header,
};
use crate::{
    auth::{AuthFailure, CredentialPlace, Identity},
    config::{CorsConfig, RouteConfig, RoutePolicy},
    http::target::query_without,
    metering::QuotaDecision,
    ratelimit::{Decision, InFlightGuard, LimitKey, LimitSpec},
};

/// Places held by an admitted request in the concurrency limits of its route and
/// upstream; given back when the request ends.
pub(super) struct InFlightPlaces<'s> {
    _route: Option<InFlightGuard<'s>>,
    _upstream: Option<InFlightGuard<'s>>,
}

/// How the policy phases let a request through.
pub(super) enum Admission<'s> {
    /// Forward it to this upstream, holding its places until done.
    Forward(InFlightPlaces<'s>, usize),
    /// A CORS preflight the gateway answers itself (headers already in place).
    Preflight,
}

/// The tightest rate-limit state seen, for the `RateLimit-*` headers.
struct Tightest {
    limit: u32,
    remaining: u32,
    reset_ns: u64,
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

impl<S: AsyncReadRent + AsyncWriteRent + SendNow> Connection<S> {
    /// Runs the route's policy phases.
    pub(super) async fn admit<'s>(
        &mut self,
        worker: &Worker,
        snapshot: &'s Snapshot,
        route_index: usize,
    ) -> Result<Admission<'s>, ProxyError> {
        let route = &snapshot.router.routes()[route_index];
        let policy = &route.policy;
        if snapshot.identity_headers_in_use {
            self.drop_identity_headers(snapshot);
        }
        let client = self.client_ip(snapshot);
        self.state.client_ip = client;
        if !ip_admitted(policy, client) {
            return Err(ProxyError::IpDenied);
        }
        if let Some(cors) = &policy.cors
            && self.apply_cors(cors)
        {
            return Ok(Admission::Preflight);
        }
        let identity = if policy.auth.is_empty() {
            None
        } else {
            Some(
                self.authenticate(worker, snapshot, &route.name, policy)
                    .await?,
            )
        };
        self.state.consumer = identity.as_ref().and_then(|i| i.consumer);
        self.rate_limit(worker, snapshot, route, client, identity.as_deref())?;
        self.charge_quota(snapshot, route_index)?;
        let enter = |limit: Option<&'s crate::ratelimit::InFlight>| match limit {
            Some(limit) => limit
                .try_enter()
                .map(Some)
                .ok_or(ProxyError::TooManyInFlight),
            None => Ok(None),
        };
        let upstream = self.choose_upstream(worker, route);
        let places = enter(snapshot.in_flight[route_index].as_ref()).and_then(|route_place| {
            Ok((
                route_place,
                enter(snapshot.upstream_in_flight[upstream].as_ref())?,
            ))
        });
        let (route_place, upstream_place) = places.inspect_err(|_| {
            crate::observe::limit_rejection(&route.name, "in_flight");
        })?;
        self.transform_headers(snapshot, route, identity.as_deref());
        Ok(Admission::Forward(
            InFlightPlaces {
                _route: route_place,
                _upstream: upstream_place,
            },
            upstream,
        ))
    }

    /// The client's address: the peer, or when the peer is a trusted proxy, the last
    /// untrusted hop of `Forwarded` (RFC 7239) or, without it, of `X-Forwarded-For`.
    fn client_ip(&self, snapshot: &Snapshot) -> IpAddr {
        let peer = super::canonical_ip(self.peer.ip());
        if !snapshot.is_trusted_proxy(peer) {
            return peer;
        }
        let fields = &self.state.head.fields;
        let standard = fields.get(b"forwarded").is_some();
        let name: &[u8] = if standard {
            b"forwarded"
        } else {
            b"x-forwarded-for"
        };
        let mut client = peer;
        for i in (0..fields.len()).rev() {
            if !fields.name(i).eq_ignore_ascii_case(name) {
                continue;
            }
            for hop in fields.value(i).rsplit(|&b| b == b',') {
                let hop = crate::http::trim_ows(hop);
                let parsed = if standard {
                    forwarded_for(hop)
                } else {
                    std::str::from_utf8(hop).ok().and_then(|s| s.parse().ok())
                };
                // An unparsable or obfuscated hop ends what can be believed.
                let Some(ip) = parsed else {
                    return client;
                };
                client = super::canonical_ip(ip);
                if !snapshot.is_trusted_proxy(client) {
                    return client;
                }
            }
        }
        client
    }

    /// Clients never choose the identity headers the gateway sends upstream.
    fn drop_identity_headers(&mut self, snapshot: &Snapshot) {
        let names = &snapshot.identity_header_names;
        for i in 0..self.state.head.fields.len() {
            let name = self.state.head.fields.name(i);
            if names
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
            {
                self.state.head.fields.drop_field(i);
            }
        }
    }

    /// Adds CORS headers for an allowed origin; returns whether the request is a
    /// preflight the gateway answers.
    fn apply_cors(&mut self, cors: &CorsConfig) -> bool {
        let preflight = self.state.head.method() == b"OPTIONS"
            && self
                .state
                .head
                .fields
                .get(b"access-control-request-method")
                .is_some();
        let Some(origin) = self.state.head.fields.get(b"origin") else {
            return false;
        };
        self.state.cors_applied = true;
        let out = &mut self.state.reply_headers;
        out.extend_from_slice(b"vary: origin\r\n");
        if !origin_allowed(cors, origin) {
            return preflight;
        }
        out.extend_from_slice(b"access-control-allow-origin: ");
        if cors.any_origin && !cors.allow_credentials {
            out.push(b'*');
        } else {
            out.extend_from_slice(origin);
        }
        out.extend_from_slice(b"\r\n");
        if cors.allow_credentials {
            out.extend_from_slice(b"access-control-allow-credentials: true\r\n");
        }
        if preflight {
            let _ = write!(
                out,
                "access-control-allow-methods: {}\r\n",
                cors.allow_methods
            );
            if !cors.allow_headers.is_empty() {
                let _ = write!(
                    out,
                    "access-control-allow-headers: {}\r\n",
                    cors.allow_headers
                );
            }
            if let Some(age) = cors.max_age {
                let _ = write!(out, "access-control-max-age: {}\r\n", age.as_secs());
            }
        } else if !cors.expose_headers.is_empty() {
            let _ = write!(
                out,
                "access-control-expose-headers: {}\r\n",
                cors.expose_headers
            );
        }
        preflight
    }

    /// The credentials phase: identity, authorization, then what the upstream gets.
    async fn authenticate(
        &mut self,
        worker: &Worker,
        snapshot: &Snapshot,
        route_name: &str,
        policy: &RoutePolicy,
    ) -> Result<Rc<Identity>, ProxyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let result = snapshot
            .auth
            .authenticate(
                &self.state.head,
                policy,
                &snapshot.config.consumers,
                worker.token_cache(),
                now,
            )
            .await;
        let (identity, place) = match result {
            Ok(found) => found,
            Err(failure) => {
                self.challenge(policy, &failure);
                crate::observe::auth_failure(route_name, failure.reason());
                return Err(ProxyError::Auth(failure));
            }
        };
        if policy.strip_credentials {
            match place {
                CredentialPlace::Field(i) => self.state.head.fields.drop_field(i),
                CredentialPlace::Query(method) => {
                    if let (Some(query), Some(name)) =
                        (self.state.head.query(), snapshot.auth.query_name(method))
                    {
                        self.state.query_buf.clear();
                        query_without(query, name.as_bytes(), &mut self.state.query_buf);
                        self.state.query_rewritten = true;
                    }
                }
                CredentialPlace::Cookie => {}
            }
        }
        self.identity_headers(snapshot, &identity);
        Ok(identity)
    }

    /// `WWW-Authenticate` for a refused request (RFC 6750 §3).
    fn challenge(&mut self, policy: &RoutePolicy, failure: &AuthFailure) {
        if *failure == AuthFailure::Unavailable {
            return;
        }
        let bearer = policy.auth.iter().any(|m| m.is_bearer());
        let out = &mut self.state.reply_headers;
        let scheme = if bearer { "Bearer" } else { "ApiKey" };
        let _ = write!(out, "www-authenticate: {scheme} realm=\"gateway\"");
        match failure {
            AuthFailure::Missing
            | AuthFailure::ConsumerNotAllowed
            | AuthFailure::ClaimMismatch
            | AuthFailure::Unavailable => {}
            AuthFailure::InvalidToken(reason) => {
                let _ = write!(
                    out,
                    ", error=\"invalid_token\", error_description=\"{reason}\""
                );
            }
            AuthFailure::UnknownApiKey => {
                let _ = write!(
                    out,
                    ", error=\"invalid_token\", error_description=\"unknown API key\""
                );
            }
            AuthFailure::InsufficientScope => {
                let _ = write!(
                    out,
                    ", error=\"insufficient_scope\", scope=\"{}\"",
                    policy.scopes.join(" ")
                );
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The verified identity as headers for the upstream.
    fn identity_headers(&mut self, snapshot: &Snapshot, identity: &Identity) {
        let auth = &snapshot.config.auth;
        let out = &mut self.state.upstream_headers;
        if let Some(consumer) = identity.consumer {
            let name = &snapshot.config.consumers[consumer].name;
            header(out, auth.consumer_header.as_bytes(), name.as_bytes());
        }
        // Identity values are header-safe by construction (see `identity_from_claims`).
        if let Some(subject) = identity.subject.as_deref() {
            header(out, auth.subject_header.as_bytes(), subject.as_bytes());
        }
        for provider in &auth.jwt {
            for (claim, name) in &provider.claim_headers {
                if let Some(value) = identity.claim(claim) {
                    header(out, name.as_bytes(), value.as_bytes());
                }
            }
        }
    }

    /// The rate-limit phase: the route's limit, then the consumer's.
    /// Usage metering: counts the request against its consumer's day and month, and
    /// refuses it (429, with the quota's headers) when the consumer's plan is spent.
    fn charge_quota(&mut self, snapshot: &Snapshot, route_index: usize) -> Result<(), ProxyError> {
        let Some(consumer) = self.state.consumer else {
            return Ok(());
        };
        let now = crate::metering::Period::now();
        let out = &mut self.state.reply_headers;
        match snapshot.meter.record(consumer, route_index, now) {
            QuotaDecision::Admitted {
                day_left,
                month_left,
            } => {
                let quota = snapshot.meter.quota(consumer);
                for (name, limit, left) in [
                    ("day", quota.per_day, day_left),
                    ("month", quota.per_month, month_left),
                ] {
                    if let (Some(limit), Some(left)) = (limit, left) {
                        let _ = write!(
                            out,
                            "x-quota-limit-{name}: {limit}\r\nx-quota-remaining-{name}: {left}\r\n"
                        );
                    }
                }
                Ok(())
            }
            QuotaDecision::Exhausted {
                period,
                limit,
                renews_in,
                first,
            } => {
                let _ = write!(
                    out,
                    "retry-after: {renews_in}\r\nx-quota-limit-{period}: {limit}\r\nx-quota-remaining-{period}: 0\r\nx-quota-reset-{period}: {renews_in}\r\n"
                );
                if first {
                    let name = &snapshot.config.consumers[consumer].name;
                    tracing::info!(consumer = %name, period, limit, "quota exhausted");
                    crate::webhooks::publish(crate::webhooks::Event::QuotaExhausted {
                        consumer: name.clone(),
                        period,
                        limit,
                    });
                }
                Err(ProxyError::QuotaExceeded(period))
            }
        }
    }

    fn rate_limit(
        &mut self,
        worker: &Worker,
        snapshot: &Snapshot,
        route: &RouteConfig,
        client: IpAddr,
        identity: Option<&Identity>,
    ) -> Result<(), ProxyError> {
        let consumer = identity
            .and_then(|i| i.consumer)
            .map(|c| &snapshot.config.consumers[c]);
        let limits = [
            route.policy.rate_limit.as_ref(),
            consumer.and_then(|c| c.rate_limit.as_ref()),
        ];
        if limits.iter().all(Option::is_none) {
            return Ok(());
        }
        let table = &worker.rate_table;
        let now = table.now_ns();
        let mut tightest: Option<Tightest> = None;
        for spec in limits.into_iter().flatten() {
            let hash = self.limit_key_hash(
                worker,
                spec,
                client,
                identity,
                consumer.map(|c| c.name.as_str()),
            );
            match spec.check(table, hash, now) {
                Decision::Allowed {
                    remaining,
                    reset_ns,
                } => {
                    if tightest.as_ref().is_none_or(|t| remaining < t.remaining) {
                        tightest = Some(Tightest {
                            limit: spec.limit(),
                            remaining,
                            reset_ns,
                        });
                    }
                }
                Decision::Limited {
                    retry_after_ns,
                    reset_ns,
                } => {
                    let out = &mut self.state.reply_headers;
                    let _ = write!(
                        out,
                        "retry-after: {}\r\nratelimit-limit: {}\r\nratelimit-remaining: 0\r\nratelimit-reset: {}\r\n",
                        ceil_secs(retry_after_ns).max(1),
                        spec.limit(),
                        ceil_secs(reset_ns)
                    );
                    crate::observe::limit_rejection(&route.name, "rate");
                    return Err(ProxyError::RateLimited);
                }
            }
        }
        if let Some(t) = tightest {
            let mut number = itoa::Buffer::new();
            let out = &mut self.state.reply_headers;
            header(out, b"ratelimit-limit", number.format(t.limit).as_bytes());
            header(
                out,
                b"ratelimit-remaining",
                number.format(t.remaining).as_bytes(),
            );
            header(
                out,
                b"ratelimit-reset",
                number.format(ceil_secs(t.reset_ns)).as_bytes(),
            );
        }
        Ok(())
    }

    fn limit_key_hash(
        &self,
        worker: &Worker,
        spec: &LimitSpec,
        client: IpAddr,
        identity: Option<&Identity>,
        consumer: Option<&str>,
    ) -> u64 {
        let table = &worker.rate_table;
        match &spec.key {
            LimitKey::ClientIp => match client {
                IpAddr::V4(v4) => table.key_hash(&spec.name, &v4.octets()),
                IpAddr::V6(v6) => table.key_hash(&spec.name, &v6.octets()),
            },
            LimitKey::Consumer => table.key_hash(&spec.name, consumer.unwrap_or("").as_bytes()),
            LimitKey::Route => table.key_hash(&spec.name, b""),
            LimitKey::Header(name) => table.key_hash(
                &spec.name,
                self.state.head.fields.get(name.as_bytes()).unwrap_or(b""),
            ),
            LimitKey::Claim(name) => table.key_hash(
                &spec.name,
                identity
                    .and_then(|i| i.claim(name))
                    .unwrap_or("")
                    .as_bytes(),
            ),
        }
    }
}

/// The `for=` address of one `Forwarded` element: `for=192.0.2.60`,
/// `for="192.0.2.60:4711"`, `for="[2001:db8::1]:4711"`; `None` for `unknown`,
/// obfuscated names and anything malformed.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(element).ok()?;
    let value = text.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = value.trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    match value.split_once(':') {
        Some((v4, _port)) => v4.parse().ok(),
        None => value.parse().ok(),
    }
}

/// Per-route IP lists: deny wins; a non-empty allow list admits only its members.
fn ip_admitted(policy: &RoutePolicy, client: IpAddr) -> bool {
    let contains = |list: &[IpNet]| list.iter().any(|net| net.contains(&client));
    !contains(&policy.ip_deny) && (policy.ip_allow.is_empty() || contains(&policy.ip_allow))
}

fn origin_allowed(cors: &CorsConfig, origin: &[u8]) -> bool {
    let ends_with = |text: &[u8], suffix: &[u8]| {
        text.len() >= suffix.len() && text[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    cors.any_origin
        || cors
            .origins
            .iter()
            .any(|o| origin.eq_ignore_ascii_case(o.as_bytes()))
        || cors.origin_patterns.iter().any(|(scheme, suffix)| {
            origin.len() > scheme.len() + suffix.len()
                && origin[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
                && ends_with(&origin[scheme.len()..], suffix.as_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::forwarded_for;

    #[test]
    fn forwarded_elements_give_their_for_address() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().ok();
        assert_eq!(
            forwarded_for(b"for=192.0.2.60;proto=http;by=203.0.113.43"),
            ip("192.0.2.60")
        );
        assert_eq!(
            forwarded_for(b"For=\"[2001:db8:cafe::17]:4711\""),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            forwarded_for(b"proto=https; for=\"198.51.100.17:80\""),
            ip("198.51.100.17")
        );
        assert_eq!(forwarded_for(b"for=unknown"), None);
        assert_eq!(forwarded_for(b"for=_hidden"), None);
        assert_eq!(forwarded_for(b"by=203.0.113.43"), None);
    }
}
