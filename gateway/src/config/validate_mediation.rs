//! Validation of a route's API mediation (`graphql`, `soap`, `request_body`,
//! `response_body`, `validate`) into a [`crate::mediate::Mediation`].

use std::path::Path;

use serde_json::Value;

use super::{
    PathMatch, RouteConfig,
    raw::{RawBodyEdits, RawParameter, RawRoute},
    validate::Problems,
    validate_route::check_path,
};
use crate::mediate::{
    Mediation, Translation,
    aggregate::{Aggregate, Call, PathPart, parse_path},
    graphql::GraphqlCall,
    json_edit::{JsonEdits, Pointer},
    params::{Kind, Parameter, Source},
    schema::BodyValidator,
    soap::{SoapCall, SoapVersion, is_element_name},
};

/// The route's mediation, or `None` when it only forwards (or on problems).
pub(super) fn validate_mediation(
    dir: &Path,
    key: &str,
    raw: &RawRoute,
    route: &RouteConfig,
    upstreams: &std::collections::HashMap<&str, usize>,
    problems: &mut Problems,
) -> Option<Mediation> {
    let before = problems.0.len();
    if raw.graphql.is_some() && raw.soap.is_some() {
        problems.push(
            format!("{key}.soap"),
            "set either graphql or soap, not both",
        );
    }
    let translation = match (&raw.graphql, &raw.soap) {
        (Some(graphql), _) => graphql_call(&format!("{key}.graphql"), graphql, route, problems)
            .map(Translation::Graphql),
        (None, Some(soap)) => {
            soap_call(&format!("{key}.soap"), soap, route, problems).map(Translation::Soap)
        }
        (None, None) => None,
    };
    let request_edits = raw
        .request_body
        .as_ref()
        .map(|e| edits(&format!("{key}.request_body"), e, problems));
    let response_edits = raw
        .response_body
        .as_ref()
        .map(|e| edits(&format!("{key}.response_body"), e, problems));
    let validator = raw.validate.as_ref().and_then(|v| {
        let vkey = format!("{key}.validate");
        let schema = v.schema.as_ref().and_then(|file| {
            let loaded = std::fs::read(dir.join(file))
                .map_err(|e| format!("cannot read {file}: {e}"))
                .and_then(|bytes| {
                    serde_json::from_slice::<Value>(&bytes)
                        .map_err(|e| format!("{file}: not JSON: {e}"))
                });
            loaded
                .map_err(|message| problems.push(format!("{vkey}.schema"), message))
                .ok()
        });
        if v.openapi && route.openapi.is_none() {
            problems.push(
                format!("{vkey}.openapi"),
                "the route has no openapi document to validate against",
            );
        }
        if v.schema.is_none() && !v.openapi {
            problems.push(vkey.clone(), "name a schema file, or set openapi = true");
        }
        let openapi = route.openapi.as_deref().filter(|_| v.openapi);
        match BodyValidator::new(schema.as_ref(), openapi) {
            Ok(validator) => Some(validator),
            Err(e) => {
                problems.push(vkey, e.to_string());
                None
            }
        }
    });
    let aggregate = raw
        .aggregate
        .as_ref()
        .map(|a| aggregate(&format!("{key}.aggregate"), a, route, upstreams, problems));
    if aggregate.is_some() {
        for (set, name) in [
            (raw.graphql.is_some(), "graphql"),
            (raw.soap.is_some(), "soap"),
            (raw.request_body.is_some(), "request_body"),
            (raw.validate.is_some(), "validate"),
        ] {
            if set {
                problems.push(
                    format!("{key}.{name}"),
                    format!("{name} does not apply to an aggregate route"),
                );
            }
        }
    }
    let mediated = translation.is_some()
        || request_edits.is_some()
        || response_edits.is_some()
        || validator.is_some()
        || aggregate.is_some();
    if !mediated {
        return None;
    }
    for (set, name) in [
        (raw.cache.is_some(), "cache"),
        (raw.compression.is_some(), "compression"),
        (raw.mirror.is_some(), "mirror"),
        (raw.websocket == Some(true), "websocket"),
    ] {
        if set {
            problems.push(
                format!("{key}.{name}"),
                format!("{name} cannot be combined with graphql, soap, body edits or validate on one route"),
            );
        }
    }
    if raw.max_mediated_body == 0 {
        problems.push(
            format!("{key}.max_mediated_body"),
            "must be greater than zero",
        );
    }
    if problems.0.len() != before {
        return None;
    }
    Some(Mediation {
        translation,
        request_edits,
        response_edits,
        validator,
        aggregate,
        max_body: usize::try_from(raw.max_mediated_body).unwrap_or(usize::MAX),
    })
}

