//! The systemd backend: units run by the host's systemd, driven through `systemctl`.
//!
//! On a host whose PID 1 is systemd, units belong to systemd: they outlive the agent, restart
//! on their own and show up in the tools operators already use. The agent only asks. It runs
//! `/usr/bin/systemctl` by absolute path with a cleared environment and `LC_ALL=C.UTF-8` (so
//! the output it parses is not translated), and every failure carries the program, its
//! arguments, its exit status and its stderr.
//!
//! Each action is an ensure: the current state is read first (`show`, `is-enabled`) so that
//! `changed` is reported truthfully. Start and restart block until systemd finishes the job (as
//! a plain `systemctl start` does) so that a failing unit is reported; if the caller gives up
//! (the RPC is cancelled) the `systemctl` client is killed and the job carries on in systemd.
//!
//! Parsing of `systemctl show` output is a pure function ([`parse_show`]) and is tested with
//! sample text; the real calls can only be tested on a host booted with systemd.

use std::path::{Path, PathBuf};
use std::process::Output;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tracing::{debug, info};

use super::{ServiceManager, UnitAction, UnitError, UnitState};
use crate::names::UnitName;

/// Where `systemctl` lives on Debian and Ubuntu (merged /usr).
pub const SYSTEMCTL: &str = "/usr/bin/systemctl";

/// The properties [`Systemd::status`] asks `systemctl show` for.
pub const SHOW_PROPERTIES: &str = "LoadState,ActiveState,SubState,MainPID,\
ActiveEnterTimestampMonotonic,StateChangeTimestampMonotonic,NRestarts,UnitFileState,\
ExecMainCode,ExecMainStatus,Result";

/// Whether the machine was booted with systemd, as `sd_booted(3)` decides: the directory
/// `/run/systemd/system` exists.
pub fn systemd_is_pid1() -> bool {
    std::fs::symlink_metadata("/run/systemd/system").is_ok_and(|m| m.is_dir())
}

/// Units managed by the host's systemd through `systemctl`.
#[derive(Debug, Clone)]
pub struct Systemd {
    systemctl: PathBuf,
}

impl Default for Systemd {
    fn default() -> Self {
        Systemd::new()
    }
}

impl Systemd {
    pub fn new() -> Self {
        Systemd {
            systemctl: PathBuf::from(SYSTEMCTL),
        }
    }

