//! What containerd wrote to the shim's stdin, read without ever blocking
//! on it: containerd 2.3 writes BootstrapParams at `start`, every version
//! may write runtime options (a protobuf Any) at `start` and `-info`, and
//! a person running the binary by hand may leave a terminal or a pipe that
//! never closes there. So the read stops at EOF, at [`LIMIT`] bytes, or
//! [`WAIT`] after it began, whichever comes first, and a terminal is not
//! read at all. What was read by then is all there is.

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// More than any BootstrapParams or runtime options containerd sends.
pub const LIMIT: usize = 1 << 20;
/// containerd writes its message as it starts the shim, then closes.
pub const WAIT: Duration = Duration::from_secs(2);

/// Reads stdin as described above; an error (stdin closed, not readable)
/// reads as nothing.
pub fn read() -> Vec<u8> {
    let stdin = std::io::stdin();
    read_from(stdin.as_fd(), LIMIT, WAIT)
}

pub fn read_from(fd: std::os::fd::BorrowedFd<'_>, limit: usize, wait: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    // SAFETY: isatty only inspects the fd.
    if unsafe { libc::isatty(fd.as_raw_fd()) } == 1 {
        return out;
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 8192];
    while out.len() < limit {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd on the stack, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if ready <= 0 || pfd.revents & (libc::POLLIN | libc::POLLHUP) == 0 {
            break;
        }
        let want = buf.len().min(limit - out.len());
        // SAFETY: reads at most `want` bytes into `buf`; poll said it
        // will not block.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};

    fn pipe() -> (OwnedFd, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two fds, which are then owned here.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are new and owned by nothing else.
        unsafe {
            (
                OwnedFd::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn reads_until_eof() {
        let (r, mut w) = pipe();
        w.write_all(b"hello").unwrap();
        drop(w);
        assert_eq!(read_from(r.as_fd(), LIMIT, WAIT), b"hello");
    }

    #[test]
    fn a_pipe_left_open_does_not_block() {
        let (r, mut w) = pipe();
        w.write_all(b"part").unwrap();
        let t = Instant::now();
        assert_eq!(
            read_from(r.as_fd(), LIMIT, Duration::from_millis(100)),
            b"part"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(w);
    }

    #[test]
    fn stops_at_the_limit() {
        let (r, mut w) = pipe();
        w.write_all(&[7u8; 100]).unwrap();
        assert_eq!(read_from(r.as_fd(), 10, WAIT).len(), 10);
    }
}
