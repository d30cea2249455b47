//! A process's standard I/O as the agent holds it: pipes, or a pseudo
//! terminal when the spec asks for `terminal: true`. The agent keeps its
//! ends; the child's ends are handed to the child and closed here.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use nix::pty::{openpty, Winsize};

/// Errors creating or using a process's I/O.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("create pipe: {0}")]
    Pipe(nix::Error),
    #[error("open pseudo terminal: {0}")]
    Pty(nix::Error),
    #[error("stdin is closed")]
    StdinClosed,
    #[error("write stdin: {0}")]
    Write(std::io::Error),
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("the process has no terminal")]
    NoTerminal,
    #[error("resize terminal: {0}")]
    Resize(nix::Error),
}

/// The child's side: what becomes its fds 0, 1 and 2.
pub enum ChildStdio {
    Pipes([OwnedFd; 3]),
    /// The terminal's slave, also made the controlling terminal.
    Tty(OwnedFd),
}

/// The agent's side.
pub struct ProcessIo {
    stdin: Mutex<Option<Arc<File>>>,
    stdout: Arc<File>,
    stderr: Option<Arc<File>>,
    /// The terminal's master, for resizing.
    tty: Option<Arc<File>>,
}

fn pipe() -> Result<(File, File), StdioError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe)?;
    Ok((File::from(r), File::from(w)))
}

/// Creates the I/O for a new process.
pub fn create(terminal: bool) -> Result<(ProcessIo, ChildStdio), StdioError> {
    if terminal {
        let pty = openpty(None, None).map_err(StdioError::Pty)?;
        for fd in [&pty.master, &pty.slave] {
            let _ = nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
        let master = Arc::new(File::from(pty.master));
        let io = ProcessIo {
            stdin: Mutex::new(Some(master.clone())),
            stdout: master.clone(),
            stderr: None,
            tty: Some(master),
        };
        return Ok((io, ChildStdio::Tty(pty.slave)));
    }
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let io = ProcessIo {
        stdin: Mutex::new(Some(Arc::new(in_w))),
        stdout: Arc::new(out_r),
        stderr: Some(Arc::new(err_r)),
        tty: None,
    };
    Ok((
        io,
        ChildStdio::Pipes([in_r.into(), out_w.into(), err_w.into()]),
    ))
}

/// Reads up to `max` bytes, blocking until some arrive; empty at the end.
fn read_some(f: &File, max: usize) -> Result<Vec<u8>, StdioError> {
    let mut buf = vec![0u8; max.clamp(1, 1 << 20)];
    loop {
        match (&*f).read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A pty master reads EIO once the slave side is gone: the end.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
            Err(e) => return Err(StdioError::Read(e)),
        }
    }
}

impl ProcessIo {
    pub fn is_tty(&self) -> bool {
        self.tty.is_some()
    }

    pub fn write_stdin(&self, data: &[u8]) -> Result<usize, StdioError> {
        let f = self
            .stdin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StdioError::StdinClosed)?;
        (&*f).write_all(data).map_err(StdioError::Write)?;
        Ok(data.len())
    }

    /// Closes stdin: EOF for a pipe; for a terminal, the EOF character
    /// (the master must stay open for output).
    pub fn close_stdin(&self) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(f), true) = (stdin.as_ref(), self.is_tty()) {
            let _ = (&**f).write_all(&[4]);
        }
        *stdin = None;
    }

    pub fn read_stdout(&self, max: usize) -> Result<Vec<u8>, StdioError> {
        read_some(&self.stdout, max)
    }

    /// A terminal has no separate stderr: it reads as ended.
    pub fn read_stderr(&self, max: usize) -> Result<Vec<u8>, StdioError> {
        match &self.stderr {
            Some(f) => read_some(f, max),
            None => Ok(Vec::new()),
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), StdioError> {
        let tty = self.tty.as_ref().ok_or(StdioError::NoTerminal)?;
        let ws = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one Winsize from the pointer, which
        // lives across the call.
        let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 {
            return Err(StdioError::Resize(nix::Error::last()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_carry_data_and_eof() {
        let (io, child) = create(false).unwrap();
        let ChildStdio::Pipes([stdin_r, stdout_w, _stderr_w]) = child else {
            panic!("pipes expected")
        };
        io.write_stdin(b"hi").unwrap();
        let mut got = [0u8; 2];
        File::from(stdin_r).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        File::from(stdout_w).write_all(b"out").unwrap();
        assert_eq!(io.read_stdout(16).unwrap(), b"out");
        assert_eq!(io.read_stdout(16).unwrap(), b"");
        io.close_stdin();
        assert!(matches!(io.write_stdin(b"x"), Err(StdioError::StdinClosed)));
        assert!(matches!(io.resize(1, 1), Err(StdioError::NoTerminal)));
    }
}
