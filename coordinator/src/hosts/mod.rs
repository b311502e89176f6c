//! Agents onto bare hosts over SSH: `haop hosts install` and `haop agent upgrade`.
//!
//! Why: before this, an operator installed the .deb on every box by hand and copied a token and
//! the CA hash into each `/etc/haop/agent.toml`, which is what kubeadm's guide ("use ssh and
//! scp") leaves to people and what k0sctl and Kubespray automate. Here haop does it, from the
//! inventory, with the operator's own OpenSSH client ([`ssh`]) and host keys pinned
//! ([`hostkeys`]).
//!
//! Lifecycle of one host in [`install`] (hosts in parallel, each failure its own):
//! 1. probe over SSH: is haop-agent installed, at which version against the .deb's, does systemd
//!    run, is the agent active;
//! 2. ask the agent over mTLS whether it is enrolled with this state dir's CA;
//! 3. enrolled at the same version: nothing to do. Installed at a newer version: left alone
//!    (never downgraded). Otherwise upload the .deb (sha256 checked on the host), `dpkg -i` it;
//!    when not enrolled, write agent.toml with a fresh single-use token and the CA hash, restart
//!    the agent under systemd and enroll it, as `haop token create` and a person would.
//!
//! [`upgrade`] rolls a newer .deb to one host at a time: the package's postinst restarts the
//! agent (systemd keeps etcd and keepalived running; they are not the agent's children), haop
//! waits until the new agent answers over mTLS, and checks that every unit that ran before runs
//! with the same main pid. A host that fails stops the rollout.

mod deb;
pub mod hostkeys;
mod install;
pub mod ssh;

use std::path::PathBuf;

pub use deb::{AgentDeb, AGENT_PACKAGE};
pub use install::{
    install, upgrade, Action, HostOutcome, InstallOptions, Progress, ENROLL_TIMEOUT, WATCHED_UNITS,
};
pub use ssh::{default_known_hosts, parse_jump, Ssh, SshOptions, Target};

/// Errors of `haop hosts` and `haop agent upgrade`. Each names the host (and the SSH target);
/// messages do not repeat their source.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("agent package {path}: {reason}")]
    Deb { path: PathBuf, reason: String },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("host {host} ({target}): ssh failed: {stderr}")]
    Ssh {
        host: String,
        target: String,
        stderr: String,
    },
    #[error(
        "host {host} ({target}): its {key_type} host key is not pinned in {known_hosts}; check \
         the key out of band and rerun with --accept-new-host-keys to record it"
    )]
    UnknownHostKey {
        host: String,
        target: String,
        key_type: String,
        known_hosts: PathBuf,
    },
    #[error("{0}")]
    ChangedHostKey(Box<ChangedHostKey>),
    #[error("host {host}: {step} failed ({status}): {stderr}")]
    Remote {
        host: String,
        step: &'static str,
        status: String,
        stderr: String,
    },
    #[error("host {host}: {step}: no answer within {seconds} s")]
    Timeout {
        host: String,
        step: &'static str,
        seconds: u64,
    },
    #[error(
        "host {host} does not run systemd as PID 1 (/run/systemd/system is missing); the agent's \
         package needs it"
    )]
    NoSystemd { host: String },
    #[error("host {host} is {arch}, the package is for {package_arch}")]
    Architecture {
        host: String,
        arch: String,
        package_arch: String,
    },
    #[error("host {host} has no haop-agent installed; `haop hosts install` installs it")]
    NotInstalled { host: String },
    #[error("trust material of the state dir")]
    Trust(#[from] crate::trust::TrustError),
    #[error("host {host}: enrollment of its agent failed: {last_error}")]
    Enroll { host: String, last_error: String },
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error(
        "host {host}: unit {unit} did not survive the agent's upgrade (main pid {before} before, \
         {after} after); the rollout stops here"
    )]
    UnitRestarted {
        host: String,
        unit: String,
        before: u32,
        after: u32,
    },
    #[error("cannot create {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A host that offered another key than the one pinned for it: who, and both fingerprints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedHostKey {
    pub host: String,
    pub target: String,
    /// The name the key is pinned under in known_hosts.
    pub name: String,
    pub key_type: String,
    pub pinned: String,
    pub offered: String,
    /// `file:line` of the pinned key.
    pub pinned_at: String,
    pub known_hosts: PathBuf,
}

impl std::fmt::Display for ChangedHostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {} ({}): its {} host key CHANGED: pinned {} (in {}), offered {}; refusing to \
             connect. If the host was reinstalled, remove the old key (ssh-keygen -R {} -f {}) \
             and rerun with --accept-new-host-keys",
            self.host,
            self.target,
            self.key_type,
            self.pinned,
            self.pinned_at,
            self.offered,
            self.name,
            self.known_hosts.display()
        )
    }
}
