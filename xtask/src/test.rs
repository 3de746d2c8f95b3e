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
    test.args(["test", "--workspace"])
        .env("GATEWAY_BIN", root().join("target/debug/gateway"))
        .env("GATEWAY_EBPF_OBJECT", &object);
    // Tools `setup` installed are required, not optional, under the xtask.
    test.env("GATEWAY_REQUIRE_TOOLS", "1");
    if is_root() {
        test.env("GATEWAY_REQUIRE_XDP", "1");
    } else {
        eprintln!("xtask test: not root: XDP tests that need root will be skipped (loudly)");
    }
    run_checked(&mut test)?;
    // Every fuzz target, briefly: the seed corpora plus a few seconds of mutation.
    crate::fuzz::run_targets(&[], FUZZ_SECONDS_IN_TEST)
}

/// Seconds each fuzz target runs during `cargo xtask test`.
const FUZZ_SECONDS_IN_TEST: u64 = 10;
