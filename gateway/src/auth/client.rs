//! A small HTTP/1.1 client for the gateway's own calls to identity providers (JWKS
//! documents, token introspection): one request per connection, a bounded response,
//! one deadline for the whole exchange. It reuses the proxy's connect (TCP and rustls)
//! and its strict response parser and chunked decoder.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::Path,
    time::Duration,
};

use crate::{
    http::{
        FramingError,
        chunked::{ChunkedDecoder, Decoded},
        response::{ResponseBody, ResponseHead},
    },
    proxy::io::{ReadBuf, write_all_within},
    tls::UpstreamTls,
    upstream::connect,
};

/// An identity-provider URL, resolved and with its TLS settings, ready to call.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// As configured, for messages.
    pub url: String,
    addr: SocketAddr,
    authority: String,
    path_and_query: String,
    tls: Option<UpstreamTls>,
}

/// Why an endpoint URL is unusable (reported at config load).
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Connect(#[from] crate::upstream::UpstreamError),
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

impl Endpoint {
    /// Parses `url` (`http` or `https`), resolving its host now; `ca` is a PEM bundle
    /// to trust instead of the system roots.
    pub fn parse(url: &str, ca: Option<&Path>) -> Result<Self, EndpointError> {
        let bad = |reason: &str| EndpointError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let https = match parsed.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host = parsed.host_str().ok_or_else(|| bad("no host"))?.to_owned();
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| bad("no port"))?;
        let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
            .to_socket_addrs()
            .map_err(|source| EndpointError::Resolve {
                host: host.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| bad("the host has no address"))?;
        let tls = if https {
            let server_name = rustls::pki_types::ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| bad(&e.to_string()))?;
            Some(UpstreamTls {
                config: crate::tls::client_config(ca, false)?,
                server_name: Some(server_name),
                insecure_skip_verify: false,
            })
        } else {
            None
        };
        let mut path_and_query = parsed.path().to_owned();
        if let Some(query) = parsed.query() {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        let authority = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        Ok(Self {
            url: url.to_owned(),
            addr,
            authority,
            path_and_query,
            tls,
        })
    }

    /// Sends `method` with `headers` (complete lines) and `body`; returns the status and
    /// the decoded body, at most `max_body` bytes, all within `timeout`.
    pub async fn call(
        &self,
        method: &str,
        headers: &str,
        body: &[u8],
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, Vec<u8>), CallError> {
        match monoio::time::timeout(
            timeout,
            self.exchange(method, headers, body, timeout, max_body),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        headers: &str,
        body: &[u8],
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, Vec<u8>), CallError> {
        let mut stream = connect(self.addr, timeout, self.tls.as_ref()).await?;
        let mut out = format!(
            "{method} {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\nuser-agent: gateway/{}\r\naccept: application/json\r\n{headers}content-length: {}\r\n\r\n",
            self.path_and_query,
            self.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        write_all_within(&mut stream, &mut out, timeout)
            .await
            .map_err(io_failure)?;
        let mut buf = ReadBuf::with_capacity(8192);
        let mut head = ResponseHead::default();
        let head_len = loop {
            if let Some(end) = memchr::memmem::find(buf.data(), b"\r\n\r\n") {
                head.parse(&buf.data()[..end + 4], method == "HEAD")?;
                break end + 4;
            }
            if buf.len() > 64 * 1024 {
                return Err(CallError::TooLarge(64 * 1024));
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
                return Ok((head.status, decoded));
            }
            if decoded.len() > max_body {
                return Err(CallError::TooLarge(max_body));
            }
            match buf.fill(&mut stream, 8192).await {
                Ok(0) if head.body == Some(ResponseBody::UntilClose) => {
                    return Ok((head.status, decoded));
                }
                Ok(0) => return Err(CallError::Truncated),
                Ok(_) => {}
                // A TLS peer that closes without close_notify ends an until-close body.
                Err(_) if head.body == Some(ResponseBody::UntilClose) => {
                    return Ok((head.status, decoded));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn io_failure(failure: crate::proxy::io::IoFailure) -> CallError {
    match failure {
        crate::proxy::io::IoFailure::Timeout => CallError::Timeout,
        crate::proxy::io::IoFailure::Io(e) => CallError::Io(e),
    }
}
