//! Property tests for the quorum planner: over random clusters of 1 to 7 members, run the
//! planner the way the executor would (plan, apply every action to a model of the cluster,
//! observe again, plan again) and check after every single action that it was safe.
//!
//! The model here is deliberately independent of the planner's own checks: it counts voters and
//! healthy voters from the mutated observation itself.

use haop_coordinator::etcd::quorum::{
    plan_heal, plan_recover, quorum, CatchUp, DesiredMember, MemberAction, Observation,
    ObservedMember, Refusal, UnknownField,
};
use proptest::prelude::*;

const NOW: u64 = 1_000_000;

fn url(i: usize) -> String {
    format!("https://10.0.0.{i}:2380")
}

#[derive(Debug, Clone)]
struct MemberSpec {
    learner: bool,
    /// 0 healthy, 1 down, 2 up but unhealthy, 3 reachability unknown, 4 health unknown
    state: u8,
    raft_behind: Option<u64>,
    last_seen_ago: Option<u64>,
    in_inventory: bool,
    unnamed: bool,
    /// For a learner: what its host says (process running, progress stalled), or not asked.
    catch_up: Option<(bool, bool)>,
}

fn member_spec() -> impl Strategy<Value = MemberSpec> {
    (
        prop::bool::weighted(0.2),
        prop_oneof![6 => Just(0u8), 3 => Just(1), 1 => Just(2), 1 => Just(3), 1 => Just(4)],
        prop::option::weighted(0.9, prop_oneof![Just(0u64), 0..50u64, 0..5_000u64]),
        prop::option::of(0..10_000u64),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.3),
        prop::option::weighted(0.5, (prop::bool::weighted(0.7), prop::bool::weighted(0.2))),
    )
        .prop_map(
            |(learner, state, raft_behind, last_seen_ago, in_inv, unnamed, catch_up)| MemberSpec {
                learner,
                state,
                raft_behind,
                last_seen_ago,
                // A learner always comes from a recovery of an inventory member.
                in_inventory: in_inv || learner,
                unnamed: unnamed && learner,
                catch_up: catch_up.filter(|_| learner),
            },
        )
}

#[derive(Debug, Clone)]
struct Case {
    obs: Observation,
    /// `None`: heal; `Some(name)`: recover that member.
    target: Option<String>,
    /// Whether a freshly started learner lags the leader at first.
    lagging: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(member_spec(), 1..=7),
        0..8usize,
        prop::bool::weighted(0.9),
        0..=2usize,
        prop::option::of(0..10usize),
        any::<bool>(),
    )
        .prop_map(|(specs, leader, leader_valid, extra, target, lagging)| {
            let leader_index = 10_000;
            let members: Vec<ObservedMember> = specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let (reachable, healthy) = match s.state {
                        0 => (Some(true), Some(true)),
                        1 => (Some(false), Some(false)),
                        2 => (Some(true), Some(false)),
                        3 => (None, Some(false)),
                        _ => (Some(true), None),
                    };
                    ObservedMember {
                        id: 0x1000 + i as u64,
                        name: if s.unnamed {
                            String::new()
                        } else {
                            format!("etcd{i}")
                        },
                        peer_urls: vec![url(i)],
                        is_learner: s.learner,
                        reachable,
                        healthy,
                        raft_index: s.raft_behind.map(|b| leader_index - b),
                        active_since_ms: s.last_seen_ago.map(|a| NOW - a),
                        is_leader: leader_valid && leader % specs.len() == i,
                        catch_up: s
                            .catch_up
                            .map(|(running, stalled)| CatchUp { running, stalled }),
                    }
                })
                .collect();
            let mut desired: Vec<DesiredMember> = specs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.in_inventory)
                .map(|(i, _)| DesiredMember {
                    name: format!("etcd{i}"),
                    peer_url: url(i),
                })
                .collect();
            desired.extend((0..extra).map(|j| DesiredMember {
                name: format!("new{j}"),
                peer_url: url(100 + j),
            }));
            let target = target.and_then(|t| {
                desired
                    .get(t % desired.len().max(1))
                    .map(|d| d.name.clone())
            });
            let mut obs = Observation {
                members,
                now_ms: NOW,
                desired,
            };
            // The leader's index is the reference the others are behind; make it exact.
            for m in obs.members.iter_mut().filter(|m| m.is_leader) {
                m.raft_index = m.raft_index.map(|_| leader_index);
            }
            Case {
                obs,
                target,
                lagging,
            }
        })
}

fn counts(obs: &Observation) -> (usize, usize) {
    let voters = obs.members.iter().filter(|m| !m.is_learner).count();
    let healthy = obs
        .members
        .iter()
        .filter(|m| !m.is_learner && m.reachable == Some(true) && m.healthy == Some(true))
        .count();
    (voters, healthy)
}

fn any_unknown(obs: &Observation) -> bool {
    obs.members
        .iter()
        .any(|m| m.reachable.is_none() || m.healthy.is_none())
}

/// The leader's raft index; 0 when not observed (the planner then must not promote).
fn leader_index(obs: &Observation) -> u64 {
    obs.members
        .iter()
        .find(|m| m.is_leader)
        .and_then(|m| m.raft_index)
        .unwrap_or(0)
}

