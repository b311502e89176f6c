//! What `haop adopt` found, and how far the migration that secures it has come:
//! `<state>/adopt/<cluster>.json`, written atomically after every step.
//!
//! Adoption is a long change over live members (three rolling restarts), so it must survive a
//! coordinator killed anywhere. The record keeps what the hand-built cluster looked like before
//! haop touched it (the files the seed wrote, its CA, its member names and URLs), which the
//! hosts no longer show once the migration rewrote them, and one entry per step done. A step is
//! recorded as started before it changes anything and as done after its member is back and the
//! quorum whole: a rerun redoes a started step (its writes are ensures, a restart is harmless)
//! and skips a done one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One etcd member as the hand-built cluster ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedMember {
    pub host: String,
    pub member_id: u64,
    /// The member's name in etcd (the seed's `master-0`), which becomes the host's name.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub unit_path: String,
    pub environment_files: Vec<String>,
    pub cert_file: String,
    pub key_file: String,
    pub peer_cert_file: String,
    pub peer_key_file: String,
    pub trusted_ca_file: String,
    pub peer_trusted_ca_file: String,
    pub client_cert_auth: bool,
    pub peer_client_cert_auth: bool,
    /// Files on the host holding the hand-built CA's key (the seed scp'd it everywhere).
    pub ca_keys: Vec<String>,
}

/// One master's kube-apiserver as the hand-built cluster configured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedMaster {
    pub host: String,
    /// kubeadm's static pod manifest, when there is one.
    pub manifest: Option<String>,
    pub etcd_cafile: Option<String>,
    pub etcd_certfile: Option<String>,
    pub etcd_keyfile: Option<String>,
    pub ca_keys: Vec<String>,
}

/// A step's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Started,
    Done,
}

/// The whole record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptionRecord {
    pub cluster: String,
    pub adopted_unix: i64,
    /// The hand-built cluster's CA certificate(s), PEM.
    pub seed_ca_pem: String,
    pub members: Vec<SeedMember>,
    pub masters: Vec<SeedMaster>,
    /// `STEP` or `STEP:HOST` to its state.
    #[serde(default)]
    pub steps: BTreeMap<String, StepState>,
    #[serde(default)]
    pub finished_unix: Option<i64>,
}

/// Errors of the record; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read the adoption record {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the adoption record {path} does not parse")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::fsio::FsioError),
}

/// `<state>/adopt/<cluster>.json`.
pub fn path(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join("adopt").join(format!("{cluster}.json"))
}

impl AdoptionRecord {
    /// The record of `cluster`, if it was adopted.
    pub fn load(state_dir: &Path, cluster: &str) -> Result<Option<AdoptionRecord>, RecordError> {
        let path = path(state_dir, cluster);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RecordError::Read { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| RecordError::Parse { path, source })
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), RecordError> {
        let path = path(state_dir, &self.cluster);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| crate::fsio::FsioError::Io {
                op: "create",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let text = serde_json::to_string_pretty(self).expect("the record serializes");
        crate::fsio::write_atomic(&path, text.as_bytes(), 0o600)?;
        Ok(())
    }

    pub fn state(&self, key: &str) -> Option<StepState> {
        self.steps.get(key).copied()
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.state(key) == Some(StepState::Done)
    }

    pub fn member(&self, host: &str) -> Option<&SeedMember> {
        self.members.iter().find(|m| m.host == host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_state_dir() {
        let d = tempfile::tempdir().unwrap();
        assert!(AdoptionRecord::load(d.path(), "c").unwrap().is_none());
        let mut r = AdoptionRecord {
            cluster: "c".into(),
            adopted_unix: 1,
            seed_ca_pem: "pem".into(),
            members: vec![],
            masters: vec![],
            steps: BTreeMap::new(),
            finished_unix: None,
        };
        r.steps.insert("trust:etcd1".into(), StepState::Started);
        r.save(d.path()).unwrap();
        let back = AdoptionRecord::load(d.path(), "c").unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(back.state("trust:etcd1"), Some(StepState::Started));
        assert!(!back.is_done("trust:etcd1"));
        std::fs::write(path(d.path(), "c"), "{").unwrap();
        let e = AdoptionRecord::load(d.path(), "c").unwrap_err();
        assert!(e.to_string().contains("c.json"), "{e}");
    }
}
