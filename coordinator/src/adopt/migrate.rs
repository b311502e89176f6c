//! The migration `haop apply` runs on an adopted cluster: the bundle protocol over live
//! members (see the module doc of [`crate::adopt`] for the why and [`crate::pki::bundle`] for
//! the trust file). Steps, in order, each recorded in the [`AdoptionRecord`] as started before
//! it changes anything and as done after its member is back:
//!
//! 1. `trust:MEMBER`: the member's peer URL set to haop's (`member update`, live); its server
//!    and peer certificates issued by haop's CA through the CSR flow (keys made on the host),
//!    their CA file `ca.crt` holding both CAs; `etcd.env` and haop's unit written with the
//!    seed's certificates still served, `ca.crt` trusted, cert auth still off; restarted.
//!    After this step on every member, each member and haop trust both CAs.
//! 2. `apiserver:MASTER`: kube-apiserver's etcd client certificate issued by haop's CA on the
//!    master, `ca.crt` next to it with both CAs, and its manifest pointed at them (kubelet
//!    restarts the API server when its manifest changes). From here on every client presents
//!    a certificate the bundle trusts and trusts every server certificate either CA signed.
//! 3. `secure:MEMBER`: haop's own `etcd.env`: haop's certificates served, client and peer
//!    certificate auth on; restarted.
//! 4. `drop:MEMBER`: `ca.crt` holds haop's CA alone; restarted. Every certificate in use is
//!    haop's by now (step 3 everywhere), so nothing the seed's CA signed is needed.
//! 5. `apiserver-ca:MASTER`: the master's `ca.crt` holds haop's CA alone and the manifest
//!    records its digest, so that kubelet restarts the API server and it forgets the old CA.
//!    Then haop's own trust is haop's CA alone.
//! 6. `cleanup:HOST`: the seed's CA key removed from every host that had it.
//!
//! Every write is an ensure and a restart is harmless, so a step found started (the coordinator
//! died inside it) is simply run again.

use std::path::Path;
use std::time::{Duration, Instant};

use super::record::{AdoptionRecord, StepState};
use crate::agent::{AgentError, Agents, HostAgent};
use crate::etcd::api::{EtcdApiError, EtcdClient};
use crate::etcd::config::{
    client_crl_path, TlsSettings, BOOTSTRAP_ENV_FILE, ENV_FILE, SEALED_BOOTSTRAP_ENV, UNIT_NAME,
};
use crate::etcd::kube_endpoints::set_arg;
use crate::etcd::probe::{AgentEtcdctl, Probe};
use crate::etcd::rolling::{members_of, Restarted, RollingError, Rollout};
use crate::inventory::{Host, Inventory};
use crate::render::kubeadm::{ETCD_CA_FILE, ETCD_CLIENT_CERT_FILE, ETCD_CLIENT_KEY_FILE};
use crate::runbook::exec::certificates;
use crate::runbook::plan::{apiserver_etcd_client, member_config, Action};
use crate::runbook::{Runbook, RunbookError};

/// The annotation of the API server's manifest that names the digest of its etcd CA file.
pub const CA_ANNOTATION: &str = "haop.io/etcd-ca-sha256";

/// Errors of the migration; each names the step and host.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    #[error(transparent)]
    Record(#[from] super::record::RecordError),
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
    #[error("{step}: {message}")]
    Host { step: String, message: String },
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Write(#[from] crate::fsio::FsioError),
    #[error("the inventory has no etcd host {0} that the adoption record names; put it back, or start over")]
    MissingHost(String),
}

/// What the migration did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Migrated {
    pub restarts: Vec<Restarted>,
    pub steps_done: Vec<String>,
    pub keys_removed: Vec<String>,
    pub seconds: f64,
}

/// A step and its host, as the record keys it.
fn key(step: &str, host: &str) -> String {
    format!("{step}:{host}")
}

