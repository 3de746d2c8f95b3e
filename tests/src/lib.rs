//! Helpers for the integration tests: start the real `gateway` binary on a config,
//! real HTTP backends on ephemeral loopback ports, and a small raw HTTP/1.1 client.
//! Everything started here is stopped when its handle drops, even when a test fails.

pub mod backend;
pub mod client;
pub mod fabric;
pub mod faults;
pub mod gateway;
pub mod idp;
pub mod jwt;
pub mod netns;
pub mod service;
pub mod soak;
pub mod tls;

pub use backend::{Backend, Behavior};

/// `tool` when it is there; otherwise `None` after a loud skip message, or a failure
/// when `cargo xtask test` (`GATEWAY_REQUIRE_TOOLS`) promised it is installed.
pub fn tool_or_skip<T>(test: &str, tool: Option<T>, missing: &str) -> Option<T> {
    if tool.is_none() {
        assert!(
            std::env::var_os("GATEWAY_REQUIRE_TOOLS").is_none(),
            "{test}: required under `cargo xtask test`, but {missing}"
        );
        eprintln!("\n*** SKIPPED {test}: {missing} ***\n");
    }
    tool
}
/// `sha256:<hex>` API-key entries are written with this: the lower-case hex SHA-256 of
/// `text`, as `printf %s KEY | sha256sum` prints it.
pub fn sha256_hex(text: &str) -> String {
    ::gateway::auth::sha256(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Pins thread `tid` (0: the calling thread) to `cpu`, best effort: per-CPU BPF state
/// (SYN buckets, the L4 admission window) is only predictable from one core, and the
/// benchmarks keep the harness off the proxy's core.
pub fn pin_thread(tid: i32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity
    // only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub use client::{Response, raw_exchange, read_response, read_response_from};
pub use gateway::Gateway;
