//! The unit family: unit files (with the data dirs they own) and units running.
//!
//! A unit file is an ensure through the agent (`EnsureUnit`: the file, a daemon-reload when it
//! changed, and the unit's data dirs declared: the only ones `WipeDataDir` may move aside). A `Running` step enables and starts the unit, and
//! restarts it when what it reads changed: a file this run wrote (`changed_paths`), or a file
//! newer than the unit's process (an earlier run wrote it and was killed or cut off before the
//! restart). The second rule is what makes an interrupted rolling restart finish on the next
//! apply without a journal.
//!
//! etcd members restart one at a time (the context's `rolling` lock), each waiting until the
//! member answers through the etcd API again before the next one may go, so a rolling restart
//! never costs the quorum. `haop plan` shows a pending restart as `restart UNIT: PATH changed
//! after it started`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use haop_proto::v1 as pb;

use super::change::{file_change, Change};
use super::context::RunContext;
use crate::agent::{AgentError, HostAgent};
use crate::etcd::api::{EtcdApiError, EtcdClient};
use crate::runbook::plan::{unit_file_path, UnitAction};

/// How long a restarted etcd member with a small database has to answer again before the
/// rolling restart stops; a member opens its whole database when it starts, so the bound grows
/// with it ([`crate::etcd::api::scaled_timeout`]).
pub const MEMBER_BACK_WITHIN: Duration = Duration::from_secs(60);

/// Errors of the unit family.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("cannot reach the restarted etcd member at {endpoint}")]
    EtcdClient {
        endpoint: String,
        #[source]
        source: EtcdApiError,
    },
    #[error(
        "the etcd member at {endpoint} did not answer within {} s of its restart; the other \
         members were not restarted", .waited.as_secs()
    )]
    MemberNotBack { endpoint: String, waited: Duration },
}

/// What `action` would change on the host behind `c`.
pub async fn check(action: &UnitAction, c: &HostAgent) -> Result<Change, UnitError> {
    match action {
        UnitAction::File { name, content, .. } => {
            let path = unit_file_path(name);
            let current = c.read_text(&path).await?;
            Ok(file_change(&path, current, content, 0o644))
        }
        UnitAction::Running {
            unit, restart_on, ..
        } => {
            let s = c.unit_status(unit).await?;
            if s.active_state != "active" || !s.enabled {
                return Ok(Change::Run {
                    detail: format!("start and enable {unit} (now {})", s.active_state),
                });
            }
            Ok(match changed_after_start(c, restart_on, &s).await? {
                Some(path) => Change::Run {
                    detail: format!("restart {unit}: {path} changed after it started"),
                },
                None => Change::Unchanged,
            })
        }
    }
}

/// Makes the host match `action`; answers whether anything changed. `changed_paths` are the
/// files this run changed on this host so far.
pub async fn run(
    action: &UnitAction,
    c: &HostAgent,
    ctx: &RunContext,
    changed_paths: &HashSet<String>,
) -> Result<bool, UnitError> {
    match action {
        UnitAction::File {
            name,
            content,
            data_dirs,
        } => Ok(c.ensure_unit(name, content, data_dirs).await?),
        UnitAction::Running {
            unit,
            restart_on,
            rolling_etcd,
            start_delay_ms,
        } => {
            let enabled = c.unit_action(unit, pb::Action::Enable).await?;
            let status = c.unit_status(unit).await?;
            // Restarted when this run changed what the unit reads, or when an earlier run did
            // and was interrupted (killed, a host cut off) before the restart: the file is
            // then newer than the process.
            let restart = status.active_state == "active"
                && (restart_on.iter().any(|p| changed_paths.contains(p))
                    || changed_after_start(c, restart_on, &status).await?.is_some());
            let started = if restart {
                match rolling_etcd {
                    Some(endpoint) => {
                        // One etcd member at a time, each back before the next.
                        let _one = ctx.rolling.lock().await;
                        let client = member_client(ctx, endpoint).await?;
                        let db_size = client
                            .status_of(endpoint)
                            .await
                            .map(|s| s.db_size)
                            .unwrap_or(0);
                        let changed = c.unit_action(unit, pb::Action::Restart).await?;
                        crate::failpoint::hit("apply:after-etcd-restart");
                        let within = crate::etcd::api::scaled_timeout(MEMBER_BACK_WITHIN, db_size);
                        wait_member_healthy(&client, endpoint, within).await?;
                        changed
                    }
                    None => c.unit_action(unit, pb::Action::Restart).await?,
                }
            } else {
                if status.active_state != "active" && *start_delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(*start_delay_ms)).await;
                }
                c.unit_action(unit, pb::Action::Start).await?
            };
            Ok(enabled || started)
        }
    }
}

/// The first of `paths` that changed after the active unit's process started (so the process
/// runs an older content), if any. A path that does not exist counts as unchanged, and so does
/// everything when the service manager does not know when the unit started.
async fn changed_after_start(
    c: &HostAgent,
    paths: &[String],
    unit: &pb::UnitStatus,
) -> Result<Option<String>, AgentError> {
    if unit.since_unix_ms <= 0 {
        return Ok(None);
    }
    for path in paths {
        let st = c.stat(path).await?;
        if st.exists && st.modified_unix_ms > unit.since_unix_ms {
            return Ok(Some(path.clone()));
        }
    }
    Ok(None)
}

/// A client of the etcd member at `endpoint` alone.
async fn member_client(ctx: &RunContext, endpoint: &str) -> Result<EtcdClient, UnitError> {
    EtcdClient::connect(
        &ctx.state_dir,
        &[endpoint.to_string()],
        Duration::from_secs(1),
    )
    .await
    .map_err(|source| UnitError::EtcdClient {
        endpoint: endpoint.to_string(),
        source,
    })
}

/// Waits until the etcd member at `endpoint` answers through the API again, at most `within`.
async fn wait_member_healthy(
    client: &EtcdClient,
    endpoint: &str,
    within: Duration,
) -> Result<(), UnitError> {
    let deadline = Instant::now() + within;
    loop {
        if client.health(endpoint).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(UnitError::MemberNotBack {
                endpoint: endpoint.to_string(),
                waited: within,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
