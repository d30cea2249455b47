//! Sandbox templates (`[factory] template = true`): a sandbox VM booted
//! once until its agent answers, snapshotted, and restored for every later
//! sandbox of the same VM shape instead of booting it.
//!
//! The store is `factory.template_dir` (0700, root's, checked before every
//! use): one snapshot directory (`skiff_vmm::snapshot`) per VM shape,
//! named by the [`key`] of that shape. A template is built in a private
//! work directory in the store and renamed into place complete, under the
//! store's lock, so a sandbox finds a whole template or none. One that a
//! restore refuses (another Skiff, a rebuilt kernel, a truncated or
//! corrupt file: the VMM names which) is moved aside and rebuilt, never
//! half-used ([`TemplateStore::rebuild`]).
//!
//! What a template holds of its guest: the kernel booted, the agent
//! listening on vsock, the virtio-fs device probed but its share not
//! mounted (a snapshot does not take a FUSE session, so each restored
//! sandbox mounts its own share), no network interface (a pod's are
//! hot-added after the restore, with their own MACs), no hostname. Its
//! entropy and clock are the template's until the restoring sandbox
//! replaces them, before anything else ([`super::Sandbox::boot`]).
//!
//! The build runs in the shim that needs the template, before it joins
//! the pod's cgroup, so the template's memory file (page cache every
//! restored VM maps) is not charged to that pod.

use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use skiff_vmm::config::DeviceConfig;
use skiff_vmm::snapshot::{self, SKIFF_VERSION};
use skiff_vmm::{VmConfig, VmmHandle};

use crate::config::{FactoryConfig, RuntimeConfig};

use super::{vm, SandboxError};

/// The store's lock file: builds, rebuilds and removals hold it.
const LOCK_FILE: &str = ".lock";
/// Work directories of builds in progress: `.build-<key>-<pid>`.
const BUILD_PREFIX: &str = ".build-";
/// Templates moved aside to be removed: `.stale-<key>-<pid>`.
const STALE_PREFIX: &str = ".stale-";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot {what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("template directory {path} {why}: templates are root's alone")]
    Unsafe { path: PathBuf, why: String },
    #[error("building the template {key}: {err}")]
    Build { key: String, err: Box<SandboxError> },
}

/// A template in the store, as a restore uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub key: String,
    pub dir: PathBuf,
    /// The inode of its state file: which build of the template this is.
    build: u64,
}

/// A template as `factory status` shows it.
#[derive(Debug)]
pub struct TemplateInfo {
    pub key: String,
    pub dir: PathBuf,
    /// What its guest was booted with, or why it cannot be restored.
    pub summary: Result<String, String>,
    /// Disk (tmpfs) bytes its memory file holds: zero pages are holes.
    pub memory_bytes: u64,
}

