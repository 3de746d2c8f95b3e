//! Response aggregation: one client request fans out to several upstream calls made
//! concurrently, and their JSON answers are merged under configured keys. A call that
//! fails (error status, not JSON, timeout) is reported in `_errors` and the answer is
//! marked partial; a failed `required` call, or every call failing, is a 502 problem.

use std::time::Duration;

use serde_json::{Map, Value};

use super::MediationError;

/// A route's fan-out.
#[derive(Debug)]
pub struct Aggregate {
    pub calls: Vec<Call>,
}

/// One upstream call of an aggregate.
#[derive(Debug)]
pub struct Call {
    /// The member of the merged answer holding this call's JSON.
    pub key: String,
    /// Index into the config's upstreams.
    pub upstream: usize,
    pub method: String,
    /// The path, with `{name}` filled from the route's path captures.
    pub path: Vec<PathPart>,
    /// The client's query string is passed on.
    pub forward_query: bool,
    pub timeout: Duration,
    /// Without this call's answer the aggregate fails.
    pub required: bool,
}

/// A piece of a call's path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Literal(String),
    /// A named capture of the route's path.
    Capture(String),
}

/// Splits `/users/{id}/orders` into literal and capture parts.
pub fn parse_path(template: &str) -> Result<Vec<PathPart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("{template:?}: an unclosed {{"))?;
        if open > 0 {
            parts.push(PathPart::Literal(rest[..open].to_owned()));
        }
        parts.push(PathPart::Capture(rest[open + 1..open + close].to_owned()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(PathPart::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// How one call ended.
#[derive(Debug)]
pub enum Outcome {
    /// The upstream answered with this status and body.
    Answered { status: u16, body: Vec<u8> },
    /// No answer: why.
    Failed(String),
}

/// The merged answer, and the keys of the calls that failed.
pub fn merge(
    calls: &[Call],
    outcomes: Vec<Outcome>,
) -> Result<(Value, Vec<String>), MediationError> {
    let mut merged = Map::new();
    let mut errors = Map::new();
    let mut failed_required = None;
    for (call, outcome) in calls.iter().zip(outcomes) {
        let value = match outcome {
            Outcome::Answered { status, body } if (200..300).contains(&status) => {
                serde_json::from_slice::<Value>(&body).map_err(|e| format!("not JSON: {e}"))
            }
            Outcome::Answered { status, .. } => Err(format!("status {status}")),
            Outcome::Failed(why) => Err(why),
        };
        match value {
            Ok(value) => {
                merged.insert(call.key.clone(), value);
            }
            Err(why) => {
                if call.required && failed_required.is_none() {
                    failed_required = Some(format!("{}: {why}", call.key));
                }
                errors.insert(call.key.clone(), Value::String(why));
            }
        }
    }
    if let Some(why) = failed_required {
        return Err(MediationError::BadUpstreamBody(format!(
            "a required call failed ({why})"
        )));
    }
    if merged.is_empty() && !calls.is_empty() {
        return Err(MediationError::BadUpstreamBody(format!(
            "every aggregated call failed: {}",
            Value::Object(errors)
        )));
    }
    let failed: Vec<String> = errors.keys().cloned().collect();
    if !errors.is_empty() {
        merged.insert("_errors".into(), Value::Object(errors));
    }
    Ok((Value::Object(merged), failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(key: &str, required: bool) -> Call {
        Call {
            key: key.into(),
            upstream: 0,
            method: "GET".into(),
            path: Vec::new(),
            forward_query: false,
            timeout: Duration::from_secs(1),
            required,
        }
    }

    fn ok(body: &str) -> Outcome {
        Outcome::Answered {
            status: 200,
            body: body.into(),
        }
    }

    #[test]
    fn answers_merge_under_their_keys_and_failures_are_listed() {
        let calls = [
            call("user", true),
            call("orders", false),
            call("reviews", false),
        ];
        let (merged, failed) = merge(
            &calls,
            vec![
                ok(r#"{"id":1}"#),
                Outcome::Failed("timed out".into()),
                Outcome::Answered {
                    status: 503,
                    body: Vec::new(),
                },
            ],
        )
        .expect("partial");
        assert_eq!(
            merged,
            serde_json::json!({"user": {"id": 1}, "_errors": {"orders": "timed out", "reviews": "status 503"}})
        );
        assert_eq!(failed, ["orders", "reviews"]);
        let (whole, failed) = merge(&calls, vec![ok("1"), ok("[]"), ok("null")]).expect("whole");
        assert_eq!(
            whole,
            serde_json::json!({"user": 1, "orders": [], "reviews": null})
        );
        assert!(failed.is_empty());
    }

    #[test]
    fn a_failed_required_call_or_all_failing_is_an_error() {
        let calls = [call("user", true), call("orders", false)];
        let error = merge(&calls, vec![ok("not json"), ok("{}")]).expect_err("required failed");
        assert_eq!(error.status(), 502);
        let calls = [call("a", false), call("b", false)];
        let error = merge(
            &calls,
            vec![
                Outcome::Failed("refused".into()),
                Outcome::Failed("reset".into()),
            ],
        );
        assert_eq!(error.expect_err("all failed").status(), 502);
    }

    #[test]
    fn paths_split_into_literals_and_captures() {
        assert_eq!(
            parse_path("/u/{id}/o/{n}").expect("ok"),
            vec![
                PathPart::Literal("/u/".into()),
                PathPart::Capture("id".into()),
                PathPart::Literal("/o/".into()),
                PathPart::Capture("n".into())
            ]
        );
        assert!(parse_path("/u/{id").is_err());
    }
}
