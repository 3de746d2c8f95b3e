//! The L4 section of `cargo xtask bench` (S16): the XDP balancer's cost per forwarded
//! packet (`BPF_PROG_TEST_RUN`), the Maglev table build for 1,000 targets, and how
//! evenly connections spread over the workers with and without the steering program.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun, TestRunOptions};
use gateway::{config::Config, l4::L4Balancer, xdp::XdpProgram};

use crate::bench::{GatewayPolicy, free_port, start_gateway, stop, wait_http};

const L4_CONFIG: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"

[xdp]
interface = "lo"

[[l4_services]]
name = "web"
vip = "10.100.0.1"
port = 80
targets = [ { addr = "10.99.0.2" }, { addr = "10.99.0.3" }, { addr = "10.99.0.4", weight = 2 } ]

[[l4_services]]
name = "web6"
vip = "fd00:100::1"
port = 80
targets = [ { addr = "fd00:99::2" }, { addr = "fd00:99::3" } ]
"#;

/// An Ethernet + IPv4 (or IPv6) + TCP ACK frame with a 64-byte payload from source
/// port `sport` to `dst:80`.
fn frame(src: IpAddr, dst: IpAddr, sport: u16) -> Vec<u8> {
    let mut tcp = sport.to_be_bytes().to_vec();
    tcp.extend_from_slice(&[
        0, 80, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    tcp.extend_from_slice(&[0x61; 64]);
    let mut out = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            out.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            out.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            out.extend_from_slice(&[6, 64]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => unreachable!("one family"),
    }
    out.extend_from_slice(&tcp);
    out
}

/// Runs `body` on a thread in a new network namespace with a next hop for the targets
/// (a veth with static neighbours), so the program's FIB lookup succeeds as in service.
fn in_namespace_with_next_hop<T: Send + 'static>(
    body: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare only affects this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) } != 0 {
            bail!("unshare: {}", std::io::Error::last_os_error());
        }
        mount_own_sysfs()?;
        // Children inherit this thread's namespace.
        for args in [
            "link set lo up",
            "link add l4b0 type veth peer name l4b1",
            "addr add 10.99.0.1/24 dev l4b0",
            "addr add fd00:99::1/64 dev l4b0 nodad",
            "link set l4b0 up",
            "link set l4b1 up",
            "neigh add 10.99.0.2 lladdr 02:00:00:00:99:02 dev l4b0 nud permanent",
            "neigh add 10.99.0.3 lladdr 02:00:00:00:99:03 dev l4b0 nud permanent",
            "neigh add 10.99.0.4 lladdr 02:00:00:00:99:04 dev l4b0 nud permanent",
            "neigh add fd00:99::2 lladdr 02:00:00:00:99:02 dev l4b0 nud permanent",
            "neigh add fd00:99::3 lladdr 02:00:00:00:99:03 dev l4b0 nud permanent",
        ] {
            let status = Command::new("ip").args(args.split(' ')).status()?;
            if !status.success() {
                bail!("ip {args} failed");
            }
        }
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            Command::new("sysctl").args(["-qw", key]).status()?;
        }
        body()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the bench thread panicked"))?
}