/// Every step of the migration of `record`, in order, with the hosts it runs on.
fn steps(record: &AdoptionRecord) -> Vec<(&'static str, Vec<String>)> {
    let members: Vec<String> = record.members.iter().map(|m| m.host.clone()).collect();
    let masters: Vec<String> = record.masters.iter().map(|m| m.host.clone()).collect();
    let mut key_hosts: Vec<String> = Vec::new();
    for (h, keys) in record
        .members
        .iter()
        .map(|m| (&m.host, &m.ca_keys))
        .chain(record.masters.iter().map(|m| (&m.host, &m.ca_keys)))
    {
        if !keys.is_empty() && !key_hosts.contains(h) {
            key_hosts.push(h.clone());
        }
    }
    vec![
        ("trust", members.clone()),
        ("apiserver", masters.clone()),
        ("secure", members.clone()),
        ("drop", members),
        ("apiserver-ca", masters),
        ("cleanup", key_hosts),
    ]
}

/// What each step means, for `haop plan`.
fn meaning(step: &str) -> &'static str {
    match step {
        "trust" => "haop's certificates made (CSR), both CAs trusted, the seed's certificates still served, restart",
        "apiserver" => "kube-apiserver's etcd client certificate from haop's CA, both CAs trusted",
        "secure" => "haop's certificates served, client and peer certificate auth on, restart",
        "drop" => "the seed's CA no longer trusted, restart",
        "apiserver-ca" => "kube-apiserver trusts haop's CA alone",
        "cleanup" => "the seed's CA key removed",
        _ => "",
    }
}

/// One line per step and host: where the migration stands (`haop plan`, `haop adopt`).
pub fn describe(record: &AdoptionRecord, _inv: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    for (step, hosts) in steps(record) {
        for h in hosts {
            let state = match record.state(&key(step, &h)) {
                Some(StepState::Done) => "done",
                Some(StepState::Started) => "started (runs again)",
                None => "to do",
            };
            let keys = if step == "cleanup" {
                let mut k: Vec<String> = record
                    .members
                    .iter()
                    .filter(|m| m.host == h)
                    .flat_map(|m| m.ca_keys.clone())
                    .collect();
                k.extend(
                    record
                        .masters
                        .iter()
                        .filter(|m| m.host == h)
                        .flat_map(|m| m.ca_keys.clone()),
                );
                format!(" ({})", k.join(", "))
            } else {
                String::new()
            };
            out.push(format!(
                "{step:<12} {h:<12} {state:<20} {}{keys}",
                meaning(step)
            ));
        }
    }
    out
}

/// The step each etcd member is at: the first of its steps not done (`done` when all are).
pub fn member_phases(record: &AdoptionRecord) -> Vec<(String, String)> {
    record
        .members
        .iter()
        .map(|m| {
            let phase = ["trust", "secure", "drop"]
                .into_iter()
                .find(|s| !record.is_done(&key(s, &m.host)))
                .unwrap_or("done");
            (m.host.clone(), phase.to_string())
        })
        .collect()
}

struct Ctx<'a> {
    inv: &'a Inventory,
    rb: Runbook,
    roll: Rollout<'a>,
    /// etcdctl on the first member's host with its own (the seed's) certificate: how haop asks
    /// etcd until every member also trusts haop's CA (the `trust` round).
    seed: Option<AgentEtcdctl>,
    progress: &'a (dyn Fn(String) + Sync),
}

