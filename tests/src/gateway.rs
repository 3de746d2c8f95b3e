//! The gateway under test: the real binary, a temporary config file, captured logs.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

/// Path of the `gateway` binary: `$GATEWAY_BIN`, or a debug build made once per run.
pub fn gateway_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("GATEWAY_BIN") {
            return PathBuf::from(bin);
        }
        let root = workspace_root();
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "-p", "gateway", "--bin", "gateway"])
            .current_dir(&root)
            .status()
            .expect("run cargo build for the gateway binary");
        assert!(status.success(), "building the gateway binary failed");
        root.join("target/debug/gateway")
    })
    .clone()
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A running gateway; killed on drop if still running.
pub struct Gateway {
    child: Child,
    /// Listener addresses in config order, as logged at startup.
    pub addrs: Vec<SocketAddr>,
    /// The admin API's address, when the config enables it.
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    _config: tempfile::NamedTempFile,
}

impl Gateway {
    /// Starts `gateway run` on `config` and waits until every listener is up.
    pub fn start(config: &str) -> Self {
        Self::try_start(config)
            .unwrap_or_else(|log| panic!("gateway did not start; its log:\n{log}"))
    }

    /// Like [`Gateway::start`], returning the log on failure.
    pub fn try_start(config: &str) -> Result<Self, String> {
        Self::try_start_with(config, &[])
    }

    /// Starts `gateway run --config FILE <extra args>` (e.g. `--takeover`).
    pub fn start_with(config: &str, extra: &[&str]) -> Self {
        Self::try_start_with(config, extra)
            .unwrap_or_else(|log| panic!("gateway did not start; its log:\n{log}"))
    }

    /// Starts `gateway run` inside network namespace `namespace` (`ip netns exec`).
    pub fn start_in_namespace(namespace: &str, config: &str) -> Self {
        Self::try_start_in(Some(namespace), config, &[])
            .unwrap_or_else(|log| panic!("gateway did not start; its log:\n{log}"))
    }

    fn try_start_with(config: &str, extra: &[&str]) -> Result<Self, String> {
        Self::try_start_in(None, config, extra)
    }

    fn try_start_in(namespace: Option<&str>, config: &str, extra: &[&str]) -> Result<Self, String> {
        let listeners = config.matches("[[listeners]]").count();
        let wants_admin = config
            .lines()
            .any(|l| l.trim_start().starts_with("admin ="));
        let file = write_config(config);
        let mut command = match namespace {
            Some(namespace) => {
                let mut c = Command::new("ip");
                // `ip netns exec` execs the binary: the child's pid is the gateway's.
                c.args(["netns", "exec", namespace]).arg(gateway_bin());
                c
            }
            None => Command::new(gateway_bin()),
        };
        let mut child = command
            .args(["run", "--config"])
            .arg(file.path())
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("GATEWAY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let addr_of = |line: &str| -> Option<SocketAddr> {
                line.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            let addrs: Vec<SocketAddr> = text
                .lines()
                .filter(|l| l.contains(" listening listener="))
                .filter_map(addr_of)
                .collect();
            let admin = text
                .lines()
                .filter(|l| l.contains("admin API listening"))
                .find_map(addr_of);
            if addrs.len() == listeners
                && text.lines().any(|l| l.contains(" ready workers="))
                && (admin.is_some() || !wants_admin)
            {
                return Ok(Self {
                    child,
                    addrs,
                    admin,
                    log,
                    _config: file,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                let text = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return Err(format!("exited with {status}\n{text}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("timed out waiting for listeners\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The config file the gateway runs on (rewrite it, then SIGHUP, to reload).
    pub fn config_path(&self) -> &Path {
        self._config.path()
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `needle` appears in the log (within 10 s); panics with the log if not.
    pub fn wait_for_log(&self, needle: &str) {
        self.wait_for_log_after(0, needle);
    }

    /// Like [`Gateway::wait_for_log`], looking only at what was logged after the log
    /// had `offset` bytes (see [`Gateway::log_len`]).
    pub fn wait_for_log_after(&self, offset: usize, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().get(offset..).is_some_and(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Bytes logged so far.
    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// SIGHUP, then waits for the verdict: `true` when the new config is in service on
    /// the workers, `false` when the reload was refused and the old one stays.
    pub fn reload(&self) -> bool {
        let offset = self.log_len();
        self.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            let new = log.get(offset..).unwrap_or("");
            if new.contains("config reloaded") {
                // Workers pick the new snapshot up right after the main thread posts it.
                std::thread::sleep(Duration::from_millis(100));
                return true;
            }
            if new.contains("reload refused") {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "no reload verdict in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:") * 1024
    }

    /// Resets the peak (VmHWM) to the current resident memory, so a later
    /// [`Gateway::peak_rss`] measures what came after, not start-up transients (the
    /// kernel BTF that loading eBPF objects parses is freed again at once).
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("reset the peak RSS (clear_refs)");
    }

    /// Current resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:") * 1024
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing in /proc/{pid}/status"))
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `config` to a temporary `.toml` file.
pub fn write_config(config: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp config");
    std::fs::write(file.path(), config).expect("write config");
    file
}

/// Runs `gateway <args>` to completion: (exit status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(gateway_bin())
        .args(args)
        .output()
        .expect("run gateway");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
