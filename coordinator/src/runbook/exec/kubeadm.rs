//! The kubeadm family: kubeadm-config.yaml chosen for the host's kubeadm, `kubeadm init` on the
//! first master, the joins, and the CNI manifest.
//!
//! Each step is guarded the way kubeadm itself marks a node as done, so a second apply runs no
//! kubeadm command:
//!
//! * config: when the inventory pins no version, the host's kubeadm (`kubeadm version -o
//!   short`, read-only) picks which of the plan's two renderings is written (mode 0600), with
//!   `kubernetesVersion` set to that version (kubeadm would otherwise ask dl.k8s.io for
//!   `stable-1`).
//! * init: skipped when `/etc/kubernetes/admin.conf` exists on the first master. Otherwise
//!   `kubeadm init --config ...`, without `--upload-certs` (that would upload the etcd client
//!   key named in kubeadm-config.yaml; see `render::kubeadm`); its output is parsed and the
//!   join info kept in the state dir ([`super::join_info`]), which uploads the certificates
//!   for control-plane joins with the configuration that leaves the etcd files out.
//! * join (masters one at a time, then workers in parallel): skipped when
//!   `/etc/kubernetes/kubelet.conf` exists on the host; the token and certificate key come from
//!   the state dir or are made anew on the first master, and go into the node's own
//!   JoinConfiguration (node name, node-ip, CRI socket, advertise address), written 0600 for
//!   `kubeadm join --config` and removed afterwards, whether the join worked or not. After a
//!   control-plane join the master's etcd client certificate is checked in place and issued
//!   again (a key made on the host) if it is not the master's own: the one place this family
//!   uses another, because a join that wrote another master's key must not stay so.
//! * CNI: the manifest uploaded and `kubectl apply`ed with admin.conf; a marker with its sha256,
//!   written after kubectl succeeded, makes it run again only when the manifest changes (or
//!   when the last kubectl failed).

use std::path::{Path, PathBuf};

use super::change::{file_change, Change};
use super::command::{find_program, run_program, CommandError};
use super::context::RunContext;
use super::join_info::{self, JoinError, Stored};
use crate::agent::{AgentError, HostAgent};
use crate::inventory::Version;
use crate::render::kubeadm::{
    api_version_for, join_configuration, parse_kubeadm_init_output, with_kubernetes_version,
    JoinNode, ParseError, JOIN_CONFIG_PATH, V1BETA3,
};
use crate::runbook::plan::kubeadm::{
    ADMIN_CONF, CNI_MARKER, KUBEADM_PATHS, KUBECTL_PATHS, KUBELET_CONF,
};
use crate::runbook::plan::KubeadmAction;

/// Errors of the kubeadm family.
#[derive(Debug, thiserror::Error)]
pub enum KubeadmStepError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("after kubeadm join on {host}, its etcd client certificate")]
    OwnCertificate {
        host: String,
        #[source]
        source: Box<super::certificates::CertificateError>,
    },
    #[error("kubeadm version -o short printed {printed:?}, not a version ({reason})")]
    NotAVersion { printed: String, reason: String },
    #[error("the host's kubeadm")]
    Unsupported(#[source] crate::render::kubeadm::KubeadmError),
    #[error(
        "kubeadm init succeeded on {host} but haop cannot read its join commands; run haop apply \
         again: the joins will make a new token on {host}"
    )]
    InitOutput {
        host: String,
        #[source]
        source: ParseError,
    },
    #[error("cannot read the CNI manifest {} (kubernetes.cni_manifest)", .path.display())]
    CniManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `action` would change on the host behind `c`.
pub async fn check(
    action: &KubeadmAction,
    c: &HostAgent,
    ctx: &RunContext,
) -> Result<Change, KubeadmStepError> {
    match action {
        KubeadmAction::Config {
            path,
            v1beta3,
            v1beta4,
            mode,
        } => {
            let wanted = pick_config(c, v1beta3, v1beta4).await?;
            let current = c.read_text(path).await?;
            Ok(file_change(path, current, &wanted, *mode))
        }
        KubeadmAction::Init { config_path, .. } => Ok(if c.exists(ADMIN_CONF).await? {
            Change::Unchanged
        } else {
            Change::Run {
                detail: format!("kubeadm init --config {config_path}"),
            }
        }),
        KubeadmAction::Join {
            control_plane,
            cluster,
            ..
        } => Ok(if c.exists(KUBELET_CONF).await? {
            Change::Unchanged
        } else {
            let have = match join_info::load_join(&ctx.state_dir, cluster) {
                Ok(Some(_)) => "with the join info in the state dir",
                _ => "with a new token from the first master",
            };
            Change::Run {
                detail: format!(
                    "kubeadm join as a {} {have}",
                    if *control_plane {
                        "control-plane node"
                    } else {
                        "worker"
                    }
                ),
            }
        }),
        KubeadmAction::Cni { local, path } => {
            let (_, sha) = read_manifest(local)?;
            Ok(match c.read_text(CNI_MARKER).await? {
                Some((s, _)) if s.trim() == sha => Change::Unchanged,
                Some(_) => Change::Run {
                    detail: format!("upload {path} (changed) and kubectl apply it"),
                },
                None => Change::Run {
                    detail: format!("upload {path} and kubectl apply it"),
                },
            })
        }
    }
}

