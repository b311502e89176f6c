//! The built-in supervisor: runs systemd unit files on hosts without systemd.
//!
//! Lab hosts, containers and CI machines have no systemd as PID 1, yet haop must run there the
//! very unit files it gives systemd on a real host, so that the lab rehearses the real thing.
//! The supervisor implements the part of systemd that haop's units use: `ExecStart` (quoting,
//! prefixes, `$VAR`/`${VAR}`), `Environment`, `EnvironmentFile`, `WorkingDirectory`, `Restart`
//! and `RestartSec`, `KillSignal` and `TimeoutStopSec`, enablement across agent restarts, and
//! `systemctl`-like states. It is deliberately not a second init: no dependencies, no cgroups,
//! no privilege dropping (`User=` is ignored with a warning).
//!
//! Lifecycle of a unit:
//! * `start` reads and parses the unit file every time (there is no daemon-reload cache), builds
//!   the environment, spawns the program in its own process group with stdout and stderr
//!   appended to `<state_dir>/logs/<unit>.log`, records the main pid in
//!   `<state_dir>/supervisor/<unit>.pid` (for outside tools) and the pid with its start time in
//!   `<unit>.proc` (for the next agent), and hands the child to a monitor task.
//! * The monitor waits for the main process. When it ends, what is left of its process group is
//!   killed (as systemd's control-group kill mode would), the exit is recorded, and if
//!   `Restart=` says so the unit waits `RestartSec` in `activating (auto-restart)` and is started
//!   again from a freshly read unit file.
//! * `stop` sends `KillSignal` to the process group, waits up to `TimeoutStopSec`, then sends
//!   SIGKILL. Every start and stop bumps the unit's *generation*; a monitor acts only for its own
//!   generation, which is how a stop cancels a pending restart.
//! * Enabled units are kept in `<state_dir>/supervisor/enabled.json`; the agent calls
//!   [`Supervisor::start_enabled`] when it starts, as boot would, except for a unit stopped on
//!   request during the machine's current boot (`<unit>.stopped` holds the boot id): as after
//!   `systemctl stop`, an agent restart does not start it again. (Recovery stops a dead member
//!   and relies on it staying stopped until it is wiped and added back.)
//!
//! Units outlive the agent, as systemd's do: an agent that exits, gracefully or not, leaves
//! them running (their own process groups keep them out of a signal to the agent's), and the
//! next agent adopts them ([`super::adopt`]) when it starts, instead of starting a second copy
//! or killing the first. An agent upgrade or crash therefore never restarts etcd; stopping the
//! units is what [`Supervisor::stop_all`] (and `systemctl stop`) is for.
//!
//! Programs run in the agent's own view of the filesystem (the agent has already entered its
//! host root, see [`crate::rootfs`]): the program path, its arguments and `WorkingDirectory` are
//! passed as written. Files the agent itself reads (the unit file, `EnvironmentFile`s, its
//! state) go through [`HostFs::real`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::{watch, Mutex as AsyncMutex};
use tracing::{debug, info, warn};

use super::adopt::{self, Orphan};
use super::unitfile::{self, ExitClass, RestartPolicy, ServiceSpec, ServiceType};
use super::{ServiceManager, UnitAction, UnitError, UnitState};
use crate::files::{write_atomic, Ownership};
use crate::names::UnitName;
use crate::paths::{HostFs, HostPath};

/// Where unit files live, as a host path.
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// `PATH` of every unit, before `Environment=` and `EnvironmentFile=`.
pub const UNIT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a process may take to die after SIGKILL before stop gives up on it (a process in
/// uninterruptible sleep).
const KILL_GRACE: Duration = Duration::from_secs(5);
const ENABLED_FILE: &str = "enabled.json";

/// Where a unit is in its lifecycle; mapped to systemd's active and sub states in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Dead,
    Running,
    /// Waiting `RestartSec` before starting again.
    AutoRestart,
    /// `stop` sent the kill signal and waits for the process to end.
    Stopping,
    /// Ended with a failure and will not be restarted.
    Failed,
    /// A `Type=oneshot` unit with `RemainAfterExit=yes` that finished successfully.
    Exited,
}

/// A unit's state, shared by the RPC side and the unit's monitor task through a watch channel,
/// so that stop can wait for the monitor to see the process end.
#[derive(Debug, Clone)]
struct RunState {
    generation: u64,
    phase: Phase,
    /// Set while a process of ours is alive (not yet reaped).
    main_pid: Option<u32>,
    since_unix_ms: i64,
    restart_count: u32,
    last_exit: String,
    /// How the current process is stopped, from the unit file it was started with.
    kill_signal: Signal,
    timeout_stop: Option<Duration>,
}

impl Default for RunState {
    fn default() -> Self {
        RunState {
            generation: 0,
            phase: Phase::Dead,
            main_pid: None,
            since_unix_ms: 0,
            restart_count: 0,
            last_exit: String::new(),
            kill_signal: Signal::SIGTERM,
            timeout_stop: Some(Duration::from_secs(10)),
        }
    }
}

#[derive(Debug)]
struct Slot {
    /// Serializes start, stop and the monitor's restarts of this unit.
    op: AsyncMutex<()>,
    state: watch::Sender<RunState>,
}

/// The main process of a unit: a child of this agent, or one an earlier agent started.
#[derive(Debug)]
enum MainProcess {
    Child(Child),
    Adopted(Orphan),
}

impl MainProcess {
    /// Waits for the process to end: its exit status for a child; for an adopted process,
    /// which this agent cannot reap, a description of what is known.
    async fn wait(&mut self, ignore_failure: bool) -> (String, ExitClass) {
        match self {
            MainProcess::Child(child) => match child.wait().await {
                Ok(status) => describe_exit(status, ignore_failure),
                Err(e) => (
                    format!("lost track of the process: {e}"),
                    ExitClass::UncleanCode,
                ),
            },
            MainProcess::Adopted(orphan) => {
                orphan.ended().await;
                (
                    "ended (exit status unknown: an earlier agent started it)".to_string(),
                    ExitClass::UncleanCode,
                )
            }
        }
    }
}

/// What a monitor needs to know about the process it watches.
#[derive(Debug)]
struct Launched {
    process: MainProcess,
    pid: u32,
    restart: RestartPolicy,
    restart_sec: Duration,
    ignore_failure: bool,
    service_type: ServiceType,
    remain_after_exit: bool,
    kill_signal: Signal,
    timeout_stop: Option<Duration>,
    /// When the process was launched (Unix ms; taken just before the spawn): what the unit's
    /// "active since" says, also after an adoption.
    started_unix_ms: i64,
}

#[derive(Debug)]
struct Inner {
    fs: HostFs,
    /// Real location of the unit directory.
    unit_dir: PathBuf,
    /// Real location of `<state_dir>/supervisor`.
    supervisor_dir: PathBuf,
    /// Real location of `<state_dir>/logs`.
    log_dir: PathBuf,
    slots: Mutex<HashMap<UnitName, Arc<Slot>>>,
    enabled: AsyncMutex<BTreeSet<UnitName>>,
}

/// The built-in service manager. Cheap to clone; clones share the units.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct EnabledFile {
    enabled: Vec<String>,
}

/// An `EnvironmentFile=` that could not be read, as the source of [`UnitError::Io`].
#[derive(Debug, thiserror::Error)]
#[error("cannot read environment file {path}")]
struct EnvFileError {
    path: String,
    #[source]
    source: std::io::Error,
}

