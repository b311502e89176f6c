//! Checking and running one step against one host's agent.
//!
//! [`check`] reads what the host has (files, units, certificates) and says what would change,
//! with a unified diff for files: this is all `haop plan` does, and it changes nothing.
//! [`run`] makes the host match through the agent's ensure RPCs and reports whether anything
//! changed; running it again on a converged host changes nothing.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use haop_proto::v1 as pb;

use super::steps::{Action, Issuer, Step};
use crate::agent::{AgentError, HostAgent};
use crate::pki::{inspect, CertificateAuthority, SigningRequest};
use crate::trust::Trust;

/// What a step would change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    Unchanged,
    /// Something new: a file, a certificate, a unit.
    Create {
        detail: String,
    },
    /// A file that differs: its unified diff.
    Update {
        detail: String,
        diff: String,
    },
    /// Something to do that is not a file: start a unit, apply kernel settings, wait.
    Run {
        detail: String,
    },
}

impl Change {
    pub fn is_change(&self) -> bool {
        !matches!(self, Change::Unchanged)
    }
}

/// Errors of one step; the executor adds the host and the step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// An RPC that failed: the agent's answer, or a connection that broke before one.
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

/// What steps share during one run.
#[derive(Debug)]
pub struct RunContext {
    pub trust: Arc<Trust>,
    pub etcd_ca: CertificateAuthority,
    pub state_dir: PathBuf,
    pub cert_lifetime: Duration,
    /// Certificates with less time left are issued again: 30 days, or a third of the lifetime
    /// when that is shorter (so short-lived certificates converge instead of being re-issued
    /// on every apply).
    pub renew_within: Duration,
    /// Algorithm of the keys hosts generate for their certificates (the inventory's
    /// `pki.key_algorithm`).
    pub key_algorithm: crate::pki::KeyAlgorithm,
    /// Held while an etcd member restarts and comes back (rolling restarts).
    pub rolling: tokio::sync::Mutex<()>,
}

/// The masters whose interfaces carry `vip` (asked through their agents, in parallel).
async fn vip_holders(ctx: &RunContext, vip: &str, masters: &[(String, String)]) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for (name, endpoint) in masters.iter().cloned() {
        let trust = ctx.trust.clone();
        let prefix = format!("{vip}/");
        set.spawn(async move {
            let agent = HostAgent::connect(&trust, &name, &endpoint, Duration::from_secs(2))
                .await
                .ok()?;
            let facts = agent.facts().await.ok()?;
            facts
                .interfaces
                .iter()
                .any(|i| i.addresses.iter().any(|a| a.starts_with(&prefix)))
                .then_some(name)
        });
    }
    let mut holders: Vec<String> = set.join_all().await.into_iter().flatten().collect();
    holders.sort();
    holders
}

