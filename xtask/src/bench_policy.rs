//! Bench section S6: what the policy phases cost on the proxy path. The same keep-alive
//! workload runs through the gateway plain and with JWT (ES256; four tokens repeated,
//! so the per-worker cache is what requests pay for) plus a per-consumer rate limit that
//! is never hit, interleaved in one run. Then criterion figures for the pieces: a cold
//! ES256/RS256 verification, a cache hit, a limiter check.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::{
    bench::{
        BenchArgs, GatewayPolicy, Sample, Scenario, free_port, median, start_gateway, stop,
        tree_cpu_ticks, wait_tcp, wrk,
    },
    cargo, root, run_checked,
};

const S6: Scenario = Scenario {
    id: "S6",
    what: "keep-alive, 64 B body, JWT ES256 (4 tokens) + per-consumer rate limit never hit",
    path: "/b/64",
    close: false,
    tls: false,
};

/// The policy config and a wrk script rotating over four valid tokens.
fn policy(dir: &Path) -> Result<(GatewayPolicy, std::path::PathBuf)> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let public = dir.join("bench-jwt.pem");
    std::fs::write(&public, pair.public_key_pem())?;
    let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut sections = format!(
        "[[auth.jwt]]\nname = \"bench\"\nissuer = \"https://idp.bench\"\naudience = [\"api\"]\nkeys = [ {{ kid = \"k1\", alg = \"ES256\", pem = \"{}\" }} ]\n\n",
        public.display()
    );
    let mut tokens = Vec::new();
    for i in 0..4 {
        writeln!(
            sections,
            "[[consumers]]\nname = \"consumer-{i}\"\njwt_subjects = [\"consumer-{i}\"]\nrate_limit = {{ rate = \"10000000/s\", burst = 10000000 }}\n"
        )?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let claims = serde_json::json!({
            "iss": "https://idp.bench", "aud": "api", "sub": format!("consumer-{i}"),
            "scope": "read", "exp": now + 24 * 3600, "iat": now,
        });
        tokens.push(jsonwebtoken::encode(&header, &claims, &signing)?);
    }
    let script = dir.join("tokens.lua");
    let list = tokens
        .iter()
        .map(|t| format!("\"Bearer {t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &script,
        format!(
            "local tokens = {{ {list} }}\nlocal i = 0\nrequest = function()\n  i = i % #tokens + 1\n  return wrk.format(\"GET\", \"{}\", {{ [\"Authorization\"] = tokens[i] }})\nend\n",
            S6.path
        ),
    )?;
    Ok((
        GatewayPolicy {
            sections,
            route: "auth = [\"bench\"]\nscopes = [\"read\"]\n".into(),
        },
        script,
    ))
}

/// Runs S6 and the micro-benchmarks; returns the README section.
pub fn section(args: &BenchArgs, dir: &Path, backend: u16, object: &Path) -> Result<String> {
    let (with_policy, script) = policy(dir)?;
    // Both variants get the same requests (with their Authorization headers) from the
    // same wrk script, so the client side costs the same.
    let variants = [
        ("plain", GatewayPolicy::default()),
        ("JWT + limit", with_policy),
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for run in 0..args.runs {
        for (v, (name, policy)) in variants.iter().enumerate() {
            let port = free_port()?;
            let proxy = start_gateway(dir, port, backend, None, policy)?;
            // The policy variant refuses unauthenticated probes: wait for the port.
            wait_tcp(port)?;
            if run == 0 {
                wrk(port, &S6, args.connections, 1, Some(&script))?;
            }
            let before = tree_cpu_ticks(proxy.id())?;
            let result = wrk(port, &S6, args.connections, args.duration, Some(&script))?;
            let after = tree_cpu_ticks(proxy.id())?;
            stop(proxy);
            anyhow::ensure!(
                result.errors == 0,
                "S6 {name}: {} errors (non-2xx or socket errors): the run does not count",
                result.errors
            );
            let cpu_us = (after - before) as f64 * 1e6 / crate::bench::clock_ticks_per_sec();
            let sample = Sample {
                cpu_us_per_request: cpu_us / result.requests as f64,
                requests_per_sec: result.requests_per_sec,
                mb_per_sec: result.bytes_per_sec / 1e6,
                p50_ms: result.p50_ms,
                p99_ms: result.p99_ms,
            };
            eprintln!(
                "S6 run {}/{} {name:12} {:7.2} µs/req {:9.0} req/s p99 {:.2} ms",
                run + 1,
                args.runs,
                sample.cpu_us_per_request,
                sample.requests_per_sec,
                sample.p99_ms
            );
            samples[v].push(sample);
        }
    }
    let mut out = String::new();
    writeln!(
        out,
        "\n### Policy cost (S6: {}; {} runs × {} s, median)\n",
        S6.what, args.runs, args.duration
    )?;
    writeln!(
        out,
        "| gateway | CPU µs/request | requests/s | p99 ms | throughput vs plain |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    let rps = |v: usize| median(samples[v].iter().map(|s| s.requests_per_sec).collect()).0;
    for (v, (name, ..)) in variants.iter().enumerate() {
        let (cpu, ..) = median(samples[v].iter().map(|s| s.cpu_us_per_request).collect());
        let (p99, ..) = median(samples[v].iter().map(|s| s.p99_ms).collect());
        writeln!(
            out,
            "| {name} | {cpu:.2} | {:.0} | {p99:.2} | **{:.1}%** |",
            rps(v),
            100.0 * rps(v) / rps(0)
        )?;
    }
    writeln!(
        out,
        "\nTarget: the policy variant keeps at least 90% of plain throughput."
    )?;
    out.push_str(&micro_benchmarks(object)?);
    Ok(out)
}

/// Criterion figures from `gateway/benches/policy.rs`.
fn micro_benchmarks(object: &Path) -> Result<String> {
    run_checked(cargo(object).args([
        "bench",
        "-p",
        "gateway",
        "--bench",
        "policy",
        "--",
        "--warm-up-time",
        "1",
        "--measurement-time",
        "3",
    ]))?;
    let mut out = String::from(
        "\n| piece (criterion, `cargo bench -p gateway --bench policy`) | mean |\n|---|---|\n",
    );
    for (id, what) in [
        ("jwt/cold_ES256", "cold JWT verification, ES256 (P-256)"),
        ("jwt/cold_RS256", "cold JWT verification, RS256 (2048-bit)"),
        ("jwt/cache_hit", "repeated token: per-worker cache hit"),
        (
            "ratelimit/check",
            "rate-limit check (shared GCRA cell, one CAS)",
        ),
        ("ratelimit/hash_and_check", "rate-limit key hash + check"),
    ] {
        let file = root()
            .join("target/criterion")
            .join(id)
            .join("new/estimates.json");
        let text =
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        let ns = json["mean"]["point_estimate"]
            .as_f64()
            .context("criterion estimate")?;
        let shown = if ns >= 1000.0 {
            format!("{:.1} µs", ns / 1000.0)
        } else {
            format!("{ns:.0} ns")
        };
        writeln!(out, "| {what} | {shown} |")?;
    }
    Ok(out)
}
