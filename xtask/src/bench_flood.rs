//! The flood section of `cargo xtask bench` (BENCH.md S10): legitimate clients' requests/s
//! and p99 while a denied source floods the gateway with SYNs (at paced rates up to what
//! one sender core sustains here), with the deny list (10,000 prefixes plus the flooder)
//! in XDP, in nftables (`netdev` ingress, the earliest nft hook) and in the gateway's
//! userspace only.
//!
//! Topology, built so a 2-CPU box behaves like a gateway core receiving from a wire:
//! - the gateway (one worker) and its backend on CPU 0; the gateway listens on the outer
//!   end of a veth pair, which receives through threaded NAPI (GRO on), its NAPI thread
//!   pinned to CPU 0 and real-time (as a softirq would be), and RPS sends whatever veth
//!   passes outside NAPI to CPU 0 as well, so every received packet — XDP, nftables, the
//!   TCP stack — costs CPU 0, as a NIC queue serving the gateway's core would;
//! - wrk (legitimate clients) and the flooder run inside the client namespace on CPU 1;
//! - everything the clients send reaches the gateway's interface as XDP frames, not
//!   socket buffers, as it would from a NIC: the namespace routes the gateway's address
//!   over a second veth pair whose far end runs a bench-only XDP program
//!   (`gateway-ebpf/src/bin/wire.rs`) redirecting every frame into the client veth (see
//!   [`Wire`]); the flooder writes its Ethernet frames on that pair too;
//! - the flooder is paced (`--flood-rate`, SYNs per second) so it takes the same CPU 1
//!   time in every mode; the reference run sends the same paced stream into a dead end
//!   inside the namespace instead, so wrk has the same CPU in every mode;
//! - its spoofed source is routed back into the namespace, so reverse-path filtering
//!   cannot drop the flood before the policy does.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::Command,
    sync::{Arc, atomic::AtomicBool},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use gateway_tests::netns::{VethNamespace, run_in_namespace};

use crate::bench::{BenchArgs, median, parse_wrk, spawn_pinned, start_backend, stop};

const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 77);
const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The client end's address inside the namespace (the fixture's).
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
const NFT_TABLE: &str = "gwbench_flood";

/// How the deny list is enforced in one mode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No flood: the reference throughput (the list in XDP).
    Baseline,
    Xdp,
    Nftables,
    Userspace,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Baseline => "no flood at the gateway (list in XDP)",
            Self::Xdp => "flood, list in XDP",
            Self::Nftables => "flood, list in nftables (netdev ingress)",
            Self::Userspace => "flood, list in the gateway only (accept)",
        }
    }
}

/// The wire pair's ends inside the namespace: frames written on `WIRE_IN` arrive at
/// `WIRE_OUT`, whose XDP program redirects them.
const WIRE_IN: &str = "gwwire0";
const WIRE_OUT: &str = "gwwire1";
/// A pair inside the namespace whose far end takes no XDP frames: the dead end.
const DEAD_END: &str = "gwdead0";

/// The clients' way to the gateway: a veth pair inside the namespace whose far end runs
/// the bench-wire XDP program, redirecting every frame into the client veth, so the
/// gateway's interface receives XDP frames without socket buffers, as from a NIC (the
/// namespace routes the gateway's address through it, wrk's traffic included). For the
/// reference run the flooder's frames are diverted into a dead end instead. The
/// redirect work stays on the clients' CPU.
struct Wire {
    /// Holds the program attached (and its targets) while the bench runs.
    _program: aya::Ebpf,
    divert: aya::maps::Array<aya::maps::MapData, u32>,
    gateway_mac: [u8; 6],
}

