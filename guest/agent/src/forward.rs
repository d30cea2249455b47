//! Port forwarding, the guest's side: the agent listens on vsock
//! [`FORWARD_VSOCK_PORT`]; each stream the runtime opens there names a
//! port ([`skiff_agent_protocol::forward`]), and the agent connects to it
//! on the guest's localhost (IPv4, then IPv6, as containerd tries them for
//! a runc pod) and relays the bytes. The pod's containers share the
//! guest's network namespace, so that is where they listen.
//!
//! Bounded: at most [`MAX_STREAMS`] at once; more are closed as they
//! arrive. A stream whose request does not come within
//! [`REQUEST_TIMEOUT`] is closed.

use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use skiff_agent_protocol::forward::{
    parse_request, relay, send_all, CONNECTED, FORWARD_VSOCK_PORT, REFUSED,
};

/// Forwarded connections at once (two threads each).
pub const MAX_STREAMS: usize = 64;
/// How long the runtime has to name the port once it opened a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to a local port either succeeds or is refused at once;
/// this bounds a listener whose backlog is full.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STREAM_STACK_BYTES: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("listen on vsock port {FORWARD_VSOCK_PORT}: {0}")]
    Listen(nix::Error),
    #[error("start the port-forward thread: {0}")]
    Thread(io::Error),
}

/// Starts serving forward streams on vsock, on a thread of its own.
pub fn serve_vsock() -> Result<(), ForwardError> {
    let listener = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(ForwardError::Listen)?;
    bind(
        listener.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_ANY, FORWARD_VSOCK_PORT),
    )
    .map_err(ForwardError::Listen)?;
    listen(&listener, Backlog::new(16).unwrap_or(Backlog::MAXCONN))
        .map_err(ForwardError::Listen)?;
    std::thread::Builder::new()
        .name("forward".into())
        .spawn(move || accept_loop(listener))
        .map_err(ForwardError::Thread)?;
    Ok(())
}

fn accept_loop(listener: OwnedFd) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let conn = match accept(listener.as_raw_fd()) {
            // SAFETY: accept returned a new fd that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
            Err(e) => {
                tracing::error!("port forward: accept: {e}; no more forwarded connections");
                return;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_STREAMS {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("port forward: {MAX_STREAMS} connections already; one refused");
            continue;
        }
        let done = active.clone();
        let spawned = std::thread::Builder::new()
            .name("forward-conn".into())
            .stack_size(STREAM_STACK_BYTES)
            .spawn(move || {
                if let Err(e) = serve(conn) {
                    tracing::debug!("port forward: {e}");
                }
                done.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("port forward: no thread for a connection: {e}");
        }
    }
}

/// Serves one forward stream: reads its port, connects, answers, relays.
pub fn serve(stream: OwnedFd) -> io::Result<()> {
    // A vsock stream is a socket like a Unix one: the std type gives the
    // timeout and the exact read (only socket calls are made on it).
    let mut stream = UnixStream::from(stream);
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = [0u8; 2];
    stream.read_exact(&mut request)?;
    stream.set_read_timeout(None)?;
    let port = parse_request(request);
    match connect_local(port) {
        Ok(tcp) => {
            send_all(stream.as_fd(), &[CONNECTED])?;
            relay(stream.into(), tcp.into())
        }
        Err(e) => {
            send_all(stream.as_fd(), &[REFUSED])?;
            Err(io::Error::new(e.kind(), format!("localhost:{port}: {e}")))
        }
    }
}

fn connect_local(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|_| {
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_agent_protocol::forward::request;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener};

    #[test]
    fn a_stream_reaches_the_named_local_port() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = String::new();
            conn.read_to_string(&mut got).unwrap();
            conn.write_all(format!("echo {got}").as_bytes()).unwrap();
        });
        let (mut host, guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || serve(guest.into()));
        host.write_all(&request(port)).unwrap();
        let mut answer = [0u8];
        host.read_exact(&mut answer).unwrap();
        assert_eq!(answer[0], CONNECTED);
        host.write_all(b"ping").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        host.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "echo ping");
        server.join().unwrap();
        agent.join().unwrap().unwrap();
    }

    #[test]
    fn a_port_nobody_listens_on_is_refused() {
        // Bound, not listening: connections to it are refused.
        let unused = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = unused.local_addr().unwrap().port();
        let (mut host, guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || serve(guest.into()));
        host.write_all(&request(port)).unwrap();
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, [REFUSED]);
        let err = agent.join().unwrap().unwrap_err();
        assert!(
            err.to_string().contains(&format!("localhost:{port}")),
            "{err}"
        );
    }

    #[test]
    fn a_stream_that_names_no_port_is_closed() {
        let (mut host, guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || serve(guest.into()));
        host.write_all(&[0x1f]).unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        assert!(agent.join().unwrap().is_err());
    }
}
