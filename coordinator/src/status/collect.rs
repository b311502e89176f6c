//! The IO half of `haop status`: one task per host and one per etcd endpoint, all at once.
//!
//! Every task has the same deadline (start + timeout): connecting, GetFacts and the other calls
//! of a host share it, so a host that accepts the connection and then hangs costs no more than
//! one that refuses it. etcd is asked through one single-endpoint client per member, so the
//! member list never waits for a dead first endpoint either. The Kubernetes API servers are
//! asked alongside, under the same deadline (`kube.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haop_proto::v1 as pb;
use time::OffsetDateTime;
use tokio::time::Instant;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::agent_io::{connect_agent, read_file, rpc_error};
use super::{
    assess, db_quota_bytes, CertSummary, DriftRow, EtcdSection, HostStatus, MaybeFile,
    MemberStatus, StatusOptions, StatusReport, UnitRow, VipMaster, VipSection, LATE,
    SCHEMA_VERSION,
};
use crate::certs::{host_cert_paths, kubeadm_cert_paths, read_certificates, state_dir_rows};
use crate::etcd::api::{EndpointStatus, EtcdClient, Member};
use crate::inventory::{Host, Inventory, Role};
use crate::pki::{inspect, AGENT_CA};
use crate::render::{keepalived, nodeprep};
use crate::trust::pki_dir;

/// Why no status could be collected at all (per-host failures are part of the report).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read {path} (run `haop init`, or pass a client certificate and key)")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one host's agent answered.
struct HostProbe {
    facts: Result<(pb::Facts, i64, Duration), String>,
    units: Vec<(String, Result<pb::UnitStatus, String>)>,
    /// `(path, pem)` read, or `path: error`.
    certs: Vec<(String, Result<String, String>)>,
    modules: Option<MaybeFile>,
    sysctls: Option<MaybeFile>,
    /// Moved-aside etcd data dirs (count, bytes), on etcd hosts that answered.
    moved_aside: Option<(u32, u64)>,
    /// The revocation list this run installed on the agent, when it lagged: the generation it
    /// holds now, or why it did not take it.
    pushed: Option<Result<u64, String>>,
}

/// What one etcd endpoint answered.
struct EndpointProbe {
    status: Result<EndpointStatus, String>,
    health: Result<Duration, String>,
    members: Result<Vec<Member>, String>,
}

