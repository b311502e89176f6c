//! The kubeadm phases: kubeadm-config.yaml, `kubeadm init` on the first master, joins of the
//! other masters and of the workers with the token it printed, and the CNI manifest.
//!
//! They run only with `kubernetes.enabled: true`, after etcd, keepalived and node preparation,
//! each guarded the way kubeadm itself marks a node as done, so a second apply runs no kubeadm
//! command:
//!
//! * `kubeadm-config`: the file of [`crate::render::kubeadm::kubeadm_config`] on the first
//!   master (mode 0600). Its apiVersion follows the kubeadm version. When the inventory pins
//!   `kubernetes.version`, that version decides (kubeadm installs its own minor or the one
//!   before, and v1beta3 is still read by the kubeadm one minor after 1.30) and the step is a
//!   plain file, fully pure. When it does not, both renderings are made here (pure) and the
//!   step asks the host's kubeadm (`kubeadm version -o short`, read-only) which one to write.
//! * `kubeadm-init`: skipped when `/etc/kubernetes/admin.conf` exists on the first master.
//!   Otherwise `kubeadm init --config ... --upload-certs`; its output is parsed
//!   ([`crate::render::kubeadm::parse_kubeadm_init_output`]) and the join info kept in
//!   `<state>/secrets/<cluster>.join.json` (mode 0600: a bootstrap token and the certificate
//!   key).
//! * `kubeadm-join-masters` (one host at a time), then `kubeadm-join-workers` (in parallel):
//!   skipped when `/etc/kubernetes/kubelet.conf` exists on the host. The join info is read
//!   from the state dir; when it is missing (init ran from another state dir, or its output
//!   could not be read) or expired (kubeadm's tokens live 24 h, uploaded certificates 2 h), it
//!   is made anew on the first master: `kubeadm token create --print-join-command`, and for a
//!   control-plane join `kubeadm init phase upload-certs --upload-certs --config ...`.
//! * `cni`: the manifest uploaded to `/etc/kubernetes/cni.yaml` and `kubectl apply`ed with
//!   admin.conf; a marker with its sha256, written after kubectl succeeded, makes it run again
//!   only when the manifest changes (or when the last kubectl failed).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use haop_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::actions::{Change, StepError};
use super::steps::{Action, Phase, Step};
use crate::agent::HostAgent;
use crate::inventory::{Host, Inventory, Role, Version};
use crate::render::kubeadm::{
    api_version_for, kubeadm_config, parse_kubeadm_init_output, JoinCommand, JoinInfo, CONFIG_PATH,
    V1BETA3,
};

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

/// kubeadm's bootstrap tokens live 24 h; haop makes a new one after 23 h.
const TOKEN_MAX_AGE_SECS: u64 = 23 * 3600;
/// kubeadm deletes uploaded certificates after 2 h; haop uploads them again after 100 min.
const CERT_KEY_MAX_AGE_SECS: u64 = 100 * 60;

/// The kubeadm steps of `inv` (empty without masters).
pub fn steps(inv: &Inventory) -> Result<Vec<Step>, String> {
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
            host: host.to_string(),
            name,
            action,
        })
    };
    push(
        Phase::KubeadmConfig,
        &first_name,
        format!("file {CONFIG_PATH}"),
        config_action(inv, first)?,
    );
    push(
        Phase::KubeadmInit,
        &first_name,
        "kubeadm init (first master)".into(),
        Action::KubeadmInit {
            cluster: cluster.clone(),
            config_path: CONFIG_PATH.into(),
        },
    );
    let join = |h: &Host, control_plane: bool| Action::KubeadmJoin {
        cluster: cluster.clone(),
        control_plane,
        node_name: h.name.as_str().to_string(),
        advertise_address: control_plane.then(|| h.address.to_string()),
        bind_port: control_plane.then_some(inv.kubernetes.api_port),
        first_master: first_name.clone(),
        first_master_endpoint: first.agent.as_str().to_string(),
        config_path: CONFIG_PATH.into(),
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
            Action::Cni {
                local: local.clone(),
                path: CNI_PATH.into(),
            },
        );
    }
    Ok(steps)
}

