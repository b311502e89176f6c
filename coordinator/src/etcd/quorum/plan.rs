//! `plan_recover`, `plan_heal` and `plan_remove`: the recovery rules as one decision per member state.

use super::check::check_plan;
use super::{
    caught_up, quorum, DesiredMember, MemberAction, Observation, ObservedMember, Refusal,
    UnknownField, ACTIVE_WINDOW_MS,
};

/// What must hold before any membership change, found once per plan.
struct Facts<'a> {
    leader: &'a ObservedMember,
}

/// Plan the next safe step to bring the inventory member `target` back as a healthy voter.
///
/// Returns at most one membership change (see the module docs); call again after running it.
/// Refuses when `target` is already a healthy voter ([`Refusal::AlreadyHealthy`]), when any
/// member's state is unknown, quorum is lost, there is no healthy leader, or another learner is
/// pending.
pub fn plan_recover(obs: &Observation, target: &str) -> Result<Vec<MemberAction>, Refusal> {
    let desired = obs
        .desired
        .iter()
        .find(|d| d.name == target)
        .ok_or_else(|| Refusal::NotInInventory {
            name: target.to_owned(),
        })?;
    let facts = preconditions(obs)?;
    let current = find(obs, desired);
    if current.is_some_and(|m| !m.is_learner && m.is_healthy()) {
        return Err(Refusal::AlreadyHealthy {
            name: desired.name.clone(),
        });
    }
    if let Some(other) = obs
        .members
        .iter()
        .find(|m| m.is_learner && current.is_none_or(|c| c.id != m.id))
    {
        return Err(Refusal::LearnerPending {
            name: label(obs, other),
        });
    }
    let actions = match current {
        None => add(obs, &facts, desired)?,
        // A dead voter (a healthy one was answered above).
        Some(m) if !m.is_learner => remove(obs, &facts, desired, m, true),
        // A learner whose catch-up stalled is left as it is, for a person to look at.
        Some(m) if m.catch_up.is_some_and(|c| c.running && c.stalled) => {
            return Err(Refusal::CatchUpStalled {
                name: desired.name.clone(),
            })
        }
        Some(m) if m.is_healthy() => promote(&facts, desired, m)?,
        // Receiving the database or applying entries: a 2 GiB snapshot keeps a learner silent
        // for minutes. Waiting is the only safe move; removing it would start all over again.
        Some(m) if m.catch_up.is_some_and(|c| c.running) => {
            vec![MemberAction::WaitWhileCatchingUp {
                name: desired.name.clone(),
            }]
        }
        Some(m) if m.name.is_empty() => vec![MemberAction::StartExisting {
            name: desired.name.clone(),
            initial_cluster: initial_cluster(obs, desired, Some(m))?,
        }],
        // A learner that started once and died: remove it and add it again, never restart it.
        Some(m) => remove(obs, &facts, desired, m, false),
    };
    check_plan(obs, &actions)?;
    Ok(actions)
}

/// Plan the next safe step for the first member that needs one: a pending learner first (finish
/// what was started), then the inventory's members in order. One member at a time; call again
/// after running the plan. Refuses with [`Refusal::NothingToDo`] when every inventory member is
/// a healthy voter.
pub fn plan_heal(obs: &Observation) -> Result<Vec<MemberAction>, Refusal> {
    preconditions(obs)?;
    if let Some(learner) = obs.members.iter().find(|m| m.is_learner) {
        return match obs
            .desired
            .iter()
            .find(|d| find(obs, d).is_some_and(|m| m.id == learner.id))
        {
            Some(d) => plan_recover(obs, &d.name),
            None => Err(Refusal::LearnerPending {
                name: label(obs, learner),
            }),
        };
    }
    for d in &obs.desired {
        match find(obs, d) {
            Some(m) if !m.is_learner && m.is_healthy() => continue,
            _ => return plan_recover(obs, &d.name),
        }
    }
    Err(Refusal::NothingToDo)
}

