//! The mediated request path, for routes with a [`Mediation`]: phase "forward" reads the
//! request body whole (bounded), validates it, edits it and translates it into the
//! upstream call ([`Outbound`]), then the usual try loop sends that call; phase "response
//! filters" reads the upstream's body whole, translates it back, edits it and answers
//! with a fresh `content-length` (problems as RFC 9457 documents). Bodies over the
//! route's limit are refused when the route must read them, and streamed untouched when
//! it only edits them.

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use serde_json::Value;

use super::{
    Snapshot, Worker,
    buffered::{BodyFraming, PeekError, Peeked, peek_body},
    connection::{BodyState, Connection},
    error::{ProxyError, write_json_response},
    io::{IoFailure, SendNow, write_all_within},
    serialize::{self, OutFraming},
};
use crate::{
    config::{Limits, PathMatch, RouteConfig, UpstreamConfig},
    http::{request::RequestBody, response::ResponseBody},
    mediate::{
        Mediation, MediationError, Translation, is_json_content_type,
        params::{self, RequestView},
        schema::Checked,
    },
    upstream::UpstreamStream,
};

/// The upstream request a mediated route sends instead of the client's.
#[derive(Debug)]
pub(super) struct Outbound {
    /// `None`: the client's method.
    pub method: Option<&'static [u8]>,
    pub body: Vec<u8>,
    /// The upstream speaks another protocol: its answer is translated.
    pub translated: bool,
}

/// Request headers that describe the client's body or its wishes about the response,
/// which no longer hold once the request is translated.
const TRANSLATED_DROPS: [&[u8]; 9] = [
    b"content-type",
    b"accept",
    b"accept-encoding",
    b"range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"soapaction",
];

impl<S: AsyncReadRent + AsyncWriteRent + SendNow> Connection<S> {
    /// Phase "forward" of a mediated route: prepares the [`Outbound`] call, then runs
    /// the try loop with it.
    pub(super) async fn forward_mediated(
        &mut self,
        worker: &Worker,
        snapshot: &Snapshot,
        route: &RouteConfig,
        upstream: usize,
        limits: &Limits,
        mediation: &Mediation,
    ) -> Result<bool, ProxyError> {
        if let Some(aggregate) = &mediation.aggregate {
            return self
                .answer_aggregate(worker, snapshot, route, limits, mediation, aggregate)
                .await;
        }
        self.prepare_outbound(route, limits, mediation).await?;
        if mediation.rewrites_response() {
            // The answer is parsed: it must come unencoded and whole.
            self.state
                .head
                .fields
                .drop_named(&[&b"accept-encoding"[..], b"range"]);
        }
        self.forward(worker, snapshot, route, upstream, limits)
            .await
    }

    async fn prepare_outbound(
        &mut self,
        route: &RouteConfig,
        limits: &Limits,
        mediation: &Mediation,
    ) -> Result<(), ProxyError> {
        let has_body = !matches!(
            self.state.head.body,
            RequestBody::None | RequestBody::Length(0)
        );
        let mut raw = Vec::new();
        if has_body && mediation.needs_request_body() {
            match self.read_request_body(limits, mediation.max_body).await? {
                Some(body) => raw = body,
                None if mediation.requires_request_body() => {
                    return Err(MediationError::RequestTooLarge(mediation.max_body).into());
                }
                // Too large to edit: it goes upstream untouched, streamed.
                None => return Ok(()),
            }
        }
        let read = self.state.body == BodyState::Done && has_body;
        let json_content = self
            .state
            .head
            .fields
            .get(b"content-type")
            .is_some_and(is_json_content_type);
        let mut json = if read && json_content {
            Some(
                serde_json::from_slice::<Value>(&raw)
                    .map_err(|e| MediationError::BodyNotJson(e.to_string()))?,
            )
        } else {
            None
        };
        let body_unreadable = read && !json_content;
        if let Some(validator) = &mediation.validator {
            if body_unreadable && validator.checks_body() {
                return Err(MediationError::NotJsonContent.into());
            }
            validator
                .check(&Checked {
                    method: self.state.head.method(),
                    path: &self.state.head.path,
                    query: self.state.head.query(),
                    fields: &self.state.head.fields,
                    body: json.as_ref(),
                })
                .map_err(MediationError::SchemaViolations)?;
        }
        if let (Some(edits), Some(body)) = (&mediation.request_edits, json.as_mut()) {
            edits.apply(body);
        }
        let Some(translation) = &mediation.translation else {
            if read {
                let body = match (&mediation.request_edits, json) {
                    (Some(_), Some(edited)) => serde_json::to_vec(&edited).unwrap_or_default(),
                    _ => raw,
                };
                self.state.outbound = Some(Outbound {
                    method: None,
                    body,
                    translated: false,
                });
            }
            return Ok(());
        };
        if body_unreadable {
            return Err(MediationError::NotJsonContent.into());
        }
        let captures = match &route.path {
            PathMatch::Regex(re) => re.captures(self.state.head.routing_path()),
            _ => None,
        };
        let view = RequestView {
            captures,
            query: self.state.head.query(),
            fields: &self.state.head.fields,
            body: json.as_ref(),
        };
        let mut body = Vec::with_capacity(512);
        let mut headers = Vec::with_capacity(128);
        match translation {
            Translation::Graphql(call) => {
                let variables = params::collect(&call.variables, &view)
                    .map_err(MediationError::InvalidParameters)?;
                call.request_body(&variables, &mut body);
                headers.extend_from_slice(
                    b"content-type: application/json\r\naccept: application/json\r\n",
                );
                self.state.path.clear();
                self.state.path.extend_from_slice(call.endpoint.as_bytes());
            }
            Translation::Soap(call) => {
                let values = if call.parameters.is_empty() {
                    match json {
                        Some(Value::Object(members)) => members,
                        None => serde_json::Map::new(),
                        Some(_) => {
                            return Err(MediationError::InvalidParameters(vec![
                                crate::mediate::Violation::new(
                                    "",
                                    "the body must be a JSON object",
                                ),
                            ])
                            .into());
                        }
                    }
                } else {
                    params::collect(&call.parameters, &view)
                        .map_err(MediationError::InvalidParameters)?
                };
                call.envelope(&values, &mut body)
                    .map_err(MediationError::InvalidParameters)?;
                call.header_lines(&mut headers);
                if let Some(endpoint) = &call.endpoint {
                    self.state.path.clear();
                    self.state.path.extend_from_slice(endpoint.as_bytes());
                }
            }
        }
        self.state.head.fields.drop_named(&TRANSLATED_DROPS);
        self.state.upstream_headers.extend_from_slice(&headers);
        // The values the query carried are in the call now.
        self.state.query_buf.clear();
        self.state.query_rewritten = true;
        self.state.outbound = Some(Outbound {
            method: Some(b"POST"),
            body,
            translated: true,
        });
        Ok(())
    }

