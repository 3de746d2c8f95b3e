//! The config file exactly as written: serde structs with `deny_unknown_fields` and human
//! units. Nothing here is validated beyond types; `super::validate` turns a [`RawConfig`]
//! into a [`super::Config`].

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub use super::raw_l4::*;
use super::raw_mediation::mediation_defaults;
pub use super::raw_mediation::*;
pub use super::raw_traffic::*;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    pub xdp: Option<RawXdp>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    pub access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub cache: RawCacheSettings,
    /// Where usage counts are kept.
    #[serde(default)]
    pub metering: RawMetering,
    /// Plans consumers subscribe to (quotas).
    #[serde(default)]
    pub plans: Vec<RawPlan>,
    /// Endpoints receiving the gateway's events.
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    /// L4 VIPs balanced in XDP.
    #[serde(default)]
    pub l4_services: Vec<RawL4Service>,
}

/// `[access_log]`: one JSON line per request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `"stderr"` or a file (appended; reopened on SIGUSR1).
    pub path: String,
    /// The fields each line carries (all when absent).
    pub fields: Option<Vec<String>>,
}

/// `[gateway]`: process-wide settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    #[serde(default)]
    pub workers: usize,
    pub log_level: Option<String>,
    #[serde(
        default = "defaults::drain_timeout",
        deserialize_with = "human_duration"
    )]
    pub drain_timeout: Duration,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default = "defaults::via")]
    pub via: String,
    /// Rate-limit keys tracked at once across all limits (memory: 16 bytes each).
    #[serde(default = "defaults::rate_limit_keys")]
    pub rate_limit_keys: usize,
    /// Address of the admin API (metrics, status, reload); off when unset.
    pub admin: Option<String>,
    /// File holding the admin API's bearer token (`GATEWAY_ADMIN_TOKEN` wins).
    pub admin_token_file: Option<String>,
    /// File the audit trail of admin changes is appended to.
    pub audit_log: Option<String>,
    /// Unix socket a new binary connects to for a zero-downtime upgrade.
    pub upgrade_socket: Option<String>,
    /// Which worker accepts a connection: `client_ip` (the steering program) or
    /// `kernel` (the kernel's reuseport hash).
    #[serde(default = "defaults::worker_steering")]
    pub worker_steering: String,
    /// A worker is skipped when it holds more than this many times the connections of
    /// the least loaded one (plus a few).
    #[serde(default = "defaults::steering_overload")]
    pub steering_overload: f64,
    /// Add `x-gateway-worker: N` to every response (debugging worker steering).
    #[serde(default)]
    pub debug_worker_header: bool,
}

impl Default for RawGateway {
    fn default() -> Self {
        Self {
            workers: 0,
            log_level: None,
            drain_timeout: defaults::drain_timeout(),
            trusted_proxies: Vec::new(),
            via: defaults::via(),
            rate_limit_keys: defaults::rate_limit_keys(),
            admin: None,
            admin_token_file: None,
            audit_log: None,
            upgrade_socket: None,
            worker_steering: defaults::worker_steering(),
            steering_overload: defaults::steering_overload(),
            debug_worker_header: false,
        }
    }
}

/// `[limits]`: downstream HTTP limits, per connection and request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default = "defaults::max_head_size", deserialize_with = "human_size")]
    pub max_head_size: u64,
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    #[serde(default = "defaults::max_uri_length", deserialize_with = "human_size")]
    pub max_uri_length: u64,
    #[serde(default = "defaults::max_body_size", deserialize_with = "human_size")]
    pub max_body_size: u64,
    #[serde(
        default = "defaults::header_read_timeout",
        deserialize_with = "human_duration"
    )]
    pub header_read_timeout: Duration,
    #[serde(
        default = "defaults::idle_timeout",
        deserialize_with = "human_duration"
    )]
    pub idle_timeout: Duration,
    #[serde(
        default = "defaults::body_read_timeout",
        deserialize_with = "human_duration"
    )]
    pub body_read_timeout: Duration,
    /// A WebSocket tunnel with no traffic either way for this long is closed.
    #[serde(
        default = "defaults::websocket_idle_timeout",
        deserialize_with = "human_duration"
    )]
    pub websocket_idle_timeout: Duration,
    #[serde(
        default = "defaults::discard_body_max",
        deserialize_with = "human_size"
    )]
    pub discard_body_max: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_head_size: defaults::max_head_size(),
            max_headers: defaults::max_headers(),
            max_uri_length: defaults::max_uri_length(),
            max_body_size: defaults::max_body_size(),
            header_read_timeout: defaults::header_read_timeout(),
            idle_timeout: defaults::idle_timeout(),
            body_read_timeout: defaults::body_read_timeout(),
            websocket_idle_timeout: defaults::websocket_idle_timeout(),
            discard_body_max: defaults::discard_body_max(),
        }
    }
}

