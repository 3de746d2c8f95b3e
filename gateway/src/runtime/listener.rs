//! Listening sockets: one `SO_REUSEPORT` socket per listener per worker, all bound on the
//! main thread so a bad address fails at startup, not inside a worker. A port of 0 is
//! resolved by the first socket and reused by the others. Binding and listening are two
//! steps: the kernel queues no connection before the edge policy is in the driver.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use super::RuntimeError;
use crate::config::Config;

/// The sockets of every worker.
pub struct BoundListeners {
    /// `per_worker[w]` holds worker `w`'s sockets, each with its listener's index.
    pub per_worker: Vec<Vec<(usize, TcpListener)>>,
    /// The address each listener actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
}

/// Binds `workers` sockets for every configured listener.
pub fn bind_all(config: &Config, workers: usize) -> Result<BoundListeners, RuntimeError> {
    let mut per_worker: Vec<Vec<(usize, TcpListener)>> = (0..workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let mut addr = l.bind;
        for sockets in &mut per_worker {
            let socket = bind_one(addr, None).map_err(|source| RuntimeError::Bind {
                name: l.name.clone(),
                addr,
                source,
            })?;
            addr = socket.local_addr().map_err(|source| RuntimeError::Bind {
                name: l.name.clone(),
                addr,
                source,
            })?;
            sockets.push((index, socket));
        }
        addrs.push(addr);
    }
    Ok(BoundListeners { per_worker, addrs })
}

/// The sockets handed over by the running gateway (binary upgrade), spread over
/// `workers`: every received socket is served by some worker (a socket nobody accepts
/// on would strand the connections the kernel queues on it), and a listener with fewer
/// sockets than workers gets more bound next to them (`SO_REUSEPORT`).
pub fn from_takeover(
    config: &Config,
    workers: usize,
    addrs: Vec<SocketAddr>,
    sockets: Vec<(usize, TcpListener)>,
) -> Result<BoundListeners, RuntimeError> {
    let same = addrs.len() == config.listeners.len()
        && config.listeners.iter().zip(&addrs).all(|(l, addr)| {
            l.bind.ip() == addr.ip() && (l.bind.port() == 0 || l.bind.port() == addr.port())
        });
    if !same {
        return Err(RuntimeError::Takeover(
            "the listeners differ from the running gateway's: restart instead".into(),
        ));
    }
    let mut per_worker: Vec<Vec<(usize, TcpListener)>> = (0..workers).map(|_| Vec::new()).collect();
    let mut served = vec![0usize; addrs.len()];
    for (listener, socket) in sockets {
        if listener >= addrs.len() {
            return Err(RuntimeError::Takeover(format!(
                "socket for unknown listener {listener}"
            )));
        }
        per_worker[served[listener] % workers].push((listener, socket));
        served[listener] += 1;
    }
    for (index, (l, addr)) in config.listeners.iter().zip(&addrs).enumerate() {
        for sockets in per_worker.iter_mut().skip(served[index]) {
            let socket = bind_one(*addr, Some(l.backlog)).map_err(|source| RuntimeError::Bind {
                name: l.name.clone(),
                addr: *addr,
                source,
            })?;
            sockets.push((index, socket));
        }
    }
    Ok(BoundListeners { per_worker, addrs })
}

fn bind_one(addr: SocketAddr, backlog: Option<u32>) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per accept.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if let Some(backlog) = backlog {
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    }
    Ok(socket.into())
}

impl BoundListeners {
    /// Starts listening on every socket (a socket handed over already listens; listening
    /// again only restates its backlog).
    pub fn listen(&self, config: &Config) -> Result<(), RuntimeError> {
        for (index, socket) in self.per_worker.iter().flatten() {
            let listener = &config.listeners[*index];
            let backlog = i32::try_from(listener.backlog).unwrap_or(i32::MAX);
            socket2::SockRef::from(socket)
                .listen(backlog)
                .map_err(|source| RuntimeError::Bind {
                    name: listener.name.clone(),
                    addr: self.addrs[*index],
                    source,
                })?;
        }
        Ok(())
    }
}
