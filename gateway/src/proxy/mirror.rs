//! Request mirroring: a sampled share of a route's requests is copied to a shadow
//! upstream (release testing on real traffic). The copy leaves once the real request's
//! body has been sent (bodies up to `max_body` are copied on the way through), on a new
//! connection in a task of its own; its answer is read and dropped, and nothing about it
//! can delay, change or fail the real request. At most [`MAX_MIRRORS_IN_FLIGHT`] copies
//! are in flight per worker; beyond that, copies are skipped and counted.

use std::{cell::Cell, rc::Rc};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::{Snapshot, Worker, connection::Connection, io::SendNow, serialize};
use crate::{config::RouteConfig, http::request::RequestBody, upstream::connect};

/// Copies in flight at once per worker.
pub const MAX_MIRRORS_IN_FLIGHT: u32 = 256;

/// A request picked for mirroring: where the copy goes and how much body it may carry.
#[derive(Debug, Clone, Copy)]
pub(super) struct MirrorPlan {
    pub upstream: usize,
    pub max_body: usize,
}

/// One copy's place under the per-worker bound.
struct MirrorSlot(Rc<Cell<u32>>);

impl Drop for MirrorSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl<S: AsyncReadRent + AsyncWriteRent + SendNow> Connection<S> {
    /// Decides whether this request is copied (sampled; never WebSocket handshakes or
    /// bodies declared larger than the limit).
    pub(super) fn plan_mirror(&mut self, worker: &Worker, route: &RouteConfig) {
        self.state.mirror = None;
        let Some(mirror) = &route.traffic.mirror else {
            return;
        };
        if self.state.head.websocket || worker.random_unit() * 10_000.0 >= f64::from(mirror.share) {
            return;
        }
        if matches!(self.state.head.body, RequestBody::Length(n) if n > mirror.max_body) {
            worker.metrics(|m| {
                if let Some(u) = m.upstreams.get(mirror.upstream) {
                    u.mirror_skipped.increment(1);
                }
            });
            return;
        }
        self.state.mirror_body.clear();
        self.state.mirror = Some(MirrorPlan {
            upstream: mirror.upstream,
            max_body: usize::try_from(mirror.max_body).unwrap_or(usize::MAX),
        });
    }

    /// Sends the copy of the request just forwarded (its body is in `mirror_body`).
    pub(super) fn dispatch_mirror(
        &mut self,
        worker: &Worker,
        snapshot: &Snapshot,
        plan: MirrorPlan,
    ) {
        let config = &snapshot.upstreams.entries[plan.upstream].config;
        let skipped = || {
            worker.metrics(|m| {
                if let Some(u) = m.upstreams.get(plan.upstream) {
                    u.mirror_skipped.increment(1);
                }
            })
        };
        let Some(slot) = worker.mirror_slot() else {
            return skipped();
        };
        let Some(target) = self.side_target(worker, snapshot, plan.upstream) else {
            return skipped();
        };
        let body = match self.state.head.body {
            RequestBody::None => RequestBody::None,
            _ => RequestBody::Length(self.state.mirror_body.len() as u64),
        };
        let mut bytes =
            Vec::with_capacity(self.state.out.capacity() + self.state.mirror_body.len() + 32);
        serialize::request_head(
            &mut bytes,
            &self.state.head,
            self.state.head.method(),
            &self.state.path,
            body,
            &self.forwarding(snapshot),
        );
        // Marked, so the shadow can tell copies from real traffic.
        bytes.truncate(bytes.len() - 2);
        bytes.extend_from_slice(b"x-gateway-mirror: 1\r\n\r\n");
        bytes.extend_from_slice(&self.state.mirror_body);
        let (sent, failed) = worker.metrics(|m| {
            m.upstreams
                .get(plan.upstream)
                .map(|u| (u.mirrored.clone(), u.mirror_failures.clone()))
                .unzip()
        });
        let addr = config.targets[target].addr;
        let tls = config.tls.clone();
        let (connect_timeout, read_timeout) = (config.connect_timeout, config.read_timeout);
        monoio::spawn(async move {
            let _slot = slot;
            let delivered = async {
                let mut stream = connect(addr, connect_timeout, tls.as_ref()).await.ok()?;
                stream.write_all(bytes).await.0.ok()?;
                // The answer is not used; reading its first bytes lets the shadow finish
                // before the connection closes.
                let answer = Vec::with_capacity(1024);
                let (read, _) = monoio::time::timeout(read_timeout, stream.read(answer))
                    .await
                    .ok()?;
                read.ok().filter(|n| *n > 0)
            }
            .await;
            let counter = if delivered.is_some() { sent } else { failed };
            if let Some(counter) = counter {
                counter.increment(1);
            }
        });
    }
}

impl Worker {
    /// A place for one more mirrored request on this worker, if under the bound.
    fn mirror_slot(&self) -> Option<MirrorSlot> {
        let count = &self.mirrors_in_flight;
        (count.get() < MAX_MIRRORS_IN_FLIGHT).then(|| {
            count.set(count.get() + 1);
            MirrorSlot(count.clone())
        })
    }
}
