//! `haop etcd upgrade`: a new etcd release, one member at a time, without losing quorum or data.
//!
//! Why haop does it: kubeadm upgrades only the etcd it runs itself (stacked); an external
//! etcd built from the seed's runbook (3.4) must reach what Kubernetes now requires
//! (`MinExternalEtcdVersion`, 3.5.24 for 1.32 to 1.34) member by member, and the known traps
//! (skipping a minor, a 3.5.0-3.5.5 target, auth on 3.4 -> 3.5, a learner left over) are
//! exactly the ones a hand-run upgrade falls into. The rules live in [`crate::etcd::versions`],
//! the gates in [`gates`] (pure); this module does the work:
//!
//! 1. Check the binary on this machine: its sha256, and that it says it is the target version.
//! 2. Observe the members ([`observe`]) and ask [`gates::plan`]: the members to move, followers
//!    first and the leader last, or a refusal that changes nothing. Then record the target
//!    release (version and binary) in the inventory, before anything else changes: an apply
//!    run in the middle continues the move rather than undoing it.
//! 3. Snapshot once, before the first member changes (kept in the [`journal`], so a rerun does
//!    not take another).
//! 4. Put the new binary beside the old on every member (`/usr/local/bin/etcd-VERSION`, the old
//!    one stays for a rollback).
//! 5. Per member: hand leadership away first when it leads, write its unit naming the new
//!    binary, restart it, and wait until it answers, runs the target and has applied every
//!    entry the leader had when it came back; progress-aware: it may take as long as it keeps
//!    applying, and fails only when its applied index stalls for `etcd.catch_up_stall`.
//! 6. After the last member: wait for etcd to raise the cluster version (a new minor).
//!
//! Killed anywhere, a rerun converges: the members tell which are done (their version), the
//! journal keeps the snapshot, and every step is an ensure. `--rollback` runs the same steps
//! back to the journal's `from` release, which etcd allows within a minor always and across a
//! minor only while the cluster version has not moved (see [`crate::etcd::versions`]).

pub mod gates;
pub mod journal;
pub mod observe;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haop_proto::v1 as pb;
use tracing::info;

use self::gates::{Plan, Refusal};
use self::journal::{JournalBinary, UpgradeJournal};
use crate::agent::{AgentError, Agents};
use crate::etcd::api::{EtcdApiError, EtcdClient};
use crate::etcd::config::{uploaded_binary_path, UNIT_NAME};
use crate::etcd::versions::EtcdVersion;
use crate::inventory::{EtcdBinary, Inventory, Version};
use crate::trust::Trust;

/// What to upgrade to.
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    pub target: EtcdVersion,
    /// The binary the members run afterwards: uploaded (checked here first) or already on
    /// every host at a path.
    pub binary: EtcdBinary,
    /// Set aside the judgement-call gates (see [`gates::plan`]).
    pub force: bool,
    /// How long a restarted member may go without applying anything before the upgrade stops.
    pub stall: Duration,
}

/// What one member went through.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberReport {
    pub host: String,
    pub from: String,
    pub to: String,
    /// From the restart to caught up.
    pub seconds: f64,
    /// Leadership was handed to another member first.
    pub leader_moved: bool,
}

/// What an upgrade (or rollback) did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpgradeReport {
    pub target: String,
    pub from: Option<String>,
    pub members: Vec<MemberReport>,
    /// Members that were at the target already.
    pub already: Vec<String>,
    pub snapshot: Option<PathBuf>,
    /// The cluster version etcd reports after the last member, `major.minor`.
    pub cluster_version: Option<String>,
    pub seconds: f64,
    /// Gates set aside with `--force`, in their words.
    pub forced: Vec<String>,
}

