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
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

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

/// Connects to the agent at `endpoint` (such as `https://10.77.1.11:7443`) over mTLS with
/// haop's admin identity.
pub async fn connect(
    trust: &Trust,
    endpoint: &str,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    connect_with(trust.client_tls(), endpoint, timeout).await
}

/// [`connect`] with another client identity (a reader certificate for `haop status`).
pub async fn connect_with(
    tls: ClientTlsConfig,
    endpoint: &str,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    let ep = Endpoint::from_shared(endpoint.to_string())
        .and_then(|e| e.tls_config(tls))
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
