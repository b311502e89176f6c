//! Copies off the coordinator: each snapshot kept on `etcd.snapshots.copies` hosts.
//!
//! Why: the state dir is one machine's disk. Losing it (or the laptop haop ran on) must not
//! lose every snapshot, and a restore after a lost quorum must still be possible from what the
//! hosts hold (`haop etcd restore --from-host HOST`). Each copy goes through the host's agent
//! into `/var/lib/haop/snapshot-copies/<cluster>/` (a directory the agent's policy classes as
//! snapshot copies: an admin writes, removes and streams back; a reader gets nothing; see
//! `agent/src/policy.rs`), still encrypted, streamed with its sha256 checked by the agent
//! before it takes its place, and streamed back with the sha256 checked here.
//!
//! Which hosts: the inventory's hosts in file order, the member the snapshot came from last
//! (its disk is the one a lost member takes with it), skipping hosts that already hold it and
//! moving on past a host that cannot take it.
//!
//! What a host knows of its copies: an index beside them (`index.enc`, the records of the
//! copies it holds, encrypted under the same key), so that a state dir that lost everything
//! but `pki/` and `secrets/` can still list a host's copies, choose the newest verified one and
//! check the file it streams back against its record. The hosts apply the same retention to
//! their own index as the state dir does (never the newest, never the newest verified), so
//! no host keeps more than the policy says even when the coordinator's records are gone.
//!
//! Lifecycle: [`replicate`] after a snapshot is saved (and verified, by the schedule);
//! [`prune_hosts`] with the state dir's retention; [`fetch`] before a restore from a host.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::crypt::{CryptError, Decryptor, Encryptor, SnapshotKey};
use super::meta::{self, CopyRecord, Meta, MetaError};
use super::{snapshot_dir, SnapshotError};
use crate::agent::{AgentError, Agents, HostAgent};
use crate::etcd::api::{EtcdApiError, TempSnapshot};
use crate::inventory::{Inventory, Retention};

/// Where a host keeps haop's snapshot copies (the agent's policy knows this directory).
pub const COPY_DIR: &str = haop_proto::SNAPSHOT_COPY_DIR;
/// A host's index of the copies it holds, beside them.
pub const INDEX: &str = "index.enc";

/// The host directory of `cluster`'s copies.
pub fn host_dir(cluster: &str) -> String {
    format!("{COPY_DIR}/{cluster}")
}

/// Where the copy named `name` goes on a host.
pub fn host_path(cluster: &str, name: &str) -> String {
    format!("{}/{name}", host_dir(cluster))
}

/// Errors of copies; each names the host or the file.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Snapshot(Box<SnapshotError>),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("{host}'s index of snapshot copies is unreadable: {detail}")]
    Index { host: String, detail: String },
    #[error("{} has no record: only recorded (encrypted) snapshots are copied", .path.display())]
    NoRecord { path: PathBuf },
    #[error("{host} holds no copy of a snapshot of {cluster}{}", .wanted.as_deref().map(|w| format!(" named {w}")).unwrap_or_default())]
    NoCopy {
        host: String,
        cluster: String,
        wanted: Option<String>,
    },
    #[error(
        "{host} holds copies of {cluster}, none of them verified: {names}; name one with \
         --snapshot NAME if you accept an unverified snapshot"
    )]
    NoneVerified {
        host: String,
        cluster: String,
        names: String,
    },
    #[error(
        "the copy {name} from {host} is not the snapshot its record describes: {detail}; \
         nothing was kept"
    )]
    Mismatch {
        host: String,
        name: String,
        detail: String,
    },
    #[error("cannot keep the copy from {host} at {}", .path.display())]
    Local {
        host: String,
        path: PathBuf,
        #[source]
        source: Box<EtcdApiError>,
    },
}

impl From<SnapshotError> for CopyError {
    fn from(e: SnapshotError) -> Self {
        CopyError::Snapshot(Box::new(e))
    }
}

/// A host's index: the records of the copies it holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostIndex {
    pub cluster: String,
    pub copies: Vec<HostCopy>,
}

/// One copy on a host: its file name and its record (as the state dir had it when copied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCopy {
    pub name: String,
    pub meta: Meta,
}

