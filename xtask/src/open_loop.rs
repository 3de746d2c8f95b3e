//! The open-loop load generator behind S7: one thread on the harness core drives every
//! keep-alive connection through epoll, paced by a timerfd.
//!
//! A thread per connection sleeping between requests cost the harness core about 58 µs
//! per request in context switches and timer wake-ups, so at S7's loads that core was
//! saturated and the run measured its own run queue more than the proxy. One event loop
//! costs a few system calls per request.
//!
//! Each connection sends at `rate / connections`, staggered, one request in flight at a
//! time. A latency runs from the request's *scheduled* time, not from when it could be
//! sent: a response that comes late delays the next send on its connection, and that wait
//! is counted (no coordinated omission).

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// How long the loop waits for any event before it gives up on the proxy.
const STALL_LIMIT: Duration = Duration::from_secs(10);
/// The epoll token of the pacing timer (connections use their index).
const TIMER_TOKEN: u64 = u64::MAX;

/// What to offer: `rate` requests/s of `GET path` to `127.0.0.1:port`, over `connections`
/// keep-alive connections, for `duration`.
pub struct Offer<'a> {
    pub port: u16,
    pub path: &'a str,
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    /// The CPU the generator's thread runs on.
    pub cpu: usize,
}

/// Runs the offer and returns every request's latency in microseconds, from its
/// scheduled time to its response's last byte.
pub fn run(offer: &Offer<'_>) -> Result<Vec<u32>> {
    let request = format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", offer.path).into_bytes();
    let &Offer {
        port,
        rate,
        duration,
        connections,
        cpu,
        ..
    } = offer;
    std::thread::spawn(move || {
        gateway_tests::pin_thread(0, cpu);
        Generator::connect(port, connections)?.drive(&request, rate, duration)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
}

/// One keep-alive connection's schedule and the response it is reading.
struct Connection {
    stream: TcpStream,
    /// When its next (or in-flight) request is scheduled.
    due: Instant,
    in_flight: bool,
    response: Vec<u8>,
}

/// The event loop: the connections, their epoll set and the pacing timer.
struct Generator {
    connections: Vec<Connection>,
    epoll: OwnedFd,
    timer: OwnedFd,
}

impl Generator {
    fn connect(port: u16, count: usize) -> Result<Self> {
        // SAFETY: plain system calls; each result is checked before it is wrapped.
        let epoll = owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll")?;
        // SAFETY: as above.
        let timer = owned(
            unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            },
            "timerfd",
        )?;
        watch(&epoll, timer.as_raw_fd(), TIMER_TOKEN)?;
        let mut connections = Vec::with_capacity(count);
        for index in 0..count {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            watch(&epoll, stream.as_raw_fd(), index as u64)?;
            connections.push(Connection {
                stream,
                due: Instant::now(),
                in_flight: false,
                response: Vec::with_capacity(16 * 1024),
            });
        }
        Ok(Self {
            connections,
            epoll,
            timer,
        })
    }

    fn drive(mut self, request: &[u8], rate: f64, duration: Duration) -> Result<Vec<u32>> {
        let count = self.connections.len();
        let interval = Duration::from_secs_f64(count as f64 / rate);
        let start = Instant::now() + Duration::from_millis(50);
        let end = start + duration;
        for (i, connection) in self.connections.iter_mut().enumerate() {
            connection.due = start + interval.mul_f64(i as f64 / count as f64);
        }
        let mut latencies = Vec::with_capacity((rate * duration.as_secs_f64()) as usize + count);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; count + 1];
        loop {
            let now = Instant::now();
            let mut next_due: Option<Instant> = None;
            let mut busy = false;
            for connection in &mut self.connections {
                if connection.in_flight {
                    busy = true;
                } else if connection.due < end {
                    if connection.due <= now {
                        send(&mut connection.stream, request)?;
                        connection.in_flight = true;
                        busy = true;
                    } else {
                        next_due = Some(next_due.map_or(connection.due, |n| n.min(connection.due)));
                    }
                }
            }
            if !busy && next_due.is_none() {
                return Ok(latencies);
            }
            if let Some(due) = next_due {
                arm(&self.timer, due.saturating_duration_since(now))?;
            }
            let ready = wait(&self.epoll, &mut events)?;
            for event in &events[..ready] {
                if event.u64 == TIMER_TOKEN {
                    drain_timer(&self.timer);
                    continue;
                }
                let connection = &mut self.connections[event.u64 as usize];
                if receive(connection)? {
                    let done = Instant::now();
                    let micros = done.saturating_duration_since(connection.due).as_micros();
                    latencies.push(micros.min(u128::from(u32::MAX)) as u32);
                    connection.in_flight = false;
                    connection.due += interval;
                }
            }
        }
    }
}

