//! Phases "forward" through "pool or close": the try loop (a target and a connection
//! from [`super::attempt`]), sending the request head and streaming its body, reading the
//! response head, the answers that end a try early (a WebSocket switch, a cache
//! revalidation, a retried status), relaying the response body, and parking the
//! upstream connection when it is clean.

use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::{
    Snapshot, Worker,
    attempt::{Tries, park, within},
    connection::{BodyState, Connection},
    error::ProxyError,
    io::{IoFailure, SendNow, write_all_within},
    relay::{Relay, RelayError, Tee},
    serialize::{self, OutFraming},
};
use crate::{
    config::{Limits, RouteConfig, UpstreamConfig},
    http::{
        FramingError,
        head::{HeadScanner, Scan},
        request::RequestBody,
        response::ResponseBody,
    },
    upstream::UpstreamStream,
};

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How one try failed, for the route's retry conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// The connection broke after the request went out, before any response byte.
    Reset,
    /// No response head in time.
    Timeout,
    /// Anything else: not retried.
    Other,
}

/// A try's failure. `unanswered`: no response byte came back, so on a pooled connection
/// the upstream had most likely closed it while idle and never saw the request.
struct ExchangeError {
    error: ProxyError,
    unanswered: bool,
    kind: FailureKind,
}

impl From<ProxyError> for ExchangeError {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            unanswered: false,
            kind: FailureKind::Other,
        }
    }
}

fn upstream_io(failure: IoFailure) -> ProxyError {
    match failure {
        IoFailure::Timeout => ProxyError::UpstreamTimeout,
        IoFailure::Io(e) => ProxyError::UpstreamIo(e),
    }
}

fn downstream_io(failure: IoFailure) -> ProxyError {
    match failure {
        IoFailure::Timeout => ProxyError::BodyTimeout,
        IoFailure::Io(e) => ProxyError::Downstream(e),
    }
}

