//! One downstream connection: read a request head, run the request through the
//! pipeline, repeat while keep-alive allows. Requests on a connection are strictly
//! sequential, so pipelined requests are answered in order by construction.

use std::{net::SocketAddr, rc::Rc, time::Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};

use super::{
    Worker,
    error::ProxyError,
    io::{IoFailure, ReadBuf, write_all_within},
    policy::Admission,
    relay::BODY_READ,
};
use crate::{
    config::Limits,
    http::{
        FramingError,
        head::{HeadScanner, Scan, leading_empty_lines},
        request::{ParseLimits, RequestBody, RequestHead},
        response::ResponseHead,
    },
    router::Router,
};

/// Initial read buffer of a client connection; grows for large heads and bodies.
const CLIENT_BUFFER: usize = 4096;
/// How long an idle keep-alive connection may still bring a request once draining.
const DRAIN_IDLE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Where the current request's body stands on the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyState {
    /// Read completely (or there is none).
    Done,
    /// Not started; exactly this many bytes follow.
    Length(u64),
    /// Chunked and not read, or interrupted midway: its end is unknown.
    Unframed,
}

/// Per-connection state, reused across its requests.
pub(super) struct Connection<S> {
    pub(super) stream: S,
    pub(super) peer: SocketAddr,
    /// `http` or `https`, for X-Forwarded-Proto.
    pub(super) proto: &'static str,
    /// The TLS session's facts on a TLS listener.
    pub(super) tls: Option<crate::tls::TlsInfo>,
    /// Header lines for the client's response to the current request: the listener's
    /// (HSTS), then what the policy phases add (rate-limit state, CORS, challenges).
    pub(super) reply_headers: Vec<u8>,
    /// Header lines for the upstream request: the verified identity.
    pub(super) upstream_headers: Vec<u8>,
    /// The query forwarded instead of the client's, when `query_rewritten`.
    pub(super) query_buf: Vec<u8>,
    pub(super) query_rewritten: bool,
    /// The gateway answers CORS for this request: upstream CORS headers are dropped.
    pub(super) cors_applied: bool,
    /// Index of the listener that accepted the connection.
    pub(super) listener: usize,
    /// The client's address as text, for X-Forwarded-For.
    pub(super) client_text: Vec<u8>,
    pub(super) rbuf: ReadBuf,
    pub(super) out: Vec<u8>,
    pub(super) head: RequestHead,
    pub(super) path: Vec<u8>,
    pub(super) upstream_buf: ReadBuf,
    pub(super) response: ResponseHead,
    pub(super) request_id: Vec<u8>,
    pub(super) body: BodyState,
    /// Bytes of the response already sent; after any, errors can only close.
    pub(super) response_started: bool,
    /// What the request log and metrics learn: the route, the status sent, and how
    /// long the upstream took to its response head.
    pub(super) route: Option<usize>,
    pub(super) status: u16,
    pub(super) upstream_latency: Option<std::time::Duration>,
    /// The client as the policy judged it (the peer, or behind a trusted proxy).
    pub(super) client_ip: std::net::IpAddr,
    /// The upstream target the request went to.
    pub(super) target: Option<SocketAddr>,
    /// Body bytes relayed each way.
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    /// The authenticated consumer (index into the snapshot's consumers).
    pub(super) consumer: Option<usize>,
    /// When the current request's head was complete (one clock read per request).
    pub(super) started: Instant,
    /// The upstream connection of an accepted WebSocket handshake: the client
    /// connection becomes a tunnel to it.
    pub(super) tunnel: Option<crate::upstream::UpstreamStream>,
    /// The request is being copied to a shadow upstream; its body is collected here.
    pub(super) mirror: Option<super::mirror::MirrorPlan>,
    pub(super) mirror_body: Vec<u8>,
    /// The current request's cache key (reused), what the cache does with it, and the
    /// response body being copied into the store.
    pub(super) cache_key: Vec<u8>,
    pub(super) cache_request: Option<super::cached::CacheRequest>,
    pub(super) cache_body: Vec<u8>,
    /// The call a mediated route sends upstream instead of the client's request.
    pub(super) outbound: Option<super::mediated::Outbound>,
}

