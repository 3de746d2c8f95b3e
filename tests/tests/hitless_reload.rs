//! Hitless reload and upgrade under load: clients fire requests continuously on many
//! keep-alive connections (and some new connections) while the config is reloaded 20
//! times, half through the admin API and half by SIGHUP, alternating between two
//! upstream sets; and while a new gateway process takes the listening sockets over and
//! the old one drains. Not one request may fail and not one connection may break.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use gateway_tests::{
    backend::Backend,
    client::{connect, read_response, request},
    gateway::Gateway,
};

const TOKEN: &str = "reload-under-load";

fn config(token: &std::path::Path, backend: &Backend, generation: usize) -> String {
    format!(
        r#"
[gateway]
workers = 2
admin = "127.0.0.1:0"
admin_token_file = "{}"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
targets = [ {{ addr = "{}" }} ]

[[routes]]
name = "api-{generation}"
path_prefix = "/"
upstream = "app"
"#,
        token.display(),
        backend.addr,
    )
}

/// Requests on one connection until told to stop; counts successes and failures. A
/// response saying `connection: close` is honoured like any HTTP client would.
fn client(
    addr: SocketAddr,
    keep_alive: bool,
    stop: &AtomicBool,
    ok: &AtomicU64,
    failed: &AtomicU64,
) {
    let mut stream = connect(addr);
    let mut reconnect = false;
    while !stop.load(Ordering::Relaxed) {
        if !keep_alive || reconnect {
            stream = connect(addr);
        }
        let sent = write!(stream, "GET /item HTTP/1.1\r\nHost: a\r\n\r\n");
        let response = sent.ok().map(|()| read_response(&mut stream, false));
        reconnect = response
            .as_ref()
            .and_then(|r| r.header("connection"))
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if response.is_some_and(|r| r.status == 200) {
            ok.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
            reconnect = true;
        }
    }
}

type Load = (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<std::thread::JoinHandle<()>>,
);

/// Starts `threads` clients against `addr`, every fifth on new connections.
fn load(addr: SocketAddr, threads: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let handles = (0..threads)
        .map(|i| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || client(addr, i % 5 != 0, &stop, &ok, &failed))
        })
        .collect();
    (stop, ok, failed, handles)
}

#[test]
fn a_binary_upgrade_under_load_loses_nothing() {
    let backend = Backend::start("app");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("upgrade.sock");
    let config = format!(
        "[gateway]\nworkers = 2\nupgrade_socket = \"{}\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"app\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
        socket.display(),
        backend.addr
    );
    let mut old = Gateway::start(&config);
    let (stop, ok, failed, clients) = load(old.addr(), 10);
    std::thread::sleep(Duration::from_millis(300));

    let new = Gateway::start_with(&config, &["--takeover"]);
    assert_eq!(new.addrs, old.addrs, "the same sockets, the same addresses");
    let status = old.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process drained and exited: {}",
        old.log()
    );
    assert!(
        old.log()
            .contains("upgrade: the new process took over the listeners")
    );
    let served_before = backend.requests();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("binary upgrade under load: {ok} requests, {failed} failed");
    assert_eq!(failed, 0, "{ok} requests succeeded, {failed} failed");
    assert!(backend.requests() > served_before, "the new process serves");
    assert!(new.log().contains("upgrade: serving"), "{}", new.log());

    // The new process offers the same hand-off for the next upgrade.
    let newer = Gateway::start_with(&config, &["--takeover"]);
    assert_eq!(newer.addrs, new.addrs);
    let mut stream = connect(newer.addr());
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(stream, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n").expect("send");
    let mut first = [0u8; 12];
    let read = std::io::Read::read(&mut stream, &mut first);
    assert!(
        matches!(read, Ok(12)) && first.starts_with(b"HTTP/1.1 200"),
        "{read:?} {:?}\n--- previous process:\n{}\n--- new process:\n{}",
        String::from_utf8_lossy(&first),
        new.log(),
        newer.log()
    );
}

#[test]
fn twenty_reloads_under_load_lose_nothing() {
    let first = Backend::start("one");
    let second = Backend::start("two");
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), TOKEN).expect("write token");
    let gw = Gateway::start(&config(token.path(), &first, 0));
    let admin = gw.admin.expect("admin API");

    let (stop, ok, failed, clients) = load(gw.addr(), 10);

    for generation in 1..=20 {
        let backend = if generation % 2 == 0 { &first } else { &second };
        std::fs::write(gw.config_path(), config(token.path(), backend, generation))
            .expect("rewrite config");
        if generation % 2 == 0 {
            assert!(gw.reload(), "reload {generation} by SIGHUP");
        } else {
            let res = request(
                admin,
                &format!(
                    "POST /reload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
                ),
            );
            assert_eq!(
                res.status,
                200,
                "reload {generation} by the API: {}",
                res.text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("reload under load: {ok} requests, {failed} failed");
    assert_eq!(failed, 0, "{ok} requests succeeded, {failed} failed");
    assert!(ok > 500, "the load was real: {ok} requests");
    assert!(
        first.requests() > 0 && second.requests() > 0,
        "both configs served"
    );
}
