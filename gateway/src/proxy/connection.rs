//! One downstream connection: read a request head, run the request through the
//! pipeline, repeat while keep-alive allows. Requests on a connection are strictly
//! sequential, so pipelined requests are answered in order by construction.

use std::{net::SocketAddr, rc::Rc, time::Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};

use super::{
    Worker,
    error::ProxyError,
    io::{ClientStream, IoFailure, ReadBuf, SendNow, write_all_within},
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
/// How long a connection waits for its next request with its request state at hand
/// before it goes idle without one: long enough for a busy client's next request (which
/// then costs no extra wait for readiness), short enough that few connections hold a
/// state they do not use.
const QUIET_AFTER: std::time::Duration = std::time::Duration::from_millis(10);
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

/// A client connection. What it keeps for its whole life is small, so an idle
/// keep-alive connection costs little; the working state of a request in progress is
/// lent by the worker ([`RequestState`]) and given back when the connection goes idle.
pub(super) struct Connection<S> {
    pub(super) stream: S,
    pub(super) peer: SocketAddr,
    /// `http` or `https`, for X-Forwarded-Proto.
    pub(super) proto: &'static str,
    /// The TLS session's facts on a TLS listener.
    pub(super) tls: Option<crate::tls::TlsInfo>,
    /// Index of the listener that accepted the connection.
    pub(super) listener: usize,
    /// The client's address as text, for X-Forwarded-For.
    pub(super) client_text: Box<[u8]>,
    /// The request in progress: buffers and what the pipeline learned.
    pub(super) state: Box<RequestState>,
}

/// The working state of a connection's request in progress: its buffers, the parsed
/// heads and what the pipeline learns. A worker keeps a pool of them and lends one to a
/// connection only while it has a request in progress, so memory follows requests in
/// flight rather than open connections.
pub(super) struct RequestState {
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

impl RequestState {
    /// A fresh state with the client buffers' initial capacity.
    pub(super) fn new() -> Self {
        Self {
            reply_headers: Vec::new(),
            upstream_headers: Vec::new(),
            query_buf: Vec::new(),
            query_rewritten: false,
            cors_applied: false,
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
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
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
        }
    }

    /// Whether the state can go back to the pool: nothing of the connection is left in
    /// it (unread client bytes, a lent upstream buffer, a tunnel).
    pub(super) fn is_vacant(&self) -> bool {
        self.rbuf.is_empty() && self.upstream_buf.capacity() == 0 && self.tunnel.is_none()
    }

    /// Drops what a large request or response grew, so a pooled state stays small.
    pub(super) fn trim(&mut self) {
        self.rbuf.shrink_if_idle();
        for buffer in [
            &mut self.out,
            &mut self.mirror_body,
            &mut self.cache_body,
            &mut self.path,
            &mut self.upstream_headers,
            &mut self.query_buf,
            &mut self.cache_key,
        ] {
            buffer.clear();
            if buffer.capacity() > POOLED_STATE_BUFFER {
                *buffer = Vec::new();
            }
        }
        self.mirror = None;
        self.cache_request = None;
        self.outbound = None;
    }
}

/// Largest buffer a pooled [`RequestState`] keeps (besides the client read buffer).
const POOLED_STATE_BUFFER: usize = 16 * 1024;

/// What the client did while its connection was idle.
enum Arrival {
    /// Bytes (or the end of the stream, or an error) are there to read.
    Ready,
    /// The idle timeout passed, or the gateway drains: the connection closes.
    Closed,
}

/// Serves one accepted connection until it closes. `tls` is `Some` exactly on a TLS
/// listener.
pub async fn serve_connection<S: AsyncReadRent + AsyncWriteRent + Split + ClientStream>(
    worker: Rc<Worker>,
    mut stream: S,
    peer: SocketAddr,
    listener: usize,
    mut tls: Option<crate::tls::TlsInfo>,
) {
    // What this future holds is what every idle connection costs: the parameters, the
    // client's address as text, and the wait below. Everything else lives in the boxed
    // future of a request in progress.
    let mut client_text: Box<[u8]> = super::canonical_ip(peer.ip())
        .to_string()
        .into_bytes()
        .into_boxed_slice();
    loop {
        if let Arrival::Closed = await_request(&mut stream, &worker).await {
            return;
        }
        // On the heap: the pipeline's futures are large, and only connections with a
        // request in progress should carry them (in a block the worker reuses).
        let busy = worker.future_blocks.place(
            Connection {
                proto: if tls.is_some() { "https" } else { "http" },
                stream,
                peer,
                tls,
                listener,
                client_text,
                state: worker.lend_request_state(),
            }
            .serve_requests(worker.clone()),
        );
        let Some(conn) = busy.await else {
            return;
        };
        worker.return_request_state(conn.state);
        (stream, tls, client_text) = (conn.stream, conn.tls, conn.client_text);
    }
}

/// Waits, holding no buffer, for the client's next request to arrive. An idle
/// connection closes after the idle timeout; when the gateway drains it gets a short
/// grace for a request already on its way (answered with `connection: close`).
async fn await_request<S: ClientStream>(stream: &mut S, worker: &Worker) -> Arrival {
    let idle = worker.with_snapshot(|snapshot| snapshot.config.limits.idle_timeout);
    let idle = if worker.drain.is_draining() {
        idle.min(DRAIN_IDLE_GRACE)
    } else {
        idle
    };
    let mut ready = std::pin::pin!(stream.readable());
    monoio::select! {
        // An error is read (and answered by closing) like any other arrival.
        _ = &mut ready => Arrival::Ready,
        () = worker.idle.until(Instant::now() + idle) => Arrival::Closed,
        () = worker.drain.wait() => {
            // Boxed: its timer is needed only while draining.
            match Box::pin(monoio::time::timeout(DRAIN_IDLE_GRACE, ready)).await {
                Ok(_) => Arrival::Ready,
                Err(_) => Arrival::Closed,
            }
        }
    }
}

impl<S: AsyncReadRent + AsyncWriteRent + SendNow> Connection<S> {
    /// Reads and answers requests until the connection is idle (`Some`, to wait for
    /// the next one) or done (`None`: closed, or it became a WebSocket tunnel).
    async fn serve_requests(mut self, worker: Rc<Worker>) -> Option<Self>
    where
        S: Split + ClientStream,
    {
        // The limits of the config in force when the request arrived (a reload applies
        // to open connections' next requests).
        let limits = &worker.with_snapshot(|snapshot| snapshot.config.limits.clone());
        let worker = &*worker;
        // A lent state remembers another connection: this one's client until the
        // request says otherwise (behind a trusted proxy).
        self.state.client_ip = super::canonical_ip(self.peer.ip());
        loop {
            match self.read_head(worker, limits).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(error) => {
                    tracing::debug!(peer = %self.peer, %error, "rejected request");
                    // The answer carries the listener's headers (HSTS) and nothing a
                    // previous request's policy added.
                    worker.with_snapshot(|snapshot| {
                        let headers = &mut self.state.reply_headers;
                        headers.clear();
                        headers.extend_from_slice(&snapshot.listener_headers[self.listener]);
                    });
                    self.state.request_id.clear();
                    worker.new_request_id(&mut self.state.request_id);
                    let started = Instant::now();
                    self.answer_error(&error, true, limits).await;
                    let status = self.state.status;
                    worker.metrics(|m| m.request(None, b"", status, started.elapsed(), None));
                    if status >= 400 {
                        worker.count_rejection(self.state.client_ip, self.peer.ip(), status);
                    }
                    self.close().await;
                    return None;
                }
            }
            let started = Instant::now();
            let generation = worker.generation();
            self.reset_record();
            self.state.started = started;
            let keep_going = self.handle(worker, limits).await;
            // After a reload, route indexes belong to the old snapshot: count it unrouted.
            let route = self
                .state
                .route
                .filter(|_| worker.generation() == generation);
            let elapsed = started.elapsed();
            let state = &self.state;
            let (method, status, upstream) =
                (state.head.method(), state.status, state.upstream_latency);
            worker.metrics(|m| m.request(route, method, status, elapsed, upstream));
            if worker.logs_requests() {
                self.log(worker, route, elapsed);
            }
            if let Some(upstream) = self.state.tunnel.take() {
                let Connection { stream, state, .. } = self;
                let idle = limits.websocket_idle_timeout;
                let (sent, received) = super::tunnel::run(
                    stream,
                    state.rbuf.data(),
                    upstream,
                    state.upstream_buf.data(),
                    idle,
                )
                .await;
                tracing::debug!(peer = %self.peer, sent, received, "websocket tunnel closed");
                return None;
            }
            // A source that just got banned loses this connection too.
            let banned = status >= 400
                && worker.count_rejection(self.state.client_ip, self.peer.ip(), status);
            if !keep_going || banned {
                self.close().await;
                return None;
            }
            // An idle client connection keeps no upstream buffer: it goes back to the worker.
            // Bytes an invalid response left belong to a connection that is gone.
            self.state.upstream_buf.clear();
            if let Some(buffer) = self.state.upstream_buf.release() {
                worker.return_buffer(buffer);
            }
            if self.state.rbuf.is_empty() {
                // A busy client's next request usually follows at once: wait a moment
                // for it with the buffer at hand, and only then go idle without one.
                let next = self
                    .state
                    .rbuf
                    .fill_for(&mut self.stream, CLIENT_BUFFER, QUIET_AFTER);
                match next.await {
                    Ok(Some(0)) | Err(_) => return None,
                    Ok(Some(_)) => {}
                    Ok(None) => return Some(self),
                }
            }
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
        self.state.route = None;
        self.state.status = 0;
        self.state.upstream_latency = None;
        self.state.client_ip = super::canonical_ip(self.peer.ip());
        self.state.target = None;
        self.state.bytes_in = 0;
        self.state.bytes_out = 0;
        self.state.consumer = None;
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
            request_id: &self.state.request_id,
            client: self.state.client_ip,
            method: self.state.head.method(),
            host: &self.state.head.host,
            path: &self.state.head.path,
            route: route.map(|r| snapshot.config.routes[r].name.as_str()),
            upstream: self.state.target,
            status: self.state.status,
            bytes_in: self.state.bytes_in,
            bytes_out: self.state.bytes_out,
            duration: elapsed,
            upstream_duration: self.state.upstream_latency,
            consumer: self
                .state
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

impl<S: AsyncReadRent + AsyncWriteRent + SendNow> Connection<S> {
    /// Reads and parses the next request head. `Ok(false)`: the connection ended
    /// cleanly (client closed, idle timeout, drain).
    async fn read_head(&mut self, worker: &Worker, limits: &Limits) -> Result<bool, ProxyError> {
        let mut scanner: Option<HeadScanner> = None;
        let mut first_byte_at: Option<Instant> = None;
        loop {
            if scanner.is_none() {
                let skip = leading_empty_lines(self.state.rbuf.data());
                self.state.rbuf.consume(skip);
                if !self.state.rbuf.data().is_empty() && self.state.rbuf.data() != b"\r" {
                    scanner = Some(HeadScanner::new(0));
                }
            }
            if let Some(scan) = scanner.as_mut() {
                first_byte_at.get_or_insert_with(Instant::now);
                match scan.scan(self.state.rbuf.data())? {
                    Scan::Complete(end) => {
                        let parse_limits = ParseLimits {
                            max_headers: limits.max_headers,
                            max_uri_length: limits.max_uri_length,
                        };
                        if end > limits.max_head_size {
                            return Err(FramingError::HeadTooLarge.into());
                        }
                        self.state
                            .head
                            .parse(&self.state.rbuf.data()[..end], parse_limits)?;
                        self.state.rbuf.consume(end);
                        return Ok(true);
                    }
                    Scan::Partial => {
                        let buffered = self.state.rbuf.len();
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
                    let mut fill = std::pin::pin!(self.state.rbuf.fill_within(
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
                        .state
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
        self.state.request_id.clear();
        match self.state.head.request_id {
            Some(i) => self
                .state
                .request_id
                .extend_from_slice(self.state.head.fields.value(i)),
            None => worker.new_request_id(&mut self.state.request_id),
        }
        self.state.body = match self.state.head.body {
            RequestBody::None => BodyState::Done,
            RequestBody::Length(0) => BodyState::Done,
            RequestBody::Length(n) => BodyState::Length(n),
            RequestBody::Chunked => BodyState::Unframed,
        };
        self.state.response_started = false;
        let snapshot = worker.snapshot();
        self.state.reply_headers.clear();
        self.state
            .reply_headers
            .extend_from_slice(&snapshot.listener_headers[self.listener]);
        if snapshot.config.gateway.debug_worker_header {
            self.state
                .reply_headers
                .extend_from_slice(b"x-gateway-worker: ");
            self.state
                .reply_headers
                .extend_from_slice(itoa::Buffer::new().format(worker.id).as_bytes());
            self.state.reply_headers.extend_from_slice(b"\r\n");
        }
        self.state.upstream_headers.clear();
        self.state.query_rewritten = false;
        self.state.cors_applied = false;
        self.state.outbound = None;
        if let Some(port) = snapshot.config.listeners[self.listener].redirect_to_https {
            return self
                .answer_redirect(port, limits, worker.drain.is_draining())
                .await;
        }
        self.state.head.client_cert = self.tls.as_ref().and_then(|t| t.client.clone());
        let result = match snapshot.router.find(&self.state.head) {
            None => Err(ProxyError::NoRoute),
            Some(_) if matches!(self.state.head.body, RequestBody::Length(n) if n > limits.max_body_size) => {
                Err(FramingError::BodyTooLarge.into())
            }
            Some(index) => match self.admit(worker, &snapshot, index).await {
                Err(error) => {
                    self.state.route = Some(index);
                    Err(error)
                }
                Ok(Admission::Preflight) => {
                    self.state.route = Some(index);
                    let close = !self.state.head.keep_alive || worker.drain.is_draining();
                    return self.answer_empty(204, close, limits).await;
                }
                Ok(Admission::Forward(_in_flight, upstream)) => {
                    self.state.route = Some(index);
                    let route = &snapshot.router.routes()[index];
                    // A route that cuts or rewrites the path works on what it matched;
                    // one that forwards it whole keeps its `;parameters`.
                    let source =
                        if route.strip_prefix || route.rewrite.is_some() || route.version.is_some()
                        {
                            self.state.head.routing_path()
                        } else {
                            &self.state.head.path
                        };
                    Router::upstream_path(route, source, &mut self.state.path);
                    match (&route.mediation, &route.traffic.cache) {
                        (Some(mediation), _) => {
                            self.forward_mediated(
                                worker, &snapshot, route, upstream, limits, mediation,
                            )
                            .await
                        }
                        (None, Some(cache))
                            if matches!(self.state.head.method(), b"GET" | b"HEAD")
                                && !self.state.head.websocket =>
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
                if self.state.response_started {
                    tracing::warn!(peer = %self.peer, %error, "response aborted");
                    return false;
                }
                if error.answer().is_some_and(|a| a.status >= 500) {
                    tracing::warn!(peer = %self.peer, %error, "upstream failure");
                } else {
                    tracing::debug!(peer = %self.peer, %error, "request refused");
                }
                let close = error.closes_connection()
                    || !self.state.head.keep_alive
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
        self.state.status = answer.status;
        let Some(close) = self.settle_pending_body(close, limits).await else {
            return false;
        };
        self.state.out.clear();
        error.write_response(
            &mut self.state.out,
            answer,
            &self.state.request_id,
            close,
            &self.state.reply_headers,
        );
        let sent = write_all_within(&mut self.stream, &mut self.state.out, limits.idle_timeout)
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
        let pending = match self.state.body {
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
        if self.state.head.host.is_empty() {
            let error = ProxyError::Request(FramingError::Malformed("a redirect needs a Host"));
            return self.answer_error(&error, true, limits).await;
        }
        let out = &mut self.state.reply_headers;
        out.extend_from_slice(b"location: https://");
        out.extend_from_slice(&self.state.head.host);
        if port != 443 {
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(port).as_bytes());
        }
        out.extend_from_slice(&self.state.head.path);
        if let Some(query) = self.state.head.query() {
            out.push(b'?');
            out.extend_from_slice(query);
        }
        out.extend_from_slice(b"\r\n");
        let close = !self.state.head.keep_alive || draining;
        self.answer_empty(308, close, limits).await
    }

    /// Answers the request itself with `status` (204, 308), no body, and the reply
    /// headers gathered so far. Returns whether the connection stays open.
    async fn answer_empty(&mut self, status: u16, close: bool, limits: &Limits) -> bool {
        self.state.status = status;
        let Some(close) = self.settle_pending_body(close, limits).await else {
            return false;
        };
        self.state.out.clear();
        self.state.out.extend_from_slice(b"HTTP/1.1 ");
        self.state
            .out
            .extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        self.state.out.push(b' ');
        self.state
            .out
            .extend_from_slice(crate::http::reason_phrase(status).as_bytes());
        self.state
            .out
            .extend_from_slice(b"\r\ncontent-length: 0\r\nx-request-id: ");
        self.state.out.extend_from_slice(&self.state.request_id);
        self.state.out.extend_from_slice(b"\r\n");
        self.state.out.extend_from_slice(&self.state.reply_headers);
        self.state.out.extend_from_slice(if close {
            &b"connection: close\r\n\r\n"[..]
        } else {
            b"\r\n"
        });
        let sent = write_all_within(&mut self.stream, &mut self.state.out, limits.idle_timeout)
            .await
            .is_ok();
        sent && !close
    }

    /// Whether no byte of the request body has been consumed yet.
    pub(super) fn body_untouched(&self) -> bool {
        if self.state.outbound.is_some() {
            // The gateway holds the whole body it sends: it can send it again.
            return true;
        }
        match self.state.head.body {
            RequestBody::None | RequestBody::Length(0) => true,
            RequestBody::Length(n) => self.state.body == BodyState::Length(n),
            RequestBody::Chunked => false,
        }
    }

    async fn discard_body(&mut self, mut remaining: u64, limits: &Limits) -> bool {
        while remaining > 0 {
            if self.state.rbuf.is_empty() {
                match self
                    .state
                    .rbuf
                    .fill_within(&mut self.stream, BODY_READ, limits.body_read_timeout)
                    .await
                {
                    Ok(n) if n > 0 => {}
                    _ => return false,
                }
            }
            let take = remaining.min(self.state.rbuf.len() as u64);
            self.state.rbuf.consume(take as usize);
            remaining -= take;
        }
        self.state.body = BodyState::Done;
        true
    }
}
