//! `haop status`: the whole cluster's health in one report, for people and for monitoring.
//!
//! Why: the seed checks health with a long etcdctl command per node; a monitoring job needs one
//! call and one exit code. [`collect`] asks every host's agent and every etcd endpoint at once,
//! each under the same per-host timeout, so a dead host shows as unreachable within that timeout
//! and never delays the others. It uses only read-only calls (GetFacts, UnitStatus, ReadFile of
//! certificates and drop-in files, WhoAmI; etcd status, member list and a health read), so a
//! `haop:reader` agent certificate is enough ([`StatusOptions::identity`]).
//!
//! Lifecycle: [`collect`] gathers what it can into a [`StatusReport`] (sections hosts, etcd,
//! units, VIP, certificates, drift and, with Kubernetes enabled, the API servers' `/readyz`
//! through the VIP and on each master), then [`assess`] (pure) turns the sections into
//! [`Problem`]s and the [`Verdict`]: 0 healthy, 1 degraded (a member unhealthy, a unit down, a
//! host unreachable, a certificate expiring within [`CERT_WARN_DAYS`] days, drift, an API server
//! not ready), 2 down (fewer than a majority of the inventory's etcd members healthy, or no
//! master holding the VIP while every master could be asked).
//!
//! `/readyz` never makes the verdict down, not even through the VIP. The issue reserves down
//! for the two failures of what haop itself keeps up (etcd's quorum, the VIP); an API server
//! that is not ready sits above both and is usually transient (starting, or its etcd client
//! reconnecting), and keepalived's own check moves the VIP away from a master whose API server
//! fails. A VIP not ready is reported as its own problem (clients see it), a master's names
//! the master; when no master holds the VIP, the VIP problem (down) already covers the VIP's
//! `/readyz` and it is not repeated. [`table::render`] writes it for a terminal, problems first;
//! `-o json|yaml` writes the report itself, whose schema is `docs/status-schema.json`
//! ([`SCHEMA_VERSION`]; fields are only ever added).

mod agent_io;
mod collect;
pub(crate) mod kube;
pub mod prometheus;
pub mod table;

/// What a probe says when the collection's deadline passed before an answer.
pub(crate) const LATE: &str = "no answer within the timeout";

/// A small file read from a host: its text, `None` when it does not exist, or why not.
pub(crate) type MaybeFile = Result<Option<String>, String>;

use crate::etcd::versions::EtcdVersion;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use collect::{collect, StatusError};

/// Version of the JSON/YAML schema (`docs/status-schema.json`). Fields are only added within a
/// version.
pub const SCHEMA_VERSION: u32 = 1;
/// The per-host timeout unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// A certificate that expires within this many days degrades the cluster.
pub const CERT_WARN_DAYS: i64 = 30;
/// A host clock further off than this from the coordinator's degrades the cluster (etcd itself
/// warns about peers' clock difference above 1 s).
pub const MAX_CLOCK_SKEW_MS: i64 = 1000;
/// A healthy member more raft entries than this behind the leader degrades the cluster.
pub const MAX_RAFT_LAG: u64 = 1000;
/// A database above this share of its quota degrades the cluster (etcd raises NOSPACE at 100 %).
pub const DB_QUOTA_WARN_PERCENT: u64 = 80;
/// etcd's default `--quota-backend-bytes` (2 GiB).
pub const DEFAULT_DB_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;

/// How [`collect`] asks.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// Per host and per etcd endpoint; the whole collection takes about this long at most.
    pub timeout: Duration,
    /// Client certificate and key (PEM files) for the agents, such as a `haop:reader`
    /// certificate; `None` uses the state dir's admin certificate.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Default for StatusOptions {
    fn default() -> Self {
        StatusOptions {
            timeout: DEFAULT_TIMEOUT,
            identity: None,
        }
    }
}

