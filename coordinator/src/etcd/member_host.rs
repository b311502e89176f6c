//! What recovery does to a member's host, through its agent: stop its etcd, wipe its data dir
//! behind three fences, start it into the existing cluster, seal its bootstrap file.
//!
//! Why apart from the recovery loop: these are the steps that touch a host's disk, so each is an
//! idempotent ensure that can be run twice (the second run changes nothing) and interrupted
//! anywhere (a rerun converges), and each is tested that way against real agents served
//! in-process, without etcd or a lab. The loop in [`super::recover`] decides when to run them.

use haop_proto::v1 as pb;

use super::api::Member;
use super::config::{
    ClusterState, MemberConfig, BOOTSTRAP_ENV_FILE, ENV_FILE, SEALED_BOOTSTRAP_ENV, UNIT_NAME,
};
use crate::agent::{AgentError, HostAgent};

/// Why a host step failed.
#[derive(Debug, thiserror::Error)]
pub enum MemberHostError {
    /// A fence held: nothing was wiped.
    #[error("fence: {0}; nothing was wiped")]
    Fence(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Who the data dir belongs to, for the wipe's fences.
#[derive(Debug, Clone)]
pub struct Owner<'a> {
    /// The inventory host name (the member's name).
    pub host: &'a str,
    /// The member's peer URL in the inventory.
    pub peer_url: Option<&'a str>,
    /// The member ID it had, when known.
    pub member_id: Option<u64>,
}

/// Stops (and keeps stopped) the member's etcd; answers whether it changed anything.
pub async fn stop(agent: &HostAgent) -> Result<bool, AgentError> {
    agent.unit_action(UNIT_NAME, pb::Action::Stop).await
}

/// Moves the member's data dir aside, fenced three times: the agent reached is `owner.host`; no
/// member of `members` (the cluster as etcd lists it now) is the owner's, by ID, name or peer
/// URL; and, in the agent, the unit is stopped and `data_dir` is its declared data dir. Answers
/// where the data went (empty when there was nothing to move).
pub async fn wipe(
    agent: &HostAgent,
    owner: &Owner<'_>,
    members: &[Member],
    data_dir: &str,
) -> Result<pb::WipeDataDirResponse, MemberHostError> {
    let who = agent.who_am_i().await?;
    if who.hostname != owner.host {
        return Err(MemberHostError::Fence(format!(
            "the agent for {} says it is {:?}",
            owner.host, who.hostname
        )));
    }
    if let Some(m) = members.iter().find(|m| {
        Some(m.id) == owner.member_id
            || m.name == owner.host
            || owner
                .peer_url
                .is_some_and(|p| m.peer_urls.iter().any(|u| u == p))
    }) {
        return Err(MemberHostError::Fence(format!(
            "member {:x} of {} is still in the cluster",
            m.id, owner.host
        )));
    }
    Ok(agent.wipe_data_dir(UNIT_NAME, data_dir, false).await?)
}

/// Writes the member's env and bootstrap files for joining the existing cluster as
/// `initial_cluster` (what `member add` answered), its unit, and starts it; answers whether
/// anything changed (nothing does when it already runs with these files).
pub async fn start_existing(
    agent: &HostAgent,
    cfg: &MemberConfig,
    initial_cluster: &str,
) -> Result<bool, AgentError> {
    let mut cfg = cfg.clone();
    cfg.state = ClusterState::Existing;
    let mut changed = false;
    for (path, content) in [
        (ENV_FILE, cfg.env_file()),
        (
            BOOTSTRAP_ENV_FILE,
            cfg.bootstrap_env_file(Some(initial_cluster)),
        ),
    ] {
        changed |= agent.write_file(path, content, 0o640).await?;
    }
    changed |= agent
        .ensure_unit(
            UNIT_NAME,
            &cfg.unit_file(),
            std::slice::from_ref(&cfg.data_dir),
        )
        .await?;
    for a in [pb::Action::Enable, pb::Action::Start] {
        changed |= agent.unit_action(UNIT_NAME, a).await?;
    }
    Ok(changed)
}

/// Seals the member's bootstrap file once it is a voter (see [`SEALED_BOOTSTRAP_ENV`]): a member
/// whose data is lost then cannot start a cluster of its own or rejoin under its old ID.
pub async fn seal(agent: &HostAgent) -> Result<bool, AgentError> {
    agent
        .write_file(BOOTSTRAP_ENV_FILE, SEALED_BOOTSTRAP_ENV, 0o640)
        .await
}
