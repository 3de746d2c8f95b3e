//! Phases "pick upstream" through "pool or close": choose a target, get a connection
//! (pooled or new), send the request head and stream its body, read the response head,
//! relay the response body, and park the upstream connection when it is clean.

use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::{
    Snapshot, Worker,
    connection::{BodyState, Connection},
    error::ProxyError,
    io::{IoFailure, write_all_within},
    relay::{Relay, RelayError},
    serialize::{self, Forwarding, OutFraming},
};
use crate::{
    config::{HashKey, Limits, UpstreamConfig},
    http::{
        FramingError,
        head::{HeadScanner, Scan},
        request::RequestBody,
        response::ResponseBody,
    },
    upstream::{UpstreamStream, connect, maglev::fnv1a},
};

/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How an exchange with one upstream connection ended.
enum Exchange {
    /// Completed; the flags say whether the upstream connection and the client
    /// connection may be reused.
    Done {
        upstream_reusable: bool,
        keep_alive: bool,
    },
}

/// An exchange failure, with whether retrying on a fresh connection is safe: the
/// request was not (observably) processed by the upstream.
struct ExchangeError {
    error: ProxyError,
    retry_fresh: bool,
}

impl From<ProxyError> for ExchangeError {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            retry_fresh: false,
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

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    /// Forwards the current request to `upstream`; returns whether the client
    /// connection stays open.
    pub(super) async fn forward(
        &mut self,
        worker: &Worker,
        snapshot: &Snapshot,
        upstream_index: usize,
        limits: &Limits,
    ) -> Result<bool, ProxyError> {
        let upstream = &snapshot.upstreams.entries[upstream_index];
        let config = &upstream.config;
        let key_hash = self.hash_key(config);
        // The balancers and pools this request may use: those of the snapshot it runs
        // on. After a reload they are gone, and the request only finishes what it has.
        let generation = worker.generation();
        let mut excluded = None;
        let mut fresh_only = false;
        let health = &snapshot.upstreams.health;
        loop {
            // Healthy targets only (unless the upstream is in panic), never the one a
            // retry moves away from.
            let healthy =
                crate::upstream::health::availability(health, config, upstream.first_target);
            let allowed = |i: usize| Some(i) != excluded && healthy.as_ref().is_none_or(|ok| ok(i));
            let target = worker
                .upstream_state(generation, |state| {
                    state.balancers[upstream_index].pick(
                        config,
                        upstream.maglev.as_ref(),
                        key_hash,
                        &allowed,
                    )
                })
                .flatten()
                .ok_or(ProxyError::NoTarget)?;
            let global = upstream.first_target + target;
            let addr = config.targets[target].addr;
            self.target = Some(addr);
            let pooled = if fresh_only {
                None
            } else {
                worker
                    .upstream_state(generation, |state| {
                        state.pool.take(global, config.idle_timeout)
                    })
                    .flatten()
            };
            let reused = pooled.is_some();
            if reused {
                worker.metrics(|m| {
                    if let Some(u) = m.upstreams.get(upstream_index) {
                        u.reused.increment(1);
                    }
                });
            }
            let mut stream = match pooled {
                Some(stream) => stream,
                None => match connect(addr, config.connect_timeout, config.tls.as_ref()).await {
                    Ok(stream) => {
                        worker.upstream_state(generation, |state| state.pool.opened += 1);
                        worker.metrics(|m| {
                            if let Some(u) = m.upstreams.get(upstream_index) {
                                u.opened.increment(1);
                            }
                        });
                        stream
                    }
                    Err(error) => {
                        self.target_outcome(health, config, global, false);
                        let can_retry = excluded.is_none()
                            && config.targets.len() > 1
                            && self.head.is_idempotent();
                        if can_retry && self.body_untouched() {
                            tracing::warn!(%error, "connect failed; retrying on another target");
                            excluded = Some(target);
                            continue;
                        }
                        return Err(error.into());
                    }
                },
            };
            worker.upstream_state(generation, |state| {
                state.balancers[upstream_index].started(target)
            });
            // Only the latency-aware balancer pays for reading the clock.
            let started =
                matches!(config.balance, crate::config::Balance::P2cEwma).then(Instant::now);
            let result = self
                .exchange(&mut stream, snapshot, config, limits, worker)
                .await;
            let latency = started.filter(|_| result.is_ok()).map(|s| s.elapsed());
            worker.upstream_state(generation, |state| {
                state.balancers[upstream_index].finished(target, latency)
            });
            match result {
                Ok(Exchange::Done {
                    upstream_reusable,
                    keep_alive,
                }) => {
                    let failed = matches!(self.response.status, 502..=504);
                    self.target_outcome(health, config, global, !failed);
                    if upstream_reusable {
                        worker.upstream_state(generation, |state| {
                            state.pool.put(global, stream, config.max_idle_per_target)
                        });
                    }
                    return Ok(keep_alive);
                }
                Err(ExchangeError { error, retry_fresh }) => {
                    let upstream_fault = matches!(
                        error,
                        ProxyError::UpstreamTimeout
                            | ProxyError::UpstreamIo(_)
                            | ProxyError::UpstreamClosed
                            | ProxyError::UpstreamFraming(_)
                    );
                    if upstream_fault && !(reused && retry_fresh) {
                        self.target_outcome(health, config, global, false);
                    }
                    // A pooled connection the upstream had already closed: the request
                    // never reached it, so an idempotent one is resent on a fresh one.
                    if reused && retry_fresh && !fresh_only && self.head.is_idempotent() {
                        tracing::debug!(%error, "stale pooled connection; retrying on a new one");
                        fresh_only = true;
                        excluded = None;
                        continue;
                    }
                    return Err(error);
                }
            }
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
                target = ?self.target,
                ?backoff,
                "target ejected after consecutive failures"
            );
        }
    }

    /// The consistent-hash key of the request, if the upstream hashes.
    fn hash_key(&self, config: &UpstreamConfig) -> Option<u64> {
        let crate::config::Balance::ConsistentHash(key) = &config.balance else {
            return None;
        };
        match key {
            HashKey::ClientIp => Some(match super::canonical_ip(self.peer.ip()) {
                std::net::IpAddr::V4(v4) => fnv1a(0, &v4.octets()),
                std::net::IpAddr::V6(v6) => fnv1a(0, &v6.octets()),
            }),
            HashKey::Header(name) => self.head.fields.get(name.as_bytes()).map(|v| fnv1a(0, v)),
            HashKey::Cookie(name) => {
                crate::http::fields::cookie_value(&self.head.fields, name.as_bytes())
                    .map(|v| fnv1a(0, v))
            }
        }
    }

    /// One request/response exchange on `upstream`.
    async fn exchange(
        &mut self,
        upstream: &mut UpstreamStream,
        snapshot: &Snapshot,
        config: &UpstreamConfig,
        limits: &Limits,
        worker: &Worker,
    ) -> Result<Exchange, ExchangeError> {
        let gateway = &snapshot.config.gateway;
        let forwarding = Forwarding {
            client: &self.client_text,
            trusted: snapshot.is_trusted_proxy(self.peer.ip()),
            proto: self.proto,
            via: &gateway.via,
            request_id: &self.request_id,
            query: if self.query_rewritten {
                Some(&self.query_buf[..]).filter(|q| !q.is_empty())
            } else {
                self.head.query()
            },
            extra: &self.upstream_headers,
        };
        self.out.clear();
        serialize::request_head(
            &mut self.out,
            &self.head,
            &self.path,
            self.head.body,
            &forwarding,
        );

        if self.head.expect_continue && !matches!(self.body, BodyState::Done) {
            let mut interim = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            write_all_within(&mut self.stream, &mut interim, limits.idle_timeout)
                .await
                .map_err(downstream_io)?;
        }

        let sent_at = Instant::now();
        self.send_request_body(upstream, config, limits).await?;
        self.read_response_head(upstream, config).await?;
        self.upstream_latency = Some(sent_at.elapsed());
        self.relay_response(
            upstream,
            config,
            limits,
            worker,
            &snapshot.config.gateway.via,
        )
        .await
    }

    /// Sends the head in `self.out` followed by the request body.
    async fn send_request_body(
        &mut self,
        upstream: &mut UpstreamStream,
        config: &UpstreamConfig,
        limits: &Limits,
    ) -> Result<(), ExchangeError> {
        let body = self.head.body;
        if matches!(body, RequestBody::None | RequestBody::Length(0)) {
            // A write failure on a pooled connection means the upstream closed it
            // while idle: the request never reached it, so it may be resent.
            return write_all_within(upstream, &mut self.out, config.write_timeout)
                .await
                .map_err(|failure| ExchangeError {
                    retry_fresh: matches!(&failure, IoFailure::Io(_)),
                    error: upstream_io(failure),
                });
        }
        // From here until the body is through, an interruption leaves an unknown part
        // of it unread: the connection can only close.
        self.body = BodyState::Unframed;
        let mut relay = Relay {
            src: &mut self.stream,
            buf: &mut self.rbuf,
            dst: upstream,
            out: &mut self.out,
            read_timeout: limits.body_read_timeout,
            write_timeout: config.write_timeout,
        };
        let result = match body {
            RequestBody::Length(n) => relay.copy_length(n).await,
            _ => relay.copy_chunked(true, limits.max_body_size).await,
        };
        self.bytes_in = result.map_err(|error| {
            ExchangeError::from(match error {
                RelayError::Read(IoFailure::Timeout) => ProxyError::BodyTimeout,
                RelayError::Read(IoFailure::Io(e)) => ProxyError::Downstream(e),
                RelayError::SourceClosed => ProxyError::DownstreamClosed,
                RelayError::Framing(e) => ProxyError::Request(e),
                RelayError::TooLarge => ProxyError::Request(FramingError::BodyTooLarge),
                RelayError::Write(failure) => upstream_io(failure),
            })
        })?;
        self.body = BodyState::Done;
        Ok(())
    }

    /// Reads the final response head into `self.response`, skipping interim 1xx.
    async fn read_response_head(
        &mut self,
        upstream: &mut UpstreamStream,
        config: &UpstreamConfig,
    ) -> Result<(), ExchangeError> {
        let request_was_head = self.head.is_head();
        let mut received_any = false;
        loop {
            let mut scanner = HeadScanner::new(0);
            loop {
                if !self.upstream_buf.is_empty() {
                    received_any = true;
                    match scanner
                        .scan(self.upstream_buf.data())
                        .map_err(ProxyError::UpstreamFraming)?
                    {
                        Scan::Complete(end) => {
                            self.response
                                .parse(&self.upstream_buf.data()[..end], request_was_head)
                                .map_err(ProxyError::UpstreamFraming)?;
                            self.upstream_buf.consume(end);
                            break;
                        }
                        Scan::Partial if self.upstream_buf.len() > MAX_RESPONSE_HEAD => {
                            return Err(
                                ProxyError::UpstreamFraming(FramingError::HeadTooLarge).into()
                            );
                        }
                        Scan::Partial => {}
                    }
                }
                match self
                    .upstream_buf
                    .fill_within(upstream, 16 * 1024, config.read_timeout)
                    .await
                {
                    Ok(0) => {
                        return Err(ExchangeError {
                            error: ProxyError::UpstreamClosed,
                            retry_fresh: !received_any,
                        });
                    }
                    Ok(_) => {}
                    Err(IoFailure::Io(e)) => {
                        return Err(ExchangeError {
                            error: ProxyError::UpstreamIo(e),
                            retry_fresh: !received_any,
                        });
                    }
                    Err(IoFailure::Timeout) => return Err(ProxyError::UpstreamTimeout.into()),
                }
            }
            if !self.response.is_interim() {
                return Ok(());
            }
        }
    }

    /// Sends the response head and relays the body; decides reuse on both sides.
    async fn relay_response(
        &mut self,
        upstream: &mut UpstreamStream,
        config: &UpstreamConfig,
        limits: &Limits,
        worker: &Worker,
        via: &str,
    ) -> Result<Exchange, ExchangeError> {
        let client_minor = self.head.version_minor;
        let framing = serialize::response_framing(&self.response, client_minor);
        let keep_alive =
            self.head.keep_alive && !worker.drain.is_draining() && framing != OutFraming::Close;
        self.out.clear();
        let client = serialize::ClientSide {
            via,
            request_id: &self.request_id,
            keep_alive,
            client_minor,
            extra_headers: &self.reply_headers,
        };
        if self.cors_applied {
            self.response.drop_cors_fields();
        }
        serialize::response_head(&mut self.out, &self.response, framing, &client);
        self.response_started = true;
        self.status = self.response.status;
        let mut relay = Relay {
            src: upstream,
            buf: &mut self.upstream_buf,
            dst: &mut self.stream,
            out: &mut self.out,
            read_timeout: config.read_timeout,
            write_timeout: limits.idle_timeout,
        };
        let rechunk = framing == OutFraming::Chunked;
        let result = match self.response.body.unwrap_or(ResponseBody::None) {
            ResponseBody::None => relay.flush_head().await,
            ResponseBody::Length(n) => relay.copy_length(n).await,
            ResponseBody::Chunked => relay.copy_chunked(rechunk, u64::MAX).await,
            ResponseBody::UntilClose => relay.copy_until_close(rechunk).await,
        };
        self.bytes_out = result.map_err(|error| match error {
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
        let upstream_reusable =
            self.response.reusable && self.upstream_buf.is_empty() && !self.head.is_head();
        if !self.upstream_buf.is_empty() {
            let all = self.upstream_buf.len();
            self.upstream_buf.consume(all);
        }
        Ok(Exchange::Done {
            upstream_reusable,
            keep_alive,
        })
    }
}
