//! Configuration: the TOML schema, its validation, and the immutable snapshot workers run on.
//!
//! Two stages: [`raw`] mirrors the file (serde, `deny_unknown_fields`, human units), then
//! [`validate`] resolves references and reports *every* problem as `file:line: key: message`.
//! A [`Config`] that exists is valid: workers never re-check it.

mod locate;
pub mod raw;
mod raw_l4;
mod raw_mediation;
mod raw_traffic;
pub mod transform;
mod validate;
mod validate_l4;
mod validate_mediation;
mod validate_policy;
mod validate_route;
mod validate_traffic;

use std::{fmt, net::SocketAddr, path::Path, path::PathBuf, time::Duration};

use ipnet::IpNet;
use regex::bytes::Regex;

pub use self::locate::Locator;

/// A validated configuration snapshot.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from, for messages.
    pub source: PathBuf,
    /// The file's text as loaded (the admin API shows it, secrets redacted).
    pub text: String,
    pub gateway: GatewaySettings,
    pub limits: Limits,
    pub listeners: Vec<ListenerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub xdp: Option<XdpConfig>,
    pub edge: EdgePolicyConfig,
    pub auth: AuthConfig,
    pub consumers: Vec<ConsumerConfig>,
    pub access_log: Option<crate::observe::access_log::AccessLogConfig>,
    pub cache: CacheSettings,
    pub metering: MeteringConfig,
    pub webhooks: Vec<crate::webhooks::WebhookConfig>,
    /// L4 VIPs balanced in XDP.
    pub l4_services: Vec<L4ServiceConfig>,
}

/// `[[l4_services]]`: a VIP balanced in XDP over weighted targets with a Maglev table,
/// packets encapsulated (IPIP) to the target, which answers the client directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4ServiceConfig {
    pub name: String,
    pub vip: std::net::IpAddr,
    /// `None`: every port.
    pub port: Option<u16>,
    pub protocol: L4Protocol,
    /// Hash the ports too (5-tuple) or not (3-tuple).
    pub hash_ports: bool,
    /// Maglev table slots (a prime).
    pub table_size: u32,
    pub targets: Vec<L4TargetConfig>,
    pub health_check: Option<L4HealthCheck>,
}

/// The transport protocol of an L4 service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Protocol {
    Tcp,
    Udp,
}

impl L4Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// `tcp` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One target of an L4 service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4TargetConfig {
    pub addr: std::net::IpAddr,
    pub weight: u32,
}

/// Active checks of an L4 service's targets: the probe, on `port` of each target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4HealthCheck {
    pub port: u16,
    pub probe: HealthCheckConfig,
}

/// `[cache]`: limits of each worker's response cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_size: u64,
    pub max_entry_size: u64,
}

/// One part of a route's cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKeyPart {
    Method,
    Host,
    Path,
    Query,
    /// A request header (lower-case name).
    Header(String),
    Cookie(String),
}

/// A route's response caching.
#[derive(Debug, Clone)]
pub struct RouteCache {
    pub key: Vec<CacheKeyPart>,
    pub default_ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// `[gateway]`.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Log filter used when `RUST_LOG` is not set.
    pub log_level: Option<String>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Pseudonym the gateway writes into `Via`.
    pub via: String,
    /// Rate-limit keys tracked at once, all limits together.
    pub rate_limit_keys: usize,
    /// The admin API's address, when enabled.
    pub admin: Option<SocketAddr>,
    /// The admin API's bearer token.
    pub admin_token: Option<Secret>,
    /// Where the audit trail is appended, when set.
    pub audit_log: Option<PathBuf>,
    /// The hand-off socket for zero-downtime binary upgrades, when set.
    pub upgrade_socket: Option<PathBuf>,
    /// Steer new connections to workers by client address (the `sk_reuseport`
    /// program); `false`: the kernel's hash.
    pub steer_by_client: bool,
    /// Skip a worker holding more than this share (percent) of the least loaded one's
    /// connections, plus [`STEERING_SLACK`].
    pub steering_overload_percent: u32,
    /// Add `x-gateway-worker: N` to responses.
    pub debug_worker_header: bool,
}

