//! `haop status`'s Kubernetes section: the API servers' `/readyz` through the VIP and on each
//! master.
//!
//! Why: etcd and the VIP can be healthy while the control plane is not (a kube-apiserver
//! crash-looping, or cut off from etcd); `/readyz` is what keepalived's health check and
//! kubeadm themselves ask. Through the VIP is what clients see; on each master says which one
//! is at fault. kubeadm clusters let anyone read `/readyz` (`system:public-info-viewer`), so
//! no client certificate is sent.
//!
//! Trust: each API server's certificate is verified against the cluster's own CA, the one
//! kubeadm creates and writes to [`CA_PATH`] on every master. haop never had it (kubeadm made
//! it on the first master), so it reads it with the agents' ReadFile (a certificate, not a key,
//! so the agent allows it, and a `haop:reader` identity can do it), from all masters at once,
//! and takes the first master that answers with a certificate. Without a CA nothing is asked:
//! an unverified answer could come from anything listening on the port. The name verified is
//! the IP address asked: kubeadm puts the VIP in the certificate through `apiServer.certSANs`
//! and each master's advertiseAddress in its own (see `render/kubeadm.rs`), on the inventory's
//! `kubernetes.api_port`.
//!
//! Lifecycle: [`probe`] runs beside the hosts' and etcd's probes under the same deadline: the
//! CA first, then every endpoint at once, each one TLS connection and one HTTP/1.1 GET whose
//! body is read up to [`MAX_BODY`]. The verdict rules for what it finds are in the parent
//! module's doc. The endpoint sync after an etcd membership change (`etcd::kube_readyz`) asks
//! the same question the same way, one master at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;
use tonic::transport::ClientTlsConfig;

use super::agent_io::{connect_agent, read_file};
use super::LATE;
use super::{ApiEndpoint, ApiVia, KubernetesSection};
use crate::inventory::Inventory;

/// Where kubeadm writes the cluster CA's certificate on every master.
pub const CA_PATH: &str = "/etc/kubernetes/pki/ca.crt";
/// The most of a `/readyz` body that is read (a verbose one lists some 20 checks).
pub const MAX_BODY: usize = 64 * 1024;
/// The longest `detail` kept, in characters.
const MAX_DETAIL: usize = 240;

/// One endpoint to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub via: ApiVia,
    pub host: Option<String>,
    pub addr: SocketAddr,
}

/// What asking one endpoint gave: the HTTP status and body, or why there is none; and how long
/// it took.
pub(crate) type Answer = (Result<(u16, String), String>, Duration);

/// The endpoints of `inventory`: through the VIP (when there is one) and on each master, in
/// file order. None when Kubernetes is disabled or there is no master.
pub(super) fn targets(inventory: &Inventory) -> Vec<Target> {
    let masters = inventory.masters();
    if !inventory.kubernetes.enabled || masters.is_empty() {
        return Vec::new();
    }
    let vip = inventory.vip.iter().map(|v| Target {
        via: ApiVia::Vip,
        host: None,
        addr: SocketAddr::new(v.address, inventory.kubernetes.api_port),
    });
    let masters = masters.into_iter().map(|m| Target {
        via: ApiVia::Master,
        host: Some(m.name.to_string()),
        addr: SocketAddr::new(m.address, inventory.kubernetes.api_port),
    });
    vip.chain(masters).collect()
}

/// Asks every API server of `inventory` by `deadline`; None when Kubernetes is disabled.
pub(super) async fn probe(
    tls: ClientTlsConfig,
    inventory: &Inventory,
    timeout: Duration,
    deadline: Instant,
) -> Option<KubernetesSection> {
    let targets = targets(inventory);
    if targets.is_empty() {
        return None;
    }
    let masters = inventory
        .masters()
        .into_iter()
        .map(|h| (h.name.to_string(), h.agent.as_str().to_string()))
        .collect();
    let ca = fetch_ca(tls, masters, timeout, deadline).await;

    let mut asked = JoinSet::new();
    if let Ok((_, config)) = &ca {
        for (i, t) in targets.iter().enumerate() {
            let (config, addr) = (config.clone(), t.addr);
            asked.spawn(async move { (i, readyz(config, addr, deadline).await) });
        }
    }
    let mut answers: Vec<Option<Answer>> = vec![None; targets.len()];
    for (i, a) in asked.join_all().await {
        answers[i] = Some(a);
    }
    let (ca_source, ca_error) = match ca {
        Ok((host, _)) => (Some(host), None),
        Err(e) => (None, Some(e)),
    };
    Some(KubernetesSection {
        endpoints: targets
            .iter()
            .zip(answers)
            .map(|(t, a)| endpoint_row(t, a))
            .collect(),
        ca_source,
        ca_error,
    })
}

