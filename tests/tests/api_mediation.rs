//! API mediation through the real gateway, against real local services: REST → GraphQL
//! (a GraphQL stand-in checks the query and variables it receives), JSON ↔ SOAP (a SOAP
//! stand-in answers envelopes and faults), JSON body edits both ways, and request
//! validation against a JSON Schema and an OpenAPI operation.

use std::net::SocketAddr;

use gateway_tests::{
    client::{Response, request},
    gateway::Gateway,
    service::{Reply, Service},
};
use serde_json::{Value, json};

const USER_QUERY: &str =
    "query User($id: Int!, $verbose: Boolean) { user(id: $id, verbose: $verbose) { id name } }";

/// A GraphQL server stand-in: refuses anything but the configured operation, and answers
/// by the `id` variable (7: a user; 404: a NOT_FOUND error; 0: data without a user;
/// 500: an unclassified error).
fn graphql_service() -> Service {
    Service::start(|req| {
        if req.method != "POST"
            || req.path != "/graphql"
            || req.header("content-type") != Some("application/json")
        {
            return Reply::json(
                400,
                &json!({"errors": [{"message": "not a GraphQL request"}]}),
            );
        }
        let body = req.json();
        if body["query"]
            .as_str()
            .is_some_and(|q| q.starts_with("mutation"))
        {
            let input = &body["variables"]["input"];
            return Reply::json(
                200,
                &json!({"data": {"createUser": {"id": 99, "name": input["name"]}}}),
            );
        }
        if body["query"] != USER_QUERY || body["operationName"] != "User" {
            return Reply::json(
                400,
                &json!({"errors": [{"message": "unexpected operation", "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]}),
            );
        }
        match body["variables"]["id"].as_i64() {
            Some(7) => Reply::json(
                200,
                &json!({"data": {"user": {"id": 7, "name": "Ann", "verbose": body["variables"]["verbose"]}}}),
            ),
            Some(404) => Reply::json(
                200,
                &json!({"data": {"user": null}, "errors": [{"message": "no user 404", "path": ["user"], "extensions": {"code": "NOT_FOUND"}}]}),
            ),
            Some(0) => Reply::json(200, &json!({"data": {"user": null}})),
            _ => Reply::json(
                200,
                &json!({"data": null, "errors": [{"message": "resolver crashed"}]}),
            ),
        }
    })
}

/// A gateway config: `workers` workers, one plain listener named `public`, then `rest`.
fn public_gateway(workers: usize, rest: &str) -> String {
    format!(
        "[gateway]\nworkers = {workers}\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n{rest}"
    )
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer t0k\r\nAccept-Encoding: gzip\r\n\r\n"
        ),
    )
}

fn post_json(addr: SocketAddr, path: &str, body: &str) -> Response {
    request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn problem(response: &Response) -> Value {
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{}",
        response.text()
    );
    response.json()
}

#[test]
fn rest_routes_become_graphql_operations() {
    let graphql = graphql_service();
    let gateway = Gateway::start(&public_gateway(
        2,
        &format!(
            r#"[[upstreams]]
name = "graphql"
targets = [ {{ addr = "{}" }} ]

[[routes]]
name = "user"
path = "/users/{{id}}"
methods = ["GET", "HEAD"]
upstream = "graphql"
graphql = {{ query = "{USER_QUERY}", operation_name = "User", result = "user", variables = {{ id = {{ from = "path", type = "int" }}, verbose = {{ from = "query", type = "bool", default = false }} }} }}

[[routes]]
name = "create-user"
path = "/users"
methods = ["POST"]
upstream = "graphql"
graphql = {{ query = "mutation Create($input: UserInput!) {{ createUser(input: $input) {{ id name }} }}", result = "createUser", variables = {{ input = {{ from = "body", type = "json", required = true }} }} }}
"#,
            graphql.addr
        ),
    ));
    let addr = gateway.addr();

    let ok = get(addr, "/users/7?verbose=1&other=x");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("content-type"), Some("application/json"));
    assert_eq!(ok.json(), json!({"id": 7, "name": "Ann", "verbose": true}));
    let sent = graphql.last();
    assert_eq!(
        (
            sent.method.as_str(),
            sent.path.as_str(),
            sent.query.as_deref()
        ),
        ("POST", "/graphql", None)
    );
    assert_eq!(
        sent.json(),
        json!({"query": USER_QUERY, "operationName": "User", "variables": {"id": 7, "verbose": true}})
    );
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer t0k"),
        "credentials still reach the upstream"
    );
    assert_eq!(
        sent.header("accept-encoding"),
        None,
        "the answer must come unencoded"
    );

    let defaulted = get(addr, "/users/7");
    assert_eq!(defaulted.json()["verbose"], false);

    let head = request(addr, "HEAD /users/7 HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    let calls = graphql.received().len();
    let bad = get(addr, "/users/abc");
    assert_eq!(bad.status, 400);
    let body = problem(&bad);
    assert_eq!(body["code"], "invalid_parameters");
    assert_eq!(
        body["errors"],
        json!([{"pointer": "/path/id", "detail": "must be an integer"}])
    );
    assert_eq!(
        graphql.received().len(),
        calls,
        "a refused request never reaches the upstream"
    );

    let missing = get(addr, "/users/404");
    assert_eq!(missing.status, 404);
    let body = problem(&missing);
    assert_eq!(body["code"], "graphql_error");
    assert_eq!(body["errors"][0]["message"], "no user 404");

    let empty = get(addr, "/users/0");
    assert_eq!(
        (empty.status, problem(&empty)["code"].as_str()),
        (404, Some("not_found"))
    );

    let crashed = get(addr, "/users/5");
    assert_eq!(crashed.status, 502);
    assert_eq!(
        problem(&crashed)["errors"][0]["message"],
        "resolver crashed"
    );

    let created = post_json(
        addr,
        "/users",
        r#"{"name": "Bo", "email": "bo@example.com"}"#,
    );
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.json(), json!({"id": 99, "name": "Bo"}));
    assert_eq!(
        graphql.last().json()["variables"],
        json!({"input": {"name": "Bo", "email": "bo@example.com"}})
    );

    let not_json = post_json(addr, "/users", "{name");
    assert_eq!(
        (not_json.status, problem(&not_json)["code"].as_str()),
        (400, Some("body_not_json"))
    );
    let no_body = request(
        addr,
        "POST /users HTTP/1.1\r\nHost: api.test\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(problem(&no_body)["errors"][0]["pointer"], "");
}

const SOAP_ENVELOPE_11: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// A SOAP 1.1 service stand-in for `urn:accounts`: GetAccount by id (0: a client fault;
/// 13: a server fault) and PlaceOrder echoing the elements it received in order.
fn soap_service() -> Service {
    Service::start(|req| {
        let body = req.text();
        let action = req.header("soapaction").unwrap_or_default().to_owned();
        let envelope = |inner: &str| {
            format!(
                r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_ENVELOPE_11}"><soap:Body>{inner}</soap:Body></soap:Envelope>"#
            )
        };
        let fault = |code: &str, text: &str| {
            Reply::new(
                500,
                "text/xml; charset=utf-8",
                envelope(&format!(
                    "<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{text}</faultstring><detail><a:reason xmlns:a=\"urn:accounts\">{text}</a:reason></detail></soap:Fault>"
                )),
            )
        };
        if req.header("content-type")
            == Some("application/soap+xml; charset=utf-8; action=\"urn:accounts/Ping\"")
            && body.contains("http://www.w3.org/2003/05/soap-envelope")
            && req.header("soapaction").is_none()
        {
            return Reply::new(
                200,
                "application/soap+xml",
                "<env:Envelope xmlns:env=\"http://www.w3.org/2003/05/soap-envelope\"><env:Body><PingResponse xmlns=\"urn:accounts\"><pong>1</pong></PingResponse></env:Body></env:Envelope>",
            );
        }
        if req.header("content-type") != Some("text/xml; charset=utf-8")
            || !body.contains(SOAP_ENVELOPE_11)
        {
            return fault("Client", "not a SOAP 1.1 request");
        }
        match action.as_str() {
            "\"urn:accounts/GetAccount\"" => {
                let id = body
                    .split("<id>")
                    .nth(1)
                    .and_then(|r| r.split("</id>").next())
                    .unwrap_or_default();
                match id {
                    "0" => fault("Client", "id must be positive"),
                    "13" => fault("Server", "ledger unavailable"),
                    _ => Reply::new(
                        200,
                        "text/xml; charset=utf-8",
                        envelope(&format!(
                            "<a:GetAccountResponse xmlns:a=\"urn:accounts\"><a:account currency=\"EUR\"><a:id>{id}</a:id><a:owner>Ann &amp; Co</a:owner><a:tag>gold</a:tag><a:tag>eu</a:tag></a:account></a:GetAccountResponse>"
                        )),
                    ),
                }
            }
            "\"urn:accounts/Search\"" => {
                let query = body
                    .split("<s:Search xmlns:s=\"urn:accounts\">")
                    .nth(1)
                    .and_then(|r| r.split("</s:Search>").next())
                    .unwrap_or_default();
                Reply::new(
                    200,
                    "text/xml",
                    envelope(&format!(
                        "<SearchResponse xmlns=\"urn:accounts\"><received>{}</received></SearchResponse>",
                        quick_escape(query)
                    )),
                )
            }
            "\"urn:accounts/PlaceOrder\"" => {
                let operation = body
                    .split("<PlaceOrder xmlns=\"urn:accounts\">")
                    .nth(1)
                    .and_then(|r| r.split("</PlaceOrder>").next())
                    .unwrap_or_default();
                Reply::new(
                    200,
                    "text/xml",
                    envelope(&format!(
                        "<PlaceOrderResponse xmlns=\"urn:accounts\"><received>{}</received><status>accepted</status></PlaceOrderResponse>",
                        quick_escape(operation)
                    )),
                )
            }
            _ => fault("Client", "unknown SOAPAction"),
        }
    })
}