/// Connections a worker may hold above the overload share before it is skipped (so a
/// few connections on an idle appliance do not bounce clients between workers).
pub const STEERING_SLACK: u32 = 8;

/// A secret string: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// `[limits]`: downstream limits, enforced per request on every worker.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (start line and headers) → 431.
    pub max_head_size: usize,
    /// Most header fields in a request → 431.
    pub max_headers: usize,
    /// Longest request target → 414.
    pub max_uri_length: usize,
    /// Largest request body → 413.
    pub max_body_size: u64,
    /// Time allowed from a request's first byte to the end of its head → 408.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may sit between requests.
    pub idle_timeout: Duration,
    /// Longest pause while reading a request body.
    pub body_read_timeout: Duration,
    /// A WebSocket tunnel quiet both ways for this long is closed.
    pub websocket_idle_timeout: Duration,
    /// Largest pending body the gateway reads and discards to keep a connection open
    /// after answering a request itself; larger ones close the connection.
    pub discard_body_max: u64,
}

/// `[[listeners]]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub backlog: u32,
    /// TLS termination, when configured.
    pub tls: Option<TlsListenerConfig>,
    /// Plain listeners only: redirect every request to HTTPS on this port.
    pub redirect_to_https: Option<u16>,
}

/// TLS settings of a listener, with its certificates loaded and checked.
#[derive(Debug, Clone)]
pub struct TlsListenerConfig {
    /// In config order; the first is the default for clients without a matching SNI.
    pub certificates: Vec<crate::tls::LoadedCertificate>,
    pub sni_required: bool,
    pub handshake_timeout: Duration,
    /// `Strict-Transport-Security` header value, when enabled.
    pub hsts: Option<String>,
    /// Client certificates asked for (mTLS); `None`: not asked.
    pub client_auth: Option<crate::tls::ClientAuth>,
}

/// `[[upstreams]]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: Balance,
    pub targets: Vec<TargetConfig>,
    pub connect_timeout: Duration,
    /// Longest wait for response bytes (head or body).
    pub read_timeout: Duration,
    /// Longest wait for the upstream to accept request bytes.
    pub write_timeout: Duration,
    /// Idle keep-alive connections kept per target, per worker.
    pub max_idle_per_target: usize,
    /// Most requests in flight at once, all workers together (503 beyond).
    pub max_in_flight: Option<u32>,
    /// Connection limits (circuit breaking), all workers together.
    pub max_connections: Option<u32>,
    /// Requests allowed to wait for a connection at `max_connections` (503 beyond).
    pub max_pending: u32,
    /// How far retries may add to the upstream's load.
    pub retry_budget: RetryBudgetConfig,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier: Option<OutlierConfig>,
    /// Below this share of available targets, every target is used.
    pub panic_threshold: f64,
    /// How long an idle pooled connection may be reused.
    pub idle_timeout: Duration,
    /// TLS towards the targets, when configured.
    pub tls: Option<crate::tls::UpstreamTls>,
}

/// An upstream's retry budget: in any 10 s window, retries may reach `ratio` of the
/// requests plus `min_per_second` per second (per worker), so retries cannot multiply
/// an outage.
#[derive(Debug, Clone, Copy)]
pub struct RetryBudgetConfig {
    pub ratio: f64,
    pub min_per_second: f64,
}

/// When and how a route's failed tries are tried again (on another target when there is
/// one). Requests whose body was already sent are never retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1: never retry).
    pub attempts: u32,
    pub on_connect_failure: bool,
    /// The connection failed after the request went out, before any response byte.
    pub on_reset: bool,
    /// No response head within the per-try timeout (or the upstream's read timeout).
    pub on_timeout: bool,
    /// Upstream response statuses that are retried.
    pub on_statuses: Vec<u16>,
    /// Also retry methods that are not idempotent.
    pub non_idempotent: bool,
    /// Backoff before retry n: a random wait up to `backoff × 2^(n-1)`, capped.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Without a `retry` table: one more try on another target when connecting fails.
    fn default() -> Self {
        Self {
            attempts: 2,
            on_connect_failure: true,
            on_reset: false,
            on_timeout: false,
            on_statuses: Vec::new(),
            non_idempotent: false,
            backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }
}

