use super::*;
use crate::etcd::quorum::check::check_plan;
use crate::etcd::quorum::CatchUp;

const NOW: u64 = 1_000_000;

fn url(i: u64) -> String {
    format!("https://10.0.0.{i}:2380")
}

fn voter(i: u64) -> ObservedMember {
    ObservedMember {
        id: 0x100 + i,
        name: format!("etcd{i}"),
        peer_urls: vec![url(i)],
        is_learner: false,
        reachable: Some(true),
        healthy: Some(true),
        raft_index: Some(5_000),
        active_since_ms: Some(NOW),
        is_leader: i == 1,
        catch_up: None,
    }
}

fn dead(mut m: ObservedMember, last_seen_ms: u64) -> ObservedMember {
    m.reachable = Some(false);
    m.healthy = Some(false);
    m.raft_index = None;
    m.active_since_ms = Some(last_seen_ms);
    m.is_leader = false;
    m
}

fn seed() -> Observation {
    Observation {
        members: (1..=3).map(voter).collect(),
        now_ms: NOW,
        desired: (1..=3)
            .map(|i| DesiredMember {
                name: format!("etcd{i}"),
                peer_url: url(i),
            })
            .collect(),
    }
}

fn snap() -> MemberAction {
    MemberAction::Snapshot {
        from: "etcd1".into(),
    }
}

/// The seed's chapter: etcd3 SIGKILLed and wiped, recovered round by round as the executor
/// would, observing again after every plan.
#[test]
fn seed_scenario_recovers_a_wiped_member_in_safe_rounds() {
    let mut obs = seed();
    obs.members[2] = dead(voter(3), NOW - 1_000);
    let id = obs.members[2].id;

    // Round 1: just crashed, etcd still counts it as active: stop it and wait, do not fail.
    assert_eq!(
        plan_recover(&obs, "etcd3").unwrap(),
        [
            MemberAction::StopUnit {
                host: "etcd3".into()
            },
            MemberAction::WaitUntilInactive {
                member: "etcd3".into(),
                until_ms: NOW + 4_000
            },
        ]
    );
    // heal picks the same member.
    assert_eq!(plan_heal(&obs), plan_recover(&obs, "etcd3"));

    // Round 2: past the window: snapshot, remove, then wipe (never wipe a member).
    obs.now_ms = NOW + 4_000;
    assert_eq!(
        plan_recover(&obs, "etcd3").unwrap(),
        [
            MemberAction::StopUnit {
                host: "etcd3".into()
            },
            snap(),
            MemberAction::Remove {
                name: "etcd3".into(),
                member_id: id
            },
            MemberAction::Wipe {
                host: "etcd3".into(),
                member_id: Some(id)
            },
        ]
    );

    // Round 3: removed: its unit stopped and data dir wiped again (a run interrupted between
    // remove and wipe leaves the old log there), then added as a learner and started into the
    // existing cluster.
    obs.members.pop();
    let initial = format!("etcd1={},etcd2={},etcd3={}", url(1), url(2), url(3));
    assert_eq!(
        plan_recover(&obs, "etcd3").unwrap(),
        [
            MemberAction::StopUnit {
                host: "etcd3".into()
            },
            MemberAction::Wipe {
                host: "etcd3".into(),
                member_id: None
            },
            snap(),
            MemberAction::AddLearner {
                name: "etcd3".into(),
                peer_url: url(3)
            },
            MemberAction::StartExisting {
                name: "etcd3".into(),
                initial_cluster: initial.clone()
            },
        ]
    );

    // Interrupted between add and start: the unstarted learner (no name yet) is started again.
    let mut learner = ObservedMember {
        id: 0x999,
        name: String::new(),
        is_learner: true,
        ..dead(voter(3), 0)
    };
    learner.active_since_ms = None;
    obs.members.push(learner);
    assert_eq!(
        plan_recover(&obs, "etcd3").unwrap(),
        [MemberAction::StartExisting {
            name: "etcd3".into(),
            initial_cluster: initial
        }]
    );

    // Round 4: started, still lagging: wait, do not promote.
    let learner = &mut obs.members[2];
    learner.name = "etcd3".into();
    learner.reachable = Some(true);
    learner.healthy = Some(true);
    learner.raft_index = Some(1_200);
    assert_eq!(
        plan_recover(&obs, "etcd3").unwrap(),
        [MemberAction::WaitUntilCaughtUp {
            name: "etcd3".into(),
            learner_index: 1_200,
            leader_index: 5_000
        }]
    );

    // Round 5: caught up: snapshot, promote.
    obs.members[2].raft_index = Some(4_990);
    assert_eq!(
        plan_recover(&obs, "etcd3").unwrap(),
        [
            snap(),
            MemberAction::Promote {
                name: "etcd3".into(),
                member_id: 0x999
            }
        ]
    );

    // Done.
    obs.members[2].is_learner = false;
    assert_eq!(
        plan_recover(&obs, "etcd3"),
        Err(Refusal::AlreadyHealthy {
            name: "etcd3".into()
        })
    );
    assert_eq!(plan_heal(&obs), Err(Refusal::NothingToDo));
}