/// The report row of `target` from its answer (None: not asked, for want of a CA).
pub(super) fn endpoint_row(target: &Target, answer: Option<Answer>) -> ApiEndpoint {
    let mut row = ApiEndpoint {
        via: target.via,
        host: target.host.clone(),
        url: format!("https://{}/readyz", target.addr),
        ready: false,
        http_status: None,
        detail: None,
        error: None,
        latency_ms: None,
    };
    match answer {
        None => row.error = Some("not asked: no Kubernetes CA to verify it with".to_string()),
        Some((result, latency)) => {
            row.latency_ms = Some((latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0);
            match result {
                Ok((status, body)) => {
                    row.ready = status == 200;
                    row.http_status = Some(status);
                    row.detail = detail(&body);
                }
                Err(e) => row.error = Some(e),
            }
        }
    }
    row
}

/// The CA from the first master whose agent answers with one: that master's name and a TLS
/// client trusting only it. The error lists every master's reason, in file order.
async fn fetch_ca(
    tls: ClientTlsConfig,
    masters: Vec<(String, String)>,
    timeout: Duration,
    deadline: Instant,
) -> Result<(String, Arc<ClientConfig>), String> {
    let mut reads = JoinSet::new();
    for (i, (name, endpoint)) in masters.into_iter().enumerate() {
        let tls = tls.clone();
        reads.spawn(async move {
            let host = name.clone();
            let read = async {
                let client = connect_agent(tls, &host, &endpoint, timeout, deadline).await?;
                match tokio::time::timeout_at(deadline, read_file(&client, CA_PATH)).await {
                    Ok(Ok(Some(pem))) => client_config(&pem).map_err(|e| format!("{CA_PATH}: {e}")),
                    Ok(Ok(None)) => Err(format!(
                        "{CA_PATH} does not exist (has kubeadm init or join run?)"
                    )),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!("ReadFile {CA_PATH}: {LATE}")),
                }
            };
            (i, name, read.await)
        });
    }
    let mut errors = Vec::new();
    while let Some(done) = reads.join_next().await {
        match done {
            // Dropping `reads` cancels the other masters' reads.
            Ok((_, name, Ok(config))) => return Ok((name, config)),
            Ok((i, name, Err(e))) => errors.push((i, format!("{name}: {e}"))),
            Err(e) => errors.push((usize::MAX, e.to_string())),
        }
    }
    errors.sort();
    let errors: Vec<String> = errors.into_iter().map(|(_, e)| e).collect();
    Err(format!(
        "no master gave the cluster CA: {}",
        errors.join("; ")
    ))
}

/// A TLS client that trusts the certificates of `pem` and nothing else.
pub(crate) fn client_config(pem: &str) -> Result<Arc<ClientConfig>, String> {
    crate::https::client_config(pem)
}

/// `GET https://ADDR/readyz`, the server verified by `config` under the name `ADDR`'s IP,
/// answered by `deadline`.
pub(crate) async fn readyz(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    deadline: Instant,
) -> Answer {
    let started = Instant::now();
    let result = match tokio::time::timeout_at(
        deadline,
        crate::https::get(config, addr, "/readyz", MAX_BODY),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(LATE.to_string()),
    };
    (result, started.elapsed())
}

/// What a `/readyz` body says in one line: its failed checks (`[-]etcd failed: reason
/// withheld`; the API server lists every check, passed ones as `[+]`, when one fails), or else
/// its first line (`ok`; for a 403, the start of the Status object).
pub(crate) fn detail(body: &str) -> Option<String> {
    let mut lines = body.lines().map(str::trim).filter(|l| !l.is_empty());
    let failed: Vec<&str> = lines.clone().filter(|l| l.starts_with("[-]")).collect();
    let text = if failed.is_empty() {
        lines.next()?.to_string()
    } else {
        failed.join("; ")
    };
    Some(if text.chars().count() > MAX_DETAIL {
        text.chars().take(MAX_DETAIL).chain(['…']).collect()
    } else {
        text
    })
}

#[cfg(test)]
mod tests;