fn desired_url(obs: &Observation, name: &str) -> String {
    obs.desired
        .iter()
        .find(|d| d.name == name)
        .unwrap()
        .peer_url
        .clone()
}

/// The member an action about inventory member `name` is about: by name, else by peer URL.
fn member_index(obs: &Observation, name: &str) -> Option<usize> {
    let url = desired_url(obs, name);
    obs.members
        .iter()
        .position(|m| m.name == name)
        .or_else(|| obs.members.iter().position(|m| m.peer_urls.contains(&url)))
}

/// Apply one plan to the model, asserting every action was safe when it ran.
fn apply(
    obs: &mut Observation,
    plan: &[MemberAction],
    lagging: bool,
    next_id: &mut u64,
) -> Result<(), TestCaseError> {
    prop_assert!(!plan.is_empty(), "an Ok plan has at least one action");
    let changes = plan.iter().filter(|a| a.is_membership_change()).count();
    prop_assert!(changes <= 1, "more than one membership change in {plan:?}");
    for (i, action) in plan.iter().enumerate() {
        if action.is_barrier() {
            prop_assert_eq!(i + 1, plan.len(), "a wait must end its plan: {:?}", plan);
        }
        if action.is_membership_change() {
            prop_assert!(
                i > 0 && matches!(plan[i - 1], MemberAction::Snapshot { .. }),
                "no snapshot right before {action:?} in {plan:?}"
            );
        }
        match action {
            MemberAction::StopUnit { host } => {
                if let Some(j) = member_index(obs, host) {
                    let m = &mut obs.members[j];
                    prop_assert!(
                        m.is_learner || m.reachable != Some(true) || m.healthy != Some(true),
                        "stopping the healthy voter {host}"
                    );
                    m.reachable = Some(false);
                    m.healthy = Some(false);
                }
            }
            MemberAction::Snapshot { from } => {
                let m = obs.members.iter().find(|m| &m.name == from);
                prop_assert!(
                    m.is_some_and(|m| m.reachable == Some(true) && m.healthy == Some(true)),
                    "snapshot from {from}, which is not healthy"
                );
            }
            MemberAction::WaitUntilInactive { until_ms, .. } => {
                prop_assert!(*until_ms > obs.now_ms);
                obs.now_ms = *until_ms;
            }
            MemberAction::Remove { member_id, .. } => {
                let before = obs.members.len();
                obs.members.retain(|m| m.id != *member_id);
                prop_assert_eq!(before - 1, obs.members.len(), "removing a non-member");
            }
            MemberAction::Wipe { host, member_id } => {
                prop_assert!(
                    obs.members.iter().all(|m| Some(m.id) != *member_id),
                    "wiping {member_id:x?}, still a member"
                );
                prop_assert!(
                    member_index(obs, host).is_none(),
                    "wiping {host}, which has a member"
                );
            }
            MemberAction::AddLearner { peer_url, .. } => {
                prop_assert!(
                    obs.members.iter().all(|m| !m.is_learner),
                    "adding a learner while one is pending: {:?}",
                    obs.members
                );
                prop_assert!(obs.members.iter().all(|m| !m.peer_urls.contains(peer_url)));
                *next_id += 1;
                obs.members.push(ObservedMember {
                    id: *next_id,
                    name: String::new(),
                    peer_urls: vec![peer_url.clone()],
                    is_learner: true,
                    reachable: Some(false),
                    healthy: Some(false),
                    raft_index: Some(0),
                    active_since_ms: None,
                    is_leader: false,
                    catch_up: None,
                });
            }
            MemberAction::StartExisting {
                name,
                initial_cluster,
            } => {
                let j = member_index(obs, name);
                prop_assert!(j.is_some(), "starting {name}, not a member");
                let j = j.unwrap();
                prop_assert!(
                    obs.members[j].is_learner,
                    "starting a voter with state existing"
                );
                let entries: Vec<&str> = initial_cluster.split(',').collect();
                let urls: usize = obs.members.iter().map(|m| m.peer_urls.len()).sum();
                prop_assert_eq!(entries.len(), urls, "initial cluster {}", initial_cluster);
                let own = format!("{name}={}", desired_url(obs, name));
                prop_assert!(entries.contains(&own.as_str()));
                let leader = leader_index(obs);
                let m = &mut obs.members[j];
                m.name = name.clone();
                m.reachable = Some(true);
                m.healthy = Some(true);
                m.raft_index = Some(if lagging { leader / 2 } else { leader });
                m.active_since_ms = Some(obs.now_ms);
            }
            MemberAction::WaitWhileCatchingUp { name } => {
                // The learner's database arrived and it answers now, caught up or nearly.
                let leader = leader_index(obs);
                let j = member_index(obs, name);
                prop_assert!(j.is_some(), "waiting for {name}, not a member");
                let m = &mut obs.members[j.unwrap()];
                prop_assert!(m.is_learner, "waiting for a voter to catch up");
                m.name = name.clone();
                m.reachable = Some(true);
                m.healthy = Some(true);
                m.raft_index = Some(if lagging { leader / 2 } else { leader });
                obs.now_ms += 1_000;
            }
            MemberAction::WaitUntilCaughtUp { name, .. } => {
                let leader = leader_index(obs);
                let j = member_index(obs, name).unwrap();
                obs.members[j].raft_index = Some(leader);
                obs.now_ms += 1_000;
            }
            MemberAction::Promote { member_id, .. } => {
                let leader = leader_index(obs);
                let m = obs.members.iter_mut().find(|m| m.id == *member_id);
                prop_assert!(m.is_some(), "promoting a non-member");
                let m = m.unwrap();
                prop_assert!(m.is_learner && m.reachable == Some(true) && m.healthy == Some(true));
                // Independent of the planner's rule: at most 100 entries and 90 % of the leader.
                let index = m.raft_index.unwrap_or(0);
                prop_assert!(
                    leader.saturating_sub(index) <= 100 && index * 10 >= leader * 9,
                    "promoting a learner at {index}, leader at {leader}"
                );
                m.is_learner = false;
            }
        }
        let (voters, healthy) = counts(obs);
        prop_assert!(
            healthy >= quorum(voters),
            "after {action:?}: {healthy} of {voters} voters healthy, quorum {}",
            quorum(voters)
        );
    }
    Ok(())
}