    /// Uses another `systemctl` binary (an absolute path), for hosts that keep it elsewhere.
    pub fn with_systemctl(path: impl Into<PathBuf>) -> Self {
        Systemd {
            systemctl: path.into(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.systemctl);
        cmd.args(args)
            .env_clear()
            .env("LC_ALL", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs systemctl and returns its output whatever its exit status.
    async fn output(&self, unit: &str, args: &[&str]) -> Result<Output, UnitError> {
        debug!(unit, args = ?args, "running systemctl");
        self.command(args)
            .output()
            .await
            .map_err(|source| UnitError::Spawn {
                unit: unit.to_string(),
                program: self.systemctl.display().to_string(),
                source,
            })
    }

    /// Runs systemctl and fails unless it exits 0.
    async fn run(&self, unit: &str, args: &[&str]) -> Result<Output, UnitError> {
        let out = self.output(unit, args).await?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(command_error(&self.systemctl, unit, args, &out))
        }
    }

    async fn show(&self, unit: &UnitName) -> Result<ShowOutput, UnitError> {
        let property = format!("--property={SHOW_PROPERTIES}");
        let out = self
            .run(unit.as_str(), &["show", unit.as_str(), &property])
            .await?;
        Ok(ShowOutput::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// `systemctl is-enabled`: prints the state and exits non-zero for anything but enabled,
    /// so the text is what counts. Empty output (older systemd on a missing unit) is
    /// "not-found".
    async fn is_enabled(&self, unit: &UnitName) -> Result<String, UnitError> {
        let out = self
            .output(unit.as_str(), &["is-enabled", unit.as_str()])
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let state = text.lines().next().unwrap_or("").trim();
        Ok(if state.is_empty() {
            "not-found".to_string()
        } else {
            state.to_string()
        })
    }

    async fn mutate(&self, unit: &UnitName, verb: &str) -> Result<(), UnitError> {
        info!(unit = %unit, verb, "systemctl changing unit");
        self.run(unit.as_str(), &["--no-ask-password", verb, unit.as_str()])
            .await
            .map(|_| ())
    }
}

fn command_error(program: &Path, unit: &str, args: &[&str], out: &Output) -> UnitError {
    UnitError::Command {
        unit: unit.to_string(),
        program: program.display().to_string(),
        args: args.join(" "),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

#[tonic::async_trait]
impl ServiceManager for Systemd {
    fn backend(&self) -> &'static str {
        "systemd"
    }

    async fn reload(&self) -> Result<(), UnitError> {
        self.run("all units", &["--no-ask-password", "daemon-reload"])
            .await
            .map(|_| ())
    }

    async fn action(&self, unit: &UnitName, action: UnitAction) -> Result<bool, UnitError> {
        match action {
            UnitAction::Start => {
                let show = self.show(unit).await?;
                let running = match show.get("ActiveState") {
                    "active" | "reloading" => true,
                    // A unit waiting to be restarted is started now, as `systemctl start` does.
                    "activating" => show.get("SubState") != "auto-restart",
                    _ => false,
                };
                if running {
                    return Ok(false);
                }
                self.mutate(unit, "start").await?;
                Ok(true)
            }
            UnitAction::Stop => {
                let show = self.show(unit).await?;
                if matches!(show.get("ActiveState"), "inactive" | "failed" | "") {
                    return Ok(false);
                }
                self.mutate(unit, "stop").await?;
                Ok(true)
            }
            UnitAction::Restart => {
                self.mutate(unit, "restart").await?;
                Ok(true)
            }
            UnitAction::Enable => {
                if self.is_enabled(unit).await? == "enabled" {
                    return Ok(false);
                }
                self.mutate(unit, "enable").await?;
                Ok(true)
            }
            UnitAction::Disable => {
                let state = self.is_enabled(unit).await?;
                if !matches!(
                    state.as_str(),
                    "enabled" | "enabled-runtime" | "linked" | "alias"
                ) {
                    return Ok(false);
                }
                self.mutate(unit, "disable").await?;
                Ok(true)
            }
        }
    }

    async fn status(&self, unit: &UnitName) -> Result<UnitState, UnitError> {
        let show = self.show(unit).await?;
        Ok(show.to_state(Clocks::now()))
    }

    async fn shutdown(&self) {
        // systemd's units outlive the agent.
    }
}

/// The two clocks needed to turn systemd's monotonic timestamps into wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clocks {
    pub now_unix_ms: i64,
    /// CLOCK_MONOTONIC in microseconds, the clock of systemd's `*TimestampMonotonic`.
    pub now_monotonic_us: u64,
}

impl Clocks {
    pub fn now() -> Self {
        let now_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let now_monotonic_us = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|ts| {
                u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000
                    + u64::try_from(ts.tv_nsec()).unwrap_or(0) / 1_000
            })
            .unwrap_or(0);
        Clocks {
            now_unix_ms,
            now_monotonic_us,
        }
    }
}

/// `systemctl show` output: `Key=Value` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShowOutput {
    props: Vec<(String, String)>,
}

impl ShowOutput {
    pub fn parse(text: &str) -> Self {
        ShowOutput {
            props: text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        }
    }

    /// The value of a property, "" when absent.
    pub fn get(&self, key: &str) -> &str {
        self.props
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    fn number(&self, key: &str) -> u64 {
        self.get(key).parse().unwrap_or(0)
    }

    /// The unit's state in the agent's terms.
    pub fn to_state(&self, clocks: Clocks) -> UnitState {
        let load = self.get("LoadState");
        let active_state = match self.get("ActiveState") {
            "" => "unknown",
            s => s,
        };
        // The last state change; older systemd lacks it, so fall back to the last activation.
        let mono = match self.number("StateChangeTimestampMonotonic") {
            0 => self.number("ActiveEnterTimestampMonotonic"),
            t => t,
        };
        let since_unix_ms = if mono == 0 || mono > clocks.now_monotonic_us {
            0
        } else {
            let age_ms = i64::try_from((clocks.now_monotonic_us - mono) / 1_000).unwrap_or(0);
            clocks.now_unix_ms.saturating_sub(age_ms)
        };
        UnitState {
            installed: !matches!(load, "not-found" | ""),
            active_state: active_state.to_string(),
            sub_state: self.get("SubState").to_string(),
            main_pid: u32::try_from(self.number("MainPID")).unwrap_or(0),
            since_unix_ms,
            restart_count: u32::try_from(self.number("NRestarts")).unwrap_or(u32::MAX),
            enabled: matches!(self.get("UnitFileState"), "enabled" | "enabled-runtime"),
            last_exit: self.last_exit(),
        }
    }

    /// "exited 1", "killed by SIGKILL", "killed by SIGSEGV (core dumped)", with systemd's
    /// `Result` appended when it says more than the exit does ("exited 0, result timeout").
    /// Empty when the main process never ended.
    fn last_exit(&self) -> String {
        let status = self.number("ExecMainStatus");
        let code = self.get("ExecMainCode");
        let base = match code {
            // CLD_EXITED, CLD_KILLED, CLD_DUMPED as numbers or names.
            "1" | "exited" => format!("exited {status}"),
            "2" | "killed" => format!("killed by {}", signal_name(status)),
            "3" | "dumped" => format!("killed by {} (core dumped)", signal_name(status)),
            _ => String::new(),
        };
        match self.get("Result") {
            "" | "success" | "exit-code" | "signal" | "core-dump" => base,
            result if base.is_empty() => format!("result {result}"),
            result => format!("{base}, result {result}"),
        }
    }
}

/// Parses `systemctl show` text into a unit state (see [`ShowOutput::to_state`]).
pub fn parse_show(text: &str, clocks: Clocks) -> UnitState {
    ShowOutput::parse(text).to_state(clocks)
}

fn signal_name(n: u64) -> String {
    i32::try_from(n)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| format!("signal {n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCKS: Clocks = Clocks {
        now_unix_ms: 1_700_000_100_000,
        now_monotonic_us: 500_000_000,
    };

    #[test]
    fn running_unit() {
        let text = "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=4242\n\
                    ActiveEnterTimestampMonotonic=400000000\n\
                    StateChangeTimestampMonotonic=400000000\nNRestarts=2\n\
                    UnitFileState=enabled\nExecMainCode=0\nExecMainStatus=0\nResult=success\n";
        let s = parse_show(text, CLOCKS);
        assert_eq!(
            s,
            UnitState {
                installed: true,
                active_state: "active".into(),
                sub_state: "running".into(),
                main_pid: 4242,
                since_unix_ms: 1_700_000_000_000,
                restart_count: 2,
                enabled: true,
                last_exit: String::new(),
            }
        );
        assert!(s.is_running());
    }

    #[test]
    fn failed_and_restarting_units() {
        let failed = parse_show(
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nMainPID=0\n\
             ActiveEnterTimestampMonotonic=0\nStateChangeTimestampMonotonic=499000000\n\
             NRestarts=0\nUnitFileState=disabled\nExecMainCode=1\nExecMainStatus=1\n\
             Result=exit-code\n",
            CLOCKS,
        );
        assert_eq!(failed.active_state, "failed");
        assert_eq!(failed.last_exit, "exited 1");
        assert_eq!(failed.since_unix_ms, 1_700_000_099_000);
        assert!(!failed.enabled && !failed.is_running());

        let restarting = parse_show(
            "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nMainPID=0\n\
             NRestarts=3\nUnitFileState=enabled\nExecMainCode=2\nExecMainStatus=9\n\
             Result=signal\n",
            CLOCKS,
        );
        assert_eq!(restarting.sub_state, "auto-restart");
        assert_eq!(restarting.last_exit, "killed by SIGKILL");
        assert_eq!(restarting.restart_count, 3);
        assert_eq!(restarting.since_unix_ms, 0);

        let timeout = parse_show(
            "ActiveState=failed\nExecMainCode=2\nExecMainStatus=9\nResult=timeout\n",
            CLOCKS,
        );
        assert_eq!(timeout.last_exit, "killed by SIGKILL, result timeout");
        let dumped = parse_show(
            "ExecMainCode=3\nExecMainStatus=11\nResult=core-dump\n",
            CLOCKS,
        );
        assert_eq!(dumped.last_exit, "killed by SIGSEGV (core dumped)");
        let limit = parse_show("ExecMainCode=0\nResult=start-limit-hit\n", CLOCKS);
        assert_eq!(limit.last_exit, "result start-limit-hit");
    }

    #[test]
    fn missing_unit_and_garbage() {
        let s = parse_show(
            "LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n\
             UnitFileState=\nNRestarts=[not set]\n",
            CLOCKS,
        );
        assert!(!s.installed);
        assert_eq!(s.active_state, "inactive");
        assert_eq!(s.restart_count, 0);
        let empty = parse_show("", CLOCKS);
        assert_eq!(empty.active_state, "unknown");
        assert!(!empty.installed);
        // Values may contain '='.
        let out = ShowOutput::parse("ExecStart={ path=/bin/etcd ; argv[]=/bin/etcd a=b }\n");
        assert_eq!(
            out.get("ExecStart"),
            "{ path=/bin/etcd ; argv[]=/bin/etcd a=b }"
        );
    }

    #[test]
    fn command_errors_name_everything() {
        use std::os::unix::process::ExitStatusExt;
        let out = Output {
            status: std::process::ExitStatus::from_raw(5 << 8),
            stdout: Vec::new(),
            stderr: b"Failed to start etcd.service: Unit etcd.service not found.\n".to_vec(),
        };
        let e = command_error(
            Path::new(SYSTEMCTL),
            "etcd.service",
            &["start", "etcd.service"],
            &out,
        );
        let msg = e.to_string();
        for part in [
            "/usr/bin/systemctl",
            "start etcd.service",
            "exit status: 5",
            "not found.",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
    }

    #[tokio::test]
    async fn missing_systemctl_is_a_spawn_error() {
        let sd = Systemd::with_systemctl("/nonexistent/systemctl");
        let unit = UnitName::try_from("etcd.service").unwrap();
        let e = sd.status(&unit).await.unwrap_err();
        assert!(matches!(e, UnitError::Spawn { .. }), "{e}");
    }

    #[test]
    fn clocks_are_sane() {
        let c = Clocks::now();
        assert!(c.now_unix_ms > 1_600_000_000_000);
        assert!(c.now_monotonic_us > 0);
    }
}
