//! The runbook: `haop plan` and `haop apply` from one inventory file.
//!
//! The seed's procedure (hosts entries, certificates, etcd units with TLS, a parallel start and
//! a quorum, keepalived, node preparation, kubeadm) as data and an executor, kept apart:
//!
//! * [`mod@plan`] is pure: the inventory in, every [`Step`] out, each with its phase, a typed
//!   [`Target`] (a host, or the cluster) and an [`Action`] of one family.
//! * [`exec`] checks and runs one step; each action family (files, units, certificates,
//!   kernel, waits, kubeadm) owns both halves in its own module.
//! * This module drives them. [`Runbook::load`] reads the state dir once and plans.
//!   [`fn@plan`] checks every step against the hosts (in parallel across hosts, in order on each)
//!   and changes nothing. [`apply`] runs [`preflight`] on every host first (every missing
//!   prerequisite reported at once, nothing changed), then the phases in order: hosts in
//!   parallel within a phase, steps of one host in order, each an idempotent ensure through the
//!   agent, the first failure stopping that host.
//! * The [`journal`] in the state dir records every step. An apply that was killed is simply run
//!   again: every step compares before it acts, so the rerun continues where the state of the
//!   hosts is (a file written but its unit not restarted is found newer than the unit's process),
//!   and a converged cluster reports zero changes. The same holds within one apply: a step
//!   whose agent's connection broke before it answered (the agent restarted or crashed in the
//!   middle of the call; systemd restarts it) is run again, up to three times, once the agent
//!   answers, judging a restart by file times as a rerun would (kubeadm's steps excepted).

pub mod exec;
pub mod journal;
pub mod plan;
pub mod preflight;
mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::warn;

pub use exec::{Change, RunContext, StepError};
pub use plan::{Action, Context, Phase, PlanError, Step, Target};
pub use report::{ApplyReport, Event, Outcome, PlanView, Planned};

use crate::agent::{AgentError, HostAgent};
use crate::inventory::Inventory;
use crate::pki::{CertificateAuthority, ETCD_CA};
use crate::trust::{pki_dir, Trust};

