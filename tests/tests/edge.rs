//! The edge policy enforced in userspace at accept (no XDP attached): same semantics as
//! the XDP program, checked from different loopback source addresses.

use std::{
    io::{Read, Write},
    net::IpAddr,
};

use gateway_tests::{Backend, Gateway, client};

fn gateway(backend: &Backend, xdp: &str) -> Gateway {
    Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n\n[xdp]\n{xdp}\n",
        backend.addr
    ))
}

/// Sends a GET from `source`; `Some(status)` when served, `None` when the gateway closed
/// the connection without answering.
fn status_from(source: &str, gw: &Gateway) -> Option<u16> {
    status_of_path_from(source, gw, "/")
}

/// Like [`status_from`], for `path`.
fn status_of_path_from(source: &str, gw: &Gateway, path: &str) -> Option<u16> {
    let source: IpAddr = source.parse().expect("source ip");
    let mut stream = client::connect_from(source, gw.addr())
        .expect("TCP connect (the kernel accepts before the policy runs)");
    if stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .is_err()
    {
        return None;
    }
    let mut first = [0u8; 12];
    match stream.read(&mut first) {
        Ok(n) if n >= 12 => std::str::from_utf8(&first[9..12]).ok()?.parse().ok(),
        _ => None,
    }
}

/// The actions of the audit trail, oldest first, and the whole document.
fn audit_actions(gw: &Gateway, token: &str) -> (Vec<String>, serde_json::Value) {
    let audit = client::request(
        gw.admin.expect("admin API"),
        &format!("GET /audit HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n"),
    )
    .json();
    let actions = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect();
    (actions, audit)
}

#[test]
fn deny_list_refuses_listed_sources_only() {
    let backend = Backend::start("b");
    let gw = gateway(&backend, "deny = [\"127.0.0.2/32\", \"127.0.9.0/24\"]");
    assert!(
        gw.log().contains("edge policy enforced in userspace"),
        "{}",
        gw.log()
    );
    assert_eq!(status_from("127.0.0.1", &gw), Some(200));
    assert_eq!(
        status_from("127.0.0.2", &gw),
        None,
        "a denied source was served"
    );
    assert_eq!(
        status_from("127.0.9.77", &gw),
        None,
        "a source inside a denied prefix was served"
    );
    assert_eq!(status_from("127.0.0.3", &gw), Some(200));
    assert_eq!(backend.requests(), 2);
}

#[test]
fn allow_list_admits_only_listed_sources_and_deny_wins() {
    let backend = Backend::start("b");
    let gw = gateway(
        &backend,
        "allow = [\"127.0.0.0/29\"]\ndeny = [\"127.0.0.5/32\"]",
    );
    assert_eq!(status_from("127.0.0.3", &gw), Some(200));
    assert_eq!(
        status_from("127.0.0.5", &gw),
        None,
        "deny must win over allow"
    );
    assert_eq!(
        status_from("127.0.0.9", &gw),
        None,
        "a source outside the allow list was served"
    );
}

#[test]
fn syn_guard_limits_new_connections_per_source() {
    let backend = Backend::start("b");
    let gw = gateway(&backend, "[xdp.syn_guard]\nrate = 1\nburst = 3");
    let served: Vec<Option<u16>> = (0..5).map(|_| status_from("127.0.0.6", &gw)).collect();
    assert_eq!(
        served[..3],
        [Some(200); 3],
        "the burst must be served: {served:?}"
    );
    assert!(
        served[3..].iter().all(Option::is_none),
        "past the burst, connections must be refused: {served:?}"
    );
    assert_eq!(
        status_from("127.0.0.7", &gw),
        Some(200),
        "another source keeps its own budget"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        status_from("127.0.0.6", &gw),
        Some(200),
        "the bucket refills at the rate"
    );
}

#[test]
fn a_reload_can_add_a_deny_list_enforced_at_accept() {
    let backend = Backend::start("b");
    let text = |xdp: &str| {
        format!(
            "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n{xdp}",
            backend.addr
        )
    };
    let gw = Gateway::start(&text(""));
    assert_eq!(status_from("127.0.0.12", &gw), Some(200));
    std::fs::write(
        gw.config_path(),
        text("\n[xdp]\ndeny = [\"127.0.0.12/32\"]\n"),
    )
    .expect("rewrite config");
    assert!(gw.reload(), "{}", gw.log());
    assert_eq!(
        status_from("127.0.0.12", &gw),
        None,
        "the reloaded deny list must apply"
    );
    assert_eq!(status_from("127.0.0.13", &gw), Some(200));
}

