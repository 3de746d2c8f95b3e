//! Builds the XDP object: `gateway-ebpf` with nightly for `bpfel-unknown-none`.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{root, run_checked};

/// Builds the object and returns its path.
pub fn build() -> Result<PathBuf> {
    let root = root();
    let target_dir = root.join("target/ebpf");
    let mut command = Command::new("cargo");
    command
        .current_dir(root.join("gateway-ebpf"))
        .args([
            "+nightly",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer cargo's settings belong to the host build, not this one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("PATH", path_with_cargo_bin());
    run_checked(&mut command)?;
    let object = target_dir.join("bpfel-unknown-none/release/gateway-ebpf");
    if !object.exists() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    Ok(object)
}

/// `$PATH` with `$CARGO_HOME/bin` in it, where `cargo install` put bpf-linker.
fn path_with_cargo_bin() -> String {
    let home = std::env::var("CARGO_HOME").unwrap_or_else(|_| {
        format!(
            "{}/.cargo",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
        )
    });
    format!("{home}/bin:{}", std::env::var("PATH").unwrap_or_default())
}
