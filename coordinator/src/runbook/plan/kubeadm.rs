//! The kubeadm phases as steps (pure): kubeadm-config.yaml and the upload-certs configuration
//! (`render::kubeadm::upload_certs_config`, which keeps every master's etcd client key on its
//! host), `kubeadm init` on the first master, joins of the other masters (one at a time) and
//! of the workers, each with its own JoinConfiguration, the CNI manifest.
//!
//! They exist only with `kubernetes.enabled: true` and at least one master, and run after etcd,
//! keepalived and node preparation. kubeadm-config.yaml's apiVersion follows the kubeadm
//! version. When the inventory pins `kubernetes.version`, that version decides (kubeadm installs
//! its own minor or the one before, and v1beta3 is still read by the kubeadm one minor after
//! 1.30) and the step is a plain file. When it does not, both renderings are made here and the
//! step ([`KubeadmAction::Config`]) carries them; its executor asks the host's kubeadm which one
//! to write. How each step is guarded on the host (admin.conf, kubelet.conf, the CNI marker) is
//! the executor's business: `runbook::exec::kubeadm`.

use super::step::{Action, FileAction, KubeadmAction, Phase, Step, Target};
use crate::inventory::{Host, Inventory, Role};
use crate::render::kubeadm::{
    kubeadm_config, upload_certs_config, KubeadmError, CONFIG_PATH, UPLOAD_CONFIG_PATH,
};
use crate::render::RenderedFile;

/// kubeadm writes it at init on the first master; its presence means init is done.
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// The kubelet's kubeconfig, written by init and join; its presence means the node joined.
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
/// Where the CNI manifest goes on the first master.
pub const CNI_PATH: &str = "/etc/kubernetes/cni.yaml";
/// The sha256 of the manifest kubectl last applied successfully.
pub const CNI_MARKER: &str = "/etc/kubernetes/cni.yaml.applied-sha256";
/// Where kubeadm may be installed (the agent's default exec allow-list), in search order: the
/// order of `PATH`, so a binary the operator put in /usr/local/bin wins over the package's.
pub const KUBEADM_PATHS: [&str; 2] = ["/usr/local/bin/kubeadm", "/usr/bin/kubeadm"];
/// Where kubectl may be installed, in the same order.
pub const KUBECTL_PATHS: [&str; 2] = ["/usr/local/bin/kubectl", "/usr/bin/kubectl"];

/// The kubeadm steps of `inv` (empty without masters). Fails when kubeadm-config.yaml cannot be
/// rendered for the first master.
pub fn steps(inv: &Inventory) -> Result<Vec<Step>, KubeadmError> {
    let masters = inv.masters();
    let Some(first) = masters.first() else {
        return Ok(Vec::new());
    };
    let first_name = first.name.as_str().to_string();
    let cluster = inv.cluster.as_str().to_string();
    let mut steps = Vec::new();
    let mut push = |phase, host: &str, name: String, action| {
        steps.push(Step {
            phase,
            target: Target::Host(host.to_string()),
            name,
            action,
        })
    };
    push(
        Phase::KubeadmConfig,
        &first_name,
        format!("file {CONFIG_PATH}"),
        config_action(inv, first, kubeadm_config)?,
    );
    push(
        Phase::KubeadmConfig,
        &first_name,
        format!("file {UPLOAD_CONFIG_PATH}"),
        config_action(inv, first, upload_certs_config)?,
    );
    push(
        Phase::KubeadmInit,
        &first_name,
        "kubeadm init (first master)".into(),
        Action::Kubeadm(KubeadmAction::Init {
            cluster: cluster.clone(),
            config_path: CONFIG_PATH.into(),
        }),
    );
    let join = |h: &Host, control_plane: bool| {
        Action::Kubeadm(KubeadmAction::Join {
            cluster: cluster.clone(),
            control_plane,
            node_name: h.name.as_str().to_string(),
            node_ip: h.address.to_string(),
            advertise_address: control_plane.then(|| h.address.to_string()),
            bind_port: control_plane.then_some(inv.kubernetes.api_port),
            first_master: first_name.clone(),
            first_master_endpoint: first.agent.as_str().to_string(),
            config_path: UPLOAD_CONFIG_PATH.into(),
            etcd_client_certificate: control_plane
                .then(|| Box::new(super::desired::apiserver_etcd_client(h))),
        })
    };
    for h in masters.iter().skip(1) {
        push(
            Phase::KubeadmJoinMasters,
            h.name.as_str(),
            "kubeadm join (control plane)".into(),
            join(h, true),
        );
    }
    for h in inv
        .workers()
        .into_iter()
        .filter(|h| !h.has_role(Role::Master))
    {
        push(
            Phase::KubeadmJoinWorkers,
            h.name.as_str(),
            "kubeadm join (worker)".into(),
            join(h, false),
        );
    }
    if let Some(local) = &inv.kubernetes.cni_manifest {
        push(
            Phase::Cni,
            &first_name,
            format!("CNI manifest {CNI_PATH} applied"),
            Action::Kubeadm(KubeadmAction::Cni {
                local: local.clone(),
                path: CNI_PATH.into(),
            }),
        );
    }
    Ok(steps)
}

type Render =
    fn(&Inventory, &Host, crate::inventory::Version) -> Result<RenderedFile, KubeadmError>;

