//! Service units: one interface, two backends.
//!
//! The coordinator renders ordinary systemd unit files. On a host whose PID 1 is systemd the
//! agent hands them to systemd ([`systemd::Systemd`], through `systemctl` by absolute path). On a
//! host without systemd (containers, CI machines, and every lab host) the agent's built-in
//! [`supervisor::Supervisor`] runs the same unit file: `ExecStart` with `EnvironmentFile`,
//! `Environment`, `Restart` and `RestartSec`. The unit text is parsed by [`unitfile`].
//!
//! Lifecycle: the RPC layer writes the unit file to `/etc/systemd/system/NAME` (atomically,
//! through the agent's [`crate::paths::HostFs`]) and then calls [`ServiceManager::reload`]; the
//! backend reads the file from there whenever it starts the unit.

pub mod adopt;
pub mod supervisor;
pub mod systemd;
pub mod unitfile;

use crate::names::UnitName;

/// What can be asked of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitAction {
    Start,
    Stop,
    Restart,
    Enable,
    Disable,
}

/// A unit's state as the service manager sees it. Mirrors the proto's `UnitStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub installed: bool,
    /// "active", "activating", "inactive", "failed" or "unknown".
    pub active_state: String,
    /// "running", "dead", "auto-restart", "exited", ...
    pub sub_state: String,
    pub main_pid: u32,
    pub since_unix_ms: i64,
    pub restart_count: u32,
    pub enabled: bool,
    pub last_exit: String,
}

impl UnitState {
    pub fn is_running(&self) -> bool {
        self.active_state == "active" || self.active_state == "activating"
    }
}

/// Errors of unit operations. Messages name the unit.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("unit {unit} is not installed")]
    NotInstalled { unit: String },
    #[error("unit file of {unit} is invalid: {reason}")]
    InvalidUnitFile { unit: String, reason: String },
    #[error("cannot start {unit}: program {program}")]
    Spawn {
        unit: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} failed for {unit} ({status}): {stderr}")]
    Command {
        unit: String,
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
    #[error("unit {unit} did not stop within {seconds}s")]
    StopTimeout { unit: String, seconds: u64 },
    #[error("service manager I/O for {unit}")]
    Io {
        unit: String,
        #[source]
        source: std::io::Error,
    },
}

/// A service manager backend. Every call is an idempotent ensure: `action` reports whether it
/// changed anything (start on a running unit is `false`; restart is always `true`).
#[tonic::async_trait]
pub trait ServiceManager: Send + Sync + std::fmt::Debug {
    /// "systemd" or "supervisor", as reported in facts.
    fn backend(&self) -> &'static str;
    /// Called after a unit file was written or removed (systemd: `daemon-reload`).
    async fn reload(&self) -> Result<(), UnitError>;
    async fn action(&self, unit: &UnitName, action: UnitAction) -> Result<bool, UnitError>;
    async fn status(&self, unit: &UnitName) -> Result<UnitState, UnitError>;
    /// Called when the agent exits. Units outlive the agent with either backend (systemd's by
    /// nature, the supervisor's for the next agent to adopt), so this only lets go of them.
    async fn shutdown(&self);
}
