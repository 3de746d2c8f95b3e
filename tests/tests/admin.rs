//! The admin API against the real binary: the bearer token, every endpoint of
//! `/openapi.json` answering as documented, Prometheus metrics that count real traffic,
//! the effective config with secrets redacted, reload (good and refused) over the API and
//! through `gateway reload`, and `gateway status`.

use std::{collections::BTreeMap, net::SocketAddr};

use gateway_tests::{
    backend::Backend,
    client::{Response, get, request},
    gateway::{Gateway, run_cli},
};
use serde_json::Value;

const TOKEN: &str = "admin-token-for-tests";

fn config(backend: &Backend, token_file: &std::path::Path, extra_route: &str) -> String {
    format!(
        r#"
[gateway]
workers = 2
admin = "127.0.0.1:0"
admin_token_file = "{token}"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{backend}" }} ]

[[auth.introspection]]
name = "oauth"
url = "http://127.0.0.1:9/introspect"
client_id = "gateway"
client_secret = "very-secret-value"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"
rate_limit = {{ rate = "100/s", burst = 50, key = "client_ip" }}
{extra_route}
"#,
        token = token_file.display(),
        backend = backend.addr,
    )
}

fn admin_call(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Response {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    request(
        admin,
        &format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n"),
    )
}

struct Setup {
    _backend: Backend,
    _token: tempfile::NamedTempFile,
    gw: Gateway,
    admin: SocketAddr,
}

fn start() -> Setup {
    let backend = Backend::start("app");
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), format!("{TOKEN}\n")).expect("write token");
    let gw = Gateway::start(&config(&backend, token.path(), ""));
    let admin = gw.admin.expect("admin address logged");
    Setup {
        _backend: backend,
        _token: token,
        gw,
        admin,
    }
}

#[test]
fn every_documented_endpoint_answers_as_the_openapi_document_says() {
    let Setup {
        gw,
        admin,
        _backend,
        _token,
    } = start();
    assert_eq!(admin_call(admin, "GET", "/health", None).status, 200);
    let doc = admin_call(admin, "GET", "/openapi.json", Some(TOKEN)).json();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 9, "{paths:?}");
    for (path, operations) in paths {
        let (method, operation) = operations
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("one operation per path");
        let method = method.to_ascii_uppercase();
        let public = operation["security"] == Value::Array(Vec::new());
        // Paths come sorted, so /acl/add runs before /acl/remove.
        let target = match path.as_str() {
            "/ratelimit" => "/ratelimit?limit=route:api&key=127.0.0.1".to_owned(),
            "/acl/add" | "/acl/remove" => format!("{path}?list=deny&cidr=192.0.2.0%2F24&ttl=1m"),
            "/cache/purge" => format!("{path}?prefix=GET%20a%2F"),
            _ => path.clone(),
        };
        let responses = operation["responses"].as_object().expect("responses");
        let res = admin_call(admin, &method, &target, Some(TOKEN));
        assert!(
            responses.contains_key(&res.status.to_string()),
            "{method} {path}: {} not documented ({})",
            res.status,
            res.text()
        );
        assert_eq!(res.status, 200, "{method} {path}: {}", res.text());
        let documented_type = responses["200"]["content"]
            .as_object()
            .and_then(|c| c.keys().next().cloned())
            .expect("content type");
        assert!(
            res.header("content-type")
                .is_some_and(|t| t.starts_with(&documented_type)),
            "{path}: {:?} vs {documented_type}",
            res.header("content-type")
        );
        if !public {
            for token in [None, Some("wrong-token")] {
                let refused = admin_call(admin, &method, &target, token);
                assert_eq!(refused.status, 401, "{path} without the right token");
                assert!(responses.contains_key("401"));
            }
            let other = if method == "GET" { "POST" } else { "GET" };
            assert_eq!(admin_call(admin, other, &target, Some(TOKEN)).status, 405);
        }
    }
    assert_eq!(admin_call(admin, "GET", "/nope", Some(TOKEN)).status, 404);
    assert!(gw.log().contains("admin API listening"));
}

/// Sum of a metric's samples over every label set containing all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

#[test]
fn metrics_count_real_traffic() {
    let Setup {
        gw,
        admin,
        _backend,
        _token,
    } = start();
    for _ in 0..7 {
        assert_eq!(get(gw.addr(), "a", "/api/x").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(gw.addr(), "a", "/nothing-here").status, 404);
    }
    // A worker records a request right after writing its response: the client can ask
    // for /metrics first. Wait (bounded) until the last one is in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let text = loop {
        let text = admin_call(admin, "GET", "/metrics", Some(TOKEN)).text();
        let seen = metric_sum(&text, "gateway_http_requests_total", &[]);
        if seen >= 10.0 || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let requests =
        |labels: &[(&str, &str)]| metric_sum(&text, "gateway_http_requests_total", labels);
    assert_eq!(
        requests(&[("route", "api"), ("status_class", "2xx"), ("method", "GET")]),
        7.0,
        "{text}"
    );
    assert_eq!(requests(&[("route", ""), ("status_class", "4xx")]), 3.0);
    assert_eq!(
        metric_sum(
            &text,
            "gateway_http_request_duration_seconds_count",
            &[("route", "api")]
        ),
        7.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "gateway_upstream_response_duration_seconds_count",
            &[("route", "api")]
        ),
        7.0
    );
    assert_eq!(
        metric_sum(
            &text,
            "gateway_listener_connections_total",
            &[("listener", "public")]
        ),
        10.0
    );
    let opened = metric_sum(&text, "gateway_upstream_connections_opened_total", &[]);
    let reused = metric_sum(&text, "gateway_upstream_connections_reused_total", &[]);
    assert_eq!(
        opened + reused,
        7.0,
        "every upstream request used a new or pooled connection"
    );
    assert!(reused >= 1.0, "keep-alive to the upstream is reused");
}