/// `[[listeners]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub bind: String,
    #[serde(default = "defaults::backlog")]
    pub backlog: u32,
    pub tls: Option<RawTls>,
    /// Answer every request with a 308 to the same URL over HTTPS.
    #[serde(default)]
    pub redirect_to_https: bool,
    /// HTTPS port written into redirects (443 is left implicit).
    #[serde(default = "defaults::https_port")]
    pub https_port: u16,
}

/// `[listeners.tls]`: TLS termination on a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// One certificate: PEM chain, end-entity first.
    pub cert: Option<String>,
    /// Its PEM private key.
    pub key: Option<String>,
    /// Several certificates, chosen by SNI; the first is the default.
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// Refuse handshakes whose SNI matches no certificate (and those without SNI).
    #[serde(default)]
    pub sni_required: bool,
    #[serde(
        default = "defaults::handshake_timeout",
        deserialize_with = "human_duration"
    )]
    pub handshake_timeout: Duration,
    /// Send `Strict-Transport-Security` with this max-age on every response.
    #[serde(default, deserialize_with = "human_duration_opt")]
    pub hsts_max_age: Option<Duration>,
    /// Add `includeSubDomains` to the HSTS header.
    #[serde(default)]
    pub hsts_include_subdomains: bool,
    /// Client certificates (mTLS): `none`, `optional` or `required`.
    #[serde(default = "defaults::client_auth")]
    pub client_auth: RawClientAuth,
    /// PEM bundle of the CAs client certificates must chain to.
    pub client_ca: Option<String>,
}

/// `[listeners.tls] client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawClientAuth {
    None,
    Optional,
    Required,
}

/// One certificate and key of a TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    /// A DER OCSP response to staple.
    pub ocsp: Option<String>,
}

/// Load-balancing algorithm of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    RoundRobin,
    Weighted,
    LeastConn,
    P2cEwma,
    ConsistentHash,
}

/// `[[upstreams]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    #[serde(default = "defaults::balance")]
    pub balance: RawBalance,
    /// `header:NAME`, `cookie:NAME` or `client_ip`; consistent_hash only.
    pub hash_key: Option<String>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    #[serde(
        default = "defaults::connect_timeout",
        deserialize_with = "human_duration"
    )]
    pub connect_timeout: Duration,
    #[serde(
        default = "defaults::upstream_read_timeout",
        deserialize_with = "human_duration"
    )]
    pub read_timeout: Duration,
    #[serde(
        default = "defaults::upstream_write_timeout",
        deserialize_with = "human_duration"
    )]
    pub write_timeout: Duration,
    #[serde(default = "defaults::max_idle_per_target")]
    pub max_idle_per_target: usize,
    /// Most requests to this upstream in flight at once, across all workers.
    pub max_in_flight: Option<u32>,
    /// Most connections open to this upstream at once, across all workers.
    pub max_connections: Option<u32>,
    /// Requests that may wait for a connection when `max_connections` are open.
    #[serde(default = "defaults::max_pending")]
    pub max_pending: u32,
    /// How many retries the upstream accepts on top of its requests.
    #[serde(default)]
    pub retry_budget: RawRetryBudget,
    /// Active health checks of every target.
    pub health_check: Option<RawHealthCheck>,
    /// Passive outlier ejection.
    pub outlier: Option<RawOutlier>,
    /// Below this share of available targets, health is ignored (all targets used).
    #[serde(default = "defaults::panic_threshold")]
    pub panic_threshold: f64,
    #[serde(
        default = "defaults::pool_idle_timeout",
        deserialize_with = "human_duration"
    )]
    pub idle_timeout: Duration,
    /// Speak TLS to the targets.
    #[serde(default)]
    pub tls: bool,
    /// SNI and verified name; without it the target's IP address is verified.
    pub tls_server_name: Option<String>,
    /// PEM bundle of the CAs to trust; without it the system roots.
    pub tls_ca: Option<String>,
    /// Accept any certificate (labs only; logged loudly).
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
}

