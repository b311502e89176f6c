//! `haop certs renew`: new certificates before the old ones expire, without losing quorum.
//!
//! kubeadm does not renew the certificates of an external etcd. haop re-issues them through the
//! same CSR flow as apply (a new key born on the host, signed by haop's CA), one etcd member at
//! a time: the member's certificates are replaced, its unit restarted, and the next member is
//! touched only when this one answers through the etcd API again and the cluster has its quorum
//! with every member. Masters' etcd client certificates are replaced too (kube-apiserver reads
//! them when it restarts).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::agent::{AgentError, HostAgent};
use crate::etcd::api::EtcdClient;
use crate::etcd::rolling::{restart_member, Endpoint, RollingError};
use crate::inventory::Inventory;
use crate::pki::inspect;
use crate::runbook::plan::CertificateSpec;
use crate::runbook::{exec, Action, Runbook, RunbookError};

/// Which certificates to renew.
#[derive(Debug, Clone, Copy)]
pub struct RenewOptions {
    /// Renew those with fewer days left than this.
    pub expiring_within_days: i64,
    /// Renew every certificate whatever its expiry.
    pub all: bool,
    /// How long to wait for a restarted member.
    pub member_timeout: Duration,
}

/// What renew did, per certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Renewed {
    pub host: String,
    pub path: String,
    pub days_left_before: Option<i64>,
}

/// Errors of renew; each names the host.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    #[error("{host}: {message}")]
    Host { host: String, message: String },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{host} did not come back healthy within {seconds} s after its restart; the other members were not touched. Check it with `haop etcd members`, then run renew again")]
    NotHealthy { host: String, seconds: u64 },
}

fn host_err(host: &str) -> impl Fn(String) -> RenewError + '_ {
    move |message| RenewError::Host {
        host: host.to_string(),
        message,
    }
}

async fn days_left(c: &HostAgent, path: &str) -> Option<i64> {
    let pem = crate::certs::read_certificates(c, path).await.ok()??;
    inspect(&pem)
        .ok()?
        .first()
        .map(|i| i.days_left(time::OffsetDateTime::now_utc()))
}

/// Renews what `opts` selects, member by member; `progress` sees each step.
pub async fn renew(
    state_dir: &Path,
    inventory: Inventory,
    opts: RenewOptions,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Vec<Renewed>, RenewError> {
    let rb = Runbook::load(state_dir, inventory)?;
    let (clients, errors) = rb.connect_all(Duration::from_secs(5)).await;
    if let Some(e) = errors.into_iter().next() {
        return Err(e.into());
    }
    let mut by_host: Vec<(String, Vec<&CertificateSpec>)> = Vec::new();
    for s in &rb.steps {
        let (Action::Certificate(spec), Some(host)) = (&s.action, s.target.host()) else {
            continue;
        };
        match by_host.iter_mut().find(|(h, _)| h == host) {
            Some((_, v)) => v.push(spec),
            None => by_host.push((host.to_string(), vec![spec])),
        }
    }
    let endpoints = rb.inventory.etcd_client_urls();
    let members = rb.inventory.etcd_hosts().len();
    let etcd_hosts: HashMap<String, String> = rb
        .inventory
        .etcd_hosts()
        .iter()
        .map(|h| (h.name.as_str().to_string(), rb.inventory.etcd_client_url(h)))
        .collect();
    let etcd = if members > 0 {
        Some(
            EtcdClient::connect(state_dir, &endpoints, Duration::from_secs(2))
                .await
                .map_err(|e| host_err("etcd")(crate::error_chain(&e)))?,
        )
    } else {
        None
    };
    let mut renewed = Vec::new();
    for (host, certs) in by_host {
        let c = clients
            .get(&host)
            .cloned()
            .ok_or_else(|| host_err(&host)("no agent connection".into()))?;
        let mut changed = false;
        for spec in certs {
            let cert_path = &spec.cert_path;
            let before = days_left(&c, cert_path).await;
            let due = opts.all || before.is_none_or(|d| d < opts.expiring_within_days);
            if !due {
                continue;
            }
            exec::issue_certificate(&c, &rb.ctx, spec, true)
                .await
                .map_err(|e| host_err(&host)(crate::error_chain(&e)))?;
            progress(format!("{host}: renewed {cert_path}"));
            renewed.push(Renewed {
                host: host.clone(),
                path: cert_path.clone(),
                days_left_before: before,
            });
            changed = true;
        }
        let (Some(endpoint), Some(etcd), true) = (etcd_hosts.get(&host), etcd.as_ref(), changed)
        else {
            continue;
        };
        // One member at a time: leadership handed away, restarted, back and caught up with the
        // whole quorum before the next (the wait follows its progress).
        let members: Vec<Endpoint> = etcd_hosts
            .iter()
            .map(|(h, url)| Endpoint {
                host: h.clone(),
                url: url.clone(),
            })
            .collect();
        let me = Endpoint {
            host: host.clone(),
            url: endpoint.clone(),
        };
        restart_member(etcd, &c, &me, &members, opts.member_timeout, progress)
            .await
            .map_err(|e| match e {
                RollingError::NotBack { host, seconds, .. } => {
                    RenewError::NotHealthy { host, seconds }
                }
                other => RenewError::Host {
                    host: host.clone(),
                    message: crate::error_chain(&other),
                },
            })?;
    }
    Ok(renewed)
}
