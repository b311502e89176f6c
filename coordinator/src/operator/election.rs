//! Who of several `haop operator run` instances acts: etcd's own election API (v3election
//! Campaign and Leader) on a lease, and a fence in front of every action.
//!
//! Why etcd's election: the cluster the operator looks after is already a consensus system
//! that every instance reaches; a second one (a file lock, a VIP) would fail differently from
//! the thing it guards. It also gives the right answer when the quorum is lost: nobody can be
//! elected or stay leader, and that is exactly when the operator must not act.
//!
//! Why a fence as well: an instance may be the leader in its own memory after it stopped
//! being one (cut off, paused, its lease expired). Every action asks [`Leadership::fence`]
//! first, which checks two things:
//! * locally, that the lease's known expiry has not passed: the time the last acknowledged
//!   keep-alive was sent plus the TTL etcd granted, minus a margin ([`MARGIN_PART`] of the
//!   TTL) for clocks that run at different rates. A partitioned leader fails this before the
//!   others can be elected (they wait for the whole TTL on etcd's clock).
//! * in etcd, a transaction that compares the create revision of this instance's leader key
//!   with the one it won with, and only then writes the action's record under
//!   [`ACTIONS_PREFIX`]. A leader whose key is gone (its lease expired while it was paused)
//!   fails this one; the record is also the audit trail of who did what, at which revision.
//!
//! What neither can stop: an action allowed just before a partition runs to its end (an
//! `member remove` already sent). Each action is one short call or one bounded wait, every
//! recovery step is safe to repeat, and the next leader observes before it acts.
//!
//! Lifecycle: [`Elector::lead`] grants a lease, keeps it alive in a task (every third of the
//! TTL) and campaigns until this instance leads; the [`Leadership`] it answers ends (see
//! [`Leadership::lost`]) when a keep-alive says the lease is gone, when none was acknowledged
//! while a margin of the known expiry was left, when a fence finds the key gone, or when it is dropped (the
//! keep-alive task stops and the lease is revoked, so a clean shutdown hands over at once).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The election's name (etcd's election keys are `NAME/LEASE_ID`).
pub const ELECTION_NAME: &str = "/haop/operator/leader";
/// Where the leader records each action it was allowed to take.
pub const ACTIONS_PREFIX: &str = "/haop/operator/actions/";
/// The share of the TTL the local check keeps in hand.
const MARGIN_PART: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("etcd refused {what}")]
    Etcd {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("the operator's lease ended before it was elected: {0}")]
    LeaseLost(String),
}

fn etcd(what: &'static str) -> impl FnOnce(etcd_client::Error) -> ElectionError {
    move |source| ElectionError::Etcd { what, source }
}

/// One action record, as the fence wrote it (JSON under [`ACTIONS_PREFIX`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub instance: String,
    pub step: String,
    pub at_unix_ms: u64,
    /// The create revision of the leader key the instance held.
    pub leader_revision: i64,
}

/// The current leader, as etcd's Leader call answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub instance: String,
    /// The create revision of its key: a later leadership has a larger one.
    pub revision: i64,
}

/// One client per etcd endpoint, asked in turn: a member that is down (the very time the
/// operator is needed) costs one failed attempt, never the lease.
#[derive(Clone)]
pub struct Endpoints {
    clients: Arc<Vec<(String, Client)>>,
    preferred: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.clients.iter().map(|(e, _)| e.as_str()).collect();
        f.debug_struct("Endpoints")
            .field("endpoints", &names)
            .finish()
    }
}

/// Whether `e` says the request did not reach a working member (another may answer).
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ) || s.message().contains("no leader")
                || s.message().contains("leader changed")
        }
        _ => false,
    }
}

impl Endpoints {
    /// Clients of `etcd`'s endpoints with `timeout` per request.
    pub async fn connect(
        etcd: &crate::etcd::api::EtcdClient,
        timeout: Duration,
    ) -> Result<Endpoints, crate::etcd::api::EtcdApiError> {
        Ok(Endpoints {
            clients: Arc::new(etcd.endpoint_clients(timeout).await?),
            preferred: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// Runs `call` on the member that answered last, then on the others, as long as the
    /// failure says the member was not reached.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = etcd_client::Error::InvalidArgs("no etcd endpoint".into());
        for i in (0..n).map(|k| (start + k) % n) {
            match call(self.clients[i].1.clone()).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if unreachable(&e) => {
                    self.preferred.store((i + 1) % n, Ordering::Relaxed);
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Runs `call` on every member at once and answers the first success (for idempotent
    /// calls that must not wait on a member that does not answer: the lease's keep-alive).
    async fn first<T, F, Fut>(&self, call: F) -> Result<T, etcd_client::Error>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let mut set = tokio::task::JoinSet::new();
        for (_, c) in self.clients.iter() {
            set.spawn(call(c.clone()));
        }
        let mut last = etcd_client::Error::InvalidArgs("no etcd endpoint".into());
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = e,
                Err(e) => last = etcd_client::Error::InvalidArgs(e.to_string()),
            }
        }
        Err(last)
    }
}

/// Campaigns for one instance.
pub struct Elector {
    /// Short requests: leases, keep-alives, transactions, reads.
    client: Endpoints,
    /// The campaign call, which blocks while another instance leads.
    campaign_client: Endpoints,
    instance: String,
    ttl: Duration,
}

/// The lease behind a campaign or a leadership: its known expiry and the end signal.
#[derive(Debug)]
struct Lease {
    id: i64,
    valid_until: Mutex<Instant>,
    ended: watch::Sender<Option<String>>,
}

impl Lease {
    fn end(&self, why: impl Into<String>) {
        self.ended.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(why.into());
                true
            } else {
                false
            }
        });
    }

