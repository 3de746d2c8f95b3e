//! Process lifecycle and the CLI: config checking, refusal of bad configs, draining on
//! SIGTERM, and every shipped config loading.

use std::{io::Write, time::Duration};

use gateway_tests::{
    Backend, Gateway, client,
    gateway::{run_cli, workspace_root, write_config},
};

const BAD: &str = r#"[gateway]
workers = 1

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "users"
targets = [ { addr = "127.0.0.1:9001" } ]

[[routes]]
name = "a"
path_prefix = "/a"
upstream = "api"

[[routes]]
name = "b"
path = "no-slash"
upstream = "users"
"#;

#[test]
fn check_reports_every_problem_with_file_line_and_key() {
    let file = write_config(BAD);
    let path = file.path().to_str().expect("utf8 path");
    let (status, _, stderr) = run_cli(&["check", "--config", path]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{path}:15: routes[0].upstream: unknown upstream \"api\""
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{path}:19: routes[1].path:")),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

#[test]
fn run_refuses_a_bad_config() {
    let file = write_config(BAD);
    let (status, _, stderr) = run_cli(&["run", "--config", file.path().to_str().expect("utf8")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("unknown upstream \"api\""), "{stderr}");
}

#[test]
fn unknown_keys_and_bad_units_are_refused_with_their_line() {
    for (text, line, needle) in [
        (
            "[gateway]\nworkers = 1\nwrokers = 2\n",
            3,
            "unknown field `wrokers`",
        ),
        (
            "[limits]\nheader_read_timeout = \"ten seconds\"\n",
            2,
            "limits.header_read_timeout",
        ),
        (
            "[limits]\nmax_body_size = \"12 parsecs\"\n",
            2,
            "limits.max_body_size",
        ),
        (
            "[[listeners]]\nname = \"x\"\nbind = \"nowhere\"\n",
            3,
            "listeners[0].bind",
        ),
    ] {
        let file = write_config(text);
        let path = file.path().to_str().expect("utf8");
        let (status, _, stderr) = run_cli(&["check", "--config", path]);
        assert_eq!(status.code(), Some(1), "{text}");
        assert!(
            stderr.contains(&format!("{path}:{line}:")),
            "expected line {line} for {text:?}: {stderr}"
        );
        assert!(stderr.contains(needle), "expected {needle:?}: {stderr}");
    }
}

#[test]
fn every_shipped_config_passes_check() {
    let conf = workspace_root().join("conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(&conf).expect("conf/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (status, stdout, stderr) =
                run_cli(&["check", "--config", path.to_str().expect("utf8")]);
            assert!(status.success(), "{}: {stderr}", path.display());
            assert!(stdout.contains(": ok"), "{stdout}");
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the demo and example configs, found {checked}"
    );
}

#[test]
fn version_and_help() {
    let (status, stdout, _) = run_cli(&["--version"]);
    assert!(status.success());
    assert!(stdout.starts_with("gateway "), "{stdout}");
    let (status, stdout, _) = run_cli(&["--help"]);
    assert!(status.success());
    for word in ["run", "check"] {
        assert!(stdout.contains(word), "{stdout}");
    }
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let backend = Backend::start("slow");
    let mut gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\ndrain_timeout = \"5s\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        backend.addr
    ));
    let addr = gw.addr();
    // One idle keep-alive connection, and three requests in flight.
    let mut idle = client::connect(addr);
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    assert_eq!(client::read_response(&mut idle, false).status, 200);
    let in_flight: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || client::get(addr, "a", "/delay/1000")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    gw.signal(libc::SIGTERM);
    for handle in in_flight {
        let res = handle.join().expect("client thread");
        assert_eq!(
            res.status, 200,
            "an in-flight request was dropped by the drain"
        );
        assert_eq!(
            res.header("connection"),
            Some("close"),
            "a draining gateway closes after the response"
        );
    }
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("gateway exits after draining");
    assert_eq!(status.code(), Some(0), "{}", gw.log());
    // The idle connection was closed by the drain.
    let mut rest = Vec::new();
    idle.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert_eq!(
        std::io::Read::read_to_end(&mut idle, &mut rest).ok(),
        Some(0)
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn sighup_reloads_routes_keeps_open_connections_and_refuses_a_bad_file() {
    let old = Backend::start("old");
    let new = Backend::start("new");
    let config = |route_to: &Backend, extra: &str| {
        format!(
            "[gateway]\nworkers = 2\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n{extra}",
            route_to.addr
        )
    };
    let mut gw = Gateway::start(&config(&old, ""));
    let addr = gw.addr();
    let config_path = gw.config_path().to_owned();
    let mut kept = client::connect(addr);
    kept.write_all(b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    assert_eq!(
        client::read_response(&mut kept, false).json()["backend"],
        "old"
    );

    // A good new file: new requests, on old and new connections, go to the new backend.
    std::fs::write(&config_path, config(&new, "")).expect("rewrite config");
    assert!(gw.reload());
    kept.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send on the kept connection");
    assert_eq!(
        client::read_response(&mut kept, false).json()["backend"],
        "new",
        "the open connection survived and uses the new config"
    );
    for _ in 0..4 {
        assert_eq!(client::get(addr, "a", "/").json()["backend"], "new");
    }

    // A broken file: refused with its line, the running config keeps serving.
    std::fs::write(
        &config_path,
        config(&old, "[[routes]]\nname = \"bad\"\nupstream = \"missing\"\n"),
    )
    .expect("rewrite config");
    assert!(!gw.reload(), "the broken file is refused");
    assert!(
        gw.log()
            .contains("routes[1].upstream: unknown upstream \"missing\""),
        "{}",
        gw.log()
    );
    assert_eq!(client::get(addr, "a", "/").json()["backend"], "new");

    gw.signal(libc::SIGTERM);
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
}