/// Live ACL control without XDP: `gateway acl add` refuses a source at accept at once,
/// a TTL removes it again, `remove` works, a reload keeps live entries, and every change
/// is in the audit trail.
#[test]
fn live_acl_entries_apply_at_once_expire_and_survive_reloads() {
    let backend = Backend::start("b");
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), "acl-token").expect("token");
    let text = format!(
        "[gateway]\nworkers = 2\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n\n[xdp]\ndeny = [\"127.0.9.0/24\"]\n",
        token.path().display(),
        backend.addr
    );
    let gw = Gateway::start(&text);
    let admin = format!("http://{}", gw.admin.expect("admin API"));
    let token_path = token.path().to_str().expect("utf8").to_owned();
    let acl = |args: &[&str]| {
        let mut all = vec!["acl", "--admin", &admin, "--token-file", &token_path];
        all.extend_from_slice(args);
        let (status, stdout, stderr) = gateway_tests::gateway::run_cli(&all);
        (status.success(), format!("{stdout}{stderr}"))
    };
    assert_eq!(status_from("127.0.0.13", &gw), Some(200));

    let (ok, out) = acl(&["deny", "add", "127.0.0.13", "--ttl", "2s"]);
    assert!(ok, "{out}");
    for _ in 0..4 {
        assert_eq!(
            status_from("127.0.0.13", &gw),
            None,
            "refused on every worker"
        );
    }
    assert_eq!(status_from("127.0.0.14", &gw), Some(200));
    let (ok, out) = acl(&["deny", "add", "127.0.0.0/30"]);
    assert!(ok, "{out}");
    let (ok, listing) = acl(&["list"]);
    assert!(ok);
    let listing: serde_json::Value = serde_json::from_str(&listing).expect("JSON");
    let deny = listing["deny"].as_array().expect("deny list");
    assert_eq!(deny.len(), 3, "{listing}");
    assert_eq!(deny[0]["source"], "config");
    assert!(
        deny[1]["expires_in_seconds"]
            .as_u64()
            .is_some_and(|s| s <= 2)
    );
    assert_eq!(deny[2]["expires_in_seconds"], serde_json::Value::Null);
    assert_eq!(listing["enforcement"], "userspace");

    // A reload keeps live entries.
    assert!(gw.reload());
    assert_eq!(
        status_from("127.0.0.2", &gw),
        None,
        "127.0.0.0/30 is still denied"
    );

    // The TTL entry expires by itself; the other is removed by hand.
    std::thread::sleep(std::time::Duration::from_millis(3200));
    assert_eq!(status_from("127.0.0.13", &gw), Some(200), "expired");
    let (ok, out) = acl(&["deny", "del", "127.0.0.0/30"]);
    assert!(ok, "{out}");
    assert_eq!(status_from("127.0.0.2", &gw), Some(200));
    let (ok, out) = acl(&["deny", "del", "127.0.9.0/24"]);
    assert!(!ok && out.contains("not a live entry"), "{out}");
    let (ok, out) = acl(&["deny", "add", "127.0.0.1/8"]);
    assert!(!ok && out.contains("host bits"), "{out}");

    let (actions, audit) = audit_actions(&gw, "acl-token");
    assert_eq!(
        actions,
        ["acl_add", "acl_add", "reload", "acl_expire", "acl_remove"],
        "{audit}"
    );
}

/// L7-to-edge feedback without XDP: a source that collects `threshold` rejected
/// requests (401 here) is banned at accept for `duration`, other sources are not, and
/// the ban lifts by itself; it is logged and audited.
#[test]
fn repeated_rejections_ban_the_source_for_a_while() {
    let backend = Backend::start("b");
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), "ban-token").expect("token");
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"private\"\npath_prefix = \"/private\"\nupstream = \"u\"\nauth = [\"api_key\"]\n\n[[routes]]\nname = \"public\"\nupstream = \"u\"\n\n[xdp]\nban = {{ threshold = 5, window = \"10s\", duration = \"2s\" }}\n",
        token.path().display(),
        backend.addr
    ));
    for _ in 0..5 {
        assert_eq!(
            status_of_path_from("127.0.0.21", &gw, "/private/x"),
            Some(401)
        );
    }
    // The next rejection crosses the threshold: this connection is answered, then the
    // source is refused at accept.
    assert_eq!(
        status_of_path_from("127.0.0.21", &gw, "/private/x"),
        Some(401)
    );
    gw.wait_for_log("source banned at the edge");
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(status_of_path_from("127.0.0.21", &gw, "/"), None, "banned");
    assert_eq!(
        status_of_path_from("127.0.0.22", &gw, "/"),
        Some(200),
        "others are not"
    );
    std::thread::sleep(std::time::Duration::from_millis(3200));
    assert_eq!(
        status_of_path_from("127.0.0.21", &gw, "/"),
        Some(200),
        "the ban lifted by itself"
    );
    let (actions, audit) = audit_actions(&gw, "ban-token");
    assert_eq!(actions, ["ban", "acl_expire"], "{audit}");
}
