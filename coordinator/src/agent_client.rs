//! Connections from the coordinator to haop-agents.
//!
//! One place decides how an agent endpoint is reached: mTLS, trusting only the agent CA of the
//! state dir and presenting haop's admin certificate ([`crate::trust::Trust::client_tls`]), with a
//! connect timeout so a dead host answers quickly.

use std::time::Duration;

use haop_proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

use crate::trust::Trust;

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
        .tcp_nodelay(true);
    let channel = ep.connect().await.map_err(|source| ConnectError::Connect {
        endpoint: endpoint.to_string(),
        source,
    })?;
    Ok(AgentClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}
