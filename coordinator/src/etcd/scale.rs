//! `haop etcd add HOST` and `haop etcd remove HOST`: one member at a time, quorum kept.
//!
//! Add: the host must already be an etcd host of the inventory (the operator adds it there
//! first). Its files are put in place with apply's own steps (hosts entries everywhere,
//! certificates through the CSR flow, the binary, etcd.env and the unit; never the "new
//! cluster" bootstrap file), then recovery's machinery joins it: a snapshot, `member add` as a
//! learner, a start with `--initial-cluster-state existing`, promotion once caught up, the
//! bootstrap file sealed.
//!
//! Remove: refused when the remaining healthy voters would be fewer than the quorum of the
//! remaining cluster. A snapshot first, then `member remove` (waiting while etcd answers
//! `unhealthy cluster`), then the host's unit is stopped and disabled and its data dir moved
//! aside. The operator then takes the host out of the inventory's etcd role.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use haop_proto::v1 as pb;

use crate::agent::{AgentError, HostAgent};
use crate::etcd::api::{EtcdApiError, EtcdClient};
use crate::etcd::config::UNIT_NAME;
use crate::etcd::kube_endpoints::{self, EndpointsError};
use crate::etcd::recover::{Progress, RecoverError, Recovery};
use crate::inventory::edit::EditError;
use crate::inventory::{Inventory, Role};
use crate::runbook::plan::FileAction;
use crate::runbook::{exec, Action, Phase, Runbook, RunbookError};