fn io_err(unit: &str) -> impl FnOnce(std::io::Error) -> UnitError + '_ {
    move |source| UnitError::Io {
        unit: unit.to_string(),
        source,
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Supervisor {
    /// A supervisor keeping its state under `state_dir` (a host path). Reads the set of enabled
    /// units; starts nothing (see [`Supervisor::start_enabled`]).
    pub fn new(fs: HostFs, state_dir: HostPath) -> Result<Self, UnitError> {
        let unit_dir = match HostPath::try_from(UNIT_DIR) {
            Ok(p) => fs.real(&p),
            Err(e) => return Err(io_err("supervisor state")(std::io::Error::other(e))),
        };
        let state = fs.real(&state_dir);
        let supervisor_dir = state.join("supervisor");
        let enabled = load_enabled(&supervisor_dir.join(ENABLED_FILE))?;
        Ok(Supervisor {
            inner: Arc::new(Inner {
                fs,
                unit_dir,
                supervisor_dir,
                log_dir: state.join("logs"),
                slots: Mutex::new(HashMap::new()),
                enabled: AsyncMutex::new(enabled),
            }),
        })
    }

    /// What boot does for an agent: adopts every unit's process an earlier agent left running
    /// (enabled or not), then starts every enabled unit that does not run. Failures are logged
    /// and do not stop the others.
    pub async fn start_enabled(&self) {
        for unit in self.inner.units_with_pid_files().await {
            let slot = self.inner.slot(&unit);
            let _op = slot.op.lock().await;
            if slot.state.borrow().main_pid.is_some() {
                continue;
            }
            let Ok(spec) = self.inner.load_spec(&unit).await else {
                continue;
            };
            if let Some(orphan) = self
                .inner
                .find_orphan(&unit, &spec.exec_start.program)
                .await
            {
                self.inner.adopt(&unit, &slot, spec, orphan).await;
            }
        }
        let units: Vec<UnitName> = self.inner.enabled.lock().await.iter().cloned().collect();
        for unit in units {
            // Stopped on request since the machine booted: it stays stopped, as after
            // `systemctl stop` (an agent restart is not a boot).
            if self.inner.stopped_this_boot(&unit) {
                info!(unit = %unit, "enabled unit was stopped on request during this boot; left stopped");
                continue;
            }
            match self.action(&unit, UnitAction::Start).await {
                Ok(changed) => info!(unit = %unit, changed, "enabled unit started"),
                Err(e) => {
                    warn!(unit = %unit, error = %crate::error::render_chain(&e), "enabled unit failed to start")
                }
            }
        }
    }

    /// Real path of the file the unit's main pid is written to while it runs.
    pub fn pid_file(&self, unit: &UnitName) -> PathBuf {
        self.inner.pid_file(unit)
    }

    /// Real path of the file the unit's stdout and stderr are appended to.
    pub fn log_file(&self, unit: &UnitName) -> PathBuf {
        self.inner.log_file(unit)
    }
}

/// The kernel's id of the current boot (`/proc/sys/kernel/random/boot_id`, read in the agent's
/// own view: the machine's /proc is bind-mounted into a host root).
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn load_enabled(path: &Path) -> Result<BTreeSet<UnitName>, UnitError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(io_err("supervisor state")(e)),
    };
    let file: EnabledFile = serde_json::from_slice(&bytes).map_err(|e| {
        io_err("supervisor state")(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not valid: {e}", path.display()),
        ))
    })?;
    let mut set = BTreeSet::new();
    for name in file.enabled {
        match UnitName::try_from(name.as_str()) {
            Ok(unit) => {
                set.insert(unit);
            }
            Err(e) => warn!(path = %path.display(), error = %e, "ignoring invalid enabled unit"),
        }
    }
    Ok(set)
}

