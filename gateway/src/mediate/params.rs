//! Request values a translation passes on: each [`Parameter`] names its source (a path
//! segment captured by the route's path template, a query parameter, a header, or a
//! member of the JSON body), the JSON type it must have, whether it is required, and a
//! default. [`collect`] gathers them all or reports every problem at once.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::Violation;
use crate::http::fields::Fields;

/// Where a parameter's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A named capture of the route's path (`/users/{id}` or `(?P<id>…)`).
    Path(String),
    /// A query parameter (first occurrence, form-decoded).
    Query(String),
    /// A request header (lower-case name).
    Header(String),
    /// The JSON body, or the member at a JSON pointer inside it.
    Body(Option<String>),
}

/// The JSON type a parameter is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Int,
    Float,
    Bool,
    /// The text is parsed as JSON (path, query, header); a body value is taken as is.
    Json,
}

impl Kind {
    /// Parses a config name (`string`, `int`, `float`, `bool`, `json`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "int" | "integer" => Self::Int,
            "float" | "number" => Self::Float,
            "bool" | "boolean" => Self::Bool,
            "json" => Self::Json,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Int => "an integer",
            Self::Float => "a number",
            Self::Bool => "a boolean",
            Self::Json => "JSON",
        }
    }

    /// Converts request text to this type.
    pub(crate) fn read_text(self, text: &str) -> Option<Value> {
        Some(match self {
            Self::String => Value::String(text.to_owned()),
            Self::Int => Value::from(text.trim().parse::<i64>().ok()?),
            Self::Float => serde_json::Number::from_f64(text.trim().parse::<f64>().ok()?)?.into(),
            Self::Bool => match text.trim() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => return None,
            },
            Self::Json => serde_json::from_str(text).ok()?,
        })
    }

    /// Checks (and where lossless, converts) a JSON body value.
    fn coerce_json(self, value: &Value) -> Option<Value> {
        match (self, value) {
            (Self::Json, v) => Some(v.clone()),
            (Self::String, Value::String(_))
            | (Self::Bool, Value::Bool(_))
            | (Self::Float, Value::Number(_)) => Some(value.clone()),
            (Self::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(value.clone()),
            (_, Value::String(text)) => self.read_text(text),
            (Self::String, Value::Number(n)) => Some(Value::String(n.to_string())),
            _ => None,
        }
    }
}

/// One value a translation takes from the request.
#[derive(Debug, Clone)]
pub struct Parameter {
    /// The name it gets in the outgoing call (GraphQL variable, SOAP element).
    pub name: String,
    pub source: Source,
    pub kind: Kind,
    /// A missing required value refuses the request (400).
    pub required: bool,
    /// Used when the request lacks the value.
    pub default: Option<Value>,
}

impl Parameter {
    /// Whether the value comes from the request body.
    pub fn reads_body(&self) -> bool {
        matches!(self.source, Source::Body(_))
    }

    fn pointer(&self) -> String {
        match &self.source {
            Source::Path(name) => format!("/path/{name}"),
            Source::Query(name) => format!("/query/{name}"),
            Source::Header(name) => format!("/header/{name}"),
            Source::Body(pointer) => pointer.clone().unwrap_or_default(),
        }
    }
}

/// The request as parameters see it.
pub struct RequestView<'a> {
    /// Captures of the route's path pattern, if it has any.
    pub captures: Option<regex::bytes::Captures<'a>>,
    pub query: Option<&'a [u8]>,
    pub fields: &'a Fields,
    /// The parsed JSON body, when the route read one.
    pub body: Option<&'a Value>,
}

impl RequestView<'_> {
    /// The raw text of `source` (body sources are looked up separately).
    fn text(&self, source: &Source) -> Option<Cow<'_, str>> {
        match source {
            Source::Path(name) => {
                let raw = self.captures.as_ref()?.name(name)?.as_bytes();
                let decoded: Cow<'_, [u8]> = percent_encoding::percent_decode(raw).into();
                match decoded {
                    Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
                    Cow::Owned(b) => String::from_utf8(b).ok().map(Cow::Owned),
                }
            }
            Source::Query(name) => url::form_urlencoded::parse(self.query?)
                .find(|(key, _)| key == name.as_str())
                .map(|(_, value)| Cow::Owned(value.into_owned())),
            Source::Header(name) => std::str::from_utf8(self.fields.get(name.as_bytes())?)
                .ok()
                .map(Cow::Borrowed),
            Source::Body(_) => None,
        }
    }
}

