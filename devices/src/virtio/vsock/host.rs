//! The host ends of vsock connections.
//!
//! - [`HybridListener`]: Firecracker's hybrid Unix socket. A host process
//!   connects to PATH and writes `CONNECT <port>\n`; once the guest accepts,
//!   it reads `OK <host port>\n` and then talks to the guest.
//! - [`connect_guest_service`]: a guest connecting to host port P reaches a
//!   Unix listener at `<PATH>_P`.
//! - [`VsockConnector`]: the same as CONNECT for code in this process,
//!   without a socket file: one end of a socketpair goes to the device.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::Error;

/// How long [`VsockConnector::connect`] waits for the guest to accept.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connector requests the device has not picked up yet.
const MAX_QUEUED_CONNECTS: usize = 64;
/// `CONNECT 4294967295\n` is 19 bytes.
const MAX_LINE: usize = 32;

/// The listening hybrid socket; removes its file when dropped.
pub(crate) struct HybridListener {
    listener: UnixListener,
    path: PathBuf,
}

impl HybridListener {
    /// Listens on `path`. A socket file left by a dead VMM is replaced; a
    /// live one, or any other file, is an error.
    pub fn bind(path: &Path) -> Result<Self, Error> {
        let socket_err = |source| Error::Socket {
            path: path.to_path_buf(),
            source,
        };
        // `<path>_<u32>` must fit in sockaddr_un too.
        if path.as_os_str().len() + 11 >= sun_path_len() {
            return Err(Error::PathTooLong(path.to_path_buf()));
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if connect_nonblocking(path).is_ok() {
                    return Err(socket_err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process is listening on it",
                    )));
                }
                std::fs::remove_file(path).map_err(socket_err)?;
            }
            Ok(_) => return Err(Error::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(socket_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(socket_err)?;
        let this = Self {
            listener,
            path: path.to_path_buf(),
        };
        this.listener.set_nonblocking(true).map_err(socket_err)?;
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn accept(&self) -> io::Result<UnixStream> {
        let (stream, _) = self.listener.accept()?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }

    pub fn as_raw_fd(&self) -> i32 {
        self.listener.as_raw_fd()
    }
}

impl Drop for HybridListener {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn sun_path_len() -> usize {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len()
}

/// Connects to a Unix listener without blocking: a listener whose backlog
/// is full fails with EAGAIN instead of stalling the device's thread.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unusable socket path",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain syscall; the fd is checked and owned right after.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// The Unix listener a guest connection to host `port` reaches.
pub(crate) fn guest_service_path(base: &Path, port: u32) -> PathBuf {
    let mut path = base.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Connects to the host service for a guest's REQUEST to `port`.
pub(crate) fn connect_guest_service(base: &Path, port: u32) -> io::Result<UnixStream> {
    connect_nonblocking(&guest_service_path(base, port))
}

/// An accepted hybrid-socket client that has not finished its CONNECT line.
pub(crate) struct PendingHost {
    pub stream: UnixStream,
    line: Vec<u8>,
}

/// What reading a CONNECT line gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// Not complete yet; wait for more bytes.
    More,
    Connect(u32),
    /// Bad line, EOF or error: close the stream.
    Bad,
}

impl PendingHost {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            line: Vec::new(),
        }
    }

    /// Reads the line one byte at a time so no byte the client sends after
    /// it (its first data) is consumed here.
    pub fn read_line(&mut self) -> LineRead {
        let mut byte = [0u8; 1];
        loop {
            match (&self.stream).read(&mut byte) {
                Ok(0) => return LineRead::Bad,
                Ok(_) if byte[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) if self.line.len() >= MAX_LINE => return LineRead::Bad,
                Ok(_) => self.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineRead::More,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return LineRead::Bad,
            }
        }
    }
}

fn parse_connect(line: &[u8]) -> LineRead {
    let text = std::str::from_utf8(line).unwrap_or("");
    let text = text.strip_suffix('\r').unwrap_or(text);
    match text.strip_prefix("CONNECT ").map(str::parse::<u32>) {
        Some(Ok(port)) => LineRead::Connect(port),
        _ => LineRead::Bad,
    }
}