/// `health_check = { … }` of an upstream: an HTTP GET (with `path`) or a TCP connect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Port probed (`[[l4_services]]` only; upstream targets are probed on theirs).
    pub port: Option<u16>,
    pub path: Option<String>,
    /// Host header of the probe (the target's address otherwise).
    pub host: Option<String>,
    /// Statuses that count as healthy (200-399 when empty).
    #[serde(default)]
    pub expect: Vec<u16>,
    #[serde(
        default = "defaults::health_interval",
        deserialize_with = "human_duration"
    )]
    pub interval: Duration,
    #[serde(
        default = "defaults::health_timeout",
        deserialize_with = "human_duration"
    )]
    pub timeout: Duration,
    /// Consecutive successes that bring a target back.
    #[serde(default = "defaults::health_threshold")]
    pub healthy: u32,
    /// Consecutive failures that take it out.
    #[serde(default = "defaults::health_threshold")]
    pub unhealthy: u32,
}

/// `outlier = { … }` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    #[serde(default = "defaults::outlier_failures")]
    pub consecutive_failures: u32,
    #[serde(
        default = "defaults::outlier_base",
        deserialize_with = "human_duration"
    )]
    pub base_ejection: Duration,
    #[serde(default = "defaults::outlier_max", deserialize_with = "human_duration")]
    pub max_ejection: Duration,
}

/// One backend of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub addr: String,
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

/// A header or query-parameter condition of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatcher {
    pub name: String,
    pub value: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: Vec<RawMatcher>,
    #[serde(default)]
    pub query: Vec<RawMatcher>,
    /// Conditions on the verified client certificate: name `subject` or `san`.
    #[serde(default)]
    pub client_cert: Vec<RawMatcher>,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
    /// Credentials accepted, any of: JWT provider names and `api_key`.
    #[serde(default)]
    pub auth: Vec<String>,
    /// Scopes the verified JWT must all carry.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claims the verified token must carry with these values (for an array claim such
    /// as `roles`, the value must be one of its members).
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, String>,
    /// Consumers (by name or group) allowed on the route; empty: any authenticated one.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Remove the credential (Authorization, API key header or parameter) before forwarding.
    #[serde(default = "defaults::strip_credentials")]
    pub strip_credentials: bool,
    pub rate_limit: Option<RawRateLimit>,
    /// Most requests of this route in flight at once, across all workers.
    pub max_in_flight: Option<u32>,
    /// Client sources allowed (CIDR); empty: any.
    #[serde(default)]
    pub ip_allow: Vec<String>,
    /// Client sources refused (CIDR); wins over `ip_allow`.
    #[serde(default)]
    pub ip_deny: Vec<String>,
    pub cors: Option<RawCors>,
    /// An OpenAPI 3 document (JSON) describing the route, shown in the developer portal.
    pub openapi: Option<String>,
    /// `true`: only WebSocket handshakes match; `false`: only other requests; unset: both.
    pub websocket: Option<bool>,
    /// The API version the route serves.
    pub version: Option<RawVersion>,
    /// Other upstreams taking part of the route's traffic (canary, feature flags).
    #[serde(default)]
    pub split: Vec<RawSplit>,
    /// What keeps a client on one side of a weighted split: `client_ip`,
    /// `header:NAME` or `cookie:NAME` (random per request when unset).
    pub split_key: Option<String>,
    /// A shadow upstream receiving copies of a share of the requests.
    pub mirror: Option<RawMirror>,
    /// Compress responses for clients that accept it.
    pub compression: Option<RawCompression>,
    /// Serve GET and HEAD from the worker's response cache.
    pub cache: Option<RawRouteCache>,
    /// Headers changed on the way to the upstream.
    pub request_headers: Option<RawHeaderTransform>,
    /// Headers changed on the way to the client.
    pub response_headers: Option<RawHeaderTransform>,
    /// How failed tries are retried.
    pub retry: Option<RawRetry>,
    /// The request becomes a GraphQL operation on the upstream.
    pub graphql: Option<RawGraphql>,
    /// The JSON request becomes a SOAP call on the upstream.
    pub soap: Option<RawSoap>,
    /// Edits to JSON request bodies.
    pub request_body: Option<RawBodyEdits>,
    /// Edits to JSON response bodies.
    pub response_body: Option<RawBodyEdits>,
    /// The answer merges concurrent calls to several upstreams.
    pub aggregate: Option<RawAggregate>,
    /// Checks of the request (JSON Schema, OpenAPI operation).
    pub validate: Option<RawValidate>,
    /// Largest body the route buffers to translate, edit or validate.
    #[serde(
        default = "mediation_defaults::max_mediated_body",
        deserialize_with = "human_size"
    )]
    pub max_mediated_body: u64,
    /// Longest time until the response starts, every try and backoff included.
    #[serde(default, deserialize_with = "human_duration_opt")]
    pub timeout: Option<Duration>,
    /// Longest wait for the response head after a try sent the request.
    #[serde(default, deserialize_with = "human_duration_opt")]
    pub per_try_timeout: Option<Duration>,
}

