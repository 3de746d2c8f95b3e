//! The admin API's OpenAPI 3 document, built from the same endpoint table the server
//! dispatches on, so the two cannot disagree.

use serde_json::{Value, json};

/// One endpoint: path, method, summary, success status, whether it needs the token.
struct Endpoint {
    path: &'static str,
    method: &'static str,
    summary: &'static str,
    ok: u16,
    content: &'static str,
    public: bool,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/health",
        method: "GET",
        summary: "Liveness: 200 while the admin thread runs. No token needed.",
        ok: 200,
        content: "application/json",
        public: true,
    },
    Endpoint {
        path: "/dashboard",
        method: "GET",
        summary: "Live dashboard (HTML): requests/s, errors, latency per route, targets, limits, XDP drops. The page fetches data with the token.",
        ok: 200,
        content: "text/html",
        public: true,
    },
    Endpoint {
        path: "/portal",
        method: "GET",
        summary: "Developer portal (HTML): every route with methods, path, credentials, rate limit, OpenAPI operations, and a try-it form.",
        ok: 200,
        content: "text/html",
        public: true,
    },
    Endpoint {
        path: "/status",
        method: "GET",
        summary: "Version, uptime, workers, listeners, config file, reload count, edge enforcement.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/config",
        method: "GET",
        summary: "The running config as loaded, secrets redacted.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/routes",
        method: "GET",
        summary: "Routes in config order with their matchers, upstream and policy.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/upstreams",
        method: "GET",
        summary: "Upstreams with balancing, target health, requests in flight and circuit-breaker state (open connections, waiting requests).",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/cache/purge",
        method: "POST",
        summary: "Removes cached responses on every worker: ?key=KEY (exact, e.g. `GET example.com/a?x=1`) or ?prefix=PREFIX (e.g. `GET example.com/images/`); answers how many keys went.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/ratelimit",
        method: "GET",
        summary: "Requests that fit now for one key of one limit: ?limit=route:NAME|consumer:NAME&key=VALUE.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/metrics",
        method: "GET",
        summary: "Prometheus text exposition of every gateway metric.",
        ok: 200,
        content: "text/plain",
        public: false,
    },
    Endpoint {
        path: "/reload",
        method: "POST",
        summary: "Reload the config file: 200 when in service, 422 with every problem when refused (the running config stays).",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/acl",
        method: "GET",
        summary: "Deny and allow entries, from the config and live, with their remaining TTL and where they are enforced.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/acl/add",
        method: "POST",
        summary: "Add (or renew) a live entry: ?list=deny|allow&cidr=CIDR[&ttl=10m]. Enforced in XDP when attached, else at accept.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/acl/remove",
        method: "POST",
        summary: "Remove a live entry: ?list=deny|allow&cidr=CIDR (404 when there is none).",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/audit",
        method: "GET",
        summary: "The audit trail: recent changes (reloads, ACL edits) with who, when, and before/after.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/usage",
        method: "GET",
        summary: "Usage metering: requests per consumer (with its plan's quotas and what is left) and per consumer and route, for the current UTC day and month.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/usage.csv",
        method: "GET",
        summary: "The same usage as CSV for billing: consumer, route, day, day_requests, month, month_requests.",
        ok: 200,
        content: "text/csv",
        public: false,
    },
    Endpoint {
        path: "/webhooks",
        method: "GET",
        summary: "Webhook subscribers and the last deliveries (newest first) with attempt, status and outcome.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/l4",
        method: "GET",
        summary: "L4 services balanced in XDP: VIP, targets with weight, health, ring slots, and packet, byte and new-flow counters.",
        ok: 200,
        content: "application/json",
        public: false,
    },
    Endpoint {
        path: "/openapi.json",
        method: "GET",
        summary: "This document.",
        ok: 200,
        content: "application/json",
        public: false,
    },
];

/// Whether `path` is an admin endpoint.
pub fn is_endpoint(path: &str) -> bool {
    ENDPOINTS.iter().any(|e| e.path == path)
}

/// The method `path` answers.
pub fn method_of(path: &str) -> &'static str {
    ENDPOINTS
        .iter()
        .find(|e| e.path == path)
        .map_or("GET", |e| e.method)
}

/// The OpenAPI 3.0 document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for e in ENDPOINTS {
        let mut responses = serde_json::Map::new();
        responses.insert(
            e.ok.to_string(),
            json!({ "description": "success", "content": { e.content: {} } }),
        );
        if !e.public {
            responses.insert(
                "401".into(),
                json!({ "description": "missing or wrong bearer token", "content": { "application/json": {} } }),
            );
        }
        if e.path == "/reload" {
            responses.insert(
                "422".into(),
                json!({ "description": "the new config was refused; body lists every problem", "content": { "application/json": {} } }),
            );
        }
        if e.path.starts_with("/acl/") {
            responses.insert(
                "400".into(),
                json!({ "description": "missing or invalid cidr, list or ttl", "content": { "application/json": {} } }),
            );
        }
        if e.path == "/acl/remove" {
            responses.insert(
                "404".into(),
                json!({ "description": "no such live entry", "content": { "application/json": {} } }),
            );
        }
        if e.path == "/ratelimit" {
            responses.insert(
                "400".into(),
                json!({ "description": "unknown limit or missing parameter", "content": { "application/json": {} } }),
            );
        }
        let mut operation = json!({
            "summary": e.summary,
            "operationId": e.path.trim_start_matches('/').replace(['.', '/'], "_"),
            "responses": responses,
        });
        if e.public {
            operation["security"] = json!([]);
        }
        if e.path.starts_with("/acl/") {
            operation["parameters"] = json!([
                { "name": "list", "in": "query", "required": false, "schema": { "type": "string", "enum": ["deny", "allow"] } },
                { "name": "cidr", "in": "query", "required": true, "schema": { "type": "string" } },
                { "name": "ttl", "in": "query", "required": false, "schema": { "type": "string" } },
            ]);
        }
        if e.path == "/ratelimit" {
            operation["parameters"] = json!([
                { "name": "limit", "in": "query", "required": true, "schema": { "type": "string" } },
                { "name": "key", "in": "query", "required": false, "schema": { "type": "string" } },
            ]);
        }
        paths.insert(
            e.path.to_owned(),
            json!({ e.method.to_ascii_lowercase(): operation }),
        );
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "gateway admin API",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        },
        "security": [ { "bearer": [] } ],
        "paths": paths,
    })
}