impl Ctx<'_> {
    /// The gate before a member's files change (see [`crate::etcd::rolling::whole`]).
    async fn whole(&self, step: &str, host: &str) -> Result<(), MigrateError> {
        let r = match self.seed_probe(step) {
            Some(p) => self.roll.whole(p, host).await,
            None => self.roll.whole(&self.roll.etcd, host).await,
        };
        r.map_err(|source| MigrateError::Rolling {
            step: step.to_string(),
            source: Box::new(source),
        })
    }

    /// The seed's probe while a step of the `trust` round runs; haop's client afterwards.
    fn seed_probe(&self, step: &str) -> Option<&AgentEtcdctl> {
        if step.starts_with("trust:") {
            self.seed.as_ref()
        } else {
            None
        }
    }

    async fn agent(&self, step: &str, host: &str) -> Result<HostAgent, MigrateError> {
        self.roll
            .agents
            .get(host)
            .await
            .map_err(|source| MigrateError::Agent {
                step: step.to_string(),
                source,
            })
    }

    fn host(&self, name: &str) -> Result<&Host, MigrateError> {
        self.inv
            .host(name)
            .ok_or_else(|| MigrateError::MissingHost(name.to_string()))
    }

    async fn restart(
        &self,
        step: &str,
        agent: &HostAgent,
        host: &str,
    ) -> Result<Restarted, MigrateError> {
        // A coordinator that dies here leaves the member's files changed and etcd running on
        // the old ones: the rerun finds the step started and restarts it.
        crate::failpoint::hit("adopt:before-restart");
        let r = match self.seed_probe(step) {
            Some(p) => self.roll.restart(p, agent, host).await,
            None => self.roll.restart(&self.roll.etcd, agent, host).await,
        };
        r.map_err(|source| MigrateError::Rolling {
            step: step.to_string(),
            source: Box::new(source),
        })
    }

    /// The CSR flow for every certificate the plan gives `host`.
    async fn certificates(
        &self,
        step: &str,
        agent: &HostAgent,
        host: &str,
    ) -> Result<(), MigrateError> {
        for s in &self.rb.steps {
            let (Action::Certificate(spec), Some(h)) = (&s.action, s.target.host()) else {
                continue;
            };
            if h != host {
                continue;
            }
            if certificates::run(spec, agent, &self.rb.ctx)
                .await
                .map_err(|source| MigrateError::Certificate {
                    step: step.to_string(),
                    source: Box::new(source),
                })?
            {
                (self.progress)(format!(
                    "{host}: issued {} (key made on the host)",
                    spec.cert_path
                ));
            }
        }
        Ok(())
    }

    async fn write(
        &self,
        step: &str,
        agent: &HostAgent,
        path: &str,
        content: &[u8],
        mode: u32,
    ) -> Result<bool, MigrateError> {
        agent
            .write_file(path, content.to_vec(), mode)
            .await
            .map_err(|source| MigrateError::Agent {
                step: step.to_string(),
                source,
            })
    }
}

fn agent_err(step: &str) -> impl Fn(AgentError) -> MigrateError + '_ {
    move |source| MigrateError::Agent {
        step: step.to_string(),
        source,
    }
}

