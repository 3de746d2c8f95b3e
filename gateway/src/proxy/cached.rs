//! Phase "cache" for routes with `cache`: GET and HEAD are answered from the worker's
//! store when a fresh response is there (`X-Cache: HIT`), or a stale one within its
//! `stale-while-revalidate` window (`STALE`, refreshed in the background); otherwise the
//! request goes upstream: conditionally when a stale response can be revalidated (a 304
//! refreshes it: `REVALIDATED`), plainly on a miss (`MISS`, the body copied into the
//! store on its way to the client when the response may be stored). Concurrent misses for
//! one key on a worker wait for the first one's fetch. When the upstream fails and a
//! stale response is within its `stale-if-error` window, that one is served instead.

use std::{rc::Rc, time::Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::{
    Snapshot, Worker,
    connection::Connection,
    error::ProxyError,
    io::{SendNow, write_all_within},
    serialize,
};
use crate::{
    cache::{
        coalesce::{Leader, Role},
        entry::{RequestSide, refreshed, stored_response, validators},
        policy::{RequestDirectives, not_modified},
        store::Stored,
    },
    config::{CacheKeyPart, Limits, RouteCache, RouteConfig},
    http::{fields::cookie_value, request::RequestBody},
    upstream::fetch::fetch,
};

/// What the cache does with the request being forwarded.
pub(super) struct CacheRequest {
    pub hash: u64,
    /// The stale response being revalidated, if any.
    pub stale: Option<Rc<Stored>>,
    /// Held while this request fetches the key; dropping it releases the waiting ones.
    pub _leader: Option<Leader>,
    /// The response is being copied into the store.
    pub storing: bool,
}

/// Statuses of a cache answer, for `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheResult {
    Hit = 0,
    Stale = 1,
    Revalidated = 2,
    Miss = 3,
    Bypass = 4,
}

impl CacheResult {
    /// Index into the metrics' result labels.
    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}

/// The hash the store files a key under.
fn key_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::fast::FixedState::with_seed(0x6361_6368_6521).hash_one(key)
}

impl<S: AsyncReadRent + AsyncWriteRent + SendNow> Connection<S> {
    /// Serves a GET or HEAD on a caching route; returns whether the connection stays open.
    pub(super) async fn forward_cached(
        &mut self,
        worker: &Worker,
        snapshot: &Snapshot,
        route: &RouteConfig,
        upstream: usize,
        limits: &Limits,
        cache: &RouteCache,
    ) -> Result<bool, ProxyError> {
        self.build_cache_key(cache);
        let hash = key_hash(&self.state.cache_key);
        let directives = RequestDirectives::parse(&self.state.head.fields);
        // Client validators are answered from what the gateway holds; the upstream only
        // ever sees the gateway's own.
        for i in 0..self.state.head.fields.len() {
            let name = self.state.head.fields.name(i);
            if name.eq_ignore_ascii_case(b"if-none-match")
                || name.eq_ignore_ascii_case(b"if-modified-since")
            {
                self.state.head.fields.drop_field(i);
            }
        }
        if directives.no_store {
            self.cache_label(worker, CacheResult::Bypass);
            return self
                .forward(worker, snapshot, route, upstream, limits)
                .await;
        }
        let mut waited = false;
        let request = loop {
            let now = Instant::now();
            let found = worker.cache().borrow().lookup(
                hash,
                &self.state.cache_key,
                &self.state.head.fields,
            );
            let Some(entry) = found else {
                match worker.cache_flights.join(hash) {
                    Role::Lead(leader) => {
                        break CacheRequest {
                            hash,
                            stale: None,
                            _leader: Some(leader),
                            storing: false,
                        };
                    }
                    Role::Follow(flight) if !waited => {
                        waited = true;
                        let wait = snapshot.config.upstreams[upstream].read_timeout;
                        let _ = monoio::time::timeout(wait, flight.landed()).await;
                        continue;
                    }
                    Role::Follow(_) => {
                        break CacheRequest {
                            hash,
                            stale: None,
                            _leader: None,
                            storing: false,
                        };
                    }
                }
            };
            let young_enough = directives
                .max_age
                .is_none_or(|max| entry.age(now).as_secs() <= max);
            if entry.is_fresh(now) && !directives.no_cache && young_enough {
                return Ok(self
                    .serve_stored(worker, &entry, CacheResult::Hit, limits)
                    .await);
            }
            let usable_stale = !entry.must_revalidate && !directives.no_cache;
            if usable_stale && entry.staleness(now) <= entry.stale_while_revalidate {
                self.refresh_in_background(worker, snapshot, upstream, cache, &entry, hash);
                return Ok(self
                    .serve_stored(worker, &entry, CacheResult::Stale, limits)
                    .await);
            }
            let leader = match worker.cache_flights.join(hash) {
                Role::Lead(leader) => Some(leader),
                Role::Follow(flight) if !waited => {
                    waited = true;
                    let wait = snapshot.config.upstreams[upstream].read_timeout;
                    let _ = monoio::time::timeout(wait, flight.landed()).await;
                    continue;
                }
                Role::Follow(_) => None,
            };
            validators(&entry, &mut self.state.upstream_headers);
            break CacheRequest {
                hash,
                stale: Some(entry),
                _leader: leader,
                storing: false,
            };
        };
        self.state.cache_request = Some(request);
        let result = self
            .forward(worker, snapshot, route, upstream, limits)
            .await;
        let request = self.state.cache_request.take();
        match result {
            Err(error) if !self.state.response_started => {
                let now = Instant::now();
                match request.and_then(|r| r.stale) {
                    Some(entry) if entry.staleness(now) <= entry.stale_if_error => {
                        tracing::debug!(%error, "upstream failed; serving the stale response");
                        Ok(self
                            .serve_stored(worker, &entry, CacheResult::Stale, limits)
                            .await)
                    }
                    _ => Err(error),
                }
            }
            other => other,
        }
    }