fn config_action(inv: &Inventory, first: &Host) -> Result<Action, String> {
    let render = |v: &str| {
        let v: Version = v.parse().expect("a valid version");
        kubeadm_config(inv, first, v).map_err(|e| e.to_string())
    };
    if let Some(pinned) = inv.kubernetes.version {
        let f = kubeadm_config(inv, first, pinned).map_err(|e| e.to_string())?;
        return Ok(Action::File {
            path: f.path,
            content: f.content.into_bytes(),
            mode: f.mode,
        });
    }
    let (b3, b4) = (render("1.30.0")?, render("1.31.0")?);
    Ok(Action::KubeadmConfig {
        path: b3.path,
        mode: b3.mode,
        v1beta3: b3.content.into_bytes(),
        v1beta4: b4.content.into_bytes(),
    })
}

// --- talking to the host --------------------------------------------------------------------

pub(crate) async fn exists(c: &HostAgent, path: &str) -> Result<bool, StepError> {
    Ok(c.exists(path).await?)
}

/// The first of `candidates` installed on the host.
pub(crate) async fn find_program(
    c: &HostAgent,
    candidates: &[&str],
    install: &str,
) -> Result<String, StepError> {
    for p in candidates {
        if exists(c, p).await? {
            return Ok((*p).to_string());
        }
    }
    Err(StepError::Failed(format!(
        "none of {} is installed: {install}",
        candidates.join(", ")
    )))
}

