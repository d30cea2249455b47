//! Guest memory in one file: written at a snapshot, mapped copy-on-write
//! at a restore.
//!
//! The file holds the RAM regions one after the other. Pages that are all
//! zero are not written, so the file is sparse and a guest that used 40 MiB
//! of 256 costs 40 MiB of disk (or of tmpfs). A restored VM maps the file
//! `MAP_PRIVATE`: pages fault in when the guest touches them, every VM
//! restored from the same file shares its clean pages through the page
//! cache, and a guest's writes go to its own private copies, never to the
//! file (which is opened read-only).

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use super::SnapshotError;

/// Bytes checked at a time for being all zero.
const PAGE: usize = 4096;

/// Where each RAM region lies in guest memory and in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    /// `(guest address, length)`, at file offsets in this order.
    pub regions: Vec<(u64, u64)>,
}

impl MemoryLayout {
    pub fn file_len(&self) -> u64 {
        self.regions.iter().map(|&(_, len)| len).sum()
    }
}

/// Writes every RAM region of `mem` to a new file at `path` (0600).
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<MemoryLayout, SnapshotError> {
    let io = |source| SnapshotError::Io {
        what: "write the memory file",
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| SnapshotError::Memory(e.to_string()))?;
        // SAFETY: the region's mapping is `len` bytes at `host` and lives
        // as long as `mem`; the vCPUs are paused and the devices stopped,
        // so nothing writes it while it is read.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len as usize) };
        write_nonzero(&file, bytes, offset).map_err(io)?;
        regions.push((region.start_addr().raw_value(), len));
        offset += len;
    }
    file.set_len(offset).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(MemoryLayout { regions })
}

/// Writes the runs of pages of `bytes` that are not all zero, at `base`.
fn write_nonzero(file: &File, bytes: &[u8], base: u64) -> std::io::Result<()> {
    let mut run_start = None;
    let pages = bytes.chunks(PAGE).enumerate();
    for (i, page) in pages {
        let zero = page.iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(i * PAGE),
            (true, Some(start)) => {
                file.write_all_at(&bytes[start..i * PAGE], base + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        file.write_all_at(&bytes[start..], base + start as u64)?;
    }
    Ok(())
}

/// Maps the memory file at `path` copy-on-write as `layout` says, after
/// checking that the file is whole.
pub fn map(path: &Path, layout: &MemoryLayout) -> Result<GuestMemoryMmap, SnapshotError> {
    let io = |what| {
        move |source| SnapshotError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    let file = File::open(path).map_err(io("open the memory file"))?;
    let len = file.metadata().map_err(io("read the memory file"))?.len();
    if len != layout.file_len() {
        return Err(SnapshotError::MemoryFileSize {
            path: path.to_owned(),
            len,
            expected: layout.file_len(),
        });
    }
    let file = Arc::new(file);
    let mut regions = Vec::with_capacity(layout.regions.len());
    let mut offset = 0u64;
    for &(start, len) in &layout.regions {
        let size = usize::try_from(len).map_err(|_| SnapshotError::Memory("region size".into()))?;
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Memory(format!("mapping {size} bytes: {e}")))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| SnapshotError::Memory(format!("region at {start:#x} wraps")))?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| SnapshotError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("skiff-mem-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn memory_round_trips_sparse_and_copy_on_write() {
        let d = dir("round-trip");
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 30), 1 << 20),
        ])
        .unwrap();
        mem.write_slice(b"low", GuestAddress(0x1234)).unwrap();
        mem.write_slice(b"high", GuestAddress((1 << 30) + 0x8_0000))
            .unwrap();
        let path = d.join("memory");
        let layout = save(&mem, &path).unwrap();
        assert_eq!(layout.regions, [(0, 1 << 20), (1 << 30, 1 << 20)]);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 2 << 20);
        assert!(meta.blocks() * 512 <= 64 << 10, "zero pages were written");
        assert_eq!(meta.mode() & 0o777, 0o600);

        let restored = map(&path, &layout).unwrap();
        let mut buf = [0u8; 4];
        restored
            .read_slice(&mut buf[..3], GuestAddress(0x1234))
            .unwrap();
        assert_eq!(&buf[..3], b"low");
        restored
            .read_slice(&mut buf, GuestAddress((1 << 30) + 0x8_0000))
            .unwrap();
        assert_eq!(&buf, b"high");
        // A guest's writes stay in its own pages.
        restored.write_slice(b"mine", GuestAddress(0x1234)).unwrap();
        let again = map(&path, &layout).unwrap();
        again
            .read_slice(&mut buf[..3], GuestAddress(0x1234))
            .unwrap();
        assert_eq!(&buf[..3], b"low");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_truncated_memory_file_is_refused() {
        let d = dir("truncated");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let path = d.join("memory");
        let layout = save(&mem, &path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let err = map(&path, &layout).unwrap_err().to_string();
        assert!(
            err.contains("is 4096 bytes, the snapshot needs 1048576"),
            "{err}"
        );
        assert!(
            save(&mem, &path).is_err(),
            "an existing file is not overwritten"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
