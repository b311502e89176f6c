//! `haop hosts install` and `haop agent upgrade`: agents onto hosts over SSH.
//!
//! A thin front over [`haop_coordinator::hosts`]: the SSH flags both commands share, the
//! package to install, a line per host as it goes, and a summary whose exit code says whether
//! every host made it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use haop_coordinator::hosts::{self, AgentDeb, HostOutcome, InstallOptions, SshOptions};
use haop_coordinator::inventory::Inventory;

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Install, configure and enroll haop-agent on every host of the inventory, over SSH.
    ///
    /// Per host, in parallel: upload the agent's .deb, `dpkg -i` it, write
    /// /etc/haop/agent.toml with a fresh single-use token and the agent CA's hash, restart the
    /// agent under systemd, and enroll it. An enrolled agent of the same version is left alone;
    /// an older one is upgraded; a newer one is never downgraded. Host keys are pinned: an
    /// unknown key is refused unless --accept-new-host-keys, a changed key always. One host's
    /// failure does not stop the others; the exit code is 1 when any host failed.
    Install(InstallArgs),
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub common: SshArgs,
    /// A setting of the agent's config for every host, KEY=VALUE (repeatable): kernel=lab for
    /// hosts that share one kernel, service_manager=systemd.
    #[arg(long = "agent-setting", value_name = "KEY=VALUE")]
    pub agent_settings: Vec<String>,
    /// How long each host's enrollment token stays valid.
    #[arg(long, default_value = "1h")]
    pub token_ttl: String,
}

/// What `hosts install` and `agent upgrade` share.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// The inventory: every host is reached at its address.
    #[arg(short = 'f', long = "file", value_name = "INVENTORY")]
    pub file: PathBuf,
    /// The agent's .deb (packaging/build makes it) [default: the newest in target/debian].
    #[arg(long, value_name = "FILE")]
    pub deb: Option<PathBuf>,
    /// SSH user; anything but root runs the remote steps with `sudo -n`.
    #[arg(long, default_value = "root")]
    pub ssh_user: String,
    /// SSH port of every host.
    #[arg(long, default_value_t = 22)]
    pub ssh_port: u16,
    /// Private key to log in with [default: ssh's own choice, and ssh-agent].
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The known_hosts file host keys are pinned in [default: <state-dir>/ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Record the key of a host that has none pinned yet (check it out of band first). A
    /// changed key is refused all the same.
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// A bastion every connection goes through, [user@]host[:port]; its key is pinned in the
    /// same known_hosts.
    #[arg(long, value_name = "JUMP")]
    pub jump: Option<String>,
}

impl SshArgs {
    fn options(&self, state_dir: &Path) -> anyhow::Result<InstallOptions> {
        let jump = self
            .jump
            .as_deref()
            .map(|j| hosts::parse_jump(j, &self.ssh_user))
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("--jump")?;
        if let Some(id) = &self.identity {
            if !id.is_file() {
                bail!("--identity {}: no such file", id.display());
            }
        }
        Ok(InstallOptions {
            ssh: SshOptions {
                identity: self.identity.clone(),
                known_hosts: self
                    .known_hosts
                    .clone()
                    .unwrap_or_else(|| hosts::default_known_hosts(state_dir)),
                accept_new_host_keys: self.accept_new_host_keys,
                jump,
                connect_timeout: Duration::from_secs(10),
            },
            user: self.ssh_user.clone(),
            port: self.ssh_port,
            extra_config: String::new(),
            token_ttl: Duration::from_secs(3600),
        })
    }

    async fn load(&self) -> anyhow::Result<(Inventory, AgentDeb)> {
        let (inventory, _) = Inventory::load(&self.file)?;
        let path = match &self.deb {
            Some(p) => p.clone(),
            None => haop_coordinator::lab::booted::find_agent_deb()?,
        };
        let deb = AgentDeb::read(&path).await?;
        Ok((inventory, deb))
    }
}

/// `KEY=VALUE` settings as agent.toml lines; only keys the installer may set.
fn settings(pairs: &[String]) -> anyhow::Result<String> {
    const KEYS: [&str; 2] = ["kernel", "service_manager"];
    let mut out = String::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--agent-setting {p:?}: expected KEY=VALUE");
        };
        if !KEYS.contains(&k) {
            bail!(
                "--agent-setting {p:?}: {k} is not one of {}",
                KEYS.join(", ")
            );
        }
        if !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || v.is_empty() {
            bail!("--agent-setting {p:?}: the value must be a plain word");
        }
        out.push_str(&format!("{k} = \"{v}\"\n"));
    }
    Ok(out)
}

fn progress() -> hosts::Progress {
    Arc::new(|host: &str, what: &str| eprintln!("{host:<12} {what}"))
}

fn summary(verb: &str, outcomes: &[HostOutcome], total: usize) -> ExitCode {
    let failed: Vec<&HostOutcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let changed = outcomes
        .iter()
        .filter(|o| o.result.as_ref().is_ok_and(|a| a.changed()))
        .count();
    println!(
        "{verb}: {} of {total} hosts ok ({changed} changed), {} failed{}",
        outcomes.len() - failed.len(),
        failed.len(),
        if outcomes.len() < total {
            format!(", {} not reached", total - outcomes.len())
        } else {
            String::new()
        }
    );
    for o in &failed {
        if let Err(e) = &o.result {
            println!("  {}: {}", o.host, haop_coordinator::error_chain(e));
        }
    }
    if failed.is_empty() && outcomes.len() == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub async fn run(state_dir: &Path, cmd: HostsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HostsCommand::Install(args) => {
            let mut opts = args.common.options(state_dir)?;
            opts.extra_config = settings(&args.agent_settings)?;
            opts.token_ttl =
                haop_coordinator::pki::parse_lifetime(&args.token_ttl).context("--token-ttl")?;
            let (inventory, deb) = args.common.load().await?;
            eprintln!(
                "installing haop-agent {} on {} hosts over ssh",
                deb.version,
                inventory.hosts.len()
            );
            let outcomes = hosts::install(state_dir, &inventory, &deb, &opts, progress()).await?;
            Ok(summary("install", &outcomes, inventory.hosts.len()))
        }
    }
}

/// `haop agent upgrade`.
pub async fn upgrade(state_dir: &Path, args: &SshArgs) -> anyhow::Result<ExitCode> {
    let opts = args.options(state_dir)?;
    let (inventory, deb) = args.load().await?;
    eprintln!(
        "upgrading haop-agent to {} on {} hosts, one at a time",
        deb.version,
        inventory.hosts.len()
    );
    let outcomes = hosts::upgrade(state_dir, &inventory, &deb, &opts, progress()).await?;
    Ok(summary("upgrade", &outcomes, inventory.hosts.len()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_known_settings_with_plain_values() {
        assert_eq!(
            super::settings(&["kernel=lab".into()]).unwrap(),
            "kernel = \"lab\"\n"
        );
        for bad in ["kernel", "root=/x", "kernel=a\"b", "kernel="] {
            assert!(super::settings(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