/// Why an upgrade stopped; each names the host or the rule.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade refused, nothing changed")]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Etcd(#[from] EtcdApiError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(transparent)]
    Snapshot(#[from] crate::etcd::snapshots::SnapshotError),
    #[error(transparent)]
    Edit(#[from] crate::inventory::edit::EditError),
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    #[error(transparent)]
    Journal(#[from] crate::fsio::FsioError),
    #[error("the binary {}: {reason}", .file.display())]
    Binary { file: PathBuf, reason: String },
    #[error(
        "{host} did not come back within {seconds} s after its restart to {target} ({last}); the \
         other members were not touched. Check it (haop status, its etcd log), then run the \
         upgrade again, or roll back with --rollback"
    )]
    NotBack {
        host: String,
        target: EtcdVersion,
        seconds: u64,
        last: String,
    },
    #[error(
        "{host} stopped applying entries for {seconds} s after its restart (applied index \
         {applied}, the leader had {wanted}); the other members were not touched. Run the \
         upgrade again once it moves, or roll back with --rollback"
    )]
    Stalled {
        host: String,
        seconds: u64,
        applied: u64,
        wanted: u64,
    },
    #[error("{host} runs {running} after its restart, not {target}: check the binary at {binary}")]
    WrongVersion {
        host: String,
        running: String,
        target: EtcdVersion,
        binary: String,
    },
    #[error("no upgrade of cluster {cluster} to roll back (the state dir has no upgrade journal)")]
    NothingToRollBack { cluster: String },
    #[error(
        "every member runs {target}, and etcd did not raise the cluster version to {major}.{minor} \
         within {seconds} s (it reports {reported}); check the members with haop status"
    )]
    ClusterVersion {
        target: EtcdVersion,
        major: u64,
        minor: u64,
        seconds: u64,
        reported: String,
    },
}

/// The etcd version a local binary prints (`etcd --version`), if it runs and says one.
pub fn binary_version(file: &Path) -> Option<EtcdVersion> {
    let out = std::process::Command::new(file)
        .arg("--version")
        .env_clear()
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .and_then(EtcdVersion::parse)
}

/// Checks a local binary: its sha256 and the version it prints.
pub fn check_binary(file: &Path, sha256: &str, target: EtcdVersion) -> Result<(), UpgradeError> {
    let bad = |reason: String| UpgradeError::Binary {
        file: file.to_path_buf(),
        reason,
    };
    let data = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    if actual != sha256 {
        return Err(bad(format!("its sha256 is {actual}, not {sha256}")));
    }
    let said = binary_version(file);
    match said {
        Some(v) if v == target => Ok(()),
        Some(v) => Err(bad(format!("it is etcd {v}, not {target}"))),
        None => Err(bad(format!(
            "`{} --version` does not say an etcd version",
            file.display()
        ))),
    }
}

fn inventory_version(v: EtcdVersion) -> Version {
    Version::new(v.major, v.minor, Some(v.patch))
}

/// The path the unit runs for `binary` at `version`.
fn binary_path(binary: &EtcdBinary, version: EtcdVersion) -> String {
    match binary {
        EtcdBinary::Path(p) => p.display().to_string(),
        EtcdBinary::Upload { .. } => uploaded_binary_path(Some(&version.to_string())),
    }
}

/// Observes the cluster and answers the plan, changing nothing (`haop etcd upgrade --dry-run`).
pub async fn plan(
    state_dir: &Path,
    inv: &Inventory,
    target: EtcdVersion,
    force: bool,
) -> Result<(Plan, gates::Observed), UpgradeError> {
    let etcd =
        EtcdClient::connect(state_dir, &inv.etcd_client_urls(), Duration::from_secs(2)).await?;
    let (observed, _) = observe::observe(state_dir, inv, &etcd).await;
    let plan = gates::plan(&observed, target, force)?;
    Ok((plan, observed))
}

/// Upgrades the cluster of the inventory at `inventory_path` as `req` says; `progress` hears
/// each step.
pub async fn upgrade(
    state_dir: &Path,
    inventory_path: &Path,
    req: &UpgradeRequest,
    progress: &(dyn Fn(String) + Sync),
) -> Result<UpgradeReport, UpgradeError> {
    let (inv, _) = Inventory::load(inventory_path)?;
    if let EtcdBinary::Upload { file, sha256 } = &req.binary {
        check_binary(file, sha256.as_str(), req.target)?;
    }
    let journal = journal::load(state_dir, inv.cluster.as_str());
    let record = (req.target.to_string(), req.binary.clone());
    run(
        state_dir,
        inventory_path,
        inv,
        req,
        Mode::Upgrade(journal.map(Box::new)),
        record,
        progress,
    )
    .await
}