/// A content coding the gateway can apply to responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Brotli => "br",
            Self::Gzip => "gzip",
        }
    }

    /// Names clients may use for it in `Accept-Encoding`.
    pub fn names(self) -> &'static [&'static [u8]] {
        match self {
            Self::Brotli => &[b"br"],
            Self::Gzip => &[b"gzip", b"x-gzip"],
        }
    }
}

/// Response compression of a route.
#[derive(Debug, Clone)]
pub struct CompressionConfig {
    /// Codings offered, in the server's order of preference.
    pub codings: Vec<Coding>,
    /// Bodies declared smaller than this are sent as they are.
    pub min_size: u64,
    /// Media types (`text/*` or exact, lower-case) that are compressed.
    pub types: Vec<String>,
    pub gzip_level: u32,
    pub brotli_quality: u32,
    /// Brotli window (log2 bytes): bounds the encoder's memory per response.
    pub brotli_window: u32,
}

/// A route's API version.
#[derive(Debug, Clone)]
pub struct VersionConfig {
    pub value: String,
    pub from: VersionSource,
    pub to: VersionTarget,
}

/// Where the request names its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// The first path segment, `/v2/…`.
    Path,
    /// A header (lower-case name).
    Header(String),
    /// The `Accept` media type: a `version`/`v` parameter or a `vnd.….v2` subtype.
    Accept,
}

/// How the version reaches the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionTarget {
    /// As the client sent it.
    Unchanged,
    /// As a `/v2` first path segment.
    Path,
    /// As this header (lower-case name); a version in the path is removed from it.
    Header(String),
}

/// Which requests of a route go to another upstream than its own.
#[derive(Debug, Clone)]
pub struct SplitRule {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub choice: SplitChoice,
}

/// How a [`SplitRule`] picks its requests.
#[derive(Debug, Clone)]
pub enum SplitChoice {
    /// This many basis points (1/100 of a percent) of the traffic.
    Weight(u32),
    /// Requests whose header (lower-case name) equals the value.
    Header(String, String),
    /// Requests whose cookie equals the value.
    Cookie(String, String),
}

/// Copies of a share of a route's requests to a shadow upstream (answers ignored).
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub upstream: usize,
    /// Basis points of the requests mirrored.
    pub share: u32,
    /// Requests with larger bodies are not mirrored.
    pub max_body: u64,
}

/// A route's traffic management: timeouts, retries, header transformations, traffic
/// split and mirroring.
#[derive(Debug, Clone, Default)]
pub struct RouteTraffic {
    pub retry: RetryPolicy,
    /// Flag rules first (in order), then weighted shares; the rest goes to the route's
    /// own upstream.
    pub split: Vec<SplitRule>,
    /// What keeps a client on one side of a weighted split (random when `None`).
    pub split_key: Option<HashKey>,
    pub mirror: Option<MirrorConfig>,
    pub compression: Option<CompressionConfig>,
    pub cache: Option<RouteCache>,
    /// Applied to the request before it goes upstream.
    pub request_headers: transform::HeaderTransform,
    /// Applied to every response of the route (the gateway's own answers too).
    pub response_headers: transform::HeaderTransform,
    /// Until the response starts, every try and backoff included (504 beyond).
    pub timeout: Option<Duration>,
    /// One try's wait for the response head after its request was sent.
    pub per_try_timeout: Option<Duration>,
}

/// Active health checks of an upstream's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// HTTP path to GET; `None`: a TCP connect is the check.
    pub path: Option<String>,
    pub host: Option<String>,
    /// Healthy statuses; empty means 200-399.
    pub expect: Vec<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