/// Asks every host and etcd endpoint of `inventory`, concurrently, each within
/// `options.timeout`, and answers the report with its problems and verdict.
pub async fn collect(
    state_dir: &Path,
    inventory: &Inventory,
    options: &StatusOptions,
) -> Result<StatusReport, StatusError> {
    let tls = client_tls(state_dir, options.identity.as_ref())?;
    // The state dir's revocation list, pushed to agents that lag when status runs as haop's
    // admin (a reader may not install it, and need not read it).
    let revocations = crate::identity::IdentityStore::new(state_dir)
        .generation(crate::identity::Channel::Agent)
        .ok();
    let crl = match (&options.identity, revocations) {
        (None, Some(g)) if g > 0 => crate::identity::crl::agent_list(state_dir)
            .ok()
            .flatten()
            .map(std::sync::Arc::new),
        _ => None,
    };
    let timeout = options.timeout;
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    let deadline = started + timeout;

    let mut hosts_set = tokio::task::JoinSet::new();
    for (i, h) in inventory.hosts.iter().enumerate() {
        let units = expected_units(inventory, h);
        let tls = tls.clone();
        let agent = (h.name.as_str().to_string(), h.agent.as_str().to_string());
        let mut cert_paths = host_cert_paths(h);
        if inventory.kubernetes.enabled && h.has_role(Role::Master) {
            cert_paths.extend(kubeadm_cert_paths());
        }
        let node = h.has_role(Role::Master) || h.has_role(Role::Worker);
        let crl = crl.clone();
        hosts_set.spawn(async move {
            let p = probe_host(tls, agent, units, cert_paths, node, crl, timeout, deadline).await;
            (i, p)
        });
    }
    let mut etcd_set = tokio::task::JoinSet::new();
    for (i, h) in inventory.etcd_hosts().into_iter().enumerate() {
        let url = inventory.etcd_client_url(h);
        let state_dir = state_dir.to_path_buf();
        etcd_set.spawn(async move { (i, probe_etcd(state_dir, url, timeout, deadline).await) });
    }
    let kube = super::kube::probe(tls.clone(), inventory, timeout, deadline);
    let (mut host_probes, mut etcd_probes, kubernetes) =
        tokio::join!(hosts_set.join_all(), etcd_set.join_all(), kube);
    host_probes.sort_by_key(|(i, _)| *i);
    etcd_probes.sort_by_key(|(i, _)| *i);
    let host_probes: Vec<HostProbe> = host_probes.into_iter().map(|(_, p)| p).collect();
    let etcd_probes: Vec<EndpointProbe> = etcd_probes.into_iter().map(|(_, p)| p).collect();

    let mut report = StatusReport {
        schema_version: SCHEMA_VERSION,
        cluster: inventory.cluster.to_string(),
        generated_at: now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        elapsed_ms: 0,
        timeout_ms: timeout.as_millis() as u64,
        revocation_generation: revocations,
        verdict: super::Verdict {
            health: super::Health::Healthy,
            exit_code: 0,
            summary: String::new(),
        },
        problems: Vec::new(),
        hosts: hosts_section(inventory, &host_probes),
        etcd: etcd_section(inventory, &etcd_probes),
        units: units_section(inventory, &host_probes),
        vip: vip_section(inventory, &host_probes),
        certificates: certs_section(state_dir, inventory, &host_probes, now),
        drift: drift_section(inventory, &host_probes),
        kubernetes,
        snapshots: Some(super::SnapshotsSection::read(
            state_dir,
            inventory.cluster.as_str(),
            inventory.etcd.snapshots.stale_after.duration(),
            now.unix_timestamp(),
        )),
    };
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    let (problems, verdict) = assess(&report);
    report.problems = problems;
    report.verdict = verdict;
    Ok(report)
}

/// TLS for the agents: the state dir's agent CA, and the given client certificate or haop's
/// admin certificate. Reads no CA key, so a machine with only a reader certificate can ask.
fn client_tls(
    state_dir: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<ClientTlsConfig, StatusError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|source| StatusError::Credentials { path, source })
    };
    // The agent CA, or both CAs while the agent CA is being rotated.
    let ca = match crate::trust::rotation::agent_roots_pem(state_dir) {
        Ok(pem) => pem,
        Err(_) => read(pki_dir(state_dir).join(format!("{AGENT_CA}.crt")))?,
    };
    let (cert, key) = match identity {
        Some((c, k)) => (read(c.clone())?, read(k.clone())?),
        None => {
            let (c, k) = crate::trust::rotation::admin_paths(state_dir);
            (read(c)?, read(k)?)
        }
    };
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key)))
}

