//! `haop etcd restore`: the procedure for lost quorum, which recovery refuses.
//!
//! When a majority of members is gone, no membership change is possible: the cluster is
//! rebuilt from one snapshot. Every member is stopped, its data dir moved aside (fenced by the
//! agent as for recovery), the snapshot uploaded (decrypted on the way, its sha256 checked by
//! the agent) and restored on every host with `etcdctl snapshot restore` (a new cluster token,
//! the inventory's members), and all members started together; haop then waits for the quorum
//! through the API. Everything written after the snapshot is lost, which is why the CLI asks
//! for explicit confirmation.
//!
//! Which snapshot ([`choose_snapshot`]): the one named, else the newest *verified* one of the
//! state dir (see [`crate::etcd::snapshots`]) that still decrypts whole to what its record
//! says, else, for a state dir with no snapshot at all, a fresh one from the surviving member
//! furthest ahead. A failed or unverified snapshot is never taken without being named. The
//! [`Choice`] carries the candidates and the revisions the survivors hold beyond the snapshot,
//! so the operator sees what would be lost before confirming. `--from-host` first brings a
//! host's copy into the state dir ([`crate::etcd::snapshots::copies::fetch`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use haop_proto::v1 as pb;

use crate::agent::{AgentError, HostAgent};
use crate::etcd::api::EtcdClient;
use crate::etcd::config::{BOOTSTRAP_ENV_FILE, SEALED_BOOTSTRAP_ENV, UNIT_NAME};
use crate::etcd::snapshots::{self, crypt::SnapshotKey, meta::Meta, Entry, State};
use crate::inventory::Inventory;
use crate::trust::Trust;

/// Where the snapshot is put on each host before it is restored.
pub const HOST_SNAPSHOT: &str = "/var/lib/haop/restore/snapshot.db";

/// Errors of restore; each names the host or the file.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("no snapshot to restore: none in {dir}, and no member answers to take one; give one with --from FILE or --from-host HOST")]
    NoSnapshot { dir: PathBuf },
    #[error(
        "none of the {count} snapshots in {dir} is verified (haop etcd snapshot list says why); \
         verify one with `haop etcd snapshot verify -f INVENTORY NAME`, or name one with --from \
         FILE if you accept an unverified snapshot"
    )]
    NoneVerified { dir: PathBuf, count: usize },
    #[error(transparent)]
    Snapshot(#[from] snapshots::SnapshotError),
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

/// What restore would use, and what it would lose.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The snapshot to restore.
    pub path: PathBuf,
    /// Its record, when it has one.
    pub meta: Option<Meta>,
    /// How it was chosen, for the confirmation.
    pub reason: String,
    /// The state dir's snapshots, newest first, each with its state (and why one was passed
    /// over), when restore chose among them.
    pub candidates: Vec<Entry>,
    /// The members that answered, with the revision each is at (read locally, as a member
    /// without quorum still answers it).
    pub survivors: Vec<(String, i64)>,
}

impl Choice {
    /// Revisions written after the snapshot that the furthest survivor has: what restore loses
    /// at least. `None` when no survivor answered or the snapshot has no record.
    pub fn revision_gap(&self) -> Option<i64> {
        let at = self.meta.as_ref()?.revision;
        let newest = self.survivors.iter().map(|(_, r)| *r).max()?;
        Some(newest.saturating_sub(at).max(0))
    }
}

