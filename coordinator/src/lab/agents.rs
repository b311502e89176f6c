//! Lab agents: finding the binary, the host root each one treats as `/`, starting them so that
//! they outlive `haop lab up`, waiting until they answer, recognising them later, stopping them.
//!
//! An agent is started as `ip netns exec NS haop-agent --root ROOT ...` in its own process
//! group, so a Ctrl-C at the terminal that ran `up` does not reach it. `ip netns exec` execs the
//! agent in place, so the pid `up` sees is the agent's. Pids are recycled and network namespaces
//! do not isolate them, so before signalling a recorded pid the lab checks that the process
//! still is that agent: same start time and `--root` with this host's root on its command line.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use haop_proto::v1::Facts;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::error::LogTail;
use super::names::AGENT_PORT;
use super::record::LabHost;
use super::sys::{self, Ip, ProcStat};
use super::LabError;
use crate::agent::ExpectedAgent;
use crate::agent::HostAgent;
use crate::trust::Trust;
use haop_proto::enroll::Token;

/// Names the agent binary explicitly; the first place looked.
pub const AGENT_BIN_ENV: &str = "HAOP_AGENT_BIN";
const AGENT_BIN_NAME: &str = "haop-agent";
const SYSTEM_AGENT_BIN: &str = "/usr/bin/haop-agent";
/// Where the agent records the data dirs units declared, a host path.
pub const DECLARED_FILE: &str = "var/lib/haop-agent/declared.json";
/// Machine files a host root gets a copy of, so names of users and groups resolve inside it.
const COPIED_ETC_FILES: [&str; 4] = ["passwd", "group", "nsswitch.conf", "ld.so.cache"];

/// Finds `haop-agent`: `$HAOP_AGENT_BIN` when set (and nothing else then); else next to the
/// running executable, one directory up (cargo puts test executables in `target/debug/deps`),
/// `/usr/bin/haop-agent`.
pub fn find_agent_binary() -> Result<PathBuf, LabError> {
    if let Some(p) = std::env::var_os(AGENT_BIN_ENV) {
        // An explicit choice that is wrong is an error, not a reason to run another binary.
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(std::path::absolute(&p).unwrap_or(p));
        }
        return Err(LabError::AgentBinaryMissing {
            tried: format!("${AGENT_BIN_ENV}={}", p.display()),
        });
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let dirs = exe
            .parent()
            .into_iter()
            .chain(exe.parent().and_then(Path::parent));
        for dir in dirs {
            let p = dir.join(AGENT_BIN_NAME);
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p.display().to_string());
        }
    }
    let p = Path::new(SYSTEM_AGENT_BIN);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    tried.push(SYSTEM_AGENT_BIN.to_string());
    Err(LabError::AgentBinaryMissing {
        tried: tried.join(", "),
    })
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    let path = path.to_path_buf();
    move |source| LabError::Io {
        action,
        path,
        source,
    }
}

/// Makes the host root an agent needs: `etc` with the host's name and a few machine files,
/// `tmp` (1777), `run`, `var/lib`, `var/log`. Running it again rewrites the same content.
pub fn prepare_root(host: &LabHost) -> Result<(), LabError> {
    let root = &host.root_dir;
    for dir in ["etc", "run", "var/lib", "var/log", "tmp"] {
        let p = root.join(dir);
        fs::create_dir_all(&p).map_err(io_err("create", &p))?;
    }
    let tmp = root.join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
        .map_err(io_err("set the mode of", &tmp))?;
    let etc = root.join("etc");
    let hostname = etc.join("hostname");
    fs::write(&hostname, format!("{}\n", host.name)).map_err(io_err("write", &hostname))?;
    let hosts = etc.join("hosts");
    let hosts_text = format!(
        "# Written by `haop lab up`.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost \
         ip6-loopback\n{}\t{}\n",
        host.address, host.name
    );
    fs::write(&hosts, hosts_text).map_err(io_err("write", &hosts))?;
    for name in COPIED_ETC_FILES {
        let from = Path::new("/etc").join(name);
        if from.is_file() {
            let to = etc.join(name);
            fs::copy(&from, &to).map_err(io_err("copy machine file to", &to))?;
        }
    }
    Ok(())
}

