//! One member restarted inside a rolling operation, without costing the cluster more than it
//! must: the move every rolling change shares (certificate renewal, a CA's bundle protocol,
//! adoption), each phase of which restarts every member once because etcd reads its TLS
//! settings only when it starts.
//!
//! A restarted leader costs an election (a second or more without writes: the election
//! timeout, then a campaign); a restarted follower costs nothing the clients see. So the member
//! hands leadership to a healthy follower first (`etcdctl move-leader`, a transfer of under a
//! heartbeat or two), is restarted, and the next member is touched only when this one answers
//! through the etcd API again, has applied everything the others had committed when it came
//! back, and the cluster has every member as a voter with a leader. The wait follows progress
//! (a member replaying a large database keeps applying) and gives up only after `stall` without
//! any.

use std::time::{Duration, Instant};

use haop_proto::v1 as pb;

use super::api::{EtcdApiError, EtcdClient};
use super::config::UNIT_NAME;
use super::probe::Probe;
use crate::agent::Agents;
use crate::agent::{AgentError, HostAgent};
use crate::inventory::Inventory;

/// Errors of one rolling restart; each names the host.
#[derive(Debug, thiserror::Error)]
pub enum RollingError {
    #[error("{host}: {source}")]
    Agent {
        host: String,
        #[source]
        source: AgentError,
    },
    #[error("{host} did not answer within {seconds} s after its restart (last: {last}); the other members were not touched. Look at its etcd log, then run the command again")]
    NotBack {
        host: String,
        seconds: u64,
        last: String,
    },
    #[error("{host} stopped catching up after its restart: applied {applied} of {wanted} entries, no progress for {seconds} s. Run the command again once it has caught up")]
    Stalled {
        host: String,
        applied: u64,
        wanted: u64,
        seconds: u64,
    },
    #[error("not restarting {host}: the cluster is not whole ({last}); restarting a member now could cost the quorum. Repair it first (`haop status`, `haop etcd heal`), then run the command again")]
    NotWhole { host: String, last: String },
    #[error("{host}: {source}")]
    Etcd {
        host: String,
        #[source]
        source: EtcdApiError,
    },
}

/// One member: its host and client URL.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub url: String,
}

/// What one restart cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restarted {
    pub host: String,
    /// From the restart to healthy and caught up.
    pub seconds: f64,
    pub leader_moved: bool,
}