/// Writes a whole request; with one request in flight the send buffer is empty, so a
/// short write means something is wrong, not that the socket is busy.
fn send(stream: &mut TcpStream, request: &[u8]) -> Result<()> {
    let written = stream.write(request).context("send a request")?;
    if written != request.len() {
        bail!(
            "a request was sent short ({written} of {} bytes)",
            request.len()
        );
    }
    Ok(())
}

/// Reads what the connection has; true when its response is complete (a 2xx head and a
/// `content-length` body). Anything else fails the run.
fn receive(connection: &mut Connection) -> Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match connection.stream.read(&mut chunk) {
            Ok(0) => bail!("the proxy closed the connection"),
            Ok(n) => connection.response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read a response"),
        }
    }
    if !connection.in_flight {
        if connection.response.is_empty() {
            return Ok(false);
        }
        bail!("the proxy sent bytes no request asked for");
    }
    let Some(total) = response_length(&connection.response)? else {
        return Ok(false);
    };
    match connection.response.len().cmp(&total) {
        std::cmp::Ordering::Less => Ok(false),
        std::cmp::Ordering::Equal => {
            connection.response.clear();
            Ok(true)
        }
        std::cmp::Ordering::Greater => bail!("the proxy sent more than one response"),
    }
}

/// The whole response's length once its head has arrived.
fn response_length(response: &[u8]) -> Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut head = httparse::Response::new(&mut headers);
    let head_len = match head.parse(response).context("response head")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = head.code.unwrap_or_default();
    if !(200..300).contains(&status) {
        bail!("non-2xx response: {status}");
    }
    let length: usize = head
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .context("a response without content-length")?;
    Ok(Some(head_len + length))
}

fn owned(fd: RawFd, what: &str) -> Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("create {what}"));
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn watch(epoll: &OwnedFd, fd: RawFd, token: u64) -> Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open; the kernel copies `event`.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("epoll_ctl");
    }
    Ok(())
}

/// Arms the one-shot pacing timer `after` from now (at least 1 ns: zero disarms).
fn arm(timer: &OwnedFd, after: Duration) -> Result<()> {
    let after = after.max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: the timer is open; the kernel reads `spec` and writes nothing back.
    let rc = unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("timerfd_settime");
    }
    Ok(())
}

fn drain_timer(timer: &OwnedFd) {
    let mut expirations = [0u8; 8];
    // SAFETY: the timer is open and the buffer is the 8 bytes a timerfd read needs; a
    // read that finds the timer not expired (EAGAIN) changes nothing.
    let _ = unsafe { libc::read(timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
}

/// Waits for events; a proxy silent for `STALL_LIMIT` fails the run.
fn wait(epoll: &OwnedFd, events: &mut [libc::epoll_event]) -> Result<usize> {
    loop {
        // SAFETY: `events` is a valid buffer of the length passed.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                STALL_LIMIT.as_millis() as i32,
            )
        };
        match n {
            0 => bail!("no response for {} s", STALL_LIMIT.as_secs()),
            n if n > 0 => return Ok(n as usize),
            _ => {
                let error = std::io::Error::last_os_error();
                if error.kind() != ErrorKind::Interrupted {
                    return Err(error).context("epoll_wait");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::response_length;

    #[test]
    fn a_response_is_complete_at_its_head_plus_content_length() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(response_length(head).unwrap(), Some(head.len() + 5));
        assert_eq!(
            response_length(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(),
            None
        );
        assert!(response_length(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(response_length(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
