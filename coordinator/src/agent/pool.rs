//! [`Agents`]: each host of an inventory connected once, on demand.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{AgentError, HostAgent};
use crate::inventory::Inventory;
use crate::trust::Trust;

/// How long connecting to one agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The agents of an inventory's hosts, connected on first use and kept.
#[derive(Debug)]
pub struct Agents {
    trust: Arc<Trust>,
    endpoints: HashMap<String, String>,
    connected: tokio::sync::Mutex<HashMap<String, HostAgent>>,
}

impl Agents {
    /// The agents of every host of `inventory`.
    pub fn new(trust: Arc<Trust>, inventory: &Inventory) -> Agents {
        Agents::with_endpoints(
            trust,
            inventory
                .hosts
                .iter()
                .map(|h| (h.name.as_str().to_string(), h.agent.as_str().to_string())),
        )
    }

    /// Agents at the given endpoints, by host name.
    pub fn with_endpoints(
        trust: Arc<Trust>,
        endpoints: impl IntoIterator<Item = (String, String)>,
    ) -> Agents {
        Agents {
            trust,
            endpoints: endpoints.into_iter().collect(),
            connected: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The agent of `host`, connected now or earlier.
    pub async fn get(&self, host: &str) -> Result<HostAgent, AgentError> {
        let mut connected = self.connected.lock().await;
        if let Some(a) = connected.get(host) {
            return Ok(a.clone());
        }
        let endpoint = self
            .endpoints
            .get(host)
            .ok_or_else(|| AgentError::UnknownHost {
                host: host.to_string(),
            })?;
        let a = HostAgent::connect(&self.trust, host, endpoint, CONNECT_TIMEOUT).await?;
        connected.insert(host.to_string(), a.clone());
        Ok(a)
    }
}