/// A rate limit: `rate = "100/s"` (or `/min`, `/h`), `burst`, and what it is keyed by.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub rate: String,
    /// Requests allowed back to back; defaults to one second's worth (at least 1).
    pub burst: Option<u32>,
    /// `client_ip`, `consumer`, `route`, `header:NAME` or `claim:NAME`.
    #[serde(default = "defaults::rate_limit_key")]
    pub key: String,
    /// `gcra` (token bucket, the default) or `sliding_window`.
    #[serde(default = "defaults::rate_limit_mode")]
    pub mode: String,
}

/// `cors = { ... }` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Exact origins, `*`, or patterns like `https://*.example.com`.
    pub allow_origins: Vec<String>,
    #[serde(default = "defaults::cors_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default, deserialize_with = "human_duration_opt")]
    pub max_age: Option<Duration>,
}

/// `[auth]`: how credentials are verified.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub jwt: Vec<RawJwtProvider>,
    #[serde(default)]
    pub introspection: Vec<RawIntrospection>,
    #[serde(default)]
    pub api_key: RawApiKeyAuth,
    /// Header carrying the authenticated consumer's name upstream.
    #[serde(default = "defaults::consumer_header")]
    pub consumer_header: String,
    /// Header carrying the verified subject upstream.
    #[serde(default = "defaults::subject_header")]
    pub subject_header: String,
    /// Verified tokens cached per worker.
    #[serde(default = "defaults::token_cache_entries")]
    pub token_cache_entries: usize,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            jwt: Vec::new(),
            introspection: Vec::new(),
            api_key: RawApiKeyAuth::default(),
            consumer_header: defaults::consumer_header(),
            subject_header: defaults::subject_header(),
            token_cache_entries: defaults::token_cache_entries(),
        }
    }
}

/// `[[auth.jwt]]`: one token issuer and the keys it signs with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtProvider {
    /// What routes name in `auth`.
    #[serde(default = "defaults::jwt_name")]
    pub name: String,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accepted `aud` values (one must be present).
    #[serde(default)]
    pub audience: Vec<String>,
    #[serde(default)]
    pub keys: Vec<RawJwtKey>,
    /// A JWKS document (file).
    pub jwks: Option<String>,
    /// A JWKS document fetched over HTTP(S) and refreshed in the background.
    pub jwks_url: Option<String>,
    /// PEM bundle trusted for `jwks_url` instead of the system roots.
    pub jwks_ca: Option<String>,
    /// How often the remote JWKS is fetched again.
    #[serde(
        default = "defaults::jwks_refresh",
        deserialize_with = "human_duration"
    )]
    pub jwks_refresh: Duration,
    /// Shortest gap between fetches triggered by tokens with an unknown `kid`.
    #[serde(
        default = "defaults::jwks_min_refresh",
        deserialize_with = "human_duration"
    )]
    pub jwks_min_refresh: Duration,
    #[serde(default = "defaults::jwt_leeway", deserialize_with = "human_duration")]
    pub leeway: Duration,
    /// Where the token is looked for: `header` (Authorization: Bearer), `cookie:NAME`,
    /// `query:NAME`.
    #[serde(default = "defaults::token_from")]
    pub token_from: Vec<String>,
    /// Claims that must be present.
    #[serde(default)]
    pub required_claims: Vec<String>,
    #[serde(default = "defaults::max_token_size", deserialize_with = "human_size")]
    pub max_token_size: u64,
    /// Claim naming the consumer (matched against consumers' `jwt_subjects`).
    #[serde(default = "defaults::consumer_claim")]
    pub consumer_claim: String,
    /// Claims forwarded upstream: claim name → header name.
    #[serde(default)]
    pub claim_headers: std::collections::BTreeMap<String, String>,
}

