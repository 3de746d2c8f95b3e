//! A fault-injecting TCP proxy for tests (there is no netem on the test kernel): placed
//! between the gateway and a real backend, it misbehaves the way backends and networks
//! do. The fault can be changed while it runs; every request (also on a connection the
//! gateway kept alive) reads the current one.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

/// How the proxy misbehaves on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relay faithfully.
    None,
    /// Accept, then reset the connection at once (RST, nothing read).
    Refuse,
    /// Read the request and close without a byte of response.
    CloseEarly,
    /// Read the request and never answer.
    HangBeforeHeaders,
    /// Relay the response head, then stall forever.
    HangAfterHeaders,
    /// Relay half the response, then reset the connection.
    ResetMidResponse,
    /// Relay the response one byte at a time, this many milliseconds apart.
    Trickle(u64),
    /// Answer with bytes that are not HTTP.
    Garbage,
}

/// A running fault proxy; stops accepting when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl FaultProxy {
    /// Starts a proxy to `backend` with `fault`.
    pub fn start(backend: SocketAddr, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let proxy = Self {
            addr: listener.local_addr().expect("addr"),
            fault: Arc::new(Mutex::new(fault)),
            stop: Arc::default(),
            connections: Arc::default(),
        };
        let (current, stop, connections) = (
            proxy.fault.clone(),
            proxy.stop.clone(),
            proxy.connections.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                connections.fetch_add(1, Ordering::Relaxed);
                let (current, stop) = (current.clone(), stop.clone());
                std::thread::spawn(move || relay(client, backend, &current, &stop));
            }
        });
        proxy
    }

    /// Changes the fault for connections accepted from now on.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Resets `stream` (SO_LINGER 0, then close).
fn reset(stream: TcpStream) {
    let socket = socket2::Socket::from(stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

/// Reads one request head (and no body: the tests send bodiless requests).
fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// Sends `head` to the backend and reads its whole response (Content-Length framed).
fn fetch(backend: SocketAddr, head: &[u8]) -> Option<Vec<u8>> {
    let mut upstream = TcpStream::connect(backend).ok()?;
    upstream.write_all(head).ok()?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if response.len() >= end + 4 + length {
                response.truncate(end + 4 + length);
                return Some(response);
            }
        }
        match upstream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
    }
}

fn stall(stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn relay(mut client: TcpStream, backend: SocketAddr, current: &Mutex<Fault>, stop: &AtomicBool) {
    let fault_now = || *current.lock().unwrap_or_else(|e| e.into_inner());
    if fault_now() == Fault::Refuse {
        return reset(client);
    }
    while let Some(head) = read_head(&mut client) {
        let fault = fault_now();
        match fault {
            Fault::Refuse => return reset(client),
            Fault::CloseEarly => {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Fault::HangBeforeHeaders => return stall(stop),
            Fault::Garbage => {
                let _ = client.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
                return;
            }
            _ => {}
        }
        let Some(response) = fetch(backend, &head) else {
            return;
        };
        match fault {
            Fault::HangAfterHeaders => {
                let end = response
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(response.len(), |e| e + 4);
                let _ = client.write_all(&response[..end]);
                return stall(stop);
            }
            Fault::ResetMidResponse => {
                let _ = client.write_all(&response[..response.len() / 2]);
                let _ = client.flush();
                std::thread::sleep(Duration::from_millis(50));
                return reset(client);
            }
            Fault::Trickle(every) => {
                for byte in &response {
                    if client.write_all(std::slice::from_ref(byte)).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(every));
                }
            }
            _ => {
                if client.write_all(&response).is_err() {
                    return;
                }
            }
        }
    }
}