    /// Reads the client's body whole when it is at most `max` bytes (`None`: larger,
    /// and still unread in the buffer).
    async fn read_request_body(
        &mut self,
        limits: &Limits,
        max: usize,
    ) -> Result<Option<Vec<u8>>, ProxyError> {
        let framing = match self.state.head.body {
            RequestBody::Length(n) => BodyFraming::Length(n),
            RequestBody::Chunked => BodyFraming::Chunked,
            RequestBody::None => return Ok(Some(Vec::new())),
        };
        if let BodyFraming::Length(n) = framing
            && n > max as u64
        {
            return Ok(None);
        }
        if self.state.head.expect_continue {
            let mut interim = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            write_all_within(&mut self.stream, &mut interim, limits.idle_timeout)
                .await
                .map_err(|failure| match failure {
                    IoFailure::Timeout => ProxyError::BodyTimeout,
                    IoFailure::Io(e) => ProxyError::Downstream(e),
                })?;
            self.state.head.expect_continue = false;
        }
        let peeked = peek_body(
            &mut self.state.rbuf,
            &mut self.stream,
            framing,
            max,
            limits.body_read_timeout,
        )
        .await
        .map_err(|error| {
            self.state.body = BodyState::Unframed;
            match error {
                PeekError::Read(IoFailure::Timeout) => ProxyError::BodyTimeout,
                PeekError::Read(IoFailure::Io(e)) => ProxyError::Downstream(e),
                PeekError::Closed => ProxyError::DownstreamClosed,
                PeekError::Framing(e) => ProxyError::Request(e),
            }
        })?;
        match peeked {
            Peeked::Complete { raw_len, body } => {
                self.state.rbuf.consume(raw_len);
                self.state.body = BodyState::Done;
                self.state.bytes_in = raw_len as u64;
                Ok(Some(body))
            }
            Peeked::TooLarge => Ok(None),
        }
    }

