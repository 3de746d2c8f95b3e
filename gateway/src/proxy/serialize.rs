//! What the gateway writes: request heads for upstreams and response heads for clients,
//! always re-serialized from parsed fields, never the peer's raw bytes.

use crate::http::{
    fields::Fields,
    request::{RequestBody, RequestHead},
    response::{ResponseBody, ResponseHead},
};

/// How the gateway frames a body it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    None,
    Length(u64),
    Chunked,
    /// Raw bytes, then the connection closes (HTTP/1.0 clients only).
    Close,
}

/// Gateway-set forwarding headers.
pub struct Forwarding<'a> {
    /// The client's address as text (formatted once per connection).
    pub client: &'a [u8],
    /// The peer is a trusted proxy: its X-Forwarded-* values are kept and extended.
    pub trusted: bool,
    pub proto: &'static str,
    pub via: &'a str,
    pub request_id: &'a [u8],
    /// The query to forward (the client's, or one with credentials stripped).
    pub query: Option<&'a [u8]>,
    /// Complete header lines the gateway adds (the verified identity).
    pub extra: &'a [u8],
}

/// Appends one `name: value` header line.
pub(super) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `via: 1.<minor> <pseudonym>` (RFC 9110 §7.6.3), without formatting machinery.
pub(super) fn via_line(out: &mut Vec<u8>, minor: u8, via: &str) {
    out.extend_from_slice(b"via: 1.");
    out.push(b'0' + minor.min(9));
    out.push(b' ');
    out.extend_from_slice(via.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn forwarded_fields(out: &mut Vec<u8>, fields: &Fields) {
    for i in 0..fields.len() {
        if fields.forwarded(i) {
            header(out, fields.name(i), fields.value(i));
        }
    }
}

/// Appends the upstream request head for `req`, with `method` and `path` as forwarded
/// (a translated call changes both).
pub fn request_head(
    out: &mut Vec<u8>,
    req: &RequestHead,
    method: &[u8],
    path: &[u8],
    body: RequestBody,
    fwd: &Forwarding<'_>,
) {
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(path);
    if let Some(query) = fwd.query {
        out.push(b'?');
        out.extend_from_slice(query);
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.authority().is_empty() {
        header(out, b"host", req.authority());
    }
    forwarded_fields(out, &req.fields);

    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = req.fields.get(b"x-forwarded-for").filter(|_| fwd.trusted) {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(fwd.client);
    out.extend_from_slice(b"\r\n");
    let proto = match req.fields.get(b"x-forwarded-proto") {
        Some(p) if fwd.trusted => p,
        _ => fwd.proto.as_bytes(),
    };
    header(out, b"x-forwarded-proto", proto);
    let host = match req.fields.get(b"x-forwarded-host") {
        Some(h) if fwd.trusted => h,
        _ => req.authority(),
    };
    if !host.is_empty() {
        header(out, b"x-forwarded-host", host);
    }
    via_line(out, req.version_minor, fwd.via);
    header(out, b"x-request-id", fwd.request_id);
    if let Some(cert) = &req.client_cert {
        use crate::http::request::{CLIENT_CERT_SAN_HEADER, CLIENT_CERT_SUBJECT_HEADER};
        // Certificate text is printable ASCII (x509-parser escapes the rest).
        header(out, CLIENT_CERT_SUBJECT_HEADER, cert.subject.as_bytes());
        if !cert.san.is_empty() {
            out.extend_from_slice(CLIENT_CERT_SAN_HEADER);
            out.extend_from_slice(b": ");
            for (i, name) in cert.san.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(name.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(fwd.extra);
    if req.websocket {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    }
    match body {
        RequestBody::None => {}
        RequestBody::Length(n) => {
            content_length(out, n);
        }
        RequestBody::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Chooses how the response body is framed towards a client speaking `HTTP/1.minor`.
pub fn response_framing(res: &ResponseHead, client_minor: u8) -> OutFraming {
    match res.body {
        Some(ResponseBody::Length(n)) => OutFraming::Length(n),
        Some(ResponseBody::Chunked | ResponseBody::UntilClose) if client_minor >= 1 => {
            OutFraming::Chunked
        }
        Some(ResponseBody::Chunked | ResponseBody::UntilClose) => OutFraming::Close,
        Some(ResponseBody::None) | None => OutFraming::None,
    }
}

/// What the client side contributes to a response head.
#[derive(Clone, Copy)]
pub struct ClientSide<'a> {
    pub via: &'a str,
    pub request_id: &'a [u8],
    pub keep_alive: bool,
    /// The client's `HTTP/1.x` minor version.
    pub client_minor: u8,
    /// Complete header lines the listener adds to every response (HSTS).
    pub extra_headers: &'a [u8],
}

/// Appends the client response head.
pub fn response_head(
    out: &mut Vec<u8>,
    res: &ResponseHead,
    framing: OutFraming,
    client: &ClientSide<'_>,
) {
    let ClientSide {
        via,
        request_id,
        keep_alive,
        client_minor,
        extra_headers,
    } = *client;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(res.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(res.reason());
    out.extend_from_slice(b"\r\n");
    forwarded_fields(out, &res.fields);
    via_line(out, res.version_minor, via);
    header(out, b"x-request-id", request_id);
    match framing {
        OutFraming::Length(n) => {
            content_length(out, n);
        }
        OutFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        OutFraming::None if res.status != 204 && !res.is_interim() => {
            if let Some(n) = res.declared_length {
                content_length(out, n);
            }
        }
        OutFraming::None | OutFraming::Close => {}
    }
    if res.switches_protocol() {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(extra_headers);
    out.extend_from_slice(b"\r\n");
}
