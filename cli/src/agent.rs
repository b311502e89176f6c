//! `haop agent`: talk to one agent directly.
//!
//! The runbook commands drive many agents at once from an inventory. This is the low-level tool
//! for an operator (or the demo) who wants to see or do one thing on one host: its facts, a unit's
//! state, install and start a unit. It uses the same client as everything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use haop_coordinator::agent;
use haop_proto::v1 as pb;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's endpoint, such as https://10.0.0.5:7443.
    #[arg(long, conflicts_with_all = ["lab", "host"])]
    endpoint: Option<String>,
    /// A lab's name, with --host: reach that lab host's agent.
    #[arg(long, requires = "host")]
    lab: Option<String>,
    /// The lab host, with --lab.
    #[arg(long, requires = "lab")]
    host: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    #[command(subcommand)]
    command: AgentCommand,
}

pub use crate::output::Format;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Show the host's facts: name, addresses, OS, kernel, CPUs, memory, disks, swap.
    Facts,
    /// Install a unit file (and declare its data dirs, which WipeDataDir may then wipe).
    InstallUnit {
        /// Unit name, as systemctl takes it: etcd means etcd.service.
        #[arg(value_parser = crate::unit_arg)]
        name: String,
        /// The unit file to install.
        file: PathBuf,
        /// A data directory of the unit (repeatable).
        #[arg(long = "data-dir")]
        data_dirs: Vec<String>,
    },
    /// Act on a unit or show its state.
    Unit {
        /// Unit name, as systemctl takes it: etcd means etcd.service.
        #[arg(value_parser = crate::unit_arg)]
        name: String,
        #[arg(value_enum)]
        action: UnitVerb,
    },
    /// Roll a newer haop-agent .deb to every host of an inventory over SSH, one host at a time.
    ///
    /// Each host's agent restarts (the package's postinst); etcd and keepalived keep running
    /// under systemd, and haop checks that their main pids did not change. The rollout stops at
    /// the first host that fails. Hosts already at the version are left alone.
    Upgrade(crate::hosts::SshArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum UnitVerb {
    Start,
    Stop,
    Restart,
    Enable,
    Disable,
    Status,
}

async fn endpoint(state_dir: &Path, args: &AgentArgs) -> anyhow::Result<String> {
    match (&args.endpoint, &args.lab, &args.host) {
        (Some(e), _, _) => Ok(e.clone()),
        (None, Some(lab), Some(host)) => {
            let lab = haop_coordinator::lab::Lab::open(state_dir, lab)?;
            let h = lab
                .host(host)
                .with_context(|| format!("lab {} has no host {host}", lab.name()))?;
            Ok(h.endpoint.clone())
        }
        _ => bail!("say which agent: --endpoint URL, or --lab NAME --host HOST"),
    }
}

pub async fn run(state_dir: &Path, args: AgentArgs) -> anyhow::Result<ExitCode> {
    if let AgentCommand::Upgrade(ssh) = &args.command {
        return crate::hosts::upgrade(state_dir, ssh).await;
    }
    let ep = endpoint(state_dir, &args).await?;
    let trust = haop_coordinator::trust::Trust::load(state_dir)?;
    let client = agent::HostAgent::connect(&trust, &ep, &ep, Duration::from_secs(5)).await?;
    match &args.command {
        AgentCommand::Facts => {
            let f = client.facts().await?;
            if args.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&facts_json(&f))?);
            } else {
                print_facts(&f);
            }
        }
        AgentCommand::InstallUnit {
            name,
            file,
            data_dirs,
        } => {
            let content = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read unit file {}", file.display()))?;
            let req = pb::EnsureUnitRequest {
                name: name.clone(),
                content,
                data_dirs: data_dirs.clone(),
            };
            let r = client
                .call(
                    "EnsureUnit",
                    |mut c| async move { c.ensure_unit(req).await },
                )
                .await?;
            println!(
                "{name}: {} ({})",
                if r.changed { "installed" } else { "unchanged" },
                r.path
            );
        }
        AgentCommand::Unit { name, action } => {
            let status = if *action == UnitVerb::Status {
                client.unit_status(name).await?
            } else {
                let act = match action {
                    UnitVerb::Start => pb::Action::Start,
                    UnitVerb::Stop => pb::Action::Stop,
                    UnitVerb::Restart => pb::Action::Restart,
                    UnitVerb::Enable => pb::Action::Enable,
                    UnitVerb::Disable => pb::Action::Disable,
                    UnitVerb::Status => unreachable!("handled above"),
                };
                let req = pb::UnitActionRequest {
                    name: name.clone(),
                    action: act as i32,
                };
                let r = client
                    .call(
                        "UnitAction",
                        |mut c| async move { c.unit_action(req).await },
                    )
                    .await?;
                eprintln!(
                    "{name}: {}",
                    if r.changed { "changed" } else { "unchanged" }
                );
                r.status.unwrap_or_default()
            };
            if args.output == Format::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "name": status.name,
                        "installed": status.installed,
                        "active_state": status.active_state,
                        "sub_state": status.sub_state,
                        "main_pid": status.main_pid,
                        "since_unix_ms": status.since_unix_ms,
                        "restart_count": status.restart_count,
                        "enabled": status.enabled,
                        "last_exit": status.last_exit,
                    }))?
                );
            } else {
                println!(
                    "{}: {} ({}), pid {}, restarts {}, {}{}",
                    status.name,
                    status.active_state,
                    status.sub_state,
                    status.main_pid,
                    status.restart_count,
                    if status.enabled {
                        "enabled"
                    } else {
                        "disabled"
                    },
                    if status.last_exit.is_empty() {
                        String::new()
                    } else {
                        format!(", last exit: {}", status.last_exit)
                    }
                );
            }
        }
        // Answered before connecting to any one agent.
        AgentCommand::Upgrade(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}

pub fn facts_json(f: &pb::Facts) -> serde_json::Value {
    serde_json::json!({
        "hostname": f.hostname,
        "interfaces": f.interfaces.iter().map(|i| serde_json::json!({
            "name": i.name, "addresses": i.addresses, "up": i.up,
        })).collect::<Vec<_>>(),
        "os_release": f.os_release,
        "kernel": f.kernel,
        "cpus": f.cpus,
        "memory_total_bytes": f.memory_total_bytes,
        "memory_available_bytes": f.memory_available_bytes,
        "swap": f.swap.as_ref().map(|s| serde_json::json!({
            "total_bytes": s.total_bytes, "used_bytes": s.used_bytes,
            "devices": s.devices, "fstab_entries": s.fstab_entries,
        })),
        "service_manager": f.service_manager,
        "agent_version": f.agent_version,
        "uptime_seconds": f.uptime_seconds,
        "root": f.root,
    })
}

fn print_facts(f: &pb::Facts) {
    println!("hostname:        {}", f.hostname);
    println!("os:              {}", f.os_release);
    println!("kernel:          {}", f.kernel);
    println!("cpus:            {}", f.cpus);
    println!(
        "memory:          {} MiB total, {} MiB available",
        f.memory_total_bytes / (1 << 20),
        f.memory_available_bytes / (1 << 20)
    );
    println!("service manager: {}", f.service_manager);
    println!("agent:           {}", f.agent_version);
    for i in &f.interfaces {
        println!(
            "interface:       {} {} {}",
            i.name,
            if i.up { "up" } else { "down" },
            i.addresses.join(" ")
        );
    }
    if let Some(s) = &f.swap {
        println!(
            "swap:            {} MiB, devices [{}], {} fstab entries",
            s.total_bytes / (1 << 20),
            s.devices.join(", "),
            s.fstab_entries
        );
    }
}
