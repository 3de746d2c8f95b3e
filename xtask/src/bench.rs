//! `cargo xtask bench`: the gateway side by side with nginx and haproxy, following
//! BENCH.md. Each proxy runs one worker pinned to CPU 0; the backend (nginx serving
//! fixed bodies) and wrk share CPU 1. The primary figure is proxy CPU time per request
//! (utime+stime of the proxy's processes over the run / requests served). Contenders
//! are interleaved (A B C A B C …) and each figure is the median of the runs, with
//! min–max. The table goes to stdout and `bench-results/`.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, ebpf, root, run_checked, setup};

/// Options of a bench run.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5)]
    pub(crate) duration: u64,
    /// Runs per contender and scenario (interleaved).
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// wrk connections for keep-alive scenarios.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Only these scenarios (S1, S2-4k, S2-64k, S5, S3, S4, S6, S7, S8, S9, S10, S11, S12,
    /// S13, S14, S15, S16); all when empty.
    #[arg(long)]
    pub(crate) only: Vec<String>,
    /// SYNs per second the S10 flooder sends (paced, so it costs the same in every
    /// mode); one table block per rate.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000, 250_000])]
    pub(crate) flood_rate: Vec<u64>,
}

pub(crate) struct Scenario {
    pub(crate) id: &'static str,
    pub(crate) what: &'static str,
    pub(crate) path: &'static str,
    pub(crate) close: bool,
    /// Clients speak TLS to the proxy (ECDSA P-256 certificate).
    pub(crate) tls: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "S1",
        what: "keep-alive, 64 B body, 100 routes",
        path: "/b/64",
        close: false,
        tls: false,
    },
    Scenario {
        id: "S2-4k",
        what: "keep-alive, 4 KB body",
        path: "/b/4k",
        close: false,
        tls: false,
    },
    Scenario {
        id: "S2-64k",
        what: "keep-alive, 64 KB body",
        path: "/b/64k",
        close: false,
        tls: false,
    },
    Scenario {
        id: "S5",
        what: "new connection per request",
        path: "/b/64",
        close: true,
        tls: false,
    },
    Scenario {
        id: "S3",
        what: "TLS 1.3 keep-alive, 64 B body",
        path: "/b/64",
        close: false,
        tls: true,
    },
    Scenario {
        id: "S4",
        what: "TLS, new connection (full handshake) per request",
        path: "/b/64",
        close: true,
        tls: true,
    },
];

pub(crate) const CONTENDERS: &[&str] = &["gateway", "nginx", "haproxy"];
const DUMMY_ROUTES: usize = 99;