/// The units `host` should run under this inventory.
pub(super) fn expected_units(inventory: &Inventory, host: &Host) -> Vec<String> {
    let mut units = Vec::new();
    if host.has_role(Role::Etcd) {
        units.push(crate::etcd::config::UNIT_NAME.to_string());
    }
    if host.has_role(Role::Master) && inventory.vip.is_some() {
        units.push(keepalived::UNIT_NAME.to_string());
    }
    if inventory.kubernetes.enabled && (host.has_role(Role::Master) || host.has_role(Role::Worker))
    {
        units.push("containerd.service".to_string());
        units.push("kubelet.service".to_string());
    }
    units
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// One host: facts, units, certificates and (on nodes) drift; `agent` is (host, endpoint).
/// With `crl` (generation, PEM), an agent enforcing an older list is given this one.
#[allow(clippy::too_many_arguments)]
async fn probe_host(
    tls: ClientTlsConfig,
    (host, endpoint): (String, String),
    units: Vec<String>,
    cert_paths: Vec<String>,
    node: bool,
    crl: Option<std::sync::Arc<(u64, String)>>,
    timeout: Duration,
    deadline: Instant,
) -> HostProbe {
    let unreachable = |e: String| HostProbe {
        facts: Err(e),
        units: Vec::new(),
        certs: Vec::new(),
        modules: None,
        sysctls: None,
        moved_aside: None,
        pushed: None,
    };
    let client = match connect_agent(tls, &host, &endpoint, timeout, deadline).await {
        Ok(c) => c,
        Err(e) => return unreachable(e),
    };

    let facts = async {
        let before = unix_ms_now();
        let t0 = Instant::now();
        let f = client.facts().await.map_err(|e| rpc_error(&e))?;
        let latency = t0.elapsed();
        let after = unix_ms_now();
        let skew = f.now_unix_ms - (before + after) / 2;
        Ok::<_, String>((f, skew, latency))
    };
    let unit_states = async {
        let mut out = Vec::new();
        for u in &units {
            let r = client.unit_status(u).await.map_err(|e| rpc_error(&e));
            out.push((u.clone(), r));
        }
        out
    };
    let certs = async {
        let mut out = Vec::new();
        match client.who_am_i().await {
            Ok(w) => {
                let pem = w.serving_cert_pem;
                if !pem.is_empty() {
                    out.push(("agent serving certificate".to_string(), Ok(pem)));
                }
            }
            Err(e) => out.push(("agent serving certificate".to_string(), Err(rpc_error(&e)))),
        }
        for path in cert_paths {
            match read_certificates(&client, &path).await {
                Ok(Some(pem)) => out.push((path, Ok(pem))),
                Ok(None) => {}
                // summarize() puts the path before the error.
                Err(e) => out.push((path, Err(rpc_error(&e)))),
            }
        }
        out
    };
    let etcd_host = units.iter().any(|u| u == crate::etcd::config::UNIT_NAME);
    let moved_aside = async {
        if !etcd_host {
            return None;
        }
        let copies = client
            .wiped_data_dirs(crate::etcd::config::UNIT_NAME)
            .await
            .ok()?;
        Some((copies.len() as u32, copies.iter().map(|c| c.bytes).sum()))
    };
    let drift = async {
        if !node {
            return (None, None);
        }
        let name = nodeprep::FILE_NAME;
        let m = read_file(&client, &format!("/etc/modules-load.d/{name}.conf")).await;
        let s = read_file(&client, &format!("/etc/sysctl.d/{name}.conf")).await;
        (Some(m), Some(s))
    };
    let (facts, unit_states, certs, drift, moved_aside) = tokio::join!(
        tokio::time::timeout_at(deadline, facts),
        tokio::time::timeout_at(deadline, unit_states),
        tokio::time::timeout_at(deadline, certs),
        tokio::time::timeout_at(deadline, drift),
        tokio::time::timeout_at(deadline, moved_aside),
    );
    let moved_aside = moved_aside.ok().flatten();
    let mut facts = facts.unwrap_or_else(|_| Err(format!("GetFacts: {LATE}")));
    let mut pushed = None;
    if let (Ok((f, _, _)), Some(crl)) = (facts.as_mut(), crl) {
        if f.revocation_generation < crl.0 {
            let install = client.install_revocations(&crl.1);
            pushed = Some(match tokio::time::timeout_at(deadline, install).await {
                Ok(Ok(r)) => {
                    f.revocation_generation = r.generation;
                    Ok(r.generation)
                }
                Ok(Err(e)) => Err(rpc_error(&e)),
                Err(_) => Err(format!("InstallRevocations: {LATE}")),
            });
        }
    }
    let units = unit_states.unwrap_or_else(|_| {
        units
            .iter()
            .map(|u| (u.clone(), Err(format!("UnitStatus: {LATE}"))))
            .collect()
    });
    let certs = certs.unwrap_or_else(|_| vec![("certificates".into(), Err(LATE.into()))]);
    let (modules, sysctls) = drift.unwrap_or_else(|_| {
        if node {
            (Some(Err(LATE.into())), Some(Err(LATE.into())))
        } else {
            (None, None)
        }
    });
    HostProbe {
        facts,
        units,
        certs,
        modules,
        sysctls,
        moved_aside,
        pushed,
    }
}

/// A health read slower than this probably waited for an election.
const ELECTION_HINT: Duration = Duration::from_millis(300);

async fn probe_etcd(
    state_dir: PathBuf,
    url: String,
    timeout: Duration,
    deadline: Instant,
) -> EndpointProbe {
    let client = match EtcdClient::connect(&state_dir, std::slice::from_ref(&url), timeout).await {
        Ok(c) => c,
        Err(e) => {
            let e = crate::error::short_error(&e);
            return EndpointProbe {
                status: Err(e.clone()),
                health: Err(e.clone()),
                members: Err(e),
            };
        }
    };
    let late = |what: &str| format!("{what} of {url}: {LATE}");
    let (status, health, members) = tokio::join!(
        tokio::time::timeout_at(deadline, client.status_of(&url)),
        tokio::time::timeout_at(deadline, client.health(&url)),
        tokio::time::timeout_at(deadline, client.member_list()),
    );
    let mut status = match status {
        Ok(r) => r.map_err(|e| crate::error::short_error(&e)),
        Err(_) => Err(late("status")),
    };
    // A health read that waited was most likely held by an election (etcd answers it once a
    // leader is elected): the status asked at the start names the old leader or none, so ask
    // again for the leader that answered it.
    if let (Ok(s), Ok(Ok(latency))) = (&status, &health) {
        if s.leader_id == 0 || *latency > ELECTION_HINT {
            if let Ok(Ok(fresh)) = tokio::time::timeout_at(deadline, client.status_of(&url)).await {
                status = Ok(fresh);
            }
        }
    }
    EndpointProbe {
        status,
        health: match health {
            Ok(r) => r.map_err(|e| crate::error::short_error(&e)),
            Err(_) => Err(late("health")),
        },
        members: match members {
            Ok(r) => r.map_err(|e| crate::error::short_error(&e)),
            Err(_) => Err(late("member list")),
        },
    }
}

fn hosts_section(inventory: &Inventory, probes: &[HostProbe]) -> Vec<HostStatus> {
    inventory
        .hosts
        .iter()
        .zip(probes)
        .map(|(h, p)| {
            let mut s = HostStatus {
                name: h.name.to_string(),
                roles: h.roles.iter().map(|r| r.to_string()).collect(),
                agent_endpoint: h.agent.as_str().to_string(),
                reachable: p.facts.is_ok(),
                error: p.facts.as_ref().err().cloned(),
                agent_version: None,
                uptime_seconds: None,
                service_manager: None,
                clock_skew_ms: None,
                latency_ms: None,
                moved_aside: p
                    .moved_aside
                    .map(|(count, bytes)| super::MovedAside { count, bytes }),
                revocation_generation: None,
                revocation_pushed: p.pushed.as_ref().is_some_and(|r| r.is_ok()),
                revocation_error: p.pushed.as_ref().and_then(|r| r.clone().err()),
            };
            if let Ok((f, skew, latency)) = &p.facts {
                s.agent_version = Some(f.agent_version.clone());
                s.uptime_seconds = Some(f.uptime_seconds);
                s.service_manager = Some(f.service_manager.clone());
                s.clock_skew_ms = Some(*skew);
                s.latency_ms = Some(latency.as_millis() as u64);
                s.revocation_generation = Some(f.revocation_generation);
            }
            s
        })
        .collect()
}

fn etcd_section(inventory: &Inventory, probes: &[EndpointProbe]) -> EtcdSection {
    let hosts = inventory.etcd_hosts();
    let quota = db_quota_bytes(&inventory.etcd.extra_flags);
    // The leader most members name.
    let mut votes: HashMap<u64, usize> = HashMap::new();
    for s in probes.iter().filter_map(|p| p.status.as_ref().ok()) {
        if s.leader_id != 0 {
            *votes.entry(s.leader_id).or_default() += 1;
        }
    }
    let leader_id = votes
        .iter()
        .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
        .map(|(id, _)| *id);
    // The member list: from the leader's endpoint when it answered, else from any.
    let leader_probe = probes.iter().find(|p| {
        p.status
            .as_ref()
            .is_ok_and(|s| Some(s.member_id) == leader_id)
    });
    let members: Result<Vec<Member>, String> = leader_probe
        .and_then(|p| p.members.as_ref().ok().cloned())
        .or_else(|| probes.iter().find_map(|p| p.members.as_ref().ok().cloned()))
        .ok_or_else(|| {
            probes
                .iter()
                .filter_map(|p| p.members.as_ref().err().cloned())
                .collect::<Vec<_>>()
                .join("; ")
        });
    let leader_index = leader_probe
        .and_then(|p| p.status.as_ref().ok())
        .map(|s| s.raft_index)
        .or_else(|| {
            probes
                .iter()
                .filter_map(|p| p.status.as_ref().ok().map(|s| s.raft_index))
                .max()
        });

    let mut used: BTreeSet<u64> = BTreeSet::new();
    let mut rows = Vec::new();
    for (h, p) in hosts.iter().zip(probes) {
        let peer = inventory.etcd_peer_url(h);
        let status = p.status.as_ref().ok();
        let member = members.as_ref().ok().and_then(|ms| {
            ms.iter()
                .find(|m| status.is_some_and(|s| s.member_id == m.id))
                .or_else(|| ms.iter().find(|m| m.peer_urls.contains(&peer)))
                .or_else(|| ms.iter().find(|m| m.name == h.name.as_str()))
        });
        if let Some(m) = member {
            used.insert(m.id);
        }
        let id = member.map(|m| m.id).or(status.map(|s| s.member_id));
        let in_list = member.is_some();
        let healthy = p.health.is_ok() && (members.is_err() || in_list);
        let error = match (&p.health, &p.status) {
            (Err(e), _) => Some(e.clone()),
            (Ok(_), Err(e)) => Some(e.clone()),
            (Ok(_), Ok(_)) if !healthy => {
                Some("answers, but is not in the cluster's member list".to_string())
            }
            _ => None,
        };
        let peer_urls = member.map(|m| m.peer_urls.clone()).unwrap_or_default();
        rows.push(MemberStatus {
            name: h.name.to_string(),
            in_inventory: true,
            in_member_list: in_list,
            id: id.map(|i| format!("{i:x}")),
            endpoint: Some(inventory.etcd_client_url(h)),
            healthy,
            health_latency_ms: p
                .health
                .as_ref()
                .ok()
                .map(|d| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
            error,
            is_leader: id.is_some() && id == leader_id,
            is_learner: member
                .map(|m| m.is_learner)
                .or(status.map(|s| s.is_learner))
                .unwrap_or(false),
            raft_term: status.map(|s| s.raft_term),
            raft_index: status.map(|s| s.raft_index),
            raft_applied_index: status.map(|s| s.raft_applied_index),
            raft_lag: status
                .zip(leader_index)
                .map(|(s, l)| l.saturating_sub(s.raft_index)),
            db_size_bytes: status.map(|s| s.db_size),
            db_size_in_use_bytes: status.map(|s| s.db_size_in_use),
            db_quota_bytes: quota,
            version: status.map(|s| s.version.clone()),
            alarms: status
                .map(|s| s.errors.iter().map(|e| explain_alarm(e)).collect())
                .unwrap_or_default(),
            peer_urls_match: member.is_some_and(|m| m.peer_urls == [peer.clone()]),
            peer_urls,
            expected_peer_url: Some(peer),
        });
    }
    if let Ok(ms) = &members {
        for m in ms.iter().filter(|m| !used.contains(&m.id)) {
            rows.push(MemberStatus {
                name: if m.name.is_empty() {
                    format!("(unstarted {:x})", m.id)
                } else {
                    m.name.clone()
                },
                in_inventory: false,
                in_member_list: true,
                id: Some(format!("{:x}", m.id)),
                endpoint: m.client_urls.first().cloned(),
                healthy: false,
                health_latency_ms: None,
                error: None,
                is_leader: Some(m.id) == leader_id,
                is_learner: m.is_learner,
                raft_term: None,
                raft_index: None,
                raft_applied_index: None,
                raft_lag: None,
                db_size_bytes: None,
                db_size_in_use_bytes: None,
                db_quota_bytes: quota,
                version: None,
                alarms: Vec::new(),
                peer_urls: m.peer_urls.clone(),
                expected_peer_url: None,
                peer_urls_match: false,
            });
        }
    }
    let expected = hosts.len();
    let healthy = rows
        .iter()
        .filter(|m| m.in_inventory && m.healthy && !m.is_learner)
        .count();
    let needed = expected / 2 + 1;
    let answering = probes.iter().filter(|p| p.status.is_ok()).count();
    // The leader the answering members name answers too, or nobody leads.
    let leader_answers = leader_probe.is_some();
    let electing = expected > 0 && healthy < needed && answering >= needed && !leader_answers;
    let leader = leader_id.map(|id| {
        rows.iter()
            .find(|m| m.id.as_deref() == Some(&format!("{id:x}")))
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("{id:x}"))
    });
    EtcdSection {
        expected_members: expected,
        healthy_members: healthy,
        quorum_needed: needed,
        has_quorum: expected > 0 && healthy >= needed,
        answering_members: answering,
        electing,
        leader_id: leader_id.map(|id| format!("{id:x}")),
        leader,
        member_list_error: members.err(),
        members: rows,
    }
}

fn units_section(inventory: &Inventory, probes: &[HostProbe]) -> Vec<UnitRow> {
    let mut rows = Vec::new();
    for (h, p) in inventory.hosts.iter().zip(probes) {
        let host = h.name.to_string();
        if let Err(e) = &p.facts {
            for u in expected_units(inventory, h) {
                rows.push(UnitRow {
                    host: host.clone(),
                    unit: u,
                    installed: None,
                    active_state: None,
                    sub_state: None,
                    restart_count: None,
                    main_pid: None,
                    last_exit: None,
                    error: Some(format!("host unreachable: {e}")),
                });
            }
            continue;
        }
        for (u, r) in &p.units {
            rows.push(match r {
                Ok(s) => UnitRow {
                    host: host.clone(),
                    unit: u.clone(),
                    installed: Some(s.installed),
                    active_state: Some(s.active_state.clone()),
                    sub_state: Some(s.sub_state.clone()),
                    restart_count: Some(s.restart_count),
                    main_pid: Some(s.main_pid),
                    last_exit: Some(s.last_exit.clone()).filter(|x| !x.is_empty()),
                    error: None,
                },
                Err(e) => UnitRow {
                    host: host.clone(),
                    unit: u.clone(),
                    installed: None,
                    active_state: None,
                    sub_state: None,
                    restart_count: None,
                    main_pid: None,
                    last_exit: None,
                    error: Some(e.clone()),
                },
            });
        }
    }
    rows
}

fn vip_section(inventory: &Inventory, probes: &[HostProbe]) -> Option<VipSection> {
    let vip = inventory.vip.as_ref()?;
    let address = vip.address.to_string();
    let mut masters = Vec::new();
    for (h, p) in inventory.hosts.iter().zip(probes) {
        if !h.has_role(Role::Master) {
            continue;
        }
        let holds = p.facts.as_ref().ok().map(|(f, _, _)| {
            f.interfaces.iter().any(|i| {
                i.addresses
                    .iter()
                    .any(|a| a.split('/').next() == Some(address.as_str()))
            })
        });
        let keepalived = p
            .units
            .iter()
            .find(|(u, _)| u == keepalived::UNIT_NAME)
            .and_then(|(_, r)| r.as_ref().ok())
            .map(|s| s.active_state.clone());
        let vrrp_state = match (holds, keepalived.as_deref()) {
            (Some(true), Some("active")) => "MASTER",
            (Some(false), Some("active")) => "BACKUP",
            (Some(_), Some(_)) => "STOPPED",
            _ => "UNKNOWN",
        };
        masters.push(VipMaster {
            host: h.name.to_string(),
            reachable: p.facts.is_ok(),
            holds_vip: holds,
            keepalived,
            vrrp_state: vrrp_state.to_string(),
        });
    }
    let holders: Vec<String> = masters
        .iter()
        .filter(|m| m.holds_vip == Some(true))
        .map(|m| m.host.clone())
        .collect();
    Some(VipSection {
        address,
        interface: vip.interface.to_string(),
        holder: (holders.len() == 1).then(|| holders[0].clone()),
        holders,
        masters,
    })
}

fn summarize(
    location: &str,
    pems: &[(String, Result<String, String>)],
    now: OffsetDateTime,
) -> CertSummary {
    let mut summary = CertSummary {
        location: location.to_string(),
        certificates: 0,
        soonest_path: None,
        soonest_subject: None,
        soonest_not_after: None,
        days_left: None,
        errors: Vec::new(),
    };
    let mut soonest: Option<(String, crate::pki::CertInfo)> = None;
    for (path, pem) in pems {
        let infos = match pem {
            Ok(pem) => match inspect(pem) {
                Ok(i) => i,
                Err(e) => {
                    summary.errors.push(format!("{path}: {e}"));
                    continue;
                }
            },
            Err(e) => {
                summary.errors.push(format!("{path}: {e}"));
                continue;
            }
        };
        for info in infos {
            summary.certificates += 1;
            if soonest
                .as_ref()
                .is_none_or(|(_, s)| info.not_after < s.not_after)
            {
                soonest = Some((path.clone(), info));
            }
        }
    }
    if let Some((path, info)) = soonest {
        summary.soonest_path = Some(path);
        summary.soonest_subject = Some(info.subject.clone());
        summary.soonest_not_after = info
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        summary.days_left = Some(info.days_left(now));
    }
    summary
}

fn certs_section(
    state_dir: &Path,
    inventory: &Inventory,
    probes: &[HostProbe],
    now: OffsetDateTime,
) -> Vec<CertSummary> {
    let mut out = Vec::new();
    // The state dir's certificates through certs.rs, re-read as PEM for one summary.
    let local: Vec<(String, Result<String, String>)> = state_dir_rows(state_dir, now)
        .into_iter()
        .map(|r| r.path)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|p| {
            let pem = std::fs::read_to_string(&p).map_err(|e| e.to_string());
            (p, pem)
        })
        .collect();
    out.push(summarize("state-dir", &local, now));
    for (h, p) in inventory.hosts.iter().zip(probes) {
        if p.facts.is_err() {
            continue;
        }
        out.push(summarize(h.name.as_str(), &p.certs, now));
    }
    out
}