/// `[[auth.introspection]]`: an OAuth2 introspection endpoint (RFC 7662) for opaque
/// tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    /// What routes name in `auth`.
    pub name: String,
    pub url: String,
    /// PEM bundle trusted for `url` instead of the system roots.
    pub ca: Option<String>,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(
        default = "defaults::introspection_timeout",
        deserialize_with = "human_duration"
    )]
    pub timeout: Duration,
    /// Longest an active answer is reused (never past the token's `exp`).
    #[serde(
        default = "defaults::introspection_cache_ttl",
        deserialize_with = "human_duration"
    )]
    pub cache_ttl: Duration,
    /// How long an inactive answer is reused.
    #[serde(
        default = "defaults::introspection_negative_ttl",
        deserialize_with = "human_duration"
    )]
    pub negative_ttl: Duration,
    #[serde(default = "defaults::token_from")]
    pub token_from: Vec<String>,
    #[serde(default = "defaults::consumer_claim")]
    pub consumer_claim: String,
    #[serde(default = "defaults::max_token_size", deserialize_with = "human_size")]
    pub max_token_size: u64,
}

/// One verification key of a JWT provider: exactly one of `pem`, `jwk`, `secret`,
/// `secret_file`, bound to one algorithm.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtKey {
    pub kid: Option<String>,
    /// Required for PEM and secrets; taken from the JWK when it says.
    pub alg: Option<String>,
    /// A PEM public key file (RSA, EC or Ed25519).
    pub pem: Option<String>,
    /// A JWK file (one key).
    pub jwk: Option<String>,
    /// An HMAC secret written inline (prefer `secret_file`).
    pub secret: Option<String>,
    /// A file holding the HMAC secret.
    pub secret_file: Option<String>,
}

/// `[auth.api_key]`: where API keys are read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeyAuth {
    #[serde(default = "defaults::api_key_header")]
    pub header: String,
    /// Also accept the key from this query parameter.
    pub query: Option<String>,
}

impl Default for RawApiKeyAuth {
    fn default() -> Self {
        Self {
            header: defaults::api_key_header(),
            query: None,
        }
    }
}

/// `[[consumers]]`: a named identity.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub name: String,
    /// A group or plan name routes may admit as a whole.
    pub group: Option<String>,
    /// API keys as `sha256:<64 hex digits>` (`printf %s KEY | sha256sum`).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// JWT consumer-claim values (usually `sub`) that identify this consumer.
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
    /// A limit on everything this consumer calls (keyed by consumer).
    pub rate_limit: Option<RawRateLimit>,
    /// The plan whose quotas apply (a `[[plans]]` name).
    pub plan: Option<String>,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawXdpMode {
    Driver,
    Skb,
}

/// `[xdp] on_exit`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawXdpOnExit {
    Detach,
    Keep,
}

/// `[xdp]`: the XDP attachment and the edge policy it enforces.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXdp {
    pub interface: Option<String>,
    #[serde(default = "defaults::xdp_mode")]
    pub mode: RawXdpMode,
    /// bpffs folder holding the pinned maps and link, one subfolder per interface.
    #[serde(default = "defaults::xdp_pin_path")]
    pub pin_path: std::path::PathBuf,
    /// What a stopping gateway does with the program: `detach` or `keep`.
    #[serde(default = "defaults::xdp_on_exit")]
    pub on_exit: RawXdpOnExit,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub protect_all: bool,
    pub syn_guard: Option<RawSynGuard>,
    /// Ban sources in the deny list when they collect too many rejected requests.
    pub ban: Option<RawBan>,
    /// Outer IPv4 source prefix of L4-encapsulated packets (host bits from the flow).
    #[serde(default = "default_tunnel_source_v4")]
    pub tunnel_source_v4: String,
    /// Outer IPv6 source prefix (at least /96) of L4-encapsulated packets.
    #[serde(default = "default_tunnel_source_v6")]
    pub tunnel_source_v6: String,
    /// New L4 flows per second each CPU remembers in the connection table (0: no limit).
    #[serde(default = "defaults::l4_remembered_flows_per_cpu")]
    pub l4_remembered_flows_per_cpu: u32,
}

/// `[xdp.ban]`: L7-to-XDP feedback.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBan {
    /// Response statuses that count against a source.
    #[serde(default = "defaults::ban_statuses")]
    pub statuses: Vec<u16>,
    /// Rejections within `window` that trigger a ban.
    pub threshold: u32,
    #[serde(deserialize_with = "human_duration")]
    pub window: Duration,
    /// How long the ban lasts.
    #[serde(deserialize_with = "human_duration")]
    pub duration: Duration,
}

