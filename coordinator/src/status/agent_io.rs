//! Status's conversations with agents: bounded by the collection's deadline, with whatever
//! identity status runs as (haop's admin, or a reader certificate), every failure a short
//! string for a table cell.

use std::time::Duration;

use haop_proto::v1 as pb;
use tokio::time::Instant;
use tonic::transport::ClientTlsConfig;

use super::{MaybeFile, LATE};
use crate::agent::HostAgent;
use crate::error::short_error;

/// The agent of `host` at `endpoint`, connected by `deadline`.
pub(super) async fn connect_agent(
    tls: ClientTlsConfig,
    host: &str,
    endpoint: &str,
    timeout: Duration,
    deadline: Instant,
) -> Result<HostAgent, String> {
    let connect = crate::agent::connect_with(tls, endpoint, timeout);
    match tokio::time::timeout_at(deadline, connect).await {
        Ok(Ok(c)) => Ok(HostAgent::new(host, c)),
        Ok(Err(e)) => Err(short_error(&e)),
        Err(_) => Err(format!("agent at {endpoint}: {LATE}")),
    }
}

/// A small text file (at most 256 KiB); `Ok(None)` when it does not exist.
pub(super) async fn read_file(agent: &HostAgent, path: &str) -> MaybeFile {
    let req = pb::ReadFileRequest {
        path: path.to_string(),
        max_bytes: 256 * 1024,
        certificates_only: false,
    };
    match agent.read(req).await {
        Ok(r) => Ok(r.map(|r| String::from_utf8_lossy(&r.content).into_owned())),
        Err(e) => Err(format!("{path}: {}", rpc_error(&e))),
    }
}

/// An agent's failure for a table cell that names the host and the call already: the answer.
pub(super) fn rpc_error(e: &crate::agent::AgentError) -> String {
    match e {
        crate::agent::AgentError::Refused { code, detail, .. } => {
            format!("{code:?}: {detail}")
        }
        other => other.detail(),
    }
}
