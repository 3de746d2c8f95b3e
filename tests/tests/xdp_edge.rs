//! The edge policy in the driver over a gateway's life: live flips of both lists for
//! both families, TTL expiry, a SYN flood from one source, a restart and a binary upgrade
//! that never let a denied source through, and the pinned state read and removed by
//! `gateway xdp`. A client namespace on a veth pair; the gateway on the outer side with
//! the program attached in driver mode. Root only.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use gateway_tests::{
    Backend, Gateway,
    gateway::run_cli,
    netns::{VethNamespace, xdp_object_or_skip},
};
use serde_json::Value;

/// The admin token every test here uses, in a file the CLI reads.
fn token_file() -> tempfile::NamedTempFile {
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), "xdp-edge").expect("token");
    token
}

/// A gateway config: listeners on the outer veth addresses (`v4_port`/`v6_port`, 0 for
/// any), admin API, the program on `veth.outer`, and `xdp_extra` lines in `[xdp]`.
fn config(
    veth: &VethNamespace,
    backend: &Backend,
    token: &tempfile::NamedTempFile,
    ports: (u16, u16),
    gateway_extra: &str,
    xdp_extra: &str,
) -> String {
    format!(
        "[gateway]\nworkers = 1\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n{gateway_extra}\n\n[[listeners]]\nname = \"v4\"\nbind = \"10.213.0.1:{}\"\n\n[[listeners]]\nname = \"v6\"\nbind = \"[fd00:213::1]:{}\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n\n[xdp]\ninterface = \"{}\"\nmode = \"driver\"\n{xdp_extra}\n",
        token.path().display(),
        ports.0,
        ports.1,
        backend.addr,
        veth.outer
    )
}

/// Runs `gateway acl …` against `gw`; returns stdout (the test fails on an error).
fn acl(gw: &Gateway, token: &tempfile::NamedTempFile, args: &[&str]) -> String {
    let admin = format!("http://{}", gw.admin.expect("admin API"));
    let token = token.path().to_str().expect("utf8");
    let mut all = vec!["acl", "--admin", &admin, "--token-file", token];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = run_cli(&all);
    assert!(status.success(), "gateway {all:?}: {stdout}{stderr}");
    stdout
}

/// `gateway xdp show` for the outer interface, parsed.
fn xdp_show(veth: &VethNamespace) -> Value {
    let (status, stdout, stderr) = run_cli(&["xdp", "show", "--interface", &veth.outer]);
    assert!(status.success(), "gateway xdp show: {stdout}{stderr}");
    serde_json::from_str(&stdout).expect("JSON")
}

/// Whether the namespace client gets a 200 from `host:port`.
fn served(veth: &VethNamespace, host: &str, port: u16) -> bool {
    veth.http_get_from_inside(host, port, 3)
        .is_some_and(|l| l.starts_with("HTTP/1.1 200"))
}

/// The hits of `cidr` in a list of `gateway acl list` or `gateway xdp show`.
fn hits_of(list: &Value, cidr: &str) -> u64 {
    list.as_array()
        .and_then(|entries| entries.iter().find(|e| e["cidr"] == cidr))
        .and_then(|e| e["hits"].as_u64())
        .unwrap_or_else(|| panic!("{cidr} not listed: {list}"))
}

