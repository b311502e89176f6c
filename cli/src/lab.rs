//! `haop lab`: hosts on this machine, one network namespace each, with a haop-agent per host.
//!
//! A thin front over [`haop_coordinator::lab`]: parse, call, print. Human output goes to
//! stdout; errors are returned to `main`, which prints the chain once.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use haop_coordinator::lab::{AgentStop, HostReport, Lab, LabSpec, SeedOptions};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create a lab and start its agents.
    ///
    /// Makes a bridge with a private /24 and, per host, a network namespace, a root directory
    /// and a haop-agent; waits until every agent answers, then writes the lab's inventory. Hosts
    /// are named etcd1..N, master1..M and worker1..W. Needs root.
    Up {
        /// The lab's name: a-z, 0-9 and '-', 1 to 16 characters, starting with a letter.
        name: String,
        /// Number of etcd hosts (addresses .11 and up).
        #[arg(long, default_value_t = 3)]
        etcd: u8,
        /// Number of Kubernetes control-plane hosts (addresses .41 and up).
        #[arg(long, default_value_t = 0)]
        masters: u8,
        /// Number of Kubernetes worker hosts (addresses .71 and up).
        #[arg(long, default_value_t = 0)]
        workers: u8,
        /// Boot each host: a systemd-nspawn container with systemd as PID 1 and sshd, on an
        /// overlay of a cached Debian root (/var/cache/haop/lab-root-bookworm, built once with
        /// debootstrap), with haop-agent installed from its .deb over SSH and run by systemd.
        #[arg(long)]
        systemd: bool,
        /// With --systemd: leave the hosts bare (sshd, no agent), for `haop hosts install`.
        #[arg(long, requires = "systemd")]
        bare: bool,
        /// With --systemd: the agent's .deb [default: the newest in target/debian].
        #[arg(
            long,
            requires = "systemd",
            conflicts_with = "bare",
            value_name = "FILE"
        )]
        deb: Option<std::path::PathBuf>,
        /// With --systemd: build the cached Debian root again first.
        #[arg(long, requires = "systemd")]
        refresh_root: bool,
        /// Build the hosts as the seed's runbook does, before any agent: its cfssl-style CA
        /// (its key on every etcd host), certificates and etcd units as written
        /// (--client-cert-auth=false --peer-client-cert-auth=false), keepalived and kubeadm's
        /// files on the masters. The agents are installed afterwards, as on hosts an operator
        /// built by hand; `up` returns once the seed's etcd is healthy. The starting point of
        /// `haop adopt`.
        #[arg(long, conflicts_with = "systemd")]
        from_seed: bool,
        /// With --from-seed: run this etcd release instead of the machine's /usr/bin/etcd
        /// (copied to each etcd host's /usr/local/bin, with etcdctl and etcdutl beside it).
        #[arg(long, requires = "from_seed", value_name = "PATH")]
        seed_etcd_binary: Option<std::path::PathBuf>,
    },
    /// Print the path of the lab's inventory file (for `haop plan|apply|status -f`).
    Inventory {
        /// The lab's name.
        name: String,
    },
    /// List the lab's hosts with their agents, and the facts each agent reports.
    Hosts {
        /// The lab's name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Crash a unit on a host: SIGKILL its main process.
    ///
    /// The host's agent says which process that is. With --wipe, then remove the data directories the unit declared to the agent, as a
    /// lost disk would. Needs root.
    Crash {
        /// The lab's name.
        name: String,
        /// The host, such as etcd2.
        host: String,
        /// The unit, as systemctl takes it: etcd means etcd.service.
        #[arg(long, value_parser = crate::unit_arg)]
        unit: String,
        /// Also remove the unit's declared data directories.
        #[arg(long)]
        wipe: bool,
    },
    /// Cut a host off the lab's network: its link goes down, as a pulled cable.
    ///
    /// The host keeps running; nobody reaches it and it reaches nobody, without any error
    /// packet, until `haop lab restore`. Needs root.
    Cut {
        /// The lab's name.
        name: String,
        /// The host, such as etcd2.
        host: String,
    },
    /// Connect a host cut off with `haop lab cut` again. Needs root.
    Restore {
        /// The lab's name.
        name: String,
        /// The host, such as etcd2.
        host: String,
    },
    /// Slow the traffic towards a host, as a slow or distant link would (a token bucket on its
    /// link), or lift the limit with --off: rehearse a member that catches up slowly. Needs root.
    Throttle {
        /// The lab's name.
        name: String,
        /// The host, such as etcd2.
        host: String,
        /// The rate, as tc writes it: 20mbit, 512kbit.
        #[arg(long, required_unless_present = "off", conflicts_with = "off")]
        rate: Option<String>,
        /// Lift the limit.
        #[arg(long)]
        off: bool,
    },
    /// Restart a host's haop-agent, as an upgrade (SIGTERM) or a crash (--kill, SIGKILL) would.
    ///
    /// Waits until the new agent answers. The units the agent ran keep running, and the new
    /// agent takes them over. Needs root.
    RestartAgent {
        /// The lab's name.
        name: String,
        /// The host, such as etcd2.
        host: String,
        /// SIGKILL instead of SIGTERM: the agent gets no chance to exit cleanly.
        #[arg(long)]
        kill: bool,
    },
    /// Run a command inside a host.
    ///
    /// The command sees the host's network, mounts and root directory as `/`. Standard input and output are the terminal's; the exit code is the command's.
    /// Example: haop lab exec demo etcd1 -- cat /etc/hostname. Needs root.
    Exec {
        /// The lab's name.
        name: String,
        /// The host, such as etcd1.
        host: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Remove a lab, or every lab of the state dir.
    ///
    /// Stops the agents and what they run, deletes namespaces and the bridge, removes the lab's
    /// files. Also cleans up after an `up` that was interrupted. Needs root.
    Down {
        /// The lab's name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Remove every lab of this state dir.
        #[arg(long)]
        all: bool,
    },
}

pub use crate::output::Format as Output;

pub async fn run(state_dir: &Path, cmd: LabCommand) -> anyhow::Result<ExitCode> {
    let text = match cmd {
        LabCommand::Up {
            name,
            etcd,
            masters,
            workers,
            systemd,
            bare,
            deb,
            refresh_root,
            from_seed,
            seed_etcd_binary,
        } => {
            let spec = LabSpec {
                etcd,
                masters,
                workers,
                from_seed,
            };
            let lab = if systemd {
                let agent_deb = match (bare, deb) {
                    (true, _) => None,
                    (false, Some(d)) => Some(d),
                    (false, None) => Some(haop_coordinator::lab::booted::find_agent_deb()?),
                };
                let options = haop_coordinator::lab::booted::BootedOptions {
                    refresh_root,
                    agent_deb,
                };
                let progress: haop_coordinator::hosts::Progress =
                    std::sync::Arc::new(|host: &str, what: &str| eprintln!("{host:<12} {what}"));
                Lab::up_booted(state_dir, &name, spec, options, progress).await
            } else {
                let seed = SeedOptions {
                    etcd_binary: seed_etcd_binary,
                };
                Lab::up_with(state_dir, &name, spec, seed).await
            }
            .with_context(|| format!("lab {name} is not up"))?;
            let rows = lab
                .hosts()
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        h.address.to_string(),
                        h.endpoint.clone(),
                        h.agent_pid.map(|p| p.to_string()).unwrap_or_default(),
                    ]
                })
                .collect();
            let mut text = format!(
                "lab {} is up: {} hosts on {} (bridge {})\n{}inventory: {}\n",
                lab.name(),
                lab.hosts().len(),
                lab.subnet(),
                lab.bridge(),
                table(&["HOST", "ADDRESS", "AGENT", "PID"], rows),
                lab.inventory_path().display()
            );
            if from_seed {
                text.push_str(&format!(
                    "built by the seed's runbook: etcd members master-0..master-{} healthy, run \
                     as the seed writes them (--client-cert-auth=false \
                     --peer-client-cert-auth=false; the seed's CA key on every etcd host, in {})\n",
                    etcd.saturating_sub(1),
                    haop_coordinator::lab::seed::files::PKI_DIR
                ));
            }
            text
        }
        LabCommand::Inventory { name } => {
            let lab = Lab::open(state_dir, &name)?;
            format!("{}\n", lab.inventory_path().display())
        }
        LabCommand::Hosts { name, output } => {
            let lab = Lab::open(state_dir, &name)?;
            let reports = lab.host_reports().await;
            match output {
                Output::Json => format!("{}\n", serde_json::to_string_pretty(&reports)?),
                Output::Table => hosts_table(&reports),
            }
        }
        LabCommand::Crash {
            name,
            host,
            unit,
            wipe,
        } => {
            let lab = Lab::open(state_dir, &name)?;
            let report = lab.crash(&host, &unit, wipe).await?;
            let mut text = format!(
                "killed {} on {} (pid {})\n",
                report.unit, report.host, report.pid
            );
            for dir in &report.wiped {
                text.push_str(&format!("wiped {}\n", dir.display()));
            }
            if wipe && report.wiped.is_empty() {
                text.push_str("no declared data dir existed; nothing wiped\n");
            }
            text
        }
        LabCommand::Cut { name, host } => {
            let lab = Lab::open(state_dir, &name)?;
            if lab.cut(&host)? {
                format!("{host} is cut off\n")
            } else {
                format!("{host} was cut off already\n")
            }
        }
        LabCommand::Restore { name, host } => {
            let lab = Lab::open(state_dir, &name)?;
            if lab.restore(&host)? {
                format!("{host} is connected again\n")
            } else {
                format!("{host} was connected already\n")
            }
        }
        LabCommand::Throttle {
            name,
            host,
            rate,
            off: _,
        } => {
            let lab = Lab::open(state_dir, &name)?;
            let changed = lab.throttle(&host, rate.as_deref())?;
            match (rate, changed) {
                (Some(r), _) => format!("traffic towards {host} is limited to {r}\n"),
                (None, true) => format!("traffic towards {host} is not limited any more\n"),
                (None, false) => format!("traffic towards {host} was not limited\n"),
            }
        }
        LabCommand::RestartAgent { name, host, kill } => {
            let mut lab = Lab::open(state_dir, &name)?;
            let how = if kill {
                AgentStop::Kill
            } else {
                AgentStop::Term
            };
            let r = lab.restart_agent(&host, how).await?;
            match r.old_pid {
                Some(old) => format!(
                    "agent of {} restarted (pid {old} -> {})\n",
                    r.host, r.new_pid
                ),
                None => format!(
                    "agent of {} was not running; started (pid {})\n",
                    r.host, r.new_pid
                ),
            }
        }
        LabCommand::Exec {
            name,
            host,
            command,
        } => {
            let lab = Lab::open(state_dir, &name)?;
            let mut cmd = lab.exec_command(&host, &command)?;
            let status = cmd
                .status()
                .with_context(|| format!("cannot run nsenter for host {host}"))?;
            return Ok(exit_code(status));
        }
        LabCommand::Down { name, all } => {
            if all {
                let removed = Lab::down_all(state_dir)?;
                if removed.is_empty() {
                    format!("no labs in {}\n", state_dir.display())
                } else {
                    removed
                        .iter()
                        .map(|n| format!("lab {n} removed\n"))
                        .collect()
                }
            } else {
                let name = name.context("name a lab, or use --all")?;
                Lab::down_named(state_dir, &name)?;
                format!("lab {name} removed\n")
            }
        }
    };
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The command's exit code; 128 + N when a signal N ended it, as shells report.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn hosts_table(reports: &[HostReport]) -> String {
    let rows = reports
        .iter()
        .map(|r| {
            let f = r.facts.as_ref();
            let fact = |get: fn(&haop_coordinator::lab::HostFacts) -> &str| {
                f.map(|f| get(f).to_string()).unwrap_or_else(|| "-".into())
            };
            vec![
                r.name.clone(),
                r.roles
                    .iter()
                    .map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                r.namespace.clone(),
                r.address.to_string(),
                r.endpoint.clone(),
                r.agent_pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                if r.alive { "yes" } else { "no" }.to_string(),
                fact(|f| &f.hostname),
                fact(|f| &f.kernel),
                fact(|f| &f.service_manager),
                fact(|f| &f.agent_version),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "HOST",
            "ROLES",
            "NAMESPACE",
            "ADDRESS",
            "AGENT",
            "PID",
            "ALIVE",
            "HOSTNAME",
            "KERNEL",
            "SERVICES",
            "VERSION",
        ],
        rows,
    );
    for r in reports {
        if let Some(e) = &r.error {
            text.push_str(&format!("{}: {e}\n", r.name));
        }
    }
    text
}

/// Writes `text` to stdout; a closed pipe (`haop lab hosts ... | head`) is not an error.
fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}
