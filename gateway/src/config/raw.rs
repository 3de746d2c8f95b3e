//! The config file exactly as written: serde structs with `deny_unknown_fields` and human
//! units. Nothing here is validated beyond types; `super::validate` turns a [`RawConfig`]
//! into a [`super::Config`].

use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
}

impl Default for RawGateway {
    fn default() -> Self {
        Self {
            workers: 0,
            log_level: None,
            drain_timeout: defaults::drain_timeout(),
            trusted_proxies: Vec::new(),
            via: defaults::via(),
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
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawXdpMode {
    Driver,
    Skb,
}

/// `[xdp]`: the XDP attachment and the edge policy it enforces.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXdp {
    pub interface: Option<String>,
    #[serde(default = "defaults::xdp_mode")]
    pub mode: RawXdpMode,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub protect_all: bool,
    pub syn_guard: Option<RawSynGuard>,
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
fn human_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write e.g. \"250ms\" or \"10s\""
        ))
    })
}

fn human_duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    human_duration(d).map(Some)
}

/// Accepts a byte count as an integer, or `"16KiB"`, `"10 MiB"`, `"1GB"`.
fn human_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
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

    use super::{RawBalance, RawXdpMode};

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
    pub fn weight() -> u32 {
        1
    }
    pub fn xdp_mode() -> RawXdpMode {
        RawXdpMode::Driver
    }
}