/// Passive outlier ejection of an upstream's targets.
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

/// One backend.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin (nginx's algorithm); `weighted` is an alias.
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastConn,
    /// Power of two random choices on latency EWMA × load.
    P2cEwma,
    /// Maglev consistent hashing on a request key.
    ConsistentHash(HashKey),
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (name lower-cased).
    Header(String),
    /// A cookie by name.
    Cookie(String),
    /// The client's address.
    ClientIp,
}

/// `[[routes]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    /// Upper-case method names; empty means any.
    pub methods: Vec<String>,
    pub headers: Vec<ValueMatch>,
    pub query: Vec<ValueMatch>,
    /// Conditions on the connection's verified client certificate (`subject`, `san`).
    pub client_cert: Vec<ValueMatch>,
    /// `Some(true)`: WebSocket handshakes only; `Some(false)`: never them.
    pub websocket: Option<bool>,
    /// The API version the route serves, and how it reaches the upstream.
    pub version: Option<VersionConfig>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Remove the matched `path_prefix` before forwarding.
    pub strip_prefix: bool,
    /// Replace the matched part of the path before forwarding.
    pub rewrite: Option<String>,
    /// Who may call the route and how often.
    pub policy: RoutePolicy,
    /// Timeouts and retries.
    pub traffic: RouteTraffic,
    /// The route's OpenAPI document, for the developer portal.
    pub openapi: Option<std::sync::Arc<serde_json::Value>>,
    /// Translation, body edits and validation, when the route does more than forward.
    pub mediation: Option<std::sync::Arc<crate::mediate::Mediation>>,
}

/// A route's security policy, checked in this order: client IP, CORS preflight,
/// credentials, rate limits, concurrency.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    /// Credentials accepted (any of); empty: the route is public.
    pub auth: Vec<crate::auth::AuthMethod>,
    /// Scopes a JWT must all carry.
    pub scopes: Vec<String>,
    /// (claim, value) pairs the token must carry.
    pub claims: Vec<(String, String)>,
    /// Consumer names or groups admitted; empty: any identified caller.
    pub consumers: Vec<String>,
    pub strip_credentials: bool,
    pub rate_limit: Option<crate::ratelimit::LimitSpec>,
    pub max_in_flight: Option<u32>,
    pub ip_allow: Vec<IpNet>,
    pub ip_deny: Vec<IpNet>,
    pub cors: Option<CorsConfig>,
}

/// CORS of a route.
#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// Exact origins (lower-case); `*` allows any.
    pub origins: Vec<String>,
    /// `https://*.example.com` stored as (`https://`, `.example.com`).
    pub origin_patterns: Vec<(String, String)>,
    pub any_origin: bool,
    /// Comma-separated header values, ready to send.
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub allow_credentials: bool,
    pub max_age: Option<Duration>,
}

/// `[auth]`, with keys loaded.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub jwt: Vec<JwtProviderConfig>,
    pub introspection: Vec<IntrospectionConfig>,
    /// Lower-case header name API keys are read from.
    pub api_key_header: String,
    pub api_key_query: Option<String>,
    /// Lower-case header names for the identity sent upstream.
    pub consumer_header: String,
    pub subject_header: String,
    pub token_cache_entries: usize,
}

/// One `[[auth.jwt]]` provider.
#[derive(Debug, Clone)]
pub struct JwtProviderConfig {
    pub name: String,
    pub verifier: crate::auth::jwt::JwtVerifier,
    pub token_from: Vec<crate::auth::TokenSource>,
    /// (claim, lower-case header) pairs forwarded upstream.
    pub claim_headers: Vec<(String, String)>,
}

/// One `[[auth.introspection]]` server.
#[derive(Debug, Clone)]
pub struct IntrospectionConfig {
    pub name: String,
    pub introspector: crate::auth::introspect::Introspector,
    pub token_from: Vec<crate::auth::TokenSource>,
}

