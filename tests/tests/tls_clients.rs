//! The TLS listener as other clients see it: `curl` (OpenSSL) for SNI selection, both
//! protocol versions, ALPN and client certificates, and `openssl s_client` for the
//! default certificate without SNI and for session resumption.

use std::{net::SocketAddr, path::Path, process::Command};

use gateway_tests::{Backend, Gateway, tls::TestPki};

/// A TLS listener with `default.test` (the default), `api.test`/`api2.test` and
/// `*.wild.test`, asking for client certificates optionally.
fn gateway(pki: &TestPki, backend: &Backend) -> Gateway {
    let (default_cert, default_key) = pki.issue("default", &["default.test"]);
    let (api_cert, api_key) = pki.issue("api", &["api.test", "api2.test"]);
    let (wild_cert, wild_key) = pki.issue("wild", &["*.wild.test"]);
    Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [\n  {{ cert = \"{}\", key = \"{}\" }},\n  {{ cert = \"{}\", key = \"{}\" }},\n  {{ cert = \"{}\", key = \"{}\" }},\n]\nclient_auth = \"optional\"\nclient_ca = \"{}\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        default_cert.display(),
        default_key.display(),
        api_cert.display(),
        api_key.display(),
        wild_cert.display(),
        wild_key.display(),
        pki.ca_file().display(),
        backend.addr
    ))
}

/// `curl -v` for `https://host:port/path`, resolving `host` to the gateway and trusting
/// the test CA; returns (exit code, body, verbose log).
fn curl(addr: SocketAddr, host: &str, ca: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", addr.port()))
        .args(extra)
        .arg(format!("https://{host}:{}/who", addr.port()))
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openssl s_client` sending one request (`connection: close`) with `args` and reading
/// until the gateway closes (so session tickets arrive); its output.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(["s_client", "-ign_eof", "-connect"])
        .arg(addr.to_string())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET /who HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
        .expect("request");
    let out = child.wait_with_output().expect("s_client output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// curl verifies the certificate chosen for each name (so SNI picked the right one),
/// speaks TLS 1.3 and 1.2, and agrees on ALPN `http/1.1`.
#[test]
fn curl_sees_the_right_certificate_per_name_both_versions_and_alpn() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = gateway(&pki, &backend);
    let ca = pki.ca_file();
    for host in ["api.test", "api2.test", "a.wild.test", "default.test"] {
        let (code, body, log) = curl(gw.addr(), host, &ca, &[]);
        assert_eq!(code, 0, "{host}: {log}");
        assert!(body.contains("\"target\":\"/who\""), "{host}: {body}");
    }
    let (code, _, log) = curl(gw.addr(), "api.test", &ca, &["--tlsv1.3"]);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("SSL connection using TLSv1.3"), "{log}");
    assert!(log.contains("ALPN: server accepted http/1.1"), "{log}");
    let (code, _, log) = curl(
        gw.addr(),
        "api.test",
        &ca,
        &["--tlsv1.2", "--tls-max", "1.2"],
    );
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("SSL connection using TLSv1.2"), "{log}");
    // An uncovered name gets the default certificate, which curl refuses to verify.
    let (code, _, log) = curl(gw.addr(), "other.test", &ca, &[]);
    assert_ne!(code, 0, "{log}");
}

/// curl with a client certificate is identified to the backend; without one it is
/// served anonymously (`client_auth = "optional"`).
#[test]
fn curl_with_and_without_a_client_certificate() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = gateway(&pki, &backend);
    let ca = pki.ca_file();
    let (cert, key) = pki.issue_client("curl-client", "svc-curl", "spiffe://acme/curl");
    let (cert, key) = (cert.to_str().expect("utf8"), key.to_str().expect("utf8"));
    let (code, body, log) = curl(gw.addr(), "api.test", &ca, &["--cert", cert, "--key", key]);
    assert_eq!(code, 0, "{log}");
    assert!(body.contains("URI:spiffe://acme/curl"), "{body}");
    let (code, body, log) = curl(gw.addr(), "api.test", &ca, &[]);
    assert_eq!(code, 0, "{log}");
    assert!(!body.contains("x-client-cert"), "{body}");
}

/// openssl without SNI gets the default certificate, and a second connection with the
/// saved session is resumed, in TLS 1.3 and 1.2.
#[test]
fn openssl_gets_the_default_without_sni_and_resumes() {
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let gw = gateway(&pki, &backend);
    let ca = pki.ca_file();
    let ca = ca.to_str().expect("utf8");
    let out = s_client(gw.addr(), &["-noservername", "-CAfile", ca]);
    assert!(out.contains("CN = default.test"), "{out}");
    let sessions = tempfile::tempdir().expect("dir");
    for version in ["-tls1_3", "-tls1_2"] {
        let file = sessions.path().join(format!("session{version}"));
        let file = file.to_str().expect("utf8");
        let first = s_client(
            gw.addr(),
            &[
                version,
                "-servername",
                "api.test",
                "-CAfile",
                ca,
                "-sess_out",
                file,
            ],
        );
        assert!(first.contains("HTTP/1.1 200"), "{version}: {first}");
        let second = s_client(
            gw.addr(),
            &[
                version,
                "-servername",
                "api.test",
                "-CAfile",
                ca,
                "-sess_in",
                file,
            ],
        );
        assert!(
            second.contains("Reused,"),
            "{version}: not resumed: {second}"
        );
    }
}

/// sslyze finds the listener compliant with Mozilla's "intermediate" TLS profile
/// (protocols, cipher suites, curves, certificate), trusting the test CA.
#[test]
fn mozilla_intermediate_profile_passes_sslyze() {
    let Some(python) = gateway_tests::tool_or_skip(
        "mozilla_intermediate_profile_passes_sslyze",
        std::env::var_os("GATEWAY_SSLYZE"),
        "GATEWAY_SSLYZE is not set (run `cargo xtask test`)",
    ) else {
        return;
    };
    let pki = TestPki::new();
    let backend = Backend::start("tls-backend");
    let (cert, key) = pki.issue("api", &["api.test"]);
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\n\n[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n[[upstreams]]\nname = \"u\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        cert.display(),
        key.display(),
        backend.addr
    ));
    let out = Command::new(python)
        .args([
            "-m",
            "sslyze",
            "--mozilla_config=intermediate",
            "--certinfo_ca_file",
        ])
        .arg(pki.ca_file())
        .arg(format!("api.test:{}{{127.0.0.1}}", gw.addr().port()))
        .output()
        .expect("run sslyze");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("OK - Compliant"),
        "not compliant with Mozilla intermediate:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
