//! `haop lab up NAME --from-seed`: a lab whose hosts were built by the seed's runbook as
//! written, before haop came near them: the starting point of `haop adopt`, which has to take
//! over exactly such hosts, and a way to see the seed's cluster (and what is wrong with it)
//! without seven machines.
//!
//! What the hosts get is what an operator following `seed/etcd-ha-runbook.md` leaves:
//! * every host: `/etc/hosts` with localhost and the etcd hosts (`IP etcdN.ledivan.local
//!   etcdN`);
//! * etcd hosts `etcd1..N` (members `master-0..`): `/etc/kubernetes/pki/etcd/` with the seed's
//!   `ca-config.json`, `ca-csr.json`, `client.json`, the CA and client certificate made on
//!   etcd1 (`cfssl gencert -initca`, profile client) and the whole directory copied to the
//!   other etcd hosts (the seed's `scp -r`: the CA's private key is on every etcd host), then on
//!   each host `config.json` (`cfssl print-defaults csr` and the seed's seds) and its own server
//!   and peer certificates ([`pki`] says what cfssl puts in them; files and modes as
//!   `cfssljson -bare` writes them: keys 0600, certificates and CSRs 0644 under root's umask);
//!   `/etc/etcd.env`; the seed's `etcd.service`, enabled;
//! * masters `master1..M`: `ca.pem`, `client.pem` and `client-key.pem` copied from etcd1;
//!   with two or more masters (the lab's VIP, `.10`), the seed's `keepalived.conf` (MASTER 101
//!   on master1, BACKUP 100 on the others, `auth_pass velotiotechnologies`) and
//!   `check_apiserver.sh`, and Debian's `keepalived.service` and `/etc/default/keepalived`,
//!   enabled; `kubeadm-config.yaml` (external etcd with the seed's client files, the VIP, or
//!   the single master's address as the seed's own "VIP" is, as control plane endpoint) and the
//!   `kube-apiserver` static pod manifest `kubeadm init` writes from it. No Kubernetes runs in
//!   the lab; the manifest is there for adoption to find and switch the API server's etcd
//!   client files;
//! * workers: `/etc/hosts` only.
//!
//! The insecure parts stay, on purpose. etcd runs with `--client-cert-auth=false` and
//! `--peer-client-cert-auth=false` as the seed writes them. They do not do what the seed
//! expects: etcd asks every client (and peer) for a certificate of its trusted CA whenever
//! `--trusted-ca-file` (`--peer-trusted-ca-file`) is set (its `TLSInfo.ServerConfig`, 3.4 and
//! 3.5 alike), so a client without a certificate is refused at the handshake; what the flags
//! turn off is etcd taking a user from the certificate. What is open is therefore: every
//! certificate the seed's CA ever signed is a full etcd client (each member's server and peer
//! certificates, the client certificate copied to every master), the CA's private key sits on
//! every etcd host (anyone with root on one of them mints more), etcd has no users or roles,
//! and the VRRP password is the blog's.
//!
//! What had to change for the seed's cluster to form at all, as the benchmarks' scripted seed
//! does it (`bench/lib.sh`): its peer and server certificates carry only `DNS:$(hostname)`
//! (`etcdN`) and the IP, but its `--initial-cluster` and kubeadm's endpoints name
//! `etcdN.ledivan.local`, which fails TLS verification. The smallest operator's fix is used:
//! the short name as an alias in `/etc/hosts`, and in the peer URLs of `--initial-cluster` and
//! kubeadm's etcd endpoints. `--initial-advertise-peer-urls` keeps the IP as the seed writes
//! it: etcd resolves both sides when it compares a member's advertised peer URLs with its
//! `--initial-cluster` entry, and `etcdN` resolves to that IP (verified with etcd 3.4 and
//! 3.5.1 in `tests/lab_seed.rs`).
//!
//! Lifecycle, in the operator's order: [`super::Lab::create`] makes the host roots; [`build`]
//! writes the seed's files and enables the seed's units as `systemctl enable --now` would (in
//! the agent's supervisor's `enabled.json`, and systemd's `multi-user.target.wants` link);
//! then the agents are installed on the existing hosts and, starting, start the enabled units
//! as boot would; [`wait_healthy`] waits until the seed's etcd answers through its own API,
//! verified with the seed's CA, as the seed's client certificate. The lab's inventory stays
//! the normal lab inventory (hosts, roles, agents): what the seed built is for `haop adopt` to
//! discover.
//!
//! `--seed-etcd-binary FILE` runs another etcd release: the seed moves its download to `/bin`,
//! which is the machine's read-only `/usr` in the lab, so the file (with `etcdctl` and
//! `etcdutl` beside it, as the seed's `mv etcd*` moves them) goes to the host's own
//! `/usr/local/bin` and the unit names `/usr/local/bin/etcd`.

