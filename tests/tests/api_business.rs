//! Business features through the real gateway: usage metering with plan quotas that
//! survive a restart (exposed as JSON and CSV on the admin API), and webhooks whose
//! signatures the receiver verifies, retried when the receiver fails.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    client::{Response, request},
    gateway::Gateway,
    service::{Received, Reply, Service},
    sha256_hex,
};
use serde_json::{Value, json};

const TOKEN: &str = "admin-token-for-business-tests";
const SECRET: &str = "whsec-0123456789abcdef";

fn admin(admin: SocketAddr, method: &str, path: &str) -> Response {
    request(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        ),
    )
}

fn call(addr: SocketAddr, path: &str, key: &str) -> Response {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: api\r\nX-Api-Key: {key}\r\n\r\n"),
    )
}

/// Whether `received` is a delivery signed with `SECRET` within the last five minutes.
fn signed(received: &Received) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    received
        .header("x-gateway-signature")
        .is_some_and(|h| gateway::webhooks::verify(SECRET.as_bytes(), h, &received.body, now, 300))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn config(dir: &std::path::Path, backend: SocketAddr, hook: SocketAddr) -> String {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).expect("token");
    format!(
        r#"[gateway]
workers = 2
admin = "127.0.0.1:0"
admin_token_file = "{token}"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{backend}" }} ]

[auth.api_key]
header = "x-api-key"

[metering]
path = "{usage}"
flush_interval = "100ms"

[[plans]]
name = "trial"
requests_per_day = 3

[[consumers]]
name = "acme"
plan = "trial"
api_keys = ["sha256:{acme}"]

[[consumers]]
name = "zen"
api_keys = ["sha256:{zen}"]

[[webhooks]]
name = "billing"
url = "http://{hook}/events"
secret = "{SECRET}"
events = ["quota_exhausted"]

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "app"
auth = ["api_key"]

[[routes]]
name = "users"
path_prefix = "/users"
upstream = "app"
auth = ["api_key"]
"#,
        token = token.display(),
        usage = dir.join("usage.json").display(),
        acme = sha256_hex("acme-key"),
        zen = sha256_hex("zen-key"),
    )
}

#[test]
fn quotas_count_per_consumer_and_route_and_survive_a_restart() {
    let backend = Service::start(|_| Reply::json(200, &json!({"ok": true})));
    let hook = Service::start(|_| Reply::new(204, "text/plain", ""));
    let dir = tempfile::tempdir().expect("dir");
    let text = config(dir.path(), backend.addr, hook.addr);
    let mut gw = Gateway::start(&text);
    let addr = gw.addr();

    let mut left = Vec::new();
    for path in ["/orders/1", "/users/1", "/orders/2"] {
        let response = call(addr, path, "acme-key");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("x-quota-limit-day"), Some("3"));
        left.push(response.header("x-quota-remaining-day").map(str::to_owned));
    }
    assert_eq!(left, [Some("2".into()), Some("1".into()), Some("0".into())]);
    for _ in 0..2 {
        let refused = call(addr, "/orders/3", "acme-key");
        assert_eq!(refused.status, 429);
        assert_eq!(refused.json()["code"], "quota_exceeded");
        assert_eq!(refused.header("x-quota-remaining-day"), Some("0"));
        let retry: u64 = refused
            .header("retry-after")
            .and_then(|r| r.parse().ok())
            .expect("retry-after");
        assert!((1..=86_400).contains(&retry));
    }
    for _ in 0..5 {
        assert_eq!(
            call(addr, "/users/2", "zen-key").status,
            200,
            "no plan, no quota"
        );
    }
    assert_eq!(
        backend.received().len(),
        8,
        "refused requests never reach the upstream"
    );

    let admin_addr = gw.admin.expect("admin");
    let usage = admin(admin_addr, "GET", "/usage").json();
    let acme = usage["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .find(|c| c["consumer"] == "acme")
        .expect("acme")
        .clone();
    assert_eq!(
        (
            acme["day_requests"].as_u64(),
            acme["quota"]["day_left"].as_u64()
        ),
        (Some(3), Some(0))
    );
    assert_eq!(
        acme["routes"],
        json!([{"route": "orders", "day_requests": 2, "month_requests": 2}, {"route": "users", "day_requests": 1, "month_requests": 1}])
    );
    let csv = admin(admin_addr, "GET", "/usage.csv");
    assert_eq!(csv.header("content-type"), Some("text/csv"));
    let day = usage["day"].as_str().expect("day");
    let month = usage["month"].as_str().expect("month");
    let text_csv = csv.text();
    assert!(
        text_csv.starts_with("consumer,route,day,day_requests,month,month_requests\n"),
        "{text_csv}"
    );
    assert!(
        text_csv.contains(&format!("acme,orders,{day},2,{month},2\n")),
        "{text_csv}"
    );
    assert!(
        text_csv.contains(&format!("zen,users,{day},5,{month},5\n")),
        "{text_csv}"
    );

    wait_for("the quota webhook", || !hook.received().is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let deliveries = hook.received();
    assert_eq!(
        deliveries.len(),
        1,
        "reported once per period, not per refusal"
    );
    assert!(signed(&deliveries[0]), "{:?}", deliveries[0]);
    let event = deliveries[0].json();
    assert_eq!(event["type"], "quota_exhausted");
    assert_eq!(
        event["data"],
        json!({"consumer": "acme", "period": "day", "limit": 3})
    );

    gw.signal(libc::SIGTERM);
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "the gateway stops"
    );
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("usage.json")).expect("usage file"))
            .expect("json");
    assert_eq!(saved["version"], 1);

    let gw = Gateway::start(&text);
    let refused = call(gw.addr(), "/orders/4", "acme-key");
    assert_eq!(refused.status, 429, "the spent quota survives the restart");
    let usage = admin(gw.admin.expect("admin"), "GET", "/usage").json();
    let zen = usage["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .find(|c| c["consumer"] == "zen")
        .expect("zen")
        .clone();
    assert_eq!(zen["day_requests"], 5);
}