/// The whole report; `-o json|yaml` prints it as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub schema_version: u32,
    pub cluster: String,
    /// When the collection started, RFC 3339 (UTC).
    pub generated_at: String,
    /// How long the collection took.
    pub elapsed_ms: u64,
    /// The per-host timeout it ran with.
    pub timeout_ms: u64,
    /// The state dir's revocation list for the agent channel (its CRL number; 0: nothing was
    /// ever revoked), when the state dir could be read. Every agent should enforce it.
    #[serde(default)]
    pub revocation_generation: Option<u64>,
    pub verdict: Verdict,
    /// Every problem, worst first.
    pub problems: Vec<Problem>,
    pub hosts: Vec<HostStatus>,
    pub etcd: EtcdSection,
    pub units: Vec<UnitRow>,
    /// Absent when the inventory has no VIP.
    pub vip: Option<VipSection>,
    pub certificates: Vec<CertSummary>,
    pub drift: Vec<DriftRow>,
    /// Absent when the inventory has Kubernetes disabled (or no master).
    pub kubernetes: Option<KubernetesSection>,
    /// The state dir's snapshots of this cluster: the newest verified one and its age.
    #[serde(default)]
    pub snapshots: Option<SnapshotsSection>,
}

/// How bad things are; the exit code follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Down,
}

impl Health {
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Down => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub health: Health,
    /// 0 healthy, 1 degraded, 2 down.
    pub exit_code: u8,
    /// One line, such as `degraded: 2 problems (etcd member etcd3 is unhealthy; ...)`.
    pub summary: String,
}

/// Which section a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Hosts,
    Etcd,
    Units,
    Vip,
    Certificates,
    Drift,
    Kubernetes,
    Snapshots,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `degraded` or `down`.
    pub severity: Health,
    pub section: Section,
    /// The host concerned, when one is.
    pub host: Option<String>,
    pub message: String,
}

/// One host of the inventory, as its agent answered (or did not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub roles: Vec<String>,
    pub agent_endpoint: String,
    pub reachable: bool,
    /// Why the agent could not be asked.
    pub error: Option<String>,
    pub agent_version: Option<String>,
    pub uptime_seconds: Option<u64>,
    /// `systemd` or `supervisor`.
    pub service_manager: Option<String>,
    /// The agent's clock minus the coordinator's (at the middle of the call), milliseconds.
    pub clock_skew_ms: Option<i64>,
    /// How long GetFacts took, milliseconds.
    pub latency_ms: Option<u64>,
    /// On an etcd host: data dirs moved aside by recoveries (`PATH.wiped-*`), how many and
    /// their bytes (`etcd.retention.wiped_data_dirs` says how many are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_aside: Option<MovedAside>,
    /// The revocation list (CRL number) the agent enforces; 0 when none.
    #[serde(default)]
    pub revocation_generation: Option<u64>,
    /// This run installed the state dir's list on the agent (it had missed a revocation).
    #[serde(default)]
    pub revocation_pushed: bool,
    /// Why this run could not install the list.
    #[serde(default)]
    pub revocation_error: Option<String>,
}

/// Moved-aside data dirs on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedAside {
    pub count: u32,
    pub bytes: u64,
}