    /// Writes the route's cache key for this request into `cache_key`.
    fn build_cache_key(&mut self, cache: &RouteCache) {
        let key = &mut self.state.cache_key;
        key.clear();
        for part in &cache.key {
            match part {
                CacheKeyPart::Method => {
                    // HEAD is answered from GET's responses.
                    key.extend_from_slice(b"GET");
                }
                CacheKeyPart::Host => key.extend_from_slice(&self.state.head.host),
                CacheKeyPart::Path => key.extend_from_slice(&self.state.head.path),
                CacheKeyPart::Query => {
                    if let Some(query) = self.state.head.query() {
                        key.push(b'?');
                        key.extend_from_slice(query);
                    }
                }
                CacheKeyPart::Header(name) => {
                    key.extend_from_slice(b"|");
                    key.extend_from_slice(name.as_bytes());
                    key.push(b'=');
                    if let Some(value) = self.state.head.fields.get(name.as_bytes()) {
                        key.extend_from_slice(value);
                    }
                }
                CacheKeyPart::Cookie(name) => {
                    key.extend_from_slice(b"|cookie:");
                    key.extend_from_slice(name.as_bytes());
                    key.push(b'=');
                    if let Some(value) = cookie_value(&self.state.head.fields, name.as_bytes()) {
                        key.extend_from_slice(value);
                    }
                }
            }
            if matches!(part, CacheKeyPart::Method) {
                key.push(b' ');
            }
        }
    }

    /// Counts the result and tells the client (`X-Cache`) on whatever answer follows.
    fn cache_label(&mut self, worker: &Worker, result: CacheResult) {
        self.state.reply_headers.extend_from_slice(b"x-cache: ");
        self.state
            .reply_headers
            .extend_from_slice(result.label().as_bytes());
        self.state.reply_headers.extend_from_slice(b"\r\n");
        worker.metrics(|m| m.cache_result(self.state.route, result.index()));
    }

