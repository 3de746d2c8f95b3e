//! Helpers for the integration tests: start the real `gateway` binary on a config,
//! real HTTP backends on ephemeral loopback ports, and a small raw HTTP/1.1 client.
//! Everything started here is stopped when its handle drops, even when a test fails.

pub mod backend;
pub mod client;
pub mod faults;
pub mod gateway;
pub mod idp;
pub mod jwt;
pub mod netns;
pub mod soak;
pub mod tls;

pub use backend::{Backend, Behavior};
pub use client::{Response, raw_exchange, read_response, read_response_from};
pub use gateway::Gateway;
