//! `haop operator run`: the repair loop, itself highly available.
//!
//! Several instances run on different admin hosts (each with the state dir: the loop needs
//! haop's etcd and agent identities). They elect one leader through etcd's election API
//! ([`election`]); every instance looks at the cluster each round (a status report, served as
//! metrics by [`metrics`]), and only the leader acts, each action fenced by its lease. What it
//! does is decided from the report alone ([`policy`]): heal failed members (the recover
//! logic, every step fenced), keep the snapshot schedule, defragment by policy (one member a
//! round, leader last, never on an unhealthy cluster), warn of certificates nearing expiry
//! and renew them when the config ([`config`]) allows. Without quorum, or while etcd elects a
//! leader, it does nothing and says why: bringing a cluster back from a snapshot is a person's
//! decision.
//!
//! Lifecycle: [`run`] starts the metrics server and the election task, then runs rounds every
//! `interval` until `shutdown` resolves. The inventory is read again each round (an invalid
//! file is logged and the last good one kept). When the leadership ends in the middle of an
//! action, the action's future is dropped at once (an interrupted recovery is safe to
//! continue: the next leader observes before it acts). Dropping the leadership revokes the
//! lease, so a clean stop hands over without waiting for the TTL.

pub mod config;
pub mod election;
pub mod metrics;
pub mod policy;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::etcd::api::EtcdClient;
use crate::etcd::recover::{Progress, Recovery};
use crate::inventory::Inventory;
use crate::status::{StatusOptions, StatusReport};
use config::OperatorConfig;
use election::{Elector, Leadership};
use metrics::{Exposition, OperatorStats};
use policy::{Decision, Step};

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot read the inventory {}", .path.display())]
    Inventory {
        path: PathBuf,
        #[source]
        source: Box<crate::inventory::InventoryError>,
    },
    #[error("cannot reach etcd to take part in the election")]
    Etcd(#[source] crate::etcd::api::EtcdApiError),
    #[error(transparent)]
    Metrics(#[from] std::io::Error),
}

/// What the loop says, a line at a time (the CLI timestamps and prints it).
pub type Say = Arc<dyn Fn(String) + Send + Sync>;

/// Runs the loop until `shutdown` resolves.
pub async fn run(
    state_dir: &Path,
    inventory_path: &Path,
    config: OperatorConfig,
    say: Say,
    shutdown: impl Future<Output = ()>,
) -> Result<(), OperatorError> {
    let load = || {
        Inventory::load(inventory_path)
            .map(|(inv, _)| inv)
            .map_err(|source| OperatorError::Inventory {
                path: inventory_path.to_path_buf(),
                source: Box::new(source),
            })
    };
    let mut inventory = load()?;
    let exposition = Arc::new(Exposition::default());
    let server = match config.metrics_listen {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            say(format!("serving metrics on http://{addr}/metrics"));
            Some(AbortOnDrop(tokio::spawn(metrics::serve(
                listener,
                exposition.clone(),
            ))))
        }
        None => None,
    };
    let endpoints = inventory.etcd_client_urls();
    let etcd = EtcdClient::connect(state_dir, &endpoints, Duration::from_secs(2))
        .await
        .map_err(OperatorError::Etcd)?;
    let short = election::Endpoints::connect(&etcd, Duration::from_secs(2))
        .await
        .map_err(OperatorError::Etcd)?;
    let long = election::Endpoints::connect(&etcd, Duration::from_secs(3600))
        .await
        .map_err(OperatorError::Etcd)?;
    let elector = Arc::new(Elector::new(short, long, &config.name, config.lease_ttl));
    let (lead_tx, lead_rx) = watch::channel::<Option<Arc<Leadership>>>(None);
    let campaign = AbortOnDrop(tokio::spawn(campaign(
        elector.clone(),
        lead_tx,
        say.clone(),
    )));
    say(format!(
        "operator {} started: a round every {} s, lease {} s",
        config.name,
        config.interval.as_secs(),
        config.lease_ttl.as_secs()
    ));

    let mut stats = OperatorStats {
        instance: config.name.clone(),
        cluster: inventory.cluster.as_str().to_string(),
        ..Default::default()
    };
    let mut said = Said::default();
    let rounds = async {
        loop {
            match load() {
                Ok(inv) => inventory = inv,
                Err(e) => said.once(
                    &say,
                    "inventory",
                    format!(
                        "{}; keeping the last good inventory",
                        crate::error_chain(&e)
                    ),
                ),
            }
            round(
                state_dir,
                &inventory,
                &config,
                &elector,
                &lead_rx,
                &exposition,
                &mut stats,
                &mut said,
                &say,
            )
            .await;
            tokio::time::sleep(config.interval).await;
        }
    };
    tokio::select! {
        _ = rounds => {}
        _ = shutdown => {}
    }
    // Leadership first (its lease is revoked for a quick hand-over), then the server.
    drop(campaign);
    drop(lead_rx);
    drop(server);
    say(format!("operator {} stopped", config.name));
    Ok(())
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lines said once until they change, per topic: a loop that holds back or follows for hours
/// does not repeat itself every round.
#[derive(Default)]
struct Said(std::collections::HashMap<&'static str, String>);

impl Said {
    fn once(&mut self, say: &Say, topic: &'static str, line: String) {
        if self.0.get(topic) != Some(&line) {
            say(line.clone());
            self.0.insert(topic, line);
        }
    }

    fn clear(&mut self, topic: &'static str) {
        self.0.remove(topic);
    }
}

/// Campaigns for as long as the operator runs, publishing the leadership while it lasts.
async fn campaign(elector: Arc<Elector>, lead: watch::Sender<Option<Arc<Leadership>>>, say: Say) {
    let mut last_error = String::new();
    loop {
        match elector.lead().await {
            Ok(l) => {
                last_error.clear();
                let l = Arc::new(l);
                say(format!(
                    "elected: this instance leads (leader key revision {})",
                    l.revision()
                ));
                lead.send_replace(Some(l.clone()));
                let why = l.lost().await;
                lead.send_replace(None);
                say(format!(
                    "lost the leadership: {why}; stopped acting, campaigning again"
                ));
            }
            Err(e) => {
                let e = crate::error_chain(&e);
                if e != last_error {
                    say(format!("cannot campaign: {e}; trying again"));
                    last_error = e;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn round(
    state_dir: &Path,
    inventory: &Inventory,
    config: &OperatorConfig,
    elector: &Elector,
    lead: &watch::Receiver<Option<Arc<Leadership>>>,
    exposition: &Exposition,
    stats: &mut OperatorStats,
    said: &mut Said,
    say: &Say,
) {
    let options = StatusOptions {
        timeout: config.status_timeout,
        identity: None,
    };
    let report = match crate::status::collect(state_dir, inventory, &options).await {
        Ok(r) => Some(r),
        Err(e) => {
            said.once(
                say,
                "status",
                format!("cannot look at the cluster: {}", crate::error_chain(&e)),
            );
            None
        }
    };
    let leadership = lead.borrow().clone();
    stats.rounds += 1;
    stats.last_round_unix = time::OffsetDateTime::now_utc().unix_timestamp();
    stats.leader = leadership.is_some();
    let publish = |stats: &OperatorStats, report: Option<&StatusReport>| {
        let text = report.map(crate::status::prometheus::render);
        exposition.set(text.as_deref(), stats);
    };
    let Some(report) = report else {
        publish(stats, None);
        return;
    };
    said.clear("status");
    let decision = policy::decide(&report, config, policy::snapshot_due(&report, inventory));
    stats.holding = match &decision {
        Decision::Hold(_) if report.etcd.electing => Some("electing"),
        Decision::Hold(_) => Some("no-quorum"),
        Decision::Act { .. } => None,
    };
    if let Decision::Act { warnings, .. } = &decision {
        stats.certificate_warnings = warnings.len();
    }
    publish(stats, Some(&report));

    let Some(leadership) = leadership else {
        let who = match elector.leader().await {
            Ok(Some(l)) => format!("{} leads", l.instance),
            Ok(None) => "nobody leads yet".to_string(),
            Err(e) => format!("the leader is unknown: {}", crate::error_chain(&e)),
        };
        said.once(
            say,
            "role",
            format!("not the leader ({who}); only the leader acts"),
        );
        if let Decision::Hold(why) = &decision {
            said.once(say, "hold", format!("holding: {why}"));
        } else {
            said.clear("hold");
        }
        return;
    };
    said.once(say, "role", "leading: this instance acts".to_string());
    let (steps, warnings) = match decision {
        Decision::Hold(why) => {
            said.once(say, "hold", format!("not acting: {why}"));
            return;
        }
        Decision::Act { steps, warnings } => (steps, warnings),
    };
    said.clear("hold");
    if warnings.is_empty() {
        said.clear("certificates");
    } else {
        said.once(say, "certificates", warnings.join("\n"));
    }
    for step in steps {
        let kind = step_kind(&step);
        let work = act(state_dir, inventory, &step, &leadership, say);
        let done = tokio::select! {
            r = work => Some(r),
            why = leadership.lost() => {
                say(format!(
                    "stopped {kind} in the middle: the leadership ended ({why}); the next \
                     leader observes the cluster and continues"
                ));
                None
            }
        };
        match done {
            Some(Ok(())) => *stats.actions.entry(kind.to_string()).or_default() += 1,
            Some(Err(e)) => {
                stats.failures += 1;
                say(format!("{kind} failed: {e}"));
                break;
            }
            None => break,
        }
    }
    stats.leader = leadership.ended().is_none();
    publish(stats, Some(&report));
}

fn step_kind(step: &Step) -> &'static str {
    match step {
        Step::Heal(_) => "heal",
        Step::Snapshot => "snapshot",
        Step::Defrag { .. } => "defrag",
        Step::RenewCertificates { .. } => "renew",
    }
}

/// Takes one step, fenced by `leadership`; the error is a sentence for the log.
async fn act(
    state_dir: &Path,
    inventory: &Inventory,
    step: &Step,
    leadership: &Arc<Leadership>,
    say: &Say,
) -> Result<(), String> {
    let err = |e: &(dyn std::error::Error + 'static)| crate::error_chain(e);
    match step {
        Step::Heal(members) => {
            say(format!(
                "healing: {} not a healthy voter",
                members.join(", ")
            ));
            let recovery = Recovery::connect(state_dir, inventory.clone())
                .await
                .map_err(|e| err(&e))?
                .with_fence(leadership.clone());
            let log = |p: Progress| match p {
                Progress::Action(a) => say(format!("heal: {a}")),
                Progress::Waiting(w) => say(format!("heal: {w}")),
                Progress::Done { elapsed } => say(format!(
                    "heal: every member is a healthy voter ({} s)",
                    elapsed.as_secs()
                )),
                Progress::CatchUp(_) | Progress::Transfer { .. } => {}
            };
            recovery.heal(None, &log).await.map_err(|e| err(&e))
        }
        Step::Snapshot => {
            leadership.fence("snapshot round").await?;
            say("snapshot: the newest verified snapshot is older than etcd.snapshots.interval; taking one".to_string());
            let tools =
                crate::etcd::snapshots::verify::Tools::find(inventory).map_err(|e| err(&e))?;
            let log = |line: String| say(format!("snapshot: {line}"));
            crate::etcd::snapshots::schedule::round(state_dir, inventory, &tools, &log)
                .await
                .map(|_| ())
                .map_err(|e| err(&e))
        }
        Step::Defrag { member, endpoint } => {
            leadership.fence(&format!("defrag {member}")).await?;
            let client = EtcdClient::connect(
                state_dir,
                std::slice::from_ref(endpoint),
                Duration::from_secs(2),
            )
            .await
            .map_err(|e| err(&e))?;
            let done = crate::etcd::maintenance::defrag_rolling(
                &client,
                std::slice::from_ref(endpoint),
                &|_| {},
            )
            .await
            .map_err(|e| err(&e))?;
            for d in done {
                say(format!(
                    "defrag: {member} from {} to {}",
                    crate::etcd::catchup::human_bytes(d.before.max(0) as u64),
                    crate::etcd::catchup::human_bytes(d.after.max(0) as u64)
                ));
            }
            Ok(())
        }
        Step::RenewCertificates { within_days } => {
            leadership
                .fence(&format!(
                    "renew certificates expiring within {within_days} days"
                ))
                .await?;
            let opts = crate::certs::renew::RenewOptions {
                expiring_within_days: *within_days,
                all: false,
                member_timeout: Duration::from_secs(120),
            };
            let log = |line: String| say(format!("renew: {line}"));
            let renewed = crate::certs::renew::renew(state_dir, inventory.clone(), opts, &log)
                .await
                .map_err(|e| err(&e))?;
            say(format!("renew: {} certificate(s) renewed", renewed.len()));
            Ok(())
        }
    }
}
