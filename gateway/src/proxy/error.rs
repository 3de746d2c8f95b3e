//! The proxy's error type and the one place errors become responses.
//!
//! Every failure knows its side: the client's request (4xx, connection closed after the
//! answer), the upstream (5xx), or the client's connection itself (nothing to answer).

use crate::{auth::AuthFailure, http::FramingError, upstream::UpstreamError};

/// Everything that can end a request early.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    Request(#[from] FramingError),
    #[error("request head not received in time")]
    HeadTimeout,
    #[error("request body stalled")]
    BodyTimeout,
    #[error("client connection failed: {0}")]
    Downstream(std::io::Error),
    #[error("client closed the connection mid-request")]
    DownstreamClosed,
    #[error("no route matches")]
    NoRoute,
    #[error("client address not admitted on this route")]
    IpDenied,
    #[error("{0}")]
    Auth(crate::auth::AuthFailure),
    #[error("rate limit exceeded")]
    RateLimited,
    #[error("the consumer's {0}ly quota is spent")]
    QuotaExceeded(&'static str),
    #[error("too many requests in flight on this route or upstream")]
    TooManyInFlight,
    #[error("upstream has no available target")]
    NoTarget,
    #[error("upstream is at its {0} limit")]
    Overloaded(&'static str),
    #[error("{0}")]
    Connect(#[from] UpstreamError),
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream connection failed: {0}")]
    UpstreamIo(std::io::Error),
    #[error("upstream closed the connection early")]
    UpstreamClosed,
    #[error("upstream sent an invalid response: {0}")]
    UpstreamFraming(FramingError),
    #[error("{0}")]
    Mediation(Box<crate::mediate::MediationError>),
}

impl From<crate::mediate::MediationError> for ProxyError {
    fn from(error: crate::mediate::MediationError) -> Self {
        Self::Mediation(Box::new(error))
    }
}

/// What the client is told about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub status: u16,
    /// Stable machine-readable code for the JSON body.
    pub code: &'static str,
}

impl ProxyError {
    /// The response for this error, or `None` when the client cannot be answered
    /// (its connection failed, or the response already started).
    pub fn answer(&self) -> Option<ErrorAnswer> {
        let (status, code) = match self {
            Self::Request(FramingError::HeadTooLarge) => (431, "request_header_too_large"),
            Self::Request(FramingError::TooManyHeaders) => (431, "too_many_headers"),
            Self::Request(FramingError::UriTooLong) => (414, "uri_too_long"),
            Self::Request(FramingError::BodyTooLarge) => (413, "body_too_large"),
            Self::Request(FramingError::ExpectationFailed) => (417, "expectation_failed"),
            Self::Request(FramingError::MethodNotImplemented) => (501, "method_not_implemented"),
            Self::Request(FramingError::Malformed(_)) => (400, "bad_request"),
            Self::HeadTimeout => (408, "request_timeout"),
            Self::BodyTimeout => (408, "request_body_timeout"),
            Self::Downstream(_) | Self::DownstreamClosed => return None,
            Self::NoRoute => (404, "no_route"),
            Self::IpDenied => (403, "ip_denied"),
            Self::Auth(AuthFailure::InsufficientScope) => (403, "insufficient_scope"),
            Self::Auth(AuthFailure::ConsumerNotAllowed) => (403, "consumer_not_allowed"),
            Self::Auth(AuthFailure::ClaimMismatch) => (403, "claim_mismatch"),
            Self::Auth(AuthFailure::Missing) => (401, "unauthorized"),
            Self::Auth(AuthFailure::InvalidToken(_)) => (401, "invalid_token"),
            Self::Auth(AuthFailure::UnknownApiKey) => (401, "invalid_api_key"),
            Self::Auth(AuthFailure::Unavailable) => (503, "auth_unavailable"),
            Self::RateLimited => (429, "rate_limited"),
            Self::QuotaExceeded(_) => (429, "quota_exceeded"),
            Self::TooManyInFlight => (503, "too_many_in_flight"),
            Self::NoTarget => (503, "no_upstream_target"),
            Self::Overloaded(_) => (503, "upstream_overloaded"),
            Self::Connect(_) => (502, "upstream_connect_failed"),
            Self::UpstreamTimeout => (504, "upstream_timeout"),
            Self::UpstreamIo(_) | Self::UpstreamClosed => (502, "upstream_connection_failed"),
            Self::UpstreamFraming(_) => (502, "upstream_invalid_response"),
            Self::Mediation(e) => (e.status(), e.code()),
        };
        Some(ErrorAnswer { status, code })
    }

    /// Whether the connection to the client must close after answering.
    pub fn closes_connection(&self) -> bool {
        !matches!(
            self,
            Self::NoRoute
                | Self::IpDenied
                | Self::Auth(_)
                | Self::RateLimited
                | Self::QuotaExceeded(_)
                | Self::TooManyInFlight
                | Self::NoTarget
                | Self::Overloaded(_)
                | Self::Connect(_)
                | Self::UpstreamTimeout
                | Self::UpstreamIo(_)
                | Self::UpstreamClosed
                | Self::UpstreamFraming(_)
                | Self::Mediation(_)
        )
    }

    /// Appends the complete response for this error (`answer` must be its
    /// [`ProxyError::answer`]): a problem document for mediation errors, the gateway's
    /// `{code, message}` otherwise.
    pub fn write_response(
        &self,
        out: &mut Vec<u8>,
        answer: ErrorAnswer,
        request_id: &[u8],
        close: bool,
        extra_headers: &[u8],
    ) {
        match self {
            Self::Mediation(e) => write_json_response(
                out,
                answer.status,
                b"application/problem+json",
                &e.problem(),
                request_id,
                close,
                extra_headers,
            ),
            _ => write_error_response(
                out,
                answer,
                &self.to_string(),
                request_id,
                close,
                extra_headers,
            ),
        }
    }
}

/// Appends a complete JSON error response to `out`.
pub fn write_error_response(
    out: &mut Vec<u8>,
    answer: ErrorAnswer,
    message: &str,
    request_id: &[u8],
    close: bool,
    extra_headers: &[u8],
) {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        code: &'a str,
        message: &'a str,
    }
    // Serializing two strings cannot fail.
    let body = serde_json::to_vec(&Body {
        code: answer.code,
        message,
    })
    .unwrap_or_default();
    write_json_response(
        out,
        answer.status,
        b"application/json",
        &body,
        request_id,
        close,
        extra_headers,
    );
}

/// Appends a complete response the gateway composed: `status`, a JSON `body` of
/// `content_type`, the request id, and the listener's and policy's header lines.
pub fn write_json_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &[u8],
    body: &[u8],
    request_id: &[u8],
    close: bool,
    extra_headers: &[u8],
) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: ",
        status,
        crate::http::reason_phrase(status),
    );
    out.extend_from_slice(content_type);
    let _ = write!(out, "\r\ncontent-length: {}\r\n", body.len());
    if !request_id.is_empty() {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(request_id);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(extra_headers);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_valid_json_with_exact_length() {
        let mut out = Vec::new();
        let answer = ErrorAnswer {
            status: 502,
            code: "upstream_connect_failed",
        };
        write_error_response(
            &mut out,
            answer,
            "connect to \"x\"\n failed",
            b"abc",
            true,
            b"",
        );
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        let parsed: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(parsed["code"], "upstream_connect_failed");
        assert_eq!(parsed["message"], "connect to \"x\"\n failed");
    }
}
