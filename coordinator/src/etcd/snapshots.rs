//! Snapshots in the state dir: where they live and how many are kept.
//!
//! Every membership change is preceded by a snapshot (DESIGN.md's rule), and `haop etcd
//! snapshot save` and `restore` read and write the same place,
//! `<state-dir>/snapshots/<cluster>/`, one file per snapshot named by time and origin so that
//! the names sort by age.

use std::path::{Path, PathBuf};

/// How many snapshots of a cluster the state dir keeps.
pub const SNAPSHOTS_KEPT: usize = 10;

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

/// Keeps the newest [`SNAPSHOTS_KEPT`] snapshots of the cluster.
pub fn prune(state_dir: &Path, cluster: &str) {
    let Ok(entries) = std::fs::read_dir(snapshot_dir(state_dir, cluster)) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "db"))
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(SNAPSHOTS_KEPT);
    for old in &files[..excess] {
        let _ = std::fs::remove_file(old);
    }
}