/// Serves one accepted connection until it closes.
pub async fn serve_connection<S: AsyncReadRent + AsyncWriteRent + Split>(
    worker: Rc<Worker>,
    stream: S,
    peer: SocketAddr,
    listener: usize,
    tls: Option<crate::tls::TlsInfo>,
) {
    let snapshot = worker.snapshot();
    let mut conn = Connection {
        stream,
        peer,
        proto: if snapshot.config.listeners[listener].tls.is_some() {
            "https"
        } else {
            "http"
        },
        tls,
        reply_headers: snapshot.listener_headers[listener].clone(),
        upstream_headers: Vec::new(),
        query_buf: Vec::new(),
        query_rewritten: false,
        cors_applied: false,
        listener,
        client_text: super::canonical_ip(peer.ip()).to_string().into_bytes(),
        rbuf: ReadBuf::with_capacity(CLIENT_BUFFER),
        out: Vec::with_capacity(1024),
        head: RequestHead::default(),
        path: Vec::new(),
        upstream_buf: ReadBuf::with_capacity(0),
        response: ResponseHead::default(),
        request_id: Vec::with_capacity(64),
        body: BodyState::Done,
        response_started: false,
        route: None,
        status: 0,
        upstream_latency: None,
        client_ip: super::canonical_ip(peer.ip()),
        target: None,
        bytes_in: 0,
        bytes_out: 0,
        consumer: None,
        started: Instant::now(),
        tunnel: None,
        mirror: None,
        mirror_body: Vec::new(),
        cache_key: Vec::new(),
        cache_request: None,
        cache_body: Vec::new(),
        outbound: None,
    };
    let limits = snapshot.config.limits.clone();
    drop(snapshot);
    loop {
        match conn.read_head(&worker, &limits).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::debug!(peer = %peer, %error, "rejected request");
                conn.request_id.clear();
                worker.new_request_id(&mut conn.request_id);
                let started = Instant::now();
                conn.answer_error(&error, true, &limits).await;
                let status = conn.status;
                worker.metrics(|m| m.request(None, b"", status, started.elapsed(), None));
                if status >= 400 {
                    worker.count_rejection(conn.client_ip, peer.ip(), status);
                }
                conn.close().await;
                return;
            }
        }
        let started = Instant::now();
        let generation = worker.generation();
        conn.reset_record();
        conn.started = started;
        let keep_going = conn.handle(&worker, &limits).await;
        // After a reload, route indexes belong to the old snapshot: count it unrouted.
        let route = conn.route.filter(|_| worker.generation() == generation);
        let elapsed = started.elapsed();
        let (method, status, upstream) = (conn.head.method(), conn.status, conn.upstream_latency);
        worker.metrics(|m| m.request(route, method, status, elapsed, upstream));
        if worker.logs_requests() {
            conn.log(&worker, route, elapsed);
        }
        if let Some(upstream) = conn.tunnel.take() {
            let Connection {
                stream,
                rbuf,
                upstream_buf,
                ..
            } = conn;
            let idle = limits.websocket_idle_timeout;
            let (sent, received) =
                super::tunnel::run(stream, rbuf.data(), upstream, upstream_buf.data(), idle).await;
            tracing::debug!(%peer, sent, received, "websocket tunnel closed");
            return;
        }
        // A source that just got banned loses this connection too.
        let banned = status >= 400 && worker.count_rejection(conn.client_ip, peer.ip(), status);
        if !keep_going || banned {
            conn.close().await;
            return;
        }
        conn.rbuf.shrink_if_idle();
        // An idle client connection keeps no upstream buffer: it goes back to the worker.
        if let Some(buffer) = conn.upstream_buf.release() {
            worker.return_buffer(buffer);
        }
    }
}

impl<S: AsyncWriteRent> Connection<S> {
    /// Ends a connection the gateway closes: a TLS client gets `close_notify` first (so
    /// it can tell the end of a close-delimited response from a cut), bounded in time.
    async fn close(&mut self) {
        if self.tls.is_some() {
            let _ =
                monoio::time::timeout(std::time::Duration::from_secs(1), self.stream.shutdown())
                    .await;
        }
    }
}

impl<S> Connection<S> {
    /// Forgets what was recorded about the previous request.
    fn reset_record(&mut self) {
        self.route = None;
        self.status = 0;
        self.upstream_latency = None;
        self.client_ip = super::canonical_ip(self.peer.ip());
        self.target = None;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.consumer = None;
    }