#[test]
fn config_is_shown_with_secrets_redacted_and_rate_limit_state_is_queryable() {
    let Setup {
        gw,
        admin,
        _backend,
        _token,
    } = start();
    let res = admin_call(admin, "GET", "/config", Some(TOKEN));
    assert_eq!(res.status, 200);
    assert!(!res.text().contains("very-secret-value"), "{}", res.text());
    let config = res.json();
    assert_eq!(
        config["config"]["auth"]["introspection"][0]["client_secret"],
        "[redacted]"
    );
    assert_eq!(config["config"]["routes"][0]["name"], "api");

    for _ in 0..5 {
        get(gw.addr(), "a", "/api/x");
    }
    let state = admin_call(
        admin,
        "GET",
        "/ratelimit?limit=route:api&key=127.0.0.1",
        Some(TOKEN),
    )
    .json();
    let remaining = state["remaining"].as_u64().expect("remaining");
    assert!((44..=46).contains(&remaining), "{state}");
    let res = admin_call(admin, "GET", "/ratelimit?limit=route:nope", Some(TOKEN));
    assert_eq!(res.status, 400);

    let routes = admin_call(admin, "GET", "/routes", Some(TOKEN)).json();
    assert_eq!(routes["routes"][0]["rate_limit"]["burst"], 50);
    let upstreams = admin_call(admin, "GET", "/upstreams", Some(TOKEN)).json();
    assert_eq!(upstreams["upstreams"][0]["name"], "app");
}

#[test]
fn reload_over_the_api_and_the_cli() {
    let Setup {
        gw,
        admin,
        _token,
        _backend,
    } = start();
    let base = format!("http://{admin}");
    let token_path = _token.path().to_str().expect("utf8").to_owned();

    // `gateway status` reads the same JSON as GET /status.
    let (status, stdout, _) = run_cli(&["status", "--admin", &base, "--token-file", &token_path]);
    assert!(status.success());
    let parsed: Value = serde_json::from_str(&stdout).expect("status JSON");
    assert_eq!(parsed["workers"], 2);
    assert_eq!(parsed["reloads"], 0);
    let (status, _, stderr) = run_cli(&["status", "--admin", &base]);
    assert!(!status.success(), "no token: refused");
    assert!(stderr.contains("401"), "{stderr}");

    // A good new file over the API: the new route is served.
    let text = config(
        &_backend,
        _token.path(),
        "\n[[routes]]\nname = \"new\"\npath_prefix = \"/new\"\nupstream = \"app\"\n",
    );
    std::fs::write(gw.config_path(), &text).expect("rewrite config");
    let res = admin_call(admin, "POST", "/reload", Some(TOKEN));
    assert_eq!(res.status, 200, "{}", res.text());
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(get(gw.addr(), "a", "/new/x").status, 200);

    // A broken file: 422 with every problem located, the running config stays.
    let broken = format!("{text}\n[[routes]]\nname = \"broken\"\nupstream = \"missing\"\n");
    std::fs::write(gw.config_path(), broken).expect("rewrite config");
    let res = admin_call(admin, "POST", "/reload", Some(TOKEN));
    assert_eq!(res.status, 422, "{}", res.text());
    let problems: Vec<String> =
        serde_json::from_value(res.json()["problems"].clone()).expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p.contains(".toml:") && p.contains("unknown upstream \"missing\"")),
        "{problems:?}"
    );
    assert_eq!(get(gw.addr(), "a", "/new/x").status, 200);

    // The CLI says the same, with a failing exit status.
    let (status, stdout, _) = run_cli(&["reload", "--admin", &base, "--token-file", &token_path]);
    assert!(!status.success());
    assert!(stdout.contains("reload_refused"), "{stdout}");
    std::fs::write(gw.config_path(), &text).expect("restore config");
    let (status, stdout, _) = run_cli(&["reload", "--admin", &base, "--token-file", &token_path]);
    assert!(status.success(), "{stdout}");
    let status_now: BTreeMap<String, Value> = serde_json::from_str(
        &run_cli(&["status", "--admin", &base, "--token-file", &token_path]).1,
    )
    .expect("status");
    assert_eq!(status_now["reloads"], 2);

    // Every attempt is in the audit trail, with who did it and what changed.
    let audit = admin_call(admin, "GET", "/audit", Some(TOKEN)).json();
    let entries = audit["entries"].as_array().expect("entries");
    let results: Vec<&str> = entries
        .iter()
        .map(|e| e["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        results,
        ["applied", "refused", "refused", "applied"],
        "{audit}"
    );
    assert!(entries.iter().all(|e| {
        e["action"] == "reload"
            && e["identity"]
                .as_str()
                .is_some_and(|i| i.starts_with("token:"))
            && !e.to_string().contains(TOKEN)
    }));
    assert_eq!(entries[0]["before"]["routes"], 1);
    assert_eq!(entries[0]["after"]["routes"], 2);
    assert!(
        entries[1]["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("unknown upstream"))
    );
    gw.signal(libc::SIGHUP);
    gw.wait_for_log("config reloaded");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let audit = admin_call(admin, "GET", "/audit", Some(TOKEN)).json();
        let last = audit["entries"].as_array().and_then(|e| e.last().cloned());
        if last.is_some_and(|e| e["identity"] == "signal:SIGHUP") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP reload not audited: {audit}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