#[test]
fn webhooks_are_signed_filtered_and_retried_until_delivered() {
    let backend = Service::start(|_| Reply::json(200, &json!({})));
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    // Fails the first two attempts of every delivery it sees.
    let flaky = Service::start(move |_| {
        if counter.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::new(500, "text/plain", "try later")
        } else {
            Reply::new(200, "text/plain", "ok")
        }
    });
    let reloads = Service::start(|_| Reply::new(204, "text/plain", ""));
    let health = Service::start(|_| Reply::new(204, "text/plain", ""));
    // A port nothing listens on: its target fails the TCP health check.
    let health_addr = health.addr;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let gw = Gateway::start(&format!(
        r#"[gateway]
workers = 1
admin = "127.0.0.1:0"
admin_token_file = "{}"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{}" }} ]

[[upstreams]]
name = "dead"
targets = [ {{ addr = "{dead}" }} ]
health_check = {{ interval = "100ms", timeout = "100ms", unhealthy = 1 }}

[[routes]]
name = "all"
upstream = "app"

[[webhooks]]
name = "ops"
url = "http://{}/hooks?source=gw"
secret = "{SECRET}"
retry_backoff = "50ms"
max_attempts = 4
events = ["acl_change"]

[[webhooks]]
name = "changes"
url = "http://{}/reloads"
secret = "{SECRET}"
events = ["config_reload"]

[[webhooks]]
name = "health"
url = "http://{health_addr}/health"
secret = "{SECRET}"
events = ["upstream_health"]
"#,
        token.display(),
        backend.addr,
        flaky.addr,
        reloads.addr
    ));
    let admin_addr = gw.admin.expect("admin");
    assert_eq!(
        admin(
            admin_addr,
            "POST",
            "/acl/add?list=deny&cidr=192.0.2.0%2F24&ttl=1m"
        )
        .status,
        200
    );

    wait_for("three attempts", || flaky.received().len() >= 3);
    let received = flaky.received();
    assert!(received.iter().all(signed), "every attempt is signed");
    wait_for("the health event", || !health.received().is_empty());
    let down = health.received()[0].json();
    assert!(signed(&health.received()[0]));
    assert_eq!(
        down["data"],
        json!({"upstream": "dead", "target": dead.to_string(), "healthy": false})
    );
    let ids: Vec<_> = received
        .iter()
        .map(|r| r.header("x-gateway-delivery").map(str::to_owned))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one delivery id across retries: {ids:?}"
    );
    assert_eq!(
        (received[0].path.as_str(), received[0].query.as_deref()),
        ("/hooks", Some("source=gw"))
    );
    assert_eq!(received[0].header("x-gateway-event"), Some("acl_change"));
    let event = received[2].json();
    assert_eq!(event["type"], "acl_change");
    assert_eq!(event["data"]["action"], "add");
    assert_eq!(event["data"]["cidr"], "192.0.2.0/24");
    let mut forged = received[2].clone();
    forged.body = br#"{"type":"acl_change","data":{"cidr":"0.0.0.0/0"}}"#.to_vec();
    assert!(!signed(&forged), "a changed body fails verification");
    assert!(
        reloads.received().is_empty(),
        "the reload subscriber does not get ACL events"
    );

    let log = admin(admin_addr, "GET", "/webhooks").json();
    let outcomes: Vec<&str> = log["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| d["webhook"] == "ops")
        .filter_map(|d| d["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["delivered", "retrying", "retrying"], "{log}");
    assert_eq!(log["subscribers"][1]["events"], json!(["config_reload"]));
    assert!(!log.to_string().contains(SECRET), "secrets are not shown");

    assert_eq!(admin(admin_addr, "POST", "/reload").status, 200);
    wait_for("the reload event", || !reloads.received().is_empty());
    let reload = reloads.received()[0].clone();
    assert!(signed(&reload));
    assert_eq!(reload.json()["data"]["applied"], true);
}
