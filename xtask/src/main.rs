//! `cargo xtask`: everything beyond a plain `cargo build`.
//!
//! - `setup`: installs what a fresh machine needs (Debian packages, nightly `rust-src`,
//!   `bpf-linker` built against the nightly's own LLVM). Idempotent.
//! - `build-ebpf`: builds the XDP object with nightly for `bpfel-unknown-none`.
//! - `run`: builds everything (release) and starts the gateway on `conf/demo.toml` with
//!   its demo backends.
//! - `test`: the full suite (format, lints, unit, integration, XDP when root).
//! - `bench`: the gateway side by side with nginx and haproxy (see BENCH in the README).
//! - `fuzz`: the cargo-fuzz targets, from the committed seed corpora.

mod bench;
mod bench_features;
mod bench_flood;
mod bench_idle;
mod bench_l4;
mod bench_latency;
mod bench_mediation;
mod bench_traffic;
mod bench_xdp;
mod ebpf;
mod fuzz;
mod open_loop;
mod run;
mod setup;
mod soak;
mod test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run, test and benchmark the gateway")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and packages the build, tests and benchmarks need.
    Setup,
    /// Build the XDP object and print its path.
    BuildEbpf,
    /// Build everything and run the gateway on conf/demo.toml with demo backends.
    Run,
    /// Run the whole test suite (XDP tests included when root).
    Test,
    /// Benchmark the gateway against nginx and haproxy.
    Bench(bench::BenchArgs),
    /// Run the cargo-fuzz targets (nightly, libFuzzer) from the seed corpora.
    Fuzz(fuzz::FuzzArgs),
    /// Mixed traffic and reloads for minutes, resources sampled; fails on growth.
    Soak(soak::SoakArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::setup(),
        Task::BuildEbpf => {
            setup::setup()?;
            println!("{}", ebpf::build()?.display());
            Ok(())
        }
        Task::Run => run::run(),
        Task::Test => test::test(),
        Task::Bench(args) => bench::bench(&args),
        Task::Fuzz(args) => fuzz::fuzz(&args),
        Task::Soak(args) => soak::soak(&args),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs `command`, failing with its rendering when it does not succeed.
pub fn run_checked(command: &mut Command) -> Result<()> {
    let rendered = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {rendered}"))?;
    if !status.success() {
        bail!("{rendered} failed with {status}");
    }
    Ok(())
}

/// A `cargo` command for the userspace workspace, with the XDP object embedded.
pub fn cargo(object: &Path) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(root())
        .env("GATEWAY_EBPF_OBJECT", object);
    command
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
