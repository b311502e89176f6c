//! The runbook's vocabulary: phases, where a step runs, and what it wants.
//!
//! A [`Step`] is data: a phase, a [`Target`] (one host, or the cluster as a whole), a name a
//! person reads, and an [`Action`]. Actions are grouped by *family* ([`FileAction`],
//! [`UnitAction`], [`CertificateSpec`], [`KernelAction`], [`WaitAction`], [`KubeadmAction`]);
//! each family has one executor module in `runbook::exec` that owns both how it is checked and
//! how it is run, so adding an action means touching its family and nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::pki::{ExpectedNames, Profile};

/// The runbook's phases, in the order they run. Hosts run in parallel within a phase unless
/// [`Phase::serial`] says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Hosts,
    Certificates,
    EtcdBinary,
    EtcdConfig,
    EtcdStart,
    EtcdQuorum,
    EtcdSeal,
    Keepalived,
    NodePrep,
    KubeadmConfig,
    KubeadmInit,
    KubeadmJoinMasters,
    KubeadmJoinWorkers,
    Cni,
}

impl Phase {
    pub const ALL: [Phase; 14] = [
        Phase::Hosts,
        Phase::Certificates,
        Phase::EtcdBinary,
        Phase::EtcdConfig,
        Phase::EtcdStart,
        Phase::EtcdQuorum,
        Phase::EtcdSeal,
        Phase::Keepalived,
        Phase::NodePrep,
        Phase::KubeadmConfig,
        Phase::KubeadmInit,
        Phase::KubeadmJoinMasters,
        Phase::KubeadmJoinWorkers,
        Phase::Cni,
    ];

    /// Whether the hosts of this phase run one after the other (in name order) instead of in
    /// parallel: control-plane nodes join one at a time, as kubeadm's HA guide does them.
    pub fn serial(self) -> bool {
        matches!(self, Phase::KubeadmJoinMasters)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Hosts => "hosts",
            Phase::Certificates => "certificates",
            Phase::EtcdBinary => "etcd-binary",
            Phase::EtcdConfig => "etcd-config",
            Phase::EtcdStart => "etcd-start",
            Phase::EtcdQuorum => "etcd-quorum",
            Phase::EtcdSeal => "etcd-seal",
            Phase::Keepalived => "keepalived",
            Phase::NodePrep => "node-prep",
            Phase::KubeadmConfig => "kubeadm-config",
            Phase::KubeadmInit => "kubeadm-init",
            Phase::KubeadmJoinMasters => "kubeadm-join-masters",
            Phase::KubeadmJoinWorkers => "kubeadm-join-workers",
            Phase::Cni => "cni",
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = String;

    /// A phase by the name `haop plan` prints (`etcd-config`, `keepalived`, ...).
    fn from_str(s: &str) -> Result<Phase, String> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
                format!("no phase {s:?}; the phases are {}", names.join(", "))
            })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// One host of the inventory, through its agent.
    Host(String),
    /// The cluster as a whole, through the etcd API: no one host's agent.
    Cluster,
}

impl Target {
    /// How a cluster-wide step is shown and recorded (the journal's and `haop plan -o json`'s
    /// `"host"` field).
    pub const CLUSTER_LABEL: &'static str = "cluster";

    /// The host, for a host step.
    pub fn host(&self) -> Option<&str> {
        match self {
            Target::Host(h) => Some(h),
            Target::Cluster => None,
        }
    }

    /// Whether this is host `name`'s step.
    pub fn is_host(&self, name: &str) -> bool {
        self.host() == Some(name)
    }

    /// The host's name, or [`Target::CLUSTER_LABEL`].
    pub fn as_str(&self) -> &str {
        self.host().unwrap_or(Self::CLUSTER_LABEL)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One step: where it runs and what it must look like there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub phase: Phase,
    pub target: Target,
    /// What a person reads: "file /etc/etcd.env", "unit etcd.service running".
    pub name: String,
    pub action: Action,
}

/// What one step wants, by family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    File(FileAction),
    Unit(UnitAction),
    Certificate(CertificateSpec),
    Kernel(KernelAction),
    Wait(WaitAction),
    Kubeadm(KubeadmAction),
}

impl Action {
    /// The host files this action writes when it changes something. A `Running` step restarts
    /// its unit when one of its `restart_on` paths is among them.
    pub fn writes(&self) -> Vec<String> {
        match self {
            Action::File(
                FileAction::Content { path, .. }
                | FileAction::IfAbsent { path, .. }
                | FileAction::Upload { path, .. },
            ) => vec![path.clone()],
            Action::File(FileAction::HostsBlock { .. }) => vec![HOSTS_FILE.into()],
            Action::Certificate(c) => vec![c.cert_path.clone(), c.ca_path.clone()],
            Action::Unit(UnitAction::File { name, .. }) => vec![unit_file_path(name)],
            Action::Unit(UnitAction::Running { .. })
            | Action::Kernel(_)
            | Action::Wait(_)
            | Action::Kubeadm(_) => Vec::new(),
        }
    }
}

/// The hosts file whose haop block [`FileAction::HostsBlock`] keeps.
pub const HOSTS_FILE: &str = "/etc/hosts";

/// Where a unit's file lives (systemd's and the agent's supervisor's directory).
pub fn unit_file_path(unit: &str) -> String {
    format!("/etc/systemd/system/{unit}")
}

