//! Host tests of the share against what a hostile guest can do to it:
//! symlinks planted before a bind, a mount renamed into a directory that
//! is being removed, a path component swapped before an unmount. They
//! mount for real (run as root), each below its own temporary directory,
//! and unmount everything below it when they end, pass or fail.

use std::os::unix::fs::{symlink, PermissionsExt};

use super::*;

/// A temporary directory whose mounts are all detached on drop, before
/// the directory itself is removed.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skiff-share-test")
            .tempdir_in("/tmp")
            .unwrap();
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    /// `name` made as a directory.
    fn dir(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(&self.path()).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Ok(root) = std::fs::canonicalize(self.dir.path()) else {
            return;
        };
        for _ in 0..16 {
            let points = mounts_under(&root).unwrap_or_default();
            if points.is_empty() {
                return;
            }
            for point in points {
                let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// The mountinfo line of the topmost mount on `point`: (per-mount
/// options, optional fields, filesystem type, superblock options).
fn mount_entry(point: &Path) -> Option<(String, String, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .rfind(|line| line.split(' ').nth(4).map(unescape_octal).as_deref() == point.to_str())
        .map(|line| {
            let (left, right) = line.split_once(" - ").unwrap();
            let fields: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            (
                fields[5].to_string(),
                fields[6..].join(" "),
                right[0].to_string(),
                right[2].to_string(),
            )
        })
}

/// How many mounts are stacked on `point`.
fn mount_count(point: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|line| line.split(' ').nth(4).map(unescape_octal).as_deref() == point.to_str())
        .count()
}

/// Mounts outside `inside` (a path prefix) in the peer group that
/// `optional` (a mountinfo entry's optional fields) names, if any.
fn peers_outside(optional: &str, inside: &Path) -> Vec<String> {
    let Some(group) = optional.split(' ').find_map(|f| f.strip_prefix("shared:")) else {
        return Vec::new();
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|line| {
            let left = line.split_once(" - ").map_or(*line, |(l, _)| l);
            left.split(' ')
                .skip(6)
                .any(|f| f == format!("shared:{group}"))
        })
        .filter_map(|line| line.split(' ').nth(4).map(unescape_octal))
        .filter(|point| !Path::new(point).starts_with(inside))
        .collect()
}

fn has_option(options: &str, option: &str) -> bool {
    options.split(',').any(|o| o == option)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A share root, a bind source directory holding `data`, and a host
/// directory outside the share that the guest would like to reach.
struct Setup {
    scratch: Scratch,
    share: HostDir,
    source: PathBuf,
    outside: PathBuf,
}

fn setup() -> Setup {
    let scratch = Scratch::new();
    let share = HostDir::open(&scratch.dir("share")).unwrap();
    let source = scratch.dir("source");
    std::fs::write(source.join("data"), "source data").unwrap();
    let outside = scratch.dir("outside");
    Setup {
        scratch,
        share,
        source,
        outside,
    }
}

#[test]
fn a_planted_mounts_symlink_is_refused_and_nothing_is_made_outside() {
    let s = setup();
    std::fs::create_dir(s.share.path().join("c1")).unwrap();
    symlink(&s.outside, s.share.path().join("c1/mounts")).unwrap();
    let file = s.scratch.path().join("hosts");
    std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();

    for (source, rel) in [(&s.source, "c1/mounts/0"), (&file, "c1/mounts/1")] {
        let err = bind(&s.share, Path::new(rel), source, BindMode::READ_WRITE)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c1/mounts is a symlink planted in the guest-writable share"),
            "{err}"
        );
    }
    assert!(entries(&s.outside).is_empty(), "{:?}", entries(&s.outside));
    assert!(s.scratch.mounts().is_empty(), "{:?}", s.scratch.mounts());
}

#[test]
fn a_planted_rootfs_symlink_is_refused() {
    let s = setup();
    std::fs::create_dir(s.share.path().join("c1")).unwrap();
    symlink(&s.outside, s.share.path().join("c1/rootfs")).unwrap();
    let err = bind(
        &s.share,
        Path::new("c1/rootfs"),
        &s.source,
        BindMode::READ_WRITE,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("c1/rootfs is a symlink planted"), "{err}");
    assert!(entries(&s.outside).is_empty());
    assert!(s.scratch.mounts().is_empty(), "{:?}", s.scratch.mounts());
}

#[test]
fn a_symlinked_intermediate_component_is_refused() {
    let s = setup();
    std::fs::create_dir(s.outside.join("mounts")).unwrap();
    symlink(&s.outside, s.share.path().join("c1")).unwrap();
    let err = bind(
        &s.share,
        Path::new("c1/mounts/0"),
        &s.source,
        BindMode::READ_WRITE,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/share/c1 is a symlink planted"), "{err}");
    assert_eq!(entries(&s.outside), vec!["mounts"]);
    assert!(entries(&s.outside.join("mounts")).is_empty());
    assert!(s.scratch.mounts().is_empty(), "{:?}", s.scratch.mounts());
}

#[test]
fn a_file_target_must_be_a_regular_file_of_the_share() {
    let s = setup();
    let source = s.scratch.path().join("resolv.conf");
    std::fs::write(&source, "nameserver 10.0.0.1\n").unwrap();
    let victim = s.outside.join("passwd");
    std::fs::write(&victim, "root:x:0:0::/root:/bin/sh\n").unwrap();
    let mounts = s.share.path().join("c1/mounts");
    std::fs::create_dir_all(&mounts).unwrap();
    symlink(&victim, mounts.join("0")).unwrap();
    nix::unistd::mkfifo(&mounts.join("1"), nix::sys::stat::Mode::S_IRWXU).unwrap();

    let err = bind(
        &s.share,
        Path::new("c1/mounts/0"),
        &source,
        BindMode::READ_ONLY,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("c1/mounts/0 is a symlink planted"), "{err}");
    // A FIFO is never opened (that would block), only named.
    let err = bind(
        &s.share,
        Path::new("c1/mounts/1"),
        &source,
        BindMode::READ_ONLY,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("c1/mounts/1 is a FIFO, expected a regular file"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    assert!(s.scratch.mounts().is_empty(), "{:?}", s.scratch.mounts());
}

#[test]
fn binds_are_nosuid_nodev_kept_from_the_host_and_read_only_when_asked() {
    let s = setup();
    let file = s.scratch.path().join("hosts");
    std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
    bind(
        &s.share,
        Path::new("c1/rootfs"),
        &s.source,
        BindMode::READ_WRITE,
    )
    .unwrap();
    bind(
        &s.share,
        Path::new("c1/mounts/0"),
        &s.source,
        BindMode::READ_ONLY,
    )
    .unwrap();
    bind(
        &s.share,
        Path::new("c1/mounts/1"),
        &file,
        BindMode::READ_ONLY,
    )
    .unwrap();
    for (rel, read_only) in [
        ("c1/rootfs", false),
        ("c1/mounts/0", true),
        ("c1/mounts/1", true),
    ] {
        let point = s.share.path().join(rel);
        let (options, optional, _, _) = mount_entry(&point).expect(rel);
        assert!(has_option(&options, "nosuid"), "{rel}: {options}");
        assert!(has_option(&options, "nodev"), "{rel}: {options}");
        assert_eq!(has_option(&options, "ro"), read_only, "{rel}: {options}");
        // Shared only with the share's own copies (a jail's), never with
        // a host mount.
        assert_eq!(
            peers_outside(&optional, s.share.path()),
            Vec::<String>::new(),
            "{rel}: {optional}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(s.share.path().join("c1/rootfs/data")).unwrap(),
        "source data"
    );
    // Made by the runtime: only root on the host gets in.
    let mode = std::fs::metadata(s.share.path().join("c1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    unmount_tree(&s.share, Path::new("c1")).unwrap();
    assert!(s.scratch.mounts().is_empty(), "{:?}", s.scratch.mounts());
    let removal = remove_tree(&s.share, Path::new("c1")).unwrap();
    assert!(removal.complete, "{removal:?}");
    assert!(entries(s.share.path()).is_empty());
    assert_eq!(entries(&s.source), vec!["data"]);
}

#[test]
fn a_missing_bind_source_is_named_and_nothing_is_made() {
    let s = setup();
    let err = bind(
        &s.share,
        Path::new("c1/rootfs"),
        Path::new("/nonexistent/src"),
        BindMode::READ_WRITE,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bind source /nonexistent/src does not exist"
    );
    assert!(entries(s.share.path()).is_empty());
}

#[test]
fn paths_that_leave_the_share_are_refused() {
    let s = setup();
    for rel in ["../outside/x", "/etc/x", "c1/../../outside/x"] {
        let err = bind(&s.share, Path::new(rel), &s.source, BindMode::READ_WRITE)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a plain relative path"), "{rel}: {err}");
    }
    assert!(entries(&s.outside).is_empty());
    assert!(s.scratch.mounts().is_empty());
}

#[test]
fn removal_leaves_a_mount_it_meets_and_reports_it() {
    let s = setup();
    let victim_dir = s.scratch.dir("other-container-volume");
    std::fs::write(victim_dir.join("precious"), "host data").unwrap();
    let victim_file = s.scratch.path().join("precious-file");
    std::fs::write(&victim_file, "host file").unwrap();
    // Another container's read-write binds, as the guest would rename
    // them into the directory being removed after it was unmounted.
    bind(
        &s.share,
        Path::new("c2/mounts/0"),
        &victim_dir,
        BindMode::READ_WRITE,
    )
    .unwrap();
    bind(
        &s.share,
        Path::new("c2/mounts/1"),
        &victim_file,
        BindMode::READ_WRITE,
    )
    .unwrap();
    std::fs::create_dir_all(s.share.path().join("c1/a/b")).unwrap();
    std::fs::write(s.share.path().join("c1/a/b/junk"), "guest junk").unwrap();
    std::fs::rename(s.share.path().join("c2"), s.share.path().join("c1/a/moved")).unwrap();

    let removal = remove_tree(&s.share, Path::new("c1")).unwrap();
    let mut skipped = removal.skipped_mounts.clone();
    skipped.sort();
    assert_eq!(
        skipped,
        vec![
            s.share.path().join("c1/a/moved/mounts/0"),
            s.share.path().join("c1/a/moved/mounts/1"),
        ]
    );
    assert!(!removal.complete);
    assert_eq!(
        std::fs::read_to_string(victim_dir.join("precious")).unwrap(),
        "host data"
    );
    assert_eq!(std::fs::read_to_string(&victim_file).unwrap(), "host file");
    assert!(!s.share.path().join("c1/a/b").exists());

    // Unmounted, the rest goes.
    unmount_tree(&s.share, Path::new("c1")).unwrap();
    let removal = remove_tree(&s.share, Path::new("c1")).unwrap();
    assert!(removal.complete, "{removal:?}");
    assert_eq!(entries(&victim_dir), vec!["precious"]);
}

#[test]
fn removal_never_follows_a_symlink() {
    let s = setup();
    let target_dir = s.scratch.dir("linked-dir");
    std::fs::write(target_dir.join("keep"), "kept").unwrap();
    let c1 = s.share.path().join("c1");
    std::fs::create_dir_all(c1.join("sub")).unwrap();
    symlink(&target_dir, c1.join("dirlink")).unwrap();
    symlink(target_dir.join("keep"), c1.join("sub/filelink")).unwrap();
    symlink(&s.outside, s.share.path().join("c2")).unwrap();

    let removal = remove_tree(&s.share, Path::new("c1")).unwrap();
    assert!(removal.complete, "{removal:?}");
    // A planted symlink in place of the directory itself: unlinked only.
    let removal = remove_tree(&s.share, Path::new("c2")).unwrap();
    assert!(removal.complete, "{removal:?}");
    assert!(entries(s.share.path()).is_empty());
    assert_eq!(entries(&target_dir), vec!["keep"]);
    assert!(s.outside.is_dir());
}

#[test]
fn removal_stops_at_its_limits() {
    let s = setup();
    let mut deep = s.share.path().join("deep");
    for _ in 0..10 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let wide = s.share.path().join("wide");
    std::fs::create_dir(&wide).unwrap();
    for i in 0..50 {
        std::fs::write(wide.join(i.to_string()), "").unwrap();
    }
    let limits = Limits {
        max_depth: 4,
        max_entries: 1000,
    };
    let removal = remove_tree_with(&s.share, Path::new("deep"), limits).unwrap();
    assert!(removal.limit_hit && !removal.complete, "{removal:?}");
    let limits = Limits {
        max_depth: 4,
        max_entries: 10,
    };
    let removal = remove_tree_with(&s.share, Path::new("wide"), limits).unwrap();
    assert!(removal.limit_hit && !removal.complete, "{removal:?}");
    assert_eq!(removal.removed, 10);
    // The defaults take both.
    for name in ["deep", "wide"] {
        assert!(remove_tree(&s.share, Path::new(name)).unwrap().complete);
    }
}

#[test]
fn an_unmount_never_follows_a_planted_symlink_to_another_mount() {
    let s = setup();
    // A host mount elsewhere, and the guest's symlink that would send
    // the unmount of `share/c1/rootfs` to it.
    let elsewhere = s.scratch.dir("elsewhere");
    let host_mount = elsewhere.join("rootfs");
    std::fs::create_dir(&host_mount).unwrap();
    let flags = nix::mount::MsFlags::MS_BIND;
    nix::mount::mount(
        Some(&s.source),
        &host_mount,
        None::<&str>,
        flags,
        None::<&str>,
    )
    .unwrap();
    symlink(&elsewhere, s.share.path().join("c1")).unwrap();

    let err = unmount_at(&s.share, Path::new("c1/rootfs"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("c1 is a symlink planted"), "{err}");
    assert!(
        mount_entry(&host_mount).is_some(),
        "the host mount was detached"
    );

    // The last component too.
    std::fs::remove_file(s.share.path().join("c1")).unwrap();
    std::fs::create_dir(s.share.path().join("c1")).unwrap();
    symlink(&host_mount, s.share.path().join("c1/rootfs")).unwrap();
    let err = unmount_at(&s.share, Path::new("c1/rootfs"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("c1/rootfs is a symlink planted"), "{err}");
    assert!(
        mount_entry(&host_mount).is_some(),
        "the host mount was detached"
    );
}

#[test]
fn unmount_tree_detaches_stacked_and_nested_mounts() {
    let s = setup();
    let nested = s.scratch.dir("with-submount");
    std::fs::create_dir(nested.join("sub")).unwrap();
    let flags = nix::mount::MsFlags::MS_BIND;
    nix::mount::mount(
        Some(&s.source),
        &nested.join("sub"),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .unwrap();
    bind(
        &s.share,
        Path::new("c1/mounts/0"),
        &nested,
        BindMode::READ_WRITE,
    )
    .unwrap();
    bind(
        &s.share,
        Path::new("c1/rootfs"),
        &s.source,
        BindMode::READ_WRITE,
    )
    .unwrap();
    // The runtime never stacks binds (a mount point is "another mount" to
    // bind), but a crashed shim's rerun could: stack one by hand.
    let err = bind(
        &s.share,
        Path::new("c1/rootfs"),
        &s.outside,
        BindMode::READ_WRITE,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("c1/rootfs is on another mount"), "{err}");
    let rootfs = s.share.path().join("c1/rootfs");
    nix::mount::mount(Some(&s.outside), &rootfs, None::<&str>, flags, None::<&str>).unwrap();
    let share_mounts = || mounts_under(s.share.path()).unwrap();
    assert_eq!(share_mounts().len(), 3, "{:?}", share_mounts());
    assert_eq!(mount_count(&rootfs), 2);
    unmount_tree(&s.share, Path::new("c1")).unwrap();
    assert!(share_mounts().is_empty(), "{:?}", share_mounts());
    assert_eq!(mount_count(&rootfs), 0);
    // The source's own submount is the host's and stays.
    assert!(mount_entry(&nested.join("sub")).is_some());
}

#[test]
fn the_share_tmpfs_is_bounded_nosuid_nodev_and_a_peer_group_of_its_own() {
    let scratch = Scratch::new();
    let state = HostDir::open(&scratch.dir("state")).unwrap();
    let share = mount_tmpfs(&state, "shared", 1, 64).unwrap();
    let point = state.path().join("shared");
    assert_eq!(share.path(), point);
    let (options, optional, fstype, super_options) = mount_entry(&point).unwrap();
    assert_eq!(fstype, "tmpfs");
    assert!(
        has_option(&options, "nosuid") && has_option(&options, "nodev"),
        "{options}"
    );
    // A peer group of its own (the fs jail's copies follow it), never /run's.
    assert!(optional.contains("shared:"), "{optional}");
    assert_eq!(
        peers_outside(&optional, &point),
        Vec::<String>::new(),
        "{optional}"
    );
    for option in ["size=1024k", "nr_inodes=64", "mode=700"] {
        assert!(has_option(&super_options, option), "{super_options}");
    }
    let big = std::fs::write(point.join("big"), vec![0u8; 2 << 20]).unwrap_err();
    assert_eq!(big.kind(), std::io::ErrorKind::StorageFull, "{big}");
    std::fs::remove_file(point.join("big")).unwrap();
    let made = (0..100)
        .take_while(|i| std::fs::write(point.join(i.to_string()), "").is_ok())
        .count();
    assert!(made < 64, "{made} files in a 64-inode tmpfs");
    for i in 0..made {
        std::fs::remove_file(point.join(i.to_string())).unwrap();
    }

    // Binds go on top of it as before, and teardown takes all.
    bind(
        &share,
        Path::new("c1/rootfs"),
        &scratch.dir("rootfs"),
        BindMode::READ_WRITE,
    )
    .unwrap();
    unmount_tree(&state, Path::new("shared")).unwrap();
    assert!(scratch.mounts().is_empty(), "{:?}", scratch.mounts());
}

#[test]
fn harden_mount_makes_a_mount_nosuid_and_nodev() {
    let scratch = Scratch::new();
    let root = scratch.dir("rootfs");
    let flags = nix::mount::MsFlags::empty();
    nix::mount::mount(
        Some("skiff-test"),
        &root,
        Some("tmpfs"),
        flags,
        None::<&str>,
    )
    .unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    nix::mount::mount(
        Some("skiff-test"),
        &root.join("sub"),
        Some("tmpfs"),
        flags,
        None::<&str>,
    )
    .unwrap();
    harden_mount(&root).unwrap();
    for point in [root.clone(), root.join("sub")] {
        let (options, ..) = mount_entry(&point).unwrap();
        assert!(
            has_option(&options, "nosuid") && has_option(&options, "nodev"),
            "{options}"
        );
    }
    // Not a mount point: an error, not a silent success.
    assert!(harden_mount(&scratch.dir("plain")).is_err());
}

const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /run rw shared:5 - tmpfs tmpfs rw
40 30 0:40 / /run/skiff/sbs/p1/shared/c1/rootfs rw - overlay overlay rw
41 40 8:1 /etc/hosts /run/skiff/sbs/p1/shared/c1/mounts/0 rw - ext4 /dev/sda1 rw
42 30 8:1 /x /run/skiff/sbs/p1/shared/with\\040space rw - ext4 /dev/sda1 rw
43 30 8:1 /x /run/skiff/sbs/p10/shared rw - ext4 /dev/sda1 rw
";

#[test]
fn mounts_below_a_directory_come_deepest_first_and_unescaped() {
    let points = mount_points_under(MOUNTINFO, Path::new("/run/skiff/sbs/p1"));
    assert_eq!(
        points,
        vec![
            PathBuf::from("/run/skiff/sbs/p1/shared/c1/mounts/0"),
            PathBuf::from("/run/skiff/sbs/p1/shared/c1/rootfs"),
            PathBuf::from("/run/skiff/sbs/p1/shared/with space"),
        ]
    );
}

#[test]
fn octal_escapes_and_stray_backslashes() {
    assert_eq!(unescape_octal("a\\040b\\134c"), "a b\\c");
    assert_eq!(unescape_octal("tail\\04"), "tail\\04");
    assert_eq!(unescape_octal("x\\999"), "x\\999");
}

/// `source` with a tmpfs mounted on `source/tmpfs`, as a volume with a
/// mount inside it.
fn with_tmpfs_below(s: &Setup) -> PathBuf {
    let below = s.source.join("tmpfs");
    std::fs::create_dir(&below).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &below,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    below
}

fn write_errno(path: &Path) -> Option<i32> {
    std::fs::write(path, "x")
        .err()
        .map(|e| e.raw_os_error().unwrap())
}

#[test]
fn a_read_only_top_leaves_the_mounts_below_writable_and_a_read_only_tree_does_not() {
    let s = setup();
    with_tmpfs_below(&s);
    assert!(has_submounts(&s.source).unwrap());
    assert!(!has_submounts(&s.outside).unwrap());
    let top = BindMode {
        read_only: ReadOnly::Top,
        from_host: false,
    };
    bind(&s.share, Path::new("c1/mounts/0"), &s.source, top).unwrap();
    bind(
        &s.share,
        Path::new("c1/mounts/1"),
        &s.source,
        BindMode::READ_ONLY,
    )
    .unwrap();
    let copy = s.share.path().join("c1/mounts/0");
    assert_eq!(write_errno(&copy.join("new")), Some(libc::EROFS));
    assert_eq!(write_errno(&copy.join("tmpfs/new")), None);
    let (options, _, _, _) = mount_entry(&copy.join("tmpfs")).unwrap();
    assert!(has_option(&options, "nosuid"), "{options}");
    let copy = s.share.path().join("c1/mounts/1");
    assert_eq!(write_errno(&copy.join("new")), Some(libc::EROFS));
    assert_eq!(write_errno(&copy.join("tmpfs/new2")), Some(libc::EROFS));
    unmount_tree(&s.share, Path::new("c1")).unwrap();
}

#[test]
fn a_bind_from_the_host_receives_the_hosts_later_mounts_and_a_private_one_does_not() {
    let s = setup();
    let later = s.source.join("later");
    std::fs::create_dir(&later).unwrap();
    // A shared source, as kubelet makes a volume it propagates.
    let flags = nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC;
    nix::mount::mount(
        Some(&s.source),
        &s.source,
        None::<&str>,
        flags,
        None::<&str>,
    )
    .unwrap();
    let shared = nix::mount::MsFlags::MS_SHARED | nix::mount::MsFlags::MS_REC;
    nix::mount::mount(None::<&str>, &s.source, None::<&str>, shared, None::<&str>).unwrap();
    let from_host = BindMode {
        read_only: ReadOnly::No,
        from_host: true,
    };
    bind(&s.share, Path::new("c1/mounts/0"), &s.source, from_host).unwrap();
    bind(
        &s.share,
        Path::new("c1/mounts/1"),
        &s.source,
        BindMode::READ_WRITE,
    )
    .unwrap();

    nix::mount::mount(Some(&s.outside), &later, None::<&str>, flags, None::<&str>).unwrap();
    std::fs::write(s.outside.join("flag"), "").unwrap();
    let slave = s.share.path().join("c1/mounts/0/later");
    assert_eq!(mount_count(&slave), 1);
    assert_eq!(entries(&slave), vec!["flag"]);
    let private = s.share.path().join("c1/mounts/1/later");
    assert_eq!(mount_count(&private), 0);
    assert!(entries(&private).is_empty());
    // Nothing travels back: a mount in the slave copy stays there.
    let back = s.share.path().join("c1/mounts/0/back");
    std::fs::create_dir(&back).unwrap();
    nix::mount::mount(Some(&s.outside), &back, None::<&str>, flags, None::<&str>).unwrap();
    assert_eq!(mount_count(&s.source.join("back")), 0);

    unmount_tree(&s.share, Path::new("c1")).unwrap();
}
