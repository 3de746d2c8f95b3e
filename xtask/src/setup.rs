//! Idempotent machine setup: Debian packages, nightly `rust-src`, and `bpf-linker` built
//! against the nightly toolchain's own libLLVM (the recipe in DESIGN.md).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{is_root, run_checked};

/// Commands the tests and benchmarks use, and the Debian package providing each.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("nginx", "nginx-light"),
    ("haproxy", "haproxy"),
    ("wrk", "wrk"),
    ("testssl", "testssl.sh"),
    ("chromium", "chromium"),
    ("curl", "curl"),
    ("nft", "nftables"),
    ("ethtool", "ethtool"),
    ("sysctl", "procps"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Brings the machine to a state where build, tests and benchmarks can run.
pub fn setup() -> Result<()> {
    install_packages()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()?;
    ensure_sslyze()
}

/// sslyze (PyPI, pinned) checks the TLS listener against Mozilla's "intermediate"
/// profile in the tests; it lives in a virtualenv under `target/tools`.
const SSLYZE_VERSION: &str = "6.3.1";

/// Where [`ensure_sslyze`] puts the sslyze virtualenv (the tests look there too).
pub fn sslyze_venv() -> PathBuf {
    crate::root().join("target/tools/sslyze")
}

fn ensure_sslyze() -> Result<()> {
    let venv = sslyze_venv();
    let python = venv.join("bin/python");
    let installed = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import importlib.metadata as m, sys; sys.exit(m.version('sslyze') != '{SSLYZE_VERSION}')"
            ),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    if !has_command("python3") {
        bail!("python3 is missing; install the Debian package python3-venv");
    }
    eprintln!(
        "xtask setup: installing sslyze {SSLYZE_VERSION} into {}",
        venv.display()
    );
    let venv_ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    if !venv_ok {
        if is_root() {
            run_checked(Command::new("apt-get").args(["install", "-y", "-qq", "python3-venv"]))?;
            run_checked(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        } else {
            bail!("python3 -m venv failed; install the Debian package python3-venv");
        }
    }
    run_checked(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        &format!("sslyze=={SSLYZE_VERSION}"),
    ]))
}

/// cargo-fuzz drives the fuzz targets (`cargo xtask fuzz`, and briefly in `test`).
fn ensure_cargo_fuzz() -> Result<()> {
    let works = |cmd: &mut Command| {
        cmd.arg("fuzz")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&mut Command::new("cargo")) {
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-fuzz (a few minutes, once)");
    run_checked(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

fn has_command(name: &str) -> bool {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ]
    .iter()
    .any(|dir| PathBuf::from(dir).join(name).exists())
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !has_command(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "xtask setup: not root; install these Debian packages yourself: {}",
            missing.join(" ")
        );
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("run rustc +nightly")?;
    if !out.status.success() {
        bail!("the nightly toolchain is missing: `rustup toolchain install nightly` first");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(());
    }
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// Whether an installed bpf-linker runs (its libLLVM resolves).
fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new(cargo_home().join("bin/bpf-linker"))
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("")
        .to_owned();
    // bpf-linker links against `libLLVM.so` and its RUNPATH is `prefix/lib`, where the
    // library must also exist under its soname.
    let prefix = cargo_home().join("bpf-linker-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so".to_owned(), llvm.clone()] {
        let path = prefix_lib.join(&link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(lib.join(&llvm), &path)
            .with_context(|| format!("symlink {}", path.display()))?;
    }
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against {llvm} (about a minute)"
    );
    run_checked(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run; check `ldd $(which bpf-linker)`");
    }
    Ok(())
}