    /// The access-log line of the request just handled.
    fn log(&self, worker: &Worker, route: Option<usize>, elapsed: std::time::Duration) {
        worker.with_snapshot(|snapshot| self.log_on(worker, snapshot, route, elapsed));
    }

    fn log_on(
        &self,
        worker: &Worker,
        snapshot: &super::Snapshot,
        route: Option<usize>,
        elapsed: std::time::Duration,
    ) {
        let Some(log) = &snapshot.config.access_log else {
            return;
        };
        let entry = crate::observe::access_log::Entry {
            request_id: &self.request_id,
            client: self.client_ip,
            method: self.head.method(),
            host: &self.head.host,
            path: &self.head.path,
            route: route.map(|r| snapshot.config.routes[r].name.as_str()),
            upstream: self.target,
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration: elapsed,
            upstream_duration: self.upstream_latency,
            consumer: self
                .consumer
                .and_then(|c| snapshot.config.consumers.get(c))
                .map(|c| c.name.as_str()),
            scheme: self.proto,
            tls_version: self.tls.as_ref().map(|t| t.version),
            worker: worker.id,
        };
        worker.log_request(&entry, log.fields);
    }
}

impl<S: AsyncReadRent + AsyncWriteRent> Connection<S> {
    /// Reads and parses the next request head. `Ok(false)`: the connection ended
    /// cleanly (client closed, idle timeout, drain).
    async fn read_head(&mut self, worker: &Worker, limits: &Limits) -> Result<bool, ProxyError> {
        let mut scanner: Option<HeadScanner> = None;
        let mut first_byte_at: Option<Instant> = None;
        loop {
            if scanner.is_none() {
                let skip = leading_empty_lines(self.rbuf.data());
                self.rbuf.consume(skip);
                if !self.rbuf.data().is_empty() && self.rbuf.data() != b"\r" {
                    scanner = Some(HeadScanner::new(0));
                }
            }
            if let Some(scan) = scanner.as_mut() {
                first_byte_at.get_or_insert_with(Instant::now);
                match scan.scan(self.rbuf.data())? {
                    Scan::Complete(end) => {
                        let parse_limits = ParseLimits {
                            max_headers: limits.max_headers,
                            max_uri_length: limits.max_uri_length,
                        };
                        if end > limits.max_head_size {
                            return Err(FramingError::HeadTooLarge.into());
                        }
                        self.head.parse(&self.rbuf.data()[..end], parse_limits)?;
                        self.rbuf.consume(end);
                        return Ok(true);
                    }
                    Scan::Partial => {
                        let buffered = self.rbuf.len();
                        if scan.first_line_len(0).is_none() && buffered > limits.max_uri_length + 64
                        {
                            return Err(FramingError::UriTooLong.into());
                        }
                        if buffered > limits.max_head_size {
                            return Err(FramingError::HeadTooLarge.into());
                        }
                    }
                }
            }
            let read = match first_byte_at {
                // Between requests: idle timeout, and the drain signal closes us.
                // Between requests. When the gateway drains, an idle connection gets
                // a short grace for a request already on its way (answered with
                // `connection: close`) instead of being cut while the client sends.
                None => {
                    let idle = if worker.drain.is_draining() {
                        limits.idle_timeout.min(DRAIN_IDLE_GRACE)
                    } else {
                        limits.idle_timeout
                    };
                    let mut fill = std::pin::pin!(self.rbuf.fill_within(
                        &mut self.stream,
                        CLIENT_BUFFER,
                        idle
                    ));
                    let read = monoio::select! {
                        read = &mut fill => read,
                        () = worker.drain.wait() => {
                            // The pending read is kept (cancelling it could lose bytes).
                            match monoio::time::timeout(DRAIN_IDLE_GRACE, fill).await {
                                Ok(read) => read,
                                Err(_) => return Ok(false),
                            }
                        }
                    };
                    match read {
                        Ok(n) => n,
                        Err(_) => return Ok(false),
                    }
                }
                Some(start) => {
                    let left = limits.header_read_timeout.saturating_sub(start.elapsed());
                    match self
                        .rbuf
                        .fill_within(&mut self.stream, CLIENT_BUFFER, left)
                        .await
                    {
                        Ok(n) => n,
                        Err(IoFailure::Timeout) => return Err(ProxyError::HeadTimeout),
                        Err(IoFailure::Io(e)) => return Err(ProxyError::Downstream(e)),
                    }
                }
            };
            if read == 0 {
                // Closed between requests, or mid-head (nothing sensible to answer).
                return Ok(false);
            }
        }
    }

