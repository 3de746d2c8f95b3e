//! REST → GraphQL: a route's request becomes a GraphQL operation POSTed to the upstream
//! (`{"query", "operationName", "variables"}`), and the operation's `data` (or a member of
//! it) becomes the REST response. GraphQL `errors` become a problem response whose status
//! follows the errors' `extensions.code` (Apollo's and the GraphQL-over-HTTP spec's
//! conventional codes), or 502 when the upstream failed in an unclassified way.

use serde_json::{Map, Value};

use super::{MediationError, params::Parameter};

/// A route's GraphQL operation.
#[derive(Debug)]
pub struct GraphqlCall {
    /// Upstream path the operation is POSTed to.
    pub endpoint: String,
    /// `{"query":…,"operationName":…,"variables":` serialized once at config load.
    body_prefix: Vec<u8>,
    /// Where the variables come from.
    pub variables: Vec<Parameter>,
    /// The member of `data` returned (path of names); empty: all of `data`.
    pub result: Vec<String>,
}

impl GraphqlCall {
    pub fn new(
        endpoint: String,
        query: &str,
        operation_name: Option<&str>,
        variables: Vec<Parameter>,
        result: Vec<String>,
    ) -> Self {
        let mut head = Map::new();
        head.insert("query".into(), query.into());
        if let Some(name) = operation_name {
            head.insert("operationName".into(), name.into());
        }
        // `{"operationName":…,"query":…}` without its closing brace, then the variables.
        let mut body_prefix = serde_json::to_vec(&Value::Object(head)).unwrap_or_default();
        body_prefix.pop();
        body_prefix.extend_from_slice(b",\"variables\":");
        Self {
            endpoint,
            body_prefix,
            variables,
            result,
        }
    }

    /// The upstream request body for `variables`.
    pub fn request_body(&self, variables: &Map<String, Value>, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.body_prefix);
        // Writing a map of JSON values into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, variables);
        out.push(b'}');
    }

    /// The REST answer to the upstream's `status` and `body`: the selected data, or the
    /// problem the errors describe.
    pub fn response(&self, status: u16, body: &[u8]) -> Result<Value, MediationError> {
        let parsed: Value = serde_json::from_slice(body).map_err(|e| {
            MediationError::BadUpstreamBody(format!(
                "status {status}, body is not a GraphQL JSON response ({e})"
            ))
        })?;
        let Value::Object(mut response) = parsed else {
            return Err(MediationError::BadUpstreamBody(
                "a GraphQL response must be a JSON object".into(),
            ));
        };
        if let Some(Value::Array(errors)) = response.remove("errors")
            && !errors.is_empty()
        {
            return Err(MediationError::GraphqlErrors {
                status: error_status(status, &errors),
                errors,
            });
        }
        if !(200..300).contains(&status) {
            return Err(MediationError::BadUpstreamBody(format!(
                "the GraphQL upstream answered {status} without errors"
            )));
        }
        let data = response.remove("data").unwrap_or(Value::Null);
        match super::select(&data, &self.result) {
            Some(Value::Null) | None if data.is_null() => Err(MediationError::BadUpstreamBody(
                "the GraphQL response has neither data nor errors".into(),
            )),
            Some(Value::Null) | None => Err(MediationError::ResultMissing(self.result.join("."))),
            Some(value) => Ok(value.clone()),
        }
    }
}

/// The REST status for GraphQL `errors`: the first classified `extensions.code`, else the
/// upstream's own 4xx, else 502.
fn error_status(upstream_status: u16, errors: &[Value]) -> u16 {
    let classified = errors.iter().find_map(|error| {
        let code = error.pointer("/extensions/code")?.as_str()?;
        Some(match code {
            "UNAUTHENTICATED" => 401,
            "FORBIDDEN" => 403,
            "NOT_FOUND" => 404,
            "BAD_USER_INPUT"
            | "BAD_REQUEST"
            | "GRAPHQL_VALIDATION_FAILED"
            | "GRAPHQL_PARSE_FAILED"
            | "OPERATION_RESOLUTION_FAILURE" => 400,
            "CONFLICT" => 409,
            "TOO_MANY_REQUESTS" | "RATE_LIMITED" => 429,
            _ => return None,
        })
    });
    classified.unwrap_or(if (400..500).contains(&upstream_status) {
        upstream_status
    } else {
        502
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(result: &str) -> GraphqlCall {
        GraphqlCall::new(
            "/graphql".into(),
            "query User($id: ID!) { user(id: $id) { id name } }",
            Some("User"),
            Vec::new(),
            result
                .split('.')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    #[test]
    fn request_body_holds_query_operation_and_variables() {
        let mut variables = Map::new();
        variables.insert("id".into(), "7\"x".into());
        let mut out = Vec::new();
        call("user").request_body(&variables, &mut out);
        let body: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "query": "query User($id: ID!) { user(id: $id) { id name } }",
                "operationName": "User",
                "variables": {"id": "7\"x"}
            })
        );
    }

    #[test]
    fn responses_map_to_data_or_problems() {
        type Case = (
            &'static str,
            u16,
            &'static str,
            Result<Value, (u16, &'static str)>,
        );
        let cases: &[Case] = &[
            (
                "user",
                200,
                r#"{"data":{"user":{"id":"1"}}}"#,
                Ok(serde_json::json!({"id":"1"})),
            ),
            (
                "",
                200,
                r#"{"data":{"user":null}}"#,
                Ok(serde_json::json!({"user":null})),
            ),
            (
                "user",
                200,
                r#"{"data":{"user":null}}"#,
                Err((404, "not_found")),
            ),
            (
                "user",
                200,
                r#"{"data":null,"errors":[{"message":"no","extensions":{"code":"FORBIDDEN"}}]}"#,
                Err((403, "graphql_error")),
            ),
            (
                "user",
                400,
                r#"{"errors":[{"message":"Cannot query field"}]}"#,
                Err((400, "graphql_error")),
            ),
            (
                "user",
                200,
                r#"{"errors":[{"message":"boom"}]}"#,
                Err((502, "graphql_error")),
            ),
            (
                "user",
                500,
                "<html>oops</html>",
                Err((502, "upstream_untranslatable")),
            ),
            (
                "user",
                503,
                r#"{"data":{"user":{}}}"#,
                Err((502, "upstream_untranslatable")),
            ),
            ("user", 200, r#"[1]"#, Err((502, "upstream_untranslatable"))),
            ("user", 200, r#"{}"#, Err((502, "upstream_untranslatable"))),
        ];
        for (result, status, body, expected) in cases {
            let got = call(result).response(*status, body.as_bytes());
            match (got, expected) {
                (Ok(value), Ok(want)) => assert_eq!(&value, want, "{body}"),
                (Err(error), Err((want_status, want_code))) => {
                    assert_eq!(
                        (error.status(), error.code()),
                        (*want_status, *want_code),
                        "{body}"
                    );
                }
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
    }
}
