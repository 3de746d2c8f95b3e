//! S7, latency at a fixed offered load, open loop: each contender gets the same request
//! rate (50% and 80% of the slowest peer's closed-loop S1 maximum) from the xtask's own
//! generator, and its p50/p99/p99.9 are compared.
//!
//! The generator (`open_loop`) schedules every request in advance and measures each
//! latency from the request's scheduled time (no coordinated omission). It runs in one
//! thread on CPU 1, the proxy on CPU 0.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    bench::{
        BenchArgs, CONTENDERS, Scenario, clock_ticks_per_sec, free_port, median, start_proxy, stop,
        tree_cpu_ticks, wait_http, wrk,
    },
    open_loop::Offer,
};

/// The closed-loop probe that sets the offered loads.
const S1_PROBE: Scenario = Scenario {
    id: "S7",
    what: "keep-alive, 64 B body (closed-loop maximum, to set the offered loads)",
    path: "/b/64",
    close: false,
    tls: false,
};

/// Connections the open-loop generator spreads its requests over.
const CONNECTIONS: usize = 32;
/// Shares of the slowest peer's maximum offered to every contender.
const LOADS: [f64; 2] = [0.5, 0.8];

/// Latencies of one open-loop run.
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    achieved: f64,
    /// Requests answered in the run.
    requests: usize,
    /// The proxy's CPU time per request during the run (NaN for the harness alone).
    cpu_us_per_request: f64,
}

/// The README section.
pub fn section(args: &BenchArgs, dir: &Path, backend: u16) -> Result<String> {
    // The slowest peer's closed-loop maximum sets the offered loads.
    let mut maxima = Vec::new();
    for contender in CONTENDERS.iter().filter(|c| **c != "gateway") {
        let port = free_port()?;
        let proxy = start_proxy(contender, dir, port, backend, None)?;
        wait_http(port, S1_PROBE.path)?;
        let result = wrk(port, &S1_PROBE, args.connections, args.duration, None);
        stop(proxy);
        let result = result?;
        eprintln!(
            "S7 probe {contender:8} {:9.0} req/s",
            result.requests_per_sec
        );
        maxima.push((*contender, result.requests_per_sec));
    }
    let (slowest, max) = maxima
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .context("no peers")?;
    let mut out = String::new();
    writeln!(
        out,
        "\nLatency at a fixed offered load (S7: open loop, {CONNECTIONS} keep-alive connections, 64 B body; offered 50% and 80% of the slowest peer's closed-loop maximum, {slowest} {max:.0} req/s; {} runs × {} s, median)\n",
        args.runs, args.duration
    )?;
    writeln!(
        out,
        "| offered req/s | contender | achieved req/s | CPU µs/request | p50 ms | p99 ms | p99.9 ms | p99 vs best peer |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for share in LOADS {
        let rate = max * share;
        let mut runs: Vec<Vec<Percentiles>> = vec![Vec::new(); CONTENDERS.len()];
        // The harness alone: the same generator straight to the backend. When its own
        // tail is long, the load is past what the generator's core sustains. (A short
        // tail does not prove the opposite: through a proxy, every wake-up of the
        // generator and the backend comes from the other CPU and costs that core more.)
        let mut direct = Vec::new();
        for _ in 0..args.runs {
            open_loop(backend, S1_PROBE.path, rate, Duration::from_secs(1))?;
            let measured = open_loop(
                backend,
                S1_PROBE.path,
                rate,
                Duration::from_secs(args.duration),
            )?;
            eprintln!(
                "S7 {rate:8.0}/s direct   p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms",
                measured.p50_ms, measured.p99_ms, measured.p999_ms
            );
            direct.push(measured);
            for (c, contender) in CONTENDERS.iter().enumerate() {
                let port = free_port()?;
                let proxy = start_proxy(contender, dir, port, backend, None)?;
                wait_http(port, S1_PROBE.path)?;
                // A short warm-up at the same rate, then the measured run.
                let warm = open_loop(port, S1_PROBE.path, rate, Duration::from_secs(1));
                let measured = warm.and_then(|_| {
                    let before = tree_cpu_ticks(proxy.id())?;
                    let mut measured = open_loop(
                        port,
                        S1_PROBE.path,
                        rate,
                        Duration::from_secs(args.duration),
                    )?;
                    let ticks = tree_cpu_ticks(proxy.id())? - before;
                    measured.cpu_us_per_request =
                        ticks as f64 * 1e6 / clock_ticks_per_sec() / measured.requests as f64;
                    Ok(measured)
                });
                stop(proxy);
                let measured = measured?;
                eprintln!(
                    "S7 {rate:8.0}/s {contender:8} p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms ({:.0} req/s, {:.1} µs CPU/request)",
                    measured.p50_ms,
                    measured.p99_ms,
                    measured.p999_ms,
                    measured.achieved,
                    measured.cpu_us_per_request
                );
                runs[c].push(measured);
            }
        }
        let pick = |c: usize, f: fn(&Percentiles) -> f64| median(runs[c].iter().map(f).collect()).0;
        let best_peer = (0..CONTENDERS.len())
            .filter(|&c| CONTENDERS[c] != "gateway")
            .map(|c| pick(c, |p| p.p99_ms))
            .fold(f64::INFINITY, f64::min);
        let direct_pick = |f: fn(&Percentiles) -> f64| median(direct.iter().map(f).collect()).0;
        writeln!(
            out,
            "| {rate:.0} | none: the generator straight to the backend | {:.0} | — | {:.2} | {:.2} | {:.2} | — |",
            direct_pick(|p| p.achieved),
            direct_pick(|p| p.p50_ms),
            direct_pick(|p| p.p99_ms),
            direct_pick(|p| p.p999_ms),
        )?;
        for (c, contender) in CONTENDERS.iter().enumerate() {
            let p99 = pick(c, |p| p.p99_ms);
            writeln!(
                out,
                "| {rate:.0} | {contender} | {:.0} | {:.1} | {:.2} | {p99:.2} | {:.2} | **{:.2}×** |",
                pick(c, |p| p.achieved),
                pick(c, |p| p.cpu_us_per_request),
                pick(c, |p| p.p50_ms),
                pick(c, |p| p.p999_ms),
                p99 / best_peer
            )?;
        }
    }
    writeln!(
        out,
        "\nTarget: the gateway's p99 no worse than the best peer's at equal load (ratio ≤ 1.0). Reproduce: `cargo xtask bench --only S7`."
    )?;
    Ok(out)
}

/// Offers `rate` requests/s of `GET path` to `port` for `duration`, open loop, from the
/// harness core (CPU 1).
fn open_loop(port: u16, path: &str, rate: f64, duration: Duration) -> Result<Percentiles> {
    let mut all = crate::open_loop::run(&Offer {
        port,
        path,
        rate,
        duration,
        connections: CONNECTIONS,
        cpu: 1,
    })?;
    if all.is_empty() {
        bail!("the open-loop run sent nothing");
    }
    all.sort_unstable();
    let at = |q: f64| f64::from(all[((all.len() as f64 * q) as usize).min(all.len() - 1)]) / 1000.0;
    Ok(Percentiles {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        achieved: all.len() as f64 / duration.as_secs_f64(),
        requests: all.len(),
        cpu_us_per_request: f64::NAN,
    })
}
