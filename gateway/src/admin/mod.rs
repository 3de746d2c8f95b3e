//! The admin API: a separate listener, served by its own thread (never by a worker), with
//! JSON endpoints for status, the effective config (secrets redacted), routes,
//! upstreams, rate-limit state, reload, Prometheus `/metrics`, and `/openapi.json`
//! describing exactly these. Every endpoint but `/health` needs
//! `Authorization: Bearer <token>` (`gateway.admin_token_file` or `GATEWAY_ADMIN_TOKEN`).
//!
//! Mutations go to the main thread as [`Control`] messages, so reloads from the API and
//! from SIGHUP run the same code in the same place.

pub mod audit;
mod openapi;
mod portal;
mod views;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use crate::{proxy::Snapshot, ratelimit::RateTable};

/// The dashboard page: charts drawn by its own script from `/metrics` (no CDN).
const DASHBOARD: &str = include_str!("dashboard.html");

/// Requests handled at once; more connections wait in the backlog.
const MAX_CONCURRENT: usize = 16;
/// Largest admin request head and body.
const MAX_REQUEST: usize = 64 * 1024;

/// What the admin API (or a signal) asks of the main thread.
pub enum Control {
    /// A signal arrived (SIGHUP reloads, SIGTERM/SIGINT stop).
    Signal(i32),
    /// A binary upgrade's new process took the listeners (and the XDP link): drain and
    /// stop, leaving the program attached for it.
    HandedOver,
    /// Reload the config file for `identity`; the answer says what happened.
    Reload {
        identity: String,
        reply: mpsc::Sender<Result<String, String>>,
    },
    /// List, add or remove live ACL entries, for `identity`.
    Acl {
        command: crate::runtime::acl::AclCommand,
        identity: String,
        reply: mpsc::Sender<Result<Value, String>>,
    },
    /// A source crossed the ban threshold at L7 (`status` was its last rejection).
    Ban { ip: std::net::IpAddr, status: u16 },
    /// An L4 health check concluded that `target` of the service at `vip` is up or
    /// down (probed at `probed`, which L7 upstream targets may share).
    L4Health {
        vip: gateway_common::VipKey,
        target: std::net::IpAddr,
        probed: std::net::SocketAddr,
        up: bool,
    },
    /// The L4 services with their targets and counters (`{"services": []}` without XDP).
    L4View(mpsc::Sender<Value>),
    /// The XDP verdict counters, when XDP is attached: (verdict, packets, bytes).
    XdpCounters(mpsc::Sender<Vec<(&'static str, u64, u64)>>),
    /// Remove cached responses on every worker: the key `key`, or every key starting
    /// with it (`prefix`); answers how many keys went.
    CachePurge {
        key: String,
        prefix: bool,
        identity: String,
        reply: mpsc::Sender<usize>,
    },
}

/// What the admin thread knows of the running gateway.
pub struct AdminState {
    /// The config snapshot new requests run on (swapped by every reload).
    pub current: ArcSwap<Snapshot>,
    pub started: Instant,
    pub workers: usize,
    /// Where each listener is bound.
    pub listener_addrs: Vec<SocketAddr>,
    pub prometheus: Option<PrometheusHandle>,
    pub control: Mutex<mpsc::Sender<Control>>,
    pub reloads: AtomicU64,
    /// `xdp` or `userspace`: where the edge policy is enforced.
    pub edge_enforcement: &'static str,
    pub rate_table: Arc<RateTable>,
    /// Every change made to the running gateway.
    pub audit: Arc<audit::AuditLog>,
    busy: AtomicUsize,
}

impl AdminState {
    /// State for a gateway started on `snapshot`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        snapshot: Arc<Snapshot>,
        workers: usize,
        listener_addrs: Vec<SocketAddr>,
        prometheus: Option<PrometheusHandle>,
        control: mpsc::Sender<Control>,
        edge_enforcement: &'static str,
        rate_table: Arc<RateTable>,
        audit: Arc<audit::AuditLog>,
    ) -> Self {
        Self {
            current: ArcSwap::new(snapshot),
            started: Instant::now(),
            workers,
            listener_addrs,
            prometheus,
            control: Mutex::new(control),
            reloads: AtomicU64::new(0),
            edge_enforcement,
            rate_table,
            audit,
            busy: AtomicUsize::new(0),
        }
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Control) -> Option<T> {
        let (tx, rx) = mpsc::channel();
        self.control.lock().ok()?.send(make(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(30)).ok()
    }
}

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot bind the admin API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the admin thread: {0}")]
    Spawn(std::io::Error),
}

/// Binds `addr` now (so a busy port fails the start) and serves it on a thread.
pub fn spawn(addr: SocketAddr, state: Arc<AdminState>) -> Result<SocketAddr, AdminError> {
    let listener = TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    if state.current.load().config.gateway.admin_token.is_none() {
        tracing::warn!(%bound, "admin API has no token (gateway.admin_token_file or GATEWAY_ADMIN_TOKEN): only /health is served");
    }
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if state.busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
                    state.busy.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let state = state.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("admin-conn".into())
                        .spawn(move || {
                            let _ = serve(stream, &state);
                            state.busy.fetch_sub(1, Ordering::AcqRel);
                        });
                if spawned.is_err() {
                    tracing::warn!("admin: cannot start a connection thread");
                }
            }
        })
        .map_err(AdminError::Spawn)?;
    Ok(bound)
}