/// Makes the host match `action`; answers whether anything changed.
pub async fn run(
    action: &KubeadmAction,
    c: &HostAgent,
    ctx: &RunContext,
) -> Result<bool, KubeadmStepError> {
    let host = c.host();
    match action {
        KubeadmAction::Config {
            path,
            v1beta3,
            v1beta4,
            mode,
        } => {
            let wanted = pick_config(c, v1beta3, v1beta4).await?;
            Ok(c.write_file(path, wanted, *mode).await?)
        }
        KubeadmAction::Init {
            cluster,
            config_path,
        } => {
            if c.exists(ADMIN_CONF).await? {
                return Ok(false);
            }
            let kubeadm = find_program(c, &KUBEADM_PATHS, "install kubeadm").await?;
            let out = run_program(
                c,
                &kubeadm,
                vec!["init".into(), "--config".into(), config_path.clone()],
                900,
                "kubeadm init",
                &format!(
                    "fix the cause (see kubeadm's messages; journalctl -u kubelet on {host}), \
                     run `kubeadm reset -f` on {host} if init left files behind, then run haop \
                     apply again"
                ),
            )
            .await?;
            let info =
                parse_kubeadm_init_output(&out).map_err(|source| KubeadmStepError::InitOutput {
                    host: host.to_string(),
                    source,
                })?;
            join_info::save_join(
                &ctx.state_dir,
                cluster,
                &Stored::from_init(&info, join_info::now()),
            )?;
            Ok(true)
        }
        KubeadmAction::Join {
            cluster,
            control_plane,
            node_name,
            node_ip,
            advertise_address,
            bind_port,
            first_master,
            first_master_endpoint,
            config_path,
            etcd_client_certificate,
        } => {
            if c.exists(KUBELET_CONF).await? {
                return Ok(false);
            }
            let kubeadm = find_program(c, &KUBEADM_PATHS, "install kubeadm").await?;
            let api_version = api_version_for(kubeadm_version(c).await?)
                .map_err(KubeadmStepError::Unsupported)?;
            let cmd = join_info::join_command(
                ctx,
                cluster,
                *control_plane,
                first_master,
                first_master_endpoint,
                config_path,
            )
            .await?;
            let node = JoinNode {
                name: node_name.clone(),
                node_ip: node_ip.clone(),
                control_plane: advertise_address
                    .clone()
                    .zip(*bind_port)
                    .filter(|_| *control_plane),
            };
            c.write_file(
                JOIN_CONFIG_PATH,
                join_configuration(api_version, &node, &cmd),
                0o600,
            )
            .await?;
            let kind = if *control_plane {
                "control-plane"
            } else {
                "worker"
            };
            let joined = run_program(
                c,
                &kubeadm,
                vec!["join".into(), "--config".into(), JOIN_CONFIG_PATH.into()],
                900,
                &format!("kubeadm join ({kind})"),
                &format!(
                    "fix the cause (see kubeadm's messages; journalctl -u kubelet on {host}), \
                     run `kubeadm reset -f` on {host} if the join left files behind, then run \
                     haop apply again"
                ),
            )
            .await;
            // The file holds the token and the certificate key: gone either way.
            let removed = c.remove_file(JOIN_CONFIG_PATH).await;
            joined?;
            removed?;
            if let Some(spec) = etcd_client_certificate {
                super::certificates::run(spec, c, ctx)
                    .await
                    .map_err(|source| KubeadmStepError::OwnCertificate {
                        host: host.to_string(),
                        source: Box::new(source),
                    })?;
            }
            Ok(true)
        }
        KubeadmAction::Cni { local, path } => {
            let (data, sha) = read_manifest(local)?;
            if let Some((s, _)) = c.read_text(CNI_MARKER).await? {
                if s.trim() == sha {
                    return Ok(false);
                }
            }
            c.write_file(path, data, 0o644).await?;
            let kubectl = find_program(c, &KUBECTL_PATHS, "install kubectl").await?;
            run_program(
                c,
                &kubectl,
                vec![
                    "--kubeconfig".into(),
                    ADMIN_CONF.into(),
                    "apply".into(),
                    "-f".into(),
                    path.clone(),
                ],
                300,
                &format!("kubectl apply -f {path}"),
                &format!(
                    "check the manifest {} and the API server on {host}, then run haop apply \
                     again",
                    local.display()
                ),
            )
            .await?;
            c.write_file(CNI_MARKER, format!("{sha}\n"), 0o644).await?;
            Ok(true)
        }
    }
}

/// The version of the kubeadm installed on the host (`kubeadm version -o short`).
async fn kubeadm_version(c: &HostAgent) -> Result<Version, KubeadmStepError> {
    let kubeadm = find_program(c, &KUBEADM_PATHS, "install kubeadm").await?;
    let out = run_program(
        c,
        &kubeadm,
        vec!["version".into(), "-o".into(), "short".into()],
        30,
        "kubeadm version -o short",
        "check the kubeadm binary on the host",
    )
    .await?;
    let text = out.trim();
    text.parse()
        .map_err(|reason| KubeadmStepError::NotAVersion {
            printed: text.to_string(),
            reason,
        })
}

/// The rendering of a [`KubeadmAction::Config`] for the host's kubeadm, its version pinned.
async fn pick_config(
    c: &HostAgent,
    v1beta3: &[u8],
    v1beta4: &[u8],
) -> Result<String, KubeadmStepError> {
    let v = kubeadm_version(c).await?;
    let text = match api_version_for(v).map_err(KubeadmStepError::Unsupported)? {
        V1BETA3 => v1beta3,
        _ => v1beta4,
    };
    Ok(with_kubernetes_version(&String::from_utf8_lossy(text), v))
}

/// The operator's CNI manifest and its sha256.
fn read_manifest(local: &Path) -> Result<(Vec<u8>, String), KubeadmStepError> {
    let data = std::fs::read(local).map_err(|source| KubeadmStepError::CniManifest {
        path: local.to_path_buf(),
        source,
    })?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    Ok((data, sha))
}
