//! CRI port forwarding into the VM. containerd serves a PortForward by
//! dialling `localhost:PORT` inside the pod's network namespace on the
//! host, where a runc pod's processes listen; a Skiff pod's listen in its
//! VM. So the runtime takes every such connection (one listening socket in
//! that namespace gets them all, [`crate::sk_lookup`]) and carries it over
//! vsock to the agent, which dials the same port on the guest's localhost
//! ([`skiff_agent_protocol::forward`]).
//!
//! Bounded: at most [`MAX_CONNECTIONS`] at once (two threads each); more
//! are closed as they arrive. A guest that does not answer a stream within
//! [`ANSWER_TIMEOUT`] has it closed. Dropping the [`PortForwarder`] ends
//! the steering, the listener and its thread; connections still open end
//! with the VM's vsock streams.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use skiff_agent_protocol::forward::{relay, request, CONNECTED};

use crate::sk_lookup::{LoopbackSteer, SkLookupError};

/// Forwarded connections at once, as the agent's bound.
pub const MAX_CONNECTIONS: usize = 64;
/// How long the agent has to answer a stream (connect to the port in the
/// guest and say so). Generous: a guest on an emulated CPU is slow.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECTION_STACK_BYTES: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    #[error("enter the pod's network namespace: {0}")]
    EnterNetns(nix::Error),
    #[error("listen on 127.0.0.1 in the pod's network namespace: {0}")]
    Listen(io::Error),
    #[error(transparent)]
    Steer(#[from] SkLookupError),
    #[error("start the port-forward thread: {0}")]
    Thread(io::Error),
}

/// Opens a new stream to the agent's forward port.
pub type GuestDialer = dyn Fn() -> io::Result<UnixStream> + Send + Sync;

/// Forwarding of one pod's loopback connections into its VM.
pub struct PortForwarder {
    listener: Arc<TcpListener>,
    steer: Option<LoopbackSteer>,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl PortForwarder {
    /// Starts forwarding the loopback connections of the network
    /// namespace `netns` through `dial`.
    pub fn start(netns: &File, dial: Arc<GuestDialer>) -> Result<Self, PortForwardError> {
        let listener = Arc::new(listen_in(netns)?);
        let steer = LoopbackSteer::attach(netns.as_fd(), listener.as_fd())?;
        let stopping = Arc::new(AtomicBool::new(false));
        let accept = {
            let (listener, stopping) = (listener.clone(), stopping.clone());
            std::thread::Builder::new()
                .name("skiff-portfwd".into())
                .spawn(move || accept_loop(&listener, &stopping, dial))
                .map_err(PortForwardError::Thread)?
        };
        Ok(Self {
            listener,
            steer: Some(steer),
            stopping,
            accept: Some(accept),
        })
    }
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.steer = None;
        self.stopping.store(true, Ordering::Release);
        // Wakes the blocked accept (it fails with EINVAL).
        // SAFETY: shutdown on the listener's open fd.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RD) };
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// A listening socket on 127.0.0.1 in `netns` (a socket belongs to the
/// namespace of the thread that makes it; this one is made on a thread of
/// its own, which then ends). Its port does not matter: the steering
/// picks the socket whatever port was dialled.
fn listen_in(netns: &File) -> Result<TcpListener, PortForwardError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(netns, CloneFlags::CLONE_NEWNET).map_err(PortForwardError::EnterNetns)?;
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(PortForwardError::Listen)
            })
            .join()
            .unwrap_or_else(|_| Err(PortForwardError::Thread(io::Error::other("panicked"))))
    })
}

fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, dial: Arc<GuestDialer>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("port forward: accept: {e}");
                // Not a spin: an fd limit clears as connections end.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("port forward: {MAX_CONNECTIONS} connections open; one closed");
            continue;
        }
        let (done, dial) = (active.clone(), dial.clone());
        let spawned = std::thread::Builder::new()
            .name("skiff-portfwd-conn".into())
            .stack_size(CONNECTION_STACK_BYTES)
            .spawn(move || {
                if let Err(e) = forward(conn, &*dial) {
                    tracing::info!("port forward: {e}");
                }
                done.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("port forward: no thread for a connection: {e}");
        }
    }
}