/// Runs `program args` through the agent; answers stdout, or an error with the exit code and
/// the end of stderr. `what` names the command in the error (never with its secret arguments).
pub(crate) async fn exec(
    c: &HostAgent,
    program: &str,
    args: Vec<String>,
    timeout_seconds: u32,
    what: &str,
    hint: &str,
) -> Result<String, StepError> {
    let r = c
        .exec(pb::ExecRequest {
            program: program.to_string(),
            args,
            timeout_seconds,
            ..Default::default()
        })
        .await?;
    if r.exit_code == 0 && !r.timed_out {
        return Ok(String::from_utf8_lossy(&r.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&r.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let how = if r.timed_out {
        format!("timed out after {timeout_seconds} s")
    } else {
        format!("exited with code {}", r.exit_code)
    };
    Err(StepError::Failed(format!(
        "{what} {how}: {}; {hint}",
        if tail.is_empty() {
            "no error output".to_string()
        } else {
            tail.join(" | ")
        }
    )))
}

/// The version of the kubeadm installed on the host (`kubeadm version -o short`).
async fn kubeadm_version(c: &HostAgent) -> Result<Version, StepError> {
    let kubeadm = find_program(c, &KUBEADM_PATHS, "install kubeadm").await?;
    let out = exec(
        c,
        &kubeadm,
        vec!["version".into(), "-o".into(), "short".into()],
        30,
        "kubeadm version -o short",
        "check the kubeadm binary on the host",
    )
    .await?;
    let text = out.trim();
    text.parse().map_err(|e| {
        StepError::Failed(format!(
            "kubeadm version -o short printed {text:?}, not a version ({e})"
        ))
    })
}

/// The rendering of a [`Action::KubeadmConfig`] for the host's kubeadm.
async fn pick_config<'a>(
    c: &HostAgent,
    v1beta3: &'a [u8],
    v1beta4: &'a [u8],
) -> Result<&'a [u8], StepError> {
    let v = kubeadm_version(c).await?;
    match api_version_for(v) {
        Ok(V1BETA3) => Ok(v1beta3),
        Ok(_) => Ok(v1beta4),
        Err(e) => Err(StepError::Failed(e.to_string())),
    }
}

// --- check and run ----------------------------------------------------------------------------

/// What a kubeadm step would change on the host behind `c`.
pub async fn check(action: &Action, c: &HostAgent, state_dir: &Path) -> Result<Change, StepError> {
    match action {
        Action::KubeadmConfig {
            path,
            v1beta3,
            v1beta4,
            mode,
        } => {
            let wanted = pick_config(c, v1beta3, v1beta4).await?;
            let current = c.read_text(path).await?;
            Ok(super::actions::file_change(
                path,
                current,
                &String::from_utf8_lossy(wanted),
                *mode,
            ))
        }
        Action::KubeadmInit { config_path, .. } => Ok(if exists(c, ADMIN_CONF).await? {
            Change::Unchanged
        } else {
            Change::Run {
                detail: format!("kubeadm init --config {config_path} --upload-certs"),
            }
        }),
        Action::KubeadmJoin {
            control_plane,
            cluster,
            ..
        } => Ok(if exists(c, KUBELET_CONF).await? {
            Change::Unchanged
        } else {
            let have = match load_join(state_dir, cluster) {
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
        Action::Cni { local, path } => {
            let sha = local_sha256(local)?;
            let applied = c.read_text(CNI_MARKER).await?;
            Ok(match applied {
                Some((s, _)) if s.trim() == sha => Change::Unchanged,
                Some(_) => Change::Run {
                    detail: format!("upload {path} (changed) and kubectl apply it"),
                },
                None => Change::Run {
                    detail: format!("upload {path} and kubectl apply it"),
                },
            })
        }
        _ => Err(StepError::Failed("not a kubeadm step".into())),
    }
}

/// Makes the host match a kubeadm step; answers whether anything changed.
pub async fn run(
    action: &Action,
    host: &str,
    c: &HostAgent,
    ctx: &super::RunContext,
) -> Result<bool, StepError> {
    match action {
        Action::KubeadmConfig {
            path,
            v1beta3,
            v1beta4,
            mode,
        } => {
            let wanted = pick_config(c, v1beta3, v1beta4).await?;
            Ok(c.write_file(path, wanted, *mode).await?)
        }
        Action::KubeadmInit {
            cluster,
            config_path,
        } => {
            if exists(c, ADMIN_CONF).await? {
                return Ok(false);
            }
            let kubeadm = find_program(c, &KUBEADM_PATHS, "install kubeadm").await?;
            let out = exec(
                c,
                &kubeadm,
                vec![
                    "init".into(),
                    "--config".into(),
                    config_path.clone(),
                    "--upload-certs".into(),
                ],
                900,
                "kubeadm init",
                &format!(
                    "fix the cause (see kubeadm's messages; journalctl -u kubelet on {host}), \
                     run `kubeadm reset -f` on {host} if init left files behind, then run haop \
                     apply again"
                ),
            )
            .await?;
            let info = parse_kubeadm_init_output(&out).map_err(|e| {
                StepError::Failed(format!(
                    "kubeadm init succeeded on {host} but haop cannot read its join commands \
                     ({e}); run haop apply again: the joins will make a new token on {host}"
                ))
            })?;
            save_join(&ctx.state_dir, cluster, &Stored::from_init(&info, now()))?;
            Ok(true)
        }
        Action::KubeadmJoin {
            cluster,
            control_plane,
            node_name,
            advertise_address,
            bind_port,
            first_master,
            first_master_endpoint,
            config_path,
        } => {
            if exists(c, KUBELET_CONF).await? {
                return Ok(false);
            }
            let kubeadm = find_program(c, &KUBEADM_PATHS, "install kubeadm").await?;
            let cmd = join_command(
                ctx,
                cluster,
                *control_plane,
                first_master,
                first_master_endpoint,
                config_path,
            )
            .await?;
            let mut args = cmd.args();
            args.extend(["--node-name".to_string(), node_name.clone()]);
            if let Some(a) = advertise_address {
                args.extend(["--apiserver-advertise-address".to_string(), a.clone()]);
            }
            if let Some(p) = bind_port {
                args.extend(["--apiserver-bind-port".to_string(), p.to_string()]);
            }
            let kind = if *control_plane {
                "control-plane"
            } else {
                "worker"
            };
            exec(
                c,
                &kubeadm,
                args,
                900,
                &format!("kubeadm join ({kind})"),
                &format!(
                    "fix the cause (see kubeadm's messages; journalctl -u kubelet on {host}), \
                     run `kubeadm reset -f` on {host} if the join left files behind, then run \
                     haop apply again"
                ),
            )
            .await?;
            Ok(true)
        }
        Action::Cni { local, path } => {
            let data = std::fs::read(local).map_err(|e| {
                StepError::Failed(format!(
                    "cannot read the CNI manifest {} (kubernetes.cni_manifest): {e}",
                    local.display()
                ))
            })?;
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
            if let Some((s, _)) = c.read_text(CNI_MARKER).await? {
                if s.trim() == sha {
                    return Ok(false);
                }
            }
            c.write_file(path, data, 0o644).await?;
            let kubectl = find_program(c, &KUBECTL_PATHS, "install kubectl").await?;
            exec(
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
        _ => Err(StepError::Failed("not a kubeadm step".into())),
    }
}

fn local_sha256(local: &Path) -> Result<String, StepError> {
    let data = std::fs::read(local).map_err(|e| {
        StepError::Failed(format!(
            "cannot read the CNI manifest {} (kubernetes.cni_manifest): {e}",
            local.display()
        ))
    })?;
    Ok(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)))
}

// --- the join info in the state dir -----------------------------------------------------------

/// The join info as kept in `<state>/secrets/<cluster>.join.json`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Stored {
    pub endpoint: String,
    pub token: String,
    pub ca_cert_hashes: Vec<String>,
    /// When the token was made (Unix seconds).
    pub token_created_unix: u64,
    pub certificate_key: Option<String>,
    /// When the certificates were uploaded under the key (Unix seconds).
    pub certificate_key_created_unix: Option<u64>,
}

impl Stored {
    fn from_init(info: &JoinInfo, now: u64) -> Stored {
        let key = info
            .control_plane
            .as_ref()
            .and_then(|c| c.certificate_key.clone());
        Stored {
            endpoint: info.worker.endpoint.clone(),
            token: info.worker.token.clone(),
            ca_cert_hashes: info.worker.ca_cert_hashes.clone(),
            token_created_unix: now,
            certificate_key_created_unix: key.as_ref().map(|_| now),
            certificate_key: key,
        }
    }

    /// The join command for a worker or a control-plane node, its values checked again by
    /// kubeadm's output parser (the file could have been edited); `None` when it holds none
    /// that is still valid at `now`.
    fn command(&self, control_plane: bool, now: u64) -> Option<JoinCommand> {
        if now.saturating_sub(self.token_created_unix) > TOKEN_MAX_AGE_SECS {
            return None;
        }
        let mut text = format!("kubeadm join {} --token {}", self.endpoint, self.token);
        for h in &self.ca_cert_hashes {
            text.push_str(&format!(" --discovery-token-ca-cert-hash {h}"));
        }
        let info = if control_plane {
            let key = self.certificate_key.as_ref()?;
            if now.saturating_sub(self.certificate_key_created_unix?) > CERT_KEY_MAX_AGE_SECS {
                return None;
            }
            parse_kubeadm_init_output(&format!(
                "{text}\n{text} --control-plane --certificate-key {key}\n"
            ))
            .ok()?
        } else {
            parse_kubeadm_init_output(&text).ok()?
        };
        if control_plane {
            info.control_plane
        } else {
            Some(info.worker)
        }
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("endpoint", &self.endpoint)
            .field("token_created_unix", &self.token_created_unix)
            .finish_non_exhaustive()
    }
}

/// `<state>/secrets/<cluster>.join.json`.
pub fn join_info_path(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir
        .join("secrets")
        .join(format!("{cluster}.join.json"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The stored join info; `None` when there is none or it does not parse.
pub fn load_join(state_dir: &Path, cluster: &str) -> Result<Option<Stored>, StepError> {
    let path = join_info_path(state_dir, cluster);
    match std::fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StepError::Failed(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn save_join(state_dir: &Path, cluster: &str, s: &Stored) -> Result<(), StepError> {
    let path = join_info_path(state_dir, cluster);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| StepError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let json = serde_json::to_vec_pretty(s).expect("join info serializes");
    crate::fsio::write_private(&path, &json).map_err(crate::pki::PkiError::from)?;
    Ok(())
}

/// One refresh at a time: parallel worker joins share the new token.
static JOIN_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The join command for this node: from the state dir, or made anew on the first master when
/// missing or expired.
async fn join_command(
    ctx: &super::RunContext,
    cluster: &str,
    control_plane: bool,
    first_master: &str,
    first_master_endpoint: &str,
    config_path: &str,
) -> Result<JoinCommand, StepError> {
    let _guard = JOIN_LOCK.lock().await;
    let stored = load_join(&ctx.state_dir, cluster)?;
    if let Some(cmd) = stored
        .as_ref()
        .and_then(|s| s.command(control_plane, now()))
    {
        return Ok(cmd);
    }
    let path = join_info_path(&ctx.state_dir, cluster);
    let manual = if control_plane {
        format!(
            "on {first_master} run `kubeadm token create --print-join-command` and `kubeadm init \
             phase upload-certs --upload-certs --config {config_path}`, and join with the \
             printed command plus --control-plane --certificate-key KEY"
        )
    } else {
        format!(
            "on {first_master} run `kubeadm token create --print-join-command` and join with \
             the printed command"
        )
    };
    let why = if stored.is_some() {
        "expired"
    } else {
        "missing"
    };
    let fail = |detail: String| {
        StepError::Failed(format!(
            "the join info {} is {why} and haop could not make it anew on {first_master}: \
             {detail}; run haop apply again once {first_master} is healthy, or {manual}",
            path.display()
        ))
    };
    let fm = HostAgent::connect(
        &ctx.trust,
        first_master,
        first_master_endpoint,
        std::time::Duration::from_secs(5),
    )
    .await
    .map_err(|e| fail(crate::error_chain(&e)))?;
    if !exists(&fm, ADMIN_CONF)
        .await
        .map_err(|e| fail(e.to_string()))?
    {
        return Err(fail(format!(
            "{ADMIN_CONF} is missing there: kubeadm init has not run (the kubeadm-init phase \
             runs it)"
        )));
    }
    let kubeadm = find_program(&fm, &KUBEADM_PATHS, "install kubeadm")
        .await
        .map_err(|e| fail(e.to_string()))?;
    let t = now();
    let out = exec(
        &fm,
        &kubeadm,
        vec![
            "token".into(),
            "create".into(),
            "--print-join-command".into(),
        ],
        60,
        "kubeadm token create",
        "is the API server up?",
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let info = parse_kubeadm_init_output(&out).map_err(|e| fail(e.to_string()))?;
    let mut new = Stored::from_init(&info, t);
    // Keep a certificate key that is still valid; upload anew only when a control-plane
    // node needs one.
    if let Some(old) = &stored {
        if let (Some(k), Some(at)) = (&old.certificate_key, old.certificate_key_created_unix) {
            if t.saturating_sub(at) <= CERT_KEY_MAX_AGE_SECS {
                new.certificate_key = Some(k.clone());
                new.certificate_key_created_unix = Some(at);
            }
        }
    }
    if control_plane && new.certificate_key.is_none() {
        let out = exec(
            &fm,
            &kubeadm,
            vec![
                "init".into(),
                "phase".into(),
                "upload-certs".into(),
                "--upload-certs".into(),
                "--config".into(),
                config_path.to_string(),
            ],
            120,
            "kubeadm init phase upload-certs",
            "is the API server up?",
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        let key = parse_certificate_key(&out).ok_or_else(|| {
            fail("kubeadm init phase upload-certs printed no certificate key".into())
        })?;
        new.certificate_key = Some(key);
        new.certificate_key_created_unix = Some(t);
    }
    save_join(&ctx.state_dir, cluster, &new)?;
    new.command(control_plane, now())
        .ok_or_else(|| fail("the new join info does not check".into()))
}

/// The certificate key that `kubeadm init phase upload-certs --upload-certs` prints on its
/// last line (`[upload-certs] Using certificate key:` and then the key).
pub fn parse_certificate_key(out: &str) -> Option<String> {
    out.lines()
        .map(str::trim)
        .rfind(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "sha256:7c2e69131a36ae2a042a339b33381c6d0d43887e2de83720eff5359e26aec866";
    const KEY: &str = "f8902e114ef118304e561c3ecd4d0b543adc226b7a07f675f56564185ffe0c07";

    fn stored(now: u64) -> Stored {
        Stored {
            endpoint: "10.0.0.100:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec![HASH.into()],
            token_created_unix: now,
            certificate_key: Some(KEY.into()),
            certificate_key_created_unix: Some(now),
        }
    }

    #[test]
    fn stored_join_commands_and_expiry() {
        let s = stored(1_000_000);
        let w = s.command(false, 1_000_000).unwrap();
        assert!(!w.control_plane && w.certificate_key.is_none());
        let cp = s.command(true, 1_000_000).unwrap();
        assert!(cp.control_plane);
        assert_eq!(cp.certificate_key.as_deref(), Some(KEY));
        // The certificate key expires first, then the token.
        let later = 1_000_000 + 3 * 3600;
        assert!(s.command(true, later).is_none());
        assert!(s.command(false, later).is_some());
        assert!(s.command(false, 1_000_000 + 24 * 3600).is_none());
        // An edited file does not reach a command line.
        let mut bad = stored(1_000_000);
        bad.token = "abcdef.0123; rm -rf /".into();
        assert!(bad.command(false, 1_000_000).is_none());
    }

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
        let got: Vec<(Phase, &str)> = s.iter().map(|s| (s.phase, s.host.as_str())).collect();
        assert_eq!(
            got,
            [
                (Phase::KubeadmConfig, "m1"),
                (Phase::KubeadmInit, "m1"),
                (Phase::KubeadmJoinMasters, "m2"),
                (Phase::KubeadmJoinWorkers, "w1"),
                (Phase::Cni, "m1"),
            ]
        );
        // No pinned version: both renderings, chosen on the host.
        let Action::KubeadmConfig {
            v1beta3, v1beta4, ..
        } = &s[0].action
        else {
            panic!("{:?}", s[0].action);
        };
        assert!(String::from_utf8_lossy(v1beta3).contains("kubeadm.k8s.io/v1beta3"));
        assert!(String::from_utf8_lossy(v1beta4).contains("kubeadm.k8s.io/v1beta4"));
        let Action::KubeadmJoin {
            control_plane,
            advertise_address,
            bind_port,
            first_master,
            ..
        } = &s[2].action
        else {
            panic!("{:?}", s[2].action);
        };
        assert!(*control_plane);
        assert_eq!(advertise_address.as_deref(), Some("10.0.0.22"));
        assert_eq!(*bind_port, Some(6443));
        assert_eq!(first_master, "m1");
        assert!(matches!(
            &s[3].action,
            Action::KubeadmJoin {
                control_plane: false,
                advertise_address: None,
                bind_port: None,
                ..
            }
        ));
        assert!(Phase::KubeadmJoinMasters.serial() && !Phase::KubeadmJoinWorkers.serial());
    }

    #[test]
    fn a_pinned_version_makes_a_plain_file() {
        let inv = inventory("kubernetes: {version: 1.31.2}\n");
        let s = steps(&inv).unwrap();
        let Action::File {
            path,
            content,
            mode,
        } = &s[0].action
        else {
            panic!("{:?}", s[0].action);
        };
        assert_eq!((path.as_str(), *mode), (CONFIG_PATH, 0o600));
        let text = String::from_utf8_lossy(content);
        assert!(text.contains("kubeadm.k8s.io/v1beta4"), "{text}");
        assert!(text.contains("kubernetesVersion: \"v1.31.2\""), "{text}");
        assert!(!s.iter().any(|s| s.phase == Phase::Cni));
        let e = steps(&inventory("kubernetes: {version: 1.21.3}\n")).unwrap_err();
        assert!(e.contains("too old"), "{e}");
    }

    #[test]
    fn certificate_key_from_upload_certs() {
        let out = format!(
            "[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \
             \"kube-system\" Namespace\n[upload-certs] Using certificate key:\n{KEY}\n"
        );
        assert_eq!(parse_certificate_key(&out).as_deref(), Some(KEY));
        assert_eq!(parse_certificate_key("nothing\n"), None);
    }

    #[test]
    fn debug_hides_the_secrets() {
        let d = format!("{:?}", stored(1));
        assert!(!d.contains("0123456789abcdef") && !d.contains(KEY), "{d}");
    }
}
