//! The runbook as data: phases, steps and what each step wants a host to look like.
//!
//! [`desired`] is a pure function from the inventory (and the few things haop keeps in its
//! state dir: the etcd CA, the VRRP password) to every step, in phase order. It reads nothing
//! and asks no host: `haop plan` compares these steps with what the hosts report, and
//! `haop apply` makes the hosts match, step by step, each an idempotent ensure.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::etcd::config::{
    ClusterState, Member, MemberConfig, BOOTSTRAP_ENV_FILE, ENV_FILE, PKI_DIR, UNIT_NAME,
};
use crate::inventory::{EtcdBinary, Host, Inventory, Role};
use crate::pki::{ExpectedNames, Profile};
use crate::render::{self, keepalived, nodeprep, RenderedFile};

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

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which CA signs a certificate step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    Etcd,
}

/// What one step wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A whole file with this content and mode.
    File {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    /// A file written only when it is missing (what is there is left alone).
    FileIfAbsent {
        path: String,
        content: Vec<u8>,
        mode: u32,
    },
    /// haop's block in /etc/hosts, merged into what is there.
    HostsBlock {
        block: String,
    },
    /// A binary uploaded from the operator's machine, checked by its sha256.
    Upload {
        path: String,
        local: PathBuf,
        sha256: String,
        mode: u32,
    },
    /// A key generated on the host and a certificate for it, signed by haop's CA.
    Certificate {
        key_path: String,
        cert_path: String,
        ca_path: String,
        issuer: Issuer,
        profile: Profile,
        common_name: String,
        names: ExpectedNames,
    },
    /// A unit file, and the data dirs it owns.
    Unit {
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
    Modules {
        name: String,
        modules: Vec<String>,
    },
    Sysctls {
        name: String,
        values: BTreeMap<String, String>,
    },
    SwapOff,
    /// keepalived has elected its MASTER: exactly one of `masters` (name, agent endpoint)
    /// holds the VIP. A wait, like the quorum: it changes nothing.
    VipHeld {
        vip: String,
        masters: Vec<(String, String)>,
    },
    /// Cluster-wide: the etcd members elect a leader and answer through the API.
    EtcdQuorum {
        endpoints: Vec<String>,
        members: usize,
    },
    /// kubeadm-config.yaml when the inventory pins no Kubernetes version: both renderings,
    /// the one for the kubeadm found on the host is written (see [`super::kubeadm`]).
    KubeadmConfig {
        path: String,
        v1beta3: Vec<u8>,
        v1beta4: Vec<u8>,
        mode: u32,
    },
    /// `kubeadm init --config CONFIG --upload-certs` unless /etc/kubernetes/admin.conf exists;
    /// the join commands it prints go to the state dir.
    KubeadmInit {
        cluster: String,
        config_path: String,
    },
    /// `kubeadm join` unless /etc/kubernetes/kubelet.conf exists, with the join info of
    /// `first_master`'s init (made anew there when missing or expired).
    KubeadmJoin {
        cluster: String,
        control_plane: bool,
        node_name: String,
        /// The API server's advertise address of a joining control-plane node.
        advertise_address: Option<String>,
        /// The API server's port of a joining control-plane node (`kubernetes.api_port`).
        bind_port: Option<u16>,
        first_master: String,
        first_master_endpoint: String,
        config_path: String,
    },
    /// The CNI manifest uploaded to `path` and `kubectl apply`ed on the first master, again
    /// whenever its content changes.
    Cni {
        local: PathBuf,
        path: String,
    },
}

/// One step: a host (or the cluster) and what it must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub phase: Phase,
    /// A host name, or "cluster" for cluster-wide steps.
    pub host: String,
    /// What a person reads: "file /etc/etcd.env", "unit etcd.service running".
    pub name: String,
    pub action: Action,
}

/// Secrets and trust material the steps need from the state dir.
#[derive(Debug, Clone)]
pub struct Context {
    pub etcd_ca_pem: String,
    pub vrrp_password: String,
}

/// The name cluster-wide steps carry as their host.
pub const CLUSTER: &str = "cluster";

fn member(h: &Host) -> Member {
    Member {
        name: h.name.as_str().to_string(),
        address: h.address,
    }
}

fn names_of(h: &Host) -> ExpectedNames {
    ExpectedNames::for_host(
        h.name.as_str(),
        h.fqdn.as_ref().map(|f| f.as_str()),
        &[h.address],
    )
}

/// The etcd member configuration of `h` for forming the cluster.
pub fn member_config(inv: &Inventory, h: &Host) -> MemberConfig {
    let binary = match &inv.etcd.binary {
        EtcdBinary::Path(p) => p.display().to_string(),
        EtcdBinary::Upload { .. } => "/usr/local/bin/etcd".to_string(),
    };
    MemberConfig {
        member: member(h),
        initial_cluster: inv.etcd_hosts().into_iter().map(member).collect(),
        state: ClusterState::New,
        cluster_token: inv.etcd_cluster_token(),
        data_dir: inv.etcd.data_dir.display().to_string(),
        client_port: inv.etcd.client_port,
        peer_port: inv.etcd.peer_port,
        binary,
        extra_flags: inv.etcd.extra_flags.clone(),
    }
}

