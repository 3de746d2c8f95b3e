//! Response compression: gzip (flate2 on zlib-rs) and brotli, negotiated from the
//! client's `Accept-Encoding` q-values, applied only to compressible types above a size
//! threshold and never to bodies that are already encoded. The body is compressed as it
//! streams through and sent chunked (close-delimited to HTTP/1.0 clients); it is never
//! buffered whole.

use std::io::Write as _;

use super::connection::Connection;
use crate::{
    config::{Coding, CompressionConfig},
    http::{
        fields::Fields,
        response::{ResponseBody, ResponseHead},
        trim_ows,
    },
};

impl<S> Connection<S> {
    /// Decides compression for the response just read: an encoder when the client
    /// accepts one of the route's codings, with the response's headers adjusted
    /// (`Content-Encoding`, `Vary`, a weakened `ETag`).
    pub(super) fn prepare_compression(
        &mut self,
        config: &CompressionConfig,
    ) -> Option<BodyEncoder> {
        if !eligible(config, &self.state.response, self.state.head.is_head())
            || matches!(self.state.response.body, None | Some(ResponseBody::None))
        {
            return None;
        }
        // Whatever this client gets, the answer depends on Accept-Encoding.
        self.state
            .reply_headers
            .extend_from_slice(b"vary: accept-encoding\r\n");
        let coding = negotiate(&self.state.head.fields, &config.codings)?;
        self.state
            .reply_headers
            .extend_from_slice(b"content-encoding: ");
        self.state
            .reply_headers
            .extend_from_slice(coding.token().as_bytes());
        self.state.reply_headers.extend_from_slice(b"\r\n");
        // A strong validator names the identity bytes; the encoded ones get a weak one.
        let fields = &mut self.state.response.fields;
        for i in 0..fields.len() {
            if fields.forwarded(i)
                && fields.name(i).eq_ignore_ascii_case(b"etag")
                && fields.value(i).starts_with(b"\"")
            {
                self.state.reply_headers.extend_from_slice(b"etag: W/");
                self.state.reply_headers.extend_from_slice(fields.value(i));
                self.state.reply_headers.extend_from_slice(b"\r\n");
                fields.drop_field(i);
            }
        }
        Some(BodyEncoder::new(coding, config))
    }
}

/// Media types never compressed whatever the configured types say: streams that must
/// reach the client as they are produced.
const NEVER: [&[u8]; 1] = [b"text/event-stream"];

/// A compressor for one response body, writing into its own output buffer.
pub(super) enum BodyEncoder {
    Gzip(Box<flate2::write::GzEncoder<Vec<u8>>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl BodyEncoder {
    /// A fresh encoder for `coding` with the route's settings.
    pub fn new(coding: Coding, config: &CompressionConfig) -> Self {
        match coding {
            Coding::Gzip => Self::Gzip(Box::new(flate2::write::GzEncoder::new(
                Vec::with_capacity(16 * 1024),
                flate2::Compression::new(config.gzip_level),
            ))),
            Coding::Brotli => Self::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::with_capacity(16 * 1024),
                4096,
                config.brotli_quality,
                config.brotli_window,
            ))),
        }
    }

    /// Feeds body bytes in (writing into a `Vec` cannot fail).
    pub fn write(&mut self, data: &[u8]) {
        let _ = match self {
            Self::Gzip(e) => e.write_all(data),
            Self::Brotli(e) => e.write_all(data),
        };
    }

    /// Compressed bytes produced so far and not yet taken.
    pub fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Self::Gzip(e) => e.get_mut(),
            Self::Brotli(e) => e.get_mut(),
        }
    }

    /// Ends the stream; returns the remaining compressed bytes.
    pub fn finish(self) -> Vec<u8> {
        match self {
            Self::Gzip(e) => e.finish().unwrap_or_default(),
            Self::Brotli(e) => e.into_inner(),
        }
    }
}

