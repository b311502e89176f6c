//! The two flows over SSH: [`install`] (every host in parallel) and [`upgrade`] (one host at a
//! time). See the module doc of [`super`] for the lifecycle of a host.
//!
//! Remote work is a few short POSIX shell scripts, run as `sh -c SCRIPT` (under `sudo -n` when
//! the SSH user is not root). Nothing variable reaches them unchecked: the version is validated
//! ([`super::deb::valid_version`]), paths are constants, and the token travels on stdin inside
//! agent.toml, never on a command line where `ps` would show it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::deb::AgentDeb;
use super::hostkeys::{self, Refusal};
use super::ssh::{shell_quote, Ssh, SshOptions, Target};
use super::HostsError;
use crate::agent::{ExpectedAgent, HostAgent};
use crate::inventory::{Host, Inventory};
use crate::trust::{TokenUses, Trust};

/// How long an agent may take, after its restart, to enroll or to answer over mTLS.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(90);
/// Units whose main pid must be the same before and after an agent upgrade, when they run.
pub const WATCHED_UNITS: [&str; 2] = ["etcd.service", "keepalived.service"];
/// One remote step (the upload of the package and `dpkg -i` are the longest).
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
const AGENT_CONFIG: &str = "/etc/haop/agent.toml";
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// Where progress goes: `(host, what happens now)`.
pub type Progress = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// How hosts are reached and what their agents get.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub ssh: SshOptions,
    /// The SSH user; anything but root runs the remote steps under `sudo -n`.
    pub user: String,
    pub port: u16,
    /// More lines for agent.toml (a lab sets `kernel = "lab"`: its hosts share one kernel).
    pub extra_config: String,
    /// How long the token written to a host may be used to enroll.
    pub token_ttl: Duration,
}

/// What was done to one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Enrolled, at the package's version: left alone.
    Unchanged { version: String },
    /// Installed now, and enrolled.
    Installed { version: String },
    /// An older package replaced by this one.
    Upgraded { from: String, to: String },
    /// The package was there; the agent was enrolled now.
    Enrolled { version: String },
    /// A newer package is installed: never downgraded.
    NewerKept { installed: String },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Unchanged { version } => {
                write!(f, "unchanged (haop-agent {version}, enrolled)")
            }
            Action::Installed { version } => write!(f, "installed haop-agent {version}, enrolled"),
            Action::Upgraded { from, to } => write!(f, "upgraded haop-agent {from} -> {to}"),
            Action::Enrolled { version } => write!(f, "haop-agent {version} enrolled"),
            Action::NewerKept { installed } => {
                write!(
                    f,
                    "left alone: haop-agent {installed} is newer than the package"
                )
            }
        }
    }
}

impl Action {
    pub fn changed(&self) -> bool {
        !matches!(self, Action::Unchanged { .. } | Action::NewerKept { .. })
    }
}

/// One host's result.
#[derive(Debug)]
pub struct HostOutcome {
    pub host: String,
    pub result: Result<Action, HostsError>,
}

/// How the installed package compares with the one at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Absent,
    Older,
    Same,
    Newer,
}

/// What the probe script found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    installed: Option<String>,
    cmp: Cmp,
    arch: String,
    systemd: bool,
}

/// The probe: the package's state and version, compared on the host with dpkg's own rules.
fn probe_script(version: &str) -> String {
    format!(
        r#"st=$(dpkg-query -W -f='${{db:Status-Abbrev}}|${{Version}}' haop-agent 2>/dev/null || true)
echo "arch=$(dpkg --print-architecture)"
if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi
case "$st" in
ii*) cur=${{st#*|}}; echo "installed=$cur"
  if dpkg --compare-versions "$cur" lt {v}; then echo cmp=older
  elif dpkg --compare-versions "$cur" eq {v}; then echo cmp=same
  else echo cmp=newer; fi ;;
*) echo cmp=absent ;;
esac
"#,
        v = shell_quote(version)
    )
}

