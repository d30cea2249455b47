//! CopyFile: the runtime writes files into the guest in chunks (e.g. the
//! pod's /etc/hosts to bind into containers). Only below [`COPY_ROOT`], so
//! a runtime bug cannot overwrite the agent or the guest's system files.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use skiff_agent_protocol::agent::CopyFileRequest;

/// Where copied files may go.
pub const COPY_ROOT: &str = "/run/skiff";

/// Errors copying a file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("path {0:?} must be absolute, below {COPY_ROOT} and without ..")]
    BadPath(String),
    #[error("chunk at offset {offset} of {len} bytes does not fit a file of {size} bytes")]
    BadChunk { offset: u64, len: usize, size: u64 },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |err| FileError::Io {
        path: path.to_path_buf(),
        err,
    }
}

pub fn copy_file(req: &CopyFileRequest) -> Result<(), FileError> {
    let path = PathBuf::from(&req.path);
    if !path.starts_with(COPY_ROOT)
        || path == Path::new(COPY_ROOT)
        || path.components().any(|c| matches!(c, Component::ParentDir))
    {
        return Err(FileError::BadPath(req.path.clone()));
    }
    let end = req.offset.checked_add(req.data.len() as u64);
    if end.is_none_or(|e| e > req.file_size) {
        return Err(FileError::BadChunk {
            offset: req.offset,
            len: req.data.len(),
            size: req.file_size,
        });
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        if req.dir_mode != 0 {
            let _ = std::fs::set_permissions(
                parent,
                std::fs::Permissions::from_mode(req.dir_mode & 0o7777),
            );
        }
    }
    let mode = if req.file_mode == 0 {
        0o644
    } else {
        req.file_mode & 0o7777
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(req.offset == 0)
        .mode(mode)
        .open(&path)
        .map_err(io(&path))?;
    f.seek(SeekFrom::Start(req.offset)).map_err(io(&path))?;
    f.write_all(&req.data).map_err(io(&path))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(&path))?;
    std::os::unix::fs::fchown(&f, Some(req.uid), Some(req.gid)).map_err(io(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_copy_root_are_refused() {
        for bad in [
            "/etc/passwd",
            "/run/skiff",
            "/run/skiff/../x",
            "run/skiff/a",
        ] {
            let mut r = CopyFileRequest::new();
            r.path = bad.into();
            assert!(matches!(copy_file(&r), Err(FileError::BadPath(_))), "{bad}");
        }
        let mut r = CopyFileRequest::new();
        r.path = "/run/skiff/x".into();
        r.file_size = 1;
        r.data = vec![1, 2];
        assert!(matches!(copy_file(&r), Err(FileError::BadChunk { .. })));
    }
}
