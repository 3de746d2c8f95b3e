//! The gateway appliance: an eBPF/io_uring-accelerated L4/L7 API gateway.
//!
//! Modules, one concern each: [`config`] (schema, validation), [`runtime`] (workers,
//! pinning, listeners, shutdown), [`http`] (codec, framing), [`router`], [`upstream`]
//! (pools, balancing), [`auth`] (credentials, identities), [`ratelimit`] (global
//! lock-free limits), [`observe`] (metrics), [`admin`] (the admin API), [`mediate`] (protocol translation, body edits, validation), [`proxy`] (the request pipeline), [`xdp`] (the kernel program's
//! loader). See the README for the request path drawn phase by phase.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod edge;
pub mod http;
pub mod l4;
pub mod mediate;
pub mod metering;
pub mod observe;
pub mod proxy;
pub mod ratelimit;
pub mod router;
pub mod runtime;
pub mod tls;
pub mod upstream;
pub mod webhooks;
pub mod xdp;
