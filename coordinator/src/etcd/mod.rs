//! The etcd lifecycle: everything haop does to a running etcd cluster lives here.
//!
//! Why one home: bootstrap is a runbook phase, but every later operation (recover, heal, add,
//! remove, replace, restore, compact/defrag/alarms, and the day-2 work: upgrades, CA rotation,
//! adoption, verified snapshots, the operator loop) is a sequence of the same few moves over
//! the same data: observe the members through the etcd API, ask the pure [`quorum`] planner
//! what is safe next, act through the etcd API ([`api`]) and the hosts' agents
//! ([`crate::agent`]), wait until the cluster has caught up, repeat. Keeping them together keeps
//! one copy of each move and one set of waits that scale with the database.
//!
//! * [`api`]: the etcd v3 API with haop's client certificate (member list, status, membership
//!   changes, snapshots, maintenance); errors classified so callers can tell "retry" from "stop".
//! * [`config`]: what a member's `etcd.env`, bootstrap file and unit look like (pure).
//! * [`quorum`]: the sans-IO planner, answering recover, heal, add and remove.
//! * [`quorum_wait`]: apply's quorum step.
//! * [`recover`] (recover and heal), [`scale`] (add, remove, replace), [`restore`] (lost
//!   quorum), [`maintenance`] (compact, defrag, alarms): the operations.
//! * [`member_host`]: what recovery does to a member's host (stop, fenced wipe, start into the
//!   existing cluster, seal), each step an ensure.
//! * [`catchup`]: following a member that catches up by its progress, not a fixed timeout.
//! * [`snapshots`]: snapshots a restore can count on: recorded, encrypted, verified by a real
//!   restore, copied to hosts, kept by the retention, on a schedule.
//! * [`kube_endpoints`]: the masters' view of the members (kubeadm's etcd endpoints), kept in
//!   step by add, remove and replace, one master at a time, each API server ready again
//!   ([`kube_readyz`]) before the next is touched.
//! * [`rolling`]: one member restarted inside a rolling change (leadership handed away
//!   first, back and caught up before the next).
//! * [`versions`]: the releases haop knows and their problems; [`upgrade`]: rolling upgrades
//!   (and rollbacks) between them, gated.

pub mod api;
pub mod catchup;
pub mod config;
pub mod kube_endpoints;
pub mod kube_readyz;
pub mod maintenance;
pub mod member_host;
pub mod probe;
pub mod quorum;
pub mod quorum_wait;
pub mod recover;
pub mod restore;
pub mod rolling;
pub mod scale;
pub mod snapshots;
pub mod upgrade;
pub mod versions;
