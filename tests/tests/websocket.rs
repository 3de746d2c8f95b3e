//! WebSocket through the gateway with a real client and server (tungstenite): the
//! handshake is proxied end to end, messages, ping/pong and close pass both ways, an open
//! tunnel survives a reload, frames sent right behind the handshake are not lost, routes
//! can require or refuse WebSocket, and a quiet tunnel is closed after the idle timeout.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use gateway_tests::{
    backend::Backend,
    client::{connect, get},
    gateway::Gateway,
};
use tungstenite::{Message, WebSocket};

/// A WebSocket echo server: every text or binary message comes back; tungstenite
/// answers pings itself. Runs until the process ends.
fn echo_server() -> SocketAddr {
    echo_server_over(Some)
}

/// The echo server over TLS with `cert` and `key` (PEM files).
fn echo_server_tls(cert: &std::path::Path, key: &std::path::Path) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(key).expect("key file");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config"),
    );
    echo_server_over(move |stream| {
        let conn = rustls::ServerConnection::new(config.clone()).ok()?;
        Some(rustls::StreamOwned::new(conn, stream))
    })
}

fn echo_server_over<S: Read + Write + Send + 'static>(
    wrap: impl Fn(TcpStream) -> Option<S> + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let addr = listener.local_addr().expect("addr");
    let wrap = Arc::new(wrap);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let wrap = wrap.clone();
            std::thread::spawn(move || {
                let Some(stream) = wrap(stream) else { return };
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                // After a close frame, tungstenite sends the reply on the next read,
                // which then ends the loop.
                while let Ok(message) = ws.read() {
                    let echo = match message {
                        Message::Text(_) | Message::Binary(_) => message,
                        _ => continue,
                    };
                    if ws.send(echo).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn config(ws: SocketAddr, http: SocketAddr, limits: &str) -> String {
    format!(
        "[gateway]\nworkers = 2\n\n[limits]\n{limits}\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"ws\"\ntargets = [ {{ addr = \"{ws}\" }} ]\n\n\
         [[upstreams]]\nname = \"http\"\ntargets = [ {{ addr = \"{http}\" }} ]\n\n\
         [[routes]]\nname = \"live\"\npath_prefix = \"/live\"\nwebsocket = true\nupstream = \"ws\"\n\n\
         [[routes]]\nname = \"plain-only\"\npath_prefix = \"/plain\"\nwebsocket = false\nupstream = \"ws\"\n\n\
         [[routes]]\nname = \"rest\"\nupstream = \"http\"\n"
    )
}

fn open(gateway: SocketAddr, path: &str) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let stream = connect(gateway);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let url = format!("ws://{gateway}{path}");
    tungstenite::client(url.as_str(), stream)
        .map(|(ws, _response)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })
}

fn echo<S: Read + Write>(ws: &mut WebSocket<S>, text: &str) {
    ws.send(Message::text(text)).expect("send");
    match ws.read().expect("echo") {
        Message::Text(back) => assert_eq!(back.as_str(), text),
        other => panic!("expected the text back, got {other:?}"),
    }
}

/// The close handshake: the server's close frame comes back through the tunnel.
fn close_cleanly<S: Read + Write>(ws: &mut WebSocket<S>) {
    ws.close(None).expect("close");
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => return,
            Ok(_) => {}
            Err(e) => panic!("unexpected error while closing: {e}"),
        }
    }
}

