//! A real identity provider on loopback for the gateway's control-plane calls: it
//! serves a JWKS document at `/jwks` and answers RFC 7662 introspection at
//! `/introspect` (client credentials checked), counting every call.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

/// What the provider answers; tests change it while the gateway runs.
#[derive(Debug)]
pub struct IdpState {
    /// The JWKS body, or an HTTP status to fail with.
    pub jwks: Result<String, u16>,
    /// Introspection answers by token (JSON); unknown tokens are inactive.
    pub tokens: HashMap<String, serde_json::Value>,
    /// Client credentials introspection calls must present (RFC 6749 §2.3.1).
    pub client: (String, String),
    /// Answer introspection with this status instead (an outage).
    pub introspection_status: Option<u16>,
}

/// A running provider; stops accepting when dropped.
pub struct Idp {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<IdpState>>,
    pub jwks_calls: Arc<AtomicUsize>,
    pub introspection_calls: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Idp {
    /// Starts a provider serving `jwks`, accepting `client_id:client_secret`.
    pub fn start(jwks: String, client_id: &str, client_secret: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind idp");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(IdpState {
            jwks: Ok(jwks),
            tokens: HashMap::new(),
            client: (client_id.to_owned(), client_secret.to_owned()),
            introspection_status: None,
        }));
        let jwks_calls = Arc::new(AtomicUsize::new(0));
        let introspection_calls = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, j, i, st) = (
            state.clone(),
            jwks_calls.clone(),
            introspection_calls.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, j, i) = (s.clone(), j.clone(), i.clone());
                        std::thread::spawn(move || {
                            let _ = serve(stream, &s, &j, &i);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            state,
            jwks_calls,
            introspection_calls,
            stop,
        }
    }

    /// Changes what the provider answers.
    pub fn update(&self, f: impl FnOnce(&mut IdpState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut stream: TcpStream,
    state: &Mutex<IdpState>,
    jwks_calls: &AtomicUsize,
    introspection_calls: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, content_length) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + content_length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let request_line = head.lines().next().unwrap_or("");
    let state = state.lock().unwrap_or_else(|e| e.into_inner());
    let (status, answer) = if request_line.starts_with("GET /jwks ") {
        jwks_calls.fetch_add(1, Ordering::Relaxed);
        match &state.jwks {
            Ok(doc) => (200, doc.clone()),
            Err(status) => (*status, "{}".to_owned()),
        }
    } else if request_line.starts_with("POST /introspect ") {
        introspection_calls.fetch_add(1, Ordering::Relaxed);
        let authorized = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("authorization")
                    && basic_credentials(v.trim()).as_ref() == Some(&state.client)
            })
        });
        let token = body
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .unwrap_or("");
        match (state.introspection_status, authorized) {
            (Some(status), _) => (status, "{}".to_owned()),
            (None, false) => (401, "{\"error\":\"invalid_client\"}".to_owned()),
            (None, true) => (
                200,
                state
                    .tokens
                    .get(token)
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({ "active": false }))
                    .to_string(),
            ),
        }
    } else {
        (404, "{}".to_owned())
    };
    drop(state);
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}

/// `Basic base64(form(id):form(secret))` decoded back to (id, secret).
fn basic_credentials(value: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let form = |s: &str| {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((form(id)?, form(secret)?))
}
