//! `haop certs rotate-ca --etcd`: a new etcd CA without downtime, by the bundle protocol.
//!
//! kubeadm's procedure for a new CA "requires considerable downtime", k0s stops the cluster,
//! Talos loses quorum for a moment; Gardener rotates without, but only on Kubernetes. etcd
//! reads its trusted CAs only when it starts (hot reload was proposed upstream and closed), so
//! every phase here is a rolling restart (see [`crate::etcd::rolling`]): one member at a time,
//! leadership handed away first, back and caught up with the quorum whole before the next.
//!
//! 1. `prepare`: a new CA beside the old one in the state dir (`etcd-ca-next`); haop trusts
//!    both ([`crate::pki::bundle`], the old one first: it still issues).
//! 2. `trust:MEMBER`, `trust:MASTER`: every member's `ca.crt` holds both (restarted), and every
//!    master's (kube-apiserver restarted by kubelet through an annotation of its manifest).
//! 3. `swap`: the new CA becomes `etcd-ca`, the old one `etcd-ca-old`; haop's own etcd client
//!    certificate is issued by the new one; haop trusts new + old.
//! 4. `reissue:MEMBER`: new keys and certificates from the new CA through the CSR flow
//!    (restarted); `reissue:MASTER`: kube-apiserver's etcd client certificate.
//! 5. `drop:MEMBER`, `drop:MASTER`: `ca.crt` holds the new CA alone (restarted).
//! 6. `finish`: haop trusts the new CA alone; the old CA's key is deleted (its certificate is
//!    kept under `pki/retired/` for the record). A client still holding a certificate of the
//!    old CA is refused from then on: identities issued with `haop identity issue --etcd`
//!    before the rotation must be issued again (listed when the rotation starts).
//!
//! Resumable: `<state>/rotate/<cluster>-etcd.json` records each step as started, then done;
//! a rerun redoes a started step (ensures and a restart are harmless) and skips a done one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::adopt::record::StepState;
use crate::agent::{AgentError, Agents, HostAgent};
use crate::etcd::api::{EtcdApiError, EtcdClient};
use crate::etcd::rolling::{members_of, Restarted, RollingError, Rollout};
use crate::inventory::Inventory;
use crate::pki::{CertificateAuthority, ETCD_CA};
use crate::runbook::exec::certificates;
use crate::runbook::plan::Action;
use crate::runbook::{Runbook, RunbookError};
use crate::trust::pki_dir;

/// The new CA's file stem until it takes over.
pub const NEXT_CA: &str = "etcd-ca-next";
/// The old CA's file stem after the swap, until the rotation ends.
pub const OLD_CA: &str = "etcd-ca-old";

/// Errors of the rotation; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(transparent)]
    Write(#[from] crate::fsio::FsioError),
    #[error("{step}: {source}")]
    Agent {
        step: String,
        #[source]
        source: AgentError,
    },
    #[error("{step}: {source}")]
    Certificate {
        step: String,
        #[source]
        source: Box<certificates::CertificateError>,
    },
    #[error("{step}: {source}")]
    Etcd {
        step: String,
        #[source]
        source: EtcdApiError,
    },
    #[error("{step}: {source}")]
    Rolling {
        step: String,
        #[source]
        source: Box<RollingError>,
    },
    #[error("the rotation journal {path}: {message}")]
    Journal { path: PathBuf, message: String },
    #[error("{0}")]
    Refused(String),
}

/// The journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationJournal {
    pub started_unix: i64,
    pub old_ca_pem: String,
    pub new_ca_pem: String,
    pub steps: BTreeMap<String, StepState>,
    pub finished_unix: Option<i64>,
}

/// `<state>/rotate/<cluster>-etcd.json`.
pub fn journal_path(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir
        .join("rotate")
        .join(format!("{cluster}-etcd.json"))
}

fn load(state_dir: &Path, cluster: &str) -> Result<Option<RotationJournal>, RotateError> {
    let path = journal_path(state_dir, cluster);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| RotateError::Journal {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RotateError::Journal {
            path,
            message: e.to_string(),
        }),
    }
}