/// A parsed admin request.
struct Request {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
}

/// An admin response.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(value).unwrap_or_default(),
        }
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(status, &json!({ "code": code, "message": message }))
    }
}

fn serve(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let (reply, head_only) = match read_request(&mut stream)? {
        Some(request) => (handle(&request, state), request.method == "HEAD"),
        None => (Reply::error(400, "bad_request", "malformed request"), false),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        reply.status,
        crate::http::reason_phrase(reply.status),
        reply.content_type,
        reply.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&reply.body);
    }
    stream.write_all(&out)
}

fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(
        parsed.parse(&buf[..head_end]),
        Ok(httparse::Status::Complete(_))
    ) {
        return Ok(None);
    }
    let target = parsed.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    // Bodies are not used by any endpoint: read and drop what was announced.
    let length: usize = header("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if length > MAX_REQUEST {
        return Ok(None);
    }
    let mut remaining = length.saturating_sub(buf.len() - head_end);
    while remaining > 0 {
        let n = stream.read(&mut chunk[..remaining.min(4096)])?;
        if n == 0 {
            break;
        }
        remaining -= n;
    }
    Ok(Some(Request {
        method: parsed.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        authorization: header("authorization").map(str::to_owned),
    }))
}

/// Whether the request carries the configured bearer token (compared in constant time).
fn authorized(request: &Request, state: &AdminState) -> bool {
    let snapshot = state.current.load();
    let Some(token) = snapshot.config.gateway.admin_token.as_ref() else {
        return false;
    };
    let Some(presented) = request
        .authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(
        presented.trim().as_bytes(),
        token.0.as_bytes(),
    )
    .is_ok()
}

fn handle(request: &Request, state: &AdminState) -> Reply {
    let method = request.method.as_str();
    let path = request.path.as_str();
    // Public: liveness, and pages that carry no data themselves (the dashboard fetches
    // with the token; the portal shows what API callers need).
    let public_page = match path {
        "/health" => Some(Reply::json(200, &json!({ "status": "ok" }))),
        "/dashboard" => Some(Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: DASHBOARD.as_bytes().to_vec(),
        }),
        "/portal" => {
            let snapshot = state.current.load_full();
            let base = state.listener_addrs.first().map_or(String::new(), |addr| {
                let scheme = match snapshot.config.listeners.first() {
                    Some(l) if l.tls.is_some() => "https",
                    _ => "http",
                };
                format!("{scheme}://{addr}")
            });
            Some(Reply {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: portal::page(&snapshot, &base).into_bytes(),
            })
        }
        _ => None,
    };
    if let Some(reply) = public_page {
        return match method {
            "GET" | "HEAD" => reply,
            _ => Reply::error(405, "method_not_allowed", "use GET"),
        };
    }
    if !openapi::is_endpoint(path) {
        return Reply::error(
            404,
            "not_found",
            "no such admin endpoint; see /openapi.json",
        );
    }
    if !authorized(request, state) {
        return Reply::error(
            401,
            "unauthorized",
            "Authorization: Bearer <admin token> required",
        );
    }
    let expected = openapi::method_of(path);
    if method != expected {
        return Reply::error(405, "method_not_allowed", &format!("use {expected}"));
    }
    let snapshot = state.current.load_full();
    match path {
        "/status" => Reply::json(200, &views::status(state, &snapshot)),
        "/config" => Reply::json(200, &views::config(&snapshot.config)),
        "/routes" => Reply::json(200, &views::routes(&snapshot)),
        "/upstreams" => Reply::json(200, &views::upstreams(&snapshot)),
        "/ratelimit" => views::rate_limit(state, &snapshot, &request.query).map_or_else(
            |(status, message)| Reply::error(status, "bad_request", &message),
            |v| Reply::json(200, &v),
        ),
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: views::metrics(state).into_bytes(),
        },
        "/audit" => Reply::json(200, &json!({ "entries": state.audit.entries() })),
        "/usage" => Reply::json(200, &views::usage(&snapshot)),
        "/usage.csv" => Reply {
            status: 200,
            content_type: "text/csv",
            body: views::usage_csv(&snapshot).into_bytes(),
        },
        "/webhooks" => Reply::json(200, &views::webhooks(&snapshot)),
        "/l4" => match state.ask(Control::L4View) {
            Some(view) => Reply::json(200, &view),
            None => Reply::error(503, "unavailable", "the gateway is shutting down"),
        },
        "/acl" | "/acl/add" | "/acl/remove" => acl(state, request),
        "/cache/purge" => cache_purge(state, request),
        "/reload" => match state.ask(|reply| Control::Reload {
            identity: identity(request),
            reply,
        }) {
            Some(Ok(summary)) => Reply::json(200, &json!({ "reloaded": true, "summary": summary })),
            Some(Err(problems)) => Reply::json(
                422,
                &json!({
                    "code": "reload_refused",
                    "message": "the running config stays",
                    "problems": problems.lines().collect::<Vec<_>>(),
                }),
            ),
            None => Reply::error(503, "unavailable", "the gateway is shutting down"),
        },
        "/openapi.json" => Reply::json(200, &openapi::document()),
        _ => Reply::error(404, "not_found", "no such admin endpoint"),
    }
}