/// One measured run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub(crate) cpu_us_per_request: f64,
    pub(crate) requests_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    setup::setup()?;
    for tool in ["nginx", "haproxy", "wrk", "taskset"] {
        if !Path::new("/usr/sbin").join(tool).exists() && !Path::new("/usr/bin").join(tool).exists()
        {
            bail!("{tool} is missing; `cargo xtask setup` installs it as root");
        }
    }
    let object = ebpf::build()?;
    run_checked(cargo(&object).args(["build", "--release", "-p", "gateway"]))?;
    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.id))
        .collect();
    let work = tempfile::tempdir()?;
    let certificate = BenchCertificate::new(work.path())?;
    let backend_port = free_port()?;
    let wants = |id: &str| args.only.is_empty() || args.only.iter().any(|o| o == id);
    let _backend = if scenarios.is_empty()
        && !["S6", "S7", "S8", "S11", "S12", "S13", "S14", "S15", "S16"]
            .iter()
            .any(|id| wants(id))
    {
        None
    } else {
        let backend = start_backend(work.path(), backend_port, "1")?;
        wait_http(backend_port, "/b/64")?;
        Some(backend)
    };

    let mut results: Vec<(&Scenario, &str, Vec<Sample>)> = Vec::new();
    for scenario in &scenarios {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); CONTENDERS.len()];
        for run in 0..args.runs {
            for (c, contender) in CONTENDERS.iter().enumerate() {
                let port = free_port()?;
                let tls = scenario.tls.then_some(&certificate);
                let proxy = start_proxy(contender, work.path(), port, backend_port, tls)?;
                if scenario.tls {
                    wait_tcp(port)?;
                } else {
                    wait_http(port, scenario.path)?;
                }
                let sample = measure(&proxy, port, scenario, args, None, contender, run);
                stop(proxy);
                let sample = sample?;
                samples[c].push(sample);
            }
        }
        for (c, contender) in CONTENDERS.iter().enumerate() {
            results.push((scenario, contender, samples[c].clone()));
        }
    }
    let mut table = if results.is_empty() {
        String::new()
    } else {
        render(&results, args)?
    };
    if wants("S6") {
        table.push_str(&crate::bench_features::policy_section(
            args,
            work.path(),
            backend_port,
            &object,
        )?);
    }
    if wants("S7") {
        table.push_str(&crate::bench_latency::section(
            args,
            work.path(),
            backend_port,
        )?);
    }
    if wants("S15") {
        table.push_str(&crate::bench_features::observability_section(
            args,
            work.path(),
            backend_port,
        )?);
    }
    if wants("S11") {
        table.push_str(&crate::bench_features::scaling_section(
            args,
            work.path(),
            backend_port,
            &certificate,
        )?);
    }
    if wants("S8") {
        table.push_str(&crate::bench_idle::section(
            work.path(),
            backend_port,
            &certificate,
        )?);
    }
    if wants("S12") || wants("S13") {
        table.push_str(&crate::bench_traffic::section(
            args,
            work.path(),
            backend_port,
            wants("S12"),
            wants("S13"),
        )?);
    }
    if wants("S14") {
        table.push_str(&crate::bench_mediation::section(
            args,
            work.path(),
            backend_port,
        )?);
    }
    if wants("S10") {
        if crate::is_root() {
            table.push_str(&crate::bench_flood::section(
                args,
                work.path(),
                &object.with_file_name("bench-wire"),
            )?);
        } else {
            table.push_str("\nFlood section (S10) skipped: namespaces and XDP need root.\n");
        }
    }
    if wants("S16") {
        if crate::is_root() {
            table.push_str(&crate::bench_l4::section(
                &object,
                work.path(),
                backend_port,
            )?);
        } else {
            table.push_str("\nL4 section (S16) skipped: loading BPF programs needs root.\n");
        }
    }
    if wants("S9") {
        if crate::is_root() {
            table.push_str(&crate::bench_xdp::section(&object)?);
        } else {
            table.push_str("\nXDP section (S9) skipped: loading BPF programs needs root.\n");
        }
    }
    println!("{table}");
    let dir = root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    // Only a full run replaces the table the README quotes.
    let file = dir.join(if args.only.is_empty() {
        "latest.md"
    } else {
        "partial.md"
    });
    std::fs::write(&file, &table)?;
    eprintln!("written to {}", file.display());
    Ok(())
}

/// One measured run of `scenario` against the running `proxy` on `port` (wrk on CPU 1,
/// the proxy's CPU time around it; a warm-up first on the first round). A run with
/// errors (non-2xx or socket errors) does not count.
pub(crate) fn measure(
    proxy: &Child,
    port: u16,
    scenario: &Scenario,
    args: &BenchArgs,
    script: Option<&Path>,
    label: &str,
    round: usize,
) -> Result<Sample> {
    if round == 0 {
        wrk(port, scenario, args.connections, 1, script)?;
    }
    let before = tree_cpu_ticks(proxy.id())?;
    let result = wrk(port, scenario, args.connections, args.duration, script)?;
    let after = tree_cpu_ticks(proxy.id())?;
    if result.errors > 0 {
        bail!(
            "{label} {}: {} errors (non-2xx or socket errors): the run does not count",
            scenario.id,
            result.errors
        );
    }
    let cpu_us = (after - before) as f64 * 1e6 / clock_ticks_per_sec();
    let sample = Sample {
        cpu_us_per_request: cpu_us / result.requests as f64,
        requests_per_sec: result.requests_per_sec,
        mb_per_sec: result.bytes_per_sec / 1e6,
        p50_ms: result.p50_ms,
        p99_ms: result.p99_ms,
    };
    eprintln!(
        "{} run {}/{} {label:12} {:7.2} µs/req {:9.0} req/s p50 {:.2} ms p99 {:.2} ms",
        scenario.id,
        round + 1,
        args.runs,
        sample.cpu_us_per_request,
        sample.requests_per_sec,
        sample.p50_ms,
        sample.p99_ms
    );
    Ok(sample)
}