#[test]
fn two_of_three_dead_is_refused_with_quorum_lost_and_no_actions() {
    let mut obs = seed();
    obs.members[1] = dead(voter(2), 0);
    obs.members[2] = dead(voter(3), 0);
    let want = Refusal::QuorumLost {
        healthy: 1,
        voters: 3,
        needed: 2,
    };
    assert_eq!(plan_recover(&obs, "etcd3"), Err(want.clone()));
    assert_eq!(plan_recover(&obs, "etcd2"), Err(want.clone()));
    assert_eq!(plan_heal(&obs), Err(want.clone()));
    let msg = want.to_string();
    assert!(
        msg.contains("1 of 3 voters are healthy") && msg.contains("haop etcd restore"),
        "{msg}"
    );
}

#[test]
fn a_pending_learner_blocks_adding_another() {
    let mut obs = seed();
    obs.desired.push(DesiredMember {
        name: "etcd4".into(),
        peer_url: url(4),
    });
    obs.desired.push(DesiredMember {
        name: "etcd5".into(),
        peer_url: url(5),
    });
    let mut learner = voter(4);
    learner.is_learner = true;
    learner.raft_index = Some(10);
    obs.members.push(learner);
    assert_eq!(
        plan_recover(&obs, "etcd5"),
        Err(Refusal::LearnerPending {
            name: "etcd4".into()
        })
    );
    // heal finishes the pending learner first instead.
    assert_eq!(
        plan_heal(&obs).unwrap(),
        [MemberAction::WaitUntilCaughtUp {
            name: "etcd4".into(),
            learner_index: 10,
            leader_index: 5_000
        }]
    );
    // A learner outside the inventory blocks heal entirely.
    obs.desired.retain(|d| d.name != "etcd4");
    assert_eq!(
        plan_heal(&obs),
        Err(Refusal::LearnerPending {
            name: "etcd4".into()
        })
    );
}

#[test]
fn a_learner_not_caught_up_is_not_promoted() {
    let mut obs = seed();
    obs.members[2].is_learner = true;
    for (index, promote) in [(4_899, false), (4_900, true), (0, false), (5_100, true)] {
        obs.members[2].raft_index = Some(index);
        let plan = plan_recover(&obs, "etcd3").unwrap();
        let promoted = plan
            .iter()
            .any(|a| matches!(a, MemberAction::Promote { .. }));
        assert_eq!(
            promoted, promote,
            "learner at {index}, leader at 5000: {plan:?}"
        );
    }
    // Without the leader's index the planner cannot know: no action.
    obs.members[0].raft_index = None;
    assert_eq!(
        plan_recover(&obs, "etcd3"),
        Err(Refusal::StateUnknown {
            member: "etcd1".into(),
            field: UnknownField::RaftIndex
        })
    );
}

#[test]
fn unknown_state_means_no_action() {
    for (reachable, healthy, field) in [
        (None, Some(false), UnknownField::Reachability),
        (Some(true), None, UnknownField::Health),
        (None, None, UnknownField::Reachability),
    ] {
        let mut obs = seed();
        obs.members[1] = dead(voter(2), 0);
        obs.members[2].reachable = reachable;
        obs.members[2].healthy = healthy;
        let want = Err(Refusal::StateUnknown {
            member: "etcd3".into(),
            field,
        });
        assert_eq!(plan_recover(&obs, "etcd2"), want);
        assert_eq!(plan_heal(&obs), want);
    }
}

#[test]
fn no_healthy_leader_means_no_action() {
    let mut obs = seed();
    obs.members[2] = dead(voter(3), 0);
    obs.members[0].is_leader = false;
    assert_eq!(plan_heal(&obs), Err(Refusal::NoHealthyLeader));
    obs.members[0].is_leader = true;
    obs.members[1].is_leader = true;
    assert_eq!(plan_heal(&obs), Err(Refusal::NoHealthyLeader));
}

#[test]
fn other_refusals() {
    let obs = seed();
    assert_eq!(
        plan_recover(&obs, "etcd9"),
        Err(Refusal::NotInInventory {
            name: "etcd9".into()
        })
    );
    let empty = Observation {
        members: vec![],
        ..seed()
    };
    assert_eq!(plan_heal(&empty), Err(Refusal::NoMembersObserved));
}

#[test]
fn a_dead_learner_that_ran_is_removed_not_restarted() {
    let mut obs = seed();
    let mut learner = dead(voter(3), NOW);
    learner.is_learner = true;
    obs.members[2] = learner;
    let id = obs.members[2].id;
    // No wait: etcd's active check guards voters only.
    assert_eq!(
        plan_heal(&obs).unwrap(),
        [
            MemberAction::StopUnit {
                host: "etcd3".into()
            },
            snap(),
            MemberAction::Remove {
                name: "etcd3".into(),
                member_id: id
            },
            MemberAction::Wipe {
                host: "etcd3".into(),
                member_id: Some(id)
            },
        ]
    );
}

