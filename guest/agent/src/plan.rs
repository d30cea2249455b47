//! What a container process needs, resolved before fork: the plans
//! [`crate::spec`] makes from the OCI spec and [`crate::spawn`] carries
//! out in the child.
//!
//! They live apart from both so the dependency goes one way: `spec` and
//! `spawn` each depend on this module and neither on the other. `spawn`
//! stays ignorant of OCI, and `spec` of fork and exec.

use std::ffi::CString;
use std::path::PathBuf;

use nix::mount::MsFlags;
use nix::sys::stat::SFlag;

use crate::mounts::MountOptions;
use crate::security::{CapSets, Rlimit};
use crate::user::ResolvedUser;

/// The parts of a spawn plan that come from an OCI process.
pub struct ProcessSetup {
    pub args: Vec<CString>,
    pub exec_candidates: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: PathBuf,
    pub user: ResolvedUser,
    pub caps: Option<CapSets>,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    pub terminal: bool,
}

/// One mount of the spec, resolved to a host path under the rootfs.
#[derive(Debug, Clone)]
pub struct MountPlan {
    pub source: Option<PathBuf>,
    pub target: PathBuf,
    /// Destination as the container sees it, for messages.
    pub destination: String,
    pub fstype: Option<String>,
    pub options: MountOptions,
    /// The source is a file: the target must be a file too.
    pub file: bool,
    /// A tmpfs at /dev: the agent fills it with the standard devices.
    pub populate_dev: bool,
}

/// A device node of the spec (`linux.devices`), made in the container's
/// /dev tmpfs once it is mounted.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub target: PathBuf,
    pub kind: SFlag,
    pub number: libc::dev_t,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// How the init process's root filesystem is built.
#[derive(Debug, Clone)]
pub struct RootfsPlan {
    pub rootfs: PathBuf,
    pub readonly: bool,
    /// The propagation of `/` while the root is built (`linux.rootfsPropagation`,
    /// but slave where it asks shared: the root is moved over `/`, and
    /// a mount is not moved from under a shared one).
    pub propagation: MsFlags,
    /// Applied to the new root once it is in place: shared, where asked.
    pub root_propagation: Option<MsFlags>,
    pub mounts: Vec<MountPlan>,
    pub devices: Vec<DevicePlan>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    /// `linux.sysctl` as (path below /proc/sys, value). Written once the
    /// new root is in place (so /proc is the container's) and before the
    /// masked and read-only paths, as runc does: the default spec makes
    /// /proc/sys read-only, and a sysctl written after that fails.
    pub sysctl: Vec<(PathBuf, String)>,
}
