//! API mediation: what the gateway does to a request and its response beyond forwarding
//! them — protocol translation (REST → GraphQL in [`graphql`], JSON ↔ SOAP in [`soap`]),
//! JSON body edits ([`json_edit`]), request validation ([`schema`]), response
//! aggregation ([`aggregate`]), with request values taken from the path, query, headers
//! and body ([`params`]).
//!
//! A route's [`Mediation`] is compiled once from the config; the proxy buffers the bodies
//! it needs (bounded by [`Mediation::max_body`]) and calls into this module, which never
//! does I/O. Every refusal is a [`MediationError`], answered as an RFC 9457
//! `application/problem+json` document listing each violation with its JSON pointer.

pub mod aggregate;
pub mod graphql;
pub mod json_edit;
pub mod params;
pub mod schema;
pub mod soap;

use serde::Serialize;

/// What a route does to requests and responses besides forwarding them.
#[derive(Debug)]
pub struct Mediation {
    /// The upstream speaks another protocol than the client.
    pub translation: Option<Translation>,
    /// Edits to a JSON request body, applied before the translation.
    pub request_edits: Option<json_edit::JsonEdits>,
    /// Edits to the JSON response body, applied after the translation.
    pub response_edits: Option<json_edit::JsonEdits>,
    /// The answer merges concurrent calls to several upstreams.
    pub aggregate: Option<aggregate::Aggregate>,
    /// The request body must satisfy this JSON Schema.
    pub validator: Option<schema::BodyValidator>,
    /// Largest body buffered for mediation, each way. A larger body is refused (413,
    /// or 502 from the upstream) when the route must read it, and passed on untouched
    /// when the route only edits bodies.
    pub max_body: usize,
}

impl Mediation {
    /// Whether the request body must be read whole before anything goes upstream.
    pub fn needs_request_body(&self) -> bool {
        self.validator.is_some()
            || self.request_edits.is_some()
            || self
                .translation
                .as_ref()
                .is_some_and(Translation::reads_body)
    }

    /// Whether the request cannot go upstream without its whole body (edits alone can).
    pub fn requires_request_body(&self) -> bool {
        self.validator.is_some()
            || self
                .translation
                .as_ref()
                .is_some_and(Translation::reads_body)
    }

    /// Whether the response body is read whole and rewritten.
    pub fn rewrites_response(&self) -> bool {
        self.translation.is_some() || self.response_edits.is_some() || self.aggregate.is_some()
    }
}

/// A route's protocol translation.
#[derive(Debug)]
pub enum Translation {
    Graphql(graphql::GraphqlCall),
    Soap(soap::SoapCall),
}

impl Translation {
    fn reads_body(&self) -> bool {
        match self {
            Self::Graphql(call) => call.variables.iter().any(params::Parameter::reads_body),
            Self::Soap(_) => true,
        }
    }
}

/// One reason a request or response was refused, located by JSON pointer (for request
/// values outside the body: `/path/NAME`, `/query/NAME`, `/header/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub pointer: String,
    pub detail: String,
}

impl Violation {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// Why mediation ended a request; each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum MediationError {
    #[error("the request body is not valid JSON: {0}")]
    BodyNotJson(String),
    #[error("the request body must be JSON (content-type application/json)")]
    NotJsonContent,
    #[error("the request has invalid or missing parameters")]
    InvalidParameters(Vec<Violation>),
    #[error("the request body does not match the route's schema")]
    SchemaViolations(Vec<Violation>),
    #[error("the request body is larger than the route's limit of {0} bytes")]
    RequestTooLarge(usize),
    #[error("the GraphQL upstream returned errors")]
    GraphqlErrors {
        status: u16,
        errors: Vec<serde_json::Value>,
    },
    #[error("{message}")]
    SoapFault {
        status: u16,
        code: String,
        message: String,
        detail: serde_json::Value,
    },
    #[error("the upstream's answer holds no {0}")]
    ResultMissing(String),
    #[error("the upstream's response could not be translated: {0}")]
    BadUpstreamBody(String),
    #[error("the upstream's response is larger than the route's limit of {0} bytes")]
    ResponseTooLarge(usize),
}