/// Runs what is left of the migration of `inv`'s cluster; `None` when it was not adopted or
/// is secured already.
pub async fn run(
    state_dir: &Path,
    inv: &Inventory,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Option<Migrated>, MigrateError> {
    let cluster = inv.cluster.as_str().to_string();
    let Some(mut record) = AdoptionRecord::load(state_dir, &cluster)? else {
        return Ok(None);
    };
    if record.finished_unix.is_some() {
        return Ok(None);
    }
    let started = Instant::now();
    let rb = Runbook::load(state_dir, inv.clone())?;
    let agents = Agents::new(rb.ctx.trust.clone(), inv);
    let urls: Vec<String> = members_of(inv).iter().map(|e| e.url.clone()).collect();
    let etcd = EtcdClient::connect(state_dir, &urls, Duration::from_secs(2))
        .await
        .map_err(|source| MigrateError::Etcd {
            step: "connect".into(),
            source,
        })?;
    let seed = match record.members.first() {
        Some(m) => Some(AgentEtcdctl {
            agent: agents
                .get(&m.host)
                .await
                .map_err(|source| MigrateError::Agent {
                    step: "connect".into(),
                    source,
                })?,
            endpoints: urls.clone(),
            cacert: m.trusted_ca_file.clone(),
            cert: m.cert_file.clone(),
            key: m.key_file.clone(),
        }),
        None => None,
    };
    let ctx = Ctx {
        seed,
        inv,
        rb,
        roll: Rollout::new(inv, agents, etcd, progress),
        progress,
    };
    let mut done = Migrated::default();
    for (step, hosts) in steps(&record) {
        for host in hosts {
            let k = key(step, &host);
            if record.is_done(&k) {
                continue;
            }
            record.steps.insert(k.clone(), StepState::Started);
            record.save(state_dir)?;
            progress(format!("{k}: {}", meaning(step)));
            match step {
                "trust" => done.restarts.push(trust(&ctx, &record, &host).await?),
                "apiserver" => apiserver(&ctx, &record, &host).await?,
                "secure" => done.restarts.push(secure(&ctx, &host).await?),
                "drop" => done.restarts.push(drop_seed_ca(&ctx, &host).await?),
                "apiserver-ca" => apiserver_ca(&ctx, &host).await?,
                "cleanup" => done
                    .keys_removed
                    .extend(cleanup(&ctx, &record, &host).await?),
                _ => unreachable!("steps() names these"),
            }
            record.steps.insert(k.clone(), StepState::Done);
            record.save(state_dir)?;
            done.steps_done.push(k);
            crate::failpoint::hit("adopt:after-step");
        }
        if step == "drop" {
            // Every member trusts haop's CA alone: so does haop from now on.
            crate::pki::bundle::set(state_dir, ctx.rb.ctx.etcd_ca.cert_pem())?;
        }
    }
    record.finished_unix = Some(time::OffsetDateTime::now_utc().unix_timestamp());
    record.save(state_dir)?;
    done.seconds = started.elapsed().as_secs_f64();
    progress(format!(
        "adoption of {cluster} complete: client and peer certificate auth on, the seed's CA trusted nowhere ({:.1} s)",
        done.seconds
    ));
    Ok(Some(done))
}

async fn trust(
    ctx: &Ctx<'_>,
    record: &AdoptionRecord,
    host: &str,
) -> Result<Restarted, MigrateError> {
    let step = key("trust", host);
    ctx.whole(&step, host).await?;
    let h = ctx.host(host)?;
    let seed = record
        .member(host)
        .ok_or_else(|| MigrateError::MissingHost(host.to_string()))?;
    let agent = ctx.agent(&step, host).await?;
    // haop names members by their address: the other members dial it there from now on.
    let want = vec![ctx.inv.etcd_peer_url(h)];
    let probe = ctx.seed.as_ref().ok_or_else(|| MigrateError::Host {
        step: step.clone(),
        message: "the adoption record names no etcd member".into(),
    })?;
    let list = probe.members().await.map_err(|source| MigrateError::Etcd {
        step: step.clone(),
        source,
    })?;
    if let Some(m) = list.iter().find(|m| m.id == seed.member_id) {
        if m.peer_urls != want {
            probe
                .member_update(seed.member_id, &want)
                .await
                .map_err(|source| MigrateError::Etcd {
                    step: step.clone(),
                    source,
                })?;
            (ctx.progress)(format!(
                "{host}: peer URL {} -> {}",
                m.peer_urls.join(","),
                want[0]
            ));
        }
    }
    ctx.certificates(&step, &agent, host).await?;
    let cfg = member_config(ctx.inv, h);
    let crl = crl_content(ctx);
    ctx.write(&step, &agent, &client_crl_path(), crl.as_bytes(), 0o644)
        .await?;
    let tls = TlsSettings {
        cert_file: seed.cert_file.clone(),
        key_file: seed.key_file.clone(),
        trusted_ca_file: cfg.cert("ca.crt"),
        peer_cert_file: seed.peer_cert_file.clone(),
        peer_key_file: seed.peer_key_file.clone(),
        peer_trusted_ca_file: cfg.cert("ca.crt"),
        // As the cluster had them (the `secure` step turns them on).
        client_cert_auth: seed.client_cert_auth,
        peer_client_cert_auth: seed.peer_client_cert_auth,
        client_crl_file: None,
    };
    ctx.write(
        &step,
        &agent,
        ENV_FILE,
        cfg.env_file_with(&tls).as_bytes(),
        0o640,
    )
    .await?;
    ctx.write(
        &step,
        &agent,
        BOOTSTRAP_ENV_FILE,
        SEALED_BOOTSTRAP_ENV.as_bytes(),
        0o640,
    )
    .await?;
    agent
        .ensure_unit(
            UNIT_NAME,
            &cfg.unit_file(),
            std::slice::from_ref(&cfg.data_dir),
        )
        .await
        .map_err(agent_err(&step))?;
    ctx.restart(&step, &agent, host).await
}

fn crl_content(ctx: &Ctx<'_>) -> String {
    planned_file(&ctx.rb, &client_crl_path())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_default()
}

/// The content the runbook gives the file at `path` (the first host's, for files that are
/// the same on every host such as the revocation list).
pub fn planned_file(rb: &Runbook, path: &str) -> Option<Vec<u8>> {
    rb.steps.iter().find_map(|s| match &s.action {
        Action::File(crate::runbook::plan::FileAction::Content {
            path: p, content, ..
        }) if p == path => Some(content.clone()),
        _ => None,
    })
}

async fn apiserver(ctx: &Ctx<'_>, record: &AdoptionRecord, host: &str) -> Result<(), MigrateError> {
    let step = key("apiserver", host);
    let h = ctx.host(host)?;
    let agent = ctx.agent(&step, host).await?;
    let spec = apiserver_etcd_client(h);
    if certificates::run(&spec, &agent, &ctx.rb.ctx)
        .await
        .map_err(|source| MigrateError::Certificate {
            step: step.clone(),
            source: Box::new(source),
        })?
    {
        (ctx.progress)(format!(
            "{host}: issued {} (key made on the host)",
            spec.cert_path
        ));
    }
    let Some(manifest) = record
        .masters
        .iter()
        .find(|m| m.host == host)
        .and_then(|m| m.manifest.clone())
    else {
        return Ok(());
    };
    let Some((text, mode)) = agent.read_text(&manifest).await.map_err(agent_err(&step))? else {
        return Err(MigrateError::Host {
            step,
            message: format!("{manifest} is gone since `haop adopt`"),
        });
    };
    let mut new = text.clone();
    for (flag, value) in [
        ("etcd-cafile", ETCD_CA_FILE.to_string()),
        ("etcd-certfile", ETCD_CLIENT_CERT_FILE.to_string()),
        ("etcd-keyfile", ETCD_CLIENT_KEY_FILE.to_string()),
        ("etcd-servers", ctx.inv.etcd_client_urls().join(",")),
    ] {
        new = set_arg(&new, flag, &value).unwrap_or(new);
    }
    if new != text {
        ctx.write(&step, &agent, &manifest, new.as_bytes(), mode)
            .await?;
        (ctx.progress)(format!(
            "{host}: {manifest} names haop's etcd client certificate and CA (kubelet restarts kube-apiserver)"
        ));
    }
    Ok(())
}

async fn secure(ctx: &Ctx<'_>, host: &str) -> Result<Restarted, MigrateError> {
    let step = key("secure", host);
    ctx.whole(&step, host).await?;
    let h = ctx.host(host)?;
    let agent = ctx.agent(&step, host).await?;
    // A rerun after a crash: the certificates are still there (issued in the trust step).
    ctx.certificates(&step, &agent, host).await?;
    let cfg = member_config(ctx.inv, h);
    ctx.write(&step, &agent, ENV_FILE, cfg.env_file().as_bytes(), 0o640)
        .await?;
    ctx.restart(&step, &agent, host).await
}

async fn drop_seed_ca(ctx: &Ctx<'_>, host: &str) -> Result<Restarted, MigrateError> {
    let step = key("drop", host);
    ctx.whole(&step, host).await?;
    let h = ctx.host(host)?;
    let agent = ctx.agent(&step, host).await?;
    let cfg = member_config(ctx.inv, h);
    ctx.write(
        &step,
        &agent,
        &cfg.cert("ca.crt"),
        ctx.rb.ctx.etcd_ca.cert_pem().as_bytes(),
        0o644,
    )
    .await?;
    ctx.restart(&step, &agent, host).await
}

/// `manifest` with the annotation [`CA_ANNOTATION`] set to `value` in its metadata.
pub fn set_annotation(manifest: &str, value: &str) -> String {
    let line = format!("    {CA_ANNOTATION}: \"{value}\"\n");
    let mut out = String::new();
    let mut lines = manifest.split_inclusive('\n').peekable();
    let mut placed = false;
    while let Some(l) = lines.next() {
        if placed || l.trim_start().starts_with(&format!("{CA_ANNOTATION}:")) {
            if !l.trim_start().starts_with(&format!("{CA_ANNOTATION}:")) {
                out.push_str(l);
            }
            continue;
        }
        out.push_str(l);
        if l.trim_end() == "metadata:" {
            if lines
                .peek()
                .is_some_and(|n| n.trim_end() == "  annotations:")
            {
                out.push_str(lines.next().expect("peeked"));
            } else {
                out.push_str("  annotations:\n");
            }
            out.push_str(&line);
            placed = true;
        }
    }
    out
}

async fn apiserver_ca(ctx: &Ctx<'_>, host: &str) -> Result<(), MigrateError> {
    let step = key("apiserver-ca", host);
    let agent = ctx.agent(&step, host).await?;
    let ca = ctx.rb.ctx.etcd_ca.cert_pem();
    ctx.write(&step, &agent, ETCD_CA_FILE, ca.as_bytes(), 0o644)
        .await?;
    if let Some((text, mode)) = agent
        .read_text(crate::adopt::discover::APISERVER_MANIFEST)
        .await
        .map_err(agent_err(&step))?
    {
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ca.as_bytes()));
        let new = set_annotation(&text, &digest);
        if new != text {
            ctx.write(
                &step,
                &agent,
                crate::adopt::discover::APISERVER_MANIFEST,
                new.as_bytes(),
                mode,
            )
            .await?;
            (ctx.progress)(format!(
                "{host}: kube-apiserver trusts haop's etcd CA alone (restarted by kubelet)"
            ));
        }
    }
    Ok(())
}

