//! The gateway's own one-shot HTTP/1.1 calls (identity providers, cache refreshes): send
//! a complete request on a new connection and read one bounded response, head and
//! decoded body, with the proxy's strict response parser and chunked decoder.

use std::{net::SocketAddr, time::Duration};

use super::connect;
use crate::{
    http::{
        FramingError,
        chunked::{ChunkedDecoder, Decoded},
        response::{ResponseBody, ResponseHead},
    },
    proxy::io::{IoFailure, ReadBuf, write_all_within},
    tls::UpstreamTls,
};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Connect(#[from] super::UpstreamError),
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid response: {0}")]
    Framing(#[from] FramingError),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("connection closed before the response ended")]
    Truncated,
}

/// A response read whole.
#[derive(Debug)]
pub struct Fetched {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

/// Sends `request` (head and body, ready to write) to `addr` and reads the response,
/// its body at most `max_body` bytes, all within `timeout`.
pub async fn fetch(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    request: Vec<u8>,
    request_was_head: bool,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, CallError> {
    match monoio::time::timeout(
        timeout,
        exchange(addr, tls, request, request_was_head, timeout, max_body),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(CallError::Timeout),
    }
}

async fn exchange(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
    mut request: Vec<u8>,
    request_was_head: bool,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, CallError> {
    let mut stream = connect(addr, timeout, tls).await?;
    write_all_within(&mut stream, &mut request, timeout)
        .await
        .map_err(|failure| match failure {
            IoFailure::Timeout => CallError::Timeout,
            IoFailure::Io(e) => CallError::Io(e),
        })?;
    let mut buf = ReadBuf::with_capacity(8192);
    let mut head = ResponseHead::default();
    let head_len = loop {
        if let Some(end) = memchr::memmem::find(buf.data(), b"\r\n\r\n") {
            head.parse(&buf.data()[..end + 4], request_was_head)?;
            break end + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(CallError::TooLarge(MAX_HEAD));
        }
        if buf.fill(&mut stream, 8192).await? == 0 {
            return Err(CallError::Truncated);
        }
    };
    buf.consume(head_len);
    let mut decoded = Vec::new();
    let mut chunked = ChunkedDecoder::new();
    loop {
        let done = match head.body.unwrap_or(ResponseBody::None) {
            ResponseBody::None => true,
            ResponseBody::Length(n) => {
                if n > max_body as u64 {
                    return Err(CallError::TooLarge(max_body));
                }
                let take = (n as usize - decoded.len()).min(buf.len());
                decoded.extend_from_slice(&buf.data()[..take]);
                buf.consume(take);
                decoded.len() as u64 == n
            }
            ResponseBody::Chunked => loop {
                match chunked.step(buf.data())? {
                    Decoded::Data { start, end } => {
                        decoded.extend_from_slice(&buf.data()[start..end]);
                        buf.consume(end);
                    }
                    Decoded::NeedMore => {
                        let all = buf.len();
                        buf.consume(all);
                        break false;
                    }
                    Decoded::Done { .. } => break true,
                }
            },
            ResponseBody::UntilClose => {
                decoded.extend_from_slice(buf.data());
                let all = buf.len();
                buf.consume(all);
                false
            }
        };
        if done {
            return Ok(Fetched {
                head,
                body: decoded,
            });
        }
        if decoded.len() > max_body {
            return Err(CallError::TooLarge(max_body));
        }
        let until_close = head.body == Some(ResponseBody::UntilClose);
        match buf.fill(&mut stream, 8192).await {
            // A TLS peer that closes without close_notify also ends an until-close body.
            Ok(0) | Err(_) if until_close => {
                return Ok(Fetched {
                    head,
                    body: decoded,
                });
            }
            Ok(0) => return Err(CallError::Truncated),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
