//! The dashboard and the developer portal in a real browser: headless Chromium loads
//! each page from the admin listener after some traffic (and while more flows); the
//! dashboard's own script must have drawn charts with non-zero data and filled the route
//! table, and the portal must list every route and the operations of a route's OpenAPI
//! document. Screenshots are kept under `target/test-artifacts/`.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use gateway_tests::{
    backend::Backend,
    client::get,
    gateway::{Gateway, workspace_root},
};

const TOKEN: &str = "dashboard-token";

fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("GATEWAY_REQUIRE_TOOLS").is_none(),
            "chromium is required under `cargo xtask test`"
        );
        eprintln!("\n*** SKIPPED: chromium (Debian chromium) is not installed ***\n");
    }
    found
}

/// Runs headless Chromium on `url` for a few seconds of page time; returns the DOM
/// after its scripts ran, and saves a screenshot as `artifact`.
fn browse(browser: &PathBuf, url: &str, artifact: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let common = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=6000",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let dir = workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let mut shot = Command::new(browser);
    common(&mut shot);
    let status = shot
        .arg(format!("--screenshot={}", dir.join(artifact).display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut dump = Command::new(browser);
    common(&mut dump);
    let out = dump
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn attribute<'a>(dom: &'a str, element_id: &str, name: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{element_id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let value = tag.split(&format!("{name}=\"")).nth(1)?;
    value.split('"').next()
}

#[test]
fn the_dashboard_draws_live_charts_and_the_portal_lists_every_route() {
    let Some(browser) = chromium() else {
        return;
    };
    let backend = Backend::start("app");
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("admin.token");
    std::fs::write(&token, TOKEN).expect("token");
    let openapi = dir.path().join("orders.json");
    std::fs::write(
        &openapi,
        r#"{"openapi":"3.0.3","info":{"title":"Orders API","version":"1"},
            "paths":{"/orders":{"get":{"summary":"List orders"},"post":{"summary":"Place an order"}},
                     "/orders/{id}":{"get":{"summary":"One order"}}}}"#,
    )
    .expect("openapi doc");
    let gw = Gateway::start(&format!(
        r#"
[gateway]
admin = "127.0.0.1:0"
admin_token_file = "{token}"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{backend}" }} ]

[[routes]]
name = "orders"
path_prefix = "/orders"
methods = ["GET", "POST"]
upstream = "app"
rate_limit = {{ rate = "1000/s", key = "client_ip" }}
openapi = "{openapi}"

[[routes]]
name = "catalog"
path_prefix = "/catalog"
upstream = "app"
"#,
        token = token.display(),
        backend = backend.addr,
        openapi = openapi.display(),
    ));
    let admin = gw.admin.expect("admin API");
    for _ in 0..50 {
        assert_eq!(get(gw.addr(), "a", "/orders/1").status, 200);
    }
    // Traffic keeps flowing while the page watches.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (stop.clone(), gw.addr());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                get(addr, "a", "/catalog/x");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let dom = browse(
        &browser,
        &format!("http://{admin}/dashboard#token={TOKEN}"),
        "dashboard.png",
    );
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    let scrapes: u32 = attribute(&dom, "rps-chart", "data-points")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        scrapes >= 2,
        "the dashboard refreshed: {scrapes} points\n{dom}"
    );
    for chart in ["rps-chart", "latency-chart"] {
        assert_eq!(
            attribute(&dom, chart, "data-nonzero"),
            Some("true"),
            "{chart} drew non-zero data"
        );
    }
    assert!(dom.contains("data-route=\"orders\""), "route table filled");
    assert!(dom.contains(&backend.addr.to_string()), "targets listed");

    let portal = browse(&browser, &format!("http://{admin}/portal"), "portal.png");
    for route in ["orders", "catalog"] {
        assert!(
            portal.contains(&format!("data-route=\"{route}\"")),
            "{route} listed"
        );
    }
    for text in [
        "List orders",
        "Place an order",
        "/orders/{id}",
        "1000/s",
        "GET, POST",
    ] {
        assert!(portal.contains(text), "portal shows {text:?}");
    }
    assert!(!portal.contains(TOKEN));
}
