//! Metrics (the `metrics` crate, rendered in Prometheus text by
//! metrics-exporter-prometheus on the admin listener) and [`access_log`]s.
//!
//! Recorded without contention: every worker registers its own handles, labelled with
//! `worker`, so each counter and histogram has exactly one writer core (an uncontended
//! atomic add, or a lock-free bucket append). Handles are resolved when a worker
//! installs a config snapshot, never looked up by name on the request path. Names follow
//! `gateway_<subsystem>_<what>_<unit>`; sum over `worker` for process totals.

pub mod access_log;

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Config;

/// Latency buckets (seconds): 250 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Methods with their own label value; the rest count as `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

/// Installs the process-wide Prometheus recorder; the handle renders `/metrics`.
/// Returns `None` when a recorder is already installed (a second runtime in tests).
pub fn install_recorder() -> Option<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .ok()?
        .install_recorder()
        .ok()
}

fn method_index(method: &[u8]) -> usize {
    METHODS[..7]
        .iter()
        .position(|m| m.as_bytes() == method)
        .unwrap_or(7)
}

fn status_class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5)) - 1
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One route's handles on one worker.
struct RouteMetrics {
    name: String,
    upstream: String,
    /// By method and status class, registered on first use.
    requests: Vec<Option<Counter>>,
    duration: Histogram,
    upstream_duration: Histogram,
    /// Cache answers by result, registered on first use.
    cache: [Option<Counter>; CACHE_RESULTS.len()],
}

/// One listener's handles on one worker.
pub struct ListenerMetrics {
    pub active: Gauge,
    pub accepted: Counter,
    pub tls_handshakes: Counter,
    pub tls_failures: Counter,
}

/// One upstream's handles on one worker.
pub struct UpstreamMetrics {
    pub opened: Counter,
    pub reused: Counter,
    /// Retries sent, and retries the budget refused.
    pub retries: Counter,
    pub retries_refused: Counter,
    /// Requests refused by the circuit breaker (max_connections / max_pending).
    pub overflows: Counter,
    /// Mirrored copies delivered, failed, and skipped (body too large, too many).
    pub mirrored: Counter,
    pub mirror_failures: Counter,
    pub mirror_skipped: Counter,
}

/// A worker's metric handles for one config snapshot.
pub struct WorkerMetrics {
    worker: String,
    routes: Vec<RouteMetrics>,
    /// Requests that matched no route (or failed before routing).
    unrouted: Vec<Option<Counter>>,
    pub listeners: Vec<ListenerMetrics>,
    pub upstreams: Vec<UpstreamMetrics>,
}

impl WorkerMetrics {
    /// Handles for worker `id` on `config`.
    pub fn new(id: usize, config: &Config) -> Self {
        let worker = id.to_string();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let upstream = config.upstreams[r.upstream].name.clone();
                RouteMetrics {
                    duration: histogram!("gateway_http_request_duration_seconds", "route" => r.name.clone(), "worker" => worker.clone()),
                    upstream_duration: histogram!("gateway_upstream_response_duration_seconds", "route" => r.name.clone(), "upstream" => upstream.clone(), "worker" => worker.clone()),
                    name: r.name.clone(),
                    upstream,
                    requests: vec![None; METHODS.len() * CLASSES.len()],
                    cache: Default::default(),
                }
            })
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let labels = [("listener", l.name.clone()), ("worker", worker.clone())];
                ListenerMetrics {
                    active: gauge!("gateway_listener_connections_active", &labels),
                    accepted: counter!("gateway_listener_connections_total", &labels),
                    tls_handshakes: counter!("gateway_tls_handshakes_total", &labels),
                    tls_failures: counter!("gateway_tls_handshake_failures_total", &labels),
                }
            })
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let labels = [("upstream", u.name.clone()), ("worker", worker.clone())];
                UpstreamMetrics {
                    opened: counter!("gateway_upstream_connections_opened_total", &labels),
                    reused: counter!("gateway_upstream_connections_reused_total", &labels),
                    retries: counter!("gateway_upstream_retries_total", &labels),
                    retries_refused: counter!(
                        "gateway_upstream_retries_budget_exhausted_total",
                        &labels
                    ),
                    overflows: counter!("gateway_upstream_overflows_total", &labels),
                    mirrored: counter!("gateway_upstream_mirrored_total", &labels),
                    mirror_failures: counter!("gateway_upstream_mirror_failures_total", &labels),
                    mirror_skipped: counter!("gateway_upstream_mirror_skipped_total", &labels),
                }
            })
            .collect();
        Self {
            worker,
            routes,
            unrouted: vec![None; METHODS.len() * CLASSES.len()],
            listeners,
            upstreams,
        }
    }

    /// Counts one finished request and its latency.
    pub fn request(
        &mut self,
        route: Option<usize>,
        method: &[u8],
        status: u16,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        let slot = method_index(method) * CLASSES.len() + status_class(status);
        let method = METHODS[method_index(method)];
        let class = CLASSES[status_class(status)];
        let worker = &self.worker;
        match route.and_then(|r| self.routes.get_mut(r)) {
            Some(route) => {
                route.requests[slot]
                    .get_or_insert_with(|| {
                        counter!("gateway_http_requests_total",
                            "route" => route.name.clone(), "upstream" => route.upstream.clone(),
                            "method" => method, "status_class" => class, "worker" => worker.clone())
                    })
                    .increment(1);
                route.duration.record(total.as_secs_f64());
                if let Some(upstream) = upstream {
                    route.upstream_duration.record(upstream.as_secs_f64());
                }
            }
            None => self.unrouted[slot]
                .get_or_insert_with(|| {
                    counter!("gateway_http_requests_total",
                        "route" => "", "upstream" => "",
                        "method" => method, "status_class" => class, "worker" => worker.clone())
                })
                .increment(1),
        }
    }
}

impl WorkerMetrics {
    /// A cache answer on route `route`, by result (an index into [`CACHE_RESULTS`]).
    pub fn cache_result(&mut self, route: Option<usize>, result: usize) {
        let worker = &self.worker;
        if let Some(route) = route.and_then(|r| self.routes.get_mut(r)) {
            route.cache[result]
                .get_or_insert_with(|| {
                    counter!("gateway_cache_responses_total",
                        "route" => route.name.clone(), "result" => CACHE_RESULTS[result],
                        "worker" => worker.clone())
                })
                .increment(1);
        }
    }
}

/// The results a cache answer is counted under.
pub const CACHE_RESULTS: [&str; 5] = ["hit", "stale", "revalidated", "miss", "bypass"];

/// An authentication failure, by reason (a cold path: looked up by name).
pub fn auth_failure(route: &str, reason: &'static str) {
    counter!("gateway_auth_failures_total", "route" => route.to_owned(), "reason" => reason)
        .increment(1);
}

/// A request refused by a rate limit or concurrency limit.
pub fn limit_rejection(route: &str, kind: &'static str) {
    counter!("gateway_ratelimit_rejections_total", "route" => route.to_owned(), "kind" => kind)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_classes_map_to_slots() {
        assert_eq!(method_index(b"GET"), 0);
        assert_eq!(method_index(b"PATCH"), 5);
        assert_eq!(method_index(b"BREW"), 7);
        assert_eq!(CLASSES[status_class(204)], "2xx");
        assert_eq!(CLASSES[status_class(599)], "5xx");
        assert_eq!(CLASSES[status_class(42)], "1xx");
    }
}