/// Every step of the runbook for `inv`, in phase order (host order within a phase). Fails only
/// when a renderer refuses the inventory (which validation should have caught).
pub fn desired(inv: &Inventory, ctx: &Context) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let push = |steps: &mut Vec<Step>, phase, host: &str, name: String, action| {
        steps.push(Step {
            phase,
            host: host.to_string(),
            name,
            action,
        })
    };
    let block = render::hosts::hosts_block(inv);
    for h in &inv.hosts {
        push(
            &mut steps,
            Phase::Hosts,
            h.name.as_str(),
            "file /etc/hosts (haop's block)".into(),
            Action::HostsBlock {
                block: block.clone(),
            },
        );
    }
    let etcd = inv.etcd_hosts();
    for h in &etcd {
        for (file, profile) in [("server", Profile::Server), ("peer", Profile::Peer)] {
            push(
                &mut steps,
                Phase::Certificates,
                h.name.as_str(),
                format!(
                    "certificate {PKI_DIR}/{file}.crt ({})",
                    profile_name(profile)
                ),
                Action::Certificate {
                    key_path: format!("{PKI_DIR}/{file}.key"),
                    cert_path: format!("{PKI_DIR}/{file}.crt"),
                    ca_path: format!("{PKI_DIR}/ca.crt"),
                    issuer: Issuer::Etcd,
                    profile,
                    common_name: h.name.as_str().to_string(),
                    names: names_of(h),
                },
            );
        }
    }
    for h in inv.masters() {
        // kube-apiserver's client certificate for the external etcd (kubeadm's file names).
        push(
            &mut steps,
            Phase::Certificates,
            h.name.as_str(),
            "certificate /etc/kubernetes/pki/apiserver-etcd-client.crt (client)".into(),
            Action::Certificate {
                key_path: "/etc/kubernetes/pki/apiserver-etcd-client.key".into(),
                cert_path: "/etc/kubernetes/pki/apiserver-etcd-client.crt".into(),
                ca_path: format!("{PKI_DIR}/ca.crt"),
                issuer: Issuer::Etcd,
                profile: Profile::Client,
                common_name: format!("kube-apiserver-etcd-client-{}", h.name.as_str()),
                names: ExpectedNames::none(),
            },
        );
    }
    if let EtcdBinary::Upload { file, sha256 } = &inv.etcd.binary {
        for h in &etcd {
            push(
                &mut steps,
                Phase::EtcdBinary,
                h.name.as_str(),
                "binary /usr/local/bin/etcd (uploaded)".into(),
                Action::Upload {
                    path: "/usr/local/bin/etcd".into(),
                    local: file.clone(),
                    sha256: sha256.as_str().to_string(),
                    mode: 0o755,
                },
            );
        }
    }
    for (index, h) in etcd.iter().enumerate() {
        let cfg = member_config(inv, h);
        push(
            &mut steps,
            Phase::EtcdConfig,
            h.name.as_str(),
            format!("file {ENV_FILE}"),
            Action::File {
                path: ENV_FILE.into(),
                content: cfg.env_file().into_bytes(),
                mode: 0o640,
            },
        );
        push(
            &mut steps,
            Phase::EtcdConfig,
            h.name.as_str(),
            format!("file {BOOTSTRAP_ENV_FILE} (when missing)"),
            Action::FileIfAbsent {
                path: BOOTSTRAP_ENV_FILE.into(),
                content: cfg.bootstrap_env_file(None).into_bytes(),
                mode: 0o640,
            },
        );
        push(
            &mut steps,
            Phase::EtcdConfig,
            h.name.as_str(),
            format!("unit {UNIT_NAME}"),
            Action::Unit {
                name: UNIT_NAME.into(),
                content: cfg.unit_file(),
                data_dirs: vec![cfg.data_dir.clone()],
            },
        );
        push(
            &mut steps,
            Phase::EtcdStart,
            h.name.as_str(),
            format!("unit {UNIT_NAME} running"),
            Action::Running {
                unit: UNIT_NAME.into(),
                restart_on: vec![
                    ENV_FILE.into(),
                    format!("/etc/systemd/system/{UNIT_NAME}"),
                    format!("{PKI_DIR}/server.crt"),
                    format!("{PKI_DIR}/peer.crt"),
                ],
                rolling_etcd: Some(inv.etcd_client_url(h)),
                start_delay_ms: 40 * index as u64,
            },
        );
    }
    // Once the cluster has formed, a member whose data dir is lost must not start again by
    // itself under its old member ID (it would rejoin as a voter that lost its log): the
    // bootstrap file is sealed, and only `haop etcd recover` brings such a member back.
    for h in &etcd {
        push(
            &mut steps,
            Phase::EtcdSeal,
            h.name.as_str(),
            format!("file {BOOTSTRAP_ENV_FILE} (sealed)"),
            Action::File {
                path: BOOTSTRAP_ENV_FILE.into(),
                content: crate::etcd::config::SEALED_BOOTSTRAP_ENV
                    .as_bytes()
                    .to_vec(),
                mode: 0o640,
            },
        );
    }
    if !etcd.is_empty() {
        push(
            &mut steps,
            Phase::EtcdQuorum,
            CLUSTER,
            format!("etcd quorum of {} members", etcd.len()),
            Action::EtcdQuorum {
                endpoints: inv.etcd_client_urls(),
                members: etcd.len(),
            },
        );
    }
    let masters = inv.masters();
    if inv.vip.is_some() && !masters.is_empty() {
        let password = keepalived::VrrpPassword::try_from(ctx.vrrp_password.as_str())
            .map_err(|e| format!("the state dir's VRRP password: {e}"))?;
        let script = keepalived::check_apiserver_script(inv).map_err(|e| e.to_string())?;
        let unit = keepalived::keepalived_unit();
        for h in &masters {
            let conf = keepalived::keepalived_conf(inv, h, &password).map_err(|e| e.to_string())?;
            for f in [conf, script.clone()] {
                push(
                    &mut steps,
                    Phase::Keepalived,
                    h.name.as_str(),
                    format!("file {}", f.path),
                    file(f),
                );
            }
            push(
                &mut steps,
                Phase::Keepalived,
                h.name.as_str(),
                format!("unit {}", keepalived::UNIT_NAME),
                Action::Unit {
                    name: keepalived::UNIT_NAME.into(),
                    content: unit.content.clone(),
                    data_dirs: Vec::new(),
                },
            );
            push(
                &mut steps,
                Phase::Keepalived,
                h.name.as_str(),
                format!("unit {} running", keepalived::UNIT_NAME),
                Action::Running {
                    unit: keepalived::UNIT_NAME.into(),
                    restart_on: vec![keepalived::CONF_PATH.into(), keepalived::UNIT_PATH.into()],
                    rolling_etcd: None,
                    start_delay_ms: 0,
                },
            );
        }
        if let Some(vip) = &inv.vip {
            // Checked from the first master, after its own keepalived runs.
            push(
                &mut steps,
                Phase::Keepalived,
                masters[0].name.as_str(),
                format!("VIP {} held by exactly one master", vip.address),
                Action::VipHeld {
                    vip: vip.address.to_string(),
                    masters: masters
                        .iter()
                        .map(|h| (h.name.as_str().to_string(), h.agent.as_str().to_string()))
                        .collect(),
                },
            );
        }
    }
    for h in inv
        .hosts
        .iter()
        .filter(|h| h.has_role(Role::Master) || h.has_role(Role::Worker))
    {
        let n = h.name.as_str();
        push(
            &mut steps,
            Phase::NodePrep,
            n,
            format!(
                "kernel modules (/etc/modules-load.d/{}.conf)",
                nodeprep::FILE_NAME
            ),
            Action::Modules {
                name: nodeprep::FILE_NAME.into(),
                modules: nodeprep::modules(),
            },
        );
        push(
            &mut steps,
            Phase::NodePrep,
            n,
            format!("sysctls (/etc/sysctl.d/{}.conf)", nodeprep::FILE_NAME),
            Action::Sysctls {
                name: nodeprep::FILE_NAME.into(),
                values: nodeprep::sysctls(),
            },
        );
        push(
            &mut steps,
            Phase::NodePrep,
            n,
            "swap off".into(),
            Action::SwapOff,
        );
        let containerd = nodeprep::containerd_config();
        push(
            &mut steps,
            Phase::NodePrep,
            n,
            format!("file {}", containerd.path),
            file(containerd),
        );
    }
    if inv.kubernetes.enabled {
        steps.extend(super::kubeadm::steps(inv)?);
    }
    let _ = &ctx.etcd_ca_pem;
    Ok(steps)
}

fn file(f: RenderedFile) -> Action {
    Action::File {
        path: f.path,
        content: f.content.into_bytes(),
        mode: f.mode,
    }
}

pub fn profile_name(p: Profile) -> &'static str {
    match p {
        Profile::Server => "server",
        Profile::Peer => "peer",
        Profile::Client => "client",
    }
}

/// Hosts with `role`, by name.
pub fn names_with(inv: &Inventory, role: Role) -> Vec<String> {
    inv.hosts_with(role)
        .iter()
        .map(|h| h.name.as_str().to_string())
        .collect()
}
