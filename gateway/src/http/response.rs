//! Upstream response heads, held to the same strictness as requests: ambiguous or broken
//! framing from a backend is refused (the proxy answers 502 and never reuses that
//! connection).

use std::mem::MaybeUninit;

use super::{
    FramingError, MAX_HEADERS_CEILING,
    fields::{Fields, FramingFields, is_hop_by_hop},
};

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed upstream response head.
#[derive(Debug, Default)]
pub struct ResponseHead {
    pub fields: Fields,
    pub status: u16,
    reason: (u32, u32),
    pub version_minor: u8,
    pub body: Option<ResponseBody>,
    /// Whether the upstream connection may carry another request afterwards.
    pub reusable: bool,
    /// The upstream's Content-Length, kept for HEAD and 304 answers that have no body.
    pub declared_length: Option<u64>,
}

impl ResponseHead {
    /// Parses the complete head in `raw`; `request_was_head` suppresses the body.
    pub fn parse(&mut self, raw: &[u8], request_was_head: bool) -> Result<(), FramingError> {
        self.parse_answer(raw, request_was_head, false)
    }

    /// Parses the answer to a WebSocket opening handshake: a `101` is then accepted
    /// when it switches to WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
    pub fn parse_after_upgrade_request(&mut self, raw: &[u8]) -> Result<(), FramingError> {
        self.parse_answer(raw, false, true)
    }

    fn parse_answer(
        &mut self,
        raw: &[u8],
        request_was_head: bool,
        upgrade_requested: bool,
    ) -> Result<(), FramingError> {
        let mut storage: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS_CEILING] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS_CEILING];
        let mut res = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            raw,
            &mut storage,
        ) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(FramingError::Malformed("incomplete response head"));
            }
            Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyHeaders),
            Err(_) => {
                return Err(FramingError::Malformed(
                    "invalid response status line or header",
                ));
            }
        }
        let (Some(status), Some(version)) = (res.code, res.version) else {
            return Err(FramingError::Malformed("incomplete status line"));
        };
        let reason = res.reason.unwrap_or("");
        let base = raw.as_ptr() as usize;
        let reason_start = if reason.is_empty() {
            0
        } else {
            reason.as_ptr() as usize - base
        };
        self.fields.fill(raw, res.headers);
        self.status = status;
        self.version_minor = version;
        self.reason = (reason_start as u32, (reason_start + reason.len()) as u32);
        self.frame(request_was_head, upgrade_requested)
    }

    /// The reason phrase as the upstream sent it.
    pub fn reason(&self) -> &[u8] {
        &self.fields.raw[self.reason.0 as usize..self.reason.1 as usize]
    }

    /// Drops the upstream's CORS headers when the gateway answers CORS for the route.
    pub fn drop_cors_fields(&mut self) {
        for i in 0..self.fields.len() {
            if self.fields.name(i).len() > 15
                && self.fields.name(i)[..15].eq_ignore_ascii_case(b"access-control-")
            {
                self.fields.drop_field(i);
            }
        }
    }

    /// Whether this is an interim (1xx) response to skip.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// Whether the upstream switched the connection to WebSocket (a checked `101`).
    pub fn switches_protocol(&self) -> bool {
        self.status == 101
    }

    fn frame(
        &mut self,
        request_was_head: bool,
        upgrade_requested: bool,
    ) -> Result<(), FramingError> {
        let mut framing = FramingFields::default();
        for i in 0..self.fields.len() {
            if framing.observe(&mut self.fields, i)? {
                continue;
            }
            let name = self.fields.name(i);
            if is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"x-request-id") {
                self.fields.drop_field(i);
            }
        }
        let tokens = self.fields.apply_connection_tokens();
        if tokens.too_many {
            return Err(FramingError::Malformed(
                "too many upstream Connection options",
            ));
        }
        self.reusable = match self.version_minor {
            0 => tokens.keep_alive && !tokens.close,
            _ => !tokens.close,
        };
        if self.status == 101 {
            if !upgrade_requested {
                return Err(FramingError::Malformed("unrequested protocol switch"));
            }
            if !(tokens.upgrade && super::fields::offers_websocket(&self.fields)) {
                return Err(FramingError::Malformed(
                    "protocol switch to something other than WebSocket",
                ));
            }
            self.body = Some(ResponseBody::None);
            self.reusable = false;
            return Ok(());
        }
        if self.is_interim() {
            self.body = Some(ResponseBody::None);
            return Ok(());
        }
        let FramingFields {
            content_length,
            transfer_encodings,
            chunked,
        } = framing;
        self.declared_length = content_length;
        let framing = match (transfer_encodings, content_length) {
            (0, None) => ResponseBody::UntilClose,
            (0, Some(n)) => ResponseBody::Length(n),
            (1, None) if chunked && self.version_minor == 1 => ResponseBody::Chunked,
            _ => return Err(FramingError::Malformed("ambiguous upstream framing")),
        };
        self.body = Some(
            if request_was_head || self.status == 204 || self.status == 304 {
                ResponseBody::None
            } else {
                framing
            },
        );
        if framing == ResponseBody::UntilClose
            && !(request_was_head || self.status == 204 || self.status == 304)
        {
            self.reusable = false;
        }
        Ok(())
    }
}

/// The fields of a response head made of `lines` (each ending in CRLF), for unit tests
/// of code that reads fields.
#[cfg(test)]
pub(crate) fn fields_of(lines: &str) -> super::fields::Fields {
    let mut res = ResponseHead::default();
    res.parse(
        format!("HTTP/1.1 200 OK\r\n{lines}Content-Length: 0\r\n\r\n").as_bytes(),
        false,
    )
    .expect("valid test head");
    std::mem::take(&mut res.fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, head: bool) -> Result<ResponseHead, FramingError> {
        let mut r = ResponseHead::default();
        r.parse(raw.as_bytes(), head).map(|()| r)
    }

    #[test]
    fn frames_responses() {
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false).expect("valid");
        assert_eq!(
            (r.status, r.body, r.reusable),
            (200, Some(ResponseBody::Length(3)), true)
        );
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .expect("valid");
        assert_eq!(r.body, Some(ResponseBody::Chunked));
        let r = parse("HTTP/1.1 200 OK\r\n\r\n", false).expect("valid");
        assert_eq!(
            (r.body, r.reusable),
            (Some(ResponseBody::UntilClose), false)
        );
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).expect("valid");
        assert_eq!(r.body, Some(ResponseBody::None));
        let r = parse(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
            false,
        )
        .expect("valid");
        assert_eq!(r.body, Some(ResponseBody::None));
        let r = parse("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", false).expect("valid");
        assert!(!r.reusable);
    }

    #[test]
    fn a_switch_is_accepted_only_to_websocket_and_only_when_asked() {
        let switch = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n";
        let mut r = ResponseHead::default();
        r.parse_after_upgrade_request(switch.as_bytes())
            .expect("valid");
        assert!(r.switches_protocol() && !r.reusable);
        assert_eq!(r.body, Some(ResponseBody::None));
        assert!(
            parse(switch, false).is_err(),
            "never without an upgrade request"
        );
        let to_h2c =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
        assert!(r.parse_after_upgrade_request(to_h2c.as_bytes()).is_err());
        let plain = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        r.parse_after_upgrade_request(plain.as_bytes())
            .expect("a refusal is a normal response");
        assert_eq!(r.body, Some(ResponseBody::Length(2)));
    }

    #[test]
    fn refuses_ambiguous_upstream_framing() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(parse(raw, false).is_err(), "must refuse {raw:?}");
        }
    }
}
