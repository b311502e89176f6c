//! Connections from the coordinator to haop-agents.
//!
//! One place decides how an agent endpoint is reached, so that the move from the development
//! transport to mTLS (the trust issue) changes this module and nothing that calls it.

use std::time::Duration;

use haop_proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

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

/// Connects to the agent at `endpoint` (such as `http://10.77.1.11:7443`), with a connect
/// timeout so that a dead host answers quickly.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Client, ConnectError> {
    let ep = Endpoint::from_shared(endpoint.to_string())
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
