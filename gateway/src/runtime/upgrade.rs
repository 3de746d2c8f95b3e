//! Zero-downtime binary upgrade by socket hand-off. A running gateway with
//! `gateway.upgrade_socket` listens on that unix socket; a new process started with
//! `gateway run --takeover` connects, receives every listening socket (SCM_RIGHTS), starts
//! its workers on them and says `ready`; the old process then drains and exits. The
//! listening sockets are the same kernel objects throughout, so no connection waiting
//! in an accept queue is lost and no port is ever closed. If the new process fails
//! before `ready`, the old one simply keeps serving.

use std::{
    io::{BufRead, BufReader, IoSlice, IoSliceMut, Write},
    mem::MaybeUninit,
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::mpsc::Sender,
    time::Duration,
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::admin::Control;

/// Most sockets one hand-off carries (the kernel's SCM_MAX_FD).
pub const MAX_SOCKETS: usize = 253;

/// Why a hand-off failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hand-off failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("hand-off failed: {0}")]
    Protocol(String),
}

/// What the old process says before the sockets: where each listener is bound and which
/// listener each passed socket belongs to.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    addrs: Vec<SocketAddr>,
    listener_of: Vec<usize>,
}

/// Old side: serves `path`, handing `sockets` (listener index, socket) to the first
/// process that asks; once it is `ready`, tells the main loop to drain and stop.
pub fn serve(
    path: &Path,
    sockets: Vec<(usize, OwnedFd)>,
    addrs: Vec<SocketAddr>,
    control: Sender<Control>,
) -> Result<(), UpgradeError> {
    let socket_error = |source| UpgradeError::Socket {
        path: path.to_owned(),
        source,
    };
    if sockets.len() > MAX_SOCKETS {
        return Err(UpgradeError::Protocol(format!(
            "{} listening sockets is more than one hand-off carries ({MAX_SOCKETS})",
            sockets.len()
        )));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(socket_error)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(socket_error)?;
    }
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("upgrade".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match hand_off(stream, &sockets, &addrs) {
                    Ok(()) => {
                        tracing::info!("upgrade: the new process took over the listeners; draining");
                        let _ = control.send(Control::HandedOver);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, path = %path.display(), "upgrade aborted; still serving");
                    }
                }
            }
        })
        .map_err(UpgradeError::Io)?;
    Ok(())
}

fn hand_off(
    stream: UnixStream,
    sockets: &[(usize, OwnedFd)],
    addrs: &[SocketAddr],
) -> Result<(), UpgradeError> {
    let header = Header {
        addrs: addrs.to_vec(),
        listener_of: sockets.iter().map(|(l, _)| *l).collect(),
    };
    let mut line =
        serde_json::to_vec(&header).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    line.push(b'\n');
    let fds: Vec<_> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(UpgradeError::Protocol(
            "too many sockets for one message".into(),
        ));
    }
    let sent = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(&line)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    if sent < line.len() {
        (&stream).write_all(&line[sent..])?;
    }
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    if answer.trim() == "ready" {
        Ok(())
    } else {
        Err(UpgradeError::Protocol(format!(
            "the new process did not become ready ({:?})",
            answer.trim()
        )))
    }
}

/// The listeners received from the old process.
pub struct Takeover {
    /// Where each listener is bound, in the old config's order.
    pub addrs: Vec<SocketAddr>,
    /// Every socket with the index of its listener.
    pub sockets: Vec<(usize, TcpListener)>,
    stream: UnixStream,
}

impl Takeover {
    /// New side: connects to `path` and receives the listening sockets.
    pub fn connect(path: &Path) -> Result<Self, UpgradeError> {
        let stream = UnixStream::connect(path).map_err(|source| UpgradeError::Socket {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut data = vec![0u8; 64 * 1024];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let mut line = data[..received.bytes].to_vec();
        let mut reader = BufReader::new(&stream);
        while !line.ends_with(b"\n") {
            let mut more = Vec::new();
            if reader.read_until(b'\n', &mut more)? == 0 {
                return Err(UpgradeError::Protocol("the old process hung up".into()));
            }
            line.extend_from_slice(&more);
        }
        let header: Header =
            serde_json::from_slice(&line).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
        if header.listener_of.len() != fds.len() {
            return Err(UpgradeError::Protocol(format!(
                "{} sockets announced, {} received",
                header.listener_of.len(),
                fds.len()
            )));
        }
        let sockets = header
            .listener_of
            .into_iter()
            .zip(fds)
            .map(|(listener, fd)| (listener, TcpListener::from(fd)))
            .collect();
        Ok(Self {
            addrs: header.addrs,
            sockets,
            stream,
        })
    }

    /// Tells the old process to drain and exit: this one is serving.
    pub fn ready(mut self) -> Result<(), UpgradeError> {
        self.stream.write_all(b"ready\n")?;
        Ok(())
    }
}