/// Errors of plan and apply; each names the host and step when there is one.
#[derive(Debug, thiserror::Error)]
pub enum RunbookError {
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("preflight found {} problem(s); nothing was changed:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<String>),
    #[error("phase {phase} failed on {} step(s):\n{}\nFix the cause and run `haop apply` again: every step is safe to repeat.", .failures.len(), .failures.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"))]
    Phase { phase: Phase, failures: Vec<String> },
    #[error(transparent)]
    Unreachable(AgentError),
    #[error("cannot plan the runbook")]
    Plan(#[from] PlanError),
    #[error("state dir secret {path}")]
    Secret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::fsio::FsioError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

/// The state dir's VRRP password for `cluster` (8 characters: keepalived uses no more),
/// generated once and kept with mode 0600.
pub fn vrrp_password(state_dir: &Path, cluster: &str) -> Result<String, RunbookError> {
    let path = state_dir.join("secrets").join(format!("{cluster}.vrrp"));
    match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(RunbookError::Secret { path, source }),
    }
    let alphabet = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|e| RunbookError::Secret {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let pw: String = raw
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| RunbookError::Secret {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    crate::fsio::write_private(&path, pw.as_bytes())?;
    Ok(pw)
}

/// Everything a plan or apply needs, loaded once.
#[derive(Debug)]
pub struct Runbook {
    pub inventory: Inventory,
    pub steps: Vec<Step>,
    pub ctx: Arc<RunContext>,
}

impl Runbook {
    pub fn load(state_dir: &Path, inventory: Inventory) -> Result<Runbook, RunbookError> {
        let trust = Arc::new(Trust::load(state_dir)?);
        let etcd_ca = CertificateAuthority::load(&pki_dir(state_dir), ETCD_CA)?;
        let context = Context {
            vrrp_password: vrrp_password(state_dir, inventory.cluster.as_str())?,
            etcd_client_crl: crate::identity::crl::current(
                state_dir,
                crate::identity::Channel::Etcd,
                &etcd_ca,
            )?
            .1,
        };
        let steps = plan::desired(&inventory, &context)?;
        let etcd_trust_pem = crate::pki::bundle::trust_pem(state_dir)?;
        let lifetime = inventory.pki.lifetime.duration();
        Ok(Runbook {
            steps,
            ctx: Arc::new(RunContext {
                trust,
                etcd_ca,
                etcd_trust_pem,
                state_dir: state_dir.to_path_buf(),
                cert_lifetime: lifetime,
                renew_within: (lifetime / 3).min(Duration::from_secs(30 * 24 * 3600)),
                rolling: tokio::sync::Mutex::new(()),
                key_algorithm: inventory.pki.key_algorithm,
            }),
            inventory,
        })
    }

    /// Connects to every host's agent at once; answers the clients and every failure.
    pub async fn connect_all(
        &self,
        timeout: Duration,
    ) -> (HashMap<String, HostAgent>, Vec<RunbookError>) {
        let mut set = tokio::task::JoinSet::new();
        for h in &self.inventory.hosts {
            let trust = self.ctx.trust.clone();
            let name = h.name.as_str().to_string();
            let endpoint = h.agent.as_str().to_string();
            set.spawn(async move {
                let r = HostAgent::connect(&trust, &name, &endpoint, timeout).await;
                (name, r)
            });
        }
        let mut clients = HashMap::new();
        let mut errors = Vec::new();
        for (name, r) in set.join_all().await {
            match r {
                Ok(c) => {
                    clients.insert(name, c);
                }
                Err(e) => errors.push(RunbookError::Unreachable(e)),
            }
        }
        (clients, errors)
    }
}

/// The steps grouped by target, each group in plan order.
fn by_target(steps: &[&Step]) -> BTreeMap<Target, Vec<Step>> {
    let mut m: BTreeMap<Target, Vec<Step>> = BTreeMap::new();
    for s in steps {
        m.entry(s.target.clone()).or_default().push((*s).clone());
    }
    m
}

/// The agent of `target`: a host's from `clients`, none for the cluster.
fn agent_for(clients: &HashMap<String, HostAgent>, target: &Target) -> Option<HostAgent> {
    target.host().and_then(|h| clients.get(h)).cloned()
}

/// Checks every step against the hosts; changes nothing.
pub async fn plan(rb: &Runbook, timeout: Duration) -> Result<Vec<Planned>, RunbookError> {
    let (clients, errors) = rb.connect_all(timeout).await;
    if !errors.is_empty() {
        return Err(RunbookError::Preflight(
            errors.iter().map(|e| crate::error_chain(e)).collect(),
        ));
    }
    let all: Vec<&Step> = rb.steps.iter().collect();
    let mut set = tokio::task::JoinSet::new();
    for (target, steps) in by_target(&all) {
        let client = agent_for(&clients, &target);
        let ctx = rb.ctx.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for s in steps {
                let change = match exec::check(&s, client.as_ref(), &ctx).await {
                    Ok(c) => c,
                    Err(e) => Change::Run {
                        detail: format!("cannot check: {}", crate::error_chain(&e)),
                    },
                };
                out.push(Planned {
                    phase: s.phase,
                    target: s.target.clone(),
                    step: s.name.clone(),
                    change,
                });
            }
            out
        });
    }
    let mut planned: Vec<Planned> = set.join_all().await.into_iter().flatten().collect();
    let order: HashMap<(&Target, &str), usize> = rb
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| ((&s.target, s.name.as_str()), i))
        .collect();
    planned.sort_by_key(|p| order.get(&(&p.target, p.step.as_str())).copied());
    Ok(planned)
}

/// Runs the runbook: preflight, then every phase. `on_event` sees progress.
pub async fn apply(
    rb: &Runbook,
    timeout: Duration,
    on_event: &(dyn Fn(Event<'_>) + Sync),
) -> Result<ApplyReport, RunbookError> {
    let start = Instant::now();
    let (clients, errors) = rb.connect_all(timeout).await;
    let mut problems: Vec<String> = errors.iter().map(|e| crate::error_chain(e)).collect();
    // Agents that missed a revocation (cut off when it was made) get the list now, before
    // anything else is asked of them.
    if let Some((generation, pem)) = crate::identity::crl::agent_list(&rb.ctx.state_dir)? {
        for (host, c) in &clients {
            match c.install_revocations(&pem).await {
                Ok(r) if r.changed => {
                    tracing::info!(host = %host, generation, "revocation list installed")
                }
                Ok(_) => {}
                Err(e) => problems.push(format!(
                    "{host}: the revocation list {generation}: {}",
                    crate::error_chain(&e)
                )),
            }
        }
    }
    problems.extend(preflight::check(&rb.inventory, &rb.ctx.state_dir, &clients).await);
    if !problems.is_empty() {
        return Err(RunbookError::Preflight(problems));
    }
    let journal = journal::Journal::open(&rb.ctx.state_dir, rb.inventory.cluster.as_str());
    if let Some(last) = journal.interrupted_phase() {
        on_event(Event::Resuming { last_phase: last });
    }
    journal.record_start();
    let changed_paths: ChangedPaths = Arc::default();
    let mut report = ApplyReport::default();
    for phase in Phase::ALL {
        let steps: Vec<&Step> = rb.steps.iter().filter(|s| s.phase == phase).collect();
        if steps.is_empty() {
            continue;
        }
        on_event(Event::PhaseStarted(phase));
        let mut all_results = Vec::new();
        if phase.serial() {
            // One host after the other; the first failure stops the phase.
            for (target, target_steps) in by_target(&steps) {
                let client = agent_for(&clients, &target);
                let results = run_target(
                    target,
                    target_steps,
                    client,
                    rb.ctx.clone(),
                    changed_paths.clone(),
                )
                .await;
                let failed = results
                    .iter()
                    .any(|(_, o, _)| matches!(o, Outcome::Failed(_)));
                all_results.push(results);
                if failed {
                    break;
                }
            }
        } else {
            let mut set = tokio::task::JoinSet::new();
            for (target, target_steps) in by_target(&steps) {
                let client = agent_for(&clients, &target);
                set.spawn(run_target(
                    target,
                    target_steps,
                    client,
                    rb.ctx.clone(),
                    changed_paths.clone(),
                ));
            }
            all_results = set.join_all().await;
        }
        let mut failures = Vec::new();
        for results in all_results {
            for (s, outcome, elapsed) in results {
                on_event(Event::StepDone {
                    target: &s.target,
                    step: &s.name,
                    outcome: &outcome,
                    elapsed,
                });
                journal.record_step(phase, &s.target, &s.name, &outcome);
                match outcome {
                    Outcome::Changed => report.changed += 1,
                    Outcome::Unchanged => report.unchanged += 1,
                    Outcome::Failed(why) => {
                        failures.push(format!("{} / {}: {why}", s.target, s.name))
                    }
                }
            }
        }
        if !failures.is_empty() {
            return Err(RunbookError::Phase { phase, failures });
        }
    }
    journal.record_end(&report);
    report.elapsed_ms = start.elapsed().as_millis();
    Ok(report)
}

/// How often one step is run again after its agent's connection broke in the middle of it.
const INTERRUPTED_RETRIES: u32 = 3;
/// How long a restarting agent may take to answer again.
const AGENT_BACK_WITHIN: Duration = Duration::from_secs(60);

/// Waits until `agent` answers WhoAmI again (its channel reconnects by itself), at most
/// `within`.
async fn agent_answers_again(agent: &HostAgent, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if agent.who_am_i().await.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The files each target changed in this run, for the restarts of its units.
type ChangedPaths = Arc<Mutex<HashMap<Target, HashSet<String>>>>;

/// Runs the steps of one target in order; stops at the first failure.
async fn run_target(
    target: Target,
    target_steps: Vec<Step>,
    client: Option<HostAgent>,
    ctx: Arc<RunContext>,
    changed_paths: ChangedPaths,
) -> Vec<(Step, Outcome, Duration)> {
    let mut results = Vec::new();
    for s in target_steps {
        let t = Instant::now();
        let paths = changed_paths
            .lock()
            .await
            .get(&target)
            .cloned()
            .unwrap_or_default();
        let mut result = exec::run(&s, client.as_ref(), &ctx, &paths).await;
        // An agent restarted in the middle of a step (an upgrade, systemd restarting it): wait
        // until it answers again and run the step again; it is an ensure.
        let mut retries = 0;
        while let (Err(e), Some(agent)) = (&result, client.as_ref()) {
            if !e.agent_interrupted() || retries == INTERRUPTED_RETRIES {
                break;
            }
            retries += 1;
            warn!(target = %target, step = %s.name, error = %crate::error_chain(e), "the agent's connection broke in the middle of the step; running it again once the agent answers");
            if !agent_answers_again(agent, AGENT_BACK_WITHIN).await {
                break;
            }
            // Run again as a later apply would: the interrupted attempt may have started or
            // restarted the unit already, so a restart is judged by the files' times against
            // the unit's process, not by what this run wrote before.
            result = exec::run(&s, client.as_ref(), &ctx, &HashSet::new()).await;
        }
        let outcome = match result {
            Ok(true) => {
                let mut cp = changed_paths.lock().await;
                cp.entry(target.clone())
                    .or_default()
                    .extend(s.action.writes());
                Outcome::Changed
            }
            Ok(false) => Outcome::Unchanged,
            Err(e) => Outcome::Failed(crate::error_chain(&e)),
        };
        let failed = matches!(outcome, Outcome::Failed(_));
        results.push((s, outcome, t.elapsed()));
        if failed {
            break;
        }
    }
    results
}
