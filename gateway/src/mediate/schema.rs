//! Request validation: the JSON body against a JSON Schema (any draft the `jsonschema`
//! crate knows, 2020-12 by default), and optionally against the route's OpenAPI 3
//! document — the operation matching the request's method and path checks its required
//! and typed parameters (path, query, header) and its `application/json` body schema,
//! with `$ref`s resolved inside the document. Violations carry JSON pointers.

use serde_json::Value;

use super::Violation;
use crate::http::fields::Fields;

/// Most violations reported for one request (a huge invalid body stays a short answer).
const MAX_VIOLATIONS: usize = 50;

/// Why a schema or OpenAPI document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid JSON Schema: {0}")]
    Schema(String),
    #[error("OpenAPI operation {method} {path}: {message}")]
    Operation {
        method: String,
        path: String,
        message: String,
    },
}

/// A route's request checks.
pub struct BodyValidator {
    schema: Option<jsonschema::Validator>,
    operations: Vec<Operation>,
}

impl std::fmt::Debug for BodyValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyValidator")
            .field("schema", &self.schema.is_some())
            .field("operations", &self.operations.len())
            .finish()
    }
}

/// Where an OpenAPI parameter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    Path,
    Query,
    Header,
}

struct ParameterCheck {
    name: String,
    location: Location,
    required: bool,
    /// The parameter's schema; its `type` decides how the text is read.
    validator: Option<jsonschema::Validator>,
    kind: Option<super::params::Kind>,
}

struct Operation {
    method: String,
    /// The document's path template as an anchored pattern with named segments.
    path: regex::Regex,
    parameters: Vec<ParameterCheck>,
    body: Option<jsonschema::Validator>,
    body_required: bool,
}

/// What the validator looks at in a request.
pub struct Checked<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub query: Option<&'a [u8]>,
    pub fields: &'a Fields,
    /// The parsed JSON body (None: no body, or not JSON).
    pub body: Option<&'a Value>,
}

impl BodyValidator {
    /// A validator for `schema` (a JSON Schema) and/or every operation of `openapi`.
    pub fn new(schema: Option<&Value>, openapi: Option<&Value>) -> Result<Self, SchemaError> {
        let schema = schema
            .map(|s| jsonschema::validator_for(s).map_err(|e| SchemaError::Schema(e.to_string())))
            .transpose()?;
        let operations = match openapi {
            Some(doc) => operations(doc)?,
            None => Vec::new(),
        };
        Ok(Self { schema, operations })
    }

    /// Whether requests need their body parsed (a schema applies to it).
    pub fn checks_body(&self) -> bool {
        self.schema.is_some() || self.operations.iter().any(|o| o.body.is_some())
    }