/// Starts the agent of `host` detached from this process: own process group, stdin null,
/// stdout and stderr appended to the host's log.
pub fn spawn_agent(ip: &Ip, agent: &Path, host: &LabHost) -> Result<Child, LabError> {
    if let Some(dir) = host.log_path.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&host.log_path)
        .map_err(io_err("open agent log", &host.log_path))?;
    let log_err = log
        .try_clone()
        .map_err(io_err("open agent log", &host.log_path))?;
    let mut cmd = sys::hardened(ip.program());
    cmd.args(["netns", "exec", &host.namespace])
        .arg(agent)
        .arg("--root")
        .arg(&host.root_dir)
        .arg("--config")
        .arg(config_path(host))
        .arg("--listen")
        .arg(format!("{}:{AGENT_PORT}", host.address))
        .args(["--service-manager", "supervisor", "--kernel", "lab"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    let child = cmd.spawn().map_err(|source| LabError::AgentSpawn {
        host: host.name.clone(),
        source,
    })?;
    info!(host = %host.name, pid = child.id(), namespace = %host.namespace, "agent started");
    Ok(child)
}

/// Where a lab host's agent config lives on this machine: `<root>/etc/haop/agent.toml`.
pub fn config_path(host: &LabHost) -> PathBuf {
    host.root_dir.join("etc/haop/agent.toml")
}

/// Writes the agent's config (mode 0600: it holds the bootstrap token) with the enrollment
/// token and the agent CA's pin, as an operator would on a real host.
pub fn write_agent_config(host: &LabHost, token: &Token, pin: &str) -> Result<(), LabError> {
    let path = config_path(host);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let text = format!(
        "# Written by `haop lab up` for lab host {name}.\n\
         listen = \"{addr}:{AGENT_PORT}\"\n\
         service_manager = \"supervisor\"\n\
         kernel = \"lab\"\n\n\
         [enroll]\n\
         token = \"{token}\"\n\
         ca_hash = \"{pin}\"\n",
        name = host.name,
        addr = host.address,
        token = token.expose(),
    );
    Ok(crate::fsio::write_private(&path, text.as_bytes())?)
}

/// The names a lab host's serving certificate carries.
pub fn expected_agent(host: &LabHost) -> ExpectedAgent {
    ExpectedAgent {
        hostname: host.name.clone(),
        fqdn: None,
        addresses: vec![std::net::IpAddr::V4(host.address)],
    }
}

/// Hands `child` to a thread that waits for it, so that a long-running process (a test
/// harness) that started agents does not collect zombies. The agent does not depend on it: when
/// this process exits first, the agent is re-parented and keeps running.
pub fn detach(child: Child) {
    let mut child = child;
    let spawned = std::thread::Builder::new()
        .name("haop-lab-reaper".to_string())
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a thread to reap an agent; it may stay a zombie");
    }
}

/// Asks the agent of `host` for its facts, within `timeout` overall.
pub async fn get_facts(
    trust: &Trust,
    host: &LabHost,
    timeout: Duration,
) -> Result<Facts, LabError> {
    let call = async {
        let agent = HostAgent::connect(trust, &host.name, &host.endpoint, timeout).await?;
        Ok(agent.facts().await?)
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(LabError::Late {
            host: host.name.clone(),
            rpc: "GetFacts",
            waited: timeout,
        }),
    }
}

/// Waits until every started agent answers GetFacts, or one exits, or `timeout` passes. The
/// children are detached (see [`detach`]) whatever the outcome.
pub async fn wait_ready(
    trust: std::sync::Arc<Trust>,
    started: Vec<(LabHost, Child)>,
    timeout: Duration,
) -> Result<(), LabError> {
    let mut pending = started;
    let result = wait_ready_inner(trust, &mut pending, timeout).await;
    for (_, child) in pending {
        detach(child);
    }
    result
}