/// An upgrade (with the cluster's last journal, if any) or a rollback.
enum Mode {
    Upgrade(Option<Box<UpgradeJournal>>),
    Rollback,
}

/// Rolls the last upgrade back to the release it started from.
pub async fn rollback(
    state_dir: &Path,
    inventory_path: &Path,
    stall: Duration,
    progress: &(dyn Fn(String) + Sync),
) -> Result<UpgradeReport, UpgradeError> {
    let (inv, _) = Inventory::load(inventory_path)?;
    let cluster = inv.cluster.as_str().to_string();
    let j =
        journal::load(state_dir, &cluster).ok_or(UpgradeError::NothingToRollBack { cluster })?;
    let from = EtcdVersion::parse(&j.from).ok_or_else(|| UpgradeError::Binary {
        file: PathBuf::from(&j.from),
        reason: "the journal's from version does not parse".into(),
    })?;
    let binary = j
        .from_binary
        .to_inventory()
        .ok_or_else(|| UpgradeError::Binary {
            file: PathBuf::from("journal"),
            reason: "the journal's from binary does not parse".into(),
        })?;
    // Back to the old binary, which is still on every host where the unit ran it: no upload,
    // no new snapshot.
    let req = UpgradeRequest {
        target: from,
        binary: EtcdBinary::Path(PathBuf::from(&j.from_path)),
        force: true,
        stall,
    };
    // The inventory says the release before the upgrade again.
    let version = j.from_inventory_version.clone().unwrap_or(j.from.clone());
    let mut report = run(
        state_dir,
        inventory_path,
        inv,
        &req,
        Mode::Rollback,
        (version, binary),
        progress,
    )
    .await?;
    report.forced.clear();
    Ok(report)
}

