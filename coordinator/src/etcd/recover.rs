//! `haop etcd recover HOST`: the seed's last chapter, done so that it cannot lose quorum or data.
//!
//! A loop of observe, plan, act. [`Recovery::observe`] asks etcd (member list, each member's
//! status through its own endpoint) into a [`quorum::Observation`]; the pure planner
//! ([`quorum::plan_recover`]) answers the next safe actions or a typed refusal; [`Recovery`] then
//! carries the actions out through the etcd API and the host's agent:
//!
//! * a snapshot from a healthy member before every membership change (kept in the state dir);
//! * the member's unit stopped, the member removed (when etcd answers `unhealthy cluster`
//!   because it still counts the dead member as active, it waits and says so);
//! * the data dir wiped only after the host's identity, the member's removal and the stopped
//!   unit are verified (the agent fences the last one itself), and moved aside, not deleted;
//! * the member added back as a learner, started with `--initial-cluster-state existing` and the
//!   initial cluster from the `member add` answer, promoted once caught up.
//!
//! Waits are bounded and observed again, never slept through. Every step can be interrupted:
//! run again, the loop sees where the cluster is and continues from there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::{AgentError, Agents, HostAgent};
use crate::etcd::api::{self, EtcdApiError, EtcdClient, SnapshotInfo};
use crate::etcd::catchup::{human_bytes, Report, Sample, Tracker};
use crate::etcd::config::UNIT_NAME;
use crate::etcd::member_host;
use crate::etcd::quorum::{
    self, CatchUp, DesiredMember, MemberAction, Observation, ObservedMember, Refusal,
};
use crate::inventory::Inventory;
use crate::runbook::plan::member_config;
use crate::trust::Trust;

/// Errors of recovery; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{host} is not an etcd host of the inventory")]
    UnknownHost { host: String },
    #[error("recovery refused: {0}")]
    Refused(Refusal),
    #[error(
        "no etcd member answers; if quorum is lost, restore from a snapshot (haop etcd restore)"
    )]
    NoAnswer(#[source] EtcdApiError),
    #[error("etcd refused {what}")]
    Etcd {
        what: String,
        #[source]
        source: EtcdApiError,
    },
    #[error("a snapshot from {from}")]
    Snapshot {
        from: String,
        #[source]
        source: Box<crate::etcd::snapshots::SnapshotError>,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Host(#[from] member_host::MemberHostError),
    #[error("{what} did not happen within {seconds} s; run the command again to continue")]
    Timeout { what: String, seconds: u64 },
    #[error(
        "{detail}; stopped waiting after the stall timeout ({stall} s, etcd.catch_up_stall or \
         --stall-timeout). The member was left as it is: check its host (disk, network to the \
         leader, its etcd log) and run the command again to keep waiting"
    )]
    Stalled { detail: String, stall: u64 },
    #[error(
        "the state dir has {} free in {}, and the next snapshot needs about {} (the \
         database of {from}); nothing was changed: free space there or move the state dir \
         (--state-dir) before running this again",
        human_bytes(*.available), .dir.display(), human_bytes(*.needed)
    )]
    StateDirFull {
        dir: PathBuf,
        available: u64,
        needed: u64,
        from: String,
    },
    #[error(
        "{host} has {} free for {path}, and a member there needs about {} (the leader's \
         database of {}, its write-ahead log and room to grow); nothing was changed on the \
         cluster: free space on {host} or give it a larger disk, then run this again",
        human_bytes(*.available), human_bytes(*.needed), human_bytes(*.db)
    )]
    NoRoom {
        host: String,
        path: String,
        available: u64,
        needed: u64,
        db: u64,
    },
    #[error("cannot check the free space of {}", .dir.display())]
    Space {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("not taking the step {step}: {reason}")]
    Fenced { step: String, reason: String },
}

/// What recovery reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    Action(String),
    Waiting(String),
    /// A member catching up: shown as a bar on a terminal, a line now and then otherwise.
    CatchUp(Report),
    /// Bytes of a snapshot streamed so far (`total`: the member's database size, roughly).
    Transfer {
        what: String,
        bytes: u64,
        total: Option<u64>,
    },
    Done {
        elapsed: Duration,
    },
}

