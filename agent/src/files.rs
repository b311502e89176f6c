//! File operations on the host: atomic, durable, idempotent.
//!
//! Every write goes through [`write_atomic`]: a temp file in the same directory, fsync, rename
//! over the target, fsync of the directory. A reader never sees half a file and a crash leaves
//! either the old or the new content. [`ensure_file`] compares first and rewrites nothing that
//! already matches (content, mode and owner), so a converged host reports `changed=false`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Errors of file operations; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a directory, not a file")]
    IsDirectory { path: String },
    #[error("parent directory of {path} does not exist (ask with create_parents)")]
    NoParent { path: String },
    #[error("{path} is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("unknown {kind} {name:?}")]
    UnknownOwner { kind: &'static str, name: String },
    #[error("upload to {path}: sha256 is {actual}, expected {expected}; nothing was written")]
    ChecksumMismatch {
        path: String,
        expected: String,
        actual: String,
    },
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Owner and permissions wanted for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Ownership {
    /// Resolves user and group names (empty means root) through the host's passwd and group.
    pub fn resolve(mode: u32, owner: &str, group: &str) -> Result<Self, FileError> {
        let uid = if owner.is_empty() || owner == "root" {
            0
        } else {
            nix::unistd::User::from_name(owner)
                .ok()
                .flatten()
                .ok_or_else(|| FileError::UnknownOwner {
                    kind: "user",
                    name: owner.to_string(),
                })?
                .uid
                .as_raw()
        };
        let gid = if group.is_empty() || group == "root" {
            0
        } else {
            nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .ok_or_else(|| FileError::UnknownOwner {
                    kind: "group",
                    name: group.to_string(),
                })?
                .gid
                .as_raw()
        };
        Ok(Ownership {
            mode: if mode == 0 { 0o644 } else { mode & 0o7777 },
            uid,
            gid,
        })
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// sha256 of a file's content, streaming.
pub fn sha256_file(path: &Path) -> Result<String, FileError> {
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Creates missing parents of `path` (mode 0755) when asked, or fails naming the path.
pub fn prepare_parent(path: &Path, create: bool) -> Result<(), FileError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    if parent.is_dir() {
        return Ok(());
    }
    if !create {
        return Err(FileError::NoParent {
            path: path.display().to_string(),
        });
    }
    fs::create_dir_all(parent).map_err(io("create directory for", path))
}

/// The result of an ensure on a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub changed: bool,
    pub sha256: String,
    pub size: u64,
}

/// Makes `path` hold `content` with `own`, writing only when something differs.
pub fn ensure_file(path: &Path, content: &[u8], own: Ownership) -> Result<Written, FileError> {
    let sha = sha256_hex(content);
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(FileError::IsDirectory {
                path: path.display().to_string(),
            })
        }
        Ok(meta) if meta.is_file() && meta.len() == content.len() as u64 => {
            let current = fs::read(path).map_err(io("read", path))?;
            if current == content {
                let changed = fix_ownership(path, &meta, own)?;
                return Ok(Written {
                    changed,
                    sha256: sha,
                    size: content.len() as u64,
                });
            }
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", path)(e)),
    }
    write_atomic(path, content, own)?;
    Ok(Written {
        changed: true,
        sha256: sha,
        size: content.len() as u64,
    })
}

fn fix_ownership(path: &Path, meta: &fs::Metadata, own: Ownership) -> Result<bool, FileError> {
    let mut changed = false;
    if meta.mode() & 0o7777 != own.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(own.mode))
            .map_err(io("set mode of", path))?;
        changed = true;
    }
    if meta.uid() != own.uid || meta.gid() != own.gid {
        std::os::unix::fs::chown(path, Some(own.uid), Some(own.gid))
            .map_err(io("set owner of", path))?;
        changed = true;
    }
    Ok(changed)
}

/// A temp file next to `target`, removed on drop unless persisted.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    file: Option<File>,
    keep: bool,
}

impl TempFile {
    fn create(target: &Path, mode: u32) -> Result<Self, FileError> {
        let dir = target.parent().unwrap_or(Path::new("/"));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for attempt in 0..100u32 {
            let tmp = dir.join(format!(".{name}.haop-tmp.{}.{attempt}", std::process::id()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path: tmp,
                        file: Some(file),
                        keep: false,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create temp file for", target)(e)),
            }
        }
        Err(FileError::Io {
            op: "create temp file for",
            path: target.display().to_string(),
            source: std::io::Error::other("too many leftover temp files"),
        })
    }

    fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("temp file is open until persisted")
    }

