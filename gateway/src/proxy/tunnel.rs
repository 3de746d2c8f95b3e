//! WebSocket tunnels: after the upstream answered a handshake with `101`, bytes are
//! copied both ways, unchanged, until either side closes or the tunnel stays quiet for
//! the idle timeout. Frames are not parsed: the endpoints own the WebSocket protocol
//! (masking, ping/pong, close), the gateway owns the connection's lifetime.

use std::{
    cell::Cell,
    time::{Duration, Instant},
};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split, Splitable};

use crate::upstream::UpstreamStream;

/// Read size of each direction.
const TUNNEL_BUFFER: usize = 16 * 1024;
/// Once one side has closed, how long the other direction may still finish.
const LINGER: Duration = Duration::from_secs(5);

/// Bytes a tunnel carried: (client to upstream, upstream to client).
pub type TunnelBytes = (u64, u64);

/// Runs the tunnel between `client` and `upstream`. `client_early` and
/// `upstream_early` are bytes each side sent right behind its head, already read.
pub async fn run<C>(
    client: C,
    client_early: &[u8],
    upstream: UpstreamStream,
    upstream_early: &[u8],
    idle: Duration,
) -> TunnelBytes
where
    C: Split + AsyncReadRent + AsyncWriteRent,
{
    match upstream {
        UpstreamStream::Plain(stream) => {
            pump(client, client_early, stream, upstream_early, idle).await
        }
        UpstreamStream::Tls(stream) => {
            pump(client, client_early, *stream, upstream_early, idle).await
        }
    }
}

/// When the tunnel last carried a byte, and when its first direction ended.
struct Activity {
    last: Cell<Instant>,
    first_close: Cell<Option<Instant>>,
}

async fn pump<C, U>(
    client: C,
    client_early: &[u8],
    upstream: U,
    upstream_early: &[u8],
    idle: Duration,
) -> TunnelBytes
where
    C: Split + AsyncReadRent + AsyncWriteRent,
    U: Split + AsyncReadRent + AsyncWriteRent,
{
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let activity = Activity {
        last: Cell::new(Instant::now()),
        first_close: Cell::new(None),
    };
    let (sent, received) = (Cell::new(0u64), Cell::new(0u64));
    let both = async {
        monoio::join!(
            copy(client_read, upstream_write, client_early, &activity, &sent),
            copy(
                upstream_read,
                client_write,
                upstream_early,
                &activity,
                &received
            ),
        )
    };
    // Dropping the copies (idle, or a side that never closes after the other did) only
    // happens when the tunnel ends anyway, so a cancelled read loses nothing that matters.
    let watchdog = async {
        loop {
            let deadline = match activity.first_close.get() {
                Some(closed) => closed + LINGER,
                None => activity.last.get() + idle,
            };
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            monoio::time::sleep(deadline - now).await;
        }
    };
    monoio::select! {
        _ = both => {},
        () = watchdog => tracing::debug!("websocket tunnel closed: idle"),
    }
    (sent.get(), received.get())
}

/// Copies `src` to `dst` (after `early`) until `src` ends or either side fails, then
/// closes `dst` for writing so the other side sees the end too.
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(
    mut src: R,
    mut dst: W,
    early: &[u8],
    activity: &Activity,
    carried: &Cell<u64>,
) {
    let mut buf = Vec::with_capacity(TUNNEL_BUFFER.max(early.len()));
    buf.extend_from_slice(early);
    loop {
        if !buf.is_empty() {
            let len = buf.len() as u64;
            let (written, returned) = dst.write_all(buf).await;
            buf = returned;
            buf.clear();
            if written.is_err() {
                break;
            }
            carried.set(carried.get() + len);
        }
        let (read, returned) = src.read(buf).await;
        buf = returned;
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => activity.last.set(Instant::now()),
        }
    }
    let _ = dst.shutdown().await;
    if activity.first_close.get().is_none() {
        activity.first_close.set(Some(Instant::now()));
    }
}