impl Wire {
    fn build(veth: &VethNamespace, object: &Path) -> Result<Self> {
        let mac_text = std::fs::read_to_string(format!("/sys/class/net/{}/address", veth.outer))?;
        let mut gateway_mac = [0u8; 6];
        for (byte, part) in gateway_mac.iter_mut().zip(mac_text.trim().split(':')) {
            *byte = u8::from_str_radix(part, 16)?;
        }
        let gateway = GATEWAY_ADDR.to_string();
        let client = CLIENT_ADDR.to_string();
        let mac = mac_text.trim().to_owned();
        for step in [
            vec![
                "link", "add", WIRE_IN, "type", "veth", "peer", "name", WIRE_OUT,
            ],
            vec![
                "link", "add", DEAD_END, "type", "veth", "peer", "name", "gwdead1",
            ],
            vec!["link", "set", WIRE_IN, "up"],
            vec!["link", "set", WIRE_OUT, "up"],
            vec!["link", "set", DEAD_END, "up"],
            vec!["link", "set", "gwdead1", "up"],
            vec![
                "neigh",
                "replace",
                &gateway,
                "lladdr",
                &mac,
                "dev",
                WIRE_IN,
                "nud",
                "permanent",
            ],
            vec!["route", "replace", &gateway, "dev", WIRE_IN, "src", &client],
        ] {
            let ok = Command::new("ip")
                .args(["-n", &veth.namespace])
                .args(&step)
                .status()?
                .success();
            if !ok {
                bail!("ip -n {} {step:?} failed", veth.namespace);
            }
        }
        // Checksums are filled in by the sender: an XDP frame carries no "to be completed
        // by the hardware" mark.
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &veth.namespace,
                "ethtool",
                "-K",
                WIRE_IN,
                "tx",
                "off",
            ])
            .output()?
            .status
            .success();
        if !ok {
            bail!("cannot turn checksum offload off on {WIRE_IN}");
        }
        let bytes = std::fs::read(object)
            .with_context(|| format!("read the bench-wire object {}", object.display()))?;
        let inner = veth.inner.clone();
        let program = run_in_namespace(&veth.namespace, move || -> Result<aya::Ebpf> {
            let index = |name: &str| -> Result<u32> {
                let c = std::ffi::CString::new(name)?;
                // SAFETY: a valid NUL-terminated name.
                match unsafe { libc::if_nametoindex(c.as_ptr()) } {
                    0 => bail!("no interface {name} in the namespace"),
                    i => Ok(i),
                }
            };
            let mut ebpf = aya::Ebpf::load(&bytes)?;
            {
                let mut targets = aya::maps::DevMap::try_from(
                    ebpf.map_mut("WIRE_TARGETS").context("WIRE_TARGETS map")?,
                )?;
                targets.set(0, index(&inner)?, None, 0)?;
                targets.set(1, index(DEAD_END)?, None, 0)?;
            }
            let program: &mut aya::programs::Xdp = ebpf
                .program_mut("bench_wire")
                .context("bench_wire program")?
                .try_into()?;
            program.load()?;
            program.attach(WIRE_OUT, aya::programs::XdpMode::Driver)?;
            Ok(ebpf)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the wire setup thread panicked"))??;
        let mut program = program;
        let divert = aya::maps::Array::try_from(
            program.take_map("WIRE_DIVERT").context("WIRE_DIVERT map")?,
        )?;
        Ok(Self {
            _program: program,
            divert,
            gateway_mac,
        })
    }

    /// The flooder's frames from now on go to the gateway (or into the dead end).
    fn deliver(&mut self, to_gateway: bool) -> Result<()> {
        let divert = if to_gateway {
            0
        } else {
            u32::from_ne_bytes(FLOODER.octets())
        };
        self.divert.set(0, divert, 0)?;
        Ok(())
    }
}

/// One run: legitimate requests/s, p99 (ms), flood packets/s sent.
struct Run {
    requests_per_sec: f64,
    p99_ms: f64,
    flood_pps: f64,
}

fn deny_list() -> Vec<String> {
    let mut list: Vec<String> = (0..10_000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256 % 256, i % 256))
        .collect();
    list.push(format!("{FLOODER}/32"));
    list
}

fn gateway_config(veth: &VethNamespace, port: u16, backend: u16, xdp: bool) -> String {
    let deny: Vec<String> = deny_list().iter().map(|n| format!("\"{n}\"")).collect();
    let interface = if xdp {
        format!("interface = \"{}\"\nmode = \"driver\"\n", veth.outer)
    } else {
        String::new()
    };
    format!(
        "[gateway]\nworkers = 1\nlog_level = \"warn\"\n\n[[listeners]]\nname = \"bench\"\nbind = \"{GATEWAY_ADDR}:{port}\"\n\n[[upstreams]]\nname = \"backend\"\ntargets = [ {{ addr = \"127.0.0.1:{backend}\" }} ]\nmax_idle_per_target = 128\n\n[[routes]]\nname = \"bench\"\npath_prefix = \"/b\"\nupstream = \"backend\"\n\n[xdp]\n{interface}deny = [{}]\n",
        deny.join(", ")
    )
}

