//! `haop certs list`: every certificate haop made, wherever it is, soonest expiry first.
//!
//! kubeadm does not watch the certificates of an external etcd at all, so an expired peer
//! certificate is found when the cluster stops. This module collects them: the CAs and haop's own
//! certificates in the state dir, and on every host of the inventory the etcd certificates (on
//! etcd hosts: the CA, server and peer certificates; on masters: the CA and kube-apiserver's
//! etcd client certificate, which expires as surely and stops the API server) and the agent's
//! serving certificate, asked from all hosts at once with a timeout each, so one dead
//! host shows as an error row and never delays the others.
//!
//! [`renew`] re-issues host certificates member by member; [`rotate_agent`] replaces the agent
//! CA itself without restarting anything, [`rotate_etcd`] the etcd CA by rolling restarts; both
//! are resumable.

pub mod renew;
pub mod rotate_agent;
pub mod rotate_etcd;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use haop_proto::v1 as pb;
use serde::Serialize;
use time::OffsetDateTime;

use crate::agent::{AgentError, HostAgent};
use crate::etcd::config::PKI_DIR;
use crate::inventory::{Host, Inventory, Role};
use crate::pki::{inspect, CertInfo};
use crate::render::kubeadm::{ETCD_CA_FILE, ETCD_CLIENT_CERT_FILE};
use crate::trust::{pki_dir, Trust};

/// Certificate files an etcd host holds.
pub const HOST_CERTS: &[&str] = &["ca.crt", "server.crt", "peer.crt"];

/// kubeadm's own certificates on a master (not haop's: `kubeadm init` makes them, `kubeadm
/// certs renew` renews them). `haop status` reads them beside haop's, because the API server's
/// certificate lasts one year by default and its expiry stops the control plane all the same.
pub const KUBEADM_CERTS: &[&str] = &[
    "/etc/kubernetes/pki/ca.crt",
    "/etc/kubernetes/pki/apiserver.crt",
    "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
    "/etc/kubernetes/pki/front-proxy-ca.crt",
    "/etc/kubernetes/pki/front-proxy-client.crt",
];

/// kubeadm's kubeconfigs on a master, each embedding a client certificate that lasts one year
/// and that `kubeadm certs renew all` renews with the others. (kubelet.conf names a file that
/// the kubelet rotates itself.) They hold their private keys too: they are read with
/// [`read_certificates`], which brings the certificates alone.
pub const KUBEADM_KUBECONFIGS: &[&str] = &[
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/super-admin.conf",
    "/etc/kubernetes/controller-manager.conf",
    "/etc/kubernetes/scheduler.conf",
];

/// Every file of kubeadm's that holds certificates: [`KUBEADM_CERTS`], [`KUBEADM_KUBECONFIGS`].
pub fn kubeadm_cert_paths() -> impl Iterator<Item = String> {
    KUBEADM_CERTS
        .iter()
        .chain(KUBEADM_KUBECONFIGS)
        .map(|p| p.to_string())
}

/// Whether `path` is one of kubeadm's ([`kubeadm_cert_paths`]), renewed by kubeadm rather than
/// by `haop certs renew`.
pub fn is_kubeadms(path: &str) -> bool {
    KUBEADM_CERTS.contains(&path) || KUBEADM_KUBECONFIGS.contains(&path)
}

/// The certificates of `path` on a host, as PEM: the agent answers only the certificate blocks
/// it finds (PEM, or base64 in a kubeconfig), so a file that also holds a key reads, and the key
/// stays. `None` when there is nothing to read: the file is missing, or it is a kubeconfig that
/// names its certificate by file. A certificate file holding none answers `Some("")`, which
/// [`inspect`] reports.
pub async fn read_certificates(
    agent: &HostAgent,
    path: &str,
) -> Result<Option<String>, AgentError> {
    let request = pb::ReadFileRequest {
        path: path.to_string(),
        max_bytes: 256 * 1024,
        certificates_only: true,
    };
    let Some(r) = agent.read(request).await? else {
        return Ok(None);
    };
    if r.content.is_empty() && KUBEADM_KUBECONFIGS.contains(&path) {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&r.content).into_owned()))
}

/// The certificates haop puts on `host` (besides the agent's own): [`HOST_CERTS`] in the etcd
/// PKI dir on an etcd host; the etcd CA and kube-apiserver's etcd client certificate on a
/// master (the CA once on a host that is both).
pub fn host_cert_paths(host: &Host) -> Vec<String> {
    let mut paths = Vec::new();
    if host.has_role(Role::Etcd) {
        paths.extend(HOST_CERTS.iter().map(|f| format!("{PKI_DIR}/{f}")));
    }
    if host.has_role(Role::Master) {
        for p in [ETCD_CA_FILE, ETCD_CLIENT_CERT_FILE] {
            if !paths.iter().any(|q| q == p) {
                paths.push(p.to_string());
            }
        }
    }
    paths
}

/// One certificate, or one place that could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct CertRow {
    /// "state-dir" or the host's name.
    pub location: String,
    pub path: String,
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub usages: Vec<String>,
    pub is_ca: bool,
    /// RFC 3339.
    pub not_after: String,
    pub days_left: i64,
    /// Set when the certificate could not be read; the other fields are then empty.
    pub error: Option<String>,
}