/// When `me` leads, hands leadership to another member that answers (preferring those `prefer`
/// ranks lower) and waits up to 15 s until `me` reports the new leader. Answers to whom.
pub async fn hand_off_leadership<P: Probe, K: Ord>(
    etcd: &P,
    me: &Endpoint,
    members: &[Endpoint],
    prefer: impl Fn(&Endpoint, &super::api::EndpointStatus) -> K,
) -> Result<Option<String>, EtcdApiError> {
    let status = etcd.status_of(&me.url).await?;
    if status.leader_id != status.member_id {
        return Ok(None);
    }
    let mut candidates = Vec::new();
    for e in members.iter().filter(|e| e.host != me.host) {
        if let Ok(s) = etcd.status_of(&e.url).await {
            candidates.push((prefer(e, &s), e.host.clone(), s.member_id));
        }
    }
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let Some((_, to_host, to_id)) = candidates.into_iter().next() else {
        return Ok(None);
    };
    etcd.move_leader(&me.url, to_id).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(s) = etcd.status_of(&me.url).await {
            if s.leader_id == to_id {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Some(to_host))
}

/// One look: every one of `members` a voter (no learner), a leader known, every member
/// answering; or what is missing.
async fn is_whole<P: Probe>(etcd: &P, members: &[Endpoint]) -> Result<(), String> {
    let list = etcd
        .members()
        .await
        .map_err(|e| format!("member list: {}", crate::error::short_error(&e)))?;
    let voters = list.iter().filter(|m| !m.is_learner).count();
    if voters != members.len() || list.len() != members.len() {
        return Err(format!(
            "{voters} voters and {} learners, {} expected",
            list.len() - voters,
            members.len()
        ));
    }
    let mut leader = false;
    for e in members {
        etcd.healthy(&e.url).await.map_err(|err| {
            format!(
                "{} does not answer: {}",
                e.host,
                crate::error::short_error(&err)
            )
        })?;
        if !leader {
            leader = etcd.status_of(&e.url).await.is_ok_and(|s| s.leader_id != 0);
        }
    }
    if !leader {
        return Err("no leader".into());
    }
    Ok(())
}

/// Whether every one of `members` is a voter, there is a leader, and all answer (waiting up to
/// 10 s for it): the gate before `host` is changed or restarted (with a member already down, a
/// restart could cost the quorum). Callers check it before they write anything a restart would
/// act on.
pub async fn whole<P: Probe>(
    etcd: &P,
    host: &str,
    members: &[Endpoint],
) -> Result<(), RollingError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match is_whole(etcd, members).await {
            Ok(()) => return Ok(()),
            Err(last) if Instant::now() > deadline => {
                return Err(RollingError::NotWhole {
                    host: host.to_string(),
                    last,
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Restarts `me`'s etcd through `agent` (leadership handed away first) and waits until it is
/// back, caught up, and the cluster whole (see the module doc). Refuses, touching nothing, when
/// the cluster is not whole to begin with: with a member already down, a restart could cost
/// the quorum.
pub async fn restart_member<P: Probe>(
    etcd: &P,
    agent: &HostAgent,
    me: &Endpoint,
    members: &[Endpoint],
    stall: Duration,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Restarted, RollingError> {
    let etcd_err = |source| RollingError::Etcd {
        host: me.host.clone(),
        source,
    };
    whole(etcd, &me.host, members).await?;
    let db_size = etcd
        .status_of(&me.url)
        .await
        .map(|s| s.db_size)
        .unwrap_or(0);
    // Rolling changes go through `members` in order: hand over to one restarted already, so
    // that leadership does not move again at the next member.
    let mine = members.iter().position(|e| e.host == me.host);
    let moved = hand_off_leadership(etcd, me, members, |e, _| {
        let at = members.iter().position(|m| m.host == e.host);
        (at > mine, at)
    })
    .await
    .map_err(etcd_err)?;
    if let Some(to) = &moved {
        progress(format!("{}: leads; leadership handed to {to}", me.host));
    }
    progress(format!("{}: restarting {UNIT_NAME}", me.host));
    let started = Instant::now();
    agent
        .unit_action(UNIT_NAME, pb::Action::Restart)
        .await
        .map_err(|source| RollingError::Agent {
            host: me.host.clone(),
            source,
        })?;
    wait_back(etcd, me, members, db_size, stall).await?;
    let seconds = started.elapsed().as_secs_f64();
    progress(format!(
        "{}: healthy and caught up ({seconds:.1} s)",
        me.host
    ));
    Ok(Restarted {
        host: me.host.clone(),
        seconds,
        leader_moved: moved.is_some(),
    })
}

/// Until `me` answers, has applied what the others had committed when it first answered, the
/// cluster has a leader and all of `members` as voters.
pub async fn wait_back<P: Probe>(
    etcd: &P,
    me: &Endpoint,
    members: &[Endpoint],
    db_size: i64,
    stall: Duration,
) -> Result<(), RollingError> {
    let first_within = super::api::scaled_timeout(Duration::from_secs(60), db_size);
    let started = Instant::now();
    let mut wanted: Option<u64> = None;
    let mut applied = 0u64;
    let mut last_progress = Instant::now();
    loop {
        match etcd.status_of(&me.url).await {
            Ok(s) => {
                if wanted.is_none() {
                    let mut top = 0;
                    for e in members.iter().filter(|e| e.host != me.host) {
                        if let Ok(o) = etcd.status_of(&e.url).await {
                            top = top.max(o.raft_index);
                        }
                    }
                    wanted = Some(top);
                }
                if s.raft_applied_index > applied {
                    applied = s.raft_applied_index;
                    last_progress = Instant::now();
                }
                let want = wanted.unwrap_or(0);
                if applied >= want
                    && s.leader_id != 0
                    && etcd.healthy(&me.url).await.is_ok()
                    && is_whole(etcd, members).await.is_ok()
                {
                    return Ok(());
                }
                if last_progress.elapsed() > stall {
                    return Err(RollingError::Stalled {
                        host: me.host.clone(),
                        applied,
                        wanted: want,
                        seconds: stall.as_secs(),
                    });
                }
            }
            Err(e) => {
                let last = crate::error::short_error(&e);
                let limit = if wanted.is_none() {
                    first_within
                } else {
                    stall
                };
                let since = if wanted.is_none() {
                    started.elapsed()
                } else {
                    last_progress.elapsed()
                };
                if since > limit {
                    return Err(RollingError::NotBack {
                        host: me.host.clone(),
                        seconds: limit.as_secs(),
                        last,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A rolling change under way over a cluster's members: how to reach their hosts and etcd,
/// and how long a restarted member may go without progress. Adoption and CA rotation carry
/// one from member to member; each asks etcd through haop's own client or through another
/// [`Probe`] (adoption's first round asks through an agent).
pub struct Rollout<'a> {
    pub agents: Agents,
    pub etcd: EtcdClient,
    pub members: Vec<Endpoint>,
    pub stall: Duration,
    pub progress: &'a (dyn Fn(String) + Sync),
}

impl std::fmt::Debug for Rollout<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollout")
            .field("members", &self.members)
            .field("stall", &self.stall)
            .finish_non_exhaustive()
    }
}

/// The etcd members of `inv` as rolling changes walk them (the inventory's order).
pub fn members_of(inv: &Inventory) -> Vec<Endpoint> {
    inv.etcd_hosts()
        .iter()
        .map(|h| Endpoint {
            host: h.name.as_str().to_string(),
            url: inv.etcd_client_url(h),
        })
        .collect()
}

impl<'a> Rollout<'a> {
    /// A rollout over `inv`'s members with `agents` and haop's etcd client `etcd`.
    pub fn new(
        inv: &Inventory,
        agents: Agents,
        etcd: EtcdClient,
        progress: &'a (dyn Fn(String) + Sync),
    ) -> Rollout<'a> {
        Rollout {
            agents,
            etcd,
            members: members_of(inv),
            stall: inv.etcd.catch_up_stall.duration(),
            progress,
        }
    }

    /// The client URLs of the members.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|e| e.url.clone()).collect()
    }

    /// [`whole`], asked through `probe`.
    pub async fn whole<P: Probe>(&self, probe: &P, host: &str) -> Result<(), RollingError> {
        whole(probe, host, &self.members).await
    }

    /// [`restart_member`] of `host` (one of the members), asked through `probe`.
    pub async fn restart<P: Probe>(
        &self,
        probe: &P,
        agent: &HostAgent,
        host: &str,
    ) -> Result<Restarted, RollingError> {
        let me = self
            .members
            .iter()
            .find(|e| e.host == host)
            .cloned()
            .ok_or_else(|| RollingError::NotWhole {
                host: host.to_string(),
                last: "it is not one of the inventory's etcd members".into(),
            })?;
        restart_member(probe, agent, &me, &self.members, self.stall, self.progress).await
    }
}