/// Plan the removal of the member `name` from the cluster (`haop etcd remove`): a snapshot,
/// then `member remove`. Refuses when any member's state is unknown, quorum is lost or would be
/// lost by the removal (counting the healthy voters that remain), there is no healthy leader,
/// or another learner is pending. The host's unit and data are the caller's (they are not the
/// cluster's any more once the member is gone).
pub fn plan_remove(obs: &Observation, name: &str) -> Result<Vec<MemberAction>, Refusal> {
    let target = obs
        .members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Refusal::NotMember {
            name: name.to_owned(),
        })?;
    if let Some(other) = obs
        .members
        .iter()
        .find(|m| m.is_learner && m.id != target.id)
    {
        return Err(Refusal::LearnerPending {
            name: label(obs, other),
        });
    }
    let facts = preconditions(obs)?;
    // Never from the member that goes: the snapshot comes from the leader, or, when the leader
    // is the one removed, from another healthy voter.
    let from = if facts.leader.id != target.id {
        facts.leader
    } else {
        obs.members
            .iter()
            .find(|m| m.id != target.id && !m.is_learner && m.is_healthy())
            .ok_or_else(|| Refusal::WouldLoseQuorum {
                change: format!("removing {name}"),
                healthy: 1,
                voters: 1,
                healthy_after: 0,
                voters_after: 0,
                needed: 1,
            })?
    };
    let actions = vec![
        MemberAction::Snapshot {
            from: from.name.clone(),
        },
        MemberAction::Remove {
            name: name.to_owned(),
            member_id: target.id,
        },
    ];
    check_plan(obs, &actions)?;
    Ok(actions)
}

fn preconditions(obs: &Observation) -> Result<Facts<'_>, Refusal> {
    if obs.members.is_empty() {
        return Err(Refusal::NoMembersObserved);
    }
    for m in &obs.members {
        let field = match (m.reachable, m.healthy) {
            (None, _) => UnknownField::Reachability,
            (_, None) => UnknownField::Health,
            _ => continue,
        };
        return Err(Refusal::StateUnknown {
            member: label(obs, m),
            field,
        });
    }
    let voters = obs.members.iter().filter(|m| !m.is_learner).count();
    let healthy = obs
        .members
        .iter()
        .filter(|m| !m.is_learner && m.is_healthy())
        .count();
    let needed = quorum(voters);
    if healthy < needed {
        return Err(Refusal::QuorumLost {
            healthy,
            voters,
            needed,
        });
    }
    let mut leaders = obs
        .members
        .iter()
        .filter(|m| !m.is_learner && m.is_healthy() && m.is_leader);
    match (leaders.next(), leaders.next()) {
        (Some(leader), None) => Ok(Facts { leader }),
        _ => Err(Refusal::NoHealthyLeader),
    }
}

/// The observed member for an inventory member: by name, else (never started) by peer URL.
fn find<'a>(obs: &'a Observation, d: &DesiredMember) -> Option<&'a ObservedMember> {
    obs.members.iter().find(|m| m.name == d.name).or_else(|| {
        obs.members
            .iter()
            .find(|m| m.peer_urls.contains(&d.peer_url))
    })
}

/// A name a person recognises: etcd's, else the inventory's (by peer URL), else the hex ID.
fn label(obs: &Observation, m: &ObservedMember) -> String {
    if !m.name.is_empty() {
        return m.name.clone();
    }
    obs.desired
        .iter()
        .find(|d| m.peer_urls.contains(&d.peer_url))
        .map(|d| d.name.clone())
        .unwrap_or_else(|| format!("{:x}", m.id))
}