/// `gateway acl` flips the driver's verdict live, both ways, for IPv4 and IPv6 and for
/// the allow list; a TTL entry expires by itself.
#[test]
fn live_flips_of_both_lists_for_both_families() {
    if xdp_object_or_skip("live_flips_of_both_lists_for_both_families").is_none() {
        return;
    }
    let backend = Backend::start("behind-xdp");
    let veth = VethNamespace::create(&format!("{}", (std::process::id() + 17) % 100_000));
    let token = token_file();
    let gw = Gateway::start(&config(&veth, &backend, &token, (0, 0), "", ""));
    let (v4, v6) = (gw.addrs[0].port(), gw.addrs[1].port());
    let both = |expected: (bool, bool), why: &str| {
        assert_eq!(
            (
                served(&veth, "10.213.0.1", v4),
                served(&veth, "fd00:213::1", v6)
            ),
            expected,
            "{why} (IPv4 served, IPv6 served)\n{}",
            gw.log()
        );
    };
    both((true, true), "no lists");

    acl(&gw, &token, &["deny", "add", "fd00:213::2"]);
    both((true, false), "IPv6 source denied");
    acl(&gw, &token, &["deny", "del", "fd00:213::2"]);
    both((true, true), "IPv6 deny entry removed");

    // Allow mode: a list that names someone else shuts both families out.
    acl(&gw, &token, &["allow", "add", "10.213.0.5"]);
    both((false, false), "allow list without the client");
    acl(&gw, &token, &["allow", "add", "10.213.0.2"]);
    acl(&gw, &token, &["allow", "add", "fd00:213::/64"]);
    both((true, true), "client allowed in both families");
    // Deny wins inside the allow list.
    acl(&gw, &token, &["deny", "add", "fd00:213::2"]);
    both((true, false), "denied inside an allowed prefix");
    let listing: Value = serde_json::from_str(&acl(&gw, &token, &["list"])).expect("JSON");
    assert!(
        hits_of(&listing["allow"], "10.213.0.2/32") >= 1,
        "{listing}"
    );
    assert!(
        hits_of(&listing["deny"], "fd00:213::2/128") >= 1,
        "{listing}"
    );
    for args in [
        ["deny", "del", "fd00:213::2"],
        ["allow", "del", "10.213.0.5"],
        ["allow", "del", "10.213.0.2"],
        ["allow", "del", "fd00:213::/64"],
    ] {
        acl(&gw, &token, &args);
    }
    both((true, true), "all live entries removed");

    // A TTL entry expires by itself (the main loop checks every second).
    // (Longer than a refused check takes: its retransmitted SYNs must not outlive it.)
    let added = std::time::Instant::now();
    acl(&gw, &token, &["deny", "add", "10.213.0.2", "--ttl", "5s"]);
    both((false, true), "IPv4 source denied for 5 s");
    std::thread::sleep(Duration::from_secs(7).saturating_sub(added.elapsed()));
    both((true, true), "the TTL entry expired");
}