/// `POST /cache/purge?key=KEY` or `?prefix=PREFIX`.
fn cache_purge(state: &AdminState, request: &Request) -> Reply {
    let mut target = None;
    for (name, value) in url::form_urlencoded::parse(request.query.as_bytes()) {
        match name.as_ref() {
            "key" => target = Some((value.into_owned(), false)),
            "prefix" => target = Some((value.into_owned(), true)),
            _ => {}
        }
    }
    let Some((key, prefix)) = target.filter(|(k, _)| !k.is_empty()) else {
        return Reply::error(400, "bad_request", "give key=KEY or prefix=PREFIX");
    };
    match state.ask(|reply| Control::CachePurge {
        key: key.clone(),
        prefix,
        identity: identity(request),
        reply,
    }) {
        Some(purged) => Reply::json(
            200,
            &json!({ "purged": purged, if prefix { "prefix" } else { "key" }: key }),
        ),
        None => Reply::error(503, "unavailable", "the gateway is shutting down"),
    }
}

/// Who made an authorized request, for the audit trail (never the token itself).
fn identity(request: &Request) -> String {
    request
        .authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map_or_else(|| "unknown".to_owned(), |t| audit::token_identity(t.trim()))
}

/// `GET /acl`, `POST /acl/add?list=deny&cidr=…&ttl=10m`, `POST /acl/remove?list=…&cidr=…`.
fn acl(state: &AdminState, request: &Request) -> Reply {
    use crate::runtime::acl::{AclCommand, AclList, parse_net};
    let mut list = AclList::Deny;
    let mut cidr = None;
    let mut ttl = None;
    for (name, value) in url::form_urlencoded::parse(request.query.as_bytes()) {
        match name.as_ref() {
            "list" => match AclList::parse(&value) {
                Some(l) => list = l,
                None => return Reply::error(400, "bad_request", "list is deny or allow"),
            },
            "cidr" => cidr = Some(value.into_owned()),
            "ttl" => match humantime::parse_duration(&value) {
                Ok(d) => ttl = Some(d),
                Err(e) => return Reply::error(400, "bad_request", &format!("invalid ttl: {e}")),
            },
            _ => {}
        }
    }
    let command = if request.path == "/acl" {
        AclCommand::List
    } else {
        let Some(cidr) = cidr else {
            return Reply::error(400, "bad_request", "the cidr parameter is required");
        };
        let net = match parse_net(&cidr) {
            Ok(net) => net,
            Err(message) => return Reply::error(400, "bad_request", &message),
        };
        if request.path == "/acl/add" {
            AclCommand::Add { list, net, ttl }
        } else {
            AclCommand::Remove { list, net }
        }
    };
    match state.ask(|reply| Control::Acl {
        command,
        identity: identity(request),
        reply,
    }) {
        Some(Ok(value)) => Reply::json(200, &value),
        Some(Err(message)) => Reply::error(404, "not_found", &message),
        None => Reply::error(503, "unavailable", "the gateway is shutting down"),
    }
}

/// What `gateway status` and `gateway reload` use: one admin API call from the CLI.
/// `admin` is the API's base URL (`http://127.0.0.1:9901`).
pub fn call(
    admin: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let url = format!("{}{path}", admin.trim_end_matches('/'));
    let endpoint = crate::auth::client::Endpoint::parse(&url, None).map_err(|e| e.to_string())?;
    let headers = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let (status, body) = runtime
        .block_on(endpoint.call(method, &headers, b"", Duration::from_secs(35), 16 << 20))
        .map_err(|e| format!("{url}: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