/// etcd as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtcdSection {
    /// etcd members in the inventory.
    pub expected_members: usize,
    /// Of those, how many answered the health read.
    pub healthy_members: usize,
    /// A majority of `expected_members`.
    pub quorum_needed: usize,
    pub has_quorum: bool,
    /// Of the inventory's members, how many answered their status (which a member serves
    /// without a leader, unlike the health read).
    #[serde(default)]
    pub answering_members: usize,
    /// A leader election in progress: too few members answer the health read, but a quorum of
    /// them answers its status and none names a leader that answers. Right after a leader
    /// dies this lasts about one election timeout; it is not a lost quorum.
    #[serde(default)]
    pub electing: bool,
    /// The leader's member ID (hex), as most members see it.
    pub leader_id: Option<String>,
    /// The leader's name (the inventory's host name when it is one of them).
    pub leader: Option<String>,
    /// Why the member list could not be read from any endpoint.
    pub member_list_error: Option<String>,
    /// The inventory's members in file order, then members the inventory does not know.
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The inventory host's name, or etcd's member name for a member the inventory lacks.
    pub name: String,
    /// Whether the inventory lists this member.
    pub in_inventory: bool,
    /// Whether etcd's member list has it.
    pub in_member_list: bool,
    /// Member ID, hex as etcdctl shows it.
    pub id: Option<String>,
    /// The client URL asked.
    pub endpoint: Option<String>,
    /// Answered a linearizable read.
    pub healthy: bool,
    pub health_latency_ms: Option<f64>,
    /// Why the health read or the status failed.
    pub error: Option<String>,
    pub is_leader: bool,
    pub is_learner: bool,
    pub raft_term: Option<u64>,
    pub raft_index: Option<u64>,
    pub raft_applied_index: Option<u64>,
    /// Leader's raft index minus this member's.
    pub raft_lag: Option<u64>,
    pub db_size_bytes: Option<i64>,
    pub db_size_in_use_bytes: Option<i64>,
    pub db_quota_bytes: i64,
    pub version: Option<String>,
    /// etcd's own errors and alarms from its status (such as NOSPACE).
    pub alarms: Vec<String>,
    pub peer_urls: Vec<String>,
    /// The peer URL the inventory gives (none for a member it lacks).
    pub expected_peer_url: Option<String>,
    /// Whether etcd's peer URLs are exactly the inventory's.
    pub peer_urls_match: bool,
}

/// One unit on one host that should run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRow {
    pub host: String,
    pub unit: String,
    pub installed: Option<bool>,
    /// `active`, `activating`, `inactive`, `failed`, `unknown`; absent when not asked.
    pub active_state: Option<String>,
    pub sub_state: Option<String>,
    pub restart_count: Option<u32>,
    pub main_pid: Option<u32>,
    pub last_exit: Option<String>,
    /// Why the state is unknown (host unreachable, RPC failed).
    pub error: Option<String>,
}

impl UnitRow {
    pub fn is_active(&self) -> bool {
        self.active_state.as_deref() == Some("active")
    }
}

/// The VIP in front of the API servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSection {
    pub address: String,
    pub interface: String,
    /// Masters that have the address on an interface; exactly one is expected.
    pub holders: Vec<String>,
    /// The single holder, when exactly one holds it.
    pub holder: Option<String>,
    pub masters: Vec<VipMaster>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipMaster {
    pub host: String,
    pub reachable: bool,
    /// Absent when the host could not be asked.
    pub holds_vip: Option<bool>,
    /// keepalived.service's active state.
    pub keepalived: Option<String>,
    /// `MASTER` (running, holds the VIP), `BACKUP` (running, does not), `STOPPED`, `UNKNOWN`.
    pub vrrp_state: String,
}

/// The soonest-expiring certificate of one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    /// `state-dir` or a host name.
    pub location: String,
    /// How many certificates were read there.
    pub certificates: usize,
    pub soonest_path: Option<String>,
    pub soonest_subject: Option<String>,
    /// RFC 3339.
    pub soonest_not_after: Option<String>,
    pub days_left: Option<i64>,
    /// Certificates that could not be read, `path: reason`.
    pub errors: Vec<String>,
}

/// What node preparation set on masters and workers, against what the host has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRow {
    pub host: String,
    /// `modules`, `sysctls` or `swap`.
    pub item: String,
    /// `true` when the host matches what apply set; absent when it could not be checked.
    pub in_sync: Option<bool>,
    /// What differs, or why it could not be checked.
    pub detail: String,
}

/// The state dir's snapshots of the cluster (README "Snapshots"): how many, and the newest one
/// that a restore would choose, the newest *verified*, with its age.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotsSection {
    /// Snapshots in the state dir, of which verified and failed.
    pub total: usize,
    pub verified: usize,
    pub failed: usize,
    /// The newest verified snapshot's name, when it was taken (RFC 3339) and its age then.
    pub newest_verified: Option<String>,
    pub newest_verified_at: Option<String>,
    pub newest_verified_age_seconds: Option<i64>,
    /// Hosts that hold a copy of it.
    pub newest_verified_copies: Vec<String>,
    /// `etcd.snapshots.stale_after` in seconds; 0 when the check is off.
    pub stale_after_seconds: u64,
}