impl Inner {
    fn slot(&self, unit: &UnitName) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(unit.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    op: AsyncMutex::new(()),
                    state: watch::Sender::new(RunState::default()),
                })
            })
            .clone()
    }

    /// Units that have a pid file: those whose process may still run from an earlier agent.
    async fn units_with_pid_files(&self) -> Vec<UnitName> {
        let Ok(mut dir) = tokio::fs::read_dir(&self.supervisor_dir).await else {
            return Vec::new();
        };
        let mut units = Vec::new();
        while let Ok(Some(entry)) = dir.next_entry().await {
            let name = entry.file_name();
            let Some(unit) = name.to_str().and_then(|n| n.strip_suffix(".pid")) else {
                continue;
            };
            match UnitName::try_from(unit) {
                Ok(u) => units.push(u),
                Err(e) => debug!(file = %unit, error = %e, "ignoring a pid file of no valid unit"),
            }
        }
        units.sort();
        units
    }

    fn existing_slots(&self) -> Vec<(UnitName, Arc<Slot>)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn unit_file(&self, unit: &UnitName) -> PathBuf {
        self.unit_dir.join(unit.as_str())
    }

    fn pid_file(&self, unit: &UnitName) -> PathBuf {
        self.supervisor_dir.join(format!("{unit}.pid"))
    }

    /// Holds the boot id of the boot during which the unit was stopped on request.
    fn stopped_file(&self, unit: &UnitName) -> PathBuf {
        self.supervisor_dir.join(format!("{unit}.stopped"))
    }

    /// Whether the unit was stopped on request during the machine's current boot.
    fn stopped_this_boot(&self, unit: &UnitName) -> bool {
        match (std::fs::read_to_string(self.stopped_file(unit)), boot_id()) {
            (Ok(recorded), Some(now)) => recorded.trim() == now,
            _ => false,
        }
    }

    /// Records (or clears) a stop on request; a failure to record is logged, never fatal: the
    /// worst case is an agent restart starting the unit, as before.
    fn set_stopped_this_boot(&self, unit: &UnitName, stopped: bool) {
        let path = self.stopped_file(unit);
        let result = match (stopped, boot_id()) {
            (true, Some(id)) => std::fs::write(&path, format!("{id}\n")),
            (true, None) => Ok(()),
            (false, _) => match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = result {
            warn!(unit = %unit, path = %path.display(), error = %e, "cannot record the unit's stop");
        }
    }

    fn proc_file(&self, unit: &UnitName) -> PathBuf {
        self.supervisor_dir.join(format!("{unit}.proc"))
    }

    fn log_file(&self, unit: &UnitName) -> PathBuf {
        self.log_dir.join(format!("{unit}.log"))
    }

    /// Reads and parses the unit file, refusing types the supervisor cannot run.
    async fn load_spec(&self, unit: &UnitName) -> Result<ServiceSpec, UnitError> {
        let path = self.unit_file(unit);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(UnitError::NotInstalled {
                    unit: unit.to_string(),
                })
            }
            Err(e) => return Err(io_err(unit.as_str())(e)),
        };
        let invalid = |reason: String| UnitError::InvalidUnitFile {
            unit: unit.to_string(),
            reason,
        };
        let text = String::from_utf8(bytes).map_err(|_| invalid("is not UTF-8".into()))?;
        let parsed = unitfile::parse(&text).map_err(|e| invalid(e.to_string()))?;
        let spec = ServiceSpec::from_unit(&parsed).map_err(|e| invalid(e.to_string()))?;
        if matches!(spec.service_type, ServiceType::Forking | ServiceType::Dbus) {
            return Err(invalid(format!(
                "Type={} is not supported by the built-in supervisor",
                spec.service_type.as_str()
            )));
        }
        if spec.user.is_some() || spec.group.is_some() {
            warn!(unit = %unit, user = ?spec.user, group = ?spec.group, "User= and Group= are ignored by the supervisor; the unit runs as the agent's user");
        }
        if !spec.ignored_keys.is_empty() {
            debug!(unit = %unit, keys = ?spec.ignored_keys, "unit settings not implemented by the supervisor");
        }
        Ok(spec)
    }

    /// The unit's environment: a clean base, then `Environment=`, then `EnvironmentFile=`
    /// files in order, which override `Environment=` as in systemd.exec(5).
    async fn environment(
        &self,
        unit: &UnitName,
        spec: &ServiceSpec,
    ) -> Result<BTreeMap<String, String>, UnitError> {
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), UNIT_PATH.to_string());
        env.insert("LC_ALL".to_string(), "C.UTF-8".to_string());
        env.extend(spec.environment.iter().cloned());
        for file in &spec.environment_files {
            let host =
                HostPath::try_from(file.path.as_str()).map_err(|e| UnitError::InvalidUnitFile {
                    unit: unit.to_string(),
                    reason: format!("EnvironmentFile={}: {e}", file.path),
                })?;
            match tokio::fs::read(self.fs.real(&host)).await {
                Ok(bytes) => env.extend(unitfile::parse_env_file(&String::from_utf8_lossy(&bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.optional => {
                    debug!(unit = %unit, path = %file.path, "optional environment file is missing");
                }
                Err(source) => {
                    return Err(io_err(unit.as_str())(std::io::Error::new(
                        source.kind(),
                        EnvFileError {
                            path: file.path.clone(),
                            source,
                        },
                    )))
                }
            }
        }
        Ok(env)
    }

    async fn open_log(&self, unit: &UnitName) -> Result<std::fs::File, UnitError> {
        tokio::fs::create_dir_all(&self.log_dir)
            .await
            .map_err(io_err(unit.as_str()))?;
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(unit))
            .await
            .map_err(io_err(unit.as_str()))?;
        Ok(file.into_std().await)
    }

    /// Appends a line of the supervisor's own to the unit's log; failures only cost the line.
    async fn log_line(&self, unit: &UnitName, line: &str) {
        let result = async {
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_file(unit))
                .await?;
            f.write_all(format!("-- haop-agent supervisor: {line}\n").as_bytes())
                .await
        }
        .await;
        if let Err(e) = result {
            debug!(unit = %unit, error = %e, "cannot write to unit log");
        }
    }

    /// Spawns the unit's program from a parsed spec.
    async fn launch(&self, unit: &UnitName, spec: ServiceSpec) -> Result<Launched, UnitError> {
        let env = self.environment(unit, &spec).await?;
        let exec = &spec.exec_start;
        let args = exec.expanded_args(&env);
        let log = self.open_log(unit).await?;
        let log_err = log.try_clone().map_err(io_err(unit.as_str()))?;

        let mut cmd = Command::new(&exec.program);
        if let Some(argv0) = &exec.argv0 {
            cmd.arg0(argv0);
        }
        cmd.args(&args)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(false);
        let dir = match &spec.working_directory {
            Some(wd) if Path::new(&wd.path).is_dir() => PathBuf::from(&wd.path),
            Some(wd) if !wd.optional => {
                return Err(UnitError::Spawn {
                    unit: unit.to_string(),
                    program: exec.program.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("working directory {} does not exist", wd.path),
                    ),
                });
            }
            _ => PathBuf::from("/"),
        };
        cmd.current_dir(dir);

        let started_unix_ms = now_unix_ms();
        let child = cmd.spawn().map_err(|source| UnitError::Spawn {
            unit: unit.to_string(),
            program: exec.program.clone(),
            source,
        })?;
        let Some(pid) = child.id() else {
            // Only possible if the child was already reaped, which nothing here does.
            return Err(UnitError::Spawn {
                unit: unit.to_string(),
                program: exec.program.clone(),
                source: std::io::Error::other("the new process has no pid"),
            });
        };
        info!(unit = %unit, pid, program = %exec.program, "unit process started");
        self.log_line(unit, &format!("started {} as pid {pid}", exec.program))
            .await;
        Ok(Launched {
            process: MainProcess::Child(child),
            pid,
            restart: spec.restart,
            restart_sec: spec.restart_sec,
            ignore_failure: exec.ignore_failure,
            service_type: spec.service_type,
            remain_after_exit: spec.remain_after_exit,
            kill_signal: spec.kill_signal,
            timeout_stop: spec.timeout_stop_sec,
            started_unix_ms,
        })
    }

    /// Records the unit's main process: `<unit>.proc` (pid, start time and launch time, what
    /// the next agent adopts by), then `<unit>.pid` (the pid alone, for outside tools).
    async fn write_pid_file(&self, unit: &UnitName, launched: &Launched) {
        let (pid, since) = (launched.pid, launched.started_unix_ms);
        let (proc_path, pid_path) = (self.proc_file(unit), self.pid_file(unit));
        let dir = self.supervisor_dir.clone();
        let result = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            if let Some(start) = adopt::start_time(pid) {
                let text = adopt::proc_file_text(pid, start, since);
                write_atomic(&proc_path, text.as_bytes(), own_files(0o644))
                    .map_err(std::io::Error::other)?;
            }
            write_atomic(&pid_path, format!("{pid}\n").as_bytes(), own_files(0o644))
                .map_err(std::io::Error::other)
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(unit = %unit, error = %crate::error::render_chain(&e), "cannot write pid file")
            }
            Err(e) => warn!(unit = %unit, error = %e, "cannot write pid file"),
        }
    }

    async fn remove_pid_file(&self, unit: &UnitName) {
        for path in [self.pid_file(unit), self.proc_file(unit)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(unit = %unit, path = %path.display(), error = %e, "cannot remove pid file")
                }
            }
        }
    }

    /// The unit's process left running by an earlier agent, found through the pid file.
    async fn find_orphan(&self, unit: &UnitName, program: &str) -> Option<Orphan> {
        let (proc_file, pid_file) = (self.proc_file(unit), self.pid_file(unit));
        let program = program.to_string();
        tokio::task::spawn_blocking(move || adopt::find(&proc_file, &pid_file, &program))
            .await
            .ok()
            .flatten()
    }

    /// Takes over `orphan` as the unit's main process: running, watched by a monitor, stopped
    /// and restarted as if this agent had started it.
    async fn adopt(
        self: &Arc<Self>,
        unit: &UnitName,
        slot: &Arc<Slot>,
        spec: ServiceSpec,
        orphan: Orphan,
    ) {
        info!(unit = %unit, pid = orphan.pid, "adopting the unit's process left running by an earlier agent");
        self.log_line(
            unit,
            &format!("adopted pid {} (started by an earlier agent)", orphan.pid),
        )
        .await;
        let launched = Launched {
            process: MainProcess::Adopted(orphan),
            pid: orphan.pid,
            restart: spec.restart,
            restart_sec: spec.restart_sec,
            ignore_failure: spec.exec_start.ignore_failure,
            service_type: spec.service_type,
            remain_after_exit: spec.remain_after_exit,
            kill_signal: spec.kill_signal,
            timeout_stop: spec.timeout_stop_sec,
            // An earlier agent that did not record the launch time: the adoption's time is
            // the best left.
            started_unix_ms: orphan.since_unix_ms.unwrap_or_else(now_unix_ms),
        };
        self.watch(unit, slot, launched, true);
    }

    /// Records `launched` as the unit's running main process and starts its monitor. An
    /// explicit start resets the restart counter, as systemd's NRestarts.
    fn watch(self: &Arc<Self>, unit: &UnitName, slot: &Arc<Slot>, launched: Launched, reset: bool) {
        let mut generation = 0;
        slot.state.send_modify(|s| {
            s.generation += 1;
            generation = s.generation;
            s.phase = Phase::Running;
            s.main_pid = Some(launched.pid);
            s.since_unix_ms = launched.started_unix_ms;
            if reset {
                s.restart_count = 0;
            }
            s.kill_signal = launched.kill_signal;
            s.timeout_stop = launched.timeout_stop;
        });
        tokio::spawn(
            self.clone()
                .monitor(unit.clone(), slot.clone(), generation, launched),
        );
    }

    /// Starts the unit unless it runs: a process an earlier agent left running is adopted
    /// (answering `false`, nothing changed), otherwise the program is launched.
    async fn start_locked(
        self: &Arc<Self>,
        unit: &UnitName,
        slot: &Arc<Slot>,
    ) -> Result<bool, UnitError> {
        let current = slot.state.borrow().clone();
        if current.main_pid.is_some() || current.phase == Phase::Exited {
            return Ok(false);
        }
        // A unit waiting in auto-restart is started now; the generation bump in `watch` cancels
        // the pending restart.
        let spec = self.load_spec(unit).await?;
        if let Some(orphan) = self.find_orphan(unit, &spec.exec_start.program).await {
            self.adopt(unit, slot, spec, orphan).await;
            return Ok(false);
        }
        let launched = match self.launch(unit, spec).await {
            Ok(l) => l,
            Err(e) => {
                if matches!(e, UnitError::Spawn { .. } | UnitError::Io { .. }) {
                    let reason = format!("start failed: {}", crate::error::render_chain(&e));
                    slot.state.send_modify(|s| {
                        s.generation += 1;
                        s.phase = Phase::Failed;
                        s.since_unix_ms = now_unix_ms();
                        s.last_exit = reason;
                    });
                }
                return Err(e);
            }
        };
        self.write_pid_file(unit, &launched).await;
        self.watch(unit, slot, launched, true);
        Ok(true)
    }

    async fn stop_locked(&self, unit: &UnitName, slot: &Slot) -> Result<bool, UnitError> {
        let mut before = RunState::default();
        slot.state.send_modify(|s| {
            s.generation += 1;
            before = s.clone();
            if s.main_pid.is_some() {
                s.phase = Phase::Stopping;
            } else if matches!(s.phase, Phase::AutoRestart | Phase::Exited) {
                s.phase = Phase::Dead;
                s.since_unix_ms = now_unix_ms();
            }
        });
        let Some(pid) = before.main_pid else {
            let changed = matches!(before.phase, Phase::AutoRestart | Phase::Exited);
            if changed {
                info!(unit = %unit, "unit stopped while waiting to restart");
            }
            return Ok(changed);
        };
        info!(unit = %unit, pid, signal = %before.kill_signal, "stopping unit");
        self.log_line(
            unit,
            &format!("stopping pid {pid} with {}", before.kill_signal),
        )
        .await;
        let mut rx = slot.state.subscribe();
        let started = Instant::now();
        signal_group(unit, pid, before.kill_signal);
        let ended = match before.timeout_stop {
            Some(limit) => tokio::time::timeout(limit, rx.wait_for(|s| s.main_pid.is_none()))
                .await
                .is_ok(),
            None => rx.wait_for(|s| s.main_pid.is_none()).await.is_ok(),
        };
        if ended {
            // The rest of the group got the same signal; it has what is left of the stop
            // timeout before SIGKILL.
            let deadline = before.timeout_stop.map(|t| started + t);
            while group_alive(pid) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    warn!(unit = %unit, pid, "processes left by the unit did not stop in time, sending SIGKILL");
                    signal_group(unit, pid, Signal::SIGKILL);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Ok(true);
        }
        warn!(unit = %unit, pid, timeout = ?before.timeout_stop, "unit did not stop in time, sending SIGKILL");
        signal_group(unit, pid, Signal::SIGKILL);
        let killed = tokio::time::timeout(KILL_GRACE, rx.wait_for(|s| s.main_pid.is_none()))
            .await
            .is_ok();
        if !killed {
            // Still alive: report it as running so that nothing treats it as stopped.
            slot.state.send_modify(|s| {
                if s.main_pid.is_some() {
                    s.phase = Phase::Running;
                }
            });
            let waited = before.timeout_stop.unwrap_or_default() + KILL_GRACE;
            return Err(UnitError::StopTimeout {
                unit: unit.to_string(),
                seconds: waited.as_secs(),
            });
        }
        // As systemd: a stop that needed SIGKILL leaves the unit failed (Result=timeout).
        slot.state.send_modify(|s| {
            s.phase = Phase::Failed;
            s.last_exit = format!("{} after the stop timeout", s.last_exit);
        });
        Ok(true)
    }

    /// Watches one run of a unit: the process, then its restarts, until the unit is stopped,
    /// started anew, or ends without a restart.
    async fn monitor(
        self: Arc<Self>,
        unit: UnitName,
        slot: Arc<Slot>,
        generation: u64,
        mut run: Launched,
    ) {
        loop {
            let (exit, class) = run.process.wait(run.ignore_failure).await;
            // What is left of the group goes with its main process, as systemd's control-group
            // kill mode does. During a stop, the stop gives the rest its remaining time.
            if slot.state.borrow().generation == generation {
                signal_group(&unit, run.pid, Signal::SIGKILL);
            }
            self.remove_pid_file(&unit).await;
            self.log_line(&unit, &format!("pid {} {exit}", run.pid))
                .await;

            let restart = run.restart.restarts_after(class);
            let mut will_restart = false;
            slot.state.send_modify(|s| {
                s.main_pid = None;
                s.last_exit = exit.clone();
                s.since_unix_ms = now_unix_ms();
                if s.generation != generation {
                    // Stopped on purpose; stop decides the final phase.
                    s.phase = Phase::Dead;
                } else if restart {
                    s.phase = Phase::AutoRestart;
                    will_restart = true;
                } else if class == ExitClass::Clean {
                    s.phase = if run.service_type == ServiceType::Oneshot && run.remain_after_exit {
                        Phase::Exited
                    } else {
                        Phase::Dead
                    };
                } else {
                    s.phase = Phase::Failed;
                }
            });
            if !will_restart {
                info!(unit = %unit, pid = run.pid, exit = %exit, "unit process ended");
                return;
            }
            warn!(unit = %unit, pid = run.pid, exit = %exit, delay = ?run.restart_sec, "unit process ended, restarting");

            let mut rx = slot.state.subscribe();
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(run.restart_sec) => false,
                _ = rx.wait_for(|s| s.generation != generation) => true,
            };
            if cancelled {
                return;
            }
            let _op = slot.op.lock().await;
            if slot.state.borrow().generation != generation {
                return;
            }
            let next = match self.load_spec(&unit).await {
                Ok(spec) => self.launch(&unit, spec).await,
                Err(e) => Err(e),
            };
            match next {
                Ok(next) => {
                    self.write_pid_file(&unit, &next).await;
                    slot.state.send_modify(|s| {
                        s.phase = Phase::Running;
                        s.main_pid = Some(next.pid);
                        s.since_unix_ms = next.started_unix_ms;
                        s.restart_count = s.restart_count.saturating_add(1);
                        s.kill_signal = next.kill_signal;
                        s.timeout_stop = next.timeout_stop;
                    });
                    run = next;
                }
                Err(e) => {
                    let reason = crate::error::render_chain(&e);
                    warn!(unit = %unit, error = %reason, "unit restart failed");
                    slot.state.send_modify(|s| {
                        s.phase = Phase::Failed;
                        s.since_unix_ms = now_unix_ms();
                        s.last_exit = format!("restart failed: {reason}");
                    });
                    return;
                }
            }
        }
    }

    async fn set_enabled(&self, unit: &UnitName, enable: bool) -> Result<bool, UnitError> {
        if enable
            && !tokio::fs::try_exists(self.unit_file(unit))
                .await
                .unwrap_or(false)
        {
            return Err(UnitError::NotInstalled {
                unit: unit.to_string(),
            });
        }
        let mut enabled = self.enabled.lock().await;
        if enabled.contains(unit) == enable {
            return Ok(false);
        }
        let mut next = enabled.clone();
        if enable {
            next.insert(unit.clone());
        } else {
            next.remove(unit);
        }
        let file = EnabledFile {
            enabled: next.iter().map(|u| u.to_string()).collect(),
        };
        let mut json =
            serde_json::to_vec_pretty(&file).map_err(|e| io_err(unit.as_str())(e.into()))?;
        json.push(b'\n');
        let dir = self.supervisor_dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            write_atomic(&dir.join(ENABLED_FILE), &json, own_files(0o644))
                .map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| io_err(unit.as_str())(std::io::Error::other(e)))?
        .map_err(io_err(unit.as_str()))?;
        *enabled = next;
        info!(unit = %unit, enabled = enable, "unit enablement changed");
        Ok(true)
    }
}

