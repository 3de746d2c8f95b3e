//! Phase "forward" of an aggregating route: the calls of its
//! [`crate::mediate::aggregate::Aggregate`] go out concurrently (each to a balanced
//! target of its upstream, on its own connection, within its own timeout), and the
//! merged JSON is the answer. A partial answer says which calls failed in the
//! `x-aggregate-partial` header and its `_errors` member.

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::{
    Snapshot, Worker,
    connection::Connection,
    error::{ProxyError, write_json_response},
    io::{SendNow, write_all_within},
    serialize::header,
};
use crate::{
    config::{Limits, PathMatch, RouteConfig},
    mediate::{
        Mediation,
        aggregate::{Aggregate, Call, Outcome, PathPart, merge},
    },
    upstream::fetch::fetch,
};

impl<S: AsyncReadRent + AsyncWriteRent + SendNow> Connection<S> {
    /// Answers the request with the merged answers of `aggregate`'s calls; returns
    /// whether the client connection stays open.
    pub(super) async fn answer_aggregate(
        &mut self,
        worker: &Worker,
        snapshot: &Snapshot,
        route: &RouteConfig,
        limits: &Limits,
        mediation: &Mediation,
        aggregate: &Aggregate,
    ) -> Result<bool, ProxyError> {
        let Some(close) = self.settle_pending_body(false, limits).await else {
            return Err(ProxyError::DownstreamClosed);
        };
        let close = close || !self.state.head.keep_alive || worker.drain.is_draining();
        let mut pending = Vec::with_capacity(aggregate.calls.len());
        for call in &aggregate.calls {
            let Some(target) = self.side_target(worker, snapshot, call.upstream) else {
                pending.push(None);
                continue;
            };
            let config = &snapshot.upstreams.entries[call.upstream].config;
            let addr = config.targets[target].addr;
            let request = self.call_request(route, call);
            let tls = config.tls.clone();
            let (timeout, max_body) = (call.timeout, mediation.max_body);
            pending.push(Some(monoio::spawn(async move {
                fetch(addr, tls.as_ref(), request, false, timeout, max_body).await
            })));
        }
        let started = std::time::Instant::now();
        let mut outcomes = Vec::with_capacity(pending.len());
        for handle in pending {
            outcomes.push(match handle {
                None => Outcome::Failed("no available target".into()),
                Some(handle) => match handle.await {
                    Ok(fetched) => Outcome::Answered {
                        status: fetched.head.status,
                        body: fetched.body,
                    },
                    Err(error) => Outcome::Failed(error.to_string()),
                },
            });
        }
        self.state.upstream_latency = Some(started.elapsed());
        let (mut merged, failed) = merge(&aggregate.calls, outcomes)?;
        if let Some(edits) = &mediation.response_edits {
            edits.apply(&mut merged);
        }
        let body = serde_json::to_vec(&merged).unwrap_or_default();
        if !failed.is_empty() {
            header(
                &mut self.state.reply_headers,
                b"x-aggregate-partial",
                failed.join(", ").as_bytes(),
            );
        }
        self.state.out.clear();
        write_json_response(
            &mut self.state.out,
            200,
            b"application/json",
            &body,
            &self.state.request_id,
            close,
            &self.state.reply_headers,
        );
        if self.state.head.is_head() {
            self.state.out.truncate(self.state.out.len() - body.len());
        }
        self.state.status = 200;
        self.state.bytes_out = body.len() as u64;
        self.state.response_started = true;
        let sent = write_all_within(&mut self.stream, &mut self.state.out, limits.idle_timeout)
            .await
            .is_ok();
        Ok(sent && !close)
    }

    /// The request one call sends: its method and templated path, the client's query
    /// when asked, and the forwarding, identity and credential headers.
    fn call_request(&self, route: &RouteConfig, call: &Call) -> Vec<u8> {
        let captures = match &route.path {
            PathMatch::Regex(re) => re.captures(self.state.head.routing_path()),
            _ => None,
        };
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(call.method.as_bytes());
        out.push(b' ');
        for part in &call.path {
            match part {
                PathPart::Literal(text) => out.extend_from_slice(text.as_bytes()),
                PathPart::Capture(name) => {
                    if let Some(value) = captures.as_ref().and_then(|c| c.name(name)) {
                        out.extend_from_slice(value.as_bytes());
                    }
                }
            }
        }
        if call.forward_query
            && let Some(query) = self.state.head.query()
        {
            out.push(b'?');
            out.extend_from_slice(query);
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !self.state.head.authority().is_empty() {
            header(&mut out, b"host", self.state.head.authority());
        }
        header(&mut out, b"x-request-id", &self.state.request_id);
        header(&mut out, b"x-forwarded-for", &self.client_text);
        header(&mut out, b"x-forwarded-proto", self.proto.as_bytes());
        if let Some(authorization) = self.state.head.fields.get(b"authorization") {
            header(&mut out, b"authorization", authorization);
        }
        out.extend_from_slice(&self.state.upstream_headers);
        out.extend_from_slice(b"accept: application/json\r\nconnection: close\r\n");
        if !matches!(call.method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS") {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}
