//! S14, what API mediation costs, each variant against the plain proxy in the same run:
//! - a REST GET translated into a GraphQL POST (variables from the query, `data.user`
//!   returned) versus the same GET proxied to an endpoint answering the same JSON;
//! - a JSON POST validated against a JSON Schema (and edited: one member removed, one
//!   added) versus the same POST proxied untouched.
//!
//! The backend's nginx answers both with fixed JSON bodies (`return 200`), so the
//! difference is the gateway's own work: reading the body whole, parsing, validating,
//! serializing, translating.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;

use crate::{
    bench::{BenchArgs, GatewayPolicy, Scenario},
    bench_features::compare,
};

const S14_GET: Scenario = Scenario {
    id: "S14",
    what: "keep-alive GET /b/user?id=7 → JSON; plain proxy vs REST→GraphQL translation",
    path: "/b/user?id=7",
    close: false,
    tls: false,
};

const S14_POST: Scenario = Scenario {
    id: "S14",
    what: "keep-alive POST /b/orders, 60 B JSON body; plain proxy vs JSON Schema validation + body edits",
    path: "/b/orders",
    close: false,
    tls: false,
};

/// The README section.
pub fn section(args: &BenchArgs, dir: &Path, backend: u16) -> Result<String> {
    let graphql = GatewayPolicy {
        route: "graphql = { endpoint = \"/gql\", query = \"query User($id: Int!) { user(id: $id) { id name } }\", result = \"user\", variables = { id = { from = \"query\", type = \"int\" } } }\n".into(),
        ..GatewayPolicy::default()
    };
    let schema = dir.join("order.schema.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","required":["sku","qty"],"properties":{"sku":{"type":"string","pattern":"^[A-Z]+-[0-9]+$"},"qty":{"type":"integer","minimum":1},"note":{"type":"string","maxLength":200}},"additionalProperties":false}"#,
    )?;
    let validated = GatewayPolicy {
        route: format!(
            "validate = {{ schema = \"{}\" }}\nrequest_body = {{ remove = [\"/note\"], add = {{ \"/source\" = \"gateway\" }} }}\n",
            schema.display()
        ),
        ..GatewayPolicy::default()
    };
    let script = dir.join("post-order.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{{\"sku\":\"AB-12\",\"qty\":3,\"note\":\"leave at the door\"}}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nrequest = function() return wrk.format(nil, \"{}\") end\n",
            S14_POST.path
        ),
    )?;
    let mut out = String::new();
    writeln!(
        out,
        "\nMediation cost (S14; {} runs × {} s, median)\n\n{}\n",
        args.runs, args.duration, S14_GET.what
    )?;
    out.push_str(
        &compare(
            args,
            dir,
            backend,
            &S14_GET,
            &[
                ("plain", GatewayPolicy::default()),
                ("REST→GraphQL", graphql),
            ],
            None,
            None,
        )?
        .table,
    );
    writeln!(out, "\n{}\n", S14_POST.what)?;
    out.push_str(
        &compare(
            args,
            dir,
            backend,
            &S14_POST,
            &[
                ("plain", GatewayPolicy::default()),
                ("validated + edited", validated),
            ],
            Some(&script),
            None,
        )?
        .table,
    );
    Ok(out)
}