impl SnapshotsSection {
    /// What the state dir holds for `cluster`, judged at `now_unix` against `stale_after`.
    pub fn read(
        state_dir: &std::path::Path,
        cluster: &str,
        stale_after: Duration,
        now_unix: i64,
    ) -> SnapshotsSection {
        use crate::etcd::snapshots::{entries, State};
        let all = entries(state_dir, cluster);
        let newest = all.iter().rev().find(|e| e.state == State::Verified);
        let meta = newest.and_then(|e| e.meta.as_ref());
        SnapshotsSection {
            total: all.len(),
            verified: all.iter().filter(|e| e.state == State::Verified).count(),
            failed: all.iter().filter(|e| e.state == State::Failed).count(),
            newest_verified: newest.map(|e| e.name.clone()),
            newest_verified_at: meta.map(|m| m.taken_at.clone()),
            newest_verified_age_seconds: newest.map(|e| (now_unix - e.taken_unix()).max(0)),
            newest_verified_copies: meta
                .map(|m| m.copies.iter().map(|c| c.host.clone()).collect())
                .unwrap_or_default(),
            stale_after_seconds: stale_after.as_secs(),
        }
    }

    /// Why the snapshots degrade the cluster, when they do: none verified, or the newest
    /// verified older than `stale_after`.
    pub fn problem(&self) -> Option<String> {
        if self.stale_after_seconds == 0 {
            return None;
        }
        let limit = human_span(self.stale_after_seconds as i64);
        match (&self.newest_verified, self.newest_verified_age_seconds) {
            (Some(name), Some(age)) if age > self.stale_after_seconds as i64 => Some(format!(
                "the newest verified etcd snapshot {name} is {} old, more than \
                 etcd.snapshots.stale_after ({limit}); is haop-snapshots@ running?",
                human_span(age)
            )),
            (Some(_), _) => None,
            (None, _) => Some(format!(
                "no verified etcd snapshot in the state dir ({} snapshots, {} failed): run \
                 `haop etcd snapshot save` and `verify`, or haop-snapshots@ (stale after {limit})",
                self.total, self.failed
            )),
        }
    }
}

/// `1d 2h`, `3h 5m`, `4m 10s`, `12s`: an age for people.
pub fn human_span(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The Kubernetes API servers' `/readyz` (see `kube.rs` for how they are asked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubernetesSection {
    /// The master whose agent gave the cluster CA (`/etc/kubernetes/pki/ca.crt`) that every
    /// API server's certificate was verified against.
    pub ca_source: Option<String>,
    /// Why no master gave the CA; then no endpoint was asked.
    pub ca_error: Option<String>,
    /// Through the VIP first (when there is one), then each master in file order.
    pub endpoints: Vec<ApiEndpoint>,
}

/// How an API endpoint is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVia {
    /// `https://VIP:6443`: whichever master holds the VIP answers (the controlPlaneEndpoint).
    Vip,
    /// `https://ADDRESS:6443` of one master (its advertiseAddress).
    Master,
}

/// One `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiEndpoint {
    pub via: ApiVia,
    /// The master, for `via: master`.
    pub host: Option<String>,
    pub url: String,
    /// Answered HTTP 200.
    pub ready: bool,
    /// The HTTP status, when the server answered.
    pub http_status: Option<u16>,
    /// The body's failed checks (its `[-]` lines), or else its first line.
    pub detail: Option<String>,
    /// Why there is no HTTP answer: connection, TLS verification, timeout, or no CA.
    pub error: Option<String>,
    /// From connecting to the end of the body, milliseconds.
    pub latency_ms: Option<f64>,
}

impl ApiEndpoint {
    /// `HTTP 500: [-]etcd failed: reason withheld`, or the error.
    pub fn outcome(&self) -> String {
        match (self.http_status, &self.error) {
            (Some(code), _) => format!(
                "HTTP {code}: {}",
                self.detail.as_deref().unwrap_or("(empty body)")
            ),
            (None, Some(e)) => e.clone(),
            (None, None) => "not asked".to_string(),
        }
    }