async fn run(
    state_dir: &Path,
    inventory_path: &Path,
    inv: Inventory,
    req: &UpgradeRequest,
    mode: Mode,
    record: (String, EtcdBinary),
    progress: &(dyn Fn(String) + Sync),
) -> Result<UpgradeReport, UpgradeError> {
    let started = Instant::now();
    let cluster = inv.cluster.as_str().to_string();
    let etcd =
        EtcdClient::connect(state_dir, &inv.etcd_client_urls(), Duration::from_secs(2)).await?;
    let (observed, endpoints) = observe::observe(state_dir, &inv, &etcd).await;
    let plan = gates::plan(&observed, req.target, req.force)?;
    for f in &plan.forced {
        progress(format!("forced past: {f}"));
    }
    // From the first change on, the inventory names the release the members move to: a `haop
    // apply` in between then continues the move (one member at a time, as apply restarts etcd)
    // instead of undoing it, and `haop plan` shows the members still to move.
    crate::inventory::edit::rewrite_etcd_release(inventory_path, &record.0, &record.1)?;
    let mut report = UpgradeReport {
        target: req.target.to_string(),
        from: plan.from.map(|v| v.to_string()),
        members: Vec::new(),
        already: plan.done.clone(),
        snapshot: None,
        cluster_version: None,
        seconds: 0.0,
        forced: plan.forced.clone(),
    };
    let (is_rollback, journal) = match mode {
        Mode::Upgrade(j) => (false, j),
        Mode::Rollback => (true, None),
    };
    if !plan.order.is_empty() {
        let from = plan.from.expect("members to move have a version to leave");
        progress(format!(
            "{} -> {}: {} (followers first, the leader last){}",
            from,
            req.target,
            plan.order.join(", "),
            if plan.done.is_empty() {
                String::new()
            } else {
                format!("; already at {}: {}", req.target, plan.done.join(", "))
            }
        ));
        // The journal: what this upgrade started from, and its one snapshot.
        let mut j = match journal {
            Some(j) if j.target == req.target.to_string() && j.finished_unix.is_none() => *j,
            _ => UpgradeJournal {
                target: req.target.to_string(),
                from: from.to_string(),
                from_binary: JournalBinary::from(&inv.etcd.binary),
                from_path: inv
                    .etcd_hosts()
                    .first()
                    .map(|h| crate::runbook::plan::member_config(&inv, h).binary)
                    .unwrap_or_default(),
                from_inventory_version: inv.etcd.version.map(|v| v.to_string()),
                to_binary: JournalBinary::from(&req.binary),
                snapshot: None,
                started_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
                finished_unix: None,
            },
        };
        if j.snapshot.is_none() && !is_rollback {
            let path = crate::etcd::snapshots::new_snapshot_path(state_dir, &cluster, "upgrade")
                .map_err(|source| crate::etcd::snapshots::SnapshotError::Io {
                    dir: crate::etcd::snapshots::snapshot_dir(state_dir, &cluster),
                    source,
                })?;
            progress(format!(
                "snapshot before the first member: {}",
                path.display()
            ));
            let saved =
                crate::etcd::snapshots::save(state_dir, &inv, Some(path.clone()), &|_, _| {})
                    .await?;
            info!(
                path = %path.display(),
                bytes = saved.meta.file_size,
                revision = saved.meta.revision,
                "upgrade snapshot taken"
            );
            j.snapshot = Some(path);
        }
        report.snapshot = j.snapshot.clone();
        if !is_rollback {
            journal::save(state_dir, &cluster, &j)?;
        }

        let trust = Arc::new(Trust::load(state_dir)?);
        let agents = Agents::new(trust, &inv);
        let path = binary_path(&req.binary, req.target);
        if let EtcdBinary::Upload { file, .. } = &req.binary {
            for h in inv.etcd_hosts() {
                let a = agents.get(h.name.as_str()).await?;
                if a.upload_file(&path, 0o755, file, &|_| {}).await? {
                    progress(format!("{}: installed {path}", h.name.as_str()));
                }
            }
        }
        let mut target_inv = inv.clone();
        target_inv.etcd.version = Some(inventory_version(req.target));
        target_inv.etcd.binary = req.binary.clone();
        for host in &plan.order {
            let m = upgrade_member(
                &etcd,
                &agents,
                &target_inv,
                &endpoints,
                host,
                req,
                &path,
                progress,
            )
            .await?;
            report.members.push(m);
            crate::failpoint::hit("upgrade:after-member");
        }
        if plan.crosses_minor {
            report.cluster_version =
                Some(wait_cluster_version(state_dir, &endpoints, req.target).await?);
        }
        if !is_rollback {
            j.finished_unix = Some(time::OffsetDateTime::now_utc().unix_timestamp());
            journal::save(state_dir, &cluster, &j)?;
        }
    } else {
        progress(format!("every member runs {} already", req.target));
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn upgrade_member(
    etcd: &EtcdClient,
    agents: &Agents,
    target_inv: &Inventory,
    endpoints: &[observe::Endpoint],
    host: &str,
    req: &UpgradeRequest,
    binary: &str,
    progress: &(dyn Fn(String) + Sync),
) -> Result<MemberReport, UpgradeError> {
    let me = endpoints
        .iter()
        .find(|e| e.host == host)
        .expect("the plan names inventory members");
    let status = etcd.status_of(&me.url).await?;
    let from = status.version.clone();
    // The leader hands over first, to a member already on the target when there is one.
    let all: Vec<crate::etcd::rolling::Endpoint> = endpoints
        .iter()
        .map(|e| crate::etcd::rolling::Endpoint {
            host: e.host.clone(),
            url: e.url.clone(),
        })
        .collect();
    let mine = crate::etcd::rolling::Endpoint {
        host: me.host.clone(),
        url: me.url.clone(),
    };
    let moved = crate::etcd::rolling::hand_off_leadership(etcd, &mine, &all, |_, s| {
        EtcdVersion::parse(&s.version) != Some(req.target)
    })
    .await?;
    if let Some(to_host) = &moved {
        progress(format!("{host}: leads; handed leadership to {to_host}"));
    }
    let leader_moved = moved.is_some();
    let h = target_inv.host(host).expect("an inventory host");
    let cfg = crate::runbook::plan::member_config(target_inv, h);
    let agent = agents.get(host).await?;
    agent
        .ensure_unit(
            UNIT_NAME,
            &cfg.unit_file(),
            std::slice::from_ref(&cfg.data_dir),
        )
        .await?;
    progress(format!("{host}: restarting on {binary}"));
    let restarted = Instant::now();
    agent.unit_action(UNIT_NAME, pb::Action::Restart).await?;
    wait_back(etcd, endpoints, me, req, status.db_size, binary).await?;
    let seconds = restarted.elapsed().as_secs_f64();
    progress(format!(
        "{host}: runs {} and has caught up ({seconds:.1} s)",
        req.target
    ));
    Ok(MemberReport {
        host: host.to_string(),
        from,
        to: req.target.to_string(),
        seconds,
        leader_moved,
    })
}

/// Until the restarted member answers, has applied everything the others had committed when it
/// came back and the cluster is whole ([`crate::etcd::rolling::wait_back`], progress-aware:
/// scaled with its database, stopping only after `req.stall` without progress); then it must
/// run the target.
async fn wait_back(
    etcd: &EtcdClient,
    endpoints: &[observe::Endpoint],
    me: &observe::Endpoint,
    req: &UpgradeRequest,
    db_size: i64,
    binary: &str,
) -> Result<(), UpgradeError> {
    use crate::etcd::rolling::{self, RollingError};
    let all: Vec<rolling::Endpoint> = endpoints
        .iter()
        .map(|e| rolling::Endpoint {
            host: e.host.clone(),
            url: e.url.clone(),
        })
        .collect();
    let mine = rolling::Endpoint {
        host: me.host.clone(),
        url: me.url.clone(),
    };
    rolling::wait_back(etcd, &mine, &all, db_size, req.stall)
        .await
        .map_err(|e| match e {
            RollingError::NotBack {
                host,
                seconds,
                last,
            } => UpgradeError::NotBack {
                host,
                target: req.target,
                seconds,
                last,
            },
            RollingError::Stalled {
                host,
                applied,
                wanted,
                seconds,
            } => UpgradeError::Stalled {
                host,
                seconds,
                applied,
                wanted,
            },
            other => UpgradeError::NotBack {
                host: me.host.clone(),
                target: req.target,
                seconds: req.stall.as_secs(),
                last: crate::error::short_error(&other),
            },
        })?;
    let s = etcd.status_of(&me.url).await?;
    if EtcdVersion::parse(&s.version) != Some(req.target) {
        return Err(UpgradeError::WrongVersion {
            host: me.host.clone(),
            running: s.version,
            target: req.target,
            binary: binary.to_string(),
        });
    }
    Ok(())
}

/// Until etcd reports the target's minor as the cluster version (it raises it a few seconds
/// after the last member runs the new minor).
async fn wait_cluster_version(
    state_dir: &Path,
    endpoints: &[observe::Endpoint],
    target: EtcdVersion,
) -> Result<String, UpgradeError> {
    let within = Duration::from_secs(60);
    let started = Instant::now();
    let mut reported = String::from("nothing");
    loop {
        for e in endpoints {
            match observe::versions_of(state_dir, &e.url).await {
                Ok((_, cv)) if cv == target.minor_line() => {
                    return Ok(format!("{}.{}", cv.0, cv.1))
                }
                Ok((_, cv)) => reported = format!("{}.{}", cv.0, cv.1),
                Err(e) => reported = e,
            }
        }
        if started.elapsed() > within {
            return Err(UpgradeError::ClusterVersion {
                target,
                major: target.major,
                minor: target.minor,
                seconds: within.as_secs(),
                reported,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
