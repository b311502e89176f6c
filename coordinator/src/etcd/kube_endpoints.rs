//! Keeping the Kubernetes control plane pointed at the etcd members after a membership change.
//!
//! kubeadm copies the external etcd endpoints into three places at init and join, and none of
//! them follows etcd's membership afterwards: `kubeadm-config.yaml` on the first master, the
//! `kubeadm-config` ConfigMap (what later joins and `kubeadm upgrade` read), and the
//! `--etcd-servers` flag of every master's kube-apiserver static pod. After `haop etcd add`,
//! `remove` or `replace`, [`sync`] brings all three to the inventory's etcd hosts: the file with
//! apply's own kubeadm-config steps, the ConfigMap with `kubeadm init phase upload-config
//! kubeadm` (once init has run), and each manifest by rewriting its one `--etcd-servers=` line
//! (the kubelet restarts the API server when its manifest changes). A removal syncs before the
//! member goes, so no API server is left talking to a removed member; an addition syncs once
//! the new member is a voter.
//!
//! The masters go one at a time, in inventory order, as upstream kubeadm changes control-plane
//! nodes: after a master's manifest is rewritten, the sync waits until its API server answers
//! `/readyz` again ([`super::kube_readyz`]) before it touches the next one, so at most one API
//! server restarts at a time. A master that does not come back stops the sync with an error
//! naming it; the masters after it keep their manifests (and the old members, which are still
//! there: a removal happens only after the sync). The same command run again continues.
//!
//! The ConfigMap is uploaded whenever the file differs from what was last uploaded
//! successfully: [`UPLOADED_MARKER`] on the first master holds that file's sha256 and is
//! written only after kubeadm succeeded, so an upload that failed is tried again by the next
//! sync instead of being forgotten because the file itself no longer changes.

use std::net::SocketAddr;
use std::time::Duration;

use crate::agent::{AgentError, HostAgent};
use crate::inventory::Inventory;
use crate::render::kubeadm::CONFIG_PATH;
use crate::runbook::exec::command::{find_program, run_program};
use crate::runbook::exec::{self, StepError};
use crate::runbook::plan::kubeadm::{ADMIN_CONF, KUBEADM_PATHS};
use crate::runbook::{Phase, Runbook, RunbookError};

/// The sha256 of the kubeadm-config.yaml last uploaded to the kubeadm-config ConfigMap.
pub const UPLOADED_MARKER: &str = "/etc/kubernetes/kubeadm-config.yaml.uploaded-sha256";

/// Where kubeadm writes the API server's static pod manifest on a master.
pub const APISERVER_MANIFEST: &str = "/etc/kubernetes/manifests/kube-apiserver.yaml";

/// Errors of the sync; each names the master.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    #[error("{host}: {what}")]
    Host {
        host: String,
        what: String,
        #[source]
        source: StepError,
    },
    #[error(
        "{host}: {APISERVER_MANIFEST} has no --etcd-servers argument; set it to the etcd \
         endpoints by hand"
    )]
    NoEtcdServers { host: String },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    NotReady(#[from] super::kube_readyz::ReadyError),
}

/// `manifest` with its `--etcd-servers=` argument set to `endpoints`; `None` when it has no
/// such argument (not a kube-apiserver manifest of kubeadm's).
pub fn set_etcd_servers(manifest: &str, endpoints: &[String]) -> Option<String> {
    set_arg(manifest, "etcd-servers", &endpoints.join(","))
}

