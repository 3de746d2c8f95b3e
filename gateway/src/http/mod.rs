//! HTTP/1.1 codec: strict edge framing on top of httparse's tokenizer.
//!
//! httparse only tokenizes — it accepts bare LF line ends, empty chunk sizes and more —
//! so every framing rule of RFC 9112 that matters at the edge lives here:
//! [`head::HeadScanner`] finds the end of a head and rejects bare CR/LF,
//! [`request::RequestHead`] and [`response::ResponseHead`] decide body framing and
//! classify headers, [`chunked`] decodes and re-encodes chunked bodies, [`target`]
//! normalizes the request path once. Nothing here does I/O.

pub mod chunked;
pub mod fields;
pub mod head;
pub mod request;
pub mod response;
pub mod target;

/// Hard ceiling on `limits.max_headers` (the parser's header array lives on the stack).
pub const MAX_HEADERS_CEILING: usize = 256;

/// Why a request (or an upstream response) is refused. Each maps to one status in
/// `proxy::error`; a request error always closes the connection after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("request head larger than the limit")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("request target longer than the limit")]
    UriTooLong,
    #[error("body larger than the limit")]
    BodyTooLarge,
    #[error("unsupported expectation")]
    ExpectationFailed,
    #[error("method not implemented")]
    MethodNotImplemented,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// Value of one hex digit.
#[inline]
pub fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 `tchar`.
#[inline]
pub fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`'
        | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// Parses a Content-Length field value strictly: one or more identical comma-separated
/// decimal numbers, no sign, no overflow.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result = None;
    for part in value.split(|&b| b == b',') {
        let part = trim_ows(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        match result {
            Some(prev) if prev != n => return None,
            _ => result = Some(n),
        }
    }
    result
}

/// Strips optional whitespace (SP, HTAB) from both ends.
#[inline]
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Canonical reason phrase for statuses the gateway produces itself.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::parse_content_length;

    #[test]
    fn content_length_is_strict() {
        for (input, expected) in [
            (&b"0"[..], Some(0)),
            (b"42", Some(42)),
            (b" 42 ", Some(42)),
            (b"42, 42", Some(42)),
            (b"42, 43", None),
            (b"+42", None),
            (b"-1", None),
            (b"0x10", None),
            (b"", None),
            (b"1 2", None),
            (b"99999999999999999999", None),
            (b"4 2", None),
        ] {
            assert_eq!(
                parse_content_length(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