/// Gathers every parameter into a JSON object, or every violation.
pub fn collect(
    parameters: &[Parameter],
    view: &RequestView<'_>,
) -> Result<Map<String, Value>, Vec<Violation>> {
    let mut values = Map::new();
    let mut violations = Vec::new();
    for parameter in parameters {
        let found = match &parameter.source {
            Source::Body(pointer) => view
                .body
                .and_then(|body| match pointer {
                    Some(pointer) => body.pointer(pointer),
                    None => Some(body),
                })
                .filter(|v| !v.is_null())
                .map(|v| parameter.kind.coerce_json(v).ok_or(())),
            source => view
                .text(source)
                .map(|text| parameter.kind.read_text(&text).ok_or(())),
        };
        match (found, &parameter.default) {
            (Some(Ok(value)), _) => {
                values.insert(parameter.name.clone(), value);
            }
            (Some(Err(())), _) => violations.push(Violation::new(
                parameter.pointer(),
                format!("must be {}", parameter.kind.name()),
            )),
            (None, Some(default)) => {
                values.insert(parameter.name.clone(), default.clone());
            }
            (None, None) if parameter.required => {
                violations.push(Violation::new(parameter.pointer(), "is required"));
            }
            (None, None) => {}
        }
    }
    if violations.is_empty() {
        Ok(values)
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(name: &str, source: Source, kind: Kind, required: bool) -> Parameter {
        Parameter {
            name: name.into(),
            source,
            kind,
            required,
            default: None,
        }
    }

    #[test]
    fn values_come_from_path_query_header_and_body_with_their_types() {
        let re = regex::bytes::Regex::new(r"^/users/(?P<id>[^/]+)$").expect("regex");
        let fields = Fields::of_request_head(b"GET / HTTP/1.1\r\nx-tenant: acme\r\n\r\n");
        let body = serde_json::json!({"filter": {"active": "true", "tags": ["a"]}});
        let view = RequestView {
            captures: re.captures(b"/users/42%20"),
            query: Some(b"limit=10&name=J%C3%BCrgen+M"),
            fields: &fields,
            body: Some(&body),
        };
        let got = collect(
            &[
                parameter("id", Source::Path("id".into()), Kind::String, true),
                parameter("limit", Source::Query("limit".into()), Kind::Int, false),
                parameter("name", Source::Query("name".into()), Kind::String, false),
                parameter(
                    "tenant",
                    Source::Header("x-tenant".into()),
                    Kind::String,
                    false,
                ),
                parameter(
                    "active",
                    Source::Body(Some("/filter/active".into())),
                    Kind::Bool,
                    false,
                ),
                parameter(
                    "tags",
                    Source::Body(Some("/filter/tags".into())),
                    Kind::Json,
                    false,
                ),
                Parameter {
                    default: Some(serde_json::json!(0)),
                    ..parameter("offset", Source::Query("offset".into()), Kind::Int, false)
                },
            ],
            &view,
        )
        .expect("valid");
        assert_eq!(
            Value::Object(got),
            serde_json::json!({
                "id": "42 ", "limit": 10, "name": "Jürgen M", "tenant": "acme",
                "active": true, "tags": ["a"], "offset": 0
            })
        );
    }

    #[test]
    fn every_violation_is_reported_with_its_pointer() {
        let fields = Fields::default();
        let body = serde_json::json!({"qty": "many"});
        let view = RequestView {
            captures: None,
            query: Some(b"limit=ten"),
            fields: &fields,
            body: Some(&body),
        };
        let err = collect(
            &[
                parameter("limit", Source::Query("limit".into()), Kind::Int, false),
                parameter("qty", Source::Body(Some("/qty".into())), Kind::Int, true),
                parameter("id", Source::Path("id".into()), Kind::String, true),
                parameter("opt", Source::Header("x-opt".into()), Kind::String, false),
            ],
            &view,
        )
        .expect_err("invalid");
        assert_eq!(
            err,
            vec![
                Violation::new("/query/limit", "must be an integer"),
                Violation::new("/qty", "must be an integer"),
                Violation::new("/path/id", "is required"),
            ]
        );
    }
}
