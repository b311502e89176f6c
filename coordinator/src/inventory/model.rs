//! The validated inventory: what the plan, the executor and the status code read.
//!
//! Values here are already checked (see [`super::validate`]); defaults are filled in, so a
//! reader never wonders what an absent field means. Fields are public so that code (the lab,
//! tests) can build an inventory; such an inventory is checked the same way when it is written
//! with [`Inventory::to_yaml`] and read back.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use super::raw::{
    RawBinary, RawEtcd, RawHost, RawInventory, RawKubernetes, RawPki, RawRetention, RawSnapshots,
    RawUpload, RawVip,
};
use super::types::{
    max_prefix, url, AgentEndpoint, Cidr, ClusterName, Fqdn, HostName, InterfaceName, Lifetime,
    Role, Sha256Hex, Span, Version,
};
use crate::pki::KeyAlgorithm;

/// etcd's default client port.
pub const DEFAULT_CLIENT_PORT: u16 = 2379;
/// etcd's default peer port.
pub const DEFAULT_PEER_PORT: u16 = 2380;
/// Where etcd keeps its data unless the inventory says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/etcd";
/// The etcd binary when the inventory names none: where Debian's and Ubuntu's `etcd-server`
/// package installs it.
pub const DEFAULT_ETCD_BINARY: &str = "/usr/bin/etcd";
/// keepalived's `virtual_router_id` unless the inventory says otherwise (the seed's value).
pub const DEFAULT_ROUTER_ID: u8 = 51;
/// The VIP's interface unless the inventory says otherwise.
pub const DEFAULT_VIP_INTERFACE: &str = "eth0";
/// The pod network unless the inventory says otherwise (the seed's value).
pub const DEFAULT_POD_SUBNET: &str = "10.30.0.0/16";
/// The API servers' port unless the inventory says otherwise (kubeadm's default).
pub const DEFAULT_API_PORT: u16 = 6443;

/// A whole cluster as one file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub cluster: ClusterName,
    /// In the order of the file; the first master is the one `kubeadm init` runs on.
    pub hosts: Vec<Host>,
    pub etcd: EtcdSettings,
    /// Required with two or more masters.
    pub vip: Option<Vip>,
    pub kubernetes: KubernetesSettings,
    pub pki: PkiSettings,
    /// An even number of etcd members is accepted without a warning.
    pub allow_even_etcd: bool,
    /// A single etcd member is accepted without a warning.
    pub allow_single_etcd: bool,
}

/// One machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: HostName,
    pub address: IpAddr,
    /// The prefix length of the host's network when the file gives the address as CIDR
    /// (`10.0.0.5/24`).
    pub prefix_len: Option<u8>,
    /// At least one, each once, in the order of the file.
    pub roles: Vec<Role>,
    pub agent: AgentEndpoint,
    pub fqdn: Option<Fqdn>,
}

/// Where the etcd binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdBinary {
    /// Already installed on every etcd host at this absolute path.
    Path(PathBuf),
    /// Uploaded from the operator's machine; the agent checks the digest before installing it.
    /// A relative `file` is relative to the inventory file's directory once loaded with
    /// [`Inventory::load`].
    Upload { file: PathBuf, sha256: Sha256Hex },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub binary: EtcdBinary,
    /// Absolute path on the etcd hosts.
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    /// More `--flag=value` arguments for etcd; never one that haop sets itself.
    pub extra_flags: Vec<String>,
    /// The etcd version the operator expects (a hint for preflight; the binary decides).
    pub version: Option<Version>,
    /// `--initial-cluster-token`; see [`Inventory::etcd_cluster_token`] for the default.
    pub token: Option<String>,
    /// What the state dir and the hosts keep of snapshots and moved-aside data.
    pub retention: Retention,
    /// How long a member that is catching up (a learner receiving the database, a restarted
    /// member) may show no progress at all before haop stops waiting and says what stalled.
    pub catch_up_stall: Span,
    /// Scheduled snapshots, their copies on hosts, and when status calls them stale.
    pub snapshots: SnapshotSettings,
}