pub(crate) fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn render(results: &[(&Scenario, &str, Vec<Sample>)], args: &BenchArgs) -> Result<String> {
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    writeln!(
        out,
        "### Benchmark ({} runs × {} s, interleaved; median, min–max)\n",
        args.runs, args.duration
    )?;
    writeln!(
        out,
        "Machine: {cpu}, {} CPUs; proxies pinned to CPU 0 with one worker; backend (nginx) and wrk on CPU 1.\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    writeln!(
        out,
        "| scenario | proxy | CPU µs/request | requests/s | MB/s | p50 ms | p99 ms | CPU ratio (best peer ÷ gateway) |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for chunk in results.chunks(CONTENDERS.len()) {
        let cpu_of = |i: usize| median(chunk[i].2.iter().map(|s| s.cpu_us_per_request).collect()).0;
        let gateway_cpu = cpu_of(0);
        let best_peer = (1..chunk.len()).map(cpu_of).fold(f64::INFINITY, f64::min);
        for (i, (scenario, contender, samples)) in chunk.iter().enumerate() {
            let (c, cmin, cmax) = median(samples.iter().map(|s| s.cpu_us_per_request).collect());
            let (r, ..) = median(samples.iter().map(|s| s.requests_per_sec).collect());
            let (mb, ..) = median(samples.iter().map(|s| s.mb_per_sec).collect());
            let (p50, ..) = median(samples.iter().map(|s| s.p50_ms).collect());
            let (p99, p99min, p99max) = median(samples.iter().map(|s| s.p99_ms).collect());
            let ratio = if i == 0 {
                format!("**{:.2}**", best_peer / gateway_cpu)
            } else {
                format!("{:.2}", c / gateway_cpu)
            };
            writeln!(
                out,
                "| {} {} | {contender} | {c:.2} ({cmin:.2}–{cmax:.2}) | {r:.0} | {mb:.1} | {p50:.2} | {p99:.2} ({p99min:.2}–{p99max:.2}) | {ratio} |",
                scenario.id, scenario.what
            )?;
        }
    }
    writeln!(
        out,
        "\nRatio ≥ 1.0 means the gateway spends no more CPU per request than the best peer (peer rows: that peer ÷ gateway)."
    )?;
    writeln!(
        out,
        "Reproduce: `cargo xtask bench --runs {} --duration {}` (load: `taskset -c 1 wrk -t1 -c{} -d{}s --latency URL`, plus `-H 'Connection: close'` for S5).",
        args.runs, args.duration, args.connections, args.duration
    )?;
    Ok(out)
}

pub(crate) struct WrkResult {
    pub(crate) requests: u64,
    pub(crate) requests_per_sec: f64,
    pub(crate) bytes_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
}

