//! TLS termination: SNI selection (exact, wildcard, default), TLS 1.3 and 1.2, ALPN,
//! resumption, certificate checks at config time, and hostile handshakes.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use gateway_tests::{
    Backend, Gateway,
    backend::body_byte,
    client,
    gateway::{run_cli, write_config},
    tls::{TestPki, https_get, https_request, tls_client},
};

/// DNS names in a DER certificate's subjectAltName.
fn names_of(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("peer certificate parses");
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn tls_gateway(pki: &TestPki, backend: &Backend, extra_tls: &str) -> Gateway {
    let (default_cert, default_key) = pki.issue("default", &["default.test"]);
    let (api_cert, api_key) = pki.issue("api", &["api.test", "api2.test"]);
    let (wild_cert, wild_key) = pki.issue("wild", &["*.wild.test"]);
    Gateway::start(&format!(
        r#"
[gateway]
workers = 1

[[listeners]]
name = "https"
bind = "127.0.0.1:0"
[listeners.tls]
handshake_timeout = "500ms"
certificates = [
  {{ cert = "{}", key = "{}" }},
  {{ cert = "{}", key = "{}" }},
  {{ cert = "{}", key = "{}" }},
]
{extra_tls}

[[upstreams]]
name = "u"
targets = [ {{ addr = "{}" }} ]

[[routes]]
name = "all"
upstream = "u"
"#,
        default_cert.display(),
        default_key.display(),
        api_cert.display(),
        api_key.display(),
        wild_cert.display(),
        wild_key.display(),
        backend.addr
    ))
}

#[test]
fn sni_selects_exact_wildcard_and_default_certificates() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = tls_gateway(&pki, &backend, "");
    let config = pki.client_config(&[&rustls::version::TLS13]);
    for (sni, expected) in [
        ("api.test", "api.test"),
        ("api2.test", "api.test"),
        ("a.wild.test", "*.wild.test"),
        ("default.test", "default.test"),
    ] {
        let exchange = https_get(gw.addr(), sni, config.clone(), "/x")
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(exchange.response.status, 200, "{sni}");
        assert_eq!(
            names_of(&exchange.peer_certificate)[0],
            expected,
            "certificate for SNI {sni}"
        );
        assert_eq!(exchange.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(exchange.version, Some(rustls::ProtocolVersion::TLSv1_3));
    }
    // A name no certificate covers gets the default, which the client then rejects.
    let error = https_get(gw.addr(), "b.c.wild.test", config, "/")
        .err()
        .expect("default cert must not verify for b.c.wild.test");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[test]
fn tls12_works_and_the_backend_sees_https() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = tls_gateway(&pki, &backend, "");
    let exchange = https_get(
        gw.addr(),
        "api.test",
        pki.client_config(&[&rustls::version::TLS12]),
        "/p?q=1",
    )
    .expect("TLS 1.2 handshake");
    assert_eq!(exchange.version, Some(rustls::ProtocolVersion::TLSv1_2));
    let echo = exchange.response.json();
    assert_eq!(echo["target"], "/p?q=1");
    let headers = echo["headers"].to_string();
    assert!(
        headers.contains(r#"["x-forwarded-proto","https"]"#),
        "{headers}"
    );
}

/// The gateway sends TLS records directly while the socket takes them and through the
/// ring once it is full: a client that reads late still gets every byte in order.
#[test]
fn a_large_download_to_a_late_reader_arrives_whole() {
    const SIZE: u64 = 16 * 1024 * 1024;
    let pki = TestPki::new();
    let backend = Backend::start("source");
    let gw = tls_gateway(&pki, &backend, "");
    let mut tls = tls_client(
        gw.addr(),
        "api.test",
        pki.client_config(&[&rustls::version::TLS13]),
    )
    .expect("client");
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    tls.write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes())
        .expect("request");
    // Nothing is read for a while: the gateway fills the socket's buffers and has to
    // finish the response through the ring.
    std::thread::sleep(Duration::from_millis(300));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).expect("head byte");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    while total < SIZE {
        let n = tls.read(&mut buf).expect("body");
        assert!(n > 0, "closed after {total} bytes");
        let wrong = buf[..n]
            .iter()
            .enumerate()
            .position(|(i, &b)| b != body_byte(total + i as u64));
        assert_eq!(wrong, None, "a wrong byte after {total} bytes");
        total += n as u64;
    }
    assert_eq!(total, SIZE);
}

