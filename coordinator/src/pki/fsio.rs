//! Durable writes of keys and certificates in the state dir.
//!
//! A key file is created with its final mode (0600) from its first byte: the temp file is opened
//! with that mode, so no other user can read it even for an instant. Both helpers write a temp
//! file in the target's directory, fsync it, put it in place and fsync the directory; a crash
//! leaves the old file or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{io_err, PkiError};

/// Writes `path` unless it exists, atomically: the link into place fails if anything is there.
pub(crate) fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = TempFile::write(path, content, mode)?;
    match fs::hard_link(&tmp.path, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PkiError::AlreadyExists {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err("link into place", path)(e)),
    }
    drop(tmp);
    sync_dir(path)
}

/// Writes `path`, replacing what is there, atomically.
pub(crate) fn write_replace(path: &Path, content: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut tmp = TempFile::write(path, content, mode)?;
    fs::rename(&tmp.path, path).map_err(io_err("rename into place", path))?;
    tmp.renamed = true;
    sync_dir(path)
}

/// Creates `dir` (mode 0700) when missing: the state dir holds CA keys.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

fn sync_dir(path: &Path) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory of", path))
}

/// A fsynced temp file next to its target, removed on drop unless renamed.
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl TempFile {
    fn write(target: &Path, content: &[u8], mode: u32) -> Result<Self, PkiError> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for attempt in 0..100u32 {
            let path = dir.join(format!(".{name}.haop-tmp.{}.{attempt}", std::process::id()));
            let mut file = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create temp file for", target)(e)),
            };
            let tmp = TempFile {
                path,
                renamed: false,
            };
            // The umask may have narrowed the mode given to open; set it exactly.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_err("set mode of", target))?;
            file.write_all(content)
                .map_err(io_err("write temp file for", target))?;
            file.sync_all().map_err(io_err("fsync", target))?;
            return Ok(tmp);
        }
        Err(io_err("create temp file for", target)(
            std::io::Error::other("too many leftover temp files"),
        ))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn write_new_refuses_an_existing_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.key");
        write_new(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        let err = write_new(&p, b"two", 0o600).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err:?}");
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_replace(&p, b"three", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
