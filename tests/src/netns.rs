//! Root-only fixtures for XDP tests: the XDP object, and a network namespace joined to
//! the root namespace by a veth pair. Everything is removed on drop, even on failure.

use std::process::Command;

/// The XDP object's bytes, or `None` (with a loud message) when XDP tests cannot run
/// here. Under `cargo xtask test` as root (`GATEWAY_REQUIRE_XDP=1`) that is a failure.
pub fn xdp_object_or_skip(test: &str) -> Option<Vec<u8>> {
    let required = std::env::var_os("GATEWAY_REQUIRE_XDP").is_some();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let object = std::env::var_os("GATEWAY_EBPF_OBJECT")
        .and_then(|p| std::fs::read(p).ok())
        .filter(|o| !o.is_empty());
    let reason = match (root, &object) {
        (false, _) => "not running as root",
        (true, None) => "GATEWAY_EBPF_OBJECT is not set (run `cargo xtask test`)",
        (true, Some(_)) => return object,
    };
    assert!(!required, "{test}: XDP test required but {reason}");
    eprintln!("\n*** SKIPPED {test}: {reason} ***\n");
    None
}

/// A namespace plus a veth pair: `outer` in the root namespace, `inner` inside.
pub struct VethNamespace {
    pub namespace: String,
    pub outer: String,
    pub inner: String,
    /// Every fixture uses the same addresses: one at a time per test process.
    _exclusive: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl VethNamespace {
    /// Creates `gwt<tag>` with veth `gwx<tag>o` (outside) and `gwx<tag>i` (inside), both up,
    /// with 10.213.0.1/30 and fd00:213::1/64 outside, 10.213.0.2/30 and fd00:213::2/64
    /// inside the namespace.
    pub fn create(tag: &str) -> Self {
        let me = Self {
            namespace: format!("gwt{tag}"),
            outer: format!("gwx{tag}o"),
            inner: format!("gwx{tag}i"),
            _exclusive: ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()),
        };
        me.cleanup();
        let steps: [&[&str]; 9] = [
            &["netns", "add", &me.namespace],
            &[
                "link", "add", &me.outer, "type", "veth", "peer", "name", &me.inner,
            ],
            &["link", "set", &me.inner, "netns", &me.namespace],
            &["addr", "add", "10.213.0.1/30", "dev", &me.outer],
            &["link", "set", &me.outer, "up"],
            &[
                "-n",
                &me.namespace,
                "addr",
                "add",
                "10.213.0.2/30",
                "dev",
                &me.inner,
            ],
            &["-n", &me.namespace, "link", "set", &me.inner, "up"],
            &["addr", "add", "fd00:213::1/64", "dev", &me.outer, "nodad"],
            &[
                "-n",
                &me.namespace,
                "addr",
                "add",
                "fd00:213::2/64",
                "dev",
                &me.inner,
                "nodad",
            ],
        ];
        for step in steps {
            if let Err(e) = ip(step) {
                panic!("creating the test namespace failed: {e}");
            }
        }
        me
    }

    /// `ip -d link show` of the outer interface.
    pub fn outer_link_details(&self) -> String {
        let out = Command::new("ip")
            .args(["-d", "link", "show", "dev", &self.outer])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends `GET /` from inside the namespace to `host:port` with bash's /dev/tcp (no
    /// client tool needed); the first response line, or `None` when nothing answered
    /// within `timeout_secs`.
    pub fn http_get_from_inside(&self, host: &str, port: u16, timeout_secs: u32) -> Option<String> {
        self.http_get_path_from_inside(host, port, "/", timeout_secs)
    }

    /// Like [`VethNamespace::http_get_from_inside`], for `path`.
    pub fn http_get_path_from_inside(
        &self,
        host: &str,
        port: u16,
        path: &str,
        timeout_secs: u32,
    ) -> Option<String> {
        let script = format!(
            "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n1 <&3"
        );
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.namespace,
                "timeout",
                &timeout_secs.to_string(),
                "bash",
                "-c",
                &script,
            ])
            .output()
            .expect("ip netns exec");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (!line.is_empty()).then_some(line)
    }

    fn cleanup(&self) {
        let _ = ip(&["link", "del", &self.outer]);
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        self.cleanup();
    }
}