/// Files the supervisor writes belong to whoever runs the agent.
fn own_files(mode: u32) -> Ownership {
    Ownership {
        mode,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

/// Sends `signal` to the process group led by `pid`. A group that is already gone is fine.
fn signal_group(unit: &UnitName, pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 1 {
        return;
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            warn!(unit = %unit, pid, signal = %signal, error = %e, "cannot signal process group")
        }
    }
}

/// "exited 1", "killed by SIGKILL", "killed by SIGSEGV (core dumped)", and systemd's class of
/// that end.
fn describe_exit(status: ExitStatus, ignore_failure: bool) -> (String, ExitClass) {
    let (text, class) = if let Some(code) = status.code() {
        let class = if code == 0 {
            ExitClass::Clean
        } else {
            ExitClass::UncleanCode
        };
        (format!("exited {code}"), class)
    } else if let Some(sig) = status.signal() {
        let (name, class) = match Signal::try_from(sig) {
            Ok(s) => {
                let clean = matches!(
                    s,
                    Signal::SIGHUP | Signal::SIGINT | Signal::SIGTERM | Signal::SIGPIPE
                );
                (
                    s.as_str().to_string(),
                    if clean {
                        ExitClass::Clean
                    } else {
                        ExitClass::UncleanSignal
                    },
                )
            }
            Err(_) => (format!("signal {sig}"), ExitClass::UncleanSignal),
        };
        let core = if status.core_dumped() {
            " (core dumped)"
        } else {
            ""
        };
        (format!("killed by {name}{core}"), class)
    } else {
        (format!("ended ({status})"), ExitClass::UncleanCode)
    };
    (
        text,
        if ignore_failure {
            ExitClass::Clean
        } else {
            class
        },
    )
}

/// Whether any live (not zombie) process is in the process group `pgid`. Scans /proc: after
/// its leader ended, a group's members may be anyone's children.
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
        pgrp == Some(pgid) && state != "Z" && state != "X"
    })
}