impl<S: AsyncReadRent + AsyncWriteRent + SendNow> Connection<S> {
    /// Forwards the current request on `route`, retrying per its policy; returns
    /// whether the client connection stays open.
    pub(super) async fn forward(
        &mut self,
        worker: &Worker,
        snapshot: &Snapshot,
        route: &RouteConfig,
        upstream_index: usize,
        limits: &Limits,
    ) -> Result<bool, ProxyError> {
        let upstream = &snapshot.upstreams.entries[upstream_index];
        let config = &upstream.config;
        let policy = &route.traffic.retry;
        let key_hash = self.hash_key(config);
        // The balancers and pools this request may use: those of the snapshot it runs
        // on. After a reload they are gone, and the request only finishes what it has.
        let generation = worker.generation();
        let health = &snapshot.upstreams.health;
        let now = self.state.started;
        let mut tries = Tries {
            failed: 0,
            avoid: 0,
            fresh_only: false,
            deadline: route.traffic.timeout.map(|t| now + t),
        };
        worker.upstream_state(generation, |state| {
            state.retry_budgets[upstream_index].record_request(now)
        });
        self.plan_mirror(worker, route);
        if self.state.upstream_buf.capacity() == 0 {
            self.state.upstream_buf.provide(worker.lend_buffer());
        }
        loop {
            let target = self.pick_target(
                worker,
                generation,
                snapshot,
                upstream_index,
                key_hash,
                &tries,
            )?;
            let global = upstream.first_target + target;
            self.state.target = Some(config.targets[target].addr);
            let (mut conn, reused) = match self
                .upstream_connection(worker, generation, upstream_index, upstream, target, &tries)
                .await
            {
                Ok(acquired) => acquired,
                Err(error) => {
                    let connect_failed = matches!(error, ProxyError::Connect(_));
                    if connect_failed {
                        self.target_outcome(health, config, global, false);
                    }
                    tries.failed += 1;
                    if connect_failed
                        && policy.on_connect_failure
                        && self.may_retry(worker, generation, upstream_index, policy, &tries)
                    {
                        tracing::debug!(%error, "connect failed; retrying");
                        tries.avoid(target);
                        self.back_off(worker, policy, &tries).await;
                        continue;
                    }
                    if tries.deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(ProxyError::UpstreamTimeout);
                    }
                    return Err(error);
                }
            };
            worker.upstream_state(generation, |state| {
                state.balancers[upstream_index].started(target)
            });
            // Only the latency-aware balancer pays for reading the clock.
            let started =
                matches!(config.balance, crate::config::Balance::P2cEwma).then(Instant::now);
            let head = self
                .exchange_head(
                    worker,
                    &mut conn.stream,
                    snapshot,
                    config,
                    route,
                    &tries,
                    limits,
                )
                .await;
            if let Err(ExchangeError {
                error,
                unanswered,
                kind,
            }) = head
            {
                worker.upstream_state(generation, |state| {
                    state.balancers[upstream_index].finished(target, None)
                });
                let resendable = self.body_untouched();
                // A pooled connection the upstream had already closed: the request
                // never reached it, so it is resent once on a fresh connection.
                if reused && unanswered && resendable && !tries.fresh_only {
                    tracing::debug!(%error, "stale pooled connection; retrying on a new one");
                    tries.fresh_only = true;
                    continue;
                }
                let upstream_fault = matches!(
                    error,
                    ProxyError::UpstreamTimeout
                        | ProxyError::UpstreamIo(_)
                        | ProxyError::UpstreamClosed
                        | ProxyError::UpstreamFraming(_)
                );
                if upstream_fault {
                    self.target_outcome(health, config, global, false);
                }
                tries.failed += 1;
                let retry_on = match kind {
                    FailureKind::Reset => policy.on_reset,
                    FailureKind::Timeout => policy.on_timeout,
                    FailureKind::Other => false,
                };
                if retry_on && self.may_retry(worker, generation, upstream_index, policy, &tries) {
                    tracing::debug!(%error, "try failed; retrying");
                    tries.avoid(target);
                    self.back_off(worker, policy, &tries).await;
                    continue;
                }
                return Err(error);
            }
            let status = self.state.response.status;
            if let Some(keep_alive) = self.answer_from_cache(worker, route, limits).await {
                worker.upstream_state(generation, |state| {
                    state.balancers[upstream_index].finished(target, None)
                });
                self.target_outcome(health, config, global, status < 500);
                let clean = status == 304
                    && self.state.response.reusable
                    && self.state.upstream_buf.is_empty();
                if clean {
                    park(worker, generation, global, conn, config);
                } else {
                    self.state
                        .upstream_buf
                        .consume(self.state.upstream_buf.len());
                }
                return Ok(keep_alive);
            }
            self.strip_response_headers(route);
            if self.state.response.switches_protocol() {
                // A WebSocket handshake accepted: the connection leaves HTTP and becomes
                // a tunnel once this request is accounted for.
                worker.upstream_state(generation, |state| {
                    state.balancers[upstream_index].finished(target, None)
                });
                self.target_outcome(health, config, global, true);
                self.switch_protocols(&snapshot.config.gateway.via, limits)
                    .await?;
                self.state.tunnel = Some(conn.stream);
                return Ok(false);
            }
            if policy.on_statuses.contains(&status) {
                tries.failed += 1;
                if self.may_retry(worker, generation, upstream_index, policy, &tries) {
                    tracing::debug!(status, "upstream answered a retried status; retrying");
                    worker.upstream_state(generation, |state| {
                        state.balancers[upstream_index].finished(target, None)
                    });
                    self.target_outcome(health, config, global, !matches!(status, 502..=504));
                    // The response is not read: its connection closes.
                    self.state
                        .upstream_buf
                        .consume(self.state.upstream_buf.len());
                    drop(conn);
                    tries.avoid(target);
                    self.back_off(worker, policy, &tries).await;
                    continue;
                }
            }
            let via = &snapshot.config.gateway.via;
            let result = match &route.mediation {
                Some(mediation) if mediation.rewrites_response() => {
                    self.relay_mediated(
                        &mut conn.stream,
                        config,
                        limits,
                        worker,
                        via,
                        route,
                        mediation,
                    )
                    .await
                }
                _ => {
                    self.relay_response(&mut conn.stream, config, limits, worker, via, route)
                        .await
                }
            };
            let latency = started.filter(|_| result.is_ok()).map(|s| s.elapsed());
            worker.upstream_state(generation, |state| {
                state.balancers[upstream_index].finished(target, latency)
            });
            let (upstream_reusable, keep_alive) = match result {
                Ok(done) => done,
                Err(error) => {
                    if matches!(
                        error,
                        ProxyError::UpstreamTimeout
                            | ProxyError::UpstreamIo(_)
                            | ProxyError::UpstreamClosed
                            | ProxyError::UpstreamFraming(_)
                    ) {
                        self.target_outcome(health, config, global, false);
                    }
                    return Err(error);
                }
            };
            self.target_outcome(health, config, global, !matches!(status, 502..=504));
            // With requests waiting for a connection slot, an idle connection closes
            // instead of parking, so its place goes to one of them (on any worker).
            let waiters = upstream
                .connections
                .as_ref()
                .is_some_and(|limits| limits.has_waiters());
            if upstream_reusable && !waiters {
                park(worker, generation, global, conn, config);
            }
            return Ok(keep_alive);
        }
    }

    /// Passive outlier detection: tells the shared health table how target `global` did.
    fn target_outcome(
        &self,
        health: &crate::upstream::health::Health,
        config: &UpstreamConfig,
        global: usize,
        success: bool,
    ) {
        let Some(outlier) = &config.outlier else {
            return;
        };
        let now = health.now_ms();
        if success {
            health.record_success(global, outlier, now);
        } else if let Some(backoff) = health.record_failure(global, outlier, now) {
            tracing::warn!(
                upstream = %config.name,
                target = ?self.state.target,
                ?backoff,
                "target ejected after consecutive failures"
            );
        }
    }

    /// The consistent-hash key of the request, if the upstream hashes.
    pub(super) fn hash_key(&self, config: &UpstreamConfig) -> Option<u64> {
        let crate::config::Balance::ConsistentHash(key) = &config.balance else {
            return None;
        };
        self.key_hash(key)
    }

    /// One try on `upstream`: sends the request (head and body) and reads the response
    /// head into `self.state.response`, within the route's per-try and total timeouts.
    #[allow(clippy::too_many_arguments)]
    async fn exchange_head(
        &mut self,
        worker: &Worker,
        upstream: &mut UpstreamStream,
        snapshot: &Snapshot,
        config: &UpstreamConfig,
        route: &RouteConfig,
        tries: &Tries,
        limits: &Limits,
    ) -> Result<(), ExchangeError> {
        // Whatever an earlier exchange left unread (an invalid or abandoned response)
        // belongs to a connection that is gone: it must never be read as this answer.
        self.state.upstream_buf.clear();
        let mut out = std::mem::take(&mut self.state.out);
        out.clear();
        let (method, body) = match &self.state.outbound {
            Some(outbound) => (
                outbound.method.unwrap_or(self.state.head.method()),
                RequestBody::Length(outbound.body.len() as u64),
            ),
            None => (self.state.head.method(), self.state.head.body),
        };
        serialize::request_head(
            &mut out,
            &self.state.head,
            method,
            &self.state.path,
            body,
            &self.forwarding(snapshot),
        );
        self.state.out = out;

        if self.state.head.expect_continue && !matches!(self.state.body, BodyState::Done) {
            let mut interim = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            write_all_within(&mut self.stream, &mut interim, limits.idle_timeout)
                .await
                .map_err(downstream_io)?;
        }

        let sent_at = Instant::now();
        self.send_request_body(upstream, config, limits).await?;
        if let Some(mirror) = self.state.mirror.take() {
            self.dispatch_mirror(worker, snapshot, mirror);
        }
        let per_try = route.traffic.per_try_timeout.map(|t| Instant::now() + t);
        let head_deadline = match (per_try, tries.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.read_response_head(upstream, config, head_deadline)
            .await?;
        self.state.upstream_latency = Some(sent_at.elapsed());
        Ok(())
    }

    /// Sends the head in `self.state.out` followed by the request body.
    async fn send_request_body(
        &mut self,
        upstream: &mut UpstreamStream,
        config: &UpstreamConfig,
        limits: &Limits,
    ) -> Result<(), ExchangeError> {
        let body = self.state.head.body;
        if let Some(outbound) = &self.state.outbound {
            self.state.out.extend_from_slice(&outbound.body);
        }
        if self.state.outbound.is_some()
            || matches!(body, RequestBody::None | RequestBody::Length(0))
        {
            // A write failure on a pooled connection means the upstream closed it
            // while idle: the request never reached it, so it may be resent.
            return write_all_within(upstream, &mut self.state.out, config.write_timeout)
                .await
                .map_err(|failure| ExchangeError {
                    unanswered: matches!(&failure, IoFailure::Io(_)),
                    kind: match failure {
                        IoFailure::Io(_) => FailureKind::Reset,
                        IoFailure::Timeout => FailureKind::Timeout,
                    },
                    error: upstream_io(failure),
                });
        }
        // From here until the body is through, an interruption leaves an unknown part
        // of it unread: the connection can only close.
        self.state.body = BodyState::Unframed;
        let mut relay = Relay {
            src: &mut self.stream,
            buf: &mut self.state.rbuf,
            dst: upstream,
            out: &mut self.state.out,
            read_timeout: limits.body_read_timeout,
            write_timeout: config.write_timeout,
            tee: self.state.mirror.map(|m| Tee {
                buf: &mut self.state.mirror_body,
                cap: m.max_body,
                overflowed: false,
            }),
        };
        let result = match body {
            RequestBody::Length(n) => relay.copy_length(n).await,
            _ => relay.copy_chunked(true, limits.max_body_size).await,
        };
        if relay.tee.is_some_and(|t| t.overflowed) {
            self.state.mirror = None;
        }
        self.state.bytes_in = result.map_err(|error| {
            ExchangeError::from(match error {
                RelayError::Read(IoFailure::Timeout) => ProxyError::BodyTimeout,
                RelayError::Read(IoFailure::Io(e)) => ProxyError::Downstream(e),
                RelayError::SourceClosed => ProxyError::DownstreamClosed,
                RelayError::Framing(e) => ProxyError::Request(e),
                RelayError::TooLarge => ProxyError::Request(FramingError::BodyTooLarge),
                RelayError::Write(failure) => upstream_io(failure),
            })
        })?;
        self.state.body = BodyState::Done;
        Ok(())
    }

    /// Reads the final response head into `self.state.response`, skipping interim 1xx; each
    /// read waits the upstream's read timeout, and none waits past `deadline`.
    async fn read_response_head(
        &mut self,
        upstream: &mut UpstreamStream,
        config: &UpstreamConfig,
        deadline: Option<Instant>,
    ) -> Result<(), ExchangeError> {
        // A translated call is a POST whatever the client's method.
        let request_was_head = self.state.head.is_head()
            && !self.state.outbound.as_ref().is_some_and(|o| o.translated);
        let mut received_any = false;
        loop {
            let mut scanner = HeadScanner::new(0);
            loop {
                if !self.state.upstream_buf.is_empty() {
                    received_any = true;
                    match scanner
                        .scan(self.state.upstream_buf.data())
                        .map_err(ProxyError::UpstreamFraming)?
                    {
                        Scan::Complete(end) => {
                            let head = &self.state.upstream_buf.data()[..end];
                            if self.state.head.websocket {
                                self.state.response.parse_after_upgrade_request(head)
                            } else {
                                self.state.response.parse(head, request_was_head)
                            }
                            .map_err(ProxyError::UpstreamFraming)?;
                            self.state.upstream_buf.consume(end);
                            break;
                        }
                        Scan::Partial if self.state.upstream_buf.len() > MAX_RESPONSE_HEAD => {
                            return Err(
                                ProxyError::UpstreamFraming(FramingError::HeadTooLarge).into()
                            );
                        }
                        Scan::Partial => {}
                    }
                }
                let wait = within(config.read_timeout, deadline);
                let read = if wait.is_zero() {
                    Err(IoFailure::Timeout)
                } else {
                    self.state
                        .upstream_buf
                        .fill_within(upstream, 16 * 1024, wait)
                        .await
                };
                let kind = if received_any {
                    FailureKind::Other
                } else {
                    FailureKind::Reset
                };
                match read {
                    Ok(0) => {
                        return Err(ExchangeError {
                            error: ProxyError::UpstreamClosed,
                            unanswered: !received_any,
                            kind,
                        });
                    }
                    Ok(_) => {}
                    Err(IoFailure::Io(e)) => {
                        return Err(ExchangeError {
                            error: ProxyError::UpstreamIo(e),
                            unanswered: !received_any,
                            kind,
                        });
                    }
                    Err(IoFailure::Timeout) => {
                        return Err(ExchangeError {
                            error: ProxyError::UpstreamTimeout,
                            unanswered: false,
                            kind: FailureKind::Timeout,
                        });
                    }
                }
            }
            if !self.state.response.is_interim() || self.state.response.switches_protocol() {
                return Ok(());
            }
        }
    }

    /// The gateway's forwarding headers for this request.
    pub(super) fn forwarding<'a>(&'a self, snapshot: &'a Snapshot) -> serialize::Forwarding<'a> {
        serialize::Forwarding {
            client: &self.client_text,
            trusted: snapshot.is_trusted_proxy(self.peer.ip()),
            proto: self.proto,
            via: &snapshot.config.gateway.via,
            request_id: &self.state.request_id,
            query: if self.state.query_rewritten {
                Some(&self.state.query_buf[..]).filter(|q| !q.is_empty())
            } else {
                self.state.head.query()
            },
            extra: &self.state.upstream_headers,
        }
    }

    /// Sends the upstream's `101` to the client (with the upgrade fields restored).
    async fn switch_protocols(&mut self, via: &str, limits: &Limits) -> Result<(), ProxyError> {
        self.state.out.clear();
        let client = serialize::ClientSide {
            via,
            request_id: &self.state.request_id,
            keep_alive: true,
            client_minor: self.state.head.version_minor,
            extra_headers: &self.state.reply_headers,
        };
        serialize::response_head(
            &mut self.state.out,
            &self.state.response,
            OutFraming::None,
            &client,
        );
        self.state.response_started = true;
        self.state.status = self.state.response.status;
        write_all_within(&mut self.stream, &mut self.state.out, limits.idle_timeout)
            .await
            .map_err(downstream_io)
    }

    /// Sends the response head and relays the body; returns whether the upstream
    /// connection and the client connection may be reused.
    pub(super) async fn relay_response(
        &mut self,
        upstream: &mut UpstreamStream,
        config: &UpstreamConfig,
        limits: &Limits,
        worker: &Worker,
        via: &str,
        route: &RouteConfig,
    ) -> Result<(bool, bool), ProxyError> {
        let client_minor = self.state.head.version_minor;
        let encoder = route
            .traffic
            .compression
            .as_ref()
            .and_then(|c| self.prepare_compression(c));
        let store_cap = self.prepare_store(worker);
        let framing = match encoder {
            Some(_) if client_minor >= 1 => OutFraming::Chunked,
            Some(_) => OutFraming::Close,
            None => serialize::response_framing(&self.state.response, client_minor),
        };
        let keep_alive = self.state.head.keep_alive
            && !worker.drain.is_draining()
            && framing != OutFraming::Close;
        self.state.out.clear();
        let client = serialize::ClientSide {
            via,
            request_id: &self.state.request_id,
            keep_alive,
            client_minor,
            extra_headers: &self.state.reply_headers,
        };
        if self.state.cors_applied {
            self.state.response.drop_cors_fields();
        }
        serialize::response_head(&mut self.state.out, &self.state.response, framing, &client);
        self.state.response_started = true;
        self.state.status = self.state.response.status;
        let mut relay = Relay {
            src: upstream,
            buf: &mut self.state.upstream_buf,
            dst: &mut self.stream,
            out: &mut self.state.out,
            read_timeout: config.read_timeout,
            write_timeout: limits.idle_timeout,
            tee: store_cap.map(|cap| Tee {
                buf: &mut self.state.cache_body,
                cap,
                overflowed: false,
            }),
        };
        let rechunk = framing == OutFraming::Chunked;
        let body = self.state.response.body.unwrap_or(ResponseBody::None);
        let result = match (encoder, body) {
            (Some(encoder), body) => relay.copy_encoded(body, encoder, rechunk).await,
            (None, body) => match body {
                ResponseBody::None => relay.flush_head().await,
                ResponseBody::Length(n) => relay.copy_length(n).await,
                ResponseBody::Chunked => relay.copy_chunked(rechunk, u64::MAX).await,
                ResponseBody::UntilClose => relay.copy_until_close(rechunk).await,
            },
        };
        let stored_whole = relay.tee.as_ref().is_some_and(|t| !t.overflowed);
        self.state.bytes_out = result.map_err(|error| match error {
            RelayError::Read(failure) => upstream_io(failure),
            RelayError::SourceClosed => ProxyError::UpstreamClosed,
            RelayError::Framing(e) => ProxyError::UpstreamFraming(e),
            RelayError::Write(failure) => downstream_io(failure),
            RelayError::TooLarge => ProxyError::UpstreamFraming(FramingError::BodyTooLarge),
        })?;
        // Bytes after the response mean the upstream broke framing: never reuse it.
        // After HEAD, a backend that (wrongly) sends the body anyway would desync the
        // next request on this connection, and those bytes may not have arrived yet:
        // HEAD is rare, so such connections are simply not reused.
        if stored_whole && let Some(cache) = &route.traffic.cache {
            self.store_response(worker, cache);
        }
        let upstream_reusable = self.state.response.reusable
            && self.state.upstream_buf.is_empty()
            && !self.state.head.is_head();
        if !self.state.upstream_buf.is_empty() {
            let all = self.state.upstream_buf.len();
            self.state.upstream_buf.consume(all);
        }
        Ok((upstream_reusable, keep_alive))
    }
}