#[test]
fn a_second_connection_resumes_the_session() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = tls_gateway(&pki, &backend, "");
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = pki.client_config(&[versions]);
        let first = https_get(gw.addr(), "api.test", config.clone(), "/").expect("first handshake");
        assert!(!first.resumed);
        let second = https_get(gw.addr(), "api.test", config, "/").expect("second handshake");
        assert!(
            second.resumed,
            "{versions:?}: the second connection did not resume"
        );
    }
}

#[test]
fn sni_required_refuses_unknown_names() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = tls_gateway(&pki, &backend, "sni_required = true");
    let config = pki.client_config(&[&rustls::version::TLS13]);
    assert!(https_get(gw.addr(), "api.test", config.clone(), "/").is_ok());
    let error = https_get(gw.addr(), "unknown.test", config, "/")
        .err()
        .expect("handshake must fail");
    assert!(!error.is_empty());
}

#[test]
fn plaintext_garbage_and_stalled_handshakes_are_closed_and_the_worker_keeps_serving() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = tls_gateway(&pki, &backend, "");
    let config = pki.client_config(&[&rustls::version::TLS13]);
    // Plain HTTP to the TLS port: an alert or a close, never an HTTP answer.
    let raw = client::raw_exchange(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(
        !String::from_utf8_lossy(&raw).contains("HTTP/1.1"),
        "plaintext got an HTTP answer"
    );
    assert!(
        raw.is_empty() || raw[0] == 0x15,
        "expected a TLS alert or nothing, got {raw:?}"
    );
    let garbage = client::raw_exchange(
        gw.addr(),
        &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4],
        Duration::from_secs(3),
    );
    assert!(garbage.is_empty() || garbage[0] == 0x15, "{garbage:?}");
    // A client that connects and says nothing is cut at the handshake timeout.
    let mut idle = client::connect(gw.addr());
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a silent client must be closed, not answered");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        started.elapsed()
    );
    let _ = idle.write_all(b"x");
    assert_eq!(
        https_get(gw.addr(), "api.test", config, "/")
            .map(|e| e.response.status)
            .ok(),
        Some(200)
    );
}

#[test]
fn bad_certificates_are_config_errors_with_file_line_and_key() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue("ok", &["ok.test"]);
    let (_, other_key) = pki.issue("other", &["other.test"]);
    let missing = pki.dir.path().join("missing.crt");
    for (cert, key, field, needle) in [
        (
            missing.clone(),
            key.clone(),
            "listeners[0].tls.cert",
            "cannot read",
        ),
        (
            cert.clone(),
            other_key.clone(),
            "listeners[0].tls.key",
            "does not fit",
        ),
        (
            key.clone(),
            key.clone(),
            "listeners[0].tls.cert",
            "no PEM certificate",
        ),
    ] {
        let file = write_config(&format!(
            "[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"127.0.0.1:9\" }} ]\n",
            cert.display(),
            key.display()
        ));
        let path = file.path().to_str().expect("utf8");
        check_refuses(&file, &format!("{path}:4: {field}: "), needle);
    }
}

/// `gateway check` refuses `file`, naming `location` (file:line: key) and `needle`.
fn check_refuses(file: &tempfile::NamedTempFile, location: &str, needle: &str) {
    let path = file.path().to_str().expect("utf8");
    let (status, _, stderr) = run_cli(&["check", "--config", path]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(location), "expected {location:?}: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?}: {stderr}");
}

#[test]
fn hsts_header_and_stapled_ocsp_response() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let (cert, key) = pki.issue("stapled", &["staple.test"]);
    let ocsp = pki.dir.path().join("staple.ocsp");
    std::fs::write(&ocsp, b"\x30\x03\x0a\x01\x00").expect("write OCSP response");
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [ {{ cert = \"{}\", key = \"{}\", ocsp = \"{}\" }} ]\nhsts_max_age = \"365d\"\nhsts_include_subdomains = true\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/app\"\nupstream = \"u\"\n",
        cert.display(),
        key.display(),
        ocsp.display(),
        backend.addr
    ));
    let config = pki.client_config(&[&rustls::version::TLS13]);
    let ok = https_get(gw.addr(), "staple.test", config.clone(), "/app").expect("handshake");
    assert_eq!(
        ok.response.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    let not_found = https_get(gw.addr(), "staple.test", config, "/nope").expect("handshake");
    assert_eq!(not_found.response.status, 404);
    assert!(
        not_found
            .response
            .header("strict-transport-security")
            .is_some(),
        "local answers carry HSTS too"
    );

    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let recorder = std::sync::Arc::new(gateway_tests::tls::RecordOcsp(
        Default::default(),
        gateway::tls::NoVerification(provider.clone()),
    ));
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    https_get(
        gw.addr(),
        "staple.test",
        std::sync::Arc::new(client),
        "/app",
    )
    .expect("handshake");
    assert_eq!(
        *recorder.0.lock().expect("lock"),
        b"\x30\x03\x0a\x01\x00",
        "the OCSP response was not stapled"
    );
}

#[test]
fn plain_listener_redirects_to_https_preserving_path_and_query() {
    let backend = Backend::start("never");
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\nredirect_to_https = true\nhttps_port = 8443\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        backend.addr
    ));
    let mut stream = client::connect(gw.addr());
    stream.write_all(b"POST /a/./b?x=1&y=2 HTTP/1.1\r\nHost: Shop.Example:80\r\nContent-Length: 3\r\n\r\nabc").expect("send");
    let res = client::read_response(&mut stream, false);
    assert_eq!(res.status, 308);
    assert_eq!(
        res.header("location"),
        Some("https://shop.example:8443/a/b?x=1&y=2")
    );
    // The body was drained: the connection still works.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .expect("send");
    assert_eq!(
        client::read_response(&mut stream, false).header("location"),
        Some("https://shop.example:8443/")
    );
    assert_eq!(
        backend.requests(),
        0,
        "a redirecting listener never forwards"
    );
}