/// Everything recovery needs, connected once. One `Recovery` is one operation: it takes the
/// snapshot that operation needs once, before its first membership change, and reuses it.
#[derive(Debug)]
pub struct Recovery {
    state_dir: PathBuf,
    inventory: Inventory,
    etcd: EtcdClient,
    agents: Agents,
    tracker: std::sync::Mutex<Tracker>,
    /// The latest catch-up report per member name, for the wait actions and the stall error.
    reports: std::sync::Mutex<HashMap<String, Report>>,
    /// The snapshot this operation took.
    snapshot: tokio::sync::Mutex<Option<SnapshotInfo>>,
    /// The leader's database size at the last observation.
    leader_db: std::sync::Mutex<Option<u64>>,
    /// Asked before every step that changes something (the operator's lease); none for a
    /// person's command.
    fence: Option<Arc<dyn Fence>>,
}

/// Something that must allow each changing step before it is taken: `haop operator run` fences
/// every step with its etcd lease, so that an instance that lost its leadership (a partition,
/// a pause) cannot act after another took over. Waits are not fenced (they change nothing).
pub trait Fence: Send + Sync + std::fmt::Debug {
    /// `Ok` to go on; `Err(why)` when the step must not be taken.
    fn allow<'a>(
        &'a self,
        step: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

/// How old a snapshot is, in seconds (0 when unknown).
fn info_age(info: &SnapshotInfo) -> u64 {
    info.taken_unix
        .map(|t| (time::OffsetDateTime::now_utc().unix_timestamp() - t).max(0) as u64)
        .unwrap_or(0)
}

/// `42 s`, `12 min`, `3 h`.
fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

fn now_ms() -> u64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64
}

impl Recovery {
    pub async fn connect(state_dir: &Path, inventory: Inventory) -> Result<Recovery, RecoverError> {
        let trust = Arc::new(Trust::load(state_dir)?);
        let endpoints = inventory.etcd_client_urls();
        let etcd = EtcdClient::connect(state_dir, &endpoints, Duration::from_secs(2))
            .await
            .map_err(RecoverError::NoAnswer)?;
        Ok(Recovery {
            state_dir: state_dir.to_path_buf(),
            agents: Agents::new(trust, &inventory),
            tracker: std::sync::Mutex::new(Tracker::new(inventory.etcd.catch_up_stall.duration())),
            reports: std::sync::Mutex::new(HashMap::new()),
            snapshot: tokio::sync::Mutex::new(None),
            leader_db: std::sync::Mutex::new(None),
            fence: None,
            inventory,
            etcd,
        })
    }

    /// Every changing step asks `fence` first; a refusal ends the operation with
    /// [`RecoverError::Fenced`] and nothing of that step done.
    pub fn with_fence(mut self, fence: Arc<dyn Fence>) -> Recovery {
        self.fence = Some(fence);
        self
    }