fn quick_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[test]
fn json_requests_become_soap_calls_and_faults_become_problems() {
    let soap = soap_service();
    let gateway = Gateway::start(&public_gateway(
        1,
        &format!(
            r#"[[upstreams]]
name = "ledger"
targets = [ {{ addr = "{}" }} ]

[[routes]]
name = "account"
path = "/accounts/{{id}}"
upstream = "ledger"
soap = {{ endpoint = "/ledger.asmx", action = "urn:accounts/GetAccount", operation = "GetAccount", namespace = "urn:accounts", result = "account", parameters = {{ id = {{ from = "path", type = "int" }} }} }}

[[routes]]
name = "order"
path = "/orders"
upstream = "ledger"
rewrite = "/ledger.asmx"
soap = {{ action = "urn:accounts/PlaceOrder", operation = "PlaceOrder", namespace = "urn:accounts" }}

[[routes]]
name = "search"
path = "/search"
upstream = "ledger"
soap = {{ endpoint = "/ledger.asmx", action = "urn:accounts/Search", template = "<s:Search xmlns:s=\"urn:accounts\"><s:q>{{q}}</s:q><s:limit>{{limit}}</s:limit></s:Search>", result = "received", parameters = {{ q = {{ from = "query" }}, limit = {{ from = "query", type = "int", default = 10 }} }} }}

[[routes]]
name = "ping"
path = "/ping"
upstream = "ledger"
soap = {{ endpoint = "/ledger.asmx", version = "1.2", action = "urn:accounts/Ping", operation = "Ping", namespace = "urn:accounts", result = "pong" }}
"#,
            soap.addr
        ),
    ));
    let addr = gateway.addr();

    let ok = get(addr, "/accounts/42");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.json(),
        json!({"@currency": "EUR", "id": "42", "owner": "Ann & Co", "tag": ["gold", "eu"]})
    );
    let sent = soap.last();
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/ledger.asmx")
    );
    assert!(
        sent.text()
            .contains("<GetAccount xmlns=\"urn:accounts\"><id>42</id></GetAccount>"),
        "{}",
        sent.text()
    );

    let client_fault = get(addr, "/accounts/0");
    assert_eq!(client_fault.status, 400);
    let body = problem(&client_fault);
    assert_eq!(
        (body["code"].as_str(), body["detail"].as_str()),
        (Some("soap_fault"), Some("id must be positive"))
    );
    assert_eq!(
        body["fault_detail"],
        json!({"reason": "id must be positive"})
    );
    let server_fault = get(addr, "/accounts/13");
    assert_eq!(
        (
            server_fault.status,
            problem(&server_fault)["detail"].as_str()
        ),
        (502, Some("ledger unavailable"))
    );

    let order = post_json(
        addr,
        "/orders",
        r#"{"sku": "A-1", "qty": 2, "note": "<fragile> & dry", "lines": [{"n": 1}, {"n": 2}]}"#,
    );
    assert_eq!(order.status, 200, "{}", order.text());
    assert_eq!(
        order.json(),
        json!({
            "received": "<sku>A-1</sku><qty>2</qty><note>&lt;fragile&gt; &amp; dry</note><lines><n>1</n></lines><lines><n>2</n></lines>",
            "status": "accepted"
        }),
        "members become elements in the client's order, escaped"
    );
    let bad_name = post_json(addr, "/orders", r#"{"9lives": 1}"#);
    assert_eq!(
        (
            bad_name.status,
            problem(&bad_name)["errors"][0]["pointer"].as_str()
        ),
        (400, Some("/9lives"))
    );
    let not_object = post_json(addr, "/orders", "[1, 2]");
    assert_eq!(not_object.status, 400);

    let search = get(addr, "/search?q=a%3Cb%20%26%20c");
    assert_eq!(search.status, 200, "{}", search.text());
    assert_eq!(
        search.json(),
        json!("<s:q>a&lt;b &amp; c</s:q><s:limit>10</s:limit>"),
        "the operator's template, values escaped"
    );

    let ping = get(addr, "/ping");
    assert_eq!(ping.status, 200, "{}", ping.text());
    assert_eq!(
        ping.json(),
        json!("1"),
        "SOAP 1.2: the action rides in the content type"
    );
}

