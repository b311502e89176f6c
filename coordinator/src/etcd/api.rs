//! haop's client of the etcd v3 API, with its own etcd client certificate.
//!
//! Why through the API: the seed waits for etcd with `sleep` and hopes. haop asks etcd instead:
//! [`EtcdClient::wait_for_quorum`] polls every [`POLL_INTERVAL`] until a leader exists, the member
//! list has the expected voters and a majority of the endpoints answer a linearizable read, so
//! bootstrap ends as soon as etcd is ready (three members elect a leader in about 0.5-1.5 s) and a
//! timeout says what was last seen instead of "still not healthy". No fixed sleep anywhere: the
//! only pause is the rest of a poll interval.
//!
//! Why one connection per endpoint: a dead member must never delay or hide the others.
//! Per-endpoint questions ([`EtcdClient::status_of`], [`EtcdClient::health`]) go to that endpoint
//! alone, and [`EtcdClient::statuses`] asks all endpoints at once, each under its own timeout.
//! Cluster-wide calls (member list, put, get, membership changes, snapshot) go to the endpoint
//! that answered last and move on to the next one when an endpoint cannot be reached. A mutation
//! moves on only when the connection could not even be made (then etcd never saw the request); a
//! mutation that timed out has an unknown outcome and is reported, never silently repeated.
//!
//! Why typed membership errors: recovery (remove, add a learner, start it, promote) meets refusals
//! that mean "wait" rather than "fail": etcd's strict reconfiguration check refuses with
//! `etcdserver: unhealthy cluster` until every voter has been connected for 5 s, and a learner
//! cannot be promoted before it has caught up with the leader. The recovery code matches on
//! [`EtcdApiError::UnhealthyCluster`] and [`EtcdApiError::LearnerNotReady`] and retries; anything
//! else stops it.
//!
//! Lifecycle: [`EtcdClient::connect`] reads `<state>/pki/etcd-ca.crt` and haop's
//! `etcd-client.crt`/`.key` (made by [`crate::trust::init`]) and connects lazily: it fails only on
//! bad credentials or endpoints; an unreachable endpoint shows up in the first call that needs it.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, ConnectOptions, Identity, MemberAddOptions, TlsOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::trust::{pki_dir, ETCD_CLIENT_CERT};

/// Pause between two rounds of [`EtcdClient::wait_for_quorum`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Key that [`EtcdClient::health`] reads, as `etcdctl endpoint health` does.
pub const HEALTH_KEY: &str = "health";
/// Size of etcd's checksum at the end of a snapshot stream (SHA-256 of the bytes before it).
const SNAPSHOT_HASH_LEN: usize = 32;

/// Errors of the etcd API; each names the endpoint (or all endpoints tried) and the operation.
#[derive(Debug, thiserror::Error)]
pub enum EtcdApiError {
    #[error("cannot read haop's etcd client credentials {path} (run `haop init`)")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no etcd endpoints given")]
    NoEndpoints,
    #[error("etcdctl {op} on {host} (against {endpoint}): {message}")]
    Etcdctl {
        host: String,
        endpoint: String,
        op: &'static str,
        message: String,
    },
    #[error("invalid etcd endpoint {endpoint}")]
    InvalidEndpoint {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("cannot connect to etcd at {endpoint} for {op}")]
    Unreachable {
        endpoint: String,
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("connection to etcd at {endpoint} broke during {op}; its outcome is unknown")]
    ConnectionLost {
        endpoint: String,
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoint} did not answer {op} within {timeout:?}")]
    Timeout {
        endpoint: String,
        op: &'static str,
        timeout: Duration,
    },
    #[error("{op} at etcd {endpoint} failed")]
    Rpc {
        endpoint: String,
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "etcd at {endpoint} refused {op}: unhealthy cluster (a voter is down or connected for \
         less than 5 s); retry after the members have been connected for 5 s"
    )]
    UnhealthyCluster { endpoint: String, op: &'static str },
    #[error(
        "etcd at {endpoint} refused to promote learner {id:x}: it has not caught up with the \
         leader yet; retry"
    )]
    LearnerNotReady { endpoint: String, id: u64 },
    #[error("etcd at {endpoint} refused to promote {id:x}: it is not a learner")]
    NotALearner { endpoint: String, id: u64 },
    #[error(
        "etcd at {endpoint} refused to add a learner: the cluster already has one (promote or \
         remove it first)"
    )]
    TooManyLearners { endpoint: String },
    #[error("etcd at {endpoint}: member {id:x} is not in the cluster")]
    MemberNotFound { endpoint: String, id: u64 },
    #[error("etcd at {endpoint} refused {op}: a member already has peer URLs {peer_urls:?}")]
    PeerUrlsExist {
        endpoint: String,
        op: &'static str,
        peer_urls: Vec<String>,
    },
    #[error(
        "etcd at {endpoint} refused {op}: not enough started members to keep quorum after the \
         change"
    )]
    NotEnoughStartedMembers { endpoint: String, op: &'static str },
    #[error("etcd at {endpoint} has no leader ({op})")]
    NoLeader { endpoint: String, op: &'static str },
    #[error(
        "etcd at {endpoint} refused {op}: database space exceeded (the NOSPACE alarm is active; \
         `haop etcd alarms` shows it, README's \"etcd is out of space\" says how to clear it)"
    )]
    NoSpace { endpoint: String, op: &'static str },
    #[error("etcd at {endpoint} has compacted its history up to revision {revision} already")]
    Compacted { endpoint: String, revision: i64 },
    #[error("no etcd endpoint answered {op}: {}", failures.join("; "))]
    NoEndpointAnswered {
        op: &'static str,
        /// `endpoint: error` for every endpoint tried.
        failures: Vec<String>,
    },
    #[error("etcd had no quorum after {waited:?} (expected {expected_members} voters); last seen: {last}")]
    QuorumTimeout {
        waited: Duration,
        expected_members: usize,
        last: QuorumObservation,
    },
    #[error("cannot {action} snapshot file {path}")]
    SnapshotIo {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot from etcd at {endpoint} is corrupt: {reason}")]
    SnapshotCorrupt { endpoint: String, reason: String },
}

impl EtcdApiError {
    /// Whether etcd may have done what was asked although the call failed: the connection broke
    /// or the answer did not come in time after the request was sent.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            EtcdApiError::ConnectionLost { .. } | EtcdApiError::Timeout { .. }
        )
    }

    /// Whether the call may succeed if repeated later as it is (etcd said "wait", or did not
    /// answer in time).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EtcdApiError::UnhealthyCluster { .. }
                | EtcdApiError::LearnerNotReady { .. }
                | EtcdApiError::NoLeader { .. }
                | EtcdApiError::Timeout { .. }
                | EtcdApiError::Unreachable { .. }
                | EtcdApiError::ConnectionLost { .. }
                | EtcdApiError::NoEndpointAnswered { .. }
                | EtcdApiError::NotEnoughStartedMembers { .. }
        )
    }
}