/// Files on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileAction {
    /// A whole file with this content and mode.
    Content {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    /// A file written only when it is missing (what is there is left alone).
    IfAbsent {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    /// haop's block in /etc/hosts, merged into what is there.
    HostsBlock { block: String },
    /// A binary uploaded from the operator's machine, checked by its sha256.
    Upload {
        path: String,
        local: PathBuf,
        sha256: String,
        mode: u32,
    },
}

/// Units of the host's service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitAction {
    /// A unit file, and the data dirs it owns.
    File {
        name: String,
        content: String,
        data_dirs: Vec<String>,
    },
    /// The unit runs and is enabled. Restarted when a file in `restart_on` changed in this run,
    /// or changed after the unit's process started (by an earlier run that did not get to the
    /// restart).
    Running {
        unit: String,
        restart_on: Vec<String>,
        /// An etcd member's client URL: its restarts happen one member at a time, each waiting
        /// until the member answers through the etcd API again, so quorum is never lost.
        rolling_etcd: Option<String>,
        /// Milliseconds to wait before a first start. Members of a new etcd cluster started in
        /// the very same instant each wait about a second per peer asking whether the cluster
        /// already exists (measured: 2 s with three members); a few tens of milliseconds apart
        /// they form at once.
        start_delay_ms: u64,
    },
}

/// Which CA signs a certificate step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    Etcd,
}

/// A key generated on the host and a certificate for it, signed by haop's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    pub key_path: String,
    pub cert_path: String,
    pub ca_path: String,
    pub issuer: Issuer,
    pub profile: Profile,
    pub common_name: String,
    pub names: ExpectedNames,
}

/// Kernel settings of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelAction {
    /// `/etc/modules-load.d/NAME.conf`, and the modules loaded.
    Modules { name: String, modules: Vec<String> },
    /// `/etc/sysctl.d/NAME.conf`, and the values applied.
    Sysctls {
        name: String,
        values: BTreeMap<String, String>,
    },
    /// Swap off and commented out of fstab.
    SwapOff,
}

/// Waits: they change nothing, they hold the run until the cluster is in a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitAction {
    /// Cluster-wide: the etcd members elect a leader and answer through the API.
    EtcdQuorum {
        endpoints: Vec<String>,
        members: usize,
    },
    /// keepalived has elected its MASTER: exactly one of `masters` (name, agent endpoint)
    /// holds the VIP.
    VipHeld {
        vip: String,
        masters: Vec<(String, String)>,
    },
}

/// The kubeadm phases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeadmAction {
    /// kubeadm-config.yaml when the inventory pins no Kubernetes version: both renderings,
    /// the one for the kubeadm found on the host is written.
    Config {
        path: String,
        v1beta3: Vec<u8>,
        v1beta4: Vec<u8>,
        mode: u32,
    },
    /// `kubeadm init --config CONFIG` unless /etc/kubernetes/admin.conf exists; the join
    /// commands it prints go to the state dir. No `--upload-certs`: the certificates a
    /// control-plane join needs are uploaded with the configuration that keeps the etcd files
    /// out (`render::kubeadm::upload_certs_config`).
    Init {
        cluster: String,
        config_path: String,
    },
    /// `kubeadm join --config` with the node's own JoinConfiguration unless
    /// /etc/kubernetes/kubelet.conf exists, with the join info of `first_master`'s init (made
    /// anew there when missing or expired).
    Join {
        cluster: String,
        control_plane: bool,
        node_name: String,
        /// The kubelet's `node-ip`: the host's inventory address.
        node_ip: String,
        /// The API server's advertise address of a joining control-plane node.
        advertise_address: Option<String>,
        /// The API server's port of a joining control-plane node (`kubernetes.api_port`).
        bind_port: Option<u16>,
        first_master: String,
        first_master_endpoint: String,
        /// The configuration `kubeadm init phase upload-certs` reads on the first master.
        config_path: String,
        /// A master's own etcd client certificate, checked (and issued again if it is not the
        /// master's own) right after the join.
        etcd_client_certificate: Option<Box<CertificateSpec>>,
    },
    /// The CNI manifest uploaded to `path` and `kubectl apply`ed on the first master, again
    /// whenever its content changes.
    Cni { local: PathBuf, path: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_reads_and_serializes_as_before() {
        let cluster = serde_json::to_string(&Target::Cluster).unwrap();
        assert_eq!(cluster, "\"cluster\"");
        let host = Target::Host("etcd1".into());
        assert_eq!(serde_json::to_string(&host).unwrap(), "\"etcd1\"");
        assert_eq!(format!("{host:<7}|"), "etcd1  |");
        assert!(host.is_host("etcd1") && !Target::Cluster.is_host("cluster"));
        assert_eq!(Target::Cluster.host(), None);
    }

    #[test]
    fn writes_names_the_files_a_unit_restarts_on() {
        let unit = Action::Unit(UnitAction::File {
            name: "etcd.service".into(),
            content: String::new(),
            data_dirs: Vec::new(),
        });
        assert_eq!(unit.writes(), ["/etc/systemd/system/etcd.service"]);
        let hosts = Action::File(FileAction::HostsBlock {
            block: String::new(),
        });
        assert_eq!(hosts.writes(), ["/etc/hosts"]);
        assert!(Action::Kernel(KernelAction::SwapOff).writes().is_empty());
    }
}