pub(crate) fn wrk(
    port: u16,
    scenario: &Scenario,
    connections: usize,
    seconds: u64,
    script: Option<&Path>,
) -> Result<WrkResult> {
    let connections = if scenario.close {
        connections.min(16)
    } else {
        connections
    };
    let mut command = Command::new("taskset");
    command.args([
        "-c",
        "1",
        "wrk",
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if scenario.close {
        command.args(["-H", "Connection: close"]);
    }
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let scheme = if scenario.tls { "https" } else { "http" };
    command.arg(format!("{scheme}://127.0.0.1:{port}{}", scenario.path));
    let out = command.output().context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text)
}

pub(crate) fn parse_wrk(text: &str) -> Result<WrkResult> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    };
    let duration_ms = |v: &str| -> f64 {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => f64::NAN,
        }
    };
    let size = |v: &str| -> f64 {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(0.0);
        n * match unit {
            "KB" => 1024.0,
            "MB" => 1024.0 * 1024.0,
            "GB" => 1024.0 * 1024.0 * 1024.0,
            _ => 1.0,
        }
    };
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("wrk output without a request count")?;
    let non_2xx: u64 = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let socket_errors: u64 = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(WrkResult {
        requests,
        requests_per_sec: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        bytes_per_sec: field("Transfer/sec:").map(|v| size(&v)).unwrap_or(0.0),
        p50_ms: field("50%").map(|v| duration_ms(&v)).unwrap_or(f64::NAN),
        p99_ms: field("99%").map(|v| duration_ms(&v)).unwrap_or(f64::NAN),
        errors: non_2xx + socket_errors,
    })
}

pub(crate) fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime+stime of `pid` and its direct children (nginx's workers), in clock ticks.
pub(crate) fn tree_cpu_ticks(pid: u32) -> Result<u64> {
    let mut total = process_ticks(pid)?;
    for child in children_of(pid)? {
        total += process_ticks(child).unwrap_or(0);
    }
    Ok(total)
}

/// Resident memory (VmRSS) of `pid` and its direct children, in bytes.
pub(crate) fn tree_rss_bytes(pid: u32) -> Result<u64> {
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    let mut total = rss(pid);
    for child in children_of(pid)? {
        total += rss(child);
    }
    Ok(total)
}

/// The direct children of `pid` (nginx's workers).
fn children_of(pid: u32) -> Result<Vec<u32>> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if child != pid && parent_of(child) == Some(pid) {
            children.push(child);
        }
    }
    Ok(children)
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn process_ticks(pid: u32) -> Result<u64> {
    let fields = stat_fields(pid).with_context(|| format!("/proc/{pid}/stat"))?;
    // After the name: state(0) ppid(1) … utime(11) stime(12).
    let utime: u64 = fields[11].parse()?;
    let stime: u64 = fields[12].parse()?;
    Ok(utime + stime)
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn wait_http(port: u16, path: &str) -> Result<()> {
    use std::io::{Read, Write};
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            if buf.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing answered 200 on port {port} for {path}")
}

/// Stops a contender and waits for it (SIGTERM, then SIGKILL).
pub(crate) fn stop(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process that is stopped on drop.
pub(crate) struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            stop(child);
        }
    }
}

pub(crate) fn spawn_pinned(cpu: &str, program: &str, args: &[&str]) -> Result<Child> {
    Command::new("taskset")
        .args(["-c", cpu, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {program}"))
}

pub(crate) fn start_backend(dir: &Path, port: u16, cpu: &str) -> Result<Guard> {
    let docroot = dir.join("docroot/b");
    std::fs::create_dir_all(&docroot)?;
    for (name, len) in [("64", 64), ("4k", 4096), ("64k", 65536)] {
        std::fs::write(docroot.join(name), vec![b'x'; len])?;
    }
    std::fs::write(docroot.join("page.html"), crate::bench_traffic::html_page())?;
    let conf = dir.join(format!("backend-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/backend-{port}.pid;\nerror_log stderr error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  default_type application/octet-stream;\n  types {{ text/html html; }}\n  sendfile on;\n  keepalive_requests 10000000;\n  open_file_cache max=16;\n  client_body_temp_path {dir}/b_body;\n  proxy_temp_path {dir}/b_proxy;\n  fastcgi_temp_path {dir}/b_fcgi;\n  uwsgi_temp_path {dir}/b_uwsgi;\n  scgi_temp_path {dir}/b_scgi;\n  server {{\n    listen 127.0.0.1:{port};\n    root {dir}/docroot;\n    location = /gql {{ default_type application/json; return 200 '{{\"data\":{{\"user\":{{\"id\":7,\"name\":\"bench user\"}}}}}}'; }}\n    location = /b/user {{ default_type application/json; return 200 '{{\"id\":7,\"name\":\"bench user\"}}'; }}\n    location = /b/orders {{ default_type application/json; return 200 '{{\"ok\":true}}'; }}\n  }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    Ok(Guard(Some(spawn_pinned(
        cpu,
        "nginx",
        &["-c", conf.to_str().context("utf8 path")?],
    )?)))
}