#[test]
fn upstream_tls_with_the_right_ca_works_and_a_wrong_ca_is_502() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue("backend", &["backend.test"]);
    let backend = Backend::tls("tls-upstream", &cert, &key);
    let ca = pki.dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).expect("write CA");
    let other = TestPki::new();
    let other_ca = other.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.ca_pem()).expect("write other CA");
    let config = |ca: &std::path::Path, name: &str| {
        format!(
            "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\ntls = true\ntls_server_name = \"{name}\"\ntls_ca = \"{}\"\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
            backend.addr,
            ca.display()
        )
    };
    let gw = Gateway::start(&config(&ca, "backend.test"));
    let mut stream = client::connect(gw.addr());
    for _ in 0..5 {
        stream
            .write_all(b"GET /over-tls HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("send");
        let res = client::read_response(&mut stream, false);
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json()["target"], "/over-tls");
    }
    assert_eq!(
        backend.connections(),
        1,
        "TLS upstream connections must be pooled and reused"
    );

    for (ca, name) in [(&other_ca, "backend.test"), (&ca, "wrong-name.test")] {
        let gw = Gateway::start(&config(ca, name));
        let res = client::get(gw.addr(), "a", "/");
        assert_eq!(res.status, 502, "{}", res.text());
        assert_eq!(res.json()["code"], "upstream_connect_failed");
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            gw.log().contains("TLS handshake with"),
            "the log must say why: {}",
            gw.log()
        );
    }
}

/// testssl.sh (`--fast`) against a TLS listener: no HIGH or CRITICAL finding about
/// protocols, ciphers or vulnerabilities. Two kinds are excused, on purpose:
/// - `cipher_order`: rustls lets the client choose among its (all strong) suites, which
///   testssl rates HIGH by design;
/// - `cert_*`: the certificate is a throwaway from a test CA no client trusts.
#[test]
fn testssl_finds_nothing_high_or_critical() {
    let Some(testssl) = gateway_tests::tool_or_skip(
        "testssl_finds_nothing_high_or_critical",
        ["/usr/bin/testssl", "/usr/local/bin/testssl"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists()),
        "testssl (Debian testssl.sh) is not installed",
    ) else {
        return;
    };
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let (cert, key) = pki.issue("localhost", &["localhost"]);
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\nhsts_max_age = \"365d\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        cert.display(),
        key.display(),
        backend.addr
    ));
    let report = pki.dir.path().join("testssl.json");
    let output = std::process::Command::new(testssl)
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--fast",
            "--jsonfile",
        ])
        .arg(&report)
        .arg(format!("127.0.0.1:{}", gw.addr().port()))
        .output()
        .expect("run testssl");
    let findings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap_or_else(|e| {
            panic!(
                "testssl wrote no report ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        }))
        .expect("testssl JSON");
    let findings = findings.as_array().expect("a list of findings");
    assert!(
        findings.iter().any(|f| f["id"] == "TLS1_3"),
        "testssl did not scan the protocols: {findings:?}"
    );
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .filter(|f| {
            let id = f["id"].as_str().unwrap_or("");
            id != "cipher_order" && !id.starts_with("cert_")
        })
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "testssl findings: {bad:#?}");
    for protocol in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        let offered = findings
            .iter()
            .find(|f| f["id"] == protocol)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or("");
        assert!(
            offered.contains("not offered"),
            "{protocol} must not be offered: {offered}"
        );
    }
}

