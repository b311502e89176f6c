//! The quorum planner: which etcd membership step is safe next, as a pure function.
//!
//! The seed's last chapter is an operator recovering a dead member by hand: `member remove`
//! answers `etcdserver: unhealthy cluster`, and from there every trap etcd users report is one
//! keystroke away (adding before removing, restarting a wiped member under its old ID, forgetting
//! `--initial-cluster-state existing`, a learner never promoted). The rules that avoid them are in
//! the etcd facts below (membership changes one at a time, remove before add, learners promoted
//! once caught up, a snapshot first, no restart under an old ID); this module is where they live.
//!
//! Why sans-IO: the planner takes an [`Observation`] (what etcd and the agents answered, taken by
//! someone else) and returns either the next [`MemberAction`]s or a typed [`Refusal`]. It never talks to
//! etcd, so every rule is unit- and property-tested without a cluster (STYLE.md items 9 and 10).
//! It fails closed: a member whose reachability or health is unknown, lost quorum, no healthy
//! leader or a learner still pending all mean *no action*, with a reason a person can act on.
//!
//! Lifecycle (the plan contract): a plan holds **at most one membership change** (`Remove`,
//! `AddLearner` or `Promote`), always directly preceded by a `Snapshot` from a healthy member and
//! followed only by the host-local step that depends on it (`Wipe` after `Remove`,
//! `StartExisting` after `AddLearner`). Every step in it is safe given the observation it was
//! planned from. A `Wait*` action is a barrier and is always last. The executor runs the plan,
//! observes again and calls the planner again; because every intermediate state (member removed,
//! learner added but not started, learner lagging, ...) is recognised, an interrupted recovery
//! resumes by simply rerunning. Recovering one dead voter therefore takes several rounds:
//!
//! 1. `StopUnit`, then `WaitUntilInactive` while etcd still counts the dead member as active;
//! 2. `StopUnit`, `Snapshot`, `Remove`, `Wipe` (remove first: adding first would raise the quorum
//!    while a member is down);
//! 3. `Snapshot`, `AddLearner`, `StartExisting` (a learner does not count towards quorum);
//! 4. `WaitUntilCaughtUp` while the learner lags the leader's raft index;
//! 5. `Snapshot`, `Promote`; then the planner answers [`Refusal::AlreadyHealthy`] /
//!    [`Refusal::NothingToDo`].
//!
//! Lost quorum is not planned here at all: it is refused with [`Refusal::QuorumLost`], which
//! points to `haop etcd restore` (every member from one snapshot, on explicit confirmation).

mod check;
mod plan;
mod refusal;
mod types;

pub use plan::{plan_heal, plan_recover, plan_remove};
pub use refusal::{Refusal, UnknownField};
pub use types::{CatchUp, DesiredMember, MemberAction, Observation, ObservedMember};

/// How long etcd's strict reconfiguration check keeps counting a member as active after it was
/// last connected (etcd's `HealthInterval`). Removing it earlier can fail with `unhealthy cluster`.
pub const ACTIVE_WINDOW_MS: u64 = 5_000;

/// A learner is promoted only when it lags the leader's raft index by at most this many entries.
pub const PROMOTE_MAX_LAG: u64 = 100;

/// Votes needed for a decision among `voters` voting members (learners do not vote).
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Whether a learner at `learner_index` has caught up with a leader at `leader_index`: within
/// [`PROMOTE_MAX_LAG`] entries, and at least 90 % of the leader's index (etcd's own readiness
/// rule for `member promote`, so etcd will not refuse a promotion the planner allows).
pub fn caught_up(learner_index: u64, leader_index: u64) -> bool {
    let lag = leader_index.saturating_sub(learner_index);
    lag <= PROMOTE_MAX_LAG && u128::from(learner_index) * 10 >= u128::from(leader_index) * 9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_strict_majority() {
        let q: Vec<usize> = (1..=7).map(quorum).collect();
        assert_eq!(q, [1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn caught_up_needs_small_lag_and_ninety_percent() {
        assert!(caught_up(1000, 1000));
        assert!(caught_up(950, 1000));
        assert!(!caught_up(899, 1000), "lag within 100 but below 90 %");
        assert!(!caught_up(0, 50), "below 90 % of a small index");
        assert!(!caught_up(10_000, 10_101), "more than 100 entries behind");
        assert!(caught_up(12, 10), "ahead of the observed leader index");
    }
}
