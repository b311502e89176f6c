//! The lab: hosts on this machine, to try haop and to rehearse repairs, and haop's test bed.
//!
//! A lab host is a network namespace (`haop-<lab>-<host>`) with one veth (`eth0` inside) on a
//! private bridge, a root directory that its agent treats as `/` (`haop-agent --root`), and one
//! agent. Hosts see each other and this machine over the bridge, so the coordinator talks to
//! them exactly as to real hosts: over gRPC to `http://<address>:7443`.
//!
//! Lifecycle. [`Lab::up`] validates the name and size, claims `<state-dir>/labs/NAME/` (an
//! atomic `mkdir`), and under a machine-wide lock picks the lowest free index (subnet
//! `10.77.<index>.0/24`, bridge `hbr<index>`), writes the whole plan to `lab.json` and only
//! then creates the bridge, namespaces and veths. It prepares each host root, starts the agents
//! (recording each pid at once), waits until every agent answers `GetFacts`, and writes the
//! lab's inventory. Because `lab.json` is written before anything it describes exists,
//! [`Lab::down`] can always clean up, whatever point `up` reached: it stops the agents (checking
//! each pid still is that agent), kills what is left in each namespace, deletes veths,
//! namespaces and the bridge (only when its MAC says it is this lab's), and removes the lab's
//! directory, refusing to cross a mount point. A failed `up` tears down what it made.
//!
//! Several labs, from several state dirs and processes, may be created at once: indexes are
//! allocated under an `flock` on `/run/haop-lab.lock` from what exists on the machine, not from
//! any one state dir. Network namespaces do not isolate pids: nothing here kills by name.

mod agents;
pub mod booted;
mod error;
mod faults;
mod inventory;
mod names;
mod record;
pub mod seed;
mod sys;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haop_proto::v1::Facts;
use nix::sys::signal::Signal;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn, Instrument};

pub use agents::{find_agent_binary, AGENT_BIN_ENV, DECLARED_FILE};
pub use error::{LabError, LogTail};
pub use faults::{AgentRestart, AgentStop};
pub use inventory::INVENTORY_FILE;
pub use names::{LabName, LabSpec, AGENT_PORT, MAX_ETCD, MAX_INDEX, MAX_MASTERS, MAX_WORKERS};
pub use record::{LabHost, LabRecord, RECORD_FILE};
pub use seed::SeedOptions;

use crate::inventory::Role;
use agents::AgentProcess;
use names::Addressing;
use sys::{Ip, MachineLock};

/// The directory of a state dir that holds labs.
pub const LABS_DIR: &str = "labs";
/// How long `up` waits for every agent to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
const NSENTER: &str = "/usr/bin/nsenter";

/// A lab that exists (at least in its record).
#[derive(Debug, Clone)]
pub struct Lab {
    dir: PathBuf,
    record: LabRecord,
}

/// One host as `haop lab hosts` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub name: String,
    pub roles: Vec<Role>,
    pub namespace: String,
    pub address: Ipv4Addr,
    pub endpoint: String,
    pub agent_pid: Option<u32>,
    /// The recorded agent process is running (and still is that agent).
    pub alive: bool,
    /// What the agent answered to GetFacts, when it answered.
    pub facts: Option<HostFacts>,
    /// Why there are no facts.
    pub error: Option<String>,
}

/// The facts `haop lab hosts` shows, from the agent's GetFacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub hostname: String,
    pub kernel: String,
    pub os_release: String,
    pub service_manager: String,
    pub agent_version: String,
    pub root: String,
    pub interfaces: Vec<InterfaceFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceFacts {
    pub name: String,
    pub addresses: Vec<String>,
    pub up: bool,
}

impl From<Facts> for HostFacts {
    fn from(f: Facts) -> Self {
        HostFacts {
            hostname: f.hostname,
            kernel: f.kernel,
            os_release: f.os_release,
            service_manager: f.service_manager,
            agent_version: f.agent_version,
            root: f.root,
            interfaces: f
                .interfaces
                .into_iter()
                .map(|i| InterfaceFacts {
                    name: i.name,
                    addresses: i.addresses,
                    up: i.up,
                })
                .collect(),
        }
    }
}

/// What `crash` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrashReport {
    pub host: String,
    pub unit: String,
    /// The unit's main pid that got SIGKILL.
    pub pid: u32,
    /// Data dirs removed (paths on this machine, under the host root).
    pub wiped: Vec<PathBuf>,
}

impl Lab {
    /// `<state-dir>/labs`.
    pub fn labs_dir(state_dir: &Path) -> PathBuf {
        state_dir.join(LABS_DIR)
    }

