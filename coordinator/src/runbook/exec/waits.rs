//! The wait family: states of the cluster the run holds for, changing nothing.
//!
//! * The etcd quorum (cluster-wide, no one host's agent): the members elect a leader and each
//!   answers through the etcd API with haop's client certificate. Polled, never slept on.
//! * The VIP: keepalived on the masters has elected its MASTER, so exactly one master carries
//!   the address (each master's agent is asked for its interfaces, in parallel).
//!
//! A wait that is already satisfied checks as unchanged, and a run answers `false` either way,
//! so a converged cluster reports zero changes.

use std::time::{Duration, Instant};

use super::change::Change;
use super::context::RunContext;
use crate::agent::HostAgent;
use crate::runbook::plan::WaitAction;

/// How long apply waits for the etcd quorum.
pub const QUORUM_WITHIN: Duration = Duration::from_secs(60);
/// How long apply waits for one master to hold the VIP.
pub const VIP_WITHIN: Duration = Duration::from_secs(30);

/// A state the cluster did not reach in time.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// `detail` is the etcd API's account (`etcd::quorum_wait` answers text).
    #[error("no quorum of {members} etcd members: {detail}")]
    Quorum { members: usize, detail: String },
    #[error(
        "VIP {vip} is held by {} after {} s; check keepalived's log on the masters, the VIP's \
         interface name and that VRRP (IP protocol 112) passes between them",
        if .holders.is_empty() { "no master".to_string() } else { .holders.join(" and ") },
        .waited.as_secs()
    )]
    VipNotHeld {
        vip: String,
        holders: Vec<String>,
        waited: Duration,
    },
}

/// Whether the cluster is in the state `action` waits for.
pub async fn check(action: &WaitAction, ctx: &RunContext) -> Change {
    match action {
        WaitAction::EtcdQuorum { endpoints, members } => {
            let healthy = crate::etcd::quorum_wait::quorum_is_healthy(
                &ctx.state_dir,
                endpoints,
                *members,
                Duration::from_secs(3),
            )
            .await;
            if healthy {
                Change::Unchanged
            } else {
                Change::Run {
                    detail: format!("wait for a quorum of {members} members"),
                }
            }
        }
        WaitAction::VipHeld { vip, masters } => {
            let holders = vip_holders(ctx, vip, masters).await;
            if holders.len() == 1 {
                Change::Unchanged
            } else {
                Change::Run {
                    detail: format!(
                        "wait until one master holds {vip} (now: {})",
                        if holders.is_empty() {
                            "none".to_string()
                        } else {
                            holders.join(", ")
                        }
                    ),
                }
            }
        }
    }
}

/// Waits until the cluster is in the state `action` waits for; answers `false` (a wait changes
/// nothing).
pub async fn run(action: &WaitAction, ctx: &RunContext) -> Result<bool, WaitError> {
    match action {
        WaitAction::EtcdQuorum { endpoints, members } => crate::etcd::quorum_wait::wait_for_quorum(
            &ctx.state_dir,
            endpoints,
            *members,
            QUORUM_WITHIN,
        )
        .await
        .map_err(|detail| WaitError::Quorum {
            members: *members,
            detail,
        }),
        WaitAction::VipHeld { vip, masters } => {
            let deadline = Instant::now() + VIP_WITHIN;
            loop {
                let holders = vip_holders(ctx, vip, masters).await;
                if holders.len() == 1 {
                    return Ok(false);
                }
                if Instant::now() > deadline {
                    return Err(WaitError::VipNotHeld {
                        vip: vip.clone(),
                        holders,
                        waited: VIP_WITHIN,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The masters whose interfaces carry `vip` (asked through their agents, in parallel).
async fn vip_holders(ctx: &RunContext, vip: &str, masters: &[(String, String)]) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for (name, endpoint) in masters.iter().cloned() {
        let trust = ctx.trust.clone();
        let prefix = format!("{vip}/");
        set.spawn(async move {
            let agent = HostAgent::connect(&trust, &name, &endpoint, Duration::from_secs(2))
                .await
                .ok()?;
            let facts = agent.facts().await.ok()?;
            facts
                .interfaces
                .iter()
                .any(|i| i.addresses.iter().any(|a| a.starts_with(&prefix)))
                .then_some(name)
        });
    }
    let mut holders: Vec<String> = set.join_all().await.into_iter().flatten().collect();
    holders.sort();
    holders
}