fn parse_probe(text: &str) -> Probe {
    let mut p = Probe {
        installed: None,
        cmp: Cmp::Absent,
        arch: String::new(),
        systemd: false,
    };
    for line in text.lines() {
        match line.split_once('=') {
            Some(("installed", v)) => p.installed = Some(v.trim().to_string()),
            Some(("arch", v)) => p.arch = v.trim().to_string(),
            Some(("systemd", v)) => p.systemd = v.trim() == "yes",
            Some(("cmp", v)) => {
                p.cmp = match v.trim() {
                    "older" => Cmp::Older,
                    "same" => Cmp::Same,
                    "newer" => Cmp::Newer,
                    _ => Cmp::Absent,
                }
            }
            _ => {}
        }
    }
    p
}

/// The agent config a host gets: listen on the inventory's port, the token and the CA hash.
fn agent_config(host: &str, port: u16, token: &str, ca_hash: &str, extra: &str) -> String {
    format!(
        "# Written by `haop hosts install` for host {host}. Flags of haop-agent override it;\n\
         # see haop-agent(8). The token enrolls this host once and is useless afterwards.\n\
         listen = \"0.0.0.0:{port}\"\n{extra}\n[enroll]\ntoken = \"{token}\"\nca_hash = \"{ca_hash}\"\n"
    )
}

/// One host as the flows see it.
#[derive(Debug, Clone)]
struct Remote {
    name: String,
    target: Target,
    endpoint: String,
    expected: ExpectedAgent,
    sudo: bool,
}

impl Remote {
    fn new(host: &Host, opts: &InstallOptions) -> Remote {
        Remote {
            name: host.name.as_str().to_string(),
            target: Target {
                user: opts.user.clone(),
                host: host.address.to_string(),
                port: opts.port,
            },
            endpoint: host.agent.as_str().to_string(),
            expected: ExpectedAgent {
                hostname: host.name.as_str().to_string(),
                fqdn: host.fqdn.as_ref().map(|f| f.as_str().to_string()),
                addresses: vec![host.address],
            },
            sudo: opts.user != "root",
        }
    }