/// Non-comment lines of a drop-in file.
fn content_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
}

pub(super) fn modules_drift(file: &MaybeFile) -> (Option<bool>, String) {
    let path = format!("/etc/modules-load.d/{}.conf", nodeprep::FILE_NAME);
    match file {
        Err(e) => (None, e.clone()),
        Ok(None) => (Some(false), format!("{path} is missing")),
        Ok(Some(text)) => {
            let have: BTreeSet<&str> = content_lines(text).collect();
            let missing: Vec<&str> = nodeprep::MODULES
                .iter()
                .copied()
                .filter(|m| !have.contains(m))
                .collect();
            if missing.is_empty() {
                (
                    Some(true),
                    format!("{} modules persisted", nodeprep::MODULES.len()),
                )
            } else {
                (Some(false), format!("{path} lacks {}", missing.join(", ")))
            }
        }
    }
}

pub(super) fn sysctls_drift(file: &MaybeFile) -> (Option<bool>, String) {
    let path = format!("/etc/sysctl.d/{}.conf", nodeprep::FILE_NAME);
    match file {
        Err(e) => (None, e.clone()),
        Ok(None) => (Some(false), format!("{path} is missing")),
        Ok(Some(text)) => {
            let have: BTreeMap<&str, &str> = content_lines(text)
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            let mut wrong = Vec::new();
            for (k, v) in nodeprep::SYSCTLS {
                match have.get(k) {
                    Some(got) if *got == v => {}
                    Some(got) => wrong.push(format!("{k} = {got} (apply sets {v})")),
                    None => wrong.push(format!("{k} missing")),
                }
            }
            if wrong.is_empty() {
                (
                    Some(true),
                    format!("{} sysctls persisted", nodeprep::SYSCTLS.len()),
                )
            } else {
                (Some(false), format!("{path}: {}", wrong.join(", ")))
            }
        }
    }
}

