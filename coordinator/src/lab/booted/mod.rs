//! Booted lab hosts: each one a container with systemd as PID 1 (`haop lab up --systemd`).
//!
//! Why: the namespace lab runs every unit under the agent's built-in supervisor, so the paths a
//! real Debian host takes were never exercised together: the systemd backend, the .deb's
//! maintainer scripts enabling the agent, etcd's `Type=notify` under systemd, journald, the
//! agent restarted by systemd while etcd runs on, and agents reached over SSH. A booted host has
//! all of them, on this machine, in seconds.
//!
//! What a booted host is: the lab's network namespace and bridge as for any lab host (so
//! addresses, inventory and faults are the same), and in it a `systemd-nspawn --boot` container
//! (`--network-namespace-path`, `--register=no --keep-unit`: this machine's PID 1 need not be
//! systemd, so there is no machined and no scope). Its root is an overlayfs over the cached
//! Debian root ([`rootfs`]), mounted at the host's usual root dir
//! (`<state-dir>/labs/NAME/hosts/HOST`), with the writes in `overlay/HOST/upper`. Before boot the
//! lab writes the host's name, machine id, its own SSH host key, the lab's SSH key as root's
//! authorized key, and pins the host key in `<lab>/ssh/known_hosts`. The agent is not there:
//! `haop hosts install` puts it there over SSH from the .deb, as on a real host (`haop lab up
//! --systemd` does that itself unless `--bare`).
//!
//! Lifecycle. [`start`] writes `booted.json` (this module's intent log, beside `lab.json`)
//! before it mounts or starts anything, records each nspawn pid at once, and waits until every
//! host's systemd says `running`. [`stop`] powers each container off (SIGTERM to nspawn, which
//! asks systemd in the container for a clean poweroff; SIGKILL after [`POWEROFF_GRACE`]) and
//! unmounts the overlays, whatever point `start` reached, so that the lab's ordinary teardown
//! can remove namespaces and directories. Pids are checked (start time and `--directory=` on
//! the command line) before they are signalled; nothing is killed by name.

mod container;
mod lab;
pub mod rootfs;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::record::LabHost;
use super::sys;
use super::LabError;

pub use container::{machine_pid, NSPAWN};
pub use lab::{find_agent_deb, quiet, BootedOptions, AGENT_DEB_ENV, LAB_AGENT_SETTINGS};

/// The booted part of a lab's record, beside `lab.json`.
pub const BOOTED_FILE: &str = "booted.json";
/// How long a host's systemd may take to reach `running`.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a container may take to power off before nspawn gets SIGKILL.
pub const POWEROFF_GRACE: Duration = Duration::from_secs(30);

/// What `up --systemd` made, per host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootedRecord {
    /// The cached root every overlay has as its lower layer.
    pub root: PathBuf,
    pub hosts: Vec<BootedHost>,
}

/// One booted host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootedHost {
    pub name: String,
    /// nspawn's machine name, `haop-<lab>-<host>`.
    pub machine: String,
    /// The overlay's mount point: the lab host's root dir.
    pub merged: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub nspawn_pid: Option<u32>,
    pub nspawn_start_time: Option<u64>,
    /// nspawn's output: the container's console.
    pub console_log: PathBuf,
}

impl BootedRecord {
    pub fn path(lab_dir: &Path) -> PathBuf {
        lab_dir.join(BOOTED_FILE)
    }

    /// The record of `lab_dir`, when the lab is booted.
    pub fn read(lab_dir: &Path) -> Result<Option<BootedRecord>, LabError> {
        let path = Self::path(lab_dir);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LabError::Io {
                    action: "read booted lab record",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| LabError::RecordParse { path, source })
    }

    pub fn write(&self, lab_dir: &Path) -> Result<(), LabError> {
        let mut text = serde_json::to_vec_pretty(self).expect("a booted record serializes");
        text.push(b'\n');
        Ok(crate::fsio::write_atomic(
            &Self::path(lab_dir),
            &text,
            0o644,
        )?)
    }

    pub fn host(&self, name: &str) -> Option<&BootedHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// The lab's own SSH client key and the known_hosts file that pins its hosts' keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSsh {
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
}

impl LabSsh {
    pub fn of(lab_dir: &Path) -> LabSsh {
        let dir = lab_dir.join("ssh");
        LabSsh {
            identity: dir.join("id_ed25519"),
            known_hosts: dir.join("known_hosts"),
        }
    }
}

/// The machine name of a host: unique on this machine, like the namespace.
fn machine_name(host: &LabHost) -> String {
    host.namespace.clone()
}