pub mod files;
pub mod pki;

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tracing::{debug, info};

use super::error::LogTail;
use super::record::{LabHost, LabRecord};
use super::LabError;
use crate::inventory::Role;
use pki::{Names, Profile, Request, SeedCa};

/// The seed's etcd unit.
pub const ETCD_UNIT: &str = "etcd.service";
/// keepalived's unit on the masters.
pub const KEEPALIVED_UNIT: &str = "keepalived.service";
/// The agent supervisor's set of enabled units, in a host root (the agent's state dir is
/// `/var/lib/haop-agent`; see the agent's `units::supervisor`).
pub const ENABLED_FILE: &str = "var/lib/haop-agent/supervisor/enabled.json";
/// The supervisor's log of a unit, in a host root.
const UNIT_LOG_DIR: &str = "var/lib/haop-agent/logs";
/// The lab's interface inside every host (the veth made by `lab::create_network`).
const INTERFACE: &str = "eth0";
/// The etcd the seed's unit runs: `/bin/etcd`, which is the machine's `/usr/bin/etcd` in a lab
/// host (merged `/usr`).
pub const SEED_ETCD: &str = "/bin/etcd";
/// Where `--seed-etcd-binary` puts the release it names, in the host.
pub const UPLOADED_ETCD: &str = "/usr/local/bin/etcd";
/// How long `up` waits for the seed's etcd to answer healthy once the agents run.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Choices of `haop lab up --from-seed` beyond the lab's size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedOptions {
    /// An etcd release to run instead of the machine's (`/usr/bin/etcd`).
    pub etcd_binary: Option<PathBuf>,
}

/// An etcd host as the seed's files name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedHost {
    pub name: String,
    pub address: Ipv4Addr,
}

/// The seed's etcd, answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReady {
    /// Member names, sorted (`master-0`, ...).
    pub members: Vec<String>,
    /// The version the first member reports.
    pub version: String,
    pub elapsed: Duration,
}

/// What can be checked before anything is made.
pub(super) fn check(options: &SeedOptions) -> Result<(), LabError> {
    if let Some(p) = &options.etcd_binary {
        if !p.is_file() {
            return Err(LabError::SeedBinary { path: p.clone() });
        }
    }
    Ok(())
}

fn hosts_with(record: &LabRecord, role: Role) -> Vec<&LabHost> {
    record
        .hosts
        .iter()
        .filter(|h| h.roles.contains(&role))
        .collect()
}

fn seed_hosts(hosts: &[&LabHost]) -> Vec<SeedHost> {
    hosts
        .iter()
        .map(|h| SeedHost {
            name: h.name.clone(),
            address: h.address,
        })
        .collect()
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    let path = path.to_path_buf();
    move |source| LabError::Io {
        action,
        path,
        source,
    }
}

/// `mkdir -p` of `host_dir` in `root`, each directory it makes 0755 (root's umask).
fn mkdir(root: &Path, host_dir: &str) -> Result<PathBuf, LabError> {
    let mut path = root.to_path_buf();
    for part in Path::new(host_dir.trim_start_matches('/')).components() {
        path.push(part);
        match fs::create_dir(&path) {
            Ok(()) => fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(io_err("set the mode of", &path))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &path)(e)),
        }
    }
    Ok(path)
}

/// Writes `host_path` in `root` with `mode`, making its directory.
fn put(root: &Path, host_path: &str, content: &[u8], mode: u32) -> Result<(), LabError> {
    if let Some(parent) = Path::new(host_path).parent().and_then(Path::to_str) {
        mkdir(root, parent)?;
    }
    let path = root.join(host_path.trim_start_matches('/'));
    Ok(crate::fsio::write_atomic(&path, content, mode)?)
}