/// A SYN flood from one source, sent as fast as a raw socket can, is cut down to its
/// SYN budget in the driver while another client keeps being served.
#[test]
fn a_syn_flood_from_one_source_leaves_another_client_served() {
    if xdp_object_or_skip("a_syn_flood_from_one_source_leaves_another_client_served").is_none() {
        return;
    }
    let backend = Backend::start("behind-xdp");
    let veth = VethNamespace::create(&format!("{}", (std::process::id() + 19) % 100_000));
    let token = token_file();
    let gw = Gateway::start(&config(
        &veth,
        &backend,
        &token,
        (0, 0),
        "",
        "syn_guard = { rate = 20, burst = 40 }",
    ));
    let port = gw.addrs[0].port();
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = veth.flood_syns(
        Ipv4Addr::new(10, 213, 0, 77),
        SocketAddrV4::new(Ipv4Addr::new(10, 213, 0, 1), port),
        None,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut answered = 0;
    for _ in 0..10 {
        if served(&veth, "10.213.0.1", port) {
            answered += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flooder.join().expect("flooder");
    let state = xdp_show(&veth);
    let dropped = state["verdicts"]["syn_budget_exceeded"]["packets"]
        .as_u64()
        .expect("counter");
    eprintln!(
        "SYN flood: {sent} SYNs sent, {dropped} dropped in the driver, {answered}/10 legitimate requests served"
    );
    assert_eq!(answered, 10, "the other client was starved: {}", gw.log());
    assert!(
        sent > 10_000,
        "the flood was too slow to mean anything: {sent}"
    );
    assert!(
        dropped + 1_000 > sent,
        "all but the flood source's budget is dropped: {dropped} of {sent}"
    );
}

/// With `on_exit = "keep"` a stopped gateway leaves the program and its lists in the
/// driver (the denied client stays dropped and counted while nothing runs); the next
/// start swaps its program into the pinned link, restores the live entry with its TTL
/// and carries its hit counter on; `gateway xdp detach` removes everything.
#[test]
fn a_restart_never_lets_a_denied_source_through() {
    if xdp_object_or_skip("a_restart_never_lets_a_denied_source_through").is_none() {
        return;
    }
    let backend = Backend::start("behind-xdp");
    let veth = VethNamespace::create(&format!("{}", (std::process::id() + 23) % 100_000));
    let token = token_file();
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let config = config(
        &veth,
        &backend,
        &token,
        (port, port),
        "",
        "on_exit = \"keep\"\ndeny = [\"fd00:213::2/128\"]",
    );
    let mut first = Gateway::start(&config);
    assert!(served(&veth, "10.213.0.1", port), "{}", first.log());
    acl(
        &first,
        &token,
        &["deny", "add", "10.213.0.2", "--ttl", "10m"],
    );
    assert!(!served(&veth, "10.213.0.1", port));
    first.signal(libc::SIGTERM);
    assert!(
        first
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "{}",
        first.log()
    );
    assert!(first.log().contains("stays attached"), "{}", first.log());

    // Down: the driver still drops the client and counts it.
    let details = veth.outer_link_details();
    assert!(details.contains("prog/xdp"), "detached on exit: {details}");
    let before = hits_of(&xdp_show(&veth)["deny"], "10.213.0.2/32");
    assert!(!served(&veth, "10.213.0.1", port));
    let down = xdp_show(&veth);
    assert_eq!(down["attached"], true, "{down}");
    assert!(
        hits_of(&down["deny"], "10.213.0.2/32") > before,
        "dropped while the gateway was down: {down}"
    );
    let entry = down["deny"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["cidr"] == "10.213.0.2/32"))
        .expect("entry");
    assert_eq!(entry["source"], "live", "{down}");

    // Up again: same link, same maps, the live entry back with what is left of its TTL.
    let second = Gateway::start(&config);
    assert!(
        second.log().contains("swapped into the pinned link"),
        "{}",
        second.log()
    );
    assert!(second.log().contains("restored"), "{}", second.log());
    assert!(!served(&veth, "10.213.0.1", port), "{}", second.log());
    assert!(!served(&veth, "fd00:213::1", port), "config entry kept");
    let listing: Value = serde_json::from_str(&acl(&second, &token, &["list"])).expect("JSON");
    let restored = listing["deny"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["cidr"] == "10.213.0.2/32"))
        .expect("restored entry")
        .clone();
    assert_eq!(restored["source"], "live", "{listing}");
    assert!(
        restored["expires_in_seconds"]
            .as_u64()
            .is_some_and(|s| (500..=600).contains(&s)),
        "{listing}"
    );
    assert!(
        restored["hits"].as_u64().unwrap_or(0) > before,
        "counter carried on: {listing}"
    );
    acl(&second, &token, &["deny", "del", "10.213.0.2"]);
    assert!(served(&veth, "10.213.0.1", port), "{}", second.log());
    drop(second);

    let (status, stdout, stderr) = run_cli(&["xdp", "detach", "--interface", &veth.outer]);
    assert!(status.success(), "{stdout}{stderr}");
    let details = veth.outer_link_details();
    assert!(!details.contains("prog/xdp"), "still attached: {details}");
    assert!(!veth.pin_folder().exists(), "pins left behind");
}

/// A binary upgrade with XDP attached: the new process swaps its program into the pinned
/// link and takes the live entries over; the old one leaves the program to it.
#[test]
fn a_binary_upgrade_keeps_the_program_and_the_live_entries() {
    if xdp_object_or_skip("a_binary_upgrade_keeps_the_program_and_the_live_entries").is_none() {
        return;
    }
    let backend = Backend::start("behind-xdp");
    let veth = VethNamespace::create(&format!("{}", (std::process::id() + 29) % 100_000));
    let token = token_file();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(
        &veth,
        &backend,
        &token,
        (0, 0),
        &format!(
            "upgrade_socket = \"{}\"",
            dir.path().join("upgrade.sock").display()
        ),
        "",
    );
    let mut old = Gateway::start(&config);
    let (v4, v6) = (old.addrs[0].port(), old.addrs[1].port());
    acl(&old, &token, &["deny", "add", "fd00:213::2"]);
    assert!(!served(&veth, "fd00:213::1", v6));

    let new = Gateway::start_with(&config, &["--takeover"]);
    assert_eq!(new.addrs, old.addrs);
    assert!(
        old.wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success()),
        "{}",
        old.log()
    );
    assert!(
        old.log().contains("left to the upgraded gateway"),
        "{}",
        old.log()
    );
    assert!(
        new.log().contains("swapped into the pinned link"),
        "{}",
        new.log()
    );
    let details = veth.outer_link_details();
    assert!(
        details.contains("prog/xdp"),
        "detached by the upgrade: {details}"
    );
    assert!(served(&veth, "10.213.0.1", v4), "{}", new.log());
    assert!(
        !served(&veth, "fd00:213::1", v6),
        "the live entry came along"
    );
    acl(&new, &token, &["deny", "del", "fd00:213::2"]);
    assert!(served(&veth, "fd00:213::1", v6), "{}", new.log());
}
