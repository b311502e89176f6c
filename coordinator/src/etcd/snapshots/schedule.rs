//! `haop etcd snapshot schedule`: save, verify, copy and prune, every `etcd.snapshots.interval`.
//!
//! Why a long-running command and not a cron line: each round is four steps that depend on each
//! other (only a verified snapshot is copied; the retention protects the newest verified one),
//! and a failed step must be logged and retried at the next round rather than lost in a mail
//! spool. The haop .deb ships `haop-snapshots.service`, which runs it under systemd
//! (`Restart=on-failure`), as the operator's machine or any host that holds the state dir.
//!
//! One round ([`round`]): a snapshot into the state dir from the first member that answers;
//! its verification by restore ([`super::verify`]); when verified, its copies on
//! `etcd.snapshots.copies` hosts ([`super::copies`]); then the retention (`etcd.retention`) in
//! the state dir and on every host. A round that cannot save is an error for that round only;
//! a snapshot that fails verification is kept, recorded as failed (list says why), and not
//! copied.
//!
//! Lifecycle: [`run`] reads the inventory again before each round (a changed interval or
//! retention takes effect without a restart; an invalid file is logged and the last good one
//! kept), runs the round, then sleeps until the next one is due. `shutdown` ending (SIGTERM,
//! Ctrl-C) ends it at once, also in the middle of a round: the round's future is dropped,
//! which removes its temp files and scratch directory and kills its throwaway etcd.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::copies::{self, Replicated};
use super::crypt::SnapshotKey;
use super::meta::Verification;
use super::verify::{self, Tools};
use super::{prune, save, SnapshotError};
use crate::agent::Agents;
use crate::inventory::Inventory;

/// Errors that end a round early; the next round starts afresh.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("the snapshot could not be saved")]
    Save(#[source] SnapshotError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error(transparent)]
    Copy(Box<copies::CopyError>),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("cannot read the inventory {}", .path.display())]
    Inventory {
        path: PathBuf,
        #[source]
        source: Box<crate::inventory::InventoryError>,
    },
}

impl From<copies::CopyError> for ScheduleError {
    fn from(e: copies::CopyError) -> Self {
        ScheduleError::Copy(Box::new(e))
    }
}

/// What one round did.
#[derive(Debug, Clone, Default)]
pub struct Round {
    pub saved: Option<PathBuf>,
    pub verification: Option<Verification>,
    pub copies: Replicated,
    /// Snapshots the retention removed from the state dir.
    pub removed: Vec<PathBuf>,
    /// Copies the retention removed from hosts, `(host, name)`.
    pub removed_copies: Vec<(String, String)>,
}

/// One round: save, verify, copy when verified, prune (state dir and hosts). `say` hears a line
/// per step.
pub async fn round(
    state_dir: &Path,
    inventory: &Inventory,
    tools: &Tools,
    say: &(dyn Fn(String) + Sync),
) -> Result<Round, ScheduleError> {
    let mut out = Round::default();
    let saved = save(state_dir, inventory, None, &|_, _| {})
        .await
        .map_err(ScheduleError::Save)?;
    say(format!(
        "saved {} from {} (revision {}, {} keys, {} bytes)",
        saved.path.display(),
        saved.meta.member,
        saved.meta.revision,
        saved.meta.key_count,
        saved.meta.size
    ));
    for gone in &saved.removed {
        say(format!(
            "deleted snapshot {} (etcd.retention)",
            gone.display()
        ));
        out.removed.push(gone.clone());
    }
    let path = saved.path.clone();
    out.saved = Some(path.clone());
    let report = verify::verify(state_dir, tools, &path).await?;
    let v = report.verification;
    say(format!(
        "{} {}: {}",
        if v.ok {
            "verified"
        } else {
            "FAILED verification:"
        },
        path.display(),
        v.detail
    ));
    let verified = v.ok;
    out.verification = Some(v);
    let key = SnapshotKey::load_or_create(state_dir)
        .map_err(SnapshotError::from)
        .map_err(ScheduleError::Save)?;
    let trust = std::sync::Arc::new(crate::trust::Trust::load(state_dir)?);
    let agents = Agents::new(trust, inventory);
    let wanted = inventory.etcd.snapshots.copies;
    if verified && wanted > 0 {
        out.copies = copies::replicate(inventory, &agents, &key, &path, wanted, say).await?;
        if out.copies.total < wanted as usize {
            say(format!(
                "{} has {} of the {wanted} copies etcd.snapshots.copies asks for",
                path.display(),
                out.copies.total
            ));
        }
    }
    let retention = &inventory.etcd.retention;
    for gone in prune(state_dir, inventory.cluster.as_str(), retention) {
        say(format!(
            "deleted snapshot {} (etcd.retention)",
            gone.display()
        ));
        out.removed.push(gone);
    }
    out.removed_copies = copies::prune_hosts(inventory, &agents, &key, retention, say).await;
    Ok(out)
}

/// Runs rounds until `shutdown` ends (or after `rounds` rounds, when given), reading the
/// inventory at `inventory_path` before each; `interval` overrides the inventory's. `say`
/// hears every line worth logging. Answers how many rounds completed.
pub async fn run(
    state_dir: &Path,
    inventory_path: &Path,
    interval: Option<Duration>,
    rounds: Option<u64>,
    shutdown: impl Future<Output = ()>,
    say: &(dyn Fn(String) + Sync),
) -> Result<u64, ScheduleError> {
    let load = || {
        Inventory::load(inventory_path)
            .map(|(inv, _)| inv)
            .map_err(|source| ScheduleError::Inventory {
                path: inventory_path.to_path_buf(),
                source: Box::new(source),
            })
    };
    let mut inventory = load()?;
    let tools = Tools::find(&inventory)?;
    say(format!(
        "snapshot schedule of {}: every {}, {} copies, verified with {} and {}",
        inventory.cluster.as_str(),
        interval
            .map(|d| format!("{} s", d.as_secs()))
            .unwrap_or_else(|| inventory.etcd.snapshots.interval.to_string()),
        inventory.etcd.snapshots.copies,
        tools.restore.program().display(),
        tools.etcd.display()
    ));
    tokio::pin!(shutdown);
    let mut done = 0u64;
    loop {
        let started = Instant::now();
        match load() {
            Ok(inv) => inventory = inv,
            Err(e) => say(format!(
                "keeping the last good inventory: {}",
                crate::error_chain(&e)
            )),
        }
        let every = interval.unwrap_or_else(|| inventory.etcd.snapshots.interval.duration());
        tokio::select! {
            r = round(state_dir, &inventory, &tools, say) => match r {
                Ok(_) => {}
                Err(e) => say(format!("round failed: {}", crate::error_chain(&e))),
            },
            _ = &mut shutdown => {
                say("stopping in the middle of a round (its temp files are removed)".into());
                return Ok(done);
            }
        }
        done += 1;
        if rounds.is_some_and(|n| done >= n) {
            return Ok(done);
        }
        let next = every.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = &mut shutdown => {
                say("stopping".into());
                return Ok(done);
            }
        }
    }
}
