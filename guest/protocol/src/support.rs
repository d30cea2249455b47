//! What `skiff-agent` implements of the OCI runtime spec, named once for
//! both ends: the host advertises it to containerd (the shim's `-info`,
//! the OCI features document), and the agent's unit tests check that it
//! handles every name listed here, so the two cannot drift apart.

/// Mount options the agent turns into mount(2) flags or propagation
/// (anything else is passed to the filesystem as data).
pub const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nofail",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "ro",
    "rprivate",
    "rro",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "tmpcopyup",
    "unbindable",
];

/// Namespaces a container may ask for, by their OCI names. User and time
/// namespaces are refused (the VM is the isolation boundary, and the
/// guest kernel has no time namespaces).
pub const NAMESPACES: &[&str] = &["cgroup", "ipc", "mount", "network", "pid", "uts"];

/// Seccomp actions the agent compiles (no SCMP_ACT_NOTIFY: no agent
/// listens for notifications).
pub const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

/// Seccomp argument comparisons the agent compiles.
pub const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];