impl HostCopy {
    /// The record a host keeps of a copy: the state dir's, without the list of copies (which
    /// the host does not need and which changes as other hosts get theirs).
    fn record(m: &Meta) -> Meta {
        let mut record = m.clone();
        record.copies.clear();
        record
    }
}

impl HostIndex {
    /// Oldest first, as the names sort.
    fn sort(&mut self) {
        self.copies.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// The hosts to put `want` more copies on: hosts of `inventory` in file order that do not hold
/// one yet (`have`), the member it came from (`origin`) last. Pure.
pub fn choose_hosts(inventory: &Inventory, origin: &str, have: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = inventory
        .hosts
        .iter()
        .map(|h| h.name.as_str().to_string())
        .filter(|h| !have.contains(h))
        .collect();
    hosts.sort_by_key(|h| h == origin);
    hosts
}

/// Reads `host`'s index of `cluster`'s copies (empty when it has none yet).
pub async fn read_index(
    agent: &HostAgent,
    key: &SnapshotKey,
    cluster: &str,
) -> Result<HostIndex, CopyError> {
    let path = host_path(cluster, INDEX);
    let mut bytes = Vec::new();
    match agent
        .download(&path, &mut |b| {
            bytes.extend_from_slice(b);
            Ok(())
        })
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            return Ok(HostIndex {
                cluster: cluster.to_string(),
                copies: Vec::new(),
            })
        }
        Err(e) => return Err(e.into()),
    }
    let what = format!("{}:{path}", agent.host());
    let mut d = Decryptor::new(key, bytes.as_slice(), &what)?;
    let mut plain = Vec::new();
    while let Some(seg) = d.next_segment()? {
        plain.extend_from_slice(seg);
    }
    let mut index: HostIndex = serde_json::from_slice(&plain).map_err(|e| CopyError::Index {
        host: agent.host().to_string(),
        detail: e.to_string(),
    })?;
    index.sort();
    Ok(index)
}

/// Writes `host`'s index (encrypted, 0600), replacing the one there.
async fn write_index(
    agent: &HostAgent,
    key: &SnapshotKey,
    index: &HostIndex,
) -> Result<(), CopyError> {
    let path = host_path(&index.cluster, INDEX);
    let plain = serde_json::to_vec_pretty(index).expect("an index serializes");
    let mut enc = Encryptor::new(key, Vec::new(), &path)?;
    enc.write(&plain)?;
    let sealed = enc.finish()?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sealed));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let size = sealed.len() as u64;
    tx.send(Ok(sealed)).await.expect("the receiver is here");
    drop(tx);
    agent
        .upload_stream(&path, 0o600, &sha, size, Path::new(INDEX), rx, &|_| {})
        .await?;
    Ok(())
}

/// What [`replicate`] did.
#[derive(Debug, Clone, Default)]
pub struct Replicated {
    /// Copies made now.
    pub made: Vec<CopyRecord>,
    /// Hosts that could not take one, with why.
    pub failed: Vec<(String, String)>,
    /// Copies the snapshot has now (made earlier and now).
    pub total: usize,
}

