//! Process I/O between containerd's side (FIFOs or files named in the
//! task request) and the agent's stream calls. One thread per stream; an
//! output relay ends at the process's end of output, which is what lets
//! containerd's readers see EOF.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::{Agent, OutputStream};

/// Bytes asked for per agent read.
const CHUNK: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("unsupported stdio URI {0:?}: expected a FIFO path or file://")]
    UnsupportedUri(String),
    #[error("open {path}: {err}")]
    Open { path: PathBuf, err: std::io::Error },
}

/// Where a process's streams go, as containerd named them (empty: none).
#[derive(Clone, Debug, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

enum Sink {
    File(File),
    /// No reader: output is drained so the process never blocks on it.
    Discard,
}

fn open_output(uri: &str) -> Result<Sink, StdioError> {
    if uri.is_empty() {
        return Ok(Sink::Discard);
    }
    let (path, append) = match uri.split_once("://") {
        None => (PathBuf::from(uri), false),
        Some(("file", path)) => (PathBuf::from(path), true),
        Some(_) => return Err(StdioError::UnsupportedUri(uri.into())),
    };
    let mut options = OpenOptions::new();
    options.write(true);
    if append {
        options.append(true).create(true);
    }
    // A FIFO's reader (containerd) is already open, so this does not block.
    options
        .open(&path)
        .map(Sink::File)
        .map_err(|err| StdioError::Open { path, err })
}

/// Ends the output streams of a process that will never write them (it
/// was reported killed before the guest had it): each FIFO is opened for
/// writing and closed, so containerd's reader sees its end, which an
/// ExecSync waits for after the exit. Opened without blocking: a FIFO
/// nobody reads is left alone. Files need nothing.
pub fn close_outputs(paths: &StdioPaths) {
    for uri in [&paths.stdout, &paths.stderr] {
        if uri.is_empty() || uri.contains("://") {
            continue;
        }
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(uri);
        if let Err(e) = opened {
            tracing::debug!("close output {uri}: {e}");
        }
    }
}

/// The running relays of one process.
pub struct Relays {
    outputs: usize,
    done: Receiver<()>,
}

impl Relays {
    /// Starts relaying the streams of process (`container_id`, `exec_id`).
    pub fn start(
        agent: &Arc<dyn Agent>,
        container_id: &str,
        exec_id: &str,
        paths: &StdioPaths,
    ) -> Result<Self, StdioError> {
        let stdout = open_output(&paths.stdout)?;
        // With a terminal, stdout and stderr are one stream.
        let stderr = (!paths.terminal)
            .then(|| open_output(&paths.stderr))
            .transpose()?;
        let (done_tx, done) = channel();
        let mut outputs = 0;
        for (sink, stream) in [
            (Some(stdout), OutputStream::Stdout),
            (stderr, OutputStream::Stderr),
        ] {
            let Some(sink) = sink else { continue };
            let relay = OutputRelay {
                agent: agent.clone(),
                container_id: container_id.into(),
                exec_id: exec_id.into(),
                stream,
                sink,
                done: done_tx.clone(),
            };
            std::thread::Builder::new()
                .name(format!("io-out-{container_id}"))
                .spawn(move || relay.run())
                .map_err(|err| StdioError::Open {
                    path: "relay thread".into(),
                    err,
                })?;
            outputs += 1;
        }
        if !paths.stdin.is_empty() {
            let relay = StdinRelay {
                agent: agent.clone(),
                container_id: container_id.into(),
                exec_id: exec_id.into(),
                path: PathBuf::from(&paths.stdin),
            };
            std::thread::Builder::new()
                .name(format!("io-in-{container_id}"))
                .spawn(move || relay.run())
                .map_err(|err| StdioError::Open {
                    path: "relay thread".into(),
                    err,
                })?;
        }
        Ok(Self { outputs, done })
    }

    /// Waits until every output stream reached its end, or `timeout`
    /// passed (a background process may hold the streams open forever).
    /// Returns whether all ended.
    pub fn wait_output(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.outputs > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                return false;
            }
            self.outputs -= 1;
        }
        true
    }
}

struct OutputRelay {
    agent: Arc<dyn Agent>,
    container_id: String,
    exec_id: String,
    stream: OutputStream,
    sink: Sink,
    done: Sender<()>,
}

impl OutputRelay {
    fn run(mut self) {
        loop {
            // Blocks in the agent until output or end of stream.
            let read =
                self.agent
                    .read_output(&self.container_id, &self.exec_id, self.stream, CHUNK);
            let data = match read {
                Ok(data) if !data.is_empty() => data,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(container = %self.container_id, exec = %self.exec_id, "output stream ended: {e}");
                    break;
                }
            };
            if let Sink::File(file) = &mut self.sink {
                if let Err(e) = file.write_all(&data) {
                    // The reader went away; keep draining so the process
                    // does not block on a full pipe.
                    tracing::debug!(container = %self.container_id, "output reader gone: {e}");
                    self.sink = Sink::Discard;
                }
            }
        }
        drop(self.sink);
        let _ = self.done.send(());
    }
}

struct StdinRelay {
    agent: Arc<dyn Agent>,
    container_id: String,
    exec_id: String,
    path: PathBuf,
}

impl StdinRelay {
    fn run(self) {
        // Blocks until containerd's side opens the FIFO for writing.
        let mut input = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(container = %self.container_id, "open stdin {}: {e}", self.path.display());
                return;
            }
        };
        let mut buf = vec![0u8; CHUNK as usize];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut pending = &buf[..n];
            while !pending.is_empty() {
                match self
                    .agent
                    .write_stdin(&self.container_id, &self.exec_id, pending)
                {
                    Ok(written) if written > 0 => {
                        pending = pending.get(written as usize..).unwrap_or_default()
                    }
                    _ => return,
                }
            }
        }
        let _ = self.agent.close_stdin(&self.container_id, &self.exec_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_uris() {
        assert!(matches!(open_output("").unwrap(), Sink::Discard));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let uri = format!("file://{}", log.display());
        assert!(matches!(open_output(&uri).unwrap(), Sink::File(_)));
        assert!(log.exists());
        let err = open_output("binary:///usr/bin/logger").err().unwrap();
        assert!(err.to_string().contains("binary:///usr/bin/logger"));
        let err = open_output("/nonexistent/fifo").err().unwrap();
        assert!(err.to_string().contains("/nonexistent/fifo"));
    }
}