/// The container argument `--FLAG=VALUE` of a static pod manifest (kubeadm writes one per
/// line, `- --flag=value`, sometimes quoted) and where it is.
fn args<'a>(manifest: &'a str, flag: &str) -> impl Iterator<Item = (usize, &'a str, bool)> + 'a {
    let prefix = format!("--{flag}=");
    manifest
        .split_inclusive('\n')
        .enumerate()
        .filter_map(move |(i, line)| {
            let body = line.trim_end_matches(['\n', '\r']).trim_start();
            let arg = body.strip_prefix("- ")?.trim_start();
            let quoted = arg.starts_with('"');
            let arg = arg.trim_start_matches('"').trim_end_matches('"');
            arg.strip_prefix(prefix.as_str()).map(|v| (i, v, quoted))
        })
}

/// The value of the manifest's `--FLAG=` argument, if it has one.
pub fn get_arg(manifest: &str, flag: &str) -> Option<String> {
    args(manifest, flag).next().map(|(_, v, _)| v.to_string())
}

/// `manifest` with its `--FLAG=` argument set to `value`; `None` when it has no such argument.
pub fn set_arg(manifest: &str, flag: &str, value: &str) -> Option<String> {
    let lines: Vec<usize> = args(manifest, flag).map(|(i, _, _)| i).collect();
    if lines.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(manifest.len());
    for (i, line) in manifest.split_inclusive('\n').enumerate() {
        if !lines.contains(&i) {
            out.push_str(line);
            continue;
        }
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        let lead = body.len() - body.trim_start().len();
        let quoted = body[lead..]
            .strip_prefix("- ")
            .is_some_and(|a| a.trim_start().starts_with('"'));
        let arg = if quoted {
            format!("\"--{flag}={value}\"")
        } else {
            format!("--{flag}={value}")
        };
        out.push_str(&format!("{}- {arg}{ending}", &body[..lead]));
    }
    Some(out)
}

/// Brings the masters' kubeadm etcd endpoints to the etcd hosts of `inventory`, one master at a
/// time, each API server given `ready_within` to answer `/readyz` again after its manifest
/// changed; answers one line per change made (empty when Kubernetes is off or everything
/// already matched).
pub async fn sync(
    state_dir: &std::path::Path,
    inventory: &Inventory,
    ready_within: Duration,
) -> Result<Vec<String>, EndpointsError> {
    if !inventory.kubernetes.enabled || inventory.masters().is_empty() {
        return Ok(Vec::new());
    }
    let endpoints = inventory.etcd_client_urls();
    let rb = Runbook::load(state_dir, inventory.clone())?;
    let mut said = Vec::new();
    let host_err = |host: &str, what: &str| {
        let (host, what) = (host.to_string(), what.to_string());
        move |source| EndpointsError::Host { host, what, source }
    };
    for master in inventory.masters() {
        let name = master.name.as_str();
        let c = HostAgent::connect(
            &rb.ctx.trust,
            name,
            master.agent.as_str(),
            Duration::from_secs(5),
        )
        .await?;
        // The first master's kubeadm configuration files, and the ConfigMap made from them.
        let config_steps: Vec<_> = rb
            .steps
            .iter()
            .filter(|s| s.phase == Phase::KubeadmConfig && s.target.is_host(name))
            .collect();
        for step in &config_steps {
            // A pinned Kubernetes version makes these steps plain files: any family's step runs.
            let changed = exec::run(step, Some(&c), &rb.ctx, &Default::default())
                .await
                .map_err(host_err(name, "writing the kubeadm configuration"))?;
            if changed {
                said.push(format!(
                    "{name}: {} lists {}",
                    step.name.trim_start_matches("file "),
                    endpoints.join(",")
                ));
            }
        }
        if !config_steps.is_empty() {
            let file = c
                .read_text(CONFIG_PATH)
                .await
                .map_err(StepError::from)
                .map_err(host_err(name, "reading kubeadm-config.yaml"))?
                .map(|(t, _)| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(t.as_bytes())));
            let uploaded = c
                .read_text(UPLOADED_MARKER)
                .await
                .map_err(StepError::from)
                .map_err(host_err(name, "reading the upload marker"))?
                .map(|(t, _)| t.trim().to_string());
            if file.is_some()
                && file != uploaded
                && c.exists(ADMIN_CONF)
                    .await
                    .map_err(StepError::from)
                    .map_err(host_err(name, "checking for admin.conf"))?
            {
                let program = find_program(&c, &KUBEADM_PATHS, "install kubeadm")
                    .await
                    .map_err(StepError::from)
                    .map_err(host_err(name, "finding kubeadm"))?;
                run_program(
                    &c,
                    &program,
                    [
                        "init",
                        "phase",
                        "upload-config",
                        "kubeadm",
                        "--config",
                        CONFIG_PATH,
                    ]
                    .map(String::from)
                    .to_vec(),
                    120,
                    "kubeadm init phase upload-config kubeadm",
                    "run it on the first master once the API server answers",
                )
                .await
                .map_err(StepError::from)
                .map_err(host_err(name, "uploading the kubeadm ClusterConfiguration"))?;
                c.write_file(
                    UPLOADED_MARKER,
                    format!("{}\n", file.unwrap_or_default()),
                    0o644,
                )
                .await
                .map_err(StepError::from)
                .map_err(host_err(name, "writing the upload marker"))?;
                said.push(format!("{name}: the kubeadm-config ConfigMap uploaded"));
            }
        }
        // The API server's static pod.
        if !c
            .exists(APISERVER_MANIFEST)
            .await
            .map_err(StepError::from)
            .map_err(host_err(name, "checking the kube-apiserver manifest"))?
        {
            continue;
        }
        let Some((text, mode)) = c
            .read_text(APISERVER_MANIFEST)
            .await
            .map_err(StepError::from)
            .map_err(host_err(name, "reading the kube-apiserver manifest"))?
        else {
            continue;
        };
        let Some(wanted) = set_etcd_servers(&text, &endpoints) else {
            return Err(EndpointsError::NoEtcdServers {
                host: name.to_string(),
            });
        };
        if wanted != text {
            c.write_file(
                APISERVER_MANIFEST,
                wanted,
                if mode == 0 { 0o600 } else { mode },
            )
            .await
            .map_err(StepError::from)
            .map_err(host_err(name, "writing the kube-apiserver manifest"))?;
            // One API server down at a time: this one answers again before the next master.
            let addr = SocketAddr::new(master.address, inventory.kubernetes.api_port);
            let took =
                super::kube_readyz::after_manifest_change(&c, name, addr, ready_within).await?;
            said.push(format!(
                "{name}: kube-apiserver --etcd-servers={} (ready again after {:.1} s)",
                endpoints.join(","),
                took.as_secs_f64()
            ));
        }
    }
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --advertise-address=10.0.0.21\n    - --etcd-cafile=/etc/kubernetes/pki/etcd/ca.pem\n    - --etcd-servers=https://10.0.0.11:2379,https://10.0.0.12:2379\n    - --secure-port=6443\n    image: registry.k8s.io/kube-apiserver:v1.30.2\n";

    #[test]
    fn only_the_etcd_servers_line_changes() {
        let eps = vec![
            "https://10.0.0.12:2379".to_string(),
            "https://10.0.0.14:2379".into(),
        ];
        let out = set_etcd_servers(MANIFEST, &eps).unwrap();
        assert_eq!(
            out,
            MANIFEST.replace(
                "https://10.0.0.11:2379,https://10.0.0.12:2379",
                "https://10.0.0.12:2379,https://10.0.0.14:2379"
            )
        );
        assert_eq!(set_etcd_servers(&out, &eps).unwrap(), out, "idempotent");
    }

    #[test]
    fn quoted_arguments_stay_quoted_and_other_manifests_are_refused() {
        let m = "    - \"--etcd-servers=https://a:2379\"\r\n    - --x=1\r\n";
        let out = set_etcd_servers(m, &["https://b:2379".into()]).unwrap();
        assert_eq!(
            out,
            "    - \"--etcd-servers=https://b:2379\"\r\n    - --x=1\r\n"
        );
        assert_eq!(
            set_etcd_servers("kind: Pod\n    - --etcd-cafile=x\n", &[]),
            None
        );
    }
}