/// Carries one connection to the guest port it dialled.
fn forward(conn: TcpStream, dial: &GuestDialer) -> io::Result<()> {
    let port = conn.local_addr()?.port();
    let fail =
        |what: &str, e: io::Error| io::Error::new(e.kind(), format!("port {port}: {what}: {e}"));
    let mut guest = dial().map_err(|e| fail("connect to the agent", e))?;
    guest.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    guest
        .write_all(&request(port))
        .map_err(|e| fail("ask the agent", e))?;
    let mut answer = [0u8];
    guest
        .read_exact(&mut answer)
        .map_err(|e| fail("the agent's answer", e))?;
    if answer[0] != CONNECTED {
        // Closing the connection is all a dialler can be told now.
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("port {port}: nothing listens on it in the guest"),
        ));
    }
    guest.set_read_timeout(None)?;
    relay(conn.into(), guest.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_agent_protocol::forward::{parse_request, REFUSED};
    use std::net::Shutdown;
    use std::sync::mpsc;

    /// A fresh network namespace with its loopback up, made on a thread
    /// that then ends (the fd keeps the namespace).
    fn new_netns() -> File {
        std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(up.success());
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap()
    }

    /// Runs `f` on a thread inside `netns`, as containerd's dial does.
    fn in_netns<T: Send>(netns: &File, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(netns, CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// An agent stand-in: for each stream, reports the port asked for;
    /// refuses port 9, otherwise answers and echoes what it gets.
    fn fake_agent(ports: mpsc::Sender<u16>) -> Arc<GuestDialer> {
        Arc::new(move || {
            let (host, mut guest) = UnixStream::pair()?;
            let ports = ports.clone();
            std::thread::spawn(move || {
                let mut req = [0u8; 2];
                guest.read_exact(&mut req).unwrap();
                let port = parse_request(req);
                let _ = ports.send(port);
                if port == 9 {
                    guest.write_all(&[REFUSED]).unwrap();
                    return;
                }
                guest.write_all(&[CONNECTED]).unwrap();
                let mut got = Vec::new();
                guest.read_to_end(&mut got).unwrap();
                guest.write_all(&got).unwrap();
            });
            Ok(host)
        })
    }

    fn exchange(port: u16, message: &[u8]) -> io::Result<Vec<u8>> {
        let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        conn.write_all(message)?;
        conn.shutdown(Shutdown::Write)?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got)?;
        Ok(got)
    }

    /// Root only (BPF and a network namespace): connections to any
    /// loopback port of the namespace reach the guest with their port; a
    /// refused one is closed; after the drop nothing is steered.
    #[test]
    fn loopback_connections_reach_the_guest_with_their_port() {
        // SAFETY: geteuid has no arguments.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: BPF and network namespaces need root");
            return;
        }
        let netns = new_netns();
        let (ports, asked) = mpsc::channel();
        let forwarder = PortForwarder::start(&netns, fake_agent(ports)).unwrap();
        in_netns(&netns, || {
            for port in [80, 8080, 65535] {
                let message = format!("to {port}");
                assert_eq!(
                    exchange(port, message.as_bytes()).unwrap(),
                    message.as_bytes()
                );
            }
            // Refused in the guest: the connection is closed, no bytes.
            assert_eq!(exchange(9, b"x").unwrap_or_default(), b"");
        });
        let got: Vec<u16> = asked.try_iter().collect();
        assert_eq!(got, [80, 8080, 65535, 9]);
        drop(forwarder);
        in_netns(&netns, || {
            let err = TcpStream::connect((Ipv4Addr::LOCALHOST, 8080)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        });
    }

    /// Root only: connections beyond the bound are closed at once while
    /// the ones held stay open.
    #[test]
    fn connections_beyond_the_bound_are_closed() {
        // SAFETY: geteuid has no arguments.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: BPF and network namespaces need root");
            return;
        }
        let netns = new_netns();
        let (ports, asked) = mpsc::channel();
        let _forwarder = PortForwarder::start(&netns, fake_agent(ports)).unwrap();
        in_netns(&netns, move || {
            let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
                .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, 8080)).unwrap())
                .collect();
            // Each held one reached the agent before the next is counted.
            for _ in 0..MAX_CONNECTIONS {
                asked.recv_timeout(Duration::from_secs(10)).unwrap();
            }
            let mut extra = TcpStream::connect((Ipv4Addr::LOCALHOST, 8080)).unwrap();
            extra
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 1];
            assert_eq!(extra.read(&mut buf).unwrap_or(0), 0, "closed, not served");
            assert!(
                asked.try_recv().is_err(),
                "the extra one never reached the agent"
            );
            drop(held);
        });
    }
}