/// Remove a dead member, then wipe it. A voter etcd may still count as active is waited for.
fn remove(
    obs: &Observation,
    facts: &Facts<'_>,
    d: &DesiredMember,
    m: &ObservedMember,
    voter: bool,
) -> Vec<MemberAction> {
    let stop = MemberAction::StopUnit {
        host: d.name.clone(),
    };
    if let Some(until_ms) = m
        .active_since_ms
        .map(|t| t.saturating_add(ACTIVE_WINDOW_MS))
    {
        if voter && obs.now_ms < until_ms {
            return vec![
                stop,
                MemberAction::WaitUntilInactive {
                    member: d.name.clone(),
                    until_ms,
                },
            ];
        }
    }
    vec![
        stop,
        MemberAction::Snapshot {
            from: facts.leader.name.clone(),
        },
        MemberAction::Remove {
            name: d.name.clone(),
            member_id: m.id,
        },
        MemberAction::Wipe {
            host: d.name.clone(),
            member_id: Some(m.id),
        },
    ]
}

/// Add a missing member as a learner and start it into the existing cluster. Its unit is
/// stopped and its data dir wiped first: a run interrupted between removal and wipe, or a
/// member removed by hand, leaves a log under a member ID the cluster no longer has, and etcd
/// would start from it and refuse to join ("member has already been bootstrapped").
fn add(
    obs: &Observation,
    facts: &Facts<'_>,
    d: &DesiredMember,
) -> Result<Vec<MemberAction>, Refusal> {
    Ok(vec![
        MemberAction::StopUnit {
            host: d.name.clone(),
        },
        MemberAction::Wipe {
            host: d.name.clone(),
            member_id: None,
        },
        MemberAction::Snapshot {
            from: facts.leader.name.clone(),
        },
        MemberAction::AddLearner {
            name: d.name.clone(),
            peer_url: d.peer_url.clone(),
        },
        MemberAction::StartExisting {
            name: d.name.clone(),
            initial_cluster: initial_cluster(obs, d, None)?,
        },
    ])
}

/// Promote a healthy learner once it has caught up with the leader; otherwise wait.
fn promote(
    facts: &Facts<'_>,
    d: &DesiredMember,
    m: &ObservedMember,
) -> Result<Vec<MemberAction>, Refusal> {
    let unknown = |who: &ObservedMember| Refusal::StateUnknown {
        member: if who.name.is_empty() {
            d.name.clone()
        } else {
            who.name.clone()
        },
        field: UnknownField::RaftIndex,
    };
    let leader_index = facts
        .leader
        .raft_index
        .ok_or_else(|| unknown(facts.leader))?;
    let learner_index = m.raft_index.ok_or_else(|| unknown(m))?;
    if !caught_up(learner_index, leader_index) {
        return Ok(vec![MemberAction::WaitUntilCaughtUp {
            name: d.name.clone(),
            learner_index,
            leader_index,
        }]);
    }
    Ok(vec![
        MemberAction::Snapshot {
            from: facts.leader.name.clone(),
        },
        MemberAction::Promote {
            name: d.name.clone(),
            member_id: m.id,
        },
    ])
}

/// `name=url,...` for every member after the add, as `member add` answers it: etcd checks that
/// a member started with `existing` lists exactly the cluster's peer URLs.
fn initial_cluster(
    obs: &Observation,
    d: &DesiredMember,
    current: Option<&ObservedMember>,
) -> Result<String, Refusal> {
    let mut parts = Vec::new();
    for m in &obs.members {
        let name = if current.is_some_and(|c| c.id == m.id) {
            d.name.clone()
        } else if !m.name.is_empty() {
            m.name.clone()
        } else if let Some(other) = obs
            .desired
            .iter()
            .find(|o| m.peer_urls.contains(&o.peer_url))
        {
            // Not published its name yet; etcd matches `existing` members by peer URL anyway.
            other.name.clone()
        } else {
            return Err(Refusal::UnstartedMember {
                member_id: m.id,
                peer_url: m.peer_urls.first().cloned().unwrap_or_default(),
            });
        };
        parts.extend(m.peer_urls.iter().map(|u| format!("{name}={u}")));
    }
    if current.is_none() {
        parts.push(format!("{}={}", d.name, d.peer_url));
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests;