async fn wait_ready_inner(
    trust: std::sync::Arc<Trust>,
    pending: &mut Vec<(LabHost, Child)>,
    timeout: Duration,
) -> Result<(), LabError> {
    const ROUND: Duration = Duration::from_millis(100);
    const ATTEMPT: Duration = Duration::from_secs(2);
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last_errors: Vec<String> = vec![String::new(); pending.len()];
    loop {
        for (host, child) in pending.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LabError::AgentDied {
                    host: host.name.clone(),
                    status: status.to_string(),
                    log: Box::new(LogTail {
                        path: host.log_path.clone(),
                        tail: log_tail(&host.log_path, 20),
                    }),
                });
            }
        }
        let mut attempts = tokio::task::JoinSet::new();
        for (i, (host, _)) in pending.iter().enumerate() {
            let host = host.clone();
            let trust = trust.clone();
            attempts.spawn(async move {
                let enrolled =
                    crate::agent::enroll(&trust, &host.endpoint, &expected_agent(&host), ATTEMPT)
                        .await
                        .map_err(|source| LabError::Enroll {
                            host: host.name.clone(),
                            source,
                        });
                match enrolled {
                    Ok(_) => (i, get_facts(&trust, &host, ATTEMPT).await),
                    Err(e) => (i, Err(e)),
                }
            });
        }
        let mut ready = vec![false; pending.len()];
        while let Some(joined) = attempts.join_next().await {
            let Ok((i, answer)) = joined else { continue };
            match answer {
                Ok(facts) => {
                    debug!(host = %pending[i].0.name, hostname = %facts.hostname, "agent answers");
                    ready[i] = true;
                }
                Err(e) => last_errors[i] = crate::error_chain(&e),
            }
        }
        let mut still = Vec::new();
        let mut still_errors = Vec::new();
        for (i, (host, child)) in std::mem::take(pending).into_iter().enumerate() {
            if ready[i] {
                detach(child);
            } else {
                still.push((host, child));
                still_errors.push(std::mem::take(&mut last_errors[i]));
            }
        }
        *pending = still;
        last_errors = still_errors;
        if pending.is_empty() {
            info!(
                elapsed_ms = start.elapsed().as_millis() as u64,
                "all agents answer"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let (host, _) = &pending[0];
            return Err(LabError::AgentNotReady {
                host: host.name.clone(),
                endpoint: host.endpoint.clone(),
                seconds: timeout.as_secs(),
                last_error: last_errors[0].clone(),
                log: Box::new(LogTail {
                    path: host.log_path.clone(),
                    tail: log_tail(&host.log_path, 20),
                }),
            });
        }
        tokio::time::sleep(ROUND.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The last `lines` lines of the log at `path` (at most its last 8 KiB), or a note that there
/// is none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 8 * 1024;
    let Ok(mut f) = fs::File::open(path) else {
        return "(no log)".to_string();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX {
        let _ = f.seek(SeekFrom::Start(len - MAX));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() {
        "(log is empty)".to_string()
    } else {
        tail
    }
}

/// What a recorded agent pid is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentProcess {
    /// No pid recorded, no such process, or a zombie.
    Gone,
    /// The agent this lab started.
    Ours(u32),
    /// The pid belongs to another process now; never signal it.
    Foreign { pid: u32, reason: String },
}

/// Checks the recorded pid of `host` against `/proc`: start time and command line.
pub fn agent_process(host: &LabHost) -> AgentProcess {
    let Some(pid) = host.agent_pid else {
        return AgentProcess::Gone;
    };
    let Some(stat) = ProcStat::read(pid) else {
        return AgentProcess::Gone;
    };
    if stat.exited() {
        return AgentProcess::Gone;
    }
    if let Some(recorded) = host.agent_start_time {
        if recorded != stat.start_time {
            return AgentProcess::Foreign {
                pid,
                reason: format!(
                    "started at tick {}, the agent at tick {recorded}",
                    stat.start_time
                ),
            };
        }
    }
    let root = host.root_dir.to_string_lossy();
    let args = sys::cmdline(pid).unwrap_or_default();
    let has_root = args
        .windows(2)
        .any(|w| w[0] == "--root" && w[1] == root.as_ref());
    if has_root {
        AgentProcess::Ours(pid)
    } else {
        AgentProcess::Foreign {
            pid,
            reason: format!("its command line does not have --root {root}"),
        }
    }
}

/// Sends `signal` to `pid`; a process that is already gone is fine.
pub fn signal(pid: u32, signal: Signal) -> Result<(), LabError> {
    let raw = i32::try_from(pid).map_err(|_| LabError::ForeignProcess {
        pid,
        reason: "not a valid pid".to_string(),
    })?;
    if raw <= 1 {
        return Err(LabError::ForeignProcess {
            pid,
            reason: "not a lab process".to_string(),
        });
    }
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(source) => Err(LabError::Signal {
            pid,
            signal: signal.as_str(),
            source,
        }),
    }
}

/// Polls until every pid in `pids` is gone, or `timeout` passes; answers those still running.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| !sys::process_gone(*p))
            .collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long agents get to stop their units after SIGTERM. An etcd member that has lost its
/// peers can take several seconds to stop gracefully (the supervisor gives it TimeoutStopSec).
const AGENT_STOP: Duration = Duration::from_secs(15);

/// Stops the agents of `hosts`: SIGTERM to each that is still ours, up to [`AGENT_STOP`] for
/// them to exit, then SIGKILL. Answers one message per problem; an agent that is gone is no problem.
pub fn stop_agents(hosts: &[LabHost]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ours = Vec::new();
    for host in hosts {
        match agent_process(host) {
            AgentProcess::Gone => {}
            AgentProcess::Ours(pid) => ours.push(pid),
            AgentProcess::Foreign { pid, reason } => {
                warn!(host = %host.name, pid, reason = %reason, "recorded agent pid is another process now; not signalling it");
            }
        }
    }
    for pid in &ours {
        if let Err(e) = signal(*pid, Signal::SIGTERM) {
            problems.push(crate::error_chain(&e));
        }
    }
    let left = wait_gone(&ours, AGENT_STOP);
    for pid in &left {
        warn!(
            pid,
            seconds = AGENT_STOP.as_secs(),
            "agent did not exit in time after SIGTERM; sending SIGKILL"
        );
        if let Err(e) = signal(*pid, Signal::SIGKILL) {
            problems.push(crate::error_chain(&e));
        }
    }
    for pid in wait_gone(&left, Duration::from_secs(5)) {
        problems.push(format!("agent pid {pid} still runs after SIGKILL"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Role;
    use std::net::Ipv4Addr;

    fn host(root: &Path) -> LabHost {
        LabHost {
            name: "etcd1".into(),
            roles: vec![Role::Etcd],
            namespace: "haop-t-etcd1".into(),
            veth: "hv1x1".into(),
            address: Ipv4Addr::new(10, 77, 1, 11),
            endpoint: "http://10.77.1.11:7443".into(),
            agent_pid: None,
            agent_start_time: None,
            root_dir: root.to_path_buf(),
            log_path: root.join("log"),
        }
    }

    #[test]
    fn root_is_prepared_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(&dir.path().join("root"));
        prepare_root(&h).unwrap();
        prepare_root(&h).unwrap();
        let r = &h.root_dir;
        assert_eq!(
            fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "etcd1\n"
        );
        let hosts = fs::read_to_string(r.join("etc/hosts")).unwrap();
        assert!(hosts.contains("127.0.0.1\tlocalhost"));
        assert!(hosts.contains("10.77.1.11\tetcd1"));
        let mode = fs::metadata(r.join("tmp")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
        for d in ["run", "var/lib", "var/log"] {
            assert!(r.join(d).is_dir(), "{d}");
        }
        if Path::new("/etc/passwd").exists() {
            assert!(r.join("etc/passwd").is_file());
        }
    }

    #[test]
    fn unknown_pids_are_gone_and_others_are_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = host(dir.path());
        assert_eq!(agent_process(&h), AgentProcess::Gone);
        // This test process is alive but is not an agent with this root.
        h.agent_pid = Some(std::process::id());
        assert!(matches!(agent_process(&h), AgentProcess::Foreign { .. }));
        h.agent_start_time = Some(0);
        assert!(matches!(agent_process(&h), AgentProcess::Foreign { .. }));
    }

    #[test]
    fn signal_refuses_init() {
        assert!(signal(1, Signal::SIGTERM).is_err());
        assert!(signal(0, Signal::SIGTERM).is_err());
    }

    #[test]
    fn log_tail_takes_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        assert_eq!(log_tail(&p, 2), "(no log)");
        fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&p, 2), "b\nc");
    }
}