/// The name of a VM shape's template: a hash of everything that makes a
/// template restorable into that VM (Skiff's version, the kernel and
/// initrd paths, the command line, vCPUs, memory, slots and devices). A
/// rebuilt kernel at the same path has the same key and is found by the
/// restore's own checks, which name it.
pub fn key(vm: &VmConfig) -> String {
    let devices: Vec<String> = vm
        .devices
        .iter()
        .map(|d| match d {
            DeviceConfig::Vsock(v) => format!("vsock cid={}", v.guest_cid),
            DeviceConfig::Fs(f) => format!("fs tag={} read_only={}", f.tag, f.read_only),
            DeviceConfig::Net(_) => "net".into(),
            DeviceConfig::Block(b) => format!("block read_only={}", b.read_only),
        })
        .collect();
    let shape = [
        SKIFF_VERSION.to_string(),
        vm.kernel.display().to_string(),
        vm.initrd
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        vm.cmdline.clone(),
        vm.vcpus.to_string(),
        vm.memory_mib.to_string(),
        vm.hotplug_slots.to_string(),
        devices.join(","),
    ]
    .join("\n");
    let digest = Sha256::digest(shape.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The template store of a configuration.
pub struct TemplateStore {
    root: PathBuf,
}

impl TemplateStore {
    pub fn new(config: &FactoryConfig) -> Self {
        Self {
            root: config.template_dir.clone(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The template for sandboxes of `config`, built now if the store has
    /// none (a boot of the guest until its agent answers).
    pub fn get_or_build(&self, config: &RuntimeConfig) -> Result<Template, SandboxError> {
        let key = key(&template_vm(config, &self.root)?.0);
        if let Some(found) = self.find(&key) {
            return Ok(found);
        }
        let _lock = self.lock()?;
        // Another shim may have built it while this one waited.
        if let Some(found) = self.find(&key) {
            return Ok(found);
        }
        self.build(config, &key)
    }

    /// Replaces `stale`, which a restore refused, with a new build; unless
    /// another sandbox has replaced it already, then that one is returned.
    pub fn rebuild(
        &self,
        config: &RuntimeConfig,
        stale: &Template,
    ) -> Result<Template, SandboxError> {
        let _lock = self.lock()?;
        match self.find(&stale.key) {
            Some(found) if found.build != stale.build => return Ok(found),
            Some(_) => self.discard(&stale.key)?,
            None => {}
        }
        self.build(config, &stale.key)
    }

    /// Every template in the store, for `factory status`.
    pub fn list(&self) -> Result<Vec<TemplateInfo>, TemplateError> {
        let Some(entries) = self.entries()? else {
            return Ok(Vec::new());
        };
        let mut templates: Vec<TemplateInfo> = entries
            .into_iter()
            .filter(|name| !name.starts_with('.'))
            .map(|key| {
                let dir = self.root.join(&key);
                let summary = snapshot::read_state(&dir)
                    .map(|s| {
                        format!(
                            "kernel {}, {} vCPU, {} MiB, {} hotplug slots",
                            s.guest.kernel.path.display(),
                            s.guest.vcpus,
                            s.guest.memory_mib,
                            s.guest.hotplug_slots
                        )
                    })
                    .map_err(|e| e.to_string());
                let memory_bytes = std::fs::metadata(dir.join(snapshot::MEMORY_FILE))
                    .map_or(0, |m| m.blocks() * 512);
                TemplateInfo {
                    key,
                    dir,
                    summary,
                    memory_bytes,
                }
            })
            .collect();
        templates.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(templates)
    }

    /// Removes every template, and the work directories of builds whose
    /// shim is gone; returns how many templates went. VMs restored from
    /// one keep running: their memory is mapped, not read from the path.
    pub fn destroy(&self) -> Result<usize, TemplateError> {
        if self.entries()?.is_none() {
            return Ok(0);
        }
        let _lock = self.lock()?;
        let mut removed = 0;
        for name in self.entries()?.unwrap_or_default() {
            if name == LOCK_FILE {
                continue;
            }
            let dead_work = [BUILD_PREFIX, STALE_PREFIX].iter().any(|prefix| {
                name.strip_prefix(prefix)
                    .and_then(|rest| rest.rsplit('-').next())
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !crate::persist::shim_alive(pid))
            });
            if name.starts_with('.') && !dead_work {
                continue;
            }
            if !name.starts_with('.') {
                self.discard(&name)?;
                removed += 1;
            } else {
                remove_tree(&self.root.join(&name))?;
            }
        }
        Ok(removed)
    }

    /// The complete template named `key`, if the store has one.
    fn find(&self, key: &str) -> Option<Template> {
        let dir = self.root.join(key);
        let state = std::fs::symlink_metadata(dir.join(snapshot::STATE_FILE)).ok()?;
        state.is_file().then(|| Template {
            key: key.into(),
            dir,
            build: state.ino(),
        })
    }

    /// The names in the store; `None` when there is no store yet.
    fn entries(&self) -> Result<Option<Vec<String>>, TemplateError> {
        match std::fs::symlink_metadata(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => self.check_root()?,
        }
        let read = std::fs::read_dir(&self.root).map_err(|err| TemplateError::Io {
            what: "list",
            path: self.root.clone(),
            err,
        })?;
        Ok(Some(
            read.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
        ))
    }

    /// Makes the store if it is not there and checks that only root can
    /// reach it: a template's memory is a guest's whole RAM.
    fn check_root(&self) -> Result<(), TemplateError> {
        let io = |what, err| TemplateError::Io {
            what,
            path: self.root.clone(),
            err,
        };
        match std::fs::DirBuilder::new().mode(0o700).create(&self.root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o711)
                    .create(self.root.parent().unwrap_or(Path::new("/")))
                    .map_err(|e| io("create", e))?;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&self.root)
                    .map_err(|e| io("create", e))?;
            }
            Err(e) => return Err(io("create", e)),
        }
        let meta = std::fs::symlink_metadata(&self.root).map_err(|e| io("inspect", e))?;
        let unsafe_because = |why: String| TemplateError::Unsafe {
            path: self.root.clone(),
            why,
        };
        if !meta.is_dir() {
            return Err(unsafe_because("is not a directory".into()));
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(unsafe_because(format!(
                "belongs to uid {}, not {euid}",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(unsafe_because(format!(
                "has mode {:o}, not 700",
                meta.mode() & 0o777
            )));
        }
        Ok(())
    }

    /// Holds the store's lock until dropped.
    fn lock(&self) -> Result<std::fs::File, TemplateError> {
        self.check_root()?;
        let path = self.root.join(LOCK_FILE);
        let io = |err| TemplateError::Io {
            what: "lock",
            path: path.clone(),
            err,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io)?;
        rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(e.into()))?;
        Ok(file)
    }

    /// Boots a template VM, waits for its agent, snapshots it and puts
    /// the snapshot in place as `key`. Holds the lock. On error nothing
    /// is left of the build.
    fn build(&self, config: &RuntimeConfig, key: &str) -> Result<Template, SandboxError> {
        let started = Instant::now();
        let work = self
            .root
            .join(format!("{BUILD_PREFIX}{key}-{}", std::process::id()));
        // A work directory of this pid is from a build that failed
        // half-way and could not clean up; nobody else uses it.
        if work.exists() {
            remove_tree(&work)?;
        }
        let result = self.build_in(config, key, &work);
        let cleaned = remove_tree(&work);
        let template = result.map_err(|err| TemplateError::Build {
            key: key.into(),
            err: Box::new(err),
        })?;
        cleaned?;
        tracing::info!(
            key,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "sandbox template built"
        );
        Ok(template)
    }

    fn build_in(
        &self,
        config: &RuntimeConfig,
        key: &str,
        work: &Path,
    ) -> Result<Template, SandboxError> {
        let prepare = |path: &Path| {
            let path = path.to_path_buf();
            move |err| SandboxError::Prepare { path, err }
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(work)
            .map_err(prepare(work))?;
        let (vm_config, share) = template_vm(config, work)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&share)
            .map_err(prepare(&share))?;
        let vmm = VmmHandle::spawn(Instant::now())?;
        vmm.configure(vm_config)?;
        vmm.start()?;
        let (agent, stream) = super::connect_agent(&vmm, config, work)?;
        // The restored sandboxes open their own connections: this one
        // ends here, and the guest drops what is left of it at the
        // restore's transport reset.
        drop(agent);
        let _ = stream.shutdown(std::net::Shutdown::Both);
        vmm.pause()?;
        let snapshot = work.join("snapshot");
        vmm.snapshot(&snapshot)?;
        let _ = vmm.stop();
        drop(vmm);
        let dir = self.root.join(key);
        std::fs::rename(&snapshot, &dir).map_err(|err| TemplateError::Io {
            what: "put in place",
            path: dir.clone(),
            err,
        })?;
        self.find(key).ok_or_else(|| {
            TemplateError::Io {
                what: "find",
                path: dir,
                err: std::io::ErrorKind::NotFound.into(),
            }
            .into()
        })
    }

    /// Moves the template `key` aside, then removes it.
    fn discard(&self, key: &str) -> Result<(), TemplateError> {
        let dir = self.root.join(key);
        let aside = self
            .root
            .join(format!("{STALE_PREFIX}{key}-{}", std::process::id()));
        if aside.exists() {
            remove_tree(&aside)?;
        }
        std::fs::rename(&dir, &aside).map_err(|err| TemplateError::Io {
            what: "move aside",
            path: dir,
            err,
        })?;
        remove_tree(&aside)
    }
}

/// The template VM of `config`, its host side in `dir`, and the empty
/// directory its (never mounted) share is: the VM a restored sandbox is
/// ([`vm::restored_config`]).
fn template_vm(config: &RuntimeConfig, dir: &Path) -> Result<(VmConfig, PathBuf), SandboxError> {
    let share = dir.join("share");
    let (vm, _) = vm::restored_config(config, dir, &share, None)?;
    Ok((vm, share))
}

/// Removes a directory of the store: plain files and directories only
/// (nothing in the store is mounted or a guest's to write).
fn remove_tree(path: &Path) -> Result<(), TemplateError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(TemplateError::Io {
            what: "remove",
            path: path.into(),
            err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, TemplateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore {
            root: dir.path().join("templates"),
        };
        (dir, store)
    }

    #[test]
    fn the_key_changes_with_the_vm_shape_and_not_with_the_pod() {
        let config = RuntimeConfig::default();
        let (a, _) = template_vm(&config, Path::new("/run/skiff/sbs/a")).unwrap();
        let (b, _) = template_vm(&config, Path::new("/run/skiff/sbs/b")).unwrap();
        assert_eq!(key(&a), key(&b));
        assert_eq!(key(&a).len(), 24);
        let mut bigger = config.clone();
        bigger.hypervisor.memory_mib = 512;
        let (c, _) = template_vm(&bigger, Path::new("/x")).unwrap();
        assert_ne!(key(&a), key(&c));
        let mut other_kernel = config;
        other_kernel.hypervisor.kernel = "/boot/other".into();
        let (d, _) = template_vm(&other_kernel, Path::new("/x")).unwrap();
        assert_ne!(key(&a), key(&d));
    }

    #[test]
    fn the_store_is_made_private_and_a_shared_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, store) = store();
        assert!(store.list().unwrap().is_empty());
        assert_eq!(store.destroy().unwrap(), 0);
        store.check_root().unwrap();
        let mode = std::fs::metadata(store.root())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(store.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = store.list().unwrap_err().to_string();
        assert!(err.contains("has mode 755, not 700"), "{err}");
    }

    #[test]
    fn only_complete_templates_are_found_and_destroy_removes_them() {
        let (_tmp, store) = store();
        store.check_root().unwrap();
        let complete = store.root().join("aaaa");
        std::fs::create_dir(&complete).unwrap();
        std::fs::write(complete.join(snapshot::STATE_FILE), "{}").unwrap();
        // A snapshot being written has no state file yet.
        std::fs::create_dir(store.root().join("bbbb")).unwrap();
        // A build of a shim that is gone, and one of this process.
        let dead = store
            .root()
            .join(format!("{BUILD_PREFIX}cccc-{}", u32::MAX));
        let ours = store
            .root()
            .join(format!("{BUILD_PREFIX}dddd-{}", std::process::id()));
        std::fs::create_dir(&dead).unwrap();
        std::fs::create_dir(&ours).unwrap();

        let found = store.find("aaaa").unwrap();
        assert_eq!(found.dir, complete);
        assert!(store.find("bbbb").is_none());
        let listed: Vec<_> = store.list().unwrap().into_iter().map(|t| t.key).collect();
        assert_eq!(listed, ["aaaa", "bbbb"]);
        assert!(store.list().unwrap()[0].summary.is_err());

        assert_eq!(store.destroy().unwrap(), 2);
        assert!(!complete.exists() && !dead.exists());
        assert!(ours.exists(), "a live build is left alone");
    }
}