async fn cleanup(
    ctx: &Ctx<'_>,
    record: &AdoptionRecord,
    host: &str,
) -> Result<Vec<String>, MigrateError> {
    let step = key("cleanup", host);
    let agent = ctx.agent(&step, host).await?;
    let mut keys: Vec<String> = record
        .members
        .iter()
        .filter(|m| m.host == host)
        .flat_map(|m| m.ca_keys.clone())
        .collect();
    keys.extend(
        record
            .masters
            .iter()
            .filter(|m| m.host == host)
            .flat_map(|m| m.ca_keys.clone()),
    );
    keys.dedup();
    let mut removed = Vec::new();
    for k in keys {
        agent.remove_file(&k).await.map_err(agent_err(&step))?;
        if agent.exists(&k).await.map_err(agent_err(&step))? {
            return Err(MigrateError::Host {
                step,
                message: format!("{k} is still there after its removal"),
            });
        }
        (ctx.progress)(format!("{host}: removed the seed's CA key {k}"));
        removed.push(format!("{host}:{k}"));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_is_added_then_replaced() {
        let m = "apiVersion: v1\nkind: Pod\nmetadata:\n  annotations:\n    kubeadm.kubernetes.io/x: y\n  name: kube-apiserver\nspec: {}\n";
        let once = set_annotation(m, "aa");
        assert!(once.contains("  annotations:\n    haop.io/etcd-ca-sha256: \"aa\"\n    kubeadm.kubernetes.io/x: y\n"), "{once}");
        let twice = set_annotation(&once, "bb");
        assert!(twice.contains("haop.io/etcd-ca-sha256: \"bb\""));
        assert!(!twice.contains("\"aa\""));
        assert_eq!(twice.matches("annotations:").count(), 1);
        let bare = set_annotation("kind: Pod\nmetadata:\n  name: x\n", "cc");
        assert_eq!(
            bare,
            "kind: Pod\nmetadata:\n  annotations:\n    haop.io/etcd-ca-sha256: \"cc\"\n  name: x\n"
        );
    }
}
