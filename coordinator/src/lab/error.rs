//! The lab's errors: one enum, each variant carrying what a person needs to act on it.

use std::path::PathBuf;

use crate::agent::AgentError;

/// The end of an agent's log, shown when the agent failed to come up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    pub path: PathBuf,
    pub tail: String,
}

impl std::fmt::Display for LogTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "last lines of {}:\n{}", self.path.display(), self.tail)
    }
}

/// Errors of `haop lab`. Messages name the lab, host, path or program involved and do not
/// repeat their source; the chain is rendered once by whoever shows it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("haop lab needs root: it creates network namespaces")]
    NotRoot,
    #[error("invalid lab name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid lab size: {reason}")]
    InvalidSpec { reason: String },
    #[error("lab {name} already exists at {path} (`haop lab down {name}` removes it)")]
    LabExists { name: String, path: PathBuf },
    #[error("no lab {name} in {path}")]
    NoSuchLab { name: String, path: PathBuf },
    #[error("lab {lab} has no host {host} (hosts: {known})")]
    NoSuchHost {
        lab: String,
        host: String,
        known: String,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::fsio::FsioError),
    #[error("lab record {path} is not valid")]
    RecordParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{tool} not found (tried {tried})")]
    ToolMissing { tool: &'static str, tried: String },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} failed ({status}): {stderr}")]
    Command {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("no free lab subnet: every index 1..={max} has its bridge (hbr1..hbr{max})")]
    NoFreeSubnet { max: u8 },
    #[error(
        "network namespace {namespace} already exists (a lab of the same name in another state \
         dir?)"
    )]
    NamespaceExists { namespace: String },
    #[error("haop-agent binary not found (tried {tried}); build it or set HAOP_AGENT_BIN")]
    AgentBinaryMissing { tried: String },
    #[error("cannot start the agent of host {host}")]
    AgentSpawn {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("agent of host {host} exited ({status}); {log}")]
    AgentDied {
        host: String,
        status: String,
        log: Box<LogTail>,
    },
    #[error(
        "agent of host {host} did not answer GetFacts at {endpoint} within {seconds}s \
         ({last_error}); {log}"
    )]
    AgentNotReady {
        host: String,
        endpoint: String,
        seconds: u64,
        last_error: String,
        log: Box<LogTail>,
    },
    #[error("agent of host {host} is not running")]
    AgentNotRunning { host: String },
    #[error("trust material of the lab's state dir")]
    Trust(#[from] crate::trust::TrustError),
    #[error("cannot enroll the agent of host {host}")]
    Enroll {
        host: String,
        #[source]
        source: crate::trust::TrustError,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("agent of host {host}: no answer to {rpc} within {} ms", .waited.as_millis())]
    Late {
        host: String,
        rpc: &'static str,
        waited: std::time::Duration,
    },
    #[error("{rate:?} is not a rate; write it as tc does, such as 20mbit or 512kbit")]
    BadRate { rate: String },
    #[error("unit {unit} on host {host} is not running ({state})")]
    UnitNotRunning {
        host: String,
        unit: String,
        state: String,
    },
    #[error("unit {unit} on host {host} declares no data dir (in {declared})")]
    NoDataDir {
        host: String,
        unit: String,
        declared: PathBuf,
    },
    #[error("declared data dirs file {path} is not valid")]
    DeclaredParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("refusing to remove {path}: {reason}")]
    UnsafeRemove { path: PathBuf, reason: String },
    #[error("refusing to touch link {link}: {reason}")]
    NotOurLink { link: String, reason: String },
    #[error("refusing to signal pid {pid}: {reason}")]
    ForeignProcess { pid: u32, reason: String },
    #[error("cannot send {signal} to pid {pid}")]
    Signal {
        pid: u32,
        signal: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot write inventory {path}")]
    Inventory {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("lab {lab} was not fully removed, its record stays for another `down`: {errors}")]
    Teardown { lab: String, errors: String },
    #[error(
        "the lab root {root} is in use by a booted lab host ({mount}); take those labs down \
         before --refresh-root"
    )]
    RootInUse { root: PathBuf, mount: String },
    #[error("cannot build the lab root {root}: {reason}")]
    RootBuild { root: PathBuf, reason: String },
    #[error("host {host} is not a booted lab host (made with `haop lab up --systemd`)")]
    NotBooted { host: String },
    #[error("booted host {host} did not come up ({state}); {log}")]
    BootFailed {
        host: String,
        state: String,
        log: Box<LogTail>,
    },
    #[error("agent package for the booted lab: none found (tried {tried}); run packaging/build or pass --deb")]
    NoAgentDeb { tried: String },
    #[error("installing the agents of the booted lab over SSH failed: {errors}")]
    Install { errors: String },
    #[error(
        "the agent of booted host {host} is systemd's: `haop lab exec {lab} {host} -- systemctl \
         restart haop-agent` (or `systemctl kill -s KILL haop-agent`) restarts it"
    )]
    SystemdOwnsAgent { lab: String, host: String },
    #[error(transparent)]
    Hosts(Box<crate::hosts::HostsError>),
    #[error("the seed's PKI")]
    SeedPki(#[from] super::seed::pki::SeedPkiError),
    #[error("--seed-etcd-binary {path} is not a file")]
    SeedBinary { path: PathBuf },
    #[error(
        "the seed's etcd did not answer healthy within {seconds}s through its API with its CA \
         ({last_error}); {log}"
    )]
    SeedNotHealthy {
        seconds: u64,
        last_error: String,
        log: Box<LogTail>,
    },
}

impl From<crate::hosts::HostsError> for LabError {
    fn from(e: crate::hosts::HostsError) -> Self {
        LabError::Hosts(Box::new(e))
    }
}