    /// Phase "response filters" of a mediated route: reads the upstream's body whole,
    /// translates and edits it, and answers. Returns whether the upstream connection and
    /// the client connection may be reused. A response the route does not rewrite (not
    /// JSON, encoded, or too large to edit) is relayed untouched.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay_mediated(
        &mut self,
        upstream: &mut UpstreamStream,
        config: &UpstreamConfig,
        limits: &Limits,
        worker: &Worker,
        via: &str,
        route: &RouteConfig,
        mediation: &Mediation,
    ) -> Result<(bool, bool), ProxyError> {
        let translated = self.state.outbound.as_ref().is_some_and(|o| o.translated);
        let framing = match self.state.response.body.unwrap_or(ResponseBody::None) {
            ResponseBody::None => None,
            ResponseBody::Length(n) => Some(BodyFraming::Length(n)),
            ResponseBody::Chunked => Some(BodyFraming::Chunked),
            ResponseBody::UntilClose => Some(BodyFraming::UntilClose),
        };
        let encoded = self
            .state
            .response
            .fields
            .get(b"content-encoding")
            .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
        let json = self
            .state
            .response
            .fields
            .get(b"content-type")
            .is_some_and(is_json_content_type);
        let editable = mediation.response_edits.is_some() && json && !encoded && framing.is_some();
        if !translated && !editable {
            return self
                .relay_response(upstream, config, limits, worker, via, route)
                .await;
        }
        if translated && encoded {
            return Err(
                MediationError::BadUpstreamBody("the upstream encoded its answer".into()).into(),
            );
        }
        let body = match framing {
            None => Vec::new(),
            Some(framing) => {
                let peeked = peek_body(
                    &mut self.state.upstream_buf,
                    upstream,
                    framing,
                    mediation.max_body,
                    config.read_timeout,
                )
                .await
                .map_err(|error| match error {
                    PeekError::Read(IoFailure::Timeout) => ProxyError::UpstreamTimeout,
                    PeekError::Read(IoFailure::Io(e)) => ProxyError::UpstreamIo(e),
                    PeekError::Closed => ProxyError::UpstreamClosed,
                    PeekError::Framing(e) => ProxyError::UpstreamFraming(e),
                })?;
                match peeked {
                    Peeked::Complete { raw_len, body } => {
                        self.state.upstream_buf.consume(raw_len);
                        body
                    }
                    Peeked::TooLarge if translated => {
                        return Err(MediationError::ResponseTooLarge(mediation.max_body).into());
                    }
                    Peeked::TooLarge => {
                        return self
                            .relay_response(upstream, config, limits, worker, via, route)
                            .await;
                    }
                }
            }
        };
        let status = self.state.response.status;
        let result = match (&mediation.translation, translated) {
            (Some(Translation::Graphql(call)), true) => call.response(status, &body),
            (Some(Translation::Soap(call)), true) => call.response(status, &body),
            _ => serde_json::from_slice::<Value>(&body).map_err(|e| {
                MediationError::BadUpstreamBody(format!("the JSON body does not parse: {e}"))
            }),
        };
        let upstream_reusable = self.state.response.reusable
            && self.state.upstream_buf.is_empty()
            && framing != Some(BodyFraming::UntilClose);
        if !self.state.upstream_buf.is_empty() {
            let all = self.state.upstream_buf.len();
            self.state.upstream_buf.consume(all);
        }
        let keep_alive = self.state.head.keep_alive && !worker.drain.is_draining();
        self.state.out.clear();
        match result {
            Ok(mut value) => {
                if let Some(edits) = &mediation.response_edits {
                    edits.apply(&mut value);
                }
                let body = serde_json::to_vec(&value).unwrap_or_default();
                if translated {
                    self.state.response.fields.drop_named(&[
                        &b"content-type"[..],
                        b"etag",
                        b"last-modified",
                        b"content-md5",
                    ]);
                    self.state
                        .reply_headers
                        .extend_from_slice(b"content-type: application/json\r\n");
                } else {
                    self.state
                        .response
                        .fields
                        .drop_named(&[&b"etag"[..], b"content-md5"]);
                }
                if self.state.cors_applied {
                    self.state.response.drop_cors_fields();
                }
                let client = serialize::ClientSide {
                    via,
                    request_id: &self.state.request_id,
                    keep_alive,
                    client_minor: self.state.head.version_minor,
                    extra_headers: &self.state.reply_headers,
                };
                let framing =
                    if self.state.response.status == 204 || self.state.response.status == 304 {
                        OutFraming::None
                    } else {
                        OutFraming::Length(body.len() as u64)
                    };
                serialize::response_head(
                    &mut self.state.out,
                    &self.state.response,
                    framing,
                    &client,
                );
                if !self.state.head.is_head() && framing != OutFraming::None {
                    self.state.out.extend_from_slice(&body);
                }
                self.state.status = self.state.response.status;
                self.state.bytes_out = body.len() as u64;
            }
            Err(error) => {
                tracing::debug!(%error, status, "upstream answer refused by mediation");
                let problem = error.problem();
                self.state.status = error.status();
                write_json_response(
                    &mut self.state.out,
                    self.state.status,
                    b"application/problem+json",
                    &problem,
                    &self.state.request_id,
                    !keep_alive,
                    &self.state.reply_headers,
                );
                if self.state.head.is_head() {
                    self.state
                        .out
                        .truncate(self.state.out.len() - problem.len());
                }
                self.state.bytes_out = problem.len() as u64;
            }
        }
        self.state.response_started = true;
        write_all_within(&mut self.stream, &mut self.state.out, limits.idle_timeout)
            .await
            .map_err(|failure| match failure {
                IoFailure::Timeout => ProxyError::BodyTimeout,
                IoFailure::Io(e) => ProxyError::Downstream(e),
            })?;
        Ok((upstream_reusable, keep_alive))
    }
}