fn save(state_dir: &Path, cluster: &str, j: &RotationJournal) -> Result<(), RotateError> {
    let path = journal_path(state_dir, cluster);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| RotateError::Journal {
            path: path.clone(),
            message: e.to_string(),
        })?;
    }
    let text = serde_json::to_string_pretty(j).expect("the journal serializes");
    crate::fsio::write_atomic(&path, text.as_bytes(), 0o600)?;
    Ok(())
}

/// What the rotation did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rotated {
    pub restarts: Vec<Restarted>,
    pub steps_done: Vec<String>,
    /// Identities issued with `--etcd` by the old CA: they stop working now.
    pub stale_identities: Vec<String>,
    pub new_ca_sha256: String,
    pub seconds: f64,
}

fn pem_path(state_dir: &Path, stem: &str, ext: &str) -> PathBuf {
    pki_dir(state_dir).join(format!("{stem}.{ext}"))
}

fn rename(from: &Path, to: &Path) -> Result<(), RotateError> {
    std::fs::rename(from, to).map_err(|source| {
        RotateError::Write(crate::fsio::FsioError::Io {
            op: "rename",
            path: from.to_path_buf(),
            source,
        })
    })
}

/// The swap, idempotent: the new CA (from `j`) becomes `etcd-ca`, the old one `etcd-ca-old`.
fn swap(state_dir: &Path, j: &RotationJournal) -> Result<(), RotateError> {
    let current = std::fs::read_to_string(pem_path(state_dir, ETCD_CA, "crt")).unwrap_or_default();
    if current == j.new_ca_pem {
        return Ok(());
    }
    for ext in ["crt", "key"] {
        let old = pem_path(state_dir, OLD_CA, ext);
        if !old.exists() {
            rename(&pem_path(state_dir, ETCD_CA, ext), &old)?;
        }
    }
    for ext in ["crt", "key"] {
        rename(
            &pem_path(state_dir, NEXT_CA, ext),
            &pem_path(state_dir, ETCD_CA, ext),
        )?;
    }
    Ok(())
}

struct Run<'a> {
    roll: Rollout<'a>,
}

impl Run<'_> {
    /// The gate before a member's files change (see [`crate::etcd::rolling::whole`]).
    async fn whole(&self, step: &str, host: &str) -> Result<(), RotateError> {
        self.roll
            .whole(&self.roll.etcd, host)
            .await
            .map_err(|source| RotateError::Rolling {
                step: step.to_string(),
                source: Box::new(source),
            })
    }

    async fn agent(&self, step: &str, host: &str) -> Result<HostAgent, RotateError> {
        self.roll
            .agents
            .get(host)
            .await
            .map_err(|source| RotateError::Agent {
                step: step.to_string(),
                source,
            })
    }

    async fn restart(
        &self,
        step: &str,
        agent: &HostAgent,
        host: &str,
    ) -> Result<Restarted, RotateError> {
        self.roll
            .restart(&self.roll.etcd, agent, host)
            .await
            .map_err(|source| RotateError::Rolling {
                step: step.to_string(),
                source: Box::new(source),
            })
    }

    async fn write(
        &self,
        step: &str,
        agent: &HostAgent,
        path: &str,
        content: &str,
    ) -> Result<bool, RotateError> {
        agent
            .write_file(path, content.as_bytes().to_vec(), 0o644)
            .await
            .map_err(|source| RotateError::Agent {
                step: step.to_string(),
                source,
            })
    }

    /// A master's CA file set to `pem`, its API server restarted (manifest annotation).
    async fn master_ca(&self, step: &str, host: &str, pem: &str) -> Result<(), RotateError> {
        let agent = self.agent(step, host).await?;
        self.write(step, &agent, crate::render::kubeadm::ETCD_CA_FILE, pem)
            .await?;
        bump_manifest(&agent, step, pem).await
    }
}

