//! The file system the guest sees: fuse-backend-rs's `PassthroughFs` over
//! the shared directory, behind a wrapper that enforces read-only shares
//! and the confinement rules the passthrough relies on.
//!
//! Confinement: the passthrough reaches every inode through `O_PATH |
//! O_NOFOLLOW` fds opened relative to its parent's fd (never by absolute
//! path), rejects names with `/`, maps `..` at the root to `.`, and only
//! opens regular files and directories for I/O (a symlink inode is never
//! followed on the host: its target is handed to the guest, which resolves
//! it in its own namespace). File handles (`open_by_handle_at`) are off and
//! export support is never offered, so an inode can only be reached by
//! walking down from the share's root. [`ShareFs`] repeats the name checks
//! itself so they do not depend on the library's defaults.
//!
//! Read-only shares: [`ShareFs`] serves only the operations listed as
//! reads below and answers every modifying one with EROFS before the
//! passthrough sees it. Operations it does not list fall to the trait's
//! defaults (ENOSYS), so a new modifying operation is refused, not served.
//!
//! Open flags: the guest's flags reach the host's `openat` only through an
//! allow-list ([`open_flags`]); `O_PATH` and `O_TMPFILE` are refused. The
//! patched passthrough (third_party/fuse-backend-rs/SKIFF-PATCHES.md) never
//! changes an open file's status flags on READ or WRITE.
//!
//! Bounds: every inode the guest has looked up holds a host fd, and so does
//! every open handle. [`ShareFs`] mirrors the lookup counts and the open
//! handles and refuses new ones past [`FsLimits`] (ENFILE, EMFILE), so a
//! guest cannot exhaust the process's fds.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::jail::JailFds;
use super::{CacheMode, FsError, FsLimits, FsShare};

type Inode = u64;
type Handle = u64;

/// The passthrough file system of one share, guarded.
pub struct ShareFs {
    inner: PassthroughFs<()>,
    read_only: bool,
    tag: String,
    usage: Usage,
}

/// What the guest holds of the host, checked against [`FsLimits`].
struct Usage {
    limits: FsLimits,
    /// Lookup count of every inode the guest knows, as the FUSE protocol
    /// counts them (each entry reply adds one, FORGET takes some away).
    inodes: Mutex<HashMap<Inode, u64>>,
    handles: AtomicUsize,
    /// Requests refused for a bound; logged at powers of two.
    refused: AtomicU64,
}

/// Open flags the guest may pass to the host's open(2), the access mode
/// aside. Everything else (`O_NOFOLLOW`, `O_CLOEXEC`, `FASYNC`, kernel-
/// internal bits) is dropped; the passthrough adds what it needs.
const OPEN_FLAGS: i32 = libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_DIRECT
    | libc::O_LARGEFILE
    | libc::O_NOATIME
    | libc::O_TRUNC;
/// `O_TMPFILE` without the `O_DIRECTORY` bit it includes.
const O_TMPFILE_BIT: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

/// The flags a guest's OPEN, OPENDIR or CREATE may reach the host with:
/// `O_PATH` (a handle that cannot be read) and `O_TMPFILE` are refused, as
/// is an access mode that is none of the three; `extra` are the flags the
/// operation allows beyond [`OPEN_FLAGS`].
pub(super) fn open_flags(flags: u32, extra: i32) -> io::Result<u32> {
    let flags = flags as i32;
    if flags & (libc::O_PATH | O_TMPFILE_BIT) != 0 || flags & libc::O_ACCMODE == libc::O_ACCMODE {
        return Err(einval());
    }
    Ok((flags & (libc::O_ACCMODE | OPEN_FLAGS | extra)) as u32)
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Timeouts per cache mode, as virtiofsd sets them: `never` caches
/// nothing, `always` for a day.
fn timeouts(cache: CacheMode) -> (CachePolicy, Duration) {
    match cache {
        CacheMode::Never => (CachePolicy::Never, Duration::ZERO),
        CacheMode::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
        CacheMode::Always => (CachePolicy::Always, Duration::from_secs(86_400)),
    }
}

/// A name the guest asks for must be one path component: no `/` (which
/// would make `openat` walk elsewhere) and not empty.
fn check_component(name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') {
        return Err(einval());
    }
    Ok(())
}