    fn ended(&self) -> Option<String> {
        self.ended.borrow().clone()
    }
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("instance", &self.instance)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Elector {
    /// `client` with short request timeouts, `campaign_client` with a long one (the campaign
    /// waits as long as another instance leads).
    pub fn new(
        client: Endpoints,
        campaign_client: Endpoints,
        instance: &str,
        ttl: Duration,
    ) -> Self {
        Elector {
            client,
            campaign_client,
            instance: instance.to_string(),
            ttl: ttl.max(Duration::from_secs(2)),
        }
    }

    /// Who leads now, if anyone.
    pub async fn leader(&self) -> Result<Option<Leader>, ElectionError> {
        let asked = self
            .client
            .call(|c| async move { c.election_client().leader(ELECTION_NAME).await })
            .await;
        match asked {
            Ok(r) => Ok(r.kv().map(|kv| Leader {
                instance: String::from_utf8_lossy(kv.value()).into_owned(),
                revision: kv.create_revision(),
            })),
            // etcd answers "election: no leader" as an error.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
            Err(e) => Err(etcd("the leader query")(e)),
        }
    }

    /// Grants a lease, keeps it alive and campaigns until this instance leads.
    pub async fn lead(&self) -> Result<Leadership, ElectionError> {
        let ttl_secs = self.ttl.as_secs().max(2) as i64;
        let sent = Instant::now();
        let granted = self
            .client
            .call(|mut c| async move { c.lease_grant(ttl_secs, None).await })
            .await
            .map_err(etcd("a lease grant"))?;
        let (ended, _) = watch::channel(None);
        let lease = Arc::new(Lease {
            id: granted.id(),
            valid_until: Mutex::new(sent + expiry(granted.ttl())),
            ended,
        });
        let margin = self.ttl / MARGIN_PART;
        let keeper = tokio::spawn(keep_alive(
            self.client.clone(),
            lease.clone(),
            self.ttl,
            margin,
        ));
        let guard = KeeperGuard {
            task: keeper,
            client: self.client.clone(),
            lease: lease.id,
        };
        let mut ended = lease.ended.subscribe();
        loop {
            let (id, me) = (lease.id, self.instance.clone());
            let campaign = self.campaign_client.call(|c| {
                let me = me.clone();
                async move {
                    c.election_client()
                        .campaign(ELECTION_NAME, me.as_str(), id)
                        .await
                }
            });
            let won = tokio::select! {
                r = campaign => r,
                _ = ended.wait_for(Option::is_some) => {
                    return Err(ElectionError::LeaseLost(lease.ended().unwrap_or_default()));
                }
            };
            match won {
                Ok(r) => {
                    let Some(key) = r.leader() else {
                        continue;
                    };
                    return Ok(Leadership {
                        client: self.client.clone(),
                        instance: self.instance.clone(),
                        key: key.key().to_vec(),
                        revision: key.rev(),
                        margin,
                        lease,
                        seq: AtomicU64::new(0),
                        _keeper: guard,
                    });
                }
                // A campaign that timed out or lost its connection: the key (NAME/LEASE) stays
                // with the lease, and campaigning again with the same lease takes up the same
                // place in the queue.
                Err(e) => {
                    if let Some(why) = lease.ended() {
                        return Err(ElectionError::LeaseLost(why));
                    }
                    tracing::debug!(error = %e, "campaign interrupted; campaigning again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// How long a lease granted or renewed with `ttl` seconds is known to last.
fn expiry(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// Renews `lease` every third of `ttl` (on every member at once, the first answer counts)
/// until etcd says it is gone, or until only `margin` of its known validity is left without a
/// renewal: then the leadership ends here, before etcd can expire the lease and elect another
/// instance (the known expiry counts from when the renewal was sent, so it is earlier than
/// etcd's), and an action in flight is dropped in time.
async fn keep_alive(client: Endpoints, lease: Arc<Lease>, ttl: Duration, margin: Duration) {
    let every = ttl / 3;
    let mut next = Instant::now() + every;
    let mut last_error = String::from("etcd did not answer in time");
    loop {
        let give_up = lock(&lease.valid_until)
            .checked_sub(margin)
            .unwrap_or_else(Instant::now);
        tokio::time::sleep_until(next.min(give_up).into()).await;
        let now = Instant::now();
        if now >= give_up {
            lease.end(format!(
                "the lease could not be renewed before the last {} ms of it: {last_error}",
                margin.as_millis()
            ));
            return;
        }
        let id = lease.id;
        let renewed = tokio::time::timeout(
            every.min(give_up - now),
            client.first(move |mut c| async move {
                // etcd-client opens the stream without a request for this lease: the
                // keeper sends it.
                let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                stream.message().await
            }),
        )
        .await;
        match renewed {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                *lock(&lease.valid_until) = now + expiry(r.ttl());
                next = now + every;
            }
            Ok(Ok(Some(_))) => {
                lease.end("etcd says the lease expired");
                return;
            }
            // Try again soon: the known validity is running out.
            other => {
                last_error = match other {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(None)) => "etcd closed the keep-alive stream".to_string(),
                    _ => "etcd did not answer in time".to_string(),
                };
                next = Instant::now() + every / 4;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops the keep-alive task and revokes the lease (best effort) when the leadership or the
/// campaign ends: the next instance need not wait for the TTL after a clean stop.
struct KeeperGuard {
    task: tokio::task::JoinHandle<()>,
    client: Endpoints,
    lease: i64,
}

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        self.task.abort();
        let c = self.client.clone();
        let id = self.lease;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let revoke = c.call(|mut c| async move { c.lease_revoke(id).await });
                let _ = tokio::time::timeout(Duration::from_secs(2), revoke).await;
            });
        }
    }
}

/// This instance leads, while it lasts.
pub struct Leadership {
    client: Endpoints,
    instance: String,
    key: Vec<u8>,
    revision: i64,
    margin: Duration,
    lease: Arc<Lease>,
    seq: AtomicU64,
    _keeper: KeeperGuard,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("instance", &self.instance)
            .field("revision", &self.revision)
            .field("lease", &format!("{:x}", self.lease.id))
            .finish()
    }
}

impl Leadership {
    /// The create revision of the leader key this instance won with.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Resolves when the leadership has ended, with why.
    pub async fn lost(&self) -> String {
        let mut rx = self.lease.ended.subscribe();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_default(),
            Err(_) => "the lease keeper stopped".to_string(),
        };
        why
    }

    /// Why the leadership ended, when it has.
    pub fn ended(&self) -> Option<String> {
        self.lease.ended()
    }

    /// Allows `step` only while this instance certainly leads, and records it (see the module
    /// docs). An error means: do not take the step.
    pub async fn fence(&self, step: &str) -> Result<ActionRecord, String> {
        if let Some(why) = self.lease.ended() {
            return Err(format!("no longer the leader: {why}"));
        }
        let left = lock(&self.lease.valid_until).saturating_duration_since(Instant::now());
        if left <= self.margin {
            let why = format!(
                "the lease may have expired ({} ms of it known to be left, {} ms kept in hand)",
                left.as_millis(),
                self.margin.as_millis()
            );
            self.lease.end(why.clone());
            return Err(format!("no longer certainly the leader: {why}"));
        }
        let record = ActionRecord {
            instance: self.instance.clone(),
            step: step.to_string(),
            at_unix_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64,
            leader_revision: self.revision,
        };
        let key = format!(
            "{ACTIONS_PREFIX}{:020}-{:08}",
            self.revision,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                self.revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let fenced = self.client.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        });
        match tokio::time::timeout(left - self.margin, fenced).await {
            Ok(Ok(r)) if r.succeeded() => Ok(record),
            Ok(Ok(_)) => {
                let why = "etcd no longer has this instance's leader key (its lease expired)";
                self.lease.end(why);
                Err(format!("no longer the leader: {why}"))
            }
            Ok(Err(e)) => Err(format!("the fence transaction failed: {e}")),
            Err(_) => Err(
                "the fence transaction did not answer before the lease's known expiry".to_string(),
            ),
        }
    }
}

/// The action records, oldest first, with the etcd revision each was written at.
pub async fn actions(client: &Endpoints) -> Result<Vec<(i64, ActionRecord)>, ElectionError> {
    let r = client
        .call(|mut c| async move {
            c.get(ACTIONS_PREFIX, Some(GetOptions::new().with_prefix()))
                .await
        })
        .await
        .map_err(etcd("reading the action records"))?;
    Ok(r.kvs()
        .iter()
        .filter_map(|kv| {
            serde_json::from_slice(kv.value())
                .ok()
                .map(|rec| (kv.mod_revision(), rec))
        })
        .collect())
}

impl crate::etcd::recover::Fence for Leadership {
    fn allow<'a>(
        &'a self,
        step: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move { self.fence(step).await.map(|_| ()) })
    }
}