/// A member of the cluster, as `member list` reports it. IDs are shown in hex, as etcdctl does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started (a learner just added has no name yet).
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has started.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl From<&etcd_client::Member> for Member {
    fn from(m: &etcd_client::Member) -> Self {
        Member {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
        }
    }
}

/// One endpoint's view of itself and of the cluster (`etcdctl endpoint status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub member_id: u64,
    /// 0 when this member knows no leader.
    pub leader_id: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub is_learner: bool,
    /// etcd's own errors (alarms such as NOSPACE, "no leader").
    pub errors: Vec<String>,
    pub version: String,
}

/// What [`EtcdClient::wait_for_quorum`] found when the cluster was ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumReport {
    pub leader_id: u64,
    pub members: Vec<Member>,
    pub elapsed: Duration,
}

/// What one round of [`EtcdClient::wait_for_quorum`] saw; the timeout error carries the last one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumObservation {
    /// A leader reported by any endpoint.
    pub leader_id: Option<u64>,
    /// The member list, or why none could be read.
    pub members: Option<Result<Vec<Member>, String>>,
    /// Per endpoint: the health latency, or why it is unhealthy.
    pub health: Vec<(String, Result<Duration, String>)>,
}

impl fmt::Display for QuorumObservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.leader_id {
            Some(id) => write!(f, "leader {id:x}")?,
            None => write!(f, "no leader")?,
        }
        match &self.members {
            Some(Ok(members)) => {
                let voters = members.iter().filter(|m| !m.is_learner).count();
                write!(
                    f,
                    ", {voters} voters and {} learners",
                    members.len() - voters
                )?
            }
            Some(Err(e)) => write!(f, ", no member list ({e})")?,
            None => write!(f, ", no member list")?,
        }
        let healthy = self.health.iter().filter(|(_, h)| h.is_ok()).count();
        write!(f, ", {healthy}/{} endpoints healthy", self.health.len())?;
        for (endpoint, h) in &self.health {
            if let Err(e) = h {
                write!(f, "; {endpoint}: {e}")?;
            }
        }
        Ok(())
    }
}

/// A snapshot written by [`EtcdClient::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    /// The endpoint the snapshot came from.
    pub endpoint: String,
    pub size: u64,
    /// Hex SHA-256 of the whole file (etcd's own trailing checksum included).
    pub sha256: String,
    /// The store revision in the stream's header, when etcd sends one (3.4 does not).
    pub revision: Option<i64>,
    /// When it was taken (Unix seconds), when known.
    pub taken_unix: Option<i64>,
}

/// The keyspace at one revision, as a snapshot must reproduce it: the store's revision, how
/// many keys it holds, and etcd's `hashkv` over the history up to it (all three answered by
/// one member at that one revision). Snapshot verification compares the restored copy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyspace {
    pub revision: i64,
    pub key_count: i64,
    pub hash_kv: u32,
    /// The revision the history was compacted to when the hash was taken.
    pub compact_revision: i64,
}

/// [`Keyspace`] of the member `client` talks to: at `revision`, or at its current revision
/// when `None` (the count's own answer says which). The count and the hash are two calls, both
/// pinned to the same revision, so writes in between change neither.
pub async fn keyspace(
    client: &mut etcd_client::Client,
    revision: Option<i64>,
) -> Result<Keyspace, etcd_client::Error> {
    let (revision, key_count) = count_keys(client, revision).await?;
    let (hash_kv, compact_revision) = hash_kv(client, revision).await?;
    Ok(Keyspace {
        revision,
        key_count,
        hash_kv,
        compact_revision,
    })
}

/// How many keys the member has at `revision` (or now, when `None`), and at which revision:
/// one count-only range over every key.
pub async fn count_keys(
    client: &mut etcd_client::Client,
    revision: Option<i64>,
) -> Result<(i64, i64), etcd_client::Error> {
    let mut count = etcd_client::GetOptions::new()
        .with_all_keys()
        .with_count_only();
    if let Some(r) = revision {
        count = count.with_revision(r);
    }
    let counted = client.get("", Some(count)).await?;
    let revision =
        revision.unwrap_or_else(|| counted.header().map(|h| h.revision()).unwrap_or_default());
    Ok((revision, counted.count()))
}

/// etcd's `hashkv` of the member's history up to `revision`, with the revision it was compacted
/// to.
pub async fn hash_kv(
    client: &mut etcd_client::Client,
    revision: i64,
) -> Result<(u32, i64), etcd_client::Error> {
    let hash = client.hash_kv(revision).await?;
    Ok((hash.hash(), hash.compact_version()))
}

/// What [`EtcdClient::snapshot_into`] streamed: etcd's whole snapshot, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedSnapshot {
    pub endpoint: String,
    /// Bytes of etcd's snapshot (its trailing checksum included).
    pub size: u64,
    /// Hex SHA-256 of those bytes.
    pub sha256: String,
    /// The store revision in the stream's header, when etcd sends one (3.4 does not).
    pub revision: Option<i64>,
}

/// What [`EtcdClient::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Compaction {
    /// History before this revision is gone; it is the store's revision when compact ran.
    pub revision: i64,
    /// False when the history had been compacted up to that revision already.
    pub changed: bool,
}

/// A client of one etcd cluster, authenticated with haop's etcd client certificate.
pub struct EtcdClient {
    endpoints: Vec<String>,
    timeout: Duration,
    options: ConnectOptions,
    /// One lazily connected client per endpoint; dropped after a transport failure so that the
    /// next call starts from a fresh connection.
    clients: Mutex<HashMap<String, etcd_client::Client>>,
    /// Index in `endpoints` of the endpoint that answered last.
    preferred: Mutex<usize>,
}

