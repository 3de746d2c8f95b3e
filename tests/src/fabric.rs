//! Root-only fixture for L4 tests: a "fabric" namespace holding a bridge, and member
//! namespaces (client, gateways, backends) each joined to it by a veth pair, on
//! 10.77.0.0/24 and fd77::/64. Everything is removed on drop, even on failure.

use std::process::Command;

/// The bridge namespace and its members.
pub struct Fabric {
    fabric: String,
    members: Vec<String>,
    /// Pass-through programs on the bridge side of members that transmit XDP frames.
    peer_programs: Vec<aya::Ebpf>,
    _exclusive: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `ip <args>`; the error names the command and what it said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Runs `program <args>` inside `namespace`.
pub fn in_namespace(namespace: &str, program: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["netns", "exec", namespace, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn must(result: Result<(), String>) {
    if let Err(e) = result {
        panic!("building the test fabric failed: {e}");
    }
}

impl Fabric {
    /// A bridge in namespace `<prefix>f`. Namespaces of earlier, crashed runs with the
    /// same prefix are removed first.
    pub fn create(prefix: &str) -> Self {
        let me = Self {
            fabric: format!("{prefix}f"),
            members: Vec::new(),
            peer_programs: Vec::new(),
            _exclusive: ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()),
        };
        for stale in ["f", "c", "g", "h", "b1", "b2", "b3"] {
            let _ = ip(&["netns", "del", &format!("{prefix}{stale}")]);
        }
        must(ip(&["netns", "add", &me.fabric]));
        must(ip(&[
            "-n", &me.fabric, "link", "add", "br0", "type", "bridge",
        ]));
        must(ip(&["-n", &me.fabric, "link", "set", "br0", "up"]));
        me
    }

    /// Adds namespace `name` with interface `<name>0` on the bridge, addresses
    /// `10.77.0.<host>/24` and `fd77::<host>/64`, loopback up, checksum offload off.
    pub fn join(&mut self, name: &str, host: u8) -> String {
        let _ = ip(&["netns", "del", name]);
        must(ip(&["netns", "add", name]));
        self.members.push(name.to_owned());
        let inner = format!("{name}0");
        let outer = format!("f-{name}");
        must(ip(&[
            "-n",
            &self.fabric,
            "link",
            "add",
            &outer,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            name,
        ]));
        must(ip(&[
            "-n",
            &self.fabric,
            "link",
            "set",
            &outer,
            "master",
            "br0",
            "up",
        ]));
        let v4 = format!("10.77.0.{host}/24");
        let v6 = format!("fd77::{host}/64");
        must(ip(&["-n", name, "addr", "add", &v4, "dev", &inner]));
        must(ip(&[
            "-n", name, "addr", "add", &v6, "dev", &inner, "nodad",
        ]));
        // Full checksums, as on a wire: a veth otherwise hands on partial ones, which
        // an XDP program's frames (rebuilt as fresh buffers) would carry as wrong ones.
        must(in_namespace(name, "ethtool", &["-K", &inner, "tx", "off"]));
        must(ip(&["-n", name, "link", "set", &inner, "up"]));
        must(ip(&["-n", name, "link", "set", "lo", "up"]));
        for key in ["all", "default", inner.as_str()] {
            let _ = in_namespace(
                name,
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")],
            );
        }
        inner
    }

    /// Lets an XDP program on `member`'s interface send frames back out (XDP_TX or a
    /// redirect): a veth delivers XDP frames only to a peer that runs an XDP program
    /// itself, so the bridge side gets `program` of `object`, which must pass what it
    /// does not know (the gateway's own program, with empty maps, does).
    pub fn accept_xdp_frames_from(&mut self, member: &str, object: &[u8], program: &str) {
        let peer = format!("f-{member}");
        let (object, program) = (object.to_vec(), program.to_owned());
        let loaded = crate::netns::run_in_namespace(&self.fabric, move || {
            let mut ebpf = aya::Ebpf::load(&object).map_err(|e| e.to_string())?;
            let xdp: &mut aya::programs::Xdp = ebpf
                .program_mut(&program)
                .ok_or("no such program")?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| e.to_string())?;
            xdp.load().map_err(|e| e.to_string())?;
            xdp.attach(&peer, aya::programs::XdpMode::Driver)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(ebpf)
        })
        .join()
        .expect("the fabric thread panicked");
        match loaded {
            Ok(ebpf) => self.peer_programs.push(ebpf),
            Err(e) => panic!("attaching the pass-through program for {member}: {e}"),
        }
    }

    /// Sets `sysctl key=value` in `namespace`.
    pub fn sysctl(&self, namespace: &str, setting: &str) {
        must(in_namespace(namespace, "sysctl", &["-qw", setting]));
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        self.peer_programs.clear();
        for name in self.members.iter().chain(std::iter::once(&self.fabric)) {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