/// The plan of `hosts`' containers, before anything exists.
pub fn plan(lab_dir: &Path, root: &Path, hosts: &[LabHost]) -> BootedRecord {
    BootedRecord {
        root: root.to_path_buf(),
        hosts: hosts
            .iter()
            .map(|h| BootedHost {
                name: h.name.clone(),
                machine: machine_name(h),
                merged: h.root_dir.clone(),
                upper: lab_dir.join("overlay").join(&h.name).join("upper"),
                work: lab_dir.join("overlay").join(&h.name).join("work"),
                nspawn_pid: None,
                nspawn_start_time: None,
                console_log: lab_dir.join("logs").join(format!("{}.console.log", h.name)),
            })
            .collect(),
    }
}

/// Mounts each host's root, writes its identity, boots it, and waits until every host's
/// systemd is `running` (blocking). `booted.json` is written before anything it describes.
pub fn start(lab_dir: &Path, root: &Path, hosts: &[LabHost]) -> Result<BootedRecord, LabError> {
    let mut record = plan(lab_dir, root, hosts);
    record.write(lab_dir)?;
    let ssh = LabSsh::of(lab_dir);
    let client_pub = container::client_key(&ssh, lab_dir)?;
    let mut known_hosts = String::new();
    for (i, host) in hosts.iter().enumerate() {
        let b = record.hosts[i].clone();
        container::mount_overlay(root, &b)?;
        let host_key = container::write_identity(host, &b, &client_pub)?;
        known_hosts.push_str(&format!("{} {}\n", host.address, host_key.trim()));
        let (pid, start_time) = container::spawn(host, &b)?;
        record.hosts[i].nspawn_pid = Some(pid);
        record.hosts[i].nspawn_start_time = start_time;
        record.write(lab_dir)?;
    }
    crate::fsio::write_atomic(&ssh.known_hosts, known_hosts.as_bytes(), 0o644)?;
    let started = std::time::Instant::now();
    for b in &record.hosts {
        container::wait_running(b, BOOT_TIMEOUT.saturating_sub(started.elapsed()))?;
        container::writable_net_sysctls(b)?;
    }
    info!(
        hosts = record.hosts.len(),
        seconds = started.elapsed().as_secs_f64(),
        "booted hosts are running"
    );
    Ok(record)
}

/// Powers off every container of the lab in `lab_dir` and unmounts the overlays. A lab that is
/// not booted is left as it is. Answers one message per problem.
pub fn stop(lab_dir: &Path) -> Vec<String> {
    let record = match BootedRecord::read(lab_dir) {
        Ok(Some(r)) => r,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![crate::error_chain(&e)],
    };
    let mut problems = Vec::new();
    let mut ours = Vec::new();
    for b in &record.hosts {
        if let Some(pid) = container::nspawn_process(b) {
            info!(host = %b.name, pid, "powering the container off");
            match super::agents::signal(pid, nix::sys::signal::Signal::SIGTERM) {
                Ok(()) => ours.push(pid),
                Err(e) => problems.push(crate::error_chain(&e)),
            }
        }
    }
    let left = super::agents::wait_gone(&ours, POWEROFF_GRACE);
    for pid in &left {
        warn!(
            pid,
            "container did not power off in time; SIGKILL to nspawn"
        );
        if let Err(e) = super::agents::signal(*pid, nix::sys::signal::Signal::SIGKILL) {
            problems.push(crate::error_chain(&e));
        }
    }
    for pid in super::agents::wait_gone(&left, Duration::from_secs(10)) {
        problems.push(format!("nspawn pid {pid} still runs after SIGKILL"));
    }
    for b in &record.hosts {
        if let Err(e) = container::unmount_overlay(b) {
            problems.push(crate::error_chain(&e));
        }
    }
    problems
}

/// Whether `host`'s container runs (its nspawn is ours and alive).
pub fn running(lab_dir: &Path, host: &str) -> bool {
    matches!(BootedRecord::read(lab_dir), Ok(Some(r)) if r.host(host).and_then(container::nspawn_process).is_some())
}

/// The pid (on this machine) of PID 1 of `host`'s container.
pub fn leader(lab_dir: &Path, host: &str) -> Result<u32, LabError> {
    let record = BootedRecord::read(lab_dir)?.ok_or_else(|| LabError::NotBooted {
        host: host.to_string(),
    })?;
    let b = record.host(host).ok_or_else(|| LabError::NotBooted {
        host: host.to_string(),
    })?;
    container::leader(b).ok_or_else(|| LabError::AgentNotRunning {
        host: host.to_string(),
    })
}

/// A command that runs `command` inside booted host `host` (all its container's namespaces).
pub fn exec_command(
    lab_dir: &Path,
    host: &str,
    command: &[std::ffi::OsString],
) -> Result<std::process::Command, LabError> {
    let record = BootedRecord::read(lab_dir)?.ok_or_else(|| LabError::NotBooted {
        host: host.to_string(),
    })?;
    let b = record.host(host).ok_or_else(|| LabError::NotBooted {
        host: host.to_string(),
    })?;
    container::exec_command(b, command)
}

/// Whether nothing is mounted in the lab's directory any more.
pub fn nothing_mounted(lab_dir: &Path) -> bool {
    sys::mounts_under(lab_dir).is_empty()
}
