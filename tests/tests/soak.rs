//! A short soak: twenty seconds of mixed traffic (keep-alive, a new connection per
//! request, TLS handshakes, malformed requests) with a reload every two seconds; nothing
//! fails and the gateway's memory, descriptors and upstream connections stay bounded.
//! `cargo xtask soak --minutes N` runs the same for longer.

use std::time::Duration;

use gateway_tests::soak;

#[test]
fn a_short_soak_stays_within_bounds() {
    let report = soak::Fixture::start().run(Duration::from_secs(20), Duration::from_secs(2));
    eprintln!("{}", report.table());
    assert_eq!(
        report.failed, 0,
        "requests failed during the soak: {report:?}"
    );
    assert!(
        report.answered > 500,
        "too little traffic to mean anything: {report:?}"
    );
    assert!(report.reloads >= 5, "{report:?}");
    let (rss, fds) = report.growth();
    assert!(
        rss < 16 << 20,
        "RSS grew by {rss} bytes after warm-up:\n{}",
        report.table()
    );
    assert!(
        fds < 32,
        "descriptors grew by {fds} after warm-up:\n{}",
        report.table()
    );
    let most_upstream = report
        .samples
        .iter()
        .map(|s| s.upstream_connections)
        .max()
        .unwrap_or(0);
    assert!(
        most_upstream <= 64,
        "upstream connections piled up ({most_upstream}):\n{}",
        report.table()
    );
}