/// Records the digest of the CA file in the API server's manifest (when there is one), so
/// that kubelet restarts it and it reads the file again.
async fn bump_manifest(agent: &HostAgent, step: &str, ca_pem: &str) -> Result<(), RotateError> {
    let manifest = crate::adopt::discover::APISERVER_MANIFEST;
    let err = |source| RotateError::Agent {
        step: step.to_string(),
        source,
    };
    if let Some((text, mode)) = agent.read_text(manifest).await.map_err(err)? {
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ca_pem.as_bytes()));
        let new = crate::adopt::migrate::set_annotation(&text, &digest);
        if new != text {
            agent
                .write_file(manifest, new.into_bytes(), mode)
                .await
                .map_err(|source| RotateError::Agent {
                    step: step.to_string(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// Identities of the etcd channel that the old CA issued and that are still active.
fn stale_identities(state_dir: &Path) -> Vec<String> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    crate::identity::store::IdentityStore::new(state_dir)
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.channel == crate::identity::Channel::Etcd && !r.built_in && r.is_active(now))
        .map(|r| r.name)
        .collect()
}

/// Rotates the etcd CA of `inv`'s cluster (or continues an interrupted rotation). A new
/// rotation is refused, changing nothing, while identities of the etcd channel issued by the
/// old CA are valid, unless `yes` (they stop working; they are listed).
pub async fn run(
    state_dir: &Path,
    inv: &Inventory,
    yes: bool,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Rotated, RotateError> {
    let started = Instant::now();
    let cluster = inv.cluster.as_str().to_string();
    if crate::adopt::record::AdoptionRecord::load(state_dir, &cluster)
        .ok()
        .flatten()
        .is_some_and(|r| r.finished_unix.is_none())
    {
        return Err(RotateError::Refused(format!(
            "{cluster} is being adopted: finish securing it with `haop apply` first"
        )));
    }
    let pki = pki_dir(state_dir);
    let stale = stale_identities(state_dir);
    let fresh = load(state_dir, &cluster)?.is_none_or(|j| j.finished_unix.is_some());
    if fresh && !yes && !stale.is_empty() {
        return Err(RotateError::Refused(format!(
            "identities issued with --etcd by the current CA are still valid and would be refused after the rotation: {}. Run again with --yes, then issue them again",
            stale.join(", ")
        )));
    }
    let mut j = match load(state_dir, &cluster)? {
        Some(j) if j.finished_unix.is_none() => {
            progress("continuing the rotation that was interrupted".into());
            j
        }
        _ => {
            let old = CertificateAuthority::load(&pki, ETCD_CA)?;
            let next = match CertificateAuthority::load(&pki, NEXT_CA) {
                Ok(n) => n,
                Err(_) => CertificateAuthority::create(
                    &pki,
                    NEXT_CA,
                    "etcd",
                    inv.pki.key_algorithm,
                    inv.pki.lifetime.duration(),
                )?,
            };
            let j = RotationJournal {
                started_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
                old_ca_pem: old.cert_pem().to_string(),
                new_ca_pem: next.cert_pem().to_string(),
                steps: BTreeMap::new(),
                finished_unix: None,
            };
            save(state_dir, &cluster, &j)?;
            j
        }
    };
    let mut out = Rotated {
        stale_identities: stale,
        ..Default::default()
    };
    if !out.stale_identities.is_empty() {
        progress(format!(
            "identities issued with --etcd by the old CA stop working at the end: {} (issue them again afterwards)",
            out.stale_identities.join(", ")
        ));
    }
    if !j.steps.contains_key("prepare") {
        let bundle = crate::pki::bundle::join(&j.old_ca_pem, &[&j.new_ca_pem])?;
        crate::pki::bundle::set(state_dir, &bundle)?;
        j.steps.insert("prepare".into(), StepState::Done);
        save(state_dir, &cluster, &j)?;
    }
    let urls: Vec<String> = members_of(inv).iter().map(|e| e.url.clone()).collect();
    let etcd = EtcdClient::connect(state_dir, &urls, Duration::from_secs(2))
        .await
        .map_err(|source| RotateError::Etcd {
            step: "connect".into(),
            source,
        })?;
    let trust = std::sync::Arc::new(crate::trust::Trust::load(state_dir)?);
    let mut r = Run {
        roll: Rollout::new(inv, Agents::new(trust, inv), etcd, progress),
    };
    let etcd_hosts: Vec<String> = r.roll.members.iter().map(|e| e.host.clone()).collect();
    let masters: Vec<String> = inv
        .masters()
        .iter()
        .map(|h| h.name.as_str().to_string())
        .collect();
    let both_old_first = crate::pki::bundle::join(&j.old_ca_pem, &[&j.new_ca_pem])?;
    let both_new_first = crate::pki::bundle::join(&j.new_ca_pem, &[&j.old_ca_pem])?;

    // 2. Every member and master trusts both.
    for host in &etcd_hosts {
        let k = format!("trust:{host}");
        if begin(state_dir, &cluster, &mut j, &k, progress)? {
            r.whole(&k, host).await?;
            let agent = r.agent(&k, host).await?;
            r.write(
                &k,
                &agent,
                &format!("{}/ca.crt", crate::etcd::config::PKI_DIR),
                &both_old_first,
            )
            .await?;
            out.restarts.push(r.restart(&k, &agent, host).await?);
            end(state_dir, &cluster, &mut j, &k, &mut out)?;
        }
    }
    for host in &masters {
        let k = format!("trust-api:{host}");
        if begin(state_dir, &cluster, &mut j, &k, progress)? {
            r.master_ca(&k, host, &both_old_first).await?;
            end(state_dir, &cluster, &mut j, &k, &mut out)?;
        }
    }
    // 3. The new CA issues from now on.
    if begin(state_dir, &cluster, &mut j, "swap", progress)? {
        swap(state_dir, &j)?;
        crate::pki::bundle::set(state_dir, &both_new_first)?;
        // The revocation list is signed again, by the new CA, when the runbook loads next.
        let crl = crate::identity::crl::path(state_dir, crate::identity::Channel::Etcd);
        let _ = std::fs::remove_file(crl);
        let ca = CertificateAuthority::load(&pki, ETCD_CA)?;
        ca.issue_local(
            &pki,
            crate::trust::ETCD_CLIENT_CERT,
            inv.pki.key_algorithm,
            &crate::pki::SigningRequest {
                profile: crate::pki::Profile::Client,
                lifetime: inv.pki.lifetime.duration(),
                expected: crate::pki::ExpectedNames::none(),
                organization: None,
                common_name: "haop".to_string(),
            },
        )?;
        // haop's client connects again with its new certificate.
        r.roll.etcd = EtcdClient::connect(state_dir, &urls, Duration::from_secs(2))
            .await
            .map_err(|source| RotateError::Etcd {
                step: "swap".into(),
                source,
            })?;
        end(state_dir, &cluster, &mut j, "swap", &mut out)?;
    }
    // 4. New leaves, from the new CA (the runbook's certificate specs, keys rotated on the hosts).
    let rb = Runbook::load(state_dir, inv.clone())?;
    for host in etcd_hosts.iter().chain(masters.iter()) {
        let k = format!("reissue:{host}");
        if !begin(state_dir, &cluster, &mut j, &k, progress)? {
            continue;
        }
        if etcd_hosts.contains(host) {
            r.whole(&k, host).await?;
        }
        let agent = r.agent(&k, host).await?;
        for s in &rb.steps {
            let (Action::Certificate(spec), Some(h)) = (&s.action, s.target.host()) else {
                continue;
            };
            if h != host {
                continue;
            }
            // A rerun does not issue twice what the new CA already signed.
            let fine = certificates::problem(spec, &agent, &rb.ctx)
                .await
                .map_err(|source| RotateError::Certificate {
                    step: k.clone(),
                    source: Box::new(source),
                })?
                .is_none();
            if !fine {
                certificates::issue_certificate(&agent, &rb.ctx, spec, true)
                    .await
                    .map_err(|source| RotateError::Certificate {
                        step: k.clone(),
                        source: Box::new(source),
                    })?;
                progress(format!(
                    "{host}: {} issued by the new CA (new key)",
                    spec.cert_path
                ));
            }
        }
        if etcd_hosts.contains(host) {
            let crl = crate::etcd::config::client_crl_path();
            if let Some(content) = crate::adopt::migrate::planned_file(&rb, &crl) {
                agent
                    .write_file(&crl, content, 0o644)
                    .await
                    .map_err(|source| RotateError::Agent {
                        step: k.clone(),
                        source,
                    })?;
            }
            out.restarts.push(r.restart(&k, &agent, host).await?);
        } else {
            bump_manifest(&agent, &k, &both_new_first).await?;
        }
        end(state_dir, &cluster, &mut j, &k, &mut out)?;
    }
    // 5. The old CA is trusted nowhere.
    for host in &etcd_hosts {
        let k = format!("drop:{host}");
        if begin(state_dir, &cluster, &mut j, &k, progress)? {
            r.whole(&k, host).await?;
            let agent = r.agent(&k, host).await?;
            r.write(
                &k,
                &agent,
                &format!("{}/ca.crt", crate::etcd::config::PKI_DIR),
                &j.new_ca_pem,
            )
            .await?;
            out.restarts.push(r.restart(&k, &agent, host).await?);
            end(state_dir, &cluster, &mut j, &k, &mut out)?;
        }
    }
    for host in &masters {
        let k = format!("drop-api:{host}");
        if begin(state_dir, &cluster, &mut j, &k, progress)? {
            r.master_ca(&k, host, &j.new_ca_pem).await?;
            end(state_dir, &cluster, &mut j, &k, &mut out)?;
        }
    }
    // 6. haop trusts the new CA alone; the old key is gone.
    crate::pki::bundle::set(state_dir, &j.new_ca_pem)?;
    let retired = pki.join("retired");
    std::fs::create_dir_all(&retired).map_err(|source| crate::fsio::FsioError::Io {
        op: "create",
        path: retired.clone(),
        source,
    })?;
    let old_crt = pem_path(state_dir, OLD_CA, "crt");
    if old_crt.exists() {
        rename(
            &old_crt,
            &retired.join(format!("etcd-ca-until-{}.crt", j.started_unix)),
        )?;
    }
    let old_key = pem_path(state_dir, OLD_CA, "key");
    if old_key.exists() {
        std::fs::remove_file(&old_key).map_err(|source| crate::fsio::FsioError::Io {
            op: "remove",
            path: old_key.clone(),
            source,
        })?;
    }
    j.finished_unix = Some(time::OffsetDateTime::now_utc().unix_timestamp());
    save(state_dir, &cluster, &j)?;
    out.new_ca_sha256 = CertificateAuthority::load(&pki, ETCD_CA)?.sha256_pin();
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Whether step `k` is still to do; if so it is recorded as started.
fn begin(
    state_dir: &Path,
    cluster: &str,
    j: &mut RotationJournal,
    k: &str,
    progress: &(dyn Fn(String) + Sync),
) -> Result<bool, RotateError> {
    if j.steps.get(k) == Some(&StepState::Done) {
        return Ok(false);
    }
    progress(k.to_string());
    j.steps.insert(k.to_string(), StepState::Started);
    save(state_dir, cluster, j)?;
    Ok(true)
}

fn end(
    state_dir: &Path,
    cluster: &str,
    j: &mut RotationJournal,
    k: &str,
    out: &mut Rotated,
) -> Result<(), RotateError> {
    j.steps.insert(k.to_string(), StepState::Done);
    save(state_dir, cluster, j)?;
    out.steps_done.push(k.to_string());
    crate::failpoint::hit("rotate-ca:after-step");
    Ok(())
}