#[test]
fn the_plan_check_refuses_a_change_below_quorum() {
    let mut obs = seed();
    obs.members[1] = dead(voter(2), 0);
    let bad = [
        snap(),
        MemberAction::Remove {
            name: "etcd3".into(),
            member_id: obs.members[2].id,
        },
    ];
    let err = check_plan(&obs, &bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "2 of 3 voters are healthy; removing etcd3 would leave 1 of 2, below the quorum of 2"
    );
    let twice = [
        MemberAction::AddLearner {
            name: "a".into(),
            peer_url: url(7),
        },
        MemberAction::AddLearner {
            name: "b".into(),
            peer_url: url(8),
        },
    ];
    assert_eq!(
        check_plan(&obs, &twice),
        Err(Refusal::LearnerPending { name: "b".into() })
    );
}

/// A learner that receives a large database does not answer for minutes. While its host says
/// its process runs and its data dir grows, it is waited for, whatever its name says; only a
/// stall stops the wait, and then nothing is done to it.
#[test]
fn a_catching_up_learner_is_waited_for_never_removed() {
    let mut obs = seed();
    obs.members.pop();
    let silent = |name: &str, catch_up| ObservedMember {
        id: 0x999,
        name: name.into(),
        peer_urls: vec![url(3)],
        is_learner: true,
        reachable: Some(false),
        healthy: Some(false),
        raft_index: None,
        active_since_ms: None,
        is_leader: false,
        catch_up,
    };
    let progressing = Some(CatchUp {
        running: true,
        stalled: false,
    });
    for name in ["", "etcd3"] {
        obs.members.truncate(2);
        obs.members.push(silent(name, progressing));
        assert_eq!(
            plan_recover(&obs, "etcd3").unwrap(),
            [MemberAction::WaitWhileCatchingUp {
                name: "etcd3".into()
            }],
            "learner named {name:?}"
        );
        assert_eq!(
            plan_heal(&obs).unwrap(),
            [MemberAction::WaitWhileCatchingUp {
                name: "etcd3".into()
            }]
        );
        obs.members[2].catch_up = Some(CatchUp {
            running: true,
            stalled: true,
        });
        assert_eq!(
            plan_recover(&obs, "etcd3"),
            Err(Refusal::CatchUpStalled {
                name: "etcd3".into()
            })
        );
    }
    // A started learner whose process is gone: removed and added again, as before.
    obs.members[2].catch_up = Some(CatchUp {
        running: false,
        stalled: false,
    });
    let plan = plan_recover(&obs, "etcd3").unwrap();
    assert!(
        plan.iter().any(|a| matches!(
            a,
            MemberAction::Remove {
                member_id: 0x999,
                ..
            }
        )),
        "{plan:?}"
    );
    // A lagging learner that answers but whose index stopped moving: stalled, not promoted.
    obs.members[2].reachable = Some(true);
    obs.members[2].healthy = Some(true);
    obs.members[2].raft_index = Some(10);
    obs.members[2].catch_up = Some(CatchUp {
        running: true,
        stalled: true,
    });
    assert!(matches!(
        plan_recover(&obs, "etcd3"),
        Err(Refusal::CatchUpStalled { .. })
    ));
}

#[test]
fn remove_asks_the_same_rules_as_recover() {
    let obs = seed();
    assert_eq!(
        plan_remove(&obs, "etcd2").unwrap(),
        [
            snap(),
            MemberAction::Remove {
                name: "etcd2".into(),
                member_id: 0x102
            }
        ]
    );
    // The leader goes: the snapshot comes from another healthy voter.
    let plan = plan_remove(&obs, "etcd1").unwrap();
    assert_eq!(
        plan[0],
        MemberAction::Snapshot {
            from: "etcd2".into()
        }
    );
    // A dead member among three: removing a healthy one would leave one of two.
    let mut one_dead = seed();
    one_dead.members[2] = dead(voter(3), NOW - 60_000);
    assert!(matches!(
        plan_remove(&one_dead, "etcd2"),
        Err(Refusal::WouldLoseQuorum { .. })
    ));
    // ...and removing the dead one is fine.
    assert!(plan_remove(&one_dead, "etcd3").is_ok());
    // Unknown state, a pending learner, a stranger: refused.
    let mut unknown = seed();
    unknown.members[1].healthy = None;
    assert!(matches!(
        plan_remove(&unknown, "etcd3"),
        Err(Refusal::StateUnknown { .. })
    ));
    let mut pending = seed();
    pending.members.push(ObservedMember {
        id: 0x999,
        name: "etcd4".into(),
        is_learner: true,
        ..voter(4)
    });
    assert!(matches!(
        plan_remove(&pending, "etcd3"),
        Err(Refusal::LearnerPending { .. })
    ));
    assert!(matches!(
        plan_remove(&seed(), "etcd9"),
        Err(Refusal::NotMember { .. })
    ));
}