#[test]
fn messages_ping_and_close_pass_and_the_tunnel_survives_a_reload() {
    let ws_addr = echo_server();
    let http = Backend::start("http");
    let gw = Gateway::start(&config(ws_addr, http.addr, ""));
    let mut ws = open(gw.addr(), "/live/chat").expect("handshake through the gateway");
    echo(&mut ws, "hello");
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .expect("send");
    assert_eq!(
        ws.read().expect("binary echo"),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let big = "x".repeat(200_000);
    echo(&mut ws, &big);
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .expect("ping");
    match ws.read().expect("pong") {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }

    // A reload swaps the config; the open tunnel is not part of any snapshot.
    let text = config(ws_addr, http.addr, "").replace("name = \"rest\"", "name = \"rest2\"");
    std::fs::write(gw.config_path(), text).expect("new config");
    assert!(gw.reload(), "reload accepted");
    echo(&mut ws, "still here after the reload");
    // New handshakes and plain requests work on the new config.
    let mut second = open(gw.addr(), "/live/other").expect("second handshake");
    echo(&mut second, "second");
    assert_eq!(get(gw.addr(), "a", "/anything").status, 200);

    close_cleanly(&mut ws);
}

#[test]
fn routes_can_require_or_refuse_websocket() {
    let ws_addr = echo_server();
    let http = Backend::start("http");
    let gw = Gateway::start(&config(ws_addr, http.addr, ""));
    // `/live` only takes handshakes: a plain GET falls through to the catch-all route.
    let plain = get(gw.addr(), "a", "/live/chat");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json()["backend"], "http");
    // `/plain` refuses handshakes: it goes to the catch-all route, whose backend does not
    // switch protocols, so the client sees an ordinary response and no tunnel.
    let refused = open(gw.addr(), "/plain/x");
    assert!(
        matches!(refused, Err(tungstenite::Error::Http(ref r)) if r.status() == 200),
        "{refused:?}"
    );
}

#[test]
fn a_frame_sent_with_the_handshake_is_not_lost() {
    let ws_addr = echo_server();
    let http = Backend::start("http");
    let gw = Gateway::start(&config(ws_addr, http.addr, ""));
    let mut stream = connect(gw.addr());
    // The handshake and a masked text frame "hi" in one write.
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut bytes =
        b"GET /live/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    bytes.extend_from_slice(&[0x81, 0x80 | 2]);
    bytes.extend_from_slice(&mask);
    bytes.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
    stream.write_all(&bytes).expect("send");
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let frame = [0x81u8, 2, b'h', b'i'];
    while !received.windows(4).any(|w| w == frame) {
        assert!(Instant::now() < deadline, "no echo: {received:?}");
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).expect("read");
        assert!(
            n > 0,
            "closed early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("upgrade: websocket"),
        "{text}"
    );
    assert!(
        text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the server's accept key: {text}"
    );
}

#[test]
fn a_quiet_tunnel_is_closed_after_the_idle_timeout() {
    let ws_addr = echo_server();
    let http = Backend::start("http");
    let gw = Gateway::start(&config(
        ws_addr,
        http.addr,
        "websocket_idle_timeout = \"300ms\"",
    ));
    let mut ws = open(gw.addr(), "/live/idle").expect("handshake");
    // Traffic keeps it open past the timeout.
    for i in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        echo(&mut ws, &format!("tick {i}"));
    }
    let quiet_since = Instant::now();
    let end = ws.read();
    assert!(
        matches!(
            end,
            Err(tungstenite::Error::Protocol(_) | tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::Io(_))
                | Ok(Message::Close(_))
        ),
        "{end:?}"
    );
    let waited = quiet_since.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn wss_to_the_gateway_and_tls_to_the_backend() {
    let pki = gateway_tests::tls::TestPki::new();
    let (gw_cert, gw_key) = pki.issue("gateway", &["ws.test"]);
    let (backend_cert, backend_key) = pki.issue("backend", &["backend.test"]);
    let ca = pki.dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).expect("CA file");
    let ws_addr = echo_server_tls(&backend_cert, &backend_key);
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\n\n[[listeners]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}\n\n\
         [[upstreams]]\nname = \"ws\"\ntargets = [ {{ addr = \"{ws_addr}\" }} ]\ntls = true\n\
         tls_server_name = \"backend.test\"\ntls_ca = \"{}\"\n\n\
         [[routes]]\nname = \"live\"\nwebsocket = true\nupstream = \"ws\"\n",
        gw_cert.display(),
        gw_key.display(),
        ca.display()
    ));
    let tcp = connect(gw.addr());
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let client = rustls::ClientConnection::new(
        pki.client_config(&[&rustls::version::TLS13]),
        "ws.test".try_into().expect("name"),
    )
    .expect("client");
    let tls = rustls::StreamOwned::new(client, tcp);
    let (mut ws, _) = tungstenite::client("wss://ws.test/live", tls).expect("wss handshake");
    echo(&mut ws, "over TLS both ways");
    let big = "y".repeat(100_000);
    echo(&mut ws, &big);
    close_cleanly(&mut ws);
}
