//! Atomic, durable writes of the coordinator's own files: the state dir (CA keys and
//! certificates, tokens, secrets, join info), lab records and inventories, and inventory files
//! edited in place.
//!
//! One way for all of them (as omicron's ledger and Bottlerocket's migrator do it): a temp file
//! in the target's directory, created with its final mode from its first byte (so a 0600 key is
//! never readable by others, not even for an instant), written and fsynced, then put in place
//! (renamed over the target, or hard-linked when the target must not exist yet), then the
//! directory fsynced. A crash leaves the old file or the new one, never half of one, and the temp
//! file is removed on every error path.
//!
//! Not here: the agent's own writes on hosts (the agent crate has its own helper; it must not
//! depend on the coordinator), and `etcd::api`'s snapshot download, which streams gigabytes into
//! its temp file before the same fsync-rename-fsync.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Mode of the coordinator's secret files: CA keys, tokens, passwords, join info.
pub const PRIVATE_MODE: u32 = 0o600;

/// A write that did not happen; the target is as it was.
#[derive(Debug, thiserror::Error)]
pub enum FsioError {
    #[error("cannot {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists", .path.display())]
    Exists { path: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsioError + 'a {
    move |source| FsioError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `path` with `mode`, replacing what is there, atomically and durably.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), FsioError> {
    let mut tmp = TempFile::write(path, content, mode)?;
    fs::rename(&tmp.path, path).map_err(io_err("rename into place", path))?;
    tmp.renamed = true;
    sync_dir(path)
}

/// Writes a secret file (mode 0600), replacing what is there, atomically and durably.
pub fn write_private(path: &Path, content: &[u8]) -> Result<(), FsioError> {
    write_atomic(path, content, PRIVATE_MODE)
}

/// Writes `path` unless it exists, atomically: the link into place fails if anything is there
/// ([`FsioError::Exists`]), even a file another process created a moment ago.
pub fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<(), FsioError> {
    let tmp = TempFile::write(path, content, mode)?;
    match fs::hard_link(&tmp.path, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(FsioError::Exists {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err("link into place", path)(e)),
    }
    drop(tmp);
    sync_dir(path)
}

/// An exclusive `flock` on a lock file beside a store, held until dropped: read-modify-write of
/// a state-dir file (tokens, identities) by two haop processes, or two tasks of one, happens one
/// at a time. Hold it only across synchronous work: it blocks the thread that waits for it.
#[derive(Debug)]
pub struct FileLock {
    _lock: nix::fcntl::Flock<File>,
}

impl FileLock {
    /// Locks `path` (created 0600 when missing), waiting for the holder.
    pub fn exclusive(path: &Path) -> Result<FileLock, FsioError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_MODE)
            .open(path)
            .map_err(io_err("open the lock file", path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err("lock", path)(std::io::Error::from(errno)))?;
        Ok(FileLock { _lock: lock })
    }
}

/// Creates `dir` and its parents (mode 0700) when missing: directories that hold keys.
pub fn create_private_dir(dir: &Path) -> Result<(), FsioError> {
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

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(path: &Path) -> Result<(), FsioError> {
    File::open(parent_of(path))
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync the directory of", path))
}

/// A fsynced temp file next to its target, removed on drop unless renamed.
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl TempFile {
    fn write(target: &Path, content: &[u8], mode: u32) -> Result<Self, FsioError> {
        let dir = parent_of(target);
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
                Err(e) => return Err(io_err("create a temp file for", target)(e)),
            };
            let tmp = TempFile {
                path,
                renamed: false,
            };
            // The umask may have narrowed the mode given to open; set it exactly.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_err("set the mode of", target))?;
            file.write_all(content)
                .map_err(io_err("write a temp file for", target))?;
            file.sync_all().map_err(io_err("fsync", target))?;
            return Ok(tmp);
        }
        Err(io_err("create a temp file for", target)(
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

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn write_new_refuses_an_existing_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.key");
        write_new(&p, b"one", 0o600).unwrap();
        assert_eq!(mode(&p), 0o600);
        let err = write_new(&p, b"two", 0o600).unwrap_err();
        assert!(matches!(err, FsioError::Exists { .. }), "{err:?}");
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_atomic(&p, b"three", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert_eq!(mode(&p), 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_files_are_0600_whatever_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!((fs::read(&p).unwrap(), mode(&p)), (b"new".to_vec(), 0o600));
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should go: the rename fails, even for root.
        let p = dir.path().join("taken");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("inside"), "x").unwrap();
        let err = write_atomic(&p, b"data", 0o644).unwrap_err();
        assert!(matches!(err, FsioError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("taken"), "{err}");
        assert!(p.is_dir());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_dirs_are_0700() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        create_private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        create_private_dir(&d).unwrap();
    }
}
