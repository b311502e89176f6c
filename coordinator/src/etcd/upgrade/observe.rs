//! What the upgrade looks at before and between members: each member's version and health,
//! the leader, learners, alarms, auth, and the cluster version.
//!
//! The cluster version (the lowest minor all members run, which etcd raises once every member
//! runs a new minor) is not in the v3 API of 3.4 and 3.5; etcd serves it at `/version` on the
//! client port (`{"etcdserver":"3.5.16","etcdcluster":"3.5.0"}`), read here over TLS with
//! haop's etcd client certificate.

use std::net::SocketAddr;
use std::path::Path;

use super::gates::{MemberView, Observed};
use crate::etcd::api::{EndpointStatus, EtcdClient};
use crate::etcd::versions::EtcdVersion;
use crate::inventory::Inventory;
use crate::pki::ETCD_CA;
use crate::trust::{pki_dir, ETCD_CLIENT_CERT};

/// One inventory member: its host name, client URL and what it answered.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub url: String,
    pub status: Option<EndpointStatus>,
}

/// Observes the cluster of `inv` through `etcd`.
pub async fn observe(
    state_dir: &Path,
    inv: &Inventory,
    etcd: &EtcdClient,
) -> (Observed, Vec<Endpoint>) {
    let hosts = inv.etcd_hosts();
    let urls: Vec<String> = hosts.iter().map(|h| inv.etcd_client_url(h)).collect();
    let statuses = etcd.statuses(&urls).await;
    let mut endpoints = Vec::new();
    let mut members = Vec::new();
    let list = etcd.member_list().await.unwrap_or_default();
    for ((h, url), status) in hosts.iter().zip(&urls).zip(statuses) {
        let status = status.ok();
        let healthy = match &status {
            Some(_) => etcd.health(url).await.is_ok(),
            None => false,
        };
        // A member that does not answer is still known to the others by its name.
        let id = status.as_ref().map(|s| s.member_id).unwrap_or_else(|| {
            list.iter()
                .find(|m| m.name == h.name.as_str())
                .map(|m| m.id)
                .unwrap_or_default()
        });
        let learner = list.iter().any(|m| m.id == id && m.is_learner)
            || status.as_ref().is_some_and(|s| s.is_learner);
        members.push(MemberView {
            name: h.name.as_str().to_string(),
            id,
            version: status.as_ref().and_then(|s| EtcdVersion::parse(&s.version)),
            healthy,
            is_learner: learner,
        });
        endpoints.push(Endpoint {
            host: h.name.as_str().to_string(),
            url: url.clone(),
            status,
        });
    }
    // A member the cluster has that the inventory does not (a learner being added, say).
    for m in &list {
        if !members
            .iter()
            .any(|v| v.id == m.id || (!m.name.is_empty() && v.name == m.name))
        {
            members.push(MemberView {
                name: if m.name.is_empty() {
                    format!("{:x}", m.id)
                } else {
                    m.name.clone()
                },
                id: m.id,
                version: None,
                healthy: false,
                is_learner: m.is_learner,
            });
        }
    }
    let leader = endpoints
        .iter()
        .filter_map(|e| e.status.as_ref())
        .map(|s| s.leader_id)
        .find(|l| *l != 0);
    let alarms = etcd
        .alarms()
        .await
        .map(|a| {
            a.into_iter()
                .map(|(id, alarm)| {
                    let who = members
                        .iter()
                        .find(|m| m.id == id)
                        .map(|m| m.name.clone())
                        .unwrap_or_else(|| format!("{id:x}"));
                    format!("{who}: {alarm}")
                })
                .collect()
        })
        .unwrap_or_default();
    let answering = endpoints.iter().find(|e| e.status.is_some());
    let auth_enabled = match answering {
        Some(e) => etcd.auth_enabled(&e.url).await.ok(),
        None => None,
    };
    let mut cluster_version = None;
    for e in endpoints.iter().filter(|e| e.status.is_some()) {
        if let Ok((_, cluster)) = versions_of(state_dir, &e.url).await {
            cluster_version = Some(cluster);
            break;
        }
    }
    (
        Observed {
            members,
            expected_members: hosts.len(),
            leader,
            alarms,
            auth_enabled,
            cluster_version,
        },
        endpoints,
    )
}

/// `(server version, cluster version as major.minor)` from `url`'s `/version`.
pub async fn versions_of(state_dir: &Path, url: &str) -> Result<(EtcdVersion, (u64, u64)), String> {
    let dir = pki_dir(state_dir);
    let read =
        |name: String| std::fs::read_to_string(dir.join(&name)).map_err(|e| format!("{name}: {e}"));
    let config = crate::https::client_config_with_identity(
        &read(format!("{ETCD_CA}.crt"))?,
        &read(format!("{ETCD_CLIENT_CERT}.crt"))?,
        &read(format!("{ETCD_CLIENT_CERT}.key"))?,
    )?;
    let addr: SocketAddr = url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("{url}: {e}"))?;
    let call = crate::https::get(config, addr, "/version", 4096);
    let (code, body) = tokio::time::timeout(std::time::Duration::from_secs(3), call)
        .await
        .map_err(|_| format!("{url}/version: no answer within 3 s"))??;
    if code != 200 {
        return Err(format!("{url}/version answered {code}"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{url}/version: {e}"))?;
    let server = v["etcdserver"]
        .as_str()
        .and_then(EtcdVersion::parse)
        .ok_or_else(|| format!("{url}/version: no etcdserver in {body}"))?;
    let cluster = v["etcdcluster"]
        .as_str()
        .and_then(|c| {
            let mut it = c.split('.').map(|p| p.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .ok_or_else(|| format!("{url}/version: no etcdcluster in {body}"))?;
    Ok((server, cluster))
}