    /// Checks a request; all violations at once.
    pub fn check(&self, request: &Checked<'_>) -> Result<(), Vec<Violation>> {
        let mut violations = Vec::new();
        if let Some(schema) = &self.schema {
            match request.body {
                Some(body) => report(schema, body, "", &mut violations),
                None => violations.push(Violation::new("", "a JSON body is required")),
            }
        }
        let path = std::str::from_utf8(request.path).unwrap_or_default();
        let operation = self.operations.iter().find(|o| {
            o.method.as_bytes().eq_ignore_ascii_case(request.method) && o.path.is_match(path)
        });
        if let Some(operation) = operation {
            operation.check(request, path, &mut violations);
        }
        violations.truncate(MAX_VIOLATIONS);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

impl Operation {
    fn check(&self, request: &Checked<'_>, path: &str, violations: &mut Vec<Violation>) {
        let captures = self.path.captures(path);
        for parameter in &self.parameters {
            let (prefix, text) = match parameter.location {
                Location::Path => (
                    "path",
                    captures
                        .as_ref()
                        .and_then(|c| c.name(&parameter.name))
                        .map(|m| {
                            percent_encoding::percent_decode_str(m.as_str())
                                .decode_utf8_lossy()
                                .into_owned()
                        }),
                ),
                Location::Query => (
                    "query",
                    request.query.and_then(|q| {
                        url::form_urlencoded::parse(q)
                            .find(|(k, _)| k == parameter.name.as_str())
                            .map(|(_, v)| v.into_owned())
                    }),
                ),
                Location::Header => (
                    "header",
                    request
                        .fields
                        .get(parameter.name.as_bytes())
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                ),
            };
            let pointer = format!("/{prefix}/{}", parameter.name);
            let Some(text) = text else {
                if parameter.required {
                    violations.push(Violation::new(pointer, "is required"));
                }
                continue;
            };
            let value = match parameter.kind {
                Some(kind) => match kind.read_text(&text) {
                    Some(value) => value,
                    None => {
                        violations.push(Violation::new(pointer, "has the wrong type"));
                        continue;
                    }
                },
                None => Value::String(text),
            };
            if let Some(validator) = &parameter.validator {
                report(validator, &value, &pointer, violations);
            }
        }
        match (&self.body, request.body) {
            (Some(schema), Some(body)) => report(schema, body, "", violations),
            (Some(_), None) if self.body_required => {
                violations.push(Violation::new("", "a JSON body is required"));
            }
            _ => {}
        }
    }
}

fn report(
    validator: &jsonschema::Validator,
    value: &Value,
    prefix: &str,
    out: &mut Vec<Violation>,
) {
    for error in validator.iter_errors(value).take(MAX_VIOLATIONS) {
        out.push(Violation::new(
            format!("{prefix}{}", error.instance_path()),
            error.to_string(),
        ));
    }
}

/// A schema inside `doc` as a validator that resolves the document's `$ref`s: the
/// document itself becomes the root, pointing at the schema.
fn schema_in(doc: &Value, pointer: &str) -> Result<jsonschema::Validator, String> {
    let mut root = doc.clone();
    if let Value::Object(map) = &mut root {
        // OpenAPI's own members (`openapi`, `info`, `paths`) are not schema keywords:
        // validators ignore them, and `$ref`s reach into them.
        let fragment = percent_encoding::utf8_percent_encode(pointer, FRAGMENT);
        map.insert("$ref".into(), Value::String(format!("#{fragment}")));
        // The embedded schemas may be 3.0-style; draft 2020-12 reads them leniently.
    }
    jsonschema::validator_for(&root).map_err(|e| e.to_string())
}

/// Characters a JSON pointer must percent-encode inside a URI fragment (RFC 3986).
const FRAGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Resolves a local `$ref` (`#/components/parameters/X`) to what it names.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
    {
        Some(pointer) => doc.pointer(pointer).unwrap_or(value),
        None => value,
    }
}

/// Every operation of an OpenAPI 3 document.
fn operations(doc: &Value) -> Result<Vec<Operation>, SchemaError> {
    let mut out = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (template, item) in paths {
        let pattern = template_pattern(template);
        let path = regex::Regex::new(&pattern).map_err(|e| SchemaError::Operation {
            method: "*".into(),
            path: template.clone(),
            message: e.to_string(),
        })?;
        let shared = item.get("parameters").and_then(Value::as_array);
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            let Some(op) = item.get(method) else { continue };
            let fail = |message: String| SchemaError::Operation {
                method: method.to_uppercase(),
                path: template.clone(),
                message,
            };
            let base = format!("/paths/{}/{method}", escape_token(template));
            let mut parameters = Vec::new();
            let own = op.get("parameters").and_then(Value::as_array);
            for (list, list_base) in [
                (shared, format!("/paths/{}", escape_token(template))),
                (own, base.clone()),
            ] {
                for (i, raw) in list.into_iter().flatten().enumerate() {
                    let parameter = resolve(doc, raw);
                    let location = match parameter.get("in").and_then(Value::as_str) {
                        Some("path") => Location::Path,
                        Some("query") => Location::Query,
                        Some("header") => Location::Header,
                        _ => continue,
                    };
                    let Some(name) = parameter.get("name").and_then(Value::as_str) else {
                        return Err(fail(format!("parameter {i} has no name")));
                    };
                    let schema = parameter.get("schema");
                    let kind = schema
                        .map(|s| resolve(doc, s))
                        .and_then(|s| s.get("type"))
                        .and_then(Value::as_str)
                        .and_then(super::params::Kind::parse);
                    let schema_pointer = match raw.get("$ref").and_then(Value::as_str) {
                        Some(r) => format!("{}/schema", r.trim_start_matches('#')),
                        None => format!("{list_base}/parameters/{i}/schema"),
                    };
                    let validator = schema
                        .map(|_| schema_in(doc, &schema_pointer).map_err(&fail))
                        .transpose()?;
                    let name = if location == Location::Header {
                        name.to_ascii_lowercase()
                    } else {
                        name.to_owned()
                    };
                    parameters
                        .retain(|p: &ParameterCheck| !(p.name == name && p.location == location));
                    parameters.push(ParameterCheck {
                        name,
                        location,
                        required: location == Location::Path
                            || parameter
                                .get("required")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                        validator,
                        kind,
                    });
                }
            }
            let request_body = op.get("requestBody").map(|b| resolve(doc, b));
            let body_pointer = match op.pointer("/requestBody/$ref").and_then(Value::as_str) {
                Some(r) => r.trim_start_matches('#').to_owned(),
                None => format!("{base}/requestBody"),
            };
            let json_schema = request_body
                .and_then(|b| b.get("content"))
                .and_then(Value::as_object)
                .and_then(|content| {
                    content
                        .iter()
                        .find(|(media, _)| super::is_json_content_type(media.as_bytes()))
                        .map(|(media, _)| media.clone())
                });
            let body = match json_schema {
                Some(media)
                    if request_body
                        .and_then(|b| {
                            b.pointer(&format!("/content/{}/schema", escape_token(&media)))
                        })
                        .is_some() =>
                {
                    Some(
                        schema_in(
                            doc,
                            &format!("{body_pointer}/content/{}/schema", escape_token(&media)),
                        )
                        .map_err(&fail)?,
                    )
                }
                _ => None,
            };
            out.push(Operation {
                method: method.to_uppercase(),
                path: path.clone(),
                parameters,
                body,
                body_required: request_body
                    .and_then(|b| b.get("required"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// `/users/{id}` → `^/users/(?P<id>[^/]+)$` (other characters matched literally).
pub fn template_pattern(template: &str) -> String {
    let mut pattern = String::from("^");
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        pattern.push_str(&regex::escape(&rest[..open]));
        let name = &rest[open + 1..open + close];
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        pattern.push_str(&format!("(?P<{safe}>[^/]+)"));
        rest = &rest[open + close + 1..];
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointers(result: Result<(), Vec<Violation>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.pointer)
            .collect()
    }

    #[test]
    fn a_json_schema_reports_every_violation_with_its_pointer() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["sku", "qty"],
            "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
                "qty": {"type": "integer", "minimum": 1},
                "lines": {"type": "array", "items": {"type": "object", "required": ["id"]}}
            },
            "additionalProperties": false
        });
        let validator = BodyValidator::new(Some(&schema), None).expect("schema");
        let no_fields = Fields::default();
        let check = |body: Option<&Value>| {
            pointers(validator.check(&Checked {
                method: b"POST",
                path: b"/orders",
                query: None,
                fields: &no_fields,
                body,
            }))
        };
        assert!(check(Some(&serde_json::json!({"sku": "ABC-1", "qty": 2}))).is_empty());
        let bad =
            serde_json::json!({"sku": "abc", "qty": 0, "lines": [{"id": 1}, {}], "extra": true});
        let mut got = check(Some(&bad));
        got.sort();
        assert_eq!(got, ["", "/lines/1", "/qty", "/sku"]);
        assert_eq!(check(None), [""]);
        assert!(BodyValidator::new(Some(&serde_json::json!({"type": 12})), None).is_err());
    }

    #[test]
    fn an_openapi_operation_checks_parameters_and_body_through_refs() {
        let doc = serde_json::json!({
            "openapi": "3.0.3",
            "paths": {
                "/orders/{id}/lines": {
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}],
                    "post": {
                        "parameters": [
                            {"name": "dry_run", "in": "query", "schema": {"type": "boolean"}},
                            {"$ref": "#/components/parameters/Tenant"}
                        ],
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Line"}}}}
                    }
                }
            },
            "components": {
                "parameters": {"Tenant": {"name": "X-Tenant", "in": "header", "required": true, "schema": {"type": "string", "minLength": 2}}},
                "schemas": {"Line": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}}
            }
        });
        let validator = BodyValidator::new(None, Some(&doc)).expect("openapi");
        assert!(validator.checks_body());
        let with_tenant = Fields::of_request_head(b"POST / HTTP/1.1\r\nx-tenant: acme\r\n\r\n");
        let no_tenant = Fields::of_request_head(b"POST / HTTP/1.1\r\n\r\n");
        let good = serde_json::json!({"sku": "A", "qty": 1});
        let bad = serde_json::json!({"qty": "x"});
        let ok = Checked {
            method: b"POST",
            path: b"/orders/12/lines",
            query: Some(b"dry_run=true"),
            fields: &with_tenant,
            body: Some(&good),
        };
        assert!(validator.check(&ok).is_ok());
        let wrong = Checked {
            path: b"/orders/0/lines",
            query: Some(b"dry_run=maybe"),
            fields: &no_tenant,
            body: Some(&bad),
            ..ok
        };
        let mut got = pointers(validator.check(&wrong));
        got.sort();
        assert_eq!(
            got,
            ["", "/header/x-tenant", "/path/id", "/qty", "/query/dry_run"]
        );
        let other = Checked {
            method: b"GET",
            ..wrong
        };
        assert!(
            validator.check(&other).is_ok(),
            "no such operation: nothing checked"
        );
    }

    #[test]
    fn templates_become_anchored_patterns() {
        let re = regex::Regex::new(&template_pattern("/a.b/{id}/x/{other-name}")).expect("re");
        let caps = re.captures("/a.b/7/x/z").expect("match");
        assert_eq!((&caps["id"], &caps["other_name"]), ("7", "z"));
        assert!(!re.is_match("/aXb/7/x/z"));
        assert!(!re.is_match("/a.b/7/8/x/z"));
    }
}