fn nft(args: &[&str]) -> Result<()> {
    let out = Command::new("nft").args(args).output().context("run nft")?;
    if !out.status.success() {
        bail!("nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The nftables table of the nft mode; removed on drop.
struct NftTable;

impl NftTable {
    fn install(dir: &Path, device: &str) -> Result<Self> {
        let file = dir.join("flood.nft");
        std::fs::write(
            &file,
            format!(
                "table netdev {NFT_TABLE} {{\n  set deny {{ type ipv4_addr; flags interval; elements = {{ {} }} }}\n  chain ingress {{ type filter hook ingress device \"{device}\" priority -500; policy accept; ip saddr @deny counter drop; }}\n}}\n",
                deny_list().join(", ")
            ),
        )?;
        nft(&["-f", file.to_str().context("utf8")?])?;
        Ok(Self)
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "netdev", NFT_TABLE]);
    }
}

/// wrk from inside the namespace, on CPU 1.
fn wrk_inside(
    veth: &VethNamespace,
    port: u16,
    args: &BenchArgs,
) -> Result<crate::bench::WrkResult> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &veth.namespace,
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
        ])
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.duration))
        .args(["--latency", "--timeout", "2s"])
        .arg(format!("http://{GATEWAY_ADDR}:{port}/b/64"))
        .output()
        .context("run wrk in the namespace")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text)
}

/// The outer end receives in a NAPI thread pinned to CPU 0 (GRO gives veth a NAPI
/// instance without XDP too). Done after every gateway start: attaching or detaching XDP
/// recreates the instance.
fn receive_on_cpu0(device: &str) -> Result<()> {
    let out = Command::new("ethtool")
        .args(["-K", device, "gro", "on"])
        .output()
        .context("run ethtool")?;
    if !out.status.success() {
        bail!(
            "ethtool -K {device} gro on: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    napi_thread_on(device, 0)?;
    // Interrupt coalescing, as a NIC does it: after a poll the NAPI instance stays armed
    // and polls again 20 µs later instead of being woken (an IPI) by every burst.
    std::fs::write(format!("/sys/class/net/{device}/napi_defer_hard_irqs"), "2")
        .with_context(|| format!("napi_defer_hard_irqs on {device}"))?;
    std::fs::write(
        format!("/sys/class/net/{device}/gro_flush_timeout"),
        "20000",
    )
    .with_context(|| format!("gro_flush_timeout on {device}"))?;
    // Frames veth hands to the stack outside NAPI go to CPU 0's backlog too.
    std::fs::write(format!("/sys/class/net/{device}/queues/rx-0/rps_cpus"), "1")
        .with_context(|| format!("RPS on {device}"))?;
    Ok(())
}

/// Makes `device` receive in a NAPI thread, pinned to `cpu` and real-time like the
/// softirq a NIC's NAPI runs in (it preempts other work at once instead of queueing
/// behind it while the 256-slot ring overflows).
pub fn napi_thread_on(device: &str, cpu: usize) -> Result<()> {
    std::fs::write(format!("/sys/class/net/{device}/threaded"), "1")
        .with_context(|| format!("threaded NAPI on {device}"))?;
    let prefix = format!("napi/{device}-");
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            gateway_tests::pin_thread(pid, cpu);
            let param = libc::sched_param { sched_priority: 50 };
            // SAFETY: a valid pid and parameter.
            unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) };
            pinned += 1;
        }
    }
    if pinned == 0 {
        bail!("no NAPI thread for {device}");
    }
    Ok(())
}

/// What every run shares: the namespace, the wire, the work folder, the backend port.
struct Harness<'a> {
    veth: &'a VethNamespace,
    wire: Wire,
    dir: &'a Path,
    backend: u16,
}