fn aggregate(
    key: &str,
    raw: &super::raw::RawAggregate,
    route: &RouteConfig,
    upstreams: &std::collections::HashMap<&str, usize>,
    problems: &mut Problems,
) -> Aggregate {
    if raw.calls.is_empty() {
        problems.push(
            format!("{key}.calls"),
            "an aggregate needs at least one call",
        );
    }
    let captures: Vec<&str> = match &route.path {
        PathMatch::Regex(re) => re.capture_names().flatten().collect(),
        _ => Vec::new(),
    };
    let mut keys = std::collections::HashSet::new();
    let mut calls = Vec::new();
    for (i, c) in raw.calls.iter().enumerate() {
        let ckey = format!("{key}.calls[{i}]");
        if c.key.is_empty() || c.key == "_errors" || !keys.insert(c.key.as_str()) {
            problems.push(
                format!("{ckey}.key"),
                format!("{:?}: each call needs its own key (not _errors)", c.key),
            );
        }
        let upstream = match &c.upstream {
            None => route.upstream,
            Some(name) => match upstreams.get(name.as_str()) {
                Some(&index) => index,
                None => {
                    problems.push(
                        format!("{ckey}.upstream"),
                        format!("unknown upstream {name:?}"),
                    );
                    continue;
                }
            },
        };
        if c.method.is_empty() || !c.method.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(
                format!("{ckey}.method"),
                format!("{:?}: write an upper-case method", c.method),
            );
        }
        if c.timeout.is_zero() {
            problems.push(format!("{ckey}.timeout"), "must be greater than zero");
        }
        let path = match parse_path(&c.path) {
            Ok(parts) => parts,
            Err(message) => {
                problems.push(format!("{ckey}.path"), message);
                continue;
            }
        };
        let mut literal = String::new();
        for part in &path {
            match part {
                PathPart::Literal(text) => literal.push_str(text),
                PathPart::Capture(name) => {
                    literal.push('x');
                    if !captures.contains(&name.as_str()) {
                        problems.push(
                            format!("{ckey}.path"),
                            format!("the route's path has no {{{name}}} segment"),
                        );
                    }
                }
            }
        }
        check_path(&format!("{ckey}.path"), &literal, problems);
        calls.push(Call {
            key: c.key.clone(),
            upstream,
            method: c.method.clone(),
            path,
            forward_query: c.forward_query,
            timeout: c.timeout,
            required: c.required,
        });
    }
    Aggregate { calls }
}

