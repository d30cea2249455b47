//! The disk image behind a virtio-blk device: a raw file or block device,
//! opened once, locked against other writers, accessed only with
//! positioned I/O so the fd's offset never matters.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::{ID_BYTES, SECTOR_SIZE};

/// Alignment of buffers, offsets and lengths that `direct` disks accept
/// without a bounce buffer: 4 KiB suits both 512-byte and 4 KiB-sector
/// host disks.
pub const DIRECT_ALIGN: u64 = 4096;

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is neither a regular file nor a block device")]
    NotADisk { path: PathBuf },
    #[error(
        "{path} is {size} bytes, not a whole number of 512-byte sectors \
         (pad it with `truncate -s %512`)"
    )]
    PartialSector { path: PathBuf, size: u64 },
    #[error("{path} is in use by another VM or process (locked)")]
    Locked { path: PathBuf },
    #[error("the file system of {path} does not support O_DIRECT (drop `direct`)")]
    DirectUnsupported { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl DiskOpenError {
    fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Open { source, .. } | Self::Io { source, .. } => source.kind(),
            Self::Locked { .. } => io::ErrorKind::ResourceBusy,
            _ => io::ErrorKind::InvalidInput,
        }
    }
}

impl From<DiskOpenError> for io::Error {
    fn from(e: DiskOpenError) -> Self {
        io::Error::new(e.kind(), e)
    }
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    read_only: bool,
    direct: bool,
    size: u64,
    id: [u8; ID_BYTES],
}

impl DiskFile {
    /// Opens `path` read-only (`O_RDONLY`, shared lock) or read-write
    /// (exclusive lock), with `O_DIRECT` when `direct`. The size must be a
    /// whole number of sectors: rounding down would hide the tail from the
    /// guest without telling anyone.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, DiskOpenError> {
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        let mut flags = libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        options.custom_flags(flags);
        let file = options
            .open(path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::EINVAL) if direct => {
                    DiskOpenError::DirectUnsupported { path: path.into() }
                }
                _ => DiskOpenError::Open {
                    path: path.into(),
                    source,
                },
            })?;
        let io_err = |source| DiskOpenError::Io {
            path: path.into(),
            source,
        };
        let meta = file.metadata().map_err(io_err)?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(DiskOpenError::NotADisk { path: path.into() });
        }
        lock(&file, read_only).map_err(|source| match source.raw_os_error() {
            Some(libc::EWOULDBLOCK) => DiskOpenError::Locked { path: path.into() },
            _ => io_err(source),
        })?;
        // Seeking to the end sizes block devices too (their metadata says 0).
        let size = (&file).seek(SeekFrom::End(0)).map_err(io_err)?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskOpenError::PartialSector {
                path: path.into(),
                size,
            });
        }
        Ok(Self {
            file,
            read_only,
            direct,
            size,
            id: disk_id(meta.dev(), meta.ino()),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The id string GET_ID returns, NUL-padded.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Reads exactly the bytes `iovecs` describe, starting at `offset`.
    /// The iovecs are consumed as data arrives (short reads continue).
    pub(crate) fn read_vectored_exact(
        &self,
        offset: u64,
        iovecs: &mut [libc::iovec],
    ) -> io::Result<()> {
        self.vectored_exact(offset, iovecs, |fd, iov, count, off| {
            // SAFETY: every iovec points into guest memory that the caller
            // borrowed for this call (see `RequestQueue`), mapped and
            // writable; the kernel writes only within their lengths.
            unsafe { libc::preadv(fd, iov, count, off) }
        })
    }

    /// Writes exactly the bytes `iovecs` describe, starting at `offset`.
    pub(crate) fn write_vectored_exact(
        &self,
        offset: u64,
        iovecs: &mut [libc::iovec],
    ) -> io::Result<()> {
        self.vectored_exact(offset, iovecs, |fd, iov, count, off| {
            // SAFETY: as above; the kernel only reads the buffers.
            unsafe { libc::pwritev(fd, iov, count, off) }
        })
    }

    fn vectored_exact(
        &self,
        mut offset: u64,
        mut iovecs: &mut [libc::iovec],
        op: impl Fn(i32, *const libc::iovec, i32, libc::off_t) -> isize,
    ) -> io::Result<()> {
        while !iovecs.is_empty() {
            let count = iovecs.len().min(libc::UIO_MAXIOV as usize) as i32;
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let done = op(self.file.as_raw_fd(), iovecs.as_ptr(), count, off);
            let done = match usize::try_from(done) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            offset = offset
                .checked_add(done as u64)
                .ok_or(io::ErrorKind::InvalidInput)?;
            iovecs = advance(iovecs, done);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` (bounce-buffer path).
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset` (bounce-buffer path).
    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes written data durable.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates a range; it reads back as zeros.
    pub(crate) fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).map_err(Into::into)
    }

    /// Zeroes a range, keeping it allocated where the file system can;
    /// else punches a hole, which reads back the same.
    pub(crate) fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == libc::EOPNOTSUPP => self.punch_hole(offset, len),
            Err(e) => Err(e.into()),
        }
    }
}

/// Drops the first `n` bytes from `iovecs`.
fn advance(iovecs: &mut [libc::iovec], mut n: usize) -> &mut [libc::iovec] {
    let mut skip = 0;
    for iov in iovecs.iter() {
        if n < iov.iov_len {
            break;
        }
        n -= iov.iov_len;
        skip += 1;
    }
    let rest = iovecs.get_mut(skip..).unwrap_or_default();
    if let Some(first) = rest.first_mut() {
        first.iov_base = first.iov_base.cast::<u8>().wrapping_add(n).cast();
        first.iov_len -= n;
    }
    rest
}

/// `flock`: shared for read-only disks, exclusive for writable ones, so two
/// VMs never write one image (nor read one that another writes).
fn lock(file: &File, read_only: bool) -> io::Result<()> {
    let mode = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on an fd we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A stable id from the image's device and inode: the same file gives the
/// same `/sys/block/vdX/serial` across boots.
fn disk_id(dev: u64, ino: u64) -> [u8; ID_BYTES] {
    let text = format!("skiff-{dev:x}-{ino:x}");
    let mut id = [0u8; ID_BYTES];
    for (dst, src) in id.iter_mut().zip(text.bytes()) {
        *dst = src;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(base: usize, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        }
    }

    #[test]
    fn advance_skips_whole_and_partial_buffers() {
        let mut v = [iov(0x1000, 10), iov(0x2000, 20)];
        let rest = advance(&mut v, 15);
        assert_eq!(rest.len(), 1);
        assert_eq!((rest[0].iov_base as usize, rest[0].iov_len), (0x2005, 15));
        let mut v = [iov(0x1000, 10)];
        assert!(advance(&mut v, 10).is_empty());
    }

    #[test]
    fn ids_fit_and_are_padded() {
        let id = disk_id(0x803, 0x1234);
        assert_eq!(&id[..15], b"skiff-803-1234\0");
        let long = disk_id(u64::MAX, u64::MAX);
        assert_eq!(long.len(), ID_BYTES);
        assert!(long.iter().all(|&b| b != 0));
    }
}