/// Mounts a sysfs that shows this thread's network namespace (its devices' NAPI
/// settings), in a private mount namespace that ends with the thread.
fn mount_own_sysfs() -> Result<()> {
    let none = c"none";
    // SAFETY: mount(2) with valid NUL-terminated strings; the mount namespace is this
    // thread's own (unshared above), so nothing outside it changes.
    unsafe {
        if libc::mount(
            none.as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
            || libc::mount(
                none.as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                0,
                std::ptr::null(),
            ) != 0
        {
            bail!("mount sysfs: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Single runs per packet: `BPF_PROG_TEST_RUN` repeats a packet in place, so a program
/// that rewrites it (encapsulation) would see its own output from the second repeat on.
/// Each run here starts from the packet `packet(i)`; the kernel times the run alone.
const SINGLE_RUNS: usize = 20_000;

/// (verdict, median ns, 10th-percentile ns, mean ns of the program alone) of
/// `SINGLE_RUNS` single runs. The last figure comes from the kernel's run-time
/// statistics (`BPF_ENABLE_STATS`), which time the program's own instructions, without
/// the test run's timer and set-up around it.
fn measure_single(
    program: &mut aya::programs::Xdp,
    packet: impl Fn(usize) -> Vec<u8>,
) -> Result<(u32, f64, f64, f64)> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let info = program.info()?;
    let (time_before, count_before) = (info.run_time(), info.run_count());
    let mut samples = Vec::with_capacity(SINGLE_RUNS);
    let mut verdict = 0;
    let mut out = vec![0u8; 512];
    for i in 0..SINGLE_RUNS {
        let data = packet(i);
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&data),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        verdict = result.return_value;
        samples.push(result.duration.as_nanos() as f64);
    }
    let info = program.info()?;
    let runs = info.run_count().saturating_sub(count_before).max(1);
    let own = info.run_time().saturating_sub(time_before).as_nanos() as f64 / runs as f64;
    samples.sort_by(f64::total_cmp);
    Ok((
        verdict,
        samples[SINGLE_RUNS / 2],
        samples[SINGLE_RUNS / 10],
        own,
    ))
}

/// One row: path, verdict, median, 10th percentile (minimum for repeats), and the
/// program's own mean time (`None` for repeats, which the statistics do not split).
type PacketRow = (String, String, f64, f64, Option<f64>);

fn packet_rows(object: Vec<u8>, decap: Vec<u8>) -> Result<Vec<PacketRow>> {
    in_namespace_with_next_hop(move || {
        // Every single run on one core, the one the live rows' NAPI loop uses, so each
        // row and its floor row are timed on the same core.
        gateway_tests::pin_thread(0, 1);
        let config = Config::parse(Path::new("bench-l4.toml"), L4_CONFIG)?;
        let mut program = XdpProgram::load_from(&object)?;
        let (control, _inbox) = std::sync::mpsc::channel();
        let mut balancer = L4Balancer::start(&config, &mut program, &control)?;
        let client4: IpAddr = "192.0.2.10".parse()?;
        let client6: IpAddr = "2001:db8::10".parse()?;
        let vip4: IpAddr = "10.100.0.1".parse()?;
        let vip6: IpAddr = "fd00:100::1".parse()?;
        let other: IpAddr = "10.100.0.9".parse()?;
        let label = |verdict| match verdict {
            1 => "XDP_DROP",
            2 => "XDP_PASS",
            3 => "XDP_TX",
            4 => "XDP_REDIRECT",
            _ => "other",
        };
        let mut rows = Vec::new();
        let mut record = |name: &str, (verdict, ns, low, own): (u32, f64, f64, Option<f64>)| {
            eprintln!(
                "S16 {name}: {} {ns:.0} ns/packet ({low:.0}), program alone {own:?}",
                label(verdict)
            );
            rows.push((name.to_owned(), label(verdict).to_owned(), ns, low, own));
        };
        let single = |(verdict, ns, low, own): (u32, f64, f64, f64)| (verdict, ns, low, Some(own));
        record(
            "IPv4 VIP, new flow: Maglev pick, connection-table insert, encapsulate (IPIP), FIB, redirect",
            single(measure_single(program.program_mut()?, |i| {
                frame(client4, vip4, 1024 + (i % 60_000) as u16)
            })?),
        );
        record(
            "IPv4 VIP, known flow: flow-cache hit, encapsulate (IPIP), FIB, redirect",
            single(measure_single(program.program_mut()?, |_| {
                frame(client4, vip4, 40_000)
            })?),
        );
        record(
            "IPv6 VIP, known flow: encapsulate (IPv6 in IPv6), FIB, redirect",
            single(measure_single(program.program_mut()?, |_| {
                frame(client6, vip6, 40_000)
            })?),
        );
        record(
            "not a VIP (L4 active): parse, port bitmap, pass",
            single(measure_single(program.program_mut()?, |_| {
                frame(client4, other, 40_000)
            })?),
        );
        // The floor of a single run.
        let mut trivial = aya::Ebpf::load(&decap)?;
        let floor = floor_program(&mut trivial)?;
        record(
            "floor: a trivial program (l4-decap on a plain packet), single runs",
            single(measure_single(floor, |_| frame(client4, other, 40_000))?),
        );
        let (verdict, ns, min) =
            crate::bench_xdp::repeated(&mut program, &frame(client4, other, 40_000))?;
        let pass = (verdict, ns, min, None);
        // Live, warm traffic: the program alone per packet, from the statistics. New
        // flows first with every one remembered, then past the default admission rate
        // (the flood far exceeds it, so nearly every packet is left out of the table).
        let unlimited = Config::parse(
            Path::new("bench-l4.toml"),
            &L4_CONFIG.replace(
                "interface = \"lo\"\n",
                "interface = \"lo\"\nl4_remembered_flows_per_cpu = 0\n",
            ),
        )?;
        for (name, settings) in [
            (
                "live, warm: IPv4 VIP, a new flow every packet, each remembered (program alone)",
                &unlimited,
            ),
            (
                "live, warm: IPv4 VIP, a new flow every packet, past the admission rate (program alone)",
                &config,
            ),
        ] {
            balancer.apply(settings, &mut program, &control)?;
            let (median, lowest, runs) = live_mean_varied(
                program.program_mut()?,
                &frame(client4, vip4, 1024),
                new_source,
            )?;
            eprintln!("S16 {name}: {runs} packets");
            record(name, (3, f64::NAN, lowest, Some(median)));
        }
        for (name, verdict, packet) in [
            (
                "live, warm: IPv4 VIP, known flow (program alone)",
                3,
                frame(client4, vip4, 40_000),
            ),
            (
                "live, warm: IPv6 VIP, known flow (program alone)",
                3,
                frame(client6, vip6, 40_000),
            ),
            (
                "live, warm: not a VIP, L4 active (program alone)",
                2,
                frame(client4, other, 40_000),
            ),
        ] {
            let (median, lowest, runs) = live_mean(program.program_mut()?, &packet)?;
            eprintln!("S16 {name}: {runs} packets");
            record(name, (verdict, f64::NAN, lowest, Some(median)));
        }
        // The same timing's own cost: the trivial program on the same live traffic.
        let (median, lowest, _) = live_mean(floor, &frame(client4, other, 40_000))?;
        record(
            "live, warm: floor (the trivial program; the statistics' own cost)",
            (2, f64::NAN, lowest, Some(median)),
        );
        record(
            "not a VIP, the same in one run of 1,000,000 repeats (no per-run timer overhead)",
            pass,
        );
        Ok(rows)
    })
}

/// The floor rows' trivial program, loaded: the backends' decap program, which reads two
/// bytes of a packet that is not tunnelled and passes it.
fn floor_program(trivial: &mut aya::Ebpf) -> Result<&mut aya::programs::Xdp> {
    let floor: &mut aya::programs::Xdp = trivial
        .program_mut("l4_decap")
        .context("l4_decap program")?
        .try_into()?;
    floor.load()?;
    Ok(floor)
}

/// Median milliseconds to build the ring of 1,000 weighted targets (100,003 slots),
/// and how many slots move when one target goes down.
fn maglev_build() -> Result<(f64, usize, usize)> {
    let targets: String = (0..1000)
        .map(|i| {
            format!(
                "{{ addr = \"10.{}.{}.1\", weight = {} }}",
                i / 250,
                i % 250,
                1 + i % 4
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[xdp]\ninterface = \"lo\"\n[[l4_services]]\nname = \"big\"\nvip = \"10.100.0.1\"\nport = 80\ntable_size = 100003\ntargets = [ {targets} ]\n"
    );
    let config = Config::parse(Path::new("bench-l4.toml"), &text)?;
    let service = &config.l4_services[0];
    let ids: Vec<u32> = (0..1000).collect();
    let mut up = vec![true; 1000];
    let mut times = Vec::new();
    let mut ring = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        ring = gateway::l4::tables::ring(service, &ids, &up);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    up[500] = false;
    let without = gateway::l4::tables::ring(service, &ids, &up);
    let moved = ring.iter().zip(&without).filter(|(a, b)| a != b).count();
    Ok((times[2], moved, ring.len()))
}

/// max/mean of the workers' open connections after `clients` addresses open
/// `per_client` idle connections each.
fn worker_balance(dir: &Path, backend: u16, steering: &str) -> Result<(f64, Vec<u64>)> {
    let token = dir.join("bench-admin.token");
    std::fs::write(&token, "bench")?;
    let admin = free_port()?;
    let port = free_port()?;
    let policy = GatewayPolicy {
        workers: 2,
        gateway: format!(
            "worker_steering = \"{steering}\"\nadmin = \"127.0.0.1:{admin}\"\nadmin_token_file = \"{}\"\n",
            token.display()
        ),
        sections: String::new(),
        route: String::new(),
    };
    let proxy = start_gateway(dir, port, backend, None, &policy)?;
    let result = (|| {
        wait_http(port, "/b/64")?;
        let mut held = Vec::new();
        for client in 0..50u8 {
            for _ in 0..4 {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, client + 1)), 0);
                socket.bind(&from.into())?;
                socket.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
                held.push(TcpStream::from(socket));
            }
        }
        // The gauges are refreshed every 50 ms.
        std::thread::sleep(Duration::from_millis(300));
        let mut stream = TcpStream::connect(("127.0.0.1", admin))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nhost: a\r\nauthorization: Bearer bench\r\nconnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("gateway_worker_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .collect();
        drop(held);
        if counts.len() != 2 {
            bail!("no per-worker connection gauges in /metrics");
        }
        let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
        let max = *counts.iter().max().unwrap_or(&0) as f64;
        Ok((max / mean, counts))
    })();
    stop(proxy);
    result
}

/// Set to another build of the XDP object (with its `l4-decap` beside it) to time that
/// build's per-packet paths instead: how two versions of the program are compared.
const OBJECT_OVERRIDE: &str = "BENCH_L4_OBJECT";

/// Set to a comma-separated list of XDP object builds to compare them on live traffic
/// instead of writing the S16 table. The builds take turns round by round, so the slow
/// drifts in this VM's speed (tens of percent between separate runs) fall on all of them
/// alike.
const AB_OBJECTS: &str = "BENCH_L4_AB";

/// Rounds per build and path in the comparison.
const AB_ROUNDS: usize = 40;

/// The S16 section.
pub fn section(object_path: &Path, dir: &Path, backend: u16) -> Result<String> {
    if let Some(list) = std::env::var_os(AB_OBJECTS) {
        return compare_builds(&list.to_string_lossy());
    }
    let override_path = std::env::var_os(OBJECT_OVERRIDE).map(std::path::PathBuf::from);
    let object_path = override_path.as_deref().unwrap_or(object_path);
    let object = std::fs::read(object_path)?;
    let mut out = String::new();
    writeln!(
        out,
        "\n#### L4 balancing (S16, `cargo xtask bench --only S16`)\n\nPer packet (`BPF_PROG_TEST_RUN`; the encapsulating paths as {SINGLE_RUNS} single runs, each from a fresh copy of the packet, median and 10th percentile, the kernel's per-run timing included; the FIB lookup finds a static neighbour; target: under 150 ns per forwarded packet):\n"
    )?;
    writeln!(
        out,
        "| path | verdict | ns/packet (median) | p10 (min for repeats; least disturbed round for live) | program alone (kernel run-time statistics, mean; live: median of {LIVE_ROUNDS} rounds) |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    let decap = std::fs::read(object_path.with_file_name("l4-decap"))?;
    let cell = |v: f64| {
        if v.is_nan() {
            "—".to_owned()
        } else {
            format!("{v:.0}")
        }
    };
    for (name, verdict, ns, min, own) in packet_rows(object, decap)? {
        let own = own.map_or("—".to_owned(), cell);
        writeln!(
            out,
            "| {name} | {verdict} | {} | {} | {own} |",
            cell(ns),
            cell(min)
        )?;
    }
    let (ms, moved, slots) = maglev_build()?;
    writeln!(
        out,
        "\nMaglev table for 1,000 weighted targets ({slots} slots): built in {ms:.1} ms (median of 5); one target down moves {moved} slots ({:.2}%, its own share).\n",
        moved as f64 * 100.0 / slots as f64
    )?;
    writeln!(
        out,
        "Worker balance, 2 workers, 200 idle connections from 50 client addresses (max/mean of the workers' open connections; 1.00 is perfect):\n"
    )?;
    writeln!(out, "| worker choice | max/mean | connections per worker |")?;
    writeln!(out, "|---|---|---|")?;
    for (label, steering) in [
        ("kernel reuseport hash (4-tuple)", "kernel"),
        ("steering program (client address, load-aware)", "client_ip"),
    ] {
        let (ratio, counts) = worker_balance(dir, backend, steering)?;
        eprintln!("S16 balance {steering}: {ratio:.2} {counts:?}");
        writeln!(out, "| {label} | {ratio:.2} | {counts:?} |")?;
    }
    Ok(out)
}

/// [`AB_OBJECTS`]: the program alone per packet for each build on the live paths,
/// median and least disturbed of [`AB_ROUNDS`] interleaved rounds, and the median's ratio
/// to the first build's.
fn compare_builds(list: &str) -> Result<String> {
    let builds = list
        .split(',')
        .map(|path| {
            let object = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            Ok((path.to_owned(), object))
        })
        .collect::<Result<Vec<_>>>()?;
    let client4: IpAddr = "192.0.2.10".parse()?;
    let client6: IpAddr = "2001:db8::10".parse()?;
    let cases = [
        (
            "IPv4 VIP, known flow",
            frame(client4, "10.100.0.1".parse()?, 40_000),
        ),
        (
            "IPv6 VIP, known flow",
            frame(client6, "fd00:100::1".parse()?, 40_000),
        ),
        (
            "not a VIP, L4 active",
            frame(client4, "10.100.0.9".parse()?, 40_000),
        ),
    ];
    let objects: Vec<Vec<u8>> = builds.iter().map(|(_, object)| object.clone()).collect();
    let decap = std::fs::read(Path::new(&builds[0].0).with_file_name("l4-decap"))?;
    let frames: Vec<Vec<u8>> = cases.iter().map(|(_, packet)| packet.clone()).collect();
    let (rounds, floor) = in_namespace_with_next_hop(move || {
        let config = Config::parse(Path::new("bench-l4.toml"), L4_CONFIG)?;
        let (control, _inbox) = std::sync::mpsc::channel();
        let mut programs = Vec::new();
        for object in &objects {
            let mut program = XdpProgram::load_from(object)?;
            let balancer = L4Balancer::start(&config, &mut program, &control)?;
            programs.push((program, balancer));
        }
        let mut trivial = aya::Ebpf::load(&decap)?;
        let floor = floor_program(&mut trivial)?;
        let mut floor_rounds = Vec::with_capacity(AB_ROUNDS);
        gateway_tests::pin_thread(0, 0);
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        // rounds[build][case]: each round's mean.
        let mut rounds = vec![vec![Vec::with_capacity(AB_ROUNDS); frames.len()]; programs.len()];
        let builds = programs.len();
        for round in 0..AB_ROUNDS {
            // Each round starts with the next build, so none always follows the floor.
            for turn in 0..builds {
                let build = (round + turn) % builds;
                let xdp = programs[build].0.program_mut()?;
                let link = xdp.attach("l4b0", aya::programs::XdpMode::Driver)?;
                crate::bench_flood::napi_thread_on("l4b0", 1)?;
                for (case, packet) in frames.iter().enumerate() {
                    let (mean, _) = timed_round(xdp, packet, &mut |_| {})?;
                    rounds[build][case].push(mean);
                }
                xdp.detach(link)?;
            }
            let link = floor.attach("l4b0", aya::programs::XdpMode::Driver)?;
            crate::bench_flood::napi_thread_on("l4b0", 1)?;
            let last = &frames[frames.len() - 1];
            floor_rounds.push(timed_round(floor, last, &mut |_| {})?.0);
            floor.detach(link)?;
        }
        Ok((rounds, floor_rounds))
    })?;
    let mut out = String::new();
    writeln!(
        out,
        "\n#### L4 builds compared (S16, live, program alone, ns per packet: median / least disturbed of {AB_ROUNDS} interleaved rounds, median ratio to the first build)\n"
    )?;
    let header: Vec<&str> = cases.iter().map(|(name, _)| *name).collect();
    writeln!(out, "| build | {} |", header.join(" | "))?;
    writeln!(out, "|---|{}", "---|".repeat(cases.len()))?;
    let summary = |means: &[f64]| {
        let mut sorted = means.to_vec();
        sorted.sort_by(f64::total_cmp);
        (sorted[sorted.len() / 2], sorted[0])
    };
    for (build, (path, _)) in builds.iter().enumerate() {
        let cells: Vec<String> = (0..cases.len())
            .map(|case| {
                let (median, lowest) = summary(&rounds[build][case]);
                let (first, _) = summary(&rounds[0][case]);
                format!("{median:.0} / {lowest:.0} ({:.2}×)", median / first)
            })
            .collect();
        eprintln!("S16 A/B {path}: {}", cells.join(", "));
        writeln!(out, "| `{path}` | {} |", cells.join(" | "))?;
    }
    let (median, lowest) = summary(&floor);
    eprintln!("S16 A/B floor: {median:.0} / {lowest:.0}");
    writeln!(
        out,
        "\nFloor (a trivial program on the not-a-VIP frame: the statistics' own cost, in every figure above): {median:.0} / {lowest:.0} ns."
    )?;
    Ok(out)
}

/// How many rounds each live case floods, and for how long each.
const LIVE_ROUNDS: usize = 9;
const LIVE_ROUND: Duration = Duration::from_millis(300);

/// The program's own time per packet on live, warm traffic: frames written into `l4b1`
/// arrive at `l4b0`, where the program runs in driver mode (its `XDP_TX` goes back to
/// `l4b1`); the kernel's run-time statistics time every run. The flood comes in rounds,
/// each timed on its own: this VM's neighbours disturb some rounds by tens of percent,
/// so the median and the least disturbed round are both reported.
/// (median of the rounds' means, lowest round mean, runs)
fn live_mean(xdp: &mut aya::programs::Xdp, frame: &[u8]) -> Result<(f64, f64, u64)> {
    live_mean_varied(xdp, frame, |_, _| {})
}

/// Gives frame number `n` (an IPv4 TCP frame) its own client: source address
/// 198.18.0.0/15 plus `n`'s high bits, source port from its low bits, so no two frames
/// of a run share a flow (the checksums are not the program's concern).
fn new_source(frame: &mut [u8], n: u64) {
    let host = (n >> 14) as u32 & 0x1_ffff;
    let addr = 0xc612_0000u32 | host;
    frame[26..30].copy_from_slice(&addr.to_be_bytes());
    frame[34..36].copy_from_slice(&(1024 + (n & 0x3fff) as u16).to_be_bytes());
}

/// [`live_mean`] where `vary` rewrites each frame (and its number) before it is sent.
fn live_mean_varied(
    xdp: &mut aya::programs::Xdp,
    frame: &[u8],
    mut vary: impl FnMut(&mut [u8], u64),
) -> Result<(f64, f64, u64)> {
    let mut sent = 0u64;
    let mut next = |frame: &mut [u8]| {
        vary(frame, sent);
        sent += 1;
    };
    let link = xdp.attach("l4b0", aya::programs::XdpMode::Driver)?;
    // As on a NIC queue: the receive loop runs on its own core, in batches, while the
    // sender takes the other one. (Attaching recreates the NAPI instance.)
    crate::bench_flood::napi_thread_on("l4b0", 1)?;
    gateway_tests::pin_thread(0, 0);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let mut means = Vec::with_capacity(LIVE_ROUNDS);
    let mut total_runs = 0;
    for _ in 0..LIVE_ROUNDS {
        let (mean, runs) = timed_round(xdp, frame, &mut next)?;
        means.push(mean);
        total_runs += runs;
    }
    xdp.detach(link)?;
    means.sort_by(f64::total_cmp);
    Ok((means[LIVE_ROUNDS / 2], means[0], total_runs))
}

/// One [`LIVE_ROUND`] of `frame` into the attached program, timed by the run-time
/// statistics (enabled by the caller): (mean ns per run, runs).
fn timed_round(
    xdp: &aya::programs::Xdp,
    frame: &[u8],
    next: &mut impl FnMut(&mut [u8]),
) -> Result<(f64, u64)> {
    let before = xdp.info()?;
    flood("l4b1", frame, LIVE_ROUND, next)?;
    let after = xdp.info()?;
    let runs = after.run_count().saturating_sub(before.run_count());
    if runs == 0 {
        bail!("no frame reached the program");
    }
    let time = after.run_time().saturating_sub(before.run_time());
    Ok((time.as_nanos() as f64 / runs as f64, runs))
}

/// Writes `frame` on `device` through a packet socket (past the qdisc), in batches of
/// 64, for `duration`; `vary` rewrites each copy before it is sent.
fn flood(
    device: &str,
    frame: &[u8],
    duration: Duration,
    vary: &mut impl FnMut(&mut [u8]),
) -> Result<()> {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("packet socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: just created, owned here.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(device)?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_ifindex = index as i32;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&frame[..6]);
    gateway_tests::netns::bypass_qdisc(socket.as_fd());
    let mut frames = vec![frame.to_vec(); 64];
    let len = std::mem::size_of::<libc::sockaddr_ll>();
    let started = Instant::now();
    while started.elapsed() < duration {
        for copy in &mut frames {
            vary(copy);
        }
        gateway_tests::netns::send_batch(
            socket.as_fd(),
            (&raw const address).cast(),
            len,
            &mut frames,
        );
    }
    Ok(())
}