/// `[xdp.syn_guard]`: per-source budget of new TCP connections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSynGuard {
    /// New connections per second per source.
    pub rate: u32,
    /// Burst allowance.
    pub burst: u32,
}

/// Accepts `"250ms"`, `"10s"`, `"1m 30s"`.
pub(super) fn human_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write e.g. \"250ms\" or \"10s\""
        ))
    })
}

pub(super) fn human_duration_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    human_duration(d).map(Some)
}

/// Accepts a byte count as an integer, or `"16KiB"`, `"10 MiB"`, `"1GB"`.
pub(super) fn human_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|s| s.as_u64())
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid size {text:?} ({e}); write e.g. \"16KiB\" or \"10MiB\""
                ))
            }),
    }
}

/// Defaults, named so `--help`-style docs and the README can point at them.
pub mod defaults {
    use std::time::Duration;

    use super::{RawBalance, RawXdpMode, RawXdpOnExit};

    pub fn drain_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn via() -> String {
        "gateway".to_owned()
    }
    pub fn max_head_size() -> u64 {
        32 * 1024
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_uri_length() -> u64 {
        8 * 1024
    }
    pub fn max_body_size() -> u64 {
        1024 * 1024 * 1024
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_pending() -> u32 {
        1024
    }
    pub fn websocket_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn body_read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn discard_body_max() -> u64 {
        64 * 1024
    }
    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn https_port() -> u16 {
        443
    }
    pub fn backlog() -> u32 {
        4096
    }
    pub fn balance() -> RawBalance {
        RawBalance::RoundRobin
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn upstream_read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn upstream_write_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_idle_per_target() -> usize {
        64
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn panic_threshold() -> f64 {
        0.5
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn health_threshold() -> u32 {
        2
    }
    pub fn outlier_failures() -> u32 {
        5
    }
    pub fn outlier_base() -> Duration {
        Duration::from_secs(10)
    }
    pub fn outlier_max() -> Duration {
        Duration::from_secs(300)
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn worker_steering() -> String {
        "client_ip".into()
    }
    pub fn steering_overload() -> f64 {
        2.0
    }
    pub fn xdp_mode() -> RawXdpMode {
        RawXdpMode::Driver
    }
    pub fn xdp_pin_path() -> std::path::PathBuf {
        "/sys/fs/bpf/gateway".into()
    }
    /// Katran's default rate of new connections per CPU before it stops remembering
    /// them (its `MAX_CONN_RATE`).
    pub fn l4_remembered_flows_per_cpu() -> u32 {
        125_000
    }
    pub fn xdp_on_exit() -> RawXdpOnExit {
        RawXdpOnExit::Detach
    }
    pub fn client_auth() -> super::RawClientAuth {
        super::RawClientAuth::None
    }
    pub fn rate_limit_keys() -> usize {
        65_536
    }
    pub fn strip_credentials() -> bool {
        true
    }
    pub fn rate_limit_key() -> String {
        "client_ip".to_owned()
    }
    pub fn rate_limit_mode() -> String {
        "gcra".to_owned()
    }
    pub fn cors_methods() -> Vec<String> {
        ["GET", "HEAD", "POST"].map(str::to_owned).to_vec()
    }
    pub fn consumer_header() -> String {
        "x-consumer".to_owned()
    }
    pub fn subject_header() -> String {
        "x-auth-subject".to_owned()
    }
    pub fn token_cache_entries() -> usize {
        4096
    }
    pub fn jwt_name() -> String {
        "jwt".to_owned()
    }
    pub fn jwt_leeway() -> Duration {
        Duration::from_secs(30)
    }
    pub fn token_from() -> Vec<String> {
        vec!["header".to_owned()]
    }
    pub fn max_token_size() -> u64 {
        8 * 1024
    }
    pub fn jwks_refresh() -> Duration {
        Duration::from_secs(600)
    }
    pub fn jwks_min_refresh() -> Duration {
        Duration::from_secs(30)
    }
    pub fn introspection_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn introspection_cache_ttl() -> Duration {
        Duration::from_secs(300)
    }
    pub fn introspection_negative_ttl() -> Duration {
        Duration::from_secs(10)
    }
    pub fn ban_statuses() -> Vec<u16> {
        vec![400, 401, 403, 429]
    }
    pub fn consumer_claim() -> String {
        "sub".to_owned()
    }
    pub fn api_key_header() -> String {
        "x-api-key".to_owned()
    }
}