/// Whether the planner must be able to finish: everything known, quorum, one healthy leader
/// with a known index, every learner's index known.
fn recoverable(obs: &Observation) -> bool {
    let (voters, healthy) = counts(obs);
    let leaders: Vec<_> = obs
        .members
        .iter()
        .filter(|m| {
            m.is_leader && !m.is_learner && m.reachable == Some(true) && m.healthy == Some(true)
        })
        .collect();
    !any_unknown(obs)
        && !obs
            .members
            .iter()
            .any(|m| m.catch_up.is_some_and(|c| c.running && c.stalled))
        && healthy >= quorum(voters)
        && leaders.len() == 1
        && leaders[0].raft_index.is_some()
        && obs
            .members
            .iter()
            .filter(|m| m.is_learner)
            .all(|m| m.raft_index.is_some())
        && obs.members.iter().filter(|m| m.is_learner).count() <= 1
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_planned_action_keeps_quorum_and_the_rules(case in case()) {
        let Case { mut obs, target, lagging } = case;
        let initial = obs.clone();
        let mut next_id = 0x9000;
        let mut outcome = None;
        for round in 0..40 {
            let planned = match &target {
                Some(t) => plan_recover(&obs, t),
                None => plan_heal(&obs),
            };
            match planned {
                Ok(plan) => {
                    if round == 0 {
                        // Fail closed: nothing is ever planned on unknown state or lost quorum.
                        prop_assert!(!any_unknown(&obs), "planned {plan:?} on unknown state");
                        let (voters, healthy) = counts(&obs);
                        prop_assert!(healthy >= quorum(voters), "planned {plan:?} without quorum");
                    }
                    // A learner whose host says it runs and makes progress is never removed or
                    // wiped: it is catching up.
                    for a in &plan {
                        let victim = match a {
                            MemberAction::Remove { member_id, .. } => {
                                obs.members.iter().find(|m| m.id == *member_id)
                            }
                            MemberAction::Wipe { host, .. } => member_index(&obs, host).map(|j| &obs.members[j]),
                            _ => None,
                        };
                        prop_assert!(
                            !victim.is_some_and(|m| m.is_learner
                                && m.catch_up.is_some_and(|c| c.running && !c.stalled)),
                            "{a:?} of a learner that is catching up"
                        );
                    }
                    apply(&mut obs, &plan, lagging, &mut next_id)?;
                }
                Err(refusal) => {
                    let (voters, healthy) = counts(&obs);
                    if let Refusal::QuorumLost { healthy: h, voters: v, needed } = &refusal {
                        prop_assert_eq!((*h, *v, *needed), (healthy, voters, quorum(voters)));
                        prop_assert!(healthy < quorum(voters));
                    }
                    if let Refusal::StateUnknown { member, field } = &refusal {
                        if *field == UnknownField::RaftIndex {
                            let m = obs.members.iter().find(|m| &m.name == member);
                            let m = m.or_else(|| member_index(&obs, member).map(|j| &obs.members[j]));
                            prop_assert!(m.is_some_and(|m| m.raft_index.is_none()), "{}", refusal);
                        } else {
                            prop_assert!(any_unknown(&obs), "{}", refusal);
                        }
                    }
                    outcome = Some(refusal);
                    break;
                }
            }
        }
        let outcome = outcome.expect("the planner converges or refuses within 40 rounds");
        // Recovering one member while another's learner is pending is refused, by design.
        let other_learner = initial.members.iter().any(|m| {
            m.is_learner
                && target.as_ref().is_some_and(|t| member_index(&initial, t).map(|j| initial.members[j].id) != Some(m.id))
        });
        if recoverable(&initial) && !other_learner {
            prop_assert!(
                outcome.is_converged(),
                "a recoverable cluster ended in {outcome:?} ({outcome}); started from {initial:#?}"
            );
        }
    }
}
