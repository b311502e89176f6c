//! `lab.json`: what a lab is made of, written before each thing is made.
//!
//! The record is an intent log. `up` writes the whole plan (index, bridge, every host's
//! namespace, veth, address, root) before it creates the first resource, and records each
//! agent's pid as soon as it exists. Whatever point `up` died at, `down` finds in the record
//! everything that may exist and removes what does. Writes are atomic ([`crate::fsio`]) so a
//! crash leaves the old or the new record, never half of one.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::names::LabName;
use super::LabError;
use crate::inventory::Role;

/// The record's file name inside the lab's directory.
pub const RECORD_FILE: &str = "lab.json";
/// The record format this code writes.
pub const FORMAT_VERSION: u32 = 1;

/// A lab as recorded in `lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabRecord {
    pub format_version: u32,
    pub name: LabName,
    /// Machine-wide index: the lab owns `10.77.<index>.0/24` and the bridge `hbr<index>`.
    pub index: u8,
    pub subnet: String,
    pub bridge: String,
    /// The MAC address the bridge was created with. It tells this lab's bridge from another
    /// lab's that took the same index after this one's `up` died before creating it.
    pub bridge_mac: String,
    /// The bridge's address on this machine, the lab's gateway.
    pub gateway: Ipv4Addr,
    pub created_unix_ms: u64,
    pub hosts: Vec<LabHost>,
}

/// One host of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabHost {
    /// `etcd1`, `master1`, `worker1`...
    pub name: String,
    pub roles: Vec<Role>,
    /// Network namespace, `haop-<lab>-<host>`.
    pub namespace: String,
    /// Host-side end of the host's veth pair; inside the namespace it is `eth0`.
    pub veth: String,
    pub address: Ipv4Addr,
    /// `http://<address>:7443`.
    pub endpoint: String,
    /// The agent's pid, once started.
    pub agent_pid: Option<u32>,
    /// The agent's start time (clock ticks since boot, `/proc/PID/stat` field 22), so that a
    /// recycled pid is never taken for the agent.
    pub agent_start_time: Option<u64>,
    /// The directory the agent treats as `/`.
    pub root_dir: PathBuf,
    /// The agent's stdout and stderr.
    pub log_path: PathBuf,
}

impl LabRecord {
    /// Reads `dir/lab.json`.
    pub fn read(dir: &Path) -> Result<LabRecord, LabError> {
        let path = dir.join(RECORD_FILE);
        let text = fs::read(&path).map_err(|source| LabError::Io {
            action: "read lab record",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| LabError::RecordParse { path, source })
    }

    /// Writes `dir/lab.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), LabError> {
        let mut text = serde_json::to_vec_pretty(self).expect("a lab record always serializes");
        text.push(b'\n');
        Ok(crate::fsio::write_atomic(
            &dir.join(RECORD_FILE),
            &text,
            0o644,
        )?)
    }

    pub fn host(&self, name: &str) -> Option<&LabHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabRecord {
        LabRecord {
            format_version: FORMAT_VERSION,
            name: LabName::try_from("t1").unwrap(),
            index: 3,
            subnet: "10.77.3.0/24".into(),
            bridge: "hbr3".into(),
            bridge_mac: "02:00:00:00:00:01".into(),
            gateway: Ipv4Addr::new(10, 77, 3, 1),
            created_unix_ms: 1,
            hosts: vec![LabHost {
                name: "etcd1".into(),
                roles: vec![Role::Etcd],
                namespace: "haop-t1-etcd1".into(),
                veth: "hv3x1".into(),
                address: Ipv4Addr::new(10, 77, 3, 11),
                endpoint: "http://10.77.3.11:7443".into(),
                agent_pid: None,
                agent_start_time: None,
                root_dir: "/s/labs/t1/hosts/etcd1".into(),
                log_path: "/s/labs/t1/logs/etcd1.log".into(),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = sample();
        r.write(dir.path()).unwrap();
        assert_eq!(LabRecord::read(dir.path()).unwrap(), r);
        r.hosts[0].agent_pid = Some(42);
        r.write(dir.path()).unwrap();
        assert_eq!(LabRecord::read(dir.path()).unwrap(), r);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [RECORD_FILE], "no temp file is left behind");
    }

    #[test]
    fn invalid_record_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(RECORD_FILE), "{").unwrap();
        let e = LabRecord::read(dir.path()).unwrap_err();
        assert!(matches!(e, LabError::RecordParse { .. }), "{e}");
        assert!(e.to_string().contains(RECORD_FILE));
    }
}
