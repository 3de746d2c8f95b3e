//! `cargo xtask soak --minutes N`: the release gateway under mixed traffic (keep-alive,
//! new connections, TLS, malformed requests, a reload every two seconds) for N minutes,
//! its RSS, descriptors and upstream connections sampled every ten seconds. Fails when a
//! request failed or memory or descriptors grew past the bounds the short test uses.

use std::time::Duration;

use anyhow::{Result, bail};
use gateway_tests::soak;

use crate::{cargo, ebpf, root, run_checked, setup};

/// Options of a soak run.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
}

/// RSS growth after warm-up that fails the run.
const MAX_RSS_GROWTH: i64 = 16 << 20;
/// Descriptor growth after warm-up that fails the run.
const MAX_FD_GROWTH: i64 = 32;

pub fn soak(args: &SoakArgs) -> Result<()> {
    setup::setup()?;
    let object = ebpf::build()?;
    run_checked(cargo(&object).args(["build", "--release", "-p", "gateway"]))?;
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var("GATEWAY_BIN", root().join("target/release/gateway")) };
    let report = soak::Fixture::start().run(
        Duration::from_secs(args.minutes * 60),
        Duration::from_secs(10),
    );
    println!("{}", report.table());
    let (rss, fds) = report.growth();
    println!(
        "{} requests answered, {} failed, {} reloads; after warm-up RSS {:+.1} MiB, descriptors {fds:+}",
        report.answered,
        report.failed,
        report.reloads,
        rss as f64 / 1048576.0
    );
    if report.failed > 0 || rss > MAX_RSS_GROWTH || fds > MAX_FD_GROWTH {
        bail!("soak failed: requests failed or resources grew past the bounds");
    }
    Ok(())
}
