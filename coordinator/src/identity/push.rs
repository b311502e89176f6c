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

/// Installs the agent CA's list on every host in `hosts`.
pub async fn to_agents(agents: Arc<Agents>, hosts: &[String], crl_pem: &str) -> Vec<Pushed> {
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in hosts.iter().enumerate() {
        let (agents, host, pem) = (agents.clone(), host.clone(), crl_pem.to_string());
        set.spawn(async move {
            let result = async {
                let a = agents.get(&host).await?;
                a.install_revocations(&pem).await
            }
            .await;
            let pushed = match result {
                Ok(r) => Pushed {
                    host,
                    generation: Some(r.generation),
                    changed: r.changed,
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
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in hosts.iter().enumerate() {
        let (agents, host, pem) = (agents.clone(), host.clone(), crl_pem.to_string());
        let path = path.to_string();
        set.spawn(async move {
            let result = async {
                let a = agents.get(&host).await?;
                a.write_file(&path, pem.into_bytes(), 0o644).await
            }
            .await;
            let pushed = match result {
                Ok(changed) => Pushed {
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
