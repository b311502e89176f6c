//! What the planner reads ([`Observation`]) and what it asks for ([`MemberAction`]).
//!
//! Members are named by their etcd name, which haop sets to the inventory host name; a member
//! added but never started has an empty name in etcd and is matched by its peer URL instead.

/// One member as etcd's member list and the agents report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedMember {
    /// etcd's member ID.
    pub id: u64,
    /// etcd's member name; empty for a member added but never started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
    /// Whether the member's client endpoint answered; `None` when not asked or the answer is
    /// unknown (the planner then takes no action at all).
    pub reachable: Option<bool>,
    /// Whether its health check passed; `None` when unknown. A check that timed out is
    /// `Some(false)`, not `None`.
    pub healthy: Option<bool>,
    /// Its raft index from `endpoint status`; needed for the leader and a learner to promote.
    pub raft_index: Option<u64>,
    /// When the member was last seen connected (ms, same clock as [`Observation::now_ms`]).
    /// etcd keeps counting a member as active for [`super::ACTIVE_WINDOW_MS`] after that.
    pub active_since_ms: Option<u64>,
    pub is_leader: bool,
    /// For a learner: what its host says about its catching up (the process running, bytes
    /// arriving in its data dir, its raft index moving), as the executor's progress tracker
    /// sums it up. `None` when not asked (then the planner judges by etcd's answers alone).
    pub catch_up: Option<CatchUp>,
}

/// A learner's catch-up as seen from its host and its raft index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Its etcd process runs.
    pub running: bool,
    /// No progress (bytes in its data dir, its raft index) for longer than the stall timeout.
    pub stalled: bool,
}

impl ObservedMember {
    /// Reachable and healthy, both known.
    pub fn is_healthy(&self) -> bool {
        self.reachable == Some(true) && self.healthy == Some(true)
    }
}

/// One etcd member the inventory wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredMember {
    /// The inventory host name, used as the etcd member name.
    pub name: String,
    pub peer_url: String,
}

/// A snapshot of the cluster as seen at `now_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub members: Vec<ObservedMember>,
    pub now_ms: u64,
    /// From the inventory, in inventory order (heal repairs members in this order).
    pub desired: Vec<DesiredMember>,
}

/// One step for the executor. See the module docs for the plan contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberAction {
    /// Stop (and keep stopped) the etcd unit on `host`, so a crash-looping member cannot rejoin
    /// under its old member ID. Idempotent.
    StopUnit { host: String },
    /// Save a snapshot from the healthy member `from`. Precedes every membership change.
    Snapshot { from: String },
    /// etcd still counts `member` as active; observe again (and plan again) at `until_ms`.
    /// A barrier: always the last action of its plan.
    WaitUntilInactive { member: String, until_ms: u64 },
    /// `etcdctl member remove` (voter or learner).
    Remove { name: String, member_id: u64 },
    /// Remove the data dir of `host`, fenced: the executor verifies the host identity, that no
    /// member is that host's (by `member_id` when known, by name and peer URL always) and that
    /// the unit is stopped. After `Remove`, and before a missing member is added back (its
    /// data dir may hold the log of a member ID the cluster no longer has).
    Wipe {
        host: String,
        member_id: Option<u64>,
    },
    /// `etcdctl member add --learner`.
    AddLearner { name: String, peer_url: String },
    /// Render etcd.env with `--initial-cluster-state existing` and this `initial_cluster`
    /// (`name=url,...`, what `member add` answers), then start the unit.
    StartExisting {
        name: String,
        initial_cluster: String,
    },
    /// The learner lags the leader; observe again (and plan again) later. A barrier.
    WaitUntilCaughtUp {
        name: String,
        learner_index: u64,
        leader_index: u64,
    },
    /// The learner does not answer yet but its process runs and makes progress (a database
    /// arriving, entries applied): observe again later, never remove it. A barrier.
    WaitWhileCatchingUp { name: String },
    /// `etcdctl member promote`: the learner becomes a voter.
    Promote { name: String, member_id: u64 },
}

impl MemberAction {
    /// Whether this action changes etcd's membership (needs quorum and a snapshot first).
    pub fn is_membership_change(&self) -> bool {
        matches!(
            self,
            MemberAction::Remove { .. }
                | MemberAction::AddLearner { .. }
                | MemberAction::Promote { .. }
        )
    }

    /// Whether the action only waits (observes again later) and changes nothing.
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            MemberAction::WaitUntilInactive { .. }
                | MemberAction::WaitUntilCaughtUp { .. }
                | MemberAction::WaitWhileCatchingUp { .. }
        )
    }

    /// The action in a few words with its subject, for logs and the operator's action records
    /// (`remove etcd2 (8e9e05c52164694d)`).
    pub fn describe(&self) -> String {
        match self {
            MemberAction::StopUnit { host } => format!("stop-unit {host}"),
            MemberAction::Snapshot { from } => format!("snapshot from {from}"),
            MemberAction::Remove { name, member_id }
            | MemberAction::Promote { name, member_id } => {
                format!("{} {name} ({member_id:x})", self.kind())
            }
            MemberAction::Wipe { host, .. } => format!("wipe {host}"),
            MemberAction::AddLearner { name, .. } => format!("add-learner {name}"),
            MemberAction::StartExisting { name, .. } => format!("start-existing {name}"),
            MemberAction::WaitUntilInactive { member: name, .. }
            | MemberAction::WaitUntilCaughtUp { name, .. }
            | MemberAction::WaitWhileCatchingUp { name } => format!("{} {name}", self.kind()),
        }
    }

    /// A short name of the kind of action, stable (failpoints and logs use it).
    pub fn kind(&self) -> &'static str {
        match self {
            MemberAction::StopUnit { .. } => "stop-unit",
            MemberAction::Snapshot { .. } => "snapshot",
            MemberAction::WaitUntilInactive { .. } => "wait-until-inactive",
            MemberAction::Remove { .. } => "remove",
            MemberAction::Wipe { .. } => "wipe",
            MemberAction::AddLearner { .. } => "add-learner",
            MemberAction::StartExisting { .. } => "start-existing",
            MemberAction::WaitUntilCaughtUp { .. } => "wait-until-caught-up",
            MemberAction::WaitWhileCatchingUp { .. } => "wait-while-catching-up",
            MemberAction::Promote { .. } => "promote",
        }
    }

    /// Whether the executor must stop here, observe again and plan again.
    pub fn is_barrier(&self) -> bool {
        matches!(
            self,
            MemberAction::WaitUntilInactive { .. }
                | MemberAction::WaitUntilCaughtUp { .. }
                | MemberAction::WaitWhileCatchingUp { .. }
        )
    }
}