/// `[[consumers]]`.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub name: String,
    pub group: Option<String>,
    /// SHA-256 of each API key.
    pub api_key_hashes: Vec<[u8; 32]>,
    pub jwt_subjects: Vec<String>,
    pub rate_limit: Option<crate::ratelimit::LimitSpec>,
    /// The plan whose quotas apply.
    pub plan: Option<PlanConfig>,
}

/// A plan: quotas its consumers share the terms of (each consumer has its own counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    pub name: String,
    pub quota: crate::metering::Quota,
}

/// `[metering]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteringConfig {
    /// The usage file; `None`: counts are kept in memory only.
    pub path: Option<PathBuf>,
    pub flush_interval: Duration,
}

/// Host condition (compared lower-case, port ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: one or more labels before it.
    Suffix(String),
}

/// Path condition, applied to the normalized path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Matches the prefix itself and anything below it at a segment boundary.
    Prefix(String),
    Regex(Regex),
}

/// A header or query condition.
#[derive(Debug, Clone)]
pub struct ValueMatch {
    /// Header names lower-cased; query names as written.
    pub name: String,
    pub condition: ValueCondition,
}

/// How a header or query value is tested.
#[derive(Debug, Clone)]
pub enum ValueCondition {
    Exact(String),
    Regex(Regex),
    /// `present = true` requires the field, `false` requires its absence.
    Present(bool),
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Driver,
    Skb,
}

/// `[xdp]`.
#[derive(Debug, Clone)]
pub struct XdpConfig {
    pub interface: Option<String>,
    pub mode: XdpMode,
    /// bpffs folder of the pinned state; the interface's subfolder holds its maps and link.
    pub pin_path: std::path::PathBuf,
    pub on_exit: XdpOnExit,
    /// Outer IPv4 source prefix of L4-encapsulated packets.
    pub tunnel_source_v4: ipnet::Ipv4Net,
    /// Outer IPv6 source prefix (/96 or longer) of L4-encapsulated packets.
    pub tunnel_source_v6: ipnet::Ipv6Net,
    /// New L4 flows per second each CPU remembers in the connection table (0: no
    /// limit); past it, a flood of new flows is still balanced through the Maglev ring
    /// but does not evict the flows the table holds.
    pub l4_remembered_flows_per_cpu: u32,
}

/// What a stopping gateway does with its XDP program (a binary upgrade always hands it
/// to the new process instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpOnExit {
    /// Detach: nothing of the gateway stays in the driver. The pinned maps stay, so the
    /// next start finds the live entries and counters.
    Detach,
    /// Leave the program attached with its lists: the driver keeps dropping denied
    /// sources while the gateway is down, and the next start replaces the program in
    /// place (`gateway xdp detach` removes it).
    Keep,
}

/// The edge policy (`[xdp]` deny/allow/protect_all/syn_guard): enforced by the XDP
/// program when it is attached, otherwise in userspace at accept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgePolicyConfig {
    /// Sources always dropped.
    pub deny: Vec<IpNet>,
    /// When non-empty, the only sources admitted (deny still wins).
    pub allow: Vec<IpNet>,
    /// Apply the lists to all traffic, not only the gateway's listener ports.
    pub protect_all: bool,
    /// Per-source budget of new TCP connections.
    pub syn_guard: Option<SynGuardConfig>,
    /// L7-to-XDP bans.
    pub ban: Option<BanPolicy>,
}

/// When a source's rejected requests get it banned at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanPolicy {
    /// Statuses that count (malformed requests answered 400 included when listed).
    pub statuses: Vec<u16>,
    pub threshold: u32,
    pub window: Duration,
    pub duration: Duration,
}

/// Token bucket of the SYN guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynGuardConfig {
    pub rate_per_sec: u32,
    pub burst: u32,
}

/// One thing wrong with a config file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`, naming `path` in problems.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        validate::parse_and_validate(path, text).map_err(ConfigError::Invalid)
    }

    /// Worker count with `0` resolved to the number of cores.
    pub fn worker_count(&self) -> usize {
        match self.gateway.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}