    /// `master2` or `VIP`.
    pub fn label(&self) -> &str {
        self.host.as_deref().unwrap_or("VIP")
    }
}

/// The problems of a report, worst first, and its verdict. Pure: the same sections always give
/// the same verdict.
pub fn assess(report: &StatusReport) -> (Vec<Problem>, Verdict) {
    let mut problems = Vec::new();
    let mut push = |severity, section, host: Option<&str>, message: String| {
        problems.push(Problem {
            severity,
            section,
            host: host.map(str::to_string),
            message,
        })
    };
    use Health::{Degraded, Down};

    let reachable = |name: &str| report.hosts.iter().any(|h| h.name == name && h.reachable);
    for h in &report.hosts {
        if !h.reachable {
            push(
                Degraded,
                Section::Hosts,
                Some(&h.name),
                format!(
                    "host {} is unreachable: {}",
                    h.name,
                    h.error.as_deref().unwrap_or("no answer")
                ),
            );
        } else if let Some(skew) = h.clock_skew_ms.filter(|s| s.abs() > MAX_CLOCK_SKEW_MS) {
            push(
                Degraded,
                Section::Hosts,
                Some(&h.name),
                format!("host {}'s clock is {skew} ms off the coordinator's", h.name),
            );
        }
        let wanted = report.revocation_generation.unwrap_or(0);
        if let Some(held) = h.revocation_generation.filter(|held| *held < wanted) {
            push(
                Degraded,
                Section::Hosts,
                Some(&h.name),
                format!(
                    "host {}'s agent enforces revocation list {held}, the state dir's is {wanted}: \
                     an identity revoked since may still call it{}",
                    h.name,
                    match &h.revocation_error {
                        Some(e) => format!(" (installing it failed: {e})"),
                        None => "; run haop status or haop apply as haop's admin to push it".into(),
                    }
                ),
            );
        }
    }

    let etcd = &report.etcd;
    if etcd.electing {
        push(
            Degraded,
            Section::Etcd,
            None,
            format!(
                "etcd is electing a leader: {} of {} members answer, none leads yet (this takes                  about one election timeout after a leader is lost; if it lasts, the members                  cannot reach each other)",
                etcd.answering_members, etcd.expected_members
            ),
        );
    } else if etcd.expected_members > 0 && !etcd.has_quorum {
        push(
            Down,
            Section::Etcd,
            None,
            format!(
                "etcd has no quorum: {} of {} members healthy, {} needed",
                etcd.healthy_members, etcd.expected_members, etcd.quorum_needed
            ),
        );
    } else if etcd.expected_members > 0 && etcd.leader_id.is_none() {
        push(Down, Section::Etcd, None, "etcd has no leader".to_string());
    }
    if let Some(e) = &etcd.member_list_error {
        push(
            Degraded,
            Section::Etcd,
            None,
            format!("etcd's member list could not be read: {e}"),
        );
    }
    // Oldest first, as versions order (3.5.9 before 3.5.16).
    let mut by_version: std::collections::BTreeMap<(Option<EtcdVersion>, &str), Vec<&str>> =
        Default::default();
    for m in etcd.members.iter().filter(|m| m.in_inventory) {
        if let Some(v) = m.version.as_deref() {
            by_version
                .entry((EtcdVersion::parse(v), v))
                .or_default()
                .push(m.name.as_str());
        }
    }
    if by_version.len() > 1 {
        let said: Vec<String> = by_version
            .iter()
            .map(|((_, v), names)| format!("{} on {v}", names.join(", ")))
            .collect();
        push(
            Degraded,
            Section::Etcd,
            None,
            format!(
                "etcd members run mixed versions ({}): an upgrade is half done; `haop etcd \
                 upgrade` continues it, `haop etcd upgrade --rollback` undoes it",
                said.join("; ")
            ),
        );
    }
    for m in &etcd.members {
        let host = m.in_inventory.then_some(m.name.as_str());
        if !m.in_inventory {
            push(
                Degraded,
                Section::Etcd,
                None,
                format!(
                    "etcd member {} ({}) is not in the inventory",
                    m.name,
                    m.id.as_deref().unwrap_or("?")
                ),
            );
            continue;
        }
        if !m.healthy {
            push(
                Degraded,
                Section::Etcd,
                host,
                format!(
                    "etcd member {} is unhealthy: {}",
                    m.name,
                    m.error.as_deref().unwrap_or("no answer")
                ),
            );
        }
        if etcd.member_list_error.is_none() && !m.in_member_list {
            push(
                Degraded,
                Section::Etcd,
                host,
                format!("etcd member {} is not in etcd's member list", m.name),
            );
        } else if m.in_member_list && !m.peer_urls_match {
            push(
                Degraded,
                Section::Etcd,
                host,
                format!(
                    "etcd member {} has peer URLs {:?}, the inventory says {}",
                    m.name,
                    m.peer_urls,
                    m.expected_peer_url.as_deref().unwrap_or("?")
                ),
            );
        }
        if m.is_learner {
            push(
                Degraded,
                Section::Etcd,
                host,
                format!("etcd member {} is a learner (not promoted)", m.name),
            );
        }
        if !m.alarms.is_empty() {
            push(
                Degraded,
                Section::Etcd,
                host,
                format!("etcd member {} reports: {}", m.name, m.alarms.join("; ")),
            );
        }
        if let Some(lag) = m.raft_lag.filter(|&l| m.healthy && l > MAX_RAFT_LAG) {
            push(
                Degraded,
                Section::Etcd,
                host,
                format!(
                    "etcd member {} is {lag} raft entries behind the leader",
                    m.name
                ),
            );
        }
        if let Some(size) = m.db_size_bytes {
            if m.db_quota_bytes > 0
                && (size.max(0) as u64) * 100 > (m.db_quota_bytes as u64) * DB_QUOTA_WARN_PERCENT
            {
                push(
                    Degraded,
                    Section::Etcd,
                    host,
                    format!(
                        "etcd member {}'s database is {size} bytes, over {DB_QUOTA_WARN_PERCENT} % \
                         of its quota of {} bytes",
                        m.name, m.db_quota_bytes
                    ),
                );
            }
        }
    }

    for u in &report.units {
        if !reachable(&u.host) {
            continue;
        }
        if let Some(e) = &u.error {
            push(
                Degraded,
                Section::Units,
                Some(&u.host),
                format!("{} on {}: {e}", u.unit, u.host),
            );
        } else if u.installed == Some(false) {
            push(
                Degraded,
                Section::Units,
                Some(&u.host),
                format!("{} is not installed on {}", u.unit, u.host),
            );
        } else if !u.is_active() {
            push(
                Degraded,
                Section::Units,
                Some(&u.host),
                format!(
                    "{} on {} is {}/{}{}",
                    u.unit,
                    u.host,
                    u.active_state.as_deref().unwrap_or("unknown"),
                    u.sub_state.as_deref().unwrap_or("unknown"),
                    u.last_exit
                        .as_deref()
                        .filter(|s| !s.is_empty())
                        .map(|s| format!(" (last exit: {s})"))
                        .unwrap_or_default()
                ),
            );
        }
    }

    if let Some(vip) = &report.vip {
        let unknown: Vec<&str> = vip
            .masters
            .iter()
            .filter(|m| m.holds_vip.is_none())
            .map(|m| m.host.as_str())
            .collect();
        match vip.holders.len() {
            0 if unknown.is_empty() => push(
                Down,
                Section::Vip,
                None,
                format!("no master holds the VIP {}", vip.address),
            ),
            0 => push(
                Degraded,
                Section::Vip,
                None,
                format!(
                    "no reachable master holds the VIP {}; not asked: {}",
                    vip.address,
                    unknown.join(", ")
                ),
            ),
            1 => {}
            _ => push(
                Degraded,
                Section::Vip,
                None,
                format!(
                    "the VIP {} is held by several masters: {}",
                    vip.address,
                    vip.holders.join(", ")
                ),
            ),
        }
    }

    for c in &report.certificates {
        let host = (c.location != "state-dir").then_some(c.location.as_str());
        if host.is_some_and(|h| !reachable(h)) {
            continue;
        }
        if let Some(days) = c.days_left.filter(|&d| d < CERT_WARN_DAYS) {
            let when = if days < 0 {
                format!("expired {} days ago", -days)
            } else {
                format!("expires in {days} days")
            };
            let path = c.soonest_path.as_deref().unwrap_or("?");
            // kubeadm's own certificates are kubeadm's to renew, not `haop certs renew`'s.
            let how = if crate::certs::is_kubeadms(path) {
                format!(
                    " (kubeadm's: `kubeadm certs renew all` on {}, then restart the control \
                     plane's static pods)",
                    c.location
                )
            } else {
                String::new()
            };
            push(
                Degraded,
                Section::Certificates,
                host,
                format!("certificate {path} on {} {when}{how}", c.location),
            );
        }
        for e in &c.errors {
            push(
                Degraded,
                Section::Certificates,
                host,
                format!("certificate on {}: {e}", c.location),
            );
        }
    }

    for d in &report.drift {
        if !reachable(&d.host) {
            continue;
        }
        match d.in_sync {
            Some(true) => {}
            Some(false) => push(
                Degraded,
                Section::Drift,
                Some(&d.host),
                format!("{} on {} drifted: {}", d.item, d.host, d.detail),
            ),
            None => push(
                Degraded,
                Section::Drift,
                Some(&d.host),
                format!(
                    "{} on {} could not be checked: {}",
                    d.item, d.host, d.detail
                ),
            ),
        }
    }

    if let Some(k) = &report.kubernetes {
        if let Some(e) = &k.ca_error {
            push(
                Degraded,
                Section::Kubernetes,
                None,
                format!("the Kubernetes API servers could not be checked: {e}"),
            );
        } else {
            // With no master holding the VIP the VIP section already says so (down).
            let vip_held = report.vip.as_ref().is_none_or(|v| !v.holders.is_empty());
            for ep in k.endpoints.iter().filter(|e| !e.ready) {
                match ep.via {
                    ApiVia::Vip if vip_held => push(
                        Degraded,
                        Section::Kubernetes,
                        None,
                        format!(
                            "the Kubernetes API through the VIP is not ready: {}",
                            ep.outcome()
                        ),
                    ),
                    ApiVia::Vip => {}
                    ApiVia::Master => push(
                        Degraded,
                        Section::Kubernetes,
                        ep.host.as_deref(),
                        format!(
                            "the Kubernetes API server on {} is not ready: {}",
                            ep.label(),
                            ep.outcome()
                        ),
                    ),
                }
            }
        }
    }

    if let Some(message) = report
        .snapshots
        .as_ref()
        .and_then(SnapshotsSection::problem)
    {
        push(Degraded, Section::Snapshots, None, message);
    }

    problems.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.section.cmp(&b.section)));
    let health = problems
        .iter()
        .map(|p| p.severity)
        .max()
        .unwrap_or(Health::Healthy);
    let summary = match problems.len() {
        0 => format!(
            "healthy: {} hosts, {}/{} etcd members healthy{}{}",
            report.hosts.len(),
            etcd.healthy_members,
            etcd.expected_members,
            report
                .vip
                .as_ref()
                .and_then(|v| v.holder.as_ref())
                .map(|h| format!(", VIP on {h}"))
                .unwrap_or_default(),
            if report.kubernetes.is_some() {
                ", Kubernetes API ready"
            } else {
                ""
            }
        ),
        n => format!(
            "{}: {n} problem{} ({})",
            health.as_str(),
            if n == 1 { "" } else { "s" },
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    let verdict = Verdict {
        health,
        exit_code: health.exit_code(),
        summary,
    };
    (problems, verdict)
}

/// `--quota-backend-bytes` from etcd's extra flags, or etcd's default.
pub fn db_quota_bytes(extra_flags: &[String]) -> i64 {
    extra_flags
        .iter()
        .find_map(|f| f.strip_prefix("--quota-backend-bytes="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_DB_QUOTA_BYTES)
}

#[cfg(test)]
mod tests;
