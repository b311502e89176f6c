//! `haop etcd restore`: the procedure for lost quorum, which recovery refuses.
//!
//! When a majority of members is gone, no membership change is possible: the cluster is
//! rebuilt from one snapshot. Every member is stopped, its data dir moved aside (fenced by the
//! agent as for recovery), the snapshot uploaded with its sha256 checked and restored on every
//! host with `etcdctl snapshot restore` (a new cluster token, the inventory's members), and all
//! members started together; haop then waits for the quorum through the API. Everything written
//! after the snapshot is lost, which is why the CLI asks for explicit confirmation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use haop_proto::v1 as pb;

use crate::agent::{AgentError, HostAgent};
use crate::etcd::api::EtcdClient;
use crate::etcd::config::{BOOTSTRAP_ENV_FILE, SEALED_BOOTSTRAP_ENV, UNIT_NAME};
use crate::inventory::Inventory;
use crate::trust::Trust;

/// Where the snapshot is put on each host before it is restored.
pub const HOST_SNAPSHOT: &str = "/var/lib/haop/restore/snapshot.db";

/// Errors of restore; each names the host or the file.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("no snapshot to restore: none in {dir}, and no member answers to take one; give one with --from FILE")]
    NoSnapshot { dir: PathBuf },
    #[error("cannot read snapshot {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{host}: {what}: {message}")]
    Host {
        host: String,
        what: &'static str,
        message: String,
    },
    #[error("{what}")]
    Agent {
        what: &'static str,
        #[source]
        source: AgentError,
    },
    #[error("the restored cluster did not form a quorum")]
    Quorum(#[source] crate::etcd::api::EtcdApiError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
}

/// The snapshot restore will use: `from`, else the newest in the state dir, else a fresh one
/// from the surviving member with the highest raft index.
pub async fn choose_snapshot(
    state_dir: &Path,
    inventory: &Inventory,
    from: Option<PathBuf>,
) -> Result<PathBuf, RestoreError> {
    if let Some(p) = from {
        return Ok(p);
    }
    let dir = crate::etcd::snapshots::snapshot_dir(state_dir, inventory.cluster.as_str());
    let newest = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "db"))
            .max()
    });
    if let Some(p) = newest {
        return Ok(p);
    }
    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(state_dir, &endpoints, Duration::from_secs(2))
        .await
        .map_err(|_| RestoreError::NoSnapshot { dir: dir.clone() })?;
    let best = client
        .statuses(&endpoints)
        .await
        .into_iter()
        .flatten()
        .max_by_key(|s| s.raft_index)
        .ok_or_else(|| RestoreError::NoSnapshot { dir: dir.clone() })?;
    let path = crate::etcd::snapshots::new_snapshot_path(
        state_dir,
        inventory.cluster.as_str(),
        "survivor",
    )
    .map_err(|source| RestoreError::Read {
        path: dir.clone(),
        source,
    })?;
    client
        .snapshot_from(&best.endpoint, &path)
        .await
        .map_err(|_| RestoreError::NoSnapshot { dir })?;
    Ok(path)
}

fn host_err(what: &'static str) -> impl Fn(AgentError) -> RestoreError {
    move |source| RestoreError::Agent { what, source }
}

/// Restores every etcd member of `inventory` from `snapshot`; `progress` sees each step.
pub async fn restore(
    state_dir: &Path,
    inventory: &Inventory,
    snapshot: &Path,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(), RestoreError> {
    let size = std::fs::metadata(snapshot)
        .map_err(|source| RestoreError::Read {
            path: snapshot.to_path_buf(),
            source,
        })?
        .len();
    let trust = Trust::load(state_dir)?;
    let hosts = inventory.etcd_hosts();
    let mut clients: Vec<(String, HostAgent)> = Vec::new();
    for h in &hosts {
        let name = h.name.as_str().to_string();
        let c = HostAgent::connect(&trust, &name, h.agent.as_str(), Duration::from_secs(5))
            .await
            .map_err(host_err("connect"))?;
        clients.push((name, c));
    }
    let token = format!(
        "{}-restored-{}",
        inventory.etcd_cluster_token(),
        time::OffsetDateTime::now_utc().unix_timestamp()
    );
    let initial = inventory.etcd_initial_cluster();
    let data_dir = inventory.etcd.data_dir.display().to_string();
    // The snapshot on every host first, each checked against its sha256, in parallel: an
    // upload that fails (a full disk, a host cut off) leaves the cluster as it was.
    let uploads = clients.iter().map(|(name, c)| async move {
        c.upload_file(HOST_SNAPSHOT, 0o600, snapshot, &|_| {})
            .await
            .map_err(host_err("upload the snapshot"))?;
        progress(format!("{name}: snapshot uploaded"));
        Ok::<_, RestoreError>(())
    });
    for r in crate::etcd::api::join_all(uploads).await {
        r?;
    }
    // Stop every member: none may serve the old data while others restore.
    for (name, c) in &clients {
        c.unit_action(UNIT_NAME, pb::Action::Stop)
            .await
            .map_err(host_err("stop etcd"))?;
        progress(format!("{name}: etcd stopped"));
    }
    for ((name, c), h) in clients.iter().zip(&hosts) {
        let moved = c
            .wipe_data_dir(UNIT_NAME, &data_dir, false)
            .await
            .map_err(host_err("move the data dir aside"))?;
        if moved.changed {
            progress(format!("{name}: old data moved to {}", moved.moved_to));
        }
        let peer = inventory.etcd_peer_url(h);
        let out = c
            .exec(pb::ExecRequest {
                program: "etcdctl".into(),
                args: vec![
                    "snapshot".into(),
                    "restore".into(),
                    HOST_SNAPSHOT.into(),
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    data_dir.clone(),
                    "--initial-cluster".into(),
                    initial.clone(),
                    "--initial-cluster-token".into(),
                    token.clone(),
                    "--initial-advertise-peer-urls".into(),
                    peer,
                ],
                timeout_seconds: restore_timeout(size),
                env: [("ETCDCTL_API".to_string(), "3".to_string())].into(),
                stdin: Vec::new(),
            })
            .await
            .map_err(host_err("run etcdctl snapshot restore"))?;
        if out.exit_code != 0 {
            return Err(RestoreError::Host {
                host: name.clone(),
                what: "etcdctl snapshot restore",
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        // The restored data dir carries the membership: the bootstrap file stays sealed.
        c.write_file(BOOTSTRAP_ENV_FILE, SEALED_BOOTSTRAP_ENV, 0o640)
            .await
            .map_err(host_err("seal the bootstrap file"))?;
        progress(format!("{name}: restored from the snapshot"));
    }
    for (_, c) in &clients {
        c.unit_action(UNIT_NAME, pb::Action::Start)
            .await
            .map_err(host_err("start etcd"))?;
    }
    progress("all members started; waiting for the quorum".into());
    crate::etcd::api::wait_for_quorum_at(
        state_dir,
        &inventory.etcd_client_urls(),
        hosts.len(),
        crate::etcd::api::scaled_timeout(Duration::from_secs(60), size as i64),
    )
    .await
    .map_err(RestoreError::Quorum)?;
    progress(format!("the cluster is back with token {token}"));
    Ok(())
}

/// How long `etcdctl snapshot restore` of `size` bytes may run on a host: it rewrites the whole
/// database (and hashes it), so the bound grows with the snapshot.
fn restore_timeout(size: u64) -> u32 {
    crate::etcd::api::scaled_timeout(Duration::from_secs(120), size as i64)
        .as_secs()
        .try_into()
        .unwrap_or(u32::MAX)
}