#[test]
fn reload_rotates_certificates_for_new_handshakes_and_keeps_open_connections() {
    use std::sync::Arc;
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let (cert, key) = pki.issue("rotating", &["rot.test"]);
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        cert.display(),
        key.display(),
        backend.addr
    ));
    let config = pki.client_config(&[&rustls::version::TLS13]);
    let before = https_get(gw.addr(), "rot.test", config.clone(), "/")
        .expect("first handshake")
        .peer_certificate;

    // A keep-alive TLS connection opened before the rotation.
    let tcp = std::net::TcpStream::connect(gw.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let conn =
        rustls::ClientConnection::new(Arc::clone(&config), "rot.test".try_into().expect("name"))
            .expect("client");
    let mut open = rustls::StreamOwned::new(conn, tcp);
    open.write_all(b"GET /one HTTP/1.1\r\nHost: rot.test\r\n\r\n")
        .expect("send");
    assert_eq!(client::read_response(&mut open, false).status, 200);

    // New certificate and key at the same paths, then SIGHUP.
    let (new_cert, new_key) = pki.issue("rotated", &["rot.test"]);
    std::fs::copy(&new_cert, &cert).expect("replace cert");
    std::fs::copy(&new_key, &key).expect("replace key");
    assert!(gw.reload(), "{}", gw.log());
    let after = https_get(gw.addr(), "rot.test", config, "/")
        .expect("handshake after rotation")
        .peer_certificate;
    assert_ne!(before, after, "new handshakes must get the new certificate");
    assert_eq!(
        after,
        std::fs::read(&new_cert)
            .map(|pem| first_der(&pem))
            .expect("new cert")
    );

    open.write_all(b"GET /two HTTP/1.1\r\nHost: rot.test\r\n\r\n")
        .expect("send on the open connection");
    assert_eq!(
        client::read_response(&mut open, false).status,
        200,
        "the open connection survives the rotation"
    );

    // A broken certificate file is refused; the current certificate stays in service.
    std::fs::write(&cert, b"not a certificate").expect("break cert");
    assert!(!gw.reload(), "a broken certificate is refused");
    let still = https_get(
        gw.addr(),
        "rot.test",
        pki.client_config(&[&rustls::version::TLS13]),
        "/",
    )
    .expect("handshake");
    assert_eq!(still.peer_certificate, after);
}

/// DER of the first certificate in a PEM file.
fn first_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem)
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .as_ref()
        .to_vec()
}