fn row(location: &str, path: &str, info: &CertInfo, now: OffsetDateTime) -> CertRow {
    let mut sans = info.dns_names.clone();
    sans.extend(info.ip_addresses.iter().cloned());
    CertRow {
        location: location.to_string(),
        path: path.to_string(),
        subject: info.subject.clone(),
        issuer: info.issuer.clone(),
        sans,
        usages: info.extended_key_usages.clone(),
        is_ca: info.is_ca,
        not_after: info
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        days_left: info.days_left(now),
        error: None,
    }
}

fn error_row(location: &str, path: &str, error: String) -> CertRow {
    CertRow {
        location: location.to_string(),
        path: path.to_string(),
        subject: String::new(),
        issuer: String::new(),
        sans: Vec::new(),
        usages: Vec::new(),
        is_ca: false,
        not_after: String::new(),
        days_left: i64::MIN,
        error: Some(error),
    }
}

fn rows_of(location: &str, path: &str, pem: &str, now: OffsetDateTime) -> Vec<CertRow> {
    match inspect(pem) {
        Ok(infos) => infos.iter().map(|i| row(location, path, i, now)).collect(),
        Err(e) => vec![error_row(location, path, e.to_string())],
    }
}

/// Certificates in `<state-dir>/pki`.
pub fn state_dir_rows(state_dir: &Path, now: OffsetDateTime) -> Vec<CertRow> {
    let dir = pki_dir(state_dir);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    paths.sort();
    for p in paths {
        let shown = p.display().to_string();
        match std::fs::read_to_string(&p) {
            Ok(pem) => out.extend(rows_of("state-dir", &shown, &pem, now)),
            Err(e) => out.push(error_row("state-dir", &shown, e.to_string())),
        }
    }
    out
}

async fn host_rows(
    trust: Arc<Trust>,
    name: String,
    endpoint: String,
    paths: Vec<String>,
    timeout: Duration,
    now: OffsetDateTime,
) -> Vec<CertRow> {
    let work = async {
        let mut out = Vec::new();
        let c = match HostAgent::connect(&trust, &name, &endpoint, timeout).await {
            Ok(c) => c,
            Err(e) => return vec![error_row(&name, &endpoint, e.detail())],
        };
        match c.who_am_i().await {
            Ok(w) => {
                let pem = w.serving_cert_pem;
                if !pem.is_empty() {
                    out.extend(rows_of(&name, "agent serving certificate", &pem, now));
                }
            }
            Err(e) => out.push(error_row(&name, "agent", e.detail())),
        }
        for path in paths {
            match read_certificates(&c, &path).await {
                Ok(Some(pem)) => out.extend(rows_of(&name, &path, &pem, now)),
                Ok(None) => {}
                Err(e) => out.push(error_row(&name, &path, e.detail())),
            }
        }
        out
    };
    match tokio::time::timeout(timeout * 3, work).await {
        Ok(rows) => rows,
        Err(_) => vec![error_row(&name, &endpoint, "no answer in time".into())],
    }
}

/// Every certificate of the state dir and of every host, soonest expiry first; rows that could
/// not be read come first of all.
pub async fn list(
    state_dir: &Path,
    inventory: &Inventory,
    timeout: Duration,
) -> Result<Vec<CertRow>, crate::trust::TrustError> {
    let now = OffsetDateTime::now_utc();
    let trust = Arc::new(Trust::load(state_dir)?);
    let mut rows = state_dir_rows(state_dir, now);
    let mut set = tokio::task::JoinSet::new();
    for h in &inventory.hosts {
        set.spawn(host_rows(
            trust.clone(),
            h.name.as_str().to_string(),
            h.agent.as_str().to_string(),
            host_cert_paths(h),
            timeout,
            now,
        ));
    }
    for r in set.join_all().await {
        rows.extend(r);
    }
    rows.sort_by(|a, b| {
        a.days_left
            .cmp(&b.days_left)
            .then_with(|| a.location.cmp(&b.location))
            .then_with(|| a.path.cmp(&b.path))
    });
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_has_its_certificates_once() {
        let host =
            |roles: Vec<Role>| Host::new("h1".parse().unwrap(), "10.0.0.1".parse().unwrap(), roles);
        assert_eq!(
            host_cert_paths(&host(vec![Role::Etcd])),
            [
                "/etc/kubernetes/pki/etcd/ca.crt",
                "/etc/kubernetes/pki/etcd/server.crt",
                "/etc/kubernetes/pki/etcd/peer.crt"
            ]
        );
        assert_eq!(
            host_cert_paths(&host(vec![Role::Master])),
            [
                "/etc/kubernetes/pki/etcd/ca.crt",
                "/etc/kubernetes/pki/apiserver-etcd-client.crt"
            ]
        );
        assert_eq!(
            host_cert_paths(&host(vec![Role::Etcd, Role::Master])).len(),
            4
        );
        assert!(host_cert_paths(&host(vec![Role::Worker])).is_empty());
    }
}
