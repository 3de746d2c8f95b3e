//! Request routing: a table compiled once per config snapshot, so matching stays cheap
//! with hundreds of routes.
//!
//! Precedence ("most specific wins, then declaration order"): an exact host beats a
//! wildcard host (longer suffix first), which beats routes without a host. Within a host,
//! an exact path beats a path prefix (longer first), which beats a path regex, which
//! beats the catch-all prefix `/` (also what a route without a path has). Among
//! routes with the same host and path, the one with more conditions (methods, headers,
//! query) is tried first; remaining ties go to the earlier declaration. The first
//! candidate whose every condition holds is the route.

mod version;

use std::collections::HashMap;

use crate::{
    config::{
        Config, HostMatch, PathMatch, RouteConfig, ValueCondition, ValueMatch, VersionSource,
        VersionTarget,
    },
    http::request::RequestHead,
};

/// Candidates for one host, by path kind.
#[derive(Debug, Default)]
struct PathTable {
    exact: HashMap<Vec<u8>, Vec<usize>>,
    /// Prefix routes keyed by their first path segment (a prefix matches whole
    /// segments, so only routes sharing the request's first segment can match); each
    /// list sorted by prefix length (longest first), then conditions, then declaration.
    prefix: HashMap<Vec<u8>, Vec<usize>>,
    /// Routes on the prefix `/`, tried last (after regexes).
    root_prefix: Vec<usize>,
    regex: Vec<usize>,
}

/// The compiled routing table of one config snapshot.
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteConfig>,
    exact_hosts: HashMap<Vec<u8>, PathTable>,
    /// `(".example.com", table)`, longest suffix first.
    wildcard_hosts: Vec<(Vec<u8>, PathTable)>,
    any_host: PathTable,
}

impl Router {
    /// Compiles the routes of `config`.
    pub fn new(config: &Config) -> Self {
        let routes = config.routes.clone();
        let mut exact_hosts: HashMap<Vec<u8>, PathTable> = HashMap::new();
        let mut wildcard_hosts: Vec<(Vec<u8>, PathTable)> = Vec::new();
        let mut any_host = PathTable::default();
        for (index, route) in routes.iter().enumerate() {
            let table = match &route.host {
                Some(HostMatch::Exact(host)) => {
                    exact_hosts.entry(host.as_bytes().to_vec()).or_default()
                }
                Some(HostMatch::Suffix(suffix)) => {
                    match wildcard_hosts
                        .iter()
                        .position(|(s, _)| s == suffix.as_bytes())
                    {
                        Some(i) => &mut wildcard_hosts[i].1,
                        None => {
                            wildcard_hosts.push((suffix.as_bytes().to_vec(), PathTable::default()));
                            &mut wildcard_hosts.last_mut().expect("just pushed").1
                        }
                    }
                }
                None => &mut any_host,
            };
            match &route.path {
                PathMatch::Exact(p) => table
                    .exact
                    .entry(p.as_bytes().to_vec())
                    .or_default()
                    .push(index),
                PathMatch::Prefix(p) if p == "/" => table.root_prefix.push(index),
                PathMatch::Prefix(p) => table
                    .prefix
                    .entry(first_segment(p.as_bytes()).to_vec())
                    .or_default()
                    .push(index),
                PathMatch::Regex(_) => table.regex.push(index),
            }
        }
        let order = |routes: &[RouteConfig], list: &mut Vec<usize>| {
            list.sort_by_key(|&i| {
                let prefix_len = match &routes[i].path {
                    PathMatch::Prefix(p) => p.len(),
                    _ => 0,
                };
                (
                    std::cmp::Reverse(prefix_len),
                    std::cmp::Reverse(condition_count(&routes[i])),
                    i,
                )
            });
        };
        let tables = exact_hosts
            .values_mut()
            .chain(wildcard_hosts.iter_mut().map(|(_, t)| t))
            .chain(std::iter::once(&mut any_host));
        for table in tables {
            order(&routes, &mut table.root_prefix);
            order(&routes, &mut table.regex);
            for list in table.exact.values_mut().chain(table.prefix.values_mut()) {
                order(&routes, list);
            }
        }
        wildcard_hosts.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Self {
            routes,
            exact_hosts,
            wildcard_hosts,
            any_host,
        }
    }

    /// The route for `req`, as an index into [`Router::routes`].
    pub fn find(&self, req: &RequestHead) -> Option<usize> {
        let exact = self.exact_hosts.get(req.host.as_slice());
        let wildcards = self
            .wildcard_hosts
            .iter()
            .filter(|(suffix, _)| req.host.len() > suffix.len() && req.host.ends_with(suffix))
            .map(|(_, table)| table);
        exact
            .into_iter()
            .chain(wildcards)
            .chain(std::iter::once(&self.any_host))
            .find_map(|table| self.find_in(table, req))
    }

    /// The compiled routes, in declaration order.
    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    fn find_in(&self, table: &PathTable, req: &RequestHead) -> Option<usize> {
        let exact = table.exact.get(req.routing_path()).into_iter().flatten();
        let bucket = table
            .prefix
            .get(first_segment(req.routing_path()))
            .into_iter()
            .flatten();
        let prefix = bucket.filter(|&&i| match &self.routes[i].path {
            PathMatch::Prefix(p) => prefix_matches(p.as_bytes(), req.routing_path()),
            _ => false,
        });
        let regex = table.regex.iter().filter(|&&i| match &self.routes[i].path {
            PathMatch::Regex(re) => re.is_match(req.routing_path()),
            _ => false,
        });
        let root = table.root_prefix.iter();
        exact
            .chain(prefix)
            .chain(regex)
            .chain(root)
            .copied()
            .find(|&i| conditions_hold(&self.routes[i], req))
    }