fn phase_states(phase: Phase) -> (&'static str, &'static str) {
    match phase {
        Phase::Dead => ("inactive", "dead"),
        Phase::Running => ("active", "running"),
        Phase::AutoRestart => ("activating", "auto-restart"),
        Phase::Stopping => ("deactivating", "stop-sigterm"),
        Phase::Failed => ("failed", "failed"),
        Phase::Exited => ("active", "exited"),
    }
}

#[tonic::async_trait]
impl ServiceManager for Supervisor {
    fn backend(&self) -> &'static str {
        "supervisor"
    }

    async fn reload(&self) -> Result<(), UnitError> {
        debug!("supervisor reload: unit files are read at every start");
        Ok(())
    }

    async fn action(&self, unit: &UnitName, action: UnitAction) -> Result<bool, UnitError> {
        let inner = &self.inner;
        match action {
            UnitAction::Start => {
                let slot = inner.slot(unit);
                let _op = slot.op.lock().await;
                inner.set_stopped_this_boot(unit, false);
                inner.start_locked(unit, &slot).await
            }
            UnitAction::Stop => {
                let slot = inner.slot(unit);
                let _op = slot.op.lock().await;
                let changed = inner.stop_locked(unit, &slot).await?;
                inner.set_stopped_this_boot(unit, true);
                Ok(changed)
            }
            UnitAction::Restart => {
                let slot = inner.slot(unit);
                let _op = slot.op.lock().await;
                inner.stop_locked(unit, &slot).await?;
                inner.set_stopped_this_boot(unit, false);
                inner.start_locked(unit, &slot).await?;
                Ok(true)
            }
            UnitAction::Enable => inner.set_enabled(unit, true).await,
            UnitAction::Disable => inner.set_enabled(unit, false).await,
        }
    }

    async fn status(&self, unit: &UnitName) -> Result<UnitState, UnitError> {
        let installed = tokio::fs::try_exists(self.inner.unit_file(unit))
            .await
            .map_err(io_err(unit.as_str()))?;
        let enabled = self.inner.enabled.lock().await.contains(unit);
        let run = self.inner.slot(unit).state.borrow().clone();
        let (active, sub) = phase_states(run.phase);
        Ok(UnitState {
            installed,
            active_state: active.to_string(),
            sub_state: sub.to_string(),
            main_pid: run.main_pid.unwrap_or(0),
            since_unix_ms: run.since_unix_ms,
            restart_count: run.restart_count,
            enabled,
            last_exit: run.last_exit,
        })
    }

    async fn shutdown(&self) {
        let running = self
            .inner
            .existing_slots()
            .iter()
            .filter(|(_, slot)| slot.state.borrow().main_pid.is_some())
            .count();
        info!(
            running,
            "agent exits; supervised units keep running for the next agent to adopt"
        );
    }
}

