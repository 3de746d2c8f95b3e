//! The traffic-management parts of the config file as written: a route's retries,
//! split, mirror, versioning, compression, cache and header transforms, an upstream's
//! retry budget, and `[cache]`. Re-exported by [`super::raw`].

use std::time::Duration;

use serde::Deserialize;

use super::raw::{human_duration, human_size};

/// `[cache]`: the per-worker response cache's limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheSettings {
    /// Bytes of responses each worker keeps (the coldest leave first).
    #[serde(
        default = "traffic_defaults::cache_max_size",
        deserialize_with = "human_size"
    )]
    pub max_size: u64,
    /// Larger bodies are not stored.
    #[serde(
        default = "traffic_defaults::cache_max_entry_size",
        deserialize_with = "human_size"
    )]
    pub max_entry_size: u64,
}

impl Default for RawCacheSettings {
    fn default() -> Self {
        Self {
            max_size: traffic_defaults::cache_max_size(),
            max_entry_size: traffic_defaults::cache_max_entry_size(),
        }
    }
}

/// `cache = { … }` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    /// What tells responses apart: `method`, `host`, `path`, `query`, `header:NAME`,
    /// `cookie:NAME`.
    #[serde(default = "traffic_defaults::cache_key")]
    pub key: Vec<String>,
    /// Freshness of responses that state none (zero: such responses are not stored).
    #[serde(default, deserialize_with = "human_duration")]
    pub default_ttl: Duration,
    /// Defaults for responses without `stale-while-revalidate` / `stale-if-error`.
    #[serde(default, deserialize_with = "human_duration")]
    pub stale_while_revalidate: Duration,
    #[serde(default, deserialize_with = "human_duration")]
    pub stale_if_error: Duration,
}

/// `retry_budget = { … }` of an upstream: retries in a 10 s window may reach `ratio` of
/// the requests plus `min_per_second` per second (per worker).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    #[serde(default = "traffic_defaults::retry_ratio")]
    pub ratio: f64,
    #[serde(default = "traffic_defaults::retry_min_per_second")]
    pub min_per_second: f64,
}

impl Default for RawRetryBudget {
    fn default() -> Self {
        Self {
            ratio: traffic_defaults::retry_ratio(),
            min_per_second: traffic_defaults::retry_min_per_second(),
        }
    }
}

/// One `split` entry: a share of the traffic by `weight` (percent), or the requests whose
/// `header` or `cookie` equals `value`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub upstream: String,
    pub weight: Option<f64>,
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub value: Option<String>,
}

/// `version = { value = "2", from = "accept", to = "path" }` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    pub value: String,
    /// `path` (`/v2/…`), `header:NAME` or `accept`.
    #[serde(default = "traffic_defaults::version_from")]
    pub from: String,
    /// `path` or `header:NAME`; unset: forwarded as the client sent it.
    pub to: Option<String>,
}

/// `compression = { … }` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    /// `br` and/or `gzip`, in order of preference.
    #[serde(default = "traffic_defaults::compression_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(
        default = "traffic_defaults::compression_min_size",
        deserialize_with = "human_size"
    )]
    pub min_size: u64,
    #[serde(default = "traffic_defaults::compression_types")]
    pub types: Vec<String>,
    #[serde(default = "traffic_defaults::gzip_level")]
    pub gzip_level: u32,
    #[serde(default = "traffic_defaults::brotli_quality")]
    pub brotli_quality: u32,
}

/// `mirror = { … }` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub upstream: String,
    /// Share of the requests copied, in percent.
    #[serde(default = "traffic_defaults::mirror_percent")]
    pub percent: f64,
    /// Larger request bodies are not mirrored.
    #[serde(
        default = "traffic_defaults::mirror_max_body",
        deserialize_with = "human_size"
    )]
    pub max_body: u64,
}

/// `request_headers` / `response_headers` of a route: values may use `${variables}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderTransform {
    /// Another line with this name, next to any the message has.
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, String>,
    /// This line instead of any the message has.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `retry = { … }` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Tries in all, the first one included.
    #[serde(default = "traffic_defaults::retry_attempts")]
    pub attempts: u32,
    /// `connect_failure`, `reset`, `timeout`, or an upstream status such as `"503"`.
    #[serde(default = "traffic_defaults::retry_on")]
    pub on: Vec<String>,
    /// Retry POST and PATCH too (only ever when the body was not sent yet).
    #[serde(default)]
    pub non_idempotent: bool,
    #[serde(
        default = "traffic_defaults::retry_backoff",
        deserialize_with = "human_duration"
    )]
    pub backoff: Duration,
    #[serde(
        default = "traffic_defaults::retry_max_backoff",
        deserialize_with = "human_duration"
    )]
    pub max_backoff: Duration,
}

/// Defaults of the traffic settings.
pub mod traffic_defaults {
    use std::time::Duration;

    pub fn cache_max_size() -> u64 {
        64 * 1024 * 1024
    }
    pub fn cache_max_entry_size() -> u64 {
        1024 * 1024
    }
    pub fn cache_key() -> Vec<String> {
        ["method", "host", "path", "query"]
            .map(String::from)
            .to_vec()
    }
    pub fn compression_algorithms() -> Vec<String> {
        vec!["br".into(), "gzip".into()]
    }
    pub fn compression_min_size() -> u64 {
        1024
    }
    pub fn compression_types() -> Vec<String> {
        [
            "text/*",
            "application/json",
            "application/javascript",
            "application/xml",
            "application/xhtml+xml",
            "application/problem+json",
            "application/ld+json",
            "application/rss+xml",
            "application/atom+xml",
            "application/wasm",
            "image/svg+xml",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn gzip_level() -> u32 {
        4
    }
    pub fn brotli_quality() -> u32 {
        4
    }
    pub fn version_from() -> String {
        "path".into()
    }
    pub fn mirror_percent() -> f64 {
        100.0
    }
    pub fn mirror_max_body() -> u64 {
        64 * 1024
    }
    pub fn retry_ratio() -> f64 {
        0.2
    }
    pub fn retry_min_per_second() -> f64 {
        5.0
    }
    pub fn retry_attempts() -> u32 {
        3
    }
    pub fn retry_on() -> Vec<String> {
        ["connect_failure", "reset", "502", "503", "504"]
            .map(String::from)
            .to_vec()
    }
    pub fn retry_backoff() -> Duration {
        Duration::from_millis(25)
    }
    pub fn retry_max_backoff() -> Duration {
        Duration::from_millis(250)
    }
}