    /// Creates the lab `name` and starts its agents; answers once every agent answers
    /// GetFacts and the inventory is written. On failure, what was created is removed again.
    /// With `spec.from_seed`, the hosts are built by the seed's runbook first (the machine's
    /// etcd; [`Lab::up_with`] takes the seed's options).
    pub async fn up(state_dir: &Path, name: &str, spec: LabSpec) -> Result<Lab, LabError> {
        Self::up_with(state_dir, name, spec, SeedOptions::default()).await
    }

    /// [`Lab::up`] with the options of `--from-seed`. With `spec.from_seed`: the host roots
    /// are made, the seed's files written and its units enabled ([`seed`]), then the agents
    /// started (they start the enabled units, as boot would), and `up` answers once the seed's
    /// etcd is healthy through its own API.
    pub async fn up_with(
        state_dir: &Path,
        name: &str,
        spec: LabSpec,
        seed: SeedOptions,
    ) -> Result<Lab, LabError> {
        let span = tracing::info_span!("lab_up", lab = %name);
        async {
            // Everything that can be checked before anything is made.
            validate(name, spec)?;
            if !spec.from_seed && seed != SeedOptions::default() {
                return Err(LabError::InvalidSpec {
                    reason: "--seed-etcd-binary is an option of --from-seed".to_string(),
                });
            }
            sys::require_root()?;
            find_agent_binary()?;
            if spec.from_seed {
                seed::check(&seed)?;
            }
            let (sd, n) = (state_dir.to_path_buf(), name.to_string());
            let mut lab = blocking(move || Lab::create(&sd, &n, spec)).await?;
            match lab.finish_up(spec, seed).await {
                Ok(()) => Ok(lab),
                Err(e) => {
                    let cleanup = lab.clone();
                    if let Err(te) = blocking(move || cleanup.down()).await {
                        warn!(error = %crate::error_chain(&te), "cleanup after a failed up failed");
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// What [`Lab::up_with`] does after [`Lab::create`]: the seed's hosts when asked for, the
    /// agents, the seed's etcd awaited. Does not clean up on failure.
    async fn finish_up(&mut self, spec: LabSpec, options: SeedOptions) -> Result<(), LabError> {
        if spec.from_seed {
            let record = self.record.clone();
            let vip = inventory::vip(&record);
            blocking(move || seed::build(&record, vip, &options)).await?;
        }
        self.start_agents().await?;
        if spec.from_seed {
            seed::wait_healthy(&self.record, seed::READY_TIMEOUT).await?;
        }
        Ok(())
    }

    /// The first half of [`Lab::up`]: record, bridge, namespaces, veths and host roots, no
    /// agents. On failure, what was created is removed again.
    pub fn create(state_dir: &Path, name: &str, spec: LabSpec) -> Result<Lab, LabError> {
        let lab_name = validate(name, spec)?;
        sys::require_root()?;
        let ip = Ip::find()?;
        let labs = Self::labs_dir(state_dir);
        fs::create_dir_all(&labs).map_err(|source| LabError::Io {
            action: "create",
            path: labs.clone(),
            source,
        })?;
        let labs = fs::canonicalize(&labs).map_err(|source| LabError::Io {
            action: "resolve",
            path: labs.clone(),
            source,
        })?;
        let dir = labs.join(lab_name.as_str());
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LabError::LabExists {
                    name: name.to_string(),
                    path: dir,
                });
            }
            Err(source) => {
                return Err(LabError::Io {
                    action: "create",
                    path: dir,
                    source,
                })
            }
        }
        // The directory is ours from here on: a failure removes what was made.
        match build(&ip, &dir, &lab_name, spec) {
            Ok(lab) => Ok(lab),
            Err(e) => {
                let cleanup = match LabRecord::read(&dir) {
                    Ok(record) => teardown(&ip, &dir, &record),
                    Err(_) => sys::remove_tree(&dir),
                };
                if let Err(te) = cleanup {
                    warn!(lab = %lab_name, error = %crate::error_chain(&te), "cleanup after a failed create failed");
                }
                Err(e)
            }
        }
    }

    /// The second half of [`Lab::up`]: starts every host's agent that is not running, waits
    /// until all answer GetFacts (at most [`READY_TIMEOUT`]) and writes the inventory. Does not
    /// clean up on failure; [`Lab::up`] does.
    pub async fn start_agents(&mut self) -> Result<(), LabError> {
        let agent = find_agent_binary()?;
        let ip = Ip::find()?;
        // The lab's agents enroll as real hosts do: a bootstrap token and the pinned agent CA.
        let state_dir = self.state_dir();
        let report = crate::trust::init(&state_dir, crate::trust::InitOptions::default())?;
        let trust = std::sync::Arc::new(crate::trust::Trust::load(&state_dir)?);
        // One single-use token per host, as an operator would make them.
        for host in &self.record.hosts {
            let (token, _) = trust.tokens().create(
                std::time::Duration::from_secs(3600),
                crate::trust::TokenUses::Once,
            )?;
            agents::write_agent_config(host, &token, &report.agent_ca_pin)?;
        }
        let mut started = Vec::new();
        for i in 0..self.record.hosts.len() {
            let host = &self.record.hosts[i];
            if let AgentProcess::Ours(pid) = agents::agent_process(host) {
                info!(host = %host.name, pid, "agent already running");
                continue;
            }
            let spawned = agents::spawn_agent(&ip, &agent, host).and_then(|child| {
                let host = &mut self.record.hosts[i];
                host.agent_pid = Some(child.id());
                host.agent_start_time = sys::ProcStat::read(child.id()).map(|s| s.start_time);
                started.push((host.clone(), child));
                self.record.write(&self.dir)
            });
            if let Err(e) = spawned {
                for (_, child) in started {
                    agents::detach(child);
                }
                return Err(e);
            }
        }
        agents::wait_ready(trust, started, READY_TIMEOUT).await?;
        inventory::write(&self.record, &self.inventory_path())?;
        info!(lab = %self.record.name, hosts = self.record.hosts.len(), "lab is up");
        Ok(())
    }

    /// The lab `name` of `state_dir`, from its record.
    pub fn open(state_dir: &Path, name: &str) -> Result<Lab, LabError> {
        let dir = Self::dir_of(state_dir, name)?;
        if !dir.join(RECORD_FILE).is_file() {
            return Err(LabError::NoSuchLab {
                name: name.to_string(),
                path: Self::labs_dir(state_dir),
            });
        }
        let record = LabRecord::read(&dir)?;
        Ok(Lab { dir, record })
    }

    /// Names of the labs of `state_dir` (directories under `labs/`, complete or not), sorted.
    pub fn list(state_dir: &Path) -> Result<Vec<String>, LabError> {
        let labs = Self::labs_dir(state_dir);
        let entries = match fs::read_dir(&labs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(LabError::Io {
                    action: "list",
                    path: labs,
                    source,
                })
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| LabName::try_from(n.as_str()).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    fn dir_of(state_dir: &Path, name: &str) -> Result<PathBuf, LabError> {
        let lab_name = LabName::try_from(name).map_err(|reason| LabError::InvalidName {
            name: name.to_string(),
            reason,
        })?;
        Ok(Self::labs_dir(state_dir).join(lab_name.as_str()))
    }

    pub fn name(&self) -> &str {
        self.record.name.as_str()
    }

    /// `<state-dir>/labs/NAME`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn record(&self) -> &LabRecord {
        &self.record
    }

    /// The machine-wide index: subnet `10.77.<index>.0/24`, bridge `hbr<index>`.
    pub fn index(&self) -> u8 {
        self.record.index
    }

    pub fn subnet(&self) -> &str {
        &self.record.subnet
    }

    pub fn bridge(&self) -> &str {
        &self.record.bridge
    }

    pub fn hosts(&self) -> &[LabHost] {
        &self.record.hosts
    }

    pub fn host(&self, name: &str) -> Result<&LabHost, LabError> {
        self.record
            .host(name)
            .ok_or_else(|| self.no_such_host(name))
    }

    fn no_such_host(&self, name: &str) -> LabError {
        LabError::NoSuchHost {
            lab: self.name().to_string(),
            host: name.to_string(),
            known: self
                .record
                .hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The state dir this lab belongs to (`<state-dir>/labs/NAME` is its directory).
    pub fn state_dir(&self) -> PathBuf {
        self.dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.dir.clone())
    }

    /// `<state-dir>/labs/NAME/inventory.yaml`.
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join(INVENTORY_FILE)
    }

    /// Every host with its agent's state and, when the agent answers, its facts. Hosts are
    /// asked in parallel.
    pub async fn host_reports(&self) -> Vec<HostReport> {
        let trust = crate::trust::Trust::load(&self.state_dir())
            .map(std::sync::Arc::new)
            .map_err(|e| crate::error_chain(&e));
        let mut set = tokio::task::JoinSet::new();
        let is_booted = self.booted().is_some();
        for (i, host) in self.record.hosts.iter().cloned().enumerate() {
            let trust = trust.clone();
            let dir = self.dir.clone();
            set.spawn(async move {
                // A booted host's agent is systemd's business: the container running is what
                // the lab can tell; the agent answering says the rest.
                let alive = if is_booted {
                    booted::running(&dir, &host.name)
                } else {
                    matches!(agents::agent_process(&host), AgentProcess::Ours(_))
                };
                let (facts, error) = if !alive {
                    (None, Some("agent is not running".to_string()))
                } else {
                    match &trust {
                        Err(e) => (None, Some(e.clone())),
                        Ok(trust) => match agents::get_facts(trust, &host, RPC_TIMEOUT).await {
                            Ok(f) => (Some(HostFacts::from(f)), None),
                            Err(e) => (None, Some(crate::error_chain(&e))),
                        },
                    }
                };
                let report = HostReport {
                    name: host.name,
                    roles: host.roles,
                    namespace: host.namespace,
                    address: host.address,
                    endpoint: host.endpoint,
                    agent_pid: host.agent_pid,
                    alive,
                    facts,
                    error,
                };
                (i, report)
            });
        }
        let mut reports: Vec<(usize, HostReport)> = set.join_all().await;
        reports.sort_by_key(|(i, _)| *i);
        reports.into_iter().map(|(_, r)| r).collect()
    }

    /// Simulates a crash of `unit` on `host`: asks the host's agent for the unit's main pid
    /// and sends it SIGKILL (by pid, after checking that the process lives in the host's
    /// namespace). With `wipe`, then removes the data dirs the unit declared to the agent, as
    /// a lost disk would. Errors, before killing anything, when the unit is not running or
    /// (with `wipe`) declares no data dir.
    pub async fn crash(&self, host: &str, unit: &str, wipe: bool) -> Result<CrashReport, LabError> {
        sys::require_root()?;
        let h = self.host(host)?.clone();
        let data_dirs = if wipe {
            declared_data_dirs(&h, unit)?
        } else {
            Vec::new()
        };
        let trust = crate::trust::Trust::load(&self.state_dir())?;
        let agent =
            crate::agent::HostAgent::connect(&trust, &h.name, &h.endpoint, RPC_TIMEOUT).await?;
        let status = agent.unit_status(unit).await?;
        let running = matches!(status.active_state.as_str(), "active" | "activating");
        if status.main_pid == 0 || !running {
            return Err(LabError::UnitNotRunning {
                host: h.name.clone(),
                unit: unit.to_string(),
                state: format!(
                    "{}/{}, main pid {}",
                    status.active_state, status.sub_state, status.main_pid
                ),
            });
        }
        // systemd in a booted host reports the pid its container sees.
        let pid = match self.booted() {
            Some(_) => {
                let leader = booted::leader(&self.dir, &h.name)?;
                booted::machine_pid(leader, status.main_pid).ok_or_else(|| {
                    LabError::ForeignProcess {
                        pid: status.main_pid,
                        reason: format!("no process has that pid inside host {}", h.name),
                    }
                })?
            }
            None => status.main_pid,
        };
        if Some(pid) == h.agent_pid {
            return Err(LabError::ForeignProcess {
                pid,
                reason: format!("it is the agent of host {}", h.name),
            });
        }
        if !sys::in_netns(pid, &h.namespace) {
            return Err(LabError::ForeignProcess {
                pid,
                reason: format!("it is not in network namespace {}", h.namespace),
            });
        }
        agents::signal(pid, Signal::SIGKILL)?;
        info!(lab = %self.name(), host = %h.name, unit, pid, "unit killed");
        let survivors = blocking(move || agents::wait_gone(&[pid], Duration::from_secs(5))).await;
        if !survivors.is_empty() {
            return Err(LabError::ForeignProcess {
                pid,
                reason: "it still runs 5 s after SIGKILL".to_string(),
            });
        }
        let mut wiped = Vec::new();
        for dir in data_dirs {
            if dir.exists() {
                sys::remove_tree(&dir)?;
                info!(lab = %self.name(), host = %h.name, unit, path = %dir.display(), "data dir wiped");
                wiped.push(dir);
            }
        }
        Ok(CrashReport {
            host: h.name,
            unit: unit.to_string(),
            pid,
            wiped,
        })
    }

    /// A command that runs `command` inside `host`: in its agent's mount and network
    /// namespaces, with the host root as `/` (`nsenter --target AGENT_PID --mount --net
    /// --root --wd`). Standard streams are inherited; run it with `status()`.
    pub fn exec_command(
        &self,
        host: &str,
        command: &[OsString],
    ) -> Result<std::process::Command, LabError> {
        sys::require_root()?;
        let h = self.host(host)?;
        if self.booted().is_some() {
            return booted::exec_command(&self.dir, &h.name, command);
        }
        let AgentProcess::Ours(pid) = agents::agent_process(h) else {
            return Err(LabError::AgentNotRunning {
                host: h.name.clone(),
            });
        };
        if !Path::new(NSENTER).is_file() {
            return Err(LabError::ToolMissing {
                tool: "nsenter (util-linux)",
                tried: NSENTER.to_string(),
            });
        }
        let mut cmd = sys::hardened(Path::new(NSENTER));
        cmd.env("HOME", "/root");
        if let Some(term) = std::env::var_os("TERM") {
            cmd.env("TERM", term);
        }
        cmd.arg("--target")
            .arg(pid.to_string())
            .args(["--mount", "--net", "--root", "--wd", "--"])
            .args(command);
        Ok(cmd)
    }

    /// Removes everything of this lab: agents and what they started, veths, namespaces, the
    /// bridge, the lab's directory. Works on a lab whose `up` did not finish. When a step
    /// fails, the others still run and the record stays, so `down` can be run again.
    pub fn down(&self) -> Result<(), LabError> {
        let _span = tracing::info_span!("lab_down", lab = %self.name()).entered();
        sys::require_root()?;
        let ip = Ip::find()?;
        // The record on disk is the freshest: another process may have restarted an agent.
        let record = LabRecord::read(&self.dir).unwrap_or_else(|_| self.record.clone());
        teardown(&ip, &self.dir, &record)
    }

    /// Removes the lab `name` of `state_dir`, also when its `up` died before writing a record.
    pub fn down_named(state_dir: &Path, name: &str) -> Result<(), LabError> {
        let dir = Self::dir_of(state_dir, name)?;
        if dir.join(RECORD_FILE).is_file() {
            return Lab::open(state_dir, name)?.down();
        }
        if !dir.is_dir() {
            return Err(LabError::NoSuchLab {
                name: name.to_string(),
                path: Self::labs_dir(state_dir),
            });
        }
        // `up` claimed the directory but died before its first record: nothing else exists.
        sys::require_root()?;
        sys::remove_tree(&dir)?;
        info!(lab = %name, "lab removed");
        Ok(())
    }

    /// Removes every lab of `state_dir`, including leftovers of an `up` that died; answers
    /// their names. No lab is not an error.
    pub fn down_all(state_dir: &Path) -> Result<Vec<String>, LabError> {
        let names = Self::list(state_dir)?;
        let mut removed = Vec::new();
        let mut problems = Vec::new();
        for name in names {
            match Lab::down_named(state_dir, &name) {
                Ok(()) => removed.push(name),
                Err(e) => problems.push(format!("{name}: {}", crate::error_chain(&e))),
            }
        }
        if problems.is_empty() {
            Ok(removed)
        } else {
            Err(LabError::Teardown {
                lab: "(all)".to_string(),
                errors: problems.join("; "),
            })
        }
    }
}

fn validate(name: &str, spec: LabSpec) -> Result<LabName, LabError> {
    let lab_name = LabName::try_from(name).map_err(|reason| LabError::InvalidName {
        name: name.to_string(),
        reason,
    })?;
    spec.validate()
        .map_err(|reason| LabError::InvalidSpec { reason })?;
    Ok(lab_name)
}

/// Runs blocking `f` off the async runtime's workers; a panic in it resumes here.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking lab task was cancelled: {e}"),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A locally administered MAC derived from the lab's directory and index: how `down` tells
/// this lab's bridge from another lab's that took the same index later.
fn bridge_mac(dir: &Path, index: u8) -> String {
    let mut h = Sha256::new();
    h.update(dir.as_os_str().as_encoded_bytes());
    h.update([index]);
    let d = h.finalize();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        d[0], d[1], d[2], d[3], d[4]
    )
}

/// The lab's record before anything exists.
fn plan(dir: &Path, name: &LabName, spec: LabSpec, a: Addressing) -> LabRecord {
    let hosts = spec
        .hosts()
        .into_iter()
        .enumerate()
        .map(|(i, (role, n))| {
            let host = names::host_name(role, n);
            let address = a.address(role, n);
            LabHost {
                namespace: names::namespace(name, &host),
                veth: a.veth(i + 1),
                address,
                endpoint: names::agent_endpoint(address),
                agent_pid: None,
                agent_start_time: None,
                root_dir: dir.join("hosts").join(&host),
                log_path: dir.join("logs").join(format!("{host}.log")),
                roles: vec![role],
                name: host,
            }
        })
        .collect();
    LabRecord {
        format_version: record::FORMAT_VERSION,
        name: name.clone(),
        index: a.index(),
        subnet: a.subnet(),
        bridge: a.bridge(),
        bridge_mac: bridge_mac(dir, a.index()),
        gateway: a.gateway(),
        created_unix_ms: now_unix_ms(),
        hosts,
    }
}

/// Allocates the index, writes the record, creates the network and the host roots.
fn build(ip: &Ip, dir: &Path, name: &LabName, spec: LabSpec) -> Result<Lab, LabError> {
    let lab = {
        // Held while the network is made, so that no other `up` on this machine takes the same
        // index or namespace names meanwhile.
        let _lock = MachineLock::acquire()?;
        let free = (1..=MAX_INDEX).find(|i| {
            !sys::link_exists(&names::bridge_name(*i))
                && sys::links_with_prefix(&format!("hv{i}x")).is_empty()
        });
        let a = free
            .and_then(Addressing::new)
            .ok_or(LabError::NoFreeSubnet { max: MAX_INDEX })?;
        let record = plan(dir, name, spec, a);
        if let Some(h) = record
            .hosts
            .iter()
            .find(|h| sys::netns_exists(&h.namespace))
        {
            return Err(LabError::NamespaceExists {
                namespace: h.namespace.clone(),
            });
        }
        record.write(dir)?;
        info!(lab = %name, index = a.index(), subnet = %record.subnet, "lab planned");
        create_network(ip, &record)?;
        Lab {
            dir: dir.to_path_buf(),
            record,
        }
    };
    for host in &lab.record.hosts {
        agents::prepare_root(host)?;
    }
    let logs = dir.join("logs");
    fs::create_dir_all(&logs).map_err(|source| LabError::Io {
        action: "create",
        path: logs,
        source,
    })?;
    Ok(lab)
}

fn create_network(ip: &Ip, r: &LabRecord) -> Result<(), LabError> {
    let gateway = format!("{}/24", r.gateway);
    ip.run(&[
        "link",
        "add",
        "name",
        &r.bridge,
        "address",
        &r.bridge_mac,
        "type",
        "bridge",
    ])?;
    let alias = format!("haop lab {}", r.name);
    ip.run(&["link", "set", "dev", &r.bridge, "alias", &alias])?;
    ip.run(&["addr", "add", &gateway, "dev", &r.bridge])?;
    ip.run(&["link", "set", "dev", &r.bridge, "up"])?;
    for h in &r.hosts {
        let address = format!("{}/24", h.address);
        ip.run(&["netns", "add", &h.namespace])?;
        ip.run(&[
            "link",
            "add",
            &h.veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &h.namespace,
        ])?;
        ip.run(&["link", "set", "dev", &h.veth, "master", &r.bridge, "up"])?;
        ip.run(&["-n", &h.namespace, "addr", "add", &address, "dev", "eth0"])?;
        ip.run(&["-n", &h.namespace, "link", "set", "dev", "eth0", "up"])?;
        ip.run(&["-n", &h.namespace, "link", "set", "dev", "lo", "up"])?;
        info!(lab = %r.name, host = %h.name, namespace = %h.namespace, address = %h.address, "host network created");
    }
    Ok(())
}

/// Kills every process left in namespace `ns` (what the agent supervised) and waits for them.
fn kill_namespace_processes(ip: &Ip, ns: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pids = ip.netns_pids(ns).map_err(|e| crate::error_chain(&e))?;
        let me = std::process::id();
        let alive: Vec<u32> = pids
            .into_iter()
            .filter(|p| *p != me && !sys::process_gone(*p))
            .collect();
        if alive.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("processes {alive:?} still run in namespace {ns}"));
        }
        for pid in &alive {
            info!(namespace = %ns, pid, "killing a process left in the lab host");
            agents::signal(*pid, Signal::SIGKILL).map_err(|e| crate::error_chain(&e))?;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes what `record` describes and exists; then the lab's directory, when all went well.
fn teardown(ip: &Ip, dir: &Path, record: &LabRecord) -> Result<(), LabError> {
    // Booted hosts are powered off (and their roots unmounted) before their namespaces go.
    let mut problems = booted::stop(dir);
    problems.extend(agents::stop_agents(&record.hosts));
    for h in &record.hosts {
        if sys::netns_exists(&h.namespace) {
            if let Err(p) = kill_namespace_processes(ip, &h.namespace) {
                problems.push(p);
            }
        }
    }
    let bridge_is_ours = sys::link_exists(&record.bridge)
        && sys::link_mac(&record.bridge).as_deref() == Some(record.bridge_mac.as_str());
    if sys::link_exists(&record.bridge) && !bridge_is_ours {
        warn!(bridge = %record.bridge, "bridge belongs to another lab now; leaving it");
    }
    for h in &record.hosts {
        if sys::link_exists(&h.veth) {
            let master = sys::link_master(&h.veth);
            let ours = match master {
                Some(m) => bridge_is_ours && m == record.bridge,
                // A veth left without a bridge: `up` died between creating and attaching it.
                None => true,
            };
            if ours {
                if let Err(e) = ip.run(&["link", "del", "dev", &h.veth]) {
                    if sys::link_exists(&h.veth) {
                        problems.push(crate::error_chain(&e));
                    }
                }
            }
        }
        if sys::netns_exists(&h.namespace) {
            if let Err(e) = ip.run(&["netns", "del", &h.namespace]) {
                problems.push(crate::error_chain(&e));
            }
        }
    }
    if bridge_is_ours {
        if let Err(e) = ip.run(&["link", "del", "dev", &record.bridge]) {
            problems.push(crate::error_chain(&e));
        }
    }
    if !problems.is_empty() {
        return Err(LabError::Teardown {
            lab: record.name.to_string(),
            errors: problems.join("; "),
        });
    }
    sys::remove_tree(dir)?;
    info!(lab = %record.name, "lab removed");
    Ok(())
}

/// The data dirs `unit` declared to the agent of `host`, as paths on this machine.
fn declared_data_dirs(host: &LabHost, unit: &str) -> Result<Vec<PathBuf>, LabError> {
    let path = host.root_dir.join(DECLARED_FILE);
    let no_data_dir = || LabError::NoDataDir {
        host: host.name.clone(),
        unit: unit.to_string(),
        declared: path.clone(),
    };
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_data_dir()),
        Err(source) => {
            return Err(LabError::Io {
                action: "read",
                path,
                source,
            })
        }
    };
    let declared: HashMap<String, Vec<String>> =
        serde_json::from_slice(&text).map_err(|source| LabError::DeclaredParse {
            path: path.clone(),
            source,
        })?;
    let dirs = declared.get(unit).cloned().unwrap_or_default();
    if dirs.is_empty() {
        return Err(no_data_dir());
    }
    dirs.iter()
        .map(|d| resolve_under_root(&host.root_dir, d))
        .collect()
}

