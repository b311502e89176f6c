//! The pure plan: the inventory in, every step of the runbook out, each with its phase.
//!
//! [`desired`] reads nothing and asks no host. Its only input besides the inventory is what haop
//! keeps in its state dir for it ([`Context`]: the VRRP password), loaded by the caller. `haop
//! plan` checks these steps against what the hosts report, `haop apply` makes the hosts match
//! step by step (each an idempotent ensure), and `haop etcd add` and `haop certs renew` run a
//! subset of them; all of them start here, so they cannot disagree about what a host should
//! look like.

use crate::etcd::config::{
    client_crl_path, ClusterState, Member, MemberConfig, BOOTSTRAP_ENV_FILE, ENV_FILE, PKI_DIR,
    UNIT_NAME,
};
use crate::inventory::{EtcdBinary, Host, Inventory, Role};
use crate::pki::{ExpectedNames, Profile};
use crate::render::keepalived::{self, KeepalivedError};
use crate::render::kubeadm::KubeadmError;
use crate::render::{self, nodeprep, RenderedFile};

use super::step::{
    Action, CertificateSpec, FileAction, Issuer, KernelAction, Phase, Step, Target, UnitAction,
    WaitAction,
};

/// Why the runbook cannot be planned for an inventory. Validation catches these first; they
/// reach a user only with a state dir or inventory edited by hand.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the state dir's VRRP password cannot be used")]
    VrrpPassword(#[source] KeepalivedError),
    #[error("keepalived's files for {host}")]
    Keepalived {
        host: String,
        #[source]
        source: KeepalivedError,
    },
    #[error("kubeadm-config.yaml")]
    Kubeadm(#[source] KubeadmError),
}

/// What the steps need from the state dir.
#[derive(Debug, Clone)]
pub struct Context {
    /// keepalived's `auth_pass`, generated once per cluster (see `runbook::vrrp_password`).
    pub vrrp_password: String,
    /// The etcd CA's revocation list (PEM), for every member's `client-crl.pem`
    /// (see [`crate::identity::crl`]).
    pub etcd_client_crl: String,
}

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

/// kube-apiserver's client certificate for the external etcd on master `h` (kubeadm's file
/// names), its CN naming the master: each master has its own key.
pub fn apiserver_etcd_client(h: &Host) -> CertificateSpec {
    CertificateSpec {
        key_path: crate::render::kubeadm::ETCD_CLIENT_KEY_FILE.into(),
        cert_path: crate::render::kubeadm::ETCD_CLIENT_CERT_FILE.into(),
        ca_path: format!("{PKI_DIR}/ca.crt"),
        issuer: Issuer::Etcd,
        profile: Profile::Client,
        common_name: format!("kube-apiserver-etcd-client-{}", h.name.as_str()),
        names: ExpectedNames::none(),
    }
}

/// The etcd member configuration of `h` for forming the cluster.
pub fn member_config(inv: &Inventory, h: &Host) -> MemberConfig {
    let binary = match &inv.etcd.binary {
        EtcdBinary::Path(p) => p.display().to_string(),
        EtcdBinary::Upload { .. } => crate::etcd::config::uploaded_binary_path(
            inv.etcd.version.map(|v| v.to_string()).as_deref(),
        ),
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

/// Every step of the runbook for `inv`, each with its phase (apply runs them phase by phase,
/// `haop plan` lists them in this order).
pub fn desired(inv: &Inventory, ctx: &Context) -> Result<Vec<Step>, PlanError> {
    let mut steps = Vec::new();
    let push = |steps: &mut Vec<Step>, phase, host: &str, name: String, action| {
        steps.push(Step {
            phase,
            target: Target::Host(host.to_string()),
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
            Action::File(FileAction::HostsBlock {
                block: block.clone(),
            }),
        );
    }
    let etcd = inv.etcd_hosts();
    for h in &etcd {
        for (file, profile) in [("server", Profile::Server), ("peer", Profile::Peer)] {
            push(
                &mut steps,
                Phase::Certificates,
                h.name.as_str(),
                format!("certificate {PKI_DIR}/{file}.crt ({profile})"),
                Action::Certificate(CertificateSpec {
                    key_path: format!("{PKI_DIR}/{file}.key"),
                    cert_path: format!("{PKI_DIR}/{file}.crt"),
                    ca_path: format!("{PKI_DIR}/ca.crt"),
                    issuer: Issuer::Etcd,
                    profile,
                    common_name: h.name.as_str().to_string(),
                    names: names_of(h),
                }),
            );
        }
    }
    for h in inv.masters() {
        push(
            &mut steps,
            Phase::Certificates,
            h.name.as_str(),
            "certificate /etc/kubernetes/pki/apiserver-etcd-client.crt (client)".into(),
            Action::Certificate(apiserver_etcd_client(h)),
        );
    }
    if let EtcdBinary::Upload { file, sha256 } = &inv.etcd.binary {
        let path = crate::etcd::config::uploaded_binary_path(
            inv.etcd.version.map(|v| v.to_string()).as_deref(),
        );
        for h in &etcd {
            push(
                &mut steps,
                Phase::EtcdBinary,
                h.name.as_str(),
                format!("binary {path} (uploaded)"),
                Action::File(FileAction::Upload {
                    path: path.clone(),
                    local: file.clone(),
                    sha256: sha256.as_str().to_string(),
                    mode: 0o755,
                }),
            );
        }
    }
    for (index, h) in etcd.iter().enumerate() {
        let cfg = member_config(inv, h);
        push(
            &mut steps,
            Phase::EtcdConfig,
            h.name.as_str(),
            format!("file {}", client_crl_path()),
            Action::File(FileAction::Content {
                path: client_crl_path(),
                content: ctx.etcd_client_crl.clone().into_bytes(),
                mode: 0o644,
            }),
        );
        push(
            &mut steps,
            Phase::EtcdConfig,
            h.name.as_str(),
            format!("file {ENV_FILE}"),
            Action::File(FileAction::Content {
                path: ENV_FILE.into(),
                content: cfg.env_file().into_bytes(),
                mode: 0o640,
            }),
        );
        push(
            &mut steps,
            Phase::EtcdConfig,
            h.name.as_str(),
            format!("file {BOOTSTRAP_ENV_FILE} (when missing)"),
            Action::File(FileAction::IfAbsent {
                path: BOOTSTRAP_ENV_FILE.into(),
                content: cfg.bootstrap_env_file(None).into_bytes(),
                mode: 0o640,
            }),
        );
        push(
            &mut steps,
            Phase::EtcdConfig,
            h.name.as_str(),
            format!("unit {UNIT_NAME}"),
            Action::Unit(UnitAction::File {
                name: UNIT_NAME.into(),
                content: cfg.unit_file(),
                data_dirs: vec![cfg.data_dir.clone()],
            }),
        );
        push(
            &mut steps,
            Phase::EtcdStart,
            h.name.as_str(),
            format!("unit {UNIT_NAME} running"),
            Action::Unit(UnitAction::Running {
                unit: UNIT_NAME.into(),
                restart_on: vec![
                    ENV_FILE.into(),
                    super::step::unit_file_path(UNIT_NAME),
                    format!("{PKI_DIR}/server.crt"),
                    format!("{PKI_DIR}/peer.crt"),
                ],
                rolling_etcd: Some(inv.etcd_client_url(h)),
                start_delay_ms: 40 * index as u64,
            }),
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
            Action::File(FileAction::Content {
                path: BOOTSTRAP_ENV_FILE.into(),
                content: crate::etcd::config::SEALED_BOOTSTRAP_ENV
                    .as_bytes()
                    .to_vec(),
                mode: 0o640,
            }),
        );
    }
    if !etcd.is_empty() {
        steps.push(Step {
            phase: Phase::EtcdQuorum,
            target: Target::Cluster,
            name: format!("etcd quorum of {} members", etcd.len()),
            action: Action::Wait(WaitAction::EtcdQuorum {
                endpoints: inv.etcd_client_urls(),
                members: etcd.len(),
            }),
        });
    }
    let masters = inv.masters();
    if inv.vip.is_some() && !masters.is_empty() {
        let password = keepalived::VrrpPassword::try_from(ctx.vrrp_password.as_str())
            .map_err(PlanError::VrrpPassword)?;
        let keepalived_err = |h: &Host| {
            let host = h.name.as_str().to_string();
            move |source| PlanError::Keepalived { host, source }
        };
        let script = keepalived::check_apiserver_script(inv).map_err(keepalived_err(masters[0]))?;
        let unit = keepalived::keepalived_unit();
        for h in &masters {
            let conf = keepalived::keepalived_conf(inv, h, &password).map_err(keepalived_err(h))?;
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
                Action::Unit(UnitAction::File {
                    name: keepalived::UNIT_NAME.into(),
                    content: unit.content.clone(),
                    data_dirs: Vec::new(),
                }),
            );
            push(
                &mut steps,
                Phase::Keepalived,
                h.name.as_str(),
                format!("unit {} running", keepalived::UNIT_NAME),
                Action::Unit(UnitAction::Running {
                    unit: keepalived::UNIT_NAME.into(),
                    restart_on: vec![keepalived::CONF_PATH.into(), keepalived::UNIT_PATH.into()],
                    rolling_etcd: None,
                    start_delay_ms: 0,
                }),
            );
        }
        if let Some(vip) = &inv.vip {
            // Checked from the first master, after its own keepalived runs.
            push(
                &mut steps,
                Phase::Keepalived,
                masters[0].name.as_str(),
                format!("VIP {} held by exactly one master", vip.address),
                Action::Wait(WaitAction::VipHeld {
                    vip: vip.address.to_string(),
                    masters: masters
                        .iter()
                        .map(|h| (h.name.as_str().to_string(), h.agent.as_str().to_string()))
                        .collect(),
                }),
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
            Action::Kernel(KernelAction::Modules {
                name: nodeprep::FILE_NAME.into(),
                modules: nodeprep::modules(),
            }),
        );
        push(
            &mut steps,
            Phase::NodePrep,
            n,
            format!("sysctls (/etc/sysctl.d/{}.conf)", nodeprep::FILE_NAME),
            Action::Kernel(KernelAction::Sysctls {
                name: nodeprep::FILE_NAME.into(),
                values: nodeprep::sysctls(),
            }),
        );
        push(
            &mut steps,
            Phase::NodePrep,
            n,
            "swap off".into(),
            Action::Kernel(KernelAction::SwapOff),
        );
        let containerd = nodeprep::containerd_config();
        push(
            &mut steps,
            Phase::NodePrep,
            n,
            format!("file {}", containerd.path),
            file(containerd),
        );
        // The config takes effect only when containerd reads it again: restarted when it
        // changed (in this run, or after containerd started), started when it is not running.
        // Only with Kubernetes on: preflight then requires containerd on the host.
        if inv.kubernetes.enabled {
            push(
                &mut steps,
                Phase::NodePrep,
                n,
                format!("unit {} running", nodeprep::CONTAINERD_UNIT),
                Action::Unit(UnitAction::Running {
                    unit: nodeprep::CONTAINERD_UNIT.into(),
                    restart_on: vec![nodeprep::CONTAINERD_CONFIG_PATH.into()],
                    rolling_etcd: None,
                    start_delay_ms: 0,
                }),
            );
        }
    }
    if inv.kubernetes.enabled {
        steps.extend(super::kubeadm::steps(inv).map_err(PlanError::Kubeadm)?);
    }
    Ok(steps)
}

fn file(f: RenderedFile) -> Action {
    Action::File(FileAction::Content {
        path: f.path,
        content: f.content.into_bytes(),
        mode: f.mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        let text = "cluster: c\n\
                    hosts:\n\
                    \x20 - {name: etcd1, address: 10.0.0.11, roles: [etcd]}\n\
                    \x20 - {name: etcd2, address: 10.0.0.12, roles: [etcd]}\n\
                    \x20 - {name: etcd3, address: 10.0.0.13, roles: [etcd]}\n\
                    \x20 - {name: m1, address: 10.0.0.21, roles: [master, worker]}\n\
                    \x20 - {name: m2, address: 10.0.0.22, roles: [master]}\n\
                    vip: {address: 10.0.0.10}\n\
                    kubernetes: {enabled: false}\n";
        Inventory::from_yaml(text, "test.yaml").unwrap().0
    }

    fn context() -> Context {
        Context {
            vrrp_password: "abcd1234".into(),
            etcd_client_crl: "-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n".into(),
        }
    }

    #[test]
    fn phases_in_order_and_only_the_quorum_is_cluster_wide() {
        let steps = desired(&inventory(), &context()).unwrap();
        // Apply runs phase by phase; the list itself is in host order within each part.
        let count = |p: Phase| steps.iter().filter(|s| s.phase == p).count();
        assert_eq!(count(Phase::Hosts), 5);
        assert_eq!(count(Phase::Certificates), 3 * 2 + 2);
        // client-crl.pem, etcd.env, the bootstrap file, the unit; the CRL before etcd.env names it.
        assert_eq!(count(Phase::EtcdConfig), 3 * 4);
        let etcd1: Vec<&str> = steps
            .iter()
            .filter(|s| s.phase == Phase::EtcdConfig && s.target.is_host("etcd1"))
            .map(|s| s.name.as_str())
            .collect();
        assert!(etcd1[0].ends_with("client-crl.pem"), "{etcd1:?}");
        assert!(etcd1[1].ends_with("/etc/etcd.env"), "{etcd1:?}");
        assert_eq!(count(Phase::EtcdStart), 3);
        assert_eq!(count(Phase::EtcdSeal), 3);
        assert_eq!(count(Phase::KubeadmInit), 0, "kubernetes is off");
        let cluster: Vec<&Step> = steps
            .iter()
            .filter(|s| s.target == Target::Cluster)
            .collect();
        assert_eq!(cluster.len(), 1);
        assert!(matches!(
            cluster[0].action,
            Action::Wait(WaitAction::EtcdQuorum { members: 3, .. })
        ));
        // The VIP wait runs from the first master; each master gets its keepalived.
        assert!(steps.iter().any(|s| s.target.is_host("m1")
            && matches!(s.action, Action::Wait(WaitAction::VipHeld { .. }))));
        let keepalived_hosts: Vec<&str> = steps
            .iter()
            .filter(|s| match &s.action {
                Action::Unit(UnitAction::Running { unit, .. }) => unit == keepalived::UNIT_NAME,
                _ => false,
            })
            .map(|s| s.target.as_str())
            .collect();
        assert_eq!(keepalived_hosts, ["m1", "m2"]);
        // Stacked roles are prepared once.
        let swap: Vec<&str> = steps
            .iter()
            .filter(|s| s.action == Action::Kernel(KernelAction::SwapOff))
            .map(|s| s.target.as_str())
            .collect();
        assert_eq!(swap, ["m1", "m2"]);
    }

    #[test]
    fn containerd_restarts_on_its_config_only_with_kubernetes() {
        let containerd = |inv: &Inventory| -> Vec<(String, Vec<String>)> {
            let steps = desired(inv, &context()).unwrap();
            steps
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match &s.action {
                    Action::Unit(UnitAction::Running {
                        unit, restart_on, ..
                    }) if unit == nodeprep::CONTAINERD_UNIT => {
                        // Right after the host's config file step.
                        assert_eq!(
                            steps[i - 1].name,
                            format!("file {}", nodeprep::CONTAINERD_CONFIG_PATH)
                        );
                        assert_eq!(steps[i - 1].target, s.target);
                        Some((s.target.as_str().to_string(), restart_on.clone()))
                    }
                    _ => None,
                })
                .collect()
        };
        assert!(containerd(&inventory()).is_empty(), "kubernetes is off");
        let mut on = inventory();
        on.kubernetes.enabled = true;
        let config = vec![nodeprep::CONTAINERD_CONFIG_PATH.to_string()];
        assert_eq!(
            containerd(&on),
            [
                ("m1".to_string(), config.clone()),
                ("m2".to_string(), config)
            ]
        );
    }

    #[test]
    fn a_bad_vrrp_password_is_a_typed_error() {
        let ctx = Context {
            vrrp_password: "far too long for keepalived".into(),
            ..context()
        };
        let e = desired(&inventory(), &ctx).unwrap_err();
        assert!(matches!(e, PlanError::VrrpPassword(_)), "{e}");
    }
}
