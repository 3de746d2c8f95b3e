//! Bench sections for traffic features, each against nginx doing the same job in the
//! same run (interleaved, median of the runs):
//! - S12, cache hits: the gateway's cache versus nginx `proxy_cache`, both keyed on
//!   method, host and URI with a 60 s TTL, a 4 KB body, keep-alive;
//! - S13, gzip: a 16 KB HTML page compressed for every response at level 4 by both.

use std::{fmt::Write as _, io::Read as _, io::Write as _, path::Path};

use anyhow::{Context, Result, bail};

use crate::bench::{
    BenchArgs, GatewayPolicy, NginxExtra, Sample, Scenario, free_port, measure, median,
    start_gateway, start_nginx, stop, wait_http,
};

const S12: Scenario = Scenario {
    id: "S12",
    what: "keep-alive, 4 KB body served from the proxy's cache (60 s TTL)",
    path: "/b/4k",
    close: false,
    tls: false,
};

const S13: Scenario = Scenario {
    id: "S13",
    what: "keep-alive, 16 KB HTML page gzip-compressed per response (level 4)",
    path: "/b/page.html",
    close: false,
    tls: false,
};

/// The page S13 compresses: 16 KiB of HTML with the redundancy of a real one.
pub fn html_page() -> String {
    let mut page = String::from("<!doctype html><html><head><title>bench</title></head><body>\n");
    let mut i = 0;
    while page.len() < 16 * 1024 - 32 {
        let _ = writeln!(
            page,
            "<div class=\"row\" id=\"r{i}\"><span class=\"name\">item {i}</span><span class=\"price\">{}.{:02}</span></div>",
            i * 7 % 100,
            i * 13 % 100
        );
        i += 1;
    }
    page.push_str("</body></html>\n");
    page
}

/// One contender of a section: how to start it and the header that proves it did the
/// work (a cache hit, a compressed body).
struct Contender {
    name: &'static str,
    gateway: Option<GatewayPolicy>,
    nginx: Option<NginxExtra>,
}

/// S12 and S13; returns the README section.
pub fn section(
    args: &BenchArgs,
    dir: &Path,
    backend: u16,
    cache: bool,
    gzip: bool,
) -> Result<String> {
    let mut out = String::new();
    if cache {
        let contenders = [
            Contender {
                name: "gateway",
                gateway: Some(GatewayPolicy {
                    route: "cache = { default_ttl = \"60s\" }\n".into(),
                    ..GatewayPolicy::default()
                }),
                nginx: None,
            },
            Contender {
                name: "nginx",
                gateway: None,
                nginx: Some(NginxExtra {
                    http: format!(
                        "  proxy_cache_path {}/nginx-cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=10m use_temp_path=off;",
                        dir.display()
                    ),
                    location: "proxy_cache bench; proxy_cache_valid 200 60s; proxy_cache_key $request_method$host$request_uri; add_header X-Cache $upstream_cache_status;".into(),
                }),
            },
        ];
        out.push_str(&run(
            args,
            dir,
            backend,
            &S12,
            &contenders,
            None,
            ("x-cache", "HIT"),
        )?);
    }
    if gzip {
        let script = dir.join("gzip.lua");
        std::fs::write(&script, "wrk.headers[\"Accept-Encoding\"] = \"gzip\"\n")?;
        let contenders = [
            Contender {
                name: "gateway",
                gateway: Some(GatewayPolicy {
                    route: "compression = { algorithms = [\"gzip\"], gzip_level = 4, min_size = \"1KiB\" }\n".into(),
                    ..GatewayPolicy::default()
                }),
                nginx: None,
            },
            Contender {
                name: "nginx",
                gateway: None,
                nginx: Some(NginxExtra {
                    http: String::new(),
                    location: "gzip on; gzip_comp_level 4; gzip_types text/html; gzip_min_length 1024; gzip_proxied any; gzip_vary on;".into(),
                }),
            },
        ];
        out.push_str(&run(
            args,
            dir,
            backend,
            &S13,
            &contenders,
            Some(&script),
            ("content-encoding", "gzip"),
        )?);
    }
    Ok(out)
}

/// Asks `port` for `path` twice (the first may fill a cache) and checks that the second
/// answer carries `proof`, so each contender is measured doing the work.
fn check_proof(port: u16, path: &str, proof: (&str, &str)) -> Result<()> {
    let mut head = String::new();
    for _ in 0..2 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: bench\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no response head")?;
        head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    }
    let (name, value) = proof;
    let wanted = format!("{name}: {}", value.to_ascii_lowercase());
    if !head.lines().any(|l| l.trim() == wanted) {
        bail!("the answer lacks `{wanted}`, so the run would not measure it:\n{head}");
    }
    Ok(())
}

fn run(
    args: &BenchArgs,
    dir: &Path,
    backend: u16,
    scenario: &Scenario,
    contenders: &[Contender],
    script: Option<&Path>,
    proof: (&str, &str),
) -> Result<String> {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
    for round in 0..args.runs {
        for (c, contender) in contenders.iter().enumerate() {
            let port = free_port()?;
            let proxy = match (&contender.gateway, &contender.nginx) {
                (Some(policy), _) => start_gateway(dir, port, backend, None, policy)?,
                (None, Some(extra)) => start_nginx(dir, port, backend, None, extra)?,
                (None, None) => bail!("contender {} has no config", contender.name),
            };
            wait_http(port, scenario.path)?;
            check_proof(port, scenario.path, proof)?;
            let sample = measure(&proxy, port, scenario, args, script, contender.name, round);
            stop(proxy);
            let sample = sample?;
            samples[c].push(sample);
        }
    }
    let mut out = String::new();
    writeln!(
        out,
        "\n{} ({}; {} runs × {} s, median)\n",
        scenario.id, scenario.what, args.runs, args.duration
    )?;
    writeln!(
        out,
        "| proxy | CPU µs/request | requests/s | MB/s | p99 ms | CPU ratio (nginx ÷ gateway) |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let cpu = |c: usize| median(samples[c].iter().map(|s| s.cpu_us_per_request).collect()).0;
    for (c, contender) in contenders.iter().enumerate() {
        let (rps, ..) = median(samples[c].iter().map(|s| s.requests_per_sec).collect());
        let (mb, ..) = median(samples[c].iter().map(|s| s.mb_per_sec).collect());
        let (p99, ..) = median(samples[c].iter().map(|s| s.p99_ms).collect());
        let ratio = if c == 0 {
            format!("**{:.2}**", cpu(1) / cpu(0))
        } else {
            "".to_owned()
        };
        writeln!(
            out,
            "| {} | {:.2} | {rps:.0} | {mb:.1} | {p99:.2} | {ratio} |",
            contender.name,
            cpu(c)
        )?;
    }
    writeln!(
        out,
        "\nTarget: at or above nginx (ratio ≥ 1.0). Reproduce: `cargo xtask bench --only {}`.",
        scenario.id
    )?;
    Ok(out)
}
