//! The API-mediation parts of a route as written: `graphql`, `soap`, `request_body`,
//! `response_body` and `validate`. Re-exported by [`super::raw`].

use serde::Deserialize;

/// `graphql = { … }` of a route: the request becomes this GraphQL operation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGraphql {
    /// Upstream path the operation is POSTed to.
    #[serde(default = "mediation_defaults::graphql_endpoint")]
    pub endpoint: String,
    /// The operation's text.
    pub query: String,
    pub operation_name: Option<String>,
    /// Variables by name, each with its source in the request.
    #[serde(default)]
    pub variables: indexmap::IndexMap<String, RawParameter>,
    /// The member of `data` returned, dot-separated (`user`, `search.items`); all of
    /// `data` when unset.
    pub result: Option<String>,
}

/// `soap = { … }` of a route: the JSON request becomes a SOAP envelope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSoap {
    /// Upstream path the envelope is POSTed to (the route's own forwarded path when unset).
    pub endpoint: Option<String>,
    /// `"1.1"` (default) or `"1.2"`.
    #[serde(default = "mediation_defaults::soap_version")]
    pub version: String,
    /// The SOAPAction.
    pub action: Option<String>,
    /// The operation element (`GetUser`); with a `template`, only a name for logs.
    #[serde(default)]
    pub operation: String,
    /// The operation's XML namespace.
    pub namespace: Option<String>,
    /// The operation's child elements in order; the JSON body's members when empty.
    #[serde(default)]
    pub parameters: indexmap::IndexMap<String, RawParameter>,
    /// The Body's content as XML with `{name}` placeholders (instead of `operation`'s
    /// element with one child per value).
    pub template: Option<String>,
    /// The member of the response element returned, dot-separated.
    pub result: Option<String>,
}

/// `aggregate = { … }` of a route: the answer merges several upstream calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    /// The calls, made concurrently.
    pub calls: Vec<RawAggregateCall>,
}

/// One call of an aggregate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregateCall {
    /// The member of the merged answer holding this call's JSON.
    pub key: String,
    /// The upstream called (the route's own when unset).
    pub upstream: Option<String>,
    /// Upper-case method (GET by default).
    #[serde(default = "mediation_defaults::call_method")]
    pub method: String,
    /// The path; `{name}` is filled from the route's path template.
    pub path: String,
    /// Pass the client's query string on.
    #[serde(default)]
    pub forward_query: bool,
    /// Longest wait for this call's whole answer.
    #[serde(
        default = "mediation_defaults::call_timeout",
        deserialize_with = "super::raw::human_duration"
    )]
    pub timeout: std::time::Duration,
    /// Without this call's answer the request fails (502).
    #[serde(default)]
    pub required: bool,
}

/// Where a GraphQL variable or SOAP element comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParameter {
    /// `path`, `query`, `header` or `body`.
    pub from: String,
    /// The name in the request (path capture, query parameter, header); defaults to the
    /// parameter's own name. Not for `body`.
    pub name: Option<String>,
    /// For `body`: the JSON pointer of the member (the whole body when unset).
    pub pointer: Option<String>,
    /// `string` (default), `int`, `float`, `bool` or `json`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// A missing value refuses the request (default: true for `path`, false otherwise).
    pub required: Option<bool>,
    /// The value when the request has none.
    pub default: Option<toml::Value>,
}

/// `request_body = { … }` / `response_body = { … }`: JSON edits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBodyEdits {
    /// JSON pointers of members removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Member pointer → its new name (in the same object).
    #[serde(default)]
    pub rename: indexmap::IndexMap<String, String>,
    /// Member pointer → where it goes.
    #[serde(default, rename = "move")]
    pub moves: indexmap::IndexMap<String, String>,
    /// Pointer → value set there (objects on the way are created).
    #[serde(default)]
    pub add: indexmap::IndexMap<String, toml::Value>,
}

/// `validate = { … }` of a route: requests are checked before they go upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidate {
    /// A JSON Schema file (relative to the config file) the JSON body must satisfy.
    pub schema: Option<String>,
    /// Also check the request against the route's `openapi` document's operation.
    #[serde(default)]
    pub openapi: bool,
}

/// `[metering]`: where the usage book is saved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetering {
    /// The usage file (relative to the config file); counts stay in memory when unset.
    pub path: Option<String>,
    /// How often changed counts are saved.
    #[serde(
        default = "mediation_defaults::flush_interval",
        deserialize_with = "super::raw::human_duration"
    )]
    pub flush_interval: std::time::Duration,
}

impl Default for RawMetering {
    fn default() -> Self {
        Self {
            path: None,
            flush_interval: mediation_defaults::flush_interval(),
        }
    }
}

/// `[[webhooks]]`: an endpoint receiving signed event deliveries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub name: String,
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// The HMAC-SHA256 key deliveries are signed with.
    pub secret: String,
    /// Event types delivered (all when empty): `upstream_health`, `quota_exhausted`,
    /// `acl_change`, `ban`, `config_reload`.
    #[serde(default)]
    pub events: Vec<String>,
    /// Longest wait for one attempt.
    #[serde(
        default = "mediation_defaults::webhook_timeout",
        deserialize_with = "super::raw::human_duration"
    )]
    pub timeout: std::time::Duration,
    /// Attempts per event, the first included.
    #[serde(default = "mediation_defaults::webhook_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt, doubled for each further one.
    #[serde(
        default = "mediation_defaults::webhook_backoff",
        deserialize_with = "super::raw::human_duration"
    )]
    pub retry_backoff: std::time::Duration,
    /// CA bundle for an `https` URL (system roots when unset).
    pub ca_file: Option<String>,
}

/// `[[plans]]`: quotas consumers subscribe to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub name: String,
    /// Requests a consumer may make per UTC day (unlimited when unset).
    pub requests_per_day: Option<u64>,
    /// Requests a consumer may make per UTC month.
    pub requests_per_month: Option<u64>,
}

pub(super) mod mediation_defaults {
    pub fn webhook_timeout() -> std::time::Duration {
        std::time::Duration::from_secs(2)
    }
    pub fn webhook_attempts() -> u32 {
        5
    }
    pub fn webhook_backoff() -> std::time::Duration {
        std::time::Duration::from_millis(500)
    }
    pub fn flush_interval() -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    pub fn graphql_endpoint() -> String {
        "/graphql".into()
    }
    pub fn soap_version() -> String {
        "1.1".into()
    }
    pub fn call_method() -> String {
        "GET".into()
    }
    pub fn call_timeout() -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }
    pub fn max_mediated_body() -> u64 {
        1024 * 1024
    }
}
