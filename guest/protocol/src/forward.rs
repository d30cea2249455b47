//! The port-forward stream, beside the ttrpc API. CRI's PortForward
//! dials `localhost:PORT` in the pod's network namespace on the host; the
//! runtime takes that connection and opens a vsock stream to the agent's
//! [`FORWARD_VSOCK_PORT`], and the agent dials the same port on the
//! guest's localhost, where the pod's processes listen.
//!
//! On the stream the host first writes the port ([`request`]: 2 bytes,
//! big-endian). The agent answers one byte: [`CONNECTED`] once it reached
//! the port, or [`REFUSED`] and it closes the stream. After
//! [`CONNECTED`] the stream carries the connection's bytes both ways,
//! each end running [`relay`] between the stream and its TCP connection.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// The vsock port the agent serves forwarded connections on.
pub const FORWARD_VSOCK_PORT: u32 = 1025;
/// The agent's answer: connected to the port in the guest.
pub const CONNECTED: u8 = 0;
/// The agent's answer: nothing answered on that port in the guest.
pub const REFUSED: u8 = 1;

/// Bytes moved per read; each direction of a relay has one buffer.
const BUFFER_BYTES: usize = 64 * 1024;
/// A relay's helper thread only copies (the buffer is on the heap).
const RELAY_STACK_BYTES: usize = 128 * 1024;

/// The host's first bytes on a forward stream: the guest port.
pub fn request(port: u16) -> [u8; 2] {
    port.to_be_bytes()
}

/// The guest port a forward stream asks for.
pub fn parse_request(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// Copies bytes both ways between two connected sockets until both
/// directions have ended, on this thread and one helper. An end of file
/// from one side is passed on as a half close (the other side's write half
/// is shut down, as TCP's FIN is), so a request-then-response exchange
/// works; an error on either side ends both directions (a full shutdown,
/// which also wakes the other direction's blocked read).
///
/// Fails only when the helper thread cannot be started.
pub fn relay(a: OwnedFd, b: OwnedFd) -> io::Result<()> {
    std::thread::scope(|scope| {
        let back = std::thread::Builder::new()
            .name("relay".into())
            .stack_size(RELAY_STACK_BYTES)
            .spawn_scoped(scope, || direction(b.as_fd(), a.as_fd()))?;
        direction(a.as_fd(), b.as_fd());
        let _ = back.join();
        Ok(())
    })
}

/// One direction of [`relay`], and what its end passes on.
fn direction(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    match pump(from, to) {
        Ok(()) => shutdown(to, libc::SHUT_WR),
        Err(_) => {
            shutdown(from, libc::SHUT_RDWR);
            shutdown(to, libc::SHUT_RDWR);
        }
    }
}

/// Copies from `from` to `to` until `from` reaches its end.
fn pump(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    loop {
        // SAFETY: the buffer is valid for its length, the fd is open.
        let got = unsafe {
            libc::recv(
                from.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        let got = match got {
            0 => return Ok(()),
            n if n > 0 => n as usize,
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e => return Err(e),
            },
        };
        send_all(to, &buffer[..got])?;
    }
}

/// Writes all of `bytes` to the socket `to`. MSG_NOSIGNAL: a peer that
/// went away is an error here, never a SIGPIPE for the whole process.
pub fn send_all(to: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the slice is valid for its length, the fd is open.
        let sent = unsafe {
            libc::send(
                to.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match sent {
            n if n >= 0 => bytes = &bytes[n as usize..],
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => {}
                e => return Err(e),
            },
        }
    }
    Ok(())
}

fn shutdown(fd: BorrowedFd<'_>, how: libc::c_int) {
    // SAFETY: shutdown on an open fd; an error (not a socket, not
    // connected) leaves nothing to undo.
    unsafe { libc::shutdown(fd.as_raw_fd(), how) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;

    /// A relay between two socket pairs: `left` and `right` are the outer
    /// ends, the relay holds the inner ones.
    fn relayed() -> (UnixStream, UnixStream, std::thread::JoinHandle<()>) {
        let (left, inner_left) = UnixStream::pair().unwrap();
        let (right, inner_right) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || {
            relay(inner_left.into(), inner_right.into()).unwrap();
        });
        (left, right, relay)
    }

    #[test]
    fn the_port_is_two_bytes_big_endian() {
        assert_eq!(request(8080), [0x1f, 0x90]);
        assert_eq!(parse_request(request(65535)), 65535);
    }

    #[test]
    fn bytes_go_both_ways_and_a_half_close_is_passed_on() {
        let (mut left, mut right, relay) = relayed();
        // More than one buffer's worth, one way.
        let big: Vec<u8> = (0..3 * BUFFER_BYTES + 7).map(|i| i as u8).collect();
        let writer = {
            let mut left = left.try_clone().unwrap();
            let big = big.clone();
            std::thread::spawn(move || {
                left.write_all(&big).unwrap();
                left.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut got = Vec::new();
        right.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, big, "left to right, then end of file");
        // The other way still works after the half close: a response.
        right.write_all(b"response").unwrap();
        right.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        left.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "response");
        relay.join().unwrap();
    }

    #[test]
    fn a_side_that_goes_away_ends_the_relay() {
        let (left, mut right, relay) = relayed();
        // The left side is closed while the right one is still open and
        // silent: the relay passes the end on and the right sees it...
        drop(left);
        let mut rest = Vec::new();
        right.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        // ... and what the right side sends now fails on the closed left,
        // which ends both directions.
        let _ = right.write_all(b"nobody reads this");
        right.shutdown(Shutdown::Write).unwrap();
        relay.join().unwrap();
    }
}
