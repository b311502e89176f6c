//! What haop knows about each snapshot: a JSON sidecar beside the file.
//!
//! Why a sidecar: a snapshot file says nothing about itself that can be trusted without
//! restoring it. What it must reproduce is recorded when it is taken, from the member it came
//! from (revision, key count and `hashkv` at that one revision: [`crate::etcd::api::Keyspace`]);
//! verification ([`super::verify`]) restores it and compares; copies ([`super::copies`]) add
//! where they went. `list`, `prune`, `restore` and `status` read only sidecars, never the
//! gigabytes beside them.
//!
//! Lifecycle: written with the snapshot (`<name>.snap` and `<name>.json`, the snapshot first, so
//! a sidecar never describes a file that is not there), rewritten atomically when a
//! verification or a copy is added, removed with the snapshot. A snapshot without a sidecar (one
//! written before haop kept them, `*.db`) is listed as unverified and never chosen by restore.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::etcd::api::Keyspace;

/// The sidecar format's version.
pub const META_FORMAT: u32 = 1;

/// One snapshot, as recorded when it was taken and since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub cluster: String,
    /// When it was taken, RFC 3339 (UTC), and as Unix seconds.
    pub taken_at: String,
    pub taken_unix: i64,
    /// The member it came from (the inventory's host name) and its client URL.
    pub member: String,
    pub endpoint: String,
    /// The member's etcd version when it was taken (verification restores with a matching one).
    #[serde(default)]
    pub etcd_version: Option<String>,
    /// The member's keyspace just before the snapshot, all at one revision: the snapshot holds
    /// at least this revision, and restored it must give the same count and hash there.
    pub revision: i64,
    pub key_count: i64,
    pub hash_kv: u32,
    pub compact_revision: i64,
    /// etcd's snapshot: bytes and SHA-256 (hex) of the plaintext that restore is given.
    pub size: u64,
    pub sha256: String,
    /// Whether the file is haop's encrypted format, and under which key (its id).
    pub encrypted: bool,
    #[serde(default)]
    pub key_id: Option<String>,
    /// The file as it is on disk (ciphertext when encrypted): what copies are checked against.
    pub file_size: u64,
    pub file_sha256: String,
    /// Copies on hosts (see [`super::copies`]).
    #[serde(default)]
    pub copies: Vec<CopyRecord>,
    /// The latest verification, when there was one.
    #[serde(default)]
    pub verification: Option<Verification>,
}

/// A copy of a snapshot on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    pub host: String,
    /// The path on the host.
    pub path: String,
    /// When it was written, RFC 3339.
    pub at: String,
}

/// The outcome of one verification by restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// When it ended, RFC 3339 and Unix seconds.
    pub at: String,
    pub at_unix: i64,
    pub ok: bool,
    /// What was compared, or why it failed.
    pub detail: String,
    /// What the restored copy answered, when it got that far.
    #[serde(default)]
    pub restored: Option<Keyspace>,
    /// The etcd that served it (version as it reported itself).
    #[serde(default)]
    pub etcd_version: Option<String>,
    pub seconds: f64,
}

impl Meta {
    /// The keyspace recorded at save time.
    pub fn keyspace(&self) -> Keyspace {
        Keyspace {
            revision: self.revision,
            key_count: self.key_count,
            hash_kv: self.hash_kv,
            compact_revision: self.compact_revision,
        }
    }

    /// Verified, and the latest verification passed.
    pub fn is_verified(&self) -> bool {
        self.verification.as_ref().is_some_and(|v| v.ok)
    }
}

/// Errors reading or writing a sidecar; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a snapshot record", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: crate::fsio::FsioError,
    },
}

/// The sidecar of the snapshot at `snapshot`: `NAME.json` for `NAME.snap`, else the file's
/// name with `.json` added.
pub fn meta_path(snapshot: &Path) -> PathBuf {
    if snapshot.extension().is_some_and(|x| x == "snap") {
        snapshot.with_extension("json")
    } else {
        let mut name = snapshot.as_os_str().to_os_string();
        name.push(".json");
        PathBuf::from(name)
    }
}

