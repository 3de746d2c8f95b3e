//! The XDP section of `cargo xtask bench` (BENCH.md S9): nanoseconds per packet from
//! `BPF_PROG_TEST_RUN` with many repeats, for the program's main paths.

use std::{fmt::Write as _, net::SocketAddr, path::Path};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use gateway::{
    config::{EdgePolicyConfig, SynGuardConfig},
    xdp::XdpProgram,
};

const REPEAT: u32 = 1_000_000;
const PORT: u16 = 8080;

/// An Ethernet + IPv4 + TCP SYN frame from `src` to `PORT`.
fn syn_from(src: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&[10, 0, 0, 1]);
    frame.extend_from_slice(&[0xc3, 0x50]);
    frame.extend_from_slice(&PORT.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    frame
}

fn prefixes(count: u32) -> Vec<ipnet::IpNet> {
    (0..count)
        .map(|i| {
            format!("10.{}.{}.0/24", i / 256 % 256, i % 256)
                .parse()
                .expect("cidr")
        })
        .collect()
}

/// `count` prefixes of six lengths (/19 to /24, distinct networks): more distinct lengths
/// than the by-length hashes take, so the program walks the trie.
fn mixed_prefixes(count: u32) -> Vec<ipnet::IpNet> {
    (0..count)
        .map(|i| {
            let len = 19 + i % 6;
            let net: ipnet::IpNet = format!("10.{}.{}.0/{len}", i / 256 % 256, i % 256)
                .parse()
                .expect("cidr");
            net.trunc()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Runs of `REPEAT` packets per case; the median is reported (noise here is ±30%).
const RUNS: usize = 7;

/// Verdict, and median and minimum ns/packet over `RUNS` runs.
fn measure(object: &[u8], policy: EdgePolicyConfig, packet: &[u8]) -> Result<(u32, f64, f64)> {
    let mut program = XdpProgram::load_from(object).context("load the XDP object")?;
    let listeners: [SocketAddr; 1] = [SocketAddr::from(([127, 0, 0, 1], PORT))];
    program.sync_policy(&policy, &listeners)?;
    repeated(&mut program, packet)
}

/// Verdict, and median and minimum ns/packet of `packet` over `RUNS` runs of `REPEAT`
/// repeats (only for packets the program does not rewrite: repeats run in place).
pub(crate) fn repeated(program: &mut XdpProgram, packet: &[u8]) -> Result<(u32, f64, f64)> {
    let mut verdict = 0;
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let result = program
            .program_mut()?
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat: REPEAT,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        verdict = result.return_value;
        samples.push(result.duration.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok((verdict, samples[RUNS / 2], samples[0]))
}

/// The Markdown rows of the XDP section.
pub fn section(object_path: &Path) -> Result<String> {
    let object = std::fs::read(object_path)?;
    let none = EdgePolicyConfig::default();
    let cases: Vec<(&str, EdgePolicyConfig, Vec<u8>)> = vec![
        (
            "parse + count, no policy (pass)",
            none.clone(),
            syn_from([198, 51, 100, 7]),
        ),
        (
            "deny-hit, 10,000 prefixes (by-length hash, drop)",
            EdgePolicyConfig {
                deny: prefixes(10_000),
                ..none.clone()
            },
            syn_from([10, 20, 30, 40]),
        ),
        (
            "deny-hit, 10,000 prefixes of 6 lengths (trie walk, drop)",
            EdgePolicyConfig {
                deny: mixed_prefixes(10_000),
                ..none.clone()
            },
            syn_from([10, 20, 30, 40]),
        ),
        (
            "deny-miss, 10,000 prefixes (pass)",
            EdgePolicyConfig {
                deny: prefixes(10_000),
                ..none.clone()
            },
            syn_from([198, 51, 100, 7]),
        ),
        (
            "deny-hit, 60,000 prefixes (drop)",
            EdgePolicyConfig {
                deny: prefixes(60_000),
                ..none.clone()
            },
            syn_from([10, 200, 30, 40]),
        ),
        (
            "allow-mode miss, 10,000 prefixes (drop)",
            EdgePolicyConfig {
                allow: prefixes(10_000),
                ..none.clone()
            },
            syn_from([198, 51, 100, 7]),
        ),
        (
            "SYN guard, admitted SYN (pass)",
            EdgePolicyConfig {
                syn_guard: Some(SynGuardConfig {
                    rate_per_sec: u32::MAX,
                    burst: u32::MAX,
                }),
                ..none.clone()
            },
            syn_from([198, 51, 100, 7]),
        ),
    ];
    let mut out = String::new();
    writeln!(
        out,
        "\n#### XDP per-packet cost (S9, `BPF_PROG_TEST_RUN`, {RUNS} runs × {REPEAT} repeats, test-run floor included)\n"
    )?;
    writeln!(
        out,
        "| path | verdict | ns/packet (median of {RUNS}) | min |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for (name, policy, packet) in cases {
        let (verdict, ns, min) = measure(&object, policy, &packet)?;
        let verdict = match verdict {
            1 => "XDP_DROP",
            2 => "XDP_PASS",
            _ => "other",
        };
        eprintln!("S9 {name}: {verdict} {ns:.0} ns/packet (min {min:.0})");
        writeln!(out, "| {name} | {verdict} | {ns:.0} | {min:.0} |")?;
    }
    Ok(out)
}
