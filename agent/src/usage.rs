//! Disk usage: how much a directory holds and how much room its filesystem has left.
//!
//! The coordinator follows a learner's catch-up by the bytes arriving in its data dir (a 2 GiB
//! snapshot takes minutes, and the member answers nothing until it is done), checks a host has
//! room for the database before adding a member there, and accounts for moved-aside data dirs.
//! Only sizes and counts leave the host, never content, so these answers suit a reader too.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes of the regular files under `dir` (a file: its size). Symlinks are not followed and
/// other filesystems are not entered; entries that vanish while walking (a learner renaming its
/// snapshot into place) are skipped.
pub fn tree_bytes(dir: &Path) -> std::io::Result<u64> {
    let root = std::fs::symlink_metadata(dir)?;
    if !root.is_dir() {
        return Ok(if root.is_file() { root.len() } else { 0 });
    }
    let dev = root.dev();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_file() {
                total += meta.len();
            } else if meta.is_dir() && meta.dev() == dev {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// Available and total bytes of the filesystem holding `path`, or its nearest existing parent.
pub fn filesystem_space(path: &Path) -> std::io::Result<(u64, u64)> {
    let mut p = path;
    loop {
        match nix::sys::statvfs::statvfs(p) {
            Ok(s) => {
                let frag = s.fragment_size();
                return Ok((
                    s.blocks_available().saturating_mul(frag),
                    s.blocks().saturating_mul(frag),
                ));
            }
            Err(nix::errno::Errno::ENOENT) => match p.parent() {
                Some(parent) => p = parent,
                None => return Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            },
            Err(e) => return Err(std::io::Error::from(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_files_below_and_finds_room_for_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("member/snap")).unwrap();
        std::fs::write(dir.path().join("member/snap/db"), vec![0u8; 5000]).unwrap();
        std::fs::write(dir.path().join("top"), vec![0u8; 123]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("link")).unwrap();
        assert_eq!(tree_bytes(dir.path()).unwrap(), 5123);
        assert_eq!(tree_bytes(&dir.path().join("top")).unwrap(), 123);
        let (avail, total) = filesystem_space(&dir.path().join("not/yet/there")).unwrap();
        assert!(total > 0 && avail <= total);
    }
}