/// The sidecar of `snapshot`; `None` when it has none.
pub fn read(snapshot: &Path) -> Result<Option<Meta>, MetaError> {
    let path = meta_path(snapshot);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(MetaError::Read { path, source }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| MetaError::Parse { path, source })
}

/// Writes the sidecar of `snapshot` atomically (0600, as the snapshot beside it).
pub fn write(snapshot: &Path, meta: &Meta) -> Result<(), MetaError> {
    let path = meta_path(snapshot);
    let text = serde_json::to_vec_pretty(meta).expect("a Meta serializes");
    crate::fsio::write_private(&path, &text).map_err(|source| MetaError::Write { path, source })
}

/// Reads, changes and rewrites the sidecar of `snapshot`.
pub fn update(snapshot: &Path, change: impl FnOnce(&mut Meta)) -> Result<Option<Meta>, MetaError> {
    let Some(mut meta) = read(snapshot)? else {
        return Ok(None);
    };
    change(&mut meta);
    write(snapshot, &meta)?;
    Ok(Some(meta))
}

/// Now, RFC 3339 (UTC, seconds) and Unix seconds.
pub fn now() -> (String, i64) {
    let t = time::OffsetDateTime::now_utc();
    (rfc3339(t.unix_timestamp()), t.unix_timestamp())
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) fn sample(cluster: &str, taken_unix: i64) -> Meta {
    Meta {
        format: META_FORMAT,
        cluster: cluster.into(),
        taken_at: rfc3339(taken_unix),
        taken_unix,
        member: "etcd1".into(),
        endpoint: "https://10.0.0.11:2379".into(),
        etcd_version: Some("3.4.23".into()),
        revision: 42,
        key_count: 7,
        hash_kv: 0xdead_beef,
        compact_revision: 0,
        size: 20480,
        sha256: "ab".repeat(32),
        encrypted: true,
        key_id: Some("00".repeat(8)),
        file_size: 20560,
        file_sha256: "cd".repeat(32),
        copies: Vec::new(),
        verification: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_sit_beside_their_snapshot() {
        assert_eq!(
            meta_path(Path::new("/s/c/20260101T000000.000Z-manual.snap")),
            Path::new("/s/c/20260101T000000.000Z-manual.json")
        );
        assert_eq!(
            meta_path(Path::new("/tmp/backup.db")),
            Path::new("/tmp/backup.db.json")
        );
    }

    #[test]
    fn a_sidecar_round_trips_and_updates_in_place() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("x.snap");
        assert!(read(&snap).unwrap().is_none());
        assert!(update(&snap, |_| unreachable!()).unwrap().is_none());
        let m = sample("c", 1_800_000_000);
        write(&snap, &m).unwrap();
        assert_eq!(read(&snap).unwrap().unwrap(), m);
        let mode = std::fs::metadata(meta_path(&snap))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!m.is_verified());
        let (at, at_unix) = now();
        let m2 = update(&snap, |m| {
            m.verification = Some(Verification {
                at,
                at_unix,
                ok: true,
                detail: "revision 42, 7 keys, hashkv deadbeef".into(),
                restored: Some(m.keyspace()),
                etcd_version: Some("3.4.23".into()),
                seconds: 1.5,
            })
        })
        .unwrap()
        .unwrap();
        assert!(m2.is_verified());
        assert_eq!(read(&snap).unwrap().unwrap(), m2);
        // Older records (no copies, no verification fields) still read.
        let mut v: serde_json::Value = serde_json::to_value(&m).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("copies");
        o.remove("verification");
        o.remove("etcd_version");
        o.remove("key_id");
        std::fs::write(meta_path(&snap), serde_json::to_vec(&v).unwrap()).unwrap();
        let back = read(&snap).unwrap().unwrap();
        assert!(back.copies.is_empty() && back.verification.is_none());
        std::fs::write(meta_path(&snap), b"{not json").unwrap();
        let err = read(&snap).unwrap_err();
        assert!(err.to_string().contains("x.json"), "{err}");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
