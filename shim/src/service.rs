//! The shim's process-level life: `start` (find or spawn the pod's shim),
//! `delete` (clean up after a shim that died) and serving the task API.

use std::path::Path;
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, StartOpts};
use skiff_runtime::sandbox::{cleanup_dead_sandbox, sandbox_id_of};
use skiff_runtime::{spec, RuntimeConfig};

use crate::task::TaskService;

pub const RUNTIME_ID: &str = "io.containerd.skiff.v2";

pub struct Service {
    id: String,
    namespace: String,
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

impl containerd_shim::Shim for Service {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            debug: args.debug,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim per pod: containers of a CRI pod are grouped by sandbox id,
    /// so the second and later ones get the address of the running shim.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let bundle =
            std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let grouping = sandbox_of_bundle(&bundle, &opts.id);
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
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

    fn wait(&mut self) {
        self.exit.wait();
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
