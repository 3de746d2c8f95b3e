//! Bench sections that compare the gateway with itself, variants interleaved in one run:
//! - S6, what the policy phases cost: the same keep-alive workload plain and with JWT
//!   (ES256; four tokens repeated, so the per-worker cache is what requests pay for) plus
//!   a per-consumer rate limit that is never hit; then criterion figures for the pieces
//!   (a cold ES256/RS256 verification, a cache hit, a limiter check);
//! - S15, what observability costs: metrics (admin API on) and access logs to a file,
//!   versus neither.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::{
    bench::{
        BenchArgs, BenchCertificate, GatewayPolicy, Sample, Scenario, free_port, measure, median,
        start_gateway, stop, wait_tcp,
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

const S11_PLAIN: Scenario = Scenario {
    id: "S11",
    what: "keep-alive, 64 B body, 1 → 2 workers",
    path: "/b/64",
    close: false,
    tls: false,
};

const S11_TLS: Scenario = Scenario {
    id: "S11",
    what: "TLS 1.3 keep-alive, 64 B body, 1 → 2 workers",
    path: "/b/64",
    close: false,
    tls: true,
};

const S15: Scenario = Scenario {
    id: "S15",
    what: "keep-alive, 64 B body, metrics + JSON access log to a file",
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
            ..GatewayPolicy::default()
        },
        script,
    ))
}

/// What [`compare`] measured: the table, and each variant's samples for figures of a
/// section's own.
pub(crate) struct Compared {
    pub(crate) table: String,
    pub(crate) samples: Vec<Vec<Sample>>,
}

/// Runs `scenario` through each gateway variant `args.runs` times, interleaved; the
/// first variant is the baseline of the "vs" column.
pub(crate) fn compare(
    args: &BenchArgs,
    dir: &Path,
    backend: u16,
    scenario: &Scenario,
    variants: &[(&str, GatewayPolicy)],
    script: Option<&Path>,
    tls: Option<&BenchCertificate>,
) -> Result<Compared> {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for run in 0..args.runs {
        for (v, (name, policy)) in variants.iter().enumerate() {
            let port = free_port()?;
            let proxy = start_gateway(dir, port, backend, tls, policy)?;
            // A variant may refuse unauthenticated probes: wait for the port.
            wait_tcp(port)?;
            let sample = measure(&proxy, port, scenario, args, script, name, run);
            stop(proxy);
            let sample = sample?;
            samples[v].push(sample);
        }
    }
    Ok(Compared {
        table: variants_table(variants, &samples)?,
        samples,
    })
}

/// The medians of each variant's samples, throughput relative to the first variant.
fn variants_table(variants: &[(&str, GatewayPolicy)], samples: &[Vec<Sample>]) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "| gateway | CPU µs/request | requests/s | p99 ms | throughput vs {} |",
        variants[0].0
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
    Ok(out)
}

/// S6 and the policy micro-benchmarks; returns the README section.
pub fn policy_section(args: &BenchArgs, dir: &Path, backend: u16, object: &Path) -> Result<String> {
    let (with_policy, script) = policy(dir)?;
    // Both variants get the same requests (with their Authorization headers) from the
    // same wrk script, so the client side costs the same.
    let variants = [
        ("plain", GatewayPolicy::default()),
        ("JWT + limit", with_policy),
    ];
    let mut out = String::new();
    writeln!(
        out,
        "\nPolicy cost (S6: {}; {} runs × {} s, median)\n",
        S6.what, args.runs, args.duration
    )?;
    out.push_str(&compare(args, dir, backend, &S6, &variants, Some(&script), None)?.table);
    writeln!(
        out,
        "\nTarget: the policy variant keeps at least 90% of plain throughput."
    )?;
    out.push_str(&micro_benchmarks(object)?);
    Ok(out)
}

/// S15: metrics and access logs on versus off.
pub fn observability_section(args: &BenchArgs, dir: &Path, backend: u16) -> Result<String> {
    let admin = free_port()?;
    let token = dir.join("admin.token");
    std::fs::write(&token, "bench-token\n")?;
    let observed = GatewayPolicy {
        sections: format!(
            "[access_log]\npath = \"{}\"\n\n",
            dir.join("access.log").display()
        ),
        gateway: format!(
            "admin = \"127.0.0.1:{admin}\"\nadmin_token_file = \"{}\"\n",
            token.display()
        ),
        ..GatewayPolicy::default()
    };
    let variants = [
        ("off", GatewayPolicy::default()),
        ("metrics + logs", observed),
    ];
    let mut out = String::new();
    writeln!(
        out,
        "\nObservability cost (S15: {}; {} runs × {} s, median)\n",
        S15.what, args.runs, args.duration
    )?;
    out.push_str(&compare(args, dir, backend, &S15, &variants, None, None)?.table);
    writeln!(
        out,
        "\nTarget: with metrics and access logs on, at least 95% of the throughput with them off."
    )?;
    Ok(out)
}

/// S11: the same workloads (S1 plain, S3 TLS) with one worker pinned to CPU 0 and with two
/// workers on the whole box. wrk connects from one address, so steering by client would
/// put every connection on one worker: the two-worker runs use the kernel's reuseport
/// pick, which spreads them.
pub fn scaling_section(
    args: &BenchArgs,
    dir: &Path,
    backend: u16,
    certificate: &BenchCertificate,
) -> Result<String> {
    let mut out = String::new();
    for (scenario, tls) in [(&S11_PLAIN, None), (&S11_TLS, Some(certificate))] {
        let variants = [
            ("1 worker", GatewayPolicy::default()),
            (
                "2 workers",
                GatewayPolicy {
                    workers: 2,
                    gateway: "worker_steering = \"kernel\"\n".into(),
                    ..GatewayPolicy::default()
                },
            ),
        ];
        writeln!(
            out,
            "\nScaling (S11, {}; {} runs × {} s, median)\n",
            scenario.what, args.runs, args.duration
        )?;
        let Compared { table, samples } =
            compare(args, dir, backend, scenario, &variants, None, tls)?;
        out.push_str(&table);
        let cpu = |v: usize| median(samples[v].iter().map(|s| s.cpu_us_per_request).collect()).0;
        writeln!(
            out,
            "\nRequests per proxy CPU-second: one worker {:.0}, two workers {:.0} ({:.2}× per core). With a core of its own for each worker, two workers would carry 2 × that = **{:.2}×** one worker's throughput; this box cannot show it directly.",
            1e6 / cpu(0),
            1e6 / cpu(1),
            cpu(0) / cpu(1),
            2.0 * cpu(0) / cpu(1),
        )?;
    }
    writeln!(
        out,
        "\nOn a 2-CPU box the second worker takes CPU from the load generator (wrk on CPU 1) and the backend, so requests/s shows that contention, not the scaling two free cores give, and the per-core figures carry the cost of the shared core too. `cargo xtask bench --only S11`."
    )?;
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
