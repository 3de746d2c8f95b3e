//! Request heads: parsing with httparse, then the gateway's own strict framing rules
//! (RFC 9112 §6), Host rules, target normalization and header classification.

use std::mem::MaybeUninit;

use super::{
    FramingError, MAX_HEADERS_CEILING,
    fields::{Fields, FramingFields, is_hop_by_hop},
    target::normalize_path_into,
};

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestBody {
    #[default]
    None,
    Length(u64),
    Chunked,
}

/// A parsed, validated request head. Reused across the requests of a connection.
#[derive(Debug, Default)]
pub struct RequestHead {
    /// The verified client certificate of the connection (mTLS), for route conditions.
    pub client_cert: Option<std::rc::Rc<crate::tls::ClientIdentity>>,
    pub fields: Fields,
    method: (u32, u32),
    /// `HTTP/1.x` minor version.
    pub version_minor: u8,
    /// Normalized path; what is forwarded, and what routes match unless it has
    /// `;parameters` (see [`RequestHead::routing_path`]).
    pub path: Vec<u8>,
    /// The path without `;parameters`, when it has any.
    path_without_parameters: Vec<u8>,
    has_parameters: bool,
    query: Option<(u32, u32)>,
    /// Authority the request is for (Host, or the absolute-form target's authority).
    authority: (u32, u32),
    /// Lower-case host without port, for routing.
    pub host: Vec<u8>,
    pub body: RequestBody,
    pub keep_alive: bool,
    /// A WebSocket opening handshake (GET, HTTP/1.1, no body, `Connection: upgrade`,
    /// `Upgrade: websocket`): forwarded as an upgrade and tunnelled after a 101.
    pub websocket: bool,
    pub expect_continue: bool,
    /// Value of an incoming `X-Request-Id` (index into fields), if acceptable.
    pub request_id: Option<usize>,
    /// Original length of the request target, for the URI limit.
    pub target_len: usize,
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_headers: usize,
    pub max_uri_length: usize,
}