fn result_path(result: Option<&String>) -> Vec<String> {
    result
        .map(|r| {
            r.split('.')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn graphql_call(
    key: &str,
    raw: &super::raw::RawGraphql,
    route: &RouteConfig,
    problems: &mut Problems,
) -> Option<GraphqlCall> {
    if raw.query.trim().is_empty() {
        problems.push(
            format!("{key}.query"),
            "the GraphQL operation text is empty",
        );
    }
    check_path(&format!("{key}.endpoint"), &raw.endpoint, problems);
    let variables = parameters(&format!("{key}.variables"), &raw.variables, route, problems);
    Some(GraphqlCall::new(
        raw.endpoint.clone(),
        &raw.query,
        raw.operation_name.as_deref(),
        variables,
        result_path(raw.result.as_ref()),
    ))
}

fn soap_call(
    key: &str,
    raw: &super::raw::RawSoap,
    route: &RouteConfig,
    problems: &mut Problems,
) -> Option<SoapCall> {
    let version = match raw.version.as_str() {
        "1.1" => SoapVersion::V1_1,
        "1.2" => SoapVersion::V1_2,
        other => {
            problems.push(
                format!("{key}.version"),
                format!("{other:?}: write \"1.1\" or \"1.2\""),
            );
            SoapVersion::V1_1
        }
    };
    let template = raw
        .template
        .as_deref()
        .map(crate::mediate::soap::parse_template);
    if let Some(parts) = &template {
        for part in parts {
            if let crate::mediate::soap::TemplatePart::Value(name) = part
                && !raw.parameters.is_empty()
                && !raw.parameters.contains_key(name)
            {
                problems.push(
                    format!("{key}.template"),
                    format!("{{{name}}} is not one of the parameters"),
                );
            }
        }
        // The template with every placeholder empty must be well-formed XML.
        let empty: String = parts
            .iter()
            .map(|p| match p {
                crate::mediate::soap::TemplatePart::Literal(text) => text.as_str(),
                crate::mediate::soap::TemplatePart::Value(_) => "",
            })
            .collect();
        if let Err(message) = crate::mediate::soap::check_fragment(&empty) {
            problems.push(format!("{key}.template"), message);
        }
    } else if !is_element_name(&raw.operation) {
        problems.push(
            format!("{key}.operation"),
            format!("{:?} is not an XML element name", raw.operation),
        );
    }
    if let Some(endpoint) = &raw.endpoint {
        check_path(&format!("{key}.endpoint"), endpoint, problems);
    }
    for (field, value) in [("action", &raw.action), ("namespace", &raw.namespace)] {
        if value
            .as_deref()
            .is_some_and(|v| v.contains(['"', '\r', '\n']))
        {
            problems.push(
                format!("{key}.{field}"),
                "must not contain quotes or line breaks",
            );
        }
    }
    for name in raw.parameters.keys() {
        if !is_element_name(name) {
            problems.push(
                format!("{key}.parameters.{name}"),
                format!("{name:?} is not an XML element name"),
            );
        }
    }
    let parameters = parameters(
        &format!("{key}.parameters"),
        &raw.parameters,
        route,
        problems,
    );
    Some(SoapCall {
        endpoint: raw.endpoint.clone(),
        version,
        action: raw.action.clone(),
        operation: raw.operation.clone(),
        namespace: raw.namespace.clone(),
        parameters,
        template,
        result: result_path(raw.result.as_ref()),
    })
}

fn parameters(
    key: &str,
    raw: &indexmap::IndexMap<String, RawParameter>,
    route: &RouteConfig,
    problems: &mut Problems,
) -> Vec<Parameter> {
    let captures: Vec<&str> = match &route.path {
        PathMatch::Regex(re) => re.capture_names().flatten().collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (name, p) in raw {
        let pkey = format!("{key}.{name}");
        let source_name = p.name.clone().unwrap_or_else(|| name.clone());
        let source = match p.from.as_str() {
            "path" => {
                if !captures.contains(&source_name.as_str()) {
                    problems.push(
                        format!("{pkey}.from"),
                        format!("the route's path has no {{{source_name}}} segment (write path = \"/…/{{{source_name}}}\")"),
                    );
                }
                Source::Path(source_name)
            }
            "query" => Source::Query(source_name),
            "header" => Source::Header(source_name.to_ascii_lowercase()),
            "body" => {
                if p.name.is_some() {
                    problems.push(
                        format!("{pkey}.name"),
                        "a body value is addressed by pointer, not name",
                    );
                }
                if let Some(pointer) = &p.pointer
                    && Pointer::parse(pointer).is_none()
                {
                    problems.push(
                        format!("{pkey}.pointer"),
                        format!("{pointer:?} is not a JSON pointer (\"/a/b\")"),
                    );
                }
                Source::Body(p.pointer.clone())
            }
            other => {
                problems.push(
                    format!("{pkey}.from"),
                    format!("{other:?}: write \"path\", \"query\", \"header\" or \"body\""),
                );
                continue;
            }
        };
        if p.pointer.is_some() && !matches!(source, Source::Body(_)) {
            problems.push(
                format!("{pkey}.pointer"),
                "pointer only applies to from = \"body\"",
            );
        }
        let kind = match p.kind.as_deref() {
            None => Kind::String,
            Some(kind) => Kind::parse(kind).unwrap_or_else(|| {
                problems.push(
                    format!("{pkey}.type"),
                    format!("{kind:?}: write string, int, float, bool or json"),
                );
                Kind::String
            }),
        };
        let default = p.default.as_ref().and_then(|d| {
            serde_json::to_value(d)
                .map_err(|e| problems.push(format!("{pkey}.default"), e.to_string()))
                .ok()
        });
        out.push(Parameter {
            name: name.clone(),
            required: p.required.unwrap_or(matches!(source, Source::Path(_))),
            source,
            kind,
            default,
        });
    }
    out
}

fn edits(key: &str, raw: &RawBodyEdits, problems: &mut Problems) -> JsonEdits {
    let mut pointer = |field: &str, text: &str| {
        let parsed = Pointer::parse(text).filter(|_| text.len() > 1);
        if parsed.is_none() {
            problems.push(
                format!("{key}.{field}"),
                format!("{text:?} is not a JSON pointer to a member (\"/a/b\")"),
            );
        }
        parsed
    };
    let remove = raw
        .remove
        .iter()
        .filter_map(|p| pointer("remove", p))
        .collect();
    let rename = raw
        .rename
        .iter()
        .filter_map(|(from, to)| Some((pointer("rename", from)?, to.clone())))
        .collect();
    let moves = raw
        .moves
        .iter()
        .filter_map(|(from, to)| Some((pointer("move", from)?, pointer("move", to)?)))
        .collect();
    let add = raw
        .add
        .iter()
        .filter_map(|(at, value)| Some((pointer("add", at)?, serde_json::to_value(value).ok()?)))
        .collect();
    for new_name in raw.rename.values() {
        if new_name.is_empty() || new_name.contains('/') {
            problems.push(
                format!("{key}.rename"),
                format!("{new_name:?}: a new name is a member name, not a pointer"),
            );
        }
    }
    JsonEdits {
        remove,
        rename,
        moves,
        add,
    }
}
