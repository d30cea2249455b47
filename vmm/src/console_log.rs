//! The guest console written to a file, bounded.
//!
//! Everything the guest prints reaches the host's disk (for the shim, the
//! sandbox state directory on `/run`, which is host RAM). A guest that
//! prints forever must not fill it: [`ConsoleLog`] keeps at most
//! [`CONSOLE_LOG_LIMIT`] bytes in the file and, when it is full, moves it
//! to `<file>.1` (replacing the previous one) and starts the file afresh,
//! so the newest output, where a panic or the reason of a failed boot is,
//! is always kept, and at most twice the limit is ever on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Bytes kept in the console file before it is rotated.
pub const CONSOLE_LOG_LIMIT: u64 = 1 << 20;

/// An append-only console file that rotates at a size limit.
pub struct ConsoleLog {
    path: PathBuf,
    file: File,
    written: u64,
    limit: u64,
}

impl ConsoleLog {
    /// Opens (or creates) `path` for appending, with the default limit.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::with_limit(path, CONSOLE_LOG_LIMIT)
    }

    fn with_limit(path: &Path, limit: u64) -> io::Result<Self> {
        let file = Self::append(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written,
            limit: limit.max(1),
        })
    }

    fn append(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// The file before the current one.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
        self.file = Self::append(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written >= self.limit {
            self.rotate()?;
        }
        let room = usize::try_from(self.limit - self.written).unwrap_or(usize::MAX);
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn output_past_the_limit_rotates_and_never_exceeds_twice_it() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("console.log");
        let mut log = ConsoleLog::with_limit(&path, 100).unwrap();
        for i in 0..1000u32 {
            log.write_all(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let previous = std::fs::read_to_string(ConsoleLog::rotated_path(&path)).unwrap();
        assert!(current.len() <= 100 && previous.len() == 100);
        // The newest output is kept, in order across the two files.
        let both = previous + &current;
        assert!(both.ends_with("line 0999\n"), "{both}");
        assert_eq!(std::fs::read_dir(dir.as_path()).unwrap().count(), 2);
    }

    #[test]
    fn an_existing_file_counts_toward_the_limit() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("console.log");
        std::fs::write(&path, [b'x'; 90]).unwrap();
        let mut log = ConsoleLog::with_limit(&path, 100).unwrap();
        log.write_all(&[b'y'; 20]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10);
        assert_eq!(
            std::fs::metadata(ConsoleLog::rotated_path(&path))
                .unwrap()
                .len(),
            100
        );
    }
}
