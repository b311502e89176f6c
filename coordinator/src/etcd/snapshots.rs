//! Snapshots in the state dir: where they live and how many are kept.
//!
//! Every membership change is preceded by a snapshot (a rule of the quorum planner: see README "Recovery"), and `haop etcd
//! snapshot save` and `restore` read and write the same place,
//! `<state-dir>/snapshots/<cluster>/`, one file per snapshot named by time and origin so that
//! the names sort by age. How many are kept is the inventory's `etcd.retention` (count and age;
//! the newest is always kept), applied at the end of every operation that took one.

use std::path::{Path, PathBuf};

use std::time::Duration;

use super::api::{EtcdApiError, EtcdClient, SnapshotInfo};
use super::catchup::human_bytes;
use crate::inventory::{Inventory, Retention};

/// Errors of `haop etcd snapshot save`.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Etcd(#[from] EtcdApiError),
    #[error(
        "{} has {} free, and the snapshot needs about {} (the database of {endpoint}); \
         nothing was written: free space there or save elsewhere with --out",
        .dir.display(), human_bytes(*.available), human_bytes(*.needed)
    )]
    NoRoom {
        dir: PathBuf,
        available: u64,
        needed: u64,
        endpoint: String,
    },
    #[error("cannot use {}", .dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `haop etcd snapshot save`: a snapshot from the first member that answers, streamed to `out`
/// (default: a new file in the state dir), checked for room first; `progress` hears the bytes
/// received and the database's size. A snapshot saved in the state dir is followed by the
/// retention. Answers what was saved and what the retention removed.
pub async fn save(
    state_dir: &Path,
    inventory: &Inventory,
    out: Option<PathBuf>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<(SnapshotInfo, Vec<PathBuf>), SnapshotError> {
    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(state_dir, &endpoints, Duration::from_secs(5)).await?;
    let statuses = client.statuses(&endpoints).await;
    let (endpoint, db) = endpoints
        .iter()
        .zip(&statuses)
        .find_map(|(ep, s)| {
            s.as_ref()
                .ok()
                .map(|s| (ep.clone(), s.db_size.max(0) as u64))
        })
        .ok_or_else(|| match statuses.into_iter().find_map(Result::err) {
            Some(e) => SnapshotError::Etcd(e),
            None => SnapshotError::Etcd(EtcdApiError::NoEndpoints),
        })?;
    let in_state_dir = out.is_none();
    let path = match out {
        Some(p) => p,
        None => new_snapshot_path(state_dir, inventory.cluster.as_str(), "manual").map_err(
            |source| SnapshotError::Io {
                dir: snapshot_dir(state_dir, inventory.cluster.as_str()),
                source,
            },
        )?,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let available = available_bytes(&dir).map_err(|source| SnapshotError::Io {
        dir: dir.clone(),
        source,
    })?;
    let needed = db + db / 10 + 16 * 1024 * 1024;
    if available < needed {
        return Err(SnapshotError::NoRoom {
            dir,
            available,
            needed,
            endpoint,
        });
    }
    let info = client
        .snapshot_from_with(&endpoint, &path, &|bytes| progress(bytes, Some(db)))
        .await?;
    let removed = if in_state_dir {
        prune(
            state_dir,
            inventory.cluster.as_str(),
            &inventory.etcd.retention,
        )
    } else {
        Vec::new()
    };
    Ok((info, removed))
}

/// Where the state dir keeps a cluster's snapshots: `<state-dir>/snapshots/<cluster>/`.
pub fn snapshot_dir(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join("snapshots").join(cluster)
}

/// A new snapshot file in [`snapshot_dir`] (created when missing), named by time and `tag`.
pub fn new_snapshot_path(state_dir: &Path, cluster: &str, tag: &str) -> std::io::Result<PathBuf> {
    let dir = snapshot_dir(state_dir, cluster);
    std::fs::create_dir_all(&dir)?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default();
    Ok(dir.join(format!("{stamp}-{tag}.db")))
}

/// The snapshot files of the cluster, oldest first (their names sort by time).
pub fn list(state_dir: &Path, cluster: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(snapshot_dir(state_dir, cluster)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "db"))
        .collect();
    files.sort();
    files
}

/// Applies `retention` to the cluster's snapshots: keeps the newest `snapshots`, and of those
/// removes the ones older than `snapshot_max_age`, never the newest. Answers what it removed.
pub fn prune(state_dir: &Path, cluster: &str, retention: &Retention) -> Vec<PathBuf> {
    let files = list(state_dir, cluster);
    let now = std::time::SystemTime::now();
    let max_age = retention.snapshot_max_age.duration();
    let keep = retention.snapshots.max(1) as usize;
    let mut removed = Vec::new();
    for (rank, path) in files.iter().rev().enumerate() {
        let too_many = rank >= keep;
        let too_old = rank > 0
            && std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > max_age);
        if (too_many || too_old) && std::fs::remove_file(path).is_ok() {
            removed.push(path.clone());
        }
    }
    removed.reverse();
    removed
}

/// Bytes available in the filesystem holding `dir` (or its nearest existing parent).
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut p = dir;
    loop {
        match nix::sys::statvfs::statvfs(p) {
            Ok(s) => return Ok(s.blocks_available().saturating_mul(s.fragment_size())),
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
    fn retention_keeps_the_newest_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = snapshot_dir(dir.path(), "c");
        std::fs::create_dir_all(&snaps).unwrap();
        for i in 0..7 {
            std::fs::write(snaps.join(format!("2026120{i}T000000.000Z-etcd1.db")), b"x").unwrap();
        }
        std::fs::write(snaps.join("notes.txt"), b"kept").unwrap();
        let retention = Retention {
            snapshots: 3,
            ..Retention::default()
        };
        let removed = prune(dir.path(), "c", &retention);
        assert_eq!(removed.len(), 4);
        let left: Vec<String> = list(dir.path(), "c")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            [
                "20261204T000000.000Z-etcd1.db",
                "20261205T000000.000Z-etcd1.db",
                "20261206T000000.000Z-etcd1.db"
            ]
        );
        assert!(snaps.join("notes.txt").exists());
        // Everything older than a minute, but the newest is never removed.
        let old = Retention {
            snapshots: 10,
            snapshot_max_age: "1m".parse().unwrap(),
            ..Retention::default()
        };
        let two_minutes_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        for p in list(dir.path(), "c") {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(two_minutes_ago)
                .unwrap();
        }
        prune(dir.path(), "c", &old);
        assert_eq!(list(dir.path(), "c").len(), 1);
    }

    #[test]
    fn available_bytes_of_a_path_not_made_yet() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(&dir.path().join("snapshots/c")).unwrap() > 0);
    }
}