/// A kubeadm configuration file: a plain file for a pinned version, both renderings otherwise.
fn config_action(inv: &Inventory, first: &Host, render: Render) -> Result<Action, KubeadmError> {
    if let Some(pinned) = inv.kubernetes.version {
        let f = render(inv, first, pinned)?;
        return Ok(Action::File(FileAction::Content {
            path: f.path,
            content: f.content.into_bytes(),
            mode: f.mode,
        }));
    }
    let both = |v: &str| render(inv, first, v.parse().expect("a valid version"));
    let (b3, b4) = (both("1.30.0")?, both("1.31.0")?);
    Ok(Action::Kubeadm(KubeadmAction::Config {
        path: b3.path,
        mode: b3.mode,
        v1beta3: b3.content.into_bytes(),
        v1beta4: b4.content.into_bytes(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(extra: &str) -> Inventory {
        let text = format!(
            "cluster: k\n\
             hosts:\n\
             \x20 - {{name: etcd1, address: 10.0.0.11, roles: [etcd]}}\n\
             \x20 - {{name: etcd2, address: 10.0.0.12, roles: [etcd]}}\n\
             \x20 - {{name: etcd3, address: 10.0.0.13, roles: [etcd]}}\n\
             \x20 - {{name: m1, address: 10.0.0.21, roles: [master]}}\n\
             \x20 - {{name: m2, address: 10.0.0.22, roles: [master]}}\n\
             \x20 - {{name: w1, address: 10.0.0.31, roles: [worker]}}\n\
             vip: {{address: 10.0.0.10}}\n{extra}"
        );
        Inventory::from_yaml(&text, "test.yaml").unwrap().0
    }

    #[test]
    fn steps_in_phase_order_for_the_right_hosts() {
        let inv = inventory("kubernetes: {cni_manifest: /tmp/cni.yaml}\n");
        let s = steps(&inv).unwrap();
        let got: Vec<(Phase, &str)> = s.iter().map(|s| (s.phase, s.target.as_str())).collect();
        assert_eq!(
            got,
            [
                (Phase::KubeadmConfig, "m1"),
                (Phase::KubeadmConfig, "m1"),
                (Phase::KubeadmInit, "m1"),
                (Phase::KubeadmJoinMasters, "m2"),
                (Phase::KubeadmJoinWorkers, "w1"),
                (Phase::Cni, "m1"),
            ]
        );
        // No pinned version: both renderings, chosen on the host.
        let Action::Kubeadm(KubeadmAction::Config {
            v1beta3, v1beta4, ..
        }) = &s[0].action
        else {
            panic!("{:?}", s[0].action);
        };
        assert!(String::from_utf8_lossy(v1beta3).contains("kubeadm.k8s.io/v1beta3"));
        assert!(String::from_utf8_lossy(v1beta4).contains("kubeadm.k8s.io/v1beta4"));
        let Action::Kubeadm(KubeadmAction::Join {
            control_plane,
            advertise_address,
            bind_port,
            first_master,
            node_ip,
            config_path,
            etcd_client_certificate,
            ..
        }) = &s[3].action
        else {
            panic!("{:?}", s[3].action);
        };
        assert_eq!(node_ip, "10.0.0.22");
        assert_eq!(config_path, UPLOAD_CONFIG_PATH);
        assert_eq!(
            etcd_client_certificate
                .as_ref()
                .map(|c| c.common_name.as_str()),
            Some("kube-apiserver-etcd-client-m2")
        );
        assert!(*control_plane);
        assert_eq!(advertise_address.as_deref(), Some("10.0.0.22"));
        assert_eq!(*bind_port, Some(6443));
        assert_eq!(first_master, "m1");
        assert!(matches!(
            &s[4].action,
            Action::Kubeadm(KubeadmAction::Join {
                control_plane: false,
                advertise_address: None,
                bind_port: None,
                etcd_client_certificate: None,
                ..
            })
        ));
        // The upload-certs configuration names no etcd file that exists.
        let Action::Kubeadm(KubeadmAction::Config { path, v1beta4, .. }) = &s[1].action else {
            panic!("{:?}", s[1].action);
        };
        assert_eq!(path, UPLOAD_CONFIG_PATH);
        let text = String::from_utf8_lossy(v1beta4);
        assert!(
            text.contains(crate::render::kubeadm::NOT_UPLOADED_DIR),
            "{text}"
        );
        assert!(
            !text.contains(&format!(
                "\"{}\"",
                crate::render::kubeadm::ETCD_CLIENT_KEY_FILE
            )),
            "{text}"
        );
        assert!(Phase::KubeadmJoinMasters.serial() && !Phase::KubeadmJoinWorkers.serial());
    }

    #[test]
    fn a_pinned_version_makes_a_plain_file() {
        let inv = inventory("kubernetes: {version: 1.31.2}\n");
        let s = steps(&inv).unwrap();
        let Action::File(FileAction::Content {
            path,
            content,
            mode,
        }) = &s[0].action
        else {
            panic!("{:?}", s[0].action);
        };
        assert_eq!((path.as_str(), *mode), (CONFIG_PATH, 0o600));
        let text = String::from_utf8_lossy(content);
        assert!(text.contains("kubeadm.k8s.io/v1beta4"), "{text}");
        assert!(text.contains("kubernetesVersion: \"v1.31.2\""), "{text}");
        assert!(!s.iter().any(|s| s.phase == Phase::Cni));
        let e = steps(&inventory("kubernetes: {version: 1.21.3}\n")).unwrap_err();
        assert!(matches!(e, KubeadmError::KubeadmTooOld { .. }), "{e}");
    }
}