/// `host_path` (absolute, inside the host) as a path on this machine under `root`. Refuses
/// `/`, `..`, and symlinks on the way (which could lead out of the host root).
fn resolve_under_root(root: &Path, host_path: &str) -> Result<PathBuf, LabError> {
    let unsafe_path = |reason: &str| LabError::UnsafeRemove {
        path: PathBuf::from(host_path),
        reason: reason.to_string(),
    };
    let p = Path::new(host_path);
    if !p.is_absolute() || host_path.contains('\0') {
        return Err(unsafe_path("not an absolute host path"));
    }
    let mut out = root.to_path_buf();
    let mut depth = 0;
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => {
                out.push(part);
                depth += 1;
                if fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(unsafe_path(&format!("{} is a symlink", out.display())));
                }
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(unsafe_path("contains .."));
            }
        }
    }
    if depth == 0 {
        return Err(unsafe_path("is the host's root"));
    }
    Ok(out)
}

/// Owns a lab and removes it when dropped, also when a test panics. For tests and tools that
/// must not leave namespaces and processes behind.
#[derive(Debug)]
pub struct LabGuard {
    lab: Option<Lab>,
}

impl LabGuard {
    pub fn new(lab: Lab) -> LabGuard {
        LabGuard { lab: Some(lab) }
    }

