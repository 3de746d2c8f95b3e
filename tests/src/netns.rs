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

/// The gateway's default `[xdp] pin_path`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/gateway";

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

    /// The gateway's pin folder for the outer interface (default `[xdp] pin_path`).
    pub fn pin_folder(&self) -> std::path::PathBuf {
        std::path::Path::new(DEFAULT_PIN_PATH).join(&self.outer)
    }

    fn cleanup(&self) {
        let _ = ip(&["link", "del", &self.outer]);
        let _ = ip(&["netns", "del", &self.namespace]);
        let _ = std::fs::remove_dir_all(self.pin_folder());
    }
}

/// An IPv4 + TCP SYN from `src:sport` to `dst`, checksums filled in.
fn syn_packet(src: std::net::Ipv4Addr, sport: u16, dst: std::net::SocketAddrV4) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[..12].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..28].copy_from_slice(&u32::from(sport).wrapping_mul(2_654_435_761).to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&64_240u16.to_be_bytes());
    // Pseudo-header: addresses, protocol, TCP length.
    let mut pseudo = 0u32;
    for pair in p[12..20].chunks(2) {
        pseudo += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    pseudo += 6 + 20;
    let tcp_sum = checksum(&p[20..], pseudo);
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

fn checksum(bytes: &[u8], start: u32) -> u16 {
    let mut sum = start;
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Runs `body` on a new thread that joined network namespace `name` (as made by
/// `ip netns add`); the rest of the process stays where it is.
pub fn run_in_namespace<T: Send + 'static>(
    name: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let namespace = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        let ns = std::fs::File::open(&namespace).expect("open the namespace");
        // SAFETY: a namespace descriptor; only this thread changes network namespace.
        let joined = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
        body()
    })
}

/// Where a flood's packets are written.
enum FloodPath {
    /// A raw IP socket: routed like any packet the namespace sends.
    Routed(std::net::SocketAddrV4),
    /// A packet socket on `device`: Ethernet frames to `mac`, past routing and neighbours.
    Link {
        device: String,
        mac: [u8; 6],
        dst: std::net::SocketAddrV4,
    },
}

impl VethNamespace {
    /// Floods `dst` with TCP SYNs from `src` (any address: the raw socket spoofs it), from
    /// a thread that joined the namespace, at `rate` packets per second (`None`: as fast
    /// as it can) until `stop` is set; the thread returns how many it sent.
    pub fn flood_syns(
        &self,
        src: std::net::Ipv4Addr,
        dst: std::net::SocketAddrV4,
        rate: Option<u64>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<u64> {
        self.flood(src, FloodPath::Routed(dst), rate, stop)
    }

    /// Like [`VethNamespace::flood_syns`], as Ethernet frames addressed to `mac`, written
    /// on `device` (an interface inside the namespace) through a packet socket.
    pub fn flood_syn_frames(
        &self,
        device: &str,
        mac: [u8; 6],
        src: std::net::Ipv4Addr,
        dst: std::net::SocketAddrV4,
        rate: Option<u64>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<u64> {
        let path = FloodPath::Link {
            device: device.to_owned(),
            mac,
            dst,
        };
        self.flood(src, path, rate, stop)
    }

    /// Runs `body` on a thread inside the namespace.
    pub fn run_inside<T: Send + 'static>(
        &self,
        body: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        run_in_namespace(&self.namespace, body)
    }

    fn flood(
        &self,
        src: std::net::Ipv4Addr,
        path: FloodPath,
        rate: Option<u64>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<u64> {
        self.run_inside(move || {
            use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};
            let (family, kind, protocol) = match path {
                FloodPath::Routed(_) => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW),
                FloodPath::Link { .. } => (libc::AF_PACKET, libc::SOCK_RAW, 0),
            };
            // SAFETY: plain socket creation.
            let fd = unsafe { libc::socket(family, kind, protocol) };
            assert!(fd >= 0, "flood socket: {}", std::io::Error::last_os_error());
            // SAFETY: the descriptor was just created and is owned here.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut frame = Vec::with_capacity(54);
            // SAFETY: all-zero is a valid value of both address types.
            let mut inet: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut link: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let (dst, header, address, address_len) = match &path {
                FloodPath::Routed(dst) => {
                    inet.sin_family = libc::AF_INET as libc::sa_family_t;
                    inet.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
                    (
                        *dst,
                        0,
                        (&raw const inet).cast::<libc::sockaddr>(),
                        std::mem::size_of::<libc::sockaddr_in>(),
                    )
                }
                FloodPath::Link { device, mac, dst } => {
                    let name = std::ffi::CString::new(device.as_str()).expect("name");
                    // SAFETY: a valid NUL-terminated name.
                    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
                    assert!(index != 0, "no interface {device} in the namespace");
                    link.sll_family = libc::AF_PACKET as u16;
                    link.sll_protocol = 0x0800u16.to_be();
                    link.sll_ifindex = index as i32;
                    link.sll_halen = 6;
                    link.sll_addr[..6].copy_from_slice(mac);
                    bypass_qdisc(socket.as_fd());
                    frame.extend_from_slice(mac);
                    frame.extend_from_slice(&[0x02, 0, 0, 0, 0x0f, 0x0d, 0x08, 0x00]);
                    (
                        *dst,
                        14,
                        (&raw const link).cast::<libc::sockaddr>(),
                        std::mem::size_of::<libc::sockaddr_ll>(),
                    )
                }
            };
            frame.resize(header + 40, 0);
            let mut frames = vec![frame; 64];
            let mut sent = 0u64;
            let mut sport = 1024u16;
            let started = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(rate) = rate {
                    let due = std::time::Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                // One sendmmsg per batch: the receiving side sees bursts, as from a NIC.
                for frame in frames.iter_mut() {
                    sport = sport.checked_add(1).unwrap_or(1024);
                    frame[header..].copy_from_slice(&syn_packet(src, sport, dst));
                }
                let rc = send_batch(socket.as_fd(), address, address_len, &mut frames);
                if rc > 0 {
                    sent += rc as u64;
                }
            }
            sent
        })
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Makes a packet socket write straight to the driver: no qdisc in the way.
pub fn bypass_qdisc(socket: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd as _;
    let one: libc::c_int = 1;
    // SAFETY: a valid option value of the stated size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Writes every frame of `frames` to `address` (of `address_len` bytes) with one
/// `sendmmsg`, so the receiving side sees a burst, as from a NIC; how many went
/// (negative on error).
pub fn send_batch(
    socket: std::os::fd::BorrowedFd<'_>,
    address: *const libc::sockaddr,
    address_len: usize,
    frames: &mut [Vec<u8>],
) -> libc::c_int {
    use std::os::fd::AsRawFd as _;
    let mut iovecs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: f.len(),
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: all-zero is a valid msghdr.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_name = address.cast_mut().cast();
            header.msg_namelen = address_len as libc::socklen_t;
            header.msg_iov = iov;
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    // SAFETY: every header points at a live buffer and at the caller's address.
    unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            messages.as_mut_ptr(),
            messages.len() as libc::c_uint,
            0,
        )
    }
}