impl RequestHead {
    /// Parses the complete head in `raw` (ending with the blank line).
    pub fn parse(&mut self, raw: &[u8], limits: ParseLimits) -> Result<(), FramingError> {
        let mut storage: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS_CEILING] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS_CEILING];
        let headers = &mut storage[..limits.max_headers.min(MAX_HEADERS_CEILING)];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(raw, headers) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(FramingError::Malformed("incomplete head"));
            }
            Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyHeaders),
            Err(httparse::Error::Version) => {
                return Err(FramingError::Malformed("unsupported HTTP version"));
            }
            Err(_) => return Err(FramingError::Malformed("invalid request line or header")),
        }
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return Err(FramingError::Malformed("incomplete request line"));
        };
        let base = raw.as_ptr() as usize;
        let method_start = method.as_ptr() as usize - base;
        let target_start = target.as_ptr() as usize - base;
        let target_len = target.len();
        self.fields.fill(raw, req.headers);
        self.method = (method_start as u32, (method_start + method.len()) as u32);
        self.version_minor = version;
        self.target_len = target_len;
        if target_len > limits.max_uri_length {
            return Err(FramingError::UriTooLong);
        }
        self.classify_and_frame()?;
        self.resolve_target(target_start, target_len)
    }

    /// The method as sent.
    pub fn method(&self) -> &[u8] {
        &self.fields.raw[self.method.0 as usize..self.method.1 as usize]
    }

    /// The raw query string (without `?`), if any.
    pub fn query(&self) -> Option<&[u8]> {
        self.query
            .map(|(s, e)| &self.fields.raw[s as usize..e as usize])
    }

    /// The authority as sent (Host value or absolute-form authority).
    pub fn authority(&self) -> &[u8] {
        &self.fields.raw[self.authority.0 as usize..self.authority.1 as usize]
    }

    /// HEAD responses carry no body whatever their headers say.
    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }

    /// Methods that may be retried on another target (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        )
    }

    /// Header classification and body framing (RFC 9112 §6.3), in one pass.
    fn classify_and_frame(&mut self) -> Result<(), FramingError> {
        let mut framing = FramingFields::default();
        let mut hosts = 0;
        let mut host_index = None;
        self.expect_continue = false;
        self.request_id = None;
        for i in 0..self.fields.len() {
            if framing.observe(&mut self.fields, i)? {
                continue;
            }
            let name = self.fields.name(i);
            if name.eq_ignore_ascii_case(b"host") {
                hosts += 1;
                host_index = Some(i);
                self.fields.drop_field(i);
            } else if name.eq_ignore_ascii_case(b"expect") {
                if !self.fields.value(i).eq_ignore_ascii_case(b"100-continue") {
                    return Err(FramingError::ExpectationFailed);
                }
                self.expect_continue = true;
                self.fields.drop_field(i);
            } else if name.eq_ignore_ascii_case(b"x-request-id") {
                let v = self.fields.value(i);
                if self.request_id.is_none()
                    && (1..=128).contains(&v.len())
                    && v.iter().all(|b| b.is_ascii_graphic())
                {
                    self.request_id = Some(i);
                }
                self.fields.drop_field(i);
            } else if is_hop_by_hop(name) || is_forwarding_header(name) {
                self.fields.drop_field(i);
            }
        }
        let tokens = self.fields.apply_connection_tokens();
        if tokens.too_many {
            return Err(FramingError::Malformed("too many Connection options"));
        }
        self.keep_alive = match self.version_minor {
            0 => tokens.keep_alive && !tokens.close,
            _ => !tokens.close,
        };
        self.body = match (framing.transfer_encodings, framing.content_length) {
            (0, None) => RequestBody::None,
            (0, Some(n)) => RequestBody::Length(n),
            (_, Some(_)) => {
                return Err(FramingError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            _ if self.version_minor == 0 => {
                return Err(FramingError::Malformed("Transfer-Encoding in HTTP/1.0"));
            }
            (1, None) if framing.chunked => RequestBody::Chunked,
            _ => return Err(FramingError::Malformed("unsupported Transfer-Encoding")),
        };
        // Any other upgrade (h2c, …) is ignored: the request goes on as plain HTTP/1.1.
        self.websocket = tokens.upgrade
            && self.version_minor == 1
            && self.method() == b"GET"
            && self.body == RequestBody::None
            && super::fields::offers_websocket(&self.fields);
        match (hosts, host_index) {
            (0, _) if self.version_minor >= 1 => Err(FramingError::Malformed("missing Host")),
            (0, _) => {
                self.authority = (0, 0);
                Ok(())
            }
            (1, Some(i)) => {
                let (s, e) = self.fields.value_range(i);
                self.authority = (s, e);
                Ok(())
            }
            _ => Err(FramingError::Malformed("duplicate Host")),
        }
    }

    /// Reduces the target to a normalized path and query; absolute-form targets are
    /// routed by their own authority (RFC 9112 §3.2.2), never half by Host.
    fn resolve_target(&mut self, start: usize, len: usize) -> Result<(), FramingError> {
        let raw = &self.fields.raw;
        let target = &raw[start..start + len];
        let method = self.method();
        if method == b"CONNECT" {
            return Err(FramingError::MethodNotImplemented);
        }
        let mut path_start = start;
        if target == b"*" {
            if method != b"OPTIONS" {
                return Err(FramingError::Malformed(
                    "asterisk-form target outside OPTIONS",
                ));
            }
            self.path.clear();
            self.path.push(b'*');
            self.query = None;
            return self.resolve_host();
        }
        if target.first() != Some(&b'/') {
            let rest =
                strip_scheme(target).ok_or(FramingError::Malformed("invalid request target"))?;
            let authority_start = start + (len - rest.len());
            let authority_len = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            if authority_len == 0 {
                return Err(FramingError::Malformed(
                    "absolute-form target without authority",
                ));
            }
            self.authority = (
                authority_start as u32,
                (authority_start + authority_len) as u32,
            );
            path_start = authority_start + authority_len;
        }
        let end = start + len;
        let target = &self.fields.raw[path_start..end];
        let (path, query) = match memchr::memchr(b'?', target) {
            Some(q) => (
                &target[..q],
                Some(((path_start + q + 1) as u32, end as u32)),
            ),
            None => (target, None),
        };
        let path = if path.is_empty() { &b"/"[..] } else { path };
        normalize_path_into(path, &mut self.path)?;
        self.has_parameters = memchr::memchr(b';', &self.path).is_some();
        if self.has_parameters {
            super::target::strip_parameters_into(&self.path, &mut self.path_without_parameters);
        }
        self.query = query;
        self.resolve_host()
    }

    /// The path routes match: the normalized path without its segments' `;parameters`
    /// (the same bytes as [`RequestHead::path`] when there are none).
    pub fn routing_path(&self) -> &[u8] {
        if self.has_parameters {
            &self.path_without_parameters
        } else {
            &self.path
        }
    }

    /// Validates the authority and derives the routing host (lower-case, no port).
    fn resolve_host(&mut self) -> Result<(), FramingError> {
        let authority = &self.fields.raw[self.authority.0 as usize..self.authority.1 as usize];
        let host = split_host_port(authority).ok_or(FramingError::Malformed("invalid Host"))?;
        self.host.clear();
        self.host.extend(host.iter().map(u8::to_ascii_lowercase));
        Ok(())
    }
}

/// The verified client certificate's subject, as the gateway forwards it.
pub const CLIENT_CERT_SUBJECT_HEADER: &[u8] = b"x-client-cert-subject";
/// Its subjectAltName entries, comma-separated (`URI:…, DNS:…`).
pub const CLIENT_CERT_SAN_HEADER: &[u8] = b"x-client-cert-san";

/// Headers only the gateway writes: what a client sends under these names is dropped.
fn is_forwarding_header(name: &[u8]) -> bool {
    [
        &b"x-forwarded-for"[..],
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        CLIENT_CERT_SUBJECT_HEADER,
        CLIENT_CERT_SAN_HEADER,
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(name))
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    let lower = |n: usize| target.get(..n).map(|p| p.to_ascii_lowercase());
    if lower(7).as_deref() == Some(b"http://") {
        Some(&target[7..])
    } else if lower(8).as_deref() == Some(b"https://") {
        Some(&target[8..])
    } else {
        None
    }
}

/// Splits `host[:port]` (or `[v6]:port`) and validates both parts; an empty authority
/// (HTTP/1.0 without Host) is allowed and routes as host "".
pub fn split_host_port(authority: &[u8]) -> Option<&[u8]> {
    if authority.is_empty() {
        return Some(authority);
    }
    let (host, port) = if authority[0] == b'[' {
        let close = authority.iter().position(|&b| b == b']')?;
        let inner = &authority[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let rest = &authority[close + 1..];
        let port = match rest {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return None,
        };
        (&authority[..=close], port)
    } else {
        let (host, port) = match authority.iter().rposition(|&b| b == b':') {
            Some(i) => (&authority[..i], Some(&authority[i + 1..])),
            None => (authority, None),
        };
        if host.is_empty()
            || !host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return None;
        }
        (host, port)
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit))
    {
        return None;
    }
    Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParseLimits = ParseLimits {
        max_headers: 100,
        max_uri_length: 8192,
    };

    fn parse(raw: &str) -> Result<RequestHead, FramingError> {
        let mut head = RequestHead::default();
        head.parse(raw.as_bytes(), LIMITS).map(|()| head)
    }

    #[test]
    fn parses_a_plain_request() {
        let head =
            parse("GET /a/../b?x=1 HTTP/1.1\r\nHost: API.Example.com:8080\r\nAccept: */*\r\n\r\n")
                .expect("valid");
        assert_eq!(head.method(), b"GET");
        assert_eq!(head.path, b"/b");
        assert_eq!(head.query(), Some(&b"x=1"[..]));
        assert_eq!(head.host, b"api.example.com");
        assert_eq!(head.authority(), b"API.Example.com:8080");
        assert_eq!(head.body, RequestBody::None);
        assert!(head.keep_alive);
    }

    #[test]
    fn recognizes_only_well_formed_websocket_handshakes() {
        let handshake = |extra: &str, method: &str| {
            parse(&format!(
                "{method} /ws HTTP/1.1\r\nHost: a\r\n{extra}Sec-WebSocket-Key: k\r\n\r\n"
            ))
            .expect("valid")
        };
        let ws = handshake(
            "Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n",
            "GET",
        );
        assert!(ws.websocket);
        // The hop-by-hop fields are not forwarded as such.
        assert!(
            !(0..ws.fields.len())
                .any(|i| ws.fields.forwarded(i)
                    && ws.fields.name(i).eq_ignore_ascii_case(b"upgrade"))
        );
        assert!(!handshake("Upgrade: websocket\r\n", "GET").websocket);
        assert!(!handshake("Connection: upgrade\r\nUpgrade: h2c\r\n", "GET").websocket);
        assert!(!handshake("Connection: upgrade\r\nUpgrade: websocket\r\n", "POST").websocket);
        let with_body = parse(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\n",
        )
        .expect("valid");
        assert!(!with_body.websocket);
        let old = parse("GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .expect("valid");
        assert!(!old.websocket);
    }

    #[test]
    fn frames_bodies() {
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").map(|h| h.body),
            Ok(RequestBody::Length(5))
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n")
                .map(|h| h.body),
            Ok(RequestBody::Chunked)
        );
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
                .map(|h| h.body),
            Ok(RequestBody::Length(5))
        );
    }

    /// Every request smuggling vector the gateway closes, each rejected outright.
    #[test]
    fn rejects_smuggling_vectors() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nX: y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            "GET /a%2F..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(parse(raw).is_err(), "must reject {raw:?}");
        }
    }

    #[test]
    fn maps_limits_and_methods_to_their_errors() {
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")).err(),
            Some(FramingError::TooManyHeaders)
        );
        let long = "a".repeat(9000);
        assert_eq!(
            parse(&format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n")).err(),
            Some(FramingError::UriTooLong)
        );
        assert_eq!(
            parse("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").err(),
            Some(FramingError::MethodNotImplemented)
        );
        assert_eq!(
            parse("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n").err(),
            Some(FramingError::ExpectationFailed)
        );
    }

    #[test]
    fn absolute_form_routes_by_its_authority() {
        let head =
            parse("GET http://Other.example:81/p?q HTTP/1.1\r\nHost: ignored.example\r\n\r\n")
                .expect("valid");
        assert_eq!(head.host, b"other.example");
        assert_eq!(head.authority(), b"Other.example:81");
        assert_eq!(head.path, b"/p");
        assert_eq!(head.query(), Some(&b"q"[..]));
    }

    #[test]
    fn hop_by_hop_and_forwarding_headers_are_not_forwarded() {
        let head = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\nX-Keep: y\r\n\r\n").expect("valid");
        let forwarded: Vec<&[u8]> = (0..head.fields.len())
            .filter(|&i| head.fields.forwarded(i))
            .map(|i| head.fields.name(i))
            .collect();
        assert_eq!(forwarded, vec![&b"X-Keep"[..]]);
        assert!(!head.keep_alive);
    }

    #[test]
    fn http10_keep_alive_is_opt_in() {
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").expect("valid").keep_alive);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .expect("valid")
                .keep_alive
        );
    }
}