pub(super) fn swap_drift(swap: Option<&pb::Swap>) -> (Option<bool>, String) {
    let Some(s) = swap else {
        return (None, "the agent reported no swap facts".to_string());
    };
    let mut wrong = Vec::new();
    if !s.devices.is_empty() {
        wrong.push(format!("swap active on {}", s.devices.join(", ")));
    }
    if s.fstab_entries > 0 {
        wrong.push(format!(
            "{} /etc/fstab line(s) still enable swap",
            s.fstab_entries
        ));
    }
    if wrong.is_empty() {
        (Some(true), "swap off".to_string())
    } else {
        (Some(false), wrong.join("; "))
    }
}

fn drift_section(inventory: &Inventory, probes: &[HostProbe]) -> Vec<DriftRow> {
    let mut rows = Vec::new();
    for (h, p) in inventory.hosts.iter().zip(probes) {
        if !(h.has_role(Role::Master) || h.has_role(Role::Worker)) {
            continue;
        }
        let Ok((facts, _, _)) = &p.facts else {
            continue;
        };
        let host = h.name.to_string();
        let mut push = |item: &str, (in_sync, detail): (Option<bool>, String)| {
            rows.push(DriftRow {
                host: host.clone(),
                item: item.to_string(),
                in_sync,
                detail,
            })
        };
        let none: MaybeFile = Err(LATE.to_string());
        push(
            "modules",
            modules_drift(p.modules.as_ref().unwrap_or(&none)),
        );
        push(
            "sysctls",
            sysctls_drift(p.sysctls.as_ref().unwrap_or(&none)),
        );
        push("swap", swap_drift(facts.swap.as_ref()));
    }
    rows
}

/// etcd's status error for an alarm (`memberID:8212... alarm:NOSPACE `) said for an operator,
/// with the way out; other errors as etcd says them.
pub(crate) fn explain_alarm(error: &str) -> String {
    if error.contains("alarm:NOSPACE") {
        "NOSPACE alarm: the database reached its quota and etcd refuses writes (free space with \
         `haop etcd compact` and `haop etcd defrag`, then `haop etcd alarms --disarm`)"
            .into()
    } else if error.contains("alarm:CORRUPT") {
        "CORRUPT alarm: this member's data differs from the others' (recover it with \
         `haop etcd recover`, then `haop etcd alarms --disarm`)"
            .into()
    } else {
        error.trim().to_string()
    }
}

#[cfg(test)]
mod alarm_tests {
    #[test]
    fn alarms_are_said_with_the_way_out() {
        let s = super::explain_alarm("memberID:8212839184738 alarm:NOSPACE ");
        assert!(
            s.starts_with("NOSPACE alarm") && s.contains("haop etcd compact"),
            "{s}"
        );
        assert!(super::explain_alarm("memberID:1 alarm:CORRUPT").contains("haop etcd recover"));
        assert_eq!(super::explain_alarm(" other "), "other");
    }
}
