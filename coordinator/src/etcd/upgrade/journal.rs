//! `<state-dir>/upgrades/<cluster>.json`: what an upgrade in progress started from.
//!
//! Why: the members say which version they run (so a rerun after a kill knows which are done
//! without the journal), but not what they ran before, nor which binary that was, nor whether
//! the snapshot of this upgrade was taken. The journal keeps those three, so that a rerun takes
//! no second snapshot and `--rollback` knows where back is. It is written before the first
//! member changes and marked finished after the last.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::inventory::{EtcdBinary, Sha256Hex};

/// A binary as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalBinary {
    Path(PathBuf),
    Upload { file: PathBuf, sha256: String },
}

impl From<&EtcdBinary> for JournalBinary {
    fn from(b: &EtcdBinary) -> Self {
        match b {
            EtcdBinary::Path(p) => JournalBinary::Path(p.clone()),
            EtcdBinary::Upload { file, sha256 } => JournalBinary::Upload {
                file: file.clone(),
                sha256: sha256.as_str().to_string(),
            },
        }
    }
}

impl JournalBinary {
    pub fn to_inventory(&self) -> Option<EtcdBinary> {
        Some(match self {
            JournalBinary::Path(p) => EtcdBinary::Path(p.clone()),
            JournalBinary::Upload { file, sha256 } => EtcdBinary::Upload {
                file: file.clone(),
                sha256: Sha256Hex::try_from(sha256.as_str()).ok()?,
            },
        })
    }
}

/// One upgrade of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeJournal {
    pub target: String,
    pub from: String,
    /// The binary the members ran before, as the inventory said (for `--rollback`).
    pub from_binary: JournalBinary,
    /// The path their unit ran it from (an uploaded binary's path depends on the version).
    pub from_path: String,
    /// The inventory's `etcd.version` before, if it had one.
    #[serde(default)]
    pub from_inventory_version: Option<String>,
    pub to_binary: JournalBinary,
    /// The snapshot taken before the first member changed.
    #[serde(default)]
    pub snapshot: Option<PathBuf>,
    pub started_unix: i64,
    #[serde(default)]
    pub finished_unix: Option<i64>,
}

fn path(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join("upgrades").join(format!("{cluster}.json"))
}

/// The cluster's last upgrade, if any.
pub fn load(state_dir: &Path, cluster: &str) -> Option<UpgradeJournal> {
    let text = std::fs::read(path(state_dir, cluster)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes the journal (atomically).
pub fn save(
    state_dir: &Path,
    cluster: &str,
    j: &UpgradeJournal,
) -> Result<(), crate::fsio::FsioError> {
    let p = path(state_dir, cluster);
    if let Some(dir) = p.parent() {
        crate::fsio::create_private_dir(dir)?;
    }
    let data = serde_json::to_vec_pretty(j).expect("the journal serializes");
    crate::fsio::write_atomic(&p, &data, 0o600)
}