fn measure(mode: Mode, rate: u64, harness: &mut Harness<'_>, args: &BenchArgs) -> Result<Run> {
    let Harness {
        veth,
        wire,
        dir,
        backend,
    } = harness;
    let (veth, dir, backend) = (*veth, *dir, *backend);
    let port = crate::bench::free_port()?;
    let conf = dir.join("flood-gateway.toml");
    let xdp = matches!(mode, Mode::Baseline | Mode::Xdp);
    std::fs::write(&conf, gateway_config(veth, port, backend, xdp))?;
    let bin = crate::root().join("target/release/gateway");
    let gateway = spawn_pinned(
        "0",
        bin.to_str().context("utf8")?,
        &["run", "--config", conf.to_str().context("utf8")?],
    )?;
    let nft_table = if mode == Mode::Nftables {
        Some(NftTable::install(dir, &veth.outer)?)
    } else {
        None
    };
    let ready = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        veth.http_get_path_from_inside(&GATEWAY_ADDR.to_string(), port, "/b/64", 2)
            .is_some_and(|l| l.starts_with("HTTP/1.1 200"))
    });
    if !ready {
        stop(gateway);
        bail!("the gateway did not serve {}", mode.label());
    }
    let stop_flood = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    receive_on_cpu0(&veth.outer)?;
    wire.deliver(mode != Mode::Baseline)?;
    // The flooder thread inherits the affinity of the thread that starts it: CPU 1.
    let flooder = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                gateway_tests::pin_thread(0, 1);
                veth.flood_syn_frames(
                    WIRE_IN,
                    wire.gateway_mac,
                    FLOODER,
                    SocketAddrV4::new(GATEWAY_ADDR, port),
                    Some(rate),
                    stop_flood.clone(),
                )
            })
            .join()
    });
    let result = wrk_inside(veth, port, args);
    stop_flood.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = match flooder {
        Ok(handle) => handle.join().unwrap_or(0),
        Err(_) => 0,
    };
    let elapsed = started.elapsed().as_secs_f64();
    drop(nft_table);
    stop(gateway);
    let result = result?;
    Ok(Run {
        requests_per_sec: result.requests_per_sec,
        p99_ms: result.p99_ms,
        flood_pps: sent as f64 / elapsed,
    })
}

/// The Markdown rows of the flood section.
pub fn section(args: &BenchArgs, dir: &Path, wire_object: &Path) -> Result<String> {
    if Command::new("nft").arg("--version").output().is_err() {
        bail!("nft is missing; `cargo xtask setup` installs nftables as root");
    }
    // The backend shares CPU 0 with the gateway: CPU 1 belongs to the clients.
    let backend = crate::bench::free_port()?;
    let _backend = start_backend(dir, backend, "0")?;
    crate::bench::wait_http(backend, "/b/64")?;
    let veth = VethNamespace::create("flood");
    // The spoofed source routes back into the namespace: rp_filter lets it in.
    let routed = Command::new("ip")
        .args([
            "route",
            "add",
            "10.213.0.64/26",
            "via",
            "10.213.0.2",
            "dev",
            &veth.outer,
        ])
        .status()?;
    if !routed.success() {
        bail!("cannot route the flooder's address into the namespace");
    }
    let wire = Wire::build(&veth, wire_object)?;
    let mut harness = Harness {
        veth: &veth,
        wire,
        dir,
        backend,
    };
    let mut out = String::new();
    writeln!(
        out,
        "\n#### XDP under a SYN flood (S10, veth, {} interleaved runs × {} s, median; 10,001-entry deny list; SYNs from a denied source; gateway, backend and packet receive on CPU 0; wrk and flooder on CPU 1)\n",
        args.runs.min(3),
        args.duration
    )?;
    writeln!(
        out,
        "| flood SYN/s | mode | legitimate req/s | kept | p99 ms | flood SYN/s sent |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for rate in &args.flood_rate {
        flood_rows(&mut out, *rate, &mut harness, args)?;
    }
    Ok(out)
}

/// Every mode at one flood rate, interleaved; one table row per mode.
fn flood_rows(
    out: &mut String,
    rate: u64,
    harness: &mut Harness<'_>,
    args: &BenchArgs,
) -> Result<()> {
    let modes = [Mode::Baseline, Mode::Xdp, Mode::Nftables, Mode::Userspace];
    let runs = args.runs.min(3);
    let mut samples: Vec<Vec<Run>> = modes.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for (m, mode) in modes.iter().enumerate() {
            let run = measure(*mode, rate, harness, args)?;
            eprintln!(
                "S10 {rate} SYN/s run {}/{runs} {:42} {:8.0} req/s p99 {:6.2} ms flood {:8.0} SYN/s",
                round + 1,
                mode.label(),
                run.requests_per_sec,
                run.p99_ms,
                run.flood_pps
            );
            samples[m].push(run);
        }
    }
    let baseline = median(samples[0].iter().map(|r| r.requests_per_sec).collect()).0;
    for (m, mode) in modes.iter().enumerate() {
        let rps = median(samples[m].iter().map(|r| r.requests_per_sec).collect()).0;
        let p99 = median(samples[m].iter().map(|r| r.p99_ms).collect()).0;
        let pps = median(samples[m].iter().map(|r| r.flood_pps).collect()).0;
        writeln!(
            out,
            "| {rate} | {} | {rps:.0} | {:.0}% | {p99:.2} | {} |",
            mode.label(),
            100.0 * rps / baseline,
            if *mode == Mode::Baseline {
                format!("{pps:.0} (into a dead end)")
            } else {
                format!("{pps:.0}")
            }
        )?;
    }
    Ok(())
}
