//! The runbook as data: phases, steps and what each step wants a host to look like.
//!
//! [`desired`] is a pure function from the inventory (and the few things haop keeps in its
//! state dir: the etcd CA, the VRRP password) to every step, in phase order. It reads nothing
//! and asks no host: `haop plan` compares these steps with what the hosts report, and
//! `haop apply` makes the hosts match, step by step, each an idempotent ensure.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::etcd_config::{ClusterState, Member, MemberConfig, ENV_FILE, PKI_DIR, UNIT_NAME};
use crate::inventory::{EtcdBinary, Host, Inventory, Role};
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
    Keepalived,
    NodePrep,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Hosts,
        Phase::Certificates,
        Phase::EtcdBinary,
        Phase::EtcdConfig,
        Phase::EtcdStart,
        Phase::EtcdQuorum,
        Phase::Keepalived,
        Phase::NodePrep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Hosts => "hosts",
            Phase::Certificates => "certificates",
            Phase::EtcdBinary => "etcd-binary",
            Phase::EtcdConfig => "etcd-config",
            Phase::EtcdStart => "etcd-start",
            Phase::EtcdQuorum => "etcd-quorum",
            Phase::Keepalived => "keepalived",
            Phase::NodePrep => "node-prep",
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
    /// The unit runs and is enabled. Restarted when a file in `restart_on` changed in this run.
    Running {
        unit: String,
        restart_on: Vec<String>,
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
    /// Cluster-wide: the etcd members elect a leader and answer through the API.
    EtcdQuorum {
        endpoints: Vec<String>,
        members: usize,
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

/// The /etc/hosts block for every host of the inventory.
pub fn hosts_block(inv: &Inventory) -> String {
    let mut out = format!("# BEGIN haop {}\n", inv.cluster.as_str());
    for h in &inv.hosts {
        match &h.fqdn {
            Some(f) => out.push_str(&format!(
                "{} {} {}\n",
                h.address,
                f.as_str(),
                h.name.as_str()
            )),
            None => out.push_str(&format!("{} {}\n", h.address, h.name.as_str())),
        }
    }
    out.push_str(&format!("# END haop {}\n", inv.cluster.as_str()));
    out
}

/// Replaces haop's block of `cluster` in an /etc/hosts text, or appends it; other lines stay.
pub fn merge_hosts_block(existing: &str, cluster: &str, block: &str) -> String {
    let begin = format!("# BEGIN haop {cluster}");
    let end = format!("# END haop {cluster}");
    let mut out = String::new();
    let mut inside = false;
    let mut replaced = false;
    for line in existing.split_inclusive('\n') {
        let t = line.trim_end();
        if t == begin {
            inside = true;
            if !replaced {
                out.push_str(block);
                replaced = true;
            }
            continue;
        }
        if inside {
            if t == end {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(block);
    }
    out
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

/// Every step of the runbook for `inv`, in phase order (host order within a phase).
pub fn desired(inv: &Inventory, ctx: &Context) -> Vec<Step> {
    let mut steps = Vec::new();
    let push = |steps: &mut Vec<Step>, phase, host: &str, name: String, action| {
        steps.push(Step {
            phase,
            host: host.to_string(),
            name,
            action,
        })
    };
    let block = hosts_block(inv);
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
    for h in &etcd {
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
    let _ = &ctx.etcd_ca_pem;
    steps
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_block_merges_idempotently_and_keeps_other_lines() {
        let block = "# BEGIN haop c\n10.0.0.1 etcd1\n# END haop c\n";
        let base = "127.0.0.1 localhost\n::1 localhost\n";
        let once = merge_hosts_block(base, "c", block);
        assert_eq!(once, format!("{base}{block}"));
        assert_eq!(merge_hosts_block(&once, "c", block), once);
        let newer = "# BEGIN haop c\n10.0.0.2 etcd2\n# END haop c\n";
        let updated = merge_hosts_block(&once, "c", newer);
        assert_eq!(updated, format!("{base}{newer}"));
        // Another cluster's block is left alone.
        let other = merge_hosts_block(&updated, "d", "# BEGIN haop d\n# END haop d\n");
        assert!(other.contains("10.0.0.2 etcd2") && other.contains("# BEGIN haop d"));
        // A file without a final newline.
        assert_eq!(
            merge_hosts_block("127.0.0.1 localhost", "c", block),
            format!("127.0.0.1 localhost\n{block}")
        );
    }
}