/// `etcd.snapshots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSettings {
    /// `haop etcd snapshot schedule` saves, verifies, copies and prunes this often.
    pub interval: Span,
    /// Hosts that keep an encrypted copy of each snapshot (0: none), the member it came from
    /// last.
    pub copies: u32,
    /// `haop status` is degraded when the newest verified snapshot is older than this, or
    /// there is none; `0s` turns the check off.
    pub stale_after: Span,
    /// A repair (recover, heal, replace, add, remove) may use the newest verified snapshot of
    /// the state dir as its safety net instead of taking one, when it is at most this old; `0s`
    /// (the default): always take one. At 2 GiB taking one costs about as long as the learner's
    /// whole catch-up; the price is that writes since that snapshot are not in it (the members
    /// still hold them: the planner never lets a repair lose quorum).
    pub reuse_for_repairs: Span,
}

/// Defaults of `etcd.snapshots`: hourly, one copy, stale after a day and an hour (a daily
/// schedule's run may be late by that much before anyone is told).
pub const DEFAULT_SNAPSHOT_INTERVAL: &str = "1h";
pub const DEFAULT_SNAPSHOT_COPIES: u32 = 1;
pub const DEFAULT_SNAPSHOT_STALE_AFTER: &str = "25h";

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            interval: DEFAULT_SNAPSHOT_INTERVAL.parse().expect("a valid duration"),
            copies: DEFAULT_SNAPSHOT_COPIES,
            stale_after: DEFAULT_SNAPSHOT_STALE_AFTER
                .parse()
                .expect("a valid duration"),
            reuse_for_repairs: "0s".parse().expect("a valid duration"),
        }
    }
}

/// `etcd.retention`: snapshots in the state dir and moved-aside data dirs on the hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Snapshots of the cluster kept in the state dir, newest first (at least 1).
    pub snapshots: u32,
    /// Older snapshots are removed too, except the newest.
    pub snapshot_max_age: Span,
    /// Moved-aside copies of a member's data dir (`PATH.wiped-*`) kept per host once the member
    /// is a healthy voter again.
    pub wiped_data_dirs: u32,
    /// A moved-aside copy is kept at least this long, whatever `wiped_data_dirs` says.
    pub wiped_grace: Span,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            snapshots: DEFAULT_SNAPSHOTS_KEPT,
            snapshot_max_age: "168h".parse().expect("a valid duration"),
            wiped_data_dirs: 1,
            wiped_grace: "1h".parse().expect("a valid duration"),
        }
    }
}

/// Snapshots kept by default.
pub const DEFAULT_SNAPSHOTS_KEPT: u32 = 5;

/// How long a catching-up member may show no progress, by default.
pub const DEFAULT_CATCH_UP_STALL: &str = "2m";

impl Default for EtcdSettings {
    fn default() -> Self {
        EtcdSettings {
            binary: EtcdBinary::Path(PathBuf::from(DEFAULT_ETCD_BINARY)),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            client_port: DEFAULT_CLIENT_PORT,
            peer_port: DEFAULT_PEER_PORT,
            extra_flags: Vec::new(),
            version: None,
            retention: Retention::default(),
            catch_up_stall: DEFAULT_CATCH_UP_STALL.parse().expect("a valid duration"),
            token: None,
            snapshots: SnapshotSettings::default(),
        }
    }
}

/// The virtual IP keepalived keeps on one master. The VRRP password is not here: haop
/// generates it and keeps it in the state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: IpAddr,
    pub interface: InterfaceName,
    /// keepalived's `virtual_router_id`, 1 to 255; unique per layer-2 network.
    pub router_id: u8,
}

