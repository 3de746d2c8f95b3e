//! Embeds the XDP object (and the worker-steering object beside it) into the gateway.
//!
//! `cargo xtask` builds `gateway-ebpf` with nightly + bpf-linker and passes the object's
//! path in `GATEWAY_EBPF_OBJECT`; the object is then copied into `OUT_DIR` and embedded.
//! A plain stable `cargo build` has no such object: an empty placeholder is embedded and
//! the gateway runs L7-only, saying so once in its log.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=GATEWAY_EBPF_OBJECT");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let out = out_dir.join("gateway-ebpf.o");
    // Built beside the XDP object: the worker-steering program, and the backends'
    // decapsulation program for L4 services.
    let siblings = ["gateway-steer", "l4-decap"];
    match env::var_os("GATEWAY_EBPF_OBJECT") {
        Some(object) => {
            let object = PathBuf::from(object);
            println!("cargo:rerun-if-changed={}", object.display());
            fs::copy(&object, &out).map_err(|e| {
                anyhow::anyhow!("GATEWAY_EBPF_OBJECT={}: cannot copy: {e}", object.display())
            })?;
            for name in siblings {
                let sibling = object.with_file_name(name);
                println!("cargo:rerun-if-changed={}", sibling.display());
                fs::copy(&sibling, out_dir.join(format!("{name}.o")))
                    .map_err(|e| anyhow::anyhow!("{}: cannot copy: {e}", sibling.display()))?;
            }
        }
        None => {
            fs::write(&out, [])?;
            for name in siblings {
                fs::write(out_dir.join(format!("{name}.o")), [])?;
            }
        }
    }
    Ok(())
}