#[test]
fn json_bodies_are_edited_both_ways() {
    let backend = Service::start(|req| match req.path.as_str() {
        "/text" => Reply::new(200, "text/plain", "internal: kept as is"),
        _ => Reply::json(
            201,
            &json!({"id": 5, "internal": {"shard": 3}, "userName": "ann", "echo": req.json()}),
        ),
    });
    let gateway = Gateway::start(&public_gateway(
        1,
        &format!(
            r#"[[upstreams]]
name = "app"
targets = [ {{ addr = "{}" }} ]

[[routes]]
name = "edited"
path_prefix = "/"
upstream = "app"
max_mediated_body = "4KiB"
request_body = {{ remove = ["/password"], rename = {{ "/userName" = "user_name" }}, move = {{ "/city" = "/address/city" }}, add = {{ "/meta/source" = "gateway", "/meta/version" = 2 }} }}
response_body = {{ remove = ["/internal", "/echo"], rename = {{ "/userName" = "user_name" }} }}
"#,
            backend.addr
        ),
    ));
    let addr = gateway.addr();
    let response = post_json(
        addr,
        "/users",
        r#"{"userName": "ann", "password": "s3cret", "city": "Oslo"}"#,
    );
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(
        response.text(),
        r#"{"id":5,"user_name":"ann"}"#,
        "member order is kept"
    );
    assert_eq!(
        backend.last().text(),
        r#"{"user_name":"ann","address":{"city":"Oslo"},"meta":{"source":"gateway","version":2}}"#
    );

    let text = get(addr, "/text");
    assert_eq!(
        text.text(),
        "internal: kept as is",
        "non-JSON answers pass untouched"
    );

    // A body over the route's limit is forwarded untouched rather than refused.
    let big = format!(r#"{{"password": "p", "pad": "{}"}}"#, "x".repeat(8 * 1024));
    let response = post_json(addr, "/users", &big);
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(backend.last().body, big.as_bytes());
}

#[test]
fn requests_are_validated_against_a_schema_and_the_openapi_operation() {
    let backend = Service::start(|req| Reply::json(200, &json!({"accepted": req.json()})));
    let dir = tempfile::tempdir().expect("dir");
    let schema = dir.path().join("order.schema.json");
    std::fs::write(
        &schema,
        json!({
            "type": "object",
            "required": ["sku", "qty"],
            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]+-[0-9]+$"}, "qty": {"type": "integer", "minimum": 1}},
            "additionalProperties": false
        })
        .to_string(),
    )
    .expect("schema");
    let openapi = dir.path().join("openapi.json");
    std::fs::write(
        &openapi,
        json!({
            "openapi": "3.0.3",
            "info": {"title": "orders", "version": "1"},
            "paths": {"/carts/{cart}/items": {"post": {
                "parameters": [
                    {"name": "cart", "in": "path", "required": true, "schema": {"type": "integer"}},
                    {"name": "currency", "in": "query", "required": true, "schema": {"type": "string", "enum": ["EUR", "USD"]}}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}
            }}},
            "components": {"schemas": {"Item": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}}}
        })
        .to_string(),
    )
    .expect("openapi");
    let gateway = Gateway::start(&public_gateway(
        1,
        &format!(
            r#"[[upstreams]]
name = "app"
targets = [ {{ addr = "{}" }} ]

[[routes]]
name = "orders"
path = "/orders"
upstream = "app"
validate = {{ schema = "{}" }}

[[routes]]
name = "carts"
path_prefix = "/carts"
upstream = "app"
openapi = "{}"
validate = {{ openapi = true }}
"#,
            backend.addr,
            schema.display(),
            openapi.display()
        ),
    ));
    let addr = gateway.addr();
    let ok = post_json(addr, "/orders", r#"{"sku": "AB-1", "qty": 3}"#);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["accepted"], json!({"sku": "AB-1", "qty": 3}));

    let calls = backend.received().len();
    let bad = post_json(addr, "/orders", r#"{"sku": "ab", "qty": 0, "gift": true}"#);
    assert_eq!(bad.status, 400);
    let body = problem(&bad);
    assert_eq!(body["code"], "schema_violation");
    let mut pointers: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    pointers.sort_unstable();
    assert_eq!(
        pointers,
        ["", "/qty", "/sku"],
        "every violation is listed: {body}"
    );
    let form = request(
        addr,
        "POST /orders HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 5\r\n\r\nsku=A",
    );
    assert_eq!(form.status, 415);
    let chunked = request(
        addr,
        "POST /orders HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"sku\r\n13\r\n\": \"Z-9\", \"qty\": 1}\r\n0\r\n\r\n",
    );
    assert_eq!(chunked.status, 200, "{}", chunked.text());
    assert_eq!(
        backend.received().len(),
        calls + 1,
        "only the valid request went upstream"
    );

    let cart_ok = post_json(addr, "/carts/12/items?currency=EUR", r#"{"sku": "A"}"#);
    assert_eq!(cart_ok.status, 200, "{}", cart_ok.text());
    let cart_bad = post_json(addr, "/carts/x/items?currency=GBP", r#"{"qty": 1}"#);
    assert_eq!(cart_bad.status, 400);
    let mut pointers: Vec<String> = problem(&cart_bad)["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str().map(str::to_owned))
        .collect();
    pointers.sort_unstable();
    assert_eq!(pointers, ["", "/path/cart", "/query/currency"]);
}

#[test]
fn bad_mediation_config_is_refused_with_its_keys() {
    let Err(error) = Gateway::try_start(
        r#"[gateway]
workers = 1

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ { addr = "127.0.0.1:9" } ]

[[routes]]
name = "gql"
path = "/users"
upstream = "app"
cache = {}
graphql = { query = " ", variables = { id = { from = "path" }, n = { from = "cookie" }, k = { from = "query", type = "integer64" } } }

[[routes]]
name = "soap"
path = "/s/{x-y}"
upstream = "app"
soap = { operation = "1bad", version = "1.3" }

[[routes]]
name = "templated"
path = "/t"
upstream = "app"
soap = { template = "<a>{x}</b>", parameters = { y = { from = "query" } } }

[[routes]]
name = "edits"
upstream = "app"
request_body = { remove = ["nope"], rename = { "/a" = "b/c" } }
validate = { openapi = true }
"#,
    ) else {
        panic!("the gateway accepted bad mediation settings");
    };
    for key in [
        "routes[0].graphql.query",
        "routes[0].graphql.variables.id.from",
        "routes[0].graphql.variables.n.from",
        "routes[0].graphql.variables.k.type",
        "routes[0].cache",
        "routes[1].path",
        "routes[2].soap.template",
        "routes[3].request_body.remove",
        "routes[3].request_body.rename",
        "routes[3].validate.openapi",
    ] {
        assert!(error.contains(key), "{key} missing from: {error}");
    }
}

#[test]
fn aggregates_fan_out_concurrently_and_mark_partial_answers() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    // The profile service answers only once the orders service has its request too: the
    // answer proves both calls were in flight at once.
    let orders_seen = Arc::new(AtomicBool::new(false));
    let seen = orders_seen.clone();
    let orders = Service::start(move |req| {
        seen.store(true, Ordering::SeqCst);
        Reply::json(200, &json!([{"order": 1, "for": req.path}]))
    });
    let profile = Service::start(move |req| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while !orders_seen.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let concurrent = orders_seen.load(Ordering::SeqCst);
        Reply::json(
            200,
            &json!({"id": req.path.rsplit('/').next(), "concurrent": concurrent, "auth": req.header("authorization"), "query": req.query}),
        )
    });
    let slow = Service::start(|_| {
        Reply::json(200, &json!({"late": true})).delayed(std::time::Duration::from_secs(2))
    });
    let failing = Service::start(|_| Reply::json(500, &json!({"error": "down"})));
    let gateway = Gateway::start(&public_gateway(
        1,
        &format!(
            r#"[[upstreams]]
name = "profile"
targets = [ {{ addr = "{}" }} ]

[[upstreams]]
name = "orders"
targets = [ {{ addr = "{}" }} ]

[[upstreams]]
name = "slow"
targets = [ {{ addr = "{}" }} ]

[[upstreams]]
name = "failing"
targets = [ {{ addr = "{}" }} ]

[[routes]]
name = "dashboard"
path = "/dashboard/{{id}}"
upstream = "profile"
response_body = {{ rename = {{ "/profile/concurrent" = "parallel" }} }}
aggregate = {{ calls = [
  {{ key = "profile", path = "/profiles/{{id}}", forward_query = true, required = true }},
  {{ key = "orders", upstream = "orders", path = "/users/{{id}}/orders" }},
  {{ key = "recommendations", upstream = "slow", path = "/recs", timeout = "300ms" }},
  {{ key = "reviews", upstream = "failing", path = "/reviews" }},
] }}

[[routes]]
name = "strict"
path = "/strict/{{id}}"
upstream = "failing"
aggregate = {{ calls = [ {{ key = "reviews", path = "/reviews", required = true }}, {{ key = "orders", upstream = "orders", path = "/o/{{id}}" }} ] }}
"#,
            profile.addr, orders.addr, slow.addr, failing.addr
        ),
    ));
    let addr = gateway.addr();
    let response = get(addr, "/dashboard/31?lang=en");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("x-aggregate-partial"),
        Some("recommendations, reviews")
    );
    let body = response.json();
    assert_eq!(
        body["profile"],
        json!({"id": "31", "parallel": true, "auth": "Bearer t0k", "query": "lang=en"}),
        "both calls in flight at once, the client's credentials and query passed on"
    );
    assert_eq!(
        body["orders"],
        json!([{"order": 1, "for": "/users/31/orders"}])
    );
    assert_eq!(body["_errors"]["reviews"], "status 500");
    assert_eq!(body["_errors"]["recommendations"], "timed out");
    assert!(body.get("recommendations").is_none());
    assert_eq!(profile.last().path, "/profiles/31");

    let strict = get(addr, "/strict/1");
    assert_eq!(strict.status, 502, "{}", strict.text());
    assert!(
        problem(&strict)["detail"]
            .as_str()
            .is_some_and(|d| d.contains("reviews"))
    );
}