/// Like [`check_component`], and also refuses `.` and `..` for operations
/// that create or remove names.
fn check_new_name(name: &CStr) -> io::Result<()> {
    check_component(name)?;
    match name.to_bytes() {
        b"." | b".." => Err(einval()),
        _ => Ok(()),
    }
}

impl ShareFs {
    /// Builds the passthrough over `share.path`; the root is opened when
    /// the guest sends FUSE_INIT.
    pub fn new(share: &FsShare) -> Result<Self, FsError> {
        let root_dir = share
            .path
            .to_str()
            .filter(|p| !p.contains('\0'))
            .ok_or_else(|| FsError::PathEncoding(share.path.clone()))?
            .to_string();
        let config = Self::config(share, root_dir);
        let inner = PassthroughFs::new(config).map_err(FsError::Passthrough)?;
        Ok(Self::with_inner(share, inner))
    }

    /// Builds the passthrough for a thread inside the share's jail
    /// (`fs::jail`): its root is `/`, and it reaches fds through the jail's
    /// detached fd directory.
    pub fn jailed(share: &FsShare, fds: JailFds) -> Self {
        let config = Self::config(share, "/".to_string());
        let inner = PassthroughFs::new_with_fds(config, fds.proc_self_fd, fds.mount_info)
            .expect("new_with_fds opens nothing");
        Self::with_inner(share, inner)
    }

    fn config(share: &FsShare, root_dir: String) -> Config {
        let (cache_policy, timeout) = timeouts(share.cache);
        Config {
            root_dir,
            cache_policy,
            entry_timeout: timeout,
            attr_timeout: timeout,
            // Reach inodes through O_PATH fds, never through file handles.
            inode_file_handles: false,
            writeback: false,
            xattr: false,
            do_import: true,
            ..Config::default()
        }
    }

    fn with_inner(share: &FsShare, inner: PassthroughFs<()>) -> Self {
        Self {
            inner,
            read_only: share.read_only,
            tag: share.tag.clone(),
            usage: Usage {
                limits: share.limits,
                inodes: Mutex::default(),
                handles: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
            },
        }
    }

    /// Logs a refusal for a bound, at the 1st, 2nd, 4th, 8th... so a guest
    /// that keeps hitting it cannot flood the log.
    fn refuse(&self, errno: i32, what: &str, max: usize) -> io::Error {
        let n = self.usage.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                "virtio-fs share {}: the guest holds {max} {what}, the most allowed; \
                 refusing more ({n} refused so far)",
                self.tag
            );
        }
        io::Error::from_raw_os_error(errno)
    }

    /// Counts a handle about to be opened, or refuses it with EMFILE.
    fn take_handle(&self) -> io::Result<()> {
        let max = self.usage.limits.max_handles;
        self.usage
            .handles
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| self.refuse(libc::EMFILE, "open files", max))
    }

    fn put_handle(&self) {
        let _ = self
            .usage
            .handles
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Keeps a handle counted if the open made one, uncounts it otherwise.
    fn opened<T>(
        &self,
        result: io::Result<T>,
        handle: impl Fn(&T) -> Option<Handle>,
    ) -> io::Result<T> {
        match &result {
            Ok(v) if handle(v).is_some() => {}
            _ => self.put_handle(),
        }
        result
    }

    /// Counts the lookup the passthrough made for `entry`; a new inode past
    /// the bound is forgotten again and refused with ENFILE.
    fn looked_up(&self, ctx: &Context, entry: Entry) -> io::Result<Entry> {
        if entry.inode == 0 || entry.inode == ROOT_ID {
            return Ok(entry);
        }
        let max = self.usage.limits.max_inodes;
        {
            let mut inodes = self.usage.inodes.lock().unwrap_or_else(|e| e.into_inner());
            let full = inodes.len() >= max;
            match inodes.get_mut(&entry.inode) {
                Some(count) => {
                    *count += 1;
                    return Ok(entry);
                }
                None if !full => {
                    inodes.insert(entry.inode, 1);
                    return Ok(entry);
                }
                None => {}
            }
        }
        self.inner.forget(ctx, entry.inode, 1);
        Err(self.refuse(libc::ENFILE, "inodes", max))
    }

    /// Whether `inode` would be refused as one inode too many.
    fn inode_refused(&self, inode: Inode) -> bool {
        let inodes = self.usage.inodes.lock().unwrap_or_else(|e| e.into_inner());
        inode != ROOT_ID
            && inodes.len() >= self.usage.limits.max_inodes
            && !inodes.contains_key(&inode)
    }

    fn forgotten(&self, inode: Inode, count: u64) {
        let mut inodes = self.usage.inodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = inodes.get_mut(&inode) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                inodes.remove(&inode);
            }
        }
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }

    fn check_open_flags(&self, flags: u32) -> io::Result<()> {
        let flags = flags as i32;
        if self.read_only
            && (flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0)
        {
            return Err(erofs());
        }
        Ok(())
    }
}