    /// [`Lab::up`], guarded.
    pub async fn up(state_dir: &Path, name: &str, spec: LabSpec) -> Result<LabGuard, LabError> {
        Lab::up(state_dir, name, spec).await.map(LabGuard::new)
    }

    /// Removes the lab now and reports how it went.
    pub fn down(mut self) -> Result<(), LabError> {
        match self.lab.take() {
            Some(lab) => lab.down(),
            None => Ok(()),
        }
    }

    /// Gives the lab up without removing it.
    pub fn into_inner(mut self) -> Lab {
        self.lab
            .take()
            .expect("a guard holds its lab until dropped")
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("a guard holds its lab until dropped")
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab
            .as_mut()
            .expect("a guard holds its lab until dropped")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.lab.take() {
            if let Err(e) = lab.down() {
                let msg = crate::error_chain(&e);
                warn!(lab = %lab.name(), error = %msg, "lab guard could not remove the lab");
                eprintln!("LabGuard: could not remove lab {}: {msg}", lab.name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dirs_resolve_under_the_root_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(
            resolve_under_root(r, "/var/lib/etcd").unwrap(),
            r.join("var/lib/etcd")
        );
        for bad in ["var/lib/etcd", "/", "/var/../etc", "/a/\0b", ""] {
            assert!(resolve_under_root(r, bad).is_err(), "{bad:?}");
        }
        fs::create_dir_all(r.join("var")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("var/lib")).unwrap();
        let e = resolve_under_root(r, "/var/lib/etcd").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn declared_dirs_are_read_from_the_host_root() {
        let root = tempfile::tempdir().unwrap();
        let host = LabHost {
            name: "etcd1".into(),
            roles: vec![Role::Etcd],
            namespace: "haop-t-etcd1".into(),
            veth: "hv1x1".into(),
            address: Ipv4Addr::new(10, 77, 1, 11),
            endpoint: "http://10.77.1.11:7443".into(),
            agent_pid: None,
            agent_start_time: None,
            root_dir: root.path().to_path_buf(),
            log_path: root.path().join("log"),
        };
        let e = declared_data_dirs(&host, "etcd.service").unwrap_err();
        assert!(matches!(e, LabError::NoDataDir { .. }), "{e}");
        let file = root.path().join(DECLARED_FILE);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(
            &file,
            r#"{"etcd.service": ["/var/lib/etcd"], "x.service": []}"#,
        )
        .unwrap();
        assert_eq!(
            declared_data_dirs(&host, "etcd.service").unwrap(),
            [root.path().join("var/lib/etcd")]
        );
        let e = declared_data_dirs(&host, "x.service").unwrap_err();
        assert!(matches!(e, LabError::NoDataDir { .. }), "{e}");
        fs::write(&file, "[").unwrap();
        let e = declared_data_dirs(&host, "etcd.service").unwrap_err();
        assert!(matches!(e, LabError::DeclaredParse { .. }), "{e}");
    }

    #[test]
    fn bridge_macs_differ_per_lab_and_index() {
        let a = bridge_mac(Path::new("/s/labs/a"), 1);
        assert_eq!(a, bridge_mac(Path::new("/s/labs/a"), 1));
        assert_ne!(a, bridge_mac(Path::new("/s/labs/b"), 1));
        assert_ne!(a, bridge_mac(Path::new("/s/labs/a"), 2));
        assert!(a.starts_with("02:") && a.len() == 17, "{a}");
    }

    #[test]
    fn plan_matches_the_layout() {
        let name = LabName::try_from("t1").unwrap();
        let spec = LabSpec {
            etcd: 3,
            masters: 1,
            workers: 1,
            from_seed: false,
        };
        let r = plan(
            Path::new("/s/labs/t1"),
            &name,
            spec,
            Addressing::new(4).unwrap(),
        );
        assert_eq!(r.bridge, "hbr4");
        assert_eq!(r.subnet, "10.77.4.0/24");
        let names: Vec<&str> = r.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["etcd1", "etcd2", "etcd3", "master1", "worker1"]);
        let w = &r.hosts[4];
        assert_eq!(w.namespace, "haop-t1-worker1");
        assert_eq!(w.veth, "hv4x5");
        assert_eq!(w.address.to_string(), "10.77.4.71");
        assert_eq!(w.roles, [Role::Worker]);
        assert_eq!(w.root_dir, Path::new("/s/labs/t1/hosts/worker1"));
        assert_eq!(w.log_path, Path::new("/s/labs/t1/logs/worker1.log"));
    }

    #[test]
    fn invalid_names_are_refused_before_anything_happens() {
        let dir = tempfile::tempdir().unwrap();
        let e = Lab::create(dir.path(), "Bad_Name", LabSpec::default()).unwrap_err();
        assert!(matches!(e, LabError::InvalidName { .. }), "{e}");
        let e = Lab::open(dir.path(), "../etc").unwrap_err();
        assert!(matches!(e, LabError::InvalidName { .. }), "{e}");
        let e = Lab::down_named(dir.path(), "nosuch").unwrap_err();
        assert!(matches!(e, LabError::NoSuchLab { .. }), "{e}");
        assert_eq!(Lab::down_all(dir.path()).unwrap(), Vec::<String>::new());
        assert!(!dir.path().join(LABS_DIR).exists());
    }
}
