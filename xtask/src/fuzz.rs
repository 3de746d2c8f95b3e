//! `cargo xtask fuzz [--time S] [TARGET…]`: runs the cargo-fuzz targets in `fuzz/`
//! (nightly, libFuzzer, AddressSanitizer) from the committed seed corpora. New inputs go
//! to a scratch folder, so the committed corpora only change by hand; a crash fails the
//! run and leaves its reproducer in `fuzz/artifacts/`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::root;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "connection",
    "request_head",
    "response_head",
    "chunked",
    "path",
    "config",
    "jwt",
    "router",
    "mediation",
];

/// Options of a fuzz run.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Only these targets (all when empty).
    targets: Vec<String>,
}

pub fn fuzz(args: &FuzzArgs) -> Result<()> {
    crate::setup::setup()?;
    run_targets(&args.targets, args.time)
}

/// Runs `targets` (all when empty) for `seconds` each.
pub fn run_targets(targets: &[String], seconds: u64) -> Result<()> {
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "unknown fuzz target {target:?}; known: {}",
                TARGETS.join(", ")
            );
        }
    }
    let scratch = tempfile::tempdir()?;
    for target in TARGETS
        .iter()
        .filter(|t| targets.is_empty() || targets.iter().any(|x| x == *t))
    {
        let corpus = root().join("fuzz/corpus").join(target);
        let fresh = scratch.path().join(target);
        std::fs::create_dir_all(&fresh)?;
        eprintln!("fuzzing {target} for {seconds} s");
        // libFuzzer narrates every new input; keep its log out of the way and show the
        // summary, or the whole tail when something was found.
        let log_path = scratch.path().join(format!("{target}.log"));
        let log = std::fs::File::create(&log_path)?;
        let status = Command::new("cargo")
            .current_dir(root())
            .args(["+nightly", "fuzz", "run", target])
            .arg(&fresh)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ])
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            let tail: Vec<&str> = text.lines().rev().take(120).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            bail!("fuzz target {target} failed; the reproducer is in fuzz/artifacts/{target}/");
        }
        for line in text
            .lines()
            .filter(|l| l.starts_with("Done ") || l.starts_with("stat::number_of_executed_units"))
        {
            eprintln!("  {line}");
        }
    }
    Ok(())
}