    /// fsync, set ownership, rename over `target`, fsync the directory.
    fn persist(mut self, target: &Path, own: Ownership) -> Result<(), FileError> {
        let file = self.file.take().expect("temp file is open");
        file.set_permissions(fs::Permissions::from_mode(own.mode))
            .map_err(io("set mode of", target))?;
        std::os::unix::fs::fchown(&file, Some(own.uid), Some(own.gid))
            .map_err(io("set owner of", target))?;
        file.sync_all().map_err(io("fsync", target))?;
        drop(file);
        fs::rename(&self.path, target).map_err(io("rename into place", target))?;
        self.keep = true;
        sync_dir(target)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// fsyncs the directory holding `path`, so a rename or removal in it is durable.
pub fn sync_dir(path: &Path) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory of", path))
}

/// Writes `content` to `path` atomically and durably with `own`.
pub fn write_atomic(path: &Path, content: &[u8], own: Ownership) -> Result<(), FileError> {
    let mut tmp = TempFile::create(path, own.mode)?;
    tmp.file()
        .write_all(content)
        .map_err(io("write temp file for", path))?;
    tmp.persist(path, own)
}

/// Receives a large file piece by piece and puts it in place only when its sha256 matches.
#[derive(Debug)]
pub struct Upload {
    target: PathBuf,
    tmp: Option<TempFile>,
    hasher: Sha256,
    size: u64,
    own: Ownership,
    expected: String,
}

impl Upload {
    pub fn begin(target: &Path, own: Ownership, expected_sha256: &str) -> Result<Self, FileError> {
        let tmp = TempFile::create(target, 0o600)?;
        Ok(Upload {
            target: target.to_path_buf(),
            tmp: Some(tmp),
            hasher: Sha256::new(),
            size: 0,
            own,
            expected: expected_sha256.to_ascii_lowercase(),
        })
    }

    pub fn write(&mut self, data: &[u8], limit: u64) -> Result<(), FileError> {
        self.size += data.len() as u64;
        if self.size > limit {
            return Err(FileError::TooLarge {
                path: self.target.display().to_string(),
                size: self.size,
                limit,
            });
        }
        self.hasher.update(data);
        let tmp = self.tmp.as_mut().expect("upload in progress");
        tmp.file()
            .write_all(data)
            .map_err(io("write upload for", &self.target))
    }