/// The snapshot restore will use: `from` when given; else the newest **verified** snapshot of
/// the state dir that still decrypts whole to what its record says (one that does not is
/// marked failed, with why, and passed over); else, when the state dir has no snapshot at
/// all, a fresh one from the surviving member with the highest raft index. A state dir with
/// snapshots, none of them verified, is an error that says how to verify one or name it.
pub async fn choose_snapshot(
    state_dir: &Path,
    inventory: &Inventory,
    from: Option<PathBuf>,
) -> Result<Choice, RestoreError> {
    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(state_dir, &endpoints, Duration::from_secs(2))
        .await
        .ok();
    let survivors = match &client {
        Some(c) => survivors(c, inventory).await,
        None => Vec::new(),
    };
    let cluster = inventory.cluster.as_str();
    if let Some(p) = from {
        let meta = snapshots::meta::read(&p).ok().flatten();
        return Ok(Choice {
            path: p,
            meta,
            reason: "given with --from".into(),
            candidates: Vec::new(),
            survivors,
        });
    }
    let dir = snapshots::snapshot_dir(state_dir, cluster);
    let mut candidates: Vec<Entry> = snapshots::entries(state_dir, cluster);
    candidates.reverse();
    let mut chosen = None;
    for c in candidates.iter_mut() {
        if c.state != State::Verified || chosen.is_some() {
            continue;
        }
        match snapshots::Plaintext::open(state_dir, &c.path).await {
            Ok(_) => chosen = Some(c.clone()),
            Err(e) => {
                let why = format!("changed since it was verified: {}", crate::error_chain(&e));
                mark_failed(&c.path, &why);
                c.state = State::Failed;
                c.why = Some(why);
            }
        }
    }
    if let Some(c) = chosen {
        return Ok(Choice {
            path: c.path.clone(),
            meta: c.meta.clone(),
            reason: "the newest verified snapshot".into(),
            candidates,
            survivors,
        });
    }
    if !candidates.is_empty() {
        return Err(RestoreError::NoneVerified {
            dir,
            count: candidates.len(),
        });
    }
    // No snapshot at all: the freshest a survivor can give.
    let client = client.ok_or_else(|| RestoreError::NoSnapshot { dir: dir.clone() })?;
    let hosts = inventory.etcd_hosts();
    let best = hosts
        .iter()
        .zip(client.statuses(&endpoints).await)
        .filter_map(|(h, s)| s.ok().map(|s| (h, s)))
        .max_by_key(|(_, s)| s.raft_index)
        .ok_or_else(|| RestoreError::NoSnapshot { dir: dir.clone() })?;
    let source = snapshots::Source {
        endpoint: best.1.endpoint.clone(),
        member: best.0.name.as_str().to_string(),
        db_size: best.1.db_size,
        version: best.1.version.clone(),
    };
    let path = snapshots::new_snapshot_path(state_dir, cluster, "survivor").map_err(|source| {
        RestoreError::Read {
            path: dir.clone(),
            source,
        }
    })?;
    let key = SnapshotKey::load_or_create(state_dir).map_err(snapshots::SnapshotError::from)?;
    let meta = snapshots::take(&client, &source, &key, cluster, &path, &|_| {})
        .await
        .map_err(|_| RestoreError::NoSnapshot { dir })?;
    Ok(Choice {
        path,
        meta: Some(meta),
        reason: format!(
            "a fresh snapshot from {}, the surviving member furthest ahead (the state dir had none)",
            source.member
        ),
        candidates: Vec::new(),
        survivors,
    })
}

/// Records that the snapshot at `path` failed, with `why` (best effort: the record may be
/// gone too).
fn mark_failed(path: &Path, why: &str) {
    let (at, at_unix) = snapshots::meta::now();
    let _ = snapshots::meta::update(path, |m| {
        m.verification = Some(snapshots::meta::Verification {
            at,
            at_unix,
            ok: false,
            detail: why.to_string(),
            restored: None,
            etcd_version: None,
            seconds: 0.0,
        })
    });
}

/// The members that answer, each with its revision.
async fn survivors(client: &EtcdClient, inventory: &Inventory) -> Vec<(String, i64)> {
    let hosts = inventory.etcd_hosts();
    let endpoints = inventory.etcd_client_urls();
    let revisions =
        crate::etcd::api::join_all(endpoints.iter().map(|e| client.local_revision(e))).await;
    hosts
        .iter()
        .zip(revisions)
        .filter_map(|(h, r)| r.ok().map(|r| (h.name.as_str().to_string(), r)))
        .collect()
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
    let plain = snapshots::Plaintext::open(state_dir, snapshot).await?;
    let size = plain.size;
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
    let plain = &plain;
    let uploads = clients.iter().map(|(name, c)| async move {
        c.upload_stream(
            HOST_SNAPSHOT,
            0o600,
            &plain.sha256,
            plain.size,
            &plain.path,
            plain.chunks(),
            &|_| {},
        )
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
