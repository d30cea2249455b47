//! The shim's open-file limit, sized for its pod: what the pod's VM may
//! hold whatever its guest does ([`VmConfig::max_fds`]) plus what the
//! runtime holds beside it. Not the host's maximum: a shim that leaked
//! fds, or a bound that failed, should hit its own limit, not the host's.

use skiff_vmm::VmConfig;

/// Fds the runtime may hold for a pod beside its VM: containers' stdio
/// FIFOs and relays, agent streams, ttrpc connections, state files.
pub const RUNTIME_FDS: u64 = 4096;

/// The open-file limit for a shim whose pod's VM is `vm`.
pub fn pod_fd_limit(vm: &VmConfig) -> u64 {
    vm.max_fds() + RUNTIME_FDS
}

/// Sets `RLIMIT_NOFILE` (soft and hard) to `want`, lowering a higher hard
/// limit; where the hard limit is lower and cannot be raised (no
/// CAP_SYS_RESOURCE), the soft one goes up to it. Returns the soft limit
/// in effect. Process-wide: every thread, confined or not, shares it.
pub fn set_fd_limit(want: u64) -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let wanted = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return Ok(want);
        }
        let err = std::io::Error::last_os_error();
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        tracing::warn!(
            "open-file limit: {want} wanted for the pod, the hard limit {} kept: {err}",
            limit.rlim_max
        );
        Ok(limit.rlim_cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_vmm::config::{DeviceConfig, FsCache, FsConfig, VsockConfig};
    use skiff_vmm::{ConsoleConfig, SeccompMode};

    #[test]
    fn the_limit_covers_what_a_guest_can_grow() {
        let mut vm = VmConfig {
            kernel: "/k".into(),
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 256,
            console: ConsoleConfig::Off,
            devices: Vec::new(),
            hotplug_slots: 4,
            seccomp: SeccompMode::Enforce,
        };
        let bare = pod_fd_limit(&vm);
        vm.devices.push(DeviceConfig::Fs(FsConfig {
            tag: "t".into(),
            path: "/s".into(),
            read_only: false,
            cache: FsCache::Auto,
        }));
        vm.devices.push(DeviceConfig::Vsock(VsockConfig {
            guest_cid: 3,
            socket: "/v".into(),
        }));
        let pod = pod_fd_limit(&vm);
        // One share's 16384 inodes and 4096 handles, 1024 vsock streams.
        assert!(pod >= bare + 16_384 + 4_096 + 1_024, "{bare} -> {pod}");
        assert!(pod < 65_536, "{pod}: far below the host's maximum");
    }
}