impl Supervisor {
    /// Stops every unit this supervisor runs, concurrently (each as `stop` would). Not done
    /// when the agent exits (units outlive it); for tests and tools that must leave nothing
    /// running.
    pub async fn stop_all(&self) {
        let mut tasks = tokio::task::JoinSet::new();
        for (unit, slot) in self.inner.existing_slots() {
            let inner = self.inner.clone();
            tasks.spawn(async move {
                let _op = slot.op.lock().await;
                match inner.stop_locked(&unit, &slot).await {
                    Ok(true) => info!(unit = %unit, "unit stopped at shutdown"),
                    Ok(false) => {}
                    Err(e) => warn!(unit = %unit, error = %crate::error::render_chain(&e), "unit did not stop at shutdown"),
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    struct Fixture {
        dir: tempfile::TempDir,
        sup: Supervisor,
    }

    fn hp(s: &str) -> HostPath {
        HostPath::try_from(s).unwrap()
    }

    fn unit(name: &str) -> UnitName {
        UnitName::try_from(name).unwrap()
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let sup = Self::supervisor(dir.path());
            Fixture { dir, sup }
        }

        fn supervisor(root: &Path) -> Supervisor {
            let fs = HostFs::new(
                root,
                vec![hp("/etc/systemd/system"), hp("/var/lib/haop-agent")],
            );
            Supervisor::new(fs, hp("/var/lib/haop-agent")).unwrap()
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn install(&self, name: &str, text: &str) -> UnitName {
            let dir = self.root().join("etc/systemd/system");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), text).unwrap();
            unit(name)
        }

        /// A real path outside the root for a process to write to.
        fn out(&self, name: &str) -> PathBuf {
            let p = self.root().join("out");
            std::fs::create_dir_all(&p).unwrap();
            p.join(name)
        }
    }

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Polls `check` until it returns Some or the deadline passes.
    async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match check().await {
                Ok(v) => return v,
                Err(last) if Instant::now() > deadline => {
                    panic!("timed out waiting for {what}; last seen: {last}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn wait_for(
        sup: &Supervisor,
        u: &UnitName,
        what: &str,
        pred: impl Fn(&UnitState) -> bool,
    ) -> UnitState {
        wait_until(what, || async {
            let s = sup.status(u).await.unwrap();
            if pred(&s) {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await
    }

    async fn wait_for_file(path: &Path) -> String {
        wait_until(&format!("{}", path.display()), || async {
            match tokio::fs::read_to_string(path).await {
                Ok(s) if s.ends_with('\n') => Ok(s),
                Ok(s) => Err(format!("partial content {s:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    fn sigkill(pid: u32) {
        nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    }

    #[tokio::test]
    async fn start_stop_status_and_idempotence() {
        let f = Fixture::new();
        let u = f.install(
            "sleeper.service",
            "[Unit]\nDescription=sleeps\n[Service]\nExecStart=/bin/sleep 30\n",
        );
        let s = f.sup.status(&u).await.unwrap();
        assert!(s.installed && !s.enabled);
        assert_eq!(
            (s.active_state.as_str(), s.sub_state.as_str()),
            ("inactive", "dead")
        );
        assert!(
            !f.sup.action(&u, UnitAction::Stop).await.unwrap(),
            "stop of a stopped unit"
        );

        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        assert!(
            !f.sup.action(&u, UnitAction::Start).await.unwrap(),
            "second start"
        );
        let s = f.sup.status(&u).await.unwrap();
        assert_eq!(
            (s.active_state.as_str(), s.sub_state.as_str()),
            ("active", "running")
        );
        assert!(s.is_running() && s.main_pid > 1 && s.since_unix_ms > 0);
        assert_eq!(s.restart_count, 0);
        let pid_file = f.sup.pid_file(&u);
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            s.main_pid.to_string()
        );
        assert!(pid_file.starts_with(f.root().join("var/lib/haop-agent/supervisor")));
        assert!(f.sup.log_file(&u).exists());

        let before = Instant::now();
        assert!(f.sup.action(&u, UnitAction::Stop).await.unwrap());
        assert!(
            before.elapsed() < Duration::from_secs(5),
            "SIGTERM should be enough"
        );
        let s = f.sup.status(&u).await.unwrap();
        assert_eq!(
            (s.active_state.as_str(), s.sub_state.as_str()),
            ("inactive", "dead")
        );
        assert_eq!(s.main_pid, 0);
        assert_eq!(s.last_exit, "killed by SIGTERM");
        assert!(!pid_file.exists());
        assert!(
            !f.sup.action(&u, UnitAction::Stop).await.unwrap(),
            "second stop"
        );

        // Restart always changes and gives a new process.
        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        let first = f.sup.status(&u).await.unwrap().main_pid;
        assert!(f.sup.action(&u, UnitAction::Restart).await.unwrap());
        let second = f.sup.status(&u).await.unwrap();
        assert!(second.is_running() && second.main_pid != first);
        f.sup.stop_all().await;
        assert!(!f.sup.status(&u).await.unwrap().is_running());
    }

    #[tokio::test]
    async fn missing_and_invalid_units() {
        let f = Fixture::new();
        let missing = unit("missing.service");
        let e = f.sup.action(&missing, UnitAction::Start).await.unwrap_err();
        assert!(matches!(e, UnitError::NotInstalled { .. }), "{e}");
        assert!(!f.sup.status(&missing).await.unwrap().installed);
        let e = f
            .sup
            .action(&missing, UnitAction::Enable)
            .await
            .unwrap_err();
        assert!(matches!(e, UnitError::NotInstalled { .. }), "{e}");

        let bad = f.install("bad.service", "[Service]\nType=simple\n");
        let e = f.sup.action(&bad, UnitAction::Start).await.unwrap_err();
        assert!(
            matches!(&e, UnitError::InvalidUnitFile { reason, .. } if reason.contains("ExecStart")),
            "{e}"
        );
        let forking = f.install(
            "fork.service",
            "[Service]\nType=forking\nExecStart=/bin/true\n",
        );
        let e = f.sup.action(&forking, UnitAction::Start).await.unwrap_err();
        assert!(e.to_string().contains("forking"), "{e}");

        let nope = f.install(
            "nope.service",
            "[Service]\nExecStart=/nonexistent/program\n",
        );
        let e = f.sup.action(&nope, UnitAction::Start).await.unwrap_err();
        assert!(matches!(e, UnitError::Spawn { .. }), "{e}");
        let s = f.sup.status(&nope).await.unwrap();
        assert_eq!(s.active_state, "failed");
        assert!(s.last_exit.contains("start failed"), "{}", s.last_exit);

        let wd = f.install(
            "wd.service",
            "[Service]\nWorkingDirectory=/nonexistent/dir\nExecStart=/bin/true\n",
        );
        let e = f.sup.action(&wd, UnitAction::Start).await.unwrap_err();
        assert!(crate::error::render_chain(&e).contains("working directory /nonexistent/dir"));

        let env = f.install(
            "env.service",
            "[Service]\nEnvironmentFile=/etc/missing.env\nExecStart=/bin/true\n",
        );
        let e = f.sup.action(&env, UnitAction::Start).await.unwrap_err();
        let msg = crate::error::render_chain(&e);
        assert!(msg.contains("/etc/missing.env"), "{msg}");
    }

    #[tokio::test]
    async fn sigkilled_process_is_restarted() {
        let f = Fixture::new();
        for (name, policy) in [
            ("always.service", "always"),
            ("onfail.service", "on-failure"),
        ] {
            let u = f.install(
                name,
                &format!(
                    "[Service]\nExecStart=/bin/sleep 30\nRestart={policy}\nRestartSec=100ms\n"
                ),
            );
            assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
            let first = f.sup.status(&u).await.unwrap().main_pid;
            sigkill(first);
            let s = wait_for(&f.sup, &u, "restart after SIGKILL", |s| {
                s.restart_count == 1 && s.active_state == "active"
            })
            .await;
            assert_ne!(s.main_pid, first);
            assert_eq!(s.sub_state, "running");
            assert_eq!(s.last_exit, "killed by SIGKILL");
            assert_eq!(
                std::fs::read_to_string(f.sup.pid_file(&u)).unwrap().trim(),
                s.main_pid.to_string()
            );
            // An explicit start resets the count; a second kill counts again from there.
            sigkill(s.main_pid);
            wait_for(&f.sup, &u, "second restart", |s| {
                s.restart_count == 2 && s.is_running()
            })
            .await;
        }
        f.sup.stop_all().await;
    }

    #[tokio::test]
    async fn restart_no_leaves_failed_or_dead() {
        let f = Fixture::new();
        let u = f.install(
            "once.service",
            "[Service]\nExecStart=/bin/sleep 30\nRestart=no\n",
        );
        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        sigkill(f.sup.status(&u).await.unwrap().main_pid);
        let s = wait_for(&f.sup, &u, "failed", |s| s.active_state == "failed").await;
        assert_eq!(s.sub_state, "failed");
        assert_eq!(s.restart_count, 0);
        assert_eq!(s.last_exit, "killed by SIGKILL");
        assert!(!f.sup.pid_file(&u).exists());
        // Starting a failed unit works again.
        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        assert!(f.sup.status(&u).await.unwrap().is_running());

        // A clean exit with Restart=on-failure is inactive, not restarted.
        let clean = f.install(
            "clean.service",
            "[Service]\nExecStart=/bin/true\nRestart=on-failure\nRestartSec=10ms\n",
        );
        assert!(f.sup.action(&clean, UnitAction::Start).await.unwrap());
        let s = wait_for(&f.sup, &clean, "clean exit", |s| s.sub_state == "dead").await;
        assert_eq!(s.active_state, "inactive");
        assert_eq!(s.last_exit, "exited 0");
        assert_eq!(s.restart_count, 0);

        // A failing exit with a '-' prefix counts as success.
        let ignored = f.install("ignored.service", "[Service]\nExecStart=-/bin/false\n");
        assert!(f.sup.action(&ignored, UnitAction::Start).await.unwrap());
        let s = wait_for(&f.sup, &ignored, "ignored failure", |s| {
            s.last_exit == "exited 1"
        })
        .await;
        assert_eq!(s.active_state, "inactive");
        f.sup.stop_all().await;
    }

    #[tokio::test]
    async fn environment_reaches_the_process() {
        let f = Fixture::new();
        std::fs::create_dir_all(f.root().join("etc")).unwrap();
        std::fs::write(
            f.root().join("etc/test.env"),
            "# settings\nA=from-file\nexport SHARED=\"file wins\"\n",
        )
        .unwrap();
        let out = f.out("env");
        let args = f.out("args");
        let u = f.install(
            "env.service",
            &format!(
                "[Service]\n\
                 EnvironmentFile=/etc/test.env\n\
                 EnvironmentFile=-/etc/absent.env\n\
                 Environment=\"B=two words\" SHARED=unit\n\
                 WorkingDirectory=/tmp\n\
                 ExecStart=/bin/sh -c 'echo \"$A|$B|$SHARED|$LC_ALL|$PATH|$(pwd)\" > {out}; \
                 printf \"%%s\\n\" \"$@\" > {args}' sh ${{B}} $B x${{A}}y\n",
                out = out.display(),
                args = args.display()
            ),
        );
        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        let line = wait_for_file(&out).await;
        assert_eq!(
            line.trim_end(),
            format!("from-file|two words|file wins|C.UTF-8|{UNIT_PATH}|/tmp")
        );
        let args = wait_for_file(&args).await;
        assert_eq!(args, "two words\ntwo\nwords\nxfrom-filey\n");
        f.sup.stop_all().await;
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill() {
        let f = Fixture::new();
        let ready = f.out("ready");
        let u = f.install(
            "stubborn.service",
            &format!(
                "[Service]\nExecStart=/bin/sh -c \"trap '' TERM; touch {}; exec /bin/sleep 30\"\n\
                 TimeoutStopSec=300ms\nRestart=always\nRestartSec=50ms\n",
                ready.display()
            ),
        );
        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        wait_until("the trap to be set", || async {
            if ready.exists() {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        })
        .await;
        let before = Instant::now();
        assert!(f.sup.action(&u, UnitAction::Stop).await.unwrap());
        let took = before.elapsed();
        assert!(took >= Duration::from_millis(300), "stopped after {took:?}");
        assert!(took < Duration::from_secs(5), "stopped after {took:?}");
        let s = f.sup.status(&u).await.unwrap();
        assert!(!s.is_running());
        assert_eq!(s.active_state, "failed");
        assert!(
            s.last_exit.starts_with("killed by SIGKILL"),
            "{}",
            s.last_exit
        );
        assert_eq!(s.restart_count, 0, "a stop is never followed by a restart");
        f.sup.stop_all().await;
    }

    #[tokio::test]
    async fn leftovers_of_the_group_are_killed_after_the_stop_timeout() {
        let f = Fixture::new();
        let child_pid = f.out("child.pid");
        let u = f.install(
            "wrapper.service",
            &format!(
                "[Service]\nExecStart=/bin/sh -c \"/bin/sh -c 'trap \\\"\\\" TERM; echo $$$$ > {}; \
                 exec /bin/sleep 30' & wait\"\nTimeoutStopSec=300ms\n",
                child_pid.display()
            ),
        );
        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        let child: u32 = wait_for_file(&child_pid).await.trim().parse().unwrap();
        assert!(adopt::start_time(child).is_some());
        let before = Instant::now();
        assert!(f.sup.action(&u, UnitAction::Stop).await.unwrap());
        assert!(before.elapsed() >= Duration::from_millis(300));
        wait_until("the leftover to die", || async {
            if adopt::start_time(child).is_some() {
                Err(format!("{child} alive"))
            } else {
                Ok(())
            }
        })
        .await;
        let s = f.sup.status(&u).await.unwrap();
        assert_eq!(
            (s.active_state.as_str(), s.last_exit.as_str()),
            ("inactive", "killed by SIGTERM")
        );
    }

    #[tokio::test]
    async fn stop_cancels_a_pending_restart() {
        let f = Fixture::new();
        let u = f.install(
            "flappy.service",
            "[Service]\nExecStart=/bin/sleep 30\nRestart=always\nRestartSec=300ms\n",
        );
        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        sigkill(f.sup.status(&u).await.unwrap().main_pid);
        wait_for(&f.sup, &u, "auto-restart", |s| {
            s.sub_state == "auto-restart"
        })
        .await;
        assert!(f.sup.action(&u, UnitAction::Stop).await.unwrap());
        // Past RestartSec, the unit must still be stopped: nothing is waiting to restart it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let s = f.sup.status(&u).await.unwrap();
        assert_eq!((s.active_state.as_str(), s.restart_count), ("inactive", 0));

        // A start during auto-restart starts now.
        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        sigkill(f.sup.status(&u).await.unwrap().main_pid);
        wait_for(&f.sup, &u, "auto-restart", |s| {
            s.sub_state == "auto-restart"
        })
        .await;
        assert!(f.sup.action(&u, UnitAction::Start).await.unwrap());
        assert!(f.sup.status(&u).await.unwrap().is_running());
        f.sup.stop_all().await;
    }

    #[tokio::test]
    async fn enabled_units_persist_across_instances() {
        let f = Fixture::new();
        let u = f.install("boot.service", "[Service]\nExecStart=/bin/sleep 30\n");
        assert!(f.sup.action(&u, UnitAction::Enable).await.unwrap());
        assert!(!f.sup.action(&u, UnitAction::Enable).await.unwrap());
        assert!(f.sup.status(&u).await.unwrap().enabled);
        let json = f.root().join("var/lib/haop-agent/supervisor/enabled.json");
        assert!(std::fs::read_to_string(&json)
            .unwrap()
            .contains("boot.service"));

        let again = Fixture::supervisor(f.root());
        assert!(again.status(&u).await.unwrap().enabled);
        again.start_enabled().await;
        assert!(again.status(&u).await.unwrap().is_running());
        again.stop_all().await;
        assert!(!again.status(&u).await.unwrap().is_running());

        assert!(again.action(&u, UnitAction::Disable).await.unwrap());
        assert!(!again.action(&u, UnitAction::Disable).await.unwrap());
        assert!(
            !Fixture::supervisor(f.root())
                .status(&u)
                .await
                .unwrap()
                .enabled
        );

        std::fs::write(&json, "not json").unwrap();
        let fs = HostFs::new(f.root(), vec![]);
        assert!(Supervisor::new(fs, hp("/var/lib/haop-agent")).is_err());
    }

    /// As after `systemctl stop`: a unit stopped on request stays stopped when the next agent
    /// starts (that is not a boot), until it is started again.
    #[tokio::test]
    async fn a_unit_stopped_on_request_stays_stopped_across_an_agent_restart() {
        let f = Fixture::new();
        let u = f.install("member.service", "[Service]\nExecStart=/bin/sleep 30\n");
        f.sup.action(&u, UnitAction::Enable).await.unwrap();
        f.sup.action(&u, UnitAction::Start).await.unwrap();
        assert!(f.sup.action(&u, UnitAction::Stop).await.unwrap());
        let next = Fixture::supervisor(f.root());
        next.start_enabled().await;
        assert!(
            !next.status(&u).await.unwrap().is_running(),
            "the next agent started a unit stopped on request"
        );
        // Started again on request: the next agent keeps it (adopts it) as before.
        assert!(next.action(&u, UnitAction::Start).await.unwrap());
        let pid = next.status(&u).await.unwrap().main_pid;
        let third = Fixture::supervisor(f.root());
        third.start_enabled().await;
        let st = third.status(&u).await.unwrap();
        assert!(st.is_running());
        assert_eq!(st.main_pid, pid, "adopted, not started twice");
        third.stop_all().await;
        next.stop_all().await;
    }

    #[tokio::test]
    async fn a_process_of_an_older_agent_is_adopted_not_started_again() {
        use std::os::unix::process::CommandExt;
        let f = Fixture::new();
        let u = f.install("etcd.service", "[Service]\nExecStart=/bin/sleep 30\n");
        // As an older agent left it: the unit's program, its pid file without a start time.
        let mut orphan = std::process::Command::new("/bin/sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid_file = f.sup.pid_file(&u);
        std::fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
        std::fs::write(&pid_file, format!("{}\n", orphan.id())).unwrap();

        assert!(!f.sup.action(&u, UnitAction::Start).await.unwrap());
        let s = f.sup.status(&u).await.unwrap();
        assert!(s.is_running() && s.main_pid == orphan.id(), "{s:?}");
        assert!(f.sup.action(&u, UnitAction::Stop).await.unwrap());
        let status = orphan.wait().unwrap();
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        assert!(!f.sup.status(&u).await.unwrap().is_running());

        // A pid file naming a process that is not this unit's program is left alone.
        let mut other = std::process::Command::new("/bin/sh")
            .args(["-c", "exec /bin/sleep 30"])
            .process_group(0)
            .spawn()
            .unwrap();
        let cat = f.install("cat.service", "[Service]\nExecStart=/bin/cat\n");
        std::fs::write(f.sup.pid_file(&cat), format!("{}\n", other.id())).unwrap();
        assert!(f.sup.action(&cat, UnitAction::Start).await.unwrap());
        assert_ne!(f.sup.status(&cat).await.unwrap().main_pid, other.id());
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unrelated process was killed"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        f.sup.stop_all().await;
    }

    /// An agent's life in its own runtime: when it returns, the agent's tasks are gone, as
    /// when the agent process exits.
    fn agent_life<T>(life: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(life)
    }

    #[test]
    fn units_outlive_the_agent_and_the_next_agent_adopts_them() {
        let f = Fixture::new();
        let always = "[Service]\nExecStart=/bin/sleep 30\nRestart=always\nRestartSec=100ms\n";
        let boot = f.install("boot.service", always);
        let manual = f.install("manual.service", always);
        let (boot_pid, manual_pid, manual_since) = agent_life(async {
            let sup = Fixture::supervisor(f.root());
            sup.action(&boot, UnitAction::Enable).await.unwrap();
            sup.action(&boot, UnitAction::Start).await.unwrap();
            sup.action(&manual, UnitAction::Start).await.unwrap();
            // What the agent does when it exits, gracefully.
            sup.shutdown().await;
            let manual = sup.status(&manual).await.unwrap();
            (
                sup.status(&boot).await.unwrap().main_pid,
                manual.main_pid,
                manual.since_unix_ms,
            )
        });
        // The next agent comes up later: "active since" must stay the launch time.
        std::thread::sleep(Duration::from_millis(20));
        for pid in [boot_pid, manual_pid] {
            assert!(
                adopt::start_time(pid).is_some(),
                "pid {pid} ended with its agent"
            );
        }

        agent_life(async {
            let sup = Fixture::supervisor(f.root());
            sup.start_enabled().await;
            // Both adopted, enabled or not, and not started again.
            for (u, pid) in [(&boot, boot_pid), (&manual, manual_pid)] {
                let s = sup.status(u).await.unwrap();
                assert!(s.is_running() && s.main_pid == pid, "{u}: {s:?}");
                assert!(!sup.action(u, UnitAction::Start).await.unwrap());
            }
            // Active since the launch by the earlier agent, not since the adoption: a file
            // changed in between must still look newer than the process.
            let s = sup.status(&manual).await.unwrap();
            assert!(manual_since > 0);
            assert_eq!(s.since_unix_ms, manual_since);
            // An adopted process that dies is noticed and restarted as Restart= says.
            sigkill(boot_pid);
            let s = wait_for(&sup, &boot, "a restart", |s| {
                s.is_running() && s.main_pid != boot_pid && s.main_pid != 0
            })
            .await;
            assert_eq!(s.restart_count, 1);
            assert!(s.last_exit.contains("exit status unknown"), "{s:?}");
            // An adopted process is stopped as if this agent had started it.
            assert!(sup.action(&manual, UnitAction::Stop).await.unwrap());
            assert!(adopt::start_time(manual_pid).is_none());
            assert!(!sup.status(&manual).await.unwrap().is_running());
            sup.stop_all().await;
        });
    }

    #[test]
    fn exits_are_described_and_classified() {
        let raw = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(
            describe_exit(raw(0), false),
            ("exited 0".into(), ExitClass::Clean)
        );
        assert_eq!(
            describe_exit(raw(3), false),
            ("exited 3".into(), ExitClass::UncleanCode)
        );
        assert_eq!(describe_exit(raw(3), true).1, ExitClass::Clean);
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9), false),
            ("killed by SIGKILL".into(), ExitClass::UncleanSignal)
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(15), false),
            ("killed by SIGTERM".into(), ExitClass::Clean)
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(11 | 0x80), false).0,
            "killed by SIGSEGV (core dumped)"
        );
    }
}