/// The certificate every contender serves in TLS scenarios (made at bench time).
pub(crate) struct BenchCertificate {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    /// Certificate then key in one file, as haproxy wants it.
    combined: std::path::PathBuf,
    _pki: gateway_tests::tls::TestPki,
}

impl BenchCertificate {
    /// A TLS 1.3 client that trusts the certificate.
    pub(crate) fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        self._pki.client_config(&[&rustls::version::TLS13])
    }

    fn new(dir: &Path) -> Result<Self> {
        let pki = gateway_tests::tls::TestPki::new();
        let (cert, key) = pki.issue("bench", &["localhost", "bench.test"]);
        let combined = dir.join("bench-combined.pem");
        std::fs::write(
            &combined,
            [std::fs::read(&cert)?, std::fs::read(&key)?].concat(),
        )?;
        Ok(Self {
            cert,
            key,
            combined,
            _pki: pki,
        })
    }
}

/// Waits until `port` accepts TCP connections (TLS listeners cannot be probed in plain HTTP).
pub(crate) fn wait_tcp(port: u16) -> Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            std::thread::sleep(Duration::from_millis(100));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port}")
}

pub(crate) fn start_proxy(
    name: &str,
    dir: &Path,
    port: u16,
    backend: u16,
    tls: Option<&BenchCertificate>,
) -> Result<Child> {
    match name {
        "gateway" => start_gateway(dir, port, backend, tls, &GatewayPolicy::default()),
        "nginx" => start_nginx(dir, port, backend, tls, &NginxExtra::default()),
        "haproxy" => {
            let maxconn = haproxy_maxconn();
            let mut acls = String::new();
            for i in 0..DUMMY_ROUTES {
                writeln!(
                    acls,
                    "  acl dummy{i} path_beg /dummy{i}\n  use_backend dummy if dummy{i}"
                )?;
            }
            let haproxy_tls = tls.map_or(String::new(), |c| {
                format!(" ssl crt {} alpn http/1.1", c.combined.display())
            });
            let conf = dir.join("haproxy.cfg");
            std::fs::write(
                &conf,
                format!(
                    "global\n  nbthread 1\n  maxconn {maxconn}\n\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n\nfrontend fe\n  bind 127.0.0.1:{port}{haproxy_tls}\n{acls}  default_backend be\n\nbackend be\n  server s1 127.0.0.1:{backend}\n\nbackend dummy\n  http-request return status 404\n"
                ),
            )?;
            spawn_pinned(
                "0",
                "haproxy",
                &["-db", "-f", conf.to_str().context("utf8")?],
            )
        }
        other => bail!("unknown contender {other}"),
    }
}

/// Extra config for the gateway under test: whole sections, and lines for the bench
/// route (the policy scenario adds credentials and limits).
#[derive(Default)]
pub(crate) struct GatewayPolicy {
    /// Worker threads (0 or 1: one, pinned to CPU 0; more: unpinned).
    pub workers: usize,
    /// Lines for `[gateway]`.
    pub gateway: String,
    pub sections: String,
    pub route: String,
}