/// Each access-log line of a TLS connection names its negotiated version.
#[test]
fn the_access_log_names_the_tls_version() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let (cert, key) = pki.issue("api", &["api.test"]);
    let log = tempfile::NamedTempFile::new().expect("log file");
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\ntls = {{ certificates = [ {{ cert = \"{}\", key = \"{}\" }} ] }}\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n\n[access_log]\npath = \"{}\"\nfields = [\"path\", \"scheme\", \"tls_version\"]\n",
        cert.display(),
        key.display(),
        backend.addr,
        log.path().display()
    ));
    for (version, path) in [
        (&rustls::version::TLS13, "/thirteen"),
        (&rustls::version::TLS12, "/twelve"),
    ] {
        https_get(gw.addr(), "api.test", pki.client_config(&[version]), path).expect("request");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(log.path()).expect("read log");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        lines,
        vec![
            serde_json::json!({ "path": "/thirteen", "scheme": "https", "tls_version": "TLSv1.3" }),
            serde_json::json!({ "path": "/twelve", "scheme": "https", "tls_version": "TLSv1.2" }),
        ],
        "{}",
        gw.log()
    );
}

/// A gateway whose TLS listener asks for client certificates (`client_auth`), with a
/// route only a client whose certificate names `spiffe://acme/billing` may reach.
fn mtls_gateway(pki: &TestPki, backend: &Backend, client_auth: &str) -> Gateway {
    let (cert, key) = pki.issue("api", &["api.test"]);
    Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\ntls = {{ certificates = [ {{ cert = \"{}\", key = \"{}\" }} ], client_auth = \"{client_auth}\", client_ca = \"{}\" }}\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"billing\"\npath_prefix = \"/billing\"\nupstream = \"u\"\nclient_cert = [ {{ name = \"san\", value = \"URI:spiffe://acme/billing\" }} ]\n\n[[routes]]\nname = \"billing-refused\"\npath_prefix = \"/billing\"\nupstream = \"u\"\nrequest_headers = {{ set = {{ \"x-refused\" = \"yes\" }} }}\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        cert.display(),
        key.display(),
        pki.ca_file().display(),
        backend.addr
    ))
}

/// mTLS required: a client with a certificate from the CA is served and its identity
/// reaches the backend (client-sent look-alike headers are dropped); a client without
/// one, or with one from another CA, fails the handshake.
#[test]
fn mtls_required_admits_verified_clients_and_forwards_their_identity() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = mtls_gateway(&pki, &backend, "required");
    let (cert, key) = pki.issue_client("billing", "svc-billing", "spiffe://acme/billing");
    let get = "GET /whoami HTTP/1.1\r\nHost: api.test\r\nX-Client-Cert-Subject: CN=admin\r\nConnection: close\r\n\r\n";
    let echo = https_request(
        gw.addr(),
        "api.test",
        pki.client_config_with_cert(&cert, &key),
        get,
    )
    .expect("a verified client is served")
    .json();
    let headers = echo["headers"].to_string();
    assert!(
        headers.contains(r#"["x-client-cert-subject","CN=svc-billing, O=Acme"]"#),
        "{headers}"
    );
    assert!(
        headers.contains(r#"["x-client-cert-san","URI:spiffe://acme/billing"]"#),
        "{headers}"
    );
    assert!(
        !headers.contains("CN=admin"),
        "a spoofed header got through: {headers}"
    );

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let anonymous = https_request(gw.addr(), "api.test", pki.client_config(&[version]), get);
        assert!(
            anonymous.is_err(),
            "{version:?}: served without a client certificate"
        );
    }
    // A certificate from another CA (the client itself trusts the gateway's CA).
    let other = TestPki::new();
    let (cert, key) = other.issue_client("stranger", "svc-x", "spiffe://evil/x");
    let stranger = pki.client_config_with_cert(&cert, &key);
    let refused = https_request(gw.addr(), "api.test", stranger, get);
    assert!(
        refused.is_err(),
        "served with a certificate from another CA"
    );
    assert!(gw.log().contains("starting workers"), "still running");
}

/// mTLS optional: clients without a certificate are served too; routes tell them apart
/// by the certificate's subjectAltName.
#[test]
fn mtls_optional_serves_both_and_routes_on_the_certificate() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = mtls_gateway(&pki, &backend, "optional");
    let (cert, key) = pki.issue_client("billing", "svc-billing", "spiffe://acme/billing");
    let with_cert = https_get(
        gw.addr(),
        "api.test",
        pki.client_config_with_cert(&cert, &key),
        "/billing/x",
    )
    .expect("with a certificate");
    let headers = with_cert.response.json()["headers"].to_string();
    assert!(!headers.contains("x-refused"), "{headers}");
    assert!(headers.contains("spiffe://acme/billing"), "{headers}");
    let without = https_get(
        gw.addr(),
        "api.test",
        pki.client_config(&[&rustls::version::TLS13]),
        "/billing/x",
    )
    .expect("without a certificate");
    let headers = without.response.json()["headers"].to_string();
    assert!(headers.contains(r#"["x-refused","yes"]"#), "{headers}");
    assert!(!headers.contains("x-client-cert"), "{headers}");
}

/// mTLS settings are checked like certificates: a missing CA bundle, a CA without
/// client_auth and an unknown condition name are config errors naming their key.
#[test]
fn bad_client_auth_settings_are_config_errors() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue("ok", &["ok.test"]);
    let ca = pki.ca_file();
    let missing = pki.dir.path().join("missing-ca.pem");
    for (tls_extra, route_extra, field, needle) in [
        (
            "client_auth = \"required\"".to_owned(),
            "",
            "listeners[0].tls.client_ca",
            "needs client_ca",
        ),
        (
            format!("client_ca = \"{}\"", ca.display()),
            "",
            "listeners[0].tls.client_ca",
            "without client_auth",
        ),
        (
            format!(
                "client_auth = \"optional\", client_ca = \"{}\"",
                missing.display()
            ),
            "",
            "listeners[0].tls.client_ca",
            "cannot read",
        ),
        (
            format!(
                "client_auth = \"optional\", client_ca = \"{}\"",
                ca.display()
            ),
            "client_cert = [ { name = \"issuer\", value = \"x\" } ]",
            "routes[0].client_cert[0].name",
            "\"subject\" or \"san\"",
        ),
    ] {
        let file = write_config(&format!(
            "[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\", {tls_extra} }}\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"127.0.0.1:9\" }} ]\n\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n{route_extra}\n",
            cert.display(),
            key.display()
        ));
        check_refuses(&file, &format!(": {field}: "), needle);
    }
}