    /// Runs one parsed request through the pipeline; returns whether to keep going.
    async fn handle(&mut self, worker: &Worker, limits: &Limits) -> bool {
        self.request_id.clear();
        match self.head.request_id {
            Some(i) => self.request_id.extend_from_slice(self.head.fields.value(i)),
            None => worker.new_request_id(&mut self.request_id),
        }
        self.body = match self.head.body {
            RequestBody::None => BodyState::Done,
            RequestBody::Length(0) => BodyState::Done,
            RequestBody::Length(n) => BodyState::Length(n),
            RequestBody::Chunked => BodyState::Unframed,
        };
        self.response_started = false;
        let snapshot = worker.snapshot();
        self.reply_headers.clear();
        self.reply_headers
            .extend_from_slice(&snapshot.listener_headers[self.listener]);
        if snapshot.config.gateway.debug_worker_header {
            self.reply_headers.extend_from_slice(b"x-gateway-worker: ");
            self.reply_headers
                .extend_from_slice(itoa::Buffer::new().format(worker.id).as_bytes());
            self.reply_headers.extend_from_slice(b"\r\n");
        }
        self.upstream_headers.clear();
        self.query_rewritten = false;
        self.cors_applied = false;
        self.outbound = None;
        if let Some(port) = snapshot.config.listeners[self.listener].redirect_to_https {
            return self
                .answer_redirect(port, limits, worker.drain.is_draining())
                .await;
        }
        self.head.client_cert = self.tls.as_ref().and_then(|t| t.client.clone());
        let result = match snapshot.router.find(&self.head) {
            None => Err(ProxyError::NoRoute),
            Some(_) if matches!(self.head.body, RequestBody::Length(n) if n > limits.max_body_size) => {
                Err(FramingError::BodyTooLarge.into())
            }
            Some(index) => match self.admit(worker, &snapshot, index).await {
                Err(error) => {
                    self.route = Some(index);
                    Err(error)
                }
                Ok(Admission::Preflight) => {
                    self.route = Some(index);
                    let close = !self.head.keep_alive || worker.drain.is_draining();
                    return self.answer_empty(204, close, limits).await;
                }
                Ok(Admission::Forward(_in_flight, upstream)) => {
                    self.route = Some(index);
                    let route = &snapshot.router.routes()[index];
                    // A route that cuts or rewrites the path works on what it matched;
                    // one that forwards it whole keeps its `;parameters`.
                    let source =
                        if route.strip_prefix || route.rewrite.is_some() || route.version.is_some()
                        {
                            self.head.routing_path()
                        } else {
                            &self.head.path
                        };
                    Router::upstream_path(route, source, &mut self.path);
                    match (&route.mediation, &route.traffic.cache) {
                        (Some(mediation), _) => {
                            self.forward_mediated(
                                worker, &snapshot, route, upstream, limits, mediation,
                            )
                            .await
                        }
                        (None, Some(cache))
                            if matches!(self.head.method(), b"GET" | b"HEAD")
                                && !self.head.websocket =>
                        {
                            self.forward_cached(worker, &snapshot, route, upstream, limits, cache)
                                .await
                        }
                        _ => {
                            self.forward(worker, &snapshot, route, upstream, limits)
                                .await
                        }
                    }
                }
            },
        };
        match result {
            Ok(keep_alive) => keep_alive,
            Err(error) => {
                if self.response_started {
                    tracing::warn!(peer = %self.peer, %error, "response aborted");
                    return false;
                }
                if error.answer().is_some_and(|a| a.status >= 500) {
                    tracing::warn!(peer = %self.peer, %error, "upstream failure");
                } else {
                    tracing::debug!(peer = %self.peer, %error, "request refused");
                }
                let close = error.closes_connection()
                    || !self.head.keep_alive
                    || worker.drain.is_draining();
                self.answer_error(&error, close, limits).await
            }
        }
    }