impl Vip {
    /// A VIP on `eth0` with router id 51.
    pub fn new(address: IpAddr) -> Vip {
        Vip {
            address,
            interface: InterfaceName::try_from(DEFAULT_VIP_INTERFACE)
                .expect("the default interface name is valid"),
            router_id: DEFAULT_ROUTER_ID,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// When false, apply stops after etcd, keepalived and node preparation.
    pub enabled: bool,
    /// The Kubernetes version for kubeadm; when absent, kubeadm's own.
    pub version: Option<Version>,
    pub pod_subnet: Cidr,
    pub service_subnet: Option<Cidr>,
    /// The CNI manifest applied after `kubeadm init` (a local file; relative to the inventory
    /// file's directory once loaded with [`Inventory::load`]).
    pub cni_manifest: Option<PathBuf>,
    /// The port every kube-apiserver listens on (`bindPort`), and the port of the
    /// controlPlaneEndpoint on the VIP: keepalived's check and `haop status` use it too.
    pub api_port: u16,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            enabled: true,
            version: None,
            pod_subnet: DEFAULT_POD_SUBNET
                .parse()
                .expect("the default pod subnet is valid"),
            service_subnet: None,
            cni_manifest: None,
            api_port: DEFAULT_API_PORT,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PkiSettings {
    /// Of the etcd certificates' keys (generated on the hosts).
    pub key_algorithm: KeyAlgorithm,
    pub lifetime: Lifetime,
}

impl Host {
    /// A host with the default agent endpoint (`https://ADDRESS:7443`) and no FQDN.
    pub fn new(name: HostName, address: IpAddr, roles: Vec<Role>) -> Host {
        Host {
            name,
            address,
            prefix_len: None,
            roles,
            agent: AgentEndpoint::for_address(address),
            fqdn: None,
        }
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The host's network: from the address's prefix when the file gives one, otherwise a
    /// /24 (IPv4) or /64 (IPv6) is assumed; the flag says whether it was assumed.
    pub fn subnet(&self) -> (Cidr, bool) {
        subnet_of(self.address, self.prefix_len)
    }
}

/// The network of `addr` with `prefix` (capped at the family's length), or with the assumed
/// /24 (IPv4) or /64 (IPv6); the flag says whether it was assumed.
pub(crate) fn subnet_of(addr: IpAddr, prefix: Option<u8>) -> (Cidr, bool) {
    let (prefix, assumed) = match prefix {
        Some(p) => (p.min(max_prefix(addr)), false),
        None => match addr {
            IpAddr::V4(_) => (24, true),
            IpAddr::V6(_) => (64, true),
        },
    };
    let cidr = Cidr::new(addr, prefix)
        .expect("the prefix fits the address family")
        .network();
    (cidr, assumed)
}

impl Inventory {
    /// An inventory of `hosts` with every setting at its default (Kubernetes enabled, no VIP).
    pub fn new(cluster: ClusterName, hosts: Vec<Host>) -> Inventory {
        Inventory {
            cluster,
            hosts,
            etcd: EtcdSettings::default(),
            vip: None,
            kubernetes: KubernetesSettings::default(),
            pki: PkiSettings::default(),
            allow_even_etcd: false,
            allow_single_etcd: false,
        }
    }

    /// The hosts with `role`, in file order.
    pub fn hosts_with(&self, role: Role) -> Vec<&Host> {
        self.hosts.iter().filter(|h| h.has_role(role)).collect()
    }

    /// The etcd members, in file order.
    pub fn etcd_hosts(&self) -> Vec<&Host> {
        self.hosts_with(Role::Etcd)
    }

    /// The Kubernetes control-plane nodes, in file order.
    pub fn masters(&self) -> Vec<&Host> {
        self.hosts_with(Role::Master)
    }

    pub fn workers(&self) -> Vec<&Host> {
        self.hosts_with(Role::Worker)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name.as_str() == name)
    }

    /// `https://ADDRESS:CLIENT_PORT` of `host`.
    pub fn etcd_client_url(&self, host: &Host) -> String {
        url("https", host.address, self.etcd.client_port)
    }

    /// `https://ADDRESS:PEER_PORT` of `host`.
    pub fn etcd_peer_url(&self, host: &Host) -> String {
        url("https", host.address, self.etcd.peer_port)
    }

    /// The client URLs of every etcd member, in file order (kubeadm's `etcd.external.endpoints`,
    /// `ETCDCTL_ENDPOINTS`).
    pub fn etcd_client_urls(&self) -> Vec<String> {
        self.etcd_hosts()
            .into_iter()
            .map(|h| self.etcd_client_url(h))
            .collect()
    }

    /// etcd's `--initial-cluster` for a new cluster: `NAME=https://ADDRESS:PEER_PORT,...`.
    pub fn etcd_initial_cluster(&self) -> String {
        self.etcd_hosts()
            .into_iter()
            .map(|h| format!("{}={}", h.name, self.etcd_peer_url(h)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `--initial-cluster-token`: the inventory's, or `CLUSTER-etcd`.
    pub fn etcd_cluster_token(&self) -> String {
        self.etcd
            .token
            .clone()
            .unwrap_or_else(|| format!("{}-etcd", self.cluster))
    }

    /// The file text of this inventory, every default written out.
    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        serde_yaml_ng::to_string(self)
    }

    /// Makes relative local paths (the uploaded etcd binary, the CNI manifest) relative to
    /// `dir`, the directory of the inventory file.
    pub(crate) fn resolve_local_paths(&mut self, dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let EtcdBinary::Upload { file, .. } = &mut self.etcd.binary {
            resolve(file);
        }
        if let Some(m) = &mut self.kubernetes.cni_manifest {
            resolve(m);
        }
    }

    pub(crate) fn to_raw(&self) -> RawInventory {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        RawInventory {
            cluster: Some(self.cluster.to_string()),
            allow_even_etcd: self.allow_even_etcd,
            allow_single_etcd: self.allow_single_etcd,
            hosts: self
                .hosts
                .iter()
                .map(|h| RawHost {
                    name: Some(h.name.to_string()),
                    address: Some(match h.prefix_len {
                        Some(p) => format!("{}/{p}", h.address),
                        None => h.address.to_string(),
                    }),
                    roles: h.roles.iter().map(|r| r.to_string()).collect(),
                    agent: Some(h.agent.to_string()),
                    fqdn: h.fqdn.as_ref().map(|f| f.to_string()),
                })
                .collect(),
            etcd: RawEtcd {
                binary: Some(match &self.etcd.binary {
                    EtcdBinary::Path(p) => RawBinary {
                        path: Some(path(p)),
                        upload: None,
                    },
                    EtcdBinary::Upload { file, sha256 } => RawBinary {
                        path: None,
                        upload: Some(RawUpload {
                            file: Some(path(file)),
                            sha256: Some(sha256.to_string()),
                        }),
                    },
                }),
                data_dir: Some(path(&self.etcd.data_dir)),
                client_port: Some(i64::from(self.etcd.client_port)),
                peer_port: Some(i64::from(self.etcd.peer_port)),
                extra_flags: self.etcd.extra_flags.clone(),
                version: self.etcd.version.map(|v| v.to_string()),
                token: self.etcd.token.clone(),
                retention: Some(RawRetention {
                    snapshots: Some(i64::from(self.etcd.retention.snapshots)),
                    snapshot_max_age: Some(self.etcd.retention.snapshot_max_age.to_string()),
                    wiped_data_dirs: Some(i64::from(self.etcd.retention.wiped_data_dirs)),
                    wiped_grace: Some(self.etcd.retention.wiped_grace.to_string()),
                }),
                catch_up_stall: Some(self.etcd.catch_up_stall.to_string()),
                snapshots: Some(RawSnapshots {
                    interval: Some(self.etcd.snapshots.interval.to_string()),
                    copies: Some(i64::from(self.etcd.snapshots.copies)),
                    stale_after: Some(self.etcd.snapshots.stale_after.to_string()),
                    reuse_for_repairs: Some(self.etcd.snapshots.reuse_for_repairs.to_string()),
                }),
            },
            vip: self.vip.as_ref().map(|v| RawVip {
                address: Some(v.address.to_string()),
                interface: Some(v.interface.to_string()),
                router_id: Some(i64::from(v.router_id)),
            }),
            kubernetes: RawKubernetes {
                enabled: Some(self.kubernetes.enabled),
                version: self.kubernetes.version.map(|v| v.to_string()),
                pod_subnet: Some(self.kubernetes.pod_subnet.to_string()),
                service_subnet: self.kubernetes.service_subnet.map(|c| c.to_string()),
                cni_manifest: self.kubernetes.cni_manifest.as_deref().map(path),
                api_port: Some(i64::from(self.kubernetes.api_port)),
            },
            pki: RawPki {
                key_algorithm: Some(self.pki.key_algorithm.to_string()),
                lifetime: Some(self.pki.lifetime.to_string()),
            },
        }
    }
}

impl Serialize for Inventory {
    /// In the file format, every default written out.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_raw().serialize(serializer)
    }
}
