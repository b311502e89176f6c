//! Taking over a cluster built by hand, and securing it live.
//!
//! Most clusters that need haop already run: built from a runbook like the seed, with cfssl
//! certificates named `*.pem`, the CA key copied to every host, and both certificate auths
//! off. No peer takes such a cluster over (kubeadm and Cluster API only connect to an external
//! etcd; etcd has no guide for turning client-cert-auth on in a live cluster), and rebuilding
//! it means downtime and a restore. haop adopts it in place:
//!
//! * `haop adopt -f INV` ([`adopt`]) reads the hosts through their agents and etcd through its
//!   API ([`discover`]): units, environment files and flags ([`flags`]), the certificates and
//!   the CA they chain to, where that CA's key lies, the members, the API servers' etcd client
//!   files, keepalived's VIP. A cluster it cannot understand is refused with everything that is
//!   missing, and nothing is written. Otherwise it writes the full inventory (the original kept
//!   beside it), the [`record`] of what it found, and prints the plan. Nothing on a host
//!   changes.
//! * `haop apply` then runs the migration ([`migrate`]) before its usual steps: the bundle
//!   protocol, three rolling restarts, one member at a time, each back and caught up with the
//!   quorum whole before the next (leadership handed away first, so a restart costs no
//!   election): (1) `trust`: haop's layout, certificates from haop's CA made through the CSR
//!   flow (keys born on the hosts), the seed's CA and haop's both trusted, the seed's
//!   certificates still served; then each master's kube-apiserver switched to a client
//!   certificate of haop's and the bundle; (2) `secure`: haop's certificates served, client and
//!   peer certificate auth on; (3) `drop`: the seed's CA trusted nowhere; then its key removed
//!   from every host. Killed anywhere, a rerun continues from the record; `haop plan` shows the
//!   step each member is at.

pub mod discover;
pub mod flags;
pub mod migrate;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::record::AdoptionRecord;
use crate::agent::Agents;
use crate::inventory::{EtcdBinary, InterfaceName, Inventory, Vip};
use crate::trust::Trust;

/// Errors of adoption.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Record(#[from] record::RecordError),
    #[error(transparent)]
    Write(#[from] crate::fsio::FsioError),
    #[error("{} lists no etcd host: adoption takes over an etcd cluster", .0.display())]
    NoEtcd(PathBuf),
    #[error("cluster {cluster} was adopted already ({path}); {next}")]
    Already {
        cluster: String,
        path: PathBuf,
        next: &'static str,
    },
    #[error("haop cannot take this cluster over as it is; nothing was changed:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<String>),
    #[error("the adopted inventory does not serialize")]
    Yaml(#[source] serde_yaml_ng::Error),
}

/// What `haop adopt` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Adopted {
    pub cluster: String,
    pub inventory: PathBuf,
    /// The inventory as it was, kept.
    pub original: PathBuf,
    pub record: PathBuf,
    pub members: Vec<record::SeedMember>,
    pub masters: Vec<record::SeedMaster>,
    /// What `haop apply` will do, in order.
    pub plan: Vec<String>,
}

/// `haop adopt -f INVENTORY`.
pub async fn adopt(state_dir: &Path, inventory_path: &Path) -> Result<Adopted, AdoptError> {
    let (inv, _) = Inventory::load(inventory_path)?;
    let cluster = inv.cluster.as_str().to_string();
    if inv.etcd_hosts().is_empty() {
        return Err(AdoptError::NoEtcd(inventory_path.to_path_buf()));
    }
    if let Some(r) = AdoptionRecord::load(state_dir, &cluster)? {
        return Err(AdoptError::Already {
            cluster,
            path: record::path(state_dir, &r.cluster),
            next: if r.finished_unix.is_some() {
                "it is secured and managed by haop"
            } else {
                "run `haop apply` to continue securing it, `haop plan` to see where it is"
            },
        });
    }
    let trust = Arc::new(Trust::load(state_dir)?);
    let agents = Agents::new(trust, &inv);
    let found = discover::discover(&inv, &agents).await;
    if !found.problems.is_empty() {
        return Err(AdoptError::Refused(found.problems));
    }
    let first = &found.members[0];
    // The full inventory: the hosts as the operator listed them, etcd as it runs.
    let mut full = inv.clone();
    full.etcd.binary = EtcdBinary::Path(PathBuf::from(&first.command.program));
    full.etcd.data_dir = PathBuf::from(first.command.flags["data-dir"].clone());
    let (client_port, peer_port) = discover::ports(first);
    full.etcd.client_port = client_port;
    full.etcd.peer_port = peer_port;
    full.etcd.token = first.command.flags.get("initial-cluster-token").cloned();
    full.etcd.extra_flags = flags::carried(&first.command);
    if full.vip.is_none() {
        if let Some(v) = &found.vip {
            if let Ok(interface) = InterfaceName::try_from(v.interface.as_str()) {
                full.vip = Some(Vip {
                    address: v.address,
                    interface,
                    router_id: v.router_id,
                });
            }
        }
    }
    // kubeadm set the API servers up by hand; haop switches their etcd client files (the
    // migration) but does not run kubeadm on a cluster it did not create.
    full.kubernetes.enabled = false;
    full.etcd.version = found
        .version
        .as_deref()
        .and_then(|v| v.parse::<crate::inventory::Version>().ok());
    let yaml = full.to_yaml().map_err(AdoptError::Yaml)?;
    let text = format!(
        "# Written by `haop adopt` from the running cluster ({} members{}).\n\
         # `haop apply` secures it: see `haop plan`. Kubernetes was set up by hand: haop switches\n\
         # the API servers' etcd client files and leaves kubeadm alone (kubernetes.enabled: false).\n{yaml}",
        found.members.len(),
        if found.masters.is_empty() {
            String::new()
        } else {
            format!(", {} masters", found.masters.len())
        }
    );
    let original = backup_path(inventory_path);
    if !original.exists() {
        std::fs::copy(inventory_path, &original).map_err(|source| crate::fsio::FsioError::Io {
            op: "copy",
            path: original.clone(),
            source,
        })?;
    }
    let record = AdoptionRecord {
        cluster: cluster.clone(),
        adopted_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
        seed_ca_pem: first.ca_pem.clone(),
        members: found.members.iter().map(|m| m.seed.clone()).collect(),
        masters: found.masters.clone(),
        steps: Default::default(),
        finished_unix: None,
    };
    // From here on haop trusts both CAs (its own etcd client must reach members that still
    // serve the seed's certificates); the hosts are untouched until apply.
    let etcd_ca = crate::pki::CertificateAuthority::load(
        &crate::trust::pki_dir(state_dir),
        crate::pki::ETCD_CA,
    )?;
    let bundle = crate::pki::bundle::join(etcd_ca.cert_pem(), &[&record.seed_ca_pem])?;
    crate::pki::bundle::set(state_dir, &bundle)?;
    crate::fsio::write_atomic(inventory_path, text.as_bytes(), 0o644)?;
    record.save(state_dir)?;
    let (reloaded, _) = Inventory::load(inventory_path)?;
    Ok(Adopted {
        cluster: cluster.clone(),
        inventory: inventory_path.to_path_buf(),
        original,
        record: record::path(state_dir, &cluster),
        plan: migrate::describe(&record, &reloaded),
        members: record.members,
        masters: record.masters,
    })
}

/// Where `haop adopt` keeps the inventory as the operator wrote it.
pub fn backup_path(inventory_path: &Path) -> PathBuf {
    let mut name = inventory_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".before-adopt");
    inventory_path.with_file_name(name)
}