    /// Runs `script` on the host (as root), with `stdin`; its stdout on success.
    async fn run(
        &self,
        ssh: &Ssh,
        step: &'static str,
        script: &str,
        stdin: Option<&[u8]>,
    ) -> Result<String, HostsError> {
        let sudo = if self.sudo { "sudo -n " } else { "" };
        let command = format!("{sudo}/bin/sh -c {}", shell_quote(script));
        let out = ssh
            .run(&self.target, &command, stdin, STEP_TIMEOUT)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => HostsError::Timeout {
                    host: self.name.clone(),
                    step,
                    seconds: STEP_TIMEOUT.as_secs(),
                },
                _ => HostsError::Spawn {
                    program: super::ssh::SSH.to_string(),
                    source: e,
                },
            })?;
        if out.success() {
            return Ok(out.stdout);
        }
        if out.ssh_failed() {
            return Err(self.ssh_error(ssh.options(), out.stderr).await);
        }
        Err(HostsError::Remote {
            host: self.name.clone(),
            step,
            status: match out.status {
                Some(c) => format!("exit {c}"),
                None => "killed".to_string(),
            },
            stderr: out.stderr,
        })
    }

    /// The error for a failed ssh: a refused host key named as such, else ssh's own words.
    async fn ssh_error(&self, o: &SshOptions, stderr: String) -> HostsError {
        let target = self.target.to_string();
        match hostkeys::classify(&stderr) {
            Some(Refusal::Unknown { key_type }) => HostsError::UnknownHostKey {
                host: self.name.clone(),
                target,
                key_type,
                known_hosts: o.known_hosts.clone(),
            },
            Some(Refusal::Changed {
                key_type,
                offered,
                pinned_at,
            }) => {
                let name = self.target.known_hosts_name();
                let pinned = hostkeys::pinned_fingerprint(&o.known_hosts, &name, &key_type)
                    .await
                    .unwrap_or_else(|| "(unreadable)".to_string());
                HostsError::ChangedHostKey(Box::new(super::ChangedHostKey {
                    host: self.name.clone(),
                    target,
                    name,
                    key_type,
                    pinned,
                    offered,
                    pinned_at: pinned_at.unwrap_or_else(|| o.known_hosts.display().to_string()),
                    known_hosts: o.known_hosts.clone(),
                }))
            }
            None => HostsError::Ssh {
                host: self.name.clone(),
                target,
                stderr,
            },
        }
    }

    async fn probe(&self, ssh: &Ssh, deb: &AgentDeb) -> Result<Probe, HostsError> {
        let out = self
            .run(ssh, "probe", &probe_script(&deb.version), None)
            .await?;
        let p = parse_probe(&out);
        if !p.systemd {
            return Err(HostsError::NoSystemd {
                host: self.name.clone(),
            });
        }
        if p.arch != deb.architecture && deb.architecture != "all" {
            return Err(HostsError::Architecture {
                host: self.name.clone(),
                arch: p.arch,
                package_arch: deb.architecture.clone(),
            });
        }
        Ok(p)
    }

    /// Uploads the package, checks its sha256 on the host and installs it. On an upgrade the
    /// package's postinst restarts the agent.
    async fn install_package(
        &self,
        ssh: &Ssh,
        deb: &AgentDeb,
        progress: &Progress,
    ) -> Result<(), HostsError> {
        let data = tokio::fs::read(&deb.path)
            .await
            .map_err(|source| HostsError::Io {
                path: deb.path.clone(),
                source,
            })?;
        let remote = shell_quote(&deb.remote_path());
        progress(
            &self.name,
            &format!(
                "uploading haop-agent {} ({} KiB)",
                deb.version,
                deb.size / 1024
            ),
        );
        self.run(
            ssh,
            "upload of the package",
            &format!("umask 077; cat > {remote}"),
            Some(&data),
        )
        .await?;
        progress(&self.name, &format!("dpkg -i haop-agent {}", deb.version));
        let script = format!(
            "set -e\necho '{sha}  '{remote} | sha256sum -c --quiet -\n\
             DEBIAN_FRONTEND=noninteractive dpkg --force-confdef --force-confold -i {remote} \
             >/dev/null\nrm -f {remote}\n",
            sha = deb.sha256
        );
        self.run(ssh, "dpkg -i", &script, None).await.map(|_| ())
    }

    /// Writes agent.toml with a fresh single-use token and restarts the agent.
    async fn configure(
        &self,
        ssh: &Ssh,
        trust: &Trust,
        opts: &InstallOptions,
        port: u16,
    ) -> Result<(), HostsError> {
        trust.refuse_during_rotation("a bootstrap token for a new agent")?;
        let (token, _) = trust.tokens().create(opts.token_ttl, TokenUses::Once)?;
        let text = agent_config(
            &self.name,
            port,
            &token.expose(),
            &trust.agent_ca.sha256_pin(),
            &opts.extra_config,
        );
        let script = format!(
            "set -e\numask 077\nmkdir -p /etc/haop\ncat > {AGENT_CONFIG}.haop-new\n\
             mv -f {AGENT_CONFIG}.haop-new {AGENT_CONFIG}\nsystemctl restart haop-agent\n"
        );
        self.run(ssh, "writing agent.toml", &script, Some(text.as_bytes()))
            .await
            .map(|_| ())
    }

    /// Whether the agent answers over mTLS with this state dir's CA.
    async fn enrolled(&self, trust: &Trust) -> bool {
        match crate::agent::connect(trust, &self.endpoint, RPC_TIMEOUT).await {
            Ok(mut c) => c.who_am_i(haop_proto::v1::WhoAmIRequest {}).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Enrolls the (restarting) agent, retrying until [`ENROLL_TIMEOUT`].
    async fn enroll(&self, trust: &Trust) -> Result<(), HostsError> {
        let deadline = Instant::now() + ENROLL_TIMEOUT;
        loop {
            let last_error = match crate::agent::enroll(
                trust,
                &self.endpoint,
                &self.expected,
                RPC_TIMEOUT,
            )
            .await
            {
                Ok(_) => return self.wait_answers(trust, deadline).await,
                Err(e) => crate::error_chain(&e),
            };
            if Instant::now() >= deadline {
                return Err(HostsError::Enroll {
                    host: self.name.clone(),
                    last_error,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until the agent answers over mTLS.
    async fn wait_answers(&self, trust: &Trust, deadline: Instant) -> Result<(), HostsError> {
        while !self.enrolled(trust).await {
            if Instant::now() >= deadline {
                return Err(HostsError::Timeout {
                    host: self.name.clone(),
                    step: "the agent answering over mTLS",
                    seconds: ENROLL_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }
}

/// Installs and enrolls the agent of every host of `inventory` (in parallel). Answers one
/// outcome per host, in the inventory's order; only trust material that cannot be loaded fails
/// the whole call.
pub async fn install(
    state_dir: &std::path::Path,
    inventory: &Inventory,
    deb: &AgentDeb,
    opts: &InstallOptions,
    progress: Progress,
) -> Result<Vec<HostOutcome>, HostsError> {
    let trust = Arc::new(Trust::load(state_dir)?);
    prepare_known_hosts(&opts.ssh)?;
    let ssh = Arc::new(Ssh::new(opts.ssh.clone()));
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in inventory.hosts.iter().enumerate() {
        let remote = Remote::new(host, opts);
        let port = host.agent.port();
        let (trust, ssh, deb, opts, progress) = (
            trust.clone(),
            ssh.clone(),
            deb.clone(),
            opts.clone(),
            progress.clone(),
        );
        set.spawn(async move {
            let result = install_one(&remote, &ssh, &trust, &deb, &opts, port, &progress).await;
            match &result {
                Ok(a) => progress(&remote.name, &a.to_string()),
                Err(e) => {
                    warn!(host = %remote.name, error = %crate::error_chain(e), "install failed");
                    progress(&remote.name, &format!("FAILED: {}", crate::error_chain(e)));
                }
            }
            (
                i,
                HostOutcome {
                    host: remote.name,
                    result,
                },
            )
        });
    }
    let mut outcomes: Vec<(usize, HostOutcome)> = set.join_all().await;
    outcomes.sort_by_key(|(i, _)| *i);
    Ok(outcomes.into_iter().map(|(_, o)| o).collect())
}

async fn install_one(
    remote: &Remote,
    ssh: &Ssh,
    trust: &Trust,
    deb: &AgentDeb,
    opts: &InstallOptions,
    port: u16,
    progress: &Progress,
) -> Result<Action, HostsError> {
    progress(
        &remote.name,
        &format!("probing over ssh ({})", remote.target),
    );
    let probe = remote.probe(ssh, deb).await?;
    let enrolled = remote.enrolled(trust).await;
    let installed = probe.installed.clone().unwrap_or_default();
    let action = match probe.cmp {
        Cmp::Newer => return Ok(Action::NewerKept { installed }),
        Cmp::Same if enrolled => {
            return Ok(Action::Unchanged {
                version: deb.version.clone(),
            })
        }
        Cmp::Same => Action::Enrolled {
            version: deb.version.clone(),
        },
        Cmp::Older => Action::Upgraded {
            from: installed,
            to: deb.version.clone(),
        },
        Cmp::Absent => Action::Installed {
            version: deb.version.clone(),
        },
    };
    if matches!(probe.cmp, Cmp::Older | Cmp::Absent) {
        remote.install_package(ssh, deb, progress).await?;
    }
    if enrolled {
        // An upgrade of an enrolled agent: its identity stays; wait for the restarted agent.
        remote
            .wait_answers(trust, Instant::now() + ENROLL_TIMEOUT)
            .await?;
    } else {
        progress(&remote.name, "writing agent.toml (fresh token), enrolling");
        remote.configure(ssh, trust, opts, port).await?;
        remote.enroll(trust).await?;
    }
    info!(host = %remote.name, action = %action, "agent installed");
    Ok(action)
}

/// Rolls `deb` to every host of `inventory`, one at a time, stopping at the first failure.
/// Answers the outcomes of the hosts it reached.
pub async fn upgrade(
    state_dir: &std::path::Path,
    inventory: &Inventory,
    deb: &AgentDeb,
    opts: &InstallOptions,
    progress: Progress,
) -> Result<Vec<HostOutcome>, HostsError> {
    let trust = Trust::load(state_dir)?;
    prepare_known_hosts(&opts.ssh)?;
    let ssh = Ssh::new(opts.ssh.clone());
    let mut outcomes = Vec::new();
    for host in &inventory.hosts {
        let remote = Remote::new(host, opts);
        let result = upgrade_one(&remote, &ssh, &trust, deb, &progress).await;
        match &result {
            Ok(a) => progress(&remote.name, &a.to_string()),
            Err(e) => progress(&remote.name, &format!("FAILED: {}", crate::error_chain(e))),
        }
        let failed = result.is_err();
        outcomes.push(HostOutcome {
            host: remote.name,
            result,
        });
        if failed {
            break;
        }
    }
    Ok(outcomes)
}

async fn upgrade_one(
    remote: &Remote,
    ssh: &Ssh,
    trust: &Trust,
    deb: &AgentDeb,
    progress: &Progress,
) -> Result<Action, HostsError> {
    progress(
        &remote.name,
        &format!("probing over ssh ({})", remote.target),
    );
    let probe = remote.probe(ssh, deb).await?;
    let installed = match (probe.cmp, probe.installed) {
        (Cmp::Absent, _) | (_, None) => {
            return Err(HostsError::NotInstalled {
                host: remote.name.clone(),
            })
        }
        (Cmp::Same, _) => {
            return Ok(Action::Unchanged {
                version: deb.version.clone(),
            })
        }
        (Cmp::Newer, Some(installed)) => return Ok(Action::NewerKept { installed }),
        (Cmp::Older, Some(installed)) => installed,
    };
    let before = unit_pids(remote, trust).await?;
    remote.install_package(ssh, deb, progress).await?;
    progress(&remote.name, "waiting for the new agent");
    remote
        .wait_answers(trust, Instant::now() + ENROLL_TIMEOUT)
        .await?;
    let after = unit_pids(remote, trust).await?;
    for (unit, pid) in &before {
        let now = after
            .iter()
            .find(|(u, _)| u == unit)
            .map(|(_, p)| *p)
            .unwrap_or(0);
        if now != *pid {
            return Err(HostsError::UnitRestarted {
                host: remote.name.clone(),
                unit: unit.clone(),
                before: *pid,
                after: now,
            });
        }
    }
    Ok(Action::Upgraded {
        from: installed,
        to: deb.version.clone(),
    })
}

/// The main pids of the [`WATCHED_UNITS`] that run on the host, through its agent.
async fn unit_pids(remote: &Remote, trust: &Trust) -> Result<Vec<(String, u32)>, HostsError> {
    let agent = HostAgent::connect(trust, &remote.name, &remote.endpoint, RPC_TIMEOUT).await?;
    let mut pids = Vec::new();
    for unit in WATCHED_UNITS {
        let s = agent.unit_status(unit).await?;
        if s.installed && s.main_pid != 0 {
            pids.push((unit.to_string(), s.main_pid));
        }
    }
    Ok(pids)
}

/// The known_hosts file's directory exists (0700), so that ssh can record accepted keys.
fn prepare_known_hosts(o: &SshOptions) -> Result<(), HostsError> {
    if let Some(dir) = o.known_hosts.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| HostsError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_output_is_read() {
        let p = parse_probe("arch=amd64\nsystemd=yes\ninstalled=0.1.0-1\ncmp=older\n");
        assert_eq!(
            p,
            Probe {
                installed: Some("0.1.0-1".into()),
                cmp: Cmp::Older,
                arch: "amd64".into(),
                systemd: true
            }
        );
        let p = parse_probe("arch=arm64\nsystemd=no\ncmp=absent\n");
        assert_eq!(p.cmp, Cmp::Absent);
        assert!(!p.systemd && p.installed.is_none());
    }

    #[test]
    fn the_probe_script_quotes_the_version() {
        let s = probe_script("1:0.1.0-1");
        assert!(s.contains("lt 1:0.1.0-1;"), "{s}");
        assert!(s.contains("${db:Status-Abbrev}"), "{s}");
    }

    #[test]
    fn agent_config_is_valid_toml_with_the_token() {
        let text = agent_config(
            "etcd1",
            7443,
            "abcdef.0123456789abcdef",
            "sha256:00",
            "kernel = \"lab\"",
        );
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["listen"].as_str(), Some("0.0.0.0:7443"));
        assert_eq!(v["kernel"].as_str(), Some("lab"));
        assert_eq!(
            v["enroll"]["token"].as_str(),
            Some("abcdef.0123456789abcdef")
        );
        assert_eq!(v["enroll"]["ca_hash"].as_str(), Some("sha256:00"));
    }

    #[test]
    fn only_real_changes_count_as_changes() {
        assert!(!Action::Unchanged {
            version: "1".into()
        }
        .changed());
        assert!(!Action::NewerKept {
            installed: "2".into()
        }
        .changed());
        assert!(Action::Installed {
            version: "1".into()
        }
        .changed());
    }
}
