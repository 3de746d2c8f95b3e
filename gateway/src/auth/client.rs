//! Identity-provider endpoints (JWKS documents, token introspection): a URL resolved and
//! checked at load, called with [`crate::upstream::fetch`] (one request per connection,
//! a bounded response, one deadline for the whole exchange).

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::Path,
    time::Duration,
};

use crate::{tls::UpstreamTls, upstream::fetch::fetch};

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

pub use crate::upstream::fetch::CallError;

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
        let mut request = format!(
            "{method} {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\nuser-agent: gateway/{}\r\naccept: application/json\r\n{headers}content-length: {}\r\n\r\n",
            self.path_and_query,
            self.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let fetched = fetch(
            self.addr,
            self.tls.as_ref(),
            request,
            method == "HEAD",
            timeout,
            max_body,
        )
        .await?;
        Ok((fetched.head.status, fetched.body))
    }
}
