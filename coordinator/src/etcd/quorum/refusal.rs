//! Why the planner did not plan: each reason says what to do about it.

/// Which part of a member's state was not observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownField {
    Reachability,
    Health,
    RaftIndex,
}

impl std::fmt::Display for UnknownField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnknownField::Reachability => "reachability",
            UnknownField::Health => "health",
            UnknownField::RaftIndex => "raft index",
        })
    }
}

/// The planner's typed "no". Nothing was planned, so nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no etcd members were observed; check that the members' endpoints are reachable")]
    NoMembersObserved,
    #[error(
        "the {field} of member {member} is unknown; haop changes membership only when every \
         member's state is known, observe again"
    )]
    StateUnknown { member: String, field: UnknownField },
    #[error(
        "{healthy} of {voters} voters are healthy, below the quorum of {needed}: quorum is lost and \
         membership cannot change; bring back the members that are down or cut off (their hosts, \
         their network), and only if they are lost for good, restore every member from one \
         snapshot with `haop etcd restore` (writes after the snapshot are lost)"
    )]
    QuorumLost {
        healthy: usize,
        voters: usize,
        needed: usize,
    },
    #[error(
        "{healthy} of {voters} voters are healthy; {change} would leave {healthy_after} of \
         {voters_after}, below the quorum of {needed}"
    )]
    WouldLoseQuorum {
        change: String,
        healthy: usize,
        voters: usize,
        healthy_after: usize,
        voters_after: usize,
        needed: usize,
    },
    #[error("no single healthy leader among the voters; wait for an election and observe again")]
    NoHealthyLeader,
    #[error(
        "learner {name} is still pending; finish it first (recover {name} again to start or \
         promote it), one membership change at a time"
    )]
    LearnerPending { name: String },
    #[error("{name} is not an etcd member in the inventory")]
    NotInInventory { name: String },
    #[error(
        "member {member_id:x} ({peer_url}) was added but never started and is not in the inventory; \
         remove it with `haop etcd remove` first"
    )]
    UnstartedMember { member_id: u64, peer_url: String },
    #[error(
        "learner {name} made no progress for longer than the stall timeout (no bytes arriving \
         in its data dir, no entries applied); it was left as it is: check its host (disk, \
         network to the leader, its etcd log) and run the command again to keep waiting"
    )]
    CatchUpStalled { name: String },
    #[error("{name} is not a member of the cluster")]
    NotMember { name: String },
    #[error("nothing to do: {name} is a healthy voter")]
    AlreadyHealthy { name: String },
    #[error("nothing to do: every etcd member in the inventory is a healthy voter")]
    NothingToDo,
}

impl Refusal {
    /// Whether the refusal means "already converged" rather than "unsafe": a heal loop treats
    /// these as success.
    pub fn is_converged(&self) -> bool {
        matches!(self, Refusal::AlreadyHealthy { .. } | Refusal::NothingToDo)
    }
}
