//! Access logs from the real binary: one JSON line per request with the configured
//! fields (route, upstream target, status, bytes both ways, consumer), written off the
//! request path, reopened on SIGUSR1 (logrotate), and complete at shutdown.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use gateway_tests::{
    backend::Backend,
    client::{connect, get, read_response},
    gateway::Gateway,
};
use serde_json::Value;

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn wait_for_lines(path: &std::path::Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = lines(path);
        if found.len() >= count || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_request_is_one_json_line_and_sigusr1_reopens_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let backend = Backend::start("app");
    let mut gw = Gateway::start(&format!(
        r#"
[gateway]
workers = 2

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{}" }} ]

[[consumers]]
name = "acme"
api_keys = ["sha256:c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"
auth = ["api_key"]

[access_log]
path = "{}"
"#,
        backend.addr,
        log.display()
    ));
    let mut stream = connect(gw.addr());
    write!(
        stream,
        "POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nx-api-key: demo-key\r\nContent-Length: 11\r\n\r\nhello world"
    )
    .expect("send");
    let res = read_response(&mut stream, false);
    assert_eq!(res.status, 200);
    let response_body = res.body.len() as u64;
    assert_eq!(get(gw.addr(), "shop.test", "/api/x").status, 401);
    assert_eq!(get(gw.addr(), "shop.test", "/elsewhere").status, 404);

    let found = wait_for_lines(&log, 3);
    assert_eq!(found.len(), 3, "{found:?}");
    let posted = found
        .iter()
        .find(|l| l["method"] == "POST")
        .expect("the POST line");
    assert_eq!(posted["path"], "/api/orders");
    assert_eq!(posted["host"], "shop.test");
    assert_eq!(posted["route"], "api");
    assert_eq!(posted["upstream"], backend.addr.to_string());
    assert_eq!(posted["status"], 200);
    assert_eq!(posted["bytes_in"], 11);
    assert_eq!(posted["bytes_out"], response_body);
    assert_eq!(posted["consumer"], "acme");
    assert_eq!(posted["client"], "127.0.0.1");
    assert_eq!(posted["scheme"], "http");
    assert_eq!(posted["request_id"].as_str().map(str::len), Some(32));
    assert!(posted["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(posted["upstream_ms"].as_f64().is_some());
    assert!(posted["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let refused = found.iter().find(|l| l["status"] == 401).expect("401 line");
    assert_eq!(refused["upstream"], Value::Null);
    let unrouted = found.iter().find(|l| l["status"] == 404).expect("404 line");
    assert_eq!(unrouted["route"], Value::Null);
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("demo-key")
    );

    // logrotate: move the file away, SIGUSR1, and new lines go to a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    let offset = gw.log_len();
    gw.signal(libc::SIGUSR1);
    gw.wait_for_log_after(offset, "access log reopened");
    for _ in 0..4 {
        assert_eq!(get(gw.addr(), "shop.test", "/elsewhere").status, 404);
    }
    assert_eq!(wait_for_lines(&log, 4).len(), 4);
    assert_eq!(lines(&rotated).len(), 3);

    // Lines buffered at shutdown are written before the process exits.
    for _ in 0..5 {
        get(gw.addr(), "shop.test", "/elsewhere");
    }
    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    assert_eq!(lines(&log).len(), 9);
}

#[test]
fn the_field_set_is_configurable_and_unknown_fields_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let backend = Backend::start("app");
    let config = |fields: &str| {
        format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"app\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n\n[access_log]\npath = \"{}\"\nfields = {fields}\n",
            backend.addr,
            log.display()
        )
    };
    let gw = Gateway::start(&config("[\"status\", \"path\", \"worker\"]"));
    assert_eq!(get(gw.addr(), "a", "/x").status, 200);
    let found = wait_for_lines(&log, 1);
    let line = found.first().expect("a line");
    let keys: Vec<&String> = line.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["path", "status", "worker"]);

    let file = gateway_tests::gateway::write_config(&config("[\"status\", \"colour\"]"));
    let (status, _, stderr) = gateway_tests::gateway::run_cli(&[
        "check",
        "--config",
        file.path().to_str().expect("utf8"),
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("access_log.fields[1]: unknown field \"colour\""),
        "{stderr}"
    );
}