/// Errors of add and remove; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("{host} is not a host of the inventory; add it there (roles: [etcd]) first")]
    NotInInventory { host: String },
    #[error("{host} is already a member of the cluster")]
    AlreadyMember { host: String },
    #[error("{host} is not a member of the cluster (removed already? then take it out of the inventory's etcd role)")]
    NotMember { host: String },
    #[error("preparing {host}: {step}: {message}")]
    Prepare {
        host: String,
        step: String,
        message: String,
    },
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    #[error("the masters' etcd endpoints")]
    Endpoints(#[source] Box<EndpointsError>),
    #[error("the member change is done, but the inventory file was not updated")]
    Inventory(#[from] EditError),
    #[error(transparent)]
    Recover(#[from] RecoverError),
    #[error("etcd refused {what}")]
    Etcd {
        what: String,
        #[source]
        source: EtcdApiError,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl From<EndpointsError> for ScaleError {
    fn from(e: EndpointsError) -> Self {
        ScaleError::Endpoints(Box::new(e))
    }
}

/// Adds the inventory's host `host` to the running cluster as an etcd member. A host of the
/// inventory without the etcd role gets it; with `file`, the inventory file says so afterwards.
pub async fn add(
    state_dir: &Path,
    inventory: Inventory,
    file: Option<&Path>,
    host: &str,
    api_ready_within: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), ScaleError> {
    let recovery = Recovery::connect(state_dir, with_etcd_role(inventory.clone(), host)).await?;
    add_with(
        &recovery,
        state_dir,
        inventory,
        file,
        host,
        api_ready_within,
        progress,
    )
    .await
}

/// `inventory` with `host` given the etcd role (when it is a host of it).
fn with_etcd_role(mut inventory: Inventory, host: &str) -> Inventory {
    if let Some(h) = inventory.hosts.iter_mut().find(|h| h.name.as_str() == host) {
        if !h.roles.contains(&Role::Etcd) {
            h.roles.push(Role::Etcd);
        }
    }
    inventory
}

/// [`add`] as part of the operation `recovery` (its snapshot is shared).
async fn add_with(
    recovery: &Recovery,
    state_dir: &Path,
    mut inventory: Inventory,
    file: Option<&Path>,
    host: &str,
    api_ready_within: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), ScaleError> {
    let Some(h) = inventory.hosts.iter_mut().find(|h| h.name.as_str() == host) else {
        return Err(ScaleError::NotInInventory { host: host.into() });
    };
    if !h.roles.contains(&Role::Etcd) {
        h.roles.push(Role::Etcd);
    }
    let roles = h.roles.clone();
    let client = EtcdClient::connect(
        state_dir,
        &inventory.etcd_client_urls(),
        Duration::from_secs(2),
    )
    .await
    .map_err(|source| ScaleError::Etcd {
        what: "a connection".into(),
        source,
    })?;
    let members = client
        .member_list()
        .await
        .map_err(|source| ScaleError::Etcd {
            what: "the member list".into(),
            source,
        })?;
    let peer = inventory.etcd_peer_url(inventory.host(host).expect("checked above"));
    if members
        .iter()
        .any(|m| !m.is_learner && (m.name == host || m.peer_urls.contains(&peer)))
    {
        // Done by an earlier run whose end was lost: finish what followed it.
        progress(Progress::Action(format!(
            "{host} is a voter already (haop etcd recover {host} if it is unhealthy)"
        )));
        record(file, host, &roles, progress)?;
        for line in kube_endpoints::sync(state_dir, &inventory, api_ready_within).await? {
            progress(Progress::Action(line));
        }
        return Ok(());
    }
    // The host's files, with apply's own steps: /etc/hosts everywhere, and on the new host its
    // certificates, binary, etcd.env and unit; not the bootstrap file of a new cluster.
    let rb = Runbook::load(state_dir, inventory.clone())?;
    let (clients, errors) = rb.connect_all(Duration::from_secs(5)).await;
    if let Some(e) = errors.into_iter().next() {
        return Err(e.into());
    }
    let wanted = [
        Phase::Hosts,
        Phase::Certificates,
        Phase::EtcdBinary,
        Phase::EtcdConfig,
    ];
    for step in rb.steps.iter().filter(|s| {
        wanted.contains(&s.phase)
            && (s.phase == Phase::Hosts || s.target.is_host(host))
            && !matches!(s.action, Action::File(FileAction::IfAbsent { .. }))
    }) {
        let c = step.target.host().and_then(|h| clients.get(h));
        let changed = exec::run(step, c, &rb.ctx, &HashSet::new())
            .await
            .map_err(|e| ScaleError::Prepare {
                host: step.target.to_string(),
                step: step.name.clone(),
                message: crate::error_chain(&e),
            })?;
        if changed {
            progress(Progress::Action(format!("{}: {}", step.target, step.name)));
        }
    }
    recovery.recover(host, None, progress).await?;
    record(file, host, &roles, progress)?;
    // The API servers use the new member once it is a voter.
    for line in kube_endpoints::sync(state_dir, &inventory, api_ready_within).await? {
        progress(Progress::Action(line));
    }
    Ok(())
}

/// Writes `host`'s new roles into the inventory file (when there is one).
fn record(
    file: Option<&Path>,
    host: &str,
    roles: &[Role],
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), ScaleError> {
    let Some(path) = file else {
        return Ok(());
    };
    crate::inventory::edit::rewrite_roles(path, host, roles)?;
    let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    progress(Progress::Action(if roles.is_empty() {
        format!("{}: {host} taken out of the hosts", path.display())
    } else {
        format!(
            "{}: {host} has roles [{}]",
            path.display(),
            roles.join(", ")
        )
    }));
    Ok(())
}

/// Removes `host`'s member from the cluster, stops it and moves its data aside; with `file`,
/// the host loses the etcd role in the inventory file (and leaves it, when no role is left).
pub async fn remove(
    state_dir: &Path,
    inventory: Inventory,
    file: Option<&Path>,
    host: &str,
    api_ready_within: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), ScaleError> {
    let recovery = Recovery::connect(state_dir, inventory.clone()).await?;
    remove_with(
        &recovery,
        state_dir,
        inventory,
        file,
        host,
        api_ready_within,
        progress,
    )
    .await
}

/// [`remove`] as part of the operation `recovery` (its snapshot is shared).
async fn remove_with(
    recovery: &Recovery,
    state_dir: &Path,
    inventory: Inventory,
    file: Option<&Path>,
    host: &str,
    api_ready_within: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), ScaleError> {
    // The planner's answer first (quorum kept, no learner pending, every state known), so that
    // nothing changes when the removal would be refused.
    let obs = recovery.observe().await?;
    if !obs.members.iter().any(|m| m.name == host) {
        return Err(ScaleError::NotMember { host: host.into() });
    }
    crate::etcd::quorum::plan_remove(&obs, host).map_err(RecoverError::Refused)?;
    // The API servers stop using the member before it goes.
    let mut after = inventory.clone();
    let mut roles = Vec::new();
    if let Some(h) = after.hosts.iter_mut().find(|h| h.name.as_str() == host) {
        h.roles.retain(|r| *r != Role::Etcd);
        roles = h.roles.clone();
    }
    after.hosts.retain(|h| !h.roles.is_empty());
    for line in kube_endpoints::sync(state_dir, &after, api_ready_within).await? {
        progress(Progress::Action(line));
    }
    let id = recovery.remove_member(host, progress).await?;
    progress(Progress::Action(format!("removed member {host} ({id:x})")));
    // The host itself: stop and disable etcd, move its data aside (fenced by the agent).
    let trust = crate::trust::Trust::load(state_dir).map_err(RecoverError::from)?;
    if let Some(h) = inventory.host(host) {
        match HostAgent::connect(&trust, host, h.agent.as_str(), Duration::from_secs(5)).await {
            Ok(c) => {
                for a in [pb::Action::Stop, pb::Action::Disable] {
                    c.unit_action(UNIT_NAME, a).await?;
                }
                let data_dir = inventory.etcd.data_dir.display().to_string();
                let w = c.wipe_data_dir(UNIT_NAME, &data_dir, false).await?;
                progress(Progress::Action(format!(
                    "{host}: etcd stopped and disabled, data moved to {}",
                    w.moved_to
                )));
            }
            Err(e) => progress(Progress::Waiting(format!(
                "{host}'s agent does not answer ({}); stop etcd there before reusing the host",
                crate::error_chain(&e)
            ))),
        }
    }
    if file.is_some() {
        record(file, host, &roles, progress)?;
    } else {
        progress(Progress::Action(format!(
            "done: take {host} out of the inventory's etcd role"
        )));
    }
    Ok(())
}

/// Replaces `old`'s member with the inventory's etcd host `new`, one membership change at a
/// time: a dead `old` is removed first (adding first would raise the quorum while a member is
/// down); a healthy one stays until `new` is a voter, so the cluster never has less
/// redundancy than before.
pub async fn replace(
    state_dir: &Path,
    inventory: Inventory,
    file: Option<&Path>,
    old: &str,
    new: &str,
    api_ready_within: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), ScaleError> {
    let probe = Recovery::connect(state_dir, inventory.clone()).await?;
    let obs = probe.observe().await?;
    let Some(current) = obs.members.iter().find(|m| m.name == old) else {
        return Err(ScaleError::NotMember { host: old.into() });
    };
    if obs.members.iter().any(|m| m.name == new && !m.is_learner) {
        return Err(ScaleError::AlreadyMember { host: new.into() });
    }
    // One operation: the snapshot taken before its first membership change serves both.
    let both = with_etcd_role(inventory.clone(), new);
    let recovery = Recovery::connect(state_dir, both.clone()).await?;
    if current.is_healthy() {
        progress(Progress::Action(format!(
            "{old} is healthy: adding {new} first, then removing {old}"
        )));
        add_with(
            &recovery,
            state_dir,
            inventory,
            file,
            new,
            api_ready_within,
            progress,
        )
        .await?;
        remove_with(
            &recovery,
            state_dir,
            both,
            file,
            old,
            api_ready_within,
            progress,
        )
        .await
    } else {
        progress(Progress::Action(format!(
            "{old} is not healthy: removing it first, then adding {new}"
        )));
        remove_with(
            &recovery,
            state_dir,
            inventory.clone(),
            file,
            old,
            api_ready_within,
            progress,
        )
        .await?;
        let mut without_old = inventory;
        if let Some(h) = without_old
            .hosts
            .iter_mut()
            .find(|h| h.name.as_str() == old)
        {
            h.roles.retain(|r| *r != Role::Etcd);
        }
        without_old.hosts.retain(|h| !h.roles.is_empty());
        add_with(
            &recovery,
            state_dir,
            without_old,
            file,
            new,
            api_ready_within,
            progress,
        )
        .await
    }
}