    /// Answers from a stored response (a `304` when the client's validators match).
    async fn serve_stored(
        &mut self,
        worker: &Worker,
        stored: &Stored,
        result: CacheResult,
        limits: &Limits,
    ) -> bool {
        self.cache_label(worker, result);
        let unchanged = stored.status == 200
            && (self.state.head.fields.get(b"if-none-match").is_some()
                || self.state.head.fields.get(b"if-modified-since").is_some())
            && not_modified(
                &self.state.head.fields,
                stored.etag.as_deref(),
                stored.last_modified.as_deref(),
            );
        let status = if unchanged { 304 } else { stored.status };
        let close = !self.state.head.keep_alive || worker.drain.is_draining();
        let Some(close) = self.settle_pending_body(close, limits).await else {
            return false;
        };
        let age = stored.age(Instant::now()).as_secs();
        let with_body = !unchanged && !self.state.head.is_head();
        let out = &mut self.state.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(crate::http::reason_phrase(status).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&stored.head);
        out.extend_from_slice(b"age: ");
        out.extend_from_slice(itoa::Buffer::new().format(age).as_bytes());
        out.extend_from_slice(b"\r\n");
        worker.with_snapshot(|s| {
            serialize::header(
                out,
                b"via",
                format!("1.1 {}", s.config.gateway.via).as_bytes(),
            )
        });
        serialize::header(out, b"x-request-id", &self.state.request_id);
        if !unchanged && stored.status != 204 {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(stored.body.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.state.reply_headers);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if with_body {
            out.extend_from_slice(&stored.body);
            self.state.bytes_out = stored.body.len() as u64;
        }
        self.state.status = status;
        self.state.response_started = true;
        let sent = write_all_within(&mut self.stream, &mut self.state.out, limits.idle_timeout)
            .await
            .is_ok();
        sent && !close
    }

    /// Stale-while-revalidate: refreshes `stored` from the upstream in a task of its own
    /// (one at a time per key and worker), while the stale response is served.
    fn refresh_in_background(
        &self,
        worker: &Worker,
        snapshot: &Snapshot,
        upstream: usize,
        cache: &RouteCache,
        stored: &Rc<Stored>,
        hash: u64,
    ) {
        let Role::Lead(leader) = worker.cache_flights.join(hash) else {
            return;
        };
        let Some(target) = self.side_target(worker, snapshot, upstream) else {
            return;
        };
        let config = &snapshot.upstreams.entries[upstream].config;
        let mut request = Vec::with_capacity(1024);
        serialize::request_head(
            &mut request,
            &self.state.head,
            self.state.head.method(),
            &self.state.path,
            RequestBody::None,
            &self.forwarding(snapshot),
        );
        request.truncate(request.len() - 2);
        validators(stored, &mut request);
        request.extend_from_slice(b"\r\n");
        let addr = config.targets[target].addr;
        let tls = config.tls.clone();
        let timeout = config.connect_timeout + config.read_timeout;
        let store = worker.cache().clone();
        let stored = stored.clone();
        let cache = cache.clone();
        let fields = self.state.head.fields.clone();
        let authorization = self.state.head.fields.get(b"authorization").is_some();
        let max_body = store.borrow().max_entry;
        monoio::spawn(async move {
            let _leader = leader;
            let fetched = match fetch(addr, tls.as_ref(), request, false, timeout, max_body).await {
                Ok(fetched) => fetched,
                Err(error) => {
                    tracing::debug!(%error, "background cache refresh failed");
                    return;
                }
            };
            let fresh = if fetched.head.status == 304 {
                Some(refreshed(&stored, &fetched.head.fields, &cache))
            } else {
                let side = RequestSide {
                    key: &stored.key,
                    fields: &fields,
                    authorization,
                };
                stored_response(&side, &fetched.head, fetched.body, &cache)
            };
            if let Some(fresh) = fresh {
                store.borrow_mut().insert(hash, fresh);
            }
        });
    }

    /// After the upstream answered a revalidation: a `304` refreshes the stale response
    /// and serves it; a 5xx within its `stale-if-error` window serves it as it is.
    /// Returns whether the connection stays open when the cache answered.
    pub(super) async fn answer_from_cache(
        &mut self,
        worker: &Worker,
        route: &RouteConfig,
        limits: &Limits,
    ) -> Option<bool> {
        let request = self.state.cache_request.as_ref()?;
        let (stale, hash) = (request.stale.clone()?, request.hash);
        let status = self.state.response.status;
        if status == 304 {
            let cache = route.traffic.cache.as_ref()?;
            let fresh = refreshed(&stale, &self.state.response.fields, cache);
            worker.cache().borrow_mut().insert(hash, fresh.clone());
            return Some(
                self.serve_stored(worker, &fresh, CacheResult::Revalidated, limits)
                    .await,
            );
        }
        if status >= 500 && stale.staleness(Instant::now()) <= stale.stale_if_error {
            return Some(
                self.serve_stored(worker, &stale, CacheResult::Stale, limits)
                    .await,
            );
        }
        None
    }

    /// Before a response from the upstream is relayed on a caching route: labels it a
    /// miss and, when it may be stored, returns the most body bytes to copy aside.
    pub(super) fn prepare_store(&mut self, worker: &Worker) -> Option<usize> {
        let request = self.state.cache_request.as_mut()?;
        self.state
            .reply_headers
            .extend_from_slice(b"x-cache: MISS\r\n");
        worker.metrics(|m| m.cache_result(self.state.route, CacheResult::Miss.index()));
        let max = worker.cache().borrow().max_entry;
        let storable = !self.state.head.is_head()
            && self
                .state
                .response
                .declared_length
                .is_none_or(|n| n <= max as u64)
            && matches!(
                self.state.response.status,
                200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 501
            );
        request.storing = storable;
        storable.then(|| {
            self.state.cache_body.clear();
            max
        })
    }

    /// After the whole body went to the client: files the response when it may be stored.
    pub(super) fn store_response(&mut self, worker: &Worker, cache: &RouteCache) {
        let Some(request) = self.state.cache_request.as_ref().filter(|r| r.storing) else {
            return;
        };
        let hash = request.hash;
        let side = RequestSide {
            key: &self.state.cache_key,
            fields: &self.state.head.fields,
            authorization: self.state.head.fields.get(b"authorization").is_some(),
        };
        let body = std::mem::take(&mut self.state.cache_body);
        if let Some(stored) = stored_response(&side, &self.state.response, body, cache) {
            worker.cache().borrow_mut().insert(hash, stored);
        }
    }
}