/// Requests shared between [`VsockConnector`]s and the device's worker.
pub(crate) struct ConnectorShared {
    requests: Mutex<VecDeque<(u32, UnixStream)>>,
    pub wake: EventFd,
}

impl ConnectorShared {
    pub fn take_requests(&self) -> VecDeque<(u32, UnixStream)> {
        std::mem::take(&mut *self.requests.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Opens connections to guest ports from this process, as a hybrid-socket
/// client would with `CONNECT <port>`, but with no socket file. Clones
/// share one device.
#[derive(Clone)]
pub struct VsockConnector {
    shared: Arc<ConnectorShared>,
}

impl std::fmt::Debug for VsockConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VsockConnector")
    }
}

impl VsockConnector {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            shared: Arc::new(ConnectorShared {
                requests: Mutex::new(VecDeque::new()),
                wake: EventFd::new(libc::EFD_NONBLOCK)?,
            }),
        })
    }

    pub(crate) fn shared(&self) -> Arc<ConnectorShared> {
        self.shared.clone()
    }

    /// Asks the device for a connection to guest `port` and returns at
    /// once; the stream carries `OK <host port>\n` when the guest accepts
    /// and closes if it refuses. [`await_established`] waits for that.
    pub fn request(&self, port: u32) -> io::Result<UnixStream> {
        let (ours, device) = UnixStream::pair()?;
        device.set_nonblocking(true)?;
        {
            let mut requests = self
                .shared
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if requests.len() >= MAX_QUEUED_CONNECTS {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "too many vsock connects waiting for the device",
                ));
            }
            requests.push_back((port, device));
        }
        self.shared.wake.write(1)?;
        Ok(ours)
    }

    /// A connected stream to guest `port`, or an error within
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect(&self, port: u32) -> io::Result<UnixStream> {
        self.connect_timeout(port, DEFAULT_CONNECT_TIMEOUT)
    }

    pub fn connect_timeout(&self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        let stream = self.request(port)?;
        await_established(&stream, timeout).map_err(|e| {
            io::Error::new(e.kind(), format!("vsock connect to guest port {port}: {e}"))
        })?;
        Ok(stream)
    }
}

/// Waits for `OK <host port>\n` on a stream from [`VsockConnector::request`]
/// (or a hybrid-socket client after CONNECT); returns the host port.
/// Fails with ConnectionRefused when the guest refuses (nothing listens)
/// and TimedOut when no answer comes in `timeout` (no driver, or a stuck
/// guest).
pub fn await_established(stream: &UnixStream, timeout: Duration) -> io::Result<u32> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from the guest within {timeout:?}"),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let mut byte = [0u8; 1];
        match (&*stream).read(&mut byte) {
            Ok(0) => {
                break Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "refused by the guest (nothing listens on that port)",
                ))
            }
            Ok(_) if byte[0] == b'\n' => break parse_ok(&line),
            Ok(_) if line.len() >= MAX_LINE => break parse_ok(&line),
            Ok(_) => line.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => break Err(e),
        }
    };
    stream.set_read_timeout(None)?;
    result
}

fn parse_ok(line: &[u8]) -> io::Result<u32> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_prefix("OK "))
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected answer {:?}", String::from_utf8_lossy(line)),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), LineRead::Connect(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), LineRead::Connect(52));
        assert_eq!(parse_connect(b"CONNECT x"), LineRead::Bad);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), LineRead::Bad);
        assert_eq!(parse_connect(b"HELLO"), LineRead::Bad);
        assert_eq!(parse_ok(b"OK 1073741824").unwrap(), 1 << 30);
        assert!(parse_ok(b"NO").is_err());
    }

    #[test]
    fn bind_refuses_files_and_live_sockets_and_replaces_stale_ones() {
        let dir = std::env::temp_dir().join(format!("skiff-vsock-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = HybridListener::bind(&file).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert!(file.exists());

        let sock = dir.join("v.sock");
        let live = HybridListener::bind(&sock).unwrap();
        assert!(HybridListener::bind(&sock).is_err());
        // A stale socket: bound, never listened on by anyone alive.
        drop(live);
        assert!(!sock.exists());
        let stale = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        drop(stale);
        assert!(sock.exists());
        let again = HybridListener::bind(&sock).unwrap();
        drop(again);
        assert!(!sock.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
