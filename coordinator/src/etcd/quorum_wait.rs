//! The quorum step: etcd members elect a leader and answer through the etcd API, with haop's
//! client certificate. Polled, never slept on (see [`crate::etcd::api`]).

use std::path::Path;
use std::time::Duration;

use tracing::info;

/// Whether the cluster already has a leader and `members` healthy voters.
pub async fn quorum_is_healthy(
    state_dir: &Path,
    endpoints: &[String],
    members: usize,
    timeout: Duration,
) -> bool {
    crate::etcd::api::wait_for_quorum_at(state_dir, endpoints, members, timeout)
        .await
        .is_ok()
}

/// Waits for the quorum. A wait changes nothing on any host, so it answers `false`: a second
/// apply on a converged cluster reports zero changes.
pub async fn wait_for_quorum(
    state_dir: &Path,
    endpoints: &[String],
    members: usize,
    deadline: Duration,
) -> Result<bool, String> {
    let report = crate::etcd::api::wait_for_quorum_at(state_dir, endpoints, members, deadline)
        .await
        .map_err(|e| crate::error_chain(&e))?;
    info!(
        leader = report.leader_id,
        members = report.members.len(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "etcd quorum"
    );
    Ok(false)
}
