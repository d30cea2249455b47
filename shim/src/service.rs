//! The shim's process-level life: `start` (find or spawn the pod's shim),
//! `delete` (clean up after a shim that died) and serving the task API.

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, StartOpts};
use skiff_runtime::cri::sandbox_id_of;
use skiff_runtime::sandbox::cleanup_dead_sandbox;
use skiff_runtime::{spec, RuntimeConfig};

use crate::bootstrap::{self, StartRequest};
use crate::task::TaskService;

pub const RUNTIME_ID: &str = "io.containerd.skiff.v2";

/// How containerd asked `start` to answer, from what it wrote to stdin;
/// set by `main` before containerd-shim's bootstrap runs (the bootstrap
/// gives `start_shim` no way to see stdin).
pub static START_REQUEST: OnceLock<StartRequest> = OnceLock::new();

pub struct Service {
    id: String,
    namespace: String,
    /// containerd's gRPC address (`-address`).
    address: String,
    /// The socket this process serves (`-socket`), when it serves one.
    socket: String,
    debug: bool,
    exit: Arc<ExitSignal>,
}

/// The sandbox the container in bundle `dir` belongs to; its own id when
/// the spec cannot be read (Create will report why).
fn sandbox_of_bundle(dir: &Path, id: &str) -> String {
    spec::load(dir)
        .map(|s| sandbox_id_of(&s, id))
        .unwrap_or_else(|_| id.to_string())
}

/// The file of a `unix://` socket address.
fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Removes the socket file of `address`, if it is one.
fn remove_socket(address: &str) {
    let path = Path::new(socket_path(address));
    if address.is_empty() || !path.is_absolute() {
        return;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!("remove shim socket {}: {e}", path.display());
            }
        }
        _ => {}
    }
}

impl containerd_shim::Shim for Service {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            socket: args.socket.clone(),
            debug: args.debug,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim per pod: containers of a CRI pod are grouped by sandbox id,
    /// so the second and later ones get the address of the running shim.
    /// The reply is written here, in the protocol containerd asked in
    /// (bootstrap.rs); containerd-shim then prints the empty string.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let bundle =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let grouping = sandbox_of_bundle(&bundle, &opts.id);
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        let request = START_REQUEST.get().unwrap_or(&StartRequest::Address);
        let mut out = std::io::stdout().lock();
        out.write_all(&bootstrap::reply(request, &address))
            .and_then(|_| out.flush())
            .map_err(|e| containerd_shim::Error::Other(format!("write start reply: {e}")))?;
        Ok(String::new())
    }

    /// Called by containerd when a shim died or a task failed to start:
    /// the VM died with the shim, so remove what it left on the host.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let bundle =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let sandbox_id = sandbox_of_bundle(&bundle, &self.id);
        let cleanup = cleanup_dead_sandbox(&sandbox_id).map_err(|e| {
            containerd_shim::Error::Other(format!("clean up sandbox {sandbox_id}: {e}"))
        })?;
        let rootfs = bundle.join("rootfs");
        containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH)?;
        // The dead pod shim's socket (containerd-shim names it after the
        // grouping); a live shim of the same pod still answers on it.
        let socket = containerd_shim::socket_address(&self.address, &self.namespace, &sandbox_id);
        if std::os::unix::net::UnixStream::connect(socket_path(&socket)).is_err() {
            remove_socket(&socket);
        }
        eprintln!(
            "skiff: shim delete {} (sandbox {sandbox_id}): state removed: {}",
            self.id, cleanup.removed_state
        );
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(Timestamp::now()).into(),
            ..Default::default()
        })
    }

    /// Returns when the last container is gone and Shutdown was called.
    /// The socket is removed here: containerd-shim would remove it after
    /// this returns, but it finds it through the bundle's `address` file,
    /// and containerd has deleted the bundle by then (containerd-shim then
    /// fails to read that file and exits with status 1, its message going
    /// to the serving shim's stderr, which is /dev/null; nothing waits for
    /// that status).
    fn wait(&mut self) {
        self.exit.wait();
        remove_socket(&self.socket);
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let level = RuntimeConfig::load(None)
            .map(|c| c.log.level)
            .unwrap_or_else(|_| "info".into());
        crate::logging::init(&level, self.debug);
        // Logged before containerd-shim binds the socket: for the second
        // and later containers of a pod this process finds the pod's shim
        // there and exits.
        tracing::debug!(
            "{RUNTIME_ID} shim process {} starting (namespace {})",
            std::process::id(),
            self.namespace
        );
        TaskService::new(self.namespace.clone(), publisher, self.exit.clone())
    }
}
