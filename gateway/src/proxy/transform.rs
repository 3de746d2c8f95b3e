//! Phase "transform": a route's header changes. Request lines go to the upstream headers
//! (after the names they replace are dropped from the client's), response lines to the
//! reply headers every answer of the request carries, and the upstream's lines with those
//! names are dropped from its response before it is relayed.

use std::io::Write as _;

use super::{Snapshot, connection::Connection};
use crate::{
    auth::Identity,
    config::{
        RouteConfig,
        transform::{HeaderTransform, Piece, Template, Variable},
    },
};

impl<S> Connection<S> {
    /// Applies the route's request and response header changes (and its API version
    /// header), once the request has been admitted (so the identity is known).
    pub(super) fn transform_headers(
        &mut self,
        snapshot: &Snapshot,
        route: &RouteConfig,
        identity: Option<&Identity>,
    ) {
        if let Some(crate::config::VersionConfig {
            value,
            to: crate::config::VersionTarget::Header(name),
            ..
        }) = &route.version
        {
            self.state
                .head
                .fields
                .drop_named(std::slice::from_ref(name));
            super::serialize::header(
                &mut self.state.upstream_headers,
                name.as_bytes(),
                value.as_bytes(),
            );
        }
        let traffic = &route.traffic;
        if !traffic.request_headers.is_empty() {
            self.state
                .head
                .fields
                .drop_named(&traffic.request_headers.remove);
            let mut out = std::mem::take(&mut self.state.upstream_headers);
            self.render_lines(
                &mut out,
                &traffic.request_headers,
                snapshot,
                route,
                identity,
            );
            self.state.upstream_headers = out;
        }
        if !traffic.response_headers.lines.is_empty() {
            let mut out = std::mem::take(&mut self.state.reply_headers);
            self.render_lines(
                &mut out,
                &traffic.response_headers,
                snapshot,
                route,
                identity,
            );
            self.state.reply_headers = out;
        }
    }

    /// Drops the upstream response's lines the route removes or replaces.
    pub(super) fn strip_response_headers(&mut self, route: &RouteConfig) {
        self.state
            .response
            .fields
            .drop_named(&route.traffic.response_headers.remove);
    }

    fn render_lines(
        &self,
        out: &mut Vec<u8>,
        transform: &HeaderTransform,
        snapshot: &Snapshot,
        route: &RouteConfig,
        identity: Option<&Identity>,
    ) {
        for (name, template) in &transform.lines {
            let start = out.len();
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            let value_start = out.len();
            self.render(out, template, snapshot, route, identity);
            if out.len() == value_start {
                out.truncate(start);
            } else {
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Appends `template`'s value. Every variable is header-safe: parsed request parts,
    /// validated config names, and identity values (checked when verified).
    fn render(
        &self,
        out: &mut Vec<u8>,
        template: &Template,
        snapshot: &Snapshot,
        route: &RouteConfig,
        identity: Option<&Identity>,
    ) {
        for piece in &template.0 {
            match piece {
                Piece::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Piece::Var(variable) => match variable {
                    Variable::ClientIp => {
                        let _ = write!(out, "{}", self.state.client_ip);
                    }
                    Variable::Route => out.extend_from_slice(route.name.as_bytes()),
                    Variable::Consumer => {
                        if let Some(c) = self
                            .state
                            .consumer
                            .and_then(|c| snapshot.config.consumers.get(c))
                        {
                            out.extend_from_slice(c.name.as_bytes());
                        }
                    }
                    Variable::Subject => {
                        if let Some(subject) = identity.and_then(|i| i.subject.as_deref()) {
                            out.extend_from_slice(subject.as_bytes());
                        }
                    }
                    Variable::RequestId => out.extend_from_slice(&self.state.request_id),
                    Variable::Host => out.extend_from_slice(&self.state.head.host),
                    Variable::Method => out.extend_from_slice(self.state.head.method()),
                    Variable::Path => out.extend_from_slice(&self.state.head.path),
                    Variable::Claim(claim) => {
                        if let Some(value) = identity.and_then(|i| i.claim(claim)) {
                            out.extend_from_slice(value.as_bytes());
                        }
                    }
                },
            }
        }
    }
}