/// The files `cfssljson -bare NAME` writes, in `dir` of `root`.
fn put_bare(root: &Path, dir: &str, name: &str, bare: &pki::Bare) -> Result<(), LabError> {
    put(
        root,
        &format!("{dir}/{name}.pem"),
        bare.cert.as_bytes(),
        0o644,
    )?;
    put(
        root,
        &format!("{dir}/{name}-key.pem"),
        bare.key.as_bytes(),
        0o600,
    )?;
    put(
        root,
        &format!("{dir}/{name}.csr"),
        bare.csr.as_bytes(),
        0o644,
    )
}

/// Copies `files` of `host_dir` from one host root to another with their modes (`scp`).
fn copy_files(from: &Path, to: &Path, host_dir: &str, files: &[&str]) -> Result<(), LabError> {
    let rel = host_dir.trim_start_matches('/');
    for name in files {
        let src = from.join(rel).join(name);
        let content = fs::read(&src).map_err(io_err("read", &src))?;
        let mode = fs::metadata(&src)
            .map_err(io_err("stat", &src))?
            .permissions()
            .mode()
            & 0o7777;
        put(to, &format!("{host_dir}/{name}"), &content, mode)?;
    }
    Ok(())
}

/// Every regular file of `host_dir` in `root`, sorted.
fn files_of(root: &Path, host_dir: &str) -> Result<Vec<String>, LabError> {
    let dir = root.join(host_dir.trim_start_matches('/'));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .map_err(io_err("list", &dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Installs `unit` and enables it, as `systemctl enable` would: systemd's wants link, and the
/// agent supervisor's enabled set that the agent starts from when it starts.
fn enable(root: &Path, unit: &str, text: &str) -> Result<(), LabError> {
    let unit_path = format!("/etc/systemd/system/{unit}");
    put(root, &unit_path, text.as_bytes(), 0o644)?;
    let wants = mkdir(root, "/etc/systemd/system/multi-user.target.wants")?.join(unit);
    match fs::symlink_metadata(&wants) {
        Ok(_) => fs::remove_file(&wants).map_err(io_err("replace", &wants))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", &wants)(e)),
    }
    std::os::unix::fs::symlink(&unit_path, &wants).map_err(io_err("link", &wants))?;
    let enabled_path = root.join(ENABLED_FILE);
    let mut enabled: Vec<String> = match fs::read(&enabled_path) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v["enabled"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    if !enabled.iter().any(|u| u == unit) {
        enabled.push(unit.to_string());
        enabled.sort();
    }
    let mut json = serde_json::to_vec_pretty(&serde_json::json!({ "enabled": enabled }))
        .expect("a list of names serializes");
    json.push(b'\n');
    put(root, &format!("/{ENABLED_FILE}"), &json, 0o644)
}

/// Writes what the seed's runbook leaves on every host of `record` (see the module docs) and
/// enables its units. Runs before the agents exist; `vip` is the lab's VIP, when it has one.
pub(super) fn build(
    record: &LabRecord,
    vip: Option<Ipv4Addr>,
    options: &SeedOptions,
) -> Result<(), LabError> {
    let etcd_hosts = hosts_with(record, Role::Etcd);
    let masters = hosts_with(record, Role::Master);
    let etcd = seed_hosts(&etcd_hosts);
    let Some(first) = etcd_hosts.first() else {
        return Err(LabError::InvalidSpec {
            reason: "--from-seed needs at least one etcd host".to_string(),
        });
    };
    let now = time::OffsetDateTime::now_utc();
    let pki_dir = files::PKI_DIR;

    // "Configure /etc/hosts" (on every host, so that the masters find etcdN too).
    let hosts = files::hosts_file(&etcd);
    for h in &record.hosts {
        put(&h.root_dir, "/etc/hosts", hosts.as_bytes(), 0o644)?;
    }

    // On etcd1: the three JSON files, the CA and the client certificate.
    let r1 = &first.root_dir;
    mkdir(r1, pki_dir)?;
    for (name, text) in [
        ("ca-config.json", files::CA_CONFIG_JSON),
        ("ca-csr.json", files::CA_CSR_JSON),
        ("client.json", files::CLIENT_JSON),
    ] {
        put(r1, &format!("{pki_dir}/{name}"), text.as_bytes(), 0o644)?;
    }
    let ca = SeedCa::init(now)?;
    put_bare(r1, pki_dir, "ca", ca.bare())?;
    let client = Request {
        cn: "client".to_string(),
        names: None,
        hosts: Vec::new(),
    };
    put_bare(
        r1,
        pki_dir,
        "client",
        &ca.gencert(Profile::Client, &client, now)?,
    )?;

    // `scp -r /etc/kubernetes/pki/etcd` to the other etcd hosts: the CA key goes along.
    let made_on_first = files_of(r1, pki_dir)?;
    let made_on_first: Vec<&str> = made_on_first.iter().map(String::as_str).collect();
    for h in &etcd_hosts[1..] {
        copy_files(r1, &h.root_dir, pki_dir, &made_on_first)?;
    }

    // On every etcd host: config.json, its server and peer certificates, etcd.env, the binary,
    // the unit, enabled.
    let binary = match &options.etcd_binary {
        Some(_) => UPLOADED_ETCD,
        None => SEED_ETCD,
    };
    for (i, h) in etcd_hosts.iter().enumerate() {
        let root = &h.root_dir;
        put(
            root,
            &format!("{pki_dir}/config.json"),
            files::config_json(&h.name, h.address).as_bytes(),
            0o644,
        )?;
        let request = Request {
            cn: h.name.clone(),
            names: Some(Names {
                country: "US".to_string(),
                state: "CA".to_string(),
                locality: "San Francisco".to_string(),
            }),
            hosts: vec![h.name.clone(), h.address.to_string()],
        };
        put_bare(
            root,
            pki_dir,
            "server",
            &ca.gencert(Profile::Server, &request, now)?,
        )?;
        put_bare(
            root,
            pki_dir,
            "peer",
            &ca.gencert(Profile::Peer, &request, now)?,
        )?;
        put(
            root,
            "/etc/etcd.env",
            files::etcd_env(&h.name, h.address).as_bytes(),
            0o644,
        )?;
        if let Some(release) = &options.etcd_binary {
            install_release(root, release)?;
        }
        enable(root, ETCD_UNIT, &files::etcd_unit(i, &etcd, binary))?;
        debug!(host = %h.name, member = %files::member_name(i), "seed etcd host written");
    }

    // The masters: the client files from etcd1, keepalived with the VIP, kubeadm's files.
    for (i, m) in masters.iter().enumerate() {
        let root = &m.root_dir;
        copy_files(
            r1,
            root,
            pki_dir,
            &["ca.pem", "client.pem", "client-key.pem"],
        )?;
        let endpoint = match vip {
            Some(vip) => {
                put(
                    root,
                    "/etc/keepalived/keepalived.conf",
                    files::keepalived_conf(i == 0, INTERFACE, vip).as_bytes(),
                    0o644,
                )?;
                put(
                    root,
                    "/etc/keepalived/check_apiserver.sh",
                    files::check_apiserver_sh(vip).as_bytes(),
                    0o755,
                )?;
                put(
                    root,
                    "/etc/default/keepalived",
                    files::KEEPALIVED_DEFAULT.as_bytes(),
                    0o644,
                )?;
                enable(root, KEEPALIVED_UNIT, files::KEEPALIVED_UNIT)?;
                vip
            }
            None => m.address,
        };
        put(
            root,
            "/etc/kubernetes/kubeadm-config.yaml",
            files::kubeadm_config(endpoint, &etcd).as_bytes(),
            0o644,
        )?;
        put(
            root,
            "/etc/kubernetes/manifests/kube-apiserver.yaml",
            files::kube_apiserver_manifest(m.address, &etcd).as_bytes(),
            0o600,
        )?;
    }
    info!(lab = %record.name, etcd = etcd_hosts.len(), masters = masters.len(), "hosts built by the seed's runbook");
    Ok(())
}

/// Copies the release at `release` (and `etcdctl`, `etcdutl` beside it) into the host's
/// `/usr/local/bin`, mode 0755.
fn install_release(root: &Path, release: &Path) -> Result<(), LabError> {
    let mut programs = vec![(release.to_path_buf(), "etcd")];
    if let Some(dir) = release.parent() {
        for tool in ["etcdctl", "etcdutl"] {
            let p = dir.join(tool);
            if p.is_file() {
                programs.push((p, tool));
            }
        }
    }
    for (src, name) in programs {
        let content = fs::read(&src).map_err(io_err("read", &src))?;
        put(root, &format!("/usr/local/bin/{name}"), &content, 0o755)?;
    }
    Ok(())
}

/// Waits until every etcd member of `record` answers through the etcd API, verified with the
/// seed's CA (etcd1's `ca.pem`) and with the seed's client certificate (`client.pem`, the one
/// the masters' API servers use; etcd asks every client for a certificate of the CA, see the
/// module docs): each reports a leader and serves a linearizable read, and the member list has
/// every `master-K`, started and a voter.
pub(super) async fn wait_healthy(
    record: &LabRecord,
    timeout: Duration,
) -> Result<SeedReady, LabError> {
    let etcd_hosts = hosts_with(record, Role::Etcd);
    let Some(first) = etcd_hosts.first() else {
        return Err(LabError::InvalidSpec {
            reason: "--from-seed needs at least one etcd host".to_string(),
        });
    };
    let pki = first.root_dir.join(files::PKI_DIR.trim_start_matches('/'));
    let read = |name: &str| {
        let path = pki.join(name);
        fs::read(&path).map_err(io_err("read", &path))
    };
    let (ca, cert, key) = (
        read("ca.pem")?,
        read("client.pem")?,
        read("client-key.pem")?,
    );
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    let endpoints: Vec<String> = etcd_hosts
        .iter()
        .map(|h| format!("https://{}:2379", h.address))
        .collect();
    let mut expected: Vec<String> = (0..etcd_hosts.len()).map(files::member_name).collect();
    expected.sort();
    let started = Instant::now();
    let mut last_error = String::from("not asked yet");
    while started.elapsed() < timeout {
        match probe(&tls, &endpoints, &expected).await {
            Ok(version) => {
                let ready = SeedReady {
                    members: expected,
                    version,
                    elapsed: started.elapsed(),
                };
                info!(lab = %record.name, version = %ready.version, elapsed_ms = ready.elapsed.as_millis() as u64, "the seed's etcd is healthy");
                return Ok(ready);
            }
            Err(e) => last_error = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = first
        .root_dir
        .join(UNIT_LOG_DIR)
        .join(format!("{ETCD_UNIT}.log"));
    Err(LabError::SeedNotHealthy {
        seconds: timeout.as_secs(),
        last_error,
        log: Box::new(LogTail {
            tail: super::agents::log_tail(&log, 20),
            path: log,
        }),
    })
}

/// One round of [`wait_healthy`]: the version of the first member when all is well, else what
/// was not.
async fn probe(
    tls: &TlsOptions,
    endpoints: &[String],
    expected: &[String],
) -> Result<String, String> {
    const CALL: Duration = Duration::from_secs(2);
    let options = ConnectOptions::new()
        .with_tls(tls.clone())
        .with_connect_timeout(CALL)
        .with_timeout(CALL);
    let mut version = None;
    for (i, endpoint) in endpoints.iter().enumerate() {
        let err = |what: &str, e: &dyn std::fmt::Display| format!("{endpoint}: {what}: {e}");
        let mut c = etcd_client::Client::connect([endpoint.as_str()], Some(options.clone()))
            .await
            .map_err(|e| err("connect", &e))?;
        let status = c.status().await.map_err(|e| err("status", &e))?;
        if status.leader() == 0 {
            return Err(format!("{endpoint}: no leader yet"));
        }
        c.get("health", None)
            .await
            .map_err(|e| err("linearizable read", &e))?;
        version.get_or_insert_with(|| status.version().to_string());
        if i == 0 {
            let list = c.member_list().await.map_err(|e| err("member list", &e))?;
            let mut names = Vec::new();
            for m in list.members() {
                if m.name().is_empty() || m.client_urls().is_empty() {
                    return Err(format!("member {:x} has not started yet", m.id()));
                }
                if m.is_learner() {
                    return Err(format!("member {} is a learner", m.name()));
                }
                names.push(m.name().to_string());
            }
            names.sort();
            if names != expected {
                return Err(format!("members are {names:?}, expected {expected:?}"));
            }
        }
    }
    version.ok_or_else(|| "no etcd endpoint".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::names::{agent_endpoint, host_name, Addressing, LabName, LabSpec};
    use crate::lab::record::FORMAT_VERSION;

    fn record(dir: &Path, spec: LabSpec) -> LabRecord {
        let a = Addressing::new(3).unwrap();
        let hosts = spec
            .hosts()
            .into_iter()
            .enumerate()
            .map(|(i, (role, n))| {
                let name = host_name(role, n);
                let address = a.address(role, n);
                // `Lab::create` has made the host roots before the seed's files are written.
                fs::create_dir_all(dir.join(&name)).unwrap();
                LabHost {
                    roles: vec![role],
                    namespace: format!("haop-t1-{name}"),
                    veth: a.veth(i + 1),
                    address,
                    endpoint: agent_endpoint(address),
                    agent_pid: None,
                    agent_start_time: None,
                    root_dir: dir.join(&name),
                    log_path: dir.join(format!("{name}.log")),
                    name,
                }
            })
            .collect();
        LabRecord {
            format_version: FORMAT_VERSION,
            name: LabName::try_from("t1").unwrap(),
            index: 3,
            subnet: a.subnet(),
            bridge: a.bridge(),
            bridge_mac: "02:00:00:00:00:01".into(),
            gateway: a.gateway(),
            created_unix_ms: 0,
            hosts,
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn build_leaves_the_seeds_layout() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LabSpec {
            etcd: 3,
            masters: 2,
            workers: 1,
            from_seed: true,
        };
        let r = record(dir.path(), spec);
        let vip = Ipv4Addr::new(10, 77, 3, 10);
        build(&r, Some(vip), &SeedOptions::default()).unwrap();
        let root = |h: &str| dir.path().join(h);
        let pki = |h: &str| root(h).join("etc/kubernetes/pki/etcd");

        let on_first = files_of(&root("etcd1"), files::PKI_DIR).unwrap();
        assert_eq!(
            on_first,
            [
                "ca-config.json",
                "ca-csr.json",
                "ca-key.pem",
                "ca.csr",
                "ca.pem",
                "client-key.pem",
                "client.csr",
                "client.json",
                "client.pem",
                "config.json",
                "peer-key.pem",
                "peer.csr",
                "peer.pem",
                "server-key.pem",
                "server.csr",
                "server.pem",
            ]
        );
        let ca = fs::read(pki("etcd1").join("ca.pem")).unwrap();
        for h in ["etcd1", "etcd2", "etcd3"] {
            assert_eq!(files_of(&root(h), files::PKI_DIR).unwrap(), on_first, "{h}");
            assert_eq!(fs::read(pki(h).join("ca.pem")).unwrap(), ca, "{h}");
            assert_eq!(
                fs::read(pki(h).join("ca-key.pem")).unwrap(),
                fs::read(pki("etcd1").join("ca-key.pem")).unwrap()
            );
            for f in on_first.iter() {
                let want = if f.ends_with("-key.pem") {
                    0o600
                } else {
                    0o644
                };
                assert_eq!(mode(&pki(h).join(f)), want, "{h}: {f}");
            }
            assert_eq!(mode(&pki(h)), 0o755);
            let unit = fs::read_to_string(root(h).join("etc/systemd/system/etcd.service")).unwrap();
            assert!(
                unit.contains("ExecStart=/bin/etcd --name master-"),
                "{unit}"
            );
            assert_eq!(
                fs::read_link(
                    root(h).join("etc/systemd/system/multi-user.target.wants/etcd.service")
                )
                .unwrap(),
                Path::new("/etc/systemd/system/etcd.service")
            );
            let enabled: serde_json::Value =
                serde_json::from_slice(&fs::read(root(h).join(ENABLED_FILE)).unwrap()).unwrap();
            assert_eq!(enabled, serde_json::json!({"enabled": ["etcd.service"]}));
        }
        // Each etcd host made its own server certificate.
        assert_ne!(
            fs::read(pki("etcd1").join("server.pem")).unwrap(),
            fs::read(pki("etcd2").join("server.pem")).unwrap()
        );
        assert_eq!(
            fs::read_to_string(root("etcd2").join("etc/etcd.env")).unwrap(),
            "PEER_NAME=etcd2\nPRIVATE_IP=10.77.3.12\n"
        );

        for (m, state) in [("master1", "MASTER"), ("master2", "BACKUP")] {
            assert_eq!(
                files_of(&root(m), files::PKI_DIR).unwrap(),
                ["ca.pem", "client-key.pem", "client.pem"]
            );
            assert_eq!(mode(&pki(m).join("client-key.pem")), 0o600);
            assert_eq!(
                fs::read(pki(m).join("client.pem")).unwrap(),
                fs::read(pki("etcd1").join("client.pem")).unwrap()
            );
            let conf = fs::read_to_string(root(m).join("etc/keepalived/keepalived.conf")).unwrap();
            assert!(conf.contains(&format!("state {state}")) && conf.contains("10.77.3.10"));
            assert_eq!(
                mode(&root(m).join("etc/keepalived/check_apiserver.sh")),
                0o755
            );
            let enabled: serde_json::Value =
                serde_json::from_slice(&fs::read(root(m).join(ENABLED_FILE)).unwrap()).unwrap();
            assert_eq!(
                enabled,
                serde_json::json!({"enabled": ["keepalived.service"]})
            );
            let cfg =
                fs::read_to_string(root(m).join("etc/kubernetes/kubeadm-config.yaml")).unwrap();
            assert!(cfg.contains("controlPlaneEndpoint: \"10.77.3.10:6443\""));
            assert!(root(m)
                .join("etc/kubernetes/manifests/kube-apiserver.yaml")
                .is_file());
        }
        // Workers get /etc/hosts only.
        assert!(!root("worker1").join("etc/kubernetes").exists());
        assert_eq!(
            fs::read_to_string(root("worker1").join("etc/hosts")).unwrap(),
            files::hosts_file(&seed_hosts(&hosts_with(&r, Role::Etcd)))
        );
    }

    #[test]
    fn a_release_goes_to_usr_local_bin_and_one_master_has_no_keepalived() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("rel");
        fs::create_dir(&release).unwrap();
        fs::write(release.join("etcd"), b"etcd").unwrap();
        fs::write(release.join("etcdctl"), b"etcdctl").unwrap();
        let spec = LabSpec {
            etcd: 1,
            masters: 1,
            workers: 0,
            from_seed: true,
        };
        let r = record(&dir.path().join("hosts"), spec);
        let options = SeedOptions {
            etcd_binary: Some(release.join("etcd")),
        };
        check(&options).unwrap();
        build(&r, None, &options).unwrap();
        let e1 = dir.path().join("hosts/etcd1");
        assert_eq!(fs::read(e1.join("usr/local/bin/etcd")).unwrap(), b"etcd");
        assert_eq!(mode(&e1.join("usr/local/bin/etcd")), 0o755);
        assert_eq!(
            fs::read(e1.join("usr/local/bin/etcdctl")).unwrap(),
            b"etcdctl"
        );
        assert!(!e1.join("usr/local/bin/etcdutl").exists());
        let unit = fs::read_to_string(e1.join("etc/systemd/system/etcd.service")).unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/etcd --name master-0 "));
        assert!(unit.contains("--initial-cluster master-0=https://etcd1:2380 "));
        let m1 = dir.path().join("hosts/master1");
        assert!(!m1.join("etc/keepalived").exists());
        assert!(!m1.join(ENABLED_FILE).exists());
        let cfg = fs::read_to_string(m1.join("etc/kubernetes/kubeadm-config.yaml")).unwrap();
        assert!(
            cfg.contains("controlPlaneEndpoint: \"10.77.3.41:6443\""),
            "{cfg}"
        );

        let missing = SeedOptions {
            etcd_binary: Some(dir.path().join("nope")),
        };
        assert!(matches!(check(&missing), Err(LabError::SeedBinary { .. })));
    }
}