impl MediationError {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Self::BodyNotJson(_) | Self::InvalidParameters(_) | Self::SchemaViolations(_) => 400,
            Self::NotJsonContent => 415,
            Self::RequestTooLarge(_) => 413,
            Self::GraphqlErrors { status, .. } | Self::SoapFault { status, .. } => *status,
            Self::ResultMissing(_) => 404,
            Self::BadUpstreamBody(_) | Self::ResponseTooLarge(_) => 502,
        }
    }

    /// The stable machine-readable code of the problem body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BodyNotJson(_) => "body_not_json",
            Self::NotJsonContent => "unsupported_media_type",
            Self::InvalidParameters(_) => "invalid_parameters",
            Self::SchemaViolations(_) => "schema_violation",
            Self::RequestTooLarge(_) => "body_too_large",
            Self::GraphqlErrors { .. } => "graphql_error",
            Self::SoapFault { .. } => "soap_fault",
            Self::ResultMissing(_) => "not_found",
            Self::BadUpstreamBody(_) => "upstream_untranslatable",
            Self::ResponseTooLarge(_) => "upstream_response_too_large",
        }
    }

    /// The RFC 9457 problem document: `type`, `title`, `status`, `detail`, the gateway's
    /// `code`, and what the failure carries (violations, GraphQL errors, SOAP fault).
    pub fn problem(&self) -> Vec<u8> {
        let status = self.status();
        let mut problem = serde_json::json!({
            "type": "about:blank",
            "title": crate::http::reason_phrase(status),
            "status": status,
            "detail": self.to_string(),
            "code": self.code(),
        });
        match self {
            Self::InvalidParameters(violations) | Self::SchemaViolations(violations) => {
                problem["errors"] = serde_json::json!(violations);
            }
            Self::GraphqlErrors { errors, .. } => {
                problem["errors"] = serde_json::Value::Array(errors.clone());
            }
            Self::SoapFault { code, detail, .. } => {
                problem["fault_code"] = code.as_str().into();
                if !detail.is_null() {
                    problem["fault_detail"] = detail.clone();
                }
            }
            _ => {}
        }
        serde_json::to_vec(&problem).unwrap_or_default()
    }
}

/// Whether a `content-type` value names JSON (`application/json`, `…+json`).
pub fn is_json_content_type(value: &[u8]) -> bool {
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5
            && essence[..essence.len() - 5].starts_with(b"application/")
            && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// Walks `path` (member names, or indexes into arrays) down from `value`.
pub fn select<'a>(value: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(value, |at, step| match at {
        serde_json::Value::Object(map) => map.get(step),
        serde_json::Value::Array(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for yes in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"application/problem+json",
            b" application/vnd.api+json ",
        ] {
            assert!(
                is_json_content_type(yes),
                "{:?}",
                String::from_utf8_lossy(yes)
            );
        }
        for no in [
            &b"text/json2"[..],
            b"application/xml",
            b"",
            b"+json",
            b"text/plain+json",
        ] {
            assert!(
                !is_json_content_type(no),
                "{:?}",
                String::from_utf8_lossy(no)
            );
        }
    }

    #[test]
    fn problem_documents_carry_status_code_and_violations() {
        let error = MediationError::SchemaViolations(vec![Violation::new("/qty", "must be >= 1")]);
        let body: serde_json::Value = serde_json::from_slice(&error.problem()).expect("json");
        assert_eq!(body["status"], 400);
        assert_eq!(body["title"], "Bad Request");
        assert_eq!(body["code"], "schema_violation");
        assert_eq!(body["errors"][0]["pointer"], "/qty");
        assert_eq!(body["errors"][0]["detail"], "must be >= 1");
    }

    #[test]
    fn select_walks_objects_and_arrays() {
        let value = serde_json::json!({"a": {"b": [10, {"c": true}]}});
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            select(&value, &path("a.b.1.c")),
            Some(&serde_json::json!(true))
        );
        assert_eq!(select(&value, &path("a.b.0")), Some(&serde_json::json!(10)));
        assert_eq!(select(&value, &path("a.x")), None);
        assert_eq!(select(&value, &[]), Some(&value));
    }
}