    /// Answers `error` locally. A pending request body is read and discarded when small
    /// enough, otherwise the connection closes: the body is never parsed as a request.
    /// Returns whether the connection stays open.
    pub(super) async fn answer_error(
        &mut self,
        error: &ProxyError,
        close: bool,
        limits: &Limits,
    ) -> bool {
        let Some(answer) = error.answer() else {
            return false;
        };
        self.status = answer.status;
        let Some(close) = self.settle_pending_body(close, limits).await else {
            return false;
        };
        self.out.clear();
        error.write_response(
            &mut self.out,
            answer,
            &self.request_id,
            close,
            &self.reply_headers,
        );
        let sent = write_all_within(&mut self.stream, &mut self.out, limits.idle_timeout)
            .await
            .is_ok();
        sent && !close
    }

    /// Before the gateway answers a request itself: a pending body is read and
    /// discarded when small enough, otherwise the connection must close (the body is
    /// never parsed as a request). Returns whether to close, `None` if the client failed.
    pub(super) async fn settle_pending_body(
        &mut self,
        close: bool,
        limits: &Limits,
    ) -> Option<bool> {
        let pending = match self.body {
            BodyState::Done => 0,
            BodyState::Length(n) => n,
            BodyState::Unframed => u64::MAX,
        };
        let close = close || pending > limits.discard_body_max;
        if !close && pending > 0 && !self.discard_body(pending, limits).await {
            return None;
        }
        Some(close)
    }

    /// Answers with a 308 to the same URL over HTTPS (plain listeners with
    /// `redirect_to_https`).
    async fn answer_redirect(&mut self, port: u16, limits: &Limits, draining: bool) -> bool {
        if self.head.host.is_empty() {
            let error = ProxyError::Request(FramingError::Malformed("a redirect needs a Host"));
            return self.answer_error(&error, true, limits).await;
        }
        let out = &mut self.reply_headers;
        out.extend_from_slice(b"location: https://");
        out.extend_from_slice(&self.head.host);
        if port != 443 {
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(port).as_bytes());
        }
        out.extend_from_slice(&self.head.path);
        if let Some(query) = self.head.query() {
            out.push(b'?');
            out.extend_from_slice(query);
        }
        out.extend_from_slice(b"\r\n");
        let close = !self.head.keep_alive || draining;
        self.answer_empty(308, close, limits).await
    }

    /// Answers the request itself with `status` (204, 308), no body, and the reply
    /// headers gathered so far. Returns whether the connection stays open.
    async fn answer_empty(&mut self, status: u16, close: bool, limits: &Limits) -> bool {
        self.status = status;
        let Some(close) = self.settle_pending_body(close, limits).await else {
            return false;
        };
        self.out.clear();
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        self.out.push(b' ');
        self.out
            .extend_from_slice(crate::http::reason_phrase(status).as_bytes());
        self.out
            .extend_from_slice(b"\r\ncontent-length: 0\r\nx-request-id: ");
        self.out.extend_from_slice(&self.request_id);
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&self.reply_headers);
        self.out.extend_from_slice(if close {
            &b"connection: close\r\n\r\n"[..]
        } else {
            b"\r\n"
        });
        let sent = write_all_within(&mut self.stream, &mut self.out, limits.idle_timeout)
            .await
            .is_ok();
        sent && !close
    }

    /// Whether no byte of the request body has been consumed yet.
    pub(super) fn body_untouched(&self) -> bool {
        if self.outbound.is_some() {
            // The gateway holds the whole body it sends: it can send it again.
            return true;
        }
        match self.head.body {
            RequestBody::None | RequestBody::Length(0) => true,
            RequestBody::Length(n) => self.body == BodyState::Length(n),
            RequestBody::Chunked => false,
        }
    }

    async fn discard_body(&mut self, mut remaining: u64, limits: &Limits) -> bool {
        while remaining > 0 {
            if self.rbuf.is_empty() {
                match self
                    .rbuf
                    .fill_within(&mut self.stream, BODY_READ, limits.body_read_timeout)
                    .await
                {
                    Ok(n) if n > 0 => {}
                    _ => return false,
                }
            }
            let take = remaining.min(self.rbuf.len() as u64);
            self.rbuf.consume(take as usize);
            remaining -= take;
        }
        self.body = BodyState::Done;
        true
    }
}