/// The client's preferred coding among `offered` (server preference breaks ties), from
/// every `Accept-Encoding` line (RFC 9110 §12.5.3): a coding listed with `q=0`, or not
/// listed when there is no `*`, is not acceptable.
pub fn negotiate(fields: &Fields, offered: &[Coding]) -> Option<Coding> {
    let mut best: Option<(Coding, u16)> = None;
    for &coding in offered {
        let mut explicit = None;
        let mut wildcard = None;
        for value in fields.get_all(b"accept-encoding") {
            for item in value.split(|&b| b == b',') {
                let mut parts = item.split(|&b| b == b';');
                let name = trim_ows(parts.next().unwrap_or_default());
                let q = parts
                    .map(trim_ows)
                    .find_map(|p| p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q=")))
                    .map_or(1000, parse_qvalue);
                if coding.names().iter().any(|n| name.eq_ignore_ascii_case(n)) {
                    explicit = Some(explicit.map_or(q, |e: u16| e.max(q)));
                } else if name == b"*" {
                    wildcard = Some(q);
                }
            }
        }
        let q = explicit.or(wildcard).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    best.map(|(coding, _)| coding)
}

/// A qvalue as thousandths (`0.5` → 500); malformed values count as 0.
fn parse_qvalue(text: &[u8]) -> u16 {
    let text = std::str::from_utf8(text).unwrap_or("0");
    text.parse::<f32>()
        .ok()
        .filter(|q| (0.0..=1.0).contains(q))
        .map_or(0, |q| (q * 1000.0).round() as u16)
}

/// Whether the response may be compressed at all (the client's choice aside): a
/// successful, non-partial answer with a body of a compressible type, not already
/// encoded, not marked `no-transform`, and not known to be under the threshold.
pub fn eligible(config: &CompressionConfig, res: &ResponseHead, request_was_head: bool) -> bool {
    if request_was_head || !(200..300).contains(&res.status) || matches!(res.status, 204 | 206) {
        return false;
    }
    let fields = &res.fields;
    let encoded = fields
        .get_all(b"content-encoding")
        .any(|v| !trim_ows(v).eq_ignore_ascii_case(b"identity"));
    let no_transform = fields.get_all(b"cache-control").any(|v| {
        v.split(|&b| b == b',')
            .any(|d| trim_ows(d).eq_ignore_ascii_case(b"no-transform"))
    });
    if encoded || no_transform {
        return false;
    }
    if res.declared_length.is_some_and(|n| n < config.min_size) {
        return false;
    }
    let Some(content_type) = fields.get(b"content-type") else {
        return false;
    };
    let media = trim_ows(
        content_type
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default(),
    );
    if NEVER.iter().any(|n| media.eq_ignore_ascii_case(n)) {
        return false;
    }
    config.types.iter().any(|pattern| {
        let pattern = pattern.as_bytes();
        match pattern.strip_suffix(b"/*") {
            Some(major) => {
                media.len() > major.len()
                    && media[..major.len()].eq_ignore_ascii_case(major)
                    && media[major.len()] == b'/'
            }
            None => media.eq_ignore_ascii_case(pattern),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::ResponseHead;

    fn fields(accept: &str) -> Fields {
        crate::http::response::fields_of(&format!("Accept-Encoding: {accept}\r\n"))
    }

    const BOTH: [Coding; 2] = [Coding::Brotli, Coding::Gzip];

    #[test]
    fn negotiation_follows_q_values_then_server_preference() {
        assert_eq!(negotiate(&fields("gzip, br"), &BOTH), Some(Coding::Brotli));
        assert_eq!(
            negotiate(&fields("gzip;q=1, br;q=0.5"), &BOTH),
            Some(Coding::Gzip)
        );
        assert_eq!(
            negotiate(&fields("br;q=0, gzip"), &BOTH),
            Some(Coding::Gzip)
        );
        assert_eq!(negotiate(&fields("deflate"), &BOTH), None);
        assert_eq!(negotiate(&fields("*"), &BOTH), Some(Coding::Brotli));
        assert_eq!(
            negotiate(&fields("*;q=0.1, br;q=0"), &BOTH),
            Some(Coding::Gzip)
        );
        assert_eq!(negotiate(&fields("identity"), &BOTH), None);
        assert_eq!(
            negotiate(&fields("x-gzip"), &[Coding::Gzip]),
            Some(Coding::Gzip)
        );
        assert_eq!(negotiate(&fields("gzip;q=abc"), &BOTH), None);
    }

    fn config() -> CompressionConfig {
        CompressionConfig {
            codings: BOTH.to_vec(),
            min_size: 100,
            types: vec!["text/*".into(), "application/json".into()],
            gzip_level: 4,
            brotli_quality: 4,
            brotli_window: 20,
        }
    }

    fn response(head: &str) -> ResponseHead {
        let mut res = ResponseHead::default();
        res.parse(head.as_bytes(), false).expect("valid");
        res
    }

    #[test]
    fn only_compressible_unencoded_bodies_above_the_threshold() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 500\r\n\r\n";
        assert!(eligible(&config(), &response(ok), false));
        assert!(!eligible(&config(), &response(ok), true), "HEAD");
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 50\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 500\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: 500\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: public, no-transform\r\nContent-Length: 500\r\n\r\n",
            "HTTP/1.1 206 Partial Content\r\nContent-Type: text/html\r\nContent-Length: 500\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 500\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n",
        ] {
            assert!(!eligible(&config(), &response(head), false), "{head}");
        }
        let chunked = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(
            eligible(&config(), &response(chunked), false),
            "unknown length"
        );
    }

    #[test]
    fn encoders_round_trip() {
        let text = "the quick brown fox jumps over the lazy dog ".repeat(500);
        for coding in BOTH {
            let mut encoder = BodyEncoder::new(coding, &config());
            let mut out = Vec::new();
            for piece in text.as_bytes().chunks(1000) {
                encoder.write(piece);
                out.append(encoder.output());
            }
            out.extend(encoder.finish());
            assert!(out.len() < text.len() / 10, "{coding:?} compresses");
            let mut back = Vec::new();
            match coding {
                Coding::Gzip => {
                    std::io::Read::read_to_end(
                        &mut flate2::read::GzDecoder::new(&out[..]),
                        &mut back,
                    )
                    .expect("gunzip");
                }
                Coding::Brotli => {
                    brotli::BrotliDecompress(&mut &out[..], &mut back).expect("unbrotli");
                }
            }
            assert_eq!(back, text.as_bytes());
        }
    }
}