impl FileSystem for ShareFs {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut opts = self.inner.init(capable)?;
        // Export support lets the guest look up by inode number alone.
        opts.remove(FsOptions::EXPORT_SUPPORT);
        Ok(opts)
    }

    fn destroy(&self) {
        self.inner.destroy();
        // The passthrough dropped every inode and handle.
        self.usage
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.usage.handles.store(0, Ordering::Release);
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        check_component(name)?;
        // The root has no parent the guest may see.
        let name = if parent == ROOT_ID && name.to_bytes() == b".." {
            c"."
        } else {
            name
        };
        let entry = self.inner.lookup(ctx, parent, name)?;
        self.looked_up(ctx, entry)
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.forgotten(inode, count);
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        for &(inode, count) in &requests {
            self.forgotten(inode, count);
        }
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(libc::stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: libc::stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(libc::stat64, Duration)> {
        self.writable()?;
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_new_name(name)?;
        // The target is stored as text; the guest resolves it, not the host.
        let entry = self.inner.symlink(ctx, linkname, parent, name)?;
        self.looked_up(ctx, entry)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_new_name(name)?;
        // A guest must not plant device nodes that host processes could open.
        if matches!(mode & libc::S_IFMT, libc::S_IFBLK | libc::S_IFCHR) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let entry = self.inner.mknod(ctx, parent, name, mode, rdev, umask)?;
        self.looked_up(ctx, entry)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_new_name(name)?;
        let entry = self.inner.mkdir(ctx, parent, name, mode, umask)?;
        self.looked_up(ctx, entry)
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_new_name(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_new_name(name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        check_new_name(oldname)?;
        check_new_name(newname)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_new_name(newname)?;
        let entry = self.inner.link(ctx, inode, newparent, newname)?;
        self.looked_up(ctx, entry)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        let flags = open_flags(flags, 0)?;
        self.check_open_flags(flags)?;
        self.take_handle()?;
        let opened = self.inner.open(ctx, inode, flags, fuse_flags);
        self.opened(opened, |(h, _, _)| *h)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        check_new_name(name)?;
        let args = CreateIn {
            flags: open_flags(args.flags, libc::O_CREAT | libc::O_EXCL)?,
            ..args
        };
        self.take_handle()?;
        let created = self.inner.create(ctx, parent, name, args);
        let (entry, handle, opts, passthrough) = self.opened(created, |(_, h, _, _)| *h)?;
        let inode = entry.inode;
        match self.looked_up(ctx, entry) {
            Ok(entry) => Ok((entry, handle, opts, passthrough)),
            Err(e) => {
                if let Some(h) = handle {
                    let _ = self.release(ctx, inode, 0, h, false, false, None);
                }
                Err(e)
            }
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
            .inspect(|()| self.put_handle())
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<libc::statvfs64> {
        let mut st = self.inner.statfs(ctx, inode)?;
        if self.read_only {
            st.f_flag |= libc::ST_RDONLY;
        }
        Ok(st)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        let flags = open_flags(flags, libc::O_DIRECTORY)?;
        if flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        self.take_handle()?;
        let opened = self.inner.opendir(ctx, inode, flags);
        self.opened(opened, |(h, _)| *h)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // Each entry is a lookup. Past the inode bound the listing stops
        // there (0 = "buffer full": the passthrough forgets that entry).
        let mut counted = |dir_entry: DirEntry, entry: Entry| {
            if self.inode_refused(entry.inode) {
                let max = self.usage.limits.max_inodes;
                drop(self.refuse(libc::ENFILE, "inodes", max));
                return Ok(0);
            }
            let inode = entry.inode;
            let added = add_entry(dir_entry, entry)?;
            if added > 0 && inode != 0 && inode != ROOT_ID {
                *self
                    .usage
                    .inodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(inode)
                    .or_insert(0) += 1;
            }
            Ok(added)
        };
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut counted)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner
            .releasedir(ctx, inode, flags, handle)
            .inspect(|()| self.put_handle())
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            self.writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fs::testing::share;
    use fuse_backend_rs::file_traits::FileReadWriteVolatile;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::path::Path;
    use vmm_sys_util::tempdir::TempDir;

    fn ctx() -> Context {
        let mut ctx = Context::new();
        // SAFETY: plain getters.
        (ctx.uid, ctx.gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        ctx
    }

    fn mounted(dir: &Path, read_only: bool) -> ShareFs {
        let fs = ShareFs::new(&share(dir, read_only)).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        fs
    }

    fn errno<T>(result: io::Result<T>) -> i32 {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.raw_os_error().unwrap(),
        }
    }

    fn lookup(fs: &ShareFs, parent: Inode, name: &str) -> io::Result<Entry> {
        let name = std::ffi::CString::new(name).unwrap();
        fs.lookup(&ctx(), parent, &name)
    }

    /// A guest payload for WRITE that the refusal must not even read.
    struct NoData;
    impl io::Read for NoData {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("read-only share read a write payload")
        }
    }
    impl ZeroCopyReader for NoData {
        fn read_to(
            &mut self,
            _: &mut dyn FileReadWriteVolatile,
            _: usize,
            _: u64,
        ) -> io::Result<usize> {
            panic!("read-only share read a write payload")
        }
    }

    #[test]
    fn dotdot_at_the_root_is_the_root() {
        let dir = TempDir::new().unwrap();
        std::fs::create_dir(dir.as_path().join("sub")).unwrap();
        let fs = mounted(dir.as_path(), false);
        let root_ino = std::fs::metadata(dir.as_path()).unwrap().ino();

        let up = lookup(&fs, ROOT_ID, "..").unwrap();
        assert_eq!((up.inode, up.attr.st_ino), (ROOT_ID, root_ino));
        let sub = lookup(&fs, ROOT_ID, "sub").unwrap();
        let up = lookup(&fs, sub.inode, "..").unwrap();
        assert_eq!(up.inode, ROOT_ID);
        let upup = lookup(&fs, up.inode, "..").unwrap();
        assert_eq!(upup.inode, ROOT_ID);
        // Multi-component and absolute names never reach openat.
        assert_eq!(errno(lookup(&fs, ROOT_ID, "../..")), libc::EINVAL);
        assert_eq!(errno(lookup(&fs, sub.inode, "../../etc")), libc::EINVAL);
        assert_eq!(errno(lookup(&fs, ROOT_ID, "/etc")), libc::EINVAL);
        assert_eq!(errno(lookup(&fs, ROOT_ID, "")), libc::EINVAL);
    }

    #[test]
    fn symlinks_are_not_followed_on_the_host() {
        let outside = TempDir::new().unwrap();
        std::fs::write(outside.as_path().join("secret"), b"host only").unwrap();
        let dir = TempDir::new().unwrap();
        let target = outside.as_path().join("secret");
        symlink(&target, dir.as_path().join("link")).unwrap();
        symlink(outside.as_path(), dir.as_path().join("dirlink")).unwrap();
        symlink("/etc/hostname", dir.as_path().join("hostname")).unwrap();
        let fs = mounted(dir.as_path(), false);

        for name in ["link", "hostname"] {
            let entry = lookup(&fs, ROOT_ID, name).unwrap();
            // The entry is the link itself, not what it points to.
            assert_eq!(entry.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
            assert!(fs
                .open(&ctx(), entry.inode, libc::O_RDONLY as u32, 0)
                .is_err());
        }
        let link = lookup(&fs, ROOT_ID, "link").unwrap();
        // The guest gets the target text and resolves it in its own tree.
        assert_eq!(
            fs.readlink(&ctx(), link.inode).unwrap(),
            target.as_os_str().as_encoded_bytes()
        );
        let dirlink = lookup(&fs, ROOT_ID, "dirlink").unwrap();
        assert_eq!(errno(lookup(&fs, dirlink.inode, "secret")), libc::ENOTDIR);
        assert!(fs.opendir(&ctx(), dirlink.inode, 0).is_err());
    }

    #[test]
    fn export_support_is_never_offered() {
        let dir = TempDir::new().unwrap();
        let fs = ShareFs::new(&share(dir.as_path(), false)).unwrap();
        let opts = fs.init(FsOptions::all()).unwrap();
        assert!(!opts.contains(FsOptions::EXPORT_SUPPORT));
    }

    #[test]
    fn read_only_share_refuses_every_change() {
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.as_path().join("f"), b"data").unwrap();
        std::fs::create_dir(dir.as_path().join("d")).unwrap();
        let fs = mounted(dir.as_path(), true);
        let c = ctx();
        let f = lookup(&fs, ROOT_ID, "f").unwrap().inode;
        let rofs = libc::EROFS;

        let args = CreateIn {
            flags: (libc::O_RDWR | libc::O_CREAT) as u32,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        assert_eq!(errno(fs.create(&c, ROOT_ID, c"new", args)), rofs);
        assert_eq!(errno(fs.mkdir(&c, ROOT_ID, c"nd", 0o755, 0)), rofs);
        assert_eq!(
            errno(fs.mknod(&c, ROOT_ID, c"p", libc::S_IFIFO | 0o644, 0, 0)),
            rofs
        );
        assert_eq!(errno(fs.symlink(&c, c"/etc", ROOT_ID, c"s")), rofs);
        assert_eq!(errno(fs.link(&c, f, ROOT_ID, c"f2")), rofs);
        assert_eq!(errno(fs.rename(&c, ROOT_ID, c"f", ROOT_ID, c"g", 0)), rofs);
        assert_eq!(errno(fs.unlink(&c, ROOT_ID, c"f")), rofs);
        assert_eq!(errno(fs.rmdir(&c, ROOT_ID, c"d")), rofs);
        // SAFETY: stat64 is plain data.
        let attr: libc::stat64 = unsafe { std::mem::zeroed() };
        for valid in [SetattrValid::SIZE, SetattrValid::MODE, SetattrValid::MTIME] {
            assert_eq!(errno(fs.setattr(&c, f, attr, None, valid)), rofs);
        }
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
            assert_eq!(errno(fs.open(&c, f, flags as u32, 0)), rofs);
        }
        let (handle, _, _) = fs.open(&c, f, libc::O_RDONLY as u32, 0).unwrap();
        let handle = handle.unwrap();
        let write = fs.write(&c, f, handle, &mut NoData, 4, 0, None, false, 0, 0);
        assert_eq!(errno(write), rofs);
        assert_eq!(errno(fs.fallocate(&c, f, handle, 0, 0, 4096)), rofs);
        assert_eq!(errno(fs.setxattr(&c, f, c"user.x", b"1", 0)), rofs);
        assert_eq!(errno(fs.removexattr(&c, f, c"user.x")), rofs);
        assert_eq!(errno(fs.access(&c, f, libc::W_OK as u32)), rofs);
        // Reading is still fine.
        fs.access(&c, f, libc::R_OK as u32).unwrap();
        assert_ne!(fs.statfs(&c, ROOT_ID).unwrap().f_flag & libc::ST_RDONLY, 0);
        fs.release(&c, f, 0, handle, false, false, None).unwrap();

        let mut names: Vec<_> = std::fs::read_dir(dir.as_path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["d", "f"]);
        assert_eq!(std::fs::read(dir.as_path().join("f")).unwrap(), b"data");
    }

    /// A ZeroCopyWriter into a Vec, as the server's reply writer would be.
    struct Sink(Vec<u8>);
    impl io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl ZeroCopyWriter for Sink {
        fn write_from(
            &mut self,
            f: &mut dyn FileReadWriteVolatile,
            count: usize,
            off: u64,
        ) -> io::Result<usize> {
            let mut buf = vec![0u8; count];
            // SAFETY: `buf` outlives the slice.
            let slice =
                unsafe { fuse_backend_rs::file_buf::FileVolatileSlice::from_mut_slice(&mut buf) };
            let n = f.read_at_volatile(slice, off)?;
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn available_bytes(&self) -> usize {
            usize::MAX
        }
    }

    #[test]
    fn the_patched_passthrough_never_closes_a_handles_fd() {
        // Below ShareFs's flag checks: an O_PATH handle read with other
        // flags. fuse-backend-rs 0.14 closed the handle's fd here.
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.as_path().join("f"), b"share data").unwrap();
        let fs = mounted(dir.as_path(), false);
        let c = ctx();
        let f = lookup(&fs, ROOT_ID, "f").unwrap().inode;
        let (handle, _, _) = fs
            .inner
            .open(&c, f, (libc::O_PATH | libc::O_RDONLY) as u32, 0)
            .unwrap();
        let handle = handle.unwrap();
        for _ in 0..3 {
            let mut sink = Sink(Vec::new());
            assert!(fs
                .inner
                .read(&c, f, handle, &mut sink, 64, 0, None, libc::O_RDONLY as u32)
                .is_err());
        }
        // A file the process opens now does not become the guest's.
        let outside = TempDir::new().unwrap();
        std::fs::write(outside.as_path().join("secret"), b"host secret").unwrap();
        let _secret = std::fs::File::open(outside.as_path().join("secret")).unwrap();
        let mut sink = Sink(Vec::new());
        let read = fs
            .inner
            .read(&c, f, handle, &mut sink, 64, 0, None, libc::O_RDONLY as u32);
        assert!(read.is_err() && sink.0.is_empty(), "read {:?}", sink.0);
        fs.inner
            .release(&c, f, 0, handle, false, false, None)
            .unwrap();
    }

    #[test]
    fn open_handles_and_looked_up_inodes_are_bounded() {
        let dir = TempDir::new().unwrap();
        for i in 0..6 {
            std::fs::write(dir.as_path().join(format!("f{i}")), b"x").unwrap();
        }
        let mut s = share(dir.as_path(), false);
        s.limits = FsLimits {
            max_inodes: 4,
            max_handles: 2,
        };
        let fs = ShareFs::new(&s).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        let c = ctx();

        // Inodes: four distinct ones, then ENFILE; again an old one is fine.
        let inodes: Vec<_> = (0..4)
            .map(|i| lookup(&fs, ROOT_ID, &format!("f{i}")).unwrap().inode)
            .collect();
        assert_eq!(errno(lookup(&fs, ROOT_ID, "f4")), libc::ENFILE);
        assert_eq!(lookup(&fs, ROOT_ID, "f0").unwrap().inode, inodes[0]);
        // f0 was looked up twice: one forget keeps it, two free a place.
        fs.forget(&c, inodes[0], 1);
        assert_eq!(errno(lookup(&fs, ROOT_ID, "f4")), libc::ENFILE);
        fs.batch_forget(&c, vec![(inodes[0], 1), (inodes[1], 1)]);
        let f4 = lookup(&fs, ROOT_ID, "f4").unwrap().inode;

        // Handles: two, then EMFILE; a release frees a place.
        let open = |inode| fs.open(&c, inode, libc::O_RDONLY as u32, 0);
        let h1 = open(f4).unwrap().0.unwrap();
        let h2 = open(inodes[2]).unwrap().0.unwrap();
        assert_eq!(errno(open(inodes[3])), libc::EMFILE);
        assert_eq!(errno(fs.opendir(&c, ROOT_ID, 0)), libc::EMFILE);
        fs.release(&c, f4, 0, h1, false, false, None).unwrap();
        // Releasing twice does not make room for more.
        assert!(fs.release(&c, f4, 0, h1, false, false, None).is_err());
        let h3 = open(inodes[3]).unwrap().0.unwrap();
        assert_eq!(errno(open(inodes[3])), libc::EMFILE);
        for (inode, h) in [(inodes[2], h2), (inodes[3], h3)] {
            fs.release(&c, inode, 0, h, false, false, None).unwrap();
        }
        // READDIRPLUS looks every entry up: it lists the known inodes and
        // stops at the first new one past the bound.
        let mut listed = Vec::new();
        let dh = fs
            .opendir(&c, ROOT_ID, libc::O_RDONLY as u32)
            .unwrap()
            .0
            .unwrap();
        fs.readdirplus(&c, ROOT_ID, dh, 4096, 0, &mut |d, _| {
            listed.push(String::from_utf8_lossy(d.name).into_owned());
            Ok(1)
        })
        .unwrap();
        // Three inodes are known (f2, f3, f4): one more new one fits (f0
        // and f1 were forgotten, f5 never looked up), the next stops it.
        let new = listed
            .iter()
            .filter(|n| ["f0", "f1", "f5"].contains(&n.as_str()))
            .count();
        assert_eq!(new, 1, "{listed:?}");
        fs.releasedir(&c, ROOT_ID, 0, dh).unwrap();
        assert_eq!(errno(lookup(&fs, ROOT_ID, "f5")), libc::ENFILE);
        // DESTROY drops everything.
        fs.destroy();
        fs.init(FsOptions::empty()).unwrap();
        lookup(&fs, ROOT_ID, "f5").unwrap();
    }

    #[test]
    fn open_flags_pass_an_allow_list() {
        let ok = |flags: i32, extra| open_flags(flags as u32, extra).unwrap() as i32;
        assert_eq!(
            ok(libc::O_RDWR | libc::O_APPEND, 0),
            libc::O_RDWR | libc::O_APPEND
        );
        // Dropped: O_NOFOLLOW, O_CLOEXEC, O_CREAT outside CREATE, FASYNC.
        let dropped = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_CREAT | libc::O_ASYNC;
        assert_eq!(ok(libc::O_RDONLY | dropped, 0), libc::O_RDONLY);
        assert_eq!(
            ok(
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                libc::O_CREAT | libc::O_EXCL
            ),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL
        );
        for bad in [
            libc::O_PATH,
            libc::O_TMPFILE | libc::O_RDWR,
            libc::O_ACCMODE,
        ] {
            assert_eq!(
                open_flags(bad as u32, 0).unwrap_err().raw_os_error(),
                Some(libc::EINVAL)
            );
        }
    }

    #[test]
    fn writable_share_creates_files_but_no_device_nodes() {
        let dir = TempDir::new().unwrap();
        let fs = mounted(dir.as_path(), false);
        let c = ctx();
        let args = CreateIn {
            flags: (libc::O_RDWR | libc::O_CREAT) as u32,
            mode: 0o640,
            umask: 0,
            fuse_flags: 0,
        };
        let (entry, handle, _, _) = fs.create(&c, ROOT_ID, c"new", args).unwrap();
        fs.release(&c, entry.inode, 0, handle.unwrap(), false, false, None)
            .unwrap();
        assert!(dir.as_path().join("new").is_file());
        fs.mkdir(&c, ROOT_ID, c"dir", 0o755, 0).unwrap();
        let chr = libc::S_IFCHR | 0o600;
        let rdev = libc::makedev(1, 3) as u32;
        assert_eq!(
            errno(fs.mknod(&c, ROOT_ID, c"null", chr, rdev, 0)),
            libc::EPERM
        );
        assert_eq!(errno(fs.mkdir(&c, ROOT_ID, c"..", 0o755, 0)), libc::EINVAL);
        assert_eq!(
            errno(fs.rename(&c, ROOT_ID, c"new", ROOT_ID, c"../x", 0)),
            libc::EINVAL
        );
        assert!(!dir.as_path().join("null").exists());
    }
}