impl fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How a failed call may be repeated on another endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failover {
    /// Reads: on any failure that is not etcd's own answer.
    Read,
    /// Mutations: only when the connection could not be made.
    Write,
}

impl EtcdClient {
    /// A client of the cluster at `endpoints` (`https://host:2379`) with haop's credentials from
    /// `state_dir`. `timeout` bounds each connection attempt and each request.
    pub async fn connect(
        state_dir: &Path,
        endpoints: &[String],
        timeout: Duration,
    ) -> Result<EtcdClient, EtcdApiError> {
        if endpoints.is_empty() {
            return Err(EtcdApiError::NoEndpoints);
        }
        // The CA, or both CAs while one replaces the other (see `pki::bundle`).
        let trust = crate::pki::bundle::trust_path(state_dir);
        let ca = std::fs::read(&trust).map_err(|source| EtcdApiError::Credentials {
            path: trust.clone(),
            source,
        })?;
        Self::connect_trusting(state_dir, endpoints, timeout, ca).await
    }

    /// Like [`EtcdClient::connect`], trusting the CA certificates of `ca_pem` instead of the
    /// state dir's.
    pub async fn connect_trusting(
        state_dir: &Path,
        endpoints: &[String],
        timeout: Duration,
        ca: Vec<u8>,
    ) -> Result<EtcdClient, EtcdApiError> {
        let dir = pki_dir(state_dir);
        let read = |name: String| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| EtcdApiError::Credentials { path, source })
        };
        let cert = read(format!("{ETCD_CLIENT_CERT}.crt"))?;
        let key = read(format!("{ETCD_CLIENT_CERT}.key"))?;
        Self::connect_with(endpoints, timeout, ca, cert, key).await
    }

    /// A client with these credentials (PEM): the CA certificates to trust, and a client
    /// certificate with its key.
    pub async fn connect_with(
        endpoints: &[String],
        timeout: Duration,
        ca: Vec<u8>,
        cert: Vec<u8>,
        key: Vec<u8>,
    ) -> Result<EtcdClient, EtcdApiError> {
        if endpoints.is_empty() {
            return Err(EtcdApiError::NoEndpoints);
        }
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        let client = EtcdClient {
            endpoints: endpoints.to_vec(),
            timeout,
            options,
            clients: Mutex::new(HashMap::new()),
            preferred: Mutex::new(0),
        };
        for endpoint in endpoints {
            client.client_for(endpoint).await?;
        }
        Ok(client)
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// One etcd-client per endpoint, with haop's credentials and `timeout` per request: for
    /// the operator's election, lease and fenced transactions, which etcd-client's own types
    /// serve. One per endpoint and not one balanced over all: a balanced channel keeps sending
    /// to a member that is down, and the operator's lease must be renewed exactly when one is.
    pub async fn endpoint_clients(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(String, etcd_client::Client)>, EtcdApiError> {
        let mut out = Vec::new();
        for endpoint in &self.endpoints {
            let c = etcd_client::Client::connect(
                [endpoint.as_str()],
                Some(self.options.clone().with_timeout(timeout)),
            )
            .await
            .map_err(|source| EtcdApiError::InvalidEndpoint {
                endpoint: endpoint.clone(),
                source,
            })?;
            out.push((endpoint.clone(), c));
        }
        Ok(out)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn client_for(&self, endpoint: &str) -> Result<etcd_client::Client, EtcdApiError> {
        if let Some(c) = self.lock_clients().get(endpoint) {
            return Ok(c.clone());
        }
        let c = etcd_client::Client::connect([endpoint], Some(self.options.clone()))
            .await
            .map_err(|source| EtcdApiError::InvalidEndpoint {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Ok(self
            .lock_clients()
            .entry(endpoint.to_string())
            .or_insert(c)
            .clone())
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, etcd_client::Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, endpoint: &str) {
        self.lock_clients().remove(endpoint);
    }

    /// Runs `call` against `endpoint` alone, bounded by `timeout`, and maps its error.
    async fn on<T, F, Fut>(
        &self,
        endpoint: &str,
        op: &'static str,
        timeout: Duration,
        call: F,
    ) -> Result<T, EtcdApiError>
    where
        F: FnOnce(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        // The channel bounds every request by the client's own timeout: a longer call (a
        // defragmentation rewriting 2 GiB) gets a connection of its own with its bound.
        let client = if timeout > self.timeout {
            etcd_client::Client::connect(
                [endpoint],
                Some(self.options.clone().with_timeout(timeout)),
            )
            .await
            .map_err(|source| EtcdApiError::InvalidEndpoint {
                endpoint: endpoint.to_string(),
                source,
            })?
        } else {
            self.client_for(endpoint).await?
        };
        match tokio::time::timeout(timeout, call(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let e = classify(endpoint, op, e);
                if matches!(
                    e,
                    EtcdApiError::Unreachable { .. }
                        | EtcdApiError::ConnectionLost { .. }
                        | EtcdApiError::Rpc { .. }
                ) {
                    self.forget(endpoint);
                }
                Err(e)
            }
            Err(_) => {
                self.forget(endpoint);
                Err(EtcdApiError::Timeout {
                    endpoint: endpoint.to_string(),
                    op,
                    timeout,
                })
            }
        }
    }

    /// Runs `call` on the endpoint that answered last, then on the others in order, as far as
    /// `failover` allows.
    async fn any<T, F, Fut>(
        &self,
        op: &'static str,
        failover: Failover,
        call: F,
    ) -> Result<(String, T), EtcdApiError>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let start = *self.preferred.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.endpoints.len();
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            let endpoint = &self.endpoints[i];
            match self.on(endpoint, op, self.timeout, &call).await {
                Ok(v) => {
                    *self.preferred.lock().unwrap_or_else(|e| e.into_inner()) = i;
                    return Ok((endpoint.clone(), v));
                }
                Err(e) => {
                    let move_on = match (&e, failover) {
                        (EtcdApiError::Unreachable { .. }, _) => true,
                        (
                            EtcdApiError::Timeout { .. }
                            | EtcdApiError::ConnectionLost { .. }
                            | EtcdApiError::Rpc { .. },
                            f,
                        ) => f == Failover::Read,
                        (EtcdApiError::NoLeader { .. }, Failover::Read) => true,
                        _ => false,
                    };
                    if !move_on {
                        return Err(e);
                    }
                    debug!(endpoint = %endpoint, op, error = %crate::error_chain(&e), "etcd endpoint failed, trying the next");
                    failures.push(crate::error_chain(&e));
                }
            }
        }
        Err(EtcdApiError::NoEndpointAnswered { op, failures })
    }

    /// Active alarms (NOSPACE, CORRUPT), as `(member id, alarm)`.
    pub async fn alarms(&self) -> Result<Vec<(u64, String)>, EtcdApiError> {
        let (_, resp) = self
            .any("alarm list", Failover::Read, |mut c| async move {
                c.alarm(
                    etcd_client::AlarmAction::Get,
                    etcd_client::AlarmType::None,
                    None,
                )
                .await
            })
            .await?;
        Ok(resp
            .alarms()
            .iter()
            .map(|a| (a.member_id(), format!("{:?}", a.alarm()).to_uppercase()))
            .collect())
    }

    /// Disarms every active alarm (after the cause, such as a full disk, was dealt with), one
    /// by one as etcdctl does; answers how many.
    pub async fn disarm_alarms(&self) -> Result<usize, EtcdApiError> {
        let (_, resp) = self
            .any("alarm list", Failover::Read, |mut c| async move {
                c.alarm(
                    etcd_client::AlarmAction::Get,
                    etcd_client::AlarmType::None,
                    None,
                )
                .await
            })
            .await?;
        let active: Vec<(u64, etcd_client::AlarmType)> = resp
            .alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm()))
            .collect();
        for (member, alarm) in &active {
            let (member, alarm) = (*member, *alarm);
            self.any("alarm disarm", Failover::Write, move |mut c| async move {
                let mut options = etcd_client::AlarmOptions::new();
                options.with_member(member);
                c.alarm(etcd_client::AlarmAction::Deactivate, alarm, Some(options))
                    .await
            })
            .await?;
        }
        Ok(active.len())
    }

    /// Discards the history of every key before the store's current revision, as `etcdctl
    /// compact REV --physical`: each key keeps its current value, older values go, and the
    /// space they took in each member's backend is free for reuse once this returns (physical:
    /// etcd answers after the backends applied it). Defragmenting then gives that space back to
    /// the filesystem. etcd accepts a compaction while the NOSPACE alarm is active, which is how
    /// a cluster filled with history gets out of it. Running it again with nothing new to
    /// compact is not an error: the answer says so.
    pub async fn compact(&self) -> Result<Compaction, EtcdApiError> {
        let (_, r) = self
            .any("revision", Failover::Read, |mut c| async move {
                let only_count = etcd_client::GetOptions::new().with_count_only();
                c.get(HEALTH_KEY, Some(only_count)).await
            })
            .await?;
        let revision = r.header().map(|h| h.revision()).unwrap_or_default();
        let compacted = self
            .any("compact", Failover::Write, move |mut c| async move {
                let physical = etcd_client::CompactionOptions::new().with_physical();
                c.compact(revision, Some(physical)).await
            })
            .await;
        match compacted {
            Ok((endpoint, _)) => {
                info!(endpoint = %endpoint, revision, "etcd history compacted");
                Ok(Compaction {
                    revision,
                    changed: true,
                })
            }
            Err(EtcdApiError::Compacted { .. }) => Ok(Compaction {
                revision,
                changed: false,
            }),
            Err(e) => Err(e),
        }
    }

    /// Defragments the member at `endpoint` (it blocks that member while it runs).
    pub async fn defragment(&self, endpoint: &str) -> Result<(), EtcdApiError> {
        let db_size = self.status_of(endpoint).await?.db_size;
        self.defragment_sized(endpoint, db_size).await
    }

    /// [`defragment`](Self::defragment) of a member whose database holds `db_size` bytes: etcd
    /// rewrites the whole file, so the call may take as long as [`scaled_timeout`] allows.
    pub async fn defragment_sized(&self, endpoint: &str, db_size: i64) -> Result<(), EtcdApiError> {
        self.on(
            endpoint,
            "defragment",
            scaled_timeout(self.timeout.max(Duration::from_secs(60)), db_size),
            |mut c| async move { c.defragment().await.map(|_| ()) },
        )
        .await
    }

    /// The cluster's members, voters and learners.
    pub async fn member_list(&self) -> Result<Vec<Member>, EtcdApiError> {
        let (_, members) = self
            .any("member list", Failover::Read, |mut c| async move {
                c.member_list().await
            })
            .await?;
        Ok(members.members().iter().map(Member::from).collect())
    }

    /// `endpoint`'s status, asked of that endpoint alone.
    pub async fn status_of(&self, endpoint: &str) -> Result<EndpointStatus, EtcdApiError> {
        self.status_within(endpoint, self.timeout).await
    }

    async fn status_within(
        &self,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<EndpointStatus, EtcdApiError> {
        let s = self
            .on(endpoint, "status", timeout, |mut c| async move {
                c.status().await
            })
            .await?;
        Ok(EndpointStatus {
            endpoint: endpoint.to_string(),
            member_id: s.header().map(|h| h.member_id()).unwrap_or_default(),
            leader_id: s.leader(),
            raft_term: s.raft_term(),
            raft_index: s.raft_index(),
            raft_applied_index: s.raft_applied_index(),
            db_size: s.db_size(),
            db_size_in_use: s.raft_used_db_size(),
            is_learner: s.is_learner(),
            errors: s.errors().to_vec(),
            version: s.version().to_string(),
        })
    }

    /// Every endpoint's status, asked concurrently, each within the client's timeout: a dead
    /// member costs at most one timeout and never delays the answers of the others. Results are
    /// in the order of `endpoints`.
    pub async fn statuses(
        &self,
        endpoints: &[String],
    ) -> Vec<Result<EndpointStatus, EtcdApiError>> {
        let calls = endpoints
            .iter()
            .map(|e| self.status_within(e, self.timeout));
        join_all(calls).await
    }

    /// Like `etcdctl endpoint health`: a linearizable read of [`HEALTH_KEY`] on `endpoint` alone,
    /// answered through raft. Any answer of etcd's state machine counts as healthy, including
    /// "permission denied" (the key need not exist). Returns the latency.
    pub async fn health(&self, endpoint: &str) -> Result<Duration, EtcdApiError> {
        self.health_within(endpoint, self.timeout).await
    }

    async fn health_within(
        &self,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Duration, EtcdApiError> {
        let started = Instant::now();
        match self
            .on(endpoint, "health check", timeout, |mut c| async move {
                c.get(HEALTH_KEY, None).await
            })
            .await
        {
            Ok(_) => Ok(started.elapsed()),
            Err(EtcdApiError::Rpc {
                source: etcd_client::Error::GRpcStatus(s),
                ..
            }) if s.message().contains("etcdserver: permission denied") => Ok(started.elapsed()),
            Err(e) => Err(e),
        }
    }

    /// Polls every [`POLL_INTERVAL`] until, within `deadline`: an endpoint reports a leader, the
    /// member list has exactly `expected_members` voters, and a majority of `endpoints` answer
    /// [`health`](Self::health). On timeout the error carries what the last round saw.
    pub async fn wait_for_quorum(
        &self,
        endpoints: &[String],
        expected_members: usize,
        deadline: Duration,
    ) -> Result<QuorumReport, EtcdApiError> {
        if endpoints.is_empty() {
            return Err(EtcdApiError::NoEndpoints);
        }
        let started = Instant::now();
        let end = started + deadline;
        let needed = endpoints.len() / 2 + 1;
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = QuorumObservation::default();
        loop {
            ticks.tick().await;
            let remaining = end.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let per_call = self.timeout.min(remaining);
            let statuses = join_all(endpoints.iter().map(|e| self.status_within(e, per_call)));
            let health = join_all(endpoints.iter().map(|e| self.health_within(e, per_call)));
            let members = tokio::time::timeout(per_call, self.member_list());
            let (statuses, health, members) = tokio::join!(statuses, health, members);
            let leader_id = statuses
                .iter()
                .filter_map(|s| s.as_ref().ok())
                .map(|s| s.leader_id)
                .find(|&id| id != 0);
            let members = match members {
                Ok(Ok(m)) => Ok(m),
                Ok(Err(e)) => Err(crate::error_chain(&e)),
                Err(_) => Err(format!("member list timed out after {per_call:?}")),
            };
            last = QuorumObservation {
                leader_id,
                members: Some(members),
                health: endpoints
                    .iter()
                    .cloned()
                    .zip(
                        health
                            .into_iter()
                            .map(|h| h.map_err(|e| crate::error_chain(&e))),
                    )
                    .collect(),
            };
            let healthy = last.health.iter().filter(|(_, h)| h.is_ok()).count();
            if let (Some(leader_id), Some(Ok(members))) = (leader_id, &last.members) {
                let voters = members.iter().filter(|m| !m.is_learner).count();
                if voters == expected_members && healthy >= needed {
                    let elapsed = started.elapsed();
                    info!(leader = %format!("{leader_id:x}"), voters, healthy, elapsed_ms = elapsed.as_millis() as u64, "etcd quorum ready");
                    return Ok(QuorumReport {
                        leader_id,
                        members: members.clone(),
                        elapsed,
                    });
                }
            }
            if Instant::now() >= end {
                break;
            }
        }
        Err(EtcdApiError::QuorumTimeout {
            waited: started.elapsed(),
            expected_members,
            last,
        })
    }

    /// Asks the leader at `leader_endpoint` to hand leadership to member `to` (etcd's
    /// MoveLeader: the leader campaigns for `to` and steps down); answers when etcd did.
    pub async fn move_leader(&self, leader_endpoint: &str, to: u64) -> Result<(), EtcdApiError> {
        self.on(
            leader_endpoint,
            "move leader",
            self.timeout,
            |mut c| async move { c.move_leader(to).await },
        )
        .await
        .map(drop)
    }

    /// Whether etcd auth is on, as told by a read of [`HEALTH_KEY`] on `endpoint`: haop's
    /// client certificate (CN `haop`) is no etcd user, so with auth on etcd answers "permission
    /// denied". (AuthStatus is not in 3.4; haop creates no etcd users, so a read that passes
    /// means auth is off.)
    pub async fn auth_enabled(&self, endpoint: &str) -> Result<bool, EtcdApiError> {
        match self
            .on(endpoint, "auth check", self.timeout, |mut c| async move {
                c.get(HEALTH_KEY, None).await
            })
            .await
        {
            Ok(_) => Ok(false),
            Err(EtcdApiError::Rpc {
                source: etcd_client::Error::GRpcStatus(s),
                ..
            }) if s.message().contains("permission denied")
                || s.message().contains("user name") =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes member `id` (a voter or a learner).
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>, EtcdApiError> {
        let (endpoint, r) = self
            .any("member remove", Failover::Write, |mut c| async move {
                c.member_remove(id).await
            })
            .await
            .map_err(|e| with_id(e, id))?;
        info!(endpoint = %endpoint, member = %format!("{id:x}"), "etcd member removed");
        Ok(r.members().iter().map(Member::from).collect())
    }

    /// Adds a learner with `peer_urls`; answers its new ID and the member list etcd returned (the
    /// new member has no name yet: [`initial_cluster`] builds its `--initial-cluster`).
    pub async fn member_add_as_learner(
        &self,
        peer_urls: &[String],
    ) -> Result<(u64, Vec<Member>), EtcdApiError> {
        let urls = peer_urls.to_vec();
        let (endpoint, r) = self
            .any("member add", Failover::Write, |mut c| {
                let urls = urls.clone();
                async move {
                    c.member_add(urls, Some(MemberAddOptions::new().with_is_learner()))
                        .await
                }
            })
            .await
            .map_err(|e| match e {
                EtcdApiError::PeerUrlsExist { endpoint, op, .. } => EtcdApiError::PeerUrlsExist {
                    endpoint,
                    op,
                    peer_urls: peer_urls.to_vec(),
                },
                e => e,
            })?;
        let id = r.member().map(|m| m.id()).unwrap_or_default();
        info!(endpoint = %endpoint, member = %format!("{id:x}"), peer_urls = ?peer_urls, "etcd learner added");
        Ok((id, r.member_list().iter().map(Member::from).collect()))
    }

    /// Promotes learner `id` to a voter; etcd refuses ([`EtcdApiError::LearnerNotReady`]) until
    /// the learner has caught up with the leader.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>, EtcdApiError> {
        let (endpoint, r) = self
            .any("member promote", Failover::Write, |mut c| async move {
                c.member_promote(id).await
            })
            .await
            .map_err(|e| with_id(e, id))?;
        info!(endpoint = %endpoint, member = %format!("{id:x}"), "etcd learner promoted");
        Ok(r.members().iter().map(Member::from).collect())
    }

    /// Sets the peer URLs of member `id` (`etcdctl member update`): the other members dial it
    /// there from now on. Nothing restarts.
    pub async fn member_update_peer_urls(
        &self,
        id: u64,
        peer_urls: &[String],
    ) -> Result<Vec<Member>, EtcdApiError> {
        let urls = peer_urls.to_vec();
        let (endpoint, r) = self
            .any("member update", Failover::Write, |mut c| {
                let urls = urls.clone();
                async move { c.member_update(id, urls).await }
            })
            .await
            .map_err(|e| with_id(e, id))?;
        info!(endpoint = %endpoint, member = %format!("{id:x}"), urls = ?peer_urls, "etcd member's peer URLs updated");
        Ok(r.members().iter().map(Member::from).collect())
    }

    /// Writes `key` = `value`; answers the store revision after the write.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<i64, EtcdApiError> {
        let value = value.to_vec();
        let (_, r) = self
            .any("put", Failover::Write, |mut c| {
                let value = value.clone();
                async move { c.put(key, value, None).await }
            })
            .await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Reads `key` (linearizable); `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdApiError> {
        let (_, r) = self
            .any("get", Failover::Read, |mut c| async move {
                c.get(key, None).await
            })
            .await?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// The store revision the member at `endpoint` has applied, answered by that member alone
    /// (a serializable read: a member that lost its quorum still answers it).
    pub async fn local_revision(&self, endpoint: &str) -> Result<i64, EtcdApiError> {
        let r = self
            .on(endpoint, "revision", self.timeout, |mut c| async move {
                let local = etcd_client::GetOptions::new()
                    .with_count_only()
                    .with_serializable();
                c.get(HEALTH_KEY, Some(local)).await
            })
            .await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// The current revision of the member at `endpoint` and its key count there.
    pub async fn count_keys_of(&self, endpoint: &str) -> Result<(i64, i64), EtcdApiError> {
        self.on(endpoint, "count keys", self.timeout, |mut c| async move {
            count_keys(&mut c, None).await
        })
        .await
    }

    /// `hashkv` of the member at `endpoint` up to `revision`, with its compact revision. It
    /// reads the whole key bucket, so the bound grows with the member's database (`db_size`).
    pub async fn hash_kv_of(
        &self,
        endpoint: &str,
        revision: i64,
        db_size: i64,
    ) -> Result<(u32, i64), EtcdApiError> {
        self.on(
            endpoint,
            "hash kv",
            scaled_timeout(self.timeout, db_size),
            |mut c| async move { hash_kv(&mut c, revision).await },
        )
        .await
    }

    /// Streams a maintenance snapshot into `to`, atomically: a temp file in the same directory,
    /// fsynced, renamed into place, directory fsynced. etcd's trailing SHA-256 is checked before
    /// the rename, so a truncated stream never becomes a snapshot file.
    pub async fn snapshot(&self, to: &Path) -> Result<SnapshotInfo, EtcdApiError> {
        let mut last = None;
        let n = self.endpoints.len();
        let start = *self.preferred.lock().unwrap_or_else(|e| e.into_inner());
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            let endpoint = self.endpoints[i].clone();
            match self.snapshot_from(&endpoint, to).await {
                Ok(info) => return Ok(info),
                Err(
                    e @ (EtcdApiError::SnapshotIo { .. } | EtcdApiError::SnapshotCorrupt { .. }),
                ) => return Err(e),
                Err(e) => {
                    failures.push(crate::error_chain(&e));
                    last = Some(e);
                }
            }
        }
        match (last, failures.len()) {
            (Some(e), 1) => Err(e),
            _ => Err(EtcdApiError::NoEndpointAnswered {
                op: "snapshot",
                failures,
            }),
        }
    }

    /// [`snapshot`](Self::snapshot) from one endpoint. Each message of the stream must arrive
    /// within the client's timeout; the whole stream has no time limit (large databases).
    pub async fn snapshot_from(
        &self,
        endpoint: &str,
        to: &Path,
    ) -> Result<SnapshotInfo, EtcdApiError> {
        self.snapshot_from_with(endpoint, to, &|_| {}).await
    }

    /// [`snapshot_from`](Self::snapshot_from), telling `progress` the bytes received so far
    /// (about every 8 MiB, and at the end).
    pub async fn snapshot_from_with(
        &self,
        endpoint: &str,
        to: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<SnapshotInfo, EtcdApiError> {
        let mut tmp = TempSnapshot::create(to)?;
        let streamed = self
            .snapshot_into(endpoint, &mut |bytes| tmp.write(bytes), progress)
            .await?;
        tmp.persist(to)?;
        let info = SnapshotInfo {
            path: to.to_path_buf(),
            endpoint: streamed.endpoint,
            size: streamed.size,
            sha256: streamed.sha256,
            revision: streamed.revision,
            taken_unix: Some(time::OffsetDateTime::now_utc().unix_timestamp()),
        };
        info!(endpoint = %endpoint, path = %to.display(), size = info.size, sha256 = %info.sha256, "etcd snapshot saved");
        Ok(info)
    }

    /// Streams a maintenance snapshot of the member at `endpoint` into `sink`, message by
    /// message, and checks etcd's trailing SHA-256 at the end: only an `Ok` answer means the
    /// bytes given to `sink` are a whole snapshot (the caller keeps them only then). Each
    /// message must arrive within the client's timeout; the whole stream has no time limit.
    pub async fn snapshot_into(
        &self,
        endpoint: &str,
        sink: &mut (dyn FnMut(&[u8]) -> Result<(), EtcdApiError> + Send),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<StreamedSnapshot, EtcdApiError> {
        const OP: &str = "snapshot";
        const EVERY: u64 = 8 * 1024 * 1024;
        let mut told: u64 = 0;
        let mut stream = self
            .on(endpoint, OP, self.timeout, |mut c| async move {
                c.snapshot().await
            })
            .await?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut revision = None;
        let mut trailing = TrailingHash::default();
        loop {
            let msg = match tokio::time::timeout(self.timeout, stream.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    self.forget(endpoint);
                    return Err(classify(endpoint, OP, e));
                }
                Err(_) => {
                    self.forget(endpoint);
                    return Err(EtcdApiError::Timeout {
                        endpoint: endpoint.to_string(),
                        op: OP,
                        timeout: self.timeout,
                    });
                }
            };
            if revision.is_none() {
                revision = msg.header().map(|h| h.revision()).filter(|&r| r > 0);
            }
            let blob = msg.blob();
            sink(blob)?;
            hasher.update(blob);
            size += blob.len() as u64;
            if size - told >= EVERY {
                progress(size);
                told = size;
            }
            trailing.update(blob);
        }
        let corrupt = |reason: String| EtcdApiError::SnapshotCorrupt {
            endpoint: endpoint.to_string(),
            reason,
        };
        if (size as usize) <= SNAPSHOT_HASH_LEN {
            return Err(corrupt(format!("only {size} bytes")));
        }
        let (expected_db_hash, tail) = trailing.finish();
        if expected_db_hash.as_slice() != tail.as_slice() {
            return Err(corrupt(
                "the database does not match etcd's trailing SHA-256 (truncated stream?)".into(),
            ));
        }
        progress(size);
        Ok(StreamedSnapshot {
            endpoint: endpoint.to_string(),
            size,
            sha256: hex::encode(hasher.finalize()),
            revision,
        })
    }
}

/// The slowest rate haop assumes a member moves its database at (disk or network), for waits
/// that have no progress to follow: a defragmentation rewriting the file, a restore.
pub const SLOWEST_BYTES_PER_SEC: u64 = 10 * 1024 * 1024;

/// `base` plus the time [`SLOWEST_BYTES_PER_SEC`] needs for `db_size` bytes: a bound for an
/// operation that moves the whole database and reports nothing while it runs. A 20 KiB database
/// gets `base`; a 2 GiB one `base` + 205 s.
pub fn scaled_timeout(base: Duration, db_size: i64) -> Duration {
    base + Duration::from_secs(u64::try_from(db_size).unwrap_or(0) / SLOWEST_BYTES_PER_SEC)
}

/// Each request of a quorum wait: a member that is starting accepts connections but answers only
/// once it has joined, so a long request timeout would make every poll round wait for it.
pub const QUORUM_POLL_TIMEOUT: Duration = Duration::from_millis(300);

/// Connects with haop's credentials and waits for quorum with the same endpoints (the bootstrap's
/// quorum step). Each request is bounded by a second or by what is left of `deadline`.
pub async fn wait_for_quorum_at(
    state_dir: &Path,
    endpoints: &[String],
    expected_members: usize,
    deadline: Duration,
) -> Result<QuorumReport, EtcdApiError> {
    let client =
        EtcdClient::connect(state_dir, endpoints, deadline.min(QUORUM_POLL_TIMEOUT)).await?;
    client
        .wait_for_quorum(endpoints, expected_members, deadline)
        .await
}

/// `--initial-cluster` for a member that was just added (`name=peer-url,...`), from the member
/// list of the add answer, in which the new member `new_id` has no name yet; as etcdctl prints it.
pub fn initial_cluster(members: &[Member], new_id: u64, new_name: &str) -> String {
    let mut parts = Vec::new();
    for m in members {
        let name = if m.id == new_id { new_name } else { &m.name };
        for url in &m.peer_urls {
            parts.push(format!("{name}={url}"));
        }
    }
    parts.join(",")
}

/// Runs futures concurrently on this task; results in input order.
pub(crate) async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    use std::task::Poll;
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Maps an etcd client error to a typed error: etcd's own refusals by their message (etcd's
/// `rpctypes` errors are stable strings), connection failures apart from answered requests.
fn classify(endpoint: &str, op: &'static str, e: etcd_client::Error) -> EtcdApiError {
    let endpoint = endpoint.to_string();
    let status = match &e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            return EtcdApiError::Unreachable {
                endpoint,
                op,
                source: e,
            }
        }
        _ => {
            return EtcdApiError::Rpc {
                endpoint,
                op,
                source: e,
            }
        }
    };
    let message = status.message();
    if message.contains("etcdserver: unhealthy cluster") {
        EtcdApiError::UnhealthyCluster { endpoint, op }
    } else if message.contains("in sync with leader") {
        EtcdApiError::LearnerNotReady { endpoint, id: 0 }
    } else if message.contains("can only promote a learner member") {
        EtcdApiError::NotALearner { endpoint, id: 0 }
    } else if message.contains("too many learner members") {
        EtcdApiError::TooManyLearners { endpoint }
    } else if message.contains("etcdserver: member not found") {
        EtcdApiError::MemberNotFound { endpoint, id: 0 }
    } else if message.contains("Peer URLs already exists") {
        EtcdApiError::PeerUrlsExist {
            endpoint,
            op,
            peer_urls: Vec::new(),
        }
    } else if message.contains("not enough started members") {
        EtcdApiError::NotEnoughStartedMembers { endpoint, op }
    } else if message.contains("etcdserver: no leader") {
        EtcdApiError::NoLeader { endpoint, op }
    } else if message.contains("database space exceeded") {
        EtcdApiError::NoSpace { endpoint, op }
    } else if message.contains("required revision has been compacted") {
        EtcdApiError::Compacted {
            endpoint,
            revision: 0,
        }
    } else if is_connect_failure(status) {
        EtcdApiError::Unreachable {
            endpoint,
            op,
            source: e,
        }
    } else if is_transport_failure(status) {
        EtcdApiError::ConnectionLost {
            endpoint,
            op,
            source: e,
        }
    } else {
        EtcdApiError::Rpc {
            endpoint,
            op,
            source: e,
        }
    }
}

/// Whether the request failed while connecting (so the server never saw it): tonic marks those
/// with [`tonic::ConnectError`] in the status' sources.
fn is_connect_failure(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whether the request failed in the transport (a connection that broke) rather than with an
/// answer of etcd.
fn is_transport_failure(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::transport::Error>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Puts the member ID into the errors that name one.
fn with_id(e: EtcdApiError, id: u64) -> EtcdApiError {
    match e {
        EtcdApiError::LearnerNotReady { endpoint, .. } => {
            EtcdApiError::LearnerNotReady { endpoint, id }
        }
        EtcdApiError::NotALearner { endpoint, .. } => EtcdApiError::NotALearner { endpoint, id },
        EtcdApiError::MemberNotFound { endpoint, .. } => {
            EtcdApiError::MemberNotFound { endpoint, id }
        }
        e => e,
    }
}

/// A snapshot being written: a temp file next to its target, removed on drop unless persisted.
/// The check of etcd's snapshot stream, as the bytes stream by: etcd appends the SHA-256 of the
/// database, so the hash of every byte but the last [`SNAPSHOT_HASH_LEN`] must equal those last
/// bytes. The last ones are held back until the stream ends, so a 2 GiB snapshot is never read
/// back from disk to be checked.
#[derive(Default)]
struct TrailingHash {
    hasher: Sha256,
    tail: Vec<u8>,
}

impl TrailingHash {
    fn update(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > SNAPSHOT_HASH_LEN {
            let spill = self.tail.len() - SNAPSHOT_HASH_LEN;
            self.hasher.update(&self.tail[..spill]);
            self.tail.drain(..spill);
        }
    }

    /// The hash of all but the last bytes, and those last bytes.
    fn finish(self) -> (Vec<u8>, Vec<u8>) {
        (self.hasher.finalize().to_vec(), self.tail)
    }
}

pub(crate) struct TempSnapshot {
    path: PathBuf,
    file: std::fs::File,
    persisted: bool,
}

impl TempSnapshot {
    /// A temp file next to `target`, owner-only, removed on drop unless persisted.
    pub(crate) fn create(target: &Path) -> Result<TempSnapshot, EtcdApiError> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut attempt = 0u32;
        loop {
            let path = dir.join(format!(".{name}.haop-tmp.{}.{attempt}", std::process::id()));
            // A snapshot is the whole keyspace, every Kubernetes Secret in it: owner-only from
            // its first byte.
            match std::fs::OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempSnapshot {
                        path,
                        file,
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(source) => {
                    return Err(EtcdApiError::SnapshotIo {
                        action: "create",
                        path,
                        source,
                    })
                }
            }
        }
    }

    fn err(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> EtcdApiError + '_ {
        move |source| EtcdApiError::SnapshotIo {
            action,
            path: self.path.clone(),
            source,
        }
    }

    /// The open temp file, for a writer layered on it (encryption).
    pub(crate) fn file_mut(&mut self) -> &mut std::fs::File {
        &mut self.file
    }

    /// Where the temp file is, for errors.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), EtcdApiError> {
        self.file
            .write_all(bytes)
            .map_err(|source| EtcdApiError::SnapshotIo {
                action: "write",
                path: self.path.clone(),
                source,
            })
    }

    /// fsync, rename over `target`, fsync the directory.
    pub(crate) fn persist(mut self, target: &Path) -> Result<(), EtcdApiError> {
        self.file.sync_all().map_err(self.err("fsync"))?;
        std::fs::rename(&self.path, target).map_err(|source| EtcdApiError::SnapshotIo {
            action: "rename into place",
            path: target.to_path_buf(),
            source,
        })?;
        self.persisted = true;
        let dir = parent_dir(target);
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| EtcdApiError::SnapshotIo {
                action: "fsync the directory of",
                path: target.to_path_buf(),
                source,
            })
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailing_hash_is_checked_whatever_the_chunks() {
        let db: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = db.clone();
        stream.extend_from_slice(&Sha256::digest(&db));
        for chunk in [1, 7, 31, 32, 33, 4096, 1 << 20] {
            let mut t = TrailingHash::default();
            for c in stream.chunks(chunk) {
                t.update(c);
            }
            let (hash, tail) = t.finish();
            assert_eq!(hash, tail, "chunks of {chunk}");
        }
        // A stream cut short does not check.
        let mut t = TrailingHash::default();
        t.update(&stream[..stream.len() - 1000]);
        let (hash, tail) = t.finish();
        assert_ne!(hash, tail);
    }

    fn status(code: tonic::Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    #[test]
    fn etcd_refusals_map_to_typed_errors() {
        use tonic::Code;
        let e = classify(
            "https://a:2379",
            "member remove",
            status(Code::Unavailable, "etcdserver: unhealthy cluster"),
        );
        assert!(matches!(e, EtcdApiError::UnhealthyCluster { .. }), "{e:?}");
        assert!(e.to_string().contains("https://a:2379"), "{e}");
        let e = with_id(
            classify(
                "e",
                "member promote",
                status(
                    Code::FailedPrecondition,
                    "etcdserver: can only promote a learner member which is in sync with leader",
                ),
            ),
            0xab,
        );
        assert!(
            matches!(e, EtcdApiError::LearnerNotReady { id: 0xab, .. }),
            "{e:?}"
        );
        let e = classify(
            "e",
            "member promote",
            status(
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
        );
        assert!(matches!(e, EtcdApiError::NotALearner { .. }), "{e:?}");
        let e = classify(
            "e",
            "member add",
            status(
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
        );
        assert!(matches!(e, EtcdApiError::TooManyLearners { .. }), "{e:?}");
        let e = classify(
            "e",
            "member remove",
            status(Code::NotFound, "etcdserver: member not found"),
        );
        assert!(matches!(e, EtcdApiError::MemberNotFound { .. }), "{e:?}");
        let e = classify(
            "e",
            "get",
            status(Code::Unavailable, "etcdserver: no leader"),
        );
        assert!(
            matches!(e, EtcdApiError::NoLeader { .. }) && e.is_retryable(),
            "{e:?}"
        );
        let e = classify(
            "e",
            "get",
            status(Code::InvalidArgument, "etcdserver: key is not provided"),
        );
        assert!(
            matches!(e, EtcdApiError::Rpc { .. }) && !e.is_retryable(),
            "{e:?}"
        );
    }

    #[test]
    fn initial_cluster_names_the_new_member() {
        let m = |id, name: &str, url: &str| Member {
            id,
            name: name.into(),
            peer_urls: vec![url.into()],
            client_urls: vec![],
            is_learner: false,
        };
        let members = [
            m(1, "etcd1", "https://10.0.0.1:2380"),
            m(9, "", "https://10.0.0.4:2380"),
        ];
        assert_eq!(
            initial_cluster(&members, 9, "etcd4"),
            "etcd1=https://10.0.0.1:2380,etcd4=https://10.0.0.4:2380"
        );
    }
}