/// Puts copies of the recorded snapshot at `path` on hosts until it has `wanted` of them
/// ([`choose_hosts`]); each upload checked by the agent against the file's sha256, then the
/// host's index and the local record updated. A host that fails is reported and the next one
/// tried. `progress` hears each copy.
pub async fn replicate(
    inventory: &Inventory,
    agents: &Agents,
    key: &SnapshotKey,
    path: &Path,
    wanted: u32,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Replicated, CopyError> {
    let Some(mut m) = meta::read(path)? else {
        return Err(CopyError::NoRecord {
            path: path.to_path_buf(),
        });
    };
    let name = file_name(path);
    let cluster = inventory.cluster.as_str().to_string();
    let mut out = Replicated::default();
    let have: Vec<String> = m.copies.iter().map(|c| c.host.clone()).collect();
    let mut count = have.len();
    for host in choose_hosts(inventory, &m.member, &have) {
        if count >= wanted as usize {
            break;
        }
        let copied = async {
            let agent = agents.get(&host).await?;
            agent
                .upload_file(&host_path(&cluster, &name), 0o600, path, &|_| {})
                .await?;
            let mut index = read_index(&agent, key, &cluster).await?;
            index.copies.retain(|c| c.name != name);
            index.copies.push(HostCopy {
                name: name.clone(),
                meta: HostCopy::record(&m),
            });
            index.sort();
            write_index(&agent, key, &index).await?;
            Ok::<_, CopyError>(())
        };
        match copied.await {
            Ok(()) => {
                let record = CopyRecord {
                    host: host.clone(),
                    path: host_path(&cluster, &name),
                    at: meta::now().0,
                };
                m = meta::update(path, |m| {
                    m.copies.retain(|c| c.host != host);
                    m.copies.push(record.clone());
                })?
                .unwrap_or(m);
                progress(format!("{name}: copied to {host}"));
                out.made.push(record);
                count += 1;
            }
            Err(e) => {
                let why = crate::error_chain(&e);
                progress(format!("{name}: no copy on {host}: {why}"));
                out.failed.push((host, why));
            }
        }
    }
    out.total = count;
    Ok(out)
}

/// Brings the record of the snapshot at `path` up to date in the index of every host that holds
/// a copy (after a verification, so that a host's newest *verified* copy is known without the
/// state dir). A host that cannot be reached is named in `progress` and keeps its older record.
pub async fn refresh_indexes(
    inventory: &Inventory,
    agents: &Agents,
    key: &SnapshotKey,
    path: &Path,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(), CopyError> {
    let Some(m) = meta::read(path)? else {
        return Ok(());
    };
    let name = file_name(path);
    let cluster = inventory.cluster.as_str();
    for c in &m.copies {
        let refreshed = async {
            let agent = agents.get(&c.host).await?;
            let mut index = read_index(&agent, key, cluster).await?;
            if let Some(entry) = index.copies.iter_mut().find(|e| e.name == name) {
                entry.meta = HostCopy::record(&m);
                write_index(&agent, key, &index).await?;
            }
            Ok::<_, CopyError>(())
        };
        if let Err(e) = refreshed.await {
            progress(format!(
                "{}: the record of its copy of {name} could not be updated: {}",
                c.host,
                crate::error_chain(&e)
            ));
        }
    }
    Ok(())
}

/// Applies `retention` to every host's copies, by the host's own index (never its newest
/// copy, never its newest verified one); answers `(host, name)` of what was removed. A host
/// that cannot be asked is skipped and named in `progress`.
pub async fn prune_hosts(
    inventory: &Inventory,
    agents: &Agents,
    key: &SnapshotKey,
    retention: &Retention,
    progress: &(dyn Fn(String) + Sync),
) -> Vec<(String, String)> {
    let cluster = inventory.cluster.as_str();
    let now = meta::now().1;
    let mut removed = Vec::new();
    for h in &inventory.hosts {
        let host = h.name.as_str();
        let pruned = async {
            let agent = agents.get(host).await?;
            let mut index = read_index(&agent, key, cluster).await?;
            let items: Vec<(i64, bool)> = index
                .copies
                .iter()
                .map(|c| (c.meta.taken_unix, c.meta.is_verified()))
                .collect();
            let gone = super::to_prune_by(&items, retention, now);
            if gone.is_empty() {
                return Ok::<_, CopyError>(Vec::new());
            }
            let mut names = Vec::new();
            for &i in gone.iter().rev() {
                let c = index.copies.remove(i);
                agent.remove_file(&host_path(cluster, &c.name)).await?;
                names.push(c.name);
            }
            write_index(&agent, key, &index).await?;
            names.reverse();
            Ok(names)
        };
        match pruned.await {
            Ok(names) => {
                for n in names {
                    progress(format!("{host}: deleted copy {n} (etcd.retention)"));
                    removed.push((host.to_string(), n));
                }
            }
            Err(e) => progress(format!(
                "{host}: its copies could not be pruned: {}",
                crate::error_chain(&e)
            )),
        }
    }
    removed
}

/// The copies `host` holds, oldest first (for `restore --from-host` and listing).
pub async fn host_copies(
    state_dir: &Path,
    inventory: &Inventory,
    host: &str,
) -> Result<HostIndex, CopyError> {
    let key = SnapshotKey::load(state_dir)?;
    let agent = connect(state_dir, inventory, host).await?;
    read_index(&agent, &key, inventory.cluster.as_str()).await
}

async fn connect(
    state_dir: &Path,
    inventory: &Inventory,
    host: &str,
) -> Result<HostAgent, CopyError> {
    let trust = std::sync::Arc::new(crate::trust::Trust::load(state_dir)?);
    Ok(Agents::new(trust, inventory).get(host).await?)
}

/// Brings a copy back from `host` into the state dir, for a restore: the copy named `name`,
/// else the host's newest verified one. It streams into a temp file beside its place, is
/// checked against the host's record of it (size and sha256 of the file as written) and put
/// in place with that record (its copies: `host`). Works with a state dir that has only `pki/`
/// (to reach the agent) and `secrets/` (the snapshot key, to read the index). Answers the path.
pub async fn fetch(
    state_dir: &Path,
    inventory: &Inventory,
    host: &str,
    name: Option<&str>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<PathBuf, CopyError> {
    let key = SnapshotKey::load(state_dir)?;
    let agent = connect(state_dir, inventory, host).await?;
    let cluster = inventory.cluster.as_str();
    let index = read_index(&agent, &key, cluster).await?;
    let copy = match name {
        Some(n) => index.copies.iter().find(|c| c.name == n),
        None => index.copies.iter().rev().find(|c| c.meta.is_verified()),
    };
    let Some(copy) = copy.cloned() else {
        if name.is_none() && !index.copies.is_empty() {
            return Err(CopyError::NoneVerified {
                host: host.to_string(),
                cluster: cluster.to_string(),
                names: index
                    .copies
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        return Err(CopyError::NoCopy {
            host: host.to_string(),
            cluster: cluster.to_string(),
            wanted: name.map(str::to_string),
        });
    };
    let dir = snapshot_dir(state_dir, cluster);
    std::fs::create_dir_all(&dir).map_err(|source| {
        CopyError::from(SnapshotError::Io {
            dir: dir.clone(),
            source,
        })
    })?;
    let path = dir.join(&copy.name);
    let local = |source| CopyError::Local {
        host: host.to_string(),
        path: path.clone(),
        source: Box::new(source),
    };
    let mut tmp = TempSnapshot::create(&path).map_err(local)?;
    let total = copy.meta.file_size;
    let (sha, size) = {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(tmp.file_mut());
        let mut got = 0u64;
        let r = agent
            .download(&host_path(cluster, &copy.name), &mut |b| {
                got += b.len() as u64;
                progress(got, total);
                file.write_all(b)
            })
            .await?;
        file.flush().map_err(|e| {
            local(EtcdApiError::SnapshotIo {
                action: "write",
                path: path.clone(),
                source: e,
            })
        })?;
        r
    };
    if sha != copy.meta.file_sha256 || size != copy.meta.file_size {
        return Err(CopyError::Mismatch {
            host: host.to_string(),
            name: copy.name.clone(),
            detail: format!(
                "{size} bytes with sha256 {sha}, the record says {} bytes with sha256 {}",
                copy.meta.file_size, copy.meta.file_sha256
            ),
        });
    }
    tmp.persist(&path).map_err(local)?;
    let mut m = copy.meta.clone();
    m.copies = vec![CopyRecord {
        host: host.to_string(),
        path: host_path(cluster, &copy.name),
        at: meta::now().0,
    }];
    meta::write(&path, &m)?;
    tracing::info!(host, path = %path.display(), "snapshot copy fetched");
    Ok(path)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Host, HostName, Role};

    #[test]
    fn copies_go_to_other_hosts_first_in_file_order() {
        let host = |n: &str, last: u8, roles: Vec<Role>| {
            Host::new(
                HostName::try_from(n).unwrap(),
                std::net::IpAddr::from([10, 0, 0, last]),
                roles,
            )
        };
        let inv = Inventory::new(
            "c".try_into().unwrap(),
            vec![
                host("etcd1", 11, vec![Role::Etcd]),
                host("etcd2", 12, vec![Role::Etcd]),
                host("etcd3", 13, vec![Role::Etcd]),
                host("master1", 41, vec![Role::Master]),
            ],
        );
        assert_eq!(
            choose_hosts(&inv, "etcd1", &[]),
            ["etcd2", "etcd3", "master1", "etcd1"]
        );
        assert_eq!(
            choose_hosts(&inv, "etcd2", &["etcd1".into()]),
            ["etcd3", "master1", "etcd2"]
        );
        assert_eq!(
            host_path("c", "x.snap"),
            "/var/lib/haop/snapshot-copies/c/x.snap"
        );
    }
}
