//! Connections from the coordinator to haop-agents.
//!
//! One place decides how an agent endpoint is reached: mTLS, trusting only the agent CA of the
//! state dir and presenting haop's admin certificate ([`crate::trust::Trust::client_tls`]), with a
//! connect timeout so a dead host answers quickly, and HTTP/2 keepalive pings so that a host that
//! drops off the network in the middle of an RPC (a pulled cable, a partition: no reset ever
//! arrives) fails that RPC within [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`] instead of
//! leaving it to TCP's retransmissions, which give up only after about 15 minutes. A per-RPC
//! deadline would not do: some RPCs legitimately take minutes (`kubeadm init`), and a live agent
//! answers pings while it works on them.

use std::time::Duration;

use haop_proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

use crate::trust::Trust;

/// How often an idle or busy connection to an agent is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a ping may go unanswered before the connection, and every RPC on it, fails.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);

/// A connected client for one agent.
pub type Client = AgentClient<Channel>;

/// Errors reaching an agent; the message names the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid agent endpoint {endpoint:?}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot reach agent at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to the agent at `endpoint` (such as `https://10.77.1.11:7443`) over mTLS.
pub async fn connect(
    trust: &Trust,
    endpoint: &str,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    let ep = Endpoint::from_shared(endpoint.to_string())
        .and_then(|e| e.tls_config(trust.client_tls()))
        .map_err(|source| ConnectError::Endpoint {
            endpoint: endpoint.to_string(),
            source,
        })?
        .connect_timeout(timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = ep.connect().await.map_err(|source| ConnectError::Connect {
        endpoint: endpoint.to_string(),
        source,
    })?;
    Ok(AgentClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

/// An RPC's failure as a person reads it: the agent's answer (code and message), or, when the
/// connection broke before any answer (the agent exited, restarted or was cut off), that the
/// outcome is unknown. tonic's own `Display` of a transport failure is a debug dump.
pub fn describe_failure(s: &tonic::Status) -> String {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::transport::Error>().is_some() {
            let mut root = e;
            while let Some(next) = root.source() {
                root = next;
            }
            return format!(
                "the connection to the agent broke before it answered ({root}); the agent may \
                 have exited or restarted, so the outcome is unknown"
            );
        }
        source = e.source();
    }
    format!("{:?}: {}", s.code(), s.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_code_and_message() {
        let s = tonic::Status::failed_precondition("unit etcd.service is not installed");
        assert_eq!(
            describe_failure(&s),
            "FailedPrecondition: unit etcd.service is not installed"
        );
    }
}