    /// Checks the digest; only then compares with what is in place and renames.
    pub fn finish(mut self) -> Result<Written, FileError> {
        let actual = hex::encode(self.hasher.clone().finalize());
        let tmp = self.tmp.take().expect("upload in progress");
        if actual != self.expected {
            return Err(FileError::ChecksumMismatch {
                path: self.target.display().to_string(),
                expected: self.expected.clone(),
                actual,
            });
        }
        let same = match fs::symlink_metadata(&self.target) {
            Ok(m) if m.is_file() && m.len() == self.size => {
                sha256_file(&self.target)? == actual
                    && m.mode() & 0o7777 == self.own.mode
                    && m.uid() == self.own.uid
                    && m.gid() == self.own.gid
            }
            _ => false,
        };
        if same {
            return Ok(Written {
                changed: false,
                sha256: actual,
                size: self.size,
            });
        }
        tmp.persist(&self.target, self.own)?;
        Ok(Written {
            changed: true,
            sha256: actual,
            size: self.size,
        })
    }
}

/// Opens `path` for reading when it is a regular file (not a directory, not a device).
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    let file = File::open(path).map_err(io("open", path))?;
    let meta = file.metadata().map_err(io("inspect", path))?;
    if meta.is_dir() {
        return Err(FileError::IsDirectory {
            path: path.display().to_string(),
        });
    }
    if !meta.is_file() {
        return Err(FileError::Io {
            op: "stream",
            path: path.display().to_string(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    Ok(file)
}

/// Fills `buf` from `r` unless it ends first; answers how much was read.
pub fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// DownloadFile's sender, on a blocking thread: `head` (already read from `file`), then the
/// rest of `file` in 1 MiB messages, then a last message with the sha256 and size of it all.
/// A read error ends the stream with that error; a caller that hung up ends it quietly.
pub fn stream_back(
    mut file: File,
    head: &[u8],
    path: &Path,
    tx: &tokio::sync::mpsc::Sender<Result<haop_proto::v1::DownloadChunk, tonic::Status>>,
) {
    use haop_proto::v1::DownloadChunk;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut next = head.to_vec();
    loop {
        if !next.is_empty() {
            hasher.update(&next);
            size += next.len() as u64;
            let chunk = DownloadChunk {
                data: std::mem::take(&mut next),
                ..Default::default()
            };
            if tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
        }
        let mut buf = vec![0u8; 1024 * 1024];
        match read_full(&mut file, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                next = buf;
            }
            Err(e) => {
                let err = crate::error::AgentError::from(io("read", path)(e));
                let _ = tx.blocking_send(Err(err.into()));
                return;
            }
        }
    }
    let _ = tx.blocking_send(Ok(DownloadChunk {
        data: Vec::new(),
        sha256: hex::encode(hasher.finalize()),
        size,
        last: true,
    }));
}

/// Reads a whole file of at most `limit` bytes; larger files are refused, never cut.
pub fn read_capped(path: &Path, limit: u64) -> Result<(Vec<u8>, u32), FileError> {
    let meta = fs::metadata(path).map_err(io("read", path))?;
    if meta.is_dir() {
        return Err(FileError::IsDirectory {
            path: path.display().to_string(),
        });
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge {
            path: path.display().to_string(),
            size: meta.len(),
            limit,
        });
    }
    let data = fs::read(path).map_err(io("read", path))?;
    Ok((data, meta.mode() & 0o7777))
}

/// Removes a file; a missing one is not an error and answers `false`.
pub fn remove_file(path: &Path) -> Result<bool, FileError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(FileError::IsDirectory {
            path: path.display().to_string(),
        }),
        Ok(_) => {
            fs::remove_file(path).map_err(io("remove", path))?;
            sync_dir(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(mode: u32) -> Ownership {
        Ownership {
            mode,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    #[test]
    fn ensure_writes_once_then_reports_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd.env");
        let w = ensure_file(&p, b"A=1\n", own(0o600)).unwrap();
        assert!(w.changed);
        assert_eq!(w.sha256, sha256_hex(b"A=1\n"));
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        assert!(!ensure_file(&p, b"A=1\n", own(0o600)).unwrap().changed);
        // A mode change alone is a change, and is applied without rewriting.
        assert!(ensure_file(&p, b"A=1\n", own(0o640)).unwrap().changed);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert!(ensure_file(&p, b"A=2\n", own(0o640)).unwrap().changed);
        assert_eq!(fs::read(&p).unwrap(), b"A=2\n");
        // No temp files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn upload_with_wrong_digest_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etcd");
        let mut up = Upload::begin(&p, own(0o755), &sha256_hex(b"right")).unwrap();
        up.write(b"wrong", 1024).unwrap();
        assert!(matches!(
            up.finish(),
            Err(FileError::ChecksumMismatch { .. })
        ));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut up = Upload::begin(&p, own(0o755), &sha256_hex(b"right")).unwrap();
        up.write(b"ri", 1024).unwrap();
        up.write(b"ght", 1024).unwrap();
        assert!(up.finish().unwrap().changed);
        assert_eq!(fs::read(&p).unwrap(), b"right");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn upload_over_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let mut up = Upload::begin(&p, own(0o644), "00").unwrap();
        assert!(matches!(
            up.write(&[0u8; 20], 10),
            Err(FileError::TooLarge { .. })
        ));
        drop(up);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn read_is_capped_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"0123456789").unwrap();
        assert!(matches!(
            read_capped(&p, 5),
            Err(FileError::TooLarge { size: 10, .. })
        ));
        assert_eq!(read_capped(&p, 10).unwrap().0, b"0123456789");
    }

    #[test]
    fn remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"x").unwrap();
        assert!(remove_file(&p).unwrap());
        assert!(!remove_file(&p).unwrap());
        assert!(remove_file(dir.path()).is_err());
    }
}