/// Starts the release gateway with one worker on CPU 0: the bench route to `backend`
/// behind 99 dummy routes, as the peers are configured.
pub(crate) fn start_gateway(
    dir: &Path,
    port: u16,
    backend: u16,
    tls: Option<&BenchCertificate>,
    policy: &GatewayPolicy,
) -> Result<Child> {
    let mut routes = String::new();
    for i in 0..DUMMY_ROUTES {
        writeln!(
            routes,
            "[[routes]]\nname = \"dummy{i}\"\npath_prefix = \"/dummy{i}\"\nupstream = \"dummy\"\n"
        )?;
    }
    let gateway_tls = tls.map_or(String::new(), |c| {
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            c.cert.display(),
            c.key.display()
        )
    });
    let conf = dir.join("gateway.toml");
    std::fs::write(
        &conf,
        format!(
            "[gateway]\nworkers = {workers}\nlog_level = \"warn\"\n{gateway}\n[[listeners]]\nname = \"bench\"\nbind = \"127.0.0.1:{port}\"\n{gateway_tls}\n[[upstreams]]\nname = \"backend\"\ntargets = [ {{ addr = \"127.0.0.1:{backend}\" }} ]\nmax_idle_per_target = 128\n\n[[upstreams]]\nname = \"dummy\"\ntargets = [ {{ addr = \"127.0.0.1:9\" }} ]\n\n{sections}\n{routes}[[routes]]\nname = \"bench\"\npath_prefix = \"/b\"\nupstream = \"backend\"\n{route}",
            workers = policy.workers.max(1),
            gateway = policy.gateway,
            sections = policy.sections,
            route = policy.route,
        ),
    )?;
    let bin = root().join("target/release/gateway");
    // One worker is pinned to CPU 0 like the peers; more get the whole box.
    spawn_pinned(
        if policy.workers > 1 { "0-1" } else { "0" },
        bin.to_str().context("utf8")?,
        &["run", "--config", conf.to_str().context("utf8")?],
    )
}

/// Extra nginx configuration for a scenario: `http` block lines, and directives for the
/// bench location.
#[derive(Default)]
pub(crate) struct NginxExtra {
    pub http: String,
    pub location: String,
}

/// Starts nginx as a proxy on CPU 0: the bench location to `backend` behind 99 dummy
/// locations, keep-alive to the backend, logs off.
pub(crate) fn start_nginx(
    dir: &Path,
    port: u16,
    backend: u16,
    tls: Option<&BenchCertificate>,
    extra: &NginxExtra,
) -> Result<Child> {
    let mut locations = String::new();
    for i in 0..DUMMY_ROUTES {
        writeln!(locations, "    location /dummy{i} {{ return 404; }}")?;
    }
    let nginx_tls = tls.map_or(String::new(), |c| {
        format!(
            " ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m",
            c.cert.display(),
            c.key.display()
        )
    });
    let conf = dir.join("nginx-proxy.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/proxy.pid;\nerror_log stderr error;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_body_temp_path {dir}/p_body;\n  proxy_temp_path {dir}/p_proxy;\n  fastcgi_temp_path {dir}/p_fcgi;\n  uwsgi_temp_path {dir}/p_uwsgi;\n  scgi_temp_path {dir}/p_scgi;\n{http}\n  upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; keepalive_requests 10000000; }}\n  server {{\n    listen 127.0.0.1:{port}{nginx_tls};\n{locations}    location /b {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; {location} }}\n  }}\n}}\n",
            dir = dir.display(),
            http = extra.http,
            location = extra.location,
        ),
    )?;
    spawn_pinned("0", "nginx", &["-c", conf.to_str().context("utf8")?])
}

/// haproxy needs two descriptors per connection plus a margin: size maxconn to the
/// descriptor limit, as BENCH.md prescribes.
fn haproxy_maxconn() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok {
        (limit.rlim_cur.saturating_sub(100) / 2).max(256)
    } else {
        4096
    }
}