    async fn allowed(&self, step: &str) -> Result<(), RecoverError> {
        match &self.fence {
            Some(f) => f.allow(step).await.map_err(|reason| RecoverError::Fenced {
                step: step.to_string(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Waits this long for a catching-up member that shows no progress (the inventory's
    /// `etcd.catch_up_stall` otherwise).
    pub fn with_stall_timeout(self, stall: Duration) -> Recovery {
        *lock(&self.tracker) = Tracker::new(stall);
        self
    }

    async fn agent(&self, host: &str) -> Result<HostAgent, RecoverError> {
        Ok(self.agents.get(host).await?)
    }

    /// The cluster as the planner sees it.
    pub async fn observe(&self) -> Result<Observation, RecoverError> {
        let members = self
            .etcd
            .member_list()
            .await
            .map_err(RecoverError::NoAnswer)?;
        let endpoints: Vec<String> = members
            .iter()
            .map(|m| m.client_urls.first().cloned().unwrap_or_default())
            .collect();
        let asked: Vec<String> = endpoints
            .iter()
            .filter(|e| !e.is_empty())
            .cloned()
            .collect();
        let mut answers: HashMap<String, api::EndpointStatus> = HashMap::new();
        for (ep, r) in asked.iter().zip(self.etcd.statuses(&asked).await) {
            if let Ok(s) = r {
                answers.insert(ep.clone(), s);
            }
        }
        let leader = answers
            .values()
            .filter(|s| s.leader_id != 0)
            .map(|s| s.leader_id)
            .next()
            .unwrap_or(0);
        let leader_status = answers
            .values()
            .find(|s| s.member_id == leader && leader != 0);
        let leader_index = leader_status.map(|s| s.raft_index);
        let leader_db = leader_status.and_then(|s| u64::try_from(s.db_size).ok());
        *lock(&self.leader_db) = leader_db;
        let mut observed: Vec<ObservedMember> = members
            .iter()
            .zip(&endpoints)
            .map(|(m, ep)| {
                let status = answers.get(ep);
                // An endpoint that answers as another member (a wiped member that bootstrapped
                // anew) is not this member.
                let own = status.filter(|s| s.member_id == m.id);
                ObservedMember {
                    id: m.id,
                    name: m.name.clone(),
                    peer_urls: m.peer_urls.clone(),
                    is_learner: m.is_learner,
                    reachable: Some(own.is_some()),
                    healthy: Some(own.is_some_and(|s| s.leader_id != 0 && s.errors.is_empty())),
                    raft_index: own.map(|s| s.raft_index),
                    active_since_ms: None,
                    is_leader: m.id == leader && own.is_some(),
                    catch_up: None,
                }
            })
            .collect();
        // Learners are followed by their progress, from their hosts.
        for m in observed.iter_mut().filter(|m| m.is_learner) {
            let Some(host) = self.host_of(m) else {
                continue;
            };
            let sample = self.sample(&host, m.raft_index).await;
            let report = lock(&self.tracker).observe(
                m.id,
                &host,
                sample,
                leader_db,
                leader_index,
                Instant::now(),
            );
            m.catch_up = Some(CatchUp {
                running: report.running,
                stalled: report.stalled,
            });
            lock(&self.reports).insert(host, report);
        }
        let desired = self
            .inventory
            .etcd_hosts()
            .iter()
            .map(|h| DesiredMember {
                name: h.name.as_str().to_string(),
                peer_url: self.inventory.etcd_peer_url(h),
            })
            .collect();
        Ok(Observation {
            members: observed,
            now_ms: now_ms(),
            desired,
        })
    }

    /// The inventory host of an observed member: by name, else (never started) by peer URL.
    fn host_of(&self, m: &ObservedMember) -> Option<String> {
        self.inventory
            .etcd_hosts()
            .iter()
            .find(|h| {
                h.name.as_str() == m.name || m.peer_urls.contains(&self.inventory.etcd_peer_url(h))
            })
            .map(|h| h.name.as_str().to_string())
    }

    /// What `host` says of its etcd: the process running, the bytes of its data dir. An agent
    /// that does not answer leaves both unknown (no progress).
    async fn sample(&self, host: &str, raft_index: Option<u64>) -> Sample {
        let Ok(agent) = self.agent(host).await else {
            return Sample {
                running: false,
                data_bytes: None,
                raft_index,
            };
        };
        let data_dir = self.inventory.etcd.data_dir.display().to_string();
        let (unit, stat) = tokio::join!(agent.unit_status(UNIT_NAME), agent.stat_tree(&data_dir));
        Sample {
            running: unit.is_ok_and(|u| {
                u.main_pid != 0 && matches!(u.active_state.as_str(), "active" | "activating")
            }),
            data_bytes: stat.ok().map(|s| s.tree_bytes),
            raft_index,
        }
    }

    /// The latest catch-up report of `name`, if it was followed.
    fn report(&self, name: &str) -> Option<Report> {
        lock(&self.reports).get(name).cloned()
    }

    fn endpoint_of(&self, name: &str) -> Option<String> {
        self.inventory
            .host(name)
            .map(|h| self.inventory.etcd_client_url(h))
    }

    /// Recovers the member on `host` until it is a healthy voter again. `deadline` bounds the
    /// whole operation when given; without it, only a stalled catch-up ends the wait.
    pub async fn recover(
        &self,
        host: &str,
        deadline: Option<Duration>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), RecoverError> {
        if !self
            .inventory
            .etcd_hosts()
            .iter()
            .any(|h| h.name.as_str() == host)
        {
            return Err(RecoverError::UnknownHost { host: host.into() });
        }
        self.drive(
            &format!("recovery of {host}"),
            &|obs| quorum::plan_recover(obs, host),
            deadline,
            progress,
        )
        .await
    }

    /// Recovers every failed member of the inventory, one at a time, while that is safe
    /// (`haop etcd heal`). Answers when every member is a healthy voter.
    pub async fn heal(
        &self,
        deadline: Option<Duration>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), RecoverError> {
        self.drive("healing", &quorum::plan_heal, deadline, progress)
            .await
    }

    /// Removes the member `host` from the cluster (`haop etcd remove`): the planner's
    /// [`quorum::plan_remove`] (refused when quorum could be lost, a learner is pending or any
    /// state is unknown), then this operation's snapshot and `member remove`.
    pub async fn remove_member(
        &self,
        host: &str,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<u64, RecoverError> {
        let started = Instant::now();
        loop {
            let obs = self.observe().await?;
            let actions = match quorum::plan_remove(&obs, host) {
                Ok(a) => a,
                Err(Refusal::NoHealthyLeader) if started.elapsed() < REFUSAL_HOLD => {
                    progress(Progress::Waiting("no single healthy leader yet".into()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(r) => return Err(RecoverError::Refused(r)),
            };
            self.check_state_dir_room(&obs).await?;
            let mut added = None;
            let mut id = 0;
            for action in &actions {
                if let MemberAction::Remove { member_id, .. } = action {
                    id = *member_id;
                }
                self.act(action, &obs, &mut added, progress).await?;
            }
            return Ok(id);
        }
    }

    /// Observe, plan with `planner`, act; until the planner says there is nothing to do.
    async fn drive(
        &self,
        what: &str,
        planner: &(dyn Fn(&Observation) -> Result<Vec<MemberAction>, Refusal> + Sync),
        deadline: Option<Duration>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), RecoverError> {
        let start = Instant::now();
        let mut added_cluster: Option<String> = None;
        let mut touched: Vec<String> = Vec::new();
        let mut refused_since: Option<Instant> = None;
        let mut room_checked = false;
        let mut add_retries = 0;
        let last_wait = std::sync::Mutex::new(String::new());
        let progress = &|p: Progress| {
            if let Progress::Waiting(w) = &p {
                let mut last = lock(&last_wait);
                if *last == *w {
                    return;
                }
                *last = w.clone();
            }
            progress(p)
        };
        loop {
            if let Some(d) = deadline.filter(|d| start.elapsed() > *d) {
                return Err(RecoverError::Timeout {
                    what: what.to_string(),
                    seconds: d.as_secs(),
                });
            }
            let obs = self.observe().await?;
            let actions = match planner(&obs) {
                Ok(a) => a,
                Err(r) if r.is_converged() => {
                    self.allowed("seal and prune after the members are healthy")
                        .await?;
                    self.finish(&touched, progress).await?;
                    progress(Progress::Done {
                        elapsed: start.elapsed(),
                    });
                    return Ok(());
                }
                Err(Refusal::NoHealthyLeader) => {
                    progress(Progress::Waiting("no single healthy leader yet".into()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                // The stall timeout has run out already: final at once.
                Err(Refusal::CatchUpStalled { name }) => {
                    return Err(RecoverError::Stalled {
                        detail: self
                            .report(&name)
                            .map(|r| r.stall_detail())
                            .unwrap_or_else(|| format!("{name} made no progress")),
                        stall: lock(&self.tracker).stall().as_secs(),
                    });
                }
                // An observation can be wrong for a moment (a status that timed out on a busy
                // machine reads as an unhealthy member): a refusal must hold for a while
                // before it is final. Nothing is done in between.
                Err(r) => {
                    let since = *refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= REFUSAL_HOLD {
                        return Err(RecoverError::Refused(r));
                    }
                    progress(Progress::Waiting(format!("{r}; observing again")));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            refused_since = None;
            // Before the first change of the operation: room for its snapshot.
            if !room_checked && actions.iter().any(MemberAction::is_membership_change) {
                self.check_state_dir_room(&obs).await?;
                room_checked = true;
            }
            for action in actions {
                if let MemberAction::StartExisting { name, .. } = &action {
                    if !touched.contains(name) {
                        touched.push(name.clone());
                    }
                }
                let barrier = action.is_barrier();
                if !action.is_wait() {
                    self.allowed(&action.describe()).await?;
                }
                match self.act(&action, &obs, &mut added_cluster, progress).await {
                    Ok(()) => {}
                    // The answer was lost (a connection that broke, a call that timed out):
                    // whether etcd made the change is unknown, and the next observation tells.
                    // The planner acts on what it observes, so observing again is safe.
                    // etcd 3.4 can answer `member not found` to a `member add` made right
                    // after a removal (seen in the lab, a few times in ten): nothing was added
                    // or the next observation shows the learner. Observe again, a bounded
                    // number of times.
                    Err(RecoverError::Etcd {
                        what,
                        source: source @ EtcdApiError::MemberNotFound { .. },
                    }) if matches!(action, MemberAction::AddLearner { .. })
                        && add_retries < ADD_RETRIES =>
                    {
                        add_retries += 1;
                        progress(Progress::Waiting(format!(
                            "{what}: {}; observing again",
                            crate::error_chain(&source)
                        )));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                    Err(RecoverError::Etcd { what, source }) if source.outcome_unknown() => {
                        progress(Progress::Waiting(format!(
                            "{what}: {}; observing again",
                            crate::error_chain(&source)
                        )));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                    Err(e) => return Err(e),
                }
                crate::failpoint::pass(&format!("recover:after-{}", action.kind())).await;
                if barrier {
                    break;
                }
            }
        }
    }

    /// Once every member is a healthy voter: seal every member's bootstrap file (also one
    /// started by an earlier, interrupted run; sealing is idempotent), and apply the retention
    /// to the moved-aside data dirs on the hosts and to the state dir's snapshots.
    async fn finish(
        &self,
        touched: &[String],
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), RecoverError> {
        let hosts: Vec<String> = self
            .inventory
            .etcd_hosts()
            .iter()
            .map(|h| h.name.as_str().to_string())
            .collect();
        for host in &hosts {
            if let Err(e) = self.seal(host).await {
                if touched.contains(host) {
                    return Err(e);
                }
                progress(Progress::Waiting(format!(
                    "could not seal {host}'s bootstrap file: {}",
                    crate::error_chain(&e)
                )));
            }
        }
        let retention = &self.inventory.etcd.retention;
        for host in &hosts {
            let pruned = async {
                self.agent(host)
                    .await?
                    .prune_wiped_data_dirs(
                        UNIT_NAME,
                        retention.wiped_data_dirs,
                        retention.wiped_grace.duration(),
                    )
                    .await
                    .map_err(RecoverError::from)
            };
            match pruned.await {
                Ok(r) => {
                    for gone in &r.removed {
                        progress(Progress::Action(format!(
                            "{host}: deleted {} ({}), moved aside earlier (etcd.retention)",
                            gone.path,
                            human_bytes(gone.bytes)
                        )));
                    }
                }
                Err(e) => progress(Progress::Waiting(format!(
                    "could not apply the retention to {host}'s moved-aside data dirs: {}",
                    crate::error_chain(&e)
                ))),
            }
        }
        for gone in crate::etcd::snapshots::prune(
            &self.state_dir,
            self.inventory.cluster.as_str(),
            retention,
        ) {
            progress(Progress::Action(format!(
                "deleted snapshot {} (etcd.retention)",
                gone.display()
            )));
        }
        Ok(())
    }

    /// The state dir must have room for this operation's snapshot: about the largest database
    /// of the members that answer, plus a margin. Checked before anything changes.
    async fn check_state_dir_room(&self, obs: &Observation) -> Result<(), RecoverError> {
        if self.snapshot.lock().await.is_some() {
            return Ok(());
        }
        let Some(db) = *lock(&self.leader_db) else {
            return Ok(());
        };
        let dir =
            crate::etcd::snapshots::snapshot_dir(&self.state_dir, self.inventory.cluster.as_str());
        let available = crate::etcd::snapshots::available_bytes(&dir).map_err(|source| {
            RecoverError::Space {
                dir: dir.clone(),
                source,
            }
        })?;
        let needed = db + db / 10 + 16 * 1024 * 1024;
        if available < needed {
            let from = obs
                .members
                .iter()
                .find(|m| m.is_leader)
                .map(|m| m.name.clone())
                .unwrap_or_else(|| "the leader".into());
            return Err(RecoverError::StateDirFull {
                dir,
                available,
                needed,
                from,
            });
        }
        Ok(())
    }

    /// The host must have room for a member: the leader's database, the write-ahead log
    /// (etcd preallocates 64 MB segments) and some growth. Checked before `member add`.
    async fn check_host_room(&self, host: &str) -> Result<(), RecoverError> {
        let Some(db) = *lock(&self.leader_db) else {
            return Ok(());
        };
        let data_dir = self.inventory.etcd.data_dir.display().to_string();
        let st = self.agent(host).await?.stat(&data_dir).await?;
        if st.fs_total_bytes == 0 {
            // An agent that does not report space (older than this haop): nothing to check.
            return Ok(());
        }
        let needed = db + db / 5 + 2 * 64 * 1024 * 1024;
        if st.fs_available_bytes < needed {
            return Err(RecoverError::NoRoom {
                host: host.to_string(),
                path: data_dir,
                available: st.fs_available_bytes,
                needed,
                db,
            });
        }
        Ok(())
    }

    async fn act(
        &self,
        action: &MemberAction,
        obs: &Observation,
        added_cluster: &mut Option<String>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), RecoverError> {
        match action {
            MemberAction::StopUnit { host } => {
                progress(Progress::Action(format!("stop {UNIT_NAME} on {host}")));
                member_host::stop(&self.agent(host).await?).await?;
            }
            MemberAction::Snapshot { from } => self.take_snapshot(from, progress).await?,
            MemberAction::WaitUntilInactive { member, until_ms } => {
                progress(Progress::Waiting(format!(
                    "etcd still counts {member} as active; waiting until it does not"
                )));
                let wait = until_ms.saturating_sub(now_ms()).min(6000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            MemberAction::Remove { name, member_id } => {
                progress(Progress::Action(format!(
                    "remove member {name} ({member_id:x})"
                )));
                let removed = self
                    .retry_unhealthy(&format!("removing {name}"), progress, || async {
                        self.etcd.member_remove(*member_id).await.map(|_| ())
                    })
                    .await;
                match removed {
                    // Removed already, by an earlier run or a request whose answer was lost.
                    Err(RecoverError::Etcd {
                        source: EtcdApiError::MemberNotFound { .. },
                        ..
                    }) => progress(Progress::Action(format!("{name} is already removed"))),
                    r => r?,
                }
                lock(&self.tracker).forget(*member_id);
            }
            MemberAction::Wipe { host, member_id } => self.wipe(host, *member_id, progress).await?,
            MemberAction::AddLearner { name, peer_url } => {
                self.check_host_room(name).await?;
                progress(Progress::Action(format!(
                    "add {name} as a learner ({peer_url})"
                )));
                let (id, members) = self
                    .retry_unhealthy(&format!("adding {name}"), progress, || async {
                        self.etcd
                            .member_add_as_learner(std::slice::from_ref(peer_url))
                            .await
                    })
                    .await?;
                *added_cluster = Some(api::initial_cluster(&members, id, name));
            }
            MemberAction::StartExisting {
                name,
                initial_cluster,
            } => {
                let cluster = added_cluster
                    .clone()
                    .unwrap_or_else(|| initial_cluster.clone());
                if self.start_existing(name, &cluster).await? {
                    progress(Progress::Action(format!(
                        "start {name} with --initial-cluster-state existing ({cluster})"
                    )));
                } else {
                    progress(Progress::Waiting(format!(
                        "learner {name} started; waiting until it answers"
                    )));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            MemberAction::WaitWhileCatchingUp { name } => {
                if let Some(r) = self.report(name) {
                    progress(Progress::CatchUp(r));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            MemberAction::WaitUntilCaughtUp {
                name,
                learner_index,
                leader_index,
            } => {
                match self.report(name) {
                    Some(r) => progress(Progress::CatchUp(r)),
                    None => progress(Progress::Waiting(format!(
                        "learner {name} catching up ({learner_index} of {leader_index})"
                    ))),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            MemberAction::Promote { name, member_id } => {
                progress(Progress::Action(format!("promote {name} to voter")));
                let started = Instant::now();
                loop {
                    match self.etcd.member_promote(*member_id).await {
                        Ok(_) => break,
                        // The observation came from a member that had not applied an earlier
                        // promotion yet (etcd 3.4 serves the member list locally): done.
                        Err(EtcdApiError::NotALearner { .. }) => {
                            progress(Progress::Action(format!("{name} is already a voter")));
                            break;
                        }
                        Err(EtcdApiError::LearnerNotReady { .. })
                            if started.elapsed() < Duration::from_secs(60) =>
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(source) => {
                            return Err(RecoverError::Etcd {
                                what: format!("promoting {name}"),
                                source,
                            })
                        }
                    }
                }
                lock(&self.tracker).forget(*member_id);
            }
        }
        let _ = obs;
        Ok(())
    }

    /// This operation's snapshot: taken once, streamed to the state dir with its progress
    /// shown, and reused by the operation's later membership changes.
    /// The state dir's newest verified snapshot of this cluster, when the inventory allows a
    /// repair to use it (`etcd.snapshots.reuse_for_repairs`) and it is young enough.
    fn reusable_snapshot(&self) -> Option<SnapshotInfo> {
        let within = self.inventory.etcd.snapshots.reuse_for_repairs.duration();
        if within.is_zero() {
            return None;
        }
        let entry = crate::etcd::snapshots::newest_verified(
            &self.state_dir,
            self.inventory.cluster.as_str(),
        )?;
        let meta = entry.meta?;
        let age = time::OffsetDateTime::now_utc().unix_timestamp() - meta.taken_unix;
        if age < 0 || age as u64 > within.as_secs() {
            return None;
        }
        Some(SnapshotInfo {
            path: entry.path,
            endpoint: meta.endpoint,
            size: meta.file_size,
            sha256: meta.file_sha256,
            revision: Some(meta.revision),
            taken_unix: Some(meta.taken_unix),
        })
    }

    async fn take_snapshot(
        &self,
        from: &str,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), RecoverError> {
        let mut taken = self.snapshot.lock().await;
        if let Some(info) = taken.as_ref() {
            progress(Progress::Waiting(format!(
                "this operation's snapshot {} is taken already",
                info.path.display()
            )));
            return Ok(());
        }
        if let Some(info) = self.reusable_snapshot() {
            progress(Progress::Action(format!(
                "snapshot: reusing {} (verified, {} old, within etcd.snapshots.reuse_for_repairs \
                 {}); writes since are on the members",
                info.path.display(),
                human_age(info_age(&info)),
                self.inventory.etcd.snapshots.reuse_for_repairs
            )));
            *taken = Some(info);
            return Ok(());
        }
        let ep = self.endpoint_of(from).unwrap_or_default();
        let cluster = self.inventory.cluster.as_str();
        let snapshot_err = |source| RecoverError::Snapshot {
            from: from.to_string(),
            source: Box::new(source),
        };
        let path = crate::etcd::snapshots::new_snapshot_path(&self.state_dir, cluster, from)
            .map_err(|source| {
                snapshot_err(crate::etcd::snapshots::SnapshotError::Io {
                    dir: crate::etcd::snapshots::snapshot_dir(&self.state_dir, cluster),
                    source,
                })
            })?;
        let key = crate::etcd::snapshots::crypt::SnapshotKey::load_or_create(&self.state_dir)
            .map_err(|e| snapshot_err(e.into()))?;
        let total = *lock(&self.leader_db);
        let what = format!("snapshot from {from}");
        let source = crate::etcd::snapshots::Source {
            endpoint: ep.clone(),
            member: from.to_string(),
            db_size: total.map(|t| t as i64).unwrap_or_default(),
            version: String::new(),
        };
        let meta =
            crate::etcd::snapshots::take(&self.etcd, &source, &key, cluster, &path, &|bytes| {
                progress(Progress::Transfer {
                    what: what.clone(),
                    bytes,
                    total,
                })
            })
            .await
            .map_err(snapshot_err)?;
        let info = SnapshotInfo {
            path,
            endpoint: ep,
            size: meta.file_size,
            sha256: meta.file_sha256,
            revision: Some(meta.revision),
            taken_unix: Some(meta.taken_unix),
        };
        progress(Progress::Action(format!(
            "snapshot from {from}: {} ({}, sha256 {})",
            info.path.display(),
            human_bytes(info.size),
            &info.sha256[..12]
        )));
        *taken = Some(info);
        Ok(())
    }

    /// Retries while etcd answers `unhealthy cluster` (its 5 s rule after a member died or
    /// restarted), saying so once.
    async fn retry_unhealthy<T, F, Fut>(
        &self,
        what: &str,
        progress: &(dyn Fn(Progress) + Sync),
        mut f: F,
    ) -> Result<T, RecoverError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, EtcdApiError>>,
    {
        let started = Instant::now();
        let mut said = false;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(EtcdApiError::UnhealthyCluster { .. })
                    if started.elapsed() < Duration::from_secs(30) =>
                {
                    if !said {
                        progress(Progress::Waiting(format!(
                            "etcd answered `unhealthy cluster` to {what}: it changes membership \
                             only when its voters have been connected for 5 s and the removed \
                             member is no longer active; waiting and retrying"
                        )));
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => {
                    return Err(RecoverError::Etcd {
                        what: what.to_string(),
                        source,
                    })
                }
            }
        }
    }

    async fn wipe(
        &self,
        host: &str,
        member_id: Option<u64>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), RecoverError> {
        let agent = self.agent(host).await?;
        let members = self
            .etcd
            .member_list()
            .await
            .map_err(RecoverError::NoAnswer)?;
        let peer = self
            .inventory
            .host(host)
            .map(|h| self.inventory.etcd_peer_url(h));
        let owner = member_host::Owner {
            host,
            peer_url: peer.as_deref(),
            member_id,
        };
        let data_dir = self.inventory.etcd.data_dir.display().to_string();
        let r = member_host::wipe(&agent, &owner, &members, &data_dir).await?;
        progress(Progress::Action(if r.changed {
            format!("wiped {data_dir} on {host} (moved to {})", r.moved_to)
        } else {
            format!("{data_dir} on {host} is already empty")
        }));
        Ok(())
    }

    /// Writes the member's files and starts it; answers whether anything changed (nothing does
    /// while an already started learner is still connecting).
    async fn start_existing(
        &self,
        name: &str,
        initial_cluster: &str,
    ) -> Result<bool, RecoverError> {
        let h = self
            .inventory
            .host(name)
            .ok_or_else(|| RecoverError::UnknownHost { host: name.into() })?;
        let cfg = member_config(&self.inventory, h);
        let agent = self.agent(name).await?;
        Ok(member_host::start_existing(&agent, &cfg, initial_cluster).await?)
    }

    async fn seal(&self, host: &str) -> Result<(), RecoverError> {
        member_host::seal(&self.agent(host).await?).await?;
        Ok(())
    }
}

/// How many times a `member add` answered `member not found` is observed again and retried.
const ADD_RETRIES: u32 = 10;

/// How long the planner must keep refusing before recovery gives up.
const REFUSAL_HOLD: Duration = Duration::from_secs(6);

/// A std mutex that a panic elsewhere did not make unusable.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
