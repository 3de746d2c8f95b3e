//! `cargo xtask test`: the whole suite, in the order CI needs it: formatting, lints,
//! then every unit, property, integration and XDP test against a gateway binary that
//! embeds the real XDP object. As root the XDP tests are required, not skipped.

use anyhow::Result;

use crate::{cargo, ebpf, is_root, root, run_checked, setup};

pub fn test() -> Result<()> {
    setup::setup()?;
    let object = ebpf::build()?;
    run_checked(cargo(&object).args(["fmt", "--all", "--", "--check"]))?;
    run_checked(cargo(&object).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_checked(cargo(&object).args(["build", "-p", "gateway", "--bin", "gateway"]))?;
    let mut test = cargo(&object);
    // Every test binary runs even after a failure, so one run names every failing test.
    test.args(["test", "--workspace", "--no-fail-fast"])
        .env("GATEWAY_BIN", root().join("target/debug/gateway"))
        .env("GATEWAY_EBPF_OBJECT", &object);
    // Tools `setup` installed are required, not optional, under the xtask.
    test.env("GATEWAY_REQUIRE_TOOLS", "1");
    test.env("GATEWAY_SSLYZE", setup::sslyze_venv().join("bin/python"));
    if is_root() {
        test.env("GATEWAY_REQUIRE_XDP", "1");
    } else {
        eprintln!("xtask test: not root: XDP tests that need root will be skipped (loudly)");
    }
    let totals = run_counting(&mut test)?;
    // Every fuzz target, briefly: the seed corpora plus a few seconds of mutation.
    crate::fuzz::run_targets(&[], FUZZ_SECONDS_IN_TEST)?;
    // One closing line for the whole suite (cargo's own last line is a doc-test binary's).
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

/// Test counts summed over every `test result:` line cargo printed.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test`, echoing its output, and sums its results; fails if it failed.
fn run_counting(command: &mut std::process::Command) -> Result<Totals> {
    use std::io::{BufRead, BufReader};
    let mut child = command.stdout(std::process::Stdio::piped()).spawn()?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(summary) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    summary
                        .split(&['.', ';'][..])
                        .find_map(|part| part.trim().strip_suffix(word)?.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                totals.passed += count("passed");
                totals.failed += count("failed");
                totals.ignored += count("ignored");
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            totals.passed, totals.failed, totals.ignored
        );
        anyhow::bail!("cargo test failed with {status}");
    }
    Ok(totals)
}

/// Seconds each fuzz target runs during `cargo xtask test`.
const FUZZ_SECONDS_IN_TEST: u64 = 10;
