//! `haop certs`: the certificates haop issued, and when they expire.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Subcommand};
use haop_coordinator::inventory::Inventory;

pub use crate::output::Format;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Every certificate in the state dir and on every host of the inventory (etcd server,
    /// peer and CA certificates, the masters' kube-apiserver etcd client certificates, each
    /// agent's serving certificate), soonest expiry first.
    /// Exits 1 when one could not be read or expires within 30 days.
    List {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Per-host timeout, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Re-issue certificates through the CSR flow (new keys on the hosts) and restart etcd
    /// members one at a time, each back healthy with the quorum whole before the next.
    Renew {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// Renew certificates expiring within this many days, such as 30d (or 30).
        #[arg(long, default_value = "30d")]
        expiring_within: String,
        /// Renew every certificate whatever its expiry.
        #[arg(long)]
        all: bool,
    },
    /// Replace a CA without downtime by the bundle protocol: old and new trusted everywhere,
    /// every certificate issued again by the new one, the old one dropped and its key deleted.
    ///
    /// --etcd: every phase is a rolling restart of the etcd members (etcd reads its trusted CAs
    /// only when it starts), one at a time, leadership handed away first, each back and caught
    /// up with the quorum whole before the next; the masters' kube-apiserver etcd client
    /// certificates and CA files follow (kubelet restarts the API server through an annotation
    /// of its manifest). An etcdctl set up with `eval "$(haop etcd env)"` keeps working
    /// throughout. Identities issued with `haop identity issue --etcd` before the rotation are
    /// refused afterwards: they are listed at the start; issue them again.
    ///
    /// --agent (the control channel between haop and its agents) rolls over the hosts one at a
    /// time, in four phases, each started only when every agent of the inventory answers, and
    /// restarts nothing (agents take their new trust and certificate live):
    ///
    /// 1. prepare: a new agent CA is made in the state dir beside the old one
    ///    (pki/agent-ca-next.*, key 0600); haop trusts both for agents.
    ///
    /// 2. trust: every agent trusts the old and the new CA, installed over the existing mTLS
    ///    channel (no token).
    ///
    /// 3. reissue: every agent gets a serving certificate from the new CA for a key it makes
    ///    itself; the agent revocation list is re-signed by the new CA; haop's own admin
    ///    certificate is re-issued from it.
    ///
    /// 4. drop: every agent trusts the new CA alone; the old CA's key is deleted from the
    ///    state dir (its certificate kept in pki/retired/), and the enrollment pin printed at
    ///    the end is the new CA's: bootstrap tokens and agent.toml files made before carry the
    ///    old one, make new ones with haop token create.
    ///
    /// At every moment each agent and haop trust each other. A phase file
    /// (pki/agent-ca-rotation.json) records the phases done; a host that fails is named with
    /// the reason. Until it has finished, enrolling new agents, haop token create and
    /// agent-channel haop identity issue are refused. What breaks: identities issued with
    /// `haop identity issue` (agent channel) by the old CA are refused once it is dropped; they
    /// are listed, and while any is still valid the rotation wants --yes. Issue them again
    /// afterwards. Every host enrolled with this state dir must be in the inventory (one left
    /// out keeps the old CA and cannot be reached afterwards), and other machines with a copy
    /// of the state dir (operator instances) need the new pki/.
    ///
    /// Killed anywhere, run it again: it continues from its journal in the state dir (after a
    /// finished rotation, the same command starts a new one).
    ///
    /// Example: haop certs rotate-ca --agent -f cluster.yaml
    #[command(group(ArgGroup::new("which").required(true).args(["etcd", "agent"])))]
    RotateCa {
        /// The inventory file.
        #[arg(short = 'f', long = "file")]
        inventory: PathBuf,
        /// The etcd CA (etcd's server, peer and client certificates).
        #[arg(long)]
        etcd: bool,
        /// The agent CA (the control channel between haop and its agents).
        #[arg(long)]
        agent: bool,
        /// Go on although identities issued by the old CA are still valid (they stop working;
        /// issue them again afterwards).
        #[arg(long)]
        yes: bool,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// --agent: per-agent timeout, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

/// Loads an inventory, printing its warnings; errors list every problem.
pub fn load_inventory(path: &Path) -> anyhow::Result<Inventory> {
    let (inv, warnings) = Inventory::load(path)?;
    for w in warnings {
        eprintln!("{w}");
    }
    Ok(inv)
}

pub async fn run(state_dir: &Path, cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::RotateCa {
            inventory,
            etcd: true,
            output,
            yes,
            ..
        } => {
            let inv = load_inventory(&inventory)?;
            let done = haop_coordinator::certs::rotate_etcd::run(state_dir, &inv, yes, &|line| {
                eprintln!("  {line}")
            })
            .await?;
            if output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                let longest = done.restarts.iter().map(|r| r.seconds).fold(0.0, f64::max);
                println!(
                    "etcd CA rotated in {:.1} s: {} member restarts (longest {longest:.1} s); new CA {}.",
                    done.seconds,
                    done.restarts.len(),
                    done.new_ca_sha256
                );
                if !done.stale_identities.is_empty() {
                    println!(
                        "Issue these identities again (the old CA signed them): {}",
                        done.stale_identities.join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::RotateCa {
            inventory,
            yes,
            output,
            timeout,
            ..
        } => rotate_agent(state_dir, &inventory, yes, output, timeout).await,
        CertsCommand::Renew {
            inventory,
            expiring_within,
            all,
        } => {
            let days: i64 = expiring_within.trim_end_matches('d').parse().map_err(|_| {
                anyhow::anyhow!(
                    "--expiring-within: {expiring_within:?} is not a number of days such as 30d"
                )
            })?;
            let inv = load_inventory(&inventory)?;
            let renewed = haop_coordinator::certs::renew::renew(
                state_dir,
                inv,
                haop_coordinator::certs::renew::RenewOptions {
                    expiring_within_days: days,
                    all,
                    member_timeout: Duration::from_secs(60),
                },
                &|line| eprintln!("  {line}"),
            )
            .await?;
            println!("{} certificate(s) renewed.", renewed.len());
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::List {
            inventory,
            output,
            timeout,
        } => {
            let inv = load_inventory(&inventory)?;
            let rows = haop_coordinator::certs::list(state_dir, &inv, Duration::from_secs(timeout))
                .await?;
            let bad = rows.iter().any(|r| r.error.is_some() || r.days_left < 30);
            if output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<10} {:<44} {:>9} {:<24} {:<26} SANS",
                    "WHERE", "PATH", "DAYS LEFT", "USAGES", "SUBJECT"
                );
                for r in &rows {
                    if let Some(e) = &r.error {
                        println!("{:<10} {:<44} {:>9} {e}", r.location, r.path, "ERROR");
                        continue;
                    }
                    let usages = if r.is_ca {
                        "CA".to_string()
                    } else {
                        r.usages.join(",")
                    };
                    println!(
                        "{:<10} {:<44} {:>9} {:<24} {:<26} {}",
                        r.location,
                        r.path,
                        r.days_left,
                        usages,
                        r.subject,
                        r.sans.join(",")
                    );
                }
            }
            Ok(if bad {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

async fn rotate_agent(
    state_dir: &Path,
    inventory: &Path,
    yes: bool,
    output: Format,
    timeout: u64,
) -> anyhow::Result<ExitCode> {
    use haop_coordinator::certs::rotate_agent::{run, RotateOptions};
    use haop_coordinator::trust::format_unix;
    let inv = load_inventory(inventory)?;
    let opts = RotateOptions {
        yes,
        timeout: Duration::from_secs(timeout),
    };
    let report = run(state_dir, &inv, opts, &|line| eprintln!("  {line}")).await?;
    if output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "agent CA rotated on {} host(s): {} -> {}",
        inv.hosts.len(),
        report.old_ca_pin,
        report.new_ca_pin
    );
    println!("old CA certificate kept as {}", report.retired_ca_cert);
    println!(
        "enrollment pin (ca_hash) for new agents: {}",
        report.new_ca_pin
    );
    if report.revocation_generation > 0 {
        println!(
            "agent revocation list {} signed by the new CA",
            report.revocation_generation
        );
    }
    if !report.identities_to_reissue.is_empty() {
        println!(
            "\nThese identities were issued by the old CA and are refused from now on; issue \
             them again with haop identity issue:"
        );
        for r in &report.identities_to_reissue {
            println!(
                "  {:<24} {:<7} serial {} (was valid until {})",
                r.name,
                r.role.as_str(),
                r.serial,
                format_unix(r.not_after_unix)
            );
        }
    }
    eprintln!(
        "\nBootstrap tokens and agent.toml files made before carry the old pin; make new ones \
         with haop token create."
    );
    Ok(ExitCode::SUCCESS)
}
