//! Sending revocation lists to hosts, all at once, each host's outcome reported.
//!
//! A host that cannot be reached is not an error of the revocation (it is recorded, and the
//! list is on disk): it is reported, and it gets the list on the next `haop apply` or `haop
//! status` run as admin. A host that answers with a refusal (an older list than it holds, a CA
//! it does not know) is reported with the agent's words.

use std::sync::Arc;

use crate::agent::Agents;
use crate::error::short_error;

/// What one host did with a list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pushed {
    pub host: String,
    /// The generation the host holds after the push (agents), or the one written (etcd).
    pub generation: Option<u64>,
    pub changed: bool,
    /// Why the host does not hold the list.
    pub error: Option<String>,
}

/// Runs `act` on every host in `hosts` at once and reports each one's outcome, in `hosts`'
/// order: `Ok((generation, changed))` or the failure in a line.
async fn on_each<F, Fut>(agents: Arc<Agents>, hosts: &[String], act: F) -> Vec<Pushed>
where
    F: Fn(crate::agent::HostAgent) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(u64, bool), crate::agent::AgentError>> + Send,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in hosts.iter().enumerate() {
        let (agents, host, act) = (agents.clone(), host.clone(), act.clone());
        set.spawn(async move {
            let result = match agents.get(&host).await {
                Ok(a) => act(a).await,
                Err(e) => Err(e),
            };
            let pushed = match result {
                Ok((generation, changed)) => Pushed {
                    host,
                    generation: Some(generation),
                    changed,
                    error: None,
                },
                Err(e) => Pushed {
                    host,
                    generation: None,
                    changed: false,
                    error: Some(short_error(&e)),
                },
            };
            (i, pushed)
        });
    }
    let mut out = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, p)| p).collect()
}

/// Installs the agent CA's list on every host in `hosts`.
pub async fn to_agents(agents: Arc<Agents>, hosts: &[String], crl_pem: &str) -> Vec<Pushed> {
    let pem = Arc::new(crl_pem.to_string());
    on_each(agents, hosts, move |a| {
        let pem = pem.clone();
        async move {
            let r = a.install_revocations(&pem).await?;
            Ok((r.generation, r.changed))
        }
    })
    .await
}

/// Writes the etcd CA's list (numbered `generation`) to `path` on every etcd member in `hosts`
/// (where `ETCD_CLIENT_CRL_FILE` points: [`crate::etcd::config::client_crl_path`]); etcd checks
/// new client connections against it from then on, without a restart.
pub async fn to_etcd_hosts(
    agents: Arc<Agents>,
    hosts: &[String],
    path: &str,
    generation: u64,
    crl_pem: &str,
) -> Vec<Pushed> {
    let (path, pem) = (Arc::new(path.to_string()), Arc::new(crl_pem.to_string()));
    on_each(agents, hosts, move |a| {
        let (path, pem) = (path.clone(), pem.clone());
        async move {
            let changed = a.write_file(&path, pem.as_bytes().to_vec(), 0o644).await?;
            Ok((generation, changed))
        }
    })
    .await
}