    /// Writes the path to forward for `route` into `out`: the normalized path after the
    /// route's `strip_prefix` or `rewrite`.
    pub fn upstream_path(route: &RouteConfig, path: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match (&route.path, &route.rewrite, route.strip_prefix) {
            (PathMatch::Prefix(prefix), None, true) => {
                let rest = &path[prefix.trim_end_matches('/').len().min(path.len())..];
                if !rest.starts_with(b"/") {
                    out.push(b'/');
                }
                out.extend_from_slice(rest);
            }
            (PathMatch::Prefix(prefix), Some(rewrite), _) => {
                let rest = &path[prefix.trim_end_matches('/').len().min(path.len())..];
                out.extend_from_slice(rewrite.as_bytes());
                let rest = if rewrite.ends_with('/') {
                    rest.strip_prefix(b"/").unwrap_or(rest)
                } else {
                    rest
                };
                out.extend_from_slice(rest);
            }
            (PathMatch::Exact(_), Some(rewrite), _) => out.extend_from_slice(rewrite.as_bytes()),
            (PathMatch::Regex(re), Some(rewrite), _) => {
                out.extend_from_slice(&re.replace(path, rewrite.as_bytes()));
            }
            _ => Self::versioned_path(route, path, out),
        }
    }

    /// The path with the route's version written into it or moved out of it.
    fn versioned_path(route: &RouteConfig, path: &[u8], out: &mut Vec<u8>) {
        let Some(version) = &route.version else {
            out.extend_from_slice(path);
            return;
        };
        match (&version.from, &version.to) {
            (VersionSource::Path, VersionTarget::Header(_)) => {
                let segment = 1 + version::path_version(path).map_or(0, |v| v.len() + 1);
                let rest = &path[segment.min(path.len())..];
                if !rest.starts_with(b"/") {
                    out.push(b'/');
                }
                out.extend_from_slice(rest);
            }
            (_, VersionTarget::Path) => {
                out.extend_from_slice(b"/v");
                out.extend_from_slice(version.value.as_bytes());
                if path != b"/" {
                    out.extend_from_slice(path);
                }
            }
            _ => out.extend_from_slice(path),
        }
    }
}

/// `/api/v1` → `api`; `/` → empty.
fn first_segment(path: &[u8]) -> &[u8] {
    let rest = path.strip_prefix(b"/").unwrap_or(path);
    &rest[..memchr::memchr(b'/', rest).unwrap_or(rest.len())]
}

fn condition_count(route: &RouteConfig) -> usize {
    usize::from(!route.methods.is_empty())
        + usize::from(route.websocket.is_some())
        + usize::from(route.version.is_some())
        + route.headers.len()
        + route.query.len()
        + route.client_cert.len()
}

/// Prefix match at a segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
pub fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || prefix.ends_with(b"/") || path[prefix.len()] == b'/')
}

fn conditions_hold(route: &RouteConfig, req: &RequestHead) -> bool {
    (route.methods.is_empty() || route.methods.iter().any(|m| m.as_bytes() == req.method()))
        && route.websocket.is_none_or(|ws| ws == req.websocket)
        && route
            .version
            .as_ref()
            .is_none_or(|v| version::matches(v, req))
        && route.headers.iter().all(|m| header_holds(m, req))
        && route
            .client_cert
            .iter()
            .all(|m| client_cert_holds(m, req.client_cert.as_deref()))
        && route
            .query
            .iter()
            .all(|m| query_holds(m, req.query().unwrap_or_default()))
}

fn header_holds(matcher: &ValueMatch, req: &RequestHead) -> bool {
    let mut values = req.fields.get_all(matcher.name.as_bytes());
    match &matcher.condition {
        ValueCondition::Present(want) => values.next().is_some() == *want,
        ValueCondition::Exact(v) => values.any(|value| value == v.as_bytes()),
        ValueCondition::Regex(re) => values.any(|value| re.is_match(value)),
    }
}

/// A `client_cert` condition: `subject` is the certificate's subject DN, `san` any of its
/// subjectAltName entries (`URI:…`, `DNS:…`); `present = false` requires no certificate.
fn client_cert_holds(matcher: &ValueMatch, cert: Option<&crate::tls::ClientIdentity>) -> bool {
    let subject = matcher.name == "subject";
    let mut values = cert.into_iter().flat_map(|cert| {
        let san = if subject { &[][..] } else { &cert.san[..] };
        subject
            .then_some(cert.subject.as_str())
            .into_iter()
            .chain(san.iter().map(String::as_str))
    });
    match &matcher.condition {
        ValueCondition::Present(want) => cert.is_some() == *want,
        ValueCondition::Exact(v) => values.any(|value| value == v),
        ValueCondition::Regex(re) => values.any(|value| re.is_match(value.as_bytes())),
    }
}

fn query_holds(matcher: &ValueMatch, query: &[u8]) -> bool {
    let mut values = query.split(|&b| b == b'&').filter_map(|pair| {
        let (name, value) = match memchr::memchr(b'=', pair) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (percent_decode(name) == matcher.name.as_bytes()).then(|| percent_decode(value))
    });
    match &matcher.condition {
        ValueCondition::Present(want) => values.next().is_some() == *want,
        ValueCondition::Exact(v) => values.any(|value| value == v.as_bytes()),
        ValueCondition::Regex(re) => values.any(|value| re.is_match(&value)),
    }
}

/// Form-style decoding of a query component (`+` is a space); invalid escapes stay as is.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => {
                match std::str::from_utf8(&input[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests;
