//! Target health with real backends that die and come back: active checks take a dead
//! target out of rotation (no client error after detection) and bring it back; passive
//! outlier detection ejects a target answering 503 after a few consecutive failures; the
//! admin API shows each target's state.

use std::time::{Duration, Instant};

use gateway_tests::{
    backend::Backend,
    client::{get, request},
    gateway::Gateway,
};

fn config(targets: &[std::net::SocketAddr], upstream_extra: &str) -> String {
    let targets = targets
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[gateway]\nworkers = 2\nadmin = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"app\"\ntargets = [ {targets} ]\n{upstream_extra}\n\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n"
    )
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn active_checks_take_a_dead_target_out_and_bring_it_back() {
    let steady = Backend::start("steady");
    let flaky = Backend::start("flaky");
    let flaky_addr = flaky.addr;
    let gw = Gateway::start(&config(
        &[steady.addr, flaky.addr],
        "health_check = { path = \"/status/200\", interval = \"100ms\", timeout = \"200ms\", healthy = 2, unhealthy = 2 }",
    ));
    // Both serve while healthy.
    let served: Vec<String> = (0..10)
        .map(|_| {
            get(gw.addr(), "a", "/x").json()["backend"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(served.iter().any(|b| b == "flaky") && served.iter().any(|b| b == "steady"));

    drop(flaky);
    gw.wait_for_log("target failed its health checks; out of rotation");
    for _ in 0..30 {
        let res = get(gw.addr(), "a", "/x");
        assert_eq!(
            res.status,
            200,
            "no client error after detection: {}",
            res.text()
        );
        assert_eq!(res.json()["backend"], "steady");
    }
    // The same address comes back: two good checks put it back in rotation.
    let revived = Backend::start_on("revived", flaky_addr).expect("rebind the flaky address");
    gw.wait_for_log("target healthy again");
    // (Pooled keep-alive connections may still reach the old process's threads.)
    wait_until("the revived target gets traffic", || {
        get(gw.addr(), "a", "/x").json()["backend"] != "steady"
    });
    drop(revived);
}

#[test]
fn consecutive_503s_eject_a_target_for_a_while() {
    let steady = Backend::start("steady");
    let failing = Backend::raw(
        "failing",
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
    );
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), "health-token").expect("token");
    let text = config(
        &[steady.addr, failing.addr],
        "outlier = { consecutive_failures = 3, base_ejection = \"1s\", max_ejection = \"10s\" }",
    )
    .replace(
        "admin = \"127.0.0.1:0\"",
        &format!(
            "admin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"",
            token.path().display()
        ),
    );
    let gw = Gateway::start(&text);
    let statuses: Vec<u16> = (0..40).map(|_| get(gw.addr(), "a", "/x").status).collect();
    let errors = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        (3..=4).contains(&errors),
        "three failures eject the target (one more may be in flight on the other worker): {statuses:?}"
    );
    assert!(statuses[20..].iter().all(|s| *s == 200), "{statuses:?}");
    gw.wait_for_log("target ejected after consecutive failures");
    let upstreams = request(
        gw.admin.expect("admin"),
        "GET /upstreams HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer health-token\r\n\r\n",
    )
    .json();
    let targets = upstreams["upstreams"][0]["targets"]
        .as_array()
        .expect("targets");
    assert_eq!(targets[0]["state"], "healthy");
    assert_eq!(targets[1]["state"], "ejected", "{upstreams}");

    // After the ejection it is tried again, fails three more times, and is ejected for
    // longer (the backoff doubles).
    std::thread::sleep(Duration::from_millis(1200));
    let again: usize = (0..40)
        .map(|_| get(gw.addr(), "a", "/x").status)
        .filter(|s| *s == 503)
        .count();
    assert!((3..=4).contains(&again), "{again}");
    assert!(
        gw.log()
            .matches("target ejected after consecutive failures")
            .count()
            >= 2
    );
    assert!(gw.log().contains("backoff=2s"), "{}", gw.log());
}