/// Waits until the etcd member at `endpoint` answers through the API again.
async fn wait_member_healthy(ctx: &RunContext, endpoint: &str) -> Result<(), StepError> {
    let client = crate::etcd::api::EtcdClient::connect(
        &ctx.state_dir,
        &[endpoint.to_string()],
        Duration::from_secs(1),
    )
    .await
    .map_err(|e| StepError::Failed(crate::error_chain(&e)))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if client.health(endpoint).await.is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(StepError::Failed(format!(
                "the etcd member at {endpoint} did not answer within 60 s of its restart; the \
                 other members were not restarted"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A unified diff of two texts, labelled with the path.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(path, path)
        .to_string()
}

pub(crate) fn file_change(
    path: &str,
    current: Option<(String, u32)>,
    wanted: &str,
    mode: u32,
) -> Change {
    match current {
        None => Change::Create {
            detail: format!("create {path} (mode {mode:04o})"),
        },
        Some((text, m)) if text == wanted => {
            if m == mode {
                Change::Unchanged
            } else {
                Change::Update {
                    detail: format!("mode of {path} {m:04o} -> {mode:04o}"),
                    diff: String::new(),
                }
            }
        }
        Some((text, _)) => Change::Update {
            detail: format!("update {path}"),
            diff: unified_diff(path, &text, wanted),
        },
    }
}

/// The first of `paths` that changed after the active unit's process started (so the process
/// runs an older content), if any. A path that does not exist counts as unchanged, and so does
/// everything when the service manager does not know when the unit started.
async fn changed_after_start(
    c: &HostAgent,
    paths: &[String],
    unit: &pb::UnitStatus,
) -> Result<Option<String>, StepError> {
    if unit.since_unix_ms <= 0 {
        return Ok(None);
    }
    for path in paths {
        let st = c.stat(path).await?;
        if st.exists && st.modified_unix_ms > unit.since_unix_ms {
            return Ok(Some(path.clone()));
        }
    }
    Ok(None)
}

/// Whether the certificate at `cert_path` is one haop would issue now: signed by our CA, the
/// expected names, far from expiry. Answers the reason when it is not.
async fn certificate_problem(
    c: &HostAgent,
    ctx: &RunContext,
    cert_path: &str,
    key_path: &str,
    names: &crate::pki::ExpectedNames,
) -> Result<Option<String>, StepError> {
    let Some((pem, _)) = c.read_text(cert_path).await? else {
        return Ok(Some(format!("create {cert_path}")));
    };
    if !c.exists(key_path).await? {
        return Ok(Some(format!("{key_path} is missing")));
    }
    let Ok(infos) = inspect(&pem) else {
        return Ok(Some(format!("{cert_path} does not parse")));
    };
    let Some(info) = infos.first() else {
        return Ok(Some(format!("{cert_path} holds no certificate")));
    };
    let ca = inspect(ctx.etcd_ca.cert_pem())?;
    let ca_ski = ca.first().and_then(|c| c.subject_key_id.clone());
    if info.authority_key_id.is_none() || info.authority_key_id != ca_ski {
        return Ok(Some(format!("{cert_path} is not signed by haop's CA")));
    }
    let mut have: Vec<String> = info.dns_names.clone();
    have.extend(info.ip_addresses.iter().cloned());
    let mut want = names.to_strings();
    have.sort();
    want.sort();
    if have != want {
        return Ok(Some(format!(
            "{cert_path} names [{}] differ from [{}]",
            have.join(", "),
            want.join(", ")
        )));
    }
    let left = info.not_after - time::OffsetDateTime::now_utc();
    if left < ctx.renew_within {
        return Ok(Some(format!(
            "{cert_path} expires in {} hours",
            left.whole_hours()
        )));
    }
    Ok(None)
}

/// What `step` would change on the host behind `c` (`None` for cluster-wide steps).
pub async fn check(
    step: &Step,
    c: Option<&HostAgent>,
    ctx: &RunContext,
) -> Result<Change, StepError> {
    let Some(c) = c else {
        return match &step.action {
            Action::EtcdQuorum { endpoints, members } => {
                let healthy = crate::etcd::quorum_wait::quorum_is_healthy(
                    &ctx.state_dir,
                    endpoints,
                    *members,
                    Duration::from_secs(3),
                )
                .await;
                Ok(if healthy {
                    Change::Unchanged
                } else {
                    Change::Run {
                        detail: format!("wait for a quorum of {members} members"),
                    }
                })
            }
            _ => Err(StepError::Failed("a host step without its host".into())),
        };
    };
    match &step.action {
        Action::File {
            path,
            content,
            mode,
        } => {
            let current = c.read_text(path).await?;
            Ok(file_change(
                path,
                current,
                &String::from_utf8_lossy(content),
                *mode,
            ))
        }
        Action::FileIfAbsent { path, mode, .. } => {
            let st = c.stat(path).await?;
            Ok(if st.exists {
                Change::Unchanged
            } else {
                Change::Create {
                    detail: format!("create {path} (mode {mode:04o})"),
                }
            })
        }
        Action::HostsBlock { block } => {
            let current = c.read_text("/etc/hosts").await?;
            let old = current.as_ref().map(|(t, _)| t.clone()).unwrap_or_default();
            let new = crate::render::hosts::merge_hosts_block(&old, block);
            Ok(if old == new {
                Change::Unchanged
            } else {
                Change::Update {
                    detail: "update /etc/hosts".into(),
                    diff: unified_diff("/etc/hosts", &old, &new),
                }
            })
        }
        Action::Upload { path, sha256, .. } => {
            let st = c.stat(path).await?;
            Ok(if st.exists && st.sha256 == *sha256 {
                Change::Unchanged
            } else {
                Change::Create {
                    detail: format!("upload {path} (sha256 {})", &sha256[..12]),
                }
            })
        }
        Action::Certificate {
            cert_path,
            key_path,
            names,
            ..
        } => Ok(
            match certificate_problem(c, ctx, cert_path, key_path, names).await? {
                None => Change::Unchanged,
                Some(why) => Change::Create {
                    detail: format!("issue {cert_path}: {why}"),
                },
            },
        ),
        Action::Unit { name, content, .. } => {
            let path = format!("/etc/systemd/system/{name}");
            let current = c.read_text(&path).await?;
            Ok(file_change(&path, current, content, 0o644))
        }
        Action::Running {
            unit, restart_on, ..
        } => {
            let s = c.unit_status(unit).await?;
            Ok(if s.active_state == "active" && s.enabled {
                match changed_after_start(c, restart_on, &s).await? {
                    Some(path) => Change::Run {
                        detail: format!("restart {unit}: {path} changed after it started"),
                    },
                    None => Change::Unchanged,
                }
            } else {
                Change::Run {
                    detail: format!("start and enable {unit} (now {})", s.active_state),
                }
            })
        }
        Action::Modules { name, modules } => {
            let path = format!("/etc/modules-load.d/{name}.conf");
            let current = c.read_text(&path).await?;
            Ok(file_change(&path, current, &modules_file(modules), 0o644))
        }
        Action::Sysctls { name, values } => {
            let path = format!("/etc/sysctl.d/{name}.conf");
            let current = c.read_text(&path).await?;
            Ok(file_change(&path, current, &sysctl_file(values), 0o644))
        }
        Action::SwapOff => {
            let f = c.facts().await?;
            let swap = f.swap.unwrap_or_default();
            Ok(if swap.devices.is_empty() && swap.fstab_entries == 0 {
                Change::Unchanged
            } else {
                Change::Run {
                    detail: format!(
                        "swap off ({} active, {} fstab lines)",
                        swap.devices.len(),
                        swap.fstab_entries
                    ),
                }
            })
        }
        Action::VipHeld { vip, masters } => {
            let holders = vip_holders(ctx, vip, masters).await;
            Ok(if holders.len() == 1 {
                Change::Unchanged
            } else {
                Change::Run {
                    detail: format!(
                        "wait until one master holds {vip} (now: {})",
                        if holders.is_empty() {
                            "none".to_string()
                        } else {
                            holders.join(", ")
                        }
                    ),
                }
            })
        }
        Action::EtcdQuorum { .. } => {
            Err(StepError::Failed("the quorum step is cluster-wide".into()))
        }
        Action::KubeadmConfig { .. }
        | Action::KubeadmInit { .. }
        | Action::KubeadmJoin { .. }
        | Action::Cni { .. } => super::kubeadm::check(&step.action, c, &ctx.state_dir).await,
    }
}

/// The agent's own rendering of a modules-load.d file (LoadModules writes this).
pub fn modules_file(modules: &[String]) -> String {
    let mut s = String::from("# Managed by haop.\n");
    for m in modules {
        s.push_str(m);
        s.push('\n');
    }
    s
}

/// The agent's own rendering of a sysctl.d file (ApplySysctl writes this).
pub fn sysctl_file(values: &std::collections::BTreeMap<String, String>) -> String {
    let mut s = String::from("# Managed by haop.\n");
    for (k, v) in values {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s
}

/// Makes the host match `step`; answers whether anything changed. `changed_paths` are the
/// files this run changed on this host so far (a `Running` step restarts on them).
pub async fn run(
    step: &Step,
    c: Option<&HostAgent>,
    ctx: &RunContext,
    changed_paths: &HashSet<String>,
) -> Result<bool, StepError> {
    let Some(c) = c else {
        return match &step.action {
            Action::EtcdQuorum { endpoints, members } => crate::etcd::quorum_wait::wait_for_quorum(
                &ctx.state_dir,
                endpoints,
                *members,
                Duration::from_secs(60),
            )
            .await
            .map_err(StepError::Failed),
            _ => Err(StepError::Failed("a host step without its host".into())),
        };
    };
    match &step.action {
        Action::File {
            path,
            content,
            mode,
        } => Ok(c.write_file(path, content.clone(), *mode).await?),
        Action::FileIfAbsent {
            path,
            content,
            mode,
        } => {
            let st = c.stat(path).await?;
            if st.exists {
                return Ok(false);
            }
            Ok(c.write_file(path, content.clone(), *mode).await?)
        }
        Action::HostsBlock { block } => {
            let current = c.read_text("/etc/hosts").await?;
            let (old, mode) = current.unwrap_or((String::new(), 0o644));
            let new = crate::render::hosts::merge_hosts_block(&old, block);
            if new == old {
                return Ok(false);
            }
            Ok(c.write_file("/etc/hosts", new, mode).await?)
        }
        Action::Upload {
            path,
            local,
            sha256,
            mode,
        } => {
            let data = std::fs::read(local)
                .map_err(|e| StepError::Failed(format!("cannot read {}: {e}", local.display())))?;
            let msgs = crate::agent::upload_chunks(path, *mode, sha256, &data);
            Ok(c.call("UploadFile", |mut c| async move {
                c.upload_file(tokio_stream::iter(msgs)).await
            })
            .await?
            .changed)
        }
        Action::Certificate {
            key_path,
            cert_path,
            names,
            ..
        } => {
            if certificate_problem(c, ctx, cert_path, key_path, names)
                .await?
                .is_none()
            {
                return Ok(false);
            }
            issue_certificate(c, ctx, &step.action, false).await?;
            Ok(true)
        }
        Action::Unit {
            name,
            content,
            data_dirs,
        } => Ok(c.ensure_unit(name, content, data_dirs).await?),
        Action::Running {
            unit,
            restart_on,
            rolling_etcd,
            start_delay_ms,
        } => {
            let enabled = c.unit_action(unit, pb::Action::Enable).await?;
            let status = c.unit_status(unit).await?;
            // Restarted when this run changed what the unit reads, or when an earlier run did
            // and was interrupted (killed, a host cut off) before the restart: the file is
            // then newer than the process.
            let restart = status.active_state == "active"
                && (restart_on.iter().any(|p| changed_paths.contains(p))
                    || changed_after_start(c, restart_on, &status).await?.is_some());
            let started = if restart {
                match rolling_etcd {
                    Some(endpoint) => {
                        // One etcd member at a time, each back before the next.
                        let _one = ctx.rolling.lock().await;
                        let changed = c.unit_action(unit, pb::Action::Restart).await?;
                        crate::failpoint::hit("apply:after-etcd-restart");
                        wait_member_healthy(ctx, endpoint).await?;
                        changed
                    }
                    None => c.unit_action(unit, pb::Action::Restart).await?,
                }
            } else {
                if status.active_state != "active" && *start_delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(*start_delay_ms)).await;
                }
                c.unit_action(unit, pb::Action::Start).await?
            };
            Ok(enabled || started)
        }
        Action::Modules { name, modules } => Ok(c.load_modules(name, modules).await?),
        Action::Sysctls { name, values } => Ok(c.apply_sysctl(name, values).await?),
        Action::SwapOff => Ok(c.disable_swap().await?),
        Action::VipHeld { vip, masters } => {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let holders = vip_holders(ctx, vip, masters).await;
                if holders.len() == 1 {
                    return Ok(false);
                }
                if std::time::Instant::now() > deadline {
                    return Err(StepError::Failed(format!(
                        "VIP {vip} is held by {} after 30 s; check keepalived's log on the \
                         masters, the VIP's interface name and that VRRP (IP protocol 112) \
                         passes between them",
                        if holders.is_empty() {
                            "no master".to_string()
                        } else {
                            holders.join(" and ")
                        }
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Action::EtcdQuorum { .. } => {
            Err(StepError::Failed("the quorum step is cluster-wide".into()))
        }
        Action::KubeadmConfig { .. }
        | Action::KubeadmInit { .. }
        | Action::KubeadmJoin { .. }
        | Action::Cni { .. } => super::kubeadm::run(&step.action, &step.host, c, ctx).await,
    }
}

/// The file paths a step writes, for restart tracking.
pub fn paths_of(step: &Step) -> Vec<String> {
    match &step.action {
        Action::File { path, .. }
        | Action::FileIfAbsent { path, .. }
        | Action::Upload { path, .. } => vec![path.clone()],
        Action::HostsBlock { .. } => vec!["/etc/hosts".into()],
        Action::Certificate {
            cert_path, ca_path, ..
        } => vec![cert_path.clone(), ca_path.clone()],
        Action::Unit { name, .. } => vec![format!("/etc/systemd/system/{name}")],
        _ => Vec::new(),
    }
}

/// Issues the certificate of a [`Action::Certificate`] step through the CSR flow: the host
/// makes the key (a new one when `rotate`) and a CSR, haop's CA signs it, the host installs it.
pub async fn issue_certificate(
    c: &HostAgent,
    ctx: &RunContext,
    action: &Action,
    rotate: bool,
) -> Result<(), StepError> {
    let Action::Certificate {
        key_path,
        cert_path,
        ca_path,
        issuer,
        profile,
        common_name,
        names,
    } = action
    else {
        return Err(StepError::Failed("not a certificate step".into()));
    };
    let ca = match issuer {
        Issuer::Etcd => &ctx.etcd_ca,
    };
    let csr = c
        .create_csr(pb::CreateCsrRequest {
            key_path: key_path.clone(),
            common_name: common_name.clone(),
            dns_names: names.dns.clone(),
            ip_addresses: names.ips.iter().map(|i| i.to_string()).collect(),
            rotate,
            algorithm: pb::KeyAlgorithm::from(ctx.key_algorithm) as i32,
            ..Default::default()
        })
        .await?;
    let cert = ca.sign_csr(
        &csr.csr_pem,
        &SigningRequest {
            profile: *profile,
            lifetime: ctx.cert_lifetime,
            expected: names.clone(),
            organization: None,
            common_name: common_name.clone(),
        },
    )?;
    c.install_certificate(pb::InstallCertificateRequest {
        cert_path: cert_path.clone(),
        cert_pem: cert,
        key_path: key_path.clone(),
        ca_path: ca_path.clone(),
        ca_pem: ca.cert_pem().to_string(),
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_changes() {
        assert_eq!(
            file_change("/x", Some(("a\n".into(), 0o644)), "a\n", 0o644),
            Change::Unchanged
        );
        assert!(matches!(
            file_change("/x", None, "a\n", 0o644),
            Change::Create { .. }
        ));
        let Change::Update { diff, .. } =
            file_change("/x", Some(("a\nb\n".into(), 0o644)), "a\nc\n", 0o644)
        else {
            panic!("expected an update");
        };
        assert!(diff.contains("-b\n") && diff.contains("+c\n"), "{diff}");
        assert!(diff.starts_with("--- /x\n+++ /x\n"), "{diff}");
    }

    #[test]
    fn rendered_like_the_agent_renders() {
        let mut v = std::collections::BTreeMap::new();
        v.insert("net.ipv4.ip_forward".to_string(), "1".to_string());
        assert_eq!(
            sysctl_file(&v),
            "# Managed by haop.\nnet.ipv4.ip_forward = 1\n"
        );
        assert_eq!(
            modules_file(&["overlay".into()]),
            "# Managed by haop.\noverlay\n"
        );
    }
}
